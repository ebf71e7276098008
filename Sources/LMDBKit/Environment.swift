internal import CLMDB
internal import CLMDBGuard
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A handle to a named database inside an ``Environment``.
///
/// Handles are plain values: they stay valid for the environment's lifetime.
public struct Database: Sendable, Hashable {
    let dbi: UInt32
}

/// One LMDB environment: a directory holding `data.mdb` and `lock.mdb`.
///
/// All reads and writes go through ``read(_:)`` and ``write(_:)``, which begin a transaction,
/// lend it to a closure and end it before returning, so no transaction or LMDB pointer outlives
/// its scope. Writes are serialized (LMDB allows one writer per environment across all
/// processes); reads run in parallel with each other and with the writer, each seeing the last
/// committed state when it began. Several processes may open the same environment.
///
/// The map (the largest size the file may reach) starts at ``Options/mapSize`` and doubles,
/// up to ``Options/maxMapSize``, whenever a write fails with `MDB_MAP_FULL`: the write is
/// aborted, the map grown, and the closure run again. A closure passed to `write` must
/// therefore have no effects outside the transaction until `write` returns. Do not call
/// `write` from inside a `read` closure on the same thread: growing the map waits for this
/// process's open transactions to end.
///
/// For example:
/// ```swift
/// let env = try Environment(path: "/tmp/ledger")
/// let db = try env.openDatabase("entries")
/// try env.write { txn in try txn.put(db, key: UInt64(0), value: Array("hello".utf8)) }
/// let value = try env.read { txn in try txn.value(db, key: UInt64(0)) }
/// ```
///
/// Thread safety: an `Environment` may be shared between threads.
public final class Environment: @unchecked Sendable {
    // Sendable: LMDB environments are thread-safe with MDB_NOTLS; `resizeLock` keeps map
    // resizing (which LMDB allows only with no live transaction in this process) apart from
    // open transactions, and `writerLock` serializes this process's writers.

    /// How an environment is opened.
    public struct Options: Sendable {
        /// Initial map size in bytes. The file grows lazily; this is address space, not disk.
        public var mapSize: Int = 1 << 30
        /// The map never grows past this many bytes; a write that needs more fails with `mapFull`.
        public var maxMapSize: Int = 1 << 44
        /// Reader slots shared by all processes (`mdb_env_set_maxreaders`).
        public var maxReaders: UInt32 = 254
        /// Named databases (`mdb_env_set_maxdbs`).
        public var maxDatabases: UInt32 = 96
        /// Open without write access (`MDB_RDONLY`); the directory must exist.
        public var readOnly: Bool = false
        /// Create the directory when missing (ignored when read-only).
        public var createIfMissing: Bool = true
        /// When false, commits do not fsync (`MDB_NOSYNC`): a crash may lose recent commits
        /// but never corrupts the file. Only for tests and scratch data.
        public var durable: Bool = true

        public init() {}
    }

    let env: OpaquePointer
    /// The directory holding the environment.
    public let path: String
    /// Whether the environment was opened read-only.
    public let isReadOnly: Bool
    private let maxMapSize: Int
    private let resizeLock = ReadWriteLock()
    private let writerLock = Mutex()
    // Guarded by resizeLock (read under read lock, changed under write lock).
    private var currentMapSize: Int
    /// LMDB's page size, for bounding what read transactions return.
    private let pageSize: Int
    /// Where the data file is mapped (nil when it cannot be found); changes when the map is resized.
    private var mapBase: UInt?

