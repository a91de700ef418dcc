// The SMTP server dialogue as a value-type state machine, without I/O (RFC 5321 §4.1, §4.3).
//
// The connection loop feeds it events — a command line, "TLS is up", a SASL step's result, the
// end of DATA, the spool's verdict — and performs the actions it returns. Each verb is checked
// before it is done (OpenSMTPD's smtp_check_* / smtp_proceed_* split), and every refusal carries
// a reply code and an enhanced status code (RFC 3463) with a message that reveals nothing of the
// configuration.
//
// Extensions: PIPELINING (RFC 2920), SIZE (RFC 1870), 8BITMIME (RFC 6152), ENHANCEDSTATUSCODES
// (RFC 2034), STARTTLS (RFC 3207), AUTH (RFC 4954).

import MailCore

public enum SMTPService: String, Sendable {
    /// Port 25: mail for our domains, relaying only for authenticated or trusted clients.
    case mx = "smtp"
    /// Port 587: STARTTLS, AUTH required before MAIL (RFC 6409).
    case submission
    /// Port 465: implicit TLS (RFC 8314), AUTH required before MAIL.
    case submissions
}

/// What RCPT TO makes of a recipient in one of our domains.
public enum LocalRecipientVerdict: Sendable {
    case exists
    case unknown
    /// Deliver to this mailbox instead (e.g. postmaster@ → the administrator, RFC 5321 §4.5.1).
    case redirect(Mailbox)
    /// The mailbox store cannot be checked now (not mounted?): try again later.
    case unavailable
}

public struct SMTPServerConfiguration: Sendable {
    public var hostname: String
    public var service: SMTPService
    public var messageSizeLimit: Int
    public var recipientLimit: Int
    /// Hard errors before the server hangs up (Postfix smtpd_hard_error_limit).
    public var errorLimit: Int
    /// Failed AUTH attempts before the server hangs up.
    public var authFailureLimit: Int
    /// TLS can be offered (a certificate is configured).
    public var tlsAvailable: Bool
    /// SASL mechanisms the server offers, e.g. ["PLAIN", "LOGIN"]; offered only under TLS.
    public var authMechanisms: [String]
    public var localDomains: Set<String>
    /// The client address is in a trusted relay network.
    public var clientMayRelay: Bool
    /// An authenticated user may send only as addresses it owns.
    public var enforceSenderOwnership: Bool
    public var verifyLocalRecipient: @Sendable (Mailbox) -> LocalRecipientVerdict

    public init(hostname: String, service: SMTPService, messageSizeLimit: Int = 26_214_400,
                recipientLimit: Int = 1000, errorLimit: Int = 20, authFailureLimit: Int = 3,
                tlsAvailable: Bool, authMechanisms: [String] = ["PLAIN", "LOGIN"],
                localDomains: Set<String>, clientMayRelay: Bool = false,
                enforceSenderOwnership: Bool = true,
                verifyLocalRecipient: @escaping @Sendable (Mailbox) -> LocalRecipientVerdict) {
        self.hostname = hostname
        self.service = service
        self.messageSizeLimit = messageSizeLimit
        self.recipientLimit = recipientLimit
        self.errorLimit = errorLimit
        self.authFailureLimit = authFailureLimit
        self.tlsAvailable = tlsAvailable
        self.authMechanisms = authMechanisms
        self.localDomains = Set(localDomains.map { $0.lowercased() })
        self.clientMayRelay = clientMayRelay
        self.enforceSenderOwnership = enforceSenderOwnership
        self.verifyLocalRecipient = verifyLocalRecipient
    }
}

