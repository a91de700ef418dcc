import MailCore
import XCTest

private func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }
private func line(_ text: String) -> LineResult { .line(Array(text.utf8)) }

final class LineBufferTests: XCTestCase {
    func testSplitsCRLFAndBareLFAndKeepsPartialLines() {
        var buffer = LineBuffer()
        buffer.append(bytes("EHLO x\r\nNOOP\nQU"))
        XCTAssertEqual(buffer.nextLine(limit: 100), line("EHLO x"))
        XCTAssertEqual(buffer.nextLine(limit: 100), line("NOOP"))
        XCTAssertEqual(buffer.nextLine(limit: 100), .needMore)
        XCTAssertEqual(buffer.count, 2)
        buffer.append(bytes("IT\r\n"))
        XCTAssertEqual(buffer.nextLine(limit: 100), line("QUIT"))
        XCTAssertTrue(buffer.isEmpty)
    }

    func testOnlyTheCRBeforeLFIsStripped() {
        var buffer = LineBuffer()
        buffer.append(bytes("a\rb\r\r\n\r\n"))
        XCTAssertEqual(buffer.nextLine(limit: 100), line("a\rb\r"))
        XCTAssertEqual(buffer.nextLine(limit: 100), line(""))
    }

    func testLimitIsInclusive() {
        var buffer = LineBuffer()
        buffer.append(bytes(String(repeating: "a", count: 10) + "\r\n"))
        buffer.append(bytes(String(repeating: "b", count: 10) + "\n"))
        buffer.append(bytes(String(repeating: "c", count: 11) + "\n"))
        XCTAssertEqual(buffer.nextLine(limit: 10), line(String(repeating: "a", count: 10)))
        XCTAssertEqual(buffer.nextLine(limit: 10), line(String(repeating: "b", count: 10)))
        XCTAssertEqual(buffer.nextLine(limit: 10), .tooLong)
        XCTAssertEqual(buffer.nextLine(limit: 10), .needMore)
    }

    func testTooLongLineArrivingInPiecesIsReportedOnceAndTheNextLineIsRead() {
        var buffer = LineBuffer()
        var results: [LineResult] = []
        for piece in [String(repeating: "A", count: 15), String(repeating: "A", count: 15), "AAA\r", "\nNOOP\r\n"] {
            buffer.append(bytes(piece))
            while true {
                let result = buffer.nextLine(limit: 10)
                if result == .needMore { break }
                results.append(result)
            }
        }
        XCTAssertEqual(results, [.tooLong, line("NOOP")])
        XCTAssertLessThanOrEqual(buffer.bytes.count, 40)
    }

    // The same input in a single append: the line after the long one must survive too.
    func testTooLongLineInOneAppendDoesNotSwallowTheNextLine() {
        var buffer = LineBuffer()
        buffer.append(bytes(String(repeating: "A", count: 30) + "\r\nNOOP\r\nQUIT\r\n"))
        XCTAssertEqual(buffer.nextLine(limit: 10), .tooLong)
        XCTAssertEqual(buffer.nextLine(limit: 10), line("NOOP"))
        XCTAssertEqual(buffer.nextLine(limit: 10), line("QUIT"))
        XCTAssertEqual(buffer.nextLine(limit: 10), .needMore)
    }

    func testByteByByteGivesTheSameLinesAsOneAppend() {
        let input = bytes("HELO a\r\n" + String(repeating: "x", count: 25) + "\nRSET\r\n\r\nDATA\n")
        func collect(_ chunks: [ArraySlice<UInt8>]) -> [LineResult] {
            var buffer = LineBuffer()
            var out: [LineResult] = []
            for chunk in chunks {
                buffer.append(chunk)
                while case let result = buffer.nextLine(limit: 12), result != .needMore { out.append(result) }
            }
            return out
        }
        let whole = collect([input[...]])
        XCTAssertEqual(whole, [line("HELO a"), .tooLong, line("RSET"), line(""), line("DATA")])
        XCTAssertEqual(collect(input.indices.map { input[$0...$0] }), whole)
    }

