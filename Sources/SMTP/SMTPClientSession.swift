// The SMTP client dialogue for one delivery attempt to one host, without I/O (RFC 5321 §3.3, §4.1;
// STARTTLS RFC 3207; SIZE RFC 1870; 8BITMIME RFC 6152).
//
// It is fed whole replies and returns what to send next. Results are per recipient: a RCPT
// refusal affects only that recipient, and the final DATA reply applies to every recipient
// that was accepted (§4.2.5, §3.3). A reply that is neither 2xx nor 5xx is temporary.

import MailCore

public enum TLSPolicy: String, Sendable {
    /// Never start TLS.
    case none
    /// Opportunistic: STARTTLS when offered, no certificate check (RFC 7435).
    case may
    /// TLS is required; certificate not verified.
    case encrypt
    /// TLS required and the certificate must verify for the host name.
    case verify
}

public enum RecipientResult: Sendable, Equatable {
    case delivered(Reply)
    case deferred(Reply)
    case bounced(Reply)

    public var reply: Reply {
        switch self {
        case .delivered(let r), .deferred(let r), .bounced(let r): return r
        }
    }
}

public enum SMTPClientAction: Sendable, Equatable {
    /// Send this command line (CRLF is added by the driver).
    case send(String)
    /// The 220 to STARTTLS arrived: run the TLS handshake, then call `tlsEstablished()`.
    case startTLS
    /// 354 arrived: send the dot-stuffed message and its terminator, then wait for a reply.
    case sendMessage
    /// The attempt is over: one result per recipient, in envelope order. `hostFailed` means the
    /// host itself failed (greeting, EHLO, MAIL, TLS) so the next MX may be tried.
    case finished([RecipientResult], hostFailed: Bool)
}

public struct SMTPClientSession: Sendable {
    private enum Phase: Sendable, Equatable {
        case greeting, ehlo, helo, startTLS, mail, rcpt(Int), data, message, quit, done
    }

    public let heloName: String
    public let sender: ReversePath
    public let recipients: [Mailbox]
    public let messageSize: Int
    public let tlsPolicy: TLSPolicy
    public private(set) var extensions: Set<String> = []
    public private(set) var advertisedSize: Int?
    public private(set) var isTLS = false
    private var phase: Phase = .greeting
    private var results: [RecipientResult?]
    private var accepted: [Int] = []

    public init(heloName: String, sender: ReversePath, recipients: [Mailbox], messageSize: Int,
                tlsPolicy: TLSPolicy) {
        self.heloName = heloName
        self.sender = sender
        self.recipients = recipients
        self.messageSize = messageSize
        self.tlsPolicy = tlsPolicy
        self.results = Array(repeating: nil, count: recipients.count)
    }

    public mutating func tlsEstablished() -> SMTPClientAction {
        // RFC 3207 §4.2: discard what the server said before; ask again.
        isTLS = true
        extensions = []
        phase = .ehlo
        return .send("EHLO \(heloName)")
    }

    /// The connection broke or timed out mid-dialogue: everything not yet final is deferred.
    public mutating func connectionLost(_ why: String) -> SMTPClientAction {
        let reply = Reply(451, "4.4.2", why)
        let hostFailed = hostFailure || results.allSatisfy { $0 == nil }
        hostFailure = hostFailed
        phase = .done
        return .finished(results.map { $0 ?? .deferred(reply) }, hostFailed: hostFailed)
    }

