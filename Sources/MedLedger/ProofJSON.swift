import Foundation
public import LedgerCrypto
public import MerkleLog
public import SparseMerkle

/// The JSON forms of proofs in DESIGN.md section 6, as scripts exchange them.
///
/// Hashes are lowercase hex; keys are written sorted. Decoding is strict: unknown `type`,
/// missing fields, non-hex or wrong-length hashes and non-integer sizes are errors.
///
/// For example:
/// ```swift
/// let json = try ProofDocument.inclusion(.init(proof: p, leafHash: leaf, rootHash: root)).jsonData()
/// let parsed = try ProofDocument(json: json)
/// try parsed.verify()
/// ```
public enum ProofDocument: Sendable, Equatable {
    /// `{"type":"inclusion","tree_size":N,"leaf_index":I,"leaf_hash":H,"root_hash":R,"hashes":[...]}`
    case inclusion(Inclusion)
    /// `{"type":"consistency","old_size":M,"new_size":N,"old_root":R1,"new_root":R2,"hashes":[...]}`
    case consistency(Consistency)
    /// `{"type":"key","key":K,"key_hash":k,"tree_size":N,"map_root":R,"present":B,"value":V,
    /// "terminal":T,"siblings":[...]}`: `key` holds `value` (or is absent) in the map after N entries.
    case key(Key)
    /// `{"type":"keys","tree_size":N,"map_root":R,"keys":[{"key":K,"key_hash":k,"present":B,
    /// "value":V},...],"nodes":[...]}`: one proof for several keys (``SparseMultiProof``), the
    /// keys in ascending key-hash order, each node `{"type":"interior"}`, `{"type":"empty"}`,
    /// `{"type":"leaf","key_hash":k,"value_hash":v}` or `{"type":"sibling","hash":h}`.
    case keys(Keys)

    public struct Keys: Sendable, Equatable {
        /// The keys as UTF-8 text, in the proof's order (ascending SHA-256). Set only by the
        /// initializer, which checks them against the proof's key hashes.
        public private(set) var keys: [String]
        public var treeSize: UInt64
        public var mapRoot: Hash
        public private(set) var proof: SparseMultiProof
        /// Takes `keys` in any order, with duplicates, and puts them in the proof's order.
        /// - Throws: ``LedgerError`` `.invalidArgument` when the keys are not the proof's.
        public init(keys: [String], treeSize: UInt64, mapRoot: Hash, proof: SparseMultiProof) throws {
            var byHash: [Hash: String] = [:]
            for key in keys { byHash[SHA256.hash(utf8: key)] = key }
            guard byHash.count == proof.keyHashes.count else {
                throw LedgerError(.invalidArgument, "\(byHash.count) distinct keys for a proof of \(proof.keyHashes.count)")
            }
            self.keys = try proof.keyHashes.map { h in
                guard let key = byHash[h] else { throw LedgerError(.invalidArgument, "key hash \(h.hex) has no key") }
                return key
            }
            self.treeSize = treeSize
            self.mapRoot = mapRoot
            self.proof = proof
        }
    }

    public struct Key: Sendable, Equatable {
        /// The key as UTF-8 text.
        public var key: String
        public var treeSize: UInt64
        public var mapRoot: Hash
        public var proof: SparseProof
        public init(key: String, treeSize: UInt64, mapRoot: Hash, proof: SparseProof) {
            self.key = key
            self.treeSize = treeSize
            self.mapRoot = mapRoot
            self.proof = proof
        }
    }

    public struct Inclusion: Sendable, Equatable {
        public var proof: InclusionProof
        public var leafHash: Hash
        public var rootHash: Hash
        public init(proof: InclusionProof, leafHash: Hash, rootHash: Hash) {
            self.proof = proof
            self.leafHash = leafHash
            self.rootHash = rootHash
        }
    }

    public struct Consistency: Sendable, Equatable {
        public var proof: ConsistencyProof
        public var oldRoot: Hash
        public var newRoot: Hash
        public init(proof: ConsistencyProof, oldRoot: Hash, newRoot: Hash) {
            self.proof = proof
            self.oldRoot = oldRoot
            self.newRoot = newRoot
        }
    }

    /// Largest proof document accepted, in bytes: room for multi-key proofs of thousands of
    /// keys (in a map of a million keys, 100 keys took 526 bytes each in the binary form,
    /// which JSON's hex roughly doubles).
    public static let maxSize = 16 << 20

