"""The run-state JSON: written atomically (temp + rename) on tmpfs, read by `status`.

Written on every transition and at least once per interval (`updated`), so
cron mode can tell a hung agent from a live one. Never on flash by default.
"""

import os
import stat
import time

from agent.errors import StateError, SshkeepError, EX_NOINPUT


def default_dir() -> str:
    """Where the default state and pidfile go: /var/run for root, else a private directory.

    Not /tmp itself, nor a /var/run the user may write (a group, a container): another local
    user could plant a state file there (whose `children` the agent would kill) or a symlink
    the agent would follow.
    """
    from agent.core import defaults
    if os.geteuid() == 0:
        return defaults.RUN_DIR
    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    return private_dir(os.path.join(base, "sshkeep-%d" % os.geteuid()))


def default_state_path() -> str:
    """The run state's default path for flags (a config file's default is defaults.STATE: the same
    file as root, whom the init scripts run it as)."""
    from agent.core import defaults
    return os.path.join(default_dir(), defaults.STATE_NAME)


def private_dir(path: str) -> str:
    """Create `path` 0700, or accept it only as a real directory of ours that nobody else can write."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise StateError("cannot create directory %s: %s" % (path, exc.strerror or exc))
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise StateError("%s is not a directory (a symbolic link?): refusing it; remove it, or give "
                         "--state and --pidfile elsewhere" % path)
    if st.st_uid != os.geteuid():
        raise StateError("directory %s belongs to uid %d, not to us (uid %d): refusing it; remove it, or "
                         "give --state and --pidfile elsewhere" % (path, st.st_uid, os.geteuid()))
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)  # ours and a real directory (lstat above)
    return path


def owned_by_us(fd: int) -> bool:
    """A state file is acted on (children ended) only if our own uid wrote it."""
    return os.fstat(fd).st_uid == os.geteuid()


def write_file(path: str, data: bytes, mode: int = 0o644, exact_mode: bool = True, sync: bool = False,
               replace: bool = True) -> None:
    """Write `data` to a fresh temp file beside `path` (never through a planted one), then rename:
    a reader sees the old file or the new one, never half of it. OSError on failure, temp removed.

    exact_mode: `mode` as given, not narrowed by the umask (a hub's collector runs as another user).
    sync: fsync the file and its directory (flash: what was written survives a power cut).
    replace=False: hard-link into place instead, so of two writers racing only one wins:
    FileExistsError, and `path` untouched, if it exists."""
    tmp = "%s.%d.tmp" % (path, os.getpid())
    try:
        try:
            os.unlink(tmp)  # a leftover (or planted) temp file: never write through it
        except FileNotFoundError:
            pass
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if exact_mode:
                os.fchmod(fd, mode)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
            os.unlink(tmp)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if sync:
        _sync_dir(os.path.dirname(path) or ".")


def _sync_dir(d: str) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write(path: str, doc: dict) -> None:
    try:
        write_file(path, (dumps(doc) + "\n").encode("utf-8"))
    except OSError as exc:
        raise StateError("cannot write state file %s: %s (use --state FILE on a writable tmpfs)"
                         % (path, exc.strerror or exc))


_ESC = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def _str(s):
    if s.isascii() and s.isprintable() and '"' not in s and "\\" not in s:
        return '"%s"' % s
    out = []
    for c in s:
        n = ord(c)
        if c in _ESC:
            out.append(_ESC[c])
        elif 32 <= n < 127:
            out.append(c)
        elif n > 0xFFFF:  # a surrogate pair, as json.dumps writes it
            n -= 0x10000
            out.append("\\u%04x\\u%04x" % (0xD800 | n >> 10, 0xDC00 | n & 0x3FF))
        else:
            out.append("\\u%04x" % n)
    return '"%s"' % "".join(out)


def dumps(obj, indent=""):
    """JSON like json.dumps(obj, indent=1, sort_keys=True): the running agent writes its state
    without the json package (~0.15 MB resident); `status` and the tests read it with json."""
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, int):
        return int.__repr__(obj)
    if isinstance(obj, float):
        return float.__repr__(obj) if obj == obj and abs(obj) != float("inf") else \
            ("NaN" if obj != obj else "Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, str):
        return _str(obj)
    inner = indent + " "
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = sorted((str(k), v) for k, v in obj.items())
        return "{\n%s\n%s}" % (",\n".join("%s%s: %s" % (inner, _str(k), dumps(v, inner)) for k, v in items), indent)
    if isinstance(obj, (list, tuple)):
        if not obj:
            return "[]"
        return "[\n%s\n%s]" % (",\n".join(inner + dumps(v, inner) for v in obj), indent)
    raise TypeError("not JSON: %r" % (obj,))


def read(path: str, ours: bool = False):
    """The state document at `path`; SshkeepError (EX_NOINPUT) saying why when there is none.

    ours: only a file our own uid wrote, never through a symlink or a fifo (its `children` are
    processes the reader would end: never take them from another user)."""
    import json  # not in the running agent (launch.py reads the previous state for it)
    flags = os.O_NONBLOCK | (os.O_NOFOLLOW if ours else 0)
    try:
        with open(path, "rb", opener=lambda name, how: os.open(name, how | flags)) as fh:
            if ours and not owned_by_us(fh.fileno()):
                raise ValueError("not written by uid %d" % os.geteuid())
            return json.loads(fh.read(1 << 20 if ours else -1).decode("utf-8"))
    except FileNotFoundError:
        raise SshkeepError("no state file %s: is the agent running? (or give --state FILE)" % path, EX_NOINPUT)
    except (OSError, ValueError) as exc:
        raise SshkeepError("cannot read state file %s: %s" % (path, exc), EX_NOINPUT)


def previous(path) -> dict:
    """The state our own uid left at `path` (read(ours=True)), {} if none or not a document: what an
    agent that starts, stops or checks acts on."""
    try:
        doc = read(path, ours=True) if path else {}
    except SshkeepError:
        return {}
    return doc if isinstance(doc, dict) else {}


def pid_alive(pid) -> bool:
    """For a pid read from a file: agent.run.procs.alive (a zombie counts as gone), any type."""
    from agent.run import procs
    return isinstance(pid, int) and not isinstance(pid, bool) and procs.alive(pid)


STALE_INTERVALS = 3   # no state write for this many check intervals: the agent is not updating


def digest(settings) -> str:
    """A short fingerprint of the resolved settings, recorded in the state: `check` compares
    it with its own to notice an agent that runs with other flags or an older file."""
    from agent.core.spread import _hash64
    text = repr(settings.tunnels)  # not the log target: procd's agent and cron's check may differ there
    return "%016x" % _hash64(text.encode("utf-8", "surrogatepass"))


def age(doc: dict, now_wall=None, now_mono=None):
    """Seconds since the agent wrote `doc`, or None if unknown. The monotonic stamp first:
    a box without an RTC steps its wall clock when NTP sets it."""
    now_wall = time.time() if now_wall is None else now_wall
    now_mono = time.monotonic() if now_mono is None else now_mono
    mono, wall = doc.get("monotonic"), doc.get("updated")
    if isinstance(mono, (int, float)) and 0 < mono <= now_mono + 1:
        return max(0.0, now_mono - mono)
    if isinstance(wall, (int, float)) and wall <= now_wall + 1:
        return max(0.0, now_wall - wall)
    return None


def updating(doc: dict, now_wall=None, now_mono=None) -> bool:
    """False when the state is older than ~STALE_INTERVALS intervals (a hung or SIGSTOPped
    agent still holds its pidfile and looks alive to kill -0). At least 10 s of slack."""
    interval = doc.get("interval")
    limit = max(10.0, STALE_INTERVALS * (interval if isinstance(interval, (int, float)) else 30.0))
    seconds = age(doc, now_wall, now_mono)
    return seconds is None or seconds <= limit


def public(doc: dict, now_wall=None, now_mono=None) -> dict:
    """The documented `status --json` shape (plus extra per-tunnel detail)."""
    tunnels = []
    for t in doc.get("tunnels", []):
        pt = {k: t.get(k) for k in ("name", "state", "since", "restarts", "last_error", "ssh_pid",
                                    "server", "health", "checks", "consecutive_failures",
                                    "last_check", "last_heal", "next_attempt_in", "client", "host_keys",
                                    "session", "held", "allocated", "check_mode",
                                    "check_mode_why")}
        # [{name, kind, spec, verdict}]; a state file of an older agent has plain labels.
        pt["forwards"] = [f if isinstance(f, dict) else {"name": f, "kind": None, "spec": None, "verdict": None}
                          for f in t.get("forwards") or []]
        tunnels.append(pt)
    running = pid_alive(doc.get("pid"))
    return {"pid": doc.get("pid"), "version": doc.get("version"), "running": running,
            "updated": doc.get("updated"), "interval": doc.get("interval"), "box_id": doc.get("box_id"),
            "updating": running and updating(doc, now_wall, now_mono), "tunnels": tunnels,
            "warnings": doc.get("warnings") or []}


def render(doc: dict, now=None, now_mono=None) -> str:
    now = time.time() if now is None else now
    d = public(doc, now, now_mono)
    head = "sshkeep %s, pid %s%s, box %s, updated %s ago" % (
        d["version"], d["pid"], "" if d["running"] else " (NOT RUNNING)", d["box_id"] or "-", _ago(now, d["updated"]))
    if d["running"] and not d["updating"]:
        head += ("\nNOT UPDATING: no state written for %s (interval %ss): the agent is hung or stopped "
                 "(SIGSTOP?); `sshkeep check` restarts it" % (_ago(now, d["updated"]), d["interval"]))
    rows = [("TUNNEL", "STATE", "FOR", "RESTARTS", "SSH PID", "SERVER", "FORWARDS", "HEALTH", "LAST ERROR")]
    for t in d["tunnels"]:
        names = ", ".join(f["name"] for f in t["forwards"] if f["name"] not in ("loop-r", "loop-l")) or "-"
        rows.append((t["name"] or "-", t["state"] or "-", _ago(now, t["since"]), str(t["restarts"] or 0),
                     str(t["ssh_pid"] or "-"), t.get("server") or "-", names, t.get("health") or "-",
                     t["last_error"] or "-"))  # whole: the fix is at its end
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [head] + ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines += ["%s: host keys %s" % (t["name"], t["host_keys"]) for t in d["tunnels"] if t.get("host_keys")]
    lines += ["%s: remote checks %s (%s)" % (t["name"], t["check_mode"], t.get("check_mode_why") or "-")
              for t in d["tunnels"] if t.get("check_mode")]
    lines += ["warning: %s" % w for w in d["warnings"]]
    # who holds a -R port, also once LAST ERROR has moved on to the next attempt's reason
    lines += ["%s: %s" % (t["name"], t["held"]) for t in d["tunnels"]
              if t.get("held") and t["held"] not in (t["last_error"] or "")]
    for t in d["tunnels"]:  # ports the hub picked (-R 0:...), this session's
        lines += ["%s: hub port %s for %s" % (t["name"] or "-", p, f) for f, p in sorted((t["allocated"] or {}).items())]
    return "\n".join(lines) + "\n"


def _ago(now, then):
    if not then:
        return "-"
    s = max(0, int(now - then))
    if s < 120:
        return "%ds" % s
    if s < 7200:
        return "%dm" % (s // 60)
    return "%dh" % (s // 3600)
