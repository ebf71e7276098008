public import LedgerCrypto

/// One proof for several keys against one root: for each key, inclusion with its value or
/// non-inclusion, with the sibling hashes the keys' paths share sent once.
///
/// The proof is the part of the tree (DESIGN.md section 3) that the keys' searches visit, in
/// pre-order (a node, then its left subtree, then its right): every node on some key's path
/// is ``Node/interior``, ``Node/empty`` or ``Node/leaf(keyHash:valueHash:)`` (the last two
/// are terminals, where searches end), and each child of an interior node that no proven key
/// descends into is a ``Node/sibling(_:)`` with its subtree's hash. The verifier rebuilds the
/// root from that sequence, splitting the sorted keys by bit at every interior node, so a
/// node's position in the sequence says which keys it answers for.
///
/// For example:
/// ```swift
/// let proof = try SparseMerkleTree.multiProof(keyHashes: [a, b, c], version: v, reader: store)
/// try proof.verify(root: root)
/// proof.value(of: b)   // b's value, or nil when b is absent
/// ```
public struct SparseMultiProof: Sendable, Equatable {
    /// One node of the visited part of the tree.
    public enum Node: Sendable, Equatable {
        /// A node on the path of at least one proven key whose two children follow.
        case interior
        /// The terminal `EMPTY`: the keys whose search ends here are absent.
        case empty
        /// The terminal leaf of `keyHash`: that key is present (if proven) and every other
        /// key whose search ends here is absent.
        case leaf(keyHash: Hash, valueHash: Hash)
        /// The hash of a subtree that holds none of the proven keys' paths (`EMPTY` included).
        case sibling(Hash)
    }

    /// The proven keys' hashes, strictly ascending.
    public let keyHashes: [Hash]
    /// Per key (same order), its value when the proof claims it is present, nil when absent.
    public let values: [[UInt8]?]
    /// The visited nodes in pre-order.
    public let nodes: [Node]

    public init(keyHashes: [Hash], values: [[UInt8]?], nodes: [Node]) {
        self.keyHashes = keyHashes
        self.values = values
        self.nodes = nodes
    }

