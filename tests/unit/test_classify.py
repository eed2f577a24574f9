"""The classification table, fed with stderr lines the two clients really print
(captured from OpenSSH 9.2p1 and dbclient 2022.83 on Debian 12)."""

import pytest

from agent.core import classify as C

OPENSSH = [
    (255, ["ssh: connect to host 127.0.0.1 port 2299: Connection refused"], C.REFUSED, C.RETRY),
    (255, ["ssh: Could not resolve hostname no-such-host.invalid: Name or service not known"], C.DNS, C.RETRY),
    (255, ["nobody@127.0.0.1: Permission denied (publickey,keyboard-interactive)."], C.AUTH, C.RETRY_SLOW),
    (255, ["No ED25519 host key is known for [127.0.0.1]:2200 and you have requested strict checking.",
           "Host key verification failed."], C.HOSTKEY_UNKNOWN, C.RETRY_SLOW),
    (255, ["@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @",
           "Host key for [127.0.0.1]:2200 has changed and you have requested strict checking.",
           "Host key verification failed."], C.HOSTKEY_MISMATCH, C.RETRY_SLOW),
    (255, ["Error: remote port forwarding failed for listen port 2200"], C.PORT_IN_USE, C.RECLAIM),
    (255, ["Connection timed out during banner exchange"], C.TIMEOUT, C.RETRY),
    (255, ["ssh: connect to host 192.0.2.1 port 22: Connection timed out"], C.TIMEOUT, C.RETRY),
    (255, ["Timeout, server 10.213.0.2 not responding."], C.KEEPALIVE, C.RETRY),
    (255, ["Connection to 127.0.0.1 closed by remote host."], C.CLOSED, C.RETRY),
    (255, ["ssh: connect to host 10.213.0.2 port 22: No route to host"], C.NETWORK, C.RETRY),
    (255, ["bind [127.0.0.1]:8080: Address already in use",
           "channel_setup_fwd_listener_tcpip: cannot listen to port: 8080",
           "Could not request local forwarding."], C.LOCAL_PORT_IN_USE, C.RETRY),
    (255, ["Load key \"/k\": invalid format"], C.KEY_FORMAT, C.RETRY_SLOW),
]

DROPBEAR = [
    (1, ["dbclient: Connection to root@127.0.0.1:2299 exited: Connect failed: Connection refused"], C.REFUSED),
    (1, ["dbclient: Connection to root@no-such-host.invalid:2201 exited: Connect failed: Error resolving "
         "'no-such-host.invalid' port '2201'. Name or service not known"], C.DNS),
    (1, ["dbclient: Connection to nobody@127.0.0.1:2201 exited: No auth methods could be used."], C.AUTH),
    (1, ["dbclient: Exited: String too long"], C.KEY_FORMAT),
    (1, ["dbclient: Failed loading keyfile '/nonexist'"], C.KEY_FORMAT),
    (1, ["ssh-ed25519 host key mismatch for 127.0.0.1 !", "Fingerprint is SHA256:3vd6",
         "Expected SHA256:wm0Z"], C.HOSTKEY_MISMATCH),
    (1, ["Host '127.0.0.1' is not in the trusted hosts file.",
         "(ssh-ed25519 fingerprint SHA256:3vd6qSX+8DCC2I3cqQhe87hQZvXtNST7DUPOibFZffc)",
         "Do you want to continue connecting? (y/n)"], C.HOSTKEY_UNKNOWN),
    (1, ["dbclient: Connection to tunnel@10.213.0.2:22 exited: Remote TCP forward request failed (port 20022)"],
     C.PORT_IN_USE),
    (1, ["dbclient: Connection to tunnel@10.213.0.2:22 exited: Remote closed the connection"], C.CLOSED),
    # 2025.89 with -o BatchMode=yes
    (1, ["Host '10.213.0.2' key unknown.",
         "dbclient: Connection to tunnel@10.213.0.2:22 exited: Not accepted automatically"], C.HOSTKEY_UNKNOWN),
]


@pytest.mark.parametrize("rc,lines,reason,action", OPENSSH)
def test_openssh_lines(rc, lines, reason, action):
    out = C.classify(rc, lines, kind="openssh")
    assert (out.reason, out.action) == (reason, action)


