import Foundation
import Testing
import LedgerCrypto
@testable import MedLedger
import TestSupport
import MerkleLog
import LMDBKit

/// A count threads add to.
final class FailureCount: @unchecked Sendable {
    // Sendable: `count` is read and written under `lock`.
    private let lock = NSLock()
    private var count = 0
    func add() { lock.withLock { count += 1 } }
    var value: Int { lock.withLock { count } }
}

/// A ledger with a patient layer in a scratch directory, its master key file beside it.
final class PatientFixture: @unchecked Sendable {
    let directory: String
    let ledger: Ledger
    let verifierKey: String
    let records: PatientRecords
    /// Seconds since 1970 that the layer's clock reads.
    nonisolated(unsafe) var now: TimeInterval = 1_800_000_000

    var keyPath: String { directory + ".master.key" }

    init(_ name: String, durable: Bool = false) throws {
        directory = ledgerPath(name)
        var options = Ledger.Options()
        options.durable = durable
        (ledger, verifierKey) = try Ledger.create(at: directory, origin: "test.example/\(name)", options: options)
        records = try PatientRecords(ledger: ledger, masterKey: try MasterKeyFile.create(at: directory + ".master.key"))
        records.clock = { [unowned self] in Date(timeIntervalSince1970: self.now) }
    }

    deinit {
        try? FileManager.default.removeItem(atPath: directory)
        try? FileManager.default.removeItem(atPath: directory + ".master.key")
    }

    /// Registers `patients`, each with an `obs` record holding `observation(id)`.
    func addPatientsWithObservation(_ patients: [String], via instance: PatientRecords? = nil) throws {
        let instance = instance ?? records
        for p in patients {
            try instance.addPatient(externalId: p)
            try instance.putRecord(patient: p, recordId: "obs", content: observation(p))
        }
    }

    /// What `verify` finds wrong, given the key file as it is on disk now.
    func verificationProblems() throws -> [VerificationReport.Problem] {
        var options = VerificationOptions()
        options.masterKey = try MasterKeyFile(path: keyPath)
        return try ledger.verify(options).problems
    }

    /// The key file's lines: 3 when settled, 4 while it holds a previous generation.
    func keyFileLineCount() throws -> Int {
        try String(contentsOfFile: keyPath, encoding: .utf8).split(separator: "\n").count
    }

    /// Every byte of every file of the ledger and its key file.
    func allFileBytes() throws -> [UInt8] {
        var out: [UInt8] = []
        // Recursive: blob segments live in a subdirectory.
        for name in FileManager.default.enumerator(atPath: directory)?.compactMap({ $0 as? String }) ?? [] {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: directory + "/" + name, isDirectory: &isDirectory), !isDirectory.boolValue else { continue }
            out += [UInt8](try Data(contentsOf: URL(fileURLWithPath: directory + "/" + name)))
        }
        out += [UInt8](try Data(contentsOf: URL(fileURLWithPath: keyPath)))
        return out
    }
}

func observation(_ marker: String, code: String = "8867-4") -> [UInt8] {
    Array(#"{"resourceType":"Observation","id":"obs","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"\#(code)"}]},"note":[{"text":"\#(marker)"}]}"#.utf8)
}

func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
    !needle.isEmpty && Data(haystack).range(of: Data(needle)) != nil
}

func auditEvents(_ f: PatientFixture, _ patient: String) throws -> [[String: Any]] {
    try f.records.auditTrail(patient: patient).map(\.event)
}

@Suite struct PatientRecordsTests {
    /// Which media types are checked as FHIR JSON: the two names of the FHIR JSON type, in
    /// any ASCII case, with parameters and spaces or tabs around them; nothing else.
    @Test func fhirMediaTypesAreRecognised() {
        for fhir in ["application/fhir+json", "application/json+fhir", "Application/FHIR+JSON", " application/fhir+json\t",
                     "application/fhir+json; fhirVersion=4.0", "application/fhir+json ;charset=utf-8", "\tapplication/json+fhir;"] {
            #expect(PatientRecords.isFHIR(fhir), "\(fhir)")
        }
        for other in ["", ";", "application/json", "application/fhir+xml", "application/fhir+jsonx", "xapplication/fhir+json",
                      "application/fhir json", "application/fhir+json\u{a0}", "text/plain; application/fhir+json", "ａpplication/fhir+json"] {
            #expect(!PatientRecords.isFHIR(other), "\(other)")
        }
    }

