"""Config files: valid files (sshkeep and real OpenWrt sshtunnel ones) and every error message.

Pure: no processes, only files in a tmp dir (key files are created there with mode 0600).
"""

import os

import pytest

from agent.settings import config, sshtunnel_conf, validate
from agent.settings.sshkeep_conf import render
from agent.errors import EX_CONFIG, EX_NOINPUT, ConfigError
from agent.core import values
from agent.core.model import Forward, Settings, Tunnel

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "support", "configs")
KEYS = ("id_ed25519", "id_rsa", "id_dropbear", "id_backup")


@pytest.fixture
def keydir(tmp_path):
    d = tmp_path / "keys"
    d.mkdir()
    for name in KEYS:
        p = d / name
        p.write_text("not really a key\n")
        os.chmod(str(p), 0o600)
    return str(d)


def copy_config(name, keydir, tmp_path, rename=None):
    with open(os.path.join(HERE, name)) as fh:
        text = fh.read().replace("@KEYDIR@", keydir)
    path = tmp_path / (rename or name)
    path.write_text(text)
    return str(path)


def errors_of(text, check_files=False, path="t.conf"):
    with pytest.raises(ConfigError) as info:
        config.parse_text(text, path, check_files=check_files)
    assert info.value.code == EX_CONFIG
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


MINI = """
config server 'hub'
\toption host 'hub.example.net'

config tunnel 't'
\toption server 'hub'
\toption listen '8080'
\toption target '127.0.0.1:80'
"""


# --------------------------------------------------------------------------- valid files

def test_full_example(keydir, tmp_path):
    path = copy_config("sshkeep-full.conf", keydir, tmp_path)
    s = config.load(path)
    assert s.config_path == path
    assert (s.pidfile, s.state, s.syslog) == ("/var/run/sshkeep.pid", "/var/run/sshkeep.json", True)
    assert [t.name for t in s.tunnels] == ["hub"]  # backup is disabled
    hub = s.tunnels[0]
    assert hub == Tunnel(
        name="hub", host="hub.example.net", port=22, user="box", identity=keydir + "/id_ed25519",
        forwards=(
            Forward("R", "127.0.0.1", 8022, "127.0.0.1", 22, "banner:SSH-", "ssh"),
            Forward("R", "", 8080, "192.168.1.1", 80, "connect", "luci"),
            Forward("L", "127.0.0.1", 3307, "127.0.0.1", 3306, "connect", "db"),
            Forward("D", "", 1080, "", 0, "none", "socks"),
        ),
        client="auto", known_hosts="/etc/sshkeep/known_hosts", accept_new=True, keepalive=15,
        connect_timeout=15, interval=30, max_backoff=60,
        alternates=(("hub2.example.net", 22), ("192.0.2.10", 2222)),
        remote_check_every=4, reclaim=True, spread=20, failover_after=3)
    assert s.warnings == ()


def test_remote_listen_beyond_loopback_warns():
    s = config.parse_text(MINI.replace("'8080'", "'*:8080'"))
    assert list(s.warnings) == [
        "<string>:7: tunnel 't' asks the server to listen on * — the server must allow it (OpenSSH: GatewayPorts "
        "clientspecified; dropbear: -a), or it listens on loopback only"]


def test_sshtunnel_package_example(keydir, tmp_path):
    path = copy_config("sshtunnel-package-example.conf", keydir, tmp_path, rename="sshtunnel")
    s = config.load(path)
    assert len(s.tunnels) == 1
    t = s.tunnels[0]
    assert (t.name, t.host, t.port, t.user) == ("example", "server.example.com", 22, "root")
    assert t.identity == keydir + "/id_rsa"
    assert t.max_backoff == 1          # retrydelay
    assert t.keepalive == 0            # ServerAliveInterval 0: off, as the user asked
    assert t.accept_new is True
    assert t.forwards == (
        Forward("R", "*", 9009, "192.168.1.13", 80, "connect", "http"),
        Forward("L", "*", 1022, "secretserver.example.com", 22, "connect", "test"),
        Forward("D", "*", 4055, "", 0, "connect", "proxy"),
    )
    assert dict(t.extra_options) == {
        "CheckHostIP": "yes", "Compression": "no", "ServerAliveCountMax": "3", "TCPKeepAlive": "yes",
        "VerifyHostKeyDNS": "yes",
        "ProxyCommand": "ncat --proxy-type http --proxy-auth user:pass --proxy ip:port %h %p"}
    assert any("LogLevel is ignored" in w for w in s.warnings)


