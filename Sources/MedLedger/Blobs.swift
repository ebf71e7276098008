import Foundation
import LMDBKit
public import LedgerCrypto
import MerkleLog
#if canImport(Glibc)
import Glibc
#endif

/// A committed version of a blob: what its manifest entry says.
public struct BlobInfo: Sendable, Hashable {
    /// The blob's id as the caller named it (the log holds only its keyed hash).
    public let blobId: String
    /// The keyed hash of the id (`b`), as the log names the blob.
    public let blobHash: Hash
    public let version: UInt32
    /// The log index of the manifest entry.
    public let index: UInt64
    /// Plaintext bytes.
    public let size: UInt64
    /// Plaintext bytes per chunk (the last chunk may be shorter).
    public let chunkSize: Int
    public let chunkCount: Int
    /// RFC 6962 root over the sealed chunks' leaf hashes.
    public let root: Hash
    public let mediaType: String
}

/// A `pl.blobs` row (`docs/FORMATS.md`): where a blob version's chunks lie and their hashes.
/// `u64 index || u32 key epoch || u64 segment || u64 offset || u64 size || u32 chunk size ||
/// 16-byte salt || chunk leaf hashes (32 each)`.
struct BlobRow {
    static let headerSize = 56
    var index: UInt64
    var epoch: UInt32
    var segment: UInt64
    var offset: UInt64
    var size: UInt64
    var chunkSize: UInt32
    var salt: [UInt8]
    var leaves: [Hash]

    var chunkCount: Int { leaves.count }
    /// Bytes the sealed chunks take in the segment.
    var storedLength: UInt64 { size + UInt64(leaves.count * BlobCrypto.overhead) }
    /// Stored bytes of chunk `i` (its plaintext length plus the key commitment and tag).
    func sealedLength(_ i: Int) -> Int {
        Int(min(UInt64(chunkSize), size - UInt64(i) * UInt64(chunkSize))) + BlobCrypto.overhead
    }
    /// Where chunk `i` starts in its segment.
    func sealedOffset(_ i: Int) -> UInt64 { offset + UInt64(i) * UInt64(Int(chunkSize) + BlobCrypto.overhead) }
    var extent: BlobExtent { BlobExtent(segment: segment, offset: offset, length: storedLength) }

    static func chunkCount(size: UInt64, chunkSize: UInt32) -> Int {
        // Without overflow for any size a damaged row or entry may state.
        let c = UInt64(chunkSize)
        return Int(clamping: size / c + (size % c == 0 ? 0 : 1))
    }

    func encoded() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(Self.headerSize + 32 * leaves.count)
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.bigEndian) { out += $0 } }
        put(index); put(epoch); put(segment); put(offset); put(size); put(chunkSize)
        out += salt
        for leaf in leaves { leaf.withUnsafeBytes { out += $0 } }
        return out
    }

    init(index: UInt64, epoch: UInt32, segment: UInt64, offset: UInt64, size: UInt64, chunkSize: UInt32, salt: [UInt8], leaves: [Hash]) {
        (self.index, self.epoch, self.segment, self.offset, self.size, self.chunkSize, self.salt, self.leaves) =
            (index, epoch, segment, offset, size, chunkSize, salt, leaves)
    }

    init?(decoding b: UnsafeRawBufferPointer) {
        guard b.count >= Self.headerSize, (b.count - Self.headerSize) % 32 == 0 else { return nil }
        func u64(_ at: Int) -> UInt64 { UInt64(bigEndian: b.loadUnaligned(fromByteOffset: at, as: UInt64.self)) }
        func u32(_ at: Int) -> UInt32 { UInt32(bigEndian: b.loadUnaligned(fromByteOffset: at, as: UInt32.self)) }
        index = u64(0); epoch = u32(8); segment = u64(12); offset = u64(20); size = u64(28); chunkSize = u32(36)
        salt = Array(b[40..<56])
        leaves = stride(from: Self.headerSize, to: b.count, by: 32).map { Hash(UnsafeRawBufferPointer(rebasing: b[$0..<($0 + 32)]))! }
        guard chunkSize > 0, leaves.count == Self.chunkCount(size: size, chunkSize: chunkSize) else { return nil }
    }
}

/// Keys and associated data of blob chunks (`docs/FORMATS.md`, blob encryption).
enum BlobCrypto {
    static let zeroNonce = [UInt8](repeating: 0, count: AESGCM.nonceByteCount)
    /// Bytes a stored chunk adds to its plaintext: the key commitment and the GCM tag.
    static let overhead = 32 + AESGCM.tagByteCount

    /// SHA-256("medledger-blob-key-commit/1" || K_i): stored before each sealed chunk and
    /// covered by its leaf hash, so a chunk opens under exactly one key. AES-GCM alone does not
    /// bind a ciphertext to a key: whoever holds the data key could craft a box that opens
    /// to different bytes under two chunk keys and hand different verifiers different keys.
    static func keyCommitment(_ key: SecureBytes) -> Hash {
        var input = Array("medledger-blob-key-commit/1".utf8)
        key.withUnsafeBytes { input += $0 }
        defer { secureZero(&input) }
        return SHA256.hash(input)
    }

