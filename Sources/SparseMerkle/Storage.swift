import Foundation
public import LMDBKit
public import LedgerCrypto

/// An error from the sparse tree.
public struct SparseMerkleError: Error, Hashable, CustomStringConvertible, Sendable {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let name: String
        private init(_ name: String) { self.name = name }
        public var description: String { name }
        /// No root is retained for that version (never written, or pruned).
        public static let unknownVersion = Code("unknownVersion")
        /// A page the tree points to is missing or unreadable: the store is damaged.
        public static let missingData = Code("missingData")
        /// A proof or its encoding is malformed.
        public static let malformed = Code("malformed")
        /// A proof does not verify.
        public static let verificationFailed = Code("verificationFailed")
        /// Versions must increase.
        public static let versionOrder = Code("versionOrder")
    }

    public let code: Code
    public let message: String
    /// Source location that raised the error, for diagnostics.
    public let location: String

    public init(_ code: Code, _ message: String, file: String = #fileID, line: Int = #line) {
        self.code = code
        self.message = message
        self.location = "\(file):\(line)"
    }

    public var description: String { "\(code): \(message)" }
    public static func == (lhs: SparseMerkleError, rhs: SparseMerkleError) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(code) }
}

/// A stored page lent to a reader: its record, the full record a delta record rests on, and,
/// when the store has them cached, the page's interior node hashes (heap positions 1...15, the
/// page root at 1). Valid only inside the closure it is lent to.
public struct LentPage {
    /// The page's record (FORMATS.md section 6.3), or the cache's copy of the page merged
    /// into one full record.
    public let bytes: UnsafeRawBufferPointer
    /// For a delta record, its base: the full record at the same position it names.
    public let base: UnsafeRawBufferPointer?
    let tree: UnsafePointer<Hash>?
    /// For a merged copy, the stored record's base version (nil for a full record) and
    /// changed slots.
    let merged: (baseVersion: UInt64?, changed: UInt16)?
    /// For a merged copy from the cache, its slot table's offsets (parsed when it was cached).
    let offsets: InlineArray<16, UInt32>?

    init(bytes: UnsafeRawBufferPointer, base: UnsafeRawBufferPointer?, tree: UnsafePointer<Hash>?,
         merged: (baseVersion: UInt64?, changed: UInt16)? = nil, offsets: InlineArray<16, UInt32>? = nil) {
        self.bytes = bytes
        self.base = base
        self.tree = tree
        self.merged = merged
        self.offsets = offsets
    }
}

/// Read access to a sparse tree's stored pages and roots, at one consistent moment.
public protocol SparseReader {
    /// Lends page `id`, whose hash its parent records as `hash`, to `body`.
    func withPage<R>(_ id: PageID, hash: Hash, _ body: (LentPage) throws -> R) throws -> R
    /// Lends page `id` to a `body` that reads it and returns without reading another page:
    /// the store may lend a cached page in place, holding a lock until `body` returns.
    func peekPage<R>(_ id: PageID, hash: Hash, _ body: (LentPage) throws -> R) throws -> R
    /// The root node of `version`, or `nil` when not retained.
    func root(version: UInt64) throws -> SparseNode?
    /// The newest version, or `nil` for a tree never written.
    func latestVersion() throws -> UInt64?
}

extension SparseReader {
    public func peekPage<R>(_ id: PageID, hash: Hash, _ body: (LentPage) throws -> R) throws -> R {
        try withPage(id, hash: hash, body)
    }
}

/// A page record a batch wrote.
public struct NewPage {
    public let id: PageID
    /// The record to store.
    public let bytes: UnsafeRawBufferPointer
    /// For pages shallow enough to cache: the page as one full record (`bytes` itself when
    /// the record is full), its interior node hashes, and the record's base version and
    /// changed slots.
    let merged: UnsafeRawBufferPointer?
    let tree: UnsafePointer<Hash>?
    let baseVersion: UInt64?
    let changed: UInt16
}

/// The pages one apply wrote, with the memory they live in: a store may keep the batch after
/// ``SparseWriter/putPages(_:)`` returns (the LMDB store does, until the write commits and it
/// caches the pages).
public final class NewPages: @unchecked Sendable {
    // Sendable: immutable after init.
    /// The outputs in key-space order; each holds its pages per depth in prefix order.
    private let owners: [SparseMerkleTree.Output]
    /// The version the pages belong to and the root hash it has.
    let version: UInt64
    let rootHash: Hash

    init(owners: [SparseMerkleTree.Output], version: UInt64, rootHash: Hash) {
        self.owners = owners
        self.version = version
        self.rootHash = rootHash
    }

    deinit { SparseMerkleTree.OutputPool.shared.give(owners) }

    /// Number of pages.
    public var count: Int { owners.reduce(0) { $0 + $1.pageCount } }

    /// Per output, its pages at the cached levels: those that enter the cache once the
    /// batch commits (each has its merged record).
    private var cachedLevels: [ArraySlice<[NewPage]>] { owners.map { $0.newPages.prefix(HotPageCache.levels) } }

    /// How many pages enter the cache once the batch commits.
    var cachedCount: Int { cachedLevels.joined().reduce(0) { $0 + $1.count } }

    /// The pages that enter the cache once the batch commits.
    func cachedPages() -> [NewPage] { Array(cachedLevels.joined().joined()) }

    /// Calls `body` with each page in key order (``PageID`` order: by depth, then prefix).
    public func forEach(_ body: (NewPage) throws -> Void) rethrows {
        let levels = owners.reduce(0) { max($0, $1.newPages.count) }
        for level in 0..<levels {
            for owner in owners where level < owner.newPages.count {
                for page in owner.newPages[level] { try body(page) }
            }
        }
    }
}

/// Write access, inside the same atomic write as the log append it belongs to.
public protocol SparseWriter: SparseReader {
    /// Stores new page records, all of one version, in the order ``NewPages/forEach(_:)`` gives.
    func putPages(_ batch: NewPages) throws
    func putRoot(_ root: SparseNode, version: UInt64) throws
    /// Records that the `replaced` page records (sorted by ``PageID``) are not used by
    /// `version` or any later one.
    func markStale(_ replaced: [PageID], at version: UInt64) throws
    /// Deletes what versions before `version` alone need; returns page records deleted.
    /// - Throws: ``SparseMerkleError`` `.versionOrder` when `version` is past the newest
    ///   version (pruning would keep no version at all).
    func prune(before version: UInt64) throws -> Int
    /// Called once before an apply reads anything (the LMDB store checks its cache here).
    func beginApply() throws
}

extension SparseWriter {
    public func beginApply() throws {}
}

