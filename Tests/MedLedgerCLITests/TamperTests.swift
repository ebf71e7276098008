import Foundation
import Testing
import LedgerCrypto
import TestSupport

/// Damages a ledger's data file at random and checks that `medledger verify` notices every
/// change to stored data, with a clear error or a located problem, and never crashes.
///
/// Whether a change altered stored data is decided independently: LMDB's own `mdb_dump`
/// prints every database's records before and after; a change it does not see (free pages,
/// slack inside pages, an older meta page) alters nothing. Runs `MEDLEDGER_TAMPER_TRIALS`
/// trials (default 40; docs/RELIABILITY.md has the full run) from seed `MEDLEDGER_TAMPER_SEED`.
@Suite(.serialized) struct TamperTests {
    enum Outcome: String {
        /// Altered data: verify listed problems, or refused the file with a clear error.
        case detected, cleanError = "clean-error"
        case missed
        /// Nothing `mdb_dump` shows changed; verify passed, or found damage in what it does not
        /// show (a database record's counters, a truncated tail).
        case unaltered, verifyOnly = "verify-only"
        case crash
    }

    @Test func randomDamageIsDetectedOrRefusedAndNeverCrashes() throws {
        let environment = ProcessInfo.processInfo.environment
        let trials = Int(environment["MEDLEDGER_TAMPER_TRIALS"] ?? "") ?? 40
        var rng = SplitMix64(seed: UInt64(environment["MEDLEDGER_TAMPER_SEED"] ?? "") ?? 0x7a3e)
        guard let dump = ["/usr/bin/mdb_dump", "/usr/local/bin/mdb_dump"].first(where: FileManager.default.isExecutableFile) else {
            Issue.record("mdb_dump (lmdb-utils) is needed as the independent reader; scripts/install-deps.sh installs it")
            return
        }
        let pristine = try Self.makeLedger()
        defer { try? FileManager.default.removeItem(atPath: pristine) }
        let pristineDump = try Self.dumpAll(dump, pristine)
        #expect(try CLI.run(["verify", pristine, "--master-key", pristine + "/../" + Self.keyName(pristine)]).status == 0)
        let dataSize = try FileManager.default.attributesOfItem(atPath: pristine + "/data.mdb")[.size] as! Int

        var counts: [Outcome: Int] = [:]
        var byKind: [String: [Outcome: Int]] = [:]
        for trial in 0..<trials {
            let copy = pristine + ".trial"
            try? FileManager.default.removeItem(atPath: copy)
            try FileManager.default.copyItem(atPath: pristine, toPath: copy)
            defer { try? FileManager.default.removeItem(atPath: copy) }
            var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: copy + "/data.mdb")))
            let page = 4096
            let pages = dataSize / page
            let kind: String
            switch rng.next() % 8 {
            case 0:
                kind = "truncate"
                bytes.removeLast(Int(rng.next() % UInt64(dataSize - 1)) + 1)
            case 1:
                kind = "swap-pages"
                let a = Int(rng.next() % UInt64(pages)), b = Int(rng.next() % UInt64(pages))
                for i in 0..<page { bytes.swapAt(a * page + i, b * page + i) }
            case 2:
                kind = "zero-page"
                let a = Int(rng.next() % UInt64(pages))
                for i in 0..<page { bytes[a * page + i] = 0 }
            default:
                kind = "flip-byte"
                bytes[Int(rng.next() % UInt64(dataSize))] ^= UInt8(rng.next() % 255 + 1)
            }
            try Data(bytes).write(to: URL(fileURLWithPath: copy + "/data.mdb"))
            let damagedDump = try? Self.dumpAll(dump, copy)
            let altered = damagedDump != pristineDump
            let result = try CLI.run(["verify", copy, "--json", "--master-key", pristine + "/../" + Self.keyName(pristine)])
            let outcome: Outcome
            switch result.status {
            case 0: outcome = altered ? .missed : .unaltered
            case 1: outcome = altered ? .detected : .verifyOnly
            case 2...5 where result.stderr.hasPrefix("medledger: "): outcome = altered ? .cleanError : .verifyOnly
            default: outcome = .crash
            }
            if let keep = environment["MEDLEDGER_TAMPER_KEEP"], outcome == .crash || outcome == .missed || outcome == .verifyOnly {
                try? FileManager.default.copyItem(atPath: copy, toPath: "\(keep)/trial-\(trial)-\(outcome.rawValue)")
            }
            counts[outcome, default: 0] += 1
            byKind[kind, default: [:]][outcome, default: 0] += 1
            #expect(outcome != .crash, "trial \(trial) (\(kind)): exit \(result.status), \(result.stderr.prefix(300))")
            #expect(outcome != .missed, "trial \(trial) (\(kind)): altered data, yet verify passed: \(Self.firstDifference(pristineDump, damagedDump))")
        }
        let summary = [Outcome.detected, .cleanError, .missed, .unaltered, .verifyOnly, .crash]
            .map { "\($0.rawValue) \(counts[$0] ?? 0)" }.joined(separator: ", ")
        print("tamper: \(trials) trials on a \(dataSize)-byte data file: \(summary)")
        for (kind, outcomes) in byKind.sorted(by: { $0.key < $1.key }) {
            print("tamper:   \(kind): " + outcomes.sorted { $0.key.rawValue < $1.key.rawValue }.map { "\($0.key.rawValue) \($0.value)" }.joined(separator: ", "))
        }
    }

    /// The first differing line of two dumps, with the database it is in.
    static func firstDifference(_ a: String, _ b: String?) -> String {
        guard let b else { return "mdb_dump failed" }
        let x = a.split(separator: "\n"), y = b.split(separator: "\n")
        var database = ""
        for (l, r) in zip(x, y) {
            if l.hasPrefix("database=") { database = String(l) }
            if l != r { return "\(database): \(l.prefix(120)) -> \(r.prefix(120))" }
        }
        return "dumps differ in length"
    }

    static func keyName(_ dir: String) -> String { URL(fileURLWithPath: dir).lastPathComponent + ".key" }

    /// A small ledger with every kind of stored data: keyed entries over many commits,
    /// patients, record versions, grants (one sharing the key over X25519), a revocation,
    /// audited and break-glass reads, an erased patient.
    static func makeLedger() throws -> String {
        let dir = scratch("tamper")
        let key = URL(fileURLWithPath: dir).deletingLastPathComponent().path + "/" + keyName(dir)
        #expect(try CLI.run(["init", dir, "--origin", "tamper.example/ledger", "--master-key", key]).status == 0)
        for batch in 0..<6 {
            let lines = (0..<60).map { "k\(($0 * 7 + batch * 13) % 90)\tpayload \(batch) \($0)" }.joined(separator: "\n") + "\n"
            try Data(lines.utf8).write(to: URL(fileURLWithPath: dir + ".lines"))
            #expect(try CLI.run(["append", dir, "--lines", dir + ".lines", "--keys"]).status == 0)
        }
        try? FileManager.default.removeItem(atPath: dir + ".lines")
        let doctor = Base64.encode(try Ed25519PrivateKey().publicKey.rawRepresentation)
        let x25519 = Base64.encode(try X25519PrivateKey().publicKey.rawRepresentation)
        for patient in ["Patient/1", "Patient/2", "Patient/3"] {
            #expect(try CLI.run(["patient", "add", dir, "--master-key", key, "--id", patient]).status == 0)
            for record in ["obs-1", "obs-2"] {
                let fhir = #"{"resourceType":"Observation","id":"\#(record)","status":"final"}"#
                #expect(try CLI.run(["record", "put", dir, "--master-key", key, "--patient", patient, "--record", record, "-"],
                                    stdin: Data(fhir.utf8)).status == 0)
            }
            #expect(try CLI.run(["grant", dir, "--master-key", key, "--patient", patient, "--grantee", "dr-a",
                                 "--grantee-key", doctor, "--x25519", x25519, "--expires", "+30"]).status == 0)
            #expect(try CLI.run(["grant", dir, "--master-key", key, "--patient", patient, "--grantee", "dr-b",
                                 "--grantee-key", doctor, "--expires", "+30"]).status == 0)
            #expect(try CLI.run(["read", dir, "--master-key", key, "--patient", patient, "--record", "obs-1", "--as", "dr-b"]).status == 0)
            #expect(try CLI.run(["read", dir, "--master-key", key, "--patient", patient, "--record", "obs-2", "--as", "dr-c",
                                 "--break-glass", "emergency"]).status == 0)
        }
        #expect(try CLI.run(["revoke", dir, "--master-key", key, "--patient", "Patient/1", "--grantee", "dr-a"]).status == 0)
        #expect(try CLI.run(["erase", dir, "--master-key", key, "--patient", "Patient/3"]).status == 0)
        return dir
    }

    /// Every record of every database, as `mdb_dump -a` prints them.
    static func dumpAll(_ tool: String, _ dir: String) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool)
        process.arguments = ["-a", dir]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationReason == .exit, process.terminationStatus == 0 else {
            throw CocoaError(.fileReadCorruptFile)
        }
        return String(decoding: data, as: UTF8.self)
    }
}

