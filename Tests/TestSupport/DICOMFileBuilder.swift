import Foundation

/// Writes small DICOM Part 10 files the way PS3.10 lays them out, for tests and benchmarks.
public struct DICOMFileBuilder {
    public enum Syntax: String, Sendable {
        case explicitLittle = "1.2.840.10008.1.2.1"
        case implicitLittle = "1.2.840.10008.1.2"
        case explicitBig = "1.2.840.10008.1.2.2"
        case deflated = "1.2.840.10008.1.2.1.99"
    }

    public var study = "1.2.826.0.1.3680043.2.1125.1"
    public var series = "1.2.826.0.1.3680043.2.1125.1.1"
    public var instance = "1.2.826.0.1.3680043.2.1125.1.1.1"
    public var sopClass = "1.2.840.10008.5.1.4.1.1.2"  // CT Image Storage
    public var modality: String? = "CT"
    public var syntax = Syntax.explicitLittle
    public var pixels = 512
    /// A sequence of undefined length (with one item of undefined length) before the study UID.
    public var withSequence = true

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

    public init() {}

    public func bytes() -> [UInt8] {
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