    /// Opens (and, unless read-only, creates) the environment in directory `path`.
    ///
    /// Calls `mdb_env_create`, `mdb_env_set_mapsize`, `mdb_env_set_maxreaders`,
    /// `mdb_env_set_maxdbs` and `mdb_env_open` with `MDB_NOTLS`.
    /// - Throws: ``LMDBError`` with `.fileNotFound` when a read-only open finds no environment,
    ///   `.versionMismatch` or `.corrupted` for a file LMDB cannot use.
    public init(path: String, options: Options = Options()) throws {
        self.path = path
        self.isReadOnly = options.readOnly
        self.maxMapSize = max(options.maxMapSize, options.mapSize)

        var isDirectory = false
        if !Self.directoryExists(path, isDirectory: &isDirectory) {
            if options.readOnly || !options.createIfMissing {
                throw LMDBError(code: .fileNotFound, rawCode: 2, operation: "open environment \(path)")
            }
            if mkdir(path, 0o700) != 0 && errno != EEXIST {
                throw LMDBError.from(errno, "create directory \(path)")
            }
        } else if !isDirectory {
            throw LMDBError(code: .fileNotFound, rawCode: 20, operation: "open environment \(path) (not a directory)")
        }
        if options.readOnly && access(path + "/data.mdb", R_OK) != 0 {
            throw LMDBError(code: .fileNotFound, rawCode: 2, operation: "open environment \(path) (no data.mdb)")
        }

        // LMDB forbids opening one environment twice in a process (closing either copy drops
        // the other's locks and reader slots), so refuse a second open of the same directory.
        var st = stat()
        guard stat(path, &st) == 0 else { throw LMDBError.from(errno, "open environment \(path)") }
        let identity = OpenEnvironments.Identity(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
        guard OpenEnvironments.shared.claim(identity) else {
            throw LMDBError(code: .busy, rawCode: 16, operation: "open environment \(path) (already open in this process; share the open instance)")
        }
        self.identity = identity

        var handle: OpaquePointer?
        let created = mdb_env_create(&handle)
        guard created == 0, let handle else {
            OpenEnvironments.shared.release(identity)
            throw LMDBError.from(created, "mdb_env_create")
        }
        // From here every failure must close the handle.
        do {
            try check(clmdb_install_assert(handle), "mdb_env_set_assert")
            try Self.checkDataFileLength(path)
            try check(mdb_env_set_mapsize(handle, options.mapSize), "mdb_env_set_mapsize")
            try check(mdb_env_set_maxreaders(handle, options.maxReaders), "mdb_env_set_maxreaders")
            try check(mdb_env_set_maxdbs(handle, options.maxDatabases), "mdb_env_set_maxdbs")
            // Not MDB_NOMEMINIT: without it LMDB zeroes the unused parts of pages it writes;
            // with it, stale heap bytes (which may have held decrypted records) reach the file.
            var flags = UInt32(MDB_NOTLS)
            if options.readOnly { flags |= UInt32(MDB_RDONLY) }
            if !options.durable { flags |= UInt32(MDB_NOSYNC) }
            try check(mdb_env_open(handle, path, flags, 0o600), "open environment \(path)")
            // An existing file may have a larger map than asked for; adopt it.
            var info = MDB_envinfo()
            try check(mdb_env_info(handle, &info), "mdb_env_info")
            self.currentMapSize = info.me_mapsize
            var st = MDB_stat()
            try check(mdb_env_stat(handle, &st), "mdb_env_stat")
            self.pageSize = Int(st.ms_psize)
            self.mapBase = Self.mappedAddress(of: path + "/data.mdb")
        } catch {
            mdb_env_close(handle)
            OpenEnvironments.shared.release(identity)
            throw error
        }
        self.env = handle
    }

    private let identity: OpenEnvironments.Identity

    /// The start of the mapping of `file` at offset 0, from `/proc/self/maps` (LMDB does not
    /// report where it mapped the file unless it chose the address itself).
    static func mappedAddress(of file: String) -> UInt? {
        guard let resolved = realpath(file, nil) else { return nil }
        defer { free(resolved) }
        let target = String(cString: resolved)
        let fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = Glibc.read(fd, &chunk, chunk.count)
            if n <= 0 { break }
            bytes += chunk[0..<n]
        }
        let maps = String(decoding: bytes, as: UTF8.self)
        for line in maps.split(separator: "\n") where line.hasSuffix(" " + target) {
            // start-end perms offset dev inode path
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 6, fields[2] == "00000000", let dash = fields[0].firstIndex(of: "-") else { continue }
            return UInt(fields[0][..<dash], radix: 16)
        }
        return nil
    }

    /// Refuses a data file shorter than its newest meta page says. LMDB would map it anyway,
    /// and the first read of a page past the end would kill the process with SIGBUS.
    ///
    /// The meta pages are the first two pages: after the 16-byte page header, `mm_magic` (u32)
    /// at byte 16, the page size (the free database's `md_pad`, u32) at byte 40, `mm_last_pg`
    /// (u64) at 136 and `mm_txnid` (u64) at 144, in the machine's byte order. LMDB uses the
    /// valid meta page with the larger transaction id.
    static func checkDataFileLength(_ directory: String) throws {
        let fd = open(directory + "/data.mdb", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return }  // a new environment: LMDB creates the file
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_size > 0 else { return }
        func meta(at offset: Int) -> (lastPage: UInt64, txnid: UInt64, pageSize: UInt64)? {
            var raw = [UInt8](repeating: 0, count: 152)
            guard pread(fd, &raw, raw.count, off_t(offset)) == raw.count else { return nil }
            return raw.withUnsafeBytes { b in
                guard b.loadUnaligned(fromByteOffset: 16, as: UInt32.self) == 0xBEEF_C0DE else { return nil }
                return (b.loadUnaligned(fromByteOffset: 136, as: UInt64.self), b.loadUnaligned(fromByteOffset: 144, as: UInt64.self),
                        UInt64(b.loadUnaligned(fromByteOffset: 40, as: UInt32.self)))
            }
        }
        guard let first = meta(at: 0), first.pageSize >= 512, first.pageSize <= 1 << 16 else { return }  // LMDB refuses it itself
        let second = meta(at: Int(first.pageSize))
        let newest = second.map { $0.txnid > first.txnid ? $0 : first } ?? first
        let (pages, overflow) = newest.lastPage.addingReportingOverflow(1)
        let (needed, overflow2) = pages.multipliedReportingOverflow(by: first.pageSize)
        if overflow || overflow2 || needed > UInt64(st.st_size) {
            throw LMDBError(code: .corrupted, rawCode: MDB_CORRUPTED,
                            operation: "open environment \(directory): data.mdb holds \(st.st_size) bytes but its newest meta page needs \(overflow || overflow2 ? "more" : String(needed)) (truncated or damaged)")
        }
    }

