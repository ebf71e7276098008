import Foundation
import LMDBKit
import LedgerCrypto
import MedLedger
import MerkleLog
#if canImport(Glibc)
import Glibc
#endif

/// Workloads shared by the scenario runner and the ordo-one suite. Each "limit" measures
/// the raw cost of what the ledger does, on the same machine and disk, in the same run.
public enum Workloads {
    /// A scratch directory under `base` (default: the system temporary directory).
    public static func scratch(_ name: String, base: String? = nil) -> String {
        let root = base ?? NSTemporaryDirectory()
        // A base given on the command line may not exist yet.
        try? FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        return root + "/medledger-bench-\(name)-\(UUID().uuidString)"
    }

    /// A payload of `size` bytes that varies with `i` (so no two entries are equal).
    @inline(__always)
    public static func fillPayload(_ buffer: inout [UInt8], size: Int, index i: Int) {
        if buffer.count != size { buffer = [UInt8](repeating: 0x61, count: size) }
        var v = UInt64(i)
        withUnsafeBytes(of: &v) { raw in
            for j in 0..<min(8, size) { buffer[j] = raw[j] }
        }
    }

    /// Envelope bytes (`0x01 0x00 0x00 0x00` + payload) for entry `i` of `payloadSize` bytes,
    /// written into `buffer`.
    @inline(__always)
    public static func fillEnvelope(_ buffer: inout [UInt8], payloadSize: Int, index i: Int) {
        if buffer.count != payloadSize + 4 {
            buffer = [UInt8](repeating: 0x61, count: payloadSize + 4)
            buffer[0] = 0x01; buffer[1] = 0; buffer[2] = 0; buffer[3] = 0
        }
        var v = UInt64(i)
        withUnsafeBytes(of: &v) { raw in
            for j in 0..<min(8, payloadSize) { buffer[4 + j] = raw[j] }
        }
    }

    /// Appends `count` entries of `payloadSize` bytes in batches with ``Ledger/appendPacked(_:ends:)``;
    /// returns the seconds each batch took, including packing the batch.
    public static func ledgerAppend(_ ledger: Ledger, count: Int, payloadSize: Int, batch: Int, startIndex: Int = 0) throws -> [Double] {
        var times: [Double] = []
        var buffer: [UInt8] = []
        var packed: [UInt8] = []
        var ends: [Int] = []
        var done = 0
        while done < count {
            let n = min(batch, count - done)
            let start = DispatchTime.now().uptimeNanoseconds
            packed.removeAll(keepingCapacity: true)
            ends.removeAll(keepingCapacity: true)
            for i in 0..<n {
                fillEnvelope(&buffer, payloadSize: payloadSize, index: startIndex + done + i)
                packed.append(contentsOf: buffer)
                ends.append(packed.count)
            }
            try packed.withUnsafeBytes { bytes in
                try ends.withUnsafeBufferPointer { _ = try ledger.appendPacked(bytes, ends: $0) }
            }
            times.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
            done += n
        }
        return times
    }

    /// Limit: raw LMDB `MDB_APPEND` puts of the same envelopes under sequential 8-byte keys,
    /// one durable commit per batch, nothing else. Returns seconds per batch.
    public static func rawLMDBAppend(path: String, count: Int, payloadSize: Int, batch: Int) throws -> [Double] {
        let env = try Environment(path: path)
        guard let db = try env.openDatabase("raw") else { return [] }
        var times: [Double] = []
        var buffer: [UInt8] = []
        var done = 0
        while done < count {
            let n = min(batch, count - done)
            let start = DispatchTime.now().uptimeNanoseconds
            try env.write { txn in
                for i in 0..<n {
                    fillEnvelope(&buffer, payloadSize: payloadSize, index: done + i)
                    try txn.put(db, key: UInt64(done + i), value: buffer, flags: .append)
                }
            }
            times.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
            done += n
        }
        return times
    }

    /// Limit: sequential `write` of the same bytes followed by `fdatasync` once per batch
    /// (what `dd conv=fdatasync` does per block). Returns seconds per batch. With
    /// `incompressible`, each batch writes fresh random bytes (made before its clock starts):
    /// this virtual disk writes a repeated buffer far faster than data it cannot compress or
    /// deduplicate, as sealed records are.
    public static func fdatasyncWrite(path: String, count: Int, payloadSize: Int, batch: Int,
                                      incompressible: Bool = false) throws -> [Double] {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard fd >= 0 else { throw POSIXError(.EIO) }
        defer { close(fd); unlink(path) }
        var batchBytes = [UInt8](repeating: 0x61, count: batch * (payloadSize + 4))
        var random = SplitMix64(seed: 0xd15c)
        var times: [Double] = []
        var done = 0
        while done < count {
            let n = min(batch, count - done)
            if incompressible {
                batchBytes.withUnsafeMutableBytes { out in
                    for i in stride(from: 0, to: out.count - 7, by: 8) { out.storeBytes(of: random.next(), toByteOffset: i, as: UInt64.self) }
                }
            }
            let start = DispatchTime.now().uptimeNanoseconds
            try write(fd, count: n * (payloadSize + 4), repeating: batchBytes)
            guard fdatasync(fd) == 0 else { throw POSIXError(.EIO) }
            times.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
            done += n
        }
        return times
    }

    /// A field of /proc/self/status in kB (Linux), 0 when unreadable.
    public static func statusKilobytes(_ field: String) -> Int {
        guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
        for line in text.split(separator: "\n") where line.hasPrefix(field + ":") {
            return Int(line.dropFirst(field.count + 1).split(whereSeparator: { $0 == " " || $0 == "\t" }).first ?? "") ?? 0
        }
        return 0
    }

