"""stop, check (cron mode), reload, reconnect: commands that act on a running agent.

Each returns an exit code or raises SshkeepError; only agent.cli exits. A process is
signalled only when (1) a live process holds the pidfile's lock and (2) the pid in
the pidfile is an sshkeep agent per /proc/PID/cmdline (procs.looks_like_sshkeep).
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time

from agent.run import pidfile as pidfile_mod
from agent.run import procs, state
from agent.errors import EX_NOPERM, EX_OK, EX_OSERR, EX_SOFTWARE, EX_TEMPFAIL, AlreadyRunning, SshkeepError

# `reload` / `reconnect` with no agent running. LSB init-script actions use 7 for
# "program is not running"; `stop` with no agent is a success (0), as LSB wants.
from agent.errors import EX_NOT_RUNNING  # noqa: E402  (re-exported)

if False:  # annotations only: importing typing would cost the agent 0.5 MB of memory
    from typing import List, Optional

CHECK_LOCK_WAIT = 30.0   # a check waits this long for another check to finish
START_TIMEOUT = 15.0     # a started agent must report within this (python3 cold start on a router)


class NotRunning(SshkeepError):
    code = EX_NOT_RUNNING


def _say(out, text):
    out = out if out is not None else sys.stdout
    try:
        out.write(text + "\n")
        out.flush()
    except (OSError, ValueError):
        pass


def agent_pid(pidfile: str, wait: float = 1.0) -> Optional[int]:
    """The pid of the live agent holding `pidfile`, or None if no agent holds it.

    The pid is the one written in the file or, failing that, the lock's owner in
    /proc/locks; it must be an sshkeep process either way. An agent that has just
    locked may not have written its pid yet (the file still names a dead agent's pid,
    maybe reused): retried for `wait` s. Raises SshkeepError(EX_NOPERM) if the file
    stays locked by something that is not an sshkeep process: never signal that.
    """
    deadline = time.monotonic() + wait
    while True:
        if not pidfile_mod.is_locked(pidfile):
            return None
        seen = []
        for pid in (pidfile_mod.read_pid(pidfile), pidfile_mod.lock_holder(pidfile)):
            if pid is not None and pid not in seen:
                seen.append(pid)
                if procs.is_sshkeep(pid):
                    return pid
        if time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    if not pidfile_mod.is_locked(pidfile):
        return None  # it exited while we looked
    if not seen:
        raise SshkeepError("%s is locked but holds no pid: not signalling anything" % pidfile, EX_NOPERM)
    raise SshkeepError("pid %d in %s is not an sshkeep process (%s): not signalling it"
                       % (seen[0], pidfile, " ".join(procs.cmdline(seen[0]) or ["gone"])), EX_NOPERM)


def send_signal(pidfile: str, sig: int) -> int:
    """Send `sig` to the confirmed agent; returns its pid. NotRunning (exit 7) if none."""
    pid = agent_pid(pidfile)
    if pid is None:
        raise NotRunning("not running (no agent holds %s)" % pidfile)
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        raise NotRunning("not running (pid %d exited)" % pid)
    except PermissionError:
        raise SshkeepError("not allowed to signal pid %d" % pid, EX_NOPERM)
    return pid


def cmd_reload(pidfile: str, out=None) -> int:
    """SIGHUP: the agent re-reads its config; unchanged tunnels keep their ssh."""
    pid = send_signal(pidfile, signal.SIGHUP)
    _say(out, "sshkeep: reload requested (SIGHUP to pid %d)" % pid)
    return EX_OK


def cmd_reconnect(pidfile: str, out=None) -> int:
    """SIGUSR1: reconnect every tunnel now and reset backoff (ifup hotplug hook)."""
    pid = send_signal(pidfile, signal.SIGUSR1)
    _say(out, "sshkeep: reconnect requested (SIGUSR1 to pid %d)" % pid)
    return EX_OK


def reap_previous_children(state_path: Optional[str]) -> list:
    """End the ssh children a dead agent recorded in its state (key "children")."""
    children = state.previous(state_path).get("children")
    return procs.reap_orphans(children if isinstance(children, list) else [])


def cmd_stop(pidfile: str, timeout: float = 4.5, state_path: Optional[str] = None, out=None) -> int:
    """TERM the confirmed agent, wait up to `timeout` s, then KILL. 0 also when none runs.

    The default 4.5 s stays inside procd's 5 s term_timeout. After a KILL the agent
    could not stop its ssh children: they are ended here (snapshot from /proc taken
    before the TERM, plus the state file's "children" when `state_path` is given).
    """
    pid = agent_pid(pidfile)
    if pid is None:
        stale = pidfile_mod.read_pid(pidfile)
        _say(out, "sshkeep: not running" + (" (stale pidfile %s, pid %d)" % (pidfile, stale) if stale else ""))
        return EX_OK
    started = time.monotonic()
    result, reaped = _stop_agent(pid, timeout, state_path)
    took = time.monotonic() - started
    if result == "killed":
        _say(out, "sshkeep: killed pid %d (no exit %.1fs after SIGTERM)%s"
             % (pid, timeout, "; ended %d ssh child(ren)" % len(reaped) if reaped else ""))
    elif result == "stopped":
        _say(out, "sshkeep: stopped pid %d (%.1fs)" % (pid, took))
    else:
        _say(out, "sshkeep: not running (pid %d exited)" % pid)
    return EX_OK


def _stop_agent(pid, timeout, state_path):
    """stop_pid + end the ssh children a KILLed agent could not end itself.

    Its children are snapshotted (pid, cmdline, starttime from /proc) before the TERM;
    after a KILL they are orphans and get TERM/KILL here, as do the children its state
    file recorded. Returns (stop_pid result, records ended).
    """
    kids = procs.children_of(pid)
    try:
        result = procs.stop_pid(pid, timeout=timeout)
    except PermissionError:
        raise SshkeepError("not allowed to signal pid %d" % pid, EX_NOPERM)
    if result == "unkillable":
        raise SshkeepError("pid %d did not exit even after SIGKILL" % pid, EX_OSERR)
    reaped = []
    if result == "killed":
        reaped = procs.reap_orphans(kids)
        reaped += [r for r in reap_previous_children(state_path) if r.get("pid") not in
                   [k.get("pid") for k in reaped]]
    return result, reaped


def self_command() -> List[str]:
    """argv that runs this same sshkeep again: [python, /path/sshkeep.pyz] or [python, -m, agent]."""
    python = sys.executable or "python3"
    entry = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if entry and os.path.basename(entry) != "__main__.py" and os.path.exists(entry):
        return [python, os.path.abspath(entry)]
    return [python, "-m", "agent"]


def _self_env():
    """Environment for a `-m agent` child: make the package importable from any cwd."""
    env = dict(os.environ)
    top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isdir(os.path.join(top, "agent")):
        env["PYTHONPATH"] = top + ((os.pathsep + env["PYTHONPATH"]) if env.get("PYTHONPATH") else "")
    return env


def state_age(pidfile: str, state_path: Optional[str]) -> float:
    """Seconds since the agent last showed life: the newest of its state's "monotonic"
    (time.monotonic() at write: immune to the NTP jump of a router without RTC),
    "updated" (epoch) and the pidfile's mtime (written when the agent started)."""
    now_wall, now_mono = time.time(), time.monotonic()
    seconds = state.age(state.previous(state_path), now_wall, now_mono)
    ages = [] if seconds is None else [seconds]
    try:
        mtime = os.stat(pidfile).st_mtime
        if mtime <= now_wall + 1:  # a future mtime: the wall clock stepped back since, no evidence
            ages.append(now_wall - mtime)
    except OSError:
        pass
    return max(0.0, min(ages)) if ages else float("inf")


def _check_lock(pidfile, wait):
    """Exclusive lock on PIDFILE.check: one check-and-start at a time. Returns the fd."""
    path = pidfile + ".check"
    fd = pidfile_mod.open_own(path, os.O_RDWR | os.O_CREAT)
    if not pidfile_mod.lock(fd, fcntl.LOCK_EX, wait):
        os.close(fd)
        raise SshkeepError("another `sshkeep check` has held %s for %gs" % (path, wait), EX_TEMPFAIL)
    return fd


def cmd_check(pidfile: str, state_path: Optional[str], run_argv: List[str], stale_after: float,
              entry_argv: Optional[List[str]] = None, start_timeout: float = START_TIMEOUT,
              stop_timeout: float = 4.5, out=None, err=None, digest: Optional[str] = None,
              config: Optional[str] = None) -> int:
    """Cron mode. Quiet exit 0 if a live agent holds the pidfile and its state is fresh;
    a held pidfile whose state is older than `stale_after` s is a hung agent: stop it
    (TERM, KILL) and start a new one; no agent: start one detached and wait for it to
    report. Checks are serialised on PIDFILE.check, so ten at once start one agent.

    `run_argv`: the `run` arguments (e.g. ["run", "-c", CONF, "--pidfile", P]);
    `--daemon` is appended. `entry_argv`: how to run sshkeep (default self_command()).
    `digest`: state.digest() of the settings this check resolved. A live agent whose state
    records another one runs with other flags or an older file: with the same config file
    it is reloaded (SIGHUP, confirmed by its next state), otherwise restarted.
    """
    err = err if err is not None else sys.stderr
    lock = _check_lock(pidfile, CHECK_LOCK_WAIT)
    try:
        pid = agent_pid(pidfile)
        if pid is not None:
            age = state_age(pidfile, state_path)
            if age > stale_after:
                _say(err, "sshkeep: agent pid %d is hung (no state update for %.0fs > %gs): restarting"
                     % (pid, age, stale_after))
            else:
                doc = state.previous(state_path)
                theirs = doc.get("settings") if doc.get("pid") == pid else None  # None: not written yet
                if digest is None or theirs is None or theirs == digest:
                    return EX_OK
                if config and doc.get("config") == config and _reloaded(pid, state_path, digest, start_timeout):
                    _say(out, "sshkeep: agent pid %d ran with other settings: reloaded %s (SIGHUP)" % (pid, config))
                    return EX_OK
                _say(out, "sshkeep: agent pid %d runs with other settings than this check's: restarting it" % pid)
            _stop_agent(pid, stop_timeout, state_path)
        return _start(pidfile, run_argv, entry_argv, start_timeout, out)
    finally:
        os.close(lock)


def _reloaded(pid, state_path, digest, timeout):
    """SIGHUP the agent; True once its state records `digest` (within `timeout` s)."""
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if state.previous(state_path).get("settings") == digest:
            return True
        time.sleep(0.1)
    return False


def _start(pidfile, run_argv, entry_argv, start_timeout, out):
    head = list(entry_argv or self_command())
    argv = head + list(run_argv) + ["--daemon"]
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, close_fds=True, timeout=start_timeout,
                              env=_self_env() if head[1:3] == ["-m", "agent"] else None)
    except subprocess.TimeoutExpired:
        raise SshkeepError("the agent did not report within %gs: %s" % (start_timeout, " ".join(argv)),
                           EX_SOFTWARE)
    except OSError as exc:
        raise SshkeepError("cannot run %s: %s" % (argv[0], exc.strerror), EX_OSERR)
    text = (proc.stdout + proc.stderr).decode("utf-8", "replace").strip()
    if proc.returncode == EX_OK:
        pid = pidfile_mod.read_pid(pidfile)
        note = text.partition("; ")[2]  # e.g. "no syslog (/dev/log: ...): logging to FILE"
        _say(out, "sshkeep: started agent" + (" pid %d" % pid if pid else "") + ("; " + note if note else ""))
        return EX_OK
    if proc.returncode == AlreadyRunning.code:
        return EX_OK  # another agent (procd, a manual start) took the pidfile meanwhile: fine
    code = proc.returncode if proc.returncode > 0 else EX_SOFTWARE
    raise SshkeepError(text or "the agent failed to start (exit %d)" % proc.returncode, code)
