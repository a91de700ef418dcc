// Queue identifiers: what a mail administrator greps the log for. Sixteen upper-case hex digits,
// time-ordered (so `ls` shows arrival order) with random low bits so two messages in the same
// microsecond never collide.

public struct QueueID: Sendable, Hashable, CustomStringConvertible, Comparable {
    public let value: String

    public init?(_ value: String) {
        guard value.utf8.count == 16,
              value.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x46) })
        else { return nil }
        self.value = value
    }

    /// microseconds since the epoch (44 bits) + 20 random bits, as 16 hex digits.
    public static func make(microseconds: UInt64, random: UInt64) -> QueueID {
        let n = (microseconds << 20) | (random & 0xFFFFF)
        var s = String(n, radix: 16, uppercase: true)
        while s.utf8.count < 16 { s = "0" + s }
        return QueueID(s)!
    }

    public var description: String { value }
    public static func < (a: QueueID, b: QueueID) -> Bool { a.value < b.value }
}
