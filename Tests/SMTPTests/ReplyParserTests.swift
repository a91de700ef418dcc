import MailCore
import SMTP
import XCTest

final class ReplyParserTests: XCTestCase {
    private func feed(_ parser: inout ReplyParser, _ text: String) throws -> Reply? {
        try parser.feed(line: Array(text.utf8))
    }

    // RFC 5321 §4.2.1: "250-" lines continue, "250 " ends the reply.
    func testMultiLineReply() throws {
        var parser = ReplyParser()
        XCTAssertNil(try feed(&parser, "250-mx.example.net"))
        XCTAssertNil(try feed(&parser, "250-PIPELINING"))
        XCTAssertNil(try feed(&parser, "250-SIZE 1000"))
        let reply = try XCTUnwrap(try feed(&parser, "250 STARTTLS"))
        XCTAssertEqual(reply, Reply(250, nil, ["mx.example.net", "PIPELINING", "SIZE 1000", "STARTTLS"]))
        // The parser is ready for the next reply.
        XCTAssertEqual(try feed(&parser, "221 bye"), Reply(221, nil, ["bye"]))
    }

    // RFC 2034 §4: the enhanced code is split off when its class matches the reply code.
    func testEnhancedStatusCodeIsSplitOff() throws {
        var parser = ReplyParser()
        XCTAssertEqual(try feed(&parser, "550 5.1.1 <x@y>: user unknown"), Reply(550, "5.1.1", ["<x@y>: user unknown"]))
        XCTAssertNil(try feed(&parser, "452-4.5.3 too many"))
        XCTAssertEqual(try feed(&parser, "452 4.5.3 recipients"), Reply(452, "4.5.3", ["too many", "recipients"]))
        // Class mismatch (2.x.x on a 5yz reply) is text, not an enhanced code.
        XCTAssertEqual(try feed(&parser, "550 2.0.0 odd"), Reply(550, nil, ["2.0.0 odd"]))
        XCTAssertEqual(try feed(&parser, "250 2.0.0"), Reply(250, "2.0.0", [""]))
        XCTAssertEqual(try feed(&parser, "250 1.2 x"), Reply(250, nil, ["1.2 x"]))
    }

    func testBareCodeWithoutText() throws {
        var parser = ReplyParser()
        XCTAssertEqual(try feed(&parser, "250"), Reply(250, nil, [""]))
        XCTAssertEqual(try feed(&parser, "354 "), Reply(354, nil, [""]))
    }

    func testMismatchedCodesThrow() throws {
        var parser = ReplyParser()
        XCTAssertNil(try feed(&parser, "250-first"))
        XCTAssertThrowsError(try feed(&parser, "251 second")) { error in
            XCTAssertEqual(error as? ReplyParseError, .malformed("251 second"))
        }
    }

    func testGarbageThrows() {
        for text in ["", "25", "abc hello", "2x0 ok", "HTTP/1.1 400 Bad Request", "250_ok", "099 low", "600 high", "-250 x"] {
            var parser = ReplyParser()
            XCTAssertThrowsError(try feed(&parser, text), String(reflecting: text))
        }
    }
}

final class SMTPServerSessionTests: XCTestCase {
    private func session(service: SMTPService, implicitTLS: Bool = false) -> SMTPServerSession {
        let configuration = SMTPServerConfiguration(hostname: "apus.test", service: service, tlsAvailable: true,
                                                    localDomains: ["localhost"], verifyLocalRecipient: { _ in .exists })
        return SMTPServerSession(configuration: configuration, clientAddress: "192.0.2.7", implicitTLS: implicitTLS)
    }

    private func send(_ s: inout SMTPServerSession, _ line: String) -> [SMTPServerAction] {
        s.receive(line: Array(line.utf8))
    }

