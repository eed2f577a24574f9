"""The value validators: one port, host, number and ssh-option check for every source, and the
sanitizers (`word`: any text as one ASCII word for records, file and section names; `printable`:
text from the hub, a child or a directory made safe for a terminal or a log line).

Flags (agent.cli), config files (agent.settings.validate), ssh_config (agent.settings.sshconfig) and forward
specs (agent.core.model) all call these, so a value accepted in one place is accepted in all.
Each returns the converted value or raises Bad(what is wrong, how to fix it); the caller adds
where it came from (flag, FILE:LINE) and the exit code.
"""

from __future__ import annotations

import re
import socket

if False:  # annotations only: importing typing would cost the agent 0.5 MB of memory
    from typing import Optional

_INT = re.compile(r"[0-9]+\Z")                  # ASCII only: int() also takes '٣', '1_0', ' 7'
_FLOAT = re.compile(r"[0-9]+(\.[0-9]+)?\Z")     # no 'inf', 'nan', '1e999'
_HOSTCHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:%")
BIG = 10 ** 9  # no setting needs more; keeps sums and products of settings finite


class Bad(ValueError):
    """A value did not convert: carries `what is wrong` and `how to fix it`."""

    def __init__(self, what, fix):
        super().__init__("%s — %s" % (what, fix))
        self.what = what
        self.fix = fix


def port(value):
    """1-65535, from text (ASCII digits) or an int."""
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 < value < 65536:
            return value
    elif isinstance(value, str) and _INT.match(value) and len(value) <= 5 and 0 < int(value) < 65536:
        return int(value)
    raise Bad("%r is not a port" % (value,), "give a number from 1 to 65535")


def port_or_off(value):
    """A port, or 0 for "off" (loop_port)."""
    if value in ("0", 0) and not isinstance(value, bool):
        return 0
    try:
        return port(value)
    except Bad:
        raise Bad("%r is not a port" % (value,), "give a number from 1 to 65535, or 0 for off")


def host(value, wildcard=False):
    """A host name or IP address ([v6] brackets dropped); `*` too when `wildcard`."""
    v = value
    if v.startswith("[") and v.endswith("]"):
        v = v[1:-1]
    allowed = _HOSTCHARS | {"*"} if wildcard else _HOSTCHARS
    if not v or v.startswith("-") or any(c not in allowed for c in v):
        raise Bad("%r is not a host name or address" % value,
                  "give a name or IP address (ASCII letters, digits, . - _ :)")
    return v


def user(value):
    """A login name: no leading '-', no '@', spaces, control or shell characters (dbclient also
    reads ',' and '/' in its destination argument)."""
    if not value or value.startswith("-") or any(c.isspace() or ord(c) < 32 or c in "@,/'\"`$;&|<>\\"
                                                 for c in value):
        raise Bad("%r is not a user name" % value, "give the login name alone, without @ or spaces")
    return value


def whole(low):
    """A converter for a whole number from `low` to 10^9."""
    def conv(value):
        if not _INT.match(value) or len(value) > 10 or not low <= int(value) <= BIG:
            raise Bad("%r is not a whole number >= %d" % (value, low), "give a number such as %d" % max(low, 1))
        return int(value)
    return conv


def seconds(low, strict=False):
    """A converter for a finite number of seconds >= low (> low when `strict`), at most 10^9."""
    def conv(value):
        ok = _FLOAT.match(value) and len(value) < 40
        number = float(value) if ok else -1.0
        if not ok or number < low or (strict and number <= low) or number > BIG:
            raise Bad("%r is not a number of seconds %s %g" % (value, ">" if strict else ">=", low),
                      "give e.g. '30' or '2.5'")
        return number
    return conv


