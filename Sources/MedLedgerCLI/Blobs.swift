import ArgumentParser
import Foundation
import LedgerCrypto
import MedLedger
#if canImport(Glibc)
import Glibc
#endif

func blobJSON(_ info: BlobInfo) -> [String: Any] {
    ["blob": info.blobId, "blob_hash": info.blobHash.hex, "version": Int(info.version), "index": info.index, "size": info.size,
     "chunk_size": info.chunkSize, "chunks": info.chunkCount, "root": info.root.hex, "media_type": info.mediaType]
}

/// A byte range `A-B` (inclusive, as in HTTP), or `A-` to the end, within `size` bytes.
func parseRange(_ text: String, size: UInt64) throws -> (offset: UInt64, count: UInt64) {
    let parts = text.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false)
    guard parts.count == 2, let a = UInt64(parts[0]) else { throw CLIError(.usage, "--range must be A-B (inclusive) or A-") }
    let b: UInt64
    if parts[1].isEmpty {
        guard size > 0 else { throw CLIError(.usage, "--range \(text) is beyond the blob's 0 bytes") }
        b = size - 1
    } else {
        guard let parsed = UInt64(parts[1]) else { throw CLIError(.usage, "--range must be A-B (inclusive) or A-") }
        b = parsed
    }
    guard a <= b, b < size else { throw CLIError(.usage, "--range \(text) is not within the blob's \(size) bytes") }
    return (a, b - a + 1)
}

/// Writes everything to `fd`.
func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) throws {
    var done = 0
    while done < bytes.count {
        let n = Glibc.write(fd, bytes.baseAddress! + done, bytes.count - done)
        if n < 0 {
            if errno == EINTR { continue }
            throw CLIError(.storage, "cannot write the output (errno \(errno))")
        }
        done += n
    }
}

/// Opens `--out FILE` (mode 0600: it receives medical data) or stdout.
func openOutput(_ path: String?) throws -> Int32 {
    guard let path, path != "-" else { return 1 }
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    guard fd >= 0 else { throw CLIError(.usage, "cannot write \(path)") }
    return fd
}

/// The blob a command addresses.
struct BlobTarget: ParsableArguments {
    @Option(help: "The patient's external id.") var patient: String
    @Option(help: "The blob id.") var id: String

    /// Opens the blob as the accessor (an audited read).
    func open(_ records: PatientRecords, version: UInt32?, accessor: AccessorOptions) throws -> BlobReader {
        try records.openBlob(patient: patient, blobId: id, version: version, as: try accessor.make(),
                             purpose: accessor.purpose, breakGlass: accessor.breakGlass)
    }
}

