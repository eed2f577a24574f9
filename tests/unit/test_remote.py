"""agent.hubside.remote's one-liners run for real with `sh -c` on this machine, once per interpreter and shell.

The "server" here is this machine's loopback; PATH is a directory holding only the tools a test
allows, so each interpreter (python3, perl, bash /dev/tcp, busybox nc) and "none" is exercised.
"""

import os
import shlex
import shutil
import subprocess
import time

import pytest

from polling import wait_until

from agent.core import values
from agent.hubside import payload, remote
from agent.hubside.remote import (
    CLOSED, ERROR, HELD, MISMATCH, NO_ANSWER, NO_COMMAND, NO_INTERPRETER, NOT_OURS, NOTHING, OK,
    RECLAIMED, REFUSED, UNREACHABLE, check_command, interpret_check, interpret_reclaim, parse_ready,
    reclaim_command, session_command,
)
from fakesession import SHELLS, starttime
from peers import FullBacklog, check_detail, free_port

INTERPRETERS = {"python3": "/usr/bin/python3", "perl": "/usr/bin/perl", "bash": "/usr/bin/bash",
                "nc": "/usr/bin/busybox"}


def make_bin(path, shell="dash", tools=()):
    """A PATH directory with `sh` (the given shell), `sleep`, `rm`, and the named tools only."""
    os.makedirs(path, exist_ok=True)
    os.symlink(SHELLS[shell], os.path.join(path, "sh"))
    os.symlink("/bin/sleep", os.path.join(path, "sleep"))
    os.symlink("/bin/rm", os.path.join(path, "rm"))
    for tool in tools:
        name = "busybox" if tool == "nc" else tool
        os.symlink(INTERPRETERS[tool], os.path.join(path, name))
    return path


def run_remote(cmd, bindir, timeout=20, user=None):
    """Run cmd the way sshd does (`$SHELL -c CMD`), with the login shell = bindir/sh."""
    env = {"PATH": bindir, "HOME": "/nonexistent", "LC_ALL": "C"}
    argv = [os.path.join(bindir, "sh"), "-c", cmd]
    if user is not None:
        argv = ["/usr/bin/setpriv", "--reuid", str(user), "--regid", str(user), "--clear-groups", "--"] + argv
    start = time.monotonic()
    r = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout)
    r.elapsed = time.monotonic() - start
    r.out, r.err = r.stdout.decode(), r.stderr.decode()
    return r


CASES = [
    # (peer behaviour, banner, verdict)
    ("refused", None, REFUSED),
    ("close", None, CLOSED),
    ("close", "SSH-", CLOSED),
    ("reset", None, CLOSED),
    ("silent", None, OK),
    ("silent", "SSH-", NO_ANSWER),
    ("send:hello", None, OK),
    ("send:SSH-2.0-x\r\n", "SSH-", OK),
    ("slow:SSH-2.0-x\r\n", "SSH-", OK),
    ("send:HTTP/1.0 400\r\n", "SSH-", MISMATCH),
    ("backlog", "SSH-", NO_ANSWER),
    ("backlog", None, NO_ANSWER),
]


@pytest.mark.parametrize("interp", sorted(INTERPRETERS))
@pytest.mark.parametrize("behaviour,banner,verdict", CASES)
def test_check_outcomes_per_interpreter(tmp_path, peers, interp, behaviour, banner, verdict):
    bindir = make_bin(str(tmp_path / "bin"), "dash", [interp])
    fb = None
    if behaviour == "refused":
        port = free_port()
    elif behaviour == "backlog":
        fb = FullBacklog()
        port = fb.port
    else:
        port = peers(behaviour).port
    if behaviour == "backlog" and interp == "nc" and banner is None:
        verdict = OK  # assumption 5: busybox nc cannot tell a hung connect from a silent peer
    try:
        r = run_remote(check_command("127.0.0.1", port, banner, timeout=1.0, grace=0.3), bindir)
    finally:
        if fb:
            fb.close()
    got = interpret_check(r.returncode, r.out, r.err, False, "openssh")
    assert got == verdict, (r.returncode, r.out, r.err)
    assert r.out.splitlines()[-1].split()[2] == interp  # the marker names the interpreter that ran
    assert r.elapsed < 6.0  # timeout 1 s: own bound (python/perl) or the sleep killer (bash, nc) at T+1


