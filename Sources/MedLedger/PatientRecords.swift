import Foundation
import LMDBKit
public import LedgerCrypto
import MerkleLog
import SparseMerkle

/// The patient layer of DESIGN.md section 4 over a ``Ledger``: pseudonymous patients with
/// their own data keys, encrypted records, grants and revocation, break-glass reads, an audit
/// entry for every read, erasure by key destruction, and FHIR export with proofs.
///
/// What the log holds (anyone replaying it sees this): keyed pseudonyms, keyed record hashes,
/// the hash and size of each ciphertext, grants (grantee, scope, expiry), audit events and
/// erasures. What stays in private LMDB tables next to it, written in the same transaction:
/// wrapped data keys and the ciphertexts. Plaintext and unwrapped keys are never stored.
///
/// For example:
/// ```swift
/// let records = try PatientRecords(ledger: ledger, masterKey: MasterKeyFile(path: "master.key"))
/// try records.addPatient(externalId: "Patient/123")
/// try records.putRecord(patient: "Patient/123", recordId: "obs-1", content: fhirJSON)
/// try records.grant(patient: "Patient/123", to: "dr-lee", granteeKey: key, notAfter: nextWeek)
/// let record = try records.read(patient: "Patient/123", recordId: "obs-1", as: .grantee("dr-lee"))
/// ```
///
/// Thread safety: safe to share; reads run concurrently and their audit entries are committed
/// together (group commit); writes are serialized.
public final class PatientRecords: @unchecked Sendable {
    // Sendable: databases are immutable handles; `writeLock` serializes writes and rotations;
    // `versionRecheckLock` guards `versionRecheckCount`; `clock` is set before sharing.
    public let ledger: Ledger
    public let masterKey: MasterKeyFile
    /// The time source for grant expiry and audit timestamps (tests move it).
    public var clock: @Sendable () -> Date = { Date() }
    /// Largest record content accepted (imaging belongs in the blob store).
    public static let maxContentBytes = 16 << 20

    let meta: Database
    let patients: Database
    let records: Database
    let grants: Database
    let audits: Database
    /// `pl.audit.recent`: audit events not yet folded into `pl.audit`; nil only in a read-only
    /// ledger written before it existed, until a writer creates it (looked up again then).
    var auditRecent: Database? {
        auditRecentLock.withLock { lookedUp(&auditRecentHandle, "pl.audit.recent") }
    }

    /// `handle`, or else database `name` if a writer has created it since (still nil if not).
    /// Called under `auditRecentLock`.
    private func lookedUp(_ handle: inout Database?, _ name: String) -> Database? {
        if handle == nil { handle = try? ledger.environment.openDatabase(name, create: false) }
        return handle
    }
    private var auditRecentHandle: Database?
    /// Guards `auditRecentHandle`, `stagedRecordsHandle` and `boxesHandle`; LMDB also forbids
    /// opening databases from two threads at once.
    private let auditRecentLock = NSLock()
    /// The tables of record versions (`RecordIndex.swift`); `pl.records.recent` and `pl.boxes`
    /// are looked up again, in a read-only ledger written before they existed, until a writer
    /// has created them.
    var recordTables: RecordTables {
        auditRecentLock.withLock {
            RecordTables(meta: meta, folded: records, staged: lookedUp(&stagedRecordsHandle, "pl.records.recent"),
                         boxes: lookedUp(&boxesHandle, "pl.boxes"))
        }
    }
    private var stagedRecordsHandle: Database?
    private var boxesHandle: Database?
    /// The staged record versions by record, shared by this layer's threads.
    let stagedRecords = StagedRecords()
    /// The write transactions this layer's audit commits made, so that a put overtaken by
    /// them alone skips checking its versions again.
    let auditCommitIDs = CommitIDs()
    /// How often a put checked its versions again (for tests).
    var versionRechecks: Int { versionRecheckLock.withLock { versionRecheckCount } }
    private let versionRecheckLock = NSLock()
    private var versionRecheckCount = 0
    /// The fewest staged record rows that are folded into `pl.records` (tests lower it).
    var minimumRecordFold = 65_536
    let breakGlass: Database
    /// `pl.blobs`; nil only in a read-only ledger written before blobs existed.
    let blobs: Database?
    /// Read handles of blob segment files.
    let segmentReaders: SegmentReaders
    /// Serializes writes, rotations and exports.
    let writeLock = NSLock()
    private(set) var auditCommitter: AuditCommitter!
    /// Tests only: runs between a put's read snapshot and its write transaction, to commit
    /// what another process might commit there.
    var afterPutSnapshot: (() throws -> Void)?
    /// The fewest staged audit rows that are folded into `pl.audit` (tests lower it).
    var minimumAuditFold = 65_536
    /// Tests only: runs inside each attempt of an erasure's write, once its rotation has begun
    /// (the attempt number, from 0), to read the key file there or make the write retry.
    var duringErasureWrite: ((Int) throws -> Void)?
    /// Tests only: runs after an erasure committed, before it rewrites the key file with the
    /// new generation alone, to read the file there as another process might.
    var afterErasureCommit: (() -> Void)?

    /// Opens the patient layer of `ledger` with `masterKey`, binding the key to the ledger on
    /// first use and finishing (or undoing) a key rotation an earlier process left half done.
    /// - Throws: ``LedgerError`` `.wrongMasterKey` when the key file belongs to another ledger
    ///   or generation; `.storage`.
    public init(ledger: Ledger, masterKey: MasterKeyFile) throws {
        self.ledger = ledger
        self.masterKey = masterKey
        let environment = ledger.environment
        let create = !environment.isReadOnly
        let open = { (txn: borrowing Transaction) throws -> PatientTables? in
            let tables = try PatientTables(txn.unsafeView, create: create)
            // A format-2 ledger's writers do not know pl.records.recent and pl.boxes, a format-3
            // ledger's do not know runs of boxes: mark it 4.
            if create, let format = try txn.value(ledger.ledgerMeta, key: "format").flatMap({ $0.withUnsafeBytes { UInt64(bigEndianBytes: $0) } }),
               format == 2 || format == 3 {
                try txn.put(ledger.ledgerMeta, key: "format", value: Ledger.format)
            }
            return tables
        }
        let tables = try Ledger.storage { create ? try environment.write(open) : try environment.read(open) }
        guard let tables else { throw LedgerError(.ledgerNotFound, "\(ledger.path) holds no patient records") }
        (meta, patients, records, grants, audits, breakGlass) = (tables.meta, tables.patients, tables.records, tables.grants, tables.audit, tables.breakGlass)
        blobs = tables.blobs
        auditRecentHandle = tables.auditRecent
        (stagedRecordsHandle, boxesHandle) = (tables.stagedRecords, tables.boxes)
        segmentReaders = SegmentReaders(ledgerPath: ledger.path)
        auditCommitter = AuditCommitter(records: self)
        try bindMasterKey()
    }

    // MARK: - Master key

    static let checkText = Array("medledger master key check".utf8)
    static func checkAAD(_ generation: UInt64) -> [UInt8] { Array("medledger-key-check/1|\(generation)".utf8) }

    private func bindMasterKey() throws {
        let environment = ledger.environment
        var check = try Ledger.storage { try environment.read { txn in try storedKeyCheck(txn.unsafeView) } }
        if !environment.isReadOnly, check == nil || masterKey.previousGeneration != nil || masterKey.generation != check?.0 {
            // A first bind or an interrupted erasure's rotation: settled inside a write
            // transaction, so that no other process rotates the key file meanwhile.
            check = try Ledger.storage {
                try environment.write { txn in
                    let view = txn.unsafeView
                    guard let stored = try storedKeyCheck(view) else {
                        try writeKeyCheck(view, generation: masterKey.generation)
                        return nil
                    }
                    try masterKey.settle(committed: stored.0)
                    return stored
                }
            }
        }
        guard let (generation, sealedCheck) = check else { return }
        guard try Self.keyOpening(sealedCheck, generation: generation, in: masterKey) != nil else {
            throw LedgerError(.wrongMasterKey, "the master key file \(masterKey.path) does not belong to this ledger (or is an old generation)")
        }
    }

    /// The key of `generation` in `file` that opens the ledger's key check `sealedCheck`, or
    /// nil. The file is read once more before giving up: it may have been read just before
    /// another process's erasure committed, or during an attempt that erasure then retried.
    /// - Throws: ``LedgerError`` when the file cannot be read again or belongs to another ledger.
    static func keyOpening(_ sealedCheck: [UInt8], generation: UInt64, in file: MasterKeyFile) throws -> SecureBytes? {
        for attempt in 0..<2 {
            if attempt > 0 { try file.reload() }
            if let key = file.key(generation: generation),
               (try? AESGCM.open(sealedCheck, key: key, associatedData: checkAAD(generation))) == checkText { return key }
        }
        return nil
    }

    /// Why no key of `generation` can be had: an older one was destroyed by an erasure that
    /// committed after the snapshot that named it was taken (a retry reads the new one), a
    /// newer one is missing from the key file.
    func missingGeneration(_ generation: UInt64) -> LedgerError {
        if generation < masterKey.generation {
            return LedgerError(.wrongMasterKey, "master key generation \(generation) was destroyed by an erasure after this snapshot was taken; retry")
        }
        return LedgerError(.wrongMasterKey, "the master key file \(masterKey.path) holds no key of generation \(generation)")
    }

    /// The master key generation the ledger uses and its key check; nil before the first bind.
    private func storedKeyCheck(_ view: TransactionView) throws -> (UInt64, [UInt8])? {
        guard let g = try view.value(meta, key: "master.generation"), let check = try view.value(meta, key: "master.check") else { return nil }
        guard let generation = g.withUnsafeBytes({ UInt64(bigEndianBytes: $0) }) else {
            throw LedgerError(.storage, "malformed pl.meta master.generation")
        }
        return (generation, check)
    }

    /// The master key generation the ledger uses, read inside `view`: a writer wraps keys under
    /// it, not under the generation its key file had when it was read (another process may have
    /// rotated it since).
    func storedGeneration(_ view: TransactionView) throws -> UInt64 {
        guard let (generation, _) = try storedKeyCheck(view) else { throw LedgerError(.storage, "the ledger has no master key generation") }
        return generation
    }

    /// Finishes or undoes the key file's rotation by the generation the ledger committed, in a
    /// write transaction of its own (so that no other process rotates meanwhile).
    private func settleMasterKey() throws {
        try Ledger.storage {
            try ledger.environment.write { txn in try masterKey.settle(committed: try storedGeneration(txn.unsafeView)) }
        }
    }

    private func writeKeyCheck(_ view: TransactionView, generation: UInt64) throws {
        guard let key = masterKey.key(generation: generation) else { throw LedgerError(.wrongMasterKey, "no key for generation \(generation)") }
        try writeKeyCheck(view, generation: generation, key: key)
    }

    private func writeKeyCheck(_ view: TransactionView, generation: UInt64, key: SecureBytes) throws {
        try view.put(meta, key: "master.generation", value: generation)
        try view.put(meta, key: "master.check", value: try AESGCM.seal(Self.checkText, key: key, associatedData: Self.checkAAD(generation)))
    }

    // MARK: - Names and keys

    /// The keyed pseudonym the log uses for a patient: HMAC-SHA-256 under the ledger secret.
    public func pseudonym(of externalId: String) throws -> Hash {
        Self.withPseudonymLabel(externalId) { masterKey.pseudonymMAC.authenticationCode(for: $0) }
    }

    func recordHash(_ pseudonym: Hash, _ recordId: String) throws -> Hash {
        Self.withRecordHashLabel(pseudonym, recordId) { masterKey.pseudonymMAC.authenticationCode(for: $0) }
    }

    /// A record version's associated data from the hex names an export carries; equal to
    /// ``recordAAD(_:_:_:)`` for the hex of `p` and `r`.
    static func recordAAD(patient: String, record: String, version: UInt32) -> [UInt8] {
        Array("medledger-record/1|\(patient)|\(record)|\(version)".utf8)
    }

    /// The patient's data key of `epoch` (the current one when nil), unwrapped.
    func unwrap(_ state: PatientState, _ p: Hash, epoch: UInt32? = nil) throws -> SecureBytes {
        try unwrap(state, p, epoch: epoch) { wrapped, master, aad in try AESGCM.open(sealed: wrapped, key: master, associatedData: aad) }
    }

