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
    /// ceil(depth/8) bytes. Keys of one version sort together, so a batch appends in order.
    public var storageKey: [UInt8] { withStorageKey { Array($0) } }

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

    public static func < (a: PageID, b: PageID) -> Bool {
        if a.version != b.version { return a.version < b.version }
        if a.depth != b.depth { return a.depth < b.depth }
        return a.prefix < b.prefix
    }
}

/// A page: the 16 positions at depth + 4 below one position at a page depth.
///
/// Invariant: a stored page holds at least two keys (a single key is a leaf in its parent).
public struct SparsePage: Sendable, Equatable {
    public var slots: [SparseNode] { didSet { hashTree = nil } }
    /// The page's 31 node hashes in heap order (1 the page root, 16...31 the slots), once
    /// computed by ``withHashTree()``; hot pages are cached with it so proofs hash nothing.
    private(set) var hashTree: [Hash]?

    public init(slots: [SparseNode] = Array(repeating: .empty, count: 16)) { self.slots = slots }

    public static func == (a: SparsePage, b: SparsePage) -> Bool { a.slots == b.slots }

    /// The page with its node hashes computed, bottom-up: a node with no key is `EMPTY`, a
    /// node whose subtree holds exactly one key takes that leaf's hash, any other is interior.
    public func withHashTree() -> SparsePage {
        var tree = [Hash](repeating: .zero, count: 32)
        // Keys below each node, capped at 2 (a page below counts as 2: it holds at least two).
        var keys = [UInt8](repeating: 0, count: 32)
        for (i, slot) in slots.enumerated() {
            switch slot {
            case .empty: break
            case .leaf(_, _, let h): tree[16 + i] = h; keys[16 + i] = 1
            case .page(let h, _): tree[16 + i] = h; keys[16 + i] = 2
            }
        }
        var node = 15
        while node >= 1 {
            let l = 2 * node, r = 2 * node + 1
            let total = keys[l] + keys[r]
            keys[node] = min(total, 2)
            if total == 1 {
                tree[node] = keys[l] == 1 ? tree[l] : tree[r]
            } else if total >= 2 {
                tree[node] = SparseHash.interior(tree[l], tree[r])
            }
            node -= 1
        }
        var copy = self
        copy.hashTree = tree
        return copy
    }

    /// The hash of slots `lo ..< hi` (a power-of-two aligned range): EMPTY without keys, the
    /// leaf itself when it holds one leaf and nothing else, otherwise an interior node.
    public func rangeHash(_ lo: Int, _ hi: Int) -> Hash {
        if let hashTree { return hashTree[16 / (hi - lo) + lo / (hi - lo)] }
        return rangeHash(lo, hi, descend: { rangeHash(lo, (lo + hi) / 2) }, { rangeHash((lo + hi) / 2, hi) })
    }

    @inline(__always)
    private func rangeHash(_ lo: Int, _ hi: Int, descend left: () -> Hash, _ right: () -> Hash) -> Hash {
        var nonEmpty = 0
        var only = lo
        for i in lo..<hi where !slots[i].isEmpty {
            nonEmpty += 1
            only = i
        }
        if hi - lo > 1 && (nonEmpty != 1 || !slots[only].isLeaf) {
            if nonEmpty == 0 { return SparseHash.empty }
            return SparseHash.interior(left(), right())
        }
        if nonEmpty == 0 { return SparseHash.empty }
        return slots[only].hash
    }

    /// The page's subtree hash.
    public var hash: Hash { rangeHash(0, 16) }

    /// Binary encoding: u16 occupied bitmap, u16 leaf bitmap, then per occupied slot a leaf
    /// (key hash, leaf hash, u16 value length, value) or a page (hash, u64 version).
    public func encoded() -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: encodedSize) { out, count in
            encode(into: UnsafeMutableRawBufferPointer(out))
            count = encodedSize
        }
    }

    /// The size of ``encoded()``.
    public var encodedSize: Int {
        var size = 4
        for slot in slots {
            switch slot {
            case .empty: break
            case .leaf(_, let value, _): size += 66 + value.count
            case .page: size += 40
            }
        }
        return size
    }

    /// Writes ``encoded()`` into `out` (exactly ``encodedSize`` bytes), e.g. LMDB's reserved value.
    public func encode(into out: UnsafeMutableRawBufferPointer) {
        var occupied: UInt16 = 0, leaves: UInt16 = 0
        var at = 4
        func put(_ h: Hash) {
            h.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: out[at..<(at + 32)]).copyMemory(from: $0) }
            at += 32
        }
        for (i, slot) in slots.enumerated() {
            switch slot {
            case .empty: continue
            case .leaf(let k, let value, let h):
                occupied |= 1 << i
                leaves |= 1 << i
                put(k)
                put(h)
                out[at] = UInt8(value.count >> 8)
                out[at + 1] = UInt8(value.count & 0xff)
                at += 2
                value.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: out[at..<(at + value.count)]).copyMemory(from: $0) }
                at += value.count
            case .page(let h, let v):
                occupied |= 1 << i
                put(h)
                out.storeBytes(of: v.bigEndian, toByteOffset: at, as: UInt64.self)
                at += 8
            }
        }
        out[0] = UInt8(occupied >> 8)
        out[1] = UInt8(occupied & 0xff)
        out[2] = UInt8(leaves >> 8)
        out[3] = UInt8(leaves & 0xff)
    }

    /// Decodes ``encoded()``; `nil` for malformed bytes.
    public init?(decoding raw: UnsafeRawBufferPointer) {
        guard raw.count >= 4 else { return nil }
        let occupied = UInt16(raw[0]) << 8 | UInt16(raw[1])
        let leaves = UInt16(raw[2]) << 8 | UInt16(raw[3])
        guard leaves & ~occupied == 0 else { return nil }
        var slots = [SparseNode](repeating: .empty, count: 16)
        var at = 4
        for i in 0..<16 where occupied & (1 << i) != 0 {
            guard at + 32 <= raw.count, let h = Hash(UnsafeRawBufferPointer(rebasing: raw[at..<(at + 32)])) else { return nil }
            at += 32
            if leaves & (1 << i) != 0 {
                guard at + 34 <= raw.count, let leafHash = Hash(UnsafeRawBufferPointer(rebasing: raw[at..<(at + 32)])) else { return nil }
                at += 32
                let length = Int(raw[at]) << 8 | Int(raw[at + 1])
                at += 2
                guard at + length <= raw.count else { return nil }
                slots[i] = .leaf(keyHash: h, value: Array(raw[at..<(at + length)]), hash: leafHash)
                at += length
            } else {
                guard at + 8 <= raw.count,
                      let v = UInt64(exactly: raw[at..<(at + 8)].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }) else { return nil }
                slots[i] = .page(hash: h, version: v)
                at += 8
            }
        }
        guard at == raw.count else { return nil }
        self.slots = slots
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
