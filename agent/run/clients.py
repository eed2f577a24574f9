"""OpenSSH vs dropbear: detection and argv, in one place.

The two clients share flag letters with different meanings (`-y` is "accept
host key" to dbclient and "log to syslog" to OpenSSH; `-J` and `-W` differ
too), so each gets its own argv builder, and both build lists, never strings
for a shell. Detection is by behaviour (`-V` output, `dbclient -o help`),
never by file name: OpenWrt's /usr/bin/ssh is often dbclient.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess

from agent.core import values
from agent.errors import ClientError, SshkeepError, EX_CANTCREAT, EX_NOINPUT, EX_NOPERM, EX_UNAVAILABLE
from agent.run import identity
from agent.core.record import record
from agent.run.state import write_file

if False:  # annotations only: importing typing would cost the agent 0.5 MB of memory
    from typing import FrozenSet, List, Optional, Sequence

OPENSSH = "openssh"
DROPBEAR = "dropbear"


@record
class ClientInfo:
    kind: str                 # OPENSSH or DROPBEAR
    path: str
    version: str              # "9.2p1", "2022.83"
    options: FrozenSet[str] = frozenset()   # dropbear: -o names it accepts, lower-case

    def has_option(self, name: str) -> bool:
        return self.kind == OPENSSH or name.lower() in self.options


def parse_version(text: str):
    """(kind, version) from `-V` output, or None if neither client is recognised."""
    m = re.search(r"OpenSSH_([0-9][0-9A-Za-z.]*)", text)
    if m:
        return OPENSSH, m.group(1)
    m = re.search(r"Dropbear (?:SSH client )?v?([0-9]{4}\.[0-9]+)", text, re.I)
    if m:
        return DROPBEAR, m.group(1)
    return None


def parse_dropbear_options(text: str) -> FrozenSet[str]:
    """Names listed by `dbclient -o help` (one per line after 'Available options:')."""
    names = set()
    seen_header = False
    for line in text.splitlines():
        if "available options" in line.lower():
            seen_header = True
            continue
        word = line.strip()
        if seen_header and re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", word or "-"):
            names.add(word.lower())
    return frozenset(names)


# The names to look for on PATH, per --client. OpenWrt's `ssh` is often dbclient itself, so
# dropbear falls back to `ssh` (detect() then tells by behaviour); openssh never takes dbclient.
_NAMES = {"auto": ("ssh", "dbclient"), OPENSSH: ("ssh",), DROPBEAR: ("dbclient", "ssh")}


def find_client(path: str = "", env_path: Optional[str] = None, forced: str = "auto") -> str:
    """An explicit --ssh PATH, else the first client on PATH for `forced` (--client): auto
    takes ssh, then dbclient; dropbear takes dbclient, then ssh; openssh takes ssh."""
    if path:
        if os.sep not in path:
            found = _which(path, env_path)
            if not found:
                raise ClientError("ssh client %r not found on PATH; give its full path with --ssh" % path)
            return found
        if not os.path.exists(path):
            raise ClientError("ssh client %s does not exist; install openssh-client or dropbear, or fix --ssh" % path)
        if not os.access(path, os.X_OK):
            raise ClientError("ssh client %s is not executable (chmod +x, or fix --ssh)" % path)
        return path
    for name in _NAMES.get(forced, _NAMES["auto"]):
        found = _which(name, env_path)
        if found:
            return found
    if forced == DROPBEAR:
        raise ClientError("--client dropbear: no dbclient on PATH; install dropbear, or give --ssh PATH")
    if forced == OPENSSH:
        raise ClientError("--client openssh: no ssh on PATH; install openssh-client, or give --ssh PATH")
    raise ClientError("no ssh client found: install openssh-client (or dropbear's dbclient), or give --ssh PATH")


def _which(name, env_path=None):
    for d in (env_path if env_path is not None else os.environ.get("PATH", "/usr/bin:/bin")).split(os.pathsep):
        cand = os.path.join(d or ".", name)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def _run(argv: Sequence[str], timeout: float = 5.0) -> str:
    """Run a short probe of the client; output of both streams. Bounded."""
    try:
        proc = subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout, start_new_session=True)
    except subprocess.TimeoutExpired:
        raise ClientError("%s did not answer `%s` within %ss" % (argv[0], " ".join(argv[1:]), timeout))
    except OSError as exc:
        raise ClientError("cannot run ssh client %s: %s" % (argv[0], exc.strerror or exc))
    return proc.stdout.decode("utf-8", "replace")


def detect(path: str = "", forced: str = "auto", runner=_run) -> ClientInfo:
    """Identify the client at `path` (or on PATH) by what it prints."""
    given = path
    path = find_client(path, forced=forced)
    out = runner([path, "-V"])
    found = parse_version(out)
    if found is None:
        if forced in (OPENSSH, DROPBEAR):
            found = (forced, "unknown")
        else:
            first = out.strip().splitlines()[0] if out.strip() else "(nothing)"
            raise ClientError("%s is neither OpenSSH nor dropbear (`-V` printed: %s); use --client" % (path, first[:120]))
    kind, version = found
    if forced in (OPENSSH, DROPBEAR) and forced != kind:
        hint = "" if given else "; install %s or give --ssh PATH" % (
            "dropbear (no dbclient on PATH)" if forced == DROPBEAR else "openssh-client")
        raise ClientError("--client %s given, but %s is %s %s%s" % (forced, path, kind, version, hint))
    options = frozenset()
    if kind == DROPBEAR:
        options = parse_dropbear_options(runner([path, "-o", "help"]))
    return ClientInfo(kind, path, version, options)


# --- argv -----------------------------------------------------------------

def _destination_checks(tunnel):
    # Neither client may see a host that looks like an option; dbclient also
    # reads "host/port" and "h1,h2" (multi-hop) from the host argument.
    for value, what in ((tunnel.host, "host"), (tunnel.user, "user")):
        if value.startswith("-") or any(c in value for c in " ,/\t\n'\"`$;&|<>") :
            raise SshkeepError("%s %r is not valid (no leading '-', spaces, ',', '/' or shell characters)" % (what, value), 65)


_ALLOCATED = re.compile(r"Allocated port (\d+) for remote forward to (\S+)")


def allocated_port(line: str):
    """(port, "host:hostport") from a client's report of a hub-picked -R port, else None.

    Measured: OpenSSH 9.2 "Allocated port 46271 for remote forward to 127.0.0.1:22" and
    dbclient 2022.83 "dbclient: Allocated port 38681 for remote forward to 127.0.0.1:22",
    against OpenSSH and dropbear servers alike."""
    m = _ALLOCATED.search(line)
    if m and 0 < int(m.group(1)) < 65536:
        return int(m.group(1)), m.group(2)
    return None


def check_forwards(info: ClientInfo, tunnel) -> None:
    """dbclient has no -D (dynamic/SOCKS) at all, in any version: refuse it up front, since
    its usage error would take the server's other tunnels down with it on every connect."""
    if info.kind == DROPBEAR and any(f.kind == "D" for f in tunnel.forwards):
        raise SshkeepError("%s: %s (dropbear) cannot do dynamic (-D) forwards; install openssh-client and "
                           "use --client openssh (option client 'openssh'), or drop the -D" % (tunnel.name, info.path),
                           EX_UNAVAILABLE)