    /// K_blob = HMAC-SHA-256(D_e, "medledger-blob-key/1|p|b|v|salt"): the random salt makes
    /// every upload's keys new, so a retried upload of the same version never reuses a key.
    static func blobKey(dataKey: SecureBytes, p: Hash, b: Hash, version: UInt32, salt: [UInt8]) throws -> HMACSHA256.Key {
        var derived = try HMACSHA256.authenticationCode(
            for: Array("medledger-blob-key/1|\(p.hex)|\(b.hex)|\(version)|\(Hex.encode(salt))".utf8), key: dataKey)
        defer { secureZero(&derived) }
        return try HMACSHA256.Key(derived.withUnsafeBytes { SecureBytes(copying: $0) })
    }

    /// K_i = HMAC-SHA-256(K_blob, "medledger-blob-chunk/1|i"): used for chunk i alone, so the
    /// all-zero nonce never repeats under a key, and a range proof can hand out the keys of
    /// its chunks without opening the others.
    static func chunkKey(_ blobKey: HMACSHA256.Key, _ index: Int) -> SecureBytes {
        blobKey.authenticationCode(utf8: "medledger-blob-chunk/1|\(index)").withUnsafeBytes { SecureBytes(copying: $0) }
    }

    static func chunkAAD(p: String, b: String, version: UInt32, index: Int) -> [UInt8] {
        Array("medledger-blob/1|\(p)|\(b)|\(version)|\(index)".utf8)
    }
}

extension PatientPayload {
    static func blobKey(_ p: Hash, _ b: Hash) -> String { "blob/\(p.hex)/\(b.hex)" }
}

/// A blob's access facts as the log's manifest entry states them.
struct BlobManifest {
    let p: Hash, b: Hash, version: UInt32, size: UInt64, chunkSize: UInt32, chunks: Int, root: Hash, mediaType: String, epoch: UInt32

    var payload: [String: Any] {
        ["type": "blob", "v": 1, "patient": p.hex, "blob": b.hex, "version": Int(version), "size": size,
         "chunk_size": Int(chunkSize), "chunks": chunks, "root": root.hex, "media_type": mediaType, "key_epoch": Int(epoch)]
    }

    init(p: Hash, b: Hash, version: UInt32, size: UInt64, chunkSize: UInt32, chunks: Int, root: Hash, mediaType: String, epoch: UInt32) {
        (self.p, self.b, self.version, self.size, self.chunkSize, self.chunks, self.root, self.mediaType, self.epoch) =
            (p, b, version, size, chunkSize, chunks, root, mediaType, epoch)
    }

    /// Parses a manifest entry strictly; nil for anything else.
    init?(entry: LedgerEntry) {
        guard entry.operation == .set, let o = PatientPayload.decode(entry.payload), o["type"] as? String == "blob", JSONValue.integer(o["v"], as: Int.self) == 1,
              let p = (o["patient"] as? String).flatMap({ Hash(hex: $0) }), let b = (o["blob"] as? String).flatMap({ Hash(hex: $0) }),
              let version = JSONValue.integer(o["version"], as: UInt32.self), version > 0,
              let size = JSONValue.integer(o["size"], as: UInt64.self), let chunkSize = JSONValue.integer(o["chunk_size"], as: UInt32.self), chunkSize > 0,
              let chunks = JSONValue.integer(o["chunks"], as: Int.self), let root = (o["root"] as? String).flatMap({ Hash(hex: $0) }),
              let mediaType = o["media_type"] as? String, let epoch = JSONValue.integer(o["key_epoch"], as: UInt32.self),
              chunks == BlobRow.chunkCount(size: size, chunkSize: chunkSize), entry.key == PatientPayload.blobKey(p, b) else { return nil }
        self.init(p: p, b: b, version: version, size: size, chunkSize: chunkSize, chunks: chunks, root: root, mediaType: mediaType, epoch: epoch)
    }
}

// MARK: - Writing

extension PatientRecords {
    /// Chunk size new blobs use unless told otherwise (`docs/DESIGN.md` explains the choice).
    public static let defaultBlobChunkSize = 256 << 10
    /// Smallest and largest chunk sizes accepted.
    public static let blobChunkSizes = (1 << 12)...(16 << 20)

    /// A writer for one or more blobs: chunks stream into a segment file as they come; the
    /// blobs become visible together at ``BlobWriter/commit()``.
    public func blobWriter(chunkSize: Int = PatientRecords.defaultBlobChunkSize) throws -> BlobWriter {
        guard Self.blobChunkSizes.contains(chunkSize) else {
            throw LedgerError(.invalidArgument, "chunk size must be \(Self.blobChunkSizes.lowerBound) to \(Self.blobChunkSizes.upperBound) bytes")
        }
        guard blobs != nil else { throw LedgerError(.invalidArgument, "the ledger is open read-only") }
        return BlobWriter(records: self, chunkSize: chunkSize)
    }

