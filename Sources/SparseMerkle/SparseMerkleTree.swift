import Dispatch
import Foundation
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
        /// Time the LMDB store spent putting the committed pages into its cache (`publish`).
        public var publishNs: UInt64 = 0
        public var pages: Int = 0
        /// Of ``pages``, those written as deltas.
        public var deltaPages: Int = 0
        /// Bytes of page records written.
        public var pageBytes: Int = 0
        /// Interior node hashes computed inside pages.
        public var hashes: Int = 0
        /// Per page depth / 4: records written, of them deltas, and their bytes.
        public var byLevel: [(records: Int, deltas: Int, bytes: Int)] = Array(repeating: (0, 0, 0), count: 65)
        public init() {}
    }

    /// Applies `changes` as version `version` (greater than every earlier version) and
    /// returns the new root node. Later changes to the same key win.
    @discardableResult
    public static func apply<W: SparseWriter>(_ changes: [SparseChange], version: UInt64, writer: W) throws -> SparseNode {
        try applyChanges(changes, version: version, writer: writer, snapshot: Optional<LMDBSparseStore>.none)
    }

    /// Applies `changes` as version `version`; a batch of at least ``parallelApplyThreshold``
    /// distinct keys under a root page updates the root page's subtrees on two threads, each
    /// reading its own snapshot of the committed tree from `snapshot`.
    @discardableResult
    public static func apply<W: SparseWriter, S: SparseSnapshotSource>(
        _ changes: [SparseChange], version: UInt64, writer: W, snapshot: S?
    ) throws -> SparseNode {
        try applyChanges(changes, version: version, writer: writer, snapshot: snapshot)
    }

    /// Batches of at least this many distinct keys update the root page's subtrees on two threads.
    static let parallelApplyThreshold = 512

    // Concrete entry points for the two stores: callers in other modules reach the generic
    // functions unspecialized (every page access through a witness table and runtime
    // generic metadata); these let the compiler specialize the whole walk here.

    /// ``apply(_:version:writer:snapshot:)`` over LMDB.
    @discardableResult
    public static func apply(_ changes: [SparseChange], version: UInt64, writer: LMDBSparseStore.View,
                             snapshot: LMDBSparseStore? = nil) throws -> SparseNode {
        try applyChanges(changes, version: version, writer: writer, snapshot: snapshot)
    }

    /// ``apply(_:version:writer:)`` in memory.
    @discardableResult
    public static func apply(_ changes: [SparseChange], version: UInt64, writer: MemorySparseStore) throws -> SparseNode {
        try applyChanges(changes, version: version, writer: writer, snapshot: Optional<LMDBSparseStore>.none)
    }

    /// ``proof(keyHash:version:reader:)`` over LMDB.
    public static func proof(keyHash k: Hash, version: UInt64, reader: LMDBSparseStore.View) throws -> SparseProof {
        try reader.healingStaleCache { try proofOf(k, version: version, reader: reader) }
    }

    /// ``value(keyHash:version:reader:)`` over LMDB.
    public static func value(keyHash k: Hash, version: UInt64, reader: LMDBSparseStore.View) throws -> [UInt8]? {
        try reader.healingStaleCache { try valueOf(k, version: version, reader: reader) }
    }

    /// The changes of one batch, sorted by key hash with one change per key, values copied
    /// into the batch's arena and leaf hashes computed.
    struct Prepared {
        var keyHash: Hash
        var leafHash: Hash
        var value: UnsafeRawBufferPointer
        var isSet: Bool

        var leaf: NodeRef { .leaf(keyHash: keyHash, leafHash: leafHash, value: value) }
    }

    /// What one thread of an apply produces. Outputs are pooled (``OutputPool``) so that the
    /// scratch frames and the arrays' capacity carry over from batch to batch.
    final class Output {
        // An output belongs to one thread of an apply at a time and no access to these
        // overlaps another: the runtime's exclusivity bookkeeping, paid per page, is off.
        @exclusivity(unchecked) private(set) var version: UInt64
        @exclusivity(unchecked) private(set) var arena = Arena()
        let frames = Frames()
        /// The frames' storage, read without touching `frames` on the hot path.
        let slotFrames: UnsafeMutablePointer<NodeRef>
        let treeFrames: UnsafeMutablePointer<Hash>
        /// Per depth / 4, the pages finished, in prefix order.
        @exclusivity(unchecked) var newPages: [[NewPage]] = []
        @exclusivity(unchecked) var stale: [PageID] = []
        /// The stale lists of all an apply's outputs merged, and scratch for the merge.
        @exclusivity(unchecked) var mergedStale: [PageID] = []
        @exclusivity(unchecked) var staleScratch: [PageID] = []
        /// Interior hashes computed, for the benchmarks' phase figures.
        @exclusivity(unchecked) var hashes = 0
        init(version: UInt64) {
            self.version = version
            slotFrames = frames.slots
            treeFrames = frames.trees
        }

        /// The slots of the page at `depth`, as the last page at that depth left them (for a
        /// caller that writes all 16).
        @inline(__always)
        func slots(depth: Int) -> UnsafeMutablePointer<NodeRef> { slotFrames + 16 * (depth / 4) }

        /// The slots of the page at `depth`, all empty.
        @inline(__always)
        func emptySlots(depth: Int) -> UnsafeMutablePointer<NodeRef> {
            let frame = slots(depth: depth)
            for i in 0..<16 { frame[i] = .empty }
            return frame
        }

        /// The node-hash scratch of the page at `depth`.
        @inline(__always)
        func tree(depth: Int) -> UnsafeMutablePointer<Hash> { treeFrames + 32 * (depth / 4) }

        func append(_ page: NewPage) {
            let level = page.id.depth / 4
            while newPages.count <= level { newPages.append([]) }
            newPages[level].append(page)
        }

        var pageCount: Int { newPages.reduce(0) { $0 + $1.count } }

        /// Empties the output for another apply, releasing its arena.
        func reset(version: UInt64) {
            self.version = version
            arena = Arena()
            for level in newPages.indices { newPages[level].removeAll(keepingCapacity: true) }
            stale.removeAll(keepingCapacity: true)
            mergedStale.removeAll(keepingCapacity: true)
            staleScratch.removeAll(keepingCapacity: true)
            hashes = 0
        }
    }

    /// Outputs kept between applies.
    final class OutputPool: @unchecked Sendable {
        // Sendable: `lock` guards `idle`.
        static let shared = OutputPool()
        private let lock = NSLock()
        private var idle: [Output] = []

        func take(version: UInt64) -> Output {
            lock.lock()
            let output = idle.popLast()
            lock.unlock()
            guard let output else { return Output(version: version) }
            output.reset(version: version)
            return output
        }

        /// Returns outputs whose pages are stored (or abandoned); at most 20 are kept (a
        /// parallel apply uses one per root-page slot and one for the root).
        func give(_ outputs: [Output]) {
            for output in outputs { output.reset(version: 0) }
            lock.lock()
            idle += outputs.prefix(max(0, 20 - idle.count))
            lock.unlock()
        }
    }

    static func applyChanges<W: SparseWriter, S: SparseSnapshotSource>(
        _ changes: [SparseChange], version: UInt64, writer: W, snapshot: S?
    ) throws -> SparseNode {
        let clock = timings
        var mark = clock == nil ? 0 : DispatchTime.now().uptimeNanoseconds
        func lap(_ field: ReferenceWritableKeyPath<ApplyTimings, UInt64>) {
            guard let clock else { return }
            let now = DispatchTime.now().uptimeNanoseconds
            clock[keyPath: field] += now - mark
            mark = now
        }
        try writer.beginApply()
        let previous = try writer.latestVersion()
        if let previous, version <= previous {
            throw SparseMerkleError(.versionOrder, "version \(version) is not after \(previous)")
        }
        for change in changes where (change.value?.count ?? 0) > Int(UInt16.max) {
            throw SparseMerkleError(.malformed, "a value of \(change.value!.count) bytes is longer than 65,535")
        }
        let rootNode = try previous.flatMap { try writer.root(version: $0) } ?? .empty
        let output = OutputPool.shared.take(version: version)
        var outputs = [output]
        // Once stored, the pages (and the outputs they live in) belong to the batch object.
        var handedOver = false
        defer { if !handedOver { OutputPool.shared.give(outputs) } }
        let prepared = prepare(changes, arena: output.arena)
        lap(\.sortNs)
        let root: NodeRef
        switch rootNode {
        case .empty: root = .empty
        case .page(let h, let v): root = .page(hash: h, version: v)
        case .leaf(let k, let value, let h):
            root = .leaf(keyHash: k, leafHash: h, value: value.withUnsafeBytes { output.arena.copy($0) })
        }
        let newRoot = try prepared.withUnsafeBufferPointer { changes -> NodeRef in
            if changes.isEmpty { return root }
            if let snapshot, changes.count >= parallelApplyThreshold, root.kind == .page {
                let (node, workers) = try updateRootInParallel(root, changes: changes, writer: writer, snapshot: snapshot, output: output)
                outputs += workers
                return node
            }
            return try update(root, depth: 0, prefix: .zero, changes, 0..<changes.count, reader: writer, output: output)
        }
        lap(\.updateNs)
        output.stale.sort()
        handedOver = true
        // The workers' parts of the key space (in nibble order) come before the root page the
        // caller finished.
        let batch = NewPages(owners: outputs.count == 1 ? outputs : Array(outputs.dropFirst()) + [output],
                             version: version, rootHash: newRoot.hash)
        // The outputs (stale lists, the root's bytes) are read below: the batch keeps them.
        defer { withExtendedLifetime(batch) {} }
        assert({
            var previous: PageID?
            var ordered = true
            batch.forEach { page in
                if let previous, !(previous < page.id) { ordered = false }
                previous = page.id
            }
            return ordered
        }(), "pages are stored in key order")
        try writer.putPages(batch)
        lap(\.storeNs)
        mergeSorted(outputs.map(\.stale), into: &output.mergedStale, scratch: &output.staleScratch)
        try writer.markStale(output.mergedStale, at: version)
        lap(\.staleNs)
        if let clock {
            batch.forEach { page in
                let isDelta = page.bytes.first == PageRecord.delta
                clock.pages += 1
                clock.pageBytes += page.bytes.count
                if isDelta { clock.deltaPages += 1 }
                clock.byLevel[page.id.depth / 4].records += 1
                clock.byLevel[page.id.depth / 4].deltas += isDelta ? 1 : 0
                clock.byLevel[page.id.depth / 4].bytes += page.bytes.count
            }
            for part in outputs { clock.hashes += part.hashes }
        }
        let result = newRoot.node
        try writer.putRoot(result, version: version)
        return result
    }

    /// Merges the sorted lists `lists` (each output sorts its own, on its own thread) into
    /// `merged` through a binary heap of the lists' heads (a parallel apply has 17 lists).
    /// `merged` and `scratch` keep their capacity from batch to batch: fresh memory for them
    /// cost more in page faults than the merge.
    static func mergeSorted(_ lists: [[PageID]], into merged: inout [PageID], scratch all: inout [PageID]) {
        merged.removeAll(keepingCapacity: true)
        let lists = lists.filter { !$0.isEmpty }
        guard lists.count > 1 else {
            merged += lists.first ?? []
            return
        }
        all.removeAll(keepingCapacity: true)
        for list in lists { all += list }
        // Per list, its next position and its end in `all`; `heap` orders the undrained
        // lists by their next element.
        var next: [Int] = [], end: [Int] = []
        var at = 0
        for list in lists {
            next.append(at)
            at += list.count
            end.append(at)
        }
        merged.reserveCapacity(all.count)
        all.withUnsafeBufferPointer { all in
            next.withUnsafeMutableBufferPointer { next in
                var heap = Array(lists.indices)
                heap.withUnsafeMutableBufferPointer { heap in
                    var count = heap.count
                    func siftDown(_ start: Int) {
                        var i = start
                        let item = heap[i], key = all[next[item]]
                        while true {
                            var child = 2 * i + 1
                            if child >= count { break }
                            if child + 1 < count && all[next[heap[child + 1]]] < all[next[heap[child]]] { child += 1 }
                            guard all[next[heap[child]]] < key else { break }
                            heap[i] = heap[child]
                            i = child
                        }
                        heap[i] = item
                    }
                    for i in stride(from: count / 2 - 1, through: 0, by: -1) { siftDown(i) }
                    while count > 0 {
                        let top = heap[0]
                        merged.append(all[next[top]])
                        next[top] += 1
                        if next[top] == end[top] {
                            count -= 1
                            heap[0] = heap[count]
                        }
                        if count > 0 { siftDown(0) }
                    }
                }
            }
        }
    }

    /// Sorts `changes` by key hash (the last change to a key wins), copies their values into
    /// `arena` and hashes their leaves, on two threads for large batches.
    static func prepare(_ changes: [SparseChange], arena: Arena) -> [Prepared] {
        let order = sortedOrder(changes)
        var prepared: [Prepared] = []
        prepared.reserveCapacity(order.count)
        for i in order {
            let change = changes[i]
            let value = change.value.map { v in v.withUnsafeBytes { arena.copy($0) } } ?? UnsafeRawBufferPointer(start: nil, count: 0)
            let entry = Prepared(keyHash: change.keyHash, leafHash: .zero, value: value, isSet: change.value != nil)
            if let last = prepared.last, last.keyHash == change.keyHash { prepared[prepared.count - 1] = entry } else { prepared.append(entry) }
        }
        prepared.withUnsafeMutableBufferPointer { buffer in
            let job = LeafHashing(buffer)
            let workers = buffer.count >= 2048 ? 2 : 1
            if workers == 1 { job.run(0, of: 1) } else { DispatchQueue.concurrentPerform(iterations: workers) { job.run($0, of: workers) } }
        }
        return prepared
    }

    /// The indexes of `changes` ordered by key hash, ties in their order; large batches sort
    /// their two halves on two threads and merge them.
    static func sortedOrder(_ changes: [SparseChange]) -> [Int] {
        func before(_ a: Int, _ b: Int) -> Bool {
            let ka = changes[a].keyHash, kb = changes[b].keyHash
            return ka == kb ? a < b : ka < kb
        }
        guard changes.count >= 4096 else { return changes.indices.sorted(by: before) }
        let half = changes.count / 2
        let job = HalfSort(count: changes.count, half: half, before: before)
        DispatchQueue.concurrentPerform(iterations: 2) { job.run($0) }
        var order: [Int] = []
        order.reserveCapacity(changes.count)
        var a = 0, b = 0
        let left = job.left, right = job.right
        while a < left.count && b < right.count {
            if before(right[b], left[a]) { order.append(right[b]); b += 1 } else { order.append(left[a]); a += 1 }
        }
        order += left[a...]
        order += right[b...]
        return order
    }

    /// The two halves of ``sortedOrder(_:)``, each written by its own worker.
    final class HalfSort: @unchecked Sendable {
        // Sendable: worker 0 writes only `left`, worker 1 only `right`; the caller reads them
        // after concurrentPerform returns, and `before` only reads the caller's changes.
        let count: Int
        let half: Int
        let before: (Int, Int) -> Bool
        var left: [Int] = []
        var right: [Int] = []

        init(count: Int, half: Int, before: @escaping (Int, Int) -> Bool) {
            self.count = count
            self.half = half
            self.before = before
        }

        func run(_ worker: Int) {
            if worker == 0 { left = (0..<half).sorted(by: before) } else { right = (half..<count).sorted(by: before) }
        }
    }

    /// Hashes the leaves of prepared changes, each worker its own share.
    final class LeafHashing: @unchecked Sendable {
        // Sendable: workers write disjoint index ranges of `buffer`, which outlives them.
        let buffer: UnsafeMutableBufferPointer<Prepared>
        init(_ buffer: UnsafeMutableBufferPointer<Prepared>) { self.buffer = buffer }

        func run(_ worker: Int, of workers: Int) {
            let lo = buffer.count * worker / workers, hi = buffer.count * (worker + 1) / workers
            for i in lo..<hi where buffer[i].isSet {
                buffer[i].leafHash = SparseHash.leaf(keyHash: buffer[i].keyHash, valueHash: SHA256.hash(buffer[i].value))
            }
        }
    }

    /// Updates the root page's 16 subtrees on two threads, each reading from its own snapshot
    /// of the committed tree (every page a batch replaces is committed), then finishes the root
    /// page on this thread.
    static func updateRootInParallel<W: SparseWriter, S: SparseSnapshotSource>(
        _ root: NodeRef, changes: UnsafeBufferPointer<Prepared>, writer: W, snapshot: S, output: Output
    ) throws -> (NodeRef, [Output]) {
        let rootID = PageID(version: root.version, depth: 0, prefix: .zero)
        return try writer.withPage(rootID, hash: root.hash) { lent in
            guard let page = PageSlots(lent) else { throw damagedPage(rootID) }
            let slots = output.slots(depth: 0)
            page.readSlots(into: slots)
            // One task per first nibble, each with its own output (so the pages of each part
            // stay in key order); two workers take the tasks in turn, which keeps them busy
            // to the end where a fixed split in two halves left one idle for a sixth of it.
            let groups = groupByNibble(changes, 0..<changes.count, at: 0)
            let job = ParallelUpdate(changes: changes, groups: groups, slots: UnsafePointer(slots),
                                     version: output.version, snapshot: snapshot)
            DispatchQueue.concurrentPerform(iterations: 2) { _ in job.run() }
            var dirty: UInt16 = 0
            var workers: [Output] = []
            for part in try job.parts() {
                slots[part.nibble] = part.node
                dirty |= 1 << part.nibble
                workers.append(part.output)
            }
            let replacing = Replacing(id: rootID, page: page)
            return (finish(slots, dirty: dirty, old: lent.tree, depth: 0, prefix: .zero, replacing: replacing, output: output), workers)
        }
    }

    static func damagedPage(_ id: PageID) -> SparseMerkleError {
        SparseMerkleError(.missingData, "unreadable page at depth \(id.depth) of version \(id.version)")
    }

    /// The root node of `version`.
    public static func root<R: SparseReader>(version: UInt64, reader: R) throws -> SparseNode {
        guard let node = try reader.root(version: version) else {
            throw SparseMerkleError(.unknownVersion, "no retained map version at tree size \(version)")
        }
        return node
    }

    static func update<R: SparseReader>(
        _ node: NodeRef, depth: Int, prefix: Hash, _ changes: UnsafeBufferPointer<Prepared>, _ range: Range<Int>,
        reader: R, output: Output
    ) throws -> NodeRef {
        switch node.kind {
        case .empty:
            return build(existing: nil, depth: depth, prefix: prefix, changes, range, output: output)
        case .leaf:
            return build(existing: node, depth: depth, prefix: prefix, changes, range, output: output)
        case .page:
            let id = PageID(version: node.version, depth: depth, prefix: prefix)
            return try reader.withPage(id, hash: node.hash) { lent in
                guard let page = PageSlots(lent) else { throw damagedPage(id) }
                let slots = output.slots(depth: depth)
                page.readSlots(into: slots)
                var dirty: UInt16 = 0
                var start = range.lowerBound
                while start < range.upperBound {
                    let n = nibble(changes[start].keyHash, at: depth)
                    var end = start + 1
                    while end < range.upperBound && nibble(changes[end].keyHash, at: depth) == n { end += 1 }
                    slots[n] = try update(slots[n], depth: depth + 4, prefix: extend(prefix, depth: depth, nibble: n),
                                          changes, start..<end, reader: reader, output: output)
                    dirty |= 1 << n
                    start = end
                }
                return finish(slots, dirty: dirty, old: lent.tree, depth: depth, prefix: prefix,
                              replacing: Replacing(id: id, page: page), output: output)
            }
        }
    }

    /// The runs of `changes[range]` (sorted by key hash) that share the nibble at `depth`, in order.
    static func groupByNibble(_ changes: UnsafeBufferPointer<Prepared>, _ range: Range<Int>, at depth: Int) -> [(nibble: Int, range: Range<Int>)] {
        var groups: [(nibble: Int, range: Range<Int>)] = []
        var start = range.lowerBound
        while start < range.upperBound {
            let n = nibble(changes[start].keyHash, at: depth)
            var end = start + 1
            while end < range.upperBound && nibble(changes[end].keyHash, at: depth) == n { end += 1 }
            groups.append((n, start..<end))
            start = end
        }
        return groups
    }

    /// The node at a position that held no page: its one existing leaf (if any) with the
    /// changes applied, all under this position's prefix.
    static func build(
        existing: NodeRef?, depth: Int, prefix: Hash, _ changes: UnsafeBufferPointer<Prepared>, _ range: Range<Int>,
        output: Output
    ) -> NodeRef {
        var existing = existing
        if let e = existing, contains(changes, range, e.keyHash) { existing = nil }
        var count = existing == nil ? 0 : 1
        var single = -1
        for i in range where changes[i].isSet {
            count += 1
            single = i
            if count > 1 { break }
        }
        if count == 0 { return .empty }
        if count == 1 { return existing ?? changes[single].leaf }
        let slots = output.emptySlots(depth: depth)
        let existingNibble = existing.map { nibble($0.keyHash, at: depth) } ?? -1
        if let existing { slots[existingNibble] = existing }
        var start = range.lowerBound
        while start < range.upperBound {
            let n = nibble(changes[start].keyHash, at: depth)
            var end = start + 1
            while end < range.upperBound && nibble(changes[end].keyHash, at: depth) == n { end += 1 }
            slots[n] = build(existing: n == existingNibble ? existing : nil, depth: depth + 4,
                             prefix: extend(prefix, depth: depth, nibble: n), changes, start..<end, output: output)
            start = end
        }
        return finish(slots, dirty: 0xffff, old: nil, depth: depth, prefix: prefix, replacing: nil, output: output)
    }

    /// Whether the sorted `changes[range]` hold a change to `keyHash`.
    static func contains(_ changes: UnsafeBufferPointer<Prepared>, _ range: Range<Int>, _ keyHash: Hash) -> Bool {
        var lo = range.lowerBound, hi = range.upperBound
        while lo < hi {
            let mid = (lo + hi) / 2
            if changes[mid].keyHash < keyHash { lo = mid + 1 } else { hi = mid }
        }
        return lo < range.upperBound && changes[lo].keyHash == keyHash
    }

    /// The stored record a changed page replaces: a full page, or a delta over a full base.
    struct Replacing {
        let id: PageID
        /// The delta's base version, nil when the record is full.
        let baseVersion: UInt64?
        /// Slots the record's delta replaces (0 for a full record).
        let changed: UInt16

        init(id: PageID, page: PageSlots) {
            self.id = id
            baseVersion = page.baseVersion
            changed = page.changed
        }

        /// Appends to `stale` the records this one leaves behind when the position gets a
        /// full page or none (without an array per page).
        func appendRecords(to stale: inout [PageID]) {
            stale.append(id)
            if let baseVersion { stale.append(PageID(version: baseVersion, depth: id.depth, prefix: id.prefix)) }
        }
    }

    /// Stores a changed page, or collapses it when it no longer holds two keys. `old` is the
    /// page's interior node hashes before the slots in `dirty` changed, when known; `replacing`
    /// is the record the page had before this version, if any.
    ///
    /// A page that replaces a record is written as a delta over that record's full base when
    /// the delta (every slot that differs from the base) is at most half the size of the full
    /// page; otherwise in full. Either way the records no version from this one on uses are
    /// marked stale: the replaced delta, and the base once a full page supersedes it.
    static func finish(
        _ slots: UnsafeMutablePointer<NodeRef>, dirty: UInt16, old: UnsafePointer<Hash>?, depth: Int, prefix: Hash,
        replacing: Replacing?, output: Output
    ) -> NodeRef {
        var nonEmpty = 0
        var only = 0
        var fullSize = PageRecord.fullHeader
        for i in 0..<16 where slots[i].kind != .empty {
            nonEmpty += 1
            only = i
            fullSize += slots[i].encodedSize
        }
        if nonEmpty == 0 || (nonEmpty == 1 && slots[only].kind == .leaf) {
            if let replacing { replacing.appendRecords(to: &output.stale) }
            if nonEmpty == 0 { return .empty }
            // The leaf moves up out of this page: its value must outlive the page's bytes.
            var leaf = slots[only]
            leaf.value = output.arena.copy(leaf.value)
            return leaf
        }
        let tree = output.tree(depth: depth)
        output.hashes += PageHashing.tree(slots, old: old, dirty: dirty, into: tree)
        let id = PageID(version: output.version, depth: depth, prefix: prefix)
        // The output holds its arena for the whole apply: no reference count per page.
        unowned(unsafe) let arena = output.arena
        func full() -> UnsafeRawBufferPointer {
            let bytes = arena.allocate(fullSize)
            PageHashing.encodeFull(slots, into: bytes)
            return UnsafeRawBufferPointer(bytes)
        }
        var record: UnsafeRawBufferPointer
        var baseVersion: UInt64? = nil
        var changed: UInt16 = 0
        if let replacing {
            let base = replacing.baseVersion ?? replacing.id.version
            let delta = replacing.changed | dirty
            let deltaSize = PageHashing.deltaSize(slots, changed: delta)
            if deltaSize * PageRecord.deltaDenominator <= fullSize * PageRecord.deltaNumerator {
                let bytes = arena.allocate(deltaSize)
                PageHashing.encodeDelta(slots, base: base, changed: delta, into: bytes)
                record = UnsafeRawBufferPointer(bytes)
                baseVersion = base
                changed = delta
                if replacing.baseVersion != nil { output.stale.append(replacing.id) }
            } else {
                record = full()
                replacing.appendRecords(to: &output.stale)
            }
        } else {
            record = full()
        }
        if depth <= HotPageCache.depth {
            // What the cache keeps once the batch commits: the page merged, and its hashes.
            let merged = baseVersion == nil ? record : full()
            output.append(NewPage(id: id, bytes: record, merged: merged, tree: arena.copy(tree: tree),
                                  baseVersion: baseVersion, changed: changed))
        } else {
            output.append(NewPage(id: id, bytes: record, merged: nil, tree: nil, baseVersion: nil, changed: 0))
        }
        return .page(hash: tree[1], version: output.version)
    }

    /// Refuses a prune point past the newest version `latest`: pruning before it would keep
    /// no version, and the next apply would start from an empty map.
    static func checkPrunePoint(_ version: UInt64, latest: UInt64) throws {
        guard version <= latest else {
            throw SparseMerkleError(.versionOrder, "cannot prune before \(version): the newest version is \(latest), which must be kept")
        }
    }

    /// The proof for `keyHash` against the root of `version`: inclusion when the key is
    /// present, non-inclusion otherwise.
    public static func proof<R: SparseReader>(keyHash k: Hash, version: UInt64, reader: R) throws -> SparseProof {
        try proofOf(k, version: version, reader: reader)
    }

    static func proofOf<R: SparseReader>(_ k: Hash, version: UInt64, reader: R) throws -> SparseProof {
        var siblings: [Hash] = []
        siblings.reserveCapacity(40)
        switch try root(version: version, reader: reader) {
        case .empty:
            return SparseProof(keyHash: k, terminal: .empty, siblings: [])
        case .leaf(let other, let value, _):
            return value.withUnsafeBytes { terminalProof(k, other: other, value: $0, siblings: &siblings) }
        case .page(let h, let v):
            return try proof(k, page: PageID(version: v, depth: 0, prefix: .zero), hash: h, reader: reader, siblings: &siblings)
        }
    }

    static func terminalProof(_ k: Hash, other: Hash, value: UnsafeRawBufferPointer, siblings: inout [Hash]) -> SparseProof {
        let terminal = SparseProof.Terminal.leaf(keyHash: other, valueHash: SHA256.hash(value))
        return SparseProof(keyHash: k, terminal: terminal, siblings: siblings.reversed(), value: other == k ? Array(value) : nil)
    }

    /// Where one page of a walk down the tree leads: an answer, or the next page.
    enum WalkStep<T> {
        case done(T)
        case next(PageID, Hash)
    }

    /// Walks down from page `id`, one page at a time: each page is read through
    /// ``SparseReader/peekPage(_:hash:_:)`` (a cached page in place, without a copy), and the
    /// walk moves to the page `step` names only after that read returns.
    static func walk<R: SparseReader, T>(
        from id: PageID, hash: Hash, reader: R, _ step: (PageID, LentPage) throws -> WalkStep<T>
    ) throws -> T {
        var (id, hash) = (id, hash)
        while true {
            switch try reader.peekPage(id, hash: hash, { try step(id, $0) }) {
            case .done(let answer): return answer
            case .next(let child, let childHash): (id, hash) = (child, childHash)
            }
        }
    }

    /// The walk from `id` down to `k`'s terminal.
    static func proof<R: SparseReader>(
        _ k: Hash, page id: PageID, hash: Hash, reader: R, siblings: inout [Hash]
    ) throws -> SparseProof {
        try walk(from: id, hash: hash, reader: reader) { id, lent -> WalkStep<SparseProof> in
            guard let view = PageSlots(lent) else { throw damagedPage(id) }
            var lo = 0, hi = 16
            for step in 0..<4 {
                if step > 0 {
                    // Stop early where the range holds no key or a single leaf.
                    let inRange = view.occupied & PageHashing.mask(lo, hi)
                    if inRange == 0 { return .done(SparseProof(keyHash: k, terminal: .empty, siblings: siblings.reversed())) }
                    if inRange.nonzeroBitCount == 1, view.leaves & inRange != 0 {
                        let leaf = view.slot(inRange.trailingZeroBitCount)
                        return .done(terminalProof(k, other: leaf.keyHash, value: leaf.value, siblings: &siblings))
                    }
                }
                let mid = (lo + hi) / 2
                if keyBit(k, id.depth + step) == 0 {
                    siblings.append(view.rangeHash(mid, hi, tree: lent.tree))
                    hi = mid
                } else {
                    siblings.append(view.rangeHash(lo, mid, tree: lent.tree))
                    lo = mid
                }
            }
            let slot = view.slot(lo)
            switch slot.kind {
            case .empty: return .done(SparseProof(keyHash: k, terminal: .empty, siblings: siblings.reversed()))
            case .leaf: return .done(terminalProof(k, other: slot.keyHash, value: slot.value, siblings: &siblings))
            case .page:
                return .next(PageID(version: slot.version, depth: id.depth + 4, prefix: extend(id.prefix, depth: id.depth, nibble: lo)), slot.hash)
            }
        }
    }

    /// The value of `keyHash` at `version`, or nil when absent.
    public static func value<R: SparseReader>(keyHash k: Hash, version: UInt64, reader: R) throws -> [UInt8]? {
        try valueOf(k, version: version, reader: reader)
    }

    static func valueOf<R: SparseReader>(_ k: Hash, version: UInt64, reader: R) throws -> [UInt8]? {
        switch try root(version: version, reader: reader) {
        case .empty: return nil
        case .leaf(let other, let value, _): return other == k ? value : nil
        case .page(let h, let v): return try value(k, page: PageID(version: v, depth: 0, prefix: .zero), hash: h, reader: reader)
        }
    }

    static func value<R: SparseReader>(_ k: Hash, page id: PageID, hash: Hash, reader: R) throws -> [UInt8]? {
        try walk(from: id, hash: hash, reader: reader) { id, lent -> WalkStep<[UInt8]?> in
            guard let view = PageSlots(lent) else { throw damagedPage(id) }
            let n = nibble(k, at: id.depth)
            let slot = view.slot(n)
            switch slot.kind {
            case .empty: return .done(nil)
            case .leaf: return .done(slot.keyHash == k ? Array(slot.value) : nil)
            case .page:
                return .next(PageID(version: slot.version, depth: id.depth + 4, prefix: extend(id.prefix, depth: id.depth, nibble: n)), slot.hash)
            }
        }
    }
}

