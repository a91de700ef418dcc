// Apus's one config file: `key = value` lines, `#` comments, `listen` repeatable. Every setting
// and its default is declared here, once, with its unit. Errors name file:line, the way
// administrators expect from `postfix check`.

import Glibc
import MailCore

public enum ServiceKind: String, Sendable, CaseIterable {
    case smtp, submission, submissions, pop3, pop3s
}

public struct ListenSpec: Sendable, Equatable {
    public var service: ServiceKind
    public var ip: String
    public var port: Int
}

public struct ConfigError: Error, CustomStringConvertible, Sendable {
    public var file: String
    public var line: Int
    public var message: String
    public var description: String { line > 0 ? "\(file):\(line): \(message)" : "\(file): \(message)" }
}

public struct ApusConfig: Sendable {
    /// Our name in greetings, EHLO and Received: headers.
    public var hostname = ApusConfig.systemHostname()
    /// Domains whose mail is delivered to local Maildirs.
    public var localDomains: [String] = ["localhost"]
    /// Queue: message files and the journal.
    public var spoolDirectory = "/var/spool/apus"
    /// Maildirs live at <mail_directory>/<domain>/<localpart>/.
    public var mailDirectory = "/var/mail/apus"
    /// Apus's own Cyrus sasldb (never /etc/sasldb2 implicitly).
    public var sasldbPath = "/etc/apus/sasldb2"
    public var tlsCertificate: String?
    public var tlsKey: String?
    /// DNS forwarders "ip" or "ip@port"; empty means /etc/resolv.conf.
    public var dnsServers: [String] = []
    public var listeners: [ListenSpec] = []
    /// Clients allowed to relay through port 25 without AUTH (CIDR). Empty: nobody.
    public var relayNetworks: [NetworkRange] = []
    /// Largest message accepted, in bytes (SIZE, RFC 1870). 25 MiB.
    public var messageSizeLimit = 26_214_400
    /// Recipients per message (Postfix smtpd_recipient_limit).
    public var recipientLimit = 1000
    /// Seconds the server waits for a client command or data chunk (RFC 5321 §4.5.3.2: 5 min).
    public var commandTimeout = 300
    /// Seconds a POP3 client may stay idle (RFC 1939 §3: the autologout timer is at least 10 min).
    public var pop3Timeout = 600
    /// Seconds before the first retry of a temporary failure (Postfix minimal_backoff_time).
    public var retryFirst = 300
    /// Longest wait between retries, seconds (Postfix maximal_backoff_time).
    public var retryMax = 3600
    /// Seconds a message may stay queued before it is bounced (Postfix maximal_queue_lifetime: 5 days).
    public var queueLifetime = 5 * 86_400
    /// Simultaneous outbound deliveries.
    public var deliveryConcurrency = 20
    /// Client connections open at once, all services together; more wait in the listen backlog
    /// after a 421 (SMTP) or -ERR (POP3).
    public var maxConnections = 1000
    /// Client connections open at once from one IP address (Postfix smtpd_client_connection_count_limit).
    public var maxConnectionsPerIP = 50
    /// Failed logins (SMTP AUTH and POP3 together) one IP address may make within
    /// `authFailureWindow` before its further attempts are refused unchecked.
    public var authFailuresPerIP = 10
    /// Seconds over which failed logins are counted.
    public var authFailureWindow = 600
    /// Outbound TLS: none | may | encrypt | verify (RFC 7435 opportunistic by default).
    public var outboundTLS = "may"
    /// Where mail to postmaster@<local domain> goes when no such mailbox exists (RFC 5321
    /// §4.5.1 requires accepting it). Unset: postmaster needs a mailbox of its own.
    public var postmaster: Mailbox?
    /// An authenticated user may send only as its own address.
    public var enforceSenderOwnership = true
    /// Outbound SMTP port. Only tests change it, hence the name.
    public var testOnlyOutboundSMTPPort = 25

    public init() {}

