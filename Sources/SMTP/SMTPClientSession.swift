// The SMTP client dialogue for one message to one host, without I/O (RFC 5321 §3.3, §4.1;
// PIPELINING RFC 2920; STARTTLS RFC 3207; SIZE RFC 1870; 8BITMIME RFC 6152).
//
// It is fed whole replies and returns what to send next. Results are per recipient: a RCPT
// refusal affects only that recipient, and the final DATA reply applies to every recipient that
// was accepted (§3.3). A reply that is neither 2xx nor 5xx is temporary. With PIPELINING, MAIL,
// every RCPT and DATA go out as one group and their replies are matched in order (RFC 2920
// §3.1). After a finished transaction the connection can be handed back for the next message
// to the same host instead of QUIT (connection caching, as Postfix's smtp(8) does).

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
    /// Send these command lines together (CRLF is added by the driver), then read replies.
    case send([String])
    /// The 220 to STARTTLS arrived: run the TLS handshake, then call `tlsEstablished()`.
    case startTLS
    /// 354 arrived: send the dot-stuffed message and its terminator, then wait for a reply.
    case sendMessage
    /// Nothing to send; read the next reply (more replies of a pipelined group are due).
    case awaitReply
    /// The attempt is over: one result per recipient, in envelope order. `hostFailed`: the host
    /// itself failed (greeting, EHLO, MAIL, TLS) so the next MX may be tried. `reusable`: the
    /// transaction ended cleanly and the connection may carry another message.
    case finished([RecipientResult], hostFailed: Bool, reusable: Bool)
}

/// What a cached connection remembers of its host's EHLO.
public struct SMTPServerTraits: Sendable, Equatable {
    public var extensions: Set<String>
    public var advertisedSize: Int?
    public var isTLS: Bool
}

public struct SMTPClientSession: Sendable {
    private enum Phase: Sendable, Equatable {
        case greeting, ehlo, helo, startTLS, transaction, emptyData, message, quit, done
    }

    /// A reply still due in the current transaction.
    private enum Expected: Sendable, Equatable {
        case mail, rcpt(Int), data
    }

    public let heloName: String
    public let sender: ReversePath
    public let recipients: [Mailbox]
    public let messageSize: Int
    public let tlsPolicy: TLSPolicy
    /// Hand the connection back after the transaction instead of sending QUIT.
    public let allowReuse: Bool
    public private(set) var traits = SMTPServerTraits(extensions: [], advertisedSize: nil, isTLS: false)
    /// Whether any reply arrived on this connection during this session (a cached connection
    /// the server already closed fails before its first reply).
    public private(set) var receivedReply = false
    private var phase: Phase = .greeting
    private var expected: [Expected] = []
    private var results: [RecipientResult?]
    private var accepted: [Int] = []
    /// MAIL was refused: the rest of a pipelined group's replies are read and ignored.
    private var transactionAborted = false
    private var hostFailure = false

    public init(heloName: String, sender: ReversePath, recipients: [Mailbox], messageSize: Int,
                tlsPolicy: TLSPolicy, allowReuse: Bool = false) {
        self.heloName = heloName
        self.sender = sender
        self.recipients = recipients
        self.messageSize = messageSize
        self.tlsPolicy = tlsPolicy
        self.allowReuse = allowReuse
        self.results = Array(repeating: nil, count: recipients.count)
    }

    public var isTLS: Bool { traits.isTLS }
    public var extensions: Set<String> { traits.extensions }

    /// A connection that already carried a message: skip greeting and EHLO and start the
    /// transaction now.
    public mutating func resume(on known: SMTPServerTraits) -> SMTPClientAction {
        traits = known
        return startTransaction()
    }

    public mutating func tlsEstablished() -> SMTPClientAction {
        // RFC 3207 §4.2: discard what the server said before; ask again.
        traits.isTLS = true
        traits.extensions = []
        phase = .ehlo
        return .send(["EHLO \(heloName)"])
    }

