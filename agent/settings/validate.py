"""Validation: a file's option values -> field values, the typed records a dialect reader hands on,
and the checks that need more than one section (two tunnels on one port) or the disk (key files,
the client binary), which end in Settings.

Values: the shared validators (agent.core.values) where flags, config files and ssh_config take
the same value; here what only a file has: booleans uci's way, `[address:]port` and `host:port`
in one word, a forward's check, an ssh_option line. Each returns the value or raises Bad(what is
wrong, how to fix it); the caller adds FILE:LINE and the option's name.

Records: a dialect reader (sshkeep_conf, sshtunnel_conf) turns sections into a Parsed: the
globals and each enabled server as a Server, whose Draft holds the Tunnel fields read so far with
the line of each, and whose Placed forwards remember the section and line they came from.
`settings` checks them, builds the Tunnels and raises one ConfigError listing every problem.
"""

import difflib
import os
import re
import stat

from agent.core import values
from agent.core.model import Settings, Tunnel, expand_tilde
from agent.core.record import record
from agent.errors import ConfigError

_INT = re.compile(r"[0-9]+\Z")                  # ASCII only: int() also takes '٣' and '1_0'
_TRUE = ("1", "yes", "on", "true", "enabled")
_FALSE = ("0", "no", "off", "false", "disabled")
_WILDCARDS = ("", "*", "0.0.0.0", "::", "localhost")


# --------------------------------------------------------------------------- values

Bad = values.Bad  # a value did not convert: `what is wrong` and `how to fix it`

# The shared validators: flags, config files and ssh_config accept the same values.
port = values.port
port_or_off = values.port_or_off
host = values.host
whole = values.whole
seconds = values.seconds


def printable(value):
    """Any text on one line."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise Bad("contains a control character or line break", "keep the value on one line")
    return value


def path(value):
    """A file name; `~/` is the login user's home, as ssh has it."""
    printable(value)
    if value.startswith("-"):
        raise Bad("%r starts with '-'" % value, "give a path (e.g. ./%s)" % value)
    return expand_tilde(value) if value.startswith("~") else value


def user(value):
    printable(value)
    return values.user(value)


def boolean(value):
    v = value.lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise Bad("%r is not a boolean" % value, "write '1' or '0' (also yes/no, on/off, true/false)")


def choice(*choices):
    """A converter that takes one of `choices`, spelled exactly."""
    def conv(value):
        if value not in choices:
            close = difflib.get_close_matches(value, choices, n=1)
            fix = "did you mean '%s'?" % close[0] if close else "write one of them"
            raise Bad("%r is not one of %s" % (value, ", ".join(choices)), fix)
        return value
    return conv


def split_hostport(value):
    """'host:port', '[v6]:port' -> (host, port text); no colon -> (None, value)."""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise Bad("%r has an unclosed [" % value, "write IPv6 addresses as [::1]:8080")
        rest = value[end + 1:]
        if not rest:
            return value[1:end], None
        if not rest.startswith(":"):
            raise Bad("%r has text after ]" % value, "write [address]:port")
        return value[1:end], rest[1:]
    if ":" not in value:
        return None, value
    host_, _, port_ = value.rpartition(":")
    if ":" in host_:
        raise Bad("%r: IPv6 address without brackets" % value, "write it as [%s]:%s" % (host_, port_))
    return host_, port_


def listen(value, remote=False):
    """`[address:]port` -> (bind address or '', port); a remote forward's port 0 lets the server pick."""
    printable(value)
    host_, port_ = split_hostport(value)
    if port_ is None:
        raise Bad("%r has no port" % value, "write [address:]port, e.g. '8080' or '127.0.0.1:8080'")
    bind = "" if host_ is None else host(host_, wildcard=True) if host_ else ""
    if remote and port_ == "0":
        return bind, 0  # the server picks the port (the agent shows which)
    return bind, port(port_)


def target(value):
    """`host:port` -> (host, port)."""
    printable(value)
    host_, port_ = split_hostport(value)
    if host_ is None or port_ is None:
        example = "127.0.0.1:%s" % port_ if host_ is None and _INT.match(port_) else "%s:80" % (host_ or port_)
        raise Bad("%r is not host:port" % value, "write e.g. '%s'" % example)
    return host(host_), port(port_)


def alternate(value, default_port):
    """`host[:port]` of another server address -> (host, port); the server's port when none."""
    printable(value)
    host_, port_ = split_hostport(value)
    if port_ is None:
        return host(host_), default_port
    if host_ is None:
        return host(port_), default_port
    return host(host_), port(port_)


def check(value):
    """A forward's check: connect, none or banner:TEXT."""
    printable(value)
    if value in ("connect", "none"):
        return value
    if value.startswith("banner:") and len(value) > len("banner:"):
        return value
    raise Bad("%r is not a check" % value, "write connect, none or banner:TEXT")


def ssh_option(value):
    """`Key=Value` (or `Key Value`) of an allowed ssh option -> (Key in OpenSSH's spelling, Value)."""
    printable(value)
    m = re.match(r"([A-Za-z][A-Za-z0-9]*)\s*(?:=|\s)\s*(\S.*)\Z", value)
    if not m:
        raise Bad("%r is not an ssh option" % value, "write Key=Value, e.g. 'Compression=yes'")
    problem = values.check_ssh_option(m.group(1), m.group(2), in_config=True)
    if problem:
        raise Bad(problem.split(";")[0], "remove it; allowed options are listed in docs/security.md")
    return values.canonical_ssh_option(m.group(1)), m.group(2)