@pytest.mark.parametrize("shell", sorted(SHELLS))
@pytest.mark.parametrize("interp", ["python3", "perl", "bash", "nc"])
def test_check_under_each_posix_sh(tmp_path, peers, shell, interp):
    """dash, bash-as-sh and busybox ash as both the login shell and `sh`."""
    bindir = make_bin(str(tmp_path / "bin"), shell, [interp])
    ok = peers("send:SSH-2.0-x\r\n")
    closed = peers("close")
    for port, banner, want in ((ok.port, "SSH-", OK), (closed.port, None, CLOSED), (free_port(), None, REFUSED)):
        r = run_remote(check_command("127.0.0.1", port, banner, 1.0), bindir)
        assert interpret_check(r.returncode, r.out, r.err, False) == want, (port, r.out, r.err)


def test_no_interpreter(tmp_path, peers):
    bindir = make_bin(str(tmp_path / "bin"), "dash", [])
    r = run_remote(check_command("127.0.0.1", peers("silent").port, None, 1.0), bindir)
    assert r.returncode == remote.CHECK_NO_INTERPRETER
    assert interpret_check(r.returncode, r.out, r.err, False) == NO_INTERPRETER
    assert r.out.strip() == "sshkeep-check 85 none -"


def test_interpreter_order_is_python3_first_then_as_given(tmp_path, peers):
    bindir = make_bin(str(tmp_path / "bin"), "dash", ["python3", "perl", "bash", "nc"])
    port = peers("silent").port
    r = run_remote(check_command("127.0.0.1", port, None, 1.0), bindir)
    assert r.out.split()[2] == "python3"
    r = run_remote(check_command("127.0.0.1", port, None, 1.0, interpreters=("nc", "perl")), bindir)
    assert r.out.split()[2] == "nc"
    os.unlink(os.path.join(bindir, "python3"))
    r = run_remote(check_command("127.0.0.1", port, None, 1.0), bindir)
    assert r.out.split()[2] == "perl"


def test_python_named_python_is_used(tmp_path, peers):
    """`python` (any 2.6+/3.x) when there is no python3: here a 3.8 under that name."""
    py38 = "/root/.pyenv/versions/3.8.18/bin/python3"
    if not os.access(py38, os.X_OK):
        pytest.skip("no python 3.8 here")
    bindir = make_bin(str(tmp_path / "bin"), "dash", [])
    os.symlink(py38, os.path.join(bindir, "python"))
    for behaviour, banner, want in (("send:SSH-2.0-x\r\n", "SSH-", OK), ("close", None, CLOSED),
                                    ("silent", "SSH-", NO_ANSWER), ("send:HTTP", "SSH-", MISMATCH)):
        r = run_remote(check_command("127.0.0.1", peers(behaviour).port, banner, 1.0), bindir)
        assert interpret_check(r.returncode, r.out, r.err, False) == want
        assert check_detail(r.out) == "python 127.0.0.1"


@pytest.mark.parametrize("interp", ["python3", "perl", "bash", "nc"])
def test_localhost_checks_both_families(tmp_path, peers, interp):
    bindir = make_bin(str(tmp_path / "bin"), "dash", [interp])
    six = peers("send:SSH-2.0-x\r\n", "::1")
    r = run_remote(check_command("localhost", six.port, "SSH-", 1.0), bindir)
    assert interpret_check(r.returncode, r.out, r.err, False) == OK
    assert check_detail(r.out) == "%s ::1" % interp


