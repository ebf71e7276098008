public import LedgerCrypto

/// The largest power of two strictly less than `n` (n >= 2), RFC 6962's split point.
@inline(__always)
func splitPoint(_ n: UInt64) -> UInt64 {
    UInt64(1) << (63 - UInt64((n - 1).leadingZeroBitCount))
}

extension LogStorageReader {
    /// MTH(D[start ..< end]): the hash of any range that RFC 6962's recursion produces
    /// (`start` aligned to the largest power of two below the range's size, or the range
    /// complete). Complete subtrees are read; the ragged edge is hashed from them.
    public func subtreeHash(start: UInt64, end: UInt64) throws -> Hash {
        let count = end - start
        precondition(count > 0, "empty range")
        if count & (count - 1) == 0 && start % count == 0 {
            let level = count.trailingZeroBitCount
            return try storedHash(level: level, index: start >> UInt64(level))
        }
        if let cache = rightEdgeCache, end == (try treeSize) {
            if let hit = cache.lookup(start: start, end: end) { return hit }
            // Only ranges ending at a tree size are ragged in RFC 6962's recursion, and their
            // start is a boundary of that size's decomposition: compute all such suffixes once.
            let suffixes = try rightEdgeSuffixes(end: end)
            cache.store(end: end, suffixes: suffixes)
            if let found = suffixes.first(where: { $0.start == start }) { return found.hash }
        }
        return try raggedHash(start: start, end: end)
    }

    /// MTH(D[start ..< end]) folded from the complete pieces given by the bits of the count.
    func raggedHash(start: UInt64, end: UInt64) throws -> Hash {
        let count = end - start
        var pieces: [Hash] = []
        pieces.reserveCapacity(count.nonzeroBitCount)
        var offset = start
        var bit = 63 - count.leadingZeroBitCount
        while bit >= 0 {
            let width = UInt64(1) << UInt64(bit)
            if count & width != 0 {
                pieces.append(try storedHash(level: bit, index: offset >> UInt64(bit)))
                offset += width
            }
            bit -= 1
        }
        var acc = pieces[pieces.count - 1]
        for piece in pieces.dropLast().reversed() { acc = SHA256.nodeHash(piece, acc) }
        return acc
    }

    /// For each boundary b of `end`'s binary decomposition (0 first), MTH(D[b ..< end]).
    func rightEdgeSuffixes(end: UInt64) throws -> [(start: UInt64, hash: Hash)] {
        var pieces: [(start: UInt64, hash: Hash)] = []
        var offset: UInt64 = 0
        var bit = 63 - end.leadingZeroBitCount
        while bit >= 0 {
            let width = UInt64(1) << UInt64(bit)
            if end & width != 0 {
                pieces.append((offset, try storedHash(level: bit, index: offset >> UInt64(bit))))
                offset += width
            }
            bit -= 1
        }
        var acc = pieces[pieces.count - 1].hash
        var suffixes = [pieces[pieces.count - 1]]
        for piece in pieces.dropLast().reversed() {
            acc = SHA256.nodeHash(piece.hash, acc)
            suffixes.append((piece.start, acc))
        }
        return suffixes
    }

    /// The root hash of the first `size` entries (`size` <= ``treeSize``).
    /// The empty tree's root is SHA-256 of nothing.
    public func rootHash(size: UInt64) throws -> Hash {
        guard size <= (try treeSize) else {
            throw MerkleLogError.outOfRange("size \(size) exceeds tree size \(try treeSize)")
        }
        if size == 0 { return SHA256.hash([]) }
        return try subtreeHash(start: 0, end: size)
    }

    /// The audit path of leaf `index` in the tree of `size` entries (RFC 9162 2.1.3.1),
    /// deepest sibling first.
    public func inclusionPath(index: UInt64, size: UInt64) throws -> [Hash] {
        guard size <= (try treeSize) else {
            throw MerkleLogError.outOfRange("size \(size) exceeds tree size \(try treeSize)")
        }
        guard index < size else { throw MerkleLogError.outOfRange("index \(index) not below size \(size)") }
        var path: [Hash] = []
        path.reserveCapacity(64 - Int(size.leadingZeroBitCount))
        var start: UInt64 = 0
        var end = size
        let m = index
        // Descend from the root, collecting siblings root-first, then reverse.
        while end - start > 1 {
            let k = splitPoint(end - start)
            if m - start < k {
                path.append(try subtreeHash(start: start + k, end: end))
                end = start + k
            } else {
                path.append(try storedHash(level: k.trailingZeroBitCount, index: start >> UInt64(k.trailingZeroBitCount)))
                start += k
            }
        }
        path.reverse()
        return path
    }

