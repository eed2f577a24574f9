"""status and the logs, pure parts: the state's shape, the table, staleness, the settings digest,
and where log lines go when syslog or stderr is not there (issue 10 items 8, 9, 14, 15, 18)."""

import io
import os
import re

from agent.run import log as L
from agent.run import state
from agent.core.model import Forward, Settings, Tunnel, check_key, hostport


def doc(**kw):
    d = {"pid": os.getpid(), "version": "x", "updated": 1000.0, "monotonic": 500.0, "interval": 10,
         "tunnels": [{"name": "hub", "state": "up", "since": 900.0, "restarts": 0, "server": "[::1]:2299",
                      "last_error": "auth-failed: Permission denied (publickey). the server refused our key: "
                                    "check -i, the user, and the key in the server's authorized_keys",
                      "forwards": [{"name": "web", "kind": "R", "spec": "8080:127.0.0.1:80", "verdict": "ok"},
                                   {"name": "ssh", "kind": "R", "spec": "2222:127.0.0.1:22", "verdict": None},
                                   {"name": "loop-r", "kind": "R", "spec": "1:127.0.0.1:2", "verdict": None}]}]}
    d.update(kw)
    return d


def test_table_names_the_configured_tunnels_and_shows_the_whole_error():
    text = state.render(doc(), now=1001.0, now_mono=501.0)
    assert "FORWARDS" in text and "web, ssh" in text and "loop-r" not in text
    assert text.rstrip().endswith("authorized_keys")   # not cut at 70 characters
    assert "[::1]:2299" in text and "NOT UPDATING" not in text


def test_hung_agent_is_not_updating():
    fresh, hung = state.public(doc(), 1020.0, 520.0), state.public(doc(), 1120.0, 620.0)  # 20 s vs 120 s, interval 10
    assert fresh["updating"] is True and hung["updating"] is False
    assert "NOT UPDATING" in state.render(doc(), now=1120.0, now_mono=620.0)


def test_staleness_has_slack_and_prefers_the_monotonic_clock():
    assert state.updating(doc(interval=1), 1009.0, 509.0)          # 10 s floor for short intervals
    assert not state.updating(doc(interval=1), 1011.0, 511.0)
    # the wall clock stepped 1 h forward (NTP on a box without RTC): the monotonic stamp decides
    assert state.updating(doc(), 4600.0, 505.0)


def test_old_state_files_with_plain_forward_labels_still_render():
    d = doc()
    d["tunnels"][0]["forwards"] = ["-R 8080:127.0.0.1:80"]
    assert state.public(d)["tunnels"][0]["forwards"] == [
        {"name": "-R 8080:127.0.0.1:80", "kind": None, "spec": None, "verdict": None}]
    assert "-R 8080:127.0.0.1:80" in state.render(d, 1001.0, 501.0)


def test_digest_changes_with_a_forward_and_not_with_the_log_target():
    t = Tunnel("hub", "h", forwards=(Forward("R", "", 8080, "127.0.0.1", 80),))
    s = Settings(tunnels=(t,))
    more = Settings(tunnels=(Tunnel("hub", "h", forwards=t.forwards + (Forward("R", "", 8081, "127.0.0.1", 81),)),))
    assert state.digest(s) == state.digest(Settings(tunnels=(t,), syslog=True))
    assert state.digest(s) != state.digest(more) and re.match("^[0-9a-f]{16}$", state.digest(s))


def test_hostport_and_check_key():
    assert hostport("::1", 2299) == "[::1]:2299" and hostport("hub", 22) == "hub:22"
    assert check_key(Forward("R", "", 8080, "h", 80, name="web")) == "R:8080"
    assert check_key(Forward("L", "", 1, "h", 2, name="loop-l")) == "loop"


# -- log -----------------------------------------------------------------------------------------

def test_lines_carry_a_timestamp_on_a_pipe():
    out = io.StringIO()
    L.Log(stream=out).info("web", "up")
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d info: web: up$", out.getvalue().strip())


def test_syslog_without_dev_log_falls_back_to_stderr_and_says_so(tmp_path):
    out = io.StringIO()
    log = L.Log(use_syslog=True, stream=out, syslog_socket=str(tmp_path / "no-log"))
    log.info("", "hello")
    lines = out.getvalue().splitlines()
    assert "no syslog" in lines[0] and "logging to stderr" in lines[0] and log.note
    assert lines[1].endswith("info: hello") and len(lines) == 2


def test_devnull_stderr_goes_to_a_capped_file_rotated_once(tmp_path):
    path = str(tmp_path / "sshkeep.log")
    with open(os.devnull, "w") as null:
        log = L.Log(use_syslog=True, stream=null, logfile=path, syslog_socket=str(tmp_path / "no-log"))
        assert log.note.endswith("logging to %s" % path)
        log.stream.cap = 2000
        for i in range(100):
            log.info("t", "line %d %s" % (i, "x" * 40))
    assert os.path.getsize(path) <= 2000 and os.path.getsize(path + ".1") <= 2000
    assert "line 99" in open(path).read() and not os.path.exists(path + ".2")


def test_working_syslog_socket_is_used(tmp_path):
    import socket
    sock_path = str(tmp_path / "log")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(sock_path)
    try:
        assert L.syslog_problem(sock_path) == ""
        assert "no-such" in L.syslog_problem(str(tmp_path / "no-such"))
    finally:
        s.close()


def test_log_path_beside_the_state():
    assert L.log_path_for("/var/run/sshkeep.json") == "/var/run/sshkeep.log"
    assert L.log_path_for("/tmp/st") == "/tmp/st.log"
