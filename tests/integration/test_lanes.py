"""The second lane (tests/support/lanes.py): its tests all ran, and passed."""

import re

import lanes

TIMEOUT = 1800  # seconds lane 2 may still take once this test waits for it


def test_second_lane_passed():
    lane = lanes.current()
    if lane is None:  # nothing was handed over: those tests ran in this session, if selected
        return
    rc, out = lane.wait(TIMEOUT)
    summary = out.strip().splitlines()[-1] if out.strip() else ""
    assert rc is not None, "lane 2 did not end %d s after the suite began waiting for it:\n%s" % (
        TIMEOUT, out[-20000:])
    assert rc == 0, "lane 2 (%s) failed:\n%s" % (lane.log, out[-20000:])
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) == len(lane.nodeids), (
        "lane 2 was handed %d tests: %s\n%s" % (len(lane.nodeids), summary, out[-6000:]))
