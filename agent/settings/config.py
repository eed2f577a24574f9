"""Configuration files: UCI syntax, read by our own code (no `uci` binary needed).

Two dialects, detected from the section types:
- sshkeep's own (`config sshkeep`, `config server 'hub'`, `config tunnel 'luci'`);
- OpenWrt's sshtunnel package (`config server`, `tunnelR`, `tunnelL`, `tunnelD`, `tunnelW`),
  read unchanged so that /etc/config/sshtunnel keeps working.

One `config server` section and its enabled tunnels become one `Tunnel` (one ssh process).
Every problem is collected, not just the first: `load` and `parse_text` raise one ConfigError
whose `errors` list holds each as `FILE:LINE: what is wrong — how to fix it`.

Lexing follows libuci's file parser (uci/file.c): commands `config`/`option`/`list`/`package`
(also abbreviated `c`/`o`/`l`/`p`), `;` separates commands, `#` starts a comment outside quotes,
'single quotes' take everything literally, "double quotes" and bare words take `\\x` as x, a
quote must close on its line (libuci would read on: we report it and go on with the next line),
a backslash at the end of a line continues it, an empty value unsets an option, a
second `option` replaces the first, a `list` appends, and a section named twice is one section.
"""

import difflib
import os
import re
import stat

from agent.core import defaults, record, values
from agent.errors import ConfigError, EX_NOINPUT, EX_NOPERM
from agent.core.model import Forward, Settings, Tunnel, expand_tilde

DEFAULT_PATH = defaults.CONFIG
MAX_SIZE = 1 << 20  # a config file is small; refuse to parse a log file by mistake

_TUNNEL_DEFAULTS = record.defaults(Tunnel)
_NAME = re.compile(r"[A-Za-z0-9_]+\Z")          # uci section and option names
_TYPE = re.compile(r"[A-Za-z0-9_-]+\Z")         # uci section types
_INT = re.compile(r"[0-9]+\Z")                  # ASCII only: int() also takes '٣' and '1_0'
_WILDCARDS = ("", "*", "0.0.0.0", "::", "localhost")
_TRUE = ("1", "yes", "on", "true", "enabled")
_FALSE = ("0", "no", "off", "false", "disabled")
SSHTUNNEL_TYPES = ("tunnelR", "tunnelL", "tunnelD", "tunnelW")


_Bad = values.Bad  # a value did not convert: `what is wrong` and `how to fix it`


# --------------------------------------------------------------------------- lexer

class _Opt:
    __slots__ = ("name", "values", "line", "is_list", "lines")

    def __init__(self, name, line):
        self.name, self.values, self.line, self.is_list, self.lines = name, [], line, False, []

    @property
    def value(self):
        return self.values[-1] if self.values else ""


class _Section:
    __slots__ = ("type", "name", "line", "opts")

    def __init__(self, type_, name, line):
        self.type, self.name, self.line, self.opts = type_, name, line, {}

    def label(self):
        if self.type == "sshkeep":
            return "config sshkeep"
        return "%s '%s'" % (self.type, self.name) if self.name else "anonymous %s" % self.type


def _words(text, report):
    """Split into commands: a list of (line, [(word, line), ...]). Quotes as libuci has them,
    except that a quote must close on its own line: libuci lets a value span lines, but no
    value of ours may hold a line break, and reading on would pair every later quote wrongly
    and hide every error after it. So an open quote is reported at its line, that command is
    dropped, and lexing goes on with the next line."""
    cmds, words = [], []
    i, n, line = 0, len(text), 1

    def flush():
        if words:
            cmds.append((words[0][1], list(words)))
            del words[:]

    while i < n:
        c = text[i]
        if c == "\n":
            flush()
            line += 1
            i += 1
        elif c in " \t\r\f\v":
            i += 1
        elif c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif c == ";":
            flush()
            i += 1
        else:
            start, buf, broken = line, [], None
            while i < n:
                c = text[i]
                if c == "'":
                    j = text.find("'", i + 1)
                    eol = text.find("\n", i + 1)
                    if j < 0 or 0 <= eol < j:
                        broken = "'"
                        break
                    buf.append(text[i + 1:j])
                    i = j + 1
                elif c == '"':
                    i += 1
                    while i < n and text[i] not in '"\n':
                        if text[i] == "\\" and i + 1 < n:
                            if text[i + 1] == "\n":
                                line += 1
                            else:
                                buf.append(text[i + 1])
                            i += 2
                            continue
                        buf.append(text[i])
                        i += 1
                    if i >= n or text[i] == "\n":
                        broken = '"'
                        break
                    i += 1
                elif c == "\\":
                    if i + 1 < n and text[i + 1] == "\n":
                        line += 1
                    elif i + 1 < n:
                        buf.append(text[i + 1])
                    i += 2
                elif c in " \t\r\f\v\n#;":
                    break
                else:
                    buf.append(c)
                    i += 1
            if broken:
                report.error(line, "unterminated %s quote" % broken, "close the quote on this value")
                del words[:]
                j = text.find("\n", i)
                i = n if j < 0 else j
                continue
            words.append(("".join(buf), start))
    flush()
    return cmds


