"""The built sshkeep.pyz starts under each root's python, with the python3-light guard on."""

import os
import subprocess
import time

import lightguard
from agentrun import require_pyz

RUNS = 3


def guarded_env(root):
    env = lightguard.guard_env(root.run_env())
    lightguard.check_active(root.python[-1], env, cmd_prefix=root.python[:-1], timeout=120)
    return env


def test_guard_active_under_root_python(root):
    guarded_env(root)  # AssertionError with the interpreter's output if `import logging` still works


def test_pyz_version_cold_start(root, record):
    pyz = require_pyz()
    env = guarded_env(root)
    times, out = [], ""
    for _ in range(RUNS):  # each a fresh interpreter: what a user feels on every `sshkeep` command
        t0 = time.monotonic()
        p = subprocess.run(root.python + [pyz, "--version"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, env=env, timeout=120)
        times.append(time.monotonic() - t0)
        out = p.stdout.decode(errors="replace")
        assert p.returncode == 0 and out.startswith("sshkeep "), out
    record("pyz_version_first", round(times[0], 3))
    record("pyz_version_median", round(sorted(times)[len(times) // 2], 3))
    record("pyz_version", out.strip())


def test_pyz_help_and_status_without_agent(root, tmp_path):
    """Code paths past --version: argparse help, and `status --json` with no agent running."""
    pyz = require_pyz()
    env = guarded_env(root)
    p = subprocess.run(root.python + [pyz, "run", "--help"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, env=env, timeout=120)
    assert p.returncode == 0 and "--client" in p.stdout.decode(), p.stdout.decode()
    state = os.path.join(str(tmp_path), "none.json")
    p = subprocess.run(root.python + [pyz, "status", "--json", "--state", state], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=120)
    err = p.stderr.decode(errors="replace")
    assert "blocked by python3-light guard" not in err and "Traceback" not in err, err
