import ArgumentParser
import Foundation
import LMDBKit
import LedgerCrypto
import MedLedger
import MerkleLog
import SparseMerkle
#if canImport(Glibc)
import Glibc
#endif

/// Exit codes of DESIGN.md section 6.
enum ExitStatus: Int32 {
    case success = 0
    case verificationFailed = 1
    case usage = 2
    case notFound = 3
    case storage = 4
    /// The ledger refused: access denied, patient erased, wrong master key.
    case refused = 5
}

/// An error the CLI reports with a chosen exit status.
struct CLIError: Error, CustomStringConvertible {
    let status: ExitStatus
    let description: String
    init(_ status: ExitStatus, _ description: String) {
        self.status = status
        self.description = description
    }
}

/// Maps any error to an exit status and a one-line message.
func classify(_ error: any Error) -> (ExitStatus, String) {
    switch error {
    case let error as CLIError:
        return (error.status, error.description)
    case let error as LedgerError:
        switch error.code {
        case .ledgerNotFound, .notFound, .patientNotFound, .recordNotFound: return (.notFound, error.description)
        case .invalidArgument, .invalidEntry, .invalidRecord, .patientExists, .badSignature, .keyFile: return (.usage, error.description)
        case .accessDenied, .erased, .wrongMasterKey: return (.refused, error.description)
        default: return (.storage, error.description)
        }
    case let error as MerkleLogError:
        switch error.code {
        case .verificationFailed: return (.verificationFailed, error.description)
        case .outOfRange: return (.notFound, error.description)
        case .malformed, .entryTooLarge: return (.usage, error.description)
        default: return (.storage, error.description)
        }
    case let error as SparseMerkleError:
        switch error.code {
        case .verificationFailed: return (.verificationFailed, error.description)
        case .malformed: return (.usage, error.description)
        case .unknownVersion: return (.notFound, error.description)
        default: return (.storage, error.description)
        }
    case let error as LMDBError:
        return (error.code == .fileNotFound ? .notFound : .storage, error.description)
    default:
        return (.storage, String(describing: error))
    }
}

/// Writes JSON with sorted keys and a trailing newline to stdout.
func printJSON(_ object: [String: Any]) throws {
    let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
    writeStdout(data)
    writeStdout(Data("\n".utf8))
}

func writeStdout(_ data: Data) {
    FileHandle.standardOutput.write(data)
}

func writeStderr(_ text: String) {
    FileHandle.standardError.write(Data(text.utf8))
}

/// Reads a whole file, or stdin for `-` or `nil`, refusing more than `limit` bytes.
func readInput(_ path: String?, limit: Int) throws -> Data {
    let handle: FileHandle
    if let path, path != "-" {
        guard let h = FileHandle(forReadingAtPath: path) else { throw CLIError(.usage, "cannot read \(path)") }
        handle = h
    } else {
        handle = FileHandle.standardInput
    }
    var data = Data()
    while true {
        let chunk = handle.readData(ofLength: 1 << 20)
        if chunk.isEmpty { break }
        data.append(chunk)
        if data.count > limit { throw CLIError(.usage, "input larger than \(limit) bytes") }
    }
    return data
}

/// A verifier key given inline (`name+id+key`) or as a path to a file holding it.
func loadVerifier(_ text: String) throws -> NoteVerifier {
    var keyText = text
    if !text.contains("+"), FileManager.default.fileExists(atPath: text) {
        keyText = (try? String(contentsOfFile: text, encoding: .utf8)) ?? text
    } else if FileManager.default.fileExists(atPath: text), let contents = try? String(contentsOfFile: text, encoding: .utf8) {
        keyText = contents
    }
    do { return try NoteVerifier(parsing: keyText) } catch { throw CLIError(.usage, "invalid verifier key: \(error)") }
}

/// Shows batch progress on stderr when it is a terminal.
struct Progress {
    let enabled = isatty(2) == 1
    var lastPrint = Date.distantPast

    mutating func update(_ done: UInt64, total: UInt64?, unit: String) {
        guard enabled else { return }
        let now = Date()
        guard now.timeIntervalSince(lastPrint) > 0.2 else { return }
        lastPrint = now
        if let total, total > 0 {
            writeStderr("\r\(done)/\(total) \(unit) (\(done * 100 / total)%)")
        } else {
            writeStderr("\r\(done) \(unit)")
        }
    }

    func finish() {
        if enabled { writeStderr("\n") }
    }
}
