"""apusd as an SMTP client facing hostile or broken remote servers (RFC 5321 §4.5.3.2, §5.1):
an endless multi-line reply is cut off and the message deferred; a silent MX cannot hold up
local delivery; an MX list that points back at us bounces at once instead of looping.

Run with the rest of the suite:  python3 -m unittest discover -s Tests/Integration -v
"""

from __future__ import annotations

import socket
import socketserver
import sys
import threading
import time
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import free_port, wait_for_maildir  # noqa: E402
from test_end_to_end import DEMO, TIMEOUT, ApusTestCase, build_message  # noqa: E402


class HostileMX:
    """A fake MX on (host, port) that greets, then behaves as `mode` says:
    'endless-ehlo' answers EHLO with 250- lines until the client hangs up (bounded by 20 s);
    'silent' says nothing after the greeting (until the client hangs up or 20 s pass)."""

    def __init__(self, host: str, port: int, mode: str):
        self.mode = mode
        self.bytes_sent = 0
        self.client_hung_up = threading.Event()
        mx = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                conn = self.request
                conn.settimeout(1)
                conn.sendall(b"220 hostile.example ESMTP\r\n")
                try:
                    conn.recv(1000)  # EHLO
                except OSError:
                    return
                deadline = time.monotonic() + 20
                chunk = (b"250-" + b"Y" * 1000 + b"\r\n") * 16
                while time.monotonic() < deadline:
                    try:
                        if mx.mode == "endless-ehlo":
                            conn.sendall(chunk)
                            mx.bytes_sent += len(chunk)
                        else:
                            if conn.recv(1000) == b"":
                                break
                    except socket.timeout:
                        continue
                    except OSError:
                        break
                mx.client_hung_up.set()

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self.server = Server((host, port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class OutboundHostileTest(ApusTestCase):

    def test_endless_multiline_reply_is_cut_off_and_deferred(self):
        port = free_port("127.0.0.9")
        self.dns.add("example.net", "MX", (10, "mx.example.net"))
        self.dns.add("mx.example.net", "A", "127.0.0.9")
        mx = HostileMX("127.0.0.9", port, "endless-ehlo")
        self.addCleanup(mx.stop)
        apus = self.start_apus(outbound_port=port, retry_first="1h", retry_max="1h")
        self.submit(apus, DEMO, ["bob@example.net"], build_message(DEMO, "bob@example.net", "endless"))
        self.assertTrue(mx.client_hung_up.wait(TIMEOUT), "apusd kept reading an endless reply")
        lines = apus.wait_for_log("to=<bob@example.net>", "status=deferred", timeout=TIMEOUT)
        self.assertTrue(lines)
        self.assertIn("protocol error", lines[-1])
        # Cut off after about 64 KB, not after megabytes.
        self.assertLess(mx.bytes_sent, 8 * 1024 * 1024)

    def test_silent_remote_mx_does_not_hold_up_local_delivery(self):
        port = free_port("127.0.0.10")
        self.dns.add("example.net", "MX", (10, "mx.example.net"))
        self.dns.add("mx.example.net", "A", "127.0.0.10")
        mx = HostileMX("127.0.0.10", port, "silent")
        self.addCleanup(mx.stop)
        apus = self.start_apus(outbound_port=port, extra_config={"delivery_concurrency": "1"})
        # The only remote slot is now stuck on a server that never answers EHLO.
        self.submit(apus, DEMO, ["bob@example.net"], build_message(DEMO, "bob@example.net", "stuck"))
        time.sleep(1)
        started = time.monotonic()
        self.deliver_locally(apus, build_message("sender@example.com", DEMO, "local goes first"))
        self.assertLess(time.monotonic() - started, 10)

    def test_mx_pointing_back_at_us_bounces_instead_of_looping(self):
        """RFC 5321 §5.1: MX records at or above our own preference are discarded; none left
        means the mail would loop, so it bounces with 5.4.6."""
        self.dns.add("loop.example.net", "MX", (10, "mx.apus.example"))   # our own hostname
        apus = self.start_apus()
        self.submit(apus, DEMO, ["x@loop.example.net"], build_message(DEMO, "x@loop.example.net", "loop"))
        files = wait_for_maildir(apus.maildir(DEMO), 1, TIMEOUT)
        self.assertEqual(len(files), 1, "no bounce")
        text = files[0].read_text(errors="replace")
        self.assertIn("Status: 5.4.6", text)
        self.assertIn("loops back to myself", text)


if __name__ == "__main__":
    unittest.main()
