import Foundation

/// A strict RFC 8259 checker for uploaded FHIR JSON: validates the whole document (syntax,
/// UTF-8, nesting depth) in one pass without building objects, and returns the top-level
/// `resourceType`.
///
/// Records are stored as the bytes the caller sent, so the ledger needs to know only that they
/// are one well-formed JSON object and what type of resource they hold. Building a Foundation
/// object tree for that cost about 140,000 instructions per 2 KB record, the largest single
/// cost of a put; this pass costs a few instructions per byte.
enum JSONCheck {
    /// Nesting deeper than this is refused (FHIR resources nest a dozen levels at most).
    static let maxDepth = 100

    /// Why a document was refused, with the byte offset where checking stopped.
    struct Failure: Error, CustomStringConvertible {
        let offset: Int
        let reason: String
        var description: String { "\(reason) at byte \(offset)" }
    }

    /// The outcome for a well-formed document.
    struct Summary {
        /// Whether the top-level value is an object.
        var isObject = false
        /// The top-level `resourceType` member when it is a string; `nil` when absent or not a string.
        var resourceType: String?
        /// Whether `resourceType` appears more than once at the top level.
        var duplicateResourceType = false
    }

    /// Checks `bytes` as one JSON text.
    /// With `rejectingDuplicates`, an object naming a member twice is refused: parsers
    /// disagree on which of the two wins, so a verifier must not accept it. `maxDepth` is for
    /// documents that embed stored records a few levels down (an export's Bundle). With
    /// `integersOnly`, every number must be a non-negative integer in plain digits: proof
    /// documents hold only sizes, indexes and offsets, and refusing `1.0`, `1e0` or `-0`
    /// leaves each proof one spelling of its numbers.
    static func check(_ bytes: UnsafeRawBufferPointer, rejectingDuplicates: Bool = false,
                      maxDepth: Int = JSONCheck.maxDepth, integersOnly: Bool = false) throws(Failure) -> Summary {
        var parser = Parser(bytes: bytes)
        parser.rejectDuplicates = rejectingDuplicates
        parser.integersOnly = integersOnly
        parser.maxDepth = maxDepth
        var summary = Summary()
        parser.skipSpace()
        try parser.value(depth: 0, summary: &summary)
        parser.skipSpace()
        guard parser.at == bytes.count else { throw Failure(offset: parser.at, reason: "unexpected data after the JSON value") }
        return summary
    }

    /// Checks a byte array as one JSON text.
    static func check(_ bytes: [UInt8], rejectingDuplicates: Bool = false, maxDepth: Int = JSONCheck.maxDepth,
                      integersOnly: Bool = false) throws(Failure) -> Summary {
        // Array.withUnsafeBytes rethrows untyped; the body throws only Failure.
        do {
            return try bytes.withUnsafeBytes { raw in
                try check(raw, rejectingDuplicates: rejectingDuplicates, maxDepth: maxDepth, integersOnly: integersOnly)
            }
        } catch let failure as Failure {
            throw failure
        } catch {
            throw Failure(offset: 0, reason: "\(error)")
        }
    }

    private struct Parser {
        let bytes: UnsafeRawBufferPointer
        var at = 0
        var rejectDuplicates = false
        var maxDepth = JSONCheck.maxDepth
        var integersOnly = false

        init(bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

        func fail(_ reason: String) -> Failure { Failure(offset: at, reason: reason) }

        @inline(__always)
        mutating func skipSpace() {
            while at < bytes.count {
                let b = bytes[at]
                guard b == 0x20 || b == 0x0a || b == 0x0d || b == 0x09 else { return }
                at += 1
            }
        }

        mutating func value(depth: Int, summary: inout Summary) throws(Failure) {
            guard at < bytes.count else { throw fail("unexpected end of input") }
            switch bytes[at] {
            case UInt8(ascii: "{"): try object(depth: depth + 1, summary: &summary)
            case UInt8(ascii: "["): try array(depth: depth + 1)
            case UInt8(ascii: "\""): _ = try string()
            case UInt8(ascii: "t"): try literal("true")
            case UInt8(ascii: "f"): try literal("false")
            case UInt8(ascii: "n"): try literal("null")
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): try number()
            default: throw fail("unexpected character")
            }
        }