def build_argv(info: ClientInfo, tunnel, command: Optional[str] = None, with_forwards: bool = True,
               host: Optional[str] = None, port: Optional[int] = None, learn: bool = False) -> List[str]:
    """The tunnel's ssh command line. `command` None means `-N` (no remote command).

    learn: dbclient's first contact with an accept-new server (see _dropbear)."""
    _destination_checks(tunnel)
    host = host or tunnel.host
    port = port or tunnel.port
    if info.kind == OPENSSH:
        argv = _openssh(info, tunnel, command is None, port)
    else:
        argv = _dropbear(info, tunnel, command is None, port, learn)
    if with_forwards:
        for fwd in tunnel.forwards:
            argv += ["-" + fwd.kind, fwd.spec()]
    if tunnel.user:
        argv += ["-l", tunnel.user]
    argv.append(host)
    if command is not None:
        argv.append(command)
    return argv


def _openssh(info, t, no_command, port):
    argv = [info.path]
    if no_command:
        argv.append("-N")
    argv += ["-T",
             # First value wins in OpenSSH, so these beat anything in ~/.ssh/config.
             "-o", "BatchMode=yes",
             "-o", "ExitOnForwardFailure=yes",
             "-o", "ConnectTimeout=%d" % t.connect_timeout,
             "-o", "StrictHostKeyChecking=%s" % ("accept-new" if t.accept_new else "yes"),
             # A user's ControlMaster would fork the tunnel away from us.
             "-o", "ControlMaster=no", "-o", "ControlPath=none"]
    if t.keepalive:
        argv += ["-o", "ServerAliveInterval=%d" % t.keepalive, "-o", "ServerAliveCountMax=3"]
    if t.known_hosts:
        argv += ["-o", "UserKnownHostsFile=%s" % t.known_hosts]
    if t.accept_new:
        # A pin dbclient can read too (and a person can find): host names in clear.
        argv += ["-o", "HashKnownHosts=no"]
    if t.identity:
        argv += ["-o", "IdentitiesOnly=yes", "-i", t.identity]
    for key, value in t.extra_options:
        argv += ["-o", "%s=%s" % (key, value)]
    argv += ["-p", str(port)]
    return argv


