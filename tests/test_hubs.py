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
