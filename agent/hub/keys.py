"""The hub's keys file and the forced command it names (docs/hub.md, "Many boxes, one user").

`sshkeep hub enroll | revoke | sshd-config` write and print it; `sshkeep hub serve --box ID --listen
PORT...` is what sshd runs for every exec (and subsystem) of an enrolled key. The server names the
client (style.md 13, as gitolite does): the ID and the ports come from the operator's line, never
from the box. What OpenSSH's key options allow (measured on 9.2, field notes): `restrict` alone still
runs any command, `port-forwarding` turns -R *and* -L back on, `permitlisten` governs only -R, and a
permitopen/permitlisten of port 0 or `none` makes sshd drop the whole line.

The box sends what it always sent (agent.hubside.remote), `exec sh -c SCRIPT NAME ARG...`, which
arrives in SSH_ORIGINAL_COMMAND; only NAME picks the verb and the ARGs are read as data; SCRIPT is
never run, so a box of any version needs no new flag:

    sshkeep-session DIR BOX HOST TUNNEL PORT... [-- N]   records, the ready line, the responder
    sshkeep-reclaim DIR BOX PORT PID START               this box's own stale session (reclaim.sh)
    sshkeep-check ADDRS PORT HEX T G ...                 a one-shot check of a forward

DIR and BOX from the box are ignored; every PORT must be the box's own and every address the hub's
loopback, else exit 64 and nothing runs. The checks are the Python the box would have sent
(hubside/programs/check.py.in, responder.py.in) run from the pyz, `ck` narrowed to the box's ports;
the reclaim is reclaim.sh with the enrolled ID and checked numbers as its positional arguments.
"""

import os
import re
import signal
import sys
import time

from agent.core import values
from agent.errors import EX_CANTCREAT, EX_DATAERR, EX_NOINPUT, EX_USAGE, SshkeepError, UsageError
from agent.hubside import payload
from agent.run import procs
from agent.run.state import write_file

BOX_OK = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")   # not starting with '-': an argv word
PATH_OK = re.compile(r"/[A-Za-z0-9_./+-]{0,200}\Z")       # inside command="...": no quote, no space
# -L is never needed (every check runs on the hub), but `port-forwarding` allows it and a key without
# permitopen may -L anywhere: TEST-NET-1 reaches nothing
NO_OPEN = 'permitopen="192.0.2.1:9"'
LOOPBACK = ("127.0.0.1", "::1")
SERVE = " hub serve --box "
USAGE = ("usage: sshkeep hub enroll --box ID --listen [ADDR:]PORT... [--keys-file FILE] PUBKEY_FILE | "
         "revoke --box ID --keys-file FILE | sshd-config --user USER [--keys-dir DIR]")


def flags(argv, multi=(), one=0):
    """`--name VALUE` pairs -> {name: value, or [values] for `multi`}, and `one` last positional words."""
    out, rest = {}, list(argv[len(argv) - one:] if one else ())
    it = iter(argv[:len(argv) - one])
    for f in it:
        v = next(it, None)
        if not f.startswith("--") or v is None or (f in out and f not in multi):
            raise UsageError("bad argument %r; %s" % (f[:40], USAGE))
        out.setdefault(f, []).append(v) if f in multi else out.__setitem__(f, v)
    return out, rest


def box_id(text):
    if not BOX_OK.match(text or ""):
        raise UsageError("box ID %r: 1-64 of A-Z a-z 0-9 _ . - (not starting with _ . -)" % text)
    return text


def listen(text):
    """[ADDR:]PORT -> (ADDR, PORT); ADDR an IP literal or localhost, default 127.0.0.1."""
    addr, _, port = text.rpartition(":")
    addr = addr.strip("[]") or "127.0.0.1"
    try:
        if addr != "localhost" and not values.is_ip_literal(addr):
            raise ValueError
        return addr, values.port(port)
    except ValueError:
        raise UsageError("--listen %s: give [IP:]PORT, PORT 1-65535" % text)


