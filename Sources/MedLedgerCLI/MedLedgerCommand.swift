import ArgumentParser
import Foundation
import LMDBKit
import LedgerCrypto
import MedLedger
import MerkleLog
import SparseMerkle
#if canImport(Glibc)
import Glibc
#endif

@main
struct MedLedgerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "medledger",
        abstract: "A verifiable, append-only store for medical records.",
        discussion: """
        Machine output is JSON on stdout; messages go to stderr. Exit status: 0 success, \
        1 verification failed, 2 usage or input error, 3 not found, 4 storage error, \
        5 refused (access denied, patient erased, wrong master key).
        """,
        subcommands: [Init.self, Append.self, CheckpointCommand.self, Prove.self, VerifyProof.self, Get.self, RebuildIndex.self, PruneMap.self, VerifyLedger.self,
                      PatientCommand.self, RecordCommand.self, GrantCommand.self, RevokeCommand.self, ReadCommand.self,
                      AuditCommand.self, EraseCommand.self, ExportCommand.self, BlobCommand.self, ImportDICOM.self]
    )

    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            let known = error is CLIError || error is LedgerError || error is MerkleLogError || error is LMDBError
                || error is SparseMerkleError
            if !known {
                // Argument-parser errors: help and version exit 0; everything else is usage (2).
                let code = exitCode(for: error)
                if code == .success { exit(withError: error) }
                if error is ExitCode { exit(withError: error) }
                writeStderr(fullMessage(for: error) + "\n")
                Glibc.exit(ExitStatus.usage.rawValue)
            }
            let (status, message) = classify(error)
            writeStderr("medledger: \(message)\n")
            Glibc.exit(status.rawValue)
        }
    }
}

/// Options every ledger command shares.
struct LedgerLocation: ParsableArguments {
    @Argument(help: "The ledger directory.")
    var directory: String
}

struct Init: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create a ledger and its signing key; print the verifier key.")

    @OptionGroup var location: LedgerLocation

    @Option(help: "The log's origin line, e.g. example.org/ledger (no spaces or '+').")
    var origin: String

    @Flag(help: "Print {\"origin\",\"path\",\"verifier_key\"} instead of the bare key.")
    var json = false

    @Option(help: "Also create a master key file (mode 0600) for the patient layer; keep it off the ledger's disk and backups.")
    var masterKey: String?

    func run() throws {
        if let masterKey { _ = try MasterKeyFile.create(at: masterKey) }
        let verifierKey: String
        do { (_, verifierKey) = try Ledger.create(at: location.directory, origin: origin) } catch {
            if let masterKey { unlink(masterKey) }  // created just now, for this ledger only
            throw error
        }
        if json {
            try printJSON(["origin": origin, "path": location.directory, "verifier_key": verifierKey])
        } else {
            print(verifierKey)
        }
    }
}

struct CheckpointCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "checkpoint", abstract: "Print the signed checkpoint of the current state.")

    @OptionGroup var location: LedgerLocation

    func run() throws {
        let ledger = try Ledger(path: location.directory)
        writeStdout(Data(try ledger.signedCheckpoint().utf8))
    }
}

struct Get: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print an entry's payload (raw bytes, or JSON).")

    @OptionGroup var location: LedgerLocation

    @Option(help: "The entry index.")
    var index: UInt64

    @Flag(help: "Print index, op, key, payload hex and leaf hash as JSON.")
    var json = false

    func run() throws {
        var options = Ledger.Options()
        options.readOnly = true
        let ledger = try Ledger(path: location.directory, options: options)
        let (bytes, leafHash) = try ledger.rawEntry(at: index)
        let entry = try LedgerEntry(decoding: bytes)
        if json {
            try printJSON([
                "index": index, "op": entry.operation.description, "key": entry.key,
                "payload": Hex.encode(entry.payload), "leaf_hash": leafHash.hex,
            ])
        } else {
            writeStdout(Data(entry.payload))
        }
    }
}

struct RebuildIndex: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rebuild-index",
        abstract: "Rebuild the key map from the log and check it reproduces every stored map root.",
        discussion: """
        Prints {"map_root","mismatches":[sizes],"versions"}. Exits 1 when a rebuilt root \
        differs from the one stored before. Run it with no other writer on the ledger. A \
        ledger written by an earlier MedLedger (format 1) is upgraded: its key map is rebuilt \
        in the current layout.
        """)

    @OptionGroup var location: LedgerLocation

    func run() throws {
        // A ledger of format 1 is upgraded by the rebuild itself.
        let (ledger, upgrade) = try Ledger.openUpgrading(path: location.directory)
        let report = try upgrade ?? ledger.rebuildIndex()
        try printJSON(["versions": report.versions, "mismatches": report.mismatches, "map_root": report.mapRoot.hex])
        if !report.mismatches.isEmpty { throw ExitCode(ExitStatus.verificationFailed.rawValue) }
    }
}

