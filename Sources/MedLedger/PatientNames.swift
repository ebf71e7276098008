import LMDBKit
import LedgerCrypto

/// Writes bytes into one allocation of a computed capacity, for what the patient layer builds
/// per request: the labels it MACs or binds as associated data, and audit payload JSON.
///
/// A label is the UTF-8 of a `|`-separated string such as `medledger-record/1|<hex p>|<hex r>|7`
/// (FORMATS.md section 10); a read builds three and a put four per record. Built through
/// `String` interpolation and `Hash.hex`, or through `[UInt8]` appends (which check capacity and
/// uniqueness per byte), they cost more than the AES-GCM of a 2 KB record. The `String` forms
/// and the general JSON encoder stay the reference: tests hold every builder equal to them.
struct ByteWriter {
    private var at: UnsafeMutablePointer<UInt8>
    private let end: UnsafeMutablePointer<UInt8>

    /// The bytes `body` writes, into one allocation of `capacity` bytes: a bound the caller
    /// computes from the parts (65 per label hash field, 21 per number, ``jsonBound(_:)`` per
    /// JSON string).
    static func build(capacity: Int, _ body: (inout ByteWriter) -> Void) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: capacity) { buffer, count in
            var writer = ByteWriter(at: buffer.baseAddress!, end: buffer.baseAddress! + capacity)
            body(&writer)
            count = writer.at - buffer.baseAddress!
        }
    }

    /// Lends `use` the bytes `body` writes into temporary memory of `capacity` bytes (on the
    /// stack for a label of up to a kilobyte): a MAC input or associated data needs no array.
    static func withBuilt<R>(capacity: Int, _ body: (inout ByteWriter) -> Void,
                             _ use: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withUnsafeTemporaryAllocation(of: UInt8.self, capacity: capacity) { buffer in
            var writer = ByteWriter(at: buffer.baseAddress!, end: buffer.baseAddress! + capacity)
            body(&writer)
            return try use(UnsafeRawBufferPointer(start: buffer.baseAddress!, count: writer.at - buffer.baseAddress!))
        }
    }

    private init(at: UnsafeMutablePointer<UInt8>, end: UnsafeMutablePointer<UInt8>) {
        self.at = at
        self.end = end
    }

    private mutating func reserve(_ n: Int) -> UnsafeMutablePointer<UInt8> {
        precondition(end - at >= n, "bytes longer than their computed capacity")
        defer { at += n }
        return at
    }

    private mutating func byte(_ b: UInt8) { reserve(1).initialize(to: b) }

    /// `text`'s bytes as they are (label prefixes, JSON punctuation and member names).
    mutating func raw(_ text: StaticString) {
        reserve(text.utf8CodeUnitCount).initialize(from: text.utf8Start, count: text.utf8CodeUnitCount)
    }

    private mutating func bytes(_ utf8: UnsafeBufferPointer<UInt8>) {
        if let base = utf8.baseAddress { reserve(utf8.count).initialize(from: base, count: utf8.count) }
    }

    /// `fragment`'s bytes as they are (JSON an encoder prepared once for many payloads).
    mutating func bytes(_ fragment: [UInt8]) { fragment.withUnsafeBufferPointer { bytes($0) } }

    /// The 64 hex characters of `hash`.
    mutating func hex(_ hash: Hash) { hash.writeHex(to: UnsafeMutableRawPointer(reserve(64))) }

    /// `value` in decimal (at most 20 bytes).
    private mutating func decimal(_ value: UInt64) {
        var digits = 1, rest = value / 10
        while rest > 0 { digits += 1; rest /= 10 }
        let out = reserve(digits)
        var v = value
        for i in stride(from: digits - 1, through: 0, by: -1) {
            out[i] = UInt8(ascii: "0") + UInt8(v % 10)
            v /= 10
        }
    }

    /// `value` in decimal (at most 20 bytes).
    mutating func unsigned(_ value: UInt64) { decimal(value) }

    /// `value` in decimal, with a sign when negative (at most 20 bytes).
    mutating func integer(_ value: Int64) {
        if value < 0 { byte(UInt8(ascii: "-")) }
        decimal(value.magnitude)
    }

    // Label fields.

    /// `|` and the 64 hex characters of `hash`.
    mutating func field(_ hash: Hash) {
        byte(UInt8(ascii: "|"))
        hex(hash)
    }

    /// `|` and `value` in decimal.
    mutating func field(_ value: UInt64) {
        byte(UInt8(ascii: "|"))
        decimal(value)
    }

    /// `|` and the UTF-8 of `text`.
    mutating func field(_ text: String) {
        byte(UInt8(ascii: "|"))
        var text = text
        text.withUTF8 { bytes($0) }
    }

    // JSON values.

    /// The capacity a JSON string needs at most: quotes, and six bytes (`\u00XX`) per byte.
    static func jsonBound(_ text: String) -> Int { 2 + 6 * text.utf8.count }

    /// A JSON string: quote, backslash and control bytes escaped (`\u00XX`), all else as is.
    mutating func string(_ text: String) {
        var text = text
        text.withUTF8 { utf8 in
            byte(UInt8(ascii: "\""))
            defer { byte(UInt8(ascii: "\"")) }
            // Nearly every string needs no escaping: one copy.
            guard utf8.contains(where: { $0 < 0x20 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }) else {
                bytes(utf8)
                return
            }
            for b in utf8 {
                switch b {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"):
                    byte(UInt8(ascii: "\\"))
                    byte(b)
                case 0..<0x20:
                    raw("\\u00")
                    byte(Hex.digit(b >> 4))
                    byte(Hex.digit(b & 0x0f))
                default:
                    byte(b)
                }
            }
        }
    }

    /// The hex of `hash` as a JSON string (66 bytes).
    mutating func hexString(_ hash: Hash) {
        byte(UInt8(ascii: "\""))
        hex(hash)
        byte(UInt8(ascii: "\""))
    }

    /// A JSON array of hashes as hex strings (67 bytes a hash, and 2); `""` for each hash
    /// equal to `blank`.
    mutating func hexStrings(_ hashes: [Hash], blank: Hash? = nil) {
        byte(UInt8(ascii: "["))
        for (i, hash) in hashes.enumerated() {
            if i > 0 { byte(UInt8(ascii: ",")) }
            if let blank, hash == blank { raw("\"\"") } else { hexString(hash) }
        }
        byte(UInt8(ascii: "]"))
    }

    /// `true` or `false`.
    mutating func boolean(_ value: Bool) { if value { raw("true") } else { raw("false") } }
}

