import Foundation
import LedgerCrypto

// The engine's working forms of nodes and pages. An update touches tens of thousands of pages
// per batch; these types keep it free of per-node heap allocation and reference counting: a
// page is parsed in place from the bytes the store lends, slots are fixed-size values, and a
// leaf's value is a pointer into memory that outlives the apply (the store's mapped pages,
// the batch's own arena, or a cached page the apply holds).

/// A node as the engine handles it.
struct NodeRef {
    enum Kind: UInt8 { case empty, leaf, page }
    var kind: Kind
    /// The node's hash in the tree (EMPTY, the leaf hash, or the page's subtree hash).
    var hash: Hash
    /// A leaf's key hash.
    var keyHash: Hash
    /// A leaf's value bytes.
    var value: UnsafeRawBufferPointer
    /// A page's version.
    var version: UInt64

    static var empty: NodeRef {
        NodeRef(kind: .empty, hash: .zero, keyHash: .zero, value: UnsafeRawBufferPointer(start: nil, count: 0), version: 0)
    }

    static func leaf(keyHash: Hash, leafHash: Hash, value: UnsafeRawBufferPointer) -> NodeRef {
        NodeRef(kind: .leaf, hash: leafHash, keyHash: keyHash, value: value, version: 0)
    }

    static func page(hash: Hash, version: UInt64) -> NodeRef {
        NodeRef(kind: .page, hash: hash, keyHash: .zero, value: UnsafeRawBufferPointer(start: nil, count: 0), version: version)
    }

    /// An owned copy for the public API.
    var node: SparseNode {
        switch kind {
        case .empty: return .empty
        case .leaf: return .leaf(keyHash: keyHash, value: Array(value), hash: hash)
        case .page: return .page(hash: hash, version: version)
        }
    }

    /// Bytes of this slot in a page's slot table.
    @inline(__always)
    var encodedSize: Int {
        switch kind {
        case .empty: return 0
        case .leaf: return 66 + value.count
        case .page: return 40
        }
    }
}

/// Scratch space for one thread's walk: per page level, the 16 slots of the page being
/// rebuilt and its 32 node hashes (heap order: 1 the page root, 16...31 the slots; 0 unused).
/// Levels never overlap (a page at depth d uses level d/4), so nothing is copied between them.
final class Frames {
    static let levels = 65
    let slots: UnsafeMutablePointer<NodeRef>
    let trees: UnsafeMutablePointer<Hash>

    init() {
        slots = .allocate(capacity: 16 * Self.levels)
        slots.initialize(repeating: .empty, count: 16 * Self.levels)
        trees = .allocate(capacity: 32 * Self.levels)
        trees.initialize(repeating: .zero, count: 32 * Self.levels)
    }

    deinit {
        slots.deallocate()
        trees.deallocate()
    }
}

/// The two kinds of page record (FORMATS.md section 6.3): a full page holds all 16 slots; a
/// delta holds the slots that differ from a full page written earlier at the same position.
enum PageRecord {
    static let full: UInt8 = 0
    static let delta: UInt8 = 1
    /// Kind byte, then the slot table's two bitmaps.
    static let fullHeader = 5
    /// Kind byte, u64 base version, u16 changed bitmap, then the slot table's two bitmaps.
    static let deltaHeader = 15
    /// A page is written as a delta when the delta is at most this fraction of the full page
    /// (measured in ledger-bench: 0.4 to 0.6 write the fewest bytes at 1M keys).
    static let deltaNumerator = 1, deltaDenominator = 2

    /// The base version of a delta record, nil for a full record, or a failure for bytes
    /// that are neither.
    static func baseVersion(of raw: UnsafeRawBufferPointer) -> UInt64?? {
        guard let kind = raw.first else { return .none }
        switch kind {
        case full: return .some(nil)
        case delta:
            guard raw.count >= deltaHeader else { return .none }
            return .some(UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: 1, as: UInt64.self)))
        default: return .none
        }
    }
}

/// A slot table parsed in place: `u16 occupied bitmap, u16 leaf bitmap`, then per occupied
/// slot a leaf (key hash, leaf hash, u16 value length, value) or a page (hash, u64 version).
/// Bit `i` (from the least significant) of a bitmap is slot `i`.
struct SlotTable {
    let raw: UnsafeRawBufferPointer
    let occupied: UInt16
    let leaves: UInt16
    /// Byte offset of each occupied slot's record.
    private var offsets: InlineArray<16, UInt32>

