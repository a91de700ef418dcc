// The queue on disk. The durability contract (docs/spool.md):
//
//  1. A message is accepted (and only then answered 250) once its file — envelope header and
//     body — is written to tmp/, fdatasynced, renamed into queue/, and queue/ is fsynced.
//  2. Every later change of a recipient's state is a checksummed journal record, synced before
//     it is acted on; a message file is removed only after all its recipients are final.
//  3. Directory syncs and journal appends are group-committed (one sync per batch).
//  4. Recovery = scan queue/, replay the journal up to its last whole record, drop the torn tail.

import Glibc
import MailCore

public enum RecipientState: Sendable, Equatable {
    case pending(attempts: Int, nextAttempt: Int64)
    case delivered
    case failed
    public var isFinal: Bool { if case .pending = self { return false } else { return true } }
}

/// A message in the queue as the scheduler sees it (the body stays on disk).
public struct QueuedMessage: Sendable {
    public var queueID: QueueID
    public var envelope: Envelope
    /// Unix milliseconds when it was accepted.
    public var arrival: Int64
    public var size: Int
    public var states: [RecipientState]
}

public final class Spool: @unchecked Sendable {
    public let directory: String
    let tmpDirectory: String
    let queueDirectory: String
    let journalPath: String
    private var committer: GroupCommitter!
    private let lock = Lock()
    /// Latest journal record per recipient of every live message: what compaction keeps.
    private var live: [QueueID: [Int: JournalRecord]] = [:]

    /// Journal size that triggers a rewrite (bytes).
    public static let compactionThreshold = 4 * 1024 * 1024
    private let compactionThreshold: Int

    /// `compactionThreshold`: journal bytes that trigger a rewrite (tests make it small).
    public init(directory: String, compactionThreshold: Int = Spool.compactionThreshold) throws(IOError) {
        self.directory = directory
        self.compactionThreshold = compactionThreshold
        tmpDirectory = directory + "/tmp"
        queueDirectory = directory + "/queue"
        journalPath = directory + "/journal"
        try FileIO.makeDirectory(tmpDirectory)
        try FileIO.makeDirectory(queueDirectory)
    }

    // MARK: recovery

    /// Reads the queue back after a start or crash: replays the journal, cuts a torn tail,
    /// removes leftovers of interrupted writes, and finishes messages whose recipients are all
    /// final. Call once, before `accept`.
    public func recover() throws(IOError) -> [QueuedMessage] {
        for name in try FileIO.list(tmpDirectory) { unlink(tmpDirectory + "/" + name) }
        unlink(journalPath + ".compact")

        var journalBytes: [UInt8] = []
        if FileIO.exists(journalPath) { journalBytes = try FileIO.readFile(journalPath) }
        let (records, validLength) = JournalRecord.decode(journalBytes)

        var messages: [QueuedMessage] = []
        var byID: [QueueID: Int] = [:]
        for name in try FileIO.list(queueDirectory).sorted() {
            guard let qid = QueueID(name) else {
                Log.warning("spool: ignoring \(queueDirectory)/\(name): not a queue file")
                continue
            }
            let path = queueDirectory + "/" + name
            let header: (Envelope, Int64, Int)
            do {
                header = try MessageFile.readHeader(path: path)
            } catch where error.code == EINVAL {
                // A header that does not parse: set the file aside for the administrator, never
                // deliver half a message.
                _ = Glibc.rename(path, directory + "/corrupt-" + name)
                Log.error("spool: \(name) has an unreadable header; moved to corrupt-\(name)")
                continue
            }
            // Any other error (EACCES, EIO…) propagates: start-up fails loudly rather than
            // shelving good mail.
            let (envelope, arrival, bodyOffset) = header
            let size = (FileIO.fileSize(path) ?? bodyOffset) - bodyOffset
            byID[qid] = messages.count
            messages.append(QueuedMessage(queueID: qid, envelope: envelope, arrival: arrival, size: size,
                                          states: Array(repeating: .pending(attempts: 0, nextAttempt: 0),
                                                        count: envelope.recipients.count)))
        }
        var removed: Set<QueueID> = []
        for record in records {
            switch record {
            case .delivered(let q, let i):
                if let m = byID[q], i < messages[m].states.count { messages[m].states[i] = .delivered }
            case .failed(let q, let i):
                if let m = byID[q], i < messages[m].states.count { messages[m].states[i] = .failed }
            case .deferred(let q, let i, let t, let n):
                if let m = byID[q], i < messages[m].states.count, !messages[m].states[i].isFinal {
                    messages[m].states[i] = .pending(attempts: n, nextAttempt: t)
                }
            case .removed(let q):
                removed.insert(q)
            }
        }

        // Messages that are finished but whose file survived: remove now.
        var remaining: [QueuedMessage] = []
        for message in messages {
            if message.states.allSatisfy(\.isFinal) || removed.contains(message.queueID) {
                unlink(queueDirectory + "/" + message.queueID.value)
            } else {
                remaining.append(message)
                var map: [Int: JournalRecord] = [:]
                for (i, state) in message.states.enumerated() {
                    switch state {
                    case .delivered: map[i] = .delivered(message.queueID, index: i)
                    case .failed: map[i] = .failed(message.queueID, index: i)
                    case .pending(let n, let t) where n > 0:
                        map[i] = .deferred(message.queueID, index: i, nextAttempt: t, attempts: n)
                    case .pending: break
                    }
                }
                live[message.queueID] = map
            }
        }
        try FileIO.syncDirectory(queueDirectory)

        // Start from a compact journal: the live records only (this also drops a torn tail).
        if validLength < journalBytes.count {
            Log.warning("spool: journal has \(journalBytes.count - validLength) bytes after its last whole record (torn by a crash); ignored")
        }
        let temporary = journalPath + ".compact"
        try FileIO.writeNewFileSynced(temporary, parts: [JournalRecord.encode(liveRecords())])
        try FileIO.rename(temporary, journalPath)
        try FileIO.syncDirectory(directory)
        let fd = open(journalPath, O_WRONLY | O_APPEND | O_CLOEXEC)
        guard fd >= 0 else { throw IOError(operation: "open", path: journalPath, code: errno) }
        committer = GroupCommitter(journalFD: fd, journalPath: journalPath,
                                   journalSize: FileIO.fileSize(journalPath) ?? 0,
                                   spoolDirectory: directory, queueDirectory: queueDirectory,
                                   compactionThreshold: compactionThreshold,
                                   liveRecords: { [unowned self] in self.liveRecords() })
        return remaining
    }

