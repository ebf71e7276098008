/// An error from the ledger engine.
///
/// Storage failures keep their ``LMDBKit/LMDBError`` as ``cause``; descriptions name the
/// operation and never include record contents or key material.
public struct LedgerError: Error, Hashable, CustomStringConvertible, Sendable {
    /// The class of failure.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let name: String
        private init(_ name: String) { self.name = name }
        public var description: String { name }
        /// No ledger at the given path.
        public static let ledgerNotFound = Code("ledgerNotFound")
        /// A ledger already exists at the path given to ``Ledger/create(at:origin:options:)``.
        public static let ledgerExists = Code("ledgerExists")
        /// An entry that violates the envelope of DESIGN.md section 2 (bad format byte, key too long…).
        public static let invalidEntry = Code("invalidEntry")
        /// A caller argument out of range or malformed.
        public static let invalidArgument = Code("invalidArgument")
        /// No entry at that index (or no such key).
        public static let notFound = Code("notFound")
        /// The signer key file is missing, unreadable or malformed.
        public static let keyFile = Code("keyFile")
        /// The underlying storage failed; see ``LedgerError/cause``.
        public static let storage = Code("storage")
        /// The master key file does not open this ledger's data keys.
        public static let wrongMasterKey = Code("wrongMasterKey")
        /// A patient with that id is already registered.
        public static let patientExists = Code("patientExists")
        /// No patient with that id is registered.
        public static let patientNotFound = Code("patientNotFound")
        /// No such record, or no such version of it.
        public static let recordNotFound = Code("recordNotFound")
        /// The patient was erased: their data can no longer be read.
        public static let erased = Code("erased")
        /// The accessor may not read that (no grant, expired, revoked, outside scope); the refusal was audited.
        public static let accessDenied = Code("accessDenied")
        /// A record that is not what its media type says (e.g. FHIR JSON without `resourceType`).
        public static let invalidRecord = Code("invalidRecord")
        /// Another writer changed the same record or patient first; retry.
        public static let conflict = Code("conflict")
        /// A grant's signature is missing or does not verify under the patient's key.
        public static let badSignature = Code("badSignature")
    }

    public let code: Code
    public let message: String
    /// The underlying error, when one caused this.
    public let cause: (any Error & Sendable)?
    public let location: String

    public init(_ code: Code, _ message: String, cause: (any Error & Sendable)? = nil, file: String = #fileID, line: Int = #line) {
        self.code = code
        self.message = message
        self.cause = cause
        self.location = "\(file):\(line)"
    }

    public var description: String {
        if let cause { return "\(message) (\(cause))" }
        return message
    }

    public static func == (lhs: LedgerError, rhs: LedgerError) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(code) }
}
