import Foundation
import Testing
import LedgerCrypto
import MedLedger
import TestSupport

/// Writes small DICOM Part 10 files the way PS3.10 lays them out, for tests and benchmarks.
struct DICOMFileBuilder {
    enum Syntax: String {
        case explicitLittle = "1.2.840.10008.1.2.1"
        case implicitLittle = "1.2.840.10008.1.2"
        case explicitBig = "1.2.840.10008.1.2.2"
        case deflated = "1.2.840.10008.1.2.1.99"
    }

    var study = "1.2.826.0.1.3680043.2.1125.1"
    var series = "1.2.826.0.1.3680043.2.1125.1.1"
    var instance = "1.2.826.0.1.3680043.2.1125.1.1.1"
    var sopClass = "1.2.840.10008.5.1.4.1.1.2"  // CT Image Storage
    var modality: String? = "CT"
    var syntax = Syntax.explicitLittle
    var pixels = 512
    /// A sequence of undefined length (with one item of undefined length) before the study UID.
    var withSequence = true

    static func pad(_ s: String, _ with: UInt8) -> [UInt8] {
        var b = Array(s.utf8)
        if b.count % 2 == 1 { b.append(with) }
        return b
    }

    func element(_ group: UInt16, _ element: UInt16, _ vr: String, _ value: [UInt8], explicit: Bool, big: Bool) -> [UInt8] {
        func u16(_ v: UInt16) -> [UInt8] { big ? [UInt8(v >> 8), UInt8(v & 0xff)] : [UInt8(v & 0xff), UInt8(v >> 8)] }
        func u32(_ v: UInt32) -> [UInt8] { big ? u16(UInt16(v >> 16)) + u16(UInt16(v & 0xffff)) : u16(UInt16(v & 0xffff)) + u16(UInt16(v >> 16)) }
        var out = u16(group) + u16(element)
        if explicit {
            out += Array(vr.utf8)
            if ["OB", "OW", "SQ", "UN", "UT"].contains(vr) { out += [0, 0] + u32(UInt32(value.count)) } else { out += u16(UInt16(value.count)) }
        } else {
            out += u32(UInt32(value.count))
        }
        return out + value
    }

    func bytes() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 128) + Array("DICM".utf8)
        var meta: [UInt8] = []
        meta += element(0x0002, 0x0001, "OB", [0, 1], explicit: true, big: false)
        meta += element(0x0002, 0x0002, "UI", Self.pad(sopClass, 0), explicit: true, big: false)
        meta += element(0x0002, 0x0003, "UI", Self.pad(instance, 0), explicit: true, big: false)
        meta += element(0x0002, 0x0010, "UI", Self.pad(syntax.rawValue, 0), explicit: true, big: false)
        out += element(0x0002, 0x0000, "UL", [UInt8(meta.count & 0xff), UInt8(meta.count >> 8), 0, 0], explicit: true, big: false) + meta
        let explicit = syntax != .implicitLittle
        let big = syntax == .explicitBig
        func e(_ g: UInt16, _ el: UInt16, _ vr: String, _ v: [UInt8]) -> [UInt8] { element(g, el, vr, v, explicit: explicit, big: big) }
        out += e(0x0008, 0x0016, "UI", Self.pad(sopClass, 0))
        out += e(0x0008, 0x0018, "UI", Self.pad(instance, 0))
        if let modality { out += e(0x0008, 0x0060, "CS", Self.pad(modality, 0x20)) }
        if withSequence {
            // (0008,1115) Referenced Series Sequence, undefined length, one undefined-length item.
            let tagBytes: (UInt16, UInt16) -> [UInt8] = { g, el in big ? [UInt8(g >> 8), UInt8(g & 0xff), UInt8(el >> 8), UInt8(el & 0xff)]
                                                                         : [UInt8(g & 0xff), UInt8(g >> 8), UInt8(el & 0xff), UInt8(el >> 8)] }
            out += tagBytes(0x0008, 0x1115) + (explicit ? Array("SQ".utf8) + [0, 0] : []) + [0xff, 0xff, 0xff, 0xff]
            out += tagBytes(0xFFFE, 0xE000) + [0xff, 0xff, 0xff, 0xff]
            out += e(0x0020, 0x000E, "UI", Self.pad("9.9.9", 0))  // a nested series UID must not be taken for the top-level one
            out += tagBytes(0xFFFE, 0xE00D) + [0, 0, 0, 0]
            out += tagBytes(0xFFFE, 0xE0DD) + [0, 0, 0, 0]
        }
        out += e(0x0010, 0x0020, "LO", Self.pad("PAT-0001", 0x20))
        out += e(0x0020, 0x000D, "UI", Self.pad(study, 0))
        out += e(0x0020, 0x000E, "UI", Self.pad(series, 0))
        out += e(0x7FE0, 0x0010, "OW", [UInt8](repeating: 0x5A, count: pixels))
        return out
    }
}

