// SMTP replies (RFC 5321 §4.2) with enhanced status codes (RFC 3463, RFC 2034).
// A reply is a value; the connection loop turns it into bytes. Handlers never write.

public struct Reply: Sendable, Equatable, CustomStringConvertible {
    public var code: Int
    /// Enhanced status code such as "5.7.1"; nil for the greeting and EHLO replies.
    public var enhanced: String?
    public var lines: [String]

    public init(_ code: Int, _ enhanced: String?, _ lines: [String]) {
        self.code = code
        self.enhanced = enhanced
        self.lines = lines.isEmpty ? [""] : lines
    }

    public init(_ code: Int, _ enhanced: String?, _ text: String) {
        self.init(code, enhanced, [text])
    }

    public var isPositive: Bool { code >= 200 && code < 400 }
    public var isTransientFailure: Bool { code >= 400 && code < 500 }
    public var isPermanentFailure: Bool { code >= 500 }

    /// Wire form: every line but the last uses "code-", the last "code "; CRLF after each.
    /// Control characters in the text (an echoed client argument, say) become "?": a reply can
    /// never carry a line break the client would read as a second reply.
    public var wireBytes: [UInt8] {
        var out: [UInt8] = []
        for (index, line) in lines.enumerated() {
            let separator = index == lines.count - 1 ? " " : "-"
            var text = "\(code)\(separator)"
            if let enhanced { text += enhanced + " " }
            text += line
            out.append(contentsOf: text.utf8.map { $0 < 0x20 || $0 == 0x7F ? UInt8(ascii: "?") : $0 })
            out.append(13); out.append(10)
        }
        return out
    }

    /// One line for logs, e.g. "250 2.0.0 Ok: queued as ABC".
    public var description: String {
        var text = "\(code)"
        if let enhanced { text += " " + enhanced }
        return text + " " + lines.joined(separator: " ")
    }
}
