"""A hub that floods the box with output (issue 11 part 3), with a real sshd.

The tunnel user's ~/.ssh/rc on the hub prints 15 MB before every session's command (a chatty
login, or a hostile hub). Check jobs are ssh execs on the hub: their output was kept whole
(measured here with this test before the fix: 57 MB peak RSS; the review saw 368 MB). Now each job
is capped and ended past the cap: about 15 MB.
"""

import os

import pytest

from agentrun import Agent

RPORT = 20331
FLOOD_MB = 15


def _rss_kb(pid):
    with open("/proc/%d/status" % pid) as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@pytest.mark.integration
def test_flooding_hub_does_not_grow_the_agent(lab):
    server = lab.start_sshd()
    rc = os.path.join(lab.home, ".ssh", "rc")
    with open(rc, "w") as fh:   # sshd runs it with /bin/sh before the command; its stdout is the session's
        fh.write("head -c %d /dev/zero | tr '\\000' x | fold -w 99; echo\n" % (FLOOD_MB << 20))
    os.chown(rc, lab.uid, lab.gid)
    svc = lab.start_service(lab.box_ns, 0)
    a = Agent(lab, server, [("-R", "127.0.0.1:%d:127.0.0.1:%d" % (RPORT, svc.port))], client="openssh",
              extra=("--interval", "2", "--remote-check-every", "1")).start()
    try:
        a.wait_up(60)
        peak = 0
        # three rounds of checks, each answered with a flood
        a.wait(lambda: a.tunnel().get("last_check") and a.tunnel()["checks"], 30, "a check verdict")
        first = a.tunnel()["last_check"]

        def later_check():
            nonlocal peak
            peak = max(peak, _rss_kb(a.proc.pid))
            return a.tunnel()["last_check"] and a.tunnel()["last_check"] > first + 4
        a.wait(later_check, 60, "more check rounds against the flooding hub")
        peak = max(peak, _rss_kb(a.proc.pid))
        assert peak < 32 * 1024, "agent RSS %d KB while the hub flooded %d MB per exec" % (peak, FLOOD_MB)
    finally:
        a.stop()
