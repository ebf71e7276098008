import Foundation
import Testing
import LedgerCrypto
import MedLedger
import MerkleLog
import SparseMerkle
import TestSupport

/// Reader threads during continuous writes: each reader takes a signed checkpoint and proves
/// against it (inclusion, key presence and absence, consistency with its previous one); every
/// proof must verify against that checkpoint, sizes only grow, and no reader sees a size that
/// is not a commit boundary.
@Suite struct ConcurrencyTests {
    @Test func readersProveAgainstTheirCheckpointWhileAWriterAppends() throws {
        let path = ledgerPath("concurrency")
        defer { try? FileManager.default.removeItem(atPath: path) }
        var options = Ledger.Options()
        options.durable = false
        let (ledger, verifierText) = try Ledger.create(at: path, origin: "concurrency.example/ledger", options: options)
        let verifier = try NoteVerifier(parsing: verifierText)
        let batch = 50, batches = 200
        _ = try ledger.append((0..<batch).map { try LedgerEntry(set: "k\($0)", payload: [UInt8($0)]) })

        let writerDone = ManagedAtomicFlag()
        let failures = FailureLog()
        let readers = 6
        // Threads of their own: a pool sized to the cores could run the readers first and the
        // writer never.
        let writer = Thread {
            defer { writerDone.set() }
            do {
                for b in 1..<batches {
                    _ = try ledger.append((0..<batch).map { i in
                        i % 10 == 9 ? try LedgerEntry(delete: "k\((b * 7 + i) % 500)")
                                    : try LedgerEntry(set: "k\((b * 13 + i) % 500)", payload: Array("\(b).\(i)".utf8))
                    })
                }
            } catch { failures.add("writer: \(error)") }
        }
        writer.start()
        let group = DispatchGroup()
        for worker in 0..<readers {
            group.enter()
            Thread {
                defer { group.leave() }
                var rng = SplitMix64(seed: UInt64(worker))
                var previous: Checkpoint?
                var rounds = 0
                while !writerDone.isSet || rounds < 5 {
                    rounds += 1
                    do {
                        let (note, checkpoint) = try ledger.signedCheckpointAndState()
                        _ = try SignedCheckpoint(verifying: note, verifiers: [verifier], origin: ledger.origin)
                        if checkpoint.size % UInt64(batch) != 0 { failures.add("size \(checkpoint.size) is not a commit boundary") }
                        let index = rng.next() % checkpoint.size
                        let inclusion = try ledger.inclusionProof(index: index, size: checkpoint.size)
                        try ProofDocument.inclusion(.init(proof: inclusion.proof, leafHash: inclusion.leafHash, rootHash: inclusion.rootHash))
                            .verify(against: checkpoint)
                        for key in ["k\(rng.next() % 500)", "absent-\(rng.next())"] {
                            let (proof, mapRoot, size) = try ledger.keyProof(key: key, size: checkpoint.size)
                            try ProofDocument.key(.init(key: key, treeSize: size, mapRoot: mapRoot, proof: proof)).verify(against: checkpoint)
                        }
                        if let previous {
                            if checkpoint.size < previous.size { failures.add("size went back from \(previous.size) to \(checkpoint.size)") }
                            let consistency = try ledger.consistencyProof(oldSize: previous.size, newSize: checkpoint.size)
                            if consistency.oldRoot != previous.rootHash { failures.add("the old root changed at size \(previous.size)") }
                            try ProofDocument.consistency(.init(proof: consistency.proof, oldRoot: consistency.oldRoot, newRoot: consistency.newRoot))
                                .verify(against: checkpoint)
                        }
                        previous = checkpoint
                    } catch { failures.add("reader \(worker): \(error)") }
                }
            }.start()
        }
        group.wait()
        #expect(failures.all.isEmpty, "\(failures.all.prefix(5))")
        #expect(try ledger.size == UInt64(batch * batches))
        #expect(try ledger.verify().isValid)
    }
}
