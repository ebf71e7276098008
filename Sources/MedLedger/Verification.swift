import Foundation
import LMDBKit
public import LedgerCrypto
import MerkleLog
import SparseMerkle

/// What ``Ledger/verify(_:)`` checked and every discrepancy it found.
public struct VerificationReport: Sendable {
    /// The part of the ledger a discrepancy is in.
    public enum Area: String, Sendable {
        /// Entries, stored leaf and subtree hashes, the committed size.
        case log
        /// The key map's roots, pages and stale records.
        case map
        /// Key files, the signed checkpoint, checkpoints given to check.
        case checkpoint
        /// Patient states (`pl.patients`, `pl.meta`).
        case patients
        /// Stored ciphertexts (`pl.records`) against their `record` entries.
        case records
        /// Stored grants (`pl.grants`) against their `grant` and `revoke` entries.
        case grants
        /// Audit and break-glass indexes (`pl.audit`, `pl.breakglass`) against `audit` entries.
        case audit
        /// Blob indexes (`pl.blobs`) against `blob` manifest entries, and the sealed chunks in
        /// segment files against their hashes.
        case blobs
        /// A read failed: the file is damaged where the location says.
        case storage
    }

    /// One discrepancy: where it is and what is wrong.
    public struct Problem: Sendable, Hashable, CustomStringConvertible {
        public let area: Area
        /// Where: an entry index, a database and key, a version.
        public let location: String
        public let detail: String
        public var description: String { "\(area.rawValue): \(location): \(detail)" }
    }

    /// The committed tree size checked.
    public internal(set) var treeSize: UInt64 = 0
    /// Entries read and rehashed.
    public internal(set) var entries: UInt64 = 0
    /// Stored leaf and subtree hashes compared with recomputed ones.
    public internal(set) var storedHashes: UInt64 = 0
    /// Key-map versions rebuilt from the log and compared.
    public internal(set) var mapVersions: UInt64 = 0
    /// Stored key-map pages compared byte for byte with rebuilt ones.
    public internal(set) var mapPages: UInt64 = 0
    /// Patient states, stored record versions, grants and audit events checked.
    public internal(set) var patients: UInt64 = 0
    public internal(set) var records: UInt64 = 0
    public internal(set) var grants: UInt64 = 0
    public internal(set) var auditEvents: UInt64 = 0
    /// Blob versions checked, and the sealed chunk bytes rehashed.
    public internal(set) var blobVersions: UInt64 = 0
    public internal(set) var blobBytesRehashed: UInt64 = 0
    /// Checkpoints given in ``VerificationOptions/checkpoints`` that were checked.
    public internal(set) var checkpointsChecked = 0
    /// The log root and key-map root recomputed from the entries, at ``treeSize``.
    public internal(set) var rootHash: Hash = SHA256.hash([])
    public internal(set) var mapRoot: Hash = .zero
    /// The signed checkpoint of the verified state, when it verified and the signer key was readable.
    public internal(set) var checkpoint: String?
    /// The first ``maxListedProblems`` discrepancies, in the order found.
    public internal(set) var problems: [Problem] = []
    /// All discrepancies, including those past the listed ones.
    public internal(set) var problemCount = 0
    /// True when nothing was found wrong.
    public var isValid: Bool { problemCount == 0 }
    public static let maxListedProblems = 1000

    mutating func add(_ area: Area, _ location: String, _ detail: String) {
        problemCount += 1
        if problems.count < Self.maxListedProblems { problems.append(Problem(area: area, location: location, detail: detail)) }
    }
}

/// How ``Ledger/verify(_:)`` runs.
public struct VerificationOptions: Sendable {
    /// Where the key map is rebuilt (a fresh directory is made inside and removed at the end);
    /// the system's temporary directory when nil. It needs about the space of the ledger's
    /// current key map.
    public var scratchDirectory: String?
    /// Signed checkpoint notes issued earlier: each must verify under the ledger's key and
    /// match the roots recomputed at its size (a crashed or restored ledger must still
    /// contain every state it signed).
    public var checkpoints: [String] = []
    /// The patient layer's master key file: when given, the key check and every patient's
    /// wrapped data keys must open under it (without it they are checked for shape only).
    public var masterKey: MasterKeyFile?
    /// Rehash every sealed blob chunk in the segment files against the chunk hashes of its
    /// blob (default). Reads every blob byte once; without it blob indexes are still checked
    /// against their manifests.
    public var checkBlobChunks = true
    /// Called now and then from the verifying thread with the entries read so far.
    public var progress: (@Sendable (_ done: UInt64, _ total: UInt64) -> Void)?
    public init() {}
}

extension Ledger {
    /// Audits everything the ledger stores against the log: recomputes every leaf and stored
    /// subtree hash, rebuilds the key map from the entries and compares every retained map
    /// version (roots, pages, stale records) byte for byte, signs and checks the checkpoint
    /// of the verified state, and checks the patient layer's stored ciphertexts, patient
    /// states, grants and audit indexes against the entries they belong to.
    ///
    /// It reads one snapshot in one pass over the entries (memory bounded by the largest
    /// single append), so writers may keep appending. It never writes to the ledger.
    /// - Returns: the report; ``VerificationReport/isValid`` is false when anything differs.
    /// - Throws: ``LedgerError`` `.storage` when the scratch space cannot be created; damage in
    ///   the ledger itself is reported, not thrown.
    public func verify(_ options: VerificationOptions = VerificationOptions()) throws -> VerificationReport {
        let scratchParent = options.scratchDirectory ?? NSTemporaryDirectory()
        let scratchPath = scratchParent + "/medledger-verify-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: scratchPath) }
        let scratch: LMDBSparseStore = try Self.storage {
            var env = Environment.Options()
            env.durable = false
            env.mapSize = 64 << 20
            return try LMDBSparseStore(environment: Environment(path: scratchPath, options: env))
        }
        let verifier = LedgerVerifier(ledger: self, scratch: scratch, options: options)
        try verifier.run()
        return verifier.report
    }
}

/// One verification run: a single pass over the entries that rehashes the log and rebuilds
/// the key map beside it, then scans of the patient layer's tables.
final class LedgerVerifier {
    let ledger: Ledger
    let scratch: LMDBSparseStore
    let options: VerificationOptions
    var report = VerificationReport()
    /// Whether the pass read every entry, so that the recomputed roots are whole.
    var passCompleted = false

    init(ledger: Ledger, scratch: LMDBSparseStore, options: VerificationOptions) {
        self.ledger = ledger
        self.scratch = scratch
        self.options = options
    }

    /// The log's databases (the ledger's own handles).
    struct LogTables {
        let entries: Database
        let meta: Database
        let tiles: Database
        let levels: [Database]
    }

    static let tileBytes = 62 * 32

