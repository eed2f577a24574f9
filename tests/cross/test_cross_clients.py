"""The roots' own dbclient, busybox and python run: through the wrapper, and started by the root's python."""

import subprocess

# what each root's Debian package must be; OpenWrt 24.10 ships dropbear 2024.86 (BatchMode & co.)
DROPBEAR = {"armhf": "2022.83", "arm64": "2022.83", "mipsel": "2022.83", "trixie": "2025.89"}
PYTHON = {"armhf": "3.11.", "arm64": "3.11.", "mipsel": "3.11.", "trixie": "3.13."}
NEW_OPTIONS = ("BatchMode", "StrictHostKeyChecking", "ServerAliveInterval")


def _out(argv, env=None, timeout=60):
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       env=env, timeout=timeout)
    return p.returncode, p.stdout.decode(errors="replace")


def test_dbclient_version_through_wrapper(root):
    rc, out = _out([root.dbclient_wrapper, "-V"])
    assert "Dropbear v%s" % DROPBEAR[root.name] in out, (rc, out)


def test_dbclient_option_help(root):
    rc, out = _out([root.dbclient_wrapper, "-o", "help"])
    assert "ExitOnForwardFailure" in out, (rc, out)
    if root.name == "trixie":
        for opt in NEW_OPTIONS:
            assert opt in out, (opt, out)
    else:
        assert "BatchMode" not in out, out  # 2022.83: the generation without -o BatchMode


def test_python_version_and_machine(root, record):
    rc, out = _out(root.python + ["-c", "import sys, platform; print(sys.version.split()[0], platform.machine())"],
                   env=root.run_env())
    assert rc == 0, out
    version, machine = out.split()
    assert version.startswith(PYTHON[root.name]), out
    want = {"armhf": "armv7l", "arm64": "aarch64", "mipsel": "mips", "trixie": "x86_64"}[root.name]
    assert machine == want, out
    record("python_machine", machine)


def test_root_python_starts_root_dbclient(root):
    """The agent's situation on a box: the (foreign) python execs the (foreign) dbclient by path,
    here without any wrapper: binfmt_misc + QEMU_LD_PREFIX (inherited) for the QEMU roots."""
    if root.emulated:
        target = root.dbclient
    else:
        target = root.dbclient_wrapper  # the native root's binaries need its loader
    code = ("import subprocess, sys; p = subprocess.run([sys.argv[1], '-V'], stdout=subprocess.PIPE, "
            "stderr=subprocess.STDOUT); print(p.stdout.decode())")
    rc, out = _out(root.python + ["-c", code, target], env=root.run_env())
    assert rc == 0 and "Dropbear v%s" % DROPBEAR[root.name] in out, out


def test_busybox_runs(root):
    rc, out = _out([root.busybox, "sh", "-c", "echo ok $((6*7))"], env=root.run_env())
    assert (rc, out.strip()) == (0, "ok 42"), out