_COMMANDS = {"c": "config", "config": "config", "o": "option", "option": "option",
             "l": "list", "list": "list", "p": "package", "package": "package"}


def _sections(text, report):
    """Build uci sections from text. Returns (sections, package, extra-argument lines)."""
    sections, by_name, current, package, extra = [], {}, None, None, []
    for line, words in _words(text, report):
        head = words[0][0]
        cmd = _COMMANDS.get(head)
        args = [w for w, _ in words[1:]]
        if cmd is None:
            report.error(line, "unknown command %r" % head[:40],
                         "lines start with config, option or list (or # for a comment)")
            continue
        want = {"config": 2, "option": 2, "list": 2, "package": 1}[cmd]
        if len(args) > want:
            extra.append((line, args[want]))
            args = args[:want]
        if cmd == "package":
            package = args[0] if args else None
            continue
        if cmd == "config":
            if not args or not args[0]:
                report.error(line, "config without a section type", "write e.g. config server 'hub'")
                current = None
                continue
            type_, name = args[0], args[1] if len(args) > 1 else ""
            if not _TYPE.match(type_):
                report.error(line, "section type %r has characters uci does not allow" % type_[:40],
                             "use letters, digits, _ and -")
                current = None
                continue
            if name and not _NAME.match(name):
                report.error(line, "section name %r has characters uci does not allow" % name[:40],
                             "use only letters, digits and _ (e.g. %r)" % _sanitize(name))
                current = None
                continue
            if name and name in by_name:
                current = by_name[name]
                report.duplicate(line, current)
                if current.type != type_:
                    report.error(line, "section '%s' is already a %s (line %d)" % (name, current.type, current.line),
                                 "give this %s section another name" % type_)
                    current = _Section(type_, "", line)  # parse it, but detached
                continue
            current = _Section(type_, name, line)
            sections.append(current)
            if name:
                by_name[name] = current
            continue
        # option / list
        if current is None:
            report.error(line, "%s outside a section" % cmd, "put a config line above it")
            continue
        if not args or not args[0]:
            report.error(line, "%s without a name" % cmd, "write %s NAME 'value'" % cmd)
            continue
        name = args[0]
        if not _NAME.match(name):
            report.error(line, "option name %r has characters uci does not allow" % name[:40],
                         "use letters, digits and _")
            continue
        value = args[1] if len(args) > 1 else ""
        opt = current.opts.get(name)
        if cmd == "option":
            if not value:  # uci: setting an empty value deletes the option
                current.opts.pop(name, None)
                continue
            if opt is not None:
                report.warn(line, "option %s set again (first at line %d); this value wins" % (name, opt.line),
                            "remove one of them")
            opt = current.opts[name] = _Opt(name, line)
            opt.values.append(value)
            opt.lines.append(line)
        else:
            if opt is None:
                opt = current.opts[name] = _Opt(name, line)
            opt.is_list = True
            if value:
                opt.values.append(value)
                opt.lines.append(line)  # each list item's own line, for its error
    return sections, package, extra


# --------------------------------------------------------------------------- reporting

class _Report:
    def __init__(self, path):
        self.path = path
        self.errors = []    # (line, text)
        self.warnings = []
        self.dup_lines = []
        self.skipped = []   # sections sshkeep cannot run (sshtunnel's tunnelW), for "no enabled tunnel"

    def _fmt(self, line, what, fix):
        where = "%s:%d" % (self.path, line) if line else self.path
        return "%s: %s — %s" % (where, what, fix) if fix else "%s: %s" % (where, what)

    def error(self, line, what, fix):
        self.errors.append((line, self._fmt(line, what, fix)))

    def warn(self, line, what, fix=None):
        self.warnings.append((line, self._fmt(line, what, fix)))

    def duplicate(self, line, section):
        self.dup_lines.append((line, section))

    def bad(self, line, exc, subject):
        self.error(line, "%s: %s" % (subject, exc.what), exc.fix)


def _suggest(name, known):
    lower = {k.lower(): k for k in known}
    if name.lower() in lower:
        return "did you mean '%s'? (names are case-sensitive)" % lower[name.lower()]
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    if close:
        return "did you mean '%s'?" % close[0]
    return "known options: %s" % ", ".join(sorted(known))


# --------------------------------------------------------------------------- value converters

def _printable(value):
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise _Bad("contains a control character or line break", "keep the value on one line")
    return value


def _conv_str(value):
    return _printable(value)


def _conv_path(value):
    _printable(value)
    if value.startswith("-"):
        raise _Bad("%r starts with '-'" % value, "give a path (e.g. ./%s)" % value)
    return expand_tilde(value) if value.startswith("~") else value


def _conv_user(value):
    _printable(value)
    return values.user(value)


def _conv_bool(value):
    v = value.lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise _Bad("%r is not a boolean" % value, "write '1' or '0' (also yes/no, on/off, true/false)")


# The shared validators (agent.core.values): flags, config files and ssh_config accept the same values.
_conv_port = values.port
_int_min = values.whole
_float_min = values.seconds


