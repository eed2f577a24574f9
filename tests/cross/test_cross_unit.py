"""The pure unit tests (every tests/unit/test_*.py but NATIVE_ONLY: no namespaces, no ssh) run by each root's python.

pytest and hypothesis are unpacked into the root from pure-Python wheels (roots.ensure_pytest). The
interpreter-wide python3-light guard would stop pytest itself (it imports decimal, logging,
unittest), so these runs use tests/cross/agentguard.py: the same blocked list, applied to imports made
by the `agent` package (and whatever it pulls in), whatever pytest has loaded.

The runs of all roots start together in the background right after collection, at the lowest CPU
priority, and these tests run last: each only waits for its root's runs (tests/cross/unitruns.py).
"""

import re

import pytest

import unitruns
from agentguard import HEADER


@pytest.fixture
def unit_runs(root):
    """The background runs (tests/cross/unitruns.py), started by tests/cross/conftest.py after collection;
    started here for this root if that did not happen (they then run while this test waits)."""
    return unitruns.start([root.name])


def test_unit_tests_under_root_python(root, unit_runs, record):
    results = unit_runs.wait(root.name)
    summaries, seconds = [], []
    for rc, out in results:
        summary = out.strip().splitlines()[-1].strip("= ") if out.strip() else ""
        assert HEADER in out, "the agent import guard did not report itself active:\n" + out[-3000:]
        assert rc == 0, "unit tests failed under %s's python (rc %s):\n%s" % (root.name, rc, out[-6000:])
        assert re.search(r"[1-9]\d* passed", summary), summary
        summaries.append(summary)
        seconds += [float(x) for x in re.findall(r" in ([0-9.]+)s", summary)]
    record("unit_tests", "; ".join(summaries))
    record("unit_seconds", max(seconds or [0]))  # the longest run, as its pytest reported it (niced, in the background)
