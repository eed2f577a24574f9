"""Host-key failures with each root's dbclient: both dropbear generations (2022.83 without -o BatchMode,
2025.89 with it) must end in a named reason, never a y/n prompt or a tight restart loop."""

import time

import pytest

import lightguard
from agentrun import Agent, cpu_seconds

OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEdSX0suUwaSQ16T6RwcsEfQjv6d36eH4iLQv17k27DW"


@pytest.mark.parametrize("case", ["unknown", "mismatch"])
def test_host_key_failure_is_named_and_idle(root, lab, case):
    server = lab.start_sshd()
    svc = lab.start_service(lab.box_ns, 0)
    a = Agent(lab, server, [("-R", "127.0.0.1:20022:127.0.0.1:%d" % svc.port)], client="dropbear",
              python=root.python[-1], prefix=root.python[:-1], ssh=root.dbclient_wrapper,
              extra=("--interval", "5", "--max-backoff", "30"), name="hk-%s-%s" % (root.name, case))
    a.env.update(root.env)
    a.env["PYTHONDONTWRITEBYTECODE"] = "1"
    lightguard.check_active(root.python[-1], a.env, cmd_prefix=root.python[:-1], timeout=120)
    with open(a.dir + "/known_hosts", "w") as f:
        f.write("" if case == "unknown" else "%s %s\n" % (lab.srv_ip, OTHER_KEY))
    a.start()
    try:
        a.wait(lambda: ("host-key-" + case) in (a.tunnel().get("last_error") or ""), 30,
               "host-key-%s reported (%s)" % (case, root.name))
        a.wait(lambda: a.tunnel()["state"] == "backoff", 30, "backoff after host-key-%s" % case)
        restarts, c0, t0 = a.tunnel()["restarts"], cpu_seconds(a.proc.pid), time.monotonic()
        a.wait(lambda: time.monotonic() - t0 > 3, 10, "three seconds of waiting")
        assert a.tunnel()["restarts"] == restarts, "restarting in a loop: %s" % a.tunnel()
        assert cpu_seconds(a.proc.pid) - c0 < 0.5, "agent busy while it should wait"
        assert a.tunnel().get("ssh_pid") is None, "a dbclient left running (at a y/n prompt?)"
    finally:
        assert a.stop(timeout=15.0) == 0, a.log()[-3000:]