public enum SMTPServerAction: Sendable, Equatable {
    case reply(Reply)
    /// Send the reply, then close the connection.
    case replyAndClose(Reply)
    /// The 220 has been queued: flush it, discard buffered input, run the TLS handshake, then
    /// call `tlsEstablished()` (or close on failure).
    case startTLS
    /// Start a SASL exchange; the driver answers with `authStep(_:)`.
    case authStart(mechanism: String, initialResponse: [UInt8]?)
    /// The client's next SASL response (already base64-decoded).
    case authContinue([UInt8])
    /// The 354 has been queued: read the message with `DataFramer`, then call `dataFinished`.
    case receiveData(sizeLimit: Int)
    /// Make the message durable, then call `committed(queueID:)` or `commitFailed()`.
    case commit(Envelope, [UInt8])
}

public struct SMTPServerSession: Sendable {
    private enum Phase: Sendable, Equatable {
        case greeting
        /// Waiting for HELO/EHLO (also right after STARTTLS).
        case needHello
        case ready
        case mailTransaction(sender: ReversePath, recipients: [Mailbox])
        case awaitingData
        case awaitingCommit
        case authenticating(mechanism: String)
        case awaitingTLS
        case closed
    }

    public let configuration: SMTPServerConfiguration
    private var phase: Phase = .greeting
    public private(set) var heloName: String?
    public private(set) var usedESMTP = false
    public private(set) var isTLS: Bool
    public private(set) var authenticatedUser: String?
    private var errorCount = 0
    private var authFailures = 0
    /// NOOP, RSET, VRFY and HELP so far: after `junkCommandLimit` they count as errors, so a
    /// client cannot keep a session alive for ever with harmless commands (Postfix
    /// smtpd_junk_command_limit).
    private var junkCommands = 0
    public static let junkCommandLimit = 100
    private let clientAddress: String
    private var pendingEnvelope: Envelope?

    /// Longest command line we accept (RFC 5321 §4.5.3.1.4 says 512; AUTH responses may be
    /// up to 12288 octets, RFC 4954 §4).
    public static let commandLineLimit = 12_288

    public init(configuration: SMTPServerConfiguration, clientAddress: String, implicitTLS: Bool) {
        self.configuration = configuration
        self.clientAddress = clientAddress
        self.isTLS = implicitTLS
    }

    public var isClosed: Bool { phase == .closed }

    private var requiresAuth: Bool { configuration.service != .mx }

    // MARK: events

    public mutating func greet() -> SMTPServerAction {
        phase = .needHello
        return .reply(Reply(220, nil, "\(configuration.hostname) ESMTP Apus"))
    }

    /// A command line arrived that was longer than `commandLineLimit`.
    public mutating func lineTooLong() -> [SMTPServerAction] {
        if case .authenticating = phase { phase = .ready }
        return fail(Reply(500, "5.5.2", "Error: line too long"))
    }

    public mutating func receive(line bytes: [UInt8]) -> [SMTPServerAction] {
        switch phase {
        case .authenticating:
            return authResponse(bytes)
        case .closed, .awaitingData, .awaitingCommit, .awaitingTLS, .greeting:
            // The driver never feeds lines in these phases; answer safely if it ever does.
            return [.reply(Reply(503, "5.5.1", "Error: bad sequence of commands"))]
        default:
            break
        }
        if bytes.contains(0) {
            return fail(Reply(500, "5.5.2", "Error: NUL in command"))
        }
        let line = String(decoding: bytes, as: UTF8.self)
        let verbEnd = line.firstIndex(of: " ") ?? line.endIndex
        let verb = line[..<verbEnd].uppercased()
        let argument = line[verbEnd...].drop(while: { $0 == " " })

        switch verb {
        case "EHLO": return hello(argument, extended: true)
        case "HELO": return hello(argument, extended: false)
        case "MAIL": return mail(argument)
        case "RCPT": return rcpt(argument)
        case "DATA": return data(argument)
        case "RSET":
            if phase != .needHello { phase = .ready }
            return junk(Reply(250, "2.0.0", "Ok"))
        case "NOOP": return junk(Reply(250, "2.0.0", "Ok"))
        case "QUIT":
            phase = .closed
            return [.replyAndClose(Reply(221, "2.0.0", "Bye"))]
        case "STARTTLS": return startTLS(argument)
        case "AUTH": return auth(argument)
        case "VRFY":
            // RFC 5321 §3.5.3: 252 when we will not verify; address harvesting gets nothing.
            return junk(Reply(252, "2.0.0", "Send some mail, I'll try my best"))
        case "HELP": return junk(Reply(214, "2.0.0", "See RFC 5321"))
        case "BDAT":
            return fail(Reply(502, "5.5.1", "Error: command not implemented"))
        case "GET", "POST", "CONNECT", "PUT", "HEAD", "USER":
            // An HTTP proxy or a web form is being abused to talk to us (Postfix smtpd_forbidden_commands).
            phase = .closed
            return [.replyAndClose(Reply(521, "5.7.0", "Error: this is an SMTP server"))]
        default:
            return fail(Reply(502, "5.5.2", "Error: command not recognized"))
        }
    }

