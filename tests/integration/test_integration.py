"""The core agent with real parts: the built pyz under the python3-light guard, in a box namespace,
keeping a reverse tunnel to a real OpenSSH sshd or dropbear server, with both clients."""

import os
import time

import pytest

from agentrun import Agent, alive, cpu_seconds
from hubroot import GENERATIONS

pytestmark = pytest.mark.integration

BANNER = b"SVC-READY\r\n"
RPORT = 20022


def reverse_ok(lab, port=RPORT):
    return lab.probe_from(lab.srv_ns, "127.0.0.1", port, timeout=2) == BANNER


def start(lab, server, client, extra=(), **kw):
    svc = lab.start_service(lab.box_ns, 0)
    fwd = [("-R", "127.0.0.1:%d:127.0.0.1:%d" % (RPORT, svc.port))]
    a = Agent(lab, server, fwd, client=client, extra=("--interval", "3") + tuple(extra), **kw).start()
    return a, svc


def no_penalties(server):
    """Nothing the agent did earned a PerSourcePenalty or a drop (OpenSSH 10 logs them at VERBOSE)."""
    assert server.penalty_lines() == [], server.penalty_lines()


@pytest.mark.parametrize("hub", GENERATIONS)
@pytest.mark.parametrize("client,server_kind", [("openssh", "openssh"), ("dropbear", "openssh"),
                                                ("dropbear", "dropbear"), ("openssh", "dropbear")])
def test_reverse_tunnel_heals_after_session_kill(lab, client, server_kind, hub):
    server = lab.start_sshd() if server_kind == "openssh" else lab.start_dropbear()
    a, _ = start(lab, server, client)
    try:
        t = a.wait_up(30)
        assert t["ssh_pid"] and alive(t["ssh_pid"])
        lab.wait_until(lambda: reverse_ok(lab), 10, what="reverse forward answers from the server side")
        first_pid = t["ssh_pid"]
        server.kill_sessions()
        killed = time.monotonic()
        a.wait(lambda: a.tunnel()["restarts"] >= 1 and a.tunnel()["state"] == "up", 30, "reconnect")
        lab.wait_until(lambda: reverse_ok(lab), 15, what="reverse forward back after the session kill")
        took = time.monotonic() - killed
        assert not alive(first_pid)
        print("HEAL %s %s session-killed %.1fs" % (server.version, client, took))
        no_penalties(server)
        assert a.stop() == 0
        assert not alive(a.tunnel()["ssh_pid"] or first_pid)
        assert a.tunnel()["state"] == "stopped"
    finally:
        a.stop()


@pytest.mark.parametrize("hub", GENERATIONS)
@pytest.mark.parametrize("client", ["openssh", "dropbear"])
def test_sshd_restart(lab, client, hub):
    server = lab.start_sshd()
    a, _ = start(lab, server, client)
    try:
        a.wait_up(30)
        lab.wait_until(lambda: reverse_ok(lab), 10, what="forward up")
        server.restart(down_for=2.0)
        back = time.monotonic()
        lab.wait_until(lambda: reverse_ok(lab), 20, what="forward back after sshd restart")
        print("HEAL %s %s sshd-restart %.1fs after the restart" % (server.version, client, time.monotonic() - back))
        assert a.tunnel()["restarts"] >= 1
        no_penalties(server)
    finally:
        a.stop()


def test_wrong_host_key_gives_reason_and_no_tight_loop(lab):
    server = lab.start_sshd()
    a, _ = start(lab, server, "openssh", extra=("--max-backoff", "30"))
    # overwrite the known_hosts with some other key for that host
    with open(os.path.join(a.dir, "known_hosts"), "w") as fh:
        fh.write("%s ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEdSX0suUwaSQ16T6RwcsEfQjv6d36eH4iLQv17k27DW\n"
                 % lab.srv_ip)
    try:
        a.wait(lambda: "host-key-mismatch" in a.tunnel()["last_error"], 20, "host-key-mismatch")
        restarts = a.tunnel()["restarts"]
        a.wait(lambda: a.tunnel()["state"] == "backoff", 5, "backoff")
        assert a.tunnel()["restarts"] == restarts  # waiting the longest delay, not looping
        assert "known_hosts" in a.log()
    finally:
        a.stop()


def test_dbclient_unknown_host_key_never_spins(lab):
    server = lab.start_sshd()
    a, _ = start(lab, server, "dropbear")
    with open(os.path.join(a.dir, "known_hosts"), "w") as fh:
        fh.write("")  # nothing known, and no --accept-new
    try:
        a.wait(lambda: "host-key-unknown" in a.tunnel()["last_error"], 20, "host-key-unknown")
        assert a.tunnel()["ssh_pid"] is None      # never left at a y/n prompt
        c0 = cpu_seconds(a.proc.pid)
        t0 = time.monotonic()
        a.wait(lambda: time.monotonic() - t0 > 2, 5, "two seconds of idling")
        assert cpu_seconds(a.proc.pid) - c0 < 0.5
        assert "--accept-new" in a.log()
    finally:
        a.stop()


def test_accept_new_with_dropbear(lab):
    server = lab.start_sshd()
    a, _ = start(lab, server, "dropbear", extra=("--accept-new",))
    with open(os.path.join(a.dir, "known_hosts"), "w") as fh:
        fh.write("")
    try:
        a.wait_up(30)
        lab.wait_until(lambda: reverse_ok(lab), 10, what="forward up with TOFU")
    finally:
        a.stop()