def public_key(path, text):
    """The key file's one line -> 'TYPE BASE64' (the comment dropped); exit 65 otherwise."""
    import base64
    w = text.split()
    try:
        ok = len(text.strip().splitlines()) == 1 and values.is_public_key(w[0].encode()) and \
            base64.b64decode(w[1], validate=True)[4:4 + len(w[0])] == w[0].encode()
    except (IndexError, ValueError):
        ok = False
    if not ok:
        raise SshkeepError("%s is %s: give the box's .pub file (ssh-keygen -y -f KEY; dropbearkey -y -f KEY)" % (
            path, "a private key" if "PRIVATE" in text else "not one OpenSSH public key line"), EX_DATAERR)
    return w[0] + " " + w[1]


def key_line(box, listens, key, python="/usr/bin/python3", pyz="/usr/local/lib/sshkeep/sshkeep.pyz"):
    """The authorized_keys line of one box: its ports for -R, no -L, its own `hub serve`."""
    if not (PATH_OK.match(python) and PATH_OK.match(pyz)):
        raise UsageError("--python, --pyz: absolute paths of A-Z a-z 0-9 _ . / + -")
    cmd = "%s -I %s%s%s" % (python, pyz, SERVE, box) + "".join(" --listen %d" % p for _, p in listens)
    opts = ["restrict", "port-forwarding"] + ['permitlisten="%s:%d"' % a for a in listens]
    return ",".join(opts + [NO_OPEN, 'command="%s"' % cmd]) + " %s sshkeep:%s" % (key, box)


def enrolled(line):
    """The box ID a keys-file line was enrolled for, or None."""
    m = re.search(SERVE + r"(\S+)", line)
    return m and m.group(1)


def enroll_lines(lines, box, ports, key, new, where):
    """The file's lines with box's line added or replaced in place; refuses a port or key another line holds."""
    for line in lines:
        other = enrolled(line)
        if other == box:
            continue
        taken = set(ports) & {int(p) for p in re.findall(r'permitlisten="[^"]*:(\d+)"', line)}
        if taken or " %s " % key in " %s " % line:
            raise SshkeepError("%s: %s already enrolled for %s: give another --listen port or key, or revoke "
                               "that box first" % (where, "port %d is" % min(taken) if taken else "this key is",
                                                    "box " + other if other else "another line"), EX_DATAERR)
    out = [new if enrolled(line) == box else line for line in lines]
    return out if new in out else out + [new]


def _read(path, missing_ok=False):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        if missing_ok:
            return ""
        raise SshkeepError("%s: no such file" % path, EX_NOINPUT)
    except (OSError, UnicodeError) as e:
        raise SshkeepError("%s: cannot read: %s" % (path, e), EX_NOINPUT)


def sshd_config(user, keys_dir="/etc/ssh/sshkeep-keys"):
    """The sshd_config block for the boxes' user (a Match block: at the end of sshd_config)."""
    if not PATH_OK.match(keys_dir) or not re.match(r"[a-z_][a-z0-9_.-]{0,31}\Z", user):
        raise UsageError("sshd-config --user USER (a login name) [--keys-dir DIR (an absolute path)]")
    return "# sshkeep boxes: at the END of sshd_config, then sshd -t\nMatch User %s\n" % user + "".join(
        "    %s\n" % s for s in ("AuthorizedKeysFile %s/%%u" % keys_dir.rstrip("/"), "AllowTcpForwarding remote",
                                 "PermitOpen none", "GatewayPorts no", "PermitTTY no", "X11Forwarding no",
                                 "AllowAgentForwarding no", "AllowStreamLocalForwarding no", "PermitTunnel no",
                                 "PermitUserRC no", "ClientAliveInterval 15", "ClientAliveCountMax 3"))


