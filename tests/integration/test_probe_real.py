"""agent.run.probe and agent.hubside.remote against real parts: OpenSSH sshd and dropbear servers in a network
namespace (tests/support/lab.py), real ssh/dbclient clients holding real -R forwards, real faults.

What is proven here:
- check_command through a real ssh/dbclient exec gives OK / CLOSED (target down) / REFUSED (tunnel
  gone) / NO_ANSWER (stale listener) / MISMATCH (a stranger holds the exact address: dropbear server);
  UNREACHABLE when the exec itself cannot reach the server; NO_COMMAND under a forced command.
- a stale listener (client gone without the server noticing) makes a new `-R` with
  ExitOnForwardFailure fail; reclaim_command ends the old session (OpenSSH server) and the next
  `-R` works; on a dropbear server a non-root user cannot (NOT_OURS): its session process is root's.
- the in-band loop check through one real connection: OK, TIMEOUT when wedged, REFUSED when gone.
"""

import os
import select
import subprocess
import time

import pytest

import lab as labmod
from lab import wait_until
from hubroot import GENERATIONS
from peers import check_detail
from agent.run import probe as remote_probe
from agent.hubside import remote
from agent.run.loop import LoopListener, loop_forward_pair
from agent.run.probe import OK_BANNER, OK_DATA, REFUSED as P_REFUSED, TIMEOUT as P_TIMEOUT, probe_local, probe_tcp
from agent.hubside.remote import (
    CLOSED, HELD, MISMATCH, NO_ANSWER, NO_COMMAND, NOT_OURS, NOTHING, OK, RECLAIMED, REFUSED, UNREACHABLE,
    check_command, interpret_check, interpret_reclaim, parse_ready,
    reclaim_command, session_command,
)

pytestmark = pytest.mark.integration

FWD = 20022
BANNER = b"SVC-READY\r\n"
OWNER = "box-%d" % os.getpid()


def start_server(lab, kind):
    return lab.start_sshd() if kind == "openssh" else lab.start_dropbear()


def client_argv(lab, server, client, opts=(), cmd=()):
    """(argv, env) for a real client from the box to server."""
    if client == "ssh":
        return lab.ssh_argv(server, *opts, cmd=list(cmd)), None
    return lab.dbclient_argv(server, *opts, cmd=list(cmd)), dict(os.environ, HOME=lab.dropbear_home(server))


