"""Foreign and newer-generation root filesystems for the cross tests, from Debian's own packages.

    root = ensure_root("armhf")     # or "arm64", "mipsel", "trixie" (amd64, Debian 13)
    subprocess.run(root.python + ["-c", "print(1)"], env=root.run_env())
    root.dbclient_wrapper           # executable script: the root's dbclient, usable as `sshkeep --ssh`

Roots (about 11 MB of .debs each; 45-70 MB unpacked, with pytest, hypothesis and .pyc) live in
a cache OUTSIDE the repository, CACHE_DIR/<name>/root, and are reused while
CACHE_DIR/<name>/stamp.json matches what this file would build. Building one:
  1. a private apt configuration (sources list, lists dir, status file, cache) under CACHE_DIR/apt-SUITE,
     naming the SAME mirror as this machine's own sources (read from /etc/apt/sources.list{,.d/*}) and
     the suite (bookworm for the foreign CPUs, trixie for the newer generation); `apt-get update` and
     `apt-get download PKG:ARCH` with it. The host's lists, status and dpkg architectures are not
     touched (no `dpkg --add-architecture` is needed: APT::Architectures does it for a private apt),
     so the host's own `apt-get install` is unaffected and no host apt lock is taken;
  2. `dpkg -x` every .deb into a temporary root, then usr-merge it (/lib, /bin, /sbin into /usr):
     with split /lib and /usr/lib, dbclient under `qemu -L ROOT` cannot find libz;
  3. byte-compile the root's stdlib (OpenWrt ships .pyc; without them every cold start under QEMU
     would compile the stdlib again), check the binaries run, write the stamp, rename into place.
Foreign CPUs run through QEMU user mode registered in binfmt_misc (mounted and registered here if
needed, from Debian's /usr/lib/binfmt.d/qemu-*.conf; flag F, so nothing is copied into the root): the
root's python starts with QEMU_LD_PREFIX=ROOT in its environment, and so can exec the root's dbclient
directly, like on a box. The trixie root is amd64 and runs natively through its own loader
(ld-linux-x86-64.so.2 --library-path ROOT/usr/lib/x86_64-linux-gnu).

Anything missing (qemu-user-static, binfmt_misc, the mirror, a package) raises RootError naming it:
the tests FAIL with that message, they never skip.

As a script: `python3 tests/cross/roots.py [NAME...]` builds (or checks) the roots and prints them.
"""

import fcntl
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

CACHE_DIR = os.environ.get("SSHKEEP_CROSS_CACHE", "/var/cache/sshkeep-cross")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINFMT_DIR = "/proc/sys/fs/binfmt_misc"
FORMAT = 4  # bump when the build recipe changes: cached roots are rebuilt

# Debian 12 packages for a box-like root: the interpreter and the stdlib's shared libraries, dbclient
# and its libraries, busybox. libssl3/libuuid1/libffi8... are there so the *full* Debian stdlib imports
# (pytest needs some); the python3-light guard then refuses what OpenWrt lacks.
BOOKWORM_PKGS = (
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib",
    "libc6", "libgcc-s1", "libexpat1", "zlib1g", "libffi8", "libbz2-1.0", "liblzma5", "libcrypt1",
    "libuuid1", "libssl3",
    "dropbear-bin", "libtomcrypt1", "libtommath1", "libgmp10",
    "busybox-static",
)
# Debian 13 (trixie): dropbear 2025.89 (BatchMode & co. through -o) and Python 3.13 (OpenWrt 25.12).
TRIXIE_PKGS = (
    "python3.13-minimal", "libpython3.13-minimal", "libpython3.13-stdlib",
    "libc6", "libgcc-s1", "libexpat1", "zlib1g", "libffi8", "libbz2-1.0", "liblzma5", "libcrypt1",
    "libuuid1", "libssl3t64",
    "dropbear-bin", "libtomcrypt1", "libtommath1", "libgmp10",
    "busybox-static",
)

