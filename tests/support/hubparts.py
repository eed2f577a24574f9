"""What the hub view's tests share: a sample document, a listener, `sshkeep hub` from the source tree."""

import os
import socket
import subprocess
import sys

from agent.hub import view as hub
from agent.hub.view import parse_record

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def sample_doc(verdicts=None, odd=False):
    """A hub document of two sessions (three forwards), one reaped record and one junk file."""
    a = parse_record("rport-20022-100", "v1 box=A host=r1 tunnel=wan start=5 since=1700000000 ports=20022,20023")
    b = parse_record("rport-20030-200", 'v1 box=B%s host=r"2 tunnel=x start=6 since=1700000100 ports=20030'
                     % ("\\q" if odd else ""))
    found = hub.sessions([(a, False), (b, False)])
    verdicts = verdicts or {20022: ("ok-silent", "connected"), 20023: ("closed", "accepted, then closed"),
                            20030: ("ok-data", "sent 4 bytes")}
    return hub.document(found, verdicts, {100: ("10.0.0.1", 40000)}, [("rport-1-3", "session pid 3 is gone")],
                        [("junk", "not a session record")], "/h/.sshkeep", 1700000200.5)


class Listener:
    """A listening socket on 127.0.0.1 (a forward's port on the hub)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]

    def close(self):
        self.sock.close()


def hub_cli(*args, user=None, copy=None):
    """`python -m agent hub ARGS`: from the checkout as root, or as `user` from `copy` (the fixture
    other_user_copy: the checkout may be a 0700 directory that user cannot read)."""
    if user:
        argv = copy.setpriv(user) + [copy.python, "-m", "agent", "hub"] + list(args)
        code = copy.pythonpath
    else:
        argv, code = [sys.executable, "-m", "agent", "hub"] + list(args), ROOT
    return subprocess.run(argv, cwd=code, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30,
                          env=dict(os.environ, PYTHONPATH=code))
