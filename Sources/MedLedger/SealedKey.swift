import LedgerCrypto

/// A patient's data key of one key epoch, sealed to a grantee's X25519 key so the grantee can
/// decrypt that patient's record boxes (for example from an export) without the ledger.
///
/// Sealing (an ECIES construction): a fresh ephemeral X25519 key pair `e`; `shared =
/// X25519(e, grantee)`; `kek = HKDF-SHA-256(ikm: shared, salt: e.public || grantee.public,
/// info: label, 32 bytes)`; `sealed = e.public || AES-256-GCM(kek, data key, aad: label)` with
/// `label = "medledger-sealed-key/1|<pseudonym hex>|<grantee>|<epoch>"`, 92 bytes in all.
public struct SealedPatientKey: Sendable, Hashable {
    /// The patient's pseudonym.
    public let pseudonym: Hash
    public let grantee: String
    /// The key epoch: records whose entries carry this `key_epoch` open with this key.
    public let epoch: UInt32
    /// `ephemeral public key (32) || nonce (12) || sealed key (32) || tag (16)`.
    public let sealed: [UInt8]

    public init(pseudonym: Hash, grantee: String, epoch: UInt32, sealed: [UInt8]) {
        self.pseudonym = pseudonym
        self.grantee = grantee
        self.epoch = epoch
        self.sealed = sealed
    }

    static func label(_ p: Hash, _ grantee: String, _ epoch: UInt32) -> [UInt8] {
        Array("medledger-sealed-key/1|\(p.hex)|\(grantee)|\(epoch)".utf8)
    }

    /// Seals `dataKey` to `recipient`.
    static func seal(_ dataKey: SecureBytes, to recipient: X25519PublicKey, pseudonym p: Hash, grantee: String,
                     epoch: UInt32) throws -> SealedPatientKey {
        let ephemeral = try X25519PrivateKey()
        let label = Self.label(p, grantee, epoch)
        let kek = try HKDFSHA256.deriveKey(inputKey: try ephemeral.sharedSecret(with: recipient),
                                           salt: ephemeral.publicKey.rawRepresentation + recipient.rawRepresentation,
                                           info: label, count: 32)
        var raw = dataKey.withUnsafeBytes { Array($0) }
        defer { secureZero(&raw) }
        let box = try AESGCM.seal(raw, key: kek, associatedData: label)
        return SealedPatientKey(pseudonym: p, grantee: grantee, epoch: epoch, sealed: ephemeral.publicKey.rawRepresentation + box)
    }

    /// Opens the sealed key with the grantee's private key.
    /// - Throws: ``LedgerError`` `.badSignature` when the key, the grantee, the patient or the
    ///   epoch differ from those sealed, or the bytes were altered.
    public func open(with privateKey: X25519PrivateKey) throws -> SecureBytes {
        guard sealed.count == 32 + AESGCM.overhead + 32 else {
            throw LedgerError(.invalidArgument, "a sealed key is \(32 + AESGCM.overhead + 32) bytes, not \(sealed.count)")
        }
        do {
            let ephemeral = try X25519PublicKey(rawRepresentation: Array(sealed[0..<32]))
            let label = Self.label(pseudonym, grantee, epoch)
            let kek = try HKDFSHA256.deriveKey(inputKey: try privateKey.sharedSecret(with: ephemeral),
                                               salt: ephemeral.rawRepresentation + privateKey.publicKey.rawRepresentation,
                                               info: label, count: 32)
            var raw = try AESGCM.open(Array(sealed[32...]), key: kek, associatedData: label)
            defer { secureZero(&raw) }
            return raw.withUnsafeBytes { SecureBytes(copying: $0) }
        } catch {
            throw LedgerError(.badSignature, "the sealed key does not open with this private key (or was altered)")
        }
    }
}
