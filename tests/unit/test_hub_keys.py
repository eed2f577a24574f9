"""agent.hub.keys: enroll/revoke/sshd-config and the forced command's request parser (no processes)."""

import base64
import os
import shlex

import pytest

from agent.errors import EX_DATAERR, EX_NOINPUT, EX_USAGE, SshkeepError
from agent.hub import keys
from agent.hubside import remote

KEY = "ssh-ed25519 " + base64.b64encode(b"\0\0\0\x0bssh-ed25519\0\0\0 " + b"k" * 32).decode()
KEY2 = "ssh-ed25519 " + base64.b64encode(b"\0\0\0\x0bssh-ed25519\0\0\0 " + b"j" * 32).decode()


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def code(fn, *a):
    with pytest.raises(SshkeepError) as e:
        fn(*a)
    return e.value.code


def test_key_line_pins_ports_denies_local_and_forces_serve():
    line = keys.key_line("box1", [("127.0.0.1", 20022), ("::1", 20023)], KEY)
    opts = line[:line.index(" ssh-ed25519")]
    assert opts.startswith("restrict,port-forwarding,permitlisten=\"127.0.0.1:20022\",permitlisten=\"::1:20023\",")
    assert keys.NO_OPEN in opts
    assert opts.endswith('command="/usr/bin/python3 -I /usr/local/lib/sshkeep/sshkeep.pyz hub serve --box box1 '
                         '--listen 20022 --listen 20023"')
    assert line.endswith(KEY + " sshkeep:box1") and keys.enrolled(line) == "box1"
    assert code(keys.key_line, "b", [("127.0.0.1", 1)], KEY, "python3") == EX_USAGE
    assert code(keys.key_line, "b", [("127.0.0.1", 1)], KEY, "/usr/bin/python3", '/x" y') == EX_USAGE


@pytest.mark.parametrize("text", ["-x", "", "a b", "a;b", "x" * 65, "_a", "ü"])
def test_box_id_refuses_unsafe_words(text):
    assert code(keys.box_id, text) == EX_USAGE


@pytest.mark.parametrize("text,want", [("20022", ("127.0.0.1", 20022)), ("::1:20022", ("::1", 20022)),
                                       ("[::1]:20022", ("::1", 20022)), ("localhost:5", ("localhost", 5))])
def test_listen(text, want):
    assert keys.listen(text) == want


@pytest.mark.parametrize("text", ["0", "70000", "host:22", "127.0.0.1:*", "x"])
def test_listen_refuses(text):
    assert code(keys.listen, text) == EX_USAGE


def test_public_key_refuses_private_and_malformed():
    assert keys.public_key("f", KEY + " me@x\n") == KEY
    assert code(keys.public_key, "f", "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n") == EX_DATAERR
    assert code(keys.public_key, "f", "ssh-ed25519 AAAA!!") == EX_DATAERR
    assert code(keys.public_key, "f", "ssh-rsa " + KEY.split()[1]) == EX_DATAERR   # blob of another type
    assert code(keys.public_key, "f", KEY + "\n" + KEY2) == EX_DATAERR


def test_enroll_replace_revoke_idempotent(tmp_path, capsys):
    f = str(tmp_path / "keys")
    k1, k2 = write(tmp_path, "k1.pub", KEY + " a\n"), write(tmp_path, "k2.pub", KEY2 + "\n")
    assert keys.main(["enroll", "--box", "b1", "--listen", "20022", "--keys-file", f, k1]) == 0
    first = open(f).read()
    assert keys.main(["enroll", "--box", "b1", "--listen", "20022", "--keys-file", f, k1]) == 0
    assert open(f).read() == first and oct(os.stat(f).st_mode & 0o777) == "0o644"
    assert keys.main(["enroll", "--box", "b2", "--listen", "20023", "--keys-file", f, k2]) == 0
    assert keys.main(["enroll", "--box", "b1", "--listen", "20024", "--keys-file", f, k1]) == 0
    lines = open(f).read().splitlines()
    assert [keys.enrolled(l) for l in lines] == ["b1", "b2"] and "20024" in lines[0]   # replaced in place
    # another box's port or key is refused, the file untouched
    before = open(f).read()
    assert code(keys.main, ["enroll", "--box", "b3", "--listen", "20023", "--keys-file", f, k1]) == EX_DATAERR
    assert code(keys.main, ["enroll", "--box", "b3", "--listen", "20030", "--keys-file", f, k2]) == EX_DATAERR
    assert code(keys.main, ["enroll", "--box", "b3", "--listen", "1", "--keys-file", f, str(tmp_path / "no")]) \
        == EX_NOINPUT
    assert open(f).read() == before
    assert keys.main(["revoke", "--box", "b1", "--keys-file", f]) == 0
    assert [keys.enrolled(l) for l in open(f).read().splitlines()] == ["b2"]
    assert keys.main(["revoke", "--box", "b1", "--keys-file", f]) == 0
    assert "nothing to revoke" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [[], ["enroll"], ["enroll", "--box", "b", "k"], ["revoke", "--box", "b"],
                                  ["sshd-config"], ["sshd-config", "--user", "t", "--bogus", "1"], ["nope"]])
