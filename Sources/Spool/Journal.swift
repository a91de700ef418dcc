// The spool journal: an append-only log of recipient state changes. Each record is
//
//     u32 big-endian payload length | u32 big-endian CRC-32 of the payload | payload
//
// Recovery replays records up to the last whole, checksummed one and cuts the torn tail.
// Appends are group-committed: whoever arrives while a sync is running joins the next batch,
// and one write + one fdatasync covers the whole batch (see docs/spool.md).

import Glibc
import MailCore

public enum JournalRecord: Sendable, Equatable {
    /// Recipient `index` of `queueID` was delivered.
    case delivered(QueueID, index: Int)
    /// Recipient failed permanently (bounced or expired).
    case failed(QueueID, index: Int)
    /// Temporary failure: next attempt at `nextAttempt` (Unix seconds), `attempts` so far.
    case deferred(QueueID, index: Int, nextAttempt: Int64, attempts: Int)
    /// The message file was removed; forget the message.
    case removed(QueueID)

    var payload: [UInt8] {
        let text: String
        switch self {
        case .delivered(let q, let i): text = "D \(q) \(i)"
        case .failed(let q, let i): text = "F \(q) \(i)"
        case .deferred(let q, let i, let t, let n): text = "R \(q) \(i) \(t) \(n)"
        case .removed(let q): text = "X \(q)"
        }
        return Array(text.utf8)
    }

    init?(payload: ArraySlice<UInt8>) {
        let words = String(decoding: payload, as: UTF8.self).split(separator: " ")
        guard words.count >= 2, let q = QueueID(String(words[1])) else { return nil }
        switch (words[0], words.count) {
        case ("D", 3): guard let i = Int(words[2]) else { return nil }; self = .delivered(q, index: i)
        case ("F", 3): guard let i = Int(words[2]) else { return nil }; self = .failed(q, index: i)
        case ("R", 5):
            guard let i = Int(words[2]), let t = Int64(words[3]), let n = Int(words[4]) else { return nil }
            self = .deferred(q, index: i, nextAttempt: t, attempts: n)
        case ("X", 2): self = .removed(q)
        default: return nil
        }
    }

    public static func encode(_ records: [JournalRecord]) -> [UInt8] {
        var out: [UInt8] = []
        for record in records {
            let payload = record.payload
            let length = UInt32(payload.count)
            let crc = CRC32.checksum(payload)
            for shift in stride(from: 24, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: length >> UInt32(shift))) }
            for shift in stride(from: 24, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: crc >> UInt32(shift))) }
            out.append(contentsOf: payload)
        }
        return out
    }

    /// Decodes whole records; returns them and the length of the valid prefix (the rest is a
    /// torn or corrupt tail).
    public static func decode(_ bytes: [UInt8]) -> ([JournalRecord], validLength: Int) {
        var records: [JournalRecord] = []
        var offset = 0
        func u32(_ at: Int) -> UInt32 {
            UInt32(bytes[at]) << 24 | UInt32(bytes[at + 1]) << 16 | UInt32(bytes[at + 2]) << 8 | UInt32(bytes[at + 3])
        }
        while offset + 8 <= bytes.count {
            let length = Int(u32(offset))
            let crc = u32(offset + 4)
            guard length > 0, length < 4096, offset + 8 + length <= bytes.count else { break }
            let payload = bytes[(offset + 8)..<(offset + 8 + length)]
            guard CRC32.checksum(payload) == crc, let record = JournalRecord(payload: payload) else { break }
            records.append(record)
            offset += 8 + length
        }
        return (records, offset)
    }
}

/// Batches durable work so concurrent callers share one sync: journal appends (one write and
/// one fdatasync per batch) and directory syncs after renames (one fsync per batch).
final class GroupCommitter: @unchecked Sendable {
    private struct Request {
        var records: [JournalRecord]
        var syncQueueDirectory: Bool
        var continuation: CheckedContinuation<Void, any Error>
    }

    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var pending: [Request] = []
    private var journalFD: Int32
    private let journalPath: String
    private let spoolDirectory: String
    private let queueDirectory: String
    /// Bytes in the journal file.
    private var journalSize: Int
    /// The journal's size right after the last rewrite: a queue whose live records alone pass
    /// the threshold is not rewritten after every batch, only when the journal has doubled.
    private var sizeAfterCompaction = 0
    /// Rewrite the journal once it grows past this many bytes.
    private let compactionThreshold: Int
    /// The records that describe every live message (what a compacted journal must hold).
    private let liveRecords: @Sendable () -> [JournalRecord]

