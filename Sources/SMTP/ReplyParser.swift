// Parses server replies on the client side (RFC 5321 §4.2): "250-first" … "250 last".
// A reply whose lines disagree on the code, or that is not three digits, is a protocol error.

import MailCore

public enum ReplyParseError: Error, Equatable, Sendable {
    case malformed(String)
}

public struct ReplyParser: Sendable {
    private var code: Int?
    private var lines: [String] = []
    private var bytes = 0

    /// A reply longer than this is a protocol error, not something to keep buffering: a
    /// hostile server could otherwise send "250-" lines for ever (Postfix caps replies too).
    public static let maximumLines = 200
    public static let maximumBytes = 65_536

    public init() {}

    /// Feeds one line (without CRLF). Returns the reply when its last line arrives.
    public mutating func feed(line bytes: [UInt8]) throws(ReplyParseError) -> Reply? {
        do {
            return try parse(bytes)
        } catch {
            // Start afresh: a reused parser must not carry half a bad reply into the next one.
            code = nil
            lines = []
            self.bytes = 0
            throw error
        }
    }

    private mutating func parse(_ bytes: [UInt8]) throws(ReplyParseError) -> Reply? {
        let text = String(decoding: bytes, as: UTF8.self)
        guard bytes.count >= 3, bytes[0...2].allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
              let value = Int(text.prefix(3)), value >= 200, value <= 599
        else { throw .malformed(text) }
        if let code, code != value { throw .malformed(text) }
        code = value
        let separator: UInt8 = bytes.count > 3 ? bytes[3] : UInt8(ascii: " ")
        guard separator == UInt8(ascii: " ") || separator == UInt8(ascii: "-") else { throw .malformed(text) }
        let rest = bytes.count > 4 ? String(decoding: bytes[4...], as: UTF8.self) : ""
        lines.append(rest)
        self.bytes += bytes.count
        if lines.count > ReplyParser.maximumLines || self.bytes > ReplyParser.maximumBytes {
            throw .malformed("reply longer than \(ReplyParser.maximumLines) lines or \(ReplyParser.maximumBytes) bytes")
        }
        guard separator == UInt8(ascii: " ") else { return nil }
        defer { self.code = nil; lines = []; self.bytes = 0 }
        // Split off an enhanced status code if the first line carries one (RFC 2034 §4).
        var enhanced: String?
        var texts = lines
        if let first = texts.first, let space = first.firstIndex(of: " ") ?? (first.isEmpty ? nil : first.endIndex) {
            let candidate = first[..<space]
            let parts = candidate.split(separator: ".", omittingEmptySubsequences: false)
            if parts.count == 3, parts.allSatisfy({ !$0.isEmpty && $0.allSatisfy(\.isNumber) }),
               parts[0] == String(value / 100) {
                enhanced = String(candidate)
                texts = texts.map { line in
                    line.hasPrefix(candidate + " ") ? String(line.dropFirst(candidate.count + 1))
                        : (line == candidate ? "" : line)
                }
            }
        }
        return Reply(value, enhanced, texts)
    }
}
