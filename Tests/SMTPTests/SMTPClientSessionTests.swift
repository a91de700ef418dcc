// The SMTP client state machine against scripted server replies (RFC 5321 §3.3, §4.2.5;
// PIPELINING RFC 2920 §3.1; STARTTLS RFC 3207; SIZE RFC 1870).

import MailCore
import SMTP
import XCTest

final class SMTPClientSessionTests: XCTestCase {
    let bob = Mailbox(localPart: "bob", domain: "example.net")
    let eve = Mailbox(localPart: "eve", domain: "example.net")
    let alice = Mailbox(localPart: "alice", domain: "example.org")

    private func session(_ rcpts: [Mailbox], policy: TLSPolicy = .may, reuse: Bool = false, size: Int = 100) -> SMTPClientSession {
        SMTPClientSession(heloName: "apus.example", sender: .mailbox(alice), recipients: rcpts,
                          messageSize: size, tlsPolicy: policy, allowReuse: reuse)
    }

    private func ehlo(_ extensions: [String]) -> Reply { Reply(250, nil, ["mx.example.net"] + extensions) }

    func testPipelinedTransactionSendsOneGroup() {
        var s = session([bob, eve])
        XCTAssertEqual(s.receive(Reply(220, nil, "ready")), .send(["EHLO apus.example"]))
        XCTAssertEqual(s.receive(ehlo(["PIPELINING", "SIZE 1000", "8BITMIME"])),
                       .send(["MAIL FROM:<alice@example.org> SIZE=100 BODY=8BITMIME",
                              "RCPT TO:<bob@example.net>", "RCPT TO:<eve@example.net>", "DATA"]))
        XCTAssertEqual(s.receive(Reply(250, "2.1.0", "ok")), .awaitReply)
        XCTAssertEqual(s.receive(Reply(250, "2.1.5", "ok")), .awaitReply)
        XCTAssertEqual(s.receive(Reply(550, "5.1.1", "no such user")), .awaitReply)
        XCTAssertEqual(s.receive(Reply(354, nil, "go ahead")), .sendMessage)
        XCTAssertEqual(s.receive(Reply(250, "2.0.0", "queued")), .send(["QUIT"]))
        guard case .finished(let results, let hostFailed, let reusable) = s.receive(Reply(221, "2.0.0", "bye")) else {
            return XCTFail("not finished")
        }
        XCTAssertEqual(results, [.delivered(Reply(250, "2.0.0", "queued")), .bounced(Reply(550, "5.1.1", "no such user"))])
        XCTAssertFalse(hostFailed)
        XCTAssertFalse(reusable)
    }

    func testWithoutPipeliningCommandsGoOneByOne() {
        var s = session([bob], policy: .none)
        _ = s.receive(Reply(220, nil, "ready"))
        XCTAssertEqual(s.receive(ehlo(["STARTTLS"])), .send(["MAIL FROM:<alice@example.org>"]))
        XCTAssertEqual(s.receive(Reply(250, nil, "ok")), .send(["RCPT TO:<bob@example.net>"]))
        XCTAssertEqual(s.receive(Reply(250, nil, "ok")), .send(["DATA"]))
        XCTAssertEqual(s.receive(Reply(354, nil, "go")), .sendMessage)
    }

    func testStartTLSThenEHLOAgain() {
        var s = session([bob])
        _ = s.receive(Reply(220, nil, "ready"))
        XCTAssertEqual(s.receive(ehlo(["STARTTLS", "PIPELINING"])), .send(["STARTTLS"]))
        XCTAssertEqual(s.receive(Reply(220, "2.0.0", "go ahead")), .startTLS)
        XCTAssertEqual(s.tlsEstablished(), .send(["EHLO apus.example"]))
        XCTAssertTrue(s.extensions.isEmpty, "RFC 3207 §4.2: forget pre-TLS extensions")
        XCTAssertEqual(s.receive(ehlo([])), .send(["MAIL FROM:<alice@example.org>"]))
        XCTAssertTrue(s.isTLS)
    }

    func testRequiredTLSNotOfferedFailsTheHost() {
        var s = session([bob], policy: .encrypt)
        _ = s.receive(Reply(220, nil, "ready"))
        XCTAssertEqual(s.receive(ehlo([])), .send(["QUIT"]))
        guard case .finished(let results, let hostFailed, _) = s.receive(Reply(221, nil, "bye")) else { return XCTFail() }
        XCTAssertTrue(hostFailed)
        XCTAssertEqual(results.first?.reply.enhanced, "4.7.5")
    }

