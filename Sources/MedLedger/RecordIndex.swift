import Foundation
import LMDBKit
import LedgerCrypto

// Where record versions live (DESIGN.md section 10, FORMATS.md section 10.5):
//
// - `pl.boxes`: the boxes (`u32 key epoch || nonce || ciphertext || tag`) of consecutive
//   entries packed into runs under `u64 last index || 0x01`, written in log order (appends
//   only), rewritten only by an erasure (`BoxRun`); rows of ledgers written before runs
//   existed hold one box under `u64 entry index` and are read as before;
// - `pl.records.recent`: `u64 entry index -> p || r || u32 version`, the versions not yet
//   folded, in log order;
// - `pl.records`: `p || r || u32 version -> u64 entry index`, the folded versions, in record
//   order (rows of ledgers written before `pl.boxes` existed hold `u64 index || u32 epoch ||
//   box` instead, and are read as before);
// - `pl.meta` `records.folded`: every staged row's index is at least this (absent: 0).
//
// A put so writes two rows at the ends of two log-ordered tables instead of one row under a
// random key (about one dirty leaf page per record), and the fold moves many staged rows into
// `pl.records` at once. Finding a record's newest version, or listing a patient's records,
// then needs the staged rows by record and by patient: `StagedRecords` keeps them in memory,
// brought up to each snapshot it is asked about.

/// A record version's place in `pl.records.recent`.
struct StagedVersion: Hashable {
    let slot: RecordSlot
    let version: UInt32

    func hash(into hasher: inout Hasher) {
        slot.hash(into: &hasher)
        hasher.combine(version)
    }
}

/// The staged record versions (`pl.records.recent`) by record, in memory, shared by the
/// threads of one process.
///
/// The staged rows only grow between two changes of `records.folded`: a fold empties them and
/// an erasure folds before it deletes (so rows never vanish from under the same fold point).
/// Each fold point seen starts an era, a set of rows of its own; a ``Lens`` keeps the era of its
/// snapshot, so a later era never takes rows away from it. Within an era, rows read from a
/// later snapshot are filtered out by each snapshot's bounds. A snapshot older than the current
/// era reads its staged rows through an index of its own (``StagedRecords/scanning(_:tables:)``).
final class StagedRecords: @unchecked Sendable {
    // Sendable: `era` and every era's contents are read and written under `lock`.
    private let lock = NSLock()
    private var era = Era(folded: 0)

    /// The staged rows at or past one fold point.
    fileprivate final class Era {
        let folded: UInt64
        var newest: [RecordSlot: UInt32] = [:]
        var versions: [StagedVersion: UInt64] = [:]
        /// Each patient's records with staged rows in this era, each named once.
        var records: [Hash: [Hash]] = [:]
        /// Every staged row of this era below this index is held.
        var scannedTo: UInt64
        init(folded: UInt64) { (self.folded, scannedTo) = (folded, folded) }
    }

    /// The part of the staged rows one snapshot sees: indexes in `folded..<end`.
    struct Bounds {
        /// `records.folded` in the snapshot.
        let folded: UInt64
        /// One past the snapshot's last staged row (`folded` when none is staged).
        let end: UInt64
        func contains(_ index: UInt64) -> Bool { index >= folded && index < end }
    }

    /// The snapshot `view` together with the staged rows to look its versions up in.
    struct Lens {
        let staged: StagedRecords
        fileprivate let era: Era
        let bounds: Bounds

        /// The staged version of a record in the snapshot (the newest when `version` is nil)
        /// and its entry index; nil when not staged.
        func find(_ slot: RecordSlot, version: UInt32?) -> StoredVersion.Place? { find([(slot, version)])[0] }

        /// ``find(_:version:)`` for many records under one acquisition of the index's lock.
        func find(_ wanted: [(slot: RecordSlot, version: UInt32?)]) -> [StoredVersion.Place?] { staged.find(wanted, era, bounds) }

        /// Every staged version of patient `p`'s records (of record `r` alone when given) in the
        /// snapshot, with its entry index: what a listing adds to the folded rows, found without
        /// a scan of `pl.records.recent`.
        func versions(of p: Hash, record r: Hash?) -> [(r: Hash, version: UInt32, index: UInt64)] {
            staged.versions(of: p, record: r, era, bounds)
        }
    }

