import ArgumentParser
import Foundation
import LedgerCrypto
import MedLedger
#if canImport(Glibc)
import Glibc
#endif

struct Append: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Append one entry (payload from FILE or stdin), or one entry per line with --lines.",
        discussion: """
        One entry prints {"index","leaf_hash","tree_size"}. With --lines, each line of FILE \
        (without its newline) becomes the payload of one unkeyed set entry (with --keys, \
        key<TAB>payload makes one keyed set entry), committed in batches; prints \
        {"count","first_index","tree_size"}.
        """)

    @OptionGroup var location: LedgerLocation

    @Option(help: "The entry's key (UTF-8, at most 1024 bytes). Empty: the entry touches no key.")
    var key: String?

    @Flag(help: "Make a delete entry for --key.")
    var delete = false

    @Option(help: "Append each line of this file as one entry.")
    var lines: String?

    @Option(help: "Entries per committed batch with --lines.")
    var batch: Int = 10_000

    @Flag(help: "With --lines: each line is key<TAB>payload and makes one keyed set entry.")
    var keys = false

    @Argument(help: "File holding the payload; stdin when absent or '-'.")
    var file: String?

    func validate() throws {
        if lines != nil && (key != nil || delete || file != nil) {
            throw ValidationError("--lines cannot be combined with --key, --delete or a payload file")
        }
        if delete && key == nil { throw ValidationError("--delete needs --key") }
        if keys && lines == nil { throw ValidationError("--keys goes with --lines") }
        if batch < 1 || batch > 1_000_000 { throw ValidationError("--batch must be between 1 and 1000000") }
        if let key, key.utf8.count > LedgerEntry.maxKeyLength {
            throw ValidationError("--key is longer than \(LedgerEntry.maxKeyLength) bytes")
        }
    }

    func run() throws {
        let ledger = try Ledger(path: location.directory)
        if let lines {
            try appendLines(ledger, path: lines)
            return
        }
        let payload = try readInput(file, limit: 64 << 20)
        let entry = try LedgerEntry(operation: delete ? .delete : .set, key: key ?? "", payload: [UInt8](payload))
        let index = try ledger.append([entry])
        let (_, leafHash) = try ledger.rawEntry(at: index)
        try printJSON(["index": index, "leaf_hash": leafHash.hex, "tree_size": index + 1])
    }

    /// Streams FILE in 1 MiB reads, packing envelopes for a batch into one buffer.
    private func appendLines(_ ledger: Ledger, path: String) throws {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw CLIError(.usage, "cannot read \(path)") }
        defer { close(fd) }
        var st = stat()
        let totalBytes: UInt64? = fstat(fd, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG ? UInt64(st.st_size) : nil

        var packed: [UInt8] = []          // envelopes of the pending batch, back to back
        var ends: [Int] = []              // end offset of each envelope in `packed`
        packed.reserveCapacity(1 << 22)
        ends.reserveCapacity(batch)
        var pendingLine: [UInt8] = []
        var firstIndex: UInt64? = nil
        var count: UInt64 = 0
        var bytesRead: UInt64 = 0
        var progress = Progress()
        var chunk = [UInt8](repeating: 0, count: 1 << 20)

        func addLine(_ line: UnsafeRawBufferPointer) throws {
            guard line.count + 4 <= 64 << 20 else { throw CLIError(.usage, "line \(count + 1) is longer than 64 MiB") }
            var keyLength = 0
            var payload = line
            if keys {
                guard let tab = line.firstIndex(of: 0x09) else {
                    throw CLIError(.usage, "line \(count + UInt64(ends.count) + 1) has no TAB between key and payload")
                }
                keyLength = tab
                guard keyLength >= 1, keyLength <= LedgerEntry.maxKeyLength else {
                    throw CLIError(.usage, "line \(count + UInt64(ends.count) + 1) has a key of \(keyLength) bytes (1 to 1024 allowed)")
                }
                payload = UnsafeRawBufferPointer(rebasing: line[(tab + 1)...])
            }
            packed.append(LedgerEntry.formatVersion)
            packed.append(LedgerEntry.Operation.set.rawValue)
            packed.append(UInt8(keyLength >> 8))
            packed.append(UInt8(keyLength & 0xff))
            if keyLength > 0 { packed.append(contentsOf: line[0..<keyLength]) }
            packed.append(contentsOf: payload)
            ends.append(packed.count)
            if ends.count == batch { try flush() }
        }

        func flush() throws {
            guard !ends.isEmpty else { return }
            let first = try packed.withUnsafeBytes { all in
                try ends.withUnsafeBufferPointer { try ledger.appendPacked(all, ends: $0) }
            }
            if firstIndex == nil { firstIndex = first }
            count += UInt64(ends.count)
            packed.removeAll(keepingCapacity: true)
            ends.removeAll(keepingCapacity: true)
            progress.update(bytesRead, total: totalBytes, unit: "bytes")
        }

        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 { throw CLIError(.usage, "read error on \(path)") }
            if n == 0 { break }
            bytesRead += UInt64(n)
            try chunk.withUnsafeBytes { raw in
                let buffer = UnsafeRawBufferPointer(rebasing: raw[0..<n])
                var start = 0
                while let offset = memchr(buffer.baseAddress! + start, 0x0A, n - start) {
                    let end = buffer.baseAddress!.distance(to: UnsafeRawPointer(offset))
                    if pendingLine.isEmpty {
                        try addLine(UnsafeRawBufferPointer(rebasing: buffer[start..<end]))
                    } else {
                        pendingLine.append(contentsOf: buffer[start..<end])
                        try pendingLine.withUnsafeBytes { try addLine($0) }
                        pendingLine.removeAll(keepingCapacity: true)
                    }
                    start = end + 1
                }
                pendingLine.append(contentsOf: buffer[start..<n])
            }
        }
        if !pendingLine.isEmpty { try pendingLine.withUnsafeBytes { try addLine($0) } }
        try flush()
        progress.finish()
        let size = try ledger.size
        try printJSON(["first_index": firstIndex ?? size, "count": count, "tree_size": size])
    }
}
