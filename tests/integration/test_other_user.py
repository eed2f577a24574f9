"""Tests that run something as another user pass from a checkout that user cannot read (issue 26).

Debian's /root is 0700 and `mktemp -d` makes a 0700 directory: a clone there is closed to `nobody` and
to the lab's tunnel user. Such tests take their code from the fixture other_user_copy (tests/support/otheruser.py),
a copy in /tmp made readable for them; this file checks that copy, then runs one test of each kind from a
0700 copy of the checkout.
"""

import os
import shutil
import subprocess
import sys
import tempfile

import lightguard
from agentrun import require_pyz
from otheruser import ROOT, OtherUserCopy, searchable_by_others

NOBODY = 65534

# One of each kind, each run as another user: `python -m agent` as nobody (setpriv), the agent importing
# as nobody after setuid, the pyz as the lab's tunnel user on the hub, and the copy itself.
FROM_A_PRIVATE_CHECKOUT = (
    "tests/unit/test_hub_view.py::test_cli_missing_and_unreadable_dir_one_clear_line",
    "tests/unit/test_state_private.py::test_default_state_of_a_user_lives_in_a_private_directory",
    "tests/integration/test_hub.py::test_hub_picked_port_is_recorded_shown_by_status_and_the_hub[openssh-openssh]",
    "tests/integration/test_other_user.py::test_the_copy_serves_another_user",
)


def as_nobody(copy, argv, **kw):
    kw.setdefault("env", dict(os.environ, HOME="/nonexistent"))
    return subprocess.run(copy.setpriv(NOBODY) + list(argv), cwd=copy.dir, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60, **kw)


def test_the_copy_serves_another_user(other_user_copy):
    copy = other_user_copy
    assert os.geteuid() == 0, "run as root: the test drops to uid %d" % NOBODY
    assert not (copy.dir + "/").startswith(ROOT + "/"), "the copy must live outside the checkout"
    assert searchable_by_others(copy.dir) is None
    env = lightguard.guard_env(dict(os.environ, PYTHONPATH=copy.pythonpath, HOME="/nonexistent"),
                               guard_dir=copy.guard_dir)
    r = as_nobody(copy, [copy.python, "-c", "import agent; print(agent.__file__)"], env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == os.path.join(copy.pythonpath, "agent", "__init__.py")
    lightguard.check_active(copy.python, env, cmd_prefix=copy.setpriv(NOBODY))
    r = as_nobody(copy, ["/usr/bin/python3", copy.pyz, "--version"], env=env)
    assert r.returncode == 0 and r.stdout.startswith(b"sshkeep "), r.stderr
    r = as_nobody(copy, ["touch", os.path.join(copy.pythonpath, "agent", "planted.py")])
    assert r.returncode != 0, "the copy must not be writable by the other user"


def test_tests_run_as_another_user_pass_from_a_0700_checkout():
    assert os.geteuid() == 0, "run as root: the tests drop to uid %d" % NOBODY
    top = tempfile.mkdtemp(prefix="sshkeep-private-checkout-")  # 0700, like `mktemp -d` or /root
    try:
        assert os.stat(top).st_mode & 0o777 == 0o700
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".hypothesis")
        for sub in ("agent", "tests"):
            shutil.copytree(os.path.join(ROOT, sub), os.path.join(top, sub), ignore=ignore)
        os.makedirs(os.path.join(top, "build"))
        shutil.copy2(require_pyz(), os.path.join(top, "build", "sshkeep.pyz"))
        r = subprocess.run(OtherUserCopy.setpriv(NOBODY) + ["cat", os.path.join(top, "agent", "__init__.py")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        assert r.returncode != 0 and b"Permission denied" in r.stderr, "uid %d can read %s" % (NOBODY, top)
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        env.pop("PYTEST_ADDOPTS", None)
        basetemp = os.path.join(top, "pytest-tmp")
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE",
                            "--basetemp", basetemp] + list(FROM_A_PRIVATE_CHECKOUT), cwd=top, env=env,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=300)
        out = r.stdout.decode(errors="replace")
        assert r.returncode == 0 and "%d passed" % len(FROM_A_PRIVATE_CHECKOUT) in out, out[-6000:]
    finally:
        shutil.rmtree(top, ignore_errors=True)

