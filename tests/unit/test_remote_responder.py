"""The session's responder (agent.hubside.remote) run for real on this machine, and agent.core.session's bookkeeping.

The responder runs as it does on a hub: the session command under `sh -c`, as the child of a process
titled like an sshd session, with PATH holding only the tools a test allows, so each of python3, perl
and the forking sh fallback (bash /dev/tcp here) is the one chosen. Targets are local sockets
(tests/support/peers.py: Peer). Real servers and clients: tests/integration/test_session_checks.py.
"""

import os
import select
import shlex
import subprocess
import time

import pytest

from polling import wait_until

from agent.hubside import remote

from agent.core import session
from agent.hubside.remote import CLOSED, MISMATCH, NO_ANSWER, OK, REFUSED
from peers import Peer, free_port

TOOLS = {"python3": "/usr/bin/python3", "perl": "/usr/bin/perl", "bash": "/usr/bin/bash"}


SHELLS = {"dash": "/bin/dash", "bash": "/usr/bin/bash", "busybox": "/usr/bin/busybox"}


def make_bin(path, tools, shell="dash"):
    os.makedirs(path, exist_ok=True)
    for name, target in [("sh", SHELLS[shell]), ("sleep", "/bin/sleep"), ("rm", "/bin/rm"), ("mkdir", "/bin/mkdir"),
                         ("date", "/bin/date")] + [(t, TOOLS[t]) for t in tools]:
        os.symlink(target, os.path.join(path, name))
    return path


