"""The lab itself, proven with real clients (OpenSSH ssh, dbclient) against real servers (sshd, dropbear).

The agent is not involved: if these fail, every integration test and the bench are meaningless.
"""

import os
import subprocess

import pytest

import lab as labmod
from lab import wait_until
from hubroot import GENERATIONS

pytestmark = pytest.mark.integration

BANNER = b"SVC-READY\r\n"
SVC_PORT = 8080
FWD_PORT = 20022


def start_tunnel(lab, server, client, fwd_port=FWD_PORT, svc_port=SVC_PORT):
    """A plain client holding `-R 127.0.0.1:fwd_port:127.0.0.1:svc_port` from the box to server."""
    spec = "127.0.0.1:%d:127.0.0.1:%d" % (fwd_port, svc_port)
    opts = ["-N", "-o", "ExitOnForwardFailure=yes", "-R", spec]
    if client == "ssh":
        return lab.box_popen(lab.ssh_argv(server, *opts), stderr=subprocess.PIPE)
    env = dict(os.environ, HOME=lab.dropbear_home(server))
    return lab.box_popen(lab.dbclient_argv(server, *opts), env=env, stderr=subprocess.PIPE)


def forward_answers(lab, fwd_port=FWD_PORT):
    """From the server side: does the reverse forward reach the box service?"""
    return lab.probe_from(lab.srv_ns, "127.0.0.1", fwd_port, timeout=1.0) == BANNER


def start_server(lab, kind):
    return lab.start_sshd() if kind == "openssh" else lab.start_dropbear()


@pytest.mark.parametrize("hub", GENERATIONS)
@pytest.mark.parametrize("kind", ["openssh", "dropbear"])
@pytest.mark.parametrize("client", ["ssh", "dbclient"])
def test_reverse_forward_then_kill_sessions(lab, client, kind, hub):
    server = start_server(lab, kind)
    lab.start_service(lab.box_ns, SVC_PORT)
    assert lab.probe_from(lab.srv_ns, "127.0.0.1", SVC_PORT, 0.5) is None  # not there without the tunnel
    tunnel = start_tunnel(lab, server, client)
    wait_until(lambda: forward_answers(lab), 10, 0.1, "%s -R through %s to answer" % (client, kind))
    assert lab.flows(server.port), "no established flow box -> server"
    # measured: dropbear binds `-R 127.0.0.1:P` on both loopback addresses, sshd on the one asked for
    assert sorted(lab.listening(lab.srv_ns, FWD_PORT)) == (["127.0.0.1"] if kind == "openssh" else
                                                            ["127.0.0.1", "::1"])
    killed = server.kill_sessions()
    assert killed and not any(labmod.alive(p) for p in killed)
    assert not forward_answers(lab)
    status = tunnel.wait(10)
    assert status == (255 if client == "ssh" else 1)  # field notes: ssh 255, dbclient 1 for any failure


@pytest.mark.parametrize("kind", ["openssh", "dropbear"])
def test_blackhole_blocks_and_heals(lab, kind):
    server = start_server(lab, kind)
    lab.start_service(lab.box_ns, SVC_PORT)
    tunnel = start_tunnel(lab, server, "ssh")
    wait_until(lambda: forward_answers(lab), 10, 0.1, "forward up")
    lab.blackhole(True)
    assert lab.probe_from(lab.box_ns, lab.srv_ip, server.port, 0.5) is None
    assert not forward_answers(lab)  # listener accepts on the server; the channel never reaches the box
    lab.blackhole(False)
    assert lab.probe_from(lab.box_ns, lab.srv_ip, server.port, 1.0).startswith(b"SSH-")
    wait_until(lambda: forward_answers(lab), 10, 0.2, "TCP to resume after the blackhole")
    assert tunnel.poll() is None