    public mutating func tlsEstablished() {
        // RFC 3207 §4.2: forget everything learned before TLS, including HELO and AUTH.
        isTLS = true
        heloName = nil
        authenticatedUser = nil
        phase = .needHello
    }

    public mutating func authStep(_ result: SASLStepResult) -> [SMTPServerAction] {
        guard case .authenticating = phase else { return [] }
        switch result {
        case .challenge(let bytes):
            return [.reply(Reply(334, nil, Base64.encode(bytes)))]
        case .success(let user):
            authenticatedUser = user
            phase = .ready
            return [.reply(Reply(235, "2.7.0", "Authentication successful"))]
        case .failure:
            phase = .ready
            authFailures += 1
            if authFailures >= configuration.authFailureLimit {
                phase = .closed
                return [.replyAndClose(Reply(421, "4.7.0", "\(configuration.hostname) Too many failed authentications"))]
            }
            return fail(Reply(535, "5.7.8", "Error: authentication failed"))
        case .temporaryFailure:
            phase = .ready
            return [.reply(Reply(454, "4.7.0", "Temporary authentication failure"))]
        }
    }

    /// The DATA phase ended (the driver framed it with `DataFramer`).
    public mutating func dataFinished(_ outcome: DataFramer.Outcome, message: [UInt8]) -> [SMTPServerAction] {
        guard phase == .awaitingData, let envelope = pendingEnvelope else { return [] }
        switch outcome {
        case .complete:
            if SMTPServerSession.receivedHeaders(in: message) >= SMTPServerSession.hopLimit {
                // RFC 5321 §6.3: a message that has passed this many relays is in a loop.
                phase = .ready
                pendingEnvelope = nil
                return [.reply(Reply(554, "5.4.6", "Error: too many hops (mail loop?)"))]
            }
            phase = .awaitingCommit
            return [.commit(envelope, message)]
        case .tooLarge:
            phase = .ready
            pendingEnvelope = nil
            return [.reply(Reply(552, "5.3.4", "Error: message exceeds fixed maximum message size"))]
        case .bareLineEnding:
            phase = .ready
            pendingEnvelope = nil
            return [.reply(Reply(550, "5.6.0", "Error: message contains a bare CR or LF; lines must end with CRLF"))]
        }
    }

    /// Received: headers beyond which a message is taken to be looping (Postfix hopcount_limit).
    public static let hopLimit = 50

    /// Received: fields in the header section (up to the first empty line).
    static func receivedHeaders(in message: [UInt8]) -> Int {
        var count = 0
        var lineStart = 0
        let name = Array("received:".utf8)
        while lineStart < message.count {
            guard let lf = message[lineStart...].firstIndex(of: 10) else { break }
            let length = lf - lineStart
            if length == 0 || (length == 1 && message[lineStart] == 13) { break }  // end of headers
            if length >= name.count,
               zip(message[lineStart..<(lineStart + name.count)], name).allSatisfy({ $0 | 0x20 == $1 | 0x20 }) {
                count += 1
            }
            lineStart = lf + 1
        }
        return count
    }