/// A sparse tree held in memory, for tests and for auditors replaying a log.
///
/// Thread safety: not thread-safe.
public final class MemorySparseStore: SparseWriter {
    var pages: [PageID: [UInt8]] = [:]
    var roots: [UInt64: SparseNode] = [:]
    var stale: [(version: UInt64, id: PageID)] = []

    public init() {}

    public func withPage<R>(_ id: PageID, hash: Hash, _ body: (LentPage) throws -> R) throws -> R {
        guard let record = pages[id] else { throw SparseMerkleError(.missingData, "no page at depth \(id.depth) of version \(id.version)") }
        return try record.withUnsafeBytes { bytes in
            switch PageRecord.baseVersion(of: bytes) {
            case .none:
                throw SparseMerkleTree.damagedPage(id)
            case .some(nil):
                return try body(LentPage(bytes: bytes, base: nil, tree: nil))
            case .some(let baseVersion?):
                guard let base = pages[PageID(version: baseVersion, depth: id.depth, prefix: id.prefix)] else {
                    throw SparseMerkleError(.missingData, "no base page for the page at depth \(id.depth) of version \(id.version)")
                }
                return try base.withUnsafeBytes { try body(LentPage(bytes: bytes, base: $0, tree: nil)) }
            }
        }
    }

    public func root(version: UInt64) throws -> SparseNode? { roots[version] }
    public func latestVersion() throws -> UInt64? { roots.keys.max() }

    public func putPages(_ batch: NewPages) throws {
        batch.forEach { page in pages[page.id] = Array(page.bytes) }
    }

    public func putRoot(_ root: SparseNode, version: UInt64) throws { roots[version] = root }

    public func markStale(_ replaced: [PageID], at version: UInt64) throws {
        stale += replaced.map { (version, $0) }
    }

    public func prune(before version: UInt64) throws -> Int {
        guard let latest = roots.keys.max() else { return 0 }
        try SparseMerkleTree.checkPrunePoint(version, latest: latest)
        // As the LMDB store does: what the oldest kept version replaced goes too.
        let keptFrom = roots.keys.filter { $0 >= version }.min() ?? version
        var deleted = 0
        stale.removeAll { entry in
            guard entry.version <= keptFrom else { return false }
            if pages.removeValue(forKey: entry.id) != nil { deleted += 1 }
            return true
        }
        for v in roots.keys where v < version { roots[v] = nil }
        return deleted
    }

    /// Number of stored page records.
    public var pageCount: Int { pages.count }
}

/// A sparse tree's storage in LMDB: `smt.pages` (``PageID/storageKey`` → page record),
/// `smt.roots` (version → root node), `smt.stale` (replacing version → the keys of the page
/// records it stopped using, each after a length byte).
/// Every database is written in increasing key order with `MDB_APPEND` (a batch's pages
/// share its version prefix).
///
/// Thread safety: immutable handles; use one ``LMDBSparseStore/View`` per transaction.
public final class LMDBSparseStore: SparseSnapshotSource, @unchecked Sendable {
    // Sendable: immutable after init, but for `staged`, which `stagingLock` guards.
    public let environment: Environment
    let pages: Database
    let roots: Database
    let stale: Database
    /// `generation` (u64, absent: 0): how many times the tree was cleared, so that a cache
    /// filled before a rebuild (in this process or another) is never used after it.
    let meta: Database?
    /// The upper levels' pages, and the interior hashes of the level below them.
    let hotPages = HotPageCache()

    /// The `smt.pages` database, for diagnostics.
    public var pagesDatabase: Database { pages }
    /// The `smt.roots` database (version → root), for tools that list versions.
    public var rootsDatabase: Database { roots }
    /// The `smt.stale` database (replacing version → replaced page keys), for integrity checks.
    public var staleDatabase: Database { stale }

    /// Opens (creating when writable) the tree's databases.
    public init(environment: Environment) throws {
        self.environment = environment
        let create = !environment.isReadOnly
        let open = { (txn: borrowing Transaction) throws -> (Database, Database, Database, Database?)? in
            guard let p = try txn.openDatabase("smt.pages", create: create),
                  let r = try txn.openDatabase("smt.roots", create: create),
                  let s = try txn.openDatabase("smt.stale", create: create) else { return nil }
            return (p, r, s, try txn.openDatabase("smt.meta", create: create))
        }
        guard let handles = create ? try environment.write(open) : try environment.read(open) else {
            throw SparseMerkleError(.missingData, "no sparse tree in \(environment.path)")
        }
        (pages, roots, stale, meta) = handles
        // Everything stored now is committed: misses may fill the cache up to this version.
        let (generation, latest) = try read { view in (try view.storedGeneration(), try view.latestVersion()) }
        hotPages.reset(generation: generation, committedVersion: latest ?? 0)
    }

    /// The `smt.meta` database (generation), for integrity checks; nil in a read-only open
    /// of a tree written before it existed.
    public var metaDatabase: Database? { meta }

    /// A reader or writer over one transaction; valid only inside that transaction's closure.
    public struct View: SparseWriter {
        public let txn: TransactionView
        let store: LMDBSparseStore
        /// The cache's epoch when the view began: a view begun before the cache was reset
        /// (its snapshot may predate a rebuild) adds nothing to it.
        let cacheEpoch: UInt64

        public init(_ txn: TransactionView, store: LMDBSparseStore) {
            self.txn = txn
            self.store = store
            cacheEpoch = store.hotPages.epoch
        }

        /// How many times the tree was cleared (0 when never).
        func storedGeneration() throws -> UInt64 {
            guard let meta = store.meta else { return 0 }
            return try txn.withValue(meta, key: "generation") { UInt64(bigEndianBytes: $0) ?? 0 } ?? 0
        }

        /// Runs a read; if it finds pages missing because another process rebuilt the tree
        /// since this store's cache was filled, empties the cache and runs it once more.
        func healingStaleCache<R>(_ body: () throws -> R) throws -> R {
            do {
                return try body()
            } catch let error as SparseMerkleError where error.code == .missingData {
                guard try resetCacheIfRebuilt() else { throw error }
                return try body()
            }
        }

        /// A writer starts from a cache that reflects the stored tree: after a clear (a
        /// rebuild, possibly by another process) the cache is emptied.
        public func beginApply() throws {
            // Pages still staged here were not published: their transaction did not commit
            // (or is being retried), so a fill of them must not outlive this point.
            store.discardStaged()
            try resetCacheIfRebuilt()
        }

        /// Empties the cache when the stored generation is not the one it was filled at;
        /// returns whether it did.
        @discardableResult
        private func resetCacheIfRebuilt() throws -> Bool {
            let generation = try storedGeneration()
            guard generation != store.hotPages.generation else { return false }
            store.hotPages.reset(generation: generation, committedVersion: try latestVersion() ?? 0)
            return true
        }

