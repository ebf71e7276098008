import Foundation
import Testing
import LedgerCrypto
import MedLedger
import MerkleLog

/// The README's library example, compiled and run so it never rots. Keep the two in sync.
@Test func readmeLibraryExample() throws {
    let directory = NSTemporaryDirectory() + "medledger-readme-\(UUID().uuidString)"
    defer { try? FileManager.default.removeItem(atPath: directory) }

    // --- README example begins ---
    let (ledger, verifierKey) = try Ledger.create(at: directory, origin: "clinic.example/ledger")
    let entries = try (1...1000).map { i in
        try LedgerEntry(set: "observation/\(i)", payload: Array("{\"resourceType\":\"Observation\"}".utf8))
    }
    let first = try ledger.append(entries)              // one durable transaction

    let note = try ledger.signedCheckpoint()            // C2SP signed note
    let (proof, leafHash, root) = try ledger.inclusionProof(index: first + 41)

    // A client holding only the verifier key checks both, without the ledger:
    let verifier = try NoteVerifier(parsing: verifierKey)
    let checkpoint = try SignedCheckpoint(verifying: note, verifiers: [verifier]).checkpoint
    try ProofDocument.inclusion(.init(proof: proof, leafHash: leafHash, rootHash: root))
        .verify(against: checkpoint)

    // The key map: what "observation/42" points at, proven against the same checkpoint.
    let (keyProof, mapRoot, size) = try ledger.keyProof(key: "observation/42")
    try ProofDocument.key(.init(key: "observation/42", treeSize: size, mapRoot: mapRoot, proof: keyProof))
        .verify(against: checkpoint)
    // Several keys in one proof, the siblings their paths share sent once.
    let asked = ["observation/7", "observation/8", "observation/2001"]
    let (keysProof, _, _) = try ledger.keyProofs(keys: asked)
    try ProofDocument.keys(try .init(keys: asked, treeSize: size, mapRoot: mapRoot, proof: keysProof))
        .verify(against: checkpoint)
    // --- README example ends ---

    #expect(checkpoint.size == 1000)
    #expect(keyProof.isInclusion)
    #expect(asked.map { keysProof.value(of: SHA256.hash(utf8: $0)).map { $0 != nil } } == [true, true, false])

    let keyFile = directory + ".master.key"
    defer { try? FileManager.default.removeItem(atPath: keyFile) }
    let fhirJSON = Array(#"{"resourceType":"Observation","status":"final"}"#.utf8)
    let doctorKey = try Ed25519PrivateKey().publicKey
    let nextWeek = Date().addingTimeInterval(7 * 86_400)
    // --- README patient example begins ---
    let records = try PatientRecords(ledger: ledger, masterKey: try MasterKeyFile.create(at: keyFile))
    try records.addPatient(externalId: "Patient/123")
    try records.putRecord(patient: "Patient/123", recordId: "obs-1", content: fhirJSON)
    try records.grant(patient: "Patient/123", to: "dr-lee", granteeKey: doctorKey,
                      scope: GrantScope(resourceTypes: ["Observation"]), notAfter: nextWeek)
    let record = try records.read(patient: "Patient/123", recordId: "obs-1", as: .grantee("dr-lee"))
    try records.revoke(patient: "Patient/123", grantee: "dr-lee")   // the next read is refused
    let export = try records.export(patient: "Patient/123", as: .patient("Patient/123"))
    try PatientExport.verify(bundle: export.bundle, proof: export.proof, verifier: verifier)
    // --- README patient example ends ---
    #expect(record.content == fhirJSON)
    #expect(throws: LedgerError(.accessDenied, "")) { try records.read(patient: "Patient/123", recordId: "obs-1", as: .grantee("dr-lee")) }

    let scanFile = keyFile + ".scan"
    try Data((0..<600_000).map { UInt8(truncatingIfNeeded: $0 * 7) }).write(to: URL(fileURLWithPath: scanFile))
    defer { try? FileManager.default.removeItem(atPath: scanFile) }
    // --- README blob example begins ---
    try records.putBlob(patient: "Patient/123", blobId: "ct-2026-11-25", mediaType: "application/dicom",
                        contentsOfFile: scanFile)                     // streamed in 256 KiB chunks
    let scan = try records.openBlob(patient: "Patient/123", blobId: "ct-2026-11-25", as: .patient("Patient/123"))
    let slice = try scan.read(offset: 300_000, count: 4096)          // only the chunks it needs, each checked
    let rangeProof = try scan.rangeProof(offset: 300_000, length: 4096)
    let proven = try BlobRangeProof.verify(rangeProof.json, verifier: verifier)   // offline
    // --- README blob example ends ---
    #expect(proven.bytes == slice && slice == (300_000..<304_096).map { UInt8(truncatingIfNeeded: $0 * 7) })
}
