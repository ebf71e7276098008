import Foundation
import LedgerCrypto
public import MerkleLog

/// A patient's current records as a FHIR R4 `Bundle` (type `collection`) and the proof bundle
/// that lets anyone holding the ledger's verifier key check it offline.
///
/// The proof bundle (`{"type":"export",...}`, `docs/FORMATS.md`) carries the signed checkpoint
/// and, for each Bundle entry in order: the log entry's bytes, its inclusion proof, the key proof
/// that the record's key maps to that entry at the checkpoint (so it is the latest version),
/// the stored ciphertext, and that one version's record key. A verifier decrypts each
/// ciphertext and compares it with the Bundle's resource, so a changed resource, a dropped
/// newer version or a forged entry fails.
public struct PatientExport: Sendable {
    /// The FHIR R4 Bundle, JSON.
    public let bundle: Data
    /// The proof bundle, JSON.
    public let proof: Data
    /// Largest proof or bundle file ``verify(bundle:proof:verifier:)`` reads.
    public static let maxSize = 256 << 20

    /// Verifies an export offline.
    /// - Returns: the number of records verified.
    /// - Throws: ``MerkleLog/MerkleLogError`` `.verificationFailed` naming the first failure.
    @discardableResult
    public static func verify(bundle: Data, proof: Data, verifier: NoteVerifier) throws -> Int {
        func fail(_ why: String) -> MerkleLogError { MerkleLogError(.verificationFailed, "export: \(why)") }
        // A member named twice could read differently to another verifier: refused. The Bundle
        // holds stored records three levels down (the Bundle, `entry`, the entry).
        // The proof bundle's numbers are sizes and indexes, plain integers only.
        for (name, document, depth, integersOnly) in [("proof bundle", proof, JSONCheck.maxDepth, true),
                                                      ("Bundle", bundle, JSONCheck.maxDepth + 3, false)] {
            do { _ = try JSONCheck.check([UInt8](document), rejectingDuplicates: true, maxDepth: depth, integersOnly: integersOnly) } catch {
                throw fail("the \(name) is not valid JSON with unique member names: \(error)")
            }
        }
        // The proof bundle is decoded into its fields at once: its embedded proofs go to the
        // proof parser as decoded fields, not written out as JSON and read again.
        guard let doc = try? JSONDecoder().decode(ProofBundleWire.self, from: proof), doc.type == "export", doc.v == 1,
              let note = doc.checkpoint, let items = doc.records else {
            throw fail("not an export proof bundle")
        }
        guard let fhir = (try? JSONSerialization.jsonObject(with: bundle)) as? [String: Any], fhir["resourceType"] as? String == "Bundle",
              fhir["type"] as? String == "collection", Set(fhir.keys).isSubset(of: ["entry", "resourceType", "type"]) else {
            throw fail("not a FHIR collection Bundle as exports write it")
        }
        let entries = fhir["entry"] as? [[String: Any]] ?? []
        guard entries.count == items.count else { throw fail("the Bundle has \(entries.count) entries, the proofs \(items.count)") }
        let checkpoint: Checkpoint
        do { checkpoint = try SignedCheckpoint(verifying: note, verifiers: [verifier], origin: verifier.name).checkpoint } catch {
            throw fail("checkpoint signature: \(error)")
        }
        guard doc.tree_size == checkpoint.size else { throw fail("tree_size is not the checkpoint's") }
        // An embedded proof that is not an object, does not parse or does not verify fails the
        // export with the documented error, naming what failed.
        func checked(_ embedded: EmbeddedProof?, _ what: String) throws -> ProofDocument {
            let wire: ProofDocument.Wire
            switch embedded {
            case .fields(let fields)?: wire = fields
            case .undecodable(let error)?: throw fail("\(what): \(ProofDocument.notProofJSON(error).message)")
            case nil, .notObject?: throw fail("\(what) is not an object")
            }
            do {
                let document = try ProofDocument(wire: wire)
                try document.verify(against: checkpoint)
                return document
            } catch let error as LedgerError {
                throw fail("\(what): \(error.message)")
            } catch let error as MerkleLogError {
                throw fail("\(what): \(error.message)")
            }
        }
        for (n, (item, bundleEntry)) in zip(items, entries).enumerated() {
            func bad(_ why: String) -> MerkleLogError { fail("record \(n): \(why)") }
            guard let entryBytes = item.entry.flatMap({ Base64.decode($0) }), item.inclusion != nil, item.key_proof != nil,
                  let box = item.box.flatMap({ Base64.decode($0) }),
                  var recordKeyBytes = item.record_key.flatMap({ Base64.decode($0) }), recordKeyBytes.count == 32 else {
                throw bad("missing or malformed field")
            }
            defer { secureZero(&recordKeyBytes) }
            guard case .inclusion(let inc) = try checked(item.inclusion, "record \(n): inclusion"),
                  case .key(let key) = try checked(item.key_proof, "record \(n): key_proof") else { throw bad("wrong proof types") }
            guard item.entry_index == inc.proof.leafIndex else { throw bad("entry_index is not the proven index") }
            let leafHash = SHA256.leafHash(entryBytes)
            guard inc.leafHash == leafHash else { throw bad("the entry is not the proven leaf") }
            guard let entry = try? LedgerEntry(decoding: entryBytes) else { throw bad("the entry is not a ledger entry") }
            guard entry.operation == .set, entry.key == key.key, key.proof.isInclusion,
                  key.proof.value == Ledger.mapValue(index: inc.proof.leafIndex, leafHash: leafHash) else {
                throw bad("the key map does not point the record at this entry (not the latest version)")
            }
            guard let payload = PatientPayload.decode(entry.payload), payload["type"] as? String == "record",
                  let patient = payload["patient"] as? String, let record = payload["record"] as? String,
                  let version = JSONValue.integer(payload["version"], as: UInt32.self), version > 0,
                  let boxHash = payload["ciphertext_hash"] as? String, JSONValue.integer(payload["v"], as: Int.self) == 1,
                  entry.key == "record/\(patient)/\(record)" else { throw bad("the entry is not a record entry") }
            guard SHA256.hash(box).hex == boxHash else { throw bad("the ciphertext is not the one the entry commits to") }
            let recordKey = recordKeyBytes.withUnsafeBytes { SecureBytes(copying: $0) }
            guard var plaintext = try? AESGCM.open(box, key: recordKey, associatedData: PatientRecords.recordAAD(
                patient: patient, record: record, version: version)) else { throw bad("the ciphertext does not open with the record key") }
            defer { secureZero(&plaintext) }
            guard let parts = RecordPlaintext.decode(plaintext), let resource = bundleEntry["resource"] as? [String: Any],
                  Set(bundleEntry.keys) == ["fullUrl", "resource"] else {
                throw bad("malformed record or Bundle entry")
            }
            guard bundleEntry["fullUrl"] as? String == "urn:medledger:record:\(record):\(version)" else {
                throw bad("the Bundle entry's fullUrl does not name this record version")
            }
            guard let expected = resourceObject(mediaType: parts.mediaType, content: parts.content),
                  sameJSON(expected, resource) else {
                throw bad("the Bundle's resource differs from the committed record")
            }
        }
        return items.count
    }

