import Foundation
import Testing
import TestSupport
import LedgerCrypto
import MedLedger
import MerkleLog
import LMDBKit
import SparseMerkle

func ledgerPath(_ name: String) -> String {
    NSTemporaryDirectory() + "medledger-ledger-\(name)-\(UUID().uuidString)"
}

func scratchOptions() -> Ledger.Options {
    var options = Ledger.Options()
    options.durable = false
    return options
}

/// A scratch ledger with `batches` appends of `perBatch` keyed entries over `keys` record
/// keys (every `unkeyedEvery`-th batch touches no key, as audit commits do), and the tree
/// size after each append; the caller removes `path`.
func prunableLedger(_ name: String, seed: UInt64, batches: Int, perBatch: Int, keys: UInt64,
                    unkeyedEvery: Int = 0) throws -> (ledger: Ledger, path: String, sizes: [UInt64]) {
    let path = ledgerPath(name)
    let (ledger, _) = try Ledger.create(at: path, origin: "prune.example/ledger", options: scratchOptions())
    var sizes: [UInt64] = []
    var generator = SplitMix64(seed: seed)
    for batch in 0..<batches {
        let keyed = unkeyedEvery == 0 || batch % unkeyedEvery != unkeyedEvery - 1
        try ledger.append(try (0..<perBatch).map { _ in
            try LedgerEntry(set: keyed ? "record/\(generator.next() % keys)" : "", payload: Array("v\(generator.next())".utf8))
        })
        sizes.append(try ledger.size)
    }
    return (ledger, path, sizes)
}

@Suite struct LedgerEntryTests {
    @Test func envelopeIsExact() throws {
        let entry = try LedgerEntry(set: "ké", payload: [0xde, 0xad])
        #expect(entry.encoded() == [0x01, 0x00, 0x00, 0x03, 0x6b, 0xc3, 0xa9, 0xde, 0xad])
        #expect(try LedgerEntry(decoding: entry.encoded()) == entry)
        let delete = try LedgerEntry(delete: "k")
        #expect(delete.encoded() == [0x01, 0x01, 0x00, 0x01, 0x6b])
        let unkeyed = try LedgerEntry(payload: Array("x".utf8))
        #expect(unkeyed.encoded() == [0x01, 0x00, 0x00, 0x00, 0x78])
        let longest = try LedgerEntry(set: String(repeating: "k", count: 1024), payload: [])
        #expect(try LedgerEntry(decoding: longest.encoded()) == longest)
    }

    @Test(arguments: [
        [UInt8](),
        [0x01, 0x00, 0x00],
        [0x02, 0x00, 0x00, 0x00],
        [0x01, 0x02, 0x00, 0x00],
        [0x01, 0x00, 0x00, 0x05, 0x61],
        [0x01, 0x01, 0x00, 0x00, 0x61],
        [0x01, 0x00, 0x04, 0x01] + [UInt8](repeating: 0x61, count: 1025),
        [0x01, 0x00, 0x00, 0x02, 0xc3, 0x28],
    ] as [[UInt8]])
    func malformedEnvelopesAreRejected(_ bytes: [UInt8]) {
        #expect(throws: LedgerError(.invalidEntry, "")) { try LedgerEntry(decoding: bytes) }
    }

    @Test func invalidEntriesCannotBeBuilt() {
        #expect(throws: LedgerError(.invalidEntry, "")) { try LedgerEntry(delete: "") }
        #expect(throws: LedgerError(.invalidEntry, "")) { try LedgerEntry(set: String(repeating: "k", count: 1025), payload: []) }
    }
}

