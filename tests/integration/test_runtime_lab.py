"""Issue 10 with real parts (the built pyz in the lab's box namespace, real sshd, both clients):
a tunnel-only key with a forced command (item 10), a client binary that vanishes under one tunnel
of two (item 12), dbclient's unknown host key naming the user's file (item 17)."""

import json
import os
import shutil

import pytest

import lightguard
from agentrun import Agent, alive, require_pyz

pytestmark = pytest.mark.integration

BANNER = b"SVC-READY\r\n"


def reverse_ok(lab, port):
    return lab.probe_from(lab.srv_ns, "127.0.0.1", port, timeout=2) == BANNER


def set_authorized_keys(lab, line):
    path = os.path.join(lab.home, ".ssh", "authorized_keys")
    with open(path, "w") as f:
        f.write(line + "\n")
    os.chown(path, lab.uid, lab.gid)


@pytest.mark.parametrize("client,server_kind", [("openssh", "openssh"), ("dropbear", "openssh"),
                                                ("openssh", "dropbear")])
def test_forced_command_key_falls_back_to_dash_n(lab, client, server_kind):
    # A tunnel-only key: the server runs `echo tunnels only` instead of our session command and
    # ends the session before our ready line. The agent must fall back to -N and come up.
    set_authorized_keys(lab, 'command="echo tunnels only" ' + lab.key_pub)
    server = lab.start_sshd() if server_kind == "openssh" else lab.start_dropbear()
    svc = lab.start_service(lab.box_ns, 0)
    a = Agent(lab, server, [("-R", "127.0.0.1:20031:127.0.0.1:%d" % svc.port)], client=client,
              extra=("--interval", "3", "--max-backoff", "2")).start()
    try:
        a.wait_up(40)
        assert "using -N from now on" in a.log(), a.log()[-3000:]
        lab.wait_until(lambda: reverse_ok(lab, 20031), 10, what="reverse forward answers through the -N session")
    finally:
        a.stop()


def _config(lab, server, path, ssh_b, target_port):
    known = lab.known_hosts(server, path + ".known_hosts")
    text = ("config sshkeep\n\toption interval '2'\n\toption max_backoff '2'\n\n")
    for name, ssh, port in (("a", "/usr/bin/ssh", 20041), ("b", ssh_b, 20042)):
        text += ("config server '%s'\n\toption host '%s'\n\toption port '%d'\n\toption user '%s'\n"
                 "\toption identity '%s'\n\toption known_hosts '%s'\n\toption ssh '%s'\n"
                 "\toption client 'openssh'\n\n"
                 "config tunnel 't_%s'\n\toption server '%s'\n\toption listen '127.0.0.1:%d'\n"
                 "\toption target '127.0.0.1:%d'\n\n"
                 % (name, lab.srv_ip, server.port, lab.user, lab.key_openssh, known, ssh, name, name, port,
                    target_port))
    with open(path, "w") as f:
        f.write(text)


