"""End-to-end tests for the Apus mail server (apusd).

Each test starts its own apusd (built binary, see harness.APUSD) with its own
temporary directory, its own loopback ports, its own fake DNS server and,
where remote delivery is involved, its own SMTP sink playing the remote MX.
Nothing leaves 127.0.0.0/8.

Run from the repository root (after building apusd and apusctl):

    python3 -m unittest discover -s Tests/Integration -v

or a single test, e.g.:

    python3 -m unittest discover -s Tests/Integration -v -k test_restart

Environment variables:
    APUSD            path to apusd   (default: <repo>/.build/debug/apusd)
    APUSCTL          path to apusctl (default: next to apusd)
    APUS_SHOW_LOGS=1 print apusd logs even for passing tests
    APUS_KEEP_TMP=1  keep the temporary directories of failed tests
"""

from __future__ import annotations

import base64
import email.utils
import os
import poplib
import re
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time
import unittest
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    LOOPBACK, Apus, DNSServer, SMTPSink, free_port, insecure_tls_context,
    maildir_files, port_accepts, wait_for_maildir,
)

DEMO = "demo@localhost"
PASSWORD = "Corr3ct-Horse-Battery"
CLIENT_NAME = "client.test"   # EHLO name used by our clients
TIMEOUT = 30                  # seconds; bound for every network wait

# RFC 5322 §2.2: field-name = 1*ftext, printable US-ASCII except ':'.
HEADER_FIELD = re.compile(rb"^([!-9;-~]+):")
ENHANCED_STATUS = re.compile(rb"^(\d)\.(\d{1,3})\.(\d{1,3})\b")


def build_message(sender: str, rcpt: str, subject: str) -> bytes:
    """A test message that exercises SMTP/POP3 transparency.

    Contains lines that start with a period (which SMTP and POP3 must
    dot-stuff, RFC 5321 §4.5.2 / RFC 1939 §3), a line consisting of a lone
    period, a line of exactly 998 characters (the RFC 5322 §2.1.1 limit),
    trailing white space and an mbox-style "From " line.  CRLF throughout.
    """
    long_line = ("0123456789" * 100)[:998]
    assert len(long_line) == 998 and not long_line.startswith(".")
    lines = [
        f"From: Demo User <{sender}>",
        f"To: <{rcpt}>",
        f"Subject: {subject}",
        f"Date: {email.utils.formatdate(localtime=True)}",
        f"Message-ID: <{uuid.uuid4().hex}@client.test>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        "Hello,",
        "",
        ".hidden",
        "..double",
        ".x",
        ".",
        "..",
        "From the body: this is not an mbox separator",
        "trailing white space   ",
        "\ttab-indented line",
        long_line,
        "",
        "-- ",
        "last line",
    ]
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def auth_plain_b64(user: str, password: str) -> str:
    """RFC 4616 PLAIN initial response: base64("\\0user\\0password")."""
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def close_quietly(conn) -> None:
    try:
        conn.close()
    except Exception:
        pass


