@testable import Config
import XCTest

final class ConfigParseTests: XCTestCase {
    private let full = """
        # Apus test configuration
        hostname = mx.example.org
        local_domains = example.org, Example.NET
        spool_directory = /srv/apus/spool
        mail_directory = /srv/apus/mail
        sasldb_path = /srv/apus/sasldb2
        tls_certificate = /etc/apus/cert.pem   # trailing comment
        tls_key = /etc/apus/key.pem
        dns_servers = 192.0.2.53 2001:db8::53@5353
        listen = smtp 0.0.0.0:25
        listen = submission [::1]:587
        listen = pop3s 127.0.0.1:995
        relay_networks = 127.0.0.0/8, ::1/128, 10.1.0.0/16
        message_size_limit = 1048576
        recipient_limit = 50
        command_timeout = 2m
        retry_first = 30s
        retry_max = 2h
        queue_lifetime = 3d
        delivery_concurrency = 4
        outbound_tls = verify
        enforce_sender_ownership = no
        test_only_outbound_smtp_port = 2525
        """

    func testFullConfigurationSetsEveryKey() throws {
        let c = try ApusConfig.parse(full, file: "apus.conf")
        XCTAssertEqual(c.hostname, "mx.example.org")
        XCTAssertEqual(c.localDomains, ["example.org", "example.net"])
        XCTAssertEqual(c.spoolDirectory, "/srv/apus/spool")
        XCTAssertEqual(c.mailDirectory, "/srv/apus/mail")
        XCTAssertEqual(c.sasldbPath, "/srv/apus/sasldb2")
        XCTAssertEqual(c.tlsCertificate, "/etc/apus/cert.pem")
        XCTAssertEqual(c.tlsKey, "/etc/apus/key.pem")
        XCTAssertEqual(c.dnsServers, ["192.0.2.53", "2001:db8::53@5353"])
        XCTAssertEqual(c.listeners, [ListenSpec(service: .smtp, ip: "0.0.0.0", port: 25),
                                     ListenSpec(service: .submission, ip: "::1", port: 587),
                                     ListenSpec(service: .pop3s, ip: "127.0.0.1", port: 995)])
        XCTAssertEqual(c.relayNetworks, [NetworkRange("127.0.0.0/8")!, NetworkRange("::1/128")!, NetworkRange("10.1.0.0/16")!])
        XCTAssertEqual(c.messageSizeLimit, 1_048_576)
        XCTAssertEqual(c.recipientLimit, 50)
        XCTAssertEqual(c.commandTimeout, 120)
        XCTAssertEqual(c.retryFirst, 30)
        XCTAssertEqual(c.retryMax, 7200)
        XCTAssertEqual(c.queueLifetime, 3 * 86_400)
        XCTAssertEqual(c.deliveryConcurrency, 4)
        XCTAssertEqual(c.outboundTLS, "verify")
        XCTAssertFalse(c.enforceSenderOwnership)
        XCTAssertEqual(c.testOnlyOutboundSMTPPort, 2525)
    }

    func testDefaults() throws {
        let c = try ApusConfig.parse("# nothing set\n\n", file: "empty.conf")
        XCTAssertEqual(c.hostname, ApusConfig.systemHostname())
        XCTAssertEqual(c.localDomains, ["localhost"])
        XCTAssertEqual(c.spoolDirectory, "/var/spool/apus")
        XCTAssertEqual(c.mailDirectory, "/var/mail/apus")
        XCTAssertEqual(c.sasldbPath, "/etc/apus/sasldb2")
        XCTAssertNil(c.tlsCertificate)
        XCTAssertNil(c.tlsKey)
        XCTAssertEqual(c.dnsServers, [])
        XCTAssertEqual(c.listeners, [])
        XCTAssertEqual(c.relayNetworks, [])
        XCTAssertEqual(c.messageSizeLimit, 26_214_400)
        XCTAssertEqual(c.recipientLimit, 1000)
        XCTAssertEqual(c.commandTimeout, 300)
        XCTAssertEqual(c.retryFirst, 300)
        XCTAssertEqual(c.retryMax, 3600)
        XCTAssertEqual(c.queueLifetime, 5 * 86_400)
        XCTAssertEqual(c.deliveryConcurrency, 20)
        XCTAssertEqual(c.outboundTLS, "may")
        XCTAssertTrue(c.enforceSenderOwnership)
        XCTAssertEqual(c.testOnlyOutboundSMTPPort, 25)
    }

