import Foundation
import Testing
import LedgerCrypto
import TestSupport

/// The blob and DICOM commands end to end, as a script would drive them.
@Suite(.serialized) struct BlobCLITests {
    @Test func putGetRangeProveVerifyImportCollect() throws {
        let dir = scratch("blobs")
        let key = dir + ".master.key", source = dir + ".source", proofPath = dir + ".proof.json", out = dir + ".out", study = dir + ".study"
        defer { for p in [dir, key, source, proofPath, out, study] { try? FileManager.default.removeItem(atPath: p) } }
        let verifierKey = try CLI.run(["init", dir, "--origin", "test.example/blobs", "--master-key", key]).text
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let mk = ["--master-key", key]
        let p = ["--patient", "Patient/9"]
        #expect(try CLI.run(["patient", "add", dir, "--id", "Patient/9"] + mk).status == 0)
        var rng = SplitMix64(seed: 0xC11)
        let content = (0..<(700_000 / 8)).flatMap { _ in withUnsafeBytes(of: rng.next()) { Array($0) } }
        try Data(content).write(to: URL(fileURLWithPath: source))

        let put = try CLI.run(["blob", "put", dir, "--id", "ct-1", "--type", "application/dicom", "--chunk-size", "65536", source] + p + mk)
        #expect(put.status == 0, "\(put.stderr)")
        let manifest = try put.json()
        #expect(manifest["size"] as? Int == content.count && manifest["chunks"] as? Int == 11 && manifest["version"] as? Int == 1)
        let asPatient = ["--as", "Patient/9", "--role", "patient"]
        let whole = try CLI.run(["blob", "get", dir, "--id", "ct-1"] + p + mk + asPatient)
        #expect(whole.status == 0 && whole.stdout == Data(content))
        let range = try CLI.run(["blob", "get", dir, "--id", "ct-1", "--range", "1000-70000", "--out", out] + p + mk + asPatient)
        #expect(range.status == 0 && range.stdout.isEmpty)
        #expect(try Data(contentsOf: URL(fileURLWithPath: out)) == Data(content[1000...70000]))
        #expect(try CLI.run(["blob", "get", dir, "--id", "ct-1", "--range", "5-\(content.count)"] + p + mk + asPatient).status == 2)
        #expect(try CLI.run(["blob", "get", dir, "--id", "ct-1"] + p + mk + ["--as", "dr-x"]).status == 5)
        #expect(try CLI.run(["blob", "get", dir, "--id", "nope"] + p + mk + asPatient).status == 3)

        let proof = try CLI.run(["blob", "prove", dir, "--id", "ct-1", "--range", "60000-140000"] + p + mk + asPatient)
        #expect(proof.status == 0)
        try proof.stdout.write(to: URL(fileURLWithPath: proofPath))
        try? FileManager.default.removeItem(atPath: out)
        let verified = try CLI.run(["verify-proof", proofPath, "--key", verifierKey, "--out", out])
        #expect(verified.status == 0, "\(verified.stderr)")
        #expect(try verified.json()["valid"] as? Bool == true && verified.json()["length"] as? Int == 80001)
        #expect(try Data(contentsOf: URL(fileURLWithPath: out)) == Data(content[60000...140000]))
        #expect(try CLI.run(["verify-proof", proofPath]).status == 2)  // no verifier key
        #expect(try CLI.run(["verify-proof", proofPath, "--key", verifierKey, "--out", "-"]).status == 2)
        // --checkpoint must be the proof's own checkpoint: the note it embeds passes, a later one fails.
        let embedded = (try JSONSerialization.jsonObject(with: proof.stdout) as! [String: Any])["checkpoint"] as! String
        let notePath = dir + ".note"
        defer { try? FileManager.default.removeItem(atPath: notePath) }
        try Data(embedded.utf8).write(to: URL(fileURLWithPath: notePath))
        #expect(try CLI.run(["verify-proof", proofPath, "--key", verifierKey, "--checkpoint", notePath]).status == 0)
        _ = try CLI.run(["blob", "get", dir, "--id", "ct-1", "--info"] + p + mk + asPatient)  // one more audit entry
        try CLI.run(["checkpoint", dir]).stdout.write(to: URL(fileURLWithPath: notePath))
        #expect(try CLI.run(["verify-proof", proofPath, "--key", verifierKey, "--checkpoint", notePath]).status == 1)
        // A flipped bit in a sealed chunk fails verification (exit 1).
        var object = try JSONSerialization.jsonObject(with: proof.stdout) as! [String: Any]
        var chunks = object["chunks"] as! [[String: Any]]
        var box = Base64.decode(chunks[1]["box"] as! String)!
        box[100] ^= 0x80
        chunks[1]["box"] = Base64.encode(box)
        object["chunks"] = chunks
        let tampered = try CLI.run(["verify-proof", "--key", verifierKey], stdin: try JSONSerialization.data(withJSONObject: object))
        let tamperedValid = try tampered.json()["valid"] as? Bool
        #expect(tampered.status == 1 && tamperedValid == false)

        // A study folder with two instances and one file that is not DICOM.
        try FileManager.default.createDirectory(atPath: study, withIntermediateDirectories: true)
        for i in 0..<2 {
            var builder = DICOMFileBuilder()
            builder.instance = "1.2.3.\(i)"
            builder.pixels = 100_000
            try Data(builder.bytes()).write(to: URL(fileURLWithPath: study + "/IM\(i)"))
        }
        try Data("hello".utf8).write(to: URL(fileURLWithPath: study + "/notes.txt"))
        let imported = try CLI.run(["import-dicom", dir, study] + p + mk)
        #expect(imported.status == 2)
        let report = try imported.json()
        #expect(report["instances"] as? Int == 2)
        #expect((report["failures"] as? [[String: Any]])?.first?["file"] as? String == "notes.txt")
        #expect((report["studies"] as? [[String: Any]])?.first?["instances"] as? Int == 2)
        let instance = try CLI.run(["blob", "get", dir, "--id", "dicom/1.2.3.1", "--info"] + p + mk + asPatient)
        #expect(try instance.json()["media_type"] as? String == "application/dicom")

        let gc = try CLI.run(["blob", "gc", dir] + mk)
        let freed = try gc.json()["bytes_freed"] as? Int
        #expect(gc.status == 0 && freed == 0)
        #expect(try CLI.run(["verify", dir]).status == 0)
    }
}
