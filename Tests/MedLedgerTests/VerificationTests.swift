import Foundation
import Testing
import LMDBKit
import LedgerCrypto
@testable import MedLedger
import MerkleLog
import SparseMerkle
import TestSupport

/// A ledger holding every kind of stored data `verify` checks: keyed and unkeyed entries over
/// several commits (complete tiles, a pending tile, stored subtree hashes of levels 5 to 8),
/// deletes, patients with record versions, grants, a revocation, audited and break-glass
/// reads, and an erased patient.
final class VerifyFixture: @unchecked Sendable {
    let patients: PatientFixture
    var ledger: Ledger { patients.ledger }
    /// Entry indexes of interest.
    var recordIndex: UInt64 = 0
    var checkpoints: [String] = []

    init(_ name: String) throws {
        patients = try PatientFixture(name)
        var rng = SplitMix64(seed: 7)
        for batch in 0..<4 {
            var entries: [LedgerEntry] = []
            for i in 0..<(batch == 0 ? 300 : 37) {
                let key = i % 5 == 0 ? "" : "k\(rng.next() % 200)"
                entries.append(try LedgerEntry(set: key, payload: Array("payload \(batch) \(i)".utf8)))
            }
            if batch == 2 { entries.append(try LedgerEntry(delete: "k\(rng.next() % 200)")) }
            _ = try ledger.append(entries)
            checkpoints.append(try ledger.signedCheckpoint())
        }
        let records = patients.records
        try records.addPatient(externalId: "Patient/a")
        try records.addPatient(externalId: "Patient/b")
        recordIndex = try records.putRecord(patient: "Patient/a", recordId: "obs-1", content: observation("a1")).index
        try records.putRecord(patient: "Patient/a", recordId: "obs-1", content: observation("a2"))
        try records.putRecord(patient: "Patient/b", recordId: "obs-1", content: observation("b1"))
        let doctor = try Ed25519PrivateKey().publicKey
        let later = Date(timeIntervalSince1970: patients.now + 86_400)
        try records.grant(patient: "Patient/a", to: "dr-lee", granteeKey: doctor, notAfter: later)
        try records.grant(patient: "Patient/a", to: "dr-kim", granteeKey: doctor, notAfter: later)
        try records.grant(patient: "Patient/a", to: "dr-sealed", granteeKey: doctor,
                          granteeEncryptionKey: try X25519PrivateKey().publicKey, notAfter: later)
        try records.grant(patient: "Patient/b", to: "dr-lee", granteeKey: doctor, notAfter: later)
        // Two audit events folded into pl.audit, the third still staged in pl.audit.recent.
        records.minimumAuditFold = 2
        _ = try records.read(patient: "Patient/a", recordId: "obs-1", as: .grantee("dr-lee"))
        _ = try records.read(patient: "Patient/a", recordId: "obs-1", as: .grantee("dr-who"), breakGlass: "unconscious")
        _ = try records.read(patient: "Patient/a", recordId: "obs-1", as: .grantee("dr-lee"))
        try records.revoke(patient: "Patient/a", grantee: "dr-kim")
        try records.erase(patient: "Patient/b")
        // The erasure folded every record version into pl.records; two more stay staged.
        try records.putRecord(patient: "Patient/a", recordId: "obs-2", content: observation("a3"))
        try records.putRecord(patient: "Patient/a", recordId: "obs-3", content: observation("a4"))
        // Three boxes packed in one run of pl.boxes (the last row).
        try records.putRecords((5...7).map { .init(patient: "Patient/a", recordId: "obs-\($0)", content: observation("a\($0)")) })
        checkpoints.append(try ledger.signedCheckpoint())
    }

    func verify(_ options: VerificationOptions = VerificationOptions()) throws -> VerificationReport {
        var options = options
        if options.checkpoints.isEmpty { options.checkpoints = checkpoints }
        return try ledger.verify(options)
    }

    /// Changes stored bytes behind the ledger's back, in one write transaction.
    func tamper(_ body: (TransactionView) throws -> Void) throws {
        try ledger.environment.write { txn in try body(txn.unsafeView) }
    }

