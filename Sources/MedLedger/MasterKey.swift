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
/// Thread safety: the owner (``PatientRecords``) serializes rotations; reads of the current
/// key are guarded by a lock.
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
        try self.init(path: path, pseudonymSecret: try secret(lines[1][1]), generation: generation,
                  key: try secret(lines[2][2]), previous: previous)
    }

    /// The current generation number.
    public var generation: UInt64 { lock.withLock { currentGeneration } }

    /// The key of `generation`, if this file holds it.
    func key(generation: UInt64) -> SecureBytes? {
        lock.withLock {
            if generation == currentGeneration { return currentKey }
            if let previousKey, previousKey.generation == generation { return previousKey.key }
            return nil
        }
    }

    /// The generation a rotation is moving away from, when one is in progress.
    var previousGeneration: UInt64? { lock.withLock { previousKey?.generation } }

    /// Starts a rotation: a new current generation is written next to the old one.
    func beginRotation() throws {
        let next = try SecureBytes(randomCount: 32)
        lock.withLock {
            previousKey = (currentGeneration, currentKey)
            currentGeneration += 1
            currentKey = next
        }
        try rewrite()
    }

    /// Finishes a rotation: the old generation is removed from the file.
    func finishRotation() throws {
        lock.withLock { previousKey = nil }
        try rewrite()
    }

    /// Undoes a rotation whose ledger write did not commit.
    func abandonRotation() throws {
        lock.withLock {
            guard let previousKey else { return }
            currentGeneration = previousKey.generation
            currentKey = previousKey.key
            self.previousKey = nil
        }
        try rewrite()
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
