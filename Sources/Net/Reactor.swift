// The epoll reactor: one thread waits on epoll and resumes the task that waits for each file
// descriptor. Sessions read like sequential code (`try await connection.readLine()`) without a
// thread per connection.
//
// Each fd is armed EPOLLONESHOT for one waiter at a time, and the continuation is stored before
// the fd is armed, so an event can never arrive for a waiter that is not there yet. Deadlines are
// checked every tick (at most a second), which is precise enough for SMTP's minute timeouts.

import CApusShim
import Glibc
import MailCore

public enum NetError: Error, Sendable, Equatable, CustomStringConvertible {
    case timedOut
    case closed
    case system(String, Int32)
    case tls(String)
    case resolve(String)
    /// The peer broke the protocol (a malformed or endless reply).
    case protocolError(String)

    public var description: String {
        switch self {
        case .timedOut: return "timed out"
        case .closed: return "connection closed"
        case .system(let call, let code): return "\(call): \(String(cString: strerror(code)))"
        case .tls(let why): return "TLS: \(why)"
        case .resolve(let why): return why
        case .protocolError(let why): return "protocol error: \(why)"
        }
    }
}

public final class Reactor: @unchecked Sendable {
    public static let shared = Reactor()

    private struct Waiter {
        var continuation: CheckedContinuation<Void, any Error>
        var deadline: Int64?
    }

    private let epollFD: Int32
    private let wakeFD: Int32
    private let lock = Lock()
    private var waiters: [Int32: Waiter] = [:]
    private var registered: Set<Int32> = []

    private init() {
        epollFD = apus_epoll_create()
        wakeFD = apus_eventfd()
        precondition(epollFD >= 0 && wakeFD >= 0, "epoll/eventfd unavailable")
        _ = apus_epoll_ctl(epollFD, EPOLL_CTL_ADD, wakeFD, apus_epollin(), UInt64(UInt32(bitPattern: wakeFD)))
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        var thread = pthread_t()
        let unmanaged = Unmanaged.passRetained(self)
        pthread_create(&thread, &attributes, { raw in
            let reactor = Unmanaged<Reactor>.fromOpaque(raw!).takeRetainedValue()
            reactor.run()
            return nil
        }, unmanaged.toOpaque())
        pthread_detach(thread)
    }

    public enum Interest: Sendable { case read, write }

    /// Suspends until `fd` is readable or writable, or throws `NetError.timedOut` at `deadline`
    /// (monotonic milliseconds).
    public func wait(_ fd: Int32, for interest: Interest, deadline: Int64?) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let events = (interest == .read ? apus_epollin() | apus_epollrdhup() : apus_epollout())
                | apus_epolloneshot()
            let armed: Int32 = lock.withLock {
                waiters[fd] = Waiter(continuation: continuation, deadline: deadline)
                let op = registered.contains(fd) ? EPOLL_CTL_MOD : EPOLL_CTL_ADD
                let rc = apus_epoll_ctl(epollFD, op, fd, events, UInt64(UInt32(bitPattern: fd)))
                if rc == 0 { registered.insert(fd); return 0 }
                waiters[fd] = nil
                return errno
            }
            if armed != 0 { continuation.resume(throwing: NetError.system("epoll_ctl", armed)) }
        }
    }

    /// Forgets `fd` before it is closed (a closed fd number is soon reused).
    public func deregister(_ fd: Int32) {
        let waiter: Waiter? = lock.withLock {
            if registered.remove(fd) != nil { _ = apus_epoll_ctl(epollFD, EPOLL_CTL_DEL, fd, 0, 0) }
            return waiters.removeValue(forKey: fd)
        }
        waiter?.continuation.resume(throwing: NetError.closed)
    }

    private func run() {
        var datas = [UInt64](repeating: 0, count: 256)
        var events = [UInt32](repeating: 0, count: 256)
        var nextDeadlineScan = monotonicMilliseconds() + 1000
        while true {
            let n = apus_epoll_wait(epollFD, &datas, &events, 256, 1000)
            var ready: [CheckedContinuation<Void, any Error>] = []
            var expired: [CheckedContinuation<Void, any Error>] = []
            lock.withLock {
                if n > 0 {
                    for i in 0..<Int(n) {
                        let fd = Int32(truncatingIfNeeded: datas[i])
                        if fd == wakeFD { continue }
                        if let waiter = waiters.removeValue(forKey: fd) { ready.append(waiter.continuation) }
                    }
                }
                let now = monotonicMilliseconds()
                if now >= nextDeadlineScan {
                    nextDeadlineScan = now + 1000
                    for (fd, waiter) in waiters {
                        if let deadline = waiter.deadline, deadline <= now {
                            waiters[fd] = nil
                            expired.append(waiter.continuation)
                        }
                    }
                }
            }
            for continuation in ready { continuation.resume() }
            for continuation in expired { continuation.resume(throwing: NetError.timedOut) }
        }
    }
}