    func run() throws {
        // Checkpoints to hold the recomputed state against: parsed and verified first, so the
        // pass knows which sizes to remember.
        var given: [(Int, Checkpoint)] = []
        for (n, note) in options.checkpoints.enumerated() {
            do {
                let signed = try SignedCheckpoint(verifying: note, verifiers: [ledger.verifier], origin: ledger.origin)
                given.append((n, signed.checkpoint))
            } catch {
                report.add(.checkpoint, "checkpoint \(n + 1)", "does not verify under the ledger's key: \(error)")
            }
        }
        var logRoots: [UInt64: Hash] = [:]
        var mapRoots: [UInt64: Hash] = [:]
        let wanted = Set(given.map(\.1.size))

        do {
            try ledger.environment.read { txn in
                let view = txn.unsafeView
                let store = ledger.store
                let log = LogTables(entries: store.entriesDatabase, meta: store.metaDatabase, tiles: store.tilesDatabase,
                                    levels: store.levelDatabases)
                if try view.count(ledger.ledgerMeta) != 2 {
                    report.add(.log, "ledger.meta", "holds records other than origin and format")
                }
                let patientTables = try PatientTables(view, create: false)
                // Every database is a plain one; other flags (duplicates, integer keys) in a
                // database record would change what its records mean.
                let all = [log.entries, log.meta, log.tiles, ledger.ledgerMeta] + log.levels
                    + [ledger.sparse.pagesDatabase, ledger.sparse.rootsDatabase, ledger.sparse.staleDatabase]
                    + (ledger.sparse.metaDatabase.map { [$0] } ?? []) + (patientTables?.all ?? [])
                for db in all {
                    let flags = try view.flags(db)
                    if flags != 0 { report.add(.storage, "database record", "a database has flags \(flags) where none were set") }
                }
                if let meta = ledger.sparse.metaDatabase {
                    // smt.meta holds at most the key map's generation (how often it was rebuilt).
                    let generation = try view.value(meta, key: "generation")
                    if try view.count(meta) != (generation == nil ? 0 : 1) || (generation.map { $0.count != 8 } ?? false) {
                        report.add(.map, "smt.meta", "holds records other than an 8-byte generation")
                    }
                }
                var pass = try Pass(verifier: self, view: view, log: log, patients: patientTables, wanted: wanted)
                try pass.run()
                logRoots = pass.capturedLogRoots
                mapRoots = pass.capturedMapRoots
                if let patientTables { try checkPatientTables(view, log: log, tables: patientTables, counts: pass.patientCounts) }
            }
        } catch {
            report.add(.storage, "snapshot", "reading the ledger failed: \(error)")
        }

        checkSignedState()
        for (n, checkpoint) in given {
            report.checkpointsChecked += 1
            let location = "checkpoint \(n + 1) (size \(checkpoint.size))"
            guard checkpoint.size <= report.treeSize else {
                report.add(.checkpoint, location, "signed a size beyond the log's \(report.treeSize) entries: acknowledged entries are missing")
                continue
            }
            if let root = logRoots[checkpoint.size], root != checkpoint.rootHash {
                report.add(.checkpoint, location, "log root \(root.hex) recomputed from the entries differs from the signed \(checkpoint.rootHash.hex)")
            }
            if let signedMap = checkpoint.mapRoot {
                if let mapRoot = mapRoots[checkpoint.size] {
                    if mapRoot != signedMap {
                        report.add(.checkpoint, location, "map root \(mapRoot.hex) rebuilt from the entries differs from the signed \(signedMap.hex)")
                    }
                } else {
                    report.add(.checkpoint, location, "no map version to rebuild at this size: not a size where this ledger committed, or pruned with none of its pages left")
                }
            }
        }
    }

    /// The checkpoint this state would be signed with, from the recomputed roots, and the key files.
    private func checkSignedState() {
        if ledger.verifier.name != ledger.origin {
            report.add(.checkpoint, Ledger.verifierKeyFile, "names \(ledger.verifier.name), not the ledger's origin \(ledger.origin)")
        }
        var signer = ledger.signer
        let signerPath = ledger.path + "/" + Ledger.signerKeyFile
        if signer == nil, let text = try? String(contentsOfFile: signerPath, encoding: .utf8) {
            if let parsed = try? NoteSigner(parsing: text), parsed.verifier == ledger.verifier {
                signer = parsed
            } else {
                report.add(.checkpoint, Ledger.signerKeyFile, "is malformed or does not match \(Ledger.verifierKeyFile)")
            }
        }
        // The stored hashes give the root readers and proofs use; it must be the recomputed one
        // (known only when the pass read every entry).
        if passCompleted, let stored = try? ledger.rootHash(size: report.treeSize), stored != report.rootHash {
            report.add(.log, "size \(report.treeSize)", "root from stored hashes \(stored.hex) differs from the entries' \(report.rootHash.hex)")
        }
        // Sign only a state that verified: a partial recomputation must not look like one.
        guard let signer, report.problemCount == 0 else { return }
        let checkpoint = Checkpoint(origin: ledger.origin, size: report.treeSize, rootHash: report.rootHash, mapRoot: report.mapRoot)
        do {
            let note = try signer.sign(checkpoint.text)
            _ = try SignedCheckpoint(verifying: note, verifiers: [ledger.verifier], origin: ledger.origin)
            report.checkpoint = note
        } catch {
            report.add(.checkpoint, "size \(report.treeSize)", "the checkpoint of the verified state does not sign and verify: \(error)")
        }
    }
}

// MARK: - The pass over the entries

/// What the pass counted for the patient layer, to compare with the tables' row counts.
struct PatientCounts {
    var liveRecordVersions = 0
    /// Live versions whose box lives in their `pl.records` row (the earlier layout).
    var inlineRecordBoxes = 0
    var liveBlobVersions = 0
    var auditEvents = 0
    var breakGlassEvents = 0
}

extension LedgerVerifier {
    /// Reads entries 0..<n once: rehashes each, rebuilds the complete subtrees and compares
    /// them with the stored ones, replays the key map into the scratch store and compares each
    /// version, and checks each patient-layer entry against the private table it indexes.
    struct Pass {
        let verifier: LedgerVerifier
        let view: TransactionView
        let log: LogTables
        let patients: PatientTables?
        let wanted: Set<UInt64>
        let size: UInt64
        /// Map versions to rebuild and compare, increasing.
        var boundaries: [UInt64] = []
        var nextBoundary = 0
        /// The oldest stored map root: versions below it count as pruned.
        var oldestRoot: UInt64?
        /// Whether pages or stale records of versions below the oldest root remain (a prune
        /// kept the pages the oldest root uses): the records up to the oldest root then
        /// depend on batch boundaries the prune dropped (see `rebuildPrunedVersion`).
        var prunedHistory = false
        var changes: [SparseChange] = []
        /// The right edge of the tree so far: complete subtrees, lowest level last.
        var stack: [(level: Int, hash: Hash)] = []
        var tile: [UInt8]?
        var tileBlock: UInt64 = .max
        var pendingZeroRanges: [Range<Int>] = []
        var capturedLogRoots: [UInt64: Hash] = [:]
        var capturedMapRoots: [UInt64: Hash] = [:]
        var patientCounts = PatientCounts()
        /// Patient states met during the pass (status and epochs), by pseudonym.
        var patientCache: [Hash: PatientState?] = [:]
        /// Segment files, each opened once for the whole pass.
        let segments: SegmentReaders
        /// `pl.meta` `records.folded` (0 when absent or malformed, which the table checks report).
        let recordsFolded: UInt64

        init(verifier: LedgerVerifier, view: TransactionView, log: LogTables, patients: PatientTables?, wanted: Set<UInt64>) throws {
            self.verifier = verifier
            self.view = view
            self.log = log
            self.patients = patients
            self.wanted = wanted
            segments = SegmentReaders(ledgerPath: verifier.ledger.path)
            recordsFolded = patients.flatMap { try? StagedRecords.foldedThrough(view, meta: $0.meta) } ?? 0
            let stored = try view.value(log.meta, key: "size")
            if let stored, stored.count != 8 {
                verifier.report.add(.log, "log.meta size", "holds \(stored.count) bytes, not 8")
            }
            size = stored.flatMap { $0.count == 8 ? $0.withUnsafeBytes { UInt64(bigEndianBytes: $0) } : nil } ?? 0
            verifier.report.treeSize = size
        }