        public func withPage<R>(_ id: PageID, hash: Hash, _ body: (LentPage) throws -> R) throws -> R {
            guard id.depth <= HotPageCache.depth else {
                return try withStored(id) { record, base in try body(LentPage(bytes: record, base: base, tree: nil)) }
            }
            return try withUnsafeTemporaryAllocation(of: Hash.self, capacity: 16) { treeBuffer in
                try withUnsafeTemporaryAllocation(byteCount: HotPageCache.maxRecord, alignment: 8) { pageBuffer in
                    let tree = treeBuffer.baseAddress!
                    // Checking the hash the parent committed to is a second guard on top of the
                    // version: the cache only ever holds committed pages (see `publish`).
                    if let hit = store.hotPages.lookup(id, hash: hash, tree: tree, page: pageBuffer) {
                        let merged = UnsafeRawBufferPointer(rebasing: pageBuffer[0..<hit.length])
                        return try body(LentPage(bytes: merged, base: nil, tree: tree, merged: (hit.baseVersion, hit.changed), offsets: hit.offsets))
                    }
                    return try withStored(id) { record, base in
                        let lent = LentPage(bytes: record, base: base, tree: nil)
                        // A read transaction sees only committed pages; a write transaction may see
                        // its own, uncommitted, which must not enter the cache.
                        guard txn.isReadOnly || id.version <= store.hotPages.committedVersion,
                              store.hotPages.accepts(id, epoch: cacheEpoch), let page = PageSlots(lent) else { return try body(lent) }
                        switch HotPageCache.merge(page, hash: hash, tree: tree, into: pageBuffer) {
                        case .tooLarge:
                            return try body(lent)
                        case .wrongHash:
                            throw SparseMerkleError(.missingData, "the page at depth \(id.depth) of version \(id.version) does not hash to the hash its parent holds")
                        case .merged(let size):
                            let merged = UnsafeRawBufferPointer(rebasing: pageBuffer[0..<size])
                            store.hotPages.insert(id, tree: tree, page: merged, baseVersion: page.baseVersion, changed: page.changed,
                                                  keepingNewer: true, epoch: cacheEpoch)
                            return try body(LentPage(bytes: record, base: base, tree: tree))
                        }
                    }
                }
            }
        }

        public func peekPage<R>(_ id: PageID, hash: Hash, _ body: (LentPage) throws -> R) throws -> R {
            if id.depth <= HotPageCache.depth,
               let hit = try store.hotPages.withEntry(id, hash: hash, { bytes, tree, merged, offsets in
                   try body(LentPage(bytes: bytes, base: nil, tree: tree, merged: merged, offsets: offsets))
               }) {
                return hit
            }
            return try withPage(id, hash: hash, body)
        }

        /// Lends the stored record of `id` and, for a delta, its base record.
        private func withStored<R>(_ id: PageID, _ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer?) throws -> R) throws -> R {
            let result = try id.withStorageKey { key in
                try txn.withValue(store.pages, key: key) { record -> R in
                    switch PageRecord.baseVersion(of: record) {
                    case .none:
                        throw SparseMerkleTree.damagedPage(id)
                    case .some(nil):
                        return try body(record, nil)
                    case .some(let baseVersion?):
                        guard baseVersion < id.version else {
                            throw SparseMerkleError(.missingData, "the page at depth \(id.depth) of version \(id.version) names a base that is not older")
                        }
                        let baseID = PageID(version: baseVersion, depth: id.depth, prefix: id.prefix)
                        let lent = try baseID.withStorageKey { baseKey in
                            try txn.withValue(store.pages, key: baseKey) { base in try body(record, base) }
                        }
                        guard let lent else {
                            throw SparseMerkleError(.missingData, "no base page for the page at depth \(id.depth) of version \(id.version)")
                        }
                        return lent
                    }
                }
            }
            guard let result else {
                throw SparseMerkleError(.missingData, "no page at depth \(id.depth) of version \(id.version)")
            }
            return result
        }

        public func root(version: UInt64) throws -> SparseNode? {
            let found = try txn.withValue(store.roots, key: version) { SparsePage.decodeNode($0) }
            guard let found else { return nil }
            guard let node = found else { throw SparseMerkleError(.missingData, "unreadable root of version \(version)") }
            return node
        }

        public func latestVersion() throws -> UInt64? {
            try txn.withCursor(store.roots) { cursor in
                guard try cursor.last() else { return nil }
                // A damaged key must not read as an empty map: the next apply would start over.
                guard let version = cursor.withCurrent({ key, _ in UInt64(bigEndianBytes: key) }) else {
                    throw SparseMerkleError(.missingData, "the last smt.roots key is not a version")
                }
                return version
            }
        }

        public func putPages(_ batch: NewPages) throws {
            // The pages warm the cache for the next batch and for proofs once they commit; a
            // large batch starts filling it now, beside the puts and the commit.
            store.stage(batch)
            // One cursor for the whole batch: appending through it skips a search per record.
            try txn.withCursor(store.pages) { cursor in
                try batch.forEach { page in
                    try page.id.withStorageKey { key in try cursor.put(key: key, value: page.bytes, flags: .append) }
                }
            }
        }

        public func putRoot(_ root: SparseNode, version: UInt64) throws {
            try txn.put(store.roots, key: version, value: SparsePage.encodeNode(root), flags: .append)
        }

        public func markStale(_ replaced: [PageID], at version: UInt64) throws {
            guard !replaced.isEmpty else { return }
            // One record per version: the replaced records' keys, sorted, each after its length.
            let sorted = zip(replaced, replaced.dropFirst()).allSatisfy({ $0.0 < $0.1 }) ? replaced : replaced.sorted()
            var size = 0
            for id in sorted { size += 1 + id.withStorageKey { $0.count } }
            try txn.put(store.stale, key: version, reservingCapacity: size, flags: .append) { out in
                var at = 0
                for id in sorted {
                    id.withStorageKey { key in
                        out[at] = UInt8(key.count)
                        UnsafeMutableRawBufferPointer(rebasing: out[(at + 1)..<(at + 1 + key.count)]).copyMemory(from: key)
                        at += 1 + key.count
                    }
                }
            }
        }

