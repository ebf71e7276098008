import Foundation
public import LedgerCrypto

/// Who reads a record through ``PatientRecords``. The embedding service authenticates callers;
/// the ledger decides what each may read and audits every attempt.
public struct Accessor: Sendable, Hashable, CustomStringConvertible {
    public enum Role: String, Sendable, Hashable {
        /// The patient, reading their own records (`id` is their external id).
        case patient
        /// A provider holding (or lacking) a grant from the patient.
        case grantee
        /// The record custodian (the operating organisation's records office).
        case custodian
    }

    public let id: String
    public let role: Role

    public init(id: String, role: Role) {
        self.id = id
        self.role = role
    }

    public static func patient(_ externalId: String) -> Accessor { Accessor(id: externalId, role: .patient) }
    public static func grantee(_ id: String) -> Accessor { Accessor(id: id, role: .grantee) }
    public static func custodian(_ id: String) -> Accessor { Accessor(id: id, role: .custodian) }

    public var description: String { role == .patient ? "patient (redacted)" : "\(role.rawValue) \(id)" }
}

/// What a grant allows: records of the listed FHIR resource types and the listed record ids.
/// Both empty means every record of the patient.
public struct GrantScope: Sendable, Hashable {
    public var resourceTypes: [String]
    public var recordIds: [String]
    public init(resourceTypes: [String] = [], recordIds: [String] = []) {
        self.resourceTypes = resourceTypes.sorted()
        self.recordIds = recordIds.sorted()
    }
    public static let all = GrantScope()
}

/// A grant as stored and as written in its log entry.
public struct Grant: Sendable, Hashable {
    /// The grantee's id.
    public let grantee: String
    /// The grantee's Ed25519 public key (raw 32 bytes), for the service to authenticate it.
    public let granteeKey: [UInt8]
    public let resourceTypes: [String]
    /// Record ids of the scope, as keyed record hashes (hex): the log never names records.
    public let recordHashes: [String]
    /// Seconds since 1970 after which the grant no longer allows reads.
    public let notAfter: Int64
    public let issuedAt: Int64
    /// The grantee's X25519 public key (raw 32 bytes) when the grant shares the patient's data
    /// key with it, sealed to this key (``SealedPatientKey``).
    public let encryptionKey: [UInt8]?
    /// The patient's Ed25519 signature over ``signedMessage(pseudonym:)``, when they hold a key.
    public let signature: [UInt8]?
    /// The log index of the grant entry.
    public internal(set) var index: UInt64 = 0

    /// The bytes a self-custody patient signs: one line per field, fixed order.
    public func signedMessage(pseudonym: Hash) -> [UInt8] {
        Array(("medledger-grant/1\npatient \(pseudonym.hex)\ngrantee \(grantee)\ngrantee-key \(Base64.encode(granteeKey))\n"
            + "resource-types \(resourceTypes.joined(separator: ","))\nrecords \(recordHashes.joined(separator: ","))\n"
            + "not-after \(notAfter)\nissued-at \(issuedAt)\n"
            + (encryptionKey.map { "grantee-x25519 \(Base64.encode($0))\n" } ?? "")).utf8)
    }

    func json(pseudonym: Hash) -> [String: Any] {
        var out: [String: Any] = [
            "type": "grant", "v": 1, "patient": pseudonym.hex, "grantee": grantee, "grantee_key": Base64.encode(granteeKey),
            "resource_types": resourceTypes, "records": recordHashes, "not_after": notAfter, "issued_at": issuedAt,
        ]
        if let signature { out["signature"] = Base64.encode(signature) }
        if let encryptionKey { out["grantee_x25519"] = Base64.encode(encryptionKey) }
        return out
    }

    init(grantee: String, granteeKey: [UInt8], encryptionKey: [UInt8]? = nil, resourceTypes: [String], recordHashes: [String],
         notAfter: Int64, issuedAt: Int64, signature: [UInt8]?) {
        self.grantee = grantee
        self.granteeKey = granteeKey
        self.encryptionKey = encryptionKey
        self.resourceTypes = resourceTypes
        self.recordHashes = recordHashes
        self.notAfter = notAfter
        self.issuedAt = issuedAt
        self.signature = signature
    }