    public static func systemHostname() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        gethostname(&buffer, 255)
        let name = String(nulTerminated: buffer)
        return name.isEmpty ? "localhost" : name
    }

    public static func load(path: String) throws(ConfigError) -> ApusConfig {
        guard let file = fopen(path, "r") else {
            throw ConfigError(file: path, line: 0, message: "cannot open: \(String(cString: strerror(errno)))")
        }
        defer { fclose(file) }
        var text: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = fread(&chunk, 1, chunk.count, file)
            if n <= 0 { break }
            text.append(contentsOf: chunk[0..<n])
        }
        return try parse(String(decoding: text, as: UTF8.self), file: path)
    }

    public static func parse(_ text: String, file: String) throws(ConfigError) -> ApusConfig {
        var config = ApusConfig()
        var seen: [String: Int] = [:]
        var listenLines: [Int] = []  // line of each entry of config.listeners
        var lineNumber = 0
        for rawLine in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            var line = Substring(rawLine)
            if let hash = line.firstIndex(of: "#") { line = line[..<hash] }
            let trimmed = line.trimmingCharacters
            if trimmed.isEmpty { continue }
            func fail(_ message: String) -> ConfigError { ConfigError(file: file, line: lineNumber, message: message) }
            guard let eq = trimmed.firstIndex(of: "=") else { throw fail("expected 'key = value'") }
            let key = String(trimmed[..<eq].trimmingCharacters)
            let value = String(trimmed[trimmed.index(after: eq)...].trimmingCharacters)
            if key != "listen", let first = seen[key] {
                throw fail("'\(key)' is already set on line \(first)")
            }
            seen[key] = lineNumber
            func integer(min: Int = 0) throws(ConfigError) -> Int {
                guard let n = Int(value), n >= min else { throw fail("'\(key)' needs a whole number ≥ \(min), not '\(value)'") }
                return n
            }
            func duration() throws(ConfigError) -> Int {
                guard let seconds = parseDuration(value) else {
                    throw fail("'\(key)' needs a duration such as 30s, 5m, 1h or 5d, not '\(value)'")
                }
                return seconds
            }
            func list() -> [String] {
                value.split(whereSeparator: { $0 == "," || $0 == " " || $0 == "\t" }).map(String.init)
            }
            func boolean() throws(ConfigError) -> Bool {
                switch value.lowercased() {
                case "yes", "true", "on": return true
                case "no", "false", "off": return false
                default: throw fail("'\(key)' needs yes or no, not '\(value)'")
                }
            }
            switch key {
            case "hostname":
                guard !value.isEmpty, !value.contains(" ") else { throw fail("hostname must be one name") }
                config.hostname = value
            case "local_domains": config.localDomains = list().map { $0.lowercased() }
            case "spool_directory": config.spoolDirectory = value
            case "mail_directory": config.mailDirectory = value
            case "sasldb_path": config.sasldbPath = value
            case "tls_certificate": config.tlsCertificate = value
            case "tls_key": config.tlsKey = value
            case "dns_servers":
                config.dnsServers = list()
                for server in config.dnsServers {
                    let parts = server.split(separator: "@", omittingEmptySubsequences: false)
                    guard parts.count <= 2, !parts[0].isEmpty, NetworkRange.isIPAddress(String(parts[0])),
                          parts.count == 1 || Int(parts[1]).map({ $0 > 0 && $0 < 65536 }) == true
                    else { throw fail("dns_servers: '\(server)' is not ip or ip@port") }
                }
            case "listen":
                let words = list()
                guard words.count == 2, let service = ServiceKind(rawValue: words[0]) else {
                    throw fail("listen needs '<service> <ip>:<port>' with service one of "
                               + ServiceKind.allCases.map(\.rawValue).joined(separator: ", "))
                }
                guard let (ip, port) = splitHostPort(words[1]), NetworkRange.isIPAddress(ip) else {
                    throw fail("listen: '\(words[1])' is not <ip>:<port> (IPv6 as [::1]:25)")
                }
                config.listeners.append(ListenSpec(service: service, ip: ip, port: port))
                listenLines.append(lineNumber)
            case "relay_networks":
                var ranges: [NetworkRange] = []
                for item in list() {
                    guard let range = NetworkRange(item) else { throw fail("relay_networks: '\(item)' is not a CIDR range") }
                    ranges.append(range)
                }
                config.relayNetworks = ranges
            case "message_size_limit": config.messageSizeLimit = try integer(min: 1024)
            case "recipient_limit": config.recipientLimit = try integer(min: 1)
            case "command_timeout": config.commandTimeout = try duration()
            case "pop3_timeout": config.pop3Timeout = try duration()
            case "retry_first": config.retryFirst = try duration()
            case "retry_max": config.retryMax = try duration()
            case "queue_lifetime": config.queueLifetime = try duration()
            case "delivery_concurrency": config.deliveryConcurrency = try integer(min: 1)
            case "max_connections": config.maxConnections = try integer(min: 1)
            case "max_connections_per_ip": config.maxConnectionsPerIP = try integer(min: 1)
            case "auth_failures_per_ip": config.authFailuresPerIP = try integer(min: 1)
            case "auth_failure_window": config.authFailureWindow = try duration()
            case "outbound_tls":
                guard ["none", "may", "encrypt", "verify"].contains(value) else {
                    throw fail("outbound_tls must be none, may, encrypt or verify")
                }
                config.outboundTLS = value
            case "enforce_sender_ownership": config.enforceSenderOwnership = try boolean()
            case "postmaster":
                guard let mailbox = Mailbox(parsing: value) else { throw fail("postmaster: '\(value)' is not an address") }
                config.postmaster = mailbox
            case "test_only_outbound_smtp_port":
                let port = try integer(min: 1)
                guard port < 65536 else { throw fail("port out of range") }
                config.testOnlyOutboundSMTPPort = port
            default:
                throw fail("unknown setting '\(key)'")
            }
        }
        if (config.tlsCertificate == nil) != (config.tlsKey == nil) {
            throw ConfigError(file: file, line: seen["tls_certificate"] ?? seen["tls_key"] ?? 0,
                              message: "tls_certificate and tls_key must be set together")
        }
        let needsTLS: Set<ServiceKind> = [.submission, .submissions, .pop3s]
        if config.tlsCertificate == nil, let i = config.listeners.firstIndex(where: { needsTLS.contains($0.service) }) {
            let l = config.listeners[i]
            throw ConfigError(file: file, line: listenLines[i],
                              message: "listen \(l.service.rawValue) needs tls_certificate and tls_key")
        }
        if config.localDomains.isEmpty {
            throw ConfigError(file: file, line: seen["local_domains"] ?? 0, message: "local_domains is empty")
        }
        return config
    }
}

