import Foundation
public import LedgerCrypto

/// An append-only RFC 6962 / RFC 9162 Merkle log over a ``LogStore``.
///
/// Entries are opaque bytes. ``append(_:)`` adds a batch in one atomic write (group commit);
/// roots and proofs are available for every size up to the current one, computed from stored
/// subtree hashes, never by rehashing entries.
///
/// For example:
/// ```swift
/// let log = try MerkleLog(store: MemoryLogStore())
/// try log.append([Array("a".utf8), Array("b".utf8)])
/// let proof = try log.inclusionProof(index: 1, size: 2)
/// try proof.verify(leafHash: SHA256.leafHash(Array("b".utf8)), rootHash: try log.rootHash(size: 2))
/// ```
///
/// Thread safety: not thread-safe; the owner serializes calls (the ledger does). Several
/// `MerkleLog` objects, in one or several processes, may share one LMDB store: each append
/// re-reads the committed size inside its write transaction.
public final class MerkleLog<Store: LogStore> {
    /// Entries larger than this (64 MiB) are refused: blobs are chunked above this layer.
    public static var maxEntrySize: Int { 64 << 20 }

    /// The underlying store.
    public let store: Store
    private var frontier: Frontier

    /// Opens the log held by `store` (reads at most 64 hashes; no replay).
    public init(store: Store) throws {
        self.store = store
        self.frontier = try store.read { try Frontier(reading: $0) }
    }

    /// The number of entries, as of the last append or ``refresh()`` by this object.
    public var size: UInt64 { frontier.size }

    /// The root hash at ``size``.
    public var rootHash: Hash { frontier.rootHash }

    /// Re-reads the committed size, e.g. after another process appended.
    public func refresh() throws {
        let committed = try store.read { try $0.treeSize }
        if committed != frontier.size { frontier = try store.read { try Frontier(reading: $0) } }
    }

    /// Appends `entries` in one atomic write. Returns the index of the first.
    @discardableResult
    public func append(_ entries: [[UInt8]]) throws -> UInt64 {
        try append(count: entries.count) { i, body in try entries[i].withUnsafeBytes(body) }
    }

    /// Appends `count` entries produced by `entry` in one atomic write, without collecting
    /// them first. `entry(i, body)` must call `body` once with the bytes of entry `i`.
    /// Returns the index of the first.
    ///
    /// `extra` runs inside the same transaction after the entries are stored (it receives the
    /// writer, the first index and the leaf hashes), so higher layers can commit derived state
    /// atomically with the log.
    @discardableResult
    public func append(
        count: Int,
        entry: (Int, (UnsafeRawBufferPointer) throws -> Void) throws -> Void,
        extra: ((Store.Writer, UInt64, [Hash]) throws -> Void)? = nil
    ) throws -> UInt64 {
        try append(count: count, entry: entry, precomputedLeaves: nil, extra: extra)
    }

    private func append(
        count: Int,
        entry: (Int, (UnsafeRawBufferPointer) throws -> Void) throws -> Void,
        precomputedLeaves: UnsafeBufferPointer<Hash>?,
        extra: ((Store.Writer, UInt64, [Hash]) throws -> Void)? = nil
    ) throws -> UInt64 {
        guard count > 0 else { return frontier.size }
        let cached = frontier
        let (first, updated) = try store.write { writer -> (UInt64, Frontier) in
            var working = cached
            if try writer.treeSize != working.size { working = try Frontier(reading: writer) }
            let first = working.size
            var leaves: [Hash] = []
            if extra != nil { leaves.reserveCapacity(count) }
            for i in 0..<count {
                try entry(i) { bytes in
                    guard bytes.count <= Self.maxEntrySize else {
                        throw MerkleLogError(.entryTooLarge, "entry of \(bytes.count) bytes exceeds \(Self.maxEntrySize)")
                    }
                    let index = working.size
                    try writer.appendEntry(bytes, at: index)
                    let leaf = precomputedLeaves?[i] ?? SHA256.leafHash(bytes)
                    try working.append(leaf: leaf, writer: writer)
                    if extra != nil { leaves.append(leaf) }
                }
            }
            guard working.size == first + UInt64(count) else {
                throw MerkleLogError.malformed("entry callback produced \(working.size - first) entries, expected \(count)")
            }
            try working.flushPendingTile(writer: writer)
            try extra?(writer, first, leaves)
            try writer.setTreeSize(working.size)
            return (first, working)
        }
        frontier = updated
        return first
    }

