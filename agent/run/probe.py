"""Local probes: is a listen address on this box answering, and how.

Raw non-blocking sockets driven by one selector, every step bounded by a
monotonic deadline. Never `socket.create_connection` and never a str host for
`getaddrinfo`: on OpenWrt python3-light both need the idna codec, which needs
unicodedata, which is not there ("idna trap"). Numeric addresses go straight
to connect(); names are resolved with a bytes host.

What the outcomes mean for an ssh forward (measured with both clients):
- REFUSED: nobody listens; the ssh client that should hold a -L is gone.
- CLOSED: accepted, then EOF or reset within the grace: the far end of a
  broken forward ("Connection closed by foreign host"): the client accepted,
  the channel open or the target connect failed.
- OK_SILENT: accepted and silent through the grace: healthy for protocols
  where the client speaks first (HTTP), but also what a stale listener looks
  like (accepts, never answers). Give a banner to tell them apart.
- TIMEOUT: connect not answered (full backlog, blackhole), or a banner was
  expected and nothing came in time.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import time

from agent.core import values
from agent.core.record import record

if False:  # annotations only: importing typing would cost the agent 0.5 MB of memory
    from typing import List, Optional, Sequence

OK_BANNER = "ok-banner"
OK_SILENT = "ok-silent"
OK_DATA = "ok-data"
REFUSED = "refused"
CLOSED = "closed"
BANNER_MISMATCH = "banner-mismatch"
TIMEOUT = "timeout"
ERROR = "error"

HEALTHY = (OK_BANNER, OK_DATA, OK_SILENT)
# Best first: how two answers (127.0.0.1 and ::1 for 'localhost') are ranked.
_RANK = (OK_BANNER, OK_DATA, OK_SILENT, BANNER_MISMATCH, CLOSED, TIMEOUT, REFUSED, ERROR)

WILDCARDS = ("", "0.0.0.0", "*")
MAX_ADDRESSES = 4  # a name resolving to more is probed on its first four


@record
class ProbeResult:
    verdict: str
    address: str   # the address that gave the verdict, e.g. "127.0.0.1" or "::1"
    detail: str    # one line for the log and status
    elapsed: float  # seconds, monotonic
    data: bytes = b""  # what the far end sent first, if anything (its greeting)


def is_healthy(result: ProbeResult) -> bool:
    return result.verdict in HEALTHY


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def addresses_for(host: str) -> List[str]:
    """The addresses a probe of `host` connects to, without DNS where possible.

    '' / 0.0.0.0 / * (a wildcard bind) -> 127.0.0.1; '::' -> ::1;
    'localhost' -> 127.0.0.1 and ::1, both, explicitly (name resolution puts
    ::1 first, and a connect to only the first answer is what gives the
    "refused, then succeeded" confusion); an IP literal -> itself; any other
    name -> getaddrinfo with a bytes host (may block on DNS: the resolver's
    own timeout applies, there is no way to bound it without a thread).
    """
    if host in WILDCARDS:
        return ["127.0.0.1"]
    if host == "::":
        return ["::1"]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.lower() == "localhost":
        return ["127.0.0.1", "::1"]
    if values.is_ip_literal(host):
        return [host]
    out = []  # type: List[str]
    for info in socket.getaddrinfo(host.encode(), None, 0, socket.SOCK_STREAM):
        address = info[4][0]
        if address not in out:
            out.append(address)
    return out[:MAX_ADDRESSES]


class _Attempt:
    """One connect-then-read to one address, advanced by `step`/`expire`."""

    def __init__(self, address, port, banner, grace, deadline, connect_only):
        self.address = address
        self.port = port
        self.banner = banner
        self.grace = grace
        self.deadline = deadline
        self.connect_only = connect_only
        self.data = b""
        self.result = None  # (verdict, detail) once finished
        self.phase_end = deadline
        self.reading = False
        self.sock = None
        try:
            self.sock = socket.socket(_family(address), socket.SOCK_STREAM)
            self.sock.setblocking(False)
            err = self.sock.connect_ex((address, port))
        except OSError as exc:
            self._finish(ERROR, "socket: %s" % (exc.strerror or exc))
            return
        if err in (0, errno.EISCONN):
            self._connected(time.monotonic())
        elif err not in (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK, errno.EAGAIN):
            self._failed(err)

    def _finish(self, verdict, detail):
        self.result = (verdict, detail)

    def close(self):
        if self.sock is not None:
            self.sock.close()

    def _failed(self, err):
        if err == errno.ECONNREFUSED:
            self._finish(REFUSED, "connection refused")
        elif err in (errno.ECONNRESET, errno.EPIPE):  # accepted, then reset before we looked
            self._finish(CLOSED, "accepted, then reset")
        elif err == errno.ETIMEDOUT:
            self._finish(TIMEOUT, "connect timed out")
        else:
            self._finish(ERROR, "connect: %s" % os.strerror(err))

    def _connected(self, now):
        if self.connect_only:
            self._finish(OK_SILENT, "connected")
            return
        self.reading = True
        # Without a banner only the grace is waited: silence through it is healthy.
        self.phase_end = self.deadline if self.banner else min(self.deadline, now + self.grace)

    @property
    def events(self):
        return selectors.EVENT_READ if self.reading else selectors.EVENT_WRITE

    def step(self, now):
        """The socket is ready: finish the connect or read what came."""
        if not self.reading:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._failed(err)
            else:
                self._connected(now)
            return
        try:
            chunk = self.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # ECONNRESET: the far end of a broken forward, too
            chunk = b""
            reset = " (%s)" % (exc.strerror or exc)
        else:
            reset = ""
        if not chunk:
            if self.data:
                self._finish(BANNER_MISMATCH, "closed after %r, expected %r" % (self.data[:40], self.banner))
            else:
                self._finish(CLOSED, "accepted, then closed%s" % reset)
            return
        self.data += chunk
        if not self.banner:
            self._finish(OK_DATA, "sent %d bytes" % len(self.data))
        elif self.data[: len(self.banner)] == self.banner:
            self._finish(OK_BANNER, "banner %r" % self.data[:40])
        elif not self.banner.startswith(self.data):
            self._finish(BANNER_MISMATCH, "got %r, expected %r" % (self.data[:40], self.banner))

    def expire(self):
        """The current phase ran out of time."""
        if not self.reading:
            self._finish(TIMEOUT, "no answer to connect")
        elif not self.banner:
            self._finish(OK_SILENT, "accepted, silent for %.1fs" % self.grace)
        elif self.data:
            self._finish(BANNER_MISMATCH, "got only %r, expected %r" % (self.data[:40], self.banner))
        else:
            self._finish(TIMEOUT, "accepted, no banner in time")


def _run(attempts: Sequence[_Attempt], deadline: float, stop_on=None) -> None:
    """Drive the attempts until all are done, the deadline, or one ends in `stop_on`."""
    sel = selectors.DefaultSelector()
    try:
        while True:
            live = [a for a in attempts if a.result is None]
            if not live or (stop_on and any(a.result and a.result[0] in stop_on for a in attempts)):
                break
            now = time.monotonic()
            for a in live:
                if now >= a.phase_end:
                    a.expire()
            live = [a for a in live if a.result is None]
            if not live:
                break
            for a in live:
                try:
                    sel.modify(a.sock, a.events, a)
                except KeyError:
                    sel.register(a.sock, a.events, a)
            wait = max(0.0, min(a.phase_end for a in live) - now)
            for key, _ in sel.select(wait):
                a = key.data
                if a.result is None:
                    a.step(time.monotonic())
                if a.result is not None:
                    sel.unregister(key.fileobj)
    finally:
        sel.close()
        for a in attempts:
            if a.result is None:
                a._finish(TIMEOUT, "deadline")
            a.close()


def _best(results):
    return min(results, key=lambda r: (_RANK.index(r[0]), r[2]))


def probe_local(
    bind: str,
    port: int,
    timeout: float = 3.0,
    grace: float = 0.3,
    banner: Optional[bytes] = None,
) -> ProbeResult:
    """Probe a listen address on this box; see the module doc for verdicts.

    All addresses of `bind` (two for 'localhost') are probed at the same time,
    so the whole call takes at most `timeout` (plus name resolution for a
    non-numeric name). The best verdict wins; `.address` says which address
    gave it and `.detail` lists every address's outcome.
    """
    return probe_many([(bind, port, banner)], timeout, grace)[0]


def probe_many(targets, timeout: float = 3.0, grace: float = 0.3, batch: int = 256) -> List[ProbeResult]:
    """probe_local for many (bind, port, banner) at once: one selector, `batch` targets at a time.

    The hub probes every recorded forward this way: N forwards cost about
    ceil(N / batch) * timeout at worst, not N * timeout, and at most 2 * batch
    sockets are open at once (two addresses for 'localhost').
    """
    out = []  # type: List[ProbeResult]
    for i in range(0, len(targets), batch):
        start = time.monotonic()
        deadline = start + timeout
        groups = []
        for bind, port, banner in targets[i:i + batch]:
            try:
                addrs = addresses_for(bind)
                err = "" if addrs else "resolve %s: no address" % bind
            except (OSError, UnicodeError) as exc:
                addrs, err = [], "resolve %s: %s" % (bind, exc)
            groups.append((bind, err, [_Attempt(a, port, banner or b"", grace, deadline, False) for a in addrs]))
        _run([a for _, _, g in groups for a in g], deadline)
        elapsed = time.monotonic() - start
        for bind, err, attempts in groups:
            if err:
                out.append(ProbeResult(ERROR, bind, err, elapsed))
                continue
            rows = [(a.result[0], a.result[1], j, a.address) for j, a in enumerate(attempts)]
            verdict, detail, best, address = _best(rows)
            if len(rows) > 1:
                detail = "; ".join("%s: %s (%s)" % (r[3], r[0], r[1]) for r in rows)
            out.append(ProbeResult(verdict, address, detail, elapsed, attempts[best].data[:64]))
    return out


def greeting_prefix(data: bytes) -> Optional[bytes]:
    """The first 3-4 printable bytes of a greeting (b"SSH-", b"220"), or None.

    A target that speaks first (sshd, dropbear, SMTP, FTP) lets a check ask for its greeting
    instead of a bare connect: through a wedged channel a connect is still accepted on the
    far side, but the greeting never comes. Binary or short greetings are not learned.
    """
    n = 0
    while n < min(4, len(data)) and 32 < data[n] < 127:
        n += 1
    return data[:n] if n >= 3 else None


def probe_tcp(host: str, port: int, timeout: float = 2.0) -> bool:
    """Does anything accept TCP on host:port? A plain connect, no SSH handshake.

    Used while backing off to notice the server is back. `host` may be a name
    (resolved with a bytes host; the resolver's own timeout applies on top).
    All addresses are tried at once; True as soon as one connects.
    """
    start = time.monotonic()
    try:
        addrs = addresses_for(host)
    except (OSError, UnicodeError):
        return False
    deadline = start + timeout
    attempts = [_Attempt(a, port, b"", 0.0, deadline, True) for a in addrs]
    _run(attempts, deadline, stop_on=(OK_SILENT,))
    return any(a.result and a.result[0] == OK_SILENT for a in attempts)


# --- half-open probe of a server (root only) ---------------------------------
# An OpenSSH 9.8+ server counts every connection that closes before authenticating as a
# PerSourcePenalties `noauth` (measured on 10.0p2: bare, banner read, version line sent, RST).
# A SYN sent through a raw socket never becomes a connection: the server answers SYN-ACK (it
# listens) or RST (nothing listens), our kernel resets the SYN-ACK (no socket of its own matches:
# the port is only bound, to keep it ours), and the half-open entry is dropped before sshd could
# accept() it: nothing in the server's log, no penalty. Needs CAP_NET_RAW; IPv4 only.

def half_open_available() -> bool:
    """Can this process send a half-open probe (root or CAP_NET_RAW)?"""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP).close()
        return True
    except OSError:
        return False


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def syn_segment(src: str, dst: str, sport: int, dport: int, seq: int) -> bytes:
    """A 20-byte TCP SYN (no options), checksummed over the IPv4 pseudo-header. Pure."""
    # Built with int.to_bytes, not struct: the resident agent does not import struct (tests/integration/test_memory.py).
    head = b"".join(v.to_bytes(n, "big") for v, n in ((sport, 2), (dport, 2), (seq, 4), (0, 4), (5 << 4, 1),
                                                      (0x02, 1), (64240, 2), (0, 2), (0, 2)))
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + bytes((0, socket.IPPROTO_TCP)) + (20).to_bytes(2, "big")
    return head[:16] + _checksum(pseudo + head).to_bytes(2, "big") + head[18:]


def answer_of(packet: bytes, dst: str, sport: int, dport: int) -> Optional[bool]:
    """An IPv4 packet from a raw TCP socket: True SYN-ACK, False RST, None not the answer. Pure."""
    if len(packet) < 20 or socket.inet_ntoa(packet[12:16]) != dst:
        return None
    tcp = packet[(packet[0] & 0x0F) * 4:]
    if len(tcp) < 14 or (int.from_bytes(tcp[0:2], "big"), int.from_bytes(tcp[2:4], "big")) != (dport, sport):
        return None
    if tcp[13] & 0x12 == 0x12:
        return True
    return False if tcp[13] & 0x04 else None


def probe_syn(host: str, port: int, timeout: float = 0.5) -> Optional[bool]:
    """Half-open probe: True the server listens, False refused or no answer within timeout, None
    when it cannot be sent (no CAP_NET_RAW, IPv6 only, name not resolved): use probe_tcp then."""
    deadline = time.monotonic() + timeout
    try:
        dst = next(a for a in addresses_for(host) if ":" not in a)
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    except (OSError, UnicodeError, StopIteration):
        return None
    route = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hold = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        route.connect((dst, port))  # no packet: only picks the source address of the route
        src = route.getsockname()[0]
        hold.bind((src, 0))
        sport = hold.getsockname()[1]
        raw.sendto(syn_segment(src, dst, sport, port, int.from_bytes(os.urandom(4), "big")), (dst, 0))
        raw.setblocking(False)
        sel = selectors.DefaultSelector()
        sel.register(raw, selectors.EVENT_READ)
        try:
            for _ in range(10000):  # bounded: the box may receive much other TCP meanwhile
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    return False
                try:
                    got = answer_of(raw.recv(65535), dst, sport, port)
                except BlockingIOError:
                    continue
                if got is not None:
                    return got
            return False
        finally:
            sel.close()
    except OSError:
        return None
    finally:
        for s_ in (raw, route, hold):
            s_.close()