def test_sshtunnel_every_documented_option(keydir, tmp_path):
    # A tunnelW (ssh -w VPN) beside the others: skipped with a warning, the rest still run.
    path = copy_config("sshtunnel-every-option.conf", keydir, tmp_path, rename="sshtunnel")
    s = config.load(path)
    hub, old = s.tunnels
    assert (hub.name, hub.host, hub.port, hub.user) == ("hub", "hub.example.net", 2222, "root")
    assert (hub.identity, hub.max_backoff, hub.keepalive, hub.accept_new) == (keydir + "/id_rsa", 10, 20, True)
    assert hub.forwards == (
        Forward("R", "*", 20022, "127.0.0.1", 22, "connect", "ssh"),
        Forward("L", "127.0.0.1", 3307, "db.internal", 3306, "connect", "db"),
        Forward("D", "*", 1080, "", 0, "connect", "socks"),
    )
    assert dict(hub.extra_options) == {
        "CheckHostIP": "no", "Compression": "yes", "TCPKeepAlive": "no", "VerifyHostKeyDNS": "no",
        "ServerAliveCountMax": "5", "ProxyCommand": "nc -X connect -x proxy:3128 %h %p"}
    assert (old.host, old.port, old.user, old.accept_new) == ("192.0.2.7", 22, "tunnel", False)  # ask
    assert old.forwards == (Forward("R", "*", 20023, "127.0.0.1", 22, "connect", "oldssh"),)
    lines = {int(w.split(":")[1]): w.split(": ", 1)[1] for w in s.warnings}
    assert sorted(lines) == [11, 13, 14, 53, 60]
    assert lines[11] == "CompressionLevel is ignored: OpenSSH no longer has it"
    assert lines[14].startswith("ServerAliveCountMax 5 has no effect")
    assert lines[53] == ("tunnelW 'vpn' (ssh -w tun/tap VPN) is skipped: sshkeep does not run VPN tunnels; the "
                         "other tunnels run — keep sshtunnel for this one, or set option enabled '0' to silence "
                         "this")
    assert lines[60].startswith("tunnelW 'tap' (ssh -w tun/tap VPN) is skipped")


def test_sshtunnel_passes_only_allowed_ssh_options():
    assert [k for k in sshtunnel_conf.PASSED if values.check_ssh_option(k)] == []


def test_sshtunnel_alive_count_of_three_or_without_keepalive_is_quiet():
    text = ("config server s\n\toption hostname h\n\toption ServerAliveCountMax %s\n"
            "\toption ServerAliveInterval %s\nconfig tunnelD d\n\toption server s\n\toption localport 1\n")
    assert config.parse_text(text % ("3", "10")).warnings == ()
    assert config.parse_text(text % ("9", "0")).warnings == ()
    assert len(config.parse_text(text % ("9", "10")).warnings) == 1


def test_sshtunnel_reverse_ssh(keydir, tmp_path):
    s = config.load(copy_config("sshtunnel-reverse-ssh.conf", keydir, tmp_path))
    (t,) = s.tunnels
    assert (t.name, t.host, t.port, t.user, t.max_backoff, t.keepalive) == \
        ("vps", "vps.example.org", 2222, "tunnel", 10, 60)
    assert t.accept_new is True  # sshtunnel's default StrictHostKeyChecking is accept-new
    assert t.forwards == (
        Forward("R", "127.0.0.1", 10022, "127.0.0.1", 22, "connect", "router_ssh"),
        Forward("R", "127.0.0.1", 10554, "192.168.1.64", 554, "connect", "camera"),
    )


def test_sshtunnel_as_luci_writes_it(keydir, tmp_path):
    s = config.load(copy_config("sshtunnel-luci.conf", keydir, tmp_path))
    (t,) = s.tunnels
    assert (t.name, t.host, t.user, t.max_backoff, t.keepalive, t.accept_new) == \
        ("home", "home.example.com", "root", 10, 60, True)
    assert t.forwards == (Forward("R", "*", 8022, "localhost", 22),
                          Forward("L", "192.168.1.1", 8443, "localhost", 443))
    assert t.forwards[0].label() == "-R *:8022:localhost:22"  # anonymous sections: named by their forward
    assert t.extra_options == (("CheckHostIP", "no"), ("Compression", "no"))
    assert [w.split(": ", 1)[1] for w in s.warnings] == [
        "LogLevel is ignored: sshkeep reads ssh's own error lines to classify failures"]