    public mutating func committed(queueID: String) -> SMTPServerAction {
        phase = .ready
        pendingEnvelope = nil
        return .reply(Reply(250, "2.0.0", "Ok: queued as \(queueID)"))
    }

    public mutating func commitFailed() -> SMTPServerAction {
        // Durability contract: never 250 unless it is on disk; a temporary failure makes the
        // client keep the message and retry (RFC 5321 §4.2.5).
        phase = .ready
        pendingEnvelope = nil
        return .reply(Reply(452, "4.3.1", "Error: insufficient system storage"))
    }

    /// The client was idle too long (RFC 5321 §4.5.3.2).
    public mutating func timedOut() -> SMTPServerAction {
        phase = .closed
        return .replyAndClose(Reply(421, "4.4.2", "\(configuration.hostname) Error: timeout exceeded"))
    }

    // MARK: verbs

    private mutating func junk(_ reply: Reply) -> [SMTPServerAction] {
        junkCommands += 1
        return junkCommands > SMTPServerSession.junkCommandLimit ? fail(reply) : [.reply(reply)]
    }

    private mutating func fail(_ reply: Reply) -> [SMTPServerAction] {
        errorCount += 1
        if errorCount >= configuration.errorLimit {
            phase = .closed
            return [.replyAndClose(Reply(421, "4.7.0", "\(configuration.hostname) Error: too many errors"))]
        }
        return [.reply(reply)]
    }

    private mutating func hello(_ argument: Substring, extended: Bool) -> [SMTPServerAction] {
        let name = argument.trimmingSpaces
        guard !name.isEmpty, !name.contains(" ") || name.hasPrefix("[") else {
            return fail(Reply(501, "5.5.4", "Syntax: \(extended ? "EHLO" : "HELO") hostname"))
        }
        heloName = String(name)
        usedESMTP = extended
        phase = .ready  // RFC 5321 §4.1.4: EHLO also resets any transaction.
        guard extended else {
            return [.reply(Reply(250, nil, configuration.hostname))]
        }
        var lines = [configuration.hostname, "PIPELINING", "SIZE \(configuration.messageSizeLimit)",
                     "8BITMIME", "ENHANCEDSTATUSCODES"]
        if configuration.tlsAvailable && !isTLS { lines.append("STARTTLS") }
        // Plain-text mechanisms only under TLS (RFC 4954 §4, DESIGN security contract).
        if isTLS && !configuration.authMechanisms.isEmpty && authenticatedUser == nil {
            lines.append("AUTH " + configuration.authMechanisms.joined(separator: " "))
        }
        return [.reply(Reply(250, nil, lines))]
    }

