"""Start what a test waits for on the wall clock right after collection, so the wait overlaps the tests
before it instead of adding to `make test` (issue 26). E.g. busybox crond runs a job only at the next
minute boundary: 0-60 s of nothing but waiting.

    def start_crond():                 # returns an object with close(); runs in the background
        ...
    @early.starts_early(start_crond)
    def test_x():
        run = early.get(start_crond)   # the one started after collection (or now, if it was not)
        try: ... finally: run.close()

tests/conftest.py calls start_selected(items) after collection (not under --collect-only): one call of
each starter for the selected tests. Whatever was started and not closed is closed at exit.
"""

import atexit

_started = {}  # starter -> what it returned


def starts_early(starter):
    def mark(fn):
        fn.start_early = starter
        return fn
    return mark


class _Failed(object):
    def __init__(self, exc):
        self.exc = exc

    def close(self):
        pass


def start_selected(items):
    for item in items:
        starter = getattr(getattr(item, "function", None), "start_early", None)
        if starter is not None and starter not in _started:
            try:
                _started[starter] = starter()
            except Exception as e:  # raised again by get(), in the test
                _started[starter] = _Failed(e)


def get(starter):
    """What starter returned after collection (handed over once), or what it returns now."""
    run = _started.pop(starter) if starter in _started else starter()
    if isinstance(run, _Failed):
        raise run.exc
    return run


@atexit.register
def _close_left():
    while _started:
        _, run = _started.popitem()
        try:
            run.close()
        except Exception:  # keep closing the others
            pass