class Hub:
    """One session with its responder: `ask(line)` -> the answer's words."""

    def __init__(self, tmp, tools, ports=(2222,), before=b"", shell="dash"):
        self.state = str(tmp / "state")
        bindir = make_bin(str(tmp / "bin"), tools, shell)
        cmd = remote.session_command(list(ports), self.state, "abcd1234", responder=True)
        self.proc = subprocess.Popen(
            ["/usr/bin/perl", "-e", '$0 = shift; system(@ARGV); exit 0', "sshd: tester@notty",
             os.path.join(bindir, "sh"), "-c", cmd],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={"PATH": bindir, "HOME": str(tmp), "LC_ALL": "C"})
        self.buf = b""
        ready = self.line(5)
        self.name = remote.ready_responder(ready)
        assert self.name, ready
        self.send(before + remote.responder_source(self.name))
        self.rid = 0

    def send(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def line(self, timeout):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            r, _, _ = select.select([self.proc.stdout], [], [], max(0.0, left))
            if not r:
                raise AssertionError("no line from the responder in %ss" % timeout)
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise AssertionError("the session ended")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def ask(self, verb, wait=10, **words):
        self.rid += 1
        self.send(remote.request_line(self.rid, verb, **words))
        return self.answer(self.rid, wait)

    def answer(self, rid, timeout=10):
        parsed = remote.parse_answer(self.line(timeout))
        assert parsed and parsed[0] == rid, parsed
        return parsed[1]

    def responder_pid(self):
        """The interpreter process under the session's sh (None for the sh fallback)."""
        for pid in descendants(self.proc.pid):
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                argv = f.read().split(b"\0")
            if any(a in (b"python3", b"perl") or a.endswith((b"/python3", b"/perl")) for a in argv[:1]):
                return pid
        return None

    def close(self):
        if self.proc.stdin:
            self.proc.stdin.close()
            self.proc.stdin = None
        try:
            return self.proc.wait(5)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(3)
            self.proc.stdout.close()


def descendants(pid):
    kids = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name) as f:
                    kids.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(name))
            except (OSError, IndexError):
                pass
    out, todo = [], list(kids.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def hubs(tmp_path):
    made = []

    def make(tools, **kw):
        h = Hub(tmp_path / str(len(made)), tools, **kw)
        made.append(h)
        return h
    yield make
    for h in made:
        h.close()


@pytest.fixture
def peers():
    made = []

    def make(behaviour, address="127.0.0.1"):
        p = Peer(behaviour, address)
        made.append(p)
        return p
    yield make
    for p in made:
        p.close()


CHOICES = [(["python3", "perl", "bash"], "python3"), (["perl", "bash"], "perl"), (["bash"], "sh")]


@pytest.mark.parametrize("shell", ["dash", "bash", "busybox"])
@pytest.mark.parametrize("tools, chosen", CHOICES)
def test_every_verdict_through_the_responder(hubs, peers, tools, chosen, shell):
    """The hub's sh may be dash, bash or busybox ash: the session command and the sh fallback run in it."""
    h = hubs(tools, shell=shell)
    assert h.name == chosen
    assert h.ask("ping") == ["pong"]
    ok, silent, close = peers("send:SSH-2.0-x\r\n"), peers("silent"), peers("close")
    cases = [(ok.port, "SSH-", OK), (ok.port, "HTTP", MISMATCH), (silent.port, "SSH-", NO_ANSWER),
             (silent.port, None, OK), (close.port, None, CLOSED), (free_port(), None, REFUSED)]
    for port, banner, want in cases:
        words = h.ask("check", bind="127.0.0.1", port=port, banner=banner, timeout=1.0)
        verdict, detail = remote.answer_verdict(words)
        assert verdict == want, (port, banner, words)
        assert detail == ("bash" if chosen == "sh" else chosen) + " 127.0.0.1"
    # localhost: 127.0.0.1 refused, ::1 answers -> ok, and the answer names the address that did
    v6 = peers("send:SSH-2.0-x\r\n", "::1")
    words = h.ask("check", bind="localhost", port=v6.port, banner="SSH-", timeout=1.0)
    if remote.answer_verdict(words)[0] != REFUSED:   # the port may be taken on 127.0.0.1 by chance
        assert remote.answer_verdict(words) == (OK, words[2] + " ::1")
    assert h.ask("count") == ["count", "1"]


@pytest.mark.parametrize("tools", [t for t, _ in CHOICES])
def test_requests_are_data_never_code(hubs, tmp_path, tools):
    h = hubs(tools)
    marker = tmp_path / "pwned"
    hostile = ["%d check 127.0.0.1;touch${IFS}%s 22 - 1 1", "%d check $(touch${IFS}%s) 22 - 1 1",
               "%d check 127.0.0.1 22 `touch${IFS}%s` 1 1", "%d check 127.0.0.1 22 - 1;touch${IFS}%s 1",
               "%d check localhost 22 - 1 1 %s", "%d check example.com 22 - 1 1%s", "%d count %s",
               "%d check 127.0.0.1 99999 - 1 1%s", "%d check 127.0.0.1 22 zz 1 1%s",
               "%d check 127.0.0.1 22 - 0 1%s", "%d check 127.0.0.1 22 - 301 1%s", "%d frobnicate%s"]
    for i, text in enumerate(hostile, 1):
        h.send(((text % (i, marker)) if text.count("%") == 2 else text % i).encode() + b"\n")
        assert h.answer(i) == ["bad"], text
    # a line without an id gets no answer; the next request is still answered in turn
    h.send(b"ping\n" + b"x" * 5000 + b"\n" + b"99 ping\n")
    assert h.answer(99) == ["pong"]
    assert not marker.exists()


def test_count_is_the_live_sessions_recorded_for_this_user(hubs, tmp_path):
    h = hubs(["python3"], ports=(2222, 2223))
    assert h.ask("count") == ["count", "1"]          # one session, two ports: one session
    other = hubs(["perl"], ports=(2224,))
    assert other.ask("count") == ["count", "1"]      # another state dir
    # records of a gone session, a recycled pid and a foreign file do not count
    with open(os.path.join(h.state, "rport-9999-1"), "w") as f:
        f.write("v1 box=x host=h tunnel=t start=1 since=- ports=9999\n")   # pid 1, wrong start time
    with open(os.path.join(h.state, "rport-9998-%d" % (2 ** 22 + 7)), "w") as f:
        f.write("v1 box=x host=h tunnel=t start=5 since=- ports=9998\n")   # no such pid
    with open(os.path.join(h.state, "notes"), "w") as f:
        f.write("hello\n")
    assert h.ask("count") == ["count", "1"]


@pytest.mark.parametrize("tools, chosen", CHOICES[:2])
def test_memory_bounded_over_10000_requests_and_nothing_left(hubs, peers, tools, chosen):
    h = hubs(tools)
    ok = peers("send:SSH-2.0-x\r\n")
    refused = free_port()
    assert h.ask("ping") == ["pong"]
    pid = h.responder_pid()
    assert pid, "no %s process under the session" % chosen

    def burst(n, start):
        lines = []
        for i in range(start, start + n):
            kind = i % 4
            if kind == 0:
                lines.append(remote.request_line(i, "ping"))
            elif kind == 1:
                lines.append(remote.request_line(i, "check", bind="127.0.0.1", port=ok.port, banner="SSH-",
                                                 timeout=1.0))
            elif kind == 2:
                lines.append(remote.request_line(i, "check", bind="127.0.0.1", port=refused, timeout=1.0))
            else:
                lines.append(b"%d check bogus 1 - 1 1\n" % i)
        for chunk in range(0, n, 50):   # in bursts, so neither pipe fills while we write
            h.send(b"".join(lines[chunk:chunk + 50]))
            for i in range(start + chunk, start + min(n, chunk + 50)):
                h.answer(i)
        return start + n

    nxt = burst(1000, 1)           # warm: every code path has run, caches are filled
    before = rss_kb(pid)
    fds = len(os.listdir("/proc/%d/fd" % pid))
    burst(10000, nxt)
    after = rss_kb(pid)
    assert after - before <= 256, (before, after)     # no growth with the number of requests
    assert len(os.listdir("/proc/%d/fd" % pid)) == fds
    kids = descendants(h.proc.pid)
    assert h.close() == 0                              # stdin EOF ends the session
    wait_until(lambda: not any(os.path.exists("/proc/%d" % k) for k in kids), 5, 0.05, "no process left")
    assert os.listdir(h.state) == []                   # its records removed


def test_a_responder_that_fails_is_announced_and_the_session_stays(tmp_path):
    """python too old to run it (here: a `python3` that exits 1): `sshkeep-gone`, then the session
    still holds the tunnel (waits on stdin) and ends cleanly at EOF."""
    bindir = make_bin(str(tmp_path / "bin"), [])
    with open(os.path.join(bindir, "python3"), "w") as f:
        f.write("#!/bin/dash\nexit 1\n")
    os.chmod(os.path.join(bindir, "python3"), 0o755)
    cmd = remote.session_command([2222], str(tmp_path / "state"), "abcd1234", responder=True)
    p = subprocess.Popen(["/usr/bin/perl", "-e", '$0 = shift; system(@ARGV); exit 0', "sshd: t@notty",
                          os.path.join(bindir, "sh"), "-c", cmd],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={"PATH": bindir, "HOME": str(tmp_path)})
    try:
        p.stdin.write(remote.responder_source("python3"))
        p.stdin.flush()
        out = b""
        deadline = time.monotonic() + 5
        while b"sshkeep-gone" not in out and time.monotonic() < deadline:
            r, _, _ = select.select([p.stdout], [], [], 0.5)
            if r:
                out += os.read(p.stdout.fileno(), 4096)
        lines = out.decode().splitlines()
        assert remote.ready_responder(lines[0]) == "python3"
        assert remote.parse_gone(lines[1]) == "python3 exited 1"
        assert p.poll() is None                        # the tunnel's session goes on
        p.stdin.close()
        assert p.wait(5) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(3)
    assert os.listdir(str(tmp_path / "state")) == []


def test_no_responder_asked_keeps_todays_session_command():
    assert shlex.split(remote.session_command([2222], "/s", "abcd1234"))[4:] == [
        "sshkeep-session", "/s", "abcd1234", "-", "-", "2222"]
    words = shlex.split(remote.session_command([2222], "/s", "abcd1234", responder=True))
    assert words[-2:] == ["--", str(len(remote.PERL_RESPONDER) + 1)]
    assert len(remote.session_command([2222, 2223], "/s", "a" * 64, "h" * 64, "t" * 64, responder=True)) < 2500  # dropbear: 9000
    for name in remote.RESPONDERS:
        assert remote.responder_source(name).count(b"\n") == 2   # the start line, the program in one line


@pytest.mark.parametrize("bad", [dict(bind="example.com"), dict(bind="127.0.0.1;id"), dict(port=0),
                                 dict(port="22"), dict(banner="x" * 300), dict(timeout=0), dict(timeout=301)])
def test_request_words_are_validated_on_the_box(bad):
    words = dict(bind="127.0.0.1", port=22, banner=None, timeout=3.0)
    words.update(bad)
    with pytest.raises(ValueError):
        remote.request_line(1, "check", **words)


def test_request_lines():
    assert remote.request_line(7, "ping") == b"7 ping\n"
    assert remote.request_line(8, "check", bind="", port=22, banner="SSH-", timeout=3) == \
        b"8 check 127.0.0.1,::1 22 5353482d 3.000 0.300\n"
    assert remote.parse_answer("sshkeep-answer 8 check 80 python3 ::1") == (8, ["check", "80", "python3", "::1"])
    assert remote.parse_answer("sshkeep-answer x check") is None
    assert remote.answer_verdict(["check", "77", "python3", "::1"])[0] == remote.ERROR


# ----------------------------------------------------------------------------- agent.core.session
def test_answers_match_by_id_and_strays_are_ignored():
    q = session.Requests()
    got = []
    a = q.add("ping", 3.0, 0.0, got.append)
    b = q.add("check", 5.0, 0.0, got.append)
    assert q.answer(b + 100, 0.1) == (None, [])        # stray: no request waits for it
    assert q.strays == 1 and len(q.pending) == 2
    hit, skipped = q.answer(a, 0.2)
    assert hit.rid == a and skipped == []
    assert q.pending[0].turn == 0.2                    # b's budget starts when the responder is free
    assert q.overdue(5.1) is None and q.overdue(5.2).rid == b
    q.clear()
    assert q.answer(b, 6.0) == (None, [])              # late, after the session ended: never matched
    c = q.add("check", 5.0, 7.0, got.append)
    assert c > b                                       # ids are never reused


def test_skipped_requests_are_reported():
    q = session.Requests()
    a, b = q.add("check", 5.0, 0.0, None), q.add("check", 5.0, 0.0, None)
    hit, skipped = q.answer(b, 1.0)
    assert hit.rid == b and [p.rid for p in skipped] == [a] and not q.pending


def test_ping_budget_grows_on_a_slow_link_within_a_cap():
    q = session.Requests()
    assert q.ping_budget() == session.PING_BUDGET
    for t in (0.0, 10.0):
        rid = q.add("ping", q.ping_budget(), t, None)
        q.answer(rid, t + 2.0)
    assert q.ping_budget() == 8.0
    rid = q.add("ping", 15, 20.0, None)
    q.answer(rid, 30.0)
    assert q.ping_budget() == session.PING_BUDGET_MAX


@pytest.mark.parametrize("args, mode", [
    (("auto", True, True, True, False, "", "python3"), session.IN_SESSION),
    (("auto", True, True, True, False, "", None), session.IN_SESSION),
    (("exec", True, True, True, False, "", "python3"), session.EXEC),
    (("auto", True, True, False, False, "", None), session.EXEC),
    (("auto", True, True, True, True, "", None), session.EXEC),
    (("auto", True, True, True, False, "the hub's responder failed", None), session.EXEC),
    (("session", True, True, True, True, "", None), session.LOCAL_ONLY),
    (("auto", True, False, True, False, "", None), session.LOCAL_ONLY),
    (("auto", False, True, True, False, "", None), session.OFF),
])
def test_check_mode(args, mode):
    got, why = session.check_mode(*args)
    assert got == mode and why


# ----------------------------------------------------------------------------- agent.run.checks, in session
class R:
    def forwards_now(self):
        return list(self.config.forwards)

    def __init__(self, fwds):
        from agent.core.model import Tunnel
        self.config = Tunnel("t", "127.0.0.1", 22, forwards=tuple(fwds), remote_check_every=1)
        self.loop, self.name = None, "t"
        self.requests = session.Requests()


def in_session_round(checks, r, code):
    """The -R part of one round in session, as the supervisor carries it out: each request's
    line (validated as the supervisor does), its budget, and each answer's verdict. `code`:
    the responder's answer to every check (None: it skipped them)."""
    _, remote_due = checks.plan(r, 1, None, 0)
    sent, reports = [], []
    for q in checks.session_requests(r, remote_due):
        sent.append((q.verb, q.budget, remote.request_line(len(sent) + 1, q.verb, **(q.words or {}))))
        if q.verb == "check":
            words = None if code is None else ["check", str(code), "python3", "127.0.0.1"]
            v = checks.judge_answer(r, q.forward, words)
            reports.append((v.name, v.verdict, v.ok))
    return sent, reports


@pytest.mark.parametrize("code, verdict, ok", [(80, OK, True), (81, REFUSED, False), (84, MISMATCH, False),
                                               (None, remote.ERROR, False)])
def test_a_round_in_session_is_a_ping_then_one_request_per_forward(code, verdict, ok):
    from agent.run import checks as health
    from agent.core.model import Forward
    fwds = [Forward("R", "127.0.0.1", p, "127.0.0.1", 1, check="banner:SSH-") for p in (20022, 20023)]
    sent, reports = in_session_round(health.Checks(None), R(fwds), code)
    assert [v for v, _, _ in sent] == ["ping", "check", "check"]
    assert sent[0][1] == session.PING_BUDGET
    assert sent[1][2].split()[1:5] == [b"check", b"127.0.0.1", b"20022", b"5353482d"]
    assert sent[1][1] == remote.check_budget("127.0.0.1", health.CHECK_TIMEOUT) + session.SLACK
    assert reports == [("R:20022", verdict, ok), ("R:20023", verdict, ok)]


def test_machine_restarts_at_once_on_a_silent_session():
    from agent.core import classify as C, machine as M
    m = M.Machine(M.Policy())
    m.start(0.0)
    m.on_ready(1.0)
    assert m.on_session_silent(5.0, "no answer from the session to its ping request in 3.0s") == [M.Kill(C.HEALTH)]
    assert m.last_heal.startswith("restart: no answer")
    m2 = M.Machine(M.Policy())
    assert m2.on_session_silent(0.0, "x") == []        # not up: nothing to restart


def test_status_says_the_check_mode_and_why():
    from agent.run import state
    doc = {"pid": 1, "version": "x", "updated": 1000.0, "interval": 30, "tunnels": [
        {"name": "hub", "state": "up", "forwards": [], "check_mode": "exec",
         "check_mode_why": "the hub runs no command of ours (forced command or no shell): ssh runs -N"}]}
    text = state.render(doc, now=1001.0)
    assert "hub: remote checks exec (the hub runs no command of ours (forced command" in text
    assert state.public(doc)["tunnels"][0]["check_mode"] == "exec"


def test_hub_picked_ports_sent_before_the_responder_are_recorded(hubs):
    """`port N` lines (ports the hub picked for -R 0:...) come before the responder is started."""
    h = hubs(["python3"], before=b"port 3333\n")
    assert h.ask("ping") == ["pong"]
    pid = h.proc.pid
    names = sorted(os.listdir(h.state))
    assert names == ["rport-2222-%d" % pid, "rport-3333-%d" % pid], names
    with open(os.path.join(h.state, names[1])) as f:
        assert "ports=2222,3333" in f.read()
    assert h.close() == 0
    assert os.listdir(h.state) == []
