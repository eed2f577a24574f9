"""OpenWrt's sshtunnel dialect, read unchanged so that /etc/config/sshtunnel keeps working:
`config server 'NAME'` (hostname, port, user, IdentityFile and some ssh -o options) and
`config tunnelR`, `tunnelL`, `tunnelD`, `tunnelW` sections naming their server.

`read(sections, report) -> validate.Parsed`. Where sshtunnel's init script would only skip a
section, this reader warns and goes on; a `config sshkeep` section may add sshkeep's own options.
"""

from agent.core import defaults, values
from agent.core.model import Forward
from agent.settings import validate
from agent.settings.sshkeep_conf import SSHTUNNEL_TYPES, base_draft, is_enabled, read_globals
from agent.settings.uci import suggest
from agent.settings.validate import Parsed, Placed, Server

# Server options that are ssh -o options: passed on (OpenSSH) as extra_options.
PASSED = {
    "CheckHostIP": validate.choice("yes", "no"),
    "Compression": validate.choice("yes", "no"),
    "TCPKeepAlive": validate.choice("yes", "no"),
    "VerifyHostKeyDNS": validate.choice("yes", "no"),
    "ServerAliveCountMax": lambda v: str(validate.whole(1)(v)),
    "ProxyCommand": validate.printable,
}  # each also on values.ALLOWED_SSH_OPTIONS, checked again as it is passed
# Refused, with the why and the fix.
REFUSED = {"PKCS11Provider": ("it loads a shared library into ssh, code sshkeep cannot check",
                              "remove it; use a key file (option IdentityFile)")}
# Accepted, checked, and not used (with a warning saying why).
IGNORED = {
    "LogLevel": (validate.choice("QUIET", "FATAL", "ERROR", "INFO", "VERBOSE", "DEBUG", "DEBUG1", "DEBUG2",
                                "DEBUG3"),
                 "sshkeep reads ssh's own error lines to classify failures"),
    "CompressionLevel": (lambda v: str(validate.whole(1)(v)), "OpenSSH no longer has it"),
}
# Server options with a Tunnel field of their own: option -> (field, converter).
_FIELDS = (("port", "port", validate.port), ("user", "user", validate.user),
           ("IdentityFile", "identity", validate.path), ("retrydelay", "max_backoff", validate.seconds(1, False)),
           ("ServerAliveInterval", "keepalive", validate.whole(0)))
SERVER_OPTS = ("hostname", "port", "user", "IdentityFile", "retrydelay", "ServerAliveInterval",
               "StrictHostKeyChecking", "enabled") + tuple(PASSED) + tuple(IGNORED) + tuple(REFUSED)
TUNNEL_OPTS = {
    "tunnelR": ("server", "enabled", "remoteaddress", "remoteport", "localaddress", "localport", "check"),
    "tunnelL": ("server", "enabled", "localaddress", "localport", "remoteaddress", "remoteport", "check"),
    "tunnelD": ("server", "enabled", "localaddress", "localport", "check"),
    "tunnelW": ("server", "enabled", "vpntype", "localdev", "remotedev"),
}


def _get(section, name):
    """(value, line) of an option, (None, the section's line) when unset. sshtunnel reads lists
    with config_get: the last value is fine."""
    opt = section.opts.get(name)
    if opt is None:
        return None, section.line
    return opt.value, opt.line


def read(sections, report):
    """sshtunnel's sections -> validate.Parsed (problems to `report`)."""
    base = base_draft()
    base.fields["accept_new"] = True  # sshtunnel's init script defaults StrictHostKeyChecking to accept-new
    found, base = read_globals([s for s in sections if s.type == "sshkeep"], base, report, lists_ok=True)
    for s in sections:
        if s.type not in ("sshkeep", "server") + SSHTUNNEL_TYPES:
            report.warn(s.line, "section type '%s' is not an sshtunnel section; ignored" % s.type,
                        "remove it if it is a mistake")
    built, defined = {}, []
    for s in (x for x in sections if x.type == "server"):
        if not s.name:
            report.warn(s.line, "anonymous server section cannot be named by a tunnel; ignored",
                        "name it, e.g. config server 'hub'")
            continue
        defined.append(s.name)
        server = _server(s, base, report)
        if server is not None:
            built[s.name] = server
    for t in (x for x in sections if x.type in TUNNEL_OPTS):
        _tunnel(t, defined, built, report)
    return Parsed(servers=tuple(built.values()), **found)


def _server(s, base, report):
    """A named server section -> Server; None when disabled or without a usable hostname."""
    draft = base.copy()
    for name, opt in s.opts.items():
        if name not in SERVER_OPTS:
            report.warn(opt.line, "unknown sshtunnel option '%s' in server '%s'; ignored" % (name, s.name),
                        suggest(name, SERVER_OPTS))
    hostname, hline = _get(s, "hostname")
    host = None
    if hostname is None:
        report.error(s.line, "server '%s' has no hostname" % s.name, "add option hostname 'server.example.com'")
    else:
        host = report.convert(validate.host, hostname, hline, "server '%s' option hostname" % s.name)
    for opt_name, field, conv in _FIELDS:
        value, line = _get(s, opt_name)
        if value is not None:
            value = report.convert(conv, value, line, "server '%s' option %s" % (s.name, opt_name))
        if value is not None:
            draft.set(field, value, line)
    _host_key_checking(s, draft, report)
    options = _ssh_options(s, report)
    count = dict(options).get("ServerAliveCountMax")
    if count not in (None, "3") and draft.fields["keepalive"]:
        # ssh keeps the first value of an option, and the keepalive's own count comes first.
        report.warn(s.opts["ServerAliveCountMax"].line, "ServerAliveCountMax %s has no effect: sshkeep "
                    "passes ServerAliveCountMax=3 with its keepalive" % count,
                    "remove it: sshkeep's own checks notice a dead session")
    if not is_enabled(s, report) or host is None:
        return None
    draft.fields["extra_options"] = tuple(options)
    return Server(s, host, draft, [])