    /// A lens on `view` through this shared index (first bringing it up to `view`), or
    /// through a private one when `view` is older than the era this index has reached.
    func lens(_ view: TransactionView, tables: RecordTables) throws -> Lens {
        let folded = try Self.foldedThrough(view, meta: tables.meta)
        guard let staged = tables.staged else {
            return Lens(staged: self, era: lock.withLock { era }, bounds: Bounds(folded: folded, end: folded))
        }
        let end = try view.withCursor(staged) { cursor -> UInt64 in
            guard try cursor.last() else { return folded }
            return try cursor.withCurrent { key, _ in
                guard let index = UInt64(bigEndianBytes: key) else { throw LedgerError(.storage, "malformed pl.records.recent key") }
                return max(folded, index + 1)
            }
        }
        let bounds = Bounds(folded: folded, end: end)
        lock.lock()
        defer { lock.unlock() }
        if folded < era.folded { return try Self.scanning(view, tables: tables) }
        if folded > era.folded { era = Era(folded: folded) }
        let current = era
        if current.scannedTo < end {
            try tables.forEachStaged(view, from: current.scannedTo) { row in
                guard let (index, name) = row else { throw RecordTables.malformedStagedRow }
                current.versions[StagedVersion(slot: name.slot, version: name.version)] = index
                if name.version > current.newest[name.slot, default: 0],
                   current.newest.updateValue(name.version, forKey: name.slot) == nil {
                    current.records[name.slot.p, default: []].append(name.slot.r)
                }
            }
            current.scannedTo = end
        }
        return Lens(staged: self, era: current, bounds: bounds)
    }

    /// A private index of every staged row `view` holds.
    static func scanning(_ view: TransactionView, tables: RecordTables) throws -> Lens {
        try StagedRecords().lens(view, tables: tables)
    }

    private func find(_ wanted: [(slot: RecordSlot, version: UInt32?)], _ era: Era, _ bounds: Bounds) -> [StoredVersion.Place?] {
        lock.lock()
        defer { lock.unlock() }
        return wanted.map { slot, version in
            if let version {
                guard let index = era.versions[StagedVersion(slot: slot, version: version)], bounds.contains(index) else { return nil }
                return StoredVersion.Place(version: version, index: index)
            }
            var newest: StoredVersion.Place?
            Self.walk(slot, era, bounds) { version, index in
                newest = StoredVersion.Place(version: version, index: index)
                return false
            }
            return newest
        }
    }

    private func versions(of p: Hash, record r: Hash?, _ era: Era, _ bounds: Bounds) -> [(r: Hash, version: UInt32, index: UInt64)] {
        lock.lock()
        defer { lock.unlock() }
        var out: [(r: Hash, version: UInt32, index: UInt64)] = []
        for r in r.map({ [$0] }) ?? era.records[p] ?? [] {
            Self.walk(RecordSlot(p: p, r: r), era, bounds) { version, index in
                out.append((r, version, index))
                return true
            }
        }
        return out
    }

    /// `visit` with each staged version of `slot` that a snapshot with `bounds` sees, newest
    /// first, while it returns true. The walk goes down from the era's newest version and
    /// skips the versions of later snapshots; a record's versions are consecutive, so it ends
    /// at the first one the era does not hold (folded before it) or that is older than the era.
    private static func walk(_ slot: RecordSlot, _ era: Era, _ bounds: Bounds, _ visit: (UInt32, UInt64) -> Bool) {
        guard var version = era.newest[slot] else { return }
        while version > 0, let index = era.versions[StagedVersion(slot: slot, version: version)], index >= bounds.folded {
            if index < bounds.end, !visit(version, index) { return }
            version -= 1
        }
    }

    /// `records.folded` in `view` (0 when absent).
    static func foldedThrough(_ view: TransactionView, meta: Database) throws -> UInt64 {
        try view.withValue(meta, key: foldedKey) { raw -> UInt64 in
            guard let value = UInt64(bigEndianBytes: raw) else { throw LedgerError(.storage, "malformed pl.meta records.folded") }
            return value
        } ?? 0
    }

