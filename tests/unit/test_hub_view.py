"""agent.hub.view (pure) as tables, agent.hub.scan against real files, real /proc and real sockets.

The Prometheus text is read back with prometheus_client's own parser in
tests/unit/test_hub_view_prometheus.py (native only: prometheus_client needs ssl, which the mipsel
cross root cannot load; these unit tests also run under the foreign pythons).
"""

import json
import os
import pwd
import subprocess
import sys

import pytest

from fakesession import starttime
from hubparts import Listener, hub_cli, sample_doc
from polling import wait_for

from agent.hub import view as hub, scan as hubscan
from agent.hub.view import BadRecord, Proc, Record, judge, parse_record
from agent.core.record import replace

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --- parsing -------------------------------------------------------------------
def test_v1_record_all_fields_and_unknown_keys_kept():
    r = parse_record("rport-20022-4242", "v1 box=8f3a host=router1 tunnel=wan start=123 since=1700000000 "
                     "ports=20023,20022 client=10.0.0.9 future=x\n")
    assert (r.port, r.pid, r.box, r.host, r.tunnel, r.start, r.since) == (
        20022, 4242, "8f3a", "router1", "wan", "123", 1700000000)
    assert r.ports == (20022, 20023) and r.format == "v1"
    assert dict(r.extra) == {"client": "10.0.0.9", "future": "x"}


def test_v1_record_unknown_since_and_start():
    r = parse_record("rport-20022-4242", "v1 box=8f3a host=- tunnel=- start=0 since=- ports=20022")
    assert r.since is None and r.start == "0"


def test_legacy_record():
    r = parse_record("rport-20022-4242", "router1.wan 98765\n")
    assert (r.box, r.host, r.tunnel, r.start, r.format, r.ports) == ("router1.wan", "-", "-", "98765", "legacy",
                                                                      (20022,))


@pytest.mark.parametrize("name,text,why", [
    ("rport-20022-4242", "", "empty"),
    ("rport-20022-4242", "\n\n", "empty"),
    ("rport-20022-4242", "v1 host=a start=1", "without box"),
    ("rport-20022-4242", "v1 box=a nonsense", "KEY=VALUE"),
    ("rport-20022-4242", "one two three", "unknown record format"),
    ("rport-20022-4242", "v2 box=a start=1", "newer than this sshkeep reads"),
    ("rport-20022-4242", "box\x1b[2J 1", "control"),
    ("rport-20022-4242", "b\u00f6x 1", "non-ASCII"),
    ("rport-99999-4242", "a 1", "not a session record name"),
    ("rport-20022-1", "a 1", "not a session record name"),
    ("notes.txt", "a 1", "not a session record name"),
])
def test_bad_records_say_why(name, text, why):
    with pytest.raises(BadRecord) as exc:
        parse_record(name, text)
    assert why in str(exc.value)


# --- liveness ------------------------------------------------------------------
REC = Record("rport-20022-4242", 20022, 4242, "b", start="500")


@pytest.mark.parametrize("rec,proc,stale", [
    (REC, None, "is gone"),
    (REC, Proc("Z", "500", 1000, ""), "zombie"),
    (REC, Proc("S", "501", 1000, "sshd: t@notty"), "recycled"),
    (REC, Proc("S", "500", 1000, "anything"), None),
    (replace(REC, start=""), Proc("S", "9", 1000, "sshd: t@notty"), None),
    (replace(REC, start="0"), Proc("S", "9", 0, "/usr/sbin/dropbear -F -p 2222 -2 8"), None),
    (replace(REC, start=""), Proc("S", "9", 0, "sshd-session: t@notty"), None),
    (replace(REC, start=""), Proc("S", "9", 1000, "bash"), "not an ssh session process"),
])
def test_judge(rec, proc, stale):
    why = judge(rec, proc)
    assert (why is None) if stale is None else (stale in why)


