// Delivery to another domain over SMTP: MX lookup (RFC 5321 §5.1), each MX in preference order
// (equal preferences shuffled), each address of each MX, until one host settles the
// recipients. Null MX (RFC 7505) and a nonexistent domain bounce at once; DNS trouble and
// unreachable hosts defer.

import MailCore
import Net
import DNS
import SMTP

/// What one recipient's delivery attempt came to, with the host that answered.
public struct AttemptOutcome: Sendable {
    public var result: RecipientResult
    public var relay: String
}

public struct RemoteDelivery: Sendable {
    public var heloName: String
    public var port: Int
    public var tlsPolicy: TLSPolicy
    public var resolver: Resolver
    public var tlsContext: TLSContext
    /// Idle connections to reuse for the next message to the same host.
    let connections = ConnectionCache()
    public var connectTimeout = 30
    public var commandTimeout = 300

    public init(heloName: String, port: Int, tlsPolicy: TLSPolicy, resolver: Resolver, tlsContext: TLSContext) {
        self.heloName = heloName
        self.port = port
        self.tlsPolicy = tlsPolicy
        self.resolver = resolver
        self.tlsContext = tlsContext
    }

    /// Delivers `message` for recipients that all share `domain`.
    public func deliver(domain: String, sender: ReversePath, recipients: [Mailbox], message: [UInt8]) async -> [AttemptOutcome] {
        func all(_ result: RecipientResult, relay: String = "none") -> [AttemptOutcome] {
            Array(repeating: AttemptOutcome(result: result, relay: relay), count: recipients.count)
        }
        var hosts: [String] = []
        var viaMX = false
        if domain.hasPrefix("[") && domain.hasSuffix("]") {
            // Address literal, RFC 5321 §4.1.3: [192.0.2.1] or [IPv6:2001:db8::1].
            var literal = domain.dropFirst().dropLast()
            if literal.lowercased().hasPrefix("ipv6:") { literal = literal.dropFirst(5) }
            hosts = [String(literal)]
        } else {
            switch await resolver.lookupMX(domain) {
            case .records(var records):
                viaMX = true
                // An MX exchange must be a host name, never an address (RFC 5321 §5.1; Postfix
                // ignores numeric MX names too).
                records.removeAll { NetworkAddress.isLiteral($0.exchange) }
                // RFC 5321 §5.1: if we are in the list, only hosts more preferred than we are
                // may be used; none left means the mail would loop back to us.
                if let own = records.filter({ $0.exchange == heloName.lowercased() }).map(\.preference).min() {
                    records.removeAll { $0.preference >= own }
                    if records.isEmpty {
                        return all(.bounced(Reply(554, "5.4.6", "mail for \(domain) loops back to myself")))
                    }
                }
                if records.isEmpty {
                    return all(.deferred(Reply(451, "4.4.3", "no usable MX host for \(domain)")))
                }
                hosts = Dictionary(grouping: records, by: \.preference).sorted { $0.key < $1.key }
                    .flatMap { $0.value.shuffled().map(\.exchange) }
            case .noRecords:
                hosts = [domain]
            case .nullMX:
                return all(.bounced(Reply(556, "5.1.10", "Domain \(domain) does not accept mail (null MX)")))
            case .nonexistentDomain:
                return all(.bounced(Reply(550, "5.1.2", "Host or domain name not found: \(domain)")))
            case .temporaryFailure(let why):
                return all(.deferred(Reply(451, "4.4.3", "Host or domain name lookup failed: \(why)")))
            }
        }

        var lastFailure = Reply(451, "4.4.1", "No MX host for \(domain) could be reached")
        var lastRelay = "none"
        var addressesTried = 0
        var sessions = 0
        var everyHostNonexistent = true
        hostLoop: for host in hosts {
            var addresses: [String]
            if NetworkAddress.isLiteral(host) {
                addresses = [host]
                everyHostNonexistent = false
            } else {
                switch await resolver.lookupAddresses(host) {
                case .addresses(let list):
                    addresses = list
                    everyHostNonexistent = false
                case .nonexistent:
                    lastFailure = Reply(451, "4.4.3", "MX host \(host) not found")
                    continue
                case .temporaryFailure(let why):
                    lastFailure = Reply(451, "4.4.3", "MX host \(host) lookup failed: \(why)")
                    everyHostNonexistent = false
                    continue
                }
            }
            for address in addresses {
                // Bounded work per attempt however many MX hosts a domain lists (Postfix
                // smtp_mx_address_limit = 5, smtp_mx_session_limit = 2).
                guard addressesTried < RemoteDelivery.addressLimit, sessions < RemoteDelivery.sessionLimit else {
                    break hostLoop
                }
                addressesTried += 1
                let relay = "\(host)[\(address)]:\(port)"
                // Opportunistic TLS (RFC 7435) must not make mail undeliverable: when the
                // handshake itself fails under `may`, try the same host once more in plaintext,
                // as Postfix does.
                var policy = tlsPolicy
                while true {
                    let attempt = await attempt(address: address, host: host, relay: relay, policy: policy,
                                                sender: sender, recipients: recipients, message: message)
                    switch attempt {
                    case .settled(let results):
                        return results.map { AttemptOutcome(result: $0, relay: relay) }
                    case .tlsHandshakeFailed(let why) where policy == .may:
                        Log.warning("\(relay): TLS handshake failed (\(why)); retrying without TLS")
                        policy = .none
                        continue
                    case .tlsHandshakeFailed(let why):
                        sessions += 1
                        lastFailure = Reply(451, "4.7.5", "TLS handshake with \(relay) failed: \(why)")
                    case .hostFailed(let reply, let connected):
                        if connected { sessions += 1 }
                        lastFailure = reply
                    }
                    lastRelay = relay
                    break
                }
            }
        }
        if viaMX && everyHostNonexistent {
            // Every MX host is NXDOMAIN: a permanent misconfiguration (Postfix bounces 5.4.4).
            return all(.bounced(Reply(550, "5.4.4", "no MX host of \(domain) exists")))
        }
        return all(.deferred(lastFailure), relay: lastRelay)
    }

