"""The supervisor's loop with a fake clock, fake ssh children, fake exec jobs and a fake prober.

No processes, no sockets, no sleeping: the fake selector moves the clock to the next thing that
happens (a deadline of the agent, or a line or exit of a fake child), so minutes of supervision
run in milliseconds. Each test pins one decision of agent.core.machine as the loop carries it
out (backoff, failover and failback, the -N fallback, the recheck, the mute responder).
"""

import pytest

from agent.core import machine
from agent.core.model import Forward, Settings, Tunnel
from agent.hubside import remote
from agent.run import checks as checks_mod
from agent.run import clients, probe
from agent.run.supervisor import Supervisor

OSSH = clients.ClientInfo("openssh", "/usr/bin/ssh", "9.2p1")
T0 = 1000.0


class World:
    """The fake clock and every fake child's pipes (fds are plain numbers here)."""

    def __init__(self):
        self.now = T0
        self.children = []
        self.jobs = []
        self.next_fd = 100
        self.owners = {}            # fd -> FakeChild

    def clock(self):
        return self.now

    def fd(self, child):
        self.next_fd += 1
        self.owners[self.next_fd] = child
        return self.next_fd

    def next_event(self):
        times = [c.next_event() for c in self.children]
        return min([t for t in times if t is not None] or [None], key=lambda t: t or 0) if any(
            t is not None for t in times) else None


class Key:
    def __init__(self, fd):
        self.fd = fd


class FakeSelector:
    def __init__(self, world):
        self.world = world
        self.watched = set()

    def register(self, fd, events, data):
        self.watched.add(fd)

    def unregister(self, fd):
        self.watched.remove(fd)

    def select(self, timeout):
        w = self.world
        ready = [fd for fd in sorted(self.watched) if fd in w.owners and w.owners[fd].readable(fd)]
        if not ready:
            until = w.now + max(timeout, 0.001)
            event = w.next_event()
            w.now = min(until, event) if event is not None and event > w.now else until
            ready = [fd for fd in sorted(self.watched) if fd in w.owners and w.owners[fd].readable(fd)]
        return [(Key(fd), 1) for fd in ready]


class FakeChild:
    """An ssh stand-in. `script`: [(delay after start, "out"|"err", line)] and an exit:
    ("exit", delay, returncode) or None (runs until stopped)."""

    def __init__(self, world, argv, lines=(), exit=None, pid=None):
        self.world, self.argv = world, list(argv)
        self.lines = [(world.now + d, where, text) for d, where, text in lines]
        self.exit_at = None if exit is None else world.now + exit[0]
        self.exit_rc = None if exit is None else exit[1]
        self.pid = pid or 4000 + len(world.children)
        self.started_at = world.now
        self.term_sent = None
        self.returncode = None
        self.spawn_error = ""
        self.sent = []
        self.stderr_tail, self.stdout_tail = [], []
        self.out_fd, self.err_fd = world.fd(self), world.fd(self)
        self.open = {self.out_fd, self.err_fd}
        world.children.append(self)

    def next_event(self):
        times = [t for t, _, _ in self.lines] + ([self.exit_at] if self.exit_at is not None else [])
        later = [t for t in times if t > self.world.now]
        return min(later) if later and self.returncode is None else None

    def start(self):
        return True

    def fds(self):
        return sorted(self.open)

    def is_stderr(self, fd):
        return fd == self.err_fd

    def _due(self, fd):
        where = "err" if fd == self.err_fd else "out"
        return [x for x in self.lines if x[0] <= self.world.now and x[1] == where]

    def readable(self, fd):
        return fd in self.open and (bool(self._due(fd)) or self.poll() is not None)

    def read(self, fd):
        due = self._due(fd)
        for x in due:
            self.lines.remove(x)
        text = [x[2] for x in due]
        (self.stderr_tail if fd == self.err_fd else self.stdout_tail).extend(text)
        return text, self.poll() is not None

    def close_fd(self, fd):
        self.open.discard(fd)

    def poll(self):
        if self.returncode is None and self.exit_at is not None and self.world.now >= self.exit_at:
            self.returncode = self.exit_rc
        return self.returncode

    def terminate(self):
        if self.term_sent is None:
            self.term_sent = self.world.now
            self.lines = []
            if self.exit_at is None or self.exit_at > self.world.now + 0.01:
                self.exit_at, self.exit_rc = self.world.now + 0.01, -15

    def escalate(self, term_timeout):
        pass

    def stop(self, term_timeout=2.0, kill_timeout=2.0):
        self.terminate()
        self.exit_at = self.world.now
        return self.poll()

    def close(self):
        self.open.clear()

    def close_stdin(self):
        pass

    def send(self, data):
        self.sent.append(data)

    def send_nowait(self, data):
        self.sent.append(data)
        return True

    def uptime(self):
        return self.world.now - self.started_at

    def cmdline_record(self):
        return {"pid": self.pid, "cmdline": self.argv, "starttime": "1"}