def test_sshtunnel_two_servers():
    with open(os.path.join(HERE, "sshtunnel-two-servers.conf")) as fh:
        s = config.parse_text(fh.read(), "/etc/config/sshtunnel")
    (t,) = s.tunnels
    assert t.name == "primary" and t.accept_new is False  # StrictHostKeyChecking yes
    assert t.forwards == (
        Forward("R", "*", 2201, "127.0.0.1", 22, "connect", ""),
        Forward("L", "127.0.0.1", 2525, "127.0.0.1", 25, "banner:220", "mail"),
    )
    text = "\n".join(s.warnings)
    assert "LogLevel is ignored" in text and "CompressionLevel is ignored" in text
    assert "server 'unused' has no enabled tunnel" in text


def test_sshtunnel_detected_by_hostname_option_alone():
    text = "config server 's'\n option hostname h\nconfig tunnelR\n option server s\n" \
           " option remoteport 1\n option localaddress 127.0.0.1\n option localport 2\n"
    assert config.parse_text(text).tunnels[0].host == "h"
    # a file with only servers using 'hostname' is sshtunnel's too
    s_only = "config server 's'\n option hostname h\n"
    with pytest.raises(ConfigError) as info:
        config.parse_text(s_only)
    assert "no enabled tunnel" in str(info.value)


def test_minimal_defaults():
    s = config.parse_text(MINI)
    assert s == Settings(tunnels=(Tunnel(name="hub", host="hub.example.net", forwards=(
        Forward("R", "", 8080, "127.0.0.1", 80, "connect", "t"),)),), config_path="<string>")


@pytest.mark.parametrize("text, check", [
    # uci syntax variants all give the same value
    ("option listen 8080", 8080),
    ('option listen "8080"', 8080),
    ("option listen '80'80", 8080),
    ('option listen 80"80"', 8080),
    ("option listen 80\\80", 8080),
    ("o listen 8080", 8080),
    ("option listen 8080 # comment", 8080),
    ("option listen 8080#comment", 8080),
    ("option listen '8080' ; option check none", 8080),
    ("option listen 80\\\n80", 8080),
    ('option listen "80\\\n80"', 8080),
])
def test_uci_quoting(text, check):
    base = "config server hub\n\toption host h\nconfig tunnel t\n\toption server hub\n\toption target h:1\n"
    assert config.parse_text(base + "\t" + text + "\n").tunnels[0].forwards[0].port == check


def test_crlf_and_blank_lines_and_package():
    text = "package sshkeep\r\n\r\n" + MINI.replace("\n", "\r\n") + "   \r\n# end\r\n"
    assert config.parse_text(text) == config.parse_text(MINI)


def test_quote_escapes_in_values():
    text = MINI + "\nconfig sshkeep\n\toption state '/tmp/it'\\''s.json'\n" \
                  "\toption pidfile \"/tmp/a\\\"b.pid\"\n"
    s = config.parse_text(text)
    assert s.state == "/tmp/it's.json" and s.pidfile == '/tmp/a"b.pid'
    assert config.parse_text(render(s), "<string>") == s


def test_empty_option_unsets_and_later_option_wins():
    text = MINI + "\toption check none\n\toption check ''\n"
    s = config.parse_text(text)
    assert s.tunnels[0].forwards[0].check == "connect"
    text = MINI + "\toption check none\n\toption check connect\n"
    s = config.parse_text(text)
    assert s.tunnels[0].forwards[0].check == "connect"
    assert any("set again" in w for w in s.warnings)


def test_globals_are_defaults_and_servers_override():
    text = "config sshkeep\n option interval 5\n option user g\n option client dropbear\n" + MINI + \
        "config server two\n option host h2\n option user own\n option interval 7.5\n" \
        "config tunnel u\n option server two\n option type local\n option listen 9\n option target x:1\n"
    a, b = config.parse_text(text).tunnels
    assert (a.interval, a.user, a.client) == (5, "g", "dropbear")
    assert (b.interval, b.user, b.client) == (7.5, "own", "dropbear")


