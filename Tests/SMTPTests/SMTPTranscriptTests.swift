// Runs every transcript in Tests/Fixtures/smtp against SMTPServerSession, driven the way
// Sources/ApusServer/SMTPConnectionHandler.swift drives it.

import MailCore
import SMTP
import TranscriptSupport
import XCTest

final class SMTPTranscriptMachine: TranscriptMachine {
    var outputs: [TranscriptOutput] = []
    private(set) var isClosed = false
    private(set) var lastMessage: [UInt8]?
    private(set) var lastEnvelope: Envelope?

    private enum Wait {
        case none
        case data(DataFramer)
        case commit
        case auth
        case tls
    }

    private var session: SMTPServerSession
    private var input = LineBuffer()
    private var wait = Wait.none
    private let implicitTLS: Bool

    init(config: [String: String]) throws {
        var settings = TranscriptSettings(config)
        func take(_ key: String) -> String? { settings.take(key) }
        func flag(_ key: String, _ fallback: Bool) throws -> Bool { try settings.flag(key, fallback) }
        func number(_ key: String) throws -> Int? { try settings.number(key) }
        func list(_ key: String, _ fallback: String) -> [String] {
            (take(key) ?? fallback).split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        }

        let service: SMTPService
        switch take("service") ?? "mx" {
        case "mx": service = .mx
        case "submission": service = .submission
        case "submissions": service = .submissions
        case let other: throw TranscriptFailure("service=\(other)")
        }
        let tls = try flag("tls", false)
        implicitTLS = try flag("implicit_tls", false)
        let relay = try flag("relay", false)
        let domains = Set(list("local_domains", "localhost"))
        let users = Set(list("users", "demo@localhost").map { $0.lowercased() })
        let hostname = take("hostname") ?? "apus.test"
        // `postmaster=address`: where postmaster@<local domain> goes when it has no mailbox.
        let postmaster = take("postmaster").flatMap { Mailbox(parsing: $0) }
        var configuration = SMTPServerConfiguration(
            hostname: hostname, service: service, tlsAvailable: tls, localDomains: domains,
            clientMayRelay: relay,
            verifyLocalRecipient: { rcpt in
                if users.contains(rcpt.description.lowercased()) { return .exists }
                if rcpt.localPart.lowercased() == "postmaster", let postmaster { return .redirect(postmaster) }
                return .unknown
            })
        if let n = try number("size_limit") { configuration.messageSizeLimit = n }
        if let n = try number("max_rcpt") { configuration.recipientLimit = n }
        if let n = try number("error_limit") { configuration.errorLimit = n }
        try settings.finish()
        session = SMTPServerSession(configuration: configuration, clientAddress: "192.0.2.1", implicitTLS: implicitTLS)
    }

    func start() {
        if implicitTLS { session.tlsEstablished() }
        perform([session.greet()])
        pump()
    }

    func clientWrites(_ bytes: [UInt8]) {
        guard !isClosed else { return }
        // During the TLS handshake the client's bytes go to the TLS engine, never to the
        // command reader (Connection.startTLS).
        if case .tls = wait { return }
        input.append(bytes)
        pump()
    }

    func inject(_ event: String) throws {
        let parsed = TranscriptEvent(event)
        let name = parsed.name, argument = parsed.argument
        func expectWait(_ matches: Bool, _ what: String) throws {
            if !matches { throw TranscriptFailure("the machine is not waiting for \(what)") }
        }
        switch name {
        case "tls":
            guard case .tls = wait else { throw TranscriptFailure("the machine did not ask for TLS") }
            wait = .none
            session.tlsEstablished()
        case "auth-ok", "auth-fail", "auth-tempfail", "auth-challenge":
            guard case .auth = wait else { throw TranscriptFailure("no SASL step is pending") }
            wait = .none
            let result: SASLStepResult
            switch name {
            case "auth-ok": result = .success(user: argument)
            case "auth-fail": result = .failure
            case "auth-tempfail": result = .temporaryFailure
            default:
                guard let bytes = Base64.decode(argument) else { throw TranscriptFailure("bad base64 '\(argument)'") }
                result = .challenge(bytes)
            }
            perform(session.authStep(result))
        case "commit-ok", "commit-fail":
            guard case .commit = wait else { throw TranscriptFailure("no commit is pending") }
            wait = .none
            perform([name == "commit-ok" ? session.committed(queueID: argument) : session.commitFailed()])
        case "timeout":
            guard !isClosed else { throw TranscriptFailure("the connection is closed") }
            perform([session.timedOut()])
        default:
            throw TranscriptFailure("unknown event")
        }
        pump()
    }

