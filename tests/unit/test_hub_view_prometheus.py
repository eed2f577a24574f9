"""`sshkeep hub --prometheus`: the text read back with prometheus_client's own parser (pinned in
build/requirements.txt), not with a regex of ours. Native only (tests/cross/test_cross_unit.py NATIVE_ONLY): the cross runs would
import prometheus_client under the foreign pythons, and it needs ssl (mipsel's root cannot load it).
"""

import json
import os

from prometheus_client.parser import text_string_to_metric_families

from agent.hub import view as hub
from agent.hub.view import parse_record
from fakesession import starttime
from hubparts import Listener, hub_cli, sample_doc


def test_prometheus_parses_with_prometheus_client_and_escapes_labels():
    text = hub.prometheus(sample_doc(odd=True))
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert sorted(fams) == ["sshkeep_hub_sessions", "sshkeep_tunnel_since_seconds", "sshkeep_tunnel_up"]
    up = {(s.labels["box"], s.labels["port"]): s.value for s in fams["sshkeep_tunnel_up"].samples}
    assert up == {("A", "20022"): 1.0, ("A", "20023"): 0.0, ("B\\q", "20030"): 1.0}
    b = [s for s in fams["sshkeep_tunnel_up"].samples if s.labels["port"] == "20030"][0]
    assert b.labels["host"] == 'r"2' and b.labels["tunnel"] == "x"
    since = {s.labels["port"]: s.value for s in fams["sshkeep_tunnel_since_seconds"].samples}
    assert since == {"20022": 1700000000.0, "20023": 1700000000.0, "20030": 1700000100.0}
    assert fams["sshkeep_hub_sessions"].samples[0].value == 2.0
    assert fams["sshkeep_tunnel_up"].type == "gauge"


def test_prometheus_one_sample_per_box_and_port():
    a = parse_record("rport-20022-100", "v1 box=A start=5 since=100 ports=20022")
    b = parse_record("rport-20022-200", "v1 box=A start=6 since=200 ports=20022")
    doc = hub.document(hub.sessions([(a, False), (b, False)]), {20022: ("ok-silent", "")}, {}, [], [], "/x", 300)
    fams = {f.name: f for f in text_string_to_metric_families(hub.prometheus(doc))}
    assert len(fams["sshkeep_tunnel_up"].samples) == 1
    assert fams["sshkeep_tunnel_since_seconds"].samples[0].value == 200.0


def test_cli_exit_codes_json_and_prometheus_file(tmp_path):
    d = tmp_path / "state"
    d.mkdir()
    me = os.getppid()  # the test process's parent outlives the command: a live "session"
    ok = Listener()
    try:
        (d / ("rport-%d-%d" % (ok.port, me))).write_text("v1 box=a start=%s ports=%d\n" % (starttime(me), ok.port))
        prom = tmp_path / "sshkeep.prom"
        r = hub_cli("--state-dir", str(d), "--prometheus", str(prom))
        assert r.returncode == 0, r.stderr
        assert r.stdout == b"" and r.stderr == b""
        fams = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
        assert fams["sshkeep_tunnel_up"].samples[0].value == 1.0
        assert oct(prom.stat().st_mode & 0o777) == "0o644"
        assert not [n for n in os.listdir(str(tmp_path)) if n.endswith(".tmp")]
    finally:
        ok.close()
    r = hub_cli("--state-dir", str(d), "--json")
    assert r.returncode == 69
    doc = json.loads(r.stdout)
    assert doc["summary"]["down"] == 1 and doc["sessions"][0]["forwards"][0]["verdict"] == "refused"
    r = hub_cli("--state-dir", str(d))
    assert r.returncode == 69 and b"DOWN (refused)" in r.stdout
    r = hub_cli("--state-dir", str(d), "--prometheus", str(tmp_path / "no" / "such" / "x.prom"))
    assert r.returncode == 73 and b"cannot write" in r.stderr and b"Traceback" not in r.stderr
