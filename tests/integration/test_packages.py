"""`make packages` (build/packages.py): the OpenWrt .ipk and the Debian .deb built from build/sshkeep.pyz.

- .ipk: unpacked with tar as opkg does (a gzip'd tar, not ar); its control fields, file modes and
  owners; its postinst/prerm run in a chroot laid out like an OpenWrt box (busybox, the package's
  files where opkg puts them, OpenWrt's default_postinst/default_prerm from a stand-in
  /lib/functions.sh, RECORDING stand-ins of /etc/rc.common and procd.sh from tests/support/fixtures).
- .deb: `dpkg -i` into a real Debian root (mmdebstrap, cached outside the repository and used
  through an overlay, so every test starts from a clean root); `systemd-analyze verify` on the
  installed unit; the agent started by the installed init script keeps a reverse tunnel to the
  lab's sshd and heals it; `dpkg -r` stops it.
- Two builds are byte-identical; SOURCE_DATE_EPOCH is every member's mtime.
"""

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

import pytest

from polling import wait_for

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(TOP, "tests", "cross"))
import roots  # noqa: E402  (the machine's own Debian mirror, as the cross roots use it)

PYZ = os.environ.get("SSHKEEP_PYZ") or os.path.join(TOP, "build", "sshkeep.pyz")
FIX = os.path.join(TOP, "tests", "support", "fixtures")
BUSYBOX = shutil.which("busybox") or "/bin/busybox"
CACHE_DIR = os.environ.get("SSHKEEP_PACKAGES_CACHE", "/var/cache/sshkeep-packages")
ROOT_FORMAT = 1
ROOT_PKGS = ("python3", "openssh-client", "procps", "systemd")  # systemd: units for systemd-analyze
EPOCH = 1700000000
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


def version():
    with open(os.path.join(TOP, "agent", "__init__.py")) as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


def build(outdir, epoch=EPOCH):
    if not os.path.exists(PYZ):
        pytest.fail("build/sshkeep.pyz missing: run `make build`", pytrace=False)
    r = subprocess.run([sys.executable, os.path.join(TOP, "build", "packages.py"), PYZ, outdir],
                       env=dict(os.environ, SOURCE_DATE_EPOCH=str(epoch)), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60)
    assert r.returncode == 0, r
    v = version()
    return os.path.join(outdir, "sshkeep_%s_all.ipk" % v), os.path.join(outdir, "sshkeep_%s_all.deb" % v)


@pytest.fixture(scope="module")
def pkgs():
    with tempfile.TemporaryDirectory(prefix="sshkeep-pkgs-") as d:
        yield build(d)


@pytest.fixture
def tmp():
    with tempfile.TemporaryDirectory(prefix="sshkeep-pkgtest-") as d:
        yield d


def run(argv, timeout=60, check=True, **kw):
    kw.setdefault("stdin", subprocess.DEVNULL)
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout, **kw)
    if check:
        assert r.returncode == 0, (argv, r.returncode, r.stdout.decode(errors="replace"),
                                   r.stderr.decode(errors="replace"))
    return r


def fields(text):
    out = {}
    for line in text.splitlines():
        if line and not line.startswith(" "):
            k, v = line.split(":", 1)
            out[k] = v.strip()
    return out


# -- reproducible --------------------------------------------------------------------------------

def test_two_builds_byte_identical_and_epoch_honoured(pkgs, tmp):
    again = build(os.path.join(tmp, "a"))
    for one, two in zip(pkgs, again):
        with open(one, "rb") as f1, open(two, "rb") as f2:
            assert f1.read() == f2.read(), one
    later = build(os.path.join(tmp, "b"), EPOCH + 1)
    with open(pkgs[0], "rb") as f1, open(later[0], "rb") as f2:
        assert f1.read() != f2.read()                      # the epoch is really in there
    with tarfile.open(pkgs[0]) as outer:
        assert {m.mtime for m in outer.getmembers()} == {EPOCH}
        with tarfile.open(fileobj=outer.extractfile("./data.tar.gz")) as data:
            assert {m.mtime for m in data.getmembers()} == {EPOCH}
            assert {(m.uid, m.gid, m.uname, m.gname) for m in data.getmembers()} == {(0, 0, "", "")}


# -- .ipk ----------------------------------------------------------------------------------------

def unpack_ipk(ipk, dest):
    """What opkg does with an .ipk: gunzip + untar the outer file, then control and data."""
    os.makedirs(dest)
    names = run(["tar", "-tzf", ipk]).stdout.decode().split()
    run(["tar", "-xzf", ipk, "-C", dest])
    ctl, root = os.path.join(dest, "CONTROL"), os.path.join(dest, "root")
    os.makedirs(ctl)
    os.makedirs(root)
    run(["tar", "-xzf", os.path.join(dest, "control.tar.gz"), "-C", ctl])
    run(["tar", "-xpzf", os.path.join(dest, "data.tar.gz"), "-C", root, "--numeric-owner"])
    listing = run(["tar", "-tzvf", os.path.join(dest, "data.tar.gz")]).stdout.decode().splitlines()
    return names, ctl, root, listing