    /// Parses and bounds-checks the table that starts at `start` and ends with `raw`; nil for
    /// malformed bytes.
    init?(_ raw: UnsafeRawBufferPointer, at start: Int) {
        guard raw.count >= start + 4 else { return nil }
        let occupied = UInt16(raw[start]) << 8 | UInt16(raw[start + 1])
        let leaves = UInt16(raw[start + 2]) << 8 | UInt16(raw[start + 3])
        guard leaves & ~occupied == 0 else { return nil }
        var offsets = InlineArray<16, UInt32>(repeating: 0)
        var at = start + 4
        var remaining = occupied
        while remaining != 0 {
            let i = remaining.trailingZeroBitCount
            remaining &= remaining - 1
            offsets[i] = UInt32(at)
            if leaves & (1 << i) != 0 {
                guard at + 66 <= raw.count else { return nil }
                at += 66 + (Int(raw[at + 64]) << 8 | Int(raw[at + 65]))
            } else {
                at += 40
            }
            guard at <= raw.count else { return nil }
        }
        guard at == raw.count else { return nil }
        self.raw = raw
        self.occupied = occupied
        self.leaves = leaves
        self.offsets = offsets
    }

    /// A table whose offsets were computed by ``init(_:at:)`` earlier over these same bytes
    /// (the page cache keeps them with its merged records, which only this process writes).
    init(trusted raw: UnsafeRawBufferPointer, at start: Int, offsets: InlineArray<16, UInt32>) {
        self.raw = raw
        occupied = UInt16(raw[start]) << 8 | UInt16(raw[start + 1])
        leaves = UInt16(raw[start + 2]) << 8 | UInt16(raw[start + 3])
        self.offsets = offsets
    }

    /// The byte offset of each occupied slot's record, for ``init(trusted:at:offsets:)``.
    var slotOffsets: InlineArray<16, UInt32> { offsets }

    /// The hash of slot `i` (EMPTY when unoccupied).
    @inline(__always)
    func slotHash(_ i: Int) -> Hash {
        guard occupied & (1 << i) != 0 else { return .zero }
        let at = Int(offsets[i])
        return Hash(unchecked: raw, at: leaves & (1 << i) != 0 ? at + 32 : at)
    }

    /// Slot `i`; a leaf's value points into `raw`.
    @inline(__always)
    func slot(_ i: Int) -> NodeRef {
        guard occupied & (1 << i) != 0 else { return .empty }
        let at = Int(offsets[i])
        if leaves & (1 << i) != 0 {
            let length = Int(raw[at + 64]) << 8 | Int(raw[at + 65])
            return .leaf(keyHash: Hash(unchecked: raw, at: at), leafHash: Hash(unchecked: raw, at: at + 32),
                         value: UnsafeRawBufferPointer(rebasing: raw[(at + 66)..<(at + 66 + length)]))
        }
        return .page(hash: Hash(unchecked: raw, at: at), version: UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: at + 32, as: UInt64.self)))
    }
}

/// The slots of one stored page version: a full record alone, a delta record over the full
/// record it names as its base, or the page as the cache holds it (merged into one full table,
/// with the stored record's base version and changed slots alongside). Valid while the bytes
/// it was made from are.
struct PageSlots {
    /// The full table: the record itself, the delta's base, or the cache's merged page.
    let base: SlotTable
    /// The delta's own slots, laid over `base` (nil otherwise).
    let delta: SlotTable?
    /// The stored record's changed slots (0 for a full record).
    let changed: UInt16
    /// The stored record's base version (nil for a full record).
    let baseVersion: UInt64?

