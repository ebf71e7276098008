import Foundation
import Testing
import LedgerCrypto
import MedLedger
import MerkleLog
import TestSupport

/// Random bytes from a seeded generator.
func randomBytes(_ count: Int, _ rng: inout SplitMix64) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: count)
    var i = 0
    while i < count {
        let word = rng.next()
        for k in 0..<8 where i + k < count { out[i + k] = UInt8(truncatingIfNeeded: word >> (8 * UInt64(k))) }
        i += 8
    }
    return out
}

/// The segment files of a ledger and their bytes.
func segmentFiles(_ f: PatientFixture) throws -> [(path: String, bytes: [UInt8])] {
    let dir = f.directory + "/blobs"
    let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
    return try names.sorted().map { (dir + "/" + $0, [UInt8](try Data(contentsOf: URL(fileURLWithPath: dir + "/" + $0)))) }
}

func flipByte(_ path: String, at offset: Int) throws {
    let handle = try FileHandle(forUpdating: URL(fileURLWithPath: path))
    defer { try? handle.close() }
    try handle.seek(toOffset: UInt64(offset))
    let byte = try handle.read(upToCount: 1)![0]
    try handle.seek(toOffset: UInt64(offset))
    try handle.write(contentsOf: Data([byte ^ 0x01]))
}

func putBlob(_ f: PatientFixture, _ patient: String, _ id: String, _ content: [UInt8], chunkSize: Int, pieces: Int = 3) throws -> BlobInfo {
    let writer = try f.records.blobWriter(chunkSize: chunkSize)
    let upload = try writer.begin(patient: patient, blobId: id, mediaType: "application/dicom")
    // Feed uneven pieces so chunk boundaries fall inside writes.
    var at = 0
    let step = max(1, content.count / pieces + 7)
    while at < content.count {
        let n = min(step, content.count - at)
        try upload.write(Array(content[at..<(at + n)]))
        at += n
    }
    try upload.finish()
    return try writer.commit()[0]
}

@Suite struct BlobTests {
    static let chunk = 4096

