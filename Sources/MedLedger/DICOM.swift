import Foundation
import LedgerCrypto
#if canImport(Glibc)
import Glibc
#endif

/// The few identifying attributes of a DICOM Part 10 file that an imaging index needs.
public struct DICOMHeader: Sendable, Hashable {
    /// (0020,000D)
    public let studyInstanceUID: String
    /// (0020,000E)
    public let seriesInstanceUID: String
    /// (0008,0018), or the file meta's (0002,0003)
    public let sopInstanceUID: String
    /// (0008,0016), or the file meta's (0002,0002)
    public let sopClassUID: String
    /// (0008,0060)
    public let modality: String
    /// (0002,0010)
    public let transferSyntaxUID: String
}

/// A minimal reader of DICOM Part 10 headers (PS3.10 section 7, PS3.5 section 7): the
/// 128-byte preamble, `DICM`, the explicit-VR little-endian file meta group, then the data set
/// in the transfer syntax the meta names (implicit or explicit VR, little or big endian),
/// skipping sequences of defined or undefined length, until the wanted tags are found. It
/// never reads pixel data and refuses anything malformed with a message naming the problem.
public enum DICOMReader {
    /// Bytes of a file ``parseHeader(_:)`` looks at (its headers must end within them).
    public static let headerWindow = 1 << 20

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// Reads the header of a Part 10 file from its first bytes (up to ``headerWindow``).
    /// - Throws: ``LedgerError`` `.invalidRecord` naming what is wrong.
    public static func parseHeader(_ bytes: [UInt8]) throws -> DICOMHeader {
        try bytes.withUnsafeBytes { try parseHeader($0) }
    }

    /// Reads the header of a Part 10 file from its first bytes (up to ``headerWindow``).
    public static func parseHeader(_ bytes: UnsafeRawBufferPointer) throws -> DICOMHeader {
        do {
            return try parse(bytes)
        } catch let failure as Failure {
            throw LedgerError(.invalidRecord, "not a readable DICOM file: \(failure.description)")
        }
    }

    private struct Cursor {
        let bytes: UnsafeRawBufferPointer
        var at: Int
        var bigEndian = false
        var explicitVR = true

        func need(_ n: Int) throws {
            guard n >= 0, at <= bytes.count, n <= bytes.count - at else { throw Failure(description: "truncated at byte \(at)") }
        }
        mutating func u16() throws -> UInt16 {
            try need(2)
            let v = bytes.loadUnaligned(fromByteOffset: at, as: UInt16.self)
            at += 2
            return bigEndian ? UInt16(bigEndian: v) : UInt16(littleEndian: v)
        }
        mutating func u32() throws -> UInt32 {
            try need(4)
            let v = bytes.loadUnaligned(fromByteOffset: at, as: UInt32.self)
            at += 4
            return bigEndian ? UInt32(bigEndian: v) : UInt32(littleEndian: v)
        }
        mutating func skip(_ n: Int) throws {
            try need(n)
            at += n
        }
    }

    static let undefinedLength: UInt32 = 0xFFFF_FFFF
    /// VRs whose explicit encoding has two reserved bytes and a 32-bit length (PS3.5 7.1.2).
    static let longVRs: Set<String> = ["OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"]

    /// One element header: tag, VR (explicit only) and value length.
    private static func element(_ c: inout Cursor) throws -> (group: UInt16, element: UInt16, vr: String?, length: UInt32) {
        let group = try c.u16(), element = try c.u16()
        if group == 0xFFFE { return (group, element, nil, try c.u32()) }  // item and delimiters: no VR
        guard c.explicitVR else { return (group, element, nil, try c.u32()) }
        try c.need(2)
        let vr = String(decoding: UnsafeRawBufferPointer(rebasing: c.bytes[c.at..<(c.at + 2)]), as: UTF8.self)
        guard vr.utf8.allSatisfy({ $0 >= 0x41 && $0 <= 0x5A }) else {
            throw Failure(description: "element (\(hex(group)),\(hex(element))) has no valid VR at byte \(c.at)")
        }
        c.at += 2
        if longVRs.contains(vr) {
            try c.skip(2)
            return (group, element, vr, try c.u32())
        }
        return (group, element, vr, UInt32(try c.u16()))
    }