        /// Walks the tree of `version` as stored and checks it without trusting the cache:
        /// every page record (and a delta's base) is present and decodes, every leaf's hash is
        /// that of its key hash and value, every key hash sits under its position's prefix,
        /// every child page was written no later than its parent, and every page hashes to the
        /// hash its parent (or the root record) holds. `visit` gets the storage key and bytes
        /// of each page record read (a delta's base included), so a caller can copy the
        /// version elsewhere; the bytes are lent for the call only.
        ///
        /// A verifier uses this for the oldest version a prune kept: its records were written
        /// over versions whose batch boundaries the prune dropped, so a rebuild from the
        /// entries yields the same root but not the same records.
        /// - Returns: the root record's node (nil when there is none, or it does not decode)
        ///   and the problems found, each naming its page; none when the tree is whole.
        public func checkStoredTree(
            version: UInt64, visit: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) throws -> Void
        ) throws -> (root: SparseNode?, problems: [String]) {
            var problems: [String] = []
            let root: SparseNode? = try txn.withValue(store.roots, key: version) { raw -> SparseNode? in
                if let node = SparsePage.decodeNode(raw) { return node }
                problems.append("the root record of version \(version) does not decode")
                return nil
            } ?? nil
            func checkLeaf(_ k: Hash, _ value: [UInt8], _ h: Hash, under prefix: Hash, depth: Int, at place: String) {
                if SparseHash.leaf(keyHash: k, valueHash: SHA256.hash(value)) != h {
                    problems.append("\(place): a leaf's hash is not that of its key hash and value")
                }
                for t in 0..<depth where keyBit(k, t) != keyBit(prefix, t) {
                    problems.append("\(place): a leaf's key hash is not under the page's position")
                    break
                }
            }
            guard let root else {
                if problems.isEmpty { problems.append("no root record for version \(version)") }
                return (nil, problems)
            }
            var pending: [(id: PageID, hash: Hash)] = []
            switch root {
            case .empty: break
            case .leaf(let k, let value, let h): checkLeaf(k, value, h, under: .zero, depth: 0, at: "the root of version \(version)")
            case .page(let h, let v):
                if v > version { problems.append("the root of version \(version) names a page of the later version \(v)") } else {
                    pending.append((PageID(version: v, depth: 0, prefix: .zero), h))
                }
            }
            while let (id, expected) = pending.popLast() {
                let place = "page at depth \(id.depth) of version \(id.version)"
                guard let page = try storedPage(id, visit: visit) else {
                    problems.append("\(place): missing, or it (or its base) does not decode")
                    continue
                }
                if page.hash != expected { problems.append("\(place): does not hash to the hash its parent holds") }
                for (i, slot) in page.slots.enumerated() {
                    let prefix = extend(id.prefix, depth: id.depth, nibble: i)
                    switch slot {
                    case .empty: break
                    case .leaf(let k, let value, let h): checkLeaf(k, value, h, under: prefix, depth: id.depth + 4, at: place)
                    case .page(let h, let v):
                        if v > id.version || id.depth + 4 >= 256 {
                            problems.append("\(place): slot \(i) names a page of a later version or past the deepest level")
                        } else {
                            pending.append((PageID(version: v, depth: id.depth + 4, prefix: prefix), h))
                        }
                    }
                }
            }
            return (root, problems)
        }

        /// The stored record of page `id` decoded, a delta merged with its base (which must be
        /// older), read from LMDB without the cache; nil when the record or its base is
        /// missing or does not decode. `visit` gets the storage key and bytes of each record
        /// read, lent for the call only.
        public func storedPage(_ id: PageID, visit: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) throws -> Void = { _, _ in }) throws -> SparsePage? {
            try id.withStorageKey { key in
                try txn.withValue(store.pages, key: key) { record -> SparsePage? in
                    try visit(key, record)
                    switch PageRecord.baseVersion(of: record) {
                    case .some(nil): return SparsePage(decoding: record)
                    case .some(let base?) where base < id.version:
                        return try PageID(version: base, depth: id.depth, prefix: id.prefix).withStorageKey { baseKey in
                            try txn.withValue(store.pages, key: baseKey) { baseRecord -> SparsePage? in
                                try visit(baseKey, baseRecord)
                                return SparsePage(decoding: record, base: baseRecord)
                            } ?? nil
                        }
                    default: return nil
                    }
                } ?? nil
            }
        }

        /// The page at `depth` below `prefix` (its bits past `depth` ignored) in the tree of
        /// `version`, decoded; nil when that position holds no page there (it is empty, a
        /// leaf, or inside a page's single-key slot). Reads through the cache like a proof.
        public func page(atDepth depth: Int, prefix: Hash, version: UInt64) throws -> SparsePage? {
            precondition(depth % 4 == 0 && depth < 256, "a page depth is a multiple of 4 below 256")
            guard case .page(var hash, var written)? = try root(version: version) else { return nil }
            var at = 0
            var position = Hash.zero
            while true {
                let slots = try withPage(PageID(version: written, depth: at, prefix: position), hash: hash) { lent -> [SparseNode]? in
                    PageSlots(lent).map { page in (0..<16).map { page.slot($0).node } }
                }
                guard let slots else { throw SparseMerkleTree.damagedPage(PageID(version: written, depth: at, prefix: position)) }
                if at == depth { return SparsePage(slots: slots) }
                let n = nibble(prefix, at: at)
                guard case .page(let next, let nextVersion) = slots[n] else { return nil }
                position = extend(position, depth: at, nibble: n)
                (hash, written, at) = (next, nextVersion, at + 4)
            }
        }

        /// The oldest stored version at or after `version`, nil when there is none.
        /// - Throws: ``SparseMerkleError`` `.missingData` when that `smt.roots` key is not a version.
        public func oldestVersion(atOrAfter version: UInt64) throws -> UInt64? {
            try txn.withCursor(store.roots) { cursor in
                guard try cursor.seek(atOrAfter: version) else { return nil }
                guard let found = cursor.withCurrent({ key, _ in UInt64(bigEndianBytes: key) }) else {
                    throw SparseMerkleError(.missingData, "an smt.roots key is not a version")
                }
                return found
            }
        }

        public func prune(before version: UInt64) throws -> Int {
            guard let latest = try latestVersion() else { return 0 }
            try SparseMerkleTree.checkPrunePoint(version, latest: latest)
            // The oldest version kept is the first at or after `version`; what it replaced no
            // kept version uses either, so a prune between two versions leaves what a prune at
            // the later one leaves.
            let keptFrom = try oldestVersion(atOrAfter: version) ?? version
            // Each stale record's pages are deleted as it is read, so memory holds one record's
            // keys, not the whole backlog's. A record that does not decode throws, which aborts
            // the transaction: nothing is deleted.
            var deleted = 0
            var staleVersions: [UInt64] = []
            try txn.withCursor(store.stale) { cursor in
                var more = try cursor.first()
                while more {
                    // Keys are copied out before the deletes, which may move what LMDB lends.
                    let record = cursor.withCurrent { key, value -> (UInt64?, [[UInt8]]?) in
                        guard let replacedAt = UInt64(bigEndianBytes: key) else { return (nil, nil) }
                        return (replacedAt, replacedAt <= keptFrom ? LMDBSparseStore.staleKeys(value, replacedAt: replacedAt) : nil)
                    }
                    guard let replacedAt = record.0 else {
                        throw SparseMerkleError(.missingData, "an smt.stale key is not a version; nothing was pruned")
                    }
                    guard replacedAt <= keptFrom else { break }
                    guard let keys = record.1 else {
                        throw SparseMerkleError(.missingData, "the smt.stale record of version \(replacedAt) does not decode; nothing was pruned")
                    }
                    for key in keys where try txn.delete(store.pages, key: key) { deleted += 1 }
                    staleVersions.append(replacedAt)
                    more = try cursor.next()
                }
            }
            for v in staleVersions { try txn.delete(store.stale, key: v) }
            let oldRoots = try LMDBSparseStore.rootVersions(before: version, txn: txn, roots: store.roots)
            for v in oldRoots { try txn.delete(store.roots, key: v) }
            return deleted
        }
    }

    /// The page keys listed in an `smt.stale` value of version `replacedAt`, or nil when it
    /// does not decode or lists a key that cannot be a page that version replaced (see
    /// ``isReplacedPageKey(_:replacedAt:)``).
    public static func staleKeys(_ value: UnsafeRawBufferPointer, replacedAt: UInt64) -> [[UInt8]]? {
        var keys: [[UInt8]] = []
        let decoded = forEachStaleKey(value, replacedAt: replacedAt) { keys.append(Array($0)) }
        return decoded ? keys : nil
    }

    /// The number of page keys in an `smt.stale` value of version `replacedAt`, or nil when
    /// ``staleKeys(_:replacedAt:)`` would give nil.
    static func staleKeyCount(_ value: UnsafeRawBufferPointer, replacedAt: UInt64) -> Int? {
        var count = 0
        return forEachStaleKey(value, replacedAt: replacedAt) { _ in count += 1 } ? count : nil
    }

    /// Calls `body` with each key of an `smt.stale` value; false when the value is empty,
    /// truncated, or holds a key that is not a page key of a version below `replacedAt`.
    private static func forEachStaleKey(_ value: UnsafeRawBufferPointer, replacedAt: UInt64,
                                        _ body: (UnsafeRawBufferPointer) -> Void) -> Bool {
        guard !value.isEmpty else { return false }
        var at = 0
        while at < value.count {
            let length = Int(value[at])
            guard at + 1 + length <= value.count else { return false }
            let key = UnsafeRawBufferPointer(rebasing: value[(at + 1)..<(at + 1 + length)])
            guard isReplacedPageKey(key, replacedAt: replacedAt) else { return false }
            body(key)
            at += 1 + length
        }
        return true
    }

    /// Whether `key` is a page key (FORMATS.md section 6.3: version, depth / 4, the prefix's
    /// bytes with no bit set past the depth) of a version below `replacedAt`. Only such a page
    /// can be one that version stopped using; a damaged stale record that named anything else
    /// (a page of the newest version, say) would make pruning delete what a kept version needs.
    static func isReplacedPageKey(_ key: UnsafeRawBufferPointer, replacedAt: UInt64) -> Bool {
        PageID.version(ofStorageKey: key).map { $0 < replacedAt } ?? false
    }

    /// The versions in `smt.roots` below `version`, oldest first.
    /// - Throws: ``SparseMerkleError`` `.missingData` for a key that is not a version.
    static func rootVersions(before version: UInt64, txn: TransactionView, roots: Database) throws -> [UInt64] {
        var found: [UInt64] = []
        try txn.withCursor(roots) { cursor in
            var more = try cursor.first()
            while more {
                guard let v = cursor.withCurrent({ key, _ in UInt64(bigEndianBytes: key) }) else {
                    throw SparseMerkleError(.missingData, "an smt.roots key is not a version; nothing was pruned")
                }
                if v >= version { break }
                found.append(v)
                more = try cursor.next()
            }
        }
        return found
    }

    public func withSnapshot<R>(_ body: (View) throws -> R) throws -> R {
        try read { try body($0) }
    }

    /// Runs `body` with a view of the last committed state.
    public func read<R>(_ body: (View) throws -> R) throws -> R {
        try environment.read { txn in try body(View(txn.unsafeView, store: self)) }
    }

    /// Runs `body` in its own write transaction (for tools; the ledger writes inside its append),
    /// then publishes what it wrote to the page cache.
    public func write<R>(_ body: (View) throws -> R) throws -> R {
        // One write and its publish at a time, so a write that starts after another committed
        // cannot stage its pages before that one publishes.
        writeLock.lock()
        defer { writeLock.unlock() }
        do {
            let result = try environment.write { txn in try body(View(txn.unsafeView, store: self)) }
            publish()
            return result
        } catch {
            discardStaged()
            throw error
        }
    }

    private let writeLock = NSLock()

    /// What ``prune(before:pagesPerTransaction:)`` removed.
    public struct PruneReport: Sendable, Equatable {
        /// Versions whose roots were deleted.
        public var versionsRemoved = 0
        /// Page records deleted.
        public var pagesDeleted = 0
        /// Write transactions committed.
        public var transactions = 0
        /// The oldest version kept afterwards (nil for an empty store).
        public var oldestVersion: UInt64?

        public init() {}
    }

    /// Deletes what versions before `version` alone need, as ``View/prune(before:)`` does, in
    /// steps of about `pagesPerTransaction` page records, each its own write transaction
    /// (by default one transaction for everything).
    ///
    /// Steps bound what one transaction holds and let an interrupted run keep what it
    /// committed; they cost time, since each step's commit rewrites the free list that the
    /// earlier steps grew (at 1M keys, a backlog of 1.58M pages took 6.5–8.8 s in steps of
    /// 65,536 and 1.9–2.2 s in one). A step deletes whole stale records (the pages one version
    /// stopped using), so it may exceed the bound by one record, and ends at a version: it
    /// is a prune before that version. A failure leaves the steps already committed done and
    /// the store as that prune leaves it: every version from the last committed step's on
    /// whole, nothing an older one alone used left.
    ///
    /// Every record the run will read is checked before the first step, so a damaged one
    /// stops it before anything is deleted. `pagesPerTransaction` must be positive (a caller
    /// error traps).
    /// - Throws: ``SparseMerkleError`` `.versionOrder` when `version` is past the newest
    ///   version, `.missingData` when an `smt.stale` or `smt.roots` record does not decode
    ///   or a stale record names a page its version cannot have replaced (see
    ///   ``isReplacedPageKey(_:replacedAt:)``).
    ///
    /// `aroundEachStep` runs each step's transaction (the closure it is given) and returns
    /// what that returns: a caller that serializes its own writes with a lock takes it there,
    /// so its writes run between steps rather than after the whole run.
    public func prune(before version: UInt64, pagesPerTransaction: Int = .max,
                      aroundEachStep: (_ step: () throws -> Int) throws -> Int = { try $0() }) throws -> PruneReport {
        precondition(pagesPerTransaction > 0, "pagesPerTransaction must be positive")
        var report = PruneReport()
        // Plan the steps in one snapshot; writers meanwhile only add newer versions.
        let plan = try read { view -> (steps: [UInt64], roots: Int)? in
            guard let latest = try view.latestVersion() else { return nil }
            try SparseMerkleTree.checkPrunePoint(version, latest: latest)
            let keptFrom = try view.oldestVersion(atOrAfter: version) ?? version
            // Each step ends at the version of the last stale record it takes, so every step
            // is a prune at a version: what it leaves is what a prune there alone leaves.
            var steps: [UInt64] = []
            var pending = 0
            var lastTaken: UInt64?
            try view.txn.withCursor(stale) { cursor in
                var more = try cursor.first()
                while more {
                    let (replacedAt, count) = cursor.withCurrent { key, value -> (UInt64?, Int?) in
                        guard let replacedAt = UInt64(bigEndianBytes: key) else { return (nil, nil) }
                        return (replacedAt, Self.staleKeyCount(value, replacedAt: replacedAt))
                    }
                    guard let replacedAt else {
                        throw SparseMerkleError(.missingData, "an smt.stale key is not a version; nothing was pruned")
                    }
                    guard replacedAt <= keptFrom else { break }
                    guard let count else {
                        throw SparseMerkleError(.missingData, "the smt.stale record of version \(replacedAt) does not decode; nothing was pruned")
                    }
                    if pending > 0, pending + count > pagesPerTransaction, let lastTaken {
                        steps.append(lastTaken)
                        pending = 0
                    }
                    pending += count
                    lastTaken = replacedAt
                    more = try cursor.next()
                }
            }
            let roots = try Self.rootVersions(before: version, txn: view.txn, roots: self.roots).count
            return (steps + [version], roots)
        }
        guard let plan else { return report }
        for step in plan.steps {
            report.pagesDeleted += try aroundEachStep { try write { try $0.prune(before: step) } }
            report.transactions += 1
        }
        report.versionsRemoved = plan.roots
        report.oldestVersion = try read { view in
            try view.txn.withCursor(roots) { cursor in
                try cursor.first() ? cursor.withCurrent { key, _ in UInt64(bigEndianBytes: key) } : nil
            }
        }
        return report
    }

    /// Pages written by the current write transaction, cached once it commits.
    private var staged: NewPages?
    /// The cache fill of `staged` running while the transaction commits, if one was started.
    private var prefill: DispatchGroup?
    private let stagingLock = NSLock()

    /// A batch with at least this many pages to cache fills the cache while its transaction
    /// commits (on another thread) instead of after; tests lower it to take that path with
    /// small batches.
    var prefillThreshold = 1024

    /// Replaces the staged pages with `batch` (a write transaction that stages again is a
    /// retry of one that did not commit) and, for a large batch, starts filling the cache
    /// with its pages.
    ///
    /// Filling before the commit is safe for readers: a page is found only under its own
    /// version and with the hash its parent records, and no reader knows a root of a version
    /// that has not committed. If the transaction does not commit, the cache is emptied.
    func stage(_ batch: NewPages?) {
        let (dropped, pending) = takeStaged()
        if let pending {
            pending.wait()
            forgetUncommittedFill()
        }
        withExtendedLifetime(dropped) {}  // released outside the lock
        guard let batch else { return }
        var group: DispatchGroup?
        if batch.cachedCount >= prefillThreshold {
            let fill = DispatchGroup()
            let cache = hotPages
            // A reset while the fill runs (another process rebuilt the tree) stops it.
            let epoch = cache.epoch
            // The closure keeps the batch (and the memory its pages live in) until it is done;
            // even listing the pages to cache is left to it, off the writer's thread.
            DispatchQueue.global(qos: .userInitiated).async(group: fill) {
                withExtendedLifetime(batch) { CacheFill(cache: cache, pages: batch.cachedPages(), epoch: epoch).run(0, of: 1) }
            }
            group = fill
        }
        stagingLock.lock()
        staged = batch
        prefill = group
        stagingLock.unlock()
    }

    private func takeStaged() -> (NewPages?, DispatchGroup?) {
        stagingLock.lock()
        defer { stagingLock.unlock() }
        let taken = (staged, prefill)
        staged = nil
        prefill = nil
        return taken
    }

    /// Empties the cache after a fill for a transaction that did not commit: its entries
    /// belong to a version that may be written again with other pages.
    private func forgetUncommittedFill() {
        hotPages.clearEntries()
    }

    /// Forgets the pages of a write transaction that did not commit.
    public func discardStaged() { stage(nil) }

    /// Tells the store that the write transaction that last wrote pages committed: its pages
    /// enter the cache. Writers that commit through their own transaction (as the ledger does)
    /// call this after the commit, before their next write; a transaction that aborts must
    /// not (its pages are dropped when the next write stages its own, or by
    /// ``discardStaged()``). The staged pages are kept in the cache only if their version is
    /// the newest committed one, with their root hash.
    public func publish() {
        let clock = SparseMerkleTree.timings
        let start = clock == nil ? 0 : DispatchTime.now().uptimeNanoseconds
        defer { if let clock { clock.publishNs += DispatchTime.now().uptimeNanoseconds - start } }
        let (staged, pending) = takeStaged()
        pending?.wait()
        guard let batch = staged else { return }
        let committed = try? read { view -> Bool in
            guard try view.latestVersion() == batch.version, let root = try view.root(version: batch.version) else { return false }
            return root.hash == batch.rootHash
        }
        guard committed == true else {
            if pending != nil { forgetUncommittedFill() }
            return
        }
        hotPages.noteCommitted(batch.version)
        guard pending == nil else { return }
        // Entries are striped-locked, so two threads fill the cache of a large batch.
        let job = CacheFill(cache: hotPages, pages: batch.cachedPages())
        if job.pages.count >= 2048 { DispatchQueue.concurrentPerform(iterations: 2) { job.run($0, of: 2) } } else { job.run(0, of: 1) }
        withExtendedLifetime(batch) {}
    }

    /// Removes every page, root and stale record (before a rebuild) and counts a new
    /// generation, which empties this store's cache and, at their next write, every other
    /// store's over this environment (another process's too).
    public func clear(_ txn: TransactionView) throws {
        try txn.clear(pages)
        try txn.clear(roots)
        try txn.clear(stale)
        let generation = try View(txn, store: self).storedGeneration() &+ 1
        if let meta { try txn.put(meta, key: "generation", value: generation) }
        hotPages.reset(generation: generation, committedVersion: 0)
    }

    /// Bytes used by the tree's databases.
    public func storedBytes() throws -> Int {
        try environment.read { txn in
            try txn.unsafeView.storedBytes(pages) + txn.unsafeView.storedBytes(roots) + txn.unsafeView.storedBytes(stale)
        }
    }
}