    /// The claimed value of `keyHash`: `.some(nil)` when the proof says it is absent, nil when
    /// the proof does not cover the key. Meaningful once ``verify(root:)`` has passed.
    public func value(of keyHash: Hash) -> [UInt8]?? {
        var lo = 0, hi = keyHashes.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if keyHashes[mid] < keyHash { lo = mid + 1 } else { hi = mid }
        }
        guard lo < keyHashes.count, keyHashes[lo] == keyHash else { return nil }
        return .some(values[lo])
    }

    /// Largest number of keys one proof covers: bounds what a decoder allocates.
    public static let maxKeys = 1 << 20

    /// Largest value a proof carries, as the tree stores them.
    public static let maxValueLength = Int(UInt16.max)

    /// Checks the proof against `root`: the keys are sorted and distinct, every present key's
    /// value hashes to the value hash of its own leaf, every absent key's search ends at
    /// `EMPTY` or at another key's leaf sharing its path, no node lies deeper than 256, every
    /// node is used, and the nodes hash to `root`.
    /// - Throws: ``SparseMerkleError`` `.verificationFailed` naming the first rule broken.
    public func verify(root: Hash) throws {
        func fail(_ why: String) -> SparseMerkleError { SparseMerkleError(.verificationFailed, "multi-key proof: \(why)") }
        guard !keyHashes.isEmpty else { throw fail("proves no key") }
        guard keyHashes.count <= Self.maxKeys else { throw fail("more than \(Self.maxKeys) keys") }
        guard values.count == keyHashes.count else { throw fail("\(values.count) values for \(keyHashes.count) keys") }
        if let i = values.firstIndex(where: { ($0?.count ?? 0) > Int(UInt16.max) }) { throw fail("key \(i)'s value is longer than 65,535 bytes") }
        for i in 1..<keyHashes.count where !(keyHashes[i - 1] < keyHashes[i]) {
            throw fail("key hashes are not strictly ascending at \(i)")
        }
        var at = 0
        func sibling() throws -> Hash {
            guard at < nodes.count else { throw fail("ends before a sibling") }
            guard case .sibling(let h) = nodes[at] else { throw fail("node \(at) is on no proven key's path but is not a sibling") }
            at += 1
            return h
        }
        // The keys in `keys` share their first `depth` bits; recursion is at most 257 deep.
        func visit(_ keys: Range<Int>, depth: Int) throws -> Hash {
            guard at < nodes.count else { throw fail("ends before the node at depth \(depth)") }
            let node = nodes[at]
            at += 1
            switch node {
            case .sibling:
                throw fail("node \(at - 1) is a sibling where a proven key's path continues")
            case .empty:
                if let i = keys.first(where: { values[$0] != nil }) { throw fail("key \(i) is claimed present but its search ends at EMPTY") }
                return SparseHash.empty
            case .leaf(let other, let valueHash):
                let first = keyHashes[keys.lowerBound]
                for t in 0..<depth where keyBit(other, t) != keyBit(first, t) {
                    throw fail("the leaf at depth \(depth) does not share its keys' first \(depth) bits")
                }
                for i in keys {
                    if keyHashes[i] == other {
                        guard let value = values[i] else { throw fail("key \(i) is claimed absent but its search ends at its own leaf") }
                        guard SHA256.hash(value) == valueHash else { throw fail("key \(i)'s value does not match its leaf") }
                    } else if values[i] != nil {
                        throw fail("key \(i) is claimed present but its search ends at another key's leaf")
                    }
                }
                return SparseHash.leaf(keyHash: other, valueHash: valueHash)
            case .interior:
                guard depth < 256 else { throw fail("an interior node at depth 256") }
                var mid = keys.lowerBound
                while mid < keys.upperBound && keyBit(keyHashes[mid], depth) == 0 { mid += 1 }
                let left = mid > keys.lowerBound ? try visit(keys.lowerBound..<mid, depth: depth + 1) : try sibling()
                let right = mid < keys.upperBound ? try visit(mid..<keys.upperBound, depth: depth + 1) : try sibling()
                return SparseHash.interior(left, right)
            }
        }
        let computed = try visit(0..<keyHashes.count, depth: 0)
        guard at == nodes.count else { throw fail("\(nodes.count - at) nodes left over") }
        guard computed == root else { throw fail("proof does not lead to the root") }
    }

    /// Builds the proof from one single-key proof per key against the same root, in the
    /// keys' order (the shared siblings are taken from them).
    init(keyHashes: [Hash], proofs: [SparseProof]) {
        var nodes: [Node] = []
        // The proofs in `keys` share the path down to `depth`.
        func build(_ keys: Range<Int>, depth: Int) {
            let first = proofs[keys.lowerBound]
            if first.siblings.count == depth {
                // Every key here reached the same node, a terminal.
                switch first.terminal {
                case .empty: nodes.append(.empty)
                case .leaf(let k, let v): nodes.append(.leaf(keyHash: k, valueHash: v))
                }
                return
            }
            nodes.append(.interior)
            var mid = keys.lowerBound
            while mid < keys.upperBound && keyBit(keyHashes[mid], depth) == 0 { mid += 1 }
            // A key's proof lists siblings deepest first: the one at `depth` is counted from the end.
            func siblingAt(_ proof: SparseProof) -> Hash { proof.siblings[proof.siblings.count - 1 - depth] }
            if mid > keys.lowerBound { build(keys.lowerBound..<mid, depth: depth + 1) } else { nodes.append(.sibling(siblingAt(proofs[mid]))) }
            if mid < keys.upperBound { build(mid..<keys.upperBound, depth: depth + 1) } else { nodes.append(.sibling(siblingAt(proofs[mid - 1]))) }
        }
        if !keyHashes.isEmpty { build(0..<keyHashes.count, depth: 0) }
        self.init(keyHashes: keyHashes, values: proofs.map(\.value), nodes: nodes)
    }

    /// Compact binary form: format byte 2 (the single-key proof's is 1), u32 key count n, the
    /// n key hashes, a presence bitmap of ceil(n/8) bytes (most significant bit first, key 0
    /// first, padding zero), u32 node count, each node as a tag byte (0 interior, 1 `EMPTY`
    /// terminal, 2 leaf terminal followed by its key hash and value hash, 3 `EMPTY` sibling,
    /// 4 sibling followed by its hash), then each present key's value as u16 length and bytes.
    /// Integers are big-endian.
    public func encoded() -> [UInt8] {
        var out: [UInt8] = [2]
        func u32(_ n: Int) { for shift in stride(from: 24, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: n >> shift)) } }
        u32(keyHashes.count)
        for k in keyHashes { out += k.bytes }
        // A proof that would not verify (values and keys of different counts, a value over
        // 65,535 bytes) still encodes without trapping; its bytes then fail to decode or verify.
        var bitmap = [UInt8](repeating: 0, count: (keyHashes.count + 7) / 8)
        for i in keyHashes.indices where i < values.count && values[i] != nil { bitmap[i / 8] |= 0x80 >> UInt8(i % 8) }
        out += bitmap
        u32(nodes.count)
        for node in nodes {
            switch node {
            case .interior: out.append(0)
            case .empty: out.append(1)
            case .leaf(let k, let v): out.append(2); out += k.bytes; out += v.bytes
            case .sibling(let h) where h == SparseHash.empty: out.append(3)
            case .sibling(let h): out.append(4); out += h.bytes
            }
        }
        for value in values.prefix(keyHashes.count) {
            guard let value else { continue }
            out.append(UInt8(truncatingIfNeeded: value.count >> 8))
            out.append(UInt8(truncatingIfNeeded: value.count))
            out += value
        }
        return out
    }

    /// Parses ``encoded()``, rejecting other format bytes, unknown tags, a non-`EMPTY` hash
    /// under tag 4 when tag 3 means `EMPTY`, nonzero bitmap padding, more than ``maxKeys``
    /// keys, truncation and trailing bytes. Values are limited to 65,535 bytes by their length.
    public init(decoding bytes: [UInt8]) throws {
        var reader = ProofBytesReader(bytes) { SparseMerkleError(.malformed, "binary multi-key proof: \($0)") }
        let malformed = reader.malformed
        guard try reader.byte() == 2 else { throw malformed("not format 2") }
        let n = try reader.integer(width: 4)
        guard n >= 1 else { throw malformed("no keys") }
        guard n <= Self.maxKeys else { throw malformed("more than \(Self.maxKeys) keys") }
        guard n * 32 <= reader.remaining else { throw malformed("truncated") }
        var keys: [Hash] = []
        keys.reserveCapacity(n)
        for _ in 0..<n { keys.append(try reader.hash()) }
        let bitmap = Array(try reader.take((n + 7) / 8))
        if n % 8 != 0, bitmap[bitmap.count - 1] & (0xff >> UInt8(n % 8)) != 0 { throw malformed("bitmap padding not zero") }
        let m = try reader.integer(width: 4)
        // A proof has at most 256 interior nodes, 256 siblings and a terminal per key; and
        // each node takes at least one byte, so a count beyond the bytes left is truncation.
        guard m <= 513 * n else { throw malformed("more than 513 nodes per key") }
        guard m <= reader.remaining else { throw malformed("truncated") }
        var nodes: [Node] = []
        nodes.reserveCapacity(m)
        for _ in 0..<m {
            switch try reader.byte() {
            case 0: nodes.append(.interior)
            case 1: nodes.append(.empty)
            case 2: nodes.append(.leaf(keyHash: try reader.hash(), valueHash: try reader.hash()))
            case 3: nodes.append(.sibling(SparseHash.empty))
            case 4:
                let h = try reader.hash()
                guard h != SparseHash.empty else { throw malformed("EMPTY sibling under tag 4") }
                nodes.append(.sibling(h))
            case let tag: throw malformed("unknown node tag \(tag)")
            }
        }
        var values: [[UInt8]?] = []
        values.reserveCapacity(n)
        for i in 0..<n {
            values.append(bitmap[i / 8] & (0x80 >> UInt8(i % 8)) != 0 ? try reader.value() : nil)
        }
        try reader.finish()
        self.init(keyHashes: keys, values: values, nodes: nodes)
    }
}

