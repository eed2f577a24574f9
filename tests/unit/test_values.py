"""Issue 10 (input items): one validator per kind of value, wherever the value comes from;
the backoff that overflowed; keys, clients and -o as an ssh user expects. Pure: no processes."""

import math
import os
import random
import stat

import pytest
from hypothesis import given, settings, strategies as st

from agent import cli

from agent.run import clients

from agent.settings import config, sshconfig, validate

from agent.core import values
from agent.errors import ConfigError, SshkeepError
from agent.core.machine import Backoff
from agent.core.model import Tunnel, parse_forward

DB22 = clients.ClientInfo("dropbear", "/usr/bin/dbclient", "2022.83",
                          frozenset({"exitonforwardfailure", "disabletrivialauth", "usesyslog", "port"}))
DB25 = clients.ClientInfo("dropbear", "/usr/bin/dbclient", "2025.89",
                          frozenset({"batchmode", "bindaddress", "exitonforwardfailure", "gatewayports",
                                     "port", "serveraliveinterval", "stricthostkeychecking"}))
OSSH = clients.ClientInfo("openssh", "/usr/bin/ssh", "9.2p1")


# --------------------------------------------------------------------------- 1: backoff

def test_backoff_survives_a_million_failures():
    # factor ** (n-1) raised OverflowError at attempt 1025 (~16 h of outage at a 60 s cap).
    b = Backoff(cap=60, rng=random.Random(7))
    low = 60 * (1 - b.jitter)
    for n in range(10 ** 6):
        d = b.next()
        assert 0.0 <= d <= 60.0, (n, d)
        if n > 10:
            assert d >= low, (n, d)


@settings(max_examples=300, deadline=None)
@given(cap=st.floats(1, 1e9), factor=st.floats(1, 100), base=st.floats(1e-3, 1e3),
       offset=st.floats(0, 1e4), n=st.integers(0, 10 ** 6))
def test_backoff_is_finite_and_bounded_at_any_attempt(cap, factor, base, offset, n):
    b = Backoff(cap=cap, base=base, factor=factor, offset=offset, rng=random.Random(n))
    b.attempt = n
    d = b.next()
    assert math.isfinite(d) and 0.0 <= d <= cap + offset
    assert b.longest() == cap + offset


@pytest.mark.parametrize("flag", ["--max-backoff", "--interval"])
@pytest.mark.parametrize("text", ["0", "0.5", "inf", "nan", "1e3", "-5"])
def test_seconds_flags_below_one_are_usage_errors(flag, text):
    with pytest.raises(SshkeepError) as info:
        cli.build_parser().parse_args(["run", flag, text, "-R", "1:h:2", "h"])
    assert info.value.code == 64 and flag in str(info.value)


def test_max_backoff_below_one_refused_in_a_config_file_too():
    text = ("config sshkeep\n\toption max_backoff '0.5'\nconfig server 'hub'\n\toption host 'h'\n"
            "config tunnel 't'\n\toption server 'hub'\n\toption listen '8080'\n\toption target '127.0.0.1:80'\n")
    with pytest.raises(ConfigError) as info:
        config.parse_text(text, "t.conf", check_files=False)
    assert info.value.errors == ["t.conf:2: config sshkeep option max_backoff: '0.5' is not a number of "
                                 "seconds >= 1 — give e.g. '30' or '2.5'"]


# --------------------------------------------------------------------------- 4 + 6: one validator

@pytest.mark.parametrize("good,want", [("1", 1), ("22", 22), ("65535", 65535), ("0022", 22), (2222, 2222)])
def test_port_accepts(good, want):
    assert values.port(good) == want


@pytest.mark.parametrize("bad", ["0", "65536", "70000", "", "-1", "+22", " 22", "2_2", "٣", "22.0", "999999",
                                 True, 0, 70000, None])
def test_port_refuses(bad):
    with pytest.raises(values.Bad):
        values.port(bad)


MINI = ("config server 'hub'\n\toption host 'h'\n\toption port '%s'\nconfig tunnel 't'\n"
        "\toption server 'hub'\n\toption listen '8080'\n\toption target '127.0.0.1:80'\n")
ST = ("config server 'hub'\n\toption hostname 'h'\n\toption port '%s'\nconfig tunnelR 't'\n\toption server 'hub'\n"
      "\toption remoteport '8080'\n\toption localaddress '127.0.0.1'\n\toption localport '80'\n")
LOOP = ("config sshkeep\n\toption loop_port '%s'\n" + MINI % "22")


