// The scenario runner: measures the ledger and, in the same run, the limits it is held to,
// then prints a table of medians with ratios and writes the figures as JSON.
//
//   swift run -c release ledger-bench [--entries 1M] [--entries-4k 250k] [--dir PATH] [--json FILE]
//
// MEDLEDGER_BENCH_SCALE=10M sets --entries to 10M; MEDLEDGER_BENCH_NOSYNC=1 commits without
// fsync (CPU cost alone); MEDLEDGER_BENCH_PUTS_ONLY=1 ends the patient part after its puts
// (to profile them alone); MEDLEDGER_BENCH_PRUNE_STEPS=N prunes the key map's backlog in steps
// of N page records (65536, 1M) instead of one transaction.
import BenchSupport
import Foundation
import LMDBKit
import LedgerCrypto
import MedLedger
import MerkleLog
import SparseMerkle

var entries = parseCount(ProcessInfo.processInfo.environment["MEDLEDGER_BENCH_SCALE"] ?? "1M") ?? 1_000_000
var entries4k = 250_000
var baseDir: String? = nil
var jsonPath: String? = nil
var queries = 200_000
var keyUpdateBatches = 20
var sparseKeys: Int? = nil
var patientRecords = 0
var patientCount = 0
var imagingBytes: UInt64 = 0
var chunkSizes = [PatientRecords.defaultBlobChunkSize]
let batch = 10_000

var args = CommandLine.arguments.dropFirst()
while let arg = args.popFirst() {
    switch arg {
    case "--entries": entries = parseCount(args.popFirst() ?? "") ?? entries
    case "--entries-4k": entries4k = parseCount(args.popFirst() ?? "") ?? entries4k
    case "--queries": queries = parseCount(args.popFirst() ?? "") ?? queries
    case "--keys": sparseKeys = parseCount(args.popFirst() ?? "")
    case "--key-update-batches": keyUpdateBatches = max(1, parseCount(args.popFirst() ?? "") ?? keyUpdateBatches)
    case "--records": patientRecords = parseCount(args.popFirst() ?? "") ?? 0
    case "--patients": patientCount = parseCount(args.popFirst() ?? "") ?? 0
    case "--imaging": imagingBytes = parseBytes(args.popFirst() ?? "") ?? 0
    case "--chunk-sizes": chunkSizes = (args.popFirst() ?? "").split(separator: ",").compactMap { parseBytes(String($0)).map(Int.init) }
    case "--dir": baseDir = args.popFirst()
    case "--json": jsonPath = args.popFirst()
    default:
        FileHandle.standardError.write(Data("usage: ledger-bench [--entries N] [--entries-4k N] [--queries N] [--keys N [--key-update-batches N]] [--records N --patients N] [--imaging SIZE [--chunk-sizes 256k,1M]] [--dir PATH] [--json FILE]\n".utf8))
        exit(2)
    }
}

struct Row {
    let name: String
    let value: Double
    let unit: String
    let limitName: String?
    let limit: Double?
    let extra: [String: Double]
}
var rows: [Row] = []

func log(_ text: String) { FileHandle.standardError.write(Data((text + "\n").utf8)) }

func perSecond(_ batchTimes: [Double], itemsPerBatch: Int) -> (median: Double, p99Latency: Double, p50Latency: Double) {
    let full = batchTimes.count > 1 ? Array(batchTimes.dropLast()) : batchTimes  // last batch may be short
    let s = Stats(full)
    return (Double(itemsPerBatch) / s.median, s.percentile(99), s.median)
}

func measureMedian(repeats: Int, _ body: () throws -> Double) rethrows -> Double {
    var samples: [Double] = []
    for _ in 0..<repeats { samples.append(try body()) }
    return Stats(samples).median
}

var rng = Workloads.SplitMix64(seed: 0xbe9c4)

