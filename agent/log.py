"""One line per event, to stderr (flushed: procd pipes it to logd) or syslog.

No `logging` module: it is not in python3-light.
"""

import sys
import time

_PRIO = {"debug": 7, "info": 6, "notice": 5, "warning": 4, "error": 3}


class Log:
    """Tiny logger; `tunnel` names prefix every message so one grep finds a tunnel."""

    def __init__(self, use_syslog=False, stream=None, ident="sshkeep", debug=False, timestamps=None):
        self.stream = stream if stream is not None else sys.stderr
        self.debug_on = debug
        self._syslog = None
        # Under procd/logd a timestamp is added for us; on a terminal it helps.
        self.timestamps = self.stream.isatty() if timestamps is None and hasattr(self.stream, "isatty") else bool(timestamps)
        if use_syslog:
            import syslog  # stdlib C module, present in python3-light

            syslog.openlog(ident, syslog.LOG_PID, syslog.LOG_DAEMON)
            self._syslog = syslog

    def emit(self, level, tunnel, message):
        if level == "debug" and not self.debug_on:
            return
        line = ("%s: %s" % (tunnel, message)) if tunnel else message
        if self._syslog is not None:
            self._syslog.syslog(_PRIO.get(level, 6), line)
            return
        prefix = time.strftime("%Y-%m-%d %H:%M:%S ") if self.timestamps else ""
        try:
            self.stream.write("%s%s: %s\n" % (prefix, level, line))
            self.stream.flush()
        except (OSError, ValueError):
            pass  # stderr gone (daemon, closed pipe): never die for a log line

    def info(self, tunnel, message):
        self.emit("info", tunnel, message)

    def warning(self, tunnel, message):
        self.emit("warning", tunnel, message)

    def error(self, tunnel, message):
        self.emit("error", tunnel, message)

    def debug(self, tunnel, message):
        self.emit("debug", tunnel, message)


class NullLog(Log):
    def __init__(self):
        super().__init__(stream=_Null())

    def emit(self, level, tunnel, message):
        pass


class _Null:
    def write(self, _):
        pass

    def flush(self):
        pass

    def isatty(self):
        return False
