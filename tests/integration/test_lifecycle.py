"""Process life of the REAL agent (build/sshkeep.pyz, `make build`): check (cron mode), stop,
SIGTERM/SIGKILL, orphans, pidfile takeover, reload.

The ssh client is a fake OpenSSH script (stays up like `ssh -N`, exits 0 on TERM; or fails at
once for the backoff state) unless the test takes the `lab` fixture (real sshd in a netns).
"""

import json
import re
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

import lightguard
from agentrun import BoxAgent
from polling import wait_for

from agent.run import pidfile, procs

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYZ = os.environ.get("SSHKEEP_PYZ") or os.path.join(TOP, "build", "sshkeep.pyz")

@pytest.fixture
def agent():
    with tempfile.TemporaryDirectory(prefix="sshkeep-life-%d-" % os.getpid()) as d:
        a = BoxAgent(d)
        try:
            yield a
        finally:
            a.cleanup()


def test_stop_with_no_agent(agent):
    rc, out, err = agent.cli("stop")
    assert rc == 0 and "not running" in out + err


def test_ten_simultaneous_checks_start_exactly_one_agent(agent):
    checks = [subprocess.Popen(agent.argv("check"), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, cwd=agent.tmp) for _ in range(10)]
    results = []
    try:
        for p in checks:
            out, err = p.communicate(timeout=60)
            results.append((p.returncode, out.decode() + err.decode()))
    finally:
        for p in checks:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [rc for rc, _ in results] == [0] * 10, results
    assert len([o for _, o in results if "started" in o]) == 1, results
    pid = agent.pid()
    assert pid and procs.is_sshkeep(pid)
    assert agent.agents() == [pid]
    # a healthy agent: check is quiet and changes nothing
    rc, out, err = agent.cli("check")
    assert (rc, out, err) == (0, "", "")
    assert agent.agents() == [pid]


def test_check_replaces_a_hung_agent(agent):
    rc, out, err = agent.cli("check")
    assert rc == 0, out + err
    old = agent.pid()
    assert wait_for(lambda: agent.children(of=old)), agent.state()
    kids = agent.children(of=old)
    os.kill(old, signal.SIGSTOP)  # hung: alive, holds the pidfile, never writes its state again
    try:
        st = agent.state()
        st["updated"] = time.time() - 3600
        st.pop("monotonic", None)
        with open(agent.state_path, "w") as f:
            json.dump(st, f)
        os.utime(agent.pidfile, (time.time() - 3600, time.time() - 3600))
        t0 = time.monotonic()
        rc, out, err = agent.cli("check", timeout=60)
        assert rc == 0, out + err
        assert "hung" in out + err
        assert time.monotonic() - t0 < 20
        new = agent.pid()
        assert new and new != old
        assert not procs.alive(old)
        assert not [k for k in kids if procs.alive(k)], "the hung agent's ssh is still running"
        assert agent.agents() == [new]
    finally:
        if procs.alive(old):
            os.kill(old, signal.SIGKILL)


def test_sigkill_then_new_agent_ends_old_ssh(agent):
    first = agent.foreground()
    assert wait_for(lambda: agent.pid() == first.pid)
    assert wait_for(lambda: agent.children(of=first.pid)), agent.state()
    old_kids = agent.children(of=first.pid)
    first.kill()
    first.wait(timeout=5)
    assert [k for k in old_kids if procs.alive(k)] == old_kids  # orphans keep holding the forwards
    second = agent.foreground()
    assert wait_for(lambda: agent.pid() == second.pid), second.stderr.read1(4000) if second.poll() else ""
    assert wait_for(lambda: not [k for k in old_kids if procs.alive(k)]), "old ssh survived the new agent"
    assert wait_for(lambda: agent.children(of=second.pid))
    assert not set(agent.children(of=second.pid)) & set(old_kids)


