"""agent.run.checks's decisions for -R forwards, with the ssh exec replaced by a recorded job.

The box-side targets are real sockets on 127.0.0.1 (tests/support/peers.py: Peer); the server's answer
is what the remote one-liner would print. No ssh, no clock tricks. The round is carried out
here as the supervisor does: the plan's exec, then the judge's verdicts.
"""

import pytest

from agent.run import clients, checks as health, probe

from agent.hubside import remote
from agent.core.model import Forward, Tunnel
from agent.core.timing import recheck_delay
from peers import Peer

OSSH = clients.ClientInfo("openssh", "/usr/bin/ssh", "9.2p1")


class Log:
    def __init__(self):
        self.lines = []

    def info(self, name, msg):
        self.lines.append(msg)

    warning = info


class Job:
    def __init__(self, code):
        self.returncode = code
        self.out = ["%s %d python3 127.0.0.1" % (remote.CHECK_MARKER, code)]
        self.err = []
        self.timed_out = False


class Runner:
    def __init__(self, fwd):
        self.config = self.tunnel = Tunnel("t", "127.0.0.1", 22, forwards=(fwd,), remote_check_every=1)
        self.info, self.address, self.loop = OSSH, ("127.0.0.1", 22), None
        self.name = "t"

    def forwards_now(self):  # agent.run.tunnel.Runner's: no hub-picked ports here
        return list(self.config.forwards)


class Round:
    """One round's -R verdicts and the exec's argv; `answer` is the server's CHECK_* code."""

    def __init__(self, checks, answer, r, rnd=1):
        _, remote_due = checks.plan(r, rnd, None, 0)
        bad, plan = checks.exec_check(r, remote_due)
        self.argvs = [plan.argv] if plan else []
        verdicts = bad + (checks.judge_exec(r, plan, Job(answer)) if plan else [])
        self.reports = [(v.name, v.verdict, v.ok) for v in verdicts]


@pytest.fixture
def peers():
    made = []

    def make(behaviour):
        p = Peer(behaviour)
        made.append(p)
        return p
    yield make
    for p in made:
        p.close()


def round_(answer, r, checks, rnd=1):
    return Round(checks, answer, r, rnd), checks.log


def greetings(checks):
    return checks.memory("t").greetings


def test_greeting_prefix():
    assert probe.greeting_prefix(b"SSH-2.0-OpenSSH_9.2\r\n") == b"SSH-"
    assert probe.greeting_prefix(b"220 mail ESMTP") == b"220"
    assert probe.greeting_prefix(b"+OK") == b"+OK"
    assert probe.greeting_prefix(b"\x00\x01binary") is None
    assert probe.greeting_prefix(b"ab") is None and probe.greeting_prefix(b"") is None


def test_greeting_is_learned_and_asked_of_the_server(peers):
    svc = peers("send:SSH-2.0-test\r\n")
    c = health.Checks(Log())
    r = Runner(Forward("R", "127.0.0.1", 20022, "127.0.0.1", svc.port))
    sup, log = round_(remote.CHECK_OK, r, c)
    assert greetings(c) == {20022: "SSH-"}
    assert "SSH-".encode().hex() in " ".join(sup.argvs[0])   # the one-liner waits for it
    assert sup.reports == [("R:20022", remote.OK, True)]
    assert any("greets with 'SSH-'" in line for line in log.lines)


def test_stale_listener_silent_while_target_greets_is_a_failure(peers):
    # The old session's listener accepts on the server but relays nothing: a bare connect
    # would pass; with the learned greeting it is a failed check.
    svc = peers("send:SSH-2.0-test\r\n")
    c = health.Checks(Log())
    r = Runner(Forward("R", "127.0.0.1", 20022, "127.0.0.1", svc.port))
    sup, _ = round_(remote.CHECK_NO_ANSWER, r, c)
    assert sup.reports == [("R:20022", remote.NO_ANSWER, False)]
    assert greetings(c) == {20022: "SSH-"}


def test_silent_target_keeps_plain_connect(peers):
    svc = peers("silent")
    c = health.Checks(Log())
    r = Runner(Forward("R", "127.0.0.1", 20022, "127.0.0.1", svc.port))
    sup, _ = round_(remote.CHECK_OK, r, c)
    assert greetings(c) == {20022: None}
    assert "SSH-".encode().hex() not in " ".join(sup.argvs[0])   # no banner asked for
    assert sup.reports == [("R:20022", remote.OK, True)]


def test_target_that_stopped_greeting_is_relearned_not_failed(peers):
    svc = peers("silent")
    c = health.Checks(Log())
    r = Runner(Forward("R", "127.0.0.1", 20022, "127.0.0.1", svc.port))
    greetings(c)[20022] = "SSH-"          # learned earlier, then the service changed
    sup, _ = round_(remote.CHECK_NO_ANSWER, r, c)
    assert sup.reports == [("R:20022", "relearn", None)]
    assert 20022 not in greetings(c)


def test_target_down_is_not_learned_and_not_a_tunnel_failure(peers):
    svc = peers("silent")
    port = svc.port
    svc.close()
    c = health.Checks(Log())
    r = Runner(Forward("R", "127.0.0.1", 20022, "127.0.0.1", port))
    greetings(c)[20022] = "SSH-"
    sup, _ = round_(remote.CHECK_NO_ANSWER, r, c)
    assert sup.reports == [("R:20022", health.TARGET_DOWN, None)]
    sup, _ = round_(remote.CHECK_OK, r, c)
    assert greetings(c) == {20022: None}  # down: bare connect for now...
    svc = peers("send:SSH-2.0-back\r\n")
    r = Runner(Forward("R", "127.0.0.1", 20022, "127.0.0.1", svc.port))
    sup, _ = round_(remote.CHECK_OK, r, c, rnd=10)
    assert greetings(c) == {20022: "SSH-"}  # ...asked again on the 10th round


def test_configured_banner_is_not_replaced(peers):
    svc = peers("send:SSH-2.0-test\r\n")
    c = health.Checks(Log())
    r = Runner(Forward("R", "127.0.0.1", 20022, "127.0.0.1", svc.port, check="banner:SSH-2.0"))
    sup, _ = round_(remote.CHECK_NO_ANSWER, r, c)
    assert greetings(c) == {}
    assert sup.reports == [("R:20022", remote.NO_ANSWER, False)]


@pytest.mark.parametrize("interval,expect", [(30, 6.0), (5, 1.0), (2, 1.0), (0.5, 0.5)])
def test_recheck_delay(interval, expect):
    assert recheck_delay(interval) == expect
