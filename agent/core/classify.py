"""How did the ssh child end, and what should we do about it? Pure.

The exit code alone says little: OpenSSH exits 255 for every failure, and
also **0** when it gets SIGTERM under -N; dbclient exits 1 for everything
(refused, auth, host key, keepalive, forward failure) and dies *by* the
signal on SIGTERM. So the reason comes from stderr first, then from the
exit status, and from what we ourselves did to the child (`ours`).
"""

from __future__ import annotations

from agent.core.record import record

if False:  # annotations only: importing typing would cost the agent 0.5 MB of memory
    from typing import Optional, Sequence


# Reasons: stable strings, shown in logs and status.
CLIENT_MISSING = "client-missing"
REFUSED = "connection-refused"
DNS = "dns-failure"
TIMEOUT = "connect-timeout"
NETWORK = "network-unreachable"
AUTH = "auth-failed"
HOSTKEY_UNKNOWN = "host-key-unknown"
HOSTKEY_MISMATCH = "host-key-mismatch"
KEY_FORMAT = "key-unusable"
PORT_IN_USE = "remote-port-in-use"
PORT_HELD = "remote-port-held"  # ...by another live session (another box's): found by the reclaim
LOCAL_PORT_IN_USE = "local-port-in-use"
KEEPALIVE = "keepalive-timeout"
CLOSED = "closed-by-server"
SERVER_BUSY = "server-busy"     # dropped before the key exchange: sshd's MaxStartups
SIGNALED = "killed-by-signal"
EXITED = "exited"
# Reasons that come from us, not from the child.
STOPPED = "stopped"
HEALTH = "health-check-failed"
WATCHDOG = "no-ready-in-time"
RECONNECT = "reconnect-requested"
SETUP = "setup-failed"          # we could not even prepare the child (known_hosts, HOME)

# Actions
RETRY = "retry"            # back off (growing), try again
RETRY_SLOW = "retry-slow"  # something a human must fix: longest delay
RECLAIM = "reclaim"        # stale listener on the server: reclaim, then retry
FATAL = "fatal"            # cannot ever work as configured: exit
NONE = "none"              # we stopped it on purpose

# Order matters: the first matching pattern wins, so the specific ones
# (host key, auth) come before the generic ones ("connection closed").
_PATTERNS = (
    (HOSTKEY_MISMATCH, ("remote host identification has changed", "host key mismatch",
                        "has changed and you have requested strict checking")),
    (HOSTKEY_UNKNOWN, ("host key is known for", "not in the trusted hosts file",
                       "host key verification failed", "do you want to continue connecting",
                       # dbclient 2024.84+ with BatchMode: "Host 'IP' key unknown." then this
                       "not accepted automatically", "key unknown")),
    (KEY_FORMAT, ("string too long", "failed loading keyfile", "invalid format", "bad permissions",
                  "unprotected private key file")),
    (AUTH, ("permission denied (", "no auth methods could be used", "too many authentication failures",
            "authentication failed")),
    (PORT_IN_USE, ("remote port forwarding failed", "remote tcp forward request failed")),
    (LOCAL_PORT_IN_USE, ("address already in use", "could not request local forwarding",
                         "failed listening", "cannot listen to port")),
    (DNS, ("could not resolve hostname", "name or service not known", "temporary failure in name resolution",
           "error resolving", "no address associated")),
    (REFUSED, ("connection refused",)),
    # sshd past MaxStartups closes or resets new connections before its banner.
    (SERVER_BUSY, ("kex_exchange_identification", "exceeded maxstartups")),
    (NETWORK, ("no route to host", "network is unreachable", "network unreachable")),
    (KEEPALIVE, ("not responding", "keepalive timeout", "no response from server")),
    (TIMEOUT, ("timed out", "connection timeout")),
    (CLOSED, ("connection closed by", "remote closed the connection", "connection reset", "broken pipe",
              "closed by remote host")),
)

_ACTIONS = {
    # A client binary that vanished (a package upgrade, a lost overlay mount) fails that
    # tunnel only: retried with backoff while the agent's other tunnels keep running.
    CLIENT_MISSING: RETRY,
    AUTH: RETRY_SLOW,
    HOSTKEY_UNKNOWN: RETRY_SLOW,
    HOSTKEY_MISMATCH: RETRY_SLOW,
    KEY_FORMAT: RETRY_SLOW,
    PORT_IN_USE: RECLAIM,
    SETUP: RETRY_SLOW,
    STOPPED: NONE,
}

