import Foundation
import Testing
import TestSupport
import LedgerCrypto

@Suite struct SHA256Tests {
    @Test func knownAnswers() {
        #expect(SHA256.hash([]).hex == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(SHA256.hash(Array("abc".utf8)).hex == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(SHA256.hash(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)).hex
                == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
    }

    @Test func oneShotStreamingAndSplitAgree() {
        var generator = SplitMix64(seed: 0x5eed)
        for length in [0, 1, 55, 56, 63, 64, 65, 1000, 4096] {
            let data = (0..<length).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
            let oneShot = SHA256.hash(data)
            for split in [0, length / 3, length / 2, length] {
                var hasher = SHA256.Hasher()
                hasher.update(Array(data[..<split]))
                hasher.update(Array(data[split...]))
                #expect(hasher.finalize() == oneShot, "length \(length) split \(split)")
            }
        }
    }

    @Test func hasherCopiesAreIndependent() {
        var a = SHA256.Hasher()
        a.update(Array("ab".utf8))
        var b = a
        b.update(Array("c".utf8))
        #expect(a.finalize() == SHA256.hash(Array("ab".utf8)))
        #expect(b.finalize() == SHA256.hash(Array("abc".utf8)))
    }

    @Test func merkleHelpersMatchTheirDefinitions() {
        let entry = Array("entry".utf8)
        #expect(SHA256.leafHash(entry) == SHA256.hash([0x00] + entry))
        let l = SHA256.hash(Array("l".utf8)), r = SHA256.hash(Array("r".utf8))
        #expect(SHA256.nodeHash(l, r) == SHA256.hash([0x01] + l.bytes + r.bytes))
        #expect(SHA256.prefixedPair(0x03, l, r) == SHA256.hash([0x03] + l.bytes + r.bytes))
        #expect(SHA256.nodeHash(l, r) != SHA256.nodeHash(r, l))
    }
}

@Suite struct HashValueTests {
    @Test func parsingAndOrdering() throws {
        let h = SHA256.hash(Array("x".utf8))
        #expect(Hash(hex: h.hex) == h)
        #expect(Hash(hex: h.hex.uppercased()) == h)
        #expect(Hash(hex: String(h.hex.dropLast())) == nil)
        #expect(Hash(hex: h.hex + "00") == nil)
        #expect(Hash([UInt8](repeating: 0, count: 31)) == nil)
        #expect(Hash.zero < h)
        let a = Hash([UInt8](repeating: 0, count: 31) + [1])!
        let b = Hash([1] + [UInt8](repeating: 0, count: 31))!
        #expect(a < b)
    }

    @Test func singleBytesReadBackInOptimizedBuilds() {
        // An optimized build once read constant offsets through `withUnsafeBytes` as zero.
        let hashes = (0..<64).map { SHA256.hash(Array("b\($0)".utf8)) }
        for h in hashes {
            let bytes = h.bytes
            #expect(h.withUnsafeBytes { $0[0] } == bytes[0])
            #expect(h.withUnsafeBytes { $0[31] } == bytes[31])
            for i in [0, 1, 7, 8, 15, 16, 31] { #expect(h.byte(at: i) == bytes[i]) }
        }
        #expect(Set(hashes.map { $0.withUnsafeBytes { $0[0] } }).count > 1)
    }

    @Test func hexMatchesTheDigitByDigitEncoding() {
        // The word-at-a-time encoder against the plain one, on every byte value in every
        // position of a word and on random hashes.
        var rng = SplitMix64(seed: 0x4845_58)
        var hashes = (0..<256).map { b in Hash([UInt8](repeating: UInt8(b), count: 32))! }
        hashes += (0..<32).map { i in Hash((0..<32).map { $0 == i ? 0xff : UInt8($0 * 8 + 1) })! }
        hashes += (0..<200).map { _ in Hash((0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) })! }
        for h in hashes {
            let plain = h.withUnsafeBytes { raw in raw.map { String(format: "%02x", $0) }.joined() }
            #expect(h.hex == plain)
            var appended: [UInt8] = [7]
            h.appendHex(to: &appended)
            #expect(appended == [7] + Array(plain.utf8))
        }
        #expect(Hash.zero.hex == String(repeating: "0", count: 64))
    }

    @Test func base64IsStrict() {
        #expect(Base64.decode("AAEC") == [0, 1, 2])
        #expect(Base64.decode("AAE=") == [0, 1])
        #expect(Base64.decode("AAF=") == nil, "non-zero padding bits")
        #expect(Base64.decode("AAE") == nil)
        #expect(Base64.decode("AA E=") == nil)
        #expect(Base64.decode("_-8=") == nil)
        #expect(Base64.decode("") == [])
        #expect(Base64.encode([]) == "")
    }