class FakeJob:
    """An ssh exec stand-in: done at once with what `answer(argv)` says: (returncode, out lines)."""

    def __init__(self, world, answer, argv, env, timeout, clock):
        self.world, self.argv, self.timeout = world, argv, timeout
        self.returncode, self.out = answer(argv)
        self.err, self.timed_out, self.deadline = [], False, world.now + timeout
        self.child = self
        world.jobs.append(self)

    def start(self):
        return True

    def fds(self):
        return []

    def check(self):
        return True

    def terminate(self):
        pass

    def hurry(self, within):
        self.deadline = min(self.deadline, self.world.now + within)

    def stop(self, **kw):
        pass


class FakeProber:
    """Which addresses answer a TCP probe (a function of the time), and what local probes find."""

    def __init__(self, world, answers=lambda host, now: False, local=probe.OK_SILENT):
        self.world, self.answers, self.local, self.calls = world, answers, local, []

    def half_open_available(self):
        return False

    def probe_syn(self, host, port, timeout=0.5):
        return None

    def probe_tcp(self, host, port, timeout=2.0):
        self.calls.append((self.world.now, host, port))
        return self.answers(host, self.world.now)

    def probe_local(self, host, port, timeout=2.0, banner=None, grace=None):
        self.calls.append((self.world.now, host, port))
        verdict = self.local(self.world.now) if callable(self.local) else self.local
        return probe.ProbeResult(verdict, host, verdict, 0.0)


class Log:
    debug_on = False

    def __init__(self):
        self.lines = []

    def _add(level):
        def add(self, name, msg):
            self.lines.append((level, name, msg))
        return add

    info, warning, error, debug = _add("info"), _add("warning"), _add("error"), _add("debug")

    def said(self, text):
        return [m for lvl, _, m in self.lines if text in m and lvl != "debug"]


def ready_line(responder=""):
    return "%s 4242 ok 987654%s" % (remote.READY_MARKER, " " + responder if responder else "")


class Harness:
    """A supervisor of one tunnel; `behave(argv, world)` -> FakeChild for each spawn."""

    def __init__(self, tmp_path, tunnel, behave, answers=lambda host, now: False, local=probe.OK_SILENT,
                 checks=False, job_answer=None):
        self.world = w = World()
        self.log = Log()
        self.prober = FakeProber(w, answers, local)
        settings = Settings(tunnels=(tunnel,), state=str(tmp_path / "s.json"), pidfile=str(tmp_path / "pid"),
                            box_id_file=str(tmp_path / "box-id"))
        self.sup = Supervisor(settings, self.log, clock=w.clock, wall=lambda: 1.7e9 + w.now,
                              detect=lambda path, client: OSSH,
                              checks=checks_mod.Checks(self.log, prober=self.prober) if checks else None,
                              spawner=lambda argv, env, clock: behave(argv, w),
                              job=lambda argv, env, timeout, clock: FakeJob(w, job_answer, argv, env, timeout, clock),
                              prober=self.prober, selector=lambda: FakeSelector(w))
        self.sup.prepare()
        self.sup.start()

    def run_until(self, cond, limit=600.0):
        """Turns of the loop until cond() (fake seconds from start at most `limit`)."""
        while not cond():
            assert self.world.now - T0 < limit, "not within %.0f fake seconds" % limit
            self.sup.turn()

    def run_for(self, seconds):
        end = self.world.now + seconds
        while self.world.now < end:
            self.sup.turn()

    @property
    def m(self):
        return self.sup.runners[0].machine

    def spawns(self):
        return [(c.started_at - T0, c) for c in self.world.children]