extension PatientRecords {
    /// `medledger-record/1|<hex p>|<hex r>|<version>`: a record version's associated data.
    static func recordAAD(_ p: Hash, _ r: Hash, _ version: UInt32) -> [UInt8] {
        withRecordAAD(p, r, version) { Array($0) }
    }

    /// ``recordAAD(_:_:_:)`` lent to `use` without an array.
    static func withRecordAAD<R>(_ p: Hash, _ r: Hash, _ version: UInt32, _ use: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withVersionLabel("medledger-record/1", p, r, version, use)
    }

    /// `medledger-record-key/1|<hex p>|<hex r>|<version>`: the MAC input of a version's key.
    static func recordKeyLabel(_ p: Hash, _ r: Hash, _ version: UInt32) -> [UInt8] {
        withVersionLabel("medledger-record-key/1", p, r, version) { Array($0) }
    }

    /// `<prefix>|<hex p>|<hex r>|<version>`, lent to `use`.
    private static func withVersionLabel<R>(_ prefix: StaticString, _ p: Hash, _ r: Hash, _ version: UInt32,
                                            _ use: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try ByteWriter.withBuilt(capacity: prefix.utf8CodeUnitCount + 130 + 21, { label in
            label.raw(prefix)
            label.field(p)
            label.field(r)
            label.field(UInt64(version))
        }, use)
    }

