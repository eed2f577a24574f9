"""tests/cross: the `root` fixture (every test runs once per root) and the timing results file.

Roots: armhf, arm64, mipsel (Debian 12 packages under QEMU user mode) and trixie (Debian 13 amd64:
dropbear 2025.89, Python 3.13, native). See roots.py. A root that cannot be built FAILS the test
with what is missing; nothing here skips.
"""

import json
import os
import platform
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
for _p in (HERE, os.path.join(TESTS, "support")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import roots as rootsmod  # noqa: E402
import unitruns  # noqa: E402

# Where a run's measurements go: build/cross-results.json (ignored by git), so that `make test` leaves
# the checkout clean. The record docs/cross.md quotes, tests/cross/results.json, changes only on purpose:
# SSHKEEP_CROSS_RESULTS=tests/cross/results.json make cross
RESULTS = os.path.abspath(os.environ.get("SSHKEEP_CROSS_RESULTS")
                          or os.path.join(os.path.dirname(TESTS), "build", "cross-results.json"))
_results = {}  # root name -> {measure: value}, written at session end


def pytest_generate_tests(metafunc):
    if "root" in metafunc.fixturenames:
        metafunc.parametrize("root", rootsmod.ALL, indirect=True, scope="session")


@pytest.hookimpl(trylast=True)  # after pytest's own reordering by the session-scoped `root`
def pytest_collection_modifyitems(session, config, items):
    """test_cross_unit's tests go last, and the runs they wait for start now, in the background at the
    lowest CPU priority (tests/cross/unitruns.py): their QEMU time overlaps the rest of the suite."""
    unit = [i for i in items if i.path.name == "test_cross_unit.py"]
    if not unit:
        return
    items[:] = [i for i in items if i not in unit] + unit
    if config.option.collectonly:
        return
    unitruns.start([i.callspec.params["root"] for i in unit if hasattr(i, "callspec")])


@pytest.fixture(scope="session")
def root(request):
    """A built root (roots.Root); the test FAILS, saying what is missing, if it cannot be."""
    try:
        return rootsmod.ensure_root(request.param)
    except rootsmod.RootError as e:
        pytest.fail("cross root %s: %s" % (request.param, e), pytrace=False)


@pytest.fixture(scope="session")
def root_with_pytest(root):
    """The same root with pytest (pure-Python wheels from PyPI) unpacked into it."""
    try:
        rootsmod.ensure_pytest(root)
    except rootsmod.RootError as e:
        pytest.fail("pytest in cross root %s: %s" % (root.name, e), pytrace=False)
    return root


@pytest.fixture
def record(root):
    """record(key, value): a timing or fact for this root, written to RESULTS at the end of the run."""
    def put(key, value):
        _results.setdefault(root.name, {})[key] = value
    return put


def _machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    qemu = ""
    try:
        qemu = subprocess.run(["/usr/bin/qemu-arm-static", "--version"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, timeout=10).stdout.decode().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        pass
    return {"cpu": model, "cpus": os.cpu_count(), "kernel": platform.release(), "qemu": qemu}


def pytest_sessionfinish(session, exitstatus):
    """Stop what is left of the background unit-test runs; merge this run's measurements into RESULTS
    (roots not run this time keep their entry)."""
    unitruns.close()
    if not _results:
        return
    try:
        with open(RESULTS) as f:
            data = json.load(f)
    except (OSError, ValueError):
        data = {}
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    data.setdefault("roots", {})
    for name, values in _results.items():
        entry = data["roots"].setdefault(name, {})
        entry.update(values)
        entry["measured"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        info = rootsmod.Root(name).info()
        entry["arch"], entry["suite"] = info.get("arch"), info.get("suite")
        entry["python"], entry["dropbear"] = info.get("python"), info.get("dropbear")
        entry["root_kb"] = info.get("size_kb")
    data["machine"] = _machine()
    data["note"] = ("seconds, wall clock, written by `make cross` (tests/cross). pyz_version_*: "
                    "`python sshkeep.pyz --version` under the python3-light guard, a fresh process each "
                    "time (page cache warm, .pyc present like on OpenWrt). first_up: agent start to "
                    "state 'up'. heal: server session killed to state 'up' again.")
    tmp = RESULTS + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, RESULTS)