@pytest.mark.parametrize("interp", ["python3", "perl", "bash", "nc"])
def test_exact_address_sees_a_stranger(tmp_path, peers, interp):
    """The dropbear-server case: ours quietly on [::1]:P, a stranger on 127.0.0.1:P; -R said 127.0.0.1."""
    bindir = make_bin(str(tmp_path / "bin"), "dash", [interp])
    stranger = peers("send:HTTP/1.0 400\r\n", "127.0.0.1")
    peers("send:SSH-2.0-x\r\n", "::1", stranger.port)
    r = run_remote(check_command("127.0.0.1", stranger.port, "SSH-", 1.0), bindir)
    assert interpret_check(r.returncode, r.out, r.err, False) == MISMATCH
    r = run_remote(check_command("localhost", stranger.port, "SSH-", 1.0), bindir)
    assert interpret_check(r.returncode, r.out, r.err, False) == OK


# ----------------------------------------------------------------------------- quoting
@pytest.mark.parametrize("bind", ["127.0.0.1;id", "localhost$(id)", "`id`", "a b", "host.example", "::1%eth0",
                                  "127.0.0.1\n", "'", "-oProxyCommand=id"])
def test_bad_bind_never_reaches_a_shell(bind):
    with pytest.raises(ValueError):
        check_command(bind, 22, None, 1.0)


@pytest.mark.parametrize("port", [0, 65536, -1, "22;id", 22.5, True])
def test_bad_port_rejected(port):
    with pytest.raises(ValueError):
        check_command("127.0.0.1", port, None, 1.0)
    with pytest.raises(ValueError):
        reclaim_command(port)


@pytest.mark.parametrize("owner", ["a;b", "$(id)", "a b", "x" * 65, "`id`", "a'b"])
def test_bad_owner_rejected(owner):
    with pytest.raises(ValueError):
        session_command([2222], owner=owner)
    with pytest.raises(ValueError):
        reclaim_command(2222, owner=owner)


@pytest.mark.parametrize("state_dir", ["relative/dir", "$HOME/../etc", "/tmp/a b", "/tmp/$(id)", "$HOME/`id`",
                                       "/tmp/a;b", "$USER/x", "/tmp/../etc"])
def test_bad_state_dir_rejected(state_dir):
    with pytest.raises(ValueError):
        session_command([2222], state_dir=state_dir)


def test_config_values_are_separate_quoted_words():
    cmd = check_command("::1", 2222, "SSH-'$(touch /tmp/x)`id`\"", 2.5, grace=0.5)
    words = shlex.split(cmd)
    assert words[:4] == ["exec", "sh", "-c", payload.CHECK_SH]
    assert words[4:10] == ["sshkeep-check", "::1", "2222", "SSH-'$(touch /tmp/x)`id`\"".encode().hex(),
                           "2.500", "0.500"]
    assert words[11:] == [remote.PY_CHECK, remote.PERL_CHECK, remote.BASH_CHECK]
    assert "touch" not in cmd and "\n" not in cmd
    words = shlex.split(session_command([2222, 8022], "$HOME/.sshkeep", "router1.t1"))
    assert words[:5] == ["exec", "sh", "-c", payload.SESSION_SH, "sshkeep-session"]
    assert words[5:] == ["$HOME/.sshkeep", "router1.t1", "-", "-", "2222", "8022"]  # $HOME left for the server
    assert '"$HOME"/' in session_command([1], "$HOME/.sshkeep")
    words = shlex.split(session_command([2222], "/s", "0123abcd", host="r1;$(id)", tunnel="t`id` x"))
    assert words[5:] == ["/s", "0123abcd", "r1___id_", "t_id__x", "2222"]  # for people: folded, never code
    words = shlex.split(reclaim_command(2222, "/var/run/sk", "router1.t1"))
    assert words[3] == payload.RECLAIM_SH
    assert words[4:] == ["sshkeep-reclaim", "/var/run/sk", "router1.t1", "2222", "-", "-"]
    words = shlex.split(reclaim_command(2222, "/var/run/sk", "abcd1234", pid=4242, start="987654"))
    assert words[7:] == ["2222", "4242", "987654"]


