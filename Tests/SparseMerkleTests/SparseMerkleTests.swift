import Foundation
import Testing
import TestSupport
import LMDBKit
import LedgerCrypto
@testable import SparseMerkle

/// The tree of DESIGN.md section 3 built directly from the whole key set, recursively.
enum NaiveSparse {
    static func root(_ map: [Hash: [UInt8]]) -> Hash {
        hash(map.map { ($0.key, SHA256.hash($0.value)) }[...], depth: 0)
    }

    static func hash(_ keys: ArraySlice<(Hash, Hash)>, depth: Int) -> Hash {
        if keys.isEmpty { return Hash.zero }
        if keys.count == 1 { return SHA256.hash([0x02] + keys.first!.0.bytes + keys.first!.1.bytes) }
        let left = keys.filter { bit($0.0, depth) == 0 }, right = keys.filter { bit($0.0, depth) == 1 }
        return SHA256.hash([0x03] + hash(left[...], depth: depth + 1).bytes + hash(right[...], depth: depth + 1).bytes)
    }

    static func bit(_ k: Hash, _ t: Int) -> Int { Int(k.bytes[t / 8] >> (7 - UInt8(t % 8)) & 1) }
}


func keyHash(_ name: String) -> Hash { SHA256.hash(Array(name.utf8)) }

/// Keys whose hashes share their first `bits` bits with `target`, found by brute force.
func keysSharingPrefix(with target: Hash, bits: Int, count: Int, tag: String) -> [String] {
    var found: [String] = []
    var i = 0
    while found.count < count {
        let name = "\(tag)-\(i)"
        let h = keyHash(name)
        if (0..<bits).allSatisfy({ NaiveSparse.bit(h, $0) == NaiveSparse.bit(target, $0) }) { found.append(name) }
        i += 1
    }
    return found
}

func withEachSparseStore(_ name: String, _ body: (String, any SparseWriterBox) throws -> Void) throws {
    try body("memory", MemoryBox(store: MemorySparseStore()))
    let path = NSTemporaryDirectory() + "medledger-smt-\(name)-\(UUID().uuidString)"
    defer { try? FileManager.default.removeItem(atPath: path) }
    var options = Environment.Options()
    options.durable = false
    let env = try Environment(path: path, options: options)
    try body("lmdb", LMDBBox(store: try LMDBSparseStore(environment: env)))
}

/// Uniform access to both stores for the tests.
protocol SparseWriterBox {
    func apply(_ changes: [SparseChange], version: UInt64) throws -> SparseNode
    func proof(_ k: Hash, version: UInt64) throws -> SparseProof
    func value(_ k: Hash, version: UInt64) throws -> [UInt8]?
    func prune(before: UInt64) throws -> Int
    func multiProof(_ keys: [Hash], version: UInt64) throws -> SparseMultiProof
}

struct MemoryBox: SparseWriterBox {
    let store: MemorySparseStore
    func apply(_ changes: [SparseChange], version: UInt64) throws -> SparseNode { try SparseMerkleTree.apply(changes, version: version, writer: store) }
    func proof(_ k: Hash, version: UInt64) throws -> SparseProof { try SparseMerkleTree.proof(keyHash: k, version: version, reader: store) }
    func value(_ k: Hash, version: UInt64) throws -> [UInt8]? { try SparseMerkleTree.value(keyHash: k, version: version, reader: store) }
    func prune(before: UInt64) throws -> Int { try store.prune(before: before) }
}

struct LMDBBox: SparseWriterBox {
    let store: LMDBSparseStore
    func apply(_ changes: [SparseChange], version: UInt64) throws -> SparseNode {
        try store.write { try SparseMerkleTree.apply(changes, version: version, writer: $0) }
    }
    func proof(_ k: Hash, version: UInt64) throws -> SparseProof {
        try store.read { try SparseMerkleTree.proof(keyHash: k, version: version, reader: $0) }
    }
    func value(_ k: Hash, version: UInt64) throws -> [UInt8]? {
        try store.read { try SparseMerkleTree.value(keyHash: k, version: version, reader: $0) }
    }
    func prune(before: UInt64) throws -> Int { try store.write { try $0.prune(before: before) } }
}

