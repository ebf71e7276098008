import ArgumentParser
import Foundation
import LedgerCrypto
import MedLedger
import MerkleLog

/// The ledger directory and the master key file every patient-layer command needs.
struct PatientLedgerOptions: ParsableArguments {
    @Argument(help: "The ledger directory.")
    var directory: String

    @Option(help: "The master key file (default: $MEDLEDGER_MASTER_KEY).")
    var masterKey: String?

    func open() throws -> PatientRecords {
        guard let path = masterKey ?? ProcessInfo.processInfo.environment["MEDLEDGER_MASTER_KEY"] else {
            throw CLIError(.usage, "patient commands need --master-key FILE (or MEDLEDGER_MASTER_KEY)")
        }
        let ledger = try Ledger(path: directory)
        return try PatientRecords(ledger: ledger, masterKey: try MasterKeyFile(path: path))
    }
}

/// Who reads: `--as ID` with `--role`.
struct AccessorOptions: ParsableArguments {
    @Option(name: .customLong("as"), help: "The accessor's id (a grantee or custodian id, or the patient's own id).")
    var accessor: String

    @Option(help: "The accessor's role: grantee, custodian or patient.")
    var role: String = "grantee"

    @Option(help: "The purpose of use written in the audit entry.")
    var purpose: String = "treatment"

    @Option(help: "Read without a valid grant, stating why; flagged for review in `audit --break-glass`.")
    var breakGlass: String?

    func make() throws -> Accessor { Accessor(id: accessor, role: try parseRole(role)) }
}

/// The `--role` option's value as a role.
func parseRole(_ text: String) throws -> Accessor.Role {
    guard let role = Accessor.Role(rawValue: text) else { throw CLIError(.usage, "--role must be grantee, custodian or patient") }
    return role
}

/// A 32-byte public key given as base64 in `option`; `kind` names the algorithm in the error.
func parsePublicKey<Key>(_ text: String, option: String, kind: String, _ make: ([UInt8]) throws -> Key) throws -> Key {
    guard let raw = Base64.decode(text), let key = try? make(raw) else {
        throw CLIError(.usage, "\(option) must be base64 of a 32-byte \(kind) public key")
    }
    return key
}

func versionJSON(_ v: RecordVersionInfo) -> [String: Any] {
    ["record": v.recordId, "version": Int(v.version), "index": v.index, "ciphertext_hash": v.ciphertextHash.hex, "media_type": v.mediaType]
}

func printJSONArray(_ objects: [[String: Any]]) throws {
    let data = try JSONSerialization.data(withJSONObject: objects, options: [.sortedKeys, .withoutEscapingSlashes])
    writeStdout(data)
    writeStdout(Data("\n".utf8))
}

struct PatientCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "patient", abstract: "Register patients.",
                                                    subcommands: [Add.self])

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Register a patient by external id; prints {\"pseudonym\",\"index\"}. The log holds only the pseudonym.")
        @OptionGroup var ledger: PatientLedgerOptions
        @Option(help: "The patient's external id (e.g. a FHIR Patient id).") var id: String
        @Option(help: "The patient's Ed25519 public key (base64 of 32 bytes): their grants must then be signed by it.")
        var signingKey: String?

        func run() throws {
            let records = try ledger.open()
            let key = try signingKey.map { try parsePublicKey($0, option: "--signing-key", kind: "Ed25519", Ed25519PublicKey.init) }
            let (pseudonym, index) = try records.addPatient(externalId: id, signingKey: key)
            try printJSON(["pseudonym": pseudonym.hex, "index": index])
        }
    }
}

