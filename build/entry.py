# sshkeep.pyz entry: replaces the __main__.py shiv writes (build/repack.py puts it in).
#
# Why not shiv's own bootstrap (`_bootstrap`, still in the archive):
#  1. It imports compileall -> pathlib -> urllib at once; OpenWrt's python3-light
#     3.11 has no urllib, so a plain shiv pyz dies before our code runs.
#  2. It extracts site-packages to ~/.shiv and never cleans old builds; under
#     procd HOME=/ so that is /.shiv, on the flash overlay.
# Instead we import straight from <archive>/site-packages with zipimport, like a
# plain zipapp: nothing is extracted and nothing is written (zipimport never
# writes .pyc files). The archive keeps shiv's layout and environment.json.
# shiv's bootstrap is tried only when SHIV_ROOT is set explicitly to a directory
# under /tmp (tmpfs on a router), and only if it imports; otherwise zipimport.
# Stdlib on this path: sys and os only (both loaded before any __main__ runs).
import os
import sys


def _shiv_root_on_tmp():
    root = os.environ.get("SHIV_ROOT", "")
    return bool(root) and os.path.realpath(root).startswith("/tmp/")


def _entry():
    if _shiv_root_on_tmp():
        try:
            import _bootstrap
        except ImportError:
            pass  # python3-light: fall through to zipimport
        else:
            _bootstrap.bootstrap()  # exits through sys.exit(agent.cli:main())
    archive = getattr(__loader__, "archive", None) or os.path.dirname(__file__)
    sys.path.insert(0, os.path.join(archive, "site-packages"))
    if sys.argv[1:2] == ["_resolve"]:  # a reload's short-lived config parse
        from agent.launch import resolve_main
        sys.exit(resolve_main(sys.argv[2:]))
    from agent.cli import main
    sys.exit(main())


_entry()