    /// Stores a blob read from `fileDescriptor` (a file or a pipe) until end of file, in one
    /// commit; never holds more than one chunk in memory.
    @discardableResult
    public func putBlob(patient: String, blobId: String, mediaType: String = "application/octet-stream",
                        fileDescriptor: Int32, chunkSize: Int = PatientRecords.defaultBlobChunkSize) throws -> BlobInfo {
        let writer = try blobWriter(chunkSize: chunkSize)
        let upload = try writer.begin(patient: patient, blobId: blobId, mediaType: mediaType)
        try upload.write(fromFileDescriptor: fileDescriptor)
        try upload.finish()
        return try writer.commit()[0]
    }

    /// Stores a blob from a file.
    @discardableResult
    public func putBlob(patient: String, blobId: String, mediaType: String = "application/octet-stream",
                        contentsOfFile path: String, chunkSize: Int = PatientRecords.defaultBlobChunkSize) throws -> BlobInfo {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw LedgerError(.invalidArgument, "cannot read \(path)") }
        defer { close(fd) }
        return try putBlob(patient: patient, blobId: blobId, mediaType: mediaType, fileDescriptor: fd, chunkSize: chunkSize)
    }

    /// Stores a blob from an asynchronous sequence of byte buffers (a network body, say).
    @discardableResult
    public func putBlob<S: AsyncSequence>(patient: String, blobId: String, mediaType: String = "application/octet-stream",
                                          from pieces: S, chunkSize: Int = PatientRecords.defaultBlobChunkSize) async throws -> BlobInfo
    where S.Element: Collection<UInt8> {
        let writer = try blobWriter(chunkSize: chunkSize)
        let upload = try writer.begin(patient: patient, blobId: blobId, mediaType: mediaType)
        for try await piece in pieces {
            var copy = Array(piece)
            defer { secureZero(&copy) }
            try upload.write(copy)
        }
        try upload.finish()
        return try writer.commit()[0]
    }

    /// The newest version of blob `b` in `view` (0 when none).
    func lastBlobVersion(_ view: TransactionView, _ p: Hash, _ b: Hash) throws -> UInt32 {
        guard let blobs else { return 0 }
        return try Self.lastVersion(view, in: blobs, p, b)
    }

    static func blobStorageKey(_ p: Hash, _ b: Hash, _ version: UInt32) -> [UInt8] {
        p.bytes + b.bytes + withUnsafeBytes(of: version.bigEndian) { Array($0) }
    }

    // MARK: Erasure and garbage

    /// Deletes every `pl.blobs` row of patient `p` inside an erasure's transaction; returns
    /// the extents to free once it committed.
    func deleteBlobRows(_ view: TransactionView, _ p: Hash) throws -> [BlobExtent] {
        guard let blobs else { return [] }
        var rows: [([UInt8], BlobExtent)] = []
        try view.withCursor(blobs) { cursor in
            var more = try cursor.seek(atOrAfter: p.bytes)
            while more {
                guard let row = try cursor.withCurrent({ key, value -> ([UInt8], BlobExtent)? in
                    guard key.starts(with: p.bytes) else { return nil }
                    guard let decoded = BlobRow(decoding: value) else { throw LedgerError(.storage, "unreadable pl.blobs row") }
                    return (Array(key), decoded.extent)
                }) else { break }
                rows.append(row)
                more = try cursor.next()
            }
        }
        for (key, _) in rows { _ = try view.delete(blobs, key: key) }
        return rows.map(\.1)
    }

    /// Punches holes where `extents` lay. The chunks are unreadable already (their key is
    /// gone); this gives the space back. Returns the bytes the segments no longer occupy.
    func freeExtents(_ extents: [BlobExtent]) -> UInt64 {
        var freed: UInt64 = 0
        let dir = SegmentFile.directory(ledger.path)
        for (segment, group) in Dictionary(grouping: extents, by: \.segment) {
            let fd = open(dir + "/" + SegmentFile.fileName(segment), O_RDWR | O_CLOEXEC)
            guard fd >= 0 else { continue }
            defer { close(fd) }
            let before = SegmentFile.allocatedBytes(fd: fd)
            for extent in group { SegmentFile.punchHole(fd: fd, offset: extent.offset, length: extent.length) }
            fsync(fd)
            freed += before - min(before, SegmentFile.allocatedBytes(fd: fd))
        }
        return freed
    }

    /// What ``collectBlobGarbage()`` did.
    public struct BlobGarbageReport: Sendable {
        /// Segment files examined (those a writer holds are skipped).
        public let segmentsScanned: Int
        /// Segment files deleted because no committed blob uses them.
        public let segmentsRemoved: Int
        /// Bytes of disk space given back.
        public let bytesFreed: UInt64
    }

    /// Frees what interrupted or failed uploads left in segment files (bytes no committed
    /// blob refers to) and removes segments nothing refers to. Safe while other processes
    /// write: segments a writer holds are skipped.
    public func collectBlobGarbage() throws -> BlobGarbageReport {
        guard let blobs else { throw LedgerError(.invalidArgument, "the ledger is open read-only") }
        let dir = SegmentFile.directory(ledger.path)
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted()
        var scanned = 0, removed = 0
        var freed: UInt64 = 0
        for name in names {
            guard let segment = SegmentFile.id(ofFileName: name) else { continue }
            let path = dir + "/" + name
            let fd = open(path, O_RDWR | O_CLOEXEC)
            guard fd >= 0 else { continue }
            defer { close(fd) }
            guard flock(fd, LOCK_EX | LOCK_NB) == 0 else { continue }  // a writer is appending
            scanned += 1
            // Read the references only now: every blob written to this segment has committed.
            let extents = try Ledger.storage {
                try ledger.environment.read { txn in
                    var found: [BlobExtent] = []
                    try txn.withCursor(blobs) { cursor in
                        var more = try cursor.first()
                        while more {
                            // A row that does not decode might reference this segment: stop
                            // rather than free bytes a committed blob may use.
                            guard let row = cursor.withCurrent({ _, value in BlobRow(decoding: value) }) else {
                                throw LedgerError(.storage, "unreadable pl.blobs row: run medledger verify; nothing was freed")
                            }
                            if row.segment == segment { found.append(row.extent) }
                            more = try cursor.next()
                        }
                    }
                    return found.sorted { $0.offset < $1.offset }
                }
            }
            var info = stat()
            guard fstat(fd, &info) == 0 else { continue }
            let before = UInt64(info.st_blocks) * 512
            if extents.isEmpty {
                guard unlink(path) == 0 else { continue }
                removed += 1
                freed += before
                continue
            }
            var at: UInt64 = 0
            for extent in extents {
                if extent.offset > at { SegmentFile.punchHole(fd: fd, offset: at, length: extent.offset - at) }
                at = max(at, extent.offset + extent.length)
            }
            if UInt64(info.st_size) > at { SegmentFile.punchHole(fd: fd, offset: at, length: UInt64(info.st_size) - at) }
            fsync(fd)
            freed += before - min(before, SegmentFile.allocatedBytes(fd: fd))
        }
        if removed > 0 { try? SegmentFile.syncDirectory(dir) }
        return BlobGarbageReport(segmentsScanned: scanned, segmentsRemoved: removed, bytesFreed: freed)
    }
}

