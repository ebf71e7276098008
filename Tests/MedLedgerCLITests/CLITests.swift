import Foundation
import Testing
import LedgerCrypto

/// Runs the built `medledger` binary end to end.
struct CLI {
    static let binary: String = {
        // Tests run from the build products directory, which also holds the executable.
        let candidates = [
            URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("medledger").path,
            Bundle.main.bundleURL.appendingPathComponent("medledger").path,
            URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
                .appendingPathComponent(".build/debug/medledger").path,
        ]
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) } ?? candidates.last!
    }()

    struct Result {
        let status: Int32
        let stdout: Data
        let stderr: String
        var text: String { String(decoding: stdout, as: UTF8.self) }
        func json() throws -> [String: Any] {
            try #require(try JSONSerialization.jsonObject(with: stdout) as? [String: Any])
        }
    }

    @discardableResult
    static func run(_ arguments: [String], stdin: Data? = nil, in directory: String? = nil) throws -> Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
        process.arguments = arguments
        let out = Pipe(), err = Pipe(), input = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = input
        try process.run()
        if let stdin { input.fileHandleForWriting.write(stdin) }
        try input.fileHandleForWriting.close()
        let stdoutData = out.fileHandleForReading.readDataToEndOfFile()
        let stderrData = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return Result(status: process.terminationStatus, stdout: stdoutData, stderr: String(decoding: stderrData, as: UTF8.self))
    }
}

func scratch(_ name: String) -> String {
    NSTemporaryDirectory() + "medledger-cli-\(name)-\(UUID().uuidString)"
}

/// RFC 6962 root over `leaves`, computed independently of the library (plain recursion).
func independentRoot(_ leaves: ArraySlice<[UInt8]>) -> Hash {
    if leaves.isEmpty { return SHA256.hash([]) }
    if leaves.count == 1 { return SHA256.hash([0] + leaves.first!) }
    var k = 1
    while k * 2 < leaves.count { k *= 2 }
    let l = independentRoot(leaves.prefix(k)), r = independentRoot(leaves.dropFirst(k))
    return SHA256.hash([1] + l.bytes + r.bytes)
}

/// RFC 9162 2.1.3.2, written again here so the CLI's proofs are checked by code it does not share.
func independentInclusionRoot(index: UInt64, size: UInt64, leaf: Hash, path: [Hash]) -> Hash? {
    guard index < size else { return nil }
    var fn = index, sn = size - 1, r = leaf
    for p in path {
        if sn == 0 { return nil }
        if fn & 1 == 1 || fn == sn {
            r = SHA256.hash([1] + p.bytes + r.bytes)
            while fn & 1 == 0 && fn != 0 { fn >>= 1; sn >>= 1 }
        } else {
            r = SHA256.hash([1] + r.bytes + p.bytes)
        }
        fn >>= 1; sn >>= 1
    }
    return sn == 0 ? r : nil
}

@Suite(.serialized) struct CLITests {
    @Test func verifyPassesThenFindsAFlippedByteInTheDataFile() throws {
        let dir = scratch("verify")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(try CLI.run(["init", dir, "--origin", "cli.example/verify"]).status == 0)
        let lines = (0..<100).map { "k\($0 % 30)\tpayload-\($0)-marker" }.joined(separator: "\n") + "\n"
        try Data(lines.utf8).write(to: URL(fileURLWithPath: dir + ".lines"))
        defer { try? FileManager.default.removeItem(atPath: dir + ".lines") }
        #expect(try CLI.run(["append", dir, "--lines", dir + ".lines", "--keys"]).status == 0)
        let early = try CLI.run(["checkpoint", dir])
        #expect(try CLI.run(["append", dir, "--key", "last"], stdin: Data("x".utf8)).status == 0)
        try early.stdout.write(to: URL(fileURLWithPath: dir + ".cp"))
        defer { try? FileManager.default.removeItem(atPath: dir + ".cp") }

        let ok = try CLI.run(["verify", dir, "--json", "--checkpoint", dir + ".cp"])
        #expect(ok.status == 0, "\(ok.stderr)")
        let report = try ok.json()
        #expect(report["valid"] as? Bool == true)
        #expect(report["tree_size"] as? Int == 101)
        #expect(report["checkpoints_checked"] as? Int == 1)
        #expect((report["problems"] as? [Any])?.isEmpty == true)
        let current = try CLI.run(["checkpoint", dir])
        #expect(report["checkpoint"] as? String == current.text)

        // One byte of one entry's payload, changed in the file itself.
        let path = dir + "/data.mdb"
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        let at = try #require(bytes.range(of: Data("payload-42-marker".utf8))).lowerBound
        bytes[at] ^= 0x20
        try bytes.write(to: URL(fileURLWithPath: path))
        let bad = try CLI.run(["verify", dir, "--json"])
        #expect(bad.status == 1)
        let problems = try #require(try bad.json()["problems"] as? [[String: Any]])
        #expect(problems.first?["location"] as? String == "entry 42")
        #expect(problems.first?["area"] as? String == "log")
        let human = try CLI.run(["verify", dir])
        #expect(human.status == 1)
        #expect(human.text.contains("PROBLEM log: entry 42: stored leaf hash differs"))
    }