    func testTakeAllAndDiscardAll() {
        var buffer = LineBuffer()
        buffer.append(bytes("NOOP\r\nrest"))
        XCTAssertEqual(buffer.nextLine(limit: 100), line("NOOP"))
        XCTAssertEqual(Array(buffer.takeAll()), bytes("rest"))
        XCTAssertTrue(buffer.isEmpty)

        // discardAll also forgets that a long line was being skipped (STARTTLS hand-over).
        buffer.append(bytes(String(repeating: "z", count: 50)))
        XCTAssertEqual(buffer.nextLine(limit: 10), .needMore)
        buffer.discardAll()
        buffer.append(bytes("EHLO a\r\n"))
        XCTAssertEqual(buffer.nextLine(limit: 10), line("EHLO a"))
    }
}

final class DataFramerTests: XCTestCase {
    private struct Framed: Equatable {
        var outcome: DataFramer.Outcome
        var consumed: Int
        var message: [UInt8]
    }

    /// Feeds `input` whole and byte by byte; both must agree. Returns nil if unfinished.
    private func frame(_ input: [UInt8], limit: Int = 1 << 20,
                       file: StaticString = #filePath, line: UInt = #line) -> Framed? {
        var whole = DataFramer(sizeLimit: limit)
        let first = whole.feed(input[...]).map { Framed(outcome: $0.0, consumed: $0.consumed, message: whole.message) }

        var bytewise = DataFramer(sizeLimit: limit)
        var second: Framed?
        for index in input.indices {
            if let (outcome, consumed) = bytewise.feed(input[index...index]) {
                XCTAssertEqual(consumed, 1, file: file, line: line)
                second = Framed(outcome: outcome, consumed: index + 1, message: bytewise.message)
                break
            }
        }
        XCTAssertEqual(first, second, "whole and byte-by-byte framing differ", file: file, line: line)
        return first
    }

    // RFC 5321 §4.1.1.4: CRLF.CRLF ends the data; what follows belongs to the next command.
    func testTerminatorAndLeftovers() {
        let input = bytes("Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        let framed = frame(input)
        XCTAssertEqual(framed?.outcome, .complete)
        XCTAssertEqual(framed?.message, bytes("Subject: x\r\n\r\nbody\r\n"))
        XCTAssertEqual(framed.map { Array(input[$0.consumed...]) }, bytes("QUIT\r\n"))
    }

    func testLoneDotRightAwayIsAnEmptyMessage() {
        XCTAssertEqual(frame(bytes(".\r\n")), Framed(outcome: .complete, consumed: 3, message: []))
    }

    // RFC 5321 §4.5.2: the first dot of a line is removed.
    func testDotStuffingIsUndone() {
        XCTAssertEqual(frame(bytes("..\r\n..x\r\n...\r\na.b\r\n.\r\n"))?.message, bytes(".\r\n.x\r\n..\r\na.b\r\n"))
    }

    func testNeedsMoreUntilTheTerminator() {
        var framer = DataFramer(sizeLimit: 100)
        XCTAssertNil(framer.feed(bytes("abc\r\n.")[...]))
        XCTAssertNil(framer.feed(bytes("\r")[...]))
        XCTAssertNil(framer.feed([UInt8]()[...]))
        let result = framer.feed(bytes("\nNEXT")[...])
        XCTAssertEqual(result?.0, .complete)
        XCTAssertEqual(result?.consumed, 1)
    }

    func testSlicesWithNonZeroStartIndex() {
        let input = bytes("XXXXhello\r\n.\r\nrest")
        var framer = DataFramer(sizeLimit: 100)
        let result = framer.feed(input[4...])
        XCTAssertEqual(result?.consumed, 10)
        XCTAssertEqual(framer.message, bytes("hello\r\n"))
    }

    // SMTP smuggling (RFC 5321 §2.3.8, §4.1.1.4): bare LF/CR never end the data and mark it bad.
    func testBareLineEndingsAreFlaggedAndDoNotEndTheData() {
        let cases = ["a\nb\r\n.\r\n", "a\rb\r\n.\r\n", "a\n.\nMAIL FROM:<x@y>\r\n.\r\n", "a\r.\rMAIL\r\n.\r\n",
                     "a\r\n.\nMAIL\r\n.\r\n", "a\r\n.\rX\r\n.\r\n", "a\r\r\n.\r\n"]
        for text in cases {
            let input = bytes(text)
            let framed = frame(input)
            XCTAssertEqual(framed?.outcome, .bareLineEnding, String(reflecting: text))
            XCTAssertEqual(framed?.consumed, input.count, String(reflecting: text))
        }
    }

    // RFC 1870: past the limit bytes are counted and dropped; memory stays at the limit.
    func testSizeLimit() {
        let input = bytes(String(repeating: "0123456789", count: 100) + "\r\n.\r\n")
        let framed = frame(input, limit: 64)
        XCTAssertEqual(framed?.outcome, .tooLarge)
        XCTAssertEqual(framed?.consumed, input.count)
        XCTAssertLessThanOrEqual(framed?.message.count ?? .max, 64)

        var framer = DataFramer(sizeLimit: 64)
        _ = framer.feed(input[...])
        XCTAssertEqual(framer.octetsSeen, 1002)

        // Exactly at the limit is fine.
        XCTAssertEqual(frame(bytes("0123456\r\n.\r\n"), limit: 9)?.outcome, .complete)
        XCTAssertEqual(frame(bytes("01234567\r\n.\r\n"), limit: 9)?.outcome, .tooLarge)
    }
}

final class DotStuffingTests: XCTestCase {
    private func encode(_ text: String) -> String { String(decoding: DotStuffing.encode(bytes(text)), as: UTF8.self) }