@pytest.mark.parametrize("pid, start", [("1;id", "5"), (-1, "5"), (5, "$(id)"), (5, "1 2"), (5, "١٢")])
def test_bad_reclaim_session_rejected(pid, start):
    with pytest.raises(ValueError):
        reclaim_command(2222, owner="abcd1234", pid=pid, start=start)


@pytest.mark.parametrize("name", ["tünnel", "Straße", "☃", "", "a b\nc", "x" * 200])
def test_any_tunnel_or_host_name_works(name):
    """Names are recorded for people only: any text folds to one ASCII word (was: ValueError, exit 70)."""
    words = shlex.split(session_command([2222], "/s", "abcd1234", host=name, tunnel=name))
    assert len(words) == 10
    for w in words[7:9]:
        assert w.isascii() and 1 <= len(w) <= 64 and " " not in w
    assert shlex.split(session_command([1], "/s", "abcd1234", tunnel="tünnel"))[8] == "tunnel"


def test_hostile_banner_runs_as_data_only(tmp_path, peers):
    """Assert on what ran: a logging python3 shim records its argv; no file appears; nothing else ran."""
    bindir = make_bin(str(tmp_path / "bin"), "dash", [])
    log = tmp_path / "argv.log"
    shim = os.path.join(bindir, "python3")
    with open(shim, "w") as f:
        f.write("#!/usr/bin/python3\nimport os, sys, json\n"
                "open(%r, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
                "os.execv('/usr/bin/python3', ['python3'] + sys.argv[1:])\n" % str(log))
    os.chmod(shim, 0o755)
    pwned = tmp_path / "pwned"
    banner = "x'$(touch %s)`touch %s`\"; touch %s" % (pwned, pwned, pwned)
    port = peers("send:SSH-2.0-x\r\n").port
    r = run_remote(check_command("127.0.0.1", port, banner, 1.0), bindir)
    assert interpret_check(r.returncode, r.out, r.err, False) == MISMATCH
    assert not pwned.exists()
    import json
    (argv,) = [json.loads(l) for l in log.read_text().splitlines()]
    assert argv == ["-c", remote.PY_CHECK, "127.0.0.1", str(port), banner.encode().hex(), "1.000", "0.300"]


# ----------------------------------------------------------------------------- interpreting
@pytest.mark.parametrize("rc,out,err,timed_out,kind,want", [
    (80, "sshkeep-check 80 python3 127.0.0.1\n", "", False, "openssh", OK),
    (81, "sshkeep-check 81 perl 127.0.0.1\n", "", False, "dropbear", REFUSED),
    (82, "", "", False, "openssh", CLOSED),              # our code, marker lost
    (84, "sshkeep-check 84 bash 127.0.0.1\n", "", False, "openssh", MISMATCH),
    (85, "sshkeep-check 85 none -\n", "", False, "dropbear", NO_INTERPRETER),
    (86, "sshkeep-check 86 python3 ::1\n", "", False, "openssh", ERROR),
    (255, "", "ssh: connect to host 10.0.0.2 port 22: Connection refused\n", False, "openssh", UNREACHABLE),
    (1, "", "dbclient: Exited: Error connecting: Connection refused\n", False, "dropbear", UNREACHABLE),
    (1, "", "", False, "dropbear", UNREACHABLE),
    (1, "", "ssh: Connection to tunnel@hub:22 exited: No auth methods could be used.\n", False, "dropbear",
     UNREACHABLE),                                      # dropbearmulti called as `ssh` on OpenWrt
    (None, "", "", True, "openssh", UNREACHABLE),       # our timeout on the exec
    (-9, "", "", True, "dropbear", UNREACHABLE),
    (1, "This account is currently not available.\n", "", False, "openssh", NO_COMMAND),
    (1, "", "This account is currently not available.\n", False, "dropbear", NO_COMMAND),
    (127, "", "sh: 1: exec: sh: not found\n", False, "openssh", NO_COMMAND),
    (0, "forced command output\n", "", False, "openssh", NO_COMMAND),
    (255, "sshkeep-check 82 python3 127.0.0.1\n", "", False, "openssh", CLOSED),  # the marker wins
])
def test_interpret_check_table(rc, out, err, timed_out, kind, want):
    assert interpret_check(rc, out, err, timed_out, kind) == want


