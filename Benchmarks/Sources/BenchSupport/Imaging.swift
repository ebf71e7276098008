import Foundation
import LMDBKit
import LedgerCrypto
import MedLedger
import MerkleLog
#if canImport(Glibc)
import Glibc
#endif

/// The imaging scenario of the scenario runner: blob ingest (one large file, and a study
/// folder of small DICOM files through `importDICOM`), full reads, 1 MB range reads and range
/// proofs, with the same run's limits (SHA-256 and AES-GCM throughput, sequential write with
/// fdatasync on the same disk) and each phase's peak RSS.
public enum ImagingBench {
    /// One figure of the imaging table.
    public struct Row {
        public let name: String
        public let value: Double
        public let unit: String
        public var limitName: String? = nil
        public var limit: Double? = nil
        public var p50: Double? = nil
        public var p99: Double? = nil
        public var peakRSS: UInt64? = nil
        public var extra: [String: Double] = [:]
    }

    static func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

    /// Peak resident set size since the last ``resetPeakRSS()`` (VmHWM).
    public static func peakRSS() -> UInt64 {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
        for line in status.split(separator: "\n") where line.hasPrefix("VmHWM:") {
            return (UInt64(line.split(separator: " ").dropFirst().first ?? "0") ?? 0) * 1024
        }
        return 0
    }

    /// Restarts peak-RSS accounting (Linux: writing 5 to clear_refs resets VmHWM).
    public static func resetPeakRSS() {
        let fd = open("/proc/self/clear_refs", O_WRONLY)
        if fd >= 0 {
            _ = "5".withCString { write(fd, $0, 1) }
            close(fd)
        }
    }

    /// Fills `buffer` with pseudo-random bytes (incompressible, fast).
    static func fill(_ buffer: UnsafeMutableRawBufferPointer, seed: inout UInt64) {
        let words = buffer.bindMemory(to: UInt64.self)
        for i in words.indices {
            seed &+= 0x9E3779B97F4A7C15
            var z = seed
            z = (z ^ (z >> 30)) &* 0xBF58476D1CE4E5B9
            words[i] = z ^ (z >> 27)
        }
    }

    /// A minimal explicit-VR little-endian DICOM header (PS3.10) for instance `i` of a study.
    static func dicomHeader(instance i: Int, fileSize: Int) -> [UInt8] {
        func element(_ g: UInt16, _ e: UInt16, _ vr: String, _ text: String, pad: UInt8 = 0) -> [UInt8] {
            var v = Array(text.utf8)
            if v.count % 2 == 1 { v.append(pad) }
            return [UInt8(g & 0xff), UInt8(g >> 8), UInt8(e & 0xff), UInt8(e >> 8)] + Array(vr.utf8) + [UInt8(v.count & 0xff), UInt8(v.count >> 8)] + v
        }
        var out = [UInt8](repeating: 0, count: 128) + Array("DICM".utf8)
        out += element(0x0002, 0x0010, "UI", "1.2.840.10008.1.2.1")
        out += element(0x0008, 0x0016, "UI", "1.2.840.10008.5.1.4.1.1.2")
        out += element(0x0008, 0x0018, "UI", "1.2.826.0.1.3680043.99.1.\(i)")
        out += element(0x0008, 0x0060, "CS", "CT", pad: 0x20)
        out += element(0x0020, 0x000D, "UI", "1.2.826.0.1.3680043.99")
        out += element(0x0020, 0x000E, "UI", "1.2.826.0.1.3680043.99.1")
        // Pixel data (7FE0,0010) OW with a 32-bit length: the file's remaining bytes.
        let pixels = UInt32(fileSize - out.count - 12)
        out += [0xE0, 0x7F, 0x10, 0x00] + Array("OW".utf8) + [0, 0] + withUnsafeBytes(of: pixels.littleEndian) { Array($0) }
        return out
    }

