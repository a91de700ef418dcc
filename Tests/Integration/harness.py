"""Shared helpers for the Apus end-to-end integration tests.

Everything here runs on loopback (127.0.0.0/8) only and uses the Python
standard library only:

* ``free_port``   -- pick an unused TCP port by binding port 0.
* ``make_cert``   -- create a throw-away self-signed certificate with openssl.
* ``DNSServer``   -- a tiny authoritative DNS server (UDP + TCP on one port)
                     that apusd's resolver (libunbound, used as a forwarder)
                     queries for MX / A / AAAA records.
* ``SMTPSink``    -- a threaded SMTP server that plays the remote MX and keeps
                     the exact bytes of every message it receives.
* ``Apus``        -- writes an apusd config into a temp dir, starts/stops the
                     real ``apusd`` binary and adds users with ``apusctl``.
* Maildir and log polling helpers.

Every wait in this module is bounded in time.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import socketserver
import ssl
import struct
import subprocess
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
APUSD = Path(os.environ.get("APUSD", REPO_ROOT / ".build/debug/apusd"))
APUSCTL = Path(os.environ.get("APUSCTL", APUSD.parent / "apusctl"))

LOOPBACK = "127.0.0.1"


# ---------------------------------------------------------------------------
# Small generic helpers
# ---------------------------------------------------------------------------

def free_port(addr: str = LOOPBACK) -> int:
    """Return a TCP port that is currently unused on ``addr``.

    The port is found by binding port 0 and closing the socket again, so there
    is a (small) window in which someone else could take it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.1):
    """Call ``predicate`` until it returns a truthy value or ``timeout`` passes.

    Returns the last value of ``predicate`` (falsy on timeout).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def port_accepts(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if a TCP connection to host:port can be established."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def insecure_tls_context() -> ssl.SSLContext:
    """Client TLS context that accepts apusd's self-signed test certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def make_cert(directory) -> tuple[Path, Path]:
    """Create a self-signed RSA certificate for ``localhost``/127.0.0.1.

    Returns ``(cert_path, key_path)``.
    """
    directory = Path(directory)
    cert = directory / "cert.pem"
    key = directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
         "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        timeout=60,
    )
    return cert, key


# ---------------------------------------------------------------------------
# Maildir helpers
# ---------------------------------------------------------------------------

def maildir_path(mail_directory, address: str) -> Path:
    """``<mail_directory>/<domain>/<localpart>`` for ``localpart@domain``."""
    local, domain = address.rsplit("@", 1)
    return Path(mail_directory) / domain.lower() / local


def maildir_files(maildir: Path, subdirs=("new", "cur")) -> list[Path]:
    """Message files in the given Maildir sub-directories (sorted by name)."""
    files = []
    for sub in subdirs:
        d = Path(maildir) / sub
        if d.is_dir():
            files.extend(p for p in d.iterdir()
                         if p.is_file() and not p.name.startswith("."))
    return sorted(files)


def wait_for_maildir(maildir: Path, count: int, timeout: float = 30.0,
                     subdirs=("new",)) -> list[Path]:
    """Poll until at least ``count`` messages exist; return the file list."""
    wait_until(lambda: len(maildir_files(maildir, subdirs)) >= count, timeout)
    return maildir_files(maildir, subdirs)


# ---------------------------------------------------------------------------
# DNS server
# ---------------------------------------------------------------------------

QTYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15,
          "TXT": 16, "AAAA": 28, "SRV": 33, "OPT": 41, "TLSA": 52, "ANY": 255}
QTYPE_NAMES = {v: k for k, v in QTYPES.items()}

RCODE_NOERROR, RCODE_FORMERR, RCODE_SERVFAIL = 0, 1, 2
RCODE_NXDOMAIN, RCODE_NOTIMP, RCODE_REFUSED = 3, 4, 5


class DNSFormatError(Exception):
    pass


