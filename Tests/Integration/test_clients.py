"""More real clients against the real apusd: fetchmail and curl over POP3S (RFC 1939, RFC 8314),
and apusd's refusal of a broken config file (errors name file:line).

Run with the rest of the suite:  python3 -m unittest discover -s Tests/Integration -v
"""

from __future__ import annotations

import os
import subprocess
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import APUSD, Apus, free_port, maildir_files, wait_for_maildir  # noqa: E402
from test_end_to_end import DEMO, PASSWORD, TIMEOUT, ApusTestCase, build_message  # noqa: E402


class FetchClientsTest(ApusTestCase):

    def test_fetchmail_pop3s_fetches_and_deletes(self):
        apus = self.start_apus()
        msg = build_message("sender@example.com", DEMO, "for fetchmail")
        self.deliver_locally(apus, msg)

        out = self.tmp / "fetched.mbox"
        rc = self.tmp / "fetchmailrc"
        rc.write_text(
            "set no syslog\n"
            f"poll 127.0.0.1 port {apus.ports['pop3s']} protocol pop3 timeout {TIMEOUT}\n"
            f"  user \"{DEMO}\" password \"{PASSWORD}\"\n"
            f"  ssl sslcertck sslcertfile \"{apus.cert}\" sslcommonname localhost\n"
            f"  mda \"/bin/sh -c 'cat >> {out}'\"\n"
            "  fetchall nokeep\n")
        os.chmod(rc, 0o600)
        env = dict(os.environ, FETCHMAILHOME=str(self.tmp), HOME=str(self.tmp))
        result = subprocess.run(["fetchmail", "-f", str(rc), "-v"], env=env, capture_output=True,
                                timeout=TIMEOUT * 2, text=True)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertTrue(out.exists(), result.stdout + result.stderr)
        fetched = out.read_bytes().replace(b"\r\n", b"\n")
        # fetchmail passes the message to the MDA with LF line ends; it must contain the body.
        self.assertIn(msg.replace(b"\r\n", b"\n").split(b"\n\n", 1)[1], fetched)
        # nokeep: the message was deleted on the server (RFC 1939 §6 UPDATE).
        self.assertEqual(list((apus.maildir(DEMO) / "cur").iterdir()), [])

    def test_curl_pop3s_retrieves_byte_identical(self):
        """The fetch command `make run` prints: curl pop3s://…/1 (RETR 1)."""
        apus = self.start_apus()
        msg = build_message("sender@example.com", DEMO, "for curl")
        self.deliver_locally(apus, msg)
        result = subprocess.run(
            ["curl", "-sS", "--max-time", str(TIMEOUT), "--cacert", str(apus.cert),
             "-u", f"{DEMO}:{PASSWORD}", f"pop3s://localhost:{apus.ports['pop3s']}/1",
             "--resolve", f"localhost:{apus.ports['pop3s']}:127.0.0.1"],
            capture_output=True, timeout=TIMEOUT * 2)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assert_trace_prefix_then_exact(result.stdout, msg, required_fields=("Return-Path", "Received"))


class ConfigErrorTest(unittest.TestCase):

    def test_bad_config_names_file_and_line(self):
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            conf = Path(tmp) / "apus.conf"
            conf.write_text("hostname = mx.example\n# comment\nretry_first = soon\n")
            result = subprocess.run([str(APUSD), "-c", str(conf)], capture_output=True, text=True,
                                    timeout=TIMEOUT)
            self.assertNotEqual(result.returncode, 0)
            self.assertIn(f"{conf}:3:", result.stderr)
            conf.write_text("listen = smtp 127.0.0.1:notaport\n")
            result = subprocess.run([str(APUSD), "-c", str(conf)], capture_output=True, text=True,
                                    timeout=TIMEOUT)
            self.assertNotEqual(result.returncode, 0)
            self.assertIn(f"{conf}:1:", result.stderr)


if __name__ == "__main__":
    unittest.main()


