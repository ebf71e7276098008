// Path arithmetic the tree relies on: nibbles, prefixes and bits of key hashes.
import Testing
import LedgerCrypto
@testable import SparseMerkle

@Test func extendSetsTheNibble() {
    for n in 0..<16 {
        let p = extend(.zero, depth: 0, nibble: n)
        #expect(p.bytes[0] == UInt8(n << 4), "n \(n) got \(p.hex.prefix(4))")
        let q = extend(p, depth: 4, nibble: 15 - n)
        #expect(q.bytes[0] == UInt8(n << 4 | (15 - n)), "n \(n) got \(q.hex.prefix(4))")
    }
}

@Test func nibbleReadsTheKeyHash() {
    for i in 0..<200 {
        let k = SHA256.hash(Array("x\(i)".utf8))
        #expect(nibble(k, at: 0) == Int(k.bytes[0] >> 4), "\(i)")
        #expect(nibble(k, at: 4) == Int(k.bytes[0] & 0x0f), "\(i)")
        #expect(nibble(k, at: 8) == Int(k.bytes[1] >> 4), "\(i)")
        #expect(keyBit(k, 0) == Int(k.bytes[0] >> 7), "\(i)")
    }
}

@Test func groupingByFirstNibble() {
    let changes = (0..<300).map { SparseChange(keyHash: SHA256.hash(Array("g\($0)".utf8)), value: [1]) }.sorted { $0.keyHash < $1.keyHash }
    var groups: [(Int, Range<Int>)] = []
    var start = 0
    while start < changes.count {
        let n = nibble(changes[start].keyHash, at: 0)
        var end = start + 1
        while end < changes.count && nibble(changes[end].keyHash, at: 0) == n { end += 1 }
        groups.append((n, start..<end))
        start = end
    }
    #expect(groups.count == 16, "\(groups.map { "\($0.0):\($0.1)" })")
    #expect(changes.first!.keyHash.bytes[0] >> 4 == 0 && changes.last!.keyHash.bytes[0] >> 4 == 15)
}