@Suite struct LedgerTests {
    @Test func createAppendProveAndReopen() throws {
        let path = ledgerPath("basic")
        defer { try? FileManager.default.removeItem(atPath: path) }
        let entries = try (0..<300).map { try LedgerEntry(set: $0 % 3 == 0 ? "key/\($0)" : "", payload: Array("payload \($0)".utf8)) }
        let verifierKey: String
        let root: Hash
        do {
            let (ledger, key) = try Ledger.create(at: path, origin: "test.example/ledger", options: scratchOptions())
            verifierKey = key
            #expect(try ledger.size == 0)
            #expect(try ledger.append(Array(entries[..<100])) == 0)
            #expect(try ledger.append(Array(entries[100...])) == 100)
            #expect(try ledger.size == 300)
            root = try ledger.rootHash(size: 300)
            // The root is the RFC 6962 root over the envelopes.
            let log = try MerkleLog(store: MemoryLogStore())
            try log.append(entries.map { $0.encoded() })
            #expect(root == log.rootHash)
        }
        let ledger = try Ledger(path: path, options: scratchOptions())
        #expect(ledger.verifier.description == verifierKey)
        #expect(try ledger.rootHash(size: 300) == root)
        #expect(try ledger.entry(at: 3) == entries[3])
        #expect(throws: LedgerError(.notFound, "")) { try ledger.entry(at: 300) }

        let note = try ledger.signedCheckpoint()
        let checkpoint = try SignedCheckpoint(verifying: note, verifiers: [try NoteVerifier(parsing: verifierKey)],
                                              origin: "test.example/ledger").checkpoint
        #expect(checkpoint.size == 300 && checkpoint.rootHash == root)
        let replayed = try MapReplay.roots(entries: entries.map { $0.encoded() }, at: [100, 300])
        #expect(checkpoint.mapRoot == replayed[300], "the map line is the map replayed from the entries")
        #expect(try ledger.mapRoot(size: 100) == replayed[100])
        #expect(try ledger.signedCheckpoint() == note, "signing is deterministic")

        let (proof, leaf, proofRoot) = try ledger.inclusionProof(index: 123)
        #expect(proofRoot == root && leaf == SHA256.leafHash(entries[123].encoded()))
        try ProofDocument.inclusion(.init(proof: proof, leafHash: leaf, rootHash: proofRoot)).verify(against: checkpoint)
        let (consistency, oldRoot, newRoot) = try ledger.consistencyProof(oldSize: 100)
        try consistency.verify(oldRoot: oldRoot, newRoot: newRoot)
        #expect(newRoot == root)
    }