def test_vanished_client_fails_only_its_tunnel(lab):
    server = lab.start_sshd()
    svc = lab.start_service(lab.box_ns, 0)
    d = os.path.join(lab.dir, "agent12")
    os.makedirs(os.path.join(d, "bin"))
    ssh_b = os.path.join(d, "bin", "ssh")
    shutil.copy2("/usr/bin/ssh", ssh_b)
    conf, st, log = os.path.join(d, "c.conf"), os.path.join(d, "s.json"), os.path.join(d, "agent.run.log")
    _config(lab, server, conf, ssh_b, svc.port)
    with open(log, "ab") as fh:
        proc = lab.box_popen(["/usr/bin/python3", require_pyz(), "run", "-c", conf, "--state", st, "--pidfile",
                              os.path.join(d, "pid")], stdout=fh, stderr=fh,
                             env=lightguard.guard_env(dict(os.environ, HOME=d)))

    def tunnels():
        try:
            with open(st) as f:
                return {t["name"]: t for t in json.load(f)["tunnels"]}
        except (OSError, ValueError, KeyError):
            return {}

    try:
        lab.wait_until(lambda: all(t.get("state") == "up" for t in tunnels().values()) and len(tunnels()) == 2,
                       30, what="both tunnels up")
        a_pid, b_pid = tunnels()["a"]["ssh_pid"], tunnels()["b"]["ssh_pid"]
        os.unlink(ssh_b)                      # a package upgrade, a lost overlay mount
        os.kill(b_pid, 15)
        lab.wait_until(lambda: "client-missing" in (tunnels().get("b", {}).get("last_error") or ""), 15,
                       what="tunnel b shows the missing client")
        restarts = tunnels()["b"]["restarts"]
        lab.wait_until(lambda: tunnels()["b"]["restarts"] >= restarts + 2, 20, what="b retried with backoff")
        assert proc.poll() is None, open(log).read()[-3000:]        # the agent did not exit 69
        assert tunnels()["a"]["state"] == "up" and tunnels()["a"]["ssh_pid"] == a_pid and alive(a_pid)
        assert reverse_ok(lab, 20041)
        shutil.copy2("/usr/bin/ssh", ssh_b)   # back: b comes up again on its own
        lab.wait_until(lambda: tunnels()["b"].get("state") == "up", 20, what="b up again")
        lab.wait_until(lambda: reverse_ok(lab, 20042), 10, what="b's forward answers again")
    finally:
        if proc.poll() is None:
            proc.terminate()
        assert proc.wait(10) == 0, open(log).read()[-3000:]


def test_dbclient_unknown_host_key_names_the_users_file(lab):
    server = lab.start_sshd()
    svc = lab.start_service(lab.box_ns, 0)
    a = Agent(lab, server, [("-R", "127.0.0.1:20051:127.0.0.1:%d" % svc.port)], client="dropbear",
              extra=("--interval", "3"))
    known = os.path.join(a.dir, "known_hosts")
    with open(known, "w") as fh:
        fh.write("")   # nothing known, and no --accept-new
    a.start()
    try:
        a.wait(lambda: "host-key-unknown" in a.tunnel()["last_error"], 20, "host-key-unknown")
        line = [l for l in a.log().splitlines() if "is not in" in l][0]
        assert "is not in %s " % known in line and ".d/home-" not in line, line
        assert "%s:%d" % (lab.srv_ip, server.port) in line
    finally:
        a.stop()


def test_connect_to_failed_is_logged_once_while_the_target_is_down(lab):
    # Real OpenSSH: every remote check of a -R forward whose box-side target is down makes ssh
    # print `connect_to 127.0.0.1 port N: failed.`; the log carries it once, not once per check.
    server = lab.start_sshd()
    svc = lab.start_service(lab.box_ns, 0)
    port = svc.port
    svc.stop()                                   # the target is down from the start
    a = Agent(lab, server, [("-R", "127.0.0.1:20061:127.0.0.1:%d" % port)], client="openssh",
              extra=("--interval", "1")).start()
    try:
        a.wait_up(30)
        a.wait(lambda: a.tunnel()["checks"].get("R:20061") == "target-down", 20, "target-down")
        first = a.tunnel()["last_check"]
        a.wait(lambda: a.tunnel()["last_check"] - first >= 3.0, 20, "three more checks")
        said = lambda: [l for l in a.log().splitlines() if "connect_to 127.0.0.1 port %d" % port in l]
        assert len(said()) == 1, said()
        back = lab.start_service(lab.box_ns, port)   # the target returns: a check passes ...
        a.wait(lambda: a.tunnel()["checks"].get("R:20061") == "ok", 20, "check ok")
        back.stop()                                  # ... and a new outage is news again, once
        a.wait(lambda: a.tunnel()["checks"].get("R:20061") == "target-down", 20, "target-down again")
        first = a.tunnel()["last_check"]
        a.wait(lambda: a.tunnel()["last_check"] - first >= 3.0, 20, "three more checks")
        assert len(said()) == 2, said()
    finally:
        a.stop()
