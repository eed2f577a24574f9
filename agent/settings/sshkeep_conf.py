"""sshkeep's own dialect: `config sshkeep` (globals, and defaults for every server), `config server
'hub'` (one ssh process) and `config tunnel 'luci'` (one forward, naming its server).

`read(sections, report) -> validate.Parsed`; `render(settings)` writes Settings in this dialect
(`sshkeep config -c FILE`, whatever dialect FILE is in). The `config sshkeep` section and the
helpers that read it are also used for OpenWrt sshtunnel files (sshtunnel_conf), where sshkeep's
own options may be added.
"""

import difflib

from agent.core import defaults
from agent.core.model import Forward, Tunnel, hostport
from agent.core.record import defaults as record_defaults
from agent.settings import validate
from agent.settings.uci import sanitize, suggest
from agent.settings.validate import Draft, Parsed, Placed, Server

# option -> (Tunnel field, converter). Each may be set in `config sshkeep` (default for every
# server) and in a `config server` section (that server only).
TUNNEL_OPTS = {
    "port": ("port", validate.port),
    "user": ("user", validate.user),
    "identity": ("identity", validate.path),
    "known_hosts": ("known_hosts", validate.path),
    "accept_new": ("accept_new", validate.boolean),
    "keepalive": ("keepalive", validate.whole(0)),
    "connect_timeout": ("connect_timeout", validate.whole(1)),
    "interval": ("interval", validate.seconds(0, True)),
    "max_backoff": ("max_backoff", validate.seconds(1)),
    "client": ("client", validate.choice("auto", "openssh", "dropbear")),
    "ssh": ("ssh_path", validate.path),
    "remote_check_every": ("remote_check_every", validate.whole(0)),
    "fail_threshold": ("fail_threshold", validate.whole(1)),
    "failover_after": ("failover_after", validate.whole(1)),
    "reclaim": ("reclaim", validate.boolean),
    "loop_port": ("loop_port", validate.port_or_off),
    "spread": ("spread", validate.seconds(0, False)),
    "check_mode": ("check_mode", validate.choice("auto", "session", "exec")),
}
GLOBAL_OPTS = {"pidfile": validate.path, "state": validate.path, "syslog": validate.boolean}
_SERVER_ONLY = ("host", "alternate", "ssh_option", "enabled")
_TUNNEL_SECTION_OPTS = ("server", "type", "listen", "target", "check", "enabled")
KINDS = {"remote": "R", "local": "L", "dynamic": "D"}
_TYPES = ("sshkeep", "server", "tunnel")
SSHTUNNEL_TYPES = ("tunnelR", "tunnelL", "tunnelD", "tunnelW")


# --------------------------------------------------------------------------- shared with sshtunnel_conf

def base_draft():
    """The Tunnel fields an option can set, at their defaults (agent.core.defaults via Tunnel)."""
    tunnel_defaults = record_defaults(Tunnel)
    return Draft({field: tunnel_defaults[field] for field, _ in TUNNEL_OPTS.values()}, {})


def single(opt, report, subject):
    """The value of an option that takes one; a `list` of it is an error."""
    if opt.is_list:
        report.error(opt.line, "%s: %s takes one value, not a list" % (subject, opt.name),
                     "write option %s '...'" % opt.name)
        return None
    return opt.value


def is_enabled(section, report):
    """Its `enabled` option: True when unset (or not a boolean: that is reported)."""
    opt = section.opts.get("enabled")
    if opt is None:
        return True
    value = single(opt, report, section.label())
    if value is None:
        return True
    return report.convert(validate.boolean, value, opt.line, "%s option enabled" % section.label(), True)


def tunnel_opts(section, base, known, report):
    """A copy of Draft `base` with the TUNNEL_OPTS of `section` over it; other options than
    those and `known` are errors."""
    out = base.copy()
    for name, opt in section.opts.items():
        if name not in TUNNEL_OPTS:
            if name not in known:
                report.error(opt.line, "unknown option '%s' in %s" % (name, section.label()),
                             suggest(name, list(TUNNEL_OPTS) + list(known)))
            continue
        value = single(opt, report, section.label())
        if value is None:
            continue
        field, conv = TUNNEL_OPTS[name]
        value = report.convert(conv, value, opt.line, "%s option %s" % (section.label(), name))
        if value is not None:
            out.set(field, value, opt.line)
    return out


