import Foundation
import Testing
import LMDBKit

func temporaryDirectory(_ name: String = "lmdb") -> String {
    let path = NSTemporaryDirectory() + "medledger-test-\(name)-\(UUID().uuidString)"
    return path
}

@Suite struct EnvironmentTests {
    @Test func putGetCursorAndReopen() throws {
        let path = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        do {
            let env = try Environment(path: path)
            let db = try #require(try env.openDatabase("numbers"))
            try env.write { txn in
                for i in UInt64(0)..<100 { try txn.put(db, key: i, value: Array("v\(i)".utf8), flags: .append) }
            }
            #expect(try env.read { try $0.value(db, key: UInt64(42)) } == Array("v42".utf8))
            #expect(try env.read { try $0.value(db, key: UInt64(100)) } == nil)
            let keys: [UInt64] = try env.read { txn in
                try txn.withCursor(db) { cursor in
                    var out: [UInt64] = []
                    var more = try cursor.seek(atOrAfter: UInt64(95))
                    while more {
                        cursor.withCurrent { key, _ in out.append(UInt64(bigEndianBytes: key)!) }
                        more = try cursor.next()
                    }
                    return out
                }
            }
            #expect(keys == [95, 96, 97, 98, 99])
        }
        let reopened = try Environment(path: path)
        let db = try #require(try reopened.openDatabase("numbers", create: false))
        #expect(try reopened.read { try $0.count(db) } == 100)
    }

