public import LedgerCrypto

/// A consistent read view of a log's storage: the entries and the hash of every complete
/// subtree, as committed at one moment.
///
/// A complete subtree at `level` L and `index` k covers leaves `k·2^L ..< (k+1)·2^L`; level 0
/// holds leaf hashes. Only complete subtrees are stored; hashes of the ragged right edge are
/// computed on demand from at most log2(n) stored ones.
public protocol LogStorageReader {
    /// The number of committed entries in this view.
    var treeSize: UInt64 { get throws }
    /// The stored hash of the complete subtree (`level`, `index`).
    /// - Throws: ``MerkleLogError`` `.missingData` when the store lacks it.
    func storedHash(level: Int, index: UInt64) throws -> Hash
    /// Calls `body` with the bytes of entry `index`; the buffer is valid only inside `body`.
    func withEntry<R>(at index: UInt64, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R
    /// A cache of right-edge hashes shared by readers of this store, if it keeps one.
    var rightEdgeCache: RightEdgeCache? { get }
    /// The height of the bottom tiles this store keeps, or 0 for none. A tile holds all the
    /// hashes at levels 0 ..< height of one complete subtree of 2^height leaves.
    var tileHeight: Int { get }
}

extension LogStorageReader {
    public var rightEdgeCache: RightEdgeCache? { nil }
    public var tileHeight: Int { 0 }
}

/// A view inside a write transaction. Appends must come in increasing index order per level.
public protocol LogStorageWriter: LogStorageReader {
    /// Stores entry `index`.
    func appendEntry(_ entry: UnsafeRawBufferPointer, at index: UInt64) throws
    /// Stores the hash of the complete subtree (`level`, `index`).
    func appendHash(_ hash: Hash, level: Int, index: UInt64) throws
    /// Records the new tree size; called once per batch, in the same transaction as the data,
    /// so a size is never visible without the hashes that prove it.
    func setTreeSize(_ size: UInt64) throws
    /// Stores the tile of block `index`: its hashes level by level, leaves first.
    func appendTile(_ hashes: UnsafeBufferPointer<Hash>, index: UInt64) throws
    /// Stores the hashes so far of the incomplete block `index` (same layout as a tile),
    /// replacing the previous ones; called once per batch when the size is not a multiple
    /// of the tile width.
    func setPendingTile(_ hashes: UnsafeBufferPointer<Hash>, index: UInt64) throws
    /// Removes the incomplete block's hashes; called once per batch when the size is a
    /// multiple of the tile width.
    func clearPendingTile() throws
}

extension LogStorageWriter {
    public func appendTile(_ hashes: UnsafeBufferPointer<Hash>, index: UInt64) throws {}
    public func setPendingTile(_ hashes: UnsafeBufferPointer<Hash>, index: UInt64) throws {}
    public func clearPendingTile() throws {}
}

/// A place that holds one log and lends read and write views of it.
public protocol LogStore: AnyObject {
    associatedtype Reader: LogStorageReader
    associatedtype Writer: LogStorageWriter
    /// Runs `body` with a consistent view of the last committed state.
    func read<R>(_ body: (Reader) throws -> R) throws -> R
    /// Runs `body` in one atomic write; nothing is visible to readers until it returns, and
    /// nothing is kept when it throws. `body` may run more than once (e.g. when storage grows).
    func write<R>(_ body: (Writer) throws -> R) throws -> R
}

/// A log store in memory, for tests and for clients replaying fetched entries.
///
/// Thread safety: not thread-safe; use from one thread or guard it.
public final class MemoryLogStore: LogStore {
    final class State {
        var entries: [[UInt8]] = []
        var levels: [[Hash]] = []
        var size: UInt64 = 0
    }

    private var committed = State()

    /// An empty store.
    public init() {}

    public struct Reader: LogStorageReader, LogStorageWriter {
        let state: State

        public var treeSize: UInt64 { state.size }

        public func storedHash(level: Int, index: UInt64) throws -> Hash {
            guard level < state.levels.count, index < UInt64(state.levels[level].count) else {
                throw MerkleLogError.missing("no stored hash at level \(level) index \(index)")
            }
            return state.levels[level][Int(index)]
        }

        public func withEntry<R>(at index: UInt64, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
            guard index < UInt64(state.entries.count) else { throw MerkleLogError.missing("no entry \(index)") }
            return try state.entries[Int(index)].withUnsafeBytes(body)
        }

        public func appendEntry(_ entry: UnsafeRawBufferPointer, at index: UInt64) throws {
            precondition(index == UInt64(state.entries.count), "entries must be appended in order")
            state.entries.append(Array(entry))
        }

        public func appendHash(_ hash: Hash, level: Int, index: UInt64) throws {
            while state.levels.count <= level { state.levels.append([]) }
            precondition(index == UInt64(state.levels[level].count), "hashes must be appended in order")
            state.levels[level].append(hash)
        }

        public func setTreeSize(_ size: UInt64) throws { state.size = size }
    }
    public typealias Writer = Reader

    public func read<R>(_ body: (Reader) throws -> R) throws -> R {
        try body(Reader(state: committed))
    }

    public func write<R>(_ body: (Reader) throws -> R) throws -> R {
        // Copy-on-write of the arrays gives all-or-nothing semantics.
        let draft = State()
        draft.entries = committed.entries
        draft.levels = committed.levels
        draft.size = committed.size
        let result = try body(Reader(state: draft))
        committed = draft
        return result
    }
}
