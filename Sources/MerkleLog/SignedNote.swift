import Foundation
public import LedgerCrypto

/// The key id of a signed-note key: the first 4 bytes of SHA-256(name || 0x0A || 0x01 || public key),
/// read big-endian.
public func noteKeyID(name: String, publicKey: [UInt8]) -> UInt32 {
    var bytes = Array(name.utf8)
    bytes.append(0x0A)
    bytes.append(0x01)
    bytes.append(contentsOf: publicKey)
    let hash = SHA256.hash(bytes).bytes
    return UInt32(hash[0]) << 24 | UInt32(hash[1]) << 16 | UInt32(hash[2]) << 8 | UInt32(hash[3])
}

/// Whether `name` may name a note key: non-empty, no whitespace, no `+`.
func isValidKeyName(_ name: some StringProtocol) -> Bool {
    !name.isEmpty && !name.unicodeScalars.contains { $0 == "+" || $0.properties.isWhitespace }
}

func hex8(_ id: UInt32) -> String {
    let s = String(id, radix: 16)
    return String(repeating: "0", count: 8 - s.count) + s
}

/// A public key that verifies signed notes, in the Go sumdb note form
/// `<name>+<8 hex key id>+<base64(0x01 || Ed25519 public key)>`.
///
/// For example:
/// ```swift
/// let verifier = try NoteVerifier(parsing: "example.com/log+1a2b3c4d+AX...")
/// ```
public struct NoteVerifier: Sendable, Hashable, CustomStringConvertible {
    public let name: String
    public let keyID: UInt32
    public let publicKey: Ed25519PublicKey

    /// A verifier for `publicKey` under `name`.
    public init(name: String, publicKey: Ed25519PublicKey) throws {
        guard isValidKeyName(name) else { throw MerkleLogError.malformed("invalid key name") }
        self.name = name
        self.publicKey = publicKey
        self.keyID = noteKeyID(name: name, publicKey: publicKey.rawRepresentation)
    }

    /// Parses `<name>+<hex id>+<base64(0x01 || key)>`, checking that the id matches.
    /// - Throws: ``MerkleLogError`` `.malformed` for any deviation.
    public init(parsing text: String) throws {
        let text = text.trimmingCharacters(in: .whitespacesAndNewlines)
        // The base64 key may itself contain '+': split off the first two fields only.
        let parts = text.split(separator: "+", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3 else { throw MerkleLogError.malformed("verifier key must be name+id+key") }
        guard isValidKeyName(parts[0]) else { throw MerkleLogError.malformed("invalid key name in verifier key") }
        guard parts[1].count == 8, let id = UInt32(parts[1], radix: 16) else {
            throw MerkleLogError.malformed("verifier key id must be 8 hex digits")
        }
        guard let raw = Base64.decode(parts[2]), raw.count == 33, raw[0] == 0x01 else {
            throw MerkleLogError.malformed("verifier key must be base64 of 0x01 and a 32-byte Ed25519 key")
        }
        let key: Ed25519PublicKey
        do { key = try Ed25519PublicKey(rawRepresentation: Array(raw[1...])) } catch {
            throw MerkleLogError.malformed("verifier key is not a valid Ed25519 key")
        }
        try self.init(name: String(parts[0]), publicKey: key)
        guard keyID == id else { throw MerkleLogError.malformed("verifier key id does not match its name and key") }
    }

    /// The `<name>+<hex id>+<base64>` form.
    public var description: String {
        "\(name)+\(hex8(keyID))+\(Base64.encode([0x01] + publicKey.rawRepresentation))"
    }
}

/// A private key that signs notes. Its text form, written to key files, is Go's
/// `PRIVATE+KEY+<name>+<hex id>+<base64(0x01 || seed)>`.
///
/// Thread safety: immutable; safe to share.
public final class NoteSigner: Sendable {
    public let name: String
    public let keyID: UInt32
    let key: Ed25519PrivateKey

    /// A signer for `key` under `name`.
    public init(name: String, key: Ed25519PrivateKey) throws {
        guard isValidKeyName(name) else { throw MerkleLogError.malformed("invalid key name") }
        self.name = name
        self.key = key
        self.keyID = noteKeyID(name: name, publicKey: key.publicKey.rawRepresentation)
    }

    /// A signer with a new random key.
    public convenience init(generatingFor name: String) throws {
        try self.init(name: name, key: try Ed25519PrivateKey())
    }

    /// Parses the `PRIVATE+KEY+…` form.
    /// - Throws: ``MerkleLogError`` `.malformed` (the message never contains key material).
    public convenience init(parsing text: String) throws {
        let text = text.trimmingCharacters(in: .whitespacesAndNewlines)
        let parts = text.split(separator: "+", maxSplits: 4, omittingEmptySubsequences: false)
        guard parts.count == 5, parts[0] == "PRIVATE", parts[1] == "KEY" else {
            throw MerkleLogError.malformed("signer key must be PRIVATE+KEY+name+id+key")
        }
        guard isValidKeyName(parts[2]) else { throw MerkleLogError.malformed("invalid key name in signer key") }
        guard parts[3].count == 8, let id = UInt32(parts[3], radix: 16) else {
            throw MerkleLogError.malformed("signer key id must be 8 hex digits")
        }
        guard var raw = Base64.decode(parts[4]), raw.count == 33, raw[0] == 0x01 else {
            throw MerkleLogError.malformed("signer key must be base64 of 0x01 and a 32-byte Ed25519 seed")
        }
        defer { secureZero(&raw) }
        let key = try Ed25519PrivateKey(seed: Array(raw[1...]))
        try self.init(name: String(parts[2]), key: key)
        guard keyID == id else { throw MerkleLogError.malformed("signer key id does not match its name and key") }
    }