struct PruneMap: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prune-map",
        abstract: "Drop the key map's versions below a tree size, freeing their pages for reuse.",
        discussion: """
        Keeps the map at every committed size from --before on (the latest always) and the \
        whole log; key proofs at a dropped size then fail with exit 3 (not found). Prints \
        {"oldest_version","pages_deleted","transactions","versions_removed"}. One durable \
        transaction, or steps of about --pages-per-transaction page records, each durable.
        """)

    @OptionGroup var location: LedgerLocation

    @Option(help: "Drop versions at tree sizes below this one (at most the tree size).")
    var before: UInt64

    @Option(help: "Delete in steps of about this many page records per write transaction (default: one transaction).")
    var pagesPerTransaction: Int?

    func run() throws {
        if let pagesPerTransaction, pagesPerTransaction <= 0 { throw CLIError(.usage, "--pages-per-transaction must be positive") }
        let ledger = try Ledger(path: location.directory)
        let report = try ledger.pruneKeyMap(before: before, pagesPerTransaction: pagesPerTransaction ?? .max)
        try printJSON(["versions_removed": report.versionsRemoved, "pages_deleted": report.pagesDeleted,
                       "transactions": report.transactions, "oldest_version": report.oldestVersion.map { $0 as Any } ?? NSNull()])
    }
}

struct VerifyLedger: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Audit a whole ledger: rehash the log, rebuild the key map, check checkpoints and stored ciphertexts.",
        discussion: """
        Reads one snapshot (writers may keep appending) and never writes to the ledger. Prints \
        a summary, or with --json {"valid","tree_size","root_hash","map_root","checkpoint", \
        counts...,"problem_count","problems":[{"area","location","detail"}]}. Exits 1 when \
        anything differs, listing each discrepancy with its location.
        """)

    @OptionGroup var location: LedgerLocation

    @Flag(help: "Print the report as JSON.")
    var json = false

    @Option(name: .customLong("checkpoint"), help: "A signed checkpoint issued earlier (file, or - for stdin) that the ledger must still contain; repeatable.")
    var checkpoints: [String] = []

    @Option(help: "Where to rebuild the key map (default: the temporary directory).")
    var scratch: String?

    @Option(help: "The master key file: also check that the key check and every wrapped data key open under it.")
    var masterKey: String?

    @Flag(help: "Check blob indexes against their manifests without rehashing every sealed chunk.")
    var skipBlobChunks = false

    func run() throws {
        var ledgerOptions = Ledger.Options()
        ledgerOptions.readOnly = true
        let ledger = try Ledger(path: location.directory, options: ledgerOptions)
        var options = VerificationOptions()
        options.scratchDirectory = scratch
        options.checkBlobChunks = !skipBlobChunks
        if let masterKey { options.masterKey = try MasterKeyFile(path: masterKey) }
        for path in checkpoints {
            options.checkpoints.append(String(decoding: try readInput(path, limit: 1 << 20), as: UTF8.self))
        }
        let progress = ProgressBox()
        options.progress = { done, total in progress.update(done, total: total) }
        let report = try ledger.verify(options)
        progress.finish()
        if json {
            let problems: [[String: Any]] = report.problems.map {
                ["area": $0.area.rawValue, "location": $0.location, "detail": $0.detail]
            }
            var out: [String: Any] = [
                "valid": report.isValid, "tree_size": report.treeSize, "root_hash": report.rootHash.hex,
                "map_root": report.mapRoot.hex, "entries": report.entries, "stored_hashes": report.storedHashes,
                "map_versions": report.mapVersions, "map_pages": report.mapPages, "patients": report.patients,
                "records": report.records, "grants": report.grants, "audit_events": report.auditEvents,
                "blob_versions": report.blobVersions, "blob_bytes_rehashed": report.blobBytesRehashed,
                "checkpoints_checked": report.checkpointsChecked, "problem_count": report.problemCount, "problems": problems,
            ]
            if let note = report.checkpoint { out["checkpoint"] = note }
            try printJSON(out)
        } else {
            var text = """
            tree size \(report.treeSize): \(report.entries) entries and \(report.storedHashes) stored hashes rehashed, \
            \(report.mapVersions) map versions and \(report.mapPages) pages rebuilt
            patient layer: \(report.patients) patients, \(report.records) stored record versions, \
            \(report.grants) grants, \(report.auditEvents) audit events, \(report.blobVersions) blob versions \
            (\(report.blobBytesRehashed) sealed bytes rehashed)
            checkpoints given: \(report.checkpointsChecked)

            """
            for problem in report.problems { text += "PROBLEM \(problem)\n" }
            if report.problemCount > report.problems.count {
                text += "... and \(report.problemCount - report.problems.count) more\n"
            }
            text += report.isValid ? "OK: the ledger verifies\n" : "FAILED: \(report.problemCount) problems\n"
            if report.isValid, let note = report.checkpoint { text += note }
            writeStdout(Data(text.utf8))
        }
        if !report.isValid { throw ExitCode(ExitStatus.verificationFailed.rawValue) }
    }
}

/// A progress display shared with a callback.
final class ProgressBox: @unchecked Sendable {
    // Sendable: the callback runs on the calling thread only.
    private var progress = Progress()
    func update(_ done: UInt64, total: UInt64) { progress.update(done, total: total, unit: "entries") }
    func finish() { progress.finish() }
}
