"""Crash safety of the spool (DESIGN durability contract, docs/spool.md): apusd is killed with
SIGKILL while clients are submitting; after a restart every message that was answered 250 is
delivered exactly once, and nothing is delivered twice (local delivery is idempotent).

Run with the rest of the suite:  python3 -m unittest discover -s Tests/Integration -v
"""

from __future__ import annotations

import email
import smtplib
import sys
import threading
import time
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import maildir_files  # noqa: E402
from test_end_to_end import DEMO, TIMEOUT, ApusTestCase  # noqa: E402

MESSAGES_PER_CLIENT = 60   # bounded load
CLIENTS = 4


class CrashTest(ApusTestCase):

    def test_sigkill_under_load_loses_and_duplicates_nothing_acknowledged(self):
        apus = self.start_apus()
        acknowledged: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()

        def client(number: int) -> None:
            for i in range(MESSAGES_PER_CLIENT):
                if stop.is_set():
                    return
                subject = f"crash-{number}-{i}"
                msg = (f"From: <sender@example.com>\r\nTo: <{DEMO}>\r\nSubject: {subject}\r\n\r\n"
                       f"body of {subject}\r\n").encode()
                try:
                    with smtplib.SMTP("127.0.0.1", apus.ports["smtp"], timeout=5) as conn:
                        conn.sendmail("sender@example.com", [DEMO], msg)
                    with lock:
                        acknowledged.append(subject)
                except (OSError, smtplib.SMTPException):
                    return  # the server died under us; what was not acknowledged may or may not arrive

        threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(CLIENTS)]
        for t in threads:
            t.start()
        # Kill once a good part of the load has been acknowledged (bounded wait).
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            with lock:
                if len(acknowledged) >= CLIENTS * MESSAGES_PER_CLIENT // 3:
                    break
            time.sleep(0.01)
        apus.proc.kill()   # SIGKILL: no chance to tidy up
        apus.proc.wait(timeout=10)
        stop.set()
        for t in threads:
            t.join(timeout=TIMEOUT)
        with lock:
            acked = list(acknowledged)
        self.assertGreater(len(acked), 0)

        apus.start()
        maildir = apus.maildir(DEMO)

        def subjects() -> list[str]:
            found = []
            for path in maildir_files(maildir):
                try:
                    found.append(email.message_from_bytes(path.read_bytes())["Subject"])
                except OSError:
                    pass  # moved between new/ and cur/ while we looked
            return found

        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and not set(acked) <= set(subjects()):
            time.sleep(0.2)
        time.sleep(2)  # anything that would arrive twice has had time to do so
        delivered = subjects()
        missing = set(acked) - set(delivered)
        self.assertEqual(missing, set(), f"acknowledged but not delivered: {sorted(missing)[:10]}")
        duplicates = {s for s in delivered if delivered.count(s) > 1}
        self.assertEqual(duplicates, set(), f"delivered twice: {sorted(duplicates)[:10]}")


if __name__ == "__main__":
    unittest.main()
