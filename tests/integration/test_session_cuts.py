"""A hub that cuts the tunnel's session every few seconds (an admin's script, an IDS, a flaky NAT):
a session that came up and passed its first check proved the path, so each retry stays quick
instead of escalating 1, 2, 4, ... 60 s (issue 18). Real sshd, the built pyz, in the lab."""

import re
import time

import pytest

from agentrun import Agent

pytestmark = pytest.mark.integration

BANNER = b"SVC-READY\r\n"
RPORT = 20022
CUTS = 5


def test_session_cut_every_five_seconds_is_retried_within_a_second(lab):
    server = lab.start_sshd()
    svc = lab.start_service(lab.box_ns, 0)
    a = Agent(lab, server, [("-R", "127.0.0.1:%d:127.0.0.1:%d" % (RPORT, svc.port))], client="openssh",
              extra=("--interval", "3", "--max-backoff", "60")).start()
    try:
        for cut in range(CUTS):
            # up, and its first check passed: the session proved the path; then cut it ~5 s after it came up
            a.wait(lambda: a.tunnel()["state"] == "up" and a.tunnel()["restarts"] == cut
                   and a.tunnel()["health"] == "ok", 20, "session %d up and checked" % cut)
            since = a.tunnel()["since"]
            a.wait(lambda: time.time() - since >= 5.0, 10, "session %d five seconds old" % cut)
            assert server.kill_sessions(), "no server session to cut"
        a.wait(lambda: a.tunnel()["state"] == "up" and a.tunnel()["restarts"] == CUTS, 20, "up after the cuts")
        lab.wait_until(lambda: lab.probe_from(lab.srv_ns, "127.0.0.1", RPORT, timeout=2) == BANNER, 10,
                       what="reverse forward answers after the last cut")
        delays = [float(d) for d in re.findall(r"retrying in ([0-9.]+)s", a.log())]
        assert len(delays) == CUTS, a.log()[-3000:]
        assert all(d <= 1.0 for d in delays), delays   # before the fix: 1, 2, 4, 8, 16 (jittered)
    finally:
        assert a.stop() == 0
