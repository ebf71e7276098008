import Foundation
import Testing
import TestSupport
import LMDBKit
import LedgerCrypto
@testable import MerkleLog

func tempPath(_ name: String) -> String {
    NSTemporaryDirectory() + "medledger-\(name)-\(UUID().uuidString)"
}

/// The leaves certificate-transparency uses for its RFC 6962 test tree.
let ctLeaves: [[UInt8]] = [
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f",
].map { Hex.decode($0)! }

/// Roots of that tree at sizes 1...8 (RFC 6962 hashing; confirmed by the reference above).
let ctRoots = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]

@Suite struct RFC6962KnownAnswers {
    @Test func emptyTreeRoot() throws {
        let log = try MerkleLog(store: MemoryLogStore())
        #expect(log.rootHash.hex == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(try log.rootHash(size: 0) == log.rootHash)
    }

    @Test func certificateTransparencyTree() throws {
        let log = try MerkleLog(store: MemoryLogStore())
        for (i, leaf) in ctLeaves.enumerated() {
            try log.append([leaf])
            #expect(log.rootHash.hex == ctRoots[i], "size \(i + 1)")
        }
        for size in 1...8 {
            #expect(try log.rootHash(size: UInt64(size)).hex == ctRoots[size - 1])
            #expect(Reference.mth(ctLeaves.prefix(size)[...]).hex == ctRoots[size - 1])
        }
        // Spot checks from the same test suite: leaf 0 in 8, consistency 1 -> 8 and 6 -> 8.
        let inclusion = try log.inclusionProof(index: 0, size: 8)
        #expect(inclusion.hashes.map(\.hex) == [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ])
        let consistency = try log.consistencyProof(oldSize: 6, newSize: 8)
        #expect(consistency.hashes.map(\.hex) == [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ])
    }
}

/// Runs `body` against a fresh in-memory log and a fresh LMDB log.
func withEachStore(_ name: String, _ body: (String, any LogAppender) throws -> Void) throws {
    try body("memory", try MerkleLog(store: MemoryLogStore()))
    let path = tempPath(name)
    defer { try? FileManager.default.removeItem(atPath: path) }
    var options = Environment.Options()
    options.durable = false
    let env = try Environment(path: path, options: options)
    try body("lmdb", try MerkleLog(store: try LMDBLogStore(environment: env)))
    // The same environment again, with every level from 1 up served from the in-memory caches.
    let cachedPath = tempPath(name + "-cached")
    defer { try? FileManager.default.removeItem(atPath: cachedPath) }
    let cachedEnv = try Environment(path: cachedPath, options: options)
    try body("lmdb-cached", try MerkleLog(store: try LMDBLogStore(environment: cachedEnv, cacheFromLevel: 1)))
}

/// The operations the tests need, independent of the store type.
protocol LogAppender {
    func appendAll(_ entries: [[UInt8]]) throws
    func root(_ size: UInt64) throws -> Hash
    func inclusion(_ index: UInt64, _ size: UInt64) throws -> InclusionProof
    func consistency(_ old: UInt64, _ new: UInt64) throws -> ConsistencyProof
}

extension MerkleLog: LogAppender {
    func appendAll(_ entries: [[UInt8]]) throws { try append(entries) }
    func root(_ size: UInt64) throws -> Hash { try rootHash(size: size) }
    func inclusion(_ index: UInt64, _ size: UInt64) throws -> InclusionProof { try inclusionProof(index: index, size: size) }
    func consistency(_ old: UInt64, _ new: UInt64) throws -> ConsistencyProof { try consistencyProof(oldSize: old, newSize: new) }
}

@Suite struct ProofsAgainstReference {
    static let entries: [[UInt8]] = (0..<64).map { Array("entry-\($0)".utf8) }