def _enum(*choices):
    def conv(value):
        if value not in choices:
            close = difflib.get_close_matches(value, choices, n=1)
            fix = "did you mean '%s'?" % close[0] if close else "write one of them"
            raise _Bad("%r is not one of %s" % (value, ", ".join(choices)), fix)
        return value
    return conv


_conv_host = values.host


def _split_hostport(value):
    """'host:port', '[v6]:port' -> (host, port text); no colon -> (None, value)."""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise _Bad("%r has an unclosed [" % value, "write IPv6 addresses as [::1]:8080")
        rest = value[end + 1:]
        if not rest:
            return value[1:end], None
        if not rest.startswith(":"):
            raise _Bad("%r has text after ]" % value, "write [address]:port")
        return value[1:end], rest[1:]
    if ":" not in value:
        return None, value
    host, _, port = value.rpartition(":")
    if ":" in host:
        raise _Bad("%r: IPv6 address without brackets" % value, "write it as [%s]:%s" % (host, port))
    return host, port


def _conv_listen(value, remote=False):
    _printable(value)
    host, port = _split_hostport(value)
    if port is None:
        raise _Bad("%r has no port" % value, "write [address:]port, e.g. '8080' or '127.0.0.1:8080'")
    bind = "" if host is None else _conv_host(host, wildcard=True) if host else ""
    if remote and port == "0":
        return bind, 0  # the server picks the port (the agent shows which)
    return bind, _conv_port(port)


def _conv_target(value):
    _printable(value)
    host, port = _split_hostport(value)
    if host is None or port is None:
        example = "127.0.0.1:%s" % port if host is None and _INT.match(port) else "%s:80" % (host or port)
        raise _Bad("%r is not host:port" % value, "write e.g. '%s'" % example)
    return _conv_host(host), _conv_port(port)


def _conv_check(value):
    _printable(value)
    if value in ("connect", "none"):
        return value
    if value.startswith("banner:") and len(value) > len("banner:"):
        return value
    raise _Bad("%r is not a check" % value, "write connect, none or banner:TEXT")


def _conv_option(value):
    _printable(value)
    m = re.match(r"([A-Za-z][A-Za-z0-9]*)\s*(?:=|\s)\s*(\S.*)\Z", value)
    if not m:
        raise _Bad("%r is not an ssh option" % value, "write Key=Value, e.g. 'Compression=yes'")
    problem = values.check_ssh_option(m.group(1), m.group(2), in_config=True)
    if problem:
        raise _Bad(problem.split(";")[0], "remove it; allowed options are listed in docs/security.md")
    return values.canonical_ssh_option(m.group(1)), m.group(2)


# --------------------------------------------------------------------------- sshkeep dialect

# option -> (Tunnel field, converter). Each may be set in `config sshkeep` (default for every
# server) and in a `config server` section (that server only).
_TUNNEL_OPTS = {
    "port": ("port", _conv_port),
    "user": ("user", _conv_user),
    "identity": ("identity", _conv_path),
    "known_hosts": ("known_hosts", _conv_path),
    "accept_new": ("accept_new", _conv_bool),
    "keepalive": ("keepalive", _int_min(0)),
    "connect_timeout": ("connect_timeout", _int_min(1)),
    "interval": ("interval", _float_min(0, True)),
    "max_backoff": ("max_backoff", _float_min(1)),
    "client": ("client", _enum("auto", "openssh", "dropbear")),
    "ssh": ("ssh_path", _conv_path),
    "remote_check_every": ("remote_check_every", _int_min(0)),
    "fail_threshold": ("fail_threshold", _int_min(1)),
    "failover_after": ("failover_after", _int_min(1)),
    "reclaim": ("reclaim", _conv_bool),
    "loop_port": ("loop_port", values.port_or_off),
    "spread": ("spread", _float_min(0, False)),
    "check_mode": ("check_mode", _enum("auto", "session", "exec")),
}
_GLOBAL_OPTS = {"pidfile": _conv_path, "state": _conv_path, "syslog": _conv_bool}
_SERVER_ONLY = ("host", "alternate", "ssh_option", "enabled")
_TUNNEL_SECTION_OPTS = ("server", "type", "listen", "target", "check", "enabled")
_KINDS = {"remote": "R", "local": "L", "dynamic": "D"}
_TYPES = ("sshkeep", "server", "tunnel")


def _single(opt, report, subject):
    """The value of an option that takes one; a `list` of it is an error."""
    if opt.is_list:
        report.error(opt.line, "%s: %s takes one value, not a list" % (subject, opt.name),
                     "write option %s '...'" % opt.name)
        return None
    return opt.value


def _apply_tunnel_opts(section, base, known, report):
    """Convert the _TUNNEL_OPTS of a section into a dict of Tunnel fields over `base`."""
    out = dict(base, __lines__=dict(base.get("__lines__", {})))
    for name, opt in section.opts.items():
        if name not in _TUNNEL_OPTS:
            if name not in known:
                report.error(opt.line, "unknown option '%s' in %s" % (name, section.label()),
                             _suggest(name, list(_TUNNEL_OPTS) + list(known)))
            continue
        value = _single(opt, report, section.label())
        if value is None:
            continue
        field, conv = _TUNNEL_OPTS[name]
        try:
            out[field] = conv(value)
            out["__lines__"][field] = opt.line
        except _Bad as exc:
            report.bad(opt.line, exc, "%s option %s" % (section.label(), name))
    return out


