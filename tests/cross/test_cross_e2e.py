"""End to end on each root: the root's python runs build/sshkeep.pyz (python3-light guard on) in the
lab's box namespace, drives the root's dbclient (--client dropbear --ssh WRAPPER) to the host's real
OpenSSH sshd in the server namespace, and keeps a reverse and a local forward up, through a kill of
the server's session."""

import os
import time

import lightguard
from agentrun import Agent, alive

BANNER = b"SVC-READY\r\n"
RPORT = 20022  # on the server: -R 127.0.0.1:RPORT -> the box's banner service
LPORT = 20023  # on the box:    -L 127.0.0.1:LPORT -> the server's own sshd (127.0.0.1:22 there)
UP_TIMEOUT = 90  # emulated CPUs: python start ≈ 0.5 s, dbclient key exchange several seconds


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_agent_keeps_forwards_through_session_kill(root, lab, record):
    server = lab.start_sshd()
    svc = lab.start_service(lab.box_ns, 0, banner=BANNER)
    forwards = [("-R", "127.0.0.1:%d:127.0.0.1:%d" % (RPORT, svc.port)),
                ("-L", "127.0.0.1:%d:127.0.0.1:%d" % (LPORT, server.port))]
    a = Agent(lab, server, forwards, client="dropbear", python=root.python[-1], prefix=root.python[:-1],
              ssh=root.dbclient_wrapper, extra=("--interval", "5"), name="cross-%s" % root.name)
    a.env.update(root.env)  # QEMU_LD_PREFIX: where the emulated python (and its dbclient) find the root
    a.env["PYTHONDONTWRITEBYTECODE"] = "1"
    lightguard.check_active(root.python[-1], a.env, cmd_prefix=root.python[:-1], timeout=120)

    def reverse_ok():
        return lab.probe_from(lab.srv_ns, "127.0.0.1", RPORT, timeout=3) == BANNER

    def local_ok():
        got = lab.probe_from(lab.box_ns, "127.0.0.1", LPORT, timeout=3)
        return bool(got and got.startswith(b"SSH-"))

    t0 = time.monotonic()
    a.start()
    try:
        t = a.wait_up(UP_TIMEOUT)
        first_up = time.monotonic() - t0
        lab.wait_until(reverse_ok, 20, what="reverse forward answering on the server (%s)" % root.name)
        lab.wait_until(local_ok, 20, what="local forward reaching the server's sshd (%s)" % root.name)
        forwards_up = time.monotonic() - t0
        exe = os.readlink("/proc/%d/exe" % a.proc.pid)  # `ip netns exec` execs: the agent's own pid
        if root.emulated:
            assert exe == "/usr/bin/qemu-%s-static" % root.qemu, exe
        else:
            assert exe.startswith(root.dir), exe  # the root's ld-linux-x86-64.so.2
        ssh_pid = t["ssh_pid"]
        assert ssh_pid and alive(ssh_pid), t
        assert root.dbclient in _cmdline(ssh_pid), (
            "the agent's ssh child is not %s's dbclient: %s" % (root.name, _cmdline(ssh_pid)))
        assert "blocked by python3-light guard" not in a.log(), a.log()[-3000:]
        # the agent detected the generation from the real binary: -o BatchMode only where dbclient has it
        if root.name == "trixie":
            assert "BatchMode=yes" in _cmdline(ssh_pid) and "StrictHostKeyChecking=yes" in _cmdline(ssh_pid)
        else:
            assert "BatchMode" not in _cmdline(ssh_pid), _cmdline(ssh_pid)

        killed = server.kill_sessions()
        assert killed, "no session processes on the server to kill"
        t1 = time.monotonic()
        a.wait(lambda: a.tunnel()["restarts"] >= 1 and a.tunnel()["state"] == "up", UP_TIMEOUT,
               "reconnect after the server's session was killed (%s)" % root.name)
        lab.wait_until(reverse_ok, 30, what="reverse forward back after the session kill (%s)" % root.name)
        lab.wait_until(local_ok, 20, what="local forward back after the session kill (%s)" % root.name)
        heal = time.monotonic() - t1
        assert not alive(ssh_pid)
        assert a.tunnel()["ssh_pid"] != ssh_pid
        rc = a.stop(timeout=15.0)
        assert rc == 0, (rc, a.log()[-3000:])
        assert a.tunnel()["state"] == "stopped", a.tunnel()
    finally:
        a.stop(timeout=15.0)
    record("first_up", round(first_up, 2))
    record("forwards_answering", round(forwards_up, 2))
    record("heal", round(heal, 2))
