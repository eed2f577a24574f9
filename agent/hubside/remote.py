"""What the agent sends to the hub, and what it makes of the answers: pure builders and interpreters.

The programs that run on the hub are files of their own (agent/hubside/programs/, sent minified:
agent.hubside.payload); their README holds the exit-code table (80-93), the numbered assumptions
about the server and the responder's request grammar. Here: the commands and request lines that
carry them, with every value validated, and the functions that read what comes back.

The supervisor and the checks run these commands as the remote command of an ssh exec
(`ssh ... HOST COMMAND`, `dbclient ... HOST COMMAND`) under their own timeout and hand the outcome
back to the `interpret_*` functions here. Nothing here spawns ssh or opens a socket; the in-band
loop check is box-side socket I/O: agent.run.loop.

Quoting: every remote command is `exec sh -c SCRIPT NAME ARG...` where SCRIPT is one of the
programs and each ARG is a validated value passed through shlex.quote's rule: no configuration
text is ever part of the script itself.
"""

from __future__ import annotations

import re


from agent.core import values
from agent.hubside import payload

if False:  # annotations only: importing typing would cost the agent 0.5 MB of memory
    from typing import List, Optional, Sequence, Tuple

_UNSAFE = re.compile(r"[^\w@%+=:,./-]", re.ASCII).search


def quote(s):
    """shlex.quote, the same rule: the shlex module would cost the resident agent ~30 KB."""
    if not s:
        return "''"
    if _UNSAFE(s) is None:
        return s
    return "'" + s.replace("'", "'\"'\"'") + "'"


# --- the exit-code table (programs/README.md) --------------------------------
CHECK_OK = 80
CHECK_REFUSED = 81
CHECK_CLOSED = 82
CHECK_NO_ANSWER = 83
CHECK_MISMATCH = 84
CHECK_NO_INTERPRETER = 85
CHECK_ERROR = 86
RECLAIM_DONE = 90
RECLAIM_NOTHING = 91
RECLAIM_NOT_OURS = 92
RECLAIM_HELD = 93

# --- verdicts ----------------------------------------------------------------
REFUSED = "refused"           # these three are agent.run.probe's words too (tests/unit/test_remote.py)
CLOSED = "closed"
ERROR = "error"
OK = "ok"
NO_ANSWER = "no-answer"
MISMATCH = "mismatch"
NO_INTERPRETER = "no-interpreter"
UNREACHABLE = "unreachable"   # ssh itself failed or timed out: not a verdict on the forward
NO_COMMAND = "no-command"     # the server ran something else (forced command, no shell, nologin)
RECLAIMED = "reclaimed"
NOTHING = "nothing"
NOT_OURS = "not-ours"
HELD = "held"                 # another live session (another box, or one this agent cannot prove its own)
CHECK_VERDICTS = {
    CHECK_OK: OK, CHECK_REFUSED: REFUSED, CHECK_CLOSED: CLOSED, CHECK_NO_ANSWER: NO_ANSWER,
    CHECK_MISMATCH: MISMATCH, CHECK_NO_INTERPRETER: NO_INTERPRETER, CHECK_ERROR: ERROR,
}
RECLAIM_VERDICTS = {RECLAIM_DONE: RECLAIMED, RECLAIM_NOTHING: NOTHING, RECLAIM_NOT_OURS: NOT_OURS,
                    RECLAIM_HELD: HELD}

CHECK_MARKER = "sshkeep-check"
READY_MARKER = "sshkeep-ready"
RECLAIM_MARKER = "sshkeep-reclaim"
ANSWER_MARKER = "sshkeep-answer"
GONE_MARKER = "sshkeep-gone"
DEFAULT_STATE_DIR = "$HOME/.sshkeep"
INTERPRETERS = ("python3", "python", "perl", "bash", "nc")
CLIENT_FAILURE = {"openssh": 255, "dropbear": 1}