def _conv_alternate(value, default_port):
    _printable(value)
    host, port = _split_hostport(value)
    if port is None:
        return _conv_host(host), default_port
    if host is None:
        return _conv_host(port), default_port
    return _conv_host(host), _conv_port(port)


def _parse_sshkeep(sections, report):
    glob = [s for s in sections if s.type == "sshkeep"]
    servers = [s for s in sections if s.type == "server"]
    tunnels = [s for s in sections if s.type == "tunnel"]
    for s in sections:
        if s.type not in _TYPES and s.type not in SSHTUNNEL_TYPES:
            close = difflib.get_close_matches(s.type, _TYPES, n=1)
            hint = "did you mean '%s'?" % close[0] if close else "sections are: %s" % ", ".join(_TYPES)
            report.error(s.line, "unknown section type '%s'" % s.type, hint)
    for line, sec in report.dup_lines:
        report.error(line, "section '%s' is defined twice (first at line %d)" % (sec.name, sec.line),
                     "rename one of them (uci would merge them silently)")

    settings = {"state": defaults.STATE, "pidfile": defaults.PIDFILE, "syslog": defaults.SYSLOG}
    base = {f: _TUNNEL_DEFAULTS[f] for f, _ in _TUNNEL_OPTS.values()}
    if len(glob) > 1:
        report.error(glob[1].line, "second config sshkeep section (first at line %d)" % glob[0].line,
                     "merge them into one")
    for g in glob[:1]:
        base = _apply_tunnel_opts(g, base, _GLOBAL_OPTS, report)
        for name, conv in _GLOBAL_OPTS.items():
            opt = g.opts.get(name)
            if opt is None:
                continue
            value = _single(opt, report, "config sshkeep")
            if value is not None:
                try:
                    settings[name] = conv(value)
                except _Bad as exc:
                    report.bad(opt.line, exc, "config sshkeep option %s" % name)

    built, order, disabled = {}, [], set()
    for s in servers:
        if not s.name:
            report.error(s.line, "config server has no name", "name it, e.g. config server 'hub'")
            continue
        f = _apply_tunnel_opts(s, base, _SERVER_ONLY, report)
        enabled = _bool_opt(s, "enabled", report)
        hostopt = s.opts.get("host")
        host = None
        if hostopt is None:
            report.error(s.line, "server '%s' has no host" % s.name, "add option host 'hub.example.net'")
        else:
            value = _single(hostopt, report, s.label())
            if value is not None:
                try:
                    host = _conv_host(value)
                except _Bad as exc:
                    report.bad(hostopt.line, exc, "server '%s' option host" % s.name)
        alts = []
        for name, conv in (("alternate", None), ("ssh_option", _conv_option)):
            opt = s.opts.get(name)
            if opt is None:
                continue
            items = [(w, ln) for v, ln in zip(opt.values, opt.lines)
                     for w in (v.split() if name == "alternate" else [v])]
            for item, ln in items:
                try:
                    if name == "alternate":
                        alts.append(_conv_alternate(item, f["port"]))
                    else:
                        f.setdefault("extra_options", []).append(conv(item))
                except _Bad as exc:
                    report.bad(ln, exc, "server '%s' %s" % (s.name, name))
        if not enabled:
            disabled.add(s.name)
            continue
        if host is None:
            continue
        f["alternates"] = tuple(alts)
        f["extra_options"] = tuple(f.get("extra_options", ()))
        built[s.name] = (s, host, f, [])
        order.append(s.name)

    defined = [s.name for s in servers if s.name]
    for t in tunnels:
        label = t.label()
        for name, opt in t.opts.items():
            if name not in _TUNNEL_SECTION_OPTS:
                report.error(opt.line, "unknown option '%s' in %s" % (name, label),
                             _suggest(name, _TUNNEL_SECTION_OPTS))
        vals = {}
        for name in _TUNNEL_SECTION_OPTS:
            opt = t.opts.get(name)
            if opt is not None:
                v = _single(opt, report, label)
                if v is not None:
                    vals[name] = (v, opt.line)
        enabled = _bool_opt(t, "enabled", report)
        kind = "R"
        if "type" in vals:
            try:
                kind = _KINDS[_enum(*_KINDS)(vals["type"][0])]
            except _Bad as exc:
                report.bad(vals["type"][1], exc, "%s option type" % label)
                kind = None
        server = vals.get("server")
        if server is None:
            report.error(t.line, "%s has no server" % label, "add option server 'NAME' naming a config server")
        elif server[0] not in defined:
            close = difflib.get_close_matches(server[0], defined, n=1)
            fix = "did you mean '%s'?" % close[0] if close else "define config server '%s'" % server[0]
            report.error(server[1], "%s names server '%s', which is not defined" % (label, server[0]), fix)
            server = None
        fwd = _forward_fields(t, label, kind, vals, report)
        if not enabled or server is None or fwd is None or server[0] not in built:
            continue
        line = vals.get("listen", ("", t.line))[1]
        if fwd.kind == "R" and fwd.bind not in ("", "localhost", "127.0.0.1", "::1"):
            # sshd binds loopback regardless unless it allows it: the tunnel works, but not where asked
            report.warn(line, "%s asks the server to listen on %s" % (label, fwd.bind),
                        "the server must allow it (OpenSSH: GatewayPorts clientspecified; dropbear: -a), "
                        "or it listens on loopback only")
        built[server[0]][3].append((t, line, fwd))
    return settings, [built[n] for n in order], disabled


