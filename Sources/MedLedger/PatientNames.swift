import LMDBKit
import LedgerCrypto

/// The byte strings the patient layer MACs and binds as associated data, assembled directly.
///
/// Each is the UTF-8 of a `|`-separated label such as `medledger-record/1|<hex p>|<hex r>|7`
/// (FORMATS.md section 10). A read builds three of them and a put four per record; building
/// them through `String` interpolation and `Hash.hex` cost more than the AES-GCM of a 2 KB
/// record. The `String` forms stay the reference: a test holds every builder equal to them.
struct LabelWriter {
    private var at: UnsafeMutablePointer<UInt8>
    private let end: UnsafeMutablePointer<UInt8>

    /// The bytes `body` writes, into one allocation of `capacity` bytes (a bound the caller
    /// computes from the parts: 65 per hash field, 21 per number field).
    static func build(capacity: Int, _ body: (inout LabelWriter) -> Void) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: capacity) { buffer, count in
            var writer = LabelWriter(at: buffer.baseAddress!, end: buffer.baseAddress! + capacity)
            body(&writer)
            count = writer.at - buffer.baseAddress!
        }
    }

    private init(at: UnsafeMutablePointer<UInt8>, end: UnsafeMutablePointer<UInt8>) {
        self.at = at
        self.end = end
    }

    private mutating func reserve(_ n: Int) -> UnsafeMutablePointer<UInt8> {
        precondition(end - at >= n, "label longer than its computed capacity")
        defer { at += n }
        return at
    }

    /// Appends `text`'s bytes with no separator.
    mutating func literal(_ text: StaticString) {
        reserve(text.utf8CodeUnitCount).initialize(from: text.utf8Start, count: text.utf8CodeUnitCount)
    }

    /// Appends `|` and the 64 hex characters of `hash`.
    mutating func field(_ hash: Hash) {
        let out = reserve(65)
        out[0] = UInt8(ascii: "|")
        for i in 0..<32 {
            let b = hash.byte(at: i)
            out[1 + 2 * i] = Hex.digit(b >> 4)
            out[2 + 2 * i] = Hex.digit(b & 0x0f)
        }
    }

    /// Appends `|` and `value` in decimal.
    mutating func field(_ value: UInt64) {
        var digits = 1, rest = value / 10
        while rest > 0 { digits += 1; rest /= 10 }
        let out = reserve(1 + digits)
        out[0] = UInt8(ascii: "|")
        var v = value
        for i in stride(from: digits, through: 1, by: -1) {
            out[i] = UInt8(ascii: "0") + UInt8(v % 10)
            v /= 10
        }
    }

    /// Appends `|` and the UTF-8 of `text`.
    mutating func field(_ text: String) {
        var text = text
        text.withUTF8 { utf8 in
            let out = reserve(1 + utf8.count)
            out[0] = UInt8(ascii: "|")
            if let base = utf8.baseAddress { (out + 1).initialize(from: base, count: utf8.count) }
        }
    }
}

/// Writes compact JSON into one allocation of a computed capacity, for payloads written once
/// per request (an audited read's event): `[UInt8]` appends checked capacity and uniqueness
/// per byte, which cost more than the rest of encoding the event.
struct JSONWriter {
    private var at: UnsafeMutablePointer<UInt8>
    private let end: UnsafeMutablePointer<UInt8>

    /// The capacity a string field needs at most: quotes, and six bytes (`\u00XX`) per byte.
    static func bound(_ text: String) -> Int { 2 + 6 * text.utf8.count }

    static func build(capacity: Int, _ body: (inout JSONWriter) -> Void) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: capacity) { buffer, count in
            var writer = JSONWriter(at: buffer.baseAddress!, end: buffer.baseAddress! + capacity)
            body(&writer)
            count = writer.at - buffer.baseAddress!
        }
    }

    private init(at: UnsafeMutablePointer<UInt8>, end: UnsafeMutablePointer<UInt8>) {
        self.at = at
        self.end = end
    }

    private mutating func reserve(_ n: Int) -> UnsafeMutablePointer<UInt8> {
        precondition(end - at >= n, "JSON longer than its computed capacity")
        defer { at += n }
        return at
    }

    /// Bytes written as they are (punctuation, member names with their quotes, literals).
    mutating func raw(_ text: StaticString) {
        reserve(text.utf8CodeUnitCount).initialize(from: text.utf8Start, count: text.utf8CodeUnitCount)
    }

    /// A JSON string, escaped as ``PatientPayload/writeString(_:into:)`` escapes it.
    mutating func string(_ text: String) {
        var text = text
        text.withUTF8 { utf8 in
            reserve(1)[0] = UInt8(ascii: "\"")
            defer { reserve(1)[0] = UInt8(ascii: "\"") }
            // Nearly every string needs no escaping: one copy.
            if !utf8.contains(where: { $0 < 0x20 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }) {
                if let base = utf8.baseAddress { reserve(utf8.count).initialize(from: base, count: utf8.count) }
                return
            }
            for b in utf8 {
                switch b {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"):
                    let out = reserve(2)
                    out[0] = UInt8(ascii: "\\")
                    out[1] = b
                case 0..<0x20:
                    let out = reserve(6)
                    out[0] = UInt8(ascii: "\\")
                    out[1] = UInt8(ascii: "u")
                    out[2] = UInt8(ascii: "0")
                    out[3] = UInt8(ascii: "0")
                    out[4] = Hex.digit(b >> 4)
                    out[5] = Hex.digit(b & 0x0f)
                default:
                    reserve(1)[0] = b
                }
            }
        }
    }

    /// The hex of `hash` as a JSON string (66 bytes).
    mutating func hexString(_ hash: Hash) {
        let out = reserve(66)
        out[0] = UInt8(ascii: "\"")
        for i in 0..<32 {
            let b = hash.byte(at: i)
            out[1 + 2 * i] = Hex.digit(b >> 4)
            out[2 + 2 * i] = Hex.digit(b & 0x0f)
        }
        out[65] = UInt8(ascii: "\"")
    }

    /// A decimal integer (at most 20 bytes).
    mutating func integer(_ value: Int64) {
        if value < 0 { reserve(1)[0] = UInt8(ascii: "-") }
        let magnitude = value.magnitude
        var digits = 1, rest = magnitude / 10
        while rest > 0 { digits += 1; rest /= 10 }
        let out = reserve(digits)
        var v = magnitude
        for i in stride(from: digits - 1, through: 0, by: -1) {
            out[i] = UInt8(ascii: "0") + UInt8(v % 10)
            v /= 10
        }
    }
}

