import LedgerCrypto

/// The RFC 6962 Merkle tree over a blob's chunk leaf hashes, kept whole in memory: a blob of
/// 2 GB in 256 KiB chunks has 8,192 leaves, so every level together is about 512 KB.
///
/// Built level by level, pairing neighbours and carrying a lone last node up unchanged, which
/// yields exactly RFC 6962's MTH (its split at the largest power of two below n puts every
/// complete pair on the left and leaves the ragged edge for last).
struct ChunkTree {
    /// `levels[0]` are the leaves; the last level holds the root alone.
    private(set) var levels: [[Hash]]

    init(leaves: [Hash]) {
        var levels = [leaves]
        while let last = levels.last, last.count > 1 {
            var next: [Hash] = []
            next.reserveCapacity((last.count + 1) / 2)
            var i = 0
            while i + 1 < last.count {
                next.append(SHA256.nodeHash(last[i], last[i + 1]))
                i += 2
            }
            if i < last.count { next.append(last[i]) }
            levels.append(next)
        }
        self.levels = levels
    }

    var leafCount: Int { levels[0].count }

    /// MTH of the leaves; SHA-256 of nothing for a blob without chunks (an empty blob).
    var root: Hash { leafCount == 0 ? SHA256.hash([]) : levels[levels.count - 1][0] }

    /// The audit path of leaf `index`, deepest sibling first (RFC 6962 PATH, RFC 9162 order):
    /// a node carried up alone has no sibling at that level and adds nothing.
    func path(_ index: Int) -> [Hash] {
        precondition(index >= 0 && index < leafCount, "chunk index out of range")
        var path: [Hash] = []
        var i = index
        for level in levels.dropLast() {
            let sibling = i ^ 1
            if sibling < level.count { path.append(level[sibling]) }
            i >>= 1
        }
        return path
    }
}
