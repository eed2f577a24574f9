"""Tunnels from an OpenSSH ssh_config Host block, for either client.

`sshkeep run --ssh-config FILE ALIAS` reads the block the way ssh(1) would (Host patterns with
* ? and !, the first value obtained for a keyword wins, forwards accumulate) and turns it into a
Tunnel. The agent then passes explicit flags (-p, -l, -i, -R/-L/-D, keepalive) to the client:
dropbear's dbclient cannot read ssh_config at all, so the same file drives both clients.

Not supported, with a clear error: Include (inline the file), unix-socket forwards, remote dynamic
forwards (`RemoteForward PORT` alone). `Match` blocks other than `Match all` are skipped with a
warning in the result's "Warnings".
"""

import difflib
import os
import re

from agent.core import defaults, values
from agent.errors import ConfigError, EX_NOINPUT, EX_NOPERM
from agent.core.model import Tunnel, expand_tilde, parse_forward

# Keywords we read (lower case -> canonical spelling).
_SINGLE = ("HostName", "User", "Port", "ServerAliveInterval", "StrictHostKeyChecking",
           "UserKnownHostsFile", "ConnectTimeout")
_MULTI = ("IdentityFile", "LocalForward", "RemoteForward", "DynamicForward")
# Passed on to OpenSSH as -o Key=Value (dropbear ignores what it does not know); each is on
# values.ALLOWED_SSH_OPTIONS too, checked again as it is read.
_PASS = ("ProxyJump", "ProxyCommand", "Compression", "CheckHostIP", "ServerAliveCountMax",
         "TCPKeepAlive", "HostKeyAlgorithms", "KexAlgorithms", "Ciphers", "MACs", "HostKeyAlias",
         "PubkeyAcceptedAlgorithms", "PubkeyAcceptedKeyTypes", "BindAddress", "AddressFamily",
         "IdentitiesOnly", "GatewayPorts", "CertificateFile")
# Set by the agent itself (it needs them a particular way): read and dropped quietly.
_AGENT_OWNED = ("BatchMode", "ExitOnForwardFailure", "LogLevel", "RequestTTY", "SessionType",
                "ControlMaster", "ControlPath", "ControlPersist")
_CANON = {k.lower(): k for k in _SINGLE + _MULTI + _PASS + _AGENT_OWNED}


def _err(path, line, what, fix, code=None):
    msg = "%s:%d: %s — %s" % (path, line, what, fix)
    return ConfigError(msg, code, errors=[msg])


def _split_args(text, path, line):
    """ssh's argv_split: whitespace-separated, "double" and 'single' quotes, \\ escapes, # comment."""
    out, i, n = [], 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        if text[i] == "#":
            break
        buf, quote = [], None
        while i < n:
            c = text[i]
            if quote:
                if c == quote:
                    quote = None
                elif c == "\\" and quote == '"' and i + 1 < n and text[i + 1] in '\\"':
                    i += 1
                    buf.append(text[i])
                else:
                    buf.append(c)
            elif c in "\"'":
                quote = c
            elif c == "\\" and i + 1 < n:
                i += 1
                buf.append(text[i])
            elif c.isspace():
                break
            else:
                buf.append(c)
            i += 1
        if quote:
            raise _err(path, line, "unterminated %s quote" % quote, "close the quote")
        out.append("".join(buf))
    return out


def _keyword_line(raw, path, line):
    """'Keyword value', 'Keyword=value', 'Keyword = value' -> (keyword, [args])."""
    text = raw.strip()
    if not text or text.startswith("#"):
        return None, []
    m = re.match(r"([A-Za-z][A-Za-z0-9]*)\s*(?:=\s*|\s+|\Z)(.*)\Z", text)
    if not m:
        raise _err(path, line, "cannot read %r" % text[:60], "write Keyword value")
    return m.group(1), _split_args(m.group(2), path, line)


def _pattern_match(pattern, name):
    """ssh's match_pattern: * and ? only, case-insensitive for host names."""
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower())
    return re.match(rx + r"\Z", name.lower(), re.S) is not None


def _host_matches(patterns, alias):
    hit = False
    for p in patterns:
        neg = p.startswith("!")
        if _pattern_match(p[1:] if neg else p, alias):
            if neg:
                return False
            hit = True
    return hit


def _expand(value, tokens, path, line, what):
    if value.startswith("~"):
        value = expand_tilde(value)

    def sub(m):
        t = m.group(1)
        if t not in tokens:
            raise _err(path, line, "%s uses %%%s, which sshkeep does not expand" % (what, t),
                       "write the value out in full")
        return tokens[t]
    return re.sub(r"%(.)", sub, value)


def _hostport(text):
    """ssh forward endpoint: '[v6]:port', 'host:port', 'v6/port' -> 'bind:port' for parse_forward."""
    if text.startswith("["):
        return text
    if "/" in text and ":" in text:  # ssh accepts ::1/8080
        host, _, port = text.rpartition("/")
        return "[%s]:%s" % (host, port)
    return text


