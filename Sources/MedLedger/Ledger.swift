import Foundation
public import LMDBKit
public import LedgerCrypto
public import MerkleLog
public import SparseMerkle
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
        /// The map doubles on demand up to this size (16 TiB by default); an append that
        /// needs more fails with ``LedgerError`` `.storage` (cause `LMDBError.mapFull`) and
        /// writes nothing.
        public var maximumMapSize = 1 << 44
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
    let signer: NoteSigner?
    let store: LMDBLogStore
    private let log: MerkleLog<LMDBLogStore>
    let sparse: LMDBSparseStore
    let ledgerMeta: Database
    private let appendLock = NSLock()

    static let signerKeyFile = "signer.key"
    static let verifierKeyFile = "verifier.key"

    /// Creates a new ledger in `path` (created if missing; must not already hold a ledger),
    /// generating its Ed25519 signing key.
    ///
    /// The ledger exists once its metadata commits, the last step: a create that was
    /// interrupted before (key files written, an LMDB file with no database yet) leaves
    /// debris that the next create replaces.
    /// - Returns: the open ledger and its verifier key text `<name>+<id>+<key>`.
    /// - Throws: ``LedgerError`` `.ledgerExists` (also for an LMDB file that holds other
    ///   databases), `.invalidArgument` for a bad origin, `.storage`.
    public static func create(at path: String, origin: String, options: Options = Options()) throws -> (Ledger, String) {
        guard !origin.isEmpty, !origin.contains("\n"), isValidOrigin(origin) else {
            throw LedgerError(.invalidArgument, "origin must be non-empty, without whitespace or '+'")
        }
        if FileManager.default.fileExists(atPath: path + "/data.mdb") {
            // Only an empty file, or an environment with no database at all, is the debris of
            // an interrupted create (a damaged ledger is refused, its keys left alone).
            let bytes = (try? FileManager.default.attributesOfItem(atPath: path + "/data.mdb")[.size] as? Int) ?? nil
            let empty = bytes == 0 || ((try? storage {
                var readOnly = environmentOptions(options)
                readOnly.readOnly = true
                readOnly.createIfMissing = false
                return try Environment(path: path, options: readOnly).read { txn in
                    guard let main = try txn.openDatabase(nil, create: false) else { return true }
                    return try txn.count(main) == 0
                }
            }) ?? false)
            guard empty else { throw LedgerError(.ledgerExists, "a ledger already exists at \(path)") }
        }
        for leftover in [signerKeyFile, verifierKeyFile] { try? FileManager.default.removeItem(atPath: path + "/" + leftover) }
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
                try txn.put(meta, key: "format", value: Self.format)
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

    /// The ledger format this version writes (`ledger.meta` `format`, FORMATS.md section 3).
    /// Format 1 stored the key map's pages in an earlier layout; ``openUpgrading(path:options:)``
    /// (`medledger rebuild-index`) rebuilds them from the log. Format 2 is format 4 without
    /// the patient layer's log-ordered record tables, format 3 without the runs of boxes in
    /// `pl.boxes`: both are read as they are and marked 4 when a writer opens their patient
    /// layer, so that builds which do not know those tables or runs refuse them.
    static let format: UInt64 = 4

    private init(path: String, environment: Environment, options: Options, acceptingFormat1: Bool = false) throws {
        self.path = path
        self.environment = environment
        let meta: (Database, String)? = try Self.storage {
            try environment.read { txn in
                guard let db = try txn.openDatabase("ledger.meta", create: false),
                      let origin = try txn.value(db, key: "origin") else { return nil }
                let format = try txn.value(db, key: "format").flatMap { $0.withUnsafeBytes { UInt64(bigEndianBytes: $0) } }
                if format == 1 && !acceptingFormat1 {
                    throw LedgerError(.storage, "\(path) holds ledger format 1, whose key-map pages this version does not read: "
                        + "run `medledger rebuild-index \(path)` to rebuild them from the log (the log itself is unchanged)")
                }
                guard format == Self.format || format == 3 || format == 2 || format == 1 else {
                    throw LedgerError(.storage, "\(path) holds a ledger format this version does not read")
                }
                return (db, String(decoding: origin, as: UTF8.self))
            }
        }
        guard let meta else { throw LedgerError(.ledgerNotFound, "\(path) holds no MedLedger metadata") }
        (ledgerMeta, origin) = meta
        let store = try Self.storage { try LMDBLogStore(environment: environment) }
        self.store = store
        log = try Self.storage { try MerkleLog(store: store) }
        sparse = try Self.storage { try LMDBSparseStore(environment: environment) }

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

    /// Opens an existing ledger, first upgrading one of format 1 (whose key-map pages use an
    /// earlier layout) by rebuilding its key map from the log, as ``rebuildIndex()`` does, and
    /// then marking it format 2. Interrupted, the upgrade can simply be run again: the ledger
    /// stays format 1 until the rebuild has finished.
    /// - Returns: the open ledger, and the rebuild's report when an upgrade ran.
    public static func openUpgrading(path: String, options: Options = Options()) throws -> (Ledger, RebuildReport?) {
        guard FileManager.default.fileExists(atPath: path + "/data.mdb") else {
            throw LedgerError(.ledgerNotFound, "no ledger at \(path)")
        }
        let environment = try storage { try Environment(path: path, options: environmentOptions(options)) }
        let ledger = try Ledger(path: path, environment: environment, options: options, acceptingFormat1: true)
        let format = try storage {
            try environment.read { txn in try txn.value(ledger.ledgerMeta, key: "format").flatMap { $0.withUnsafeBytes { UInt64(bigEndianBytes: $0) } } }
        }
        guard format == 1 else { return (ledger, nil) }
        let report = try ledger.rebuildIndex()
        try storage { try environment.write { txn in try txn.put(ledger.ledgerMeta, key: "format", value: Self.format) } }
        return (ledger, report)
    }

    static func environmentOptions(_ options: Options) -> Environment.Options {
        var env = Environment.Options()
        env.readOnly = options.readOnly
        env.durable = options.durable
        env.mapSize = options.initialMapSize
        env.maxMapSize = max(options.maximumMapSize, options.initialMapSize)
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
        } catch let error as SparseMerkleError {
            if error.code == .unknownVersion { throw LedgerError(.notFound, error.message, cause: error) }
            throw LedgerError(.storage, "key map: \(error.message)", cause: error)
        } catch let error as LMDBError {
            if error.code == .fileNotFound { throw LedgerError(.ledgerNotFound, "no ledger found", cause: error) }
            throw LedgerError(.storage, "storage failure", cause: error)
        } catch {
            throw LedgerError(.storage, "storage failure", cause: error)
        }
    }

    /// Writes a new file readable by its owner only, whole or not at all: the bytes go to a
    /// temporary name first and are linked to `path` (which must not exist) once synced.
    static func writeSecretFile(_ path: String, contents: String) throws {
        let temporary = path + ".partial-\(getpid())"
        unlink(temporary)
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL, 0o600)
        guard fd >= 0 else { throw LedgerError(.keyFile, "cannot create \(path) (errno \(errno))") }
        defer { unlink(temporary) }
        var bytes = Array(contents.utf8)
        defer { secureZero(&bytes) }
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        let synced = written == bytes.count && fsync(fd) == 0
        close(fd)
        guard synced else { throw LedgerError(.keyFile, "cannot write \(path)") }
        guard link(temporary, path) == 0 else { throw LedgerError(.keyFile, "cannot create \(path) (errno \(errno))") }
        let directory = open((path as NSString).deletingLastPathComponent.isEmpty ? "." : (path as NSString).deletingLastPathComponent, O_RDONLY)
        if directory >= 0 {
            fsync(directory)
            close(directory)
        }
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
        try append(entries, sideWrites: { _, _ in })
    }

    /// Appends `count` already-encoded envelopes in one durable transaction, without
    /// collecting them first: `entry(i, body)` calls `body` once with entry `i`'s bytes.
    /// Each envelope's header is checked; a bad one aborts the whole batch.
    @discardableResult
    public func appendEncoded(count: Int, entry: (Int, (UnsafeRawBufferPointer) throws -> Void) throws -> Void) throws -> UInt64 {
        try appendEncoded(count: count, entry: entry, sideWrites: nil)
    }

    /// Appends `entries` and, in the same transaction, runs `sideWrites` with the write view
    /// and the first entry's index: higher layers keep their private indexes (ciphertexts,
    /// patient state) atomic with the log. `sideWrites` may run more than once when the map
    /// grows mid-write, each time in a fresh transaction, so it must only write.
    @discardableResult
    public func append(_ entries: [LedgerEntry], sideWrites: (TransactionView, UInt64) throws -> Void) throws -> UInt64 {
        var buffer: [UInt8] = []
        return try withoutActuallyEscaping(sideWrites) { sideWrites in
            try appendEncoded(count: entries.count, entry: { i, body in
                let entry = entries[i]
                LedgerEntry.encode(operation: entry.operation, key: entry.key, payload: entry.payload, into: &buffer)
                try buffer.withUnsafeBytes(body)
            }, sideWrites: sideWrites)
        }
    }

    private func appendEncoded(count: Int, entry: (Int, (UnsafeRawBufferPointer) throws -> Void) throws -> Void,
                               sideWrites: ((TransactionView, UInt64) throws -> Void)?) throws -> UInt64 {
        appendLock.lock()
        defer { appendLock.unlock() }
        var keyed: [KeyedEntry] = []
        return try publishingMapPages {
            try log.append(count: count, entry: { i, body in
                if i == 0 { keyed.removeAll(keepingCapacity: true) }  // the write may be retried
                try withoutActuallyEscaping(body) { body in
                    try entry(i) { bytes in
                        if let k = try Self.validateHeader(bytes) { keyed.append(KeyedEntry(position: i, operation: bytes[1], keyHash: k)) }
                        try body(bytes)
                    }
                }
            }, extra: { writer, first, leaves in
                try self.applyMap(writer: writer, first: first, count: count, leaves: leaves, keyed: keyed)
                try sideWrites?(writer.view, first)
            })
        }
    }

    /// An entry of a batch that touches a key.
    struct KeyedEntry {
        let position: Int
        let operation: UInt8
        let keyHash: Hash
    }

    /// Derives the map changes of a batch (DESIGN.md section 2) and applies them as the
    /// version named by the new tree size, inside the append's transaction.
    private func applyMap(writer: LMDBLogStore.Reader, first: UInt64, count: Int, leaves: [Hash], keyed: [KeyedEntry]) throws {
        let changes = keyed.map { entry -> SparseChange in
            guard entry.operation == LedgerEntry.Operation.set.rawValue else {
                return SparseChange(keyHash: entry.keyHash, value: nil)
            }
            return SparseChange(keyHash: entry.keyHash, value: Self.mapValue(index: first + UInt64(entry.position), leafHash: leaves[entry.position]))
        }
        try SparseMerkleTree.apply(changes, version: first + UInt64(count),
                                   writer: LMDBSparseStore.View(writer.view, store: sparse), snapshot: sparse)
    }

    /// The map value of a key: u64 big-endian log index || leaf hash (40 bytes).
    public static func mapValue(index: UInt64, leafHash: Hash) -> [UInt8] {
        withUnsafeBytes(of: index.bigEndian) { Array($0) } + leafHash.bytes
    }

    /// Appends envelopes packed back to back in `packed` (entry `i` ends at `ends[i]`) in one
    /// durable transaction: the fastest way to add many entries, since leaf hashing runs on
    /// all cores before the write. Every header is checked first; a bad one rejects the batch.
    @discardableResult
    public func appendPacked(_ packed: UnsafeRawBufferPointer, ends: UnsafeBufferPointer<Int>) throws -> UInt64 {
        var start = 0
        var keyed: [KeyedEntry] = []
        for (i, end) in ends.enumerated() {
            guard end >= start, end <= packed.count else {
                throw LedgerError(.invalidArgument, "entry \(i) boundary is outside the packed buffer")
            }
            if let k = try Self.validateHeader(UnsafeRawBufferPointer(rebasing: packed[start..<end])) {
                keyed.append(KeyedEntry(position: i, operation: packed[start + 1], keyHash: k))
            }
            start = end
        }
        appendLock.lock()
        defer { appendLock.unlock() }
        return try publishingMapPages {
            try log.append(packed: packed, ends: ends) { writer, first, leaves in
                try self.applyMap(writer: writer, first: first, count: ends.count, leaves: leaves, keyed: keyed)
            }
        }
    }

    /// Runs an append: the key map's new pages enter its cache only once it has committed.
    private func publishingMapPages(_ append: () throws -> UInt64) throws -> UInt64 {
        do {
            let first = try Self.storage(append)
            sparse.publish()
            return first
        } catch {
            sparse.discardStaged()
            throw error
        }
    }

    /// Cheap envelope check for the append path (no copy). Returns the key hash of a keyed entry.
    @discardableResult
    static func validateHeader(_ bytes: UnsafeRawBufferPointer) throws -> Hash? {
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
        guard keyLength > 0 else { return nil }
        let key = UnsafeRawBufferPointer(rebasing: bytes[4..<(4 + keyLength)])
        guard String(validating: key, as: UTF8.self) != nil else {
            throw LedgerError(.invalidEntry, "entry key is not valid UTF-8")
        }
        return SHA256.hash(key)
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

    /// The root of the key map after `size` entries (the current size when `nil`).
    ///
    /// Map versions exist at the sizes where appends committed (every checkpoint's size).
    /// - Throws: ``LedgerError`` `.notFound` for a size between two commits or pruned.
    public func mapRoot(size: UInt64? = nil) throws -> Hash {
        try Self.storage {
            try store.read { reader in try mapRoot(view: reader.view, size: size ?? reader.treeSize) }
        }
    }

    private func mapRoot(view: TransactionView, size: UInt64) throws -> Hash {
        if size == 0 { return SparseHash.empty }
        guard let node = try LMDBSparseStore.View(view, store: sparse).root(version: size) else {
            throw LedgerError(.notFound, "no map version at tree size \(size) (versions exist where appends committed, from the oldest not pruned)")
        }
        return node.hash
    }

    /// The checkpoint of the current committed state (unsigned), with the map root of the same size.
    public func checkpoint() throws -> Checkpoint {
        try Self.storage {
            try store.read { reader in
                let n = reader.treeSize
                return Checkpoint(origin: origin, size: n, rootHash: try reader.rootHash(size: n),
                                  mapRoot: try mapRoot(view: reader.view, size: n))
            }
        }
    }

    /// The proof that `key` holds its value (or is absent) in the map after `size` entries
    /// (the current size when `nil`), with the map root it proves against.
    public func keyProof(key: String, size: UInt64? = nil) throws -> (proof: SparseProof, mapRoot: Hash, treeSize: UInt64) {
        let k = SHA256.hash(utf8: key)
        let (proof, mapRoot, n) = try atMapVersion(size: size, empty: { SparseProof(keyHash: k, terminal: .empty, siblings: []) }) {
            try SparseMerkleTree.proof(keyHash: k, version: $1, reader: $0)
        }
        return (proof, mapRoot, n)
    }

    /// One proof of what each of `keys` maps to (or that it is absent) in the map after `size`
    /// entries (the current size when `nil`), sharing the sibling hashes of their paths, with
    /// the map root it proves against. Duplicate keys are proven once.
    /// - Throws: ``LedgerError`` `.invalidArgument` for no key or more than
    ///   ``SparseMultiProof/maxKeys``, `.notFound` for a size with no map version.
    public func keyProofs(keys: [String], size: UInt64? = nil) throws -> (proof: SparseMultiProof, mapRoot: Hash, treeSize: UInt64) {
        guard !keys.isEmpty else { throw LedgerError(.invalidArgument, "a multi-key proof needs at least one key") }
        guard keys.count <= SparseMultiProof.maxKeys else {
            throw LedgerError(.invalidArgument, "a multi-key proof covers at most \(SparseMultiProof.maxKeys) keys")
        }
        let hashes = keys.map { SHA256.hash(utf8: $0) }
        // The empty map: every key's search ends at the root, EMPTY.
        let empty = {
            let sorted = Array(Set(hashes)).sorted()
            return SparseMultiProof(keyHashes: sorted, values: sorted.map { _ in nil }, nodes: [.empty])
        }
        let (proof, mapRoot, n) = try atMapVersion(size: size, empty: empty) {
            try SparseMerkleTree.multiProof(keyHashes: hashes, version: $1, reader: $0)
        }
        return (proof, mapRoot, n)
    }

    /// Runs `prove` over the map version after `size` entries (the current size when `nil`) in
    /// one read transaction, and returns its result with that version's map root and size; the
    /// map after 0 entries, which has no stored version, is `empty()` under the root `EMPTY`.
    /// - Throws: ``LedgerError`` `.notFound` for a size past the log or with no map version.
    private func atMapVersion<R>(size: UInt64?, empty: () -> R,
                                 _ prove: (LMDBSparseStore.View, UInt64) throws -> R) throws -> (R, Hash, UInt64) {
        try Self.storage {
            try store.read { reader in
                let n = size ?? reader.treeSize
                guard n <= reader.treeSize else { throw LedgerError(.notFound, "size \(n) exceeds tree size \(reader.treeSize)") }
                if n == 0 { return (empty(), SparseHash.empty, 0) }
                let view = LMDBSparseStore.View(reader.view, store: sparse)
                guard try view.root(version: n) != nil else {
                    throw LedgerError(.notFound, "no map version at tree size \(n) (versions exist where appends committed, from the oldest not pruned)")
                }
                return (try prove(view, n), try mapRoot(view: reader.view, size: n), n)
            }
        }
    }

    /// The signed checkpoint note of the current state. Ed25519 signatures are deterministic,
    /// so the same size always yields the same note.
    /// - Throws: ``LedgerError`` `.keyFile` when the ledger was opened read-only.
    public func signedCheckpoint() throws -> String { try signedCheckpointAndState().note }

    /// The signed checkpoint note of the current state with the checkpoint it signs, so that
    /// proofs can be made at exactly its size.
    public func signedCheckpointAndState() throws -> (note: String, checkpoint: Checkpoint) {
        guard let signer else { throw LedgerError(.keyFile, "ledger opened read-only has no signer key") }
        let state = try checkpoint()
        return (try signer.sign(state.text), state)
    }

    /// What ``rebuildIndex()`` found.
    public struct RebuildReport: Sendable, Equatable {
        /// Map versions rebuilt (one per committed append).
        public let versions: Int
        /// Versions whose rebuilt root differs from the root stored before (should be empty).
        public let mismatches: [UInt64]
        /// The map root at the current size after the rebuild.
        public let mapRoot: Hash
    }

    /// Rebuilds the key map from the log: drops the sparse tree and replays every entry,
    /// recreating each retained version, and reports versions whose root changed.
    ///
    /// The map is derived state, so this repairs a damaged index. Run it with no other
    /// writer on the ledger; readers see the old map until it finishes, except that proofs
    /// at versions not yet rebuilt fail while it runs.
    public func rebuildIndex() throws -> RebuildReport {
        appendLock.lock()
        defer { appendLock.unlock() }
        return try Self.storage {
            // Versions and roots before the rebuild.
            let (size, previous) = try store.read { reader -> (UInt64, [(UInt64, Hash)]) in
                var roots: [(UInt64, Hash)] = []
                try reader.view.withCursor(sparseRootsDatabase()) { cursor in
                    var more = try cursor.first()
                    while more {
                        let version = cursor.withCurrent { key, _ in UInt64(bigEndianBytes: key) }
                        if let version, let node = try LMDBSparseStore.View(reader.view, store: sparse).root(version: version) {
                            roots.append((version, node.hash))
                        }
                        more = try cursor.next()
                    }
                }
                return (reader.treeSize, roots)
            }
            var versions = previous.map(\.0).filter { $0 <= size }
            if versions.last != size && size > 0 { versions.append(size) }
            try environment.write { txn in try sparse.clear(txn.unsafeView) }
            var mismatches: [UInt64] = []
            let old = Dictionary(previous, uniquingKeysWith: { a, _ in a })
            var start: UInt64 = 0
            var root = SparseHash.empty
            for version in versions {
                // Read this version's entries and derive its changes from their bytes.
                let changes = try store.read { reader -> [SparseChange] in
                    var changes: [SparseChange] = []
                    var index = start
                    while index < version {
                        try reader.withEntry(at: index) { bytes in
                            if let k = try Self.validateHeader(bytes) {
                                changes.append(SparseChange(keyHash: k, value: bytes[1] == LedgerEntry.Operation.set.rawValue
                                    ? Self.mapValue(index: index, leafHash: SHA256.leafHash(bytes)) : nil))
                            }
                        }
                        index += 1
                    }
                    return changes
                }
                root = try sparse.write { view in try SparseMerkleTree.apply(changes, version: version, writer: view).hash }
                if let before = old[version], before != root { mismatches.append(version) }
                start = version
            }
            return RebuildReport(versions: versions.count, mismatches: mismatches, mapRoot: root)
        }
    }

    /// Drops the key map's versions at tree sizes below `size`: their roots, and the page
    /// records no version at or after `size` uses. Versions from `size` on keep every root
    /// and proof; the latest version is always kept. The log is untouched, so inclusion and
    /// consistency proofs at every size still work, and a key proof at a dropped size fails
    /// with `.notFound`.
    ///
    /// Size 0 (the empty map) always has its root, whatever is pruned.
    ///
    /// The freed pages are reused by later writes (the data file does not shrink). Everything
    /// goes in one durable transaction unless `pagesPerTransaction` bounds it: then the page
    /// records are deleted in steps of about that many, each its own durable transaction
    /// (the report counts them), which is slower but bounds each transaction and keeps an
    /// interrupted run's progress. One transaction also needs free space for the B-tree
    /// pages it rewrites before it frees any (steps reuse what earlier steps freed), so on a
    /// nearly full disk prune in steps.
    ///
    /// Every write waits while a transaction of the prune runs, appends and audited reads
    /// included (an audited read returns only once its audit entry is committed); with
    /// steps, they run between steps, this process's as well as other processes'. Reads that
    /// record no audit entry (entries, proofs, checkpoints) do not wait, and a read that
    /// began before the prune keeps its snapshot. A request that takes a checkpoint and then
    /// proves keys at its size in a later read (`export`, blob range proofs) fails with
    /// `.notFound` if that size is pruned in between: prune only sizes no such request still
    /// uses.
    /// - Throws: ``LedgerError`` `.invalidArgument` when `size` is beyond the tree size or
    ///   `pagesPerTransaction` is not positive; `.storage` on a storage failure (steps
    ///   already committed stay done), when a key-map record does not decode (nothing of
    ///   that transaction is deleted; `verify` names the record), or when the key map ends
    ///   before the tree size (run `rebuild-index`).
    @discardableResult
    public func pruneKeyMap(before size: UInt64, pagesPerTransaction: Int = .max) throws -> LMDBSparseStore.PruneReport {
        guard pagesPerTransaction > 0 else { throw LedgerError(.invalidArgument, "pagesPerTransaction must be positive") }
        return try Self.storage {
            // The tree only grows, so neither this check nor the prune's plan needs the append
            // lock; each step holds it, so this process's appends run between steps.
            let treeSize = try store.read { $0.treeSize }
            guard size <= treeSize else {
                throw LedgerError(.invalidArgument, "cannot prune the key map before size \(size): the tree size is \(treeSize), and its version must be kept")
            }
            do {
                return try sparse.prune(before: size, pagesPerTransaction: pagesPerTransaction) { step in
                    appendLock.lock()
                    defer { appendLock.unlock() }
                    return try step()
                }
            } catch let error as SparseMerkleError where error.code == .versionOrder {
                // Every append writes a map version at its size, so this map lags the log.
                throw LedgerError(.storage, "cannot prune the key map before size \(size): the key map ends before the tree size \(treeSize); run rebuild-index", cause: error)
            }
        }
    }

    private func sparseRootsDatabase() -> Database { sparse.rootsDatabase }

    /// Bytes of the data file in use.
    public func storedBytes() throws -> Int { try Self.storage { try environment.usedBytes() } }
}
