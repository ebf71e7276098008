import Dispatch
public import LedgerCrypto

/// One change to the map: set `keyHash` to `value`, or remove it when `value` is nil.
public struct SparseChange: Sendable, Equatable {
    public let keyHash: Hash
    public let value: [UInt8]?
    public init(keyHash: Hash, value: [UInt8]?) {
        self.keyHash = keyHash
        self.value = value
    }
}

/// The sparse Merkle tree of DESIGN.md section 3, stored as versioned pages.
///
/// The tree is the compressed binary trie of the key set. It is stored in pages of four
/// binary levels (16 positions each); a page is written only when a batch changes it, under
/// the batch's version, so every version's root and proofs stay readable until pruned.
///
/// For example:
/// ```swift
/// let store = MemorySparseStore()
/// let root = try SparseMerkleTree.apply([SparseChange(keyHash: k, value: v)], version: 1, writer: store)
/// let proof = try SparseMerkleTree.proof(keyHash: k, version: 1, reader: store)
/// try proof.verify(root: root.hash)
/// ```
public enum SparseMerkleTree {
    /// Nanoseconds the last ``apply(_:version:writer:)`` on this thread spent in each phase
    /// (sort, update, store pages, mark stale); for benchmarks.
    @TaskLocal public static var timings: ApplyTimings? = nil

    /// Phase timings of one apply, filled when ``timings`` is set.
    public final class ApplyTimings: @unchecked Sendable {
        // Sendable: written by the one apply that the task-local hands it to.
        public var sortNs: UInt64 = 0
        public var updateNs: UInt64 = 0
        public var storeNs: UInt64 = 0
        public var staleNs: UInt64 = 0
        public var pages: Int = 0
        public init() {}
    }

    struct Context {
        let version: UInt64
        var newPages: [(PageID, SparsePage)] = []
        var stale: [PageID] = []
    }

    /// Applies `changes` as version `version` (greater than every earlier version) and
    /// returns the new root node. Later changes to the same key win.
    @discardableResult
    ///
    /// With a `snapshot` source (a store that can open read views of its committed state on
    /// other threads), large batches update the root page's subtrees on two threads.
    public static func apply<W: SparseWriter>(
        _ changes: [SparseChange], version: UInt64, writer: W, snapshot: (any SparseSnapshotSource)? = nil
    ) throws -> SparseNode {
        let clock = timings
        var mark = clock == nil ? 0 : DispatchTime.now().uptimeNanoseconds
        func lap(_ field: ReferenceWritableKeyPath<ApplyTimings, UInt64>) {
            guard let clock else { return }
            let now = DispatchTime.now().uptimeNanoseconds
            clock[keyPath: field] += now - mark
            mark = now
        }
        let previous = try writer.latestVersion()
        if let previous, version <= previous {
            throw SparseMerkleError(.versionOrder, "version \(version) is not after \(previous)")
        }
        let root = try previous.flatMap { try writer.root(version: $0) } ?? .empty
        // Sort by key hash; a stable sort keeps the input order among equal keys, and the
        // last of each run wins.
        let sorted = changes.enumerated().sorted { a, b in
            a.element.keyHash == b.element.keyHash ? a.offset < b.offset : a.element.keyHash < b.element.keyHash
        }
        var unique: [SparseChange] = []
        unique.reserveCapacity(sorted.count)
        for (_, change) in sorted {
            if let last = unique.last, last.keyHash == change.keyHash { unique[unique.count - 1] = change } else { unique.append(change) }
        }
        lap(\.sortNs)
        var context = Context(version: version)
        let newRoot: SparseNode
        if unique.isEmpty {
            newRoot = root
        } else if let snapshot, unique.count >= 2048, case .page(let rootHash, let rootVersion) = root {
            newRoot = try updateRootInParallel(rootHash: rootHash, rootVersion: rootVersion, changes: unique,
                                               writer: writer, snapshot: snapshot, context: &context)
        } else {
            newRoot = try update(root, depth: 0, prefix: .zero, changes: unique[...], reader: writer, context: &context)
        }
        lap(\.updateNs)
        context.newPages.sort { $0.0 < $1.0 }
        try writer.putPages(context.newPages)
        lap(\.storeNs)
        try writer.markStale(context.stale, at: version)
        lap(\.staleNs)
        clock?.pages += context.newPages.count
        try writer.putRoot(newRoot, version: version)
        return newRoot
    }

