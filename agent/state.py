"""The run-state JSON: written atomically (temp + rename) on tmpfs, read by `status`.

Written on every transition and at least once per interval (`updated`), so
cron mode can tell a hung agent from a live one. Never on flash by default.
"""

import os
import time

from agent.errors import StateError, SshkeepError, EX_NOINPUT


def default_state_path() -> str:
    if os.geteuid() == 0 or os.access("/var/run", os.W_OK):
        return "/var/run/sshkeep.json"
    return "/tmp/sshkeep-%d.json" % os.getuid()


def write(path: str, doc: dict) -> None:
    tmp = "%s.%d.tmp" % (path, os.getpid())
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as fh:
            fh.write(dumps(doc) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
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


def read(path: str) -> dict:
    import json  # not in the running agent (launch.py reads the previous state for it)
    try:
        with open(path, "r") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise SshkeepError("no state file %s: is the agent running? (or give --state FILE)" % path, EX_NOINPUT)
    except (OSError, ValueError) as exc:
        raise SshkeepError("cannot read state file %s: %s" % (path, exc), EX_NOINPUT)


def pid_alive(pid) -> bool:
    """For a pid read from a file: agent.procs.alive (a zombie counts as gone), any type."""
    from agent import procs
    return isinstance(pid, int) and not isinstance(pid, bool) and procs.alive(pid)


def public(doc: dict) -> dict:
    """The documented `status --json` shape (plus extra per-tunnel detail)."""
    tunnels = []
    for t in doc.get("tunnels", []):
        tunnels.append({k: t.get(k) for k in ("name", "state", "since", "restarts", "last_error", "ssh_pid",
                                              "server", "health", "checks", "consecutive_failures",
                                              "last_check", "last_heal", "forwards", "next_attempt_in", "client")})
    return {"pid": doc.get("pid"), "version": doc.get("version"), "running": pid_alive(doc.get("pid")),
            "updated": doc.get("updated"), "tunnels": tunnels, "warnings": list(doc.get("warnings") or [])}


def render(doc: dict, now=None) -> str:
    now = time.time() if now is None else now
    d = public(doc)
    head = "sshkeep %s, pid %s%s, updated %s ago" % (
        d["version"], d["pid"], "" if d["running"] else " (NOT RUNNING)", _ago(now, d["updated"]))
    rows = [("TUNNEL", "STATE", "FOR", "RESTARTS", "SSH PID", "SERVER", "HEALTH", "LAST ERROR")]
    for t in d["tunnels"]:
        rows.append((t["name"] or "-", t["state"] or "-", _ago(now, t["since"]), str(t["restarts"] or 0),
                     str(t["ssh_pid"] or "-"), t.get("server") or "-", t.get("health") or "-",
                     (t["last_error"] or "-")[:70]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [head] + ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines += ["warning: %s" % w for w in d["warnings"]]  # the config's, e.g. a skipped tunnelW
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
