"""What a -R check costs: in the tunnel's session (the responder) against a new ssh exec (issue 14).

usage: python tests/bench/checks.py [--checks N] [--execs N] [--hour-for S] [--out FILE] PYZ

One lab (tests/support/lab.py), a real OpenSSH sshd, both clients (ssh, dbclient):
- hub CPU per check: utime+stime of the sshd listener and every descendant, with the CPU of reaped
  descendants (cutime/cstime: sshd and its sessions wait for their children) — sampled before and after
  N checks sent over one open session, and N exec checks (check_command through a new login each);
  an exec's `sleep` orphan, reparented to init, is not counted (about 1 ms);
- sshd log lines per check (LogLevel VERBOSE, the lab's level: INFO writes fewer);
- box CPU per check of the exec client (RUSAGE_CHILDREN of this harness);
- box CPU per hour at default settings (--interval 30): the agent and its children over --hour-for s,
  scaled to an hour, --check-mode session against exec;
- the responder's resident memory on the hub (VmRSS; Pss and Private_Dirty from smaps_rollup).
Results: printed as JSON and written to --out (default tests/bench/results/checks-<date>.json).
"""

import argparse
import datetime
import json
import os
import resource
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(TESTS, "support"))
sys.path.insert(0, os.path.dirname(TESTS))

import lab as labmod  # noqa: E402
from agentrun import Agent  # noqa: E402
from agent.hubside import remote  # noqa: E402
from insession import FWD, Session, forward_ok, logins  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid, children=True):
    with open("/proc/%d/stat" % pid) as f:
        w = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in (w[11:15] if children else w[11:13])) / TICK


def hub_cpu(server):
    """CPU seconds of sshd and all its descendants so far (reaped ones through cutime/cstime)."""
    total = proc_cpu(server.pid)
    for pid in labmod.descendants(server.pid):
        try:
            total += proc_cpu(pid)
        except OSError:
            pass
    return total


def log_lines(server):
    return len(server.log_text().splitlines())


def memory(pid):
    out = {}
    for name, key in (("status", "VmRSS:"), ("smaps_rollup", "Pss:"), ("smaps_rollup", "Private_Dirty:")):
        try:
            with open("/proc/%d/%s" % (pid, name)) as f:
                for line in f:
                    if line.startswith(key):
                        out[key.rstrip(":").lower() + "_kb"] = int(line.split()[1])
                        break
        except OSError:
            pass
    return out


def settle(server, n, timeout=10.0):
    """Wait until only the tunnel's own session's n processes are left on the hub (exec sessions gone)."""
    labmod.wait_until(lambda: len(server.session_pids()) <= n, timeout, 0.1, "exec sessions gone")
    time.sleep(0.5)   # a bench, not a test: let the last exit be reaped and accounted


def per_check(lab, server, client, svc, n_checks, n_execs):
    s = Session(lab, server, client, svc.port)
    out = {}
    try:
        labmod.wait_until(lambda: forward_ok(lab), 10, 0.1, "forward up")
        s.check()
        n = len(server.session_pids())
        c0, l0, a0 = hub_cpu(server), log_lines(server), logins(server)
        for _ in range(n_checks):
            assert s.check() == remote.OK
        c1, l1 = hub_cpu(server), log_lines(server)
        out["session"] = {"checks": n_checks, "hub_cpu_ms": round(1000 * (c1 - c0) / n_checks, 3),
                          "log_lines": round((l1 - l0) / n_checks, 3), "logins": logins(server) - a0}
        pids = [p for sp in server.session_pids() for p in labmod.descendants(sp)
                if labmod.cmdline(p).startswith("python3 -E -S -c")]
        out["responder_memory"] = memory(pids[0]) if pids else {}
        cmd = remote.check_command("127.0.0.1", FWD, "SVC-", 3.0)
        if client == "ssh":
            argv, env = lab.ssh_argv(server, cmd=[cmd]), None
        else:
            argv, env = lab.dbclient_argv(server, cmd=[cmd]), dict(os.environ, HOME=lab.dropbear_home(server))
        c0, l0 = hub_cpu(server), log_lines(server)
        b0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        for _ in range(n_execs):
            r = lab.box_run(argv, timeout=20, env=env)
            assert remote.interpret_check(r.returncode, r.stdout.decode(), r.stderr.decode(), False) == remote.OK, r
        b1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        settle(server, n)
        c1, l1 = hub_cpu(server), log_lines(server)
        out["exec"] = {"checks": n_execs, "hub_cpu_ms": round(1000 * (c1 - c0) / n_execs, 2),
                       "log_lines": round((l1 - l0) / n_execs, 2),
                       "box_cpu_ms": round(1000 * ((b1.ru_utime + b1.ru_stime) - (b0.ru_utime + b0.ru_stime))
                                           / n_execs, 2)}
    finally:
        s.close()
    return out


def agent_hour(lab, server, client, mode, seconds, pyz):
    svc = lab.start_service(lab.box_ns, 0)
    fwd = [("-R", "127.0.0.1:%d:127.0.0.1:%d" % (FWD, svc.port))]
    a = Agent(lab, server, fwd, client=client, name="h" + mode, pyz=pyz,
              extra=("--check-mode", mode)).start()
    try:
        a.wait_up(30)
        a.wait(lambda: a.tunnel()["checks"].get("R:%d" % FWD) == "ok", 40, "first check")
        t0, c0 = time.monotonic(), agent_cpu(a.proc.pid)
        time.sleep(seconds)   # a bench: a fixed measuring window
        c1, t1 = agent_cpu(a.proc.pid), time.monotonic()
        return {"mode": a.tunnel()["check_mode"], "cpu_s_per_hour": round((c1 - c0) * 3600 / (t1 - t0), 2),
                "window_s": round(t1 - t0, 1)}
    finally:
        a.stop()
        svc.stop()


def agent_cpu(pid):
    total = proc_cpu(pid)
    for p in labmod.descendants(pid):
        try:
            total += proc_cpu(p)
        except OSError:
            pass
    return total


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--checks", type=int, default=300)
    ap.add_argument("--execs", type=int, default=30)
    ap.add_argument("--hour-for", type=float, default=120.0)
    ap.add_argument("--out")
    ap.add_argument("pyz")
    args = ap.parse_args(argv)
    results = {"date": datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC"), "clients": {}}
    with labmod.Lab("benchchecks") as lab:
        server = lab.start_sshd()
        svc = lab.start_service(lab.box_ns, 0)
        for client in ("ssh", "dbclient"):
            results["clients"][client] = per_check(lab, server, client, svc, args.checks, args.execs)
            print(json.dumps({client: results["clients"][client]}), flush=True)
        svc.stop()
        if args.hour_for > 0:
            for client in ("openssh", "dropbear"):
                for mode in ("session", "exec"):
                    key = "%s-%s" % (client, mode)
                    results.setdefault("box_hour", {})[key] = agent_hour(lab, server, client, mode,
                                                                         args.hour_for, args.pyz)
                    print(json.dumps({key: results["box_hour"][key]}), flush=True)
    out = args.out or os.path.join(HERE, "results", "checks-%s.json" % datetime.date.today().isoformat())
    with open(out, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    print(json.dumps(results, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
