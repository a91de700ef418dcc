import Foundation
import MailCore
@testable import Spool
import XCTest

/// A fresh directory under /tmp, removed after the test.
class TemporaryDirectoryTestCase: XCTestCase {
    var directory = ""

    override func setUpWithError() throws {
        directory = "/tmp/apus-tests-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: directory)
    }
}

final class SpoolRecoveryTests: TemporaryDirectoryTestCase {
    private var spoolDirectory: String { directory + "/spool" }
    private var journalPath: String { spoolDirectory + "/journal" }

    private func mailbox(_ text: String) -> Mailbox { Mailbox(parsing: text)! }

    private func envelope(recipients: Int) -> Envelope {
        Envelope(sender: .mailbox(mailbox("alice@example.org")),
                 recipients: (0..<recipients).map { mailbox("r\($0)@example.net") },
                 heloName: "client.example.org", clientAddress: "192.0.2.1",
                 authenticatedUser: "alice@example.org", receivedProtocol: "ESMTPSA")
    }

    /// A spool that has been recovered (as the server does before accepting).
    private func openSpool() throws -> (Spool, [QueuedMessage]) {
        let spool = try Spool(directory: spoolDirectory)
        let messages = try spool.recover()
        return (spool, messages)
    }

    private func accept(_ spool: Spool, recipients: Int, id: QueueID, body: String = "Subject: t\r\n\r\nbody\r\n") async throws -> QueuedMessage {
        try await spool.accept(envelope: envelope(recipients: recipients), message: Array(body.utf8),
                               arrival: 1_764_769_283_123, queueID: id, runBlocking: { work in try work() })
    }

    private let id1 = QueueID("0000000000000001")!
    private let id2 = QueueID("0000000000000002")!

    func testAcceptedMessageIsListedWithItsEnvelopeAfterRecovery() async throws {
        let (spool, initial) = try openSpool()
        XCTAssertEqual(initial.count, 0)
        let queued = try await accept(spool, recipients: 2, id: id1)
        XCTAssertEqual(queued.states, [.pending(attempts: 0, nextAttempt: 0), .pending(attempts: 0, nextAttempt: 0)])

        let (again, recovered) = try openSpool()
        XCTAssertEqual(recovered.count, 1)
        let message = try XCTUnwrap(recovered.first)
        XCTAssertEqual(message.queueID, id1)
        XCTAssertEqual(message.envelope, envelope(recipients: 2))
        XCTAssertEqual(message.arrival, 1_764_769_283_123)
        XCTAssertEqual(message.size, "Subject: t\r\n\r\nbody\r\n".utf8.count)
        XCTAssertEqual(message.states, queued.states)
        XCTAssertEqual(try again.readMessage(id1), Array("Subject: t\r\n\r\nbody\r\n".utf8))
        XCTAssertEqual(try FileIO.list(spoolDirectory + "/tmp"), [])
    }

    func testJournalRecordsReplayIntoRecipientStates() async throws {
        let (spool, _) = try openSpool()
        _ = try await accept(spool, recipients: 4, id: id1)
        try await spool.record([.delivered(id1, index: 0), .deferred(id1, index: 1, nextAttempt: 1234, attempts: 2),
                                .failed(id1, index: 2)])
        // A deferral never reopens a final recipient.
        try await spool.record([.deferred(id1, index: 0, nextAttempt: 99, attempts: 1)])
        // Records for unknown messages or indexes are ignored.
        try await spool.record([.delivered(id2, index: 0), .delivered(id1, index: 7)])

        let (_, recovered) = try openSpool()
        XCTAssertEqual(recovered.first?.states, [.delivered, .pending(attempts: 2, nextAttempt: 1234), .failed,
                                                 .pending(attempts: 0, nextAttempt: 0)])
    }

