// Fuzz targets for every parser that reads bytes from the network or the disk. Each target
// checks properties, not just "no crash": replies are well-formed, framing gives the same result
// fed whole or byte by byte, parsed values round-trip. `apus-fuzz` runs them under libFuzzer
// (`make fuzz`); FuzzCorpusTests replays the committed corpus in every `make test`.

import Config
import MailCore
import POP3
import SMTP
import Spool

public enum FuzzTarget: UInt8, CaseIterable, Sendable {
    case smtpServer, pop3Server, dataFraming, replyParser, addresses, config, journal

    /// The first input byte picks the target, the rest is its input.
    public static func run(_ input: [UInt8]) {
        guard let first = input.first else { return }
        let target = FuzzTarget.allCases[Int(first) % FuzzTarget.allCases.count]
        target.run(Array(input.dropFirst()))
    }

    public func run(_ bytes: [UInt8]) {
        switch self {
        case .smtpServer: FuzzTarget.smtp(bytes)
        case .pop3Server: FuzzTarget.pop3(bytes)
        case .dataFraming: FuzzTarget.framing(bytes)
        case .replyParser: FuzzTarget.replies(bytes)
        case .addresses: FuzzTarget.addresses(bytes)
        case .config: _ = try? ApusConfig.parse(String(decoding: bytes, as: UTF8.self), file: "fuzz.conf")
        case .journal: FuzzTarget.journal(bytes)
        }
    }

    static func check(_ condition: Bool, _ message: @autoclosure () -> String) {
        if !condition { fatalError("fuzz property violated: \(message())") }
    }

    /// A whole SMTP dialogue through the server state machine, driven as the connection handler
    /// drives it; TLS, SASL and the spool answer yes or no depending on the input.
    static func smtp(_ bytes: [UInt8]) {
        let configuration = SMTPServerConfiguration(
            hostname: "fuzz.example", service: bytes.count % 2 == 0 ? .mx : .submission, messageSizeLimit: 4096,
            recipientLimit: 5, tlsAvailable: true, localDomains: ["localhost"],
            verifyLocalRecipient: { $0.localPart == "demo" ? .exists : .unknown })
        var session = SMTPServerSession(configuration: configuration, clientAddress: "192.0.2.1", implicitTLS: false)
        var buffer = LineBuffer()
        var pending = [session.greet()]
        var input = bytes[...]
        var steps = 0
        while !session.isClosed && steps < 10_000 {
            steps += 1
            var next: [SMTPServerAction] = []
            for action in pending {
                switch action {
                case .reply(let reply), .replyAndClose(let reply):
                    check((200...599).contains(reply.code), "reply code \(reply.code)")
                    let wire = reply.wireBytes
                    let breaks = wire.indices.filter { wire[$0] == 10 || wire[$0] == 13 }.count
                    check(wire.last == 10 && breaks == 2 * reply.lines.count, "reply framing \(reply)")
                case .startTLS:
                    buffer.discardAll()
                    session.tlsEstablished()
                case .authStart, .authContinue:
                    next += session.authStep(input.first.map { $0 % 3 == 0 ? .success(user: "demo@localhost") : .failure } ?? .failure)
                case .receiveData(let limit):
                    var framer = DataFramer(sizeLimit: limit)
                    let rest = Array(buffer.takeAll()) + Array(input)
                    input = []
                    if let (outcome, consumed) = framer.feed(rest[...]) {
                        buffer.append(rest[consumed...])
                        next += session.dataFinished(outcome, message: framer.message)
                    } else {
                        return
                    }
                case .commit:
                    next.append(bytes.count % 3 == 0 ? session.commitFailed() : session.committed(queueID: "0000000000000001"))
                }
            }
            pending = next
            if !pending.isEmpty { continue }
            switch buffer.nextLine(limit: SMTPServerSession.commandLineLimit) {
            case .line(let line): pending = session.receive(line: line)
            case .tooLong: pending = session.lineTooLong()
            case .needMore:
                guard !input.isEmpty else { return }
                let chunk = input.prefix(Int(input.first! % 64) + 1)
                input = input.dropFirst(chunk.count)
                buffer.append(chunk)
            }
        }
    }

