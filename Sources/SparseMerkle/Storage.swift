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

/// Read access to a sparse tree's stored pages and roots, at one consistent moment.
public protocol SparseReader {
    /// The page `id`, whose hash its parent records as `hash`.
    func page(_ id: PageID, hash: Hash) throws -> SparsePage
    /// The root node of `version`, or `nil` when not retained.
    func root(version: UInt64) throws -> SparseNode?
    /// The newest version, or `nil` for a tree never written.
    func latestVersion() throws -> UInt64?
}

/// Write access, inside the same atomic write as the log append it belongs to.
public protocol SparseWriter: SparseReader {
    /// Stores new pages; `pages` is sorted by ``PageID`` and all share one version.
    func putPages(_ pages: [(PageID, SparsePage)]) throws
    func putRoot(_ root: SparseNode, version: UInt64) throws
    /// Records that `replaced` pages stopped being current at `version`.
    func markStale(_ replaced: [PageID], at version: UInt64) throws
    /// Deletes what versions before `version` alone need; returns pages deleted.
    func prune(before version: UInt64) throws -> Int
}

/// A sparse tree held in memory, for tests and for auditors replaying a log.
///
/// Thread safety: not thread-safe.
public final class MemorySparseStore: SparseWriter {
    var pages: [PageID: SparsePage] = [:]
    var roots: [UInt64: SparseNode] = [:]
    var stale: [(version: UInt64, id: PageID)] = []

    public init() {}

    public func page(_ id: PageID, hash: Hash) throws -> SparsePage {
        guard let page = pages[id] else { throw SparseMerkleError(.missingData, "no page at depth \(id.depth) of version \(id.version)") }
        return page
    }

    public func root(version: UInt64) throws -> SparseNode? { roots[version] }
    public func latestVersion() throws -> UInt64? { roots.keys.max() }

    public func putPages(_ pages: [(PageID, SparsePage)]) throws {
        for (id, page) in pages { self.pages[id] = page }
    }

    public func putRoot(_ root: SparseNode, version: UInt64) throws { roots[version] = root }

    public func markStale(_ replaced: [PageID], at version: UInt64) throws {
        stale += replaced.map { (version, $0) }
    }

    public func prune(before version: UInt64) throws -> Int {
        var deleted = 0
        stale.removeAll { entry in
            guard entry.version <= version else { return false }
            if pages.removeValue(forKey: entry.id) != nil { deleted += 1 }
            return true
        }
        for v in roots.keys where v < version { roots[v] = nil }
        return deleted
    }

    /// Number of stored pages.
    public var pageCount: Int { pages.count }
}

/// A sparse tree's storage in LMDB: `smt.pages` (``PageID/storageKey`` → page),
/// `smt.roots` (version → root node), `smt.stale` (replacing version || page key → empty).
/// Every database is written in increasing key order with `MDB_APPEND` (a batch's pages
/// share its version prefix).
///
/// Thread safety: immutable handles; use one ``LMDBSparseStore/View`` per transaction.
public final class LMDBSparseStore: SparseSnapshotSource, @unchecked Sendable {
    // Sendable: immutable after init.
    public let environment: Environment
    let pages: Database
    let roots: Database
    let stale: Database
    /// Decoded pages of the upper levels with their node hashes, keyed by page ID. Pages are
    /// immutable once written, so entries never go stale; the cache is emptied when it grows
    /// past its bound (old versions' pages accumulate otherwise).
    let hotPages = HotPageCache()

    /// The `smt.pages` database, for diagnostics.
    public var pagesDatabase: Database { pages }
    /// The `smt.roots` database (version → root), for tools that list versions.
    public var rootsDatabase: Database { roots }
    /// The `smt.stale` database (replacing version || page key), for integrity checks.
    public var staleDatabase: Database { stale }

    /// Opens (creating when writable) the tree's databases.
    public init(environment: Environment) throws {
        self.environment = environment
        let create = !environment.isReadOnly
        let open = { (txn: borrowing Transaction) throws -> (Database, Database, Database)? in
            guard let p = try txn.openDatabase("smt.pages", create: create),
                  let r = try txn.openDatabase("smt.roots", create: create),
                  let s = try txn.openDatabase("smt.stale", create: create) else { return nil }
            return (p, r, s)
        }
        guard let handles = create ? try environment.write(open) : try environment.read(open) else {
            throw SparseMerkleError(.missingData, "no sparse tree in \(environment.path)")
        }
        (pages, roots, stale) = handles
    }

    /// A reader or writer over one transaction; valid only inside that transaction's closure.
    public struct View: SparseWriter {
        public let txn: TransactionView
        let store: LMDBSparseStore

        public init(_ txn: TransactionView, store: LMDBSparseStore) {
            self.txn = txn
            self.store = store
        }

