"""init.d/sshkeep (procd) and init.d/sshkeep.busybox, run by a real busybox shell.

- procd: against RECORDING stand-ins for /etc/rc.common and /lib/functions/procd.sh
  (tests/support/fixtures/procd/): every procd_* call is captured with its exact words.
- busybox: start / status / reload / restart / stop, stop and status with no agent, twice:
  (a) STAND-IN agent: tests/support/fixtures/lifecycle/fake_sshkeep.py (the real agent.run.pidfile,
      daemon, procs, lifecycle around a dummy supervisor) - tests the script's logic;
  (b) REAL agent: build/sshkeep.pyz with a config whose ssh client is a fake script.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

import early
import lightguard
from polling import wait_for

from agent.run import pidfile, procs

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.path.join(TOP, "tests", "support", "fixtures")
RC_COMMON = os.path.join(FIX, "procd", "rc.common")
PROCD_SCRIPT = os.path.join(TOP, "init.d", "sshkeep")
BB_SCRIPT = os.path.join(TOP, "init.d", "sshkeep.busybox")
FAKE = os.path.join(FIX, "lifecycle", "fake_sshkeep.py")
PYZ = os.environ.get("SSHKEEP_PYZ") or os.path.join(TOP, "build", "sshkeep.pyz")
BUSYBOX = shutil.which("busybox") or "/bin/busybox"


def busybox_sh(args, env=None, timeout=30):
    """`busybox sh ARGS` with a minimal environment (PATH, and the python3-light guard for any
    python the script starts: no bash-isms leak in)."""
    base = lightguard.guard_env({"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    base.update(env or {})
    return subprocess.run([BUSYBOX, "sh"] + list(args), env=base, cwd="/", stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=timeout)


@pytest.fixture
def tmp():
    with tempfile.TemporaryDirectory(prefix="sshkeep-init-%d-" % os.getpid()) as d:
        yield d


# -- procd ----------------------------------------------------------------------------

TUNNEL_CONF = "config server 'hub'\n\toption host '127.0.0.1'\n\nconfig tunnel 'ssh'\n\toption server 'hub'\n" \
              "\toption listen '8022'\n\toption target '127.0.0.1:22'\n"


def script_in(tmp, files):
    """A copy of the procd script with /etc/config pointed into tmp (the real one is the host's),
    holding files {name: text}. Returns (script, confdir)."""
    confdir = os.path.join(tmp, "config")
    os.makedirs(confdir, exist_ok=True)
    for name, text in files.items():
        with open(os.path.join(confdir, name), "w") as f:
            f.write(text)
    with open(PROCD_SCRIPT) as f:
        text = f.read().replace("/etc/config/", confdir + "/")
    script = os.path.join(tmp, "sshkeep")
    with open(script, "w") as f:
        f.write(text)
    return script, confdir


def procd_calls(tmp, action, files=None):
    """The procd calls of ACTION, the script's config holding a tunnel (or FILES); paths in the
    calls mapped back to /etc/config/ and the script's own path."""
    script, confdir = script_in(tmp, {"sshkeep": TUNNEL_CONF} if files is None else files)
    log = os.path.join(tmp, "procd-%s.log" % action)
    out = busybox_sh([RC_COMMON, script, action], env={"PROCD_LOG": log})
    assert out.returncode == 0, out
    with open(log) as f:
        return [[w.replace(confdir + "/", "/etc/config/").replace(script, PROCD_SCRIPT) for w in
                 line.rstrip("\n").split("\x1f")] for line in f]


def params(calls):
    got = {}
    for c in calls:
        if c[0] == "procd_set_param":
            assert c[1] not in got, "procd_set_param %s set twice" % c[1]
            got[c[1]] = c[2:]
    return got


def test_procd_script_syntax_and_header():
    assert busybox_sh(["-n", PROCD_SCRIPT]).returncode == 0
    with open(PROCD_SCRIPT) as f:
        assert f.readline() == "#!/bin/sh /etc/rc.common\n"


def test_procd_start_instance_params(tmp):
    calls = procd_calls(tmp, "start")
    names = [c[0] for c in calls]
    assert ["rc:sourced", "START=99", "STOP=10", "USE_PROCD=1"] in calls
    assert ["procd_open_service", "sshkeep", PROCD_SCRIPT] in calls
    assert names.count("procd_open_instance") == names.count("procd_close_instance") == 1
    assert names.index("procd_open_instance") < names.index("procd_set_param") < names.index("procd_close_instance")
    p = params(calls)
    # the command, one word per argument, foreground (procd supervises it: never --daemon)
    assert p["command"] == ["/usr/bin/python3", "/usr/lib/sshkeep/sshkeep.pyz", "run", "-c", "/etc/config/sshkeep",
                            "--pidfile", "/var/run/sshkeep.pid", "--state", "/var/run/sshkeep.json"]
    assert "--daemon" not in p["command"]
    # respawn: threshold 3600 s, 5 s between respawns, never give up (see the script's comment)
    assert p["respawn"] == ["3600", "5", "0"]
    assert p["term_timeout"] == ["5"]
    assert p["stdout"] == ["1"] and p["stderr"] == ["1"]
    assert p["reload_signal"] == ["HUP"]
    assert p["file"] == ["/etc/config/sshkeep"]
    env = dict(kv.split("=", 1) for kv in p["env"])
    assert env["HOME"] == "/var/run/sshkeep"                 # not procd's HOME=/ (flash)
    assert env["HOME"].startswith(("/var/run/", "/tmp/"))
    # procd must not write/unlink the pidfile the agent holds locked
    assert "pidfile" not in p
    # the HOME directory is made on tmpfs, private (recorded, not executed on this host)
    assert ["cmd:mkdir", "-p", "/var/run/sshkeep"] in calls
    assert ["cmd:chmod", "0700", "/var/run/sshkeep"] in calls
    # service_triggers: reload on `uci commit sshkeep` / reload_config
    i, j = names.index("procd_open_trigger"), names.index("procd_close_trigger")
    assert ["procd_add_reload_trigger", "sshkeep", "sshtunnel"] in calls[i:j]
    assert calls[-1] == ["procd_close_service", "set"]


# (neither file: no instance at all, test_procd_no_tunnel_section_no_instance)
@pytest.mark.parametrize("present,expect", [(("sshkeep",), "sshkeep"), (("sshtunnel",), "sshtunnel"),
                                            (("sshkeep", "sshtunnel"), "sshkeep")])
def test_procd_reads_sshtunnel_while_sshkeep_has_no_file(tmp, present, expect):
    script, confdir = script_in(tmp, {name: TUNNEL_CONF for name in present})
    log = os.path.join(tmp, "procd.log")
    assert busybox_sh([RC_COMMON, script, "start"], env={"PROCD_LOG": log}).returncode == 0
    with open(log) as f:
        p = params([line.rstrip("\n").split("\x1f") for line in f])
    assert p["file"] == [os.path.join(confdir, expect)]
    assert p["command"][p["command"].index("-c") + 1] == os.path.join(confdir, expect)


@pytest.mark.parametrize("files", [{}, {"sshkeep": "# config tunnel 'ssh'\nconfig server 'hub'\n"}])
def test_procd_no_tunnel_section_no_instance(tmp, files):
    # A fresh package install leaves only the commented example: no agent that exits 78 and
    # is respawned every 5 s, one log line instead.
    calls = procd_calls(tmp, "start", files)
    names = [c[0] for c in calls]
    assert "procd_open_instance" not in names and "procd_set_param" not in names
    assert [c for c in calls if c[0] == "cmd:logger" and "not started" in c[-1]]
    assert calls[-1] == ["procd_close_service", "set"]


@pytest.mark.parametrize("first", ["config tunnel 'ssh'", "  config 'tunnelR' 'ssh'", 'config "tunnel" ssh'])
def test_procd_any_tunnel_section_starts(tmp, first):
    calls = procd_calls(tmp, "start", {"sshkeep": TUNNEL_CONF.replace("config tunnel 'ssh'", first)})
    assert [c[0] for c in calls].count("procd_open_instance") == 1


def test_procd_reload_reregisters_and_stop_kills(tmp):
    # reload = start_service again: procd itself HUPs (reload_signal, file md5 changed) or
    # restarts (command changed); the script must not HUP on its own (a moved CONFIG is missed)
    calls = procd_calls(tmp, "reload")
    assert not [c for c in calls if c[0] == "procd_send_signal"]
    p = params(calls)
    assert p["reload_signal"] == ["HUP"] and p["file"] == ["/etc/config/sshkeep"]
    assert calls[-1] == ["procd_close_service", "set"]
    calls = procd_calls(tmp, "stop")
    assert ["procd_kill", "sshkeep", ""] in calls or ["procd_kill", "sshkeep"] in calls
    calls = procd_calls(tmp, "restart")
    names = [c[0] for c in calls]
    assert names.index("procd_kill") < names.index("procd_open_instance")


def test_procd_enable_uses_priorities(tmp):
    assert ["rc:enable", "99", "10"] in procd_calls(tmp, "enable")


# -- busybox --------------------------------------------------------------------------

def test_busybox_script_syntax_and_posix():
    assert busybox_sh(["-n", BB_SCRIPT]).returncode == 0
    with open(BB_SCRIPT) as f:
        text = f.read()
    assert text.startswith("#!/bin/sh\n")
    for bashism in ("[[", "function ", "local ", "$(<", "==", "source "):
        assert bashism not in text, bashism


class Box:
    """The busybox script with its variables pointed into a temp dir."""

    def __init__(self, tmp, pyz, config):
        self.tmp = tmp
        self.env = {"PYTHON": sys.executable, "PYZ": pyz, "CONFIG": config,
                    "PIDFILE": os.path.join(tmp, "sshkeep.pid"), "STATE": os.path.join(tmp, "sshkeep.json"),
                    "SSHKEEP_HOME": os.path.join(tmp, "home")}

    def __call__(self, action, timeout=30):
        out = busybox_sh([BB_SCRIPT, action], env=self.env, timeout=timeout)
        return out.returncode, (out.stdout + out.stderr).decode()

    @property
    def pidfile(self):
        return self.env["PIDFILE"]

    def pid(self):
        return pidfile.read_pid(self.pidfile) if pidfile.is_locked(self.pidfile) else None

    def state(self):
        try:
            with open(self.env["STATE"]) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def children(self):
        return [r["pid"] for r in self.state().get("children", [])]

    def cleanup(self):
        pid = self.pid()
        kids = self.children()
        if pid and procs.is_sshkeep(pid):
            procs.stop_pid(pid, timeout=3)
        for rec in self.state().get("children", []):
            procs.reap_orphans([rec], timeout=1)
        return pid, kids


def lifecycle_sequence(box, real):
    rc, out = box("status")
    assert rc == 3 and "not running" in out, out
    rc, out = box("stop")                                   # stop with no agent: success
    assert rc == 0 and "not running" in out, out

    rc, out = box("start")
    assert rc == 0, out
    pid = box.pid()
    assert pid and procs.is_sshkeep(pid)
    assert os.getsid(pid) not in (os.getsid(0), 0)          # detached: its own session
    assert os.stat(box.env["SSHKEEP_HOME"]).st_mode & 0o777 == 0o700
    assert wait_for(box.children, 10), box.state()
    kids = box.children()

    rc, out = box("start")                                  # already running: success, same agent
    assert rc == 0 and "already running" in out, out
    assert box.pid() == pid

    rc, out = box("status")
    assert rc == 0, out

    rc, out = box("reload")
    assert rc == 0, out
    assert procs.alive(pid) and box.pid() == pid
    if not real:
        assert wait_for(lambda: box.state().get("hups") == 1), box.state()
        rc, out = box("reconnect")
        assert rc == 0 and wait_for(lambda: box.state().get("usr1") == 1), (out, box.state())

    rc, out = box("restart")
    assert rc == 0, out
    new = box.pid()
    assert new and new != pid
    assert wait_for(lambda: not procs.alive(pid)), "old agent still there"
    assert not [k for k in kids if procs.alive(k)], "old ssh child left behind"

    assert wait_for(box.children, 10)
    kids = box.children()
    t0 = time.monotonic()
    rc, out = box("stop")
    assert rc == 0 and "stopped" in out, out
    assert time.monotonic() - t0 < 5
    assert not procs.alive(new) and not pidfile.is_locked(box.pidfile)
    assert not [k for k in kids if procs.alive(k)], "ssh child left after stop"
    rc, out = box("status")
    assert rc == 3, out
    rc, out = box("bogus")
    assert rc == 1 and "usage" in out


def test_busybox_script_with_standin_agent(tmp):
    """STAND-IN agent (fake_sshkeep.py): tests the script's logic and the lifecycle modules."""
    conf = os.path.join(tmp, "sshkeep.conf")
    open(conf, "w").close()
    box = Box(tmp, FAKE, conf)
    try:
        lifecycle_sequence(box, real=False)
    finally:
        box.cleanup()


FAKE_SSH = """#!%s
# fake OpenSSH client: stays up like `ssh -N` until TERM (then exits 0, like ssh).
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
if "-V" in sys.argv:
    sys.stderr.write("OpenSSH_9.2p1 Debian-2, OpenSSL 3.0.11 19 Sep 2023\\n")
    sys.exit(0)
deadline = time.monotonic() + 600
while time.monotonic() < deadline:
    time.sleep(0.2)
"""


def real_config(tmp, port=2222, globals_=""):
    ssh = os.path.join(tmp, "fake-ssh")
    with open(ssh, "w") as f:
        f.write(FAKE_SSH % sys.executable)
    os.chmod(ssh, 0o755)
    conf = os.path.join(tmp, "sshkeep.conf")
    with open(conf, "w") as f:
        f.write("config sshkeep\n\toption interval '5'\n" + globals_ + "\n"
                "config server 'hub'\n\toption host '127.0.0.1'\n\toption user 'box'\n"
                "\toption ssh '%s'\n\toption client 'openssh'\n\toption remote_check_every '0'\n"
                "\toption reclaim '0'\n\toption accept_new '1'\n\toption known_hosts '%s'\n\n"
                "config tunnel 'ssh'\n\toption server 'hub'\n\toption listen '127.0.0.1:%d'\n"
                "\toption target '127.0.0.1:22'\n\toption check 'none'\n"
                % (ssh, os.path.join(tmp, "known_hosts"), port))
    return conf


def test_busybox_script_with_real_agent(tmp):
    """REAL agent: build/sshkeep.pyz (make build), ssh client = a fake script that stays up."""
    if not os.path.exists(PYZ):
        pytest.fail("build/sshkeep.pyz missing: run `make build`", pytrace=False)
    box = Box(tmp, PYZ, real_config(tmp))
    try:
        lifecycle_sequence(box, real=True)
    finally:
        box.cleanup()


def crontab_line_from_docs():
    """The one crontab line docs/init.md tells users to install."""
    with open(os.path.join(TOP, "docs", "init.md")) as f:
        lines = [l.rstrip("\n") for l in f if l.startswith("* * * * * ")]
    assert len(lines) == 1, lines
    return lines[0]


class CronRun(object):
    """docs/init.md's crontab line, paths pointed into a temp dir, under a real busybox crond with a bare
    environment. Started right after collection (tests/support/early.py): crond runs the line only at the next
    minute boundary, and that wait overlaps the tests before this one."""

    def __init__(self):
        self.crond = None
        self.tmp = tempfile.mkdtemp(prefix="sshkeep-init-cron-%d-" % os.getpid())
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self):
        tmp = self.tmp
        pidf, statef, self.home = (os.path.join(tmp, n) for n in ("cron.pid", "cron.json", "home"))
        conf = real_config(tmp, globals_="\toption pidfile '%s'\n\toption state '%s'\n" % (pidf, statef))
        line = crontab_line_from_docs()
        for old, new in (("/usr/bin/python3", sys.executable), ("/usr/lib/sshkeep/sshkeep.pyz", PYZ),
                         ("/etc/config/sshkeep", conf), ("/var/run/sshkeep", self.home),
                         (">/dev/null 2>&1", ">>%s 2>&1" % os.path.join(tmp, "cron.out"))):
            assert old in line, (old, line)
            line = line.replace(old, new)
        crondir = os.path.join(tmp, "crontabs")
        os.mkdir(crondir)
        with open(os.path.join(crondir, "root"), "w") as f:
            f.write(line + "\n")
        self.box = Box(tmp, PYZ, conf)
        self.box.env.update(PIDFILE=pidf, STATE=statef)
        self.crond = subprocess.Popen([BUSYBOX, "crond", "-f", "-l", "8", "-c", crondir],
                                      env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.started = time.monotonic()

    def output(self):
        path = os.path.join(self.tmp, "cron.out")
        return open(path).read() if os.path.exists(path) else "cron never ran the line"

    def close(self):
        if self.crond is not None:
            self.crond.kill()
            self.crond.wait(timeout=5)
            self.crond = None
            self.box.cleanup()
        shutil.rmtree(self.tmp, ignore_errors=True)


@early.starts_early(CronRun)
def test_docs_crontab_line_under_real_busybox_crond():
    """docs/init.md's crontab line run by busybox crond (CronRun): within a minute (+ slack) of crond's
    start an agent runs, with HOME on the tmpfs dir. REAL agent."""
    if not os.path.exists(PYZ):
        pytest.fail("build/sshkeep.pyz missing: run `make build`", pytrace=False)
    run = early.get(CronRun)
    try:
        pid = wait_for(run.box.pid, max(1, 75 - (time.monotonic() - run.started)), 0.5)
        assert pid and procs.is_sshkeep(pid), run.output()
        assert os.path.isdir(run.home)
        with open("/proc/%d/environ" % pid, "rb") as f:
            assert b"HOME=" + run.home.encode() in f.read().split(b"\0")
        assert wait_for(run.box.children, 10)
    finally:
        run.close()


def test_busybox_reconnect_and_reload_without_agent_real(tmp):
    """REAL agent: `reconnect` sends SIGUSR1 (the agent stays, same pid); with no agent,
    reload and reconnect exit 7 (LSB: not running)."""
    if not os.path.exists(PYZ):
        pytest.fail("build/sshkeep.pyz missing: run `make build`", pytrace=False)
    box = Box(tmp, PYZ, real_config(tmp))
    try:
        for action in ("reload", "reconnect"):
            rc, out = box(action)
            assert rc == 7 and "not running" in out, (action, rc, out)
        rc, out = box("start")
        assert rc == 0, out
        pid = box.pid()
        rc, out = box("reconnect")
        assert rc == 0, out
        assert box.pid() == pid and procs.alive(pid)
    finally:
        box.cleanup()
