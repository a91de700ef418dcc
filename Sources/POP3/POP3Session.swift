// The POP3 server dialogue as a value-type state machine, without I/O (RFC 1939; CAPA and UIDL
// RFC 2449; STLS RFC 2595; AUTH RFC 5034).
//
// States follow RFC 1939 §3: AUTHORIZATION, TRANSACTION, UPDATE. The maildrop is opened and
// changed by the driver: this machine only decides. Deletions are marks until QUIT in the
// TRANSACTION state (§6); a dropped connection deletes nothing.

import MailCore

public struct POP3Configuration: Sendable {
    public var hostname: String
    public var tlsAvailable: Bool
    /// Failed logins before the server hangs up.
    public var authFailureLimit: Int
    /// Unknown or bad commands before the server hangs up.
    public var errorLimit: Int
    public init(hostname: String, tlsAvailable: Bool, authFailureLimit: Int = 3, errorLimit: Int = 20) {
        self.hostname = hostname
        self.tlsAvailable = tlsAvailable
        self.authFailureLimit = authFailureLimit
        self.errorLimit = errorLimit
    }
}

/// One message of the maildrop as the session sees it.
public struct MaildropEntry: Sendable, Equatable {
    public var size: Int
    public var uniqueID: String
    public init(size: Int, uniqueID: String) {
        self.size = size
        self.uniqueID = uniqueID
    }
}

public enum POP3Action: Sendable, Equatable {
    /// Send these lines (each gets CRLF), e.g. "+OK" and a multi-line listing ending in ".".
    case send([String])
    case sendAndClose([String])
    /// "+OK" was queued: run the TLS handshake, then call `tlsEstablished()`.
    case startTLS
    /// Check a USER/PASS pair; answer with `authResult(_:)`.
    case checkPassword(user: String, password: [UInt8])
    /// Start a SASL exchange (AUTH PLAIN); answer with `saslStep(_:)`.
    case saslStart(mechanism: String, initialResponse: [UInt8]?)
    case saslContinue([UInt8])
    /// Lock and read the maildrop of this user; answer with `maildropOpened(_:)`.
    case openMaildrop(user: String)
    /// Send "+OK", the message (1-based number) dot-stuffed, with at most `bodyLines` body lines
    /// (nil = all), then ".".
    case sendMessage(number: Int, bodyLines: Int?)
    /// Enter UPDATE (§6): delete these messages (1-based), send the reply, close.
    case update(deleting: [Int])
}

public struct POP3Session: Sendable {
    private enum Phase: Sendable, Equatable {
        case authorization(user: String?)
        case sasl
        case checkingPassword
        case openingMaildrop
        case transaction
        case awaitingTLS
        case closed
    }

    public let configuration: POP3Configuration
    public private(set) var isTLS: Bool
    public private(set) var user: String?
    private var phase: Phase = .authorization(user: nil)
    private var maildrop: [MaildropEntry] = []
    private var deleted: Set<Int> = []
    private var authFailures = 0
    private var errors = 0

    /// RFC 2449 §4: a command line is at most 255 octets; SASL lines may be longer (RFC 5034 §4).
    public static let commandLineLimit = 8192

    public init(configuration: POP3Configuration, implicitTLS: Bool) {
        self.configuration = configuration
        self.isTLS = implicitTLS
    }

    public var isClosed: Bool { phase == .closed }

    public mutating func greet() -> POP3Action {
        .send(["+OK \(configuration.hostname) POP3 server ready"])
    }

    public mutating func timedOut() -> POP3Action {
        phase = .closed
        return .sendAndClose(["-ERR autologout: idle too long"])
    }

    public mutating func lineTooLong() -> POP3Action {
        if phase == .sasl { phase = .authorization(user: nil) }
        return error("line too long")
    }

    public mutating func receive(line bytes: [UInt8]) -> POP3Action {
        if phase == .sasl { return saslResponse(bytes) }
        let line = String(decoding: bytes, as: UTF8.self)
        let parts = line.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: false)
        let verb = parts.first.map { $0.uppercased() } ?? ""
        let argument = parts.count > 1 ? String(parts[1]) : ""