    /// The consistency proof from `oldSize` to `newSize` (RFC 9162 2.1.4.1), deepest first.
    /// Empty when `oldSize` is 0 or equals `newSize`.
    public func consistencyPath(oldSize: UInt64, newSize: UInt64) throws -> [Hash] {
        guard newSize <= (try treeSize) else {
            throw MerkleLogError.outOfRange("size \(newSize) exceeds tree size \(try treeSize)")
        }
        guard oldSize <= newSize else {
            throw MerkleLogError.outOfRange("old size \(oldSize) exceeds new size \(newSize)")
        }
        if oldSize == 0 || oldSize == newSize { return [] }
        var path: [Hash] = []
        var start: UInt64 = 0
        var end = newSize
        var m = oldSize
        var startFromOldRoot = true
        // SUBPROOF(m, D[start:end], b), iteratively.
        while true {
            if m == end - start {
                if !startFromOldRoot { path.append(try subtreeHash(start: start, end: end)) }
                break
            }
            let k = splitPoint(end - start)
            if m <= k {
                path.append(try subtreeHash(start: start + k, end: end))
                end = start + k
            } else {
                path.append(try storedHash(level: k.trailingZeroBitCount, index: start >> UInt64(k.trailingZeroBitCount)))
                start += k
                m -= k
                startFromOldRoot = false
            }
        }
        path.reverse()
        return path
    }
}

/// The pending left siblings of a log's right edge: for each level whose bit is set in the
/// tree size, the hash of the last complete subtree at that level. Enough to append without
/// reading back, and to compute the root.
public struct Frontier: Sendable, Equatable {
    /// The tree size this frontier belongs to.
    public private(set) var size: UInt64 = 0
    var hashes = [Hash](repeating: .zero, count: 64)
    /// For stores with tiles: the hashes of the current, incomplete bottom block so far.
    var tileHeight = 0
    var tile: [Hash] = []

    public init() {}

    /// Offset of `level`'s first hash in a tile of `height`: 2^h + 2^(h-1) + … for lower levels.
    @inline(__always)
    static func tileOffset(level: Int, height: Int) -> Int {
        (1 << (height + 1)) - (1 << (height + 1 - level))
    }

    /// Loads the frontier of `reader`'s tree size from stored hashes (at most 64 reads, plus
    /// the hashes of the incomplete bottom block when the store keeps tiles).
    public init<R: LogStorageReader>(reading reader: R) throws {
        let size = try reader.treeSize
        self.size = size
        for level in 0..<64 where size & (UInt64(1) << UInt64(level)) != 0 {
            hashes[level] = try reader.storedHash(level: level, index: (size >> UInt64(level)) - 1)
        }
        tileHeight = reader.tileHeight
        if tileHeight > 0 {
            tile = [Hash](repeating: .zero, count: (2 << tileHeight) - 2)
            let block = size >> UInt64(tileHeight)
            for level in 0..<tileHeight {
                let first = block << UInt64(tileHeight - level)
                let end = size >> UInt64(level)
                var k = first
                while k < end {
                    tile[Self.tileOffset(level: level, height: tileHeight) + Int(k - first)] =
                        try reader.storedHash(level: level, index: k)
                    k += 1
                }
            }
        }
    }

    /// The root of the tree of ``size`` entries.
    public var rootHash: Hash {
        if size == 0 { return SHA256.hash([]) }
        var acc: Hash? = nil
        for level in 0..<64 where size & (UInt64(1) << UInt64(level)) != 0 {
            acc = acc.map { SHA256.nodeHash(hashes[level], $0) } ?? hashes[level]
        }
        return acc!
    }

    /// Writes the incomplete block's hashes, if any; call once at the end of a batch.
    func flushPendingTile<W: LogStorageWriter>(writer: W) throws {
        guard tileHeight > 0 else { return }
        guard size & ((1 << UInt64(tileHeight)) - 1) != 0 else {
            try writer.clearPendingTile()  // the block it held is complete and stored as a tile
            return
        }
        try tile.withUnsafeBufferPointer { try writer.setPendingTile($0, index: size >> UInt64(tileHeight)) }
    }

    @inline(__always)
    mutating func recordInTile(_ hash: Hash, level: Int, index: UInt64) {
        let within = Int(index & ((1 << UInt64(tileHeight - level)) - 1))
        tile[Self.tileOffset(level: level, height: tileHeight) + within] = hash
    }

    /// Adds a leaf hash, writing the leaf and every subtree it completes through `writer`.
    @inline(__always)
    mutating func append<W: LogStorageWriter>(leaf: Hash, writer: W) throws {
        var hash = leaf
        var index = size
        var level = 0
        // With tiles, the bottom levels live only in tiles (and the pending tile).
        if tileHeight > 0 { recordInTile(hash, level: 0, index: index) } else { try writer.appendHash(hash, level: 0, index: index) }
        while index & 1 == 1 {
            hash = SHA256.nodeHash(hashes[level], hash)
            level += 1
            index >>= 1
            if level < tileHeight { recordInTile(hash, level: level, index: index) } else { try writer.appendHash(hash, level: level, index: index) }
        }
        hashes[level] = hash
        size += 1
        if tileHeight > 0 && size & ((1 << UInt64(tileHeight)) - 1) == 0 {
            try tile.withUnsafeBufferPointer { try writer.appendTile($0, index: (size >> UInt64(tileHeight)) - 1) }
            // The next block's pending tile holds zeros where its subtrees are incomplete, so
            // every stored byte is determined by the entries (and checkable).
            for i in tile.indices { tile[i] = .zero }
        }
    }
}
