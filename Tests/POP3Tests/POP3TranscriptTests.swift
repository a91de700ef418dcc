// Runs every transcript in Tests/Fixtures/pop3 against POP3Session, driven the way
// Sources/ApusServer/POP3ConnectionHandler.swift drives it.
//
// POP3-specific directives: `@ tls=yes|no`, `@ implicit_tls=yes|no`, `@ auth_failure_limit=N`,
// `@ error_limit=N`; events `= tls`, `= password-ok USER`, `= password-fail`, `= auth-ok USER`,
// `= auth-fail`, `= auth-challenge B64`, `= maildrop SIZE:UID,…` (or `= maildrop -` for an empty
// one), `= maildrop-locked`, `= timeout`; actions `! starttls`, `! check-password USER PASS`,
// `! auth-start MECH B64|none`, `! auth-continue B64`, `! open-maildrop USER`,
// `! send-message N` (`! send-message N top=L` for TOP), `! update 1,2` (`! update -`), `! close`.

import MailCore
import POP3
import TranscriptSupport
import XCTest

final class POP3TranscriptMachine: TranscriptMachine {
    var outputs: [TranscriptOutput] = []
    private(set) var isClosed = false
    let lastMessage: [UInt8]? = nil

    private enum Wait: Equatable {
        case none, tls, password, sasl, maildrop
    }

    private var session: POP3Session
    private var input = LineBuffer()
    private var wait = Wait.none
    private let hostname = "apus.test"

    init(config: [String: String]) throws {
        var settings = TranscriptSettings(config)
        var configuration = POP3Configuration(hostname: hostname, tlsAvailable: try settings.flag("tls", true))
        let implicitTLS = try settings.flag("implicit_tls", false)
        if let n = try settings.number("auth_failure_limit") { configuration.authFailureLimit = n }
        if let n = try settings.number("error_limit") { configuration.errorLimit = n }
        try settings.finish()
        session = POP3Session(configuration: configuration, implicitTLS: implicitTLS)
    }

    func start() {
        perform(session.greet())
        pump()
    }

    func clientWrites(_ bytes: [UInt8]) {
        guard !isClosed else { return }
        // During the handshake the client's bytes go to the TLS engine, not to the command reader.
        if wait == .tls { return }
        input.append(bytes)
        pump()
    }

    func inject(_ event: String) throws {
        let parsed = TranscriptEvent(event)
        let name = parsed.name, argument = parsed.argument
        func expect(_ state: Wait) throws {
            guard wait == state else { throw TranscriptFailure("the machine waits for \(wait), not \(state)") }
            wait = .none
        }
        switch name {
        case "tls":
            try expect(.tls)
            session.tlsEstablished()
        case "password-ok", "password-fail", "auth-ok", "auth-fail":
            try expect(name.hasPrefix("password") ? .password : .sasl)
            perform(session.saslStep(name.hasSuffix("-ok") ? .success(user: argument) : .failure))
        case "auth-challenge":
            try expect(.sasl)
            guard let bytes = Base64.decode(argument) else { throw TranscriptFailure("bad base64") }
            perform(session.saslStep(.challenge(bytes)))
        case "maildrop":
            try expect(.maildrop)
            var entries: [MaildropEntry] = []
            if argument != "-" {
                for item in argument.split(separator: ",") {
                    let parts = item.split(separator: ":")
                    guard parts.count == 2, let size = Int(parts[0]) else { throw TranscriptFailure("bad entry '\(item)'") }
                    entries.append(MaildropEntry(size: size, uniqueID: String(parts[1])))
                }
            }
            perform(session.maildropOpened(entries))
        case "maildrop-locked":
            try expect(.maildrop)
            perform(session.maildropOpened(nil))
        case "timeout":
            guard !isClosed else { throw TranscriptFailure("the connection is closed") }
            perform(session.timedOut())
        default:
            throw TranscriptFailure("unknown event")
        }
        pump()
    }

    private func pump() {
        while !isClosed && wait == .none {
            switch input.nextLine(limit: POP3Session.commandLineLimit) {
            case .line(let line): perform(session.receive(line: line))
            case .tooLong: perform(session.lineTooLong())
            case .needMore: return
            }
        }
    }

    private func perform(_ action: POP3Action) {
        switch action {
        case .send(let lines):
            outputs += lines.map(TranscriptOutput.line)
        case .sendAndClose(let lines):
            outputs += lines.map(TranscriptOutput.line)
            outputs.append(.action("close"))
            isClosed = true
        case .startTLS:
            // POP3ConnectionHandler queues the +OK itself, then discards buffered input.
            outputs.append(.line("+OK Begin TLS negotiation"))
            outputs.append(.action("starttls"))
            input.discardAll()
            wait = .tls
        case .checkPassword(let user, let password):
            outputs.append(.action("check-password \(user) \(String(decoding: password, as: UTF8.self))"))
            wait = .password
        case .saslStart(let mechanism, let initial):
            outputs.append(.action("auth-start \(mechanism) \(initial.map(Self.base64) ?? "none")"))
            wait = .sasl
        case .saslContinue(let response):
            outputs.append(.action("auth-continue \(Self.base64(response))"))
            wait = .sasl
        case .openMaildrop(let user):
            outputs.append(.action("open-maildrop \(user)"))
            wait = .maildrop
        case .sendMessage(let number, let bodyLines):
            outputs.append(.action("send-message \(number)" + (bodyLines.map { " top=\($0)" } ?? "")))
        case .update(let deleting):
            // The handler deletes, answers and closes (the deletion succeeds here).
            outputs.append(.action("update " + (deleting.isEmpty ? "-" : deleting.map(String.init).joined(separator: ","))))
            outputs.append(.line("+OK \(hostname) POP3 server signing off"))
            outputs.append(.action("close"))
            isClosed = true
        }
    }

    private static func base64(_ bytes: [UInt8]) -> String { bytes.isEmpty ? "=" : Base64.encode(bytes) }
}

final class POP3TranscriptTests: XCTestCase {
    func testEveryTranscriptWholeAndByteByByte() {
        let (files, failures) = TranscriptRunner.runFolder(POP3TranscriptMachine.self, "pop3")
        XCTAssertGreaterThanOrEqual(files, 12, "Tests/Fixtures/pop3 is missing transcripts")
        for failure in failures { XCTFail(failure) }
    }

    // RFC 1939 §5: sizes in LIST/STAT are the message sizes the driver reported; `size(of:)`
    // is what RETR's "+OK n octets" uses.
    func testSizeOfReportsMaildropEntry() {
        var session = POP3Session(configuration: POP3Configuration(hostname: "h", tlsAvailable: false), implicitTLS: true)
        _ = session.greet()
        XCTAssertEqual(session.receive(line: Array("USER demo".utf8)), .send(["+OK send PASS"]))
        XCTAssertEqual(session.receive(line: Array("PASS pw".utf8)), .checkPassword(user: "demo", password: Array("pw".utf8)))
        XCTAssertEqual(session.saslStep(.success(user: "demo@localhost")), .openMaildrop(user: "demo@localhost"))
        _ = session.maildropOpened([MaildropEntry(size: 10, uniqueID: "a"), MaildropEntry(size: 20, uniqueID: "b")])
        XCTAssertEqual(session.size(of: 2), 20)
        XCTAssertEqual(session.user, "demo@localhost")
    }
}
