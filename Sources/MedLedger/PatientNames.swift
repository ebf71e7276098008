import LMDBKit
import LedgerCrypto

/// The byte strings the patient layer MACs and binds as associated data, assembled directly.
///
/// Each is the UTF-8 of a `|`-separated label such as `medledger-record/1|<hex p>|<hex r>|7`
/// (FORMATS.md section 10). A put builds four of them per record; building them through
/// `String` interpolation and `Hash.hex` cost more than the AES-GCM seal of a 2 KB record.
/// The `String` forms stay the reference: a test holds every builder equal to them.
struct LabelBytes {
    private(set) var bytes: [UInt8] = []

    init(_ prefix: StaticString, capacity: Int = 192) {
        bytes.reserveCapacity(capacity)
        bytes.append(contentsOf: UnsafeBufferPointer(start: prefix.utf8Start, count: prefix.utf8CodeUnitCount))
    }

    /// Appends `|` and the 64 hex characters of `hash`.
    @inline(__always)
    mutating func field(_ hash: Hash) {
        bytes.append(UInt8(ascii: "|"))
        hash.appendHex(to: &bytes)
    }

    /// Appends `|` and `value` in decimal.
    mutating func field(_ value: UInt64) {
        bytes.append(UInt8(ascii: "|"))
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes: UInt64.max has 20 digits
        withUnsafeMutableBytes(of: &digits) { buffer in
            var v = value, at = buffer.count
            repeat {
                at -= 1
                buffer[at] = UInt8(ascii: "0") + UInt8(v % 10)
                v /= 10
            } while v > 0
            bytes.append(contentsOf: buffer[at...])
        }
    }

    /// Appends `|` and the UTF-8 of `text`.
    mutating func field(_ text: String) {
        bytes.append(UInt8(ascii: "|"))
        bytes.append(contentsOf: text.utf8)
    }

    /// Appends the UTF-8 of `text` with no separator.
    mutating func text(_ text: String) {
        bytes.append(contentsOf: text.utf8)
    }
}

extension PatientRecords {
    /// `medledger-record/1|<hex p>|<hex r>|<version>`: a record version's associated data.
    static func recordAAD(_ p: Hash, _ r: Hash, _ version: UInt32) -> [UInt8] {
        var label = LabelBytes("medledger-record/1")
        label.field(p)
        label.field(r)
        label.field(UInt64(version))
        return label.bytes
    }

    /// `medledger-record-key/1|<hex p>|<hex r>|<version>`: the MAC input of a version's key.
    static func recordKeyLabel(_ p: Hash, _ r: Hash, _ version: UInt32) -> [UInt8] {
        var label = LabelBytes("medledger-record-key/1")
        label.field(p)
        label.field(r)
        label.field(UInt64(version))
        return label.bytes
    }

    /// The key of one record version: HMAC-SHA-256(data key, ``recordKeyLabel(_:_:_:)``).
    static func recordKey(dataKey: SecureBytes, _ p: Hash, _ r: Hash, _ version: UInt32) throws -> SecureBytes {
        let derived = try HMACSHA256.authenticationCode(for: recordKeyLabel(p, r, version), key: dataKey)
        return derived.withUnsafeBytes { SecureBytes(copying: $0) }
    }

    /// `medledger-data-key/1|<hex p>|<generation>|<epoch>`: a wrapped data key's associated data.
    static func dataKeyAAD(_ p: Hash, _ generation: UInt64, _ epoch: UInt32) -> [UInt8] {
        var label = LabelBytes("medledger-data-key/1")
        label.field(p)
        label.field(generation)
        label.field(UInt64(epoch))
        return label.bytes
    }

    /// `patient|<external id>`: the pseudonym's MAC input.
    static func pseudonymLabel(_ externalId: String) -> [UInt8] {
        var label = LabelBytes("patient", capacity: 8 + externalId.utf8.count)
        label.field(externalId)
        return label.bytes
    }

    /// `record|<hex p>|<record id>`: the record hash's MAC input.
    static func recordHashLabel(_ p: Hash, _ recordId: String) -> [UInt8] {
        var label = LabelBytes("record", capacity: 72 + recordId.utf8.count)
        label.field(p)
        label.field(recordId)
        return label.bytes
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
        var storage: (Hash, Hash, UInt32) = (p, r, version.bigEndian)
        return try withUnsafeBytes(of: &storage) { raw in
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
        var storage: (Hash, UInt64) = (p, index.bigEndian)
        return try withUnsafeBytes(of: &storage) { raw in
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
