"""`sshkeep hub` on a real hub (OpenSSH sshd, dropbear), run there as the tunnel user, over three agents'
real sessions: one session killed and healed, one box-side target down."""

import json
import os
import signal
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

import lightguard
from agentrun import Agent, alive, require_pyz
from lab import cmdline, descendants, kill_pids

pytestmark = pytest.mark.integration

PORTS = (20031, 20032, 20033)


def run_hub(lab, copy, *args):
    """The built pyz on the hub as the tunnel user, under the python3-light guard (a hub may be a router).
    Both from `copy` (the fixture other_user_copy): the checkout may be a 0700 directory that user
    cannot read."""
    return lab.user_run(["/usr/bin/python3", copy.pyz, "hub"] + list(args), timeout=60, cwd=lab.home,
                        env=lightguard.guard_env(guard_dir=copy.guard_dir))


def hub_json(lab, copy):
    r = run_hub(lab, copy, "--json")
    assert b"Traceback" not in r.stderr, r.stderr
    return r.returncode, json.loads(r.stdout.decode()), r.stderr.decode()


def records(lab):
    d = os.path.join(lab.home, ".sshkeep")
    try:
        return sorted(os.listdir(d))
    except FileNotFoundError:
        return []


def record_pid(lab, port):
    """The session pid in the one record for port, or None (none, or more than one)."""
    names = [n for n in records(lab) if n.startswith("rport-%d-" % port)]
    return int(names[0].rsplit("-", 1)[1]) if len(names) == 1 else None


def box_id_args(pyz, path):
    """--box-id-file FILE where this build has it (box identities: docs/hub-records.md), else nothing:
    then the three agents differ by tunnel name (the older records' owner is HOST.TUNNEL)."""
    r = subprocess.run(["/usr/bin/python3", pyz, "run", "--help"], stdout=subprocess.PIPE, timeout=30)
    return ("--box-id-file", path) if b"--box-id-file" in r.stdout else ()


@pytest.mark.parametrize("kind", ["openssh", "dropbear"])
def test_hub_view_three_boxes_one_healed_one_target_down(lab, kind, other_user_copy):
    server = lab.start_sshd() if kind == "openssh" else lab.start_dropbear()
    pyz = require_pyz()
    agents, services = [], []
    try:
        for i, port in enumerate(PORTS):
            svc = lab.start_service(lab.box_ns, 0, banner=b"SVC-%d\r\n" % i)
            services.append(svc)
            name = "box%d" % (i + 1)
            extra = ("--interval", "5", "--keepalive", "2") + box_id_args(pyz, os.path.join(lab.dir, name + ".id"))
            agents.append(Agent(lab, server, [("-R", "127.0.0.1:%d:127.0.0.1:%d" % (port, svc.port))],
                                name=name, extra=extra).start())
        for a in agents:
            a.wait_up(30)
        lab.wait_until(lambda: all(record_pid(lab, p) for p in PORTS), 15, what="a record per port")

        rc, doc, err = hub_json(lab, other_user_copy)
        assert rc == 0, (doc, err)
        assert doc["summary"] == {"sessions": 3, "forwards": 3, "down": 0, "reaped": 0, "problems": 0}
        rows = {s["forwards"][0]["port"]: s for s in doc["sessions"]}
        assert sorted(rows) == list(PORTS)
        assert len({s["box"] for s in doc["sessions"]}) == 3
        for port, s in rows.items():
            assert s["pid"] == record_pid(lab, port)
            assert s["client"] == lab.box_ip, s  # SSH_CONNECTION of the session command's shell
            assert s["since"] is not None and abs(s["since"] - doc["time"]) < 120
            assert s["forwards"][0]["verdict"] == "ok-data"  # the box's service greeted through the tunnel
            if s["record"] != "legacy":
                assert s["tunnel"] == "box%d" % (PORTS.index(port) + 1) and s["host"] != "-"

        # box 2: its session command's shell dies by SIGKILL (no trap runs: its record stays behind);
        # the session ends, the agent connects again and records a new session
        old = record_pid(lab, PORTS[1])
        shells = [p for p in descendants(old) if "sshkeep-session" in cmdline(p)]
        assert shells, [cmdline(p) for p in descendants(old)]
        kill_pids(shells, signal.SIGKILL)
        stale = "rport-%d-%d" % (PORTS[1], old)
        agents[1].wait(lambda: agents[1].tunnel()["restarts"] >= 1 and agents[1].tunnel()["state"] == "up",
                       30, "box 2 healed")
        lab.wait_until(lambda: not alive(old) and any(n.startswith("rport-%d-" % PORTS[1]) and n != stale
                                                      for n in records(lab)), 15, what="box 2's new record")
        stale_left = stale in records(lab)  # unless the new session's reclaim already forgot it

        # box 3: its target goes down; the tunnel stays
        services[2].stop()

        rc, doc, err = hub_json(lab, other_user_copy)
        assert rc == 69, (doc, err)
        assert doc["summary"]["sessions"] == 3 and doc["summary"]["down"] == 1, doc
        rows = {s["forwards"][0]["port"]: s for s in doc["sessions"]}
        assert rows[PORTS[2]]["forwards"][0]["verdict"] == "closed"  # accepted on the hub, the box refused
        assert rows[PORTS[0]]["up"] and rows[PORTS[1]]["up"] and not rows[PORTS[2]]["up"]
        assert rows[PORTS[1]]["pid"] != old
        if stale_left:
            assert [r["file"] for r in doc["reaped"]] == [stale]
        left = records(lab)
        assert len(left) == 3 and stale not in left, left
        assert all(alive(int(n.rsplit("-", 1)[1])) for n in left)

        text = run_hub(lab, other_user_copy)
        assert text.returncode == 69
        assert ("%d DOWN (closed)" % PORTS[2]).encode() in text.stdout, text.stdout
        assert text.stdout.count(b" up") >= 2

        prom = os.path.join(lab.home, "sshkeep.prom")
        r = run_hub(lab, other_user_copy, "--prometheus", prom)
        assert r.returncode == 69 and r.stdout == b"", r.stderr
        with open(prom) as fh:
            fams = {f.name: f for f in text_string_to_metric_families(fh.read())}
        up = {int(s.labels["port"]): s.value for s in fams["sshkeep_tunnel_up"].samples}
        assert up == {PORTS[0]: 1.0, PORTS[1]: 1.0, PORTS[2]: 0.0}
        assert len(fams["sshkeep_tunnel_since_seconds"].samples) == 3
        assert fams["sshkeep_hub_sessions"].samples[0].value == 3.0
        assert os.stat(prom).st_uid == lab.uid
    finally:
        for a in agents:
            a.stop()