/// A store that can lend read views of its committed state on any thread.
public protocol SparseSnapshotSource: Sendable {
    associatedtype Snapshot: SparseReader
    /// Runs `body` with a reader over the last committed state.
    func withSnapshot<R>(_ body: (Snapshot) throws -> R) throws -> R
}

/// One parallel root update: the root page's changed subtrees as tasks, taken in turn by
/// the workers, each task writing only its own result and output.
final class ParallelUpdate<S: SparseSnapshotSource>: @unchecked Sendable {
    // Sendable: the inputs are read-only and outlive the workers; `lock` guards `next`, and
    // each task's result is written only by the worker that took it; the caller reads them
    // after concurrentPerform returns.
    struct Part {
        let nibble: Int
        let node: NodeRef
        let output: SparseMerkleTree.Output
    }

    let changes: UnsafeBufferPointer<SparseMerkleTree.Prepared>
    let groups: [(nibble: Int, range: Range<Int>)]
    /// The root page's slots, owned by the caller's frames until the workers finish.
    let slots: UnsafePointer<NodeRef>
    let version: UInt64
    let snapshot: S
    private let lock = NSLock()
    private var next = 0
    /// One result per task, written only by the worker that took it. Raw memory, not an
    /// array: two threads writing elements of one array race on its copy-on-write check.
    private let results: UnsafeMutablePointer<Result<Part, any Error>?>