    @Test func everyProofForSizesUpTo64() throws {
        let d = Self.entries
        try withEachStore("all") { store, log in
            // Append in uneven batches so batch boundaries fall everywhere.
            var appended = 0
            var batch = 1
            while appended < d.count {
                let end = min(d.count, appended + batch)
                try log.appendAll(Array(d[appended..<end]))
                appended = end
                batch = batch % 7 + 1
            }
            for n in 1...64 {
                let root = try log.root(UInt64(n))
                #expect(root == Reference.mth(d.prefix(n)[...]), "\(store) root \(n)")
                for m in 0..<n {
                    let proof = try log.inclusion(UInt64(m), UInt64(n))
                    #expect(proof.hashes == Reference.path(m, d.prefix(n)[...]), "\(store) PATH(\(m), \(n))")
                    try proof.verify(leafHash: Reference.leaf(d[m]), rootHash: root)
                }
                for m in 1...n {
                    let proof = try log.consistency(UInt64(m), UInt64(n))
                    let expected = m == n ? [] : Reference.proof(m, d.prefix(n)[...])
                    #expect(proof.hashes == expected, "\(store) PROOF(\(m), \(n))")
                    try proof.verify(oldRoot: try log.root(UInt64(m)), newRoot: root)
                }
            }
        }
    }

    @Test func outOfRangeRequestsFail() throws {
        let log = try MerkleLog(store: MemoryLogStore())
        try log.append(Array(Self.entries.prefix(5)))
        #expect(throws: MerkleLogError(.outOfRange, "")) { try log.inclusionProof(index: 5, size: 5) }
        #expect(throws: MerkleLogError(.outOfRange, "")) { try log.inclusionProof(index: 0, size: 6) }
        #expect(throws: MerkleLogError(.outOfRange, "")) { try log.consistencyProof(oldSize: 3, newSize: 6) }
        #expect(throws: MerkleLogError(.outOfRange, "")) { try log.consistencyProof(oldSize: 4, newSize: 3) }
        #expect(throws: MerkleLogError(.outOfRange, "")) { try log.rootHash(size: 6) }
    }
}

@Suite struct ProofNegativeCases {
    static let d: [[UInt8]] = (0..<37).map { Array("leaf \($0)".utf8) }

    func flip(_ h: Hash, bit: Int) -> Hash {
        var bytes = h.bytes
        bytes[bit / 8] ^= UInt8(1 << (bit % 8))
        return Hash(bytes)!
    }