    /// Updates the root page's 16 subtrees on two threads, each reading from its own snapshot
    /// of the committed tree (every page a batch replaces is committed), then finishes the root
    /// page on this thread.
    static func updateRootInParallel<W: SparseWriter>(
        rootHash: Hash, rootVersion: UInt64, changes: [SparseChange], writer: W,
        snapshot: any SparseSnapshotSource, context: inout Context
    ) throws -> SparseNode {
        let rootID = PageID(version: rootVersion, depth: 0, prefix: .zero)
        var page = try writer.page(rootID, hash: rootHash)
        if rootVersion != context.version { context.stale.append(rootID) }
        // Group the sorted changes by first nibble, then split the groups in two by size.
        let groups = groupByNibble(changes[...], at: 0)
        var split = 0
        while split < groups.count && groups[split].range.upperBound <= changes.count / 2 { split += 1 }
        let job = ParallelUpdate(changes: changes, halves: [Array(groups[..<split]), Array(groups[split...])],
                                 slots: page.slots, version: context.version, snapshot: snapshot)
        DispatchQueue.concurrentPerform(iterations: 2) { job.run(half: $0) }
        for result in [job.first, job.second] {
            let part = try result.get()
            for (n, node) in part.slots { page.slots[n] = node }
            context.newPages += part.context.newPages
            context.stale += part.context.stale
        }
        return finish(page, depth: 0, prefix: .zero, context: &context)
    }

    /// The root node of `version`.
    public static func root<R: SparseReader>(version: UInt64, reader: R) throws -> SparseNode {
        guard let node = try reader.root(version: version) else {
            throw SparseMerkleError(.unknownVersion, "no retained map version at tree size \(version)")
        }
        return node
    }

    static func update<R: SparseReader>(
        _ node: SparseNode, depth: Int, prefix: Hash, changes: ArraySlice<SparseChange>,
        reader: R, context: inout Context
    ) throws -> SparseNode {
        switch node {
        case .empty, .leaf:
            // Rebuild this position from its (at most one) existing key and the changes.
            var keys: [SparseNode] = []
            keys.reserveCapacity(changes.count + 1)
            var existing: SparseNode? = node.isLeaf ? node : nil
            for change in changes {
                if let e = existing, let ek = e.keyHash, ek <= change.keyHash {
                    if ek < change.keyHash { keys.append(e) }
                    existing = nil
                }
                if let value = change.value { keys.append(.makeLeaf(keyHash: change.keyHash, value: value)) }
            }
            if let e = existing { keys.append(e) }
            return build(keys[...], depth: depth, prefix: prefix, context: &context)
        case .page(let pageHash, let pageVersion):
            let id = PageID(version: pageVersion, depth: depth, prefix: prefix)
            var page = try reader.page(id, hash: pageHash)
            if pageVersion != context.version { context.stale.append(id) }
            for group in groupByNibble(changes, at: depth) {
                let n = group.nibble
                page.slots[n] = try update(page.slots[n], depth: depth + 4, prefix: extend(prefix, depth: depth, nibble: n),
                                           changes: changes[group.range], reader: reader, context: &context)
            }
            return finish(page, depth: depth, prefix: prefix, context: &context)
        }
    }

    /// The runs of `changes` (sorted by key hash) that share the nibble at `depth`, in order.
    static func groupByNibble(_ changes: ArraySlice<SparseChange>, at depth: Int) -> [(nibble: Int, range: Range<Int>)] {
        var groups: [(nibble: Int, range: Range<Int>)] = []
        var start = changes.startIndex
        while start < changes.endIndex {
            let n = nibble(changes[start].keyHash, at: depth)
            var end = start + 1
            while end < changes.endIndex && nibble(changes[end].keyHash, at: depth) == n { end += 1 }
            groups.append((n, start..<end))
            start = end
        }
        return groups
    }

    /// The node for a sorted list of distinct keys at a page position.
    static func build(_ keys: ArraySlice<SparseNode>, depth: Int, prefix: Hash, context: inout Context) -> SparseNode {
        if keys.isEmpty { return .empty }
        if keys.count == 1 { return keys.first! }
        var page = SparsePage()
        var start = keys.startIndex
        while start < keys.endIndex {
            let n = nibble(keys[start].keyHash!, at: depth)
            var end = start + 1
            while end < keys.endIndex && nibble(keys[end].keyHash!, at: depth) == n { end += 1 }
            page.slots[n] = build(keys[start..<end], depth: depth + 4, prefix: extend(prefix, depth: depth, nibble: n), context: &context)
            start = end
        }
        return finish(page, depth: depth, prefix: prefix, context: &context)
    }

    /// Stores a changed page, or collapses it when it no longer holds two keys.
    static func finish(_ page: SparsePage, depth: Int, prefix: Hash, context: inout Context) -> SparseNode {
        var nonEmpty = 0
        var only = 0
        for (i, slot) in page.slots.enumerated() where !slot.isEmpty {
            nonEmpty += 1
            only = i
        }
        if nonEmpty == 0 { return .empty }
        if nonEmpty == 1, page.slots[only].isLeaf { return page.slots[only] }
        // Hashing the whole page once gives both its hash and the node hashes the cache keeps.
        let hashed = page.withHashTree()
        context.newPages.append((PageID(version: context.version, depth: depth, prefix: prefix), hashed))
        return .page(hash: hashed.rangeHash(0, 16), version: context.version)
    }