    static let foldedKey = "records.folded"
}

/// The tables a record version's rows live in.
struct RecordTables {
    let meta: Database
    /// `pl.records`: folded versions.
    let folded: Database
    /// `pl.records.recent`: staged versions; nil only in a read-only ledger written before it
    /// existed (every version is then folded).
    let staged: Database?
    /// `pl.boxes`: ciphertexts by entry index; nil where `staged` is.
    let boxes: Database?

    /// The tables a writer appends to.
    func writable() throws -> (staged: Database, boxes: Database) {
        guard let staged, let boxes else { throw LedgerError(.storage, "records cannot be written: the ledger is open read-only") }
        return (staged, boxes)
    }
}

/// One stored record version as LMDB holds it (valid inside the closure it is lent to).
struct StoredVersion {
    let version: UInt32
    /// The index of the version's `record` entry.
    let index: UInt64
    let epoch: UInt32
    /// nonce || ciphertext || tag.
    let box: UnsafeRawBufferPointer

    /// Which version and entry it is, without the bytes.
    struct Place {
        let version: UInt32
        let index: UInt64
    }
    var place: Place { Place(version: version, index: index) }
}

extension RecordTables {
    /// Splits a `pl.boxes` value or a `pl.records` row of the earlier layout (with its index
    /// first); nil when it is too short for a box.
    static func split(_ raw: UnsafeRawBufferPointer, version: UInt32, index: UInt64?) -> StoredVersion? {
        if let index {
            guard raw.count >= 4 + AESGCM.overhead else { return nil }
            return StoredVersion(version: version, index: index, epoch: UInt32(bigEndian: raw.loadUnaligned(as: UInt32.self)),
                                 box: UnsafeRawBufferPointer(rebasing: raw[4...]))
        }
        guard raw.count >= 12 + AESGCM.overhead else { return nil }
        return StoredVersion(version: version, index: UInt64(bigEndian: raw.loadUnaligned(as: UInt64.self)),
                             epoch: UInt32(bigEndian: raw.loadUnaligned(fromByteOffset: 8, as: UInt32.self)),
                             box: UnsafeRawBufferPointer(rebasing: raw[12...]))
    }

    /// `body` with the box of the version whose `pl.records` row is `row` (an entry index, or a
    /// whole row of the earlier layout); nil when `row` is malformed or its box is missing.
    func withFoldedBox<T>(_ view: TransactionView, row: UnsafeRawBufferPointer, version: UInt32,
                          _ body: (StoredVersion) throws -> T) throws -> T? {
        if let index = UInt64(bigEndianBytes: row) { return try withBox(view, index: index, version: version, body) }
        guard let stored = Self.split(row, version: version, index: nil) else { return nil }
        return try body(stored)
    }

    /// `body` with the box stored for entry `index`; nil when missing (erased), or malformed.
    func withBox<T>(_ view: TransactionView, index: UInt64, version: UInt32, _ body: (StoredVersion) throws -> T) throws -> T? {
        guard let boxes else { return nil }
        return try view.withCursor(boxes) { cursor -> T? in
            // The row at or after `index`: the entry's own row of the per-entry layout, or the
            // run holding it (a run's key sorts after the index of each entry it holds).
            guard try cursor.seek(atOrAfter: index) else { return nil }
            return try cursor.withCurrent { key, value -> T? in
                guard let raw = BoxRun.box(of: index, key: key, value: value),
                      let stored = Self.split(raw, version: version, index: index) else { return nil }
                return try body(stored)
            }
        }
    }

    /// The newest version of a record in the snapshot (0 when none).
    func newestVersion(_ view: TransactionView, _ lens: StagedRecords.Lens, _ p: Hash, _ r: Hash) throws -> UInt32 {
        if let staged = lens.find(RecordSlot(p: p, r: r), version: nil) { return staged.version }
        return try PatientRecords.lastVersion(view, in: folded, p, r)
    }