def test_drop_flow_drops_only_that_flow(lab):
    server = lab.start_sshd()
    lab.start_service(lab.box_ns, SVC_PORT)
    tunnel = start_tunnel(lab, server, "ssh")
    wait_until(lambda: forward_answers(lab), 10, 0.1, "forward up")
    (box_port,) = lab.flows(server.port)
    lab.drop_flow(box_port, server.port)
    assert not forward_answers(lab)
    assert lab.probe_from(lab.box_ns, lab.srv_ip, server.port, 1.0).startswith(b"SSH-")  # a new flow passes
    # the old session and its listener stay on the server: a second -R on the same port is refused
    again = start_tunnel(lab, server, "ssh")
    assert again.wait(10) == 255
    assert b"remote port forwarding failed" in again.stderr.read()
    assert tunnel.poll() is None  # no keepalive: the client does not notice
    lab.drop_flow(box_port, server.port, on=False)
    wait_until(lambda: forward_answers(lab), 10, 0.2, "the flow to resume")


@pytest.mark.parametrize("hub", GENERATIONS)
@pytest.mark.parametrize("kind", ["openssh", "dropbear"])
def test_restart_same_key_same_port_and_kill_listener(lab, kind, hub):
    server = start_server(lab, kind)
    old = server.pid
    server.restart()
    assert server.pid != old
    env = dict(os.environ, HOME=lab.dropbear_home(server))  # old known_hosts still valid
    for argv in (lab.ssh_argv(server, cmd=["echo", "ok"]), lab.dbclient_argv(server, cmd=["echo", "ok"])):
        r = lab.box_run(argv, timeout=10, env=env)
        assert (r.returncode, r.stdout) == (0, b"ok\n"), r.stderr
    lab.start_service(lab.box_ns, SVC_PORT)
    tunnel = start_tunnel(lab, server, "ssh")
    wait_until(lambda: forward_answers(lab), 10, 0.1, "forward up")
    assert "127.0.0.1" in lab.listening(lab.srv_ns, FWD_PORT)
    lab.kill_listener(FWD_PORT)  # fault 5: listener gone, session alive
    assert lab.listening(lab.srv_ns, FWD_PORT) == []
    assert lab.probe_from(lab.srv_ns, "127.0.0.1", FWD_PORT, 0.5) is None
    assert tunnel.poll() is None and server.session_pids()


def test_restart_keeping_sessions_and_service_port_zero(lab):
    """restart(sessions=False) is `kill sshd` + start: the old session and its forward survive."""
    server = lab.start_sshd()
    svc = lab.start_service(lab.box_ns, 0)  # port 0: the service picks one and reports it
    assert svc.port > 0
    tunnel = start_tunnel(lab, server, "ssh", svc_port=svc.port)
    wait_until(lambda: forward_answers(lab), 10, 0.1, "forward up")
    sessions = server.session_pids()
    server.restart(sessions=False)
    assert all(labmod.alive(p) for p in sessions) and not set(sessions) & set(server.session_pids())
    assert forward_answers(lab) and tunnel.poll() is None


def test_target_down_gives_eof_not_none(lab):
    server = lab.start_dropbear()
    svc = lab.start_service(lab.box_ns, SVC_PORT)
    start_tunnel(lab, server, "dbclient")
    wait_until(lambda: forward_answers(lab), 10, 0.1, "forward up")
    svc.stop()
    assert lab.probe_from(lab.srv_ns, "127.0.0.1", FWD_PORT, 1.0) == b""  # accepted, then EOF
    svc.start()
    assert forward_answers(lab)