def _read(path):
    try:
        with open(path, "rb") as fh:
            data = fh.read(1 << 20)
    except FileNotFoundError:
        raise ConfigError("%s: no such ssh_config file — give an existing file with --ssh-config" % path,
                          EX_NOINPUT)
    except PermissionError:
        raise ConfigError("%s: permission denied — run as root or fix its mode" % path, EX_NOPERM)
    except OSError as exc:
        raise ConfigError("%s: cannot read (%s)" % (path, exc.strerror), EX_NOINPUT)
    return data.decode("utf-8", "replace").replace("\r\n", "\n")


def load_host(path, alias):
    """The settings ssh would use for `ssh ALIAS` from one ssh_config file, as a dict.

    Keys (canonical ssh spelling): HostName (alias when unset, %h expanded), User, Port (int),
    IdentityFile (list, ~ and %d %u %h %r %% expanded), LocalForward / RemoteForward /
    DynamicForward (lists of `[bind:]port[:host:hostport]` specs for model.parse_forward),
    ServerAliveInterval / ConnectTimeout (int or None), StrictHostKeyChecking, UserKnownHostsFile
    (first file), Options (list of (Key, value) to pass to OpenSSH), Warnings (list of str).
    """
    if not alias or alias.startswith("-") or any(c.isspace() for c in alias):
        raise ConfigError("%r is not a Host alias — give the name written after Host" % alias)
    text = _read(path)
    got, lines, options, warnings, literal_hosts = {}, {}, [], [], []
    active, specific = True, False
    for number, raw in enumerate(text.split("\n"), 1):
        key, args = _keyword_line(raw, path, number)
        if key is None:
            continue
        low = key.lower()
        if low == "include":
            raise _err(path, number, "Include is not supported",
                       "copy the included Host block into %s, or point --ssh-config at the included file" % path)
        if low == "host":
            if not args:
                raise _err(path, number, "Host without a pattern", "write Host ALIAS")
            active = _host_matches(args, alias)
            literal_hosts += [a for a in args if not any(c in a for c in "*?!")]
            if active and any(a != "*" for a in args if not a.startswith("!")):
                specific = True
            continue
        if low == "match":
            active = [a.lower() for a in args] == ["all"]
            if not active:
                warnings.append("%s:%d: Match blocks are not evaluated; this one is skipped" % (path, number))
            continue
        if not active:
            continue
        canon = _CANON.get(low)
        if canon is None:
            warnings.append("%s:%d: %s is ignored by sshkeep" % (path, number, key))
            continue
        if not args:
            raise _err(path, number, "%s without a value" % key, "give a value or remove the line")
        if canon in _MULTI:
            got.setdefault(canon, []).append((number, args))
        elif canon in _PASS:
            problem = values.check_ssh_option(canon, " ".join(args))
            if problem:
                raise _err(path, number, problem, "remove the line")
            if canon not in [k for k, _ in options]:
                options.append((canon, " ".join(args)))
        elif canon in _SINGLE and canon not in got:
            got[canon] = args
            lines[canon] = number
    if not specific:
        close = difflib.get_close_matches(alias, literal_hosts, n=1)
        fix = "did you mean '%s'?" % close[0] if close else "add a Host %s block" % alias
        msg = "%s: no Host block for '%s' — %s" % (path, alias, fix)
        raise ConfigError(msg, errors=[msg])
    return _result(path, alias, got, lines, options, warnings)


def _int(got, lines, key, path, low):
    if key not in got:
        return None
    try:
        return values.whole(low)(got[key][0])
    except values.Bad as exc:
        raise _err(path, lines[key], "%s: %s" % (key, exc.what), exc.fix)


