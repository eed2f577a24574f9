"""Run the agent in a test: one process, its state file and its log; wait on its state, stop it.

AgentProcess is the one helper: any command line, in the lab's box namespace (`lab`) or on this
machine. Two ways to build one: Agent (the built pyz in the lab's box namespace, under the
python3-light guard, against a lab server) and FakeSshAgent (this machine, tests/support/fakes/fakessh
as the ssh client, the pyz or the source tree). Shared by the integration and unit tests, tests/cross,
`make demo` and the benchmarks.
"""

import json
import os
import signal
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PYZ = os.path.join(ROOT, "build", "sshkeep.pyz")
FAKESSH = os.path.join(HERE, "fakes", "fakessh")
sys.path.insert(0, HERE)

import lightguard  # noqa: E402
from polling import wait_for  # noqa: E402


def require_pyz(path=PYZ):
    if not os.path.exists(path):
        raise AssertionError("%s is missing: run `make build` first (make test does)" % path)
    return path


class AgentProcess:
    """One agent process: argv run in `dir` (its log: dir/agent.run.log), `state` its state file.

    `lab`: run in the lab's box namespace; otherwise here, in `cwd`. stdout goes to the log too unless
    `log_stdout` is false (then to /dev/null).
    """

    def __init__(self, argv, dir, state=None, pidfile=None, lab=None, env=None, cwd=None, log_stdout=True):
        self.argv, self.dir, self.lab, self.env, self.cwd = list(argv), dir, lab, env, cwd
        self.state = state or os.path.join(dir, "state.json")
        self.pidfile = pidfile or os.path.join(dir, "pid")
        self.errpath = os.path.join(dir, "agent.run.log")
        self.log_stdout = log_stdout
        self.proc = None

    def start(self):
        log = open(self.errpath, "ab")
        out = log if self.log_stdout else subprocess.DEVNULL
        try:
            if self.lab is not None:
                self.proc = self.lab.box_popen(self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=log,
                                               env=self.env)
            else:
                self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=log,
                                             env=self.env, cwd=self.cwd)
        finally:
            log.close()
        return self

    def status(self):
        return read_state(self.state)

    def tunnel(self):
        t = self.status().get("tunnels") or [{}]
        return t[0]

    def tunnels(self):
        """{name: tunnel} from the state file."""
        return {t["name"]: t for t in self.status().get("tunnels") or [] if "name" in t}

    def log(self):
        try:
            with open(self.errpath, "rb") as fh:
                return fh.read().decode(errors="replace")
        except OSError:
            return ""

    def wait(self, pred, timeout, what):
        def ready():
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError("agent exited (%s) while waiting for %s; log:\n%s" % (
                    self.proc.returncode, what, self.log()[-3000:]))
            try:
                return pred()
            except (KeyError, TypeError, IndexError):
                return False
        if wait_for(ready, timeout, 0.1):
            return
        raise AssertionError("timed out after %ss waiting for %s; status %s; log:\n%s" % (
            timeout, what, json.dumps(self.tunnel()), self.log()[-3000:]))

    def wait_tunnels(self, pred, timeout, what):
        """wait for pred({name: tunnel})."""
        self.wait(lambda: pred(self.tunnels()), timeout, what)

    def wait_up(self, timeout=30):
        self.wait(lambda: self.tunnel().get("state") == "up", timeout, "tunnel up")
        return self.tunnel()

    def stop(self, timeout=8.0):
        """TERM; returns the exit code. KILL if it does not go within timeout."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError("agent did not stop within %ss of SIGTERM" % timeout)
        return self.proc.returncode


class Agent(AgentProcess):
    """The built pyz in the lab's box namespace, keeping `forwards` to a lab `server`."""

    def __init__(self, lab, server, forwards, client="openssh", extra=(), python="/usr/bin/python3",
                 pyz=None, ssh=None, prefix=(), name="t"):
        self.server = server
        d = os.path.join(lab.dir, "agent-%s-%d" % (name, id(self) % 100000))
        os.makedirs(d, exist_ok=True)
        super().__init__([], d, lab=lab, env=lightguard.guard_env(dict(os.environ, HOME=d)))
        key = lab.key_dropbear if client == "dropbear" else lab.key_openssh
        known = lab.known_hosts(server, os.path.join(d, "known_hosts"))
        self.argv = list(prefix) + [python, pyz or require_pyz()] + ["run"]
        for f in forwards:
            self.argv += list(f)
        self.argv += ["-i", key, "-p", str(server.port), "--client", client, "--known-hosts", known,
                      "--state", self.state, "--pidfile", self.pidfile, "--name", name,
                      # one box per lab (its box namespace), never the test machine's /etc/sshkeep;
                      # a later --box-id-file in `extra` makes this agent another box
                      "--box-id-file", os.path.join(lab.dir, "box-id"),
                      "--ssh", ssh or ("/usr/bin/dbclient" if client == "dropbear" else "/usr/bin/ssh")]
        self.argv += list(extra)
        self.argv.append("%s@%s" % (lab.user, lab.srv_ip))


