"""Issue 10 (input items) end to end: the built pyz, under the python3-light guard, refuses
wrong input at start with the documented exit code and a message naming the fix; no
traceback (70), no retry loop. Scripted clients (tests/support/fakes/fakessh), no network."""

import os
import subprocess

import pytest

import lightguard
from agentrun import FakeSshAgent, require_pyz
from polling import wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
FAKE = os.path.join(os.path.dirname(HERE), "support", "fakes", "fakessh")
PY = "/usr/bin/python3"


def run(tmp_path, argv, env=None, timeout=30):
    e = lightguard.guard_env(dict(os.environ, **(env or {})))
    return subprocess.run([PY, require_pyz(), "run", "--state", str(tmp_path / "s.json"),
                           "--pidfile", str(tmp_path / "pid")] + argv, env=e, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)


def refused(tmp_path, argv, code, text, env=None):
    r = run(tmp_path, argv, env)
    err = r.stderr.decode()
    assert r.returncode == code, err
    assert text in err, err
    assert "Traceback" not in err and "internal error" not in err
    assert not (tmp_path / "pid").exists()  # refused before it ever started
    return err


@pytest.mark.parametrize("argv,code,text", [
    # 4: a traceback (70) before
    (["--loop-port", "70000"], 65, "--loop-port: '70000' is not a port — give a number from 1 to 65535"),
    # 6: -p 0 connected to port 22 before; a bad host started a retry loop
    (["-p", "0"], 65, "-p: '0' is not a port"),
    (["-p", "99999"], 65, "-p: '99999' is not a port"),
    (["--", "bad host name!"], 65, "destination: 'bad host name!' is not a host name or address"),
    # 1: --max-backoff 0 made a spawn loop of ~150 ssh/s, then the overflow
    (["--max-backoff", "0"], 64, "--max-backoff: '0' is not a number of seconds >= 1"),
    # 19: dangerous options are refused, like a config file's ssh_option
    (["-o", "LocalCommand=sh -c reboot"], 64, "ssh option LocalCommand is not allowed"),
    (["-oLocalCommand=x"], 64, "ssh option LocalCommand is not allowed"),
])
def test_bad_values_refused_at_start(tmp_path, argv, code, text):
    dest = [] if "--" in argv else ["tunnel@127.0.0.1"]
    refused(tmp_path, ["-R", "1:h:2", "--ssh", FAKE] + argv + dest, code, text)


def test_identity_directory_and_public_key(tmp_path):
    # 2: IsADirectoryError traceback before; 11: chmod advice for a .pub before
    refused(tmp_path, ["-R", "1:h:2", "--ssh", FAKE, "-i", str(tmp_path), "h"], 66, "is a directory")
    # the same mistake with --known-hosts was a retry loop
    refused(tmp_path, ["-R", "1:h:2", "--ssh", FAKE, "--known-hosts", str(tmp_path), "h"], 66, "is a directory")
    pub = tmp_path / "id.pub"
    pub.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA me@box\n")
    os.chmod(str(pub), 0o644)
    err = refused(tmp_path, ["-R", "1:h:2", "--ssh", FAKE, "-i", str(pub), "h"], 66,
                  "is a public key; give the private key (%s)" % str(pub)[:-4])
    assert "chmod" not in err


def test_dropbear_key_mode_checked(tmp_path):
    # 13: a dropbear key readable by others was accepted
    key = tmp_path / "id.db"
    key.write_bytes(b"\x00\x00\x00\x0bssh-ed25519" + b"\x00" * 40)
    os.chmod(str(key), 0o644)
    refused(tmp_path, ["-R", "1:h:2", "--ssh", FAKE, "-i", str(key), "h"], 77, "chmod 600 %s" % key,
            env={"FAKESSH_VERSION": "Dropbear v2022.83"})


def test_o_option_dbclient_lacks_is_refused(tmp_path):
    # 19: dbclient 2022.83 has no Compression: refused with the fix, not silently dropped
    refused(tmp_path, ["-R", "1:h:2", "--ssh", FAKE, "-o", "Compression=yes", "h"], 69,
            "-o Compression: %s (dropbear 2022.83) has no such option" % FAKE,
            env={"FAKESSH_VERSION": "Dropbear v2022.83"})


def _start(tmp_path, argv, env):
    e = lightguard.guard_env(dict(os.environ, **env))
    return FakeSshAgent(str(tmp_path), "ready", ["--no-checks"] + argv, pyz=require_pyz(), python=PY, env=e,
                        ssh=None).start()