# name -> (Debian architecture, suite, packages, python version, qemu name or None for native)
ROOTS = {
    "armhf": ("armhf", "bookworm", BOOKWORM_PKGS, "3.11", "arm"),
    "arm64": ("arm64", "bookworm", BOOKWORM_PKGS, "3.11", "aarch64"),
    "mipsel": ("mipsel", "bookworm", BOOKWORM_PKGS, "3.11", "mipsel"),
    "trixie": ("amd64", "trixie", TRIXIE_PKGS, "3.13", None),
}
FOREIGN = ("armhf", "arm64", "mipsel")
ALL = FOREIGN + ("trixie",)

# pure-Python wheels that make pytest run under a root's python (names as pinned in build/requirements.txt)
PYTEST_WHEELS = ("pytest", "pluggy", "iniconfig", "packaging", "pygments", "hypothesis", "sortedcontainers")


class RootError(RuntimeError):
    """A root cannot be built or run here; the message says what is missing."""


def _log(msg):
    sys.stderr.write("cross: %s\n" % msg)
    sys.stderr.flush()


def _run(argv, timeout=300, cwd=None, env=None, what=None):
    try:
        r = subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=timeout, cwd=cwd, env=env)
    except FileNotFoundError:
        raise RootError("%s: %s not found" % (what or "command", argv[0]))
    except subprocess.TimeoutExpired:
        raise RootError("%s: `%s` took more than %ds" % (what or "command", " ".join(argv[:4]), timeout))
    if r.returncode != 0:
        out = r.stdout.decode(errors="replace").strip()
        raise RootError("%s failed (exit %d): %s\n%s" % (what or "command", r.returncode, " ".join(argv),
                                                       out[-3000:]))
    return r.stdout.decode(errors="replace")


class _Lock(object):
    """An exclusive flock on CACHE_DIR/NAME.lock (other test runs on this machine build roots too)."""

    def __init__(self, name):
        os.makedirs(CACHE_DIR, exist_ok=True)
        self.path = os.path.join(CACHE_DIR, name + ".lock")

    def __enter__(self):
        self.fh = open(self.path, "a")
        deadline = time.monotonic() + 600
        while True:
            try:
                fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RootError("lock %s held by another process for 600 s" % self.path)
                time.sleep(0.2)

    def __exit__(self, *exc):
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


# ----------------------------------------------------------------------------- the machine's mirror