/// Writes blobs into a segment file and commits their manifests together.
///
/// For example:
/// ```swift
/// let writer = try records.blobWriter()
/// let upload = try writer.begin(patient: "Patient/123", blobId: "ct-1", mediaType: "application/dicom")
/// try upload.write(fromFileDescriptor: fd)
/// try upload.finish()
/// let infos = try writer.commit()   // fdatasync, then one log commit for every finished upload
/// ```
///
/// Nothing is visible before ``commit()``; an interrupted writer leaves bytes in the segment
/// that no entry references (``PatientRecords/collectBlobGarbage()`` frees them). Not for use
/// from several threads at once.
public final class BlobWriter {
    let records: PatientRecords
    let chunkSize: Int
    var segment: SegmentFile?
    var pending: [BlobUpload] = []
    /// The upload being written (one at a time: chunks of one blob are contiguous).
    weak var active: BlobUpload?
    /// The batch buffers every upload of this writer fills: plaintext of a few chunks (at
    /// least 2 MiB, so both cores seal at once) and their sealed boxes.
    let plain: UnsafeMutableRawBufferPointer
    let sealed: UnsafeMutableRawBufferPointer

    init(records: PatientRecords, chunkSize: Int) {
        self.records = records
        self.chunkSize = chunkSize
        let chunks = max(2, (2 << 20) / chunkSize)
        plain = .allocate(byteCount: chunks * chunkSize, alignment: 64)
        sealed = .allocate(byteCount: chunks * (chunkSize + BlobCrypto.overhead), alignment: 64)
    }

    deinit {
        plain.initializeMemory(as: UInt8.self, repeating: 0)
        plain.deallocate()
        sealed.deallocate()
    }

    /// Finished uploads waiting for ``commit()``.
    public var pendingCount: Int { pending.count }
    /// Plaintext bytes of the finished uploads waiting for ``commit()``.
    public var pendingBytes: UInt64 { pending.reduce(0) { $0 + $1.size } }

    /// Starts a blob: the next version of `blobId` for `patient`.
    /// - Throws: ``LedgerError`` `.patientNotFound`, `.erased`, `.invalidArgument`.
    public func begin(patient: String, blobId: String, mediaType: String = "application/octet-stream") throws -> BlobUpload {
        guard active == nil else { throw LedgerError(.invalidArgument, "finish the current upload before starting another") }
        guard !blobId.isEmpty, blobId.utf8.count <= 256, !blobId.unicodeScalars.contains(where: { $0.value < 0x20 }) else {
            throw LedgerError(.invalidArgument, "blob id must be 1 to 256 bytes without control characters")
        }
        guard !mediaType.isEmpty, mediaType.utf8.count <= 255, !mediaType.unicodeScalars.contains(where: { $0.value < 0x20 }) else {
            throw LedgerError(.invalidArgument, "media type must be 1 to 255 bytes without control characters")
        }
        let p = try records.pseudonym(of: patient)
        let b = try records.recordHash(p, blobId)
        let (state, last) = try Ledger.storage {
            try records.ledger.environment.read { txn in
                (try records.requirePatient(txn.unsafeView, p), try records.lastBlobVersion(txn.unsafeView, p, b))
            }
        }
        let queued = pending.filter { $0.p == p && $0.b == b }.map(\.version).max() ?? 0
        let previous = max(last, queued)
        guard previous < UInt32.max else { throw LedgerError(.invalidArgument, "blob has too many versions") }
        let dataKey = try records.unwrap(state, p)
        if segment == nil { segment = try SegmentFile.acquire(ledgerPath: records.ledger.path) }
        let upload = try BlobUpload(writer: self, blobId: blobId, p: p, b: b, version: previous + 1, epoch: state.epoch,
                                    dataKey: dataKey, mediaType: mediaType, segment: segment!)
        active = upload
        return upload
    }