def _dropbear(info, t, no_command, port, learn=False):
    # Never -y: dbclient 2022.83 accepts a key under -y without recording it (every later
    # connect would accept any key); two -y skip the check entirely. A first contact
    # (`learn`) instead runs without BatchMode and the agent answers the y/n prompt on
    # stdin once: dbclient then records the key in its private HOME (both 2022.83 and
    # 2025.89, measured) and the agent copies it to the pin file (save_learned).
    argv = [info.path, "-T"]
    if no_command:
        argv.append("-N")
    if t.keepalive:
        argv += ["-K", str(t.keepalive)]
    # 2022.83 knows only ExitOnForwardFailure here; 2024.84+ adds BatchMode etc.
    if info.has_option("ExitOnForwardFailure"):
        argv += ["-o", "ExitOnForwardFailure=yes"]
    if info.has_option("BatchMode") and not learn:
        argv += ["-o", "BatchMode=yes"]
    if info.has_option("StrictHostKeyChecking") and not learn:
        argv += ["-o", "StrictHostKeyChecking=yes"]
    if t.identity:
        argv += ["-i", t.identity]
    argv += dropbear_options(info, t.extra_options)[0]
    argv += ["-p", str(port)]
    return argv


# OpenSSH options that dbclient takes as flags of its own (`dbclient -h` of 2022.83 and 2025.89).
_DROPBEAR_FLAGS = {"ciphers": "-c", "macs": "-m", "bindaddress": "-b"}


def dropbear_options(info: ClientInfo, options) -> tuple:
    """(dbclient argv, names it has no way to take) for (Key, value) ssh options: `-o Key=value`
    where its `-o help` lists the key (2022.83: ExitOnForwardFailure, DisableTrivialAuth, UseSyslog,
    Port; 2024.84+ more), else its own flag (-c, -m, -b, -g) where it has one."""
    argv, missing = [], []
    for key, value in options:
        low = key.lower()
        if info.has_option(key):
            argv += ["-o", "%s=%s" % (key, value)]
        elif low in _DROPBEAR_FLAGS:
            argv += [_DROPBEAR_FLAGS[low], value]
        elif low == "gatewayports" and value.lower() in ("yes", "no"):
            argv += ["-g"] if value.lower() == "yes" else []
        else:
            missing.append(key)
    return argv, missing


def build_exec_argv(info: ClientInfo, tunnel, command: str, host=None, port=None) -> List[str]:
    """An ssh exec with the tunnel's key and host key policy but no forwards."""
    argv = build_argv(info, tunnel, command=command, with_forwards=False, host=host, port=port)
    if info.kind == OPENSSH:
        # No forwards here: ExitOnForwardFailure is harmless, but keep exec quick and quiet.
        argv[1:1] = ["-o", "ClearAllForwardings=yes", "-o", "LogLevel=ERROR"]
    return argv


# --- keys, known_hosts and the child's environment --------------------------

