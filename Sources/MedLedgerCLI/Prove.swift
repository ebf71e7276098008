import ArgumentParser
import Foundation
import LedgerCrypto
import MedLedger
import MerkleLog

struct Prove: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a proof as JSON.",
        subcommands: [InclusionCommand.self, ConsistencyCommand.self, KeyCommand.self])

    struct KeyCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "key",
            abstract: "Prove what --key maps to (or that it is absent) in the key map after --size entries.",
            discussion: """
            One key prints {"type":"key",...}; several (--key repeated, or --keys-from a file of \
            one key per line) print one multi-key proof, {"type":"keys",...}, whose shared \
            sibling hashes appear once.
            """)

        @OptionGroup var location: LedgerLocation
        @Option(help: "The key (UTF-8); repeat for a multi-key proof.") var key: [String] = []
        @Option(help: "A file of keys, one per line, for a multi-key proof ('-' for stdin).") var keysFrom: String?
        @Option(help: "The tree size; a size where an append committed (default: the current size).") var size: UInt64?

        func validate() throws {
            if key.isEmpty && keysFrom == nil { throw ValidationError("give --key or --keys-from") }
        }

        func run() throws {
            var keys = key
            if let keysFrom {
                let text = try readInput(keysFrom, limit: ProofDocument.maxSize)
                // Split on the newline byte: as Characters, "\r\n" is one and would not split.
                for var line in text.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: true) {
                    if line.last == UInt8(ascii: "\r") { line = line.dropLast() }
                    guard !line.isEmpty else { continue }
                    guard let key = String(validating: line, as: UTF8.self) else {
                        throw CLIError(.usage, "\(keysFrom) is not UTF-8")
                    }
                    keys.append(key)
                }
            }
            var options = Ledger.Options()
            options.readOnly = true
            let ledger = try Ledger(path: location.directory, options: options)
            let document: ProofDocument
            if keys.count == 1 && keysFrom == nil {
                let (proof, mapRoot, treeSize) = try ledger.keyProof(key: keys[0], size: size)
                document = .key(.init(key: keys[0], treeSize: treeSize, mapRoot: mapRoot, proof: proof))
            } else {
                let (proof, mapRoot, treeSize) = try ledger.keyProofs(keys: keys, size: size)
                document = .keys(try .init(keys: keys, treeSize: treeSize, mapRoot: mapRoot, proof: proof))
            }
            writeStdout(try document.jsonData() + Data("\n".utf8))
        }
    }

    struct InclusionCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "inclusion", abstract: "Prove that entry --index is in the tree of --size entries.")

        @OptionGroup var location: LedgerLocation
        @Option(help: "The entry index.") var index: UInt64
        @Option(help: "The tree size (default: the current size).") var size: UInt64?

        func run() throws {
            var options = Ledger.Options()
            options.readOnly = true
            let ledger = try Ledger(path: location.directory, options: options)
            let (proof, leaf, root) = try ledger.inclusionProof(index: index, size: size)
            let document = ProofDocument.inclusion(.init(proof: proof, leafHash: leaf, rootHash: root))
            writeStdout(try document.jsonData() + Data("\n".utf8))
        }
    }

    struct ConsistencyCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "consistency", abstract: "Prove that the tree of --old-size entries is a prefix of the tree of --size.")

        @OptionGroup var location: LedgerLocation
        @Option(help: "The older tree size.") var oldSize: UInt64
        @Option(help: "The newer tree size (default: the current size).") var size: UInt64?

        func run() throws {
            var options = Ledger.Options()
            options.readOnly = true
            let ledger = try Ledger(path: location.directory, options: options)
            let (proof, oldRoot, newRoot) = try ledger.consistencyProof(oldSize: oldSize, newSize: size)
            let document = ProofDocument.consistency(.init(proof: proof, oldRoot: oldRoot, newRoot: newRoot))
            writeStdout(try document.jsonData() + Data("\n".utf8))
        }
    }
}

