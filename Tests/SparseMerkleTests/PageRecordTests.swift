// Page records (full and delta), their pruning, the page cache and the determinism that lets
// an auditor's rebuild reproduce a store byte for byte.
import Foundation
import Testing
import TestSupport
import LMDBKit
import LedgerCrypto
@testable import SparseMerkle

/// A scratch LMDB sparse store, removed when `body` returns.
func withLMDBSparseStore<R>(_ name: String, _ body: (LMDBSparseStore) throws -> R) throws -> R {
    let path = NSTemporaryDirectory() + "medledger-smt-\(name)-\(UUID().uuidString)"
    defer { try? FileManager.default.removeItem(atPath: path) }
    var options = Environment.Options()
    options.durable = false
    return try body(try LMDBSparseStore(environment: try Environment(path: path, options: options)))
}

/// Every record of `db`, in key order.
func allRecords(_ store: LMDBSparseStore, _ db: Database) throws -> [([UInt8], [UInt8])] {
    try store.read { view in
        try view.txn.withCursor(db) { cursor in
            var records: [([UInt8], [UInt8])] = []
            var more = try cursor.first()
            while more {
                records.append(cursor.withCurrent { key, value in (Array(key), Array(value)) })
                more = try cursor.next()
            }
            return records
        }
    }
}

/// The page records the tree of `version` uses, walking from its root (a delta's base counts).
func reachableRecords(_ store: LMDBSparseStore, version: UInt64) throws -> Set<PageID> {
    try store.read { view in
        var found = Set<PageID>()
        func walk(_ id: PageID, hash: Hash) throws {
            found.insert(id)
            try view.withPage(id, hash: hash) { lent in
                let page = try #require(PageSlots(lent))
                // (From the cache a page comes merged; its record's base version comes along.)
                if let base = page.baseVersion {
                    found.insert(PageID(version: base, depth: id.depth, prefix: id.prefix))
                }
                for n in 0..<16 {
                    let slot = page.slot(n)
                    if slot.kind == .page {
                        try walk(PageID(version: slot.version, depth: id.depth + 4, prefix: extend(id.prefix, depth: id.depth, nibble: n)), hash: slot.hash)
                    }
                }
            }
        }
        if case .page(let h, let v) = try SparseMerkleTree.root(version: version, reader: view) {
            try walk(PageID(version: v, depth: 0, prefix: .zero), hash: h)
        }
        return found
    }
}

/// Batches that rewrite a fixed key set again and again, so later versions write deltas.
func rewriteBatches(seed: UInt64, keys: Int, batches: Int, perBatch: Int) -> [[SparseChange]] {
    var rng = SplitMix64(seed: seed)
    let names = (0..<keys).map { keyHash("rw-\(seed)-\($0)") }
    return (0..<batches).map { b in
        (0..<perBatch).map { _ in
            let k = names[Int(rng.next() % UInt64(keys))]
            // Now and then a delete, so pages collapse and grow back.
            return SparseChange(keyHash: k, value: rng.next() % 11 == 0 ? nil : Array("v\(b)-\(rng.next() % 997)".utf8))
        }
    }
}

@Suite struct DeltaPages {
    @Test func deltasAreWrittenAndEveryVersionStaysProvable() throws {
        let seed: UInt64 = 0xde17a
        try withLMDBSparseStore("delta") { store in
            var map: [Hash: [UInt8]] = [:]
            var roots: [UInt64: (Hash, [Hash: [UInt8]])] = [:]
            var version: UInt64 = 0
            for changes in rewriteBatches(seed: seed, keys: 3000, batches: 14, perBatch: 400) {
                for c in changes { map[c.keyHash] = c.value }
                version += 400
                let root = try store.write { try SparseMerkleTree.apply(changes, version: version, writer: $0) }
                #expect(root.hash == NaiveSparse.root(map), "seed \(seed) version \(version)")
                roots[version] = (root.hash, map)
            }
            let records = try allRecords(store, store.pagesDatabase)
            let deltas = records.filter { $0.1.first == PageRecord.delta }
            #expect(deltas.count > 50, "\(deltas.count) of \(records.count) records are deltas")
            // A delta's base is a full record at the same position, written earlier.
            let byKey = Dictionary(uniqueKeysWithValues: records.map { ($0.0, $0.1) })
            for (key, value) in deltas {
                let id = try #require(PageID(storageKey: key))
                let base = try #require(value.withUnsafeBytes { PageRecord.baseVersion(of: $0) } ?? nil)
                #expect(base < id.version)
                let baseRecord = try #require(byKey[PageID(version: base, depth: id.depth, prefix: id.prefix).storageKey])
                #expect(baseRecord.first == PageRecord.full)
            }
            for (v, (root, snapshot)) in roots {
                for (k, value) in snapshot.prefix(150) {
                    let proof = try store.read { try SparseMerkleTree.proof(keyHash: k, version: v, reader: $0) }
                    #expect(proof.value == value, "version \(v)")
                    try proof.verify(root: root)
                }
            }
        }
    }