    private mutating func mail(_ argument: Substring) -> [SMTPServerAction] {
        switch phase {
        case .needHello: return fail(Reply(503, "5.5.1", "Error: send HELO/EHLO first"))
        case .mailTransaction: return fail(Reply(503, "5.5.1", "Error: nested MAIL command"))
        default: break
        }
        if requiresAuth && authenticatedUser == nil {
            return fail(Reply(530, "5.7.0", "Authentication required"))
        }
        guard argument.uppercased().hasPrefix("FROM:"),
              let parsed = PathArgument.parse(argument.dropFirst(5))
        else { return fail(Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>")) }

        if parsed.path.utf8.contains(where: { $0 >= 0x80 }) {
            // RFC 6531 §3.5: without SMTPUTF8, non-ASCII addresses are refused this way.
            return fail(Reply(553, "5.6.7", "Non-ASCII addresses are not permitted"))
        }
        let sender: ReversePath
        if parsed.path.isEmpty {
            sender = .null
        } else if let mailbox = Mailbox(parsing: parsed.path) {
            sender = .mailbox(mailbox)
        } else {
            return fail(Reply(501, "5.1.7", "Bad sender address syntax"))
        }
        for (key, value) in parsed.parameters {
            switch key {
            case "SIZE":
                guard let value, let size = Int(value), size >= 0 else {
                    return fail(Reply(501, "5.5.4", "Bad SIZE parameter"))
                }
                if size > configuration.messageSizeLimit {
                    return fail(Reply(552, "5.3.4", "Message size exceeds fixed limit"))
                }
            case "BODY":
                guard let value, ["7BIT", "8BITMIME"].contains(value.uppercased()) else {
                    return fail(Reply(501, "5.5.4", "Bad BODY parameter"))
                }
            case "AUTH":
                // RFC 4954 §5: accepted and not trusted; we record our own authenticated identity.
                break
            default:
                return fail(Reply(555, "5.5.4", "Unsupported parameter \(key)"))
            }
        }
        if configuration.enforceSenderOwnership, let user = authenticatedUser,
           case .mailbox(let mailbox) = sender, mailbox.description.lowercased() != user.lowercased() {
            return fail(Reply(553, "5.7.1", "Sender address rejected: not owned by user \(user)"))
        }
        phase = .mailTransaction(sender: sender, recipients: [])
        return [.reply(Reply(250, "2.1.0", "Ok"))]
    }

    private mutating func rcpt(_ argument: Substring) -> [SMTPServerAction] {
        guard case .mailTransaction(let sender, var recipients) = phase else {
            return fail(Reply(503, "5.5.1", "Error: need MAIL command"))
        }
        guard argument.uppercased().hasPrefix("TO:"),
              let parsed = PathArgument.parse(argument.dropFirst(3))
        else { return fail(Reply(501, "5.5.4", "Syntax: RCPT TO:<address>")) }
        if !parsed.parameters.isEmpty {
            return fail(Reply(555, "5.5.4", "Unsupported parameter \(parsed.parameters[0].key)"))
        }
        var path = parsed.path
        // RFC 5321 §4.5.1: <Postmaster> without a domain must be accepted.
        if path.lowercased() == "postmaster", let domain = configuration.localDomains.sorted().first {
            path = "postmaster@\(domain)"
        }
        if path.utf8.contains(where: { $0 >= 0x80 }) {
            return fail(Reply(553, "5.6.7", "Non-ASCII addresses are not permitted"))
        }
        guard var mailbox = Mailbox(parsing: path) else {
            return fail(Reply(501, "5.1.3", "Bad recipient address syntax"))
        }
        if recipients.count >= configuration.recipientLimit {
            return [.reply(Reply(452, "4.5.3", "Error: too many recipients"))]
        }
        if configuration.localDomains.contains(mailbox.domain) {
            switch configuration.verifyLocalRecipient(mailbox) {
            case .exists: break
            case .redirect(let target): mailbox = target
            case .unavailable:
                return [.reply(Reply(451, "4.3.0", "<\(mailbox)>: Temporary lookup failure"))]
            case .unknown:
                return fail(Reply(550, "5.1.1", "<\(mailbox)>: Recipient address rejected: User unknown"))
            }
        } else if authenticatedUser == nil && !configuration.clientMayRelay {
            return fail(Reply(554, "5.7.1", "<\(mailbox)>: Relay access denied"))
        }
        if !recipients.contains(mailbox) { recipients.append(mailbox) }
        phase = .mailTransaction(sender: sender, recipients: recipients)
        return [.reply(Reply(250, "2.1.5", "Ok"))]
    }

    private mutating func data(_ argument: Substring) -> [SMTPServerAction] {
        guard argument.isEmpty else { return fail(Reply(501, "5.5.4", "Syntax: DATA")) }
        guard case .mailTransaction(let sender, let recipients) = phase else {
            return fail(Reply(503, "5.5.1", "Error: need RCPT command"))
        }
        guard !recipients.isEmpty else {
            // RFC 5321 §3.3: DATA with no valid recipients gets 554 (or 503).
            return fail(Reply(554, "5.5.1", "Error: no valid recipients"))
        }
        var proto = usedESMTP ? "ESMTP" : "SMTP"
        if isTLS { proto += "S" }
        if authenticatedUser != nil { proto += "A" }
        pendingEnvelope = Envelope(sender: sender, recipients: recipients, heloName: heloName ?? "",
                                   clientAddress: clientAddress, authenticatedUser: authenticatedUser,
                                   receivedProtocol: proto)
        phase = .awaitingData
        return [.reply(Reply(354, nil, "End data with <CR><LF>.<CR><LF>")),
                .receiveData(sizeLimit: configuration.messageSizeLimit)]
    }

    private mutating func startTLS(_ argument: Substring) -> [SMTPServerAction] {
        guard argument.isEmpty else { return fail(Reply(501, "5.5.4", "Syntax: STARTTLS")) }
        guard configuration.tlsAvailable else { return fail(Reply(502, "5.5.1", "Error: command not implemented")) }
        guard !isTLS else { return fail(Reply(503, "5.5.1", "Error: TLS already active")) }
        if case .mailTransaction = phase { return fail(Reply(503, "5.5.1", "Error: MAIL transaction in progress")) }
        phase = .awaitingTLS
        return [.reply(Reply(220, "2.0.0", "Ready to start TLS")), .startTLS]
    }

    private mutating func auth(_ argument: Substring) -> [SMTPServerAction] {
        guard !configuration.authMechanisms.isEmpty else {
            return fail(Reply(502, "5.5.1", "Error: authentication not enabled"))
        }
        guard phase != .needHello, usedESMTP else { return fail(Reply(503, "5.5.1", "Error: send EHLO first")) }
        guard authenticatedUser == nil else { return fail(Reply(503, "5.5.1", "Error: already authenticated")) }
        if case .mailTransaction = phase { return fail(Reply(503, "5.5.1", "Error: MAIL transaction in progress")) }
        guard isTLS else {
            // RFC 4954 §6: 538 when the mechanism needs an encrypted channel first.
            return fail(Reply(538, "5.7.11", "Encryption required for requested authentication mechanism"))
        }
        let words = argument.split(separator: " ", omittingEmptySubsequences: true)
        guard words.count == 1 || words.count == 2 else { return fail(Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")) }
        let mechanism = words[0].uppercased()
        guard configuration.authMechanisms.contains(mechanism) else {
            return fail(Reply(504, "5.5.4", "Unrecognized authentication type"))
        }
        var initial: [UInt8]? = nil
        if words.count == 2 {
            if words[1] == "=" {
                initial = []  // RFC 4954 §4: "=" is an empty initial response.
            } else if let decoded = Base64.decode(String(words[1])) {
                initial = decoded
            } else {
                return fail(Reply(501, "5.5.2", "Error: invalid base64 in initial response"))
            }
        }
        phase = .authenticating(mechanism: mechanism)
        return [.authStart(mechanism: mechanism, initialResponse: initial)]
    }

    private mutating func authResponse(_ bytes: [UInt8]) -> [SMTPServerAction] {
        if bytes == [UInt8(ascii: "*")] {
            phase = .ready
            return fail(Reply(501, "5.0.0", "Authentication cancelled"))
        }
        guard let decoded = Base64.decode(bytes) else {
            phase = .ready
            return fail(Reply(501, "5.5.2", "Error: invalid base64 in response"))
        }
        return [.authContinue(decoded)]
    }
}

extension Substring {
    var trimmingSpaces: Substring {
        var s = self
        while s.first == " " || s.first == "\t" { s = s.dropFirst() }
        while s.last == " " || s.last == "\t" { s = s.dropLast() }
        return s
    }
}
