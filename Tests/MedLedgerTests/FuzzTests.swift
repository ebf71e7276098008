import Foundation
import Testing
import LedgerCrypto
import MedLedger
import MerkleLog
import SparseMerkle
import TestSupport

/// Property-based fuzzing of every parser that takes bytes from outside: mutants of the
/// corpus in `Tests/Corpus` (files real commands wrote) must give a typed error or a value
/// that round-trips, never a crash, a hang or an untyped error.
///
/// Each target runs for `MEDLEDGER_FUZZ_SECONDS` (default 0.5; docs/RELIABILITY.md has the
/// full run) from seed `MEDLEDGER_FUZZ_SEED`.
@Suite struct FuzzTests {
    static let corpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Corpus")

    static func seed(_ name: String) throws -> [UInt8] {
        [UInt8](try Data(contentsOf: corpus.appendingPathComponent(name)))
    }

    /// Runs `body` on mutants of `seeds` for the configured time; returns (inputs, accepted).
    @discardableResult
    static func fuzz(_ name: String, seeds: [[UInt8]], _ body: ([UInt8]) throws -> Bool) rethrows -> (Int, Int) {
        let environment = ProcessInfo.processInfo.environment
        let seconds = Double(environment["MEDLEDGER_FUZZ_SECONDS"] ?? "") ?? 0.5
        var rng = SplitMix64(seed: (UInt64(environment["MEDLEDGER_FUZZ_SEED"] ?? "") ?? 0xf022) ^ UInt64(name.utf8.reduce(0) { $0 &* 31 &+ Int($1) }.magnitude))
        let deadline = Date().addingTimeInterval(seconds)
        var inputs = 0, accepted = 0
        var slowest = 0.0
        // The seeds themselves must be accepted: otherwise the mutants test nothing.
        for seed in seeds { #expect(try body(seed), "\(name): a corpus seed is refused") }
        while Date() < deadline {
            for _ in 0..<50 {
                var input = seeds[Int(rng.next() % UInt64(seeds.count))]
                for _ in 0..<(1 + Int(rng.next() % 4)) { mutate(&input, seeds: seeds, rng: &rng) }
                let start = Date()
                if try body(input) { accepted += 1 }
                slowest = max(slowest, Date().timeIntervalSince(start))
                inputs += 1
            }
        }
        // Generous: this catches a pathological input (a hang, a blow-up), not a slow machine.
        #expect(slowest < 10, "\(name): one input took \(slowest) s")
        print("fuzz \(name): \(inputs) inputs in \(seconds) s, \(accepted) accepted, slowest \(Int(slowest * 1e6)) us")
        return (inputs, accepted)
    }

    static let tokens: [[UInt8]] = ["{", "}", "[", "]", "\"", ",", ":", "\\", "\\u0000", "null", "true", "-1", "1e999",
                                    "18446744073709551616", "99999999999999999999999", "\n", "\n\n", "— ", "+", "=", "0x",
                                    String(repeating: "a", count: 300), "\u{FEFF}", "\u{2014}"].map { Array($0.utf8) }

    static func mutate(_ input: inout [UInt8], seeds: [[UInt8]], rng: inout SplitMix64) {
        let at = input.isEmpty ? 0 : Int(rng.next() % UInt64(input.count))
        switch rng.next() % 9 {
        case 0: if !input.isEmpty { input[at] ^= UInt8(1 << (rng.next() % 8)) }
        case 1: if !input.isEmpty { input[at] = UInt8(truncatingIfNeeded: rng.next()) }
        case 2: input.insert(UInt8(truncatingIfNeeded: rng.next()), at: at)
        case 3: if !input.isEmpty { input.removeSubrange(at..<min(input.count, at + 1 + Int(rng.next() % 16))) }
        case 4: input = Array(input.prefix(at))
        case 5: input.insert(contentsOf: tokens[Int(rng.next() % UInt64(tokens.count))], at: at)
        case 6:
            if !input.isEmpty {
                let end = min(input.count, at + 1 + Int(rng.next() % 64))
                input.insert(contentsOf: input[at..<end], at: at)
            }
        case 7:
            // Replace a run of digits by another number.
            if let start = input[at...].firstIndex(where: { $0 >= 48 && $0 <= 57 }) {
                let end = input[start...].firstIndex(where: { $0 < 48 || $0 > 57 }) ?? input.count
                input.replaceSubrange(start..<end, with: tokens[[11, 12, 13, 14][Int(rng.next() % 4)]])
            }
        default:
            let other = seeds[Int(rng.next() % UInt64(seeds.count))]
            let from = other.isEmpty ? 0 : Int(rng.next() % UInt64(other.count))
            input = Array(input.prefix(at)) + other[from...]
        }
    }

    @Test func proofDocuments() throws {
        let seeds = try ["inclusion.json", "consistency.json", "key-present.json", "key-absent.json", "keys.json"].map(Self.seed)
        Self.fuzz("proof JSON", seeds: seeds) { input in
            do {
                let document = try ProofDocument(json: Data(input))
                do { try document.verify() } catch is MerkleLogError {} catch is SparseMerkleError {} catch is LedgerError {} catch {
                    Issue.record("untyped verify error \(error)")
                }
                return true
            } catch is LedgerError { return false } catch {
                Issue.record("untyped error \(error)")
                return false
            }
        }
    }

    @Test func binaryKeyProofsRoundTripOrFail() throws {
        let seeds: [[UInt8]] = try ["key-present.json", "key-absent.json"].map { name in
            guard case .key(let key) = try ProofDocument(json: Data(try Self.seed(name))) else { throw LedgerError(.invalidArgument, name) }
            return key.proof.encoded()
        }
        Self.fuzz("binary key proof", seeds: seeds) { input in
            do {
                let proof = try SparseProof(decoding: input)
                #expect(proof.encoded() == input, "a binary key proof parsed from bytes it would not write")
                _ = try? proof.verify(root: .zero)
                return true
            } catch is SparseMerkleError { return false } catch {
                Issue.record("untyped error \(error)")
                return false
            }
        }
    }

    @Test func binaryMultiKeyProofsRoundTripOrFail() throws {
        guard case .keys(let keys) = try ProofDocument(json: Data(try Self.seed("keys.json"))) else {
            throw LedgerError(.invalidArgument, "keys.json")
        }
        try keys.proof.verify(root: keys.mapRoot)
        Self.fuzz("binary multi-key proof", seeds: [keys.proof.encoded()]) { input in
            do {
                let proof = try SparseMultiProof(decoding: input)
                #expect(proof.encoded() == input, "a binary multi-key proof parsed from bytes it would not write")
                if (try? proof.verify(root: keys.mapRoot)) != nil {
                    // What verifies against the corpus map's root must agree with the corpus proof.
                    for (i, k) in proof.keyHashes.enumerated() {
                        if let claim = keys.proof.value(of: k) { #expect(proof.values[i] == claim, "a verified claim differs") }
                    }
                }
                return true
            } catch is SparseMerkleError { return false } catch {
                Issue.record("untyped error \(error)")
                return false
            }
        }
    }

    @Test func notesCheckpointsAndKeyFiles() throws {
        let note = try Self.seed("checkpoint.note")
        let verifierText = String(decoding: try Self.seed("verifier.key"), as: UTF8.self)
        let verifier = try NoteVerifier(parsing: verifierText)
        Self.fuzz("signed note", seeds: [note]) { input in
            do {
                let parsed = try SignedNote(parsing: String(decoding: input, as: UTF8.self))
                _ = try? parsed.verify(with: [verifier])
                _ = try? Checkpoint(parsing: parsed.text)
                _ = try? SignedCheckpoint(verifying: String(decoding: input, as: UTF8.self), verifiers: [verifier])
                return true
            } catch is MerkleLogError { return false } catch {
                Issue.record("untyped error \(error)")
                return false
            }
        }
        Self.fuzz("verifier key", seeds: [Array(verifierText.utf8)]) { input in
            guard let parsed = try? NoteVerifier(parsing: String(decoding: input, as: UTF8.self)) else { return false }
            #expect((try? NoteVerifier(parsing: parsed.description)) == parsed)
            return true
        }
        let signer = try NoteSigner(generatingFor: "fuzz.example/ledger")
        Self.fuzz("signer key", seeds: [Array(signer.secretKeyText().utf8)]) { input in
            (try? NoteSigner(parsing: String(decoding: input, as: UTF8.self))) != nil
        }
    }

    @Test func ledgerEntriesRoundTripOrFail() throws {
        let seeds = String(decoding: try Self.seed("entries.hex"), as: UTF8.self).split(separator: "\n").compactMap { Hex.decode(String($0)) }
        #expect(seeds.count >= 3)
        Self.fuzz("ledger entry", seeds: seeds) { input in
            do {
                let entry = try LedgerEntry(decoding: input)
                #expect(entry.encoded() == input)
                return true
            } catch is LedgerError { return false } catch {
                Issue.record("untyped error \(error)")
                return false
            }
        }
    }

    @Test func exportsAndMasterKeyFiles() throws {
        let bundle = try Self.seed("export-bundle.json"), proof = try Self.seed("export-proof.json")
        let verifier = try NoteVerifier(parsing: String(decoding: try Self.seed("verifier.key"), as: UTF8.self))
        #expect(try PatientExport.verify(bundle: Data(bundle), proof: Data(proof), verifier: verifier) == 1)
        // Every refusal is the documented verification error, whatever part is damaged.
        Self.fuzz("export proof", seeds: [proof]) { input in
            do {
                try PatientExport.verify(bundle: Data(bundle), proof: Data(input), verifier: verifier)
                return true
            } catch is MerkleLogError { return false } catch {
                Issue.record("untyped error \(error)")
                return false
            }
        }
        Self.fuzz("export bundle", seeds: [bundle]) { input in
            let ok = (try? PatientExport.verify(bundle: Data(input), proof: Data(proof), verifier: verifier)) != nil
            if ok {
                // Only spellings of the same document may pass (white space, escapes).
                let same = (try? JSONSerialization.jsonObject(with: Data(input))) as? NSDictionary
                #expect(same == (try? JSONSerialization.jsonObject(with: Data(bundle))) as? NSDictionary,
                        "an altered Bundle verified: \(String(decoding: input, as: UTF8.self).prefix(400))")
            }
            return ok
        }

        let path = NSTemporaryDirectory() + "medledger-fuzz-\(UUID().uuidString).key"
        defer { try? FileManager.default.removeItem(atPath: path) }
        _ = try MasterKeyFile.create(at: path)
        let text = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        try FileManager.default.removeItem(atPath: path)
        Self.fuzz("master key file", seeds: [text]) { input in
            try? FileManager.default.removeItem(atPath: path)
            #expect(FileManager.default.createFile(atPath: path, contents: Data(input), attributes: [.posixPermissions: 0o600]))
            do {
                _ = try MasterKeyFile(path: path)
                return true
            } catch is LedgerError { return false } catch {
                Issue.record("untyped error \(error)")
                return false
            }
        }
    }

    @Test func blobRangeProofsAndDICOMHeaders() throws {
        let f = try PatientFixture("fuzz-blob")
        try f.records.addPatient(externalId: "P")
        var rng = SplitMix64(seed: 0xB10B)
        let content = randomBytes(5 * 4096 + 100, &rng)
        let writer = try f.records.blobWriter(chunkSize: 4096)
        let upload = try writer.begin(patient: "P", blobId: "img")
        try upload.write(content)
        try upload.finish()
        try writer.commit()
        let reader = try f.records.openBlob(patient: "P", blobId: "img", as: .patient("P"))
        let verifier = try NoteVerifier(parsing: f.verifierKey)
        let proof = [UInt8](try reader.rangeProof(offset: 4000, length: 200).json)
        // Whatever verifies must be the blob's true bytes at the offset it states.
        Self.fuzz("blob range proof", seeds: [proof]) { input in
            do {
                let verified = try BlobRangeProof.verify(Data(input), verifier: verifier)
                let at = Int(verified.offset)
                #expect(verified.bytes == Array(content[at..<(at + verified.bytes.count)]), "a mutated proof verified other bytes")
                return true
            } catch is MerkleLogError { return false } catch is LedgerError { return false } catch {
                Issue.record("untyped error \(error)")
                return false
            }
        }
        var seeds: [[UInt8]] = []
        for syntax in [DICOMFileBuilder.Syntax.explicitLittle, .implicitLittle, .explicitBig] {
            var builder = DICOMFileBuilder()
            builder.syntax = syntax
            builder.pixels = 16
            seeds.append(builder.bytes())
        }
        Self.fuzz("DICOM header", seeds: seeds) { input in
            do {
                _ = try DICOMReader.parseHeader(input)
                return true
            } catch is LedgerError { return false } catch {
                Issue.record("untyped error \(error)")
                return false
            }
        }
    }

    @Test func fhirRecordsAreCheckedBeforeStorage() throws {
        let f = try PatientFixture("fuzz-fhir")
        try f.records.addPatient(externalId: "Patient/fuzz")
        var n = 0
        Self.fuzz("FHIR record", seeds: [try Self.seed("observation.fhir.json")]) { input in
            n += 1
            do {
                try f.records.putRecord(patient: "Patient/fuzz", recordId: "r\(n)", content: input)
            } catch let error as LedgerError {
                #expect(error.code == .invalidRecord, "\(error)")
                return false
            } catch {
                Issue.record("untyped error \(error)")
                return false
            }
            // Accepted: a JSON object with a resourceType, stored and read back unchanged.
            let object = (try? JSONSerialization.jsonObject(with: Data(input))) as? [String: Any]
            #expect(object?["resourceType"] is String, "accepted a record Foundation does not read as a FHIR resource: \(String(decoding: input, as: UTF8.self).prefix(300))")
            let back = try? f.records.read(patient: "Patient/fuzz", recordId: "r\(n)", as: .custodian("fuzz"))
            #expect(back?.content == input)
            return true
        }
    }
}