def test_bools_and_alternates():
    text = MINI.replace("option host 'hub.example.net'",
                        "option host '2001:db8::1'\n\toption port 2200\n\toption accept_new yes\n"
                        "\toption reclaim off\n\toption alternate 'b c:23 [2001:db8::2]:24 [2001:db8::3]'")
    t = config.parse_text(text).tunnels[0]
    assert t.host == "2001:db8::1" and t.accept_new and not t.reclaim
    assert t.alternates == (("b", 2200), ("c", 23), ("2001:db8::2", 24), ("2001:db8::3", 2200))


def test_disabled_tunnel_and_disabled_server_are_left_out():
    text = MINI + "\toption enabled 0\nconfig tunnel u\n option server hub\n option listen 9\n option target h:1\n"
    assert [f.name for f in config.parse_text(text).tunnels[0].forwards] == ["u"]


def test_same_port_on_different_servers_and_sides_is_fine():
    text = MINI + "config server two\n option host other\nconfig tunnel u\n option server two\n" \
        " option listen 8080\n option target h:1\nconfig tunnel v\n option server hub\n option type local\n" \
        " option listen 8080\n option target h:1\n"
    assert len(config.parse_text(text).tunnels) == 2


def test_different_bind_same_port_is_fine():
    text = MINI.replace("'8080'", "'127.0.0.2:8080'") + \
        "config tunnel u\n option server hub\n option listen 127.0.0.3:8080\n option target h:1\n"
    assert len(config.parse_text(text).tunnels[0].forwards) == 2


def test_tilde_is_the_users_home_not_home_env(monkeypatch):
    # procd and the busybox script give the agent HOME=/var/run/sshkeep; ~/.ssh/id_rsa in an
    # existing sshtunnel config means the login user's home, as it does to OpenSSH.
    import pwd
    monkeypatch.setenv("HOME", "/var/run/sshkeep")
    s = config.parse_text(MINI.replace("option host", "option identity '~/.ssh/k'\n\toption host"),
                          check_files=False)
    assert s.tunnels[0].identity == pwd.getpwuid(os.getuid()).pw_dir.rstrip("/") + "/.ssh/k"
    s = config.parse_text(MINI.replace("option host", "option identity '~root/k'\n\toption host"),
                          check_files=False)
    assert s.tunnels[0].identity == os.path.expanduser("~root/k")


def test_render_roundtrip_of_every_example(keydir, tmp_path):
    for name in ("sshkeep-full.conf", "sshtunnel-package-example.conf", "sshtunnel-reverse-ssh.conf",
                 "sshtunnel-two-servers.conf", "sshtunnel-luci.conf"):
        path = copy_config(name, keydir, tmp_path)
        s = config.load(path)
        again = config.parse_text(render(s), path)
        assert again == s, name
        assert render(again) == render(s)


# --------------------------------------------------------------------------- errors

def test_missing_file():
    with pytest.raises(ConfigError) as info:
        config.load("/nonexistent/sshkeep.conf")
    assert info.value.code == EX_NOINPUT
    assert "no such configuration file" in str(info.value)


def test_not_utf8(tmp_path):
    p = tmp_path / "c"
    p.write_bytes(b"config sshkeep\noption state '\xff'\n")
    with pytest.raises(ConfigError) as info:
        config.load(str(p))
    assert str(info.value) == "%s:2: not UTF-8 text — save the file as UTF-8 (or plain ASCII)" % p


def _tunnel(extra, server="hub"):
    return MINI + "config tunnel x\n\toption server %s\n%s" % (server, extra)


