"""The pidfile: a file holding our pid, locked with flock() for the life of the agent.

Why a lock and not just a pid: after a crash or a reboot the pid written in the file
may belong to any other process (pids are reused quickly on a router). A held flock
is released by the kernel when its holder dies, so "locked" means "an agent is alive",
whatever pid the file says. flock() (BSD locks) belongs to the open file description:
it survives fork() (the --daemon double fork keeps it) and is not shared with a
second open() of the same file, even in the same process - which is what lets
`is_locked()` probe it. POSIX fcntl/lockf locks would be per process and silently
dropped by closing ANY fd of the file; they are not used here.

The fd is O_CLOEXEC: an exec'd ssh child never holds our lock (if it did, a SIGKILLed
agent's orphaned ssh would keep the pidfile locked and block the next agent).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time

from agent.run import procs
from agent.errors import EX_CANTCREAT, EX_NOPERM, AlreadyRunning, SshkeepError

if False:  # annotations only: importing typing would cost the agent 0.5 MB of memory
    from typing import Optional

# A prober (`is_locked`, `sshkeep status` / `check`) holds a shared lock for a few
# microseconds; an agent starting at that moment retries this long before it concludes
# that another agent holds the file.
_CONTENTION_WAIT = 0.5
# A second agent starting right after the first locked the file may read it before the
# first wrote its pid; wait this long for the pid to appear.
_PID_WAIT = 0.5
_POLL = 0.02
_MAX_PID_BYTES = 32


class PidFile:
    """`with PidFile(path):` or `.acquire()` / `.release()`.

    acquire() raises AlreadyRunning(pid, path) (exit 75) when a live agent holds the
    file and SshkeepError (exit 73) when it cannot be created or is a symlink.
    """

    def __init__(self, path: str):
        self.path = path
        self.fd = None  # type: Optional[int]
        self.write_error = ""  # why the pid could not be written (the lock is held all the same)

    def acquire(self) -> "PidFile":
        if self.fd is not None:
            return self
        # Bounded: each round either locks the inode that is still at `path` or finds
        # that a releasing agent unlinked it in between (then it opens the new one).
        for _ in range(20):
            fd = open_own(self.path, os.O_RDWR | os.O_CREAT)
            try:
                if not lock(fd, fcntl.LOCK_EX, _CONTENTION_WAIT):
                    pid = _holder_pid(self.path, fd)
                    raise AlreadyRunning(pid or 0, self.path)
                if not _same_file(fd, self.path):
                    os.close(fd)
                    continue
                self.fd = fd
                try:
                    self.write_pid()
                except BaseException:
                    self.fd = None
                    raise
                return self
            except BaseException:
                if self.fd is None:
                    os.close(fd)
                raise
        raise SshkeepError("pidfile %s keeps being replaced while locking it" % self.path, EX_CANTCREAT)

    def write_pid(self, pid: Optional[int] = None) -> None:
        """(Re)write our pid: call again in the daemon if acquired before daemonize()."""
        if self.fd is None:
            raise SshkeepError("pidfile %s is not held" % self.path)
        data = b"%d\n" % (pid if pid is not None else os.getpid())
        try:
            os.ftruncate(self.fd, 0)
            if os.pwrite(self.fd, data, 0) != len(data):
                raise OSError(errno.ENOSPC, "short write")
            self.write_error = ""
        except OSError as exc:
            # A full tmpfs (ENOSPC): the lock alone is what counts (`check` and `stop` find the
            # holder in /proc/locks). Refusing to start here made cron restart us every 2 minutes.
            self.write_error = "cannot write pid to %s: %s" % (self.path, exc.strerror or exc)

    def release(self) -> None:
        """Unlink (while still locked, so nobody locks a file about to vanish) and unlock."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            if _same_file(fd, self.path):
                os.unlink(self.path)
        except OSError:
            pass  # read-only /var/run or already gone: the lock release below is what counts
        finally:
            os.close(fd)

    def __enter__(self) -> "PidFile":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def open_own(path, flags):
    """An fd on the pidfile `path` (or the check lock beside it): a regular file of our own uid,
    never through a symlink, made 0644; SshkeepError with the fix otherwise."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SshkeepError("pidfile %s is a symbolic link: refusing to follow it (remove it, or "
                               "use --pidfile with a path in a root-owned directory)" % path, EX_CANTCREAT)
        raise SshkeepError("cannot open pidfile %s: %s" % (path, exc.strerror), EX_CANTCREAT)
    try:
        st = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        raise SshkeepError("cannot stat pidfile %s: %s" % (path, exc.strerror), EX_CANTCREAT)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise SshkeepError("pidfile %s is not a regular file: refusing it" % path, EX_CANTCREAT)
    if st.st_uid != os.geteuid():
        os.close(fd)
        # e.g. planted in a world-writable directory by another user, who could hold its lock
        raise SshkeepError("pidfile %s belongs to uid %d, not to us (uid %d): refusing it"
                           % (path, st.st_uid, os.geteuid()), EX_NOPERM)
    if st.st_mode & 0o7777 != 0o644:
        try:
            os.fchmod(fd, 0o644)  # readable by `status` as any user, whatever the umask
        except OSError:
            pass
    return fd


def lock(fd, how, wait):
    """flock(fd, how|LOCK_NB), retried for `wait` seconds (short contention from probes)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise SshkeepError("cannot lock pidfile: %s" % exc.strerror, EX_CANTCREAT)
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)


