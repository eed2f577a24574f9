"""A second lane for the lab tests that mostly wait (issue 26).

Most of `make test`'s wall time is lab tests waiting on timers of their scenarios (a 20 s outage, a 30 s
watch, the agent's watchdog and backoff) with the CPU idle. When the whole suite runs (the collector
test tests/integration/test_lanes.py is selected), tests/conftest.py hands the selected tests of LANE2_FILES to a
second pytest process right after collection; it runs beside this session, its own tests one at a
time, and test_lanes.py waits for it at the end and fails with its report if any of its tests failed.
Each lab has its own namespaces, home and files (tests/support/lab.py), so two at a time share nothing.
A run of some files or tests (`pytest tests/integration/test_health.py -k ...`) has no second lane.
Only lab tests belong in LANE2_FILES: tests that use the machine outside a lab (e.g. the cross roots'
background runs, the busybox crond) stay in lane 1.

Lane 2's whole report is kept in build/test-lane2.log (ignored by git).
"""

import os
import signal
import subprocess
import sys

ENV = "SSHKEEP_TEST_LANE"  # set in lane 2's environment: it never splits again
COLLECTOR = "test_lanes.py"
LOG = os.path.join("build", "test-lane2.log")  # under pytest's rootdir (the checkout), wherever this file is
# The files lane 2 takes (about the seconds each takes alone on this 2-core machine, 2026-12-06), so that
# both lanes end at about the same time: with test_identity.py (45 s) and test_session_cuts.py (28 s)
# here too, lane 2 took 584 s and lane 1 waited 143 s for it at the end.
LANE2_FILES = (
    "test_health.py",           # 230
    "test_session_checks.py",   # 190
    "test_hubs.py",             # 37
    "test_runtime_lab.py",      # 29
)

_lane = []  # the one Lane of this session


class Lane(object):
    def __init__(self, nodeids, cwd):
        self.nodeids = list(nodeids)
        self.log = os.path.join(cwd, LOG)
        os.makedirs(os.path.dirname(self.log), exist_ok=True)
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE"] + self.nodeids
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(argv, cwd=cwd, env=dict(os.environ, **{ENV: "2"}), stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, timeout):
        """(returncode or None if it did not end within timeout, its report)."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.close()
            rc = None
        with open(self.log, "rb") as f:
            return rc, f.read().decode(errors="replace")

    def close(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: pytest and its labs
                self.proc.wait(30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(5)


def split(config, items):
    """Called after collection: hand LANE2_FILES' tests to a second lane when the collector is selected;
    the collector goes last. Changes items in place."""
    if os.environ.get(ENV) or config.option.collectonly:
        return
    collector = [i for i in items if i.path.name == COLLECTOR]
    if not collector:
        return
    moved = [i for i in items if i.path.name in LANE2_FILES]
    items[:] = [i for i in items if i not in moved and i not in collector] + collector
    if moved:
        _lane.append(Lane([i.nodeid for i in moved], str(config.rootpath)))


def current():
    """The second lane of this session, or None (nothing was handed over)."""
    return _lane[0] if _lane else None


def close():
    while _lane:
        _lane.pop().close()