        switch phase {
        case .authorization(let pendingUser):
            return authorization(verb, argument, pendingUser: pendingUser)
        case .transaction:
            return transaction(verb, argument)
        default:
            return .send(["-ERR bad sequence"])
        }
    }

    public mutating func tlsEstablished() {
        isTLS = true
        phase = .authorization(user: nil)
    }

    /// The verdict of a SASL step, or of a USER/PASS check (`.success`, `.failure`, `.temporaryFailure`).
    public mutating func saslStep(_ result: SASLStepResult) -> POP3Action {
        guard phase == .sasl || phase == .checkingPassword else { return .send([]) }
        switch result {
        case .challenge(let bytes): return .send(["+ " + Base64.encode(bytes)])
        case .success(let user):
            self.user = user
            phase = .openingMaildrop
            return .openMaildrop(user: user)
        case .failure: return authFailed()
        case .temporaryFailure:
            phase = .authorization(user: nil)
            return .send(["-ERR [SYS/TEMP] temporary authentication failure"])
        }
    }

    /// nil when the maildrop could not be opened or locked (RFC 2449 [IN-USE] / [SYS/TEMP]).
    public mutating func maildropOpened(_ entries: [MaildropEntry]?) -> POP3Action {
        guard phase == .openingMaildrop else { return .send([]) }
        guard let entries else {
            phase = .authorization(user: nil)
            user = nil
            return .send(["-ERR [IN-USE] unable to lock maildrop"])
        }
        maildrop = entries
        deleted = []
        phase = .transaction
        return .send(["+OK maildrop has \(entries.count) messages (\(entries.reduce(0) { $0 + $1.size }) octets)"])
    }

    // MARK: AUTHORIZATION (§4, §7)

    private var capabilities: [String] {
        var lines = ["+OK Capability list follows", "TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        // Passwords travel only under TLS, so USER and SASL PLAIN are offered only then
        // (RFC 2595 §4: STLS first), as Dovecot does with disable_plaintext_auth.
        if isTLS { lines += ["USER", "SASL PLAIN"] }
        if configuration.tlsAvailable && !isTLS && phase != .transaction { lines.append("STLS") }
        lines.append("IMPLEMENTATION Apus")
        lines.append(".")
        return lines
    }

    private mutating func authorization(_ verb: String, _ argument: String, pendingUser: String?) -> POP3Action {
        switch verb {
        case "CAPA":
            return .send(capabilities)
        case "STLS":
            guard configuration.tlsAvailable, !isTLS else { return error("STLS not available") }
            phase = .awaitingTLS
            return .startTLS
        case "USER":
            // Passwords in the clear only under TLS (RFC 2595 §2, our security contract).
            guard isTLS else { return error("[AUTH] USER/PASS require TLS; use STLS first") }
            // A mailbox name: printable ASCII without spaces, at most 255 octets. Anything else
            // could mean one name to Cyrus (which stops at NUL) and another to us.
            guard !argument.isEmpty, argument.utf8.count <= 255,
                  argument.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F })
            else { return error("[AUTH] invalid user name") }
            phase = .authorization(user: argument)
            return .send(["+OK send PASS"])
        case "PASS":
            guard isTLS else { return error("[AUTH] USER/PASS require TLS; use STLS first") }
            guard let pendingUser else { return error("send USER first") }
            phase = .checkingPassword
            return .checkPassword(user: pendingUser, password: Array(argument.utf8))
        case "AUTH":
            if argument.isEmpty {
                // RFC 5034 §4 allows a bare AUTH listing; fetchmail probes this way.
                return .send(isTLS ? ["+OK", "PLAIN", "."] : ["+OK", "."])
            }
            guard isTLS else { return error("[AUTH] authentication requires TLS; use STLS first") }
            let words = argument.split(separator: " ")
            guard let first = words.first else { return error("syntax: AUTH mechanism [initial-response]") }
            let mechanism = first.uppercased()
            guard mechanism == "PLAIN" else { return error("unsupported mechanism") }
            var initial: [UInt8]?
            if words.count > 1 {
                if words[1] == "=" { initial = [] }
                else if let decoded = Base64.decode(String(words[1])) { initial = decoded }
                else { return error("invalid base64") }
            }
            phase = .sasl
            return .saslStart(mechanism: mechanism, initialResponse: initial)
        case "QUIT":
            phase = .closed
            return .sendAndClose(["+OK \(configuration.hostname) POP3 server signing off"])
        case "NOOP":
            return error("not authenticated")
        default:
            return error("unknown command in AUTHORIZATION state")
        }
    }

    private mutating func saslResponse(_ bytes: [UInt8]) -> POP3Action {
        if bytes == [UInt8(ascii: "*")] {
            phase = .authorization(user: nil)
            return .send(["-ERR authentication cancelled"])
        }
        guard let decoded = Base64.decode(bytes) else {
            phase = .authorization(user: nil)
            return error("invalid base64")
        }
        return .saslContinue(decoded)
    }

    private mutating func authFailed() -> POP3Action {
        authFailures += 1
        phase = .authorization(user: nil)
        if authFailures >= configuration.authFailureLimit {
            phase = .closed
            return .sendAndClose(["-ERR [AUTH] too many failures"])
        }
        // One answer for unknown user and wrong password: never tell which.
        return .send(["-ERR [AUTH] authentication failed"])
    }

    private mutating func error(_ text: String) -> POP3Action {
        errors += 1
        if errors >= configuration.errorLimit {
            phase = .closed
            return .sendAndClose(["-ERR too many errors"])
        }
        return .send(["-ERR " + text])
    }

    // MARK: TRANSACTION (§5)

    /// A message number as the client gave it, if it names an existing, undeleted message.
    private func message(_ argument: String) -> Int? {
        guard let n = Int(argument.split(separator: " ").first ?? ""), n >= 1, n <= maildrop.count,
              !deleted.contains(n) else { return nil }
        return n
    }

    private mutating func transaction(_ verb: String, _ argument: String) -> POP3Action {
        switch verb {
        case "STAT":
            let live = maildrop.indices.filter { !deleted.contains($0 + 1) }
            return .send(["+OK \(live.count) \(live.reduce(0) { $0 + maildrop[$1].size })"])
        case "LIST", "UIDL":
            let uidl = verb == "UIDL"
            func row(_ n: Int) -> String { "\(n) " + (uidl ? maildrop[n - 1].uniqueID : String(maildrop[n - 1].size)) }
            if !argument.isEmpty {
                guard let n = message(argument) else { return error("no such message") }
                return .send(["+OK " + row(n)])
            }
            var lines = ["+OK"]
            for n in maildrop.indices.map({ $0 + 1 }) where !deleted.contains(n) {
                lines.append(row(n))
            }
            lines.append(".")
            return .send(lines)
        case "RETR":
            guard let n = message(argument) else { return error("no such message") }
            return .sendMessage(number: n, bodyLines: nil)
        case "TOP":
            let words = argument.split(separator: " ")
            guard words.count == 2, let n = message(String(words[0])), let lines = Int(words[1]), lines >= 0
            else { return error("syntax: TOP msg n") }
            return .sendMessage(number: n, bodyLines: lines)
        case "DELE":
            guard let n = message(argument) else { return error("no such message") }
            deleted.insert(n)
            return .send(["+OK message \(n) deleted"])
        case "NOOP":
            return .send(["+OK"])
        case "RSET":
            deleted = []
            return .send(["+OK"])
        case "CAPA":
            return .send(capabilities)
        case "QUIT":
            phase = .closed
            return .update(deleting: deleted.sorted())
        default:
            return error("unknown command")
        }
    }

    public func size(of number: Int) -> Int { maildrop[number - 1].size }
}