    init?(json object: [String: Any]) {
        guard let grantee = object["grantee"] as? String,
              let key = (object["grantee_key"] as? String).flatMap({ Base64.decode($0) }),
              let types = object["resource_types"] as? [String], let records = object["records"] as? [String],
              let notAfter = JSONValue.integer(object["not_after"], as: Int64.self),
              let issuedAt = JSONValue.integer(object["issued_at"], as: Int64.self) else { return nil }
        self.init(grantee: grantee, granteeKey: key, encryptionKey: (object["grantee_x25519"] as? String).flatMap { Base64.decode($0) },
                  resourceTypes: types, recordHashes: records, notAfter: notAfter,
                  issuedAt: issuedAt, signature: (object["signature"] as? String).flatMap { Base64.decode($0) })
        index = JSONValue.integer(object["index"], as: UInt64.self) ?? 0
    }
}

/// One version of a record, as a reader receives it.
public struct RecordContent: Sendable {
    public let recordId: String
    public let version: UInt32
    public let mediaType: String
    /// The FHIR `resourceType`, for FHIR JSON records.
    public let resourceType: String?
    /// The plaintext. It is medical data: do not log it.
    public let content: [UInt8]
    /// The log index of the entry that committed this version.
    public let index: UInt64
}

/// A version of a record without its content (history and listings).
public struct RecordVersionInfo: Sendable, Hashable {
    public let recordId: String
    public let version: UInt32
    public let index: UInt64
    public let ciphertextHash: Hash
    public let mediaType: String
}

/// The JSON payloads the patient layer writes into log entries (`docs/FORMATS.md`).
enum PatientPayload {
    /// Compact JSON with keys sorted by their UTF-8 bytes. Payloads hold only strings,
    /// integers, booleans and arrays of those; written by hand because Foundation's sorted
    /// serializer collates keys through ICU, which dominated the cost of an audited read.
    static func encode(_ object: [String: Any]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(256)
        write(object, into: &out)
        return out
    }

    private static func write(_ value: Any, into out: inout [UInt8]) {
        switch value {
        case let s as String: writeString(s, into: &out)
        // Integers before Bool: a number decoded by Foundation may also cast to Bool.
        case let i as Int: out += Array(String(i).utf8)
        case let i as Int64: out += Array(String(i).utf8)
        case let i as UInt64: out += Array(String(i).utf8)
        case let i as UInt32: out += Array(String(i).utf8)
        case let b as Bool: out += Array((b ? "true" : "false").utf8)
        case let a as [Any]:
            out.append(UInt8(ascii: "["))
            for (n, element) in a.enumerated() {
                if n > 0 { out.append(UInt8(ascii: ",")) }
                write(element, into: &out)
            }
            out.append(UInt8(ascii: "]"))
        case let d as [String: Any]:
            out.append(UInt8(ascii: "{"))
            for (n, key) in d.keys.sorted(by: { $0.utf8.lexicographicallyPrecedes($1.utf8) }).enumerated() {
                if n > 0 { out.append(UInt8(ascii: ",")) }
                writeString(key, into: &out)
                out.append(UInt8(ascii: ":"))
                write(d[key]!, into: &out)
            }
            out.append(UInt8(ascii: "}"))
        default:
            preconditionFailure("unsupported payload value \(type(of: value))")
        }
    }

    static func writeString(_ s: String, into out: inout [UInt8]) {
        out += ByteWriter.build(capacity: ByteWriter.jsonBound(s)) { $0.string(s) }
    }

    static func decode(_ payload: [UInt8]) -> [String: Any]? {
        (try? JSONSerialization.jsonObject(with: Data(payload))) as? [String: Any]
    }

