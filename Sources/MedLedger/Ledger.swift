import Foundation
public import LMDBKit
public import LedgerCrypto
public import MerkleLog
#if canImport(Glibc)
import Glibc
#endif

/// A MedLedger: one append-only Merkle log, its signing key and derived state, in one
/// directory (`data.mdb`, `lock.mdb` from LMDB; `signer.key`, mode 0600; `verifier.key`).
///
/// For example:
/// ```swift
/// let (ledger, verifierKey) = try Ledger.create(at: dir, origin: "example.org/ledger")
/// let first = try ledger.append([try LedgerEntry(set: "k", payload: Array("v".utf8))])
/// let note = try ledger.signedCheckpoint()
/// let proof = try ledger.inclusionProof(index: first, size: ledger.size)
/// ```
///
/// ## Topics
/// - ``create(at:origin:options:)``, ``init(path:options:)``
/// - ``append(_:)``, ``appendEncoded(count:entry:)``
/// - ``signedCheckpoint()``, ``inclusionProof(index:size:)``, ``consistencyProof(oldSize:newSize:)``
///
/// Thread safety: all methods may be called from several threads; appends are serialized,
/// reads run in parallel with them and with each other, each on one committed snapshot.
public final class Ledger: @unchecked Sendable {
    // Sendable: `appendLock` guards `log` (its frontier); everything else is immutable.

    /// How a ledger is opened.
    public struct Options: Sendable {
        /// Open without write access; several processes may read at once.
        public var readOnly = false
        /// fsync every commit (default). Turning it off risks losing recent commits on power
        /// loss, never corruption; only for tests and scratch ledgers.
        public var durable = true
        /// Initial LMDB map size; it grows on demand.
        public var initialMapSize = 1 << 30
        public init() {}
    }

    /// The log's origin line, e.g. `example.org/ledger`.
    public let origin: String
    /// The directory.
    public let path: String
    /// The LMDB environment.
    public let environment: Environment
    /// The key that verifies this ledger's checkpoints.
    public let verifier: NoteVerifier
    private let signer: NoteSigner?
    private let store: LMDBLogStore
    private let log: MerkleLog<LMDBLogStore>
    private let ledgerMeta: Database
    private let appendLock = NSLock()

    static let signerKeyFile = "signer.key"
    static let verifierKeyFile = "verifier.key"

    /// Creates a new ledger in `path` (created if missing; must not already hold a ledger),
    /// generating its Ed25519 signing key.
    /// - Returns: the open ledger and its verifier key text `<name>+<id>+<key>`.
    /// - Throws: ``LedgerError`` `.ledgerExists`, `.invalidArgument` for a bad origin, `.storage`.
    public static func create(at path: String, origin: String, options: Options = Options()) throws -> (Ledger, String) {
        guard !origin.isEmpty, !origin.contains("\n"), isValidOrigin(origin) else {
            throw LedgerError(.invalidArgument, "origin must be non-empty, without whitespace or '+'")
        }
        if FileManager.default.fileExists(atPath: path + "/data.mdb") {
            throw LedgerError(.ledgerExists, "a ledger already exists at \(path)")
        }
        do {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
        } catch {
            throw LedgerError(.storage, "cannot create directory \(path)", cause: error)
        }
        let signer = try NoteSigner(generatingFor: origin)
        try writeSecretFile(path + "/" + signerKeyFile, contents: signer.secretKeyText() + "\n")
        try (signer.verifier.description + "\n").write(toFile: path + "/" + verifierKeyFile, atomically: true, encoding: .utf8)
        let environment = try storage { try Environment(path: path, options: environmentOptions(options)) }
        try storage {
            try environment.write { txn in
                guard let meta = try txn.openDatabase("ledger.meta", create: true) else { return }
                try txn.put(meta, key: "origin", value: origin)
                try txn.put(meta, key: "format", value: UInt64(1))
            }
        }
        let ledger = try Ledger(path: path, environment: environment, options: options)
        return (ledger, signer.verifier.description)
    }

    /// Opens an existing ledger.
    /// - Throws: ``LedgerError`` `.ledgerNotFound` when `path` holds none, `.keyFile` when the
    ///   signer key is unreadable (a read-only open does not need it), `.storage`.
    public convenience init(path: String, options: Options = Options()) throws {
        guard FileManager.default.fileExists(atPath: path + "/data.mdb") else {
            throw LedgerError(.ledgerNotFound, "no ledger at \(path)")
        }
        let environment = try Self.storage { try Environment(path: path, options: Self.environmentOptions(options)) }
        try self.init(path: path, environment: environment, options: options)
    }