    /// Makes the finished uploads durable and visible: syncs the segment, then appends one
    /// manifest entry per blob in one log commit.
    /// - Throws: ``LedgerError`` `.conflict` when another writer stored the same blob version
    ///   or the patient changed meanwhile, `.storage`. On any failure nothing is committed and
    ///   the finished uploads are dropped (their versions and keys are spent): upload them again.
    @discardableResult
    public func commit() throws -> [BlobInfo] {
        guard active == nil else { throw LedgerError(.invalidArgument, "finish the current upload before committing") }
        let uploads = pending
        pending.removeAll()
        guard !uploads.isEmpty, let segment else { return [] }
        try segment.sync()
        var entries: [LedgerEntry] = []
        var manifests: [BlobManifest] = []
        for upload in uploads {
            let manifest = BlobManifest(p: upload.p, b: upload.b, version: upload.version, size: upload.size, chunkSize: UInt32(chunkSize),
                                        chunks: upload.leaves.count, root: ChunkTree(leaves: upload.leaves).root,
                                        mediaType: upload.mediaType, epoch: upload.epoch)
            manifests.append(manifest)
            entries.append(try LedgerEntry(set: PatientPayload.blobKey(upload.p, upload.b), payload: PatientPayload.encode(manifest.payload)))
        }
        guard let blobs = records.blobs else { throw LedgerError(.invalidArgument, "the ledger is open read-only") }
        records.writeLock.lock()
        defer { records.writeLock.unlock() }
        let first = try records.ledger.append(entries) { view, first in
            var checked = Set<[UInt8]>()
            for (i, upload) in uploads.enumerated() {
                let slot = upload.p.bytes + upload.b.bytes
                if checked.insert(slot).inserted {
                    guard let state = try self.records.patientState(view, upload.p), state.status == .active, state.epoch == upload.epoch,
                          try self.records.lastBlobVersion(view, upload.p, upload.b) == upload.version - 1 else {
                        throw LedgerError(.conflict, "the blob or its patient changed during the upload; retry")
                    }
                }
                let row = BlobRow(index: first + UInt64(i), epoch: upload.epoch, segment: segment.id, offset: upload.start,
                                  size: upload.size, chunkSize: UInt32(self.chunkSize), salt: upload.salt, leaves: upload.leaves)
                try view.put(blobs, key: PatientRecords.blobStorageKey(upload.p, upload.b, upload.version), value: row.encoded())
            }
        }
        return uploads.enumerated().map { i, upload in
            BlobInfo(blobId: upload.blobId, blobHash: upload.b, version: upload.version, index: first + UInt64(i), size: upload.size,
                     chunkSize: chunkSize, chunkCount: upload.leaves.count, root: manifests[i].root, mediaType: upload.mediaType)
        }
    }

    /// Abandons the upload being written, keeping finished ones for ``commit()``; the bytes it
    /// wrote stay as garbage until collected.
    public func abandonCurrent() {
        active?.abandon()
        active = nil
    }

    /// Drops finished uploads that were not committed and releases the segment; their bytes
    /// stay as garbage until collected.
    public func cancel() {
        pending.removeAll()
        active?.abandon()
        segment = nil
    }
}

/// One blob being written: feed it bytes with ``write(_:)-(UnsafeRawBufferPointer)`` or
/// ``write(fromFileDescriptor:)``, then ``finish()``. Plaintext gathers in the writer's batch
/// buffer (a few chunks); each full batch is sealed and hashed on all cores, appended to the
/// segment, and its writeback started. The batch buffers are the writer's, reused by every
/// upload and wiped when the writer goes away.
public final class BlobUpload {
    let blobId: String
    let p: Hash
    let b: Hash
    let version: UInt32
    let epoch: UInt32
    let mediaType: String
    let salt: [UInt8]
    let start: UInt64
    private let blobKey: HMACSHA256.Key
    private weak var writer: BlobWriter?
    private let segment: SegmentFile
    private let chunkSize: Int
    private let plain: UnsafeMutableRawBufferPointer
    private let sealed: UnsafeMutableRawBufferPointer
    private var filled = 0
    private(set) var leaves: [Hash] = []
    /// Plaintext bytes written so far.
    public private(set) var size: UInt64 = 0
    private var state = State.writing

