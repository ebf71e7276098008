import Testing
import LedgerCrypto

private func bytes(_ hex: String) -> [UInt8] { Hex.decode(hex)! }

/// RFC 7748 section 6.1 and RFC 5869 appendix A test vectors.
@Suite struct X25519Tests {
    @Test func rfc7748KeyAgreement() throws {
        let alice = try X25519PrivateKey(rawRepresentation: bytes("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
        let bob = try X25519PrivateKey(rawRepresentation: bytes("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"))
        #expect(Hex.encode(alice.publicKey.rawRepresentation) == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        #expect(Hex.encode(bob.publicKey.rawRepresentation) == "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
        let shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
        #expect(try alice.sharedSecret(with: bob.publicKey).withUnsafeBytes { Hex.encode(Array($0)) } == shared)
        #expect(try bob.sharedSecret(with: alice.publicKey).withUnsafeBytes { Hex.encode(Array($0)) } == shared)
        // A small-order point (all zeros) gives an all-zero secret: refused.
        #expect(throws: CryptoError.self) { try alice.sharedSecret(with: try X25519PublicKey(rawRepresentation: [UInt8](repeating: 0, count: 32))) }
        #expect(throws: CryptoError.self) { try X25519PublicKey(rawRepresentation: [UInt8](repeating: 1, count: 31)) }
    }

    @Test func rfc5869() throws {
        let ikm = [UInt8](repeating: 0x0b, count: 22).withUnsafeBytes { SecureBytes(copying: $0) }
        let case1 = try HKDFSHA256.deriveKey(inputKey: ikm, salt: bytes("000102030405060708090a0b0c"), info: bytes("f0f1f2f3f4f5f6f7f8f9"), count: 42)
        #expect(case1.withUnsafeBytes { Hex.encode(Array($0)) }
                == "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")
        let case3 = try HKDFSHA256.deriveKey(inputKey: ikm, salt: [], info: [], count: 42)
        #expect(case3.withUnsafeBytes { Hex.encode(Array($0)) }
                == "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8")
        #expect(throws: CryptoError.self) { try HKDFSHA256.deriveKey(inputKey: ikm, salt: [], info: [], count: 255 * 32 + 1) }
    }
}
