"""The responder in a tunnel's own session, driven by hand: a real client (ssh or dbclient) holding one
-R to a lab server with the session command, and requests sent as the agent sends them. Shared by
tests/integration/test_session_checks.py and tests/bench/checks.py."""

import os
import select
import subprocess
import time

import lab as labmod
from agent.hubside import remote

FWD = 20022
BANNER = b"SVC-READY\r\n"


def logins(server):
    """Successful public-key logins in the server's log (sshd: `Accepted publickey`; dropbear:
    `Pubkey auth succeeded`)."""
    text = server.log_text()
    return text.count("Accepted publickey") + text.count("Pubkey auth succeeded")


class Session:
    """A real client holding one -R with the responder session command; requests as the agent sends them."""

    def __init__(self, lab, server, client, svc_port):
        cmd = remote.session_command([FWD], owner="abcd1234", responder=True)
        opts = ["-o", "ExitOnForwardFailure=yes", "-R", "127.0.0.1:%d:127.0.0.1:%d" % (FWD, svc_port)]
        if client == "ssh":
            argv, env = lab.ssh_argv(server, *opts, cmd=[cmd]), None
        else:
            argv, env = lab.dbclient_argv(server, *opts, cmd=[cmd]), dict(os.environ, HOME=lab.dropbear_home(server))
        self.proc = lab.box_popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        self.buf = b""
        self.rid = 0
        line = self.line(15)
        self.ready = remote.parse_ready(line)
        self.name = remote.ready_responder(line)
        assert self.ready and self.name == "python3", line
        self.send(remote.responder_source(self.name))

    def send(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def line(self, timeout):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            r, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not r:
                raise AssertionError("no line in %ss (rc %s)" % (timeout, self.proc.poll()))
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise AssertionError("session ended: %r" % self.proc.stderr.read()[-500:])
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def ask(self, verb, wait=10, **words):
        self.rid += 1
        self.send(remote.request_line(self.rid, verb, **words))
        parsed = remote.parse_answer(self.line(wait))
        assert parsed and parsed[0] == self.rid, parsed
        return parsed[1]

    def check(self, port=FWD, banner="SVC-", timeout=1.0):
        return remote.answer_verdict(self.ask("check", bind="127.0.0.1", port=port, banner=banner,
                                              timeout=timeout))[0]

    def close(self):
        if self.proc.stdin:
            self.proc.stdin.close()
            self.proc.stdin = None
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            labmod.stop_process(self.proc)


def forward_ok(lab):
    return lab.probe_from(lab.srv_ns, "127.0.0.1", FWD, timeout=1.0) == BANNER