    /// ``unwrap(_:_:epoch:)`` with a batch's opener for the master key, which expands the key once.
    func unwrap(_ state: PatientState, _ p: Hash, epoch: UInt32? = nil, openers: inout BatchOpeners) throws -> SecureBytes {
        try unwrap(state, p, epoch: epoch) { wrapped, master, aad in
            try openers.master(state.generation, key: master).open(sealed: wrapped, key: nil, associatedData: aad)
        }
    }

    private func unwrap(_ state: PatientState, _ p: Hash, epoch: UInt32?,
                        open: (UnsafeRawBufferPointer, SecureBytes, UnsafeRawBufferPointer) throws -> [UInt8]) throws -> SecureBytes {
        guard state.status == .active else { throw LedgerError(.erased, "the patient was erased") }
        let epoch = epoch ?? state.epoch
        guard epoch >= 1, epoch <= state.epoch else { throw LedgerError(.storage, "no patient data key of epoch \(epoch)") }
        // A key that does not open may have been read from the key file while another
        // process's erasure was under way (its new generation, which a retry then replaced):
        // the file is read once more before the key counts as wrong.
        for attempt in 0..<2 {
            guard let master = try masterKey(generation: state.generation, reread: attempt > 0) else {
                throw missingGeneration(state.generation)
            }
            do {
                var raw = try state.wrappedKeys[Int(epoch) - 1].withUnsafeBytes { wrapped in
                    try Self.withDataKeyAAD(p, state.generation, epoch) { try open(wrapped, master, $0) }
                }
                defer { secureZero(&raw) }
                return raw.withUnsafeBytes { SecureBytes(copying: $0) }
            } catch where attempt == 0 {
                continue
            } catch {
                break
            }
        }
        throw LedgerError(.wrongMasterKey, "a patient data key does not open under the master key")
    }

    /// The master key of `generation`: from memory, else (or when `reread`) after reading the
    /// key file again, since another process or instance may have rotated it.
    /// - Throws: ``LedgerError`` `.keyFile` or `.wrongMasterKey` when the file cannot be read
    ///   again or now belongs to another ledger.
    ///
    /// `generation` comes from a patient's state, which an erasure moves to its new generation
    /// in the transaction that destroys the old one: every older generation memory holds (read
    /// from the file between another process's erasure commit and its rewrite of the file) is
    /// forgotten here, not kept until the next erasure. The file still holds any such
    /// generation that no erasure destroyed, and gives it back when it is read again.
    func masterKey(generation: UInt64, reread: Bool = false) throws -> SecureBytes? {
        if !reread, let key = masterKey.key(generation: generation, forgettingOlder: true) { return key }
        try masterKey.reload()
        return masterKey.key(generation: generation, forgettingOlder: true)
    }

    /// The generation the ledger uses in `view` (a write transaction) and its key, checked
    /// against the ledger's key check: keys wrapped in `view` must open for every later
    /// reader, so neither a generation an erasure destroyed nor a key read from the file while
    /// another process's erasure was under way will do.
    func committedMasterKey(_ view: TransactionView) throws -> (generation: UInt64, key: SecureBytes) {
        guard let (generation, check) = try storedKeyCheck(view) else {
            throw LedgerError(.storage, "the ledger has no master key generation")
        }
        if let key = try Self.keyOpening(check, generation: generation, in: masterKey) { return (generation, key) }
        throw LedgerError(.wrongMasterKey, "the master key file \(masterKey.path) holds no key that opens the ledger's key check of generation \(generation)")
    }

    /// The key of one record version: HMAC-SHA-256(data key, label). Exports hand it out to
    /// let a recipient check that version alone.
    static func recordKey(dataKey: SecureBytes, patient: String, record: String, version: UInt32) throws -> SecureBytes {
        var derived = try HMACSHA256.authenticationCode(for: Array("medledger-record-key/1|\(patient)|\(record)|\(version)".utf8), key: dataKey)
        defer { secureZero(&derived) }
        return derived.withUnsafeBytes { SecureBytes(copying: $0) }
    }

    func patientState(_ view: TransactionView, _ p: Hash) throws -> PatientState? {
        let found = try p.withUnsafeBytes { key in try view.withValue(patients, key: key) { PatientState(decoding: $0) } }
        guard let found else { return nil }
        guard let state = found else { throw LedgerError(.storage, "unreadable patient state") }
        return state
    }

    func requirePatient(_ view: TransactionView, _ p: Hash) throws -> PatientState {
        guard let state = try patientState(view, p) else { throw LedgerError(.patientNotFound, "no such patient") }
        return state
    }

    private static func recordStorageKey(_ p: Hash, _ r: Hash, _ version: UInt32) -> RecordStorageKey {
        RecordStorageKey(p: p, r: r, version: version)
    }

    /// The newest version stored under `p || r || u32 version` keys of `db` (0 when none):
    /// `pl.records` and `pl.blobs` share that layout.
    static func lastVersion(_ view: TransactionView, in db: Database, _ p: Hash, _ r: Hash) throws -> UInt32 {
        try withNewestRow(view, in: db, p, r) { version, _ in version } ?? 0
    }

    /// `body` with the newest stored version of a record and its row, as LMDB holds it; nil
    /// when the record has none. One cursor both finds the row and lends it, so a read of the
    /// newest version searches the table once.
    static func withNewestRow<T>(_ view: TransactionView, in db: Database, _ p: Hash, _ r: Hash,
                                 _ body: (UInt32, UnsafeRawBufferPointer) throws -> T) throws -> T? {
        let highest = RecordStorageKey(p: p, r: r, version: .max)
        return try view.withCursor(db) { cursor in
            let found = try cursor.seek(atOrAfter: highest)
            let atHighest = found && cursor.withCurrent { key, _ in highest.sameRecord(key) && Self.version(ofStorageKey: key) == .max }
            if !atHighest { guard found ? try cursor.previous() : try cursor.last() else { return nil } }
            return try cursor.withCurrent { key, value in
                highest.sameRecord(key) ? try body(Self.version(ofStorageKey: key), value) : nil
            }
        }
    }

    /// The version in a `pl.records` key (its last four bytes, big-endian).
    private static func version(ofStorageKey key: UnsafeRawBufferPointer) -> UInt32 {
        UInt32(bigEndian: key.loadUnaligned(fromByteOffset: 64, as: UInt32.self))
    }

    /// Identifies one unwrapped data key in a per-call cache.
    private struct EpochKey: Equatable {
        let p: Hash
        let epoch: UInt32
    }

    /// The data key of `epoch`, unwrapped once while it stays among the `cache`'s recent keys.
    private func dataKey(_ state: PatientState, _ p: Hash, epoch: UInt32, cache: inout RecentValues<EpochKey, SecureBytes>,
                         openers: inout BatchOpeners) throws -> SecureBytes {
        try cache.value(for: EpochKey(p: p, epoch: epoch)) { try unwrap(state, p, epoch: epoch, openers: &openers) }
    }

    /// Opens a stored version's box; nil when it fails authentication (a damaged store). The
    /// caller wipes the plaintext.
    private static func openRecord(_ box: [UInt8], dataKey: SecureBytes, p: Hash, r: Hash, version: UInt32) throws -> [UInt8]? {
        let key = try recordKey(dataKey: dataKey, p, r, version)
        return try? AESGCM.open(box, key: key, associatedData: recordAAD(p, r, version))
    }

    /// The stored ciphertext of a record version and the key epoch that sealed it.
    func storedBox(_ p: Hash, _ r: Hash, _ version: UInt32) throws -> (epoch: UInt32, box: [UInt8]) {
        try Ledger.storage {
            let tables = recordTables  // before the transaction: finding them may open them
            return try ledger.environment.read { txn in
                let view = txn.unsafeView
                let lens = try stagedRecords.lens(view, tables: tables)
                guard let stored = try tables.withVersion(view, lens, p, r, version: version, { ($0.epoch, Array($0.box)) }) else {
                    throw LedgerError(.recordNotFound, "no such record version")
                }
                return try stored.get()
            }
        }
    }

    /// A patient's unwrapped data key of `epoch` (wiped when released).
    func dataKey(_ p: Hash, epoch: UInt32) throws -> SecureBytes {
        let state = try Ledger.storage { try ledger.environment.read { txn in try requirePatient(txn.unsafeView, p) } }
        return try unwrap(state, p, epoch: epoch)
    }

    /// Opens a record box offline with the patient's data key of the box's epoch (from a
    /// ``SealedPatientKey``), as a grantee does with an export.
    /// - Parameters: `pseudonym`, `recordHash` and `version` as the record's log entry names them.
    /// - Returns: the record's id, media type and content; wipe the content when done.
    /// - Throws: ``LedgerError`` `.badSignature` when the box does not open under that key.
    public static func openRecordBox(_ box: [UInt8], dataKey: SecureBytes, pseudonym: Hash, recordHash: Hash,
                                     version: UInt32) throws -> (recordId: String, mediaType: String, content: [UInt8]) {
        guard var plaintext = try openRecord(box, dataKey: dataKey, p: pseudonym, r: recordHash, version: version) else {
            throw LedgerError(.badSignature, "the record box does not open under this data key")
        }
        defer { secureZero(&plaintext) }
        guard let parts = RecordPlaintext.decode(plaintext) else { throw LedgerError(.invalidRecord, "malformed record plaintext") }
        return (parts.recordId, parts.mediaType, parts.content)
    }

    // MARK: - Patients

    /// Registers a patient: a fresh 256-bit data key wrapped under the master key, and a
    /// `patient/<pseudonym>` entry in the log. With `signingKey`, grants for this patient
    /// must carry the patient's signature.
    /// - Returns: the pseudonym and the registration entry's index.
    /// - Throws: ``LedgerError`` `.patientExists`, `.invalidArgument` for an empty id.
    @discardableResult
    public func addPatient(externalId: String, signingKey: Ed25519PublicKey? = nil) throws -> (pseudonym: Hash, index: UInt64) {
        try addPatients([(externalId, signingKey)])[0]
    }

    /// Registers many patients in one transaction (one commit): all or none.
    @discardableResult
    public func addPatients(_ patients: [(externalId: String, signingKey: Ed25519PublicKey?)]) throws -> [(pseudonym: Hash, index: UInt64)] {
        var prepared: [(p: Hash, signingKey: [UInt8]?)] = []
        var entries: [LedgerEntry] = []
        writeLock.lock()
        defer { writeLock.unlock() }
        var seen = Set<Hash>()
        for (externalId, signingKey) in patients {
            guard !externalId.isEmpty, externalId.utf8.count <= 1024 else { throw LedgerError(.invalidArgument, "patient id must be 1 to 1024 bytes") }
            let p = try pseudonym(of: externalId)
            guard seen.insert(p).inserted else { throw LedgerError(.patientExists, "a patient id appears twice in the batch") }
            var payload: [String: Any] = ["type": "patient", "v": 1, "patient": p.hex]
            if let signingKey { payload["signing_key"] = Base64.encode(signingKey.rawRepresentation) }
            prepared.append((p, signingKey?.rawRepresentation))
            entries.append(try LedgerEntry(set: PatientPayload.patientKey(p), payload: PatientPayload.encode(payload)))
        }
        guard !entries.isEmpty else { return [] }
        let first = try ledger.append(entries) { view, first in
            // Wrapped here, under the generation the ledger holds in this transaction: an
            // erasure in another process may have rotated the key file since it was read.
            let (generation, master) = try self.committedMasterKey(view)
            for (i, item) in prepared.enumerated() {
                if try self.patientState(view, item.p) != nil { throw LedgerError(.patientExists, "a patient with that id is already registered") }
                var rawKey = try SecureRandom.bytes(32)
                defer { secureZero(&rawKey) }
                let wrapped = try AESGCM.seal(rawKey, key: master, associatedData: Self.dataKeyAAD(item.p, generation, 1))
                let state = PatientState(status: .active, index: first + UInt64(i), generation: generation, wrappedKeys: [wrapped],
                                         signingKey: item.signingKey)
                try view.put(self.patients, key: item.p.bytes, value: state.encoded())
            }
        }
        return prepared.enumerated().map { i, item in (item.p, first + UInt64(i)) }
    }

