internal import CCrypto

/// An error from the cryptographic layer.
///
/// Descriptions name the operation and never include key material or plaintext.
public struct CryptoError: Error, Hashable, CustomStringConvertible, Sendable {
    /// The class of failure.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let name: String
        private init(_ name: String) { self.name = name }
        public var description: String { name }
        /// An input had the wrong length or shape (a key, a signature, a hex or base64 string).
        public static let invalidInput = Code("invalidInput")
        /// OpenSSL reported a failure.
        public static let libraryFailure = Code("libraryFailure")
        /// The random generator failed.
        public static let randomFailure = Code("randomFailure")
        /// Authentication failed (a tag or signature did not verify).
        public static let authenticationFailure = Code("authenticationFailure")
    }

    public let code: Code
    public let operation: String
    /// OpenSSL's queued error, when there was one.
    public let libraryReason: String?
    public let location: String

    public init(code: Code, operation: String, libraryReason: String? = nil, file: String = #fileID, line: Int = #line) {
        self.code = code
        self.operation = operation
        self.libraryReason = libraryReason
        self.location = "\(file):\(line)"
    }

    public var description: String {
        if let libraryReason { return "\(operation) failed: \(code) (\(libraryReason))" }
        return "\(operation) failed: \(code)"
    }

    public static func == (lhs: CryptoError, rhs: CryptoError) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(code) }

    /// Builds an error from OpenSSL's error queue, which it drains.
    @inline(never)
    static func openSSL(_ operation: String, file: String = #fileID, line: Int = #line) -> CryptoError {
        let packed = ERR_get_error()
        var reason: String?
        if packed != 0 {
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(packed, &buffer, buffer.count)
            reason = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        ERR_clear_error()
        return CryptoError(code: .libraryFailure, operation: operation, libraryReason: reason, file: file, line: line)
    }

    @inline(never)
    static func invalid(_ operation: String, file: String = #fileID, line: Int = #line) -> CryptoError {
        CryptoError(code: .invalidInput, operation: operation, file: file, line: line)
    }
}
