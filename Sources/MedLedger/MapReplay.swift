public import LedgerCrypto
import SparseMerkle

/// Recomputes key-map roots from log entries alone, as an auditor would.
///
/// The map is derived from the log (DESIGN.md section 2): replaying entries 0..<n in order, a
/// set entry with key K maps K to `u64 BE index || leaf hash`, a delete removes K. Anyone
/// holding the entries can so recompute the map root of every checkpoint, and catch an
/// operator who dropped or redirected a key.
///
/// For example:
/// ```swift
/// var replay = MapReplay()
/// for entry in fetchedEntries { try replay.add(entry) }
/// let root = try replay.root()          // compare with the checkpoint's map line
/// ```
///
/// Thread safety: a value owned by one thread.
public struct MapReplay {
    private let store = MemorySparseStore()
    private var pending: [SparseChange] = []
    private var lastVersion: UInt64 = 0
    private var currentRoot = SparseHash.empty
    /// Number of entries replayed.
    public private(set) var size: UInt64 = 0

    public init() {}

    /// Replays the next entry (a ledger envelope).
    /// - Throws: ``LedgerError`` `.invalidEntry` for bytes that are not a valid envelope.
    public mutating func add(_ entry: [UInt8]) throws {
        let parsed = try LedgerEntry(decoding: entry)
        if !parsed.key.isEmpty {
            let k = SHA256.hash(utf8: parsed.key)
            pending.append(SparseChange(keyHash: k, value: parsed.operation == .set
                ? Ledger.mapValue(index: size, leafHash: SHA256.leafHash(entry)) : nil))
        }
        size += 1
    }

    /// The map root after the entries replayed so far.
    public mutating func root() throws -> Hash {
        if size == lastVersion { return currentRoot }
        currentRoot = try SparseMerkleTree.apply(pending, version: size, writer: store).hash
        pending.removeAll()
        lastVersion = size
        return currentRoot
    }

    /// The map roots after each size in `sizes`, replaying `entries` from index 0.
    public static func roots(entries: some Sequence<[UInt8]>, at sizes: [UInt64]) throws -> [UInt64: Hash] {
        let wanted = Set(sizes)
        var replay = MapReplay()
        var out: [UInt64: Hash] = [:]
        if wanted.contains(0) { out[0] = SparseHash.empty }
        for entry in entries {
            try replay.add(entry)
            if wanted.contains(replay.size) { out[replay.size] = try replay.root() }
            if out.count == wanted.count { break }
        }
        return out
    }
}
