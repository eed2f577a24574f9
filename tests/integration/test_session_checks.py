"""In-session checks (issue 14) with real servers and clients: the responder in the tunnel's own session.

- every verdict of the health-checks table through the responder, OpenSSH sshd and dropbear servers,
  ssh and dbclient clients, driven as the supervisor drives it (ready line, program on stdin, requests);
- the agent: a dead session is found by an unanswered request (the server-side session SIGSTOPped);
  a forced-command key falls back (status says exec and why); a healthy tunnel checked every second
  for 30 s logs in once (counted in the server's log), while exec checks log in at every check.
"""

import os
import signal
import time

import pytest

import lab as labmod
from lab import wait_until
from agent.hubside.remote import CLOSED, MISMATCH, NO_ANSWER, OK, REFUSED
from agentrun import Agent, alive
from insession import BANNER, FWD, Session, forward_ok, logins

pytestmark = pytest.mark.integration


def start_server(lab, kind, gen="deb12"):
    """deb12: OpenSSH 9.2 / dropbear 2022.83; deb13: OpenSSH 10.0 / dropbear 2025.89 (tests/support/hubroot.py)."""
    return lab.start_sshd(generation=gen) if kind == "openssh" else lab.start_dropbear(generation=gen)


@pytest.mark.parametrize("gen", ["deb12", "deb13"])
@pytest.mark.parametrize("kind", ["openssh", "dropbear"])
@pytest.mark.parametrize("client", ["ssh", "dbclient"])
def test_every_verdict_through_the_session_responder(lab, kind, client, gen):
    server = start_server(lab, kind, gen)
    svc = lab.start_service(lab.box_ns, 0)
    silent = lab.start_service(lab.srv_ns, 0, banner=b"")     # a listener on the hub that never speaks
    s = Session(lab, server, client, svc.port)
    try:
        wait_until(lambda: lab.probe_from(lab.srv_ns, "127.0.0.1", FWD, timeout=1.0) == BANNER, 10, 0.1, "forward")
        before = logins(server)
        assert s.ask("ping") == ["pong"]
        assert s.check() == OK                                   # the banner through the forward
        assert s.check(banner=None) == OK
        assert s.check(banner="XYZ-") == MISMATCH                # other bytes: a stranger's port
        assert s.check(port=silent.port) == NO_ANSWER            # a stale listener: accepts, never relays
        svc.stop()
        assert s.check(banner=None) == CLOSED                    # box-side target down: accept, close
        svc.start()
        assert s.check() == OK
        assert s.check(port=FWD + 1, banner=None) == REFUSED     # nothing listens
        assert s.ask("count") == ["count", "1"]
        assert logins(server) == before                          # all of it without a new login
        session_pid = s.ready[0]
        s.close()
        wait_until(lambda: not alive(session_pid), 10, 0.1, "the session ends with its stdin")
        wait_until(lambda: not server.session_pids(user_only=True), 10, 0.1, "nothing left on the hub")
        assert not os.listdir(os.path.join(lab.home, ".sshkeep"))
    finally:
        s.close()


def start_agent(lab, server, client="openssh", extra=(), name="t"):
    svc = lab.start_service(lab.box_ns, 0)
    fwd = [("-R", "127.0.0.1:%d:127.0.0.1:%d" % (FWD, svc.port))]
    a = Agent(lab, server, fwd, client=client, name=name,
              extra=("--interval", "2", "--keepalive", "60") + tuple(extra)).start()
    return a, svc


def responder_pids(server):
    """The responder processes (python3 ... -c) under the server's session processes."""
    out = []
    for sp in server.session_pids():
        for pid in labmod.descendants(sp):
            if labmod.cmdline(pid).startswith("python3 -E -S -c"):
                out.append(pid)
    return out


@pytest.mark.parametrize("kind, client, gen", [("openssh", "openssh", "deb12"), ("openssh", "dropbear", "deb12"),
                                               ("dropbear", "openssh", "deb12"), ("dropbear", "dropbear", "deb12"),
                                               ("openssh", "openssh", "deb13")])