/// Random command lines from the tool's own vocabulary, against a real ledger: every one
/// must end with a documented exit status (0–5) and, when not 0, a message; none may crash.
@Suite struct ArgumentFuzzTests {
    @Test func randomCommandLinesExitCleanly() throws {
        let environment = ProcessInfo.processInfo.environment
        let seconds = Double(environment["MEDLEDGER_FUZZ_SECONDS"] ?? "") ?? 0.5
        var rng = SplitMix64(seed: UInt64(environment["MEDLEDGER_FUZZ_SEED"] ?? "") ?? 0xa59)
        // Relative words ("k", "Patient/1") may name directories: run inside a scratch one.
        let work = scratch("argfuzz")
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: work) }
        let dir = work + "/ledger"
        let key = work + "/master.key"
        #expect(try CLI.run(["init", dir, "--origin", "args.example/ledger", "--master-key", key]).status == 0)
        #expect(try CLI.run(["append", dir, "--key", "k"], stdin: Data("v".utf8)).status == 0)
        let words = ["init", "append", "checkpoint", "prove", "inclusion", "consistency", "key", "verify-proof", "get",
                     "rebuild-index", "prune-map", "--before", "--pages-per-transaction", "verify", "patient", "add", "record", "put", "get", "history", "list", "grant",
                     "revoke", "read", "audit", "erase", "export", dir, dir + "/nope", key, "/dev/null", "-", "--json",
                     "--index", "--size", "--old-size", "--key", "--delete", "--lines", "--keys", "--batch", "--origin",
                     "--master-key", "--id", "--patient", "--record", "--as", "--grantee", "--grantee-key", "--expires",
                     "--break-glass", "--checkpoint", "--scratch", "--type", "0", "1", "-1", "18446744073709551616",
                     "+3", "Patient/1", "", "k", "AAAA", String(repeating: "x", count: 5000), "--help"]
        let deadline = Date().addingTimeInterval(seconds)
        var runs = 0
        var statuses: [Int32: Int] = [:]
        while Date() < deadline || runs < 20 {
            let arguments = (0..<(1 + Int(rng.next() % 6))).map { _ in words[Int(rng.next() % UInt64(words.count))] }
            let result = try CLI.run(arguments, stdin: Data(), in: work)
            runs += 1
            statuses[result.status, default: 0] += 1
            #expect((0...5).contains(result.status), "\(arguments): exit \(result.status) \(result.stderr.prefix(200))")
            if result.status != 0 { #expect(!result.stderr.isEmpty, "\(arguments): no message") }
        }
        print("fuzz arguments: \(runs) command lines, exit statuses \(statuses.sorted { $0.key < $1.key })")
        #expect(try CLI.run(["verify", dir]).status == 0)
    }
}