def _same_file(fd, path):
    try:
        a, b = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _parse_pid(data):
    try:
        pid = int(data.strip() or b"0", 10)
    except ValueError:
        return None
    return pid if pid > 0 else None


def _read_fd_pid(fd):
    try:
        return _parse_pid(os.pread(fd, _MAX_PID_BYTES, 0))
    except OSError:
        return None


def _holder_pid(path, fd):
    """The pid written by the holder of the lock on `fd`'s file (waits briefly for it)."""
    deadline = time.monotonic() + _PID_WAIT
    while True:
        pid = _read_fd_pid(fd)
        if pid is not None or time.monotonic() >= deadline:
            return pid if pid is not None else lock_holder(path)
        time.sleep(_POLL)


def read_pid(path: str) -> Optional[int]:
    """The pid written in `path`, or None (missing, empty, garbage, symlink). Says nothing about liveness."""
    fd = _open_regular(path)
    if fd is None:
        return None
    try:
        return _read_fd_pid(fd)
    finally:
        os.close(fd)


def _open_regular(path):
    """A read-only fd on `path` if it is a regular file (not through a symlink, never blocking
    on a fifo), else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return None
    if stat.S_ISREG(os.fstat(fd).st_mode):
        return fd
    os.close(fd)
    return None


def is_locked(path: str) -> bool:
    """True if a live process holds the lock on `path` (an agent is running on it).

    Probes with a shared non-blocking flock on a separate open file description and
    releases it at once. Works from the holder's own process too (flock is per open
    file description). A missing file, a symlink or a non-regular file: False.
    """
    fd = _open_regular(path)
    if fd is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError as exc:
        return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
    finally:
        os.close(fd)


def lock_holder(path: str) -> Optional[int]:
    """The pid the kernel lists in /proc/locks for an exclusive flock on `path`, or None.

    A cross-check for a pidfile whose content is missing. The kernel records the pid
    that took the lock: right for an agent that locks after daemonize(), the (dead)
    original parent's pid for one that locked before forking.
    """
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    lines = (procs.read("/proc/locks", 1 << 20) or b"").splitlines()
    want = "%02x:%02x:%d" % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"; blocked waiters have "->".
        parts = line.decode("ascii", "replace").split()
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[3] == "WRITE" and parts[5] == want:
            try:
                return int(parts[4])
            except ValueError:
                return None
    return None
