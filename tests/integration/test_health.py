"""Health checks and healing with real faults: the day ssh is up, login works, and the forward is dead."""

import os
import signal
import time

import pytest

from agentrun import Agent, alive
from hubroot import GENERATIONS

pytestmark = pytest.mark.integration

BANNER = b"SVC-READY\r\n"
RPORT = 20022


def reverse_ok(lab, port=RPORT):
    return lab.probe_from(lab.srv_ns, "127.0.0.1", port, timeout=2) == BANNER


def no_penalties(server):
    """Nothing the agent did earned a PerSourcePenalty or a drop (OpenSSH 10 logs them at VERBOSE)."""
    assert server.penalty_lines() == [], server.penalty_lines()


def start(lab, server, client="openssh", extra=(), forwards=None, svc=None, name="t", prefix=()):
    svc = svc or lab.start_service(lab.box_ns, 0)
    fwd = forwards or [("-R", "127.0.0.1:%d:127.0.0.1:%d" % (RPORT, svc.port))]
    a = Agent(lab, server, fwd, client=client, name=name, prefix=prefix,
              extra=("--interval", "2", "--remote-check-every", "1", "--keepalive", "2") + tuple(extra)).start()
    return a, svc


@pytest.mark.parametrize("hub", GENERATIONS)
@pytest.mark.parametrize("client", ["openssh", "dropbear"])
def test_listener_gone_while_ssh_lives_is_healed(lab, client, hub):
    server = lab.start_sshd()
    a, _ = start(lab, server, client)
    try:
        a.wait_up(30)
        lab.wait_until(lambda: reverse_ok(lab), 10, what="forward up")
        a.wait(lambda: a.tunnel()["checks"].get("R:%d" % RPORT) == "ok", 15, "first remote check ok")
        pid = a.tunnel()["ssh_pid"]
        assert lab.kill_listener(RPORT).returncode == 0
        assert not reverse_ok(lab)          # dead forward...
        assert alive(pid)                   # ...while ssh lives
        t0 = time.monotonic()
        a.wait(lambda: a.tunnel()["restarts"] >= 1, 20, "restart after failed checks")
        lab.wait_until(lambda: reverse_ok(lab), 15, what="forward healed")
        assert "failed checks" in a.tunnel()["last_heal"]
        print("HEAL %s %s listener-gone %.1fs" % (server.version, client, time.monotonic() - t0))
        assert time.monotonic() - t0 < 20
        no_penalties(server)
    finally:
        a.stop()


@pytest.mark.parametrize("hub", GENERATIONS)
@pytest.mark.parametrize("client", ["openssh", "dropbear"])
def test_target_down_is_reported_not_churned(lab, client, hub):
    server = lab.start_sshd()
    a, svc = start(lab, server, client)
    try:
        a.wait_up(30)
        a.wait(lambda: a.tunnel()["checks"].get("R:%d" % RPORT) == "ok", 15, "check ok")
        svc.stop()
        down = time.monotonic()
        a.wait(lambda: a.tunnel()["health"] == "target-down", 15, "target-down")
        print("HEAL %s %s target-down reported in %.1fs, no restart" % (server.version, client,
                                                                        time.monotonic() - down))
        seen = a.tunnel()["last_check"]
        a.wait(lambda: a.tunnel()["last_check"] > seen + 3, 15, "two more check rounds")
        assert a.tunnel()["restarts"] == 0 and a.tunnel()["state"] == "up"
        svc.start()  # same port: the service binds it again
        a.wait(lambda: a.tunnel()["health"] == "ok", 15, "healthy again")
        assert a.tunnel()["restarts"] == 0
        no_penalties(server)
    finally:
        a.stop()


