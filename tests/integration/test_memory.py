"""The running agent's imports, pinned (issue 18: <= 12 MB resident on x86-64 with 10 forwards).

The agent runs as a fresh runtime that imports only what it runs (agent.launch, agent.run.runtime):
no argparse, no config parser, no json/random/shlex. A new import in the long-running process
grows its memory for good, so it must be a visible decision: add it to RUNTIME_MODULES here
(and measure: python tests/bench/memory.py build/sshkeep.pyz; docs/benchmarks-memory.md).
The built pyz on Debian's python3 (3.11), a fake ssh, checks on, --debug (which puts
sorted(sys.modules) into the state file).
"""

import json
import os
import subprocess
import sys

from agentrun import FakeSshAgent, require_pyz
from polling import wait_until

PYTHON = "/usr/bin/python3"

# What Debian's site adds (setuptools' .pth hook, the apport hook): not ours, not on a router.
ENVIRONMENT = {"_distutils_hack", "sitecustomize", "usercustomize", "apport_python_hook"}

RUNTIME_MODULES = set("""
__future__ __main__ _abc _codecs _collections _collections_abc _frozen_importlib _frozen_importlib_external
_functools _imp _io _locale _operator _posixsubprocess _signal _sitebuiltins _socket _sre _stat _thread
_warnings _weakref _weakrefset abc agent agent.errors
agent.core agent.core.classify agent.core.defaults agent.core.machine agent.core.model agent.core.record
agent.core.session agent.core.spread agent.core.timing agent.core.values
agent.hubside agent.hubside.payload agent.hubside.remote
agent.run agent.run.checks agent.run.child agent.run.clients agent.run.identity agent.run.log agent.run.loop
agent.run.pidfile agent.run.probe agent.run.procs agent.run.serve agent.run.state agent.run.supervisor agent.run.tunnel
array builtins codecs collections collections.abc
contextlib copyreg encodings encodings.aliases encodings.utf_8 enum errno fcntl functools genericpath io
itertools keyword locale marshal math operator os os.path posix posixpath re re._casefix re._compiler
re._constants re._parser reprlib select selectors signal site socket stat subprocess sys threading time
types warnings zipimport
""".split())

START_UP_ONLY = {"argparse", "gettext", "json", "random", "shlex", "difflib", "typing", "dataclasses", "inspect",
                 "agent.cli", "agent.settings", "agent.settings.config", "agent.settings.sshconfig", "agent.launch",
                 "agent.settings.uci", "agent.settings.sshkeep_conf", "agent.settings.sshtunnel_conf",
                 "agent.settings.validate",
                 "agent.lifecycle", "agent.hub",
                 "agent.run.daemon", "agent.run.runtime", "runpy", "importlib.util"}


def test_running_agent_imports_only_the_pinned_modules(tmp_path):
    pyz = require_pyz()
    state = tmp_path / "state.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HOME=str(tmp_path))
    a = FakeSshAgent(str(tmp_path), "ready", ["--client", "openssh", "--debug", "--interval", "2",
                                              "-R", "127.0.0.1:20022:127.0.0.1:22", "-L", "127.0.0.1:31000:127.0.0.1:22",
                                              "127.0.0.1"], pyz=pyz, python=PYTHON, env=env).start()

    def doc():
        try:
            d = json.loads(state.read_text())
        except (OSError, ValueError):
            return None
        t = (d.get("tunnels") or [{}])[0]
        # up, and both checks have run (health, probe and remote are in use)
        return d if t.get("state") == "up" and len(t.get("checks") or {}) == 2 and d.get("modules") else None

    try:
        d = wait_until(doc, 20, 0.1, what="agent up with its checks run")
        loaded = set(d["modules"]) - ENVIRONMENT
        assert not loaded & START_UP_ONLY, sorted(loaded & START_UP_ONLY)
        ver = subprocess.run([PYTHON, "-c", "import sys; print(sys.version_info[:2])"], stdout=subprocess.PIPE,
                             check=True).stdout.strip()
        assert ver == b"(3, 11)", "the pin is for CPython 3.11 (Debian 12's python3): re-pin for %s" % ver
        assert sorted(loaded - RUNTIME_MODULES) == [], "new in the running agent"
        assert sorted(RUNTIME_MODULES - loaded) == [], "no longer imported: drop from the pin"
        with open("/proc/%d/cmdline" % a.proc.pid, "rb") as fh:
            argv = fh.read().split(b"\0")
        assert argv[1] == b"-c" and argv[3] == pyz.encode() and argv[4] == b"_runtime"  # same pid, exec'd
    finally:
        assert a.stop(10) == 0
