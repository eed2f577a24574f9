"""Build the OpenWrt .ipk and the Debian .deb from one sshkeep.pyz, byte-for-byte reproducibly.

usage: python3 build/packages.py PYZ OUTDIR      (`make packages`: build/out/)

Writes OUTDIR/sshkeep_VERSION_all.ipk and OUTDIR/sshkeep_VERSION_all.deb (VERSION from
agent/__init__.py). Build-time only, standard library only (tarfile, gzip), no fakeroot:
every member is written with numeric owner 0:0, a fixed mode, mtime SOURCE_DATE_EPOCH (if unset:
the commit time of HEAD, else 0), in sorted order, gzip without name or time. Two builds from the
same pyz and tree are identical.

.ipk: the format OpenWrt's scripts/ipkg-build makes, which is what OpenWrt's opkg reads (a gzip'd
tar, not Debian's ar): ./debian-binary, ./data.tar.gz, ./control.tar.gz, GNU tar format. The
postinst/prerm are the ones OpenWrt's include/package-pack.mk writes for every package: they call
default_postinst / default_prerm from /lib/functions.sh, which enable + start (or stop + disable)
each /etc/init.d/ script the package lists (only enable when IPKG_INSTROOT is set: an image build).

.deb: an ar archive (debian-binary, control.tar.gz, data.tar.gz) as dpkg-deb makes it.
See docs/packages.md for what each package puts where.
"""

import gzip
import io
import os
import re
import subprocess
import sys
import tarfile

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "sshkeep"
SUMMARY = "keep SSH tunnels up (reverse -R tunnels to a hub) with ssh or dbclient"
DESCRIPTION = ("One Python file that keeps SSH tunnels up, mostly reverse tunnels to a hub: it drives\n"
               "OpenSSH ssh or dropbear dbclient, checks each forward end to end and reconnects\n"
               "with backoff. Tunnels are configured in a UCI-syntax file.")
MAINTAINER = "sshkeep maintainers"

# OpenWrt: sshtunnel declares the client as @(DROPBEAR_DBCLIENT||PACKAGE_openssh-client), a build-time
# choice that leaves no Depends; a feed-less .ipk can only say it at install time: either client.
IPK_DEPENDS = "libc, python3-light, dropbear | openssh-client"
DEB_DEPENDS = "python3 (>= 3.8), openssh-client | dropbear-bin"

# The script opkg runs as /usr/lib/opkg/info/sshkeep.postinst (and .prerm): OpenWrt's own template.
IPK_POSTINST = """#!/bin/sh
[ "${IPKG_NO_SCRIPT}" = "1" ] && exit 0
[ -s ${IPKG_INSTROOT}/lib/functions.sh ] || exit 0
. ${IPKG_INSTROOT}/lib/functions.sh
default_postinst $0 $@
"""
IPK_PRERM = """#!/bin/sh
[ -s ${IPKG_INSTROOT}/lib/functions.sh ] || exit 0
. ${IPKG_INSTROOT}/lib/functions.sh
default_prerm $0 $@
"""

DEB_CONFIG = "/etc/sshkeep/sshkeep.conf"
# A fresh install has only the commented example: nothing to keep up, so nothing is started (an
# agent would exit 78 "no enabled tunnel"). The same test as init.d/sshkeep's.
_HAS_TUNNEL = "grep -qsE \"^[[:space:]]*config[[:space:]]+[\\\"']?tunnel\" " + DEB_CONFIG
DEB_POSTINST = """#!/bin/sh
# sshkeep: enable the service; (re)start it when the config names a tunnel.
set -e
has_tunnel() { %(has)s; }
failed() { echo "sshkeep: start failed: see $1 and: sshkeep config -c %(conf)s" >&2; }
[ "$1" = configure ] || exit 0
# the LSB script's rc links, whatever init runs now (update-rc.d enables the unit as well)
if [ -x /usr/sbin/update-rc.d ]; then update-rc.d sshkeep defaults; fi
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload
	systemctl enable sshkeep.service
	if has_tunnel; then systemctl restart sshkeep.service || failed "journalctl -u sshkeep"; fi
else
	# sysvinit or busybox init; the unit enabled too, for a later boot under systemd
	if command -v systemctl >/dev/null 2>&1; then systemctl enable sshkeep.service 2>/dev/null || true; fi
	if has_tunnel; then
		if [ -x /usr/sbin/invoke-rc.d ]; then invoke-rc.d sshkeep restart || failed syslog
		else /etc/init.d/sshkeep restart || failed syslog; fi
	fi
fi
exit 0
""" % {"has": _HAS_TUNNEL, "conf": DEB_CONFIG}
DEB_PRERM = """#!/bin/sh
# sshkeep: stop the agent on removal (an upgrade restarts it from the new postinst instead).
set -e
case "$1" in
remove|deconfigure)
	if [ -d /run/systemd/system ]; then systemctl stop sshkeep.service || true
	elif [ -x /usr/sbin/invoke-rc.d ]; then invoke-rc.d sshkeep stop || true
	else /etc/init.d/sshkeep stop || true; fi
	;;
esac
exit 0
"""
DEB_POSTRM = """#!/bin/sh
# sshkeep: drop the service links. Keys and pins in /etc/sshkeep/ stay, even on purge.
set -e
case "$1" in
remove|purge)
	if command -v systemctl >/dev/null 2>&1; then
		systemctl disable sshkeep.service >/dev/null 2>&1 || true
		if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
	fi
	;;
esac
if [ "$1" = purge ] && [ -x /usr/sbin/update-rc.d ]; then update-rc.d sshkeep remove; fi
exit 0
"""