class ApusTestCase(unittest.TestCase):
    """Base class: temp dir, DNS server, apusd/sink management, diagnostics."""

    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix=f"apus-{self._testMethodName}-"))
        self.addCleanup(self._remove_tmp)
        self.apus_instances: list[Apus] = []
        self.sinks: list[SMTPSink] = []
        self.addCleanup(self._report_on_failure)
        # Every apusd gets a DNS server so that it never asks the real
        # resolver.  The sender domain used on the smtp port resolves.
        self.dns = DNSServer({
            "example.com": {"MX": [(10, "mail.example.com")]},
            "mail.example.com": {"A": ["127.0.0.9"]},
        }).start()
        self.addCleanup(self.dns.stop)

    # -- fixtures -----------------------------------------------------------------

    def start_apus(self, **kwargs) -> Apus:
        """Configure apusd in self.tmp, add demo@localhost, start it."""
        apus = Apus(self.tmp, dns=self.dns, **kwargs)
        self.apus_instances.append(apus)
        apus.add_user(DEMO, PASSWORD)
        self.addCleanup(apus.stop)
        apus.start()
        return apus

    def start_sink(self, host: str, port: int, **kwargs) -> SMTPSink:
        sink = SMTPSink(host, port, **kwargs).start()
        self.sinks.append(sink)
        self.addCleanup(sink.stop)
        return sink

    def _failed(self) -> bool:
        """Has this test already recorded an error or failure?

        (``_outcome.success`` is reset while cleanups run, so look at the
        result object instead; when unknown, assume failure.)
        """
        result = getattr(getattr(self, "_outcome", None), "result", None)
        if result is None:
            return True
        for test, _ in (list(getattr(result, "errors", []))
                        + list(getattr(result, "failures", []))):
            if test is self or getattr(test, "test_case", None) is self:
                return True
        return False

    def _report_on_failure(self) -> None:
        if not (self._failed() or os.environ.get("APUS_SHOW_LOGS")):
            return
        out = sys.stderr
        out.write(f"\n===== diagnostics for {self.id()} (tmp: {self.tmp}) =====\n")
        for apus in self.apus_instances:
            out.write(f"----- apusd log {apus.log_path} -----\n{apus.log_tail(300)}\n")
        for sink in self.sinks:
            out.write(f"----- SMTP sink {sink.host}:{sink.port} transcript -----\n"
                      f"{sink.transcript_text()[-8000:]}\n")
        out.write(f"----- DNS queries -----\n{self.dns.query_log()}\n")
        out.write("===== end of diagnostics =====\n")

    def _remove_tmp(self) -> None:
        if self._failed() and os.environ.get("APUS_KEEP_TMP"):
            sys.stderr.write(f"keeping {self.tmp}\n")
            return
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- client helpers -------------------------------------------------------------

    def smtp(self, port: int) -> smtplib.SMTP:
        conn = smtplib.SMTP(LOOPBACK, port, local_hostname=CLIENT_NAME,
                            timeout=TIMEOUT)
        self.addCleanup(close_quietly, conn)
        return conn

    def smtp_starttls(self, port: int) -> smtplib.SMTP:
        """Connect, EHLO, STARTTLS (RFC 3207), EHLO again."""
        conn = self.smtp(port)
        self.assertEqual(conn.ehlo()[0], 250)
        self.assertTrue(conn.has_extn("starttls"),
                        "STARTTLS must be advertised (RFC 3207 §4)")
        code, resp = conn.starttls(context=insecure_tls_context())
        self.assertEqual(code, 220, resp)
        self.assertEqual(conn.ehlo()[0], 250)
        return conn

    def submit(self, apus: Apus, sender: str, rcpts: list[str], msg: bytes) -> None:
        """Authenticated submission on the submission port (RFC 6409)."""
        conn = self.smtp_starttls(apus.ports["submission"])
        conn.login(DEMO, PASSWORD)
        refused = conn.sendmail(sender, rcpts, msg)
        self.assertEqual(refused, {}, "recipients refused on submission")
        conn.quit()

    def pop3s(self, apus: Apus) -> poplib.POP3_SSL:
        conn = poplib.POP3_SSL(LOOPBACK, apus.ports["pop3s"],
                               context=insecure_tls_context(), timeout=TIMEOUT)
        self.addCleanup(close_quietly, conn)
        return conn

    def deliver_locally(self, apus: Apus, msg: bytes, rcpt: str = DEMO) -> Path:
        """Deliver ``msg`` to a local user via the smtp port; wait for the file."""
        conn = self.smtp(apus.ports["smtp"])
        self.assertEqual(conn.ehlo()[0], 250)
        self.assertEqual(conn.sendmail("sender@example.com", [rcpt], msg), {})
        conn.quit()
        files = wait_for_maildir(apus.maildir(rcpt), 1, TIMEOUT)
        self.assertEqual(len(files), 1,
                         f"expected one message in {apus.maildir(rcpt)}/new")
        return files[0]

    # -- assertions -----------------------------------------------------------------

    def assert_trace_prefix_then_exact(self, got: bytes, sent: bytes, *,
                                       eol: bytes = b"\r\n",
                                       required_fields=("Received",)) -> bytes:
        """Assert ``got`` == header-line prefix + ``sent`` (byte for byte).

        The prefix is what an MTA may legitimately add in front of a message:
        trace fields (RFC 5321 §4.4: every SMTP server that accepts a message
        MUST add a Received: field; final delivery adds Return-Path:).  It
        must consist only of header lines -- a field name followed by ':' or
        a folded continuation starting with SP/HTAB (RFC 5322 §2.2, §2.2.3)
        -- each terminated by ``eol``.  ``required_fields`` must appear in it.
        Returns the prefix.
        """
        if not got.endswith(sent):
            self.fail(self._describe_mismatch(got, sent))
        prefix = got[:len(got) - len(sent)]
        names = set()
        if prefix:
            self.assertTrue(prefix.endswith(eol),
                            f"trace prefix does not end with {eol!r}: {prefix[-200:]!r}")
            lines = prefix[:-len(eol)].split(eol)
            for i, line in enumerate(lines):
                self.assertNotIn(b"\n", line, f"bare LF in trace prefix: {line!r}")
                self.assertNotIn(b"\r", line, f"bare CR in trace prefix: {line!r}")
                self.assertLessEqual(len(line), 998,
                                     "RFC 5322 §2.1.1 line length limit")
                if line[:1] in (b" ", b"\t"):
                    self.assertGreater(i, 0, f"prefix starts with a continuation "
                                             f"line: {prefix[:200]!r}")
                    self.assertTrue(line.strip(),
                                    "whitespace-only folded line in trace prefix")
                    continue
                m = HEADER_FIELD.match(line)
                self.assertIsNotNone(
                    m, f"line {i} of the added prefix is not a header line: "
                       f"{line!r}\nwhole prefix:\n{prefix.decode(errors='replace')}")
                names.add(m.group(1).decode().lower())
        for field in required_fields:
            self.assertIn(field.lower(), names,
                          f"expected a {field}: trace field in the added prefix "
                          f"(RFC 5321 §4.4); prefix was {prefix!r}")
        return prefix

    @staticmethod
    def _describe_mismatch(got: bytes, sent: bytes) -> str:
        common = 0
        while (common < min(len(got), len(sent))
               and got[-1 - common] == sent[-1 - common]):
            common += 1
        s_end, g_end = len(sent) - common, len(got) - common
        return (f"received message ({len(got)} bytes) does not end with the "
                f"submitted message ({len(sent)} bytes); only the last {common} "
                f"bytes agree.\n  submitted, just before that: "
                f"{sent[max(0, s_end - 120):s_end + 20]!r}\n  received,  just before "
                f"that: {got[max(0, g_end - 120):g_end + 20]!r}")

    def assert_maildir_message(self, path: Path, sent: bytes) -> bytes:
        """Maildir content check, agnostic of CRLF vs LF storage."""
        stored = path.read_bytes().replace(b"\r\n", b"\n")
        return self.assert_trace_prefix_then_exact(
            stored, sent.replace(b"\r\n", b"\n"), eol=b"\n",
            required_fields=("Return-Path", "Received"))

    def assert_enhanced(self, resp: bytes, expected_prefix: str) -> None:
        """Check that a reply text starts with an RFC 3463 enhanced status code."""
        m = ENHANCED_STATUS.match(resp)
        self.assertIsNotNone(m, f"no enhanced status code (RFC 2034) in {resp!r}")
        self.assertTrue(m.group(0).decode().startswith(expected_prefix),
                        f"expected enhanced status {expected_prefix}*, got {resp!r}")


