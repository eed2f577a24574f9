"""Polls with a deadline, the only way the tests wait for something (never a bare sleep).

wait_until raises with what it waited for; wait_for returns the last value, for `assert wait_for(...)`.
"""

import time


def wait_until(fn, timeout, interval=0.2, what="condition"):
    """Poll fn() until it returns something truthy; return that, or raise AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s (last: %r)" % (timeout, what, last))
        time.sleep(interval)


def wait_for(pred, timeout=5.0, step=0.05):
    """Poll pred() until it returns something truthy or `timeout` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(step)
    return pred()