    /// Parses `text`, expects a ConfigError on `line` whose message contains `fragment`.
    private func assertError(_ text: String, line: Int, _ fragment: String,
                             file: StaticString = #filePath, sourceLine: UInt = #line) {
        do {
            _ = try ApusConfig.parse(text, file: "test.conf")
            XCTFail("no error for \(String(reflecting: text))", file: file, line: sourceLine)
        } catch {
            XCTAssertEqual(error.line, line, error.description, file: file, line: sourceLine)
            XCTAssertTrue(error.description.hasPrefix("test.conf:\(line): "), error.description, file: file, line: sourceLine)
            XCTAssertTrue(error.message.contains(fragment), error.description, file: file, line: sourceLine)
        }
    }

    func testUnknownKey() {
        assertError("hostname = a.example\n\nmax_size = 10\n", line: 3, "unknown setting 'max_size'")
    }

    func testBadDuration() {
        assertError("# c\nretry_first = 5 minutes\n", line: 2, "'retry_first' needs a duration")
        assertError("command_timeout = -5s\n", line: 1, "duration")
        assertError("queue_lifetime = 5y\n", line: 1, "duration")
    }

    func testDuplicatedKeyNamesBothLines() {
        assertError("recipient_limit = 5\n# x\nrecipient_limit = 6\n", line: 3, "already set on line 1")
    }

    func testListenMayRepeatButNeedsAKnownService() {
        XCTAssertEqual(try ApusConfig.parse("listen = smtp 127.0.0.1:25\nlisten = pop3 127.0.0.1:110\n", file: "x").listeners.count, 2)
        assertError("listen = smtp 127.0.0.1:25\nlisten = imap 127.0.0.1:143\n", line: 2, "listen needs")
        assertError("listen = smtp localhost:25\n", line: 1, "is not <ip>:<port>")
        assertError("listen = smtp 127.0.0.1:70000\n", line: 1, "is not <ip>:<port>")
    }

    func testBadCIDR() {
        assertError("relay_networks = 127.0.0.0/8, 10.0.0.0/33\n", line: 1, "'10.0.0.0/33' is not a CIDR range")
        assertError("\n\nrelay_networks = example.org/8\n", line: 3, "not a CIDR range")
    }

    func testOtherValueErrors() {
        assertError("message_size_limit = 10\n", line: 1, "≥ 1024")
        assertError("enforce_sender_ownership = maybe\n", line: 1, "yes or no")
        assertError("outbound_tls = always\n", line: 1, "outbound_tls must be")
        assertError("dns_servers = 192.0.2.1@0\n", line: 1, "dns_servers")
        assertError("hostname = two words\n", line: 1, "one name")
        assertError("just a line\n", line: 1, "expected 'key = value'")
    }

    func testCrossKeyChecks() {
        assertError("\ntls_key = /k\n", line: 2, "must be set together")
        assertError("# x\nlisten = submission 127.0.0.1:587\n", line: 2, "needs tls_certificate")
        assertError("\nlocal_domains = ,\n", line: 2, "local_domains is empty")
        // The line of the listener that needs TLS, not of the last listen line.
        assertError("listen = submission 127.0.0.1:587\nlisten = smtp 127.0.0.1:25\n", line: 1, "needs tls_certificate")
    }