# --- the programs (agent/hubside/programs/, minified by payload) ------------------------------
# one line each (assumption 1): Python as a literal for exec, the others minified to one line
PY_CHECK = "exec(%r)" % payload.CHECK_PY
PERL_CHECK = payload.CHECK_PL
BASH_CHECK = payload.CHECK_BASH
# the responders: each language's check first (ck), then the request loop
PY_RESPONDER = "exec(%r)" % (payload.CHECK_PY + payload.RESPONDER_PY)
PERL_RESPONDER = payload.CHECK_PL + " " + payload.RESPONDER_PL
SH_RESPONDER = "CK=%s BA=%s; %s" % (quote(payload.CHECK_SH), quote(payload.CHECK_BASH), payload.RESPONDER_SH)


# --- validation --------------------------------------------------------------
_OWNER_OK = re.compile(r"\A[A-Za-z0-9._@:+-]{1,64}\Z")
_PATH_OK = re.compile(r"\A[A-Za-z0-9._/+@-]{1,200}\Z")


def _port(port) -> int:
    if not isinstance(port, int):  # a number here, never text: this goes into a shell line
        raise ValueError("not a port (1-65535): %r" % (port,))
    return values.port(port)  # values.Bad is a ValueError


def check_addresses(bind: str) -> List[str]:
    """The server-side addresses a check of a -R listen address connects to.

    '' and 'localhost' -> 127.0.0.1 and ::1 (OpenSSH binds both; the forward
    is up if either answers); '*' / '0.0.0.0' -> 127.0.0.1; '::' -> ::1; an IP
    literal -> exactly that address (a dropbear server may have quietly taken
    [::1]:P when 127.0.0.1:P was held by someone else: test what was asked).
    Anything else raises ValueError: it never reaches a shell.
    """
    if bind in ("", "localhost"):
        return ["127.0.0.1", "::1"]
    if bind in ("*", "0.0.0.0"):
        return ["127.0.0.1"]
    if bind in ("::", "[::]"):
        return ["::1"]
    if bind.startswith("[") and bind.endswith("]"):
        bind = bind[1:-1]
    if not values.is_ip_literal(bind) or "%" in bind:
        raise ValueError("bind address must be an IP literal or 'localhost': %r" % bind)
    return [bind]


def _dir_word(state_dir: str) -> str:
    """The state directory as one shell word; only a leading $HOME expands remotely."""
    for prefix in ("$HOME/", "${HOME}/"):
        if state_dir.startswith(prefix):
            rest = state_dir[len(prefix):]
            if not _PATH_OK.match(rest) or ".." in rest.split("/"):
                raise ValueError("bad state directory: %r" % state_dir)
            return '"$HOME"/' + quote(rest)
    if not state_dir.startswith("/") or not _PATH_OK.match(state_dir) or ".." in state_dir.split("/"):
        raise ValueError("state directory must be absolute or start with $HOME/: %r" % state_dir)
    return quote(state_dir)


def _owner(owner: str) -> str:
    owner = owner or "sshkeep"
    if not _OWNER_OK.match(owner):
        raise ValueError("owner token must match [A-Za-z0-9._@:+-]{1,64}: %r" % owner)
    return owner


def _seconds(value, what) -> str:
    value = float(value)
    if not 0 < value <= 300:
        raise ValueError("%s out of range (0, 300]: %r" % (what, value))
    return "%.3f" % value


def _sh(script: str, name: str, args: Sequence[str]) -> str:
    return " ".join(["exec sh -c", quote(script), name] + [quote(a) for a in args])