def test_usage(argv):
    assert code(keys.main, argv) == EX_USAGE


def test_sshd_config_block():
    text = keys.sshd_config("tunnel")
    lines = [l.strip() for l in text.splitlines()]
    assert lines[1] == "Match User tunnel"
    for want in ("AuthorizedKeysFile /etc/ssh/sshkeep-keys/%u", "AllowTcpForwarding remote", "PermitTTY no",
                 "X11Forwarding no", "AllowAgentForwarding no", "AllowStreamLocalForwarding no",
                 "PermitTunnel no", "PermitUserRC no", "ClientAliveInterval 15", "ClientAliveCountMax 3"):
        assert want in lines
    assert not any("ExposeAuthInfo" in l for l in lines)
    assert code(keys.sshd_config, "tun nel") == EX_USAGE


def test_words_match_shlex_on_what_the_box_sends():
    for cmd in (remote.session_command([20022], owner="abc", host="it's", tunnel="t", responder=True),
                remote.reclaim_command(20022, owner="x", pid=5, start="7"), remote.check_command("", 20022, "SSH-", 2)):
        assert keys.words(cmd) == shlex.split(cmd)
    for bad in ("a\\ b", "'open", 'a"b'):
        with pytest.raises(ValueError):
            keys.words(bad)


def test_requests_the_box_sends_are_recognised():
    own = [20022, 20023]
    s = remote.session_command([20022, 20023], owner="someone-else", host="Ö$(id)", tunnel="t;x", responder=True)
    assert keys.parse_request(s, own) == ("session", ["O__id_", "t_x", True, 20022, 20023])
    assert keys.parse_request(remote.session_command([], owner="b"), own) == ("session", ["-", "-", False])
    r = remote.reclaim_command(20023, owner="b", pid=99, start="1234")
    assert keys.parse_request(r, own) == ("reclaim", ["20023", "99", "1234"])
    assert keys.parse_request(remote.reclaim_command(20022, owner="b"), own)[1] == ["20022", "-", "-"]
    c = remote.check_command("", 20022, "SSH-", 2.0)
    assert keys.parse_request(c, own) == ("check", ["127.0.0.1", "::1", 20022, b"SSH-", 2.0, 0.3])


@pytest.mark.parametrize("text", [
    None, "", "id", "sh -c id", "exec sh -c id", "exec sh -c x sshkeep-session",
    remote.session_command([20099], owner="b"),                       # not its port
    remote.reclaim_command(20099, owner="b", pid=1, start="2"),
    remote.check_command("10.0.0.1", 20022, None, 2.0),              # not loopback
    remote.check_command("", 20099, None, 2.0),
    "exec sh -c x sshkeep-reclaim d b 20022 '1;id' 2",
    "exec sh -c x sshkeep-check 127.0.0.1 20022 zz 1 1",
    "exec sh -c x sshkeep-check 127.0.0.1 20022 '' nan 1",
    "exec sh -c x sshkeep-other 1 2 3 4 5",
    "exec bash -c x sshkeep-session d b h t 20022",
])
def test_anything_else_is_64(text):
    assert code(keys.parse_request, text, [20022]) == EX_USAGE


def test_checker_touches_only_own_ports_on_loopback():
    ck = keys.checker([1])["ck"]
    assert ck("10.0.0.1", 1, b"", 0.1, 0.1) == 86 and ck("127.0.0.1", 2, b"", 0.1, 0.1) == 86


def test_serve_argv(tmp_path):
    env = {"SSH_ORIGINAL_COMMAND": "id"}
    for argv in ([], ["--box", "b"], ["--listen", "1"], ["--box", "-x", "--listen", "1"], ["--box", "b", "--listen", "x"],
                 ["--box", "b", "--listen", "1", "--other", "2"]):
        assert code(keys.serve, argv, env) == EX_USAGE
