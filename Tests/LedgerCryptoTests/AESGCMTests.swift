import Dispatch
import Testing
import TestSupport
import LedgerCrypto

private func bytes(_ hex: String) -> [UInt8] { Hex.decode(hex)! }
private func key(_ hex: String) -> SecureBytes { bytes(hex).withUnsafeBytes { SecureBytes(copying: $0) } }

/// Known answers from the GCM specification (McGrew and Viega, test cases 13, 14 and 16),
/// also reproduced with an independent implementation (Python `cryptography`).
@Suite struct AESGCMTests {
    @Test func specificationVectors() throws {
        let zero = key(String(repeating: "00", count: 32))
        let nonce = [UInt8](repeating: 0, count: 12)
        #expect(try AESGCM.seal([], key: zero, nonce: nonce, associatedData: []) == nonce + bytes("530f8afbc74536b9a963b4f1c4cb738b"))
        #expect(try AESGCM.seal([UInt8](repeating: 0, count: 16), key: zero, nonce: nonce, associatedData: [])
                == nonce + bytes("cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919"))

        let k16 = key("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")
        let p16 = bytes("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39")
        let a16 = bytes("feedfacedeadbeeffeedfacedeadbeefabaddad2")
        let n16 = bytes("cafebabefacedbaddecaf888")
        let sealed = try AESGCM.seal(p16, key: k16, nonce: n16, associatedData: a16)
        #expect(sealed == n16 + bytes("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662")
                + bytes("76fc6ece0f4e1768cddf8853bb2d551b"))
        #expect(try AESGCM.open(sealed, key: k16, associatedData: a16) == p16)
    }

    @Test func roundTripsAndRejectsEveryAlteration() throws {
        var generator = SplitMix64(seed: 0xae5)
        let k = try SecureBytes(randomCount: 32)
        for length in [0, 1, 15, 16, 17, 1000] {
            let plaintext = (0..<length).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
            let aad = Array("patient|record|1".utf8)
            let box = try AESGCM.seal(plaintext, key: k, associatedData: aad)
            #expect(box.count == length + AESGCM.overhead)
            #expect(try AESGCM.open(box, key: k, associatedData: aad) == plaintext)
            // Every flipped bit of nonce, ciphertext and tag is refused.
            for i in 0..<box.count {
                var bad = box
                bad[i] ^= 1 << UInt8(i % 8)
                #expect(throws: CryptoError(code: .authenticationFailure, operation: "")) {
                    try AESGCM.open(bad, key: k, associatedData: aad)
                }
            }
            // Other associated data, another key, truncation.
            #expect(throws: CryptoError(code: .authenticationFailure, operation: "")) {
                try AESGCM.open(box, key: k, associatedData: Array("patient|record|2".utf8))
            }
            #expect(throws: CryptoError(code: .authenticationFailure, operation: "")) {
                try AESGCM.open(box, key: try SecureBytes(randomCount: 32), associatedData: aad)
            }
            if box.count > AESGCM.overhead {
                #expect(throws: CryptoError(code: .authenticationFailure, operation: "")) {
                    try AESGCM.open(Array(box.dropLast()), key: k, associatedData: aad)
                }
            }
        }
        #expect(throws: CryptoError(code: .invalidInput, operation: "")) {
            try AESGCM.open([UInt8](repeating: 0, count: 27), key: k, associatedData: [])
        }
        #expect(throws: CryptoError(code: .invalidInput, operation: "")) {
            try AESGCM.seal([1], key: try SecureBytes(randomCount: 16), associatedData: [])
        }
    }

    /// A reused opener agrees with the one-shot open on every box, whether it holds a fixed key
    /// or takes each box's key, and a refused box leaves it able to open the next.
    @Test func reusedOpenersMatchTheOneShotOpen() throws {
        func open(_ opener: AESGCM.Opener, _ box: [UInt8], _ key: SecureBytes?, _ aad: [UInt8]) throws -> [UInt8] {
            try box.withUnsafeBytes { sealed in try aad.withUnsafeBytes { try opener.open(sealed: sealed, key: key, associatedData: $0) } }
        }
        let refused = CryptoError(code: .authenticationFailure, operation: "")
        var generator = SplitMix64(seed: 0x0be2)
        let fixed = try SecureBytes(randomCount: 32)
        let keys = try (0..<3).map { _ in try SecureBytes(randomCount: 32) }
        let withFixedKey = try AESGCM.Opener(key: fixed)
        let keyless = try AESGCM.Opener()
        for round in 0..<40 {
            let length = [0, 1, 16, 32, 100, 2048][round % 6]
            let plaintext = (0..<length).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
            let aad = Array("patient|record|\(round)".utf8)
            let key = keys[round % keys.count]
            let boxFixed = try AESGCM.seal(plaintext, key: fixed, associatedData: aad)
            let box = try AESGCM.seal(plaintext, key: key, associatedData: aad)
            #expect(try open(withFixedKey, boxFixed, nil, aad) == plaintext)
            #expect(try open(keyless, boxFixed, fixed, aad) == plaintext)
            // A flipped bit, other associated data, another key: refused, and the next open works.
            var bad = box
            bad[Int(generator.next() % UInt64(bad.count))] ^= 1 << UInt8(generator.next() % 8)
            #expect(throws: refused) { try open(keyless, bad, key, aad) }
            #expect(throws: refused) { try open(keyless, box, key, aad + [0]) }
            #expect(throws: refused) { try open(keyless, box, keys[(round + 1) % keys.count], aad) }
            #expect(throws: refused) { try open(withFixedKey, box, nil, aad) }
            #expect(try open(keyless, box, key, aad) == plaintext)
            #expect(try open(withFixedKey, boxFixed, nil, aad) == plaintext)
        }
        // The known answer through both kinds of opener.
        let k16 = key("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")
        let sealed = bytes("cafebabefacedbaddecaf888")
            + bytes("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662")
            + bytes("76fc6ece0f4e1768cddf8853bb2d551b")
        let a16 = bytes("feedfacedeadbeeffeedfacedeadbeefabaddad2")
        let p16 = bytes("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39")
        #expect(try open(try AESGCM.Opener(key: k16), sealed, nil, a16) == p16)
        #expect(try open(keyless, sealed, k16, a16) == p16)
        // A key given to an opener with a fixed one, none to one without, a short box, a short key.
        let invalid = CryptoError(code: .invalidInput, operation: "")
        #expect(throws: invalid) { try open(withFixedKey, sealed, k16, a16) }
        #expect(throws: invalid) { try open(keyless, sealed, nil, a16) }
        #expect(throws: invalid) { try open(keyless, Array(sealed[0..<27]), k16, a16) }
        #expect(throws: invalid) { try open(keyless, sealed, try SecureBytes(randomCount: 16), a16) }
        #expect(throws: invalid) { try AESGCM.Opener(key: try SecureBytes(randomCount: 16)) }
    }

    @Test func noncesAreFresh() throws {
        let k = try SecureBytes(randomCount: 32)
        let a = try AESGCM.seal([1, 2, 3], key: k, associatedData: [])
        let b = try AESGCM.seal([1, 2, 3], key: k, associatedData: [])
        #expect(a.prefix(12) != b.prefix(12))
        #expect(a != b)
    }
}

