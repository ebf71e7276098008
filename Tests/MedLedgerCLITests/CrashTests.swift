import Foundation
import Testing
import LedgerCrypto
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Kills a writer (`crash-writer`: raw batches, patients, record versions, grants and
/// revocations, audited reads, erasures with master-key rotation) with SIGKILL at random
/// moments and checks after each kill that the ledger opens and verifies, that every
/// acknowledged commit is there, that the one commit in flight is either wholly there or
/// wholly absent, and that checkpoints signed before the crash still match.
/// `MEDLEDGER_CRASH_KILLS` kills (default 50; docs/RELIABILITY.md has the full run), on a fresh
/// ledger every ten.
@Suite(.serialized) struct CrashTests {
    @Test func killedWritersLoseNoAcknowledgedCommit() throws {
        let environment = ProcessInfo.processInfo.environment
        let kills = Int(environment["MEDLEDGER_CRASH_KILLS"] ?? "") ?? 50
        var rng = SplitMix64(seed: UInt64(environment["MEDLEDGER_CRASH_SEED"] ?? "") ?? 0xc4a5)
        let writer = URL(fileURLWithPath: CLI.binary).deletingLastPathComponent().appendingPathComponent("crash-writer").path
        try #require(FileManager.default.isExecutableFile(atPath: writer), "build the crash-writer product first")
        let dir = scratch("crash")
        let key = dir + ".key"
        defer {
            try? FileManager.default.removeItem(atPath: dir)
            try? FileManager.default.removeItem(atPath: key)
            try? FileManager.default.removeItem(atPath: dir + ".notes")
        }

        var acknowledged: (size: UInt64, note: String)?
        var firstNote: String?
        var acks = 0, inFlightCommitted = 0, inFlightLost = 0
        for kill in 0..<kills {
            if kill % 10 == 0 {
                // A fresh ledger every ten kills keeps each verify short.
                try? FileManager.default.removeItem(atPath: dir)
                try? FileManager.default.removeItem(atPath: key)
                acknowledged = nil
                firstNote = nil
            }
            let process = Process()
            process.executableURL = URL(fileURLWithPath: writer)
            process.arguments = [dir, key, String(rng.next() % 1_000_000_000)]
            let out = Pipe(), err = Pipe()
            process.standardOutput = out
            process.standardError = err
            try process.run()
            usleep(useconds_t(20_000 + rng.next() % 280_000))
            Glibc.kill(process.processIdentifier, SIGKILL)
            let lines = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).split(separator: "\n")
            let errors = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            #expect(process.terminationReason == .uncaughtSignal, "kill \(kill): the writer stopped by itself: \(errors)")

            // The last acknowledged commit, and a commit begun after it.
            var inFlight: (size: UInt64, entries: UInt64)?
            for line in lines {
                let fields = line.split(separator: " ")
                if fields.first == "ack", fields.count == 3, let size = UInt64(fields[1]), let note = Base64.decode(String(fields[2])) {
                    acknowledged = (size, String(decoding: note, as: UTF8.self))
                    firstNote = firstNote ?? acknowledged?.note
                    acks += 1
                    inFlight = nil
                } else if fields.first == "begin", fields.count == 3, let size = UInt64(fields[1]), let entries = UInt64(fields[2]) {
                    inFlight = (size, entries)
                }
            }
            guard let acked = acknowledged else { continue }  // killed before the first commit
            try Data(acked.note.utf8).write(to: URL(fileURLWithPath: dir + ".notes"))
            var arguments = ["verify", dir, "--json", "--master-key", key, "--checkpoint", dir + ".notes"]
            if let firstNote, firstNote != acked.note {
                try Data(firstNote.utf8).write(to: URL(fileURLWithPath: dir + ".first"))
                arguments += ["--checkpoint", dir + ".first"]
            }
            defer { try? FileManager.default.removeItem(atPath: dir + ".first") }
            let result = try CLI.run(arguments)
            let report = try? result.json()
            #expect(result.status == 0, "kill \(kill): verify failed: \(result.stderr) \(result.text.prefix(800))")
            guard let size = (report?["tree_size"] as? NSNumber)?.uint64Value else { continue }
            if let inFlight {
                // The commit in flight is all there or not at all.
                let whole = inFlight.entries == 0 ? size > inFlight.size : size == inFlight.size + inFlight.entries
                #expect(size == acked.size || whole, "kill \(kill): size \(size) after acknowledged \(acked.size), in flight \(inFlight)")
                if size == acked.size { inFlightLost += 1 } else { inFlightCommitted += 1 }
                if size > acked.size {
                    // What committed unacknowledged is the state later runs are held to.
                    let note = try CLI.run(["checkpoint", dir])
                    #expect(note.status == 0)
                    acknowledged = (size, note.text)
                }
            } else {
                #expect(size == acked.size, "kill \(kill): size \(size), acknowledged \(acked.size)")
            }
        }
        print("crash: \(kills) kills, \(acks) acknowledged commits, in-flight commits at the kill: \(inFlightCommitted) committed, \(inFlightLost) absent")
        #expect(acks > 0)
    }
}

/// Two writer processes on one ledger: LMDB's writer lock makes one wait for the other, and
/// each picks up the other's commits (frontier, map) before its own.
@Suite(.serialized) struct TwoWritersTests {
    @Test func twoWriterProcessesInterleaveWithoutDamage() throws {
        let dir = scratch("two-writers")
        defer {
            try? FileManager.default.removeItem(atPath: dir)
            for n in 0..<2 { try? FileManager.default.removeItem(atPath: dir + ".\(n).lines") }
        }
        #expect(try CLI.run(["init", dir, "--origin", "writers.example/ledger"]).status == 0)
        var writers: [Process] = []
        for n in 0..<2 {
            let lines = (0..<20_000).map { "w\(n)-k\($0 % 3000)\tpayload \($0)" }.joined(separator: "\n") + "\n"
            try Data(lines.utf8).write(to: URL(fileURLWithPath: dir + ".\(n).lines"))
            let process = Process()
            process.executableURL = URL(fileURLWithPath: CLI.binary)
            process.arguments = ["append", dir, "--lines", dir + ".\(n).lines", "--keys", "--batch", "100"]
            process.standardOutput = FileHandle.nullDevice
            writers.append(process)
        }
        for writer in writers { try writer.run() }
        for writer in writers {
            writer.waitUntilExit()
            #expect(writer.terminationStatus == 0)
        }
        let report = try CLI.run(["verify", dir, "--json"])
        #expect(report.status == 0, "\(report.text.prefix(600))")
        #expect(try report.json()["tree_size"] as? Int == 40_000)
        #expect(try (report.json()["map_versions"] as? Int ?? 0) == 400)
    }
}
