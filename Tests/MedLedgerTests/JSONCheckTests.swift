import Foundation
import Testing
import TestSupport
@testable import MedLedger

/// The upload checker against hand-picked cases and, on random mutations of real FHIR JSON,
/// against Foundation's parser as an independent reference.
@Suite struct JSONCheckTests {
    static let sample = Array(#"""
        {"resourceType":"Observation","id":"obs-1","status":"final",
         "code":{"coding":[{"system":"http://loinc.org","code":"8867-4","display":"Heart rate"}]},
         "valueQuantity":{"value":72.5e0,"unit":"beats/min"},"issued":"2026-11-25T10:00:00Z",
         "note":[{"text":"r\u00e9sum\u00E9 \"quoted\" \\ caf\#u{e9} \#u{1F600}"}],"flags":[true,false,null,-0,1E+2]}
        """#.utf8)

    @Test func acceptsValidDocuments() throws {
        let summary = try JSONCheck.check(Self.sample)
        #expect(summary.isObject && summary.resourceType == "Observation" && !summary.duplicateResourceType)
        #expect(try JSONCheck.check(Array(#" {"a":[]} "#.utf8)).resourceType == nil)
        #expect(try JSONCheck.check(Array(#"{"resource\u0054ype":"Patient"}"#.utf8)).resourceType == "Patient")
        #expect(try JSONCheck.check(Array(#"{"x":{"resourceType":"Nested"}}"#.utf8)).resourceType == nil)
        #expect(try JSONCheck.check(Array(#"{"resourceType":"A","resourceType":"B"}"#.utf8)).duplicateResourceType)
        #expect(try !JSONCheck.check(Array("[1]".utf8)).isObject)
        #expect(try !JSONCheck.check(Array(#""s""#.utf8)).isObject)
    }

    @Test func refusesMalformedDocuments() {
        let bad = [
            "", " ", "{", "}", "{\"a\"}", "{\"a\":}", "{\"a\":1,}", "[1,]", "[01]", "[1.]", "[.5]", "[1e]", "[-]",
            "[+1]", "[tru]", "[nul]", "{'a':1}", "{\"a\":1}x", "{\"a\":\"\\x\"}", "{\"a\":\"\\u12\"}", "{\"a\":\"\u{1}\"}",
            "{\"a\":\"unterminated}", "{a:1}", "[1 2]", "{\"a\" 1}", "[\"\\\"]",
        ].map { Array($0.utf8) } + [
            [0x5b, 0x22, 0xc0, 0x80, 0x22, 0x5d],  // overlong NUL
            [0x5b, 0x22, 0xed, 0xa0, 0x80, 0x22, 0x5d],  // UTF-8 encoded surrogate
            [0x5b, 0x22, 0xf4, 0x90, 0x80, 0x80, 0x22, 0x5d],  // above U+10FFFF
            [0x5b, 0x22, 0xe2, 0x82, 0x22, 0x5d],  // truncated sequence
            [0x5b, 0x22, 0xff, 0x22, 0x5d],
            Array(repeating: UInt8(ascii: "["), count: JSONCheck.maxDepth + 1) + Array(repeating: UInt8(ascii: "]"), count: JSONCheck.maxDepth + 1),
        ]
        for doc in bad {
            #expect(throws: JSONCheck.Failure.self, "\(String(decoding: doc, as: UTF8.self))") { try JSONCheck.check(doc) }
        }
        // \u escapes of UTF-16 surrogates come in high-low pairs, as Foundation's parser wants.
        for lone in [#"["\ud800"]"#, #"["\uDBFF x"]"#, #"["\udc00"]"#, #"["\ud800\u0041"]"#, #"["\ud800\ud800"]"#,
                     #"["\ud800\"]"#, #"["a\uDFFF\uD800"]"#, #"{"\ud83d":1}"#] {
            #expect(throws: JSONCheck.Failure.self, "\(lone)") { try JSONCheck.check(Array(lone.utf8)) }
            #expect((try? JSONSerialization.jsonObject(with: Data(lone.utf8), options: .fragmentsAllowed)) == nil, "\(lone)")
        }
        for paired in [#"["\ud83d\ude00"]"#, #"["\uD800\uDC00 \uDBFF\uDFFF"]"#, #"{"\ud83d\ude00":"\u00e9\uffff"}"#] {
            #expect((try? JSONCheck.check(Array(paired.utf8))) != nil, "\(paired)")
            #expect((try? JSONSerialization.jsonObject(with: Data(paired.utf8))) != nil, "\(paired)")
        }
        let deepButAllowed = Array(repeating: UInt8(ascii: "["), count: JSONCheck.maxDepth) + Array(repeating: UInt8(ascii: "]"), count: JSONCheck.maxDepth)
        #expect((try? JSONCheck.check(deepButAllowed)) != nil)
    }

    /// `doc` without commas that directly (up to whitespace) precede `]` or `}`.
    static func droppingTrailingCommas(_ doc: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        for (i, b) in doc.enumerated() {
            if b == UInt8(ascii: ","), let next = doc[(i + 1)...].first(where: { ![0x20, 0x0a, 0x0d, 0x09].contains($0) }),
               next == UInt8(ascii: "]") || next == UInt8(ascii: "}") { continue }
            out.append(b)
        }
        return out
    }

    /// Strings are scanned eight bytes at a time: a byte that ends the fast run (control,
    /// quote, backslash, non-ASCII) must be found at every offset within a word and near the end.
    @Test func stringBytesAreCheckedAtEveryOffset() throws {
        let cases: [(bytes: [UInt8], valid: Bool)] = [
            ([0x00], false), ([0x1f], false), ([0x09], false), ([0x20], true), ([0x7f], true),
            ([0x5c, 0x6e], true), ([0x5c, 0x71], false), ([0x5c, 0x22], true),
            ([0x80], false), ([0xc3, 0xa9], true), ([0xc3], false), ([0xed, 0xa0, 0x80], false), ([0xf0, 0x9f, 0x98, 0x80], true),
        ]
        for length in [0, 1, 7, 8, 9, 15, 16, 17, 31] {
            for at in 0...length {
                for (bytes, valid) in cases {
                    var text = [UInt8](repeating: UInt8(ascii: "a"), count: length)
                    text.insert(contentsOf: bytes, at: at)
                    let document = Array(#"{"resourceType":"Patient","s":""#.utf8) + text + Array(#""}"#.utf8)
                    let accepted = (try? JSONCheck.check(document)) != nil
                    #expect(accepted == valid, "bytes \(bytes) at \(at) of \(length)")
                    if valid { #expect(try JSONCheck.check(document).resourceType == "Patient") }
                }
                // A quote inside the string ends it early: what follows is not valid JSON.
                var quoted = [UInt8](repeating: UInt8(ascii: "a"), count: length)
                quoted.insert(UInt8(ascii: "\""), at: at)
                #expect((try? JSONCheck.check(Array(#"{"s":""#.utf8) + quoted + Array(#""}"#.utf8))) == nil)
            }
        }
    }

    /// 20,000 mutants (byte flips, insertions of JSON punctuation, deletions, truncations) of the
    /// sample: whenever Foundation parses a mutant to an object, so must the checker, with the
    /// same resourceType; whenever Foundation refuses one, so must the checker. The one known
    /// difference is Foundation's leniency for trailing commas, which the checker refuses.
    @Test func agreesWithFoundationOnMutants() throws {
        var rng = SplitMix64(seed: 0x15a)
        let punctuation = Array(#"{}[]:,"\ 0-.eE+tfnu"#.utf8)
        var disagreements: [String] = []
        var acceptedCount = 0, refusedCount = 0
        for _ in 0..<20_000 {
            var doc = Self.sample
            for _ in 0..<(1 + Int(rng.next() % 3)) {
                let i = Int(rng.next() % UInt64(doc.count))
                switch rng.next() % 4 {
                case 0: doc[i] ^= UInt8(1 << (rng.next() % 8))
                case 1: doc.insert(punctuation[Int(rng.next() % UInt64(punctuation.count))], at: i)
                case 2: doc.remove(at: i)
                default: doc.removeSubrange(i...)
                }
                if doc.isEmpty { break }
            }
            let reference = (try? JSONSerialization.jsonObject(with: Data(doc))) as? [String: Any]
            let checked = try? JSONCheck.check(doc)
            let accepted = checked?.isObject == true
            if accepted { acceptedCount += 1 } else { refusedCount += 1 }
            if !accepted, reference != nil, (try? JSONCheck.check(Self.droppingTrailingCommas(doc)))?.isObject == true {
                continue  // Foundation accepts `[1,]` and `{"a":1,}`; RFC 8259 does not
            }
            if accepted != (reference != nil) || (accepted && !checked!.duplicateResourceType
                                                   && checked!.resourceType != (reference!["resourceType"] as? String ?? (reference!["resourceType"] == nil ? nil : ""))) {
                disagreements.append(String(decoding: doc, as: UTF8.self))
            }
        }
        // Both outcomes are well represented, so agreement is not trivial.
        #expect(acceptedCount > 2_000 && refusedCount > 2_000, "\(acceptedCount) accepted, \(refusedCount) refused")
        #expect(disagreements.isEmpty, "\(disagreements.count) disagreements, first: \(disagreements.first ?? "")")
    }
    /// Integer fields of payloads and proofs read only plain JSON integers: `true`, fractions,
    /// exponents, negative values for unsigned fields and out-of-range values are refused.
    @Test func integerFieldsAcceptOnlyPlainIntegers() {
        func parse(_ text: String) -> Any {
            (try! JSONSerialization.jsonObject(with: Data("[\(text)]".utf8)) as! [Any])[0]
        }
        #expect(JSONValue.integer(parse("1"), as: Int.self) == 1)
        #expect(JSONValue.integer(parse("0"), as: UInt64.self) == 0)
        #expect(JSONValue.integer(parse("-7"), as: Int64.self) == -7)
        #expect(JSONValue.integer(parse("4294967295"), as: UInt32.self) == UInt32.max)
        #expect(JSONValue.integer(parse("9223372036854775807"), as: Int64.self) == Int64.max)
        #expect(JSONValue.integer(parse("18446744073709551615"), as: UInt64.self) == UInt64.max)
        for text in ["true", "false", "1.0", "1.5", "1e2", "1E0", "\"1\"", "null", "[1]", "18446744073709551616",
                     "123456789012345678901234567890"] {
            #expect(JSONValue.integer(parse(text), as: UInt64.self) == nil, "\(text) must not read as an integer")
            #expect(JSONValue.integer(parse(text), as: Int.self) == nil, "\(text) must not read as an integer")
        }
        #expect(JSONValue.integer(parse("-1"), as: UInt64.self) == nil)
        #expect(JSONValue.integer(parse("4294967296"), as: UInt32.self) == nil)
        #expect(JSONValue.integer(nil, as: Int.self) == nil)
        #expect(JSONValue.isBoolean(parse("true") as! NSNumber) && !JSONValue.isBoolean(parse("1") as! NSNumber))
    }
}
