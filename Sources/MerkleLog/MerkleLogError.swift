/// An error from the log layer: bad arguments, malformed proofs or notes, or missing data.
///
/// Storage failures are rethrown as the storage's own error (``LMDBKit/LMDBError``), so callers
/// can tell "the disk failed" from "the request was wrong".
public struct MerkleLogError: Error, Hashable, CustomStringConvertible, Sendable {
    /// The class of failure.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let name: String
        private init(_ name: String) { self.name = name }
        public var description: String { name }
        /// An index or size outside the log (e.g. a proof for size 10 of a log of 5).
        public static let outOfRange = Code("outOfRange")
        /// A stored hash or entry the tree size promises is missing: the store is damaged.
        public static let missingData = Code("missingData")
        /// Text or bytes that do not parse (a checkpoint, a note, a key, a proof).
        public static let malformed = Code("malformed")
        /// A signature, proof or hash that does not verify.
        public static let verificationFailed = Code("verificationFailed")
        /// An entry larger than ``MerkleLog/maxEntrySize``.
        public static let entryTooLarge = Code("entryTooLarge")
    }

    public let code: Code
    public let message: String
    public let location: String

    public init(_ code: Code, _ message: String, file: String = #fileID, line: Int = #line) {
        self.code = code
        self.message = message
        self.location = "\(file):\(line)"
    }

    public var description: String { "\(code): \(message)" }

    public static func == (lhs: MerkleLogError, rhs: MerkleLogError) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(code) }

    @inline(never)
    static func outOfRange(_ message: String, file: String = #fileID, line: Int = #line) -> MerkleLogError {
        MerkleLogError(.outOfRange, message, file: file, line: line)
    }

    @inline(never)
    static func malformed(_ message: String, file: String = #fileID, line: Int = #line) -> MerkleLogError {
        MerkleLogError(.malformed, message, file: file, line: line)
    }

    @inline(never)
    static func missing(_ message: String, file: String = #fileID, line: Int = #line) -> MerkleLogError {
        MerkleLogError(.missingData, message, file: file, line: line)
    }
}