    @Test func keyMapFollowsTheLogAndProvesPresenceAndAbsence() throws {
        let path = ledgerPath("map")
        defer { try? FileManager.default.removeItem(atPath: path) }
        let (ledger, verifierKey) = try Ledger.create(at: path, origin: "map.example/ledger", options: scratchOptions())
        var all: [LedgerEntry] = []
        var sizes: [UInt64] = []
        var generator = SplitMix64(seed: 0x3a9)
        for batch in 0..<8 {
            var entries: [LedgerEntry] = []
            for i in 0..<Int(generator.next() % 40 + 1) {
                let key = "patient/\(generator.next() % 30)"
                switch generator.next() % 5 {
                case 0: entries.append(try LedgerEntry(delete: key))
                case 1: entries.append(try LedgerEntry(payload: Array("unkeyed \(batch).\(i)".utf8)))
                default: entries.append(try LedgerEntry(set: key, payload: Array("v\(batch).\(i)".utf8)))
                }
            }
            if batch % 2 == 0 {
                try ledger.append(entries)
            } else {
                var packed: [UInt8] = [], ends: [Int] = []
                for e in entries { packed += e.encoded(); ends.append(packed.count) }
                try packed.withUnsafeBytes { b in try ends.withUnsafeBufferPointer { _ = try ledger.appendPacked(b, ends: $0) } }
            }
            all += entries
            sizes.append(UInt64(all.count))
        }
        // Both append paths derive the same map as an auditor replaying the entries.
        let replayed = try MapReplay.roots(entries: all.map { $0.encoded() }, at: sizes)
        for size in sizes { #expect(try ledger.mapRoot(size: size) == replayed[size], "size \(size)") }
        if let between = (1..<UInt64(all.count)).first(where: { !sizes.contains($0) }) {
            #expect(throws: LedgerError(.notFound, "")) { try ledger.mapRoot(size: between) }
        }

        // The latest value of each key, derived by hand.
        var latest: [String: UInt64] = [:]
        for (i, e) in all.enumerated() where !e.key.isEmpty {
            latest[e.key] = e.operation == .set ? UInt64(i) : nil
        }
        let checkpoint = try SignedCheckpoint(verifying: try ledger.signedCheckpoint(),
                                              verifiers: [try NoteVerifier(parsing: verifierKey)]).checkpoint
        for p in 0..<32 {
            let key = "patient/\(p)"
            let (proof, mapRoot, size) = try ledger.keyProof(key: key)
            let document = ProofDocument.key(.init(key: key, treeSize: size, mapRoot: mapRoot, proof: proof))
            try document.verify(against: checkpoint)
            #expect(try ProofDocument(json: try document.jsonData()) == document)
            if let index = latest[key] {
                let leaf = SHA256.leafHash(all[Int(index)].encoded())
                #expect(proof.value == Ledger.mapValue(index: index, leafHash: leaf), "\(key) points at its newest set")
            } else {
                #expect(!proof.isInclusion, "\(key) is absent")
            }
        }
        // One multi-key proof for present and absent keys (a duplicate among them) says the
        // same as the single proofs, survives JSON, and is anchored in the checkpoint.
        let asked = (0..<32).map { "patient/\($0)" } + ["nobody", "patient/3"]
        let (multi, multiRoot, multiSize) = try ledger.keyProofs(keys: asked)
        #expect(multi.keyHashes.count == 33 && multiRoot == checkpoint.mapRoot && multiSize == checkpoint.size)
        let keysDocument = ProofDocument.keys(try .init(keys: asked, treeSize: multiSize, mapRoot: multiRoot, proof: multi))
        try keysDocument.verify(against: checkpoint)
        #expect(try ProofDocument(json: try keysDocument.jsonData()) == keysDocument)
        for key in asked {
            #expect(multi.value(of: SHA256.hash(utf8: key)) == .some(try ledger.keyProof(key: key).proof.value), "\(key)")
        }
        if case .keys(let parsed) = try ProofDocument(json: try keysDocument.jsonData()) {
            #expect(parsed.keys == parsed.proof.keyHashes.map { h in asked.first { SHA256.hash(utf8: $0) == h }! })
        }
        #expect(throws: LedgerError(.invalidArgument, "")) { try ledger.keyProofs(keys: []) }
        #expect(throws: LedgerError(.invalidArgument, "")) {
            try ProofDocument.Keys(keys: ["other"], treeSize: multiSize, mapRoot: multiRoot, proof: multi)
        }
        // At an earlier committed size it proves that size's map, not the checkpoint's.
        if let early = sizes.first, early < checkpoint.size {
            let (old, oldRoot, _) = try ledger.keyProofs(keys: asked, size: early)
            try old.verify(root: oldRoot)
            #expect(oldRoot == replayed[early])
            let oldDocument = ProofDocument.keys(try .init(keys: asked, treeSize: early, mapRoot: oldRoot, proof: old))
            #expect(throws: MerkleLogError.self) { try oldDocument.verify(against: checkpoint) }
        }

        // Rebuilding from the log reproduces every root.
        let report = try ledger.rebuildIndex()
        #expect(report.mismatches.isEmpty && report.versions == sizes.count && report.mapRoot == checkpoint.mapRoot)
        for size in sizes { #expect(try ledger.mapRoot(size: size) == replayed[size]) }
    }

    @Test func pruningTheKeyMapKeepsLaterVersionsAndTheWholeLog() throws {
        let path = ledgerPath("prune-map")
        defer { try? FileManager.default.removeItem(atPath: path) }
        let (ledger, _) = try Ledger.create(at: path, origin: "prune.example/ledger", options: scratchOptions())
        var all: [LedgerEntry] = []
        var sizes: [UInt64] = []
        var generator = SplitMix64(seed: 0x9a7e)
        func appendBatch() throws {
            let entries = try (0..<60).map { _ -> LedgerEntry in
                let key = "record/\(generator.next() % 200)"
                return generator.next() % 6 == 0 ? try LedgerEntry(delete: key) : try LedgerEntry(set: key, payload: Array("v\(generator.next())".utf8))
            }
            try ledger.append(entries)
            all += entries
            sizes.append(UInt64(all.count))
        }
        #expect(throws: LedgerError(.invalidArgument, "")) { try ledger.pruneKeyMap(before: 1) }
        #expect(try ledger.pruneKeyMap(before: 0) == LMDBSparseStore.PruneReport(), "an empty map: nothing to do")
        for _ in 0..<8 { try appendBatch() }
        let keep = sizes[3]
        let rootsBefore = try sizes.map { try ledger.mapRoot(size: $0) }
        let inclusionBefore = try ledger.inclusionProof(index: 5, size: sizes[0])

        let store = try LMDBSparseStore(environment: ledger.environment)
        func recordCounts() throws -> [Int] {
            try ledger.environment.read { txn in
                try [store.pagesDatabase, store.staleDatabase, store.rootsDatabase].map { try txn.unsafeView.count($0) }
            }
        }
        let countsBefore = try recordCounts()
        #expect(throws: LedgerError(.invalidArgument, "")) { try ledger.pruneKeyMap(before: sizes.last! + 1) }
        #expect(throws: LedgerError(.invalidArgument, "")) { try ledger.pruneKeyMap(before: keep, pagesPerTransaction: 0) }
        #expect(try recordCounts() == countsBefore, "a refused prune changes nothing")

        let report = try ledger.pruneKeyMap(before: keep, pagesPerTransaction: 1)
        #expect(report.versionsRemoved == 3 && report.pagesDeleted > 0 && report.oldestVersion == keep, "\(report)")
        #expect(report.transactions >= 3, "a bound of one page record steps through each stale record: \(report)")
        for (i, size) in sizes.enumerated() {
            if size < keep {
                #expect(throws: LedgerError(.notFound, "")) { try ledger.mapRoot(size: size) }
                #expect(throws: LedgerError(.notFound, "")) { try ledger.keyProof(key: "record/1", size: size) }
            } else {
                #expect(try ledger.mapRoot(size: size) == rootsBefore[i])
                for k in 0..<40 {
                    let (proof, root, _) = try ledger.keyProof(key: "record/\(k)", size: size)
                    try proof.verify(root: root)
                }
            }
        }
        // The log is untouched.
        let inclusionAfter = try ledger.inclusionProof(index: 5, size: sizes[0])
        #expect(inclusionAfter.proof == inclusionBefore.proof && inclusionAfter.rootHash == inclusionBefore.rootHash)
        #expect(try ledger.pruneKeyMap(before: keep).pagesDeleted == 0, "pruning again deletes nothing")

        // Appends after it derive the map an auditor replays; verify and rebuild agree.
        try appendBatch()
        let replayed = try MapReplay.roots(entries: all.map { $0.encoded() }, at: sizes)
        for size in sizes where size >= keep { #expect(try ledger.mapRoot(size: size) == replayed[size]) }
        let verified = try ledger.verify(VerificationOptions())
        #expect(verified.isValid, "\(verified.problems)")
        let rebuilt = try ledger.rebuildIndex()
        #expect(rebuilt.mismatches.isEmpty && rebuilt.versions == sizes.filter { $0 >= keep }.count)
        #expect(try ledger.mapRoot() == replayed[sizes.last!])

        // By default, one transaction.
        try appendBatch()
        let once = try ledger.pruneKeyMap(before: sizes.last!)
        #expect(once.transactions == 1 && once.pagesDeleted > 0 && once.oldestVersion == sizes.last!, "\(once)")
        #expect(try ledger.mapRoot() == MapReplay.roots(entries: all.map { $0.encoded() }, at: [sizes.last!])[sizes.last!])
    }

    /// A prune in steps stopped after its first step leaves what a prune before that step's
    /// version leaves: the ledger verifies and every later size proves; running it again
    /// finishes. A prune between two versions leaves what a prune at the later one leaves.
    @Test func aSteppedPruneStoppedBetweenStepsLeavesAVerifiableLedger() throws {
        let (ledger, path, sizes) = try prunableLedger("prune-stopped", seed: 0x57e9, batches: 6, perBatch: 50, keys: 150)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let roots = try sizes.map { try ledger.mapRoot(size: $0) }
        let store = try LMDBSparseStore(environment: ledger.environment)
        struct Stopped: Error {}
        var steps = 0
        #expect(throws: Stopped.self) {
            try store.prune(before: sizes[4], pagesPerTransaction: 1) { step in
                guard steps == 0 else { throw Stopped() }
                steps += 1
                return try step()
            }
        }
        let oldest = try #require(try store.read { try $0.oldestVersion(atOrAfter: 0) })
        #expect(oldest > sizes[0] && oldest < sizes[4], "the first step ended at a version: \(oldest)")
        let verified = try ledger.verify(VerificationOptions())
        #expect(verified.isValid, "\(verified.problems)")
        for (i, size) in sizes.enumerated() where size >= oldest {
            #expect(try ledger.mapRoot(size: size) == roots[i])
            for k in 0..<30 {
                let (proof, root, _) = try ledger.keyProof(key: "record/\(k)", size: size)
                try proof.verify(root: root)
            }
        }
        // Between two versions: the same records as at the later one.
        let rest = try ledger.pruneKeyMap(before: sizes[4] - 1)
        #expect(rest.oldestVersion == sizes[4] && rest.pagesDeleted > 0, "\(rest)")
        #expect(try ledger.pruneKeyMap(before: sizes[4]).pagesDeleted == 0, "nothing left to delete")
        let finished = try ledger.verify(VerificationOptions())
        #expect(finished.isValid, "\(finished.problems)")
    }

    /// After a prune, the oldest kept version's tree is made of pages written over batches
    /// whose boundaries are gone: `verify` checks that tree page by page, and still finds a
    /// changed byte in one of those pages, a page nothing uses, and a stale record left behind.
    @Test func verifyChecksThePagesAPruneKeptPageByPage() throws {
        // Every fourth batch touches no key (as audit commits do): its root names older pages.
        let (ledger, path, sizes) = try prunableLedger("prune-verify", seed: 0xfe21, batches: 12, perBatch: 80, keys: 300, unkeyedEvery: 4)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let oldest = sizes[6]
        _ = try ledger.pruneKeyMap(before: oldest)
        let clean = try ledger.verify(VerificationOptions())
        #expect(clean.isValid, "\(clean.problems)")

        let store = try LMDBSparseStore(environment: ledger.environment)
        func put(_ db: Database, _ key: [UInt8], _ value: [UInt8]?) throws {
            try ledger.environment.write { txn in
                if let value { try txn.unsafeView.put(db, key: key, value: value) } else { _ = try txn.unsafeView.delete(db, key: key) }
            }
        }
        func mapProblems() throws -> [String] {
            try ledger.verify(VerificationOptions()).problems.filter { $0.area == .map }.map { "\($0.location): \($0.detail)" }
        }
        // A page written before the oldest kept version that it still uses.
        func records(_ db: Database) throws -> [([UInt8], [UInt8])] {
            try ledger.environment.read { txn in
                try txn.withCursor(db) { cursor in
                    var found: [([UInt8], [UInt8])] = []
                    var more = try cursor.first()
                    while more {
                        found.append(cursor.withCurrent { key, value in (Array(key), Array(value)) })
                        more = try cursor.next()
                    }
                    return found
                }
            }
        }
        let (keptKey, keptRecord) = try #require(try records(store.pagesDatabase).first { key, _ in
            PageID(storageKey: key).map { $0.version < oldest } == true
        })
        var changed = keptRecord
        changed[changed.count - 1] ^= 0x01
        try put(store.pagesDatabase, keptKey, changed)
        #expect(!(try mapProblems()).isEmpty, "a changed byte in a kept page written before the oldest kept version")
        try put(store.pagesDatabase, keptKey, keptRecord)
        #expect(try mapProblems().isEmpty)

