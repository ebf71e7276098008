import Foundation
import Testing
import LedgerCrypto
import MedLedger

/// The patient-layer commands end to end, as a script would drive them.
@Suite(.serialized) struct PatientCLITests {
    @Test func patientRecordGrantReadAuditExportErase() throws {
        let dir = scratch("patients")
        let key = dir + ".master.key"
        let bundle = dir + ".bundle.json", proof = dir + ".proof.json"
        defer { for p in [dir, key, bundle, proof] { try? FileManager.default.removeItem(atPath: p) } }
        let verifier = try CLI.run(["init", dir, "--origin", "test.example/patients", "--master-key", key])
        #expect(verifier.status == 0)
        let verifierKey = verifier.text.trimmingCharacters(in: .whitespacesAndNewlines)
        let mk = ["--master-key", key]
        let p = ["--patient", "Patient/77"]

        #expect(try CLI.run(["patient", "add", dir, "--id", "Patient/77"] + mk).status == 0)
        #expect(try CLI.run(["patient", "add", dir, "--id", "Patient/77"] + mk).status == 2)
        let fhir = Data(#"{"resourceType":"Observation","status":"final","valueString":"cli-secret-7"}"#.utf8)
        let put = try CLI.run(["record", "put", dir, "--record", "obs"] + p + mk, stdin: fhir)
        #expect(put.status == 0)
        #expect(try put.json()["version"] as? Int == 1)
        #expect(try CLI.run(["record", "put", dir, "--record", "bad"] + p + mk, stdin: Data("no json".utf8)).status == 2)
        #expect(try CLI.run(["record", "put", dir, "--record", "obs"] + p).status == 2)  // no master key
        let otherKey = dir + ".other.key"
        defer { try? FileManager.default.removeItem(atPath: otherKey) }
        #expect(try CLI.run(["init", dir + ".other", "--origin", "x.example/o", "--master-key", otherKey]).status == 0)
        try? FileManager.default.removeItem(atPath: dir + ".other")
        #expect(try CLI.run(["record", "list", dir, "--as", "c", "--role", "custodian", "--master-key", otherKey] + p).status == 5)

        // No grant, grant, revoke, break-glass.
        #expect(try CLI.run(["read", dir, "--record", "obs", "--as", "dr-a"] + p + mk).status == 5)
        let granteeKey = Base64.encode(try SecureRandom.bytes(32))
        #expect(try CLI.run(["grant", dir, "--grantee", "dr-a", "--grantee-key", granteeKey, "--types", "Observation", "--expires", "+1"] + p + mk).status == 0)
        let read = try CLI.run(["read", dir, "--record", "obs", "--as", "dr-a"] + p + mk)
        #expect(read.status == 0 && read.stdout == fhir)
        #expect(try CLI.run(["revoke", dir, "--grantee", "dr-a"] + p + mk).status == 0)
        #expect(try CLI.run(["read", dir, "--record", "obs", "--as", "dr-a"] + p + mk).status == 5)
        #expect(try CLI.run(["read", dir, "--record", "obs", "--as", "dr-b", "--break-glass", "cardiac arrest"] + p + mk).status == 0)
        let review = try CLI.run(["audit", dir, "--break-glass"] + mk).json()["events"] as? [[String: Any]]
        #expect(review?.count == 1 && (review?[0]["event"] as? [String: Any])?["agent"] as? String == "dr-b")

        // Accounting of disclosures: every event carries an inclusion proof that verify-proof accepts.
        let audit = try CLI.run(["audit", dir] + p + mk).json()
        let events = try #require(audit["events"] as? [[String: Any]])
        #expect(events.count == 4)
        let note = try #require(audit["checkpoint"] as? String)
        let noteFile = dir + ".note"
        defer { try? FileManager.default.removeItem(atPath: noteFile) }
        try note.write(toFile: noteFile, atomically: true, encoding: .utf8)
        for event in events {
            let inclusion = try JSONSerialization.data(withJSONObject: try #require(event["inclusion"]))
            #expect(try CLI.run(["verify-proof", "--checkpoint", noteFile, "--key", verifierKey], stdin: inclusion).status == 0)
        }

        // Export verifies offline; a changed resource fails.
        #expect(try CLI.run(["export", dir, "--bundle", bundle, "--proof", proof] + p + mk).status == 0)
        #expect(try CLI.run(["verify-proof", proof, "--bundle", bundle, "--key", verifierKey]).status == 0)
        let original = try String(contentsOfFile: bundle, encoding: .utf8)
        try original.replacingOccurrences(of: "cli-secret-7", with: "cli-secret-8").write(toFile: bundle, atomically: true, encoding: .utf8)
        #expect(try CLI.run(["verify-proof", proof, "--bundle", bundle, "--key", verifierKey]).status == 1)

        // Erasure: reads refused, the log still verifies, no plaintext left in the ledger's files.
        #expect(try CLI.run(["erase", dir] + p + mk).status == 0)
        #expect(try CLI.run(["record", "get", dir, "--record", "obs", "--as", "c", "--role", "custodian"] + p + mk).status == 5)
        let checkpoint = try CLI.run(["checkpoint", dir])
        let size = try #require(Int(checkpoint.text.split(separator: "\n")[1]))
        let inclusion = try CLI.run(["prove", "inclusion", dir, "--index", "1", "--size", String(size)])
        #expect(try CLI.run(["verify-proof"], stdin: inclusion.stdout).status == 0)
        let data = try Data(contentsOf: URL(fileURLWithPath: dir + "/data.mdb"))
        #expect(data.range(of: Data("cli-secret-7".utf8)) == nil)
    }
    /// A service keeps the ledger open while a script erases patients from another process:
    /// the service reads keys the erasure re-wrapped, wraps a new patient's key under the
    /// generation the erasure made (not the destroyed one it had read), and everything still
    /// opens and verifies under the key file the script left.
    @Test func erasureInAnotherProcessWhileALibraryInstanceIsOpen() throws {
        let dir = scratch("patients-two-processes")
        let key = dir + ".master.key"
        defer { for p in [dir, key] { try? FileManager.default.removeItem(atPath: p) } }
        #expect(try CLI.run(["init", dir, "--origin", "test.example/two", "--master-key", key]).status == 0)
        let mk = ["--master-key", key]
        let ledger = try Ledger(path: dir)
        let records = try PatientRecords(ledger: ledger, masterKey: try MasterKeyFile(path: key))
        func fhir(_ p: String) -> [UInt8] { Array(#"{"resourceType":"Observation","status":"final","valueString":"\#(p)"}"#.utf8) }
        for p in ["Patient/1", "Patient/2"] {
            try records.addPatient(externalId: p)
            try records.putRecord(patient: p, recordId: "obs", content: fhir(p))
        }
        let erased = try CLI.run(["erase", dir, "--patient", "Patient/1"] + mk)
        let settled = try erased.json()["key_file_settled"] as? Bool
        #expect(erased.status == 0 && settled == true)
        #expect(try records.read(patient: "Patient/2", recordId: "obs", as: .custodian("svc")).content == fhir("Patient/2"))
        try records.addPatient(externalId: "Patient/3")
        try records.putRecord(patient: "Patient/3", recordId: "obs", content: fhir("Patient/3"))
        let get = try CLI.run(["record", "get", dir, "--record", "obs", "--patient", "Patient/3", "--as", "c", "--role", "custodian"] + mk)
        #expect(get.status == 0 && get.stdout == Data(fhir("Patient/3")))
        #expect(try CLI.run(["erase", dir, "--patient", "Patient/2"] + mk).status == 0)
        #expect(try records.read(patient: "Patient/3", recordId: "obs", as: .custodian("svc")).content == fhir("Patient/3"))
        #expect(try CLI.run(["verify", dir] + mk).status == 0)

        // Two erasures at once, one per process: LMDB's write lock orders their rotations.
        for p in ["Patient/4", "Patient/5", "Patient/6"] {
            try records.addPatient(externalId: p)
            try records.putRecord(patient: p, recordId: "obs", content: fhir(p))
        }
        final class Status: @unchecked Sendable { var code: Int32 = -1 }  // written before `wait` returns
        let script = Status(), done = DispatchGroup()
        DispatchQueue.global().async(group: done) {
            script.code = (try? CLI.run(["erase", dir, "--patient", "Patient/4"] + mk).status) ?? -2
        }
        try records.erase(patient: "Patient/5")
        done.wait()
        #expect(script.code == 0)
        #expect(try MasterKeyFile(path: key).generation == 5)
        #expect(try String(contentsOfFile: key, encoding: .utf8).split(separator: "\n").count == 3)
        #expect(try records.read(patient: "Patient/6", recordId: "obs", as: .custodian("svc")).content == fhir("Patient/6"))
        let get6 = try CLI.run(["record", "get", dir, "--record", "obs", "--patient", "Patient/6", "--as", "c", "--role", "custodian"] + mk)
        #expect(get6.status == 0 && get6.stdout == Data(fhir("Patient/6")))
        #expect(try CLI.run(["verify", dir] + mk).status == 0)
    }
}