    // MARK: - Records

    /// One record version to store.
    public struct RecordInput: Sendable {
        public var patient: String
        public var recordId: String
        public var content: [UInt8]
        public var mediaType: String
        public init(patient: String, recordId: String, content: [UInt8], mediaType: String = "application/fhir+json") {
            self.patient = patient
            self.recordId = recordId
            self.content = content
            self.mediaType = mediaType
        }
    }

    /// Stores a new version of a record (FHIR R4 JSON by default, or any bytes with their
    /// media type), encrypted under the patient's key.
    @discardableResult
    public func putRecord(patient: String, recordId: String, content: [UInt8], mediaType: String = "application/fhir+json") throws -> RecordVersionInfo {
        try putRecords([RecordInput(patient: patient, recordId: recordId, content: content, mediaType: mediaType)])[0]
    }

    /// One sealed record version of a batch put.
    struct Prepared {
        let p: Hash, r: Hash, version: UInt32, epoch: UInt32, box: [UInt8], boxHash: Hash, mediaType: String, recordId: String
    }

    /// What a put learns about one input in its read snapshot.
    struct Looked {
        let p: Hash, r: Hash, resourceType: String?
        /// The newest stored version (0 when none) and the patient's current key epoch.
        let stored: UInt32, epoch: UInt32
        let dataKey: SecureBytes
        /// The staged record rows the snapshot saw (the same for every input).
        let bounds: StagedRecords.Bounds
    }

    /// `body(i)` for `i` in `0..<count`, in order; on two threads when `count` is large.
    static func inParallel<T>(_ count: Int, _ body: (Int) throws -> T) throws -> [T] {
        guard count >= parallelReadThreshold else { return try (0..<count).map(body) }
        return try withoutActuallyEscaping(body) { body in
            let job = ParallelMap(count: count, body: body)
            DispatchQueue.concurrentPerform(iterations: 2) { job.run($0) }
            return try job.results()
        }
    }

    /// `body` over `0..<count` in a read snapshot, on two threads when `count` is large: each
    /// half in its own read transaction, both begun on this thread at the same snapshot (when
    /// commits keep them apart, the whole range runs on one). Returns the results in order and
    /// the snapshot's id. (Halves begun on their own threads saw different snapshots whenever
    /// a commit fell between them, which concurrent readers' audit commits made the common
    /// case, and the whole range then ran a second time.)
    func inSnapshot<T>(_ count: Int, _ body: (TransactionView, Range<Int>) throws -> [T]) throws -> (results: [T], snapshot: UInt64) {
        func run(_ range: Range<Int>) throws -> (results: [T], snapshot: UInt64) {
            try Ledger.storage {
                try ledger.environment.read { txn in
                    let view = txn.unsafeView
                    return (try body(view, range), view.snapshotID)
                }
            }
        }
        guard count >= Self.parallelReadThreshold else { return try run(0..<count) }
        let paired = try Ledger.storage {
            try ledger.environment.readPair { first, second -> (results: [T], snapshot: UInt64) in
                let views = (first.unsafeView, second.unsafeView)
                return try withoutActuallyEscaping(body) { body in
                    let job = ParallelMap(count: 2) { half in
                        try half == 0 ? body(views.0, 0..<(count / 2)) : body(views.1, (count / 2)..<count)
                    }
                    DispatchQueue.concurrentPerform(iterations: 2) { job.run($0) }
                    let halves = try job.results()
                    return (halves[0] + halves[1], views.0.snapshotID)
                }
            }
        }
        return try paired ?? run(0..<count)
    }

    /// Stores many record versions in one transaction (one commit, one fsync): all or none.
    /// - Throws: ``LedgerError`` `.invalidRecord` (FHIR JSON without `resourceType`, oversized),
    ///   `.patientNotFound`, `.erased`, `.conflict` when another process wrote the same record.
    @discardableResult
    public func putRecords(_ inputs: [RecordInput]) throws -> [RecordVersionInfo] {
        guard !inputs.isEmpty else { return [] }
        writeLock.lock()
        defer { writeLock.unlock() }
        let timings = Self.putTimings
        let started = timings == nil ? 0 : DispatchTime.now().uptimeNanoseconds
        return try writePut(try sealPut(inputs), started: started, timings: timings)
    }

    /// A put's batch sealed in one read snapshot, ready to write.
    struct SealedPut {
        let prepared: [Prepared]
        let entries: [LedgerEntry]
        /// The read snapshot's id and the staged record rows it saw.
        let snapshot: UInt64
        let bounds: StagedRecords.Bounds
    }

    /// Checks, names, numbers and seals a put's records. Shapes and names first, outside any
    /// transaction (a record may be 16 MiB of JSON to check, and a read transaction keeps its
    /// snapshot's pages from reuse); then patient keys and stored versions in a read snapshot;
    /// the versions in input order; the sealing. All but the numbering run on two threads for
    /// large batches.
    private func sealPut(_ inputs: [RecordInput]) throws -> SealedPut {
        let named = try Self.inParallel(inputs.count) { i -> (p: Hash, r: Hash, resourceType: String?) in
            let resourceType = try Self.validate(inputs[i])
            let p = try pseudonym(of: inputs[i].patient)
            return (p, try recordHash(p, inputs[i].recordId), resourceType)
        }
        let tables = recordTables
        let (looked, snapshot) = try inSnapshot(inputs.count) { view, range in
            let lens = try stagedRecords.lens(view, tables: tables)
            var keys: [Hash: (epoch: UInt32, key: SecureBytes)] = [:]
            var openers = try BatchOpeners()
            return try range.map { i -> Looked in
                let (p, r, resourceType) = named[i]
                let (epoch, dataKey): (UInt32, SecureBytes)
                if let cached = keys[p] { (epoch, dataKey) = cached } else {
                    let state = try requirePatient(view, p)
                    (epoch, dataKey) = (state.epoch, try unwrap(state, p, openers: &openers))
                    keys[p] = (epoch, dataKey)
                }
                return Looked(p: p, r: r, resourceType: resourceType, stored: try tables.newestVersion(view, lens, p, r), epoch: epoch,
                              dataKey: dataKey, bounds: lens.bounds)
            }
        }
        // A batch may carry several versions of one record: each takes the next number.
        var versions: [UInt32] = []
        versions.reserveCapacity(looked.count)
        var latest: [RecordSlot: UInt32] = [:]
        latest.reserveCapacity(looked.count)
        for item in looked {
            let slot = RecordSlot(p: item.p, r: item.r)
            let last = latest[slot] ?? item.stored
            guard last < UInt32.max else { throw LedgerError(.invalidArgument, "record has too many versions") }
            latest[slot] = last + 1
            versions.append(last + 1)
        }
        let sealed = try Self.inParallel(inputs.count) { i -> (Prepared, LedgerEntry) in
            let input = inputs[i], item = looked[i], version = versions[i]
            var plaintext = RecordPlaintext.encode(recordId: input.recordId, mediaType: input.mediaType,
                                                   resourceType: item.resourceType, content: input.content)
            defer { secureZero(&plaintext) }
            let key = try Self.recordKey(dataKey: item.dataKey, item.p, item.r, version)
            let box = try AESGCM.seal(plaintext, key: key, associatedData: Self.recordAAD(item.p, item.r, version))
            let boxHash = SHA256.hash(box)
            let payload = PatientPayload.recordPayload(p: item.p, r: item.r, version: version, ciphertextHash: boxHash,
                                                       ciphertextSize: box.count, keyEpoch: item.epoch)
            return (Prepared(p: item.p, r: item.r, version: version, epoch: item.epoch, box: box, boxHash: boxHash,
                             mediaType: input.mediaType, recordId: input.recordId),
                    try LedgerEntry(set: PatientPayload.recordKey(item.p, item.r), payload: payload))
        }
        return SealedPut(prepared: sealed.map(\.0), entries: sealed.map(\.1), snapshot: snapshot, bounds: looked[0].bounds)
    }

    /// Writes a sealed put in one transaction; the caller holds the write lock, taken before
    /// the sealing.
    private func writePut(_ batch: SealedPut, started: UInt64, timings: PutTimings?) throws -> [RecordVersionInfo] {
        try afterPutSnapshot?()
        let tables = recordTables, prepared = batch.prepared
        var marks = (write: started, tables: started, tablesDone: started)
        if timings != nil { marks.write = DispatchTime.now().uptimeNanoseconds }
        let first = try ledger.append(batch.entries) { view, first in
            if timings != nil { marks.tables = DispatchTime.now().uptimeNanoseconds }
            // Versions were chosen in a read snapshot; when another commit came between it and
            // this transaction, check them again, unless every such commit was one of this
            // layer's own audit commits (which write no record or patient state). Only those
            // ids are trusted: any other commit (another process's, another layer's on this
            // ledger, a plain log append) makes the put check.
            if view.snapshotID != batch.snapshot + 1,
               !self.auditCommitIDs.containsAll(batch.snapshot + 1..<view.snapshotID) {
                self.versionRecheckLock.withLock { self.versionRecheckCount += 1 }
                try self.checkNoNewerVersions(view, tables: tables, prepared, since: batch.bounds)
            }
            try tables.append(view, first: first, prepared)
            try tables.foldIfDue(view, minimum: self.minimumRecordFold, sizeAfter: first + UInt64(prepared.count))
            if timings != nil { marks.tablesDone = DispatchTime.now().uptimeNanoseconds }
        }
        if let timings {
            timings.prepareNs = marks.write - started
            timings.logAndMapNs = marks.tables - marks.write
            timings.recordRowsNs = marks.tablesDone - marks.tables
            timings.commitNs = DispatchTime.now().uptimeNanoseconds - marks.tablesDone
        }
        return prepared.enumerated().map { i, item in
            RecordVersionInfo(recordId: item.recordId, version: item.version, index: first + UInt64(i),
                              ciphertextHash: item.boxHash, mediaType: item.mediaType)
        }
    }

    /// Where the last ``putRecords(_:)`` on this task spent its time, filled when
    /// ``putTimings`` is set; for benchmarks, which split a put's cost into its phases.
    @TaskLocal public static var putTimings: PutTimings? = nil

    /// Wall time of one batch put's phases. Bind one to one call at a time: its fields are
    /// plain, and only meaningful when the call returned.
    public final class PutTimings: @unchecked Sendable {
        // Sendable: written by the one call the task-local hands it to, read after it returns.
        /// Nanoseconds before the write transaction: shapes checked, names derived, patient
        /// keys and stored versions looked up, records sealed and hashed, entries built.
        public var prepareNs: UInt64 = 0
        /// In the write transaction: the entries stored and hashed into the log, and the key
        /// map updated (with any attempt that was undone because the map grew mid-write).
        public var logAndMapNs: UInt64 = 0
        /// In the write transaction: the sealed records and their rows stored.
        public var recordRowsNs: UInt64 = 0
        /// From then until the call returned: the commit and its fsync.
        public var commitNs: UInt64 = 0
        public init() {}
    }

    /// Inside a put's write transaction, when other commits came after its read snapshot (whose
    /// staged rows were `bounds`): throws `.conflict` when one of them stored a version of a
    /// record the put writes, or erased the patient or rotated their key. Every version
    /// committed since has an index past the snapshot's staged rows (every writer of this
    /// format stages its rows; only a fold writes `pl.records`): it is staged still, or folded
    /// since. Runs on every put that concurrent writers or audited reads overtook, so it reads
    /// each patient once and looks folded rows up only when a fold came between.
    private func checkNoNewerVersions(_ view: TransactionView, tables: RecordTables, _ prepared: [Prepared],
                                      since bounds: StagedRecords.Bounds) throws {
        let conflict = LedgerError(.conflict, "the record or patient changed during the write; retry")
        var slots = Set<RecordSlot>(minimumCapacity: prepared.count)
        var patients: [Hash: UInt32] = [:]
        for item in prepared where slots.insert(RecordSlot(p: item.p, r: item.r)).inserted {
            if let epoch = patients[item.p] {
                guard epoch == item.epoch else { throw conflict }
                continue
            }
            guard let state = try patientState(view, item.p), state.status == .active, state.epoch == item.epoch else { throw conflict }
            patients[item.p] = state.epoch
        }
        let folded = try StagedRecords.foldedThrough(view, meta: tables.meta)
        try tables.forEachStaged(view, from: max(bounds.end, folded)) { row in
            if let row, slots.contains(row.name.slot) { throw conflict }
        }
        // Rows staged after the snapshot and folded since are in `pl.records` now: one lookup
        // per version, only when a fold moved `records.folded`.
        guard folded != bounds.folded else { return }
        for item in prepared where try view.withValue(records, key: Self.recordStorageKey(item.p, item.r, item.version), { _ in true }) != nil {
            throw conflict
        }
    }

