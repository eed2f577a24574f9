"""`sshkeep config -c FILE`: the effective configuration, written in sshkeep's own dialect.

Whatever dialect the file was in, parse_text(render(s)) == s: every value is written, and written
so that the parser reads it back unchanged (floats to the last bit, names uci allows).
"""

from agent.core.model import hostport
from agent.settings.sshkeep_conf import KINDS, TUNNEL_OPTS
from agent.settings.uci import sanitize


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
