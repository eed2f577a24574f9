"""Detection and argv golden lists for OpenSSH and both dropbear generations."""

import os

import pytest

from agent.run import clients
from agent.errors import ClientError, SshkeepError
from agent.core.model import Forward, Tunnel

OPENSSH_V = "OpenSSH_9.2p1 Debian-2+deb12u10, OpenSSL 3.0.19 27 Jan 2026\n"
DB_2022_V = "Dropbear v2022.83\n"
DB_2022_O = "dbclient: Available options:\n\tExitOnForwardFailure\n\tDisableTrivialAuth\n\tUseSyslog\n\tPort\n"
DB_2025_V = "Dropbear v2025.89\n"
DB_2025_O = ("dbclient: Available options:\n\tBatchMode\n\tBindAddress\n\tDisableTrivialAuth\n"
             "\tExitOnForwardFailure\n\tForwardAgent\n\tGatewayPorts\n\tIdentityFile\n"
             "\tPasswordAuthentication\n\tPort\n\tProxyCommand\n\tServerAliveInterval\n"
             "\tStrictHostKeyChecking\n\tUseSyslog\n")

OSSH = clients.ClientInfo("openssh", "/usr/bin/ssh", "9.2p1")
DB22 = clients.ClientInfo("dropbear", "/usr/bin/dbclient", "2022.83", clients.parse_dropbear_options(DB_2022_O))
DB25 = clients.ClientInfo("dropbear", "/usr/bin/dbclient", "2025.89", clients.parse_dropbear_options(DB_2025_O))

T = Tunnel(name="hub", host="hub.example.com", port=2222, user="tunnel", identity="/etc/sshkeep/id",
           forwards=(Forward("R", "127.0.0.1", 20022, "127.0.0.1", 22), Forward("L", "", 8080, "web", 80)),
           known_hosts="/etc/sshkeep/known_hosts", keepalive=15, connect_timeout=15)


def fake_runner(outputs):
    def run(argv, timeout=5.0):
        return outputs[tuple(argv[1:])]
    return run


def test_parse_version():
    assert clients.parse_version(OPENSSH_V) == ("openssh", "9.2p1")
    assert clients.parse_version(DB_2022_V) == ("dropbear", "2022.83")
    assert clients.parse_version("Dropbear SSH client v2024.86 https://...") == ("dropbear", "2024.86")
    assert clients.parse_version("BusyBox v1.35") is None


def test_dropbear_options():
    assert clients.parse_dropbear_options(DB_2022_O) == {"exitonforwardfailure", "disabletrivialauth",
                                                          "usesyslog", "port"}
    assert "batchmode" in clients.parse_dropbear_options(DB_2025_O)


def test_detect_by_behaviour_not_name(tmp_path):
    # A file called "ssh" that is really dbclient (as on OpenWrt).
    ssh = tmp_path / "ssh"
    ssh.write_text("#!/bin/sh\n")
    ssh.chmod(0o755)
    info = clients.detect(str(ssh), runner=fake_runner({("-V",): DB_2022_V, ("-o", "help"): DB_2022_O}))
    assert info.kind == "dropbear" and info.version == "2022.83"
    assert info.has_option("ExitOnForwardFailure") and not info.has_option("BatchMode")


def test_detect_forced_mismatch(tmp_path):
    ssh = tmp_path / "ssh"
    ssh.write_text("")
    ssh.chmod(0o755)
    with pytest.raises(ClientError, match="--client openssh given"):
        clients.detect(str(ssh), "openssh", runner=fake_runner({("-V",): DB_2022_V, ("-o", "help"): ""}))


def test_detect_unknown_binary(tmp_path):
    ssh = tmp_path / "ssh"
    ssh.write_text("")
    ssh.chmod(0o755)
    with pytest.raises(ClientError, match="neither OpenSSH nor dropbear"):
        clients.detect(str(ssh), runner=fake_runner({("-V",): "BusyBox v1.35"}))


def test_missing_client_is_clear():
    with pytest.raises(ClientError, match="does not exist"):
        clients.find_client("/nonexistent/ssh")
    with pytest.raises(ClientError, match="no ssh client found"):
        clients.find_client("", env_path="/nonexistent")


