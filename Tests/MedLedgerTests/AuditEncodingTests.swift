// The audit entry's payload is written by a dedicated encoder on the read path; it must be
// the very bytes the general payload encoder makes of the same event (auditors, exports and
// verify read those bytes).
import Foundation
import Testing
import TestSupport
import LedgerCrypto
@testable import MedLedger

@Suite struct AuditEncoding {
    @Test func theDirectEncoderMatchesTheGeneralOneByteForByte() throws {
        var rng = SplitMix64(seed: 0xa0d17)
        let texts = ["", "treatment", "dr-lee", "Observation/obs-1", "quote \" and \\ backslash", "tab\tnew\nline\u{1}",
                     "ünïcødé ✓", String(repeating: "x", count: 300)]
        func pick() -> String { texts[Int(rng.next() % UInt64(texts.count))] }
        for i in 0..<2000 {
            let accessor = [Accessor.patient(pick()), .grantee(pick()), .custodian(pick())][Int(rng.next() % 3)]
            var event = AuditEvent(action: ["read", "history", "list", "read-blob"][Int(rng.next() % 4)], accessor: accessor,
                                   agent: pick(), patient: SHA256.hash(Array("p\(i)".utf8)),
                                   record: rng.next() % 3 == 0 ? nil : SHA256.hash(Array(pick().utf8)),
                                   version: rng.next() % 3 == 0 ? nil : UInt32(truncatingIfNeeded: rng.next() % 5),
                                   purpose: pick(), breakGlass: rng.next() % 2 == 0 ? nil : pick(),
                                   time: Date(timeIntervalSince1970: Double(rng.next() % 4_000_000_000) + 0.001 * Double(rng.next() % 1000)))
            if rng.next() % 4 == 0 { event.settle(Result<Int, LedgerError>.failure(LedgerError(.accessDenied, "no"))) }
            let general = PatientPayload.encode(event.json)
            #expect(event.encoded() == general, "event \(i): \(String(decoding: general, as: UTF8.self))")
            // And it is JSON that the payload decoder reads back.
            #expect(PatientPayload.decode(event.encoded())?["type"] as? String == "audit")
        }
    }

    @Test func theRecordPayloadMatchesTheGeneralEncoder() {
        var rng = SplitMix64(seed: 0x7ec0)
        for i in 0..<500 {
            let p = SHA256.hash(Array("p\(i)".utf8)), r = SHA256.hash(Array("r\(i)".utf8)), h = SHA256.hash(Array("b\(i)".utf8))
            let version = UInt32(truncatingIfNeeded: rng.next() % 100_000 + 1), size = Int(rng.next() % 5_000_000)
            let epoch = UInt32(truncatingIfNeeded: rng.next() % 9 + 1)
            let general = PatientPayload.encode(["type": "record", "v": 1, "patient": p.hex, "record": r.hex, "version": Int(version),
                                                 "ciphertext_hash": h.hex, "ciphertext_size": size, "key_epoch": Int(epoch)])
            #expect(PatientPayload.recordPayload(p: p, r: r, version: version, ciphertextHash: h,
                                                 ciphertextSize: size, keyEpoch: epoch) == general)
        }
    }
}

