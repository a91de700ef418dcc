@testable import MailCore
import XCTest

final class MailboxTests: XCTestCase {
    func testParsesPlainMailboxAndLowercasesOnlyTheDomain() throws {
        // RFC 5321 §2.4: local parts are case-sensitive, domains are not.
        let m = try XCTUnwrap(Mailbox(parsing: "John.Doe@Example.ORG"))
        XCTAssertEqual(m.localPart, "John.Doe")
        XCTAssertEqual(m.domain, "example.org")
        XCTAssertEqual(m.description, "John.Doe@example.org")
    }

    func testAcceptsQuotedLocalPartAndAddressLiteral() {
        // RFC 5321 §4.1.2 Quoted-string, §4.1.3 address literals.
        XCTAssertEqual(Mailbox(parsing: "\"john doe\"@example.org")?.localPart, "\"john doe\"")
        XCTAssertEqual(Mailbox(parsing: "root@[192.0.2.1]")?.domain, "[192.0.2.1]")
        XCTAssertNotNil(Mailbox(parsing: "a+tag@sub.example.org"))
    }

    // RFC 5321 §4.5.3.1.1: a local part is at most 64 octets.
    func testLocalPartLengthLimit() {
        XCTAssertNotNil(Mailbox(parsing: String(repeating: "a", count: 64) + "@example.org"))
        XCTAssertNil(Mailbox(parsing: String(repeating: "a", count: 65) + "@example.org"))
    }

    func testDomainLabelLengthLimit() {
        XCTAssertNotNil(Mailbox(parsing: "a@" + String(repeating: "b", count: 63) + ".org"))
        XCTAssertNil(Mailbox(parsing: "a@" + String(repeating: "b", count: 64) + ".org"))
    }

    func testRejectsMalformedMailboxes() {
        let bad = [
            "", "nodomain", "@example.org", "user@", "us er@example.org", "user@exa mple.org",
            ".user@example.org", "user.@example.org", "user@example..org", "user@.example.org",
            "us<er@example.org", "us,er@example.org", "user@exam!ple.org", "user\r\n@example.org",
            "user\u{0}@example.org", "user@[]", "\"open@example.org",
        ]
        for text in bad {
            XCTAssertNil(Mailbox(parsing: text), String(reflecting: text))
        }
    }

    func testReversePathDescription() {
        XCTAssertEqual(ReversePath.null.description, "")
        XCTAssertEqual(ReversePath.mailbox(Mailbox(localPart: "a", domain: "B.example")).description, "a@b.example")
    }
}

final class PathArgumentTests: XCTestCase {
    func testPathWithoutParameters() {
        XCTAssertEqual(PathArgument.parse("<alice@example.org>"), PathArgument(path: "alice@example.org", parameters: []))
        // A space after "MAIL FROM:" is common and harmless.
        XCTAssertEqual(PathArgument.parse("  <alice@example.org>")?.path, "alice@example.org")
    }

    // RFC 5321 §4.5.5: the null reverse-path.
    func testNullPath() {
        XCTAssertEqual(PathArgument.parse("<>"), PathArgument(path: "", parameters: []))
    }

    // RFC 5321 §3.3 / §4.1.2: a source route is accepted and ignored.
    func testSourceRouteIsStripped() {
        XCTAssertEqual(PathArgument.parse("<@relay1.example,@relay2.example:bob@example.net>")?.path, "bob@example.net")
    }

    // RFC 5321 §4.1.2 Mail-parameters: keyword uppercased, value kept, value optional.
    func testParameters() {
        let parsed = PathArgument.parse("<a@b.example> size=1000 BODY=8BITMIME SMTPUTF8")
        XCTAssertEqual(parsed, PathArgument(path: "a@b.example",
                                            parameters: [("SIZE", "1000"), ("BODY", "8BITMIME"), ("SMTPUTF8", nil)]))
        XCTAssertNotEqual(parsed, PathArgument(path: "a@b.example", parameters: [("SIZE", "1000")]))
    }

    func testRejectsMissingOrUnbalancedBrackets() {
        XCTAssertNil(PathArgument.parse("alice@example.org"))
        XCTAssertNil(PathArgument.parse("<alice@example.org"))
        XCTAssertNil(PathArgument.parse("alice@example.org>"))
        XCTAssertNil(PathArgument.parse("<alice@example.org>SIZE=1"))
        XCTAssertNil(PathArgument.parse(""))
    }

    func testSpacesInsideBracketsReachTheMailboxCheck() {
        let parsed = PathArgument.parse("<alice smith@example.org>")
        XCTAssertEqual(parsed?.path, "alice smith@example.org")
        XCTAssertNil(parsed.flatMap { Mailbox(parsing: $0.path) })
    }
}