    /// Checks a record's shape; returns its FHIR resource type.
    static func validate(_ input: RecordInput) throws -> String? {
        // Byte-wise: a UTF-8 byte below 0x20 is always a control character of its own.
        guard !input.recordId.isEmpty, input.recordId.utf8.count <= 256,
              !input.recordId.utf8.contains(where: { $0 < 0x20 }) else {
            throw LedgerError(.invalidArgument, "record id must be 1 to 256 bytes without control characters")
        }
        guard !input.mediaType.isEmpty, input.mediaType.utf8.count <= 255 else { throw LedgerError(.invalidArgument, "media type must be 1 to 255 bytes") }
        guard input.content.count <= maxContentBytes else {
            throw LedgerError(.invalidRecord, "record \(input.recordId): \(input.content.count) bytes exceeds \(maxContentBytes); store it as a blob")
        }
        guard isFHIR(input.mediaType) else { return nil }
        let summary: JSONCheck.Summary
        do {
            summary = try JSONCheck.check(input.content)
        } catch {
            throw LedgerError(.invalidRecord, "record \(input.recordId): not valid JSON (\(error))")
        }
        guard summary.isObject else {
            throw LedgerError(.invalidRecord, "record \(input.recordId): not a JSON object (media type \(input.mediaType))")
        }
        guard !summary.duplicateResourceType else {
            throw LedgerError(.invalidRecord, "record \(input.recordId): resourceType appears more than once")
        }
        guard let type = summary.resourceType, !type.isEmpty, type.utf8.count <= 64, Self.isASCIIAlphanumeric(type) else {
            throw LedgerError(.invalidRecord, "record \(input.recordId): FHIR JSON needs a string resourceType")
        }
        return type
    }

    /// Whether `text` is made of ASCII letters and digits only, as FHIR resource type names
    /// are (`CharacterSet` lookups cost more than the rest of a put's validation).
    static func isASCIIAlphanumeric(_ text: String) -> Bool {
        text.utf8.allSatisfy { b in
            (b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9")) || (b | 0x20 >= UInt8(ascii: "a") && b | 0x20 <= UInt8(ascii: "z"))
        }
    }

    static func isFHIR(_ mediaType: String) -> Bool {
        // Byte-wise on the UTF-8 (every put asks; Foundation's trimming cost more than the
        // JSON check): the part before any `;`, without spaces or tabs around it, compared
        // ignoring ASCII case.
        var bytes = Substring(mediaType).utf8[...]
        if let semicolon = bytes.firstIndex(of: UInt8(ascii: ";")) { bytes = bytes[..<semicolon] }
        let isBlank = { (b: UInt8) in b == UInt8(ascii: " ") || b == UInt8(ascii: "\t") }
        while let first = bytes.first, isBlank(first) { bytes = bytes.dropFirst() }
        while let last = bytes.last, isBlank(last) { bytes = bytes.dropLast() }
        func equalsIgnoringCase(_ name: StaticString) -> Bool {
            guard bytes.count == name.utf8CodeUnitCount else { return false }
            return zip(bytes, UnsafeBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount)).allSatisfy { a, b in
                (a >= UInt8(ascii: "A") && a <= UInt8(ascii: "Z") ? a | 0x20 : a) == b
            }
        }
        return equalsIgnoringCase("application/fhir+json") || equalsIgnoringCase("application/json+fhir")
    }

    // MARK: - Reads (audited)

    /// Reads a record version (the latest when `version` is nil) as `accessor`. The read and
    /// its audit entry both happen or neither: the content is returned only once the audit
    /// entry committed. A refused read is audited too, then throws.
    ///
    /// - Parameters:
    ///   - purpose: the purpose of use recorded in the audit entry (e.g. `treatment`).
    ///   - breakGlass: a reason to read without a valid grant; the read succeeds and is
    ///     flagged for review (``breakGlassEvents()``).
    /// - Throws: ``LedgerError`` `.accessDenied`, `.erased`, `.patientNotFound`, `.recordNotFound`.
    public func read(patient: String, recordId: String, version: UInt32? = nil, as accessor: Accessor,
                     purpose: String = "treatment", breakGlass: String? = nil) throws -> RecordContent {
        try readRecords([ReadRequest(patient: patient, recordId: recordId, version: version)], as: accessor,
                        purpose: purpose, breakGlass: breakGlass)[0].get()
    }

    /// One record version a batch read asks for (the latest when `version` is nil).
    public struct ReadRequest: Sendable, Hashable {
        public var patient: String
        public var recordId: String
        public var version: UInt32?
        public init(patient: String, recordId: String, version: UInt32? = nil) {
            self.patient = patient
            self.recordId = recordId
            self.version = version
        }
    }

    /// Reads many records as one accessor from one snapshot, with one audit entry per request
    /// committed together (one durable commit for the batch rather than one per read). Each
    /// result is the content or the refusal a single ``read(patient:recordId:version:as:purpose:breakGlass:)``
    /// would have thrown; every request, allowed or refused, has its audit entry committed
    /// before this returns.
    ///
    /// - Throws: ``LedgerError`` `.storage` (or another ledger error) when the snapshot cannot
    ///   be read or the audit entries cannot be committed; then no content is returned.
    public func readRecords(_ requests: [ReadRequest], as accessor: Accessor, purpose: String = "treatment",
                            breakGlass: String? = nil) throws -> [Result<RecordContent, LedgerError>] {
        try readRecords(requests, as: accessor, purpose: purpose, breakGlass: breakGlass, auditingFirst: [])
    }

    /// ``readRecords(_:as:purpose:breakGlass:)`` whose audit commit also carries `earlier`,
    /// rows of this call's caller, ahead of the reads' own.
    func readRecords(_ requests: [ReadRequest], as accessor: Accessor, purpose: String, breakGlass: String?,
                     auditingFirst earlier: [AuditRow]) throws -> [Result<RecordContent, LedgerError>] {
        let agent = try auditAgent(accessor)
        let time = clock()
        let tables = recordTables  // before the transactions: finding them may open them
        let encoder = AuditEncoder(action: "read", accessor: accessor, agent: agent, purpose: purpose, breakGlass: breakGlass, time: time)
        let timings = Self.readTimings
        if let timings { (timings.readNs, timings.auditNs) = (0, 0) }
        let start = timings == nil ? 0 : DispatchTime.now().uptimeNanoseconds
        let (read, _) = try inSnapshot(requests.count) { view, range in
            try readPart(requests[range], view: view, tables: tables, accessor: accessor, encoder: encoder, breakGlass: breakGlass, time: time)
        }
        let rows = earlier + read.map(\.row)
        let readDone = timings == nil ? 0 : DispatchTime.now().uptimeNanoseconds
        try auditCommitter.record(rows)
        if let timings {
            timings.readNs = readDone - start
            timings.auditNs = DispatchTime.now().uptimeNanoseconds - readDone
        }
        return read.map(\.outcome)
    }

    /// Where the last ``readRecords(_:as:purpose:breakGlass:)`` on this task spent its time,
    /// filled when ``readTimings`` is set; for benchmarks, which hold what reads cost against
    /// what their audit costs.
    @TaskLocal public static var readTimings: ReadTimings? = nil

    /// Wall time of one batch read's two phases. Bind one to one call at a time: its fields
    /// are plain, and zero when the call threw before the phase ended.
    public final class ReadTimings: @unchecked Sendable {
        // Sendable: written by the one call the task-local hands it to, read after it returns.
        /// Nanoseconds from the call to its outcomes and audit rows being ready: lookups,
        /// access checks, decryption and the encoding of the audit events.
        public var readNs: UInt64 = 0
        /// Nanoseconds from then until the audit entries were durable (the commit, or the
        /// wait for a shared one).
        public var auditNs: UInt64 = 0
        public init() {}
    }

    /// Batches of at least this many requests (reads, puts) run on two threads.
    static let parallelReadThreshold = 256

    /// What one request of a batch read was: the version it reads (filled in as it is found).
    struct ReadTarget {
        let p: Hash
        let r: Hash
        var version: UInt32?
    }

    /// Reads `requests` in `view`; each outcome comes with its audit row, encoded here on the
    /// part's thread rather than by the committer.
    private func readPart(_ requests: ArraySlice<ReadRequest>, view: TransactionView, tables: RecordTables, accessor: Accessor,
                          encoder: AuditEncoder, breakGlass: String?, time: Date) throws -> [(row: AuditRow, outcome: Result<RecordContent, LedgerError>)] {
        let lens = try stagedRecords.lens(view, tables: tables)
        var names = RecentValues<ExternalID, Hash>()
        var targets: [ReadTarget] = []
        targets.reserveCapacity(requests.count)
        for request in requests {
            let p = try names.value(for: ExternalID(request.patient)) { try pseudonym(of: request.patient) }
            targets.append(ReadTarget(p: p, r: try recordHash(p, request.recordId), version: request.version))
        }
        let breaking = breakGlass.map { !$0.isEmpty } ?? false
        // A batch usually reads several records of one patient in a row: unwrap each data key
        // once while it is among the recent ones.
        var dataKeys = RecentValues<EpochKey, SecureBytes>()
        var openers = try BatchOpeners()
        var check = AccessCheck(accessor, breakGlass: breakGlass, now: time)
        let staged = lens.find(targets.map { (RecordSlot(p: $0.p, r: $0.r), $0.version) })
        return try targets.indices.map { i in
            let outcome = try readOne(view, tables, staged[i], &targets[i], check: &check, dataKeys: &dataKeys, openers: &openers)
            let (result, detail) = AuditEvent.outcome(of: outcome)
            let payload = encoder.encode(patient: targets[i].p, record: targets[i].r, version: targets[i].version,
                                         outcome: result, detail: detail)
            return (AuditRow(payload: payload, patient: targets[i].p, breakGlass: breaking), outcome)
        }
    }

    /// One read inside a snapshot; fills in the version the target reads.
    private func readOne(_ view: TransactionView, _ tables: RecordTables, _ staged: StoredVersion.Place?, _ target: inout ReadTarget,
                         check: inout AccessCheck, dataKeys: inout RecentValues<EpochKey, SecureBytes>,
                         openers: inout BatchOpeners) throws -> Result<RecordContent, LedgerError> {
        let p = target.p, r = target.r
        guard let state = try patientState(view, p) else { return .failure(LedgerError(.patientNotFound, "no such patient")) }
        guard state.status == .active else { return .failure(LedgerError(.erased, "the patient was erased")) }
        // Opened where LMDB holds it: the box is not copied out of the map first. `plaintext`
        // is the decrypted buffer's only owner, so the wipe reaches it rather than a copy.
        var plaintext: [UInt8]?
        defer { if plaintext != nil { secureZero(&plaintext!) } }
        let lookup = target.version == 0 ? nil : try tables.withVersion(view, staged: staged, p, r, version: target.version) { stored in
            let dataKey = try self.dataKey(state, p, epoch: stored.epoch, cache: &dataKeys, openers: &openers)
            let key = try Self.recordKey(dataKey: dataKey, p, r, stored.version)
            plaintext = Self.withRecordAAD(p, r, stored.version) { aad in
                try? openers.boxes.open(sealed: stored.box, key: key, associatedData: aad)
            }
            return stored.place
        }
        let found: StoredVersion.Place?
        switch lookup {
        case .failure(let damaged)?:
            target.version = staged?.version ?? target.version
            return .failure(damaged)
        case .success(let place)?: found = place
        case nil: found = nil
        }
        target.version = found?.version ?? target.version ?? 0
        guard let (wanted, index) = found.map({ ($0.version, $0.index) }) else {
            return .failure(LedgerError(.recordNotFound, "no such record version"))
        }
        guard plaintext != nil else {
            return .failure(LedgerError(.storage, "stored ciphertext of a record fails authentication (damaged store)"))
        }
        guard let parts = plaintext!.withUnsafeBufferPointer(RecordPlaintext.header) else {
            return .failure(LedgerError(.storage, "malformed record plaintext"))
        }
        if let refusal = try check.refusal(self, view, p: p, r: r, resourceType: parts.resourceType) {
            return .failure(LedgerError(.accessDenied, refusal))
        }
        // The decrypted buffer becomes the content: no second copy of it is made.
        let content = RecordPlaintext.takeContent(&plaintext!, from: parts.contentStart)
        return .success(RecordContent(recordId: parts.recordId, version: wanted, mediaType: parts.mediaType,
                                      resourceType: parts.resourceType, content: content, index: index))
    }

