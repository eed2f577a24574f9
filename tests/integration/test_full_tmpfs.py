"""A full tmpfs must not keep the agent from running (issue 11 part 3).

Before: ENOSPC writing the pid refused start-up although the lock is what counts, and cron
`check` then tried to start an agent every 2 minutes. Now: the agent starts with the lock,
says the pid and the state cannot be written, and `check` sees it as running.
Needs root (mount -t tmpfs); the mount is made and removed by the test.
"""

import errno
import os
import subprocess
import sys
import tempfile

import pytest

from agent.run import pidfile
from agentrun import PYZ, AgentProcess, require_pyz
import lightguard
from polling import wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
FAKE = os.path.join(os.path.dirname(HERE), "support", "fakes", "fakessh")


@pytest.fixture
def full_tmpfs():
    if os.geteuid() != 0:
        pytest.fail("needs root to mount a tmpfs", pytrace=False)
    mnt = tempfile.mkdtemp(prefix="sshkeep-full-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", mnt], check=True, timeout=10)
    try:
        fd = os.open(os.path.join(mnt, "filler"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for _ in range(1000):  # bounded: 64 KB fill in 4 KB steps
                try:
                    os.write(fd, b"x" * 4096)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
        finally:
            os.close(fd)
        yield mnt
    finally:
        subprocess.run(["umount", "-l", mnt], timeout=10)
        os.rmdir(mnt)


def test_agent_starts_with_the_lock_on_a_full_tmpfs(full_tmpfs, tmp_path):
    require_pyz()
    pid_path = os.path.join(full_tmpfs, "sshkeep.pid")
    state_path = os.path.join(full_tmpfs, "sshkeep.json")
    common = ["-R", "127.0.0.1:20999:127.0.0.1:22", "--ssh", FAKE, "--client", "openssh", "--no-checks",
              "--interval", "2", "--state", state_path, "--pidfile", pid_path, "box@127.0.0.1"]
    env = lightguard.guard_env(dict(os.environ, FAKESSH_MODE="ready", HOME=str(tmp_path)))
    a = AgentProcess([sys.executable, PYZ, "run"] + common, str(tmp_path), state=state_path, pidfile=pid_path,
                     env=env).start()
    proc, log_text = a.proc, a.log
    try:
        wait_until(lambda: proc.poll() is not None or "up via" in log_text(), 20, 0.1, "tunnel up")
        assert proc.poll() is None, log_text()
        assert pidfile.is_locked(pid_path)
        assert pidfile.lock_holder(pid_path) == proc.pid
        text = log_text()
        assert "cannot write pid to %s" % pid_path in text and "lock alone" in text
        assert text.count("cannot write state file") == 1          # said once, not every interval
        # the pidfile's mtime is the heartbeat `check` reads when there is no state
        m0 = os.stat(pid_path).st_mtime_ns
        wait_until(lambda: os.stat(pid_path).st_mtime_ns > m0, 10, 0.1, "pidfile heartbeat")
        # cron `check` finds the agent by its lock: nothing started, exit 0
        chk = subprocess.run([sys.executable, PYZ, "check"] + common, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=30)
        assert chk.returncode == 0, chk.stderr
        assert b"started" not in chk.stdout + chk.stderr
        assert proc.poll() is None
        # and `stop` finds it the same way (no pid in the file)
        stop = subprocess.run([sys.executable, PYZ, "stop", "--pidfile", pid_path, "--state", state_path],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                              timeout=30)
        assert stop.returncode == 0 and b"stopped pid %d" % proc.pid in stop.stdout, stop.stdout + stop.stderr
        assert proc.wait(10) is not None
    finally:
        a.stop(10)