def test_openssh_golden():
    assert clients.build_argv(OSSH, T) == [
        "/usr/bin/ssh", "-N", "-T",
        "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes", "-o", "ConnectTimeout=15",
        "-o", "StrictHostKeyChecking=yes", "-o", "ControlMaster=no", "-o", "ControlPath=none",
        "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3",
        "-o", "UserKnownHostsFile=/etc/sshkeep/known_hosts",
        "-o", "IdentitiesOnly=yes", "-i", "/etc/sshkeep/id", "-p", "2222",
        "-R", "127.0.0.1:20022:127.0.0.1:22", "-L", "8080:web:80",
        "-l", "tunnel", "hub.example.com"]


def test_openssh_accept_new_and_command():
    from agent.core import record
    t = record.replace(T, accept_new=True, keepalive=0)
    argv = clients.build_argv(OSSH, t, command="echo hi")
    assert "StrictHostKeyChecking=accept-new" in argv
    assert "-N" not in argv and argv[-1] == "echo hi" and argv[-2] == "hub.example.com"
    assert not any(a.startswith("ServerAlive") for a in argv)


def test_dropbear_2022_golden():
    assert clients.build_argv(DB22, T) == [
        "/usr/bin/dbclient", "-T", "-N", "-K", "15", "-o", "ExitOnForwardFailure=yes",
        "-i", "/etc/sshkeep/id", "-p", "2222",
        "-R", "127.0.0.1:20022:127.0.0.1:22", "-L", "8080:web:80",
        "-l", "tunnel", "hub.example.com"]


def test_dropbear_2025_golden():
    assert clients.build_argv(DB25, T) == [
        "/usr/bin/dbclient", "-T", "-N", "-K", "15", "-o", "ExitOnForwardFailure=yes",
        "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
        "-i", "/etc/sshkeep/id", "-p", "2222",
        "-R", "127.0.0.1:20022:127.0.0.1:22", "-L", "8080:web:80",
        "-l", "tunnel", "hub.example.com"]


def test_dropbear_never_gets_y_and_learns_without_batchmode():
    # -y is no pin: 2022.83 accepts under -y without recording the key (measured). A first
    # contact runs without BatchMode instead (the agent answers the prompt), later ones strictly.
    from agent.core import record
    tofu = record.replace(T, accept_new=True)
    for info in (DB22, DB25):
        for learn in (False, True):
            assert "-y" not in clients.build_argv(info, tofu, learn=learn)
    assert "BatchMode=yes" in clients.build_argv(DB25, tofu)
    assert "StrictHostKeyChecking=yes" in clients.build_argv(DB25, tofu)
    learn = clients.build_argv(DB25, tofu, learn=True)
    assert "BatchMode=yes" not in learn and "StrictHostKeyChecking=yes" not in learn
    # OpenSSH never gets -y (it means "log to syslog" there); its pins are readable by dbclient
    argv = clients.build_argv(OSSH, tofu)
    assert "-y" not in argv and "StrictHostKeyChecking=accept-new" in argv and "HashKnownHosts=no" in argv


def test_exec_argv_has_no_forwards():
    argv = clients.build_exec_argv(OSSH, T, "exit 0")
    assert "-R" not in argv and "-L" not in argv and "-N" not in argv and argv[-1] == "exit 0"
    argv = clients.build_exec_argv(DB22, T, "exit 0")
    assert "-R" not in argv and "-N" not in argv


@pytest.mark.parametrize("host", ["-oProxyCommand=x", "a b", "h1,h2", "host/22", "$(reboot)", "a;b"])
def test_hostile_destinations_refused(host):
    from agent.core import record
    with pytest.raises(SshkeepError):
        clients.build_argv(DB22, record.replace(T, host=host))


def test_dropbear_known_hosts_conversion():
    text = ("[hub.example.com]:2222 ssh-ed25519 AAAAkey1\n"
            "hub.example.com ssh-rsa AAAAkey2\n"
            "other ssh-ed25519 AAAAkey3\n"
            "|1|hashed= ssh-ed25519 AAAAkey4\n")
    out = clients.dropbear_known_hosts(text, "hub.example.com", 2222)
    assert out == "hub.example.com ssh-ed25519 AAAAkey1\nhub.example.com ssh-rsa AAAAkey2\n"


