import MailCore
import XCTest

final class Base64Tests: XCTestCase {
    // RFC 4648 §10 test vectors.
    private let vectors: [(String, String)] = [
        ("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy"),
    ]

    func testEncodesRFC4648Vectors() {
        for (plain, encoded) in vectors {
            XCTAssertEqual(Base64.encode(Array(plain.utf8)), encoded, plain)
        }
    }

    func testDecodesRFC4648Vectors() {
        for (plain, encoded) in vectors {
            XCTAssertEqual(Base64.decode(encoded), Array(plain.utf8), encoded)
        }
    }

    func testRoundTripsEveryByteValueAndLength() {
        let all = (0...255).map { UInt8($0) }
        for length in 0...all.count where length < 40 || length % 17 == 0 || length == all.count {
            let bytes = Array(all.suffix(length).reversed())
            XCTAssertEqual(Base64.decode(Base64.encode(bytes)), bytes, "length \(length)")
        }
    }

    // RFC 4954 §4: a malformed response must be refused (501), so decoding is strict.
    func testRejectsMalformedInput() {
        let bad = [
            "Zg=",        // length not a multiple of 4
            "Zg",         // padding missing
            "Z===",       // too much padding
            "=Zm9",       // padding first
            "Zg==Zm9v",   // padding before the end
            "Zm=v",       // data after padding
            "Zm9v YmFy",  // space
            "Zm9v\r\n",   // line break
            "Zm9-",       // base64url alphabet is not base64
            "Zm9_",
            "Zm\u{e9}",   // non-ASCII byte (4 octets)
        ]
        for text in bad {
            XCTAssertNil(Base64.decode(text), text)
        }
    }
}

final class CRC32Tests: XCTestCase {
    // The CRC-32/ISO-HDLC check value (as zlib).
    func testCheckValue() {
        XCTAssertEqual(CRC32.checksum(Array("123456789".utf8)), 0xCBF4_3926)
    }

    func testEmptyAndSingleBitChange() {
        XCTAssertEqual(CRC32.checksum([UInt8]()), 0)
        XCTAssertNotEqual(CRC32.checksum([0x00]), CRC32.checksum([0x01]))
        XCTAssertEqual(CRC32.checksum(Array("The quick brown fox jumps over the lazy dog".utf8)), 0x414F_A339)
    }
}

final class QueueIDTests: XCTestCase {
    func testFormatIsSixteenUppercaseHexDigits() {
        let id = QueueID.make(microseconds: 1, sequence: 2)
        XCTAssertEqual(id.value, "0000000000001002")
        XCTAssertEqual(QueueID.make(microseconds: 0xABC, sequence: 0xFFF).value, "0000000000ABCFFF")
        for _ in 0..<20 {
            let next = QueueID.next()
            XCTAssertEqual(next.value.utf8.count, 16)
            XCTAssertNotNil(QueueID(next.value))
        }
    }

    func testSequencePartIsTwelveBits() {
        XCTAssertEqual(QueueID.make(microseconds: 5, sequence: 0x1FFF), QueueID.make(microseconds: 5, sequence: 0xFFF))
    }

    /// Thousands of ids in a burst: all distinct and in order (the spool creates files by id).
    func testNextNeverRepeatsAndIsOrdered() {
        let ids = (0..<10_000).map { _ in QueueID.next() }
        XCTAssertEqual(Set(ids).count, ids.count)
        XCTAssertEqual(ids, ids.sorted())
    }

    /// Today's time fits: ids do not wrap before the year 2112.
    func testCurrentTimeDoesNotWrap() {
        let now = QueueID.make(microseconds: 1_796_300_000_000_000, sequence: 0)
        let later = QueueID.make(microseconds: 4_000_000_000_000_000, sequence: 0)
        XCTAssertLessThan(now, later)
    }

    // Time-ordered: a later microsecond sorts after, whatever the sequence bits.
    func testOrderFollowsTime() {
        let early = QueueID.make(microseconds: 1_764_769_283_123_456, sequence: 0xFFF)
        let late = QueueID.make(microseconds: 1_764_769_283_123_457, sequence: 0)
        XCTAssertLessThan(early, late)
        XCTAssertEqual([late, early].sorted(), [early, late])
    }

    func testParsingRejectsOtherShapes() {
        XCTAssertNotNil(QueueID("0123456789ABCDEF"))
        XCTAssertNil(QueueID("0123456789abcdef"))
        XCTAssertNil(QueueID("0123456789ABCDE"))
        XCTAssertNil(QueueID("0123456789ABCDEF0"))
        XCTAssertNil(QueueID("0123456789ABCDEG"))
        XCTAssertNil(QueueID("../../etc/passwd"))
    }
}

final class ReplyTests: XCTestCase {
    // RFC 5321 §4.2.1: every line but the last is "code-text", the last "code text", each CRLF.
    func testMultiLineWireFormat() {
        let reply = Reply(250, nil, ["apus.test", "PIPELINING", "SIZE 100"])
        XCTAssertEqual(String(decoding: reply.wireBytes, as: UTF8.self),
                       "250-apus.test\r\n250-PIPELINING\r\n250 SIZE 100\r\n")
    }

    // RFC 2034 §4: the enhanced code is repeated on every line.
    func testEnhancedCodeOnEveryLine() {
        let reply = Reply(550, "5.1.1", ["first", "second"])
        XCTAssertEqual(String(decoding: reply.wireBytes, as: UTF8.self), "550-5.1.1 first\r\n550 5.1.1 second\r\n")
        XCTAssertEqual(reply.description, "550 5.1.1 first second")
    }

    func testSingleAndEmptyLine() {
        XCTAssertEqual(String(decoding: Reply(221, "2.0.0", "Bye").wireBytes, as: UTF8.self), "221 2.0.0 Bye\r\n")
        XCTAssertEqual(String(decoding: Reply(334, nil, [String]()).wireBytes, as: UTF8.self), "334 \r\n")
    }

    func testClassification() {
        XCTAssertTrue(Reply(250, nil, "").isPositive)
        XCTAssertTrue(Reply(354, nil, "").isPositive)
        XCTAssertTrue(Reply(421, nil, "").isTransientFailure)
        XCTAssertFalse(Reply(421, nil, "").isPermanentFailure)
        XCTAssertTrue(Reply(554, nil, "").isPermanentFailure)
    }
}