    public mutating func receive(_ reply: Reply) -> SMTPClientAction {
        switch phase {
        case .greeting:
            guard reply.code == 220 else { return giveUpHost(reply) }
            phase = .ehlo
            return .send("EHLO \(heloName)")
        case .ehlo:
            if reply.code == 250 {
                parseExtensions(reply)
                if !isTLS && tlsPolicy != .none && extensions.contains("STARTTLS") {
                    phase = .startTLS
                    return .send("STARTTLS")
                }
                if !isTLS && (tlsPolicy == .encrypt || tlsPolicy == .verify) {
                    return giveUpHost(Reply(451, "4.7.5", "TLS is required but was not offered"))
                }
                return sendMail()
            }
            if reply.isPermanentFailure && !isTLS {
                phase = .helo
                return .send("HELO \(heloName)")
            }
            return giveUpHost(reply)
        case .helo:
            guard reply.code == 250 else { return giveUpHost(reply) }
            if tlsPolicy == .encrypt || tlsPolicy == .verify {
                return giveUpHost(Reply(451, "4.7.5", "TLS is required but was not offered"))
            }
            return sendMail()
        case .startTLS:
            if reply.code == 220 { return .startTLS }
            if tlsPolicy == .may { return sendMail() }
            return giveUpHost(reply)
        case .mail:
            if reply.isPermanentFailure {
                // The sender was refused: no other MX will think differently (Postfix bounces too).
                phase = .quit
                for i in 0..<recipients.count { results[i] = .bounced(reply) }
                return .send("QUIT")
            }
            guard reply.code == 250 else { return giveUpHost(reply) }
            phase = .rcpt(0)
            return .send("RCPT TO:<\(recipients[0])>")
        case .rcpt(let index):
            if reply.code == 250 || reply.code == 251 {
                accepted.append(index)
            } else {
                results[index] = reply.isPermanentFailure ? .bounced(reply) : .deferred(reply)
            }
            let next = index + 1
            if next < recipients.count {
                phase = .rcpt(next)
                return .send("RCPT TO:<\(recipients[next])>")
            }
            if accepted.isEmpty {
                phase = .quit
                return .send("QUIT")
            }
            phase = .data
            return .send("DATA")
        case .data:
            if reply.code == 354 {
                phase = .message
                return .sendMessage
            }
            for i in accepted { results[i] = reply.isPermanentFailure ? .bounced(reply) : .deferred(reply) }
            phase = .quit
            return .send("QUIT")
        case .message:
            for i in accepted {
                if reply.code == 250 { results[i] = .delivered(reply) }
                else { results[i] = reply.isPermanentFailure ? .bounced(reply) : .deferred(reply) }
            }
            phase = .quit
            return .send("QUIT")
        case .quit, .done:
            return finish()
        }
    }

    private mutating func sendMail() -> SMTPClientAction {
        if let advertisedSize, advertisedSize > 0, messageSize > advertisedSize {
            let reply = Reply(552, "5.3.4", "message size \(messageSize) exceeds the limit \(advertisedSize) of the remote server")
            phase = .quit
            for i in 0..<recipients.count { results[i] = .bounced(reply) }
            return .send("QUIT")
        }
        phase = .mail
        var command = "MAIL FROM:<\(sender)>"
        if extensions.contains("SIZE") { command += " SIZE=\(messageSize)" }
        if extensions.contains("8BITMIME") { command += " BODY=8BITMIME" }
        return .send(command)
    }

    /// The host failed before any recipient was settled (greeting, EHLO, TLS): defer all and let
    /// the caller try the next MX — a 5xx greeting from one MX says nothing about the others
    /// (RFC 5321 §5.1; Postfix smtp_skip_5xx_greeting).
    private mutating func giveUpHost(_ reply: Reply) -> SMTPClientAction {
        phase = .quit
        let temporary = reply.isPermanentFailure
            ? Reply(451, "4.4.0", "host refused: \(reply)") : reply
        for i in 0..<recipients.count where results[i] == nil { results[i] = .deferred(temporary) }
        hostFailure = true
        return .send("QUIT")
    }

    private var hostFailure = false
    public var failedAtHostLevel: Bool { hostFailure }

    /// The final action once QUIT has been answered or the peer closed after QUIT.
    public mutating func finish() -> SMTPClientAction {
        phase = .done
        return .finished(results.map { $0 ?? .deferred(Reply(451, "4.4.2", "lost connection")) },
                         hostFailed: hostFailure)
    }

    private mutating func parseExtensions(_ reply: Reply) {
        extensions = []
        for line in reply.lines.dropFirst() {
            let words = line.split(separator: " ")
            guard let keyword = words.first?.uppercased() else { continue }
            extensions.insert(keyword)
            if keyword == "SIZE", words.count > 1, let n = Int(words[1]) { advertisedSize = n }
        }
    }
}
