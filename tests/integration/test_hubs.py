"""Today's hubs (OpenSSH 10 with PerSourcePenalties on by default): a fleet behind one address is
never punished, and the reclaim on each server generation does what it can (docs/hubs.md)."""

import os
import time

import pytest

from agentrun import Agent

pytestmark = pytest.mark.integration

BANNER = b"SVC-READY\r\n"
FLEET = 20


@pytest.mark.parametrize("hub", ["deb13"])
def test_fleet_of_20_behind_one_address_survives_a_hub_restart_unpunished(lab, hub):
    """20 agents in one box namespace (one source address, like boxes behind one NAT) keep a tunnel
    each to the OpenSSH 10 hub; the hub restarts (down 2 s). Every tunnel comes back, the hub's log
    (LogLevel VERBOSE) has no penalty, drop or refusal, and no agent ever saw a refusal."""
    server = lab.start_sshd()
    svc = lab.start_service(lab.box_ns, 0)
    agents = []
    try:
        for i in range(FLEET):
            fwd = [("-R", "127.0.0.1:%d:127.0.0.1:%d" % (21000 + i, svc.port))]
            agents.append(Agent(lab, server, fwd, name="f%d" % i,
                                extra=("--interval", "30", "--spread", "5")).start())
        deadline = time.monotonic() + 90
        for a in agents:
            a.wait_up(max(1.0, deadline - time.monotonic()))
        assert server.penalty_lines() == []
        server.restart(down_for=2.0)
        back = time.monotonic()
        ok = lambda i: lab.probe_from(lab.srv_ns, "127.0.0.1", 21000 + i, 1.0) == BANNER  # noqa: E731
        lab.wait_until(lambda: all(ok(i) for i in range(FLEET)), 90, 0.5, "all 20 forwards back")
        took = time.monotonic() - back
        print("FLEET %s: 20 tunnels back %.1fs after the restart" % (server.version, took))
        assert server.penalty_lines() == [], server.penalty_lines()
        for a in agents:
            # a penalty or MaxStartups drop reads "kex_exchange_identification: Connection closed by
            # remote host"; "read: Connection reset" is the old listener going away with our SYN in
            # its backlog (the lab stops it for the restart), not the hub refusing us
            log = a.log()
            assert "kex_exchange_identification: Connection closed" not in log, log[-2000:]
            assert a.tunnel()["state"] == "up"
    finally:
        for a in agents:
            try:
                a.stop()
            except AssertionError:
                pass


@pytest.mark.parametrize("hub", ["deb13"])
def test_link_watch_pokes_a_live_hub_once_at_most(lab, hub):
    """A login that never becomes ready (a key with a forced command) keeps the agent connecting
    while the hub is up: the stuck-connect probe fires. Without CAP_NET_RAW (bare connects) it stops
    at its first answer: at most one `noauth` in 12 s (before: a connect every 0.25 s, 40+ noauths,
    an active penalty); as root (half-open SYNs) none at all."""
    path = os.path.join(lab.home, ".ssh", "authorized_keys")
    with open(path) as fh:
        lines = fh.read().splitlines()
    with open(path, "w") as fh:
        fh.write("".join('command="exec sleep 600" %s\n' % l for l in lines if l.strip()))
    server = lab.start_sshd()
    svc = lab.start_service(lab.box_ns, 0)
    fwd = [("-R", "127.0.0.1:21999:127.0.0.1:%d" % svc.port)]
    counts = {}
    for raw in (False, True):
        prefix = () if raw else ("setpriv", "--bounding-set=-net_raw", "--inh-caps=-net_raw", "--")
        mark = len(server.penalty_lines())
        a = Agent(lab, server, fwd, name="raw" if raw else "noraw", prefix=prefix,
                  extra=("--connect-timeout", "5", "--no-checks")).start()
        try:
            a.wait(lambda: a.tunnel().get("state") == "connecting", 20, "connecting")
            t0 = time.monotonic()
            lab.wait_until(lambda: time.monotonic() - t0 >= 12, 15, what="12 s of a stuck login")
            assert a.tunnel()["state"] == "connecting"   # still waiting for the ready line
        finally:
            a.stop()
        counts[raw] = server.penalty_lines()[mark:]
    assert len(counts[False]) <= 1 and not [l for l in counts[False] if "activating" in l], counts
    assert counts[True] == [], counts
