// Wiring: config → SASL → TLS → spool recovery → scheduler → listeners. One process; every
// session is a task on the epoll reactor.

import Auth
import Config
import DNS
import Dispatch
import Delivery
import Glibc
import MailCore
import Mailbox
import Net
import SMTP
import Spool

/// Counts open client connections, overall and per IP address, so one client (or a flood) cannot
/// take every descriptor and session.
final class ConnectionLimiter: @unchecked Sendable {  // state guarded by `lock`
    private let lock = Lock()
    private var total = 0
    private var perIP: [String: Int] = [:]
    let maxTotal: Int
    let maxPerIP: Int

    init(maxTotal: Int, maxPerIP: Int) {
        self.maxTotal = maxTotal
        self.maxPerIP = maxPerIP
    }

    /// Takes a slot for `ip`, or returns false when a limit is reached. Trusted networks are
    /// exempt from the per-IP limit (Postfix: smtpd_client_event_limit_exceptions = $mynetworks).
    func admit(_ ip: String, trusted: Bool) -> Bool {
        lock.withLock {
            let current = perIP[ip, default: 0]
            guard total < maxTotal, trusted || current < maxPerIP else { return false }
            total += 1
            perIP[ip] = current + 1
            return true
        }
    }

    func release(_ ip: String) {
        lock.withLock {
            total -= 1
            let left = perIP[ip, default: 1] - 1
            perIP[ip] = left > 0 ? left : nil
        }
    }
}

/// Failed logins per client IP, shared by SMTP AUTH and POP3, over a sliding window: password
/// guessing from one address is cut off after a few tries, whichever protocol it uses.
final class AuthThrottle: @unchecked Sendable {  // state guarded by `lock`
    private let lock = Lock()
    private var failures: [String: [Int64]] = [:]
    let limit: Int
    let windowMilliseconds: Int64

    init(limit: Int, windowSeconds: Int) {
        self.limit = limit
        windowMilliseconds = Int64(windowSeconds) * 1000
    }

    func isBlocked(_ ip: String, now: Int64 = monotonicMilliseconds()) -> Bool {
        lock.withLock {
            let recent = (failures[ip] ?? []).filter { now - $0 < windowMilliseconds }
            failures[ip] = recent.isEmpty ? nil : recent
            return recent.count >= limit
        }
    }

    func recordFailure(_ ip: String, now: Int64 = monotonicMilliseconds()) {
        lock.withLock {
            var recent = (failures[ip] ?? []).filter { now - $0 < windowMilliseconds }
            recent.append(now)
            failures[ip] = Array(recent.suffix(limit))
            // Bound the table: forget the stalest addresses if a botnet fills it.
            if failures.count > 100_000 {
                for (key, times) in failures where (times.last ?? 0) < now - windowMilliseconds { failures[key] = nil }
            }
        }
    }
}

extension Connection {
    /// The handshake of an implicit-TLS port (RFC 8314). On failure nothing is said in the
    /// clear — the connection is just closed — and false is returned.
    func acceptImplicitTLS(_ context: TLSContext, client: String) async -> Bool {
        do {
            try await startTLS(context: context)
        } catch {
            Log.info("\(client): TLS handshake failed: \(error)")
            close()
            return false
        }
        Log.info("\(client): TLS established: \(tlsSummary ?? "")")
        return true
    }
}

/// What every session needs, shared read-only.
final class ServerContext: Sendable {
    let config: ApusConfig
    private let tlsContext: LockedValue<TLSContext?>
    /// The server TLS context for new handshakes; replaced on SIGHUP (sessions already running
    /// keep the one they started with).
    var tls: TLSContext? { tlsContext.withLock { $0 } }
    let spool: Spool
    let maildirs: MaildirStore
    let scheduler: Scheduler
    let limiter: ConnectionLimiter
    let authThrottle: AuthThrottle

    init(config: ApusConfig, tls: TLSContext?, spool: Spool, maildirs: MaildirStore, scheduler: Scheduler) {
        limiter = ConnectionLimiter(maxTotal: config.maxConnections, maxPerIP: config.maxConnectionsPerIP)
        tlsContext = LockedValue(tls)
        authThrottle = AuthThrottle(limit: config.authFailuresPerIP, windowSeconds: config.authFailureWindow)
        self.config = config
        self.spool = spool
        self.maildirs = maildirs
        self.scheduler = scheduler
    }

    /// Reloads the certificate and key from the configured paths (SIGHUP). A bad new pair is
    /// logged and the old one kept, so a typo never takes TLS down.
    func reloadTLS() {
        guard let certificate = config.tlsCertificate, let key = config.tlsKey else { return }
        do {
            let fresh = try TLSContext(serverCertificate: certificate, key: key)
            tlsContext.withLock { $0 = fresh }
            Log.info("reloaded TLS certificate \(certificate)")
        } catch {
            Log.error("TLS reload failed, keeping the old certificate: \(error)")
        }
    }
}

/// What the signal thread does on SIGHUP, set once the server is up.
struct SignalActions: Sendable {
    var reload: (@Sendable () -> Void)?
}
let signalActions = LockedValue(SignalActions())
/// Dispatch signal sources must stay alive for the life of the process; only `stopOnSignals`
/// touches this, once, at start-up.
nonisolated(unsafe) var signalSources: [any DispatchSourceSignal] = []