def test_sessions_merge_ports_of_one_pid_and_split_recycled_starts():
    a1 = parse_record("rport-20022-100", "v1 box=A host=h tunnel=t start=5 since=10 ports=20022,20023")
    a2 = parse_record("rport-20023-100", "v1 box=A host=h tunnel=t start=5 since=10 ports=20022,20023")
    b = parse_record("rport-20030-200", "old.t 7")
    found = hub.sessions([(a1, False), (a2, False), (b, True)])
    assert [(s.box, s.ports, s.names, s.foreign) for s in found] == [
        ("A", (20022, 20023), ("rport-20022-100", "rport-20023-100"), False),
        ("old.t", (20030,), ("rport-20030-200",), True)]


def test_collisions_name_the_boxes():
    a = parse_record("rport-20022-100", "v1 box=A start=5 ports=20022")
    b = parse_record("rport-20022-200", "v1 box=B start=6 ports=20022")
    c = parse_record("rport-20022-300", "v1 box=A start=7 ports=20022")
    lines = hub.collisions(hub.sessions([(a, False), (b, False), (c, False)]))
    assert len(lines) == 1 and "port 20022" in lines[0] and "A, B" in lines[0]


@pytest.mark.parametrize("value,want", [
    ("10.0.0.1 51234 10.0.0.2 22", ("10.0.0.1", 51234)),
    ("fe80::1 51234 fe80::2 22", ("fe80::1", 51234)),
    ("10.0.0.1 x 10.0.0.2 22", None),
    ("", None),
])
def test_ssh_connection(value, want):
    assert hub.parse_ssh_connection(value) == want


def test_since_from_start():
    assert hub.since_from_start("250", 1000.0, 100) == 1002
    assert hub.since_from_start("", 1000.0, 100) is None
    assert hub.since_from_start("0", 1000.0, 100) is None


# --- the document and its renderings -------------------------------------------
def test_document_shape_is_stable():
    doc = sample_doc()
    assert sorted(doc) == ["format", "problems", "reaped", "sessions", "state_dir", "summary", "time"]
    assert doc["format"] == "sshkeep-hub/1" and doc["time"] == 1700000200
    assert sorted(doc["sessions"][0]) == ["box", "client", "client_port", "extra", "files", "foreign", "forwards",
                                          "host", "pid", "record", "since", "tunnel", "up"]
    assert sorted(doc["sessions"][0]["forwards"][0]) == ["detail", "port", "up", "verdict"]
    assert doc["summary"] == {"sessions": 2, "forwards": 3, "down": 1, "reaped": 1, "problems": 1}
    assert doc["sessions"][0]["up"] is False and doc["sessions"][1]["up"] is True
    assert doc["sessions"][1]["client"] is None
    assert hub.any_down(doc)
    json.dumps(doc)


def test_render_names_the_down_forward():
    text = hub.render(sample_doc())
    lines = text.splitlines()
    assert lines[0].split() == ["BOX", "HOST", "TUNNEL", "PID", "SINCE", "(UTC)", "CLIENT", "FORWARDS"]
    assert "20022 up, 20023 DOWN (closed)" in lines[1] and "10.0.0.1:40000" in lines[1]
    assert lines[3].startswith("2 sessions, 3 forwards, 1 down: A port 20023: accepted, then closed")
    assert lines[4] == "reaped rport-1-3: session pid 3 is gone"


def test_render_no_sessions():
    doc = hub.document([], {}, {}, [], [], "/x", 0)
    assert hub.render(doc) == "0 sessions, 0 forwards, 0 down\n"
    assert not hub.any_down(doc)




def test_escape_label_newline():
    assert hub.escape_label('a\\b"c\nd') == 'a\\\\b\\"c\\nd'


def test_escape_label_control_characters_stay_valid_escapes():
    # the exposition format knows only \\ \" \n: anything else is written as text after an escaped \
    assert hub.escape_label("a\x1b[2Jb\r") == "a\\\\x1b[2Jb\\\\x0d"