    /// `body` with a stored record version (the newest when `version` is nil): nil when the
    /// record has no such version, a `.storage` failure when the version's row names a box
    /// that is missing or malformed (a damaged store). A staged version is newer than every
    /// folded one.
    func withVersion<T>(_ view: TransactionView, _ lens: StagedRecords.Lens, _ p: Hash, _ r: Hash, version: UInt32?,
                        _ body: (StoredVersion) throws -> T) throws -> Result<T, LedgerError>? {
        try withVersion(view, staged: lens.find(RecordSlot(p: p, r: r), version: version), p, r, version: version, body)
    }

    /// ``withVersion(_:_:_:_:version:_:)`` with the staged version already looked up
    /// (``StagedRecords/Lens/find(_:)``, nil when none is staged).
    func withVersion<T>(_ view: TransactionView, staged: StoredVersion.Place?, _ p: Hash, _ r: Hash, version: UInt32?,
                        _ body: (StoredVersion) throws -> T) throws -> Result<T, LedgerError>? {
        func checked(_ found: T?) -> Result<T, LedgerError> {
            found.map { .success($0) }
                ?? .failure(LedgerError(.storage, "a record version's stored ciphertext is missing or malformed (damaged store)"))
        }
        if let staged { return checked(try withBox(view, index: staged.index, version: staged.version, body)) }
        if let version {
            return try view.withValue(folded, key: RecordStorageKey(p: p, r: r, version: version)) { row in
                checked(try withFoldedBox(view, row: row, version: version, body))
            }
        }
        return try PatientRecords.withNewestRow(view, in: folded, p, r) { version, row in
            checked(try withFoldedBox(view, row: row, version: version, body))
        }
    }

