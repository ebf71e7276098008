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
        func malformed(_ why: String) -> SparseMerkleError { SparseMerkleError(.malformed, "binary key proof: \(why)") }
        var at = 0
        func take(_ n: Int) throws -> ArraySlice<UInt8> {
            guard n >= 0, at + n <= bytes.count else { throw malformed("truncated") }
            defer { at += n }
            return bytes[at..<(at + n)]
        }
        guard try take(1).first == 1 else { throw malformed("unknown version") }
        let flags = try take(1).first!
        guard flags & ~3 == 0 else { throw malformed("unknown flags") }
        let depthBytes = try take(2)
        let d = Int(depthBytes.first!) << 8 | Int(depthBytes.last!)
        guard d <= 256 else { throw malformed("depth over 256") }
        let k = Hash(try take(32))!
        var terminal = Terminal.empty
        if flags & 2 != 0 { terminal = .leaf(keyHash: Hash(try take(32))!, valueHash: Hash(try take(32))!) }
        let bitmap = Array(try take((d + 7) / 8))
        var siblings: [Hash] = []
        siblings.reserveCapacity(d)
        for i in 0..<d {
            if bitmap[i / 8] & (0x80 >> UInt8(i % 8)) != 0 {
                let h = Hash(try take(32))!
                guard h != SparseHash.empty else { throw malformed("EMPTY sibling marked present") }
                siblings.append(h)
            } else {
                siblings.append(SparseHash.empty)
            }
        }
        if d % 8 != 0, let last = bitmap.last, last & (0xff >> UInt8(d % 8)) != 0 { throw malformed("bitmap padding not zero") }
        var value: [UInt8]? = nil
        if flags & 1 != 0 {
            let lengthBytes = try take(2)
            value = Array(try take(Int(lengthBytes.first!) << 8 | Int(lengthBytes.last!)))
        }
        guard at == bytes.count else { throw malformed("trailing bytes") }
        self.init(keyHash: k, terminal: terminal, siblings: siblings, value: value)
    }
}
