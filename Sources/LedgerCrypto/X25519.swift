internal import CCrypto

/// An X25519 public key (RFC 7748): 32 bytes.
public struct X25519PublicKey: Sendable, Hashable {
    /// The 32-byte encoding.
    public let rawRepresentation: [UInt8]

    /// - Throws: ``CryptoError`` `.invalidInput` for a length other than 32.
    public init(rawRepresentation: [UInt8]) throws {
        guard rawRepresentation.count == 32 else { throw CryptoError.invalid("X25519 public key length \(rawRepresentation.count)") }
        self.rawRepresentation = rawRepresentation
    }
}

/// An X25519 private key; its 32 bytes live in ``SecureBytes`` and are wiped on release.
///
/// Thread safety: immutable; key agreement may run on several threads at once.
public final class X25519PrivateKey: @unchecked Sendable, CustomStringConvertible {
    // Sendable: immutable after init; EVP_PKEY is reference counted and each derivation
    // uses its own EVP_PKEY_CTX.
    private let secret: SecureBytes
    private let pkey: OpaquePointer
    /// The matching public key.
    public let publicKey: X25519PublicKey

    /// A new random key.
    public convenience init() throws {
        try self.init(secret: try SecureBytes(randomCount: 32))
    }

    /// A key from its 32-byte encoding (RFC 7748; clamping is applied by the algorithm).
    public convenience init(rawRepresentation: [UInt8]) throws {
        guard rawRepresentation.count == 32 else { throw CryptoError.invalid("X25519 private key length") }
        try self.init(secret: rawRepresentation.withUnsafeBytes { SecureBytes(copying: $0) })
    }

    private init(secret: SecureBytes) throws {
        guard let pkey = secret.withUnsafeBytes({
            EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, nil, $0.baseAddress?.assumingMemoryBound(to: UInt8.self), 32)
        }) else { throw CryptoError.openSSL("EVP_PKEY_new_raw_private_key X25519") }
        var publicBytes = [UInt8](repeating: 0, count: 32)
        var length = 32
        guard EVP_PKEY_get_raw_public_key(pkey, &publicBytes, &length) == 1, length == 32 else {
            EVP_PKEY_free(pkey)
            throw CryptoError.openSSL("EVP_PKEY_get_raw_public_key X25519")
        }
        self.secret = secret
        self.pkey = pkey
        self.publicKey = try X25519PublicKey(rawRepresentation: publicBytes)
    }

    deinit { EVP_PKEY_free(pkey) }

    /// Lends the 32-byte private key, e.g. to write a key file. Do not copy it out.
    public func withRawRepresentation<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try secret.withUnsafeBytes(body)
    }

    /// The shared secret with `peer` (`EVP_PKEY_derive`).
    /// - Throws: ``CryptoError`` when OpenSSL refuses, including for a peer key whose shared
    ///   secret would be all zeros (a small-order point, RFC 7748 section 6.1).
    public func sharedSecret(with peer: X25519PublicKey) throws -> SecureBytes {
        guard let peerKey = peer.rawRepresentation.withUnsafeBytes({
            EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, nil, $0.baseAddress?.assumingMemoryBound(to: UInt8.self), 32)
        }) else { throw CryptoError.openSSL("EVP_PKEY_new_raw_public_key X25519") }
        defer { EVP_PKEY_free(peerKey) }
        guard let ctx = EVP_PKEY_CTX_new(pkey, nil) else { throw CryptoError.openSSL("EVP_PKEY_CTX_new") }
        defer { EVP_PKEY_CTX_free(ctx) }
        var shared = [UInt8](repeating: 0, count: 32)
        defer { secureZero(&shared) }
        var length = 32
        guard EVP_PKEY_derive_init(ctx) == 1, EVP_PKEY_derive_set_peer(ctx, peerKey) == 1,
              EVP_PKEY_derive(ctx, &shared, &length) == 1, length == 32 else {
            ERR_clear_error()
            throw CryptoError(code: .invalidInput, operation: "X25519 key agreement")
        }
        // OpenSSL refuses an all-zero result already; the check here does not depend on that.
        guard shared.contains(where: { $0 != 0 }) else { throw CryptoError(code: .invalidInput, operation: "X25519 small-order peer key") }
        return shared.withUnsafeBytes { SecureBytes(copying: $0) }
    }

    public var description: String { "X25519PrivateKey(public: \(Hex.encode(publicKey.rawRepresentation)))" }
}

/// HKDF with SHA-256 (RFC 5869), built on ``HMACSHA256``.
public enum HKDFSHA256 {
    /// `count` bytes (at most 255 * 32) derived from `inputKey` with `salt` and `info`.
    public static func deriveKey(inputKey: SecureBytes, salt: [UInt8], info: [UInt8], count: Int) throws -> SecureBytes {
        guard count > 0, count <= 255 * 32 else { throw CryptoError.invalid("HKDF output length \(count)") }
        // Extract: PRK = HMAC(salt, IKM); an empty salt means 32 zero bytes.
        let saltKey = (salt.isEmpty ? [UInt8](repeating: 0, count: 32) : salt).withUnsafeBytes { SecureBytes(copying: $0) }
        var prk = try inputKey.withUnsafeBytes { try HMACSHA256.Key(saltKey).authenticationCode(for: $0) }
        let expand = try HMACSHA256.Key(prk.withUnsafeBytes { SecureBytes(copying: $0) })
        withUnsafeMutableBytes(of: &prk) { CryptoShims.cleanse($0.baseAddress!, $0.count) }
        var output: [UInt8] = []
        defer { secureZero(&output) }
        var previous: [UInt8] = []
        defer { secureZero(&previous) }
        var counter: UInt8 = 1
        while output.count < count {
            let block = expand.authenticationCode(for: previous + info + [counter])
            previous = block.bytes
            output += previous
            counter &+= 1
        }
        return output.withUnsafeBytes { SecureBytes(copying: UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
    }
}