    @Test func endToEndLinesProofsAndTampering() throws {
        let dir = scratch("e2e")
        let work = scratch("work")
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer {
            try? FileManager.default.removeItem(atPath: dir)
            try? FileManager.default.removeItem(atPath: work)
        }
        let initResult = try CLI.run(["init", dir, "--origin", "cli.example/log"])
        #expect(initResult.status == 0, "\(initResult.stderr)")
        let verifierKey = initResult.text.trimmingCharacters(in: .whitespacesAndNewlines)

        let count = 100_000
        let lines = (0..<count).map { "line \($0) {\"n\":\($0)}" }
        try (lines.joined(separator: "\n") + "\n").write(toFile: work + "/lines.txt", atomically: true, encoding: .utf8)
        let appended = try CLI.run(["append", dir, "--lines", work + "/lines.txt", "--batch", "7000"])
        #expect(appended.status == 0, "\(appended.stderr)")
        let summary = try appended.json()
        #expect(summary["count"] as? Int == count && summary["tree_size"] as? Int == count && summary["first_index"] as? Int == 0)

        // The checkpoint's root equals an independent RFC 6962 computation over the envelopes.
        let envelopes = lines.map { [0x01, 0x00, 0x00, 0x00] + Array($0.utf8) }
        let checkpoint = try CLI.run(["checkpoint", dir])
        #expect(checkpoint.status == 0)
        try checkpoint.stdout.write(to: URL(fileURLWithPath: work + "/checkpoint.txt"))
        let checkpointLines = checkpoint.text.split(separator: "\n", omittingEmptySubsequences: false)
        #expect(checkpointLines[0] == "cli.example/log" && checkpointLines[1] == "\(count)")
        #expect(checkpointLines[2] == independentRoot(envelopes[...]).base64)
        #expect(checkpointLines[3] == "map AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")

        // Proofs verify under an independent verifier and under verify-proof; alterations exit 1.
        for index in [0, 1, 4242, 65535, 65536, 99_999] {
            let proved = try CLI.run(["prove", "inclusion", dir, "--index", "\(index)"])
            #expect(proved.status == 0)
            let json = try proved.json()
            let path = (json["hashes"] as! [String]).map { Hash(hex: $0)! }
            let leaf = Hash(hex: json["leaf_hash"] as! String)!
            #expect(leaf == SHA256.hash([0] + envelopes[index]))
            #expect(independentInclusionRoot(index: UInt64(index), size: UInt64(count), leaf: leaf, path: path)?.base64
                    == String(checkpointLines[2]))
            let ok = try CLI.run(["verify-proof", "--checkpoint", work + "/checkpoint.txt", "--key", verifierKey], stdin: proved.stdout)
            #expect(ok.status == 0, "\(ok.stderr)")
            #expect(try ok.json()["valid"] as? Bool == true)

            var tampered = proved.text
            let firstHash = path.first!.hex
            var flipped = Array(firstHash)
            flipped[10] = flipped[10] == "0" ? "1" : "0"
            tampered = tampered.replacingOccurrences(of: firstHash, with: String(flipped))
            let bad = try CLI.run(["verify-proof"], stdin: Data(tampered.utf8))
            #expect(bad.status == 1)
            #expect(try bad.json()["valid"] as? Bool == false)
            let wrongIndex = proved.text.replacingOccurrences(of: "\"leaf_index\":\(index)", with: "\"leaf_index\":\(index ^ 1)")
            #expect(try CLI.run(["verify-proof"], stdin: Data(wrongIndex.utf8)).status == 1)
        }