    struct Wire: Codable {
        var type: String
        var tree_size: UInt64?
        var leaf_index: UInt64?
        var leaf_hash: String?
        var root_hash: String?
        var old_size: UInt64?
        var new_size: UInt64?
        var old_root: String?
        var new_root: String?
        var hashes: [String]?
        var key: String?
        var key_hash: String?
        var map_root: String?
        var present: Bool?
        var value: String?
        var terminal: TerminalWire?
        var siblings: [String]?
        var keys: [KeyWire]?
        var nodes: [NodeWire]?
    }

    struct KeyWire: Codable {
        var key: String
        var key_hash: String
        var present: Bool
        var value: String?
    }

    struct NodeWire: Codable {
        var type: String
        var key_hash: String?
        var value_hash: String?
        var hash: String?
    }

    struct TerminalWire: Codable {
        var type: String
        var key_hash: String?
        var value_hash: String?
    }

    /// Parses a proof document.
    /// - Throws: ``LedgerError`` `.invalidArgument` with a message naming the bad field.
    public init(json: Data) throws {
        guard json.count <= Self.maxSize else { throw LedgerError(.invalidArgument, "proof document larger than 16 MiB") }
        do { _ = try JSONCheck.check([UInt8](json), rejectingDuplicates: true, integersOnly: true) } catch {
            throw LedgerError(.invalidArgument, "proof is not valid JSON: \(error)")
        }
        let wire: Wire
        do { wire = try JSONDecoder().decode(Wire.self, from: json) } catch {
            throw Self.notProofJSON(error)
        }
        try self.init(wire: wire)
    }

    /// The error of a document (or an embedded proof) that does not decode as proof JSON.
    static func notProofJSON(_ error: any Error) -> LedgerError {
        LedgerError(.invalidArgument, "proof is not valid proof JSON: \(describe(error))")
    }

    /// A proof from its decoded fields (a document's, or one embedded in an export's proof
    /// bundle, which was checked as JSON with the bundle).
    init(wire: Wire) throws {
        func hash(_ text: String?, _ field: String) throws -> Hash {
            guard let text else { throw LedgerError(.invalidArgument, "proof lacks \(field)") }
            guard text.utf8.count == 64, let h = Hash(hex: text) else {
                throw LedgerError(.invalidArgument, "\(field) is not 64 hex digits")
            }
            return h
        }
        func need<T>(_ value: T?, _ field: String) throws -> T {
            guard let value else { throw LedgerError(.invalidArgument, "proof lacks \(field)") }
            return value
        }
        if wire.type == "key" {
            let key = try need(wire.key, "key")
            let keyHash = try hash(wire.key_hash, "key_hash")
            guard keyHash == SHA256.hash(utf8: key) else { throw LedgerError(.invalidArgument, "key_hash is not SHA-256 of key") }
            let siblingTexts = try need(wire.siblings, "siblings")
            guard siblingTexts.count <= 256 else { throw LedgerError(.invalidArgument, "key proof has more than 256 siblings") }
            let siblings = try siblingTexts.enumerated().map { $0.element.isEmpty ? SparseHash.empty : try hash($0.element, "siblings[\($0.offset)]") }
            let terminalWire = try need(wire.terminal, "terminal")
            let terminal: SparseProof.Terminal
            switch terminalWire.type {
            case "empty" where terminalWire.key_hash == nil && terminalWire.value_hash == nil: terminal = .empty
            case "leaf": terminal = .leaf(keyHash: try hash(terminalWire.key_hash, "terminal.key_hash"),
                                          valueHash: try hash(terminalWire.value_hash, "terminal.value_hash"))
            default: throw LedgerError(.invalidArgument, "unknown terminal type")
            }
            let present = try need(wire.present, "present")
            var value: [UInt8]? = nil
            if present {
                guard let v = Hex.decode(try need(wire.value, "value")) else { throw LedgerError(.invalidArgument, "value is not hex") }
                value = v
            } else if wire.value != nil {
                throw LedgerError(.invalidArgument, "an absent key's proof carries no value")
            }
            self = .key(Key(key: key, treeSize: try need(wire.tree_size, "tree_size"), mapRoot: try hash(wire.map_root, "map_root"),
                            proof: SparseProof(keyHash: keyHash, terminal: terminal, siblings: siblings, value: value)))
            return
        }
        if wire.type == "keys" {
            self = .keys(try Self.keys(wire, hash: hash, need: need))
            return
        }
        let hashTexts = try need(wire.hashes, "hashes")
        guard hashTexts.count <= 128 else { throw LedgerError(.invalidArgument, "proof has more than 128 hashes") }
        let hashes = try hashTexts.enumerated().map { try hash($0.element, "hashes[\($0.offset)]") }
        switch wire.type {
        case "inclusion":
            let proof = InclusionProof(leafIndex: try need(wire.leaf_index, "leaf_index"),
                                       treeSize: try need(wire.tree_size, "tree_size"), hashes: hashes)
            self = .inclusion(Inclusion(proof: proof, leafHash: try hash(wire.leaf_hash, "leaf_hash"),
                                        rootHash: try hash(wire.root_hash, "root_hash")))
        case "consistency":
            let proof = ConsistencyProof(oldSize: try need(wire.old_size, "old_size"),
                                         newSize: try need(wire.new_size, "new_size"), hashes: hashes)
            self = .consistency(Consistency(proof: proof, oldRoot: try hash(wire.old_root, "old_root"),
                                            newRoot: try hash(wire.new_root, "new_root")))
        default:
            throw LedgerError(.invalidArgument, "unknown proof type")
        }
    }

