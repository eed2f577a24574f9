"""agent.run.probe against real sockets on 127.0.0.1 / ::1: every verdict, every bound."""

import os
import socket
import struct

import pytest

from peers import FullBacklog, free_port
from polling import wait_for

from agent.run import probe
from agent.run.probe import (
    BANNER_MISMATCH, CLOSED, OK_BANNER, OK_DATA, OK_SILENT, REFUSED, TIMEOUT,
    is_healthy, probe_local, probe_tcp,
)


def test_refused():
    r = probe_local("127.0.0.1", free_port(), timeout=1)
    assert (r.verdict, r.address) == (REFUSED, "127.0.0.1")
    assert not is_healthy(r)
    assert r.elapsed < 0.5


@pytest.mark.parametrize("behaviour", ["close", "reset"])
def test_accept_then_close_is_closed(peers, behaviour):
    p = peers(behaviour)
    r = probe_local("127.0.0.1", p.port, timeout=2)
    assert r.verdict == CLOSED, r
    assert r.elapsed < 1


def test_silent_through_grace_is_healthy(peers):
    p = peers("silent")
    r = probe_local("127.0.0.1", p.port, timeout=2, grace=0.3)
    assert r.verdict == OK_SILENT and is_healthy(r)
    assert 0.25 < r.elapsed < 1.5


def test_data_without_banner_expected(peers):
    p = peers("send:hello")
    r = probe_local("127.0.0.1", p.port, timeout=2)
    assert r.verdict == OK_DATA and is_healthy(r)


@pytest.mark.parametrize("behaviour", ["send:SSH-2.0-OpenSSH\r\n", "slow:SSH-2.0-x\r\n", "late:SSH-2.0-x\r\n"])
def test_banner_matched(peers, behaviour):
    p = peers(behaviour)
    r = probe_local("127.0.0.1", p.port, timeout=2, grace=0.2, banner=b"SSH-")
    assert r.verdict == OK_BANNER, r


def test_banner_mismatch_is_a_stranger(peers):
    p = peers("send:HTTP/1.0 400\r\n")
    r = probe_local("127.0.0.1", p.port, timeout=2, banner=b"SSH-")
    assert r.verdict == BANNER_MISMATCH and not is_healthy(r)
    assert "HTTP" in r.detail


def test_banner_expected_but_silent_is_timeout(peers):
    """A stale listener accepts and never speaks: with a banner it is not healthy."""
    p = peers("silent")
    r = probe_local("127.0.0.1", p.port, timeout=0.6, banner=b"SSH-")
    assert r.verdict == TIMEOUT
    assert 0.55 < r.elapsed < 1.8


def test_banner_then_close_before_complete(peers):
    p = peers("close")
    assert probe_local("127.0.0.1", p.port, timeout=1, banner=b"SSH-").verdict == CLOSED


def test_connect_not_answered_is_timeout_and_bounded():
    fb = FullBacklog()
    try:
        r = probe_local("127.0.0.1", fb.port, timeout=0.5)
        assert r.verdict == TIMEOUT, r
        assert 0.45 < r.elapsed < 1.5
        assert probe_tcp("127.0.0.1", fb.port, timeout=0.5) is False
    finally:
        fb.close()


def test_localhost_with_only_ipv4_listening(peers):
    p = peers("silent", "127.0.0.1")
    r = probe_local("localhost", p.port, timeout=2)
    assert (r.verdict, r.address) == (OK_SILENT, "127.0.0.1")
    assert "::1: refused" in r.detail and "127.0.0.1: ok-silent" in r.detail


def test_localhost_with_only_ipv6_listening(peers):
    p = peers("send:SSH-2.0-x\r\n", "::1")
    r = probe_local("localhost", p.port, timeout=2, banner=b"SSH-")
    assert (r.verdict, r.address) == (OK_BANNER, "::1")
    assert "127.0.0.1: refused" in r.detail


def test_localhost_both_probed_at_once_within_one_timeout(peers):
    """A hanging 127.0.0.1 does not delay ::1's answer beyond one timeout overall."""
    fb = FullBacklog()
    try:
        six = peers("send:SSH-2.0-x\r\n", "::1", fb.port)
    except OSError:
        fb.close()
        pytest.fail("could not bind ::1 on the same port")
    try:
        r = probe_local("localhost", fb.port, timeout=0.8, banner=b"SSH-")
        assert (r.verdict, r.address) == (OK_BANNER, "::1")
        assert "127.0.0.1: timeout" in r.detail
        assert r.elapsed < 1.8
    finally:
        fb.close()
        six.close()


@pytest.mark.parametrize("bind", ["", "0.0.0.0", "*"])
def test_wildcard_bind_probes_ipv4_loopback(peers, bind):
    p = peers("silent")
    r = probe_local(bind, p.port, timeout=1)
    assert (r.verdict, r.address) == (OK_SILENT, "127.0.0.1")


def test_ipv6_literal(peers):
    p = peers("send:x", "::1")
    assert probe_local("::1", p.port).verdict == OK_DATA
    assert probe_local("[::1]", p.port).verdict == OK_DATA


def test_probe_tcp(peers):
    p = peers("silent")
    assert probe_tcp("127.0.0.1", p.port, 1) is True
    assert probe_tcp("localhost", p.port, 1) is True
    assert probe_tcp("127.0.0.1", free_port(), 1) is False


