"""`make demo`: a throwaway sshd, the agent keeping a reverse tunnel to it, a fault, the recovery.

Runs in two network namespaces made for the demo (tests/support/lab.py): "box" runs the
agent from build/sshkeep.pyz, "server" runs a real OpenSSH sshd. Everything is
removed at the end.
"""

import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "support"))

import lab as labmod  # noqa: E402
from agentrun import Agent, require_pyz  # noqa: E402

RPORT = 20022


def say(text):
    sys.stdout.write("\n==> %s\n" % text)
    sys.stdout.flush()


def show_status(lab, agent, pyz):
    out = lab.box_run(["/usr/bin/python3", pyz, "status", "--state", agent.state], timeout=20,
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    sys.stdout.write(out.stdout.decode(errors="replace"))
    sys.stdout.flush()


def main():
    pyz = require_pyz(sys.argv[1] if len(sys.argv) > 1 else None)
    problems = labmod.missing_requirements()
    if problems:
        sys.exit("demo cannot run: " + "; ".join(problems))
    with labmod.Lab(tag="demo") as lab:
        say("server namespace %s (%s): starting a throwaway OpenSSH sshd" % (lab.srv_ns, lab.srv_ip))
        server = lab.start_sshd()
        svc = lab.start_service(lab.box_ns, 0, banner=b"SSH-2.0-demo-box-service\r\n")
        say("box namespace %s (%s): a service on 127.0.0.1:%d; agent keeps -R 127.0.0.1:%d -> it"
            % (lab.box_ns, lab.box_ip, svc.port, RPORT, ))
        agent = Agent(lab, server, [("-R", "127.0.0.1:%d:127.0.0.1:%d" % (RPORT, svc.port))],
                      extra=("--interval", "5"), pyz=pyz, name="demo").start()
        sys.stdout.write("    %s\n" % " ".join(agent.argv))
        agent.wait_up(30)
        lab.wait_until(lambda: lab.probe_from(lab.srv_ns, "127.0.0.1", RPORT), 10, what="forward")
        say("from the server, 127.0.0.1:%d answers: %r" % (
            RPORT, lab.probe_from(lab.srv_ns, "127.0.0.1", RPORT)))
        show_status(lab, agent, pyz)
        say("fault: killing the server's sessions (pids %s)" % server.kill_sessions())
        t0 = time.monotonic()
        lab.wait_until(lambda: lab.probe_from(lab.srv_ns, "127.0.0.1", RPORT, timeout=1), 30, 0.1,
                       what="forward back")
        say("forward answers again after %.1f s" % (time.monotonic() - t0))
        agent.wait_up(10)
        show_status(lab, agent, pyz)
        say("agent log")
        sys.stdout.write(agent.log())
        rc = agent.stop()
        say("agent stopped (exit %s); cleaning up namespaces and processes" % rc)
    say("demo done")


if __name__ == "__main__":
    main()