def main(argv):
    """`sshkeep hub enroll | revoke | sshd-config ...`."""
    what = argv[:1]
    f, rest = flags(argv[1:], ("--listen",), 1 if what == ["enroll"] else 0)
    if what == ["sshd-config"]:
        print(sshd_config(f.pop("--user", ""), f.pop("--keys-dir", "/etc/ssh/sshkeep-keys")), end="")
        return 0 if not f else flags(["?"])
    box, path = box_id(f.pop("--box", "")), f.pop("--keys-file", None)
    old = _read(path, True) if path else ""
    lines = [l for l in old.splitlines() if l.strip()]
    if what == ["revoke"] and path and not f:
        out = [l for l in lines if enrolled(l) != box]
        if out == lines:
            sys.stderr.write("sshkeep: %s: box %s has no line: nothing to revoke\n" % (path, box))
    elif what == ["enroll"] and rest and "--listen" in f:
        listens = [listen(a) for a in f.pop("--listen")]
        key = public_key(rest[0], _read(rest[0]))
        new = key_line(box, listens, key, f.pop("--python", "/usr/bin/python3"),
                       f.pop("--pyz", "/usr/local/lib/sshkeep/sshkeep.pyz"))
        out = enroll_lines(lines, box, [p for _, p in listens], key, new, path)
        print(new) if not f else flags(["?"])
    else:
        raise UsageError(USAGE)
    text = "".join(l + "\n" for l in out)
    try:
        if path and text != old:
            write_file(path, text.encode(), mode=os.stat(path).st_mode & 0o777 if old else 0o644)
    except OSError as e:
        raise SshkeepError("%s: cannot write: %s (as root; the directory must exist)" % (path, e), EX_CANTCREAT)
    return 0


# --- hub serve: the forced command ------------------------------------------------------------------
# a word as remote.quote writes it: plain, '...' or "..." runs, glued ("$HOME"/.sshkeep, 'a'"'"'b')
_RUN = re.compile(r"""'([^']*)'|"([^"\\`]*)"|([^\s'"\\]+)|( +)""")


def words(text):
    """The shell words of a line of sshkeep's own quoting (no shlex: Debian's python3-minimal lacks it);
    nothing is expanded. ValueError for anything else (a backslash, a lone quote)."""
    out, cur, pos = [], None, 0
    while pos < len(text):
        m = _RUN.match(text, pos)
        if not m:
            raise ValueError("malformed")
        pos = m.end()
        if m.group(4):
            out, cur = out + [cur] * (cur is not None), None
        else:
            cur = (cur or "") + "".join(g for g in m.groups()[:3] if g)
    return out + [cur] * (cur is not None)


def parse_request(text, ports):
    """SSH_ORIGINAL_COMMAND -> ("session", [HOST, TUNNEL, responder?, PORT...]), ("reclaim", [PORT, PID,
    START]) or ("check", [ADDR..., PORT, HEX, T, G]); UsageError (64) for anything else: no command (a
    login), another program, a port that is not this box's, an address that is not loopback."""
    try:
        w = words(text or "")
        name, a = w[4], w[5:]
        if w[:3] != ["exec", "sh", "-c"]:
            raise ValueError("not sshkeep's")
        n = a.index("--") if "--" in a else len(a)
        mine = {"sshkeep-session": a[4:n], "sshkeep-reclaim": a[2:3], "sshkeep-check": a[1:2]}.get(name, "-")
        if not all(p.isdigit() and int(p) in ports for p in mine):
            raise ValueError("a port that is not this box's")
        if name == "sshkeep-session" and len(a) > 3:
            return "session", [values.word(a[2]), values.word(a[3]), n < len(a)] + [int(p) for p in mine]
        if name == "sshkeep-reclaim" and len(a) == 5 and all(x == "-" or x.isdigit() for x in a[3:]):
            return "reclaim", a[2:]
        t, g = float(a[3]), float(a[4])
        if name == "sshkeep-check" and set(a[0].split()) <= set(LOOPBACK) and 0 < t <= 300 and 0 < g <= 300:
            return "check", a[0].split() + [int(a[1]), bytes.fromhex(a[2]), t, g]
    except (ValueError, IndexError) as e:
        raise UsageError("this key runs only sshkeep's session, reclaim and check of its own ports (%s): "
                         "refused %r" % (type(e) is ValueError and e or "malformed", (text or "")[:40]))
    raise UsageError("this key runs only sshkeep's session, reclaim and check of its own ports: refused %r"
                     % (text or "")[:40])