class LimitsTest(ApusTestCase):
    """Limits and timeouts are security features (DESIGN security contract)."""

    def read_reply(self, sock) -> bytes:
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data

    def test_connections_per_ip_are_limited(self):
        import socket
        import time
        apus = self.start_apus(extra_config={"max_connections_per_ip": "2"})
        held = []
        deadline = time.monotonic() + TIMEOUT
        # The harness's readiness probes may still hold slots for a moment: retry until free.
        while len(held) < 2 and time.monotonic() < deadline:
            s = socket.create_connection(("127.0.0.1", apus.ports["smtp"]), timeout=TIMEOUT)
            self.addCleanup(s.close)
            if self.read_reply(s).startswith(b"220 "):
                held.append(s)
            else:
                s.close()
                time.sleep(0.1)
        self.assertEqual(len(held), 2)
        third = socket.create_connection(("127.0.0.1", apus.ports["smtp"]), timeout=TIMEOUT)
        self.addCleanup(third.close)
        # RFC 5321 §3.1: a server may refuse a connection with a 421 greeting.
        self.assertTrue(self.read_reply(third).startswith(b"421 4.7.0"))
        held[0].close()
        # The slot is released when a session ends.
        deadline = time.monotonic() + TIMEOUT
        while True:
            s = socket.create_connection(("127.0.0.1", apus.ports["smtp"]), timeout=TIMEOUT)
            self.addCleanup(s.close)
            reply = self.read_reply(s)
            if reply.startswith(b"220 ") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertTrue(reply.startswith(b"220 "), reply)

    def test_idle_client_is_disconnected(self):
        """RFC 5321 §4.5.3.2: the server times out an idle client with 421."""
        import socket
        import time
        apus = self.start_apus(extra_config={"command_timeout": "2s"})
        s = socket.create_connection(("127.0.0.1", apus.ports["smtp"]), timeout=TIMEOUT)
        self.addCleanup(s.close)
        self.assertTrue(self.read_reply(s).startswith(b"220 "))
        started = time.monotonic()
        self.assertTrue(self.read_reply(s).startswith(b"421 4.4.2"))
        self.assertLess(time.monotonic() - started, 10)
        self.assertEqual(s.recv(100), b"")


class SlowClientTest(ApusTestCase):

    def test_trickling_bytes_does_not_defeat_the_timeout(self):
        """Slowloris: a byte every half second must not keep a command line open past
        command_timeout (RFC 5321 §4.5.3.2 bounds the wait for a command)."""
        import socket
        import time
        apus = self.start_apus(extra_config={"command_timeout": "2s"})
        s = socket.create_connection(("127.0.0.1", apus.ports["smtp"]), timeout=TIMEOUT)
        self.addCleanup(s.close)
        self.assertTrue(s.recv(200).startswith(b"220 "))
        started = time.monotonic()
        closed = False
        for _ in range(40):  # at most 20 s
            try:
                s.send(b"N")
            except OSError:
                closed = True
                break
            s.settimeout(0.5)
            try:
                data = s.recv(200)
                if data.startswith(b"421 4.4.2") or data == b"":
                    closed = True
                    break
            except socket.timeout:
                pass
        self.assertTrue(closed, "connection still open after 20 s of trickling")
        self.assertLess(time.monotonic() - started, 6)

    def test_implicit_tls_port_never_answers_in_plaintext(self):
        """RFC 8314 §3: on 465/995 nothing is sent before TLS; a stalled handshake is just closed."""
        import socket
        apus = self.start_apus(extra_config={"command_timeout": "2s", "pop3_timeout": "2s"})
        for role in ("submissions", "pop3s"):
            s = socket.create_connection(("127.0.0.1", apus.ports[role]), timeout=TIMEOUT)
            self.addCleanup(s.close)
            s.send(b"\x16\x03\x01\x00\xff")  # the start of a ClientHello, then silence
            self.assertEqual(s.recv(200), b"", role)


class ReloadTest(ApusTestCase):

    def test_sighup_reloads_certificate(self):
        """DESIGN: certificate and key are reloaded on SIGHUP; new handshakes use the new one."""
        import signal
        import ssl
        import socket
        import time
        apus = self.start_apus()

        def served_certificate() -> bytes:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            with socket.create_connection(("127.0.0.1", apus.ports["pop3s"]), timeout=TIMEOUT) as raw:
                with ctx.wrap_socket(raw) as tls:
                    return tls.getpeercert(binary_form=True)

        before = served_certificate()
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=reloaded.localhost", "-keyout", str(apus.key), "-out", str(apus.cert)],
                       check=True, capture_output=True, timeout=TIMEOUT)
        apus.proc.send_signal(signal.SIGHUP)
        apus.wait_for_log("reloaded TLS certificate", timeout=TIMEOUT)
        after = served_certificate()
        self.assertNotEqual(before, after)
        self.assertEqual(after, ssl.PEM_cert_to_DER_cert(apus.cert.read_text()))
        self.assertTrue(apus.running)