    deinit {
        mdb_env_close(env)
        OpenEnvironments.shared.release(identity)
    }

    private static func directoryExists(_ path: String, isDirectory: inout Bool) -> Bool {
        var st = stat()
        guard stat(path, &st) == 0 else { return false }
        isDirectory = (st.st_mode & S_IFMT) == S_IFDIR
        return true
    }

    /// The current map size in bytes.
    public var mapSize: Int { resizeLock.withReadLock { currentMapSize } }

    /// Bytes of the data file in use (last page number + 1, times the page size).
    public func usedBytes() throws -> Int {
        var info = MDB_envinfo()
        try check(mdb_env_info(env, &info), "mdb_env_info")
        var st = MDB_stat()
        try check(mdb_env_stat(env, &st), "mdb_env_stat")
        return (info.me_last_pgno + 1) * Int(st.ms_psize)
    }

    /// Opens or creates a named database (`mdb_dbi_open`). `nil` names the main database.
    ///
    /// - Parameter create: create the database when missing (needs a writable environment).
    /// - Returns: the handle, or `nil` when the database does not exist and `create` is false.
    public func openDatabase(_ name: String?, create: Bool = true) throws -> Database? {
        if create && !isReadOnly {
            return try write { txn in try txn.openDatabase(name, create: true) }
        }
        return try read { txn in try txn.openDatabase(name, create: false) }
    }

    /// Runs `body` in a read-only transaction (`mdb_txn_begin` with `MDB_RDONLY`) that sees
    /// the last committed state, then ends it. Values read must be copied out before returning.
    public func read<R>(_ body: (borrowing Transaction) throws -> R) throws -> R {
        var resizes = 0
        while true {
            do {
                return try resizeLock.withReadLock {
                    let txn = try begin(readOnly: true)
                    // Commit (not abort) so databases opened inside the transaction stay open.
                    let result = try body(txn)
                    try txn.commit()
                    return result
                }
            } catch let error as LMDBError where error.code == .mapResized && resizes < 8 {
                resizes += 1
                try adoptResizedMap()
            }
        }
    }

    /// Runs `body` with two read-only transactions that see the same committed state, so that
    /// one snapshot's work can be split across two threads, or returns nil when commits kept
    /// landing between the two begins (a few attempts).
    ///
    /// This is the one exception to a transaction's thread rule: with `MDB_NOTLS` a read
    /// transaction may be used on a thread other than the one that began it, so `body` may
    /// hand each transaction's ``Transaction/unsafeView`` to a thread of its own, provided no
    /// two threads use one transaction at once and every use ends before `body` returns.
    public func readPair<R>(_ body: (borrowing Transaction, borrowing Transaction) throws -> R) throws -> R? {
        var resizes = 0
        while true {
            do {
                return try resizeLock.withReadLock { () throws -> R? in
                    // The two begins are microseconds apart and commits milliseconds: a retry
                    // almost always finds both on one snapshot.
                    for _ in 0..<4 {
                        let first = try begin(readOnly: true)
                        let second = try begin(readOnly: true)
                        // A commit landed between them: both are aborted as they go out of scope.
                        guard first.unsafeView.snapshotID == second.unsafeView.snapshotID else { continue }
                        let result = try body(first, second)
                        // Committed (not aborted), as in ``read(_:)``, so databases opened inside stay open.
                        try second.commit()
                        try first.commit()
                        return result
                    }
                    return nil
                }
            } catch let error as LMDBError where error.code == .mapResized && resizes < 8 {
                resizes += 1
                try adoptResizedMap()
            }
        }
    }

