"""A copy of the code under test that ANOTHER user can read, for tests that drop privileges (issue 26).

A test that runs the agent, `sshkeep hub` or the python3-light guard as another uid (`nobody`, the lab's
tunnel user) must not run them from the checkout: a clone in /root (0700 on Debian) or in a `mktemp -d`
directory cannot be read by that user, and loosening the checkout's modes is not an answer. Instead:

    copy = OtherUserCopy()         # the pytest fixture `other_user_copy` (tests/conftest.py), per session
    copy.pythonpath                # a directory holding `agent/`: PYTHONPATH for `python -m agent ...`
    copy.pyz                       # build/sshkeep.pyz, copied on first use
    copy.guard_dir                 # the python3-light guard (lightguard.guard_env(guard_dir=...))
    copy.python                    # an interpreter path the other user can execute
    copy.setpriv(uid)              # the argv prefix that runs what follows as uid (its own group, no others)
    copy.close()                   # removes the copy

Everything lives in a fresh directory under /tmp (not $TMPDIR: it may be private too), directories 0755
and files 0644, owned by root: readable and never writable by the other user. The one place for this;
tests/integration/test_other_user.py proves the suite needs nothing more, from a 0700 copy of the checkout.
"""

import os
import shutil
import stat
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PARENT = "/tmp"


def searchable_by_others(path):
    """The first ancestor of path (path included) that another user cannot search, or None."""
    path = os.path.abspath(path)
    while True:
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return path
        up = os.path.dirname(path)
        if up == path:
            return None
        path = up


def open_up(top):
    """Directories 0755, files 0644 (0755 if executable by the owner), under top and top itself."""
    for dirpath, dirs, files in os.walk(top):
        os.chmod(dirpath, 0o755)
        for name in files:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, 0o755 if os.stat(p).st_mode & stat.S_IXUSR else 0o644)


def other_python():
    """This interpreter as a path another user can execute: a venv's python is often inside the
    checkout (build/venv), its real file is not; a cross root's python lives in the root cache."""
    for cand in (sys.executable, os.path.realpath(sys.executable)):
        if searchable_by_others(os.path.dirname(cand)) is None:
            return cand
    raise AssertionError("no path to %s (real: %s) that another user can reach" % (
        sys.executable, os.path.realpath(sys.executable)))


class OtherUserCopy(object):
    def __init__(self, parent=PARENT):
        self.dir = tempfile.mkdtemp(prefix="sshkeep-other-user-", dir=parent)
        blocked = searchable_by_others(self.dir)
        if blocked not in (None, self.dir):
            self.close()
            raise AssertionError("%s cannot be searched by other users: no place for a copy they can read"
                                 % blocked)
        self.pythonpath = os.path.join(self.dir, "code")
        shutil.copytree(os.path.join(ROOT, "agent"), os.path.join(self.pythonpath, "agent"),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        self.guard_dir = os.path.join(self.dir, "lightguard_site")
        shutil.copytree(os.path.join(HERE, "lightguard_site"), self.guard_dir,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        open_up(self.dir)
        self.python = other_python()
        self._pyz = None

    @property
    def pyz(self):
        """build/sshkeep.pyz, copied here on first use (fails like agentrun.require_pyz if not built)."""
        if self._pyz is None:
            from agentrun import require_pyz
            dest = os.path.join(self.dir, "sshkeep.pyz")
            shutil.copyfile(require_pyz(), dest)
            os.chmod(dest, 0o644)
            self._pyz = dest
        return self._pyz

    @staticmethod
    def setpriv(uid, gid=None):
        uid = str(uid)
        return ["setpriv", "--reuid", uid, "--regid", str(gid if gid is not None else uid), "--clear-groups",
                "--"]

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)