def test_dead_session_is_found_by_an_unanswered_request(lab, kind, client, gen):
    """SIGSTOP on the hub: the sshd session process (OpenSSH), or the responder (dropbear's session
    process is root's, so this box could not reclaim it). Keepalive is 60 s: only the unanswered
    request can notice within this test."""
    server = start_server(lab, kind, gen)
    a, _ = start_agent(lab, server, client)
    stopped = []
    try:
        a.wait_up(30)
        a.wait(lambda: a.tunnel()["checks"].get("R:%d" % FWD) == "ok", 15, "first check ok")
        assert a.tunnel()["check_mode"] == "in-session"
        if kind == "openssh":
            targets = [a.tunnel()["session"]["pid"]]
        else:
            targets = wait_until(lambda: responder_pids(server), 5, 0.1, "the responder process")
        for pid in targets:
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        t0 = time.monotonic()
        a.wait(lambda: "no answer from the session" in a.log(), 10, "the unanswered request")
        assert time.monotonic() - t0 < 2 + 3 + 1.5     # one interval + the ping's budget
        a.wait(lambda: a.tunnel()["restarts"] >= 1 and a.tunnel()["state"] == "up", 30, "up again")
        if kind == "dropbear":   # the old session lets go of the port once its client is gone
            for pid in stopped:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass  # already gone with its session (dropbear may end it first)
        wait_until(lambda: forward_ok(lab), 30, 0.2, "forward back")
        a.wait(lambda: a.tunnel()["checks"].get("R:%d" % FWD) == "ok", 20, "checks ok again")
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        a.stop()


def test_forced_command_key_falls_back_and_status_says_why(lab):
    # A restricted key (command="...") never runs our session command: no ready line. The agent must
    # not loop on that for ever: after two watchdog kills it uses -N, and says why in its status.
    # (Also the whole of tests/integration/test_health.py's former test_forced_command_key_falls_back_to_dash_n.)
    path = os.path.join(lab.home, ".ssh", "authorized_keys")
    with open(path) as fh:
        lines = fh.read().splitlines()
    with open(path, "w") as fh:
        fh.write("".join('command="exec sleep 600" %s\n' % l for l in lines if l.strip()))
    server = lab.start_sshd()
    a, _ = start_agent(lab, server, extra=("--connect-timeout", "1"))
    try:
        a.wait(lambda: a.tunnel()["state"] == "up" and a.tunnel()["check_mode"] == "exec", 60, "up, exec mode")
        assert "using -N from now on" in a.log(), a.log()[-3000:]
        assert "forced command" in a.tunnel()["check_mode_why"]
        wait_until(lambda: forward_ok(lab), 10, 0.2, "forward works with -N")
        out = lab.box_run([a.argv[0], a.argv[1], "status", "--state", a.state]).stdout.decode()
        assert "t: remote checks exec (the hub runs no command of ours (forced command" in out, out
    finally:
        a.stop()


@pytest.mark.parametrize("kind, client, gen", [("openssh", "openssh", "deb12"), ("openssh", "dropbear", "deb12"),
                                               ("dropbear", "openssh", "deb12"), ("dropbear", "dropbear", "deb12"),
                                               ("openssh", "openssh", "deb13"), ("dropbear", "dropbear", "deb13")])
def test_no_new_login_while_a_healthy_tunnel_is_checked(lab, kind, client, gen):
    server = start_server(lab, kind, gen)
    a, _ = start_agent(lab, server, client, extra=("--interval", "1"))
    try:
        a.wait_up(30)
        a.wait(lambda: a.tunnel()["checks"].get("R:%d" % FWD) == "ok", 15, "first check ok")
        assert a.tunnel()["check_mode"] == "in-session"
        assert logins(server) == 1
        rounds = set()

        def twenty_rounds():                     # sampled until 20 distinct check rounds were seen
            rounds.add(a.tunnel()["last_check"])
            return len(rounds) >= 20
        wait_until(twenty_rounds, 30, 0.25, "20 check rounds within 30 s")  # checked about every second...
        assert a.tunnel()["health"] == "ok" and a.tunnel()["restarts"] == 0
        assert logins(server) == 1               # ...through the one login of the tunnel
    finally:
        a.stop()


def test_exec_mode_logs_in_for_every_check(lab):
    """The comparison (and proof that the login count above can fail): --check-mode exec."""
    server = lab.start_sshd()
    a, _ = start_agent(lab, server, extra=("--interval", "1", "--check-mode", "exec"))
    try:
        a.wait_up(30)
        a.wait(lambda: a.tunnel()["checks"].get("R:%d" % FWD) == "ok", 15, "first check ok")
        assert a.tunnel()["check_mode"] == "exec"
        first = logins(server)
        wait_until(lambda: logins(server) >= first + 5, 20, 0.2, "five more logins, one per check")
    finally:
        a.stop()
