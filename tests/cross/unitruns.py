"""The background runs of the pure unit tests (every tests/unit/test_*.py but NATIVE_ONLY) under each root's python.

They are started by tests/cross/conftest.py right after collection, at the lowest CPU priority
(`nice -n 19`), and their tests (tests/cross/test_cross_unit.py) are moved to the end of the session:
the emulated runs use the CPU the lab tests leave idle while those wait on timers and real servers,
instead of adding their ~2 minutes of QEMU to `make test` (issue 26). Each test then only waits for its
root's processes and reads their output.
"""

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

import roots as rootsmod

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
TIMEOUT = 420  # seconds a root's runs may still take once its test waits for them
NICE = ["nice", "-n", "19"]

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
            argv = NICE + root.python + ["-m", "pytest", "-p", "no:cacheprovider", "-p", "agentguard", "-rfE",
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
        # short, like pytest's own /tmp/pytest-of-root/pytest-N: test_unit_remote's hostile-banner test
        # puts tmp_path three times into a banner limited to 256 bytes
        return "/tmp/skcu%d-%s" % (os.getpid(), tag)

    def wait(self, name):
        """[(returncode, output)] per process; fails the test on a set-up error, or if the processes have
        not ended TIMEOUT seconds after this call (they ran in the background until now)."""
        runs = self.runs[name]
        if isinstance(runs, str):
            pytest.fail(runs, pytrace=False)
        results, deadline = [], time.monotonic() + TIMEOUT
        for proc, log, t0 in runs:
            try:
                proc.wait(max(1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._kill(proc)
                pytest.fail("unit tests under %s did not finish %ds after the suite began waiting for them "
                            "(%ds after their start):\n%s" % (name, TIMEOUT, time.monotonic() - t0, _tail(log)),
                            pytrace=False)
            results.append((proc.returncode, _tail(log, 10 ** 7)))
        return results

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


_runs = []  # the one UnitRuns of this session


def start(names):
    """Start the runs for these roots (once per session); returns the UnitRuns."""
    if not _runs:
        _runs.append(UnitRuns())
    runs = _runs[0]
    for name in names:
        if name not in runs.runs:
            runs.start(name)
    return runs


def close():
    while _runs:
        _runs.pop().close()
