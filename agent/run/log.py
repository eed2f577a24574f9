"""One line per event, to stderr (flushed: procd pipes it to logd), syslog, or a log file.

No `logging` module: it is not in python3-light. Logs are never dropped silently:
libc's syslog() discards every line when /dev/log is missing (no logd yet, a chroot),
and a --daemon's stderr is /dev/null. Then the lines go to stderr, or to a small
rotated file next to the state file (tmpfs), and the first line says so.
Every line is one line: what ssh, the hub or a child said is logged with its control
characters escaped (values.printable), so it cannot start a forged line or drive a terminal.
"""

import os
import socket
import sys
import time

from agent.core.values import printable

_PRIO = {"debug": 7, "info": 6, "notice": 5, "warning": 4, "error": 3}
LOG_CAP = 256 * 1024   # bytes in the log file before it is rotated to FILE.1 (once: two files at most)


def syslog_problem(path="/dev/log"):
    """'' if a syslog daemon listens on `path`, else why not (for the one line that says so)."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        s = socket.socket(socket.AF_UNIX, kind)
        try:
            s.connect(path)
            return ""
        except OSError as exc:
            why = exc.strerror or str(exc)
        finally:
            s.close()
    return "%s: %s" % (path, why)


def is_devnull(stream):
    """True if `stream` is /dev/null (a --daemon's stderr) or has no file descriptor."""
    try:
        st, null = os.fstat(stream.fileno()), os.stat(os.devnull)
    except (OSError, ValueError, AttributeError):
        return True
    return (st.st_dev, st.st_ino) == (null.st_dev, null.st_ino)


def log_path_for(state_path):
    """The fallback log file: beside the state file (tmpfs), e.g. /var/run/sshkeep.log."""
    base = state_path[:-5] if state_path.endswith(".json") else state_path
    return base + ".log"


class Log:
    """Tiny logger; `tunnel` names prefix every message so one grep finds a tunnel.

    `note` is '' or the one sentence saying where the lines go instead of where they were
    asked to go (the CLI repeats it to the user who started a --daemon).
    """

    def __init__(self, use_syslog=False, stream=None, ident="sshkeep", debug=False, timestamps=True,
                 logfile=None, syslog_socket="/dev/log"):
        self.stream = stream if stream is not None else sys.stderr
        self.debug_on = debug
        self.timestamps = timestamps
        self._syslog = None
        self.note = ""
        why = syslog_problem(syslog_socket) if use_syslog else ""
        if use_syslog and not why:
            import syslog  # stdlib C module, present in python3-light

            syslog.openlog(ident, syslog.LOG_PID, syslog.LOG_DAEMON)
            self._syslog = syslog
            return
        to_file = bool(logfile) and is_devnull(self.stream)
        if to_file:
            self.stream = _RotatingFile(logfile)
        where = "logging to %s" % (logfile if to_file else "stderr")
        if why:
            self.note = "no syslog (%s): %s" % (why, where)
        elif to_file:
            self.note = "stderr is /dev/null: %s" % where
        if self.note:
            self.emit("warning", "", self.note)

    def emit(self, level, tunnel, message):
        if level == "debug" and not self.debug_on:
            return
        line = printable(("%s: %s" % (tunnel, message)) if tunnel else message)
        if self._syslog is not None:
            self._syslog.syslog(_PRIO.get(level, 6), line)
            return
        prefix = time.strftime("%Y-%m-%d %H:%M:%S ") if self.timestamps else ""
        try:
            self.stream.write("%s%s: %s\n" % (prefix, level, line))
            self.stream.flush()
        except (OSError, ValueError):
            pass  # stderr gone (closed pipe), tmpfs full: never die for a log line

    def info(self, tunnel, message):
        self.emit("info", tunnel, message)

    def warning(self, tunnel, message):
        self.emit("warning", tunnel, message)

    def error(self, tunnel, message):
        self.emit("error", tunnel, message)

    def debug(self, tunnel, message):
        self.emit("debug", tunnel, message)


class _RotatingFile:
    """Append-only log file capped at `cap` bytes: then FILE -> FILE.1 (replacing it), a new FILE."""

    def __init__(self, path, cap=LOG_CAP):
        self.path = path
        self.cap = cap
        self.fd = None
        self.size = 0
        self._open()

    def _open(self):
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o640)
            self.size = os.fstat(self.fd).st_size
        except OSError:
            self.fd = None

    def write(self, text):
        data = text.encode("utf-8", "replace")
        if self.fd is not None and self.size + len(data) > self.cap:
            os.close(self.fd)
            try:
                os.replace(self.path, self.path + ".1")
            except OSError:
                pass
            self._open()
        if self.fd is None:
            return
        os.write(self.fd, data)
        self.size += len(data)

    def flush(self):
        pass
