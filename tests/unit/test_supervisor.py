"""The process driver against scripted stand-ins for ssh (no network).

Each fake records its pid; we assert on how the agent escalated, classified and
cleaned up, by pid. Every wait is a poll with a deadline.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from agentrun import FakeSshAgent, alive
from polling import wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FAKE = os.path.join(os.path.dirname(HERE), "support", "fakes", "fakessh")


@pytest.fixture
def agent(tmp_path):
    made = []

    def start(mode, extra=()):
        a = FakeSshAgent(str(tmp_path), mode, ["-R", "127.0.0.1:20022:127.0.0.1:22", "--no-checks",
                                               "--connect-timeout", "1", "--max-backoff", "2"]
                         + list(extra) + ["-p", "9", "tunnel@127.0.0.1"]).start()
        made.append(a)
        return a
    yield start
    for a in made:
        a.stop()
        for pid in a.fakes():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_ready_marker_means_up_and_term_cleans_up(agent):
    a = agent("ready")
    wait_until(lambda: a.tunnel().get("state") == "up", 10, 0.05, what="state up")
    pid = a.tunnel()["ssh_pid"]
    assert pid == a.fakes()[-1]
    assert a.status()["children"][0]["pid"] == pid
    assert a.stop() == 0
    assert not alive(pid)
    assert a.tunnel()["state"] == "stopped"


def test_child_ignoring_term_is_killed(agent):
    a = agent("ignoreterm")
    wait_until(lambda: a.tunnel().get("state") == "up", 10, 0.05, what="state up")
    pid = a.tunnel()["ssh_pid"]
    t0 = time.monotonic()
    assert a.stop() == 0
    assert time.monotonic() - t0 < 5.0   # procd's term_timeout
    assert not alive(pid)


def test_refused_backs_off_and_is_classified(agent):
    a = agent("refused")
    wait_until(lambda: len(a.fakes()) >= 4, 15, 0.05, what="4 attempts")
    t = a.tunnel()
    assert t["last_error"].startswith("connection-refused")
    assert "Connection refused" in a.log()
    a.stop()
    # attempts are spaced out (backoff), not a tight loop: 4 attempts need > 1 s at 0,1,2.. s
    assert len(a.fakes()) < 12


def test_auth_failure_waits_longest_and_says_what_to_fix(agent):
    a = agent("auth")
    wait_until(lambda: "auth-failed" in a.tunnel().get("last_error", ""), 10, 0.05, what="auth-failed")
    assert "authorized_keys" in a.log()
    assert a.tunnel()["state"] == "backoff"


def test_exit_zero_is_not_clean(agent):
    a = agent("exit0")
    wait_until(lambda: len(a.fakes()) >= 2, 10, 0.05, what="a restart after exit 0")
    assert a.tunnel()["last_error"].startswith("closed-by-server")


def test_forward_failure_classified(agent):
    a = agent("fwdfail")
    wait_until(lambda: "remote-port-in-use" in a.tunnel().get("last_error", ""), 10, 0.05, what="remote-port-in-use")


def test_no_marker_watchdog(agent):
    a = agent("hang")
    # connect timeout 1 s: watchdog at 2*1+5 = 7 s
    wait_until(lambda: "no-ready-in-time" in a.tunnel().get("last_error", ""), 15, 0.05, what="watchdog kill")
    assert not alive(a.fakes()[0])


def test_noisy_stderr_is_drained(agent):
    # 20000 lines (~700 KB) on stderr: a child whose pipe nobody reads blocks at 64 KB.
    a = agent("spam")
    wait_until(lambda: a.tunnel().get("state") == "up", 10, 0.05, what="state up")
    pid = a.tunnel()["ssh_pid"]
    wait_until(lambda: open("/proc/%d/cmdline" % pid, "rb").read().startswith(b"cat"), 30, 0.05,
             what="fake got past its stderr flood")


def test_missing_client_exits_at_once(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-m", "agent", "run", "-R", "1:h:2", "--ssh", "/nonexistent/ssh",
                        "--state", str(tmp_path / "s"), "--pidfile", str(tmp_path / "p"), "h"],
                       env=env, stderr=subprocess.PIPE, timeout=20)
    assert p.returncode == 69
    assert b"/nonexistent/ssh does not exist" in p.stderr


def test_usage_errors(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    for argv, code, text in ((["run", "h"], 64, b"at least one -R"),
                             (["run", "-R", "x:y", "h"], 65, b"expected [bind:]port:host:hostport"),
                             (["run", "-R", "99999:h:1", "h"], 65, b"not a port"),
                             (["status", "--state", str(tmp_path / "none")], 66, b"is the agent running")):
        p = subprocess.run([sys.executable, "-m", "agent"] + argv, env=env, stderr=subprocess.PIPE, timeout=20)
        assert p.returncode == code, (argv, p.stderr)
        assert text in p.stderr


def test_real_clients_detected():
    from agent.run import clients
    assert clients.detect("/usr/bin/ssh").kind == "openssh"
    db = clients.detect("/usr/bin/dbclient")
    assert db.kind == "dropbear" and db.has_option("ExitOnForwardFailure")


def test_missing_known_hosts_fails_fast(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-m", "agent", "run", "-R", "1:h:2", "--ssh", FAKE,
                        "--known-hosts", str(tmp_path / "nope"), "--state", str(tmp_path / "s"),
                        "--pidfile", str(tmp_path / "p"), "h"], env=env, stderr=subprocess.PIPE, timeout=20)
    assert p.returncode == 66
    assert b"--accept-new" in p.stderr


def test_dynamic_forward_with_dbclient_exits_69_at_once(tmp_path):
    env = dict(os.environ, FAKESSH_VERSION="Dropbear v2022.83", PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-m", "agent", "run", "-D", "1080", "--ssh", FAKE, "--client", "auto",
                        "--state", str(tmp_path / "s.json"), "--pidfile", str(tmp_path / "pid"), "tunnel@127.0.0.1"],
                       env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
    assert r.returncode == 69, r.stderr
    assert b"cannot do dynamic (-D) forwards" in r.stderr and b"--client openssh" in r.stderr


def test_run_logs_the_config_files_warnings(tmp_path):
    # An sshtunnel file with a tunnel naming no server (sshtunnel ignores it too): `config`
    # lists the warning, and so must `run`, whose stderr is what procd keeps.
    conf = tmp_path / "sshtunnel"
    # (a known_hosts of its own: accept-new, sshtunnel's default, would pin in /etc/sshkeep)
    conf.write_text("config sshkeep\n\toption known_hosts '%s'\n\n" % (tmp_path / "known_hosts") +
                    "config server 'vps'\n\toption user 'tunnel'\n\toption hostname '127.0.0.1'\n"
                    "\toption port '9'\n\nconfig tunnelR 'a'\n\toption server 'vps'\n\toption remoteport '10022'\n"
                    "\toption localaddress '127.0.0.1'\n\toption localport '22'\n\n"
                    "config tunnelR 'orphan'\n\toption remoteport '10023'\n\n"
                    "config tunnelW 'vpn'\n\toption server 'vps'\n\toption vpntype 'point-to-point'\n"
                    "\toption localdev 'any'\n\toption remotedev 'any'\n")
    bindir = tmp_path / "bin"   # sshtunnel files name no client: the agent finds `ssh` on PATH
    bindir.mkdir()
    os.symlink(FAKE, str(bindir / "ssh"))
    env = dict(os.environ, FAKESSH_MODE="ready", PYTHONPATH=ROOT, PATH="%s:%s" % (bindir, os.environ["PATH"]))
    p = subprocess.Popen([sys.executable, "-m", "agent", "run", "-c", str(conf), "--no-checks",
                          "--state", str(tmp_path / "s.json"), "--pidfile", str(tmp_path / "pid")],
                         env=env, stdout=subprocess.DEVNULL, stderr=open(str(tmp_path / "err"), "w"))
    try:
        wait_until(lambda: "orphan" in (tmp_path / "err").read_text(), 10, 0.05, what="warning logged")
        line = [l for l in (tmp_path / "err").read_text().splitlines() if "orphan" in l][0]
        assert "config: %s:15:" % conf in line and "no server option" in line
        vpn = [l for l in (tmp_path / "err").read_text().splitlines() if "tunnelW 'vpn'" in l]
        assert len(vpn) == 1 and "config: %s:18:" % conf in vpn[0] and "is skipped" in vpn[0]
        state = tmp_path / "s.json"
        wait_until(lambda: state.exists() and '"up"' in state.read_text(), 10, 0.05, what="tunnel up")
        # `status` shows the skipped section too, beside the running tunnel
        env2 = dict(os.environ, PYTHONPATH=ROOT)
        table = subprocess.run([sys.executable, "-m", "agent", "status", "--state", str(state)], env=env2,
                               stdout=subprocess.PIPE, timeout=20).stdout.decode()
        assert "up" in table and [l for l in table.splitlines() if l.startswith("warning: ")] == [
            "warning: " + w for w in json.loads(state.read_text())["warnings"]]
        assert any("tunnelW 'vpn'" in l and "skipped" in l for l in table.splitlines())
        doc = json.loads(subprocess.run([sys.executable, "-m", "agent", "status", "--json", "--state", str(state)],
                                        env=env2, stdout=subprocess.PIPE, timeout=20).stdout)
        assert len(doc["warnings"]) == 2 and "tunnelW 'vpn'" in doc["warnings"][1]
    finally:
        p.terminate()
        assert p.wait(10) == 0
    # `config -c` prints the running tunnels, warns about the VPN and exits 0
    c = subprocess.run([sys.executable, "-m", "agent", "config", "-c", str(conf)], env=dict(os.environ, PYTHONPATH=ROOT),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
    assert c.returncode == 0, c.stderr
    assert b"10022" in c.stdout and b"vpn" not in c.stdout
    assert b"warning: %s:18: tunnelW 'vpn' (ssh -w tun/tap VPN) is skipped" % str(conf).encode() in c.stderr


def test_dbclient_says_which_ssh_options_it_runs_without(tmp_path):
    # sshtunnel's Compression, ProxyCommand, ... are OpenSSH -o options; dbclient gets none of them.
    conf = tmp_path / "c.conf"
    conf.write_text("config server 'hub'\n\toption host '127.0.0.1'\n\toption ssh '%s'\n"
                    "\toption client 'dropbear'\n\tlist ssh_option 'Compression=yes'\n"
                    "\tlist ssh_option 'TCPKeepAlive=no'\nconfig tunnel 't'\n\toption server 'hub'\n"
                    "\toption listen '20022'\n\toption target '127.0.0.1:22'\n" % FAKE)
    env = dict(os.environ, FAKESSH_MODE="ready", FAKESSH_VERSION="Dropbear v2022.83", PYTHONPATH=ROOT)
    err = tmp_path / "err"
    p = subprocess.Popen([sys.executable, "-m", "agent", "run", "-c", str(conf), "--no-checks",
                          "--state", str(tmp_path / "s.json"), "--pidfile", str(tmp_path / "pid")],
                         env=env, stdout=subprocess.DEVNULL, stderr=open(str(err), "w"))
    try:
        wait_until(lambda: "not passed" in err.read_text(), 10, 0.05, what="warning logged")
        assert "ssh option(s) Compression, TCPKeepAlive not passed: dbclient" in err.read_text()
    finally:
        p.terminate()
        p.wait(10)


def test_status_json_has_the_documented_shape(agent, tmp_path):
    # Fleet monitoring parses this: the keys are a contract (README: Status and logs).
    a = agent("ready")
    wait_until(lambda: a.tunnel().get("state") == "up", 10, 0.05, what="state up")
    r = subprocess.run([sys.executable, "-m", "agent", "status", "--json", "--state", a.state],
                       env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=20)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert {"pid", "version", "running", "updated", "tunnels"} <= set(doc)
    assert doc["pid"] == a.proc.pid and doc["running"] is True
    t = doc["tunnels"][0]
    assert {"name", "state", "since", "restarts", "last_error", "ssh_pid", "server", "health", "checks",
            "consecutive_failures", "last_check", "last_heal", "forwards"} <= set(t)
    assert t["state"] == "up" and t["ssh_pid"] == a.fakes()[-1] and t["restarts"] == 0
    table = subprocess.run([sys.executable, "-m", "agent", "status", "--state", a.state],
                           env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE, timeout=20)
    assert table.returncode == 0 and b"up" in table.stdout


@pytest.mark.parametrize("flags,named", [(["--interval", "5"], "--interval"), (["--ssh", FAKE], "--ssh"),
                                         (["-R", "1:h:2"], "forwards"), (["--no-reclaim"], "--no-reclaim"),
                                         (["-p", "2222"], "-p"), (["--name", "x"], "--name"),
                                         (["-o", "Compression=yes"], "-o")])
def test_tunnel_flags_beside_c_are_refused_not_ignored(tmp_path, flags, named):
    conf = tmp_path / "c.conf"
    conf.write_text("config server 'hub'\n\toption host '127.0.0.1'\nconfig tunnel 't'\n\toption server 'hub'\n"
                    "\toption listen '8080'\n\toption target '127.0.0.1:80'\n")
    r = subprocess.run([sys.executable, "-m", "agent", "run", "-c", str(conf), "--state", str(tmp_path / "s"),
                        "--pidfile", str(tmp_path / "p")] + flags, env=dict(os.environ, PYTHONPATH=ROOT),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
    assert r.returncode == 64 and named.encode() in r.stderr, r.stderr
    assert not (tmp_path / "p").exists()


# -- issue 10: names everywhere (14), cosmetics (18) -----------------------------------------------

def _run(argv, **kw):
    return subprocess.run([sys.executable, "-m", "agent"] + argv, env=dict(os.environ, PYTHONPATH=ROOT),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30, **kw)


def test_config_tunnel_names_in_logs_status_and_json(tmp_path):
    conf = tmp_path / "c.conf"
    text = "config server 'hub'\n\toption host '127.0.0.1'\n\toption ssh '%s'\n\toption client 'openssh'\n" % FAKE
    for i, name in enumerate(("web", "cam", "nas")):
        text += ("config tunnel '%s'\n\toption server 'hub'\n\toption listen '127.0.0.1:%d'\n"
                 "\toption target '127.0.0.1:80'\n\toption check 'none'\n" % (name, 20700 + i))
    conf.write_text(text)
    state, err = tmp_path / "s.json", tmp_path / "err"
    with open(str(err), "w") as fh:
        p = subprocess.Popen([sys.executable, "-m", "agent", "run", "-c", str(conf), "--state", str(state),
                              "--pidfile", str(tmp_path / "p")], stdout=subprocess.DEVNULL, stderr=fh,
                             env=dict(os.environ, PYTHONPATH=ROOT, FAKESSH_MODE="ready",
                                      FAKESSH_LOG=str(tmp_path / "fake.log")))
    try:
        wait_until(lambda: state.exists() and '"up"' in state.read_text(), 10, 0.05, what="tunnel up")
        log = err.read_text()
        assert "3 tunnel(s) (web, cam, nas) over 1 ssh connection(s)" in log, log
        assert "up via 127.0.0.1:22 (3 forwards: web, cam, nas)" in log, log
        table = _run(["status", "--state", str(state)])
        assert table.returncode == 0 and b"web, cam, nas" in table.stdout, table.stdout
        fwd = json.loads(_run(["status", "--json", "--state", str(state)]).stdout)["tunnels"][0]["forwards"]
        assert fwd[0] == {"name": "web", "kind": "R", "spec": "127.0.0.1:20700:127.0.0.1:80", "verdict": None}
        assert [f["name"] for f in fwd] == ["web", "cam", "nas"]
    finally:
        p.terminate()
        assert p.wait(10) == 0


def test_flag_mode_forwards_have_the_same_json_shape(agent):
    a = agent("ready")
    wait_until(lambda: a.tunnel().get("state") == "up", 10, 0.05, what="state up")
    f = a.tunnel()["forwards"][0]
    assert f == {"name": "-R 127.0.0.1:20022:127.0.0.1:22", "kind": "R", "spec": "127.0.0.1:20022:127.0.0.1:22",
                 "verdict": None}


def test_no_doubled_prefixes(agent):
    a = agent("refused")
    wait_until(lambda: "Connection refused" in a.log(), 10, 0.05, what="refused logged")
    assert "ssh: connect to host 10.0.0.2" in a.log() and "ssh: ssh:" not in a.log()


def test_stop_and_requested_reconnect_are_info_not_errors(agent):
    a = agent("ready")
    wait_until(lambda: a.tunnel().get("state") == "up", 10, 0.05, what="state up")
    os.kill(a.proc.pid, signal.SIGUSR1)
    wait_until(lambda: a.tunnel().get("restarts") == 1 and a.tunnel().get("state") == "up", 10, 0.05,
               what="reconnected")
    assert a.tunnel()["last_error"] == ""
    line = [l for l in a.log().splitlines() if "ssh exited" in l][0]
    assert " info: " in line and re.search(r": reconnect-requested \((exit|signal) \d+\)$", line), line
    a.stop()
    with open(a.errpath) as fh:
        line = [l for l in fh.read().splitlines() if "ssh exited" in l][-1]
    assert re.search(r": stopped \((exit|signal) \d+\)$", line), line   # not "stopped (stopped by sshkeep (..))"


def test_a_repeated_ssh_line_is_logged_once(agent):
    a = agent("spam")   # 20000 x "connect_to 127.0.0.1 port 9: failed." (a target down, every check)
    wait_until(lambda: a.tunnel().get("state") == "up", 10, 0.05, what="state up")
    pid = a.tunnel()["ssh_pid"]
    wait_until(lambda: open("/proc/%d/cmdline" % pid, "rb").read().startswith(b"cat"), 30, 0.05,
               what="fake got past its stderr flood")
    wait_until(lambda: "connect_to 127.0.0.1 port 9: failed." in a.log(), 10, 0.05, what="the line logged")
    assert a.log().count("connect_to 127.0.0.1 port 9: failed.") == 1


def test_channel_open_failures_are_logged_once_whatever_the_channel(agent):
    a = agent("spamch")   # -L to a target that is down: "channel N: open failed: ..." per connection
    wait_until(lambda: a.tunnel().get("state") == "up", 10, 0.05, what="state up")
    pid = a.tunnel()["ssh_pid"]
    wait_until(lambda: open("/proc/%d/cmdline" % pid, "rb").read().startswith(b"cat"), 30, 0.05,
               what="fake wrote its 50 lines")
    wait_until(lambda: "open failed: connect failed" in a.log(), 10, 0.05, what="the line logged")
    a.stop()   # every line read and logged (or not) by now
    with open(a.errpath) as fh:
        assert fh.read().count("open failed: connect failed") == 1


def test_ipv6_server_in_brackets(tmp_path):
    state = tmp_path / "s.json"
    p = subprocess.Popen([sys.executable, "-m", "agent", "run", "-R", "127.0.0.1:20022:127.0.0.1:22",
                          "--ssh", FAKE, "--no-checks", "--state", str(state), "--pidfile", str(tmp_path / "p"),
                          "-p", "2299", "tunnel@::1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env=dict(os.environ, PYTHONPATH=ROOT, FAKESSH_MODE="ready"))
    try:
        wait_until(lambda: state.exists() and '"up"' in state.read_text(), 10, 0.05, what="tunnel up")
        assert json.loads(state.read_text())["tunnels"][0]["server"] == "[::1]:2299"
    finally:
        p.terminate()
        assert p.wait(10) == 0
        p.stderr.close()


def test_run_help_shows_the_defaults():
    out = _run(["run", "--help"]).stdout.decode()
    flat = " ".join(out.split())
    for text in ("--keepalive SECONDS server-alive interval; 0 = off (default: 15)",
                 "--max-backoff SECONDS longest wait between reconnects (default: 60)",
                 "(default: 30)", "--debug"):
        assert text in flat, text
    assert "(default: None)" not in flat and "(default: [])" not in flat


def test_syslog_without_a_syslog_daemon_logs_to_stderr_and_says_so(tmp_path):
    # libc's syslog() drops every line when /dev/log is missing: the agent must notice.
    argv = [sys.executable, "-m", "agent", "run", "-R", "127.0.0.1:20022:127.0.0.1:22", "--ssh", FAKE,
            "--no-checks", "--syslog", "--state", str(tmp_path / "s.json"), "--pidfile", str(tmp_path / "p"),
            "tunnel@127.0.0.1"]
    if os.path.exists("/dev/log"):   # a private mount namespace hides this machine's syslog
        (tmp_path / "empty").write_text("")
        argv = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /dev/log && exec "$@"', str(tmp_path / "empty")] + argv
    err = tmp_path / "err"
    with open(str(err), "w") as fh:
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=fh,
                             env=dict(os.environ, PYTHONPATH=ROOT, FAKESSH_MODE="ready"))
    try:
        wait_until(lambda: " up via " in err.read_text(), 10, 0.05, what="up logged on stderr")
        first = err.read_text().splitlines()[0]
        assert "no syslog (/dev/log: " in first and first.endswith("logging to stderr"), first
    finally:
        p.terminate()
        assert p.wait(10) == 0


def test_a_failed_reload_logs_each_config_error_readably(tmp_path):
    # log lines are one line each (agent.run.log escapes newlines): the file's errors are
    # joined with '; ', not logged as \x0a
    import io
    from agent.errors import ConfigError
    from agent.run import supervisor
    from agent.run.log import Log
    from agent.core.model import Settings

    def broken():
        raise ConfigError("f:3: bad one\nf:7: bad two", errors=["f:3: bad one", "f:7: bad two"])

    out = io.StringIO()
    s = Settings(tunnels=(), state=str(tmp_path / "s.json"), pidfile=str(tmp_path / "pid"))
    supervisor.Supervisor(s, Log(stream=out, timestamps=False), reload_settings=broken)._reload()
    assert out.getvalue() == "error: reload failed, keeping the running configuration: f:3: bad one; f:7: bad two\n"