    private enum State { case writing, finished, abandoned }

    init(writer: BlobWriter, blobId: String, p: Hash, b: Hash, version: UInt32, epoch: UInt32, dataKey: SecureBytes,
         mediaType: String, segment: SegmentFile) throws {
        self.writer = writer
        (self.blobId, self.p, self.b, self.version, self.epoch, self.mediaType, self.segment) = (blobId, p, b, version, epoch, mediaType, segment)
        chunkSize = writer.chunkSize
        salt = try SecureRandom.bytes(16)
        blobKey = try BlobCrypto.blobKey(dataKey: dataKey, p: p, b: b, version: version, salt: salt)
        start = segment.end
        (plain, sealed) = (writer.plain, writer.sealed)
    }

    /// Appends bytes to the blob.
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        try checkWritable()
        var at = 0
        while at < bytes.count {
            let n = min(plain.count - filled, bytes.count - at)
            (plain.baseAddress! + filled).copyMemory(from: bytes.baseAddress! + at, byteCount: n)
            filled += n
            at += n
            if filled == plain.count { try sealBatch() }
        }
    }

    /// The batch buffers belong to the writer: an upload whose writer is gone must not touch them.
    private func checkWritable() throws {
        guard state == .writing else { throw LedgerError(.invalidArgument, "the upload is finished or abandoned") }
        guard writer != nil else { throw LedgerError(.invalidArgument, "the upload's BlobWriter no longer exists; keep it until commit") }
    }

    /// Appends bytes to the blob.
    public func write(_ bytes: [UInt8]) throws { try bytes.withUnsafeBytes { try write($0) } }

    /// Reads `fd` to its end into the blob, straight into the batch buffer.
    /// - Returns: the bytes read.
    /// - Throws: ``LedgerError`` `.invalidArgument` when reading `fd` fails, `.storage`.
    @discardableResult
    public func write(fromFileDescriptor fd: Int32) throws -> UInt64 {
        try checkWritable()
        var total: UInt64 = 0
        while true {
            let n = read(fd, plain.baseAddress! + filled, plain.count - filled)
            if n < 0 {
                if errno == EINTR { continue }
                throw LedgerError(.invalidArgument, "cannot read the blob's source (errno \(errno))")
            }
            if n == 0 { return total }
            filled += n
            total += UInt64(n)
            if filled == plain.count { try sealBatch() }
        }
    }

    /// Seals the chunks in the batch buffer (the last may be short) in parallel, appends them
    /// to the segment in one write and records their leaves in order.
    private func sealBatch() throws {
        guard filled > 0 else { return }
        // Any failure here ends the upload: a retry would seal a chunk index again, under the
        // same key and nonce, with other bytes.
        do { try sealFilled() } catch {
            abandon()
            throw error
        }
    }

    private func sealFilled() throws {
        let count = (filled + chunkSize - 1) / chunkSize
        let first = leaves.count
        let stride = chunkSize + BlobCrypto.overhead
        let (c, total, pHex, bHex, version) = (chunkSize, filled, p.hex, b.hex, version)
        let blobKey = blobKey
        nonisolated(unsafe) let (plain, sealed) = (plain, sealed)
        var hashes = [Hash](repeating: .zero, count: count)
        var failures = [Bool](repeating: false, count: count)
        hashes.withUnsafeMutableBufferPointer { hashes in
            failures.withUnsafeMutableBufferPointer { failures in
                nonisolated(unsafe) let (hashes, failures) = (hashes, failures)
                let seal: @Sendable (Int) -> Void = { j in
                    let length = min(c, total - j * c)
                    // key commitment (32) || ciphertext || tag (16)
                    let stored = UnsafeMutableRawBufferPointer(rebasing: sealed[(j * stride)..<(j * stride + length + BlobCrypto.overhead)])
                    let key = BlobCrypto.chunkKey(blobKey, first + j)
                    BlobCrypto.keyCommitment(key).withUnsafeBytes { stored.copyMemory(from: $0) }
                    do {
                        try AESGCM.seal(UnsafeRawBufferPointer(rebasing: plain[(j * c)..<(j * c + length)]),
                                        into: UnsafeMutableRawBufferPointer(rebasing: stored[32...]),
                                        key: key, nonce: BlobCrypto.zeroNonce,
                                        associatedData: BlobCrypto.chunkAAD(p: pHex, b: bHex, version: version, index: first + j))
                        hashes[j] = SHA256.leafHash(UnsafeRawBufferPointer(stored))
                    } catch {
                        failures[j] = true
                    }
                }
                if count == 1 { seal(0) } else { DispatchQueue.concurrentPerform(iterations: count, execute: seal) }
            }
        }
        guard !failures.contains(true) else { throw LedgerError(.storage, "sealing a blob chunk failed") }
        // Chunks before the last are full, so the stored chunks lie back to back.
        try segment.append(UnsafeRawBufferPointer(rebasing: sealed[0..<(total + count * BlobCrypto.overhead)]))
        leaves += hashes
        size += UInt64(total)
        filled = 0
    }

    /// Seals the last chunks; the blob commits with its writer's next ``BlobWriter/commit()``.
    public func finish() throws {
        try checkWritable()
        try sealBatch()
        guard let writer else { throw LedgerError(.invalidArgument, "the upload's BlobWriter no longer exists") }
        state = .finished
        writer.pending.append(self)
        writer.active = nil
    }

    func abandon() {
        state = .abandoned
        filled = 0
    }
}