def tunnel(**kw):
    kw.setdefault("forwards", (Forward("R", "127.0.0.1", 20022, "127.0.0.1", 22, check="none"),))
    kw.setdefault("connect_timeout", 1)
    kw.setdefault("max_backoff", 60)
    return Tunnel("t", "hub", 22, **kw)


def test_a_session_that_dies_before_ready_backs_off(tmp_path):
    def behave(argv, w):
        return FakeChild(w, argv, [(0.05, "err", "Connection closed by 10.0.0.2 port 22")], exit=(0.05, 255))
    h = Harness(tmp_path, tunnel(), behave)
    h.run_until(lambda: len(h.world.children) >= 6)
    times = [t for t, _ in h.spawns()]
    gaps = [b - a for a, b in zip(times, times[1:])]
    # 0, 1, 2, 4, 8 s (jittered by a quarter): growing, not a tight loop
    assert gaps[0] < 0.5 and 0.7 < gaps[1] < 1.4 and gaps[3] > 2.9 and gaps[4] > 5.9, gaps
    h.run_for(0.2)
    assert h.m.last_error.startswith("closed-by-server") and h.m.state == machine.BACKOFF
    assert h.log.said("retrying in")


def test_failover_after_n_failed_connects_and_failback_when_the_primary_answers(tmp_path):
    back_at = T0 + 100.0

    def behave(argv, w):
        if "alt" in argv or w.now >= back_at:
            return FakeChild(w, argv, [(0.1, "out", ready_line())])
        return FakeChild(w, argv, [(0.05, "err", "ssh: connect to host hub port 22: Connection refused")],
                         exit=(0.05, 255))
    t = tunnel(alternates=(("alt", 2222),), failover_after=3, interval=30)
    h = Harness(tmp_path, t, behave, answers=lambda host, now: host == "alt" or now >= back_at)
    h.run_until(lambda: h.m.state == machine.UP)
    hosts = ["alt" if "alt" in c.argv else "hub" for c in h.world.children]
    assert hosts == ["hub", "hub", "hub", "alt"], hosts
    assert h.log.said("failover: hub:22 failed 3 times, trying alt:2222")
    assert h.sup.state_doc()["tunnels"][0]["server"] == "alt:2222"
    # on the alternate, the primary is asked once per interval; it answers from back_at on
    h.run_until(lambda: h.sup.runners[0].address == ("hub", 22) and h.m.state == machine.UP)
    assert h.log.said("primary hub:22 answers again: moving back from alt:2222")
    asked = [t for t, host, _ in h.prober.calls if host == "hub"]
    assert asked and all(b - a >= 29.9 for a, b in zip(asked, asked[1:])), asked
    assert back_at <= asked[-1] < back_at + 31
    assert h.m.last_error.startswith("connection-refused")   # a requested reconnect is no error


def test_no_ready_line_twice_falls_back_to_dash_n(tmp_path):
    def behave(argv, w):
        return FakeChild(w, argv)   # logs in, never prints our ready line
    h = Harness(tmp_path, tunnel(), behave)
    h.run_until(lambda: h.m.state == machine.UP)
    argvs = [c.argv for c in h.world.children]
    assert len(argvs) == 3 and "-N" not in argvs[0] and "-N" not in argvs[1] and "-N" in argvs[2]
    assert len(h.log.said("using -N from now on")) == 1
    assert h.sup.state_doc()["tunnels"][0]["check_mode"] == "off"
    # the watchdog fired at connect_timeout * 2 + 5; -N is up after the settle time
    assert h.spawns()[1][0] >= 7.0