/// One publish's cache inserts, shared between workers.
final class CacheFill: @unchecked Sendable {
    // Sendable: the pages are read-only and outlive the workers; the cache locks its entries.
    let cache: HotPageCache
    let pages: [NewPage]
    /// With an epoch, nothing is cached once the cache was reset since.
    let epoch: UInt64?
    init(cache: HotPageCache, pages: [NewPage], epoch: UInt64? = nil) {
        self.cache = cache
        self.pages = pages
        self.epoch = epoch
    }

    func run(_ worker: Int, of workers: Int) {
        let lo = pages.count * worker / workers, hi = pages.count * (worker + 1) / workers
        for page in pages[lo..<hi] {
            guard let merged = page.merged, let tree = page.tree else { continue }
            cache.insert(page.id, tree: tree, page: merged, baseVersion: page.baseVersion, changed: page.changed, keepingNewer: false,
                         epoch: epoch)
        }
    }
}

/// The upper levels of the newest committed version seen, one entry per position (depth and
/// prefix) at depths 0 to 16, indexed directly by the prefix: each entry holds the page's
/// version, interior node hashes (positions 1...15, 512 bytes) and the page merged into one
/// full record, with the stored record's base version and changed slots. With them an update
/// or a proof reads and hashes nothing above depth 20. Positions number at most 69,905, so the
/// cache is bounded by the tree's shape (with 40-byte values, about 85 MB when every position
/// holds a page), not by the number of keys or versions.
///
/// Thread safety: entries are guarded by striped locks; lookups copy out.
final class HotPageCache: @unchecked Sendable {
    // Sendable: every entry is read and written under its stripe's lock.
    static let depth = 16
    /// Pages whose merged record is larger are not cached (with 40-byte values a page is at
    /// most 1,701 bytes).
    static let maxRecord = 4096
    /// Page levels cached: depths 0, 4, ..., `depth`.
    static let levels = depth / 4 + 1
    private static let stripes = 64