ERRORS = [
    # (text, exact error lines with t.conf:LINE prefix)
    ("config server hub\n\toption hots h\n",
     ["t.conf:1: server 'hub' has no host — add option host 'hub.example.net'",
      "t.conf:2: unknown option 'hots' in server 'hub' — did you mean 'host'?"]),
    (MINI + "\toption Listen 1\n",
     ["t.conf:9: unknown option 'Listen' in tunnel 't' — did you mean 'listen'? (names are case-sensitive)"]),
    (MINI + "\toption zzzz 1\n",
     ["t.conf:9: unknown option 'zzzz' in tunnel 't' — known options: check, enabled, listen, server, "
      "target, type"]),
    (MINI + "config servr x\n", ["t.conf:9: unknown section type 'servr' — did you mean 'server'?"]),
    (MINI.replace("hub.example.net'", "hub.example.net'\n\toption port 0"),
     ["t.conf:4: server 'hub' option port: '0' is not a port — give a number from 1 to 65535"]),
    (MINI.replace("'8080'", "'99999'"),
     ["t.conf:7: tunnel 't' option listen: '99999' is not a port — give a number from 1 to 65535"]),
    (MINI.replace("'8080'", "'abc'"),
     ["t.conf:7: tunnel 't' option listen: 'abc' is not a port — give a number from 1 to 65535"]),
    (MINI.replace("'8080'", "'::1:80'"),
     ["t.conf:7: tunnel 't' option listen: '::1:80': IPv6 address without brackets — write it as [::1]:80"]),
    (MINI.replace("'8080'", "'[::1'"),
     ["t.conf:7: tunnel 't' option listen: '[::1' has an unclosed [ — write IPv6 addresses as [::1]:8080"]),
    (MINI.replace("'127.0.0.1:80'", "'127.0.0.1'"),
     ["t.conf:8: tunnel 't' option target: '127.0.0.1' is not host:port — write e.g. '127.0.0.1:80'"]),
    (MINI.replace("'127.0.0.1:80'", "'80'"),
     ["t.conf:8: tunnel 't' option target: '80' is not host:port — write e.g. '127.0.0.1:80'"]),
    (MINI.replace("'127.0.0.1:80'", "'h st:80'"),
     ["t.conf:8: tunnel 't' option target: 'h st' is not a host name or address — give a name or IP "
      "address (ASCII letters, digits, . - _ :)"]),
    (MINI.replace("'hub'\n\toption listen", "'hbu'\n\toption listen"),
     ["t.conf:6: tunnel 't' names server 'hbu', which is not defined — did you mean 'hub'?"]),
    (MINI.replace("'hub'\n\toption listen", "'zzz'\n\toption listen"),
     ["t.conf:6: tunnel 't' names server 'zzz', which is not defined — define config server 'zzz'"]),
    (_tunnel("\toption listen 8080\n\toption target h:1\n"),
     ["t.conf:11: tunnel 'x' listens on port 8080 on server hub.example.net like tunnel 't' (line 7) — "
      "give one of them another listen port"]),
    (_tunnel("\toption type local\n\toption listen 1\n\toption target h:1\n") +
     "config tunnel y\n\toption server hub\n\toption type dynamic\n\toption listen 127.0.0.1:1\n",
     ["t.conf:17: tunnel 'y' listens on port 1 on this box like tunnel 'x' (line 12) — give one of them "
      "another listen port"]),
    (_tunnel("\toption type sideways\n\toption listen 1\n\toption target h:1\n"),
     ["t.conf:11: tunnel 'x' option type: 'sideways' is not one of remote, local, dynamic — write one of them"]),
    (_tunnel("\toption type dynamic\n\toption listen 1\n\toption target h:1\n"),
     ["t.conf:13: tunnel 'x' is dynamic (SOCKS) and takes no target — remove option target, or set type "
      "remote or local"]),
    (_tunnel("\toption listen 1\n"), ["t.conf:9: tunnel 'x' has no target — add option target 'host:port'"]),
    (_tunnel("\toption target h:1\n"),
     ["t.conf:9: tunnel 'x' has no listen port — add option listen '[address:]port'"]),
    ("config server hub\n\toption host h\nconfig tunnel x\n\toption listen 1\n\toption target h:1\n",
     ["t.conf:3: tunnel 'x' has no server — add option server 'NAME' naming a config server"]),
    (_tunnel("\toption listen 1\n\toption target h:1\n\toption check banner:\n"),
     ["t.conf:13: tunnel 'x' option check: 'banner:' is not a check — write connect, none or banner:TEXT"]),
    (_tunnel("\toption listen 1\n\toption target h:1\n\toption enabled maybe\n"),
     ["t.conf:13: tunnel 'x' option enabled: 'maybe' is not a boolean — write '1' or '0' (also yes/no, "
      "on/off, true/false)"]),
    ("config sshkeep\n\toption interval 0\n\toption max_backoff -1\n\toption keepalive x\n"
     "\toption client putty\n\toption spread 1e3\n" + MINI,
     ["t.conf:2: config sshkeep option interval: '0' is not a number of seconds > 0 — give e.g. '30' or '2.5'",
      "t.conf:3: config sshkeep option max_backoff: '-1' is not a number of seconds >= 1 — give e.g. '30' "
      "or '2.5'",
      "t.conf:4: config sshkeep option keepalive: 'x' is not a whole number >= 0 — give a number such as 1",
      "t.conf:5: config sshkeep option client: 'putty' is not one of auto, openssh, dropbear — write one of them",
      "t.conf:6: config sshkeep option spread: '1e3' is not a number of seconds >= 0 — give e.g. '30' or "
      "'2.5'"]),
    (MINI + "config sshkeep\nconfig sshkeep\n",
     ["t.conf:10: second config sshkeep section (first at line 9) — merge them into one"]),
    (MINI.replace("option host 'hub.example.net'", "list host a"),
     ["t.conf:3: server 'hub': host takes one value, not a list — write option host '...'"]),
    (MINI.replace("option host 'hub.example.net'", "option host '-oProxyCommand=x'"),
     ["t.conf:3: server 'hub' option host: '-oProxyCommand=x' is not a host name or address — give a name "
      "or IP address (ASCII letters, digits, . - _ :)"]),
    (MINI.replace("option host 'hub.example.net'", "option host h\n\toption identity '-i'"),
     ["t.conf:4: server 'hub' option identity: '-i' starts with '-' — give a path (e.g. ./-i)"]),
    (MINI.replace("option host 'hub.example.net'", "option host h\n\toption user 'a@b'"),
     ["t.conf:4: server 'hub' option user: 'a@b' is not a user name — give the login name alone, "
      "without @ or spaces"]),
    (MINI.replace("option host 'hub.example.net'", "option host h\n\tlist alternate 'x:0'"),
     ["t.conf:4: server 'hub' alternate: '0' is not a port — give a number from 1 to 65535"]),
    (MINI.replace("option host 'hub.example.net'", "option host h\n\tlist alternate 'x:22'\n\tlist alternate 'y:0'"),
     ["t.conf:5: server 'hub' alternate: '0' is not a port — give a number from 1 to 65535"]),
    (MINI.replace("option host 'hub.example.net'", "option host h\n\toption alternate 'x:22'\n\tlist alternate 'y:0'"),
     ["t.conf:5: server 'hub' alternate: '0' is not a port — give a number from 1 to 65535"]),
    (MINI.replace("option host 'hub.example.net'", "option host h\n\tlist ssh_option 'Compression'"),
     ["t.conf:4: server 'hub' ssh_option: 'Compression' is not an ssh option — write Key=Value, e.g. "
      "'Compression=yes'"]),
    (MINI.replace("option host 'hub.example.net'", "option host 'a\nb'"),
     # a quote must close on its line: the rest is read as new lines (issue 10, item 20)
     ["t.conf:2: server 'hub' has no host — add option host 'hub.example.net'",
      "t.conf:3: unterminated ' quote — close the quote on this value",
      "t.conf:4: unterminated ' quote — close the quote on this value"]),
    (MINI.replace("'8080'", "'8080' '9090'"),
     ["t.conf:7: extra text '9090' after the value — quote values that contain spaces: option name 'a b'"]),
    ("config server\n\toption host h\n" + MINI,
     ["t.conf:1: config server has no name — name it, e.g. config server 'hub'"]),
    (MINI + "config server hub\n",
     ["t.conf:9: section 'hub' is defined twice (first at line 2) — rename one of them (uci would merge "
      "them silently)"]),
    (MINI + "config tunnel hub\n",
     ["t.conf:9: section 'hub' is already a server (line 2) — give this tunnel section another name",
      "t.conf:9: section 'hub' is defined twice (first at line 2) — rename one of them (uci would merge them "
      "silently)"]),
    ("option host h\n" + MINI, ["t.conf:1: option outside a section — put a config line above it"]),
    ("frobnicate\n" + MINI,
     ["t.conf:1: unknown command 'frobnicate' — lines start with config, option or list (or # for a comment)"]),
    ("config 'a b'\n" + MINI,
     ["t.conf:1: section type 'a b' has characters uci does not allow — use letters, digits, _ and -"]),
    ("config server 'a-b'\n" + MINI,
     ["t.conf:1: section name 'a-b' has characters uci does not allow — use only letters, digits and _ "
      "(e.g. 'a_b')"]),
    (MINI + "\toption 'x-y' 1\n",
     ["t.conf:9: option name 'x-y' has characters uci does not allow — use letters, digits and _"]),
    (MINI + "\toption check 'none\n",
     ["t.conf:9: unterminated ' quote — close the quote on this value"]),
    (MINI + '\toption check "none\n',
     ['t.conf:9: unterminated " quote — close the quote on this value']),
    ("", ["t.conf: no enabled tunnel — add a config server and a config tunnel section naming it"]),
    (MINI + "\toption enabled 0\n",
     ["t.conf: no enabled tunnel — add a config server and a config tunnel section naming it"]),
    (MINI + "config tunnelR r\n",
     ["t.conf:9: sshtunnel section tunnelR in a file of sshkeep's config tunnel sections — use one format "
      "per file: write it as a config tunnel"]),
    # sshtunnel dialect
    ("config server s\n\toption hostname h\nconfig tunnelW vpn\n\toption server s\n",
     ["t.conf: no enabled tunnel sshkeep can run (skipped: tunnelW 'vpn') — keep sshtunnel for these, or add "
      "a tunnelR, tunnelL or tunnelD section"]),
    ("config server s\n\toption user root\nconfig tunnelR r\n\toption server s\n\toption remoteport 1\n"
     "\toption localport 2\n",
     ["t.conf:1: server 's' has no hostname — add option hostname 'server.example.com'",
      "t.conf:3: tunnelR 'r' has no localaddress — add option localaddress"]),
    ("config server s\n\toption hostname h\n\toption StrictHostKeyChecking maybe\n\toption Compression 1\n"
     "config tunnelL l\n\toption server s\n\toption localport 70000\n\toption remoteaddress x\n"
     "\toption remoteport 1\n",
     ["t.conf:3: server 's' option StrictHostKeyChecking: 'maybe' is not one of yes, no, accept-new, ask — "
      "write one of them",
      "t.conf:4: server 's' option Compression: '1' is not one of yes, no — write one of them",
      "t.conf:7: tunnelL 'l' option localport: '70000' is not a port — give a number from 1 to 65535"]),
    # PKCS11Provider loads a shared library into ssh: refused (agent/core/values.py's allow-list)
    ("config server s\n\toption hostname h\n\toption PKCS11Provider /usr/lib/opensc-pkcs11.so\n"
     "config tunnelD d\n\toption server s\n\toption localport 1080\n",
     ["t.conf:3: server 's' option PKCS11Provider is refused: it loads a shared library into ssh, code "
      "sshkeep cannot check — remove it; use a key file (option IdentityFile)"]),
    ("config server s\n\toption hostname h\n\toption LogLevel LOUD\nconfig tunnelD d\n\toption server s\n",
     ["t.conf:3: server 's' option LogLevel: 'LOUD' is not one of QUIET, FATAL, ERROR, INFO, VERBOSE, DEBUG, "
      "DEBUG1, DEBUG2, DEBUG3 — write one of them",
      "t.conf:4: tunnelD 'd' has no localport — add option localport"]),
]


