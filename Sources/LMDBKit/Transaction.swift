internal import CLMDB
internal import CLMDBGuard

/// An LMDB transaction, lent to the closure of ``Environment/read(_:)`` or ``Environment/write(_:)``.
///
/// It cannot be copied or kept: the environment commits or aborts it when the closure ends.
/// Pointers handed out by `with…` methods are valid only inside their closure, because LMDB
/// values live in the memory map and die with the transaction.
///
/// Thread safety: use a transaction only on the thread running its closure.
public struct Transaction: ~Copyable {
    /// A copyable view of this transaction for layers that keep it in their own reader or
    /// writer values. It is valid only until the closure that received the transaction returns;
    /// using it afterwards is undefined behaviour.
    public let unsafeView: TransactionView
    /// Whether this is a read-only transaction.
    public var isReadOnly: Bool { unsafeView.isReadOnly }
    private var finished = false

    init(txn: OpaquePointer, isReadOnly: Bool, bounds: MapBounds?) {
        self.unsafeView = TransactionView(txn: txn, isReadOnly: isReadOnly, bounds: bounds)
    }

    deinit {
        if !finished {
            clmdb_txn_ended(unsafeView.txn)
            mdb_txn_abort(unsafeView.txn)
        }
    }

    /// Commits (`mdb_txn_commit`). LMDB frees the transaction even when the commit fails.
    consuming func commit() throws {
        finished = true
        try check(clmdb_txn_commit(unsafeView.txn), isReadOnly ? "end read transaction" : "commit")
    }

    /// Opens a named database inside this transaction; see ``TransactionView/openDatabase(_:create:)``.
    public func openDatabase(_ name: String?, create: Bool) throws -> Database? {
        try unsafeView.openDatabase(name, create: create)
    }

    /// Calls `body` with the value under `key`; see ``TransactionView/withValue(_:key:_:)``.
    @inlinable
    public func withValue<K: LMDBBytes, R>(_ db: Database, key: K, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R? {
        try unsafeView.withValue(db, key: key, body)
    }

    /// A copy of the value under `key`, or `nil`.
    public func value<K: LMDBBytes>(_ db: Database, key: K) throws -> [UInt8]? {
        try unsafeView.value(db, key: key)
    }

    /// Stores `value` under `key`; see ``TransactionView/put(_:key:value:flags:)``.
    @inlinable
    public func put<K: LMDBBytes, V: LMDBBytes>(_ db: Database, key: K, value: V, flags: TransactionView.PutFlags = []) throws {
        try unsafeView.put(db, key: key, value: value, flags: flags)
    }

    /// Deletes `key`; returns false when absent.
    @discardableResult
    public func delete<K: LMDBBytes>(_ db: Database, key: K) throws -> Bool {
        try unsafeView.delete(db, key: key)
    }

    /// The number of keys in `db`.
    public func count(_ db: Database) throws -> Int { try unsafeView.count(db) }

    /// Lends a cursor over `db`.
    public func withCursor<R>(_ db: Database, _ body: (inout Cursor) throws -> R) throws -> R {
        try unsafeView.withCursor(db, body)
    }
}

/// The operations of a transaction, as a copyable value; see ``Transaction/unsafeView``.
public struct TransactionView {
    @usableFromInline
    let txn: OpaquePointer
    /// Whether the transaction is read-only.
    public let isReadOnly: Bool

    /// For read transactions: the mapped pages of the snapshot.
    @usableFromInline
    let bounds: MapBounds?

    init(txn: OpaquePointer, isReadOnly: Bool, bounds: MapBounds?) {
        self.txn = txn
        self.isReadOnly = isReadOnly
        self.bounds = bounds
    }

    /// The snapshot a read transaction sees (`mdb_txn_id`: the id of the newest write
    /// transaction it sees): two read transactions with the same id read the same state.
    public var snapshotID: UInt64 { UInt64(mdb_txn_id(txn)) }

    /// How a value is stored (`mdb_put` flags).
    public struct PutFlags: OptionSet, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        /// Fail with `.keyExists` if the key is present (`MDB_NOOVERWRITE`).
        public static let noOverwrite = PutFlags(rawValue: UInt32(MDB_NOOVERWRITE))
        /// The key is larger than every key in the database (`MDB_APPEND`): no search, full pages.
        /// Fails with `.keyExists` when it is not.
        public static let append = PutFlags(rawValue: UInt32(MDB_APPEND))
    }

    /// Opens a named database inside this transaction (`mdb_dbi_open`).
    /// - Returns: `nil` when it does not exist and `create` is false.
    public func openDatabase(_ name: String?, create: Bool) throws -> Database? {
        var dbi: MDB_dbi = 0
        let flags: UInt32 = create ? UInt32(MDB_CREATE) : 0
        let rc: Int32
        if let name {
            rc = clmdb_dbi_open(txn, name, flags, &dbi)
        } else {
            rc = clmdb_dbi_open(txn, nil, flags, &dbi)
        }
        if rc == MDB_NOTFOUND && !create { return nil }
        try check(rc, "open database \(name ?? "(main)")")
        return Database(dbi: dbi)
    }