        var report: VerificationReport {
            get { verifier.report }
            nonmutating set { verifier.report = newValue }
        }

        mutating func run() throws {
            try collectBoundaries()
            if wanted.contains(0) {
                capturedLogRoots[0] = SHA256.hash([])
                capturedMapRoots[0] = SparseHash.empty
            }
            var index: UInt64 = 0
            var complete = true
            try view.withCursor(log.entries) { cursor in
                var more = try cursor.first()
                while more, index < size {
                    let key = cursor.withCurrent { key, _ in key.count == 8 ? UInt64(bigEndianBytes: key) : nil }
                    guard key == index else {
                        report.add(.log, "entry \(index)", key.map { "missing: the next stored entry is \($0)" } ?? "missing: the next stored key is not 8 bytes")
                        complete = false
                        return
                    }
                    let bytes = cursor.withCurrent { _, value in Array(value) }
                    try entry(bytes, at: index)
                    index += 1
                    if index & 0xffff == 0 { verifier.options.progress?(index, size) }
                    more = try cursor.next()
                }
                if index < size {
                    report.add(.log, "entry \(index)", "missing: log.entries ends at \(index) of \(size) committed entries")
                    complete = false
                } else if more {
                    report.add(.log, "log.entries", "holds entries past the committed size \(size)")
                }
            }
            verifier.options.progress?(index, size)
            guard complete else { return }
            verifier.passCompleted = true
            report.rootHash = rootOfStack()
            try checkCounts()
        }

        /// Every size the key map must be rebuilt at: the stored roots' versions, the versions
        /// that wrote stored pages (after a prune some pages outlive their version's root), and
        /// the current size.
        private mutating func collectBoundaries() throws {
            var versions = Set<UInt64>()
            try view.withCursor(verifier.ledger.sparse.rootsDatabase) { cursor in
                var more = try cursor.first()
                while more {
                    let version = cursor.withCurrent { key, _ in key.count == 8 ? UInt64(bigEndianBytes: key) : nil }
                    if let version { versions.insert(version); oldestRoot = min(oldestRoot ?? version, version) } else {
                        report.add(.map, "smt.roots", "a key is not 8 bytes")
                    }
                    more = try cursor.next()
                }
            }
            // Pages and stale records are keyed by version first: one seek per distinct version.
            // (A page key is at least 9 bytes; a stale record's key is its 8-byte version.)
            for (db, name, minimum) in [(verifier.ledger.sparse.pagesDatabase, "smt.pages", 9), (verifier.ledger.sparse.staleDatabase, "smt.stale", 8)] {
                try view.withCursor(db) { cursor in
                    var more = try cursor.first()
                    var previous: UInt64?
                    while more {
                        guard let version = cursor.withCurrent({ key, _ in
                            key.count >= minimum && (minimum == 9 || key.count == 8)
                                ? UInt64(bigEndianBytes: UnsafeRawBufferPointer(rebasing: key[0..<8])) : nil
                        }) else {
                            report.add(.map, name, minimum == 9 ? "a key is shorter than 9 bytes" : "a key is not 8 bytes")
                            more = try cursor.next()
                            continue
                        }
                        // A damaged tree can return keys out of order; seeking on would never end.
                        if let previous, version <= previous {
                            report.add(.map, name, "keys out of order after version \(previous): the file's B-tree is damaged")
                            break
                        }
                        previous = version
                        versions.insert(version)
                        guard version < .max else { break }
                        more = try cursor.seek(atOrAfter: version + 1)
                    }
                }
            }
            for version in versions where version > size {
                report.add(.map, "version \(version)", "stored map data for a version past the committed size \(size)")
            }
            if versions.contains(0) {
                report.add(.map, "version 0", "stored map data for size 0, which no append writes (its map is EMPTY)")
            }
            versions = versions.filter { $0 > 0 && $0 <= size }
            if size > 0 { versions.insert(size) }
            boundaries = versions.sorted()
            if let oldestRoot, let first = boundaries.first { prunedHistory = first < oldestRoot }
        }

        private mutating func entry(_ bytes: [UInt8], at index: UInt64) throws {
            report.entries += 1
            let leaf = SHA256.leafHash(bytes)
            try addLeaf(leaf, at: index)
            let parsed: LedgerEntry?
            do { parsed = try LedgerEntry(decoding: bytes) } catch {
                report.add(.log, "entry \(index)", "not a valid ledger entry: \(error)")
                parsed = nil
            }
            if let parsed, !parsed.key.isEmpty {
                changes.append(SparseChange(keyHash: SHA256.hash(utf8: parsed.key), value: parsed.operation == .set
                    ? Ledger.mapValue(index: index, leafHash: leaf) : nil))
            }
            if let parsed, patients != nil { try patientEntry(parsed, at: index) }
            let after = index + 1
            if wanted.contains(after) { capturedLogRoots[after] = rootOfStack() }
            if nextBoundary < boundaries.count, boundaries[nextBoundary] == after {
                try rebuildMapVersion(after)
                nextBoundary += 1
            }
        }

        // MARK: Log hashes

        private mutating func addLeaf(_ leaf: Hash, at index: UInt64) throws {
            if index >> 5 != tileBlock { try loadTile(index >> 5) }
            var level = 0
            var k = index
            var hash = leaf
            try compareStored(hash, level: 0, index: k)
            while let last = stack.last, last.level == level {
                stack.removeLast()
                hash = SHA256.nodeHash(last.hash, hash)
                level += 1
                k >>= 1
                try compareStored(hash, level: level, index: k)
            }
            stack.append((level, hash))
        }

        /// The root of the entries so far: the right edge folded from its lowest subtree up.
        func rootOfStack() -> Hash {
            guard var hash = stack.last?.hash else { return SHA256.hash([]) }
            for item in stack.dropLast().reversed() { hash = SHA256.nodeHash(item.hash, hash) }
            return hash
        }

        private mutating func loadTile(_ block: UInt64) throws {
            tileBlock = block
            tile = nil
            if block < size / 32 {
                let stored = try view.value(log.tiles, key: block)
                guard let stored, stored.count == LedgerVerifier.tileBytes else {
                    report.add(.log, "log.tiles block \(block)", stored == nil ? "missing" : "holds \(stored!.count) bytes, not \(LedgerVerifier.tileBytes)")
                    return
                }
                tile = stored
            } else {
                // Positions of subtrees not complete at this size must hold zeros.
                let filled = Int(size & 31)
                pendingZeroRanges = (0..<LMDBLogStore.tileHeight).map { level in
                    let first = 64 - (1 << (6 - level))
                    return (first + (filled >> level))..<(first + (32 >> level))
                }
                let stored = try view.value(log.meta, key: "tile.pending")
                guard let stored, stored.count == 8 + LedgerVerifier.tileBytes,
                      stored.withUnsafeBytes({ UInt64(bigEndianBytes: UnsafeRawBufferPointer(rebasing: $0[0..<8])) }) == block else {
                    report.add(.log, "log.meta tile.pending", "missing, malformed or not for block \(block), the incomplete one")
                    return
                }
                tile = Array(stored[8...])
                for range in pendingZeroRanges where stored[(8 + range.lowerBound * 32)..<(8 + range.upperBound * 32)].contains(where: { $0 != 0 }) {
                    report.add(.log, "log.meta tile.pending", "holds non-zero bytes where block \(block)'s subtrees are incomplete")
                    break
                }
            }
        }