    @Test func roundTripAtChunkBoundariesWithIndependentRoot() throws {
        var rng = SplitMix64(seed: 0xB10B)
        let c = Self.chunk
        for size in [0, 1, c - 1, c, c + 1, 5 * c + 7, 16 * c] {
            let f = try PatientFixture("blob-\(size)")
            try f.records.addPatient(externalId: "P")
            let content = randomBytes(size, &rng)
            let info = try putBlob(f, "P", "study", content, chunkSize: c)
            #expect(info.size == UInt64(size))
            #expect(info.chunkCount == (size + c - 1) / c)
            #expect(info.version == 1)

            // The chunk tree, recomputed by the log's own RFC 6962 code over the sealed chunks.
            let segment = try segmentFiles(f)
            #expect(segment.count == 1)
            let stored = segment[0].bytes
            #expect(stored.count == size + 48 * info.chunkCount)  // key commitment and tag per chunk
            let log = try MerkleLog(store: MemoryLogStore())
            var at = 0
            var boxes: [[UInt8]] = []
            for i in 0..<info.chunkCount {
                let n = min(c, size - i * c) + 48
                boxes.append(Array(stored[at..<(at + n)]))
                at += n
            }
            if !boxes.isEmpty { try log.append(boxes) }
            #expect(try log.rootHash(size: UInt64(boxes.count)) == info.root)

            let reader = try f.records.openBlob(patient: "P", blobId: "study", as: .patient("P"))
            #expect(reader.info == info)
            var streamed: [UInt8] = []
            try reader.stream { streamed += $0 }
            #expect(streamed == content)
            for _ in 0..<20 where size > 0 {
                let a = Int(rng.next() % UInt64(size))
                let n = Int(rng.next() % UInt64(size - a + 1))
                #expect(try reader.read(offset: UInt64(a), count: n) == Array(content[a..<(a + n)]))
            }
            #expect(throws: LedgerError.self) { try reader.read(offset: UInt64(size), count: 1) }
            // No plaintext run in any file (a 64-byte window of random content).
            if size >= 64 { #expect(!contains(try f.allFileBytes(), Array(content[0..<64]))) }
        }
    }

    @Test func versionsAndAsyncSourceAndFileSource() async throws {
        let f = try PatientFixture("blob-versions")
        try f.records.addPatient(externalId: "P")
        var rng = SplitMix64(seed: 7)
        let v1 = randomBytes(3 * Self.chunk + 5, &rng)
        let v2 = randomBytes(Self.chunk / 2, &rng)
        _ = try putBlob(f, "P", "img", v1, chunkSize: Self.chunk)
        struct Pieces: AsyncSequence, AsyncIteratorProtocol {
            var rest: [[UInt8]]
            mutating func next() async throws -> [UInt8]? { rest.isEmpty ? nil : rest.removeFirst() }
            func makeAsyncIterator() -> Pieces { self }
        }
        let info2 = try await f.records.putBlob(patient: "P", blobId: "img", from: Pieces(rest: [Array(v2[..<100]), Array(v2[100...])]),
                                                chunkSize: Self.chunk)
        #expect(info2.version == 2)
        let path = f.directory + ".source"
        try Data(v1).write(to: URL(fileURLWithPath: path))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let info3 = try f.records.putBlob(patient: "P", blobId: "img", contentsOfFile: path, chunkSize: Self.chunk)
        #expect(info3.version == 3)
        var whole: [UInt8] = []
        try f.records.openBlob(patient: "P", blobId: "img", version: 1, as: .patient("P")).stream { whole += $0 }
        #expect(whole == v1)
        #expect(try f.records.openBlob(patient: "P", blobId: "img", version: 2, as: .patient("P")).read(offset: 0, count: v2.count) == v2)
        let latest = try f.records.openBlob(patient: "P", blobId: "img", as: .patient("P"))
        #expect(latest.info.version == 3)
        #expect(throws: LedgerError(.recordNotFound, "")) { try f.records.openBlob(patient: "P", blobId: "img", version: 4, as: .patient("P")) }
        #expect(throws: LedgerError(.recordNotFound, "")) { try f.records.openBlob(patient: "P", blobId: "other", as: .patient("P")) }
        #expect(throws: LedgerError(.patientNotFound, "")) { try f.records.blobWriter().begin(patient: "Q", blobId: "x") }
    }

    @Test func corruptedChunkIsAnErrorNeverData() throws {
        let f = try PatientFixture("blob-corrupt")
        try f.records.addPatient(externalId: "P")
        var rng = SplitMix64(seed: 11)
        let content = randomBytes(4 * Self.chunk, &rng)
        _ = try putBlob(f, "P", "img", content, chunkSize: Self.chunk)
        let path = try segmentFiles(f)[0].path
        let stride = Self.chunk + 48
        try flipByte(path, at: 2 * stride + 100)  // inside chunk 2's ciphertext
        let reader = try f.records.openBlob(patient: "P", blobId: "img", as: .patient("P"))
        #expect(try reader.read(offset: 0, count: 2 * Self.chunk) == Array(content[0..<(2 * Self.chunk)]))
        #expect(try reader.read(offset: UInt64(3 * Self.chunk), count: Self.chunk) == Array(content[(3 * Self.chunk)...]))
        #expect(throws: LedgerError(.storage, "")) { try reader.read(offset: UInt64(2 * Self.chunk + 5), count: 1) }
        #expect(throws: LedgerError(.storage, "")) { try reader.stream { _ in } }
        #expect(throws: LedgerError(.storage, "")) { try reader.rangeProof(offset: UInt64(2 * Self.chunk), length: 10) }
        // verify rehashes the sealed chunks and names the damaged one.
        let found = try f.ledger.verify(VerificationOptions())
        #expect(found.problems.map(\.area) == [.blobs])
        #expect(found.problems.first?.detail.contains("chunk 2") == true)
        var quick = VerificationOptions()
        quick.checkBlobChunks = false
        #expect(try f.ledger.verify(quick).isValid)
        // A tag byte (the chunk's last 16) and a key commitment byte (its first 32) are checked as well.
        try flipByte(path, at: 2 * stride + 100)
        for at in [stride - 1, 5] {
            try flipByte(path, at: at)
            #expect(throws: LedgerError(.storage, "")) { try reader.read(offset: 0, count: 1) }
            try flipByte(path, at: at)
        }
        #expect(try reader.read(offset: 0, count: 1) == [content[0]])
        // A truncated segment is damage, not a short read.
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: path))
        try handle.truncate(atOffset: UInt64(3 * stride + 10))
        try handle.close()
        #expect(throws: LedgerError(.storage, "")) { try reader.read(offset: UInt64(3 * Self.chunk), count: 1) }
    }

    @Test func rangeProofsVerifyAndTamperedOnesFail() throws {
        let f = try PatientFixture("blob-proof")
        try f.records.addPatient(externalId: "P")
        var rng = SplitMix64(seed: 13)
        let content = randomBytes(9 * Self.chunk + 123, &rng)
        _ = try putBlob(f, "P", "img", content, chunkSize: Self.chunk)
        let reader = try f.records.openBlob(patient: "P", blobId: "img", as: .patient("P"))
        let verifier = try NoteVerifier(parsing: f.verifierKey)
        for (a, n) in [(0, 1), (Self.chunk - 3, 10), (5000, 3 * Self.chunk), (content.count - 50, 50), (0, content.count)] {
            let proof = try reader.rangeProof(offset: UInt64(a), length: UInt64(n))
            let verified = try BlobRangeProof.verify(proof.json, verifier: verifier)
            #expect(verified.bytes == Array(content[a..<(a + n)]))
            #expect(verified.isLatest)
            #expect(verified.blobRoot == reader.info.root)
        }
        let proof = try reader.rangeProof(offset: UInt64(Self.chunk - 3), length: UInt64(Self.chunk + 10))
        let object = try JSONSerialization.jsonObject(with: proof.json) as! [String: Any]
        func rejects(_ label: String, _ change: (inout [String: Any]) -> Void) throws {
            var changed = object
            change(&changed)
            let data = try JSONSerialization.data(withJSONObject: changed)
            #expect(throws: MerkleLogError.self, "\(label) must fail") { try BlobRangeProof.verify(data, verifier: verifier) }
        }
        func editChunk(_ i: Int, _ edit: @escaping (inout [String: Any]) -> Void) -> (inout [String: Any]) -> Void {
            { doc in
                var chunks = doc["chunks"] as! [[String: Any]]
                edit(&chunks[i])
                doc["chunks"] = chunks
            }
        }
        func flip(_ base64: String, _ at: Int) -> String {
            var bytes = Base64.decode(base64)!
            bytes[at % bytes.count] ^= 1
            return Base64.encode(bytes)
        }
        try rejects("flipped ciphertext bit") { editChunk(0, { $0["box"] = flip($0["box"] as! String, 7) })(&$0) }
        try rejects("flipped tag bit") { editChunk(1, { $0["box"] = flip($0["box"] as! String, Self.chunk + 15) })(&$0) }
        try rejects("wrong chunk key") { editChunk(0, { $0["chunk_key"] = flip($0["chunk_key"] as! String, 3) })(&$0) }
        try rejects("truncated box") { editChunk(0, { $0["box"] = Base64.encode(Array(Base64.decode($0["box"] as! String)!.dropLast())) })(&$0) }
        try rejects("truncated path") { editChunk(0, { $0["path"] = Array(($0["path"] as! [String]).dropLast()) })(&$0) }
        try rejects("flipped path hash") {
            editChunk(1, { var p = $0["path"] as! [String]; p[0] = String(p[0].dropFirst()) + (p[0].first == "0" ? "1" : "0"); $0["path"] = p })(&$0)
        }
        try rejects("chunks swapped") { var c = $0["chunks"] as! [[String: Any]]; c.swapAt(0, 1); $0["chunks"] = c }
        try rejects("chunk dropped") { $0["chunks"] = Array(($0["chunks"] as! [[String: Any]]).dropLast()) }
        // (A shifted range within the same chunks is still proven by them; one needing other chunks is not.)
        try rejects("offset moved to other chunks") { $0["offset"] = ($0["offset"] as! Int) + Self.chunk }
        try rejects("length beyond the chunks") { $0["length"] = ($0["length"] as! Int) + Self.chunk }
        try rejects("entry altered") { $0["entry"] = flip($0["entry"] as! String, 40) }
        try rejects("checkpoint altered") { $0["checkpoint"] = ($0["checkpoint"] as! String).replacingOccurrences(of: "\n", with: "\n\n", options: [], range: nil) }
        try rejects("tree size differs") { $0["tree_size"] = ($0["tree_size"] as! Int) + 1 }
        try rejects("wrong type") { $0["type"] = "export" }
        // Integer fields take plain JSON integers only.
        try rejects("version as true") { $0["v"] = true }
        try rejects("version as a fraction") { $0["v"] = 1.5 }
        try rejects("negative offset") { $0["offset"] = -1 }
        try rejects("chunk index as a fraction") { editChunk(0, { $0["index"] = Double($0["index"] as! Int) + 0.5 })(&$0) }
        // Another ledger's key does not verify it.
        let other = try PatientFixture("blob-proof-other")
        #expect(throws: MerkleLogError.self) { try BlobRangeProof.verify(proof.json, verifier: NoteVerifier(parsing: other.verifierKey)) }
        // A duplicated member is refused.
        let text = String(decoding: proof.json, as: UTF8.self)
        let duplicated = text.replacingOccurrences(of: "{\"checkpoint\"", with: "{\"offset\":0,\"checkpoint\"")
        #expect(throws: MerkleLogError.self) { try BlobRangeProof.verify(Data(duplicated.utf8), verifier: verifier) }
        // After a newer version, the old proof still verifies and says it is not the latest.
        _ = try putBlob(f, "P", "img", [1, 2, 3], chunkSize: Self.chunk)
        let again = try reader.rangeProof(offset: 0, length: 10)
        let old = try BlobRangeProof.verify(again.json, verifier: verifier)
        #expect(!old.isLatest && old.bytes == Array(content[0..<10]))
    }

    /// AES-GCM is not key-committing: with the key commitment in the leaf, a proof whose chunk
    /// key is replaced by another key fails even when the chunk's bytes are left alone, and a
    /// recomputed commitment breaks the chunk's leaf.
    @Test func rangeProofChunksAreCommittedToTheirKeys() throws {
        let f = try PatientFixture("blob-commit")
        try f.records.addPatient(externalId: "P")
        var rng = SplitMix64(seed: 23)
        _ = try putBlob(f, "P", "img", randomBytes(3 * Self.chunk, &rng), chunkSize: Self.chunk)
        let reader = try f.records.openBlob(patient: "P", blobId: "img", as: .patient("P"))
        let verifier = try NoteVerifier(parsing: f.verifierKey)
        let proof = try reader.rangeProof(offset: 10, length: 10)
        var object = try JSONSerialization.jsonObject(with: proof.json) as! [String: Any]
        var chunks = object["chunks"] as! [[String: Any]]
        let otherKey = try SecureRandom.bytes(32)
        chunks[0]["chunk_key"] = Base64.encode(otherKey)
        object["chunks"] = chunks
        #expect(throws: MerkleLogError.self) { try BlobRangeProof.verify(JSONSerialization.data(withJSONObject: object), verifier: verifier) }
        // Rewriting the commitment for the other key changes the leaf: the path no longer holds.
        var box = Base64.decode(chunks[0]["box"] as! String)!
        var input = Array("medledger-blob-key-commit/1".utf8) + otherKey
        box.replaceSubrange(0..<32, with: SHA256.hash(input).bytes)
        secureZero(&input)
        chunks[0]["box"] = Base64.encode(box)
        object["chunks"] = chunks
        #expect(throws: MerkleLogError.self) { try BlobRangeProof.verify(JSONSerialization.data(withJSONObject: object), verifier: verifier) }
    }

    @Test func misuseIsAnErrorNotACrash() throws {
        let f = try PatientFixture("blob-misuse")
        try f.records.addPatient(externalId: "P")
        // An upload whose writer is gone refuses to write (the batch buffers were the writer's).
        let orphan = try f.records.blobWriter(chunkSize: Self.chunk).begin(patient: "P", blobId: "x")
        #expect(throws: LedgerError(.invalidArgument, "")) { try orphan.write([1, 2, 3]) }
        #expect(throws: LedgerError(.invalidArgument, "")) { try orphan.finish() }
        _ = try putBlob(f, "P", "img", [1, 2, 3, 4, 5], chunkSize: Self.chunk)
        let reader = try f.records.openBlob(patient: "P", blobId: "img", as: .patient("P"))
        #expect(throws: LedgerError(.invalidArgument, "")) { try reader.stream(offset: 2, count: .max) { _ in } }
        #expect(throws: LedgerError(.invalidArgument, "")) { try reader.read(offset: 0, count: -1) }
        #expect(throws: LedgerError(.invalidArgument, "")) { try reader.read(offset: .max, count: 1) }
        #expect(throws: LedgerError(.invalidArgument, "")) { try reader.rangeProof(offset: 4, length: 2) }
        #expect(throws: LedgerError(.invalidArgument, "")) { try f.records.blobWriter(chunkSize: 100) }
        #expect(throws: LedgerError(.invalidArgument, "")) { try f.records.blobWriter().begin(patient: "P", blobId: "") }
        // A writer takes one upload at a time.
        let writer = try f.records.blobWriter(chunkSize: Self.chunk)
        let first = try writer.begin(patient: "P", blobId: "a")
        #expect(throws: LedgerError(.invalidArgument, "")) { try writer.begin(patient: "P", blobId: "b") }
        #expect(throws: LedgerError(.invalidArgument, "")) { try writer.commit() }
        try first.finish()
        #expect(try writer.commit().map(\.blobId) == ["a"])
    }

    @Test func interruptedUploadStaysInvisibleAndIsCollected() throws {
        let f = try PatientFixture("blob-interrupt")
        try f.records.addPatient(externalId: "P")
        var rng = SplitMix64(seed: 17)
        let kept = randomBytes(3 * Self.chunk, &rng)
        _ = try putBlob(f, "P", "kept", kept, chunkSize: Self.chunk)
        let size = try f.ledger.size
        do {
            let writer = try f.records.blobWriter(chunkSize: Self.chunk)
            let upload = try writer.begin(patient: "P", blobId: "lost")
            try upload.write(randomBytes(40 * Self.chunk, &rng))
            try upload.finish()
            // A second writer meanwhile takes another segment: the first still holds its own.
            let second = try f.records.blobWriter(chunkSize: Self.chunk)
            let other = try second.begin(patient: "P", blobId: "lost-too")
            try other.write(randomBytes(40 * Self.chunk, &rng))
            #expect(try segmentFiles(f).count == 2)
            // Neither commits: both writers go away (a crash would leave the same bytes).
        }
        #expect(try f.ledger.size == size)
        #expect(throws: LedgerError(.recordNotFound, "")) { try f.records.openBlob(patient: "P", blobId: "lost", as: .patient("P")) }
        #expect(throws: LedgerError(.recordNotFound, "")) { try f.records.openBlob(patient: "P", blobId: "lost-too", as: .patient("P")) }
        let report = try f.records.collectBlobGarbage()
        #expect(report.segmentsScanned == 2)
        #expect(report.segmentsRemoved == 1)  // the second writer's segment held nothing committed
        #expect(report.bytesFreed >= UInt64(38 * Self.chunk))  // whole file-system blocks only
        var back: [UInt8] = []
        try f.records.openBlob(patient: "P", blobId: "kept", as: .patient("P")).stream { back += $0 }
        #expect(back == kept)
        #expect(try f.records.collectBlobGarbage().bytesFreed == 0)
    }

    @Test func accessIsCheckedAndAudited() throws {
        let f = try PatientFixture("blob-access")
        try f.records.addPatient(externalId: "P")
        _ = try putBlob(f, "P", "img", [1, 2, 3, 4], chunkSize: Self.chunk)
        #expect(throws: LedgerError(.accessDenied, "")) { try f.records.openBlob(patient: "P", blobId: "img", as: .grantee("dr")) }
        let key = try Ed25519PrivateKey().publicKey
        try f.records.grant(patient: "P", to: "dr", granteeKey: key, scope: GrantScope(resourceTypes: ["Observation"]),
                            notAfter: Date(timeIntervalSince1970: f.now + 3600))
        #expect(throws: LedgerError(.accessDenied, "")) { try f.records.openBlob(patient: "P", blobId: "img", as: .grantee("dr")) }
        try f.records.grant(patient: "P", to: "dr", granteeKey: key, scope: GrantScope(resourceTypes: ["Binary"]),
                            notAfter: Date(timeIntervalSince1970: f.now + 3600))
        #expect(try f.records.openBlob(patient: "P", blobId: "img", as: .grantee("dr")).read(offset: 0, count: 4) == [1, 2, 3, 4])
        _ = try f.records.openBlob(patient: "P", blobId: "img", as: .grantee("er"), breakGlass: "unconscious")
        let events = try auditEvents(f, "P").filter { $0["action"] as? String == "read-blob" }
        #expect(events.map { $0["outcome"] as? String } == ["refused", "refused", "success", "success"])
        #expect(events.last?["break_glass"] as? Bool == true)
        #expect(events.allSatisfy { $0["version"] as? Int == 1 })
    }

    @Test func erasureMakesBlobsUnreadableAndFreesTheirChunks() throws {
        let f = try PatientFixture("blob-erase")
        try f.records.addPatient(externalId: "P")
        try f.records.addPatient(externalId: "Q")
        var rng = SplitMix64(seed: 19)
        let p = randomBytes(64 * Self.chunk, &rng)
        let q = randomBytes(8 * Self.chunk, &rng)
        _ = try putBlob(f, "P", "img", p, chunkSize: Self.chunk)
        _ = try putBlob(f, "Q", "img", q, chunkSize: Self.chunk)
        let report = try f.records.erase(patient: "P")
        #expect(report.blobVersionsDeleted == 1)
        #expect(report.blobBytesFreed >= UInt64(60 * Self.chunk))
        #expect(throws: LedgerError(.erased, "")) { try f.records.openBlob(patient: "P", blobId: "img", as: .custodian("records-office")) }
        var back: [UInt8] = []
        try f.records.openBlob(patient: "Q", blobId: "img", as: .patient("Q")).stream { back += $0 }
        #expect(back == q)
        // The erased patient's sealed chunks are gone from the files (holes read as zeros).
        let files = try segmentFiles(f)
        let sealed = files.flatMap(\.bytes)
        #expect(sealed.filter { $0 != 0 }.count < 9 * (Self.chunk + 48))
        let verification = try f.ledger.verify(VerificationOptions())
        #expect(verification.isValid, "\(verification.problems)")
        #expect(verification.blobVersions == 1 && verification.blobBytesRehashed == UInt64(q.count + 8 * 48))
    }
}