    private init(path: String, environment: Environment, options: Options) throws {
        self.path = path
        self.environment = environment
        let meta: (Database, String)? = try Self.storage {
            try environment.read { txn in
                guard let db = try txn.openDatabase("ledger.meta", create: false),
                      let origin = try txn.value(db, key: "origin") else { return nil }
                return (db, String(decoding: origin, as: UTF8.self))
            }
        }
        guard let meta else { throw LedgerError(.ledgerNotFound, "\(path) holds no MedLedger metadata") }
        (ledgerMeta, origin) = meta
        let store = try Self.storage { try LMDBLogStore(environment: environment) }
        self.store = store
        log = try Self.storage { try MerkleLog(store: store) }

        let verifierText: String
        do {
            verifierText = try String(contentsOfFile: path + "/" + Self.verifierKeyFile, encoding: .utf8)
        } catch {
            throw LedgerError(.keyFile, "cannot read \(path)/\(Self.verifierKeyFile)")
        }
        do { verifier = try NoteVerifier(parsing: verifierText) } catch {
            throw LedgerError(.keyFile, "malformed verifier key in \(path)/\(Self.verifierKeyFile)")
        }
        if options.readOnly {
            signer = nil
        } else {
            let text: String
            do { text = try String(contentsOfFile: path + "/" + Self.signerKeyFile, encoding: .utf8) } catch {
                throw LedgerError(.keyFile, "cannot read signer key \(path)/\(Self.signerKeyFile)")
            }
            let parsed: NoteSigner
            do { parsed = try NoteSigner(parsing: text) } catch {
                throw LedgerError(.keyFile, "malformed signer key in \(path)/\(Self.signerKeyFile)")
            }
            guard parsed.verifier == verifier else {
                throw LedgerError(.keyFile, "signer key does not match verifier key in \(path)")
            }
            signer = parsed
        }
    }

    static func environmentOptions(_ options: Options) -> Environment.Options {
        var env = Environment.Options()
        env.readOnly = options.readOnly
        env.durable = options.durable
        env.mapSize = options.initialMapSize
        env.createIfMissing = !options.readOnly
        return env
    }

    static func isValidOrigin(_ origin: String) -> Bool {
        !origin.unicodeScalars.contains { $0 == "+" || $0.properties.isWhitespace || $0.value < 0x20 }
    }

    /// Runs `body`, wrapping storage failures in ``LedgerError`` `.storage` and passing
    /// ledger and log errors through.
    static func storage<R>(_ body: () throws -> R) throws -> R {
        do { return try body() } catch let error as LedgerError { throw error } catch let error as MerkleLogError {
            throw error
        } catch let error as LMDBError {
            if error.code == .fileNotFound { throw LedgerError(.ledgerNotFound, "no ledger found", cause: error) }
            throw LedgerError(.storage, "storage failure", cause: error)
        } catch {
            throw LedgerError(.storage, "storage failure", cause: error)
        }
    }

    static func writeSecretFile(_ path: String, contents: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
        guard fd >= 0 else { throw LedgerError(.keyFile, "cannot create \(path) (errno \(errno))") }
        defer { close(fd) }
        var bytes = Array(contents.utf8)
        defer { secureZero(&bytes) }
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        guard written == bytes.count, fsync(fd) == 0 else { throw LedgerError(.keyFile, "cannot write \(path)") }
    }

    // MARK: - Appending

    /// The committed number of entries (reads the latest committed state).
    public var size: UInt64 {
        get throws { try Self.storage { try store.read { $0.treeSize } } }
    }

    /// Appends `entries` in one durable transaction (group commit).
    /// - Returns: the index of the first entry.
    @discardableResult
    public func append(_ entries: [LedgerEntry]) throws -> UInt64 {
        var buffer: [UInt8] = []
        return try appendEncoded(count: entries.count) { i, body in
            let entry = entries[i]
            LedgerEntry.encode(operation: entry.operation, key: entry.key, payload: entry.payload, into: &buffer)
            try buffer.withUnsafeBytes(body)
        }
    }

    /// Appends `count` already-encoded envelopes in one durable transaction, without
    /// collecting them first: `entry(i, body)` calls `body` once with entry `i`'s bytes.
    /// Each envelope's header is checked; a bad one aborts the whole batch.
    @discardableResult
    public func appendEncoded(count: Int, entry: (Int, (UnsafeRawBufferPointer) throws -> Void) throws -> Void) throws -> UInt64 {
        appendLock.lock()
        defer { appendLock.unlock() }
        return try Self.storage {
            try log.append(count: count) { i, body in
                try withoutActuallyEscaping(body) { body in
                    try entry(i) { bytes in
                        try Self.validateHeader(bytes)
                        try body(bytes)
                    }
                }
            }
        }
    }