def _refused_by_every_source(tmp_path, text):
    """Whether each source of a port refuses `text`: -p, --loop-port, a -R spec, both config
    dialects, loop_port in a file, ssh_config Port."""
    out = {}
    for name, argv in (("-p", ["-p", text]), ("--loop-port", ["--loop-port", text]),
                       ("-R", ["-R", "1:h:%s" % text])):
        try:
            args = cli.build_parser().parse_args(["run"] + argv + ["-R", "2:h:2", "--ssh", "ssh", "h"])
            cli.settings_from_args(args)
            out[name] = False
        except SshkeepError as exc:
            out[name] = exc.code == 65
    for name, tmpl in (("port", MINI), ("sshtunnel port", ST), ("loop_port", LOOP)):
        try:
            config.parse_text(tmpl % text, "t.conf", check_files=False)
            out[name] = False
        except ConfigError as exc:
            out[name] = "is not a port" in str(exc)
    p = tmp_path / "ssh_config"
    p.write_text("Host hub\n HostName h\n Port %s\n RemoteForward 1 h:2\n" % text)
    try:
        sshconfig.tunnel_from_host(str(p), "hub")
        out["ssh_config Port"] = False
    except ConfigError as exc:
        out["ssh_config Port"] = "is not a port" in str(exc)
    return out


@pytest.mark.parametrize("text", ["0", "70000", "٣", "+22"])
def test_a_bad_port_is_refused_by_every_source(tmp_path, text):
    # Before: -p 0 connected to port 22, --loop-port 70000 was a traceback, loop_port '70000' in
    # a file was accepted, int() took '٣' and '+22' in -R specs.
    got = _refused_by_every_source(tmp_path, text)
    off = ("--loop-port", "loop_port") if text == "0" else ()  # 0 = no loop check
    assert got == {k: k not in off for k in got}, got


def test_a_good_port_is_accepted_by_every_source(tmp_path):
    got = _refused_by_every_source(tmp_path, "2200")
    assert got == {k: False for k in got}, got


@pytest.mark.parametrize("dest", ["bad host name!", "-oProxyCommand=x", "h;reboot", "tünnel.example", "u@"])
def test_a_bad_destination_is_refused_at_start(dest):
    # Before: the agent started and retried every 60 s forever.
    args = cli.build_parser().parse_args(["run", "-R", "1:h:2", "--", dest])
    with pytest.raises(SshkeepError) as info:
        cli.settings_from_args(args)
    assert info.value.code in (64, 65), info.value


@pytest.mark.parametrize("argv", [["-l", "a b"], ["-l-x"], ["-l", "ü;x"]])
def test_a_bad_user_is_refused_at_start(argv):
    args = cli.build_parser().parse_args(["run", "-R", "1:h:2"] + argv + ["h"])
    with pytest.raises(SshkeepError) as info:
        cli.settings_from_args(args)
    assert info.value.code in (64, 65)


def test_ssh_config_host_name_checked_like_a_flag(tmp_path):
    p = tmp_path / "ssh_config"
    p.write_text("Host hub\n HostName bad!host\n RemoteForward 1 h:2\n")
    with pytest.raises(ConfigError) as info:
        sshconfig.tunnel_from_host(str(p), "hub")
    assert str(info.value).startswith("%s:2: HostName: 'bad!host' is not a host name" % p)


@pytest.mark.parametrize("spec", ["1:hü:2", "ü:1:h:2", "1:-h:2", "1:*:2"])
def test_forward_hosts_checked_like_any_host(spec):
    with pytest.raises(ConfigError) as info:
        parse_forward("R", spec)
    assert "is not a host name or address" in str(info.value)


def test_the_shared_validators_are_the_ones_config_uses():
    assert validate.port is values.port and validate.host is values.host
    assert parse_forward("R", "20022:127.0.0.1:22").port == 20022


# --------------------------------------------------------------------------- 2, 11, 13: keys

def _key(tmp_path, name, data, mode=0o600):
    p = tmp_path / name
    p.write_bytes(data)
    os.chmod(str(p), mode)
    return str(p)


def test_identity_directory_refused_with_the_fix(tmp_path):
    # Before: IsADirectoryError, exit 70.
    for info in (OSSH, DB22):
        with pytest.raises(SshkeepError) as exc:
            clients.check_identity(info, str(tmp_path))
        assert exc.value.code == 66 and "is a directory" in str(exc.value)


