"""Rewrite a shiv-built pyz deterministically, with build/entry.py as __main__.py.

usage: python build/repack.py SHIV_PYZ ENTRY_PY OUT_PYZ

shiv 1.0.8 writes its own __main__.py and _bootstrap/ package (which cannot start on
OpenWrt python3-light and extracts to ~/.shiv); we swap in our entry, slimmed like agent/
(slim.py: comments and docstring text out, line numbers kept), leave _bootstrap/ out (4 KB
of the budget for a path no box can take) and make the archive independent of the build
machine: entries sorted by name, every file mode 0644, one compression level, shiv's own
(SOURCE_DATE_EPOCH / --reproducible) timestamps.
Build-time only: runs in the build venv, so zipfile is fine here.
"""

import json
import os
import sys
import zipfile

from slim import slim

SHEBANG = b"#!/usr/bin/env python3\n"
FILE_MODE = 0o100644  # regular file, rw-r--r--
REQUIRED = ("environment.json", "site-packages/agent/__init__.py",
            "site-packages/agent/cli.py")


def member(name, data, entry):
    if name == "__main__.py":
        data = entry
    if name == "__main__.py":
        return slim(data.decode("utf-8"), name).encode("utf-8")
    return data


def repack(src, entry_path, out):
    with open(entry_path, "rb") as f:
        entry = f.read()
    with zipfile.ZipFile(src) as zin:
        infos = sorted((i for i in zin.infolist() if not i.is_dir() and not i.filename.startswith("_bootstrap/")),
                       key=lambda i: i.filename)
        names = [i.filename for i in infos]
        for name in REQUIRED:
            if name not in names:
                raise SystemExit("repack: %s missing from %s" % (name, src))
        stray = [n for n in names if n.endswith(".pyc") or "__pycache__" in n]
        if stray:
            raise SystemExit("repack: compiled files in archive: %s" % ", ".join(stray))
        env = json.loads(zin.read("environment.json").decode("utf-8"))
        if env.get("entry_point") != "agent.cli:main":
            raise SystemExit("repack: unexpected entry point %r" % env.get("entry_point"))
        members = [(i, member(i.filename, zin.read(i), entry)) for i in infos]

    tmp = out + ".tmp%d" % os.getpid()
    _use_zopfli()
    with open(tmp, "wb") as f:
        f.write(SHEBANG)
        with zipfile.ZipFile(f, "w") as zout:
            for old, data in members:
                info = zipfile.ZipInfo(old.filename, date_time=old.date_time)
                info.create_system = 3  # unix, whatever the build host
                info.external_attr = FILE_MODE << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zout.writestr(info, data, compresslevel=9)
    os.chmod(tmp, 0o755)
    os.replace(tmp, out)


class _ZopfliDeflate:
    """A zipfile compressor that emits zopfli's raw deflate: ~3 % smaller, still plain deflate
    (zipimport reads it), deterministic. Build time only; the budget is 96 KB."""

    def __init__(self):
        self.parts = []

    def compress(self, data):
        self.parts.append(data)
        return b""

    def flush(self):
        from zopfli import zopfli
        # zopfli.compress makes a zlib stream: 2-byte header, raw deflate, 4-byte adler32.
        return zopfli.compress(b"".join(self.parts), numiterations=15)[2:-4]


def _use_zopfli():
    try:
        import zopfli.zopfli  # noqa: F401  (pinned in build/requirements.txt)
    except ImportError:
        sys.stderr.write("repack: zopfli not installed, using zlib level 9\n")
        return
    plain = zipfile._get_compressor

    def pick(compress_type, compresslevel=None):
        if compress_type == zipfile.ZIP_DEFLATED:
            return _ZopfliDeflate()
        return plain(compress_type, compresslevel)
    zipfile._get_compressor = pick


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__.strip().splitlines()[2])
    repack(sys.argv[1], sys.argv[2], sys.argv[3])