    /// Writes the boxes and staged rows of new record versions, the entries `first`,
    /// `first + 1`, ... (all appended: they are the newest entries), the boxes packed in runs.
    func append(_ view: TransactionView, first: UInt64, _ versions: [PatientRecords.Prepared]) throws {
        let (staged, boxes) = try writable()
        var start = 0
        while start < versions.count {
            var end = start + 1, slotBytes = 4 + versions[start].box.count
            while end < versions.count {
                let grown = slotBytes + 4 + versions[end].box.count
                guard BoxRun.valueSize(slots: end - start + 1, slotBytes: grown) <= BoxRun.targetValueSize else { break }
                (slotBytes, end) = (grown, end + 1)
            }
            let size = BoxRun.valueSize(slots: end - start, slotBytes: slotBytes)
            let run = versions[start..<end]
            try view.put(boxes, key: BoxRun.key(last: first + UInt64(end - 1)), reservingCapacity: size, flags: .append) { out in
                BoxRun.write(slots: run.count, into: out) { i, slot in
                    let version = run[run.startIndex + i]
                    slot.storeBytes(of: version.epoch.bigEndian, toByteOffset: 0, as: UInt32.self)
                    version.box.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: slot[4...]).copyMemory(from: $0) }
                } sizes: { i in 4 + run[run.startIndex + i].box.count }
            }
            start = end
        }
        for (i, version) in versions.enumerated() {
            try view.put(staged, key: first + UInt64(i), value: RecordStorageKey(p: version.p, r: version.r, version: version.version), flags: .append)
        }
    }

    /// Deletes the boxes of entries `indexes` (an erasure's): their rows of the per-entry
    /// layout, and their slots of runs, each run rewritten without them once (or deleted when
    /// none of its boxes is left). Absent boxes are skipped.
    func deleteBoxes(_ view: TransactionView, _ indexes: [UInt64]) throws {
        guard let boxes else { return }
        var rowKeys: [[UInt8]] = []
        var runs: [[UInt8]: Set<UInt64>] = [:]
        try view.withCursor(boxes) { cursor in
            for index in indexes {
                guard try cursor.seek(atOrAfter: index) else { continue }
                cursor.withCurrent { key, value in
                    guard BoxRun.box(of: index, key: key, value: value) != nil else { return }
                    if key.count == 8 { rowKeys.append(Array(key)) } else { runs[Array(key), default: []].insert(index) }
                }
            }
        }
        for key in rowKeys { _ = try view.delete(boxes, key: key) }
        for (key, erased) in runs {
            guard let value = try view.value(boxes, key: key) else { continue }
            let kept = try key.withUnsafeBytes { key in
                try value.withUnsafeBytes { value -> [[UInt8]] in
                    guard let run = BoxRun(key: key, value: value) else { throw LedgerError(.storage, "malformed pl.boxes run") }
                    return (0..<run.count).map { i in erased.contains(run.firstIndex + UInt64(i)) ? [] : Array(run.slot(i, in: value)) }
                }
            }
            guard kept.contains(where: { !$0.isEmpty }) else {
                _ = try view.delete(boxes, key: key)
                continue
            }
            try view.put(boxes, key: key, reservingCapacity: BoxRun.valueSize(slots: kept.count, slotBytes: kept.reduce(0) { $0 + $1.count })) { out in
                BoxRun.write(slots: kept.count, into: out) { i, slot in
                    kept[i].withUnsafeBytes { slot.copyMemory(from: $0) }
                } sizes: { kept[$0].count }
            }
        }
    }

    /// `body` with the entry index of every box `pl.boxes` holds, in order, or nil for each
    /// malformed row (with its key).
    func forEachBox(_ view: TransactionView, _ body: (_ index: UInt64?, _ rowKey: UnsafeRawBufferPointer) throws -> Void) throws {
        guard let boxes else { return }
        try view.withCursor(boxes) { cursor in
            var more = try cursor.first()
            while more {
                try cursor.withCurrent { key, value in
                    if key.count == 8, let index = UInt64(bigEndianBytes: key) {
                        try body(index, key)
                    } else if let run = BoxRun(key: key, value: value) {
                        for i in 0..<run.count where !run.slot(i, in: value).isEmpty { try body(run.firstIndex + UInt64(i), key) }
                    } else {
                        try body(nil, key)
                    }
                }
                more = try cursor.next()
            }
        }
    }

    /// Rows `pl.records.recent` gathers before they are folded into `pl.records`: the rule of
    /// the audit rows (``PatientRecords/auditFoldThreshold(folded:minimum:)``).
    func foldIfDue(_ view: TransactionView, minimum: Int, sizeAfter: UInt64) throws {
        let staged = try view.count(try writable().staged)
        guard staged >= PatientRecords.auditFoldThreshold(folded: try view.count(folded), minimum: minimum) else { return }
        try fold(view, sizeAfter: sizeAfter)
    }

    /// Moves every staged row into `pl.records`, in key order, and records the fold point.
    func fold(_ view: TransactionView, sizeAfter: UInt64) throws {
        let staged = try writable().staged
        var rows: [(index: UInt64, name: RecordStorageKey)] = []
        rows.reserveCapacity(try view.count(staged))
        try forEachStaged(view, from: nil) { row in
            guard let row else { throw Self.malformedStagedRow }
            rows.append(row)
        }
        rows.sort { $0.name < $1.name }
        for row in rows { try view.put(folded, key: row.name, value: row.index) }
        try view.clear(staged)
        try view.put(meta, key: StagedRecords.foldedKey, value: sizeAfter)
    }

    /// `body` with each staged row from index `start` (the first when nil) to the end, in log
    /// order: its index and record version, or nil for a malformed row.
    func forEachStaged(_ view: TransactionView, from start: UInt64?,
                       _ body: ((index: UInt64, name: RecordStorageKey)?) throws -> Void) throws {
        guard let staged else { return }
        try view.withCursor(staged) { cursor in
            var more = try start.map { try cursor.seek(atOrAfter: $0) } ?? cursor.first()
            while more {
                let row = cursor.withCurrent { key, value in
                    UInt64(bigEndianBytes: key).flatMap { index in RecordStorageKey(value).map { (index, $0) } }
                }
                try body(row)
                more = try cursor.next()
            }
        }
    }

    static let malformedStagedRow = LedgerError(.storage, "malformed pl.records.recent row")
}