@pytest.mark.parametrize("hub,client", [("deb12", "openssh"), ("deb13", "dropbear")])
def test_blackhole_then_heal_comes_back_quickly(lab, hub, client):
    # No ClientAliveInterval on the server. When the link heals, the box's RST ends the old
    # session on the server (measured), or a reclaim does: either way, back within seconds.
    # Slow (20 s dark): once per server generation, each with one of the clients.
    server = lab.start_sshd()
    a, _ = start(lab, server, client)
    try:
        a.wait_up(30)
        lab.wait_until(lambda: reverse_ok(lab), 10, what="forward up")
        lab.blackhole(True)
        dark = time.monotonic()
        a.wait(lambda: a.tunnel()["state"] != "up", 30, "keepalive notices the outage")
        # keep it dark for 20 s in all (the outage): the box gives up on the old flow,
        # the server (no ClientAliveInterval) keeps the old session and its listener
        lab.wait_until(lambda: time.monotonic() - dark >= 20, 25, what="a 20 s outage")
        lab.blackhole(False)
        healed = time.monotonic()
        lab.wait_until(lambda: reverse_ok(lab), 20, what="forward back after the heal")
        print("HEAL %s %s blackhole-20s %.1fs after the heal" % (server.version, client, time.monotonic() - healed))
        assert time.monotonic() - healed < 10
# the link watch's probes are half-open SYNs (the agent runs as root): no `noauth` on 10.x
        no_penalties(server)
    finally:
        lab.clear_faults()
        a.stop()


@pytest.mark.parametrize("hub", GENERATIONS)
@pytest.mark.parametrize("client", ["openssh", "dropbear"])
def test_stale_listener_after_lost_flow_is_reclaimed(lab, client, hub):
    # The NAT mapping of the tunnel's flow is gone for good: the server never hears of the
    # client again and keeps the old session and its listen port (for hours, without
    # ClientAliveInterval). The new -R fails until sshkeep reclaims the port.
    server = lab.start_sshd()
    a, _ = start(lab, server, client)
    try:
        a.wait_up(30)
        lab.wait_until(lambda: reverse_ok(lab), 10, what="forward up")
        old_sessions = server.session_pids(user_only=True)
        assert old_sessions
        flows = lab.wait_until(lambda: lab.flows(server.port), 5, what="the tunnel's TCP flow")
        tunnel_flow = flows[0]
        for port in flows:   # check execs may have a flow open too: drop them all
            lab.drop_flow(port, server.port)
        lost = time.monotonic()
        a.wait(lambda: "reclaimed stale listener" in a.log(), 60, "reclaim")
        lab.wait_until(lambda: reverse_ok(lab), 15, what="forward back after the reclaim")
        print("HEAL %s %s flow-lost(reclaim) %.1fs" % (server.version, client, time.monotonic() - lost))
        assert time.monotonic() - lost < 45
        assert not any(alive(p) for p in old_sessions)
        assert tunnel_flow not in lab.flows(server.port)
        no_penalties(server)
    finally:
        lab.clear_faults()
        a.stop()


@pytest.mark.parametrize("hub", GENERATIONS)
def test_stale_listener_on_a_dropbear_hub(lab, hub):
    """dropbear as the hub: 2025.89 runs the session as the user, so the reclaim ends it and the
    tunnel heals; 2022.83 keeps it root's, so the agent says why it cannot and waits."""
    server = lab.start_dropbear()
    a, _ = start(lab, server)
    try:
        a.wait_up(30)
        lab.wait_until(lambda: reverse_ok(lab), 10, what="forward up")
        for port in lab.wait_until(lambda: lab.flows(server.port), 5, what="the tunnel's TCP flow"):
            lab.drop_flow(port, server.port)
        lost = time.monotonic()
        if hub == "deb12":
            a.wait(lambda: "only a root tunnel user can end it" in a.log(), 60, "the reason the reclaim cannot work")
            assert not reverse_ok(lab)
            return
        a.wait(lambda: "reclaimed stale listener" in a.log(), 60, "reclaim")
        lab.wait_until(lambda: reverse_ok(lab), 15, what="forward back after the reclaim")
        print("HEAL %s openssh flow-lost(reclaim) %.1fs" % (server.version, time.monotonic() - lost))
    finally:
        lab.clear_faults()
        a.stop()


