"""The pure unit tests (every tests/test_unit_*.py: no namespaces, no ssh) run by each root's python.

pytest and hypothesis are unpacked into the root from pure-Python wheels (roots.ensure_pytest). The
interpreter-wide python3-light guard would stop pytest itself (it imports decimal, logging,
unittest), so these runs use tests/cross/agentguard.py: the same blocked list, applied to imports made
by the `agent` package (and whatever it pulls in), whatever pytest has loaded.

The four runs start together, in the background, when the first of these tests runs (they wait
mostly on timeouts and child processes, so they overlap well); each test then waits for its root.
"""

import glob
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

import roots as rootsmod
from agentguard import HEADER

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
TIMEOUT = 420

# Tests that cannot pass here for a reason that does not exist on a box: /proc/PID/cmdline of a
# root's python is not `python3 script ...`. Under QEMU it starts with the binfmt interpreter
# (/usr/libexec/qemu-binfmt/arm-binfmt-P /ROOT/usr/bin/python3.11 /ROOT/usr/bin/python3.11 script ...);
# the trixie root's python runs through its loader (ld-linux-x86-64.so.2 --library-path ... --argv0 ...).
# procs.looks_like_sshkeep (rightly) looks at the program name only, so it sees qemu or ld.so.
NOT_NATIVE_ARTEFACTS = (
    "tests/test_unit_pidfile.py::test_cmdline_and_is_sshkeep_on_real_processes",
    "tests/test_unit_pidfile.py::test_lifecycle_against_standin_agent",
)


class UnitRuns(object):
    """One background `python -m pytest tests/test_unit_*.py` per root."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="sshkeep-cross-unit-%d-" % os.getpid())
        self.runs = {}  # name -> (Popen | None, log path, t0, error)

    def start(self, name):
        log = os.path.join(self.dir, name + ".log")
        try:
            root = rootsmod.ensure_root(name)
            rootsmod.ensure_pytest(root)
        except rootsmod.RootError as e:
            self.runs[name] = (None, log, time.monotonic(), "cross root %s: %s" % (name, e))
            return
        files = sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "tests", "test_unit_*.py")))
        if not files:
            self.runs[name] = (None, log, time.monotonic(), "no tests/test_unit_*.py in %s" % REPO)
            return
        env = root.run_env()
        env["PYTHONPATH"] = HERE  # for -p agentguard; tests/conftest.py adds the repo and tests/
        env["HYPOTHESIS_STORAGE_DIRECTORY"] = os.path.join(self.dir, name + ".hypothesis")
        env.pop("PYTEST_ADDOPTS", None)
        # not -q: the report header carries agentguard's "active" line
        argv = root.python + ["-m", "pytest", "-p", "no:cacheprovider", "-p", "agentguard", "-rfE",
                              "--basetemp", os.path.join(self.dir, name + ".tmp")]
        for test_id in NOT_NATIVE_ARTEFACTS:
            argv += ["--deselect", test_id]
        argv += files
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.runs[name] = (proc, log, time.monotonic(), None)

    def wait(self, name):
        """(returncode, output, seconds); fails the test on a set-up error or timeout."""
        proc, log, t0, error = self.runs[name]
        if error:
            pytest.fail(error, pytrace=False)
        try:
            proc.wait(max(1, TIMEOUT - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            self._kill(proc)
            pytest.fail("unit tests under %s did not finish in %ds:\n%s" % (name, TIMEOUT, _tail(log)),
                        pytrace=False)
        seconds = time.monotonic() - t0
        with open(log, "rb") as f:
            return proc.returncode, f.read().decode(errors="replace"), seconds

    @staticmethod
    def _kill(proc):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # its own session: pytest and its children
                proc.wait(5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)

    def close(self):
        for proc, _, _, _ in self.runs.values():
            if proc is not None:
                self._kill(proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def _tail(path, n=4000):
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")[-n:]
    except OSError:
        return ""


@pytest.fixture(scope="session")
def unit_runs():
    runs = UnitRuns()
    try:
        for name in rootsmod.ALL:
            runs.start(name)
        yield runs
    finally:
        runs.close()


def test_unit_tests_under_root_python(root, unit_runs, record):
    rc, out, seconds = unit_runs.wait(root.name)
    summary = out.strip().splitlines()[-1] if out.strip() else ""
    assert HEADER in out, "the agent import guard did not report itself active:\n" + out[-3000:]
    assert rc == 0, "unit tests failed under %s's python (rc %s):\n%s" % (root.name, rc, out[-6000:])
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) > 0, summary
    record("unit_tests", summary)
    record("unit_seconds", round(seconds, 1))