# --- builders -----------------------------------------------------------------
def check_command(
    bind: str,
    port: int,
    banner: Optional[str],
    timeout: float,
    grace: float = 0.3,
    interpreters: Sequence[str] = INTERPRETERS,
) -> str:
    """The ssh-exec command that checks a -R forward's listen address on the server.

    Exits with one CHECK_* code and prints `sshkeep-check CODE INTERPRETER
    ADDRESS` as its last line. `timeout` bounds each address (two for ''/
    'localhost', tried in turn, so the command takes up to twice `timeout`
    plus interpreter start-up; a busybox nc banner check takes T+1 s per
    address): run it under a caller timeout of 2*timeout + 3 s + ssh's
    connect time. `interpreters` is the order of preference (subset of
    INTERPRETERS; "nc" means busybox nc).
    """
    addrs = check_addresses(bind)
    hexed = (banner or "").encode("utf-8").hex()
    if len(hexed) > 512:
        raise ValueError("banner longer than 256 bytes")
    order = [i for i in interpreters]
    if not order or any(i not in INTERPRETERS for i in order):
        raise ValueError("interpreters must be a non-empty subset of %s" % (INTERPRETERS,))
    args = [" ".join(addrs), str(_port(port)), hexed, _seconds(timeout, "timeout"),
            _seconds(grace, "grace"), " ".join(order), PY_CHECK, PERL_CHECK, BASH_CHECK]
    return _sh(payload.CHECK_SH, "sshkeep-check", args)


def check_budget(bind: str, timeout: float) -> float:
    """Seconds the server side of check_command may take (add ssh's own connect time)."""
    return len(check_addresses(bind)) * (float(timeout) + 1.0) + 1.0


def session_command(ports: Sequence[int], state_dir: str = DEFAULT_STATE_DIR, owner: str = "",
                    host: str = "", tunnel: str = "", responder: bool = False) -> str:
    """The remote command a tunnel runs instead of -N, so a stale listener can be reclaimed.

    It records its parent (the session process holding the -R listeners) in
    STATE_DIR/rport-PORT-PID (one `v1 box=... ` line, docs/hub-records.md),
    prints `sshkeep-ready PID ok|nostate STARTTIME` and waits until its stdin
    closes. The ssh client's stdin must therefore be a pipe the agent keeps
    open (not /dev/null, not -n): when the agent closes it the session ends
    cleanly. `owner` is the box identity (agent.run.identity); `host` and
    `tunnel` are recorded for people, folded to ASCII words (any text works).
    With `responder`, the ready line names the responder the session runs
    (`python3`, `python`, `perl`, `sh`): send `responder_source(NAME)` on
    stdin once, then requests (`request_line`).
    """
    ports = [str(_port(p)) for p in ports]  # none: every -R port is picked by the hub (`port N` lines)
    more = ["--", str(len(PERL_RESPONDER) + 1)] if responder else []
    return " ".join(["exec sh -c", quote(payload.SESSION_SH), "sshkeep-session", _dir_word(state_dir)]
                    + [quote(w) for w in (_owner(owner), values.word(host or "-"),
                                                 values.word(tunnel or "-"))] + ports + more)


RESPONDERS = ("python3", "python", "perl", "sh")


def responder_source(name: str) -> bytes:
    """What starts the session's responder on its stdin: the `sshkeep-responder` line, then its
    program as one line (a constant of this module)."""
    text = PERL_RESPONDER if name == "perl" else SH_RESPONDER if name == "sh" else PY_RESPONDER
    if name not in RESPONDERS:
        raise ValueError("no responder %r" % name)
    return ("sshkeep-responder\n" + text + "\n").encode("ascii")


def request_line(rid: int, verb: str, bind: str = "", port: int = 0, banner: Optional[str] = None,
                 timeout: float = 0.0, grace: float = 0.3) -> bytes:
    """One request to the session's responder: `ID ping`, `ID count`, `ID check ADDRS PORT HEX T G`.

    Every word is validated here (ValueError otherwise); the responder checks them again."""
    rid = _int(rid, "request id")
    if rid > 10 ** 12 - 1:
        raise ValueError("request id too large")
    if verb in ("ping", "count"):
        return ("%d %s\n" % (rid, verb)).encode("ascii")
    if verb != "check":
        raise ValueError("unknown request %r" % verb)
    hexed = (banner or "").encode("utf-8").hex()
    if len(hexed) > 512:
        raise ValueError("banner longer than 256 bytes")
    return ("%d check %s %d %s %s %s\n" % (rid, ",".join(check_addresses(bind)), _port(port), hexed or "-",
                                          _seconds(timeout, "timeout"), _seconds(grace, "grace"))).encode("ascii")


