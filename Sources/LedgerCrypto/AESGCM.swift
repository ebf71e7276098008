internal import CCrypto

/// AES-256-GCM authenticated encryption (OpenSSL EVP) with 96-bit nonces and 128-bit tags.
///
/// A sealed box is `nonce (12) || ciphertext || tag (16)`. ``seal(_:key:associatedData:)``
/// draws each nonce at random: safe for up to 2^32 messages under one key (NIST SP 800-38D
/// section 8.3); callers that encrypt more under one key derive per-object keys.
///
/// For example:
/// ```swift
/// let key = try SecureBytes(randomCount: AESGCM.keyByteCount)
/// let box = try AESGCM.seal(plaintext, key: key, associatedData: header)
/// var opened = try AESGCM.open(box, key: key, associatedData: header)
/// defer { secureZero(&opened) }
/// ```
public enum AESGCM {
    public static let keyByteCount = 32
    public static let nonceByteCount = 12
    public static let tagByteCount = 16
    /// Bytes a sealed box adds to its plaintext.
    public static let overhead = nonceByteCount + tagByteCount
    /// The largest plaintext one call takes (OpenSSL counts in `int`).
    public static let maxPlaintextByteCount = Int(Int32.max) - 64

    /// Encrypts `plaintext` under `key` with a fresh random nonce.
    /// - Returns: `nonce || ciphertext || tag`.
    /// - Throws: ``CryptoError`` `.invalidInput` for a key that is not 32 bytes or an oversized
    ///   plaintext, `.randomFailure`, `.libraryFailure`.
    public static func seal(_ plaintext: [UInt8], key: SecureBytes, associatedData: [UInt8]) throws -> [UInt8] {
        var nonce = [UInt8](repeating: 0, count: nonceByteCount)
        try nonce.withUnsafeMutableBytes { try SecureRandom.fill($0) }
        return try seal(plaintext, key: key, nonce: nonce, associatedData: associatedData)
    }

    /// Encrypts with a caller-chosen nonce, which must never repeat under one key; for known
    /// answer tests and for schemes that derive nonces deterministically.
    public static func seal(_ plaintext: [UInt8], key: SecureBytes, nonce: [UInt8], associatedData: [UInt8]) throws -> [UInt8] {
        guard nonce.count == nonceByteCount else { throw CryptoError(code: .invalidInput, operation: "AES-GCM nonce length") }
        return try plaintext.withUnsafeBytes { input in
            guard input.count <= maxPlaintextByteCount else {
                throw CryptoError(code: .invalidInput, operation: "AES-GCM plaintext of \(input.count) bytes")
            }
            var out = [UInt8](repeating: 0, count: input.count + overhead)
            try out.withUnsafeMutableBytes { out in
                out.copyMemory(from: UnsafeRawBufferPointer(start: nonce, count: nonceByteCount))
                try associatedData.withUnsafeBytes { aad in
                    try withContext(encrypt: true, key: key, nonce: UnsafeRawBufferPointer(rebasing: out[0..<nonceByteCount])) { ctx in
                        try update(ctx, encrypt: true, aad: aad)
                        var written: Int32 = 0
                        if input.count > 0 {
                            guard EVP_EncryptUpdate(ctx, out.baseAddress! + nonceByteCount, &written,
                                                    input.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(input.count)) == 1,
                                  Int(written) == input.count else { throw CryptoError.openSSL("EVP_EncryptUpdate") }
                        }
                        var tail: Int32 = 0
                        guard EVP_EncryptFinal_ex(ctx, out.baseAddress! + nonceByteCount + input.count, &tail) == 1, tail == 0 else {
                            throw CryptoError.openSSL("EVP_EncryptFinal_ex")
                        }
                        guard CCrypto_GCM_GetTag(ctx, out.baseAddress! + nonceByteCount + input.count, Int32(tagByteCount)) == 1 else {
                            throw CryptoError.openSSL("AES-GCM get tag")
                        }
                    }
                }
            }
            return out
        }
    }

