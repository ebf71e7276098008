import TestSupport
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