@Suite struct LabelEncodingTests {
    /// The builders behind every MAC input and associated data of the patient layer produce
    /// the bytes of the `String` forms FORMATS.md gives (stored records open only if they do).
    @Test func labelBuildersMatchTheirStringForms() {
        var rng = SplitMix64(seed: 0x1abe1)
        let ids = ["Patient/1", "obs-0", "", "ünïcødé/記録", "a|b", String(repeating: "x", count: 300)]
        for i in 0..<300 {
            let p = SHA256.hash(Array("p\(i)".utf8)), r = SHA256.hash(Array("r\(i)".utf8))
            let versions: [UInt32] = [0, 1, 9, 10, UInt32.max, UInt32(truncatingIfNeeded: rng.next())]
            let version = versions[i % versions.count]
            let generation = i % 3 == 0 ? UInt64.max : rng.next() % 1_000_000
            let id = ids[i % ids.count]
            #expect(PatientRecords.recordAAD(p, r, version) == Array("medledger-record/1|\(p.hex)|\(r.hex)|\(version)".utf8))
            #expect(PatientRecords.recordAAD(p, r, version) == PatientRecords.recordAAD(patient: p.hex, record: r.hex, version: version))
            #expect(PatientRecords.recordKeyLabel(p, r, version) == Array("medledger-record-key/1|\(p.hex)|\(r.hex)|\(version)".utf8))
            #expect(PatientRecords.dataKeyAAD(p, generation, version) == Array("medledger-data-key/1|\(p.hex)|\(generation)|\(version)".utf8))
            #expect(PatientRecords.pseudonymLabel(id) == Array("patient|\(id)".utf8))
            #expect(PatientRecords.recordHashLabel(p, id) == Array("record|\(p.hex)|\(id)".utf8))
            #expect(PatientPayload.recordKey(p, r) == "record/\(p.hex)/\(r.hex)")
        }
    }

    /// A record key derived from hashes equals the one an export's checker derives from hex names.
    @Test func recordKeysAgreeAcrossForms() throws {
        let dataKey = Array(0..<32).map(UInt8.init).withUnsafeBytes { SecureBytes(copying: $0) }
        let p = SHA256.hash(Array("p".utf8)), r = SHA256.hash(Array("r".utf8))
        let a = try PatientRecords.recordKey(dataKey: dataKey, p, r, 7)
        let b = try PatientRecords.recordKey(dataKey: dataKey, patient: p.hex, record: r.hex, version: 7)
        #expect(a.withUnsafeBytes { Array($0) } == b.withUnsafeBytes { Array($0) })
        let c = try PatientRecords.recordKey(dataKey: dataKey, p, r, 8)
        #expect(a.withUnsafeBytes { Array($0) } != c.withUnsafeBytes { Array($0) })
    }
}

@Suite struct RecordPlaintextTests {
    /// Reads take the content out of the decrypted buffer in place; that must give what the
    /// copying decoder gives, for any header and content length.
    @Test func takingTheContentInPlaceMatchesTheCopyingDecoder() {
        var rng = SplitMix64(seed: 0x9a7e)
        let media = ["application/fhir+json", "application/fhir+jsoN", "text/plain", "", "application/fhir+json2"]
        for i in 0..<300 {
            let content = (0..<Int(rng.next() % 3000)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            let resourceType = i % 3 == 0 ? nil : "Observation\(i % 7)"
            let mediaType = media[i % media.count]
            var plaintext = RecordPlaintext.encode(recordId: "obs-\(i)", mediaType: mediaType, resourceType: resourceType, content: content)
            let copied = RecordPlaintext.decode(plaintext)
            let header = plaintext.withUnsafeBufferPointer(RecordPlaintext.header)
            #expect(copied?.recordId == "obs-\(i)" && header?.recordId == "obs-\(i)")
            #expect(copied?.mediaType == mediaType && header?.mediaType == mediaType)
            #expect(copied?.resourceType == resourceType && header?.resourceType == resourceType)
            guard let start = header?.contentStart else { continue }
            let taken = RecordPlaintext.takeContent(&plaintext, from: start)
            #expect(taken == content && copied?.content == content)
            #expect(plaintext.isEmpty)
        }
        // Truncated headers are refused, not read past their end.
        let whole = RecordPlaintext.encode(recordId: "r", mediaType: "text/plain", resourceType: nil, content: [1, 2, 3])
        for cut in 0..<(whole.count - 3) {
            #expect(Array(whole.prefix(cut)).withUnsafeBufferPointer(RecordPlaintext.header) == nil, "cut at \(cut)")
        }
    }
}