        private mutating func compareStored(_ hash: Hash, level: Int, index k: UInt64) throws {
            let stored: [UInt8]?
            let location: String
            if level < LMDBLogStore.tileHeight {
                guard let tile else { return }  // reported once when loaded
                let position = (64 - (1 << (6 - level))) + Int(k & ((1 << (5 - level)) - 1))
                stored = Array(tile[(position * 32)..<(position * 32 + 32)])
                location = level == 0 ? "entry \(k)" : "tile of block \(tileBlock), level \(level) node \(k)"
            } else {
                stored = try view.value(log.levels[level], key: k)
                location = "log.h\(level < 10 ? "0" : "")\(level) node \(k)"
            }
            report.storedHashes += 1
            guard let stored else {
                report.add(.log, location, "stored hash missing")
                return
            }
            if stored != hash.bytes {
                report.add(.log, location, level == 0
                    ? "stored leaf hash differs from the entry's \(hash.hex)"
                    : "stored subtree hash differs from the one recomputed from the entries")
            }
        }

        private func checkCounts() throws {
            if size % 32 == 0, try view.value(log.meta, key: "tile.pending") != nil {
                report.add(.log, "log.meta tile.pending", "present although every block is complete")
            }
            if try view.count(log.meta) != (size == 0 ? 0 : 1) + (size % 32 == 0 ? 0 : 1) {
                report.add(.log, "log.meta", "holds records other than size and tile.pending")
            }
            let expectations: [(Database, String, UInt64)] =
                [(log.tiles, "log.tiles", size / 32)]
                + (0..<64).map { level in
                    (log.levels[level], "log.h\(level < 10 ? "0" : "")\(level)",
                     level < LMDBLogStore.tileHeight ? 0 : size >> UInt64(level))
                }
            for (db, name, expected) in expectations {
                let count = try view.count(db)
                if count != Int(expected) { report.add(.log, name, "holds \(count) records, expected \(expected) for size \(size)") }
            }
        }

        // MARK: Key map

        /// Applies the changes since the last version to the scratch store as version
        /// `version` and compares what it wrote with what the ledger stores.
        private mutating func rebuildMapVersion(_ version: UInt64) throws {
            if prunedHistory, let oldestRoot, version <= oldestRoot {
                return try rebuildPrunedVersion(version, oldestRoot: oldestRoot)
            }
            let pending = changes
            changes.removeAll(keepingCapacity: true)
            let stored = view
            let sparse = verifier.ledger.sparse
            let rootRequired = version == size || (oldestRoot.map { version >= $0 } ?? false)
            let pagesComplete = oldestRoot.map { version >= $0 } ?? false
            // Everything the closure finds is returned from it: a full scratch map runs it again.
            let (root, found, pages) = try verifier.scratch.write { scratchView -> (Hash, [(VerificationReport.Area, String, String)], Int) in
                var found: [(VerificationReport.Area, String, String)] = []
                var pages = 0
                let root = try SparseMerkleTree.apply(pending, version: version, writer: scratchView).hash
                let rebuilt = scratchView.txn
                // The root record.
                let rebuiltRoot = try rebuilt.value(verifier.scratch.rootsDatabase, key: version)
                let storedRoot = try stored.value(sparse.rootsDatabase, key: version)
                if rootRequired, storedRoot != rebuiltRoot {
                    found.append((.map, "smt.roots version \(version)", storedRoot == nil
                        ? "missing" : "differs from the root rebuilt from the entries (\(root.hex))"))
                }
                let prefix = withUnsafeBytes(of: version.bigEndian) { Array($0) }
                // Pages: every rebuilt page must be stored with the same bytes (after a prune,
                // versions before the oldest root keep only the pages later versions use)...
                try forEach(prefix, in: verifier.scratch.pagesDatabase, of: rebuilt) { key, value in
                    let same = try stored.withValue(sparse.pagesDatabase, key: key) { Array($0) == value }
                    if same == false { found.append((.map, Self.pageName(key), "differs from the page rebuilt from the entries")) }
                    if same == nil, pagesComplete { found.append((.map, Self.pageName(key), "missing")) }
                }
                // ...and every stored page must be one the rebuild wrote.
                try forEach(prefix, in: sparse.pagesDatabase, of: stored) { key, _ in
                    pages += 1
                    if try rebuilt.withValue(verifier.scratch.pagesDatabase, key: key, { _ in true }) == nil {
                        found.append((.map, Self.pageName(key), "not a page of the key map rebuilt from the entries"))
                    }
                }
                // The stale record (the page records this version stopped using): pruning
                // deletes those up to the prune point, so below the oldest root none may
                // remain, at it it may or may not.
                let rebuiltStale = try rebuilt.value(verifier.scratch.staleDatabase, key: version)
                let storedStale = try stored.value(sparse.staleDatabase, key: version)
                if let storedStale {
                    if storedStale.withUnsafeBytes({ LMDBSparseStore.staleKeys($0, replacedAt: version) }) == nil {
                        found.append((.map, "smt.stale version \(version)", "the record does not decode"))
                    } else if storedStale != rebuiltStale || !pagesComplete {
                        found.append((.map, "smt.stale version \(version)", rebuiltStale == nil
                            ? "a stale record the rebuilt map does not have" : "differs from the stale record rebuilt from the entries"))
                    }
                } else if rebuiltStale != nil, pagesComplete, version != oldestRoot {
                    found.append((.map, "smt.stale version \(version)", "a stale record of the rebuilt map is missing"))
                }
                _ = try scratchView.prune(before: version)
                return (root, found, pages)
            }
            for (area, location, detail) in found { report.add(area, location, detail) }
            report.mapVersions += 1
            report.mapPages += UInt64(pages)
            if wanted.contains(version) { capturedMapRoots[version] = root }
            if version == size { report.mapRoot = root }
        }

        /// A version up to the oldest root of a pruned map. Its root is rebuilt from the
        /// entries (a checkpoint at it is checked against that), but its records cannot be
        /// compared byte for byte: which pages were written as deltas, over which bases, and
        /// by which version depends on batch boundaries the prune dropped, so a rebuild that
        /// merges the dropped batches writes other records for the same tree. Each stored
        /// page written at this version (a delta merged with its base) must instead hold what
        /// the rebuilt tree holds at its position: the same leaves, and child pages with the
        /// same hashes. At the oldest root the stored tree is also walked on its own (every
        /// page present and hashing to what its parent holds), its root compared with the
        /// rebuilt one, and copied into the scratch store, so that every later version is
        /// rebuilt over the records the writer had and compared byte for byte. Stored pages
        /// up to the oldest root that its tree does not use, and stale records below it, are
        /// reported.
        private mutating func rebuildPrunedVersion(_ version: UInt64, oldestRoot: UInt64) throws {
            let pending = changes
            changes.removeAll(keepingCapacity: true)
            let sparse = verifier.ledger.sparse
            let stored = LMDBSparseStore.View(view, store: sparse)
            let (root, found, compared) = try verifier.scratch.write { scratchView -> (Hash, [(String, String)], Int) in
                let root = try SparseMerkleTree.apply(pending, version: version, writer: scratchView).hash
                var found: [(String, String)] = []
                var compared = 0
                try forEach(withUnsafeBytes(of: version.bigEndian) { Array($0) }, in: sparse.pagesDatabase, of: view) { key, _ in
                    compared += 1
                    guard let id = PageID(storageKey: key) else {
                        found.append((Self.pageName(key), "the key is not a page key"))
                        return
                    }
                    guard let page = try stored.storedPage(id) else {
                        found.append((Self.pageName(key), "does not decode (or its base is missing)"))
                        return
                    }
                    let rebuilt = try scratchView.page(atDepth: id.depth, prefix: id.prefix, version: version)
                    guard let rebuilt, zip(page.slots, rebuilt.slots).allSatisfy({ Self.sameSubtree($0, $1) }) else {
                        found.append((Self.pageName(key), "differs from the map rebuilt from the entries at its version"))
                        return
                    }
                }
                _ = try scratchView.prune(before: version)
                return (root, found, compared)
            }
            for (location, detail) in found { report.add(.map, location, detail) }
            report.mapVersions += 1
            report.mapPages += UInt64(compared)
            if wanted.contains(version) { capturedMapRoots[version] = root }
            if version == size { report.mapRoot = root }
            guard version == oldestRoot else { return }
            try adoptOldestVersion(version, rebuiltRoot: root)
        }