    private func liveRecords() -> [JournalRecord] {
        lock.withLock { live.values.flatMap { map in map.keys.sorted().compactMap { map[$0] } } }
    }

    // MARK: accepting

    /// Makes a message durable; returns once it is safe to answer 250. Blocking file work runs
    /// on `runBlocking` (the caller's thread pool for disk I/O).
    public func accept(envelope: Envelope, message: [UInt8], arrival: Int64, queueID: QueueID,
                       runBlocking: (@escaping @Sendable () throws -> Void) async throws -> Void) async throws -> QueuedMessage {
        let header = MessageFile.header(envelope: envelope, arrival: arrival)
        let temporary = tmpDirectory + "/" + queueID.value
        let final = queueDirectory + "/" + queueID.value
        try await runBlocking {
            try FileIO.writeNewFileSynced(temporary, parts: [header, message])
            do { try FileIO.rename(temporary, final) } catch { unlink(temporary); throw error }
        }
        do {
            try await committer.commit(records: [], syncQueueDirectory: true)
        } catch {
            unlink(final)
            throw error
        }
        lock.withLock { live[queueID] = [:] }
        return QueuedMessage(queueID: queueID, envelope: envelope, arrival: arrival, size: message.count,
                             states: Array(repeating: .pending(attempts: 0, nextAttempt: 0), count: envelope.recipients.count))
    }

    // MARK: state changes

    /// Appends records durably (group-committed).
    public func record(_ records: [JournalRecord]) async throws {
        // State records go into the live map first (a compaction racing with this batch then
        // keeps them: harmless). A removal leaves the map only once it is durable: a compaction
        // in between must still carry the message's earlier records.
        lock.withLock {
            for record in records {
                switch record {
                case .delivered(let q, let i), .failed(let q, let i), .deferred(let q, let i, _, _):
                    live[q, default: [:]][i] = record
                case .removed:
                    break
                }
            }
        }
        try await committer.commit(records: records, syncQueueDirectory: false)
        lock.withLock {
            for case .removed(let q) in records { live[q] = nil }
        }
    }

    /// The message body (without Apus's envelope header).
    public func readMessage(_ queueID: QueueID) throws -> [UInt8] {
        let bytes = try FileIO.readFile(queueDirectory + "/" + queueID.value)
        guard let offset = MessageFile.bodyOffset(bytes) else {
            throw IOError(operation: "parse", path: queueID.value, code: EINVAL)
        }
        return Array(bytes[offset...])
    }

    /// Unlinks a finished message's file, after its `.removed` record is durable.
    public func unlinkMessage(_ queueID: QueueID) {
        unlink(queueDirectory + "/" + queueID.value)
    }
}