// MARK: - Reading

extension PatientRecords {
    /// Opens a blob version (the latest when `version` is nil) for reading as `accessor`: the
    /// access decision is made and audited once here (action `read-blob`), like a record read;
    /// reads from the returned reader then check every chunk against the blob's root.
    ///
    /// Opening checks that the stored chunk hashes give the manifest's root and that the
    /// manifest is the log entry the index names.
    /// - Throws: ``LedgerError`` `.accessDenied`, `.erased`, `.patientNotFound`,
    ///   `.recordNotFound` (no such blob), `.storage` for a damaged index.
    public func openBlob(patient: String, blobId: String, version: UInt32? = nil, as accessor: Accessor,
                         purpose: String = "treatment", breakGlass: String? = nil) throws -> BlobReader {
        let agent = try auditAgent(accessor)
        let p = try pseudonym(of: patient)
        let b = try recordHash(p, blobId)
        var event = AuditEvent(action: "read-blob", accessor: accessor, agent: agent, patient: p, record: b, version: version,
                               purpose: purpose, breakGlass: breakGlass, time: clock())
        let outcome: Result<(BlobRow, SecureBytes), LedgerError> = try Ledger.storage {
            try ledger.environment.read { txn in
                let view = txn.unsafeView
                guard let state = try patientState(view, p) else { return .failure(LedgerError(.patientNotFound, "no such patient")) }
                guard state.status == .active else { return .failure(LedgerError(.erased, "the patient was erased")) }
                let wanted = try version ?? lastBlobVersion(view, p, b)
                event.version = wanted
                guard wanted > 0, let blobs, let row = try view.withValue(blobs, key: Self.blobStorageKey(p, b, wanted), { BlobRow(decoding: $0) }) else {
                    return .failure(LedgerError(.recordNotFound, "no such blob version"))
                }
                guard let row else { return .failure(LedgerError(.storage, "unreadable pl.blobs row (damaged store)")) }
                if let refusal = try refusal(accessor, p: p, r: b, resourceType: "Binary", view: view, breakGlass: breakGlass) {
                    return .failure(LedgerError(.accessDenied, refusal))
                }
                return .success((row, try unwrap(state, p, epoch: row.epoch)))
            }
        }
        event.settle(outcome)
        try auditCommitter.record([event.row])
        let (row, dataKey) = try outcome.get()
        let entry = try ledger.entry(at: row.index)
        let tree = ChunkTree(leaves: row.leaves)
        guard let manifest = BlobManifest(entry: entry), manifest.p == p, manifest.b == b, manifest.version == event.version,
              manifest.size == row.size, manifest.chunkSize == row.chunkSize, manifest.root == tree.root else {
            throw LedgerError(.storage, "the blob's stored chunk hashes do not match its manifest entry \(row.index) (damaged store)")
        }
        let info = BlobInfo(blobId: blobId, blobHash: b, version: manifest.version, index: row.index, size: row.size,
                            chunkSize: Int(row.chunkSize), chunkCount: row.chunkCount, root: manifest.root, mediaType: manifest.mediaType)
        return BlobReader(records: self, info: info, row: row, tree: tree, p: p,
                          blobKey: try BlobCrypto.blobKey(dataKey: dataKey, p: p, b: b, version: manifest.version, salt: row.salt))
    }
}

/// Reads one blob version: whole, as a stream, or by byte range, each chunk checked against
/// the blob's Merkle root before it is decrypted. Safe to use from several threads.
public final class BlobReader: @unchecked Sendable {
    // Sendable: immutable after init; each read uses its own buffers.
    public let info: BlobInfo
    let records: PatientRecords
    let row: BlobRow
    let tree: ChunkTree
    let p: Hash
    private let blobKey: HMACSHA256.Key
    private let segments: SegmentReaders

    init(records: PatientRecords, info: BlobInfo, row: BlobRow, tree: ChunkTree, p: Hash, blobKey: HMACSHA256.Key) {
        (self.records, self.info, self.row, self.tree, self.p, self.blobKey) = (records, info, row, tree, p, blobKey)
        segments = records.segmentReaders
    }

    /// Stored (sealed) length of chunk `i`.
    func sealedLength(_ i: Int) -> Int { row.sealedLength(i) }

    /// Reads chunk `i`'s sealed box into `box` (``sealedLength(_:)`` bytes) and checks it
    /// against the chunk's leaf in the blob's tree.
    func readSealed(_ i: Int, into box: UnsafeMutableRawBufferPointer) throws {
        try segments.read(segment: row.segment, offset: row.sealedOffset(i), into: box)
        guard SHA256.leafHash(UnsafeRawBufferPointer(box)) == row.leaves[i] else {
            throw LedgerError(.storage, "chunk \(i) of blob \(info.blobHash.hex) version \(info.version) does not match the blob's root (damaged store)")
        }
    }