extension PatientRecords {
    /// `medledger-record/1|<hex p>|<hex r>|<version>`: a record version's associated data.
    static func recordAAD(_ p: Hash, _ r: Hash, _ version: UInt32) -> [UInt8] {
        LabelWriter.build(capacity: 18 + 130 + 21) { label in
            label.literal("medledger-record/1")
            label.field(p)
            label.field(r)
            label.field(UInt64(version))
        }
    }

    /// `medledger-record-key/1|<hex p>|<hex r>|<version>`: the MAC input of a version's key.
    static func recordKeyLabel(_ p: Hash, _ r: Hash, _ version: UInt32) -> [UInt8] {
        LabelWriter.build(capacity: 22 + 130 + 21) { label in
            label.literal("medledger-record-key/1")
            label.field(p)
            label.field(r)
            label.field(UInt64(version))
        }
    }

    /// The key of one record version: HMAC-SHA-256(data key, ``recordKeyLabel(_:_:_:)``).
    static func recordKey(dataKey: SecureBytes, _ p: Hash, _ r: Hash, _ version: UInt32) throws -> SecureBytes {
        let derived = try HMACSHA256.authenticationCode(for: recordKeyLabel(p, r, version), key: dataKey)
        return derived.withUnsafeBytes { SecureBytes(copying: $0) }
    }

    /// `medledger-data-key/1|<hex p>|<generation>|<epoch>`: a wrapped data key's associated data.
    static func dataKeyAAD(_ p: Hash, _ generation: UInt64, _ epoch: UInt32) -> [UInt8] {
        LabelWriter.build(capacity: 20 + 65 + 42) { label in
            label.literal("medledger-data-key/1")
            label.field(p)
            label.field(generation)
            label.field(UInt64(epoch))
        }
    }

    /// `patient|<external id>`: the pseudonym's MAC input.
    static func pseudonymLabel(_ externalId: String) -> [UInt8] {
        LabelWriter.build(capacity: 8 + externalId.utf8.count) { label in
            label.literal("patient")
            label.field(externalId)
        }
    }

    /// `record|<hex p>|<record id>`: the record hash's MAC input.
    static func recordHashLabel(_ p: Hash, _ recordId: String) -> [UInt8] {
        LabelWriter.build(capacity: 6 + 65 + 1 + recordId.utf8.count) { label in
            label.literal("record")
            label.field(p)
            label.field(recordId)
        }
    }
}

/// A `pl.records` key, `p || r || u32 version big-endian` (68 bytes), lent to LMDB without an
/// array.
struct RecordStorageKey: LMDBBytes {
    let p: Hash
    let r: Hash
    let version: UInt32

    static let byteCount = 68

    func withLMDBBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        // A tuple's elements lie in order at their natural alignment: 32 + 32 + 4 = 68 bytes.
        // By value: an optimized build once misread constant offsets through an inout copy.
        let storage: (Hash, Hash, UInt32) = (p, r, version.bigEndian)
        return try withUnsafeBytes(of: storage) { raw in
            assert(raw.count == Self.byteCount)
            return try body(raw)
        }
    }

    /// Whether a stored key names the same record (`p || r`) as this one.
    func sameRecord(_ key: UnsafeRawBufferPointer) -> Bool {
        key.count == Self.byteCount && Hash(unchecked: key, at: 0) == p && Hash(unchecked: key, at: 32) == r
    }
}

/// A `pl.audit` key, `p || u64 index big-endian` (40 bytes), lent to LMDB without an array.
struct AuditStorageKey: LMDBBytes {
    let p: Hash
    let index: UInt64

    func withLMDBBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        let storage: (Hash, UInt64) = (p, index.bigEndian)
        return try withUnsafeBytes(of: storage) { raw in
            assert(raw.count == 40)
            return try body(raw)
        }
    }
}

/// Identifies one record of one patient in a batch's bookkeeping.
struct RecordSlot: Hashable {
    let p: Hash
    let r: Hash
}
