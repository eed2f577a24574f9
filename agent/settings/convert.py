"""A config file's option values -> Tunnel and Forward field values, or Bad(what, how to fix it).

The shared validators (agent.core.values) where flags, config files and ssh_config take the same
value; here what only a file has: booleans uci's way, `[address:]port` and `host:port` in one
word, a forward's check, an ssh_option line. The caller adds FILE:LINE and the option's name.
"""

import difflib
import re

from agent.core import values
from agent.core.model import expand_tilde

Bad = values.Bad  # a value did not convert: `what is wrong` and `how to fix it`

_INT = re.compile(r"[0-9]+\Z")                  # ASCII only: int() also takes '٣' and '1_0'
_TRUE = ("1", "yes", "on", "true", "enabled")
_FALSE = ("0", "no", "off", "false", "disabled")

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
