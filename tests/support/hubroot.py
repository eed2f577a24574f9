"""Server generations for the lab: which sshd and dropbear a test's hub runs, as real binaries.

    deb12  the machine's own Debian 12 servers: OpenSSH 9.2 (one `sshd` binary), dropbear 2022.83
    deb13  a Debian 13 (trixie) root made here with mmdebstrap: OpenSSH 10.x (the listener execs
           `sshd-session`, PerSourcePenalties on by default), dropbear 2025.89

The deb13 root (about 260 MB, about 70 s to make) lives OUTSIDE the repository in
CACHE_DIR/hub-trixie/root and is reused while CACHE_DIR/hub-trixie/stamp.json matches RECIPE and the
packages below; it is made automatically on first use (a fresh CI machine) under a lock (other test runs
on this machine use it too). The machine's own mirror is used (tests/cross/roots.py reads it from
/etc/apt/sources.list{,.d}). Nothing is skipped: a missing piece (mmdebstrap, the mirror, root) raises
HubError saying what to install; the tests then FAIL with it.

Each lab runs a deb13 server from its own overlay of the cached root (lab.py): the overlay gets the
tunnel user (the host's uid) in passwd/group/shadow, the lab's home bind-mounted at the same path, /proc,
and the server's config and host key under /etc/ssh; the base root is never written after it is built.

As a script: `python3 tests/support/hubroot.py` makes (or checks) the root and prints its versions.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "cross"))
import roots as _cross  # noqa: E402  (the machine's mirror, the cache lock)

CACHE_DIR = os.environ.get("SSHKEEP_TEST_CACHE", "/var/cache/sshkeep-tests")
RECIPE = 1  # bump when the recipe changes: the cached root is made again
SUITE = "trixie"
PACKAGES = ("openssh-server", "dropbear-bin", "python3-minimal", "procps")
GENERATIONS = ("deb12", "deb13")
DEFAULT = "deb12"


class HubError(RuntimeError):
    """The deb13 hub root cannot be made or run here; the message says what is missing."""


def _log(msg):
    sys.stderr.write("hubroot: %s\n" % msg)
    sys.stderr.flush()


def _run(argv, timeout=60, what=None):
    try:
        r = subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=timeout)
    except FileNotFoundError:
        raise HubError("%s: %s not found" % (what or "command", argv[0]))
    except subprocess.TimeoutExpired:
        raise HubError("%s: `%s` took more than %ds" % (what or "command", " ".join(argv[:3]), timeout))
    out = r.stdout.decode(errors="replace")
    if r.returncode != 0:
        raise HubError("%s failed (exit %d): %s\n%s" % (what or "command", r.returncode, " ".join(argv),
                                                      out[-3000:]))
    return out


def host_versions():
    """What the machine's own (deb12) servers are: {"openssh": "OpenSSH_9.2p1", "dropbear": "2022.83"}."""
    return _versions([])


