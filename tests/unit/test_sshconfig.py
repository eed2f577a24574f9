"""ssh_config Host blocks -> Tunnel (for OpenSSH and dropbear alike). Pure: files in a tmp dir only."""

import os

import pytest

from agent.core import values
from agent.settings import sshconfig, validate
from agent.errors import EX_CONFIG, EX_NOINPUT, ConfigError
from agent.core.model import Forward

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "support", "configs")


@pytest.fixture
def example(tmp_path):
    with open(os.path.join(HERE, "ssh_config")) as fh:
        text = fh.read().replace("@KEYDIR@", str(tmp_path))
    p = tmp_path / "ssh_config"
    p.write_text(text)
    return str(p)


def write(tmp_path, text):
    p = tmp_path / "config"
    p.write_text(text)
    return str(p)


def test_load_host_example(example, tmp_path):
    d = sshconfig.load_host(example, "hub")
    assert d["HostName"] == "hub.example.net"
    assert (d["User"], d["Port"], d["ServerAliveInterval"]) == ("box", 2222, 20)  # first value wins
    assert d["IdentityFile"] == [str(tmp_path / "id_ed25519")]
    assert d["RemoteForward"] == ["8022:127.0.0.1:22", "[::1]:8080:192.168.1.1:80"]
    assert d["LocalForward"] == ["127.0.0.1:3307:127.0.0.1:3306"]
    assert d["DynamicForward"] == ["1080"]
    assert d["StrictHostKeyChecking"] == "accept-new"
    assert d["UserKnownHostsFile"] == "/etc/sshkeep/known_hosts"
    assert d["Options"] == [("Compression", "yes")]
    assert d["Warnings"] == ["%s:18: ForwardAgent is ignored by sshkeep" % example]


def test_tunnel_from_host(example, tmp_path):
    t = sshconfig.tunnel_from_host(example, "hub-7", interval=5, client="dropbear", keepalive=99)
    assert (t.name, t.host, t.port, t.user) == ("hub-7", "hub-7.example.net", 2222, "box")
    assert t.identity == str(tmp_path / "id_ed25519")
    assert (t.interval, t.client) == (5, "dropbear")   # defaults fill what ssh_config does not say
    assert t.keepalive == 20                           # ...but the Host block wins where it speaks
    assert t.accept_new and t.known_hosts == "/etc/sshkeep/known_hosts"
    assert t.forwards == (
        Forward("R", "", 8022, "127.0.0.1", 22),
        Forward("R", "::1", 8080, "192.168.1.1", 80),
        Forward("L", "127.0.0.1", 3307, "127.0.0.1", 3306),
        Forward("D", "", 1080),
    )
    assert t.extra_options == (("Compression", "yes"),)


def test_extra_forwards_and_name(example):
    t = sshconfig.tunnel_from_host(example, "hub", name="main", forwards=(Forward("R", "", 1, "h", 2),))
    assert t.name == "main" and t.forwards[-1] == Forward("R", "", 1, "h", 2) and len(t.forwards) == 5


@pytest.mark.parametrize("patterns, alias, hit", [
    ("hub", "hub", True), ("HUB", "hub", True), ("h?b", "hub", True), ("h*", "hub", True),
    ("*.lab", "a.lab", True), ("*.lab", "lab", False), ("h* !hub", "hub", False), ("!x *", "hub", True),
    ("a b c", "b", True), ("hu", "hub", False), ("h[u]b", "hub", False),
])
def test_host_patterns(patterns, alias, hit):
    assert sshconfig._host_matches(patterns.split(), alias) is hit


def test_syntax_variants(tmp_path):
    # (a host name cannot hold a space: quotes joined inside one word instead)
    p = write(tmp_path, 'host=x\n  hostname = "a"\'.b\'.example\n\tUSER\tme # comment\nport "2200"\n'
                        "remoteforward 1 h:2\n")
    d = sshconfig.load_host(p, "x")
    assert (d["HostName"], d["User"], d["Port"], d["RemoteForward"]) == ("a.b.example", "me", 2200, ["1:h:2"])


def test_global_options_before_first_host_apply(tmp_path):
    p = write(tmp_path, "User early\nHost x\n User late\n RemoteForward 1 h:2\n")
    assert sshconfig.load_host(p, "x")["User"] == "early"


def test_match_all_applies_other_match_skipped(tmp_path):
    p = write(tmp_path, "Host x\n RemoteForward 1 h:2\nMatch exec true\n User no\nMatch all\n Port 23\n")
    d = sshconfig.load_host(p, "x")
    assert (d["User"], d["Port"]) == ("", 23)
    assert d["Warnings"] == ["%s:3: Match blocks are not evaluated; this one is skipped" % p]


def test_v6_slash_syntax(tmp_path):
    p = write(tmp_path, "Host x\n LocalForward ::1/8080 [2001:db8::1]:80\n")
    assert sshconfig.load_host(p, "x")["LocalForward"] == ["[::1]:8080:[2001:db8::1]:80"]