    /// Addresses tried per attempt, and hosts that got as far as an SMTP session.
    static let addressLimit = 5
    static let sessionLimit = 2

    private enum HostAttempt {
        /// Every recipient has a result from this host (delivered, bounced or deferred by it).
        case settled([RecipientResult])
        /// The host could not take the message (connection, greeting, EHLO): try the next one.
        /// `connected`: an SMTP session was set up (it counts against the session limit).
        case hostFailed(Reply, connected: Bool)
        case tlsHandshakeFailed(String)
    }

    private struct DialogueResult {
        var results: [RecipientResult]
        var hostFailed: Bool
        var reusable: Bool
        var tlsFailure: String?
    }

    /// One SMTP dialogue with one address of an MX host: on a cached connection when one is
    /// idle, else on a new one.
    private func attempt(address: String, host: String, relay: String, policy: TLSPolicy, sender: ReversePath,
                         recipients: [Mailbox], message: [UInt8]) async -> HostAttempt {
        let key = "\(address)|\(port)|\(host)|\(policy.rawValue)"
        func newSession() -> SMTPClientSession {
            SMTPClientSession(heloName: heloName, sender: sender, recipients: recipients,
                              messageSize: message.count, tlsPolicy: policy, allowReuse: true)
        }
        if let cached = connections.take(key) {
            var session = newSession()
            let first = session.resume(on: cached.traits)
            let outcome = await run(&session, on: cached.connection, host: host, message: message, first: first)
            if session.receivedReply {
                return finish(outcome, connection: cached, key: key, relay: relay)
            }
            // The server closed the idle connection before we reused it: use a new one.
            cached.connection.close()
        }
        let fd: Int32
        do {
            (fd, _) = try await connectTCP(ip: address, port: port, timeoutSeconds: connectTimeout)
        } catch {
            return .hostFailed(Reply(451, "4.4.1", "connect to \(relay): \(error)"), connected: false)
        }
        let connection = Connection(fd: fd, peer: SocketAddress(ip: address, port: port)!, readTimeout: commandTimeout)
        var session = newSession()
        let outcome = await run(&session, on: connection, host: host, message: message, first: nil)
        let entry = CachedConnection(connection: connection, traits: session.traits, opened: monotonicMilliseconds())
        return finish(outcome, connection: entry, key: key, relay: relay)
    }