        // A page of an early version that no kept version uses.
        let junkKey = PageID(version: sizes[1], depth: 8, prefix: try #require(Hash(hex: "ab" + String(repeating: "0", count: 62)))).storageKey
        #expect(try !records(store.pagesDatabase).contains { $0.0 == junkKey })
        try put(store.pagesDatabase, junkKey, keptRecord)
        #expect(try mapProblems().contains { $0.contains("not used by the oldest kept version") })
        try put(store.pagesDatabase, junkKey, nil)

        // A stale record of a version below the oldest kept one.
        try put(store.staleDatabase, withUnsafeBytes(of: sizes[2].bigEndian) { Array($0) }, [UInt8(junkKey.count)] + junkKey)
        #expect(try mapProblems().contains { $0.contains("a stale record of a version below the oldest kept one") })
        try put(store.staleDatabase, withUnsafeBytes(of: sizes[2].bigEndian) { Array($0) }, nil)
        // A stale record of the oldest kept version that lists a page it uses: the next prune
        // would delete that page.
        let oldestStaleKey = withUnsafeBytes(of: oldest.bigEndian) { Array($0) }
        try put(store.staleDatabase, oldestStaleKey, [UInt8(keptKey.count)] + keptKey)
        #expect(try mapProblems().contains { $0.contains("lists a page the oldest kept version uses") })
        try put(store.staleDatabase, oldestStaleKey, nil)
        // Anything stored at version 0 (no append writes it), here a copy of a kept page.
        let zeroKey = PageID(version: 0, depth: 4, prefix: .zero).storageKey
        try put(store.pagesDatabase, zeroKey, keptRecord)
        #expect(try mapProblems().contains { $0.contains("size 0") })
        try put(store.pagesDatabase, zeroKey, nil)
        #expect(try ledger.verify(VerificationOptions()).isValid)
    }

