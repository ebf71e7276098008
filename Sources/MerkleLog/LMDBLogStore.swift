public import LMDBKit
public import LedgerCrypto

/// The log's storage in an LMDB environment.
///
/// Layout (see `docs/FORMATS.md`): database `log.entries` maps the 8-byte big-endian index to
/// the entry bytes; databases `log.h00` … `log.h63` map the 8-byte big-endian node index to the
/// 32-byte hash of the complete subtree at that level; `log.meta` holds `size` (8-byte
/// big-endian). Every key is written in increasing order with `MDB_APPEND`, so pages fill
/// completely and each batch writes a sequential run per database. Complete subtrees are
/// written once and never rewritten: the store grows by about 2 hashes per entry.
///
/// Thread safety: shares the environment's guarantees; readers run in parallel with the writer.
public final class LMDBLogStore: LogStore, @unchecked Sendable {
    // Sendable: immutable after init; the environment serializes writers.
    /// The environment holding the log.
    public let environment: Environment
    let entries: Database
    let meta: Database
    let levels: [Database]
    let tiles: Database
    /// Height of the bottom tiles (32 leaves: 62 hashes, 1,984 bytes, two records a page).
    public static let tileHeight = 5
    static let tileHashCount = (2 << tileHeight) - 2
    /// Key in `log.meta` of the incomplete block's hashes: 8-byte block index, then a tile.
    static let pendingTileKey = "tile.pending"
    static let levelCount = 64
    /// The `log.entries` database, for integrity checks.
    public var entriesDatabase: Database { entries }
    /// The `log.meta` database (`size`, `tile.pending`).
    public var metaDatabase: Database { meta }
    /// The `log.tiles` database.
    public var tilesDatabase: Database { tiles }
    /// `log.h00` … `log.h63`, by level.
    public var levelDatabases: [Database] { levels }
    /// Upper levels kept in memory (see ``UpperLevelCache``).
    public let upperLevels: UpperLevelCache
    /// Right-edge hashes of the latest size (see ``RightEdgeCache``).
    public let rightEdge = RightEdgeCache()

    /// Opens the log's databases in `environment`, creating them when the environment is writable.
    /// - Throws: ``MerkleLogError`` `.missingData` when a read-only environment holds no log.
    public init(environment: Environment, cacheFromLevel: Int = LMDBLogStore.tileHeight) throws {
        self.environment = environment
        self.upperLevels = UpperLevelCache(firstLevel: cacheFromLevel)
        let create = !environment.isReadOnly
        let handles: (Database, Database, Database, [Database])? = try {
            let open = { (txn: borrowing Transaction) throws -> (Database, Database, Database, [Database])? in
                guard let entries = try txn.openDatabase("log.entries", create: create),
                      let meta = try txn.openDatabase("log.meta", create: create),
                      let tiles = try txn.openDatabase("log.tiles", create: create) else { return nil }
                var levels: [Database] = []
                for level in 0..<Self.levelCount {
                    let name = level < 10 ? "log.h0\(level)" : "log.h\(level)"
                    guard let db = try txn.openDatabase(name, create: create) else { return nil }
                    levels.append(db)
                }
                return (entries, meta, tiles, levels)
            }
            return create ? try environment.write(open) : try environment.read(open)
        }()
        guard let handles else { throw MerkleLogError.missing("no log in \(environment.path)") }
        (entries, meta, tiles, levels) = handles
    }

    public struct Reader: LogStorageWriter {
        /// The transaction, for layers that commit derived state with the log (valid only
        /// inside the closure that received this reader).
        public let view: TransactionView
        let store: LMDBLogStore
        /// The committed size when this view began (read once; writers update their copy).
        let size: UInt64
        /// The last tile read in this transaction: a proof reads its five bottom levels from
        /// one tile, so one lookup serves them all. Valid only while the transaction lives.
        let lastTile: TileMemo

        init(view: TransactionView, store: LMDBLogStore, memo: TileMemo) throws {
            self.view = view
            self.store = store
            self.lastTile = memo
            let stored = try view.withValue(store.meta, key: "size") { UInt64(bigEndianBytes: $0) }
            switch stored {
            case .none: size = 0
            case .some(.none): throw MerkleLogError.missing("stored tree size is not 8 bytes")
            case .some(.some(let value)): size = value
            }
        }

        public var treeSize: UInt64 { size }

        public var rightEdgeCache: RightEdgeCache? { store.rightEdge }