def parse_answer(line: str) -> Optional[Tuple[int, List[str]]]:
    """`sshkeep-answer ID WORD...` -> (ID, [WORD...]); None for any other line."""
    parts = line.split()
    if len(parts) >= 3 and parts[0] == ANSWER_MARKER and parts[1].isdigit() and len(parts[1]) <= 12:
        return int(parts[1]), parts[2:]
    return None


def answer_verdict(words: Sequence[str]) -> Tuple[str, str]:
    """The words of a check answer -> (verdict, 'python3 127.0.0.1' for the log); ERROR if malformed."""
    if len(words) == 4 and words[0] == "check" and words[1].isdigit() and int(words[1]) in CHECK_VERDICTS:
        return CHECK_VERDICTS[int(words[1])], "%s %s" % (words[2], words[3])
    return ERROR, "bad answer %r" % " ".join(words)[:80]


def parse_gone(line: str) -> Optional[str]:
    """`sshkeep-gone INTERPRETER RC` (the session's responder failed) -> 'python3 exited 1', else None."""
    parts = line.split()
    if len(parts) == 3 and parts[0] == GONE_MARKER:
        return "%s exited %s" % (parts[1], parts[2])
    return None


def ready_responder(line: str) -> Optional[str]:
    """The responder a ready line names (`sshkeep-ready PID ok START python3`), or None."""
    parts = line.split()
    if len(parts) >= 5 and parts[0] == READY_MARKER and parts[4] in RESPONDERS:
        return parts[4]
    return None


def reclaim_command(port: int, state_dir: str = DEFAULT_STATE_DIR, owner: str = "",
                    pid: Optional[int] = None, start: Optional[str] = None) -> str:
    """The ssh-exec command that ends this box's own stale session holding `port` on the server.

    Only the session `pid` with `start` (as its ready line announced) and
    recorded under `owner` may be ended; without them nothing is. Prints one
    `sshkeep-reclaim ended PID` per session it ended, `sshkeep-reclaim held
    PID BOX SINCE HOST TUNNEL` for each other live session registered for the
    port, and a last line `sshkeep-reclaim CODE`; exits RECLAIM_DONE /
    RECLAIM_HELD / RECLAIM_NOT_OURS / RECLAIM_NOTHING. At most about 3 s.
    """
    want_pid = "-" if pid is None else str(_int(pid, "pid"))
    want_start = "-" if start is None else str(_int(start, "start time"))
    return " ".join(["exec sh -c", quote(payload.RECLAIM_SH), "sshkeep-reclaim",
                     _dir_word(state_dir), quote(_owner(owner)), str(_port(port)), want_pid, want_start])


def _int(value, what) -> int:
    text = str(value)
    if not text.isdigit() or not text.isascii() or len(text) > 20:
        raise ValueError("%s must be a non-negative integer: %r" % (what, value))
    return int(text)


# --- interpreters -------------------------------------------------------------
def _no_marker_verdict(returncode, stderr, timed_out, client_kind):
    if timed_out or returncode is None or returncode < 0:
        return UNREACHABLE
    if returncode == CLIENT_FAILURE.get(client_kind, 255):
        # dbclient's own failures all say "Exited:" / "exited:" (whatever its argv[0], e.g. `ssh`
        # on OpenWrt); an exit 1 with other text came from the server's side (e.g. nologin)
        if client_kind == "dropbear" and stderr.strip() and "xited" not in stderr:
            return NO_COMMAND
        return UNREACHABLE
    if client_kind == "" and returncode in CLIENT_FAILURE.values():
        return UNREACHABLE
    return NO_COMMAND