    /// The accessor as audit entries name it: a patient by their own pseudonym, never their id.
    func auditAgent(_ accessor: Accessor) throws -> String {
        accessor.role == .patient ? "patient:" + (try pseudonym(of: accessor.id)).hex : accessor.id
    }

    /// Why `accessor` may not read a record, or nil when it may.
    func refusal(_ accessor: Accessor, p: Hash, r: Hash, resourceType: String?, view: TransactionView,
                 breakGlass: String?) throws -> String? {
        var check = AccessCheck(accessor, breakGlass: breakGlass, now: clock())
        return try check.refusal(self, view, p: p, r: r, resourceType: resourceType)
    }

    /// Decides one accessor's reads, for a batch of them: the accessor's own pseudonym is
    /// computed once and a patient's grant is fetched and decoded once while it is among the
    /// recent ones (a grantee's batch usually reads several records of one patient).
    struct AccessCheck {
        let accessor: Accessor
        let breaking: Bool
        /// When the reads happen (seconds since 1970), against grants' expiry.
        let now: Int64
        private var ownPseudonym: Hash?
        private var grants = RecentValues<Hash, Grant?>()

        init(_ accessor: Accessor, breakGlass: String?, now: Date) {
            self.accessor = accessor
            breaking = breakGlass.map { !$0.isEmpty } ?? false
            self.now = Int64(now.timeIntervalSince1970)
        }

        /// Why the accessor may not read record `r` of patient `p`, or nil when it may.
        mutating func refusal(_ records: PatientRecords, _ view: TransactionView, p: Hash, r: Hash,
                              resourceType: String?) throws -> String? {
            switch accessor.role {
            case .custodian: return nil
            case .patient:
                if ownPseudonym == nil { ownPseudonym = try records.pseudonym(of: accessor.id) }
                return ownPseudonym == p ? nil : "a patient may read only their own records"
            case .grantee:
                let found = try grants.value(for: p) { try records.activeGrant(view, p, accessor.id) }
                guard let grant = found else {
                    return breaking ? nil : "no grant for this grantee (never granted or revoked)"
                }
                if now >= grant.notAfter { return breaking ? nil : "the grant expired" }
                let unscoped = grant.resourceTypes.isEmpty && grant.recordHashes.isEmpty
                let inScope = unscoped || grant.recordHashes.contains(r.hex) || resourceType.map { grant.resourceTypes.contains($0) } == true
                return inScope || breaking ? nil : "the record is outside the grant's scope"
            }
        }
    }

    fileprivate func activeGrant(_ view: TransactionView, _ p: Hash, _ grantee: String) throws -> Grant? {
        guard let raw = try view.value(grants, key: p.bytes + Array(grantee.utf8)),
              let object = PatientPayload.decode(raw), object["revoked_at"] == nil else { return nil }
        return Grant(json: object)
    }

    /// Where a listing finds a version's box.
    private enum ListedRow {
        /// A `pl.records` row (an entry index, or the earlier layout's whole row).
        case folded([UInt8])
        /// A staged version's entry index (`pl.boxes` key).
        case staged(UInt64)
    }

    /// Every version of a record (newest last), as `accessor`; audited as action `history`.
    public func history(patient: String, recordId: String, as accessor: Accessor, purpose: String = "treatment") throws -> [RecordVersionInfo] {
        let p = try pseudonym(of: patient)
        let r = try recordHash(p, recordId)
        return try listing(p: p, r: r, action: "history", accessor: accessor, purpose: purpose, latestOnly: false)
    }

    /// The latest version of each of a patient's records, as `accessor` (a grantee sees only
    /// records in scope); audited as action `list`.
    public func list(patient: String, as accessor: Accessor, purpose: String = "treatment") throws -> [RecordVersionInfo] {
        try listing(p: try pseudonym(of: patient), r: nil, action: "list", accessor: accessor, purpose: purpose, latestOnly: true)
    }

    private func listing(p: Hash, r: Hash?, action: String, accessor: Accessor, purpose: String, latestOnly: Bool) throws -> [RecordVersionInfo] {
        let (row, outcome) = try unauditedListing(p: p, r: r, action: action, accessor: accessor, purpose: purpose, latestOnly: latestOnly)
        try auditCommitter.record([row])
        return try outcome.get()
    }

    /// A listing's outcome and its audit row, not yet committed: the caller commits the row
    /// before it discloses anything of the outcome.
    func unauditedListing(p: Hash, r: Hash?, action: String, accessor: Accessor, purpose: String,
                          latestOnly: Bool) throws -> (row: AuditRow, outcome: Result<[RecordVersionInfo], LedgerError>) {
        var event = AuditEvent(action: action, accessor: accessor, agent: try auditAgent(accessor), patient: p, record: r, version: nil,
                               purpose: purpose, breakGlass: nil, time: clock())
        let tables = recordTables  // before the transaction: finding them may open them
        let outcome: Result<[RecordVersionInfo], LedgerError> = try Ledger.storage {
            try ledger.environment.read { txn -> Result<[RecordVersionInfo], LedgerError> in
                let view = txn.unsafeView
                guard let state = try patientState(view, p) else { return .failure(LedgerError(.patientNotFound, "no such patient")) }
                guard state.status == .active else { return .failure(LedgerError(.erased, "the patient was erased")) }
                var dataKeys = RecentValues<EpochKey, SecureBytes>()
                var openers = try BatchOpeners()
                var check = AccessCheck(accessor, breakGlass: nil, now: event.time)
                // Folded rows in record order, then the staged ones (newer than any folded).
                let prefix = p.bytes + (r?.bytes ?? [])
                var rows: [(r: Hash, version: UInt32, row: ListedRow)] = []
                try view.withCursor(records) { cursor in
                    var more = try cursor.seek(atOrAfter: prefix)
                    while more {
                        let row: (Hash, UInt32, [UInt8])? = cursor.withCurrent { key, value in
                            guard key.count == 68, key.starts(with: prefix) else { return nil }
                            return (Hash(UnsafeRawBufferPointer(rebasing: key[32..<64]))!, Self.version(ofStorageKey: key), Array(value))
                        }
                        guard let row else { break }
                        if latestOnly, let last = rows.last, last.r == row.0 { rows.removeLast() }
                        rows.append((row.0, row.1, .folded(row.2)))
                        more = try cursor.next()
                    }
                }
                rows += try stagedRecords.lens(view, tables: tables).versions(of: p, record: r).map { ($0.r, $0.version, .staged($0.index)) }
                rows.sort { $0.r != $1.r ? $0.r < $1.r : $0.version < $1.version }
                if latestOnly {
                    rows = rows.indices.filter { $0 == rows.count - 1 || rows[$0 + 1].r != rows[$0].r }.map { rows[$0] }
                }
                var out: [RecordVersionInfo] = []
                for row in rows {
                    let lent = { (stored: StoredVersion) throws -> Result<RecordVersionInfo?, LedgerError> in
                        let dataKey = try self.dataKey(state, p, epoch: stored.epoch, cache: &dataKeys, openers: &openers)
                        let key = try Self.recordKey(dataKey: dataKey, p, row.r, stored.version)
                        guard var plaintext = Self.withRecordAAD(p, row.r, stored.version, { aad in
                            try? openers.boxes.open(sealed: stored.box, key: key, associatedData: aad)
                        }) else {
                            return .failure(LedgerError(.storage, "stored ciphertext of a record fails authentication (damaged store)"))
                        }
                        defer { secureZero(&plaintext) }
                        // The header alone: a listing makes no copy of the content.
                        guard let parts = plaintext.withUnsafeBufferPointer(RecordPlaintext.header) else { return .success(nil) }
                        if try check.refusal(self, view, p: p, r: row.r, resourceType: parts.resourceType) != nil {
                            // A grantee lists only what it may read; a listing with nothing readable is refused.
                            return .success(nil)
                        }
                        return .success(RecordVersionInfo(recordId: parts.recordId, version: stored.version, index: stored.index,
                                                          ciphertextHash: SHA256.hash(stored.box), mediaType: parts.mediaType))
                    }
                    let listed: Result<RecordVersionInfo?, LedgerError>?
                    switch row.row {
                    case .folded(let value): listed = try value.withUnsafeBytes { try tables.withFoldedBox(view, row: $0, version: row.version, lent) }
                    case .staged(let index): listed = try tables.withBox(view, index: index, version: row.version, lent)
                    }
                    guard let listed else { return .failure(LedgerError(.storage, "malformed stored record (damaged store)")) }
                    switch listed {
                    case .failure(let damaged): return .failure(damaged)
                    case .success(let info?): out.append(info)
                    case .success(nil): continue
                    }
                }
                if out.isEmpty, !rows.isEmpty, try check.refusal(self, view, p: p, r: r ?? rows[0].r, resourceType: nil) != nil {
                    return .failure(LedgerError(.accessDenied, "no readable records for this accessor"))
                }
                if out.isEmpty, r != nil { return .failure(LedgerError(.recordNotFound, "no such record")) }
                return .success(out)
            }
        }
        event.settle(outcome)
        return (event.row, outcome)
    }

    // MARK: - Grants

    /// The grant that ``grant(patient:to:granteeKey:scope:notAfter:issuedAt:signature:)`` would
    /// write, so that a self-custody patient can sign ``Grant/signedMessage(pseudonym:)`` first.
    public func draftGrant(patient: String, to grantee: String, granteeKey: Ed25519PublicKey,
                           granteeEncryptionKey: X25519PublicKey? = nil, scope: GrantScope = .all,
                           notAfter: Date, issuedAt: Date) throws -> (grant: Grant, message: [UInt8]) {
        let p = try pseudonym(of: patient)
        let grant = Grant(grantee: grantee, granteeKey: granteeKey.rawRepresentation,
                          encryptionKey: granteeEncryptionKey?.rawRepresentation, resourceTypes: scope.resourceTypes,
                          recordHashes: try scope.recordIds.map { try recordHash(p, $0).hex }.sorted(),
                          notAfter: Int64(notAfter.timeIntervalSince1970), issuedAt: Int64(issuedAt.timeIntervalSince1970),
                          signature: nil)
        return (grant, grant.signedMessage(pseudonym: p))
    }

