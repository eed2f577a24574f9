"""The python3-light import guard, shared by every test that runs agent code.

OpenWrt's python3-light lacks logging, urllib, email, unicodedata, ... and on
3.11 pathlib, zipfile, compileall, importlib.metadata/resources and
concurrent.futures fail through them. The guard makes any interpreter (host,
pyenv, a foreign-arch one under QEMU) refuse the same list:

    env = guard_env()                        # os.environ + PYTHONPATH=GUARD_DIR
    subprocess.run([python, "x.pyz", "--version"], env=env)
    check_active(python, env)                # AssertionError if the guard is off

Mechanism: GUARD_DIR holds a sitecustomize.py that puts a sys.meta_path finder
first, raising ModuleNotFoundError("blocked by python3-light guard: NAME").
It needs only PYTHONPATH and one file, no host paths: for a chroot, copy it in
with install_guard(root). It is off under `python -I`, `-E` or `-S`.
"""

import ast
import os
import shutil
import subprocess

GUARD_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lightguard_site")
MESSAGE = "blocked by python3-light guard: "


def _blocked_list():
    """BLOCKED as sitecustomize.py spells it: that file is the one list (it must stand alone in a
    chroot), read here without importing it (importing it would guard this interpreter)."""
    with open(os.path.join(GUARD_DIR, "sitecustomize.py")) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "BLOCKED":
            return tuple(ast.literal_eval(node.value))
    raise RuntimeError("no BLOCKED = (...) in %s/sitecustomize.py" % GUARD_DIR)


BLOCKED = _blocked_list()


def is_blocked(name):
    """True if `name` (a dotted module name) is refused under the guard."""
    return any(name == b or name.startswith(b + ".") for b in BLOCKED)


def guard_env(base_env=None, guard_dir=GUARD_DIR):
    """A copy of base_env (default os.environ) with the guard first on PYTHONPATH.

    guard_dir: the directory as the guarded interpreter sees it (see install_guard).
    Drops PYTHONSTARTUP. Do not run the interpreter with -I, -E or -S: the guard would be off.
    """
    env = dict(os.environ if base_env is None else base_env)
    old = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = guard_dir + (os.pathsep + old if old else "")
    env.pop("PYTHONSTARTUP", None)
    return env


def install_guard(root, subdir="tmp/lightguard_site"):
    """Copy the guard into a foreign root (for chroot); returns the path to use inside the root."""
    dest = os.path.join(root, subdir)
    os.makedirs(dest, exist_ok=True)
    shutil.copy2(os.path.join(GUARD_DIR, "sitecustomize.py"), os.path.join(dest, "sitecustomize.py"))
    return "/" + subdir.strip("/")


CHECK_CODE = (
    "import sys, sitecustomize\n"
    "assert getattr(sitecustomize, 'SSHKEEP_LIGHTGUARD', False), 'another sitecustomize'\n"
    "try:\n"
    "    import logging\n"
    "except ImportError as e:\n"
    "    print(e)\n"
    "else:\n"
    "    sys.exit('logging imported')\n"
)


def check_active(python, env, cmd_prefix=(), timeout=60):
    """Run `python` with env and raise AssertionError unless the guard refuses logging.

    cmd_prefix: e.g. ("qemu-arm-static", "-L", root) for a foreign interpreter.
    """
    proc = subprocess.run(list(cmd_prefix) + [python, "-c", CHECK_CODE], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    out = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    if proc.returncode != 0 or MESSAGE + "logging" not in out:
        raise AssertionError("python3-light guard not active for %s (rc %s): %s"
                             % (python, proc.returncode, out.strip()))
