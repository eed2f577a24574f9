"""Other processes, seen through /proc: who is an sshkeep agent, bounded stop, orphan reaping.

Everything here acts on pids we did not necessarily start (an agent from a previous
boot of the service, the ssh children of a SIGKILLed agent), so every signal is sent
only after /proc confirms what the process is, and every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import time

if False:  # annotations only: importing typing would cost the agent 0.5 MB of memory
    from typing import List, Optional

_POLL = 0.02

# Python options that take a value in the next word (`python3 -W ignore x.pyz`).
_PY_OPTS_WITH_ARG = ("-W", "-X", "-Q")
_GONE = ("Z", "X", "x")  # /proc/PID/stat states of a process that has exited (zombie, dead)


def read(path: str, limit: int = 1 << 16) -> Optional[bytes]:
    """Up to `limit` bytes of a /proc file (-1: all of it), or None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except (OSError, ValueError):
        return None


def cmdline(pid: int, proc: str = "/proc") -> Optional[List[str]]:
    """argv of `pid` from /proc/PID/cmdline; None if gone, a zombie, or a kernel thread."""
    data = read("%s/%d/cmdline" % (proc, pid))
    if not data:
        return None
    return [a.decode("utf-8", "surrogateescape") for a in data.rstrip(b"\0").split(b"\0")]


def stat_fields(pid: int, proc: str = "/proc") -> Optional[List[str]]:
    """Fields of /proc/PID/stat after the `(comm)` field: [state, ppid, ...], so field N of
    proc(5) is [N - 3] (starttime, field 22: [19]); None if gone."""
    data = read("%s/%d/stat" % (proc, pid), 4096)
    if not data or b")" not in data:
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    return data[data.rfind(b")") + 1:].decode("ascii", "replace").split()


def processes(proc: str = "/proc"):
    """(pid, stat_fields) of every process now."""
    try:
        names = os.listdir(proc)
    except OSError:
        return
    for name in names:
        fields = stat_fields(int(name), proc) if name.isdigit() else None
        if fields:
            yield int(name), fields


def starttime(pid: int) -> Optional[int]:
    """Start time of `pid` in clock ticks since boot (/proc/PID/stat field 22), or None.

    Together with the pid it names one process for the life of the boot: record it
    next to pid and cmdline and `reap_orphans` will compare it too.
    """
    fields = stat_fields(pid)
    try:
        return int(fields[19])
    except (IndexError, TypeError, ValueError):
        return None


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (dead, waiting for its parent to reap it).

    Never reaps: the pid may be a child whose exit status its owner (child.py) wants.
    """
    if pid <= 0:
        return False
    fields = stat_fields(pid)
    return bool(fields) and fields[0] not in _GONE


def _script(argv):
    """What an interpreter command line runs: ('file', path), ('module', name) or None.

    `python3 [opts] FILE args`, `python3 -m MOD args`; any other argv[0] is itself the
    program (a wrapper exec'ing python keeps python's argv, a shebang pyz run directly
    becomes `python3 /path/sshkeep.pyz` through env or the kernel).
    """
    prog = os.path.basename(argv[0])
    if not prog.startswith("python"):
        return ("file", argv[0])
    i = 1
    while i < len(argv):
        word = argv[i]
        if word == "-m" and i + 1 < len(argv):
            return ("module", argv[i + 1])
        if word.startswith("-m") and len(word) > 2:
            return ("module", word[2:])
        if word.startswith("-c"):
            # `python -c CODE PROGRAM ...`: the agent's runtime (agent.launch) names its program
            # (the pyz, or -magent) right after the code; any other -c is not an agent.
            rest = argv[i + (2 if word == "-c" else 1):]
            if not rest:
                return None
            if rest[0].startswith("-m") and len(rest[0]) > 2:
                return ("module", rest[0][2:])
            return ("file", rest[0])
        if word == "--" and i + 1 < len(argv):
            return ("file", argv[i + 1])
        if word in _PY_OPTS_WITH_ARG:
            i += 2
            continue
        if word.startswith("-") and word != "-":
            i += 1
            continue
        return ("file", word)
    return None


def looks_like_sshkeep(argv: Optional[List[str]]) -> bool:
    """The rule for "this command line is an sshkeep agent".

    The program (argv[0], or the script/module an interpreter argv[0] runs) is named
    sshkeep*: `sshkeep run`, `/usr/bin/sshkeep.pyz run`, `python3 /usr/lib/sshkeep/
    sshkeep.pyz run`, `python3 -m sshkeep`; or it is `python3 -m agent` (a source
    checkout). Only the program name is looked at, never later arguments: an ssh child
    `ssh -i /etc/sshkeep/key ...` or `vi sshkeep.conf` is not an agent.
    """
    if not argv:
        return False
    what = _script(argv)
    if what is None:
        return False
    kind, name = what
    if kind == "module":
        return name == "agent" or name.startswith("agent.") or name.startswith("sshkeep")
    return "sshkeep" in os.path.basename(name)


def is_sshkeep(pid: int) -> bool:
    """True if `pid` is alive and its /proc/PID/cmdline is an sshkeep agent's."""
    return alive(pid) and looks_like_sshkeep(cmdline(pid))