def interpret_check(returncode: Optional[int], stdout: str, stderr: str, timed_out: bool,
                    client_kind: str = "openssh") -> str:
    """Turn an ssh exec of check_command into a verdict.

    The last `sshkeep-check CODE` line decides when present (it proves our
    script ran). Without it: ssh's own failure (255 OpenSSH, 1 dbclient) or
    our timeout -> UNREACHABLE ("could not reach the server", not "forward
    dead"); one of our codes -> that verdict; anything else -> NO_COMMAND (a
    forced command, nologin, a shell that is not POSIX).
    """
    code = None
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == CHECK_MARKER and parts[1].isdigit():
            code = int(parts[1])
    if code in CHECK_VERDICTS:
        return CHECK_VERDICTS[code]
    if not timed_out and returncode in CHECK_VERDICTS:
        return CHECK_VERDICTS[returncode]
    return _no_marker_verdict(returncode, stderr, timed_out, client_kind)


def interpret_reclaim(returncode: Optional[int], stdout: str, stderr: str, timed_out: bool,
                      client_kind: str = "openssh") -> Tuple[str, Optional[int]]:
    """Turn an ssh exec of reclaim_command into (verdict, pid ended or None)."""
    code, pid = None, None
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == RECLAIM_MARKER:
            if parts[1].isdigit():
                code = int(parts[1])
            elif parts[1] == "ended" and len(parts) > 2 and parts[2].isdigit() and pid is None:
                pid = int(parts[2])
    if code is None and not timed_out and returncode in RECLAIM_VERDICTS:
        code = returncode
    if code in RECLAIM_VERDICTS:
        return RECLAIM_VERDICTS[code], pid
    return _no_marker_verdict(returncode, stderr, timed_out, client_kind), None


def reclaim_holders(stdout: str) -> List[dict]:
    """The `held` lines of a reclaim: [{pid, box, since (hub epoch or None), host, tunnel}]."""
    out = []
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 7 and parts[0] == RECLAIM_MARKER and parts[1] == "held" and parts[2].isdigit():
            # the hub's words go to our log: folded, so a planted record cannot carry escapes
            out.append({"pid": int(parts[2]), "box": values.word(parts[3]),
                        "since": int(parts[4]) if parts[4].isdigit() and parts[4].isascii() else None,
                        "host": values.word(parts[5]), "tunnel": values.word(parts[6])})
    return out


def parse_ready(line: str) -> Optional[Tuple[int, bool, Optional[str]]]:
    """`sshkeep-ready PID ok|nostate [STARTTIME]` -> (pid, state recorded?, start time or None);
    None for any other line."""
    parts = line.split()
    if len(parts) >= 2 and parts[0] == READY_MARKER and parts[1].isdigit():
        start = parts[3] if len(parts) > 3 and parts[3].isdigit() and parts[3] != "0" else None
        return int(parts[1]), (len(parts) < 3 or parts[2] == "ok"), start
    return None


_FORWARD_FAILED = (
    re.compile(r"remote port forwarding failed for listen port (\d+)"),    # OpenSSH ssh
    re.compile(r"Remote TCP forward request failed \(port (\d+)"),        # dbclient 2022.83
)


def failed_listen_port(stderr: str) -> Optional[int]:
    """The -R listen port a client said it could not bind on the server (the port to reclaim), or None.

    Measured: OpenSSH "Error: remote port forwarding failed for listen port 20022"; dbclient
    "dbclient: Connection to u@h:22 exited: Remote TCP forward request failed (port 20022 -> 127.0.0.1:8080)".
    """
    for pattern in _FORWARD_FAILED:
        m = pattern.search(stderr)
        if m:
            return int(m.group(1))
    return None