        public func storedHash(level: Int, index: UInt64) throws -> Hash {
            guard level < LMDBLogStore.levelCount else { throw MerkleLogError.missing("level \(level)") }
            if level >= store.upperLevels.firstLevel {
                if let hit = store.upperLevels.hash(level: level, index: index) { return hit }
                if index < size >> UInt64(level) {
                    try fillUpperLevel(level)
                    if let hit = store.upperLevels.hash(level: level, index: index) { return hit }
                }
            }
            let height = LMDBLogStore.tileHeight
            if level < height {
                // Bottom levels live in tiles: one read of a block's tile serves a whole path.
                let offset = Frontier.tileOffset(level: level, height: height) + Int(index & ((1 << UInt64(height - level)) - 1))
                let block = index >> UInt64(height - level)
                guard index < size >> UInt64(level) else {
                    throw MerkleLogError.missing("no stored hash at level \(level) index \(index)")
                }
                if lastTile.block != block || lastTile.bytes == nil {
                    let complete = block < size >> UInt64(height)
                    let tileBytes = 32 * LMDBLogStore.tileHashCount
                    let parse = { (raw: UnsafeRawBufferPointer) -> UnsafeRawPointer? in
                        if complete { return raw.count == tileBytes ? raw.baseAddress : nil }
                        // The pending tile is prefixed with its block index.
                        guard raw.count == 8 + tileBytes,
                              UInt64(bigEndianBytes: UnsafeRawBufferPointer(rebasing: raw[0..<8])) == block else { return nil }
                        return raw.baseAddress! + 8
                    }
                    let found = complete
                        ? try view.withValue(store.tiles, key: block, parse)
                        : try view.withValue(store.meta, key: LMDBLogStore.pendingTileKey, parse)
                    guard let found, let pointer = found else {
                        throw MerkleLogError.missing("no stored tile for block \(block)")
                    }
                    lastTile.block = block
                    lastTile.bytes = pointer
                }
                return Hash(UnsafeRawBufferPointer(start: lastTile.bytes! + offset * 32, count: 32))!
            }
            let hash = try view.withValue(store.levels[level], key: index) { Hash($0) }
            guard let found = hash, let value = found else {
                throw MerkleLogError.missing("no stored hash at level \(level) index \(index)")
            }
            return value
        }

        /// Loads the committed hashes of `level` missing from the cache, with one cursor scan.
        private func fillUpperLevel(_ level: Int) throws {
            let from = store.upperLevels.count(level: level)
            let upTo = size >> UInt64(level)
            guard from < upTo else { return }
            var loaded: [Hash] = []
            loaded.reserveCapacity(Int(upTo - from))
            try view.withCursor(store.levels[level]) { cursor in
                var more = try cursor.seek(atOrAfter: from)
                var expected = from
                while more && expected < upTo {
                    let ok = cursor.withCurrent { key, value -> Bool in
                        guard UInt64(bigEndianBytes: key) == expected, let h = Hash(value) else { return false }
                        loaded.append(h)
                        return true
                    }
                    guard ok else { throw MerkleLogError.missing("stored hashes at level \(level) are not contiguous") }
                    expected += 1
                    more = try cursor.next()
                }
            }
            store.upperLevels.extend(level: level, from: from, with: loaded)
        }

        public func withEntry<R>(at index: UInt64, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
            guard let result = try view.withValue(store.entries, key: index, body) else {
                throw MerkleLogError.missing("no entry \(index)")
            }
            return result
        }

        public func appendEntry(_ entry: UnsafeRawBufferPointer, at index: UInt64) throws {
            try view.put(store.entries, key: index, value: entry, flags: .append)
        }

        public func appendHash(_ hash: Hash, level: Int, index: UInt64) throws {
            try hash.withUnsafeBytes { bytes in
                try view.put(store.levels[level], key: index, value: bytes, flags: .append)
            }
        }

        public var tileHeight: Int { LMDBLogStore.tileHeight }

        public func appendTile(_ hashes: UnsafeBufferPointer<Hash>, index: UInt64) throws {
            try view.put(store.tiles, key: index, value: UnsafeRawBufferPointer(hashes), flags: .append)
        }

        public func setPendingTile(_ hashes: UnsafeBufferPointer<Hash>, index: UInt64) throws {
            try view.put(store.meta, key: LMDBLogStore.pendingTileKey, reservingCapacity: 8 + 32 * hashes.count) { out in
                out.storeBytes(of: index.bigEndian, toByteOffset: 0, as: UInt64.self)
                UnsafeMutableRawBufferPointer(rebasing: out[8...]).copyMemory(from: UnsafeRawBufferPointer(hashes))
            }
        }

        public func clearPendingTile() throws {
            _ = try view.delete(store.meta, key: LMDBLogStore.pendingTileKey)
        }

        public func setTreeSize(_ size: UInt64) throws {
            try view.put(store.meta, key: "size", value: size)
        }
    }
    public typealias Writer = Reader

    public func read<R>(_ body: (Reader) throws -> R) throws -> R {
        let memo = TileMemo()
        return try environment.read { txn in
            memo.reset()
            return try body(try Reader(view: txn.unsafeView, store: self, memo: memo))
        }
    }

    public func write<R>(_ body: (Reader) throws -> R) throws -> R {
        let memo = TileMemo()
        return try environment.write { txn in
            memo.reset()
            return try body(try Reader(view: txn.unsafeView, store: self, memo: memo))
        }
    }

    /// Bytes of the data file used by the log's databases.
    public func storedBytes() throws -> Int {
        try environment.read { txn in
            var total = try txn.unsafeView.storedBytes(entries) + txn.unsafeView.storedBytes(tiles)
            for db in levels { total += try txn.unsafeView.storedBytes(db) }
            return total
        }
    }
}

/// Remembers where the last tile read lives in the memory map (valid for one transaction).
final class TileMemo {
    var block: UInt64 = .max
    var bytes: UnsafeRawPointer?
    func reset() {
        block = .max
        bytes = nil
    }
}