    func database(_ name: String) throws -> Database {
        try #require(try ledger.environment.openDatabase(name, create: false))
    }
}

func u64(_ value: UInt64) -> [UInt8] { withUnsafeBytes(of: value.bigEndian) { Array($0) } }
func u32(_ value: UInt32) -> [UInt8] { withUnsafeBytes(of: value.bigEndian) { Array($0) } }

/// The key of the `n`th record of `db` (0-based).
func nthKey(_ view: TransactionView, _ db: Database, _ n: Int) throws -> [UInt8] {
    try view.withCursor(db) { cursor in
        var more = try cursor.first()
        for _ in 0..<n where more { more = try cursor.next() }
        #expect(more)
        return cursor.withCurrent { key, _ in Array(key) }
    }
}

func flipLastByte(_ view: TransactionView, _ db: Database, key: [UInt8]) throws {
    var value = try #require(try view.value(db, key: key))
    value[value.count - 1] ^= 0x01
    try view.put(db, key: key, value: value)
}

@Suite struct VerificationTests {
    @Test func intactLedgerVerifiesAndSignsTheRecomputedState() throws {
        let f = try VerifyFixture("verify-ok")
        let report = try f.verify(VerificationOptions())
        #expect(report.isValid, "\(report.problems)")
        let checkpoint = try f.ledger.checkpoint()
        #expect(report.treeSize == checkpoint.size)
        #expect(report.entries == checkpoint.size)
        #expect(report.rootHash == checkpoint.rootHash)
        #expect(report.mapRoot == checkpoint.mapRoot)
        #expect(report.checkpoint == (try f.ledger.signedCheckpoint()))
        #expect(report.checkpointsChecked == f.checkpoints.count)
        // Versions: one per append (4 raw batches, 2 registrations, 3 puts, 4 grants, 3 reads,
        // a revocation, an erasure, 2 puts, a batch put).
        #expect(report.mapVersions == 21)
        #expect(report.mapPages > 0 && report.storedHashes > report.entries)
        // Records: patient a's 2 folded and 2 staged versions (patient b's was erased).
        #expect(report.patients == 2 && report.records == 7 && report.grants == 3 && report.auditEvents == 3)

        var withKey = VerificationOptions()
        withKey.masterKey = try MasterKeyFile(path: f.patients.keyPath)
        #expect(try f.verify(withKey).isValid)
    }

    @Test func prunedMapVersionsStillVerify() throws {
        let f = try VerifyFixture("verify-pruned")
        let sizes = f.checkpoints.map { try! Checkpoint(parsing: SignedNote(parsing: $0).text).size }
        let store = try LMDBSparseStore(environment: f.ledger.environment)
        let deleted = try store.write { try $0.prune(before: sizes[2]) }
        #expect(deleted > 0)
        var options = VerificationOptions()
        options.checkpoints = Array(f.checkpoints[2...])
        let report = try f.ledger.verify(options)
        #expect(report.isValid, "\(report.problems)")
        // The map of a size where the ledger never committed cannot be rebuilt: reported.
        let signer = try NoteSigner(parsing: String(contentsOfFile: f.ledger.path + "/signer.key", encoding: .utf8))
        let between = try signer.sign(Checkpoint(origin: f.ledger.origin, size: 301, rootHash: try f.ledger.rootHash(size: 301),
                                                 mapRoot: SparseHash.empty).text)
        options.checkpoints = [between]
        let pruned = try f.ledger.verify(options)
        #expect(pruned.problems.map(\.area) == [.checkpoint], "\(pruned.problems)")
        #expect(pruned.problems.first?.detail.contains("not a size where this ledger committed") == true)
    }