    /// Grants `grantee` read access to the patient's records within `scope` until `notAfter`,
    /// replacing any earlier grant to the same grantee. When the patient registered a signing
    /// key, `signature` must be their signature over the draft's message (same `issuedAt`).
    ///
    /// With `granteeEncryptionKey`, the grant also shares the patient's current data key,
    /// sealed to that X25519 key (``sealedKeys(patient:grantee:)``), so the grantee can open
    /// the patient's record boxes offline. Revoking such a grant starts a new key epoch.
    /// - Throws: ``LedgerError`` `.badSignature`, `.patientNotFound`, `.erased`, `.invalidArgument`.
    @discardableResult
    public func grant(patient: String, to grantee: String, granteeKey: Ed25519PublicKey,
                      granteeEncryptionKey: X25519PublicKey? = nil, scope: GrantScope = .all,
                      notAfter: Date, issuedAt: Date? = nil, signature: [UInt8]? = nil) throws -> Grant {
        guard !grantee.isEmpty, grantee.utf8.count <= 256, !grantee.unicodeScalars.contains(where: { $0.value < 0x20 }) else {
            throw LedgerError(.invalidArgument, "grantee id must be 1 to 256 bytes without control characters")
        }
        for type in scope.resourceTypes where type.isEmpty || type.utf8.count > 64
            || !Self.isASCIIAlphanumeric(type) {
            throw LedgerError(.invalidArgument, "scope resource types must be FHIR type names (ASCII letters and digits)")
        }
        for id in scope.recordIds where id.isEmpty || id.unicodeScalars.contains(where: { $0.value < 0x20 }) {
            throw LedgerError(.invalidArgument, "scope record ids must be non-empty without control characters")
        }
        let issued = issuedAt ?? clock()
        guard notAfter > issued else { throw LedgerError(.invalidArgument, "a grant must expire after it is issued") }
        let p = try pseudonym(of: patient)
        var (grant, message) = try draftGrant(patient: patient, to: grantee, granteeKey: granteeKey,
                                              granteeEncryptionKey: granteeEncryptionKey, scope: scope,
                                              notAfter: notAfter, issuedAt: issued)
        grant = Grant(grantee: grant.grantee, granteeKey: grant.granteeKey, encryptionKey: grant.encryptionKey, resourceTypes: grant.resourceTypes,
                      recordHashes: grant.recordHashes, notAfter: grant.notAfter, issuedAt: grant.issuedAt, signature: signature)
        writeLock.lock()
        defer { writeLock.unlock() }
        let entry = try LedgerEntry(set: PatientPayload.grantKey(p, grantee), payload: PatientPayload.encode(grant.json(pseudonym: p)))
        let index = try ledger.append([entry]) { view, first in
            let state = try self.requirePatient(view, p)
            guard state.status == .active else { throw LedgerError(.erased, "the patient was erased") }
            if state.signingKey == nil, signature != nil {
                throw LedgerError(.badSignature, "this patient registered no signing key, so a signature cannot be checked")
            }
            if let key = state.signingKey {
                guard let signature, (try? Ed25519PublicKey(rawRepresentation: key))?.isValidSignature(signature, for: message) == true else {
                    throw LedgerError(.badSignature, "this patient signs their grants: the signature is missing or does not verify")
                }
            }
            var stored = grant.json(pseudonym: p)
            stored["index"] = first
            if let granteeEncryptionKey {
                let sealed = try SealedPatientKey.seal(try self.unwrap(state, p), to: granteeEncryptionKey, pseudonym: p,
                                                       grantee: grantee, epoch: state.epoch)
                let encoded = Base64.encode(sealed.sealed)
                stored["sealed_keys"] = [String(state.epoch): encoded]
                stored["sealed_macs"] = [String(state.epoch): Self.sealedKeyMAC(self.masterKey.pseudonymMAC, p, grantee, state.epoch, encoded)]
            }
            try view.put(self.grants, key: p.bytes + Array(grantee.utf8), value: PatientPayload.encode(stored))
        }
        grant.index = index
        return grant
    }

    /// Revokes `grantee`'s grant at once: its next read is refused. The log gets a delete
    /// entry of the grant's key, so the key map proves the grantee holds no grant.
    ///
    /// When the grant had shared the patient's data key (an X25519 grant), revocation starts a
    /// new key epoch: a fresh data key for every later write, sealed again to each remaining
    /// X25519 grantee. What the revoked grantee could already decrypt stays decryptable to it.
    /// - Throws: ``LedgerError`` `.notFound` when there is no active grant.
    @discardableResult
    public func revoke(patient: String, grantee: String) throws -> UInt64 {
        let p = try pseudonym(of: patient)
        writeLock.lock()
        defer { writeLock.unlock() }
        let at = Int64(clock().timeIntervalSince1970)
        let key = p.bytes + Array(grantee.utf8)
        // Whether the revoked grantee holds the data key decides the entry (it names the new
        // epoch); the side write re-checks it against the state it commits on.
        let (heldKey, nextEpoch): (Bool, UInt32) = try Ledger.storage {
            try ledger.environment.read { txn in
                let view = txn.unsafeView
                guard let raw = try view.value(grants, key: key), let object = PatientPayload.decode(raw), object["revoked_at"] == nil else {
                    throw LedgerError(.notFound, "no active grant for that grantee")
                }
                return (object["sealed_keys"] != nil, try requirePatient(view, p).epoch + 1)
            }
        }
        var payload: [String: Any] = ["type": "revoke", "v": 1, "patient": p.hex, "grantee": grantee, "revoked_at": at]
        if heldKey { payload["key_epoch"] = Int(nextEpoch) }
        let entry = try LedgerEntry(delete: PatientPayload.grantKey(p, grantee), payload: PatientPayload.encode(payload))
        var newKey = heldKey ? try SecureRandom.bytes(32) : []
        defer { secureZero(&newKey) }
        return try ledger.append([entry]) { view, first in
            guard let raw = try view.value(self.grants, key: key), var object = PatientPayload.decode(raw), object["revoked_at"] == nil,
                  (object["sealed_keys"] != nil) == heldKey else {
                throw LedgerError(.conflict, "the grant changed during the revocation; retry")
            }
            object["revoked_at"] = at
            object["revoked_index"] = first
            try view.put(self.grants, key: key, value: PatientPayload.encode(object))
            if heldKey { try self.startKeyEpoch(view, p, newKey, expected: nextEpoch) }
        }
    }

    /// The tag that lets `verify` (given the master key file) check a stored sealed key: only
    /// its grantee can authenticate the sealed box itself.
    static func sealedKeyMAC(_ key: HMACSHA256.Key, _ p: Hash, _ grantee: String, _ epoch: UInt32, _ sealed: String) -> String {
        Base64.encode(key.authenticationCode(utf8: "sealed-key|\(p.hex)|\(grantee)|\(epoch)|\(sealed)").bytes)
    }

    /// Adds key epoch `expected` with `raw` as the patient's data key and seals it to every
    /// active grantee with an X25519 key.
    private func startKeyEpoch(_ view: TransactionView, _ p: Hash, _ raw: [UInt8], expected: UInt32) throws {
        var state = try requirePatient(view, p)
        guard state.status == .active else { throw LedgerError(.erased, "the patient was erased") }
        guard state.epoch + 1 == expected else { throw LedgerError(.conflict, "the patient's key changed during the revocation; retry") }
        let (generation, master) = try committedMasterKey(view)
        guard state.generation == generation else {
            throw LedgerError(.storage, "a patient's keys are wrapped under generation \(state.generation), not the ledger's \(generation)")
        }
        state.wrappedKeys.append(try AESGCM.seal(raw, key: master, associatedData: Self.dataKeyAAD(p, state.generation, expected)))
        try view.put(patients, key: p.bytes, value: state.encoded())
        let dataKey = raw.withUnsafeBytes { SecureBytes(copying: $0) }
        var updates: [([UInt8], [String: Any])] = []
        try view.withCursor(grants) { cursor in
            var more = try cursor.seek(atOrAfter: p.bytes)
            while more {
                guard let (k, object) = cursor.withCurrent({ key, value in
                    key.starts(with: p.bytes) ? (Array(key), PatientPayload.decode(Array(value))) : nil
                }) else { break }
                if var object, object["revoked_at"] == nil, let grant = Grant(json: object), let encryptionKey = grant.encryptionKey {
                    let sealed = try SealedPatientKey.seal(dataKey, to: try X25519PublicKey(rawRepresentation: encryptionKey), pseudonym: p,
                                                           grantee: grant.grantee, epoch: expected)
                    let encoded = Base64.encode(sealed.sealed)
                    var keys = object["sealed_keys"] as? [String: Any] ?? [:]
                    keys[String(expected)] = encoded
                    object["sealed_keys"] = keys
                    var macs = object["sealed_macs"] as? [String: Any] ?? [:]
                    macs[String(expected)] = Self.sealedKeyMAC(masterKey.pseudonymMAC, p, grant.grantee, expected, encoded)
                    object["sealed_macs"] = macs
                    updates.append((k, object))
                }
                more = try cursor.next()
            }
        }
        for (k, object) in updates { try view.put(grants, key: k, value: PatientPayload.encode(object)) }
    }

    /// The patient's data keys sealed to `grantee`'s X25519 key, one per key epoch since the
    /// grant (empty for a grant without an X25519 key, or a revoked grant's later epochs).
    /// - Throws: ``LedgerError`` `.notFound` when the grantee never held a grant.
    public func sealedKeys(patient: String, grantee: String) throws -> [SealedPatientKey] {
        let p = try pseudonym(of: patient)
        let object: [String: Any]? = try Ledger.storage {
            try ledger.environment.read { txn in
                try txn.unsafeView.value(grants, key: p.bytes + Array(grantee.utf8)).flatMap { PatientPayload.decode($0) }
            }
        }
        guard let object else { throw LedgerError(.notFound, "no grant for that grantee") }
        let keys = object["sealed_keys"] as? [String: Any] ?? [:]
        return keys.compactMap { epoch, sealed -> SealedPatientKey? in
            guard let e = UInt32(epoch), let text = sealed as? String, let bytes = Base64.decode(text) else { return nil }
            return SealedPatientKey(pseudonym: p, grantee: grantee, epoch: e, sealed: bytes)
        }.sorted { $0.epoch < $1.epoch }
    }

    /// The patient's grants, active and revoked, as stored (the revoked carry `revoked_at`).
    public func grants(patient: String) throws -> [[String: Any]] {
        let p = try pseudonym(of: patient)
        return try Ledger.storage {
            try ledger.environment.read { txn in
                var out: [[String: Any]] = []
                try txn.withCursor(grants) { cursor in
                    var more = try cursor.seek(atOrAfter: p.bytes)
                    while more {
                        guard let object = cursor.withCurrent({ key, value in
                            key.starts(with: p.bytes) ? PatientPayload.decode(Array(value)) : nil
                        }) else { break }
                        out.append(object)
                        more = try cursor.next()
                    }
                }
                return out
            }
        }
    }

    // MARK: - Audit

    /// One audit entry of the log.
    public struct AuditRecord: @unchecked Sendable {
        // Sendable: `event` holds only JSON values (strings, numbers, booleans).
        public let index: UInt64
        public let event: [String: Any]
        public let leafHash: Hash
    }

    /// The audit entries about a patient (accounting of disclosures), oldest first.
    public func auditTrail(patient: String) throws -> [AuditRecord] {
        let p = try pseudonym(of: patient)
        let auditRecent = self.auditRecent  // before the transaction: finding it may open one
        var indexes: [UInt64] = []
        try Ledger.storage {
            try ledger.environment.read { txn in
                try txn.withCursor(audits) { cursor in
                    var more = try cursor.seek(atOrAfter: p.bytes)
                    while more {
                        guard let i = cursor.withCurrent({ key, _ -> UInt64? in
                            key.count == 40 && key.starts(with: p.bytes) ? UInt64(bigEndianBytes: UnsafeRawBufferPointer(rebasing: key[32...])) : nil
                        }) else { break }
                        indexes.append(i)
                        more = try cursor.next()
                    }
                }
                // Events not folded yet are all newer than the folded ones, in log order.
                guard let auditRecent else { return }
                try txn.withCursor(auditRecent) { cursor in
                    var more = try cursor.first()
                    while more {
                        if let i = cursor.withCurrent({ key, value in Hash(value) == p ? UInt64(bigEndianBytes: key) : nil }) {
                            indexes.append(i)
                        }
                        more = try cursor.next()
                    }
                }
            }
        }
        // Staged rows are newer than folded ones as this layer writes them; sorting also
        // keeps log order for a ledger another writer indexed differently.
        indexes.sort()
        return try indexes.map(auditRecord)
    }

    /// Every break-glass read, oldest first, for review.
    public func breakGlassEvents() throws -> [AuditRecord] {
        var indexes: [UInt64] = []
        try Ledger.storage {
            try ledger.environment.read { txn in
                try txn.withCursor(breakGlass) { cursor in
                    var more = try cursor.first()
                    while more {
                        if let i = cursor.withCurrent({ key, _ in UInt64(bigEndianBytes: key) }) { indexes.append(i) }
                        more = try cursor.next()
                    }
                }
            }
        }
        return try indexes.map(auditRecord)
    }

    private func auditRecord(_ index: UInt64) throws -> AuditRecord {
        let (bytes, leafHash) = try ledger.rawEntry(at: index)
        guard let object = PatientPayload.decode(try LedgerEntry(decoding: bytes).payload) else {
            throw LedgerError(.storage, "audit entry \(index) is not JSON")
        }
        return AuditRecord(index: index, event: object, leafHash: leafHash)
    }

