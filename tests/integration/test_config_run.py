"""Config-file mode with real parts: failover to an alternate and back, SIGHUP reload."""

import json
import os
import signal

import pytest

import lightguard
from agentrun import AgentProcess, alive, require_pyz

pytestmark = pytest.mark.integration

BANNER = b"SVC-READY\r\n"


def write_config(lab, path, servers, tunnels, interval=2):
    lines = ["config sshkeep",
             "\toption state '%s'" % os.path.join(lab.dir, "state.json"),
             "\toption pidfile '%s'" % os.path.join(lab.dir, "pid"),
             "\toption interval '%s'" % interval,
             "\toption max_backoff '4'",
             ""]
    for name, opts, alternates in servers:
        lines.append("config server '%s'" % name)
        for k, v in opts.items():
            lines.append("\toption %s '%s'" % (k, v))
        for alt in alternates:
            lines.append("\tlist alternate '%s'" % alt)
        lines.append("")
    for name, opts in tunnels:
        lines.append("config tunnel '%s'" % name)
        for k, v in opts.items():
            lines.append("\toption %s '%s'" % (k, v))
        lines.append("")
    with open(path, "w") as fh:
        fh.write("\n".join(lines))


def box_agent(lab, *args):
    """`run ARGS` of the built pyz in the lab's box namespace, in lab.dir (its state: lab.dir/state.json)."""
    return AgentProcess(["/usr/bin/python3", require_pyz(), "run"] + list(args), lab.dir, lab=lab,
                        env=lightguard.guard_env(dict(os.environ, HOME=lab.dir))).start()


def test_failover_to_alternate_and_back(lab):
    primary = lab.start_sshd(port=22)
    alternate = lab.start_sshd(port=2200)
    primary.stop()                      # primary down at start
    kh = os.path.join(lab.dir, "kh")
    with open(kh, "w") as fh:
        fh.write(primary.known_hosts_line() + alternate.known_hosts_line())
    svc = lab.start_service(lab.box_ns, 0)
    cfg = os.path.join(lab.dir, "sshkeep.conf")
    write_config(lab, cfg,
                 [("hub", {"host": lab.srv_ip, "port": 22, "user": lab.user, "identity": lab.key_openssh,
                           "known_hosts": kh, "client": "openssh", "ssh": "/usr/bin/ssh",
                           "failover_after": 2, "connect_timeout": 3},
                   ["%s:2200" % lab.srv_ip])],
                 [("rev", {"server": "hub", "type": "remote", "listen": "127.0.0.1:20022",
                           "target": "127.0.0.1:%d" % svc.port})])
    a = box_agent(lab, "-c", cfg)
    try:
        a.wait_tunnels(lambda t: t["hub"]["state"] == "up" and t["hub"]["server"].endswith(":2200"), 60,
               "up on the alternate")
        lab.wait_until(lambda: lab.probe_from(lab.srv_ns, "127.0.0.1", 20022) == BANNER, 10,
                       what="forward via the alternate")
        primary.start()
        a.wait_tunnels(lambda t: t["hub"]["state"] == "up" and t["hub"]["server"].endswith(":22"), 30,
               "moved back to the primary")
        assert "moving back" in a.log()
        lab.wait_until(lambda: lab.probe_from(lab.srv_ns, "127.0.0.1", 20022) == BANNER, 10,
                       what="forward via the primary")
    finally:
        a.stop()


