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

    /// Largest proof document accepted, in bytes.
    public static let maxSize = 1 << 20

    private struct Wire: Codable {
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
    }

    private struct TerminalWire: Codable {
        var type: String
        var key_hash: String?
        var value_hash: String?
    }

    /// Parses a proof document.
    /// - Throws: ``LedgerError`` `.invalidArgument` with a message naming the bad field.
    public init(json: Data) throws {
        guard json.count <= Self.maxSize else { throw LedgerError(.invalidArgument, "proof document larger than 1 MiB") }
        do { _ = try JSONCheck.check([UInt8](json), rejectingDuplicates: true) } catch {
            throw LedgerError(.invalidArgument, "proof is not valid JSON: \(error)")
        }
        let wire: Wire
        do { wire = try JSONDecoder().decode(Wire.self, from: json) } catch {
            throw LedgerError(.invalidArgument, "proof is not valid proof JSON: \(Self.describe(error))")
        }
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

    private static func describe(_ error: any Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, _): return "missing field \(key.stringValue)"
        case DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context):
            return "bad value at \(context.codingPath.map(\.stringValue).joined(separator: "."))"
        case DecodingError.dataCorrupted(let context):
            return context.codingPath.isEmpty ? "not JSON" : "bad value at \(context.codingPath.map(\.stringValue).joined(separator: "."))"
        default: return "unreadable"
        }
    }

    /// The document as JSON with sorted keys.
    public func jsonData() throws -> Data {
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
        }
    }
}