        /// Whether two nodes of one position hold the same subtree: equal leaves, or pages with
        /// equal hashes whichever version wrote them.
        static func sameSubtree(_ a: SparseNode, _ b: SparseNode) -> Bool {
            switch (a, b) {
            case (.empty, .empty): return true
            case (.leaf, .leaf): return a == b
            case (.page(let x, _), .page(let y, _)): return x == y
            default: return false
            }
        }

        /// Checks the stored tree of the oldest root of a pruned map on its own and makes the
        /// scratch store hold exactly its records (see `rebuildPrunedVersion`). A damaged
        /// tree is reported and not adopted: later versions are then rebuilt over the tree
        /// rebuilt from the entries, and their records may be reported as differing too.
        private mutating func adoptOldestVersion(_ version: UInt64, rebuiltRoot root: Hash) throws {
            let sparse = verifier.ledger.sparse
            let stored = LMDBSparseStore.View(view, store: sparse)
            let scratch = verifier.scratch
            /// Thrown out of the scratch transaction, which undoes the copy.
            struct Damaged: Error { let root: SparseNode?; let problems: [String] }
            var used = Set<[UInt8]>()
            var checked: (root: SparseNode?, problems: [String])
            do {
                checked = try scratch.write { scratchView -> (SparseNode?, [String]) in
                    used.removeAll()  // a write run again after the scratch map grew starts over
                    try scratch.clear(scratchView.txn)
                    let walked = try stored.checkStoredTree(version: version) { key, record in
                        if used.insert(Array(key)).inserted { try scratchView.txn.put(scratch.pagesDatabase, key: key, value: record) }
                    }
                    if !walked.problems.isEmpty { throw Damaged(root: walked.root, problems: walked.problems) }
                    if let raw = try view.value(sparse.rootsDatabase, key: version) {
                        try scratchView.txn.put(scratch.rootsDatabase, key: version, value: raw)
                    }
                    return walked
                }
            } catch let damaged as Damaged {
                checked = (damaged.root, damaged.problems)
            }
            for problem in checked.problems { report.add(.map, "the stored tree of version \(version) (the oldest kept)", problem) }
            if let storedRoot = checked.root, storedRoot.hash != root {
                report.add(.map, "smt.roots version \(version)", "differs from the root rebuilt from the entries (\(root.hex))")
            }
            // Its stale record, if a prune left it, lists what it replaced: never a page it
            // uses, which the next prune would delete.
            var replaced = Set<[UInt8]>()
            if let record = try view.value(sparse.staleDatabase, key: version) {
                if let keys = record.withUnsafeBytes({ LMDBSparseStore.staleKeys($0, replacedAt: version) }) {
                    replaced = Set(keys)
                    if keys.contains(where: used.contains) {
                        report.add(.map, "smt.stale version \(version)", "lists a page the oldest kept version uses (a prune would delete it)")
                    }
                } else {
                    report.add(.map, "smt.stale version \(version)", "the record does not decode")
                }
            }
            // Pages the oldest tree does not use are left over only when its stale record lists
            // them (it replaced them); stale records of older versions outlive nothing.
            try view.withCursor(sparse.pagesDatabase) { cursor in
                var more = try cursor.first()
                while more {
                    let key = cursor.withCurrent { key, _ in Array(key) }
                    guard key.count >= 9, let written = key.withUnsafeBytes({ UInt64(bigEndianBytes: UnsafeRawBufferPointer(rebasing: $0[0..<8])) }),
                          written <= version else { break }
                    if !used.contains(key) && !replaced.contains(key) {
                        report.add(.map, Self.pageName(key), "not used by the oldest kept version \(version), nor replaced by it")
                    }
                    more = try cursor.next()
                }
            }
            try view.withCursor(sparse.staleDatabase) { cursor in
                var more = try cursor.first()
                while more {
                    guard let staleVersion = cursor.withCurrent({ key, _ in UInt64(bigEndianBytes: key) }), staleVersion < version else { break }
                    report.add(.map, "smt.stale version \(staleVersion)", "a stale record of a version below the oldest kept one")
                    more = try cursor.next()
                }
            }
        }

        /// Calls `body` with each record of `db` whose key starts with `prefix`.
        private func forEach(_ prefix: [UInt8], in db: Database, of txn: TransactionView,
                             _ body: ([UInt8], [UInt8]) throws -> Void) throws {
            try txn.withCursor(db) { cursor in
                var more = try cursor.seek(atOrAfter: prefix)
                while more {
                    let (key, value) = cursor.withCurrent { key, value in (Array(key), Array(value)) }
                    guard key.starts(with: prefix) else { break }
                    try body(key, value)
                    more = try cursor.next()
                }
            }
        }

        static func pageName(_ key: [UInt8]) -> String {
            guard let id = PageID(storageKey: key) else { return "smt.pages key \(Hex.encode(key))" }
            return "smt.pages version \(id.version) depth \(id.depth) prefix \(Hex.encode(Array(key[9...])))"
        }

        // MARK: Patient layer entries

        private mutating func patientState(_ p: Hash) throws -> PatientState? {
            if let cached = patientCache[p] { return cached }
            guard let patients else { return nil }
            let state = try patients.state(view, p)
            if patientCache.count > 100_000 { patientCache.removeAll(keepingCapacity: true) }
            patientCache[p] = state
            return state
        }

