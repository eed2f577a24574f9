"""The hub's view of its fleet, pure: session records -> live sessions -> text, JSON, Prometheus.

Each tunnel session records itself on the hub in STATE_DIR/rport-PORT-PID
(agent.hubside.remote's session command; docs/hub-records.md). Two record formats are
read: `v1 box=ID host=H tunnel=N start=TICKS since=EPOCH ports=P,Q` (one line
of key=value words; keys we do not know are kept, so a newer writer's fields
reach the JSON; another version word is reported, not guessed at) and the
older `OWNER STARTTIME` (OWNER is "host.tunnel").
The I/O (the directory, /proc, the probes, the reaping) is agent.hub.scan's.
"""

from __future__ import annotations

import re
import time

from agent.core.record import record
from agent.core.values import printable

if False:  # annotations only: importing typing would cost the agent 0.5 MB of memory
    from typing import Dict, List, Optional, Sequence, Tuple

DOC_FORMAT = "sshkeep-hub/1"
RECORD_NAME = re.compile(r"\Arport-([0-9]{1,5})-([0-9]{1,10})\Z")
_WORD = re.compile(r"\A[\x21-\x7e]{1,200}\Z")  # one printable ASCII word, nothing a terminal acts on
HEALTHY = ("ok-banner", "ok-data", "ok-silent")  # agent.run.probe.HEALTHY, without importing sockets here


class BadRecord(ValueError):
    """A file in the state directory that is not a session record we can read (left alone)."""


@record
class Record:
    """One state-directory file: one session, one of its ports."""
    name: str                 # file name, rport-PORT-PID
    port: int                 # from the name
    pid: int                  # from the name: the session process that holds the listeners
    box: str                  # box ID (v1), or the older records' owner "host.tunnel"
    host: str = "-"           # the box's hostname, for people ("-": not recorded)
    tunnel: str = "-"         # the tunnel's name on the box
    start: str = ""           # the session process's start time (clock ticks since boot); "" unknown
    since: Optional[int] = None  # hub epoch when the session recorded itself; None unknown
    ports: Tuple[int, ...] = ()  # every port the session recorded (v1), else just `port`
    format: str = "v1"        # "v1" | "legacy"
    extra: Tuple[Tuple[str, str], ...] = ()  # key=value fields this reader does not know


@record
class Proc:
    """What /proc says about a pid now (agent.hub.scan.proc_info)."""
    state: str                # "R", "S", "Z", ...
    start: str                # field 22 of /proc/PID/stat
    uid: int
    cmdline: str              # NULs as spaces


@record
class Session:
    """A live session: the records of one pid with the same start time and box, merged."""
    pid: int
    start: str
    box: str
    host: str
    tunnel: str
    since: Optional[int]
    ports: Tuple[int, ...]
    format: str
    names: Tuple[str, ...]    # its record files
    foreign: bool = False     # a record owned by another user (shown, never reaped)
    extra: Tuple[Tuple[str, str], ...] = ()


def parse_name(name: str) -> Optional[Tuple[int, int]]:
    """rport-PORT-PID -> (port, pid); None for any other name."""
    m = RECORD_NAME.match(name)
    if not m:
        return None
    port, pid = int(m.group(1)), int(m.group(2))
    if not 0 < port < 65536 or pid < 2:
        return None
    return port, pid


def _digits(text: str) -> bool:
    return text.isdigit() and text.isascii()


def parse_record(name: str, text: str) -> Record:
    """A record file's name and first line -> Record; BadRecord says what is wrong with it."""
    where = parse_name(name)
    if where is None:
        raise BadRecord("not a session record name (rport-PORT-PID)")
    port, pid = where
    lines = text.splitlines()
    words = lines[0].split() if lines else []
    if not words:
        raise BadRecord("empty (a session that could not write its record, or not ours)")
    if not all(_WORD.match(w) for w in words):
        raise BadRecord("not a session record (control or non-ASCII characters)")
    if re.match(r"\Av[0-9]+\Z", words[0]) and words[0] != "v1":
        raise BadRecord("record format %s is newer than this sshkeep reads (v1): upgrade sshkeep on the hub"
                        % words[0])
    if words[0] == "v1":
        fields = {}  # type: Dict[str, str]
        for w in words[1:]:
            key, eq, value = w.partition("=")
            if not eq or not key:
                raise BadRecord("word %r is not KEY=VALUE" % w[:40])
            fields.setdefault(key, value)
        box = fields.pop("box", "")
        if not box or box == "-":
            raise BadRecord("v1 record without box=")
        start = fields.pop("start", "")
        since = fields.pop("since", "")
        ports = []
        for p in fields.pop("ports", "").split(","):
            if _digits(p) and 0 < int(p) < 65536 and int(p) not in ports:
                ports.append(int(p))
        if port not in ports:
            ports.append(port)
        return Record(name, port, pid, box, fields.pop("host", "-") or "-", fields.pop("tunnel", "-") or "-",
                      start if _digits(start) else "", int(since) if _digits(since) else None,
                      tuple(sorted(ports)), "v1", tuple(sorted(fields.items())))
    if len(words) == 2:  # before box IDs: "OWNER STARTTIME"
        start = words[1] if _digits(words[1]) else ""
        return Record(name, port, pid, words[0], start=start, ports=(port,), format="legacy")
    raise BadRecord("unknown record format (%d words, first %r)" % (len(words), words[0][:20]))


