"""Local peers for the probe and check tests: listeners on 127.0.0.1 / ::1 that treat each connection
in a named way, a port nothing listens on, a listener whose accept queue is full."""

import select
import socket
import struct
import threading
import time


class Peer:
    """A listener on one address that treats each accepted connection in a named way."""

    def __init__(self, behaviour, address="127.0.0.1", port=0):
        self.behaviour = behaviour
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, port))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        deadline = time.monotonic() + 30
        while not self.stop.is_set() and time.monotonic() < deadline:
            r, _, _ = select.select([self.sock], [], [], 0.05)
            if not r:
                continue
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            b = self.behaviour
            if b == "close":
                c.close()
            elif b == "reset":
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.close()
            elif b.startswith("send:"):
                c.sendall(b[5:].encode())
            elif b.startswith("slow:"):  # two halves, 0.1 s apart
                text = b[5:].encode()
                c.sendall(text[:2])
                time.sleep(0.1)
                c.sendall(text[2:])
            elif b.startswith("late:"):  # after the grace
                time.sleep(0.5)
                c.sendall(b[5:].encode())
            # "silent": keep it open, say nothing

    def close(self):
        self.stop.set()
        self.thread.join(2)
        self.sock.close()
        for c in self.conns:
            c.close()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class FullBacklog:
    """A listener that never accepts, its queue filled: a new connect gets no SYN-ACK (Linux drops it)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fillers = []
        for _ in range(8):  # bounded: backlog 0 holds one or two
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", self.port))
            self.fillers.append(c)
            _, w, _ = select.select([], [c], [], 0.2)
            if not w:
                return
        raise AssertionError("could not fill the accept queue")

    def close(self):
        for c in self.fillers:
            c.close()
        self.sock.close()


def send_nonce(port, timeout, listener):
    """True when a nonce sent into the -L end `port` came back through `listener` (agent.run.loop)."""
    from agent.run.probe import OK_DATA
    return listener.check(port, timeout).verdict == OK_DATA


def check_detail(stdout):
    """'python3 127.0.0.1' from a remote check's marker line (agent.hubside.remote); '' if none."""
    from agent.hubside.remote import CHECK_MARKER
    for line in reversed(stdout.splitlines()):
        parts = line.split()
        if len(parts) == 4 and parts[0] == CHECK_MARKER:
            return "%s %s" % (parts[2], parts[3])
    return ""
