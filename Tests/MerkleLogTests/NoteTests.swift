import Testing
import LedgerCrypto
@testable import MerkleLog

/// The example key pair and signed note of the Go sumdb note format (also the C2SP
/// signed-note examples).
enum NoteExample {
    static let verifierKey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
    static let signerKey = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
    static let text = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
    static let signed = text + "\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
}

@Suite struct SignedNoteTests {
    @Test func specificationExampleVerifies() throws {
        let verifier = try NoteVerifier(parsing: NoteExample.verifierKey)
        #expect(verifier.name == "PeterNeumann")
        #expect(verifier.keyID == 0xc74f20a3)
        #expect(verifier.description == NoteExample.verifierKey)
        let note = try SignedNote(parsing: NoteExample.signed)
        #expect(note.text == NoteExample.text)
        #expect(try note.verify(with: [verifier]) == [verifier])
    }

    @Test func specificationSignerKeyReproducesTheSignature() throws {
        let signer = try NoteSigner(parsing: NoteExample.signerKey)
        #expect(signer.verifier.description == NoteExample.verifierKey)
        #expect(try signer.sign(NoteExample.text) == NoteExample.signed, "Ed25519 is deterministic")
        #expect(signer.secretKeyText() == NoteExample.signerKey)
    }

    @Test func tamperedNotesFail() throws {
        let verifier = try NoteVerifier(parsing: NoteExample.verifierKey)
        let changedText = NoteExample.signed.replacingOccurrences(of: "problem,", with: "problem;")
        #expect(throws: MerkleLogError(.verificationFailed, "")) { try SignedNote(parsing: changedText).verify(with: [verifier]) }
        let changedSignature = NoteExample.signed.replacingOccurrences(of: "x08go", with: "x08gp")
        #expect(throws: MerkleLogError(.verificationFailed, "")) { try SignedNote(parsing: changedSignature).verify(with: [verifier]) }
        let otherKey = try NoteSigner(generatingFor: "PeterNeumann").verifier
        #expect(throws: MerkleLogError(.verificationFailed, "")) { try SignedNote(parsing: NoteExample.signed).verify(with: [otherKey]) }
    }

    @Test func unknownKeysAreIgnoredAndDuplicatesRejected() throws {
        let verifier = try NoteVerifier(parsing: NoteExample.verifierKey)
        let other = try NoteSigner(generatingFor: "witness.example")
        let extra = try other.signatureLine(for: NoteExample.text)
        let twoSigners = NoteExample.signed + extra + "\n"
        #expect(try SignedNote(parsing: twoSigners).verify(with: [verifier]) == [verifier])
        #expect(try SignedNote(parsing: twoSigners).verify(with: [verifier, other.verifier]).count == 2)
        #expect(throws: MerkleLogError(.verificationFailed, "")) { try SignedNote(parsing: twoSigners).verify(with: [other.verifier].dropLast() + []) }
        let duplicated = NoteExample.signed + NoteExample.signed.split(separator: "\n").last! + "\n"
        #expect(throws: MerkleLogError(.verificationFailed, "")) { try SignedNote(parsing: duplicated).verify(with: [verifier]) }
    }

    @Test func atMostSixteenSignatures() throws {
        let line = String(NoteExample.signed.split(separator: "\n").last!)
        var note = NoteExample.text + "\n"
        let unknown = line.replacingOccurrences(of: "PeterNeumann", with: "someone")
        for _ in 0..<15 { note += unknown + "\n" }
        note += line + "\n"
        let verifier = try NoteVerifier(parsing: NoteExample.verifierKey)
        #expect(try SignedNote(parsing: note).verify(with: [verifier]).count == 1)
        #expect(throws: MerkleLogError(.malformed, "")) { try SignedNote(parsing: note + unknown + "\n") }
    }

    @Test(arguments: [
        "no blank line\n\u{2014} a b\n",
        NoteExample.text + "\n",
        NoteExample.text + "\n\u{2014} PeterNeumann x08go\n",
        NoteExample.text + "\n- PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n",
        NoteExample.text + "\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=",
        NoteExample.text + "\n\u{2014} Peter+Neumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n",
        "tab\there\n\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n",
    ])
    func malformedNotesAreRejected(_ note: String) {
        #expect(throws: MerkleLogError.self) {
            try SignedNote(parsing: note).verify(with: [try NoteVerifier(parsing: NoteExample.verifierKey)])
        }
    }

    @Test(arguments: [
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3+AhpC2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10",
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3",
    ])
    func malformedVerifierKeysAreRejected(_ key: String) {
        #expect(throws: MerkleLogError(.malformed, "")) { try NoteVerifier(parsing: key) }
    }
}

@Suite struct CheckpointTests {
    @Test func roundTripSignAndVerify() throws {
        let signer = try NoteSigner(generatingFor: "example.org/ledger")
        let root = SHA256.hash(Array("root".utf8))
        let checkpoint = Checkpoint(origin: "example.org/ledger", size: 1234, rootHash: root, mapRoot: .zero)
        #expect(checkpoint.text == "example.org/ledger\n1234\n\(root.base64)\nmap AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n")
        let note = try signer.sign(checkpoint.text)
        let parsed = try SignedCheckpoint(verifying: note, verifiers: [signer.verifier], origin: "example.org/ledger")
        #expect(parsed.checkpoint == checkpoint)
        #expect(parsed.checkpoint.mapRoot == .zero)
        #expect(throws: MerkleLogError(.verificationFailed, "")) {
            try SignedCheckpoint(verifying: note, verifiers: [signer.verifier], origin: "other.org/ledger")
        }
    }

    @Test func everyAlteredByteIsDetected() throws {
        let signer = try NoteSigner(generatingFor: "example.org/ledger")
        let checkpoint = Checkpoint(origin: "example.org/ledger", size: 99, rootHash: SHA256.hash([1]), mapRoot: SHA256.hash([2]))
        let note = Array(try signer.sign(checkpoint.text).utf8)
        for i in note.indices {
            var altered = note
            altered[i] ^= 0x01
            guard let text = String(validating: altered, as: UTF8.self) else { continue }
            #expect(throws: MerkleLogError.self, "byte \(i)") {
                let parsed = try SignedCheckpoint(verifying: text, verifiers: [signer.verifier])
                // A change that still verifies must at least not change the checkpoint.
                if parsed.checkpoint == checkpoint { throw MerkleLogError(.verificationFailed, "same") }
            }
        }
    }

    @Test(arguments: [
        "origin\n01\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
        "origin\n-1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
        "origin\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==\n",
        "origin\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
        "origin\n1\n",
        "origin\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n",
        "origin\n18446744073709551616\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
    ])
    func malformedCheckpointsAreRejected(_ text: String) {
        #expect(throws: MerkleLogError(.malformed, "")) { try Checkpoint(parsing: text) }
    }
}