@pytest.mark.parametrize("text, expected", ERRORS, ids=range(len(ERRORS)))
def test_error_messages(text, expected):
    assert errors_of(text) == expected


def test_all_errors_reported_at_once_and_sorted():
    text = "config sshkeep\n\toption intervall 1\n" + MINI.replace("'8080'", "'65536'") + "\toption chek x\n"
    errs = errors_of(text)
    assert [e.split(":")[1] for e in errs] == ["2", "9", "11"]


def test_key_file_checks(tmp_path):
    key = tmp_path / "k"
    key.write_text("x")
    os.chmod(str(key), 0o644)
    text = MINI.replace("option host 'hub.example.net'", "option host h\n\toption identity '%s'" % key)
    assert errors_of(text, check_files=True) == [
        "t.conf:4: server 'hub': key file %s is readable by group or others (mode 0644) — chmod 600 %s"
        % (key, key)]
    os.chmod(str(key), 0o600)
    assert config.parse_text(text, check_files=True).tunnels[0].identity == str(key)
    missing = text.replace(str(key), str(tmp_path / "nope"))
    assert errors_of(missing, check_files=True) == [
        "t.conf:4: server 'hub': key file %s does not exist — create it (ssh-keygen or dropbearkey) or fix "
        "the path" % (tmp_path / "nope")]
    assert config.parse_text(missing, check_files=False).tunnels[0].identity == str(tmp_path / "nope")
    folder = text.replace(str(key), str(tmp_path))
    assert errors_of(folder, check_files=True) == [
        "t.conf:4: server 'hub': key file %s is not a regular file — point identity at the private key file"
        % tmp_path]


