"""agent.run.loop: the in-band loop check's box side (forwards, echo listener, nonce), on loopback.

The "loop" here is the listener itself (the -L end and the -R target are the same port) or a
local peer with a named behaviour (tests/support/peers.py: Peer); through a real ssh: tests/integration/test_probe_real.py.
"""

import socket

import pytest

from agent.run.loop import LoopListener, loop_forward_pair, make_nonce
from polling import wait_until
from peers import free_port, send_nonce


def test_loop_pair_forwards():
    r, l = loop_forward_pair(41000, 42000, 43000)
    assert r.spec() == "127.0.0.1:42000:127.0.0.1:41000" and r.kind == "R"
    assert l.spec() == "127.0.0.1:43000:127.0.0.1:42000" and l.kind == "L"
    _, l2 = loop_forward_pair(41000, 42000)
    assert 0 < l2.port < 65536


@pytest.mark.parametrize("ports", [(0, 42000), (41000, 70000), (41000, 42000, -1)])
def test_loop_pair_rejects_bad_ports(ports):
    with pytest.raises(ValueError):
        loop_forward_pair(*ports)


def test_loop_listener_echoes_inline():
    with LoopListener() as lst:
        assert lst.port > 0 and lst.fileno() >= 0
        r = lst.check(lst.port, timeout=1)  # the "loop" is the listener itself
        assert r.verdict == "ok-data", r
        assert send_nonce(lst.port, 1, lst)
        assert lst.check(free_port(), timeout=1).verdict == "refused"


def test_loop_listener_trusts_only_its_own_nonce():
    """A connection that came between two checks waits in the backlog; the next check echoes
    its bytes back to it, not into the check's own client."""
    with LoopListener() as lst:
        stranger = socket.create_connection(("127.0.0.1", lst.port), timeout=2)
        try:
            stranger.sendall(b"not the nonce\n")
            assert lst.check(lst.port, timeout=1, nonce=b"mine\n").verdict == "ok-data"
            got = wait_until(lambda: stranger.recv(64), 2, 0.05, what="the stranger's bytes echoed")
            assert got == b"not the nonce\n"
        finally:
            stranger.close()


@pytest.mark.parametrize("behaviour,verdict", [("close", "closed"), ("silent", "timeout"),
                                               ("send:HTTP/1.0 400\r\n", "banner-mismatch")])
def test_loop_listener_broken_loops(peers, behaviour, verdict):  # noqa: F811
    p = peers(behaviour)
    with LoopListener() as lst:
        r = lst.check(p.port, timeout=0.5)
        assert r.verdict == verdict, r
        assert r.elapsed < 1.0


def test_loop_nonce_is_unique():
    a, b = make_nonce(), make_nonce()
    assert a != b and a.startswith(b"sshkeep-loop ") and a.endswith(b"\n")