    private static func keys(_ wire: Wire, hash: (String?, String) throws -> Hash,
                             need: (UInt64?, String) throws -> UInt64) throws -> Keys {
        guard let keyWires = wire.keys else { throw LedgerError(.invalidArgument, "proof lacks keys") }
        guard let nodeWires = wire.nodes else { throw LedgerError(.invalidArgument, "proof lacks nodes") }
        guard !keyWires.isEmpty else { throw LedgerError(.invalidArgument, "multi-key proof has no keys") }
        guard keyWires.count <= SparseMultiProof.maxKeys else {
            throw LedgerError(.invalidArgument, "multi-key proof has more than \(SparseMultiProof.maxKeys) keys")
        }
        var keyHashes: [Hash] = [], values: [[UInt8]?] = []
        for (i, k) in keyWires.enumerated() {
            let keyHash = try hash(k.key_hash, "keys[\(i)].key_hash")
            guard keyHash == SHA256.hash(utf8: k.key) else { throw LedgerError(.invalidArgument, "keys[\(i)].key_hash is not SHA-256 of its key") }
            keyHashes.append(keyHash)
            if k.present {
                guard let text = k.value else { throw LedgerError(.invalidArgument, "proof lacks keys[\(i)].value") }
                guard let v = Hex.decode(text) else { throw LedgerError(.invalidArgument, "keys[\(i)].value is not hex") }
                guard v.count <= SparseMultiProof.maxValueLength else {
                    throw LedgerError(.invalidArgument, "keys[\(i)].value is longer than 65,535 bytes")
                }
                values.append(v)
            } else {
                guard k.value == nil else { throw LedgerError(.invalidArgument, "keys[\(i)] is absent but carries a value") }
                values.append(nil)
            }
        }
        let nodes = try nodeWires.enumerated().map { i, node -> SparseMultiProof.Node in
            let fields = (node.key_hash != nil, node.value_hash != nil, node.hash != nil)
            switch node.type {
            case "interior" where fields == (false, false, false): return .interior
            case "empty" where fields == (false, false, false): return .empty
            case "leaf" where !fields.2:
                return .leaf(keyHash: try hash(node.key_hash, "nodes[\(i)].key_hash"), valueHash: try hash(node.value_hash, "nodes[\(i)].value_hash"))
            case "sibling" where !fields.0 && !fields.1: return .sibling(try hash(node.hash, "nodes[\(i)].hash"))
            default: throw LedgerError(.invalidArgument, "nodes[\(i)] is not an interior, empty, leaf or sibling node")
            }
        }
        let proof = SparseMultiProof(keyHashes: keyHashes, values: values, nodes: nodes)
        return try Keys(keys: keyWires.map(\.key), treeSize: try need(wire.tree_size, "tree_size"),
                        mapRoot: try hash(wire.map_root, "map_root"), proof: proof)
    }

