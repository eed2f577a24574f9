"""The pyz build: reproducible, small, a shiv archive that starts on python3-light and writes nothing.

Builds run from snapshots of the working tree (agent/ + build/), not in place, so two builds can be
compared byte for byte and a concurrent edit of agent/ cannot race the comparison.
"""

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "support"))
import lightguard  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "build"))
import slim  # noqa: E402
import stage  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOST_PY = "/usr/bin/python3"
PY38 = "/root/.pyenv/versions/3.8.18/bin/python3"


def _budget():
    """The byte budget build/build.sh enforces (one number, there)."""
    with open(os.path.join(REPO, "build", "build.sh")) as f:
        return int(re.search(r"^LIMIT=(\d+)", f.read(), re.M).group(1))


LIMIT = _budget()
TIMEOUT = 120
BUILD_FILES = ("build.sh", "stage.py", "slim.py", "repack.py", "entry.py")

PYTHONS = [pytest.param(p, id=os.path.basename(os.path.dirname(os.path.dirname(p))) or "host",
                        marks=pytest.mark.skipif(not os.access(p, os.X_OK), reason=p + " missing"))
           for p in (HOST_PY, PY38)]


def agent_version():
    with open(os.path.join(REPO, "agent", "__init__.py")) as f:
        return re.search(r'__version__ = "([^"]+)"', f.read()).group(1)


def build_python():
    vpy = os.path.join(REPO, "build", "venv", "bin", "python")
    return vpy if os.access(vpy, os.X_OK) else sys.executable


