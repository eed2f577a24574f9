"""Settings as frozen records (agent.core.record): what the CLI or a config file produce.

One `Tunnel` is one ssh process to one server carrying one or more forwards;
each Tunnel is supervised (and fails) independently.
"""

from __future__ import annotations

import os

from agent.core import defaults, values
from agent.errors import ConfigError, EX_DATAERR
from agent.core.record import field, record

if False:  # annotations only: importing typing would cost the agent 0.5 MB of memory
    from typing import Optional, Tuple


@record
class Forward:
    """One -R/-L/-D forward. `bind` is '' when the user gave none."""

    kind: str          # "R" remote, "L" local, "D" dynamic
    bind: str
    port: int
    host: str = ""     # empty for D
    hostport: int = 0  # 0 for D
    check: str = defaults.CHECK  # connect | banner:TEXT | none
    name: str = ""

    def spec(self) -> str:
        """The argument both clients take after -R/-L/-D."""
        parts = []
        if self.bind:
            parts.append("[%s]" % self.bind if ":" in self.bind else self.bind)
        parts.append(str(self.port))
        if self.kind != "D":
            parts.append("[%s]" % self.host if ":" in self.host else self.host)
            parts.append(str(self.hostport))
        return ":".join(parts)

    def label(self) -> str:
        return self.name or "-%s %s" % (self.kind, self.spec())


@record
class Tunnel:
    name: str
    host: str
    port: int = defaults.PORT
    user: str = ""
    identity: str = ""
    forwards: Tuple[Forward, ...] = ()
    client: str = defaults.CLIENT            # auto | openssh | dropbear
    ssh_path: str = ""                       # '' = search PATH for ssh, then dbclient
    known_hosts: str = ""
    accept_new: bool = defaults.ACCEPT_NEW
    keepalive: int = defaults.KEEPALIVE
    connect_timeout: int = defaults.CONNECT_TIMEOUT
    interval: float = defaults.INTERVAL
    max_backoff: float = defaults.MAX_BACKOFF
    alternates: Tuple[Tuple[str, int], ...] = ()
    remote_check_every: int = defaults.REMOTE_CHECK_EVERY  # run the ssh-exec check every Nth interval
    fail_threshold: int = defaults.FAIL_THRESHOLD          # consecutive failed checks before a restart
    reclaim: bool = defaults.RECLAIM                       # reclaim stale listeners on the server
    extra_options: Tuple[Tuple[str, str], ...] = ()
    # Added for config files (issue 5):
    spread: float = defaults.SPREAD          # span (s) of the per-box offset on first connect, backoff; 0 = off
    failover_after: int = defaults.FAILOVER_AFTER  # consecutive failed connects before trying `alternates`
    loop_port: int = defaults.LOOP_PORT      # server-side port for the in-band loop check; 0 = off
    check_mode: str = defaults.CHECK_MODE    # -R checks: auto | session (in the tunnel's session) | exec


@record
class Settings:
    tunnels: Tuple[Tunnel, ...]
    state: str = defaults.STATE
    pidfile: str = defaults.PIDFILE
    syslog: bool = defaults.SYSLOG
    config_path: Optional[str] = None
    argv: Tuple[str, ...] = ()
    box_id_file: str = ""           # agent.run.identity: "" = the default beside the host-key pins
    # Non-fatal findings of the config parser (`FILE:LINE: what — fix`); not part of equality.
    warnings: Tuple[str, ...] = field(default=(), compare=False)


def _port(text, what, source):
    try:
        return values.port(text)
    except values.Bad:
        raise ConfigError("%s: %s %r is not a port (1-65535)" % (source, what, text), EX_DATAERR)


def _split(text):
    """Split on ':' but keep [v6:addr] together."""
    out, cur, depth = [], "", 0
    for ch in text:
        if ch == "[":
            depth += 1
            continue
        if ch == "]":
            depth -= 1
            continue
        if ch == ":" and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return out


def expand_tilde(path: str) -> str:
    """`~/x` with the login user's home from the password database, as OpenSSH does it:
    the init scripts give the agent HOME=/var/run/sshkeep (tmpfs), which is not where
    an existing sshtunnel config's `~/.ssh/id_rsa` lives."""
    if path == "~" or path.startswith("~/"):
        try:
            import pwd
            return (pwd.getpwuid(os.getuid()).pw_dir.rstrip("/") + path[1:]) or "/"
        except (ImportError, KeyError):
            pass
    return os.path.expanduser(path)


def parse_forward(kind: str, text: str, source: str = "command line") -> Forward:
    """Parse `[bind:]port:host:hostport` (R/L) or `[bind:]port` (D)."""
    kind = kind.upper().lstrip("-")
    where = "%s: -%s %s" % (source, kind, text)
    if kind not in ("R", "L", "D"):
        raise ConfigError("%s: unknown forward type" % where, EX_DATAERR)
    if any(c.isspace() for c in text) or not text:
        raise ConfigError("%s: empty or contains spaces" % where, EX_DATAERR)
    parts = _split(text)
    if kind == "D":
        if len(parts) == 1:
            return Forward("D", "", _port(parts[0], "port", where))
        if len(parts) == 2:
            return Forward("D", parts[0], _port(parts[1], "port", where))
        raise ConfigError("%s: expected [bind:]port" % where, EX_DATAERR)
    if len(parts) == 3:
        bind, port, host, hostport = "", parts[0], parts[1], parts[2]
    elif len(parts) == 4:
        bind, port, host, hostport = parts
    else:
        raise ConfigError("%s: expected [bind:]port:host:hostport" % where, EX_DATAERR)
    if not host:
        raise ConfigError("%s: target host is empty" % where, EX_DATAERR)
    for name, wildcard in ((bind, True), (host, False)):
        try:
            if name:
                values.host(name, wildcard=wildcard)
        except values.Bad:  # str.isalnum() took 'ü' here, which the idna codec then needs
            raise ConfigError("%s: %r is not a host name or address" % (where, name), EX_DATAERR)
    # -R 0:...: the hub picks a free port and the client reports it ("Allocated port N")
    listen = 0 if kind == "R" and port == "0" else _port(port, "listen port", where)
    return Forward(kind, bind, listen, host, _port(hostport, "target port", where))


def parse_destination(text: str):
    """`[user@]host` -> (user, host)."""
    user, _, host = text.rpartition("@")
    return user, host


def hostport(host: str, port: int) -> str:
    """`host:port`, with an IPv6 address in brackets as ssh writes it: `[::1]:2299`."""
    return ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)


def check_key(f: Forward) -> str:
    """The name under which agent.run.checks reports the check of forward `f`."""
    if f.name in ("loop-r", "loop-l"):
        return "loop"
    return "%s:%d" % (f.kind, f.port)
