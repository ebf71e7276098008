import Foundation
import LedgerCrypto
#if canImport(Glibc)
import Glibc
#endif

/// The master key file: the AES-256 key that wraps every patient's data key, and the secret
/// that turns patient ids into pseudonyms. It lives outside the LMDB file (keep it on other
/// storage than the ledger's backups) and must be readable by its owner only (mode 0600).
///
/// The wrapping key has a generation. Erasing a patient moves every other patient's data key
/// to a new generation and destroys the old one, so wrapped copies that LMDB's freed pages
/// still hold can no longer be opened (`docs/SECURITY.md`). During that move the file holds
/// both generations; ``PatientRecords`` finishes or undoes an interrupted move when it opens.
///
/// File format (text, one item per line):
/// ```
/// medledger-master-key 1
/// pseudonym-secret <base64 32 bytes>
/// generation <n> <base64 32 bytes>
/// previous <n> <base64 32 bytes>        (only while a rotation is in progress)
/// ```
///
/// Several processes (or several ``PatientRecords``) may share one file: rotations start and
/// are settled inside the ledger's write transactions, which LMDB grants one process at a
/// time, and a generation that memory lacks makes the file be read again.
///
/// Thread safety: reads of the keys are guarded by a lock; reading and replacing the file by
/// another.
public final class MasterKeyFile: @unchecked Sendable, CustomStringConvertible {
    // Sendable: `lock` guards the mutable generations.
    /// The file's path.
    public let path: String
    let pseudonymSecret: SecureBytes
    /// The pseudonym secret prepared for HMAC once: every put and read names its patient and
    /// record through it.
    let pseudonymMAC: HMACSHA256.Key
    private let lock = NSLock()
    private var currentGeneration: UInt64
    private var currentKey: SecureBytes
    private var previousKey: (generation: UInt64, key: SecureBytes)?
    /// Serializes reading the file again and replacing it, within this process.
    private let fileLock = NSLock()

    private init(path: String, pseudonymSecret: SecureBytes, generation: UInt64, key: SecureBytes,
                 previous: (UInt64, SecureBytes)?) throws {
        self.path = path
        self.pseudonymSecret = pseudonymSecret
        self.pseudonymMAC = try HMACSHA256.Key(pseudonymSecret)
        self.currentGeneration = generation
        self.currentKey = key
        self.previousKey = previous.map { (generation: $0.0, key: $0.1) }
    }

    /// Creates a new master key file (mode 0600) with fresh random secrets.
    /// - Throws: ``LedgerError`` `.keyFile` when the file exists or cannot be written.
    public static func create(at path: String) throws -> MasterKeyFile {
        let file = try MasterKeyFile(path: path, pseudonymSecret: try SecureBytes(randomCount: 32), generation: 1,
                                 key: try SecureBytes(randomCount: 32), previous: nil)
        try file.withText { text in try Ledger.writeSecretFile(path, contents: text) }
        return file
    }

    /// Reads a master key file.
    /// - Throws: ``LedgerError`` `.keyFile` when it is missing, readable by others than its
    ///   owner, or malformed.
    public convenience init(path: String) throws {
        let contents = try Self.read(path)
        try self.init(path: path, pseudonymSecret: contents.pseudonymSecret, generation: contents.generation,
                      key: contents.key, previous: contents.previous)
    }

    /// What a key file holds.
    private struct Contents {
        let pseudonymSecret: SecureBytes
        let generation: UInt64
        let key: SecureBytes
        let previous: (UInt64, SecureBytes)?
    }

    /// Reads and parses the file at `path`.
    private static func read(_ path: String) throws -> Contents {
        var info = stat()
        guard stat(path, &info) == 0 else { throw LedgerError(.keyFile, "cannot read master key file \(path)") }
        guard info.st_mode & 0o077 == 0 else {
            throw LedgerError(.keyFile, "master key file \(path) is readable by others; chmod 600 it")
        }
        guard var bytes = FileManager.default.contents(atPath: path).map({ [UInt8]($0) }) else {
            throw LedgerError(.keyFile, "cannot read master key file \(path)")
        }
        defer { secureZero(&bytes) }
        guard bytes.count < 4096 else { throw LedgerError(.keyFile, "\(path) is not a master key file") }
        let lines = bytes.split(separator: UInt8(ascii: "\n")).map { $0.split(separator: UInt8(ascii: " ")) }
        func word(_ w: ArraySlice<UInt8>) -> String { String(decoding: w, as: UTF8.self) }
        func secret(_ w: ArraySlice<UInt8>) throws -> SecureBytes {
            guard var raw = Base64.decode(word(w)), raw.count == 32 else {
                throw LedgerError(.keyFile, "malformed key in master key file \(path)")
            }
            defer { secureZero(&raw) }
            return raw.withUnsafeBytes { SecureBytes(copying: $0) }
        }
        guard lines.count >= 3, lines[0].count == 2, word(lines[0][0]) == "medledger-master-key", word(lines[0][1]) == "1",
              lines[1].count == 2, word(lines[1][0]) == "pseudonym-secret",
              lines[2].count == 3, word(lines[2][0]) == "generation", let generation = UInt64(word(lines[2][1])) else {
            throw LedgerError(.keyFile, "\(path) is not a master key file")
        }
        var previous: (UInt64, SecureBytes)?
        if lines.count == 4 {
            guard lines[3].count == 3, word(lines[3][0]) == "previous", let g = UInt64(word(lines[3][1])) else {
                throw LedgerError(.keyFile, "\(path) is not a master key file")
            }
            previous = (g, try secret(lines[3][2]))
        } else if lines.count != 3 {
            throw LedgerError(.keyFile, "\(path) is not a master key file")
        }
        return Contents(pseudonymSecret: try secret(lines[1][1]), generation: generation,
                        key: try secret(lines[2][2]), previous: previous)
    }

