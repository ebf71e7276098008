/// A value that can lend its bytes as an LMDB key or value.
///
/// `UInt64` lends its 8 big-endian bytes, so integer keys sort numerically and can be
/// written with ``Transaction/PutFlags/append``.
public protocol LMDBBytes {
    /// Calls `body` with the bytes; the pointer is valid only inside `body`.
    func withLMDBBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R
}

extension Array: LMDBBytes where Element == UInt8 {
    @inlinable
    public func withLMDBBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withUnsafeBytes(body)
    }
}

extension ArraySlice: LMDBBytes where Element == UInt8 {
    @inlinable
    public func withLMDBBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withUnsafeBytes(body)
    }
}

extension String: LMDBBytes {
    @inlinable
    public func withLMDBBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        var copy = self
        return try copy.withUTF8 { try body(UnsafeRawBufferPointer($0)) }
    }
}

extension UInt64: LMDBBytes {
    @inlinable
    public func withLMDBBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        var bigEndian = self.bigEndian
        return try withUnsafeBytes(of: &bigEndian, body)
    }
}

extension UnsafeRawBufferPointer: LMDBBytes {
    @inlinable
    public func withLMDBBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(self)
    }
}

extension UInt64 {
    /// Reads a big-endian `UInt64` from exactly 8 bytes; `nil` for any other size.
    @inlinable
    public init?(bigEndianBytes bytes: UnsafeRawBufferPointer) {
        guard bytes.count == 8 else { return nil }
        self = UInt64(bigEndian: bytes.loadUnaligned(as: UInt64.self))
    }
}
