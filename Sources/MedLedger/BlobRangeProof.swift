import Foundation
public import LedgerCrypto
public import MerkleLog

/// A byte range of a blob with everything needed to check it offline (`docs/FORMATS.md`,
/// blob range proofs): the signed checkpoint; the manifest entry with its inclusion proof and
/// the key proof of `blob/<p>/<b>` at the checkpoint's size; and for each chunk the range
/// touches, the stored chunk (key commitment, ciphertext, tag), its RFC 6962 audit path in the
/// blob's chunk tree and that chunk's own key (no other chunk opens with it, and the chunk
/// opens with no other key).
///
/// ```json
/// {"type":"blob-range","v":1,"checkpoint":"<note>","tree_size":N,"entry_index":I,"entry":"<base64>",
///  "inclusion":{...},"key_proof":{...},"offset":A,"length":L,
///  "chunks":[{"index":i,"box":"<base64>","chunk_key":"<base64>","path":["<hex>",...]}]}
/// ```
public struct BlobRangeProof: Sendable {
    /// The proof document, JSON.
    public let json: Data

    /// Largest range one proof carries.
    public static let maxRange = 16 << 20
    /// Largest proof document ``verify(_:verifier:)`` reads.
    public static let maxSize = 48 << 20

    /// What a verified proof establishes.
    public struct Verified: Sendable, CustomStringConvertible {
        /// The patient pseudonym and keyed blob hash the manifest names.
        public let patient: Hash
        public let blobHash: Hash
        public let version: UInt32
        public let mediaType: String
        public let blobSize: UInt64
        public let blobRoot: Hash
        public let offset: UInt64
        /// The range's plaintext. Medical data: do not log it.
        public let bytes: [UInt8]
        /// The checkpoint the proof is anchored in.
        public let checkpoint: Checkpoint
        /// Whether the key map points the blob at this version at the checkpoint (it is the
        /// latest version there).
        public let isLatest: Bool

        /// Names the range, never its bytes.
        public var description: String {
            "blob \(blobHash.hex) v\(version) bytes \(offset)..<\(offset + UInt64(bytes.count)) of \(blobSize) at tree size \(checkpoint.size)"
        }
    }

    /// Verifies a range proof offline against the ledger's verifier key.
    /// - Throws: ``MerkleLog/MerkleLogError`` `.verificationFailed` naming the first failure.
    public static func verify(_ json: Data, verifier: NoteVerifier) throws -> Verified {
        func fail(_ why: String) -> MerkleLogError { MerkleLogError(.verificationFailed, "blob range: \(why)") }
        guard json.count <= maxSize else { throw fail("proof larger than \(maxSize) bytes") }
        do { _ = try JSONCheck.check([UInt8](json), rejectingDuplicates: true, integersOnly: true) } catch {
            throw fail("not valid JSON with unique member names: \(error)")
        }
        guard let doc = (try? JSONSerialization.jsonObject(with: json)) as? [String: Any], doc["type"] as? String == "blob-range",
              JSONValue.integer(doc["v"], as: Int.self) == 1, let note = doc["checkpoint"] as? String,
              let entryBytes = (doc["entry"] as? String).flatMap({ Base64.decode($0) }),
              let inclusionObject = doc["inclusion"], let keyObject = doc["key_proof"],
              let offset = JSONValue.integer(doc["offset"], as: UInt64.self), let length = JSONValue.integer(doc["length"], as: UInt64.self),
              let chunks = doc["chunks"] as? [[String: Any]] else {
            throw fail("missing or malformed field")
        }
        let checkpoint: Checkpoint
        do { checkpoint = try SignedCheckpoint(verifying: note, verifiers: [verifier], origin: verifier.name).checkpoint } catch {
            throw fail("checkpoint signature: \(error)")
        }
        guard JSONValue.integer(doc["tree_size"], as: UInt64.self) == checkpoint.size else { throw fail("tree_size is not the checkpoint's") }
        let inclusion = try ProofDocument(json: JSONSerialization.data(withJSONObject: inclusionObject))
        let keyProof = try ProofDocument(json: JSONSerialization.data(withJSONObject: keyObject))
        guard case .inclusion(let inc) = inclusion, case .key(let key) = keyProof else { throw fail("wrong proof types") }
        try inclusion.verify(against: checkpoint)
        try keyProof.verify(against: checkpoint)
        let leafHash = SHA256.leafHash(entryBytes)
        guard inc.leafHash == leafHash, JSONValue.integer(doc["entry_index"], as: UInt64.self) == inc.proof.leafIndex else {
            throw fail("the entry is not the proven leaf")
        }
        guard let entry = try? LedgerEntry(decoding: entryBytes), let manifest = BlobManifest(entry: entry) else {
            throw fail("the entry is not a blob manifest")
        }
        guard key.key == entry.key else { throw fail("the key proof is for another key") }
        let isLatest = key.proof.isInclusion && key.proof.value == Ledger.mapValue(index: inc.proof.leafIndex, leafHash: leafHash)

        guard length > 0, length <= UInt64(maxRange), offset <= manifest.size, length <= manifest.size - offset else {
            throw fail("range \(offset)+\(length) is empty, too long or beyond the blob's \(manifest.size) bytes")
        }
        let c = UInt64(manifest.chunkSize)
        let firstChunk = Int(offset / c), lastChunk = Int((offset + length - 1) / c)
        guard chunks.count == lastChunk - firstChunk + 1 else { throw fail("the range needs chunks \(firstChunk) to \(lastChunk)") }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(Int(length))
        for (n, item) in chunks.enumerated() {
            let i = firstChunk + n
            func bad(_ why: String) -> MerkleLogError { fail("chunk \(i): \(why)") }
            guard JSONValue.integer(item["index"], as: Int.self) == i, let box = (item["box"] as? String).flatMap({ Base64.decode($0) }),
                  var keyBytes = (item["chunk_key"] as? String).flatMap({ Base64.decode($0) }), keyBytes.count == 32,
                  let pathText = item["path"] as? [String] else { throw bad("missing or malformed field") }
            defer { secureZero(&keyBytes) }
            let plainLength = min(c, manifest.size - UInt64(i) * c)
            guard box.count == Int(plainLength) + BlobCrypto.overhead else { throw bad("sealed chunk has the wrong size") }
            let path = try pathText.map { text -> Hash in
                guard let h = Hash(hex: text) else { throw bad("malformed path hash") }
                return h
            }
            do {
                try InclusionProof(leafIndex: UInt64(i), treeSize: UInt64(manifest.chunks), hashes: path)
                    .verify(leafHash: SHA256.leafHash(box), rootHash: manifest.root)
            } catch {
                throw bad("not in the blob's chunk tree (\(error))")
            }
            let chunkKey = keyBytes.withUnsafeBytes { SecureBytes(copying: $0) }
            // The leaf covers the key commitment: only the committed key may open the chunk.
            guard BlobCrypto.keyCommitment(chunkKey) == Hash(box[0..<32]) else { throw bad("the chunk key is not the one the chunk commits to") }
            var plain = [UInt8](repeating: 0, count: Int(plainLength))
            defer { secureZero(&plain) }
            do {
                try box.withUnsafeBytes { stored in
                    try plain.withUnsafeMutableBytes { out in
                        try AESGCM.open(UnsafeRawBufferPointer(rebasing: stored[32...]), into: out, key: chunkKey, nonce: BlobCrypto.zeroNonce,
                                        associatedData: BlobCrypto.chunkAAD(p: manifest.p.hex, b: manifest.b.hex, version: manifest.version, index: i))
                    }
                }
            } catch {
                throw bad("does not open with its chunk key")
            }
            let chunkStart = UInt64(i) * c
            let from = Int(max(offset, chunkStart) - chunkStart)
            let to = Int(min(offset + length, chunkStart + plainLength) - chunkStart)
            bytes += plain[from..<to]
        }
        return Verified(patient: manifest.p, blobHash: manifest.b, version: manifest.version, mediaType: manifest.mediaType,
                        blobSize: manifest.size, blobRoot: manifest.root, offset: offset, bytes: bytes, checkpoint: checkpoint,
                        isLatest: isLatest)
    }
}