def test_prepare_home_for_dropbear(tmp_path):
    from agent.core import record
    kh = tmp_path / "kh"
    kh.write_text("[10.0.0.2]:2222 ssh-ed25519 AAAAkey\n")
    t = record.replace(T, host="10.0.0.2", known_hosts=str(kh))
    home = clients.prepare_home(DB22, t, str(tmp_path / "home"))
    assert open(os.path.join(home, ".ssh", "known_hosts")).read() == "10.0.0.2 ssh-ed25519 AAAAkey\n"
    assert clients.host_key_known(DB22, t, home) is True
    assert clients.host_key_known(DB22, record.replace(t, host="10.0.0.3"), home) is False
    # OpenSSH reads UserKnownHostsFile itself: no HOME games
    assert clients.prepare_home(OSSH, t, str(tmp_path / "h2")) is None


def test_first_contact_key_is_copied_to_the_pin_file_once(tmp_path):
    # The private HOME (tmpfs) is rewritten from the pin file before every connect: the key
    # dbclient recorded there on first contact must reach the pin file, exactly once.
    from agent.core import record
    pins = tmp_path / "etc" / "known_hosts"
    t = record.replace(T, host="10.0.0.2", known_hosts=str(pins), accept_new=True)
    clients.ensure_pin_file(str(pins))
    assert pins.read_text() == ""
    home = clients.prepare_home(DB22, t, str(tmp_path / "home"))
    kh = os.path.join(home, ".ssh", "known_hosts")
    assert open(kh).read() == "" and clients.host_key_known(DB22, t, home) is False
    with open(kh, "a") as fh:    # what dbclient writes after the agent's "y"
        fh.write("10.0.0.2 ssh-ed25519 AAAAaccepted\n")
    assert clients.save_learned(DB22, t, home) == "[10.0.0.2]:2222 ssh-ed25519 AAAAaccepted"
    assert clients.save_learned(DB22, t, home) is None
    assert pins.read_text() == "[10.0.0.2]:2222 ssh-ed25519 AAAAaccepted\n"
    # a later connect: the pin is all dbclient sees; a key it met meanwhile is not kept
    with open(kh, "a") as fh:
        fh.write("10.0.0.2 ssh-ed25519 AAAAother\n")
    clients.prepare_home(DB22, t, home)
    assert open(kh).read() == "10.0.0.2 ssh-ed25519 AAAAaccepted\n"
    assert clients.host_key_known(DB22, t, home) is True
    assert clients.pin_line(str(pins), "10.0.0.2", 2222) == 1
    hint = clients.mismatch_hint(str(pins), "10.0.0.2", 2222)
    assert "%s line 1" % pins in hint and "sed -i 1d" in hint


def test_prepare_home_does_not_follow_a_planted_symlink(tmp_path):
    from agent.core import record
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    pins = tmp_path / "kh"
    pins.write_text("10.0.0.2 ssh-ed25519 AAAAkey\n")
    os.symlink(str(victim), str(home / ".ssh" / "known_hosts"))
    os.symlink(str(victim), str(home / ".ssh" / ("known_hosts.%d.tmp" % os.getpid())))
    t = record.replace(T, host="10.0.0.2", port=22, known_hosts=str(pins))
    clients.prepare_home(DB22, t, str(home))
    assert victim.read_text() == "precious\n"
    assert not os.path.islink(str(home / ".ssh" / "known_hosts"))


def test_dynamic_forward_refused_for_dropbear():
    from agent.core import record
    from agent.core.model import parse_forward
    t = record.replace(T, forwards=(parse_forward("D", "1080"),))
    for info in (DB22, DB25):
        with pytest.raises(SshkeepError, match="cannot do dynamic .* --client openssh") as exc:
            clients.check_forwards(info, t)
        assert exc.value.code == 69
    clients.check_forwards(OSSH, t)
    clients.check_forwards(DB22, record.replace(T, forwards=(parse_forward("L", "8080:127.0.0.1:80"),)))


