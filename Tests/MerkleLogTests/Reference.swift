import LedgerCrypto

/// RFC 6962 section 2.1 written directly from the text, recursively and slowly, as the
/// reference the stored-hash implementation is checked against.
enum Reference {
    static func leaf(_ d: [UInt8]) -> Hash { SHA256.hash([0x00] + d) }
    static func node(_ l: Hash, _ r: Hash) -> Hash { SHA256.hash([0x01] + l.bytes + r.bytes) }

    static func k(_ n: Int) -> Int {
        var k = 1
        while k * 2 < n { k *= 2 }
        return k
    }

    /// MTH(D[n])
    static func mth(_ d: ArraySlice<[UInt8]>) -> Hash {
        if d.isEmpty { return SHA256.hash([]) }
        if d.count == 1 { return leaf(d.first!) }
        let k = k(d.count)
        return node(mth(d.prefix(k)), mth(d.dropFirst(k)))
    }

    /// PATH(m, D[n])
    static func path(_ m: Int, _ d: ArraySlice<[UInt8]>) -> [Hash] {
        if d.count <= 1 { return [] }
        let k = k(d.count)
        if m < k { return path(m, d.prefix(k)) + [mth(d.dropFirst(k))] }
        return path(m - k, d.dropFirst(k)) + [mth(d.prefix(k))]
    }

    /// PROOF(m, D[n]) = SUBPROOF(m, D[n], true)
    static func proof(_ m: Int, _ d: ArraySlice<[UInt8]>) -> [Hash] {
        subproof(m, d, true)
    }

    static func subproof(_ m: Int, _ d: ArraySlice<[UInt8]>, _ b: Bool) -> [Hash] {
        let n = d.count
        if m == n { return b ? [] : [mth(d)] }
        let k = k(n)
        if m <= k { return subproof(m, d.prefix(k), b) + [mth(d.dropFirst(k))] }
        return subproof(m - k, d.dropFirst(k), false) + [mth(d.prefix(k))]
    }
}

/// A seeded generator so failures reproduce.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E3779B97F4A7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58476D1CE4E5B9
        z = (z ^ (z >> 27)) &* 0x94D049BB133111EB
        return z ^ (z >> 31)
    }
}