    /// Parses a lent page; nil when its bytes are malformed, a delta comes without its base,
    /// the base is itself a delta, or the page holds fewer than two keys.
    init?(_ lent: LentPage) {
        let record = lent.bytes
        guard let kind = record.first else { return nil }
        if let merged = lent.merged {
            guard kind == PageRecord.full, lent.base == nil else { return nil }
            if let offsets = lent.offsets {
                base = SlotTable(trusted: record, at: 1, offsets: offsets)
            } else {
                guard let table = SlotTable(record, at: 1) else { return nil }
                base = table
            }
            delta = nil
            changed = merged.changed
            baseVersion = merged.baseVersion
        } else if kind == PageRecord.full {
            guard lent.base == nil, let table = SlotTable(record, at: 1) else { return nil }
            base = table
            delta = nil
            changed = 0
            baseVersion = nil
        } else if kind == PageRecord.delta, record.count >= PageRecord.deltaHeader, let baseBytes = lent.base {
            let changed = UInt16(record[9]) << 8 | UInt16(record[10])
            guard baseBytes.first == PageRecord.full,
                  let base = SlotTable(baseBytes, at: 1), let delta = SlotTable(record, at: 11),
                  delta.occupied & ~changed == 0 else { return nil }
            self.base = base
            self.delta = delta
            self.changed = changed
            baseVersion = UInt64(bigEndian: record.loadUnaligned(fromByteOffset: 1, as: UInt64.self))
        } else {
            return nil
        }
        // A page holds at least two keys: a single key is a leaf in its parent.
        let occupied = self.occupied
        guard occupied.nonzeroBitCount >= 2 || (occupied != 0 && leaves & occupied == 0) else { return nil }
    }

    /// Slots taken from `delta` rather than `base`.
    @inline(__always)
    private var overlay: UInt16 { delta == nil ? 0 : changed }

    var occupied: UInt16 { (base.occupied & ~overlay) | (delta?.occupied ?? 0) }
    var leaves: UInt16 { (base.leaves & ~overlay) | (delta?.leaves ?? 0) }

    @inline(__always)
    func slot(_ i: Int) -> NodeRef {
        if let delta, changed & (1 << i) != 0 { return delta.slot(i) }
        return base.slot(i)
    }

    @inline(__always)
    func slotHash(_ i: Int) -> Hash {
        if let delta, changed & (1 << i) != 0 { return delta.slotHash(i) }
        return base.slotHash(i)
    }

    /// Writes all 16 slots into `slots`.
    func readSlots(into slots: UnsafeMutablePointer<NodeRef>) {
        for i in 0..<16 { slots[i] = slot(i) }
    }

    /// The hash of the aligned slot range `lo ..< hi`, from `tree` (interior positions 1...15)
    /// when given.
    func rangeHash(_ lo: Int, _ hi: Int, tree: UnsafePointer<Hash>?) -> Hash {
        if hi - lo == 1 { return slotHash(lo) }
        if let tree { return tree[16 / (hi - lo) + lo / (hi - lo)] }
        return PageHashing.rangeHash(lo, hi, occupied: occupied, leaves: leaves, slotHash: slotHash)
    }
}

/// The hashing and encoding of pages (DESIGN.md section 3, FORMATS.md section 6.3): a position
/// with no key is EMPTY, one whose subtree holds a single leaf takes that leaf's hash, any
/// other is an interior node over its two halves. A slot holding a page counts as two keys.
enum PageHashing {
    /// The mask of slots `lo ..< hi`.
    @inline(__always)
    static func mask(_ lo: Int, _ hi: Int) -> UInt16 { UInt16(truncatingIfNeeded: ((1 << (hi - lo)) - 1) << lo) }

    static func rangeHash(_ lo: Int, _ hi: Int, occupied: UInt16, leaves: UInt16, slotHash: (Int) -> Hash) -> Hash {
        let m = mask(lo, hi)
        let inRange = occupied & m
        if inRange == 0 { return .zero }
        if hi - lo == 1 { return slotHash(lo) }
        if inRange.nonzeroBitCount == 1, leaves & inRange != 0 { return slotHash(inRange.trailingZeroBitCount) }
        let mid = (lo + hi) / 2
        return SparseHash.interior(rangeHash(lo, mid, occupied: occupied, leaves: leaves, slotHash: slotHash),
                                   rangeHash(mid, hi, occupied: occupied, leaves: leaves, slotHash: slotHash))
    }