    /// Writes `total` bytes to `path` in 1 MiB writes and syncs once at the end, as
    /// `dd bs=1M conv=fdatasync` does. Returns bytes per second.
    ///
    /// Every 4 KiB block written is distinct and incompressible, like sealed chunks: this
    /// machine's virtual disk writes a repeated buffer several times faster than fresh data
    /// (1.7 GB/s against 0.4 GB/s measured), so `dd if=/dev/zero` style limits mislead.
    static func sequentialWrite(path: String, total: UInt64) throws -> Double {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard fd >= 0 else { throw POSIXError(.EIO) }
        defer { close(fd); unlink(path) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 64)
        defer { buffer.deallocate() }
        var seed: UInt64 = 99
        fill(buffer, seed: &seed)
        let t0 = now()
        var done: UInt64 = 0
        var stamp: UInt64 = 0
        while done < total {
            let n = Int(min(UInt64(buffer.count), total - done))
            for block in stride(from: 0, to: n, by: 4096) {
                stamp &+= 0x9E3779B97F4A7C15
                buffer.storeBytes(of: stamp, toByteOffset: block, as: UInt64.self)
            }
            guard write(fd, buffer.baseAddress, n) == n else { throw POSIXError(.EIO) }
            done += UInt64(n)
        }
        guard fdatasync(fd) == 0 else { throw POSIXError(.EIO) }
        return Double(total) / (now() - t0)
    }

    /// Runs the scenario in `base` with `total` bytes of imaging; `chunkSizes` are compared
    /// on the single-file ingest and range reads (the first is used for the study folder).
    public static func run(base: String?, total: UInt64, fileSize: Int = 512 << 10, chunkSizes: [Int], rangeReads: Int = 2000,
                           proofs: Int = 200, log: (String) -> Void) throws -> [Row] {
        var rows: [Row] = []
        let dir = Workloads.scratch("imaging", base: base)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }

        // ---- Limits, same run, same disk ----
        let probe = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 << 20, alignment: 64)
        defer { probe.deallocate() }
        var seed: UInt64 = 1
        fill(probe, seed: &seed)
        log("imaging limits: SHA-256 and AES-256-GCM over 64 MiB in 1 MiB pieces")
        let shaRate = Stats((0..<5).map { _ in
            let t0 = now()
            for i in 0..<64 { _ = SHA256.hash(UnsafeRawBufferPointer(rebasing: probe[(i << 20)..<((i + 1) << 20)])) }
            return Double(64 << 20) / (now() - t0)
        }).median
        let key = try SecureBytes(randomCount: 32)
        let sealed = UnsafeMutableRawBufferPointer.allocate(byteCount: (1 << 20) + 16, alignment: 64)
        defer { sealed.deallocate() }
        let nonce = [UInt8](repeating: 0, count: 12)
        let aesRate = try Stats((0..<5).map { _ in
            let t0 = now()
            for i in 0..<64 {
                try AESGCM.seal(UnsafeRawBufferPointer(rebasing: probe[(i << 20)..<((i + 1) << 20)]), into: sealed, key: key, nonce: nonce, associatedData: [])
            }
            return Double(64 << 20) / (now() - t0)
        }).median
        log("imaging limits: sequential write of \(total >> 20) MiB with one fdatasync (dd conv=fdatasync)")
        let ddRate = try Stats((0..<3).map { _ in try sequentialWrite(path: dir + "/dd", total: total) }).median
        // The storage alternative the blob store did not take: sealed chunks as LMDB values
        // (overflow pages), one durable commit per 64 MiB, keys in increasing order.
        let chunk = chunkSizes[0] + 16
        log("imaging alternative: \(total >> 20) MiB as \(chunk)-byte LMDB values, commit per 64 MiB")
        let lmdbRate: Double = try {
            let path = dir + "/lmdb-alternative"
            defer { try? FileManager.default.removeItem(atPath: path) }
            var options = Environment.Options()
            options.mapSize = Int(total) * 2 + (1 << 30)
            let env = try Environment(path: path, options: options)
            guard let db = try env.openDatabase("chunks") else { return 0 }
            let perCommit = max(1, (64 << 20) / chunk)
            let count = Int(total / UInt64(chunkSizes[0]))
            let t0 = now()
            var done = 0
            while done < count {
                let n = min(perCommit, count - done)
                try env.write { txn in
                    for i in done..<(done + n) {
                        try txn.unsafeView.put(db, key: UInt64(i), reservingCapacity: chunk, flags: .append) { out in
                            out.copyMemory(from: UnsafeRawBufferPointer(rebasing: probe[0..<chunk]))
                        }
                    }
                }
                done += n
            }
            return Double(count * chunkSizes[0]) / (now() - t0)
        }()
        rows.append(Row(name: "limit: SHA-256, 1 MiB inputs", value: shaRate / 1e6, unit: "MB/s"))
        rows.append(Row(name: "limit: AES-256-GCM seal, 1 MiB inputs", value: aesRate / 1e6, unit: "MB/s"))
        rows.append(Row(name: "limit: sequential write + fdatasync (dd)", value: ddRate / 1e6, unit: "MB/s"))
        rows.append(Row(name: "alternative not taken: chunks as LMDB values, commit per 64 MiB (\(chunkSizes[0] >> 10) KiB)",
                        value: lmdbRate / 1e6, unit: "MB/s", limitName: "dd", limit: ddRate / 1e6))

        // ---- Sources: one large file, and a study folder of small DICOM files ----
        log("imaging: writing the sources (\(total >> 20) MiB file, \(total / UInt64(fileSize)) files of \(fileSize >> 10) KiB)")
        let big = dir + "/big.bin"
        do {
            let fd = open(big, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
            var done: UInt64 = 0
            while done < total {
                fill(probe, seed: &seed)
                let n = Int(min(UInt64(probe.count), total - done))
                _ = write(fd, probe.baseAddress, n)
                done += UInt64(n)
            }
            close(fd)
        }
        let folder = dir + "/study"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let files = Int(total / UInt64(fileSize))
        for i in 0..<files {
            let header = dicomHeader(instance: i, fileSize: fileSize)
            fill(UnsafeMutableRawBufferPointer(rebasing: probe[0..<fileSize]), seed: &seed)
            header.withUnsafeBytes { probe.copyMemory(from: $0) }
            let fd = open(folder + "/IM\(String(format: "%05d", i))", O_WRONLY | O_CREAT | O_TRUNC, 0o600)
            _ = write(fd, probe.baseAddress, fileSize)
            close(fd)
        }

        // Flush the sources so their writeback does not slow the first measured ingest.
        sync()

        // ---- Per chunk size: ingest of the large file, full read, range reads ----
        for (n, chunkSize) in chunkSizes.enumerated() {
            let ledgerDir = dir + "/ledger-\(chunkSize)"
            let (ledger, verifierText) = try Ledger.create(at: ledgerDir, origin: "bench.example/imaging")
            let records = try PatientRecords(ledger: ledger, masterKey: try MasterKeyFile.create(at: ledgerDir + ".key"))
            defer { try? FileManager.default.removeItem(atPath: ledgerDir + ".key") }
            try records.addPatient(externalId: "Patient/1")
            let label = "chunk \(chunkSize >> 10) KiB"

            // Ingest and the write limit alternate, three times each, so both meet the same
            // state of this shared disk; the ratio is the median of the three pairs.
            log("imaging [\(label)]: ingest one \(total >> 20) MiB file, 3 times, each after a dd of the same size")
            var ingestRates: [Double] = [], pairedDD: [Double] = [], ratios: [Double] = []
            var info: BlobInfo! = nil
            var ingestRSS: UInt64 = 0
            for _ in 0..<3 {
                sync()
                let dd = try sequentialWrite(path: dir + "/dd", total: total)
                sync()
                resetPeakRSS()
                let t0 = now()
                info = try records.putBlob(patient: "Patient/1", blobId: "big", mediaType: "application/octet-stream",
                                           contentsOfFile: big, chunkSize: chunkSize)
                let rate = Double(info.size) / (now() - t0)
                ingestRSS = max(ingestRSS, peakRSS())
                ingestRates.append(rate)
                pairedDD.append(dd)
                ratios.append(rate / dd)
            }
            rows.append(Row(name: "ingest one \(total >> 20) MiB file (median of 3), \(label)", value: Stats(ingestRates).median / 1e6,
                            unit: "MB/s", limitName: "dd just before", limit: Stats(pairedDD).median / 1e6, peakRSS: ingestRSS,
                            extra: ["min_MBps": ingestRates.min()! / 1e6, "max_MBps": ingestRates.max()! / 1e6,
                                    "median_paired_ratio": Stats(ratios).median]))

            if n == 0 {
                log("imaging [\(label)]: import-dicom of \(files) files, after a dd of the same size")
                sync()
                let importDD = try sequentialWrite(path: dir + "/dd", total: total)
                sync()
                resetPeakRSS()
                var fileTimes: [Double] = []
                var last = now()
                let t1 = last
                let report = try records.importDICOM(patient: "Patient/1", folder: folder, chunkSize: chunkSize) { _, _, _ in
                    let t = now()
                    fileTimes.append(t - last)
                    last = t
                }
                precondition(report.failures.isEmpty && report.instances == files, "import failed: \(report.failures.prefix(3))")
                let rate = Double(report.bytes) / (now() - t1)
                let s = Stats(fileTimes)
                rows.append(Row(name: "import-dicom \(files) files of \(fileSize >> 10) KiB (\(label), 2 writers, commit per 32 MiB each)", value: rate / 1e6,
                                unit: "MB/s", limitName: "dd just before", limit: importDD / 1e6, p50: s.median * 1e3, p99: s.percentile(99) * 1e3,
                                peakRSS: peakRSS(), extra: ["files_per_s": Double(files) / (now() - t1)]))
            }

            let reader = try records.openBlob(patient: "Patient/1", blobId: "big", as: .custodian("bench"))
            log("imaging [\(label)]: full read")
            resetPeakRSS()
            let t2 = now()
            var sink: UInt8 = 0
            try reader.stream { sink ^= $0[0] }
            rows.append(Row(name: "full read (stream, every chunk checked), \(label)", value: Double(info.size) / (now() - t2) / 1e6,
                            unit: "MB/s", limitName: "SHA-256", limit: shaRate / 1e6, peakRSS: peakRSS(), extra: ["sink": Double(sink)]))

            var rng = Workloads.SplitMix64(seed: UInt64(chunkSize))
            let offsets = (0..<rangeReads).map { _ in rng.next() % (info.size - (1 << 20)) }
            for threads in [1, 2] {
                log("imaging [\(label)]: \(rangeReads) range reads of 1 MB, \(threads) thread(s)")
                var latencies = [Double](repeating: 0, count: rangeReads)
                let t3 = now()
                latencies.withUnsafeMutableBufferPointer { lat in
                    nonisolated(unsafe) let lat = lat
                    DispatchQueue.concurrentPerform(iterations: threads) { t in
                        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 64)
                        defer { buffer.deallocate() }
                        for j in stride(from: t, to: rangeReads, by: threads) {
                            let s = now()
                            try! reader.read(offset: offsets[j], into: buffer)
                            lat[j] = now() - s
                        }
                    }
                }
                let seconds = now() - t3
                let s = Stats(latencies)
                rows.append(Row(name: "range read 1 MB (random offsets, warm), \(threads) thread\(threads == 1 ? "" : "s"), \(label)",
                                value: Double(rangeReads) / seconds, unit: "reads/s", p50: s.median * 1e3, p99: s.percentile(99) * 1e3))
            }

            log("imaging [\(label)]: \(proofs) range proofs of 1 MB, each verified offline")
            let verifier = try NoteVerifier(parsing: verifierText)
            var makeTimes: [Double] = [], verifyTimes: [Double] = []
            for j in 0..<proofs {
                let s = now()
                let proof = try reader.rangeProof(offset: offsets[j], length: 1 << 20)
                let m = now()
                let verified = try BlobRangeProof.verify(proof.json, verifier: verifier)
                verifyTimes.append(now() - m)
                makeTimes.append(m - s)
                precondition(verified.bytes.count == 1 << 20 && verified.offset == offsets[j], "a range proof did not verify")
            }
            rows.append(Row(name: "range proof 1 MB: make, \(label)", value: 1 / Stats(makeTimes).median, unit: "proofs/s",
                            p50: Stats(makeTimes).median * 1e3, p99: Stats(makeTimes).percentile(99) * 1e3))
            rows.append(Row(name: "range proof 1 MB: verify offline (all \(proofs) verified), \(label)", value: 1 / Stats(verifyTimes).median,
                            unit: "proofs/s", p50: Stats(verifyTimes).median * 1e3, p99: Stats(verifyTimes).percentile(99) * 1e3))
            var diskBytes: UInt64 = 0
            for name in (FileManager.default.enumerator(atPath: ledgerDir)?.compactMap { $0 as? String } ?? []) {
                var st = stat()
                if stat(ledgerDir + "/" + name, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG { diskBytes += UInt64(st.st_blocks) * 512 }
            }
            let stored = Double(total) * (n == 0 ? 4 : 3)  // three ingests, and the study folder once
            rows.append(Row(name: "bytes on disk per plaintext byte (segments + LMDB), \(label)", value: Double(diskBytes) / stored, unit: "B/B"))
            try? FileManager.default.removeItem(atPath: ledgerDir)
        }
        return rows
    }
}