class FakeSshAgent(AgentProcess):
    """`run` on this machine with tests/support/fakes/fakessh as the ssh client, behaving as `mode`
    (FAKESSH_MODE); `args` follow `run --ssh SSH --state STATE --pidfile PID` (ssh None: no --ssh, for
    a test that puts fakessh on PATH or names its own wrapper in `args`).

    `pyz`: that archive; None: the source tree (`python -m agent`). `env`: the environment to start
    from (default: this one; lightguard.guard_env(...) for the python3-light guard).
    """

    def __init__(self, dir, mode, args, pyz=None, python=sys.executable, env=None, ssh=FAKESSH):
        self.fake_log = os.path.join(dir, "fake.log")
        env = dict(os.environ if env is None else env, FAKESSH_MODE=mode, FAKESSH_LOG=self.fake_log)
        if pyz is None:
            env["PYTHONPATH"] = ROOT
            cmd = [python, "-m", "agent"]
        else:
            cmd = [python, pyz]
        super().__init__([], dir, env=env, cwd=dir, log_stdout=False)
        self.argv = cmd + ["run"] + (["--ssh", ssh] if ssh else []) + ["--state", self.state, "--pidfile",
                                                                       self.pidfile] + list(args)

    def fakes(self):
        """Pids of the fake ssh processes started so far, oldest first."""
        try:
            with open(self.fake_log) as fh:
                return [int(line.split()[1]) for line in fh if line.startswith("PID ")]
        except OSError:
            return []


# The pyz BoxAgent runs (the init-script and package tests take the same variable).
BOX_PYZ = os.environ.get("SSHKEEP_PYZ") or PYZ

FAKE_SSH = """#!%s
# fake OpenSSH client. MODE=up: stays up like `ssh -N` until TERM (exits 0, like ssh);
# MODE=fail: refuses at once (exit 255, like ssh on a refused connection).
import signal, sys, time
MODE = %r
if "-V" in sys.argv:
    sys.stderr.write("OpenSSH_9.2p1 Debian-2, OpenSSL 3.0.11 19 Sep 2023\\n")
    sys.exit(0)
if MODE == "fail":
    sys.stderr.write("ssh: connect to host 127.0.0.1 port 22: Connection refused\\n")
    sys.exit(255)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
deadline = time.monotonic() + 600
while time.monotonic() < deadline:
    time.sleep(0.2)
"""