    /// Commits audit events (group commit).
    fileprivate func appendAudit(_ events: [AuditRow]) throws {
        let entries = try events.map { try LedgerEntry(set: "", payload: $0.payload) }
        guard let recent = auditRecent else { throw LedgerError(.storage, "audit entries cannot be written: the ledger is open read-only") }
        // The write transaction's id, noted once it committed (the id of one that failed is
        // given to the next).
        var transaction: UInt64 = 0
        try ledger.append(entries) { view, first in
            transaction = view.snapshotID
            // Each event's row goes to the end of `pl.audit.recent` (sequential pages); rows
            // reach the patient-ordered `pl.audit` in folds of many (section 10 of DESIGN.md).
            for (i, event) in events.enumerated() {
                let index = first + UInt64(i)
                try event.patient.withUnsafeBytes { patient in
                    try view.put(recent, key: index, value: patient, flags: .append)
                    if event.breakGlass { try view.put(self.breakGlass, key: index, value: patient, flags: .append) }
                }
            }
            let staged = try view.count(recent)
            if staged >= Self.auditFoldThreshold(folded: try view.count(self.audits), minimum: self.minimumAuditFold) {
                try self.foldAuditRows(view, recent: recent)
            }
        }
        auditCommitIDs.insert(transaction)
    }

    /// Rows `pl.audit.recent` gathers before they are folded into `pl.audit`: an eighth of the
    /// rows already folded, at least 65,536 and at most 262,144, so that a fold dirties each of
    /// `pl.audit`'s leaf pages for several rows rather than about one page per row as direct
    /// inserts did, while a patient's audit trail scans at most that many staged rows (10 MB).
    /// A malformed staged row fails the folding commit and so every audited read after it
    /// (fail closed: reads are not served without their audit) until `verify` names the row.
    static func auditFoldThreshold(folded: Int, minimum: Int) -> Int { max(minimum, min(folded / 8, 262_144)) }

    /// Moves every staged audit row into `pl.audit`, in key order, inside the write `view`.
    private func foldAuditRows(_ view: TransactionView, recent: Database) throws {
        var rows: [(p: Hash, index: UInt64)] = []
        rows.reserveCapacity(try view.count(recent))
        try view.withCursor(recent) { cursor in
            var more = try cursor.first()
            while more {
                let row = cursor.withCurrent { key, value -> (Hash, UInt64)? in
                    guard let p = Hash(value), let index = UInt64(bigEndianBytes: key) else { return nil }
                    return (p, index)
                }
                guard let row else { throw LedgerError(.storage, "malformed pl.audit.recent row") }
                rows.append(row)
                more = try cursor.next()
            }
        }
        rows.sort { $0.p != $1.p ? $0.p < $1.p : $0.index < $1.index }
        let empty = UnsafeRawBufferPointer(start: nil, count: 0)
        for row in rows { try view.put(audits, key: AuditStorageKey(p: row.p, index: row.index), value: empty) }
        try view.clear(recent)
    }

    // MARK: - Erasure

    /// What ``erase(patient:)`` did.
    public struct ErasureReport: Sendable {
        /// The erasure entry's index.
        public let index: UInt64
        public let recordVersionsDeleted: Int
        public let grantsRevoked: Int
        /// The master key generation now in use (the old one is destroyed).
        public let masterKeyGeneration: UInt64
        /// Whether the key file was rewritten without the old generation. When false (the
        /// file could not be replaced) the old generation stays in it, and the patient's key
        /// stays recoverable from LMDB's freed pages with it, until the next erasure or
        /// read-write open settles the file.
        public let masterKeyFileSettled: Bool
        /// Blob versions of the patient deleted.
        public let blobVersionsDeleted: Int
        /// Disk space their chunks gave back (0 where the file system cannot punch holes).
        public let blobBytesFreed: UInt64
    }

    /// Erases a patient (GDPR Art. 17): their data key and ciphertexts are deleted, every other
    /// patient's data key is re-wrapped under a new master key generation and the old generation
    /// is removed from the key file, so copies LMDB's freed pages keep can never be opened. The
    /// log keeps its entries (hashes and pseudonyms only), so every proof still verifies; the
    /// erasure entry deletes the patient's key and the keys of their active grants.
    /// - Throws: ``LedgerError`` `.patientNotFound`, `.erased` when already erased.
    @discardableResult
    public func erase(patient: String) throws -> ErasureReport {
        let p = try pseudonym(of: patient)
        writeLock.lock()
        defer { writeLock.unlock() }
        let at = Int64(clock().timeIntervalSince1970)
        let (activeGrantees, _): ([String], PatientState) = try Ledger.storage {
            try ledger.environment.read { txn in
                let state = try requirePatient(txn.unsafeView, p)
                guard state.status == .active else { throw LedgerError(.erased, "the patient was already erased") }
                var grantees: [String] = []
                try txn.withCursor(grants) { cursor in
                    var more = try cursor.seek(atOrAfter: p.bytes)
                    while more {
                        guard let g = cursor.withCurrent({ key, value -> String?? in
                            guard key.starts(with: p.bytes) else { return nil }
                            let revoked = PatientPayload.decode(Array(value))?["revoked_at"] != nil
                            return .some(revoked ? nil : String(decoding: key[32...], as: UTF8.self))
                        }) else { break }
                        if let g { grantees.append(g) }
                        more = try cursor.next()
                    }
                }
                return (grantees, state)
            }
        }
        var entries = [try LedgerEntry(delete: PatientPayload.patientKey(p), payload: PatientPayload.encode(
            ["type": "erasure", "v": 1, "patient": p.hex, "erased_at": at, "grants_revoked": activeGrantees.count]))]
        for g in activeGrantees {
            entries.append(try LedgerEntry(delete: PatientPayload.grantKey(p, g), payload: PatientPayload.encode(
                ["type": "revoke", "v": 1, "patient": p.hex, "grantee": g, "revoked_at": at, "reason": "erasure"])))
        }
        let recordTables = self.recordTables  // before the transaction: finding them may open them
        var newGeneration: UInt64 = 0
        var attempts = 0
        var deleted = 0
        var extents: [BlobExtent] = []
        let index: UInt64
        do {
            index = try ledger.append(entries) { view, first in
                deleted = 0
                // The rotation starts inside this transaction, from the generation the ledger
                // holds in it: LMDB lets one process write at a time, so no other erasure
                // rotates the key file between this one's read of it and its commit.
                let oldGeneration = try self.storedGeneration(view)
                try self.masterKey.settle(committed: oldGeneration)  // an earlier attempt's or process's rotation
                _ = try self.committedMasterKey(view)  // the file's key of that generation is the ledger's
                let (generation, newKey) = try self.masterKey.beginRotation(from: oldGeneration)
                newGeneration = generation
                attempts += 1
                try self.duringErasureWrite?(attempts - 1)
                extents = try self.deleteBlobRows(view, p)
                try self.rewrapAll(view, from: oldGeneration, to: generation, newKey: newKey, erasing: p, erasureIndex: first)
                // Ciphertexts, record rows and grants of the erased patient. The staged rows are
                // folded first: rows never vanish from pl.records.recent under one fold point,
                // which readers' in-memory staged index relies on (RecordIndex.swift), and the
                // patient's rows are then all in pl.records.
                try recordTables.fold(view, sizeAfter: first + UInt64(entries.count))
                var boxes: [UInt64] = []
                for db in [self.records, self.grants] {
                    var keys: [[UInt8]] = []
                    try view.withCursor(db) { cursor in
                        var more = try cursor.seek(atOrAfter: p.bytes)
                        while more {
                            guard let key = cursor.withCurrent({ key, value -> [UInt8]? in
                                guard key.starts(with: p.bytes) else { return nil }
                                if db == self.records, let index = UInt64(bigEndianBytes: value) { boxes.append(index) }
                                return Array(key)
                            }) else { break }
                            keys.append(key)
                            more = try cursor.next()
                        }
                    }
                    for key in keys { _ = try view.delete(db, key: key) }
                    if db == self.records { deleted = keys.count }
                }
                try recordTables.deleteBoxes(view, boxes)
                try self.writeKeyCheck(view, generation: generation, key: newKey)
            }
        } catch {
            // A commit can reach the disk and still report failure (an fsync error): settle the
            // key file by what the ledger holds, never drop the generation it uses.
            try? settleMasterKey()
            throw error
        }
        // The erasure committed; a failure to rewrite the key file is settled on the next open
        // (or the next erasure), and reported.
        afterErasureCommit?()
        let settled = (try? settleMasterKey()) != nil && masterKey.key(generation: newGeneration - 1) == nil
        let freed = freeExtents(extents)
        return ErasureReport(index: index, recordVersionsDeleted: deleted, grantsRevoked: activeGrantees.count,
                             masterKeyGeneration: newGeneration, masterKeyFileSettled: settled, blobVersionsDeleted: extents.count, blobBytesFreed: freed)
    }

    private func rewrapAll(_ view: TransactionView, from old: UInt64, to new: UInt64, newKey: SecureBytes, erasing p: Hash,
                           erasureIndex: UInt64) throws {
        var updates: [([UInt8], PatientState)] = []
        try view.withCursor(patients) { cursor in
            var more = try cursor.first()
            while more {
                let (key, state) = cursor.withCurrent { key, value in (Array(key), PatientState(decoding: value)) }
                guard var state, let pk = Hash(key) else { throw LedgerError(.storage, "unreadable patient state") }
                if pk == p {
                    state.status = .erased
                    state.wrappedKeys = []
                    state.index = erasureIndex
                } else if state.status == .active {
                    guard state.epoch >= 1 else { throw LedgerError(.storage, "an active patient without a data key") }
                    state.wrappedKeys = try (1...state.epoch).map { epoch in
                        var raw = try unwrap(state, pk, epoch: epoch).withUnsafeBytes { Array($0) }
                        defer { secureZero(&raw) }
                        return try AESGCM.seal(raw, key: newKey, associatedData: Self.dataKeyAAD(pk, new, epoch))
                    }
                }
                state.generation = new
                updates.append((key, state))
                more = try cursor.next()
            }
        }
        for (key, state) in updates { try view.put(patients, key: key, value: state.encoded()) }
    }
}

/// The patient layer's private databases (`docs/FORMATS.md` section 10.5).
struct PatientTables {
    let meta: Database
    let patients: Database
    let records: Database
    let grants: Database
    let audit: Database
    let breakGlass: Database
    /// `pl.blobs`, absent from ledgers written before blobs existed until a writer opens them.
    let blobs: Database?
    /// `pl.audit.recent`, absent from ledgers written before it existed until a writer opens it.
    let auditRecent: Database?
    /// `pl.records.recent` and `pl.boxes`, absent from ledgers written before they existed
    /// until a writer opens them.
    let stagedRecords: Database?
    let boxes: Database?

    /// Opens them in `view`; nil when a ledger has none and `create` is false.
    init?(_ view: TransactionView, create: Bool) throws {
        var handles: [Database] = []
        for name in ["pl.meta", "pl.patients", "pl.records", "pl.grants", "pl.audit", "pl.breakglass"] {
            guard let db = try view.openDatabase(name, create: create) else { return nil }
            handles.append(db)
        }
        (meta, patients, records, grants, audit, breakGlass) = (handles[0], handles[1], handles[2], handles[3], handles[4], handles[5])
        blobs = try view.openDatabase("pl.blobs", create: create)
        auditRecent = try view.openDatabase("pl.audit.recent", create: create)
        stagedRecords = try view.openDatabase("pl.records.recent", create: create)
        boxes = try view.openDatabase("pl.boxes", create: create)
    }

    var all: [Database] {
        [meta, patients, records, grants, audit, breakGlass] + [blobs, auditRecent, stagedRecords, boxes].compactMap { $0 }
    }

    var recordTables: RecordTables { RecordTables(meta: meta, folded: records, staged: stagedRecords, boxes: boxes) }

    /// The stored state of patient `p`, nil when unknown or unreadable.
    func state(_ view: TransactionView, _ p: Hash) throws -> PatientState? {
        try p.withUnsafeBytes { key in try view.withValue(patients, key: key) { PatientState(decoding: $0) } } ?? nil
    }
}

