import Foundation
import CSystemShims
import LedgerCrypto
#if canImport(Glibc)
import Glibc
#endif

/// Where a blob's sealed chunks lie: one contiguous run in one segment file.
struct BlobExtent: Hashable {
    let segment: UInt64
    let offset: UInt64
    let length: UInt64
}

/// The append-only segment files that hold blob chunks (`<ledger>/blobs/<16 hex>.seg`).
///
/// Chunk bytes live outside LMDB: a 2 GB study written through LMDB would either sit in one
/// write transaction's dirty pages (memory) or be split over many commits, and freed overflow
/// runs are reused only when a contiguous run of the same size comes free. Segments are
/// written with plain `write`, made durable with one `fdatasync` before the manifest entries
/// that reference them commit, and given back to the file system with hole punching
/// (`docs/DESIGN.md`, blobs).
///
/// One writer at a time appends to a segment: it holds an exclusive `flock` on it from its
/// first byte until the writer is released (after its commits), so other writers pick another
/// segment and garbage collection skips it. `flock` locks are per open file description on a
/// local file system; on network file systems they may not be, so keep ledgers on local disks.
final class SegmentFile {
    let id: UInt64
    let fd: Int32
    /// The offset the next append writes at.
    private(set) var end: UInt64
    /// Where writeback has not been started yet.
    private var unflushed: UInt64

    /// Appended bytes whose writeback starts at once, so that the disk works while the next
    /// chunks are sealed and the commit's fdatasync finds little left to write.
    static let writebackStep: UInt64 = 8 << 20

    /// Segments stop taking new blobs beyond this size (a blob may run past it).
    static let softLimit: UInt64 = 4 << 30

    private init(id: UInt64, fd: Int32, end: UInt64) {
        self.id = id
        self.fd = fd
        self.end = end
        unflushed = end
    }

    deinit {
        flock(fd, LOCK_UN)
        close(fd)
    }

    static func directory(_ ledgerPath: String) -> String { ledgerPath + "/blobs" }

    static func fileName(_ id: UInt64) -> String {
        let hex = String(id, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex + ".seg"
    }

    static func id(ofFileName name: String) -> UInt64? {
        guard name.hasSuffix(".seg"), name.utf8.count == 20 else { return nil }
        return UInt64(name.prefix(16), radix: 16)
    }

    /// Locks a segment with room for appends, or creates one (durably: the directory is synced).
    static func acquire(ledgerPath: String) throws -> SegmentFile {
        let dir = directory(ledgerPath)
        if mkdir(dir, 0o700) == 0 {
            try syncDirectory(ledgerPath)  // the new directory's entry must survive a crash
        } else if errno != EEXIST {
            throw fileError("cannot create the blob directory \(dir)")
        }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        for name in names.sorted() {
            guard let id = id(ofFileName: name) else { continue }
            let fd = open(dir + "/" + name, O_RDWR | O_CLOEXEC)
            guard fd >= 0 else { continue }
            guard let size = lockIfStillNamed(fd, path: dir + "/" + name), size < softLimit else {
                close(fd)  // releases the lock too, when taken
                continue
            }
            return SegmentFile(id: id, fd: fd, end: size)
        }
        for _ in 0..<16 {
            var raw = try SecureRandom.bytes(8)
            let id = raw.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
            secureZero(&raw)
            let fd = open(dir + "/" + fileName(id), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            if fd < 0 && errno == EEXIST { continue }
            guard fd >= 0 else { throw fileError("cannot create a blob segment in \(dir)") }
            guard lockIfStillNamed(fd, path: dir + "/" + fileName(id)) != nil else {
                close(fd)
                continue
            }
            try syncDirectory(dir)
            return SegmentFile(id: id, fd: fd, end: 0)
        }
        throw LedgerError(.storage, "cannot create a blob segment in \(dir)")
    }

    /// Takes the exclusive lock on `fd` without waiting and returns the file's size, or nil
    /// when another holds the lock or the file is no longer the one under `path`: garbage
    /// collection may open, lock and unlink a file between our open and our lock, and chunks
    /// written to an unlinked file would be lost.
    private static func lockIfStillNamed(_ fd: Int32, path: String) -> UInt64? {
        var info = stat(), named = stat()
        guard flock(fd, LOCK_EX | LOCK_NB) == 0, fstat(fd, &info) == 0, info.st_nlink > 0,
              stat(path, &named) == 0, named.st_ino == info.st_ino, named.st_dev == info.st_dev else { return nil }
        return UInt64(info.st_size)
    }

    /// Appends `bytes` at ``end``.
    func append(_ bytes: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < bytes.count {
            let n = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(end) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw Self.fileError(errno == ENOSPC ? "no space left for blob chunks" : "cannot write a blob segment")
            }
            done += n
        }
        end += UInt64(bytes.count)
        if end - unflushed >= Self.writebackStep {
            _ = medledger_start_writeback(fd, Int64(unflushed), Int64(end - unflushed))  // a hint: failure is harmless
            unflushed = end
        }
    }

    /// Makes everything appended so far durable.
    func sync() throws {
        while fdatasync(fd) != 0 {
            if errno != EINTR { throw Self.fileError("cannot sync a blob segment") }
        }
    }

    static func syncDirectory(_ dir: String) throws {
        let fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw fileError("cannot open \(dir)") }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw fileError("cannot sync \(dir)") }
    }

    static func fileError(_ message: String, _ code: Int32 = errno) -> LedgerError {
        LedgerError(.storage, message, cause: POSIXError(POSIXErrorCode(rawValue: code) ?? .EIO))
    }

    /// Gives the byte range back to the file system (the file keeps its size; reads return
    /// zeros). Returns false where the file system cannot punch holes.
    @discardableResult
    static func punchHole(fd: Int32, offset: UInt64, length: UInt64) -> Bool {
        guard length > 0 else { return true }
        return medledger_punch_hole(fd, Int64(offset), Int64(length)) == 0
    }

    /// Bytes the file occupies on disk.
    static func allocatedBytes(fd: Int32) -> UInt64 {
        var info = stat()
        guard fstat(fd, &info) == 0 else { return 0 }
        return UInt64(info.st_blocks) * 512
    }
}

/// Read handles of segment files, opened on first use and shared by readers of one ledger.
final class SegmentReaders: @unchecked Sendable {
    // Sendable: `lock` guards `open`.
    private let lock = NSLock()
    private var handles: [UInt64: Int32] = [:]
    let directory: String

    init(ledgerPath: String) { directory = SegmentFile.directory(ledgerPath) }

    deinit { for fd in handles.values { close(fd) } }

    func fd(_ segment: UInt64) throws -> Int32 {
        lock.lock()
        defer { lock.unlock() }
        if let fd = handles[segment] { return fd }
        let fd = open(directory + "/" + SegmentFile.fileName(segment), O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SegmentFile.fileError("blob segment \(SegmentFile.fileName(segment)) is missing") }
        handles[segment] = fd
        return fd
    }

    /// Reads exactly `buffer.count` bytes at `offset`; a short file is damage.
    func read(segment: UInt64, offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        let fd = try fd(segment)
        var done = 0
        while done < buffer.count {
            let n = pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw SegmentFile.fileError("cannot read blob segment \(SegmentFile.fileName(segment))")
            }
            guard n > 0 else { throw LedgerError(.storage, "blob segment \(SegmentFile.fileName(segment)) is shorter than its index says (damaged store)") }
            done += n
        }
    }
}