    // RFC 5321 §4.5.2: a leading dot is doubled; the terminator is appended.
    func testLeadingDotsAreDoubled() {
        XCTAssertEqual(encode(".a\r\nb.c\r\n..\r\n"), "..a\r\nb.c\r\n...\r\n.\r\n")
        XCTAssertEqual(encode("x\r\n.\r\ny\r\n"), "x\r\n..\r\ny\r\n.\r\n")
    }

    func testBareLineEndsBecomeCRLF() {
        XCTAssertEqual(encode("a\nb\n"), "a\r\nb\r\n.\r\n")
        XCTAssertEqual(encode("a\rb\r\n"), "a\r\nb\r\n.\r\n")
        XCTAssertEqual(encode("x\r.y\n.z"), "x\r\n..y\r\n..z\r\n.\r\n")
        XCTAssertEqual(encode("a\r"), "a\r\n.\r\n")
        XCTAssertEqual(encode("\r\r"), "\r\n\r\n.\r\n")
    }

    func testMissingFinalCRLFIsAddedAndEmptyMessageIsJustTheTerminator() {
        XCTAssertEqual(encode("no newline"), "no newline\r\n.\r\n")
        XCTAssertEqual(encode(""), ".\r\n")
        XCTAssertEqual(encode("."), "..\r\n.\r\n")
    }

    // decode(encode(x)) == x for any message made of CRLF lines.
    func testDataFramerUndoesEncode() {
        var generator = SystemRandomNumberGenerator()
        let alphabet = bytes(".. .a\tZ\u{7f}")
        for round in 0..<200 {
            var message: [UInt8] = []
            for _ in 0..<Int.random(in: 0...8, using: &generator) {
                for _ in 0..<Int.random(in: 0...6, using: &generator) { message.append(alphabet.randomElement(using: &generator)!) }
                message += [13, 10]
            }
            let encoded = DotStuffing.encode(message)
            var framer = DataFramer(sizeLimit: 1 << 16)
            let result = framer.feed(encoded[...])
            XCTAssertEqual(result?.0, .complete, "round \(round)")
            XCTAssertEqual(result?.consumed, encoded.count, "round \(round)")
            XCTAssertEqual(framer.message, message, "round \(round): \(String(reflecting: String(decoding: message, as: UTF8.self)))")
        }
    }
}