    init(journalFD: Int32, journalPath: String, journalSize: Int, spoolDirectory: String, queueDirectory: String,
         compactionThreshold: Int, liveRecords: @escaping @Sendable () -> [JournalRecord]) {
        self.journalFD = journalFD
        self.journalPath = journalPath
        self.journalSize = journalSize
        sizeAfterCompaction = journalSize
        self.spoolDirectory = spoolDirectory
        self.queueDirectory = queueDirectory
        self.compactionThreshold = compactionThreshold
        self.liveRecords = liveRecords
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
        var thread = pthread_t()
        let unmanaged = Unmanaged.passRetained(self)
        pthread_create(&thread, nil, { raw in
            Unmanaged<GroupCommitter>.fromOpaque(raw!).takeRetainedValue().run()
            return nil
        }, unmanaged.toOpaque())
        pthread_detach(thread)
    }

    func commit(records: [JournalRecord], syncQueueDirectory: Bool) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            pthread_mutex_lock(mutex)
            pending.append(Request(records: records, syncQueueDirectory: syncQueueDirectory, continuation: continuation))
            pthread_cond_signal(condition)
            pthread_mutex_unlock(mutex)
        }
    }

    /// Rewrites the journal with only the live records: new file, fdatasync, rename over the old
    /// one, fsync the directory. A crash at any point leaves either the old or the new journal,
    /// and both describe the same queue.
    @discardableResult
    private func compact() -> Bool {
        let temporary = journalPath + ".compact"
        unlink(temporary)
        var fd: Int32 = -1
        do {
            try FileIO.writeNewFileSynced(temporary, parts: [JournalRecord.encode(liveRecords())])
            // Open before the rename: the descriptor follows the inode, so no append can go to
            // a file that has just been replaced.
            fd = open(temporary, O_WRONLY | O_APPEND | O_CLOEXEC)
            guard fd >= 0 else { throw IOError(operation: "open", path: temporary, code: errno) }
            try FileIO.rename(temporary, journalPath)
        } catch {
            if fd >= 0 { close(fd) }
            unlink(temporary)
            return false  // keep appending to the old journal; try again after the next batch
        }
        // Until the rename is durable, a crash could bring the old journal back without what is
        // appended from now on: the next batches retry this sync before they write.
        spoolDirectoryUnsynced = (try? FileIO.syncDirectory(spoolDirectory)) == nil
        journalTorn = false
        close(journalFD)
        journalFD = fd
        var st = stat()
        fstat(fd, &st)
        journalSize = Int(st.st_size)
        sizeAfterCompaction = journalSize
        return true
    }

    /// A failed append could not be cut back: the file may end in a torn record. Rewrite it
    /// before anything else is appended (recovery would stop at the torn record).
    private var journalTorn = false
    /// The last compaction's rename is not yet known durable.
    private var spoolDirectoryUnsynced = false

    private func run() {
        while true {
            pthread_mutex_lock(mutex)
            while pending.isEmpty { pthread_cond_wait(condition, mutex) }
            let batch = pending
            pending = []
            pthread_mutex_unlock(mutex)

            var failure: (any Error)?
            do {
                if journalTorn && !compact() {
                    throw IOError(operation: "rewrite", path: journalPath, code: EIO)
                }
                if spoolDirectoryUnsynced {
                    try FileIO.syncDirectory(spoolDirectory)
                    spoolDirectoryUnsynced = false
                }
                if batch.contains(where: \.syncQueueDirectory) { try FileIO.syncDirectory(queueDirectory) }
                let bytes = JournalRecord.encode(batch.flatMap(\.records))
                if !bytes.isEmpty {
                    do {
                        try FileIO.writeAll(journalFD, bytes, path: journalPath)
                        if fdatasync(journalFD) != 0 { throw IOError(operation: "fdatasync", path: journalPath, code: errno) }
                        journalSize += bytes.count
                    } catch {
                        // Cut what may have been half-written (disk full), so later records are
                        // not stranded behind a torn one that recovery would stop at.
                        if ftruncate(journalFD, off_t(journalSize)) != 0 { journalTorn = true }
                        throw error
                    }
                }
            } catch {
                failure = error
            }
            if failure == nil && journalSize > max(compactionThreshold, 2 * sizeAfterCompaction) { compact() }
            for request in batch {
                if let failure { request.continuation.resume(throwing: failure) } else { request.continuation.resume() }
            }
        }
    }
}
