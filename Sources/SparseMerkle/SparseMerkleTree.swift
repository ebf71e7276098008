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
    public static func apply<W: SparseWriter>(_ changes: [SparseChange], version: UInt64, writer: W) throws -> SparseNode {
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
        let newRoot = unique.isEmpty ? root : try update(root, depth: 0, prefix: .zero, changes: unique[...], reader: writer, context: &context)
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
            var start = changes.startIndex
            while start < changes.endIndex {
                let n = nibble(changes[start].keyHash, at: depth)
                var end = start + 1
                while end < changes.endIndex && nibble(changes[end].keyHash, at: depth) == n { end += 1 }
                page.slots[n] = try update(page.slots[n], depth: depth + 4, prefix: extend(prefix, depth: depth, nibble: n),
                                           changes: changes[start..<end], reader: reader, context: &context)
                start = end
            }
            return finish(page, depth: depth, prefix: prefix, context: &context)
        }
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
