# sshkeep.pyz entry: replaces the __main__.py shiv writes (build/repack.py puts it in, and
# drops shiv's _bootstrap/ package).
#
# Why not shiv's own bootstrap:
#  1. It imports compileall -> pathlib -> urllib at once; OpenWrt's python3-light
#     3.11 has no urllib, so a plain shiv pyz dies before our code runs.
#  2. It extracts site-packages to ~/.shiv and never cleans old builds; under
#     procd HOME=/ so that is /.shiv, on the flash overlay.
# Instead we import straight from <archive>/site-packages with zipimport, like a
# plain zipapp: nothing is extracted and nothing is written (zipimport never
# writes .pyc files). The archive keeps shiv's layout and environment.json.
# Stdlib on this path: sys and os only (both loaded before any __main__ runs).
import os
import sys

archive = getattr(__loader__, "archive", None) or os.path.dirname(__file__)
sys.path.insert(0, os.path.join(archive, "site-packages"))
from agent.cli import main  # noqa: E402

sys.exit(main())
