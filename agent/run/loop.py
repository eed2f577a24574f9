"""The in-band loop check, box side: two forwards added to the tunnel's own ssh and an echo
listener on this box, so a nonce sent into the -L end crosses the connection twice and comes back.

It proves the tunnel's channels carry data without a new ssh exec on the hub (docs/health-checks.md).
Run inline from the supervisor's loop, no thread; every step is bounded by one monotonic deadline.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import time

from agent.core import values
from agent.core.model import Forward
from agent.run.probe import BANNER_MISMATCH, CLOSED, ERROR, OK_DATA, REFUSED, TIMEOUT, ProbeResult

if False:  # annotations only: importing typing would cost the agent 0.5 MB of memory
    from typing import Optional, Tuple


def free_port(address: str = "127.0.0.1") -> int:
    """A port free on this box right now (bind to 0, read, close; may race)."""
    s = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((address, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def loop_forward_pair(listener_port: int, server_port: int, box_port: int = 0) -> Tuple[Forward, Forward]:
    """The two forwards of the loop check, added to the tunnel's own ssh.

    -R 127.0.0.1:SERVER_PORT:127.0.0.1:LISTENER_PORT  (server port -> our echo listener)
    -L 127.0.0.1:BOX_PORT:127.0.0.1:SERVER_PORT       (box port -> that server port)
    A nonce sent into BOX_PORT crosses the connection twice and comes back.
    SERVER_PORT must be free on the server (one per tunnel per server);
    BOX_PORT 0 picks a free port now.
    """
    box_port = box_port or free_port()
    r = Forward("R", "127.0.0.1", values.port(server_port), "127.0.0.1", values.port(listener_port),
                check="none", name="loop-r")
    l = Forward("L", "127.0.0.1", values.port(box_port), "127.0.0.1", values.port(server_port),
                check="none", name="loop-l")
    return r, l


def make_nonce() -> bytes:
    return ("sshkeep-loop %s %d %s\n" % (socket.gethostname(), os.getpid(), os.urandom(8).hex())).encode()


class LoopListener:
    """The box end of the in-band loop check: an echo listener on 127.0.0.1:0.

    Run inline, no thread: `check(box_port, timeout)` connects to the -L end,
    sends a nonce, and in one selector loop accepts on this listener, echoes
    what each accepted connection sends, and reads the echo back; every step
    is bounded by one monotonic deadline. Between checks nothing is serviced:
    connections that arrive then wait in the backlog and are echoed (and
    closed) by the next check, which only trusts its own nonce.
    """

    def __init__(self, address: str = "127.0.0.1", port: int = 0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, port))
        self.sock.listen(8)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def check(self, box_port: int, timeout: float = 3.0, nonce: Optional[bytes] = None) -> ProbeResult:
        """Send a nonce through the loop; OK_DATA when it came back intact.

        REFUSED: nothing on the box port (the -L is gone). CLOSED: the loop
        was cut (server could not reach the -R port, or the -R could not reach
        us). TIMEOUT: no echo before the deadline (wedged channel).
        BANNER_MISMATCH: other bytes came back (the server port is held by a
        stranger, e.g. a dropbear server put our -R on ::1).
        """
        start = time.monotonic()
        deadline = start + timeout
        one = _Round(self.sock, box_port, nonce or make_nonce())
        try:
            out = one.connect()
            while out is None:
                now = time.monotonic()
                if now >= deadline:
                    out = TIMEOUT, "no echo in %.1fs" % timeout
                    break
                for key, ev in one.sel.select(deadline - now):
                    out = one.event(key, ev)
                    if out:
                        break
        finally:
            one.close()
        return ProbeResult(out[0], "127.0.0.1", out[1], time.monotonic() - start)


class _Round:
    """One loop check's sockets and progress: the client sending the nonce into the -L end, and
    the connections accepted on the listener meanwhile (echoed). Each step returns (verdict,
    detail) once the check is decided, else None."""

    def __init__(self, listener: socket.socket, box_port: int, nonce: bytes):
        self.listener, self.box_port, self.nonce = listener, box_port, nonce
        self.sel = selectors.DefaultSelector()
        self.peers = []  # type: List[socket.socket]
        self.client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.client.setblocking(False)
        self.pending, self.got, self.connected = nonce, b"", False

    def connect(self) -> Optional[Tuple[str, str]]:
        err = self.client.connect_ex(("127.0.0.1", self.box_port))
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
            return self._failed(err)
        self.sel.register(self.client, selectors.EVENT_WRITE, "client")
        self.sel.register(self.listener, selectors.EVENT_READ, "listener")
        return None

    def _failed(self, err: int) -> Tuple[str, str]:
        return (REFUSED if err == errno.ECONNREFUSED else ERROR), "box port %d: %s" % (self.box_port,
                                                                                       os.strerror(err))

    def event(self, key, ev: int) -> Optional[Tuple[str, str]]:
        if key.data == "listener":
            self._accept()
        elif key.data == "peer":
            self._echo(key.fileobj)
        else:
            return self._client(ev)
        return None

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.setblocking(False)
        self.peers.append(conn)
        self.sel.register(conn, selectors.EVENT_READ, "peer")

    def _echo(self, conn: socket.socket) -> None:
        try:
            chunk = conn.recv(4096)
        except OSError:
            chunk = b""
        if not chunk:
            self.sel.unregister(conn)
            return
        try:
            conn.send(chunk)  # small: fits the send buffer
        except OSError:
            pass

    def _client(self, ev: int) -> Optional[Tuple[str, str]]:
        if not self.connected:
            err = self.client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                return self._failed(err)
            self.connected = True
            ev = selectors.EVENT_WRITE  # send at once
        if self.pending and ev & selectors.EVENT_WRITE:
            try:
                self.pending = self.pending[self.client.send(self.pending):]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                return CLOSED, "send: %s" % exc
            self.sel.modify(self.client, selectors.EVENT_READ | (selectors.EVENT_WRITE if self.pending else 0),
                            "client")
        if not ev & selectors.EVENT_READ:
            return None
        try:
            chunk = self.client.recv(4096)
        except OSError:  # a reset: the loop was cut
            chunk = b""
        if not chunk:
            return ((BANNER_MISMATCH if self.got else CLOSED),
                    "loop closed after %d of %d bytes" % (len(self.got), len(self.nonce)))
        self.got += chunk
        if self.got == self.nonce:
            return OK_DATA, "nonce echoed"
        if not self.nonce.startswith(self.got):
            return BANNER_MISMATCH, "got %r" % self.got[:40]
        return None

    def close(self) -> None:
        self.sel.close()
        self.client.close()
        for p in self.peers:
            p.close()
