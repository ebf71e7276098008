internal import CCrypto

/// The only place this module's small C helpers are called, so their use is easy to audit.
enum CryptoShims {
    @inline(__always)
    static func memcmp(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, _ count: Int) -> Int32 {
        CCrypto_CRYPTO_memcmp(a, b, count)
    }

    @inline(__always)
    static func cleanse(_ p: UnsafeMutableRawPointer, _ count: Int) {
        CCrypto_OPENSSL_cleanse(p, count)
    }

    @inline(__always)
    static func randomBytes(_ p: UnsafeMutableRawPointer, _ count: Int) -> Bool {
        CCrypto_RAND_bytes(p, Int32(count)) == 1
    }
}

/// Cryptographically secure random bytes from OpenSSL's DRBG (`RAND_bytes`).
public enum SecureRandom {
    /// Fills `buffer` with random bytes.
    /// - Throws: ``CryptoError`` `.randomFailure` when the generator is not seeded.
    public static func fill(_ buffer: UnsafeMutableRawBufferPointer) throws {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        guard CryptoShims.randomBytes(base, buffer.count) else {
            throw CryptoError(code: .randomFailure, operation: "RAND_bytes")
        }
    }

    /// Returns `count` random bytes.
    public static func bytes(_ count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        try out.withUnsafeMutableBytes { try fill($0) }
        return out
    }
}

/// Secret bytes on the heap, wiped with `OPENSSL_cleanse` when released, never printed.
///
/// Thread safety: immutable after creation; safe to share.
public final class SecureBytes: @unchecked Sendable, CustomStringConvertible {
    // Sendable: the buffer is written only in init and read-only afterwards.
    private let storage: UnsafeMutableRawBufferPointer

    /// Copies `bytes`; the caller should wipe its own copy.
    public init(copying bytes: UnsafeRawBufferPointer) {
        storage = .allocate(byteCount: max(bytes.count, 1), alignment: 16)
        if let base = bytes.baseAddress, bytes.count > 0 {
            storage.baseAddress!.copyMemory(from: base, byteCount: bytes.count)
        }
        count = bytes.count
    }

    /// `count` random bytes.
    public init(randomCount: Int) throws {
        storage = .allocate(byteCount: max(randomCount, 1), alignment: 16)
        count = randomCount
        do {
            try SecureRandom.fill(UnsafeMutableRawBufferPointer(rebasing: storage[0..<randomCount]))
        } catch {
            storage.deallocate()
            throw error
        }
    }

    /// Number of bytes.
    public let count: Int

    deinit {
        CryptoShims.cleanse(storage.baseAddress!, storage.count)
        storage.deallocate()
    }

    /// Lends the secret; do not copy it out of the closure.
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(rebasing: storage[0..<count]))
    }

    public var description: String { "SecureBytes(\(count) bytes, redacted)" }
}

/// Wipes a hash used as key material (a derived key) in place (`OPENSSL_cleanse`).
public func secureZero(_ hash: inout Hash) {
    withUnsafeMutableBytes(of: &hash.words) { CryptoShims.cleanse($0.baseAddress!, $0.count) }
}

/// Wipes `bytes` in place (`OPENSSL_cleanse`).
public func secureZero(_ bytes: UnsafeMutableRawBufferPointer) {
    if let base = bytes.baseAddress, bytes.count > 0 { CryptoShims.cleanse(base, bytes.count) }
}

/// Wipes an array's bytes in place (`OPENSSL_cleanse`); for secrets that passed through arrays.
public func secureZero(_ bytes: inout [UInt8]) {
    bytes.withUnsafeMutableBytes(secureZero)
}