struct VerifyProof: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify-proof",
        abstract: "Verify a proof offline, optionally against a signed checkpoint.",
        discussion: """
        Prints {"valid":true,...} and exits 0, or {"valid":false,"error":...} and exits 1. \
        Malformed input exits 2.
        """)

    @Argument(help: "The proof JSON file; stdin when absent or '-'.")
    var file: String?

    @Option(help: "A signed checkpoint note the proof must be anchored in.")
    var checkpoint: String?

    @Option(help: "The verifier key (name+id+key, or a file holding it) that signed --checkpoint.")
    var key: String?

    @Option(help: "A FHIR Bundle whose export proof bundle is the proof file (needs --key).")
    var bundle: String?

    @Option(help: "For a blob range proof: write the proven bytes to this file (mode 0600).")
    var out: String?

    func validate() throws {
        if checkpoint != nil && key == nil { throw ValidationError("--checkpoint needs --key") }
        if bundle != nil && key == nil { throw ValidationError("--bundle needs --key (the ledger's verifier key)") }
    }

    func run() throws {
        if let bundle {
            let proofData = try readInput(file, limit: PatientExport.maxSize)
            let bundleData = try readInput(bundle, limit: PatientExport.maxSize)
            do {
                let count = try PatientExport.verify(bundle: bundleData, proof: proofData, verifier: try loadVerifier(key!))
                try printJSON(["valid": true, "type": "export", "records": count, "checkpoint_verified": true])
            } catch let error as MerkleLogError where error.code == .verificationFailed {
                try printJSON(["valid": false, "type": "export", "error": error.message])
                throw ExitCode(ExitStatus.verificationFailed.rawValue)
            }
            return
        }
        let input = try readInput(file, limit: BlobRangeProof.maxSize)
        if input.count > ProofDocument.maxSize || input.range(of: Data(#""type":"blob-range""#.utf8)) != nil {
            try verifyBlobRange(input)
            return
        }
        let document = try ProofDocument(json: input)
        if key != nil && checkpoint == nil { throw CLIError(.usage, "--key needs --checkpoint for this proof type") }
        var anchor: Checkpoint? = nil
        if let checkpoint, let key {
            let verifier = try loadVerifier(key)
            let text = String(decoding: try readInput(checkpoint, limit: SignedNote.maxSize), as: UTF8.self)
            do {
                // A ledger's key is named after its origin: a checkpoint of another log fails.
                anchor = try SignedCheckpoint(verifying: text, verifiers: [verifier], origin: verifier.name).checkpoint
            } catch let error as MerkleLogError where error.code == .verificationFailed {
                try report(valid: false, document, error: "checkpoint: \(error.message)")
                throw ExitCode(ExitStatus.verificationFailed.rawValue)
            }
        }
        do {
            if let anchor { try document.verify(against: anchor) } else { try document.verify() }
        } catch let error as MerkleLogError where error.code == .verificationFailed {
            try report(valid: false, document, error: error.message)
            throw ExitCode(ExitStatus.verificationFailed.rawValue)
        }
        try report(valid: true, document, error: nil, checkpointed: anchor != nil)
    }

    /// A blob range proof carries its own signed checkpoint: only the verifier key is needed.
    private func verifyBlobRange(_ input: Data) throws {
        guard let key else { throw CLIError(.usage, "a blob range proof needs --key (the ledger's verifier key)") }
        guard out != "-" else { throw CLIError(.usage, "--out needs a file: stdout carries the JSON result") }
        let verifier = try loadVerifier(key)
        // With --checkpoint, the proof's own checkpoint must be that one (same size, roots, signer).
        var anchor: Checkpoint? = nil
        if let checkpoint {
            let text = String(decoding: try readInput(checkpoint, limit: SignedNote.maxSize), as: UTF8.self)
            do { anchor = try SignedCheckpoint(verifying: text, verifiers: [verifier], origin: verifier.name).checkpoint } catch let error as MerkleLogError
                where error.code == .verificationFailed {
                try printJSON(["valid": false, "type": "blob-range", "error": "checkpoint: \(error.message)"])
                throw ExitCode(ExitStatus.verificationFailed.rawValue)
            }
        }
        do {
            let verified = try BlobRangeProof.verify(input, verifier: verifier)
            if let anchor, anchor != verified.checkpoint {
                throw MerkleLogError(.verificationFailed, "blob range: the proof is anchored in another checkpoint (size \(verified.checkpoint.size)) than --checkpoint (size \(anchor.size))")
            }
            if let out {
                let fd = try openOutput(out)
                defer { if fd != 1 { close(fd) } }
                try verified.bytes.withUnsafeBytes { try writeAll(fd, $0) }
            }
            try printJSON([
                "valid": true, "type": "blob-range", "blob_hash": verified.blobHash.hex, "patient": verified.patient.hex,
                "version": Int(verified.version), "offset": verified.offset, "length": verified.bytes.count,
                "blob_size": verified.blobSize, "root": verified.blobRoot.hex, "media_type": verified.mediaType,
                "tree_size": verified.checkpoint.size, "latest": verified.isLatest, "checkpoint_verified": true,
            ])
        } catch let error as MerkleLogError where error.code == .verificationFailed {
            try printJSON(["valid": false, "type": "blob-range", "error": error.message])
            throw ExitCode(ExitStatus.verificationFailed.rawValue)
        }
    }

    private func report(valid: Bool, _ document: ProofDocument, error: String?, checkpointed: Bool = false) throws {
        var out: [String: Any] = ["valid": valid]
        switch document {
        case .inclusion(let i):
            out["type"] = "inclusion"
            out["tree_size"] = i.proof.treeSize
            out["leaf_index"] = i.proof.leafIndex
        case .consistency(let c):
            out["type"] = "consistency"
            out["old_size"] = c.proof.oldSize
            out["new_size"] = c.proof.newSize
        case .key(let k):
            out["type"] = "key"
            out["key"] = k.key
            out["tree_size"] = k.treeSize
            out["present"] = k.proof.isInclusion
        case .keys(let k):
            out["type"] = "keys"
            out["tree_size"] = k.treeSize
            out["keys"] = k.keys.count
            out["present"] = k.proof.values.filter { $0 != nil }.count
        }
        if checkpointed { out["checkpoint_verified"] = true }
        if let error { out["error"] = error }
        try printJSON(out)
    }
}
