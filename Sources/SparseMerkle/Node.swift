public import LedgerCrypto

/// The bit of a key hash at binary depth `t`: bit (7 - t mod 8) of byte t/8, most significant first.
@inline(__always)
public func keyBit(_ k: Hash, _ t: Int) -> Int {
    Int((k.byte(at: t >> 3) >> (7 - UInt8(t & 7))) & 1)
}

/// The 4-bit slot index of a key hash at page depth `depth` (a multiple of 4).
@inline(__always)
func nibble(_ k: Hash, at depth: Int) -> Int {
    let byte = k.byte(at: depth >> 3)
    return Int(depth & 4 == 0 ? byte >> 4 : byte & 0x0f)
}

/// `prefix` with the nibble at `depth` set to `n` (bits below are zero).
@inline(__always)
func extend(_ prefix: Hash, depth: Int, nibble n: Int) -> Hash {
    prefix.withUnsafeBytes { source in
        Hash(unsafeUninitializedBytes: { out in
            out.copyMemory(from: source)
            let i = depth >> 3
            out[i] = depth & 4 == 0 ? (out[i] & 0x0f) | UInt8(n << 4) : (out[i] & 0xf0) | UInt8(n)
        })
    }
}

/// The hashing rules of DESIGN.md section 3.
public enum SparseHash {
    /// `EMPTY`: 32 zero bytes, the hash of a subtree with no key.
    public static let empty = Hash.zero

    /// A leaf: SHA-256(0x02 || k || v), with v = SHA-256(value).
    public static func leaf(keyHash k: Hash, valueHash v: Hash) -> Hash {
        SHA256.prefixedPair(0x02, k, v)
    }

    /// An interior node: SHA-256(0x03 || left || right).
    public static func interior(_ left: Hash, _ right: Hash) -> Hash {
        SHA256.prefixedPair(0x03, left, right)
    }

    /// The key hash of a key: SHA-256 of its bytes.
    public static func key(_ key: [UInt8]) -> Hash { SHA256.hash(key) }
}

/// What sits at a position of the tree: nothing, a single key's leaf, or a page of ≥ 2 keys.
public enum SparseNode: Sendable, Equatable {
    case empty
    /// A single key's leaf, with its leaf hash computed once when the value was set.
    case leaf(keyHash: Hash, value: [UInt8], hash: Hash)
    /// A page at the next page depth: its subtree hash and the version that wrote it.
    case page(hash: Hash, version: UInt64)

    /// A leaf for `value`, hashing it.
    public static func makeLeaf(keyHash k: Hash, value: [UInt8]) -> SparseNode {
        .leaf(keyHash: k, value: value, hash: SparseHash.leaf(keyHash: k, valueHash: SHA256.hash(value)))
    }

    /// The node's hash in the tree.
    public var hash: Hash {
        switch self {
        case .empty: return SparseHash.empty
        case .leaf(_, _, let h): return h
        case .page(let h, _): return h
        }
    }

    var keyHash: Hash? { if case .leaf(let k, _, _) = self { return k } else { return nil } }

    var isEmpty: Bool { if case .empty = self { return true } else { return false } }
    var isLeaf: Bool { if case .leaf = self { return true } else { return false } }
}

/// Identifies a stored page: the version that wrote it, its depth (a multiple of 4) and the
/// key-hash prefix of its position (bits past `depth` zero).
public struct PageID: Hashable, Sendable, Comparable {
    public let version: UInt64
    public let depth: Int
    public let prefix: Hash

    public init(version: UInt64, depth: Int, prefix: Hash) {
        self.version = version
        self.depth = depth
        self.prefix = prefix
    }

    /// The storage key: version (8 bytes BE) || depth/4 (1 byte) || the prefix's first
    /// ceil(depth/8) bytes. Keys of one version sort together, so a batch appends in order;
    /// within a version the pages of one depth sort together, so records that are replaced
    /// at similar rates share LMDB pages and pruning frees whole pages.
    public var storageKey: [UInt8] { withStorageKey { Array($0) } }

    /// The page a storage key names; nil for bytes that are not one.
    public init?(storageKey key: some Collection<UInt8>) {
        let bytes = Array(key)
        guard let version = bytes.withUnsafeBytes(Self.version(ofStorageKey:)) else { return nil }
        var prefix = [UInt8](repeating: 0, count: 32)
        for (i, b) in bytes[9...].enumerated() { prefix[i] = b }
        self.init(version: version, depth: Int(bytes[8]) * 4, prefix: Hash(prefix)!)
    }