ERRORS = [
    ("Include other\nHost x\n", "x", "%s:1: Include is not supported — copy the included Host block into %s, "
                                     "or point --ssh-config at the included file"),
    ("Host x\n Port 0\n", "x", "%s:2: Port: '0' is not a port — give a number from 1 to 65535"),
    ("Host x\n Port\n", "x", "%s:2: Port without a value — give a value or remove the line"),
    ("Host\n", "x", "%s:1: Host without a pattern — write Host ALIAS"),
    ("Host x\n RemoteForward 8080\n", "x",
     "%s:2: RemoteForward takes 2 value(s), got 1 — sshkeep keeps -R PORT:HOST:PORT forwards; remote SOCKS "
     "(RemoteForward PORT) is not supported"),
    ("Host x\n LocalForward 1 /run/sock\n", "x",
     "%s:2: LocalForward with a unix socket path is not supported — forward TCP ports only"),
    ("Host x\n LocalForward 1 h:0\n", "x",
     "%s:2: LocalForward: -L 1:h:0: target port '0' is not a port (1-65535) — write LocalForward [bind:]port "
     "host:hostport"),
    ("Host x\n HostName \"a\n", "x", "%s:2: unterminated \" quote — close the quote"),
    ("Host x\n IdentityFile ~/%C\n", "x", "%s:2: IdentityFile uses %%C, which sshkeep does not expand — write the "
                                           "value out in full"),
    ("Host x\n StrictHostKeyChecking perhaps\n", "x",
     "%s:2: StrictHostKeyChecking 'perhaps' is not valid — write yes, accept-new or no"),
    ("Host hub\n", "hbu", "%s: no Host block for 'hbu' — did you mean 'hub'?"),
    ("Host *\n User x\n", "q", "%s: no Host block for 'q' — add a Host q block"),
    ("= x\n", "q", "%s:1: cannot read '= x' — write Keyword value"),
]


@pytest.mark.parametrize("text, alias, message", ERRORS, ids=range(len(ERRORS)))
def test_errors(tmp_path, text, alias, message):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        sshconfig.tunnel_from_host(p, alias)
    assert info.value.code == EX_CONFIG
    assert str(info.value) == message.replace("%s", p).replace("%%", "%")
    assert info.value.errors == [str(info.value)]


def test_every_passed_keyword_is_on_the_ssh_option_allow_list():
    assert [k for k in sshconfig._PASS if values.check_ssh_option(k)] == []


def test_certificate_file_passed_and_allowed_everywhere(tmp_path):
    # a user certificate is read like a key, runs nothing: allowed as -o and ssh_option as well
    p = write(tmp_path, "Host x\n CertificateFile ~/.ssh/id_ed25519-cert.pub\n")
    assert sshconfig.tunnel_from_host(p, "x").extra_options == (("CertificateFile", "~/.ssh/id_ed25519-cert.pub"),)
    assert validate.ssh_option("certificatefile=/etc/sshkeep/id-cert.pub") == (
        "CertificateFile", "/etc/sshkeep/id-cert.pub")


def test_a_passed_keyword_off_the_allow_list_is_refused_with_its_line(tmp_path, monkeypatch):
    monkeypatch.setattr(sshconfig, "_PASS", sshconfig._PASS + ("LocalCommand",))
    monkeypatch.setitem(sshconfig._CANON, "localcommand", "LocalCommand")
    p = write(tmp_path, "Host x\n Compression yes\n LocalCommand touch /tmp/owned\n")
    with pytest.raises(ConfigError) as info:
        sshconfig.tunnel_from_host(p, "x")
    assert str(info.value).startswith("%s:3: ssh option LocalCommand is not allowed in sshkeep" % p)
    assert str(info.value).endswith(" — remove the line")


def test_no_forwards_is_the_callers_decision(tmp_path):
    p = write(tmp_path, "Host x\n User u\n")
    assert sshconfig.tunnel_from_host(p, "x").forwards == ()


def test_missing_file_and_bad_alias(tmp_path):
    with pytest.raises(ConfigError) as info:
        sshconfig.load_host(str(tmp_path / "none"), "x")
    assert info.value.code == EX_NOINPUT
    with pytest.raises(ConfigError):
        sshconfig.load_host(str(tmp_path / "none"), "-oProxyCommand=x")


def test_strict_host_key_checking_no_is_tofu_with_a_warning(tmp_path):
    path = write(tmp_path, "Host hub\n HostName 10.0.0.2\n StrictHostKeyChecking no\n")
    warned = []
    t = sshconfig.tunnel_from_host(path, "hub", warnings=warned)
    assert t.accept_new is True
    assert warned == ["%s:3: StrictHostKeyChecking no is treated as accept-new (a changed host key is "
                      "still refused)" % path]