@Suite struct SparseTreeAgainstReference {
    @Test func emptyAndSingleKeyTrees() throws {
        let store = MemorySparseStore()
        #expect(try SparseMerkleTree.apply([], version: 1, writer: store).hash == .zero)
        let k = keyHash("only")
        let root = try SparseMerkleTree.apply([SparseChange(keyHash: k, value: [1, 2])], version: 2, writer: store)
        #expect(root.hash == SHA256.hash([0x02] + k.bytes + SHA256.hash([1, 2]).bytes), "a lone key's leaf is the root")
        let proof = try SparseMerkleTree.proof(keyHash: k, version: 2, reader: store)
        #expect(proof.siblings.isEmpty && proof.value == [1, 2])
        try proof.verify(root: root.hash)
        #expect(try SparseMerkleTree.apply([SparseChange(keyHash: k, value: nil)], version: 3, writer: store).hash == .zero)
        #expect(throws: SparseMerkleError(.versionOrder, "")) { try SparseMerkleTree.apply([], version: 3, writer: store) }
        #expect(throws: SparseMerkleError(.unknownVersion, "")) { try SparseMerkleTree.proof(keyHash: k, version: 99, reader: store) }
    }

    @Test func randomBatchesMatchTheNaiveTreeAndEveryProofVerifies() throws {
        let seed: UInt64 = 0x5a17
        try withEachSparseStore("random") { storeName, box in
            var rng = SplitMix64(seed: seed)
            var map: [Hash: [UInt8]] = [:]
            var names: [String] = (0..<400).map { "key-\($0)" }
            // Keys forced to share 12 to 16 leading bits with one another.
            let target = keyHash("target")
            names += keysSharingPrefix(with: target, bits: 14, count: 6, tag: "deep")
            var roots: [UInt64: (Hash, [Hash: [UInt8]])] = [:]
            var version: UInt64 = 0
            for _ in 0..<12 {
                var changes: [SparseChange] = []
                for _ in 0..<Int(rng.next() % 80 + 1) {
                    let k = keyHash(names[Int(rng.next() % UInt64(names.count))])
                    if rng.next() % 4 == 0 {
                        changes.append(SparseChange(keyHash: k, value: nil))
                    } else {
                        changes.append(SparseChange(keyHash: k, value: Array("v\(rng.next() % 1000)".utf8)))
                    }
                }
                for c in changes { map[c.keyHash] = c.value }  // last wins, like the tree
                version += UInt64(rng.next() % 5 + 1)
                let root = try box.apply(changes, version: version)
                #expect(root.hash == NaiveSparse.root(map), "\(storeName) seed \(seed) version \(version)")
                roots[version] = (root.hash, map)
            }
            // Every version's proofs verify against that version's root, after later updates.
            for (v, (root, snapshot)) in roots {
                for name in names {
                    let k = keyHash(name)
                    let proof = try box.proof(k, version: v)
                    #expect(proof.value == snapshot[k], "\(storeName) \(name) at \(v)")
                    try proof.verify(root: root)
                    #expect(try box.value(k, version: v) == snapshot[k])
                }
                for i in 0..<50 {
                    let absent = keyHash("absent-\(i)")
                    let proof = try box.proof(absent, version: v)
                    #expect(!proof.isInclusion)
                    try proof.verify(root: root)
                }
            }
        }
    }

    @Test func longSharedPrefixes() throws {
        let store = MemorySparseStore()
        let target = keyHash("prefix-target")
        let names = keysSharingPrefix(with: target, bits: 17, count: 3, tag: "p")
        var map: [Hash: [UInt8]] = [:]
        for (i, name) in names.enumerated() { map[keyHash(name)] = [UInt8(i)] }
        let root = try SparseMerkleTree.apply(map.map { SparseChange(keyHash: $0.key, value: $0.value) }, version: 1, writer: store)
        #expect(root.hash == NaiveSparse.root(map))
        for name in names {
            let proof = try SparseMerkleTree.proof(keyHash: keyHash(name), version: 1, reader: store)
            #expect(proof.siblings.count >= 17, "the keys part below the shared prefix")
            try proof.verify(root: root.hash)
        }
        // A key sharing the prefix but absent ends at EMPTY or at a neighbour's leaf.
        let absent = keysSharingPrefix(with: target, bits: 17, count: 4, tag: "p").last!
        let proof = try SparseMerkleTree.proof(keyHash: keyHash(absent), version: 1, reader: store)
        #expect(!proof.isInclusion)
        try proof.verify(root: root.hash)
    }

