import Foundation

/// A flag one thread sets and others poll.
public final class ManagedAtomicFlag: @unchecked Sendable {
    // Sendable: `lock` guards `value`.
    private let lock = NSLock()
    private var value = false
    public init() {}
    public func set() { lock.withLock { value = true } }
    public var isSet: Bool { lock.withLock { value } }
}

/// Failures collected from several threads.
public final class FailureLog: @unchecked Sendable {
    // Sendable: `lock` guards `items`.
    private let lock = NSLock()
    private var items: [String] = []
    public init() {}
    public func add(_ item: String) { lock.withLock { items.append(item) } }
    public var all: [String] { lock.withLock { items } }
}