def test_public_key_named_as_such(tmp_path):
    # Before: "run chmod 600" (a .pub is 644), then auth-failed.
    pub = _key(tmp_path, "id.pub", b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI me@box\n", 0o644)
    for info in (OSSH, DB22):
        with pytest.raises(SshkeepError) as exc:
            clients.check_identity(info, pub)
        assert exc.value.code == 66
        assert "is a public key; give the private key (%s)" % pub[:-4] in str(exc.value)
        assert "chmod" not in str(exc.value)


def test_public_key_in_a_config_file(tmp_path):
    pub = _key(tmp_path, "id.pub", b"ecdsa-sha2-nistp256 AAAA me@box\n", 0o644)
    text = (MINI % "22").replace("option host 'h'", "option host 'h'\n\toption identity '%s'" % pub)
    with pytest.raises(ConfigError) as info:
        config.parse_text(text, "t.conf")
    assert info.value.errors == ["t.conf:3: server 'hub': key file %s is a public key — give the private key "
                                 "(%s)" % (pub, pub[:-4])]


def test_dropbear_key_readable_by_others_refused(tmp_path):
    # Before: only OpenSSH keys had their mode checked.
    key = _key(tmp_path, "id.db", b"\x00\x00\x00\x0bssh-ed25519" + b"\x00" * 40, 0o640)
    for info in (DB22, DB25):
        with pytest.raises(SshkeepError) as exc:
            clients.check_identity(info, key)
        assert exc.value.code == 77 and "chmod 600 %s" % key in str(exc.value)
    os.chmod(key, 0o600)
    clients.check_identity(DB22, key)


# --------------------------------------------------------------------------- 5: --client picks the name

def _bin(tmp_path, *names):
    d = tmp_path / "bin"
    d.mkdir(exist_ok=True)
    for n in names:
        p = d / n
        p.write_text("#!/bin/sh\n")
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return str(d)


def test_client_dropbear_finds_dbclient_and_openssh_finds_ssh(tmp_path):
    both = _bin(tmp_path, "ssh", "dbclient")
    assert clients.find_client("", both, forced="dropbear") == os.path.join(both, "dbclient")
    assert clients.find_client("", both, forced="openssh") == os.path.join(both, "ssh")
    assert clients.find_client("", both) == os.path.join(both, "ssh")


def test_client_dropbear_falls_back_to_ssh_and_openssh_never_takes_dbclient(tmp_path):
    only_db = _bin(tmp_path, "dbclient")
    with pytest.raises(SshkeepError) as exc:
        clients.find_client("", only_db, forced="openssh")
    assert "no ssh on PATH" in str(exc.value)
    only_ssh = str(tmp_path / "b2")
    os.mkdir(only_ssh)
    os.symlink(os.path.join(only_db, "dbclient"), os.path.join(only_ssh, "ssh"))  # OpenWrt: ssh is dbclient
    assert clients.find_client("", only_ssh, forced="dropbear") == os.path.join(only_ssh, "ssh")


def test_detect_forced_dropbear_uses_dbclient_on_path(tmp_path, monkeypatch):
    both = _bin(tmp_path, "ssh", "dbclient")
    monkeypatch.setenv("PATH", both)

    def runner(argv, timeout=5.0):
        if argv[0].endswith("dbclient"):
            return "Dropbear v2022.83\n" if argv[1] == "-V" else "Available options:\n\tExitOnForwardFailure\n"
        return "OpenSSH_9.2p1\n"
    info = clients.detect("", "dropbear", runner=runner)
    assert info.kind == "dropbear" and info.path.endswith("/dbclient")
    assert clients.detect("", "openssh", runner=runner).path.endswith("/ssh")


# --------------------------------------------------------------------------- 7: flags beat ssh_config

def test_command_line_values_win_over_ssh_config(tmp_path):
    p = tmp_path / "ssh_config"
    p.write_text("Host hub\n HostName h.example\n Port 2200\n User fromfile\n IdentityFile /file/key\n"
                 " ServerAliveInterval 30\n Compression yes\n RemoteForward 1 h:2\n")
    args = cli.build_parser().parse_args(["run", "--ssh-config", str(p), "-i", "/flag/key", "-p", "2222",
                                          "-l", "flag", "--keepalive", "5", "-o", "Compression=no", "hub"])
    t = cli.settings_from_args(args).tunnels[0]
    assert (t.host, t.port, t.user, t.identity, t.keepalive) == ("h.example", 2222, "flag", "/flag/key", 5)
    assert t.extra_options == (("Compression", "no"),)
    args = cli.build_parser().parse_args(["run", "--ssh-config", str(p), "hub"])  # and without flags: the file
    t = cli.settings_from_args(args).tunnels[0]
    assert (t.port, t.user, t.identity, t.keepalive) == (2200, "fromfile", "/file/key", 30)


# --------------------------------------------------------------------------- 19: -o

def _tunnel(*argv):
    args = cli.build_parser().parse_args(["run", "-R", "1:h:2"] + list(argv) + ["u@h"])
    return cli.settings_from_args(args).tunnels[0]


def test_o_forms_as_ssh_takes_them():
    # Before: `-o ServerAliveInterval=5` made argparse take the value as the destination.
    t = _tunnel("-o", "ServerAliveInterval=5", "-oConnectTimeout=7", "-o", "compression yes",
                "-o", "Port = 2022", "-o", "TCPKeepAlive=no", "-o", "Compression=no")
    assert (t.keepalive, t.connect_timeout, t.port, t.host, t.user) == (5, 7, 2022, "h", "u")
    assert t.extra_options == (("Compression", "yes"), ("TCPKeepAlive", "no"))  # first value wins
    assert _tunnel("-o", "StrictHostKeyChecking=accept-new", "-o", "UserKnownHostsFile=/k").accept_new
    assert _tunnel("-o", "BatchMode=yes").extra_options == ()  # sshkeep sets it already


def test_flags_beat_the_same_setting_given_with_o():
    t = _tunnel("-p", "2200", "-o", "Port=2022", "-o", "User=x", "--keepalive", "9", "-o", "ServerAliveInterval=5")
    assert (t.port, t.user, t.keepalive) == (2200, "u", 9)


@pytest.mark.parametrize("opt,code", [("LocalCommand=reboot", 64),
                                      ("PermitLocalCommand=yes", 64), ("ClearAllForwardings=yes", 64),
                                      ("ControlMaster=auto", 64), ("RemoteCommand=sh", 64),
                                      ("BatchMode=no", 64), ("ExitOnForwardFailure=no", 64),
                                      ("ServerAliveInterval", 64), ("=5", 64), ("Port=0", 65),
                                      ("ServerAliveInterval=-1", 65), ("StrictHostKeyChecking=maybe", 64),
                                      ("UserKnownHostsFile=/a /b", 64)])
def test_o_refusals(opt, code):
    with pytest.raises(SshkeepError) as info:
        _tunnel("-o", opt)
    assert info.value.code == code, info.value


def test_check_ssh_option_for_the_config_code():
    assert values.check_ssh_option("serveraliveinterval") is None
    assert values.check_ssh_option("ProxyCommand") is None  # how a box reaches a hub through a proxy
    assert values.check_ssh_option("LocalCommand").startswith("ssh option LocalCommand is not allowed")
    assert "BatchMode=yes" in values.check_ssh_option("BatchMode", "no")
    assert set(values.ALLOWED_SSH_OPTIONS).isdisjoint({"LocalCommand", "PermitLocalCommand", "KnownHostsCommand",
                                                       "ClearAllForwardings", "ControlMaster", "LogLevel"})


def test_o_in_argv_of_each_client():
    t = Tunnel("hub", "h", extra_options=(("Compression", "yes"), ("Ciphers", "aes128-ctr"),
                                          ("BindAddress", "10.0.0.1"), ("GatewayPorts", "yes")))
    argv = clients.build_argv(OSSH, t)
    assert argv[argv.index("Compression=yes") - 1] == "-o" and "BindAddress=10.0.0.1" in argv
    db22 = clients.build_argv(DB22, t)
    assert db22[db22.index("aes128-ctr") - 1] == "-c" and db22[db22.index("10.0.0.1") - 1] == "-b"
    assert "-g" in db22 and not any("Compression" in a for a in db22)
    assert clients.dropbear_options(DB22, t.extra_options)[1] == ["Compression"]
    db25 = clients.build_argv(DB25, t)
    assert "BindAddress=10.0.0.1" in db25 and "GatewayPorts=yes" in db25


# --------------------------------------------------------------------------- 20: an open quote

def test_an_open_quote_hides_no_later_error():
    # Before: only line 3's error; everything after an open quote was swallowed.
    text = ("config server 'hub'\n\toption host 'h'\n\toption user 'tunnel\n\toption port '0'\n"
            "\toption keepalive \"x\n\toption frobnicate '1'\nconfig tunnel 't'\n\toption server 'hub'\n"
            "\toption listen '8080'\n\toption target '127.0.0.1:80'\n")
    with pytest.raises(ConfigError) as info:
        config.parse_text(text, "t.conf", check_files=False)
    assert [e.split(" — ")[0] for e in info.value.errors] == [
        "t.conf:3: unterminated ' quote",
        "t.conf:4: server 'hub' option port: '0' is not a port",
        't.conf:5: unterminated " quote',
        "t.conf:6: unknown option 'frobnicate' in server 'hub'"]


def test_quotes_closed_on_their_line_and_continued_lines_still_work():
    text = ("config server 'hub'\n\toption host \"h\\\n.example\"\n\toption user 'tu'\"nnel\"\n"
            "config tunnel 't'; option server 'hub'; option listen '8080'\n\toption target '127.0.0.1:80'\n")
    t = config.parse_text(text, "t.conf", check_files=False).tunnels[0]
    assert (t.host, t.user) == ("h.example", "tunnel")