    @Test func pruningKeepsRetainedVersionsAndFreesOldPages() throws {
        try withEachSparseStore("prune") { storeName, box in
            var map: [Hash: [UInt8]] = [:]
            var roots: [UInt64: Hash] = [:]
            for v in UInt64(1)...6 {
                let changes = (0..<200).map { i in SparseChange(keyHash: keyHash("k\(i)"), value: Array("v\(v)-\(i % (Int(v) + 1))".utf8)) }
                for c in changes { map[c.keyHash] = c.value }
                roots[v] = try box.apply(changes, version: v).hash
            }
            let deleted = try box.prune(before: 4)
            #expect(deleted > 0, "\(storeName): rewritten pages of versions before 4 are freed")
            for v in UInt64(1)...3 {
                #expect(throws: SparseMerkleError(.unknownVersion, "")) { try box.proof(keyHash("k1"), version: v) }
            }
            for v in UInt64(4)...6 {
                for i in [0, 7, 199] { try box.proof(keyHash("k\(i)"), version: v).verify(root: roots[v]!) }
            }
            #expect(try box.prune(before: 4) == 0, "pruning is idempotent")
        }
    }
}

@Suite struct ParallelApply {
    @Test func parallelRootUpdateMatchesTheReference() throws {
        let path = NSTemporaryDirectory() + "medledger-smt-parallel-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: path) }
        var options = Environment.Options()
        options.durable = false
        let store = try LMDBSparseStore(environment: try Environment(path: path, options: options))
        var map: [Hash: [UInt8]] = [:]
        var rng = SplitMix64(seed: 0x9a4a11e1)
        var version: UInt64 = 0
        for batch in 0..<6 {
            var changes: [SparseChange] = []
            // New keys in every batch, plus updates and deletes of earlier ones.
            for i in 0..<4000 {
                let k = i % 2 == 0 ? keyHash("p\(batch)-\(i)") : keyHash("p\(rng.next() % UInt64(batch + 1))-\(rng.next() % 4000)")
                let change = SparseChange(keyHash: k, value: rng.next() % 6 == 0 ? nil : Array("v\(batch)".utf8))
                changes.append(change)
                map[k] = change.value
            }
            version += 4000
            let root = try store.write { try SparseMerkleTree.apply(changes, version: version, writer: $0, snapshot: store) }
            #expect(root.hash == NaiveSparse.root(map), "batch \(batch), seed 0x9a4a11e1")
        }
        let expectedRoot = NaiveSparse.root(map)
        for (k, value) in map.prefix(300) {
            let proof = try store.read { try SparseMerkleTree.proof(keyHash: k, version: version, reader: $0) }
            #expect(proof.value == value)
            try proof.verify(root: expectedRoot)
        }
    }
}

@Suite struct StaleListMerge {
    /// The 17 sorted stale lists of a parallel apply merge into one sorted list holding
    /// every entry once, for list counts and lengths that include empty lists and one list.
    @Test func mergingSortedListsMatchesSortingTheirConcatenation() {
        var rng = SplitMix64(seed: 0x57a1e)
        func randomID() -> PageID {
            let depth = Int(rng.next() % 9) * 4
            var prefix = [UInt8](repeating: 0, count: 32)
            for i in 0..<((depth + 7) / 8) { prefix[i] = UInt8(truncatingIfNeeded: rng.next()) }
            if depth % 8 == 4 { prefix[depth / 8] &= 0xf0 }
            return PageID(version: rng.next() % 5, depth: depth, prefix: Hash(prefix)!)
        }
        var merged: [PageID] = [], scratch: [PageID] = []
        for listCount in [0, 1, 2, 3, 17] {
            for _ in 0..<20 {
                let lists = (0..<listCount).map { _ in (0..<Int(rng.next() % 40)).map { _ in randomID() }.sorted() }
                SparseMerkleTree.mergeSorted(lists, into: &merged, scratch: &scratch)
                #expect(merged == lists.joined().sorted(), "\(listCount) lists")
            }
        }
    }
}

@Suite struct SparseStoreFailures {
    struct Abort: Error {}