def snapshot(dst):
    """A clean copy of what a checkout holds for the build: agent/ and build/'s recipe files."""
    shutil.copytree(os.path.join(REPO, "agent"), os.path.join(dst, "agent"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    os.makedirs(os.path.join(dst, "build"))
    for name in BUILD_FILES:
        shutil.copy(os.path.join(REPO, "build", name), os.path.join(dst, "build", name))


def perturb(top):
    """What differs between checkouts: modes, mtimes, stray bytecode."""
    for dirpath, dirnames, filenames in os.walk(os.path.join(top, "agent")):
        for i, name in enumerate(sorted(filenames)):
            path = os.path.join(dirpath, name)
            os.chmod(path, 0o600 if i % 2 else 0o775)
            os.utime(path, (1000000000 + i, 1000000000 + i))
    cache = os.path.join(top, "agent", "__pycache__")
    os.makedirs(cache, exist_ok=True)
    with open(os.path.join(cache, "cli.cpython-311.pyc"), "wb") as f:
        f.write(b"stray bytecode")


def run_build(top, env_extra=None, umask="022"):
    env = dict(os.environ)
    env.pop("SOURCE_DATE_EPOCH", None)
    env.update(env_extra or {})
    out = os.path.join(top, "build", "sshkeep.pyz")
    proc = subprocess.run(["sh", "-c", 'umask %s && exec sh build/build.sh "$0" "$1"' % umask,
                           build_python(), out],
                          cwd=top, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout.decode(errors="replace")
    return out


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    a = str(tmp_path_factory.mktemp("checkout_a"))
    b = str(tmp_path_factory.mktemp("checkout_b"))
    snapshot(a)
    shutil.rmtree(b)
    shutil.copytree(a, b)
    perturb(b)
    pyz_a = run_build(a)
    pyz_b = run_build(b, {"TZ": "Pacific/Kiritimati", "LC_ALL": "C"}, umask="077")
    return {"a": pyz_a, "b": pyz_b, "top": a}


@pytest.fixture(scope="module")
def pyz(builds):
    return builds["a"]


def run(cmd, env=None, cwd=None, timeout=60):
    return subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=timeout)


def clean_env(**extra):
    env = dict(os.environ)
    for k in ("SHIV_ROOT", "PYTHONDONTWRITEBYTECODE", "PYTHONPATH", "PYTHONHOME"):
        env.pop(k, None)
    env.update(extra)
    return env


def test_reproducible(builds):
    with open(builds["a"], "rb") as fa, open(builds["b"], "rb") as fb:
        a, b = fa.read(), fb.read()
    assert a == b, "two builds from clean copies differ"


def test_over_budget_fails_the_build(builds, tmp_path):
    """Past the budget the build fails and leaves no pyz (a warning was ignored for months)."""
    top = str(tmp_path / "tight")
    shutil.copytree(builds["top"], top)
    sh = os.path.join(top, "build", "build.sh")
    with open(sh) as f:
        text = f.read()
    with open(sh, "w") as f:
        f.write(re.sub(r"^LIMIT=\d+", "LIMIT=1000", text, flags=re.M))
    out = os.path.join(top, "build", "sshkeep.pyz")
    proc = subprocess.run(["sh", sh, build_python(), out], cwd=top, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=TIMEOUT)
    assert proc.returncode == 1, proc.stderr
    assert b"over the 1000-byte budget" in proc.stderr
    assert not os.path.exists(out)


def test_size_budget(pyz):
    size = os.path.getsize(pyz)
    assert size <= LIMIT, "pyz is %d bytes, budget %d" % (size, LIMIT)


def test_shiv_layout(pyz, builds):
    with open(pyz, "rb") as f:
        assert f.readline() == b"#!/usr/bin/env python3\n"
    assert os.stat(pyz).st_mode & 0o111 == 0o111
    with zipfile.ZipFile(pyz) as z:
        names = z.namelist()
        for required in ("__main__.py", "environment.json",
                         "site-packages/agent/__init__.py", "site-packages/agent/cli.py"):
            assert required in names
        assert not [n for n in names if n.startswith("_bootstrap/")]  # shiv's extracting bootstrap
        assert not [n for n in names if n.endswith(".pyc") or "__pycache__" in n]
        assert names == sorted(names)
        assert {i.external_attr >> 16 for i in z.infolist()} == {0o100644}
        env = json.loads(z.read("environment.json").decode())
        assert env["entry_point"] == "agent.cli:main"
        assert env["shiv_version"] == "1.0.8"
        with open(os.path.join(builds["top"], "build", "entry.py"), encoding="utf-8") as f:
            assert z.read("__main__.py").decode("utf-8") == slim.slim(f.read())
        agent_files = sorted(n[len("site-packages/"):] for n in names if n.startswith("site-packages/"))
    top = builds["top"]
    expected = sorted(os.path.relpath(os.path.join(d, n), top)
                      for d, _, fs in os.walk(os.path.join(top, "agent")) for n in fs if n.endswith(".py"))
    assert agent_files == expected


@pytest.mark.parametrize("python", PYTHONS)
def test_version_under_guard(pyz, python, tmp_path):
    env = lightguard.guard_env(clean_env())
    lightguard.check_active(python, env)
    proc = run([python, pyz, "--version"], env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().strip() == "sshkeep " + agent_version()


@pytest.mark.parametrize("python", PYTHONS)
def test_help_under_guard(pyz, python, tmp_path):
    proc = run([python, pyz, "--help"], env=lightguard.guard_env(clean_env()), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().startswith("usage: sshkeep")


def test_runs_through_shebang(pyz, tmp_path):
    env = lightguard.guard_env(clean_env(PATH="/usr/bin:/bin"))
    proc = run([pyz, "--version"], env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().startswith("sshkeep ")


def tree(top):
    """Every path under top with its size and mtime: any write shows up."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, top)] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns)
    return out


READONLY = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && cd "$0" && exec "$@"'


def readonly_cmd(top, cmd):
    """cmd with `top` read-only (a private mount namespace: even root cannot write there)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare for a read-only bind mount")
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", READONLY, top] + cmd


@pytest.mark.parametrize("python", PYTHONS)
def test_readonly_home_no_writes(pyz, python, tmp_path):
    top = str(tmp_path / "box")
    home = os.path.join(top, "home")
    os.makedirs(os.path.join(top, "tmp"))
    os.makedirs(home)
    local = os.path.join(top, "sshkeep.pyz")
    shutil.copy(pyz, local)
    os.chmod(home, 0o555)
    before = tree(top)
    # the mount really is read-only
    probe = run(readonly_cmd(top, ["sh", "-c", "echo x > home/probe"]))
    assert probe.returncode != 0
    env = lightguard.guard_env(clean_env(HOME=home, TMPDIR=os.path.join(top, "tmp")))
    for args in (["--version"], ["--help"]):
        proc = run(readonly_cmd(top, [python, local] + args), env=env)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == b""
    assert not os.path.exists(os.path.join(home, ".shiv"))
    assert tree(top) == before


def test_run_with_readonly_home_and_etc_writes_only_its_state(pyz, tmp_path):
    # A tunnel up under a read-only $HOME and a read-only config dir: the agent writes its
    # state, pidfile and runtime dir (tmpfs on a box) and nothing else.
    top = str(tmp_path / "box")
    home, etc, var = os.path.join(top, "home"), os.path.join(top, "etc"), str(tmp_path / "var")
    for d in (home, etc, var):
        os.makedirs(d)
    local = os.path.join(etc, "sshkeep.pyz")
    shutil.copy(pyz, local)
    kh = os.path.join(etc, "known_hosts")
    with open(kh, "w") as fh:
        fh.write("127.0.0.1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake\n")
    before = tree(top)
    state = os.path.join(var, "state.json")
    fake = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "support", "fakes", "fakessh")
    cmd = readonly_cmd(top, [HOST_PY, local, "run", "-R", "127.0.0.1:20022:127.0.0.1:22", "--ssh", fake,
                             "--known-hosts", kh, "--no-checks", "--state", state,
                             "--pidfile", os.path.join(var, "pid"), "-p", "9", "tunnel@127.0.0.1"])
    env = lightguard.guard_env(clean_env(HOME=home, FAKESSH_MODE="ready"))
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        from polling import wait_until
        wait_until(lambda: os.path.exists(state) and '"up"' in open(state).read(), 15, 0.05,
                   what="tunnel up (read-only home and etc)")
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert tree(top) == before
    assert os.path.exists(state + ".d")     # the runtime dir went where the state goes


def test_shiv_root_outside_tmp_is_ignored(pyz, tmp_path):
    base = tempfile.mkdtemp(prefix="sshkeep-test-", dir="/var/tmp")
    try:
        assert not os.path.realpath(base).startswith("/tmp/")
        root = os.path.join(base, "shiv")
        proc = run([HOST_PY, pyz, "--version"], env=clean_env(SHIV_ROOT=root, HOME=str(tmp_path)))
        assert proc.returncode == 0, proc.stderr
        assert not os.path.exists(root)
        assert os.listdir(str(tmp_path)) == []
    finally:
        shutil.rmtree(base)


def test_shiv_root_on_tmp_is_ignored_too(pyz, tmp_path):
    """The archive carries no shiv bootstrap: nothing is ever extracted, wherever SHIV_ROOT points."""
    root = str(tmp_path / "shiv")
    proc = run([HOST_PY, pyz, "--version"], env=clean_env(SHIV_ROOT=root))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().startswith("sshkeep ")
    assert not os.path.exists(root)


@pytest.mark.parametrize("python", PYTHONS)
def test_shiv_root_on_tmp_under_guard_falls_back(pyz, python, tmp_path):
    root = str(tmp_path / "shiv")
    proc = run([python, pyz, "--version"], env=lightguard.guard_env(clean_env(SHIV_ROOT=root)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().startswith("sshkeep ")
    assert not os.path.exists(root)


def test_plain_shiv_bootstrap_dies_under_guard(builds, tmp_path):
    """Why the entry exists: shiv's own __main__ cannot start on python3-light."""
    out = str(tmp_path / "plain-shiv.pyz")
    site = os.path.join(builds["top"], "agent")
    staged = str(tmp_path / "sp")
    shutil.copytree(site, os.path.join(staged, "agent"))
    proc = subprocess.run([build_python(), "-m", "shiv", "--reproducible", "--site-packages", staged,
                           "-e", "agent.cli:main", "-o", out],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout
    home = str(tmp_path / "home")
    os.makedirs(home)
    proc = run([HOST_PY, out, "--version"], env=lightguard.guard_env(clean_env(HOME=home)))
    assert proc.returncode != 0
    assert lightguard.MESSAGE.encode() in proc.stderr


def test_archive_keeps_line_numbers(pyz, builds):
    """Comments, docstrings, parameter annotations and most indentation are cut from the archive,
    but a traceback's file:line still matches: every shipped line starts as the repository's does."""
    def head(line):  # the line's first word or symbol, indentation aside
        return re.split(r"[\s:(=,]", line.strip(), 1)[0]

    with zipfile.ZipFile(pyz) as z:
        for name in z.namelist():
            if not (name.startswith("site-packages/agent/") and name.endswith(".py")):
                continue
            if name == "site-packages/agent/" + stage.PAYLOAD:  # built by stage.py: constants, no line to trace
                continue
            shipped = z.read(name).decode("utf-8").split("\n")
            with open(os.path.join(builds["top"], name[len("site-packages/"):]), encoding="utf-8") as f:
                repo = f.read().split("\n")
            assert len(shipped) == len(repo), name
            for n, (a, b) in enumerate(zip(shipped, repo), 1):
                if a.strip() not in ("", '""', '"""') and not a.strip().endswith('""'):
                    assert head(a) == head(b), "%s:%d: %r vs %r" % (name, n, a, b)


SLIM_SAMPLE = """# comment
\"\"\"module doc
two\"\"\"
import os  # why
class A:
    \"\"\"only a docstring\"\"\"
def f(x):
    \"\"\"é\"\"\"; return "# not a comment" + f"{x}"
y = [1,  # one
     2]
"""


def test_slim_keeps_program_and_lines():
    out = slim.slim(SLIM_SAMPLE)
    assert "comment\n" not in out and "why" not in out and "doc" not in out
    assert '"# not a comment"' in out
    assert out.count("\n") == SLIM_SAMPLE.count("\n")
    ns = {}
    exec(compile(out, "x", "exec"), ns)
    assert ns["f"](1) == "# not a comment1" and ns["y"] == [1, 2] and ns["A"].__doc__ == ""
    assert slim.slim(SLIM_SAMPLE, docstrings=False).count("doc") == 2


SLIM_INDENT_SAMPLE = """class R:
    name: str = "kept"
    def f(self, x: int = 2, *a: str, k: "List[int]" = (), **kw: dict) -> str:
        if x:
            s = \"\"\"
    four spaces inside a string stay
\"\"\"
            return s + str(x) + str(k)
        return {"a": [1,
                      2]}
"""


def test_slim_one_space_a_level_and_no_parameter_annotations():
    out = slim.slim(SLIM_INDENT_SAMPLE)
    assert out.count("\n") == SLIM_INDENT_SAMPLE.count("\n")
    assert "  if x:" in out and "   if x:" not in out          # two levels: two spaces
    assert "\n    four spaces inside a string stay\n" in out  # string content untouched
    assert "def f(self, x = 2, *a, k = (), **kw):" in out      # parameters and return unannotated
    assert " name: str = " in out                              # a record's field annotation stays
    ns = {}
    exec(compile(out, "x", "exec"), ns)
    r = ns["R"]()
    assert r.f(1).startswith("\n    four") and r.f(0) == {"a": [1, 2]}
    assert ns["R"].__annotations__ == {"name": "str"} or ns["R"].__annotations__ == {"name": str}


def test_slim_drops_a_docstring_the_body_goes_on_after():
    assert slim.slim('def g():\n    """doc\n    two"""\n    return 1\n') == "def g():\n\n\n return 1\n"
    assert slim.slim('def h():\n    """only a docstring"""\n') == 'def h():\n ""\n'


def test_slim_verify_rejects_a_changed_program():
    with pytest.raises(ValueError):
        slim.verify("x = 1\n", "x = 2\n")
    with pytest.raises(ValueError):
        slim.verify("x = 1\n\n", "x = 1\n")


FAKE_APT = """#!/bin/sh
echo "apt-get $*" >> "$APT_LOG"
"""


def deps_run(tmp_path, extra_package=None):
    script = os.path.join(REPO, "build", "deps.sh")
    if extra_package:
        with open(script) as f:
            text = f.read().replace('PACKAGES="\n', 'PACKAGES="\n%s\n' % extra_package, 1)
        script = str(tmp_path / "deps.sh")
        with open(script, "w") as f:
            f.write(text)
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    (fakebin / "apt-get").write_text(FAKE_APT)
    (fakebin / "apt-get").chmod(0o755)
    log = tmp_path / "apt.log"
    env = clean_env(PATH="%s:%s" % (fakebin, os.environ["PATH"]), APT_LOG=str(log))
    proc = subprocess.run(["sh", script], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=60)
    return proc, (log.read_text().splitlines() if log.exists() else [])


def test_deps_noop_when_all_installed(tmp_path):
    proc, calls = deps_run(tmp_path)
    if calls and os.geteuid() == 0:
        pytest.skip("some package is missing on this machine: run make deps")
    assert proc.returncode == 0, proc.stdout
    assert calls == []


@pytest.mark.skipif(os.geteuid() != 0, reason="installs need root")
def test_deps_installs_only_missing(tmp_path):
    proc, calls = deps_run(tmp_path, "sshkeep-no-such-package-%d" % os.getpid())
    assert proc.returncode == 0, proc.stdout
    assert len(calls) == 2 and " update" in calls[0]
    assert calls[1].endswith(" install -y -q --no-install-recommends sshkeep-no-such-package-%d" % os.getpid())


def test_venv_is_idempotent(tmp_path):
    """venv.sh creates the venv with the pins, and a second run reuses it."""
    venv = str(tmp_path / "venv")
    script = os.path.join(REPO, "build", "venv.sh")
    for _ in range(2):
        proc = subprocess.run(["sh", script, HOST_PY, venv], env=clean_env(), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
        assert proc.returncode == 0, proc.stdout.decode(errors="replace")
        if _ == 0:
            first = os.stat(os.path.join(venv, "pyvenv.cfg")).st_ino
            assert b"creating" in proc.stdout
    assert os.stat(os.path.join(venv, "pyvenv.cfg")).st_ino == first
    assert b"creating" not in proc.stdout
    freeze = subprocess.run([os.path.join(venv, "bin", "python"), "-m", "pip", "freeze"],
                            stdout=subprocess.PIPE, timeout=60).stdout.decode().split()
    with open(os.path.join(REPO, "build", "requirements.txt")) as f:
        pins = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    assert set(pins) <= set(freeze)
