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

@Test func groupingByNibble() {
    let changes = (0..<300).map { SparseChange(keyHash: SHA256.hash(Array("g\($0)".utf8)), value: [1]) }.sorted { $0.keyHash < $1.keyHash }
    let groups = SparseMerkleTree.groupByNibble(changes[...], at: 0)
    #expect(groups.count == 16, "\(groups.map { "\($0.nibble):\($0.range)" })")
    #expect(groups.map(\.nibble) == Array(0..<16))
    #expect(groups.first?.range.lowerBound == 0 && groups.last?.range.upperBound == 300)
    for group in groups {
        for i in group.range { #expect(Int(changes[i].keyHash.bytes[0] >> 4) == group.nibble) }
        // The next level splits a group by its second nibble.
        for sub in SparseMerkleTree.groupByNibble(changes[group.range], at: 4) {
            for i in sub.range { #expect(Int(changes[i].keyHash.bytes[0] & 0x0f) == sub.nibble) }
        }
    }
}