def test_ipk_layout_and_control(pkgs, tmp):
    ipk = pkgs[0]
    assert os.path.basename(ipk) == "sshkeep_%s_all.ipk" % version()
    with open(ipk, "rb") as f:
        assert f.read(2) == b"\x1f\x8b"                     # gzip'd tar: OpenWrt's opkg reads no ar
    names, ctl, root, listing = unpack_ipk(ipk, os.path.join(tmp, "x"))
    assert names == ["./debian-binary", "./data.tar.gz", "./control.tar.gz"]   # ipkg-build's order
    with open(os.path.join(tmp, "x", "debian-binary")) as f:
        assert f.read() == "2.0\n"
    assert sorted(os.listdir(ctl)) == ["conffiles", "control", "postinst", "prerm"]
    with open(os.path.join(ctl, "control")) as f:
        c = fields(f.read())
    assert c["Package"] == "sshkeep" and c["Version"] == version() and c["Architecture"] == "all"
    deps = [d.strip() for d in c["Depends"].split(",")]
    assert "python3-light" in deps and "dropbear | openssh-client" in deps
    assert int(c["Installed-Size"]) == len(run(["gzip", "-dc", os.path.join(tmp, "x", "data.tar.gz")]).stdout)
    assert c["Description"]
    with open(os.path.join(ctl, "conffiles")) as f:
        assert f.read() == "/etc/config/sshkeep\n"
    for script, fn in (("postinst", "default_postinst"), ("prerm", "default_prerm")):
        path = os.path.join(ctl, script)
        assert os.stat(path).st_mode & 0o777 == 0o755
        with open(path) as f:
            text = f.read()
        assert text.startswith("#!/bin/sh\n") and ". ${IPKG_INSTROOT}/lib/functions.sh" in text
        assert "%s $0 $@" % fn in text
        assert run([BUSYBOX, "sh", "-n", path]).returncode == 0

    def st(rel):
        return os.lstat(os.path.join(root, rel))
    with open(PYZ, "rb") as f:
        pyz = f.read()
    with open(os.path.join(root, "usr/bin/sshkeep"), "rb") as f:
        assert f.read() == pyz and pyz.startswith(b"#!/usr/bin/env python3\n")
    assert st("usr/bin/sshkeep").st_mode & 0o7777 == 0o755
    assert os.readlink(os.path.join(root, "usr/lib/sshkeep/sshkeep.pyz")) == "../../bin/sshkeep"
    with open(os.path.join(TOP, "init.d", "sshkeep"), "rb") as f1, \
            open(os.path.join(root, "etc/init.d/sshkeep"), "rb") as f2:
        assert f1.read() == f2.read()
    assert st("etc/init.d/sshkeep").st_mode & 0o7777 == 0o755
    assert st("etc/config/sshkeep").st_mode & 0o7777 == 0o600
    assert st("etc/sshkeep").st_mode & 0o7777 == 0o700
    with open(os.path.join(root, "lib/upgrade/keep.d/sshkeep")) as f:
        assert f.read() == "/etc/sshkeep/\n"
    assert all(" 0/0 " in line for line in listing), listing


def gnu_tar(cwd, members):
    """The tar command line of OpenWrt's scripts/ipkg-build (uncompressed: `gzip -n` is not zlib)."""
    return run(["tar", "--format=gnu", "--numeric-owner", "--sort=name", "-cpf", "-", "--mtime=@%d" % EPOCH]
               + members, cwd=cwd).stdout


def test_ipk_tars_are_what_ipkg_build_makes(pkgs, tmp):
    # Each of the three tars is byte-for-byte what GNU tar writes, run as ipkg-build runs it on the
    # unpacked tree: same members, order, modes, owners, header format.
    x = os.path.join(tmp, "x")
    _, ctl, root, _ = unpack_ipk(pkgs[0], x)
    os.chmod(root, 0o755)
    os.chmod(ctl, 0o755)
    for tree, member in ((root, "data.tar.gz"), (ctl, "control.tar.gz")):
        ours = run(["gzip", "-dc", os.path.join(x, member)]).stdout
        assert ours == gnu_tar(tree, ["."]), member
    for name in ("debian-binary", "data.tar.gz", "control.tar.gz"):
        os.chmod(os.path.join(x, name), 0o644)
    assert run(["gzip", "-dc", pkgs[0]]).stdout == \
        gnu_tar(x, ["./debian-binary", "./data.tar.gz", "./control.tar.gz"])


def config_check(path, pyz):
    r = run([pyz, "config", "-c", path], check=False, env=ENV)
    return r.returncode, (r.stdout + r.stderr).decode()


def uncommented(text):
    return "\n".join(l[1:] if l.startswith(("#config", "#\toption", "#\tlist")) else l
                     for l in text.splitlines()) + "\n"


def test_ipk_pyz_runs_and_example_config_parses(pkgs, tmp):
    _, _, root, _ = unpack_ipk(pkgs[0], os.path.join(tmp, "x"))
    sshkeep = os.path.join(root, "usr/bin/sshkeep")
    r = run([sshkeep, "--version"], env=ENV)                 # a command: shebang + mode
    assert (r.stdout + r.stderr).decode().strip() == "sshkeep " + version()
    conf = os.path.join(root, "etc/config/sshkeep")
    rc, out = config_check(conf, sshkeep)
    # parses; the one complaint is that it names no tunnel yet (so nothing is started)
    assert rc == 78 and "no enabled tunnel" in out and len(out.strip().splitlines()) == 1, out
    with open(conf) as f:
        text = f.read()
    keys = os.path.join(tmp, "keys")                         # the key and pins it names must exist
    os.makedirs(keys, mode=0o700)
    for name in ("id_ed25519", "known_hosts"):
        with open(os.open(os.path.join(keys, name), os.O_CREAT | os.O_WRONLY, 0o600), "w"):
            pass
    live = os.path.join(tmp, "live.conf")
    with open(live, "w") as f:
        f.write(uncommented(text).replace("/etc/sshkeep/", keys + "/"))
    rc, out = config_check(live, sshkeep)
    assert rc == 0 and "hub.example.net" in out, out


def opkg_root(tmp, ipk, config=None):
    """A chroot like an OpenWrt box after `opkg install` wrote the files, before the postinst ran:
    busybox, the package's data, /usr/lib/opkg/info/sshkeep.* (control, conffiles, scripts, list),
    OpenWrt's default_postinst/prerm (stand-in) and the recording rc.common/procd.sh."""
    _, ctl, root, listing = unpack_ipk(ipk, os.path.join(tmp, "x"))
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "lib/functions", "usr/lib/opkg/info", "tmp"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    shutil.copy(BUSYBOX, os.path.join(root, "bin/busybox"))
    run(["chroot", root, "/bin/busybox", "--install", "-s"], env=ENV)
    shutil.copy(os.path.join(FIX, "opkg", "functions.sh"), os.path.join(root, "lib/functions.sh"))
    shutil.copy(os.path.join(FIX, "procd", "rc.common"), os.path.join(root, "etc/rc.common"))
    shutil.copy(os.path.join(FIX, "procd", "procd.sh"), os.path.join(root, "lib/functions/procd.sh"))
    info = os.path.join(root, "usr/lib/opkg/info")
    for name in os.listdir(ctl):
        shutil.copy2(os.path.join(ctl, name), os.path.join(info, "sshkeep." + name))
    # opkg's file list: every non-directory path of the data, absolute
    with open(os.path.join(info, "sshkeep.list"), "w") as f:
        for line in listing:
            if not line.startswith("d"):
                f.write(line.split()[5][1:] + "\n")
    if config is not None:
        with open(os.path.join(root, "etc/config/sshkeep"), "w") as f:
            f.write(config)
    return root


