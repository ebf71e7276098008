// A writer for the crash test (Tests/MedLedgerCLITests/CrashTests.swift): appends a random
// mix of batches to a ledger until it is killed, announcing each commit before it starts and
// acknowledging it after it returns.
//
//   crash-writer DIR MASTER-KEY SEED
//
// stdout, one line per event:
//   ready <size>                      the ledger and its patient layer are open
//   begin <size> <entries>            a commit of <entries> entries starts (0: count not known)
//   ack <size> <base64 of the note>   it committed; <size> is the tree size after it
// Any unexpected error prints `error <message>` on stderr and exits 1.
import Foundation
import LedgerCrypto
import MedLedger
import TestSupport

@inline(never)
func say(_ line: String) {
    // Unbuffered: a line printed is a line the harness can read after a kill.
    let bytes = Array((line + "\n").utf8)
    bytes.withUnsafeBytes { _ = write(1, $0.baseAddress, $0.count) }
}

let arguments = CommandLine.arguments
guard arguments.count == 4, let seed = UInt64(arguments[3]) else {
    FileHandle.standardError.write(Data("usage: crash-writer DIR MASTER-KEY SEED\n".utf8))
    exit(2)
}
let (directory, keyPath) = (arguments[1], arguments[2])
var rng = SplitMix64(seed: seed)

do {
    let ledger: Ledger
    let records: PatientRecords
    // An earlier run may have been killed inside `create`: that leaves no ledger, and the
    // next create replaces what it left.
    let existing: Ledger?
    do { existing = try Ledger(path: directory) } catch let error as LedgerError where error.code == .ledgerNotFound { existing = nil }
    if let existing {
        ledger = existing
        records = try PatientRecords(ledger: ledger, masterKey: MasterKeyFile(path: keyPath))
    } else {
        let master = FileManager.default.fileExists(atPath: keyPath) ? try MasterKeyFile(path: keyPath) : try MasterKeyFile.create(at: keyPath)
        ledger = try Ledger.create(at: directory, origin: "crash.example/ledger").0
        records = try PatientRecords(ledger: ledger, masterKey: master)
    }
    say("ready \(try ledger.size)")
    // Patients of this run only, so runs never collide on ids.
    var patients: [String] = []
    var recordIds: [String: [String]] = [:]
    let doctor = try Ed25519PrivateKey().publicKey
    let sealTo = try X25519PrivateKey().publicKey
    var step = 0
    while true {
        step += 1
        let size = try ledger.size
        func ack() throws { say("ack \(try ledger.size) \(Base64.encode(Array(try ledger.signedCheckpoint().utf8)))") }
        switch rng.next() % 11 {
        case 0, 1, 2:
            let n = Int(rng.next() % 200) + 1
            let entries = try (0..<n).map { i -> LedgerEntry in
                let key = rng.next() % 4 == 0 ? "" : "k\(rng.next() % 5000)"
                return rng.next() % 16 == 0 && !key.isEmpty
                    ? try LedgerEntry(delete: key) : try LedgerEntry(set: key, payload: Array("s\(seed) step \(step) #\(i)".utf8))
            }
            say("begin \(size) \(n)")
            _ = try ledger.append(entries)
            try ack()
        case 3:
            let n = Int(rng.next() % 5) + 1
            let ids = (0..<n).map { _ in "Patient/\(seed)-\(patients.count)-\(rng.next() % 1_000_000)" }
            say("begin \(size) \(n)")
            _ = try records.addPatients(ids.map { ($0, nil) })
            patients += ids
            try ack()
        case 4, 5:
            guard !patients.isEmpty else { continue }
            let n = Int(rng.next() % 40) + 1
            let inputs = (0..<n).map { i -> PatientRecords.RecordInput in
                let patient = patients[Int(rng.next() % UInt64(patients.count))]
                let id = "obs-\(rng.next() % 8)"
                if !(recordIds[patient]?.contains(id) ?? false) { recordIds[patient, default: []].append(id) }
                return .init(patient: patient, recordId: id,
                             content: Array(#"{"resourceType":"Observation","id":"\#(id)","note":"s\#(seed) \#(step) \#(i)"}"#.utf8))
            }
            say("begin \(size) \(n)")
            _ = try records.putRecords(inputs)
            try ack()
        case 6:
            guard let patient = patients.randomElement(using: &rng) else { continue }
            let grantee = "dr-\(rng.next() % 3)"
            say("begin \(size) 1")
            if rng.next() % 3 == 0, try records.grants(patient: patient).contains(where: { $0["grantee"] as? String == grantee && $0["revoked_at"] == nil }) {
                _ = try records.revoke(patient: patient, grantee: grantee)
            } else {
                try records.grant(patient: patient, to: grantee, granteeKey: doctor,
                                  granteeEncryptionKey: rng.next() % 2 == 0 ? sealTo : nil,
                                  notAfter: Date().addingTimeInterval(86_400))
            }
            try ack()
        case 7, 8:
            guard let patient = patients.randomElement(using: &rng), let ids = recordIds[patient], !ids.isEmpty else { continue }
            let requests = (0..<(Int(rng.next() % 20) + 1)).map { _ in
                PatientRecords.ReadRequest(patient: patient, recordId: ids[Int(rng.next() % UInt64(ids.count))])
            }
            say("begin \(size) \(requests.count)")
            _ = try records.readRecords(requests, as: .grantee("dr-\(rng.next() % 3)"), breakGlass: rng.next() % 4 == 0 ? "emergency" : nil)
            try ack()
        case 9:
            // Blobs: chunks stream into a segment before the commit that makes them visible.
            guard let patient = patients.randomElement(using: &rng) else { continue }
            let writer = try records.blobWriter(chunkSize: 16 << 10)
            let n = Int(rng.next() % 3) + 1
            for b in 0..<n {
                let upload = try writer.begin(patient: patient, blobId: "scan-\(rng.next() % 4)", mediaType: "application/dicom")
                var left = Int(rng.next() % 400_000)
                while left > 0 {
                    let piece = min(left, Int(rng.next() % 70_000) + 1)
                    try upload.write(Array(repeating: UInt8(truncatingIfNeeded: step &+ b), count: piece))
                    left -= piece
                }
                try upload.finish()
            }
            say("begin \(size) \(n)")
            try writer.commit()
            try ack()
        default:
            guard rng.next() % 3 == 0, patients.count > 1 else { continue }
            let patient = patients.remove(at: Int(rng.next() % UInt64(patients.count)))
            recordIds[patient] = nil
            say("begin \(size) 0")  // one erasure entry and one revoke per active grant
            _ = try records.erase(patient: patient)
            try ack()
        }
    }
} catch {
    FileHandle.standardError.write(Data("error \(error)\n".utf8))
    exit(1)
}
