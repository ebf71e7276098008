import Foundation
import LedgerCrypto

/// Hashes of the complete subtrees at the upper levels of a log, kept in memory.
///
/// Complete subtrees are written once and never change, so a cached hash can never go
/// stale: the cache needs no invalidation, only a lock for its arrays. Levels at or above
/// ``firstLevel`` hold one hash per 2^level entries (at the default level 5, 10M entries
/// cost about 20 MB), so a proof reads only its lowest levels from storage.
///
/// Thread safety: all methods may be called from several threads.
public final class UpperLevelCache: @unchecked Sendable {
    // Sendable: `lock` guards `levels`.
    /// The lowest cached level.
    public let firstLevel: Int
    private let lock = NSLock()
    private var levels: [[Hash]]

    public init(firstLevel: Int = 5) {
        self.firstLevel = firstLevel
        self.levels = Array(repeating: [], count: max(0, 64 - firstLevel))
    }

    /// The cached hash, or `nil` when not (yet) cached.
    @inline(__always)
    func hash(level: Int, index: UInt64) -> Hash? {
        let row = level - firstLevel
        lock.lock()
        defer { lock.unlock() }
        return index < UInt64(levels[row].count) ? levels[row][Int(index)] : nil
    }

    /// Number of hashes cached at `level`.
    func count(level: Int) -> UInt64 {
        lock.lock()
        defer { lock.unlock() }
        return UInt64(levels[level - firstLevel].count)
    }

    /// Adds hashes that continue `level` from index `from`; the part another thread already
    /// added is skipped.
    func extend(level: Int, from: UInt64, with hashes: [Hash]) {
        let row = level - firstLevel
        lock.lock()
        defer { lock.unlock() }
        let have = UInt64(levels[row].count)
        guard have >= from, have < from + UInt64(hashes.count) else { return }
        levels[row].append(contentsOf: hashes[Int(have - from)...])
    }
}

/// The hashes of the ragged right edge of the most recently used tree size: for each
/// boundary b of the size's binary decomposition, MTH(D[b ..< size]). Every proof at that
/// size needs one of them, and the root is the one at 0.
///
/// Thread safety: all methods may be called from several threads.
public final class RightEdgeCache: @unchecked Sendable {
    // Sendable: `lock` guards `size` and `suffixes`.
    private let lock = NSLock()
    private var size: UInt64 = 0
    private var suffixes: [(start: UInt64, hash: Hash)] = []

    public init() {}

    func lookup(start: UInt64, end: UInt64) -> Hash? {
        lock.lock()
        defer { lock.unlock() }
        guard end == size else { return nil }
        for entry in suffixes where entry.start == start { return entry.hash }
        return nil
    }

    func store(end: UInt64, suffixes: [(start: UInt64, hash: Hash)]) {
        lock.lock()
        defer { lock.unlock() }
        size = end
        self.suffixes = suffixes
    }
}