@pytest.mark.parametrize("kind,client", [("openssh", "openssh"), ("openssh", "dropbear"), ("dropbear", "openssh"),
                                         ("dropbear", "dropbear")])
def test_hub_picked_port_is_recorded_shown_by_status_and_the_hub(lab, kind, client, other_user_copy):
    """-R 127.0.0.1:0:...: the hub picks the port, the client says "Allocated port N"; the agent keeps N,
    checks the forward on N, `status` shows it, and the session records it for `sshkeep hub`."""
    server = lab.start_sshd() if kind == "openssh" else lab.start_dropbear()
    svc = lab.start_service(lab.box_ns, 0)
    a = Agent(lab, server, [("-R", "127.0.0.1:0:127.0.0.1:%d" % svc.port)], client=client, name="picked",
              extra=("--interval", "2", "--remote-check-every", "1")).start()
    try:
        a.wait_up(30)
        a.wait(lambda: a.tunnel().get("allocated"), 10, "the allocated port in the state")
        label, port = next(iter(a.tunnel()["allocated"].items()))
        assert label == "-R 127.0.0.1:0:127.0.0.1:%d" % svc.port and 1024 <= port < 65536
        assert "127.0.0.1" in lab.listening(lab.srv_ns, port)
        a.wait(lambda: a.tunnel()["checks"].get("R:%d" % port) == "ok", 15, "the remote check on the picked port")
        r = lab.box_run(["/usr/bin/python3", require_pyz(), "status", "--state", a.state])
        assert ("picked: hub port %d for %s" % (port, label)).encode() in r.stdout, r.stdout
        lab.wait_until(lambda: record_pid(lab, port), 10, what="the session's record of the picked port")
        rc, doc, err = hub_json(lab, other_user_copy)
        assert rc == 0, (doc, err)
        assert [s["forwards"][0]["port"] for s in doc["sessions"]] == [port]
        assert doc["sessions"][0]["forwards"][0]["verdict"] == "ok-data"
    finally:
        assert a.stop() == 0
    lab.wait_until(lambda: not records(lab), 10, what="the session removed its records at its end")