def test_a_forced_command_that_ends_the_session_counts_like_a_watchdog(tmp_path):
    def behave(argv, w):
        if "-N" in argv:
            return FakeChild(w, argv)
        return FakeChild(w, argv, [(0.05, "out", "tunnels only")], exit=(0.05, 0))
    h = Harness(tmp_path, tunnel(), behave)
    h.run_until(lambda: h.m.state == machine.UP)
    assert ["-N" in c.argv for c in h.world.children] == [False, False, True]


def test_a_failed_check_is_rechecked_after_recheck_delay_not_an_interval(tmp_path):
    def behave(argv, w):
        return FakeChild(w, argv, [(0.1, "out", ready_line())])
    fwd = Forward("L", "127.0.0.1", 31000, "127.0.0.1", 22)
    h = Harness(tmp_path, tunnel(forwards=(fwd,), interval=30), behave, local=probe.REFUSED, checks=True)
    h.run_until(lambda: len(h.world.children) >= 2)
    up = h.world.children[0].started_at + 0.1
    checked = [t - up for t, host, port in h.prober.calls if port == 31000]
    # first check 1 s after up; the failure is confirmed recheck_delay(30) = 6 s later, then restart
    assert len(checked) == 2 and abs(checked[0] - 1.0) < 0.05 and abs(checked[1] - 7.0) < 0.05, checked
    assert h.log.said("stopping ssh pid %d (health-check-failed)" % h.world.children[0].pid)


def test_a_passing_check_waits_a_whole_interval(tmp_path):
    def behave(argv, w):
        return FakeChild(w, argv, [(0.1, "out", ready_line())])
    fwd = Forward("L", "127.0.0.1", 31000, "127.0.0.1", 22)
    h = Harness(tmp_path, tunnel(forwards=(fwd,), interval=30), behave, checks=True)
    h.run_for(65)
    up = h.world.children[0].started_at + 0.1
    assert [round(t - up, 1) for t, _, _ in h.prober.calls] == [1.0, 31.0, 61.0]


def test_a_mute_responder_is_counted_and_exec_checks_take_over(tmp_path):
    def behave(argv, w):
        return FakeChild(w, argv, [(0.1, "out", ready_line("python3"))])   # never answers a request
    fwd = Forward("R", "127.0.0.1", 20022, "127.0.0.1", 22, check="connect")
    t = tunnel(forwards=(fwd,), interval=30)
    h = Harness(tmp_path, t, behave, checks=True,
                job_answer=lambda argv: (remote.CHECK_OK, ["%s %d python3 127.0.0.1" % (remote.CHECK_MARKER,
                                                                                          remote.CHECK_OK)]))
    h.run_until(lambda: h.world.jobs)
    first, second, third = h.world.children
    for s in (first, second):   # the responder's program, then a ping and a check, never answered
        assert s.sent[0].startswith(b"sshkeep-responder\n") and s.sent[1].endswith(b" ping\n"), s.sent
    assert len(h.log.said("no answer from the session to its ping request")) == 2
    assert h.log.said("the hub's python3 responder never answered (2 sessions): exec checks from now on")
    assert third.sent == [] and h.world.jobs   # no responder started: the third session's check is an exec
    assert remote.CHECK_MARKER in h.world.jobs[0].argv[-1]
    h.run_until(lambda: h.m.verdicts.get("R:20022") == "ok")
    assert h.sup.state_doc()["tunnels"][0]["check_mode"] == "exec"


def test_an_answer_resets_the_mute_count(tmp_path):
    m = machine.Machine(machine.Policy())
    m.start(0.0)
    m.on_ready(1.0)
    assert m.on_silent(5.0, "x", 0, "python3")[0] == machine.Silent("x", "")
    m.on_answered()
    m.start(6.0)
    assert m.on_silent(9.0, "x", 0, "python3")[0] == machine.Silent("x", "")   # one in a row again
    assert m.on_silent(12.0, "x", 0, "python3")[0].broken.startswith("the hub's python3 responder never")