def test_sshtunnel_key_file_checked_at_its_line(tmp_path):
    text = "config server s\n\toption hostname h\n\toption IdentityFile %s/none\nconfig tunnelD d\n" \
           "\toption server s\n\toption localport 1\n" % tmp_path
    assert errors_of(text, check_files=True)[0].startswith("t.conf:3: server 's': key file")


def test_ssh_path_checked(tmp_path):
    text = "config sshkeep\n\toption ssh '%s/ssh'\n" % tmp_path + MINI
    assert errors_of(text, check_files=True) == [
        "t.conf:2: ssh client %s/ssh is missing or not executable — install it or fix the path (or leave ssh "
        "unset to search PATH)" % tmp_path]


def test_sshtunnel_warnings_not_errors():
    text = ("config server s\n\toption hostname h\n\toption Foo bar\n\toption retrydelay 5\n"
            "config tunnelR r\n\toption server s\n\toption remoteport 1\n\toption localaddress a\n"
            "\toption localport 2\n\toption remoteadress x\n"
            "config tunnelR gone\n\toption server nothere\n"
            "config tunnelW w\n\toption server s\n\toption enabled 0\n"
            "config whatever\n")
    s = config.parse_text(text, "/etc/config/sshtunnel")
    assert s.tunnels[0].forwards[0].bind == "*"
    assert list(s.warnings) == [
        "/etc/config/sshtunnel:3: unknown sshtunnel option 'Foo' in server 's'; ignored — known options: "
        + ", ".join(sorted(sshtunnel_conf.SERVER_OPTS)),
        "/etc/config/sshtunnel:10: unknown sshtunnel option 'remoteadress' in tunnelR 'r'; ignored — did you "
        "mean 'remoteaddress'?",
        "/etc/config/sshtunnel:12: tunnelR 'gone' names server 'nothere', which is not defined; ignored — "
        "known options: s",
        "/etc/config/sshtunnel:16: section type 'whatever' is not an sshtunnel section; ignored — remove it if "
        "it is a mistake",
    ]