def _bool_opt(section, name, report):
    opt = section.opts.get(name)
    if opt is None:
        return True
    value = _single(opt, report, section.label())
    if value is None:
        return True
    try:
        return _conv_bool(value)
    except _Bad as exc:
        report.bad(opt.line, exc, "%s option %s" % (section.label(), name))
        return True


def _forward_fields(t, label, kind, vals, report):
    ok = kind is not None
    listen = vals.get("listen")
    target = vals.get("target")
    bind = port = host = hostport = None
    if listen is None:
        report.error(t.line, "%s has no listen port" % label, "add option listen '[address:]port'")
        ok = False
    else:
        try:
            bind, port = _conv_listen(listen[0], remote=kind == "R")
        except _Bad as exc:
            report.bad(listen[1], exc, "%s option listen" % label)
            ok = False
    if kind == "D":
        if target is not None:
            report.error(target[1], "%s is dynamic (SOCKS) and takes no target" % label,
                         "remove option target, or set type remote or local")
            ok = False
        host, hostport = "", 0
    else:
        if target is None and kind is not None:
            report.error(t.line, "%s has no target" % label, "add option target 'host:port'")
            ok = False
        elif target is not None:
            try:
                host, hostport = _conv_target(target[0])
            except _Bad as exc:
                report.bad(target[1], exc, "%s option target" % label)
                ok = False
    check = "connect"
    if "check" in vals:
        try:
            check = _conv_check(vals["check"][0])
        except _Bad as exc:
            report.bad(vals["check"][1], exc, "%s option check" % label)
            ok = False
    if not ok:
        return None
    return Forward(kind, bind, port, host, hostport, check, t.name)


# --------------------------------------------------------------------------- sshtunnel dialect

# OpenWrt sshtunnel server options that are ssh -o options: passed on (OpenSSH) as extra_options.
_ST_PASS = {
    "CheckHostIP": _enum("yes", "no"),
    "Compression": _enum("yes", "no"),
    "TCPKeepAlive": _enum("yes", "no"),
    "VerifyHostKeyDNS": _enum("yes", "no"),
    "ServerAliveCountMax": lambda v: str(_int_min(1)(v)),
    "PKCS11Provider": _conv_path,
    "ProxyCommand": _conv_str,
}
# Accepted, checked, and not used (with a warning saying why).
_ST_IGNORED = {
    "LogLevel": (_enum("QUIET", "FATAL", "ERROR", "INFO", "VERBOSE", "DEBUG", "DEBUG1", "DEBUG2", "DEBUG3"),
                 "sshkeep reads ssh's own error lines to classify failures"),
    "CompressionLevel": (lambda v: str(_int_min(1)(v)), "OpenSSH no longer has it"),
}
_ST_SERVER = ("hostname", "port", "user", "IdentityFile", "retrydelay", "ServerAliveInterval",
              "StrictHostKeyChecking", "enabled") + tuple(_ST_PASS) + tuple(_ST_IGNORED)
_ST_TUNNEL = {
    "tunnelR": ("server", "enabled", "remoteaddress", "remoteport", "localaddress", "localport", "check"),
    "tunnelL": ("server", "enabled", "localaddress", "localport", "remoteaddress", "remoteport", "check"),
    "tunnelD": ("server", "enabled", "localaddress", "localport", "check"),
    "tunnelW": ("server", "enabled", "vpntype", "localdev", "remotedev"),
}


def _st_get(section, name, report):
    opt = section.opts.get(name)
    if opt is None:
        return None, section.line
    return opt.value, opt.line  # sshtunnel reads lists with config_get: last value is fine


