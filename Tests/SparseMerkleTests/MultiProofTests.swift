import Foundation
import Testing
import TestSupport
import LMDBKit
import LedgerCrypto
@testable import SparseMerkle

/// Multi-key proofs against the naive reference tree and against single-key proofs.
@Suite struct SparseMultiProofs {
    /// The number of sibling hashes a multi-key proof sends.
    static func siblingCount(_ proof: SparseMultiProof) -> Int {
        proof.nodes.filter { if case .sibling = $0 { return true } else { return false } }.count
    }

    @Test func randomKeySetsVerifyAndShareTheirSiblings() throws {
        try withEachSparseStore("multi") { storeName, box in
            var rng = SplitMix64(seed: 0x3417)
            var names: [String] = (0..<1500).map { "m-\($0)" }
            names += keysSharingPrefix(with: keyHash("multi-target"), bits: 13, count: 5, tag: "mdeep")
            var map: [Hash: [UInt8]] = [:]
            var snapshots: [(version: UInt64, root: Hash, map: [Hash: [UInt8]])] = []
            var version: UInt64 = 0
            for batch in 0..<4 {
                var changes: [SparseChange] = []
                for i in 0..<600 {
                    let k = keyHash(names[Int(rng.next() % UInt64(names.count))])
                    changes.append(SparseChange(keyHash: k, value: batch > 0 && i % 7 == 0 ? nil : Array("v\(batch)-\(i)".utf8)))
                }
                for c in changes { map[c.keyHash] = c.value }
                version += 600
                let root = try box.apply(changes, version: version)
                #expect(root.hash == NaiveSparse.root(map))
                snapshots.append((version, root.hash, map))
            }
            // Every version, after all the later batches: sets of present and absent keys.
            for (v, root, snapshot) in snapshots {
                for size in [1, 2, 3, 10, 60, 400] {
                    var keys: [Hash] = (0..<size).map { _ in keyHash(names[Int(rng.next() % UInt64(names.count))]) }
                    keys += (0..<(size / 3)).map { _ in keyHash("multi-absent-\(rng.next() % 100_000)") }
                    keys += keys.prefix(2)  // duplicates are proven once
                    let proof = try box.multiProof(keys, version: v)
                    try proof.verify(root: root)
                    #expect(proof.keyHashes == Array(Set(keys)).sorted(), "\(storeName) keys sorted and distinct")
                    for (i, k) in proof.keyHashes.enumerated() {
                        #expect(proof.values[i] == snapshot[k], "\(storeName) claim for a key at \(v)")
                        #expect(proof.value(of: k) == .some(snapshot[k]))
                    }
                    #expect(proof.value(of: keyHash("not asked for")) == nil)
                    let singles = try proof.keyHashes.map { try box.proof($0, version: v) }
                    let singleSiblings = singles.reduce(0) { $0 + $1.siblings.count }
                    let sent = Self.siblingCount(proof)
                    #expect(sent <= singleSiblings)
                    if proof.keyHashes.count >= 10 { #expect(sent < singleSiblings, "paths share their upper siblings") }
                    let decoded = try SparseMultiProof(decoding: proof.encoded())
                    #expect(decoded == proof)
                    try decoded.verify(root: root)
                    // A proof at one version does not verify against another's root.
                    if let other = snapshots.first(where: { $0.version != v }) {
                        #expect(throws: SparseMerkleError(.verificationFailed, "")) { try proof.verify(root: other.root) }
                    }
                }
            }
        }
    }

    @Test func emptyAndSingleLeafMaps() throws {
        let store = MemorySparseStore()
        _ = try SparseMerkleTree.apply([], version: 1, writer: store)
        let ks = [keyHash("a"), keyHash("b")]
        let empty = try SparseMerkleTree.multiProof(keyHashes: ks, version: 1, reader: store)
        #expect(empty.nodes == [.empty] && empty.values == [nil, nil])
        try empty.verify(root: .zero)
        let root = try SparseMerkleTree.apply([SparseChange(keyHash: ks[0], value: [7])], version: 2, writer: store)
        let lone = try SparseMerkleTree.multiProof(keyHashes: ks, version: 2, reader: store)
        #expect(lone.nodes == [.leaf(keyHash: ks[0], valueHash: SHA256.hash([7]))])
        #expect(lone.value(of: ks[0]) == .some([7]) && lone.value(of: ks[1]) == .some(nil))
        try lone.verify(root: root.hash)
        #expect(throws: SparseMerkleError(.malformed, "")) { try SparseMerkleTree.multiProof(keyHashes: [], version: 2, reader: store) }
        #expect(throws: SparseMerkleError(.unknownVersion, "")) { try SparseMerkleTree.multiProof(keyHashes: ks, version: 9, reader: store) }
    }

    /// 300 keys, and a proof of two present keys, an absent key ending at a neighbour's leaf
    /// and one ending at EMPTY.
    static func fixture() throws -> (root: Hash, proof: SparseMultiProof, map: [Hash: [UInt8]]) {
        let (store, root, map) = try SparseProofNegativeCases.fixture()
        var leafEnd: Hash?, emptyEnd: Hash?
        var i = 0
        while leafEnd == nil || emptyEnd == nil {
            let k = keyHash("absent\(i)")
            if case .leaf = try SparseMerkleTree.proof(keyHash: k, version: 1, reader: store).terminal { leafEnd = leafEnd ?? k } else { emptyEnd = emptyEnd ?? k }
            i += 1
        }
        let proof = try SparseMerkleTree.multiProof(keyHashes: [keyHash("n7"), keyHash("n42"), leafEnd!, emptyEnd!], version: 1, reader: store)
        try proof.verify(root: root)
        return (root, proof, map)
    }

    @Test func alteredProofsFail() throws {
        let (root, proof, _) = try Self.fixture()
        let present = proof.values.firstIndex { $0 != nil }!
        let absent = proof.values.firstIndex { $0 == nil }!
        func with(keys: [Hash]? = nil, values: [[UInt8]?]? = nil, nodes: [SparseMultiProof.Node]? = nil) -> SparseMultiProof {
            SparseMultiProof(keyHashes: keys ?? proof.keyHashes, values: values ?? proof.values, nodes: nodes ?? proof.nodes)
        }
        var bads: [(String, SparseMultiProof)] = []
        // Where the root alone would also catch it: the rule that must name the fault first.
        var expected: [String: String] = [:]
        var values = proof.values
        values[present] = Array("wrong".utf8)
        bads.append(("wrong value", with(values: values)))
        values = proof.values
        values[present] = nil
        bads.append(("present key claimed absent", with(values: values)))
        expected["present key claimed absent"] = "claimed absent but its search ends at its own leaf"
        values = proof.values
        values[absent] = [1]
        bads.append(("absent key claimed present", with(values: values)))
        bads.append(("values missing", with(values: Array(proof.values.dropLast()))))
        bads.append(("no keys", SparseMultiProof(keyHashes: [], values: [], nodes: [.empty])))
        expected["keys out of order"] = "strictly ascending"
        expected["a key twice"] = "strictly ascending"
        bads.append(("keys out of order", with(keys: proof.keyHashes.reversed(), values: proof.values.reversed())))
        bads.append(("a key twice", with(keys: [proof.keyHashes[0]] + proof.keyHashes.dropLast(), values: [proof.values[0]] + proof.values.dropLast())))
        bads.append(("a key left out", with(keys: Array(proof.keyHashes.dropFirst()), values: Array(proof.values.dropFirst()))))
        bads.append(("a node left out", with(nodes: Array(proof.nodes.dropLast()))))
        bads.append(("a node too many", with(nodes: proof.nodes + [.sibling(.zero)])))
        for (i, node) in proof.nodes.enumerated() {
            var nodes = proof.nodes
            switch node {
            case .sibling(let h):
                var bytes = h.bytes
                bytes[3] ^= 0x04
                nodes[i] = .sibling(Hash(bytes)!)
                bads.append(("sibling \(i) flipped", with(nodes: nodes)))
                nodes[i] = .interior
                bads.append(("sibling \(i) made interior", with(nodes: nodes)))
            case .leaf(let k, let v):
                nodes[i] = .empty
                bads.append(("leaf \(i) made empty", with(nodes: nodes)))
                var bytes = v.bytes
                bytes[0] ^= 1
                nodes[i] = .leaf(keyHash: k, valueHash: Hash(bytes)!)
                bads.append(("leaf \(i) value hash flipped", with(nodes: nodes)))
            case .empty:
                nodes[i] = .leaf(keyHash: proof.keyHashes[absent], valueHash: .zero)
                bads.append(("empty \(i) made a leaf", with(nodes: nodes)))
            case .interior:
                nodes[i] = .sibling(.zero)
                bads.append(("interior \(i) made a sibling", with(nodes: nodes)))
            }
        }
        // A leaf whose key does not share the path of the keys it is shown for.
        if let i = proof.nodes.firstIndex(where: { if case .leaf = $0 { return true } else { return false } }),
           case .leaf(let k, let v) = proof.nodes[i] {
            let stranger = (0..<1000).lazy.map { keyHash("stranger\($0)") }.first { NaiveSparse.bit($0, 0) != NaiveSparse.bit(k, 0) }!
            var nodes = proof.nodes
            nodes[i] = .leaf(keyHash: stranger, valueHash: v)
            bads.append(("stranger's leaf", with(nodes: nodes)))
            expected["stranger's leaf"] = "does not share its keys' first"
        }
        for (why, bad) in bads {
            let error = #expect(throws: SparseMerkleError.self, "\(why)") { try bad.verify(root: root) }
            #expect(error?.code == .verificationFailed)
            if let fragment = expected[why] { #expect(error?.message.contains(fragment) == true, "\(why): \(String(describing: error?.message))") }
        }
        #expect(expected.keys.allSatisfy { why in bads.contains { $0.0 == why } })
    }

    @Test func overlongValuesAreRefusedAndEncodingNeverTraps() throws {
        let k = keyHash("long")
        let long = SparseMultiProof(keyHashes: [k], values: [[UInt8](repeating: 1, count: 65_536)],
                                    nodes: [.leaf(keyHash: k, valueHash: SHA256.hash([UInt8](repeating: 1, count: 65_536)))])
        let root = SparseHash.leaf(keyHash: k, valueHash: SHA256.hash([UInt8](repeating: 1, count: 65_536)))
        let error = #expect(throws: SparseMerkleError.self) { try long.verify(root: root) }
        #expect(error?.message.contains("65,535") == true)
        #expect(throws: SparseMerkleError.self) { try SparseMultiProof(decoding: long.encoded()) }
        let mismatched = SparseMultiProof(keyHashes: [k], values: [[1], [2]], nodes: [.empty])
        #expect(throws: SparseMerkleError.self) { try SparseMultiProof(decoding: mismatched.encoded()).verify(root: .zero) }
    }

    @Test func interiorNodesEndAtDepth256() throws {
        let k = keyHash("deep")
        // 256 interior nodes down k's path, then one more at depth 256.
        func nodes(_ depth: Int) -> [SparseMultiProof.Node] {
            if depth == 256 { return [.interior, .sibling(.zero), .sibling(.zero)] }
            return NaiveSparse.bit(k, depth) == 0 ? [.interior] + nodes(depth + 1) + [.sibling(.zero)] : [.interior, .sibling(.zero)] + nodes(depth + 1)
        }
        let proof = SparseMultiProof(keyHashes: [k], values: [nil], nodes: nodes(0))
        let error = #expect(throws: SparseMerkleError.self) { try proof.verify(root: .zero) }
        #expect(error?.message.contains("depth 256") == true, "\(String(describing: error))")
    }

    @Test func binaryEncodingRejectsDamageOrProvesOnlyTheTruth() throws {
        let (root, proof, map) = try Self.fixture()
        let bytes = proof.encoded()
        #expect(try SparseMultiProof(decoding: bytes) == proof)
        var verifiedDamage = 0
        for offset in 0..<bytes.count {
            var damaged = bytes
            damaged[offset] ^= 0x01
            guard let decoded = try? SparseMultiProof(decoding: damaged), (try? decoded.verify(root: root)) != nil else { continue }
            // A non-inclusion claim holds for every key sharing the path to its terminal, so an
            // absent key's hash may change past its depth: what verifies must still be true.
            verifiedDamage += 1
            for (i, k) in decoded.keyHashes.enumerated() { #expect(decoded.values[i] == map[k], "byte \(offset)") }
        }
        #expect(verifiedDamage < 70, "only bytes of absent keys' hashes past their depth")
        #expect(throws: SparseMerkleError(.malformed, "")) { try SparseMultiProof(decoding: Array(bytes.dropLast())) }
        #expect(throws: SparseMerkleError(.malformed, "")) { try SparseMultiProof(decoding: bytes + [0]) }
        #expect(throws: SparseMerkleError(.malformed, "")) { try SparseMultiProof(decoding: [1] + bytes.dropFirst()) }
        #expect(throws: SparseMerkleError(.malformed, "")) { try SparseMultiProof(decoding: []) }
        // No keys; more keys than allowed, or than the bytes hold; more nodes than keys allow,
        // or than the bytes hold; bitmap padding; an unknown tag; EMPTY under tag 4.
        #expect(throws: SparseMerkleError(.malformed, "")) { try SparseMultiProof(decoding: [2, 0, 0, 0, 0, 0, 0, 0, 1, 1]) }
        #expect(throws: SparseMerkleError(.malformed, "")) { try SparseMultiProof(decoding: [2, 0xff, 0xff, 0xff, 0xff]) }
        let k = keyHash("one").bytes
        #expect(throws: SparseMerkleError(.malformed, "")) { try SparseMultiProof(decoding: [2, 0, 0, 0, 2] + k + [0x00, 0, 0, 0, 1, 1]) }
        #expect(throws: SparseMerkleError(.malformed, "")) {
            try SparseMultiProof(decoding: [2, 0, 0, 0, 1] + k + [0x00, 0, 0, 0x02, 0x02] + [UInt8](repeating: 0, count: 514))
        }
        #expect(throws: SparseMerkleError(.malformed, "")) { try SparseMultiProof(decoding: [2, 0, 0, 0, 1] + k + [0x00, 0, 0, 0, 3, 0]) }
        #expect(try SparseMultiProof(decoding: [2, 0, 0, 0, 1] + k + [0x00, 0, 0, 0, 1, 1]).nodes == [.empty])
        #expect(throws: SparseMerkleError(.malformed, "")) { try SparseMultiProof(decoding: [2, 0, 0, 0, 1] + k + [0x40, 0, 0, 0, 1, 1]) }
        #expect(throws: SparseMerkleError(.malformed, "")) { try SparseMultiProof(decoding: [2, 0, 0, 0, 1] + k + [0x00, 0, 0, 0, 1, 5]) }
        #expect(throws: SparseMerkleError(.malformed, "")) {
            try SparseMultiProof(decoding: [2, 0, 0, 0, 1] + k + [0x00, 0, 0, 0, 3, 0, 4] + [UInt8](repeating: 0, count: 32) + [3])
        }
    }
}

extension MemoryBox {
    func multiProof(_ keys: [Hash], version: UInt64) throws -> SparseMultiProof {
        try SparseMerkleTree.multiProof(keyHashes: keys, version: version, reader: store)
    }
}

extension LMDBBox {
    func multiProof(_ keys: [Hash], version: UInt64) throws -> SparseMultiProof {
        try store.read { try SparseMerkleTree.multiProof(keyHashes: keys, version: version, reader: $0) }
    }
}