@pytest.mark.parametrize("reason", ["connect-timeout", "network-unreachable"])
def test_a_server_probe_during_a_network_backoff_cuts_it_short(tmp_path, reason):
    back_at = T0 + 20.0
    line = {"connect-timeout": "ssh: connect to host hub port 22: Connection timed out",
            "network-unreachable": "ssh: connect to host hub port 22: Network is unreachable"}[reason]

    def behave(argv, w):
        if w.now >= back_at:
            return FakeChild(w, argv, [(0.1, "out", ready_line())])
        return FakeChild(w, argv, [(0.05, "err", line)], exit=(0.05, 255))
    h = Harness(tmp_path, tunnel(max_backoff=60), behave, answers=lambda host, now: now >= back_at)
    h.run_until(lambda: h.m.state == machine.UP)
    # probed every 0.25 s (jittered) during the backoff; up within a probe period of the server's return
    assert h.world.now - back_at < 2.0, h.world.now - back_at
    assert h.log.said("server hub:22 answers again; reconnecting now")
    answered = [t for t, _, _ in h.prober.calls if t >= back_at]
    assert len(answered) == 1   # a live server is never poked twice


def test_a_server_that_answers_the_first_probe_is_not_probed_again_in_that_backoff(tmp_path):
    # ssh times out though the server's port answers (a path problem past the TCP handshake):
    # each backoff probes once; the backoff itself is not cut short (the server never failed a probe).
    def behave(argv, w):
        return FakeChild(w, argv, [(0.05, "err", "ssh: connect to host hub port 22: Connection timed out")],
                         exit=(0.05, 255))
    h = Harness(tmp_path, tunnel(max_backoff=60), behave, answers=lambda host, now: True)
    h.run_until(lambda: len(h.world.children) >= 7)
    starts = [c.started_at for c in h.world.children]
    probes = [t for t, _, _ in h.prober.calls]
    for a, b in zip(starts[1:], starts[2:]):   # the backoffs of 1, 2, 4 ... 16 s (the loop turns within those)
        assert len([t for t in probes if a < t < b]) == 1, (a, b, probes)
    assert not h.log.said("answers again")


def test_a_connect_stuck_in_an_outage_is_restarted_when_the_server_answers_again(tmp_path):
    # The loop looks at a connect on its next turn after STUCK_CONNECT (here the 5 s turn),
    # then probes every 0.25 s until the server answers.
    back_at = T0 + 6.0

    def behave(argv, w):   # the first connect hangs (its SYN went into the outage); later ones work
        return FakeChild(w, argv, [] if not w.children else [(0.1, "out", ready_line())])
    h = Harness(tmp_path, tunnel(connect_timeout=2), behave, answers=lambda host, now: now >= back_at)
    h.run_until(lambda: h.m.state == machine.UP)
    assert h.log.said("server hub:22 answers again while ssh is still stuck connecting; starting a fresh connect")
    second = h.world.children[1].started_at
    assert back_at <= second < back_at + 0.5, second - T0    # not the watchdog's 9 s
    assert min(t for t, _, _ in h.prober.calls) >= T0 + 2.0   # probed only once the connect took 2 s
    assert not h.m.last_error   # a fresh connect we asked for is no error


def test_a_key_gone_while_running_is_reported_on_this_box_and_ssh_is_not_spawned(tmp_path):
    # Issue 23: a key deleted (or made unreadable) under a running agent was reported as the server
    # refusing it ("check ... the server's authorized_keys"): the wrong machine. Checked before each
    # connect now: key-unusable, naming the file on this box, and no ssh started without it.
    key = tmp_path / "id_ed25519"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    key.chmod(0o600)

    def behave(argv, w):  # what OpenSSH does without its key: tries none, is refused
        return FakeChild(w, argv, [(1.0, "err", "box@hub: Permission denied (publickey).")], exit=(1.0, 255))
    h = Harness(tmp_path, tunnel(identity=str(key)), behave)
    h.run_until(lambda: len(h.world.children) >= 1)
    key.unlink()
    h.run_for(200)
    assert len(h.world.children) == 1, [c.argv for _, c in h.spawns()]
    assert h.m.last_error.startswith("key-unusable"), h.m.last_error
    said = h.log.said("the key %s on this box is missing or unreadable" % key)
    assert said and "authorized_keys" not in said[0], h.log.lines
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")  # put back: the tunnel comes back by itself
    h.run_until(lambda: len(h.world.children) >= 2, limit=400)