def test_failed_listen_port_from_real_client_messages():
    assert remote.failed_listen_port("Error: remote port forwarding failed for listen port 20022\r\n") == 20022
    assert remote.failed_listen_port(
        "\ndbclient: Connection to sktunnel@10.213.115.2:22 exited: Remote TCP forward request failed "
        "(port 20022 -> 127.0.0.1:46709)\n") == 20022
    assert remote.failed_listen_port("ssh: connect to host h port 22: Connection refused") is None


def test_interpret_reclaim_table():
    assert interpret_reclaim(90, "sshkeep-reclaim ended 4242\nsshkeep-reclaim 90\n", "", False) == (RECLAIMED, 4242)
    assert interpret_reclaim(91, "sshkeep-reclaim 91\n", "", False) == (NOTHING, None)
    assert interpret_reclaim(92, "sshkeep-reclaim other-uid 7\nsshkeep-reclaim 92\n", "", False) == (NOT_OURS, None)
    held = "sshkeep-reclaim held 77 0123abcd 1764650000 OpenWrt t1\nsshkeep-reclaim 93\n"
    assert interpret_reclaim(93, held, "", False) == (HELD, None)
    assert remote.reclaim_holders(held) == [{"pid": 77, "box": "0123abcd", "since": 1764650000, "host": "OpenWrt",
                                             "tunnel": "t1"}]
    assert remote.reclaim_holders("sshkeep-reclaim held 77 x - h t\n")[0]["since"] is None
    assert remote.reclaim_holders("sshkeep-reclaim held 77 \x1b[2J - h\x07 t\n")[0] == {
        "pid": 77, "box": "__2J", "since": None, "host": "h_", "tunnel": "t"}
    assert interpret_reclaim(255, "", "Connection timed out", False) == (UNREACHABLE, None)
    assert interpret_reclaim(None, "", "", True) == (UNREACHABLE, None)
    assert interpret_reclaim(1, "", "dbclient: Exited", False, "dropbear") == (UNREACHABLE, None)
    assert interpret_reclaim(0, "hello from a forced command\n", "", False) == (NO_COMMAND, None)
    assert parse_ready("sshkeep-ready 1234 ok") == (1234, True, None)
    assert parse_ready("sshkeep-ready 1234 nostate") == (1234, False, None)
    assert parse_ready("sshkeep-ready 1234 ok 5678") == (1234, True, "5678")
    assert parse_ready("sshkeep-ready 1234 ok 0") == (1234, True, None)
    assert parse_ready("Welcome to the server") is None


# ----------------------------------------------------------------------------- session + reclaim
LOOKALIKE = "echo sshkeep-ready $PPID ok; read x"  # a session process that registers nothing


@pytest.mark.parametrize("shell", ["dash", "bash", "busybox"])
def test_session_registers_and_reclaim_ends_it(tmp_path, sessions, shell):
    state = str(tmp_path / "state")
    before = int(time.time())
    s = sessions(session_command([2222, 8022], state, "0123abcd", host="OpenWrt", tunnel="tünnel"), shell=shell)
    assert s.ready == (s.pid, True, starttime(s.pid))
    for port in (2222, 8022):
        with open(os.path.join(state, "rport-%d-%d" % (port, s.pid))) as f:
            words = f.read().split(" ")
        since = int(words[5][len("since="):])
        assert words[:5] + words[6:] == ["v1", "box=0123abcd", "host=OpenWrt", "tunnel=tunnel",
                                         "start=%s" % starttime(s.pid), "ports=2222,8022\n"]
        assert before <= since <= time.time() + 1
    assert oct(os.stat(state).st_mode & 0o777) == "0o700"
    bindir = make_bin(str(tmp_path / "bin"), shell, [])
    r = run_remote(reclaim_command(8022, state, "0123abcd"), bindir)   # no session named: nothing ended
    assert interpret_reclaim(r.returncode, r.out, r.err, False) == (HELD, None), (r.out, r.err)
    assert s.proc.poll() is None
    r = run_remote(reclaim_command(8022, state, "0123abcd", pid=s.pid, start=s.ready[2]), bindir)
    assert interpret_reclaim(r.returncode, r.out, r.err, False) == (RECLAIMED, s.pid), (r.out, r.err)
    assert s.proc.wait(3) == -15  # TERM, as sshd gets it
    assert not os.path.exists(os.path.join(state, "rport-8022-%d" % s.pid))
    s.close()  # stdin EOF: the orphaned session script cleans up its other files
    wait_until(lambda: not os.listdir(state), 3, 0.05, what="the session to remove its files")


