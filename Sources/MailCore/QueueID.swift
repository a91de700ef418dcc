// Queue identifiers: what a mail administrator greps the log for. Sixteen upper-case hex digits:
// 52 bits of microseconds since the epoch (good until the year 2112, so `ls` shows arrival order)
// and a 12-bit sequence number, so messages accepted in the same microsecond never collide.

public struct QueueID: Sendable, Hashable, CustomStringConvertible, Comparable {
    public let value: String

    public init?(_ value: String) {
        guard value.utf8.count == 16,
              value.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x46) })
        else { return nil }
        self.value = value
    }

    /// Microseconds since the epoch (52 bits) + a 12-bit sequence number, as 16 hex digits.
    public static func make(microseconds: UInt64, sequence: UInt64) -> QueueID {
        let n = (microseconds & 0xF_FFFF_FFFF_FFFF) << 12 | (sequence & 0xFFF)
        var s = String(n, radix: 16, uppercase: true)
        while s.utf8.count < 16 { s = "0" + s }
        return QueueID(s)!
    }

    public var description: String { value }
    public static func < (a: QueueID, b: QueueID) -> Bool { a.value < b.value }
}