    /// Runs `body` while another thread samples the process's anonymous resident memory
    /// (`RssAnon`, so not the mapped file's pages) every 10 ms; returns the body's result and
    /// the most the sampled memory grew above its value at the start, in kB.
    public static func peakAnonymousGrowth<R>(_ body: () throws -> R) rethrows -> (R, Int) {
        let sampler = MemorySampler()
        let start = statusKilobytes("RssAnon")
        let finished = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            while true {
                let now = statusKilobytes("RssAnon")
                sampler.lock.lock()
                sampler.peak = max(sampler.peak, now)
                let stop = sampler.done
                sampler.lock.unlock()
                if stop { break }
                usleep(10_000)
            }
            finished.signal()
        }
        let result = try body()
        sampler.lock.lock()
        sampler.done = true
        sampler.lock.unlock()
        finished.wait()
        return (result, max(0, sampler.peak - start))
    }

    /// Diagnostic: `write` of `bytes` to a new file (page-cache pages allocated as it grows),
    /// then the same bytes over the same range again (pages already cached); no sync. A VM
    /// whose host backs guest memory lazily makes the first much slower than the second.
    /// Returns seconds for each.
    public static func pageCacheWrites(path: String, bytes: Int) throws -> (fresh: Double, cached: Double) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard fd >= 0 else { throw POSIXError(.EIO) }
        defer { close(fd); unlink(path) }
        let chunk = [UInt8](repeating: 0x61, count: 256 << 10)
        func pass() throws -> Double {
            guard lseek(fd, 0, SEEK_SET) == 0 else { throw POSIXError(.EIO) }
            let start = DispatchTime.now().uptimeNanoseconds
            try write(fd, count: bytes, repeating: chunk)
            return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        }
        let fresh = try pass()
        return (fresh, try pass())
    }

    /// Writes `count` bytes to `fd`, `source` over and over.
    private static func write(_ fd: Int32, count: Int, repeating source: [UInt8]) throws {
        var written = 0
        while written < count {
            let w = source.withUnsafeBytes { Glibc.write(fd, $0.baseAddress!, min($0.count, count - written)) }
            guard w > 0 else { throw POSIXError(.EIO) }
            written += w
        }
    }

    /// Limit: SHA-256 of `count` distinct 64-byte inputs. Returns seconds.
    public static func sha256Small(count: Int) -> (seconds: Double, sink: Hash) {
        var input = [UInt8](repeating: 7, count: 64)
        var acc = Hash.zero
        let start = DispatchTime.now().uptimeNanoseconds
        for i in 0..<count {
            input[0] = UInt8(truncatingIfNeeded: i)
            input[1] = UInt8(truncatingIfNeeded: i >> 8)
            acc = SHA256.hash(input)
            input[2] = acc.withUnsafeBytes { $0[0] }
        }
        return (Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9, acc)
    }

    /// Seeded generator so runs are repeatable.
    public struct SplitMix64: RandomNumberGenerator {
        var state: UInt64
        public init(seed: UInt64) { state = seed }
        public mutating func next() -> UInt64 {
            state &+= 0x9E3779B97F4A7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58476D1CE4E5B9
            z = (z ^ (z >> 27)) &* 0x94D049BB133111EB
            return z ^ (z >> 31)
        }
    }
}

/// Median and percentiles of samples.
public struct Stats {
    public let sorted: [Double]
    public init(_ samples: [Double]) { sorted = samples.sorted() }
    public func percentile(_ p: Double) -> Double {
        guard !sorted.isEmpty else { return .nan }
        let i = min(sorted.count - 1, max(0, Int((p / 100 * Double(sorted.count - 1)).rounded())))
        return sorted[i]
    }
    public var median: Double { percentile(50) }
}

/// Parses counts like `1M`, `10M`, `250k`, `1000`.
public func parseCount(_ text: String) -> Int? {
    let lower = text.lowercased()
    if lower.hasSuffix("m"), let v = Double(lower.dropLast()) { return Int(v * 1_000_000) }
    if lower.hasSuffix("k"), let v = Double(lower.dropLast()) { return Int(v * 1_000) }
    return Int(lower)
}

/// Parses sizes like `2GB`, `500MB`, `256k`, `1M` (binary multiples: 1k = 1024), `4096`.
public func parseBytes(_ text: String) -> UInt64? {
    var lower = text.lowercased()
    if lower.hasSuffix("b") && lower.count > 1 && !lower.dropLast().allSatisfy(\.isNumber) { lower.removeLast() }
    let units: [(String, UInt64)] = [("t", 1 << 40), ("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)]
    for (suffix, factor) in units where lower.hasSuffix(suffix) {
        guard let v = Double(lower.dropLast()) else { return nil }
        return UInt64(v * Double(factor))
    }
    return UInt64(lower)
}

/// Runs `body(t)` for `t` in `0..<count` on `count` threads of their own and returns when
/// all have finished. Unlike `DispatchQueue.concurrentPerform`, which runs at most as many
/// iterations at once as there are cores, every thread runs at the same time, as a server's
/// request threads do.
public func onThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    let done = DispatchGroup()
    for t in 0..<count {
        done.enter()
        let thread = Thread {
            body(t)
            done.leave()
        }
        thread.stackSize = 1 << 20
        thread.start()
    }
    done.wait()
}

/// What ``Workloads/peakAnonymousGrowth(_:)``'s sampling thread shares with its caller.
private final class MemorySampler: @unchecked Sendable {
    // Sendable: `lock` guards both fields.
    let lock = NSLock()
    var peak = 0
    var done = false
}
