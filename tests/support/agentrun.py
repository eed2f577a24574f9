"""Run the built sshkeep.pyz in the lab's box namespace, under the python3-light guard.

Shared by the integration tests, tests/cross, `make demo` and the benchmarks.
"""

import json
import os
import signal
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PYZ = os.path.join(ROOT, "build", "sshkeep.pyz")
sys.path.insert(0, HERE)

import lightguard  # noqa: E402
from polling import wait_for  # noqa: E402


def require_pyz(path=PYZ):
    if not os.path.exists(path):
        raise AssertionError("%s is missing: run `make build` first (make test does)" % path)
    return path


class Agent:
    """One agent process in the box namespace. `status()` reads its state file."""

    def __init__(self, lab, server, forwards, client="openssh", extra=(), python="/usr/bin/python3",
                 pyz=None, ssh=None, prefix=(), name="t"):
        self.lab = lab
        self.server = server
        self.dir = os.path.join(lab.dir, "agent-%s-%d" % (name, id(self) % 100000))
        os.makedirs(self.dir, exist_ok=True)
        self.state = os.path.join(self.dir, "state.json")
        self.pidfile = os.path.join(self.dir, "pid")
        self.errpath = os.path.join(self.dir, "agent.run.log")
        key = lab.key_dropbear if client == "dropbear" else lab.key_openssh
        known = lab.known_hosts(server, os.path.join(self.dir, "known_hosts"))
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
        self.proc = None
        self.env = lightguard.guard_env(dict(os.environ, HOME=self.dir))

    def start(self):
        log = open(self.errpath, "ab")
        try:
            self.proc = self.lab.box_popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                           env=self.env)
        finally:
            log.close()
        return self

    def status(self):
        try:
            with open(self.state) as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return {}

    def tunnel(self):
        t = self.status().get("tunnels") or [{}]
        return t[0]

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