    @Test func inclusionRejectsEveryAlteration() throws {
        let log = try MerkleLog(store: MemoryLogStore())
        try log.append(Self.d)
        let n: UInt64 = 37
        let root = log.rootHash
        for m in [0, 1, 17, 31, 32, 36] as [UInt64] {
            let leaf = Reference.leaf(Self.d[Int(m)])
            let proof = try log.inclusionProof(index: m, size: n)
            try proof.verify(leafHash: leaf, rootHash: root)
            // Flipped bit in each path hash, the leaf and the root.
            for i in proof.hashes.indices {
                var hashes = proof.hashes
                hashes[i] = flip(hashes[i], bit: 77)
                #expect(throws: MerkleLogError.self) {
                    try InclusionProof(leafIndex: m, treeSize: n, hashes: hashes).verify(leafHash: leaf, rootHash: root)
                }
            }
            #expect(throws: MerkleLogError.self) { try proof.verify(leafHash: flip(leaf, bit: 0), rootHash: root) }
            #expect(throws: MerkleLogError.self) { try proof.verify(leafHash: leaf, rootHash: flip(root, bit: 255)) }
            // Wrong index, wrong size.
            for wrong in [m + 1, m == 0 ? 2 : m - 1, n] {
                #expect(throws: MerkleLogError.self) {
                    try InclusionProof(leafIndex: wrong, treeSize: n, hashes: proof.hashes).verify(leafHash: leaf, rootHash: root)
                }
            }
            // RFC 9162 verification binds the size only through the path's shape (the signed
            // checkpoint binds size and root together), so use sizes whose shape differs.
            for wrongSize in [2 * n, 4 * n, m] {
                #expect(throws: MerkleLogError.self) {
                    try InclusionProof(leafIndex: m, treeSize: wrongSize, hashes: proof.hashes).verify(leafHash: leaf, rootHash: root)
                }
            }
            // Truncated, extended, reordered.
            #expect(throws: MerkleLogError.self) {
                try InclusionProof(leafIndex: m, treeSize: n, hashes: Array(proof.hashes.dropLast())).verify(leafHash: leaf, rootHash: root)
            }
            #expect(throws: MerkleLogError.self) {
                try InclusionProof(leafIndex: m, treeSize: n, hashes: proof.hashes + [root]).verify(leafHash: leaf, rootHash: root)
            }
            #expect(throws: MerkleLogError.self) {
                try InclusionProof(leafIndex: m, treeSize: n, hashes: [leaf] + proof.hashes).verify(leafHash: leaf, rootHash: root)
            }
            if proof.hashes.count > 1 {
                #expect(throws: MerkleLogError.self) {
                    try InclusionProof(leafIndex: m, treeSize: n, hashes: proof.hashes.reversed()).verify(leafHash: leaf, rootHash: root)
                }
            }
        }
        // A single-leaf tree: the leaf is the root, the path must be empty.
        let one = InclusionProof(leafIndex: 0, treeSize: 1, hashes: [])
        try one.verify(leafHash: Reference.leaf(Self.d[0]), rootHash: Reference.leaf(Self.d[0]))
        #expect(throws: MerkleLogError.self) {
            try InclusionProof(leafIndex: 0, treeSize: 0, hashes: []).verify(leafHash: root, rootHash: root)
        }
    }

    @Test func consistencyRejectsEveryAlteration() throws {
        let log = try MerkleLog(store: MemoryLogStore())
        try log.append(Self.d)
        let n: UInt64 = 37
        let newRoot = log.rootHash
        for m in [1, 2, 3, 8, 16, 20, 31, 32, 36] as [UInt64] {
            let oldRoot = try log.rootHash(size: m)
            let proof = try log.consistencyProof(oldSize: m, newSize: n)
            try proof.verify(oldRoot: oldRoot, newRoot: newRoot)
            for i in proof.hashes.indices {
                var hashes = proof.hashes
                hashes[i] = flip(hashes[i], bit: 3)
                #expect(throws: MerkleLogError.self) {
                    try ConsistencyProof(oldSize: m, newSize: n, hashes: hashes).verify(oldRoot: oldRoot, newRoot: newRoot)
                }
            }
            #expect(throws: MerkleLogError.self) { try proof.verify(oldRoot: flip(oldRoot, bit: 9), newRoot: newRoot) }
            #expect(throws: MerkleLogError.self) { try proof.verify(oldRoot: oldRoot, newRoot: flip(newRoot, bit: 9)) }
            // As for inclusion, sizes are bound through the proof's shape: change it.
            for (om, on) in [(m, 2 * n), (m, 4 * n)] {
                #expect(throws: MerkleLogError.self) {
                    try ConsistencyProof(oldSize: om, newSize: on, hashes: proof.hashes).verify(oldRoot: oldRoot, newRoot: newRoot)
                }
            }
            #expect(throws: MerkleLogError.self) {
                try ConsistencyProof(oldSize: m, newSize: n, hashes: Array(proof.hashes.dropLast())).verify(oldRoot: oldRoot, newRoot: newRoot)
            }
            #expect(throws: MerkleLogError.self) {
                try ConsistencyProof(oldSize: m, newSize: n, hashes: proof.hashes + [newRoot]).verify(oldRoot: oldRoot, newRoot: newRoot)
            }
            #expect(throws: MerkleLogError.self) {
                try ConsistencyProof(oldSize: m, newSize: n, hashes: []).verify(oldRoot: oldRoot, newRoot: newRoot)
            }
        }
        // Edge cases: equal sizes need equal roots and no hashes; size 0 needs no hashes.
        try ConsistencyProof(oldSize: n, newSize: n, hashes: []).verify(oldRoot: newRoot, newRoot: newRoot)
        #expect(throws: MerkleLogError.self) {
            try ConsistencyProof(oldSize: n, newSize: n, hashes: [newRoot]).verify(oldRoot: newRoot, newRoot: newRoot)
        }
        #expect(throws: MerkleLogError.self) {
            try ConsistencyProof(oldSize: n, newSize: n, hashes: []).verify(oldRoot: flip(newRoot, bit: 1), newRoot: newRoot)
        }
        try ConsistencyProof(oldSize: 0, newSize: n, hashes: []).verify(oldRoot: SHA256.hash([]), newRoot: newRoot)
        #expect(throws: MerkleLogError.self) {
            try ConsistencyProof(oldSize: 0, newSize: n, hashes: [newRoot]).verify(oldRoot: SHA256.hash([]), newRoot: newRoot)
        }
        #expect(throws: MerkleLogError.self) {
            try ConsistencyProof(oldSize: 0, newSize: n, hashes: []).verify(oldRoot: newRoot, newRoot: newRoot)
        }
        #expect(throws: MerkleLogError.self) {
            try ConsistencyProof(oldSize: 5, newSize: 4, hashes: [newRoot]).verify(oldRoot: newRoot, newRoot: newRoot)
        }
    }
}