    func chunkKey(_ i: Int) -> SecureBytes { BlobCrypto.chunkKey(blobKey, i) }

    /// Decrypts chunk `i` into `plain` (its plaintext length).
    private func readChunk(_ i: Int, box: UnsafeMutableRawBufferPointer, into plain: UnsafeMutableRawBufferPointer) throws {
        let box = UnsafeMutableRawBufferPointer(rebasing: box[0..<sealedLength(i)])
        try readSealed(i, into: box)
        let key = chunkKey(i)
        guard BlobCrypto.keyCommitment(key) == Hash(UnsafeRawBufferPointer(rebasing: box[0..<32])) else {
            throw LedgerError(.storage, "chunk \(i) of blob \(info.blobHash.hex) is not committed to its key (damaged store)")
        }
        do {
            try AESGCM.open(UnsafeRawBufferPointer(rebasing: box[32...]),
                            into: UnsafeMutableRawBufferPointer(rebasing: plain[0..<(box.count - BlobCrypto.overhead)]),
                            key: key, nonce: BlobCrypto.zeroNonce,
                            associatedData: BlobCrypto.chunkAAD(p: p.hex, b: info.blobHash.hex, version: info.version, index: i))
        } catch {
            throw LedgerError(.storage, "chunk \(i) of blob \(info.blobHash.hex) does not open under its key (damaged store)")
        }
    }

    /// Reads `buffer.count` bytes starting at `offset` into `buffer`, fetching only the chunks
    /// the range touches.
    /// - Throws: ``LedgerError`` `.invalidArgument` for a range beyond the blob, `.storage`
    ///   for a chunk that fails its check (nothing of it is returned).
    public func read(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        guard offset <= info.size, UInt64(buffer.count) <= info.size - offset else {
            throw LedgerError(.invalidArgument, "range \(offset)+\(buffer.count) is beyond the blob's \(info.size) bytes")
        }
        guard buffer.count > 0 else { return }
        let c = UInt64(info.chunkSize)
        let box = UnsafeMutableRawBufferPointer.allocate(byteCount: info.chunkSize + BlobCrypto.overhead, alignment: 64)
        let plain = UnsafeMutableRawBufferPointer.allocate(byteCount: info.chunkSize, alignment: 64)
        defer {
            box.deallocate()
            plain.initializeMemory(as: UInt8.self, repeating: 0)
            plain.deallocate()
        }
        let end = offset + UInt64(buffer.count)
        var at = offset
        while at < end {
            let i = Int(at / c)
            let chunkStart = UInt64(i) * c
            let chunkLength = UInt64(sealedLength(i) - BlobCrypto.overhead)
            let from = Int(at - chunkStart)
            let to = Int(min(end, chunkStart + chunkLength) - chunkStart)
            let out = UnsafeMutableRawBufferPointer(rebasing: buffer[Int(at - offset)..<(Int(at - offset) + to - from)])
            if from == 0 && to == Int(chunkLength) {
                try readChunk(i, box: box, into: out)  // a whole chunk: decrypt in place
            } else {
                try readChunk(i, box: box, into: plain)
                out.copyMemory(from: UnsafeRawBufferPointer(rebasing: plain[from..<to]))
            }
            at = chunkStart + UInt64(to)
        }
    }

    /// Reads `count` bytes starting at `offset`.
    public func read(offset: UInt64, count: Int) throws -> [UInt8] {
        guard count >= 0 else { throw LedgerError(.invalidArgument, "a negative byte count") }
        var out = [UInt8](repeating: 0, count: count)
        try out.withUnsafeMutableBytes { try read(offset: offset, into: $0) }
        return out
    }

    /// Streams the blob from `offset` for `count` bytes (to the end when nil) through `body`,
    /// one chunk-sized piece at a time; the piece is wiped after `body` returns.
    public func stream(offset: UInt64 = 0, count: UInt64? = nil, _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        guard offset <= info.size else { throw LedgerError(.invalidArgument, "offset \(offset) is beyond the blob's \(info.size) bytes") }
        guard count.map({ $0 <= info.size - offset }) ?? true else {
            throw LedgerError(.invalidArgument, "range is beyond the blob's \(info.size) bytes")
        }
        let end = count.map { offset + $0 } ?? info.size
        let piece = UnsafeMutableRawBufferPointer.allocate(byteCount: info.chunkSize, alignment: 64)
        defer {
            piece.initializeMemory(as: UInt8.self, repeating: 0)
            piece.deallocate()
        }
        var at = offset
        while at < end {
            // Pieces end on chunk boundaries so that each read decrypts whole chunks in place.
            let next = min(end, (at / UInt64(info.chunkSize) + 1) * UInt64(info.chunkSize))
            let part = UnsafeMutableRawBufferPointer(rebasing: piece[0..<Int(next - at)])
            try read(offset: at, into: part)
            try body(UnsafeRawBufferPointer(part))
            at = next
        }
    }
}