def judge(rec: Record, proc: Optional[Proc]) -> Optional[str]:
    """None when the recorded session is alive; else why its record is stale.

    The start time decides (a pid is recycled after a session ends). A record without
    one (the session could not read /proc) is trusted while its pid is a session process.
    """
    if proc is None:
        return "session pid %d is gone" % rec.pid
    if proc.state.startswith("Z"):
        return "session pid %d has exited (zombie)" % rec.pid
    if rec.start and rec.start != "0":
        if proc.start != rec.start:
            return "pid %d was recycled (start time %s, recorded %s)" % (rec.pid, proc.start, rec.start)
        return None
    if is_session_process(proc.cmdline):
        return None
    return "pid %d is not an ssh session process now (%r), and the record has no start time" % (
        rec.pid, proc.cmdline[:40])


def is_session_process(cmdline: str) -> bool:
    """OpenSSH's `sshd: USER@notty` (`sshd-session: ...` since 10.0) or a dropbear server process."""
    first = cmdline.split(" ", 1)[0]
    return cmdline.startswith(("sshd: ", "sshd-session: ")) or first.endswith("dropbear")


def since_from_start(start: str, boot_time: Optional[float], hz: int) -> Optional[int]:
    """A process start time in clock ticks after boot -> epoch seconds (None when unknown)."""
    if not start or not _digits(start) or start == "0" or not boot_time or hz <= 0:
        return None
    return int(boot_time + int(start) / hz)


def sessions(records: Sequence[Tuple[Record, bool]]) -> List[Session]:
    """(live record, owned by another user?) -> one Session per pid, start time and box, ports merged."""
    groups = {}  # type: Dict[Tuple[int, str, str], List[Tuple[Record, bool]]]
    for rec, foreign in records:
        groups.setdefault((rec.pid, rec.start, rec.box), []).append((rec, foreign))
    out = []
    for (pid, start, _), group in groups.items():
        group.sort(key=lambda rf: rf[0].name)
        first = group[0][0]
        ports = sorted({p for rec, _ in group for p in (rec.port,) + rec.ports})
        since = min((rec.since for rec, _ in group if rec.since is not None), default=None)
        out.append(Session(pid, start, first.box, first.host, first.tunnel, since, tuple(ports), first.format,
                           tuple(rec.name for rec, _ in group), any(f for _, f in group), first.extra))
    out.sort(key=lambda s: (s.box, s.ports, s.pid))
    return out


def collisions(found: Sequence[Session]) -> List[str]:
    """One line per port recorded by more than one box: only one of them can hold it."""
    by_port = {}  # type: Dict[int, List[str]]
    for s in found:
        for p in s.ports:
            if s.box not in by_port.setdefault(p, []):
                by_port[p].append(s.box)
    return ["port %d is recorded by %d boxes (%s): only one can hold it; give each box its own port "
            "(or port 0: the hub picks)" % (p, len(boxes), ", ".join(boxes))
            for p, boxes in sorted(by_port.items()) if len(boxes) > 1]


def parse_ssh_connection(value: str) -> Optional[Tuple[str, int]]:
    """SSH_CONNECTION "CLIENT_IP CLIENT_PORT SERVER_IP SERVER_PORT" -> (client ip, client port)."""
    parts = value.split()
    if len(parts) != 4 or not _digits(parts[1]) or not _WORD.match(parts[0]) or len(parts[0]) > 45:
        return None
    return parts[0], int(parts[1])