def test_render_escapes_what_a_terminal_would_act_on():
    doc = sample_doc()
    doc["reaped"].append({"file": "rport-1-\x1b]0;owned\x07", "why": "gone\r\nsshkeep: forged"})
    doc["sessions"][0]["forwards"][1]["detail"] = "banner \x1b[2J\x9b"
    text = hub.render(doc)
    assert not any(c in text for c in "\x1b\x07\r\x9b")
    assert "reaped rport-1-\\x1b]0;owned\\x07: gone\\x0d\\x0asshkeep: forged" in text.splitlines()




# --- the scan, against real files and the real /proc -----------------------------
def _dead_pid():
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_scan_junk_foreign_recycled_and_reap(tmp_path):
    d = str(tmp_path)
    me, dead = os.getpid(), _dead_pid()
    ok = Listener()

    def put(name, text, uid=None):
        path = os.path.join(d, name)
        with open(path, "w") as fh:
            fh.write(text)
        if uid is not None:
            os.chown(path, uid, -1)
        return path

    try:
        put("rport-%d-%d" % (ok.port, me), "v1 box=live host=h tunnel=t start=%s since=- ports=%d\n"
            % (starttime(me), ok.port))
        put("rport-20001-%d" % dead, "v1 box=gone start=5 ports=20001\n")
        put("rport-20002-%d" % me, "v1 box=recycled start=1 ports=20002\n")
        put("rport-20003-%d" % me, "garbage with four words\n")
        put("notes.txt", "hello\n")
        os.mkdir(os.path.join(d, "rport-20004-%d" % me))
        os.symlink("/etc/passwd", os.path.join(d, "rport-20005-%d" % me))
        os.mkfifo(os.path.join(d, "rport-20006-%d" % me))
        nobody = pwd.getpwnam("nobody").pw_uid
        put("rport-20007-%d" % dead, "v1 box=theirs start=5 ports=20007\n", uid=nobody)
        put("rport-20008-%d" % me, "theirs.live %s\n" % starttime(me), uid=nobody)
        before = set(os.listdir(d))

        doc = hubscan.view(d, timeout=2.0)

        after = set(os.listdir(d))
        assert before - after == {"rport-20001-%d" % dead, "rport-20002-%d" % me}  # ours and stale: only those
        assert {r["file"]: r["why"] for r in doc["reaped"]} == {
            "rport-20001-%d" % dead: "session pid %d is gone" % dead,
            "rport-20002-%d" % me: "pid %d was recycled (start time %s, recorded 1)" % (me, starttime(me))}
        problems = {p["file"]: p["problem"] for p in doc["problems"]}
        assert "unknown record format" in problems["rport-20003-%d" % me]
        assert "not a session record" in problems["notes.txt"]
        assert "not a regular file" in problems["rport-20004-%d" % me]
        assert "symlink" in problems["rport-20005-%d" % me]
        assert "not a regular file" in problems["rport-20006-%d" % me]
        assert "owned by uid %d" % nobody in problems["rport-20007-%d" % dead]
        assert "left alone" in problems["rport-20007-%d" % dead]
        assert "never reaped" in problems["rport-20008-%d" % me]
        rows = {s["box"]: s for s in doc["sessions"]}
        assert sorted(rows) == ["live", "theirs.live"]
        live = rows["live"]
        assert live["forwards"] == [{"port": ok.port, "up": True, "verdict": "ok-silent",
                                     "detail": live["forwards"][0]["detail"]}]
        assert live["since"] is not None and abs(live["since"] - _since_of(me)) <= 1
        assert rows["theirs.live"]["foreign"] is True and rows["theirs.live"]["up"] is False
    finally:
        ok.close()


def _since_of(pid):
    with open("/proc/stat") as fh:
        btime = next(float(l.split()[1]) for l in fh if l.startswith("btime "))
    return btime + int(starttime(pid)) / os.sysconf("SC_CLK_TCK")


