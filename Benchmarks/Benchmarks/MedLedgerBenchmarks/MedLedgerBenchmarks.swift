import Benchmark
import BenchSupport
import Foundation
import LedgerCrypto
import MedLedger
import MerkleLog
import LMDBKit
import SparseMerkle

// The ordo-one suite: per-operation figures with allocation counts. Ledger size for the
// proof benchmarks: 1M entries, or MEDLEDGER_BENCH_SCALE (e.g. 10M).
let scale = parseCount(ProcessInfo.processInfo.environment["MEDLEDGER_BENCH_SCALE"] ?? "1M") ?? 1_000_000

nonisolated(unsafe) var proofLedger: Ledger?
nonisolated(unsafe) var proofLedgerPath = ""

func sharedLedger() throws -> Ledger {
    if let proofLedger { return proofLedger }
    proofLedgerPath = Workloads.scratch("suite")
    var options = Ledger.Options()
    options.durable = false  // setup only; the append benchmarks below are durable
    let (ledger, _) = try Ledger.create(at: proofLedgerPath, origin: "bench.example/suite", options: options)
    _ = try Workloads.ledgerAppend(ledger, count: scale, payloadSize: 124, batch: 10_000)
    try ledger.environment.sync()
    proofLedger = ledger
    return ledger
}

/// A key map of `scale` random keys, built once for the key-map benchmarks.
nonisolated(unsafe) var keyMap: (store: LMDBSparseStore, keys: [Hash], version: UInt64)?

