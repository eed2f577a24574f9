"""The README's quick start, run as written, on a box that has both clients, against a real sshd.

The commands are read from README.md itself (the indented lines of its quick-start section), with only
the paths and the hub's name pointed into the lab: if the README's steps stop working (a key format the
chosen client refuses, authorized_keys options that keep the tunnel down), this test fails.
"""

import os
import shlex
import shutil
import subprocess

import pytest

from agentrun import require_pyz
import lightguard
from polling import wait_until

pytestmark = pytest.mark.integration

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
README = os.path.join(TOP, "README.md")


def quickstart_commands():
    """Every command of README's quick start: indented lines, continuations joined."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    section = text.split("\n## Quick start", 1)[1].split("\n## ", 1)[0]
    cmds, cur = [], ""
    for line in section.split("\n"):
        if not line.startswith("    "):
            continue
        cur += line.strip()
        if cur.endswith("\\"):
            cur = cur[:-1] + " "
            continue
        cmds.append(cur)
        cur = ""
    return cmds


def pick(cmds, *words):
    found = [c for c in cmds if all(w in c for w in words)]
    assert len(found) == 1, (words, found)
    return found[0]


@pytest.mark.parametrize("client", ["openssh", "dropbear"])
def test_readme_quick_start_works_as_written(lab, client):
    pyz = require_pyz()
    # the box of the issue: both clients installed, `ssh` being OpenSSH
    assert b"OpenSSH" in subprocess.run(["ssh", "-V"], capture_output=True).stderr
    assert shutil.which("dbclient")
    cmds = quickstart_commands()
    etc = os.path.join(lab.dir, "etc-sshkeep")
    state, pidfile = os.path.join(lab.dir, "state.json"), os.path.join(lab.dir, "pid")

    def local(cmd):
        cmd = cmd.replace("/etc/sshkeep", etc).replace("hub.example.com", lab.srv_ip)
        cmd = cmd.replace("python3 /usr/lib/sshkeep/sshkeep.pyz", "/usr/bin/python3 " + pyz)
        cmd = cmd.replace(" tunnel@", " %s@" % lab.user)
        return cmd.replace(pyz + " run ", "%s run --state %s --pidfile %s " % (pyz, state, pidfile)) \
                  .replace(pyz + " status", "%s status --state %s" % (pyz, state))

    env = lightguard.guard_env(dict(os.environ, HOME=lab.dir))
    lab.start_service(lab.box_ns, 22, banner=b"SSH-2.0-the-box\r\n")  # the box's own ssh

    # 1. a key in the client's format
    lab.box_run(["sh", "-ec", local(pick(cmds, "mkdir -p /etc/sshkeep"))], check=True)
    keygen = pick(cmds, "ssh-keygen -t" if client == "openssh" else "dropbearkey -t")
    lab.box_run(["sh", "-ec", local(keygen)], timeout=30, check=True)
    with open(os.path.join(etc, "id.pub")) as f:
        pub = f.read().split()
    assert pub[0] == "ssh-ed25519", pub
    # 2. its public half, with the README's options, in the hub's authorized_keys
    options = pick(cmds, "restrict,").split()[0]
    lab.authorize_key("%s %s %s" % (options, pub[0], pub[1]))
    # 3. the hub's host key
    srv = lab.start_sshd()
    lab.box_run(["sh", "-ec", local(pick(cmds, "ssh-keyscan"))], timeout=20, check=True)
    # 4. run
    run = shlex.split(local(pick(cmds, " run ", "--client " + client)))
    log = os.path.join(lab.dir, "agent.run.log")
    with open(log, "ab") as out:
        agent = lab.box_popen(run, stdout=out, stderr=out, env=env)

    def agent_log():
        with open(log, errors="replace") as f:
            return f.read()

    def forward_answers():
        assert agent.poll() is None, "agent exited %s:\n%s" % (agent.returncode, agent_log())
        got = lab.probe_from(lab.srv_ns, "127.0.0.1", 20022)
        return got and got.startswith(b"SSH-2.0-the-box")

    wait_until(forward_answers, 30, what="the hub's 127.0.0.1:20022 reaching the box's ssh")
    assert "using %s" % client in agent_log(), agent_log()

    # 5. status
    def status_says_up():
        r = lab.box_run(shlex.split(local(pick(cmds, "sshkeep.pyz status"))), check=False, env=env)
        rows = [l for l in r.stdout.decode().splitlines() if l.startswith(lab.srv_ip)]
        return r.returncode == 0 and rows and rows[0].split()[1] == "up"

    wait_until(status_says_up, 20, what="status showing the tunnel up")
    agent.terminate()
    assert agent.wait(10) == 0, agent_log()