    /// Calls `body` with the value stored under `key` (`mdb_get`), or returns `nil` when absent.
    /// The buffer is valid only inside `body`.
    @inlinable
    public func withValue<K: LMDBBytes, R>(
        _ db: Database, key: K, _ body: (UnsafeRawBufferPointer) throws -> R
    ) throws -> R? {
        try key.withLMDBBytes { keyBytes in
            try withValue(db, rawKey: keyBytes, body)
        }
    }

    @usableFromInline
    func withValue<R>(_ db: Database, rawKey: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R? {
        var k = MDB_val(mv_size: rawKey.count, mv_data: UnsafeMutableRawPointer(mutating: rawKey.baseAddress))
        var v = MDB_val()
        let rc = clmdb_get(txn, db.dbi, &k, &v)
        if rc == MDB_NOTFOUND { return nil }
        try check(rc, "mdb_get")
        try bounds?.check(v, "mdb_get")
        return try body(UnsafeRawBufferPointer(start: v.mv_data, count: v.mv_size))
    }

    /// A copy of the value stored under `key`, or `nil`.
    public func value<K: LMDBBytes>(_ db: Database, key: K) throws -> [UInt8]? {
        try withValue(db, key: key) { Array($0) }
    }

    /// Stores `value` under `key` (`mdb_put`).
    /// - Throws: `.keyExists` for `.noOverwrite` or an out-of-order `.append`; `.mapFull`
    ///   (handled by ``Environment/write(_:)``); `.badValueSize` for keys over 511 bytes.
    @inlinable
    public func put<K: LMDBBytes, V: LMDBBytes>(_ db: Database, key: K, value: V, flags: PutFlags = []) throws {
        try key.withLMDBBytes { keyBytes in
            try value.withLMDBBytes { valueBytes in
                try put(db, rawKey: keyBytes, rawValue: valueBytes, flags: flags)
            }
        }
    }

    @usableFromInline
    func put(_ db: Database, rawKey: UnsafeRawBufferPointer, rawValue: UnsafeRawBufferPointer, flags: PutFlags) throws {
        var k = MDB_val(mv_size: rawKey.count, mv_data: UnsafeMutableRawPointer(mutating: rawKey.baseAddress))
        var v = MDB_val(mv_size: rawValue.count, mv_data: UnsafeMutableRawPointer(mutating: rawValue.baseAddress))
        try check(clmdb_put(txn, db.dbi, &k, &v, flags.rawValue), "mdb_put")
    }

    /// Reserves `size` bytes under `key` and lets `body` fill them in place (`MDB_RESERVE`),
    /// saving a copy for values assembled from parts.
    @inlinable
    public func put<K: LMDBBytes>(
        _ db: Database, key: K, reservingCapacity size: Int, flags: PutFlags = [],
        _ body: (UnsafeMutableRawBufferPointer) throws -> Void
    ) throws {
        try key.withLMDBBytes { keyBytes in
            try reserve(db, rawKey: keyBytes, size: size, flags: flags, body)
        }
    }

    @usableFromInline
    func reserve(_ db: Database, rawKey: UnsafeRawBufferPointer, size: Int, flags: PutFlags,
                 _ body: (UnsafeMutableRawBufferPointer) throws -> Void) throws {
        var k = MDB_val(mv_size: rawKey.count, mv_data: UnsafeMutableRawPointer(mutating: rawKey.baseAddress))
        var v = MDB_val(mv_size: size, mv_data: nil)
        try check(clmdb_put(txn, db.dbi, &k, &v, flags.rawValue | UInt32(MDB_RESERVE)), "mdb_put (reserve)")
        try body(UnsafeMutableRawBufferPointer(start: v.mv_data, count: size))
    }

    /// Deletes `key` (`mdb_del`). Returns false when it was absent.
    @discardableResult
    public func delete<K: LMDBBytes>(_ db: Database, key: K) throws -> Bool {
        try key.withLMDBBytes { keyBytes in
            var k = MDB_val(mv_size: keyBytes.count, mv_data: UnsafeMutableRawPointer(mutating: keyBytes.baseAddress))
            let rc = clmdb_del(txn, db.dbi, &k, nil)
            if rc == MDB_NOTFOUND { return false }
            try check(rc, "mdb_del")
            return true
        }
    }

    /// Removes every key of `db` (`mdb_drop` without deleting the database).
    public func clear(_ db: Database) throws {
        try check(clmdb_drop(txn, db.dbi, 0), "mdb_drop")
    }

    /// The flags `db` was created with (`mdb_dbi_flags`); 0 for the plain databases this
    /// package creates.
    public func flags(_ db: Database) throws -> UInt32 {
        var flags: UInt32 = 0
        try check(mdb_dbi_flags(txn, db.dbi, &flags), "mdb_dbi_flags")
        return flags
    }

    /// The number of keys in `db` (`mdb_stat`).
    public func count(_ db: Database) throws -> Int {
        var st = MDB_stat()
        try check(clmdb_stat(txn, db.dbi, &st), "mdb_stat")
        return st.ms_entries
    }

    /// Pages used by `db`'s B-tree (branch, leaf and overflow), times the page size.
    public func storedBytes(_ db: Database) throws -> Int {
        var st = MDB_stat()
        try check(clmdb_stat(txn, db.dbi, &st), "mdb_stat")
        return (st.ms_branch_pages + st.ms_leaf_pages + st.ms_overflow_pages) * Int(st.ms_psize)
    }

    /// Lends a cursor over `db` to `body` (`mdb_cursor_open`), closing it afterwards.
    public func withCursor<R>(_ db: Database, _ body: (inout Cursor) throws -> R) throws -> R {
        var cursor: OpaquePointer?
        try check(mdb_cursor_open(txn, db.dbi, &cursor), "mdb_cursor_open")
        guard let cursor else { throw LMDBError(code: .other, operation: "mdb_cursor_open") }
        var wrapped = Cursor(cursor: cursor, bounds: bounds)
        return try body(&wrapped)
    }
}


/// A position in a database, lent by ``Transaction/withCursor(_:_:)``.
///
/// Positioning methods return false when there is no such entry. The key and value handed to
/// ``withCurrent(_:)`` are valid only inside its closure.
public struct Cursor: ~Copyable {
    let cursor: OpaquePointer
    private var key = MDB_val()
    private var value = MDB_val()