    /// The proof for `keyHash` against the root of `version`: inclusion when the key is
    /// present, non-inclusion otherwise.
    public static func proof<R: SparseReader>(keyHash k: Hash, version: UInt64, reader: R) throws -> SparseProof {
        var node = try root(version: version, reader: reader)
        var depth = 0
        var prefix = Hash.zero
        var siblings: [Hash] = []
        siblings.reserveCapacity(32)
        while true {
            switch node {
            case .empty:
                return SparseProof(keyHash: k, terminal: .empty, siblings: siblings.reversed())
            case .leaf(let other, let value, _):
                let terminal = SparseProof.Terminal.leaf(keyHash: other, valueHash: SHA256.hash(value))
                return SparseProof(keyHash: k, terminal: terminal, siblings: siblings.reversed(), value: other == k ? value : nil)
            case .page(let h, let v):
                let page = try reader.page(PageID(version: v, depth: depth, prefix: prefix), hash: h)
                var lo = 0, hi = 16
                for step in 0..<4 {
                    if step > 0 {
                        // Stop early where the range holds no key or a single leaf.
                        var nonEmpty = 0, only = lo
                        for i in lo..<hi where !page.slots[i].isEmpty { nonEmpty += 1; only = i }
                        if nonEmpty == 0 {
                            return SparseProof(keyHash: k, terminal: .empty, siblings: siblings.reversed())
                        }
                        if nonEmpty == 1, case .leaf(let other, let value, _) = page.slots[only] {
                            let terminal = SparseProof.Terminal.leaf(keyHash: other, valueHash: SHA256.hash(value))
                            return SparseProof(keyHash: k, terminal: terminal, siblings: siblings.reversed(), value: other == k ? value : nil)
                        }
                    }
                    let mid = (lo + hi) / 2
                    if keyBit(k, depth + step) == 0 {
                        siblings.append(page.rangeHash(mid, hi))
                        hi = mid
                    } else {
                        siblings.append(page.rangeHash(lo, mid))
                        lo = mid
                    }
                }
                node = page.slots[lo]
                prefix = extend(prefix, depth: depth, nibble: lo)
                depth += 4
            }
        }
    }

    /// The value of `keyHash` at `version`, or nil when absent.
    public static func value<R: SparseReader>(keyHash k: Hash, version: UInt64, reader: R) throws -> [UInt8]? {
        var node = try root(version: version, reader: reader)
        var depth = 0
        var prefix = Hash.zero
        while true {
            switch node {
            case .empty: return nil
            case .leaf(let other, let value, _): return other == k ? value : nil
            case .page(let h, let v):
                let page = try reader.page(PageID(version: v, depth: depth, prefix: prefix), hash: h)
                let n = nibble(k, at: depth)
                node = page.slots[n]
                prefix = extend(prefix, depth: depth, nibble: n)
                depth += 4
            }
        }
    }
}

/// A store that can lend read views of its committed state on any thread.
public protocol SparseSnapshotSource: Sendable {
    /// Runs `body` with a reader over the last committed state.
    func withSnapshot<R>(_ body: (any SparseReader) throws -> R) throws -> R
}

/// One parallel root update: two workers, each writing only its own result.
final class ParallelUpdate: @unchecked Sendable {
    // Sendable: the inputs are read-only; worker 0 writes only `first`, worker 1 only
    // `second`, and the caller reads them after concurrentPerform returns.
    struct Part {
        var slots: [(Int, SparseNode)] = []
        var context: SparseMerkleTree.Context
    }

    let changes: [SparseChange]
    let halves: [[(nibble: Int, range: Range<Int>)]]
    let slots: [SparseNode]
    let version: UInt64
    let snapshot: any SparseSnapshotSource
    var first: Result<Part, any Error>
    var second: Result<Part, any Error>

    init(changes: [SparseChange], halves: [[(nibble: Int, range: Range<Int>)]], slots: [SparseNode],
         version: UInt64, snapshot: any SparseSnapshotSource) {
        self.changes = changes
        self.halves = halves
        self.slots = slots
        self.version = version
        self.snapshot = snapshot
        self.first = .success(Part(context: .init(version: version)))
        self.second = .success(Part(context: .init(version: version)))
    }

    func run(half: Int) {
        let result = Result { () throws -> Part in
            try snapshot.withSnapshot { reader in
                var part = Part(context: .init(version: version))
                for group in halves[half] {
                    let node = try SparseMerkleTree.update(
                        slots[group.nibble], depth: 4, prefix: extend(.zero, depth: 0, nibble: group.nibble),
                        changes: changes[group.range], reader: reader, context: &part.context)
                    part.slots.append((group.nibble, node))
                }
                return part
            }
        }
        if half == 0 { first = result } else { second = result }
    }
}