/// RFC 4231 test cases 1 to 4, 6 and 7 (keys longer than the block).
@Suite struct HMACTests {
    /// Cases 3, 4 and 7 through one prepared ``HMACSHA256/Key`` each, used twice and from two
    /// threads, which must not disturb its state.
    @Test func rfc4231PreparedKeys() throws {
        let cases: [(key: String, message: [UInt8], mac: String)] = [
            (String(repeating: "aa", count: 20), [UInt8](repeating: 0xdd, count: 50),
             "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
            ("0102030405060708090a0b0c0d0e0f10111213141516171819", [UInt8](repeating: 0xcd, count: 50),
             "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
            (String(repeating: "aa", count: 131),
             Array(("This is a test using a larger than block-size key and a larger than block-size data. "
                    + "The key needs to be hashed before being used by the HMAC algorithm.").utf8),
             "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
        ]
        for c in cases {
            let prepared = try HMACSHA256.Key(key(c.key))
            #expect(prepared.authenticationCode(for: c.message).hex == c.mac)
            nonisolated(unsafe) let results = UnsafeMutableBufferPointer<Hash>.allocate(capacity: 2)  // each thread writes its own slot
            defer { results.deallocate() }
            DispatchQueue.concurrentPerform(iterations: 2) { results[$0] = prepared.authenticationCode(for: c.message) }
            #expect(results.allSatisfy { $0.hex == c.mac })
            #expect(prepared.authenticationCode(for: c.message.dropLast() + [0]).hex != c.mac)
        }
        // An empty message, checked against the one-shot path with a fresh key.
        let k = key(String(repeating: "0b", count: 20))
        #expect(try HMACSHA256.Key(k).authenticationCode(for: []) == HMACSHA256.authenticationCode(for: [], key: k))
    }

    @Test func rfc4231() throws {
        #expect(try HMACSHA256.authenticationCode(for: Array("Hi There".utf8), key: key(String(repeating: "0b", count: 20))).hex
                == "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
        #expect(try HMACSHA256.authenticationCode(for: Array("what do ya want for nothing?".utf8), key: key(Hex.encode(Array("Jefe".utf8)))).hex
                == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        #expect(try HMACSHA256.authenticationCode(for: Array("Test Using Larger Than Block-Size Key - Hash Key First".utf8),
                                                  key: key(String(repeating: "aa", count: 131))).hex
                == "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
    }
}