    /// The matching verifier.
    public var verifier: NoteVerifier {
        // The name was validated and the key is valid, so this cannot fail.
        try! NoteVerifier(name: name, publicKey: key.publicKey)
    }

    /// The secret text form, for a key file written with mode 0600. Never log it.
    public func secretKeyText() -> String {
        key.withSeed { seed in
            var raw = [UInt8](repeating: 0x01, count: 1) + Array(seed)
            defer { secureZero(&raw) }
            return "PRIVATE+KEY+\(name)+\(hex8(keyID))+\(Base64.encode(raw))"
        }
    }

    /// The signature line (without newline) for note body `text`: `— <name> <base64(id || sig)>`.
    public func signatureLine(for text: String) throws -> String {
        let signature = try key.signature(for: Array(text.utf8))
        let id = [UInt8(keyID >> 24), UInt8(keyID >> 16 & 0xff), UInt8(keyID >> 8 & 0xff), UInt8(keyID & 0xff)]
        return "\u{2014} \(name) \(Base64.encode(id + signature))"
    }

    /// Signs `text` (which must end with a newline) into a complete note.
    public func sign(_ text: String) throws -> String {
        guard text.hasSuffix("\n") else { throw MerkleLogError.malformed("note text must end with a newline") }
        return text + "\n" + (try signatureLine(for: text)) + "\n"
    }
}

/// A signed note (C2SP signed-note): text, a blank line, and signature lines.
///
/// Parsed notes keep the exact signed text. Parsing accepts at most 16 signature lines;
/// signatures by unknown keys are kept but unverified.
public struct SignedNote: Sendable {
    /// A signature line.
    public struct Signature: Sendable, Hashable {
        public let name: String
        public let keyID: UInt32
        /// The signature bytes after the 4-byte key id.
        public let signature: [UInt8]
    }

    /// Largest note accepted, in bytes.
    public static let maxSize = 1 << 20
    /// Most signature lines accepted.
    public static let maxSignatures = 16

    /// The signed text, ending with a newline.
    public let text: String
    public let signatures: [Signature]

    /// Splits a note into text and signatures without verifying.
    /// - Throws: ``MerkleLogError`` `.malformed`.
    public init(parsing note: String) throws {
        let bytes = Array(note.utf8)
        guard bytes.count <= Self.maxSize else { throw MerkleLogError.malformed("note larger than \(Self.maxSize) bytes") }
        for scalar in note.unicodeScalars where scalar.value < 0x20 && scalar != "\n" {
            throw MerkleLogError.malformed("note contains a control character")
        }
        // The text ends at the last blank line.
        var split: Int? = nil
        var i = bytes.count - 2
        while i >= 0 {
            if bytes[i] == 0x0A && bytes[i + 1] == 0x0A { split = i; break }
            i -= 1
        }
        guard let split else { throw MerkleLogError.malformed("note has no blank line before its signatures") }
        let text = String(decoding: bytes[...split], as: UTF8.self)
        let signatureBlock = bytes[(split + 2)...]
        guard signatureBlock.last == 0x0A else { throw MerkleLogError.malformed("note signatures must end with a newline") }
        var signatures: [Signature] = []
        for line in String(decoding: signatureBlock.dropLast(), as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false) {
            guard line.hasPrefix("\u{2014} ") else { throw MerkleLogError.malformed("signature line must start with an em dash") }
            let fields = line.dropFirst(2).split(separator: " ", omittingEmptySubsequences: false)
            guard fields.count == 2, isValidKeyName(fields[0]) else { throw MerkleLogError.malformed("malformed signature line") }
            guard let raw = Base64.decode(fields[1]), raw.count >= 5 else {
                throw MerkleLogError.malformed("signature is not base64 of a key id and signature")
            }
            let id = UInt32(raw[0]) << 24 | UInt32(raw[1]) << 16 | UInt32(raw[2]) << 8 | UInt32(raw[3])
            signatures.append(Signature(name: String(fields[0]), keyID: id, signature: Array(raw[4...])))
            guard signatures.count <= Self.maxSignatures else {
                throw MerkleLogError.malformed("more than \(Self.maxSignatures) signatures")
            }
        }
        self.text = text
        self.signatures = signatures
    }

    /// Verifies the note with `verifiers`: at least one signature must be by a known key and
    /// every signature by a known key must verify. Unknown keys are ignored.
    /// - Returns: the verifiers whose signatures verified.
    /// - Throws: ``MerkleLogError`` `.verificationFailed`.
    @discardableResult
    public func verify(with verifiers: [NoteVerifier]) throws -> [NoteVerifier] {
        var verified: [NoteVerifier] = []
        var seen = Set<String>()
        let message = Array(text.utf8)
        for signature in signatures {
            guard let verifier = verifiers.first(where: { $0.name == signature.name && $0.keyID == signature.keyID }) else {
                continue
            }
            guard seen.insert("\(signature.name)+\(signature.keyID)").inserted else {
                throw MerkleLogError(.verificationFailed, "duplicate signature by \(signature.name)")
            }
            guard verifier.publicKey.isValidSignature(signature.signature, for: message) else {
                throw MerkleLogError(.verificationFailed, "invalid signature by \(signature.name)")
            }
            verified.append(verifier)
        }
        guard !verified.isEmpty else { throw MerkleLogError(.verificationFailed, "no signature by a known key") }
        return verified
    }
}