@pytest.mark.parametrize("rc,lines,reason", DROPBEAR)
def test_dropbear_lines(rc, lines, reason):
    # dbclient exits 1 for everything: only stderr tells these apart.
    assert C.classify(rc, lines, kind="dropbear").reason == reason


def test_exit_zero_is_not_clean():
    # OpenSSH -N exits 0 on SIGTERM: if we did not send it, the session ended.
    assert C.classify(0, []).reason == C.CLOSED


def test_our_term_with_exit_zero_is_stopped():
    assert C.classify(0, [], ours=C.STOPPED).action == C.NONE


def test_dropbear_dies_by_our_signal():
    out = C.classify(-15, [], ours=C.HEALTH)
    assert out.reason == C.HEALTH and out.action == C.RETRY


def test_killed_by_foreign_signal():
    assert C.classify(-9, []).reason == C.SIGNALED


def test_watchdog_uses_stderr_when_it_explains():
    out = C.classify(-15, ["Do you want to continue connecting? (y/n)"], ours=C.WATCHDOG)
    assert out.reason == C.HOSTKEY_UNKNOWN and out.action == C.RETRY_SLOW


def test_unknown_exit():
    assert C.classify(3, ["something odd"]) == C.Outcome(C.EXITED, C.RETRY, "exit 3")


def test_never_started_fails_that_tunnel_only():
    # A vanished client binary is retried with backoff (issue 10 item 12), not fatal to the agent.
    out = C.classify(None, ["/nope: No such file or directory"])
    assert out.reason == C.CLIENT_MISSING and out.action == C.RETRY and "/nope" in out.detail


@pytest.mark.parametrize("ours", [C.STOPPED, C.HEALTH, C.RECONNECT])
def test_our_stop_is_not_said_twice(ours):
    out = C.classify(255, [], ours=ours)
    assert out.reason == ours and out.detail == "exit 255"   # not "stopped (stopped by sshkeep (exit 255))"


@pytest.mark.parametrize("kind,rc,stdout,ran", [
    ("openssh", 0, [], True),                    # command="echo tunnels only": remote status 0
    ("openssh", 1, [], True),                    # command="/bin/false": OpenSSH passes the status on
    ("openssh", 255, [], False),                 # OpenSSH's own failure
    ("openssh", 255, ["tunnels only"], True),    # output of a command that is not ours
    ("dropbear", 0, [], True),
    ("dropbear", 1, [], False),                  # dbclient: 1 is every failure
    ("dropbear", 1, ["tunnels only"], True),
    ("openssh", -15, [], False),
    ("openssh", None, [], False),
])
def test_session_ran(kind, rc, stdout, ran):
    assert C.session_ran(kind, rc, stdout) is ran


def test_newest_line_wins_within_a_reason():
    out = C.classify(255, ["ssh: connect to host a port 1: Connection refused",
                           "ssh: connect to host b port 2: Connection refused"])
    assert "host b" in out.detail


def test_hints_for_operator_reasons():
    for reason in (C.AUTH, C.HOSTKEY_UNKNOWN, C.HOSTKEY_MISMATCH, C.KEY_FORMAT, C.PORT_IN_USE):
        assert C.Outcome(reason, C.RETRY).hint


def test_maxstartups_drop_is_server_busy():
    out = C.classify(255, ["kex_exchange_identification: read: Connection reset by peer",
                           "Connection reset by 10.213.0.2 port 22"])
    assert out.reason == C.SERVER_BUSY and out.action == C.RETRY


def test_a_key_gone_on_this_box_is_key_unusable_not_auth():
    # Issue 23: not "the server refused our key" (AUTH): the file is missing on this box.
    out = C.key_unusable("/etc/sshkeep/id", "No such file or directory")
    assert (out.reason, out.action) == ("key-unusable", C.RETRY_SLOW)
    assert out.detail == "the key /etc/sshkeep/id on this box is missing or unreadable: No such file or directory"
    assert "this box" in out.hint and "authorized_keys" not in out.hint