def test_parse_text_never_touches_files_without_check(tmp_path):
    text = MINI.replace("option host 'hub.example.net'", "option host h\n\toption identity '/no/such'")
    assert config.parse_text(text, check_files=False).tunnels[0].identity == "/no/such"


def test_huge_file_refused():
    with pytest.raises(ConfigError):
        config.parse_text("#" * (config.MAX_SIZE + 1))


def test_render_sanitizes_names_from_the_command_line():
    s = Settings(tunnels=(Tunnel(name="box@hub.example.net", host="hub.example.net",
                                 forwards=(Forward("R", "", 1, "h", 2),)),))
    text = render(s)
    assert "config server 'box_hub_example_net'" in text
    assert config.parse_text(text).tunnels[0].forwards == s.tunnels[0].forwards


_REFUSED = ("ssh option %s is not allowed in sshkeep (it could run commands, move the session or hide what "
            "sshkeep watches) — remove it; allowed options are listed in docs/security.md")


@pytest.mark.parametrize("option", ["LocalCommand=touch /tmp/pwned", "PermitLocalCommand=yes",
                                    "ClearAllForwardings=yes", "KnownHostsCommand=/bin/x", "BatchMode=no",
                                    "StrictHostKeyChecking=no", "RemoteForward=1:a:2", "LogLevel=QUIET"])
def test_ssh_option_outside_the_allow_list_is_refused_with_its_line(option):
    # LocalCommand + PermitLocalCommand ran a local command as root; ClearAllForwardings removed
    # the forwards: only transport tuning gets through (agent/core/values.py).
    text = MINI.replace("option host 'hub.example.net'", "option host h\n\tlist ssh_option '%s'" % option)
    assert errors_of(text) == ["t.conf:4: server 'hub' ssh_option: " + _REFUSED % option.split("=")[0]]


def test_allowed_ssh_option_passes_with_its_canonical_name():
    from agent.core.values import ALLOWED_SSH_OPTIONS
    assert "LocalCommand" not in ALLOWED_SSH_OPTIONS and "ClearAllForwardings" not in ALLOWED_SSH_OPTIONS
    text = MINI.replace("option host 'hub.example.net'", "option host h\n\tlist ssh_option 'compression=yes'")
    assert validate.ssh_option("compression=yes") == ("Compression", "yes")
    t = config.parse_text(text, "t.conf").tunnels[0]
    assert t.extra_options == (("Compression", "yes"),)