        /// An object; at depth 1 it records the top-level `resourceType`.
        mutating func object(depth: Int, summary: inout Summary) throws(Failure) {
            guard depth <= maxDepth else { throw fail("nesting deeper than \(maxDepth)") }
            if depth == 1 { summary.isObject = true }
            at += 1
            skipSpace()
            if at < bytes.count && bytes[at] == UInt8(ascii: "}") { at += 1; return }
            var ignored = Summary()
            var names = Set<String>()
            while true {
                guard at < bytes.count, bytes[at] == UInt8(ascii: "\"") else { throw fail("expected a member name") }
                let nameStart = at
                let name = try string()
                if rejectDuplicates {
                    guard names.insert(decode(name)).inserted else {
                        at = nameStart
                        throw fail("member name given twice")
                    }
                }
                skipSpace()
                guard at < bytes.count, bytes[at] == UInt8(ascii: ":") else { throw fail("expected ':'") }
                at += 1
                skipSpace()
                if depth == 1 && isResourceType(name) {
                    if summary.resourceType != nil { summary.duplicateResourceType = true }
                    if at < bytes.count && bytes[at] == UInt8(ascii: "\"") {
                        summary.resourceType = decode(try string())
                    } else {
                        try value(depth: depth, summary: &ignored)
                        summary.resourceType = summary.resourceType ?? ""
                    }
                } else {
                    try value(depth: depth, summary: &ignored)
                }
                skipSpace()
                guard at < bytes.count else { throw fail("unexpected end of input in an object") }
                if bytes[at] == UInt8(ascii: ",") {
                    at += 1
                    skipSpace()
                } else if bytes[at] == UInt8(ascii: "}") {
                    at += 1
                    return
                } else {
                    throw fail("expected ',' or '}'")
                }
            }
        }

        mutating func array(depth: Int) throws(Failure) {
            guard depth <= maxDepth else { throw fail("nesting deeper than \(maxDepth)") }
            at += 1
            skipSpace()
            if at < bytes.count && bytes[at] == UInt8(ascii: "]") { at += 1; return }
            var ignored = Summary()
            while true {
                try value(depth: depth, summary: &ignored)
                skipSpace()
                guard at < bytes.count else { throw fail("unexpected end of input in an array") }
                if bytes[at] == UInt8(ascii: ",") {
                    at += 1
                    skipSpace()
                } else if bytes[at] == UInt8(ascii: "]") {
                    at += 1
                    return
                } else {
                    throw fail("expected ',' or ']'")
                }
            }
        }

        /// A string starting at the opening quote; returns the range of its raw bytes (between
        /// the quotes) and whether it holds escapes.
        mutating func string() throws(Failure) -> (range: Range<Int>, escaped: Bool) {
            at += 1
            let start = at
            var escaped = false
            while at < bytes.count {
                // Plain ASCII runs (nearly all of a record) in a tight loop on locals.
                var i = at
                let end = bytes.count
                let base = bytes.baseAddress!
                // Eight bytes at a time while none of them ends the run: a byte of 0x80 or
                // more, below 0x20, a quote or a backslash (exact "any byte" tests; the byte
                // loop below then finds which one).
                while i + 8 <= end {
                    let w = base.loadUnaligned(fromByteOffset: i, as: UInt64.self)
                    let ones: UInt64 = 0x0101_0101_0101_0101, highs: UInt64 = 0x8080_8080_8080_8080
                    let quote = w ^ (ones &* 0x22), backslash = w ^ (ones &* 0x5c)
                    let stop = w | ((w &- ones &* 0x20) & ~w) | ((quote &- ones) & ~quote) | ((backslash &- ones) & ~backslash)
                    guard stop & highs == 0 else { break }
                    i += 8
                }
                while i < end {
                    let c = base.load(fromByteOffset: i, as: UInt8.self)
                    guard c >= 0x20 && c < 0x80 && c != UInt8(ascii: "\"") && c != UInt8(ascii: "\\") else { break }
                    i += 1
                }
                at = i
                guard at < end else { break }
                let b = bytes[at]
                if b == UInt8(ascii: "\"") {
                    at += 1
                    return (start..<(at - 1), escaped)
                } else if b == UInt8(ascii: "\\") {
                    escaped = true
                    at += 1
                    guard at < bytes.count else { break }
                    switch bytes[at] {
                    case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"),
                         UInt8(ascii: "f"), UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
                        at += 1
                    case UInt8(ascii: "u"):
                        // A UTF-16 surrogate must come as a high-low pair: a lone one is no
                        // character, and Foundation's parser (an export's verifier) refuses it.
                        let unit = try escapedUnit()
                        if unit >= 0xDC00 && unit <= 0xDFFF { throw fail("unpaired surrogate in a \\u escape") }
                        if unit >= 0xD800 && unit <= 0xDBFF {
                            guard at + 1 < bytes.count, bytes[at] == UInt8(ascii: "\\"), bytes[at + 1] == UInt8(ascii: "u") else {
                                throw fail("unpaired surrogate in a \\u escape")
                            }
                            at += 1
                            let low = try escapedUnit()
                            guard low >= 0xDC00 && low <= 0xDFFF else { throw fail("unpaired surrogate in a \\u escape") }
                        }
                    default:
                        throw fail("bad escape")
                    }
                } else if b < 0x20 {
                    throw fail("control character in a string")
                } else if b < 0x80 {
                    at += 1
                } else {
                    try utf8Sequence(b)
                }
            }
            throw fail("unterminated string")
        }