@pytest.mark.parametrize("mode", ["up", "fail"])
def test_sigterm_exits_quickly_and_leaves_no_child(agent, mode):
    """mode up: ssh running (connecting/up); fail: ssh keeps failing (backoff between attempts)."""
    agent.write_config(mode=mode)
    p = agent.foreground()
    assert wait_for(lambda: agent.pid() == p.pid)
    if mode == "up":
        assert wait_for(lambda: agent.children(of=p.pid)), agent.state()
    else:
        assert wait_for(lambda: agent.tunnel("hub").get("state") == "backoff"), agent.state()
    kids = agent.children(of=p.pid)
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    rc = p.wait(timeout=10)
    took = time.monotonic() - t0
    assert took < 5.0, took                      # procd's term_timeout
    assert rc == 0
    assert not [k for k in kids if procs.alive(k)]
    assert not pidfile.is_locked(agent.pidfile)


def child_pids(ppid):
    return [pid for pid, st in procs.processes() if len(st) > 1 and st[1] == str(ppid) and st[0] != "Z"]


def test_sigterm_mid_check_exits_quickly_and_leaves_no_child(agent):
    """A remote check (ssh exec) that never answers is running when TERM arrives."""
    agent.write_config(mode="up", interval=1, remote_checks=1, check="connect")
    p = agent.foreground()
    assert wait_for(lambda: agent.pid() == p.pid)
    # the tunnel's ssh plus a check job (another ssh) running at the same time
    assert wait_for(lambda: len(child_pids(p.pid)) >= 2, 15), (agent.state(), child_pids(p.pid))
    kids = child_pids(p.pid)
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=10) == 0
    assert time.monotonic() - t0 < 5.0
    assert not [k for k in kids if procs.alive(k)]


def test_stop_command_stops_the_agent_and_its_ssh(agent):
    rc, out, err = agent.cli("run", "--daemon")
    assert rc == 0, out + err
    pid = agent.pid()
    assert wait_for(lambda: agent.children(of=pid))
    kids = agent.children(of=pid)
    t0 = time.monotonic()
    rc, out, err = agent.cli("stop")
    assert rc == 0 and "stopped" in out + err, out + err
    assert time.monotonic() - t0 < 5.0
    assert not procs.alive(pid) and not [k for k in kids if procs.alive(k)]
    assert not pidfile.is_locked(agent.pidfile)


def test_second_run_is_already_running_75(agent):
    p = agent.foreground()
    assert wait_for(lambda: agent.pid() == p.pid)
    rc, out, err = agent.cli("run", timeout=20)
    assert rc == 75 and ("already running (pid %d" % p.pid) in err, (rc, out, err)
    rc, out, err = agent.cli("run", "--daemon", timeout=20)
    assert rc == 75 and ("already running (pid %d" % p.pid) in err, (rc, out, err)
    # the refused daemon reported before it exited: give it a moment to be gone
    assert wait_for(lambda: agent.agents() == [p.pid], 5), agent.agents()


def test_stale_pidfile_with_live_unrelated_pid_is_taken_over(agent):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        with open(agent.pidfile, "w") as f:
            f.write("%d\n" % sleeper.pid)
        rc, out, err = agent.cli("stop")                  # unlocked: not running, sleeper untouched
        assert rc == 0 and "not running" in out + err
        assert sleeper.poll() is None
        rc, out, err = agent.cli("run", "--daemon")
        assert rc == 0, out + err
        assert agent.pid() not in (None, sleeper.pid)
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_stop_refuses_a_locked_pidfile_of_another_program(agent):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nsys.path.insert(0, %r)\n"
                               "from agent.run.pidfile import PidFile\nPidFile(%r).acquire()\n"
                               "print('ok', flush=True)\ntime.sleep(60)" % (TOP, agent.pidfile)],
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"ok\n"
        rc, out, err = agent.cli("stop")
        assert rc == 77 and "not an sshkeep process" in err, (rc, out, err)
        assert holder.poll() is None
        rc, out, err = agent.cli("reload")
        assert rc == 77 and holder.poll() is None
    finally:
        holder.kill()
        holder.wait()


def test_reload_keeps_unchanged_tunnel_and_restarts_changed(agent):
    agent.write_config(servers=("hub", "edge"))
    rc, out, err = agent.cli("run", "--daemon")
    assert rc == 0, out + err
    pid = agent.pid()
    assert wait_for(lambda: agent.tunnel("hub").get("ssh_pid") and agent.tunnel("edge").get("ssh_pid"))
    hub, edge = agent.tunnel("hub")["ssh_pid"], agent.tunnel("edge")["ssh_pid"]
    agent.write_config(servers=("hub", "edge"), ports={"edge": 2200})
    rc, out, err = agent.cli("reload")
    assert rc == 0, out + err
    assert wait_for(lambda: agent.tunnel("edge").get("ssh_pid") not in (None, edge)), agent.state()
    assert agent.tunnel("hub").get("ssh_pid") == hub
    assert procs.alive(hub) and not procs.alive(edge)
    assert agent.pid() == pid