# --------------------------------------------------------------------------- records

@record(frozen=False)
class Draft:
    """Tunnel fields read so far (the defaults, then `config sshkeep`, then the server's own) and the
    line that set each, for the messages of the file checks."""
    fields: dict
    lines: dict

    def copy(self):
        return Draft(dict(self.fields), dict(self.lines))

    def set(self, field, value, line):
        self.fields[field] = value
        self.lines[field] = line


@record
class Placed:
    """A forward and where the file has it: its tunnel section and the line of its listen port."""
    section: object     # agent.settings.uci.Section
    line: int
    forward: object     # agent.core.model.Forward


@record(frozen=False)
class Server:
    """An enabled server section on its way to a Tunnel (one ssh process)."""
    section: object     # agent.settings.uci.Section
    host: str
    draft: Draft
    forwards: list      # Placed, added as the tunnel sections naming this server are read


@record
class Parsed:
    """What a dialect reader hands on: the globals and the enabled servers in file order."""
    state: str
    pidfile: str
    syslog: bool
    servers: tuple


# --------------------------------------------------------------------------- checks -> Settings

def settings(parsed, report, config_path, check_files=True):
    """Parsed -> Settings; raise ConfigError listing every problem the report holds by then."""
    _check_conflicts(parsed.servers, report)
    if check_files:
        for server in parsed.servers:
            _check_files(server, report)
    tunnels = []
    for server in parsed.servers:
        s = server.section
        if not server.forwards:
            report.warn(s.line, "server '%s' has no enabled tunnel and is not started" % s.name,
                        "add a tunnel for it or set option enabled '0'")
            continue
        tunnels.append(Tunnel(name=s.name, host=server.host, forwards=tuple(p.forward for p in server.forwards),
                              **server.draft.fields))
    if not tunnels and not report.errors:
        if report.skipped:
            report.error(0, "no enabled tunnel sshkeep can run (skipped: %s)" % ", ".join(report.skipped),
                         "keep sshtunnel for these, or add a tunnelR, tunnelL or tunnelD section")
        else:
            report.error(0, "no enabled tunnel", "add a config server and a config tunnel section naming it")
    if report.errors:
        errors = [text for _, text in sorted(report.errors, key=lambda e: e[0])]
        raise ConfigError("\n".join(errors), errors=errors)
    warnings = tuple(text for _, text in sorted(report.warnings, key=lambda e: e[0]))
    return Settings(tunnels=tuple(tunnels), state=parsed.state, pidfile=parsed.pidfile, syslog=parsed.syslog,
                    config_path=config_path, warnings=warnings)


def _check_conflicts(servers, report):
    """Two tunnels on one listen port: remote ports per server host, local ports on this box."""
    seen = {}
    for server in servers:
        for placed in server.forwards:
            fw, line, label = placed.forward, placed.line, placed.section.label()
            if not fw.port:
                continue  # picked by the server: never the same as another
            side = ("server", server.host) if fw.kind == "R" else ("box",)
            for other_bind, other_name, other_line in seen.get((side, fw.port), ()):
                if fw.bind == other_bind or fw.bind in _WILDCARDS or other_bind in _WILDCARDS:
                    where = "on server %s" % server.host if fw.kind == "R" else "on this box"
                    report.error(line, "%s listens on port %d %s like %s (line %d)"
                                 % (label, fw.port, where, other_name, other_line),
                                 "give one of them another listen port")
                    break
            seen.setdefault((side, fw.port), []).append((fw.bind, label, line))


def _executable(file):
    try:
        return os.path.isfile(file) and os.access(file, os.X_OK)
    except (OSError, ValueError):
        return False


def _is_public(file):
    try:
        with open(file, "rb") as fh:
            return values.is_public_key(fh.read(64))
    except OSError:
        return False  # unreadable: the client says so at start, with the uid


def _check_files(server, report):
    """The key file and the client binary a server names, as the agent will find them at start."""
    s, fields, lines = server.section, server.draft.fields, server.draft.lines
    key = fields.get("identity")
    if key and not _check_key(s, key, lines.get("identity", s.line), report):
        return
    ssh = fields.get("ssh_path")
    if ssh and "/" in ssh and not _executable(ssh):
        report.error(lines.get("ssh_path", s.line), "ssh client %s is missing or not executable" % ssh,
                     "install it or fix the path (or leave ssh unset to search PATH)")


def _check_key(s, key, line, report):
    """False when the key file cannot be looked at (then nothing else of the server is checked)."""
    try:
        st = os.stat(key)
    except FileNotFoundError:
        report.error(line, "server '%s': key file %s does not exist" % (s.name, key),
                     "create it (ssh-keygen or dropbearkey) or fix the path")
        return False
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or "not a usable path"
        report.error(line, "server '%s': cannot read key file %s (%s)" % (s.name, key, reason),
                     "check the path and its permissions")
        return False
    if not stat.S_ISREG(st.st_mode):
        report.error(line, "server '%s': key file %s is not a regular file" % (s.name, key),
                     "point identity at the private key file")
    elif _is_public(key):
        report.error(line, "server '%s': key file %s is a public key" % (s.name, key),
                     "give the private key" + (" (%s)" % key[:-4] if key.endswith(".pub") else ""))
    elif st.st_mode & 0o077:
        report.error(line, "server '%s': key file %s is readable by group or others (mode %04o)"
                     % (s.name, key, stat.S_IMODE(st.st_mode)), "chmod 600 %s" % key)
    return True
