// Runs one SMTP server session: reads commands, feeds the sans-I/O `SMTPServerSession`, and
// performs its actions — replies, TLS, SASL through Cyrus, DATA framing, spooling. Replies are
// flushed only when the client has nothing more pipelined (RFC 2920 §3.1).

import Auth
import Delivery
import MailCore
import Net
import SMTP
import Spool

struct SMTPConnectionHandler {
    let server: ServerContext
    let service: SMTPService
    let connection: Connection
    var session: SMTPServerSession
    var sasl: SASLServerSession?
    let client: String

    /// `trusted`: the client is in `relay_networks` (the accept loop has already checked).
    init(server: ServerContext, service: SMTPService, connection: Connection, trusted: Bool) {
        self.server = server
        self.service = service
        self.connection = connection
        client = "[\(connection.peer.ip)]:\(connection.peer.port)"
        let ip = connection.peer.ip
        let config = server.config
        let maildirs = server.maildirs
        let configuration = SMTPServerConfiguration(
            hostname: config.hostname, service: service, messageSizeLimit: config.messageSizeLimit,
            recipientLimit: config.recipientLimit, tlsAvailable: server.tls != nil,
            authMechanisms: SASL.mechanisms, localDomains: Set(config.localDomains),
            clientMayRelay: trusted,
            enforceSenderOwnership: config.enforceSenderOwnership,
            verifyLocalRecipient: { [postmaster = config.postmaster] rcpt in
                if maildirs.exists(rcpt) { return .exists }
                if !maildirs.isAvailable { return .unavailable }
                if rcpt.localPart.lowercased() == "postmaster", let postmaster { return .redirect(postmaster) }
                return .unknown
            })
        session = SMTPServerSession(configuration: configuration, clientAddress: ip,
                                    implicitTLS: service == .submissions)
    }

    mutating func run() async {
        Log.info("connect from \(client) to \(service.rawValue)")
        defer { Log.info("disconnect from \(client)") }
        do {
            if service == .submissions, let tls = server.tls {
                guard await connection.acceptImplicitTLS(tls, client: client) else { return }
                session.tlsEstablished()
            }
            if try await perform([session.greet()]) { return }
            try await connection.flush()
            while true {
                let actions: [SMTPServerAction]
                switch try await connection.readLine(limit: SMTPServerSession.commandLineLimit) {
                case .line(let line): actions = session.receive(line: line)
                case .tooLong: actions = session.lineTooLong()
                case .needMore: continue
                }
                if try await perform(actions) { return }
                if !connection.hasBufferedInput { try await connection.flush() }
            }
        } catch NetError.timedOut {
            _ = try? await perform([session.timedOut()])
            Log.info("timeout after \(client)")
        } catch {
            if case NetError.closed = error {} else { Log.info("\(client): \(error)") }
        }
        await connection.shutdown()
    }

    /// Performs actions in order; returns true when the connection is to be closed.
    private mutating func perform(_ actions: [SMTPServerAction]) async throws -> Bool {
        for action in actions {
            switch action {
            case .reply(let reply):
                connection.queue(reply.wireBytes)
            case .replyAndClose(let reply):
                connection.queue(reply.wireBytes)
                try await connection.flush()
                await connection.shutdown()
                return true
            case .startTLS:
                guard let tls = server.tls else { return true }
                do {
                    try await connection.startTLS(context: tls)
                } catch {
                    Log.info("\(client): TLS handshake failed: \(error)")
                    return true
                }
                Log.info("\(client): TLS established: \(connection.tlsSummary ?? "")")
                session.tlsEstablished()
            case .authStart(let mechanism, let initial):
                if server.authThrottle.isBlocked(connection.peer.ip) {
                    Log.warning("\(client): too many failed logins from this address; AUTH refused")
                    connection.queue(Reply(421, "4.7.0", "\(server.config.hostname) Too many failed authentications, try later").wireBytes)
                    try await connection.flush()
                    await connection.shutdown()
                    return true
                }
                let result: SASLStepResult
                do {
                    if sasl == nil {
                        sasl = try SASLServerSession(service: "smtp", hostname: server.config.hostname,
                                                     defaultRealm: server.config.localDomains[0])
                    }
                    let conversation = sasl!
                    result = await Blocking.run { conversation.start(mechanism: mechanism, initialResponse: initial) }
                } catch {
                    Log.error("SASL: \(error)")
                    result = .temporaryFailure
                }
                logAuth(result, mechanism: mechanism)
                if try await perform(session.authStep(result)) { return true }
            case .authContinue(let response):
                guard let conversation = sasl else { return true }
                let result = await Blocking.run { conversation.step(response) }
                logAuth(result, mechanism: "")
                if try await perform(session.authStep(result)) { return true }
            case .receiveData(let limit):
                try await connection.flush()
                var framer = DataFramer(sizeLimit: limit)
                let outcome = try await connection.readData(into: &framer)
                if try await perform(session.dataFinished(outcome, message: framer.message)) { return true }
            case .commit(let envelope, let message):
                if try await perform([await commit(envelope, message)]) { return true }
            }
        }
        return false
    }

    private func logAuth(_ result: SASLStepResult, mechanism: String) {
        if result == .failure { server.authThrottle.recordFailure(connection.peer.ip) }
        switch result {
        case .success(let user): Log.info("\(client): sasl_method=\(mechanism.isEmpty ? "-" : mechanism), sasl_username=\(user)")
        case .failure: Log.warning("\(client): SASL \(mechanism) authentication failed")
        case .temporaryFailure: Log.warning("\(client): SASL temporary failure")
        case .challenge: break
        }
    }

    private mutating func commit(_ envelope: Envelope, _ message: [UInt8]) async -> SMTPServerAction {
        let queueID = QueueID.next()
        let arrival = unixMilliseconds()
        let received = receivedHeader(envelope: envelope, queueID: queueID, arrival: arrival)
        let spooled = received + message
        do {
            let queued = try await server.spool.accept(envelope: envelope, message: spooled,
                                                       arrival: arrival, queueID: queueID,
                                                       runBlocking: { work in try await Blocking.run(work) })
            var clientLine = "\(queueID): client=\(client)"
            if let user = envelope.authenticatedUser { clientLine += ", sasl_username=\(user)" }
            Log.info(clientLine)
            Log.info("\(queueID): from=<\(envelope.sender)>, size=\(queued.size), nrcpt=\(envelope.recipients.count)")
            await server.scheduler.enqueue(queued, body: spooled)
            return session.committed(queueID: queueID.value)
        } catch {
            Log.error("\(client): cannot queue message: \(error)")
            return session.commitFailed()
        }
    }

    /// RFC 5321 §4.4 trace header, with the TLS details in a comment as Postfix writes them.
    private func receivedHeader(envelope: Envelope, queueID: QueueID, arrival: Int64) -> [UInt8] {
        let helo = envelope.heloName.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) ? envelope.heloName : "unknown"
        var text = "Received: from \(helo) ([\(connection.peer.ip)])\r\n"
        if let summary = connection.tlsSummary { text += "\t(using \(summary))\r\n" }
        text += "\tby \(server.config.hostname) (Apus) with \(envelope.receivedProtocol) id \(queueID)"
        if envelope.recipients.count == 1 { text += "\r\n\tfor <\(envelope.recipients[0])>" }
        text += "; \(MailDate.format(unixSeconds: arrival / 1000))\r\n"
        return Array(text.utf8)
    }
}