def check_identity(info: ClientInfo, path: str) -> None:
    """Fail early, with the fix, on a key the client would reject obscurely."""
    if not path:
        return
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise SshkeepError("identity file %s is a directory; give the private key file in it (-i %s/id_ed25519 "
                               "or the like)" % (path, path.rstrip("/")), EX_NOINPUT)
        with open(path, "rb") as fh:
            head = fh.read(64)
    except FileNotFoundError:
        raise SshkeepError("identity file %s does not exist (-i)" % path, EX_NOINPUT)
    except PermissionError:
        raise SshkeepError("identity file %s is not readable by uid %d" % (path, os.getuid()), EX_NOPERM)
    except OSError as exc:
        raise SshkeepError("identity file %s cannot be read (%s)" % (path, exc.strerror or exc), EX_NOINPUT)
    if values.is_public_key(head):
        private = " (%s)" % path[:-4] if path.endswith(".pub") else ""
        raise SshkeepError("identity file %s is a public key; give the private key%s" % (path, private),
                           EX_NOINPUT)
    if st.st_mode & 0o077:
        # OpenSSH refuses such a key; dbclient uses it, but a key others can read is no secret.
        raise SshkeepError("identity file %s is readable by group/others (mode %o)%s; run chmod 600 %s"
                           % (path, st.st_mode & 0o777, ": OpenSSH refuses it" if info.kind == OPENSSH else "",
                              path), EX_NOPERM)
    is_pem = head.startswith(b"-----BEGIN")
    if info.kind == DROPBEAR and is_pem:
        # dbclient's own message for this is "Exited: String too long".
        raise SshkeepError("identity file %s is in OpenSSH/PEM format; dbclient needs dropbear format: "
                           "dropbearconvert openssh dropbear %s %s.dropbear, then use -i %s.dropbear"
                           % (path, path, path, path), 65)
    is_dropbear_format = head[:3] == b"\x00\x00\x00" and head[4:8] in (b"ssh-", b"ecds")
    if info.kind == OPENSSH and is_dropbear_format:
        raise SshkeepError("identity file %s is in dropbear format; OpenSSH needs: "
                           "dropbearconvert dropbear openssh %s %s.openssh" % (path, path, path), 65)


def key_unreadable(path: str) -> str:
    """Why the key file cannot be read now ('' : it can). Before each connect: it may have gone
    since the start (check_identity)."""
    try:
        with open(path, "rb"):
            return ""
    except OSError as exc:
        return exc.strerror or str(exc)


def known_hosts_entries(text: str):
    """(line number, [names, key type, key, ...]) of each host key line of a known_hosts text:
    comments and @cert-authority / @revoked lines are no pins, for either client."""
    for n, line in enumerate(text.split("\n"), 1):
        parts = line.split()
        if len(parts) >= 3 and not parts[0].startswith(("#", "@")):
            yield n, parts


def _read_text(path: str) -> str:
    with open(path, "r", encoding="utf-8", errors="replace") as fh:
        return fh.read()


def _names_for(host: str, port: int) -> set:
    """The names an OpenSSH known_hosts may file host:port under."""
    return {pin_name(host, port), "[%s]:%d" % (host, port)}


def dropbear_known_hosts(text: str, host: str, port: int) -> str:
    """Lines of an OpenSSH known_hosts usable by dbclient for host:port.

    dbclient reads only $HOME/.ssh/known_hosts and keys entries by host name
    without the port; OpenSSH writes `[host]:port` for non-22 ports.
    """
    wanted = _names_for(host, port) | {host}
    return "".join("%s %s %s\n" % (host, parts[1], parts[2]) for _, parts in known_hosts_entries(text)
                   if _names_match(parts[0], wanted))


def _names_match(field: str, wanted) -> bool:
    """A known_hosts name field: plain names, or one hashed name `|1|salt|hmac-sha1` (ssh-keyscan -H,
    HashKnownHosts yes). dbclient cannot read hashed lines: skipping them would make a pinned
    host look new to it, and accept-new would then take any key."""
    if not field.startswith("|1|"):
        return any(n in wanted for n in field.split(","))
    import binascii
    import hashlib
    import hmac
    try:
        salt, digest = (binascii.a2b_base64(x) for x in field[3:].split("|", 1))
    except (ValueError, binascii.Error):
        return False
    return any(hmac.compare_digest(hmac.new(salt, n.encode(), hashlib.sha1).digest(), digest) for n in wanted)


def pin_name(host: str, port: int) -> str:
    """The known_hosts name OpenSSH writes for host:port (so one file serves both clients)."""
    return host if port == 22 else "[%s]:%d" % (host, port)


def default_known_hosts(env=None) -> str:
    """Where first-contact host keys are pinned: persistent (flash), never the tmpfs state.

    root: /etc/sshkeep/known_hosts (beside the config); others: ~/.config/sshkeep/known_hosts.
    """
    return os.path.join(identity.default_dir(env), "known_hosts")


def ensure_pin_file(path: str) -> None:
    """Create the pin file (and its directory) if missing: written once, on flash.

    OpenSSH appends to an existing UserKnownHostsFile but cannot create its directory.
    """
    if os.path.exists(path):
        return
    try:
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
    except FileExistsError:
        pass
    except OSError as exc:
        raise SshkeepError("cannot create known_hosts file %s: %s (give --known-hosts FILE on a writable, "
                           "persistent file system)" % (path, exc.strerror or exc), EX_CANTCREAT)