    @Test func appendOutOfOrderIsRefusedAndNothingCommits() throws {
        let path = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let env = try Environment(path: path)
        let db = try #require(try env.openDatabase("log"))
        try env.write { txn in try txn.put(db, key: UInt64(10), value: [1], flags: .append) }
        #expect(throws: LMDBError(code: .keyExists, operation: "")) {
            try env.write { txn in
                try txn.put(db, key: UInt64(11), value: [2], flags: .append)
                try txn.put(db, key: UInt64(5), value: [3], flags: .append)
            }
        }
        #expect(try env.read { try $0.count(db) } == 1, "an aborted write leaves nothing behind")
    }

    @Test func fullMapGrowsAndRetries() throws {
        let path = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        var options = Environment.Options()
        options.mapSize = 64 * 1024
        options.durable = false
        let env = try Environment(path: path, options: options)
        let db = try #require(try env.openDatabase("big"))
        let value = [UInt8](repeating: 0xab, count: 4000)
        var runs = 0
        try env.write { txn in
            runs += 1
            for i in UInt64(0)..<2000 { try txn.put(db, key: i, value: value, flags: .append) }
        }
        #expect(runs > 1, "the write was retried after growing")
        #expect(env.mapSize > 64 * 1024 * 64)
        #expect(try env.read { try $0.count(db) } == 2000)
    }

    @Test func mapFullPastMaximumIsReported() throws {
        let path = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        var options = Environment.Options()
        options.mapSize = 64 * 1024
        options.maxMapSize = 256 * 1024
        options.durable = false
        let env = try Environment(path: path, options: options)
        let db = try #require(try env.openDatabase("big"))
        try env.write { txn in try txn.put(db, key: UInt64(0), value: [1]) }
        #expect(throws: LMDBError(code: .mapFull, operation: "")) {
            try env.write { txn in
                for i in UInt64(1)..<1000 { try txn.put(db, key: i, value: [UInt8](repeating: 1, count: 4000)) }
            }
        }
        // The environment stays usable and the earlier commit intact.
        #expect(try env.read { try $0.value(db, key: UInt64(0)) } == [1])
        try env.write { txn in try txn.put(db, key: UInt64(1), value: [2]) }
    }

    @Test func secondOpenInOneProcessIsRefused() throws {
        let path = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let first = try Environment(path: path)
        #expect(throws: LMDBError(code: .busy, operation: "")) { try Environment(path: path) }
        var options = Environment.Options()
        options.readOnly = true
        #expect(throws: LMDBError(code: .busy, operation: "")) { try Environment(path: path, options: options) }
        _ = first
    }

    @Test func closingReleasesThePath() throws {
        let path = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        for _ in 0..<3 { _ = try Environment(path: path).openDatabase("x") }
    }

    @Test func readOnlyOpenOfMissingEnvironmentIsClear() throws {
        var options = Environment.Options()
        options.readOnly = true
        let path = temporaryDirectory("missing")
        #expect(throws: LMDBError(code: .fileNotFound, operation: "")) { try Environment(path: path, options: options) }
        #expect(!FileManager.default.fileExists(atPath: path), "a read-only open creates nothing")
    }

    @Test func readOnlyEnvironmentRefusesWrites() throws {
        let path = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        _ = try Environment(path: path).openDatabase("x")
        var options = Environment.Options()
        options.readOnly = true
        let env = try Environment(path: path, options: options)
        #expect(try env.openDatabase("x", create: false) != nil)
        #expect(try env.openDatabase("absent", create: false) == nil)
        #expect(throws: LMDBError(code: .permissionDenied, operation: "")) { try env.write { _ in } }
    }

    @Test func garbageFileIsRejected() throws {
        let path = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        try Data(repeating: 0x5a, count: 64 * 1024).write(to: URL(fileURLWithPath: path + "/data.mdb"))
        #expect(throws: LMDBError.self) { try Environment(path: path) }
    }

    @Test func readersSeeCommittedSnapshotsWhileWriting() throws {
        let path = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        var options = Environment.Options()
        options.durable = false
        let env = try Environment(path: path, options: options)
        let db = try #require(try env.openDatabase("kv"))
        try env.write { txn in try txn.put(db, key: "n", value: UInt64(0)) }
        // A reader's snapshot does not change while a write commits in between.
        try env.read { txn in
            let before = try txn.value(db, key: "n")
            let done = DispatchSemaphore(value: 0)
            Thread.detachNewThread {
                try? env.write { w in try w.put(db, key: "n", value: UInt64(1)) }
                done.signal()
            }
            done.wait()
            #expect(try txn.value(db, key: "n") == before)
        }
        #expect(try env.read { try $0.value(db, key: "n") } == UInt64(1).bigEndianBytes)
    }

    /// The two transactions of a pair see one snapshot even while another thread commits
    /// without pause, and each can be read on a thread of its own.
    @Test func aReadPairSharesOneSnapshotAcrossThreads() throws {
        let path = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: path) }
        var options = Environment.Options()
        options.durable = false
        let env = try Environment(path: path, options: options)
        let db = try #require(try env.openDatabase("kv"))
        try env.write { txn in try txn.put(db, key: "n", value: UInt64(0)) }
        let stop = LockedFlag()
        let writerDone = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            var n: UInt64 = 0
            while !stop.isSet {
                n += 1
                try? env.write { w in try w.put(db, key: "n", value: n) }
            }
            writerDone.signal()
        }
        defer { stop.set(); writerDone.wait() }
        var paired = 0, distinctValues = Set<[UInt8]>()
        // Until the pairs have seen several of the writer's states (a loaded machine may start
        // the writer late), within a bound.
        for _ in 0..<20_000 where distinctValues.count < 3 {
            let outcome = try env.readPair { first, second -> ([UInt8]?, [UInt8]?, Bool) in
                // Each view is used by one thread, and both uses end before the pair does.
                nonisolated(unsafe) let views = (first.unsafeView, second.unsafeView)
                let seen = LockedBox<[[UInt8]?]>([nil, nil])
                DispatchQueue.concurrentPerform(iterations: 2) { i in
                    let value = try? (i == 0 ? views.0 : views.1).value(db, key: "n")
                    seen.update { $0[i] = value }
                }
                return (seen.value[0], seen.value[1], views.0.snapshotID == views.1.snapshotID)
            }
            guard let (a, b, sameID) = outcome else { continue }
            paired += 1
            #expect(sameID && a != nil && a == b)
            if let a { distinctValues.insert(a) }
        }
        #expect(paired > 0)
        // The writer did commit in between: the pairs saw several states.
        #expect(distinctValues.count > 1)
    }
}

extension UInt64 {
    var bigEndianBytes: [UInt8] { withUnsafeBytes(of: self.bigEndian) { Array($0) } }
}

/// A flag one thread sets and another polls.
final class LockedFlag: @unchecked Sendable {
    // Sendable: `lock` guards `flag`.
    private let lock = NSLock()
    private var flag = false
    var isSet: Bool { lock.withLock { flag } }
    func set() { lock.withLock { flag = true } }
}

/// A value two threads update under a lock.
final class LockedBox<T>: @unchecked Sendable {
    // Sendable: `lock` guards `stored`.
    private let lock = NSLock()
    private var stored: T
    init(_ value: T) { stored = value }
    var value: T { lock.withLock { stored } }
    func update(_ change: (inout T) -> Void) { lock.withLock { change(&stored) } }
}
