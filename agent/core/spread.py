"""Fleet spreading: a deterministic per-box delay so a fleet does not reconnect in one second.

When a hub restarts, every box loses its tunnel at the same moment; with equal backoff they would
all come back in the same second, again and again. Each box adds `offset(key, span)` seconds to its
first connect and to each backoff delay. The offset is a pure function of the key (host name plus
tunnel name), so one box always waits the same time (reproducible, easy to reason about in logs)
while the fleet is spread evenly over [0, span).

The hash is FNV-1a with a splitmix64 finaliser in pure Python: hashlib's sha256 comes from OpenSSL
(_hashlib) or a builtin module that a trimmed python3-light may lack, and zlib may be absent too.
"""

import socket

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK = (1 << 64) - 1
# Host names that many boxes share out of the box: not unique enough on their own.
GENERIC_HOSTNAMES = ("", "openwrt", "localhost", "(none)", "lede", "router", "debian", "raspberrypi")


def _hash64(data):
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & _MASK
    # splitmix64 finaliser: FNV alone leaves short keys that differ in one character close together
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK
    return h ^ (h >> 31)


def offset(key, span):
    """A delay in [0, span) seconds, the same for the same key on every run and every machine."""
    if not span or span <= 0 or span != span:
        return 0.0
    fraction = (_hash64(key.encode("utf-8", "surrogatepass")) >> 11) / float(1 << 53)  # in [0, 1)
    value = fraction * span
    return value if value < span else 0.0


def _read(path):
    try:
        with open(path) as fh:
            return fh.read().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _first_mac(sys_net="/sys/class/net"):
    """The lowest non-zero MAC address of a non-loopback interface ('' if none)."""
    import os
    try:
        names = sorted(os.listdir(sys_net))
    except OSError:
        return ""
    for name in names:
        if name == "lo":
            continue
        mac = _read(os.path.join(sys_net, name, "address")).lower()
        if mac and mac.strip("0:") and len(mac) == 17:
            return mac
    return ""


def host_key(hostname=None, sys_net="/sys/class/net"):
    """What identifies this box among its fleet: its host name.

    A stock OpenWrt box is named 'OpenWrt', like all its siblings: for such generic names the
    first interface MAC address is appended, so two unrenamed boxes still get different offsets.
    """
    if hostname is None:
        hostname = _read("/proc/sys/kernel/hostname") or socket.gethostname()
    if hostname.lower() in GENERIC_HOSTNAMES:
        mac = _first_mac(sys_net)
        if mac:
            return "%s/%s" % (hostname, mac)
    return hostname


def tunnel_offset(tunnel, key=None):
    """The offset for one Tunnel (one server process) on this box: what the supervisor adds to
    the first connect and to every backoff delay. `key` defaults to host_key()."""
    span = getattr(tunnel, "spread", 0.0)
    if not span:
        return 0.0
    return offset("%s/%s" % (host_key() if key is None else key, tunnel.name), span)