    /// Whether two values JSONSerialization parsed are the same JSON: objects with the same
    /// members (in any order), arrays element by element, strings by their Unicode scalars,
    /// numbers by value as Foundation compares them (through `Double` where one is not an
    /// integer), booleans and null by themselves (a boolean is never a number).
    /// Walked here rather than compared as `NSDictionary`, which cost more than the rest of a
    /// record's verification and, on Linux, found `true` unequal to `true` and `0` equal to
    /// `false`.
    static func sameJSON(_ a: Any, _ b: Any) -> Bool {
        // Strings and member names compare by their Unicode scalars: Swift's `==` would take
        // a re-normalized spelling (NFC against NFD) for the stored one.
        if let a = a as? String { return (b as? String).map { $0.unicodeScalars.elementsEqual(a.unicodeScalars) } ?? false }
        if let a = a as? [String: Any] {
            guard let b = b as? [String: Any], a.count == b.count else { return false }
            var members: [[Unicode.Scalar]: Any] = [:]
            for (key, value) in b { members[Array(key.unicodeScalars)] = value }
            guard members.count == b.count else { return false }
            return a.allSatisfy { key, value in members[Array(key.unicodeScalars)].map { sameJSON(value, $0) } ?? false }
        }
        if let a = a as? [Any] {
            guard let b = b as? [Any], a.count == b.count else { return false }
            return zip(a, b).allSatisfy { sameJSON($0, $1) }
        }
        if a is NSNull || b is NSNull { return a is NSNull && b is NSNull }
        guard let x = a as? NSNumber, let y = b as? NSNumber else { return false }
        let booleans = (JSONValue.isBoolean(x), JSONValue.isBoolean(y))
        guard booleans.0 == booleans.1 else { return false }
        return booleans.0 ? x.boolValue == y.boolValue : sameNumber(x, y)
    }