    /// The base64 codec against Foundation's, with the canonical-form rule on top: every
    /// length encodes alike and decodes back, and random texts over the alphabet, `=` and a
    /// few strangers decode (or fail) alike.
    @Test func base64MatchesFoundation() {
        func reference(_ text: String) -> [UInt8]? {
            guard text.utf8.count % 4 == 0, text.utf8.allSatisfy({ $0 < 0x80 && $0 != UInt8(ascii: "\n") && $0 != UInt8(ascii: " ") }),
                  let data = Data(base64Encoded: text), Data(data).base64EncodedString() == text else { return nil }
            return [UInt8](data)
        }
        var rng = SystemRandomNumberGenerator()
        for length in 0..<200 {
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let text = Base64.encode(bytes)
            #expect(text == Data(bytes).base64EncodedString(), "length \(length)")
            #expect(Base64.decode(text) == bytes, "length \(length)")
            #expect(bytes.withUnsafeBytes { Base64.encode($0) } == text)
        }
        let symbols = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8) + Array("=====-_ \n.é".utf8)
        var decoded = 0
        for _ in 0..<20_000 {
            let count = Int.random(in: 0...12, using: &rng)
            var text = String(decoding: (0..<count).map { _ in symbols.randomElement(using: &rng)! }, as: UTF8.self)
            if Bool.random(using: &rng), text.count >= 2 { text = String(text.dropLast(2)) + "==" }
            let mine = Base64.decode(text)
            #expect(mine == reference(text), "\(text.debugDescription)")
            if mine != nil { decoded += 1 }
        }
        #expect(decoded > 100)
    }

    @Test func constantTimeComparison() {
        #expect(constantTimeEqual([1, 2, 3], [1, 2, 3]))
        #expect(!constantTimeEqual([1, 2, 3], [1, 2, 4]))
        #expect(!constantTimeEqual([1, 2, 3], [1, 2]))
        #expect(constantTimeEqual([], []))
    }
}

@Suite struct Ed25519Tests {
    // RFC 8032 section 7.1, TEST 1 and TEST 2.
    @Test func rfc8032Vectors() throws {
        let key1 = try Ed25519PrivateKey(seed: Hex.decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")!)
        #expect(Hex.encode(key1.publicKey.rawRepresentation) == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        let sig1 = try key1.signature(for: [UInt8]())
        #expect(Hex.encode(sig1) == "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b")
        #expect(key1.publicKey.isValidSignature(sig1, for: [UInt8]()))

        let key2 = try Ed25519PrivateKey(seed: Hex.decode("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")!)
        #expect(Hex.encode(key2.publicKey.rawRepresentation) == "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
        let sig2 = try key2.signature(for: [0x72])
        #expect(Hex.encode(sig2) == "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00")
    }

    @Test func rejectsTamperedSignaturesAndBadKeys() throws {
        let key = try Ed25519PrivateKey()
        let message = Array("checkpoint".utf8)
        let signature = try key.signature(for: message)
        #expect(key.publicKey.isValidSignature(signature, for: message))
        for bit in [0, 7, 100, 511] {
            var bad = signature
            bad[bit / 8] ^= UInt8(1 << (bit % 8))
            #expect(!key.publicKey.isValidSignature(bad, for: message))
        }
        #expect(!key.publicKey.isValidSignature(Array(signature.dropLast()), for: message))
        #expect(!key.publicKey.isValidSignature(signature, for: message + [0]))
        #expect(throws: CryptoError.self) { try Ed25519PrivateKey(seed: [1, 2, 3]) }
        #expect(throws: CryptoError.self) { try Ed25519PublicKey(rawRepresentation: [UInt8](repeating: 1, count: 31)) }
        #expect(!String(describing: key).contains(Hex.encode(key.withSeed { Array($0) })))
    }

    @Test func randomBytesDiffer() throws {
        let a = try SecureRandom.bytes(32), b = try SecureRandom.bytes(32)
        #expect(a.count == 32 && a != b)
    }
}


@Suite struct HexTests {
    @Test func encodesEveryByteAndEveryLength() {
        let all = (0...255).map(UInt8.init)
        let expected = all.map { b -> String in
            let d = Array("0123456789abcdef")
            return String([d[Int(b >> 4)], d[Int(b & 15)]])
        }.joined()
        #expect(all.withUnsafeBytes { Hex.encode($0) } == expected)
        // Appending at short and long lengths, after existing bytes.
        for length in [0, 1, 31, 32, 33, 64, 65, 256] {
            var out: [UInt8] = Array("x|".utf8)
            let input = Array(all.prefix(length).reversed())
            input.withUnsafeBytes { Hex.append($0, to: &out) }
            #expect(out == Array("x|".utf8) + Array(input.withUnsafeBytes { Hex.encode($0) }.utf8))
            #expect(Hex.decode(String(decoding: out.dropFirst(2), as: UTF8.self)) == input)
        }
        #expect(Hex.encode([0x00, 0xff, 0x10, 0xab]) == "00ff10ab")
    }
}

@Suite struct SecureZeroTests {
    @Test func wipesAHashInPlace() {
        var key = SHA256.hash(Array("derived key".utf8))
        #expect(key != Hash.zero)
        secureZero(&key)
        #expect(key == Hash.zero)
    }
}