def _host_key_checking(s, draft, report):
    value, line = _get(s, "StrictHostKeyChecking")
    if value is not None:
        value = report.convert(validate.choice("yes", "no", "accept-new", "ask"), value, line,
                               "server '%s' option StrictHostKeyChecking" % s.name)
    if value is not None:
        draft.fields["accept_new"] = value in ("accept-new", "no")
        if value == "no":
            report.warn(line, "StrictHostKeyChecking no is treated as accept-new",
                        "sshkeep never connects to a server whose key changed")


def _ssh_options(s, report):
    """The PASSED options of a server as (Key, value) for ssh -o; the IGNORED ones checked and warned of."""
    options = []
    for opt_name, conv in PASSED.items():
        value, line = _get(s, opt_name)
        if value is not None:
            value = report.convert(conv, value, line, "server '%s' option %s" % (s.name, opt_name))
        problem = value is not None and values.check_ssh_option(opt_name, value)
        if problem:
            report.error(line, "server '%s' option %s: %s" % (s.name, opt_name, problem), "remove it")
        elif value is not None:
            options.append((opt_name, value))
    for opt_name, (why, fix) in REFUSED.items():
        value, line = _get(s, opt_name)
        if value is not None:
            report.error(line, "server '%s' option %s is refused: %s" % (s.name, opt_name, why), fix)
    for opt_name, (conv, why) in IGNORED.items():
        value, line = _get(s, opt_name)
        if value is not None:
            value = report.convert(conv, value, line, "server '%s' option %s" % (s.name, opt_name))
        if value is not None:
            report.warn(line, "%s is ignored: %s" % (opt_name, why), None)
    return options


def _tunnel(t, defined, built, report):
    """A tunnelR/L/D/W section: its forward goes to the Server it names (when both are enabled)."""
    label = t.label()
    known = TUNNEL_OPTS[t.type]
    for name, opt in t.opts.items():
        if name not in known:
            report.warn(opt.line, "unknown sshtunnel option '%s' in %s; ignored" % (name, label),
                        suggest(name, known))
    enabled = is_enabled(t, report)
    if t.type == "tunnelW":
        # ssh -w needs root and tun/tap devices on both ends: out of scope. Skipping it (and not
        # refusing the file) keeps the other tunnels of a file the procd script reads unchanged.
        if enabled:
            report.warn(t.line, "%s (ssh -w tun/tap VPN) is skipped: sshkeep does not run VPN tunnels; "
                        "the other tunnels run" % label,
                        "keep sshtunnel for this one, or set option enabled '0' to silence this")
            report.skipped.append(label)
        return
    server, sline = _get(t, "server")
    if server is None:
        report.warn(t.line, "%s has no server option; ignored (sshtunnel ignores it too)" % label,
                    "add option server 'NAME'")
        return
    if server not in defined:
        report.warn(sline, "%s names server '%s', which is not defined; ignored" % (label, server),
                    suggest(server, defined) if defined else "define config server '%s'" % server)
        return
    placed = _forward(t, label, report)
    if enabled and placed is not None and server in built:
        built[server].forwards.append(placed)


def _forward(t, label, report):
    """The section's Forward, placed at the line of its listen port; None when an option is wrong.
    sshtunnel: -R remoteaddress:remoteport:localaddress:localport, -L/-D the other way round."""
    ok = True

    def get(name, conv, default=None, required=True):
        nonlocal ok
        value, line = _get(t, name)
        if value is None:
            if default is None and required:
                report.error(t.line, "%s has no %s" % (label, name), "add option %s" % name)
                ok = False
            return default, t.line
        value = report.convert(conv, value, line, "%s option %s" % (label, name))
        ok = ok and value is not None
        return value, line

    # sshtunnel leaves an absent listen address empty ('-R :9009:...') or '*': all interfaces.
    if t.type == "tunnelR":
        bind, _ = get("remoteaddress", lambda v: validate.host(v, wildcard=True), "*")
        port, pline = get("remoteport", validate.port)
        host, _ = get("localaddress", validate.host)
        hostport, _ = get("localport", validate.port)
        kind = "R"
    else:
        bind, _ = get("localaddress", lambda v: validate.host(v, wildcard=True), "*")
        port, pline = get("localport", validate.port)
        if t.type == "tunnelL":
            host, _ = get("remoteaddress", validate.host)
            hostport, _ = get("remoteport", validate.port)
            kind = "L"
        else:
            host, hostport, kind = "", 0, "D"
    check, _ = get("check", validate.check, defaults.CHECK)
    if not ok:
        return None
    return Placed(t, pline, Forward(kind, bind, port, host, hostport, check, t.name))