    /// Runs `body` in the write transaction and commits it (`mdb_txn_commit`) when `body`
    /// returns; aborts and rethrows when `body` throws.
    ///
    /// When the map is full the transaction is aborted, the map doubled and `body` run again.
    /// - Throws: `body`'s error, or ``LMDBError`` (`.mapFull` past ``Options/maxMapSize``,
    ///   `.diskFull`, `.permissionDenied` on a read-only environment).
    public func write<R>(_ body: (borrowing Transaction) throws -> R) throws -> R {
        if isReadOnly {
            throw LMDBError(code: .permissionDenied, rawCode: 13, operation: "write to read-only environment \(path)")
        }
        return try writerLock.withLock {
            var resizes = 0
            while true {
                do {
                    return try resizeLock.withReadLock {
                        let txn = try begin(readOnly: false)
                        let result = try body(txn)
                        try txn.commit()
                        return result
                    }
                } catch let error as LMDBError where error.code == .mapFull {
                    try grow()
                } catch let error as LMDBError where error.code == .ioError && fileSystemIsFull() {
                    // LMDB reports a short write as EIO; on a full file system that is ENOSPC.
                    throw LMDBError(code: .diskFull, rawCode: error.rawCode, operation: "\(error.operation) (the file system is full)")
                } catch let error as LMDBError where error.code == .mapResized && resizes < 8 {
                    resizes += 1
                    try adoptResizedMap()
                }
            }
        }
    }

    /// Whether the file system holding the environment has no room left for a page.
    private func fileSystemIsFull() -> Bool {
        var st = statvfs()
        guard statvfs(path, &st) == 0 else { return false }
        // Root may write into the reserved blocks that f_bavail leaves out.
        let free = geteuid() == 0 ? UInt64(st.f_bfree) : UInt64(st.f_bavail)
        return free * UInt64(st.f_frsize) < UInt64(max(pageSize, 4096)) * 16
    }

    /// Flushes buffers to disk (`mdb_env_sync` with force), for environments opened non-durable.
    public func sync() throws {
        try check(mdb_env_sync(env, 1), "mdb_env_sync")
    }

    /// Begins a transaction. Caller holds `resizeLock` for reading.
    private func begin(readOnly: Bool) throws -> Transaction {
        var txn: OpaquePointer?
        let rc = mdb_txn_begin(env, nil, readOnly ? UInt32(MDB_RDONLY) : 0, &txn)
        guard rc == 0, let txn else {
            throw LMDBError.from(rc, readOnly ? "begin read transaction" : "begin write transaction")
        }
        var bounds: MapBounds?
        if readOnly {
            // Everything a read transaction returns lies in the pages its snapshot can name;
            // a pointer past them comes from a damaged page (see ``MapBounds``).
            var info = MDB_envinfo()
            if mdb_env_info(env, &info) == 0, let base = mapBase {
                bounds = MapBounds(start: base, end: base + UInt(info.me_last_pgno + 1) * UInt(pageSize))
            }
        }
        return Transaction(txn: txn, isReadOnly: readOnly, bounds: bounds)
    }

    /// Adopts a map size grown by another process (`mdb_env_set_mapsize(env, 0)`), which LMDB
    /// allows only while this process has no live transaction: hence the exclusive lock.
    private func adoptResizedMap() throws {
        try resizeLock.withWriteLock {
            try check(mdb_env_set_mapsize(env, 0), "adopt resized map")
            var info = MDB_envinfo()
            try check(mdb_env_info(env, &info), "mdb_env_info")
            currentMapSize = info.me_mapsize
            mapBase = Self.mappedAddress(of: path + "/data.mdb")
        }
    }

    /// Doubles the map. Caller holds `writerLock` and no transaction.
    private func grow() throws {
        try resizeLock.withWriteLock {
            guard currentMapSize < maxMapSize else {
                throw LMDBError(code: .mapFull, rawCode: MDB_MAP_FULL,
                                operation: "grow map past maximum of \(maxMapSize) bytes")
            }
            let newSize = min(maxMapSize, currentMapSize * 2)
            try check(mdb_env_set_mapsize(env, newSize), "mdb_env_set_mapsize")
            currentMapSize = newSize
            mapBase = Self.mappedAddress(of: path + "/data.mdb")
        }
    }
}

/// The directories this process has open as environments.
final class OpenEnvironments: @unchecked Sendable {
    // Sendable: `lock` guards `open`.
    struct Identity: Hashable {
        let device: UInt64
        let inode: UInt64
    }
    static let shared = OpenEnvironments()
    private let lock = Mutex()
    private var open = Set<Identity>()

    func claim(_ identity: Identity) -> Bool {
        lock.withLock { open.insert(identity).inserted }
    }

    func release(_ identity: Identity) {
        _ = lock.withLock { open.remove(identity) }
    }
}