    func testTornJournalTailIsCutAndEarlierRecordsSurvive() async throws {
        let (spool, _) = try openSpool()
        _ = try await accept(spool, recipients: 3, id: id1)
        try await spool.record([.delivered(id1, index: 0)])

        // A crash in the middle of an append: half a record, then garbage.
        let torn = JournalRecord.encode([.failed(id1, index: 1)])
        let handle = try XCTUnwrap(FileHandle(forWritingAtPath: journalPath))
        handle.seekToEndOfFile()
        handle.write(Data(torn.prefix(torn.count / 2)))
        handle.write(Data((0..<64).map { _ in UInt8.random(in: 0...255) }))
        handle.closeFile()

        let (recoveredSpool, recovered) = try openSpool()
        XCTAssertEqual(recovered.first?.states, [.delivered, .pending(attempts: 0, nextAttempt: 0),
                                                 .pending(attempts: 0, nextAttempt: 0)])
        // The tail is gone from the file, so records appended now are not stranded behind it.
        let bytes = try FileIO.readFile(journalPath)
        XCTAssertEqual(JournalRecord.decode(bytes).validLength, bytes.count)
        try await recoveredSpool.record([.failed(id1, index: 2)])
        let (_, final) = try openSpool()
        XCTAssertEqual(final.first?.states, [.delivered, .pending(attempts: 0, nextAttempt: 0), .failed])
    }

    func testCorruptedRecordStopsReplayAtThatRecord() async throws {
        let (spool, _) = try openSpool()
        _ = try await accept(spool, recipients: 2, id: id1)
        try await spool.record([.delivered(id1, index: 0)])
        // Flip one payload byte of an appended record: its CRC no longer matches.
        var record = JournalRecord.encode([.delivered(id1, index: 1)])
        record[record.count - 1] ^= 0x01
        let handle = try XCTUnwrap(FileHandle(forWritingAtPath: journalPath))
        handle.seekToEndOfFile()
        handle.write(Data(record))
        handle.closeFile()

        let (_, recovered) = try openSpool()
        XCTAssertEqual(recovered.first?.states, [.delivered, .pending(attempts: 0, nextAttempt: 0)])
    }

    func testMessageWhoseRecipientsAreAllFinalIsRemovedAtRecovery() async throws {
        let (spool, _) = try openSpool()
        _ = try await accept(spool, recipients: 2, id: id1)
        _ = try await accept(spool, recipients: 1, id: id2)
        // Crash after the last journal record, before remove(): the file survived.
        try await spool.record([.delivered(id1, index: 0), .failed(id1, index: 1)])
        XCTAssertTrue(FileIO.exists(spoolDirectory + "/queue/" + id1.value))

        let (_, recovered) = try openSpool()
        XCTAssertEqual(recovered.map(\.queueID), [id2])
        XCTAssertFalse(FileIO.exists(spoolDirectory + "/queue/" + id1.value))
    }

    func testRemovedMessageIsGone() async throws {
        let (spool, _) = try openSpool()
        _ = try await accept(spool, recipients: 1, id: id1)
        try await spool.record([.delivered(id1, index: 0), .removed(id1)])
        spool.unlinkMessage(id1)
        let (_, recovered) = try openSpool()
        XCTAssertEqual(recovered.count, 0)
    }

    /// A crash between the journaled removal and the unlink: recovery finishes the removal.
    func testRemovalRecordWithoutUnlinkIsFinishedAtRecovery() async throws {
        let (spool, _) = try openSpool()
        _ = try await accept(spool, recipients: 2, id: id1)
        try await spool.record([.removed(id1)])
        XCTAssertTrue(FileIO.exists(spoolDirectory + "/queue/" + id1.value))
        let (_, recovered) = try openSpool()
        XCTAssertEqual(recovered.count, 0)
        XCTAssertFalse(FileIO.exists(spoolDirectory + "/queue/" + id1.value))
    }