    init(changes: UnsafeBufferPointer<SparseMerkleTree.Prepared>, groups: [(nibble: Int, range: Range<Int>)],
         slots: UnsafePointer<NodeRef>, version: UInt64, snapshot: S) {
        self.changes = changes
        self.groups = groups
        self.slots = slots
        self.version = version
        self.snapshot = snapshot
        results = .allocate(capacity: groups.count)
        results.initialize(repeating: nil, count: groups.count)
    }

    deinit {
        results.deinitialize(count: groups.count)
        results.deallocate()
    }

    /// The next task's index, nil when all are taken.
    private func take() -> Int? {
        lock.lock()
        defer { lock.unlock() }
        guard next < groups.count else { return nil }
        next += 1
        return next - 1
    }

    /// Runs tasks until none is left, all in one snapshot.
    func run() {
        do {
            try snapshot.withSnapshot { reader in
                while let task = take() {
                    let group = groups[task]
                    let output = SparseMerkleTree.OutputPool.shared.take(version: version)
                    results[task] = Result {
                        var node = try SparseMerkleTree.update(
                            slots[group.nibble], depth: 4, prefix: extend(.zero, depth: 0, nibble: group.nibble),
                            changes, group.range, reader: reader, output: output)
                        // A leaf may point into this worker's read transaction, which ends here.
                        if node.kind == .leaf { node.value = output.arena.copy(node.value) }
                        output.stale.sort()
                        return Part(nibble: group.nibble, node: node, output: output)
                    }
                    if case .failure = results[task] { SparseMerkleTree.OutputPool.shared.give([output]) }
                }
            }
        } catch {
            // The snapshot could not be opened: the tasks this worker would have taken fail.
            while let task = take() { results[task] = .failure(error) }
        }
    }

    /// The tasks' results in nibble order; the first failure is thrown after the outputs of
    /// the others are given back.
    func parts() throws -> [Part] {
        var parts: [Part] = []
        var failure: (any Error)?
        for task in 0..<groups.count {
            switch results[task] {
            case .success(let part)?: parts.append(part)
            case .failure(let error)?: failure = failure ?? error
            case nil: failure = failure ?? SparseMerkleError(.missingData, "an update task did not run")
            }
        }
        if let failure {
            SparseMerkleTree.OutputPool.shared.give(parts.map(\.output))
            throw failure
        }
        return parts
    }
}
