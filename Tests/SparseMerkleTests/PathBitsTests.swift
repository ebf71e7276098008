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
    let changes = (0..<300).map { SparseChange(keyHash: SHA256.hash(Array("g\($0)".utf8)), value: [1]) }.shuffled()
    let arena = Arena()
    let prepared = SparseMerkleTree.prepare(changes, arena: arena)
    #expect(prepared.map(\.keyHash) == changes.map(\.keyHash).sorted())
    prepared.withUnsafeBufferPointer { buffer in
        let groups = SparseMerkleTree.groupByNibble(buffer, 0..<buffer.count, at: 0)
        #expect(groups.count == 16, "\(groups.map { "\($0.nibble):\($0.range)" })")
        #expect(groups.map { $0.nibble } == Array(0..<16))
        #expect(groups.first?.range.lowerBound == 0 && groups.last?.range.upperBound == 300)
        for group in groups {
            for i in group.range { #expect(Int(buffer[i].keyHash.bytes[0] >> 4) == group.nibble) }
            // The next level splits a group by its second nibble.
            for sub in SparseMerkleTree.groupByNibble(buffer, group.range, at: 4) {
                for i in sub.range { #expect(Int(buffer[i].keyHash.bytes[0] & 0x0f) == sub.nibble) }
            }
        }
    }
}

@Test func preparingKeepsTheLastChangeToAKey() {
    let k = SHA256.hash(Array("k".utf8)), other = SHA256.hash(Array("o".utf8))
    let changes = [SparseChange(keyHash: k, value: [1]), SparseChange(keyHash: other, value: [9]),
                   SparseChange(keyHash: k, value: nil), SparseChange(keyHash: k, value: [3, 4])]
    let arena = Arena()
    let prepared = SparseMerkleTree.prepare(changes, arena: arena)
    #expect(prepared.count == 2)
    let mine = prepared.first { $0.keyHash == k }!
    #expect(mine.isSet && Array(mine.value) == [3, 4])
    #expect(mine.leafHash == SparseHash.leaf(keyHash: k, valueHash: SHA256.hash([3, 4])))
}