class Entry:
    """One tar member: a directory, a file (data) or a symlink (target)."""

    def __init__(self, path, mode, data=None, link=None):
        self.path, self.mode, self.data, self.link = path.strip("/"), mode, data, link

    def key(self):
        return self.path.split("/")


def version():
    with open(os.path.join(TOP, "agent", "__init__.py")) as f:
        m = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M)
    if not m:
        raise SystemExit("packages: no __version__ in agent/__init__.py")
    return m.group(1)


def source_date_epoch():
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env:
        return int(env)
    try:
        out = subprocess.run(["git", "-C", TOP, "log", "-1", "--format=%ct"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, timeout=10)
        return int(out.stdout.strip() or 0) if out.returncode == 0 else 0
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return 0


def read(rel):
    with open(os.path.join(TOP, rel), "rb") as f:
        return f.read()


def with_dirs(entries, dir_modes):
    """entries plus every parent directory (0755 unless dir_modes says otherwise), sorted like
    GNU tar --sort=name (depth first, names compared bytewise), rooted at ./"""
    have = {e.path: e for e in entries}
    for e in list(entries):
        parts = e.path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in have:
                have[d] = Entry(d, dir_modes.get(d, 0o755))
    for d, mode in dir_modes.items():
        have.setdefault(d, Entry(d, mode))
    return [Entry("", 0o755)] + sorted(have.values(), key=Entry.key)


def tar_bytes(entries, mtime):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo("./" + e.path if e.path else "./")
            info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = mtime, e.mode, 0, 0, "", ""
            if e.link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, e.link
                tar.addfile(info)
            elif e.data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
    return buf.getvalue()


def gz(data):
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", fileobj=buf, mode="wb", compresslevel=9, mtime=0) as f:
        f.write(data)
    return buf.getvalue()


def control_text(fields, description):
    lines = ["%s: %s" % kv for kv in fields]
    lines.append("Description: " + description.split("\n")[0])
    lines += [" " + (l or ".") for l in description.split("\n")[1:]]
    return ("\n".join(lines) + "\n").encode()


def example_config(path, restart):
    text = read("packaging/sshkeep.conf").decode()
    return text.replace("@CONFIG@", path).replace("@RESTART@", restart).encode()


def common_files(pyz):
    if not pyz.startswith(b"#!/usr/bin/env python3\n"):
        raise SystemExit("packages: the pyz does not start with #!/usr/bin/env python3")
    return [Entry("usr/bin/sshkeep", 0o755, pyz),
            # the init scripts' (and the README's) PYZ path
            Entry("usr/lib/sshkeep/sshkeep.pyz", 0o777, link="../../bin/sshkeep")]


def build_ipk(pyz, ver, mtime):
    data = with_dirs(common_files(pyz) + [
        Entry("etc/init.d/sshkeep", 0o755, read("init.d/sshkeep")),
        Entry("etc/config/sshkeep", 0o600, example_config("/etc/config/sshkeep", "/etc/init.d/sshkeep restart")),
        # sysupgrade keeps the key and pinned host keys (the conffile it keeps anyway)
        Entry("lib/upgrade/keep.d/sshkeep", 0o644, b"/etc/sshkeep/\n"),
    ], {"etc/sshkeep": 0o700})
    data_tar = tar_bytes(data, mtime)
    fields = [("Package", NAME), ("Version", ver), ("Depends", IPK_DEPENDS), ("SourceName", NAME),
              ("Section", "net"), ("SourceDateEpoch", str(mtime)), ("Maintainer", MAINTAINER),
              ("Architecture", "all"), ("Installed-Size", str(len(data_tar)))]
    control = with_dirs([
        Entry("control", 0o644, control_text(fields, SUMMARY + "\n" + DESCRIPTION)),
        Entry("conffiles", 0o644, b"/etc/config/sshkeep\n"),
        Entry("postinst", 0o755, IPK_POSTINST.encode()),
        Entry("prerm", 0o755, IPK_PRERM.encode()),
    ], {})
    outer = [Entry("debian-binary", 0o644, b"2.0\n"), Entry("data.tar.gz", 0o644, gz(data_tar)),
             Entry("control.tar.gz", 0o644, gz(tar_bytes(control, mtime)))]
    # ipkg-build names these three explicitly, in this order, without a ./ directory entry
    return gz(tar_bytes(outer, mtime))


def deb_init_script():
    text = read("init.d/sshkeep.busybox").decode()
    old = "CONFIG=${CONFIG:-/etc/sshkeep.conf}\n"
    if text.count(old) != 1:
        raise SystemExit("packages: init.d/sshkeep.busybox: expected one line %r" % old.strip())
    return text.replace(old, "CONFIG=${CONFIG:-%s}\n" % DEB_CONFIG).encode()


def ar_archive(members, mtime):
    out = [b"!<arch>\n"]
    for name, data in members:
        out.append(b"%-16s%-12d%-6d%-6d%-8o%-10d`\n" % (name.encode(), mtime, 0, 0, 0o100644, len(data)))
        out.append(data + (b"\n" if len(data) % 2 else b""))
    return b"".join(out)


def build_deb(pyz, ver, mtime):
    data = with_dirs(common_files(pyz) + [
        Entry("etc/init.d/sshkeep", 0o755, deb_init_script()),
        Entry(DEB_CONFIG, 0o600, example_config(DEB_CONFIG, "systemctl restart sshkeep  (no systemd: "
                                                           "/etc/init.d/sshkeep restart)")),
        Entry("usr/lib/systemd/system/sshkeep.service", 0o644, read("init.d/sshkeep.service")),
    ], {"etc/sshkeep": 0o700})
    kib = sum((len(e.data or b"") + 1023) // 1024 + 1 for e in data)
    fields = [("Package", NAME), ("Version", ver), ("Architecture", "all"), ("Maintainer", MAINTAINER),
              ("Installed-Size", str(kib)), ("Depends", DEB_DEPENDS), ("Section", "net"),
              ("Priority", "optional")]
    control = with_dirs([
        Entry("control", 0o644, control_text(fields, SUMMARY + "\n" + DESCRIPTION)),
        Entry("conffiles", 0o644, ("/etc/init.d/sshkeep\n%s\n" % DEB_CONFIG).encode()),
        Entry("postinst", 0o755, DEB_POSTINST.encode()),
        Entry("prerm", 0o755, DEB_PRERM.encode()),
        Entry("postrm", 0o755, DEB_POSTRM.encode()),
    ], {})
    return ar_archive([("debian-binary", b"2.0\n"), ("control.tar.gz", gz(tar_bytes(control, mtime))),
                       ("data.tar.gz", gz(tar_bytes(data, mtime)))], mtime)


def main(argv):
    if len(argv) != 3:
        raise SystemExit(__doc__.split("\n\n")[1])
    with open(argv[1], "rb") as f:
        pyz = f.read()
    outdir, ver, mtime = argv[2], version(), source_date_epoch()
    os.makedirs(outdir, exist_ok=True)
    for ext, build in (("ipk", build_ipk), ("deb", build_deb)):
        path = os.path.join(outdir, "%s_%s_all.%s" % (NAME, ver, ext))
        blob = build(pyz, ver, mtime)
        with open(path + ".tmp", "wb") as f:
            f.write(blob)
        os.replace(path + ".tmp", path)
        print("packages: %s %d bytes" % (path, len(blob)))


if __name__ == "__main__":
    main(sys.argv)
