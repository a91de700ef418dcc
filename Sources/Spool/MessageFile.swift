// One queued message on disk: a short text header carrying the envelope, a blank line, then the
// message exactly as received (after DATA transparency was undone). Format in docs/spool.md.
//
//     APUS1
//     arrival 1764769283123           (Unix milliseconds)
//     sender alice@example.org        (empty after "sender" for the null reverse-path)
//     rcpt bob@example.net            (one line per recipient, in order; indexes start at 0)
//     client 127.0.0.1 helo.name
//     auth alice@example.org          (only when the client authenticated)
//     protocol ESMTPSA
//     <empty line>
//     <message bytes>

import MailCore

enum MessageFile {
    static let magic = "APUS1"

    static func header(envelope: Envelope, arrival: Int64) -> [UInt8] {
        var text = magic + "\n"
        text += "arrival \(arrival)\n"
        text += "sender \(envelope.sender)\n"
        for rcpt in envelope.recipients { text += "rcpt \(rcpt)\n" }
        text += "client \(sanitize(envelope.clientAddress)) \(sanitize(envelope.heloName))\n"
        if let user = envelope.authenticatedUser { text += "auth \(sanitize(user))\n" }
        text += "protocol \(sanitize(envelope.receivedProtocol))\n\n"
        return Array(text.utf8)
    }

    /// Control characters and spaces cannot reach the header (addresses were validated already;
    /// the HELO name was not).
    private static func sanitize(_ s: String) -> String {
        let cleaned = String(decoding: s.utf8.map { $0 < 0x21 || $0 == 0x7F ? UInt8(ascii: "?") : $0 }, as: UTF8.self)
        return cleaned.isEmpty ? "-" : cleaned
    }

    static func bodyOffset(_ bytes: [UInt8]) -> Int? {
        var i = 0
        while i + 1 < bytes.count {
            if bytes[i] == 10 && bytes[i + 1] == 10 { return i + 2 }
            i += 1
        }
        return nil
    }

    /// Parse errors are IOError with EINVAL; read errors keep their errno.
    static func readHeader(path: String) throws(IOError) -> (Envelope, Int64, Int) {
        // Only the envelope header: recovery must not read every queued message whole.
        guard let bytes = try FileIO.readPrefix(path, through: [10, 10]), let offset = bodyOffset(bytes) else {
            throw IOError(operation: "parse", path: path, code: 22)
        }
        let lines = String(decoding: bytes[0..<(offset - 2)], as: UTF8.self).split(separator: "\n")
        guard lines.first == Substring(magic) else { throw IOError(operation: "parse", path: path, code: 22) }
        var envelope = Envelope(sender: .null, recipients: [])
        var arrival: Int64 = 0
        for line in lines.dropFirst() {
            let parts = line.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: false)
            let key = parts[0]
            let value = parts.count > 1 ? String(parts[1]) : ""
            switch key {
            case "arrival": arrival = Int64(value) ?? 0
            case "sender":
                if !value.isEmpty {
                    guard let m = Mailbox(parsing: value) else { throw IOError(operation: "parse", path: path, code: 22) }
                    envelope.sender = .mailbox(m)
                }
            case "rcpt":
                guard let m = Mailbox(parsing: value) else { throw IOError(operation: "parse", path: path, code: 22) }
                envelope.recipients.append(m)
            case "client":
                let words = value.split(separator: " ", maxSplits: 1)
                envelope.clientAddress = words.first.map(String.init) ?? ""
                envelope.heloName = words.count > 1 ? String(words[1]) : ""
            case "auth": envelope.authenticatedUser = value
            case "protocol": envelope.receivedProtocol = value
            default: break
            }
        }
        guard !envelope.recipients.isEmpty else { throw IOError(operation: "parse", path: path, code: 22) }
        return (envelope, arrival, offset)
    }
}