struct RecordCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "record", abstract: "Store and read encrypted records.",
                                                    subcommands: [Put.self, Get.self, History.self, List.self])

    struct Put: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Store a new version of a record (FHIR R4 JSON unless --type says otherwise); prints the version's JSON.")
        @OptionGroup var ledger: PatientLedgerOptions
        @Option(help: "The patient's external id.") var patient: String
        @Option(help: "The record id.") var record: String
        @Option(help: "The media type.") var type: String = "application/fhir+json"
        @Argument(help: "The content file; stdin when absent or '-'.") var file: String?

        func run() throws {
            let records = try ledger.open()
            var content = [UInt8](try readInput(file, limit: PatientRecords.maxContentBytes + 1))
            defer { secureZero(&content) }
            try printJSON(versionJSON(try records.putRecord(patient: patient, recordId: record, content: content, mediaType: type)))
        }
    }

    struct Get: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Read a record version as an accessor (audited); writes the content to stdout, or JSON with --json.")
        @OptionGroup var ledger: PatientLedgerOptions
        @Option(help: "The patient's external id.") var patient: String
        @Option(help: "The record id.") var record: String
        @Option(help: "The version (default: the latest).") var version: UInt32?
        @OptionGroup var accessor: AccessorOptions
        @Flag(help: "Print {\"record\",\"version\",\"index\",\"media_type\",\"resource_type\",\"content_base64\"}.") var json = false

        func run() throws {
            let records = try ledger.open()
            let content = try records.read(patient: patient, recordId: record, version: version, as: try accessor.make(),
                                           purpose: accessor.purpose, breakGlass: accessor.breakGlass)
            if json {
                var out: [String: Any] = ["record": content.recordId, "version": Int(content.version), "index": content.index,
                                          "media_type": content.mediaType, "content_base64": Base64.encode(content.content)]
                if let type = content.resourceType { out["resource_type"] = type }
                try printJSON(out)
            } else {
                writeStdout(Data(content.content))
            }
        }
    }

    struct History: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List a record's versions (audited).")
        @OptionGroup var ledger: PatientLedgerOptions
        @Option(help: "The patient's external id.") var patient: String
        @Option(help: "The record id.") var record: String
        @OptionGroup var accessor: AccessorOptions

        func run() throws {
            let records = try ledger.open()
            try printJSONArray(try records.history(patient: patient, recordId: record, as: try accessor.make(), purpose: accessor.purpose).map(versionJSON))
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List a patient's records, latest versions (audited).")
        @OptionGroup var ledger: PatientLedgerOptions
        @Option(help: "The patient's external id.") var patient: String
        @OptionGroup var accessor: AccessorOptions

        func run() throws {
            let records = try ledger.open()
            try printJSONArray(try records.list(patient: patient, as: try accessor.make(), purpose: accessor.purpose).map(versionJSON))
        }
    }
}

struct ReadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "read", abstract: "Read a record as a grantee (same as `record get --role grantee`).")
    @OptionGroup var ledger: PatientLedgerOptions
    @Option(help: "The patient's external id.") var patient: String
    @Option(help: "The record id.") var record: String
    @Option(help: "The version (default: the latest).") var version: UInt32?
    @Option(name: .customLong("as"), help: "The grantee id.") var grantee: String
    @Option(help: "The purpose of use.") var purpose: String = "treatment"
    @Option(help: "Read without a valid grant, stating why (flagged for review).") var breakGlass: String?

    func run() throws {
        let records = try ledger.open()
        let content = try records.read(patient: patient, recordId: record, version: version, as: .grantee(grantee),
                                       purpose: purpose, breakGlass: breakGlass)
        writeStdout(Data(content.content))
    }
}

/// Parses `2026-12-31T00:00:00Z` or `+N` days (from now).
func parseExpiry(_ text: String) throws -> Date {
    if text.hasPrefix("+"), let days = Double(text.dropFirst()), days > 0 { return Date().addingTimeInterval(days * 86_400) }
    if let date = ISO8601DateFormatter().date(from: text) { return date }
    throw CLIError(.usage, "--expires must be an ISO 8601 time (2026-12-31T00:00:00Z) or +DAYS")
}

struct GrantCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "grant", abstract: "Grant a grantee read access to a patient's records; prints the grant JSON.")
    @OptionGroup var ledger: PatientLedgerOptions
    @Option(help: "The patient's external id.") var patient: String
    @Option(help: "The grantee's id.") var grantee: String
    @Option(help: "The grantee's Ed25519 public key (base64 of 32 bytes).") var granteeKey: String
    @Option(help: "Comma-separated FHIR resource types the grant covers (default: all records).") var types: String?
    @Option(help: "Comma-separated record ids the grant covers.") var records: String?
    @Option(help: "Expiry: ISO 8601 time or +DAYS.") var expires: String
    @Option(help: "The patient's signature (base64) over the grant message, for self-custody patients.") var signature: String?
    @Option(help: "The issue time the signature covers (ISO 8601); required with --signature.") var issuedAt: String?
    @Option(help: "The grantee's X25519 public key (base64 of 32 bytes): share the patient's data key sealed to it.")
    var x25519: String?

    func run() throws {
        let store = try ledger.open()
        let key = try parsePublicKey(granteeKey, option: "--grantee-key", kind: "Ed25519", Ed25519PublicKey.init)
        let encryptionKey = try x25519.map { try parsePublicKey($0, option: "--x25519", kind: "X25519", X25519PublicKey.init) }
        func list(_ s: String?) -> [String] { s?.split(separator: ",").map { String($0) }.filter { !$0.isEmpty } ?? [] }
        let issued = try issuedAt.map { text -> Date in
            guard let d = ISO8601DateFormatter().date(from: text) else { throw CLIError(.usage, "--issued-at must be ISO 8601") }
            return d
        }
        let sig = try signature.map { text -> [UInt8] in
            guard let s = Base64.decode(text) else { throw CLIError(.usage, "--signature must be base64") }
            return s
        }
        let grant = try store.grant(patient: patient, to: grantee, granteeKey: key, granteeEncryptionKey: encryptionKey,
                                    scope: GrantScope(resourceTypes: list(types), recordIds: list(records)),
                                    notAfter: try parseExpiry(expires), issuedAt: issued, signature: sig)
        let sealed = try store.sealedKeys(patient: patient, grantee: grantee).map { key -> [String: Any] in
            ["epoch": key.epoch, "sealed_key": Base64.encode(key.sealed)]
        }
        try printJSON(["grantee": grant.grantee, "index": grant.index, "not_after": grant.notAfter,
                       "resource_types": grant.resourceTypes, "records": grant.recordHashes, "sealed_keys": sealed])
    }
}