/// "30s", "5m", "1h", "5d", or a bare number of seconds.
public func parseDuration(_ text: String) -> Int? {
    guard let last = text.last else { return nil }
    let multipliers: [Character: Int] = ["s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800]
    if let multiplier = multipliers[last] {
        guard let n = Int(text.dropLast()), n >= 0 else { return nil }
        let (seconds, overflow) = n.multipliedReportingOverflow(by: multiplier)
        return overflow ? nil : seconds
    }
    guard let n = Int(text), n >= 0 else { return nil }
    return n
}

func splitHostPort(_ text: String) -> (String, Int)? {
    var host: Substring
    var portText: Substring
    if text.hasPrefix("[") {
        guard let close = text.firstIndex(of: "]") else { return nil }
        host = text[text.index(after: text.startIndex)..<close]
        let rest = text[text.index(after: close)...]
        guard rest.first == ":" else { return nil }
        portText = rest.dropFirst()
    } else {
        guard let colon = text.lastIndex(of: ":") else { return nil }
        host = text[..<colon]
        portText = text[text.index(after: colon)...]
    }
    guard let port = Int(portText), port >= 0, port < 65536 else { return nil }
    return (String(host), port)
}

/// An IPv4 or IPv6 CIDR range, e.g. 127.0.0.0/8 or ::1/128.
public struct NetworkRange: Sendable, Equatable {
    let address: [UInt8]
    let prefix: Int

    public init?(_ text: String) {
        let parts = text.split(separator: "/")
        guard !parts.isEmpty, parts.count <= 2, let bytes = NetworkRange.bytes(String(parts[0])) else { return nil }
        let maxPrefix = bytes.count * 8
        let prefix = parts.count == 2 ? Int(parts[1]) : maxPrefix
        guard let prefix, prefix >= 0, prefix <= maxPrefix else { return nil }
        address = bytes
        self.prefix = prefix
    }

    public func contains(_ ip: String) -> Bool {
        guard let other = NetworkRange.bytes(ip), other.count == address.count else { return false }
        var remaining = prefix
        for i in 0..<address.count where remaining > 0 {
            let bits = min(8, remaining)
            let mask = UInt8(truncatingIfNeeded: 0xFF << (8 - bits))
            if address[i] & mask != other[i] & mask { return false }
            remaining -= bits
        }
        return true
    }

    static func bytes(_ ip: String) -> [UInt8]? {
        if ip.contains(":") {
            var a = in6_addr()
            guard inet_pton(AF_INET6, ip, &a) == 1 else { return nil }
            return withUnsafeBytes(of: &a) { Array($0) }
        }
        var a = in_addr()
        guard inet_pton(AF_INET, ip, &a) == 1 else { return nil }
        return withUnsafeBytes(of: &a) { Array($0) }
    }

    public static func isIPAddress(_ text: String) -> Bool { bytes(text) != nil }
}

extension Substring {
    var trimmingCharacters: Substring {
        var s = self
        while let f = s.first, f == " " || f == "\t" || f == "\r" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\r" { s = s.dropLast() }
        return s
    }
}