    static func describe(_ error: any Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, _): return "missing field \(key.stringValue)"
        case DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context):
            return "bad value at \(context.codingPath.map(\.stringValue).joined(separator: "."))"
        case DecodingError.dataCorrupted(let context):
            // Documents reach the decoder after the JSON checker accepted them; what it then
            // calls invalid JSON, without a path, is a number outside its field's range.
            return context.codingPath.isEmpty ? "a number is negative, fractional or too large for its field"
                                              : "bad value at \(context.codingPath.map(\.stringValue).joined(separator: "."))"
        default: return "unreadable"
        }
    }

    /// The document as JSON with sorted keys.
    public func jsonData() throws -> Data { Data(jsonBytes()) }

    /// The document's JSON, written directly: what `JSONEncoder` (sorted keys, slashes not
    /// escaped) makes of its wire form, except that control characters in a key are written
    /// as `\u00XX` (tests hold the two equal). An export writes two documents per record,
    /// which through the encoder took half its time. (Capacities are bounds: member names and
    /// punctuation, 66 bytes a hash, 20 a number, ``ByteWriter/jsonBound(_:)`` a key.)
    func jsonBytes() -> [UInt8] {
        switch self {
        case .inclusion(let i):
            return ByteWriter.build(capacity: 320 + 67 * i.proof.hashes.count) { out in
                out.raw(#"{"hashes":"#); out.hexStrings(i.proof.hashes)
                out.raw(#","leaf_hash":"#); out.hexString(i.leafHash)
                out.raw(#","leaf_index":"#); out.unsigned(i.proof.leafIndex)
                out.raw(#","root_hash":"#); out.hexString(i.rootHash)
                out.raw(#","tree_size":"#); out.unsigned(i.proof.treeSize)
                out.raw(#","type":"inclusion"}"#)
            }
        case .consistency(let c):
            return ByteWriter.build(capacity: 320 + 67 * c.proof.hashes.count) { out in
                out.raw(#"{"hashes":"#); out.hexStrings(c.proof.hashes)
                out.raw(#","new_root":"#); out.hexString(c.newRoot)
                out.raw(#","new_size":"#); out.unsigned(c.proof.newSize)
                out.raw(#","old_root":"#); out.hexString(c.oldRoot)
                out.raw(#","old_size":"#); out.unsigned(c.proof.oldSize)
                out.raw(#","type":"consistency"}"#)
            }
        case .key(let k):
            let value = k.proof.value.map { Hex.encode($0) }
            let capacity = 640 + ByteWriter.jsonBound(k.key) + 2 * (k.proof.value?.count ?? 0) + 67 * k.proof.siblings.count
            return ByteWriter.build(capacity: capacity) { out in
                out.raw(#"{"key":"#); out.string(k.key)
                out.raw(#","key_hash":"#); out.hexString(k.proof.keyHash)
                out.raw(#","map_root":"#); out.hexString(k.mapRoot)
                out.raw(#","present":"#); out.boolean(k.proof.isInclusion)
                out.raw(#","siblings":"#); out.hexStrings(k.proof.siblings, blank: SparseHash.empty)
                switch k.proof.terminal {
                case .empty: out.raw(#","terminal":{"type":"empty"}"#)
                case .leaf(let keyHash, let valueHash):
                    out.raw(#","terminal":{"key_hash":"#); out.hexString(keyHash)
                    out.raw(#","type":"leaf","value_hash":"#); out.hexString(valueHash)
                    out.raw("}")
                }
                out.raw(#","tree_size":"#); out.unsigned(k.treeSize)
                out.raw(#","type":"key""#)
                if let value {
                    out.raw(#","value":"#); out.string(value)
                }
                out.raw("}")
            }
        case .keys(let k):
            var capacity = 320 + 200 * k.proof.nodes.count
            for (key, value) in zip(k.keys, k.proof.values) { capacity += 160 + ByteWriter.jsonBound(key) + 2 * (value?.count ?? 0) }
            return ByteWriter.build(capacity: capacity) { out in
                out.raw(#"{"keys":["#)
                for i in k.keys.indices {
                    if i > 0 { out.raw(",") }
                    out.raw(#"{"key":"#); out.string(k.keys[i])
                    out.raw(#","key_hash":"#); out.hexString(k.proof.keyHashes[i])
                    out.raw(#","present":"#); out.boolean(k.proof.values[i] != nil)
                    if let value = k.proof.values[i] {
                        out.raw(#","value":"#); out.string(Hex.encode(value))
                    }
                    out.raw("}")
                }
                out.raw(#"],"map_root":"#); out.hexString(k.mapRoot)
                out.raw(#","nodes":["#)
                for (i, node) in k.proof.nodes.enumerated() {
                    if i > 0 { out.raw(",") }
                    switch node {
                    case .interior: out.raw(#"{"type":"interior"}"#)
                    case .empty: out.raw(#"{"type":"empty"}"#)
                    case .leaf(let keyHash, let valueHash):
                        out.raw(#"{"key_hash":"#); out.hexString(keyHash)
                        out.raw(#","type":"leaf","value_hash":"#); out.hexString(valueHash)
                        out.raw("}")
                    case .sibling(let hash):
                        out.raw(#"{"hash":"#); out.hexString(hash)
                        out.raw(#","type":"sibling"}"#)
                    }
                }
                out.raw(#"],"tree_size":"#); out.unsigned(k.treeSize)
                out.raw(#","type":"keys"}"#)
            }
        }
    }

    /// The document through `JSONEncoder` (sorted keys, slashes not escaped): the reference
    /// ``jsonBytes()`` is held to.
    func encodedWire() throws -> Data {
        let wire: Wire
        switch self {
        case .inclusion(let i):
            wire = Wire(type: "inclusion", tree_size: i.proof.treeSize, leaf_index: i.proof.leafIndex,
                        leaf_hash: i.leafHash.hex, root_hash: i.rootHash.hex, hashes: i.proof.hashes.map(\.hex))
        case .consistency(let c):
            wire = Wire(type: "consistency", old_size: c.proof.oldSize, new_size: c.proof.newSize,
                        old_root: c.oldRoot.hex, new_root: c.newRoot.hex, hashes: c.proof.hashes.map(\.hex))
        case .key(let k):
            let terminal: TerminalWire
            switch k.proof.terminal {
            case .empty: terminal = TerminalWire(type: "empty")
            case .leaf(let k2, let v2): terminal = TerminalWire(type: "leaf", key_hash: k2.hex, value_hash: v2.hex)
            }
            wire = Wire(type: "key", tree_size: k.treeSize, key: k.key, key_hash: k.proof.keyHash.hex, map_root: k.mapRoot.hex,
                        present: k.proof.isInclusion, value: k.proof.value.map { Hex.encode($0) }, terminal: terminal,
                        siblings: k.proof.siblings.map { $0 == SparseHash.empty ? "" : $0.hex })
        case .keys(let k):
            let keys = k.keys.indices.map { i in
                KeyWire(key: k.keys[i], key_hash: k.proof.keyHashes[i].hex, present: k.proof.values[i] != nil,
                        value: k.proof.values[i].map { Hex.encode($0) })
            }
            let nodes = k.proof.nodes.map { node -> NodeWire in
                switch node {
                case .interior: return NodeWire(type: "interior")
                case .empty: return NodeWire(type: "empty")
                case .leaf(let kh, let vh): return NodeWire(type: "leaf", key_hash: kh.hex, value_hash: vh.hex)
                case .sibling(let h): return NodeWire(type: "sibling", hash: h.hex)
                }
            }
            wire = Wire(type: "keys", tree_size: k.treeSize, map_root: k.mapRoot.hex, keys: keys, nodes: nodes)
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return try encoder.encode(wire)
    }

    /// Verifies the proof on its own terms (the hashes lead to the stated root(s)).
    /// - Throws: ``MerkleLog/MerkleLogError`` `.verificationFailed`.
    public func verify() throws {
        switch self {
        case .inclusion(let i): try i.proof.verify(leafHash: i.leafHash, rootHash: i.rootHash)
        case .consistency(let c): try c.proof.verify(oldRoot: c.oldRoot, newRoot: c.newRoot)
        case .key(let k):
            do { try k.proof.verify(root: k.mapRoot) } catch let error as SparseMerkleError {
                throw MerkleLogError(.verificationFailed, "key proof: \(error.message)")
            }
        case .keys(let k):
            do { try k.proof.verify(root: k.mapRoot) } catch let error as SparseMerkleError {
                throw MerkleLogError(.verificationFailed, error.message)
            }
        }
    }

    /// Verifies the proof and that it is anchored in `checkpoint`: an inclusion proof's size
    /// and root must be the checkpoint's; a consistency proof's new (or old) size and root must be.
    public func verify(against checkpoint: Checkpoint) throws {
        try verify()
        switch self {
        case .inclusion(let i):
            guard i.proof.treeSize == checkpoint.size, i.rootHash == checkpoint.rootHash else {
                throw MerkleLogError(.verificationFailed, "inclusion proof is not for the checkpoint's tree")
            }
        case .consistency(let c):
            let matchesNew = c.proof.newSize == checkpoint.size && c.newRoot == checkpoint.rootHash
            let matchesOld = c.proof.oldSize == checkpoint.size && c.oldRoot == checkpoint.rootHash
            guard matchesNew || matchesOld else {
                throw MerkleLogError(.verificationFailed, "consistency proof does not involve the checkpoint's tree")
            }
        case .key(let k):
            guard k.treeSize == checkpoint.size, let mapRoot = checkpoint.mapRoot, mapRoot == k.mapRoot else {
                throw MerkleLogError(.verificationFailed, "key proof is not for the checkpoint's map")
            }
        case .keys(let k):
            guard k.treeSize == checkpoint.size, let mapRoot = checkpoint.mapRoot, mapRoot == k.mapRoot else {
                throw MerkleLogError(.verificationFailed, "multi-key proof is not for the checkpoint's map")
            }
        }
    }
}
