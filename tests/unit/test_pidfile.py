"""agent.run.pidfile, agent.run.procs, agent.run.daemon: real processes, real locks, bounded waits."""

import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from polling import wait_for

from agent.run import daemon, pidfile, procs
from agent.errors import EX_CANTCREAT, EX_TEMPFAIL, AlreadyRunning, SshkeepError

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, PYTHONPATH=TOP)


@pytest.fixture
def tmp():
    with tempfile.TemporaryDirectory(prefix="sshkeep-pid-%d-" % os.getpid()) as d:
        yield d


def py(code, **kw):
    return subprocess.Popen([sys.executable, "-c", code], env=ENV, cwd=TOP, **kw)


def kill_wait(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=5)


# -- pidfile --------------------------------------------------------------------------

def test_acquire_writes_pid_locks_and_release_unlinks(tmp):
    path = os.path.join(tmp, "a.pid")
    assert not pidfile.is_locked(path) and pidfile.read_pid(path) is None
    with pidfile.PidFile(path) as pf:
        assert pidfile.read_pid(path) == os.getpid()
        assert pidfile.is_locked(path)          # probe from the holder's own process
        assert pidfile.lock_holder(path) == os.getpid()
        assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)
        assert pf.fd is not None and not os.get_inheritable(pf.fd)
    assert not os.path.exists(path)
    assert not pidfile.is_locked(path)


def test_stale_file_with_live_unrelated_pid_is_taken_over(tmp):
    path = os.path.join(tmp, "stale.pid")
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        with open(path, "w") as f:
            f.write("%d\n" % sleeper.pid)           # alive, but holds no lock
        assert not pidfile.is_locked(path)
        with pidfile.PidFile(path):
            assert pidfile.read_pid(path) == os.getpid()
        assert sleeper.poll() is None               # the unrelated process was not touched
    finally:
        kill_wait(sleeper)


def test_garbage_and_long_content_taken_over(tmp):
    path = os.path.join(tmp, "g.pid")
    with open(path, "w") as f:
        f.write("not a pid\n" + "9" * 100)
    with pidfile.PidFile(path):
        with open(path) as f:
            assert f.read() == "%d\n" % os.getpid()


def test_second_acquire_in_same_process_is_already_running(tmp):
    path = os.path.join(tmp, "b.pid")
    with pidfile.PidFile(path):
        with pytest.raises(AlreadyRunning) as info:
            pidfile.PidFile(path).acquire()
        assert info.value.pid == os.getpid() and info.value.code == EX_TEMPFAIL == 75
        assert "already running (pid %d" % os.getpid() in str(info.value)
        assert pidfile.read_pid(path) == os.getpid()  # the loser did not truncate it


def test_second_agent_process_exits_75_with_holder_pid(tmp):
    path = os.path.join(tmp, "c.pid")
    with pidfile.PidFile(path):
        code = ("import sys\nfrom agent import errors\nfrom agent.run import pidfile\n"
                "try:\n    pidfile.PidFile(%r).acquire()\n"
                "except errors.AlreadyRunning as e:\n    print(e.pid); sys.exit(e.code)\n" % path)
        out = subprocess.run([sys.executable, "-c", code], env=ENV, cwd=TOP, stdout=subprocess.PIPE,
                             timeout=20)
        assert out.returncode == 75 and int(out.stdout) == os.getpid()