    func testLeftoverTemporaryFileIsNotAMessage() throws {
        let (_, _) = try openSpool()
        try FileIO.writeNewFileSynced(spoolDirectory + "/tmp/" + id1.value, parts: [Array("half".utf8)])
        let (_, recovered) = try openSpool()
        XCTAssertEqual(recovered.count, 0)
        XCTAssertEqual(try FileIO.list(spoolDirectory + "/tmp"), [])
    }

    func testUnreadableQueueFileIsSetAside() throws {
        let (_, _) = try openSpool()
        try FileIO.writeNewFileSynced(spoolDirectory + "/queue/" + id1.value, parts: [Array("garbage\n\nbody".utf8)])
        let (_, recovered) = try openSpool()
        XCTAssertEqual(recovered.count, 0)
        XCTAssertTrue(FileIO.exists(spoolDirectory + "/corrupt-" + id1.value))
    }

    /// Compaction (docs/spool.md): with a tiny threshold the journal is rewritten many times while
    /// states change and messages are removed; the queue read back is exactly the live state, and
    /// the journal stays small.
    func testCompactionKeepsExactlyTheLiveState() async throws {
        let spool = try Spool(directory: spoolDirectory, compactionThreshold: 256)
        _ = try spool.recover()
        let ids = (1...6).map { QueueID(String(format: "%016X", $0))! }
        for id in ids { _ = try await accept(spool, recipients: 3, id: id) }
        for round in 1...40 {
            for id in ids { try await spool.record([.deferred(id, index: 2, nextAttempt: Int64(round), attempts: round)]) }
        }
        try await spool.record([.delivered(ids[0], index: 0), .failed(ids[0], index: 1)])
        // ids[1] finishes: its removal is journaled and its file unlinked.
        try await spool.record([.delivered(ids[1], index: 0), .delivered(ids[1], index: 1),
                                .delivered(ids[1], index: 2), .removed(ids[1])])
        spool.unlinkMessage(ids[1])
        for round in 41...60 {
            for id in ids.dropFirst(2) { try await spool.record([.deferred(id, index: 2, nextAttempt: Int64(round), attempts: round)]) }
        }
        XCTAssertLessThan(FileIO.fileSize(spoolDirectory + "/journal") ?? .max, 4096, "journal was not compacted")

        let (_, recovered) = try openSpool()
        let byID = Dictionary(uniqueKeysWithValues: recovered.map { ($0.queueID, $0) })
        XCTAssertNil(byID[ids[1]])
        XCTAssertEqual(byID[ids[0]]?.states, [.delivered, .failed, .pending(attempts: 40, nextAttempt: 40)])
        for id in ids.dropFirst(2) {
            XCTAssertEqual(byID[id]?.states, [.pending(attempts: 0, nextAttempt: 0), .pending(attempts: 0, nextAttempt: 0),
                                              .pending(attempts: 60, nextAttempt: 60)])
        }
    }
}

final class MessageFileTests: TemporaryDirectoryTestCase {
    private func roundTrip(_ envelope: Envelope, body: [UInt8] = Array("Subject: x\r\n\r\nhi\r\n".utf8)) throws -> (Envelope, Int64, [UInt8]) {
        let path = directory + "/msg"
        unlink(path)
        try FileIO.writeNewFileSynced(path, parts: [MessageFile.header(envelope: envelope, arrival: 42), body])
        let (read, arrival, offset) = try MessageFile.readHeader(path: path)
        return (read, arrival, Array(try FileIO.readFile(path)[offset...]))
    }

    func testHeaderRoundTrip() throws {
        let envelope = Envelope(sender: .mailbox(Mailbox(parsing: "a@example.org")!),
                                recipients: [Mailbox(parsing: "b@example.net")!, Mailbox(parsing: "C@example.net")!],
                                heloName: "client.example.org", clientAddress: "2001:db8::1",
                                authenticatedUser: "a@example.org", receivedProtocol: "ESMTPSA")
        let (read, arrival, body) = try roundTrip(envelope)
        XCTAssertEqual(read, envelope)
        XCTAssertEqual(arrival, 42)
        XCTAssertEqual(body, Array("Subject: x\r\n\r\nhi\r\n".utf8))
    }

