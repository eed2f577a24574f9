"""Trust on first use that pins (issue 11 part 1), with the real clients against a real hub.

For OpenSSH and for dbclient 2022.83 and 2025.89: the first connection pins the hub's key in
the persistent known_hosts (created with its directory); a restart with an empty tmpfs state
keeps the pin; a changed hub key is refused (host-key-mismatch) and the log names the pin's
file and line. Before the fix, dbclient got `-y`: 2022.83 never wrote the key, so every later
connection accepted any key.
"""

import os
import shutil
import sys

import pytest

from agentrun import Agent

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "cross"))


def _dbclient_2025():
    import roots
    try:
        return roots.ensure_root("trixie").dbclient_wrapper
    except roots.RootError as exc:
        pytest.fail("dropbear 2025.89 (Debian 13 root): %s" % exc, pytrace=False)


CLIENTS = {
    "openssh": ("openssh", lambda: "/usr/bin/ssh"),
    "dbclient-2022.83": ("dropbear", lambda: "/usr/bin/dbclient"),
    "dbclient-2025.89": ("dropbear", _dbclient_2025),
}


def _agent(lab, server, kind, ssh, pins, name):
    a = Agent(lab, server, [("-R", "127.0.0.1:20022:127.0.0.1:22")], client=kind, ssh=ssh, name=name,
              extra=("--accept-new", "--max-backoff", "30"))
    i = a.argv.index("--known-hosts")
    a.argv[i + 1] = pins
    return a


def _empty_tmpfs_state(a):
    for p in (a.state, a.state + ".d"):
        if os.path.isdir(p):
            shutil.rmtree(p)
        elif os.path.exists(p):
            os.unlink(p)


def _read(path):
    with open(path) as fh:
        return fh.read()


@pytest.mark.integration
@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_first_contact_pins_and_a_changed_key_is_refused(lab, client):
    kind, ssh = CLIENTS[client][0], CLIENTS[client][1]()
    server = lab.start_dropbear()            # port 2222: the pin is "[ip]:2222 key"
    pins = os.path.join(lab.dir, "flash", "etc-sshkeep", "known_hosts")   # neither exists yet
    want = "[%s]:2222 %s" % (lab.srv_ip, server.host_key_pub)

    a = _agent(lab, server, kind, ssh, pins, "first")
    a.start()
    try:
        a.wait_up(30)
        a.wait(lambda: want in _read(pins), 10, "the hub's key pinned in %s" % pins)
        assert [l.split()[:3] for l in _read(pins).splitlines() if l.strip()] == [want.split()]
        assert "pinned on first use in %s" % pins in a.tunnel()["host_keys"]
    finally:
        assert a.stop() is not None
    pinned = _read(pins)
    mtime = os.stat(pins).st_mtime_ns

    # reboot: the tmpfs state (and the private HOME under it) is gone, the pin is not
    _empty_tmpfs_state(a)
    b = _agent(lab, server, kind, ssh, pins, "again")
    b.start()
    try:
        b.wait_up(30)
        assert _read(pins) == pinned           # checked against the pin, nothing written
        assert os.stat(pins).st_mtime_ns == mtime
        assert "first contact" not in b.log()
    finally:
        b.stop()

    # the hub's key changes (a man in the middle, or a reinstall): refused, long backoff
    server.stop()
    os.unlink(lab._server_paths("dropbear", 2222)["key"])
    server2 = lab.start_dropbear()
    assert server2.host_key_pub != server.host_key_pub
    _empty_tmpfs_state(b)
    c = _agent(lab, server2, kind, ssh, pins, "changed")
    c.start()
    try:
        c.wait(lambda: c.tunnel().get("last_error") and "host-key-mismatch" in c.tunnel()["last_error"],
               30, "host-key-mismatch")
        c.wait(lambda: c.tunnel()["state"] == "backoff", 5, "backoff")
        assert c.tunnel()["next_attempt_in"] > 10        # the longest delay, not a tight loop
        assert "%s line 1" % pins in c.log()             # which line of which file to remove
        assert _read(pins) == pinned                     # the new key was not pinned
        assert "up via" not in c.log()
    finally:
        c.stop()


def test_strict_host_key_checking_no_is_warned_at_start_and_in_status(tmp_path):
    # sshtunnel's `StrictHostKeyChecking no` runs (as TOFU: a changed key is still refused),
    # with a warning in the log at every start and in `status`.
    import subprocess
    from polling import wait_until
    root = os.path.dirname(HERE)
    fake = os.path.join(os.path.dirname(HERE), "support", "fakes", "fakessh")
    conf = tmp_path / "sshtunnel"
    conf.write_text("config sshkeep\n\toption known_hosts '%s'\n\n" % (tmp_path / "known_hosts") +
                    "config server 'vps'\n\toption user 'tunnel'\n\toption hostname '127.0.0.1'\n"
                    "\toption StrictHostKeyChecking 'no'\n\n"
                    "config tunnelR 'a'\n\toption server 'vps'\n\toption remoteport '10022'\n"
                    "\toption localaddress '127.0.0.1'\n\toption localport '22'\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    os.symlink(fake, str(bindir / "ssh"))
    env = dict(os.environ, FAKESSH_MODE="ready", PYTHONPATH=root, PATH="%s:%s" % (bindir, os.environ["PATH"]))
    state = tmp_path / "s.json"
    err = tmp_path / "err"
    for _ in range(2):   # every start
        with open(str(err), "w") as fh:
            p = subprocess.Popen([sys.executable, "-m", "agent", "run", "-c", str(conf), "--no-checks",
                                  "--state", str(state), "--pidfile", str(tmp_path / "pid")],
                                 env=env, stdout=subprocess.DEVNULL, stderr=fh)
        try:
            wait_until(lambda: state.exists() and '"up"' in state.read_text(), 10, 0.05, what="tunnel up")
            assert "StrictHostKeyChecking no is treated as accept-new" in err.read_text()
            st = subprocess.run([sys.executable, "-m", "agent", "status", "--state", str(state)], env=env,
                                stdout=subprocess.PIPE, timeout=20)
            text = st.stdout.decode()
            assert "warning:" in text and "StrictHostKeyChecking no is treated as accept-new" in text
            assert "host keys pinned on first use in %s" % (tmp_path / "known_hosts") in text
        finally:
            p.terminate()
            assert p.wait(10) == 0


def test_o_strict_host_key_checking_no_is_warned_too():
    from agent import cli
    args = cli.build_parser().parse_args(["run", "-o", "StrictHostKeyChecking=no", "-R", "1:h:2", "--state",
                                          "/tmp/x.json", "--pidfile", "/tmp/x.pid", "hub"])
    s = cli.settings_from_args(args)
    assert s.tunnels[0].accept_new is True
    assert s.warnings == ("-o StrictHostKeyChecking=no is treated as accept-new (a changed host key is "
                          "still refused)",)
    args = cli.build_parser().parse_args(["run", "-o", "StrictHostKeyChecking=yes", "-o",
                                          "StrictHostKeyChecking=no", "-R", "1:h:2", "hub", "--state", "/tmp/x"])
    assert cli.settings_from_args(args).warnings == ()
