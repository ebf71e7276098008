internal import CCrypto

/// An Ed25519 public key (RFC 8032), 32 bytes.
///
/// For example:
/// ```swift
/// let key = try Ed25519PrivateKey()
/// let signature = try key.signature(for: Array("checkpoint".utf8))
/// assert(key.publicKey.isValidSignature(signature, for: Array("checkpoint".utf8)))
/// ```
public struct Ed25519PublicKey: Sendable, Hashable {
    /// The raw 32-byte key.
    public let rawRepresentation: [UInt8]

    /// Wraps 32 raw bytes.
    /// - Throws: ``CryptoError`` `.invalidInput` for any other length or a point OpenSSL rejects.
    public init(rawRepresentation: [UInt8]) throws {
        guard rawRepresentation.count == 32 else { throw CryptoError.invalid("Ed25519 public key length") }
        let pkey = rawRepresentation.withUnsafeBufferPointer {
            EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nil, $0.baseAddress, 32)
        }
        guard let pkey else { throw CryptoError.openSSL("EVP_PKEY_new_raw_public_key") }
        EVP_PKEY_free(pkey)
        self.rawRepresentation = rawRepresentation
    }

    /// Whether `signature` (64 bytes) is a valid signature of `message` (`EVP_DigestVerify`).
    /// Returns false, never throws, for malformed signatures.
    public func isValidSignature(_ signature: [UInt8], for message: UnsafeRawBufferPointer) -> Bool {
        guard signature.count == 64 else { return false }
        guard let pkey = rawRepresentation.withUnsafeBufferPointer({
            EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nil, $0.baseAddress, 32)
        }) else { ERR_clear_error(); return false }
        defer { EVP_PKEY_free(pkey) }
        guard let ctx = EVP_MD_CTX_new() else { ERR_clear_error(); return false }
        defer { EVP_MD_CTX_free(ctx) }
        guard EVP_DigestVerifyInit(ctx, nil, nil, nil, pkey) == 1 else { ERR_clear_error(); return false }
        let rc = signature.withUnsafeBufferPointer { sig in
            EVP_DigestVerify(ctx, sig.baseAddress, 64, message.baseAddress?.assumingMemoryBound(to: UInt8.self), message.count)
        }
        if rc != 1 { ERR_clear_error() }
        return rc == 1
    }

    /// Whether `signature` is a valid signature of `message`.
    public func isValidSignature(_ signature: [UInt8], for message: [UInt8]) -> Bool {
        message.withUnsafeBytes { isValidSignature(signature, for: $0) }
    }
}

/// An Ed25519 private key. The 32-byte seed lives in ``SecureBytes`` and is wiped on release.
///
/// Thread safety: immutable; signing may run on several threads at once.
public final class Ed25519PrivateKey: @unchecked Sendable, CustomStringConvertible {
    // Sendable: all stored properties are immutable; EVP_PKEY is reference counted and
    // OpenSSL allows concurrent signing with one key from separate EVP_MD_CTXs.
    private let seed: SecureBytes
    private let pkey: OpaquePointer
    /// The matching public key.
    public let publicKey: Ed25519PublicKey

    /// A new random key.
    public convenience init() throws {
        let seed = try SecureBytes(randomCount: 32)
        try self.init(secureSeed: seed)
    }

    /// A key from its 32-byte seed (RFC 8032 private key).
    /// - Throws: ``CryptoError`` `.invalidInput` for any other length.
    public convenience init(seed: [UInt8]) throws {
        guard seed.count == 32 else { throw CryptoError.invalid("Ed25519 seed length") }
        try self.init(secureSeed: seed.withUnsafeBytes { SecureBytes(copying: $0) })
    }

    private init(secureSeed: SecureBytes) throws {
        guard secureSeed.count == 32 else { throw CryptoError.invalid("Ed25519 seed length") }
        guard let pkey = secureSeed.withUnsafeBytes({
            EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, nil, $0.baseAddress?.assumingMemoryBound(to: UInt8.self), 32)
        }) else { throw CryptoError.openSSL("EVP_PKEY_new_raw_private_key") }
        var publicBytes = [UInt8](repeating: 0, count: 32)
        var length = 32
        guard EVP_PKEY_get_raw_public_key(pkey, &publicBytes, &length) == 1, length == 32 else {
            EVP_PKEY_free(pkey)
            throw CryptoError.openSSL("EVP_PKEY_get_raw_public_key")
        }
        self.seed = secureSeed
        self.pkey = pkey
        self.publicKey = try Ed25519PublicKey(rawRepresentation: publicBytes)
    }

    deinit { EVP_PKEY_free(pkey) }

    /// Lends the 32-byte seed, e.g. to write a key file. Do not copy it out.
    public func withSeed<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try seed.withUnsafeBytes(body)
    }

    /// Signs `message` (`EVP_DigestSign`), returning the 64-byte signature.
    public func signature(for message: UnsafeRawBufferPointer) throws -> [UInt8] {
        guard let ctx = EVP_MD_CTX_new() else { throw CryptoError.openSSL("EVP_MD_CTX_new") }
        defer { EVP_MD_CTX_free(ctx) }
        guard EVP_DigestSignInit(ctx, nil, nil, nil, pkey) == 1 else { throw CryptoError.openSSL("EVP_DigestSignInit") }
        var signature = [UInt8](repeating: 0, count: 64)
        var length = 64
        let rc = EVP_DigestSign(ctx, &signature, &length, message.baseAddress?.assumingMemoryBound(to: UInt8.self), message.count)
        guard rc == 1, length == 64 else { throw CryptoError.openSSL("EVP_DigestSign") }
        return signature
    }

    /// Signs `message`, returning the 64-byte signature.
    public func signature(for message: [UInt8]) throws -> [UInt8] {
        try message.withUnsafeBytes { try signature(for: $0) }
    }

    public var description: String { "Ed25519PrivateKey(public: \(Hex.encode(publicKey.rawRepresentation)))" }
}