    @Test func recordsRoundTripEncryptedAndVersioned() throws {
        let f = try PatientFixture("records")
        try f.records.addPatient(externalId: "Patient/alice")
        let marker = "secret-marker-\(UUID().uuidString)"
        let v1 = try f.records.putRecord(patient: "Patient/alice", recordId: "obs-1", content: observation(marker + "-v1"))
        let v2 = try f.records.putRecord(patient: "Patient/alice", recordId: "obs-1", content: observation(marker + "-v2"))
        try f.records.putRecord(patient: "Patient/alice", recordId: "scan.pdf", content: Array("%PDF-1.7 \(marker)".utf8), mediaType: "application/pdf")
        #expect(v1.version == 1 && v2.version == 2)

        let latest = try f.records.read(patient: "Patient/alice", recordId: "obs-1", as: .custodian("records-office"))
        #expect(latest.content == observation(marker + "-v2"))
        #expect(latest.version == 2 && latest.resourceType == "Observation" && latest.index == v2.index)
        let first = try f.records.read(patient: "Patient/alice", recordId: "obs-1", version: 1, as: .patient("Patient/alice"))
        #expect(first.content == observation(marker + "-v1"))
        #expect(try f.records.history(patient: "Patient/alice", recordId: "obs-1", as: .custodian("c")).map(\.version) == [1, 2])
        #expect(Set(try f.records.list(patient: "Patient/alice", as: .custodian("c")).map(\.recordId)) == ["obs-1", "scan.pdf"])

        // The log commits to the ciphertext; no plaintext, patient id or record id in any file.
        let entry = try LedgerEntry(decoding: try f.ledger.rawEntry(at: v2.index).bytes)
        #expect(entry.key.hasPrefix("record/"))
        #expect(String(decoding: entry.payload, as: UTF8.self).contains(v2.ciphertextHash.hex))
        let files = try f.allFileBytes()
        for needle in [marker, "Patient/alice", "obs-1", "scan.pdf", "Observation"] {
            let found = contains(files, Array(needle.utf8))
            #expect(!found, "\(needle) found in the ledger's files")
        }

        // Not found, another patient's read, bad FHIR.
        #expect(throws: LedgerError(.recordNotFound, "")) { try f.records.read(patient: "Patient/alice", recordId: "nope", as: .custodian("c")) }
        #expect(throws: LedgerError(.recordNotFound, "")) { try f.records.read(patient: "Patient/alice", recordId: "obs-1", version: 3, as: .custodian("c")) }
        #expect(throws: LedgerError(.patientNotFound, "")) { try f.records.read(patient: "Patient/bob", recordId: "obs-1", as: .custodian("c")) }
        try f.records.addPatient(externalId: "Patient/bob")
        #expect(throws: LedgerError(.accessDenied, "")) { try f.records.read(patient: "Patient/alice", recordId: "obs-1", as: .patient("Patient/bob")) }
        // The refusal names the patient who asked (by their own pseudonym), not the one asked about.
        let refusal = try #require(try auditEvents(f, "Patient/alice").last)
        #expect(refusal["agent"] as? String == "patient:" + (try f.records.pseudonym(of: "Patient/bob")).hex)
        #expect(refusal["outcome"] as? String == "refused")
        let sizeBefore = try f.ledger.size
        for bad in [Array("not json".utf8), Array("[1,2]".utf8), Array(#"{"id":"x"}"#.utf8), Array(#"{"resourceType":7}"#.utf8)] {
            #expect(throws: LedgerError(.invalidRecord, "")) { try f.records.putRecord(patient: "Patient/alice", recordId: "bad", content: bad) }
        }
        #expect(throws: LedgerError(.patientExists, "")) { try f.records.addPatient(externalId: "Patient/bob") }
        #expect(throws: LedgerError(.patientNotFound, "")) { try f.records.putRecord(patient: "Patient/carol", recordId: "x", content: observation("x")) }
        #expect(try f.ledger.size == sizeBefore)  // refused writes leave the ledger unchanged
    }

    @Test func grantsScopeExpiryRevocationAndAudit() throws {
        let f = try PatientFixture("grants")
        let p = "Patient/dana"
        try f.records.addPatient(externalId: p)
        try f.records.putRecord(patient: p, recordId: "obs", content: observation("o"))
        try f.records.putRecord(patient: p, recordId: "med", content: Array(#"{"resourceType":"MedicationStatement","status":"active"}"#.utf8))
        let doctor = try Ed25519PrivateKey().publicKey

        // No grant: refused and audited.
        #expect(throws: LedgerError(.accessDenied, "")) { try f.records.read(patient: p, recordId: "obs", as: .grantee("dr-lee")) }
        var events = try auditEvents(f, p)
        #expect(events.last?["outcome"] as? String == "refused" && events.last?["agent"] as? String == "dr-lee")

        // Scoped to Observation for one day.
        try f.records.grant(patient: p, to: "dr-lee", granteeKey: doctor, scope: GrantScope(resourceTypes: ["Observation"]),
                            notAfter: Date(timeIntervalSince1970: f.now + 86_400))
        #expect(try f.records.read(patient: p, recordId: "obs", as: .grantee("dr-lee")).resourceType == "Observation")
        #expect(throws: LedgerError(.accessDenied, "")) { try f.records.read(patient: p, recordId: "med", as: .grantee("dr-lee")) }
        #expect(try f.records.list(patient: p, as: .grantee("dr-lee")).map(\.recordId) == ["obs"])
        let key = "grant/\(try f.records.pseudonym(of: p).hex)/dr-lee"
        #expect(try f.ledger.keyProof(key: key).proof.isInclusion)

        // Expiry.
        f.now += 86_401
        #expect(throws: LedgerError(.accessDenied, "")) { try f.records.read(patient: p, recordId: "obs", as: .grantee("dr-lee")) }
        f.now -= 86_401

        // Revocation is immediate and proven by non-inclusion.
        try f.records.revoke(patient: p, grantee: "dr-lee")
        #expect(throws: LedgerError(.accessDenied, "")) { try f.records.read(patient: p, recordId: "obs", as: .grantee("dr-lee")) }
        let absent = try f.ledger.keyProof(key: key)
        #expect(!absent.proof.isInclusion)
        try absent.proof.verify(root: absent.mapRoot)
        #expect(throws: LedgerError(.notFound, "")) { try f.records.revoke(patient: p, grantee: "dr-lee") }

        // Break-glass succeeds, is flagged and listed for review.
        let urgent = try f.records.read(patient: p, recordId: "med", as: .grantee("er-doc"), purpose: "emergency", breakGlass: "unconscious in ER")
        #expect(urgent.resourceType == "MedicationStatement")
        let reviewed = try f.records.breakGlassEvents()
        #expect(reviewed.count == 1 && reviewed[0].event["reason"] as? String == "unconscious in ER" && reviewed[0].event["agent"] as? String == "er-doc")

        events = try auditEvents(f, p)
        let outcomes = events.filter { $0["action"] as? String == "read" }.map { "\($0["agent"]!):\($0["outcome"]!):\($0["break_glass"]!)" }
        #expect(outcomes == ["dr-lee:refused:0", "dr-lee:success:0", "dr-lee:refused:0", "dr-lee:refused:0", "dr-lee:refused:0", "er-doc:success:1"])
        // Every audit entry is in the log and proves inclusion against a checkpoint.
        let checkpoint = try f.ledger.checkpoint()
        for record in try f.records.auditTrail(patient: p) {
            let (proof, leaf, root) = try f.ledger.inclusionProof(index: record.index, size: checkpoint.size)
            try proof.verify(leafHash: leaf, rootHash: root)
            #expect(root == checkpoint.rootHash && leaf == record.leafHash)
        }
    }

    @Test func selfCustodyGrantsNeedThePatientsSignature() throws {
        let f = try PatientFixture("selfcustody")
        let patientKey = try Ed25519PrivateKey()
        try f.records.addPatient(externalId: "Patient/eve", signingKey: patientKey.publicKey)
        let doctor = try Ed25519PrivateKey().publicKey
        let notAfter = Date(timeIntervalSince1970: f.now + 3600)
        let issued = Date(timeIntervalSince1970: f.now)
        #expect(throws: LedgerError(.badSignature, "")) {
            try f.records.grant(patient: "Patient/eve", to: "dr-x", granteeKey: doctor, notAfter: notAfter)
        }
        let (_, message) = try f.records.draftGrant(patient: "Patient/eve", to: "dr-x", granteeKey: doctor, notAfter: notAfter, issuedAt: issued)
        var signature = try patientKey.signature(for: message)
        try f.records.grant(patient: "Patient/eve", to: "dr-x", granteeKey: doctor, notAfter: notAfter, issuedAt: issued, signature: signature)
        #expect(throws: LedgerError(.badSignature, "")) {  // a signature that cannot be checked is not stored
            try f.records.addPatient(externalId: "Patient/nokey")
            try f.records.grant(patient: "Patient/nokey", to: "dr-x", granteeKey: doctor, notAfter: notAfter, issuedAt: issued, signature: signature)
        }
        #expect(throws: LedgerError(.invalidArgument, "")) {
            try f.records.grant(patient: "Patient/nokey", to: "dr-x", granteeKey: doctor, scope: GrantScope(resourceTypes: ["Obs,Cond"]), notAfter: notAfter)
        }
        signature[0] ^= 1
        #expect(throws: LedgerError(.badSignature, "")) {
            try f.records.grant(patient: "Patient/eve", to: "dr-y", granteeKey: doctor, notAfter: notAfter, issuedAt: issued, signature: signature)
        }
    }

    @Test func wrongMasterKeyErrorsCleanly() throws {
        let f = try PatientFixture("masterkey")
        try f.records.addPatient(externalId: "Patient/f")
        let other = f.directory + ".other.key"
        defer { try? FileManager.default.removeItem(atPath: other) }
        #expect(throws: LedgerError(.wrongMasterKey, "")) { try PatientRecords(ledger: f.ledger, masterKey: try MasterKeyFile.create(at: other)) }
        chmod(f.keyPath, 0o644)
        #expect(throws: LedgerError(.keyFile, "")) { try MasterKeyFile(path: f.keyPath) }
        chmod(f.keyPath, 0o600)
        try Data("medledger-master-key 1\ngarbage\n".utf8).write(to: URL(fileURLWithPath: other))
        chmod(other, 0o600)
        #expect(throws: LedgerError(.keyFile, "")) { try MasterKeyFile(path: other) }
        #expect(throws: LedgerError(.keyFile, "")) { try MasterKeyFile(path: other + ".missing") }
        // The right key still opens it.
        _ = try PatientRecords(ledger: f.ledger, masterKey: try MasterKeyFile(path: f.keyPath))
    }

    @Test func erasureDestroysKeysAndKeepsProofsValid() throws {
        let f = try PatientFixture("erasure")
        let marker = "erase-me-\(UUID().uuidString)"
        try f.records.addPatient(externalId: "Patient/gone")
        try f.records.addPatient(externalId: "Patient/stays")
        try f.records.putRecord(patient: "Patient/gone", recordId: "obs", content: observation(marker))
        try f.records.putRecord(patient: "Patient/stays", recordId: "obs", content: observation("kept"))
        try f.records.grant(patient: "Patient/gone", to: "dr-z", granteeKey: try Ed25519PrivateKey().publicKey,
                            notAfter: Date(timeIntervalSince1970: f.now + 3600))
        let oldMaster = try String(contentsOfFile: f.keyPath, encoding: .utf8)
        let oldGenerationKey = oldMaster.split(separator: "\n")[2].split(separator: " ")[2]
        let before = try f.ledger.checkpoint()

        let report = try f.records.erase(patient: "Patient/gone")
        #expect(report.recordVersionsDeleted == 1 && report.grantsRevoked == 1 && report.masterKeyGeneration == 2)
        #expect(report.masterKeyFileSettled)
        #expect(throws: LedgerError(.erased, "")) { try f.records.read(patient: "Patient/gone", recordId: "obs", as: .custodian("c")) }
        #expect(throws: LedgerError(.erased, "")) { try f.records.erase(patient: "Patient/gone") }
        #expect(throws: LedgerError(.erased, "")) { try f.records.putRecord(patient: "Patient/gone", recordId: "obs", content: observation("again")) }
        // The other patient is untouched, under the new generation.
        #expect(try f.records.read(patient: "Patient/stays", recordId: "obs", as: .custodian("c")).content == observation("kept"))
        let reopened = try PatientRecords(ledger: f.ledger, masterKey: try MasterKeyFile(path: f.keyPath))
        #expect(try reopened.read(patient: "Patient/stays", recordId: "obs", as: .custodian("c")).content == observation("kept"))

        // The old master key generation is gone from every file; no plaintext anywhere.
        let files = try f.allFileBytes()
        let foundOldKeyText = contains(files, Array(oldGenerationKey.utf8))
        let foundOldKey = contains(files, Base64.decode(oldGenerationKey)!)
        let foundPlaintext = contains(files, Array(marker.utf8))
        #expect(!foundOldKeyText && !foundOldKey && !foundPlaintext)

        // Log and map proofs still verify; the patient and grant keys are now absent.
        let after = try f.ledger.checkpoint()
        let (consistency, oldRoot, newRoot) = try f.ledger.consistencyProof(oldSize: before.size)
        try consistency.verify(oldRoot: oldRoot, newRoot: newRoot)
        #expect(oldRoot == before.rootHash && newRoot == after.rootHash)
        for i in 0..<after.size {
            let (proof, leaf, root) = try f.ledger.inclusionProof(index: i)
            try proof.verify(leafHash: leaf, rootHash: root)
        }
        let pseudonym = try f.records.pseudonym(of: "Patient/gone").hex
        for key in ["patient/\(pseudonym)", "grant/\(pseudonym)/dr-z"] {
            let (proof, root, _) = try f.ledger.keyProof(key: key)
            #expect(!proof.isInclusion)
            try proof.verify(root: root)
        }
        #expect(try f.ledger.rebuildIndex().mismatches.isEmpty)
    }

    @Test func interruptedRotationIsUndoneOnOpen() throws {
        let f = try PatientFixture("rotation")
        try f.records.addPatient(externalId: "Patient/h")
        try f.records.putRecord(patient: "Patient/h", recordId: "obs", content: observation("h"))
        // A key file that began a rotation whose ledger write never committed.
        let text = try String(contentsOfFile: f.keyPath, encoding: .utf8).split(separator: "\n")
        let fresh = Base64.encode(try SecureRandom.bytes(32))
        let current = text[2].split(separator: " ")
        try Data("\(text[0])\n\(text[1])\ngeneration 2 \(fresh)\nprevious 1 \(current[2])\n".utf8).write(to: URL(fileURLWithPath: f.keyPath))
        let recovered = try PatientRecords(ledger: f.ledger, masterKey: try MasterKeyFile(path: f.keyPath))
        #expect(recovered.masterKey.generation == 1)
        #expect(try recovered.read(patient: "Patient/h", recordId: "obs", as: .custodian("c")).content == observation("h"))
        #expect(try f.keyFileLineCount() == 3)
    }

    /// Two instances sharing one ledger and one key file, each erasing in turn: the one whose
    /// memory still holds a destroyed generation reads the rotated keys, wraps new patients'
    /// keys under the ledger's generation and starts its own rotation from it, so no key is
    /// lost and the key file ends holding the ledger's generation alone.
    @Test func instancesSharingAKeyFilePickUpEachOthersRotations() throws {
        let f = try PatientFixture("shared-key")
        try f.addPatientsWithObservation(["Patient/a", "Patient/b"])
        let other = try PatientRecords(ledger: f.ledger, masterKey: try MasterKeyFile(path: f.keyPath))
        try other.erase(patient: "Patient/a")
        #expect(other.masterKey.generation == 2)

        // `f.records` read the file at generation 1, which the erasure destroyed.
        #expect(try f.records.read(patient: "Patient/b", recordId: "obs", as: .custodian("c")).content == observation("Patient/b"))
        try f.addPatientsWithObservation(["Patient/c"])
        let batch = try f.records.readRecords([.init(patient: "Patient/b", recordId: "obs"), .init(patient: "Patient/c", recordId: "obs")],
                                              as: .custodian("c"))
        #expect(try batch.map { try $0.get().content } == [observation("Patient/b"), observation("Patient/c")])
        #expect(try f.records.erase(patient: "Patient/b").masterKeyGeneration == 3)

        #expect(try other.read(patient: "Patient/c", recordId: "obs", as: .custodian("c")).content == observation("Patient/c"))
        let fresh = try PatientRecords(ledger: f.ledger, masterKey: try MasterKeyFile(path: f.keyPath))
        #expect(fresh.masterKey.generation == 3 && fresh.masterKey.previousGeneration == nil)
        #expect(try fresh.read(patient: "Patient/c", recordId: "obs", as: .custodian("c")).content == observation("Patient/c"))
        #expect(try f.keyFileLineCount() == 3)
        let problems = try f.verificationProblems()
        #expect(problems.isEmpty, "\(problems)")
    }

    /// An instance that reads the key file while another's erasure is under way sees that
    /// erasure's new generation before it commits. When the erasure's write is retried (or
    /// another erasure runs) under a different key for that generation, the instance reads the
    /// file again instead of wrapping new keys, or failing reads, under the key it saw.
    @Test func aKeyReadDuringAnotherErasureIsNotTrusted() throws {
        let f = try PatientFixture("mid-rotation")
        try f.addPatientsWithObservation(["Patient/a", "Patient/b", "Patient/c"])
        let other = try PatientRecords(ledger: f.ledger, masterKey: try MasterKeyFile(path: f.keyPath))
        let reader = try PatientRecords(ledger: f.ledger, masterKey: try MasterKeyFile(path: f.keyPath))
        try other.erase(patient: "Patient/a")  // generation 2; `f.records` and `reader` still hold 1
        // The file as an erasure to generation 3 leaves it before its transaction commits.
        let text = try String(contentsOfFile: f.keyPath, encoding: .utf8).split(separator: "\n")
        let current = text[2].split(separator: " ")
        let uncommitted = Base64.encode(try SecureRandom.bytes(32))
        try Data("\(text[0])\n\(text[1])\ngeneration 3 \(uncommitted)\nprevious 2 \(current[2])\n".utf8)
            .write(to: URL(fileURLWithPath: f.keyPath))
        for instance in [f.records, reader] {
            #expect(try instance.read(patient: "Patient/b", recordId: "obs", as: .custodian("c")).content == observation("Patient/b"))
            #expect(instance.masterKey.key(generation: 3) != nil)  // the uncommitted key, now in memory
        }
        // That erasure never commits; the next one undoes its rotation and commits generation 3
        // under a key of its own.
        try other.erase(patient: "Patient/c")
        // A writer checks the key against the ledger's key check; a reader whose key does not
        // open reads the file again.
        try f.addPatientsWithObservation(["Patient/d"])
        #expect(try reader.read(patient: "Patient/b", recordId: "obs", as: .custodian("c")).content == observation("Patient/b"))
        let fresh = try PatientRecords(ledger: f.ledger, masterKey: try MasterKeyFile(path: f.keyPath))
        #expect(fresh.masterKey.generation == 3)
        for p in ["Patient/b", "Patient/d"] {
            #expect(try fresh.read(patient: p, recordId: "obs", as: .custodian("c")).content == observation(p))
        }
        let problems = try f.verificationProblems()
        #expect(problems.isEmpty, "\(problems)")
    }

    /// An instance that reads the key file between another's erasure commit and that erasure's
    /// rewrite of the file holds both generations; its next use of the new one (every
    /// patient's state names it) forgets the destroyed one, which the file no longer holds
    /// once the erasure settled it.
    @Test func aKeyReadBetweenAnErasureCommitAndItsSettleIsForgotten() throws {
        let f = try PatientFixture("commit-settle")
        try f.addPatientsWithObservation(["Patient/a", "Patient/b", "Patient/c"])
        let reader = try PatientRecords(ledger: f.ledger, masterKey: try MasterKeyFile(path: f.keyPath))
        #expect(try reader.read(patient: "Patient/b", recordId: "obs", as: .custodian("c")).content == observation("Patient/b"))
        var readThere = false
        f.records.afterErasureCommit = {
            // Generation 2 committed; the file still holds 1 next to it. The reader needs 2.
            readThere = (try? reader.read(patient: "Patient/b", recordId: "obs", as: .custodian("c")).content) == observation("Patient/b")
        }
        let report = try f.records.erase(patient: "Patient/a")
        f.records.afterErasureCommit = nil
        #expect(readThere && report.masterKeyGeneration == 2 && report.masterKeyFileSettled)
        #expect(reader.masterKey.key(generation: 2) != nil)
        #expect(reader.masterKey.key(generation: 1) == nil)
        #expect(f.records.masterKey.key(generation: 1) == nil)
        let text = try String(contentsOfFile: f.keyPath, encoding: .utf8)
        #expect(!text.contains("previous") && text.contains("generation 2 "))
        #expect(try reader.read(patient: "Patient/c", recordId: "obs", as: .custodian("c")).content == observation("Patient/c"))
        #expect(throws: LedgerError(.erased, "")) { try reader.read(patient: "Patient/a", recordId: "obs", as: .custodian("c")) }
    }

    /// An erasure whose write is retried (the map grew) draws a new key for its generation; an
    /// instance that read the file during the first attempt holds the key that never
    /// committed, and neither its reads nor its writes use it.
    @Test func aRetriedErasureWriteRotatesOnceAndOthersFollow() throws {
        let f = try PatientFixture("erasure-retry")
        try f.addPatientsWithObservation(["Patient/a", "Patient/b"])
        let reader = try PatientRecords(ledger: f.ledger, masterKey: try MasterKeyFile(path: f.keyPath))
        let writer = try PatientRecords(ledger: f.ledger, masterKey: try MasterKeyFile(path: f.keyPath))
        var firstAttemptKey: [UInt8]?
        f.records.duringErasureWrite = { attempt in
            guard attempt == 0 else { return }
            for instance in [reader, writer] { try instance.masterKey.reload() }
            firstAttemptKey = reader.masterKey.key(generation: 2)?.withUnsafeBytes { Array($0) }
            throw LMDBError(code: .mapFull, operation: "test: grow the map and write again")
        }
        let mapBefore = f.ledger.environment.mapSize
        #expect(try f.records.erase(patient: "Patient/a").masterKeyGeneration == 2)
        #expect(f.ledger.environment.mapSize > mapBefore)
        let committed = try #require(try MasterKeyFile(path: f.keyPath).key(generation: 2)?.withUnsafeBytes { Array($0) })
        #expect(firstAttemptKey != nil && firstAttemptKey != committed)
        #expect(try f.keyFileLineCount() == 3)

        try f.addPatientsWithObservation(["Patient/c"], via: writer)
        for p in ["Patient/b", "Patient/c"] {
            #expect(try reader.read(patient: p, recordId: "obs", as: .custodian("c")).content == observation(p))
        }
        let problems = try f.verificationProblems()
        #expect(problems.isEmpty, "\(problems)")
    }

    /// An erasure whose key file cannot be rewritten after its commit says so: the old
    /// generation is still in the file until a read-write open settles it.
    @Test func anUnsettledKeyFileIsReportedAndSettledOnOpen() throws {
        let f = try PatientFixture("unsettled")
        try f.addPatientsWithObservation(["Patient/a", "Patient/b"])
        let blocker = f.keyPath + ".tmp"
        defer { try? FileManager.default.removeItem(atPath: blocker) }
        // Once the rotation's file is written, a directory where the next rewrite writes its
        // temporary file makes that rewrite fail.
        f.records.duringErasureWrite = { _ in try FileManager.default.createDirectory(atPath: blocker, withIntermediateDirectories: false) }
        let report = try f.records.erase(patient: "Patient/a")
        #expect(report.masterKeyGeneration == 2 && !report.masterKeyFileSettled)
        #expect(try f.keyFileLineCount() == 4)
        try FileManager.default.removeItem(atPath: blocker)
        let reopened = try PatientRecords(ledger: f.ledger, masterKey: try MasterKeyFile(path: f.keyPath))
        #expect(try f.keyFileLineCount() == 3)
        #expect(reopened.masterKey.generation == 2 && reopened.masterKey.previousGeneration == nil)
        #expect(try reopened.read(patient: "Patient/b", recordId: "obs", as: .custodian("c")).content == observation("Patient/b"))
    }

    /// A key file replaced by one with another ledger's secrets is refused when it is read
    /// again (a read that needs it reports the refusal), and the instance keeps what it held.
    @Test func aReplacedKeyFileOfAnotherLedgerIsRefused() throws {
        let f = try PatientFixture("replaced-key")
        try f.addPatientsWithObservation(["Patient/r", "Patient/s"])
        let other = try PatientRecords(ledger: f.ledger, masterKey: try MasterKeyFile(path: f.keyPath))
        try other.erase(patient: "Patient/s")  // generation 2, which `f.records` has not read
        let stranger = f.directory + ".stranger.key"
        defer { try? FileManager.default.removeItem(atPath: stranger) }
        _ = try MasterKeyFile.create(at: stranger)
        let saved = try Data(contentsOf: URL(fileURLWithPath: f.keyPath))
        #expect(rename(stranger, f.keyPath) == 0)
        #expect(throws: LedgerError.self) { try f.records.masterKey.reload() }
        #expect(f.records.masterKey.generation == 1)
        do {
            _ = try f.records.read(patient: "Patient/r", recordId: "obs", as: .custodian("c"))
            Issue.record("a read under another ledger's key file succeeded")
        } catch let error as LedgerError {
            #expect(error.code == .wrongMasterKey && error.message.contains("another ledger"), "\(error)")
        }
        #expect(throws: LedgerError.self) { try PatientRecords(ledger: f.ledger, masterKey: try MasterKeyFile(path: f.keyPath)) }
        try saved.write(to: URL(fileURLWithPath: f.keyPath))
        #expect(try f.records.read(patient: "Patient/r", recordId: "obs", as: .custodian("c")).content == observation("Patient/r"))
    }

    @Test func exportVerifiesOfflineAndTamperingFails() throws {
        let f = try PatientFixture("export")
        let p = "Patient/ivy"
        try f.records.addPatient(externalId: p)
        try f.records.putRecord(patient: p, recordId: "obs", content: observation("v1"))
        try f.records.putRecord(patient: p, recordId: "obs", content: observation("v2"))
        try f.records.putRecord(patient: p, recordId: "note.txt", content: Array("plain text".utf8), mediaType: "text/plain")
        let export = try f.records.export(patient: p, as: .patient(p))
        let verifier = try NoteVerifier(parsing: f.verifierKey)
        #expect(try PatientExport.verify(bundle: export.bundle, proof: export.proof, verifier: verifier) == 2)
        let bundle = try JSONSerialization.jsonObject(with: export.bundle) as! [String: Any]
        #expect(bundle["resourceType"] as? String == "Bundle" && bundle["type"] as? String == "collection")

        // A changed resource, an old version passed off as current, another ledger's key.
        let bundleText = String(decoding: export.bundle, as: UTF8.self)
        #expect(bundleText.contains("\"v2\""))
        let tampered = Data(bundleText.replacingOccurrences(of: "\"v2\"", with: "\"v3\"").utf8)
        #expect(throws: MerkleLogError(.verificationFailed, "")) { try PatientExport.verify(bundle: tampered, proof: export.proof, verifier: verifier) }
        var proof = try JSONSerialization.jsonObject(with: export.proof) as! [String: Any]
        var items = proof["records"] as! [[String: Any]]
        items[0]["box"] = Base64.encode(try SecureRandom.bytes(80))
        proof["records"] = items
        let swapped = try JSONSerialization.data(withJSONObject: proof)
        #expect(throws: MerkleLogError(.verificationFailed, "")) { try PatientExport.verify(bundle: export.bundle, proof: swapped, verifier: verifier) }
        let stranger = try NoteSigner(generatingFor: "test.example/export").verifier
        #expect(throws: MerkleLogError(.verificationFailed, "")) { try PatientExport.verify(bundle: export.bundle, proof: export.proof, verifier: stranger) }
        // Every single-byte change of the proof bundle's checkpoint or entries fails.
        let proofText = [UInt8](export.proof)
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<50 {
            var altered = proofText
            let i = Int.random(in: 0..<altered.count, using: &generator)
            altered[i] ^= 0x01
            if (try? PatientExport.verify(bundle: export.bundle, proof: Data(altered), verifier: verifier)) != nil {
                Issue.record("a proof bundle altered at byte \(i) verified")
            }
        }
        // The export was audited.
        #expect(try auditEvents(f, p).contains { $0["action"] as? String == "list" && $0["agent"] as? String != nil })
    }

    /// An export reads its records in one batch (one audit commit), writes each FHIR resource
    /// as stored, and its verifier fails with the typed error, naming the part that failed.
    @Test func exportWritesStoredResourcesAndNamesFailures() throws {
        let f = try PatientFixture("export-written")
        let p = "Patient/juno"
        try f.addPatientsWithObservation([p], via: f.records)
        // Stored as written: spacing, member order and a number's spelling survive the export.
        let spelled = Array(#"{ "resourceType" : "Observation", "valueQuantity": {"value": 7.20, "unit": "mmol/L"}, "id": "o/1" }"#.utf8)
        try f.records.putRecord(patient: p, recordId: "bp", content: observation("bp v1"))
        try f.records.putRecord(patient: p, recordId: "bp", content: spelled)
        // A member named twice: a put takes it, the export writes it parsed (the last wins).
        let twice = Array(#"{"resourceType":"Observation","status":"preliminary","status":"final"}"#.utf8)
        try f.records.putRecord(patient: p, recordId: "twice", content: twice)
        try f.records.putRecord(patient: p, recordId: "note.txt", content: Array("plain \"text\"\n".utf8), mediaType: "text/plain; x=\"y\"")
        // A lone surrogate escape, which an export's verifier could not parse, is refused at the put.
        #expect(throws: LedgerError(.invalidRecord, "")) {
            try f.records.putRecord(patient: p, recordId: "lone", content: Array(#"{"resourceType":"Observation","x":"\ud800"}"#.utf8))
        }
        // Nested as deep as a put allows: the Bundle holds it three levels further down.
        let deep = Array(#"{"resourceType":"Observation","x":"#.utf8) + Array(repeating: UInt8(ascii: "["), count: JSONCheck.maxDepth - 1)
            + Array(repeating: UInt8(ascii: "]"), count: JSONCheck.maxDepth - 1) + Array("}".utf8)
        try f.records.putRecord(patient: p, recordId: "deep", content: deep)
        let commitsBefore = f.records.auditCommitter.commits
        let trailBefore = try f.records.auditTrail(patient: p).count
        let export = try f.records.export(patient: p, as: .custodian("c"))
        // The list event and the five reads, in one commit, the list first.
        #expect(f.records.auditCommitter.commits == commitsBefore + 1)
        let exportEvents = try f.records.auditTrail(patient: p).dropFirst(trailBefore)
        #expect(exportEvents.map { $0.event["action"] as? String } == ["list"] + Array(repeating: "read", count: 5))
        #expect(exportEvents.allSatisfy { $0.event["purpose"] as? String == "patient-request" && $0.event["outcome"] as? String == "success" })
        // A refused export (a grantee holds no grant) commits its refused list event alone.
        let refusedBefore = f.records.auditCommitter.commits
        #expect(throws: LedgerError(.accessDenied, "")) { try f.records.export(patient: p, as: .grantee("dr-none")) }
        #expect(f.records.auditCommitter.commits == refusedBefore + 1)
        let refused = try #require(try f.records.auditTrail(patient: p).last)
        #expect(refused.event["action"] as? String == "list" && refused.event["outcome"] as? String != "success")
        let verifier = try NoteVerifier(parsing: f.verifierKey)
        #expect(try PatientExport.verify(bundle: export.bundle, proof: export.proof, verifier: verifier) == 5)
        #expect(export.bundle.range(of: Data(spelled)) != nil)
        let bundleText = String(decoding: export.bundle, as: UTF8.self)
        #expect(bundleText.contains(#""status":"final""#) && !bundleText.contains("preliminary"))
        let bundle = try JSONSerialization.jsonObject(with: export.bundle) as! [String: Any]
        let resources = (bundle["entry"] as! [[String: Any]]).map { $0["resource"] as! [String: Any] }
        let binary = try #require(resources.first { $0["resourceType"] as? String == "Binary" })
        #expect(binary["contentType"] as? String == "text/plain; x=\"y\"")
        #expect(Base64.decode(binary["data"] as! String) == Array("plain \"text\"\n".utf8))
        // Both documents are compact JSON with sorted keys at the levels the export writes.
        let proof = try JSONSerialization.jsonObject(with: export.proof) as! [String: Any]
        let proofText = String(decoding: export.proof, as: UTF8.self)
        #expect(proofText.hasPrefix(#"{"checkpoint":""#) && proofText.contains(#"],"tree_size":"#)
                && proofText.hasSuffix(#","type":"export","v":1}"#))
        #expect(proofText.contains(#"{"box":""#) && proofText.contains(#"","entry":""#) && proofText.contains(#","key_proof":{"#))
        #expect(bundleText.hasPrefix(#"{"entry":[{"fullUrl":"#) && bundleText.hasSuffix(#"}],"resourceType":"Bundle","type":"collection"}"#))

        func failure(_ change: (inout [String: Any]) -> Void) throws -> String? {
            var altered = proof
            change(&altered)
            do {
                try PatientExport.verify(bundle: export.bundle, proof: try JSONSerialization.data(withJSONObject: altered), verifier: verifier)
                return nil
            } catch let error as MerkleLogError {
                #expect(error.code == .verificationFailed)
                return error.message
            }
        }
        func item(_ i: Int, _ change: @escaping (inout [String: Any]) -> Void) -> (inout [String: Any]) -> Void {
            { d in
                var items = d["records"] as! [[String: Any]]
                change(&items[i])
                d["records"] = items
            }
        }
        #expect(try failure { _ in } == nil)
        for (why, change) in [
            ("record 1: inclusion is not an object", item(1) { $0["inclusion"] = "x" }),
            ("record 0: key_proof is not an object", item(0) { $0["key_proof"] = [1, 2] }),
            ("record 2: key_proof: ", item(2) { $0["key_proof"] = ["type": "key"] }),
            ("record 0: inclusion: ", item(0) { i in
                var inclusion = i["inclusion"] as! [String: Any]
                inclusion["tree_size"] = 1
                i["inclusion"] = inclusion
            }),
            ("record 3: the entry is not the proven leaf", item(3) { $0["entry"] = Base64.encode([1, 2, 3]) }),
            ("record 1: entry_index is not the proven index", item(1) { $0["entry_index"] = 0 }),
            ("record 2: entry_index is not the proven index", item(2) { $0["entry_index"] = "\($0["entry_index"]!)" }),
            ("record 4: missing or malformed field", item(4) { $0["box"] = 7 }),
            ("record 0: key_proof: proof is not valid proof JSON", item(0) { k in
                var key = k["key_proof"] as! [String: Any]
                key["siblings"] = "none"
                k["key_proof"] = key
            }),
            ("not an export proof bundle", { d in d["records"] = [1] + (d["records"] as! [Any]).dropFirst() }),
            ("not an export proof bundle", { d in d["v"] = 2 }),
            ("not an export proof bundle", { d in d["checkpoint"] = 1 }),
            ("tree_size is not the checkpoint's", { d in d["tree_size"] = "\(d["tree_size"]!)" }),
        ] as [(String, (inout [String: Any]) -> Void)] {
            let message = try failure(change)
            #expect(message?.contains(why) == true, "expected a failure naming \"\(why)\", got \(message ?? "success")")
        }
        // A size or index spelled as a fraction or with an exponent (the same value) is refused,
        // at the top level and inside an embedded proof.
        let size = try #require(proof["tree_size"] as? Int)
        for (plain, other) in [(#""tree_size":\#(size),"type":"key""#, #""tree_size":\#(size).0,"type":"key""#),
                               (#","tree_size":\#(size),"type":"export""#, #","tree_size":\#(size)e0,"type":"export""#),
                               (#""tree_size":\#(size),"type":"inclusion"}"#, #""tree_size":\#(size)E+0,"type":"inclusion"}"#)] {
            #expect(proofText.contains(plain), "\(plain)")
            let altered = Data(proofText.replacingOccurrences(of: plain, with: other).utf8)
            #expect(altered != export.proof)
            #expect { try PatientExport.verify(bundle: export.bundle, proof: altered, verifier: verifier) } throws: { error in
                (error as? MerkleLogError)?.message.contains("not a plain non-negative integer") == true
            }
        }
    }

    /// The benchmarks' split of a batch read's time: both phases are timed, and only while
    /// the task-local is set.
    @Test func batchReadTimingsSplitReadsFromTheirAudit() throws {
        let f = try PatientFixture("read-timings")
        try f.addPatientsWithObservation(["Patient/t"], via: f.records)
        let request = PatientRecords.ReadRequest(patient: "Patient/t", recordId: "obs")
        let phases = PatientRecords.ReadTimings()
        _ = try f.records.readRecords([request], as: .custodian("c"))
        #expect(phases.readNs == 0 && phases.auditNs == 0)
        let read = try PatientRecords.$readTimings.withValue(phases) { try f.records.readRecords([request, request], as: .custodian("c")) }
        #expect(read.count == 2 && read.allSatisfy { (try? $0.get()) != nil })
        // The audit phase covers a durable commit, the read phase at least the lookups.
        #expect(phases.readNs > 0 && phases.auditNs > 0)
    }

    @Test func concurrentReadsShareAuditCommits() async throws {
        let f = try PatientFixture("groupcommit")
        try f.records.addPatient(externalId: "Patient/j")
        try f.records.putRecord(patient: "Patient/j", recordId: "obs", content: observation("j"))
        let sizeBefore = try f.ledger.size
        let records = f.records
        await withTaskGroup(of: Void.self) { group in
            for t in 0..<8 {
                group.addTask {
                    for _ in 0..<25 { _ = try? records.read(patient: "Patient/j", recordId: "obs", as: .custodian("c\(t)")) }
                }
            }
        }
        #expect(try f.ledger.size == sizeBefore + 200)
        #expect(try f.records.auditTrail(patient: "Patient/j").count == 200)
    }

    /// Single reads from eight threads of their own (more than the cores, as servers run
    /// them) share commits: events queued while a commit runs go together into the next.
    /// The first commit is held open until the other seven threads have queued, so the
    /// sharing is certain and not left to the scheduler.
    @Test func concurrentSingleReadsShareCommits() throws {
        let f = try PatientFixture("sharedcommits")
        try f.records.addPatient(externalId: "Patient/g")
        try f.records.putRecord(patient: "Patient/g", recordId: "obs", content: observation("g"))
        let sizeBefore = try f.ledger.size
        let commitsBefore = f.records.auditCommitter.commits
        let records = f.records
        let committer = f.records.auditCommitter!
        let held = FailureCount()
        let heldLongEnough = FailureCount()
        committer.beforeAppend = {
            // Only the first commit waits; the others run as they come.
            held.add()
            guard held.value == 1 else { return }
            let deadline = Date().addingTimeInterval(60)
            while committer.queuedEvents < 7 && Date() < deadline { usleep(1000) }
            if committer.queuedEvents >= 7 { heldLongEnough.add() }
        }
        defer { committer.beforeAppend = nil }
        let done = DispatchGroup()
        let failures = FailureCount()
        for t in 0..<8 {
            done.enter()
            Thread.detachNewThread {
                for _ in 0..<25 where (try? records.read(patient: "Patient/g", recordId: "obs", as: .custodian("c\(t)"))) == nil {
                    failures.add()
                }
                done.leave()
            }
        }
        done.wait()
        #expect(failures.value == 0)
        #expect(try f.ledger.size == sizeBefore + 200)
        let commits = f.records.auditCommitter.commits - commitsBefore
        #expect(heldLongEnough.value == 1, "the other threads never queued behind the first commit")
        // The seven events queued behind the first commit go in one commit: at most 194.
        #expect(commits <= 194, "200 reads from 8 threads took \(commits) commits")
        // Every read's event is in the log and the patient's disclosure index.
        #expect(try f.records.auditTrail(patient: "Patient/g").count == 200)
    }

    /// X25519 grants carry the data key sealed to the grantee, who opens exported boxes
    /// offline; revoking such a grant starts a key epoch the revoked grantee never receives.
    @Test func sealedKeysLetGranteesDecryptOfflineAndRevocationRotates() throws {
        let f = try PatientFixture("sealed")
        let p = "Patient/s"
        try f.records.addPatient(externalId: p)
        try f.records.putRecord(patient: p, recordId: "obs-1", content: observation("epoch-one"))
        let (a, b) = (try X25519PrivateKey(), try X25519PrivateKey())
        let later = Date(timeIntervalSince1970: f.now + 3600)
        for (name, key) in [("dr-a", a), ("dr-b", b)] {
            try f.records.grant(patient: p, to: name, granteeKey: try Ed25519PrivateKey().publicKey,
                                granteeEncryptionKey: key.publicKey, notAfter: later)
        }
        try f.records.grant(patient: p, to: "dr-c", granteeKey: try Ed25519PrivateKey().publicKey, notAfter: later)
        #expect(try f.records.sealedKeys(patient: p, grantee: "dr-c").isEmpty)
        let sealedA = try #require(try f.records.sealedKeys(patient: p, grantee: "dr-a").first)
        #expect(sealedA.epoch == 1)
        let keyA1 = try sealedA.open(with: a)
        #expect(throws: LedgerError(.badSignature, "")) { try sealedA.open(with: b) }
        var flipped = sealedA.sealed
        flipped[40] ^= 1
        #expect(throws: LedgerError(.badSignature, "")) {
            try SealedPatientKey(pseudonym: sealedA.pseudonym, grantee: "dr-a", epoch: 1, sealed: flipped).open(with: a)
        }
        #expect(throws: LedgerError(.badSignature, "")) {  // bound to its grantee and epoch
            try SealedPatientKey(pseudonym: sealedA.pseudonym, grantee: "dr-b", epoch: 1, sealed: sealedA.sealed).open(with: a)
        }
        #expect(throws: LedgerError(.badSignature, "")) {
            try SealedPatientKey(pseudonym: sealedA.pseudonym, grantee: "dr-a", epoch: 2, sealed: sealedA.sealed).open(with: a)
        }

        // Revoking dr-c (no key shared) starts no epoch; revoking dr-a does.
        let sizeBefore = try f.ledger.size
        try f.records.revoke(patient: p, grantee: "dr-c")
        try f.records.revoke(patient: p, grantee: "dr-a")
        let revokeEntries = try (sizeBefore..<(try f.ledger.size)).map { i in
            try JSONSerialization.jsonObject(with: Data(try LedgerEntry(decoding: try f.ledger.rawEntry(at: i).bytes).payload)) as! [String: Any]
        }
        #expect(revokeEntries.map { $0["key_epoch"] as? Int } == [nil, 2])
        try f.records.putRecord(patient: p, recordId: "obs-2", content: observation("epoch-two"))
        #expect(try f.records.sealedKeys(patient: p, grantee: "dr-a").map(\.epoch) == [1])
        let keysB = try f.records.sealedKeys(patient: p, grantee: "dr-b")
        #expect(keysB.map(\.epoch) == [1, 2])
        let keyB2 = try keysB[1].open(with: b)

        // Open each exported box offline with the sealed keys of its epoch.
        let export = try f.records.export(patient: p, as: .custodian("records-office"))
        let proof = try JSONSerialization.jsonObject(with: export.proof) as! [String: Any]
        var opened: [String: String] = [:]
        for item in proof["records"] as! [[String: Any]] {
            let entry = try LedgerEntry(decoding: Base64.decode(item["entry"] as! String)!)
            let payload = try JSONSerialization.jsonObject(with: Data(entry.payload)) as! [String: Any]
            let box = Base64.decode(item["box"] as! String)!
            let (pseudonym, record) = (Hash(hex: payload["patient"] as! String)!, Hash(hex: payload["record"] as! String)!)
            let version = UInt32(payload["version"] as! Int)
            let epoch = payload["key_epoch"] as! Int
            let right = epoch == 1 ? keyA1 : keyB2
            let wrong = epoch == 1 ? keyB2 : keyA1
            let content = try PatientRecords.openRecordBox(box, dataKey: right, pseudonym: pseudonym, recordHash: record, version: version)
            opened[content.recordId] = String(decoding: content.content, as: UTF8.self)
            #expect(throws: LedgerError(.badSignature, "")) {
                try PatientRecords.openRecordBox(box, dataKey: wrong, pseudonym: pseudonym, recordHash: record, version: version)
            }
        }
        #expect(opened["obs-1"]?.contains("epoch-one") == true && opened["obs-2"]?.contains("epoch-two") == true)
        // The ledger itself reads across epochs; erasure re-wraps and then destroys every epoch.
        #expect(try f.records.list(patient: p, as: .custodian("c")).count == 2)
        try f.records.addPatient(externalId: "Patient/other")
        try f.records.erase(patient: "Patient/other")
        #expect(try f.records.read(patient: p, recordId: "obs-1", as: .grantee("dr-b")).content == observation("epoch-one"))
        #expect(try f.records.read(patient: p, recordId: "obs-2", as: .custodian("c")).content == observation("epoch-two"))
        try f.records.erase(patient: p)
        let files = try f.allFileBytes()
        for key in [keyA1, keyB2] { #expect(!contains(files, key.withUnsafeBytes { Array($0) })) }
        #expect(throws: LedgerError(.erased, "")) { try f.records.read(patient: p, recordId: "obs-2", as: .custodian("c")) }
    }

    /// A batch read returns what single reads would, one audit entry per request in one
    /// commit, refusals included and in request order.
    @Test func batchReadsAuditEveryRequestInOneCommit() throws {
        let f = try PatientFixture("batchread")
        try f.records.addPatients([("Patient/a", nil), ("Patient/b", nil)])
        try f.records.putRecord(patient: "Patient/a", recordId: "obs", content: observation("a1"))
        try f.records.putRecord(patient: "Patient/a", recordId: "obs", content: observation("a2"))
        try f.records.putRecord(patient: "Patient/a", recordId: "cond", content: Array(#"{"resourceType":"Condition"}"#.utf8))
        try f.records.putRecord(patient: "Patient/b", recordId: "obs", content: observation("b1"))
        try f.records.grant(patient: "Patient/a", to: "dr", granteeKey: try Ed25519PrivateKey().publicKey,
                            scope: GrantScope(resourceTypes: ["Observation"]), notAfter: Date(timeIntervalSince1970: f.now + 60))
        let requests: [PatientRecords.ReadRequest] = [
            .init(patient: "Patient/a", recordId: "obs"), .init(patient: "Patient/a", recordId: "obs", version: 1),
            .init(patient: "Patient/a", recordId: "cond"), .init(patient: "Patient/b", recordId: "obs"),
            .init(patient: "Patient/a", recordId: "missing"), .init(patient: "Patient/nobody", recordId: "obs"),
        ]
        let sizeBefore = try f.ledger.size
        let results = try f.records.readRecords(requests, as: .grantee("dr"), purpose: "treatment")
        #expect(try f.ledger.size == sizeBefore + UInt64(requests.count))
        #expect(try String(decoding: results[0].get().content, as: UTF8.self).contains("a2"))
        #expect(try results[1].get().version == 1 && String(decoding: results[1].get().content, as: UTF8.self).contains("a1"))
        let codes = results.map { result -> String in
            switch result {
            case .success: return "ok"
            case .failure(let error): return error.code.description
            }
        }
        #expect(codes == ["ok", "ok", "accessDenied", "accessDenied", "recordNotFound", "patientNotFound"])
        // The audit entries of patient a, in request order, carry each outcome and version read.
        let trail = try auditEvents(f, "Patient/a").suffix(4)
        #expect(trail.map { $0["outcome"] as? String } == ["success", "success", "refused", "refused"])
        #expect(trail.map { $0["version"] as? Int } == [2, 1, 1, nil])
        #expect(try auditEvents(f, "Patient/b").last?["outcome"] as? String == "refused")
        // Single reads agree with the batch.
        #expect(try f.records.read(patient: "Patient/a", recordId: "obs", as: .grantee("dr")).content == results[0].get().content)
        #expect(throws: LedgerError(.accessDenied, "")) { try f.records.read(patient: "Patient/a", recordId: "cond", as: .grantee("dr")) }
    }

    /// A put batch large enough to be sealed on two threads numbers the versions of a record in
    /// input order, across the two halves, and every version reads back.
    @Test func largePutBatchesNumberVersionsInInputOrder() throws {
        let f = try PatientFixture("put-large")
        try f.records.addPatients([("Patient/a", nil), ("Patient/b", nil)])
        // 700 inputs over 10 records, the same records in both halves of the batch.
        let inputs = (0..<700).map { i in
            PatientRecords.RecordInput(patient: i % 3 == 0 ? "Patient/b" : "Patient/a", recordId: "obs-\(i % 10)", content: observation("v\(i)"))
        }
        let infos = try f.records.putRecords(inputs)
        var seen: [String: UInt32] = [:]
        for (input, info) in zip(inputs, infos) {
            let slot = input.patient + "|" + input.recordId
            #expect(info.version == (seen[slot] ?? 0) + 1, "\(slot)")
            seen[slot] = info.version
        }
        for (input, info) in zip(inputs, infos).filter({ $0.1.version % 17 == 1 }) {
            let read = try f.records.read(patient: input.patient, recordId: input.recordId, version: info.version, as: .custodian("c"))
            #expect(read.content == input.content && read.index == info.index)
        }
        #expect(try f.ledger.verify().isValid)
    }

    /// A put chooses versions in a read snapshot; a commit that lands before its write (another
    /// process's) makes it check them again: a version written there is a conflict, an
    /// unrelated commit is not, and a conflicting put writes nothing.
    @Test func putsCheckVersionsAgainWhenACommitCameBetween() throws {
        let f = try PatientFixture("put-conflict")
        let records = f.records
        try records.addPatient(externalId: "Patient/1")
        let inputs = (0..<300).map { PatientRecords.RecordInput(patient: "Patient/1", recordId: "obs-\($0)", content: observation("m\($0)")) }
        try records.putRecords(inputs)
        // Unrelated commits (three audited reads of this layer, each its own audit commit) in
        // between: the versions still hold, and are not checked again (audit commits write no
        // record or patient state).
        records.afterPutSnapshot = {
            for id in ["obs-1", "obs-2", "obs-3"] { _ = try records.read(patient: "Patient/1", recordId: id, as: .custodian("test")) }
        }
        let (rechecks, sizeBeforeSecond) = (records.versionRechecks, try f.ledger.size)
        let second = try records.putRecords(inputs)
        #expect(second.allSatisfy { $0.version == 2 })
        #expect(try f.ledger.size == sizeBeforeSecond + 3 + 300)
        #expect(records.versionRechecks == rechecks)
        // An audited read of another layer on the same ledger is not one of this layer's
        // commits: the put checks, and its versions still hold.
        let reader = try PatientRecords(ledger: f.ledger, masterKey: try MasterKeyFile(path: f.keyPath))
        records.afterPutSnapshot = { _ = try reader.read(patient: "Patient/1", recordId: "obs-1", as: .custodian("test")) }
        let checked = try records.putRecords(Array(inputs[0..<10]))
        #expect(checked.allSatisfy { $0.version == 3 })
        #expect(records.versionRechecks == rechecks + 1)
        // Version 3 of obs-7 stored in between by another layer on the same ledger (as another
        // process's would), whose put then folds every staged row into `pl.records`: the put
        // finds the version among the folded rows and is refused.
        let sizeBefore = try f.ledger.size
        let folding = try PatientRecords(ledger: f.ledger, masterKey: try MasterKeyFile(path: f.keyPath))
        folding.minimumRecordFold = 1
        records.afterPutSnapshot = { try folding.putRecord(patient: "Patient/1", recordId: "obs-7", content: observation("folded")) }
        let error = #expect(throws: LedgerError.self) { try records.putRecords(inputs) }
        #expect(error?.code == .conflict)
        records.afterPutSnapshot = nil
        #expect(try f.ledger.size == sizeBefore + 1)
        #expect(try f.ledger.environment.read { try $0.count(records.recordTables.staged!) } == 0)
        #expect(try records.read(patient: "Patient/1", recordId: "obs-7", as: .custodian("test")).content == observation("folded"))
        let latest = try records.read(patient: "Patient/1", recordId: "obs-8", as: .custodian("test"))
        #expect(latest.version == 3)
        #expect(try records.read(patient: "Patient/1", recordId: "obs-10", as: .custodian("test")).version == 2)
        // Another layer on the same ledger (its own staged index, as another process has)
        // stores version 3 of obs-9 in between: refused too, and that version stays.
        let other = try PatientRecords(ledger: f.ledger, masterKey: try MasterKeyFile(path: f.keyPath))
        // Audited reads of this layer around it do not hide it.
        records.afterPutSnapshot = {
            _ = try records.read(patient: "Patient/1", recordId: "obs-1", as: .custodian("test"))
            try other.putRecord(patient: "Patient/1", recordId: "obs-9", content: observation("other"))
            _ = try records.read(patient: "Patient/1", recordId: "obs-2", as: .custodian("test"))
        }
        let third = #expect(throws: LedgerError.self) { try records.putRecords(inputs) }
        #expect(third?.code == .conflict)
        #expect(records.versionRechecks >= rechecks + 3)
        records.afterPutSnapshot = nil
        #expect(try records.read(patient: "Patient/1", recordId: "obs-9", as: .custodian("test")).content == observation("other"))
        #expect(try other.read(patient: "Patient/1", recordId: "obs-8", as: .custodian("test")).version == 3)
        // Once the snapshot sees it, the next put takes version 5 of obs-9 (whose version 4
        // the other layer stored) and the next version elsewhere.
        let fourth = try records.putRecords(inputs)
        #expect(fourth[9].version == 5 && fourth[8].version == 4 && fourth[10].version == 3)
        #expect(try other.read(patient: "Patient/1", recordId: "obs-9", as: .custodian("test")).content == inputs[9].content)
    }

    /// The ids of a layer's own audit commits: a range counts as its own only when every id in
    /// it was inserted, and the oldest ids are forgotten (read as not its own) past capacity.
    @Test func commitIDsTellOwnRangesOnly() {
        let ids = CommitIDs(capacity: 8)
        #expect(ids.containsAll(5..<5))
        for id: UInt64 in [3, 4, 5, 7] { ids.insert(id) }
        #expect(ids.containsAll(3..<6))
        #expect(!ids.containsAll(3..<8))  // 6 is another writer's
        #expect(!ids.containsAll(2..<4))
        #expect(!ids.containsAll(0..<9))  // longer than the capacity
        for id: UInt64 in 8...30 { ids.insert(id) }
        #expect(ids.containsAll(23..<31))
        #expect(!ids.containsAll(3..<6))  // forgotten
    }

    /// Puts from several threads, all writing the same records: every put succeeds, and each
    /// record's versions are 1...n with none written twice.
    @Test func concurrentPutsOfTheSameRecordsAllLand() throws {
        let f = try PatientFixture("put-concurrent")
        let records = f.records
        try records.addPatients((0..<20).map { ("Patient/\($0)", nil) })
        let threads = 4, rounds = 5
        let inputs = (0..<300).map { i in
            PatientRecords.RecordInput(patient: "Patient/\(i % 20)", recordId: "obs-\(i / 20)", content: observation("c\(i)"))
        }
        let lock = NSLock()
        nonisolated(unsafe) var all: [[RecordVersionInfo]] = [], failures: [String] = []
        DispatchQueue.concurrentPerform(iterations: threads) { _ in
            for _ in 0..<rounds {
                do {
                    let put = try records.putRecords(inputs)
                    lock.withLock { all.append(put) }
                } catch {
                    lock.withLock { failures.append("\(error)") }
                }
            }
        }
        #expect(failures == [])
        #expect(all.count == threads * rounds)
        for (i, input) in inputs.enumerated() {
            let versions = all.map { $0[i].version }.sorted()
            #expect(versions == Array(1...UInt32(threads * rounds)), "\(input.patient) \(input.recordId)")
        }
        let indexes = all.flatMap { $0.map(\.index) }
        #expect(Set(indexes).count == indexes.count)
        let history = try records.history(patient: "Patient/3", recordId: "obs-2", as: .custodian("test"))
        #expect(history.map(\.version) == Array(1...UInt32(threads * rounds)))
        #expect(try f.ledger.verify().isValid)
    }

    /// Patient ids are names by their bytes: two canonically equivalent spellings are two
    /// patients, also when one batch reads both (Swift's `String ==` would equate them).
    @Test func aBatchTellsCanonicallyEquivalentIdsApart() throws {
        let f = try PatientFixture("equivalent-ids")
        let precomposed = "Patient/Jos\u{E9}", decomposed = "Patient/Jose\u{301}"
        #expect(precomposed == decomposed && Array(precomposed.utf8) != Array(decomposed.utf8))
        for patient in [precomposed, decomposed] {
            try f.records.addPatient(externalId: patient)
            try f.records.putRecord(patient: patient, recordId: "obs", content: observation(patient))
        }
        let results = try f.records.readRecords([.init(patient: precomposed, recordId: "obs"), .init(patient: decomposed, recordId: "obs"),
                                                 .init(patient: precomposed, recordId: "obs")], as: .custodian("ops"))
        let contents = try results.map { try $0.get().content }
        #expect(contents == [observation(precomposed), observation(decomposed), observation(precomposed)])
    }

    /// Audit rows are staged in log order and folded into the patient-ordered index in bulk:
    /// every patient's trail lists exactly its events in log order before, across and after
    /// folds and an erasure, and verification finds every event indexed once.
    @Test func auditRowsFoldWithoutLosingOrDuplicatingEvents() throws {
        let f = try PatientFixture("audit-fold")
        let records = f.records
        records.minimumAuditFold = 40
        let patients = (0..<3).map { "Patient/\($0)" }
        for patient in patients {
            try records.addPatient(externalId: patient)
            try records.putRecord(patient: patient, recordId: "obs", content: observation(patient))
        }
        var rng = SplitMix64(seed: 0xf01d)
        var folds = 0
        for round in 0..<40 {
            // An erasure midway: the patient's later reads are refused, and audited as such.
            if round == 20 { try records.erase(patient: patients[2]) }
            let requests = (0..<Int(rng.next() % 12 + 1)).map { _ in
                PatientRecords.ReadRequest(patient: patients[Int(rng.next() % 3)], recordId: "obs")
            }
            _ = try records.readRecords(requests, as: .custodian("ops"))
            let (folded, staged) = try f.ledger.environment.read { txn in
                (try txn.unsafeView.count(records.audits), try txn.unsafeView.count(try #require(records.auditRecent)))
            }
            if staged < requests.count { folds += 1 }
            #expect(staged < max(40, folded / 8))
            // Each trail against the log itself: the audit entries naming that patient.
            if round % 7 == 6 {
                for patient in patients {
                    let p = try records.pseudonym(of: patient).hex
                    var expected: [UInt64] = []
                    for index in 0..<(try f.ledger.size) {
                        let entry = try f.ledger.entry(at: index)
                        if entry.key.isEmpty, let event = PatientPayload.decode(entry.payload), event["type"] as? String == "audit",
                           event["patient"] as? String == p { expected.append(index) }
                    }
                    #expect(try records.auditTrail(patient: patient).map(\.index) == expected)
                }
            }
        }
        #expect(folds >= 3)
        let problems = try f.verificationProblems()
        #expect(problems.isEmpty, "\(problems)")
    }

    /// A batch large enough to be read on two threads gives each request its own result and
    /// audit entry, in request order, as reading them one by one would.
    @Test func largeBatchReadsMatchSingleReadsInOrder() throws {
        let f = try PatientFixture("batchread-large")
        let patients = (0..<40).map { "Patient/\($0)" }
        try f.records.addPatients(patients.map { ($0, nil) })
        try f.records.putRecords(patients.enumerated().flatMap { i, p in
            (0..<3).map { PatientRecords.RecordInput(patient: p, recordId: "obs-\($0)", content: observation("\(i)-\($0)")) }
        })
        try f.records.grant(patient: "Patient/7", to: "dr", granteeKey: try Ed25519PrivateKey().publicKey,
                            scope: GrantScope(resourceTypes: ["Observation"]), notAfter: Date(timeIntervalSince1970: f.now + 60))
        var rng = SplitMix64(seed: 0xba7c4)
        let requests = (0..<(PatientRecords.parallelReadThreshold * 2 + 37)).map { _ -> PatientRecords.ReadRequest in
            let p = Int(rng.next() % 42)  // 40 and 41 do not exist
            return .init(patient: "Patient/\(p)", recordId: "obs-\(rng.next() % 4)")  // obs-3 does not exist
        }
        let before = try f.ledger.size
        let results = try f.records.readRecords(requests, as: .grantee("dr"))
        #expect(results.count == requests.count)
        #expect(try f.ledger.size == before + UInt64(requests.count), "one audit entry per request")
        for (request, result) in zip(requests, results) {
            let single = Result { try f.records.read(patient: request.patient, recordId: request.recordId, as: .grantee("dr")) }
            switch (result, single) {
            case (.success(let a), .success(let b)): #expect(a.content == b.content && a.version == b.version)
            case (.failure(let a), .failure(let b as LedgerError)): #expect(a.code == b.code)
            default: Issue.record("\(request): batch \(result), single \(single)")
            }
        }
        // The batch's audit entries follow the request order, each naming the accessor.
        let payloads = try (before..<(before + UInt64(requests.count))).map { i in
            try LedgerEntry(decoding: try f.ledger.rawEntry(at: i).bytes).payload
        }
        for (i, (request, payload)) in zip(requests, payloads).enumerated() {
            let event = try #require(PatientPayload.decode(payload))
            let p = try f.records.pseudonym(of: request.patient)
            #expect(event["patient"] as? String == p.hex, "entry \(i)")
            #expect(event["agent"] as? String == "dr" && event["role"] as? String == "grantee" && event["action"] as? String == "read")
            #expect(event["break_glass"] as? Bool == false && event["purpose"] as? String == "treatment")
            #expect(event["outcome"] as? String == ((try? results[i].get()) == nil ? "refused" : "success"))
            if let read = try? results[i].get() { #expect(event["version"] as? Int == Int(read.version), "entry \(i)") }
        }
    }
}


@Suite struct PatientPayloadTests {
    /// Proof documents written directly are the bytes `JSONEncoder` makes of their wire form
    /// (sorted keys, slashes not escaped), for every document type and keys with quotes,
    /// backslashes, slashes and non-ASCII characters; a key with control characters may be
    /// escaped otherwise (`\u000a` for `\n`), into the same JSON value. Each parses back to the same proof.
    @Test func proofDocumentsWrittenDirectlyMatchTheEncoder() throws {
        let path = ledgerPath("proof-json")
        defer { try? FileManager.default.removeItem(atPath: path) }
        let (ledger, _) = try Ledger.create(at: path, origin: "json.example/ledger", options: scratchOptions())
        let keys = ["plain", "with/slash", "quote\"d", "back\\slash", "é and 日本", "emoji 🩺", "tab\there", "line\nbreak", "\u{1}\u{1f}", "del\u{7f}"]
        for (i, key) in keys.enumerated() {
            try ledger.append([try LedgerEntry(set: key, payload: Array("v\(i)".utf8)), try LedgerEntry(payload: Array("u\(i)".utf8))])
        }
        let size = try ledger.size
        var documents: [(ProofDocument, hasControl: Bool)] = []
        for index in [0, 1, 7, size - 1] {
            let (proof, leaf, root) = try ledger.inclusionProof(index: index)
            documents.append((.inclusion(.init(proof: proof, leafHash: leaf, rootHash: root)), false))
        }
        for old in [1, 5, size - 1] as [UInt64] {
            let (proof, oldRoot, newRoot) = try ledger.consistencyProof(oldSize: old)
            documents.append((.consistency(.init(proof: proof, oldRoot: oldRoot, newRoot: newRoot)), false))
        }
        for key in keys + ["absent", "absent \"too\"\n"] {
            let (proof, mapRoot, treeSize) = try ledger.keyProof(key: key)
            documents.append((.key(.init(key: key, treeSize: treeSize, mapRoot: mapRoot, proof: proof)),
                              key.unicodeScalars.contains { $0.value < 0x20 }))
        }
        for asked in [keys.filter { !$0.unicodeScalars.contains { $0.value < 0x20 } } + ["absent"], keys] {
            let (proof, mapRoot, treeSize) = try ledger.keyProofs(keys: asked)
            documents.append((.keys(try .init(keys: asked, treeSize: treeSize, mapRoot: mapRoot, proof: proof)),
                              asked.contains { $0.unicodeScalars.contains { $0.value < 0x20 } }))
        }
        #expect(documents.contains { if case .key(let k) = $0.0 { k.proof.isInclusion } else { false } })
        #expect(documents.contains { if case .key(let k) = $0.0 { !k.proof.isInclusion } else { false } })
        for (document, hasControl) in documents {
            let direct = Data(document.jsonBytes()), encoded = try document.encodedWire()
            if hasControl {
                let a = try JSONSerialization.jsonObject(with: direct), b = try JSONSerialization.jsonObject(with: encoded)
                #expect(PatientExport.sameJSON(a, b), "\(String(decoding: direct, as: UTF8.self))")
            } else {
                #expect(direct == encoded, "\(String(decoding: direct, as: UTF8.self))\n\(String(decoding: encoded, as: UTF8.self))")
            }
            #expect(try ProofDocument(json: direct) == document)
            #expect(try document.jsonData() == direct)
        }
    }

    /// The export verifier's comparison of a Bundle resource with the decrypted record: the
    /// same JSON whatever the member order or spacing, and any other value, type or member
    /// set differs.
    @Test func exportResourceComparisonIsJSONEquality() throws {
        func parsed(_ text: String) throws -> Any { try JSONSerialization.jsonObject(with: Data(text.utf8), options: [.fragmentsAllowed]) }
        let base = #"{"a":1,"b":[true,null,"x",{"c":2.5}],"d":{"e":"é"}}"#
        for same in [base, #"{ "d" : {"e":"\u00e9"}, "b":[true,null,"x",{"c":2.5}], "a":1 }"#] {
            #expect(PatientExport.sameJSON(try parsed(base), try parsed(same)), "\(same)")
        }
        for differs in [
            #"{"a":2,"b":[true,null,"x",{"c":2.5}],"d":{"e":"é"}}"#,
            #"{"a":"1","b":[true,null,"x",{"c":2.5}],"d":{"e":"é"}}"#,
            #"{"a":1,"b":[null,true,"x",{"c":2.5}],"d":{"e":"é"}}"#,
            #"{"a":1,"b":[true,null,"x",{"c":2.5}],"d":{"e":"e"}}"#,
            #"{"a":1,"b":[true,null,"x",{"c":2.5},1],"d":{"e":"é"}}"#,
            #"{"a":1,"b":[true,null,"x",{"c":2.5}],"d":{"e":"é"},"f":null}"#,
            #"{"a":1,"b":[true,null,"x",{"c":2.5}]}"#,
            #"{"a":1,"b":[true,null,"x",{"c":"2.5"}],"d":{"e":"é"}}"#,
            #"{"a":1,"b":[true,null,"x",[]],"d":{"e":"é"}}"#,
            #"{"a":1,"b":[false,null,"x",{"c":2.5}],"d":{"e":"é"}}"#,
            #"{"a":1,"b":"[true,null,\"x\",{\"c\":2.5}]","d":{"e":"é"}}"#,
        ] {
            #expect(!PatientExport.sameJSON(try parsed(base), try parsed(differs)), "\(differs)")
            #expect(!PatientExport.sameJSON(try parsed(differs), try parsed(base)), "\(differs)")
        }
        // A re-normalized spelling (NFD for NFC) is another string, as a value and as a name.
        #expect(!PatientExport.sameJSON(try parsed("[\"\u{e9}\"]"), try parsed("[\"e\u{301}\"]")))
        #expect(!PatientExport.sameJSON(try parsed("{\"\u{e9}\":1}"), try parsed("{\"e\u{301}\":1}")))
        #expect(!PatientExport.sameJSON(try parsed("null"), try parsed("0")))
        #expect(!PatientExport.sameJSON(try parsed(#""1""#), try parsed("1")))
        // Booleans are themselves, never numbers; numbers compare by value.
        for (x, y, equal) in [("true", "true", true), ("false", "false", true), ("true", "false", false), ("true", "1", false),
                              ("false", "0", false), ("1", "1.0", true), ("1e2", "100", true), ("2.5", "2.50", true), ("2.5", "2.4", false),
                              // Exact beyond 2^53, where a double holds every other integer only.
                              ("9007199254740993", "9007199254740992.0", false), ("9007199254740993", "9007199254740992", false),
                              ("9007199254740993", "9007199254740993.0", true),
                              ("18446744073709551615", "18446744073709551615.0", true), ("18446744073709551615", "18446744073709551614", false),
                              ("-9223372036854775807", "-9223372036854775807.0", true), ("-9223372036854775807", "9223372036854775807", false),
                              ("9007199254740992", "9007199254740992.0", true), ("9007199254740993", "9.007199254740992e15", false),
                              ("0.1", "0.10", true), ("0.1", "0.1000000000000000055511151231257827", false),
                              ("-0", "0", true), ("-0.0", "0", true), ("-1", "1", false), ("-1.0", "-1", true)] {
            #expect(PatientExport.sameJSON(try parsed("[\(x)]"), try parsed("[\(y)]")) == equal, "\(x) \(y)")
            #expect(PatientExport.sameJSON(try parsed(#"{"k":\#(y)}"#), try parsed(#"{"k":\#(x)}"#)) == equal, "\(y) \(x)")
        }
    }

    /// A record with booleans, nulls and numbers of every spelling exports and verifies.
    @Test func anExportOfRecordsWithBooleansVerifies() throws {
        let f = try PatientFixture("export-booleans")
        try f.records.addPatient(externalId: "Patient/b")
        let content = Array(#"{"resourceType":"Patient","active":true,"deceasedBoolean":false,"multipleBirthInteger":2,"x":[1.5e1,0,null,true]}"#.utf8)
        try f.records.putRecord(patient: "Patient/b", recordId: "pat", content: content)
        let export = try f.records.export(patient: "Patient/b", as: .custodian("c"))
        #expect(try PatientExport.verify(bundle: export.bundle, proof: export.proof, verifier: try NoteVerifier(parsing: f.verifierKey)) == 1)
        // The same resource with a boolean turned into a number does not verify.
        let altered = Data(String(decoding: export.bundle, as: UTF8.self).replacingOccurrences(of: #""active":true"#, with: #""active":1"#).utf8)
        #expect(altered != export.bundle)
        #expect(throws: MerkleLogError.self) {
            try PatientExport.verify(bundle: altered, proof: export.proof, verifier: try NoteVerifier(parsing: f.verifierKey))
        }
    }

    /// Payload JSON parses back (Foundation as the independent parser) with keys sorted bytewise.
    @Test func payloadJSONRoundTrips() throws {
        let f = try PatientFixture("payload")
        try f.records.addPatient(externalId: "Patient/\"quoted\"\\\n")
        try f.records.putRecord(patient: "Patient/\"quoted\"\\\n", recordId: "r", content: observation("x"))
        try f.records.grant(patient: "Patient/\"quoted\"\\\n", to: "dr \"q\"\\", granteeKey: try Ed25519PrivateKey().publicKey,
                            scope: GrantScope(resourceTypes: ["Observation", "Condition"]), notAfter: Date(timeIntervalSince1970: f.now + 60))
        _ = try? f.records.read(patient: "Patient/\"quoted\"\\\n", recordId: "r", as: .grantee("dr \"q\"\\"), breakGlass: "why \"now\"")
        try f.records.revoke(patient: "Patient/\"quoted\"\\\n", grantee: "dr \"q\"\\")
        for i in 0..<(try f.ledger.size) {
            let entry = try LedgerEntry(decoding: try f.ledger.rawEntry(at: i).bytes)
            let object = try #require(try JSONSerialization.jsonObject(with: Data(entry.payload)) as? [String: Any])
            #expect(object["v"] as? Int == 1)
            let keys = String(decoding: entry.payload, as: UTF8.self)
            #expect(keys.hasPrefix("{\""))
            if object["type"] as? String == "grant" {
                #expect(object["grantee"] as? String == "dr \"q\"\\")
                #expect(object["resource_types"] as? [String] == ["Condition", "Observation"])
            }
            if object["type"] as? String == "audit" {
                #expect(object["reason"] as? String == "why \"now\"" && object["break_glass"] as? Bool == true)
            }
            if object["type"] as? String == "revoke" { #expect(object["grantee"] as? String == "dr \"q\"\\") }
        }
        let stored = try f.records.grants(patient: "Patient/\"quoted\"\\\n")
        #expect(stored.count == 1 && stored[0]["revoked_at"] != nil && stored[0]["v"] as? Int == 1)
    }
}
