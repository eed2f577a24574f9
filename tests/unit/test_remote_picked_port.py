"""Ports the hub picks (-R 0:...): parsed, matched to their forward, recorded by the session script.

The session script runs for real (sh under a perl process that looks like sshd's session process,
as in tests/unit/test_remote.py); the client lines are the ones measured with OpenSSH 9.2 and dbclient 2022.83.
"""

import os

import pytest

from polling import wait_until
from fakesession import starttime

from agent.run import clients

from agent.hub import view as hub
from agent.errors import ConfigError
from agent.core.model import Forward, Tunnel, parse_forward
from agent.hubside.remote import session_command
from agent.core import machine
from agent.run.tunnel import Runner


def test_parse_forward_port_zero_only_for_R():
    assert parse_forward("R", "0:127.0.0.1:22").port == 0
    assert parse_forward("R", "127.0.0.1:0:127.0.0.1:22").spec() == "127.0.0.1:0:127.0.0.1:22"
    for kind, text in (("L", "0:127.0.0.1:22"), ("D", "0")):
        with pytest.raises(ConfigError):
            parse_forward(kind, text)


@pytest.mark.parametrize("line,want", [
    ("Allocated port 46271 for remote forward to 127.0.0.1:22\r", (46271, "127.0.0.1:22")),
    ("dbclient: Allocated port 38681 for remote forward to 127.0.0.1:22", (38681, "127.0.0.1:22")),
    ("Allocated port 0 for remote forward to 127.0.0.1:22", None),
    ("Warning: remote port forwarding failed for listen port 0", None),
])
def test_allocated_port_lines(line, want):
    assert clients.allocated_port(line) == want


def runner(*forwards):
    return Runner(Tunnel("t", "h", forwards=tuple(forwards)), None, machine.Machine(machine.Policy()))


def test_allocations_go_to_port_zero_forwards_in_order():
    fixed = Forward("R", "127.0.0.1", 20022, "127.0.0.1", 22)
    a = Forward("R", "127.0.0.1", 0, "127.0.0.1", 80)
    b = Forward("R", "127.0.0.1", 0, "127.0.0.1", 80)
    c = Forward("R", "", 0, "::1", 443)
    r = runner(fixed, a, b, c)
    assert [f.port for f in r.forwards_now()] == [20022]  # nothing to check before the client says
    assert r.note_allocated("Allocated port 40001 for remote forward to 127.0.0.1:80") == 40001
    assert r.note_allocated("Allocated port 40002 for remote forward to 127.0.0.1:80") == 40002
    assert r.note_allocated("Allocated port 40003 for remote forward to 127.0.0.1:80") is None  # no third
    assert r.note_allocated("Allocated port 40004 for remote forward to [::1]:443") == 40004
    assert r.note_allocated("debug1: something else") is None
    assert [f.port for f in r.forwards_now()] == [20022, 40001, 40002, 40004]
    assert r.allocated == {1: 40001, 2: 40002, 3: 40004}


def record(state, port, pid):
    name = "rport-%d-%d" % (port, pid)
    with open(os.path.join(state, name)) as f:
        return hub.parse_record(name, f.read())


def ports_now(state, port, pid):
    """The ports a record lists, or None while the session is (re)writing it (`>` truncates first)."""
    try:
        return record(state, port, pid).ports
    except hub.BadRecord:
        return None


def test_session_records_a_picked_port_sent_on_stdin(tmp_path, sessions):
    state = str(tmp_path / "state")
    s = sessions(session_command([2222], state, "box1.t1"))
    for line in ("port 40001", "port 0", "port x1", "port 1234567", "hello"):
        s.proc.stdin.write(line.encode() + b"\n")
    s.proc.stdin.flush()
    want = sorted(["rport-2222-%d" % s.pid, "rport-40001-%d" % s.pid])
    wait_until(lambda: sorted(os.listdir(state)) == want, 3, 0.05, what="the picked port's record")
    for port in (2222, 40001):  # every record of the session now lists both ports
        wait_until(lambda: ports_now(state, port, s.pid) == (2222, 40001), 3, 0.05, what="ports=2222,40001")
        r = record(state, port, s.pid)
        assert (r.box, r.start, r.format) == ("box1.t1", starttime(s.pid), "v1")
    s.proc.stdin.close()
    s.proc.stdin = None
    assert s.proc.wait(3) == 0
    assert os.listdir(state) == []  # both removed at the end


def test_session_with_only_picked_ports(tmp_path, sessions):
    state = str(tmp_path / "state")
    s = sessions(session_command([], state, "box1.t1"))
    assert os.listdir(state) == []
    s.proc.stdin.write(b"port 40001\n")
    s.proc.stdin.flush()
    path = os.path.join(state, "rport-40001-%d" % s.pid)
    wait_until(lambda: os.path.exists(path) and os.path.getsize(path), 3, 0.05, what="the record")
    r = record(state, 40001, s.pid)
    assert (r.box, r.start, r.ports) == ("box1.t1", starttime(s.pid), (40001,))


CONF = """config server 'hub'
	option host 'hub.example.com'
	option user 'tunnel'
	option identity '%s'

config tunnel 'a'
	option server 'hub'
	option type 'remote'
	option listen '127.0.0.1:0'
	option target '127.0.0.1:22'

config tunnel 'b'
	option server 'hub'
	option type 'remote'
	option listen '0'
	option target '127.0.0.1:80'
"""


def test_config_file_remote_listen_port_zero(tmp_path):
    from agent.settings import config
    key = tmp_path / "id"
    key.write_text("x")
    key.chmod(0o600)
    path = tmp_path / "sshkeep"
    path.write_text(CONF % key)
    s = config.load(str(path))
    assert [(f.bind, f.port) for t in s.tunnels for f in t.forwards] == [("127.0.0.1", 0), ("", 0)]
    path.write_text(CONF.replace("'remote'\n\toption listen '0'", "'local'\n\toption listen '0'") % key)
    with pytest.raises(ConfigError) as exc:
        config.load(str(path))
    assert "'0' is not a port" in str(exc.value.errors)
