"""Shared pytest setup: import paths, the `integration` marker, the `lab` fixture (tests/support/lab.py)."""

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SUPPORT = os.path.join(HERE, "support")
for _p in (ROOT, SUPPORT):  # `import agent` and `import lab` (tests/support) from any test
    if _p not in sys.path:
        sys.path.insert(0, _p)

import hubroot  # noqa: E402
import lab as labmod  # noqa: E402
import early  # noqa: E402
import lanes  # noqa: E402
from otheruser import OtherUserCopy  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "integration: needs root, network namespaces and real sshd/dropbear (tests/support/lab.py)")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    """The whole suite: the lab tests of tests/support/lanes.py's LANE2_FILES go to a second pytest process that
    starts now. What a selected test waits for on the wall clock starts now too (tests/support/early.py)."""
    lanes.split(config, items)
    if not config.option.collectonly:
        early.start_selected(items)


def pytest_sessionfinish(session, exitstatus):
    lanes.close()  # only if it is still running (interrupted)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture(scope="session")
def other_user_copy():
    """The agent package, the pyz and the python3-light guard in a /tmp directory another user can read
    (tests/support/otheruser.py): what a test runs as `nobody` or the tunnel user, never the checkout itself."""
    copy = OtherUserCopy()
    try:
        yield copy
    finally:
        copy.close()


@pytest.fixture
def lab(request):
    """A fresh Lab (two namespaces, veth, tunnel user, client keys); closed after the test.

    A test parametrized over `hub` (hubroot.GENERATIONS: "deb12", "deb13") gets a lab whose servers
    are of that generation; the deb13 root is made on first use (tests/support/hubroot.py).

    Never skips: if the machine cannot run it (not root, a tool missing) the test FAILS saying what.
    On failure, the tail of every server log is printed (pytest shows it under the teardown output).
    """
    problems = labmod.missing_requirements()
    if problems:
        pytest.fail("the lab cannot run here: " + "; ".join(problems), pytrace=False)
    tag = "".join(c if c.isalnum() else "_" for c in request.node.name)[:40]
    callspec = getattr(request.node, "callspec", None)
    gen = callspec.params.get("hub", hubroot.DEFAULT) if callspec else hubroot.DEFAULT
    with labmod.Lab(tag=tag, generation=gen) as lab_:
        yield lab_
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            for srv in lab_.servers:
                print("---- %s (%s) port %d log (tail) ----\n%s" % (srv.kind, srv.version, srv.port,
                                                               srv.log_text()[-3000:]))