@pytest.mark.parametrize("mode", ["exec", "auto"])
def test_lost_flow_is_found_by_the_check_not_by_keepalive(lab, mode):
    # Keepalive 60 s x 3 cannot notice within this test: the remote check must. exec: the old
    # session's listener still accepts on the server but relays nothing; the target's learned
    # greeting ("SVC-") is what tells that apart from a healthy, silent forward. in-session (auto):
    # the check request itself goes unanswered, which restarts the tunnel at once.
    server = lab.start_sshd()
    a, _ = start(lab, server, extra=("--keepalive", "60", "--check-mode", mode))
    try:
        a.wait_up(30)
        lab.wait_until(lambda: reverse_ok(lab), 10, what="forward up")
        a.wait(lambda: a.tunnel()["checks"].get("R:%d" % RPORT) == "ok", 15, "first remote check ok")
        assert a.tunnel()["check_mode"] == ("exec" if mode == "exec" else "in-session")
        assert "greets with 'SVC-'" in a.log()
        for port in lab.wait_until(lambda: lab.flows(server.port), 5, what="the tunnel's TCP flow"):
            lab.drop_flow(port, server.port)
        lost = time.monotonic()
        if mode == "exec":
            a.wait(lambda: "failed checks" in (a.tunnel()["last_heal"] or ""), 30, "restart after failed checks")
        else:
            a.wait(lambda: "no answer from the session" in a.log(), 15, "the unanswered request")
            a.wait(lambda: "reclaimed stale listener" in a.log(), 15, "the reclaim")
        lab.wait_until(lambda: reverse_ok(lab), 20, what="forward back")
        took = time.monotonic() - lost
        print("lost flow (%s checks): forward back %.1fs after the loss" % (mode, took))
        assert took < 30
        if mode == "exec":
            assert "no-answer" in a.log()
        else:
            # one interval (2 s) + the ping's 3 s budget + reconnect and reclaim: not two failed checks
            assert took < 2 + 3 + 4, took
            assert "failed checks" not in a.log()
    finally:
        lab.clear_faults()
        a.stop()


def test_local_forward_checks_and_localhost(lab):
    server = lab.start_sshd()
    svc = lab.start_service(lab.srv_ns, 0)   # a service on the server, reached through -L
    fwd = [("-L", "localhost:18080:127.0.0.1:%d" % svc.port), ("-D", "127.0.0.1:18081")]
    a, _ = start(lab, server, forwards=fwd, svc=svc)
    try:
        a.wait_up(30)
        a.wait(lambda: a.tunnel()["checks"].get("L:18080", "").startswith("ok"), 15, "L check ok")
        a.wait(lambda: a.tunnel()["checks"].get("D:18081", "").startswith("ok"), 15, "D check ok")
        svc.stop()   # the far end of the -L goes away: accept-then-close on the box
        a.wait(lambda: a.tunnel()["checks"].get("L:18080") == "closed", 15, "L check closed")
    finally:
        a.stop()


def test_shell_metacharacters_never_reach_a_shell(lab):
    server = lab.start_sshd()
    marker = os.path.join(lab.dir, "pwned")
    a, _ = start(lab, server, name="x$(touch%s)y;touch%s" % (marker, marker))
    try:
        a.wait_up(30)
        a.wait(lambda: a.tunnel()["checks"].get("R:%d" % RPORT) == "ok", 15, "a remote check ran")
        assert not os.path.exists(marker)
    finally:
        a.stop()
    assert not os.path.exists(marker)


@pytest.mark.parametrize("mode", ["exec", "auto"])
def test_checks_bounded_when_server_accepts_but_never_answers(lab, mode):
    server = lab.start_sshd()
    a, _ = start(lab, server, extra=("--connect-timeout", "3", "--check-mode", mode))
    try:
        a.wait_up(30)
        a.wait(lambda: a.tunnel()["checks"].get("R:%d" % RPORT) == "ok", 15, "check ok")
        os.kill(server.pid, signal.SIGSTOP)   # the listener accepts (kernel backlog) but never speaks SSH
        try:
            if mode == "exec":
                a.wait(lambda: a.tunnel()["checks"].get("R:%d" % RPORT) == "unreachable", 30,
                       "the exec check gives up in bounded time")
            else:   # in the session: no new login needed, the checks go on through the open session
                seen = a.tunnel()["last_check"]
                a.wait(lambda: a.tunnel()["last_check"] > seen + 4, 15, "more check rounds")
                assert a.tunnel()["checks"].get("R:%d" % RPORT) == "ok"
                assert a.tunnel()["restarts"] == 0
            assert a.tunnel()["state"] == "up"   # "cannot reach the server" is not "forward dead"
        finally:
            os.kill(server.pid, signal.SIGCONT)
    finally:
        a.stop()


