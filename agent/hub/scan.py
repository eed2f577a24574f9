"""`sshkeep hub`: the I/O around agent.hub.view, run on the hub as the tunnel user.

Reads the state directory the sessions write (agent.hubside.remote), asks /proc which
sessions still live, reaps the records of those that are gone (only regular
files of our own uid, re-read just before removal), probes every recorded
port on the hub's loopback at once (agent.run.probe.probe_many), and prints or
writes the view. What /proc allows a non-root tunnel user (measured with
OpenSSH 9.2 and dropbear 2022.83 servers): /proc/PID/stat and cmdline of the
session process (OpenSSH's `sshd: USER@notty` runs as the user but is not
dumpable; dropbear's runs as root) are readable; its environ is not. The
session command's shell, a child of it running as the user, is an ordinary
process: its environ holds SSH_CONNECTION, the client's address and port.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
import time

from agent.errors import EX_CANTCREAT, EX_NOINPUT, EX_NOPERM, EX_OK, EX_UNAVAILABLE, SshkeepError, UsageError
from agent.hub import view as hub
from agent.run import procs, state
from agent.core.record import replace

if False:  # annotations only
    from typing import Dict, List, Optional, Tuple

MAX_RECORD = 4096


def default_state_dir() -> str:
    """$HOME/.sshkeep, as the session command writes it (HOME of the tunnel user's login)."""
    home = os.environ.get("HOME") or ""
    if not home:
        try:
            import pwd
            home = pwd.getpwuid(os.getuid()).pw_dir
        except (ImportError, KeyError):
            home = "/"
    return os.path.join(home, ".sshkeep")


def proc_info(pid: int, proc: str = "/proc") -> Optional[hub.Proc]:
    """What /proc says about pid now; None when it is gone."""
    fields = procs.stat_fields(pid, proc)
    if not fields or len(fields) < 20:
        return None
    try:
        uid = os.stat("%s/%d" % (proc, pid)).st_uid
    except OSError:
        return None
    return hub.Proc(fields[0], fields[19], uid, " ".join(procs.cmdline(pid, proc) or ()).strip())


def boot_time(proc: str = "/proc") -> Optional[float]:
    for line in (procs.read(proc + "/stat") or b"").decode("ascii", "replace").splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return None


def children(proc: str = "/proc") -> Dict[int, List[int]]:
    """ppid -> [pid] for every process, from one pass over /proc/*/stat."""
    out = {}  # type: Dict[int, List[int]]
    for pid, fields in procs.processes(proc):
        if len(fields) > 1 and fields[1].isdigit():
            out.setdefault(int(fields[1]), []).append(pid)
    return out


def client_of(pid: int, kids: Dict[int, List[int]], proc: str = "/proc") -> Optional[Tuple[str, int]]:
    """The client's (address, port): SSH_CONNECTION of a child of the session process that we
    may read (the session command's shell); None when no such child is readable."""
    for child in sorted(kids.get(pid, [])):
        for item in (procs.read("%s/%d/environ" % (proc, child)) or b"").split(b"\0"):
            if item.startswith(b"SSH_CONNECTION="):
                found = hub.parse_ssh_connection(item[15:].decode("ascii", "replace"))
                if found:
                    return found
    return None


def _open_record(path: str):
    """(text, stat) of a record file, never following a symlink or blocking on a fifo."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise hub.BadRecord("not a regular file")
        return os.read(fd, MAX_RECORD).decode("utf-8", "replace"), st
    finally:
        os.close(fd)


def scan(state_dir: str, uid: int, proc: str = "/proc"):
    """Read the state directory: (live [(Record, foreign)], stale [(Record, why, stat)], problems).

    An unreadable or missing directory is an error the operator can act on
    (SshkeepError with the file and the fix); each odd file is one problem line.
    """
    try:
        names = sorted(os.listdir(state_dir))
    except FileNotFoundError:
        raise SshkeepError("%s does not exist: no box has recorded a session there; run this as the "
                           "tunnel user (its $HOME/.sshkeep) or give --state-dir DIR" % state_dir, EX_NOINPUT)
    except NotADirectoryError:
        raise SshkeepError("%s is not a directory: give --state-dir DIR" % state_dir, EX_NOINPUT)
    except PermissionError:
        raise SshkeepError("%s: permission denied: run this as the tunnel user the boxes log in as "
                           "(e.g. su -s /bin/sh TUNNELUSER -c 'sshkeep.pyz hub')" % state_dir, EX_NOPERM)
    except OSError as exc:
        raise SshkeepError("%s: %s" % (state_dir, exc.strerror or exc), EX_NOINPUT)
    live, stale, problems = [], [], []
    for name in names:
        if hub.parse_name(name) is None:
            problems.append((name, "not a session record (rport-PORT-PID): left alone"))
            continue
        path = os.path.join(state_dir, name)
        try:
            text, st = _open_record(path)
            rec = hub.parse_record(name, text)
        except hub.BadRecord as exc:
            problems.append((name, "%s: left alone" % exc))
            continue
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                continue  # its session just ended and removed it
            why = "a symlink: left alone" if exc.errno == errno.ELOOP else "%s: left alone" % (
                exc.strerror or exc)
            problems.append((name, why))
            continue
        foreign = st.st_uid != uid
        why = hub.judge(rec, proc_info(rec.pid, proc))
        if why is None:
            live.append((rec, foreign))
            if foreign:
                problems.append((name, "owned by uid %d, not by us (uid %d): shown, never reaped" % (st.st_uid, uid)))
        elif foreign:
            problems.append((name, "stale (%s) but owned by uid %d, not by us: left alone" % (why, st.st_uid)))
        else:
            stale.append((rec, why, text))
    return live, stale, problems


def reap(state_dir: str, stale, uid: int) -> Tuple[List[Tuple[str, str]], List[Tuple[str, str]]]:
    """Remove stale records: only if the file is still ours and still says what was judged
    (a new session on a recycled pid rewrites the same name). -> (reaped, problems)."""
    done, problems = [], []
    for rec, why, text in stale:
        path = os.path.join(state_dir, rec.name)
        try:
            now_text, st = _open_record(path)
            if st.st_uid != uid or now_text != text:
                continue  # rewritten since: judged again next time
            os.unlink(path)
            done.append((rec.name, why))
        except FileNotFoundError:
            continue
        except (OSError, hub.BadRecord) as exc:
            problems.append((rec.name, "stale (%s) but cannot be removed: %s" % (
                why, getattr(exc, "strerror", None) or exc)))
    return done, problems


def write_atomic(path: str, text: str) -> None:
    """tmp + rename in the same directory; node_exporter's textfile collector reads only *.prom,
    so the temp name (no .prom ending) is never read half written."""
    try:
        state.write_file(path, text.encode("utf-8"), 0o644)
    except OSError as exc:
        raise SshkeepError("cannot write %s: %s (the directory must be writable by this user)"
                           % (path, exc.strerror or exc), EX_CANTCREAT)


def view(state_dir: str, timeout: float = 3.0, grace: float = 0.3, proc: str = "/proc", now=None) -> dict:
    """Scan, reap, probe: the hub document (agent.hub.view.document)."""
    from agent.run import probe
    uid = os.geteuid()
    live, stale, problems = scan(state_dir, uid, proc)
    reaped, more = reap(state_dir, stale, uid)
    problems += more
    found = hub.sessions(live)
    problems += [("-", line) for line in hub.collisions(found)]
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    btime = boot_time(proc)
    found = [s if s.since is not None else replace(s, since=hub.since_from_start(s.start, btime, hz))
             for s in found]
    ports = sorted({p for s in found for p in s.ports})
    results = probe.probe_many([("localhost", p, None) for p in ports], timeout, grace)
    verdicts = {p: (r.verdict, r.detail) for p, r in zip(ports, results)}
    kids = children(proc) if found else {}
    clients = {}
    for s in found:
        c = client_of(s.pid, kids, proc)
        if c:
            clients[s.pid] = c
    return hub.document(found, verdicts, clients, reaped, problems, state_dir,
                        time.time() if now is None else now)


def cmd_hub(args) -> int:
    """`sshkeep hub`: the table (or --json) on stdout, problems on stderr, --prometheus FILE.
    Exit 0 when every recorded forward answers, EX_UNAVAILABLE when one does not."""
    if not 0 < args.timeout <= 60:
        raise UsageError("--timeout must be more than 0 and at most 60 seconds")
    state_dir = os.path.abspath(args.state_dir or default_state_dir())
    doc = view(state_dir, timeout=args.timeout)
    for p in doc["problems"]:
        sys.stderr.write("sshkeep: hub: %s\n" % hub.printable("%s: %s" % (  # file names are anyone's text
            state_dir if p["file"] == "-" else os.path.join(state_dir, p["file"]), p["problem"])))
    if args.prometheus:
        write_atomic(args.prometheus, hub.prometheus(doc))
    if args.json:
        sys.stdout.write(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    elif not args.prometheus:
        sys.stdout.write(hub.render(doc))
    sys.stdout.flush()
    return EX_UNAVAILABLE if hub.any_down(doc) else EX_OK