def _pending_hup(pid):
    """Is a SIGHUP pending for pid (stopped: it stays pending)? /proc/PID/status ShdPnd, bit 0."""
    with open("/proc/%d/status" % pid) as f:
        line = [l for l in f if l.startswith("ShdPnd:")][0]
    return bool(int(line.split()[1], 16) & 1)


def test_reload_of_an_invalid_file_says_so_and_leaves_the_agent_alone(agent):
    # Issue 23: `reload -c FILE` checks the file as `run` would before signalling; an invalid one is
    # its error and exit code (not "reload requested", exit 0, and the failure only in the agent's log).
    rc, out, err = agent.cli("run", "--daemon")
    assert rc == 0, out + err
    pid = agent.pid()
    assert wait_for(lambda: agent.tunnel("hub").get("ssh_pid"))
    ssh = agent.tunnel("hub")["ssh_pid"]
    good = open(agent.conf).read()
    with open(agent.conf, "w") as f:
        f.write(good.replace("option host ", "option hots "))
    os.kill(pid, signal.SIGSTOP)  # a signal sent now stays pending, where the test can see it
    try:
        rc, out, err = agent.cli("reload", "-c", agent.conf)
        assert rc == 78 and "unknown option 'hots'" in err and "reload requested" not in out, (rc, out, err)
        assert not _pending_hup(pid)
        os.unlink(os.path.join(agent.tmp, "known_hosts"))  # what run refuses beyond the parse, too
        with open(agent.conf, "w") as f:
            f.write(good.replace("option accept_new '1'", "option accept_new '0'"))
        rc, out, err = agent.cli("reload", "-c", agent.conf)
        assert rc == 66 and "does not exist" in err and not _pending_hup(pid), (rc, out, err)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert agent.pid() == pid and agent.tunnel("hub").get("ssh_pid") == ssh and procs.alive(ssh)
    with open(agent.conf, "w") as f:
        f.write(good)
    rc, out, err = agent.cli("reload", "-c", agent.conf)
    assert rc == 0 and "reload requested" in out, (rc, out, err)


def test_reload_with_no_agent_is_not_running(agent):
    rc, out, err = agent.cli("reload")
    assert rc == 7 and "not running" in out + err, (rc, out, err)


BANNER = b"SVC-READY\r\n"


def lab_config(lab, server, tmp, fwd, svc):
    conf = os.path.join(tmp, "lab.conf")
    with open(conf, "w") as f:
        f.write("config sshkeep\n\toption interval '5'\n\toption max_backoff '2'\n\n"
                "config server 'hub'\n\toption host '%s'\n\toption port '%d'\n\toption user '%s'\n"
                "\toption identity '%s'\n\toption known_hosts '%s'\n\toption client 'openssh'\n"
                "\toption remote_check_every '0'\n\toption reclaim '0'\n\n"
                "config tunnel 'back'\n\toption server 'hub'\n\toption listen '127.0.0.1:%d'\n"
                "\toption target '127.0.0.1:%d'\n\toption check 'none'\n"
                % (lab.srv_ip, server.port, lab.user, lab.key_openssh, lab.known_hosts(server), fwd, svc))
    return conf