# ---------------------------------------------------------------------------
# 1. Submission and remote relay
# ---------------------------------------------------------------------------

class SubmissionTest(ApusTestCase):

    def test_submission_local_and_remote_delivery(self):
        """STARTTLS + AUTH on submission; local Maildir and remote MX delivery.

        The remote domain has two MX hosts; the preferred one refuses
        connections, so apusd must fall back to the second (RFC 5321 §5.1).
        """
        sink_ip, unreachable_ip = "127.0.0.3", "127.0.0.2"
        out_port = free_port(sink_ip)
        self.assertFalse(port_accepts(unreachable_ip, out_port),
                         "precondition: nothing listens on mx1")
        self.dns.add("example.net", "MX", (10, "mx1.example.net"))
        self.dns.add("example.net", "MX", (20, "mx2.example.net"))
        self.dns.add("mx1.example.net", "A", unreachable_ip)
        self.dns.add("mx2.example.net", "A", sink_ip)
        sink = self.start_sink(sink_ip, out_port)
        apus = self.start_apus(outbound_port=out_port)

        local_msg = build_message(DEMO, DEMO, "local submission")
        remote_msg = build_message(DEMO, "bob@example.net", "remote submission")

        conn = self.smtp(apus.ports["submission"])
        self.assertEqual(conn.ehlo()[0], 250)
        conn.starttls(context=insecure_tls_context())
        self.assertEqual(conn.ehlo()[0], 250)
        code, _ = conn.login(DEMO, PASSWORD)
        self.assertEqual(code, 235)
        # smtplib dot-stuffs the data (RFC 5321 §4.5.2).
        self.assertEqual(conn.sendmail(DEMO, [DEMO], local_msg), {})
        self.assertEqual(conn.sendmail(DEMO, ["bob@example.net"], remote_msg), {})
        conn.quit()

        # Remote: exactly one message, on mx2, byte-identical after trace lines.
        self.assertTrue(sink.wait_for(1, TIMEOUT), "remote MX got nothing")
        sent_lines = apus.wait_for_log("to=<bob@example.net>", "status=sent",
                                       timeout=TIMEOUT)
        self.assertTrue(sent_lines, "no status=sent log line for bob@example.net")
        self.assertIn("mx2.example.net[127.0.0.3]", sent_lines[-1])
        time.sleep(1)
        received = sink.received()
        self.assertEqual(len(received), 1, received)
        mail_from, rcpts, data = received[0]
        self.assertEqual(mail_from, DEMO)
        self.assertEqual(rcpts, ["bob@example.net"])
        self.assert_trace_prefix_then_exact(data, remote_msg)

        # Local: exactly one message in demo's Maildir.
        files = wait_for_maildir(apus.maildir(DEMO), 1, TIMEOUT)
        self.assertEqual(len(files), 1, files)
        prefix = self.assert_maildir_message(files[0], local_msg)
        self.assertRegex(prefix, rb"(?im)^Return-Path: <demo@localhost>$")