    /// An entry's fixed part.
    private struct Header {
        var version: UInt64
        var baseVersion: UInt64
        var length: UInt32
        var capacity: UInt32
        var changed: UInt16
        var present: Bool
        var hasBase: Bool
    }

    /// Per level (depth / 4), per position, its entry or nil (zeroed memory from `calloc`, so
    /// positions never used cost no resident memory). An entry is one block: the header, the
    /// 16 hashes (heap positions 0...15, 0 unused), the record's slot offsets (parsed once, when
    /// cached) and the merged record. A proof reads five cached pages and an update thousands:
    /// one block per page means one region of memory to miss in rather than five arrays.
    private let entries: [UnsafeMutablePointer<UnsafeMutableRawPointer?>]
    private static let treeOffset = 32
    private static let layoutOffset = treeOffset + 16 * MemoryLayout<Hash>.stride
    private static let recordOffset = layoutOffset + MemoryLayout<InlineArray<16, UInt32>>.stride
    private let locks: [NSLock]
    /// Bumped by every reset, under all the stripe locks: an insert made for a view begun
    /// before a reset is dropped.
    private var currentEpoch: UInt64 = 0
    /// The tree generation the entries belong to (``LMDBSparseStore/clear(_:)`` counts them).
    private var currentGeneration: UInt64 = 0
    /// The newest version known to be committed: a write transaction's misses at or below it
    /// read committed pages.
    private var committed: UInt64 = 0

