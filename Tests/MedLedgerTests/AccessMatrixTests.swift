import Foundation
import Testing
import LedgerCrypto
import MedLedger

/// Every accessor against every grant state, in one table: what each read returns and the
/// audit entry it leaves (the ledger's last entry after each read).
@Suite struct AccessMatrixTests {
    struct Case: CustomStringConvertible {
        let accessor: Accessor
        let patient: String
        let record: String
        var breakGlass: String? = nil
        /// nil: the read succeeds; otherwise the refusal's code.
        let refusal: LedgerError.Code?
        var description: String {
            "\(accessor) reads \(record) of \(patient)\(breakGlass == nil ? "" : " breaking the glass")"
        }
    }

    @Test func everyAccessorAndGrantStateIsDecidedAndAudited() throws {
        let f = try PatientFixture("matrix")
        let r = f.records
        for patient in ["Patient/A", "Patient/B"] { try r.addPatient(externalId: patient) }
        try r.putRecord(patient: "Patient/A", recordId: "obs", content: observation("a-obs"))
        try r.putRecord(patient: "Patient/A", recordId: "cond", content: Array(#"{"resourceType":"Condition","id":"c"}"#.utf8))
        try r.putRecord(patient: "Patient/B", recordId: "obs", content: observation("b-obs"))
        let key = try Ed25519PrivateKey().publicKey
        let later = Date(timeIntervalSince1970: f.now + 86_400)
        try r.grant(patient: "Patient/A", to: "dr-full", granteeKey: key, notAfter: later)
        try r.grant(patient: "Patient/A", to: "dr-obs", granteeKey: key, scope: GrantScope(resourceTypes: ["Observation"]), notAfter: later)
        try r.grant(patient: "Patient/A", to: "dr-cond", granteeKey: key, scope: GrantScope(recordIds: ["cond"]), notAfter: later)
        try r.grant(patient: "Patient/A", to: "dr-expired", granteeKey: key, notAfter: Date(timeIntervalSince1970: f.now + 10))
        try r.grant(patient: "Patient/A", to: "dr-revoked", granteeKey: key, notAfter: later)
        try r.revoke(patient: "Patient/A", grantee: "dr-revoked")
        try r.grant(patient: "Patient/B", to: "dr-full", granteeKey: key, notAfter: later)
        try r.erase(patient: "Patient/B")
        f.now += 60  // dr-expired's grant has passed its not_after

        let cases: [Case] = [
            Case(accessor: .patient("Patient/A"), patient: "Patient/A", record: "obs", refusal: nil),
            Case(accessor: .patient("Patient/C"), patient: "Patient/A", record: "obs", refusal: .accessDenied),
            Case(accessor: .patient("Patient/C"), patient: "Patient/A", record: "obs", breakGlass: "curious", refusal: .accessDenied),
            Case(accessor: .custodian("records-office"), patient: "Patient/A", record: "cond", refusal: nil),
            Case(accessor: .grantee("dr-full"), patient: "Patient/A", record: "obs", refusal: nil),
            Case(accessor: .grantee("dr-full"), patient: "Patient/A", record: "cond", refusal: nil),
            Case(accessor: .grantee("dr-obs"), patient: "Patient/A", record: "obs", refusal: nil),
            Case(accessor: .grantee("dr-obs"), patient: "Patient/A", record: "cond", refusal: .accessDenied),
            Case(accessor: .grantee("dr-obs"), patient: "Patient/A", record: "cond", breakGlass: "consult", refusal: nil),
            Case(accessor: .grantee("dr-cond"), patient: "Patient/A", record: "cond", refusal: nil),
            Case(accessor: .grantee("dr-cond"), patient: "Patient/A", record: "obs", refusal: .accessDenied),
            Case(accessor: .grantee("dr-expired"), patient: "Patient/A", record: "obs", refusal: .accessDenied),
            Case(accessor: .grantee("dr-expired"), patient: "Patient/A", record: "obs", breakGlass: "icu", refusal: nil),
            Case(accessor: .grantee("dr-revoked"), patient: "Patient/A", record: "obs", refusal: .accessDenied),
            Case(accessor: .grantee("dr-revoked"), patient: "Patient/A", record: "obs", breakGlass: "icu", refusal: nil),
            Case(accessor: .grantee("dr-never"), patient: "Patient/A", record: "obs", refusal: .accessDenied),
            Case(accessor: .grantee("dr-never"), patient: "Patient/A", record: "obs", breakGlass: "unconscious", refusal: nil),
            Case(accessor: .grantee("dr-full"), patient: "Patient/A", record: "missing", refusal: .recordNotFound),
            Case(accessor: .grantee("dr-full"), patient: "Patient/none", record: "obs", refusal: .patientNotFound),
            Case(accessor: .grantee("dr-full"), patient: "Patient/B", record: "obs", refusal: .erased),
            Case(accessor: .patient("Patient/B"), patient: "Patient/B", record: "obs", refusal: .erased),
            Case(accessor: .custodian("records-office"), patient: "Patient/B", record: "obs", refusal: .erased),
            Case(accessor: .grantee("dr-never"), patient: "Patient/B", record: "obs", breakGlass: "er", refusal: .erased),
        ]
        for c in cases {
            let before = try f.ledger.size
            var refusal: LedgerError.Code?
            do {
                let content = try r.read(patient: c.patient, recordId: c.record, as: c.accessor, breakGlass: c.breakGlass)
                #expect(contains(content.content, Array("\(c.patient == "Patient/A" ? "a" : "b")-\(c.record)".utf8)) || c.record == "cond",
                        "\(c): wrong content")
            } catch let error as LedgerError {
                refusal = error.code
            }
            #expect(refusal == c.refusal, "\(c)")

            // Exactly one audit entry, describing this request.
            #expect(try f.ledger.size == before + 1, "\(c)")
            let entry = try f.ledger.entry(at: before)
            let event = try #require(try JSONSerialization.jsonObject(with: Data(entry.payload)) as? [String: Any])
            #expect(entry.key.isEmpty && event["type"] as? String == "audit" && event["action"] as? String == "read", "\(c)")
            #expect(event["patient"] as? String == (try r.pseudonym(of: c.patient)).hex, "\(c)")
            #expect(event["role"] as? String == c.accessor.role.rawValue, "\(c)")
            #expect(event["outcome"] as? String == (c.refusal == nil ? "success" : "refused"), "\(c)")
            #expect(event["detail"] as? String == c.refusal.map { "\($0)" }, "\(c)")
            #expect(event["break_glass"] as? Bool == (c.breakGlass != nil), "\(c)")
            #expect(event["reason"] as? String == c.breakGlass, "\(c)")
            let agent = c.accessor.role == .patient ? "patient:" + (try r.pseudonym(of: c.accessor.id)).hex : c.accessor.id
            #expect(event["agent"] as? String == agent, "\(c)")
        }
        // Every flagged read is on the review list, refused ones included.
        let flagged = try r.breakGlassEvents().count
        #expect(flagged == cases.filter { $0.breakGlass != nil }.count)
        #expect(try f.ledger.verify().isValid)
    }
}
