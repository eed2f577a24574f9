"""Non-root state: a private 0700 directory, and no trust in files another user planted (issue 11 part 3).

Another local user could plant a state file whose `children` the agent killed at start (a
process of theirs, or anybody's), or a symlink it followed. Run as root: planted files are
chown'ed to another uid, as an attacker's would be.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from agent import lifecycle

from agent.run import procs, state
from agent.errors import StateError

OTHER = 65534  # nobody


def test_private_dir_is_made_0700_and_fixed_when_ours(tmp_path):
    d = str(tmp_path / "sshkeep-x")
    assert state.private_dir(d) == d
    assert os.stat(d).st_mode & 0o777 == 0o700
    os.chmod(d, 0o777)
    state.private_dir(d)
    assert os.stat(d).st_mode & 0o777 == 0o700


def test_private_dir_refuses_a_symlink_and_a_foreign_directory(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "sshkeep-link"
    os.symlink(str(target), str(link))
    with pytest.raises(StateError, match="not a directory"):
        state.private_dir(str(link))
    if os.geteuid() != 0:
        pytest.fail("run as root: the planted directory must belong to another uid", pytrace=False)
    planted = tmp_path / "sshkeep-planted"
    planted.mkdir(mode=0o700)
    os.chown(str(planted), OTHER, OTHER)
    with pytest.raises(StateError, match="belongs to uid %d" % OTHER):
        state.private_dir(str(planted))


@pytest.fixture
def shared_dir():
    """A world-writable directory (like /tmp) that uid OTHER can reach."""
    d = tempfile.mkdtemp(prefix="sshkeep-shared-", dir="/tmp")
    os.chmod(d, 0o1777)
    yield d
    shutil.rmtree(d)


def test_default_state_of_a_user_lives_in_a_private_directory(shared_dir, other_user_copy):
    if os.geteuid() != 0:
        pytest.fail("run as root (the test drops to uid %d in a child)" % OTHER, pytrace=False)
    # the agent comes from a copy uid OTHER can read: the checkout may be a 0700 directory
    env = dict(os.environ, XDG_RUNTIME_DIR=shared_dir, PYTHONPATH=other_user_copy.pythonpath)
    code = ("import os; os.setgid(%d); os.setgroups([]); os.setuid(%d); from agent import cli; from agent.run import state; "
            "assert os.path.dirname(os.path.dirname(os.path.dirname(state.__file__))) == %r, state.__file__; "
            "print(state.default_state_path()); print(cli._default_pidfile())"
            % (OTHER, OTHER, other_user_copy.pythonpath))
    out = subprocess.run([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         timeout=30, cwd=other_user_copy.pythonpath)
    assert out.returncode == 0, out.stderr
    want_dir = os.path.join(shared_dir, "sshkeep-%d" % OTHER)
    assert out.stdout.decode().split() == [want_dir + "/sshkeep.json", want_dir + "/sshkeep.pid"]
    st = os.lstat(want_dir)
    assert st.st_uid == OTHER and st.st_mode & 0o777 == 0o700


def test_a_user_never_takes_a_writable_run_dir(shared_dir, other_user_copy):
    # a /var/run the user may write (or one made so) is still shared: another user could plant
    # the state there. The private directory, checked, as when /var/run is closed to the user.
    if os.geteuid() != 0:
        pytest.fail("run as root (the test drops to uid %d in a child)" % OTHER, pytrace=False)
    run_dir = tempfile.mkdtemp(prefix="sshkeep-run-", dir="/tmp")
    os.chmod(run_dir, 0o1777)
    try:
        # the agent comes from a copy uid OTHER can read: the checkout may be a 0700 directory
        env = dict(os.environ, XDG_RUNTIME_DIR=shared_dir, PYTHONPATH=other_user_copy.pythonpath)
        code = ("import os; os.setgid(%d); os.setgroups([]); os.setuid(%d); from agent.core import defaults; "
                "defaults.RUN_DIR = %r; assert os.access(defaults.RUN_DIR, os.W_OK); from agent import cli; "
                "from agent.run import state; print(state.default_state_path()); print(cli._default_pidfile())"
                % (OTHER, OTHER, run_dir))
        out = subprocess.run([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, timeout=30, cwd=other_user_copy.pythonpath)
        assert out.returncode == 0, out.stderr
        want_dir = os.path.join(shared_dir, "sshkeep-%d" % OTHER)
        assert out.stdout.decode().split() == [want_dir + "/sshkeep.json", want_dir + "/sshkeep.pid"]
        assert os.listdir(run_dir) == []
    finally:
        shutil.rmtree(run_dir)


def test_root_keeps_var_run():
    if os.geteuid() != 0:
        pytest.fail("run as root", pytrace=False)
    from agent import cli
    assert (state.default_state_path(), cli._default_pidfile()) == ("/var/run/sshkeep.json", "/var/run/sshkeep.pid")


def test_planted_state_of_another_user_is_not_acted_on(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("run as root: the planted state must belong to another uid", pytrace=False)
    victim = subprocess.Popen(["sleep", "600"])
    try:
        rec = {"pid": victim.pid, "cmdline": procs.cmdline(victim.pid), "starttime": procs.starttime(victim.pid)}
        path = str(tmp_path / "state.json")
        with open(path, "w") as fh:
            json.dump({"pid": 999999999, "children": [rec]}, fh)
        os.chown(path, OTHER, OTHER)
        assert state.previous(path) == {}
        assert lifecycle.reap_previous_children(path) == []
        assert victim.poll() is None                     # before: TERMed as "our orphan"
        # a symlink to a state is not followed either
        os.chown(path, 0, 0)
        link = str(tmp_path / "link.json")
        os.symlink(path, link)
        assert state.previous(link) == {}
        # our own state still counts
        assert state.previous(path)["children"] == [rec]
    finally:
        victim.kill()
        victim.wait(5)


def test_state_write_does_not_write_through_a_planted_temp_file(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    path = str(tmp_path / "state.json")
    os.link(str(victim), "%s.%d.tmp" % (path, os.getpid()))    # a hard link at our temp name
    state.write(path, {"pid": 1})
    assert victim.read_text() == "precious\n"
    assert json.load(open(path)) == {"pid": 1}



def test_write_file_modes_and_create_once(tmp_path):
    # the one atomic writer: the state and the hub's .prom (mode exact), dbclient's known_hosts
    # copy (0600 under the umask), the box ID (made once: of two writers racing, the first wins)
    path = str(tmp_path / "f")
    old = os.umask(0o077)
    try:
        state.write_file(path, b"one\n", 0o644)
        assert os.stat(path).st_mode & 0o777 == 0o644
        os.unlink(path)
        state.write_file(path, b"one\n", 0o644, exact_mode=False, sync=True, replace=False)
        assert os.stat(path).st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
    with pytest.raises(FileExistsError):
        state.write_file(path, b"two\n", replace=False)
    assert open(path).read() == "one\n" and os.listdir(str(tmp_path)) == ["f"]

@pytest.mark.parametrize("plant", ["symlink", "foreign"])
def test_agent_refuses_a_planted_runtime_directory(tmp_path, plant):
    # STATE.d holds dbclient's private HOMEs (known_hosts written there before every connect):
    # a symlink or another user's directory at that name must stop the start, not be written through.
    from agent.run import clients, supervisor
    from agent.run.log import Log
    from agent.core.model import Forward, Settings, Tunnel
    victim = tmp_path / "victim"
    victim.mkdir()
    st = str(tmp_path / "s.json")
    if plant == "symlink":
        os.symlink(str(victim), st + ".d")
    else:
        if os.geteuid() != 0:
            pytest.fail("run as root: the planted directory must belong to another uid", pytrace=False)
        os.mkdir(st + ".d", 0o777)
        os.chown(st + ".d", OTHER, OTHER)
    t = Tunnel(name="hub", host="10.0.0.2", forwards=(Forward("R", "", 2022, "127.0.0.1", 22),),
               known_hosts=str(tmp_path / "kh"), accept_new=True)
    info = clients.ClientInfo("dropbear", "/usr/bin/dbclient", "2022.83")
    sup = supervisor.Supervisor(Settings(tunnels=(t,), state=st, pidfile=str(tmp_path / "pid")), Log(),
                                detect=lambda path, client: info)
    with pytest.raises(StateError, match="refusing it"):
        sup.prepare()
    assert os.listdir(str(victim)) == []