# What a public key file starts with: an OpenSSH .pub line (key type; also certificates and
# FIDO keys) or an RFC 4716 export. Given as -i, ssh and dbclient fail obscurely.
def is_ip_literal(text: str) -> bool:
    """True for a numeric IPv4 or IPv6 address (no scope id, no brackets): inet_pton, no resolver."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, text)
            return True
        except (OSError, ValueError):
            pass
    return False


_PUBLIC_KEY_HEADS = (b"ssh-", b"ecdsa-sha2-", b"sk-ssh-", b"sk-ecdsa-", b"---- BEGIN SSH2 PUBLIC KEY")


def is_public_key(head):
    """Do these first bytes of a key file belong to a public key?"""
    return head.startswith(_PUBLIC_KEY_HEADS)


# --------------------------------------------------------------------------- ssh -o options

# OpenSSH options a user may pass with -o (or a config file's ssh_option): they change how the
# connection is made, never what runs on either side, where forwards go, or how sshkeep sees the
# session. ProxyCommand and ProxyJump are allowed: they are how a box reaches a hub through a
# proxy (OpenWrt's own sshtunnel example uses ProxyCommand), and they only carry the connection.
# Left out on purpose (examples): LocalCommand, PermitLocalCommand and KnownHostsCommand run
# commands on the box beside the session; RemoteCommand, RequestTTY, SessionType replace or break
# the session sshkeep reads its ready line from; ClearAllForwardings, Control* (a master would
# carry the tunnel away from the agent), Forward*, EscapeChar, Include, Match, SendEnv/SetEnv,
# LogLevel (QUIET would hide the errors sshkeep classifies), PKCS11Provider and SecurityKeyProvider
# (they load a shared library into ssh). CertificateFile is in: a user certificate, read like
# IdentityFile's key and offered with it (a hub that trusts a user CA needs it), runs nothing.
ALLOWED_SSH_OPTIONS = (
    "AddressFamily", "BatchMode", "BindAddress", "BindInterface", "CASignatureAlgorithms", "CertificateFile",
    "CheckHostIP", "Ciphers", "Compression", "ConnectionAttempts", "ConnectTimeout", "ExitOnForwardFailure",
    "FingerprintHash", "GatewayPorts", "HashKnownHosts", "HostKeyAlgorithms", "HostKeyAlias",
    "IdentitiesOnly", "IdentityFile", "IPQoS", "KexAlgorithms", "MACs", "Port",
    "PreferredAuthentications", "ProxyCommand", "ProxyJump", "PubkeyAcceptedAlgorithms",
    "PubkeyAcceptedKeyTypes", "RekeyLimit", "RequiredRSASize",
    "ServerAliveCountMax", "ServerAliveInterval", "StrictHostKeyChecking", "TCPKeepAlive", "UpdateHostKeys",
    "User", "UserKnownHostsFile", "VerifyHostKeyDNS",
)  # not dbclient's own DisableTrivialAuth, UseSyslog: OpenSSH fails on them (and syslog hides errors)
_CANON = {k.lower(): k for k in ALLOWED_SSH_OPTIONS}
# sshkeep sets these itself, to the one value it needs (a prompt would hang the tunnel, a
# missing forward must end the session): any other value is refused.
REQUIRED_VALUES = {"BatchMode": "yes", "ExitOnForwardFailure": "yes"}


def canonical_ssh_option(name):
    """OpenSSH spelling of an allowed option name (option names are case-insensitive), or None."""
    return _CANON.get(name.lower())


# A config file has options of its own for these (accept_new, known_hosts) and sshkeep sets the
# others itself: as a config's ssh_option they would only weaken the host-key pin or the session.
CONFIG_REFUSED = ("BatchMode", "ExitOnForwardFailure", "StrictHostKeyChecking", "UserKnownHostsFile")


def check_ssh_option(name, value=None, in_config=False):
    """None if `name` (and `value`, when given) may be passed to ssh; else the error text (with the fix).
    `in_config`: a config file's ssh_option, where CONFIG_REFUSED are refused whatever the value."""
    canon = canonical_ssh_option(name)
    if canon is None or (in_config and canon in CONFIG_REFUSED):
        return ("ssh option %s is not allowed in sshkeep (it could run commands, move the session or "
                "hide what sshkeep watches); allowed: %s" % (name, ", ".join(ALLOWED_SSH_OPTIONS)))
    need = REQUIRED_VALUES.get(canon)
    if value is not None and need and value.lower() != need:
        return "sshkeep always sets %s=%s itself (a tunnel must not wait for a prompt or run without " \
               "its forwards); remove it" % (canon, need)
    return None


def split_ssh_option(text):
    """'Key=Value', 'Key Value', 'Key = Value' -> (Key, Value), as ssh -o reads it."""
    m = re.match(r"\s*([A-Za-z][A-Za-z0-9]*)\s*(?:=|\s)\s*(\S.*?)\s*\Z", text)
    if not m or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise Bad("%r is not an ssh option" % text, "write Key=Value, e.g. ServerAliveInterval=5")
    return m.group(1), m.group(2)


# Latin letters to ASCII (no unicodedata on python3-light): enough for names people type.
_FROM = "ÀÁÂÃÄÅàáâãäåÇçÐðÈÉÊËèéêëÌÍÎÏìíîïÑñÒÓÔÕÖØòóôõöøÙÚÛÜùúûüÝýÿŠšŽžŁłŚśŹźŻżĆćŃńĘęĄąČčŘřĚěŮů"
_TO = "AAAAAAaaaaaaCcDdEEEEeeeeIIIIiiiiNnOOOOOOooooooUUUUuuuuYyySsZzLlSsZzZzCcNnEeAaCcRrEeUu"
_FOLD = dict(zip(_FROM, _TO))
_FOLD.update({"ß": "ss", "Æ": "AE", "æ": "ae", "Œ": "OE", "œ": "oe", "Þ": "Th", "þ": "th"})


def word(text: str, limit: Optional[int] = 64, keep: str = "._-", empty: str = "-") -> str:
    """Any text as one ASCII word ([A-Za-z0-9] and `keep`, at most `limit`; `empty` for none):
    for the hub's records, file names made from tunnel names, UCI section names.

    Letters with accents lose them (tünnel -> tunnel), anything else becomes '_'.
    Never an identity: two names may fold to the same word."""
    out = []
    for c in text:
        c = _FOLD.get(c, c)
        out.append(c if c.isascii() and (c.isalnum() or c in keep) else "_")
    return "".join(out)[:limit] or empty


# C0, DEL, C1 (0x9b is an 8-bit CSI), the Unicode line breaks, and surrogates (undecodable bytes
# of a file name under surrogateescape: stdout would refuse to encode them).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def printable(text: str, slash: str = "\\") -> str:
    """`text` with every control character written as SLASH + xNN (or uNNNN): one line that
    cannot move a terminal's cursor, set its title or fake a log line of its own."""
    return _CONTROL.sub(lambda m: "%s%s%02x" % (slash, "x" if ord(m.group()) < 256 else "u", ord(m.group())),
                        text)