    let bounds: MapBounds?

    init(cursor: OpaquePointer, bounds: MapBounds?) {
        self.cursor = cursor
        self.bounds = bounds
    }

    deinit { mdb_cursor_close(cursor) }

    private mutating func move(_ op: MDB_cursor_op, _ name: String) throws -> Bool {
        let rc = clmdb_cursor_get(cursor, &key, &value, op)
        if rc == MDB_NOTFOUND { return false }
        try check(rc, name)
        if let bounds {
            try bounds.check(key, name)
            try bounds.check(value, name)
        }
        return true
    }

    /// Moves to the first entry (`MDB_FIRST`).
    public mutating func first() throws -> Bool { try move(MDB_FIRST, "cursor first") }
    /// Moves to the last entry (`MDB_LAST`).
    public mutating func last() throws -> Bool { try move(MDB_LAST, "cursor last") }
    /// Moves to the next entry (`MDB_NEXT`).
    public mutating func next() throws -> Bool { try move(MDB_NEXT, "cursor next") }
    /// Moves to the previous entry (`MDB_PREV`).
    public mutating func previous() throws -> Bool { try move(MDB_PREV, "cursor previous") }

    /// Moves to the first entry whose key is >= `target` (`MDB_SET_RANGE`).
    public mutating func seek<K: LMDBBytes>(atOrAfter target: K) throws -> Bool {
        try target.withLMDBBytes { bytes in
            key = MDB_val(mv_size: bytes.count, mv_data: UnsafeMutableRawPointer(mutating: bytes.baseAddress))
            return try move(MDB_SET_RANGE, "cursor seek")
        }
    }

    /// Calls `body` with the current key and value.
    public func withCurrent<R>(_ body: (_ key: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(start: key.mv_data, count: key.mv_size),
                 UnsafeRawBufferPointer(start: value.mv_data, count: value.mv_size))
    }

    /// Stores through the cursor (`mdb_cursor_put`); with `.append`, the fastest way to
    /// write increasing keys.
    public mutating func put<K: LMDBBytes, V: LMDBBytes>(key newKey: K, value newValue: V, flags: TransactionView.PutFlags = []) throws {
        try newKey.withLMDBBytes { keyBytes in
            try newValue.withLMDBBytes { valueBytes in
                var k = MDB_val(mv_size: keyBytes.count, mv_data: UnsafeMutableRawPointer(mutating: keyBytes.baseAddress))
                var v = MDB_val(mv_size: valueBytes.count, mv_data: UnsafeMutableRawPointer(mutating: valueBytes.baseAddress))
                try check(clmdb_cursor_put(cursor, &k, &v, flags.rawValue), "mdb_cursor_put")
            }
        }
    }

    /// Deletes the current entry (`mdb_cursor_del`).
    public mutating func deleteCurrent() throws {
        try check(clmdb_cursor_del(cursor, 0), "mdb_cursor_del")
    }
}

/// The address range of the pages a read transaction may return data from.
///
/// In a damaged file a node can claim a size or an overflow page that reaches past the data
/// file; copying it would kill the process with SIGBUS. Keys and values of read transactions
/// are checked against this range and refused as ``LMDBError/Code/corrupted``. (Write
/// transactions also return pages copied to the heap, so they are not checked.)
@usableFromInline
struct MapBounds {
    let start: UInt
    let end: UInt

    @inline(__always)
    func check(_ val: MDB_val, _ operation: String) throws {
        guard val.mv_size > 0 else { return }
        let p = UInt(bitPattern: val.mv_data)
        guard p >= start, p <= end, UInt(val.mv_size) <= end - p else {
            throw LMDBError(code: .corrupted, rawCode: MDB_CORRUPTED, operation: "\(operation): a key or value lies outside the data file (damaged page)")
        }
    }
}