    // RFC 3848: the Received: protocol says ESMTP + S (TLS) + A (authenticated); HELO gives SMTP.
    func testEnvelopeRecordsProtocolIdentityAndClient() throws {
        var s = session(service: .submissions, implicitTLS: true)
        _ = s.greet()
        _ = send(&s, "EHLO client.example")
        XCTAssertEqual(send(&s, "AUTH PLAIN AGRlbW9AbG9jYWxob3N0AHNlY3JldA=="),
                       [.authStart(mechanism: "PLAIN", initialResponse: Array("\0demo@localhost\0secret".utf8))])
        _ = s.authStep(.success(user: "demo@localhost"))
        XCTAssertEqual(s.authenticatedUser, "demo@localhost")
        _ = send(&s, "MAIL FROM:<demo@localhost>")
        _ = send(&s, "RCPT TO:<x@elsewhere.example>")
        XCTAssertEqual(send(&s, "DATA").last, .receiveData(sizeLimit: 26_214_400))
        let actions = s.dataFinished(.complete, message: Array("hi\r\n".utf8))
        guard case .commit(let envelope, let message)? = actions.first else { return XCTFail("\(actions)") }
        XCTAssertEqual(message, Array("hi\r\n".utf8))
        XCTAssertEqual(envelope.receivedProtocol, "ESMTPSA")
        XCTAssertEqual(envelope.authenticatedUser, "demo@localhost")
        XCTAssertEqual(envelope.heloName, "client.example")
        XCTAssertEqual(envelope.clientAddress, "192.0.2.7")

        var plain = session(service: .mx)
        _ = plain.greet()
        _ = send(&plain, "HELO client.example")
        _ = send(&plain, "MAIL FROM:<>")
        _ = send(&plain, "RCPT TO:<demo@localhost>")
        _ = send(&plain, "DATA")
        guard case .commit(let e2, _)? = plain.dataFinished(.complete, message: []).first else { return XCTFail() }
        XCTAssertEqual(e2.receivedProtocol, "SMTP")
        XCTAssertEqual(e2.sender, .null)
    }

    // RFC 5321 §6.3: a message with too many Received: fields is looping; refuse it with 5.4.6.
    func testMailLoopIsRefusedByHopCount() {
        func deliver(receivedFields: Int) -> [SMTPServerAction] {
            var s = session(service: .mx)
            _ = s.greet()
            _ = send(&s, "HELO client.example")
            _ = send(&s, "MAIL FROM:<a@example.org>")
            _ = send(&s, "RCPT TO:<demo@localhost>")
            _ = send(&s, "DATA")
            var message = String(repeating: "Received: from x by y; Thu, 3 Dec 2026 14:00:00 +0000\r\n", count: receivedFields)
            message += "Subject: loop\r\n\r\nReceived: in the body does not count\r\n"
            return s.dataFinished(.complete, message: Array(message.utf8))
        }
        guard case .commit? = deliver(receivedFields: SMTPServerSession.hopLimit - 1).first else { return XCTFail() }
        XCTAssertEqual(deliver(receivedFields: SMTPServerSession.hopLimit),
                       [.reply(Reply(554, "5.4.6", "Error: too many hops (mail loop?)"))])
    }

    // RFC 3207 §4.2: TLS makes the server forget HELO and AUTH state.
    func testTLSEstablishedForgetsHello() {
        var s = session(service: .mx)
        _ = s.greet()
        _ = send(&s, "EHLO a.example")
        XCTAssertEqual(s.heloName, "a.example")
        XCTAssertEqual(send(&s, "STARTTLS"), [.reply(Reply(220, "2.0.0", "Ready to start TLS")), .startTLS])
        s.tlsEstablished()
        XCTAssertNil(s.heloName)
        XCTAssertTrue(s.isTLS)
        XCTAssertFalse(s.isClosed)
    }

    func testEventsOutOfPhaseAreIgnored() {
        var s = session(service: .mx)
        _ = s.greet()
        XCTAssertEqual(s.authStep(.success(user: "x")), [])
        XCTAssertNil(s.authenticatedUser)
        XCTAssertEqual(s.dataFinished(.complete, message: []), [])
    }
}