extension BlobReader {
    /// A proof of the bytes `offset ..< offset + length` (at most ``BlobRangeProof/maxRange``)
    /// against a checkpoint of the ledger's current state. It discloses those bytes (their
    /// chunks' keys) to whoever holds it: the reader's audited open covered that disclosure.
    public func rangeProof(offset: UInt64, length: UInt64) throws -> BlobRangeProof {
        guard length > 0, length <= UInt64(BlobRangeProof.maxRange), offset <= info.size, length <= info.size - offset else {
            throw LedgerError(.invalidArgument, "a proven range must be 1 to \(BlobRangeProof.maxRange) bytes within the blob's \(info.size)")
        }
        let ledger = records.ledger
        let (note, checkpoint) = try ledger.signedCheckpointAndState()
        let (entryBytes, leafHash) = try ledger.rawEntry(at: info.index)
        let (inclusion, _, root) = try ledger.inclusionProof(index: info.index, size: checkpoint.size)
        let key = PatientPayload.blobKey(p, info.blobHash)
        let (keyProof, mapRoot, size) = try ledger.keyProof(key: key, size: checkpoint.size)
        // Written by hand, keys sorted like the other proof documents: Foundation's JSON
        // writer escapes strings byte by byte, which made a 1 MB proof take 80 ms.
        var out: [UInt8] = []
        out.reserveCapacity(Int(length) * 4 / 3 + 4096)
        func text(_ s: String) { out += Array(s.utf8) }
        text(#"{"checkpoint":"#)
        PatientPayload.writeString(note, into: &out)
        text(#","chunks":["#)
        let c = UInt64(info.chunkSize)
        let box = UnsafeMutableRawBufferPointer.allocate(byteCount: info.chunkSize + BlobCrypto.overhead, alignment: 64)
        defer { box.deallocate() }
        for i in Int(offset / c)...Int((offset + length - 1) / c) {
            let sealed = UnsafeMutableRawBufferPointer(rebasing: box[0..<sealedLength(i)])
            try readSealed(i, into: sealed)
            if i > Int(offset / c) { text(",") }
            text(#"{"box":""# + Base64.encode(UnsafeRawBufferPointer(sealed)) + #"","chunk_key":""#
                 + chunkKey(i).withUnsafeBytes { Base64.encode($0) } + #"","index":\#(i),"path":["#
                 + tree.path(i).map { "\"\($0.hex)\"" }.joined(separator: ",") + "]}")
        }
        text(#"],"entry":""# + Base64.encode(entryBytes) + #"","entry_index":\#(info.index),"inclusion":"#)
        out += try ProofDocument.inclusion(.init(proof: inclusion, leafHash: leafHash, rootHash: root)).jsonData()
        text(#","key_proof":"#)
        out += try ProofDocument.key(.init(key: key, treeSize: size, mapRoot: mapRoot, proof: keyProof)).jsonData()
        text(#","length":\#(length),"offset":\#(offset),"tree_size":\#(checkpoint.size),"type":"blob-range","v":1}"#)
        return BlobRangeProof(json: Data(out))
    }
}