    @Test func checkpointsTheLedgerNoLongerMatchesAreReported() throws {
        let f = try VerifyFixture("verify-checkpoints")
        let signer = try NoteSigner(parsing: String(contentsOfFile: f.ledger.path + "/signer.key", encoding: .utf8))
        let current = try f.ledger.checkpoint()
        let beyond = try signer.sign(Checkpoint(origin: f.ledger.origin, size: current.size + 5, rootHash: current.rootHash,
                                                mapRoot: current.mapRoot!).text)
        let forked = try signer.sign(Checkpoint(origin: f.ledger.origin, size: 300, rootHash: SHA256.hash(utf8: "fork"),
                                                mapRoot: try f.ledger.mapRoot(size: 300)).text)
        let otherMap = try signer.sign(Checkpoint(origin: f.ledger.origin, size: 300, rootHash: try f.ledger.rootHash(size: 300),
                                                  mapRoot: SHA256.hash(utf8: "map")).text)
        let foreign = try NoteSigner(generatingFor: f.ledger.origin).sign(current.text)
        for (note, expected) in [(beyond, "beyond"), (forked, "log root"), (otherMap, "map root"), (foreign, "does not verify")] {
            var options = VerificationOptions()
            options.checkpoints = [note]
            let report = try f.ledger.verify(options)
            #expect(report.problemCount == 1)
            #expect(report.problems.first?.area == .checkpoint)
            #expect(report.problems.first?.detail.contains(expected) == true, "\(report.problems)")
        }
    }

