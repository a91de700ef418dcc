// Input buffering and framing for line protocols (SMTP commands, POP3 commands, SMTP replies).
// Bytes go in as they arrive; complete lines come out. A line longer than the limit is reported
// once and its remainder skipped, so a hostile peer cannot make us buffer without bound.

public enum LineResult: Equatable, Sendable {
    /// A complete line without its terminator.
    case line([UInt8])
    /// The line exceeded the limit; its bytes up to the next LF were discarded.
    case tooLong
    /// No complete line is buffered yet.
    case needMore
}

public struct LineBuffer: Sendable {
    public private(set) var bytes: [UInt8] = []
    private var start = 0
    private var discardingLongLine = false
    private var scanned = 0

    public init() {}

    public var isEmpty: Bool { start >= bytes.count }
    public var count: Int { bytes.count - start }

    public mutating func append(_ data: [UInt8]) {
        compactIfUseful()
        bytes.append(contentsOf: data)
    }

    public mutating func append(_ data: ArraySlice<UInt8>) {
        compactIfUseful()
        bytes.append(contentsOf: data)
    }

    public mutating func append(_ data: UnsafeRawBufferPointer) {
        compactIfUseful()
        bytes.append(contentsOf: data)
    }

    /// Removes and returns everything buffered (DATA framing and TLS hand-over use this).
    public mutating func takeAll() -> ArraySlice<UInt8> {
        let rest = bytes[start...]
        bytes = []
        start = 0
        scanned = 0
        return rest
    }

    /// Drops everything buffered: after STARTTLS, bytes sent before the handshake must not be
    /// read as commands (the CVE-2011-0411 command injection).
    public mutating func discardAll() {
        bytes = []
        start = 0
        scanned = 0
        discardingLongLine = false
    }

    /// Next line ending in LF (CR before it stripped). Command lines accept a bare LF as Postfix
    /// does; DATA is framed separately and strictly by `DataFramer`.
    public mutating func nextLine(limit: Int) -> LineResult {
        // Bytes before `scanned` are known to hold no LF: a line trickling in byte by byte is
        // searched once, not once per byte.
        let from = max(start, scanned)
        let searchEnd = min(bytes.count, start + limit + 2)
        if from < searchEnd, let lf = bytes[from..<searchEnd].firstIndex(of: 10) {
            var end = lf
            if end > start && bytes[end - 1] == 13 { end -= 1 }
            let line = Array(bytes[start..<end])
            start = lf + 1
            if discardingLongLine {
                discardingLongLine = false
                return .tooLong
            }
            return line.count > limit ? .tooLong : .line(line)
        }
        scanned = max(from, searchEnd)
        guard bytes.count - start > limit + 1 else { return .needMore }
        // Too long. If its LF is already buffered, skip just past it, so the lines that follow
        // (pipelined commands) are still read.
        if let lf = bytes[searchEnd...].firstIndex(of: 10) {
            start = lf + 1
            discardingLongLine = false
            return .tooLong
        }
        // Otherwise drop what we have and keep dropping until the next LF.
        discardingLongLine = true
        start = bytes.count
        compactIfUseful()
        return .needMore
    }

    private mutating func compactIfUseful() {
        if start > 0 && (start >= bytes.count || start > 4096) {
            bytes.removeFirst(start)
            scanned = max(0, scanned - start)
            start = 0
        }
    }
}
