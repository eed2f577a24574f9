"""The only module that starts processes: spawn, read output, stop with escalation.

Every wait is bounded. Stopping is TERM, a bounded wait, KILL, reap.
The child's stderr is read continuously: OpenSSH writes one line per refused
forwarded connection, and a full pipe would block ssh and stall the tunnel.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time

if False:  # annotations only: importing typing would cost the agent 0.5 MB of memory
    from typing import List, Optional

MAX_LINE = 4096
KEEP_LINES = 30
# A job's output is capped (a hostile hub or a chatty login shell printed 15 MB: 368 MB RSS):
# past either limit the job is ended; what stays is its marker lines and a short tail.
JOB_MAX_BYTES = 256 * 1024
JOB_MAX_LINES = 2000
JOB_KEEP_MARKERS = 100
JOB_TAIL = 20
MARKER_PREFIX = "sshkeep-"


class Child:
    """One running process with piped stdin/stdout/stderr.

    stdin stays open for the child's life: the tunnel's session command waits
    on it (so the remote side ends when we do, even if we are SIGKILLed), and
    dbclient's host-key prompt blocks on it instead of spinning on EOF.
    """

    def __init__(self, argv: List[str], env: Optional[dict] = None, clock=time.monotonic):
        self.argv = list(argv)
        self.env = env
        self.clock = clock
        self.proc = None
        self.pid = None
        self.started = None
        self.returncode = None
        self.stderr_tail = []       # last KEEP_LINES lines
        self.stdout_tail = []
        self._buf = {}
        self.term_sent = None       # when TERM was sent
        self.kill_sent = None
        self.spawn_error = None

    def start(self) -> bool:
        """Start; False (with spawn_error set) if the binary cannot be executed."""
        try:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=self.env, close_fds=True,
                # Own session: no controlling tty (no password or host key prompt on
                # /dev/tty), and a Ctrl-C to our group does not hit ssh behind our back.
                start_new_session=True)
        except OSError as exc:
            self.spawn_error = "%s: %s" % (self.argv[0], exc.strerror or exc)
            return False
        self.pid = self.proc.pid
        self.started = self.clock()
        for stream in (self.proc.stdout, self.proc.stderr):
            os.set_blocking(stream.fileno(), False)
            self._buf[stream.fileno()] = b""
        return True

    def fds(self) -> List[int]:
        if not self.proc:
            return []
        return [f.fileno() for f in (self.proc.stdout, self.proc.stderr) if f and not f.closed]

    def is_stderr(self, fd: int) -> bool:
        return self.proc is not None and self.proc.stderr is not None and not self.proc.stderr.closed \
            and fd == self.proc.stderr.fileno()

    def read(self, fd: int):
        """Drain what is readable on fd. Returns (lines, eof)."""
        chunks = []
        eof = False
        for _ in range(64):  # bounded: at most 256 KB per call
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                eof = True
                break
            if not data:
                eof = True
                break
            chunks.append(data)
        buf = self._buf.get(fd, b"") + b"".join(chunks)
        parts = buf.split(b"\n")
        rest = parts.pop()
        if len(rest) > MAX_LINE:  # a line without end: cut it
            parts.append(rest[:MAX_LINE])
            rest = b""
        if eof and rest:
            parts.append(rest)
            rest = b""
        self._buf[fd] = rest
        lines = [p.decode("utf-8", "replace").rstrip("\r") for p in parts]
        lines = [l for l in lines if l.strip()]
        tail = self.stderr_tail if self.is_stderr(fd) else self.stdout_tail
        tail.extend(lines)
        del tail[:-KEEP_LINES]
        return lines, eof

    def close_fd(self, fd: int):
        for f in (self.proc.stdout, self.proc.stderr):
            if f and not f.closed and f.fileno() == fd:
                f.close()

    def poll(self) -> Optional[int]:
        """Reap if exited. Popen style: negative = killed by that signal."""
        if self.proc is None:
            return None
        if self.returncode is None:
            self.returncode = self.proc.poll()
        return self.returncode

    def signal(self, sig) -> None:
        if self.proc is None or self.poll() is not None:
            return
        try:
            self.proc.send_signal(sig)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        """Ask it to stop; the driver calls escalate() until it is gone."""
        if self.term_sent is None:
            self.term_sent = self.clock()
            self.signal(signal.SIGTERM)

    def escalate(self, term_timeout: float) -> None:
        """KILL if TERM was sent term_timeout ago and it still lives."""
        if self.term_sent is not None and self.kill_sent is None and self.poll() is None \
                and self.clock() - self.term_sent >= term_timeout:
            self.kill_sent = self.clock()
            self.signal(signal.SIGKILL)

    def stop(self, term_timeout: float = 2.0, kill_timeout: float = 2.0) -> Optional[int]:
        """Blocking stop: TERM, bounded wait, KILL, bounded reap. For shutdown paths."""
        if self.proc is None:
            return None
        self.terminate()
        try:
            self.proc.wait(timeout=max(0.0, term_timeout))
        except subprocess.TimeoutExpired:
            self.kill_sent = self.clock()
            self.signal(signal.SIGKILL)
            try:
                self.proc.wait(timeout=kill_timeout)
            except subprocess.TimeoutExpired:
                pass  # unkillable (D state): nothing more we can do; reported by caller
        self.close()
        return self.poll()

    def close(self):
        if self.proc is None:
            return
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                if f:
                    f.close()
            except OSError:
                pass

    def send(self, data: bytes) -> None:
        """A few bytes to the child's stdin (fits the empty pipe: never blocks)."""
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (OSError, ValueError, AttributeError):
            pass

    def send_nowait(self, data: bytes) -> bool:
        """Write all of data to the child's stdin without blocking; False if it does not take it
        (a pipe full because ssh stopped reading, or closed)."""
        try:
            fd = self.proc.stdin.fileno()
            os.set_blocking(fd, False)
            return os.write(fd, data) == len(data)
        except (OSError, ValueError, AttributeError):
            return False

    def close_stdin(self):
        try:
            if self.proc and self.proc.stdin:
                self.proc.stdin.close()
        except OSError:
            pass

    def uptime(self) -> float:
        return 0.0 if self.started is None else self.clock() - self.started

    def cmdline_record(self) -> dict:
        """What the next agent needs to find us if we die by SIGKILL (pid AND argv)."""
        from agent.run import procs
        # starttime too: a reused pid can never match an old record.
        return {"pid": self.pid, "cmdline": self.argv, "starttime": procs.starttime(self.pid)}