struct RevokeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "revoke", abstract: "Revoke a grant at once; prints {\"index\"}.")
    @OptionGroup var ledger: PatientLedgerOptions
    @Option(help: "The patient's external id.") var patient: String
    @Option(help: "The grantee's id.") var grantee: String

    func run() throws {
        try printJSON(["index": try ledger.open().revoke(patient: patient, grantee: grantee)])
    }
}

struct AuditCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "List audit entries: a patient's accounting of disclosures (with inclusion proofs), or break-glass reads.",
        discussion: """
        With --patient: {"checkpoint":NOTE,"events":[{"index","event","inclusion"}]}, each inclusion proof \
        against the signed checkpoint. With --break-glass: {"events":[...]} of every break-glass read.
        """)
    @OptionGroup var ledger: PatientLedgerOptions
    @Option(help: "The patient's external id.") var patient: String?
    @Flag(help: "List break-glass reads for review.") var breakGlass = false

    func validate() throws {
        if (patient == nil) == !breakGlass { throw ValidationError("give exactly one of --patient and --break-glass") }
    }

    func run() throws {
        let store = try ledger.open()
        if breakGlass {
            try printJSON(["events": try store.breakGlassEvents().map { ["index": $0.index, "event": $0.event] as [String: Any] }])
            return
        }
        let trail = try store.auditTrail(patient: patient!)
        let (note, checkpoint) = try store.ledger.signedCheckpointAndState()
        var events: [[String: Any]] = []
        for record in trail where record.index < checkpoint.size {
            let (proof, leaf, root) = try store.ledger.inclusionProof(index: record.index, size: checkpoint.size)
            let document = try JSONSerialization.jsonObject(with: ProofDocument.inclusion(.init(proof: proof, leafHash: leaf, rootHash: root)).jsonData())
            events.append(["index": record.index, "event": record.event, "inclusion": document])
        }
        try printJSON(["checkpoint": note, "events": events])
    }
}

struct EraseCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "erase",
        abstract: "Erase a patient: destroy their data key (rotating the master key), delete their ciphertexts; proofs stay valid.")
    @OptionGroup var ledger: PatientLedgerOptions
    @Option(help: "The patient's external id.") var patient: String

    func run() throws {
        let report = try ledger.open().erase(patient: patient)
        if !report.masterKeyFileSettled {
            FileHandle.standardError.write(Data("warning: the master key file still holds the old generation; open the ledger read-write again to remove it\n".utf8))
        }
        try printJSON(["index": report.index, "record_versions_deleted": report.recordVersionsDeleted,
                       "grants_revoked": report.grantsRevoked, "master_key_generation": report.masterKeyGeneration,
                       "key_file_settled": report.masterKeyFileSettled])
    }
}

struct ExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Export a patient's current records as a FHIR R4 Bundle plus a proof bundle (check it with verify-proof --bundle).")
    @OptionGroup var ledger: PatientLedgerOptions
    @Option(help: "The patient's external id.") var patient: String
    @Option(help: "Where to write the FHIR Bundle JSON.") var bundle: String
    @Option(help: "Where to write the proof bundle JSON.") var proof: String
    @Option(name: .customLong("as"), help: "The accessor id (default: the patient).") var accessor: String?
    @Option(help: "The accessor's role (default: patient).") var role: String = "patient"

    func run() throws {
        let store = try ledger.open()
        let who = Accessor(id: accessor ?? patient, role: try parseRole(role))
        let export = try store.export(patient: patient, as: who)
        do {
            try export.bundle.write(to: URL(fileURLWithPath: bundle))
            try export.proof.write(to: URL(fileURLWithPath: proof))
        } catch {
            throw CLIError(.usage, "cannot write the export files: \(error.localizedDescription)")
        }
        let count = (try JSONSerialization.jsonObject(with: export.proof) as? [String: Any])?["records"] as? [Any]
        try printJSON(["bundle": bundle, "proof": proof, "records": count?.count ?? 0])
    }
}