    private func finish(_ outcome: DialogueResult, connection entry: CachedConnection, key: String,
                        relay: String) -> HostAttempt {
        // A server that said more than it was asked is out of step: never reuse it.
        let clean = !entry.connection.hasBufferedInput
        if outcome.reusable && clean && connections.put(entry, for: key) {
            // parked for the next message to this host
        } else if outcome.reusable && clean {
            let connection = entry.connection
            connection.queue(line: "QUIT")
            Task { try? await connection.flush(); await connection.shutdown() }
        } else {
            entry.connection.close()
        }
        if let tlsFailure = outcome.tlsFailure { return .tlsHandshakeFailed(tlsFailure) }
        if outcome.hostFailed {
            return .hostFailed(outcome.results.first?.reply ?? Reply(451, "4.4.2", "\(relay) failed"), connected: true)
        }
        return .settled(outcome.results)
    }

    /// Drives one SMTP client dialogue over a connected socket. `first` is the opening action
    /// of a resumed (cached) connection; a new connection starts by reading the greeting.
    private func run(_ session: inout SMTPClientSession, on connection: Connection, host: String,
                     message: [UInt8], first: SMTPClientAction?) async -> DialogueResult {
        var tlsFailure: String?
        func lost(_ session: inout SMTPClientSession, _ error: any Error) -> DialogueResult {
            guard case .finished(let results, let hostFailed, _) = session.connectionLost("lost connection with \(host): \(error)")
            else { return DialogueResult(results: [], hostFailed: true, reusable: false, tlsFailure: tlsFailure) }
            return DialogueResult(results: results, hostFailed: hostFailed, reusable: false, tlsFailure: tlsFailure)
        }
        var parser = ReplyParser()
        var next = first
        // The whole reply (all its lines) must arrive within the timeout (RFC 5321 §4.5.3.2
        // times commands, not lines): a server trickling "250-" lines cannot hold us for ever.
        var replyDeadline: Int64?
        while true {
            if let action = next {
                next = nil
                do {
                    switch action {
                    case .send(let commands):
                        for command in commands { connection.queue(line: command) }
                        try await connection.flush()
                    case .awaitReply:
                        break
                    case .startTLS:
                        do {
                            try await connection.startTLS(context: tlsContext, serverName: host)
                        } catch {
                            tlsFailure = "\(error)"
                            throw error
                        }
                        next = session.tlsEstablished()
                        continue
                    case .sendMessage:
                        connection.queue(DotStuffing.encode(message))
                        try await connection.flush()
                        // RFC 5321 §4.5.3.2.6: wait 10 minutes for the reply to the final dot
                        // (the receiver may be scanning the message); giving up early duplicates.
                        connection.readTimeout = max(commandTimeout, 600)
                    case .finished(let results, let hostFailed, let reusable):
                        return DialogueResult(results: results, hostFailed: hostFailed, reusable: reusable,
                                              tlsFailure: tlsFailure)
                    }
                } catch {
                    return lost(&session, error)
                }
            }
            do {
                if replyDeadline == nil { replyDeadline = connection.timeoutFromNow }
                guard case .line(let line) = try await connection.readLine(limit: 4096, deadline: replyDeadline) else {
                    throw NetError.protocolError("reply line too long")
                }
                let reply: Reply?
                do {
                    reply = try parser.feed(line: line)
                } catch {
                    throw NetError.protocolError("malformed reply from \(host): \(error)")
                }
                if let reply {
                    replyDeadline = nil
                    connection.readTimeout = commandTimeout
                    next = session.receive(reply)
                }
            } catch {
                // Includes a server that closes without answering QUIT: results already final stay.
                return lost(&session, error)
            }
        }
    }
}

enum NetworkAddress {
    static func isLiteral(_ text: String) -> Bool {
        text.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || $0 == UInt8(ascii: ".") } && text.contains(".")
            || text.contains(":")
    }
}