def _versions(prefix):
    """sshd -V and dropbear -V (both print to stderr and sshd exits 1 after it: not checked)."""
    out = {}
    for key, argv in (("openssh", ["/usr/sbin/sshd", "-V"]), ("dropbear", ["/usr/sbin/dropbear", "-V"])):
        try:
            r = subprocess.run(prefix + argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise HubError("cannot run %s: %s" % (" ".join(prefix + argv), e))
        text = r.stdout.decode(errors="replace")
        words = text.replace(",", " ").split()
        if key == "openssh":
            ver = next((w for w in words if w.startswith("OpenSSH_")), None)
        else:
            ver = next((w.lstrip("v") for w in words if w.lstrip("v")[:2] == "20" and "." in w), None)
        if ver is None:
            raise HubError("%s printed no version: %s" % (" ".join(prefix + argv), text.strip()[-300:]))
        out[key] = ver
    return out


class HubRoot(object):
    """The cached Debian 13 root: its path and the versions of its servers."""

    def __init__(self):
        self.base = os.path.join(CACHE_DIR, "hub-" + SUITE)
        self.dir = os.path.join(self.base, "root")
        self.stamp = os.path.join(self.base, "stamp.json")

    def wanted(self):
        return {"recipe": RECIPE, "suite": SUITE, "packages": list(PACKAGES)}

    def info(self):
        try:
            with open(self.stamp) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def is_current(self):
        got = self.info()
        return all(got.get(k) == v for k, v in self.wanted().items()) and \
            os.path.exists(os.path.join(self.dir, "usr/sbin/sshd"))

    @property
    def versions(self):
        info = self.info()
        return {"openssh": info.get("openssh"), "dropbear": info.get("dropbear")}


def _build(root):
    if shutil.which("mmdebstrap") is None:
        raise HubError("mmdebstrap not found: apt-get install mmdebstrap (build/deps.sh installs it); "
                       "the deb13 hub (OpenSSH 10, dropbear 2025) is made with it")
    try:
        uri, signed_by = _cross.debian_mirror()
    except _cross.RootError as e:
        raise HubError(str(e))
    opt = " [signed-by=%s]" % signed_by if signed_by.startswith("/") else ""
    t0 = time.monotonic()
    os.makedirs(root.base, exist_ok=True)
    work = tempfile.mkdtemp(prefix="build.", dir=root.base)
    try:
        tmp_root = os.path.join(work, "root")
        _log("mmdebstrap %s from %s into %s (about 70 s, 260 MB; once per machine)" % (SUITE, uri, root.dir))
        _run(["mmdebstrap", "--quiet", "--variant=minbase", "--include=" + ",".join(PACKAGES), SUITE, tmp_root,
              "deb%s %s %s main" % (opt, uri, SUITE)], timeout=900, what="mmdebstrap %s" % SUITE)
        os.makedirs(os.path.join(tmp_root, "run/sshd"), mode=0o755, exist_ok=True)
        for name in os.listdir(os.path.join(tmp_root, "etc/ssh")):
            if name.startswith("ssh_host_"):  # each lab server brings its own host key
                os.remove(os.path.join(tmp_root, "etc/ssh", name))
        versions = _versions(["chroot", tmp_root])
        size = int(_run(["du", "-sk", tmp_root]).split()[0])
        if os.path.lexists(root.dir):
            shutil.rmtree(root.dir)
        os.rename(tmp_root, root.dir)
        stamp = dict(root.wanted(), mirror=uri, size_kb=size, seconds=round(time.monotonic() - t0, 1),
                     built=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **versions)
        with open(root.stamp + ".tmp", "w") as f:
            json.dump(stamp, f, indent=1, sort_keys=True)
        os.replace(root.stamp + ".tmp", root.stamp)
        _log("made %s: %s, dropbear %s, %d MB in %.0f s" % (root.dir, versions["openssh"], versions["dropbear"],
                                                           size // 1024, time.monotonic() - t0))
    finally:
        shutil.rmtree(work, ignore_errors=True)


_checked = []  # the HubRoot once it was found current in this process


def ensure_hub_root():
    """The cached deb13 root, made first if missing or stale. Raises HubError saying what is missing."""
    if _checked:
        return _checked[0]
    if os.geteuid() != 0:
        raise HubError("making the deb13 hub root needs root (mmdebstrap, chroot)")
    root = HubRoot()
    if not root.is_current():
        with _Lock(root.base):
            if not root.is_current():
                _build(root)
    _checked.append(root)
    return root


class _Lock(object):
    """An exclusive flock next to the cached root, bounded (a build takes about 70 s)."""

    def __init__(self, base):
        os.makedirs(os.path.dirname(base), exist_ok=True)
        self.path = base + ".lock"

    def __enter__(self):
        import fcntl
        self.fh = open(self.path, "a")
        deadline = time.monotonic() + 900
        while True:
            try:
                fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self.fh.close()
                    raise HubError("lock %s held by another process for 900 s" % self.path)
                time.sleep(0.5)

    def __exit__(self, *exc):
        import fcntl
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def main():
    try:
        root = ensure_hub_root()
    except HubError as e:
        sys.stderr.write("hub root: %s\n" % e)
        return 1
    info = root.info()
    print("deb12 (host): %s" % host_versions())
    print("deb13 %s: %s, dropbear %s, %d MB" % (root.dir, info.get("openssh"), info.get("dropbear"),
                                               info.get("size_kb", 0) // 1024))
    return 0


if __name__ == "__main__":
    sys.exit(main())
