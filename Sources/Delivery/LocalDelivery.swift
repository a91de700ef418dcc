// Delivery to a local Maildir, with the trace fields a mailbox expects in front of the message:
// Return-Path (RFC 5321 §4.4, added by the final delivery) and Delivered-To (loop detection,
// as Postfix's local(8) adds it).

import Glibc
import MailCore
import Mailbox
import Net
import SMTP
import Spool

enum LocalDelivery {
    static func deliver(_ body: [UInt8], to recipient: Mailbox, index: Int, message: QueuedMessage,
                        hostname: String, maildirs: MaildirStore) async -> AttemptOutcome {
        var trace = "Return-Path: <\(message.envelope.sender)>\r\nDelivered-To: \(recipient)\r\n"
        if trace.utf8.contains(0) { trace = "" }
        let bytes = Array(trace.utf8) + body
        // Deterministic per queue id and recipient: a repeat after a crash finds it and stops.
        let name = "\(message.arrival / 1000).Q\(message.queueID)R\(index).\(hostname)"
        enum Verdict: Sendable { case delivered, unknownUser, storeMissing }
        do {
            let verdict = try await Blocking.run { () throws -> Verdict in
                // A missing store (not mounted?) is temporary; only a missing mailbox bounces.
                guard maildirs.isAvailable else { return .storeMissing }
                guard maildirs.exists(recipient) else { return .unknownUser }
                try maildirs.deliver(bytes, to: recipient, uniqueName: name)
                return .delivered
            }
            switch verdict {
            case .delivered:
                return AttemptOutcome(result: .delivered(Reply(250, "2.0.0", "delivered to maildir")), relay: "local")
            case .unknownUser:
                return AttemptOutcome(result: .bounced(Reply(550, "5.1.1", "unknown user: \"\(recipient.localPart)\"")), relay: "local")
            case .storeMissing:
                return AttemptOutcome(result: .deferred(Reply(451, "4.3.0", "mail directory \(maildirs.root) is missing")), relay: "local")
            }
        } catch {
            return AttemptOutcome(result: .deferred(Reply(451, "4.3.0", "maildir delivery failed: \(error)")), relay: "local")
        }
    }
}