struct BlobCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "blob", abstract: "Store, read and prove imaging-scale blobs (streamed, chunked, encrypted).",
        subcommands: [Put.self, Get.self, Prove.self, Collect.self])

    struct Put: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Store a new version of a blob from a file or stdin; prints the manifest's JSON.",
            discussion: "Shows progress on stderr when it is a terminal. The blob is visible once this returns.")
        @OptionGroup var ledger: PatientLedgerOptions
        @OptionGroup var target: BlobTarget
        @Option(help: "The media type.") var type: String = "application/octet-stream"
        @Option(help: "Plaintext bytes per chunk (4096 to 16777216).") var chunkSize: Int = PatientRecords.defaultBlobChunkSize
        @Argument(help: "The file to store; stdin when absent or '-'.") var file: String?

        func run() throws {
            let records = try ledger.open()
            let fd: Int32
            if let file, file != "-" {
                fd = open(file, O_RDONLY | O_CLOEXEC)
                guard fd >= 0 else { throw CLIError(.usage, "cannot read \(file)") }
            } else {
                fd = 0
            }
            defer { if fd != 0 { close(fd) } }
            var info = stat()
            let total: UInt64? = fstat(fd, &info) == 0 && (info.st_mode & S_IFMT) == S_IFREG ? UInt64(info.st_size) : nil
            let writer = try records.blobWriter(chunkSize: chunkSize)
            let upload = try writer.begin(patient: target.patient, blobId: target.id, mediaType: type)
            var progress = Progress()
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 64)
            defer {
                buffer.initializeMemory(as: UInt8.self, repeating: 0)
                buffer.deallocate()
            }
            var done: UInt64 = 0
            while true {
                let n = read(fd, buffer.baseAddress, buffer.count)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw CLIError(.usage, "cannot read the input (errno \(errno))")
                }
                if n == 0 { break }
                try upload.write(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
                done += UInt64(n)
                progress.update(done, total: total, unit: "bytes")
            }
            try upload.finish()
            let stored = try writer.commit()[0]
            progress.finish()
            try printJSON(blobJSON(stored))
        }
    }

    struct Get: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Read a blob (or a byte range) as an accessor (audited); writes the bytes to stdout or --out.",
            discussion: "Every chunk is checked against the blob's root before it is written; a damaged chunk stops the read with exit 4.")
        @OptionGroup var ledger: PatientLedgerOptions
        @OptionGroup var target: BlobTarget
        @Option(help: "The version (default: the latest).") var version: UInt32?
        @Option(help: "Bytes A-B (inclusive) or A- (to the end).") var range: String?
        @Option(help: "Write to this file (mode 0600) instead of stdout.") var out: String?
        @OptionGroup var accessor: AccessorOptions
        @Flag(help: "Print the blob's manifest JSON instead of its bytes.") var info = false

        func run() throws {
            let reader = try target.open(ledger.open(), version: version, accessor: accessor)
            if info {
                try printJSON(blobJSON(reader.info))
                return
            }
            let (offset, count) = try range.map { try parseRange($0, size: reader.info.size) } ?? (0, reader.info.size)
            let fd = try openOutput(out)
            defer { if fd != 1 { close(fd) } }
            try reader.stream(offset: offset, count: count) { try writeAll(fd, $0) }
        }
    }

    struct Prove: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print a proof of a byte range (audited read): chunks, their keys and paths, the manifest's inclusion and key proofs, a signed checkpoint.",
            discussion: "`medledger verify-proof FILE --key VERIFIER` checks it offline and can write the proven bytes with --out.")
        @OptionGroup var ledger: PatientLedgerOptions
        @OptionGroup var target: BlobTarget
        @Option(help: "The version (default: the latest).") var version: UInt32?
        @Option(help: "Bytes A-B (inclusive), at most 16 MiB.") var range: String
        @OptionGroup var accessor: AccessorOptions

        func run() throws {
            let reader = try target.open(ledger.open(), version: version, accessor: accessor)
            let (offset, count) = try parseRange(range, size: reader.info.size)
            writeStdout(try reader.rangeProof(offset: offset, length: count).json + Data("\n".utf8))
        }
    }

    struct Collect: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "gc",
            abstract: "Free the space interrupted uploads left in blob segments; prints {\"segments_scanned\",\"segments_removed\",\"bytes_freed\"}.")
        @OptionGroup var ledger: PatientLedgerOptions

        func run() throws {
            let report = try ledger.open().collectBlobGarbage()
            try printJSON(["segments_scanned": report.segmentsScanned, "segments_removed": report.segmentsRemoved,
                           "bytes_freed": report.bytesFreed])
        }
    }
}

struct ImportDICOM: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import-dicom",
        abstract: "Store every DICOM file of a study folder as a blob plus an ImagingStudy record per study.",
        discussion: """
        Prints {"instances","bytes","studies":[{"study_uid","record","version","series","instances"}], \
        "failures":[{"file","error"}]}. Files that are not readable DICOM are listed in failures and the \
        rest are stored; the exit status is then 2.
        """)
    @OptionGroup var ledger: PatientLedgerOptions
    @Option(help: "The patient's external id.") var patient: String
    @Option(help: "Plaintext bytes per chunk.") var chunkSize: Int = PatientRecords.defaultBlobChunkSize
    @Argument(help: "The study folder (read recursively).") var folder: String

    func run() throws {
        let records = try ledger.open()
        var progress = Progress()
        let report = try records.importDICOM(patient: patient, folder: folder, chunkSize: chunkSize) { done, total, _ in
            progress.update(UInt64(done), total: UInt64(total), unit: "files")
        }
        progress.finish()
        try printJSON([
            "instances": report.instances, "bytes": report.bytes,
            "studies": report.studies.map {
                ["study_uid": $0.studyInstanceUID, "record": $0.recordId, "version": Int($0.version), "series": $0.series, "instances": $0.instances]
            },
            "failures": report.failures.map { ["file": $0.file, "error": $0.reason] },
        ])
        if !report.failures.isEmpty { throw ExitCode(ExitStatus.usage.rawValue) }
    }
}