    /// The version of the page a storage key names, or nil for bytes that are not a page key;
    /// checks the key in place, without allocating.
    public static func version(ofStorageKey key: UnsafeRawBufferPointer) -> UInt64? {
        // A page at depth D holds the positions at D + 4, so D is at most 252.
        guard key.count >= 9, key[8] <= 63 else { return nil }
        let depth = Int(key[8]) * 4
        guard key.count == 9 + (depth + 7) / 8 else { return nil }
        // Bits past the depth must be zero: a depth of 4 mod 8 uses the last byte's high half.
        if depth % 8 == 4, key[key.count - 1] & 0x0f != 0 { return nil }
        return UInt64(bigEndianBytes: UnsafeRawBufferPointer(rebasing: key[0..<8]))
    }

    /// Lends the storage key from stack memory.
    @inline(__always)
    public func withStorageKey<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        var buffer: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0)
        return try withUnsafeMutableBytes(of: &buffer) { raw in
            raw.storeBytes(of: version.bigEndian, toByteOffset: 0, as: UInt64.self)
            raw[8] = UInt8(depth / 4)
            let count = (depth + 7) / 8
            prefix.withUnsafeBytes { p in
                for i in 0..<count { raw[9 + i] = p[i] }
            }
            return try body(UnsafeRawBufferPointer(rebasing: raw[0..<(9 + count)]))
        }
    }

    /// Storage key order: by version, then depth, then prefix.
    public static func < (a: PageID, b: PageID) -> Bool {
        if a.version != b.version { return a.version < b.version }
        if a.depth != b.depth { return a.depth < b.depth }
        return a.prefix < b.prefix
    }
}

/// A page decoded into owned values, for tools and tests; the engine reads pages in place.
///
/// Invariant: a stored page holds at least two keys (a single key is a leaf in its parent).
public struct SparsePage: Sendable, Equatable {
    /// The 16 positions at depth + 4 below the page's position.
    public var slots: [SparseNode]

    public init(slots: [SparseNode] = Array(repeating: .empty, count: 16)) { self.slots = slots }

    /// Decodes a stored page record (FORMATS.md section 6.3): a full record alone, or a delta
    /// record with the full record it names as `base`; `nil` for malformed bytes.
    public init?(decoding record: UnsafeRawBufferPointer, base: UnsafeRawBufferPointer? = nil) {
        guard let page = PageSlots(LentPage(bytes: record, base: base, tree: nil)) else { return nil }
        slots = (0..<16).map { page.slot($0).node }
    }

    /// The version of the full record a stored page record is a delta over: nil for a full
    /// record; the outer optional is nil for bytes that are neither.
    public static func baseVersion(ofRecord record: UnsafeRawBufferPointer) -> UInt64?? {
        PageRecord.baseVersion(of: record)
    }

    /// The page's subtree hash.
    public var hash: Hash {
        var occupied: UInt16 = 0, leaves: UInt16 = 0
        for (i, slot) in slots.enumerated() {
            if !slot.isEmpty { occupied |= 1 << i }
            if slot.isLeaf { leaves |= 1 << i }
        }
        return PageHashing.rangeHash(0, 16, occupied: occupied, leaves: leaves) { slots[$0].hash }
    }

    /// Encodes a root (or any node) for the roots table: 0 empty; 1, key hash, value; 2, hash, version.
    static func encodeNode(_ node: SparseNode) -> [UInt8] {
        switch node {
        case .empty: return [0]
        case .leaf(let k, let value, let h): return [1] + k.bytes + h.bytes + value
        case .page(let h, let v): return [2] + h.bytes + withUnsafeBytes(of: v.bigEndian) { Array($0) }
        }
    }

    static func decodeNode(_ raw: UnsafeRawBufferPointer) -> SparseNode? {
        guard let tag = raw.first else { return nil }
        switch tag {
        case 0 where raw.count == 1: return .empty
        case 1 where raw.count >= 65:
            return .leaf(keyHash: Hash(UnsafeRawBufferPointer(rebasing: raw[1..<33]))!, value: Array(raw[65...]),
                         hash: Hash(UnsafeRawBufferPointer(rebasing: raw[33..<65]))!)
        case 2 where raw.count == 41:
            return .page(hash: Hash(UnsafeRawBufferPointer(rebasing: raw[1..<33]))!,
                         version: raw[33..<41].reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
        default: return nil
        }
    }
}