    /// The connection broke or timed out mid-dialogue: everything not yet final is deferred.
    public mutating func connectionLost(_ why: String) -> SMTPClientAction {
        let reply = Reply(451, "4.4.2", why)
        let hostFailed = hostFailure || results.allSatisfy { $0 == nil }
        hostFailure = hostFailed
        phase = .done
        return .finished(results.map { $0 ?? .deferred(reply) }, hostFailed: hostFailed, reusable: false)
    }

    public mutating func receive(_ reply: Reply) -> SMTPClientAction {
        receivedReply = true
        switch phase {
        case .greeting:
            guard reply.code == 220 else { return giveUpHost(reply) }
            phase = .ehlo
            return .send(["EHLO \(heloName)"])
        case .ehlo:
            if reply.code == 250 {
                parseExtensions(reply)
                if !isTLS && tlsPolicy != .none && extensions.contains("STARTTLS") {
                    phase = .startTLS
                    return .send(["STARTTLS"])
                }
                if !isTLS && (tlsPolicy == .encrypt || tlsPolicy == .verify) {
                    return giveUpHost(Reply(451, "4.7.5", "TLS is required but was not offered"))
                }
                return startTransaction()
            }
            if reply.isPermanentFailure && !isTLS {
                phase = .helo
                return .send(["HELO \(heloName)"])
            }
            return giveUpHost(reply)
        case .helo:
            guard reply.code == 250 else { return giveUpHost(reply) }
            if tlsPolicy == .encrypt || tlsPolicy == .verify {
                return giveUpHost(Reply(451, "4.7.5", "TLS is required but was not offered"))
            }
            return startTransaction()
        case .startTLS:
            if reply.code == 220 { return .startTLS }
            if tlsPolicy == .may { return startTransaction() }
            return giveUpHost(reply)
        case .transaction:
            return transactionReply(reply)
        case .emptyData:
            // The reply to the empty message we had to send after an unexpected 354.
            return endTransaction(reusable: false)
        case .message:
            for i in accepted {
                if reply.code == 250 { results[i] = .delivered(reply) }
                else { results[i] = reply.isPermanentFailure ? .bounced(reply) : .deferred(reply) }
            }
            return endTransaction(reusable: reply.code != 421)
        case .quit, .done:
            return finish()
        }
    }

    /// The final action once QUIT has been answered or the peer closed after QUIT.
    public mutating func finish() -> SMTPClientAction {
        phase = .done
        return .finished(results.map { $0 ?? .deferred(Reply(451, "4.4.2", "lost connection")) },
                         hostFailed: hostFailure, reusable: false)
    }

    // MARK: the transaction

    private var pipelining: Bool { extensions.contains("PIPELINING") }

    private mutating func startTransaction() -> SMTPClientAction {
        if let limit = traits.advertisedSize, limit > 0, messageSize > limit {
            let reply = Reply(552, "5.3.4", "message size \(messageSize) exceeds the limit \(limit) of the remote server")
            for i in 0..<recipients.count { results[i] = .bounced(reply) }
            return endTransaction(reusable: false)
        }
        phase = .transaction
        var mail = "MAIL FROM:<\(sender)>"
        if extensions.contains("SIZE") { mail += " SIZE=\(messageSize)" }
        if extensions.contains("8BITMIME") { mail += " BODY=8BITMIME" }
        guard pipelining else {
            expected = [.mail]
            return .send([mail])
        }
        expected = [.mail] + recipients.indices.map { .rcpt($0) } + [.data]
        return .send([mail] + recipients.map { "RCPT TO:<\($0)>" } + ["DATA"])
    }