    /// The `record` payload (FORMATS.md 10.3), written directly: the bytes `encode` makes of
    /// the same object, keys in UTF-8 order.
    static func recordPayload(p: Hash, r: Hash, version: UInt32, ciphertextHash: Hash, ciphertextSize: Int,
                              keyEpoch: UInt32) -> [UInt8] {
        ByteWriter.build(capacity: 128 + 3 * 66 + 3 * 21) { out in
            out.raw(#"{"ciphertext_hash":"#); out.hexString(ciphertextHash)
            out.raw(#","ciphertext_size":"#); out.integer(Int64(ciphertextSize))
            out.raw(#","key_epoch":"#); out.integer(Int64(keyEpoch))
            out.raw(#","patient":"#); out.hexString(p)
            out.raw(#","record":"#); out.hexString(r)
            out.raw(#","type":"record","v":1,"version":"#); out.integer(Int64(version))
            out.raw("}")
        }
    }

    static func patientKey(_ p: Hash) -> String { "patient/" + p.hex }
    static func recordKey(_ p: Hash, _ r: Hash) -> String {
        String(decoding: ByteWriter.build(capacity: 136) { out in
            out.raw("record/"); out.hex(p); out.raw("/"); out.hex(r)
        }, as: UTF8.self)
    }
    static func grantKey(_ p: Hash, _ grantee: String) -> String { "grant/\(p.hex)/\(grantee)" }
}

/// The plaintext sealed for one record version: a header naming the record, then the content.
/// `u16 id length || id || u16 media type length || media type || u16 resource type length ||
/// resource type || content`, all lengths big-endian.
enum RecordPlaintext {
    static func encode(recordId: String, mediaType: String, resourceType: String?, content: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(content.count + 6 + recordId.utf8.count + mediaType.utf8.count + (resourceType?.utf8.count ?? 0))
        func field(_ text: String) {
            var text = text
            text.withUTF8 { utf8 in
                out.append(UInt8(utf8.count >> 8))
                out.append(UInt8(utf8.count & 0xff))
                out.append(contentsOf: utf8)
            }
        }
        field(recordId)
        field(mediaType)
        field(resourceType ?? "")
        out += content
        return out
    }

    static func decode(_ bytes: [UInt8]) -> (recordId: String, mediaType: String, resourceType: String?, content: [UInt8])? {
        bytes.withUnsafeBufferPointer { buffer in
            header(buffer).map { ($0.recordId, $0.mediaType, $0.resourceType, Array(buffer[$0.contentStart...])) }
        }
    }

    /// The media type nearly every record has, shared rather than decoded per read.
    private static let fhirJSON = "application/fhir+json"

    /// The fields before the content, and the content's offset.
    static func header(_ buffer: UnsafeBufferPointer<UInt8>) -> (recordId: String, mediaType: String, resourceType: String?, contentStart: Int)? {
        var at = 0
        func field() -> UnsafeBufferPointer<UInt8>? {
            guard at + 2 <= buffer.count else { return nil }
            let n = Int(buffer[at]) << 8 | Int(buffer[at + 1])
            at += 2
            guard at + n <= buffer.count else { return nil }
            defer { at += n }
            return UnsafeBufferPointer(rebasing: buffer[at..<(at + n)])
        }
        guard let recordId = field(), let mediaType = field(), let resourceType = field() else { return nil }
        let media = mediaType.elementsEqual(fhirJSON.utf8) ? fhirJSON : String(decoding: mediaType, as: UTF8.self)
        return (String(decoding: recordId, as: UTF8.self), media,
                resourceType.isEmpty ? nil : String(decoding: resourceType, as: UTF8.self), at)
    }

    /// Turns a plaintext into its content in place, from offset `start` on: the content moves to
    /// the front and the bytes it leaves behind are zeroed, so the buffer handed out is the only
    /// copy of the content and holds nothing past it.
    static func takeContent(_ plaintext: inout [UInt8], from start: Int) -> [UInt8] {
        let count = plaintext.count - start
        plaintext.withUnsafeMutableBytes { raw in
            guard start > 0, let base = raw.baseAddress else { return }
            memmove(base, base + start, count)
            secureZero(UnsafeMutableRawBufferPointer(start: base + count, count: start))
        }
        plaintext.removeLast(start)
        defer { plaintext = [] }
        return plaintext
    }
}

/// A patient's stored state (in `pl.patients`, never in the log): status, wrapped data key,
/// optional signing key. `u8 status || u64 index || u64 generation || u16 n || wrapped key (n)
/// || u8 has key || [32-byte Ed25519 key]`.
struct PatientState {
    enum Status: UInt8 { case active = 1, erased = 2 }
    var status: Status
    var index: UInt64
    var generation: UInt64
    /// The patient's data keys wrapped under the master key, oldest first: key epoch `e` is
    /// `wrappedKeys[e - 1]`. Revoking a grantee that held the key adds an epoch; new writes use
    /// the newest. Empty once erased.
    var wrappedKeys: [[UInt8]]
    var signingKey: [UInt8]?

    /// The key epoch new writes use.
    var epoch: UInt32 { UInt32(wrappedKeys.count) }

    func encoded() -> [UInt8] {
        var out: [UInt8] = [status.rawValue]
        out += withUnsafeBytes(of: index.bigEndian) { Array($0) }
        out += withUnsafeBytes(of: generation.bigEndian) { Array($0) }
        out += [UInt8(wrappedKeys.count >> 8), UInt8(wrappedKeys.count & 0xff)]
        for wrapped in wrappedKeys { out += [UInt8(wrapped.count >> 8), UInt8(wrapped.count & 0xff)] + wrapped }
        if let signingKey { out += [1] + signingKey } else { out.append(0) }
        return out
    }

    init(status: Status, index: UInt64, generation: UInt64, wrappedKeys: [[UInt8]], signingKey: [UInt8]?) {
        self.status = status
        self.index = index
        self.generation = generation
        self.wrappedKeys = wrappedKeys
        self.signingKey = signingKey
    }

    init?(decoding b: UnsafeRawBufferPointer) {
        guard b.count >= 20, let status = Status(rawValue: b[0]) else { return nil }
        let index = UInt64(bigEndianBytes: UnsafeRawBufferPointer(rebasing: b[1..<9]))!
        let generation = UInt64(bigEndianBytes: UnsafeRawBufferPointer(rebasing: b[9..<17]))!
        let keys = Int(b[17]) << 8 | Int(b[18])
        var at = 19
        var wrappedKeys: [[UInt8]] = []
        for _ in 0..<keys {
            guard at + 2 <= b.count else { return nil }
            let n = Int(b[at]) << 8 | Int(b[at + 1])
            guard at + 2 + n <= b.count else { return nil }
            wrappedKeys.append(Array(b[(at + 2)..<(at + 2 + n)]))
            at += 2 + n
        }
        guard at < b.count else { return nil }
        var signingKey: [UInt8]?
        if b[at] == 1 {
            guard b.count == at + 1 + 32 else { return nil }
            signingKey = Array(b[(at + 1)...])
        } else if b.count != at + 1 { return nil }
        self.init(status: status, index: index, generation: generation, wrappedKeys: wrappedKeys, signingKey: signingKey)
    }
}

/// Integers and booleans in what `JSONSerialization` parsed, told apart strictly: it hands
/// `true` to `as? Int` as 1, `1.5` to `NSNumber.uint64Value` as 1 and `-1` as 2^64 - 1, so a
/// field read that way would accept spellings the ledger never writes.
enum JSONValue {
    /// `value` when it is a JSON integer (no fraction, no exponent, not a boolean) that `T`
    /// represents exactly; nil otherwise.
    static func integer<T: FixedWidthInteger>(_ value: Any?, as type: T.Type = T.self) -> T? {
        guard let number = value as? NSNumber, !isBoolean(number), !(number is NSDecimalNumber) else { return nil }
        switch UInt8(bitPattern: number.objCType.pointee) {
        case UInt8(ascii: "Q"), UInt8(ascii: "L"), UInt8(ascii: "I"), UInt8(ascii: "S"), UInt8(ascii: "C"):
            return T(exactly: number.uint64Value)
        case UInt8(ascii: "q"), UInt8(ascii: "l"), UInt8(ascii: "i"), UInt8(ascii: "s"):
            return T(exactly: number.int64Value)
        default:
            return nil  // `d` and `f`: the number had a fraction or an exponent
        }
    }

    /// Whether `number` is `true` or `false` (JSONSerialization's boolean class), not a number.
    static func isBoolean(_ number: NSNumber) -> Bool {
        booleanClass.map { type(of: number) == $0 } ?? false
    }

    private static let booleanClass: AnyClass? = ((try? JSONSerialization.jsonObject(
        with: Data("true".utf8), options: .fragmentsAllowed)) as? NSNumber).map { type(of: $0) }
}