    init() {
        precondition(MemoryLayout<Header>.stride <= Self.treeOffset && MemoryLayout<Hash>.alignment <= 8)
        entries = (0..<Self.levels).map {
            calloc(1 << (4 * $0), MemoryLayout<UnsafeMutableRawPointer?>.stride)!.bindMemory(to: UnsafeMutableRawPointer?.self, capacity: 1 << (4 * $0))
        }
        locks = (0..<Self.stripes).map { _ in NSLock() }
    }

    deinit {
        for (level, positions) in entries.enumerated() {
            for i in 0..<(1 << (4 * level)) { positions[i]?.deallocate() }
            free(positions)
        }
    }

    /// The header of the entry at `entry`.
    @inline(__always)
    private static func header(_ entry: UnsafeMutableRawPointer) -> Header { entry.load(as: Header.self) }

    /// The entry's 16 hashes (bound to `Hash` when the entry was made).
    @inline(__always)
    private static func hashes(_ entry: UnsafeMutableRawPointer) -> UnsafeMutablePointer<Hash> {
        (entry + treeOffset).assumingMemoryBound(to: Hash.self)
    }

    /// The position's index within its level: the prefix's first `depth` bits.
    @inline(__always)
    private static func index(_ id: PageID) -> Int {
        guard id.depth > 0 else { return 0 }
        let head = id.prefix.withUnsafeBytes { UInt64(bigEndian: $0.loadUnaligned(as: UInt64.self)) }
        return Int(head >> UInt64(64 - id.depth))
    }

    @inline(__always)
    private func lock(_ level: Int, _ i: Int) -> NSLock { locks[(i &+ level) & (Self.stripes - 1)] }

    /// Guards the counters `currentEpoch`, `currentGeneration` and `committed` apart from the
    /// entries' stripes, so that a body run under an entry's lock may read them. The first two
    /// are written only under every lock (``withAllLocks(_:)``, so a stripe lock suffices to
    /// read them); `committed` also under this one alone.
    private let stateLock = NSLock()

    /// Takes the stripes in order, then the state lock: no thread holding the state lock waits
    /// for a stripe.
    private func withAllLocks<R>(_ body: () -> R) -> R {
        for lock in locks { lock.lock() }
        stateLock.lock()
        defer {
            stateLock.unlock()
            for lock in locks { lock.unlock() }
        }
        return body()
    }

    var epoch: UInt64 {
        stateLock.lock()
        defer { stateLock.unlock() }
        return currentEpoch
    }

    var generation: UInt64 {
        stateLock.lock()
        defer { stateLock.unlock() }
        return currentGeneration
    }

    var committedVersion: UInt64 {
        stateLock.lock()
        defer { stateLock.unlock() }
        return committed
    }

    /// Empties the cache for the tree of `generation`, whose newest committed version is
    /// `committedVersion`.
    func reset(generation: UInt64, committedVersion: UInt64) {
        withAllLocks {
            forgetEntries()
            currentGeneration = generation
            committed = committedVersion
        }
    }

