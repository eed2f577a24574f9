"""Domain errors, the one exit-code table (sysexits style) and the one top-level handler.

Library code raises; `guarded` (the CLI's and the runtime's entry) turns an error into a
message and an exit status. README.md's exit-code table lists exactly these codes
(tests/integration/test_docs.py).
"""

import sys

EX_OK = 0
EX_STATUS_NOT_RUNNING = 3  # status: the state names an agent that is not running (LSB status 3)
EX_STATUS_HUNG = 4   # status: the agent is alive but has not updated its state for ~3 intervals (LSB 4)
EX_NOT_RUNNING = 7   # reload/reconnect: no agent holds the pidfile (LSB "not running")
EX_USAGE = 64        # bad command line
EX_DATAERR = 65      # bad forward spec / value given on the command line
EX_NOINPUT = 66      # a named input file (key, config) is missing
EX_UNAVAILABLE = 69  # the ssh client binary is missing or unusable
EX_SOFTWARE = 70     # internal error (a bug: please report)
EX_OSERR = 71        # fork/exec/signal failure
EX_CANTCREAT = 73    # cannot write state or pidfile
EX_TEMPFAIL = 75     # already running (pid N) / try again
EX_NOPERM = 77       # permission problem (key file mode, pidfile owner)
EX_CONFIG = 78       # configuration file invalid


class SshkeepError(Exception):
    """An error the operator can act on; carries its exit code."""

    code = EX_SOFTWARE
    to_stdout = False

    def __init__(self, message, code=None):
        super().__init__(message)
        if code is not None:
            self.code = code

    def lines(self):
        """What the operator reads, one `sshkeep: ` line each."""
        return [str(self)]


class UsageError(SshkeepError):
    code = EX_USAGE


class ConfigError(SshkeepError):
    """Invalid configuration; message is `FILE:LINE: what — how to fix` when from a file."""

    code = EX_CONFIG

    def __init__(self, message, code=None, errors=None):
        super().__init__(message, code)
        self.errors = list(errors or [message])

    def lines(self):
        return self.errors


class ClientError(SshkeepError):
    """The ssh client binary is missing or cannot be identified."""

    code = EX_UNAVAILABLE


class AlreadyRunning(SshkeepError):
    code = EX_TEMPFAIL

    def __init__(self, pid, path):
        super().__init__("already running (pid %d, pidfile %s)" % (pid, path))
        self.pid = pid
        self.path = path


class StateError(SshkeepError):
    code = EX_CANTCREAT


def report(exc):
    """An error as its message lines and its exit status."""
    out = sys.stdout if exc.to_stdout else sys.stderr
    for line in exc.lines():
        out.write("sshkeep: %s\n" % line)
    return exc.code


def guarded(fn, *args):
    """fn(*args) as a process's exit status: an SshkeepError is reported with its code, ^C and a
    closed stdout are no error, anything else is a bug (the traceback and EX_SOFTWARE)."""
    try:
        return fn(*args)
    except SshkeepError as exc:
        return report(exc)
    except (KeyboardInterrupt, BrokenPipeError):
        return EX_OK
    except Exception as exc:
        import traceback
        traceback.print_exc()
        sys.stderr.write("sshkeep: internal error: %r (please report)\n" % (exc,))
        return EX_SOFTWARE