def _host_codename():
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("VERSION_CODENAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return ""


def _source_entries():
    """(uris, suites, signed_by) of every enabled deb entry in the machine's apt sources."""
    entries = []
    files = ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")) + \
        sorted(glob.glob("/etc/apt/sources.list.d/*.sources"))
    for path in files:
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            continue
        if path.endswith(".sources"):
            for para in re.split(r"\n\s*\n", text):
                fields, key = {}, None
                for line in para.splitlines():
                    if line.startswith("#") or not line.strip():
                        continue
                    if line[0] in " \t" and key:
                        fields[key] += " " + line.strip()
                        continue
                    if ":" in line:
                        key, val = line.split(":", 1)
                        key = key.strip().lower()
                        fields[key] = val.strip()
                if "deb" not in fields.get("types", "").split():
                    continue
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                entries.append((fields.get("uris", "").split(), fields.get("suites", "").split(),
                                fields.get("signed-by", "")))
        else:
            for line in text.splitlines():
                line = line.split("#", 1)[0].strip()
                m = re.match(r"deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
                if m:
                    opts = m.group(1) or ""
                    sb = re.search(r"signed-by=([^\s\]]+)", opts)
                    entries.append(([m.group(2)], [m.group(3)], sb.group(1) if sb else ""))
    return entries


def debian_mirror():
    """(uri, signed_by) of the machine's Debian mirror: the entry that carries the host's release."""
    codename = _host_codename()
    for uris, suites, signed_by in _source_entries():
        if codename in suites and uris:
            return uris[0], signed_by
    raise RootError("no apt source for this machine's release %r in /etc/apt/sources.list or "
                    "/etc/apt/sources.list.d/ (the cross roots use the same Debian mirror)" % codename)


# ----------------------------------------------------------------------------- private apt

def _apt_dir(suite):
    return os.path.join(CACHE_DIR, "apt-" + suite)


def _apt_opts(suite, arches):
    d = _apt_dir(suite)
    return ["-o", "Dir::Etc::sourcelist=%s" % os.path.join(d, "sources.list"),
            "-o", "Dir::Etc::sourceparts=-",
            "-o", "Dir::State::Lists=%s" % os.path.join(d, "lists"),
            "-o", "Dir::State::status=%s" % os.path.join(d, "status"),
            "-o", "Dir::Cache=%s" % os.path.join(d, "cache"),
            "-o", "APT::Architectures=%s" % ",".join(arches),
            "-o", "Acquire::Languages=none",
            "-o", "APT::Sandbox::User=root",
            "-o", "Debug::NoLocking=1"]  # private dirs, guarded by our own flock


_updated = {}  # suite -> monotonic time of the last private `apt-get update` in this process


def _apt_update(suite, arches):
    if suite in _updated:
        return
    uri, signed_by = debian_mirror()
    d = _apt_dir(suite)
    for sub in ("lists/partial", "cache/archives/partial"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    status = os.path.join(d, "status")
    if not os.path.exists(status):
        open(status, "w").close()
    opt = " [signed-by=%s]" % signed_by if signed_by.startswith("/") else ""
    with open(os.path.join(d, "sources.list"), "w") as f:
        f.write("# written by tests/cross/roots.py: the machine's own mirror, suite %s\n" % suite)
        f.write("deb%s %s %s main\n" % (opt, uri, suite))
    _log("apt-get update (%s, %s) from %s" % (suite, ",".join(arches), uri))
    out = _run(["apt-get", "-q"] + _apt_opts(suite, arches) + ["update"], timeout=180,
               what="apt-get update for %s (%s)" % (suite, uri))
    if "E: " in out or "W: Failed" in out:
        raise RootError("apt-get update for %s from %s reported errors:\n%s" % (suite, uri, out[-2000:]))
    _updated[suite] = time.monotonic()


def _suite_arches(suite):
    """Every architecture any root takes from suite: one private `update` serves them all."""
    return sorted({"amd64"} | {r[0] for r in ROOTS.values() if r[1] == suite})


def _apt_download(suite, arch, pkgs, dest):
    arches = _suite_arches(suite)
    _apt_update(suite, arches)
    argv = ["apt-get", "-q"] + _apt_opts(suite, arches)
    argv += ["download"] + ["%s:%s" % (p, arch) for p in pkgs]
    _run(argv, timeout=300, cwd=dest, what="apt-get download (%s %s)" % (suite, arch))
    debs = sorted(glob.glob(os.path.join(dest, "*.deb")))
    got = {os.path.basename(p).split("_")[0] for p in debs}
    missing = [p for p in pkgs if p not in got]
    if missing:
        raise RootError("apt-get download (%s %s) did not fetch: %s" % (suite, arch, " ".join(missing)))
    return debs


# ----------------------------------------------------------------------------- binfmt_misc

def qemu_static(qemu):
    return "/usr/bin/qemu-%s-static" % qemu


def ensure_binfmt(qemu):
    """Make the kernel run QEMU_NAME binaries through qemu-user-static (binfmt_misc, flag F)."""
    if not os.path.exists(qemu_static(qemu)):
        raise RootError("%s is missing: apt-get install qemu-user-static" % qemu_static(qemu))
    if not os.path.exists(os.path.join(BINFMT_DIR, "register")):
        try:
            _run(["mount", "-t", "binfmt_misc", "binfmt_misc", BINFMT_DIR], timeout=10,
                 what="mounting binfmt_misc")
        except RootError as e:
            raise RootError("binfmt_misc is not mounted and cannot be (%s); QEMU user mode needs it" % e)
    entry = os.path.join(BINFMT_DIR, "qemu-" + qemu)
    if not os.path.exists(entry):
        conf = "/usr/lib/binfmt.d/qemu-%s.conf" % qemu
        try:
            with open(conf) as f:
                line = next(l.strip() for l in f if l.strip() and not l.startswith("#"))
        except (OSError, StopIteration):
            raise RootError("%s is missing or empty: apt-get install qemu-user-static" % conf)
        try:
            with open(os.path.join(BINFMT_DIR, "register"), "w") as f:
                f.write(line)
        except OSError as e:
            if not os.path.exists(entry):  # another run registering at the same time is fine
                raise RootError("cannot register %s in binfmt_misc: %s" % (conf, e))
    with open(entry) as f:
        text = f.read()
    if not text.startswith("enabled"):
        raise RootError("binfmt_misc entry %s is not enabled:\n%s" % (entry, text))
    with open(os.path.join(BINFMT_DIR, "status")) as f:
        if f.read().strip() != "enabled":
            raise RootError("binfmt_misc is disabled (%s/status)" % BINFMT_DIR)


# ----------------------------------------------------------------------------- building a root

def _merge_into(src, dst):
    """Move everything under src into dst (usr-merge); existing entries in dst win."""
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        s, d = os.path.join(src, name), os.path.join(dst, name)
        if os.path.isdir(s) and not os.path.islink(s) and os.path.isdir(d) and not os.path.islink(d):
            _merge_into(s, d)
        elif not os.path.lexists(d):
            os.rename(s, d)
    shutil.rmtree(src)


def usr_merge(root):
    """/bin, /sbin, /lib, /lib64 ... become symlinks into /usr, as on a merged-/usr system."""
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        top = os.path.join(root, name)
        if os.path.isdir(top) and not os.path.islink(top):
            _merge_into(top, os.path.join(root, "usr", name))
            os.symlink("usr/" + name, top)


class Root(object):
    """One unpacked root: how to run its python and its dbclient."""

    def __init__(self, name):
        arch, suite, pkgs, pyver, qemu = ROOTS[name]
        self.name, self.arch, self.suite, self.packages = name, arch, suite, pkgs
        self.python_version, self.qemu = pyver, qemu
        self.base = os.path.join(CACHE_DIR, name)
        self.dir = os.path.join(self.base, "root")
        self.stamp = os.path.join(self.base, "stamp.json")
        self.python_bin = os.path.join(self.dir, "usr/bin/python" + pyver)
        self.dbclient = os.path.join(self.dir, "usr/bin/dbclient")
        self.busybox = os.path.join(self.dir, "usr/bin/busybox")
        self.dbclient_wrapper = os.path.join(self.base, "bin", "dbclient")
        self.site_packages = os.path.join(self.dir, "usr/lib/python3/dist-packages")
        if qemu:
            self.loader = None
            # through binfmt_misc: the environment tells qemu where the root is, for python and
            # for every foreign program it starts (dbclient)
            self.env = {"QEMU_LD_PREFIX": self.dir}
            self.python = [self.python_bin]
        else:
            libdir = os.path.join(self.dir, "usr/lib/x86_64-linux-gnu")
            self.loader = [os.path.join(libdir, "ld-linux-x86-64.so.2"), "--library-path", libdir]
            self.env = {}
            # a script INSIDE usr/bin that runs python3.X through the root's loader with --argv0 "$0":
            # python finds its prefix from argv[0] (ROOT/usr), and sys.executable is the script, so a
            # python that starts itself again (multiprocessing, `sshkeep check`) still works
            self.python = [os.path.join(self.dir, "usr/bin/python3-root")]

    def __repr__(self):
        return "<Root %s %s/%s python%s at %s>" % (self.name, self.suite, self.arch, self.python_version,
                                                   self.dir)

    @property
    def emulated(self):
        return self.qemu is not None

    def run_env(self, base=None):
        """base (default os.environ) plus what this root's programs need; no bytecode writes."""
        env = dict(os.environ if base is None else base)
        env.update(self.env)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        return env

    def wanted(self):
        return {"format": FORMAT, "name": self.name, "arch": self.arch, "suite": self.suite,
                "packages": list(self.packages)}

    def is_current(self):
        try:
            with open(self.stamp) as f:
                got = json.load(f)
        except (OSError, ValueError):
            return False
        return all(got.get(k) == v for k, v in self.wanted().items()) and \
            os.path.exists(self.python_bin) and os.path.exists(self.dbclient_wrapper)

    def info(self):
        """The stamp: package versions, python and dropbear versions, size, build time."""
        try:
            with open(self.stamp) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}


def _write_wrapper(path, lines):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("#!/bin/sh\n" + "\n".join(lines) + "\n")
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)


def _sh_quote(s):
    return "'" + s.replace("'", "'\\''") + "'"


def _write_wrappers(root):
    """BASE/bin/dbclient (and, native root, ROOT/usr/bin/python3-root): exec the root's program, same pid."""
    os.makedirs(os.path.dirname(root.dbclient_wrapper), exist_ok=True)
    if root.emulated:
        # binfmt_misc runs the foreign ELF through qemu; QEMU_LD_PREFIX points its loader at the root
        _write_wrapper(root.dbclient_wrapper, [
            "# written by tests/cross/roots.py: Debian %s dbclient for %s, run by qemu-%s-static through "
            "binfmt_misc" % (root.suite, root.arch, root.qemu),
            "QEMU_LD_PREFIX=%s exec %s \"$@\"" % (_sh_quote(root.dir), _sh_quote(root.dbclient))])
        return
    ld = " ".join(_sh_quote(a) for a in root.loader)
    _write_wrapper(root.dbclient_wrapper, [
        "# written by tests/cross/roots.py: Debian %s dbclient, through the root's own loader" % root.suite,
        "exec %s %s \"$@\"" % (ld, _sh_quote(root.dbclient))])
    _write_wrapper(root.python[0], [
        "# written by tests/cross/roots.py: Debian %s python, through the root's own loader" % root.suite,
        "exec %s --argv0 \"$0\" %s \"$@\"" % (ld, _sh_quote(root.python_bin))])


def _compile_stdlib(root, lib=None):
    """Byte-compile the root's stdlib (or lib) once, __pycache__ layout: OpenWrt ships .pyc too,
    and the tests run the root's python with PYTHONDONTWRITEBYTECODE (no writes into the repo)."""
    lib = lib or os.path.join(root.dir, "usr/lib/python" + root.python_version)
    host_tag = "cpython-%d%d" % sys.version_info[:2]
    want_tag = "cpython-" + root.python_version.replace(".", "")
    if host_tag == want_tag:  # same bytecode on every CPU: compile natively, it is much faster
        py, env = [sys.executable], None
    else:
        py, env = root.python, root.run_env()
        env.pop("PYTHONDONTWRITEBYTECODE")
    _run(py + ["-m", "compileall", "-q", "-j", "0", "-x", r"/(test|idlelib|tkinter|lib2to3)/", lib],
         timeout=600, env=env, what="byte-compiling %s" % lib)


def _check(root):
    env = root.run_env()
    out = _run(root.python + ["-c", "import sys, socket, select, json, subprocess, fcntl, signal;"
                              "print(sys.version.split()[0], sys.prefix)"],
               timeout=120, env=env, what="starting %s's python" % root.name)
    if not out.split()[0].startswith(root.python_version + "."):
        raise RootError("%s's python reports %r, expected %s" % (root.name, out, root.python_version))
    if not out.split()[1].startswith(root.dir):
        raise RootError("%s's python uses prefix %s, not its root %s" % (root.name, out.split()[1], root.dir))
    ver = subprocess.run([root.dbclient_wrapper, "-V"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, timeout=60).stdout.decode(errors="replace")
    if "Dropbear" not in ver:
        raise RootError("%s: `%s -V` does not run: %s" % (root.name, root.dbclient_wrapper, ver.strip()))
    return out.split()[0], ver.strip().split()[-1].lstrip("v")


def _build(root):
    t0 = time.monotonic()
    os.makedirs(root.base, exist_ok=True)
    work = tempfile.mkdtemp(prefix="build.", dir=root.base)
    try:
        debdir = os.path.join(work, "debs")
        os.makedirs(debdir)
        debs = _apt_download(root.suite, root.arch, root.packages, debdir)
        tmp_root = os.path.join(work, "root")
        os.makedirs(tmp_root)
        versions = {}
        for deb in debs:
            _run(["dpkg", "-x", deb, tmp_root], timeout=120, what="dpkg -x %s" % os.path.basename(deb))
            parts = os.path.basename(deb).split("_")
            versions[parts[0]] = parts[1].replace("%3a", ":")
        usr_merge(tmp_root)
        for name in ("tmp", "etc"):
            os.makedirs(os.path.join(tmp_root, name), exist_ok=True)
        os.chmod(os.path.join(tmp_root, "tmp"), 0o1777)
        if os.path.lexists(root.dir):
            shutil.rmtree(root.dir)
        os.rename(tmp_root, root.dir)
        _write_wrappers(root)
        _compile_stdlib(root)
        pyver, dbver = _check(root)
        size = int(_run(["du", "-sk", root.dir]).split()[0])
        stamp = dict(root.wanted(), versions=versions, python=pyver, dropbear=dbver, size_kb=size,
                     built=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     build_seconds=round(time.monotonic() - t0, 1))
        with open(root.stamp + ".tmp", "w") as f:
            json.dump(stamp, f, indent=1, sort_keys=True)
        os.replace(root.stamp + ".tmp", root.stamp)
        _log("built %s: python %s, dropbear %s, %d KB in %.1f s" % (root.name, pyver, dbver, size,
                                                                    time.monotonic() - t0))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ensure_root(name):
    """The root NAME ("armhf", "arm64", "mipsel", "trixie"), built unless cached; QEMU registered.

    Raises RootError (with what is missing) if it cannot be built or run.
    """
    if name not in ROOTS:
        raise RootError("unknown root %r (known: %s)" % (name, ", ".join(ALL)))
    if os.geteuid() != 0:
        raise RootError("building cross roots needs root (binfmt_misc, dpkg -x ownership)")
    root = Root(name)
    if root.qemu:
        ensure_binfmt(root.qemu)
    with _Lock(name):
        if not root.is_current():
            for tool in ("apt-get", "dpkg"):
                if shutil.which(tool) is None:
                    raise RootError("%s not found: the cross roots are built from Debian packages" % tool)
            with _Lock("apt-" + root.suite):
                _build(root)
    return root


def ensure_all(names=ALL, with_pytest=False):
    """Every root (and, with with_pytest, pytest inside each); returns {name: Root}."""
    out = {}
    for name in names:
        out[name] = ensure_root(name)
        if with_pytest:
            ensure_pytest(out[name])
    return out


# ----------------------------------------------------------------------------- pytest inside a root

def _pinned_wheels():
    """name==version for PYTEST_WHEELS, as pinned in build/requirements.txt (else unpinned)."""
    pins = {}
    try:
        with open(os.path.join(REPO, "build", "requirements.txt")) as f:
            for line in f:
                line = line.split("#", 1)[0].strip()
                if "==" in line:
                    k, v = line.split("==", 1)
                    pins[k.strip().lower()] = v.strip()
    except OSError:
        pass
    return ["%s==%s" % (n, pins[n]) if n in pins else n for n in PYTEST_WHEELS]


def _pip():
    for py in (os.path.join(REPO, "build", "venv", "bin", "python"), sys.executable, "/usr/bin/python3"):
        if os.path.exists(py) and subprocess.run([py, "-m", "pip", "--version"], stdout=subprocess.DEVNULL,
                                                 stderr=subprocess.DEVNULL).returncode == 0:
            return py
    raise RootError("no python with pip found to download pytest wheels (make venv)")


def ensure_pytest(root):
    """Unzip pure-Python wheels of pytest (and what tests/unit/test_*.py import: hypothesis) into the
    root's dist-packages; they come from PyPI once and are cached in CACHE_DIR/wheels.
    Versions as pinned in build/requirements.txt, except where PyPI has no pure wheel of the pin
    (hypothesis ships only compiled wheels since 6.156): then the newest pure one.
    Returns the wheel file names."""
    specs = _pinned_wheels()
    stamp = os.path.join(root.base, "pytest.json")
    try:
        with open(stamp) as f:
            if json.load(f).get("specs") == specs and os.path.isdir(os.path.join(root.site_packages, "pytest")):
                return specs
    except (OSError, ValueError):
        pass
    wheels = os.path.join(CACHE_DIR, "wheels")
    files = []
    with _Lock("wheels"):
        os.makedirs(wheels, exist_ok=True)
        for spec in specs:
            path = _find_wheel(wheels, spec) or _download_wheel(wheels, spec)
            if path is None and "==" in spec:
                path = _find_wheel(wheels, spec.split("==")[0] + "==*") or \
                    _download_wheel(wheels, spec.split("==")[0])
            if path is None:
                raise RootError("no pure-Python wheel of %s on PyPI (pip download --platform any)" % spec)
            files.append(path)
    with _Lock(root.name):
        os.makedirs(root.site_packages, exist_ok=True)
        for path in files:
            with zipfile.ZipFile(path) as z:
                z.extractall(root.site_packages)
        _compile_stdlib(root, root.site_packages)
        out = _run(root.python + ["-c", "import pytest, hypothesis; print(pytest.__version__)"], timeout=120,
                   env=root.run_env(), what="importing pytest in %s" % root.name)
        with open(stamp, "w") as f:
            json.dump({"specs": specs, "pytest": out.strip(),
                       "wheels": [os.path.basename(p) for p in files]}, f, indent=1)
    return [os.path.basename(p) for p in files]


_no_wheel = set()  # specs PyPI has no pure wheel for (asked once per process)


def _download_wheel(wheels, spec):
    """pip download one pure-Python wheel (--platform any) into wheels; its path, or None."""
    if spec in _no_wheel:
        return None
    r = subprocess.run([_pip(), "-m", "pip", "download", "-q", "--only-binary=:all:", "--no-deps",
                        "--platform", "any", "--python-version", "3.11", "--dest", wheels, spec],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    if r.returncode != 0:
        _log("pip download %s: no pure wheel (%s)" % (spec, r.stdout.decode(errors="replace").strip()[-120:]))
        _no_wheel.add(spec)
        return None
    return _find_wheel(wheels, spec if "==" in spec else spec + "==*")


def _find_wheel(wheels, spec):
    name, _, ver = spec.partition("==")
    pat = "%s-%s-*-none-any.whl" % (name.replace("-", "_"), ver or "*")
    hits = [p for p in glob.glob(os.path.join(wheels, "*.whl")) if _wheel_match(os.path.basename(p), pat)]
    if not hits:
        return None
    return max(hits, key=lambda p: [int(x) if x.isdigit() else 0
                                    for x in os.path.basename(p).split("-")[1].split(".")])


def _wheel_match(base, pat):
    import fnmatch
    return fnmatch.fnmatch(base.lower(), pat.lower())


def main(argv):
    names = [a for a in argv[1:] if not a.startswith("-")] or list(ALL)
    t0 = time.monotonic()
    try:
        roots = ensure_all(names, with_pytest="--no-pytest" not in argv)
    except RootError as e:
        sys.stderr.write("cross roots: %s\n" % e)
        return 1
    for name, root in roots.items():
        info = root.info()
        print("%-7s python %s dropbear %s, %d KB: %s  --ssh %s" % (
            name, info.get("python"), info.get("dropbear"), info.get("size_kb", 0), " ".join(root.python),
            root.dbclient_wrapper))
    print("%.1f s" % (time.monotonic() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