    /// SMTPConnectionHandler.run's loop: lines to the session until it asks for something else.
    private func pump() {
        while !isClosed {
            switch wait {
            case .none:
                switch input.nextLine(limit: SMTPServerSession.commandLineLimit) {
                case .line(let line): perform(session.receive(line: line))
                case .tooLong: perform(session.lineTooLong())
                case .needMore: return
                }
            case .data(var framer):
                // Connection.readData: feed what is buffered, keep what follows the terminator.
                let pending = input.takeAll()
                if let (outcome, consumed) = framer.feed(pending) {
                    input.append(pending.dropFirst(consumed))
                    wait = .none
                    perform(session.dataFinished(outcome, message: framer.message))
                } else {
                    wait = .data(framer)
                    return
                }
            case .commit, .auth, .tls:
                return
            }
        }
    }

    private func perform(_ actions: [SMTPServerAction]) {
        for action in actions {
            switch action {
            case .reply(let reply):
                emit(reply)
            case .replyAndClose(let reply):
                emit(reply)
                outputs.append(.action("close"))
                isClosed = true
                return
            case .startTLS:
                outputs.append(.action("starttls"))
                input.discardAll()
                wait = .tls
            case .authStart(let mechanism, let initial):
                outputs.append(.action("auth-start \(mechanism) \(initial.map(Self.base64) ?? "none")"))
                wait = .auth
            case .authContinue(let response):
                outputs.append(.action("auth-continue \(Self.base64(response))"))
                wait = .auth
            case .receiveData(let limit):
                wait = .data(DataFramer(sizeLimit: limit))
            case .commit(let envelope, let message):
                lastEnvelope = envelope
                lastMessage = message
                let sender = envelope.sender == .null ? "<>" : envelope.sender.description
                let recipients = envelope.recipients.map(\.description).joined(separator: ",")
                outputs.append(.action("commit \(sender) \(recipients)"))
                wait = .commit
            }
        }
    }

    private func emit(_ reply: Reply) {
        // Split the wire form back into lines: this also checks Reply.wireBytes.
        var text = String(decoding: reply.wireBytes, as: UTF8.self)
        guard text.hasSuffix("\r\n") else {
            outputs.append(.line("<reply without CRLF: \(text)>"))
            return
        }
        text.removeLast()  // "\r\n" is one Character
        for line in text.components(separatedBy: "\r\n") { outputs.append(.line(line)) }
    }

    private static func base64(_ bytes: [UInt8]) -> String { bytes.isEmpty ? "=" : Base64.encode(bytes) }
}

final class SMTPTranscriptTests: XCTestCase {
    func testEveryTranscriptWholeAndByteByByte() {
        let (files, failures) = TranscriptRunner.runFolder(SMTPTranscriptMachine.self, "smtp")
        XCTAssertGreaterThanOrEqual(files, 30, "Tests/Fixtures/smtp is missing transcripts")
        for failure in failures { XCTFail(failure) }
    }

    // The runner itself must be able to fail: a wrong expectation, an unexpected reply and a
    // missing reply are each reported with the line number.
    func testRunnerReportsMismatchWithFileAndLine() throws {
        let cases: [(String, String)] = [
            ("# RFC 5321 §4.1.1.1\nS~ 220 \nC: NOOP\nS: 250 2.0.0 Okay\n", ":4 "),
            ("# RFC 5321 §4.1.1.1\nS~ 220 \nC: NOOP\nC: NOOP\nS: 250 2.0.0 Ok\n", ":4 "),
            ("# RFC 5321 §4.1.1.1\nS~ 220 \nC: NOOP\n", ":3 "),
            ("# RFC 5321 §4.1.1.1\nS~ 220 \nC: QUIT\nS~ 221\n", ":4 "),
        ]
        let directory = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("apus-runner-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        for (index, (text, location)) in cases.enumerated() {
            let file = directory.appendingPathComponent("case\(index).txt")
            try Data(text.utf8).write(to: file)
            let failure = TranscriptRunner.run(SMTPTranscriptMachine.self, file: file, splitWrites: false)
            XCTAssertNotNil(failure, "case \(index) should fail")
            XCTAssertTrue(failure?.contains("case\(index).txt\(location)") ?? false, failure ?? "")
        }
    }

    func testEscapes() throws {
        XCTAssertEqual(try TranscriptParser.unescape("a\\r\\n\\t\\\\\\x00\\xff\\[3:.]b", line: 1),
                       [97, 13, 10, 9, 92, 0, 255, 46, 46, 46, 98])
        XCTAssertThrowsError(try TranscriptParser.unescape("\\q", line: 1))
    }
}