class BounceTest(ApusTestCase):

    def test_permanent_failures_come_back_as_one_dsn(self):
        """RFC 3464 / RFC 6522: a 550 at RCPT, an NXDOMAIN and a null MX (RFC 7505) each bounce;
        the sender gets one multipart/report from the null reverse-path; the good recipient
        is delivered."""
        import email
        import time
        out_port = free_port("127.0.0.5")
        self.dns.add("example.net", "MX", (10, "mx.example.net"))
        self.dns.add("mx.example.net", "A", "127.0.0.5")
        self.dns.add("nullmx.example.org", "MX", (0, "."))
        sink = self.start_sink("127.0.0.5", out_port, reject_rcpts=["nobody@example.net"])
        apus = self.start_apus(outbound_port=out_port)
        msg = build_message(DEMO, "bob@example.net", "some will bounce")
        rcpts = ["bob@example.net", "nobody@example.net", "x@nxdomain.example.net", "y@nullmx.example.org"]
        self.submit(apus, DEMO, rcpts, msg)

        self.assertTrue(sink.wait_for(1, TIMEOUT))
        files = wait_for_maildir(apus.maildir(DEMO), 1, TIMEOUT)
        self.assertEqual(len(files), 1, "expected exactly one DSN in the sender's Maildir")
        raw = files[0].read_bytes()
        self.assertTrue(raw.startswith(b"Return-Path: <>\r\n"), raw[:80])
        report = email.message_from_bytes(raw)
        self.assertEqual(report.get_content_type(), "multipart/report")
        self.assertEqual(report.get_param("report-type"), "delivery-status")
        self.assertIn("MAILER-DAEMON@", report["From"])
        parts = [p.get_content_type() for p in report.walk()]
        self.assertIn("message/delivery-status", parts)
        self.assertIn("text/rfc822-headers", parts)
        text = raw.decode()
        for rcpt, status in [("nobody@example.net", "5.1.1"), ("x@nxdomain.example.net", "5.1.2"),
                             ("y@nullmx.example.org", "5.1.10")]:
            self.assertIn(f"Final-Recipient: rfc822; {rcpt}", text)
            self.assertIn(f"Status: {status}", text)
            self.assertTrue(apus.log_lines(f"to=<{rcpt}>", "status=bounced"), rcpt)
        self.assertNotIn("Final-Recipient: rfc822; bob@example.net", text)
        # RFC 3464 §2.3.5-2.3.6: the remote MTA by name, and its reply as the diagnostic.
        self.assertIn("Remote-MTA: dns; mx.example.net\r\n", text)
        self.assertIn("Diagnostic-Code: smtp; 550 5.1.1 no such user here", text)
        self.assertIn("Subject: some will bounce", text)  # the returned headers
        time.sleep(1)
        self.assertEqual(len(sink.received()), 1)
        self.assertEqual(len(maildir_files(apus.maildir(DEMO))), 1, "no second DSN")


class AuthThrottleTest(ApusTestCase):

    def test_failed_logins_are_counted_per_ip_across_smtp_and_pop3(self):
        """Password guessing: after auth_failures_per_ip failures from one address, further
        logins (even correct ones, on either protocol) are refused unchecked."""
        import poplib
        import smtplib
        from harness import insecure_tls_context
        apus = self.start_apus(extra_config={"auth_failures_per_ip": "3"})
        import base64
        wrong = base64.b64encode(f"\0{DEMO}\0wrong-password".encode()).decode()
        for _ in range(3):  # one failure per connection, so the per-session limit is not what stops us
            conn = self.smtp_starttls(apus.ports["submission"])
            self.assertEqual(conn.docmd("AUTH", "PLAIN " + wrong)[0], 535)
            conn.close()
        pop = poplib.POP3_SSL("127.0.0.1", apus.ports["pop3s"], context=insecure_tls_context(), timeout=TIMEOUT)
        self.addCleanup(pop.close)
        pop.user(DEMO)
        with self.assertRaises(poplib.error_proto) as caught:
            pop.pass_(PASSWORD)
        self.assertIn(b"[SYS/TEMP]", caught.exception.args[0])
        conn = self.smtp_starttls(apus.ports["submission"])
        with self.assertRaises(smtplib.SMTPException):
            conn.login(DEMO, PASSWORD)
        self.assertTrue(apus.log_lines("too many failed logins"))