    static func hex(_ v: UInt16) -> String {
        let s = String(v, radix: 16, uppercase: true)
        return String(repeating: "0", count: 4 - s.count) + s
    }

    /// Skips the items of a sequence of undefined length, up to its delimiter.
    private static func skipUndefinedSequence(_ c: inout Cursor, depth: Int) throws {
        guard depth < 16 else { throw Failure(description: "sequences nested too deep") }
        while true {
            let (group, element, _, length) = try Self.element(&c)
            guard group == 0xFFFE else { throw Failure(description: "expected an item at byte \(c.at - 8)") }
            if element == 0xE0DD { return }  // sequence delimitation
            guard element == 0xE000 else { throw Failure(description: "unexpected (FFFE,\(hex(element))) in a sequence") }
            if length != undefinedLength {
                try c.skip(Int(length))
                continue
            }
            // An item of undefined length: its elements, until the item delimiter.
            while true {
                let (g, e, _, n) = try Self.element(&c)
                if g == 0xFFFE && e == 0xE00D { break }
                if n == undefinedLength { try skipUndefinedSequence(&c, depth: depth + 1) } else { try c.skip(Int(n)) }
            }
        }
    }

    private static func text(_ c: Cursor, _ length: UInt32) throws -> String {
        try c.need(Int(length))
        let raw = UnsafeRawBufferPointer(rebasing: c.bytes[c.at..<(c.at + Int(length))])
        guard let s = String(validating: raw, as: UTF8.self) else { throw Failure(description: "a text value is not valid text") }
        return s.trimmingCharacters(in: CharacterSet(charactersIn: " \0"))
    }

    private static func parse(_ bytes: UnsafeRawBufferPointer) throws -> DICOMHeader {
        guard bytes.count >= 132, Array(bytes[128..<132]) == Array("DICM".utf8) else {
            throw Failure(description: "no DICM marker after the 128-byte preamble")
        }
        var c = Cursor(bytes: bytes, at: 132)
        var meta: [UInt16: String] = [:]
        // File meta information: group 0002, always explicit VR little endian.
        while c.at + 4 <= bytes.count, UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: c.at, as: UInt16.self)) == 0x0002 {
            let (_, element, _, length) = try Self.element(&c)
            guard length != undefinedLength else { throw Failure(description: "file meta element of undefined length") }
            if [0x0002, 0x0003, 0x0010].contains(element) { meta[element] = try text(c, length) }
            try c.skip(Int(length))
        }
        guard let syntax = meta[0x0010], !syntax.isEmpty else { throw Failure(description: "no transfer syntax (0002,0010) in the file meta") }
        switch syntax {
        case "1.2.840.10008.1.2": c.explicitVR = false
        case "1.2.840.10008.1.2.2": c.bigEndian = true
        case "1.2.840.10008.1.2.1.99": throw Failure(description: "deflated transfer syntax is not supported")
        default: break  // explicit VR little endian, and every encapsulated (compressed) syntax
        }
        var found: [UInt32: String] = [:]
        let wanted: Set<UInt32> = [0x0008_0016, 0x0008_0018, 0x0008_0060, 0x0020_000D, 0x0020_000E]
        while c.at < bytes.count {
            let (group, element, vr, length) = try Self.element(&c)
            let tag = UInt32(group) << 16 | UInt32(element)
            if tag >= 0x7FE0_0010 || tag > 0x0020_000E { break }  // past what we need; never read pixel data
            if length == undefinedLength {
                guard vr == nil || vr == "SQ" || vr == "UN" else { throw Failure(description: "undefined length for VR \(vr!)") }
                // A UN value of undefined length is encoded as implicit VR little endian
                // (PS3.5 6.2.2), whatever the file's transfer syntax.
                let (explicit, big) = (c.explicitVR, c.bigEndian)
                if vr == "UN" { (c.explicitVR, c.bigEndian) = (false, false) }
                try skipUndefinedSequence(&c, depth: 0)
                (c.explicitVR, c.bigEndian) = (explicit, big)
                continue
            }
            if wanted.contains(tag) { found[tag] = try text(c, length) }
            try c.skip(Int(length))
        }
        func uid(_ value: String?, _ name: String) throws -> String {
            guard let value, !value.isEmpty else { throw Failure(description: "no \(name)") }
            guard value.utf8.count <= 64, value.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2E }) else {
                throw Failure(description: "\(name) is not a UID")
            }
            return value
        }
        guard let modality = found[0x0008_0060], !modality.isEmpty, modality.utf8.count <= 16,
              modality.utf8.allSatisfy({ ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x20 || $0 == 0x5F }) else {
            throw Failure(description: "no valid Modality (0008,0060)")
        }
        return DICOMHeader(studyInstanceUID: try uid(found[0x0020_000D], "StudyInstanceUID (0020,000D)"),
                           seriesInstanceUID: try uid(found[0x0020_000E], "SeriesInstanceUID (0020,000E)"),
                           sopInstanceUID: try uid(found[0x0008_0018] ?? meta[0x0003], "SOPInstanceUID (0008,0018)"),
                           sopClassUID: try uid(found[0x0008_0016] ?? meta[0x0002], "SOPClassUID (0008,0016)"),
                           modality: modality, transferSyntaxUID: try uid(syntax, "TransferSyntaxUID (0002,0010)"))
    }
}

