import Foundation
public import LedgerCrypto
public import MerkleLog

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
    }

    /// Parses a proof document.
    /// - Throws: ``LedgerError`` `.invalidArgument` with a message naming the bad field.
    public init(json: Data) throws {
        guard json.count <= Self.maxSize else { throw LedgerError(.invalidArgument, "proof document larger than 1 MiB") }
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
        }
    }
}
