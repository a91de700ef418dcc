// One line per event on stderr (journald captures it), in the field style mail administrators
// grep for: "QUEUEID: to=<…>, relay=…, delay=…, dsn=…, status=…".

import Glibc

public enum Log {
    nonisolated(unsafe) public static var program = "apusd"

    /// Read once: a syscall per log line adds up at thousands of lines a second.
    private static let processID = getpid()

    /// Longest message text kept in one line (bytes).
    public static let maximumLength = 2048

    public static func info(_ message: String) { emit(message) }
    public static func warning(_ message: String) { emit("warning: " + message) }
    public static func error(_ message: String) { emit("error: " + message) }

    private static func emit(_ message: String) {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var t = ts.tv_sec
        var parts = tm()
        gmtime_r(&t, &parts)
        func pad(_ n: Int32, _ width: Int = 2) -> String {
            let s = String(n)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        let stamp = "\(parts.tm_year + 1900)-\(pad(parts.tm_mon + 1))-\(pad(parts.tm_mday))T"
            + "\(pad(parts.tm_hour)):\(pad(parts.tm_min)):\(pad(parts.tm_sec)).\(pad(Int32(ts.tv_nsec / 1_000_000), 3))Z"
        // Never let a peer's bytes forge a line or reach a terminal: control bytes become \xHH.
        var clean: [UInt8] = []
        clean.reserveCapacity(min(message.utf8.count, maximumLength + 16))
        let hex = Array("0123456789abcdef".utf8)
        // A peer's text can be huge (a 64 KB reply): one log line stays readable.
        for b in message.utf8.prefix(maximumLength) {
            if b < 0x20 || b >= 0x7F {
                clean += [UInt8(ascii: "\\"), UInt8(ascii: "x"), hex[Int(b >> 4)], hex[Int(b & 15)]]
            } else {
                clean.append(b)
            }
        }
        if message.utf8.count > maximumLength { clean += Array("...".utf8) }
        let line = Array("\(stamp) \(program)[\(processID)]: ".utf8) + clean + [10]
        line.withUnsafeBytes { _ = write(2, $0.baseAddress, $0.count) }
    }
}

extension QueueID {
    /// A fresh queue id from the wall clock and a process-wide sequence number. Never the same
    /// twice in one process; across restarts the clock has moved on.
    public static func next() -> QueueID {
        queueIDState.withLock {
            var ts = timespec()
            clock_gettime(CLOCK_REALTIME, &ts)
            var micros = UInt64(ts.tv_sec) * 1_000_000 + UInt64(ts.tv_nsec / 1000)
            if micros < $0.micros { micros = $0.micros }  // the clock stepped back
            if micros == $0.micros {
                $0.sequence += 1
                if $0.sequence > 0xFFF { micros += 1; $0.sequence = 0 }  // 4096 in one µs: borrow the next
            } else {
                $0.sequence = 0
            }
            $0.micros = micros
            return make(microseconds: micros, sequence: $0.sequence)
        }
    }
}

private struct QueueIDState { var micros: UInt64 = 0; var sequence: UInt64 = 0 }
private let queueIDState = LockedValue(QueueIDState())

/// A value behind a lock.
public final class LockedValue<Value>: @unchecked Sendable {  // `value` guarded by `lock`
    private let lock = Lock()
    private var value: Value
    public init(_ value: Value) { self.value = value }
    public func withLock<T>(_ body: (inout Value) -> T) -> T { lock.withLock { body(&value) } }
}

/// Milliseconds since the Unix epoch.
public func unixMilliseconds() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
}
