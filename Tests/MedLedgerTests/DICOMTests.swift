import Foundation
import Testing
import LedgerCrypto
import TestSupport
import MedLedger

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

    /// A private UN element of undefined length is encoded as implicit VR little endian inside
    /// an explicit-VR file (PS3.5 6.2.2); the reader skips it and finds what follows.
    @Test func skipsUndefinedLengthUNInImplicitEncoding() throws {
        var builder = DICOMFileBuilder()
        builder.withSequence = false
        var bytes = builder.bytes()
        let patientId: [UInt8] = [0x10, 0x00, 0x20, 0x00, UInt8(ascii: "L"), UInt8(ascii: "O")]
        let at = (0..<(bytes.count - 6)).first { Array(bytes[$0..<($0 + 6)]) == patientId }!
        var un: [UInt8] = [0x09, 0x00, 0x10, 0x10] + Array("UN".utf8) + [0, 0, 0xff, 0xff, 0xff, 0xff]
        un += [0xfe, 0xff, 0x00, 0xe0, 0xff, 0xff, 0xff, 0xff]                   // item, undefined length
        un += [0x09, 0x00, 0x11, 0x10, 4, 0, 0, 0] + Array("ABCD".utf8)          // implicit: tag, u32 length
        un += [0xfe, 0xff, 0x0d, 0xe0, 0, 0, 0, 0, 0xfe, 0xff, 0xdd, 0xe0, 0, 0, 0, 0]
        bytes.insert(contentsOf: un, at: at)
        let header = try DICOMReader.parseHeader(bytes)
        #expect(header.studyInstanceUID == builder.study && header.seriesInstanceUID == builder.series)
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
        // A copy of one instance under another name is reported, not stored twice.
        try Data(written["1.2.3.4.1.0"]!).write(to: URL(fileURLWithPath: folder + "/series2/copy.dcm"))
        try Data(DICOMFileBuilder().bytes()[0..<140]).write(to: URL(fileURLWithPath: folder + "/truncated.dcm"))
        let report = try f.records.importDICOM(patient: "Patient/7", folder: folder, chunkSize: 4096)
        #expect(report.instances == 6)
        #expect(report.failures.count == 3)
        #expect(report.failures.filter { $0.reason.contains("DICOM") }.map(\.file).sorted() == ["README.txt", "truncated.dcm"])
        #expect(report.failures.filter { $0.reason.contains("SOPInstanceUID") }.count == 1)
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