def _result(path, alias, got, lines, options, warnings):
    out = {"HostName": alias, "User": "", "Port": defaults.PORT, "IdentityFile": [], "LocalForward": [],
           "RemoteForward": [], "DynamicForward": [], "ServerAliveInterval": None, "ConnectTimeout": None,
           "StrictHostKeyChecking": "", "UserKnownHostsFile": "", "Options": options, "Warnings": warnings}
    if "HostName" in got:
        out["HostName"] = _expand(got["HostName"][0], {"h": alias, "%": "%"}, path, lines["HostName"], "HostName")
    if "User" in got:
        out["User"] = got["User"][0]
    for key, conv in (("HostName", values.host), ("User", values.user), ("Port", values.port)):
        if key in got or key == "HostName":
            try:
                out[key] = conv(got[key][0] if key == "Port" else out[key])
            except values.Bad as exc:
                if key not in lines:  # no HostName: ssh connects to the alias itself
                    msg = "%s: Host %s has no HostName, and %s — add HostName" % (path, alias, exc.what)
                    raise ConfigError(msg, errors=[msg])
                raise _err(path, lines[key], "%s: %s" % (key, exc.what), exc.fix)
    out["ServerAliveInterval"] = _int(got, lines, "ServerAliveInterval", path, 0)
    out["ConnectTimeout"] = _int(got, lines, "ConnectTimeout", path, 1)
    if "StrictHostKeyChecking" in got:
        value = got["StrictHostKeyChecking"][0].lower()
        if value not in ("yes", "no", "ask", "accept-new", "off"):
            raise _err(path, lines["StrictHostKeyChecking"], "StrictHostKeyChecking %r is not valid" % value,
                       "write yes, accept-new or no")
        out["StrictHostKeyChecking"] = value
        if value in ("no", "off"):
            warnings.append("%s:%d: StrictHostKeyChecking %s is treated as accept-new (a changed host key is "
                            "still refused)" % (path, lines["StrictHostKeyChecking"], value))
    try:
        import pwd
        local_user = pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        local_user = os.environ.get("USER", "")
    tokens = {"d": expand_tilde("~"), "u": local_user, "h": out["HostName"],
              "r": out["User"], "%": "%"}
    if "UserKnownHostsFile" in got:
        out["UserKnownHostsFile"] = _expand(got["UserKnownHostsFile"][0], tokens, path,
                                            lines["UserKnownHostsFile"], "UserKnownHostsFile")
    for line, args in got.get("IdentityFile", []):
        out["IdentityFile"].append(_expand(args[0], tokens, path, line, "IdentityFile"))
    kinds = {"LocalForward": "L", "RemoteForward": "R", "DynamicForward": "D"}
    for key, kind in kinds.items():
        for line, args in got.get(key, []):
            want = 1 if kind == "D" else 2
            if len(args) != want:
                if kind == "R" and len(args) == 1:
                    fix = "sshkeep keeps -R PORT:HOST:PORT forwards; remote SOCKS (RemoteForward PORT) is not supported"
                else:
                    fix = "write %s %s" % (key, "[bind:]port" if kind == "D" else "[bind:]port host:hostport")
                raise _err(path, line, "%s takes %d value(s), got %d" % (key, want, len(args)), fix)
            if any(a.startswith("/") or "%" in a for a in args):
                raise _err(path, line, "%s with a unix socket path is not supported" % key,
                           "forward TCP ports only")
            spec = ":".join(_hostport(a) for a in args)
            try:
                parse_forward(kind, spec, source=key)
            except ConfigError as exc:
                raise _err(path, line, str(exc), "write %s [bind:]port%s" % (key, "" if kind == "D" else
                                                                            " host:hostport"))
            out[key].append(spec)
    return out


def tunnel_from_host(path, alias, name=None, warnings=None, overrides=None, **defaults):
    """A Tunnel for `ssh ALIAS` as configured in ssh_config FILE.

    `defaults` are Tunnel fields (interval, client, ssh_path, forwards, ...) used where the Host
    block says nothing; forwards given there are added after the block's own. `overrides` are
    Tunnel fields given on the command line (port, user, identity, ...): they win over the block,
    as `ssh -p 2222 ALIAS` does. The result has no forwards when neither gives any: the caller
    decides (the CLI adds -R/-L/-D or refuses).
    `warnings`, a list, gets the file's warnings (skipped Match blocks, ignored keywords).
    """
    d = load_host(path, alias)
    if warnings is not None:
        warnings.extend(d["Warnings"])
    fields = dict(defaults)
    extra_fwds = tuple(fields.pop("forwards", ()))
    fields.update(name=name or alias, host=d["HostName"], port=d["Port"])
    if d["User"]:
        fields["user"] = d["User"]
    if d["IdentityFile"]:
        fields["identity"] = d["IdentityFile"][0]
    if d["ServerAliveInterval"] is not None:
        fields["keepalive"] = d["ServerAliveInterval"]
    if d["ConnectTimeout"] is not None:
        fields["connect_timeout"] = d["ConnectTimeout"]
    if d["StrictHostKeyChecking"]:
        fields["accept_new"] = d["StrictHostKeyChecking"] in ("accept-new", "no", "off")
    if d["UserKnownHostsFile"]:
        fields["known_hosts"] = d["UserKnownHostsFile"]
    if d["Options"]:
        fields["extra_options"] = tuple(fields.get("extra_options", ())) + tuple(d["Options"])
    fwds = []
    for key, kind in (("RemoteForward", "R"), ("LocalForward", "L"), ("DynamicForward", "D")):
        fwds += [parse_forward(kind, spec, source=path) for spec in d[key]]
    fields["forwards"] = tuple(fwds) + extra_fwds  # may be empty: the caller adds -R/-L/-D or refuses
    overrides = dict(overrides or {})
    if "extra_options" in overrides:  # -o options first: ssh takes the first value of each
        first = tuple(overrides.pop("extra_options"))
        named = {k.lower() for k, _ in first}
        fields["extra_options"] = first + tuple(o for o in fields.get("extra_options", ()) if o[0].lower() not in named)
    fields.update(overrides)
    try:
        return Tunnel(**fields)
    except TypeError as exc:
        raise ConfigError("unknown tunnel setting: %s" % exc)