    /// Every node hash of a page with these slots into `tree` (heap order, 32 entries). With
    /// `old`, the interior hashes of the same page before the slots in `dirty` changed, only
    /// the positions above a dirty slot are rehashed. Returns the number of hashes computed.
    @discardableResult
    static func tree(_ slots: UnsafePointer<NodeRef>, old: UnsafePointer<Hash>?, dirty: UInt16, into tree: UnsafeMutablePointer<Hash>) -> Int {
        var occupied: UInt16 = 0, leaves: UInt16 = 0
        for i in 0..<16 {
            switch slots[i].kind {
            case .empty: tree[16 + i] = .zero; continue
            case .leaf: leaves |= 1 << i
            case .page: break
            }
            occupied |= 1 << i
            tree[16 + i] = slots[i].hash
        }
        // Positions to compute, as a bitmap over heap positions 1...15.
        var positions: UInt16 = 0xfffe
        if let old {
            tree.update(from: old, count: 16)
            positions = 0
            var remaining = dirty
            while remaining != 0 {
                var node = (16 + remaining.trailingZeroBitCount) >> 1
                remaining &= remaining - 1
                while node >= 1 && positions & (1 << node) == 0 {
                    positions |= 1 << node
                    node >>= 1
                }
            }
        }
        var hashed = 0
        while positions != 0 {
            // Deepest first: the highest position number is the deepest.
            let node = 15 - (positions.leadingZeroBitCount)
            positions &= ~(1 << node)
            // Position `node` covers slots lo ..< lo + width.
            let level = 31 - UInt32(node).leadingZeroBitCount  // 0 for the root
            let width = 16 >> level
            let lo = (node - (1 << level)) * width
            let inRange = occupied & mask(lo, lo + width)
            if inRange == 0 {
                tree[node] = .zero
            } else if inRange.nonzeroBitCount == 1, leaves & inRange != 0 {
                tree[node] = tree[16 + inRange.trailingZeroBitCount]
            } else {
                tree[node] = SparseHash.interior(tree[2 * node], tree[2 * node + 1])
                hashed += 1
            }
        }
        return hashed
    }

    /// Bytes of the slot table of the slots in `mask` (bitmaps included).
    @inline(__always)
    static func tableSize(_ slots: UnsafePointer<NodeRef>, mask: UInt16) -> Int {
        var size = 4
        var remaining = mask
        while remaining != 0 {
            size += slots[remaining.trailingZeroBitCount].encodedSize
            remaining &= remaining - 1
        }
        return size
    }

    /// The size of a full record of `slots`.
    static func fullSize(_ slots: UnsafePointer<NodeRef>) -> Int { 1 + tableSize(slots, mask: 0xffff) }

    /// The size of a delta record of the slots in `changed`.
    static func deltaSize(_ slots: UnsafePointer<NodeRef>, changed: UInt16) -> Int { 11 + tableSize(slots, mask: changed) }

    /// Writes a full record of `slots` into `out` (exactly ``fullSize(_:)`` bytes).
    static func encodeFull(_ slots: UnsafePointer<NodeRef>, into out: UnsafeMutableRawBufferPointer) {
        out[0] = PageRecord.full
        encodeTable(slots, mask: 0xffff, into: out, at: 1)
    }

    /// Writes a delta record over the full page of version `base` holding the slots in
    /// `changed` into `out` (exactly ``deltaSize(_:changed:)`` bytes).
    static func encodeDelta(_ slots: UnsafePointer<NodeRef>, base: UInt64, changed: UInt16, into out: UnsafeMutableRawBufferPointer) {
        out[0] = PageRecord.delta
        out.storeBytes(of: base.bigEndian, toByteOffset: 1, as: UInt64.self)
        out[9] = UInt8(changed >> 8)
        out[10] = UInt8(changed & 0xff)
        encodeTable(slots, mask: changed, into: out, at: 11)
    }