    @Test func pruningKeepsTheBasesOfRetainedDeltasAndLeavesOnlyWhatIsReachable() throws {
        try withLMDBSparseStore("delta-prune") { store in
            var map: [Hash: [UInt8]] = [:]
            var roots: [UInt64: (Hash, [Hash: [UInt8]])] = [:]
            var version: UInt64 = 0
            for changes in rewriteBatches(seed: 0x9e1, keys: 2000, batches: 12, perBatch: 300) {
                for c in changes { map[c.keyHash] = c.value }
                version += 300
                roots[version] = (try store.write { try SparseMerkleTree.apply(changes, version: version, writer: $0) }.hash, map)
            }
            // Prune in two steps; after each, every retained version proves and nothing a
            // retained version needs is gone.
            for keep in [UInt64(1800), version] {
                let deleted = try store.write { try $0.prune(before: keep) }
                #expect(deleted > 0)
                var needed = Set<PageID>()
                for v in roots.keys where v >= keep { needed.formUnion(try reachableRecords(store, version: v)) }
                let stored = Set(try allRecords(store, store.pagesDatabase).map { try #require(PageID(storageKey: $0.0)) })
                #expect(needed.isSubset(of: stored), "\(needed.subtracting(stored).count) needed records were pruned")
                if keep == version {
                    let extra = stored.subtracting(needed)
                    #expect(extra.isEmpty, "\(extra.count) records outlived every version that used them: \(extra.prefix(5).map { "v\($0.version) d\($0.depth) \($0.prefix.hex.prefix(6))" })")
                }
                for (v, (root, snapshot)) in roots where v >= keep {
                    for (k, value) in snapshot.prefix(200) {
                        let proof = try store.read { try SparseMerkleTree.proof(keyHash: k, version: v, reader: $0) }
                        #expect(proof.value == value)
                        try proof.verify(root: root)
                    }
                }
            }
        }
    }

    @Test func pruningInStepsLeavesWhatOneTransactionLeaves() throws {
        try withLMDBSparseStore("prune-steps-a") { stepped in
            try withLMDBSparseStore("prune-steps-b") { whole in
                var version: UInt64 = 0
                var roots: [UInt64: Hash] = [:]
                for changes in rewriteBatches(seed: 0x51e, keys: 1500, batches: 10, perBatch: 250) {
                    version += 250
                    roots[version] = try stepped.write { try SparseMerkleTree.apply(changes, version: version, writer: $0) }.hash
                    _ = try whole.write { try SparseMerkleTree.apply(changes, version: version, writer: $0) }
                }
                let staleCounts = try allRecords(stepped, stepped.staleDatabase).map { record in
                    let replacedAt = try #require(record.0.withUnsafeBytes { UInt64(bigEndianBytes: $0) })
                    return try #require(record.1.withUnsafeBytes { LMDBSparseStore.staleKeys($0, replacedAt: replacedAt)?.count })
                }
                let keep: UInt64 = 2000
                let small = try #require(staleCounts.max())
                let report = try stepped.prune(before: keep, pagesPerTransaction: small)
                let oneStep = try whole.write { try $0.prune(before: keep) }
                #expect(report.pagesDeleted == oneStep && oneStep > 0)
                #expect(report.transactions > 2, "a bound of one stale record's size takes several steps: \(report)")
                #expect(report.versionsRemoved == roots.keys.filter { $0 < keep }.count)
                #expect(report.oldestVersion == keep)
                for (a, b) in [(stepped.pagesDatabase, whole.pagesDatabase), (stepped.rootsDatabase, whole.rootsDatabase),
                               (stepped.staleDatabase, whole.staleDatabase)] {
                    #expect(try allRecords(stepped, a).map(\.0) == allRecords(whole, b).map(\.0))
                }
                var nothingLeft = LMDBSparseStore.PruneReport()
                nothingLeft.transactions = 1
                nothingLeft.oldestVersion = keep
                #expect(try stepped.prune(before: keep) == nothingLeft, "pruning again deletes nothing")
                #expect(throws: SparseMerkleError(.versionOrder, "")) { try stepped.prune(before: version + 1) }
                for (v, root) in roots { #expect(try stepped.read { try $0.root(version: v)?.hash } == (v < keep ? nil : root)) }
            }
        }
    }

    /// Each step runs inside `aroundEachStep`, and a version written between two steps (as a
    /// ledger's append is, when it holds its lock per step) keeps the store whole: every kept
    /// version and the new ones prove, and nothing a kept version uses is gone.
    @Test func writesBetweenPruneStepsKeepTheStoreWhole() throws {
        try withLMDBSparseStore("prune-interleaved") { store in
            var version: UInt64 = 0
            var maps: [UInt64: [Hash: [UInt8]]] = [:]
            var map: [Hash: [UInt8]] = [:]
            var batches = rewriteBatches(seed: 0x1e7, keys: 1500, batches: 14, perBatch: 250)
            func writeNext() throws {
                let changes = batches.removeFirst()
                version += 250
                for c in changes { map[c.keyHash] = c.value }
                _ = try store.write { try SparseMerkleTree.apply(changes, version: version, writer: $0) }
                maps[version] = map
            }
            for _ in 0..<8 { try writeNext() }
            let keep: UInt64 = 1400  // between two versions: 1500 is the oldest kept
            var steps = 0
            let report = try store.prune(before: keep, pagesPerTransaction: 1) { step in
                steps += 1
                let deleted = try step()
                if !batches.isEmpty { try writeNext() }
                return deleted
            }
            #expect(steps == report.transactions && steps > 2, "\(report)")
            var needed = Set<PageID>()
            for v in maps.keys where v >= keep { needed.formUnion(try reachableRecords(store, version: v)) }
            let stored = Set(try allRecords(store, store.pagesDatabase).map { try #require(PageID(storageKey: $0.0)) })
            #expect(needed.isSubset(of: stored), "\(needed.subtracting(stored).count) needed records were pruned")
            for (v, snapshot) in maps where v >= keep {
                #expect(try store.read { try $0.root(version: v)?.hash } == NaiveSparse.root(snapshot))
            }
        }
    }

    /// The walk a verifier makes of a stored version: a whole tree has no problems and visits
    /// every record the version reads; a changed leaf value, a missing page and a wrong child
    /// hash are each named. `page(atDepth:prefix:version:)` finds the same pages.
    @Test func aStoredTreeIsCheckedPageByPage() throws {
        try withLMDBSparseStore("check-tree") { store in
            var version: UInt64 = 0
            for changes in rewriteBatches(seed: 0xc4e, keys: 3000, batches: 5, perBatch: 800) {
                version += 800
                _ = try store.write { try SparseMerkleTree.apply(changes, version: version, writer: $0) }
            }
            var visited = Set<PageID>()
            let whole = try store.read { view in
                try view.checkStoredTree(version: version) { key, _ in visited.insert(PageID(storageKey: Array(key))!) }
            }
            #expect(whole.problems.isEmpty, "\(whole.problems)")
            let reachable = try reachableRecords(store, version: version)
            #expect(reachable.isSubset(of: visited) && !reachable.isEmpty)
            // Every page of the tree is where page(atDepth:) finds it, with the same slots (the
            // newest record at a position is the page; an older one there is a delta's base).
            var pageAt: [String: PageID] = [:]
            for id in reachable {
                let position = "\(id.depth)/\(id.prefix.hex)"
                if (pageAt[position]?.version ?? 0) < id.version { pageAt[position] = id }
            }
            for id in pageAt.values.sorted().prefix(60) {
                let stored = try store.read { view -> SparsePage? in
                    let record = try #require(try view.txn.value(store.pagesDatabase, key: id.storageKey))
                    return try record.withUnsafeBytes { raw -> SparsePage? in
                        guard let base = SparsePage.baseVersion(ofRecord: raw) else { return nil }
                        guard let base else { return SparsePage(decoding: raw) }
                        let baseRecord = try #require(try view.txn.value(store.pagesDatabase, key: PageID(version: base, depth: id.depth, prefix: id.prefix).storageKey))
                        return baseRecord.withUnsafeBytes { SparsePage(decoding: raw, base: $0) }
                    }
                }
                let found = try store.read { try $0.page(atDepth: id.depth, prefix: id.prefix, version: version) }
                #expect(stored != nil && found == stored, "the page at depth \(id.depth)")
            }
            #expect(try store.read { try $0.page(atDepth: 252, prefix: .zero, version: version) } == nil)

            let deep = try #require(visited.filter { $0.depth > 0 }.max { $0.depth < $1.depth })
            let key = deep.storageKey
            let original = try #require(try store.read { try $0.txn.value(store.pagesDatabase, key: key) })
            func problems(after change: [UInt8]?) throws -> [String] {
                try store.environment.write { txn in
                    if let change { try txn.unsafeView.put(store.pagesDatabase, key: key, value: change) } else { _ = try txn.unsafeView.delete(store.pagesDatabase, key: key) }
                }
                defer { _ = try? store.environment.write { txn in try txn.unsafeView.put(store.pagesDatabase, key: key, value: original) } }
                return try store.read { try $0.checkStoredTree(version: version) { _, _ in }.problems }
            }
            var flipped = original
            flipped[flipped.count - 1] ^= 0x40
            #expect(!(try problems(after: flipped)).isEmpty, "a changed byte at the end of the record")
            #expect(try problems(after: nil).contains { $0.contains("missing") })
            // A wrong child hash in the root page (full, its first slot a page): the root page
            // no longer hashes to the root record's hash, and that child not to its slot's.
            let rootID = try #require(visited.first { $0.depth == 0 })
            let rootRecord = try #require(try store.read { try $0.txn.value(store.pagesDatabase, key: rootID.storageKey) })
            try #require(rootRecord[0] == 0x00 && rootRecord[2] & 0x01 != 0 && rootRecord[4] & 0x01 == 0, "slot 0 of a full root page is a page")
            do {
                var wrongChild = rootRecord
                wrongChild[5] ^= 0x01
                let found: [String] = try store.environment.write { txn in
                    try txn.unsafeView.put(store.pagesDatabase, key: rootID.storageKey, value: wrongChild)
                    return try LMDBSparseStore.View(txn.unsafeView, store: store).checkStoredTree(version: version) { _, _ in }.problems
                }
                try store.environment.write { txn in try txn.unsafeView.put(store.pagesDatabase, key: rootID.storageKey, value: rootRecord) }
                #expect(found.contains { $0.contains("depth 0") && $0.contains("does not hash") }, "\(found)")
                #expect(found.contains { $0.contains("depth 4") && $0.contains("does not hash") }, "\(found)")
            }
            #expect(try store.read { try $0.checkStoredTree(version: version) { _, _ in }.problems }.isEmpty, "restored")
            #expect(try store.read { try $0.checkStoredTree(version: version + 1) { _, _ in }.problems } == ["no root record for version \(version + 1)"])
        }
    }

    @Test func theMemoryStoreMatchesTheLMDBStoreRecordForRecord() throws {
        // Same batches into both stores, one of them updated on two threads: every page record,
        // root and stale record must be the same bytes (an auditor's rebuild relies on it).
        try withLMDBSparseStore("determinism-a") { parallel in
            try withLMDBSparseStore("determinism-b") { sequential in
                let memory = MemorySparseStore()
                var version: UInt64 = 0
                for changes in rewriteBatches(seed: 0x5eed, keys: 20_000, batches: 6, perBatch: 5000) {
                    version += 5000
                    let a = try parallel.write { try SparseMerkleTree.apply(changes, version: version, writer: $0, snapshot: parallel) }
                    let b = try sequential.write { try SparseMerkleTree.apply(changes, version: version, writer: $0) }
                    let c = try SparseMerkleTree.apply(changes, version: version, writer: memory)
                    #expect(a == b && b == c)
                }
                // Batches around the size from which an apply runs on two threads (a put batch).
                let threshold = SparseMerkleTree.parallelApplyThreshold
                for perBatch in [threshold - 1, threshold, threshold + 1] {
                    for changes in rewriteBatches(seed: UInt64(perBatch), keys: 20_000, batches: 2, perBatch: perBatch) {
                        version += UInt64(perBatch)
                        let a = try parallel.write { try SparseMerkleTree.apply(changes, version: version, writer: $0, snapshot: parallel) }
                        let b = try sequential.write { try SparseMerkleTree.apply(changes, version: version, writer: $0) }
                        let c = try SparseMerkleTree.apply(changes, version: version, writer: memory)
                        #expect(a == b && b == c)
                    }
                }
                for db in [\LMDBSparseStore.pagesDatabase, \.rootsDatabase, \.staleDatabase] {
                    let left = try allRecords(parallel, parallel[keyPath: db]), right = try allRecords(sequential, sequential[keyPath: db])
                    #expect(left.count == right.count)
                    let same = zip(left, right).allSatisfy { (a: ([UInt8], [UInt8]), b: ([UInt8], [UInt8])) -> Bool in a.0 == b.0 && a.1 == b.1 }
                    #expect(same)
                }
                let pages = try allRecords(sequential, sequential.pagesDatabase)
                #expect(pages.count == memory.pageCount)
                for (key, value) in pages {
                    #expect(memory.pages[try #require(PageID(storageKey: key))] == value)
                }
            }
        }
    }
}

@Suite struct PageCacheCommits {
    struct Abort: Error {}

    /// With a prefill threshold of 0 every write fills the cache while it commits, so the
    /// aborted version's pages are in the cache when it aborts and must be forgotten.
    @Test(arguments: [0, 1024])
    func pagesOfAnAbortedWriteNeverReachTheCache(prefillThreshold: Int) throws {
        try withLMDBSparseStore("abort-same") { store in
            store.prefillThreshold = prefillThreshold
            var map: [Hash: [UInt8]] = [:]
            let first = (0..<3000).map { SparseChange(keyHash: keyHash("c\($0)"), value: [1]) }
            for c in first { map[c.keyHash] = c.value }
            _ = try store.write { try SparseMerkleTree.apply(first, version: 1, writer: $0, snapshot: store) }
            // Version 2 is computed and stored, then the transaction aborts...
            let abandoned = (0..<3000).map { SparseChange(keyHash: keyHash("c\($0)"), value: [2]) }
            #expect(throws: Abort.self) {
                try store.write { view -> Void in
                    _ = try SparseMerkleTree.apply(abandoned, version: 2, writer: view, snapshot: store)
                    throw Abort()
                }
            }
            // ...and the same store commits a different version 2, then builds on it.
            let second = (0..<3000).map { SparseChange(keyHash: keyHash("c\($0)"), value: $0 % 3 == 0 ? nil : [3]) }
            for c in second { map[c.keyHash] = c.value }
            #expect(try store.write { try SparseMerkleTree.apply(second, version: 2, writer: $0, snapshot: store) }.hash == NaiveSparse.root(map))
            let third = (0..<3000).map { SparseChange(keyHash: keyHash("c\($0 * 7 % 3000)"), value: [4, UInt8($0 % 5)]) }
            for c in third { map[c.keyHash] = c.value }
            let root = try store.write { try SparseMerkleTree.apply(third, version: 3, writer: $0, snapshot: store) }
            #expect(root.hash == NaiveSparse.root(map))
            // A fresh store object reads only what is on disk: the same pages, the same proofs.
            let reopened = try LMDBSparseStore(environment: store.environment)
            for i in Swift.stride(from: 0, to: 3000, by: 37) {
                let k = keyHash("c\(i)")
                let cached = try store.read { try SparseMerkleTree.proof(keyHash: k, version: 3, reader: $0) }
                let cold = try reopened.read { try SparseMerkleTree.proof(keyHash: k, version: 3, reader: $0) }
                #expect(cached == cold)
                #expect(cached.value == map[k])
                try cached.verify(root: root.hash)
            }
            // Prune to the last version: what remains is exactly what it uses.
            _ = try store.write { try $0.prune(before: 3) }
            let stored = Set(try allRecords(store, store.pagesDatabase).map { try #require(PageID(storageKey: $0.0)) })
            #expect(stored == (try reachableRecords(reopened, version: 3)))
        }
    }
}

@Suite struct CacheFillUnderLoad {
    struct Abort: Error {}

    /// Readers prove keys at the newest committed version while every write fills the cache
    /// before it commits (threshold 0) and every third version is first written and aborted:
    /// no reader may meet a page of the aborted versions, and the cache ends up agreeing with
    /// a store that reads only the disk.
    @Test func readersDuringFillsAndAbortsSeeOnlyCommittedPages() throws {
        try withLMDBSparseStore("fill-readers") { store in
            store.prefillThreshold = 0
            let keys = (0..<3000).map { keyHash("fill\($0)") }
            var map: [Hash: [UInt8]] = [:]
            func commit(_ value: [UInt8], version: UInt64, every step: Int) throws {
                let changes = Swift.stride(from: 0, to: keys.count, by: step).map { SparseChange(keyHash: keys[$0], value: value) }
                for c in changes { map[c.keyHash] = c.value }
                _ = try store.write { try SparseMerkleTree.apply(changes, version: version, writer: $0, snapshot: store) }
            }
            try commit([0], version: 1, every: 1)
            let done = ManagedAtomicFlag(), failures = FailureLog()
            let readers = DispatchGroup()
            for t in 0..<3 {
                readers.enter()
                Thread.detachNewThread {
                    defer { readers.leave() }
                    var rng = SplitMix64(seed: UInt64(t) + 0xf111)
                    while !done.isSet {
                        do {
                            try store.read { view in
                                let version = try #require(try view.latestVersion())
                                let root = try SparseMerkleTree.root(version: version, reader: view)
                                let proof = try SparseMerkleTree.proof(keyHash: keys[Int(rng.next() % UInt64(keys.count))], version: version, reader: view)
                                try proof.verify(root: root.hash)
                                if proof.value == nil { failures.add("a key is absent at version \(version)") }
                            }
                        } catch { failures.add("\(error)") }
                    }
                }
            }
            var version: UInt64 = 1
            for round in 1...12 {
                version += 1
                if round % 3 == 0 {
                    let abandoned = keys.map { SparseChange(keyHash: $0, value: [UInt8(round), 0xab]) }
                    #expect(throws: Abort.self) {
                        try store.write { view -> Void in
                            _ = try SparseMerkleTree.apply(abandoned, version: version, writer: view, snapshot: store)
                            throw Abort()
                        }
                    }
                }
                try commit([UInt8(round)], version: version, every: round % 2 == 0 ? 1 : 3)
            }
            done.set()
            readers.wait()
            #expect(failures.all.isEmpty, "\(failures.all.prefix(3))")
            let root = NaiveSparse.root(map)
            let reopened = try LMDBSparseStore(environment: store.environment)
            for i in Swift.stride(from: 0, to: keys.count, by: 29) {
                let cached = try store.read { try SparseMerkleTree.proof(keyHash: keys[i], version: version, reader: $0) }
                let cold = try reopened.read { try SparseMerkleTree.proof(keyHash: keys[i], version: version, reader: $0) }
                #expect(cached == cold)
                #expect(cached.value == map[keys[i]])
                try cached.verify(root: root)
            }
        }
    }

    /// A parallel apply whose task meets a missing page fails as a whole with `missingData`,
    /// and the outputs it gave back serve later applies that match the reference.
    @Test func aFailedParallelTaskFailsTheApplyAndLaterAppliesStillMatch() throws {
        let keys = (0..<4000).map { keyHash("task\($0)") }
        try withLMDBSparseStore("task-failure") { store in
            _ = try store.write { try SparseMerkleTree.apply(keys.map { SparseChange(keyHash: $0, value: [1]) }, version: 1, writer: $0, snapshot: store) }
            let victim = PageID(version: 1, depth: 4, prefix: extend(.zero, depth: 0, nibble: 5))
            #expect(try store.environment.write { try $0.unsafeView.delete(store.pagesDatabase, key: victim.storageKey) })
            // A store over the same files with a cold cache reads the page from disk.
            let cold = try LMDBSparseStore(environment: store.environment)
            let error = #expect(throws: SparseMerkleError.self) {
                _ = try cold.write { try SparseMerkleTree.apply(keys.map { SparseChange(keyHash: $0, value: [2]) }, version: 2, writer: $0, snapshot: cold) }
            }
            #expect(error?.code == .missingData)
        }
        try withLMDBSparseStore("task-after-failure") { store in
            var map: [Hash: [UInt8]] = [:]
            for version in 1...3 {
                let changes = keys.map { SparseChange(keyHash: $0, value: [UInt8(version)]) }
                for c in changes { map[c.keyHash] = c.value }
                let root = try store.write { try SparseMerkleTree.apply(changes, version: UInt64(version), writer: $0, snapshot: store) }
                #expect(root.hash == NaiveSparse.root(map))
            }
        }
    }
}

@Suite struct PageRecordEncoding {
    /// A full record and a delta over it, made by the engine from two small batches.
    static func records() throws -> (full: [UInt8], delta: [UInt8], fullID: PageID, deltaID: PageID) {
        let store = MemorySparseStore()
        // 40 keys under one root page, then one changed: the root page becomes a delta.
        let keys = (0..<40).map { keyHash("enc\($0)") }
        try SparseMerkleTree.apply(keys.map { SparseChange(keyHash: $0, value: [1]) }, version: 1, writer: store)
        try SparseMerkleTree.apply([SparseChange(keyHash: keys[0], value: [2])], version: 2, writer: store)
        let rootFull = PageID(version: 1, depth: 0, prefix: .zero), rootDelta = PageID(version: 2, depth: 0, prefix: .zero)
        return (try #require(store.pages[rootFull]), try #require(store.pages[rootDelta]), rootFull, rootDelta)
    }

    @Test func storageKeysRoundTrip() throws {
        var rng = SplitMix64(seed: 0x6e4)
        for depth in Swift.stride(from: 0, through: 252, by: 4) {
            var prefix = Hash.zero
            for d in Swift.stride(from: 0, to: depth, by: 4) { prefix = extend(prefix, depth: d, nibble: Int(rng.next() % 16)) }
            let id = PageID(version: rng.next(), depth: depth, prefix: prefix)
            #expect(PageID(storageKey: id.storageKey) == id, "depth \(depth)")
        }
        #expect(PageID(storageKey: [UInt8](repeating: 0, count: 8)) == nil)
        #expect(PageID(storageKey: [UInt8](repeating: 0, count: 8) + [1]) == nil, "depth 4 needs one prefix byte")
        #expect(PageID(storageKey: [UInt8](repeating: 0, count: 8) + [1, 0x0f]) == nil, "bits past the depth must be zero")
    }

    @Test func recordsDecodeAndDamageIsRefused() throws {
        let (full, delta, _, _) = try Self.records()
        #expect(full.first == PageRecord.full)
        #expect(delta.first == PageRecord.delta)
        let page = try #require(full.withUnsafeBytes { SparsePage(decoding: $0) })
        let merged = try #require(delta.withUnsafeBytes { d in full.withUnsafeBytes { SparsePage(decoding: d, base: $0) } })
        #expect(page != merged)
        #expect(page.slots.filter { !$0.isEmpty }.count == merged.slots.filter { !$0.isEmpty }.count)
        func decodes(_ record: [UInt8], base: [UInt8]? = nil) -> Bool {
            record.withUnsafeBytes { r in
                guard let base else { return SparsePage(decoding: r) != nil }
                return base.withUnsafeBytes { SparsePage(decoding: r, base: $0) != nil }
            }
        }
        #expect(!decodes(delta), "a delta needs its base")
        #expect(!decodes(delta, base: delta), "a delta's base must be full")
        #expect(!decodes(full, base: full), "a full record takes no base")
        #expect(!decodes([]))
        #expect(!decodes([7] + full.dropFirst()), "unknown record kind")
        for cut in [1, 4, full.count / 2, full.count - 1] {
            #expect(!decodes(Array(full.prefix(cut))), "full record cut to \(cut) bytes")
        }
        for cut in [1, 10, 14, delta.count - 1] {
            #expect(!decodes(Array(delta.prefix(cut)), base: full), "delta cut to \(cut) bytes")
        }
        #expect(!decodes(full + [0]), "trailing byte")
        var leafOnEmpty = full
        leafOnEmpty[4] |= ~leafOnEmpty[2]  // a leaf bit where no slot is occupied
        #expect(leafOnEmpty != full)
        #expect(!decodes(leafOnEmpty))
        var occupiedUnchanged = delta
        occupiedUnchanged[9] = 0; occupiedUnchanged[10] = 0  // no changed slot, yet slots follow
        #expect(!decodes(occupiedUnchanged, base: full))
        // A page with a single leaf is not a page.
        let single = [PageRecord.full, 0x00, 0x01, 0x00, 0x01] + [UInt8](repeating: 9, count: 64) + [0, 0]
        #expect(!decodes(single))
    }
}

/// The damage ``PruneAndRebuild/pruningADamagedStoreRefusesAndDeletesNothing(_:)`` makes.
enum DamagedPruneInput: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case staleListsANewerPage, staleListsItsOwnVersion, staleKeyHasBitsPastItsDepth, staleValueTruncated
    case staleKeyNotAVersion, rootKeyNotAVersion
    var testDescription: String { rawValue }
}

@Suite struct PruneAndRebuild {
    @Test func pruningPastTheNewestVersionIsRefusedAndBetweenVersionsKeepsTheNewerOnes() throws {
        try withEachSparseStore("prune-point") { storeName, box in
            var roots: [UInt64: Hash] = [:]
            for v in [UInt64(10), 20, 30] {
                roots[v] = try box.apply((0..<300).map { SparseChange(keyHash: keyHash("pp\($0)"), value: Array("\(v)-\($0 % 7)".utf8)) }, version: v).hash
            }
            #expect(throws: SparseMerkleError(.versionOrder, ""), "\(storeName)") { try box.prune(before: 31) }
            _ = try box.prune(before: 25)  // between 20 and 30: keeps 30
            #expect(throws: SparseMerkleError(.unknownVersion, "")) { try box.proof(keyHash("pp1"), version: 20) }
            try box.proof(keyHash("pp1"), version: 30).verify(root: roots[30]!)
            _ = try box.prune(before: 30)  // up to the newest itself is allowed
            try box.proof(keyHash("pp299"), version: 30).verify(root: roots[30]!)
            let next = try box.apply([SparseChange(keyHash: keyHash("pp1"), value: [1])], version: 31)
            var map: [Hash: [UInt8]] = [:]
            for i in 0..<300 { map[keyHash("pp\(i)")] = Array("30-\(i % 7)".utf8) }
            map[keyHash("pp1")] = [1]
            #expect(next.hash == NaiveSparse.root(map), "\(storeName): the map survived the prunes")
        }
    }

    /// A damaged `smt.stale` or `smt.roots` record makes pruning refuse with `.missingData`,
    /// in one transaction and in steps, and leaves every record where it was.
    @Test(arguments: DamagedPruneInput.allCases)
    func pruningADamagedStoreRefusesAndDeletesNothing(_ damage: DamagedPruneInput) throws {
        try withLMDBSparseStore("prune-damaged") { store in
            var version: UInt64 = 0
            var roots: [UInt64: Hash] = [:]
            for changes in rewriteBatches(seed: 0xda3, keys: 1200, batches: 6, perBatch: 200) {
                version += 200
                roots[version] = try store.write { try SparseMerkleTree.apply(changes, version: version, writer: $0) }.hash
            }
            let newestRootPage = PageID(version: version, depth: 0, prefix: .zero).storageKey
            try store.environment.write { txn in
                let view = txn.unsafeView
                switch damage {
                case .staleListsANewerPage:
                    // The stale record of version 400 names the newest version's root page.
                    var value = try #require(try view.value(store.staleDatabase, key: UInt64(400)))
                    value += [UInt8(newestRootPage.count)] + newestRootPage
                    try view.put(store.staleDatabase, key: UInt64(400), value: value)
                case .staleListsItsOwnVersion:
                    let own = PageID(version: 400, depth: 0, prefix: .zero).storageKey
                    try view.put(store.staleDatabase, key: UInt64(400), value: [UInt8(own.count)] + own)
                case .staleKeyHasBitsPastItsDepth:
                    var key = PageID(version: 200, depth: 4, prefix: .zero).storageKey
                    key[9] = 0x01
                    try view.put(store.staleDatabase, key: UInt64(400), value: [UInt8(key.count)] + key)
                case .staleValueTruncated:
                    var value = try #require(try view.value(store.staleDatabase, key: UInt64(400)))
                    value.removeLast()
                    try view.put(store.staleDatabase, key: UInt64(400), value: value)
                case .staleKeyNotAVersion:
                    try view.put(store.staleDatabase, key: [UInt8](repeating: 0, count: 7), value: [UInt8(newestRootPage.count)] + newestRootPage)
                case .rootKeyNotAVersion:
                    try view.put(store.rootsDatabase, key: [UInt8](repeating: 0, count: 7), value: [0x00])
                }
            }
            let before = try [store.pagesDatabase, store.staleDatabase, store.rootsDatabase].map { try allRecords(store, $0).count }
            #expect(throws: SparseMerkleError(.missingData, "")) { try store.prune(before: 800) }
            #expect(throws: SparseMerkleError(.missingData, "")) { try store.prune(before: 800, pagesPerTransaction: 1) }
            #expect(throws: SparseMerkleError(.missingData, "")) { try store.write { try $0.prune(before: 800) } }
            let after = try [store.pagesDatabase, store.staleDatabase, store.rootsDatabase].map { try allRecords(store, $0).count }
            #expect(after == before, "\(damage): records (pages, stale, roots) \(before) became \(after)")
            for (v, root) in roots where v >= 800 {
                try store.read { try SparseMerkleTree.proof(keyHash: keyHash("k1"), version: v, reader: $0) }.verify(root: root)
            }
        }
    }

    @Test func aDamagedNewestRootKeyIsNotAnEmptyMap() throws {
        try withLMDBSparseStore("roots-damaged") { store in
            _ = try store.write { try SparseMerkleTree.apply([SparseChange(keyHash: keyHash("a"), value: [1])], version: 1, writer: $0) }
            try store.environment.write { txn in try txn.unsafeView.put(store.rootsDatabase, key: [UInt8](repeating: 0xff, count: 9), value: [0x00]) }
            #expect(throws: SparseMerkleError(.missingData, "")) { try store.read { try $0.latestVersion() } }
            #expect(throws: SparseMerkleError(.missingData, "")) {
                try store.write { try SparseMerkleTree.apply([SparseChange(keyHash: keyHash("b"), value: [2])], version: 2, writer: $0) }
            }
        }
    }

    @Test func aStoreWhoseCacheOutlivedARebuildStartsOverAtItsNextWrite() throws {
        // Store A has a warm cache; store B (another process, say) clears the tree and
        // rebuilds it after a prune, with the same roots but different records; A then writes.
        try withLMDBSparseStore("rebuild") { a in
            var map: [Hash: [UInt8]] = [:]
            var history: [(UInt64, [SparseChange])] = []
            var version: UInt64 = 0
            for changes in rewriteBatches(seed: 0xeb1d, keys: 4000, batches: 8, perBatch: 600) {
                version += 600
                history.append((version, changes))
                for c in changes { map[c.keyHash] = c.value }
                _ = try a.write { try SparseMerkleTree.apply(changes, version: version, writer: $0, snapshot: a) }
            }
            _ = try a.write { try $0.prune(before: 3000) }
            let b = try LMDBSparseStore(environment: a.environment)
            try b.write { view in
                try b.clear(view.txn)
                // Everything up to the first retained version in one batch, as a rebuild does.
                _ = try SparseMerkleTree.apply(history.prefix { $0.0 <= 3000 }.flatMap(\.1), version: 3000, writer: view)
            }
            for (v, changes) in history where v > 3000 {
                _ = try b.write { try SparseMerkleTree.apply(changes, version: v, writer: $0) }
            }
            // A writes on top of B's rebuild, then a third, cold store checks everything.
            let more = rewriteBatches(seed: 0x2e1d, keys: 4000, batches: 3, perBatch: 600)
            for changes in more {
                version += 600
                for c in changes { map[c.keyHash] = c.value }
                let root = try a.write { try SparseMerkleTree.apply(changes, version: version, writer: $0, snapshot: a) }
                #expect(root.hash == NaiveSparse.root(map))
            }
            let cold = try LMDBSparseStore(environment: a.environment)
            let stored = Set(try allRecords(cold, cold.pagesDatabase).map { try #require(PageID(storageKey: $0.0)) })
            #expect(try reachableRecords(cold, version: version).isSubset(of: stored), "A wrote no record over a base the rebuild removed")
            for (k, value) in map.prefix(300) {
                let proof = try cold.read { try SparseMerkleTree.proof(keyHash: k, version: version, reader: $0) }
                #expect(proof.value == value)
                try proof.verify(root: NaiveSparse.root(map))
                // A's own reads heal too.
                #expect(try a.read { try SparseMerkleTree.proof(keyHash: k, version: version, reader: $0) } == proof)
            }
        }
    }

    @Test func damagedRecordsAreErrorsNotProofs() throws {
        try withLMDBSparseStore("damage") { store in
            let changes = rewriteBatches(seed: 0xda3, keys: 3000, batches: 6, perBatch: 500)
            var version: UInt64 = 0
            for batch in changes {
                version += 500
                _ = try store.write { try SparseMerkleTree.apply(batch, version: version, writer: $0) }
            }
            // A delta below the cached levels (depth 20 or deeper) and the full record it rests on.
            let records = try allRecords(store, store.pagesDatabase)
            // One the newest version uses, so that a proof at that version reads it.
            let current = try reachableRecords(store, version: version)
            let deltas = records.filter { $0.1.first == PageRecord.delta && PageID(storageKey: $0.0).map(current.contains) == true }
            let (deltaKey, deltaValue) = try #require(deltas.first { (PageID(storageKey: $0.0)?.depth ?? 0) > HotPageCache.depth } ?? deltas.first)
            let id = try #require(PageID(storageKey: deltaKey))
            let base = try #require(deltaValue.withUnsafeBytes { PageRecord.baseVersion(of: $0) } ?? nil)
            let baseKey = PageID(version: base, depth: id.depth, prefix: id.prefix).storageKey
            // The key whose path crosses that page: its hash starts with the page's prefix.
            let names = (0..<3000).map { "rw-\(UInt64(0xda3))-\($0)" }
            let crossing = try #require(names.first { name in
                let k = keyHash(name)
                return (0..<id.depth).allSatisfy { NaiveSparse.bit(k, $0) == NaiveSparse.bit(id.prefix, $0) }
            })
            let root = try store.read { try SparseMerkleTree.root(version: version, reader: $0).hash }
            let original = records.first { $0.0 == baseKey }!.1
            /// The proof of `crossing` from a store with a cold cache after `tamper`, then undone.
            func proofAfter(_ tamper: (TransactionView) throws -> Void) throws -> Result<SparseProof, SparseMerkleError> {
                try store.environment.write { txn in try tamper(txn.unsafeView) }
                defer {
                    try? store.environment.write { txn in
                        try txn.unsafeView.put(store.pagesDatabase, key: deltaKey, value: deltaValue)
                        try txn.unsafeView.put(store.pagesDatabase, key: baseKey, value: original)
                    }
                }
                let fresh = try LMDBSparseStore(environment: store.environment)
                do {
                    return .success(try fresh.read { try SparseMerkleTree.proof(keyHash: keyHash(crossing), version: version, reader: $0) })
                } catch let error as SparseMerkleError { return .failure(error) }
            }
            try proofAfter { _ in }.get().verify(root: root)
            var newer = deltaValue
            newer.replaceSubrange(1..<9, with: withUnsafeBytes(of: id.version.bigEndian) { Array($0) })
            var absentBase = deltaValue
            absentBase.replaceSubrange(1..<9, with: withUnsafeBytes(of: (base + 1).bigEndian) { Array($0) })
            let cases: [(String, (TransactionView) throws -> Void)] = [
                ("missing base", { _ = try $0.delete(store.pagesDatabase, key: baseKey) }),
                ("base not older", { try $0.put(store.pagesDatabase, key: deltaKey, value: newer) }),
                ("base version without a record", { try $0.put(store.pagesDatabase, key: deltaKey, value: absentBase) }),
                ("a delta as the base", { try $0.put(store.pagesDatabase, key: baseKey, value: deltaValue) }),
                ("a cut delta", { try $0.put(store.pagesDatabase, key: deltaKey, value: Array(deltaValue.dropLast())) }),
            ]
            for (name, tamper) in cases {
                switch try proofAfter(tamper) {
                case .failure(let error): #expect(error.code == .missingData, "\(name): \(error)")
                case .success: Issue.record("\(name): a proof was made from a damaged record")
                }
            }
            // A changed byte inside a slot either fails to decode or yields a proof that fails.
            for offset in Swift.stride(from: 15, to: deltaValue.count, by: 9) {
                var changed = deltaValue
                changed[offset] ^= 0x01
                if case .success(let proof) = try proofAfter({ try $0.put(store.pagesDatabase, key: deltaKey, value: changed) }) {
                    #expect(throws: SparseMerkleError.self, "byte \(offset)") { try proof.verify(root: root) }
                }
            }
        }
    }
}

@Suite struct ParallelEdges {
    @Test func theRootCollapsingOrOneHalfIdleMatchesTheSequentialPath() throws {
        // Keys whose hashes all start with nibble 0, so the root page's second half has no work.
        var names: [String] = []
        var i = 0
        while names.count < 2500 {
            if keyHash("half-\(i)").byte(at: 0) >> 4 == 0 { names.append("half-\(i)") }
            i += 1
        }
        let others = (0..<3000).map { "other-\($0)" }
        try withLMDBSparseStore("edges-a") { parallel in
            try withLMDBSparseStore("edges-b") { sequential in
                var map: [Hash: [UInt8]] = [:]
                let batches: [[SparseChange]] = [
                    (names + others).map { SparseChange(keyHash: keyHash($0), value: [1]) },
                    names.map { SparseChange(keyHash: keyHash($0), value: [2]) },  // one half idle
                    others.map { SparseChange(keyHash: keyHash($0), value: nil) }
                        + names.dropFirst().map { SparseChange(keyHash: keyHash($0), value: nil) },  // down to one leaf
                    [SparseChange(keyHash: keyHash(names[0]), value: nil)]
                        + (0..<2100).map { SparseChange(keyHash: keyHash("again-\($0)"), value: [3]) },
                    (0..<2100).map { SparseChange(keyHash: keyHash("again-\($0)"), value: nil) },  // down to empty
                ]
                for (n, changes) in batches.enumerated() {
                    for c in changes { map[c.keyHash] = c.value }
                    let version = UInt64(n + 1) * 10_000
                    let a = try parallel.write { try SparseMerkleTree.apply(changes, version: version, writer: $0, snapshot: parallel) }
                    let b = try sequential.write { try SparseMerkleTree.apply(changes, version: version, writer: $0) }
                    #expect(a == b && a.hash == NaiveSparse.root(map), "batch \(n)")
                }
                #expect(try parallel.read { try SparseMerkleTree.root(version: 50_000, reader: $0) } == .empty)
                for db in [\LMDBSparseStore.pagesDatabase, \.rootsDatabase, \.staleDatabase] {
                    let left = try allRecords(parallel, parallel[keyPath: db]), right = try allRecords(sequential, sequential[keyPath: db])
                    #expect(left.map(\.0) == right.map(\.0) && left.map(\.1) == right.map(\.1))
                }
            }
        }
    }
}