def _parse_sshtunnel(sections, report):
    glob = [s for s in sections if s.type == "sshkeep"]
    settings = {"state": defaults.STATE, "pidfile": defaults.PIDFILE, "syslog": defaults.SYSLOG}
    base = {f: _TUNNEL_DEFAULTS[f] for f, _ in _TUNNEL_OPTS.values()}
    # sshtunnel's init script defaults StrictHostKeyChecking to accept-new.
    base["accept_new"] = True
    for g in glob[:1]:
        base = _apply_tunnel_opts(g, base, _GLOBAL_OPTS, report)
        for name, conv in _GLOBAL_OPTS.items():
            opt = g.opts.get(name)
            if opt is not None:
                try:
                    settings[name] = conv(opt.value)
                except _Bad as exc:
                    report.bad(opt.line, exc, "config sshkeep option %s" % name)
    for s in sections:
        if s.type not in ("sshkeep", "server") + SSHTUNNEL_TYPES:
            report.warn(s.line, "section type '%s' is not an sshtunnel section; ignored" % s.type,
                        "remove it if it is a mistake")

    built, order, disabled, defined = {}, [], set(), []
    for s in (x for x in sections if x.type == "server"):
        if not s.name:
            report.warn(s.line, "anonymous server section cannot be named by a tunnel; ignored",
                        "name it, e.g. config server 'hub'")
            continue
        defined.append(s.name)
        f = dict(base, __lines__=dict(base.get("__lines__", {})))
        extra = []
        for name, opt in s.opts.items():
            if name not in _ST_SERVER:
                report.warn(opt.line, "unknown sshtunnel option '%s' in server '%s'; ignored" % (name, s.name),
                            _suggest(name, _ST_SERVER))
        hostname, hline = _st_get(s, "hostname", report)
        host = None
        if hostname is None:
            report.error(s.line, "server '%s' has no hostname" % s.name, "add option hostname 'server.example.com'")
        else:
            try:
                host = _conv_host(hostname)
            except _Bad as exc:
                report.bad(hline, exc, "server '%s' option hostname" % s.name)
        simple = (("port", "port", _conv_port), ("user", "user", _conv_user),
                  ("IdentityFile", "identity", _conv_path), ("retrydelay", "max_backoff", _float_min(1, False)),
                  ("ServerAliveInterval", "keepalive", _int_min(0)))
        for opt_name, field, conv in simple:
            value, line = _st_get(s, opt_name, report)
            if value is not None:
                try:
                    f[field] = conv(value)
                    f["__lines__"][field] = line
                except _Bad as exc:
                    report.bad(line, exc, "server '%s' option %s" % (s.name, opt_name))
        value, line = _st_get(s, "StrictHostKeyChecking", report)
        if value is not None:
            try:
                v = _enum("yes", "no", "accept-new", "ask")(value)
                f["accept_new"] = v in ("accept-new", "no")
                if v == "no":
                    report.warn(line, "StrictHostKeyChecking no is treated as accept-new",
                                "sshkeep never connects to a server whose key changed")
            except _Bad as exc:
                report.bad(line, exc, "server '%s' option StrictHostKeyChecking" % s.name)
        for opt_name, conv in _ST_PASS.items():
            value, line = _st_get(s, opt_name, report)
            if value is not None:
                try:
                    extra.append((opt_name, conv(value)))
                except _Bad as exc:
                    report.bad(line, exc, "server '%s' option %s" % (s.name, opt_name))
        for opt_name, (conv, why) in _ST_IGNORED.items():
            value, line = _st_get(s, opt_name, report)
            if value is not None:
                try:
                    conv(value)
                    report.warn(line, "%s is ignored: %s" % (opt_name, why), None)
                except _Bad as exc:
                    report.bad(line, exc, "server '%s' option %s" % (s.name, opt_name))
        count = dict(extra).get("ServerAliveCountMax")
        if count not in (None, "3") and f["keepalive"]:
            # ssh keeps the first value of an option, and the keepalive's own count comes first.
            report.warn(s.opts["ServerAliveCountMax"].line, "ServerAliveCountMax %s has no effect: sshkeep "
                        "passes ServerAliveCountMax=3 with its keepalive" % count,
                        "remove it: sshkeep's own checks notice a dead session")
        if not _bool_opt(s, "enabled", report):
            disabled.add(s.name)
            continue
        if host is None:
            continue
        f["extra_options"] = tuple(extra)
        built[s.name] = (s, host, f, [])
        order.append(s.name)

    for t in (x for x in sections if x.type in _ST_TUNNEL):
        label = t.label()
        known = _ST_TUNNEL[t.type]
        for name, opt in t.opts.items():
            if name not in known:
                report.warn(opt.line, "unknown sshtunnel option '%s' in %s; ignored" % (name, label),
                            _suggest(name, known))
        enabled = _bool_opt(t, "enabled", report)
        if t.type == "tunnelW":
            # ssh -w needs root and tun/tap devices on both ends: out of scope. Skipping it (and not
            # refusing the file) keeps the other tunnels of a file the procd script reads unchanged.
            if enabled:
                report.warn(t.line, "%s (ssh -w tun/tap VPN) is skipped: sshkeep does not run VPN tunnels; "
                            "the other tunnels run" % label,
                            "keep sshtunnel for this one, or set option enabled '0' to silence this")
                report.skipped.append(label)
            continue
        server, sline = _st_get(t, "server", report)
        if server is None:
            report.warn(t.line, "%s has no server option; ignored (sshtunnel ignores it too)" % label,
                        "add option server 'NAME'")
            continue
        if server not in defined:
            report.warn(sline, "%s names server '%s', which is not defined; ignored" % (label, server),
                        _suggest(server, defined) if defined else "define config server '%s'" % server)
            continue
        fwd = _st_forward(t, label, report)
        if enabled and fwd is not None and server in built:
            built[server][3].append((t, fwd[1], fwd[0]))
    return settings, [built[n] for n in order], disabled


