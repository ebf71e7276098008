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
    // --- README example ends ---

    #expect(checkpoint.size == 1000)
    #expect(keyProof.isInclusion)
}