def checker(ports):
    """check.py.in's `ck`, refusing (86, error) any port but the box's own and any address but loopback."""
    g = {"__name__": "sshkeep_check"}
    exec(payload.CHECK_PY.split("\nif len(sys.argv)")[0], g)
    ck = g["ck"]
    g["ck"] = lambda a, p, b, t, gr: ck(a, p, b, t, gr) if p in ports and a in LOOPBACK else 86
    return g


def session_pid():
    """The sshd session process that holds the box's listeners: our parent, or the login shell's
    when `sh -c COMMAND` did not exec (OpenSSH: `sshd: USER@notty`, 9.8+ `sshd-session: ...`)."""
    pid = os.getppid()
    for _ in range(3):
        if " ".join(procs.cmdline(pid) or ()).startswith(("sshd: ", "sshd-session: ")):
            return pid
        pid = int((procs.stat_fields(pid) or "01")[1])  # field 4 of stat: the parent
    return os.getppid()


def _stop(*_):
    raise SystemExit(0)


def session(box, host, tunnel, responder, ports, sdir, own):
    """What session.sh does, for an enrolled box: a record per port, the ready line, `port N` lines (its
    own ports only), then the responder until EOF; its records removed at the end (also on HUP, TERM)."""
    sp = session_pid()
    start = (procs.stat_fields(sp) or [0] * 20)[19]
    inp, made, ok = sys.stdin.buffer, set(), "ok"
    line = "v1 box=%s host=%s tunnel=%s start=%s since=%d ports=" % (box, host, tunnel, start, time.time())
    for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
        signal.signal(s, _stop)
    try:
        for n in range(1 << 20):
            try:
                os.makedirs(sdir, 0o700, exist_ok=True)
                for p in ports:
                    made.add(os.path.join(sdir, "rport-%d-%d" % (p, sp)))
                    write_file(os.path.join(sdir, "rport-%d-%d" % (p, sp)),
                               (line + ",".join(map(str, ports)) + "\n").encode(), mode=0o640)
            except OSError:
                ok = "nostate"
            if not n:
                print("sshkeep-ready %d %s %s%s" % (sp, ok, start, " python3" * responder), flush=True)
            w = []
            while w[:1] != [b"port"] or len(w) != 2 or not w[1].isdigit() or int(w[1]) not in own:
                w = inp.readline(600).split() or [b"EOF"]
                if w[0] == b"EOF" or w == [b"sshkeep-responder"] and responder:
                    break
            else:
                ports = sorted(set(ports) | {int(w[1])})
                continue
            break
        if w[0] == b"EOF" or not inp.readline(1 << 16).endswith(b"\n"):  # the program sent: never run
            return 0
        g = checker(own)
        g["I"], sys.argv = inp, ["-c", sdir, "python3"]
        exec(payload.RESPONDER_PY, g)
        return 0
    finally:
        for path in made:
            try:
                os.unlink(path)
            except OSError:
                pass


def serve(argv, environ=os.environ):
    """`hub serve --box ID --listen PORT... [--state-dir DIR]`: the request in SSH_ORIGINAL_COMMAND."""
    f, _ = flags(argv, ("--listen",))
    box, ports = box_id(f.pop("--box", "")), [listen(p)[1] for p in f.pop("--listen", ())]
    from agent.hub.scan import default_state_dir
    sdir = f.pop("--state-dir", None) or default_state_dir()
    if f or not ports:
        raise UsageError("hub serve: --box ID --listen PORT... (sshkeep hub enroll writes them)")
    verb, w = parse_request(environ.get("SSH_ORIGINAL_COMMAND"), ports)
    if verb == "session":
        return session(box, w[0], w[1], w[2], w[3:], sdir, ports)
    if verb == "reclaim":
        os.execvp("sh", ["sh", "-c", payload.RECLAIM_SH, "sshkeep-reclaim", sdir, box] + w)
    ck, code = checker(ports)["ck"], None
    for a in w[:-4]:
        r = ck(a, *w[-4:])
        if code is None or r == 80:
            code, at = r, a
        if r == 80:
            break
    print("sshkeep-check %d python3 %s" % (code, at))
    return code
