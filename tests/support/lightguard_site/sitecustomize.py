"""python3-light import guard (test-only; see tests/support/lightguard.py).

Put this directory first on PYTHONPATH and the interpreter refuses, as
OpenWrt's python3-light would, every module OpenWrt ships in separate
packages, and the stdlib modules that fail on light through them. It only
uses sys, so it also works in a foreign-arch python under QEMU.
BLOCKED here is the one list: tests/support/lightguard.py reads it from this file.
"""
import sys

SSHKEEP_LIGHTGUARD = True

BLOCKED = (
    # packaged separately on OpenWrt (python3-asyncio, -codecs, -ctypes, ...)
    "asyncio", "_asyncio", "cgi", "cgitb",
    "unicodedata", "_multibytecodec", "_codecs_cn", "_codecs_hk", "_codecs_iso2022",
    "_codecs_jp", "_codecs_kr", "_codecs_tw",
    "ctypes", "_ctypes", "dbm", "_dbm", "_gdbm", "decimal", "_decimal", "distutils",
    "email", "lib2to3", "logging", "lzma", "_lzma", "multiprocessing", "_multiprocessing",
    "_posixshmem", "curses", "_curses", "_curses_panel", "_hashlib", "_ssl", "ssl",
    "pydoc", "doctest", "readline", "sqlite3", "_sqlite3", "unittest", "urllib",
    "uuid", "_uuid", "venv", "ensurepip", "xml", "xmlrpc", "pyexpat", "_elementtree",
    # knock-on failures on 3.11 light (they import the above)
    "pathlib", "zipfile", "compileall", "importlib.metadata", "importlib.resources",
    "concurrent",
)


def _blocked(name):
    for b in BLOCKED:
        if name == b or name.startswith(b + "."):
            return True
    return False


class LightGuard(object):
    """A meta-path finder that refuses blocked modules before any other finder."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if _blocked(name):
            raise ModuleNotFoundError("blocked by python3-light guard: " + name, name=name)
        return None

    @staticmethod
    def find_module(name, path=None):  # pre-3.4 protocol, for completeness
        LightGuard.find_spec(name)


# Anything site.py or a .pth file already loaded must be imported again to be refused.
PRELOADED = tuple(sorted(m for m in list(sys.modules) if _blocked(m)))
for _m in PRELOADED:
    del sys.modules[_m]
sys.meta_path.insert(0, LightGuard)