    /// Appends envelopes packed back to back in `packed` (entry `i` ends at `ends[i]`) in one
    /// durable transaction: the fastest way to add many entries, since leaf hashing runs on
    /// all cores before the write. Every header is checked first; a bad one rejects the batch.
    @discardableResult
    public func appendPacked(_ packed: UnsafeRawBufferPointer, ends: UnsafeBufferPointer<Int>) throws -> UInt64 {
        var start = 0
        for (i, end) in ends.enumerated() {
            guard end >= start, end <= packed.count else {
                throw LedgerError(.invalidArgument, "entry \(i) boundary is outside the packed buffer")
            }
            try Self.validateHeader(UnsafeRawBufferPointer(rebasing: packed[start..<end]))
            start = end
        }
        appendLock.lock()
        defer { appendLock.unlock() }
        return try Self.storage { try log.append(packed: packed, ends: ends) }
    }

    /// Cheap envelope check for the append path (no copy).
    static func validateHeader(_ bytes: UnsafeRawBufferPointer) throws {
        guard bytes.count >= 4, bytes[0] == LedgerEntry.formatVersion, bytes[1] <= 1 else {
            throw LedgerError(.invalidEntry, "entry does not start with a valid envelope header")
        }
        let keyLength = Int(bytes[2]) << 8 | Int(bytes[3])
        guard keyLength <= LedgerEntry.maxKeyLength, 4 + keyLength <= bytes.count else {
            throw LedgerError(.invalidEntry, "entry key length is invalid")
        }
        guard !(keyLength == 0 && bytes[1] == LedgerEntry.Operation.delete.rawValue) else {
            throw LedgerError(.invalidEntry, "a delete entry needs a key")
        }
    }

    // MARK: - Reading and proving

    /// The entry at `index`.
    /// - Throws: ``LedgerError`` `.notFound` past the end.
    public func entry(at index: UInt64) throws -> LedgerEntry {
        try Self.storage {
            try store.read { reader in
                guard index < reader.treeSize else { throw LedgerError(.notFound, "no entry at index \(index)") }
                return try reader.withEntry(at: index) { try LedgerEntry(decoding: $0) }
            }
        }
    }

    /// The raw bytes and stored leaf hash of entry `index`.
    public func rawEntry(at index: UInt64) throws -> (bytes: [UInt8], leafHash: Hash) {
        try Self.storage {
            try store.read { reader in
                guard index < reader.treeSize else { throw LedgerError(.notFound, "no entry at index \(index)") }
                return (try reader.withEntry(at: index) { Array($0) }, try reader.storedHash(level: 0, index: index))
            }
        }
    }

    /// The root hash of the first `size` entries.
    public func rootHash(size: UInt64) throws -> Hash {
        try Self.storage { try store.read { try $0.rootHash(size: size) } }
    }

    /// The inclusion proof of entry `index` in the tree of `size` entries (the current size
    /// when `nil`), with the leaf hash and root it proves.
    public func inclusionProof(index: UInt64, size: UInt64? = nil) throws -> (proof: InclusionProof, leafHash: Hash, rootHash: Hash) {
        try Self.storage {
            try store.read { reader in
                let n = size ?? reader.treeSize
                let path = try reader.inclusionPath(index: index, size: n)
                return (InclusionProof(leafIndex: index, treeSize: n, hashes: path),
                        try reader.storedHash(level: 0, index: index), try reader.rootHash(size: n))
            }
        }
    }

    /// The consistency proof from `oldSize` to `newSize` (the current size when `nil`), with both roots.
    public func consistencyProof(oldSize: UInt64, newSize: UInt64? = nil) throws -> (proof: ConsistencyProof, oldRoot: Hash, newRoot: Hash) {
        try Self.storage {
            try store.read { reader in
                let n = newSize ?? reader.treeSize
                let path = try reader.consistencyPath(oldSize: oldSize, newSize: n)
                return (ConsistencyProof(oldSize: oldSize, newSize: n, hashes: path),
                        try reader.rootHash(size: oldSize), try reader.rootHash(size: n))
            }
        }
    }

    /// The root of the key map at the current size. Until the sparse tree lands this is
    /// `EMPTY` (32 zero bytes); the entries carry their keys so the map can be derived later.
    public func mapRoot() throws -> Hash { .zero }

    /// The checkpoint of the current committed state (unsigned).
    public func checkpoint() throws -> Checkpoint {
        try Self.storage {
            try store.read { reader in
                let n = reader.treeSize
                return Checkpoint(origin: origin, size: n, rootHash: try reader.rootHash(size: n), mapRoot: try mapRoot())
            }
        }
    }

    /// The signed checkpoint note of the current state. Ed25519 signatures are deterministic,
    /// so the same size always yields the same note.
    /// - Throws: ``LedgerError`` `.keyFile` when the ledger was opened read-only.
    public func signedCheckpoint() throws -> String {
        guard let signer else { throw LedgerError(.keyFile, "ledger opened read-only has no signer key") }
        return try signer.sign(try checkpoint().text)
    }

    /// Bytes of the data file in use.
    public func storedBytes() throws -> Int { try Self.storage { try environment.usedBytes() } }
}
