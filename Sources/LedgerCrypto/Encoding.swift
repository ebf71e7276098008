import Foundation

/// Lowercase hexadecimal encoding.
public enum Hex {
    /// The lowercase hex digit of a nibble, computed (no table to load).
    @inlinable
    public static func digit(_ nibble: UInt8) -> UInt8 { nibble < 10 ? UInt8(ascii: "0") + nibble : UInt8(ascii: "a") - 10 + nibble }

    /// The 16 hex digits of `word`'s 8 bytes in memory order, as the little-endian value of
    /// the 16 bytes they occupy: lanes of arithmetic, no branch or table per digit (names,
    /// labels and audit entries hex-encode several hashes per request).
    @inlinable
    public static func digits(ofWord word: UInt64) -> (low: UInt64, high: UInt64) {
        let value = UInt64(littleEndian: word)
        return (digits(ofHalf: value & 0xffff_ffff), digits(ofHalf: value >> 32))
    }

    /// The 8 digits of the 4 bytes in `half`'s low 32 bits (byte 0 lowest).
    @inlinable
    static func digits(ofHalf half: UInt64) -> UInt64 {
        // Each byte to its own 16-bit lane, then its high nibble to the lane's first byte
        // (lower address) and its low nibble to the second.
        var s = (half | half << 16) & 0x0000_ffff_0000_ffff
        s = (s | s << 8) & 0x00ff_00ff_00ff_00ff
        let nibbles = (s >> 4) & 0x000f_000f_000f_000f | (s & 0x000f_000f_000f_000f) << 8
        // Bytes of 10 or more carry into bit 4 when 6 is added: those take 'a' - 10, others '0'.
        let letters = ((nibbles &+ 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101
        return (nibbles &+ 0x3030_3030_3030_3030 &+ letters &* 0x27).littleEndian
    }

    /// Writes the 64 lowercase hex digits of the 32 bytes held in `words` (memory order) to `out`.
    @inlinable
    public static func write(words: (UInt64, UInt64, UInt64, UInt64), to out: UnsafeMutableRawPointer) {
        func put(_ word: UInt64, at offset: Int) {
            let d = digits(ofWord: word)
            out.storeBytes(of: d.low, toByteOffset: offset, as: UInt64.self)
            out.storeBytes(of: d.high, toByteOffset: offset + 8, as: UInt64.self)
        }
        put(words.0, at: 0)
        put(words.1, at: 16)
        put(words.2, at: 32)
        put(words.3, at: 48)
    }

    /// Encodes bytes as lowercase hex.
    public static func encode(_ bytes: UnsafeRawBufferPointer) -> String {
        String(unsafeUninitializedCapacity: bytes.count * 2) { out in
            var i = 0
            for b in bytes {
                out[i] = digit(b >> 4)
                out[i + 1] = digit(b & 0x0f)
                i += 2
            }
            return i
        }
    }

    /// Appends the lowercase hex of `bytes` to `out`.
    public static func append(_ bytes: UnsafeRawBufferPointer, to out: inout [UInt8]) {
        // Grow once, then write the digits through a pointer (names and labels hex-encode
        // hashes per request; a checked append per digit cost more than the hashing).
        guard bytes.count > 0 else { return }
        let start = out.count
        out.append(contentsOf: repeatElement(0, count: 2 * bytes.count))
        out.withUnsafeMutableBufferPointer { buffer in
            let digits = buffer.baseAddress! + start
            for i in 0..<bytes.count {
                let b = bytes.load(fromByteOffset: i, as: UInt8.self)
                digits[2 * i] = digit(b >> 4)
                digits[2 * i + 1] = digit(b & 0x0f)
            }
        }
    }

    /// Encodes bytes as lowercase hex.
    public static func encode(_ bytes: some Sequence<UInt8>) -> String {
        let array = Array(bytes)
        return array.withUnsafeBytes { encode($0) }
    }

    /// Decodes hex (either case, even length); `nil` on any other character.
    public static func decode(_ text: some StringProtocol) -> [UInt8]? {
        let utf8 = Array(text.utf8)
        guard utf8.count % 2 == 0 else { return nil }
        var out = [UInt8]()
        out.reserveCapacity(utf8.count / 2)
        var i = 0
        while i < utf8.count {
            guard let hi = nibble(utf8[i]), let lo = nibble(utf8[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}

/// Standard base64 (RFC 4648 section 4, with padding), strict on decode.
public enum Base64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    /// Each byte's 6-bit value in the alphabet; 0xff for every other byte (`=` included).
    private static let values: [UInt8] = {
        var table = [UInt8](repeating: 0xff, count: 256)
        for (i, c) in alphabet.enumerated() { table[Int(c)] = UInt8(i) }
        return table
    }()

    /// Encodes bytes.
    public static func encode(_ bytes: UnsafeRawBufferPointer) -> String {
        let count = (bytes.count + 2) / 3 * 4
        return String(unsafeUninitializedCapacity: count) { out in
            alphabet.withUnsafeBufferPointer { a in
                var o = 0, i = 0
                while i + 3 <= bytes.count {
                    let n = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
                    out[o] = a[Int(n >> 18)]
                    out[o + 1] = a[Int(n >> 12 & 63)]
                    out[o + 2] = a[Int(n >> 6 & 63)]
                    out[o + 3] = a[Int(n & 63)]
                    i += 3
                    o += 4
                }
                let rest = bytes.count - i
                if rest > 0 {
                    let n = UInt32(bytes[i]) << 16 | (rest == 2 ? UInt32(bytes[i + 1]) << 8 : 0)
                    out[o] = a[Int(n >> 18)]
                    out[o + 1] = a[Int(n >> 12 & 63)]
                    out[o + 2] = rest == 2 ? a[Int(n >> 6 & 63)] : UInt8(ascii: "=")
                    out[o + 3] = UInt8(ascii: "=")
                }
            }
            return count
        }
    }

    /// Encodes bytes.
    public static func encode(_ bytes: [UInt8]) -> String {
        bytes.withUnsafeBytes { encode($0) }
    }

    /// Decodes padded standard base64; `nil` for whitespace, URL alphabet, bad padding or
    /// a non-canonical encoding (so one value has exactly one text form).
    public static func decode(_ text: some StringProtocol) -> [UInt8]? {
        var text = String(text)
        return text.withUTF8 { decode(utf8: $0) }
    }

    private static func decode(utf8 s: UnsafeBufferPointer<UInt8>) -> [UInt8]? {
        guard s.count % 4 == 0 else { return nil }
        guard s.count > 0 else { return [] }
        let padding = s[s.count - 1] == UInt8(ascii: "=") ? (s[s.count - 2] == UInt8(ascii: "=") ? 2 : 1) : 0
        let count = s.count / 4 * 3 - padding
        return values.withUnsafeBufferPointer { v -> [UInt8]? in
            var failed = false
            let bytes = [UInt8](unsafeUninitializedCapacity: count) { out, written in
                var o = 0
                for g in stride(from: 0, to: s.count, by: 4) {
                    let last = g + 4 == s.count
                    let a = v[Int(s[g])], b = v[Int(s[g + 1])]
                    let c = last && padding == 2 ? 0 : v[Int(s[g + 2])]
                    let d = last && padding >= 1 ? 0 : v[Int(s[g + 3])]
                    // 0xff (outside the alphabet, or `=` before the end) fails the OR test.
                    guard (a | b | c | d) & 0xc0 == 0 else { failed = true; break }
                    let n = UInt32(a) << 18 | UInt32(b) << 12 | UInt32(c) << 6 | UInt32(d)
                    if last && padding > 0 {
                        // Canonical: the padding's bits are zero.
                        guard n & (padding == 2 ? 0xffff : 0xff) == 0 else { failed = true; break }
                        out[o] = UInt8(n >> 16)
                        if padding == 1 { out[o + 1] = UInt8(n >> 8 & 0xff) }
                        o += 3 - padding
                    } else {
                        out[o] = UInt8(n >> 16)
                        out[o + 1] = UInt8(n >> 8 & 0xff)
                        out[o + 2] = UInt8(n & 0xff)
                        o += 3
                    }
                }
                written = failed ? 0 : o
            }
            return failed ? nil : bytes
        }
    }
}