    /// Whether two parsed JSON numbers have the same exact value. Foundation's `isEqual`
    /// compares an integer with a decimal through `Double`, so it took 9007199254740993 for
    /// 9007199254740992.0; here integers compare as integers, a decimal (what the parser gives
    /// for a long fraction or exponent) as a `Decimal`, and a double equals an integer or a
    /// decimal only when it is exactly that value.
    static func sameNumber(_ x: NSNumber, _ y: NSNumber) -> Bool {
        enum Exact { case integer(negative: Bool, magnitude: UInt64), decimal(Decimal), double(Double) }
        func exact(_ n: NSNumber) -> Exact {
            if n is NSDecimalNumber { return .decimal(n.decimalValue) }
            if let u = JSONValue.integer(n, as: UInt64.self) { return .integer(negative: false, magnitude: u) }
            if let i = JSONValue.integer(n, as: Int64.self) { return .integer(negative: i < 0, magnitude: i.magnitude) }
            return .double(n.doubleValue)
        }
        func decimal(_ negative: Bool, _ magnitude: UInt64) -> Decimal {
            let d = Decimal(magnitude)
            return negative ? -d : d
        }
        switch (exact(x), exact(y)) {
        case let (.integer(n1, m1), .integer(n2, m2)): return m1 == m2 && (n1 == n2 || m1 == 0)
        case let (.decimal(d1), .decimal(d2)): return d1 == d2
        case let (.double(d1), .double(d2)): return d1 == d2
        case let (.integer(n, m), .decimal(d)), let (.decimal(d), .integer(n, m)): return decimal(n, m) == d
        case let (.integer(n, m), .double(d)), let (.double(d), .integer(n, m)):
            guard d.isFinite, d.rounded(.towardZero) == d, (d < 0) == (n && m != 0) || d == 0 else { return false }
            return UInt64(exactly: d.magnitude) == m
        case let (.decimal(dec), .double(d)), let (.double(d), .decimal(dec)):
            // A double's shortest spelling is the text that parses back to it.
            return d.isFinite && Decimal(string: "\(d)") == dec
        }
    }

