import Foundation
import MailCore
import Mailbox
import Spool
import XCTest

final class MaildirTests: TemporaryDirectoryTestCase {
    private var store: MaildirStore { MaildirStore(root: directory + "/mail") }
    private let demo = Mailbox(parsing: "demo@localhost")!

    private func names(_ sub: String) throws -> [String] {
        try FileIO.list("\(directory)/mail/localhost/demo/\(sub)").sorted()
    }

    // The idempotence crash recovery relies on: the same delivery twice leaves one file.
    func testDeliverTwiceWithTheSameUniqueNameKeepsOneFile() throws {
        try store.create(demo)
        XCTAssertTrue(store.exists(demo))
        XCTAssertTrue(try store.deliver(Array("one\r\n".utf8), to: demo, uniqueName: "0000000000000001.0"))
        XCTAssertFalse(try store.deliver(Array("two\r\n".utf8), to: demo, uniqueName: "0000000000000001.0"))
        XCTAssertEqual(try names("new"), ["0000000000000001.0"])
        XCTAssertEqual(try names("tmp"), [])
        XCTAssertEqual(try FileIO.readFile("\(directory)/mail/localhost/demo/new/0000000000000001.0"), Array("one\r\n".utf8))
    }

    func testListMovesNewToCurAndDeliveryStaysIdempotentAfterwards() throws {
        try store.create(demo)
        try store.deliver(Array("bb\r\n".utf8), to: demo, uniqueName: "B")
        try store.deliver(Array("a\r\n".utf8), to: demo, uniqueName: "A")
        let listed = try store.list(demo)
        XCTAssertEqual(listed.map(\.name), ["A:2,", "B:2,"])
        XCTAssertEqual(listed.map(\.size), [3, 4])
        XCTAssertEqual(listed.map(\.uniqueID), ["A", "B"])
        XCTAssertEqual(try names("new"), [])
        XCTAssertEqual(try names("cur"), ["A:2,", "B:2,"])
        XCTAssertFalse(try store.deliver(Array("again".utf8), to: demo, uniqueName: "A"))
        XCTAssertEqual(try store.read(listed[1], of: demo), Array("bb\r\n".utf8))

        try store.delete([listed[0]], of: demo)
        XCTAssertEqual(try store.list(demo).map(\.uniqueID), ["B"])
    }

    // RFC 1939 §8: one session at a time per maildrop.
    func testLockIsExclusive() throws {
        try store.create(demo)
        let fd = try XCTUnwrap(store.lock(demo))
        XCTAssertNil(store.lock(demo))
        store.unlock(fd)
        let again = try XCTUnwrap(store.lock(demo))
        store.unlock(again)
    }

    func testPathRefusesLocalPartsThatEscapeTheTree() {
        XCTAssertEqual(store.path(for: demo), directory + "/mail/localhost/demo")
        XCTAssertEqual(store.path(for: Mailbox(localPart: "Demo", domain: "LocalHost")), directory + "/mail/localhost/demo")
        for local in ["../x", "a/b", "..", ".hidden", "x\u{1}y", ""] {
            XCTAssertNil(store.path(for: Mailbox(localPart: local, domain: "localhost")), local)
        }
        XCTAssertNil(store.path(for: Mailbox(localPart: "x", domain: "../etc")))
        XCTAssertNil(store.path(for: Mailbox(localPart: "x", domain: "a/b")))
        // A syntactically valid address with a slash simply has no mailbox.
        let slash = Mailbox(parsing: "a/b@localhost")!
        XCTAssertFalse(store.exists(slash))
        XCTAssertThrowsError(try store.deliver([1], to: slash, uniqueName: "Q"))
        XCTAssertThrowsError(try store.create(slash))
    }

    func testDeliveryToMissingMailboxThrows() {
        XCTAssertFalse(store.exists(demo))
        XCTAssertThrowsError(try store.deliver([1], to: demo, uniqueName: "Q"))
    }
}