public enum ApusServer {
    /// Starts everything and returns once every listener is bound; sessions run in tasks.
    public static func start(configPath: String) async throws {
        let config = try ApusConfig.load(path: configPath)
        raiseDescriptorLimit(toServe: config.maxConnections)
        try SASL.initialize(sasldbPath: config.sasldbPath)
        var tls: TLSContext?
        if let certificate = config.tlsCertificate, let key = config.tlsKey {
            tls = try TLSContext(serverCertificate: certificate, key: key)
        }
        let spool = try Spool(directory: config.spoolDirectory)
        let recovered = try spool.recover()
        let maildirs = MaildirStore(root: config.mailDirectory)
        let resolver = try Resolver(forwarders: config.dnsServers)
        let outboundTLS = TLSPolicy(rawValue: config.outboundTLS) ?? .may
        let remote = RemoteDelivery(heloName: config.hostname, port: config.testOnlyOutboundSMTPPort,
                                    tlsPolicy: outboundTLS, resolver: resolver,
                                    tlsContext: try TLSContext(clientVerifying: outboundTLS == .verify))
        let scheduler = Scheduler(
            settings: .init(hostname: config.hostname, localDomains: Set(config.localDomains),
                            retry: RetryPolicy(firstSeconds: config.retryFirst, maximumSeconds: config.retryMax,
                                               lifetimeSeconds: config.queueLifetime),
                            concurrency: config.deliveryConcurrency),
            spool: spool, maildirs: maildirs, remote: remote)
        let context = ServerContext(config: config, tls: tls, spool: spool, maildirs: maildirs, scheduler: scheduler)

        var listeners: [(Listener, ServiceKind)] = []
        for spec in config.listeners {
            let listener = try Listener(ip: spec.ip, port: spec.port)
            listeners.append((listener, spec.service))
            Log.info("listening for \(spec.service.rawValue) on \(listener.address)")
        }
        if config.testOnlyOutboundSMTPPort != 25 {
            Log.warning("test_only_outbound_smtp_port = \(config.testOnlyOutboundSMTPPort): outbound SMTP does not use port 25")
        }
        Log.info("recovered \(recovered.count) queued message(s) from \(config.spoolDirectory)")
        await scheduler.start(recovered: recovered)
        for (listener, service) in listeners {
            Task { await acceptLoop(listener, service: service, context: context) }
        }
        signalActions.withLock { $0.reload = { context.reloadTLS() } }
        Log.info("ready: \(config.hostname), local domains \(config.localDomains.joined(separator: ", "))")
    }

    /// Over a connection limit: a short, well-formed refusal, then close (RFC 5321 §3.1 allows a
    /// 421 greeting; RFC 2449 [SYS/TEMP] for POP3). Implicit-TLS ports just close: nothing can be
    /// said before a handshake we do not want to spend CPU on.
    private static func refuse(_ connection: Connection, service: ServiceKind) async {
        Log.warning("[\(connection.peer.ip)]:\(connection.peer.port): too many connections, refusing \(service.rawValue)")
        switch service {
        case .smtp, .submission:
            connection.queue(Reply(421, "4.7.0", "Too many connections, try again later").wireBytes)
        case .pop3:
            connection.queue(line: "-ERR [SYS/TEMP] too many connections, try again later")
        case .submissions, .pop3s:
            break
        }
        try? await connection.flush()
        connection.close()
    }

    /// SIGTERM and SIGINT stop the daemon, SIGHUP reloads the TLS certificate and key. The
    /// signals are delivered to Dispatch sources (the default action is switched off first), so
    /// no handler runs inside arbitrary code. Stopping at any instant is safe: what was answered
    /// 250 is already durable.
    public static func stopOnSignals() {
        for stop in [SIGTERM, SIGINT] {
            signal(stop, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: stop, queue: .global())
            source.setEventHandler {
                Log.info("stopping on signal \(stop)")
                // _exit, not exit: atexit handlers (OpenSSL's) must not run under live threads.
                // Everything acknowledged is already durable.
                _exit(0)
            }
            source.resume()
            signalSources.append(source)
        }
        signal(SIGHUP, SIG_IGN)
        let hangup = DispatchSource.makeSignalSource(signal: SIGHUP, queue: .global())
        hangup.setEventHandler {
            let reload = signalActions.withLock { $0.reload }
            reload?()
        }
        hangup.resume()
        signalSources.append(hangup)
    }

    /// Every session holds a descriptor: raise the soft limit to the hard one so that
    /// `max_connections` is reachable, and say so when it is not.
    private static func raiseDescriptorLimit(toServe connections: Int) {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max
            _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        }
        if Int(limit.rlim_cur) < connections + 200 {
            Log.warning("open file limit \(limit.rlim_cur) is below max_connections \(connections) + 200")
        }
    }

    private static func acceptLoop(_ listener: Listener, service: ServiceKind, context: ServerContext) async {
        let timeout = service == .pop3 || service == .pop3s ? context.config.pop3Timeout : context.config.commandTimeout
        while true {
            do {
                let (fd, peer) = try await listener.accept()
                let ip = peer.ip
                Task {
                    let connection = Connection(fd: fd, peer: peer, readTimeout: timeout)
                    let trusted = context.config.relayNetworks.contains { $0.contains(ip) }
                    guard context.limiter.admit(ip, trusted: trusted) else {
                        await refuse(connection, service: service)
                        return
                    }
                    defer { context.limiter.release(ip) }
                    switch service {
                    case .smtp, .submission, .submissions:
                        let kind: SMTPService = service == .smtp ? .mx : (service == .submission ? .submission : .submissions)
                        var handler = SMTPConnectionHandler(server: context, service: kind, connection: connection,
                                                            trusted: trusted)
                        await handler.run()
                    case .pop3, .pop3s:
                        var handler = POP3ConnectionHandler(server: context, connection: connection,
                                                            implicitTLS: service == .pop3s)
                        await handler.run()
                    }
                }
            } catch {
                Log.error("accept on \(listener.address): \(error)")
                try? await Task.sleep(nanoseconds: 100_000_000)
            }
        }
    }
}