# ---------------------------------------------------------------------------
# 2. POP3 (RFC 1939), STLS (RFC 2595), implicit TLS (RFC 8314), AUTH (RFC 5034)
# ---------------------------------------------------------------------------

class POP3Test(ApusTestCase):

    def retrieve(self, conn: poplib.POP3, number: int = 1) -> bytes:
        """RETR a message; poplib has already undone the byte-stuffing."""
        _, lines, _ = conn.retr(number)
        return b"\r\n".join(lines) + b"\r\n"

    def test_pop3s_retrieve_uidl_delete(self):
        apus = self.start_apus()
        msg = build_message("sender@example.com", DEMO, "for pop3s")
        self.deliver_locally(apus, msg)

        conn = self.pop3s(apus)
        self.assertTrue(conn.getwelcome().startswith(b"+OK"))
        conn.user(DEMO)
        conn.pass_(PASSWORD)
        count, size = conn.stat()
        self.assertEqual(count, 1)
        _, listing, _ = conn.list()
        self.assertEqual(len(listing), 1, listing)
        got = self.retrieve(conn, 1)
        self.assert_trace_prefix_then_exact(
            got, msg, required_fields=("Return-Path", "Received"))
        # RFC 1939 §5/§11: sizes are octet counts of the message as
        # transmitted, with CRLF line endings.
        self.assertEqual(size, len(got), "STAT size != octets retrieved")
        self.assertEqual(listing[0], b"1 %d" % len(got), "LIST size mismatch")

        # RFC 1939 §7: unique-id is 1..70 characters in 0x21..0x7E.
        _, uids, _ = conn.uidl()
        self.assertEqual(len(uids), 1, uids)
        m = re.fullmatch(rb"1 ([\x21-\x7e]{1,70})", uids[0])
        self.assertIsNotNone(m, f"bad UIDL line {uids[0]!r}")
        self.assertEqual(conn.uidl(1), b"+OK 1 " + m.group(1))

        self.assertTrue(conn.dele(1).startswith(b"+OK"))
        self.assertTrue(conn.quit().startswith(b"+OK"))

        # The deletion is committed in the UPDATE state (RFC 1939 §6).
        conn2 = self.pop3s(apus)
        conn2.user(DEMO)
        conn2.pass_(PASSWORD)
        self.assertEqual(conn2.stat(), (0, 0))
        _, listing, _ = conn2.list()
        self.assertEqual(listing, [])
        conn2.quit()
        self.assertEqual(maildir_files(apus.maildir(DEMO)), [],
                         "deleted message still in the Maildir")

    def test_pop3_stls_then_login(self):
        apus = self.start_apus()
        msg = build_message("sender@example.com", DEMO, "for pop3 stls")
        self.deliver_locally(apus, msg)

        conn = poplib.POP3(LOOPBACK, apus.ports["pop3"], timeout=TIMEOUT)
        self.addCleanup(close_quietly, conn)
        self.assertIn("STLS", conn.capa(),
                      "STLS capability must be listed by CAPA (RFC 2595 §4)")
        conn.stls(context=insecure_tls_context())
        conn.user(DEMO)
        conn.pass_(PASSWORD)
        self.assertEqual(conn.stat()[0], 1)
        self.assert_trace_prefix_then_exact(
            self.retrieve(conn, 1), msg,
            required_fields=("Return-Path", "Received"))
        conn.quit()

    def test_pop3s_auth_plain(self):
        apus = self.start_apus()
        self.deliver_locally(apus, build_message("sender@example.com", DEMO, "x"))
        conn = self.pop3s(apus)
        # RFC 5034 §4: AUTH mechanism [initial-response]; RFC 4616 PLAIN.
        resp = conn._shortcmd("AUTH PLAIN " + auth_plain_b64(DEMO, PASSWORD))
        self.assertTrue(resp.startswith(b"+OK"), resp)
        self.assertEqual(conn.stat()[0], 1)
        conn.quit()

    def test_pop3s_wrong_password(self):
        apus = self.start_apus()
        conn = self.pop3s(apus)
        conn.user(DEMO)
        with self.assertRaises(poplib.error_proto) as cm:
            conn.pass_("not-the-password")
        self.assertTrue(cm.exception.args[0].startswith(b"-ERR"),
                        cm.exception.args)