HINTS = {
    AUTH: "the server refused our key: check -i, the user, and the key in the server's authorized_keys",
    HOSTKEY_UNKNOWN: "the server's host key is not known: add it to the known_hosts file (--known-hosts) "
                     "or start once with --accept-new",
    HOSTKEY_MISMATCH: "the server's host key CHANGED: if that is expected, remove the old line from known_hosts",
    KEY_FORMAT: "the client cannot use the key file on this box: restore it if gone, check its format "
                "(dropbearconvert) and mode (chmod 600)",
    SERVER_BUSY: "the server dropped the connection before the key exchange (MaxStartups?): retrying "
                 "after a random delay; fleets should set --spread",
    PORT_IN_USE: "the listen port is taken on the server; unless reclaim is off, the hub is asked who holds "
                 "it and only this box's own stale session is ended (set ClientAliveInterval on the server)",
    LOCAL_PORT_IN_USE: "a local listen port is taken by another process on this box",
    CLIENT_MISSING: "install openssh-client or dropbear, or give --ssh PATH",
}

# Reasons that mean "the network or server is not there (yet)": boxes boot
# before their uplink, so these are retried for ever, and a cheap TCP probe
# may cut the backoff short when the server comes back.
NETWORK_REASONS = frozenset({REFUSED, DNS, TIMEOUT, NETWORK, KEEPALIVE, CLOSED, EXITED, SIGNALED})
# Of those, the ones where the server's host did not answer at all: only there may the link watch
# probe with bare TCP connects (unanswered ones cost nobody). Where the host answered (refused,
# closed, reset), sshd is what is missing or restarting, and a bare connect that gets through
# earns a `noauth` PerSourcePenalty on OpenSSH 9.8+: the next ssh attempt is the probe there.
PROBE_REASONS = frozenset({TIMEOUT, NETWORK, KEEPALIVE})


@record
class Outcome:
    reason: str
    action: str
    detail: str = ""      # the stderr line that decided it, or the exit status

    @property
    def hint(self) -> str:
        return HINTS.get(self.reason, "")


def key_unusable(path: str, why: str) -> Outcome:
    """The key of a tunnel is gone or unreadable before a connect (deleted, a lost overlay,
    a mode change): said of this box, not as the server refusing it (what ssh without the
    key would end in: `Permission denied (publickey)`, AUTH, pointing at the server)."""
    return Outcome(KEY_FORMAT, RETRY_SLOW, "the key %s on this box is missing or unreadable: %s" % (path, why))


def reason_from_stderr(lines: Sequence[str]) -> Optional[tuple]:
    """(reason, line) for the first known pattern, scanning the newest lines first."""
    for reason, needles in _PATTERNS:
        for line in reversed(list(lines)):
            low = line.lower()
            if any(n in low for n in needles):
                return reason, line.strip()
    return None


def classify(returncode: Optional[int], stderr_lines: Sequence[str], ours: Optional[str] = None,
             kind: str = "openssh") -> Outcome:
    """Decide the reason and action for a child that ended.

    returncode: Popen style (negative = killed by that signal); None = never ran.
    ours: the reason we had for stopping it (STOPPED, HEALTH, WATCHDOG, RECONNECT), if we did.
    """
    if returncode is None:
        lines = [l for l in stderr_lines if l]
        return Outcome(CLIENT_MISSING, RETRY, lines[-1] if lines else "the client could not be started")
    found = reason_from_stderr(stderr_lines)
    if ours in (STOPPED, HEALTH, RECONNECT):
        # OpenSSH's exit 0 on our TERM, dbclient's death by it: both expected. The reason
        # already says we stopped it: the detail is only the status.
        return Outcome(ours, _ACTIONS.get(ours, RETRY), _status(returncode))
    if ours == WATCHDOG:
        # Killed while still connecting: stderr may say why (e.g. dbclient's host key prompt).
        if found:
            return Outcome(found[0], _ACTIONS.get(found[0], RETRY), found[1])
        return Outcome(WATCHDOG, RETRY, "not ready in time; killed (%s)" % _status(returncode))
    if found:
        return Outcome(found[0], _ACTIONS.get(found[0], RETRY), found[1])
    if returncode < 0:
        return Outcome(SIGNALED, RETRY, _status(returncode))
    if returncode == 0:
        # Not "clean": with -N the session only ends like this if someone signalled ssh
        # or the remote side ended the session command.
        return Outcome(CLOSED, RETRY, "ssh exited 0 (session ended)")
    return Outcome(EXITED, RETRY, _status(returncode))


def session_ran(kind: str, returncode: Optional[int], stdout_lines: Sequence[str]) -> bool:
    """Did the server run a session command of its own and end it (before our ready line)?

    A key with a forced command (`command="echo tunnels only"`) logs in, prints, exits:
    OpenSSH then exits with the remote status (its own failures are all 255); dbclient
    exits 1 for everything, so only its exit 0 or output on stdout say the command ran.
    """
    if returncode is None or returncode < 0:
        return False
    if stdout_lines:
        return True
    return returncode == 0 or (kind == "openssh" and returncode != 255)


def _status(returncode):
    if returncode is None:
        return "not started"
    if returncode < 0:
        return "signal %d" % -returncode
    return "exit %d" % returncode