/// What ``PatientRecords/importDICOM(patient:folder:chunkSize:progress:)`` stored.
public struct DICOMImportReport: Sendable {
    /// One `ImagingStudy` index record per study found.
    public struct Study: Sendable {
        public let studyInstanceUID: String
        /// `imaging-study/<StudyInstanceUID>`
        public let recordId: String
        public let version: UInt32
        public let series: Int
        public let instances: Int
    }
    public struct Failure: Sendable {
        /// The file's path relative to the folder.
        public let file: String
        public let reason: String
    }
    public var studies: [Study] = []
    /// Files stored as blobs (`dicom/<SOPInstanceUID>`).
    public var instances = 0
    public var bytes: UInt64 = 0
    /// Files that were not stored, each with why; the others were.
    public var failures: [Failure] = []
}

/// What the import workers share, under a lock.
private final class ImportState: @unchecked Sendable {
    // Sendable: `lock` guards every field.
    private let lock = NSLock()
    private var _report = DICOMImportReport()
    private var _found: [(n: Int, header: DICOMHeader, blobId: String)] = []
    private var _error: (any Error)?
    private var done = 0
    private var claimed: [String: String] = [:]

    var report: DICOMImportReport { lock.withLock { _report } }
    var found: [(n: Int, header: DICOMHeader, blobId: String)] { lock.withLock { _found } }
    var error: (any Error)? { lock.withLock { _error } }

    /// Claims a blob id for `file`; returns the file that claimed it first, if another did.
    func claim(_ blobId: String, file: String) -> String? {
        lock.withLock {
            if let first = claimed[blobId] { return first }
            claimed[blobId] = file
            return nil
        }
    }

    func fail(_ error: any Error) { lock.withLock { if _error == nil { _error = error } } }
    func failed(_ failures: [DICOMImportReport.Failure]) { lock.withLock { _report.failures += failures } }
    func stored(_ items: [(Int, DICOMHeader, String, UInt64)]) {
        lock.withLock {
            for (n, header, blobId, size) in items {
                _found.append((n, header, blobId))
                _report.instances += 1
                _report.bytes += size
            }
        }
    }
    /// Counts a finished file and reports progress (serialized: callers may be on any worker).
    func progressed(_ report: (Int, UInt64) -> Void) {
        lock.withLock {
            done += 1
            report(done, _report.bytes)
        }
    }
}