    /// Decrypts and authenticates a sealed box.
    /// - Returns: the plaintext; wipe it with ``secureZero(_:)`` when done.
    /// - Throws: ``CryptoError`` `.authenticationFailure` when the box, the key or the
    ///   associated data differ from those sealed (no plaintext is returned), `.invalidInput`
    ///   for a box shorter than nonce and tag.
    public static func open(_ sealed: [UInt8], key: SecureBytes, associatedData: [UInt8]) throws -> [UInt8] {
        try sealed.withUnsafeBytes { box in
            guard box.count >= overhead else { throw CryptoError(code: .invalidInput, operation: "AES-GCM box of \(box.count) bytes") }
            let textCount = box.count - overhead
            var out = [UInt8](repeating: 0, count: textCount)
            do {
                try out.withUnsafeMutableBytes { out in
                    try associatedData.withUnsafeBytes { aad in
                        try withContext(encrypt: false, key: key, nonce: UnsafeRawBufferPointer(rebasing: box[0..<nonceByteCount])) { ctx in
                            try update(ctx, encrypt: false, aad: aad)
                            var written: Int32 = 0
                            if textCount > 0 {
                                guard EVP_DecryptUpdate(ctx, out.baseAddress!.assumingMemoryBound(to: UInt8.self), &written,
                                                        box.baseAddress!.assumingMemoryBound(to: UInt8.self) + nonceByteCount,
                                                        Int32(textCount)) == 1, Int(written) == textCount else {
                                    throw CryptoError.openSSL("EVP_DecryptUpdate")
                                }
                            }
                            // The tag is copied because OpenSSL's ctrl takes a mutable pointer.
                            var tag = [UInt8](box[(nonceByteCount + textCount)...])
                            guard CCrypto_GCM_SetTag(ctx, &tag, Int32(tagByteCount)) == 1 else { throw CryptoError.openSSL("AES-GCM set tag") }
                            var tail: Int32 = 0
                            // OpenSSL compares the tag in constant time (CRYPTO_memcmp).
                            guard EVP_DecryptFinal_ex(ctx, nil, &tail) == 1 else {
                                ERR_clear_error()
                                throw CryptoError(code: .authenticationFailure, operation: "AES-GCM open")
                            }
                        }
                    }
                }
            } catch {
                secureZero(&out)
                throw error
            }
            return out
        }
    }

    private static func withContext(encrypt: Bool, key: SecureBytes, nonce: UnsafeRawBufferPointer,
                                    _ body: (OpaquePointer) throws -> Void) throws {
        guard key.count == keyByteCount else { throw CryptoError(code: .invalidInput, operation: "AES-256-GCM key length \(key.count)") }
        guard let ctx = EVP_CIPHER_CTX_new() else { throw CryptoError.openSSL("EVP_CIPHER_CTX_new") }
        // Frees the context and wipes the expanded key schedule it holds.
        defer { EVP_CIPHER_CTX_free(ctx) }
        let initialize = encrypt ? EVP_EncryptInit_ex : EVP_DecryptInit_ex
        guard initialize(ctx, EVP_aes_256_gcm(), nil, nil, nil) == 1,
              CCrypto_GCM_SetIVLength(ctx, Int32(nonceByteCount)) == 1 else {
            throw CryptoError.openSSL("AES-256-GCM init")
        }
        try key.withUnsafeBytes { k in
            guard initialize(ctx, nil, nil, k.baseAddress!.assumingMemoryBound(to: UInt8.self),
                             nonce.baseAddress!.assumingMemoryBound(to: UInt8.self)) == 1 else {
                throw CryptoError.openSSL("AES-256-GCM key setup")
            }
        }
        try body(ctx)
    }

    private static func update(_ ctx: OpaquePointer, encrypt: Bool, aad: UnsafeRawBufferPointer) throws {
        guard aad.count > 0 else { return }
        guard aad.count <= maxPlaintextByteCount else { throw CryptoError(code: .invalidInput, operation: "AES-GCM associated data length") }
        var written: Int32 = 0
        let ok = encrypt
            ? EVP_EncryptUpdate(ctx, nil, &written, aad.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(aad.count))
            : EVP_DecryptUpdate(ctx, nil, &written, aad.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(aad.count))
        guard ok == 1 else { throw CryptoError.openSSL("AES-GCM associated data") }
    }
}

/// HMAC-SHA-256 (RFC 2104) through OpenSSL.
public enum HMACSHA256 {
    /// The 32-byte authentication code of `message` under `key`.
    public static func authenticationCode(for message: [UInt8], key: SecureBytes) throws -> Hash {
        try message.withUnsafeBytes { m in
            try key.withUnsafeBytes { k in
                var length: UInt32 = 32
                let mac = try Hash(unsafeUninitializedBytes: { out in
                    guard HMAC(EVP_sha256(), k.baseAddress, Int32(k.count),
                               m.baseAddress?.assumingMemoryBound(to: UInt8.self), m.count,
                               out.baseAddress!.assumingMemoryBound(to: UInt8.self), &length) != nil else {
                        throw CryptoError.openSSL("HMAC-SHA-256")
                    }
                })
                guard length == 32 else { throw CryptoError(code: .libraryFailure, operation: "HMAC-SHA-256 length") }
                return mac
            }
        }
    }
}