class Job:
    """A short-lived command (remote check, reclaim) with a hard deadline.

    Output is collected; the driver calls `pump()` on readiness and `check()`
    on every loop turn. Results: returncode, stdout text, stderr text, timed_out.
    """

    def __init__(self, argv, env=None, timeout=10.0, clock=time.monotonic, on_done=None, stdin_data=None):
        self.child = Child(argv, env, clock)
        self.deadline = None
        self.timeout = timeout
        self.clock = clock
        self.timed_out = False
        self.done = False
        self.on_done = on_done
        self.out = []
        self.err = []
        self.stdin_data = stdin_data
        self.bytes = 0
        self.overflow = False        # True once the output passed the cap (the job is ended)

    def start(self) -> bool:
        ok = self.child.start()
        self.deadline = self.clock() + self.timeout
        if ok:
            # Exec jobs need EOF on stdin (a remote `cat` would otherwise wait).
            self.child.close_stdin()
        else:
            self.done = True
        return ok

    def fds(self):
        return self.child.fds()

    def hurry(self, within: float) -> None:
        """End within `within` s at most (a stop must not wait out a check's own budget): TERM
        now, KILL at the (earlier) deadline."""
        self.deadline = min(self.deadline, self.clock() + within)
        self.child.terminate()

    def pump(self, fd):
        lines, eof = self.child.read(fd)
        (self.err if self.child.is_stderr(fd) else self.out).extend(lines)
        self.bytes += sum(len(l) + 1 for l in lines)
        if self.bytes > JOB_MAX_BYTES or len(self.out) + len(self.err) > JOB_MAX_LINES:
            for kept in (self.out, self.err):
                markers = [l for l in kept[:-JOB_TAIL] if l.startswith(MARKER_PREFIX)]
                kept[:] = markers[-JOB_KEEP_MARKERS:] + kept[-JOB_TAIL:]
            if not self.overflow:
                self.overflow = True
                self.child.terminate()
        if eof:
            self.child.close_fd(fd)

    def check(self) -> bool:
        """True once finished (exited and reaped, or killed at the deadline)."""
        if self.done:
            return True
        if self.child.poll() is not None and not self.child.fds():
            self.done = True
        elif self.child.poll() is not None:
            # exited; drain what is left without blocking
            for fd in list(self.child.fds()):
                self.pump(fd)
                self.child.close_fd(fd)
            self.done = True
        elif self.overflow or self.clock() >= self.deadline:
            self.timed_out = not self.overflow
            self.child.stop(term_timeout=0.5, kill_timeout=1.0)
            self.done = True
        if self.done:
            self.child.close()
        return self.done

    @property
    def returncode(self):
        return self.child.returncode