def chroot_sh(root, script, arg, extra_env=None):
    env = dict(ENV, PROCD_LOG="/tmp/procd.log", **(extra_env or {}))
    r = run(["chroot", root, "/bin/sh", script, arg], env=env, check=False)
    assert r.returncode == 0, r
    log = os.path.join(root, "tmp/procd.log")
    with open(log) as f:
        calls = [line.rstrip("\n").split("\x1f") for line in f]
    os.unlink(log)
    return calls


def test_ipk_postinst_enables_and_starts_prerm_stops_and_disables(pkgs, tmp):
    root = opkg_root(tmp, pkgs[0])
    calls = chroot_sh(root, "/usr/lib/opkg/info/sshkeep.postinst", "configure")
    names = [c[0] for c in calls]
    assert ["rc:enable", "99", "10"] in calls              # default_postinst: enable ...
    assert ["rc:action", "start"] in calls                 # ... and start
    assert names.index("rc:enable") < names.index("procd_open_service")
    # the example config names no tunnel: no instance (an agent would exit 78 every 5 s)
    assert "procd_open_instance" not in names
    assert [c for c in calls if c[0] == "cmd:logger" and "not started" in c[-1]], calls
    calls = chroot_sh(root, "/usr/lib/opkg/info/sshkeep.prerm", "remove")
    assert ["rc:disable"] in calls and ["rc:action", "stop"] in calls
    assert [c for c in calls if c[0] == "procd_kill" and c[1] == "sshkeep"]
    assert [c[0] for c in calls].index("rc:disable") < [c[0] for c in calls].index("procd_kill")


def test_ipk_postinst_with_a_tunnel_starts_the_installed_pyz(pkgs, tmp):
    conf = "config server 'hub'\n\toption host '192.0.2.1'\n\nconfig tunnel 'ssh'\n\toption server 'hub'\n" \
           "\toption listen '8022'\n\toption target '127.0.0.1:22'\n"
    root = opkg_root(tmp, pkgs[0], config=conf)
    calls = chroot_sh(root, "/usr/lib/opkg/info/sshkeep.postinst", "configure")
    cmd = [c[2:] for c in calls if c[:2] == ["procd_set_param", "command"]]
    assert len(cmd) == 1
    assert cmd[0][:5] == ["/usr/bin/python3", "/usr/lib/sshkeep/sshkeep.pyz", "run", "-c", "/etc/config/sshkeep"]
    # the path procd runs is the packaged pyz
    real = os.path.realpath(os.path.join(root, cmd[0][1].lstrip("/")))
    assert real == os.path.realpath(os.path.join(root, "usr/bin/sshkeep"))


def test_ipk_postinst_in_an_image_build_only_enables(pkgs, tmp):
    # IPKG_INSTROOT set (the image builder runs the postinst on the build host): enable, never start
    root = opkg_root(tmp, pkgs[0])
    env = dict(ENV, IPKG_INSTROOT=root, PROCD_LOG=os.path.join(tmp, "procd.log"))
    r = run([BUSYBOX, "sh", os.path.join(root, "usr/lib/opkg/info/sshkeep.postinst"), "configure"], env=env,
            check=False)
    assert r.returncode == 0, r
    with open(os.path.join(tmp, "procd.log")) as f:
        calls = [line.rstrip("\n").split("\x1f") for line in f]
    assert ["rc:enable", "99", "10"] in calls
    assert ["rc:action", "start"] not in calls and "procd_open_service" not in [c[0] for c in calls]


# -- .deb ----------------------------------------------------------------------------------------

# this machine's Debian release, and Debian 13 (Python 3.13, merged /usr, systemd 257)
SUITES = sorted({roots._host_codename() or "bookworm", "trixie"})


