// A ledger written by the previous MedLedger (format 1: key-map pages in the earlier layout)
// is refused with a clear error, then upgraded by rebuilding its key map from the log; the
// checkpoint it signed before the upgrade still verifies what the upgraded ledger proves.
//
// Tests/Fixtures/format1-ledger was made by the format-1 `medledger` (`init`, then
// `append --lines --keys --batch 50` of 150 entries over 80 keys, a delete of record/7, then
// `checkpoint` and two `prove key`), and compacted with `mdb_copy -c`. Its signer key is a test key.
import Foundation
import Testing
import LedgerCrypto
import MedLedger
import MerkleLog
import SparseMerkle

@Suite struct FormatUpgrade {
    static let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fixtures/format1-ledger").path

    /// A writable copy of the fixture.
    static func copy() throws -> String {
        let path = ledgerPath("format1")
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        for name in ["data.mdb", "signer.key", "verifier.key"] {
            try FileManager.default.copyItem(atPath: fixture + "/" + name, toPath: path + "/" + name)
        }
        return path
    }

    static func text(_ name: String) throws -> String { try String(contentsOfFile: fixture + "/" + name, encoding: .utf8) }

    @Test func aFormat1LedgerIsRefusedThenUpgradedKeepingEveryRoot() throws {
        let path = try Self.copy()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let verifier = try NoteVerifier(parsing: try Self.text("verifier.key"))
        let old = try SignedCheckpoint(verifying: try Self.text("checkpoint.note"), verifiers: [verifier]).checkpoint
        #expect(old.size == 151)

        // Opening it plainly names the way out instead of misreading its pages.
        do {
            _ = try Ledger(path: path)
            Issue.record("a format-1 ledger opened without an upgrade")
        } catch let error as LedgerError {
            #expect(error.code == .storage)
            #expect(error.message.contains("rebuild-index"), "\(error.message)")
        }

        try Self.upgradeAndProve(path: path, against: old)

        // The upgraded ledger opens plainly, appends, and a second upgrade has nothing to do.
        do {
            let reopened = try Ledger(path: path)
            try reopened.append([try LedgerEntry(set: "record/7", payload: Array("back".utf8))])
            #expect(try reopened.keyProof(key: "record/7").proof.isInclusion)
            #expect(try reopened.verify().isValid)
        }
        #expect(try Ledger.openUpgrading(path: path).1 == nil)
    }

    /// Upgrades the copy at `path` and checks its proofs against `old`, signed before.
    static func upgradeAndProve(path: String, against old: Checkpoint) throws {
        let (ledger, report) = try Ledger.openUpgrading(path: path)
        let upgrade = try #require(report)
        #expect(upgrade.versions == 4, "versions at 50, 100, 150 and 151")
        #expect(upgrade.mismatches.isEmpty)
        #expect(upgrade.mapRoot == old.mapRoot)
        #expect(try ledger.verify().isValid)

        // Proofs from the upgraded pages verify against the checkpoint signed before it.
        let (present, mapRoot, size) = try ledger.keyProof(key: "record/5")
        #expect(size == 151 && mapRoot == old.mapRoot && present.isInclusion)
        try ProofDocument.key(.init(key: "record/5", treeSize: size, mapRoot: mapRoot, proof: present)).verify(against: old)
        let (gone, _, _) = try ledger.keyProof(key: "record/7")
        #expect(!gone.isInclusion)
        try ProofDocument.key(.init(key: "record/7", treeSize: 151, mapRoot: mapRoot, proof: gone)).verify(against: old)
        // Old versions were rebuilt too: record/7 was present at size 100, as the format-1
        // ledger proved then.
        let then = try ProofDocument(json: Data(try Self.text("key7-at100.json").utf8))
        guard case .key(let earlier) = then else {
            Issue.record("not a key proof")
            return
        }
        let (rebuilt, rootAt100, _) = try ledger.keyProof(key: "record/7", size: 100)
        #expect(rebuilt == earlier.proof && rootAt100 == earlier.mapRoot)
        guard case .key(let five) = try ProofDocument(json: Data(try Self.text("key5.json").utf8)) else { return }
        #expect(five.proof == present)
    }
}