    /// The key of one record version: HMAC-SHA-256(data key, ``recordKeyLabel(_:_:_:)``).
    static func recordKey(dataKey: SecureBytes, _ p: Hash, _ r: Hash, _ version: UInt32) throws -> SecureBytes {
        let mac = try HMACSHA256.Key(dataKey)
        var derived = withVersionLabel("medledger-record-key/1", p, r, version) { mac.authenticationCode(for: $0) }
        defer { secureZero(&derived) }
        return derived.withUnsafeBytes { SecureBytes(copying: $0) }
    }

    /// `medledger-data-key/1|<hex p>|<generation>|<epoch>`: a wrapped data key's associated data.
    static func dataKeyAAD(_ p: Hash, _ generation: UInt64, _ epoch: UInt32) -> [UInt8] {
        withDataKeyAAD(p, generation, epoch) { Array($0) }
    }

    /// ``dataKeyAAD(_:_:_:)`` lent to `use` without an array.
    static func withDataKeyAAD<R>(_ p: Hash, _ generation: UInt64, _ epoch: UInt32, _ use: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try ByteWriter.withBuilt(capacity: 20 + 65 + 42, { label in
            label.raw("medledger-data-key/1")
            label.field(p)
            label.field(generation)
            label.field(UInt64(epoch))
        }, use)
    }

    /// `patient|<external id>`: the pseudonym's MAC input.
    static func pseudonymLabel(_ externalId: String) -> [UInt8] {
        withPseudonymLabel(externalId) { Array($0) }
    }

    /// ``pseudonymLabel(_:)`` lent to `use` without an array.
    static func withPseudonymLabel<R>(_ externalId: String, _ use: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try ByteWriter.withBuilt(capacity: 8 + externalId.utf8.count, { label in
            label.raw("patient")
            label.field(externalId)
        }, use)
    }

    /// `record|<hex p>|<record id>`: the record hash's MAC input.
    static func recordHashLabel(_ p: Hash, _ recordId: String) -> [UInt8] {
        withRecordHashLabel(p, recordId) { Array($0) }
    }

    /// ``recordHashLabel(_:_:)`` lent to `use` without an array.
    static func withRecordHashLabel<R>(_ p: Hash, _ recordId: String, _ use: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try ByteWriter.withBuilt(capacity: 6 + 65 + 1 + recordId.utf8.count, { label in
            label.raw("record")
            label.field(p)
            label.field(recordId)
        }, use)
    }
}

/// A `pl.records` key, `p || r || u32 version big-endian` (68 bytes), lent to LMDB without an
/// array.
struct RecordStorageKey: LMDBBytes, Comparable {
    let p: Hash
    let r: Hash
    let version: UInt32

    static let byteCount = 68

    init(p: Hash, r: Hash, version: UInt32) { (self.p, self.r, self.version) = (p, r, version) }

    /// Parses the 68 stored bytes (a `pl.records` key, a `pl.records.recent` value); nil for
    /// any other size.
    init?(_ raw: UnsafeRawBufferPointer) {
        guard raw.count == Self.byteCount else { return nil }
        self.init(p: Hash(unchecked: raw, at: 0), r: Hash(unchecked: raw, at: 32),
                  version: UInt32(bigEndian: raw.loadUnaligned(fromByteOffset: 64, as: UInt32.self)))
    }

    var slot: RecordSlot { RecordSlot(p: p, r: r) }

    /// The order of the stored keys.
    static func < (a: RecordStorageKey, b: RecordStorageKey) -> Bool {
        a.p != b.p ? a.p < b.p : a.r != b.r ? a.r < b.r : a.version < b.version
    }

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

    // Both names are hashes already: a word of each spreads the slots (equality still
    // compares all 64 bytes), for a quarter of the hashing a lookup did.
    func hash(into hasher: inout Hasher) {
        hasher.combine(p.firstWord)
        hasher.combine(r.firstWord)
    }
}
