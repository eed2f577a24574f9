"""From what a dialect read to Settings: the typed records between them, and the checks that need
more than one section (two tunnels on one port) or the disk (key files, the client binary).

A dialect reader (sshkeep_conf, sshtunnel_conf) turns sections into a Parsed: the globals and
each enabled server as a Server, whose Draft holds the Tunnel fields read so far with the line of
each, and whose Placed forwards remember the section and line they came from. `settings` checks
them, builds the Tunnels and raises one ConfigError listing every problem of the file.
"""

import os
import stat

from agent.core import values
from agent.core.model import Settings, Tunnel
from agent.core.record import record
from agent.errors import ConfigError

_WILDCARDS = ("", "*", "0.0.0.0", "::", "localhost")


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


def settings(parsed, report, path, check_files=True):
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
    return Settings(tunnels=tuple(tunnels), state=parsed.state, pidfile=parsed.pidfile, syslog=parsed.syslog,
                    config_path=path, warnings=tuple(text for _, text in sorted(report.warnings, key=lambda e: e[0])))


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


def _executable(path):
    try:
        return os.path.isfile(path) and os.access(path, os.X_OK)
    except (OSError, ValueError):
        return False


def _is_public(path):
    try:
        with open(path, "rb") as fh:
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