    func testLoadNamesTheFile() throws {
        let path = "/tmp/apus-config-test-\(getpid()).conf"
        try "outbound_tls = may\nbogus = 1\n".write(toFile: path, atomically: true, encoding: .utf8)
        defer { unlink(path) }
        XCTAssertThrowsError(try ApusConfig.load(path: path)) { error in
            XCTAssertEqual((error as? ConfigError)?.description, "\(path):2: unknown setting 'bogus'")
        }
        XCTAssertThrowsError(try ApusConfig.load(path: path + ".missing")) { error in
            XCTAssertEqual((error as? ConfigError)?.line, 0)
        }
    }
}

final class NetworkRangeTests: XCTestCase {
    func testIPv4Slash8() throws {
        let range = try XCTUnwrap(NetworkRange("127.0.0.0/8"))
        XCTAssertTrue(range.contains("127.0.0.1"))
        XCTAssertTrue(range.contains("127.255.255.255"))
        XCTAssertFalse(range.contains("128.0.0.1"))
        XCTAssertFalse(range.contains("::1"))
        XCTAssertFalse(range.contains("not an ip"))
    }

    func testIPv4Slash32AndBareAddress() throws {
        let range = try XCTUnwrap(NetworkRange("192.0.2.10/32"))
        XCTAssertTrue(range.contains("192.0.2.10"))
        XCTAssertFalse(range.contains("192.0.2.11"))
        XCTAssertEqual(NetworkRange("192.0.2.10"), range)
    }

    func testNonOctetPrefix() throws {
        let range = try XCTUnwrap(NetworkRange("10.0.0.0/12"))
        XCTAssertTrue(range.contains("10.15.255.255"))
        XCTAssertFalse(range.contains("10.16.0.0"))
        XCTAssertTrue(try XCTUnwrap(NetworkRange("0.0.0.0/0")).contains("203.0.113.9"))
    }

    func testIPv6Loopback() throws {
        let range = try XCTUnwrap(NetworkRange("::1/128"))
        XCTAssertTrue(range.contains("::1"))
        XCTAssertTrue(range.contains("0:0:0:0:0:0:0:1"))
        XCTAssertFalse(range.contains("::2"))
        XCTAssertFalse(range.contains("127.0.0.1"))
        XCTAssertTrue(try XCTUnwrap(NetworkRange("2001:db8::/32")).contains("2001:db8:ffff::1"))
    }

    func testRejectsBadRanges() {
        for text in ["10.0.0.0/33", "::1/129", "10.0.0.0/-1", "10.0.0/8", "10.0.0.0/8/8", "host/8", "10.0.0.0/x", ""] {
            XCTAssertNil(NetworkRange(text), text)
        }
    }
}

final class DurationTests: XCTestCase {
    func testUnits() {
        XCTAssertEqual(parseDuration("30s"), 30)
        XCTAssertEqual(parseDuration("5m"), 300)
        XCTAssertEqual(parseDuration("1h"), 3600)
        XCTAssertEqual(parseDuration("5d"), 432_000)
        XCTAssertEqual(parseDuration("2w"), 1_209_600)
        XCTAssertEqual(parseDuration("45"), 45)
        XCTAssertEqual(parseDuration("0s"), 0)
    }

    func testRejects() {
        for text in ["", "m", "-1", "-1m", "1.5h", "5 m", "5M", "1y", "h1", "999999999999999999w"] {
            XCTAssertNil(parseDuration(text), text)
        }
    }
}

final class ConfigHostileValueTests: XCTestCase {
    /// Values that once crashed the parser are now errors with the line number.
    func testBadDNSServerIsAnErrorNotACrash() {
        for value in ["@53", "@", "127.0.0.1@", "127.0.0.1@99999", "::1@53@1"] {
            XCTAssertThrowsError(try ApusConfig.parse("dns_servers = \(value)\n", file: "t.conf"), value) { error in
                XCTAssertTrue("\(error)".hasPrefix("t.conf:1:"), "\(error)")
            }
        }
        XCTAssertNoThrow(try ApusConfig.parse("dns_servers = 127.0.0.1@5353 ::1\n", file: "t.conf"))
    }
}