# ---------------------------------------------------------------------------
# 3. swaks over implicit TLS (RFC 8314) with AUTH LOGIN
# ---------------------------------------------------------------------------

class SwaksTest(ApusTestCase):

    def test_swaks_submissions_auth_login(self):
        apus = self.start_apus()
        cmd = ["swaks", "--server", f"{LOOPBACK}:{apus.ports['submissions']}",
               "--tlsc", "--auth", "LOGIN",
               "--auth-user", DEMO, "--auth-password", PASSWORD,
               "--from", DEMO, "--to", DEMO,
               "--header", "Subject: swaks", "--body", "hello from swaks"]
        result = subprocess.run(cmd, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, timeout=90)
        self.assertEqual(result.returncode, 0,
                         "swaks failed:\n" + result.stdout.decode(errors="replace"))
        files = wait_for_maildir(apus.maildir(DEMO), 1, TIMEOUT)
        self.assertEqual(len(files), 1, files)
        content = files[0].read_bytes()
        self.assertIn(b"Subject: swaks", content)
        self.assertIn(b"hello from swaks", content)


# ---------------------------------------------------------------------------
# 4. Refusals
# ---------------------------------------------------------------------------

class RefusalTest(ApusTestCase):

    def test_submission_auth_before_starttls_is_refused(self):
        """RFC 3207 §4 / RFC 4954 §4, §6: no plaintext passwords before TLS."""
        apus = self.start_apus()
        conn = self.smtp(apus.ports["submission"])
        self.assertEqual(conn.ehlo()[0], 250)
        self.assertTrue(conn.has_extn("starttls"))
        mechanisms = conn.esmtp_features.get("auth", "").upper().split()
        self.assertNotIn("PLAIN", mechanisms, "PLAIN offered before STARTTLS")
        self.assertNotIn("LOGIN", mechanisms, "LOGIN offered before STARTTLS")
        code, resp = conn.docmd("AUTH", "PLAIN " + auth_plain_b64(DEMO, PASSWORD))
        self.assertIn(code, (530, 538), resp)
        self.assert_enhanced(resp, "5.7.")

    def test_submission_mail_without_auth_is_refused(self):
        """RFC 4954 §6: 530 5.7.0 Authentication required."""
        apus = self.start_apus()
        conn = self.smtp_starttls(apus.ports["submission"])
        mechanisms = conn.esmtp_features.get("auth", "").upper().split()
        self.assertIn("PLAIN", mechanisms, "PLAIN not offered after STARTTLS")
        self.assertIn("LOGIN", mechanisms, "LOGIN not offered after STARTTLS")
        code, resp = conn.mail(DEMO)
        self.assertEqual(code, 530, resp)
        self.assert_enhanced(resp, "5.7.0")

    def test_smtp_port_refuses_relay_but_accepts_local(self):
        """Unauthenticated port 25: 554 5.7.1 for relaying, local delivery ok."""
        apus = self.start_apus()
        msg = build_message("sender@example.com", DEMO, "via port 25")
        conn = self.smtp(apus.ports["smtp"])
        self.assertEqual(conn.ehlo()[0], 250)
        code, resp = conn.mail("sender@example.com")
        self.assertEqual(code, 250, resp)
        code, resp = conn.rcpt("x@example.net")
        self.assertEqual(code, 554, resp)
        self.assert_enhanced(resp, "5.7.1")
        code, resp = conn.rcpt(DEMO)
        self.assertEqual(code, 250, resp)
        code, resp = conn.data(msg)
        self.assertEqual(code, 250, resp)
        conn.quit()
        files = wait_for_maildir(apus.maildir(DEMO), 1, TIMEOUT)
        self.assertEqual(len(files), 1, files)
        self.assert_maildir_message(files[0], msg)

    def test_smtp_port_unknown_local_user(self):
        """RFC 3463: 5.1.1 bad destination mailbox address."""
        apus = self.start_apus()
        conn = self.smtp(apus.ports["smtp"])
        self.assertEqual(conn.ehlo()[0], 250)
        self.assertEqual(conn.mail("sender@example.com")[0], 250)
        code, resp = conn.rcpt("nobody@localhost")
        self.assertEqual(code, 550, resp)
        self.assert_enhanced(resp, "5.1.1")

    def test_submission_wrong_password(self):
        """RFC 4954 §6: 535 5.7.8 Authentication credentials invalid."""
        apus = self.start_apus()
        conn = self.smtp_starttls(apus.ports["submission"])
        code, resp = conn.docmd("AUTH", "PLAIN " + auth_plain_b64(DEMO, "wrong"))
        self.assertEqual(code, 535, resp)
        self.assert_enhanced(resp, "5.7.8")