    private mutating func transactionReply(_ reply: Reply) -> SMTPClientAction {
        guard !expected.isEmpty else { return endTransaction(reusable: false) }
        if reply.code / 100 == 3 && expected.first != .data {
            // An intermediate reply to MAIL or RCPT: the server is out of step (perhaps
            // waiting for data). Nothing sent now could be trusted; hang up, retry later.
            return protocolViolation("unexpected \(reply.code) reply to \(expected.first == .mail ? "MAIL" : "RCPT")")
        }
        switch expected.removeFirst() {
        case .mail:
            if reply.code != 250 {
                transactionAborted = true
                if reply.isPermanentFailure {
                    // The sender was refused: no other MX will think differently (Postfix bounces too).
                    for i in 0..<recipients.count { results[i] = .bounced(reply) }
                } else {
                    markHostFailed(reply)
                }
            }
            if !pipelining {
                if transactionAborted { return endTransaction(reusable: false) }
                expected = [.rcpt(0)]
                return .send(["RCPT TO:<\(recipients[0])>"])
            }
            return .awaitReply
        case .rcpt(let index):
            if !transactionAborted {
                if reply.code == 250 || reply.code == 251 {
                    accepted.append(index)
                } else {
                    results[index] = reply.isPermanentFailure ? .bounced(reply) : .deferred(reply)
                }
            }
            if !pipelining {
                let next = index + 1
                if next < recipients.count {
                    expected = [.rcpt(next)]
                    return .send(["RCPT TO:<\(recipients[next])>"])
                }
                if accepted.isEmpty { return endTransaction(reusable: false) }
                expected = [.data]
                return .send(["DATA"])
            }
            return .awaitReply
        case .data:
            if reply.code == 354 {
                if transactionAborted || accepted.isEmpty {
                    // RFC 2920 §3.1: a server should have refused DATA here; end the empty
                    // message so the dialogue stays in step, and deliver nothing.
                    phase = .emptyData
                    return .send(["."])
                }
                phase = .message
                return .sendMessage
            }
            if !transactionAborted {
                for i in accepted { results[i] = reply.isPermanentFailure ? .bounced(reply) : .deferred(reply) }
            }
            return endTransaction(reusable: false)
        }
    }

    /// The transaction is over: hand the connection back, or say QUIT.
    private mutating func endTransaction(reusable: Bool) -> SMTPClientAction {
        expected = []
        if reusable && allowReuse && !hostFailure {
            phase = .done
            return .finished(results.map { $0 ?? .deferred(Reply(451, "4.4.2", "no reply")) },
                             hostFailed: false, reusable: true)
        }
        phase = .quit
        return .send(["QUIT"])
    }

    private mutating func protocolViolation(_ why: String) -> SMTPClientAction {
        markHostFailed(Reply(451, "4.5.0", "protocol error: \(why)"))
        phase = .done
        return .finished(results.map { $0 ?? .deferred(Reply(451, "4.5.0", why)) }, hostFailed: true, reusable: false)
    }

    private mutating func markHostFailed(_ reply: Reply) {
        let temporary = reply.isPermanentFailure ? Reply(451, "4.4.0", "host refused: \(reply)") : reply
        for i in 0..<recipients.count where results[i] == nil { results[i] = .deferred(temporary) }
        hostFailure = true
    }

    /// The host failed before any recipient was settled (greeting, EHLO, TLS, MAIL 4xx): defer
    /// all and let the caller try the next MX — a 5xx greeting from one MX says nothing about
    /// the others (RFC 5321 §5.1; Postfix smtp_skip_5xx_greeting).
    private mutating func giveUpHost(_ reply: Reply) -> SMTPClientAction {
        markHostFailed(reply)
        phase = .quit
        return .send(["QUIT"])
    }

    private mutating func parseExtensions(_ reply: Reply) {
        traits.extensions = []
        for line in reply.lines.dropFirst() {
            let words = line.split(separator: " ")
            guard let keyword = words.first?.uppercased() else { continue }
            traits.extensions.insert(keyword)
            if keyword == "SIZE", words.count > 1, let n = Int(words[1]) { traits.advertisedSize = n }
        }
    }
}