# --- the document -------------------------------------------------------------
def document(found: Sequence[Session], verdicts: Dict[int, Tuple[str, str]],
             clients: Dict[int, Tuple[str, int]], reaped: Sequence[Tuple[str, str]],
             problems: Sequence[Tuple[str, str]], state_dir: str, now: float) -> dict:
    """Everything `hub --json` prints (docs/hub.md#the-json-document): one stable shape.

    verdicts: port -> (probe verdict, detail); clients: session pid -> (ip, port);
    reaped / problems: (file name, why)."""
    rows, ports, down = [], 0, 0
    for s in found:
        fwd = []
        for p in s.ports:
            verdict, detail = verdicts.get(p, ("not-probed", ""))
            up = verdict in HEALTHY
            fwd.append({"port": p, "up": up, "verdict": verdict, "detail": detail})
            ports += 1
            down += not up
        client = clients.get(s.pid)
        rows.append({"box": s.box, "host": s.host, "tunnel": s.tunnel, "pid": s.pid, "since": s.since,
                     "client": client[0] if client else None, "client_port": client[1] if client else None,
                     "record": s.format, "foreign": s.foreign, "files": list(s.names),
                     "extra": dict(s.extra), "forwards": fwd, "up": all(f["up"] for f in fwd)})
    return {"format": DOC_FORMAT, "time": int(now), "state_dir": state_dir, "sessions": rows,
            "reaped": [{"file": n, "why": w} for n, w in reaped],
            "problems": [{"file": n, "problem": w} for n, w in problems],
            "summary": {"sessions": len(rows), "forwards": ports, "down": down, "reaped": len(reaped),
                        "problems": len(problems)}}


def any_down(doc: dict) -> bool:
    return doc["summary"]["down"] > 0


def _utc(epoch) -> str:
    return "-" if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))


def render(doc: dict) -> str:
    """The table `sshkeep hub` prints: one row per session, then a summary and the reaped records."""
    rows = [("BOX", "HOST", "TUNNEL", "PID", "SINCE (UTC)", "CLIENT", "FORWARDS")]
    for s in doc["sessions"]:
        client = "-" if s["client"] is None else (
            "[%s]:%s" % (s["client"], s["client_port"]) if ":" in s["client"] else
            "%s:%s" % (s["client"], s["client_port"]))
        fwd = ", ".join("%d up" % f["port"] if f["up"] else "%d DOWN (%s)" % (f["port"], f["verdict"])
                        for f in s["forwards"])
        rows.append((s["box"], s["host"], s["tunnel"], str(s["pid"]), _utc(s["since"]), client, fwd))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    if doc["sessions"]:
        out = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    n = doc["summary"]
    line = "%d session%s, %d forward%s, %d down" % (
        n["sessions"], "" if n["sessions"] == 1 else "s", n["forwards"], "" if n["forwards"] == 1 else "s",
        n["down"])
    down = ["%s port %d: %s" % (s["box"], f["port"], f["detail"] or f["verdict"])
            for s in doc["sessions"] for f in s["forwards"] if not f["up"]]
    out.append(line + (": " + "; ".join(down) if down else ""))
    for r in doc["reaped"]:
        out.append("reaped %s: %s" % (r["file"], r["why"]))
    return "\n".join(map(printable, out)) + "\n"  # a file name or banner must not drive the terminal


# --- Prometheus text exposition (node_exporter's textfile collector) ----------
def escape_label(value: str) -> str:
    """A label value per the exposition format: backslash, double quote and newline escaped; other
    control characters as text (\\\\x1b), since the format has no other escapes."""
    return printable(str(value).replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n"), "\\\\")


def _labels(pairs) -> str:
    return "{%s}" % ",".join('%s="%s"' % (k, escape_label(v)) for k, v in pairs)


def prometheus(doc: dict) -> str:
    """sshkeep_tunnel_up / sshkeep_tunnel_since_seconds per box and port, sshkeep_hub_sessions.

    One sample per (box, port): two live sessions of one box on one port (the old one not yet
    ended by the server) would otherwise repeat a label set, which a scrape rejects whole."""
    seen = {}  # type: Dict[Tuple[str, int], Tuple[dict, dict]]
    for s in doc["sessions"]:
        for f in s["forwards"]:
            key = (s["box"], f["port"])
            old = seen.get(key)
            if old is None or (s["since"] or 0) > (old[0]["since"] or 0):
                seen[key] = (s, f)
    up, since = [], []
    for (box, port), (s, f) in sorted(seen.items()):
        labels = _labels((("box", box), ("host", s["host"]), ("tunnel", s["tunnel"]), ("port", port)))
        up.append("sshkeep_tunnel_up%s %d" % (labels, 1 if f["up"] else 0))
        if s["since"] is not None:
            since.append("sshkeep_tunnel_since_seconds%s %d" % (labels, s["since"]))
    out = ["# HELP sshkeep_tunnel_up 1 if the box's remote forward answers on the hub now, else 0.",
           "# TYPE sshkeep_tunnel_up gauge"] + up + [
           "# HELP sshkeep_tunnel_since_seconds Unix time the box's current session began.",
           "# TYPE sshkeep_tunnel_since_seconds gauge"] + since + [
           "# HELP sshkeep_hub_sessions Live tunnel sessions recorded by boxes on this hub.",
           "# TYPE sshkeep_hub_sessions gauge",
           "sshkeep_hub_sessions %d" % doc["summary"]["sessions"]]
    return "\n".join(out) + "\n"