def test_client_dropbear_without_ssh_finds_dbclient_and_o_reaches_it(tmp_path):
    # 5: `--client dropbear` looked at `ssh` only ("/usr/bin/ssh is openssh") before.
    # 19: `-o ServerAliveInterval=5` became the destination before; it maps to dbclient -K 5.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    os.symlink(FAKE, str(bindir / "ssh"))  # says OpenSSH
    db = bindir / "dbclient"
    db.write_text('#!/bin/sh\necho "$@" >> "%s"\nFAKESSH_VERSION="Dropbear v2022.83" exec %s "$@"\n'
                  % (tmp_path / "argv", FAKE))
    os.chmod(str(db), 0o755)
    # (a known_hosts of its own: --accept-new alone would pin in this machine's /etc/sshkeep)
    p = _start(tmp_path, ["--client", "dropbear", "-o", "ServerAliveInterval=5", "--accept-new",
                          "--known-hosts", str(tmp_path / "known_hosts"), "-R", "1:127.0.0.1:2",
                          "tunnel@127.0.0.1"], {"PATH": "%s:%s" % (bindir, os.environ["PATH"])})
    try:
        state = tmp_path / "state.json"
        wait_until(lambda: state.exists() and '"up"' in state.read_text(), 20, 0.05, what="tunnel up")
        err = (tmp_path / "agent.run.log").read_text()
        assert "using dropbear 2022.83 (%s)" % db in err, err
        argv = [l for l in (tmp_path / "argv").read_text().splitlines() if "-R" in l][-1].split()
        assert argv[argv.index("-K") + 1] == "5", argv
    finally:
        assert p.stop(10) == 0


def test_ssh_config_loses_to_flags(tmp_path):
    # 7: -i and -p beside --ssh-config were silently ignored before.
    conf = tmp_path / "ssh_config"
    conf.write_text("Host hub\n HostName 127.0.0.1\n Port 9\n IdentityFile %s/nokey\n RemoteForward 1 h:2\n" % tmp_path)
    key = tmp_path / "flagkey"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    os.chmod(str(key), 0o600)
    wrapper = tmp_path / "ssh"
    wrapper.write_text('#!/bin/sh\necho "$@" >> "%s"\nexec %s "$@"\n' % (tmp_path / "argv", FAKE))
    os.chmod(str(wrapper), 0o755)
    p = _start(tmp_path, ["--ssh-config", str(conf), "-p", "2222", "-i", str(key), "--ssh", str(wrapper), "hub"], {})
    try:
        state = tmp_path / "state.json"
        wait_until(lambda: state.exists() and '"up"' in state.read_text(), 20, 0.05, what="tunnel up")
        argv = [l for l in (tmp_path / "argv").read_text().splitlines() if "-R" in l][-1].split()
        assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-i") + 1] == str(key), argv
    finally:
        assert p.stop(10) == 0


@pytest.mark.integration
@pytest.mark.parametrize("client", ["openssh", "dropbear"])
def test_o_options_reach_real_clients(lab, client):
    # 19 with real parts: OpenSSH gets -o as given; dbclient 2022.83 gets the mapped flags
    # (ServerAliveInterval -> -K, Ciphers -> -c) and the tunnel comes up through either.
    from agentrun import Agent
    server = lab.start_sshd()
    svc = lab.start_service(lab.box_ns, 0)
    extra = ["-o", "ServerAliveInterval=7", "-oCiphers=aes128-ctr"]
    if client == "openssh":
        extra += ["-o", "Compression yes"]
    a = Agent(lab, server, [("-R", "127.0.0.1:20023:127.0.0.1:%d" % svc.port)], client=client,
              extra=["--interval", "3"] + extra).start()
    try:
        pid = a.wait_up(30)["ssh_pid"]
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            argv = fh.read().decode().split("\0")
        if client == "openssh":
            assert {"ServerAliveInterval=7", "Ciphers=aes128-ctr", "Compression=yes"} <= set(argv), argv
        else:
            assert argv[argv.index("-K") + 1] == "7" and argv[argv.index("-c") + 1] == "aes128-ctr", argv
        lab.wait_until(lambda: lab.probe_from(lab.srv_ns, "127.0.0.1", 20023, timeout=2), 10,
                       what="reverse forward answers")
        assert a.stop() == 0
    finally:
        a.stop()