    @Test func anAbortedWriteLeavesNoStalePagesBehind() throws {
        let path = NSTemporaryDirectory() + "medledger-smt-abort-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: path) }
        var options = Environment.Options()
        options.durable = false
        let env = try Environment(path: path, options: options)
        let store = try LMDBSparseStore(environment: env)
        // A second store object stands in for a second writer with its own page cache.
        let other = try LMDBSparseStore(environment: env)
        var map: [Hash: [UInt8]] = [:]
        let first = (0..<500).map { SparseChange(keyHash: keyHash("a\($0)"), value: [1]) }
        for c in first { map[c.keyHash] = c.value }
        _ = try store.write { try SparseMerkleTree.apply(first, version: 1, writer: $0) }
        // Version 2 is written and then aborted (its pages were staged for the cache, never
        // published)...
        let abandoned = (0..<500).map { SparseChange(keyHash: keyHash("b\($0)"), value: [2]) }
        #expect(throws: Abort.self) {
            try store.write { view -> Void in
                _ = try SparseMerkleTree.apply(abandoned, version: 2, writer: view)
                throw Abort()
            }
        }
        // ...and a different version 2 commits: its root and proofs must be its own.
        let second = (0..<500).map { SparseChange(keyHash: keyHash("c\($0)"), value: [3]) }
        for c in second { map[c.keyHash] = c.value }
        let root = try other.write { try SparseMerkleTree.apply(second, version: 2, writer: $0) }
        #expect(root.hash == NaiveSparse.root(map))
        #expect(try store.read { try SparseMerkleTree.root(version: 2, reader: $0) } == root)
        let third = [SparseChange(keyHash: keyHash("a1"), value: nil)]
        map[keyHash("a1")] = nil
        let root3 = try store.write { try SparseMerkleTree.apply(third, version: 3, writer: $0) }
        #expect(root3.hash == NaiveSparse.root(map))
        for name in ["a0", "a1", "b0", "c0", "c499"] {
            let proof = try store.read { try SparseMerkleTree.proof(keyHash: keyHash(name), version: 3, reader: $0) }
            #expect(proof.value == map[keyHash(name)])
            try proof.verify(root: root3.hash)
        }
    }
}

@Suite struct SparseProofNegativeCases {
    static func fixture() throws -> (MemorySparseStore, Hash, [Hash: [UInt8]]) {
        let store = MemorySparseStore()
        var map: [Hash: [UInt8]] = [:]
        for i in 0..<300 { map[keyHash("n\(i)")] = Array("value \(i)".utf8) }
        let root = try SparseMerkleTree.apply(map.map { SparseChange(keyHash: $0.key, value: $0.value) }, version: 1, writer: store)
        return (store, root.hash, map)
    }

    @Test func alteredInclusionProofsFail() throws {
        let (store, root, _) = try Self.fixture()
        let k = keyHash("n42")
        let proof = try SparseMerkleTree.proof(keyHash: k, version: 1, reader: store)
        try proof.verify(root: root)
        let fails: [SparseProof] = [
            SparseProof(keyHash: k, terminal: proof.terminal, siblings: proof.siblings, value: Array("value 43".utf8)),
            SparseProof(keyHash: keyHash("n43"), terminal: proof.terminal, siblings: proof.siblings, value: proof.value),
            SparseProof(keyHash: k, terminal: proof.terminal, siblings: proof.siblings, value: nil),  // present flag flipped
            SparseProof(keyHash: k, terminal: proof.terminal, siblings: Array(proof.siblings.dropLast()), value: proof.value),
            SparseProof(keyHash: k, terminal: proof.terminal, siblings: proof.siblings + [.zero], value: proof.value),
            SparseProof(keyHash: k, terminal: .empty, siblings: proof.siblings, value: proof.value),
        ] + proof.siblings.indices.map { i in
            var siblings = proof.siblings
            var bytes = siblings[i].bytes
            bytes[5] ^= 0x10
            siblings[i] = Hash(bytes)!
            return SparseProof(keyHash: k, terminal: proof.terminal, siblings: siblings, value: proof.value)
        }
        for bad in fails {
            #expect(throws: SparseMerkleError(.verificationFailed, "")) { try bad.verify(root: root) }
        }
    }