        /// Checks one entry of the patient layer against the private table that indexes it.
        private mutating func patientEntry(_ entry: LedgerEntry, at index: UInt64) throws {
            guard let tables = patients else { return }
            let where_ = "entry \(index)"
            if entry.key.isEmpty {
                guard entry.payload.starts(with: Array(#"{"action":"#.utf8)),
                      let event = PatientPayload.decode(entry.payload), event["type"] as? String == "audit",
                      let patient = (event["patient"] as? String).flatMap({ Hash(hex: $0) }) else { return }
                patientCounts.auditEvents += 1
                // Its row is in pl.audit once folded, else still in pl.audit.recent.
                let folded = try view.withValue(tables.audit, key: AuditStorageKey(p: patient, index: index), { $0.isEmpty })
                let staged = try tables.auditRecent.flatMap { try view.withValue($0, key: index) { Hash($0) == patient } }
                if folded != nil && staged != nil {
                    report.add(.audit, where_, "audit event both in pl.audit and in pl.audit.recent")
                } else if (folded ?? staged) != true {
                    report.add(.audit, where_, "audit event missing from pl.audit and pl.audit.recent (the patient's accounting of disclosures), or its row is malformed")
                }
                if event["break_glass"] as? Bool == true {
                    patientCounts.breakGlassEvents += 1
                    if try view.value(tables.breakGlass, key: index) != patient.bytes {
                        report.add(.audit, where_, "break-glass event missing from pl.breakglass (the review list)")
                    }
                }
                return
            }
            let parts = entry.key.split(separator: "/", maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count >= 2, let p = Hash(hex: parts[1]), parts[1].utf8.count == 64 else { return }
            switch parts[0] {
            case "patient":
                guard let state = try patientState(p) else {
                    report.add(.patients, where_, "no pl.patients state for the patient this entry registers or erases")
                    return
                }
                if entry.operation == .set {
                    let registered = PatientPayload.decode(entry.payload)?["signing_key"] as? String
                    if registered != state.signingKey.map(Base64.encode) {
                        report.add(.patients, where_, "the signing key in pl.patients differs from the one this entry registered")
                    }
                }
                let expected: Bool = entry.operation == .set
                    ? (state.status == .active ? state.index == index : state.index > index)
                    : (state.status == .erased && state.index == index)
                if !expected { report.add(.patients, where_, "pl.patients state (status \(state.status), entry \(state.index)) does not match this entry") }
            case "record":
                guard parts.count == 3, let state = try patientState(p) else {
                    report.add(.records, where_, "record entry of a patient with no pl.patients state")
                    return
                }
                guard state.status == .active else { return }  // erasure deleted the ciphertexts
                patientCounts.liveRecordVersions += 1
                try recordEntry(entry, p: p, index: index, tables: tables)
            case "blob":
                guard parts.count == 3, let state = try patientState(p) else {
                    report.add(.blobs, where_, "blob manifest of a patient with no pl.patients state")
                    return
                }
                guard state.status == .active else { return }  // erasure deleted the blob indexes
                patientCounts.liveBlobVersions += 1
                try blobEntry(entry, index: index, tables: tables)
            case "grant":
                guard parts.count == 3, let state = try patientState(p) else {
                    report.add(.grants, where_, "grant entry of a patient with no pl.patients state")
                    return
                }
                guard state.status == .active else { return }  // erasure deleted the grants
                let key = p.bytes + Array(parts[2].utf8)
                let row = try view.value(tables.grants, key: key).flatMap { PatientPayload.decode($0) }
                let rowIndex = JSONValue.integer(row?["index"], as: UInt64.self) ?? 0
                let revokedIndex = JSONValue.integer(row?["revoked_index"], as: UInt64.self)
                // The row holds the grantee's latest grant, and its revocation when revoked.
                let matches = entry.operation == .set ? row != nil && rowIndex >= index
                                                      : row != nil && (rowIndex > index || revokedIndex == index)
                if !matches {
                    report.add(.grants, where_, entry.operation == .set
                        ? "pl.grants holds no grant for this grantee from this entry or a later one"
                        : "pl.grants does not record this revocation")
                }
            default:
                return
            }
        }

        private mutating func blobEntry(_ entry: LedgerEntry, index: UInt64, tables: PatientTables) throws {
            let where_ = "entry \(index)"
            guard let manifest = BlobManifest(entry: entry) else {
                report.add(.blobs, where_, "malformed blob manifest payload")
                return
            }
            guard let blobs = tables.blobs,
                  let stored = try view.withValue(blobs, key: PatientRecords.blobStorageKey(manifest.p, manifest.b, manifest.version), { BlobRow(decoding: $0) }) else {
                report.add(.blobs, where_, "pl.blobs has no index of version \(manifest.version) of this blob")
                return
            }
            guard let row = stored else {
                report.add(.blobs, where_, "unreadable pl.blobs row")
                return
            }
            report.blobVersions += 1
            if row.index != index { report.add(.blobs, where_, "pl.blobs row names entry \(row.index)") }
            if row.size != manifest.size || row.chunkSize != manifest.chunkSize || row.epoch != manifest.epoch {
                report.add(.blobs, where_, "pl.blobs row's size, chunk size or key epoch differs from the manifest")
                return  // the row's own layout cannot be trusted to read chunks by
            }
            guard ChunkTree(leaves: row.leaves).root == manifest.root else {
                report.add(.blobs, where_, "the stored chunk hashes do not give the manifest's root")
                return
            }
            guard verifier.options.checkBlobChunks else { return }
            let box = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(row.chunkSize) + BlobCrypto.overhead, alignment: 64)
            defer { box.deallocate() }
            var bad: [Int] = []
            for i in 0..<row.chunkCount {
                let length = row.sealedLength(i)
                let sealed = UnsafeMutableRawBufferPointer(rebasing: box[0..<length])
                do {
                    try segments.read(segment: row.segment, offset: row.sealedOffset(i), into: sealed)
                } catch {
                    report.add(.blobs, where_, "chunk \(i): \(error)")
                    return
                }
                report.blobBytesRehashed += UInt64(length)
                if SHA256.leafHash(UnsafeRawBufferPointer(sealed)) != row.leaves[i] { bad.append(i) }
            }
            if !bad.isEmpty {
                report.add(.blobs, where_, "\(bad.count) sealed chunks differ from their hashes (first: chunk \(bad[0]) in segment \(SegmentFile.fileName(row.segment)))")
            }
        }

        private mutating func recordEntry(_ entry: LedgerEntry, p: Hash, index: UInt64, tables: PatientTables) throws {
            let where_ = "entry \(index)"
            guard let payload = PatientPayload.decode(entry.payload),
                  let version = JSONValue.integer(payload["version"], as: UInt32.self),
                  let r = (payload["record"] as? String).flatMap({ Hash(hex: $0) }),
                  let hash = (payload["ciphertext_hash"] as? String).flatMap({ Hash(hex: $0) }) else {
                report.add(.records, where_, "record payload lacks version, record or ciphertext_hash")
                return
            }
            // Staged (pl.records.recent, keyed by the entry) or folded (pl.records, by record).
            let key = p.bytes + r.bytes + withUnsafeBytes(of: version.bigEndian) { Array($0) }
            let stagedRow = try tables.stagedRecords.flatMap { try view.value($0, key: index) }
            let foldedRow = try view.value(tables.records, key: key)
            let folded = recordsFolded
            if let stagedRow {
                if stagedRow != key { report.add(.records, where_, "pl.records.recent row names another record version") }
                if foldedRow != nil { report.add(.records, where_, "version \(version) is both staged and folded") }
                if index < folded { report.add(.records, where_, "staged below the fold point \(folded)") }
            } else if let foldedRow, foldedRow.count == 8 {
                let named = foldedRow.withUnsafeBytes { UInt64(bigEndianBytes: $0) }
                if named != index { report.add(.records, where_, "pl.records row of version \(version) names entry \(named ?? 0)") }
                if index >= folded { report.add(.records, where_, "folded at or past the fold point \(folded)") }
            } else if foldedRow == nil {
                report.add(.records, where_, "version \(version) is neither in pl.records nor in pl.records.recent")
                return
            }
            let copied = { (stored: StoredVersion) in (stored.index, stored.epoch, Array(stored.box)) }
            let stored: (index: UInt64, epoch: UInt32, box: [UInt8])?
            if let foldedRow, foldedRow.count != 8 {
                // The earlier layout: u64 index || u32 epoch || box in the row itself.
                patientCounts.inlineRecordBoxes += 1
                stored = foldedRow.withUnsafeBytes { RecordTables.split($0, version: version, index: nil).map(copied) }
            } else {
                stored = try tables.recordTables.withBox(view, index: index, version: version, copied)
            }
            guard let stored else {
                report.add(.records, where_, "ciphertext of version \(version) missing from pl.boxes (or its row malformed)")
                return
            }
            report.records += 1
            let (storedIndex, epoch, box) = stored
            if storedIndex != index { report.add(.records, where_, "pl.records row of version \(version) names entry \(storedIndex)") }
            if SHA256.hash(box) != hash { report.add(.records, where_, "stored ciphertext does not hash to the entry's ciphertext_hash") }
            if JSONValue.integer(payload["ciphertext_size"], as: Int.self) != box.count {
                report.add(.records, where_, "stored ciphertext is \(box.count) bytes, the entry says \(payload["ciphertext_size"] ?? "nothing")")
            }
            if let entryEpoch = JSONValue.integer(payload["key_epoch"], as: UInt32.self), entryEpoch != epoch {
                report.add(.records, where_, "pl.records row names key epoch \(epoch), the entry \(entryEpoch)")
            }
        }
    }
}

// MARK: - Patient tables

extension LedgerVerifier {
    /// Scans the patient layer's tables: every patient state and grant against its entries,
    /// and row counts against what the pass found (a surplus row is then located by a scan).
    func checkPatientTables(_ view: TransactionView, log: LogTables, tables: PatientTables, counts: PatientCounts) throws {
        func entry(_ index: UInt64) throws -> LedgerEntry? {
            guard index < report.treeSize else { return nil }
            return try view.withValue(log.entries, key: index) { try? LedgerEntry(decoding: $0) } ?? nil
        }

        let patientCount = try view.count(tables.patients)
        let generation = try view.value(tables.meta, key: "master.generation")
        let check = try view.value(tables.meta, key: "master.check")
        let folded = try view.value(tables.meta, key: StagedRecords.foldedKey)
        if try view.count(tables.meta) != (generation == nil && check == nil ? 0 : 2) + (folded == nil ? 0 : 1) {
            report.add(.patients, "pl.meta", "holds records other than master.generation, master.check and records.folded")
        }
        if let folded, folded.count != 8 || folded.withUnsafeBytes({ UInt64(bigEndianBytes: $0)! }) > report.treeSize {
            report.add(.records, "pl.meta records.folded", "malformed or past the end of the log")
        }
        if patientCount > 0, generation?.count != 8 || check?.count != PatientRecords.checkText.count + AESGCM.overhead {
            report.add(.patients, "pl.meta", "master.generation or master.check is missing or malformed")
        }
        if let masterKey = options.masterKey, let generation, let check, generation.count == 8 {
            let g = generation.withUnsafeBytes { UInt64(bigEndianBytes: $0) } ?? 0
            if (try? PatientRecords.keyOpening(check, generation: g, in: masterKey)) == nil {
                report.add(.patients, "pl.meta master.check", "does not open under the given master key (generation \(g))")
            }
        }
        try view.withCursor(tables.patients) { cursor in
            var more = try cursor.first()
            while more {
                let (key, state) = cursor.withCurrent { key, value in (Array(key), PatientState(decoding: value)) }
                more = try cursor.next()
                report.patients += 1
                let where_ = "pl.patients \(Hex.encode(key))"
                guard key.count == 32, let p = Hash(key), let state else {
                    report.add(.patients, where_, "malformed patient state")
                    continue
                }
                let active = state.status == .active
                if let generation, generation.count == 8, state.generation != generation.withUnsafeBytes({ UInt64(bigEndianBytes: $0) }) {
                    report.add(.patients, where_, "wrapped under generation \(state.generation), not the ledger's current one")
                }
                if active ? (state.wrappedKeys.isEmpty || state.wrappedKeys.contains { $0.count != 32 + AESGCM.overhead })
                          : !state.wrappedKeys.isEmpty {
                    report.add(.patients, where_, active ? "wrapped data keys missing or malformed" : "an erased patient still holds wrapped keys")
                }
                if active, let masterKey = options.masterKey {
                    for (n, wrapped) in state.wrappedKeys.enumerated() {
                        let epoch = UInt32(n + 1)
                        var raw = masterKey.key(generation: state.generation).flatMap {
                            try? AESGCM.open(wrapped, key: $0, associatedData: PatientRecords.dataKeyAAD(p, state.generation, epoch))
                        }
                        if raw == nil {
                            report.add(.patients, where_, "wrapped data key of epoch \(epoch) does not open under the master key")
                        } else {
                            secureZero(&raw!)
                        }
                    }
                }
                let named = try entry(state.index)
                if named?.key != PatientPayload.patientKey(p) || named?.operation != (active ? .set : .delete) {
                    report.add(.patients, where_, "entry \(state.index) is not this patient's \(active ? "registration" : "erasure")")
                }
            }
        }

        try view.withCursor(tables.grants) { cursor in
            var more = try cursor.first()
            while more {
                let (key, row) = cursor.withCurrent { key, value in (Array(key), PatientPayload.decode(Array(value))) }
                more = try cursor.next()
                report.grants += 1
                let where_ = "pl.grants \(Hex.encode(key.prefix(32)))/\(String(decoding: key.dropFirst(32), as: UTF8.self))"
                guard key.count > 32, let p = Hash(key.prefix(32)), var row, let index = JSONValue.integer(row["index"], as: UInt64.self) else {
                    report.add(.grants, where_, "malformed grant row")
                    continue
                }
                let grantKey = PatientPayload.grantKey(p, String(decoding: key.dropFirst(32), as: UTF8.self))
                let revokedIndex = JSONValue.integer(row["revoked_index"], as: UInt64.self)
                let revokedAt = row["revoked_at"] as? NSNumber
                if (revokedIndex == nil) != (revokedAt == nil) {
                    report.add(.grants, where_, "revoked_at and revoked_index must come together")
                }
                // A sealed key is an AES-GCM box under a key only its grantee derives; its tag
                // under the master key file's secret lets verify check it (given the file).
                let macs = row["sealed_macs"] as? [String: Any]
                if let sealed = row["sealed_keys"] {
                    let epochs = try tables.state(view, p)?.epoch ?? 0
                    let grantee = String(decoding: key.dropFirst(32), as: UTF8.self)
                    let keys = sealed as? [String: Any] ?? [:]
                    if Set(keys.keys) != Set((macs ?? [:]).keys) {
                        report.add(.grants, where_, "sealed_macs does not cover exactly the sealed keys")
                    } else if let masterKey = options.masterKey {
                        for (epoch, value) in keys {
                            let expected = (value as? String).map {
                                PatientRecords.sealedKeyMAC(masterKey.pseudonymMAC, p, grantee, UInt32(epoch) ?? 0, $0)
                            }
                            if expected == nil || expected != macs?[epoch] as? String {
                                report.add(.grants, where_, "the sealed key of epoch \(epoch) does not match its tag under the master key")
                            }
                        }
                    }
                    let wellFormed = (sealed as? [String: Any]).map { keys in
                        !keys.isEmpty && keys.allSatisfy { epoch, value in
                            UInt32(epoch).map { $0 >= 1 && $0 <= epochs && String($0) == epoch } == true
                                && (value as? String).flatMap(Base64.decode)?.count == 92
                        }
                    } ?? false
                    if !wellFormed || row["grantee_x25519"] == nil {
                        report.add(.grants, where_, "sealed_keys malformed, of an unknown key epoch, or without grantee_x25519")
                    }
                } else if macs != nil {
                    report.add(.grants, where_, "sealed_macs without sealed keys")
                }
                for extra in ["index", "sealed_keys", "sealed_macs", "revoked_at", "revoked_index"] { row[extra] = nil }
                let granted = try entry(index)
                if granted?.key != grantKey || granted?.operation != .set || granted?.payload != PatientPayload.encode(row) {
                    report.add(.grants, where_, "entry \(index) is not this grant")
                }
                if let revokedIndex {
                    let revoked = try entry(revokedIndex)
                    let revokedPayload = revoked.flatMap { PatientPayload.decode($0.payload) }
                    if revoked?.key != grantKey || revoked?.operation != .delete || revokedPayload?["revoked_at"] as? NSNumber != revokedAt {
                        report.add(.grants, where_, "entry \(revokedIndex) is not this grant's revocation")
                    }
                }
                let status = try tables.state(view, p)?.status
                if status != .active {
                    report.add(.grants, where_, "grant row of a patient who is erased or unknown")
                }
            }
        }

        // Each live record version, audit and break-glass event found its row in the pass;
        // a count above that means surplus rows, which a scan then names.
        if let blobs = tables.blobs, try view.count(blobs) != counts.liveBlobVersions {
            report.add(.blobs, "pl.blobs", "holds \(try view.count(blobs)) rows, the log has \(counts.liveBlobVersions) blob versions of unerased patients")
        }
        // Every live version has one row in pl.records or pl.records.recent and, unless its
        // row holds it (the earlier layout), one box in pl.boxes.
        let stagedRecordRows = try tables.stagedRecords.map { try view.count($0) } ?? 0
        let recordRows = try view.count(tables.records) + stagedRecordRows
        if recordRows != counts.liveRecordVersions {
            report.add(.records, "pl.records", "pl.records and pl.records.recent hold \(recordRows) rows, the log has \(counts.liveRecordVersions) versions of unerased patients")
            try view.withCursor(tables.records) { cursor in
                var more = try cursor.first()
                while more {
                    let (key, index) = cursor.withCurrent { key, value in
                        (Array(key), value.count >= 8 ? UInt64(bigEndian: value.loadUnaligned(as: UInt64.self)) : UInt64.max)
                    }
                    more = try cursor.next()
                    guard key.count == 68, let p = Hash(key.prefix(32)), let r = Hash(key[32..<64]) else {
                        report.add(.records, "pl.records \(Hex.encode(key))", "malformed key")
                        continue
                    }
                    let named = try entry(index)
                    let status = try tables.state(view, p)?.status
                    if named?.key != PatientPayload.recordKey(p, r) || status != .active {
                        report.add(.records, "pl.records \(Hex.encode(key))", "row has no record entry of an unerased patient")
                    }
                }
            }
            if let staged = tables.stagedRecords {
                try scanRecordIndex(view, staged, name: "pl.records.recent", tables: tables, entry: entry)
            }
        }
        var boxCount = 0
        try tables.recordTables.forEachBox(view) { index, _ in if index != nil { boxCount += 1 } }
        if boxCount != counts.liveRecordVersions - counts.inlineRecordBoxes {
            report.add(.records, "pl.boxes", "holds \(boxCount) boxes, the log has \(counts.liveRecordVersions - counts.inlineRecordBoxes) versions of unerased patients stored there")
            try tables.recordTables.forEachBox(view) { index, rowKey in
                guard let index else {
                    report.add(.records, "pl.boxes \(Hex.encode(rowKey))", "malformed row")
                    return
                }
                try checkRecordIndexRow(view, index, name: "pl.boxes", rowKey: rowKey, tables: tables, entry: entry)
            }
        }
        let stagedRows = try tables.auditRecent.map { try view.count($0) } ?? 0
        let auditRows = try view.count(tables.audit) + stagedRows
        report.auditEvents = UInt64(counts.auditEvents)
        if auditRows != counts.auditEvents {
            report.add(.audit, "pl.audit", "pl.audit and pl.audit.recent hold \(auditRows) rows, the log has \(counts.auditEvents) audit events")
            try scanIndex(view, tables.audit, keyBytes: 40, name: "pl.audit", entry: entry) { key in
                key.withUnsafeBytes { UInt64(bigEndianBytes: UnsafeRawBufferPointer(rebasing: $0[32..<40])) } ?? .max
            }
            if let recent = tables.auditRecent {
                try scanIndex(view, recent, keyBytes: 8, name: "pl.audit.recent", entry: entry) { key in
                    key.withUnsafeBytes { UInt64(bigEndianBytes: $0) } ?? .max
                }
            }
        }
        let breakGlassRows = try view.count(tables.breakGlass)
        if breakGlassRows != counts.breakGlassEvents {
            report.add(.audit, "pl.breakglass", "holds \(breakGlassRows) rows, the log has \(counts.breakGlassEvents) break-glass events")
            try scanIndex(view, tables.breakGlass, keyBytes: 8, name: "pl.breakglass", entry: entry) { key in
                key.withUnsafeBytes { UInt64(bigEndianBytes: $0) } ?? .max
            }
        }
    }