        public func page(_ id: PageID, hash: Hash) throws -> SparsePage {
            let hot = id.depth <= HotPageCache.maxDepth
            // The cache is warmed before commit. Checking the hash the parent committed to
            // ignores entries from a write that aborted while another writer (another
            // process, or another store object) committed the same version differently.
            if hot, let cached = store.hotPages.page(id), cached.rangeHash(0, 16) == hash { return cached }
            let found = try id.withStorageKey { key in try txn.withValue(store.pages, key: key) { SparsePage(decoding: $0) } }
            guard let found, let page = found else {
                throw SparseMerkleError(.missingData, "no readable page at depth \(id.depth) of version \(id.version)")
            }
            if hot {
                let withHashes = page.withHashTree()
                store.hotPages.insert(id, withHashes)
                return withHashes
            }
            return page
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
                return cursor.withCurrent { key, _ in UInt64(bigEndianBytes: key) }
            }
        }

        public func putPages(_ pages: [(PageID, SparsePage)]) throws {
            for (id, page) in pages {
                try id.withStorageKey { key in
                    try txn.put(store.pages, key: key, reservingCapacity: page.encodedSize, flags: .append) { page.encode(into: $0) }
                }
            }
            // Warm the cache for the next batch and for proofs. A write that aborts leaves
            // entries for pages never committed; `page(_:hash:)` checks hashes on every hit.
            for (id, page) in pages where id.depth <= HotPageCache.maxDepth {
                store.hotPages.insert(id, page.hashTree == nil ? page.withHashTree() : page)
            }
        }

        public func putRoot(_ root: SparseNode, version: UInt64) throws {
            try txn.put(store.roots, key: version, value: SparsePage.encodeNode(root), flags: .append)
        }

        public func markStale(_ replaced: [PageID], at version: UInt64) throws {
            // Sorted so the keys (version || page key) increase.
            for id in replaced.sorted() {
                var key = withUnsafeBytes(of: version.bigEndian) { Array($0) }
                key += id.storageKey
                try txn.put(store.stale, key: key, value: [UInt8](), flags: .append)
            }
        }

        public func prune(before version: UInt64) throws -> Int {
            var deleted = 0
            var staleKeys: [[UInt8]] = []
            try txn.withCursor(store.stale) { cursor in
                var more = try cursor.first()
                while more {
                    let key = cursor.withCurrent { key, _ in Array(key) }
                    let replacedAt = key.prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
                    if replacedAt > version { break }
                    staleKeys.append(key)
                    more = try cursor.next()
                }
            }
            for key in staleKeys {
                if try txn.delete(store.pages, key: Array(key[8...])) { deleted += 1 }
                try txn.delete(store.stale, key: key)
            }
            var oldRoots: [UInt64] = []
            try txn.withCursor(store.roots) { cursor in
                var more = try cursor.first()
                while more {
                    let v = cursor.withCurrent { key, _ in UInt64(bigEndianBytes: key) ?? .max }
                    if v >= version { break }
                    oldRoots.append(v)
                    more = try cursor.next()
                }
            }
            for v in oldRoots { try txn.delete(store.roots, key: v) }
            return deleted
        }
    }

    public func withSnapshot<R>(_ body: (any SparseReader) throws -> R) throws -> R {
        try read { try body($0) }
    }

    /// Runs `body` with a view of the last committed state.
    public func read<R>(_ body: (View) throws -> R) throws -> R {
        try environment.read { txn in try body(View(txn.unsafeView, store: self)) }
    }

    /// Runs `body` in its own write transaction (for tools; the ledger writes inside its append).
    public func write<R>(_ body: (View) throws -> R) throws -> R {
        try environment.write { txn in try body(View(txn.unsafeView, store: self)) }
    }

    /// Removes every page, root and stale record (before a rebuild).
    public func clear(_ txn: TransactionView) throws {
        try txn.clear(pages)
        try txn.clear(roots)
        try txn.clear(stale)
    }

    /// Bytes used by the tree's databases.
    public func storedBytes() throws -> Int {
        try environment.read { txn in
            try txn.unsafeView.storedBytes(pages) + txn.unsafeView.storedBytes(roots) + txn.unsafeView.storedBytes(stale)
        }
    }
}

/// A bounded cache of upper-level pages with their node hashes.
final class HotPageCache: @unchecked Sendable {
    // Sendable: `lock` guards `pages`.
    /// Pages at depths 0 to 12 (at most 4,369 per version) are cached, about 2 KB each.
    static let maxDepth = 12
    static let capacity = 16_384
    private let lock = NSLock()
    private var pages: [PageID: SparsePage] = [:]

    func page(_ id: PageID) -> SparsePage? {
        lock.lock()
        defer { lock.unlock() }
        return pages[id]
    }

    func insert(_ id: PageID, _ page: SparsePage) {
        lock.lock()
        defer { lock.unlock() }
        if pages.count >= Self.capacity { pages.removeAll(keepingCapacity: true) }
        pages[id] = page
    }
}