    /// Each change to stored data is found, and named where it is.
    @Test(arguments: [
        "entry", "leaf", "subtree", "missing-subtree", "pending-tile", "size", "missing-entry",
        "page", "root", "missing-root", "stale", "box", "missing-box", "missing-record", "record-renamed", "missing-folded-record", "folded-record-renamed", "surplus-box", "box-run-header", "box-run-slot", "audit", "audit-staged", "audit-twice", "breakglass",
        "patient", "grant", "wrapped-key", "sealed-key",
    ])
    func tamperingIsDetectedAndLocated(_ what: String) throws {
        let f = try VerifyFixture("verify-\(what)")
        let size = try f.ledger.checkpoint().size
        var options = VerificationOptions()
        options.masterKey = try MasterKeyFile(path: f.patients.keyPath)
        var expected: (VerificationReport.Area, String)
        switch what {
        case "entry":
            let db = try f.database("log.entries")
            try f.tamper { try flipLastByte($0, db, key: u64(100)) }
            expected = (.log, "entry 100")
        case "leaf":
            let db = try f.database("log.tiles")
            try f.tamper { view in
                var tile = try #require(try view.value(db, key: UInt64(1)))
                tile[3 * 32] ^= 0x80  // leaf 3 of block 1
                try view.put(db, key: UInt64(1), value: tile)
            }
            expected = (.log, "entry 35")
        case "subtree":
            let db = try f.database("log.h06")
            try f.tamper { try flipLastByte($0, db, key: u64(2)) }
            expected = (.log, "log.h06 node 2")
        case "missing-subtree":
            let db = try f.database("log.h05")
            try f.tamper { _ = try $0.delete(db, key: UInt64(7)) }
            expected = (.log, "log.h05 node 7")
        case "pending-tile":
            #expect(size % 32 != 0)
            let db = try f.database("log.meta")
            try f.tamper { view in
                var value = try #require(try view.value(db, key: Array("tile.pending".utf8)))
                value[8] ^= 0x01  // the leaf hash of the incomplete block's first entry
                try view.put(db, key: Array("tile.pending".utf8), value: value)
            }
            expected = (.log, "entry \(size / 32 * 32)")
        case "size":
            let db = try f.database("log.meta")
            try f.tamper { try $0.put(db, key: Array("size".utf8), value: u64(size - 1)) }
            expected = (.log, "log.entries")
        case "missing-entry":
            let db = try f.database("log.entries")
            try f.tamper { _ = try $0.delete(db, key: UInt64(200)) }
            expected = (.log, "entry 200")
        case "page":
            let pages = try f.database("smt.pages")
            var key: [UInt8] = []
            try f.tamper { view in
                key = try nthKey(view, pages, 5)
                try flipLastByte(view, pages, key: key)
            }
            expected = (.map, "smt.pages version \(key.prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) })")
        case "root":
            let roots = try f.database("smt.roots")
            try f.tamper { try flipLastByte($0, roots, key: u64(size)) }
            expected = (.map, "smt.roots version \(size)")
        case "missing-root":
            let roots = try f.database("smt.roots")
            let version = try Checkpoint(parsing: SignedNote(parsing: f.checkpoints[1]).text).size
            try f.tamper { _ = try $0.delete(roots, key: version) }
            expected = (.map, "smt.roots version \(version)")
        case "stale":
            let stale = try f.database("smt.stale")
            var key: [UInt8] = []
            try f.tamper { view in
                key = try nthKey(view, stale, 3)
                _ = try view.delete(stale, key: key)
            }
            expected = (.map, "smt.stale version \(key.prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) })")
        case "box":
            let db = try f.database("pl.boxes")
            try f.tamper { view in try flipLastByte(view, db, key: try nthKey(view, db, 0)) }
            expected = (.records, "entry")
        case "missing-box":
            let db = try f.database("pl.boxes")
            try f.tamper { view in _ = try view.delete(db, key: try nthKey(view, db, 1)) }
            expected = (.records, "entry")
        case "missing-record":
            let db = try f.database("pl.records.recent")
            try f.tamper { view in _ = try view.delete(db, key: try nthKey(view, db, 1)) }
            expected = (.records, "entry")
        case "missing-folded-record":
            let db = try f.database("pl.records")
            try f.tamper { view in _ = try view.delete(db, key: try nthKey(view, db, 0)) }
            expected = (.records, "entry")
        case "folded-record-renamed":
            // A folded row naming another entry.
            let db = try f.database("pl.records")
            try f.tamper { view in try flipLastByte(view, db, key: try nthKey(view, db, 1)) }
            expected = (.records, "entry")
        case "record-renamed":
            // A staged row naming another version of its record.
            let db = try f.database("pl.records.recent")
            try f.tamper { view in
                let key = try nthKey(view, db, 0)
                var row = try #require(try view.value(db, key: key))
                row[row.count - 1] ^= 0x01
                try view.put(db, key: key, value: row)
            }
            expected = (.records, "entry")
        case "surplus-box":
            let db = try f.database("pl.boxes")
            try f.tamper { view in
                let key = try nthKey(view, db, 0)
                try view.put(db, key: size + 5, value: try #require(try view.value(db, key: key)))
            }
            expected = (.records, "pl.boxes")
        case "box-run-header", "box-run-slot":
            // The last row is the run of three boxes: one more slot than its ends name, or its
            // middle slot emptied (its box gone, the run still well formed).
            let db = try f.database("pl.boxes")
            try f.tamper { view in
                let key = try view.withCursor(db) { cursor -> [UInt8] in
                    let found = try cursor.last()
                    #expect(found)
                    return cursor.withCurrent { key, _ in Array(key) }
                }
                var value = try #require(try view.value(db, key: key))
                #expect(key.count == 9 && value[..<4] == [0, 0, 0, 3])
                if what == "box-run-header" {
                    value[3] = 4
                } else {
                    let ends = (0..<3).map { i in value[(4 + 4 * i)..<(8 + 4 * i)].reduce(0) { $0 << 8 | Int($1) } }
                    let slot = (16 + ends[0])..<(16 + ends[1])
                    value.removeSubrange(slot)
                    value.replaceSubrange(8..<16, with: u32(UInt32(ends[0])) + u32(UInt32(ends[2] - slot.count)))
                }
                try view.put(db, key: key, value: value)
            }
            expected = what == "box-run-header" ? (.records, "pl.boxes") : (.records, "entry")
        case "audit":
            let db = try f.database("pl.audit")
            try f.tamper { view in _ = try view.delete(db, key: try nthKey(view, db, 0)) }
            expected = (.audit, "entry")
        case "audit-staged":
            let db = try f.database("pl.audit.recent")
            try f.tamper { view in _ = try view.delete(db, key: try nthKey(view, db, 0)) }
            expected = (.audit, "entry")
        case "audit-twice":
            // A staged event's row also in pl.audit.
            let recent = try f.database("pl.audit.recent"), audit = try f.database("pl.audit")
            try f.tamper { view in
                let index = try nthKey(view, recent, 0)
                let p = try #require(try view.value(recent, key: index))
                try view.put(audit, key: p + index, value: [UInt8]())
            }
            expected = (.audit, "entry")
        case "breakglass":
            let db = try f.database("pl.breakglass")
            try f.tamper { view in _ = try view.delete(db, key: try nthKey(view, db, 0)) }
            expected = (.audit, "entry")
        case "patient":
            let db = try f.database("pl.patients")
            try f.tamper { view in
                let key = try nthKey(view, db, 0)
                var state = try #require(try view.value(db, key: key))
                state[8] ^= 0x01  // the low byte of the registration/erasure index
                try view.put(db, key: key, value: state)
            }
            expected = (.patients, "pl.patients")
        case "grant":
            let db = try f.database("pl.grants")
            try f.tamper { view in
                let key = try nthKey(view, db, 0)
                let row = String(decoding: try #require(try view.value(db, key: key)), as: UTF8.self)
                try view.put(db, key: key, value: Array(row.replacingOccurrences(of: "\"not_after\":", with: "\"not_after\":1").utf8))
            }
            expected = (.grants, "pl.grants")
        case "wrapped-key":
            let db = try f.database("pl.patients")
            try f.tamper { view in
                var found: [UInt8] = []
                var state: [UInt8] = []
                try view.withCursor(db) { cursor in
                    var more = try cursor.first()
                    while more, state.isEmpty {
                        cursor.withCurrent { key, value in if value[0] == 1 { (found, state) = (Array(key), Array(value)) } }
                        more = try cursor.next()
                    }
                }
                state[19 + 2 + 20] ^= 0x01  // inside the first wrapped key
                try view.put(db, key: found, value: state)
            }
            expected = (.patients, "pl.patients")
        case "sealed-key":
            let db = try f.database("pl.grants")
            let key = try f.patients.records.pseudonym(of: "Patient/a").bytes + Array("dr-sealed".utf8)
            try f.tamper { view in
                let stored = try #require(try view.value(db, key: key))
                var row = try #require(PatientRowJSON.decode(stored))
                var sealed = try #require(row["sealed_keys"] as? [String: String])
                let epoch = try #require(sealed.keys.first)
                var bytes = try #require(Base64.decode(sealed[epoch]!))
                bytes[50] ^= 0x01  // inside the box: only the grantee's open, or the tag, can tell
                sealed[epoch] = Base64.encode(bytes)
                row["sealed_keys"] = sealed
                try view.put(db, key: key, value: [UInt8](try JSONSerialization.data(withJSONObject: row, options: [.sortedKeys, .withoutEscapingSlashes])))
            }
            expected = (.grants, "pl.grants")
        default:
            Issue.record("unknown case \(what)")
            return
        }
        let report = try f.verify(options)
        #expect(!report.isValid)
        let located = report.problems.contains { $0.area == expected.0 && $0.location.hasPrefix(expected.1) }
        #expect(located, "expected \(expected.0) at \(expected.1); got \(report.problems)")
    }

    @Test func aChangedEntryIsListedFirstWithTheRootsItBreaks() throws {
        let f = try VerifyFixture("verify-entry-first")
        let db = try f.database("log.entries")
        try f.tamper { try flipLastByte($0, db, key: u64(3)) }
        let report = try f.verify()
        let leaf = SHA256.leafHash(try f.ledger.rawEntry(at: 3).bytes)
        #expect(report.problems.first?.area == .log)
        #expect(report.problems.first?.location == "entry 3")
        #expect(report.problems.first?.detail == "stored leaf hash differs from the entry's \(leaf.hex)")
        // Every checkpoint signed after it no longer matches the entries.
        #expect(report.problems.filter { $0.area == .checkpoint }.count == f.checkpoints.count)
    }
}

enum PatientRowJSON {
    static func decode(_ bytes: [UInt8]) -> [String: Any]? {
        (try? JSONSerialization.jsonObject(with: Data(bytes))) as? [String: Any]
    }
}
