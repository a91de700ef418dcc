import Dispatch
import Glibc
import MailCore

/// Runs blocking work (fsync, SASL checks against sasldb, directory scans, DNS) off the
/// cooperative thread pool and resumes the caller when it is done.
///
/// A pool of serial Dispatch queues, used round robin: serial queues get overcommit threads, so
/// blocked work never starves the rest the way a concurrent queue (sized by CPU count) would.
/// DNS has a pool of its own, so a resolver outage cannot hold up disk syncs and logins.
public final class BlockingPool: Sendable {
    private let queues: [DispatchQueue]
    private let turn = LockedValue(0)

    public init(label: String, width: Int) {
        queues = (0..<width).map { DispatchQueue(label: "\(label).\($0)") }
    }

    private func nextQueue() -> DispatchQueue {
        queues[turn.withLock { value in
            value = (value + 1) % queues.count
            return value
        }]
    }

    public func run<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        let queue = nextQueue()
        return try await withCheckedThrowingContinuation { continuation in
            queue.async {
                do { continuation.resume(returning: try work()) } catch { continuation.resume(throwing: error) }
            }
        }
    }

    public func run<T: Sendable>(_ work: @escaping @Sendable () -> T) async -> T {
        let queue = nextQueue()
        return await withCheckedContinuation { continuation in
            queue.async { continuation.resume(returning: work()) }
        }
    }
}

public enum Blocking {
    /// Disk and SASL work.
    public static let pool = BlockingPool(label: "apus.blocking", width: 16)
    /// DNS lookups.
    public static let dns = BlockingPool(label: "apus.dns", width: 8)

    public static func run<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await pool.run(work)
    }

    public static func run<T: Sendable>(_ work: @escaping @Sendable () -> T) async -> T {
        await pool.run(work)
    }
}

/// Monotonic milliseconds, for timeouts.
public func monotonicMilliseconds() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
}
