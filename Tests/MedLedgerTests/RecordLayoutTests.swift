import Foundation
import Testing
import LedgerCrypto
import LMDBKit
@testable import MedLedger
import TestSupport

/// Record versions are staged in log order and folded into the record-ordered index in bulk
/// (`RecordIndex.swift`); these tests hold every lookup to a model across folds, snapshots,
/// layers with their own staged index, rows of the earlier layout, and erasure.
@Suite struct RecordLayoutTests {
    /// What the tests expect: each record's contents by version (1-based).
    struct Model {
        var contents: [String: [String: [[UInt8]]]] = [:]

        mutating func put(_ patient: String, _ record: String, _ content: [UInt8]) {
            contents[patient, default: [:]][record, default: []].append(content)
        }
    }

    static func check(_ records: PatientRecords, _ model: Model, sample: inout SplitMix64) throws {
        for (patient, byRecord) in model.contents {
            let listed = try records.list(patient: patient, as: .custodian("check"))
            #expect(Dictionary(uniqueKeysWithValues: listed.map { ($0.recordId, $0.version) })
                    == byRecord.mapValues { UInt32($0.count) }, "list of \(patient)")
            for (record, versions) in byRecord where sample.next() % 3 == 0 {
                let latest = try records.read(patient: patient, recordId: record, as: .custodian("check"))
                #expect(latest.version == UInt32(versions.count) && latest.content == versions.last!)
                let v = Int(sample.next() % UInt64(versions.count))
                #expect(try records.read(patient: patient, recordId: record, version: UInt32(v + 1), as: .custodian("check")).content
                        == versions[v])
                #expect(try records.history(patient: patient, recordId: record, as: .custodian("check")).map(\.version)
                        == (1...UInt32(versions.count)).map { $0 })
                #expect(throws: LedgerError(.recordNotFound, "")) {
                    try records.read(patient: patient, recordId: record, version: UInt32(versions.count + 1), as: .custodian("check"))
                }
            }
        }
    }

    static func foldedThrough(_ records: PatientRecords) throws -> UInt64 {
        try records.ledger.environment.read { txn in try StagedRecords.foldedThrough(txn.unsafeView, meta: records.meta) }
    }

    static func stagedCount(_ records: PatientRecords) throws -> Int {
        try records.ledger.environment.read { txn in try txn.unsafeView.count(try #require(records.recordTables.staged)) }
    }

    /// Random batches of new records and new versions, folded every few batches: every read,
    /// version read, history and listing matches the model, through this layer and through a
    /// second one on the same ledger (another process's view, with its own staged index); an
    /// erasure after folds deletes every row of the patient and verification passes throughout.
    @Test func versionsReadTheSameAcrossFolds() throws {
        let f = try PatientFixture("record-folds")
        f.records.minimumRecordFold = 16
        let other = try PatientRecords(ledger: f.ledger, masterKey: try MasterKeyFile(path: f.keyPath))
        let patients = (0..<5).map { "Patient/\($0)" }
        for patient in patients { try f.records.addPatient(externalId: patient) }
        var model = Model()
        var rng = SplitMix64(seed: 41)
        var folds = Set<UInt64>()
        for round in 0..<30 {
            let count = 1 + Int(rng.next() % 12)
            let inputs = (0..<count).map { _ -> PatientRecords.RecordInput in
                let patient = patients[Int(rng.next() % UInt64(patients.count))]
                let record = "obs-\(rng.next() % 8)"
                return PatientRecords.RecordInput(patient: patient, recordId: record, content: observation("r\(round)-\(rng.next())"))
            }
            let infos = try (round % 2 == 0 ? f.records : other).putRecords(inputs)
            for (input, info) in zip(inputs, infos) {
                model.put(input.patient, input.recordId, input.content)
                #expect(info.version == UInt32(model.contents[input.patient]![input.recordId]!.count))
            }
            folds.insert(try Self.foldedThrough(f.records))
            try Self.check(round % 3 == 0 ? other : f.records, model, sample: &rng)
        }
        #expect(folds.count >= 4, "folds happened: \(folds.sorted())")
        try Self.check(f.records, model, sample: &rng)
        try Self.check(other, model, sample: &rng)
        #expect(try f.ledger.verify().isValid)

        // Erasure after folds: the patient's folded and staged rows and boxes all go.
        let erased = patients[0]
        let versions = model.contents[erased]!.values.reduce(0) { $0 + $1.count }
        let report = try f.records.erase(patient: erased)
        #expect(report.recordVersionsDeleted == versions)
        model.contents[erased] = nil
        // The erasure moved the master key to a new generation: another process opens the key
        // file again.
        let reopened = try PatientRecords(ledger: f.ledger, masterKey: try MasterKeyFile(path: f.keyPath))
        #expect(throws: LedgerError(.erased, "")) { try reopened.read(patient: erased, recordId: "obs-0", as: .custodian("c")) }
        try Self.check(reopened, model, sample: &rng)
        let verified = try f.ledger.verify()
        #expect(verified.isValid, "\(verified.problems)")
        // Writing goes on after the erasure, folding again.
        for round in 0..<6 {
            let inputs = (0..<10).map { i in
                PatientRecords.RecordInput(patient: patients[1 + i % 4], recordId: "obs-\(i % 3)", content: observation("after\(round)-\(i)"))
            }
            try f.records.putRecords(inputs)
            for input in inputs { model.put(input.patient, input.recordId, input.content) }
        }
        try Self.check(reopened, model, sample: &rng)
        #expect(try f.ledger.verify().isValid)
    }

    /// A snapshot taken before a fold that this layer's index has already followed reads the
    /// rows it stages through an index of its own, and finds them.
    @Test func aSnapshotOlderThanAFoldStillFindsItsStagedVersions() throws {
        let f = try PatientFixture("record-old-snapshot")
        let records = f.records
        records.minimumRecordFold = 16
        try records.addPatient(externalId: "Patient/1")
        try records.putRecords((0..<10).map { .init(patient: "Patient/1", recordId: "obs-\($0)", content: observation("v1-\($0)")) })
        #expect(try Self.stagedCount(records) == 10)
        let p = try records.pseudonym(of: "Patient/1")
        try records.ledger.environment.read { old in
            let view = old.unsafeView
            // Later commits fold every row this snapshot stages, and the shared index follows.
            try records.putRecords((0..<10).map { .init(patient: "Patient/1", recordId: "obs-\($0)", content: observation("v2-\($0)")) })
            #expect(try Self.stagedCount(records) == 0)
            _ = try records.read(patient: "Patient/1", recordId: "obs-3", as: .custodian("c"))
            let tables = records.recordTables
            let lens = try records.stagedRecords.lens(view, tables: tables)
            #expect(lens.staged !== records.stagedRecords)
            for i in 0..<10 {
                let r = try records.recordHash(p, "obs-\(i)")
                let newest = try tables.withVersion(view, lens, p, r, version: nil) { $0.place }
                #expect(try newest?.get().version == 1)
                #expect(try tables.newestVersion(view, lens, p, r) == 1)
            }
        }
        #expect(try records.read(patient: "Patient/1", recordId: "obs-3", as: .custodian("c")).content == observation("v2-3"))
    }

    /// A lens taken before a fold keeps the rows of its snapshot after another thread's newer
    /// snapshot has moved the shared index past that fold.
    @Test func aLensKeepsItsRowsWhenTheIndexMovesOn() throws {
        let f = try PatientFixture("record-lens-era")
        let records = f.records
        records.minimumRecordFold = 16
        try records.addPatient(externalId: "Patient/1")
        try records.putRecords((0..<10).map { .init(patient: "Patient/1", recordId: "obs-\($0)", content: observation("v1-\($0)")) })
        let p = try records.pseudonym(of: "Patient/1")
        try records.ledger.environment.read { old in
            let view = old.unsafeView
            let tables = records.recordTables
            let lens = try records.stagedRecords.lens(view, tables: tables)
            #expect(lens.staged === records.stagedRecords)
            try records.putRecords((0..<10).map { .init(patient: "Patient/1", recordId: "obs-\($0)", content: observation("v2-\($0)")) })
            _ = try records.read(patient: "Patient/1", recordId: "obs-3", as: .custodian("c"))  // the index follows the fold
            for i in 0..<10 {
                let r = try records.recordHash(p, "obs-\(i)")
                #expect(lens.find(RecordSlot(p: p, r: r), version: nil)?.version == 1)
                #expect(try tables.withVersion(view, lens, p, r, version: nil) { Array($0.box) }.map { try $0.get().count } != nil)
            }
        }
    }

    /// An erasure folds before it deletes: a snapshot from before the erasure, whose lens is
    /// made only after a later snapshot brought the shared index past it, still finds the
    /// erased patient's staged versions it holds (they were never scanned into the index).
    @Test func aSnapshotFromBeforeAnErasureFindsItsStagedVersions() throws {
        let f = try PatientFixture("record-erasure-era")
        let records = f.records
        try records.addPatient(externalId: "Patient/x")
        try records.addPatient(externalId: "Patient/y")
        try records.putRecord(patient: "Patient/x", recordId: "obs", content: observation("x1"))
        try records.ledger.environment.write { txn in try records.recordTables.fold(txn.unsafeView, sizeAfter: try f.ledger.size) }
        try records.putRecord(patient: "Patient/x", recordId: "obs", content: observation("x2"))
        let p = try records.pseudonym(of: "Patient/x"), r = try records.recordHash(p, "obs")
        try records.ledger.environment.read { old in
            let view = old.unsafeView
            try records.erase(patient: "Patient/x")
            let reopened = try PatientRecords(ledger: f.ledger, masterKey: try MasterKeyFile(path: f.keyPath))
            try reopened.putRecord(patient: "Patient/y", recordId: "obs", content: observation("y1"))
            _ = try reopened.read(patient: "Patient/y", recordId: "obs", as: .custodian("c"))
            let lens = try reopened.stagedRecords.lens(view, tables: reopened.recordTables)
            #expect(lens.find(RecordSlot(p: p, r: r), version: nil)?.version == 2)
            #expect(try reopened.recordTables.newestVersion(view, lens, p, r) == 2)
        }
        #expect(throws: LedgerError(.erased, "")) {
            try PatientRecords(ledger: f.ledger, masterKey: try MasterKeyFile(path: f.keyPath)).read(patient: "Patient/x", recordId: "obs", as: .custodian("c"))
        }
        #expect(try f.ledger.verify().isValid)
    }

    /// A ledger written before `pl.boxes` keeps each box in its `pl.records` row: such rows
    /// read, list, verify and erase as before, and new versions of their records go to the
    /// new tables.
    @Test func rowsOfTheEarlierLayoutStillRead() throws {
        let f = try PatientFixture("record-earlier-layout")
        let records = f.records
        try records.addPatient(externalId: "Patient/1")
        try records.addPatient(externalId: "Patient/2")
        for version in 1...2 {
            try records.putRecords([.init(patient: "Patient/1", recordId: "obs", content: observation("old\(version)")),
                                    .init(patient: "Patient/2", recordId: "obs", content: observation("other\(version)"))])
        }
        // Rewrite every version as the earlier layout stored it: index || epoch || box in pl.records.
        let tables = records.recordTables
        let (staged, boxes) = try tables.writable()
        try records.ledger.environment.write { txn in
            let view = txn.unsafeView
            var rows: [(UInt64, [UInt8])] = []
            try view.withCursor(staged) { cursor in
                var more = try cursor.first()
                while more {
                    rows.append(cursor.withCurrent { key, value in (UInt64(bigEndianBytes: key)!, Array(value)) })
                    more = try cursor.next()
                }
            }
            for (index, key) in rows {
                let box = try #require(try tables.withBox(view, index: index, version: 0) { u32($0.epoch) + Array($0.box) })
                try view.put(records.records, key: key, value: u64(index) + box)
                _ = try view.delete(staged, key: index)
            }
            try tables.deleteBoxes(view, rows.map(\.0))
            #expect(try view.count(boxes) == 0)
        }
        let fresh = try PatientRecords(ledger: f.ledger, masterKey: try MasterKeyFile(path: f.keyPath))
        for layer in [records, fresh] {
            #expect(try layer.read(patient: "Patient/1", recordId: "obs", as: .custodian("c")).content == observation("old2"))
            #expect(try layer.read(patient: "Patient/1", recordId: "obs", version: 1, as: .custodian("c")).content == observation("old1"))
            #expect(try layer.history(patient: "Patient/1", recordId: "obs", as: .custodian("c")).map(\.version) == [1, 2])
        }
        #expect(try f.ledger.verify().isValid)
        try records.putRecord(patient: "Patient/1", recordId: "obs", content: observation("new3"))
        for layer in [records, fresh] {
            #expect(try layer.read(patient: "Patient/1", recordId: "obs", as: .custodian("c")).content == observation("new3"))
            #expect(try layer.read(patient: "Patient/1", recordId: "obs", version: 2, as: .custodian("c")).content == observation("old2"))
            #expect(try layer.list(patient: "Patient/1", as: .custodian("c")).map(\.version) == [3])
        }
        let verified = try f.ledger.verify()
        #expect(verified.isValid, "\(verified.problems)")
        #expect(try records.erase(patient: "Patient/1").recordVersionsDeleted == 3)
        #expect(try records.read(patient: "Patient/2", recordId: "obs", as: .custodian("c")).content == observation("other2"))
        #expect(try f.ledger.verify().isValid)
    }
}