def test_session_removes_its_files_when_stdin_closes(tmp_path, sessions):
    state = str(tmp_path / "state")
    s = sessions(session_command([2222], state, "box1.t1"))
    assert os.listdir(state) == ["rport-2222-%d" % s.pid]
    s.proc.stdin.close()
    s.proc.stdin = None
    assert s.proc.wait(3) == 0
    assert os.listdir(state) == []


def test_dropbear_like_session_process_is_recognised(tmp_path, sessions):
    state = str(tmp_path / "state")
    s = sessions(session_command([2222], state, "o"), argv0="/usr/sbin/dropbear -F -E -s -p 2222")
    bindir = make_bin(str(tmp_path / "bin"), "dash", [])
    r = run_remote(reclaim_command(2222, state, "o", pid=s.pid, start=s.ready[2]), bindir)
    assert interpret_reclaim(r.returncode, r.out, r.err, False) == (RECLAIMED, s.pid)


@pytest.mark.parametrize("shell", ["dash", "bash", "busybox"])
def test_reclaim_leaves_other_owners_alone(tmp_path, sessions, shell):
    """Same hostname, same tunnel name, same port, another box: never ended, even given its exact
    pid and start time; the reclaim says who holds the port instead."""
    state = str(tmp_path / "state")
    s = sessions(session_command([2222], state, "box2", host="OpenWrt", tunnel="t1"), shell=shell)
    bindir = make_bin(str(tmp_path / "bin"), shell, [])
    r = run_remote(reclaim_command(2222, state, "box1", pid=s.pid, start=s.ready[2]), bindir)
    assert interpret_reclaim(r.returncode, r.out, r.err, False) == (HELD, None)
    (h,) = remote.reclaim_holders(r.out)
    assert (h["pid"], h["box"], h["host"], h["tunnel"]) == (s.pid, "box2", "OpenWrt", "t1") and h["since"]
    r = run_remote(reclaim_command(2222, state, "box2", pid=s.pid, start=str(int(s.ready[2]) + 1)), bindir)
    assert interpret_reclaim(r.returncode, r.out, r.err, False) == (HELD, None)  # not the announced session
    r = run_remote(reclaim_command(2222, state, "box2", pid=s.pid + 100000, start=s.ready[2]), bindir)
    assert interpret_reclaim(r.returncode, r.out, r.err, False) == (HELD, None)
    assert s.proc.poll() is None and os.listdir(state) == ["rport-2222-%d" % s.pid]


def test_planted_record_is_data_only(tmp_path, sessions):
    """A record with shell text in it (another tool, a hostile user of the account) runs nothing."""
    state = tmp_path / "state"
    state.mkdir()
    s = sessions(LOOKALIKE, argv0="sshd: tester@notty")
    (state / ("rport-2222-%d" % s.pid)).write_text(
        "v1 box=$(touch%s/pwned) host=* tunnel=`id` start=%s since=; ports=2222\n" % (tmp_path, starttime(s.pid)))
    bindir = make_bin(str(tmp_path / "bin"), "dash", [])
    r = run_remote(reclaim_command(2222, str(state), "o", pid=s.pid, start=starttime(s.pid)), bindir)
    assert interpret_reclaim(r.returncode, r.out, r.err, False) == (HELD, None), (r.out, r.err)
    assert "sshkeep-reclaim held %d $(touch%s/pwned) ; * `id`" % (s.pid, tmp_path) in r.out
    assert not (tmp_path / "pwned").exists() and s.proc.poll() is None