/// A map over `0..<count` split between two workers, each writing only its own half.
final class ParallelMap<T>: @unchecked Sendable {
    // Sendable: worker 0 writes only `first`, worker 1 only `second`; the caller reads them
    // after concurrentPerform returns, and `body` is safe to call from two threads at once.
    let count: Int
    let body: (Int) throws -> T
    var first: Result<[T], any Error> = .success([])
    var second: Result<[T], any Error> = .success([])

    init(count: Int, body: @escaping (Int) throws -> T) {
        self.count = count
        self.body = body
    }

    func run(_ worker: Int) {
        let range = worker == 0 ? 0..<(count / 2) : (count / 2)..<count
        let result = Result { try range.map(body) }
        if worker == 0 { first = result } else { second = result }
    }

    func results() throws -> [T] { try first.get() + second.get() }
}

/// An audit event, shaped after FHIR AuditEvent: who (agent, role), what (patient, record,
/// version), when (recorded), action, purpose of use, outcome.
struct AuditEvent {
    var action: String
    var accessor: Accessor
    var patient: Hash
    /// The record (or blob) name hash the access concerns; written as hex.
    var record: Hash?
    var version: UInt32?
    var purpose: String
    var breakGlass: String?
    var time: Date
    var outcome = "success"
    var detail: String?

    var agent: String

    /// How an access ended, as its audit entry says: `success`, or `refused` with the error code.
    static func outcome<T>(of result: Result<T, LedgerError>) -> (outcome: String, detail: String?) {
        switch result {
        case .success: return ("success", nil)
        case .failure(let error): return ("refused", error.code.description)
        }
    }

    /// Records how the access ended: `success`, or `refused` with the error code.
    mutating func settle<T>(_ result: Result<T, LedgerError>) {
        (outcome, detail) = Self.outcome(of: result)
    }

    init(action: String, accessor: Accessor, agent: String, patient: Hash, record: Hash?, version: UInt32?, purpose: String, breakGlass: String?, time: Date) {
        self.action = action
        self.accessor = accessor
        self.agent = agent
        self.patient = patient
        self.record = record
        self.version = version
        self.purpose = purpose
        self.breakGlass = breakGlass.flatMap { $0.isEmpty ? nil : $0 }
        self.time = time
    }

    /// The payload of the event's log entry: the bytes `PatientPayload.encode(json)` makes (keys
    /// in UTF-8 order), written directly.
    func encoded() -> [UInt8] {
        AuditEncoder(action: action, accessor: accessor, agent: agent, purpose: purpose, breakGlass: breakGlass, time: time)
            .encode(patient: patient, record: record, version: version, outcome: outcome, detail: detail)
    }

    /// The row the committer appends for this event.
    var row: AuditRow { AuditRow(payload: encoded(), patient: patient, breakGlass: breakGlass != nil) }
}

/// An audit event as the committer appends it: the log entry's payload, and what the audit
/// index tables file it under. Small, so that queueing a batch's rows copies little.
struct AuditRow {
    var payload: [UInt8]
    var patient: Hash
    var breakGlass: Bool
}

/// Writes the payloads of audit events that share their accessor, action, purpose, reason and
/// time (a batch read's): the members those fix are escaped once, into fragments, and each
/// event writes only its patient, record, version and outcome between them. Members in UTF-8
/// order, as `PatientPayload.encode` writes them.
struct AuditEncoder {
    /// `{"action":…,"agent":…,"break_glass":…`
    private let head: [UInt8]
    /// `,"purpose":…` and, for break-glass, `,"reason":…`
    private let middle: [UInt8]
    /// `,"recorded_ms":…,"role":…,"type":"audit","v":1`
    private let tail: [UInt8]

    init(action: String, accessor: Accessor, agent: String, purpose: String, breakGlass: String?, time: Date) {
        let breakGlass = breakGlass.flatMap { $0.isEmpty ? nil : $0 }
        head = ByteWriter.build(capacity: 40 + ByteWriter.jsonBound(action) + ByteWriter.jsonBound(agent)) { out in
            out.raw(#"{"action":"#); out.string(action)
            out.raw(#","agent":"#); out.string(agent)
            out.raw(breakGlass != nil ? #","break_glass":true"# : #","break_glass":false"#)
        }
        middle = ByteWriter.build(capacity: 24 + ByteWriter.jsonBound(purpose) + (breakGlass.map(ByteWriter.jsonBound) ?? 0)) { out in
            out.raw(#","purpose":"#); out.string(purpose)
            if let breakGlass { out.raw(#","reason":"#); out.string(breakGlass) }
        }
        let role = accessor.role.rawValue
        tail = ByteWriter.build(capacity: 64 + 21 + ByteWriter.jsonBound(role)) { out in
            out.raw(#","recorded_ms":"#); out.integer(Int64(time.timeIntervalSince1970 * 1000))
            out.raw(#","role":"#); out.string(role)
            out.raw(#","type":"audit","v":1"#)
        }
    }

    /// One event's payload.
    func encode(patient: Hash, record: Hash?, version: UInt32?, outcome: String, detail: String?) -> [UInt8] {
        let capacity = head.count + middle.count + tail.count + 16 + 77 + 12 + ByteWriter.jsonBound(outcome)
            + (detail.map { 12 + ByteWriter.jsonBound($0) } ?? 0) + (record == nil ? 0 : 77) + 32
        return ByteWriter.build(capacity: capacity) { out in
            out.bytes(head)
            if let detail { out.raw(#","detail":"#); out.string(detail) }
            out.raw(#","outcome":"#); out.string(outcome)
            out.raw(#","patient":"#); out.hexString(patient)
            out.bytes(middle)
            if let record { out.raw(#","record":"#); out.hexString(record) }
            out.bytes(tail)
            if let version, version > 0 { out.raw(#","version":"#); out.integer(Int64(version)) }
            out.raw("}")
        }
    }
}

extension AuditEvent {
    var json: [String: Any] {
        var out: [String: Any] = [
            "type": "audit", "v": 1, "action": action, "agent": agent, "role": accessor.role.rawValue,
            "patient": patient.hex, "purpose": purpose, "outcome": outcome,
            "recorded_ms": Int64(time.timeIntervalSince1970 * 1000), "break_glass": breakGlass != nil,
        ]
        if let record { out["record"] = record.hex }
        if let version, version > 0 { out["version"] = Int(version) }
        if let breakGlass { out["reason"] = breakGlass }
        if let detail { out["detail"] = detail }
        return out
    }
}

/// The ids of recent write transactions one writer committed, to tell whether every commit in
/// a range of ids was its own. Keeps the newest `capacity` or so: an older id reads as not
/// its own, which only costs the caller a check it could have skipped.
final class CommitIDs: @unchecked Sendable {
    // Sendable: `ids` is read and written under `lock`.
    private let lock = NSLock()
    private var ids = Set<UInt64>()
    private var newest: UInt64 = 0
    private let capacity: Int

    init(capacity: Int = 4096) { self.capacity = capacity }

    func insert(_ id: UInt64) {
        lock.withLock {
            ids.insert(id)
            newest = max(newest, id)
            if ids.count > 2 * capacity {
                let oldest = newest - UInt64(capacity)
                ids = ids.filter { $0 > oldest }
            }
        }
    }

    /// Whether every id in `range` is one this writer committed (true for an empty range).
    func containsAll(_ range: Range<UInt64>) -> Bool {
        guard range.count <= capacity else { return false }
        return lock.withLock { range.allSatisfy { ids.contains($0) } }
    }
}

/// Group commit for audit events: concurrent readers' events share one append. The first
/// waiting reader commits everything queued, the others wait for it; a reader returns only
/// once its own event is durable.
final class AuditCommitter: @unchecked Sendable {
    // Sendable: `condition` guards `queue`, `waiting` and `committing`.
    private final class Ticket {
        var done = false
        var error: (any Error)?
    }

    private unowned let records: PatientRecords
    private let condition = NSCondition()
    private var queue: [AuditRow] = []
    /// The readers whose rows `queue` holds.
    private var waiting: [Ticket] = []
    private var committing = false
    private var commitCount = 0
    private var beforeAppendHook: (@Sendable () -> Void)?
    /// Commits made, for tests and diagnostics.
    var commits: Int {
        condition.lock()
        defer { condition.unlock() }
        return commitCount
    }

    /// Events waiting for the next commit, for tests.
    var queuedEvents: Int {
        condition.lock()
        defer { condition.unlock() }
        return queue.count
    }

    /// Runs before each append, with no lock held; tests use it to hold a commit open while
    /// other readers queue, so sharing does not depend on the scheduler.
    var beforeAppend: (@Sendable () -> Void)? {
        get {
            condition.lock()
            defer { condition.unlock() }
            return beforeAppendHook
        }
        set {
            condition.lock()
            beforeAppendHook = newValue
            condition.unlock()
        }
    }

    init(records: PatientRecords) { self.records = records }

    /// Queues `events` and returns once they committed (or their commit failed).
    func record(_ events: [AuditRow]) throws {
        guard !events.isEmpty else { return }
        let ticket = Ticket()
        condition.lock()
        queue += events
        waiting.append(ticket)
        while !ticket.done {
            if committing {
                condition.wait()
                continue
            }
            committing = true
            commitCount += 1
            let batch = queue, tickets = waiting
            queue.removeAll(keepingCapacity: true)
            waiting.removeAll(keepingCapacity: true)
            let hook = beforeAppendHook
            condition.unlock()
            hook?()
            var failure: (any Error)?
            do { try records.appendAudit(batch) } catch { failure = error }
            condition.lock()
            for t in tickets {
                t.done = true
                t.error = failure
            }
            committing = false
            condition.broadcast()
        }
        condition.unlock()
        if let error = ticket.error { throw error }
    }
}

/// The OpenSSL contexts one thread of a batch opens boxes with (``AESGCM/Opener``): record
/// boxes under their version keys, and wrapped data keys under the master key of their
/// generation, expanded once per batch (not once per patient).
struct BatchOpeners {
    let boxes: AESGCM.Opener
    /// The key is compared too: a key file read again may give a generation another key.
    private var master: (generation: UInt64, key: SecureBytes, opener: AESGCM.Opener)?

    init() throws { boxes = try AESGCM.Opener() }

    /// The opener for data keys wrapped under master key `generation` (which is `key`).
    mutating func master(_ generation: UInt64, key: SecureBytes) throws -> AESGCM.Opener {
        if let master, master.generation == generation, master.key === key { return master.opener }
        let opener = try AESGCM.Opener(key: key)
        master = (generation, key, opener)
        return opener
    }
}

/// The last few values a batch computed, by key: a batch usually reads several records of one
/// patient in a row, and a scan of a handful of keys costs less than hashing each request into
/// a dictionary (which a batch of distinct patients pays for nothing). Values beyond the last
/// ``capacity`` are computed again.
struct RecentValues<Key: Equatable, Value> {
    static var capacity: Int { 8 }
    private var keys: [Key] = []
    private var values: [Value] = []
    /// The slot the next new key replaces once full (oldest first).
    private var next = 0

    /// The value kept for `key`, or the one `make` computes (then kept).
    mutating func value(for key: Key, _ make: () throws -> Value) rethrows -> Value {
        if let i = keys.firstIndex(of: key) { return values[i] }
        let value = try make()
        if keys.count < Self.capacity {
            keys.append(key)
            values.append(value)
        } else {
            keys[next] = key
            values[next] = value
            next = (next + 1) % Self.capacity
        }
        return value
    }
}

/// An external id compared by its UTF-8 bytes, as its pseudonym is computed: `String`'s `==`
/// equates canonically equivalent spellings (a precomposed "é" and "e" with a combining
/// accent), which name different patients.
struct ExternalID: Equatable {
    let id: String
    init(_ id: String) { self.id = id }
    static func == (a: ExternalID, b: ExternalID) -> Bool {
        var x = a.id, y = b.id
        guard x.utf8.count == y.utf8.count else { return false }
        return x.withUTF8 { xs in y.withUTF8 { ys in xs.count == 0 || memcmp(xs.baseAddress!, ys.baseAddress!, xs.count) == 0 } }
    }
}
