"""Enrolled boxes on one hub user (issue 22): keys written by `sshkeep hub enroll` into a root-owned keys
file, sshd configured with `sshkeep hub sshd-config`, every exec going through `sshkeep hub serve`.

Real OpenSSH sshd (deb12: 9.2; deb13: 10.0 in its own root) and the built pyz on both sides. Box 1 runs
the agent unchanged; box 2 is a compromised box with its own enrolled key, trying what a shell would
allow: any command, -L to box 1's port, squatting it, ending box 1's session, forging its record.
"""

import json
import os
import shutil
import signal
import subprocess

import pytest

from agentrun import Agent, alive, require_pyz
from agent.hubside import remote
from insession import logins
from lab import wait_until

pytestmark = pytest.mark.integration

P1, P2 = 20041, 20042
KEYS_DIR = "/var/lib/sshkeep-lab-keys"          # root-owned parents all the way up (sshd's StrictModes)
HUB_PYZ = "/usr/local/lib/sshkeep-lab/sshkeep.pyz"


def pyz_run(*args, **kw):
    return subprocess.run(["/usr/bin/python3", require_pyz()] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=30, **kw)


def enrolled_hub(lab, gen):
    """sshd with an enrolled key per box; returns (server, key of box 2, the hub's root or '')."""
    root = "" if gen == "deb12" else lab.hub_root(gen)
    keys_dir = root + KEYS_DIR + "/" + lab.srv_ns
    os.makedirs(keys_dir, mode=0o755)
    lab.cleanup_dirs = [keys_dir]
    os.makedirs(os.path.dirname(root + HUB_PYZ), mode=0o755, exist_ok=True)
    shutil.copy(require_pyz(), root + HUB_PYZ)
    os.chmod(root + HUB_PYZ, 0o644)
    key2 = os.path.join(lab.dir, "box2_ed25519")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key2], check=True)
    keys = os.path.join(keys_dir, lab.user)
    for box, port, pub in (("box1", P1, lab.key_openssh + ".pub"), ("box2", P2, key2 + ".pub")):
        r = pyz_run("hub", "enroll", "--box", box, "--listen", str(port), "--keys-file", keys, "--pyz", HUB_PYZ, pub)
        assert r.returncode == 0, r.stderr
    block = pyz_run("hub", "sshd-config", "--user", lab.user, "--keys-dir", KEYS_DIR + "/" + lab.srv_ns)
    lines = [l.strip() for l in block.stdout.decode().splitlines() if l.strip() and not l.startswith("#")]
    assert lines[0] == "Match User %s" % lab.user and "AllowTcpForwarding remote" in lines
    return lab.start_sshd(generation=gen, extra=lines), key2, root