def read_globals(sshkeep_sections, base, report, lists_ok=False):
    """The first `config sshkeep` section -> ({state, pidfile, syslog}, the Draft every server starts
    from). `lists_ok`: a list global's last value counts (sshtunnel's config_get reads it so)."""
    found = {"state": defaults.STATE, "pidfile": defaults.PIDFILE, "syslog": defaults.SYSLOG}
    for section in sshkeep_sections[:1]:
        base = tunnel_opts(section, base, GLOBAL_OPTS, report)
        for name, conv in GLOBAL_OPTS.items():
            opt = section.opts.get(name)
            if opt is None:
                continue
            value = opt.value if lists_ok else single(opt, report, "config sshkeep")
            if value is not None:
                value = report.convert(conv, value, opt.line, "config sshkeep option %s" % name)
            if value is not None:
                found[name] = value
    return found, base


# --------------------------------------------------------------------------- sshkeep's dialect

def read(sections, report):
    """sshkeep's sections -> validate.Parsed (problems to `report`)."""
    sshkeep_sections = [s for s in sections if s.type == "sshkeep"]
    servers = [s for s in sections if s.type == "server"]
    for s in sections:
        if s.type not in _TYPES and s.type not in SSHTUNNEL_TYPES:
            close = difflib.get_close_matches(s.type, _TYPES, n=1)
            hint = "did you mean '%s'?" % close[0] if close else "sections are: %s" % ", ".join(_TYPES)
            report.error(s.line, "unknown section type '%s'" % s.type, hint)
    for line, sec in report.dup_lines:
        report.error(line, "section '%s' is defined twice (first at line %d)" % (sec.name, sec.line),
                     "rename one of them (uci would merge them silently)")
    if len(sshkeep_sections) > 1:
        first, second = sshkeep_sections[:2]
        report.error(second.line, "second config sshkeep section (first at line %d)" % first.line,
                     "merge them into one")
    found, base = read_globals(sshkeep_sections, base_draft(), report)
    built = {}  # name -> Server, in file order
    for s in servers:
        if not s.name:
            report.error(s.line, "config server has no name", "name it, e.g. config server 'hub'")
            continue
        server = _server(s, base, report)
        if server is not None:
            built[s.name] = server
    defined = [s.name for s in servers if s.name]
    for t in (s for s in sections if s.type == "tunnel"):
        _tunnel(t, defined, built, report)
    return Parsed(servers=tuple(built.values()), **found)


def _server(s, base, report):
    """A named `config server` section -> Server; None when disabled or without a usable host."""
    draft = tunnel_opts(s, base, _SERVER_ONLY, report)
    enabled = is_enabled(s, report)
    hostopt = s.opts.get("host")
    host = None
    if hostopt is None:
        report.error(s.line, "server '%s' has no host" % s.name, "add option host 'hub.example.net'")
    else:
        value = single(hostopt, report, s.label())
        if value is not None:
            host = report.convert(validate.host, value, hostopt.line, "server '%s' option host" % s.name)
    port = draft.fields["port"]
    alternates = _items(s, "alternate", lambda v: validate.alternate(v, port), report)
    options = _items(s, "ssh_option", validate.ssh_option, report)
    if not enabled or host is None:
        return None
    draft.fields["alternates"] = alternates
    draft.fields["extra_options"] = options
    return Server(s, host, draft, [])


def _items(s, name, conv, report):
    """The converted items of a server's list `name`; an `alternate` item may hold several, space-separated."""
    opt = s.opts.get(name)
    if opt is None:
        return ()
    items = [(w, ln) for v, ln in zip(opt.values, opt.lines) for w in (v.split() if name == "alternate" else [v])]
    got = [report.convert(conv, item, ln, "server '%s' %s" % (s.name, name)) for item, ln in items]
    return tuple(g for g in got if g is not None)


def _tunnel(t, defined, built, report):
    """A `config tunnel` section: its forward goes to the Server it names (when both are enabled)."""
    label = t.label()
    for name, opt in t.opts.items():
        if name not in _TUNNEL_SECTION_OPTS:
            report.error(opt.line, "unknown option '%s' in %s" % (name, label), suggest(name, _TUNNEL_SECTION_OPTS))
    vals = {}  # option -> (value, line)
    for name in _TUNNEL_SECTION_OPTS:
        opt = t.opts.get(name)
        if opt is not None:
            v = single(opt, report, label)
            if v is not None:
                vals[name] = (v, opt.line)
    enabled = is_enabled(t, report)
    kind = "R"
    if "type" in vals:
        kind = KINDS.get(report.convert(validate.choice(*KINDS), *vals["type"], "%s option type" % label))
    server = vals.get("server")
    if server is None:
        report.error(t.line, "%s has no server" % label, "add option server 'NAME' naming a config server")
    elif server[0] not in defined:
        close = difflib.get_close_matches(server[0], defined, n=1)
        fix = "did you mean '%s'?" % close[0] if close else "define config server '%s'" % server[0]
        report.error(server[1], "%s names server '%s', which is not defined" % (label, server[0]), fix)
        server = None
    fwd = _forward(t, label, kind, vals, report)
    if not enabled or server is None or fwd is None or server[0] not in built:
        return
    line = vals.get("listen", ("", t.line))[1]
    if fwd.kind == "R" and fwd.bind not in ("", "localhost", "127.0.0.1", "::1"):
        # sshd binds loopback regardless unless it allows it: the tunnel works, but not where asked
        report.warn(line, "%s asks the server to listen on %s" % (label, fwd.bind),
                    "the server must allow it (OpenSSH: GatewayPorts clientspecified; dropbear: -a), "
                    "or it listens on loopback only")
    built[server[0]].forwards.append(Placed(t, line, fwd))


