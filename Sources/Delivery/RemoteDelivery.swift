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
        if domain.hasPrefix("[") && domain.hasSuffix("]") {
            hosts = [String(domain.dropFirst().dropLast())]  // address literal, RFC 5321 §4.1.3
        } else {
            switch await resolver.lookupMX(domain) {
            case .records(let records):
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
        for host in hosts {
            var addresses: [String]
            if NetworkAddress.isLiteral(host) {
                addresses = [host]
            } else {
                switch await resolver.lookupAddresses(host) {
                case .addresses(let list): addresses = list
                case .nonexistent:
                    lastFailure = Reply(451, "4.4.3", "MX host \(host) not found")
                    continue
                case .temporaryFailure(let why):
                    lastFailure = Reply(451, "4.4.3", "MX host \(host) lookup failed: \(why)")
                    continue
                }
            }
            for address in addresses {
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
                        lastFailure = Reply(451, "4.7.5", "TLS handshake with \(relay) failed: \(why)")
                    case .hostFailed(let reply):
                        lastFailure = reply
                    }
                    lastRelay = relay
                    break
                }
            }
        }
        return all(.deferred(lastFailure), relay: lastRelay)
    }

    private enum HostAttempt {
        /// Every recipient has a result from this host (delivered, bounced or deferred by it).
        case settled([RecipientResult])
        /// The host could not take the message (connection, greeting, EHLO): try the next one.
        case hostFailed(Reply)
        case tlsHandshakeFailed(String)
    }

    /// One connection to one address of an MX host, one SMTP dialogue.
    private func attempt(address: String, host: String, relay: String, policy: TLSPolicy, sender: ReversePath,
                         recipients: [Mailbox], message: [UInt8]) async -> HostAttempt {
        let fd: Int32
        do {
            (fd, _) = try await connectTCP(ip: address, port: port, timeoutSeconds: connectTimeout)
        } catch {
            return .hostFailed(Reply(451, "4.4.1", "connect to \(relay): \(error)"))
        }
        let connection = Connection(fd: fd, peer: SocketAddress(ip: address, port: port)!, readTimeout: commandTimeout)
        var session = SMTPClientSession(heloName: heloName, sender: sender, recipients: recipients,
                                        messageSize: message.count, tlsPolicy: policy)
        var tlsFailure: String?
        let (results, hostFailed) = await run(&session, on: connection, host: host, message: message,
                                              tlsFailure: &tlsFailure)
        await connection.shutdown()
        if let tlsFailure { return .tlsHandshakeFailed(tlsFailure) }
        if hostFailed { return .hostFailed(results.first?.reply ?? Reply(451, "4.4.2", "\(relay) failed")) }
        return .settled(results)
    }

    /// Drives one SMTP client dialogue over a connected socket.
    private func run(_ session: inout SMTPClientSession, on connection: Connection, host: String,
                     message: [UInt8], tlsFailure: inout String?) async -> ([RecipientResult], Bool) {
        var parser = ReplyParser()
        while true {
            let reply: Reply
            do {
                guard case .line(let line) = try await connection.readLine(limit: 4096) else {
                    throw NetError.tls("reply line too long")
                }
                do {
                    guard let complete = try parser.feed(line: line) else { continue }
                    reply = complete
                } catch {
                    throw NetError.tls("malformed reply from \(host)")
                }
            } catch {
                if case .finished(let results, let hostFailed) = session.connectionLost("lost connection with \(host): \(error)") {
                    return (results, hostFailed)
                }
                return ([], true)
            }
            var action = session.receive(reply)
            while true {
                do {
                    switch action {
                    case .send(let command):
                        connection.queue(line: command)
                        try await connection.flush()
                    case .startTLS:
                        do {
                            try await connection.startTLS(context: tlsContext, serverName: host)
                        } catch {
                            tlsFailure = "\(error)"
                            throw error
                        }
                        action = session.tlsEstablished()
                        continue
                    case .sendMessage:
                        connection.queue(DotStuffing.encode(message))
                        try await connection.flush()
                    case .finished(let results, let hostFailed):
                        return (results, hostFailed)
                    }
                } catch {
                    if case .finished(let results, let hostFailed) = session.connectionLost("lost connection with \(host): \(error)") {
                        return (results, hostFailed)
                    }
                    return ([], true)
                }
                break
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