    static func pop3(_ bytes: [UInt8]) {
        var session = POP3Session(configuration: POP3Configuration(hostname: "fuzz.example", tlsAvailable: true),
                                  implicitTLS: bytes.first.map { $0 & 1 == 1 } ?? false)
        var buffer = LineBuffer()
        buffer.append(bytes)
        var action = session.greet()
        var steps = 0
        while !session.isClosed && steps < 10_000 {
            steps += 1
            switch action {
            case .send(let lines), .sendAndClose(let lines):
                for line in lines { check(!line.contains("\r") && !line.contains("\n"), "POP3 line \(line)") }
            case .startTLS: buffer.discardAll(); session.tlsEstablished()
            case .checkPassword(let user, _):
                action = session.saslStep(user.hasPrefix("demo") ? .success(user: "demo@localhost") : .failure)
                continue
            case .saslStart, .saslContinue:
                action = session.saslStep(.failure)
                continue
            case .openMaildrop:
                action = session.maildropOpened([MaildropEntry(size: 10, uniqueID: "a"), MaildropEntry(size: 20, uniqueID: "b")])
                continue
            case .sendMessage(let number, _):
                check(number >= 1 && number <= 2, "RETR of message \(number)")
            case .update(let numbers):
                check(numbers.allSatisfy { $0 >= 1 && $0 <= 2 }, "DELE of \(numbers)")
                return
            }
            switch buffer.nextLine(limit: POP3Session.commandLineLimit) {
            case .line(let line): action = session.receive(line: line)
            case .tooLong: action = session.lineTooLong()
            case .needMore: return
            }
        }
    }

    /// Strict DATA framing: the same outcome whole or byte by byte; a message that ends and is
    /// re-encoded frames back to itself.
    static func framing(_ bytes: [UInt8]) {
        var whole = DataFramer(sizeLimit: 1 << 20)
        let a = whole.feed(bytes[...])
        var split = DataFramer(sizeLimit: 1 << 20)
        var b: (DataFramer.Outcome, consumed: Int)?
        for i in bytes.indices {
            if let r = split.feed(bytes[i...i]) { b = (r.0, i + r.consumed); break }
        }
        check(a?.0 == b?.0 && a?.consumed == b?.consumed && whole.message == split.message, "framing differs byte by byte")
        if a?.0 == .complete {
            var again = DataFramer(sizeLimit: 1 << 20)
            let encoded = DotStuffing.encode(whole.message)
            let r = again.feed(encoded[...])
            check(r?.0 == .complete && r?.consumed == encoded.count, "re-encoded message does not frame")
            check(again.message == whole.message || whole.message.last != 10, "dot-stuffing round trip")
        }
    }

    static func replies(_ bytes: [UInt8]) {
        var parser = ReplyParser()
        var buffer = LineBuffer()
        buffer.append(bytes)
        while case .line(let line) = buffer.nextLine(limit: 4096) {
            if let reply = try? parser.feed(line: line) {
                check((200...599).contains(reply.code), "parsed code \(reply.code)")
            }
        }
    }

    static func addresses(_ bytes: [UInt8]) {
        let text = String(decoding: bytes, as: UTF8.self)
        if let mailbox = Mailbox(parsing: text) {
            check(Mailbox(parsing: mailbox.description) == mailbox, "mailbox does not round-trip: \(mailbox)")
            check(!mailbox.description.utf8.contains { $0 < 0x20 || $0 >= 0x7F }, "control or 8-bit byte in \(mailbox)")
        }
        _ = PathArgument.parse(Substring(text))
    }

    static func journal(_ bytes: [UInt8]) {
        let (records, valid) = JournalRecord.decode(bytes)
        check(valid <= bytes.count, "valid length")
        check(JournalRecord.decode(JournalRecord.encode(records)).0 == records, "journal records do not round-trip")
    }
}