    /// Appends a batch packed back to back in `packed`, entry `i` ending at `ends[i]`, in one
    /// atomic write. Leaf hashes are computed before the transaction, on all cores for large
    /// batches, so the write transaction is held only for the stores. Returns the first index.
    @discardableResult
    public func append(
        packed: UnsafeRawBufferPointer, ends: UnsafeBufferPointer<Int>,
        extra: ((Store.Writer, UInt64, [Hash]) throws -> Void)? = nil
    ) throws -> UInt64 {
        let count = ends.count
        guard count > 0 else { return frontier.size }
        var previous = 0
        for end in ends {
            guard end >= previous, end <= packed.count else {
                throw MerkleLogError.malformed("entry boundaries are not increasing within the buffer")
            }
            guard end - previous <= Self.maxEntrySize else {
                throw MerkleLogError(.entryTooLarge, "entry of \(end - previous) bytes exceeds \(Self.maxEntrySize)")
            }
            previous = end
        }
        let leaves = Self.leafHashes(packed: packed, ends: ends)
        return try leaves.withUnsafeBufferPointer { leaves in
            try append(count: count, entry: { i, body in
                let start = i == 0 ? 0 : ends[i - 1]
                try body(UnsafeRawBufferPointer(rebasing: packed[start..<ends[i]]))
            }, precomputedLeaves: leaves, extra: extra)
        }
    }

    /// RFC 6962 leaf hashes of packed entries, split across the available cores.
    static func leafHashes(packed: UnsafeRawBufferPointer, ends: UnsafeBufferPointer<Int>) -> [Hash] {
        let count = ends.count
        let workers = count >= 2048 ? min(ProcessInfo.processInfo.activeProcessorCount, 8) : 1
        return [Hash](unsafeUninitializedCapacity: count) { out, initialized in
            let chunk = (count + workers - 1) / workers
            let shared = HashingJob(packed: packed, ends: ends, out: out.baseAddress!)
            DispatchQueue.concurrentPerform(iterations: workers) { w in
                let lower = w * chunk
                let upper = min(count, lower + chunk)
                guard lower < upper else { return }
                for i in lower..<upper {
                    let start = i == 0 ? 0 : shared.ends[i - 1]
                    (shared.out + i).initialize(
                        to: SHA256.leafHash(UnsafeRawBufferPointer(rebasing: shared.packed[start..<shared.ends[i]])))
                }
            }
            initialized = count
        }
    }

    /// Runs `body` on a consistent snapshot of the committed log.
    public func read<R>(_ body: (Store.Reader) throws -> R) throws -> R {
        try store.read(body)
    }

    /// The root hash of the first `size` entries.
    public func rootHash(size: UInt64) throws -> Hash {
        if size == frontier.size { return frontier.rootHash }
        return try store.read { try $0.rootHash(size: size) }
    }

    /// Inclusion proof of entry `index` in the tree of `size` entries.
    public func inclusionProof(index: UInt64, size: UInt64) throws -> InclusionProof {
        try store.read { InclusionProof(leafIndex: index, treeSize: size, hashes: try $0.inclusionPath(index: index, size: size)) }
    }

    /// Consistency proof from `oldSize` to `newSize`.
    public func consistencyProof(oldSize: UInt64, newSize: UInt64) throws -> ConsistencyProof {
        try store.read {
            ConsistencyProof(oldSize: oldSize, newSize: newSize, hashes: try $0.consistencyPath(oldSize: oldSize, newSize: newSize))
        }
    }

    /// A copy of entry `index`.
    public func entry(at index: UInt64) throws -> [UInt8] {
        try store.read { reader in
            guard index < (try reader.treeSize) else {
                throw MerkleLogError.outOfRange("index \(index) not below tree size \(try reader.treeSize)")
            }
            return try reader.withEntry(at: index) { Array($0) }
        }
    }

    /// The stored leaf hash of entry `index`.
    public func leafHash(at index: UInt64) throws -> Hash {
        try store.read { reader in
            guard index < (try reader.treeSize) else {
                throw MerkleLogError.outOfRange("index \(index) not below tree size \(try reader.treeSize)")
            }
            return try reader.storedHash(level: 0, index: index)
        }
    }
}

/// The buffers one parallel hashing pass shares between workers.
struct HashingJob: @unchecked Sendable {
    // Sendable: the inputs are only read, and each worker writes a disjoint range of `out`;
    // all workers finish before the caller returns.
    let packed: UnsafeRawBufferPointer
    let ends: UnsafeBufferPointer<Int>
    let out: UnsafeMutablePointer<Hash>
}