    /// The current generation number.
    public var generation: UInt64 { lock.withLock { currentGeneration } }

    /// The key of `generation`, if memory holds it (``reload()`` reads the file again).
    ///
    /// With `forgettingOlder`, when memory holds `generation`, it drops every older generation
    /// it holds: for a caller that read `generation` from the ledger's committed state, where
    /// an older one has been destroyed by the erasure that moved the ledger past it. (Reading
    /// the file again restores one that was not: the file keeps a generation until the
    /// ledger's state has moved past it.)
    func key(generation: UInt64, forgettingOlder: Bool = false) -> SecureBytes? {
        lock.withLock {
            if generation == currentGeneration {
                if forgettingOlder, let previous = previousKey, previous.generation < generation { previousKey = nil }
                return currentKey
            }
            if let previousKey, previousKey.generation == generation { return previousKey.key }
            return nil
        }
    }

    /// The generation a rotation is moving away from, when one is in progress.
    var previousGeneration: UInt64? { lock.withLock { previousKey?.generation } }

    /// Reads the file again: another process (or another ``PatientRecords`` of this one) may
    /// have rotated it by erasing a patient. A file whose pseudonym secret differs belongs to
    /// another ledger and is refused (memory keeps what it held).
    ///
    /// A file read while another process's erasure is under way holds that erasure's new
    /// generation before (and unless) it commits; callers that wrap keys check the key against
    /// the ledger's key check, and a data key that does not open makes readers read again.
    func reload() throws {
        fileLock.lock()
        defer { fileLock.unlock() }
        try reloadLocked()
    }

    /// ``reload()`` with `fileLock` held.
    private func reloadLocked() throws {
        let contents = try Self.read(path)
        let sameSecret = contents.pseudonymSecret.withUnsafeBytes { new in
            pseudonymSecret.withUnsafeBytes { old in constantTimeEqual(new, old) }
        }
        guard sameSecret else {
            throw LedgerError(.wrongMasterKey, "the master key file \(path) now holds another ledger's secrets")
        }
        lock.withLock {
            currentGeneration = contents.generation
            currentKey = contents.key
            previousKey = contents.previous.map { (generation: $0.0, key: $0.1) }
        }
    }

    /// Brings the file in line with the generation the ledger committed: finishes a rotation
    /// that committed (its old generation is removed) and undoes one that did not (its new
    /// generation was never used). The caller holds the ledger's write transaction, so no
    /// other process rotates meanwhile; reads the file first, since one may have before.
    func settle(committed: UInt64) throws {
        fileLock.lock()
        defer { fileLock.unlock() }
        try reloadLocked()
        let changed: Bool = lock.withLock {
            guard let previous = previousKey else { return false }
            if currentGeneration == committed {
                previousKey = nil
            } else if previous.generation == committed {
                (currentGeneration, currentKey) = (previous.generation, previous.key)
                previousKey = nil
            } else {
                return false  // neither is the ledger's: its key check reports that
            }
            return true
        }
        if changed { try rewrite() }
    }

    /// Starts a rotation away from `committed`, the generation the ledger uses (inside its
    /// write transaction, after ``settle(committed:)``): a new current generation is written
    /// next to the old one. Returns the new generation and its key.
    /// - Throws: ``LedgerError`` `.wrongMasterKey` when the file's current generation is not
    ///   the ledger's.
    func beginRotation(from committed: UInt64) throws -> (generation: UInt64, key: SecureBytes) {
        fileLock.lock()
        defer { fileLock.unlock() }
        try reloadLocked()
        let next = try SecureBytes(randomCount: 32)
        let started: (generation: UInt64, key: SecureBytes)? = lock.withLock {
            guard previousKey == nil, currentGeneration == committed else { return nil }
            previousKey = (currentGeneration, currentKey)
            currentGeneration += 1
            currentKey = next
            return (currentGeneration, next)
        }
        guard let started else {
            throw LedgerError(.wrongMasterKey, "the master key file \(path) is at generation \(generation), the ledger at \(committed)")
        }
        try rewrite()
        return started
    }

    /// Replaces the file atomically (write a temporary file, fsync, rename, fsync the directory).
    private func rewrite() throws {
        let temporary = path + ".tmp"
        unlink(temporary)
        try withText { text in try Ledger.writeSecretFile(temporary, contents: text) }
        guard rename(temporary, path) == 0 else {
            unlink(temporary)
            throw LedgerError(.keyFile, "cannot replace master key file \(path) (errno \(errno))")
        }
        let directory = (path as NSString).deletingLastPathComponent
        let fd = open(directory.isEmpty ? "." : directory, O_RDONLY)
        if fd >= 0 {
            fsync(fd)
            close(fd)
        }
    }

    private func withText(_ body: (String) throws -> Void) throws {
        let text: String = lock.withLock {
            func b64(_ s: SecureBytes) -> String { s.withUnsafeBytes { Base64.encode($0) } }
            var text = "medledger-master-key 1\npseudonym-secret \(b64(pseudonymSecret))\ngeneration \(currentGeneration) \(b64(currentKey))\n"
            if let previousKey { text += "previous \(previousKey.generation) \(b64(previousKey.key))\n" }
            return text
        }
        try body(text)
    }

    public var description: String { "MasterKeyFile(\(path), generation \(generation), redacted)" }
}