@pytest.mark.parametrize("client", ["openssh", "dropbear"])
def test_inband_loop_check(lab, client):
    server = lab.start_sshd()
    a, _ = start(lab, server, client, extra=("--loop-port", "20099", "--remote-check-every", "4"))
    try:
        a.wait_up(30)
        a.wait(lambda: a.tunnel()["checks"].get("loop") == "ok-data", 15, "loop check ok")
        names = [f["name"] for f in a.tunnel()["forwards"]]
        assert "loop-r" in names and "loop-l" in names
        lab.kill_listener(20099)       # the loop's server side is cut while ssh lives
        a.wait(lambda: a.tunnel()["restarts"] >= 1, 20, "restart after the loop check failed")
        a.wait(lambda: a.tunnel()["checks"].get("loop") == "ok-data", 20, "loop check ok again")
        lab.wait_until(lambda: reverse_ok(lab), 10, what="data forward up")
    finally:
        a.stop()


@pytest.mark.parametrize("hub,fault,raw", [("deb12", "reject", True), ("deb13", "reject", True),
                                           ("deb13", "drop", True), ("deb13", "drop", False)])
def test_fast_return_when_the_server_comes_back_during_a_long_backoff(lab, hub, fault, raw):
    """raw=False: the agent without CAP_NET_RAW falls back to bare connects, probes only while the
    host does not answer, and its one probe that gets through is the one `noauth` it costs."""
    server = lab.start_sshd()
    prefix = () if raw else ("setpriv", "--bounding-set=-net_raw", "--inh-caps=-net_raw", "--")
    a, _ = start(lab, server, extra=("--max-backoff", "60", "--connect-timeout", "2"), prefix=prefix)
    # New connections to sshd are refused (RST) or go unanswered (SYN dropped) while the fault
    # lasts; sessions are killed. The probes are half-open SYNs (root): the hub never sees them.
    refuse = ["INPUT", "-p", "tcp", "--dport", str(server.port), "--syn", "-j"] + \
        (["REJECT", "--reject-with", "tcp-reset"] if fault == "reject" else ["DROP"])
    try:
        a.wait_up(30)
        lab._rule(lab.srv_ns, refuse, True)
        server.kill_sessions()
        # refused, refused, ...: the backoff grows past what we are willing to wait
        a.wait(lambda: (a.tunnel()["state"] == "backoff"
                        and (a.status()["tunnels"][0].get("next_attempt_in") or 0) > 3.5), 40,
               "a backoff delay longer than 3.5 s")
        lab._rule(lab.srv_ns, refuse, False)
        t0 = time.monotonic()
        a.wait(lambda: a.tunnel()["state"] == "up", 15, "up again")
        took = time.monotonic() - t0
        assert took < 3.5, took          # the TCP probe (every 1.5 s) cut the backoff short
        assert "answers again; reconnecting now" in a.log()
        print("HEAL %s openssh %s-backoff%s %.1fs after the server answers" % (
            server.version, fault, "" if raw else "-no-raw", took))
        if raw:
            no_penalties(server)
        else:  # the limit of the fallback (docs/hubs.md): one deferred noauth, never more
            lines = server.penalty_lines()
            print("PENALTY-LINES no-raw: %r" % lines)
            assert len(lines) <= 1 and all("deferred penalty of 1 seconds" in l for l in lines), lines
    finally:
        lab.clear_faults()
        a.stop()


def test_several_reverse_forwards_one_exec_each_judged(lab):
    server = lab.start_sshd()
    svc = lab.start_service(lab.box_ns, 0)
    fwd = [("-R", "127.0.0.1:%d:127.0.0.1:%d" % (port, svc.port)) for port in (20022, 20023, 20024)]
    a, _ = start(lab, server, forwards=fwd, svc=svc)
    try:
        a.wait_up(30)
        a.wait(lambda: all(a.tunnel()["checks"].get("R:%d" % p) == "ok" for p in (20022, 20023, 20024)),
               15, "three remote checks ok")
        lab.kill_listener(20023)
        a.wait(lambda: a.tunnel()["restarts"] >= 1, 20, "restart after R:20023 failed")
        assert "R:20023" in a.tunnel()["last_heal"]
        for p in (20022, 20023, 20024):
            lab.wait_until(lambda: reverse_ok(lab, p), 15, what="forward %d back" % p)
    finally:
        a.stop()