def test_names_are_resolved_with_bytes_only(monkeypatch, peers):
    """The idna trap: a str host to getaddrinfo needs unicodedata, absent on python3-light."""
    p = peers("silent")
    seen = []
    real = socket.getaddrinfo

    def guarded(host, *a, **kw):
        seen.append(host)
        assert isinstance(host, bytes), "str host reached getaddrinfo: %r" % (host,)
        return real(b"127.0.0.1", *a, **kw)
    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    monkeypatch.setattr(socket, "create_connection", None)
    assert probe_tcp("hub.example.invalid", p.port, 1) is True
    assert probe_local("nas.example.invalid", p.port, 1).verdict == OK_SILENT
    assert seen == [b"hub.example.invalid", b"nas.example.invalid"]
    # numeric and localhost need no resolver at all
    assert probe_local("localhost", p.port, 1).verdict == OK_SILENT
    assert probe_local("127.0.0.1", p.port, 1).verdict == OK_SILENT
    assert len(seen) == 2


def test_unresolvable_name_is_an_error_not_a_crash():
    r = probe_local("no-such-host.invalid", 22, timeout=1)
    assert r.verdict == probe.ERROR


def test_no_file_descriptor_leak(peers):
    import os
    p = peers("close")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        probe_local("localhost", p.port, timeout=0.5, grace=0.01)
        probe_tcp("127.0.0.1", p.port, 0.5)
    # the peer thread closes its ends on its own time: poll, bounded
    wait_for(lambda: len(os.listdir("/proc/self/fd")) <= before + 2, 5, 0.02)
    assert len(os.listdir("/proc/self/fd")) <= before + 2


GUARDED = r"""
import socket, sys
from agent.run.probe import probe_local, probe_tcp, OK_SILENT
from agent.hubside.remote import check_command
from agent.run.loop import LoopListener
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(8)
port = s.getsockname()[1]
assert probe_local("localhost", port, 1, 0.05).verdict == OK_SILENT
assert probe_local("", port, 1, 0.05).verdict == OK_SILENT
name = socket.gethostname()          # a name through the resolver: bytes only, or LookupError here
probe_tcp(name, port, 1)
probe_local(name, port, 1, 0.05)
with LoopListener() as lst:
    assert lst.check(lst.port, 1).verdict == "ok-data"
check_command("localhost", port, "SSH-", 1.0)
print("ok")
"""


@pytest.mark.parametrize("python", ["/usr/bin/python3", "/root/.pyenv/versions/3.8.18/bin/python3"])
def test_runs_under_the_python3_light_guard(python):
    """probe and remote on 3.8 and the host python with python3-light's gaps (idna: str getaddrinfo fails)."""
    import os
    import subprocess
    import lightguard
    if not os.access(python, os.X_OK):
        pytest.skip("%s missing (as in test_py38)" % python)
    env = lightguard.guard_env()
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] += os.pathsep + repo
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    lightguard.check_active(python, env)
    r = subprocess.run([python, "-B", "-c", GUARDED], env=env, cwd=repo, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=30)
    assert (r.returncode, r.stdout) == (0, b"ok\n"), r.stderr.decode()


def test_names_resolve_under_the_light_guard():
    # The idna trap: on python3-light a str host reaches the idna codec (unicodedata is
    # absent). The guard reproduces that; a name must still resolve through agent.run.probe.
    import subprocess
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "support"))
    import lightguard
    code = ("import socket\n"
            "from agent.run import probe\n"
            "try:\n    socket.getaddrinfo(socket.gethostname(), None)\n"
            "except LookupError:\n    pass\n"
            "else:\n    raise SystemExit('guard off: str host resolved')\n"
            "assert probe.addresses_for(socket.gethostname())\n"
            "assert probe.probe_local('no-such-host.invalid', 9, 0.5).verdict == probe.ERROR\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = lightguard.guard_env()
    env["PYTHONPATH"] += os.pathsep + root
    p = subprocess.run([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, timeout=30)
    assert p.returncode == 0, p.stderr.decode()


def test_syn_segment_and_answer_of():
    seg = probe.syn_segment("10.0.0.1", "10.0.0.2", 40000, 22, 0x01020304)
    assert len(seg) == 20 and struct.unpack("!HHI", seg[:8]) == (40000, 22, 0x01020304)
    assert seg[13] == 0x02 and seg[12] >> 4 == 5           # SYN only, 5 words, no options
    pseudo = socket.inet_aton("10.0.0.1") + socket.inet_aton("10.0.0.2") + struct.pack("!BBH", 0, 6, 20)
    assert probe._checksum(pseudo + seg) == 0               # the checksum checks out
    ip = bytes([0x45]) + bytes(11) + socket.inet_aton("10.0.0.2") + socket.inet_aton("10.0.0.1")

    def reply(sport, dport, flags, src=ip):
        return src + struct.pack("!HHIIBB", sport, dport, 0, 0, 5 << 4, flags) + bytes(6)
    assert probe.answer_of(reply(22, 40000, 0x12), "10.0.0.2", 40000, 22) is True     # SYN-ACK
    assert probe.answer_of(reply(22, 40000, 0x14), "10.0.0.2", 40000, 22) is False    # RST-ACK
    assert probe.answer_of(reply(22, 40001, 0x12), "10.0.0.2", 40000, 22) is None     # not ours
    assert probe.answer_of(reply(80, 40000, 0x12), "10.0.0.2", 40000, 22) is None
    assert probe.answer_of(reply(22, 40000, 0x10), "10.0.0.2", 40000, 22) is None     # bare ACK
    assert probe.answer_of(reply(22, 40000, 0x12), "10.0.0.9", 40000, 22) is None
    assert probe.answer_of(b"\x45", "10.0.0.2", 40000, 22) is None