def debian_root(codename):
    """The cached minbase Debian root of suite CODENAME, built with mmdebstrap once, from the
    machine's own mirror."""
    base = os.path.join(CACHE_DIR, "debian-" + codename)
    stamp = {"format": ROOT_FORMAT, "packages": list(ROOT_PKGS), "suite": codename}
    os.makedirs(CACHE_DIR, exist_ok=True)
    with open(base + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(os.path.join(base, "stamp.json")) as f:
                if json.load(f) == stamp:
                    return os.path.join(base, "root")
        except (OSError, ValueError):
            pass
        if shutil.which("mmdebstrap") is None:
            pytest.fail("mmdebstrap missing: run `make deps` (build/deps.sh)", pytrace=False)
        uri, _ = roots.debian_mirror()
        shutil.rmtree(base, ignore_errors=True)
        work = base + ".tmp"
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        run(["mmdebstrap", "--quiet", "--variant=minbase", "--include=" + ",".join(ROOT_PKGS), codename,
             os.path.join(work, "root"), uri], timeout=900)
        with open(os.path.join(work, "stamp.json"), "w") as f:
            json.dump(stamp, f)
        os.rename(work, base)
        return os.path.join(base, "root")


class Overlay:
    """A writable root on top of the cached one (overlayfs), with /proc mounted; gone on close."""

    def __init__(self, lower, tmp):
        self.dirs = {n: os.path.join(tmp, n) for n in ("upper", "work", "root")}
        for d in self.dirs.values():
            os.makedirs(d)
        self.root = self.dirs["root"]
        run(["mount", "-t", "overlay", "overlay", "-o", "lowerdir=%s,upperdir=%s,workdir=%s"
             % (lower, self.dirs["upper"], self.dirs["work"]), self.root])
        run(["mount", "-t", "proc", "proc", os.path.join(self.root, "proc")])

    def path(self, rel):
        return os.path.join(self.root, rel.lstrip("/"))

    def chroot(self, argv, ns=None, check=True, timeout=120):
        pre = ["ip", "netns", "exec", ns] if ns else []
        return run(pre + ["chroot", self.root] + list(argv), env=ENV, check=check, timeout=timeout)

    def close(self):
        # lazily if still busy (a process left in the root): never leave the mount for rmtree
        for mnt in (os.path.join(self.root, "proc"), self.root):
            if run(["umount", mnt], check=False).returncode != 0:
                run(["umount", "-l", mnt], check=False)


@pytest.fixture(params=SUITES)
def debroot(request, pkgs, tmp):
    ov = Overlay(debian_root(request.param), tmp)
    try:
        shutil.copy(pkgs[1], ov.path("/tmp/sshkeep.deb"))
        yield ov
    finally:
        stop_agent(ov)
        ov.close()


def agent_pid(ov):
    try:
        with open(ov.path("/run/sshkeep.pid")) as f:
            pid = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return pid if b"sshkeep" in f.read() else None
    except OSError:
        return None


def stop_agent(ov):
    pid = agent_pid(ov)
    if pid:
        os.kill(pid, 15)
        if not wait_for(lambda: agent_pid(ov) is None, 6):
            os.kill(pid, 9)


def test_deb_installs_into_debian_root(debroot):
    ov = debroot
    r = ov.chroot(["dpkg", "-i", "/tmp/sshkeep.deb"])
    out = (r.stdout + r.stderr).decode()
    assert "start failed" not in out, out
    st = ov.chroot(["dpkg-query", "-W", "-f", "${Status} ${Version}\n${Conffiles}\n", "sshkeep"]).stdout.decode()
    assert st.startswith("install ok installed %s\n" % version()), st
    assert "/etc/sshkeep/sshkeep.conf" in st and "/etc/init.d/sshkeep" in st
    with open(PYZ, "rb") as f1, open(ov.path("/usr/bin/sshkeep"), "rb") as f2:
        assert f1.read() == f2.read()
    assert os.stat(ov.path("/usr/bin/sshkeep")).st_mode & 0o7777 == 0o755
    assert os.path.realpath(ov.path("/usr/lib/sshkeep/sshkeep.pyz")) == os.path.realpath(ov.path("/usr/bin/sshkeep"))
    assert os.stat(ov.path("/etc/sshkeep")).st_mode & 0o7777 == 0o700
    assert os.stat(ov.path("/etc/sshkeep/sshkeep.conf")).st_mode & 0o7777 == 0o600
    # the installed python runs the installed command; the example parses, names no tunnel
    r = ov.chroot(["sshkeep", "--version"])
    assert (r.stdout + r.stderr).decode().strip() == "sshkeep " + version()
    r = ov.chroot(["sshkeep", "config", "-c", "/etc/sshkeep/sshkeep.conf"], check=False)
    assert r.returncode == 78 and b"no enabled tunnel" in r.stderr, r
    # no systemd as PID 1 here: the LSB script got its rc links, the unit was enabled offline
    rc2 = [n for n in os.listdir(ov.path("/etc/rc2.d")) if n.endswith("sshkeep")]
    rc0 = [n for n in os.listdir(ov.path("/etc/rc0.d")) if n.endswith("sshkeep")]
    assert rc2 and rc2[0].startswith("S") and rc0 and rc0[0].startswith("K"), (rc2, rc0)
    assert os.path.islink(ov.path("/etc/systemd/system/multi-user.target.wants/sshkeep.service"))
    assert agent_pid(ov) is None                            # nothing to keep up yet: not started
    # the installed init script is the busybox/sysv one, pointed at the package's config
    with open(ov.path("/etc/init.d/sshkeep")) as f:
        text = f.read()
    assert "CONFIG=${CONFIG:-/etc/sshkeep/sshkeep.conf}" in text and "### BEGIN INIT INFO" in text


RECORDING_SYSTEMCTL = """#!/bin/sh
# RECORDING stand-in for systemctl (test): one line per call
echo "systemctl $*" >> /tmp/systemctl.log
"""


def test_deb_scripts_under_a_running_systemd(debroot):
    """The branch a booted Debian box takes (/run/systemd/system exists): systemctl calls recorded
    by a stand-in. Enable always; restart only once the config names a tunnel (and on upgrade);
    stop on removal, disable after it."""
    ov = debroot
    os.makedirs(ov.path("/run/systemd/system"))
    os.unlink(ov.path("/usr/bin/systemctl"))
    with open(os.open(ov.path("/usr/bin/systemctl"), os.O_CREAT | os.O_WRONLY, 0o755), "w") as f:
        f.write(RECORDING_SYSTEMCTL)
    log = ov.path("/tmp/systemctl.log")

    def calls():
        try:
            with open(log) as f:
                out = f.read().splitlines()
        except OSError:
            return []
        os.unlink(log)
        return out
    ov.chroot(["dpkg", "-i", "/tmp/sshkeep.deb"])
    got = calls()
    assert "systemctl enable sshkeep.service" in got and not [c for c in got if "restart" in c or "start " in c], got
    assert [n for n in os.listdir(ov.path("/etc/rc2.d")) if n.endswith("sshkeep")]  # for a later sysvinit
    with open(ov.path("/etc/sshkeep/sshkeep.conf"), "a") as f:
        f.write("config server 'hub'\n\toption host '192.0.2.1'\nconfig tunnel 'ssh'\n\toption server 'hub'\n"
                "\toption listen '8022'\n\toption target '127.0.0.1:22'\n")
    ov.chroot(["dpkg", "-i", "/tmp/sshkeep.deb"])          # an upgrade, now with a tunnel
    got = calls()
    assert got[-2:] == ["systemctl enable sshkeep.service", "systemctl restart sshkeep.service"], got
    assert "systemctl stop sshkeep.service" not in got     # upgrade: restarted, not stopped first
    ov.chroot(["dpkg", "-r", "sshkeep"])
    got = calls()
    assert got.index("systemctl stop sshkeep.service") < got.index("systemctl disable sshkeep.service"), got


def test_deb_unit_verifies(debroot):
    ov = debroot
    ov.chroot(["dpkg", "-i", "/tmp/sshkeep.deb"])
    unit = "/usr/lib/systemd/system/sshkeep.service"
    r = run(["systemd-analyze", "verify", "--root=" + ov.root, unit], check=False)
    # only complaints about sshkeep count: this machine's systemd (252) may find fault with a newer
    # root's own units (Debian 13's run-lock.mount)
    ours = [l for l in (r.stdout + r.stderr).decode().replace(ov.root, "ROOT").splitlines() if "sshkeep" in l]
    assert r.returncode == 0 and not ours, r
    # and it fails when something is wrong (a check that can fail): a missing ExecStart binary
    os.unlink(ov.path("/usr/bin/sshkeep"))
    r = run(["systemd-analyze", "verify", "--root=" + ov.root, unit], check=False)
    assert r.returncode != 0 and b"/usr/bin/sshkeep" in r.stderr, r
    with open(ov.path(unit)) as f:
        u = f.read()
    for line in ("Restart=always", "RestartSec=5", "StartLimitIntervalSec=0", "StandardError=journal",
                 "ExecReload=/usr/bin/sshkeep reload -c /etc/sshkeep/sshkeep.conf --pidfile /var/run/sshkeep.pid",
                 "ExecStart=/usr/bin/sshkeep run -c /etc/sshkeep/sshkeep.conf "):
        assert line in u, line
    # Issue 23: never give up (as procd's respawn): after a reboot with a bad config the tunnel is
    # often the only way in, and a fixed file must bring it back without a visit.
    assert "RestartPreventExitStatus" not in u
    assert "--daemon" not in u                              # foreground: systemd supervises it


BANNER = b"SVC-READY\r\n"
RPORT = 20022


@pytest.mark.integration
def test_deb_agent_from_installed_init_script_keeps_a_tunnel(lab, debroot):
    ov = debroot
    ov.chroot(["dpkg", "-i", "/tmp/sshkeep.deb"])
    server = lab.start_sshd()
    svc = lab.start_service(lab.box_ns, 0)
    shutil.copy(lab.key_openssh, ov.path("/etc/sshkeep/id_ed25519"))
    os.chmod(ov.path("/etc/sshkeep/id_ed25519"), 0o600)
    lab.known_hosts(server, ov.path("/etc/sshkeep/known_hosts"))
    with open(ov.path("/etc/sshkeep/sshkeep.conf"), "w") as f:
        f.write("config sshkeep\n\toption interval '3'\n\toption identity '/etc/sshkeep/id_ed25519'\n\n"
                "config server 'hub'\n\toption host '%s'\n\toption port '%d'\n\toption user '%s'\n"
                "\toption known_hosts '/etc/sshkeep/known_hosts'\n\toption client 'openssh'\n\n"
                "config tunnel 'ssh'\n\toption server 'hub'\n\toption listen '127.0.0.1:%d'\n"
                "\toption target '127.0.0.1:%d'\n" % (lab.srv_ip, server.port, lab.user, RPORT, svc.port))

    def reverse_ok():
        return lab.probe_from(lab.srv_ns, "127.0.0.1", RPORT, timeout=2) == BANNER

    def state():
        try:
            with open(ov.path("/run/sshkeep.json")) as f:
                return json.load(f)["tunnels"][0]
        except (OSError, ValueError, KeyError, IndexError):
            return {}

    r = ov.chroot(["/etc/init.d/sshkeep", "start"], ns=lab.box_ns)
    pid = agent_pid(ov)
    assert pid, (r.stdout, r.stderr)
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        # the runtime exec'd by agent.launch: python -c LOADER PYZ _runtime FD WRITER run -c ...
        argv = f.read().split(b"\0")
    assert argv[3:5] == [b"/usr/lib/sshkeep/sshkeep.pyz", b"_runtime"], argv
    assert argv[7:10] == [b"run", b"-c", b"/etc/sshkeep/sshkeep.conf"], argv
    lab.wait_until(reverse_ok, 30, what="reverse forward from the installed agent answers on the server")
    server.kill_sessions()
    lab.wait_until(lambda: state().get("restarts", 0) >= 1 and reverse_ok(), 30,
                   what="the installed agent heals the tunnel after the session is killed")
    assert agent_pid(ov) == pid
    # A chroot has no init system, so invoke-rc.d blocks every action unless policy-rc.d allows it
    # ("No init system and policy-rc.d missing! Defaulting to block"): allow, like a booted box.
    with open(os.open(ov.path("/usr/sbin/policy-rc.d"), os.O_CREAT | os.O_WRONLY, 0o755), "w") as f:
        f.write("#!/bin/sh\nexit 0\n")
    # an upgrade (the same .deb again) restarts the agent: the postinst sees a tunnel in the config
    r = ov.chroot(["dpkg", "-i", "/tmp/sshkeep.deb"], ns=lab.box_ns)
    assert wait_for(lambda: agent_pid(ov) not in (None, pid), 10), (r.stdout, r.stderr)
    pid = agent_pid(ov)
    lab.wait_until(reverse_ok, 30, what="the tunnel is back after the upgrade's restart")
    # removal stops it (prerm) and keeps the config and keys (conffiles stay until purge)
    r = ov.chroot(["dpkg", "-r", "sshkeep"], ns=lab.box_ns)
    assert wait_for(lambda: agent_pid(ov) is None, 10), (r.stdout, r.stderr)
    assert not os.path.exists(ov.path("/usr/bin/sshkeep"))
    assert os.path.exists(ov.path("/etc/sshkeep/sshkeep.conf")) and os.path.exists(ov.path("/etc/sshkeep/id_ed25519"))
    ov.chroot(["dpkg", "-P", "sshkeep"])
    assert not os.path.exists(ov.path("/etc/sshkeep/sshkeep.conf"))
    assert os.path.exists(ov.path("/etc/sshkeep/id_ed25519"))   # never lose a key
    assert not [n for n in os.listdir(ov.path("/etc/rc2.d")) if n.endswith("sshkeep")]


@pytest.mark.integration
def test_ipk_procd_command_keeps_a_tunnel_with_dbclient(lab, pkgs, tmp):
    """What procd would run after `opkg install` (the recorded command and env, its paths mapped
    into the unpacked root), under the python3-light guard, with dbclient like a router: keeps a
    reverse tunnel to the lab's dropbear and heals it; TERM ends it within procd's term_timeout."""
    import lightguard
    server = lab.start_dropbear()
    svc = lab.start_service(lab.box_ns, 0)
    known = lab.known_hosts(server, os.path.join(tmp, "known_hosts"))
    conf = ("config server 'hub'\n\toption host '%s'\n\toption port '%d'\n\toption user '%s'\n"
            "\toption identity '%s'\n\toption known_hosts '%s'\n\toption client 'dropbear'\n"
            "\toption ssh '/usr/bin/dbclient'\n\n"  # on OpenWrt /usr/bin/ssh is dbclient; here OpenSSH
            "config tunnel 'ssh'\n\toption server 'hub'\n\toption listen '127.0.0.1:%d'\n"
            "\toption target '127.0.0.1:%d'\n" % (lab.srv_ip, server.port, lab.user, lab.key_dropbear, known,
                                                   RPORT, svc.port))
    root = opkg_root(tmp, pkgs[0], config=conf)
    calls = chroot_sh(root, "/usr/lib/opkg/info/sshkeep.postinst", "configure")
    params = {c[1]: c[2:] for c in calls if c[0] == "procd_set_param"}
    run_dir = os.path.join(tmp, "var-run")
    os.makedirs(run_dir)

    def mapped(word):
        if word.startswith("/var/run/"):
            return os.path.join(run_dir, word[len("/var/run/"):])
        if word.startswith(("/usr/lib/sshkeep/", "/etc/config/")):
            return os.path.join(root, word[1:])
        return word
    argv = [mapped(w) for w in params["command"]]
    assert argv[0] == "/usr/bin/python3" and os.path.islink(argv[1])   # the packaged symlink to the pyz
    env = dict(kv.split("=", 1) for kv in params["env"])
    env["HOME"] = mapped(env["HOME"])
    os.makedirs(env["HOME"], mode=0o700)
    log = open(os.path.join(tmp, "agent.run.log"), "wb")
    try:
        proc = lab.box_popen(argv, env=lightguard.guard_env(env), stdout=log, stderr=log)
    finally:
        log.close()

    def reverse_ok():
        return lab.probe_from(lab.srv_ns, "127.0.0.1", RPORT, timeout=2) == BANNER

    def agent_log():
        with open(os.path.join(tmp, "agent.run.log"), "rb") as f:
            return f.read().decode(errors="replace")[-3000:]
    try:
        lab.wait_until(lambda: proc.poll() is not None or reverse_ok(), 30, what="reverse forward answers")
        assert proc.poll() is None, agent_log()
        assert server.kill_sessions()

        def healed():
            try:
                with open(os.path.join(run_dir, "sshkeep.json")) as f:
                    restarts = json.load(f)["tunnels"][0]["restarts"]
            except (OSError, ValueError, KeyError, IndexError):
                restarts = 0
            return proc.poll() is not None or (restarts >= 1 and reverse_ok())
        lab.wait_until(healed, 30, what="healed after session kill")
        assert proc.poll() is None and reverse_ok(), agent_log()
    finally:
        rc = lab_stop(proc)
    assert rc == 0, agent_log()


def lab_stop(proc, timeout=5.0):
    """procd's stop: TERM the main pid, KILL after term_timeout (5 s). The exit status, or None if
    it needed the KILL."""
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            return None
    return proc.returncode


# -- .apk (OpenWrt 25.12: apk-tools 3, build/apk.py) ---------------------------------------------
# With the real apk (apk-tools 3.0.6 from ../shared/vendor, built once into build/apk-tools/ by
# build/apk-tools.sh): metadata with `apk adbdump`, the same files as the .ipk, two builds
# byte-identical; `apk add` into an empty root (busybox, the stand-ins below, stub packages for the
# dependencies), an upgrade to a newer build, `apk del`. Skipped, with the reason, only where there
# is no ../shared/vendor (a user's clone); CI has it.

TUNNEL_CONF = "config server 'hub'\n\toption host '192.0.2.1'\n\nconfig tunnel 'ssh'\n\toption server 'hub'\n" \
              "\toption listen '8022'\n\toption target '127.0.0.1:22'\n"


def apk_tool():
    """The real apk: $APK, else build/apk-tools/apk (built now if missing); skip with the reason
    build/apk-tools.sh gives when it cannot be had (no ../shared/vendor)."""
    if os.environ.get("APK"):
        return os.environ["APK"]
    r = run(["sh", os.path.join(TOP, "build", "apk-tools.sh")], timeout=900, check=False)
    if r.returncode == 3:
        pytest.skip("no apk-tools 3: " + r.stderr.decode(errors="replace").strip())
    assert r.returncode == 0, r
    return r.stdout.decode().strip()


def build_apk(outdir, apk, epoch=EPOCH, release=1):
    if not os.path.exists(PYZ):
        pytest.fail("build/sshkeep.pyz missing: run `make build`", pytrace=False)
    r = run([sys.executable, os.path.join(TOP, "build", "apk.py"), PYZ, outdir, str(release), "--require"],
            env=dict(os.environ, SOURCE_DATE_EPOCH=str(epoch), APK=apk), check=False)
    assert r.returncode == 0, r
    path = os.path.join(outdir, "sshkeep-%s-r%d.apk" % (version(), release))
    assert os.path.exists(path), os.listdir(outdir)
    return path


@pytest.fixture(scope="module")
def apks():
    """(apk tool, r1 .apk, r2 .apk, the .ipk of the same tree)"""
    tool = apk_tool()
    with tempfile.TemporaryDirectory(prefix="sshkeep-apks-") as d:
        ipk = build(os.path.join(d, "ipk"))[0]
        yield tool, build_apk(d, tool), build_apk(d, tool, release=2), ipk


def adbdump(tool, pkg):
    """`apk adbdump PKG` parsed: (info, {path: {mode, size, hash, target, mtime}}, scripts)."""
    text = run([tool, "adbdump", pkg]).stdout.decode()
    info, paths, scripts, section, cur, key = {}, {}, {}, None, None, None
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.startswith(" "):
            section = line.split(":")[0]
            continue
        ind, body = len(line) - len(line.lstrip(" ")), line.strip()
        if section == "info":
            if ind == 2:
                key, _, val = body.partition(": ")
                info[key] = [] if val.startswith("#") else val.rstrip(":")
            elif body.startswith("- "):
                info[key].append(body[2:])
            else:
                info[key] = (info[key] + " " if info[key] != "|" else "") + body
        elif section == "paths":
            if ind == 2:                                    # a directory: "- name: D" or "- acl:" (root)
                d = body[len("- name: "):] if body.startswith("- name: ") else ""
                cur = paths.setdefault(d, {"type": "dir"})
            elif ind == 6 and body.startswith("- name: "):  # a file in it
                cur = paths.setdefault((d + "/" if d else "") + body[len("- name: "):], {"type": "file"})
            elif ":" in body and not body.endswith(":"):
                k, _, v = body.partition(": ")
                cur[k] = v
        elif section == "scripts":
            if ind == 2:
                key = body.split(":")[0]
                scripts[key] = ""
            else:
                scripts[key] += line[4:] + "\n"
    return info, paths, scripts


def test_apk_two_builds_byte_identical_and_epoch_honoured(apks, tmp):
    tool, r1, _, _ = apks
    again = build_apk(os.path.join(tmp, "a"), tool)
    with open(r1, "rb") as f1, open(again, "rb") as f2:
        assert f1.read() == f2.read()
    later = build_apk(os.path.join(tmp, "b"), tool, EPOCH + 1)
    with open(r1, "rb") as f1, open(later, "rb") as f2:
        assert f1.read() != f2.read()                      # the epoch is really in there
    _, paths, _ = adbdump(tool, r1)
    assert {p["mtime"] for p in paths.values() if p["type"] == "file"} == {str(EPOCH)}
    assert {(p.get("user"), p.get("group")) for p in paths.values()} == {("root", "root")}


def test_apk_metadata_reads_back_with_adbdump(apks):
    tool, r1, r2, _ = apks
    assert os.path.basename(r1) == "sshkeep-%s-r1.apk" % version()
    with open(r1, "rb") as f:
        assert f.read(4) == b"ADBd"                        # v3 ADB, deflate: what apk-tools 3 reads
    info, _, scripts = adbdump(tool, r1)
    assert info["name"] == "sshkeep" and info["version"] == version() + "-r1" and info["arch"] == "noarch"
    assert info["depends"] == ["libc", "python3-light"]
    assert info["description"].startswith("One Python file that keeps SSH tunnels up")
    for k in ("license", "url", "maintainer", "origin"):
        assert info.get(k), (k, info)
    assert int(info["installed-size"]) > len(open(PYZ, "rb").read())
    assert adbdump(tool, r2)[0]["version"] == version() + "-r2"
    assert sorted(scripts) == ["post-install", "post-upgrade", "pre-deinstall"]
    for name, fn in (("post-install", "default_postinst"), ("post-upgrade", "default_postinst"),
                     ("pre-deinstall", "default_prerm")):
        text = scripts[name]
        assert text.startswith("#!/bin/sh\n") and ". ${IPKG_INSTROOT}/lib/functions.sh" in text, name
        assert 'export pkgname="sshkeep"' in text and text.rstrip().endswith(fn), text
    assert scripts["post-upgrade"].startswith("#!/bin/sh\nexport PKG_UPGRADE=1\n")


def test_apk_has_the_files_of_the_ipk(apks, tmp):
    # every file, link and directory of the .ipk, with its mode and content (sha256), and no other
    # but OpenWrt's lib/apk/packages/sshkeep.{list,conffiles,conffiles_static}
    tool, r1, _, ipk = apks
    _, _, root, _ = unpack_ipk(ipk, os.path.join(tmp, "x"))
    _, paths, _ = adbdump(tool, r1)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            got = paths.pop(rel)
            assert int(got["mode"], 8) == st.st_mode & 0o7777, rel
            if os.path.islink(full):
                # the target: 2 bytes of mode (S_IFLNK, little-endian), then the link text
                assert bytes.fromhex(got["target"]) == b"\x00\xa0" + os.readlink(full).encode(), rel
            elif os.path.isfile(full):
                with open(full, "rb") as f:
                    assert got["hash"] == hashlib.sha256(f.read()).hexdigest(), rel
    rest = {p for p in paths if p not in ("", "lib/apk", "lib/apk/packages")}
    assert rest == {"lib/apk/packages/sshkeep." + e for e in ("list", "conffiles", "conffiles_static")}, rest


def apk_root(tmp, tool):
    """An empty root apk can install into: busybox (the scripts' /bin/sh), the stand-in
    /lib/functions.sh (tests/support/fixtures/opkg: it serves both package formats) and the RECORDING rc.common/procd.sh, stub packages libc and
    python3-light (empty: the pyz is run with this machine's python)."""
    root = os.path.join(tmp, "root")
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "lib/functions", "etc/apk", "tmp"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    shutil.copy(BUSYBOX, os.path.join(root, "bin/busybox"))
    run(["chroot", root, "/bin/busybox", "--install", "-s"], env=ENV)
    shutil.copy(os.path.join(FIX, "opkg", "functions.sh"), os.path.join(root, "lib/functions.sh"))
    shutil.copy(os.path.join(FIX, "procd", "rc.common"), os.path.join(root, "etc/rc.common"))
    shutil.copy(os.path.join(FIX, "procd", "procd.sh"), os.path.join(root, "lib/functions/procd.sh"))
    stubs = []
    for name, ver in (("libc", "1.2.5-r4"), ("python3-light", "3.13.5-r1")):
        out = os.path.join(tmp, name + ".apk")
        run([tool, "mkpkg", "--info", "name:" + name, "--info", "version:" + ver, "--info", "arch:noarch",
             "--info", "description:stub for the test", "--output", out])
        stubs.append(out)
    return root, stubs


def procd_calls(root):
    log = os.path.join(root, "tmp/procd.log")
    try:
        with open(log) as f:
            calls = [line.rstrip("\n").split("\x1f") for line in f]
    except FileNotFoundError:
        return []
    os.unlink(log)
    return calls


def test_apk_add_upgrade_del_with_the_real_apk(apks, tmp):
    tool, r1, r2, _ = apks
    root, stubs = apk_root(tmp, tool)

    def apk(*args):
        r = run([tool, "--root", root, "--no-network", "--allow-untrusted"] + list(args), env=ENV, timeout=120)
        return (r.stdout + r.stderr).decode()

    def installed():
        with open(os.path.join(root, "lib/apk/db/installed")) as f:
            pkgs = f.read().split("\n\n")
        return [p for p in pkgs if "\nP:sshkeep\n" in "\n" + p]

    def path(rel):
        return os.path.join(root, rel.lstrip("/"))

    # install into the empty root: files, the pyz runs, the procd script is there, enabled + started
    out = apk("--initdb", "add", *(stubs + [r1]))
    assert "Executing sshkeep-%s-r1.post-install" % version() in out, out
    assert ["V:%s-r1" % version()] == [l for l in installed()[0].splitlines() if l.startswith("V:")]
    calls = procd_calls(root)
    assert ["rc:enable", "99", "10"] in calls and ["rc:action", "start"] in calls, calls
    assert "procd_open_instance" not in [c[0] for c in calls]   # the example names no tunnel yet
    with open(PYZ, "rb") as f1, open(path("usr/bin/sshkeep"), "rb") as f2:
        assert f1.read() == f2.read()
    assert os.stat(path("usr/bin/sshkeep")).st_mode & 0o7777 == 0o755
    r = run([path("usr/bin/sshkeep"), "--version"], env=ENV)
    assert (r.stdout + r.stderr).decode().strip() == "sshkeep " + version()
    assert os.path.realpath(path("usr/lib/sshkeep/sshkeep.pyz")) == os.path.realpath(path("usr/bin/sshkeep"))
    with open(os.path.join(TOP, "init.d", "sshkeep"), "rb") as f1, open(path("etc/init.d/sshkeep"), "rb") as f2:
        assert f1.read() == f2.read()
    assert os.stat(path("etc/init.d/sshkeep")).st_mode & 0o7777 == 0o755
    assert os.stat(path("etc/config/sshkeep")).st_mode & 0o7777 == 0o600
    assert os.stat(path("etc/sshkeep")).st_mode & 0o7777 == 0o700
    with open(path("lib/upgrade/keep.d/sshkeep")) as f:
        assert f.read() == "/etc/sshkeep/\n"
    with open(path("lib/apk/packages/sshkeep.list")) as f:
        listed = f.read().splitlines()
    assert "/etc/init.d/sshkeep" in listed and "/usr/lib/sshkeep/sshkeep.pyz" in listed and listed == sorted(listed)
    with open(path("lib/apk/packages/sshkeep.conffiles")) as f:
        assert f.read() == "/etc/config/sshkeep\n"
    with open(path("etc/config/sshkeep"), "rb") as f:
        example = f.read()
    with open(path("lib/apk/packages/sshkeep.conffiles_static")) as f:
        assert f.read() == "/etc/config/sshkeep %s\n" % hashlib.sha256(example).hexdigest()

    # the user configures a tunnel and adds a key; an upgrade to a newer build keeps both, puts the
    # new example beside it (.apk-new), and (re)starts the service without enabling it again
    with open(path("etc/config/sshkeep"), "w") as f:
        f.write(TUNNEL_CONF)
    with open(os.open(path("etc/sshkeep/id_ed25519"), os.O_CREAT | os.O_WRONLY, 0o600), "w") as f:
        f.write("KEY\n")
    out = apk("add", r2)
    assert "Executing sshkeep-%s-r2.post-upgrade" % version() in out, out
    assert ["V:%s-r2" % version()] == [l for l in installed()[0].splitlines() if l.startswith("V:")]
    with open(path("etc/config/sshkeep")) as f:
        assert f.read() == TUNNEL_CONF
    with open(path("etc/config/sshkeep.apk-new"), "rb") as f:
        assert f.read() == example
    calls = procd_calls(root)
    assert ["rc:action", "start"] in calls and "rc:enable" not in [c[0] for c in calls], calls
    cmd = [c[2:] for c in calls if c[:2] == ["procd_set_param", "command"]]
    assert len(cmd) == 1 and cmd[0][:3] == ["/usr/bin/python3", "/usr/lib/sshkeep/sshkeep.pyz", "run"], cmd
    assert os.path.realpath(path(cmd[0][1])) == os.path.realpath(path("usr/bin/sshkeep"))

    # apk del: stopped and disabled, the program gone, the changed config and the key kept
    out = apk("del", "sshkeep")
    assert "Executing sshkeep-%s-r2.pre-deinstall" % version() in out, out
    calls = procd_calls(root)
    names = [c[0] for c in calls]
    assert ["rc:disable"] in calls and ["rc:action", "stop"] in calls, calls
    assert names.index("rc:disable") < names.index("procd_kill")
    assert not installed()
    for gone in ("usr/bin/sshkeep", "usr/lib/sshkeep/sshkeep.pyz", "etc/init.d/sshkeep",
                 "lib/apk/packages/sshkeep.list"):
        assert not os.path.lexists(path(gone)), gone
    with open(path("etc/config/sshkeep")) as f:
        assert f.read() == TUNNEL_CONF
    with open(path("etc/sshkeep/id_ed25519")) as f:
        assert f.read() == "KEY\n"