func sharedKeyMap() throws -> (store: LMDBSparseStore, keys: [Hash], version: UInt64) {
    if let keyMap { return keyMap }
    var options = Environment.Options()
    options.durable = false  // setup only
    let store = try LMDBSparseStore(environment: try Environment(path: Workloads.scratch("keymap"), options: options))
    var rng = Workloads.SplitMix64(seed: 7)
    var keys: [Hash] = []
    var version: UInt64 = 0
    while keys.count < scale {
        let batch = (0..<min(10_000, scale - keys.count)).map { _ in
            Hash(unsafeUninitializedBytes: { out in for i in 0..<4 { out.storeBytes(of: rng.next(), toByteOffset: i * 8, as: UInt64.self) } })
        }
        keys += batch
        version += UInt64(batch.count)
        _ = try store.write { try SparseMerkleTree.apply(batch.map { SparseChange(keyHash: $0, value: [UInt8](repeating: 1, count: 40)) }, version: version, writer: $0) }
    }
    keyMap = (store, keys, version)
    return keyMap!
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.throughput, .wallClock, .mallocCountTotal],
        maxDuration: .seconds(5),
        maxIterations: 1_000_000
    )

    Benchmark("SHA-256 64 B (limit)", configuration: .init(scalingFactor: .kilo)) { benchmark in
        var input = [UInt8](repeating: 1, count: 64)
        for i in benchmark.scaledIterations {
            input[0] = UInt8(truncatingIfNeeded: i)
            blackHole(SHA256.hash(input))
        }
    }

    Benchmark("RFC 6962 node hash", configuration: .init(scalingFactor: .kilo)) { benchmark in
        var h = SHA256.hash([1])
        for _ in benchmark.scaledIterations { h = SHA256.nodeHash(h, h) }
        blackHole(h)
    }

    for payload in [124, 4092] {
        Benchmark("append batch 10k x \(payload + 4) B durable", configuration: .init(maxDuration: .seconds(10), maxIterations: 50)) { benchmark in
            let path = Workloads.scratch("append")
            defer { try? FileManager.default.removeItem(atPath: path) }
            let (ledger, _) = try Ledger.create(at: path, origin: "bench.example/append")
            var index = 0
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations {
                _ = try Workloads.ledgerAppend(ledger, count: 10_000, payloadSize: payload, batch: 10_000, startIndex: index)
                index += 10_000
            }
            benchmark.stopMeasurement()
        }

        Benchmark("raw LMDB MDB_APPEND batch 10k x \(payload + 4) B durable (limit)", configuration: .init(maxDuration: .seconds(10), maxIterations: 50)) { benchmark in
            let path = Workloads.scratch("raw")
            defer { try? FileManager.default.removeItem(atPath: path) }
            benchmark.startMeasurement()
            _ = try Workloads.rawLMDBAppend(path: path, count: 10_000 * benchmark.scaledIterations.count, payloadSize: payload, batch: 10_000)
            benchmark.stopMeasurement()
        }

        Benchmark("write+fdatasync batch 10k x \(payload + 4) B (limit)", configuration: .init(maxDuration: .seconds(10), maxIterations: 50)) { benchmark in
            let path = Workloads.scratch("dd")
            benchmark.startMeasurement()
            _ = try Workloads.fdatasyncWrite(path: path, count: 10_000 * benchmark.scaledIterations.count, payloadSize: payload, batch: 10_000)
            benchmark.stopMeasurement()
        }
    }

    Benchmark("inclusion proof at \(scale)", configuration: .init(scalingFactor: .kilo)) { benchmark in
        let ledger = try sharedLedger()
        var rng = Workloads.SplitMix64(seed: 1)
        let size = try ledger.size
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(try ledger.inclusionProof(index: UInt64.random(in: 0..<size, using: &rng), size: size))
        }
    }

    Benchmark("consistency proof at \(scale)", configuration: .init(scalingFactor: .kilo)) { benchmark in
        let ledger = try sharedLedger()
        var rng = Workloads.SplitMix64(seed: 2)
        let size = try ledger.size
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(try ledger.consistencyProof(oldSize: UInt64.random(in: 1...size, using: &rng), newSize: size))
        }
    }

    Benchmark("verify inclusion proof at \(scale)", configuration: .init(scalingFactor: .kilo)) { benchmark in
        let ledger = try sharedLedger()
        var rng = Workloads.SplitMix64(seed: 3)
        let size = try ledger.size
        let proofs = try (0..<1000).map { _ in try ledger.inclusionProof(index: UInt64.random(in: 0..<size, using: &rng), size: size) }
        benchmark.startMeasurement()
        for i in benchmark.scaledIterations {
            let (proof, leaf, root) = proofs[i % proofs.count]
            try proof.verify(leafHash: leaf, rootHash: root)
        }
    }

    Benchmark("key map update batch 10k at \(scale) keys", configuration: .init(maxDuration: .seconds(10), maxIterations: 30)) { benchmark in
        var (store, keys, version) = try sharedKeyMap()
        var rng = Workloads.SplitMix64(seed: 8)
        for _ in benchmark.scaledIterations {
            let changes = (0..<10_000).map { _ in SparseChange(keyHash: keys[Int(rng.next() % UInt64(keys.count))], value: [UInt8](repeating: 2, count: 40)) }
            version += 10_000
            benchmark.startMeasurement()
            _ = try store.write { try SparseMerkleTree.apply(changes, version: version, writer: $0) }
            benchmark.stopMeasurement()
        }
        keyMap = (store, keys, version)
    }

    Benchmark("key proof (present) at \(scale) keys", configuration: .init(scalingFactor: .kilo)) { benchmark in
        let (store, keys, version) = try sharedKeyMap()
        var rng = Workloads.SplitMix64(seed: 9)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            let k = keys[Int(rng.next() % UInt64(keys.count))]
            blackHole(try store.read { try SparseMerkleTree.proof(keyHash: k, version: version, reader: $0) })
        }
    }

    Benchmark("open ledger at \(scale)", configuration: .init(maxIterations: 200)) { benchmark in
        // A ledger may be open once per process: build a separate one and close it first.
        let path = Workloads.scratch("open")
        defer { try? FileManager.default.removeItem(atPath: path) }
        do {
            var options = Ledger.Options()
            options.durable = false
            let (ledger, _) = try Ledger.create(at: path, origin: "bench.example/open", options: options)
            _ = try Workloads.ledgerAppend(ledger, count: scale, payloadSize: 124, batch: 10_000)
            try ledger.environment.sync()
        }
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(try Ledger(path: path))
        }
    }

    // ---- Blobs: 64 MiB per ingest, reads from a 256 MiB blob (256 KiB chunks) ----
    Benchmark("blob ingest 64 MiB durable", configuration: .init(metrics: [.throughput, .wallClock, .mallocCountTotal, .peakMemoryResident],
                                                                  maxDuration: .seconds(10), maxIterations: 20)) { benchmark in
        let (records, _) = try sharedBlobLedger()
        let piece = [UInt8](repeating: 0x42, count: 1 << 20)
        benchmark.startMeasurement()
        for i in benchmark.scaledIterations {
            let writer = try records.blobWriter()
            let upload = try writer.begin(patient: "Patient/1", blobId: "ingest-\(i)")
            for _ in 0..<64 { try upload.write(piece) }
            try upload.finish()
            blackHole(try writer.commit())
        }
    }

    Benchmark("blob full read 256 MiB (every chunk checked)", configuration: .init(maxDuration: .seconds(10), maxIterations: 20)) { benchmark in
        let (_, reader) = try sharedBlobLedger()
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            var sink: UInt8 = 0
            try reader.stream { sink ^= $0[0] }
            blackHole(sink)
        }
    }

    Benchmark("blob range read 1 MB, random offset", configuration: .init(maxDuration: .seconds(5), maxIterations: 10_000)) { benchmark in
        let (_, reader) = try sharedBlobLedger()
        var rng = Workloads.SplitMix64(seed: 3)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 64)
        defer { buffer.deallocate() }
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            try reader.read(offset: rng.next() % (reader.info.size - (1 << 20)), into: buffer)
        }
    }
}

nonisolated(unsafe) var blobLedger: (PatientRecords, BlobReader)?

/// A durable ledger with one patient and a 256 MiB blob, built once for the blob benchmarks.
func sharedBlobLedger() throws -> (PatientRecords, BlobReader) {
    if let blobLedger { return blobLedger }
    let path = Workloads.scratch("blobs")
    let (ledger, _) = try Ledger.create(at: path, origin: "bench.example/blobs")
    let records = try PatientRecords(ledger: ledger, masterKey: try MasterKeyFile.create(at: path + ".key"))
    try records.addPatient(externalId: "Patient/1")
    let writer = try records.blobWriter()
    let upload = try writer.begin(patient: "Patient/1", blobId: "study")
    var rng = Workloads.SplitMix64(seed: 9)
    var piece = [UInt8](repeating: 0, count: 1 << 20)
    for _ in 0..<256 {
        piece.withUnsafeMutableBytes { raw in for i in 0..<(raw.count / 8) { raw.storeBytes(of: rng.next(), toByteOffset: i * 8, as: UInt64.self) } }
        try upload.write(piece)
    }
    try upload.finish()
    try writer.commit()
    blobLedger = (records, try records.openBlob(patient: "Patient/1", blobId: "study", as: .custodian("bench")))
    return blobLedger!
}