extension PatientRecords {
    /// Plaintext bytes of imported files committed together (one fdatasync and one log
    /// commit per batch).
    public static let importBatchBytes: UInt64 = 64 << 20

    /// Imports a DICOM study folder (recursively, files in path order): each readable Part 10
    /// file becomes a blob `dicom/<SOPInstanceUID>` (media type `application/dicom`), and each
    /// study a FHIR R4 `ImagingStudy` record `imaging-study/<StudyInstanceUID>` listing its
    /// series and instances, each instance naming its blob. A file that is not readable DICOM
    /// is reported in ``DICOMImportReport/failures`` and the rest continue.
    ///
    /// An `ImagingStudy` record describes the instances of this import; importing more files
    /// of the same study later writes a new version listing those.
    public func importDICOM(patient: String, folder: String, chunkSize: Int = PatientRecords.defaultBlobChunkSize,
                            progress: ((_ filesDone: Int, _ filesTotal: Int, _ bytes: UInt64) -> Void)? = nil) throws -> DICOMImportReport {
        guard let walker = FileManager.default.enumerator(atPath: folder) else {
            throw LedgerError(.invalidArgument, "cannot read the folder \(folder)")
        }
        var files: [String] = []
        for case let name as String in walker {
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: folder + "/" + name, isDirectory: &isDirectory), !isDirectory.boolValue {
                files.append(name)
            }
        }
        files.sort()
        // Two workers (one per core), each with its own writer, segment and header window,
        // take alternate files: sealing, hashing and the copies into the page cache of one
        // file overlap those of the next. Each commits its batches on its own.
        let state = ImportState()
        let paths = files
        let workers = max(1, min(2, ProcessInfo.processInfo.activeProcessorCount, paths.count))
        nonisolated(unsafe) let progress = progress
        DispatchQueue.concurrentPerform(iterations: workers) { w in
            do {
                try importFiles(paths, worker: w, of: workers, patient: patient, folder: folder, chunkSize: chunkSize, state: state) {
                    progress?($0, paths.count, $1)
                }
            } catch {
                state.fail(error)
            }
        }
        if let error = state.error { throw error }
        var report = state.report
        report.failures.sort { $0.file < $1.file }
        let instances = state.found.sorted { $0.n < $1.n }.map { (header: $0.header, blobId: $0.blobId) }
        // One ImagingStudy per study, series and instances in file order.
        var studies: [String: [(DICOMHeader, String)]] = [:]
        var order: [String] = []
        for item in instances {
            if studies[item.header.studyInstanceUID] == nil { order.append(item.header.studyInstanceUID) }
            studies[item.header.studyInstanceUID, default: []].append(item)
        }
        var inputs: [RecordInput] = []
        for uid in order {
            inputs.append(RecordInput(patient: patient, recordId: "imaging-study/" + uid,
                                      content: Self.imagingStudy(patient: patient, studyUID: uid, instances: studies[uid]!)))
        }
        let stored = try putRecords(inputs)
        for (uid, info) in zip(order, stored) {
            let items = studies[uid]!
            report.studies.append(.init(studyInstanceUID: uid, recordId: info.recordId, version: info.version,
                                        series: Set(items.map(\.0.seriesInstanceUID)).count, instances: items.count))
        }
        return report
    }

    /// One import worker: files `worker`, `worker + workers`, … of `files`.
    private func importFiles(_ files: [String], worker: Int, of workers: Int, patient: String, folder: String, chunkSize: Int,
                             state: ImportState, progress: (Int, UInt64) -> Void) throws {
        let writer = try blobWriter(chunkSize: chunkSize)
        var window = [UInt8](repeating: 0, count: DICOMReader.headerWindow)
        defer { secureZero(&window) }
        var pending: [(n: Int, header: DICOMHeader, blobId: String, size: UInt64, name: String)] = []
        func commit() throws {
            do {
                try writer.commit()
                state.stored(pending.map { ($0.n, $0.header, $0.blobId, $0.size) })
            } catch let error as LedgerError where error.code == .conflict {
                // Another writer stored one of these blob versions first (the same instance
                // twice in the folder): this batch is not stored; the files are reported.
                state.failed(pending.map { DICOMImportReport.Failure(file: $0.name, reason: "not stored: \(error.message)") })
            }
            pending.removeAll()
        }
        for n in stride(from: worker, to: files.count, by: workers) {
            if state.error != nil { return }
            let name = files[n]
            defer { state.progressed(progress) }
            let fd = open(folder + "/" + name, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else {
                state.failed([.init(file: name, reason: "cannot open (errno \(errno))")])
                continue
            }
            defer { close(fd) }
            let got = window.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            let header: DICOMHeader
            do {
                guard got >= 0 else { throw LedgerError(.invalidRecord, "cannot read (errno \(errno))") }
                header = try window.withUnsafeBytes { try DICOMReader.parseHeader(UnsafeRawBufferPointer(rebasing: $0[0..<got])) }
            } catch let error as LedgerError {
                state.failed([.init(file: name, reason: error.message)])
                continue
            }
            let blobId = "dicom/" + header.sopInstanceUID
            // Each instance once per import, whichever worker meets it first; a copy is reported.
            if let first = state.claim(blobId, file: name) {
                state.failed([.init(file: name, reason: "same SOPInstanceUID as \(first); not stored twice")])
                continue
            }
            let upload = try writer.begin(patient: patient, blobId: blobId, mediaType: "application/dicom")
            do {
                // The header window already holds the file's start: store it, then the rest.
                try window.withUnsafeBytes { try upload.write(UnsafeRawBufferPointer(rebasing: $0[0..<got])) }
                try upload.write(fromFileDescriptor: fd)
                try upload.finish()
            } catch let error as LedgerError where error.code == .invalidArgument {
                // The source failed mid-file: its chunks stay unreferenced (garbage); go on.
                writer.abandonCurrent()
                state.failed([.init(file: name, reason: error.message)])
                continue
            } catch {
                writer.abandonCurrent()
                throw error
            }
            pending.append((n, header, blobId, upload.size, name))
            if writer.pendingBytes >= Self.importBatchBytes / UInt64(workers) { try commit() }
        }
        try commit()
    }

    /// A FHIR R4 ImagingStudy for the instances of one study.
    static func imagingStudy(patient: String, studyUID: String, instances: [(DICOMHeader, String)]) -> [UInt8] {
        func coding(_ modality: String) -> [String: Any] { ["system": "http://dicom.nema.org/resources/ontology/DCM", "code": modality] }
        var seriesOrder: [String] = []
        var bySeries: [String: [(DICOMHeader, String)]] = [:]
        for item in instances {
            if bySeries[item.0.seriesInstanceUID] == nil { seriesOrder.append(item.0.seriesInstanceUID) }
            bySeries[item.0.seriesInstanceUID, default: []].append(item)
        }
        let series: [[String: Any]] = seriesOrder.map { uid in
            let items = bySeries[uid]!
            return [
                "uid": uid, "modality": coding(items[0].0.modality), "numberOfInstances": items.count,
                "instance": items.map { header, blobId -> [String: Any] in
                    ["uid": header.sopInstanceUID, "sopClass": ["system": "urn:ietf:rfc:3986", "code": "urn:oid:" + header.sopClassUID],
                     "extension": [["url": "urn:medledger:blob", "valueString": blobId]]]
                },
            ]
        }
        let modalities = Array(Set(instances.map(\.0.modality))).sorted()
        let study: [String: Any] = [
            "resourceType": "ImagingStudy", "status": "available",
            "identifier": [["system": "urn:dicom:uid", "value": "urn:oid:" + studyUID]],
            "subject": ["reference": patient.contains("/") ? patient : "Patient/" + patient],
            "modality": modalities.map(coding), "numberOfSeries": seriesOrder.count, "numberOfInstances": instances.count,
            "series": series,
        ]
        return (try? JSONSerialization.data(withJSONObject: study, options: [.sortedKeys, .withoutEscapingSlashes])).map { [UInt8]($0) } ?? []
    }
}
