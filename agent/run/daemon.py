"""--daemon: detach from the terminal for plain init scripts and cron, and tell the caller if it worked.

A plain double fork returns to the shell before the agent has read its config or
taken the pidfile, so `/etc/init.d/sshkeep start` would print success for an agent
that dies a moment later. Here the original process waits (bounded) on a pipe until
the daemon reports `ok` (after it took the pidfile) or `fail CODE MESSAGE`, then
returns that to the CLI through `Detached`, whose code is the exit status.
"""

import os
import select
import sys
import time

from agent.errors import EX_OK, EX_OSERR, EX_SOFTWARE, SshkeepError


class Detached(SshkeepError):
    """Raised in the ORIGINAL process only: the daemon's verdict.

    The CLI prints `str(exc)` (on stderr when code != 0) and exits with `exc.code`;
    nothing else may run in the original process after daemonize().
    """

    def __init__(self, message, code=EX_OK, pid=None):
        super().__init__(message, code)
        self.pid = pid

    @property
    def to_stdout(self):
        return self.code == EX_OK

    def lines(self):
        text = str(self).strip()
        return [text] if text else []


class Notifier:
    """The daemon's end of the start-up pipe. ok()/fail() once; later calls do nothing.

    The fd is close-on-exec: ssh children never hold it (the original would otherwise
    wait for their exit, not ours).
    """

    def __init__(self, fd):
        self._fd = fd

    def ok(self, message: str = "") -> None:
        self._send("ok %d %s" % (os.getpid(), message))

    def fail(self, message: str, code: int = EX_SOFTWARE) -> None:
        self._send("fail %d %s" % (int(code), message))

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass

    def _send(self, line):
        if self._fd is None:
            return
        data = (line.replace("\n", " ").strip() + "\n").encode("utf-8", "replace")
        try:
            os.write(self._fd, data[:4000])  # < PIPE_BUF: one atomic write
        except OSError:
            pass  # the original gave up waiting (timeout) or was killed: nothing to tell
        self.close()


def daemonize(ready_timeout: float = 10.0) -> Notifier:
    """Double fork, setsid, chdir /, umask 022, std streams to /dev/null.

    Returns a Notifier in the daemon (the grandchild). In the original process it does
    not return: it waits up to `ready_timeout` s for the daemon's ok()/fail() and raises
    Detached(message, code). The intermediate child only forks and _exits.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    rfd, wfd = os.pipe()  # both O_CLOEXEC (PEP 446)
    try:
        first = os.fork()
    except OSError as exc:
        os.close(rfd)
        os.close(wfd)
        raise SshkeepError("cannot fork: %s" % exc.strerror, EX_OSERR)
    if first > 0:
        os.close(wfd)
        try:
            _reap(first)
            raise _verdict(rfd, ready_timeout)
        finally:
            os.close(rfd)
    # intermediate child: never returns into the caller's code
    try:
        os.close(rfd)
        os.setsid()  # new session, no controlling terminal
        second = os.fork()  # not a session leader: can never acquire a terminal again
        if second > 0:
            os._exit(0)
    except BaseException as exc:
        try:
            os.write(wfd, ("fail %d cannot detach: %s\n" % (EX_OSERR, exc)).encode())
        finally:
            os._exit(EX_OSERR)
    # the daemon
    os.chdir("/")
    os.umask(0o022)
    _null_stdio()
    return Notifier(wfd)


def _null_stdio():
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


def _reap(pid):
    """Wait for the intermediate child (it exits at once after its fork)."""
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _verdict(rfd, timeout):
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            return Detached("the agent did not report within %gs; it may still be starting "
                            "(check the log)" % timeout, EX_SOFTWARE)
        ready, _, _ = select.select([rfd], [], [], left)
        if not ready:
            continue
        chunk = os.read(rfd, 4096)
        if not chunk:
            break  # EOF: the daemon exited (or exec'd) without a word
        data += chunk
    line = data.split(b"\n", 1)[0].decode("utf-8", "replace")
    word, _, rest = line.partition(" ")
    if word == "ok":
        pid_text, _, message = rest.partition(" ")
        pid = int(pid_text) if pid_text.isdigit() else None
        return Detached(message or "started (pid %s)" % pid_text, EX_OK, pid)
    if word == "fail":
        code_text, _, message = rest.partition(" ")
        code = int(code_text) if code_text.isdigit() else EX_SOFTWARE
        return Detached(message or "the agent failed to start", code)
    return Detached("the agent exited during start-up without reporting (see syslog)", EX_SOFTWARE)