        for (old, new) in [(1, count), (4096, count), (77_777, 99_999), (count, count)] {
            let proved = try CLI.run(["prove", "consistency", dir, "--old-size", "\(old)", "--size", "\(new)"])
            #expect(proved.status == 0)
            let json = try proved.json()
            #expect(json["old_root"] as? String == independentRoot(envelopes.prefix(old)).hex)
            #expect(json["new_root"] as? String == independentRoot(envelopes.prefix(new)).hex)
            #expect(try CLI.run(["verify-proof", "-"], stdin: proved.stdout).status == 0)
            let swapped = proved.text.replacingOccurrences(of: "\"old_root\":\"\(json["old_root"] as! String)\"",
                                                          with: "\"old_root\":\"\(SHA256.hash([9]).hex)\"")
            #expect(try CLI.run(["verify-proof"], stdin: Data(swapped.utf8)).status == 1)
        }

        // A proof for an older size does not match the current checkpoint.
        let older = try CLI.run(["prove", "inclusion", dir, "--index", "5", "--size", "10"])
        #expect(try CLI.run(["verify-proof", "--checkpoint", work + "/checkpoint.txt", "--key", verifierKey], stdin: older.stdout).status == 1)
        // A tampered checkpoint fails even with a valid proof.
        let forged = checkpoint.text.replacingOccurrences(of: "\n\(count)\n", with: "\n\(count + 1)\n")
        try forged.write(toFile: work + "/forged.txt", atomically: true, encoding: .utf8)
        let proof = try CLI.run(["prove", "inclusion", dir, "--index", "5"])
        #expect(try CLI.run(["verify-proof", "--checkpoint", work + "/forged.txt", "--key", verifierKey], stdin: proof.stdout).status == 1)
        // A different key fails.
        let otherKey = "other.example+00000000+AWP0gA7FpJOpwTehRxzV1WbDFvBg5JyWrs9Rr0Sw3YLe"
        #expect(try CLI.run(["verify-proof", "--checkpoint", work + "/checkpoint.txt", "--key", otherKey], stdin: proof.stdout).status == 2)
    }

    @Test func readerProcessesDuringAWriterProcess() throws {
        let dir = scratch("concurrent")
        let work = scratch("concurrent-work")
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer {
            try? FileManager.default.removeItem(atPath: dir)
            try? FileManager.default.removeItem(atPath: work)
        }
        let key = try CLI.run(["init", dir, "--origin", "o.example"]).text.trimmingCharacters(in: .whitespacesAndNewlines)
        try CLI.run(["append", dir, "--key", "first"], stdin: Data("x".utf8))
        let lines = (0..<300_000).map { "entry \($0)" }.joined(separator: "\n") + "\n"
        try lines.write(toFile: work + "/lines.txt", atomically: true, encoding: .utf8)

        // A writer process commits 300 batches while reader processes prove and verify.
        let writer = Process()
        writer.executableURL = URL(fileURLWithPath: CLI.binary)
        writer.arguments = ["append", dir, "--lines", work + "/lines.txt", "--batch", "1000"]
        writer.standardOutput = FileHandle.nullDevice
        try writer.run()
        var sizesSeen = Set<Int>()
        var rounds = 0
        while writer.isRunning || rounds < 3 {
            rounds += 1
            let proof = try CLI.run(["prove", "inclusion", dir, "--index", "0"])
            #expect(proof.status == 0, "\(proof.stderr)")
            let json = try proof.json()
            sizesSeen.insert(json["tree_size"] as? Int ?? -1)
            #expect(try CLI.run(["verify-proof"], stdin: proof.stdout).status == 0)
            #expect(try CLI.run(["get", dir, "--index", "0"]).stdout == Data("x".utf8))
        }
        writer.waitUntilExit()
        #expect(writer.terminationStatus == 0)
        // Every size a reader saw was a batch boundary: no half-committed batch was visible.
        for size in sizesSeen { #expect((size - 1) % 1000 == 0, "size \(size)") }
        let checkpoint = try CLI.run(["checkpoint", dir])
        #expect(checkpoint.text.contains("\n300001\n"))
        try checkpoint.stdout.write(to: URL(fileURLWithPath: work + "/cp.txt"))
        let last = try CLI.run(["prove", "inclusion", dir, "--index", "300000"])
        #expect(try CLI.run(["verify-proof", "--checkpoint", work + "/cp.txt", "--key", key], stdin: last.stdout).status == 0)
    }

    @Test func keyedLinesKeyProofsAndRebuild() throws {
        let dir = scratch("keys")
        let work = scratch("keys-work")
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer {
            try? FileManager.default.removeItem(atPath: dir)
            try? FileManager.default.removeItem(atPath: work)
        }
        let key = try CLI.run(["init", dir, "--origin", "keys.example"]).text.trimmingCharacters(in: .whitespacesAndNewlines)
        let lines = (0..<2000).map { "record/\($0 % 700)\tversion \($0)" }.joined(separator: "\n") + "\n"
        try lines.write(toFile: work + "/keyed.txt", atomically: true, encoding: .utf8)
        #expect(try CLI.run(["append", dir, "--lines", work + "/keyed.txt", "--keys", "--batch", "500"]).status == 0)
        #expect(try CLI.run(["append", dir, "--key", "record/5", "--delete"], stdin: Data()).status == 0)
        let checkpoint = try CLI.run(["checkpoint", dir])
        try checkpoint.stdout.write(to: URL(fileURLWithPath: work + "/cp.txt"))

        let present = try CLI.run(["prove", "key", dir, "--key", "record/6"])
        let presentJSON = try present.json()
        #expect(presentJSON["present"] as? Bool == true)
        // record/6 was last set by line 1406 (6 + 2 * 700).
        #expect((presentJSON["value"] as? String)?.hasPrefix("000000000000057e") == true)
        #expect(try CLI.run(["verify-proof", "--checkpoint", work + "/cp.txt", "--key", key], stdin: present.stdout).status == 0)
        for absentKey in ["record/5", "record/700", "nobody"] {
            let absent = try CLI.run(["prove", "key", dir, "--key", absentKey])
            #expect(try absent.json()["present"] as? Bool == false, "\(absentKey)")
            #expect(try CLI.run(["verify-proof", "--checkpoint", work + "/cp.txt", "--key", key], stdin: absent.stdout).status == 0)
            // Claiming the absent key is present, or moving it to another key, fails.
            let flipped = absent.text.replacingOccurrences(of: "\"present\":false", with: "\"present\":true,\"value\":\"00\"")
            #expect(try CLI.run(["verify-proof"], stdin: Data(flipped.utf8)).status == 1)
        }
        let tampered = present.text.replacingOccurrences(of: "\"record/6\"", with: "\"record/7\"")
        #expect(try CLI.run(["verify-proof"], stdin: Data(tampered.utf8)).status == 2, "key_hash no longer matches key")
        if let sibling = (presentJSON["siblings"] as? [String])?.first(where: { !$0.isEmpty }) {
            let changed = present.text.replacingOccurrences(of: sibling, with: String(sibling.reversed()))
            #expect(try CLI.run(["verify-proof"], stdin: Data(changed.utf8)).status == 1)
        }
        // A proof at an older committed size does not match the newer checkpoint.
        let older = try CLI.run(["prove", "key", dir, "--key", "record/6", "--size", "1500"])
        #expect(older.status == 0)
        #expect(try CLI.run(["verify-proof", "--checkpoint", work + "/cp.txt", "--key", key], stdin: older.stdout).status == 1)
        #expect(try CLI.run(["prove", "key", dir, "--key", "record/6", "--size", "1499"]).status == 3)

        // Several keys: one multi-key proof, verified offline and against the checkpoint.
        let multi = try CLI.run(["prove", "key", dir, "--key", "record/6", "--key", "record/5", "--key", "nobody"])
        let multiJSON = try multi.json()
        #expect(multiJSON["type"] as? String == "keys")
        let multiKeys = multiJSON["keys"] as? [[String: Any]] ?? []
        #expect(Set(multiKeys.compactMap { $0["key"] as? String }) == ["record/6", "record/5", "nobody"])
        #expect(multiKeys.first { $0["key"] as? String == "record/6" }?["present"] as? Bool == true)
        let multiCheck = try CLI.run(["verify-proof", "--checkpoint", work + "/cp.txt", "--key", key], stdin: multi.stdout)
        #expect(multiCheck.status == 0)
        #expect(try multiCheck.json()["keys"] as? Int == 3 && multiCheck.json()["present"] as? Int == 1)
        try "record/6\nrecord/5\nnobody\n".write(toFile: work + "/keys.txt", atomically: true, encoding: .utf8)
        #expect(try CLI.run(["prove", "key", dir, "--keys-from", work + "/keys.txt"]).stdout == multi.stdout)
        try "record/6\r\nrecord/5\r\n\r\nnobody\r\n".write(toFile: work + "/keys-crlf.txt", atomically: true, encoding: .utf8)
        #expect(try CLI.run(["prove", "key", dir, "--keys-from", work + "/keys-crlf.txt"]).stdout == multi.stdout, "CRLF lines")
        let claimed = multi.text.replacingOccurrences(of: "\"present\":false", with: "\"present\":true,\"value\":\"00\"")
        #expect(claimed != multi.text)
        #expect(try CLI.run(["verify-proof"], stdin: Data(claimed.utf8)).status == 1)
        if let node = (multiJSON["nodes"] as? [[String: Any]])?.compactMap({ $0["hash"] as? String }).first(where: { $0 != String(repeating: "0", count: 64) }) {
            let changed = multi.text.replacingOccurrences(of: node, with: String(node.reversed()))
            #expect(try CLI.run(["verify-proof"], stdin: Data(changed.utf8)).status == 1)
        } else {
            Issue.record("the multi-key proof has no sibling hash")
        }
        #expect(try CLI.run(["prove", "key", dir]).status == 2, "no key given")

        let rebuilt = try CLI.run(["rebuild-index", dir])
        #expect(rebuilt.status == 0)
        #expect(try rebuilt.json()["mismatches"] as? [Int] == [])
        #expect(try CLI.run(["checkpoint", dir]).stdout == checkpoint.stdout, "same map root after the rebuild")

        // Versions at 500, 1000, 1500, 2000 and 2001 (batches of 500, then the delete).
        let atOld = try CLI.run(["prove", "key", dir, "--key", "record/6", "--size", "1500"])
        #expect(try CLI.run(["prune-map", dir, "--before", "2002"]).status == 2, "beyond the tree size")
        #expect(try CLI.run(["prune-map", dir, "--before", "1500", "--pages-per-transaction", "0"]).status == 2)
        let pruned = try CLI.run(["prune-map", dir, "--before", "1500", "--pages-per-transaction", "10"])
        #expect(pruned.status == 0, "\(pruned.stderr)")
        let prunedJSON = try pruned.json()
        #expect(prunedJSON["versions_removed"] as? Int == 2 && prunedJSON["oldest_version"] as? Int == 1500, "\(prunedJSON)")
        #expect((prunedJSON["pages_deleted"] as? Int ?? 0) > 0 && (prunedJSON["transactions"] as? Int ?? 0) > 1, "\(prunedJSON)")
        #expect(try CLI.run(["prove", "key", dir, "--key", "record/6", "--size", "1000"]).status == 3, "a dropped version")
        #expect(try CLI.run(["prove", "key", dir, "--key", "record/6", "--size", "1500"]).stdout == atOld.stdout)
        #expect(try CLI.run(["checkpoint", dir]).stdout == checkpoint.stdout, "the latest version is kept")
        #expect(try CLI.run(["verify", dir]).status == 0)

        try "no tab here\n".write(toFile: work + "/bad.txt", atomically: true, encoding: .utf8)
        #expect(try CLI.run(["append", dir, "--lines", work + "/bad.txt", "--keys"]).status == 2)
    }

    @Test func rebuildIndexUpgradesAFormat1Ledger() throws {
        // Tests/Fixtures/format1-ledger: written by the format-1 CLI (FormatUpgradeTests.swift).
        let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/format1-ledger").path
        let dir = scratch("format1")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for name in ["data.mdb", "signer.key", "verifier.key"] {
            try FileManager.default.copyItem(atPath: fixture + "/" + name, toPath: dir + "/" + name)
        }
        let refused = try CLI.run(["prove", "key", dir, "--key", "record/5"])
        #expect(refused.status == 4)
        #expect(refused.stderr.contains("rebuild-index"), "\(refused.stderr)")
        let upgraded = try CLI.run(["rebuild-index", dir])
        #expect(upgraded.status == 0, "\(upgraded.stderr)")
        #expect(try upgraded.json()["versions"] as? Int == 4)
        let key = try String(contentsOfFile: fixture + "/verifier.key", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let proof = try CLI.run(["prove", "key", dir, "--key", "record/5"])
        #expect(try CLI.run(["verify-proof", "--checkpoint", fixture + "/checkpoint.note", "--key", key], stdin: proof.stdout).status == 0,
                "the checkpoint signed before the upgrade verifies the upgraded ledger's proof")
        #expect(try CLI.run(["verify", dir, "--checkpoint", fixture + "/checkpoint.note"]).status == 0)
    }

    @Test func singleAppendGetAndExitCodes() throws {
        let dir = scratch("single")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(try CLI.run(["init", dir, "--origin", "o.example"]).status == 0)
        #expect(try CLI.run(["init", dir, "--origin", "o.example"]).status != 0, "no second ledger in one directory")

        let set = try CLI.run(["append", dir, "--key", "patient/1"], stdin: Data([0, 1, 2, 255]))
        #expect(set.status == 0)
        let setJSON = try set.json()
        #expect(setJSON["index"] as? Int == 0 && setJSON["tree_size"] as? Int == 1)
        #expect(setJSON["leaf_hash"] as? String == SHA256.hash([0, 1, 0, 0, 9] + Array("patient/1".utf8) + [0, 1, 2, 255]).hex)

        let delete = try CLI.run(["append", dir, "--key", "patient/1", "--delete"], stdin: Data())
        #expect(delete.status == 0)

        let raw = try CLI.run(["get", dir, "--index", "0"])
        #expect(raw.status == 0 && raw.stdout == Data([0, 1, 2, 255]))
        let json = try CLI.run(["get", dir, "--index", "1", "--json"]).json()
        #expect(json["op"] as? String == "delete" && json["key"] as? String == "patient/1" && json["payload"] as? String == "")

        // Exit codes: not found 3, usage 2.
        #expect(try CLI.run(["get", dir, "--index", "2"]).status == 3)
        #expect(try CLI.run(["get", dir + "-missing", "--index", "0"]).status == 3)
        #expect(try CLI.run(["prove", "inclusion", dir, "--index", "9"]).status == 3)
        #expect(try CLI.run(["prove", "inclusion", dir]).status == 2)
        #expect(try CLI.run(["append", dir, "--delete"]).status == 2)
        #expect(try CLI.run(["get", dir, "--index", "-1"]).status == 2)
        #expect(try CLI.run(["no-such-command"]).status == 2)
        #expect(try CLI.run(["verify-proof"], stdin: Data("not json".utf8)).status == 2)
        #expect(try CLI.run(["verify-proof"], stdin: Data("{\"type\":\"inclusion\"}".utf8)).status == 2)
        #expect(try CLI.run(["--help"]).status == 0)
    }
}