def children_of(ppid: int) -> List[dict]:
    """Records {"pid", "cmdline", "starttime"} of the live children of `ppid`, from /proc.

    Taken just before an agent is KILLed, they let `reap_orphans` end the ssh it leaves
    behind without trusting (or needing) its state file.
    """
    out = []
    for pid, fields in processes():
        if len(fields) < 20 or fields[1] != str(ppid) or fields[0] in _GONE:
            continue
        argv = cmdline(pid)
        if argv:
            out.append({"pid": pid, "cmdline": argv, "starttime": int(fields[19])})
    return out


def _signal(pid, sig):
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        raise


def _wait_gone(pids, deadline):
    """Poll until every pid is gone or the monotonic deadline passes; returns those still alive."""
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(_POLL)
        left = [p for p in left if alive(p)]
    return left


def stop_pid(pid: int, timeout: float = 4.0, kill_after: bool = True, kill_wait: float = 2.0) -> str:
    """SIGTERM, wait up to `timeout` s, then SIGKILL and wait up to `kill_wait` s.

    Returns "not running", "stopped" (gone after TERM), "killed" (gone after KILL),
    "running" (kill_after=False and still alive) or "unkillable" (still there after KILL:
    uninterruptible sleep). Raises PermissionError if we may not signal it.
    """
    if not alive(pid) or not _signal(pid, signal.SIGTERM):
        return "not running"
    if not _wait_gone([pid], time.monotonic() + timeout):
        return "stopped"
    if not kill_after:
        return "running"
    if not _signal(pid, signal.SIGKILL):
        return "stopped"
    if not _wait_gone([pid], time.monotonic() + kill_wait):
        return "killed"
    return "unkillable"


def same_command(live: Optional[List[str]], recorded: List[str]) -> bool:
    """`live` (/proc cmdline) is the command that was spawned as `recorded` (its argv).

    Equal, or `recorded` run through a #! line: the kernel puts the interpreter (and
    its one optional argument) first and replaces argv[0] with the script path, so a
    wrapper script used as the ssh client shows as [/bin/sh, PATH, args...]. Only
    the interpreter words may differ, never an argument.
    """
    if not live or not recorded:
        return False
    if live == recorded:
        return True
    extra = len(live) - len(recorded)
    return 1 <= extra <= 2 and live[extra + 1:] == recorded[1:] and \
        os.path.basename(live[extra]) == os.path.basename(recorded[0])


def _matches(record):
    try:
        pid = int(record["pid"])
        want = [str(a) for a in record["cmdline"]]
    except (KeyError, TypeError, ValueError):
        return None
    if pid <= 1 or pid == os.getpid() or not want or not alive(pid):
        return None
    if not same_command(cmdline(pid), want):
        return None
    if record.get("starttime") is not None and starttime(pid) != record.get("starttime"):
        return None
    return pid


def reap_orphans(records: list, timeout: float = 2.0, kill_wait: float = 1.0) -> list:
    """End a previous agent's ssh children that are still running: TERM, bounded wait, KILL.

    `records`: [{"pid": int, "cmdline": [str, ...], "starttime": int (optional)}] from the
    previous instance's run state. A process is ended only if its pid AND its whole
    cmdline (and starttime when recorded) still match exactly (see same_command for
    #! scripts): a reused pid is left alone. All matches are signalled together, so the wait is `timeout` in total, not per
    child. Returns the records that matched and were ended (or were gone after TERM).
    """
    matched = []
    for rec in records or ():
        if not isinstance(rec, dict):
            continue
        pid = _matches(rec)
        if pid is not None and pid not in [p for p, _ in matched]:
            matched.append((pid, rec))
    ended = []
    for pid, rec in matched:
        try:
            if _signal(pid, signal.SIGTERM):
                ended.append((pid, rec))
        except PermissionError:
            pass
    left = _wait_gone([p for p, _ in ended], time.monotonic() + timeout)
    for pid in left:
        try:
            _signal(pid, signal.SIGKILL)
        except PermissionError:
            pass
    _wait_gone(left, time.monotonic() + kill_wait)
    return [rec for _, rec in ended]
