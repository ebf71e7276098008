import Foundation
public import LedgerCrypto

/// A C2SP tlog-checkpoint body: origin, tree size, root hash and extension lines.
///
/// MedLedger's checkpoints carry one extension, `map <base64 sparse-tree root>`, binding the
/// key map's root at the same size (see ``mapRoot``).
///
/// For example:
/// ```swift
/// let checkpoint = Checkpoint(origin: "example.org/ledger", size: 8, rootHash: root, extensions: ["map " + mapRoot.base64])
/// let note = try signer.sign(checkpoint.text)
/// ```
public struct Checkpoint: Sendable, Hashable {
    public let origin: String
    public let size: UInt64
    public let rootHash: Hash
    /// Extension lines, in order, without newlines.
    public let extensions: [String]

    public init(origin: String, size: UInt64, rootHash: Hash, extensions: [String] = []) {
        self.origin = origin
        self.size = size
        self.rootHash = rootHash
        self.extensions = extensions
    }

    /// A checkpoint carrying the `map` extension line.
    public init(origin: String, size: UInt64, rootHash: Hash, mapRoot: Hash) {
        self.init(origin: origin, size: size, rootHash: rootHash, extensions: ["map \(mapRoot.base64)"])
    }

    /// The root hash from the `map` extension line, if present and well formed.
    public var mapRoot: Hash? {
        for line in extensions where line.hasPrefix("map ") {
            if let raw = Base64.decode(line.dropFirst(4)), let hash = Hash(raw) { return hash }
            return nil
        }
        return nil
    }

    /// The body text that gets signed.
    public var text: String {
        var out = "\(origin)\n\(size)\n\(rootHash.base64)\n"
        for line in extensions { out += line + "\n" }
        return out
    }

    /// Parses checkpoint body text.
    /// - Throws: ``MerkleLogError`` `.malformed`.
    public init(parsing text: String) throws {
        guard text.hasSuffix("\n") else { throw MerkleLogError.malformed("checkpoint must end with a newline") }
        let lines = text.dropLast().split(separator: "\n", omittingEmptySubsequences: false)
        guard lines.count >= 3 else { throw MerkleLogError.malformed("checkpoint needs origin, size and root lines") }
        guard !lines[0].isEmpty else { throw MerkleLogError.malformed("checkpoint origin is empty") }
        let sizeText = lines[1]
        guard !sizeText.isEmpty, sizeText.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
              sizeText == "0" || !sizeText.hasPrefix("0"), let size = UInt64(sizeText) else {
            throw MerkleLogError.malformed("checkpoint size is not a canonical decimal number")
        }
        guard let raw = Base64.decode(lines[2]), let root = Hash(raw) else {
            throw MerkleLogError.malformed("checkpoint root is not base64 of 32 bytes")
        }
        let extensions = lines[3...].map(String.init)
        guard !extensions.contains(where: \.isEmpty) else { throw MerkleLogError.malformed("empty checkpoint extension line") }
        self.init(origin: String(lines[0]), size: size, rootHash: root, extensions: extensions)
    }
}

/// A checkpoint together with the signed note it came from.
public struct SignedCheckpoint: Sendable {
    public let checkpoint: Checkpoint
    public let note: SignedNote
    /// The full note text as received.
    public let noteText: String

    /// Parses and verifies a signed checkpoint note against `verifiers`; when `origin` is
    /// given, the checkpoint's origin must equal it.
    /// - Throws: ``MerkleLogError`` `.malformed` or `.verificationFailed`.
    public init(verifying noteText: String, verifiers: [NoteVerifier], origin: String? = nil) throws {
        let note = try SignedNote(parsing: noteText)
        try note.verify(with: verifiers)
        let checkpoint = try Checkpoint(parsing: note.text)
        if let origin, checkpoint.origin != origin {
            throw MerkleLogError(.verificationFailed, "checkpoint origin does not match")
        }
        self.checkpoint = checkpoint
        self.note = note
        self.noteText = noteText
    }
}