    /// Names the rows of a table keyed by entry index (`pl.records.recent`, `pl.boxes`) whose
    /// entry is not a record version of an unerased patient.
    private func scanRecordIndex(_ view: TransactionView, _ db: Database, name: String, tables: PatientTables,
                                 entry: (UInt64) throws -> LedgerEntry?) throws {
        try view.withCursor(db) { cursor in
            var more = try cursor.first()
            while more {
                let key = cursor.withCurrent { key, _ in Array(key) }
                more = try cursor.next()
                try key.withUnsafeBytes { key in
                    try checkRecordIndexRow(view, UInt64(bigEndianBytes: key), name: name, rowKey: key, tables: tables, entry: entry)
                }
            }
        }
    }

    /// Names a record index's row (under `rowKey`) for entry `index` when that entry is not a
    /// record version of an unerased patient.
    private func checkRecordIndexRow(_ view: TransactionView, _ index: UInt64?, name: String, rowKey: UnsafeRawBufferPointer,
                                     tables: PatientTables, entry: (UInt64) throws -> LedgerEntry?) throws {
        let named = try index.flatMap(entry)
        let payload = named.flatMap { PatientPayload.decode($0.payload) }
        let p = payload?["type"] as? String == "record" ? (payload?["patient"] as? String).flatMap { Hash(hex: $0) } : nil
        let status = try p.flatMap { try tables.state(view, $0)?.status }
        if status != .active {
            report.add(.records, "\(name) \(Hex.encode(rowKey))" + (index.map { " entry \($0)" } ?? ""),
                       "row names no record entry of an unerased patient")
        }
    }

    /// Names the rows of an audit index whose entry is not an audit event.
    private func scanIndex(_ view: TransactionView, _ db: Database, keyBytes: Int, name: String,
                           entry: (UInt64) throws -> LedgerEntry?, index: ([UInt8]) -> UInt64) throws {
        try view.withCursor(db) { cursor in
            var more = try cursor.first()
            while more {
                let key = cursor.withCurrent { key, _ in Array(key) }
                more = try cursor.next()
                let named = key.count == keyBytes ? try entry(index(key)) : nil
                let isAudit = named.map { $0.key.isEmpty && PatientPayload.decode($0.payload)?["type"] as? String == "audit" } ?? false
                if !isAudit { report.add(.audit, "\(name) \(Hex.encode(key))", "row names no audit event") }
            }
        }
    }
}
