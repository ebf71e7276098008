/// A 32-byte hash (SHA-256 output), stored inline without heap allocation.
///
/// For example:
/// ```swift
/// let h = SHA256.hash(Array("abc".utf8))
/// print(h.hex)  // ba7816bf...
/// ```
///
/// Equality is ordinary (not constant-time): hashes are public values. Compare secret tags
/// with ``constantTimeEqual(_:_:)``.
public struct Hash: Sendable, Hashable, Comparable, CustomStringConvertible {
    @usableFromInline
    var words: (UInt64, UInt64, UInt64, UInt64)

    /// The all-zero hash, used as `EMPTY` by the sparse tree.
    @inlinable
    public static var zero: Hash { Hash(words: (0, 0, 0, 0)) }

    @inlinable
    init(words: (UInt64, UInt64, UInt64, UInt64)) { self.words = words }

    /// Loads the 32 bytes at `offset` of `raw`, which the caller has bounds-checked; for
    /// parsers of fixed layouts on hot paths.
    @inlinable
    public init(unchecked raw: UnsafeRawBufferPointer, at offset: Int) {
        self.words = (raw.loadUnaligned(fromByteOffset: offset, as: UInt64.self),
                      raw.loadUnaligned(fromByteOffset: offset + 8, as: UInt64.self),
                      raw.loadUnaligned(fromByteOffset: offset + 16, as: UInt64.self),
                      raw.loadUnaligned(fromByteOffset: offset + 24, as: UInt64.self))
    }

    /// Stores the 32 bytes at `offset` of `out`, which the caller has bounds-checked.
    @inlinable
    public func store(to out: UnsafeMutableRawBufferPointer, at offset: Int) {
        out.storeBytes(of: words.0, toByteOffset: offset, as: UInt64.self)
        out.storeBytes(of: words.1, toByteOffset: offset + 8, as: UInt64.self)
        out.storeBytes(of: words.2, toByteOffset: offset + 16, as: UInt64.self)
        out.storeBytes(of: words.3, toByteOffset: offset + 24, as: UInt64.self)
    }

    /// Copies exactly 32 bytes; `nil` for any other count.
    @inlinable
    public init?(_ raw: UnsafeRawBufferPointer) {
        guard raw.count == 32 else { return nil }
        self.words = (0, 0, 0, 0)
        withUnsafeMutableBytes(of: &words) { $0.copyMemory(from: raw) }
    }

    /// Copies exactly 32 bytes; `nil` for any other count.
    @inlinable
    public init?(_ bytes: some Collection<UInt8>) {
        guard bytes.count == 32 else { return nil }
        self.words = (0, 0, 0, 0)
        withUnsafeMutableBytes(of: &words) { out in
            for (i, b) in bytes.enumerated() { out[i] = b }
        }
    }

    /// Parses 64 hex digits (either case); `nil` otherwise.
    public init?(hex: some StringProtocol) {
        guard let bytes = Hex.decode(hex), let h = Hash(bytes) else { return nil }
        self = h
    }

    /// Fills a hash by letting `body` write its 32 bytes.
    @inlinable
    public init(unsafeUninitializedBytes body: (UnsafeMutableRawBufferPointer) throws -> Void) rethrows {
        self.words = (0, 0, 0, 0)
        try withUnsafeMutableBytes(of: &words, body)
    }

    /// Lends the 32 bytes.
    @inlinable
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try Swift.withUnsafeBytes(of: words, body)
    }

    /// Byte `i` (0 ..< 32) of the hash, read arithmetically from the stored words.
    ///
    /// Hot bit-twiddling paths use this instead of ``withUnsafeBytes(_:)``: an optimized build
    /// was seen to read a constant offset through the copied tuple as zero.
    @inlinable
    public func byte(at i: Int) -> UInt8 {
        let w: UInt64
        switch i >> 3 {
        case 0: w = words.0
        case 1: w = words.1
        case 2: w = words.2
        default: w = words.3
        }
        // The words hold the bytes in memory order; on any host, the little-endian value of a
        // word has byte 0 in its lowest 8 bits.
        return UInt8(truncatingIfNeeded: UInt64(littleEndian: w) >> (UInt64(i & 7) &* 8))
    }

    /// The 32 bytes as an array.
    public var bytes: [UInt8] { withUnsafeBytes { Array($0) } }

    /// Lowercase hex, 64 characters.
    public var hex: String {
        String(unsafeUninitializedCapacity: 64) { out in
            writeHex(to: UnsafeMutableRawPointer(out.baseAddress!))
            return 64
        }
    }

    /// Writes the 64 characters of ``hex`` at `out`, which has room for them.
    @inlinable
    public func writeHex(to out: UnsafeMutableRawPointer) { Hex.write(words: words, to: out) }

    /// Appends the 64 characters of ``hex`` to `out`.
    public func appendHex(to out: inout [UInt8]) {
        let start = out.count
        out.append(contentsOf: repeatElement(0, count: 64))
        out.withUnsafeMutableBytes { writeHex(to: $0.baseAddress! + start) }
    }

    /// Standard base64 (44 characters).
    public var base64: String { withUnsafeBytes { Base64.encode($0) } }

    public var description: String { hex }

    @inlinable
    public static func == (a: Hash, b: Hash) -> Bool {
        a.words.0 == b.words.0 && a.words.1 == b.words.1 && a.words.2 == b.words.2 && a.words.3 == b.words.3
    }

    /// The first 8 bytes as a word: for hash tables keyed by several hashes at once, whose
    /// uniform bits need no more than this to spread them.
    @inlinable
    public var firstWord: UInt64 { words.0 }

    @inlinable
    public func hash(into hasher: inout Hasher) {
        hasher.combine(words.0)
        hasher.combine(words.1)
        hasher.combine(words.2)
        hasher.combine(words.3)
    }

    /// Byte-wise (big-endian) order, the order of the hashes' hex strings.
    @inlinable
    public static func < (a: Hash, b: Hash) -> Bool {
        // The words hold the bytes in memory order: read big-endian, they compare as the bytes do
        // on any host.
        let x = (UInt64(bigEndian: a.words.0), UInt64(bigEndian: a.words.1), UInt64(bigEndian: a.words.2), UInt64(bigEndian: a.words.3))
        let y = (UInt64(bigEndian: b.words.0), UInt64(bigEndian: b.words.1), UInt64(bigEndian: b.words.2), UInt64(bigEndian: b.words.3))
        return x < y
    }
}

/// Compares two byte sequences in time independent of where they differ (`CRYPTO_memcmp`).
/// Returns false at once when the lengths differ: lengths are public.
public func constantTimeEqual(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Bool {
    guard a.count == b.count else { return false }
    if a.count == 0 { return true }
    return CryptoShims.memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0
}

/// Constant-time comparison of two byte arrays; see ``constantTimeEqual(_:_:)``.
public func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    a.withUnsafeBytes { x in b.withUnsafeBytes { y in constantTimeEqual(x, y) } }
}