def test_reclaim_refuses_a_process_that_is_not_a_session(tmp_path, sessions):
    state = str(tmp_path / "state")
    s = sessions(session_command([2222], state, "o"), argv0="some-daemon --foo")
    bindir = make_bin(str(tmp_path / "bin"), "dash", [])
    r = run_remote(reclaim_command(2222, state, "o", pid=s.pid, start=s.ready[2]), bindir)
    assert interpret_reclaim(r.returncode, r.out, r.err, False) == (NOT_OURS, None)
    assert "not-a-session %d" % s.pid in r.out
    assert s.proc.poll() is None


def test_reclaim_forgets_dead_and_recycled_pids(tmp_path, sessions):
    state = tmp_path / "state"
    state.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (state / ("rport-2222-%d" % dead.pid)).write_text("o 12345\n")
    s = sessions(LOOKALIKE, argv0="sshd: tester@notty")  # alive, a session lookalike...
    (state / ("rport-2222-%d" % s.pid)).write_text("o 1\n")  # ...but not the one that wrote this
    bindir = make_bin(str(tmp_path / "bin"), "dash", [])
    r = run_remote(reclaim_command(2222, str(state), "o"), bindir)
    assert interpret_reclaim(r.returncode, r.out, r.err, False) == (NOTHING, None)
    assert os.listdir(str(state)) == []
    assert s.proc.poll() is None


def test_reclaim_refuses_another_uid(sessions):
    """The dropbear-server case for a non-root user: the session process runs as root."""
    import pathlib
    import tempfile
    top = tempfile.mkdtemp(prefix="sk-reclaim-uid-")
    try:
        _reclaim_other_uid(pathlib.Path(top), sessions)
    finally:
        shutil.rmtree(top)


def _reclaim_other_uid(tmp_path, sessions):
    os.chmod(str(tmp_path), 0o755)
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(str(state), 0o777)
    s = sessions(LOOKALIKE, argv0="/usr/sbin/dropbear -F -E -s")  # root-owned, like dropbear's
    f = state / ("rport-2222-%d" % s.pid)
    f.write_text("o %s\n" % starttime(s.pid))
    os.chmod(str(f), 0o644)
    bindir = make_bin(str(tmp_path / "bin"), "dash", [])
    os.chmod(bindir, 0o755)
    r = run_remote(reclaim_command(2222, str(state), "o", pid=s.pid, start=starttime(s.pid)), bindir, user=65534)
    assert interpret_reclaim(r.returncode, r.out, r.err, False) == (NOT_OURS, None), (r.out, r.err)
    assert "other-uid %d" % s.pid in r.out
    assert s.proc.poll() is None


def test_reclaim_with_no_state_dir(tmp_path):
    bindir = make_bin(str(tmp_path / "bin"), "dash", [])
    r = run_remote(reclaim_command(2222, str(tmp_path / "none"), "o"), bindir)
    assert interpret_reclaim(r.returncode, r.out, r.err, False) == (NOTHING, None)


def test_session_without_writable_state_still_runs(tmp_path, sessions):
    s = sessions(session_command([2222], "/proc/sshkeep-cannot", "o"))
    assert s.ready[:2] == (s.pid, False)


def test_shared_verdict_words_and_ip_literals_match_probe():
    """agent.hubside does not import agent.run: the words both use agree; the one IP literal rule
    (core.values) serves both."""
    from agent.run import probe
    assert (remote.REFUSED, remote.CLOSED, remote.ERROR) == (probe.REFUSED, probe.CLOSED, probe.ERROR)
    for text in ("127.0.0.1", "::1", "fe80::1"):
        assert values.is_ip_literal(text), text
    for text in ("1.2.3", "localhost", "::1%lo", "[::1]", "", "1.2.3.4 "):
        assert not values.is_ip_literal(text), text
