// Runs one POP3 session: feeds the sans-I/O `POP3Session` and performs its actions — TLS (STLS
// or implicit), password checks through Cyrus SASL, the maildrop lock, message transfer with
// byte-stuffing (RFC 1939 §3), deletions at QUIT.

import Auth
import Glibc
import MailCore
import Mailbox
import Net
import POP3

struct POP3ConnectionHandler {
    let server: ServerContext
    let connection: Connection
    let implicitTLS: Bool
    var session: POP3Session
    var sasl: SASLServerSession?
    let client: String
    var mailbox: Mailbox?
    var lockFD: Int32?
    var messages: [MaildirMessage] = []

    init(server: ServerContext, connection: Connection, implicitTLS: Bool) {
        self.server = server
        self.connection = connection
        self.implicitTLS = implicitTLS
        client = "[\(connection.peer.ip)]:\(connection.peer.port)"
        session = POP3Session(configuration: POP3Configuration(hostname: server.config.hostname,
                                                               tlsAvailable: server.tls != nil),
                              implicitTLS: implicitTLS)
    }

    mutating func run() async {
        Log.info("connect from \(client) to \(implicitTLS ? "pop3s" : "pop3")")
        defer {
            if let lockFD { server.maildirs.unlock(lockFD) }
            Log.info("disconnect from \(client)")
        }
        do {
            if implicitTLS, let tls = server.tls {
                guard await connection.acceptImplicitTLS(tls, client: client) else { return }
            }
            if try await perform(session.greet()) { return }
            try await connection.flush()
            while true {
                let action: POP3Action
                switch try await connection.readLine(limit: POP3Session.commandLineLimit) {
                case .line(let line): action = session.receive(line: line)
                case .tooLong: action = session.lineTooLong()
                case .needMore: continue
                }
                if try await perform(action) { return }
                if !connection.hasBufferedInput { try await connection.flush() }
            }
        } catch NetError.timedOut {
            _ = try? await perform(session.timedOut())
            Log.info("timeout after \(client)")
        } catch {
            if case NetError.closed = error {} else { Log.info("\(client): \(error)") }
        }
        await connection.shutdown()
    }

    private mutating func conversation() throws -> SASLServerSession {
        if let sasl { return sasl }
        let created = try SASLServerSession(service: "pop", hostname: server.config.hostname,
                                            defaultRealm: server.config.localDomains[0])
        sasl = created
        return created
    }