def test_reap_leaves_a_record_rewritten_since_it_was_judged(tmp_path):
    d = str(tmp_path)
    dead = _dead_pid()
    path = os.path.join(d, "rport-20001-%d" % dead)
    with open(path, "w") as fh:
        fh.write("v1 box=a start=5 ports=20001\n")
    live, stale, problems = hubscan.scan(d, os.geteuid())
    assert len(stale) == 1 and not live and not problems
    with open(path, "w") as fh:  # a new session on the same (recycled) pid
        fh.write("v1 box=a start=6 ports=20001\n")
    done, problems = hubscan.reap(d, stale, os.geteuid())
    assert done == [] and problems == [] and os.path.exists(path)


def test_client_from_a_childs_ssh_connection(tmp_path):
    env = dict(os.environ, SSH_CONNECTION="192.0.2.7 41000 192.0.2.1 22")
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE, env=env)
    try:
        kids = hubscan.children()
        assert child.pid in kids[os.getpid()]
        # until the child has exec'd, its /proc/PID/environ is still ours, without SSH_CONNECTION: on a
        # busy machine (or a slow emulated CPU) the first look can come that early
        assert wait_for(lambda: hubscan.client_of(os.getpid(), hubscan.children()), 10) == ("192.0.2.7", 41000)
        assert hubscan.client_of(child.pid, kids) is None
    finally:
        child.stdin.close()
        child.wait(5)


# --- the command ---------------------------------------------------------------
@pytest.mark.parametrize("value", ["0", "-1", "61", "x"])
def test_cli_timeout_bounded(tmp_path, value):
    r = hub_cli("--state-dir", str(tmp_path), "--timeout", value)
    assert r.returncode == 64 and b"--timeout" in r.stderr and b"Traceback" not in r.stderr


def test_cli_escapes_file_names_on_the_terminal(tmp_path):
    for name in (b"junk\x1b]0;owned\x07", b"rport-\x1b[2J-1", b"bad\nsshkeep: forged", b"latin\x9b1"):
        (tmp_path / os.fsdecode(name)).write_bytes(b"x")
    for args in ((), ("--json",)):
        r = hub_cli("--state-dir", str(tmp_path), *args)
        assert r.returncode == 0, r.stderr
        for out in (r.stdout, r.stderr):
            assert not any(c in out for c in (b"\x1b", b"\x07", b"\x9b", b"\nsshkeep: forged"))
        assert r.stderr.count(b"\n") == 4 and b"junk\\x1b]0;owned\\x07: not a session record" in r.stderr


def test_cli_missing_and_unreadable_dir_one_clear_line(tmp_path, other_user_copy):
    r = hub_cli("--state-dir", str(tmp_path / "nope"))
    assert r.returncode == 66 and r.stdout == b""
    assert r.stderr.decode().count("\n") == 1 and "does not exist" in r.stderr.decode()
    d = tmp_path / "locked"
    d.mkdir(mode=0o700)
    os.chmod(str(tmp_path), 0o755)
    nobody = str(pwd.getpwnam("nobody").pw_uid)
    r = hub_cli("--state-dir", str(d), user=nobody, copy=other_user_copy)
    assert r.returncode == 77, r.stderr
    err = r.stderr.decode()
    assert err.count("\n") == 1 and "permission denied" in err and "Traceback" not in err




def test_every_json_key_is_documented_in_docs_hub_md():
    """The document is stable and documented: each key `--json` prints is named in docs/hub.md."""
    with open(os.path.join(ROOT, "docs", "hub.md"), encoding="utf-8") as fh:
        text = fh.read()
    section = text.split("## The JSON document", 1)[1].split("\n## ", 1)[0]
    doc = sample_doc()
    keys = set(doc) | set(doc["sessions"][0]) | set(doc["sessions"][0]["forwards"][0]) | set(doc["summary"]) \
        | set(doc["reaped"][0]) | set(doc["problems"][0])
    missing = sorted(k for k in keys if '"%s"' % k not in section and "`%s`" % k not in section
                     and "`.%s`" % k not in section)
    assert not missing, "keys of sshkeep hub --json not in docs/hub.md: %s" % missing