        /// One multi-byte UTF-8 sequence (RFC 3629: no overlong forms, no surrogates, at most U+10FFFF).
        mutating func utf8Sequence(_ lead: UInt8) throws(Failure) {
            let count: Int
            var low: UInt8 = 0x80, high: UInt8 = 0xbf
            switch lead {
            case 0xc2...0xdf: count = 2
            case 0xe0: count = 3; low = 0xa0
            case 0xe1...0xec, 0xee...0xef: count = 3
            case 0xed: count = 3; high = 0x9f
            case 0xf0: count = 4; low = 0x90
            case 0xf1...0xf3: count = 4
            case 0xf4: count = 4; high = 0x8f
            default: throw fail("invalid UTF-8")
            }
            guard at + count <= bytes.count else { throw fail("truncated UTF-8") }
            let second = bytes[at + 1]
            guard second >= low && second <= high else { throw fail("invalid UTF-8") }
            for i in 2..<count where bytes[at + i] & 0xc0 != 0x80 { throw fail("invalid UTF-8") }
            at += count
        }

        mutating func literal(_ word: StaticString) throws(Failure) {
            let count = word.utf8CodeUnitCount
            guard at + count <= bytes.count else { throw fail("unexpected end of input") }
            for i in 0..<count where bytes[at + i] != word.utf8Start[i] { throw fail("unknown literal") }
            at += count
        }

        mutating func number() throws(Failure) {
            let start = at
            if bytes[at] == UInt8(ascii: "-") { at += 1 }
            guard at < bytes.count, isDigit(bytes[at]) else { throw fail("bad number") }
            if bytes[at] == UInt8(ascii: "0") {
                at += 1
            } else {
                while at < bytes.count && isDigit(bytes[at]) { at += 1 }
            }
            if at < bytes.count && bytes[at] == UInt8(ascii: ".") {
                at += 1
                guard at < bytes.count, isDigit(bytes[at]) else { throw fail("bad number fraction") }
                while at < bytes.count && isDigit(bytes[at]) { at += 1 }
            }
            if at < bytes.count && (bytes[at] == UInt8(ascii: "e") || bytes[at] == UInt8(ascii: "E")) {
                at += 1
                if at < bytes.count && (bytes[at] == UInt8(ascii: "+") || bytes[at] == UInt8(ascii: "-")) { at += 1 }
                guard at < bytes.count, isDigit(bytes[at]) else { throw fail("bad number exponent") }
                while at < bytes.count && isDigit(bytes[at]) { at += 1 }
                try finite(start)
            } else if at - start > 300 {
                try finite(start)
            }
            if integersOnly {
                let text = UnsafeRawBufferPointer(rebasing: bytes[start..<at])
                guard !text.contains(where: { !isDigit($0) }) else {
                    throw Failure(offset: start, reason: "not a plain non-negative integer (no sign, fraction or exponent)")
                }
            }
        }

        /// RFC 8259 allows any magnitude, but readers hold numbers as doubles (section 6):
        /// one past the double range would be stored and then fail every later reader.
        func finite(_ start: Int) throws(Failure) {
            let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<at]), as: UTF8.self)
            guard let value = Double(text), value.isFinite else {
                throw Failure(offset: start, reason: "number outside the range of a double")
            }
        }

        /// Whether a member name is `resourceType`, comparing bytes unless it holds escapes.
        func isResourceType(_ name: (range: Range<Int>, escaped: Bool)) -> Bool {
            let expected: StaticString = "resourceType"
            guard !name.escaped else { return decode(name) == "resourceType" }
            return name.range.count == expected.utf8CodeUnitCount
                && UnsafeRawBufferPointer(rebasing: bytes[name.range]).elementsEqual(
                    UnsafeBufferPointer(start: expected.utf8Start, count: expected.utf8CodeUnitCount))
        }

        /// The text of a checked string; escapes (rare in names) are decoded by Foundation.
        func decode(_ s: (range: Range<Int>, escaped: Bool)) -> String {
            let raw = UnsafeRawBufferPointer(rebasing: bytes[s.range])
            guard s.escaped else { return String(decoding: raw, as: UTF8.self) }
            let literal = Data([UInt8(ascii: "["), UInt8(ascii: "\"")]) + Data(raw) + Data([UInt8(ascii: "\""), UInt8(ascii: "]")])
            return ((try? JSONSerialization.jsonObject(with: literal)) as? [String])?.first ?? ""
        }

        /// The code unit of the `\\u` escape whose `u` is at `at`; moves past its four digits.
        mutating func escapedUnit() throws(Failure) -> UInt16 {
            guard at + 4 < bytes.count else { throw fail("truncated \\u escape") }
            var unit: UInt16 = 0
            for i in 1...4 {
                let b = bytes[at + i]
                guard isHexDigit(b) else { throw fail("bad \\u escape") }
                unit = unit << 4 | UInt16(isDigit(b) ? b - UInt8(ascii: "0") : (b | 0x20) - UInt8(ascii: "a") + 10)
            }
            at += 5
            return unit
        }

        @inline(__always) func isDigit(_ b: UInt8) -> Bool { b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") }
        @inline(__always) func isHexDigit(_ b: UInt8) -> Bool {
            isDigit(b) || (b | 0x20 >= UInt8(ascii: "a") && b | 0x20 <= UInt8(ascii: "f"))
        }
    }
}
