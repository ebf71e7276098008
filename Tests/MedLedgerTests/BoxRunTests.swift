import Foundation
import Testing
import LedgerCrypto
import LMDBKit
@testable import MedLedger
import TestSupport

/// A put packs its boxes into runs of `pl.boxes` (FORMATS.md section 10.5); these tests hold
/// reads, erasure and verification to them, and to rows of the per-entry layout beside them.
@Suite struct BoxRunTests {
    /// The rows of `pl.boxes`: key and value.
    static func rows(_ f: PatientFixture) throws -> [([UInt8], [UInt8])] {
        let db = try #require(f.records.recordTables.boxes)
        return try f.ledger.environment.read { txn in
            try txn.unsafeView.withCursor(db) { cursor in
                var out: [([UInt8], [UInt8])] = []
                var more = try cursor.first()
                while more {
                    out.append(cursor.withCurrent { (Array($0), Array($1)) })
                    more = try cursor.next()
                }
                return out
            }
        }
    }

    static func boxIndexes(_ f: PatientFixture) throws -> [UInt64] {
        try f.ledger.environment.read { txn in
            var out: [UInt64] = []
            try f.records.recordTables.forEachBox(txn.unsafeView) { index, _ in out.append(try #require(index)) }
            return out
        }
    }

    @Test func aBatchFillsRunsAndABigRecordTakesOneOfItsOwn() throws {
        let f = try PatientFixture("box-runs")
        try f.records.addPatient(externalId: "Patient/1")
        let note = String(repeating: "x", count: 2000)
        var inputs = (0..<40).map { PatientRecords.RecordInput(patient: "Patient/1", recordId: "obs-\($0)", content: observation("\($0) \(note)")) }
        inputs.insert(.init(patient: "Patient/1", recordId: "big", content: observation(String(repeating: "y", count: 100_000))), at: 20)
        let written = try f.records.putRecords(inputs)
        let rows = try Self.rows(f)
        // Boxes of about 2.2 KB, 14 to a 32 KB run: 20 (14 + 6), the big one alone, 20 more.
        #expect(rows.map { Int($0.1[3]) } == [14, 6, 1, 14, 6], "\(rows.map { $0.1.count })")
        for (key, value) in rows {
            #expect(key.count == 9 && key[8] == BoxRun.keyMarker)
            let slots = Int(value[3])
            #expect(value.count <= BoxRun.targetValueSize || slots == 1)
        }
        #expect(try Self.boxIndexes(f) == written.map(\.index))
        for (input, info) in zip(inputs, written) {
            #expect(try f.records.read(patient: "Patient/1", recordId: input.recordId, as: .custodian("c")).content == input.content)
            #expect(info.version == 1)
        }
        #expect(try f.ledger.verify().isValid)
    }

    @Test func erasureEmptiesItsSlotsAndKeepsOtherPatientsBoxes() throws {
        let f = try PatientFixture("box-runs-erase")
        for p in ["Patient/a", "Patient/b"] { try f.records.addPatient(externalId: p) }
        let inputs = (0..<10).map { i in
            PatientRecords.RecordInput(patient: i % 2 == 0 ? "Patient/a" : "Patient/b", recordId: "obs-\(i)", content: observation("marker-\(i)"))
        }
        let written = try f.records.putRecords(inputs)
        #expect(try Self.rows(f).count == 1)
        #expect(try f.records.erase(patient: "Patient/a").recordVersionsDeleted == 5)
        #expect(try Self.boxIndexes(f) == written.enumerated().filter { $0.offset % 2 == 1 }.map(\.element.index))
        for (i, input) in inputs.enumerated() where i % 2 == 1 {
            #expect(try f.records.read(patient: "Patient/b", recordId: input.recordId, as: .custodian("c")).content == input.content)
        }
        let report = try f.ledger.verify()
        #expect(report.isValid, "\(report.problems)")
        // The run was rewritten without the erased boxes; the last erasure deletes it.
        let value = try #require(try Self.rows(f).first?.1)
        for i in stride(from: 0, to: 10, by: 2) { #expect(!contains(value, Array("marker-\(i)".utf8))) }
        try f.records.erase(patient: "Patient/b")
        #expect(try Self.rows(f).isEmpty)
        #expect(try f.ledger.verify().isValid)
    }

    /// Boxes stored one per row under their entry index, as ledgers before runs hold them,
    /// read, verify and erase beside runs.
    @Test func rowsOfThePerEntryLayoutStillReadBesideRuns() throws {
        let f = try PatientFixture("box-runs-per-entry")
        for p in ["Patient/a", "Patient/b"] { try f.records.addPatient(externalId: p) }
        let old = try f.records.putRecords((0..<4).map { .init(patient: $0 < 2 ? "Patient/a" : "Patient/b", recordId: "obs-\($0)", content: observation("old-\($0)")) })
        let tables = f.records.recordTables
        let boxes = try #require(tables.boxes)
        try f.ledger.environment.write { txn in
            let view = txn.unsafeView
            var stored: [(UInt64, [UInt8])] = []
            for info in old {
                stored.append((info.index, try #require(try tables.withBox(view, index: info.index, version: 0) { u32($0.epoch) + Array($0.box) })))
            }
            try tables.deleteBoxes(view, old.map(\.index))
            #expect(try view.count(boxes) == 0)
            for (index, value) in stored { try view.put(boxes, key: index, value: value) }
        }
        let new = try f.records.putRecords((0..<4).map { .init(patient: $0 < 2 ? "Patient/a" : "Patient/b", recordId: "obs-\($0)", content: observation("new-\($0)")) })
        #expect(try Self.rows(f).map(\.0.count) == [8, 8, 8, 8, 9])
        #expect(try Self.boxIndexes(f) == (old + new).map(\.index))
        for i in 0..<4 {
            let patient = i < 2 ? "Patient/a" : "Patient/b"
            #expect(try f.records.read(patient: patient, recordId: "obs-\(i)", version: 1, as: .custodian("c")).content == observation("old-\(i)"))
            #expect(try f.records.read(patient: patient, recordId: "obs-\(i)", as: .custodian("c")).content == observation("new-\(i)"))
        }
        #expect(try f.ledger.verify().isValid)
        try f.records.erase(patient: "Patient/a")
        #expect(try Self.boxIndexes(f) == [old[2], old[3], new[2], new[3]].map(\.index))
        #expect(try f.records.read(patient: "Patient/b", recordId: "obs-3", version: 1, as: .custodian("c")).content == observation("old-3"))
        let report = try f.ledger.verify()
        #expect(report.isValid, "\(report.problems)")
    }

    /// A run's header must hold its slots exactly; a seek that lands on a run not holding the
    /// index, or on another entry's row, finds no box.
    @Test func malformedRunsAndForeignRowsHoldNoBox() throws {
        func value(_ slots: [[UInt8]]) -> [UInt8] {
            var ends: [UInt8] = [], total: UInt32 = 0
            for slot in slots { total += UInt32(slot.count); ends += u32(total) }
            return u32(UInt32(slots.count)) + ends + slots.flatMap { $0 }
        }
        func box(_ index: UInt64, _ key: [UInt8], _ value: [UInt8]) -> [UInt8]? {
            key.withUnsafeBytes { k in value.withUnsafeBytes { v in BoxRun.box(of: index, key: k, value: v).map { Array($0) } } }
        }
        let good = value([[1, 2], [], [3, 4, 5]])
        let key = BoxRun.key(last: 12)
        #expect(key == u64(12) + [0x01])
        #expect(box(10, key, good) == [1, 2])
        #expect(box(11, key, good) == nil)  // erased
        #expect(box(12, key, good) == [3, 4, 5])
        #expect(box(9, key, good) == nil)  // before the run
        #expect(box(13, key, good) == nil)
        #expect(box(7, u64(7), [9, 9]) == [9, 9])
        #expect(box(6, u64(7), [9, 9]) == nil)
        var wrongCount = good; wrongCount[3] = 4
        var shortEnd = good; shortEnd[15] -= 1
        var decreasing = value([[1, 2], [3]]); decreasing[7] = 9
        for bad in [wrongCount, shortEnd, decreasing, Array(good.dropLast()), good + [0], [0, 0, 0, 0], [0, 0]] {
            #expect(box(10, key, bad) == nil, "\(bad)")
        }
        #expect(box(10, u64(12) + [0x02], good) == nil)  // another marker
        #expect(box(0, BoxRun.key(last: 1), value([[1], [2], [3]])) == nil)  // more slots than entries before it
    }
}