def pin_line(path: str, host: str, port: int) -> Optional[int]:
    """The line number of the first entry for host:port in an OpenSSH known_hosts, or None."""
    try:
        text = _read_text(path)
    except OSError:
        return None
    wanted = _names_for(host, port)
    return next((n for n, parts in known_hosts_entries(text) if _names_match(parts[0], wanted)), None)


def mismatch_hint(path: str, host: str, port: int) -> str:
    """What to remove when the server's key no longer matches its pin (dbclient only names
    its private ~/.ssh/known_hosts, which we rewrite from `path` before every connect)."""
    n = pin_line(path, host, port) if path else None
    if n is None:
        return "the host key of %s:%d changed; check known_hosts" % (host, port)
    return ("the host key of %s:%d does not match the one pinned at %s line %d: if the server's key was "
            "changed on purpose, remove that line (sed -i %dd %s)" % (host, port, path, n, n, path))


def prepare_home(info: ClientInfo, tunnel, home: str, host=None, port=None) -> Optional[str]:
    """For dbclient with a known_hosts file: a private HOME whose .ssh/known_hosts it will read.

    Rewritten from the pin file before every connect (the pins live there, not in this
    tmpfs copy). Returns the HOME to give the child, or None to leave HOME alone.
    """
    if info.kind != DROPBEAR or not tunnel.known_hosts:
        return None
    host = host or tunnel.host
    port = port or tunnel.port
    try:
        text = _read_text(tunnel.known_hosts)
    except FileNotFoundError:
        if not tunnel.accept_new:
            raise SshkeepError("known_hosts file %s does not exist (--known-hosts); create it or use --accept-new"
                               % tunnel.known_hosts, EX_NOINPUT)
        text = ""
    sshdir = os.path.join(home, ".ssh")
    os.makedirs(sshdir, mode=0o700, exist_ok=True)
    # a fresh file through a temp one: never through a symlink planted in the tmpfs copy
    write_file(os.path.join(sshdir, "known_hosts"), dropbear_known_hosts(text, host, port).encode("utf-8"),
               0o600, exact_mode=False)
    return home


def save_learned(info: ClientInfo, tunnel, home: Optional[str], host=None, port=None) -> Optional[str]:
    """After a first contact: copy the key dbclient recorded in the private HOME to the pin file.

    Appends one line, once (nothing if the pin file already has host:port). Returns that line.
    """
    if info.kind != DROPBEAR or not home or not tunnel.accept_new or not tunnel.known_hosts:
        return None
    host = host or tunnel.host
    port = port or tunnel.port
    if pin_line(tunnel.known_hosts, host, port) is not None:
        return None
    try:
        text = _read_text(os.path.join(home, ".ssh", "known_hosts"))
    except OSError:
        return None
    learned = [parts for _, parts in known_hosts_entries(text) if parts[0] == host]
    if not learned:
        return None
    line = "%s %s %s\n" % (pin_name(host, port), learned[0][1], learned[0][2])
    ensure_pin_file(tunnel.known_hosts)
    fd = os.open(tunnel.known_hosts, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
    with os.fdopen(fd, "a") as fh:
        fh.write(line)
    return line.strip()


def host_key_known(info: ClientInfo, tunnel, home: Optional[str], host=None, port=None) -> Optional[bool]:
    """For dbclient: is the host in the known_hosts it will read? None = not dbclient.

    False with accept_new is a first contact (the agent answers dbclient's prompt once);
    False without it: dbclient 2022.83 would prompt y/n forever (and spin at 100% CPU on
    EOF), so the caller refuses to start it.
    """
    if info.kind != DROPBEAR:
        return None
    host = host or tunnel.host
    base = home or os.environ.get("HOME") or "/"
    try:
        text = _read_text(os.path.join(base, ".ssh", "known_hosts"))
    except OSError:
        return False
    # plain names only: dbclient cannot read a hashed one (and takes no [host]:port)
    return any(host in parts[0].split(",") for _, parts in known_hosts_entries(text))


def child_env(base: dict, home: Optional[str]) -> dict:
    env = dict(base)
    env["LC_ALL"] = "C"  # stderr is parsed; keep it in English
    if home:
        env["HOME"] = home
    return env