@Suite struct LMDBLogPersistence {
    @Test func reopenGivesIdenticalRootsAndProofs() throws {
        let path = tempPath("reopen")
        defer { try? FileManager.default.removeItem(atPath: path) }
        let entries: [[UInt8]] = (0..<1000).map { Array("e\($0)".utf8) }
        var roots: [UInt64: Hash] = [:]
        do {
            let log = try MerkleLog(store: try LMDBLogStore(environment: try Environment(path: path)))
            for start in stride(from: 0, to: 1000, by: 333) {
                try log.append(Array(entries[start..<min(1000, start + 333)]))
                roots[log.size] = log.rootHash
            }
        }
        let log = try MerkleLog(store: try LMDBLogStore(environment: try Environment(path: path)))
        #expect(log.size == 1000)
        for (size, root) in roots { #expect(try log.rootHash(size: size) == root) }
        #expect(log.rootHash == Reference.mth(entries[...]))
        #expect(try log.entry(at: 999) == entries[999])
        try log.append([Array("more".utf8)])
        #expect(log.rootHash == Reference.mth((entries + [Array("more".utf8)])[...]))
    }

    @Test func reopeningBetweenEveryBatchKeepsTilesAndProofsRight() throws {
        let path = tempPath("reopen-batches")
        defer { try? FileManager.default.removeItem(atPath: path) }
        var options = Environment.Options()
        options.durable = false
        let env = try Environment(path: path, options: options)
        let all: [[UInt8]] = (0..<150).map { Array("r\($0)".utf8) }
        var generator = SplitMix64(seed: 0x7115)
        var done = 0
        while done < all.count {
            let n = min(all.count - done, Int(generator.next() % 11) + 1)
            let log = try MerkleLog(store: try LMDBLogStore(environment: env))  // frontier and tile reloaded
            try log.append(Array(all[done..<(done + n)]))
            done += n
            #expect(log.rootHash == Reference.mth(all.prefix(done)[...]), "size \(done)")
        }
        let log = try MerkleLog(store: try LMDBLogStore(environment: env))
        for n in [31, 32, 33, 64, 97, 128, 150] {
            for m in 0..<n {
                #expect(try log.inclusionProof(index: UInt64(m), size: UInt64(n)).hashes == Reference.path(m, all.prefix(n)[...]))
            }
            for m in 1..<n {
                #expect(try log.consistencyProof(oldSize: UInt64(m), newSize: UInt64(n)).hashes == Reference.proof(m, all.prefix(n)[...]))
            }
        }
    }

    @Test func twoWritersOnOneEnvironmentStayConsistent() throws {
        let path = tempPath("twowriters")
        defer { try? FileManager.default.removeItem(atPath: path) }
        var options = Environment.Options()
        options.durable = false
        // One environment per process (LMDB's rule); two logs over it stand in for two writers.
        let env = try Environment(path: path, options: options)
        let a = try MerkleLog(store: try LMDBLogStore(environment: env))
        let b = try MerkleLog(store: try LMDBLogStore(environment: env))
        var all: [[UInt8]] = []
        for i in 0..<20 {
            let e = [Array("x\(i)".utf8)]
            if i % 3 == 0 { try b.append(e) } else { try a.append(e) }
            all += e
        }
        try a.refresh()
        #expect(a.rootHash == Reference.mth(all[...]))
        #expect(try b.rootHash(size: 20) == Reference.mth(all[...]))
    }

    @Test func readOnlyOpenOfEmptyEnvironmentHasNoLog() throws {
        let path = tempPath("nolog")
        defer { try? FileManager.default.removeItem(atPath: path) }
        _ = try Environment(path: path).openDatabase("other")
        var options = Environment.Options()
        options.readOnly = true
        #expect(throws: MerkleLogError(.missingData, "")) { try LMDBLogStore(environment: try Environment(path: path, options: options)) }
    }
}