    @Test func alteredNonInclusionProofsFail() throws {
        let (store, root, _) = try Self.fixture()
        // Find absent keys ending at a neighbour's leaf and at EMPTY.
        var leafCase: SparseProof?
        var emptyCase: SparseProof?
        var i = 0
        while leafCase == nil || emptyCase == nil {
            let proof = try SparseMerkleTree.proof(keyHash: keyHash("absent\(i)"), version: 1, reader: store)
            try proof.verify(root: root)
            if case .leaf = proof.terminal { leafCase = leafCase ?? proof } else { emptyCase = emptyCase ?? proof }
            i += 1
        }
        let leaf = leafCase!, empty = emptyCase!
        guard case .leaf(let k2, let v2) = leaf.terminal else { return }
        // The neighbour's leaf does not prove absence of a key outside its prefix.
        let stranger = (0..<1000).lazy.map { keyHash("stranger\($0)") }.first { NaiveSparse.bit($0, 0) != NaiveSparse.bit(k2, 0) }!
        let bads: [SparseProof] = [
            SparseProof(keyHash: stranger, terminal: leaf.terminal, siblings: leaf.siblings),
            SparseProof(keyHash: k2, terminal: leaf.terminal, siblings: leaf.siblings),  // "absent" key is the terminal's own
            SparseProof(keyHash: leaf.keyHash, terminal: .leaf(keyHash: k2, valueHash: SHA256.hash([9])), siblings: leaf.siblings),
            SparseProof(keyHash: leaf.keyHash, terminal: .empty, siblings: leaf.siblings),
            SparseProof(keyHash: empty.keyHash, terminal: .leaf(keyHash: k2, valueHash: v2), siblings: empty.siblings),
            SparseProof(keyHash: empty.keyHash, terminal: empty.terminal, siblings: empty.siblings, value: [1]),
            SparseProof(keyHash: empty.keyHash, terminal: empty.terminal, siblings: Array(repeating: .zero, count: 257)),
        ]
        for bad in bads {
            #expect(throws: SparseMerkleError(.verificationFailed, "")) { try bad.verify(root: root) }
        }
    }

    @Test func binaryEncodingRoundTripsAndRejectsDamage() throws {
        let (store, root, _) = try Self.fixture()
        for name in ["n1", "n299", "absent1", "absent2", "absent3"] {
            let proof = try SparseMerkleTree.proof(keyHash: keyHash(name), version: 1, reader: store)
            let bytes = proof.encoded()
            let decoded = try SparseProof(decoding: bytes)
            #expect(decoded == proof)
            try decoded.verify(root: root)
            #expect(throws: SparseMerkleError.self) { try SparseProof(decoding: Array(bytes.dropLast())) }
            #expect(throws: SparseMerkleError.self) { try SparseProof(decoding: bytes + [0]) }
            for offset in Swift.stride(from: 0, to: bytes.count, by: 7) {
                // A non-inclusion proof holds for every key with the same first d bits, so
                // key-hash bytes past the depth may change without invalidating it.
                if !proof.isInclusion && offset >= 4 + proof.siblings.count / 8 && offset < 36 { continue }
                var damaged = bytes
                damaged[offset] ^= 0x01
                #expect(throws: SparseMerkleError.self, "byte \(offset) of \(name)") {
                    try SparseProof(decoding: damaged).verify(root: root)
                }
            }
        }
        var deep = [UInt8]([1, 0, 0x01, 0x01]) + [UInt8](repeating: 0, count: 32 + 33)
        #expect(throws: SparseMerkleError(.malformed, "")) { try SparseProof(decoding: deep) }
        deep[2] = 0
        #expect(throws: SparseMerkleError(.malformed, "")) { try SparseProof(decoding: [2] + deep.dropFirst()) }
    }

    @Test func pageEncodingRejectsGarbage() {
        #expect(SparsePage(decoding: UnsafeRawBufferPointer(start: nil, count: 0)) == nil)
        // A full record of two page slots (slots 0 and 1) decodes...
        let good: [UInt8] = [PageRecord.full, 0x00, 0x03, 0x00, 0x00] + [UInt8](repeating: 1, count: 80)
        #expect(good.withUnsafeBytes { SparsePage(decoding: $0) } != nil)
        // ...but not with a leaf bit on an unoccupied slot, nor cut short.
        let bad: [UInt8] = [PageRecord.full, 0x00, 0x03, 0x00, 0x04] + [UInt8](repeating: 1, count: 80)
        #expect(bad.withUnsafeBytes { SparsePage(decoding: $0) } == nil)
        let truncated = Array(good.dropLast())
        #expect(truncated.withUnsafeBytes { SparsePage(decoding: $0) } == nil)
    }
}
