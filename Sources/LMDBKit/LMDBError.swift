internal import CLMDB

/// An error reported by LMDB or by the wrapper around it.
///
/// Every LMDB return code is kept in ``rawCode`` and classified into a ``Code`` so callers
/// can react to the cases that matter (a full map, exhausted reader slots, a corrupt file)
/// without knowing LMDB's numbers. Equality compares codes only.
///
/// For example:
/// ```swift
/// do { try env.write { txn in try txn.put(db, key: k, value: v) } }
/// catch let error as LMDBError where error.code == .mapFull { ... }
/// ```
public struct LMDBError: Error, Hashable, CustomStringConvertible, Sendable {
    /// The class of failure. A struct rather than an enum so codes can be added later.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let name: String
        private init(_ name: String) { self.name = name }
        public var description: String { name }

        /// The key already exists (`MDB_KEYEXIST`), or `MDB_APPEND` was given a key that is not the largest.
        public static let keyExists = Code("keyExists")
        /// No such key or database (`MDB_NOTFOUND`).
        public static let notFound = Code("notFound")
        /// The file is damaged (`MDB_CORRUPTED`, `MDB_PAGE_NOTFOUND`, `MDB_PANIC`).
        public static let corrupted = Code("corrupted")
        /// The file was written by an incompatible LMDB version or format (`MDB_VERSION_MISMATCH`, `MDB_INVALID`, `MDB_INCOMPATIBLE`).
        public static let versionMismatch = Code("versionMismatch")
        /// The environment's map is full (`MDB_MAP_FULL`); ``Environment/write(_:)`` grows it and retries.
        public static let mapFull = Code("mapFull")
        /// Another process grew the map (`MDB_MAP_RESIZED`); handled internally.
        public static let mapResized = Code("mapResized")
        /// Too many named databases (`MDB_DBS_FULL`).
        public static let databasesFull = Code("databasesFull")
        /// All reader slots are taken (`MDB_READERS_FULL`).
        public static let readersFull = Code("readersFull")
        /// A transaction grew past LMDB's limits (`MDB_TXN_FULL`, `MDB_CURSOR_FULL`, `MDB_PAGE_FULL`, `MDB_TLS_FULL`).
        public static let transactionFull = Code("transactionFull")
        /// A key or value has a size LMDB refuses (`MDB_BAD_VALSIZE`).
        public static let badValueSize = Code("badValueSize")
        /// Misuse of a transaction or handle (`MDB_BAD_TXN`, `MDB_BAD_DBI`, `MDB_BAD_RSLOT`).
        public static let badHandle = Code("badHandle")
        /// The environment directory or file does not exist (`ENOENT`).
        public static let fileNotFound = Code("fileNotFound")
        /// Permission denied (`EACCES`, `EPERM`, `EROFS`).
        public static let permissionDenied = Code("permissionDenied")
        /// The disk is full (`ENOSPC`, `EDQUOT`).
        public static let diskFull = Code("diskFull")
        /// An I/O error (`EIO`).
        public static let ioError = Code("ioError")
        /// Another process holds the environment in a way that blocks this one (`EAGAIN`, `EBUSY`).
        public static let busy = Code("busy")
        /// Any other operating-system or LMDB error; see ``LMDBError/rawCode``.
        public static let other = Code("other")
    }

    /// The classified failure.
    public let code: Code
    /// LMDB's or the operating system's return code (0 when the wrapper raised the error itself).
    public let rawCode: Int32
    /// What was being done, e.g. `"mdb_put"` or `"open environment /var/lib/ledger"`.
    public let operation: String
    /// Source location of the failing call, for diagnostics.
    public let location: String

    public init(code: Code, rawCode: Int32 = 0, operation: String, file: String = #fileID, line: Int = #line) {
        self.code = code
        self.rawCode = rawCode
        self.operation = operation
        self.location = "\(file):\(line)"
    }

    public var description: String {
        var text = "\(operation) failed: \(code)"
        if rawCode != 0, let cString = mdb_strerror(rawCode) {
            text += " (\(String(cString: cString)), code \(rawCode))"
        }
        return text
    }

    public static func == (lhs: LMDBError, rhs: LMDBError) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(code) }

    /// Maps an LMDB or errno return code to a typed error. The single place codes are classified.
    @inline(never)
    static func from(_ rc: Int32, _ operation: @autoclosure () -> String, file: String = #fileID, line: Int = #line) -> LMDBError {
        let code: Code
        switch rc {
        case MDB_KEYEXIST: code = .keyExists
        case MDB_NOTFOUND: code = .notFound
        case MDB_CORRUPTED, MDB_PAGE_NOTFOUND, MDB_PANIC: code = .corrupted
        case MDB_VERSION_MISMATCH, MDB_INVALID, MDB_INCOMPATIBLE: code = .versionMismatch
        case MDB_MAP_FULL: code = .mapFull
        case MDB_MAP_RESIZED: code = .mapResized
        case MDB_DBS_FULL: code = .databasesFull
        case MDB_READERS_FULL: code = .readersFull
        case MDB_TXN_FULL, MDB_CURSOR_FULL, MDB_PAGE_FULL, MDB_TLS_FULL: code = .transactionFull
        case MDB_BAD_VALSIZE: code = .badValueSize
        case MDB_BAD_TXN, MDB_BAD_DBI, MDB_BAD_RSLOT: code = .badHandle
        case 2: code = .fileNotFound  // ENOENT
        case 1, 13, 30: code = .permissionDenied  // EPERM, EACCES, EROFS
        case 28, 122: code = .diskFull  // ENOSPC, EDQUOT
        case 5: code = .ioError  // EIO
        case 11, 16: code = .busy  // EAGAIN, EBUSY
        default: code = .other
        }
        return LMDBError(code: code, rawCode: rc, operation: operation(), file: file, line: line)
    }
}

/// Throws the typed error for a non-zero LMDB return code.
@inline(__always)
func check(_ rc: Int32, _ operation: @autoclosure () -> String, file: String = #fileID, line: Int = #line) throws(LMDBError) {
    if rc != 0 { throw LMDBError.from(rc, operation(), file: file, line: line) }
}