    // RFC 5321 §4.5.5: bounces have the null reverse-path; it must survive the spool.
    func testNullSenderAndNoAuthRoundTrip() throws {
        let envelope = Envelope(sender: .null, recipients: [Mailbox(parsing: "b@example.net")!],
                                heloName: "h.example", clientAddress: "192.0.2.1")
        let (read, _, _) = try roundTrip(envelope, body: Array("\n\nbody with blank lines\n\n".utf8))
        XCTAssertEqual(read, envelope)
        XCTAssertEqual(read.sender, .null)
        XCTAssertNil(read.authenticatedUser)
    }

    func testHostileHeloCannotAddHeaderLines() throws {
        let envelope = Envelope(sender: .null, recipients: [Mailbox(parsing: "b@example.net")!],
                                heloName: "evil\nrcpt victim@example.org", clientAddress: "192.0.2.1")
        let (read, _, _) = try roundTrip(envelope)
        XCTAssertEqual(read.recipients, envelope.recipients)
        XCTAssertEqual(read.heloName, "evil?rcpt?victim@example.org")
    }

    func testHeaderWithoutRecipientsOrMagicIsRejected() throws {
        let path = directory + "/bad"
        try FileIO.writeNewFileSynced(path, parts: [Array("APUS1\narrival 1\nsender \n\nbody".utf8)])
        XCTAssertThrowsError(try MessageFile.readHeader(path: path))
        let other = directory + "/bad2"
        try FileIO.writeNewFileSynced(other, parts: [Array("APUS9\nrcpt a@b.example\n\nbody".utf8)])
        XCTAssertThrowsError(try MessageFile.readHeader(path: other))
    }
}

final class JournalRecordTests: XCTestCase {
    private let q = QueueID("00112233445566FF")!
    private var all: [JournalRecord] {
        [.delivered(q, index: 0), .failed(q, index: 12), .deferred(q, index: 3, nextAttempt: 1_764_769_283, attempts: 7),
         .removed(q)]
    }

    func testEncodeDecodeRoundTrip() {
        let bytes = JournalRecord.encode(all)
        let (records, valid) = JournalRecord.decode(bytes)
        XCTAssertEqual(records, all)
        XCTAssertEqual(valid, bytes.count)
    }

    func testWireFormatIsLengthCRCPayload() {
        let bytes = JournalRecord.encode([.delivered(q, index: 1)])
        let payload = Array("D 00112233445566FF 1".utf8)
        let crc = CRC32.checksum(payload)
        XCTAssertEqual(bytes, [0, 0, 0, UInt8(payload.count),
                               UInt8(crc >> 24), UInt8(crc >> 16 & 0xFF), UInt8(crc >> 8 & 0xFF), UInt8(crc & 0xFF)] + payload)
        XCTAssertEqual(JournalRecord(payload: payload[...]), .delivered(q, index: 1))
    }

    func testDecodeStopsAtEveryTruncation() {
        let first = JournalRecord.encode([all[0]])
        let bytes = JournalRecord.encode(all)
        for cut in first.count..<(first.count + JournalRecord.encode([all[1]]).count) {
            let (records, valid) = JournalRecord.decode(Array(bytes.prefix(cut)))
            XCTAssertEqual(records, [all[0]], "cut at \(cut)")
            XCTAssertEqual(valid, first.count, "cut at \(cut)")
        }
    }

    func testBadPayloadsAreRefused() {
        for text in ["", "D", "D 00112233445566FF", "D 00112233445566FF x", "Z 00112233445566FF 1",
                     "R 00112233445566FF 1 2", "X 0011", "D 00112233445566FF 1 2"] {
            XCTAssertNil(JournalRecord(payload: Array(text.utf8)[...]), text)
        }
    }
}