@pytest.mark.integration
def test_sigkill_with_real_tunnel_up_new_agent_heals(lab):
    """Real sshd in a netns, reclaim off: SIGKILL the agent while its -R is up; its ssh keeps the
    server's listener. The next agent ends that ssh (pid + cmdline from the run state) before it
    connects, so its own -R binds again and the tunnel answers; then SIGTERM: < 5 s, no child."""
    if not os.path.exists(PYZ):
        pytest.fail("build/sshkeep.pyz missing: run `make build`", pytrace=False)
    server = lab.start_sshd(port=22)
    fwd, svc = 20022, 8080
    lab.start_service(lab.box_ns, svc)
    tmp = lab.dir
    conf = lab_config(lab, server, tmp, fwd, svc)
    pidf, statef = os.path.join(tmp, "a.pid"), os.path.join(tmp, "a.json")
    argv = [sys.executable, PYZ, "run", "-c", conf, "--pidfile", pidf, "--state", statef]

    def state():
        try:
            with open(statef) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def answers():
        return lab.probe_from(lab.srv_ns, "127.0.0.1", fwd, timeout=1.0) == BANNER

    def ssh_of(pid):
        st = state()
        return [r["pid"] for r in st.get("children", []) if st.get("pid") == pid and procs.alive(r["pid"])]

    first = lab.box_popen(argv, stderr=subprocess.DEVNULL)
    assert wait_for(answers, 20), state()
    old = wait_for(lambda: ssh_of(first.pid), 10)
    assert old, state()
    first.kill()
    first.wait(timeout=5)
    assert all(procs.alive(p) for p in old) and answers()  # the orphan still holds the forward

    second = lab.box_popen(argv, stderr=subprocess.PIPE)
    assert wait_for(lambda: not [p for p in old if procs.alive(p)], 10), "old ssh survived"
    new = wait_for(lambda: ssh_of(second.pid), 20)
    assert new and not set(new) & set(old)
    assert wait_for(answers, 20), state()
    assert wait_for(lambda: any(t.get("state") == "up" for t in state().get("tunnels", [])), 20), state()

    t0 = time.monotonic()
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=10) == 0
    assert time.monotonic() - t0 < 5.0
    assert not [p for p in new if procs.alive(p)]
    assert wait_for(lambda: not answers(), 10)  # the server freed the listener


def test_reload_after_daemon_with_relative_config_path(agent):
    """--daemon does chdir /: a relative -c must still be found when SIGHUP re-reads it."""
    agent.write_config(servers=("hub", "edge"))
    argv = [sys.executable, PYZ, "run", "-c", os.path.basename(agent.conf), "--pidfile", agent.pidfile,
            "--state", agent.state_path, "--daemon"]
    out = subprocess.run(argv, cwd=agent.tmp, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, timeout=30)
    assert out.returncode == 0, out
    assert wait_for(lambda: agent.tunnel("hub").get("ssh_pid") and agent.tunnel("edge").get("ssh_pid"))
    edge = agent.tunnel("edge")["ssh_pid"]
    agent.write_config(servers=("hub", "edge"), ports={"edge": 2200})
    rc, o, e = agent.cli("reload")
    assert rc == 0, o + e
    assert wait_for(lambda: agent.tunnel("edge").get("ssh_pid") not in (None, edge)), agent.state()


def test_sigusr1_reconnects_now_from_backoff(agent):
    agent.write_config(mode="fail", max_backoff=60)
    p = agent.foreground()
    assert wait_for(lambda: agent.pid() == p.pid)
    assert wait_for(lambda: (agent.tunnel("hub").get("next_attempt_in") or 0) >= 3, 30), agent.state()
    before = agent.tunnel("hub").get("restarts")
    t0 = time.monotonic()
    os.kill(p.pid, signal.SIGUSR1)
    assert wait_for(lambda: agent.tunnel("hub").get("restarts") != before, 3), agent.state()
    assert time.monotonic() - t0 < 2.5


def test_stop_of_a_frozen_agent_kills_it_and_ends_its_ssh(agent):
    """SIGSTOPped (hung) agent: TERM cannot act, stop KILLs after 4.5 s and then ends the ssh
    the agent could not end itself (snapshot of its children from /proc)."""
    rc, out, err = agent.cli("run", "--daemon")
    assert rc == 0, out + err
    pid = agent.pid()
    assert wait_for(lambda: agent.children(of=pid))
    kids = agent.children(of=pid)
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        rc, out, err = agent.cli("stop")
        assert rc == 0 and "killed pid %d" % pid in out + err, out + err
        assert "ended 1 ssh" in out + err, out + err
        assert 4.0 < time.monotonic() - t0 < 8.0
        assert not procs.alive(pid) and not [k for k in kids if procs.alive(k)]
    finally:
        if procs.alive(pid):
            os.kill(pid, signal.SIGKILL)