    /// Writes the slot table of the slots in `mask` at `start`.
    static func encodeTable(_ slots: UnsafePointer<NodeRef>, mask: UInt16, into out: UnsafeMutableRawBufferPointer, at start: Int) {
        var occupied: UInt16 = 0, leaves: UInt16 = 0
        var at = start + 4
        for i in 0..<16 where mask & (1 << i) != 0 {
            let slot = slots[i]
            switch slot.kind {
            case .empty: continue
            case .leaf:
                occupied |= 1 << i
                leaves |= 1 << i
                slot.keyHash.store(to: out, at: at)
                slot.hash.store(to: out, at: at + 32)
                let value = slot.value
                out[at + 64] = UInt8(value.count >> 8)
                out[at + 65] = UInt8(value.count & 0xff)
                at += 66
                if value.count > 0 {
                    UnsafeMutableRawBufferPointer(rebasing: out[at..<(at + value.count)]).copyMemory(from: value)
                }
                at += value.count
            case .page:
                occupied |= 1 << i
                slot.hash.store(to: out, at: at)
                out.storeBytes(of: slot.version.bigEndian, toByteOffset: at + 32, as: UInt64.self)
                at += 40
            }
        }
        out[start] = UInt8(occupied >> 8)
        out[start + 1] = UInt8(occupied & 0xff)
        out[start + 2] = UInt8(leaves >> 8)
        out[start + 3] = UInt8(leaves & 0xff)
    }
}

/// A bump allocator for one apply: new pages, copied values and node-hash trees live here
/// until the batch is stored. Not thread-safe: each worker has its own.
final class Arena {
    // One thread owns an arena while it writes (each apply thread has its own), so accesses
    // never overlap: the runtime's exclusivity bookkeeping, paid per page, is turned off.
    @exclusivity(unchecked) private var chunks: [UnsafeMutableRawPointer] = []
    @exclusivity(unchecked) private var large: [UnsafeMutableRawPointer] = []
    @exclusivity(unchecked) private var current: UnsafeMutableRawPointer?
    @exclusivity(unchecked) private var used = 0
    @exclusivity(unchecked) private var capacity = 0

    init() {}

    deinit {
        ChunkPool.shared.give(chunks)
        for piece in large { piece.deallocate() }
    }

    /// `count` uninitialized bytes, 8-byte aligned, valid until the arena is released.
    func allocate(_ count: Int) -> UnsafeMutableRawBufferPointer {
        let rounded = (count + 7) & ~7
        if rounded > capacity - used {
            if rounded > ChunkPool.chunkSize / 4 {
                // Large pieces get their own allocation so the current chunk keeps its room.
                let piece = UnsafeMutableRawPointer.allocate(byteCount: max(rounded, 8), alignment: 8)
                large.append(piece)
                return UnsafeMutableRawBufferPointer(start: piece, count: count)
            }
            let chunk = ChunkPool.shared.take()
            chunks.append(chunk)
            current = chunk
            used = 0
            capacity = ChunkPool.chunkSize
        }
        let start = current! + used
        used += rounded
        return UnsafeMutableRawBufferPointer(start: start, count: count)
    }

    /// A copy of `bytes` in the arena.
    func copy(_ bytes: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        guard bytes.count > 0 else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        let out = allocate(bytes.count)
        out.copyMemory(from: bytes)
        return UnsafeRawBufferPointer(out)
    }

    /// A copy of a page's interior node hashes (positions 0...15 of `tree`) in the arena.
    func copy(tree: UnsafePointer<Hash>) -> UnsafePointer<Hash> {
        let out = allocate(16 * MemoryLayout<Hash>.stride).baseAddress!.bindMemory(to: Hash.self, capacity: 16)
        out.initialize(from: tree, count: 16)
        return UnsafePointer(out)
    }
}

/// Arena chunks kept between batches: a batch of 10,000 keys fills several MB of them, and
/// memory fresh from the system costs a page fault and a page clear per 4 KB touched.
final class ChunkPool: @unchecked Sendable {
    // Sendable: `lock` guards `free`.
    static let chunkSize = 1 << 20
    static let shared = ChunkPool()
    /// At most this many idle chunks are kept (64 MB).
    static let keep = 64
    private let lock = NSLock()
    private var free: [UnsafeMutableRawPointer] = []

    func take() -> UnsafeMutableRawPointer {
        lock.lock()
        let chunk = free.popLast()
        lock.unlock()
        return chunk ?? UnsafeMutableRawPointer.allocate(byteCount: Self.chunkSize, alignment: 8)
    }

    func give(_ chunks: [UnsafeMutableRawPointer]) {
        lock.lock()
        let room = max(0, Self.keep - free.count)
        free += chunks.prefix(room)
        lock.unlock()
        for chunk in chunks.dropFirst(room) { chunk.deallocate() }
    }
}
