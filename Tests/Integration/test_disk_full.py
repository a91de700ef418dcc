"""Disk full (DESIGN durability contract §5): when the spool's file system fills up, clients get
452 4.3.1, nothing half-written is delivered, the daemon keeps running, and it recovers by itself
when space returns. The spool lives on a small tmpfs in a mount namespace of apusd's own
(unshare -m), so nothing is mounted on the host.

Run with the rest of the suite:  python3 -m unittest discover -s Tests/Integration -v
"""

from __future__ import annotations

import smtplib
import subprocess
import sys
import time
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Apus, free_port  # noqa: E402
from test_end_to_end import DEMO, PASSWORD, TIMEOUT, ApusTestCase  # noqa: E402


def can_unshare_mounts() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class DiskFullTest(ApusTestCase):

    def test_full_spool_answers_452_and_recovers_when_space_returns(self):
        if not can_unshare_mounts():
            self.fail("this test needs root and `unshare -m` (util-linux) to mount a private tmpfs")
        out_port = free_port("127.0.0.8")
        self.dns.add("example.net", "MX", (10, "mx.example.net"))
        self.dns.add("mx.example.net", "A", "127.0.0.8")
        spool = self.tmp / "spool"
        spool.mkdir(exist_ok=True)
        launcher = ["unshare", "-m", "sh", "-c",
                    'mount -t tmpfs -o size=1200k,mode=700 apus-spool "$0" && exec "$@"', str(spool)]
        apus = Apus(self.tmp, dns=self.dns, outbound_port=out_port, launcher=launcher)
        self.apus_instances.append(apus)
        apus.add_user(DEMO, PASSWORD)
        self.addCleanup(apus.stop)
        apus.start()

        body = ("x" * 76 + "\r\n") * 6500          # about 500 KB
        def message(n: int) -> bytes:
            return (f"From: <{DEMO}>\r\nTo: <bob@example.net>\r\nSubject: big {n}\r\n\r\n" + body).encode()

        def submit(n: int) -> tuple[int, bytes]:
            conn = self.smtp_starttls(apus.ports["submission"])
            conn.login(DEMO, PASSWORD)
            try:
                conn.sendmail(DEMO, ["bob@example.net"], message(n))
                return 250, b""
            except smtplib.SMTPDataError as e:
                return e.smtp_code, e.smtp_error
            finally:
                conn.close()

        # The MX is down, so accepted messages stay in the 1.2 MB spool until it is full.
        codes = [submit(n) for n in range(3)]
        self.assertEqual([c for c, _ in codes[:2]], [250, 250], codes)
        self.assertEqual(codes[2][0], 452, codes)
        self.assertTrue(codes[2][1].startswith(b"4.3.1"), codes)   # RFC 3463: mail system full
        self.assertTrue(apus.running)
        self.assertTrue(apus.log_lines("cannot queue message"))

        # Space returns when the queued mail can leave: bring the MX up.
        sink = self.start_sink("127.0.0.8", out_port)
        self.assertTrue(sink.wait_for(2, TIMEOUT), "queued mail was not delivered after the MX came up")
        deadline = time.monotonic() + TIMEOUT
        code = 0
        while time.monotonic() < deadline:
            code, _ = submit(3)
            if code == 250:
                break
            time.sleep(0.5)
        self.assertEqual(code, 250, "no recovery after space returned")
        self.assertTrue(sink.wait_for(3, TIMEOUT))
        time.sleep(1)
        subjects = sorted(m.data.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0] for m in sink.received())
        self.assertEqual(subjects, [b"big 0", b"big 1", b"big 3"], "the refused message must never be delivered")


if __name__ == "__main__":
    unittest.main()