def _st_forward(t, label, report):
    """sshtunnel: -R remoteaddress:remoteport:localaddress:localport, -L/-D the other way round."""
    ok = True

    def get(name, conv, default=None, required=True):
        nonlocal ok
        value, line = _st_get(t, name, report)
        if value is None:
            if default is None and required:
                report.error(t.line, "%s has no %s" % (label, name), "add option %s" % name)
                ok = False
            return default, t.line
        try:
            return conv(value), line
        except _Bad as exc:
            report.bad(line, exc, "%s option %s" % (label, name))
            ok = False
            return None, line

    # sshtunnel leaves an absent listen address empty ('-R :9009:...') or '*': all interfaces.
    if t.type == "tunnelR":
        bind, _ = get("remoteaddress", lambda v: _conv_host(v, wildcard=True), "*")
        port, pline = get("remoteport", _conv_port)
        host, _ = get("localaddress", _conv_host)
        hostport, _ = get("localport", _conv_port)
        kind = "R"
    else:
        bind, _ = get("localaddress", lambda v: _conv_host(v, wildcard=True), "*")
        port, pline = get("localport", _conv_port)
        if t.type == "tunnelL":
            host, _ = get("remoteaddress", _conv_host)
            hostport, _ = get("remoteport", _conv_port)
            kind = "L"
        else:
            host, hostport, kind = "", 0, "D"
    check, _ = get("check", _conv_check, "connect")
    if not ok:
        return None
    return Forward(kind, bind, port, host, hostport, check, t.name), pline


# --------------------------------------------------------------------------- assembly

def _dialect(sections, package, path, report):
    types = {s.type for s in sections}
    st = bool(types & set(SSHTUNNEL_TYPES)) or package == "sshtunnel"
    if not st and "tunnel" not in types and os.path.basename(path or "") == "sshtunnel":
        st = True
    if not st and "tunnel" not in types:
        servers = [s for s in sections if s.type == "server"]
        st = bool(servers) and any("hostname" in s.opts for s in servers) and \
            not any("host" in s.opts for s in servers)
    if "tunnel" in types and types & set(SSHTUNNEL_TYPES):
        for s in sections:
            if s.type in SSHTUNNEL_TYPES:
                report.error(s.line, "sshtunnel section %s in a file of sshkeep's config tunnel sections"
                             % s.type, "use one format per file: write it as a config tunnel")
        return "sshkeep"
    return "sshtunnel" if st else "sshkeep"


def _check_conflicts(servers, report):
    """Two tunnels on one listen port: remote ports per server host, local ports on this box."""
    seen = {}
    for s, host, f, fwds in servers:
        for t, line, fw in fwds:
            if not fw.port:
                continue  # picked by the server: never the same as another
            side = ("server", host) if fw.kind == "R" else ("box",)
            for other_bind, other_name, other_line in seen.get((side, fw.port), ()):
                if fw.bind == other_bind or fw.bind in _WILDCARDS or other_bind in _WILDCARDS:
                    where = "on server %s" % host if fw.kind == "R" else "on this box"
                    report.error(line, "%s listens on port %d %s like %s (line %d)"
                                 % (t.label(), fw.port, where, other_name, other_line),
                                 "give one of them another listen port")
                    break
            seen.setdefault((side, fw.port), []).append((fw.bind, t.label(), line))


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


def _check_files(servers, report):
    for s, host, f, fwds in servers:
        lines = f.get("__lines__", {})
        key = f.get("identity")
        if key:
            line = lines.get("identity", s.line)
            try:
                st = os.stat(key)
            except FileNotFoundError:
                report.error(line, "server '%s': key file %s does not exist" % (s.name, key),
                             "create it (ssh-keygen or dropbearkey) or fix the path")
                continue
            except (OSError, ValueError) as exc:
                reason = getattr(exc, "strerror", None) or "not a usable path"
                report.error(line, "server '%s': cannot read key file %s (%s)" % (s.name, key, reason),
                             "check the path and its permissions")
                continue
            if not stat.S_ISREG(st.st_mode):
                report.error(line, "server '%s': key file %s is not a regular file" % (s.name, key),
                             "point identity at the private key file")
            elif _is_public(key):
                report.error(line, "server '%s': key file %s is a public key" % (s.name, key),
                             "give the private key" + (" (%s)" % key[:-4] if key.endswith(".pub") else ""))
            elif st.st_mode & 0o077:
                report.error(line, "server '%s': key file %s is readable by group or others (mode %04o)"
                             % (s.name, key, stat.S_IMODE(st.st_mode)), "chmod 600 %s" % key)
        ssh = f.get("ssh_path")
        if ssh and "/" in ssh and not _executable(ssh):
            line = lines.get("ssh_path", s.line)
            report.error(line, "ssh client %s is missing or not executable" % ssh,
                         "install it or fix the path (or leave ssh unset to search PATH)")


