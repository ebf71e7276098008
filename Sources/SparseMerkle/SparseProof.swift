public import LedgerCrypto

/// A proof that a key is in the map with a value (inclusion) or is not (non-inclusion),
/// against a root hash (DESIGN.md section 3).
///
/// The search for the key hash k reaches a terminal node at depth d: the key's own leaf,
/// `EMPTY`, or another key's leaf whose key hash shares k's first d bits. ``siblings`` are
/// the d sibling hashes, deepest first.
public struct SparseProof: Sendable, Equatable {
    public enum Terminal: Sendable, Equatable {
        case empty
        case leaf(keyHash: Hash, valueHash: Hash)

        public var hash: Hash {
            switch self {
            case .empty: return SparseHash.empty
            case .leaf(let k, let v): return SparseHash.leaf(keyHash: k, valueHash: v)
            }
        }
    }

    public let keyHash: Hash
    public let terminal: Terminal
    public let siblings: [Hash]
    /// The key's value when the proof is an inclusion proof.
    public let value: [UInt8]?

    public init(keyHash: Hash, terminal: Terminal, siblings: [Hash], value: [UInt8]? = nil) {
        self.keyHash = keyHash
        self.terminal = terminal
        self.siblings = siblings
        self.value = value
    }

    /// Whether the proof claims the key is present.
    public var isInclusion: Bool { value != nil }

    /// Checks the proof against `root`.
    /// - Throws: ``SparseMerkleError`` `.verificationFailed` naming the first rule broken.
    public func verify(root: Hash) throws {
        func fail(_ why: String) -> SparseMerkleError { SparseMerkleError(.verificationFailed, why) }
        let d = siblings.count
        guard d <= 256 else { throw fail("more than 256 siblings") }
        if let value {
            guard case .leaf(let k2, let v2) = terminal, k2 == keyHash else {
                throw fail("inclusion proof must end at the key's own leaf")
            }
            guard v2 == SHA256.hash(value) else { throw fail("value does not match the leaf") }
        } else if case .leaf(let k2, _) = terminal {
            guard k2 != keyHash else { throw fail("non-inclusion proof ends at the key's own leaf") }
            for t in 0..<d where keyBit(k2, t) != keyBit(keyHash, t) {
                throw fail("terminal leaf does not share the key's first \(d) bits")
            }
        }
        var h = terminal.hash
        for (i, s) in siblings.enumerated() {
            let t = d - 1 - i
            h = keyBit(keyHash, t) == 0 ? SparseHash.interior(h, s) : SparseHash.interior(s, h)
        }
        guard h == root else { throw fail("proof does not lead to the root") }
    }

    /// Compact binary form: version byte 1, flags (bit 0 present, bit 1 leaf terminal),
    /// u16 depth d, the key hash, the terminal leaf's key and value hash (if any), a bitmap of
    /// ceil(d/8) bytes marking non-`EMPTY` siblings (bit i of the bitmap, most significant
    /// first, is sibling i deepest first), those siblings, then for an inclusion proof u16
    /// value length and the value.
    public func encoded() -> [UInt8] {
        let d = siblings.count
        var out: [UInt8] = [1]
        var flags: UInt8 = 0
        if value != nil { flags |= 1 }
        if case .leaf = terminal { flags |= 2 }
        out.append(flags)
        out.append(UInt8(d >> 8))
        out.append(UInt8(d & 0xff))
        out += keyHash.bytes
        if case .leaf(let k2, let v2) = terminal { out += k2.bytes + v2.bytes }
        var bitmap = [UInt8](repeating: 0, count: (d + 7) / 8)
        for (i, s) in siblings.enumerated() where s != SparseHash.empty { bitmap[i / 8] |= 0x80 >> UInt8(i % 8) }
        out += bitmap
        for s in siblings where s != SparseHash.empty { out += s.bytes }
        if let value {
            out.append(UInt8(value.count >> 8))
            out.append(UInt8(value.count & 0xff))
            out += value
        }
        return out
    }

    /// Parses ``encoded()``, rejecting trailing bytes, depth over 256 and values over 64 KiB.
    public init(decoding bytes: [UInt8]) throws {
        var reader = ProofBytesReader(bytes) { SparseMerkleError(.malformed, "binary key proof: \($0)") }
        guard try reader.byte() == 1 else { throw reader.malformed("unknown version") }
        let flags = try reader.byte()
        guard flags & ~3 == 0 else { throw reader.malformed("unknown flags") }
        let d = try reader.integer(width: 2)
        guard d <= 256 else { throw reader.malformed("depth over 256") }
        let k = try reader.hash()
        var terminal = Terminal.empty
        if flags & 2 != 0 { terminal = .leaf(keyHash: try reader.hash(), valueHash: try reader.hash()) }
        let bitmap = Array(try reader.take((d + 7) / 8))
        var siblings: [Hash] = []
        siblings.reserveCapacity(d)
        for i in 0..<d {
            if bitmap[i / 8] & (0x80 >> UInt8(i % 8)) != 0 {
                let h = try reader.hash()
                guard h != SparseHash.empty else { throw reader.malformed("EMPTY sibling marked present") }
                siblings.append(h)
            } else {
                siblings.append(SparseHash.empty)
            }
        }
        if d % 8 != 0, let last = bitmap.last, last & (0xff >> UInt8(d % 8)) != 0 { throw reader.malformed("bitmap padding not zero") }
        let value = flags & 1 != 0 ? try reader.value() : nil
        try reader.finish()
        self.init(keyHash: k, terminal: terminal, siblings: siblings, value: value)
    }
}

/// Reads a binary proof front to back for both proof forms' parsers: a read past the end is
/// `truncated`, and every refusal is worded by the parser's `malformed`.
struct ProofBytesReader {
    private let bytes: [UInt8]
    private(set) var at = 0
    let malformed: (String) -> SparseMerkleError

    init(_ bytes: [UInt8], malformed: @escaping (String) -> SparseMerkleError) {
        self.bytes = bytes
        self.malformed = malformed
    }

    /// Bytes not read yet.
    var remaining: Int { bytes.count - at }

    mutating func take(_ n: Int) throws -> ArraySlice<UInt8> {
        guard n >= 0, n <= remaining else { throw malformed("truncated") }
        defer { at += n }
        return bytes[at..<(at + n)]
    }

    mutating func byte() throws -> UInt8 { try take(1).first! }

    /// A big-endian integer of `width` bytes.
    mutating func integer(width: Int) throws -> Int { try take(width).reduce(0) { $0 << 8 | Int($1) } }

    mutating func hash() throws -> Hash { Hash(try take(32))! }

    /// A value written as u16 length and bytes.
    mutating func value() throws -> [UInt8] { Array(try take(try integer(width: 2))) }

    /// Refuses bytes after the proof.
    func finish() throws { guard remaining == 0 else { throw malformed("trailing bytes") } }
}
