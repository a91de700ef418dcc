// The delivery scheduler: holds the queue in memory (the spool holds it on disk), starts an
// attempt for every message with recipients that are due, journals each recipient's outcome
// before acting on it, retries with backoff, and bounces what fails for good.
//
// Time and randomness are injected (`clock`, `random`), so the retry policy is testable without
// waiting.

import Glibc
import MailCore
import Mailbox
import Net
import SMTP
import Spool

public actor Scheduler {
    public struct Settings: Sendable {
        public var hostname: String
        public var localDomains: Set<String>
        public var retry: RetryPolicy
        public var concurrency: Int
        public init(hostname: String, localDomains: Set<String>, retry: RetryPolicy, concurrency: Int) {
            self.hostname = hostname
            self.localDomains = localDomains
            self.retry = retry
            self.concurrency = concurrency
        }
    }

    private let settings: Settings
    private let spool: Spool
    private let maildirs: MaildirStore
    private let remote: RemoteDelivery
    private let clock: @Sendable () -> Int64
    private let random: @Sendable () -> Double
    private var queue: [QueueID: QueuedMessage] = [:]
    /// Messages being attempted, and the lane each one holds a slot in.
    private var inFlight: [QueueID: Lane.Kind] = [:]
    /// Local Maildir deliveries and remote SMTP deliveries wait in separate lanes with their own
    /// slots, so slow or hostile remote hosts can never hold up mail for local users (Postfix
    /// likewise runs its local and smtp transports with separate concurrency).
    private var lanes = [Lane.Kind.local: Lane(), .remote: Lane()]
    private var readySet: Set<QueueID> = []

    struct Lane {
        enum Kind: Sendable { case local, remote }
        /// Messages due now, oldest first; `ready[head...]` is the live part.
        var ready: [QueueID] = []
        var head = 0
        var busy = 0
        var isEmpty: Bool { head >= ready.count }
    }

    private func lane(of message: QueuedMessage) -> Lane.Kind {
        let open = message.envelope.recipients.indices.filter { !message.states[$0].isFinal }
        return open.allSatisfy({ settings.localDomains.contains(message.envelope.recipients[$0].domain) }) ? .local : .remote
    }
    /// Bodies of freshly accepted messages, kept for their first attempt so it needs no disk read.
    private var freshBodies: [QueueID: [UInt8]] = [:]
    private var loop: Task<Void, Never>?

    public init(settings: Settings, spool: Spool, maildirs: MaildirStore, remote: RemoteDelivery,
                clock: @escaping @Sendable () -> Int64 = unixMilliseconds,
                random: @escaping @Sendable () -> Double = { Double.random(in: 0..<1) }) {
        self.settings = settings
        self.spool = spool
        self.maildirs = maildirs
        self.remote = remote
        self.clock = clock
        self.random = random
    }

    /// Starts with what recovery found, and ticks once a second for retries.
    public func start(recovered: [QueuedMessage]) {
        for message in recovered { queue[message.queueID] = message }
        promoteDue()
        loop = Task { [weak self] in
            while !Task.isCancelled {
                try? await Task.sleep(nanoseconds: 1_000_000_000)
                await self?.promoteDue()
            }
        }
    }

    /// A freshly accepted message: try it now. `body` is the message as spooled, if at hand.
    public func enqueue(_ message: QueuedMessage, body: [UInt8]? = nil) {
        queue[message.queueID] = message
        // Keep the body only if the attempt can start now; a backlog reads bodies from disk, so
        // memory does not grow with the queue.
        let kind = lane(of: message)
        if let body, let lane = lanes[kind], lane.busy < settings.concurrency, lane.isEmpty {
            freshBodies[message.queueID] = body
        }
        markReady(message.queueID)
        pump()
    }

    public var count: Int { queue.count }

    private func markReady(_ qid: QueueID) {
        guard !readySet.contains(qid), inFlight[qid] == nil, let message = queue[qid] else { return }
        readySet.insert(qid)
        lanes[lane(of: message)]!.ready.append(qid)
    }

    /// Once a second: move messages whose next attempt has come to the ready list.
    private func promoteDue() {
        let now = clock()
        for (qid, message) in queue where inFlight[qid] == nil && !readySet.contains(qid) {
            let due = message.states.contains { state in
                if case .pending(_, let next) = state { return next <= now }
                return false
            }
            if due { markReady(qid) }
        }
        pump()
    }

    /// Starts attempts for ready messages while the concurrency limit allows.
    private func pump() {
        for kind in [Lane.Kind.local, .remote] {
            var lane = lanes[kind]!
            while lane.busy < settings.concurrency && !lane.isEmpty {
                let qid = lane.ready[lane.head]
                lane.head += 1
                readySet.remove(qid)
                guard let message = queue[qid], inFlight[qid] == nil else { continue }
                inFlight[qid] = kind
                lane.busy += 1
                Task { await self.attempt(message) }
            }
            if lane.head > 1024 && lane.head * 2 > lane.ready.count {
                lane.ready.removeFirst(lane.head)
                lane.head = 0
            }
            lanes[kind] = lane
        }
    }

    private func attempt(_ original: QueuedMessage) async {
        let now = clock()
        var message = original
        let queueID = original.queueID
        let body: [UInt8]
        do {
            let fresh = freshBodies.removeValue(forKey: queueID)
            if let fresh {
                body = fresh
            } else {
                body = try await Blocking.run { [spool] in try spool.readMessage(queueID) }
            }
        } catch let error as IOError where error.code == ENOENT {
            // Removed by hand (there is no `apusctl queue delete` yet): forget it.
            Log.warning("\(queueID): queue file is gone; dropping the message")
            try? await spool.record([.removed(queueID)])  // and its journal state
            queue[queueID] = nil
            release(queueID)
            pump()
            return
        } catch {
            // Unreadable for now: try again later like a temporary failure, not every second.
            Log.error("\(queueID): cannot read queue file: \(error)")
            let later = now + settings.retry.first
            for index in message.states.indices {
                if case .pending(let n, _) = message.states[index] { message.states[index] = .pending(attempts: n, nextAttempt: later) }
            }
            finishAttempt(message)
            return
        }

        // Recipients due now, grouped by destination: local, or one group per remote domain.
        var groups: [String: [Int]] = [:]
        for (index, state) in message.states.enumerated() {
            guard case .pending(_, let next) = state, next <= now else { continue }
            let domain = message.envelope.recipients[index].domain
            groups[settings.localDomains.contains(domain) ? "" : domain, default: []].append(index)
        }

        var outcomes: [Int: AttemptOutcome] = [:]
        await withTaskGroup(of: [(Int, AttemptOutcome)].self) { group in
            for (domain, indexes) in groups {
                group.addTask { [settings, maildirs, remote, original] in
                    let message = original
                    let recipients = indexes.map { message.envelope.recipients[$0] }
                    if domain.isEmpty {
                        var results: [(Int, AttemptOutcome)] = []
                        for (index, rcpt) in zip(indexes, recipients) {
                            let outcome = await LocalDelivery.deliver(body, to: rcpt, index: index, message: message,
                                                                      hostname: settings.hostname, maildirs: maildirs)
                            results.append((index, outcome))
                        }
                        return results
                    }
                    let results = await remote.deliver(domain: domain, sender: message.envelope.sender,
                                                       recipients: recipients, message: body)
                    return Array(zip(indexes, results))
                }
            }
            for await results in group { for (i, o) in results { outcomes[i] = o } }
        }

        // Journal first, then act: a recipient is final only once its record is durable.
        let finished = clock()
        var records: [JournalRecord] = []
        var failures: [FailedRecipient] = []
        for (index, outcome) in outcomes.sorted(by: { $0.key < $1.key }) {
            let rcpt = message.envelope.recipients[index]
            let delay = String(format2: Double(finished - message.arrival) / 1000)
            var status: String
            switch outcome.result {
            case .delivered:
                message.states[index] = .delivered
                records.append(.delivered(message.queueID, index: index))
                status = "sent"
            case .bounced(let reply):
                message.states[index] = .failed
                records.append(.failed(message.queueID, index: index))
                failures.append(FailedRecipient(recipient: rcpt, reply: reply, remoteMTA: ["none", "local"].contains(outcome.relay) ? nil : outcome.relay))
                status = "bounced"
            case .deferred(let reply):
                var attempts = 1
                if case .pending(let n, _) = message.states[index] { attempts = n + 1 }
                if settings.retry.expired(arrival: message.arrival, now: finished) {
                    message.states[index] = .failed
                    records.append(.failed(message.queueID, index: index))
                    let expired = Reply(550, "5.4.7", "delivery time expired; last error: \(reply)")
                    failures.append(FailedRecipient(recipient: rcpt, reply: expired, remoteMTA: nil))
                    status = "expired"
                } else {
                    let next = finished + settings.retry.delay(afterAttempts: attempts, unitRandom: random())
                    message.states[index] = .pending(attempts: attempts, nextAttempt: next)
                    records.append(.deferred(message.queueID, index: index, nextAttempt: next, attempts: attempts))
                    status = "deferred"
                }
            }
            var reply = outcome.result.reply
            if status == "expired", let last = failures.last { reply = last.reply }
            Log.info("\(message.queueID): to=<\(rcpt)>, relay=\(outcome.relay), delay=\(delay), dsn=\(reply.enhanced ?? "\(reply.code / 100).0.0"), status=\(status) (\(reply))")
        }
        if !failures.isEmpty, case .mailbox(let sender) = message.envelope.sender {
            // The bounce is durable before the original's failures are (a crash in between can
            // send a second bounce, never none).
            if !(await sendBounce(for: message, to: sender, failures: failures, body: body)) {
                // Could not queue the report (disk full?): keep those recipients pending and
                // bounce them on a later attempt instead of failing silently.
                let retry = finished + settings.retry.first
                let failedIndexes = Set(failures.compactMap { f in message.envelope.recipients.firstIndex(of: f.recipient) })
                records = records.map { record in
                    if case .failed(let q, let i) = record, failedIndexes.contains(i) {
                        var attempts = 1
                        if case .pending(let n, _) = original.states[i] { attempts = n + 1 }
                        message.states[i] = .pending(attempts: attempts, nextAttempt: retry)
                        return .deferred(q, index: i, nextAttempt: retry, attempts: attempts)
                    }
                    return record
                }
            }
        }
        let done = message.states.allSatisfy(\.isFinal)
        // One group-committed journal append per attempt; when the message is finished its
        // removal record rides along and the file is unlinked only after the sync (recovery
        // unlinks it if we crash in between).
        if done { records.append(.removed(message.queueID)) }
        // Nothing may be acted on before its record is durable, and nothing can be done without
        // a journal: retry until the disk takes it (disk full recovers by itself, DESIGN §Spool 5).
        var backoff: UInt64 = 100_000_000
        while true {
            do {
                try await spool.record(records)
                break
            } catch {
                Log.error("\(message.queueID): journal write failed: \(error); retrying")
                try? await Task.sleep(nanoseconds: backoff)
                backoff = min(backoff * 2, 30_000_000_000)
            }
        }
        if done {
            spool.unlinkMessage(message.queueID)
            Log.info("\(message.queueID): removed")
            queue[message.queueID] = nil
            release(message.queueID)
            pump()
            return
        }
        finishAttempt(message)
    }

    /// Frees the lane slot a finished attempt held.
    private func release(_ qid: QueueID) {
        if let kind = inFlight.removeValue(forKey: qid) { lanes[kind]!.busy -= 1 }
    }

    private func finishAttempt(_ message: QueuedMessage) {
        queue[message.queueID] = message
        release(message.queueID)
        pump()
    }

    /// Queues a non-delivery report; false when it could not be made durable.
    private func sendBounce(for message: QueuedMessage, to sender: Mailbox, failures: [FailedRecipient], body: [UInt8]) async -> Bool {
        let now = clock()
        let queueID = QueueID.next()
        let report = Bounce.report(hostname: settings.hostname, queueID: message.queueID, reportID: queueID,
                                   arrival: message.arrival, originalSender: sender, failures: failures,
                                   originalMessage: body, now: now)
        let envelope = Envelope(sender: .null, recipients: [sender], heloName: settings.hostname,
                                clientAddress: "127.0.0.1", receivedProtocol: "local")
        do {
            let queued = try await spool.accept(envelope: envelope, message: report, arrival: now, queueID: queueID,
                                                runBlocking: { work in try await Blocking.run(work) })
            Log.info("\(message.queueID): sender non-delivery notification: \(queueID)")
            queue[queued.queueID] = queued
            markReady(queued.queueID)
            return true
        } catch {
            Log.error("\(message.queueID): cannot queue bounce: \(error)")
            return false
        }
    }
}

extension String {
    /// "1.25" — two decimals, as Postfix prints delays.
    init(format2 value: Double) {
        let hundredths = Int((value * 100).rounded())
        let fraction = hundredths % 100
        self = "\(hundredths / 100).\(fraction < 10 ? "0" : "")\(fraction)"
    }
}