    private mutating func perform(_ action: POP3Action) async throws -> Bool {
        switch action {
        case .send(let lines):
            for line in lines { connection.queue(line: line) }
        case .sendAndClose(let lines):
            for line in lines { connection.queue(line: line) }
            try await connection.flush()
            await connection.shutdown()
            return true
        case .startTLS:
            guard let tls = server.tls else { return true }
            connection.queue(line: "+OK Begin TLS negotiation")
            do {
                try await connection.startTLS(context: tls)
            } catch {
                Log.info("\(client): TLS handshake failed: \(error)")
                return true
            }
            Log.info("\(client): TLS established: \(connection.tlsSummary ?? "")")
            session.tlsEstablished()
        case .checkPassword(let user, let password):
            if try await refuseThrottledClient() { return true }
            let result: SASLStepResult
            do {
                let sasl = try conversation()
                result = await Blocking.run { sasl.checkPassword(user: user, password: password) }
            } catch {
                Log.error("SASL: \(error)")
                result = .temporaryFailure
            }
            logAuth(result, method: "USER")
            return try await perform(session.saslStep(result))
        case .saslStart(let mechanism, let initial):
            if try await refuseThrottledClient() { return true }
            let result: SASLStepResult
            do {
                let sasl = try conversation()
                result = await Blocking.run { sasl.start(mechanism: mechanism, initialResponse: initial) }
            } catch {
                result = .temporaryFailure
            }
            logAuth(result, method: mechanism)
            return try await perform(session.saslStep(result))
        case .saslContinue(let response):
            guard let sasl else { return true }
            let result = await Blocking.run { sasl.step(response) }
            logAuth(result, method: "AUTH")
            return try await perform(session.saslStep(result))
        case .openMaildrop(let user):
            return try await perform(session.maildropOpened(await openMaildrop(user)))
        case .sendMessage(let number, let bodyLines):
            guard let mailbox else { return true }
            let entry = messages[number - 1]
            let maildirs = server.maildirs
            let bytes: [UInt8]
            do {
                bytes = try await Blocking.run { try maildirs.read(entry, of: mailbox) }
            } catch {
                connection.queue(line: "-ERR [SYS/TEMP] cannot read message")
                return false
            }
            connection.queue(line: "+OK \(entry.size) octets")
            let content = bodyLines.map { POP3ConnectionHandler.top(bytes, bodyLines: $0) } ?? bytes
            connection.queue(DotStuffing.encode(content))
        case .update(let numbers):
            var ok = true
            if let mailbox, !numbers.isEmpty {
                let doomed = numbers.map { messages[$0 - 1] }
                let maildirs = server.maildirs
                do {
                    try await Blocking.run { try maildirs.delete(doomed, of: mailbox) }
                    Log.info("\(client): pop3 user=\(mailbox) deleted=\(doomed.count)")
                } catch {
                    Log.error("\(client): delete failed: \(error)")
                    ok = false
                }
            }
            connection.queue(line: ok ? "+OK \(server.config.hostname) POP3 server signing off"
                                      : "-ERR [SYS/TEMP] some deleted messages not removed")
            try await connection.flush()
            await connection.shutdown()
            return true
        }
        return false
    }

    /// Password guessing from this address has hit the limit: answer without checking, hang up.
    private func refuseThrottledClient() async throws -> Bool {
        guard server.authThrottle.isBlocked(connection.peer.ip) else { return false }
        Log.warning("\(client): too many failed logins from this address; login refused")
        connection.queue(line: "-ERR [SYS/TEMP] too many failed logins, try later")
        try await connection.flush()
        await connection.shutdown()
        return true
    }

    private mutating func openMaildrop(_ user: String) async -> [MaildropEntry]? {
        guard let owner = Mailbox(parsing: user) else { return nil }
        let maildirs = server.maildirs
        let opened: (Int32, [MaildirMessage])? = await Blocking.run {
            guard let fd = maildirs.lock(owner) else { return nil }
            guard let list = try? maildirs.list(owner) else {
                maildirs.unlock(fd)
                return nil
            }
            return (fd, list)
        }
        guard let (fd, list) = opened else { return nil }
        lockFD = fd
        mailbox = owner
        messages = list
        return list.map { MaildropEntry(size: $0.size, uniqueID: $0.uniqueID) }
    }

    private func logAuth(_ result: SASLStepResult, method: String) {
        if result == .failure { server.authThrottle.recordFailure(connection.peer.ip) }
        switch result {
        case .success(let user): Log.info("\(client): pop3 login user=\(user) method=\(method)")
        case .failure: Log.warning("\(client): pop3 authentication failed (\(method))")
        case .temporaryFailure: Log.warning("\(client): pop3 SASL temporary failure")
        case .challenge: break
        }
    }

    /// TOP: the header section, the empty line, and the first `bodyLines` lines of the body.
    static func top(_ message: [UInt8], bodyLines: Int) -> [UInt8] {
        var i = 0
        var lineStart = 0
        // Find the end of the header section (first empty line).
        while i < message.count {
            if message[i] == 10 {
                let lineLength = i - lineStart
                lineStart = i + 1
                if lineLength == 0 || (lineLength == 1 && message[i - 1] == 13) { break }
            }
            i += 1
        }
        var end = min(lineStart, message.count)
        var remaining = bodyLines
        while remaining > 0 && end < message.count {
            if let lf = message[end...].firstIndex(of: 10) { end = lf + 1 } else { end = message.count }
            remaining -= 1
        }
        return Array(message[0..<end])
    }
}

