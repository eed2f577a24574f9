"""Build the OpenWrt 25.12 package (apk-tools 3, the v3 "ADB" format) from one sshkeep.pyz.

usage: python3 build/apk.py PYZ OUTDIR [RELEASE]      (`make packages`: build/out/, release 1)

Writes OUTDIR/sshkeep-VERSION-rRELEASE.apk (VERSION as the .ipk's, from build/packages.py) with the
real `apk mkpkg` of apk-tools 3: the one in $APK if set, else build/apk-tools/apk, built once from
../shared/vendor by build/apk-tools.sh. Without either it writes nothing, says on stderr exactly what
is missing, and exits 0 (`make packages` still made the .ipk and .deb); exit 3 with --require.

Same files and behaviour as the .ipk (build/packages.py), laid out the way OpenWrt's
include/package-pack.mk lays out an apk package:
  - the pyz, the symlink, the procd script, /etc/config/sshkeep (0600), /etc/sshkeep/ (0700), the
    sysupgrade keep list; plus lib/apk/packages/sshkeep.list (every file and link, sorted: what
    default_postinst/default_prerm read to find /etc/init.d/ scripts), .conffiles and
    .conffiles_static (path + sha256: what sysupgrade reads to find changed configs);
  - post-install, post-upgrade (PKG_UPGRADE=1) and pre-deinstall scripts: OpenWrt's templates, which
    call default_postinst / default_prerm from /lib/functions.sh: enable + start on install, start on
    upgrade, stop + disable on removal (enable only, when IPKG_INSTROOT is set: an image build).
apk itself keeps a changed file under /etc on upgrade and removal (its default protected path
"+etc"); the new one is written beside it as FILE.apk-new.

Reproducible: the files are staged with fixed modes, mkpkg runs with SOURCE_DATE_EPOCH (the same
epoch as packages.py: every file's mtime) and an empty --root (owners resolve to root:root), as
root or, for a non-root build, under `unshare --map-root-user`. Two builds are byte-identical.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import packages as P  # noqa: E402  (the .ipk's files, version, epoch: one source)

RELEASE = 1
# apk has no "a | b" in depends: the ssh client (dropbear's dbclient, in every OpenWrt image, or
# openssh-client) is not declared, as OpenWrt's own sshtunnel declares it only at build time.
DEPENDS = "libc python3-light"
# The project states no licence and no home page yet: SPDX's word for "none stated" until it does.
LICENSE = "NOASSERTION"
URL = "NOASSERTION"

# OpenWrt's include/package-pack.mk (CONFIG_USE_APK) writes these for every package.
POST_INSTALL = """#!/bin/sh
[ "${IPKG_NO_SCRIPT}" = "1" ] && exit 0
[ -s ${IPKG_INSTROOT}/lib/functions.sh ] || exit 0
. ${IPKG_INSTROOT}/lib/functions.sh
export root="${IPKG_INSTROOT}"
export pkgname="%(name)s"
add_group_and_user
default_postinst
"""
POST_UPGRADE_HEAD = "#!/bin/sh\nexport PKG_UPGRADE=1\n"
PRE_DEINSTALL = """#!/bin/sh
[ -s ${IPKG_INSTROOT}/lib/functions.sh ] || exit 0
. ${IPKG_INSTROOT}/lib/functions.sh
export root="${IPKG_INSTROOT}"
export pkgname="%(name)s"
default_prerm
"""
CONFFILES = ["/etc/config/sshkeep"]

MISSING = """packages: no .apk (OpenWrt 25.12): it needs apk-tools 3 (`apk mkpkg`), and there is none here.
  Either put sshkeep's shared/ directory beside this clone (%(vendor)s: apk-tools-3.0.6.tar.gz and
  build-apk-tools.sh; `make packages` then builds apk into build/apk-tools/ with gcc, ninja-build,
  pkg-config, libssl-dev, zlib1g-dev and meson from PyPI),
  or build apk-tools >= 3.0 yourself (https://gitlab.alpinelinux.org/alpine/apk-tools, tag v3.0.6:
  meson setup -Dlua=disabled -Dzstd=disabled -Ddocs=disabled -Dhelp=disabled build && ninja -C build
  src/apk) and run: APK=/path/to/apk make packages"""


def apk_version_ok(apk):
    try:
        r = subprocess.run([apk, "--version"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and r.stdout.startswith(b"apk-tools 3.")


def find_apk():
    """(path of an apk-tools 3 apk, None) or (None, why not). May build it (build/apk-tools.sh)."""
    env = os.environ.get("APK")
    if env:
        return (env, None) if apk_version_ok(env) else (None, "APK=%s is not apk-tools 3" % env)
    r = subprocess.run(["sh", os.path.join(HERE, "apk-tools.sh")], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=900)
    path = r.stdout.decode().strip()
    if r.returncode == 0 and path and apk_version_ok(path):
        return path, None
    vendor = os.path.normpath(os.path.join(P.TOP, "..", "shared", "vendor"))
    if r.returncode == 3:
        return None, MISSING % {"vendor": vendor}
    return None, "packages: no .apk: building apk-tools failed:\n" + r.stderr.decode(errors="replace")


def write(root, entry):
    path = os.path.join(root, entry.path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if entry.link is not None:
        os.symlink(entry.link, path)
    elif entry.data is None:
        os.makedirs(path, exist_ok=True)
        os.chmod(path, entry.mode)
    else:
        with open(path, "wb") as f:
            f.write(entry.data)
        os.chmod(path, entry.mode)


def files(pyz):
    """The .ipk's data (packages.build_ipk) plus lib/apk/packages/sshkeep.*, as Entry objects."""
    data = P.common_files(pyz) + [
        P.Entry("etc/init.d/sshkeep", 0o755, P.read("init.d/sshkeep")),
        P.Entry("etc/config/sshkeep", 0o600, P.example_config("/etc/config/sshkeep",
                                                              "/etc/init.d/sshkeep restart")),
        P.Entry("lib/upgrade/keep.d/sshkeep", 0o644, b"/etc/sshkeep/\n"),
    ]
    listing = "".join(sorted("/%s\n" % e.path for e in data))
    by_path = {"/" + e.path: e for e in data}
    static = "".join("%s %s\n" % (c, hashlib.sha256(by_path[c].data).hexdigest()) for c in CONFFILES)
    meta = "lib/apk/packages/" + P.NAME
    data += [P.Entry(meta + ".list", 0o644, listing.encode()),
             P.Entry(meta + ".conffiles", 0o644, "".join(c + "\n" for c in CONFFILES).encode()),
             P.Entry(meta + ".conffiles_static", 0o644, static.encode())]
    return data, {"etc/sshkeep": 0o700}