def run_exec(lab, server, client, command, timeout=10.0):
    """An ssh exec of one remote command string, bounded like the supervisor will: (rc, out, err, timed_out)."""
    argv, env = client_argv(lab, server, client, cmd=[command])
    start = time.monotonic()
    try:
        r = lab.box_run(argv, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return None, "", "", True, time.monotonic() - start
    return r.returncode, r.stdout.decode(), r.stderr.decode(), False, time.monotonic() - start


def remote_check(lab, server, client, bind="127.0.0.1", port=FWD, banner="SVC-", timeout=2.0, exec_timeout=10.0):
    kind = "openssh" if client == "ssh" else "dropbear"
    rc, out, err, timed_out, elapsed = run_exec(lab, server, client, check_command(bind, port, banner, timeout),
                                                exec_timeout)
    return interpret_check(rc, out, err, timed_out, kind), (rc, out, err, round(elapsed, 2))


def start_tunnel(lab, server, client, specs, session=False, owner=OWNER, extra=()):
    """A real client holding -R/-L specs; with session=True it runs session_command instead of -N and its
    stdin is a pipe kept open (as the supervisor will do)."""
    opts = ["-o", "ExitOnForwardFailure=yes"] + list(extra)
    for kind, spec in specs:
        opts += ["-" + kind, spec]
    ports = [int(spec.split(":")[-3]) for kind, spec in specs if kind == "R"]
    cmd = [session_command(ports, owner=owner)] if session else []
    if not session:
        opts.insert(0, "-N")
    argv, env = client_argv(lab, server, client, opts, cmd)
    return lab.box_popen(argv, env=env, stdin=subprocess.PIPE if session else subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def read_ready(proc, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not r:
            break
        line = proc.stdout.readline().decode()
        if not line:
            break
        ready = parse_ready(line)
        if ready:
            return ready
    raise AssertionError("no ready line from the session (rc %s, stderr %r)" % (
        proc.poll(), proc.stderr.read().decode() if proc.poll() is not None else ""))


def forward_answers(lab, port=FWD, host="127.0.0.1"):
    return lab.probe_from(lab.srv_ns, host, port, timeout=1.0) == BANNER


def rspec(svc_port, port=FWD, bind="127.0.0.1"):
    return "%s:%d:127.0.0.1:%d" % (bind, port, svc_port)


# ----------------------------------------------------------------------------- remote check, real exec
@pytest.mark.parametrize("hub", GENERATIONS)
@pytest.mark.parametrize("kind", ["openssh", "dropbear"])
@pytest.mark.parametrize("client", ["ssh", "dbclient"])
def test_remote_check_verdicts_through_real_exec(lab, kind, client, hub):
    server = start_server(lab, kind)
    svc = lab.start_service(lab.box_ns, 0)
    tunnel = start_tunnel(lab, server, "ssh", [("R", rspec(svc.port))])
    wait_until(lambda: forward_answers(lab), 10, 0.1, "forward up")

    verdict, info = remote_check(lab, server, client)
    assert verdict == OK and "python3 127.0.0.1" in info[1], info
    assert remote_check(lab, server, client, banner=None)[0] == OK

    svc.stop()  # the box-side target is down: the forward accepts and closes at once
    verdict, info = remote_check(lab, server, client)
    assert verdict == CLOSED, info
    target = labmod.in_ns(lab.box_ns, lambda: probe_local("127.0.0.1", svc.port, timeout=1))
    assert target.verdict == P_REFUSED  # -> target-down, not a tunnel to restart
    svc.start()
    assert remote_check(lab, server, client)[0] == OK

    labmod.stop_process(tunnel)  # the tunnel is gone: nothing listens
    wait_until(lambda: not lab.listening(lab.srv_ns, FWD), 5, 0.05, "listener gone")
    verdict, info = remote_check(lab, server, client)
    assert verdict == REFUSED, info
    assert info[3] < 5.0, info  # one key exchange plus a refused connect (~0.3 s idle)


@pytest.mark.parametrize("kind", ["openssh", "dropbear"])
@pytest.mark.parametrize("interp", ["python", "perl", "bash", "nc"])
def test_each_interpreter_under_a_real_server(lab, kind, interp):
    """The fallbacks as the server's login shell (dash, /bin/sh) runs them, forced with `interpreters`."""
    server = start_server(lab, kind)
    svc = lab.start_service(lab.box_ns, 0)
    start_tunnel(lab, server, "ssh", [("R", rspec(svc.port))])
    wait_until(lambda: forward_answers(lab), 10, 0.1, "forward up")
    order = ("python3", "python") if interp == "python" else (interp,)
    for banner, want in (("SVC-", OK), ("XYZ-", MISMATCH)):
        rc, out, err, timed_out, _ = run_exec(lab, server, "ssh", check_command(
            "127.0.0.1", FWD, banner, 1.0, interpreters=order))
        assert interpret_check(rc, out, err, timed_out) == want, (rc, out, err)
        assert check_detail(out).split()[0] in order
    svc.stop()
    rc, out, err, timed_out, _ = run_exec(lab, server, "ssh", check_command(
        "127.0.0.1", FWD, None, 1.0, interpreters=order))
    assert interpret_check(rc, out, err, timed_out) == CLOSED, (rc, out, err)


@pytest.mark.parametrize("client", ["ssh", "dbclient"])
def test_unreachable_is_not_forward_dead(lab, client):
    server = lab.start_sshd()
    lab.blackhole(True)
    verdict, info = remote_check(lab, server, client, exec_timeout=2.0)
    assert verdict == UNREACHABLE and info[3] < 3.0, info
    lab.blackhole(False)
    server.stop()  # refused at the TCP level: ssh 255, dbclient 1
    verdict, info = remote_check(lab, server, client)
    assert verdict == UNREACHABLE and info[0] == (255 if client == "ssh" else 1), info


def test_forced_command_is_no_command(lab):
    """A restricted key (command="...") runs something else: NO_COMMAND, and no ready line for a session."""
    server = lab.start_sshd()
    key = os.path.join(lab.dir, "restricted")
    labmod._run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", key])
    with open(key + ".pub") as f:
        lab.authorize_key('command="echo restricted",restrict ' + f.read().strip())
    argv = lab.ssh_argv(server, cmd=[check_command("127.0.0.1", FWD, None, 1.0)])
    argv[argv.index("-i") + 1] = key
    r = lab.box_run(argv, timeout=10)
    assert interpret_check(r.returncode, r.stdout.decode(), r.stderr.decode(), False) == NO_COMMAND, r


def test_stale_listener_is_no_answer_with_a_banner(lab):
    """A listener whose client is gone accepts and never answers: only a banner check sees it."""
    server = lab.start_sshd()
    svc = lab.start_service(lab.box_ns, 0)
    tunnel = start_tunnel(lab, server, "ssh", [("R", rspec(svc.port))])
    wait_until(lambda: forward_answers(lab), 10, 0.1, "forward up")
    (box_port,) = lab.flows(server.port)
    lab.drop_flow(box_port, server.port)
    verdict, info = remote_check(lab, server, "ssh", timeout=1.5)
    assert verdict == NO_ANSWER, info
    assert remote_check(lab, server, "ssh", banner=None)[0] == OK  # fooled without a banner (documented)
    tunnel.kill()


# ----------------------------------------------------------------------------- stale listener reclaim
def make_stale(lab, server, tunnel):
    """Lose the tunnel's flow for good and kill its client: the server never hears of it."""
    (box_port,) = lab.flows(server.port)
    lab.drop_flow(box_port, server.port)
    tunnel.kill()
    tunnel.wait(5)


@pytest.mark.parametrize("hub", GENERATIONS)
@pytest.mark.parametrize("client", ["ssh", "dbclient"])
def test_reclaim_stale_listener_openssh_server(lab, client, hub):
    server = lab.start_sshd()
    svc = lab.start_service(lab.box_ns, 0)
    tunnel = start_tunnel(lab, server, client, [("R", rspec(svc.port))], session=True)
    pid, recorded, start = read_ready(tunnel)
    # 9.2: "sshd: USER@notty"; 9.8+ (sshd-session split): "sshd-session: USER@notty"
    assert recorded and labmod.cmdline(pid) == "%s%s@notty" % (server.session_title, lab.user)
    wait_until(lambda: forward_answers(lab), 10, 0.1, "forward up")
    assert remote_check(lab, server, client)[0] == OK

    make_stale(lab, server, tunnel)
    assert labmod.alive(pid) and lab.listening(lab.srv_ns, FWD)  # the server still holds it
    assert remote_check(lab, server, client, timeout=1.0)[0] == NO_ANSWER

    again = start_tunnel(lab, server, client, [("R", rspec(svc.port))], session=True)
    rc = again.wait(10)
    err = again.stderr.read().decode()
    if client == "ssh":
        assert rc == 255 and "remote port forwarding failed for listen port %d" % FWD in err, err
    else:
        assert rc == 1 and "Remote TCP forward request failed" in err, err
    assert remote.failed_listen_port(err) == FWD

    # not given the session's exact pid and start time, a reclaim ends nothing, even for its owner
    rc, out, err, timed_out, _ = run_exec(lab, server, client, reclaim_command(FWD, owner=OWNER))
    assert interpret_reclaim(rc, out, err, timed_out)[0] == HELD and labmod.alive(pid), (rc, out, err)
    rc, out, err, timed_out, _ = run_exec(lab, server, client, reclaim_command(FWD, owner=OWNER, pid=pid,
                                                                                start=start))
    assert interpret_reclaim(rc, out, err, timed_out, "openssh" if client == "ssh" else "dropbear") == \
        (RECLAIMED, pid), (rc, out, err)
    assert not labmod.alive(pid)
    t0 = time.monotonic()
    fresh = start_tunnel(lab, server, client, [("R", rspec(svc.port))], session=True)
    new_pid, _, new_start = read_ready(fresh)
    wait_until(lambda: forward_answers(lab), 5, 0.05, "the forward after the reclaim")
    took = time.monotonic() - t0
    print("reclaim -> forward answering again: %.2fs (%s)" % (took, client))
    assert took < 3.0 and new_pid != pid
    assert remote_check(lab, server, client)[0] == OK
    # another box (another owner) is told who holds the port, even given the exact session
    rc, out, err, timed_out, _ = run_exec(lab, server, client, reclaim_command(
        FWD, owner="someone-else", pid=new_pid, start=new_start))
    assert interpret_reclaim(rc, out, err, timed_out)[0] == HELD
    assert [(h["pid"], h["box"]) for h in remote.reclaim_holders(out)] == [(new_pid, OWNER)]
    assert fresh.poll() is None and forward_answers(lab)
    fresh.stdin.close()  # the agent's way to end a session: stdin EOF, files removed
    assert fresh.wait(5) in (0, 255, 1)
    r = lab.user_run(["sh", "-c", "ls -A ~/.sshkeep"])
    assert r.stdout.decode().split() == [], r


@pytest.mark.parametrize("hub", GENERATIONS)
def test_reclaim_on_dropbear_server(lab, hub):
    """dropbear server: the session process ($PPID) is the per-connection dropbear process.
    2022.83 (deb12) keeps it root's: a non-root tunnel user cannot end it (NOT_OURS, other-uid).
    2025.89 (deb13) runs it as the logged-in user (measured): the reclaim ends it like on OpenSSH.
    dropbear binds -R 127.0.0.1:P on 127.0.0.1 AND ::1; its stale session holds both, so a new -R
    fails like on OpenSSH (ExitOnForwardFailure)."""
    server = lab.start_dropbear()
    svc = lab.start_service(lab.box_ns, 0)
    tunnel = start_tunnel(lab, server, "ssh", [("R", rspec(svc.port))], session=True)
    pid, recorded, start = read_ready(tunnel)
    owner = 0 if hub == "deb12" else lab.uid
    assert recorded and labmod.cmdline(pid).startswith(" ".join(server.argv)) and labmod._uid(pid) == owner
    wait_until(lambda: forward_answers(lab), 10, 0.1, "forward up")
    assert sorted(lab.listening(lab.srv_ns, FWD)) == ["127.0.0.1", "::1"]
    make_stale(lab, server, tunnel)
    assert remote_check(lab, server, "ssh", timeout=1.0)[0] == NO_ANSWER

    again = start_tunnel(lab, server, "ssh", [("R", rspec(svc.port))], session=True)
    assert again.wait(10) == 255
    assert "remote port forwarding failed for listen port %d" % FWD in again.stderr.read().decode()

    rc, out, err, timed_out, _ = run_exec(lab, server, "ssh", reclaim_command(FWD, owner=OWNER, pid=pid, start=start))
    if hub == "deb12":
        assert interpret_reclaim(rc, out, err, timed_out) == (NOT_OURS, None), (rc, out, err)
        assert "other-uid %d" % pid in out and labmod.alive(pid)
        return
    assert interpret_reclaim(rc, out, err, timed_out) == (RECLAIMED, pid), (rc, out, err)
    assert not labmod.alive(pid)
    fresh = start_tunnel(lab, server, "ssh", [("R", rspec(svc.port))], session=True)
    read_ready(fresh)
    wait_until(lambda: forward_answers(lab), 5, 0.05, "the forward after the reclaim")


def test_dropbear_server_stranger_on_exact_address(lab):
    server = lab.start_dropbear()
    lab.start_service(lab.srv_ns, FWD, banner=b"STRANGER\r\n")  # someone else holds 127.0.0.1:FWD
    svc = lab.start_service(lab.box_ns, 0)
    tunnel = start_tunnel(lab, server, "ssh", [("R", rspec(svc.port))])
    wait_until(lambda: "::1" in lab.listening(lab.srv_ns, FWD), 10, 0.05, "dropbear to bind [::1]")
    assert tunnel.poll() is None  # dropbear reported success
    verdict, info = remote_check(lab, server, "ssh")
    assert verdict == MISMATCH, info
    assert remote_check(lab, server, "dbclient")[0] == MISMATCH
    assert remote_check(lab, server, "ssh", bind="localhost")[0] == OK


# ----------------------------------------------------------------------------- in-band loop check
@pytest.mark.parametrize("kind", ["openssh", "dropbear"])
@pytest.mark.parametrize("client", ["ssh", "dbclient"])
def test_loop_check_through_one_connection(lab, kind, client):
    server = start_server(lab, kind)
    lst = labmod.in_ns(lab.box_ns, lambda: LoopListener())
    try:
        rfwd, lfwd = labmod.in_ns(lab.box_ns, lambda: loop_forward_pair(lst.port, 20999))
        tunnel = start_tunnel(lab, server, client, [("R", rfwd.spec()), ("L", lfwd.spec())])
        check = lambda t=2.0: labmod.in_ns(lab.box_ns, lambda: lst.check(lfwd.port, t))  # noqa: E731
        wait_until(lambda: check(1.0).verdict == OK_DATA, 10, 0.1, "loop up")
        r = check()
        assert r.verdict == OK_DATA and r.elapsed < 1.5, r
        (box_port,) = lab.flows(server.port)
        lab.drop_flow(box_port, server.port)  # wedged: ssh is up, nothing crosses
        r = check(1.0)
        assert r.verdict == P_TIMEOUT and r.elapsed < 2.0, r
        tunnel.kill()
        tunnel.wait(5)
        assert check(1.0).verdict == P_REFUSED
    finally:
        lst.close()


# ----------------------------------------------------------------------------- fast return after an outage
def test_probe_tcp_sees_the_server_come_back(lab):
    server = lab.start_sshd()
    up = lambda: labmod.in_ns(lab.box_ns, lambda: probe_tcp(lab.srv_ip, server.port, 0.5))  # noqa: E731
    assert up() is True
    lab.blackhole(True)
    t0 = time.monotonic()
    assert up() is False and time.monotonic() - t0 < 1.0
    lab.blackhole(False)
    assert up() is True
    banner = labmod.in_ns(lab.box_ns, lambda: probe_local(lab.srv_ip, server.port, 2, banner=b"SSH-"))
    assert banner.verdict == OK_BANNER


@pytest.mark.parametrize("hub", GENERATIONS)
def test_half_open_probe_leaves_no_trace_on_the_hub(lab, hub):
    """probe_syn (root): True while sshd listens, False when stopped (RST) or dark (no answer); the
    server never accepts a connection: no log line, no PerSourcePenalties `noauth` on 10.x, where
    the same number of bare connects activates a penalty (measured: 20 at 5/s)."""
    server = lab.start_sshd()
    syn = lambda: labmod.in_ns(lab.box_ns, lambda: remote_probe.probe_syn(lab.srv_ip, server.port, 0.5))  # noqa
    assert [syn() for _ in range(30)] == [True] * 30
    lab.blackhole(True)
    t0 = time.monotonic()
    assert syn() is False and time.monotonic() - t0 < 1.0
    lab.blackhole(False)
    assert "Connection from" not in server.log_text() and server.penalty_lines() == []
    assert lab.box_run(lab.ssh_argv(server, cmd=["true"])).returncode == 0
    server.stop()
    assert syn() is False


@pytest.mark.parametrize("client", ["ssh", "dbclient"])
def test_server_that_accepts_but_never_speaks_ssh(lab, client):
    """TCP accepts, no SSH banner ever: the exec ends by our timeout as UNREACHABLE; probe_tcp says
    up (it only connects) while a banner probe says timeout."""
    server = lab.start_sshd()
    mute = lab.start_service(lab.srv_ns, 0, banner=b"", bind=lab.srv_ip)
    argv, env = client_argv(lab, server, client, cmd=[check_command("127.0.0.1", FWD, None, 1.0)])
    argv[argv.index("-p") + 1] = str(mute.port)
    t0 = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        lab.box_run(argv, timeout=2.0, env=env)
    assert time.monotonic() - t0 < 3.0
    assert interpret_check(None, "", "", True, "openssh" if client == "ssh" else "dropbear") == UNREACHABLE
    assert labmod.in_ns(lab.box_ns, lambda: probe_tcp(lab.srv_ip, mute.port, 1.0)) is True
    r = labmod.in_ns(lab.box_ns, lambda: probe_local(lab.srv_ip, mute.port, 1.0, banner=b"SSH-"))
    assert r.verdict == P_TIMEOUT