extension SparseMerkleTree {
    /// One proof for every key in `keyHashes` (any order, duplicates ignored) against the
    /// root of `version`. Its node hashes are those of the keys' single-key proofs, each
    /// shared sibling sent once.
    /// - Throws: ``SparseMerkleError`` `.unknownVersion`, or `.malformed` for no key or more
    ///   than ``SparseMultiProof/maxKeys``.
    public static func multiProof<R: SparseReader>(keyHashes: [Hash], version: UInt64, reader: R) throws -> SparseMultiProof {
        let keys = try sortedKeys(keyHashes)
        return SparseMultiProof(keyHashes: keys, proofs: try keys.map { try proofOf($0, version: version, reader: reader) })
    }

    /// ``multiProof(keyHashes:version:reader:)`` over LMDB.
    public static func multiProof(keyHashes: [Hash], version: UInt64, reader: LMDBSparseStore.View) throws -> SparseMultiProof {
        let keys = try sortedKeys(keyHashes)
        let proofs = try reader.healingStaleCache { try keys.map { try proofOf($0, version: version, reader: reader) } }
        return SparseMultiProof(keyHashes: keys, proofs: proofs)
    }

    static func sortedKeys(_ keyHashes: [Hash]) throws -> [Hash] {
        guard !keyHashes.isEmpty else { throw SparseMerkleError(.malformed, "a multi-key proof needs at least one key") }
        guard keyHashes.count <= SparseMultiProof.maxKeys else {
            throw SparseMerkleError(.malformed, "a multi-key proof covers at most \(SparseMultiProof.maxKeys) keys")
        }
        var keys: [Hash] = []
        keys.reserveCapacity(keyHashes.count)
        for k in keyHashes.sorted() where keys.last != k { keys.append(k) }
        return keys
    }
}
