public import LedgerCrypto

/// Proof that a leaf is entry `leafIndex` of the tree of `treeSize` entries (RFC 9162 2.1.3).
///
/// For example:
/// ```swift
/// let proof = try log.inclusionProof(index: 3, size: 8)
/// try proof.verify(leafHash: SHA256.leafHash(entry), rootHash: root)
/// ```
public struct InclusionProof: Sendable, Hashable {
    public let leafIndex: UInt64
    public let treeSize: UInt64
    /// Sibling hashes, deepest first.
    public let hashes: [Hash]

    public init(leafIndex: UInt64, treeSize: UInt64, hashes: [Hash]) {
        self.leafIndex = leafIndex
        self.treeSize = treeSize
        self.hashes = hashes
    }

    /// The root this proof yields for `leafHash` (RFC 9162 2.1.3.2).
    /// - Throws: ``MerkleLogError`` `.verificationFailed` when the path has the wrong length
    ///   for the index and size.
    public func computeRoot(leafHash: Hash) throws -> Hash {
        guard leafIndex < treeSize else {
            throw MerkleLogError(.verificationFailed, "leaf index \(leafIndex) not below tree size \(treeSize)")
        }
        var fn = leafIndex
        var sn = treeSize - 1
        var r = leafHash
        for p in hashes {
            guard sn != 0 else { throw MerkleLogError(.verificationFailed, "inclusion path too long") }
            if fn & 1 == 1 || fn == sn {
                r = SHA256.nodeHash(p, r)
                if fn & 1 == 0 {
                    while fn & 1 == 0 && fn != 0 {
                        fn >>= 1
                        sn >>= 1
                    }
                }
            } else {
                r = SHA256.nodeHash(r, p)
            }
            fn >>= 1
            sn >>= 1
        }
        guard sn == 0 else { throw MerkleLogError(.verificationFailed, "inclusion path too short") }
        return r
    }

    /// Checks the proof against `rootHash`.
    /// - Throws: ``MerkleLogError`` `.verificationFailed` on any mismatch.
    public func verify(leafHash: Hash, rootHash: Hash) throws {
        guard try computeRoot(leafHash: leafHash) == rootHash else {
            throw MerkleLogError(.verificationFailed, "inclusion proof does not lead to the root")
        }
    }
}

/// Proof that the tree of `oldSize` entries is a prefix of the tree of `newSize` (RFC 9162 2.1.4).
public struct ConsistencyProof: Sendable, Hashable {
    public let oldSize: UInt64
    public let newSize: UInt64
    /// Proof hashes, deepest first.
    public let hashes: [Hash]

    public init(oldSize: UInt64, newSize: UInt64, hashes: [Hash]) {
        self.oldSize = oldSize
        self.newSize = newSize
        self.hashes = hashes
    }

    /// Checks that `oldRoot` (of `oldSize`) and `newRoot` (of `newSize`) are consistent
    /// (RFC 9162 2.1.4.2). Size 0 is consistent with everything, with an empty proof.
    /// - Throws: ``MerkleLogError`` `.verificationFailed` on any mismatch.
    public func verify(oldRoot: Hash, newRoot: Hash) throws {
        func fail(_ why: String) -> MerkleLogError { MerkleLogError(.verificationFailed, "consistency proof: \(why)") }
        guard oldSize <= newSize else { throw fail("old size exceeds new size") }
        if oldSize == newSize {
            guard hashes.isEmpty else { throw fail("proof between equal sizes must be empty") }
            guard oldRoot == newRoot else { throw fail("roots of equal sizes differ") }
            return
        }
        if oldSize == 0 {
            guard hashes.isEmpty else { throw fail("proof from size 0 must be empty") }
            guard oldRoot == SHA256.hash([]) else { throw fail("the root of size 0 must be the empty-tree hash") }
            return
        }
        guard !hashes.isEmpty else { throw fail("empty proof") }
        var path = hashes[...]
        var prefixed: [Hash] = []
        if oldSize & (oldSize - 1) == 0 {
            prefixed = [oldRoot] + hashes
            path = prefixed[...]
        }
        var fn = oldSize - 1
        var sn = newSize - 1
        while fn & 1 == 1 {
            fn >>= 1
            sn >>= 1
        }
        var fr = path.first!
        var sr = path.first!
        for c in path.dropFirst() {
            guard sn != 0 else { throw fail("path too long") }
            if fn & 1 == 1 || fn == sn {
                fr = SHA256.nodeHash(c, fr)
                sr = SHA256.nodeHash(c, sr)
                if fn & 1 == 0 {
                    while fn & 1 == 0 && fn != 0 {
                        fn >>= 1
                        sn >>= 1
                    }
                }
            } else {
                sr = SHA256.nodeHash(sr, c)
            }
            fn >>= 1
            sn >>= 1
        }
        guard sn == 0 else { throw fail("path too short") }
        guard fr == oldRoot else { throw fail("old root mismatch") }
        guard sr == newRoot else { throw fail("new root mismatch") }
    }
}
