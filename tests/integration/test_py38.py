"""agent/ runs on Python 3.8 and on OpenWrt's python3-light.

Three independent checks: vermin's minimum-version analysis, a static walk of every import
statement against the python3-light block list, and importing every agent module in a fresh
interpreter (host 3.11 and 3.8) under the import guard. Also checks the guard itself.
"""

import ast
import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "support"))
import lightguard  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AGENT = os.path.join(REPO, "agent")
HOST_PY = "/usr/bin/python3"
PY38 = "/root/.pyenv/versions/3.8.18/bin/python3"

PYTHONS = [pytest.param(p, id="py38" if p == PY38 else "host",
                        marks=pytest.mark.skipif(not os.access(p, os.X_OK), reason=p + " missing"))
           for p in (HOST_PY, PY38)]

# What agent code is expected to lean on; all of it is in python3-light.
LIGHT_OK = ("os", "sys", "json", "socket", "select", "selectors", "subprocess", "signal", "fcntl",
            "syslog", "argparse", "shlex", "errno", "time", "random", "hashlib",
            "tempfile", "typing", "struct", "stat", "re", "io", "collections", "functools", "enum",
            "shutil", "textwrap", "base64", "binascii", "pwd", "grp", "getpass", "platform")


def agent_modules():
    mods = []
    for dirpath, dirnames, filenames in os.walk(AGENT):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, name), REPO)[:-3]
                parts = rel.split(os.sep)
                if parts[-1] == "__init__":
                    parts.pop()
                mods.append(".".join(parts))
    return mods


MODULES = agent_modules()


def module_path(mod):
    base = os.path.join(REPO, *mod.split("."))
    return os.path.join(base, "__init__.py") if os.path.isdir(base) else base + ".py"


def imported_names(tree, mod):
    """(lineno, dotted name) for every import in the tree, including importlib.import_module('x')."""
    package = mod if module_path(mod).endswith("__init__.py") else mod.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, base + "." + alias.name
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            f = node.func
            fname = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if fname in ("import_module", "__import__"):
                yield node.lineno, node.args[0].value


def vermin_cmd():
    for cand in (os.path.join(os.path.dirname(sys.executable), "vermin"),
                 os.path.join(REPO, "build", "venv", "bin", "vermin"), shutil.which("vermin")):
        if cand and os.access(cand, os.X_OK):
            return cand
    pytest.skip("vermin not installed (make venv)")


def test_agent_package_found():
    assert "agent" in MODULES and "agent.cli" in MODULES


def test_vermin_says_py38():
    """agent/ and the pyz entry (build/entry.py) need nothing newer than 3.8."""
    proc = subprocess.run([vermin_cmd(), "-t=3.8-", "--no-tips", "--violations", "--eval-annotations",
                           "--pessimistic", AGENT, os.path.join(REPO, "build", "entry.py")],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, out
    assert "Target versions not met" not in out, out


@pytest.mark.parametrize("mod", MODULES)
def test_no_blocked_import_static(mod):
    path = module_path(mod)
    with open(path, "rb") as f:
        tree = ast.parse(f.read(), filename=path)
    stdlib = getattr(sys, "stdlib_module_names", None)
    bad = []
    for lineno, name in imported_names(tree, mod):
        top = name.split(".")[0]
        if lightguard.is_blocked(name):
            bad.append("%s:%d: %s is not in python3-light" % (path, lineno, name))
        elif stdlib is not None and top not in stdlib and top not in ("agent", "__future__"):
            bad.append("%s:%d: %s is not in the standard library" % (path, lineno, name))
    assert not bad, "\n".join(bad)


@pytest.fixture(scope="module", params=PYTHONS)
def guarded(request):
    python = request.param
    env = lightguard.guard_env()
    env["PYTHONPATH"] += os.pathsep + REPO
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # do not leave 3.8 bytecode in the checkout
    lightguard.check_active(python, env)
    return python, env


@pytest.mark.parametrize("mod", MODULES)
def test_imports_under_guard(guarded, mod):
    python, env = guarded
    proc = subprocess.run([python, "-B", "-c", "import " + mod], env=env, cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")


def test_guard_list_is_read_from_sitecustomize():
    assert "logging" in lightguard.BLOCKED and "concurrent" in lightguard.BLOCKED
    assert all(lightguard.is_blocked(n) for n in ("email.message", "xml.dom", "importlib.metadata"))
    assert not lightguard.is_blocked("importlib") and not lightguard.is_blocked("loggingx")


GUARD_PROBE = r"""
import sys
blocked, allowed = sys.argv[1].split(","), sys.argv[2].split(",")
leaks = []
for name in blocked:
    try:
        __import__(name)
        leaks.append(name + ": imported")
    except ImportError as e:
        if "blocked by python3-light guard: " not in str(e):
            leaks.append(name + ": " + str(e))
for name in allowed:
    __import__(name)
import socket
socket.getaddrinfo(b"localhost", 22)      # bytes host: no idna codec needed
try:
    socket.getaddrinfo("localhost", 22)   # the idna trap, as on the box
    leaks.append("str getaddrinfo worked")
except LookupError:
    pass
print("\n".join(leaks))
"""


@pytest.mark.parametrize("python", PYTHONS)
def test_guard_refuses_light_gaps_and_keeps_the_rest(python):
    names = list(lightguard.BLOCKED) + ["http.client", "encodings.idna", "concurrent.futures"]
    proc = subprocess.run([python, "-B", "-c", GUARD_PROBE, ",".join(names), ",".join(LIGHT_OK)],
                          env=lightguard.guard_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert proc.stdout.decode().strip() == ""


def test_is_blocked():
    assert lightguard.is_blocked("logging.handlers")
    assert lightguard.is_blocked("importlib.metadata")
    assert not lightguard.is_blocked("importlib")
    assert not lightguard.is_blocked("importlib.util")
    assert not lightguard.is_blocked("loggingx")