def _encode_name(name: str) -> bytes:
    """Uncompressed wire-format encoding of a domain name."""
    out = b""
    for label in name.strip(".").split("."):
        if label:
            raw = label.encode("ascii")
            if len(raw) > 63:
                raise ValueError(f"label too long: {label!r}")
            out += bytes([len(raw)]) + raw
    return out + b"\x00"


def _read_name(msg: bytes, offset: int) -> tuple[str, int]:
    """Decode a (possibly compressed) name; return (name, offset after it)."""
    labels = []
    end = None
    jumps = 0
    while True:
        if offset >= len(msg):
            raise DNSFormatError("name runs past end of message")
        length = msg[offset]
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(msg):
                raise DNSFormatError("truncated compression pointer")
            if end is None:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | msg[offset + 1]
            jumps += 1
            if jumps > 32:
                raise DNSFormatError("compression loop")
            continue
        if length & 0xC0:
            raise DNSFormatError("unsupported label type")
        offset += 1
        if length == 0:
            break
        labels.append(msg[offset:offset + length].decode("ascii", "replace"))
        offset += length
    return ".".join(labels), (end if end is not None else offset)


class DNSServer:
    """Tiny authoritative DNS server for tests, on 127.0.0.1 UDP+TCP.

    ``records`` maps a domain name to a dict of record lists, e.g.::

        {"example.net": {"MX": [(10, "mx1.example.net"), (20, "mx2.example.net")]},
         "mx1.example.net": {"A": ["127.0.0.2"]},
         "mx2.example.net": {"A": ["127.0.0.3"], "AAAA": ["::1"]}}

    Supported types: A, AAAA, MX (preference, exchange), TXT (strings).
    Names are case-insensitive. Answers have AA and RA set and echo the ID,
    the RD bit and the question exactly as sent (so DNS 0x20 case
    randomisation survives).  A name that exists (or is an ancestor of an
    existing name) but lacks the type gets NOERROR/NODATA, anything else
    NXDOMAIN; both negative answers carry an SOA in the authority section
    (RFC 2308) so that caching resolvers accept them.  An EDNS OPT record in
    the query is answered with an OPT record (RFC 6891); TC is never set.
    """

    TTL = 5
    NEGATIVE_TTL = 1

    def __init__(self, records: dict | None = None, host: str = LOOPBACK):
        self.host = host
        self.records: dict[str, dict[str, list]] = {}
        self.queries: list[tuple[str, str, str]] = []  # (name, type, proto)
        self._lock = threading.Lock()
        for name, rrsets in (records or {}).items():
            for rtype, values in rrsets.items():
                for value in values:
                    self.add(name, rtype, value)
        self.port = None
        self._udp = None
        self._tcp = None
        self._threads: list[threading.Thread] = []

    # -- record management -------------------------------------------------

    def add(self, name: str, rtype: str, value) -> None:
        rtype = rtype.upper()
        if rtype not in ("A", "AAAA", "MX", "TXT"):
            raise ValueError(f"unsupported record type {rtype}")
        key = name.strip(".").lower()
        with self._lock:
            self.records.setdefault(key, {}).setdefault(rtype, []).append(value)

    def _name_exists(self, name: str) -> bool:
        if name in self.records:
            return True
        suffix = "." + name if name else ""
        return any(n.endswith(suffix) for n in self.records)

    # -- wire format ---------------------------------------------------------

    def _rdata(self, rtype: str, value) -> bytes:
        if rtype == "A":
            return socket.inet_pton(socket.AF_INET, value)
        if rtype == "AAAA":
            return socket.inet_pton(socket.AF_INET6, value)
        if rtype == "MX":
            pref, exchange = value
            return struct.pack("!H", pref) + _encode_name(exchange.lower())
        if rtype == "TXT":
            out = b""
            strings = [value] if isinstance(value, str) else list(value)
            for s in strings:
                raw = s.encode()
                while True:
                    out += bytes([min(len(raw), 255)]) + raw[:255]
                    raw = raw[255:]
                    if not raw:
                        break
            return out
        raise ValueError(rtype)

    @staticmethod
    def _soa_for(qname: str) -> tuple[bytes, bytes]:
        """Synthetic SOA (owner, rdata) for negative answers."""
        labels = [l for l in qname.split(".") if l]
        zone = ".".join(labels[-2:])
        rdata = (_encode_name("ns.test") + _encode_name("hostmaster.test")
                 + struct.pack("!IIIII", 1, 3600, 600, 86400,
                               DNSServer.NEGATIVE_TTL))
        return _encode_name(zone), rdata

    def handle_query(self, query: bytes, proto: str = "udp") -> bytes | None:
        """Build the response for one wire-format query (None: drop it)."""
        if len(query) < 12:
            return None
        qid, flags, qdcount, ancount, nscount, arcount = struct.unpack(
            "!HHHHHH", query[:12])
        if flags & 0x8000:          # a response, not a query: ignore
            return None
        opcode = (flags >> 11) & 0xF
        rd = flags & 0x0100

        def header(rcode, qd, an, ns, ar):
            rflags = 0x8000 | (opcode << 11) | 0x0400 | rd | 0x0080 | rcode
            return struct.pack("!HHHHHH", qid, rflags, qd, an, ns, ar)

        try:
            if opcode != 0:
                return header(RCODE_NOTIMP, 0, 0, 0, 0)
            if qdcount != 1:
                return header(RCODE_FORMERR, 0, 0, 0, 0)
            qname, off = _read_name(query, 12)
            if off + 4 > len(query):
                raise DNSFormatError("truncated question")
            qtype, qclass = struct.unpack("!HH", query[off:off + 4])
            question = query[12:off + 4]
            off += 4
            # Skip answer/authority records, look for an OPT in additional.
            edns = False
            for i in range(ancount + nscount + arcount):
                _, off = _read_name(query, off)
                if off + 10 > len(query):
                    raise DNSFormatError("truncated record")
                rtype, _, _, rdlen = struct.unpack("!HHIH", query[off:off + 10])
                off += 10 + rdlen
                if i >= ancount + nscount and rtype == QTYPES["OPT"]:
                    edns = True
        except DNSFormatError:
            return header(RCODE_FORMERR, 0, 0, 0, 0)

        key = qname.lower().strip(".")
        type_name = QTYPE_NAMES.get(qtype, str(qtype))
        with self._lock:
            self.queries.append((key, type_name, proto))
            rrsets = {t: list(v) for t, v in self.records.get(key, {}).items()}
            exists = self._name_exists(key)

        answers = []
        if qclass in (1, 255):
            if qtype == QTYPES["ANY"]:
                wanted = list(rrsets)
            else:
                wanted = [type_name] if type_name in rrsets else []
            for t in wanted:
                for value in rrsets[t]:
                    rdata = self._rdata(t, value)
                    # Owner: compression pointer to the question name.
                    answers.append(b"\xc0\x0c" + struct.pack(
                        "!HHIH", QTYPES[t], 1, self.TTL, len(rdata)) + rdata)
            rcode = RCODE_NOERROR if exists else RCODE_NXDOMAIN
        else:
            rcode = RCODE_REFUSED

        authority = []
        if not answers and rcode in (RCODE_NOERROR, RCODE_NXDOMAIN):
            owner, rdata = self._soa_for(key)
            authority.append(owner + struct.pack(
                "!HHIH", QTYPES["SOA"], 1, self.NEGATIVE_TTL, len(rdata)) + rdata)
        additional = []
        if edns:
            # Root owner, type OPT, UDP payload 1232, ext-rcode/version/flags 0.
            additional.append(b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0))
        return (header(rcode, 1, len(answers), len(authority), len(additional))
                + question + b"".join(answers) + b"".join(authority)
                + b"".join(additional))

    # -- servers ---------------------------------------------------------------

    def start(self) -> "DNSServer":
        dns = self

        class UDPHandler(socketserver.BaseRequestHandler):
            def handle(self):
                data, sock = self.request
                reply = dns.handle_query(data, "udp")
                if reply is not None:
                    sock.sendto(reply, self.client_address)

        class TCPHandler(socketserver.BaseRequestHandler):
            def handle(self):
                conn = self.request
                conn.settimeout(10)
                try:
                    while True:
                        hdr = _recv_exact(conn, 2)
                        if hdr is None:
                            return
                        (length,) = struct.unpack("!H", hdr)
                        data = _recv_exact(conn, length)
                        if data is None:
                            return
                        reply = dns.handle_query(data, "tcp")
                        if reply is None:
                            return
                        conn.sendall(struct.pack("!H", len(reply)) + reply)
                except OSError:
                    return

        class UDPServer(socketserver.ThreadingUDPServer):
            daemon_threads = True
            block_on_close = False

        class TCPServer(socketserver.ThreadingTCPServer):
            daemon_threads = True
            block_on_close = False
            allow_reuse_address = True

        # Find one port number that is free for both UDP and TCP.
        for _ in range(50):
            udp = UDPServer((self.host, 0), UDPHandler)
            port = udp.server_address[1]
            try:
                tcp = TCPServer((self.host, port), TCPHandler)
            except OSError:
                udp.server_close()
                continue
            break
        else:
            raise RuntimeError("could not find a port free for UDP and TCP")
        self._udp, self._tcp, self.port = udp, tcp, port
        for server in (udp, tcp):
            t = threading.Thread(target=server.serve_forever,
                                 kwargs={"poll_interval": 0.2}, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    @property
    def address(self) -> str:
        """The forwarder address in apusd's ``dns_servers`` syntax."""
        return f"{self.host}@{self.port}"

    def stop(self) -> None:
        for server in (self._udp, self._tcp):
            if server is not None:
                server.shutdown()
                server.server_close()
        for t in self._threads:
            t.join(timeout=5)
        self._udp = self._tcp = None
        self._threads = []

    def query_log(self) -> str:
        with self._lock:
            return "\n".join(f"{p} {t} {n}" for n, t, p in self.queries)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def dns_query(server: tuple[str, int], name: str, qtype: str = "A",
              tcp: bool = False, qid: int = 0x1234, edns: bool = False,
              timeout: float = 5.0) -> bytes:
    """Send one query (RD set) and return the raw response; used for self-checks."""
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 1 if edns else 0)
    q += _encode_name(name) + struct.pack("!HH", QTYPES[qtype], 1)
    if edns:
        q += b"\x00" + struct.pack("!HHIH", 41, 1232, 0x8000, 0)
    if tcp:
        with socket.create_connection(server, timeout=timeout) as s:
            s.sendall(struct.pack("!H", len(q)) + q)
            (length,) = struct.unpack("!H", _recv_exact(s, 2))
            return _recv_exact(s, length)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(q, server)
        return s.recvfrom(65535)[0]