@pytest.mark.parametrize("hub", GENERATIONS)
def test_session_process_facts(lab, hub):
    """What a remote command sees of its session process ($PPID) on each server (see field notes)."""
    sshd, drop = lab.start_sshd(), lab.start_dropbear()
    # the server runs this with the user's shell (`sh -c LINE`): $PPID is the session process. (Wrapped in
    # one more `sh -c '...'` it would be that outer shell: dash does not exec a lone command there.)
    script = ['echo $PPID; stat -c %u /proc/$PPID; tr "\\0" " " </proc/$PPID/cmdline; echo;'
              ' kill -0 $PPID && echo killable || echo not-killable; grep ^PPid: /proc/$PPID/status']
    r = lab.box_run(lab.ssh_argv(sshd, cmd=script), timeout=10)
    ppid, uid, cmd, kill, parent = r.stdout.decode().splitlines()
    assert (int(uid), cmd.strip(), kill) == (lab.uid, "%s%s@notty" % (sshd.session_title, lab.user), "killable"), r
    assert int(parent.split()[1]) != sshd.pid  # its parent is the root `sshd: USER [priv]` monitor
    env = dict(os.environ, HOME=lab.dropbear_home(drop))
    r = lab.box_run(lab.dbclient_argv(drop, cmd=script), timeout=10, env=env)
    ppid, uid, cmd, kill, parent = r.stdout.decode().splitlines()
    # dropbear's per-connection process is a child of the listener and shows the listener's command
    # line (plus its re-exec `-2 N`). 2022.83 keeps it root's: the tunnel user cannot signal it;
    # 2025.89 (measured) runs it as the user after login: killable
    assert int(parent.split()[1]) == drop.pid, r
    if hub == "deb12":
        assert int(uid) == 0 and kill == "not-killable", r
    else:
        assert int(uid) == lab.uid and kill == "killable", r
    assert cmd.startswith(" ".join(drop.argv)), r


def test_private_home_per_lab(lab):
    """The tunnel user's home seen in this lab's server namespace is lab.home, nowhere else."""
    r = lab.user_run(["sh", "-c", "id -u; echo ~%s; touch ~/.probe && echo wrote" % lab.user])
    assert r.stdout.decode().split() == [str(lab.uid), lab.home, "wrote"], r
    outside = subprocess.run(["sh", "-c", "echo ~%s" % lab.user], stdout=subprocess.PIPE).stdout.decode().strip()
    assert outside != lab.home
    server = lab.start_sshd()
    r = lab.box_run(lab.ssh_argv(server, cmd=["pwd; ls -a"]), timeout=10)
    assert r.stdout.decode().split()[0] == lab.home and ".probe" in r.stdout.decode().split(), r


def test_cleanup_leaves_nothing():
    with labmod.Lab(tag="cleanup") as lab:
        names = (lab.box_ns, lab.srv_ns)
        paths = [lab.dir, lab.home] + ["/etc/netns/%s" % n for n in names]
        sshd, drop = lab.start_sshd(), lab.start_dropbear()
        lab.start_service(lab.box_ns, SVC_PORT)
        start_tunnel(lab, sshd, "ssh")
        start_tunnel(lab, drop, "dbclient", fwd_port=FWD_PORT + 1)
        wait_until(lambda: forward_answers(lab) and forward_answers(lab, FWD_PORT + 1), 10, 0.1, "forwards")
        lab.blackhole(True)
        pids = lab.tracked_pids() + sshd.session_pids() + drop.session_pids()
        assert len(pids) >= 6 and all(labmod.alive(p) for p in pids)
    listed = subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE, check=True).stdout.decode()
    assert not [n for n in names if n in listed.split()]
    assert [p for p in pids if labmod.alive(p)] == []
    assert [p for p in paths if os.path.exists(p)] == []
    assert lab not in labmod._live_labs


def test_deb13_hub_is_real_and_cached(lab):
    """The deb13 generation really runs OpenSSH 10 (sshd-session) and dropbear 2025 from the cached
    root, inside the server namespace; the lab's mounts are gone after close."""
    sshd, drop = lab.start_sshd(generation="deb13"), lab.start_dropbear(generation="deb13")
    assert sshd.version.startswith("OpenSSH_10.") and drop.version.startswith("dropbear 2025."), (sshd, drop)
    assert lab.start_sshd(port=2200).version.startswith("OpenSSH_9.2")  # the lab's default: deb12
    root = lab.hub_root("deb13")
    assert os.path.ismount(root) and os.path.ismount(root + "/proc")
    r = lab.box_run(lab.ssh_argv(sshd, cmd=["cat /etc/debian_version; ls /usr/lib/openssh/sshd-session"]))
    assert r.returncode == 0 and r.stdout.decode().split()[0].startswith("13"), r
    lab.close()
    assert not os.path.exists(root)


def test_requirements_met_here():
    """The `lab` fixture fails (never skips) when this list is not empty."""
    assert labmod.missing_requirements() == []