def parse_text(text, path="<string>", check_files=True):
    """Parse configuration text -> Settings; raise ConfigError listing every problem."""
    report = _Report(path)
    if len(text) > MAX_SIZE:
        raise ConfigError("%s: file is larger than %d bytes — is this the configuration file?" % (path, MAX_SIZE))
    if "\x00" in text:
        report.error(text.count("\n", 0, text.index("\x00")) + 1, "NUL byte in the file",
                     "this does not look like a text file")
        text = text.replace("\x00", " ")
    text = text.replace("\r\n", "\n")
    sections, package, extra = _sections(text, report)
    dialect = _dialect(sections, package, path, report)
    for line, word in extra:
        what = "extra text %r after the value" % word[:40]
        if dialect == "sshtunnel":
            report.warn(line, what + " (uci ignores it)", "quote values that contain spaces")
        else:
            report.error(line, what, "quote values that contain spaces: option name 'a b'")
    if dialect == "sshtunnel":
        settings, servers, disabled = _parse_sshtunnel(sections, report)
    else:
        settings, servers, disabled = _parse_sshkeep(sections, report)
    _check_conflicts(servers, report)
    if check_files:
        _check_files(servers, report)
    tunnels = []
    for s, host, f, fwds in servers:
        if not fwds:
            report.warn(s.line, "server '%s' has no enabled tunnel and is not started" % s.name,
                        "add a tunnel for it or set option enabled '0'")
            continue
        f = dict(f, name=s.name, host=host, forwards=tuple(fw for _, _, fw in fwds))
        f.pop("__lines__", None)
        tunnels.append(Tunnel(**f))
    if not tunnels and not report.errors:
        if report.skipped:
            report.error(0, "no enabled tunnel sshkeep can run (skipped: %s)" % ", ".join(report.skipped),
                         "keep sshtunnel for these, or add a tunnelR, tunnelL or tunnelD section")
        else:
            report.error(0, "no enabled tunnel", "add a config server and a config tunnel section naming it")
    if report.errors:
        errors = [text for _, text in sorted(report.errors, key=lambda e: e[0])]
        raise ConfigError("\n".join(errors), errors=errors)
    return Settings(tunnels=tuple(tunnels), state=settings["state"], pidfile=settings["pidfile"],
                    syslog=settings["syslog"], config_path=path,
                    warnings=tuple(text for _, text in sorted(report.warnings, key=lambda e: e[0])))


def load(path=DEFAULT_PATH, check_files=True):
    """Read and validate a configuration file (sshkeep or OpenWrt sshtunnel format)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SIZE + 1)
    except FileNotFoundError:
        raise ConfigError("%s: no such configuration file — create it or give another with -c FILE" % path,
                          EX_NOINPUT)
    except IsADirectoryError:
        raise ConfigError("%s: is a directory — give the configuration file itself" % path, EX_NOINPUT)
    except PermissionError:
        raise ConfigError("%s: permission denied — run as root or fix its mode" % path, EX_NOPERM)
    except OSError as exc:
        raise ConfigError("%s: cannot read (%s)" % (path, exc.strerror), EX_NOINPUT)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        msg = "%s:%d: not UTF-8 text — save the file as UTF-8 (or plain ASCII)" % (path, line)
        raise ConfigError(msg, errors=[msg])
    return parse_text(text, path, check_files=check_files)


# --------------------------------------------------------------------------- render

def _q(value):
    """Quote like `uci export`: single quotes, a ' written as '\\''."""
    return "'%s'" % str(value).replace("'", "'\\''")


def _num(value):
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        text = repr(value)
        if "e" in text:  # our parser takes plain decimals only; 30 places keep every bit of a double
            text = ("%.30f" % value).rstrip("0")
        return text
    return str(value)


def _sanitize(name):
    out = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return out or "unnamed"


def _hostport(host, port):
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def _listen(fw):
    if not fw.bind:
        return str(fw.port)
    return _hostport(fw.bind, fw.port)


def render(settings):
    """The effective configuration in sshkeep's own syntax: parse_text(render(s)) == s."""
    out = ["# sshkeep configuration (effective values; sshkeep config -c FILE prints this)",
           "", "config sshkeep",
           "\toption pidfile %s" % _q(settings.pidfile),
           "\toption state %s" % _q(settings.state),
           "\toption syslog %s" % _q(_num(settings.syslog))]
    rev = {field: name for name, (field, _) in _TUNNEL_OPTS.items()}
    for t in settings.tunnels:
        out += ["", "config server %s" % _q(_sanitize(t.name)), "\toption host %s" % _q(t.host)]
        for field, name in rev.items():
            value = getattr(t, field)
            if value == "" or value is None:
                continue
            out.append("\toption %s %s" % (name, _q(_num(value))))
        for host, port in t.alternates:
            out.append("\tlist alternate %s" % _q(_hostport(host, port)))
        for key, value in t.extra_options:
            out.append("\tlist ssh_option %s" % _q("%s=%s" % (key, value)))
    kinds = {v: k for k, v in _KINDS.items()}
    for t in settings.tunnels:
        for fw in t.forwards:
            out += ["", "config tunnel %s" % _q(_sanitize(fw.name)) if fw.name else "config tunnel",
                    "\toption server %s" % _q(_sanitize(t.name)),
                    "\toption type %s" % _q(kinds[fw.kind]),
                    "\toption listen %s" % _q(_listen(fw))]
            if fw.kind != "D":
                out.append("\toption target %s" % _q(_hostport(fw.host, fw.hostport)))
            out.append("\toption check %s" % _q(fw.check))
    return "\n".join(out) + "\n"