def box2_ssh(lab, server, key2, *args, cmd=None, timeout=15):
    argv = ["ssh", "-i", key2, "-p", str(server.port), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", "UserKnownHostsFile=" + lab.known_hosts(server), "-o", "StrictHostKeyChecking=yes"] + list(args) \
        + ["%s@%s" % (lab.user, lab.srv_ip)] + ([cmd] if cmd else [])
    return lab.box_run(argv, timeout=timeout)


def hub_json(lab, copy):
    """`sshkeep hub --json` as the tunnel user, from `copy` (the fixture other_user_copy: the checkout
    may be a 0700 directory that user cannot read)."""
    r = lab.user_run(["/usr/bin/python3", "-I", copy.pyz, "hub", "--json"], timeout=60)
    assert b"Traceback" not in r.stderr, r.stderr
    return json.loads(r.stdout.decode())


def records(lab):
    d = os.path.join(lab.home, ".sshkeep")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


@pytest.mark.parametrize("gen", ["deb12", "deb13"])
def test_enrolled_boxes_one_user(lab, gen, other_user_copy):
    server, key2, root = enrolled_hub(lab, gen)
    svc = lab.start_service(lab.box_ns, 0)
    a = Agent(lab, server, [("-R", "127.0.0.1:%d:127.0.0.1:%d" % (P1, svc.port))], name="box1",
              extra=("--interval", "1", "--keepalive", "60"))
    try:
        a.start().wait_up(30)
        # the box needs no new flag: it comes up, its checks run in the session, no new login per check
        a.wait(lambda: a.tunnel()["checks"].get("R:%d" % P1) == "ok", 20, "first in-session check ok")
        assert a.tunnel()["check_mode"] == "in-session"
        first = logins(server)
        rounds = {a.tunnel()["last_check"]}
        wait_until(lambda: rounds.add(a.tunnel()["last_check"]) or len(rounds) >= 4, 20, 0.2, "three more checks")
        assert logins(server) == first and a.tunnel()["health"] == "ok"
        # its record names the enrolled ID, not what the box sent
        names = [n for n in records(lab) if n.startswith("rport-%d-" % P1)]
        assert len(names) == 1, records(lab)
        with open(os.path.join(lab.home, ".sshkeep", names[0])) as fh:
            assert fh.read().split()[1] == "box=box1"

        # box 2: any other command: exit 64, nothing run
        for cmd in ("id", "sh -c id", "exec sh -c id sshkeep-session d x h t %d" % P1):
            r = box2_ssh(lab, server, key2, cmd=cmd)
            assert r.returncode == 64 and b"uid=" not in r.stdout, (cmd, r)
        r = box2_ssh(lab, server, key2, "-T")              # a login: no shell either
        assert r.returncode == 64, r
        # ... no -L to box 1's port (the key's permitopen and AllowTcpForwarding remote)
        lp = 20051
        hold = lab.box_popen(["ssh", "-i", key2, "-p", str(server.port), "-N", "-o", "BatchMode=yes",
                              "-o", "UserKnownHostsFile=" + lab.known_hosts(server), "-L",
                              "127.0.0.1:%d:127.0.0.1:%d" % (lp, P1), "%s@%s" % (lab.user, lab.srv_ip)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: lab.listening(lab.box_ns, lp), 10, 0.1, "box 2's -L listener")
            assert lab.probe_from(lab.box_ns, "127.0.0.1", lp) in (None, b"")   # box 1's banner never comes
        finally:
            hold.kill()
            hold.wait(5)
        # ... cannot end box 1's session: a reclaim of box 1's port is refused; of its own port it ends nothing
        s = a.tunnel()["session"]
        for port, code in ((P1, 64), (P2, 91)):
            r = box2_ssh(lab, server, key2, cmd=remote.reclaim_command(port, owner="box1", pid=s["pid"], start=s["start"]))
            assert r.returncode == code, (port, r)
        assert alive(s["pid"])
        # ... cannot forge: a session naming box 1 and its port is refused; one naming box 1 on its own port is
        # recorded as box2
        forged = remote.session_command([P1], owner="box1", host="OpenWrt", tunnel="box1")
        assert box2_ssh(lab, server, key2, cmd=forged).returncode == 64
        squat = lab.box_popen(["ssh", "-i", key2, "-p", str(server.port), "-o", "BatchMode=yes",
                               "-o", "UserKnownHostsFile=" + lab.known_hosts(server), "-R",
                               "127.0.0.1:%d:127.0.0.1:%d" % (P2, svc.port), "%s@%s" % (lab.user, lab.srv_ip),
                               remote.session_command([P2], owner="box1", host="OpenWrt", tunnel="box1")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: any(n.startswith("rport-%d-" % P2) for n in records(lab)), 10, 0.1, "box 2's record")
            doc = hub_json(lab, other_user_copy)
            boxes = {s["forwards"][0]["port"]: s["box"] for s in doc["sessions"]}
            assert boxes == {P1: "box1", P2: "box2"}, doc
            assert [s["up"] for s in doc["sessions"] if s["box"] == "box1"] == [True]
        finally:
            squat.stdin.close()
            squat.wait(10)
        # ... and cannot squat box 1's port once box 1 is gone (permitlisten)
        assert a.stop() == 0
        wait_until(lambda: not lab.listening(lab.srv_ns, P1), 10, 0.1, "box 1's listener gone")
        r = box2_ssh(lab, server, key2, "-N", "-o", "ExitOnForwardFailure=yes",
                     "-R", "127.0.0.1:%d:127.0.0.1:%d" % (P1, svc.port), timeout=20)
        assert r.returncode == 255 and b"remote port forwarding failed" in r.stderr, r
    finally:
        a.stop()
        for d in getattr(lab, "cleanup_dirs", []):
            shutil.rmtree(d, ignore_errors=True)


def test_enrolled_box_reclaims_its_own_stale_session(lab):
    """The hub's session process is stopped (a box whose flow died): the agent finds the session dead,
    reconnects, its -R is refused, and its reclaim through `hub serve` ends its own old session."""
    server, _, _ = enrolled_hub(lab, "deb12")
    svc = lab.start_service(lab.box_ns, 0)
    a = Agent(lab, server, [("-R", "127.0.0.1:%d:127.0.0.1:%d" % (P1, svc.port))], name="box1",
              extra=("--interval", "2", "--keepalive", "60"))
    old = None
    try:
        a.start().wait_up(30)
        a.wait(lambda: a.tunnel()["checks"].get("R:%d" % P1) == "ok", 20, "first check ok")
        old = a.tunnel()["session"]["pid"]
        os.kill(old, signal.SIGSTOP)
        a.wait(lambda: "reclaimed stale listener on port %d" % P1 in a.log(), 40, "the reclaim")
        a.wait(lambda: a.tunnel()["state"] == "up" and a.tunnel()["session"]["pid"] != old, 30, "up again")
        wait_until(lambda: not alive(old), 10, 0.1, "the old session ended")
        a.wait(lambda: a.tunnel()["checks"].get("R:%d" % P1) == "ok", 20, "checks ok again")
    finally:
        if old and alive(old):
            os.kill(old, signal.SIGCONT)
        a.stop()
        for d in getattr(lab, "cleanup_dirs", []):
            shutil.rmtree(d, ignore_errors=True)
