"""Issue 23: one validation path. Whatever `run -c FILE` refuses at start, `config -c FILE` refuses
too, with the same message and exit code (under procd a file `config -c` passed but `run` refuses is
a respawn every 5 s); `reload -c FILE` refuses it before signalling anything. Scripted client
(tests/support/fakes/fakessh), no network."""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FAKE = os.path.join(os.path.dirname(HERE), "support", "fakes", "fakessh")
DROPBEAR_KEY = b"\x00\x00\x00\x0bssh-ed25519" + b"\x00" * 40  # dropbear's own key format


def sshkeep(tmp_path, *argv, env=None):
    e = dict(os.environ, PYTHONPATH=ROOT, FAKESSH_MODE="ready", **(env or {}))
    return subprocess.run([sys.executable, "-m", "agent"] + list(argv), env=e, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)


def write_conf(tmp_path, known_hosts="", identity="", accept_new="0"):
    conf = tmp_path / "c.conf"
    text = "config server 'hub'\n\toption host '127.0.0.1'\n\toption ssh '%s'\n\toption accept_new '%s'\n" % (
        FAKE, accept_new)
    if known_hosts:
        text += "\toption known_hosts '%s'\n" % known_hosts
    if identity:
        text += "\toption identity '%s'\n" % identity
    text += "config tunnel 't'\n\toption server 'hub'\n\toption listen '20022'\n\toption target '127.0.0.1:22'\n"
    conf.write_text(text)
    return conf


def _missing_known_hosts(tmp_path):
    return write_conf(tmp_path, known_hosts=str(tmp_path / "nope"))


def _known_hosts_dir(tmp_path):
    (tmp_path / "kh").mkdir()
    return write_conf(tmp_path, known_hosts=str(tmp_path / "kh"), accept_new="1")


def _dropbear_key_for_openssh(tmp_path):
    key = tmp_path / "id.db"
    key.write_bytes(DROPBEAR_KEY)
    key.chmod(0o600)
    (tmp_path / "known_hosts").write_text("")
    return write_conf(tmp_path, known_hosts=str(tmp_path / "known_hosts"), identity=str(key))


CASES = [
    (_missing_known_hosts, 66, "does not exist"),
    (_known_hosts_dir, 66, "is a directory"),
    (_dropbear_key_for_openssh, 65, "is in dropbear format"),
]


@pytest.mark.parametrize("make,code,text", CASES, ids=["kh-missing", "kh-directory", "dropbear-key"])
def test_config_refuses_what_run_refuses(tmp_path, make, code, text):
    conf = make(tmp_path)
    run = sshkeep(tmp_path, "run", "-c", str(conf), "--no-checks", "--state", str(tmp_path / "s.json"),
                  "--pidfile", str(tmp_path / "pid"))
    assert run.returncode == code and text in run.stderr.decode(), run.stderr
    check = sshkeep(tmp_path, "config", "-c", str(conf))
    assert check.returncode == code, check.stderr
    assert check.stderr.decode() == run.stderr.decode()  # the same message, word for word
    assert check.stdout == b""  # nothing printed as if the file were fine


def test_config_still_prints_a_good_file(tmp_path):
    (tmp_path / "known_hosts").write_text("")
    conf = write_conf(tmp_path, known_hosts=str(tmp_path / "known_hosts"))
    c = sshkeep(tmp_path, "config", "-c", str(conf))
    assert c.returncode == 0, c.stderr
    assert b"20022" in c.stdout
