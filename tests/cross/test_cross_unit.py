"""The pure unit tests (every tests/unit/test_*.py but NATIVE_ONLY: no namespaces, no ssh) run by each root's python.

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
    "tests/unit/test_pidfile.py::test_cmdline_and_is_sshkeep_on_real_processes",
    "tests/unit/test_pidfile.py::test_lifecycle_against_standin_agent",
)

# Unit files run on the host only: prometheus_client needs ssl (the mipsel root cannot load it); the
# supervisor's tests run the whole agent as a process against a scripted ssh.
NATIVE_ONLY = ("tests/unit/test_hub_view_prometheus.py", "tests/unit/test_supervisor.py")


# Files that mostly wait (timeouts of the remote one-liners, run by the host's shells) get a process
# of their own, so that the waiting overlaps the CPU-bound files.
OWN_PROCESS = ("tests/unit/test_remote.py",)
# Property tests: the parser's input space does not depend on the CPU; the host run does 150 examples.
EMULATED_HYPOTHESIS_EXAMPLES = "40"


class UnitRuns(object):
    """Background `python -m pytest tests/unit/test_*.py` processes per root (see OWN_PROCESS)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="sshkeep-cross-unit-%d-" % os.getpid())
        self.runs = {}  # name -> [(Popen, log path, t0)] or an error string

    def start(self, name):
        try:
            root = rootsmod.ensure_root(name)
            rootsmod.ensure_pytest(root)
        except rootsmod.RootError as e:
            self.runs[name] = "cross root %s: %s" % (name, e)
            return
        files = sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "tests", "unit", "test_*.py")))
        files = [f for f in files if f not in NATIVE_ONLY]
        if not files:
            self.runs[name] = "no tests/unit/test_*.py in %s" % REPO
            return
        groups = [[f] for f in files if f in OWN_PROCESS] + [[f for f in files if f not in OWN_PROCESS]]
        self.runs[name] = []
        for i, group in enumerate(g for g in groups if g):
            tag = "%s-%d" % (name, i)
            env = root.run_env()
            env["PYTHONPATH"] = HERE  # for -p agentguard; tests/conftest.py adds the repo and tests/support
            env["HYPOTHESIS_STORAGE_DIRECTORY"] = os.path.join(self.dir, tag + ".hypothesis")
            if root.emulated:
                env["SSHKEEP_HYPOTHESIS_EXAMPLES"] = EMULATED_HYPOTHESIS_EXAMPLES
            env.pop("PYTEST_ADDOPTS", None)
            # not -q: the report header carries agentguard's "active" line
            argv = root.python + ["-m", "pytest", "-p", "no:cacheprovider", "-p", "agentguard", "-rfE",
                                  "--basetemp", self.basetemp(tag)]
            if root.name == "mipsel":
                argv += ["-p", "qemufix"]  # SO_ERROR comes back untranslated from qemu-mipsel: see qemufix.py
            for test_id in NOT_NATIVE_ARTEFACTS:
                argv += ["--deselect", test_id]
            log = os.path.join(self.dir, tag + ".log")
            with open(log, "wb") as out:
                proc = subprocess.Popen(argv + group, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            self.runs[name].append((proc, log, time.monotonic()))

    def basetemp(self, tag):
        # short, like pytest's own /tmp/pytest-of-root/pytest-N: tests/unit/test_remote.py's hostile-banner test
        # puts tmp_path three times into a banner limited to 256 bytes
        return "/tmp/skcu%d-%s" % (os.getpid(), tag)

    def wait(self, name):
        """[(returncode, output)] per process, and the seconds until the last ended; fails the test on
        a set-up error or a timeout."""
        runs = self.runs[name]
        if isinstance(runs, str):
            pytest.fail(runs, pytrace=False)
        results, end = [], time.monotonic()
        for proc, log, t0 in runs:
            try:
                proc.wait(max(1, TIMEOUT - (time.monotonic() - t0)))
            except subprocess.TimeoutExpired:
                self._kill(proc)
                pytest.fail("unit tests under %s did not finish in %ds:\n%s" % (name, TIMEOUT, _tail(log)),
                            pytrace=False)
            end = time.monotonic()
            results.append((proc.returncode, _tail(log, 10 ** 7)))
        return results, end - min(t0 for _, _, t0 in runs)

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
        for name, runs in self.runs.items():
            if isinstance(runs, str):
                continue
            for i, (proc, _, _) in enumerate(runs):
                self._kill(proc)
                shutil.rmtree(self.basetemp("%s-%d" % (name, i)), ignore_errors=True)
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
    results, seconds = unit_runs.wait(root.name)
    summaries = []
    for rc, out in results:
        summary = out.strip().splitlines()[-1].strip("= ") if out.strip() else ""
        assert HEADER in out, "the agent import guard did not report itself active:\n" + out[-3000:]
        assert rc == 0, "unit tests failed under %s's python (rc %s):\n%s" % (root.name, rc, out[-6000:])
        assert re.search(r"[1-9]\d* passed", summary), summary
        summaries.append(summary)
    record("unit_tests", "; ".join(summaries))
    record("unit_seconds", round(seconds, 1))