/// A `pl.boxes` run: the boxes of consecutive entries in one row (FORMATS.md section 10.5).
///
/// Key `u64 last index || 0x01`; value `u32 n || n x u32 end || slots`, where slot `i` holds
/// entry `last - n + 1 + i`'s `u32 epoch || box` at bytes `end(i-1) ..< end(i)` of the slots
/// (`end(-1)` = 0), and is empty once erased. One box per row would make each 2 KB record a
/// whole 4 KB overflow page, half of it waste that every commit writes and syncs; a run fills
/// its pages. The key sorts after the 8-byte index of every entry the run holds and before
/// the next entry's, so one `MDB_SET_RANGE` seek on an index lands on the row holding its box,
/// of either layout.
struct BoxRun {
    let count: Int
    let firstIndex: UInt64
    /// The value's header bytes; the slots follow.
    private let headerSize: Int

    static let keyMarker: UInt8 = 0x01
    /// A put closes a run before its value would pass this size: eight 4 KB overflow pages
    /// with LMDB's 16-byte page header. A box bigger than that is a run of its own.
    static let targetValueSize = 8 * 4096 - 16

    static func key(last: UInt64) -> [UInt8] { withUnsafeBytes(of: last.bigEndian) { Array($0) } + [keyMarker] }

    static func valueSize(slots: Int, slotBytes: Int) -> Int { 4 + 4 * slots + slotBytes }

    /// Fills a run's value of `slots` slots of `sizes(i)` bytes each; `fill` writes slot `i`.
    static func write(slots: Int, into out: UnsafeMutableRawBufferPointer,
                      _ fill: (Int, UnsafeMutableRawBufferPointer) -> Void, sizes: (Int) -> Int) {
        out.storeBytes(of: UInt32(slots).bigEndian, toByteOffset: 0, as: UInt32.self)
        var at = 4 + 4 * slots, end: UInt32 = 0
        for i in 0..<slots {
            let size = sizes(i)
            end += UInt32(size)
            out.storeBytes(of: end.bigEndian, toByteOffset: 4 + 4 * i, as: UInt32.self)
            fill(i, UnsafeMutableRawBufferPointer(rebasing: out[at..<(at + size)]))
            at += size
        }
    }

    /// Parses a run's row; nil when it is not a well-formed run (a row of the per-entry
    /// layout, or damage).
    init?(key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) {
        guard key.count == 9, key[8] == Self.keyMarker, let last = UInt64(bigEndianBytes: UnsafeRawBufferPointer(rebasing: key[..<8])),
              value.count >= 4 else { return nil }
        let n = Int(UInt32(bigEndian: value.loadUnaligned(as: UInt32.self)))
        guard n >= 1, UInt64(n - 1) <= last, value.count >= 4 + 4 * n else { return nil }
        // Ends never decrease and the last one ends the value.
        var previous: UInt32 = 0
        for i in 0..<n {
            let end = UInt32(bigEndian: value.loadUnaligned(fromByteOffset: 4 + 4 * i, as: UInt32.self))
            guard end >= previous else { return nil }
            previous = end
        }
        guard Int(previous) == value.count - 4 - 4 * n else { return nil }
        (count, firstIndex, headerSize) = (n, last - UInt64(n - 1), 4 + 4 * n)
    }

    /// Slot `i`'s bytes in `value` (empty when erased).
    func slot(_ i: Int, in value: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        let end = Int(UInt32(bigEndian: value.loadUnaligned(fromByteOffset: 4 + 4 * i, as: UInt32.self)))
        let start = i == 0 ? 0 : Int(UInt32(bigEndian: value.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))
        return UnsafeRawBufferPointer(rebasing: value[(headerSize + start)..<(headerSize + end)])
    }

    /// The stored `u32 epoch || box` of entry `index` in the row (`key`, `value`) that a seek to
    /// `index` found: the row itself when it is the entry's own of the per-entry layout, the
    /// entry's slot when it is a run holding it; nil otherwise, or when the slot is empty.
    static func box(of index: UInt64, key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer? {
        if key.count == 8 { return UInt64(bigEndianBytes: key) == index ? value : nil }
        guard let run = BoxRun(key: key, value: value), index >= run.firstIndex, index - run.firstIndex < UInt64(run.count) else { return nil }
        let slot = run.slot(Int(index - run.firstIndex), in: value)
        return slot.isEmpty ? nil : slot
    }
}