# ---------------------------------------------------------------------------
# 5./6. Queue: persistence across restarts and retries after 4xx
# ---------------------------------------------------------------------------

class QueueTest(ApusTestCase):

    def test_restart_delivers_deferred_message_once(self):
        """A deferred message survives SIGTERM + restart and is sent once."""
        sink_ip = "127.0.0.4"
        out_port = free_port(sink_ip)
        self.dns.add("example.org", "MX", (10, "mx.example.org"))
        self.dns.add("mx.example.org", "A", sink_ip)
        apus = self.start_apus(outbound_port=out_port)

        msg = build_message(DEMO, "carol@example.org", "survives restart")
        self.submit(apus, DEMO, ["carol@example.org"], msg)
        deferred = apus.wait_for_log("to=<carol@example.org>", "status=deferred",
                                     timeout=TIMEOUT)
        self.assertTrue(deferred, "no status=deferred line while the MX is down")

        apus.stop()
        self.assertFalse(apus.running)
        sink = self.start_sink(sink_ip, out_port)
        apus.start()

        self.assertTrue(sink.wait_for(1, TIMEOUT),
                        "message not delivered after restart")
        time.sleep(3)
        received = sink.received()
        self.assertEqual(len(received), 1, f"delivered more than once: {received}")
        mail_from, rcpts, data = received[0]
        self.assertEqual(mail_from, DEMO)
        self.assertEqual(rcpts, ["carol@example.org"])
        self.assert_trace_prefix_then_exact(data, msg)
        self.assertTrue(apus.wait_for_log("to=<carol@example.org>", "status=sent",
                                          timeout=TIMEOUT))

    def test_temporary_failure_is_retried(self):
        """451 on RCPT defers the message; the retry after ~1 s succeeds."""
        sink_ip = "127.0.0.5"
        out_port = free_port(sink_ip)
        self.dns.add("retry.example", "MX", (10, "mx.retry.example"))
        self.dns.add("mx.retry.example", "A", sink_ip)
        sink = self.start_sink(sink_ip, out_port, temp_fail_rcpts=1)
        apus = self.start_apus(outbound_port=out_port,
                               retry_first="1s", retry_max="2s")

        msg = build_message(DEMO, "dave@retry.example", "retry me")
        self.submit(apus, DEMO, ["dave@retry.example"], msg)

        self.assertTrue(sink.wait_for(1, TIMEOUT), "message never arrived")
        time.sleep(3)
        received = sink.received()
        self.assertEqual(len(received), 1, f"delivered more than once: {received}")
        self.assertGreaterEqual(sink.rcpt_commands, 2)
        mail_from, rcpts, data = received[0]
        self.assertEqual(mail_from, DEMO)
        self.assertEqual(rcpts, ["dave@retry.example"])
        self.assert_trace_prefix_then_exact(data, msg)

        self.assertTrue(apus.wait_for_log("to=<dave@retry.example>", "status=sent",
                                          timeout=TIMEOUT))
        lines = apus.log_lines("to=<dave@retry.example>")
        statuses = [re.search(r"status=(\w+)", l).group(1)
                    for l in lines if "status=" in l]
        self.assertIn("deferred", statuses, lines)
        self.assertEqual(statuses[-1], "sent", lines)
        self.assertLess(statuses.index("deferred"), statuses.index("sent"), lines)
        self.assertEqual(statuses.count("sent"), 1, lines)


if __name__ == "__main__":
    unittest.main(verbosity=2)