@Suite struct DICOMTests {
    @Test func readsHeadersInEveryUncompressedSyntax() throws {
        for syntax in [DICOMFileBuilder.Syntax.explicitLittle, .implicitLittle, .explicitBig] {
            for withSequence in [true, false] {
                var builder = DICOMFileBuilder()
                builder.syntax = syntax
                builder.withSequence = withSequence
                let header = try DICOMReader.parseHeader(builder.bytes())
                #expect(header.studyInstanceUID == builder.study, "\(syntax)")
                #expect(header.seriesInstanceUID == builder.series, "\(syntax) sequence \(withSequence)")
                #expect(header.sopInstanceUID == builder.instance)
                #expect(header.sopClassUID == builder.sopClass)
                #expect(header.modality == "CT")
                #expect(header.transferSyntaxUID == syntax.rawValue)
            }
        }
    }

    @Test func refusesMalformedFilesWithClearErrors() throws {
        let good = DICOMFileBuilder().bytes()
        var noMarker = good
        noMarker[129] = 0x58
        var noModality = DICOMFileBuilder()
        noModality.modality = nil
        var deflated = DICOMFileBuilder()
        deflated.syntax = .deflated
        var badUID = DICOMFileBuilder()
        badUID.study = "1.2.x"
        var badVR = good
        badVR[good.count - 512 - 12 + 4] = 0x01  // the pixel data element's VR
        let cases: [(String, [UInt8], String)] = [
            ("empty", [], "DICM"), ("no marker", noMarker, "DICM"), ("preamble only", Array(good[0..<132]), "transfer syntax"),
            ("no modality", noModality.bytes(), "Modality"), ("deflated", deflated.bytes(), "deflated"),
            ("bad uid", badUID.bytes(), "StudyInstanceUID"), ("bad VR", badVR, "VR"),
        ]
        for (label, bytes, expected) in cases {
            do {
                _ = try DICOMReader.parseHeader(bytes)
                Issue.record("\(label): accepted")
            } catch let error as LedgerError {
                #expect(error.code == .invalidRecord, "\(label)")
                #expect(error.message.contains(expected), "\(label): \(error.message)")
            }
        }
        // Every truncation of a good header fails cleanly or yields the same header.
        let full = try DICOMReader.parseHeader(good)
        for n in stride(from: 0, to: good.count - 512, by: 1) {
            if let header = try? DICOMReader.parseHeader(Array(good[0..<n])) { #expect(header == full, "prefix \(n)") }
        }
        // Random bytes after a valid meta never crash the reader.
        var rng = SplitMix64(seed: 0xD1C0)
        for _ in 0..<2000 {
            var bytes = good
            for _ in 0..<4 { bytes[132 + Int(rng.next() % UInt64(bytes.count - 132))] = UInt8(truncatingIfNeeded: rng.next()) }
            _ = try? DICOMReader.parseHeader(bytes)
        }
    }

    @Test func importsAStudyFolderAndReportsBadFiles() throws {
        let f = try PatientFixture("dicom-import")
        try f.records.addPatient(externalId: "Patient/7")
        let folder = f.directory + ".study"
        try FileManager.default.createDirectory(atPath: folder + "/series2", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        var written: [String: [UInt8]] = [:]
        for i in 0..<6 {
            var builder = DICOMFileBuilder()
            builder.series = i < 4 ? "1.2.3.4.1" : "1.2.3.4.2"
            builder.instance = "1.2.3.4.\(i < 4 ? 1 : 2).\(i)"
            builder.modality = i < 4 ? "CT" : "SR"
            builder.pixels = 5000 + 1000 * i
            let name = (i < 4 ? "" : "series2/") + "IM\(i).dcm"
            written[builder.instance] = builder.bytes()
            try Data(written[builder.instance]!).write(to: URL(fileURLWithPath: folder + "/" + name))
        }
        try Data("not dicom".utf8).write(to: URL(fileURLWithPath: folder + "/README.txt"))
        try Data(DICOMFileBuilder().bytes()[0..<140]).write(to: URL(fileURLWithPath: folder + "/truncated.dcm"))
        let report = try f.records.importDICOM(patient: "Patient/7", folder: folder, chunkSize: 4096)
        #expect(report.instances == 6)
        #expect(report.failures.map(\.file).sorted() == ["README.txt", "truncated.dcm"])
        #expect(report.failures.allSatisfy { $0.reason.contains("DICOM") })
        #expect(report.studies.count == 1 && report.studies[0].series == 2 && report.studies[0].instances == 6)
        for (uid, bytes) in written {
            var back: [UInt8] = []
            try f.records.openBlob(patient: "Patient/7", blobId: "dicom/" + uid, as: .patient("Patient/7")).stream { back += $0 }
            #expect(back == bytes)
        }
        let record = try f.records.read(patient: "Patient/7", recordId: report.studies[0].recordId, as: .patient("Patient/7"))
        #expect(record.resourceType == "ImagingStudy")
        let study = try JSONSerialization.jsonObject(with: Data(record.content)) as! [String: Any]
        #expect(study["numberOfInstances"] as? Int == 6 && study["numberOfSeries"] as? Int == 2)
        let series = study["series"] as! [[String: Any]]
        #expect((series[1]["modality"] as? [String: Any])?["code"] as? String == "SR")
        let firstInstance = (series[0]["instance"] as! [[String: Any]])[0]
        #expect(((firstInstance["extension"] as! [[String: Any]])[0]["valueString"] as? String) == "dicom/1.2.3.4.1.0")
        let verification = try f.ledger.verify(VerificationOptions())
        #expect(verification.isValid, "\(verification.problems)")
    }
}