/// CPU seconds used so far by the whole process (`process: true`) or by this thread: on a
/// shared machine, CPU time is steadier than wall time for comparing two builds.
func cpuSeconds(process: Bool) -> Double {
    var ts = timespec()
    clock_gettime(process ? CLOCK_PROCESS_CPUTIME_ID : CLOCK_THREAD_CPUTIME_ID, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

// ---- Limits measured first, on the same disk ----
log("limits: SHA-256 of 64-byte inputs")
let shaRate = measureMedian(repeats: 5) { Double(2_000_000) / Workloads.sha256Small(count: 2_000_000).seconds }
rows.append(Row(name: "limit: SHA-256 64 B", value: shaRate, unit: "hash/s", limitName: nil, limit: nil, extra: [:]))

do {
    let path = Workloads.scratch("pagecache", base: baseDir)
    let bytes = 256 << 20
    let t = try Workloads.pageCacheWrites(path: path, bytes: bytes)
    rows.append(Row(name: "diagnostic: write 256 MB into new page-cache pages (no sync)", value: Double(bytes) / t.fresh / 1e6, unit: "MB/s",
                    limitName: "the same bytes over the cached pages", limit: Double(bytes) / t.cached / 1e6, extra: [:]))
}

@MainActor func limitsFor(payload: Int, count: Int) throws -> (lmdb: Double, fsync: Double) {
    let rawPath = Workloads.scratch("raw", base: baseDir)
    defer { try? FileManager.default.removeItem(atPath: rawPath) }
    log("limits: raw LMDB MDB_APPEND, \(count) x \(payload) B, batches of \(batch), durable")
    let raw = perSecond(try Workloads.rawLMDBAppend(path: rawPath, count: count, payloadSize: payload, batch: batch), itemsPerBatch: batch)
    log("limits: write + fdatasync per batch, \(count) x \(payload + 4) B")
    try FileManager.default.createDirectory(atPath: rawPath, withIntermediateDirectories: true)
    let dd = perSecond(try Workloads.fdatasyncWrite(path: rawPath + "/dd", count: count, payloadSize: payload, batch: batch), itemsPerBatch: batch)
    return (raw.median, dd.median)
}

// ---- 128-byte entries ----
let limits128 = try limitsFor(payload: 124, count: entries)
let ledgerPath = Workloads.scratch("ledger", base: baseDir)
defer { try? FileManager.default.removeItem(atPath: ledgerPath) }
nonisolated(unsafe) var mainLedger: Ledger! = try Ledger.create(at: ledgerPath, origin: "bench.example/log").0
log("ledger: append \(entries) x 128 B entries, batches of \(batch), durable")
let append128 = perSecond(try Workloads.ledgerAppend(mainLedger, count: entries, payloadSize: 124, batch: batch), itemsPerBatch: batch)
rows.append(Row(name: "append 128 B (batch 10k, durable)", value: append128.median, unit: "entries/s",
                limitName: "raw LMDB MDB_APPEND", limit: limits128.lmdb,
                extra: ["p50_batch_s": append128.p50Latency, "p99_batch_s": append128.p99Latency,
                        "fdatasync_limit_entries_per_s": limits128.fsync,
                        "ratio_to_fdatasync": append128.median / limits128.fsync]))
let bytesOnDisk = try mainLedger.storedBytes()

// ---- Proofs at the full size ----
let size = try mainLedger.size
log("proofs: \(queries) inclusion proofs at size \(size), random indexes")
var sink = 0
var inclusionSamples: [(InclusionProof, Hash, Hash)] = []
let inclusionRate = try measureMedian(repeats: 5) {
    let start = DispatchTime.now().uptimeNanoseconds
    for _ in 0..<queries {
        let p = try mainLedger.inclusionProof(index: UInt64.random(in: 0..<size, using: &rng), size: size)
        sink &+= p.proof.hashes.count
        if inclusionSamples.count < 10_000 { inclusionSamples.append(p) }
    }
    return Double(queries) / (Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
}
rows.append(Row(name: "inclusion proof (one read txn each)", value: inclusionRate, unit: "proofs/s", limitName: nil, limit: nil, extra: [:]))

log("proofs: \(queries) consistency proofs to size \(size), random old sizes")
var consistencySamples: [(ConsistencyProof, Hash, Hash)] = []
let consistencyRate = try measureMedian(repeats: 5) {
    let start = DispatchTime.now().uptimeNanoseconds
    for _ in 0..<queries {
        let p = try mainLedger.consistencyProof(oldSize: UInt64.random(in: 1...size, using: &rng), newSize: size)
        sink &+= p.proof.hashes.count
        if consistencySamples.count < 10_000 { consistencySamples.append(p) }
    }
    return Double(queries) / (Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
}
rows.append(Row(name: "consistency proof (one read txn each)", value: consistencyRate, unit: "proofs/s", limitName: nil, limit: nil, extra: [:]))

let verifyInclusionRate = try measureMedian(repeats: 5) {
    let start = DispatchTime.now().uptimeNanoseconds
    for (proof, leaf, root) in inclusionSamples { try proof.verify(leafHash: leaf, rootHash: root) }
    return Double(inclusionSamples.count) / (Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
}
rows.append(Row(name: "verify inclusion proof", value: verifyInclusionRate, unit: "proofs/s", limitName: "SHA-256 64 B / path length",
                limit: shaRate / Double(64 - size.leadingZeroBitCount), extra: [:]))
let verifyConsistencyRate = try measureMedian(repeats: 5) {
    let start = DispatchTime.now().uptimeNanoseconds
    for (proof, old, new) in consistencySamples { try proof.verify(oldRoot: old, newRoot: new) }
    return Double(consistencySamples.count) / (Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
}
rows.append(Row(name: "verify consistency proof", value: verifyConsistencyRate, unit: "proofs/s", limitName: nil, limit: nil, extra: [:]))

// ---- Diagnostics: what one proof is made of ----
do {
    let n = 200_000
    var start = DispatchTime.now().uptimeNanoseconds
    for _ in 0..<n { sink &+= Int(try mainLedger.environment.read { _ in 1 }) }
    let txnNs = Double(DispatchTime.now().uptimeNanoseconds - start) / Double(n)
    let store = try LMDBLogStore(environment: mainLedger.environment)
    start = DispatchTime.now().uptimeNanoseconds
    try store.read { reader in
        for i in 0..<n { sink &+= Int(try reader.storedHash(level: 0, index: UInt64(i) % size).withUnsafeBytes { $0[0] }) }
    }
    let getNs = Double(DispatchTime.now().uptimeNanoseconds - start) / Double(n)
    start = DispatchTime.now().uptimeNanoseconds
    try store.read { reader in
        for i in 0..<n / 10 { sink &+= try reader.inclusionPath(index: UInt64(i * 7919) % size, size: size).count }
    }
    let pathNs = Double(DispatchTime.now().uptimeNanoseconds - start) / Double(n / 10)
    let scratchPath = Workloads.scratch("nosync", base: baseDir)
    defer { try? FileManager.default.removeItem(atPath: scratchPath) }
    var noSync = Ledger.Options()
    noSync.durable = false
    let (scratchLedger, _) = try Ledger.create(at: scratchPath, origin: "bench.example/nosync", options: noSync)
    let noSyncAppend = perSecond(try Workloads.ledgerAppend(scratchLedger, count: min(entries, 300_000), payloadSize: 124, batch: batch), itemsPerBatch: batch)
    rows.append(Row(name: "diagnostic: append 128 B without fsync", value: noSyncAppend.median, unit: "entries/s", limitName: nil, limit: nil, extra: [:]))
    rows.append(Row(name: "diagnostic: empty read transaction", value: txnNs, unit: "ns", limitName: nil, limit: nil, extra: [:]))
    rows.append(Row(name: "diagnostic: one stored-hash get", value: getNs, unit: "ns", limitName: nil, limit: nil, extra: [:]))
    rows.append(Row(name: "diagnostic: inclusion path in an open txn", value: pathNs, unit: "ns", limitName: nil, limit: nil, extra: [:]))
}

// ---- Open time (one open per process: close the writer's instance first) ----
mainLedger = nil
var openTimes: [Double] = []
for _ in 0..<21 {
    let start = DispatchTime.now().uptimeNanoseconds
    let reopened = try Ledger(path: ledgerPath)
    sink &+= Int(try reopened.size & 1)
    openTimes.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6)
}
rows.append(Row(name: "open existing ledger (\(size) entries)", value: Stats(openTimes).median, unit: "ms", limitName: nil, limit: nil, extra: [:]))

// ---- 4 KB entries ----
if entries4k > 0 {
    let limits4k = try limitsFor(payload: 4092, count: entries4k)
    let path4k = Workloads.scratch("ledger4k", base: baseDir)
    defer { try? FileManager.default.removeItem(atPath: path4k) }
    let (ledger4k, _) = try Ledger.create(at: path4k, origin: "bench.example/log4k")
    log("ledger: append \(entries4k) x 4 KB entries, batches of \(batch), durable")
    let append4k = perSecond(try Workloads.ledgerAppend(ledger4k, count: entries4k, payloadSize: 4092, batch: batch), itemsPerBatch: batch)
    rows.append(Row(name: "append 4 KB (batch 10k, durable)", value: append4k.median * 4096 / 1e6, unit: "MB/s",
                    limitName: "write+fdatasync", limit: limits4k.fsync * 4096 / 1e6,
                    extra: ["entries_per_s": append4k.median, "raw_lmdb_MB_per_s": limits4k.lmdb * 4096 / 1e6,
                            "ratio_to_raw_lmdb": append4k.median / limits4k.lmdb,
                            "p99_batch_s": append4k.p99Latency]))
}

// ---- Sparse Merkle tree (key map) ----
let keyCount = sparseKeys ?? entries
if keyCount > 0 {
    let smtPath = Workloads.scratch("smt", base: baseDir)
    defer { try? FileManager.default.removeItem(atPath: smtPath) }
    var smtOptions = Environment.Options()
    // MEDLEDGER_BENCH_NOSYNC=1 separates the CPU cost from the cost of syncing.
    smtOptions.durable = ProcessInfo.processInfo.environment["MEDLEDGER_BENCH_NOSYNC"] == nil
    let smtEnv = try Environment(path: smtPath, options: smtOptions)
    let smt = try LMDBSparseStore(environment: smtEnv)
    var keyRng = Workloads.SplitMix64(seed: 0x5e7)
    func randomHash() -> Hash {
        Hash(unsafeUninitializedBytes: { out in
            for i in 0..<4 { out.storeBytes(of: keyRng.next(), toByteOffset: i * 8, as: UInt64.self) }
        })
    }
    var value = [UInt8](repeating: 0x5a, count: 40)
    var version: UInt64 = 0
    var insertTimes: [Double] = []
    var keys: [Hash] = []
    keys.reserveCapacity(keyCount)
    log("sparse tree: insert \(keyCount) random keys in batches of \(batch), durable")
    while keys.count < keyCount {
        let n = min(batch, keyCount - keys.count)
        var changes: [SparseChange] = []
        changes.reserveCapacity(n)
        for _ in 0..<n {
            let k = randomHash()
            keys.append(k)
            value[0] = UInt8(truncatingIfNeeded: keys.count)
            changes.append(SparseChange(keyHash: k, value: value))
        }
        version += UInt64(n)
        let start = DispatchTime.now().uptimeNanoseconds
        _ = try smt.write { try SparseMerkleTree.apply(changes, version: version, writer: $0, snapshot: smt) }
        insertTimes.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
    }
    // Growth phase median: batches once the tree holds at least half the keys.
    let lateInserts = Array(insertTimes.suffix(max(1, insertTimes.count / 2)))
    rows.append(Row(name: "key map: insert new keys (batch 10k, durable, tree \(keyCount / 2)..\(keyCount))",
                    value: Double(batch) / Stats(lateInserts).median, unit: "keys/s", limitName: nil, limit: nil, extra: [:]))
    /// A batch of updates to keys already present, drawn at random.
    func randomUpdates() -> [SparseChange] {
        var changes: [SparseChange] = []
        changes.reserveCapacity(batch)
        for _ in 0..<batch { changes.append(SparseChange(keyHash: keys[Int(keyRng.next() % UInt64(keys.count))], value: value)) }
        return changes
    }
    var updateTimes: [Double] = []
    log("sparse tree: update existing keys in batches of \(batch)")
    let phases = SparseMerkleTree.ApplyTimings()
    let bytesBeforeUpdates = try smt.storedBytes()
    func minorFaults() -> Int { var usage = rusage(); getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage); return usage.ru_minflt }
    let faultsBeforeUpdates = minorFaults()
    var insideTimes: [Double] = []
    let updateCPUStart = cpuSeconds(process: true)
    /// One durable batch of random updates: seconds in all and before the commit.
    func updateBatch(timings: SparseMerkleTree.ApplyTimings?) throws -> (all: Double, inside: Double) {
        let changes = randomUpdates()
        version += UInt64(batch)
        let start = DispatchTime.now().uptimeNanoseconds
        var inside = 0.0
        _ = try SparseMerkleTree.$timings.withValue(timings) {
            try smt.write { w in
                let r = try SparseMerkleTree.apply(changes, version: version, writer: w, snapshot: smt)
                inside = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
                return r
            }
        }
        return (Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9, inside)
    }
    for _ in 0..<keyUpdateBatches {
        let t = try updateBatch(timings: phases)
        insideTimes.append(t.inside)
        updateTimes.append(t.all)
    }
    log(String(format: "key map update: %.1f ms of CPU per batch (all threads; change generation included)",
               (cpuSeconds(process: true) - updateCPUStart) * 1000 / Double(keyUpdateBatches)))
    let bytesPerUpdate = (try smt.storedBytes() - bytesBeforeUpdates) / keyUpdateBatches
    log("key map bytes written per update batch: \(bytesPerUpdate)")
    // The floor for the commit: appending the same number of bytes to a file and syncing it.
    // On a VM whose host backs guest memory lazily, fresh page-cache pages cost far more than
    // the copy, and this pays that too.
    let updateWriteFloor = Stats(try Workloads.fdatasyncWrite(path: smtPath + ".floor", count: keyUpdateBatches,
                                                              payloadSize: max(1, bytesPerUpdate - 4), batch: 1)).median
    let u = Double(keyUpdateBatches)
    log("key map update: \((minorFaults() - faultsBeforeUpdates) / keyUpdateBatches) minor page faults per batch")
    let anonymous = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8))?
        .split(separator: "\n").first { $0.hasPrefix("RssAnon:") }.map { String($0.dropFirst(8)).trimmingCharacters(in: .whitespaces) } ?? "?"
    log("key map update: anonymous resident memory after the updates \(anonymous)")
    for (level, figures) in phases.byLevel.enumerated() where figures.records > 0 {
        log("  depth \(level * 4): \(figures.records / keyUpdateBatches) records (\(figures.deltas / keyUpdateBatches) deltas), \(figures.bytes / keyUpdateBatches) bytes per batch")
    }
    log(String(format: "key map update batch: %.1f ms before the commit, %.1f ms in all (medians)", Stats(insideTimes).median * 1000, Stats(updateTimes).median * 1000))
    log(String(format: "key map update phases per batch: sort %.1f ms, update %.1f ms, store %.1f ms, stale %.1f ms, publish after commit %.1f ms, %d pages (%d deltas, %d bytes, %d hashes); whole batch %.1f ms",
               Double(phases.sortNs) / u / 1e6, Double(phases.updateNs) / u / 1e6, Double(phases.storeNs) / u / 1e6, Double(phases.staleNs) / u / 1e6,
               Double(phases.publishNs) / u / 1e6,
               phases.pages / keyUpdateBatches, phases.deltaPages / keyUpdateBatches, phases.pageBytes / keyUpdateBatches, phases.hashes / keyUpdateBatches, Stats(updateTimes).median * 1000))
    rows.append(Row(name: "key map: update existing keys (batch 10k, durable, \(keyCount) keys)",
                    value: Double(batch) / Stats(updateTimes).median, unit: "keys/s",
                    limitName: "the batch's \(bytesPerUpdate / 1000) kB appended to a file + fdatasync, alone",
                    limit: Double(batch) / updateWriteFloor, extra: ["batch_s": Stats(updateTimes).median, "write_floor_s": updateWriteFloor]))
    if ProcessInfo.processInfo.environment["MEDLEDGER_BENCH_GETS"] != nil {
        var sampleKeys: [[UInt8]] = []
        try smt.read { view in
            try view.txn.withCursor(smt.pagesDatabase) { cursor in
                var more = try cursor.first()
                var i = 0
                while more {
                    if i % 37 == 0 { sampleKeys.append(cursor.withCurrent { key, _ in Array(key) }) }
                    i += 1
                    more = try cursor.next()
                }
            }
        }
        sampleKeys.shuffle()
        let t0 = DispatchTime.now().uptimeNanoseconds
        var total = 0
        try smt.read { view in
            for key in sampleKeys { total &+= try view.txn.withValue(smt.pagesDatabase, key: key) { $0.count } ?? 0 }
        }
        let perGet = Double(DispatchTime.now().uptimeNanoseconds - t0) / Double(sampleKeys.count)
        log(String(format: "diagnostic: %d random smt.pages gets, %.0f ns each (%d bytes)", sampleKeys.count, perGet, total))
    }
    let smtQueries = min(queries, 100_000)
    for present in [true, false] {
        let kind = present ? "present" : "absent"
        // Keys drawn before timing, so that the threads below share no generator.
        let queryKeys = (0..<smtQueries).map { _ in present ? keys[Int(keyRng.next() % UInt64(keys.count))] : randomHash() }
        var proofs: [SparseProof] = []
        var cpuPerProof: [Double] = []
        let rate = try measureMedian(repeats: 3) {
            let start = DispatchTime.now().uptimeNanoseconds
            let cpuStart = cpuSeconds(process: false)
            for k in queryKeys {
                let proof = try smt.read { try SparseMerkleTree.proof(keyHash: k, version: version, reader: $0) }
                if proofs.count < 20_000 { proofs.append(proof) }
            }
            cpuPerProof.append((cpuSeconds(process: false) - cpuStart) / Double(smtQueries))
            return Double(smtQueries) / (Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
        }
        log(String(format: "key proofs, %@ keys: %.2f µs of CPU each (median of 3 runs)", kind, Stats(cpuPerProof).median * 1e6))
        rows.append(Row(name: "key proof, \(kind) key (one read txn each)", value: rate, unit: "proofs/s",
                        limitName: nil, limit: nil, extra: [:]))
        // The same proofs from two threads (one per core), as a proof server runs them.
        let store = smt, proofVersion = version
        let threadedRate = measureMedian(repeats: 3) {
            let start = DispatchTime.now().uptimeNanoseconds
            onThreads(2) { t in
                for j in stride(from: t, to: queryKeys.count, by: 2) {
                    _ = try! store.read { try SparseMerkleTree.proof(keyHash: queryKeys[j], version: proofVersion, reader: $0) }
                }
            }
            return Double(smtQueries) / (Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
        }
        rows.append(Row(name: "key proof, \(kind) key, 2 threads (one read txn each)", value: threadedRate, unit: "proofs/s",
                        limitName: "one thread", limit: rate, extra: [:]))
        let root = try smt.read { try SparseMerkleTree.root(version: version, reader: $0).hash }
        let verifyRate = try measureMedian(repeats: 3) {
            let start = DispatchTime.now().uptimeNanoseconds
            for proof in proofs { try proof.verify(root: root) }
            return Double(proofs.count) / (Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
        }
        rows.append(Row(name: "verify key proof, \(kind)", value: verifyRate, unit: "proofs/s",
                        limitName: nil, limit: nil, extra: [:]))
        let toVerify = proofs
        let threadedVerifyRate = measureMedian(repeats: 3) {
            let start = DispatchTime.now().uptimeNanoseconds
            onThreads(2) { t in
                for j in stride(from: t, to: toVerify.count, by: 2) { try! toVerify[j].verify(root: root) }
            }
            return Double(toVerify.count) / (Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
        }
        rows.append(Row(name: "verify key proof, \(kind), 2 threads", value: threadedVerifyRate, unit: "proofs/s",
                        limitName: "one thread", limit: verifyRate, extra: [:]))
    }
    // Multi-key proofs of 100 keys (half present, half absent): what sharing the upper
    // siblings saves against 100 single-key proofs, in bytes and in verification time.
    do {
        let setSize = 100, sets = max(1, min(200, smtQueries / setSize))
        let keySets = (0..<sets).map { _ in
            (0..<setSize).map { i in i % 2 == 0 ? keys[Int(keyRng.next() % UInt64(keys.count))] : randomHash() }
        }
        var multis: [SparseMultiProof] = []
        let start = DispatchTime.now().uptimeNanoseconds
        for set in keySets { multis.append(try smt.read { try SparseMerkleTree.multiProof(keyHashes: set, version: version, reader: $0) }) }
        let makeRate = Double(sets) / (Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
        let root = try smt.read { try SparseMerkleTree.root(version: version, reader: $0).hash }
        let verifyStart = DispatchTime.now().uptimeNanoseconds
        for proof in multis { try proof.verify(root: root) }
        let verifyRate = Double(sets) / (Double(DispatchTime.now().uptimeNanoseconds - verifyStart) / 1e9)
        let multiBytes = multis[0].encoded().count
        let singleBytes = try smt.read { view in
            try keySets[0].reduce(0) { $0 + (try SparseMerkleTree.proof(keyHash: $1, version: version, reader: view)).encoded().count }
        }
        log("multi-key proof of \(setSize) keys: \(multiBytes) bytes (binary) against \(singleBytes) for the same keys' single-key proofs")
        rows.append(Row(name: "multi-key proof of \(setSize) keys (half absent), one read txn each", value: makeRate, unit: "proofs/s",
                        limitName: nil, limit: nil, extra: ["bytes": Double(multiBytes), "single_proof_bytes": Double(singleBytes)]))
        rows.append(Row(name: "verify multi-key proof of \(setSize) keys", value: verifyRate * Double(setSize), unit: "keys/s",
                        limitName: nil, limit: nil, extra: [:]))
    }
    let smtBytes = try smt.storedBytes()
    rows.append(Row(name: "key map bytes on disk per key (all \(insertTimes.count + keyUpdateBatches) versions kept)",
                    value: Double(smtBytes) / Double(keyCount), unit: "B/key", limitName: nil, limit: nil, extra: [:]))
    // Pruning the whole backlog in one transaction or, with MEDLEDGER_BENCH_PRUNE_STEPS=N, in
    // steps of N page records, and the memory it takes; then the batches that
    // follow, which reuse the freed pages, against the same updates before it.
    let pruneSteps = ProcessInfo.processInfo.environment["MEDLEDGER_BENCH_PRUNE_STEPS"].flatMap { parseCount($0) }
    let pruneStart = DispatchTime.now().uptimeNanoseconds
    let (pruneReport, prunePeakGrowth) = try Workloads.peakAnonymousGrowth {
        try smt.prune(before: version, pagesPerTransaction: pruneSteps ?? .max)
    }
    let pruneSeconds = Double(DispatchTime.now().uptimeNanoseconds - pruneStart) / 1e9
    let afterPrune = try smt.storedBytes()
    let pruneHow = pruneSteps.map { "in steps of \($0) page records" } ?? "in one transaction"
    log(String(format: "key map prune of the backlog %@: %d pages in %d transactions, %.2f s, anonymous memory +%d MB at its peak",
               pruneHow, pruneReport.pagesDeleted, pruneReport.transactions, pruneSeconds, prunePeakGrowth / 1024))
    rows.append(Row(name: "key map bytes per key after prune to the last version (\(pruneReport.pagesDeleted) pages freed)",
                    value: Double(afterPrune) / Double(keyCount), unit: "B/key", limitName: nil, limit: nil, extra: [:]))
    rows.append(Row(name: "key map: prune a backlog of \(insertTimes.count + keyUpdateBatches) versions \(pruneHow)",
                    value: Double(pruneReport.pagesDeleted) / pruneSeconds, unit: "pages/s", limitName: nil, limit: nil,
                    extra: ["transactions": Double(pruneReport.transactions), "seconds": pruneSeconds,
                            "peak_anonymous_growth_MB": Double(prunePeakGrowth) / 1024]))
    var afterPruneTimes: [Double] = []
    for _ in 0..<keyUpdateBatches { afterPruneTimes.append(try updateBatch(timings: nil).all) }
    rows.append(Row(name: "key map: update existing keys after that prune (batch 10k, durable, \(keyUpdateBatches) batches)",
                    value: Double(batch) / Stats(afterPruneTimes).median, unit: "keys/s",
                    limitName: "the same run's updates before the prune", limit: Double(batch) / Stats(updateTimes).median,
                    extra: ["p90_batch_s": Stats(afterPruneTimes).percentile(90)]))
    // Steady state of an operator that keeps the last `retained` versions: every batch prunes
    // the version that leaves the window, in the same transaction, so the file stops growing
    // and LMDB reuses the pages pruning frees. A second store, filled the same way from the
    // start, since the store above has just had its backlog pruned.
    let retained = 10
    let retainPath = Workloads.scratch("smt-retain", base: baseDir)
    defer { try? FileManager.default.removeItem(atPath: retainPath) }
    let retainStore = try LMDBSparseStore(environment: try Environment(path: retainPath, options: smtOptions))
    var retainVersion: UInt64 = 0
    var retainedTimes: [Double] = []
    var pruneTimes: [Double] = []
    var bytesAtWindowFull = 0
    log("sparse tree: \(keyCount) keys again, keeping the last \(retained) versions")
    func retainBatch(_ changes: [SparseChange]) throws -> (seconds: Double, pruneSeconds: Double) {
        retainVersion += UInt64(changes.count)
        let start = DispatchTime.now().uptimeNanoseconds
        var pruneNs: UInt64 = 0
        let v = retainVersion
        _ = try retainStore.write { w in
            let r = try SparseMerkleTree.apply(changes, version: v, writer: w, snapshot: retainStore)
            let pruneStart = DispatchTime.now().uptimeNanoseconds
            if v > UInt64(retained - 1) * UInt64(batch) { _ = try w.prune(before: v - UInt64(retained - 1) * UInt64(batch)) }
            pruneNs = DispatchTime.now().uptimeNanoseconds - pruneStart
            return r
        }
        return (Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9, Double(pruneNs) / 1e9)
    }
    for first in stride(from: 0, to: keys.count, by: batch) {
        _ = try retainBatch(keys[first..<min(keys.count, first + batch)].map { SparseChange(keyHash: $0, value: value) })
    }
    for i in 0..<(retained + keyUpdateBatches) {
        if i == retained { bytesAtWindowFull = try retainStore.storedBytes() }
        let t = try retainBatch(randomUpdates())
        if i >= retained { retainedTimes.append(t.seconds); pruneTimes.append(t.pruneSeconds) }
    }
    log(String(format: "key map update keeping the last %d versions: %.1f ms per batch, of which prune %.1f ms (medians); stored bytes %+d per batch once the window is full",
               retained, Stats(retainedTimes).median * 1000, Stats(pruneTimes).median * 1000,
               (try retainStore.storedBytes() - bytesAtWindowFull) / keyUpdateBatches))
    rows.append(Row(name: "key map: update existing keys, keeping the last \(retained) versions (batch 10k, durable, \(keyCount) keys)",
                    value: Double(batch) / Stats(retainedTimes).median, unit: "keys/s", limitName: nil, limit: nil, extra: [:]))
}

// ---- Patient layer ----
if patientRecords > 0 {
    let patients = max(1, patientCount > 0 ? patientCount : patientRecords / 10)
    let dir = Workloads.scratch("patients", base: baseDir)
    defer {
        try? FileManager.default.removeItem(atPath: dir)
        try? FileManager.default.removeItem(atPath: dir + ".key")
    }
    var options = Ledger.Options()
    options.durable = ProcessInfo.processInfo.environment["MEDLEDGER_BENCH_NOSYNC"] == nil
    let (ledger, _) = try Ledger.create(at: dir, origin: "bench.example/patients", options: options)
    let store = try PatientRecords(ledger: ledger, masterKey: try MasterKeyFile.create(at: dir + ".key"))
    log("patient layer: \(patients) patients, \(patientRecords) records of 2 KB FHIR JSON, batches of 1000")
    for start in stride(from: 0, to: patients, by: 10_000) {
        try store.addPatients((start..<min(patients, start + 10_000)).map { ("Patient/\($0)", nil) })
    }
    // A 2 KB Observation: the note pads it to size.
    let padding = [UInt8](repeating: UInt8(ascii: "x"), count: 2048)
    func fhir(_ i: Int) -> [UInt8] {
        let head = #"{"resourceType":"Observation","id":"obs-\#(i)","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8867-4"}]},"valueQuantity":{"value":\#(60 + i % 40),"unit":"beats/min"},"note":[{"text":""#
        return Array(head.utf8) + padding[..<max(0, 2048 - head.utf8.count - 4)] + Array(#""}]}"#.utf8)
    }
    // Record `i`: version of `obs-(i / patients)` of patient `i % patients`.
    func recordInput(_ i: Int) -> PatientRecords.RecordInput {
        PatientRecords.RecordInput(patient: "Patient/\(i % patients)", recordId: "obs-\(i / patients)", content: fhir(i))
    }
    // References from the same run, on the same disk: the log alone appending, in batches of
    // 1000, entries as large as a put's stored bytes (a 2 KB record sealed: about 2.1 KB) and
    // as large as an audited read's entry (its size measured after the reads below).
    func logAppendRate(payload: Int) throws -> Double {
        let path = Workloads.scratch("patients-log", base: baseDir)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let (reference, _) = try Ledger.create(at: path, origin: "bench.example/reference", options: options)
        let count = min(max(patientRecords, 20_000), 100_000)
        return perSecond(try Workloads.ledgerAppend(reference, count: count, payloadSize: payload, batch: 1000),
                         itemsPerBatch: 1000).median
    }
    let recordSizedAppend = try logAppendRate(payload: 2_120)
    log(String(format: "patient layer reference: log append of 2,120 B entries, batch 1000: %.0f entries/s", recordSizedAppend))
    var putTimes: [Double] = []
    let putBatch = 1000
    var written = 0
    // CPU time (all threads) is steadier than wall time on this shared machine.
    let putCPUStart = cpuSeconds(process: true)
    // Each batch's phases: sealing before the write, the log and key map, the record rows,
    // the commit.
    let putPhases = PatientRecords.PutTimings()
    var phaseTimes: [[Double]] = [[], [], [], []]
    let bytesBeforePuts = try ledger.storedBytes()
    while written < patientRecords {
        let n = min(putBatch, patientRecords - written)
        let inputs = (written..<(written + n)).map(recordInput)
        let t0 = DispatchTime.now().uptimeNanoseconds
        try PatientRecords.$putTimings.withValue(putPhases) { _ = try store.putRecords(inputs) }
        putTimes.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
        for (k, ns) in [putPhases.prepareNs, putPhases.logAndMapNs, putPhases.recordRowsNs, putPhases.commitNs].enumerated() {
            phaseTimes[k].append(Double(ns) / 1e9)
        }
        written += n
    }
    let phaseMedians = phaseTimes.map { Stats($0).median }
    log(String(format: "patient layer: put batches of %d, median phases: sealing %.2f ms, log and key map %.2f ms, record rows %.2f ms, commit %.2f ms",
               putBatch, phaseMedians[0] * 1000, phaseMedians[1] * 1000, phaseMedians[2] * 1000, phaseMedians[3] * 1000))
    log(String(format: "patient layer: record put %.0f records/s (median of %d batches), %.1f µs of CPU per record (all threads; inputs included)",
               Double(putBatch) / Stats(putTimes).median, putTimes.count, (cpuSeconds(process: true) - putCPUStart) * 1e6 / Double(patientRecords)))
    rows.append(Row(name: "record put, 2 KB FHIR JSON (batch 1000, durable, \(patientRecords) records, \(patients) patients)",
                    value: Double(putBatch) / Stats(putTimes).median, unit: "records/s",
                    limitName: "log append 2,120 B, batch 1000", limit: recordSizedAppend,
                    extra: ["p99_batch_s": Stats(putTimes).percentile(99), "median_sealing_s": phaseMedians[0],
                            "median_log_and_map_s": phaseMedians[1], "median_record_rows_s": phaseMedians[2],
                            "median_commit_s": phaseMedians[3]]))
    // The disk's floor for the same work, in this run: each batch's stored bytes (the sealed
    // boxes, log entries, key-map pages and record rows a put batch adds to the file) written
    // sequentially and synced with one fdatasync; random bytes, since sealed records do not
    // compress. Like the put, it writes into page-cache memory the file did not have before.
    let putBatches = max(1, putTimes.count)
    let bytesPerPutBatch = max(1, (try ledger.storedBytes() - bytesBeforePuts) / putBatches)
    let floorBatches = min(putBatches, 100)
    let storedFloor = Stats(try Workloads.fdatasyncWrite(path: dir + ".floor", count: floorBatches,
                                                         payloadSize: max(1, bytesPerPutBatch - 4), batch: 1, incompressible: true)).median
    log(String(format: "patient layer: a put batch of %d stores %d bytes; written and synced alone: %.2f ms (%.0f records/s)",
               putBatch, bytesPerPutBatch, storedFloor * 1000, Double(putBatch) / storedFloor))
    rows.append(Row(name: "record put against the disk: the batch's \(bytesPerPutBatch / 1000) kB of stored bytes (random) appended to a file + fdatasync, alone",
                    value: Double(putBatch) / Stats(putTimes).median, unit: "records/s",
                    limitName: "write+fdatasync of the same bytes", limit: Double(putBatch) / storedFloor,
                    extra: ["bytes_per_batch": Double(bytesPerPutBatch), "floor_batch_s": storedFloor]))
    if ProcessInfo.processInfo.environment["MEDLEDGER_BENCH_PUTS_ONLY"] != nil { exit(0) }
    let perPatient = max(1, patientRecords / patients)
    // A read of a random stored record (the latest version of `obs-k` of some patient).
    @Sendable func randomReads(_ count: Int, _ rng: inout Workloads.SplitMix64) -> [PatientRecords.ReadRequest] {
        (0..<count).map { _ in
            let i = Int(rng.next() % UInt64(patients * perPatient))
            return PatientRecords.ReadRequest(patient: "Patient/\(i % patients)", recordId: "obs-\(i / patients)")
        }
    }
    // Single reads from 1, 8 and 32 threads of their own (more than the cores, as a server's
    // request threads): concurrent reads share durable commits.
    for threads in [1, 8, 32] {
        let reads = min(20_000, patientRecords) / threads * threads
        var rng = Workloads.SplitMix64(seed: UInt64(threads))
        let targets = (0..<reads).map { _ in Int(rng.next() % UInt64(patients * perPatient)) }
        let t0 = DispatchTime.now().uptimeNanoseconds
        onThreads(threads) { t in
            for j in stride(from: t, to: reads, by: threads) {
                let i = targets[j]
                _ = try! store.read(patient: "Patient/\(i % patients)", recordId: "obs-\(i / patients)", as: .custodian("bench"))
            }
        }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        rows.append(Row(name: "audited read, \(threads) thread\(threads == 1 ? "" : "s") (durable audit entry per read, group commit)",
                        value: Double(reads) / seconds, unit: "reads/s", limitName: nil, limit: nil, extra: [:]))
    }
    for batch in [100, 1000] {
        let reads = min(50_000, max(patientRecords, batch)) / batch * batch
        var rng = Workloads.SplitMix64(seed: UInt64(batch))
        let requests = randomReads(reads, &rng)
        var times: [Double] = []
        // Each call's two phases: its reads (lookups, checks, decryption, audit events
        // encoded) and its audit commit, to hold what audit costs against the reads alone.
        var readPhases: [Double] = [], auditPhases: [Double] = []
        let phases = PatientRecords.ReadTimings()
        let readCPUStart = cpuSeconds(process: true)
        defer {
            log(String(format: "patient layer: batch reads of %d, %.1f µs of CPU per read (all threads)", batch,
                       (cpuSeconds(process: true) - readCPUStart) * 1e6 / Double(reads)))
        }
        for start in stride(from: 0, to: reads, by: batch) {
            let t0 = DispatchTime.now().uptimeNanoseconds
            let results = try PatientRecords.$readTimings.withValue(phases) {
                try store.readRecords(Array(requests[start..<(start + batch)]), as: .custodian("bench"))
            }
            times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
            readPhases.append(Double(phases.readNs) / 1e9)
            auditPhases.append(Double(phases.auditNs) / 1e9)
            precondition(results.allSatisfy { (try? $0.get()) != nil })
        }
        let audited = Double(batch) / Stats(times).median
        rows.append(Row(name: "audited batch read, \(batch) records per call, 1 thread (one durable audit commit per call)",
                        value: audited, unit: "reads/s", limitName: nil, limit: nil,
                        extra: ["p99_batch_s": Stats(times).percentile(99)]))
        log(String(format: "patient layer: batch reads of %d, median phases per call: reads %.2f ms, audit commit %.2f ms",
                   batch, Stats(readPhases).median * 1000, Stats(auditPhases).median * 1000))
        rows.append(Row(name: "audit's cost: batch reads of \(batch) per call, audited, against the same calls' read phase alone",
                        value: audited, unit: "reads/s", limitName: "read phase alone (audit commit excluded)",
                        limit: Double(batch) / Stats(readPhases).median,
                        extra: ["median_read_phase_s": Stats(readPhases).median, "median_audit_phase_s": Stats(auditPhases).median]))
    }
    // Batch reads from several threads: their audit entries share commits (group commit).
    for threads in [2, 4] {
        let batch = 1000
        let calls = 40 / threads * threads
        var rng = Workloads.SplitMix64(seed: UInt64(100 + threads))
        let requests = randomReads(calls * batch, &rng)
        let t0 = DispatchTime.now().uptimeNanoseconds
        onThreads(threads) { t in
            for call in stride(from: t, to: calls, by: threads) {
                let results = try! store.readRecords(Array(requests[(call * batch)..<((call + 1) * batch)]), as: .custodian("bench"))
                precondition(results.allSatisfy { (try? $0.get()) != nil })
            }
        }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        rows.append(Row(name: "audited batch read, 1000 records per call, \(threads) threads (group commit)",
                        value: Double(calls * batch) / seconds, unit: "reads/s", limitName: nil, limit: nil, extra: [:]))
    }
    // Audited reads against the log appending entries of an audit event's size, batch 1000.
    let auditBytes = try ledger.entry(at: try ledger.size - 1).encoded().count
    let auditSizedAppend = try logAppendRate(payload: auditBytes - 4)
    log(String(format: "patient layer reference: log append of %d B entries (an audit event's), batch 1000: %.0f entries/s", auditBytes, auditSizedAppend))
    for (i, row) in rows.enumerated() where row.name.hasPrefix("audited ") {
        rows[i] = Row(name: row.name, value: row.value, unit: row.unit, limitName: "log append \(auditBytes) B, batch 1000",
                      limit: auditSizedAppend, extra: row.extra)
    }
    // Exports with proofs: one patient's current records each (as many as puts gave it),
    // after the audit entry's size above was taken from a read's entry.
    var exportTimes: [Double] = [], verifyTimes: [Double] = []
    var exportProofBytes = 0, exportedRecords = 0
    for n in 0..<min(200, patients) {
        let t0 = DispatchTime.now().uptimeNanoseconds
        let export = try store.export(patient: "Patient/\(n * (patients / min(200, patients)))", as: .custodian("bench"))
        exportTimes.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
        exportProofBytes += export.proof.count
        let v0 = DispatchTime.now().uptimeNanoseconds
        exportedRecords += try PatientExport.verify(bundle: export.bundle, proof: export.proof, verifier: ledger.verifier)
        verifyTimes.append(Double(DispatchTime.now().uptimeNanoseconds - v0) / 1e9)
    }
    rows.append(Row(name: "patient export with proofs, \(exportedRecords / exportTimes.count) records each (durable audit)",
                    value: 1 / Stats(exportTimes).median, unit: "exports/s", limitName: nil, limit: nil, extra: [:]))
    rows.append(Row(name: "verify a patient export offline, \(exportedRecords / exportTimes.count) records each (checkpoint, proofs, decryption, resources)",
                    value: 1 / Stats(verifyTimes).median, unit: "exports/s", limitName: nil, limit: nil, extra: [:]))
    rows.append(Row(name: "patient export proof bundle bytes per record", value: Double(exportProofBytes) / Double(max(1, exportedRecords)),
                    unit: "B/record", limitName: nil, limit: nil, extra: [:]))
    rows.append(Row(name: "patient layer bytes on disk per record (incl. audit entries)",
                    value: Double(try ledger.storedBytes()) / Double(patientRecords), unit: "B/record", limitName: nil, limit: nil, extra: [:]))
    // New versions of stored records, batches of 1000 from one caller: alone, then while two
    // threads run audited batch reads of 100. Their audit commits land between each put's
    // read snapshot and its write (this layer's own commits, which the put need not check
    // its versions against).
    let versionBatches = max(1, min(40, patientRecords / putBatch))
    var versionBase = 0
    var aloneRate = 0.0
    for readers in [0, 2] {
        let batches = (0..<versionBatches).map { b in
            (0..<putBatch).map { k in recordInput((versionBase + b * putBatch + k) % patientRecords) }
        }
        versionBase += versionBatches * putBatch
        let progress = MixedProgress()
        onThreads(1 + readers) { t in
            guard t > 0 else {
                var times: [Double] = [], rowPhases: [Double] = []
                let phases = PatientRecords.PutTimings()
                for batch in batches {
                    let t0 = DispatchTime.now().uptimeNanoseconds
                    _ = try! PatientRecords.$putTimings.withValue(phases) { try store.putRecords(batch) }
                    times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
                    rowPhases.append(Double(phases.recordRowsNs) / 1e9)
                }
                progress.finish(putTimes: times, rowPhases: rowPhases)
                return
            }
            var rng = Workloads.SplitMix64(seed: UInt64(200 + t))
            while !progress.isFinished {
                let requests = randomReads(100, &rng)
                let results = try! store.readRecords(requests, as: .custodian("bench"))
                precondition(results.allSatisfy { (try? $0.get()) != nil })
                progress.addReads(requests.count)
            }
        }
        let rate = Double(putBatch) / Stats(progress.putTimes).median
        // The record rows phase includes checking the versions again after an overtaking commit.
        log(String(format: "patient layer: new versions with %d reader threads: record rows phase %.2f ms (median)", readers,
                   Stats(progress.rowPhases).median * 1000))
        if readers == 0 {
            aloneRate = rate
            rows.append(Row(name: "record put of new versions, batch 1000, alone (\(versionBatches) batches)", value: rate, unit: "records/s",
                            limitName: "log append 2,120 B, batch 1000", limit: recordSizedAppend, extra: [:]))
        } else {
            rows.append(Row(name: "record put of new versions, batch 1000, while \(readers) threads read (audited batches of 100)",
                            value: rate, unit: "records/s", limitName: "the same puts alone", limit: aloneRate,
                            extra: ["reads_per_s": progress.readRate]))
            log(String(format: "patient layer: %d reader threads read %.0f records/s beside the puts", readers, progress.readRate))
        }
    }
}

// ---- Imaging (blobs) ----
var imagingRows: [ImagingBench.Row] = []
if imagingBytes > 0 {
    imagingRows = try ImagingBench.run(base: baseDir, total: imagingBytes, chunkSizes: chunkSizes, log: log)
}

// ---- Report ----
func format(_ v: Double) -> String {
    if v >= 100 { return String(format: "%.0f", v) }
    return String(format: "%.2f", v)
}
print("MedLedger ledger-bench: \(entries) entries of 128 B, \(entries4k) of 4 KB, \(ProcessInfo.processInfo.activeProcessorCount) cores")
print("| figure | median | unit | limit (same run) | ratio |")
print("| --- | ---: | --- | --- | ---: |")
for row in rows {
    let limit = row.limit.map { "\(row.limitName!): \(format($0))" } ?? ""
    let ratio = row.limit.map { String(format: "%.2fx", row.value / $0) } ?? ""
    print("| \(row.name) | \(format(row.value)) | \(row.unit) | \(limit) | \(ratio) |")
}
print(String(format: "| 128 B append vs write+fdatasync of the same bytes | %.2fx | | %@ entries/s | |",
             append128.median / limits128.fsync, format(limits128.fsync)))
print("| bytes on disk after \(entries) x 128 B | \(bytesOnDisk) | bytes | \(bytesOnDisk / max(entries, 1)) B/entry | |")

if !imagingRows.isEmpty {
    print("")
    print("Imaging: \(imagingBytes >> 20) MiB per scenario")
    print("| figure | median | unit | limit (same run) | ratio | p50 ms | p99 ms | peak RSS MB |")
    print("| --- | ---: | --- | --- | ---: | ---: | ---: | ---: |")
    for row in imagingRows {
        let limit = row.limit.map { "\(row.limitName!): \(format($0))" } ?? ""
        let ratio = row.limit.map { String(format: "%.2fx", row.value / $0) } ?? ""
        print("| \(row.name) | \(format(row.value)) | \(row.unit) | \(limit) | \(ratio) | \(row.p50.map(format) ?? "") | "
              + "\(row.p99.map(format) ?? "") | \(row.peakRSS.map { String($0 >> 20) } ?? "") |")
    }
}

if let jsonPath {
    var object: [String: Any] = ["entries": entries, "entries_4k": entries4k, "bytes_on_disk": bytesOnDisk,
                                 "date": ISO8601DateFormatter().string(from: Date())]
    object["figures"] = rows.map { row -> [String: Any] in
        var o: [String: Any] = ["name": row.name, "median": row.value, "unit": row.unit]
        if let l = row.limit { o["limit"] = l; o["limit_name"] = row.limitName!; o["ratio"] = row.value / l }
        for (k, v) in row.extra { o[k] = v }
        return o
    }
    object["imaging_bytes"] = imagingBytes
    object["imaging"] = imagingRows.map { row -> [String: Any] in
        var o: [String: Any] = ["name": row.name, "median": row.value, "unit": row.unit]
        if let l = row.limit { o["limit"] = l; o["limit_name"] = row.limitName!; o["ratio"] = row.value / l }
        if let v = row.p50 { o["p50_ms"] = v }
        if let v = row.p99 { o["p99_ms"] = v }
        if let v = row.peakRSS { o["peak_rss_bytes"] = v }
        for (k, v) in row.extra { o[k] = v }
        return o
    }
    let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .prettyPrinted])
    try data.write(to: URL(fileURLWithPath: jsonPath))
}
if sink == 42 { print("") }

/// What the mixed put-and-read scenario's threads share.
final class MixedProgress: @unchecked Sendable {
    // Sendable: every field is read and written under `lock`.
    private let lock = NSLock()
    private var finished = false
    private var times: [Double] = [], rows: [Double] = []
    private var reads = 0
    private let started = DispatchTime.now().uptimeNanoseconds
    private var seconds = 0.0

    var isFinished: Bool { lock.withLock { finished } }
    var putTimes: [Double] { lock.withLock { times } }
    var rowPhases: [Double] { lock.withLock { rows } }
    var readRate: Double { lock.withLock { Double(reads) / max(seconds, 1e-9) } }

    func finish(putTimes: [Double], rowPhases: [Double]) {
        lock.withLock {
            (finished, times, rows) = (true, putTimes, rowPhases)
            seconds = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
        }
    }

    func addReads(_ n: Int) { lock.withLock { reads += n } }
}
