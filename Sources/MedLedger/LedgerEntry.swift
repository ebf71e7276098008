/// One ledger log entry in the envelope of DESIGN.md section 2:
/// `0x01 || op || u16 big-endian key length || key || payload`.
///
/// `op` is 0x00 (set) or 0x01 (delete); the key is UTF-8 of 0 to 1024 bytes; an empty key
/// means the entry touches no key and must be a set.
///
/// For example:
/// ```swift
/// let entry = try LedgerEntry(set: "patient/123/record/obs-1", payload: ciphertext)
/// let bytes = entry.encoded()
/// assert(try LedgerEntry(decoding: bytes) == entry)
/// ```
public struct LedgerEntry: Sendable, Hashable {
    /// The envelope's format byte.
    public static let formatVersion: UInt8 = 0x01
    /// The longest key, in UTF-8 bytes.
    public static let maxKeyLength = 1024

    /// What the entry does to its key.
    public enum Operation: UInt8, Sendable, Hashable, CustomStringConvertible {
        case set = 0x00
        case delete = 0x01
        public var description: String { self == .set ? "set" : "delete" }
    }

    public let operation: Operation
    /// The key, empty for an entry that touches no key.
    public let key: String
    public let payload: [UInt8]

    /// An entry; validates the key rules.
    /// - Throws: ``LedgerError`` `.invalidEntry`.
    public init(operation: Operation, key: String, payload: [UInt8]) throws {
        guard key.utf8.count <= Self.maxKeyLength else {
            throw LedgerError(.invalidEntry, "key is \(key.utf8.count) bytes; the limit is \(Self.maxKeyLength)")
        }
        guard !(key.isEmpty && operation == .delete) else {
            throw LedgerError(.invalidEntry, "a delete entry needs a key")
        }
        self.operation = operation
        self.key = key
        self.payload = payload
    }

    /// A set entry for `key` (empty for an unkeyed entry).
    public init(set key: String = "", payload: [UInt8]) throws {
        try self.init(operation: .set, key: key, payload: payload)
    }

    /// A delete entry for `key`.
    public init(delete key: String, payload: [UInt8] = []) throws {
        try self.init(operation: .delete, key: key, payload: payload)
    }

    /// The encoded envelope.
    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        Self.encode(operation: operation, key: key, payload: payload, into: &out)
        return out
    }

    /// Writes an envelope into `buffer` (replacing its contents), reusing its capacity.
    /// The caller has validated the key.
    public static func encode(operation: Operation, key: String, payload: some Collection<UInt8>, into buffer: inout [UInt8]) {
        let keyBytes = key.utf8
        buffer.removeAll(keepingCapacity: true)
        buffer.reserveCapacity(4 + keyBytes.count + payload.count)
        buffer.append(formatVersion)
        buffer.append(operation.rawValue)
        buffer.append(UInt8(keyBytes.count >> 8))
        buffer.append(UInt8(keyBytes.count & 0xff))
        buffer.append(contentsOf: keyBytes)
        buffer.append(contentsOf: payload)
    }

    /// Parses an envelope.
    /// - Throws: ``LedgerError`` `.invalidEntry` for a wrong format byte or op, a key length
    ///   past the end or over 1024, a key that is not UTF-8, or an unkeyed delete.
    public init(decoding bytes: UnsafeRawBufferPointer) throws {
        guard bytes.count >= 4 else { throw LedgerError(.invalidEntry, "entry shorter than its 4-byte header") }
        guard bytes[0] == Self.formatVersion else {
            throw LedgerError(.invalidEntry, "unknown entry format \(bytes[0])")
        }
        guard let operation = Operation(rawValue: bytes[1]) else {
            throw LedgerError(.invalidEntry, "unknown entry operation \(bytes[1])")
        }
        let keyLength = Int(bytes[2]) << 8 | Int(bytes[3])
        guard keyLength <= Self.maxKeyLength else { throw LedgerError(.invalidEntry, "key length \(keyLength) over the limit") }
        guard 4 + keyLength <= bytes.count else { throw LedgerError(.invalidEntry, "key runs past the end of the entry") }
        let keyBytes = UnsafeRawBufferPointer(rebasing: bytes[4..<(4 + keyLength)])
        guard let key = String(validating: keyBytes, as: UTF8.self) else {
            throw LedgerError(.invalidEntry, "key is not valid UTF-8")
        }
        try self.init(operation: operation, key: key, payload: Array(bytes[(4 + keyLength)...]))
    }

    /// Parses an envelope from a byte array.
    public init(decoding bytes: [UInt8]) throws {
        self = try bytes.withUnsafeBytes { try LedgerEntry(decoding: $0) }
    }
}
