import Foundation
import Testing
import LMDBKit
import LedgerCrypto
import MedLedger

/// A full map or a full disk fails the append that hit it, cleanly, and leaves every
/// committed entry readable and verifiable; once there is room again, appends go on.
@Suite(.serialized) struct ResourceLimitTests {
    /// Appends 512-entry batches of 200-byte entries until one fails; returns the error.
    static func fillUntilFailure(_ ledger: Ledger, maxBatches: Int = 10_000) throws -> LedgerError? {
        for b in 0..<maxBatches {
            do {
                _ = try ledger.append((0..<512).map { i in
                    try LedgerEntry(set: i % 4 == 0 ? "k\(b)-\(i)" : "", payload: [UInt8](repeating: UInt8(truncatingIfNeeded: i), count: 200))
                })
            } catch let error as LedgerError {
                return error
            }
        }
        return nil
    }

    static func checkUsable(_ ledger: Ledger, size: UInt64) throws {
        #expect(try ledger.size == size)
        let last = try ledger.inclusionProof(index: size - 1, size: size)
        #expect(last.rootHash == (try ledger.checkpoint()).rootHash)
        let report = try ledger.verify()
        #expect(report.isValid, "\(report.problems.prefix(3))")
    }

    @Test func theMapGrowsToItsLimitThenAppendsFailCleanly() throws {
        let path = ledgerPath("mapfull")
        defer { try? FileManager.default.removeItem(atPath: path) }
        var options = Ledger.Options()
        options.durable = false
        options.initialMapSize = 1 << 20
        options.maximumMapSize = 8 << 20
        var ledger: Ledger? = try Ledger.create(at: path, origin: "limits.example/map", options: options).0
        let error = try #require(try Self.fillUntilFailure(ledger!))
        #expect(error.code == .storage)
        #expect((error.cause as? LMDBError)?.code == .mapFull, "\(error)")
        #expect(ledger!.environment.mapSize == 8 << 20)  // grew from 1 MiB by doubling
        let size = try ledger!.size
        #expect(size > 0 && size % 512 == 0)  // whole batches only
        try Self.checkUsable(ledger!, size: size)

        // With a larger limit, the same ledger takes more.
        ledger = nil
        options.maximumMapSize = 64 << 20
        let reopened = try Ledger(path: path, options: options)
        _ = try reopened.append([try LedgerEntry(set: "after", payload: Array("room again".utf8))])
        try Self.checkUsable(reopened, size: size + 1)
    }

    @Test func aFullDiskFailsTheAppendAndSpaceReturning() throws {
        // A small tmpfs stands in for the disk; it needs root and mount(8).
        let mountPoint = NSTemporaryDirectory() + "medledger-diskfull-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: mountPoint) }
        guard Self.run("/bin/mount", ["-t", "tmpfs", "-o", "size=3m", "tmpfs", mountPoint]) else {
            print("resource limits: cannot mount a tmpfs here (needs root); disk-full case not run")
            return
        }
        defer { _ = Self.run("/bin/umount", [mountPoint]) }
        let path = mountPoint + "/ledger"
        var options = Ledger.Options()
        options.initialMapSize = 1 << 20
        var ledger: Ledger? = try Ledger.create(at: path, origin: "limits.example/disk", options: options).0
        let error = try #require(try Self.fillUntilFailure(ledger!))
        #expect(error.code == .storage)
        #expect((error.cause as? LMDBError)?.code == .diskFull, "\(error)")
        let size = try ledger!.size
        #expect(size > 0 && size % 512 == 0)
        try Self.checkUsable(ledger!, size: size)

        // Space returns (the file system grows); the same ledger goes on, and after a reopen.
        #expect(Self.run("/bin/mount", ["-o", "remount,size=16m", mountPoint]))
        _ = try ledger!.append([try LedgerEntry(set: "after", payload: Array("room again".utf8))])
        try Self.checkUsable(ledger!, size: size + 1)
        ledger = nil
        try Self.checkUsable(try Ledger(path: path, options: options), size: size + 1)
    }

    static func run(_ tool: String, _ arguments: [String]) -> Bool {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool)
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return false }
        process.waitUntilExit()
        return process.terminationStatus == 0
    }
}