    /// A prune made by the earlier code between two versions left the later version's stale
    /// record and the pages it lists: verify accepts them (they are listed as replaced), and
    /// the next prune removes them.
    @Test func aStaleRecordLeftAtTheOldestKeptVersionIsAcceptedThenPruned() throws {
        let (ledger, path, sizes) = try prunableLedger("prune-leftover", seed: 0x1eff, batches: 8, perBatch: 70, keys: 250)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let store = try LMDBSparseStore(environment: ledger.environment)
        let oldest = sizes[4]
        let staleKey = withUnsafeBytes(of: oldest.bigEndian) { Array($0) }
        // What the earlier code left: the stale record of the oldest kept version and its pages.
        let leftover: [([UInt8], [UInt8])] = try ledger.environment.read { txn in
            let record = try #require(try txn.value(store.staleDatabase, key: staleKey))
            let keys = try #require(record.withUnsafeBytes { LMDBSparseStore.staleKeys($0, replacedAt: oldest) })
            return [(staleKey, record)] + (try keys.map { ($0, try #require(try txn.value(store.pagesDatabase, key: $0))) })
        }
        #expect(leftover.count > 1)
        _ = try ledger.pruneKeyMap(before: oldest)
        try ledger.environment.write { txn in
            for (i, (key, value)) in leftover.enumerated() {
                try txn.unsafeView.put(i == 0 ? store.staleDatabase : store.pagesDatabase, key: key, value: value)
            }
        }
        let verified = try ledger.verify(VerificationOptions())
        #expect(verified.isValid, "\(verified.problems)")
        let again = try ledger.pruneKeyMap(before: oldest)
        #expect(again.pagesDeleted == leftover.count - 1 && again.versionsRemoved == 0, "\(again)")
        #expect(try ledger.verify(VerificationOptions()).isValid)
    }

    @Test func creationAndOpeningErrorsAreClear() throws {
        let path = ledgerPath("errors")
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(throws: LedgerError(.ledgerNotFound, "")) { try Ledger(path: path) }
        var readOnly = Ledger.Options()
        readOnly.readOnly = true
        #expect(throws: LedgerError(.ledgerNotFound, "")) { try Ledger(path: path, options: readOnly) }
        #expect(throws: LedgerError(.invalidArgument, "")) { try Ledger.create(at: path, origin: "bad origin") }
        #expect(throws: LedgerError(.invalidArgument, "")) { try Ledger.create(at: path, origin: "") }
        _ = try Ledger.create(at: path, origin: "o.example", options: scratchOptions())
        #expect(throws: LedgerError(.ledgerExists, "")) { try Ledger.create(at: path, origin: "o.example") }

        // A read-only open needs no signer key but cannot sign or append.
        do {
            let ro = try Ledger(path: path, options: readOnly)
            #expect(throws: LedgerError(.keyFile, "")) { try ro.signedCheckpoint() }
            #expect(throws: LedgerError.self) { try ro.append([try LedgerEntry(payload: [1])]) }
            // One open per process: a second open is refused, not allowed to break the first.
            #expect(throws: LedgerError(.storage, "")) { try Ledger(path: path) }
        }

        // A swapped signer key is refused.
        let keyPath = path + "/signer.key"
        let original = try String(contentsOfFile: keyPath, encoding: .utf8)
        try FileManager.default.removeItem(atPath: keyPath)
        #expect(throws: LedgerError(.keyFile, "")) { try Ledger(path: path) }
        try (try NoteSigner(generatingFor: "o.example").secretKeyText()).write(toFile: keyPath, atomically: true, encoding: .utf8)
        #expect(throws: LedgerError(.keyFile, "")) { try Ledger(path: path) }
        try original.write(toFile: keyPath, atomically: true, encoding: .utf8)
        _ = try Ledger(path: path)

        // A ledger of an unknown format version is refused, not misread.
        do {
            let env = try Environment(path: path)
            try env.write { txn in
                let meta = try #require(try txn.openDatabase("ledger.meta", create: false))
                try txn.put(meta, key: "format", value: UInt64(5))
            }
        }
        #expect(throws: LedgerError(.storage, "")) { try Ledger(path: path) }
        // Formats 2 (before the patient layer's log-ordered record tables) and 3 (before runs
        // of boxes) are read, and their patient layer's first writer marks them 4, which
        // earlier builds refuse.
        for earlier in [UInt64(2), 3] {
            do {
                let env = try Environment(path: path)
                try env.write { txn in
                    let meta = try #require(try txn.openDatabase("ledger.meta", create: false))
                    try txn.put(meta, key: "format", value: earlier)
                }
            }
            #expect(throws: Never.self) { _ = try Ledger(path: path) }
        }
        do {
            let ledger = try Ledger(path: path)
            let keyPath = path + ".format-test.key"
            defer { try? FileManager.default.removeItem(atPath: keyPath) }
            _ = try PatientRecords(ledger: ledger, masterKey: try MasterKeyFile.create(at: keyPath))
            let format = try ledger.environment.read { txn in
                let meta = try #require(try txn.openDatabase("ledger.meta", create: false))
                return try txn.value(meta, key: "format").flatMap { $0.withUnsafeBytes { UInt64(bigEndianBytes: $0) } }
            }
            #expect(format == 4)
        }
    }

    @Test func anInterruptedCreateCanBeRunAgainButALedgerIsNeverReplaced() throws {
        let path = ledgerPath("recreate")
        defer { try? FileManager.default.removeItem(atPath: path) }
        // What a create killed at each step leaves: key files, then an empty LMDB file, then an
        // environment with no database yet.
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        try "stale\n".write(toFile: path + "/signer.key", atomically: true, encoding: .utf8)
        try "stale\n".write(toFile: path + "/verifier.key", atomically: true, encoding: .utf8)
        #expect(throws: LedgerError(.ledgerNotFound, "")) { try Ledger(path: path) }
        #expect(FileManager.default.createFile(atPath: path + "/data.mdb", contents: Data()))
        do {
            let (ledger, key) = try Ledger.create(at: path, origin: "o.example", options: scratchOptions())
            #expect(try String(contentsOfFile: path + "/verifier.key", encoding: .utf8) == key + "\n")
            try ledger.append([try LedgerEntry(payload: [1])])
        }
        // A ledger, whole or damaged, is refused and its key files are left alone.
        let signer = try String(contentsOfFile: path + "/signer.key", encoding: .utf8)
        #expect(throws: LedgerError(.ledgerExists, "")) { try Ledger.create(at: path, origin: "o.example", options: scratchOptions()) }
        let data = try #require(FileManager.default.contents(atPath: path + "/data.mdb"))
        try data.prefix(100).write(to: URL(fileURLWithPath: path + "/data.mdb"))
        #expect(throws: LedgerError(.ledgerExists, "")) { try Ledger.create(at: path, origin: "o.example", options: scratchOptions()) }
        #expect(try String(contentsOfFile: path + "/signer.key", encoding: .utf8) == signer)
        // An environment that holds no database at all is debris too.
        try FileManager.default.removeItem(atPath: path + "/data.mdb")
        _ = try Environment(path: path)
        _ = try Ledger.create(at: path, origin: "o.example", options: scratchOptions())
    }

    @Test func signerKeyFileIsPrivate() throws {
        let path = ledgerPath("perm")
        defer { try? FileManager.default.removeItem(atPath: path) }
        _ = try Ledger.create(at: path, origin: "o.example", options: scratchOptions())
        let attributes = try FileManager.default.attributesOfItem(atPath: path + "/signer.key")
        #expect((attributes[.posixPermissions] as? Int) == 0o600)
    }

    @Test func aBadEntryAbortsTheWholeBatch() throws {
        let path = ledgerPath("batch")
        defer { try? FileManager.default.removeItem(atPath: path) }
        let (ledger, _) = try Ledger.create(at: path, origin: "o.example", options: scratchOptions())
        try ledger.append([try LedgerEntry(payload: [1])])
        let good = try LedgerEntry(payload: [2]).encoded()
        #expect(throws: LedgerError(.invalidEntry, "")) {
            try ledger.appendEncoded(count: 3) { i, body in
                try (i == 2 ? [0x09, 0x00, 0x00, 0x00] : good).withUnsafeBytes(body)
            }
        }
        #expect(try ledger.size == 1, "nothing of the failed batch is visible")
        try ledger.append([try LedgerEntry(payload: [3])])
        #expect(try ledger.entry(at: 1).payload == [3])
    }

    @Test func packedBatchesAreCheckedWhole() throws {
        let path = ledgerPath("packed")
        defer { try? FileManager.default.removeItem(atPath: path) }
        let (ledger, _) = try Ledger.create(at: path, origin: "o.example", options: scratchOptions())
        let entries = try (0..<5000).map { try LedgerEntry(set: $0 % 2 == 0 ? "k\($0)" : "", payload: Array("p\($0)".utf8)) }
        var packed: [UInt8] = []
        var ends: [Int] = []
        for e in entries { packed += e.encoded(); ends.append(packed.count) }
        func append(_ bytes: [UInt8], _ ends: [Int]) throws -> UInt64 {
            try bytes.withUnsafeBytes { b in try ends.withUnsafeBufferPointer { try ledger.appendPacked(b, ends: $0) } }
        }
        #expect(try append(packed, ends) == 0)
        let log = try MerkleLog(store: MemoryLogStore())
        try log.append(entries.map { $0.encoded() })
        #expect(try ledger.rootHash(size: 5000) == log.rootHash, "parallel leaf hashing gives the same root")

        var badHeader = packed
        badHeader[ends[2500]] = 0x07  // format byte of entry 2501
        #expect(throws: LedgerError(.invalidEntry, "")) { try append(badHeader, ends) }
        #expect(throws: LedgerError(.invalidArgument, "")) { try append(packed, ends.dropLast() + [packed.count + 1]) }
        #expect(throws: LedgerError(.invalidArgument, "")) { try append(packed, [ends[1], ends[0]]) }
        #expect(try ledger.size == 5000, "rejected batches leave nothing behind")
        #expect(try append(packed, ends) == 5000)
    }

    @Test func proofDocumentsRoundTripAndRejectGarbage() throws {
        let path = ledgerPath("json")
        defer { try? FileManager.default.removeItem(atPath: path) }
        let (ledger, _) = try Ledger.create(at: path, origin: "o.example", options: scratchOptions())
        try ledger.append(try (0..<10).map { try LedgerEntry(payload: [UInt8($0)]) })
        let (p, l, r) = try ledger.inclusionProof(index: 4)
        let doc = ProofDocument.inclusion(.init(proof: p, leafHash: l, rootHash: r))
        let json = try doc.jsonData()
        #expect(try ProofDocument(json: json) == doc)
        let text = String(decoding: json, as: UTF8.self)
        #expect(text.hasPrefix("{\"hashes\":["))
        for bad in [
            "", "[]", "{}", "{\"type\":\"inclusion\"}",
            text.replacingOccurrences(of: "\"leaf_index\":4", with: "\"leaf_index\":-4"),
            text.replacingOccurrences(of: "\"leaf_index\":4", with: "\"leaf_index\":4.5"),
            // The same value spelled another way: each proof has one spelling of its numbers.
            text.replacingOccurrences(of: "\"leaf_index\":4", with: "\"leaf_index\":4.0"),
            text.replacingOccurrences(of: "\"leaf_index\":4", with: "\"leaf_index\":4e0"),
            text.replacingOccurrences(of: "\"leaf_index\":4", with: "\"leaf_index\":40E-1"),
            text.replacingOccurrences(of: "\"leaf_index\":4", with: "\"leaf_index\":-0"),
            text.replacingOccurrences(of: "\"type\":", with: "\"note\":0.5,\"type\":"),
            text.replacingOccurrences(of: "\"type\":\"inclusion\"", with: "\"type\":\"other\""),
            text.replacingOccurrences(of: l.hex, with: String(l.hex.dropLast())),
            text.replacingOccurrences(of: l.hex, with: String(l.hex.dropLast()) + "g"),
        ] {
            #expect(throws: LedgerError(.invalidArgument, ""), "\(bad)") { try ProofDocument(json: Data(bad.utf8)) }
        }
    }

    /// Multi-key proof JSON (`Tests/Corpus/keys.json`, written by `prove key` with four keys):
    /// malformed documents are refused when parsed, wrong claims when verified.
    @Test func multiKeyProofDocumentsRejectGarbageAndFalseClaims() throws {
        let corpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Corpus/keys.json")
        let text = try String(contentsOf: corpus, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let document = try ProofDocument(json: Data(text.utf8))
        try document.verify()
        guard case .keys(let keys) = document else { Issue.record("not a multi-key proof"); return }
        #expect(keys.keys == ["alice", "carol", "nobody", "frank"])
        let aliceHash = SHA256.hash(utf8: "alice").hex
        let carolEntry = "{\"key\":\"carol\",\"key_hash\":\"\(SHA256.hash(utf8: "carol").hex)\",\"present\":false}"
        let unparsable = [
            text.replacingOccurrences(of: "\"key\":\"alice\"", with: "\"key\":\"alicia\""),   // key_hash no longer its key
            text.replacingOccurrences(of: carolEntry, with: carolEntry.replacingOccurrences(of: "false}", with: "false,\"value\":\"00\"}")),
            text.replacingOccurrences(of: carolEntry, with: carolEntry.replacingOccurrences(of: "false}", with: "true}")),
            text.replacingOccurrences(of: "{\"type\":\"interior\"}", with: "{\"hash\":\"\(aliceHash)\",\"type\":\"interior\"}"),
            text.replacingOccurrences(of: "{\"type\":\"interior\"}", with: "{\"type\":\"branch\"}"),
            text.replacingOccurrences(of: "\"keys\":[", with: "\"keys\":[{\"key\":\"alice\",\"key_hash\":\"\(aliceHash)\",\"present\":false},"),
            text.replacing(#/"keys":\[.*\],"map_root"/#, with: "\"keys\":[],\"map_root\""),
            text.replacing(#/,"nodes":\[.*\]/#, with: ""),
        ]
        for bad in unparsable {
            #expect(bad != text)
            #expect(throws: LedgerError(.invalidArgument, ""), "\(bad)") { try ProofDocument(json: Data(bad.utf8)) }
        }
        // Parsed, but false: a value changed, an absent key claimed present.
        let frankValue = Hex.encode(try #require(keys.proof.values[3]))
        let falseClaims = [
            text.replacingOccurrences(of: frankValue, with: String(frankValue.dropLast()) + (frankValue.hasSuffix("0") ? "1" : "0")),
            text.replacingOccurrences(of: carolEntry, with: carolEntry.replacingOccurrences(of: "false}", with: "true,\"value\":\"00\"}")),
        ]
        for bad in falseClaims {
            #expect(bad != text)
            let parsed = try ProofDocument(json: Data(bad.utf8))
            #expect(throws: MerkleLogError.self, "\(bad)") { try parsed.verify() }
        }
    }
}