class OutboundTLSTest(ApusTestCase):

    def test_apus_relays_to_apus_over_starttls(self):
        """RFC 3207 + RFC 7435: outbound STARTTLS is used when the MX offers it. The remote MX
        here is a second apusd, so both TLS sides and both SMTP sides are Apus's own."""
        mx = Apus(self.tmp / "mx", dns=self.dns, hostname="mx.example.net", local_domains=("example.net",),
                  host="127.0.0.6")
        self.apus_instances.append(mx)
        mx.add_user("bob@example.net", "bobs-password")
        self.addCleanup(mx.stop)
        mx.start()
        self.dns.add("example.net", "MX", (10, "mx.example.net"))
        self.dns.add("mx.example.net", "A", "127.0.0.6")
        apus = self.start_apus(outbound_port=mx.ports["smtp"])
        msg = build_message(DEMO, "bob@example.net", "apus to apus")
        self.submit(apus, DEMO, ["bob@example.net"], msg)
        files = wait_for_maildir(mx.maildir("bob@example.net"), 1, TIMEOUT)
        self.assertEqual(len(files), 1)
        got = files[0].read_bytes()
        self.assert_trace_prefix_then_exact(got, msg, required_fields=("Return-Path", "Received"))
        self.assertIn(b"with ESMTPS id", got)          # the receiving MX saw TLS
        self.assertTrue(mx.log_lines("TLS established"))
        self.assertTrue(apus.log_lines("to=<bob@example.net>", "relay=mx.example.net[127.0.0.6]", "status=sent"))

    def test_broken_starttls_falls_back_to_plaintext(self):
        """RFC 7435 §3: opportunistic TLS must not make mail undeliverable; after a failed
        handshake the message goes through in the clear, once."""
        import time
        out_port = free_port("127.0.0.7")
        self.dns.add("example.net", "MX", (10, "mx.example.net"))
        self.dns.add("mx.example.net", "A", "127.0.0.7")
        sink = self.start_sink("127.0.0.7", out_port, broken_starttls=True)
        apus = self.start_apus(outbound_port=out_port)
        msg = build_message(DEMO, "bob@example.net", "broken tls")
        self.submit(apus, DEMO, ["bob@example.net"], msg)
        self.assertTrue(sink.wait_for(1, TIMEOUT), sink.transcript_text())
        self.assertTrue(apus.log_lines("TLS handshake failed", "retrying without TLS"))
        time.sleep(1)
        self.assertEqual(len(sink.received()), 1)


class UserAdminTest(ApusTestCase):

    def test_deleted_user_no_longer_receives_mail_but_its_mail_is_kept(self):
        import smtplib
        from harness import APUSCTL
        apus = self.start_apus()
        apus.add_user("zed@localhost", "zeds-password")
        msg = build_message("sender@example.com", "zed@localhost", "before deletion")
        self.deliver_locally(apus, msg, rcpt="zed@localhost")
        result = subprocess.run([str(APUSCTL), "-c", str(apus.config_path), "user", "del", "zed@localhost"],
                                capture_output=True, text=True, timeout=TIMEOUT)
        self.assertEqual(result.returncode, 0, result.stderr)
        conn = self.smtp(apus.ports["smtp"])
        conn.ehlo()
        conn.mail("sender@example.com")
        self.assertEqual(conn.rcpt("zed@localhost")[0], 550)
        kept = [p for p in (apus.mail_directory / "localhost").iterdir() if p.name.startswith(".deleted-zed-")]
        self.assertEqual(len(kept), 1)
        self.assertEqual(len(list((kept[0] / "new").iterdir())), 1, "the mail was not kept")
