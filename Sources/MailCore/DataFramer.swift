// Strict framing of the SMTP DATA phase (RFC 5321 §4.1.1.4, §4.5.2).
//
// Only <CRLF>.<CRLF> ends the data, and a lone CR or LF anywhere is recorded as an error
// instead of being treated as a line end: reading "\n.\n" or "\r.\r" as the end would let a
// sender smuggle a second message past us to the next hop (SMTP smuggling, CVE-2023-51766 class).
// The message is refused after the terminator, one consistent way. Leading dots are removed
// (transparency, §4.5.2). The size limit is enforced while reading: past it, bytes are counted
// and dropped, so memory stays bounded.

public struct DataFramer: Sendable {
    public enum Outcome: Equatable, Sendable {
        case complete
        /// Data ended but exceeded the limit (RFC 1870: 552 5.3.4).
        case tooLarge
        /// Data ended but contained a CR or LF that was not part of CRLF.
        case bareLineEnding
    }

    private enum State: Sendable {
        case lineStart, dotAtLineStart, dotCR, inLine, cr
    }

    public private(set) var message: [UInt8] = []
    public private(set) var octetsSeen = 0
    private let limit: Int
    private var state = State.lineStart
    private var bareLineEnding = false

    public init(sizeLimit: Int) {
        self.limit = sizeLimit
        message.reserveCapacity(min(sizeLimit, 16 * 1024))
    }

    /// Feeds bytes; returns the outcome and how many bytes were consumed once the terminator is
    /// seen (the rest belongs to the next command, e.g. a pipelined QUIT), or nil to ask for more.
    public mutating func feed(_ input: ArraySlice<UInt8>) -> (Outcome, consumed: Int)? {
        var index = input.startIndex
        while index < input.endIndex {
            let b = input[index]
            index += 1
            switch state {
            case .lineStart:
                if b == UInt8(ascii: ".") { state = .dotAtLineStart } else { inLine(b) }
            case .dotAtLineStart:
                // A leading dot followed by more text is stuffing: drop it (§4.5.2).
                if b == 13 { state = .dotCR } else { inLine(b) }
            case .dotCR:
                if b == 10 {
                    let outcome: Outcome = bareLineEnding ? .bareLineEnding
                        : (octetsSeen > limit ? .tooLarge : .complete)
                    return (outcome, index - input.startIndex)
                }
                bareLineEnding = true
                append(13)
                inLine(b)
            case .inLine:
                inLine(b)
            case .cr:
                if b == 10 {
                    append(13); append(10)
                    state = .lineStart
                } else {
                    bareLineEnding = true
                    append(13)
                    inLine(b)
                }
            }
        }
        return nil
    }

    private mutating func inLine(_ b: UInt8) {
        switch b {
        case 13:
            state = .cr
        case 10:
            // A bare LF is never a line end here, so "\n.\n" cannot end the data.
            bareLineEnding = true
            append(10)
            state = .inLine
        default:
            append(b)
            state = .inLine
        }
    }

    private mutating func append(_ b: UInt8) {
        octetsSeen += 1
        if octetsSeen <= limit { message.append(b) }
    }
}

/// Outbound transparency (RFC 5321 §4.5.2): double each leading dot, make every line end in
/// CRLF (a bare LF or CR becomes CRLF, so no next hop can be confused about where lines and the
/// message end), and append the terminator.
public enum DotStuffing {
    public static func encode(_ message: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(message.count + message.count / 64 + 8)
        var atLineStart = true
        var previousCR = false
        message.withUnsafeBufferPointer { input in
            for b in input {
                if previousCR {
                    previousCR = false
                    out.append(10)
                    atLineStart = true
                    if b == 10 { continue }
                }
                if b == 13 { out.append(13); previousCR = true; continue }
                if b == 10 { out.append(13); out.append(10); atLineStart = true; continue }
                if atLineStart && b == UInt8(ascii: ".") { out.append(UInt8(ascii: ".")) }
                atLineStart = false
                out.append(b)
            }
        }
        if previousCR { out.append(10); atLineStart = true }
        if !atLineStart { out.append(13); out.append(10) }
        out.append(contentsOf: [UInt8(ascii: "."), 13, 10])
        return out
    }
}