class BoxAgent:
    """An agent as a box runs it: one pidfile/state/config in a temp dir, driven through the real pyz's
    commands (run, check, stop, reload), as init scripts and cron do; `foreground()` agents are its Popens.
    The ssh client is FAKE_SSH in a mode (up: stays up like `ssh -N`; fail: refused at once).
    """

    def __init__(self, tmp, mode="up", servers=("hub",), interval=5):
        if not os.path.exists(BOX_PYZ):
            import pytest
            pytest.fail("build/sshkeep.pyz missing: run `make build`", pytrace=False)
        self.tmp = tmp
        self.pidfile = os.path.join(tmp, "sshkeep.pid")
        self.state_path = os.path.join(tmp, "sshkeep.json")
        self.conf = os.path.join(tmp, "sshkeep.conf")
        self.started = []  # Popen of foreground agents, for cleanup
        self.ssh = {}
        self.write_config(mode, servers, interval)

    def fake_ssh(self, mode):
        path = os.path.join(self.tmp, "ssh-" + mode)
        if mode not in self.ssh:
            with open(path, "w") as f:
                f.write(FAKE_SSH % (sys.executable, mode))
            os.chmod(path, 0o755)
            self.ssh[mode] = path
        return path

    def write_config(self, mode="up", servers=("hub",), interval=5, ports=None, remote_checks=0, check="none",
                     max_backoff=2):
        text = "config sshkeep\n\toption interval '%s'\n\toption max_backoff '%s'\n\n" % (interval, max_backoff)
        for i, name in enumerate(servers):
            port = (ports or {}).get(name, 22)
            text += ("config server '%s'\n\toption host '127.0.0.1'\n\toption port '%d'\n\toption user 'box'\n"
                     "\toption ssh '%s'\n\toption client 'openssh'\n\toption remote_check_every '%d'\n"
                     "\toption reclaim '0'\n\toption accept_new '1'\n\toption known_hosts '%s'\n\n"
                     "config tunnel 't_%s'\n\toption server '%s'\n\toption listen '127.0.0.1:%d'\n"
                     "\toption target '127.0.0.1:22'\n\toption check '%s'\n\n"
                     % (name, port, self.fake_ssh(mode), remote_checks, os.path.join(self.tmp, "known_hosts"),
                        name, name,
                        20000 + os.getpid() % 20000 + i, check))
        with open(self.conf, "w") as f:
            f.write(text)

    def argv(self, command, *extra):
        return [sys.executable, BOX_PYZ, command, "-c", self.conf, "--pidfile", self.pidfile,
                "--state", self.state_path] + list(extra)

    def cli(self, command, *extra, timeout=30):
        argv = self.argv(command, *extra) if command in ("run", "check") else \
            [sys.executable, BOX_PYZ, command, "--pidfile", self.pidfile] + list(extra)
        out = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             timeout=timeout, cwd=self.tmp, env=lightguard.guard_env())
        return out.returncode, out.stdout.decode(), out.stderr.decode()

    def foreground(self):
        p = subprocess.Popen(self.argv("run"), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, cwd=self.tmp, env=lightguard.guard_env())
        self.started.append(p)
        return p

    def pid(self):
        from agent.run import pidfile
        return pidfile.read_pid(self.pidfile) if pidfile.is_locked(self.pidfile) else None

    def state(self):
        return read_state(self.state_path)

    def children(self, of=None):
        from agent.run import procs
        st = self.state()
        if of is not None and st.get("pid") != of:
            return []
        return [r["pid"] for r in st.get("children", []) if procs.alive(r["pid"])]

    def tunnel(self, name):
        for t in self.state().get("tunnels", []):
            if t.get("name") == name:
                return t
        return {}

    def agents(self):
        """Live sshkeep processes started for THIS pidfile (any instance)."""
        from agent.run import procs
        out = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                cl = procs.cmdline(int(d))
                if cl and self.pidfile in cl and procs.looks_like_sshkeep(cl) and procs.alive(int(d)) \
                        and "run" in cl:
                    out.append(int(d))
        return out

    def cleanup(self):
        from agent.run import procs
        recs = self.state().get("children", [])
        holder = self.pid()  # whatever holds OUR temp pidfile, even if not named sshkeep
        pids = set(self.agents()) | ({holder} if holder else set())
        for pid in pids:
            recs += procs.children_of(pid)
            try:
                os.kill(pid, signal.SIGCONT)  # a test may have frozen it
            except OSError:
                pass
            procs.stop_pid(pid, timeout=2)
        for p in self.started:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=5)
        procs.reap_orphans(recs, timeout=1)


def read_state(path):
    """The state file's document, {} while there is none (or it is being replaced)."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def cpu_seconds(pid):
    """utime+stime of a process, in seconds (from /proc)."""
    with open("/proc/%d/stat" % pid) as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