    /// Empties the cache, keeping its generation and committed version.
    func clearEntries() {
        withAllLocks { forgetEntries() }
    }

    /// Marks every entry absent and starts a new epoch; the caller holds every lock.
    private func forgetEntries() {
        for level in 0..<Self.levels {
            for i in 0..<(1 << (4 * level)) {
                guard let entry = entries[level][i] else { continue }
                var header = Self.header(entry)
                header.present = false
                entry.storeBytes(of: header, as: Header.self)
            }
        }
        currentEpoch &+= 1
    }

    /// Records that `version` committed.
    func noteCommitted(_ version: UInt64) {
        stateLock.lock()
        committed = max(committed, version)
        stateLock.unlock()
    }

    /// On a hit (same version, and the hash its parent committed to), copies the page's
    /// interior hashes to `tree` (16 entries) and its merged record to `page`.
    func lookup(_ id: PageID, hash: Hash, tree: UnsafeMutablePointer<Hash>, page: UnsafeMutableRawBufferPointer)
        -> (length: Int, baseVersion: UInt64?, changed: UInt16, offsets: InlineArray<16, UInt32>)? {
        withEntry(id, hash: hash) { record, hashes, merged, offsets in
            guard record.count <= page.count else { return nil }
            tree.update(from: hashes, count: 16)
            page.baseAddress!.copyMemory(from: record.baseAddress!, byteCount: record.count)
            return (record.count, merged.baseVersion, merged.changed, offsets)
        } ?? nil
    }

    /// On a hit, runs `body` with the cached merged record and interior hashes in place,
    /// under the entry's lock (so `body` must not touch the cache); nil on a miss.
    func withEntry<R>(_ id: PageID, hash: Hash,
                      _ body: (UnsafeRawBufferPointer, UnsafePointer<Hash>, (baseVersion: UInt64?, changed: UInt16), InlineArray<16, UInt32>) throws -> R) rethrows -> R? {
        let l = id.depth / 4, i = Self.index(id)
        let lock = lock(l, i)
        lock.lock()
        defer { lock.unlock() }
        guard let entry = entries[l][i] else { return nil }
        let header = Self.header(entry)
        let hashes = Self.hashes(entry)
        guard header.present, header.version == id.version, hashes[1] == hash else { return nil }
        return try body(UnsafeRawBufferPointer(start: entry + Self.recordOffset, count: Int(header.length)), UnsafePointer(hashes),
                        (header.hasBase ? header.baseVersion : nil, header.changed),
                        (entry + Self.layoutOffset).load(as: InlineArray<16, UInt32>.self))
    }

    /// Whether page `id`, read by a view begun at `epoch`, would enter the cache: no reset
    /// since, and no newer version at its position.
    func accepts(_ id: PageID, epoch: UInt64) -> Bool {
        let l = id.depth / 4, i = Self.index(id)
        let lock = lock(l, i)
        lock.lock()
        defer { lock.unlock() }
        guard let entry = entries[l][i] else { return epoch == currentEpoch }
        let header = Self.header(entry)
        return epoch == currentEpoch && (!header.present || header.version <= id.version)
    }

    /// Caches page `id`: its interior hashes and merged record. With `keepingNewer`, a page
    /// read for an old version does not displace a newer one; with `epoch`, the epoch of the
    /// view that read it, nothing is cached if the cache was reset since.
    func insert(_ id: PageID, tree: UnsafePointer<Hash>, page: UnsafeRawBufferPointer, baseVersion: UInt64?, changed: UInt16,
                keepingNewer: Bool, epoch: UInt64? = nil) {
        // The slot table is parsed here, once (outside the lock), so that hits need not parse it.
        let table = page.count <= Self.maxRecord && page.first == PageRecord.full ? SlotTable(page, at: 1) : nil
        let l = id.depth / 4, i = Self.index(id)
        let lock = lock(l, i)
        lock.lock()
        defer { lock.unlock() }
        var entry = entries[l][i]
        var header = entry.map(Self.header)
            ?? Header(version: 0, baseVersion: 0, length: 0, capacity: 0, changed: 0, present: false, hasBase: false)
        if let epoch, epoch != currentEpoch { return }
        if keepingNewer, header.present, header.version > id.version { return }
        guard let table else {
            header.present = false
            entry?.storeBytes(of: header, as: Header.self)
            return
        }
        if entry == nil || Int(header.capacity) < page.count {
            entry?.deallocate()
            let capacity = max(page.count, 512)
            let made = UnsafeMutableRawPointer.allocate(byteCount: Self.recordOffset + capacity, alignment: 64)
            (made + Self.treeOffset).bindMemory(to: Hash.self, capacity: 16)
            entries[l][i] = made
            entry = made
            header.capacity = UInt32(capacity)
        }
        let block = entry!
        (block + Self.recordOffset).copyMemory(from: page.baseAddress!, byteCount: page.count)
        // Trivial values: initializing over earlier ones (a reused block) is as valid as over
        // fresh memory.
        Self.hashes(block).initialize(from: tree, count: 16)
        (block + Self.layoutOffset).storeBytes(of: table.slotOffsets, as: InlineArray<16, UInt32>.self)
        header.version = id.version
        header.baseVersion = baseVersion ?? 0
        header.hasBase = baseVersion != nil
        header.changed = changed
        header.length = UInt32(page.count)
        header.present = true
        block.storeBytes(of: header, as: Header.self)
    }

    /// What ``merge(_:hash:tree:into:)`` made of a stored page.
    enum Merge {
        /// The merged record's size in `out`.
        case merged(Int)
        /// Larger than the cache keeps.
        case tooLarge
        /// The page does not hash to the hash its parent committed to.
        case wrongHash
    }

    /// Computes the interior hashes of a stored page into `tree` (16 entries) and writes the
    /// page as one full record into `out`.
    static func merge(_ page: PageSlots, hash: Hash, tree: UnsafeMutablePointer<Hash>, into out: UnsafeMutableRawBufferPointer) -> Merge {
        withUnsafeTemporaryAllocation(of: NodeRef.self, capacity: 16) { slots in
            withUnsafeTemporaryAllocation(of: Hash.self, capacity: 32) { full in
                page.readSlots(into: slots.baseAddress!)
                PageHashing.tree(slots.baseAddress!, old: nil, dirty: 0xffff, into: full.baseAddress!)
                guard full[1] == hash else { return .wrongHash }
                let size = PageHashing.fullSize(slots.baseAddress!)
                guard size <= out.count else { return .tooLarge }
                tree.update(from: full.baseAddress!, count: 16)
                PageHashing.encodeFull(slots.baseAddress!, into: UnsafeMutableRawBufferPointer(rebasing: out[0..<size]))
                return .merged(size)
            }
        }
    }
}