def test_pidfile_freed_when_holder_is_sigkilled(tmp):
    path = os.path.join(tmp, "k.pid")
    holder = py("from agent.run import pidfile; import time\npidfile.PidFile(%r).acquire()\n"
                "print('ok', flush=True); time.sleep(60)" % path, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"ok\n"
        assert pidfile.is_locked(path) and pidfile.read_pid(path) == holder.pid
        holder.kill()
        holder.wait(timeout=5)
        assert not pidfile.is_locked(path)
        assert pidfile.read_pid(path) == holder.pid  # file left behind, content stale
        with pidfile.PidFile(path):
            assert pidfile.read_pid(path) == os.getpid()
    finally:
        kill_wait(holder)


def test_symlink_is_refused_and_target_untouched(tmp):
    target = os.path.join(tmp, "victim")
    with open(target, "w") as f:
        f.write("precious\n")
    link = os.path.join(tmp, "l.pid")
    os.symlink(target, link)
    with pytest.raises(SshkeepError) as info:
        pidfile.PidFile(link).acquire()
    assert info.value.code == EX_CANTCREAT and "symbolic link" in str(info.value)
    with open(target) as f:
        assert f.read() == "precious\n"
    dangling = os.path.join(tmp, "d.pid")
    os.symlink(os.path.join(tmp, "would-be-created"), dangling)
    with pytest.raises(SshkeepError):
        pidfile.PidFile(dangling).acquire()
    assert not os.path.exists(os.path.join(tmp, "would-be-created"))
    assert pidfile.read_pid(link) is None and not pidfile.is_locked(link)


def test_directory_and_fifo_refused(tmp):
    d = os.path.join(tmp, "dir.pid")
    os.mkdir(d)
    with pytest.raises(SshkeepError):
        pidfile.PidFile(d).acquire()
    fifo = os.path.join(tmp, "fifo.pid")
    os.mkfifo(fifo)
    with pytest.raises(SshkeepError) as info:
        pidfile.PidFile(fifo).acquire()
    assert "not a regular file" in str(info.value)
    assert pidfile.read_pid(fifo) is None and not pidfile.is_locked(fifo)


def test_pidfile_of_another_user_is_refused(tmp):
    path = os.path.join(tmp, "other.pid")
    with open(path, "w") as f:
        f.write("1\n")
    os.chown(path, 65534, 65534)
    with pytest.raises(SshkeepError) as info:
        pidfile.PidFile(path).acquire()
    assert info.value.code == 77 and "belongs to uid 65534" in str(info.value)


def test_mode_is_0644_whatever_the_umask(tmp):
    path = os.path.join(tmp, "m.pid")
    old = os.umask(0o077)
    try:
        with pidfile.PidFile(path):
            assert os.stat(path).st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


def test_missing_directory_is_cantcreat(tmp):
    with pytest.raises(SshkeepError) as info:
        pidfile.PidFile(os.path.join(tmp, "nope", "x.pid")).acquire()
    assert info.value.code == EX_CANTCREAT


RACER = """
import os, sys
from agent.run import pidfile
from agent import errors
go, hold = int(sys.argv[1]), int(sys.argv[2])
open(sys.argv[3] + ".ready-%d" % os.getpid(), "w").close()
os.read(go, 1)  # blocks until the test closes the other end: every racer is released at once
try:
    pf = pidfile.PidFile(sys.argv[4]).acquire()
except errors.AlreadyRunning as e:
    print("lost", e.pid, flush=True)
    sys.exit(e.code)
print("won", os.getpid(), flush=True)
os.read(hold, 1)  # holds the pidfile until the test has seen every loser end
pf.release()
"""


def test_ten_racers_exactly_one_wins(tmp):
    ready = os.path.join(tmp, "go")
    path = os.path.join(tmp, "race.pid")
    go_r, go_w = os.pipe()
    hold_r, hold_w = os.pipe()
    try:
        racers = [subprocess.Popen([sys.executable, "-c", RACER, str(go_r), str(hold_r), ready, path], env=ENV,
                                   cwd=TOP, stdout=subprocess.PIPE, pass_fds=(go_r, hold_r)) for _ in range(10)]
    finally:
        os.close(go_r)
        os.close(hold_r)
    try:
        # every racer has started and waits at the barrier (a read on a pipe); closing it releases them together
        assert wait_for(lambda: len([n for n in os.listdir(tmp) if n.startswith("go.ready-")]) == len(racers), 20), \
            "the racers did not all start"
        os.close(go_w)
        go_w = None
        # the losers end at once; the winner holds the pidfile until then (no fixed sleep)
        wait_for(lambda: sum(p.poll() is not None for p in racers) >= len(racers) - 1, 20)
        os.close(hold_w)
        hold_w = None
        outs = [(p.communicate(timeout=20)[0].decode().split(), p.returncode) for p in racers]
    finally:
        for fd in (go_w, hold_w):
            if fd is not None:
                os.close(fd)
        for p in racers:
            kill_wait(p)
    winners = [o for o, rc in outs if o and o[0] == "won" and rc == 0]
    losers = [o for o, rc in outs if o and o[0] == "lost" and rc == 75]
    assert len(winners) == 1, outs
    assert len(losers) == 9, outs
    # every loser named the winner (it waits briefly for the pid to be written)
    assert {o[1] for o in losers} == {winners[0][1]}, outs


# -- procs ----------------------------------------------------------------------------

@pytest.mark.parametrize("argv,expected", [
    (["/usr/bin/python3", "/usr/lib/sshkeep/sshkeep.pyz", "run", "-c", "/etc/config/sshkeep"], True),
    (["python3", "-u", "/usr/bin/sshkeep.pyz", "check"], True),
    (["python3.11", "-W", "ignore", "sshkeep.pyz", "run"], True),
    (["/usr/bin/sshkeep", "run"], True),
    (["sshkeep.pyz", "stop"], True),
    (["python3", "-m", "agent", "run"], True),
    (["python3", "-magent", "run"], True),
    (["python3", "-m", "sshkeep", "run"], True),
    (["/root/.pyenv/versions/3.8.18/bin/python3.8", "build/sshkeep.pyz", "run"], True),
    (["ssh", "-i", "/etc/sshkeep/id_ed25519", "-F", "/etc/sshkeep/sshkeep.conf", "hub"], False),
    (["dbclient", "-N", "-R", "2222:localhost:22", "sshkeep@hub"], False),
    (["python3", "-c", "import sshkeep"], False),
    (["python3", "/usr/bin/other.py", "sshkeep.pyz"], False),
    (["vi", "/etc/config/sshkeep"], False),
    (["/bin/sh", "/etc/init.d/sshkeep", "start"], False),
    (["python3", "-m", "http.server"], False),
    (["python3"], False),
    ([], False),
    (None, False),
])
def test_looks_like_sshkeep(argv, expected):
    assert procs.looks_like_sshkeep(argv) is expected


def test_cmdline_and_is_sshkeep_on_real_processes(tmp):
    script = os.path.join(tmp, "sshkeep.pyz")
    with open(script, "w") as f:
        f.write("import time\nprint('ok', flush=True)\ntime.sleep(30)\n")
    agent = subprocess.Popen([sys.executable, script, "run"], stdout=subprocess.PIPE)
    other = subprocess.Popen(["sleep", "30"])
    try:
        assert agent.stdout.readline() == b"ok\n"
        assert procs.cmdline(agent.pid) == [sys.executable, script, "run"]
        assert procs.is_sshkeep(agent.pid)
        assert wait_for(lambda: procs.cmdline(other.pid) == ["sleep", "30"])  # argv lands after Popen returns
        assert not procs.is_sshkeep(other.pid)
        assert isinstance(procs.starttime(other.pid), int)
    finally:
        kill_wait(agent)
        kill_wait(other)
    assert procs.cmdline(other.pid) is None and not procs.alive(other.pid)


def test_stop_pid_plain_child_stops_on_term():
    child = subprocess.Popen(["sleep", "30"])
    try:
        t0 = time.monotonic()
        assert procs.stop_pid(child.pid, timeout=3.0) == "stopped"
        assert time.monotonic() - t0 < 2.0
        assert child.wait(timeout=2) == -signal.SIGTERM
    finally:
        kill_wait(child)


def test_stop_pid_escalates_to_kill_for_term_ignoring_child():
    child = py("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
               "print('ready', flush=True)\ntime.sleep(60)", stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"ready\n"
        t0 = time.monotonic()
        assert procs.stop_pid(child.pid, timeout=0.5) == "killed"
        took = time.monotonic() - t0
        assert 0.45 < took < 3.0, took
        assert child.wait(timeout=2) == -signal.SIGKILL
    finally:
        kill_wait(child)


def test_stop_pid_without_kill_and_not_running():
    child = py("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
               "print('ready', flush=True)\ntime.sleep(60)", stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"ready\n"
        assert procs.stop_pid(child.pid, timeout=0.2, kill_after=False) == "running"
        assert child.poll() is None
    finally:
        kill_wait(child)
    assert procs.stop_pid(child.pid) == "not running"


def test_reap_orphans_only_exact_pid_and_cmdline(tmp):
    a = subprocess.Popen(["sleep", "31"])
    b = subprocess.Popen(["sleep", "32"])
    c = subprocess.Popen(["sleep", "33"])
    try:
        wait_for(lambda: all(procs.cmdline(p.pid) for p in (a, b, c)))
        gone = subprocess.Popen(["true"])
        gone.wait(timeout=5)
        records = [
            {"pid": a.pid, "cmdline": ["sleep", "31"]},                       # exact: ended
            {"pid": b.pid, "cmdline": ["sleep", "99"]},                       # pid reused by another command
            {"pid": c.pid, "cmdline": ["sleep", "33"], "starttime": 1},       # same argv, other start time
            {"pid": gone.pid, "cmdline": ["true"]},                           # gone
            {"pid": os.getpid(), "cmdline": procs.cmdline(os.getpid())},      # never ourselves
            {"pid": "x"}, "junk", {"cmdline": ["sleep"]},
        ]
        ended = procs.reap_orphans(records, timeout=2.0)
        assert ended == [records[0]]
        assert a.wait(timeout=3) == -signal.SIGTERM
        assert b.poll() is None and c.poll() is None
        ended = procs.reap_orphans([{"pid": c.pid, "cmdline": ["sleep", "33"],
                                     "starttime": procs.starttime(c.pid)}])
        assert len(ended) == 1 and c.wait(timeout=3) == -signal.SIGTERM
    finally:
        for p in (a, b, c):
            kill_wait(p)


def test_reap_orphans_kills_term_ignoring_orphan():
    child = py("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
               "print('ready', flush=True)\ntime.sleep(60)", stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"ready\n"
        rec = {"pid": child.pid, "cmdline": procs.cmdline(child.pid)}
        t0 = time.monotonic()
        assert procs.reap_orphans([rec], timeout=0.3) == [rec]
        assert child.wait(timeout=3) == -signal.SIGKILL
        assert time.monotonic() - t0 < 3
    finally:
        kill_wait(child)


# -- daemon ---------------------------------------------------------------------------

DAEMON = """
import os, sys, time, json
from agent.run import daemon, pidfile
from agent import errors
mode, path, info = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    n = daemon.daemonize(ready_timeout=float(os.environ.get("READY", "10")))
except daemon.Detached as d:
    sys.stdout.write("%d %s %s\\n" % (d.code, d.pid, d))
    sys.exit(d.code)
# the daemon
try:
    pf = pidfile.PidFile(path).acquire()
except errors.SshkeepError as e:
    n.fail(str(e), e.code)
    sys.exit(e.code)
fds = {fd: os.readlink("/proc/self/fd/%d" % fd) for fd in (0, 1, 2)}
with open(info, "w") as f:
    json.dump({"pid": os.getpid(), "ppid": os.getppid(), "sid": os.getsid(0), "pgid": os.getpgid(0),
               "cwd": os.getcwd(), "umask": os.umask(0o022), "fds": fds}, f)
if mode == "ok":
    n.ok()
elif mode == "fail":
    n.fail("config broken: line 3", 78)
    sys.exit(78)
elif mode == "silent":
    sys.exit(3)
elif mode == "slow":
    time.sleep(5)
time.sleep(30)
"""


def run_daemon(tmp, mode, ready="10"):
    path = os.path.join(tmp, "d.pid")
    info = os.path.join(tmp, "info.json")
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", DAEMON, mode, path, info], env=dict(ENV, READY=ready),
                         cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    return out, path, info, time.monotonic() - t0


def test_daemonize_ok_detaches_and_reports(tmp):
    import json
    out, path, info, took = run_daemon(tmp, "ok")
    pid = pidfile.read_pid(path)
    try:
        assert out.returncode == 0, out
        code, reported, _ = out.stdout.decode().split(" ", 2)
        assert int(reported) == pid
        assert pidfile.is_locked(path) and procs.alive(pid)
        with open(info) as f:
            d = json.load(f)
        assert d["pid"] == pid and d["sid"] != pid and d["pgid"] != os.getpgid(0)
        assert d["sid"] != os.getsid(0)
        assert d["cwd"] == "/" and d["umask"] == 0o022
        assert set(d["fds"].values()) == {"/dev/null"}
        assert took < 5
    finally:
        if pid:
            procs.stop_pid(pid, timeout=2)
    assert wait_for(lambda: not pidfile.is_locked(path))


def test_daemonize_fail_carries_code_and_message(tmp):
    out, path, _, _ = run_daemon(tmp, "fail")
    assert out.returncode == 78
    assert "config broken: line 3" in out.stdout.decode()
    assert wait_for(lambda: not pidfile.is_locked(path))


def test_daemonize_already_running_is_75(tmp):
    path = os.path.join(tmp, "d.pid")
    with pidfile.PidFile(path):
        out, _, _, _ = run_daemon(tmp, "ok")
    assert out.returncode == 75 and ("already running (pid %d" % os.getpid()) in out.stdout.decode()


def test_daemonize_silent_exit_is_reported(tmp):
    out, _, _, took = run_daemon(tmp, "silent")
    assert out.returncode == 70 and "without reporting" in out.stdout.decode()
    assert took < 5


def test_daemonize_ready_timeout_is_bounded(tmp):
    out, path, _, took = run_daemon(tmp, "slow", ready="0.5")
    pid = pidfile.read_pid(path)
    try:
        assert out.returncode == 70 and "did not report within" in out.stdout.decode()
        assert took < 4
    finally:
        if pid:
            procs.stop_pid(pid, timeout=2)


def test_notifier_is_once_only_and_survives_closed_pipe():
    r, w = os.pipe()
    n = daemon.Notifier(w)
    os.close(r)
    old = signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # python ignores SIGPIPE already; be explicit
    try:
        n.ok()        # EPIPE swallowed
        n.fail("x")   # no-op
    finally:
        signal.signal(signal.SIGPIPE, old)


@pytest.mark.parametrize("live,recorded,expected", [
    (["ssh", "-N", "hub"], ["ssh", "-N", "hub"], True),
    (["/bin/sh", "/usr/local/bin/ssh", "-N", "hub"], ["/usr/local/bin/ssh", "-N", "hub"], True),  # #! script
    (["/bin/sh", "/usr/local/bin/ssh", "-N", "hub"], ["ssh", "-N", "hub"], True),                 # found on PATH
    (["/usr/bin/env", "python3", "/x/ssh", "-N", "hub"], ["/x/ssh", "-N", "hub"], True),
    (["ssh", "-N", "hub2"], ["ssh", "-N", "hub"], False),
    (["/bin/sh", "/x/other", "-N", "hub"], ["/x/ssh", "-N", "hub"], False),
    (["a", "b", "c", "/x/ssh", "-N"], ["/x/ssh", "-N"], False),
    (["ssh", "-N", "hub", "extra"], ["ssh", "-N", "hub"], False),
    (None, ["ssh"], False),
    (["ssh"], [], False),
])
def test_same_command(live, recorded, expected):
    assert procs.same_command(live, recorded) is expected


def test_reap_orphans_matches_a_shebang_client(tmp):
    script = os.path.join(tmp, "ssh")
    with open(script, "w") as f:
        f.write("#!/bin/sh\ntrap 'exit 0' TERM\nwhile :; do sleep 0.1; done\n")
    os.chmod(script, 0o755)
    child = subprocess.Popen([script, "-N", "-R", "2222:127.0.0.1:22", "hub"])
    try:
        assert wait_for(lambda: procs.cmdline(child.pid) == ["/bin/sh", script, "-N", "-R", "2222:127.0.0.1:22", "hub"])
        rec = {"pid": child.pid, "cmdline": [script, "-N", "-R", "2222:127.0.0.1:22", "hub"]}
        assert procs.reap_orphans([dict(rec, cmdline=rec["cmdline"][:-1] + ["other"])]) == []
        assert procs.reap_orphans([rec]) == [rec]
        assert child.wait(timeout=3) in (0, -signal.SIGTERM, -signal.SIGKILL)
    finally:
        kill_wait(child)


def test_exec_child_never_holds_the_lock(tmp):
    """A SIGKILLed agent's orphaned ssh must not keep the pidfile locked (O_CLOEXEC), even when
    spawned with close_fds=False."""
    path = os.path.join(tmp, "x.pid")
    code = ("import subprocess, sys, time\nfrom agent.run import pidfile\npidfile.PidFile(%r).acquire()\n"
            "c = subprocess.Popen(['sleep', '30'], close_fds=False)\nprint(c.pid, flush=True)\ntime.sleep(60)"
            % path)
    holder = py(code, stdout=subprocess.PIPE)
    orphan = None
    try:
        orphan = int(holder.stdout.readline())
        assert pidfile.is_locked(path)
        holder.kill()
        holder.wait(timeout=5)
        assert procs.alive(orphan)
        assert not pidfile.is_locked(path)
    finally:
        kill_wait(holder)
        if orphan and procs.alive(orphan):
            os.kill(orphan, signal.SIGKILL)


def test_lock_taken_before_daemonize_survives_the_double_fork(tmp):
    path = os.path.join(tmp, "early.pid")
    code = ("import sys, time\nfrom agent.run import daemon, pidfile\npf = pidfile.PidFile(%r).acquire()\n"
            "try:\n    n = daemon.daemonize()\nexcept daemon.Detached as d:\n    print(d.pid); sys.exit(d.code)\n"
            "pf.write_pid()\nn.ok()\ntime.sleep(30)" % path)
    out = subprocess.run([sys.executable, "-c", code], env=ENV, cwd=TOP, stdout=subprocess.PIPE, timeout=30)
    pid = int(out.stdout)
    try:
        assert out.returncode == 0
        assert pidfile.is_locked(path) and pidfile.read_pid(path) == pid != os.getpid()
        assert procs.alive(pid)
    finally:
        procs.stop_pid(pid, timeout=2)
    assert wait_for(lambda: not pidfile.is_locked(path))


# -- lifecycle helpers ------------------------------------------------------------------

def test_state_age_prefers_monotonic_over_wall_clock(tmp):
    import json
    from agent import lifecycle
    pid, st = os.path.join(tmp, "s.pid"), os.path.join(tmp, "s.json")
    assert lifecycle.state_age(pid, st) == float("inf")
    open(pid, "w").close()
    os.utime(pid, (time.time() - 1000, time.time() - 1000))
    # wall clock jumped forward a year (NTP on a box without RTC), monotonic says 2 s ago: fresh
    with open(st, "w") as f:
        json.dump({"updated": time.time() - 365 * 86400, "monotonic": time.monotonic() - 2}, f)
    assert 1.5 < lifecycle.state_age(pid, st) < 10
    # wall clock jumped back: "updated" in the future, monotonic says BACK s ago: stale.
    # BACK stays below the uptime: a fresh CI machine may have booted less than 500 s ago.
    back = min(500.0, time.monotonic() / 2)
    with open(st, "w") as f:
        json.dump({"updated": time.time() + 365 * 86400, "monotonic": time.monotonic() - back}, f)
    assert back - 1 < lifecycle.state_age(pid, st) < back + 10
    # the same without a usable monotonic: the future "updated" is ignored, the pidfile's age counts
    with open(st, "w") as f:
        json.dump({"updated": time.time() + 365 * 86400, "monotonic": -5}, f)
    assert 999 < lifecycle.state_age(pid, st) < 1010
    # no monotonic key: "updated"; the pidfile's mtime counts as a sign of life too
    with open(st, "w") as f:
        json.dump({"updated": time.time() - 3000}, f)
    assert 999 < lifecycle.state_age(pid, st) < 1010
    with open(st, "w") as f:
        f.write("{broken")
    assert 999 < lifecycle.state_age(pid, st) < 1010
    # a pidfile dated in the future (clock stepped back since) is no sign of life either
    os.utime(pid, (time.time() + 86400, time.time() + 86400))
    assert lifecycle.state_age(pid, st) == float("inf")


def test_self_command_for_pyz_and_source_checkout(monkeypatch, tmp):
    from agent import lifecycle
    pyz = os.path.join(tmp, "sshkeep.pyz")
    open(pyz, "w").close()
    monkeypatch.setattr(sys, "argv", [pyz, "check"])
    assert lifecycle.self_command() == [sys.executable, pyz]
    monkeypatch.setattr(sys, "argv", [os.path.join(TOP, "agent", "__main__.py"), "check"])
    assert lifecycle.self_command() == [sys.executable, "-m", "agent"]


def test_lifecycle_against_standin_agent(tmp):
    """agent_pid / cmd_check / cmd_stop / reload directly, the agent being the stand-in (fixture)."""
    from agent import lifecycle
    fake = os.path.join(TOP, "tests", "support", "fixtures", "lifecycle", "fake_sshkeep.py")
    pidf, st = os.path.join(tmp, "l.pid"), os.path.join(tmp, "l.json")
    run_argv = ["run", "--pidfile", pidf, "--state", st]
    entry = [sys.executable, fake]
    assert lifecycle.agent_pid(pidf) is None
    started = []
    try:
        _standin_sequence(lifecycle, tmp, pidf, st, run_argv, entry, started)
    finally:
        for pid in started:  # SIGKILL works on a frozen (SIGSTOPped) process too
            if procs.alive(pid):
                kids = procs.children_of(pid)
                os.kill(pid, signal.SIGKILL)
                procs.reap_orphans(kids, timeout=1)


def _standin_sequence(lifecycle, tmp, pidf, st, run_argv, entry, started):
    import io
    out = io.StringIO()
    assert lifecycle.cmd_check(pidf, st, run_argv, 30, entry_argv=entry, out=out) == 0
    pid = lifecycle.agent_pid(pidf)
    started.append(pid)
    assert pid and "started agent pid %d" % pid in out.getvalue()
    out = io.StringIO()
    assert lifecycle.cmd_check(pidf, st, run_argv, 30, entry_argv=entry, out=out) == 0
    assert out.getvalue() == "" and lifecycle.agent_pid(pidf) == pid
    assert lifecycle.cmd_reload(pidf, out=out) == 0
    assert lifecycle.cmd_reconnect(pidf, out=out) == 0
    with pytest.raises(lifecycle.NotRunning):
        lifecycle.send_signal(os.path.join(tmp, "none.pid"), signal.SIGHUP)
    # hung: stale_after 0 -> replaced by a new agent
    os.kill(pid, signal.SIGSTOP)
    err = io.StringIO()
    assert lifecycle.cmd_check(pidf, st, run_argv + ["--hang"], 0.0, entry_argv=entry, out=out, err=err,
                               stop_timeout=0.5) == 0
    assert "is hung" in err.getvalue()
    new = lifecycle.agent_pid(pidf)
    started.append(new)
    assert new and new != pid and not procs.alive(pid)
    out = io.StringIO()
    assert lifecycle.cmd_stop(pidf, out=out) == 0
    assert "stopped pid %d" % new in out.getvalue() and not procs.alive(new)
    out = io.StringIO()
    assert lifecycle.cmd_stop(pidf, out=out) == 0 and "not running" in out.getvalue()


def test_children_of_lists_live_children_with_starttime():
    parent = py("import subprocess, time\nc = subprocess.Popen(['sleep', '30'])\nprint(c.pid, flush=True)\n"
                "time.sleep(30)", stdout=subprocess.PIPE)
    kid = None
    try:
        kid = int(parent.stdout.readline())
        # Popen returns once exec has begun, before the kernel fills in the new argv: until then
        # /proc/KID/cmdline is empty and children_of (rightly) skips it. Seen on a loaded CI machine.
        assert wait_for(lambda: procs.cmdline(kid) == ["sleep", "30"])
        recs = procs.children_of(parent.pid)
        assert recs == [{"pid": kid, "cmdline": ["sleep", "30"], "starttime": procs.starttime(kid)}]
        assert procs.children_of(kid) == []
    finally:
        kill_wait(parent)
        if kid and procs.alive(kid):
            os.kill(kid, signal.SIGKILL)