# ---------------------------------------------------------------------------
# SMTP sink (the "remote" MX)
# ---------------------------------------------------------------------------

class ReceivedMessage:
    """One message accepted by the sink."""

    def __init__(self, mail_from: str, rcpts: list[str], data: bytes):
        self.mail_from = mail_from
        self.rcpts = rcpts
        self.data = data

    def __iter__(self):  # allows: mail_from, rcpts, data = message
        return iter((self.mail_from, self.rcpts, self.data))

    def __repr__(self):
        return (f"ReceivedMessage(from={self.mail_from!r}, rcpts={self.rcpts!r},"
                f" {len(self.data)} bytes)")


_PATH_RE = re.compile(rb"^(?:FROM|TO)\s*:\s*<([^>]*)>", re.IGNORECASE)


class SMTPSink:
    """A minimal threaded SMTP server that records what it receives.

    Speaks EHLO/HELO/MAIL/RCPT/DATA/RSET/NOOP/QUIT and advertises PIPELINING,
    8BITMIME and SIZE.  Each accepted message is stored as a
    ``ReceivedMessage(mail_from, rcpts, data)`` where ``data`` is the message
    content with the SMTP transparency dot removed (RFC 5321 §4.5.2) and
    without the terminating ``.<CRLF>`` -- i.e. the exact message bytes.

    ``temp_fail_rcpts``: the first N RCPT commands (counted over all
    connections) are answered ``451 4.3.0 try later``.
    ``reject_rcpts``: addresses answered ``550 5.1.1`` at RCPT.
    ``broken_starttls``: advertise STARTTLS, answer 220, then send garbage
    instead of a TLS handshake and hang up (a misconfigured MX).
    """

    def __init__(self, host: str, port: int, temp_fail_rcpts: int = 0,
                 name: str = "sink.test", reject_rcpts=(), broken_starttls: bool = False):
        self.reject_rcpts = {r.lower() for r in reject_rcpts}
        self.broken_starttls = broken_starttls
        self.host = host
        self.port = port
        self.name = name
        self.temp_fail_rcpts = temp_fail_rcpts
        self.messages: list[ReceivedMessage] = []
        self.transcript: list[str] = []
        self.rcpt_commands = 0
        self.connections = 0
        self._cond = threading.Condition()
        self._server = None
        self._thread = None

    # -- public API -------------------------------------------------------------

    def start(self) -> "SMTPSink":
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            timeout = 60

            def handle(self):
                sink._session(self.rfile, self.wfile, self.client_address)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            block_on_close = False
            allow_reuse_address = True

        self._server = Server((self.host, self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.2},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def wait_for(self, n: int, timeout: float = 30.0) -> bool:
        """Wait until at least ``n`` messages were received (bounded)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def received(self) -> list[ReceivedMessage]:
        with self._cond:
            return list(self.messages)

    def transcript_text(self) -> str:
        with self._cond:
            return "\n".join(self.transcript)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- protocol -------------------------------------------------------------

    def _log(self, line: str) -> None:
        with self._cond:
            self.transcript.append(line)

    def _session(self, rfile, wfile, peer) -> None:
        with self._cond:
            self.connections += 1

        def reply(text: str) -> None:
            self._log(f"S: {text}")
            wfile.write(text.encode() + b"\r\n")

        mail_from = None
        rcpts: list[str] = []
        self._log(f"-- connection from {peer[0]}:{peer[1]}")
        reply(f"220 {self.name} ESMTP test sink")
        try:
            while True:
                line = rfile.readline(4096)
                if not line:
                    self._log("-- client closed connection")
                    return
                self._log(f"C: {line!r}")
                cmdline = line.rstrip(b"\r\n")
                verb = cmdline.split(b" ", 1)[0].upper()
                arg = cmdline[len(verb):].strip()
                if verb == b"EHLO":
                    mail_from, rcpts = None, []
                    extensions = [f"250-{self.name} greets you", "250-PIPELINING",
                                  "250-8BITMIME", "250 SIZE 10240000"]
                    if self.broken_starttls:
                        extensions.insert(1, "250-STARTTLS")
                    for l in extensions:
                        reply(l)
                elif verb == b"STARTTLS" and self.broken_starttls:
                    reply("220 2.0.0 go ahead")
                    wfile.write(b"this is not a TLS record\r\n")
                    self._log("-- sent garbage instead of TLS, closing")
                    return
                elif verb == b"HELO":
                    mail_from, rcpts = None, []
                    reply(f"250 {self.name}")
                elif verb == b"MAIL":
                    m = _PATH_RE.match(arg)
                    if not m:
                        reply("501 5.5.4 syntax: MAIL FROM:<address>")
                    elif mail_from is not None:
                        reply("503 5.5.1 nested MAIL command")
                    else:
                        mail_from, rcpts = m.group(1).decode(), []
                        reply("250 2.1.0 sender ok")
                elif verb == b"RCPT":
                    m = _PATH_RE.match(arg)
                    if mail_from is None:
                        reply("503 5.5.1 need MAIL first")
                    elif not m:
                        reply("501 5.5.4 syntax: RCPT TO:<address>")
                    else:
                        with self._cond:
                            self.rcpt_commands += 1
                            fail = self.rcpt_commands <= self.temp_fail_rcpts
                        if m.group(1).decode().lower() in self.reject_rcpts:
                            reply("550 5.1.1 no such user here")
                        elif fail:
                            reply("451 4.3.0 try later")
                        else:
                            rcpts.append(m.group(1).decode())
                            reply("250 2.1.5 recipient ok")
                elif verb == b"DATA":
                    if mail_from is None:
                        reply("503 5.5.1 need MAIL first")
                    elif not rcpts:
                        reply("554 5.5.1 no valid recipients")
                    else:
                        reply("354 end data with <CRLF>.<CRLF>")
                        data = self._read_data(rfile)
                        if data is None:
                            self._log("-- connection lost during DATA")
                            return
                        msg = ReceivedMessage(mail_from, rcpts, data)
                        with self._cond:
                            self.messages.append(msg)
                            self._cond.notify_all()
                        self._log(f"-- stored {msg!r}")
                        reply(f"250 2.0.0 ok queued as {len(self.messages)}")
                        mail_from, rcpts = None, []
                elif verb == b"RSET":
                    mail_from, rcpts = None, []
                    reply("250 2.0.0 ok")
                elif verb == b"NOOP":
                    reply("250 2.0.0 ok")
                elif verb == b"QUIT":
                    reply(f"221 2.0.0 {self.name} closing")
                    return
                else:
                    reply("502 5.5.2 command not implemented")
        except (OSError, ValueError) as e:
            self._log(f"-- session error: {e!r}")

    def _read_data(self, rfile) -> bytes | None:
        """Read DATA content up to CRLF.CRLF and undo dot-stuffing."""
        lines = []
        while True:
            line = rfile.readline(1 << 20)
            if not line:
                return None
            if line == b".\r\n":
                return b"".join(lines)
            if not line.endswith(b"\r\n"):
                self._log(f"-- WARNING: DATA line without CRLF: {line[-60:]!r}")
            # RFC 5321 §4.5.2: a leading period is removed by the receiver.
            if line.startswith(b"."):
                line = line[1:]
            lines.append(line)


# ---------------------------------------------------------------------------
# apusd process control
# ---------------------------------------------------------------------------

ALL_ROLES = ("smtp", "submission", "submissions", "pop3", "pop3s")


class Apus:
    """A configured apusd instance in its own temporary directory.

    Usage::

        apus = Apus(tmpdir, dns=dns_server, outbound_port=port)
        apus.add_user("demo@localhost", "secret")
        apus.start()
        ... apus.ports["submission"] ...
        apus.stop()
    """

    def __init__(self, directory, *, dns: DNSServer | None = None,
                 hostname: str = "mx.apus.example",
                 local_domains=("localhost",),
                 roles=ALL_ROLES, outbound_port: int | None = None,
                 retry_first: str = "1s", retry_max: str = "2s",
                 extra_config: dict | None = None, host: str = LOOPBACK,
                 launcher: list[str] | None = None):
        # ``launcher``: a command prefix for apusd (e.g. unshare to give it its own mounts).
        self.launcher = list(launcher or [])
        self.dir = Path(directory)
        self.host = host
        self.spool_directory = self.dir / "spool"
        self.mail_directory = self.dir / "mail"
        self.sasldb_path = self.dir / "sasldb2"
        self.config_path = self.dir / "apusd.conf"
        self.log_path = self.dir / "apusd.log"
        self.spool_directory.mkdir(parents=True, exist_ok=True)
        self.mail_directory.mkdir(parents=True, exist_ok=True)
        self.cert, self.key = make_cert(self.dir)
        self.ports = {role: free_port(self.host) for role in roles}
        self.proc: subprocess.Popen | None = None
        self.starts = 0

        lines = [
            "# apusd configuration written by Tests/Integration/harness.py",
            f"hostname = {hostname}",
            f"local_domains = {', '.join(local_domains)}",
            f"spool_directory = {self.spool_directory}",
            f"mail_directory = {self.mail_directory}",
            f"sasldb_path = {self.sasldb_path}",
            f"tls_certificate = {self.cert}",
            f"tls_key = {self.key}",
        ]
        if dns is not None:
            lines.append(f"dns_servers = {dns.address}")
        for role, port in self.ports.items():
            lines.append(f"listen = {role} {self.host}:{port}")
        lines.append(f"retry_first = {retry_first}")
        lines.append(f"retry_max = {retry_max}")
        if outbound_port is not None:
            lines.append(f"test_only_outbound_smtp_port = {outbound_port}")
        for key, value in (extra_config or {}).items():
            lines.append(f"{key} = {value}")
        self.config_path.write_text("\n".join(lines) + "\n")

    # -- lifecycle ------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> "Apus":
        """Start apusd and wait until every listener accepts connections."""
        if not APUSD.exists():
            raise RuntimeError(f"apusd binary not found at {APUSD} "
                               "(build it or set APUSD=/path/to/apusd)")
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("apusd is already running")
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"=== harness: starting apusd (start #{self.starts}) ===\n"
                      .encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.launcher + [str(APUSD), "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.dir, start_new_session=True)
        deadline = time.monotonic() + timeout
        pending = dict(self.ports)
        while pending:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"apusd exited with status {self.proc.returncode} during "
                    f"startup; log:\n{self.log_tail()}")
            for role, port in list(pending.items()):
                if port_accepts(self.host, port, timeout=0.5):
                    del pending[role]
            if pending:
                if time.monotonic() >= deadline:
                    self.stop()
                    raise RuntimeError(
                        f"apusd did not open {sorted(pending)} within "
                        f"{timeout:.0f}s; log:\n{self.log_tail()}")
                time.sleep(0.1)
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM apusd, wait up to ``timeout`` s, then SIGKILL. Returns status."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with open(self.log_path, "ab") as log:
                    log.write(b"=== harness: apusd ignored SIGTERM, sending "
                              b"SIGKILL ===\n")
                proc.kill()
                proc.wait(timeout=10)
        return proc.returncode

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- users ------------------------------------------------------------------

    def add_user(self, address: str, password: str) -> None:
        """``apusctl -c CONFIG user add ADDRESS --password-stdin``."""
        if not APUSCTL.exists():
            raise RuntimeError(f"apusctl binary not found at {APUSCTL}")
        result = subprocess.run(
            [str(APUSCTL), "-c", str(self.config_path), "user", "add", address,
             "--password-stdin"],
            input=password.encode(), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, cwd=self.dir, timeout=30)
        if result.returncode != 0:
            raise RuntimeError(
                f"apusctl user add {address} failed with status "
                f"{result.returncode}:\n{result.stdout.decode(errors='replace')}")

    # -- logs and mailboxes -------------------------------------------------------

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 200) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def log_lines(self, *needles: str) -> list[str]:
        """Log lines containing every one of ``needles``."""
        return [l for l in self.log().splitlines()
                if all(n in l for n in needles)]

    def wait_for_log(self, *needles: str, timeout: float = 30.0) -> list[str]:
        """Poll the log until a line contains all ``needles`` (bounded)."""
        return wait_until(lambda: self.log_lines(*needles), timeout) or []

    def maildir(self, address: str) -> Path:
        return maildir_path(self.mail_directory, address)
