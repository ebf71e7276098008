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
        guard plaintext.count <= maxPlaintextByteCount else {
            throw CryptoError(code: .invalidInput, operation: "AES-GCM plaintext of \(plaintext.count) bytes")
        }
        var out = [UInt8](repeating: 0, count: plaintext.count + overhead)
        try out.withUnsafeMutableBytes { out in
            nonce.withUnsafeBytes { out.copyMemory(from: $0) }
            try plaintext.withUnsafeBytes { input in
                try seal(input, into: UnsafeMutableRawBufferPointer(rebasing: out[nonceByteCount...]), key: key, nonce: nonce,
                         associatedData: associatedData)
            }
        }
        return out
    }

    /// Decrypts and authenticates a sealed box.
    /// - Returns: the plaintext; wipe it with ``secureZero(_:)`` when done.
    /// - Throws: ``CryptoError`` `.authenticationFailure` when the box, the key or the
    ///   associated data differ from those sealed (no plaintext is returned), `.invalidInput`
    ///   for a box shorter than nonce and tag.
    public static func open(_ sealed: [UInt8], key: SecureBytes, associatedData: [UInt8]) throws -> [UInt8] {
        try sealed.withUnsafeBytes { try open(sealed: $0, key: key, associatedData: associatedData) }
    }

    /// ``open(_:key:associatedData:)`` of a box in borrowed memory (a value in a read
    /// transaction), without copying it first.
    public static func open(sealed box: UnsafeRawBufferPointer, key: SecureBytes, associatedData: [UInt8]) throws -> [UInt8] {
        try associatedData.withUnsafeBytes { try open(sealed: box, key: key, associatedData: $0) }
    }

    /// ``open(sealed:key:associatedData:)`` with associated data in borrowed memory.
    public static func open(sealed box: UnsafeRawBufferPointer, key: SecureBytes, associatedData aad: UnsafeRawBufferPointer) throws -> [UInt8] {
        try Opener().open(sealed: box, key: key, associatedData: aad)
    }

    /// Encrypts `input` into `output` (exactly `input.count + 16` bytes: ciphertext || tag)
    /// with a caller-chosen nonce, without allocating: for streams sealed piece by piece into
    /// reused buffers. The nonce is not written; a (key, nonce) pair must never repeat.
    public static func seal(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer, key: SecureBytes,
                            nonce: [UInt8], associatedData: [UInt8]) throws {
        guard nonce.count == nonceByteCount else { throw CryptoError(code: .invalidInput, operation: "AES-GCM nonce length") }
        guard input.count <= maxPlaintextByteCount, output.count == input.count + tagByteCount else {
            throw CryptoError(code: .invalidInput, operation: "AES-GCM detached seal of \(input.count) bytes into \(output.count)")
        }
        try nonce.withUnsafeBytes { nonce in
            try associatedData.withUnsafeBytes { aad in
                try withContext(encrypt: true, key: key, nonce: nonce) { ctx in
                    try update(ctx, encrypt: true, aad: aad)
                    var written: Int32 = 0
                    if input.count > 0 {
                        guard EVP_EncryptUpdate(ctx, output.baseAddress!.assumingMemoryBound(to: UInt8.self), &written,
                                                input.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(input.count)) == 1,
                              Int(written) == input.count else { throw CryptoError.openSSL("EVP_EncryptUpdate") }
                    }
                    var tail: Int32 = 0
                    guard EVP_EncryptFinal_ex(ctx, output.baseAddress! + input.count, &tail) == 1, tail == 0,
                          CCrypto_GCM_GetTag(ctx, output.baseAddress! + input.count, Int32(tagByteCount)) == 1 else {
                        throw CryptoError.openSSL("AES-GCM final")
                    }
                }
            }
        }
    }

    /// Decrypts and authenticates `box` (ciphertext || tag, as the detached ``seal(_:into:key:nonce:associatedData:)``
    /// writes it) into `output` (exactly `box.count - 16` bytes). On failure `output` is zeroed.
    /// - Throws: ``CryptoError`` `.authenticationFailure`, `.invalidInput` for wrong sizes.
    public static func open(_ box: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer, key: SecureBytes,
                            nonce: [UInt8], associatedData: [UInt8]) throws {
        try nonce.withUnsafeBytes { nonce in
            try associatedData.withUnsafeBytes { aad in
                try openDetached(box, into: output, key: key, nonce: nonce, aad: aad)
            }
        }
    }

    private static func openDetached(_ box: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer, key: SecureBytes,
                                     nonce: UnsafeRawBufferPointer, aad: UnsafeRawBufferPointer) throws {
        guard nonce.count == nonceByteCount else { throw CryptoError(code: .invalidInput, operation: "AES-GCM nonce length") }
        guard box.count >= tagByteCount, output.count == box.count - tagByteCount else {
            throw CryptoError(code: .invalidInput, operation: "AES-GCM detached box of \(box.count) bytes into \(output.count)")
        }
        do {
            try withContext(encrypt: false, key: key, nonce: nonce) { ctx in try decrypt(ctx, box, into: output, aad: aad) }
        } catch {
            output.initializeMemory(as: UInt8.self, repeating: 0)
            throw error
        }
    }

    /// Decrypts `box` (ciphertext || tag) into `output` with a context whose key and nonce are set.
    fileprivate static func decrypt(_ ctx: OpaquePointer, _ box: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer,
                                    aad: UnsafeRawBufferPointer) throws {
        let textCount = output.count
        // OpenSSL counts in `int`.
        guard textCount <= maxPlaintextByteCount else { throw CryptoError(code: .invalidInput, operation: "AES-GCM box of \(box.count) bytes") }
        try update(ctx, encrypt: false, aad: aad)
        var written: Int32 = 0
        if textCount > 0 {
            guard EVP_DecryptUpdate(ctx, output.baseAddress!.assumingMemoryBound(to: UInt8.self), &written,
                                    box.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(textCount)) == 1,
                  Int(written) == textCount else { throw CryptoError.openSSL("EVP_DecryptUpdate") }
        }
        // OpenSSL takes the expected tag through a mutable pointer: a stack copy.
        var tag: (UInt64, UInt64) = (0, 0)
        try withUnsafeMutableBytes(of: &tag) { tag in
            tag.copyMemory(from: UnsafeRawBufferPointer(rebasing: box[textCount...]))
            guard CCrypto_GCM_SetTag(ctx, tag.baseAddress, Int32(tagByteCount)) == 1 else { throw CryptoError.openSSL("AES-GCM set tag") }
        }
        var tail: Int32 = 0
        guard EVP_DecryptFinal_ex(ctx, nil, &tail) == 1 else {
            ERR_clear_error()
            throw CryptoError(code: .authenticationFailure, operation: "AES-GCM open")
        }
    }

    private static func withContext(encrypt: Bool, key: SecureBytes, nonce: UnsafeRawBufferPointer,
                                    _ body: (OpaquePointer) throws -> Void) throws {
        try requireKeyLength(key)
        guard let ctx = EVP_CIPHER_CTX_new() else { throw CryptoError.openSSL("EVP_CIPHER_CTX_new") }
        // Frees the context and wipes the expanded key schedule it holds.
        defer { EVP_CIPHER_CTX_free(ctx) }
        let initialize = encrypt ? EVP_EncryptInit_ex : EVP_DecryptInit_ex
        guard let cipher = FetchedCipher.aes256GCM.cipher else { throw CryptoError.openSSL("EVP_CIPHER_fetch AES-256-GCM") }
        // GCM's default nonce length is the 12 bytes used here (NIST SP 800-38D's 96 bits;
        // checked once, when the cipher is fetched), so the context is not told it: that
        // control call went through OpenSSL's parameter lookup by name on every seal and open.
        guard initialize(ctx, cipher, nil, nil, nil) == 1 else {
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

    fileprivate static func requireKeyLength(_ key: SecureBytes) throws {
        guard key.count == keyByteCount else { throw CryptoError(code: .invalidInput, operation: "AES-256-GCM key length \(key.count)") }
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

extension AESGCM {
    /// Opens many sealed boxes on one thread with one OpenSSL context, rather than a context
    /// made and freed per box: a batch read opens two boxes per record. With a fixed key (the
    /// master key that wraps every patient's data key), the key is expanded once and each open
    /// sets only its nonce; the AES key schedule and GHASH table cost more than opening a
    /// wrapped 32-byte key.
    ///
    /// Not thread-safe: one thread at a time. The context holds the expanded key of the last
    /// open (or the fixed key) until it is freed, when OpenSSL wipes it; keep an opener for a
    /// batch, not for the life of a process.
    public final class Opener {
        private let ctx: OpaquePointer
        /// Whether the context holds a fixed key that every open uses.
        private let fixedKey: Bool

        /// An opener that takes each box's key with the box.
        public convenience init() throws { try self.init(fixedKey: nil) }

        /// An opener for boxes sealed under `key`, expanded once.
        public convenience init(key: SecureBytes) throws { try self.init(fixedKey: key) }

        private init(fixedKey key: SecureBytes?) throws {
            if let key { try requireKeyLength(key) }
            guard let cipher = FetchedCipher.aes256GCM.cipher else { throw CryptoError.openSSL("EVP_CIPHER_fetch AES-256-GCM") }
            guard let ctx = EVP_CIPHER_CTX_new() else { throw CryptoError.openSSL("EVP_CIPHER_CTX_new") }
            self.ctx = ctx
            fixedKey = key != nil
            // From here a throw runs deinit, which frees the context.
            guard EVP_DecryptInit_ex(ctx, cipher, nil, nil, nil) == 1 else { throw CryptoError.openSSL("AES-256-GCM init") }
            if let key {
                let ok = key.withUnsafeBytes { k in EVP_DecryptInit_ex(ctx, nil, nil, k.baseAddress!.assumingMemoryBound(to: UInt8.self), nil) }
                guard ok == 1 else { throw CryptoError.openSSL("AES-256-GCM key setup") }
            }
        }

        deinit { EVP_CIPHER_CTX_free(ctx) }

        /// ``AESGCM/open(sealed:key:associatedData:)`` with this opener's context: `key` is the
        /// box's key, or nil for the opener's fixed key.
        /// - Throws: ``CryptoError`` `.authenticationFailure`, `.invalidInput` for a short box,
        ///   a key that is not 32 bytes, or a key given to (or withheld from) the wrong kind of opener.
        public func open(sealed box: UnsafeRawBufferPointer, key: SecureBytes?, associatedData aad: UnsafeRawBufferPointer) throws -> [UInt8] {
            guard box.count >= overhead else { throw CryptoError(code: .invalidInput, operation: "AES-GCM box of \(box.count) bytes") }
            guard (key == nil) == fixedKey else {
                throw CryptoError(code: .invalidInput, operation: fixedKey ? "AES-GCM opener with a fixed key given another" : "AES-GCM opener without a key")
            }
            if let key { try requireKeyLength(key) }
            let nonce = box.baseAddress!.assumingMemoryBound(to: UInt8.self)
            let count = box.count - overhead
            // Decrypted straight into the array's uninitialized storage: zero-filling it first
            // was a pass over every record read for nothing.
            return try [UInt8](unsafeUninitializedCapacity: count) { out, initialized in
                let raw = UnsafeMutableRawBufferPointer(out)
                do {
                    // A nil key keeps the expanded fixed key and sets only the nonce.
                    let ok = key?.withUnsafeBytes { k in EVP_DecryptInit_ex(ctx, nil, nil, k.baseAddress!.assumingMemoryBound(to: UInt8.self), nonce) }
                        ?? EVP_DecryptInit_ex(ctx, nil, nil, nil, nonce)
                    guard ok == 1 else { throw CryptoError.openSSL("AES-256-GCM key setup") }
                    // `decrypt` refuses oversized boxes and associated data.
                    try AESGCM.decrypt(ctx, UnsafeRawBufferPointer(rebasing: box[nonceByteCount...]), into: raw, aad: aad)
                } catch {
                    // Unauthenticated plaintext is wiped before the storage is freed.
                    raw.initializeMemory(as: UInt8.self, repeating: 0)
                    initialized = 0
                    throw error
                }
                initialized = count
            }
        }
    }
}

/// A cipher implementation fetched once: with OpenSSL 3, passing `EVP_aes_256_gcm()` makes
/// every context initialization look the implementation up again, which costs more than
/// sealing a small record.
private final class FetchedCipher: @unchecked Sendable {
    // Sendable: immutable; OpenSSL allows one fetched EVP_CIPHER to be used from many threads.
    static let aes256GCM = FetchedCipher("AES-256-GCM")
    let cipher: OpaquePointer?
    private init(_ name: String) {
        let fetched = EVP_CIPHER_fetch(nil, name, nil)
        // Seals and opens rely on the default nonce length being AESGCM.nonceByteCount.
        if let fetched, EVP_CIPHER_get_iv_length(fetched) != Int32(AESGCM.nonceByteCount) {
            EVP_CIPHER_free(fetched)
            cipher = nil
        } else {
            cipher = fetched
        }
    }
}

/// HMAC-SHA-256 (RFC 2104).
///
/// Built on the low-level SHA-256 compression API rather than OpenSSL's one-shot `HMAC()`,
/// which in OpenSSL 3 fetches a MAC implementation and builds parameter lists on every call
/// (about 17,000 instructions for a 40-byte message, against about 2,500 here with a ``Key``
/// whose padded key blocks are hashed once).
///
/// For example:
/// ```swift
/// let mac = try HMACSHA256.Key(secret)      // hash the padded key once
/// let a = mac.authenticationCode(for: Array("patient|123".utf8))
/// ```
public enum HMACSHA256 {
    /// The 32-byte authentication code of `message` under `key`.
    public static func authenticationCode(for message: [UInt8], key: SecureBytes) throws -> Hash {
        try Key(key).authenticationCode(for: message)
    }

    /// A key prepared for many messages: the SHA-256 states after the inner and outer padded
    /// key blocks. The states are as secret as the key; they are wiped when the key is freed.
    ///
    /// Thread safety: immutable after init; any number of threads may authenticate with it.
    public final class Key: @unchecked Sendable {
        // Sendable: `inner` and `outer` are written only in init; each use copies them.
        private var inner = SHA256_CTX()
        private var outer = SHA256_CTX()

        /// Prepares `key` (any length; keys longer than the 64-byte block are hashed first).
        public init(_ key: SecureBytes) throws {
            // The padded key block lives on the stack (a record read prepares one key) and is
            // wiped before it is released.
            var inner = SHA256_CTX(), outer = SHA256_CTX()
            defer {
                withUnsafeMutableBytes(of: &inner) { CryptoShims.cleanse($0.baseAddress!, $0.count) }
                withUnsafeMutableBytes(of: &outer) { CryptoShims.cleanse($0.baseAddress!, $0.count) }
            }
            try withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 64) { block in
                block.initialize(repeating: 0)
                defer { CryptoShims.cleanse(block.baseAddress!, 64) }
                key.withUnsafeBytes { k in
                    if k.count > 64 {
                        var digest = SHA256.hash(k)
                        digest.withUnsafeBytes { d in for i in 0..<32 { block[i] = d[i] } }
                        withUnsafeMutableBytes(of: &digest) { CryptoShims.cleanse($0.baseAddress!, $0.count) }
                    } else {
                        for i in 0..<k.count { block[i] = k[i] }
                    }
                }
                for i in 0..<64 { block[i] ^= 0x36 }
                guard CCrypto_SHA256_Init(&inner) == 1, CCrypto_SHA256_Update(&inner, block.baseAddress, 64) == 1 else {
                    throw CryptoError.openSSL("HMAC-SHA-256 inner key block")
                }
                // 0x36 ^ 0x5c turns the inner pad into the outer one.
                for i in 0..<64 { block[i] ^= 0x36 ^ 0x5c }
                guard CCrypto_SHA256_Init(&outer) == 1, CCrypto_SHA256_Update(&outer, block.baseAddress, 64) == 1 else {
                    throw CryptoError.openSSL("HMAC-SHA-256 outer key block")
                }
            }
            self.inner = inner
            self.outer = outer
        }

        deinit {
            withUnsafeMutableBytes(of: &inner) { CryptoShims.cleanse($0.baseAddress!, $0.count) }
            withUnsafeMutableBytes(of: &outer) { CryptoShims.cleanse($0.baseAddress!, $0.count) }
        }

        /// The 32-byte authentication code of `message`.
        public func authenticationCode(for message: UnsafeRawBufferPointer) -> Hash {
            var ctx = inner
            defer { withUnsafeMutableBytes(of: &ctx) { CryptoShims.cleanse($0.baseAddress!, $0.count) } }
            if message.count > 0 { CCrypto_SHA256_Update(&ctx, message.baseAddress, message.count) }
            var innerDigest = (UInt64(0), UInt64(0), UInt64(0), UInt64(0))
            return withUnsafeMutableBytes(of: &innerDigest) { digest in
                _ = CCrypto_SHA256_Final(digest.baseAddress, &ctx)
                ctx = outer
                CCrypto_SHA256_Update(&ctx, digest.baseAddress, 32)
                return Hash { out in _ = CCrypto_SHA256_Final(out.baseAddress, &ctx) }
            }
        }

        /// The authentication code of a byte array.
        public func authenticationCode(for message: [UInt8]) -> Hash {
            message.withUnsafeBytes { authenticationCode(for: $0) }
        }

        /// The authentication code of a string's UTF-8 bytes.
        public func authenticationCode(utf8 message: String) -> Hash {
            var copy = message
            return copy.withUTF8 { authenticationCode(for: UnsafeRawBufferPointer($0)) }
        }
    }
}