# -- issue 10: logs never vanish (8), check notices changed settings (9), a hung agent's status (15)

def _without_syslog(argv):
    """argv run where no syslog daemon listens: this machine may have none; where /dev/log exists,
    a private mount namespace covers it with an empty file (connect: refused)."""
    if not os.path.exists("/dev/log"):
        return argv
    empty = tempfile.NamedTemporaryFile(prefix="nolog-", delete=False)
    empty.close()
    return ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /dev/log && exec "$@"', empty.name] + argv


def test_check_started_agent_without_syslog_logs_to_a_file_and_says_so(agent):
    out = subprocess.run(_without_syslog(agent.argv("check")), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, timeout=60, cwd=agent.tmp, env=lightguard.guard_env())
    text = (out.stdout + out.stderr).decode()
    logfile = os.path.join(agent.tmp, "sshkeep.log")   # beside the state file (tmpfs)
    assert out.returncode == 0 and "started agent" in text and "logging to %s" % logfile in text, text
    assert wait_for(lambda: os.path.exists(logfile) and "started (pid" in open(logfile).read(), 10), text
    lines = open(logfile).read().splitlines()
    assert "no syslog" in lines[0] and lines[0].endswith("logging to %s" % logfile)
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (info|warning|error): ", l) for l in lines), lines


def test_check_with_a_changed_config_reloads_the_agent(agent):
    rc, out, err = agent.cli("check")
    assert rc == 0 and "started" in out, out + err
    pid = agent.pid()
    assert wait_for(lambda: agent.state().get("settings"), 10)
    agent.write_config(servers=("hub", "edge"))
    rc, out, err = agent.cli("check")
    assert rc == 0 and "other settings" in out and "reloaded" in out, out + err
    assert agent.pid() == pid and agent.tunnel("edge").get("name") == "edge"
    rc, out, err = agent.cli("check")
    assert (rc, out, err) == (0, "", "")   # now it matches: quiet


def test_check_with_a_new_forward_flag_restarts_the_agent(agent):
    def check(*forwards):
        argv = [sys.executable, PYZ, "check"] + list(forwards) + [
            "--ssh", agent.fake_ssh("up"), "--client", "openssh", "--no-reclaim", "--accept-new",
            "--pidfile", agent.pidfile, "--state", agent.state_path, "box@127.0.0.1"]
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=60, cwd=agent.tmp, env=lightguard.guard_env())
        return r.returncode, (r.stdout + r.stderr).decode()

    rc, text = check("-R", "127.0.0.1:20501:127.0.0.1:22")
    assert rc == 0 and "started" in text, text
    old = agent.pid()
    assert wait_for(lambda: agent.state().get("pid") == old and agent.state().get("settings"), 10)
    assert check("-R", "127.0.0.1:20501:127.0.0.1:22") == (0, "")
    rc, text = check("-R", "127.0.0.1:20501:127.0.0.1:22", "-R", "127.0.0.1:20502:127.0.0.1:22")
    assert rc == 0 and "other settings" in text and "restarting" in text and "started" in text, text
    new = agent.pid()
    assert new and new != old and not procs.alive(old)
    assert wait_for(lambda: agent.state().get("pid") == new, 10)
    specs = [f["spec"] for t in agent.state()["tunnels"] for f in t["forwards"]]
    assert "127.0.0.1:20502:127.0.0.1:22" in specs, specs


def test_status_of_a_frozen_agent_says_not_updating(agent):
    agent.write_config(interval=1)
    rc, out, err = agent.cli("check")
    assert rc == 0, out + err
    pid = agent.pid()
    argv = [sys.executable, PYZ, "status", "--state", agent.state_path]
    status = lambda: subprocess.run(argv, stdout=subprocess.PIPE, timeout=30, env=lightguard.guard_env())
    assert wait_for(lambda: status().returncode == 0, 10)
    os.kill(pid, signal.SIGSTOP)
    try:
        r = wait_for(lambda: (lambda r: r if r.returncode == 4 else None)(status()), 30, 0.5)
        assert r and b"NOT UPDATING" in r.stdout, r and r.stdout
    finally:
        os.kill(pid, signal.SIGCONT)
    assert wait_for(lambda: status().returncode == 0, 10)   # it writes again: fine again