    func testPermanentMailRefusalBouncesAllAndSkipsTheRestOfTheGroup() {
        var s = session([bob, eve])
        _ = s.receive(Reply(220, nil, "ready"))
        _ = s.receive(ehlo(["PIPELINING"]))
        XCTAssertEqual(s.receive(Reply(553, "5.7.1", "sender rejected")), .awaitReply)
        XCTAssertEqual(s.receive(Reply(503, "5.5.1", "need MAIL")), .awaitReply)
        XCTAssertEqual(s.receive(Reply(503, "5.5.1", "need MAIL")), .awaitReply)
        XCTAssertEqual(s.receive(Reply(503, "5.5.1", "need MAIL")), .send(["QUIT"]))
        guard case .finished(let results, let hostFailed, _) = s.receive(Reply(221, nil, "bye")) else { return XCTFail() }
        XCTAssertFalse(hostFailed)
        XCTAssertEqual(results, Array(repeating: .bounced(Reply(553, "5.7.1", "sender rejected")), count: 2))
    }

    func testDataAcceptedWithNoRecipientsSendsAnEmptyMessage() {
        // RFC 2920 §3.1: the server should refuse DATA; if it says 354 anyway, end the data.
        var s = session([bob])
        _ = s.receive(Reply(220, nil, "ready"))
        _ = s.receive(ehlo(["PIPELINING"]))
        _ = s.receive(Reply(250, nil, "ok"))
        _ = s.receive(Reply(550, "5.1.1", "unknown"))
        XCTAssertEqual(s.receive(Reply(354, nil, "go ahead")), .send(["."]))
        XCTAssertEqual(s.receive(Reply(554, "5.5.1", "no valid recipients")), .send(["QUIT"]))
    }

    func testTemporaryGreetingFailureTriesTheNextHost() {
        var s = session([bob])
        XCTAssertEqual(s.receive(Reply(421, "4.3.2", "busy")), .send(["QUIT"]))
        guard case .finished(let results, let hostFailed, _) = s.connectionLost("closed") else { return XCTFail() }
        XCTAssertTrue(hostFailed)
        XCTAssertEqual(results, [.deferred(Reply(421, "4.3.2", "busy"))])
    }

    func testPermanentEHLOFailureFallsBackToHELO() {
        var s = session([bob], policy: .none)
        _ = s.receive(Reply(220, nil, "ready"))
        XCTAssertEqual(s.receive(Reply(502, "5.5.2", "what?")), .send(["HELO apus.example"]))
        XCTAssertEqual(s.receive(Reply(250, nil, "hi")), .send(["MAIL FROM:<alice@example.org>"]))
    }

    func testMessageLargerThanAdvertisedSizeBouncesWithoutSending() {
        var s = session([bob], size: 5000)
        _ = s.receive(Reply(220, nil, "ready"))
        XCTAssertEqual(s.receive(ehlo(["SIZE 1000"])), .send(["QUIT"]))
        guard case .finished(let results, _, _) = s.receive(Reply(221, nil, "bye")) else { return XCTFail() }
        XCTAssertEqual(results.first?.reply.enhanced, "5.3.4")
    }

    func testReusableConnectionIsHandedBackInsteadOfQuit() {
        var first = session([bob], reuse: true)
        _ = first.receive(Reply(220, nil, "ready"))
        _ = first.receive(ehlo(["PIPELINING", "SIZE 100000"]))
        _ = first.receive(Reply(250, nil, "ok"))
        _ = first.receive(Reply(250, nil, "ok"))
        _ = first.receive(Reply(354, nil, "go"))
        guard case .finished(_, false, true) = first.receive(Reply(250, "2.0.0", "queued")) else {
            return XCTFail("expected a reusable finish")
        }
        var second = session([eve], reuse: true)
        XCTAssertEqual(second.resume(on: first.traits),
                       .send(["MAIL FROM:<alice@example.org> SIZE=100", "RCPT TO:<eve@example.net>", "DATA"]))
        XCTAssertFalse(second.receivedReply)
    }

    func testConnectionLostMidTransactionDefersWhatIsNotFinal() {
        var s = session([bob, eve])
        _ = s.receive(Reply(220, nil, "ready"))
        _ = s.receive(ehlo(["PIPELINING"]))
        _ = s.receive(Reply(250, nil, "ok"))
        _ = s.receive(Reply(550, "5.1.1", "unknown"))
        guard case .finished(let results, let hostFailed, false) = s.connectionLost("reset") else { return XCTFail() }
        XCTAssertFalse(hostFailed)
        XCTAssertEqual(results[0], .bounced(Reply(550, "5.1.1", "unknown")))
        XCTAssertEqual(results[1].reply.code, 451)
    }

    func testIntermediateReplyToMailHangsUpWithoutQuit() {
        var s = session([bob], policy: .none)
        _ = s.receive(Reply(220, nil, "ready"))
        _ = s.receive(ehlo([]))
        guard case .finished(let results, true, false) = s.receive(Reply(354, nil, "go ahead")) else {
            return XCTFail("expected a host failure without QUIT")
        }
        XCTAssertEqual(results.first?.reply.enhanced, "4.5.0")
    }
}