def test_sighup_keeps_unchanged_tunnels(lab):
    server = lab.start_sshd(port=22)
    server2 = lab.start_sshd(port=2200)
    kh = os.path.join(lab.dir, "kh")
    with open(kh, "w") as fh:
        fh.write(server.known_hosts_line() + server2.known_hosts_line())
    svc = lab.start_service(lab.box_ns, 0)
    common = {"host": lab.srv_ip, "user": lab.user, "identity": lab.key_openssh, "known_hosts": kh,
              "client": "openssh", "ssh": "/usr/bin/ssh"}
    cfg = os.path.join(lab.dir, "sshkeep.conf")
    servers = [("a", dict(common, port=22), []), ("b", dict(common, port=2200), []),
               ("c", dict(common, port=2200), [])]
    tunnels = [("ta", {"server": "a", "listen": "20001", "target": "127.0.0.1:%d" % svc.port}),
               ("tb", {"server": "b", "listen": "20002", "target": "127.0.0.1:%d" % svc.port}),
               ("tc", {"server": "c", "listen": "20003", "target": "127.0.0.1:%d" % svc.port})]
    write_config(lab, cfg, servers, tunnels)
    ag = box_agent(lab, "-c", cfg)
    try:
        ag.wait_tunnels(lambda t: all(t[n]["state"] == "up" for n in "abc"), 30, "three tunnels up")
        before = ag.tunnels()
        tunnels[1] = ("tb", {"server": "b", "listen": "20012", "target": "127.0.0.1:%d" % svc.port})
        write_config(lab, cfg, servers[:2], tunnels[:2])     # b changed, c removed
        ag.proc.send_signal(signal.SIGHUP)
        ag.wait_tunnels(lambda t: set(t) == {"a", "b"} and t["b"]["state"] == "up"
                and t["b"]["ssh_pid"] != before["b"]["ssh_pid"], 30, "reload applied")
        after = ag.tunnels()
        assert after["a"]["ssh_pid"] == before["a"]["ssh_pid"]          # untouched
        assert not alive(before["c"]["ssh_pid"])                        # removed: stopped
        assert not alive(before["b"]["ssh_pid"])                        # changed: restarted
        lab.wait_until(lambda: lab.probe_from(lab.srv_ns, "127.0.0.1", 20012) == BANNER, 10,
                       what="changed forward")
        # a broken file on reload: keep running as before, say why
        with open(cfg, "a") as fh:
            fh.write("\nconfig tunnel 'bad'\n\toption server 'nosuch'\n")
        ag.proc.send_signal(signal.SIGHUP)
        lab.wait_until(lambda: "reload failed" in ag.log(), 10, what="reload refusal logged")
        assert ag.tunnels()["a"]["ssh_pid"] == before["a"]["ssh_pid"]
    finally:
        ag.stop()


def test_ssh_config_host_works_with_dropbear(lab):
    # dbclient cannot read ssh_config: the agent reads the Host block and passes flags.
    server = lab.start_sshd(port=22)
    svc = lab.start_service(lab.box_ns, 0)
    kh = os.path.join(lab.dir, "kh")
    with open(kh, "w") as fh:
        fh.write(server.known_hosts_line())
    cfg = os.path.join(lab.dir, "ssh_config")
    with open(cfg, "w") as fh:
        fh.write("Host hub\n  HostName %s\n  User %s\n  Port 22\n  IdentityFile %s\n"
                 "  RemoteForward 127.0.0.1:20022 127.0.0.1:%d\n  ServerAliveInterval 5\n"
                 "Host *\n  User nobody\n" % (lab.srv_ip, lab.user, lab.key_dropbear, svc.port))
    state = os.path.join(lab.dir, "state.json")
    a = box_agent(lab, "--ssh-config", cfg, "--client", "dropbear", "--ssh", "/usr/bin/dbclient", "--known-hosts", kh,
                  "--state", state, "--pidfile", os.path.join(lab.dir, "pid"), "hub")
    try:
        lab.wait_until(lambda: lab.probe_from(lab.srv_ns, "127.0.0.1", 20022) == BANNER, 30,
                       what="forward from the ssh_config Host block via dbclient")
        with open(state) as fh:
            t = json.load(fh)["tunnels"][0]
        assert t["client"].startswith("dropbear") and t["server"] == "%s:22" % lab.srv_ip
    finally:
        a.stop()


def test_banner_with_shell_metacharacters_never_reaches_a_shell(lab):
    # The banner is the one configured value that travels to the server's shell (as hex, an
    # argument of a fixed script). The tunnel name is cleaned before use, so it cannot show this.
    server = lab.start_sshd()
    kh = os.path.join(lab.dir, "kh")
    with open(kh, "w") as fh:
        fh.write(server.known_hosts_line())
    svc = lab.start_service(lab.box_ns, 0)
    marker = os.path.join(lab.dir, "pwned")
    cfg = os.path.join(lab.dir, "sshkeep.conf")
    write_config(lab, cfg,
                 [("hub", {"host": lab.srv_ip, "port": server.port, "user": lab.user, "identity": lab.key_openssh,
                           "known_hosts": kh, "client": "openssh", "ssh": "/usr/bin/ssh",
                           "remote_check_every": 1}, [])],
                 [("rev", {"server": "hub", "type": "remote", "listen": "127.0.0.1:20022",
                           "target": "127.0.0.1:%d" % svc.port,
                           "check": 'banner:SVC-$(touch %s)`touch %s`;touch %s;"' % (marker, marker, marker)})])
    a = box_agent(lab, "-c", cfg)
    try:
        # the service's banner is not that text: judged a mismatch on the server, and nothing ran
        a.wait_tunnels(lambda t: t["hub"]["checks"].get("R:20022") == "mismatch", 30, "the remote check's mismatch")
        assert not os.path.exists(marker)
    finally:
        a.stop()
    assert not os.path.exists(marker)
