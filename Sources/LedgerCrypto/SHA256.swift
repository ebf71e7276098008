internal import CCrypto

/// SHA-256 over OpenSSL libcrypto.
///
/// Three paths: ``hash(_:)-(UnsafeRawBufferPointer)`` for one buffer, ``Hasher`` for streams, and
/// the Merkle helpers ``leafHash(_:)`` and ``nodeHash(_:_:)`` that hash many small inputs on a
/// stack context with no allocation and no provider lookup.
///
/// For example:
/// ```swift
/// var hasher = SHA256.Hasher()
/// hasher.update(Array("ab".utf8)); hasher.update(Array("c".utf8))
/// assert(hasher.finalize() == SHA256.hash(Array("abc".utf8)))
/// ```
public enum SHA256 {
    /// SHA-256 of one buffer.
    @inlinable
    public static func hash(_ bytes: UnsafeRawBufferPointer) -> Hash {
        hashParts(bytes, UnsafeRawBufferPointer(start: nil, count: 0))
    }

    /// SHA-256 of a byte array.
    @inlinable
    public static func hash(_ bytes: [UInt8]) -> Hash {
        bytes.withUnsafeBytes { hash($0) }
    }

    /// SHA-256 of a string's UTF-8 bytes.
    public static func hash(utf8 text: String) -> Hash {
        var copy = text
        return copy.withUTF8 { hash(UnsafeRawBufferPointer($0)) }
    }

    /// SHA-256 of the concatenation `a || b`, without building it.
    @usableFromInline
    static func hashParts(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Hash {
        var ctx = SHA256_CTX()
        CCrypto_SHA256_Init(&ctx)
        if a.count > 0 { CCrypto_SHA256_Update(&ctx, a.baseAddress, a.count) }
        if b.count > 0 { CCrypto_SHA256_Update(&ctx, b.baseAddress, b.count) }
        return Hash { out in _ = CCrypto_SHA256_Final(out.baseAddress, &ctx) }
    }

    /// RFC 6962 leaf hash: SHA-256(0x00 || entry).
    @inlinable
    public static func leafHash(_ entry: UnsafeRawBufferPointer) -> Hash {
        withUnsafeBytes(of: UInt8(0)) { prefix in hashParts(prefix, entry) }
    }

    /// RFC 6962 leaf hash of a byte array.
    @inlinable
    public static func leafHash(_ entry: [UInt8]) -> Hash {
        entry.withUnsafeBytes { leafHash($0) }
    }

    /// RFC 6962 interior node hash: SHA-256(0x01 || left || right).
    public static func nodeHash(_ left: Hash, _ right: Hash) -> Hash {
        prefixedPair(0x01, left, right)
    }

    /// SHA-256(prefix || a || b) for two hashes, hashed from one 65-byte stack buffer.
    public static func prefixedPair(_ prefix: UInt8, _ a: Hash, _ b: Hash) -> Hash {
        // 72 bytes: prefix at offset 7 so a and b start 8-byte aligned at 8 and 40.
        var block: (UInt64, (UInt64, UInt64, UInt64, UInt64), (UInt64, UInt64, UInt64, UInt64)) =
            (UInt64(prefix) << 56, a.words, b.words)
        return withUnsafeMutableBytes(of: &block) { raw in
            raw[7] = prefix
            var ctx = SHA256_CTX()
            CCrypto_SHA256_Init(&ctx)
            CCrypto_SHA256_Update(&ctx, raw.baseAddress! + 7, 65)
            return Hash { out in _ = CCrypto_SHA256_Final(out.baseAddress, &ctx) }
        }
    }

    /// SHA-256(prefix || a || b) for a one-byte prefix and two hashes' worth of arbitrary parts.
    public static func prefixed(_ prefix: UInt8, _ parts: UnsafeRawBufferPointer...) -> Hash {
        var ctx = SHA256_CTX()
        CCrypto_SHA256_Init(&ctx)
        var p = prefix
        CCrypto_SHA256_Update(&ctx, &p, 1)
        for part in parts where part.count > 0 {
            CCrypto_SHA256_Update(&ctx, part.baseAddress, part.count)
        }
        return Hash { out in _ = CCrypto_SHA256_Final(out.baseAddress, &ctx) }
    }

    /// Incremental SHA-256 for data that arrives in pieces.
    ///
    /// Thread safety: a value type; do not share one hasher between threads.
    public struct Hasher {
        private final class Context {
            var ctx = SHA256_CTX()
            init() { CCrypto_SHA256_Init(&ctx) }
            func copy() -> Context {
                let other = Context()
                other.ctx = ctx
                return other
            }
        }
        private var context = Context()

        /// A hasher with no input yet.
        public init() {}

        /// Adds bytes.
        public mutating func update(_ bytes: UnsafeRawBufferPointer) {
            if !isKnownUniquelyReferenced(&context) { context = context.copy() }
            if bytes.count > 0 { CCrypto_SHA256_Update(&context.ctx, bytes.baseAddress, bytes.count) }
        }

        /// Adds bytes.
        public mutating func update(_ bytes: [UInt8]) {
            bytes.withUnsafeBytes { update($0) }
        }

        /// The hash of everything added so far; the hasher itself is unchanged.
        public func finalize() -> Hash {
            var ctx = context.ctx
            return Hash { out in _ = CCrypto_SHA256_Final(out.baseAddress, &ctx) }
        }
    }
}