def test_key_format_messages(tmp_path):
    pem = tmp_path / "id"
    pem.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nxx\n")
    pem.chmod(0o600)
    with pytest.raises(SshkeepError, match="dropbearconvert openssh dropbear"):
        clients.check_identity(DB22, str(pem))
    clients.check_identity(OSSH, str(pem))
    db = tmp_path / "id.db"
    db.write_bytes(b"\x00\x00\x00\x0bssh-ed25519\x00\x00")
    db.chmod(0o600)
    with pytest.raises(SshkeepError, match="dropbearconvert dropbear openssh"):
        clients.check_identity(OSSH, str(db))
    pem.chmod(0o644)
    with pytest.raises(SshkeepError, match="chmod 600"):
        clients.check_identity(OSSH, str(pem))
    with pytest.raises(SshkeepError, match="does not exist"):
        clients.check_identity(OSSH, str(tmp_path / "nope"))


def test_hashed_known_hosts_lines_are_read_for_dbclient(tmp_path):
    # `ssh-keyscan -H` / HashKnownHosts yes write |1|salt|hmac names. Skipped, a pinned hub would
    # look new to dbclient, and accept-new would then take any key.
    import subprocess
    import sys
    kh = tmp_path / "kh"
    kh.write_text("[10.0.0.2]:2222 ssh-ed25519 AAAAkey\n10.0.0.3 ssh-ed25519 AAAAother\n")
    subprocess.run(["ssh-keygen", "-H", "-f", str(kh)], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=20)
    text = kh.read_text()
    assert "10.0.0.2" not in text and text.count("|1|") == 2
    assert clients.dropbear_known_hosts(text, "10.0.0.2", 2222) == "10.0.0.2 ssh-ed25519 AAAAkey\n"
    assert clients.dropbear_known_hosts(text, "10.0.0.3", 22) == "10.0.0.3 ssh-ed25519 AAAAother\n"
    assert clients.dropbear_known_hosts(text, "10.0.0.2", 22) == ""
    assert clients.pin_line(str(kh), "10.0.0.3", 22) == 2
    # and on python3-light (no _hashlib): the guard lets the builtin sha1 through
    import lightguard
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(clients.__file__))))
    code = ("import sys; from agent.run import clients; "
            "sys.stdout.write(clients.dropbear_known_hosts(open(sys.argv[1]).read(), '10.0.0.2', 2222))")
    out = subprocess.run([sys.executable, "-c", code, str(kh)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=dict(lightguard.guard_env(), PYTHONPATH=root + os.pathsep +
                                  lightguard.guard_env().get("PYTHONPATH", "")), timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"10.0.0.2 ssh-ed25519 AAAAkey\n"


def test_checks_and_reclaims_use_the_pin_file_too_and_reload_keeps_the_runner(tmp_path, monkeypatch):
    # The default pin file is added to the runner's tunnel, so the ssh execs of checks and
    # reclaims (built from r.tunnel) are checked against it as well; a reload of the same config
    # (known_hosts "" there) must not see a change.
    from agent.core import record
    from agent.run import supervisor
    from agent.run.log import Log
    from agent.core.model import Settings
    pins = str(tmp_path / "flash" / "known_hosts")
    monkeypatch.setattr(clients, "default_known_hosts", lambda env=None: pins)
    t = record.replace(T, known_hosts="", accept_new=True, identity="")
    s = Settings(tunnels=(t,), state=str(tmp_path / "s.json"), pidfile=str(tmp_path / "pid"))
    sup = supervisor.Supervisor(s, Log(), detect=lambda path, client: OSSH, reload_settings=lambda: s)
    sup.prepare()
    r = sup.runners[0]
    assert os.path.exists(pins) and r.tunnel.known_hosts == pins and r.ssh_tunnel.known_hosts == pins
    assert r.config == t   # kept as configured: what a reload compares
    assert "UserKnownHostsFile=%s" % pins in clients.build_exec_argv(OSSH, r.tunnel, "true")
    sup._reload()
    assert sup.runners[0] is r