    /// A proof bundle's fields. Each is optional and a member of the wrong type reads as
    /// absent, so that what is missing or malformed is reported by name.
    private struct ProofBundleWire: Decodable {
        let type: String?, v: Int?, checkpoint: String?, tree_size: UInt64?
        let records: [RecordWire]?

        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            type = try? c.decodeIfPresent(String.self, forKey: .type)
            v = try? c.decodeIfPresent(Int.self, forKey: .v)
            checkpoint = try? c.decodeIfPresent(String.self, forKey: .checkpoint)
            tree_size = try? c.decodeIfPresent(UInt64.self, forKey: .tree_size)
            records = try? c.decodeIfPresent([RecordWire].self, forKey: .records)
        }
        private enum CodingKeys: String, CodingKey { case type, v, checkpoint, tree_size, records }
    }

    /// One record's proofs in a proof bundle (an item that is not an object fails the bundle).
    private struct RecordWire: Decodable {
        let box: String?, entry: String?, entry_index: UInt64?, record_key: String?
        let inclusion: EmbeddedProof?, key_proof: EmbeddedProof?

        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            box = try? c.decodeIfPresent(String.self, forKey: .box)
            entry = try? c.decodeIfPresent(String.self, forKey: .entry)
            entry_index = try? c.decodeIfPresent(UInt64.self, forKey: .entry_index)
            record_key = try? c.decodeIfPresent(String.self, forKey: .record_key)
            inclusion = try c.decodeIfPresent(EmbeddedProof.self, forKey: .inclusion)
            key_proof = try c.decodeIfPresent(EmbeddedProof.self, forKey: .key_proof)
        }
        private enum CodingKeys: String, CodingKey { case box, entry, entry_index, record_key, inclusion, key_proof }
    }

    /// An embedded proof: its fields as a proof document's, or why they are not.
    private enum EmbeddedProof: Decodable {
        case fields(ProofDocument.Wire)
        case notObject
        case undecodable(any Error)

        init(from decoder: any Decoder) throws {
            guard (try? decoder.container(keyedBy: ProbeKey.self)) != nil else {
                self = .notObject
                return
            }
            do { self = .fields(try ProofDocument.Wire(from: decoder)) } catch { self = .undecodable(error) }
        }
        private struct ProbeKey: CodingKey {
            var stringValue: String
            var intValue: Int? { nil }
            init?(stringValue: String) { self.stringValue = stringValue }
            init?(intValue: Int) { nil }
        }
    }

    /// Writes the Bundle resource of a record: its FHIR JSON as stored (a put checked it is an
    /// object), or a FHIR `Binary`. Stored JSON with a member named twice, which a put allows
    /// but an export's verifier refuses, is written as parsed instead (the last value wins).
    /// - Throws: ``LedgerError`` `.storage` for FHIR JSON the verifier's parser cannot read
    ///   (the export would not verify).
    static func writeResource(mediaType: String, content: [UInt8], into out: inout [UInt8]) throws {
        if PatientRecords.isFHIR(mediaType) {
            guard let object = resourceObject(mediaType: mediaType, content: content) else {
                throw LedgerError(.storage, "a stored FHIR record no longer parses")
            }
            if (try? JSONCheck.check(content, rejectingDuplicates: true)) != nil {
                out += content
            } else {
                out += try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
            }
            return
        }
        out += Array(#"{"contentType":"#.utf8)
        PatientPayload.writeString(mediaType, into: &out)
        out += Array(#","data":""#.utf8) + Array(Base64.encode(content).utf8) + Array(#"","resourceType":"Binary"}"#.utf8)
    }

    /// The Bundle resource for a record: the FHIR JSON itself, or a FHIR `Binary`.
    static func resourceObject(mediaType: String, content: [UInt8]) -> [String: Any]? {
        if PatientRecords.isFHIR(mediaType) { return (try? JSONSerialization.jsonObject(with: Data(content))) as? [String: Any] }
        return ["resourceType": "Binary", "contentType": mediaType, "data": Base64.encode(content)]
    }
}

extension PatientRecords {
    /// Exports the latest version of every record `accessor` may read (the patient, the
    /// custodian, or a grantee within its scope) with proofs; audited as one `list` event and a
    /// `read` event per record. Writes wait while it runs, so the proofs match the records.
    public func export(patient: String, as accessor: Accessor, purpose: String = "patient-request") throws -> PatientExport {
        writeLock.lock()
        defer { writeLock.unlock() }
        let p = try pseudonym(of: patient)
        // The list event and a read event per record, committed together after the batch
        // read, before anything is returned (a refused or failed listing commits its own).
        let (listRow, listOutcome) = try unauditedListing(p: p, r: nil, action: "list", accessor: accessor, purpose: purpose, latestOnly: true)
        let listed: [RecordVersionInfo]
        switch listOutcome {
        case .success(let records): listed = records
        case .failure(let refusal):
            try auditCommitter.record([listRow])
            throw refusal
        }
        let (note, checkpoint): (String, Checkpoint)
        let read: [Result<RecordContent, LedgerError>]
        do {
            (note, checkpoint) = try ledger.signedCheckpointAndState()
            read = try readRecords(listed.map { ReadRequest(patient: patient, recordId: $0.recordId, version: $0.version) },
                                   as: accessor, purpose: purpose, breakGlass: nil, auditingFirst: [listRow])
        } catch {
            // Nothing was read, or the reads' commit failed: the listing is recorded alone.
            _ = try? auditCommitter.record([listRow])
            throw error
        }
        let contents = try read.map { try $0.get() }
        // Both documents are written by hand, keys sorted (Foundation's writer bridged every
        // value and escaped strings byte by byte: 80% of an export's time).
        var bundle: [UInt8] = [], proof: [UInt8] = []
        func text(_ s: String, _ out: inout [UInt8]) { out += Array(s.utf8) }
        text(#"{"entry":["#, &bundle)
        text(#"{"checkpoint":"#, &proof)
        PatientPayload.writeString(note, into: &proof)
        text(#","records":["#, &proof)
        var dataKeys: [UInt32: SecureBytes] = [:]  // by key epoch, unwrapped once each
        for (n, (info, content)) in zip(listed, contents).enumerated() {
            let r = try recordHash(p, info.recordId)
            let (entryBytes, leafHash) = try ledger.rawEntry(at: content.index)
            let (inclusion, _, root) = try ledger.inclusionProof(index: content.index, size: checkpoint.size)
            let key = PatientPayload.recordKey(p, r)
            let (keyProof, mapRoot, size) = try ledger.keyProof(key: key, size: checkpoint.size)
            let (epoch, box) = try storedBox(p, r, content.version)
            let epochKey = try dataKeys[epoch] ?? dataKey(p, epoch: epoch)
            dataKeys[epoch] = epochKey
            let recordKey = try Self.recordKey(dataKey: epochKey, patient: p.hex, record: r.hex, version: content.version)
            if n > 0 {
                text(",", &bundle)
                text(",", &proof)
            }
            text(#"{"fullUrl":"urn:medledger:record:\#(r.hex):\#(content.version)","resource":"#, &bundle)
            try PatientExport.writeResource(mediaType: content.mediaType, content: content.content, into: &bundle)
            text("}", &bundle)
            text(#"{"box":""# + Base64.encode(box) + #"","entry":""# + Base64.encode(entryBytes)
                 + #"","entry_index":\#(content.index),"inclusion":"#, &proof)
            proof += try ProofDocument.inclusion(.init(proof: inclusion, leafHash: leafHash, rootHash: root)).jsonData()
            text(#","key_proof":"#, &proof)
            proof += try ProofDocument.key(.init(key: key, treeSize: size, mapRoot: mapRoot, proof: keyProof)).jsonData()
            text(#","record_key":""# + recordKey.withUnsafeBytes { Base64.encode($0) } + #""}"#, &proof)
        }
        text(#"],"resourceType":"Bundle","type":"collection"}"#, &bundle)
        text(#"],"tree_size":\#(checkpoint.size),"type":"export","v":1}"#, &proof)
        return PatientExport(bundle: Data(bundle), proof: Data(proof))
    }
}