def scripts():
    post_install = POST_INSTALL % {"name": P.NAME}
    return {"post-install": post_install,
            "post-upgrade": POST_UPGRADE_HEAD + post_install.split("\n", 1)[1],
            "pre-deinstall": PRE_DEINSTALL % {"name": P.NAME}}


def mkpkg_argv(apk, ver, release, stage, out):
    info = [("name", P.NAME), ("version", "%s-r%d" % (ver, release)),
            ("description", " ".join(P.DESCRIPTION.split())), ("arch", "noarch"), ("license", LICENSE), ("origin", P.NAME),
            ("url", URL), ("maintainer", P.MAINTAINER), ("depends", DEPENDS)]
    argv = [apk, "--root", os.path.join(stage, "empty"), "mkpkg"]
    for k, v in info:
        argv += ["--info", "%s:%s" % (k, v)]
    for kind in ("post-install", "post-upgrade", "pre-deinstall"):
        argv += ["--script", "%s:%s" % (kind, os.path.join(stage, kind))]
    return argv + ["--files", os.path.join(stage, "root"), "--output", out]


def build_apk(apk, pyz, ver, mtime, release, out):
    with tempfile.TemporaryDirectory(prefix="sshkeep-apk-") as stage:
        os.chmod(stage, 0o755)
        root = os.path.join(stage, "root")
        os.makedirs(root)
        os.makedirs(os.path.join(stage, "empty"))
        data, dirs = files(pyz)
        for e in data:
            write(root, e)
        for d, mode in dirs.items():
            write(root, P.Entry(d, mode))
        for dirpath, dirnames, _ in os.walk(root):      # every other directory: 0755 (any umask)
            for d in dirnames:
                full = os.path.join(dirpath, d)
                if os.path.relpath(full, root) not in dirs:
                    os.chmod(full, 0o755)
        os.chmod(root, 0o755)
        for kind, text in scripts().items():
            with open(os.path.join(stage, kind), "w") as f:
                f.write(text)
        argv = mkpkg_argv(apk, ver, release, stage, out + ".tmp")
        if os.geteuid() != 0:                             # files owned by uid 0, not by the builder
            argv = ["unshare", "--map-root-user"] + argv
        r = subprocess.run(argv, env=dict(os.environ, SOURCE_DATE_EPOCH=str(mtime)), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=120)
        if r.returncode != 0:
            raise SystemExit("packages: apk mkpkg failed (%d): %s" % (r.returncode, r.stdout.decode(errors="replace")))
        os.replace(out + ".tmp", out)


def main(argv):
    require = "--require" in argv
    argv = [a for a in argv if a != "--require"]
    if len(argv) not in (3, 4):
        raise SystemExit(__doc__.split("\n\n")[1])
    release = int(argv[3]) if len(argv) == 4 else RELEASE
    with open(argv[1], "rb") as f:
        pyz = f.read()
    outdir, ver, mtime = argv[2], P.version(), P.source_date_epoch()
    apk, why = find_apk()
    if apk is None:
        print(why, file=sys.stderr)
        sys.exit(3 if require else 0)
    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, "%s-%s-r%d.apk" % (P.NAME, ver, release))
    build_apk(apk, pyz, ver, mtime, release, path)
    print("packages: %s %d bytes" % (path, os.path.getsize(path)))


if __name__ == "__main__":
    main(sys.argv)
