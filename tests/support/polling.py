"""Polls with a deadline, the only way the tests wait for something (never a bare sleep).

wait_until raises with what it waited for; wait_for returns the last value, for `assert wait_for(...)`
or for a wait whose caller says itself what timed out (agentrun.Agent.wait adds the agent's log).
"""

import time


def wait_for(pred, timeout=5.0, step=0.05):
    """Poll pred() until it returns something truthy or `timeout` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step)


def wait_until(fn, timeout, interval=0.2, what="condition"):
    """Poll fn() until it returns something truthy; return that, or raise AssertionError."""
    last = wait_for(fn, timeout, interval)
    if not last:
        raise AssertionError("timed out after %.1fs waiting for %s (last: %r)" % (timeout, what, last))
    return last
