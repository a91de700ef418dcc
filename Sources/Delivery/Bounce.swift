// Non-delivery reports: a multipart/report (RFC 6522) with a message/delivery-status part
// (RFC 3464) and the returned headers, sent from the null reverse-path so it can never bounce
// back (RFC 5321 §4.5.5).

import MailCore

public struct FailedRecipient: Sendable {
    public var recipient: Mailbox
    public var reply: Reply
    public var remoteMTA: String?
}

public enum Bounce {
    /// `queueID` is the original message's; `reportID` the report's own (for its Message-ID).
    public static func report(hostname: String, queueID: QueueID, reportID: QueueID, arrival: Int64,
                              originalSender: Mailbox, failures: [FailedRecipient], originalMessage: [UInt8],
                              now: Int64) -> [UInt8] {
        let boundary = "\(queueID).\(now)/\(hostname)"
        var lines: [String] = [
            "From: Mail Delivery System <MAILER-DAEMON@\(hostname)>",
            "To: <\(originalSender)>",
            "Subject: Undelivered Mail Returned to Sender",
            "Date: \(MailDate.format(unixSeconds: now / 1000))",
            "Message-ID: <\(reportID)@\(hostname)>",
            "Auto-Submitted: auto-replied",
            "MIME-Version: 1.0",
            "Content-Type: multipart/report; report-type=delivery-status;",
            "\tboundary=\"\(boundary)\"",
            "",
            "This is a MIME-encapsulated message.",
            "",
            "--\(boundary)",
            "Content-Type: text/plain; charset=us-ascii",
            "",
            "This is the mail system at host \(hostname).",
            "",
            "I'm sorry to have to inform you that your message could not",
            "be delivered to one or more recipients.",
            "",
        ]
        for failure in failures {
            lines.append("<\(failure.recipient)>: \(printable(failure.reply.description))")
        }
        lines += ["", "--\(boundary)", "Content-Type: message/delivery-status", "",
                  "Reporting-MTA: dns; \(hostname)",
                  "X-Apus-Queue-ID: \(queueID)",
                  "Arrival-Date: \(MailDate.format(unixSeconds: arrival / 1000))"]
        for failure in failures {
            lines += ["", "Final-Recipient: rfc822; \(failure.recipient)",
                      "Action: failed",
                      "Status: \(failure.reply.enhanced ?? "5.0.0")"]
            if let relay = failure.remoteMTA {
                // RFC 3464 §2.3.5: the remote MTA's name; our log form is "host[ip]:port".
                let host = relay.split(separator: "[", maxSplits: 1).first.map(String.init) ?? relay
                lines.append("Remote-MTA: dns; \(host)")
                lines.append("Diagnostic-Code: smtp; \(printable(failure.reply.description))")
            } else {
                // Not a remote SMTP reply (DNS, local delivery, expiry): Postfix's X-Postfix style.
                lines.append("Diagnostic-Code: X-Apus; \(printable(failure.reply.lines.joined(separator: " ")))")
            }
        }
        lines += ["", "--\(boundary)", "Content-Type: text/rfc822-headers", ""]
        var out = Array(lines.joined(separator: "\r\n").utf8) + [13, 10]
        out += headerSection(of: originalMessage)
        out += Array("\r\n--\(boundary)--\r\n".utf8)
        return out
    }

    /// Remote reply text as it may appear in a report: printable US-ASCII only (RFC 3464
    /// §2.1.1), and short enough that no line passes 998 octets (RFC 5322 §2.1.1) — a hostile
    /// server's 4 MB or control-character reply must not become our bounce.
    static func printable(_ text: String, limit: Int = 700) -> String {
        var out = String(decoding: text.utf8.prefix(limit).map { $0 >= 0x20 && $0 < 0x7F ? $0 : UInt8(ascii: "?") },
                         as: UTF8.self)
        if text.utf8.count > limit { out += "..." }
        return out
    }

    /// The header section of a message (up to the first empty line), CRLF-terminated.
    static func headerSection(of message: [UInt8]) -> [UInt8] {
        var i = 0
        while i + 3 < message.count {
            if message[i] == 13 && message[i + 1] == 10 && message[i + 2] == 13 && message[i + 3] == 10 {
                return Array(message[0..<(i + 2)])
            }
            i += 1
        }
        return message.count <= 65536 ? message : Array(message[0..<65536])
    }
}