def _forward(t, label, kind, vals, report):
    """The Forward of a tunnel section's listen, target and check; None when one is wrong."""
    ok = kind is not None
    listen, target = vals.get("listen"), vals.get("target")
    bind = port = host = hostport = None
    if listen is None:
        report.error(t.line, "%s has no listen port" % label, "add option listen '[address:]port'")
        ok = False
    else:
        got = report.convert(lambda v: validate.listen(v, remote=kind == "R"), *listen, "%s option listen" % label)
        ok = ok and got is not None
        bind, port = got or (None, None)
    if kind == "D":
        if target is not None:
            report.error(target[1], "%s is dynamic (SOCKS) and takes no target" % label,
                         "remove option target, or set type remote or local")
            ok = False
        host, hostport = "", 0
    elif target is None and kind is not None:
        report.error(t.line, "%s has no target" % label, "add option target 'host:port'")
        ok = False
    elif target is not None:
        got = report.convert(validate.target, *target, "%s option target" % label)
        ok = ok and got is not None
        host, hostport = got or (None, None)
    check = defaults.CHECK
    if "check" in vals:
        check = report.convert(validate.check, *vals["check"], "%s option check" % label)
        ok = ok and check is not None
    return Forward(kind, bind, port, host, hostport, check, t.name) if ok else None


# --------------------------------------------------------------------------- writing it: `sshkeep config -c FILE`
# Whatever dialect a file was in, its Settings are written in this one, so that
# parse_text(render(s)) == s: every value, written so that the parser reads it back unchanged
# (floats to the last bit, names uci allows).

def quote(value):
    """Quote like `uci export`: single quotes, a ' written as '\\''."""
    return "'%s'" % str(value).replace("'", "'\\''")


def number(value):
    """A value as the parser takes it back: booleans 1/0, whole floats without '.0', no exponents."""
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


def _listen(fw):
    if not fw.bind:
        return str(fw.port)
    return hostport(fw.bind, fw.port)


def render(settings):
    """The effective configuration in sshkeep's own syntax: parse_text(render(s)) == s."""
    out = ["# sshkeep configuration (effective values; sshkeep config -c FILE prints this)",
           "", "config sshkeep",
           "\toption pidfile %s" % quote(settings.pidfile),
           "\toption state %s" % quote(settings.state),
           "\toption syslog %s" % quote(number(settings.syslog))]
    option_of = {field: name for name, (field, _) in TUNNEL_OPTS.items()}
    for t in settings.tunnels:
        out += ["", "config server %s" % quote(sanitize(t.name)), "\toption host %s" % quote(t.host)]
        for field, name in option_of.items():
            value = getattr(t, field)
            if value == "" or value is None:
                continue
            out.append("\toption %s %s" % (name, quote(number(value))))
        for host, port in t.alternates:
            out.append("\tlist alternate %s" % quote(hostport(host, port)))
        for key, value in t.extra_options:
            out.append("\tlist ssh_option %s" % quote("%s=%s" % (key, value)))
    type_of = {v: k for k, v in KINDS.items()}
    for t in settings.tunnels:
        for fw in t.forwards:
            out += ["", "config tunnel %s" % quote(sanitize(fw.name)) if fw.name else "config tunnel",
                    "\toption server %s" % quote(sanitize(t.name)),
                    "\toption type %s" % quote(type_of[fw.kind]),
                    "\toption listen %s" % quote(_listen(fw))]
            if fw.kind != "D":
                out.append("\toption target %s" % quote(hostport(fw.host, fw.hostport)))
            out.append("\toption check %s" % quote(fw.check))
    return "\n".join(out) + "\n"
