"""`make bench`: heal time per fault, footprint and a fleet storm, sshkeep against autossh.

usage: python tests/bench/run.py [--reps N] [--quick] [--cap S] [--faults 1,2,..] [--no-fleet]
                                 [--no-footprint] [--no-doc] [--out DIR] [--only cuts] [--no-cuts]
                                 [--cuts-for S] [--cut-every S] PYZ

Session cuts (issue 18): after the faults, the hub cuts every connection --cut-every s after accepting
it, for --cuts-for s; availability of each forward over that window (`--only cuts`: just this).

One network-namespace lab (tests/support/lab.py): a box and a server, a real OpenSSH sshd, a banner service
on the box behind each contender's reverse forward. The contenders run side by side, each with its
own service and remote port, and every fault hits all of them at the same moment (the same link,
the same sshd), so they are compared under identical conditions:
  sshkeep + OpenSSH ssh, sshkeep + dbclient (keepalive 5 s x 3, --interval 5),
  autossh -M 0 with ServerAliveInterval 5 x 3 + ExitOnForwardFailure (AUTOSSH_GATETIME=0),
  autossh -M PORT (monitor loop) with AUTOSSH_POLL=5, the same ssh options.
Time to heal = from the fault (or from the heal of a network fault) until the reverse forward answers
end to end *from the server side* with the box service's banner; a prober inside the server namespace
starts a probe on every forward every 0.2 s (each waits at most 1 s for the banner).

Outputs: tests/bench/results/<UTC date>.json (raw), tests/bench/results/fault<N>.svg (timelines),
and, unless --no-doc/--quick, the docs/benchmarks.md section between `<!-- bench:start -->` and
`<!-- bench:end -->` (render_section / rewrite_marked). Agent and autossh logs are copied to
/tmp/sshkeep-bench-<stamp>/ for reading why something healed slowly.
"""

import argparse
import datetime
import errno
import json
import os
import platform
import re
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
ROOT = os.path.dirname(TESTS)
sys.path.insert(0, os.path.join(TESTS, "support"))
sys.path.insert(0, HERE)

import lab as labmod  # noqa: E402
from agentrun import Agent, cpu_seconds  # noqa: E402
import report  # noqa: E402

BANNER = b"SVC-READY\r\n"
AUTOSSH = "/usr/lib/autossh/autossh"  # Debian's /usr/bin/autossh is a port-guessing wrapper around it
KEEPALIVE = 5
INTERVAL = 5
SSHKEEP_EXTRA = ("--keepalive", str(KEEPALIVE), "--interval", str(INTERVAL))

FAULTS = {
    1: "server-side session killed",
    2: "sshd restarted (sessions killed, down 2 s)",
    3: "30 s blackhole of the link, then healed",
    4: "old flow lost for good (stale listener on the server)",
    5: "reverse listener gone on the server, session alive (ss -K)",
    6: "box-side target down 20 s, then back",
    7: "flapping link: 5 x 2 s outages within a minute",
}


def log(msg):
    sys.stderr.write("[bench %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


# ----------------------------------------------------------------------------- probing

class Prober(threading.Thread):
    """Probes forwards from inside a namespace: every `period` a new connection to each watched port
    on 127.0.0.1 (independent of probes still in flight); ok when the first bytes are the banner.

    Results per port: (t_start, t_end, ok) with time.monotonic() stamps.
    """

    def __init__(self, ns, period=0.2, timeout=1.0, banner=BANNER):
        threading.Thread.__init__(self, name="prober-%s" % ns, daemon=True)
        self.ns, self.period, self.timeout, self.banner = ns, period, timeout, banner
        self.lock = threading.Lock()
        self.ports = {}
        self.halt = threading.Event()
        self.error = None

    def watch(self, port):
        with self.lock:
            self.ports.setdefault(port, [])

    def unwatch(self, port):
        with self.lock:
            self.ports.pop(port, None)

    def results(self, port, since=0.0):
        with self.lock:
            return [r for r in self.ports.get(port, []) if r[1] >= since]

    def last_ok(self, port, fresh=1.5):
        """True if the newest finished probe succeeded and finished within `fresh` seconds."""
        with self.lock:
            rs = self.ports.get(port) or []
            if not rs:
                return False
            last = max(rs, key=lambda r: r[1])
        return last[2] and time.monotonic() - last[1] < fresh

    def prune(self, before):
        with self.lock:
            for port in self.ports:
                self.ports[port] = [r for r in self.ports[port] if r[1] >= before]

    def _record(self, port, t0, ok):
        with self.lock:
            if port in self.ports:
                self.ports[port].append((t0, time.monotonic(), ok))

    def run(self):
        try:
            labmod._setns(self.ns)
            self._loop()
        except BaseException as e:  # reported by the main thread
            self.error = e

    def _loop(self):
        sel = selectors.DefaultSelector()
        inflight = {}
        next_t = time.monotonic()
        while not self.halt.is_set():
            now = time.monotonic()
            if now >= next_t:
                with self.lock:
                    ports = list(self.ports)
                for port in ports:
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    s.setblocking(False)
                    err = s.connect_ex(("127.0.0.1", port))
                    if err not in (0, errno.EINPROGRESS):
                        s.close()
                        self._record(port, now, False)
                        continue
                    sel.register(s, selectors.EVENT_READ)
                    inflight[s] = (port, now)
                next_t += self.period
                if next_t < now:
                    next_t = now + self.period
            wake = next_t
            if inflight:
                wake = min(wake, min(t0 for _, t0 in inflight.values()) + self.timeout)
            for key, _ in sel.select(max(0.0, wake - time.monotonic())):
                s = key.fileobj
                port, t0 = inflight.pop(s)
                try:
                    data = s.recv(256)
                except OSError:
                    data = None
                ok = bool(data) and data.startswith(self.banner[:len(data)])
                sel.unregister(s)
                s.close()
                self._record(port, t0, ok)
            now = time.monotonic()
            for s, (port, t0) in list(inflight.items()):
                if now - t0 >= self.timeout:
                    del inflight[s]
                    sel.unregister(s)
                    s.close()
                    self._record(port, t0, False)
        for s in inflight:
            s.close()
        sel.close()


def heal_time(results, t_fault, t_ref):
    """Seconds from t_ref to the end of the first good probe that started after the fault began and
    ended after t_ref; None if none did."""
    ends = [t1 for t0, t1, ok in results if ok and t0 >= t_fault and t1 >= t_ref]
    return (min(ends) - t_ref) if ends else None


def transitions(results, t_origin):
    """[[t, 0|1], ...] relative to t_origin: the probe outcome, in order of probe end, changes only."""
    out, last = [], None
    for t0, t1, ok in sorted(results, key=lambda r: r[1]):
        v = 1 if ok else 0
        if v != last:
            out.append([round(t1 - t_origin, 3), v])
            last = v
    return out


def downtime(results, t_from, t_to):
    """Seconds within [t_from, t_to] during which the latest finished probe had failed."""
    rs = sorted((r for r in results if r[1] <= t_to), key=lambda r: r[1])
    state, since, down = True, t_from, 0.0
    for _, t1, ok in rs:
        if t1 < t_from:
            state = ok
            continue
        if not state:
            down += t1 - since
        state, since = ok, t1
    if not state:
        down += t_to - since
    return down


# ----------------------------------------------------------------------------- /proc helpers

def read_status(pid, key):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def comm(pid):
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except OSError:
        return ""


def socket_inodes(pid):
    out = set()
    try:
        names = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return out
    for n in names:
        try:
            link = os.readlink("/proc/%d/fd/%s" % (pid, n))
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(int(link[8:-1]))
    return out


def proc_tcp_rows(pid):
    """Rows of the TCP table of pid's network namespace: (local_port, remote_port, state, inode)."""
    rows = []
    for name in ("tcp", "tcp6"):
        try:
            with open("/proc/%d/net/%s" % (pid, name)) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            rows.append((int(f[1].rsplit(":", 1)[1], 16), int(f[2].rsplit(":", 1)[1], 16), f[3], int(f[9])))
    return rows


def flow_port(pid, srv_port):
    """Box-side port of pid's established TCP connection to the server's srv_port, or None."""
    inodes = socket_inodes(pid)
    for lport, rport, st, ino in proc_tcp_rows(pid):
        if st == "01" and rport == srv_port and ino in inodes:
            return lport
    return None


def kill_listener_owner(server, port):
    """SIGKILL the server session process(es) holding a listener on port (a stale -R). Returns pids."""
    if server.proc is None or server.proc.poll() is not None:
        return []
    inodes = {ino for lport, _, st, ino in proc_tcp_rows(server.proc.pid) if st == "0A" and lport == port}
    if not inodes:
        return []
    pids = [p for p in server.session_pids() if socket_inodes(p) & inodes]
    labmod.kill_pids(pids, signal.SIGKILL)
    return pids


def hard_restart(server, down_for):
    """sshd and every session gone at once, back after down_for seconds.

    Not lab's Server.restart: that stops the listener, kills the sessions, then lets the listener run
    again until its TERM lands, and a client that reconnected meanwhile (queued in the backlog of the
    stopped listener) gets a session that survives the "restart". Here the listener is SIGSTOPped, the
    sessions killed, the listener SIGKILLed while still stopped (its backlog is reset), so nothing of
    the old sshd is left when the new one starts.
    """
    proc = server.proc
    os.kill(proc.pid, signal.SIGSTOP)
    server.kill_sessions(signal.SIGKILL)
    proc.kill()
    proc.wait(10)
    time.sleep(down_for)
    server.start()


# ----------------------------------------------------------------------------- contenders

class Contender:
    label = ""
    kind = ""

    def __init__(self, lab, server, rport, svc):
        self.lab, self.server, self.rport, self.svc = lab, server, rport, svc
        self.pid = None
        self.generation = 0
        self.saved_logs = []

    def ports(self):
        return [self.rport]

    def tunnel_ssh_pids(self):
        """The ssh/dbclient processes that carry the -R (not check or reclaim execs)."""
        if self.pid is None:
            return []
        out = []
        for p in labmod.descendants(self.pid):
            if comm(p) in ("ssh", "dbclient") and " -R " in " %s " % labmod.cmdline(p):
                out.append(p)
        return out

    def status_ok(self):
        return None

    def rss_kb(self):
        return read_status(self.pid, "VmRSS") if self.pid else None


class Keeper(Contender):
    kind = "sshkeep"

    def __init__(self, lab, server, rport, svc, client, pyz, extra=SSHKEEP_EXTRA, forwards=None, guard=True):
        Contender.__init__(self, lab, server, rport, svc)
        self.guard = guard
        self.client, self.pyz, self.extra = client, pyz, tuple(extra)
        self.label = "sshkeep + %s" % ("OpenSSH" if client == "openssh" else "dbclient")
        self.forwards = forwards
        self.agent = None

    def start(self):
        self.generation += 1
        fwd = self.forwards or [("-R", "127.0.0.1:%d:127.0.0.1:%d" % (self.rport, self.svc.port))]
        self.agent = Agent(self.lab, self.server, fwd, client=self.client, extra=self.extra, pyz=self.pyz,
                           name="%s%d-%d" % (self.client[:2], self.rport, self.generation))
        if not self.guard:  # as on a router: no python3-light import guard (its sitecustomize costs memory)
            self.agent.env.pop("PYTHONPATH", None)
        self.agent.start()
        self.pid = self.agent.proc.pid
        return self

    def stop(self):
        if self.agent is None:
            return
        try:
            self.agent.stop()
        except AssertionError as e:
            log("%s: %s" % (self.label, e))
        self.saved_logs.append(self.log_text())

    def alive(self):
        return self.agent is not None and self.agent.proc.poll() is None

    def log_text(self):
        return self.agent.log() if self.agent else ""

    def ssh_starts(self):
        return self.log_text().count("connecting to ")

    def status_ok(self):
        t = self.agent.tunnel() if self.agent else {}
        return t.get("state") == "up" and t.get("health") in ("ok", None)

    def tunnel_ssh_pids(self):
        pid = (self.agent.tunnel() if self.agent else {}).get("ssh_pid")
        if isinstance(pid, int) and labmod.alive(pid):
            return [pid]
        return Contender.tunnel_ssh_pids(self)


class AutoSSH(Contender):
    kind = "autossh"

    def __init__(self, lab, server, rport, svc, monitor=0, poll=INTERVAL, tag="a"):
        Contender.__init__(self, lab, server, rport, svc)
        self.monitor, self.poll, self.tag = monitor, poll, tag
        self.label = "autossh -M %d%s" % (monitor, " (POLL=%d)" % poll if monitor else "")
        self.proc = None
        self.logpath = None

    def ports(self):
        return [self.rport] + ([self.monitor] if self.monitor else [])

    def argv(self):
        ssh = self.lab.ssh_argv(self.server, "-N", "-o", "ServerAliveInterval=%d" % KEEPALIVE,
                                "-o", "ServerAliveCountMax=3", "-o", "ExitOnForwardFailure=yes",
                                "-R", "127.0.0.1:%d:127.0.0.1:%d" % (self.rport, self.svc.port))
        return [AUTOSSH, "-M", str(self.monitor)] + ssh[1:]

    def start(self):
        self.generation += 1
        d = os.path.join(self.lab.dir, "autossh-%s-%d-%d" % (self.tag, self.rport, self.generation))
        os.makedirs(d, exist_ok=True)
        self.logpath = os.path.join(d, "autossh.log")
        env = dict(os.environ, AUTOSSH_GATETIME="0", AUTOSSH_LOGFILE=self.logpath, AUTOSSH_PATH="/usr/bin/ssh",
                   AUTOSSH_LOGLEVEL="6", HOME=d)
        if self.monitor:
            env["AUTOSSH_POLL"] = str(self.poll)
        with open(os.path.join(d, "stderr"), "ab") as err:
            self.proc = self.lab.box_popen(self.argv(), stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                           env=env)
        self.pid = self.proc.pid
        return self

    def stop(self):
        if self.proc is not None:
            labmod.stop_process(self.proc, timeout=5)
            self.saved_logs.append(self.log_text())

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_text(self):
        try:
            with open(self.logpath, "rb") as f:
                return f.read().decode(errors="replace")
        except (OSError, TypeError):
            return ""

    def ssh_starts(self):
        return self.log_text().count("starting ssh (count")


# ----------------------------------------------------------------------------- the fault suite

class Suite:
    def __init__(self, args, lab, server, prober):
        self.args, self.lab, self.server, self.prober = args, lab, server, prober
        self.contenders = []
        self.logdir = args.logdir

    def add(self, c):
        self.contenders.append(c)
        self.prober.watch(c.rport)  # never the monitor port: a probe there would disturb autossh's echo
        c.start()
        return c

    def wait_all_up(self, timeout=60.0):
        """Until every contender's forward answers (and sshkeep says up); resets laggards once."""
        deadline = time.monotonic() + timeout
        reset_done = set()
        while time.monotonic() < deadline:
            lag = [c for c in self.contenders if not (self.prober.last_ok(c.rport) and
                                                      (c.status_ok() in (True, None)))]
            if not lag:
                return True
            for c in lag:
                if not c.alive() and c not in reset_done:
                    log("%s exited: restarting it" % c.label)
                    self.reset(c)
                    reset_done.add(c)
            if time.monotonic() > deadline - timeout / 2:
                for c in lag:
                    if c not in reset_done:
                        log("%s still down: restarting it" % c.label)
                        self.reset(c)
                        reset_done.add(c)
            time.sleep(0.2)
        return False

    def reset(self, c):
        c.stop()
        for p in c.ports():
            kill_listener_owner(self.server, p)
        c.start()

    def run_fault(self, n, rep):
        lab, server, cs = self.lab, self.server, self.contenders
        cap = self.args.cap
        if self.args.fresh:
            # every contender starts each fault fresh: autossh's restart backoff otherwise keeps growing
            # from fault to fault (with AUTOSSH_GATETIME=0 it never resets), which would flatter sshkeep
            for c in cs:
                c.stop()
                for p in c.ports():
                    kill_listener_owner(server, p)
            for c in cs:
                c.start()
        if not self.wait_all_up(90):
            log("fault %d rep %d: not all contenders up before the fault; measuring anyway" % (n, rep))
        time.sleep(self.args.settle)
        starts0 = {c.label: c.ssh_starts() for c in cs}
        bands = []
        extra = {}
        t_fault = time.monotonic()
        if n == 1:
            killed = server.kill_sessions()
            extra["killed"] = len(killed)
            t_ref = t_fault
        elif n == 2:
            hard_restart(server, 2.0)
            t_ref = time.monotonic()
            bands.append([0.0, t_ref - t_fault])
        elif n == 3:
            lab.blackhole(True)
            time.sleep(self.args.blackhole)
            lab.blackhole(False)
            t_ref = time.monotonic()
            bands.append([0.0, t_ref - t_fault])
        elif n == 4:
            flows = {}
            for c in cs:
                pids = c.tunnel_ssh_pids()
                fp = flow_port(pids[0], server.port) if pids else None
                flows[c.label] = fp
            t_fault = time.monotonic()
            for c in cs:
                if flows[c.label]:
                    lab.drop_flow(flows[c.label], server.port)
                else:
                    log("fault 4: no tunnel flow found for %s" % c.label)
            t_ref = time.monotonic()
            extra["flows"] = flows
        elif n == 5:
            for c in cs:
                r = lab.kill_listener(c.rport)
                if r.returncode != 0:
                    log("ss -K failed: %s" % r.stderr.decode(errors="replace"))
            t_ref = time.monotonic()
        elif n == 6:
            for c in cs:
                c.svc.stop()
            restarts_watch = {c.label: set(c.tunnel_ssh_pids()) for c in cs}
            end = time.monotonic() + self.args.target_down
            while time.monotonic() < end:
                for c in cs:
                    restarts_watch[c.label].update(c.tunnel_ssh_pids())
                time.sleep(0.2)
            mid = {c.label: c.ssh_starts() for c in cs}
            for c in cs:
                c.svc.start()
            t_ref = time.monotonic()
            bands.append([0.0, t_ref - t_fault])
            extra["ssh_restarts_while_down"] = {c.label: mid[c.label] - starts0[c.label] for c in cs}
            extra["ssh_pids_seen_while_down"] = {k: len(v) for k, v in restarts_watch.items()}
        elif n == 7:
            for i in range(5):
                t0 = time.monotonic()
                lab.blackhole(True)
                time.sleep(2.0)
                lab.blackhole(False)
                bands.append([t0 - t_fault, time.monotonic() - t_fault])
                if i < 4:
                    time.sleep(10.0)
            t_ref = time.monotonic()
        else:
            raise ValueError(n)
        # wait for every contender to heal, bounded
        heal = {c.label: None for c in cs}
        status_ok = {c.label: None for c in cs if c.kind == "sshkeep"}
        deadline = t_ref + cap
        while time.monotonic() < deadline:
            for c in cs:
                if heal[c.label] is None:
                    heal[c.label] = heal_time(self.prober.results(c.rport, t_fault), t_fault, t_ref)
                if c.label in status_ok and status_ok[c.label] is None and c.status_ok():
                    status_ok[c.label] = time.monotonic() - t_ref
            if all(v is not None for v in heal.values()) and all(v is not None for v in status_ok.values()):
                break
            if all(v is not None for v in heal.values()) and time.monotonic() > t_ref + 3 * INTERVAL:
                break
            time.sleep(0.1)
        time.sleep(1.0)  # a little trace after the heal
        t_end = time.monotonic()
        out = {"fault": n, "rep": rep, "hub": server.version, "t_ref": round(t_ref - t_fault, 3), "bands": bands, "cap": cap,
               "window": round(t_end - t_fault, 3), "extra": extra, "contenders": {}}
        for c in cs:
            rs = self.prober.results(c.rport, t_fault - 3.0)
            h = heal[c.label]
            out["contenders"][c.label] = {
                "heal_s": None if h is None else round(h, 3),
                "ssh_starts": c.ssh_starts() - starts0[c.label],
                "status_ok_s": None if status_ok.get(c.label) is None else round(status_ok[c.label], 3),
                "downtime_s": round(downtime(rs, t_fault, t_end), 3),
                "trace": transitions(rs, t_fault),
            }
        lab.clear_faults()
        for c in cs:
            if c.svc.proc is None or c.svc.proc.poll() is not None:
                c.svc.start()
        for c in cs:
            if heal[c.label] is None:
                log("fault %d rep %d: %s did not heal within %.0f s: resetting it" % (n, rep, c.label, cap))
                self.reset(c)
        self.prober.prune(time.monotonic() - 5.0)
        return out


# ----------------------------------------------------------------------------- session cuts

def _age(pid):
    """Seconds since pid started (from /proc: clock ticks since boot)."""
    with open("/proc/%d/stat" % pid) as fh:
        start = int(fh.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as fh:
        return float(fh.read().split()[0]) - start / os.sysconf("SC_CLK_TCK")


def cut_old_connections(server, age):
    """The hub's cutter: SIGKILL every connection (the listener's child and all below it) older than
    `age` s. Returns how many were cut. A check's short ssh exec is seldom that old."""
    if server.proc is None or server.proc.poll() is not None:
        return 0
    conns = [p for p, pp in labmod._ppids().items() if pp == server.proc.pid]
    cut = []
    for p in conns:
        try:
            if _age(p) >= age:
                cut.append(p)
        except (OSError, ValueError, IndexError):
            pass
    pids = []
    for p in cut:
        pids += [p] + labmod.descendants(p)
    if pids:
        labmod.kill_pids(pids, signal.SIGKILL, timeout=0)
    return len(cut)


def cuts(args, suite):
    """Issue 18: the hub ends every connection `cut_every` s after it was accepted, for `cuts_for` s.
    Availability = the share of that window in which the forward answered end to end."""
    server, prober, cs = suite.server, suite.prober, suite.contenders
    for c in cs:
        c.stop()
        for p in c.ports():
            kill_listener_owner(server, p)
    for c in cs:
        c.start()
    if not suite.wait_all_up(90):
        log("cuts: not all contenders up before the cuts; measuring anyway")
    logs0 = {c.label: len(c.log_text()) for c in cs}
    starts0 = {c.label: c.ssh_starts() for c in cs}
    t0 = time.monotonic()
    end, n = t0 + args.cuts_for, 0
    while time.monotonic() < end:
        n += cut_old_connections(server, args.cut_every)
        time.sleep(0.05)
    t_end = time.monotonic()
    out = {"cut_every_s": args.cut_every, "window_s": round(t_end - t0, 1), "connections_cut": n,
           "contenders": {}}
    for c in cs:
        rs = prober.results(c.rport, t0 - 3.0)
        down = downtime(rs, t0, t_end)
        row = {"availability": round(1 - down / (t_end - t0), 4), "downtime_s": round(down, 1),
               "ssh_starts": c.ssh_starts() - starts0[c.label]}
        if c.kind == "sshkeep":
            delays = [float(d) for d in re.findall(r"retrying in ([0-9.]+)s", c.log_text()[logs0[c.label]:])]
            row["retry_delays_s"] = {"count": len(delays), "max": max(delays) if delays else None,
                                     "median": statistics.median(delays) if delays else None}
        out["contenders"][c.label] = row
    prober.prune(time.monotonic() - 5.0)
    return out


def render_cuts(doc):
    """The docs/benchmarks-cuts.md table for one cuts run."""
    r = doc["cuts"]
    lines = ["| contender | availability | downtime | ssh starts | sshkeep retry delay (median / max) |",
             "|---|---|---|---|---|"]
    for label, v in sorted(r["contenders"].items(), key=lambda kv: -kv[1]["availability"]):
        d = v.get("retry_delays_s")
        delay = "%.1f s / %.1f s" % (d["median"], d["max"]) if d and d["count"] else "-"
        lines.append("| %s | %.1f %% | %.1f s | %d | %s |" % (label, 100 * v["availability"], v["downtime_s"],
                                                           v["ssh_starts"], delay))
    head = ("%s, %s: every connection cut %g s after it was accepted, for %.0f s (%d cuts)"
            % (doc["date"], doc["machine"].get("cpu", "") if isinstance(doc.get("machine"), dict) else "",
               r["cut_every_s"], r["window_s"], r["connections_cut"]))
    return head + "\n\n" + "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- footprint

def footprint(args, pyz):
    """RSS with 1/10/100 forwards, autossh RSS, idle CPU over the fault suite (returned as a closure)."""
    out = {"pyz_bytes": os.path.getsize(pyz)}
    flab = labmod.Lab(tag="bench-foot")
    server = flab.start_sshd()
    svc = flab.start_service(flab.box_ns, 0)
    rss = {}
    for n in (1, 10, 100):
        fwd = [("-R", "127.0.0.1:21000:127.0.0.1:%d" % svc.port)]
        fwd += [("-L", "127.0.0.1:%d:127.0.0.1:22" % (31000 + i)) for i in range(n - 1)]
        k = Keeper(flab, server, 21000, svc, "openssh", pyz, forwards=fwd, guard=False)
        k.start()
        try:
            k.agent.wait_up(60)
            # one full round of checks, then sample
            k.agent.wait(lambda: len(k.agent.tunnel().get("checks") or {}) >= 1, 30, "first checks")
            time.sleep(INTERVAL * 1.5 if not args.quick else 1.0)
            samples = []
            for _ in range(5):
                samples.append(read_status(k.pid, "VmRSS"))
                time.sleep(0.3)
            ssh = k.tunnel_ssh_pids()
            rss[str(n)] = {"agent_rss_kb": statistics.median(samples), "agent_hwm_kb": read_status(k.pid, "VmHWM"),
                           "ssh_rss_kb": read_status(ssh[0], "VmRSS") if ssh else None}
            log("RSS with %d forward(s): %s" % (n, rss[str(n)]))
        except AssertionError as e:
            log("RSS with %d forwards: %s" % (n, str(e)[:500]))
            rss[str(n)] = {"error": str(e)[:300]}
        finally:
            k.stop()
            kill_listener_owner(server, 21000)
    out["rss"] = rss
    # idle CPU at default settings, measured while the fault suite runs elsewhere
    keep = Keeper(flab, server, 21001, svc, "openssh", pyz, extra=(), guard=False).start()
    auto = AutoSSH(flab, server, 21002, svc, tag="cpu").start()
    keep.agent.wait_up(60)
    t0 = time.monotonic()
    time.sleep(3.0)
    base = {}
    for c in (keep, auto):
        base[c.label] = _cpu(c)

    def finish():
        dt = time.monotonic() - t0 - 3.0
        cpu = {}
        for c in (keep, auto):
            now = _cpu(c)
            b = base[c.label]
            cpu[c.label] = {k: round((now[k] - b[k]) * 3600.0 / dt, 3) if now[k] is not None and b[k] is not None
                            else None for k in now}
            cpu[c.label]["rss_kb"] = c.rss_kb()
            cpu[c.label]["ssh_starts"] = c.ssh_starts()
        cpu["window_s"] = round(dt, 1)
        cpu["settings"] = "sshkeep defaults (keepalive 15, interval 30: a remote exec check every interval); " \
                          "autossh -M 0, ServerAliveInterval 5 x 3"
        for c in (keep, auto):
            c.stop()
        _save_logs(args.logdir, "footprint", [keep, auto])
        flab.close()
        out["cpu_per_hour"] = cpu
        return out
    return out, finish


def _cpu(c):
    """CPU seconds: the keeper process itself, its reaped children, its live tunnel ssh."""
    try:
        with open("/proc/%d/stat" % c.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tck = os.sysconf("SC_CLK_TCK")
        children = (int(fields[13]) + int(fields[14])) / tck
    except (OSError, IndexError):
        children = None
    ssh = c.tunnel_ssh_pids()
    try:
        self_s = cpu_seconds(c.pid)
    except OSError:
        self_s = None
    try:
        ssh_s = cpu_seconds(ssh[0]) if ssh else None
    except OSError:
        ssh_s = None
    return {"self_s": self_s, "reaped_children_s": children, "tunnel_ssh_s": ssh_s}


def cold_start(args, pyz):
    """build/measure.py's table (sshkeep.pyz vs plain zipapp vs shiv bootstrap), parsed."""
    vpy = os.path.join(ROOT, "build", "venv", "bin", "python")
    cmd = [vpy, os.path.join(ROOT, "build", "measure.py"), "--runs", "5" if args.quick else "11", vpy, pyz]
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
    except subprocess.TimeoutExpired:
        return {"error": "build/measure.py timed out"}
    text = r.stdout.decode(errors="replace")
    if r.returncode != 0:
        return {"error": r.stderr.decode(errors="replace")[-500:], "table": text}
    rows = []
    for line in text.splitlines():
        cells = [x.strip() for x in line.strip().strip("|").split("|")]
        if len(cells) >= 6 and cells[0][:1].isdigit():
            rows.append({"python": cells[0], "variant": cells[1], "size": cells[2], "ms": cells[3],
                         "max_rss_kb": cells[4], "idle_rss_kb": cells[5]})
    return {"table": text, "rows": rows}


# ----------------------------------------------------------------------------- fleet storm

def fleet(args, lab, prober, pyz, kind, n):
    """n keepers (or autossh) against one fresh sshd with default MaxStartups; kill + restart 2 s later."""
    server = lab.start_sshd(port=2200 + (0 if kind == "sshkeep" else 1))
    svc = lab.start_service(lab.box_ns, 0)
    base = {"sshkeep": 22000, "autossh": 23000}.get(kind, 24000)
    cs = []
    spread = args.fleet_spread if kind == "sshkeep-spread" else 0
    out = {"kind": "sshkeep --spread %g" % spread if spread else kind, "n": n}
    try:
        for i in range(n):
            if kind.startswith("sshkeep"):
                extra = ("--keepalive", str(KEEPALIVE))
                if spread:
                    extra += ("--spread", str(spread))
                c = Keeper(lab, server, base + i, svc, "openssh", pyz, extra=extra)
            else:
                c = AutoSSH(lab, server, base + i, svc, tag="fleet")
            prober.watch(c.rport)
            c.start()
            cs.append(c)
            time.sleep(0.25)  # a gentle start: stay under MaxStartups' first threshold
        ports = [c.rport for c in cs]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(prober.last_ok(p) for p in ports):
            time.sleep(0.5)
        up = sum(1 for p in ports if prober.last_ok(p))
        out["up_before"] = up
        log("fleet %s: %d/%d up before the storm" % (kind, up, n))
        time.sleep(args.settle)
        starts0 = sum(c.ssh_starts() for c in cs)
        log_off = len(server.log_text())
        t_fault = time.monotonic()
        hard_restart(server, 2.0)
        t_ref = time.monotonic()
        heals = {}
        deadline = t_ref + args.fleet_cap
        while time.monotonic() < deadline:
            for p in ports:
                if p not in heals:
                    h = heal_time(prober.results(p, t_fault), t_fault, t_ref)
                    if h is not None:
                        heals[p] = h
            if len(heals) == n:
                break
            time.sleep(0.2)
        time.sleep(1.0)
        text = server.log_text()[log_off:]
        out.update({
            "back": len(heals),
            "all_back_s": round(max(heals.values()), 3) if len(heals) == n else None,
            "all_back_from_kill_s": round(max(heals.values()) + t_ref - t_fault, 3) if len(heals) == n else None,
            "median_back_s": round(statistics.median(heals.values()), 3) if heals else None,
            "down_for_s": round(t_ref - t_fault, 3),
            "dropped_past_maxstartups": len(re.findall(r"drop connection #\d+ .*past MaxStartups", text)),
            "ssh_starts": sum(c.ssh_starts() for c in cs) - starts0,
            "heal_curve": sorted(round(v, 3) for v in heals.values()),
            "cap": args.fleet_cap,
        })
        log("fleet %s: %s" % (kind, {k: v for k, v in out.items() if k != "heal_curve"}))
    finally:
        labmod.stop_processes([c.agent.proc if kind.startswith("sshkeep") else c.proc for c in cs if c.pid])
        _save_logs(args.logdir, "fleet-%s" % kind, cs[:5])
        for c in cs:
            prober.unwatch(c.rport)
        server.stop(sessions=True)
        svc.stop()
    return out


# ----------------------------------------------------------------------------- machine, logs, main

def run_suite(args, doc, lab, server, prober, pyz, faults, path):
    """The four contenders side by side against server, each fault args.reps times; stops them and
    returns (their labels, their RSS in KB while they ran). Every run is tagged with the hub's version."""
    suite = Suite(args, lab, server, prober)
    svcs = [lab.start_service(lab.box_ns, 0) for _ in range(4)]
    suite.add(Keeper(lab, server, 20022, svcs[0], "openssh", pyz))
    suite.add(Keeper(lab, server, 20023, svcs[1], "dropbear", pyz))
    suite.add(AutoSSH(lab, server, 20024, svcs[2], monitor=0, tag="m0"))
    suite.add(AutoSSH(lab, server, 20025, svcs[3], monitor=20100, poll=INTERVAL, tag="mon"))
    if faults and not suite.wait_all_up(90):
        log("not every contender came up: %s" % [c.label for c in suite.contenders
                                                 if not prober.last_ok(c.rport)])
    for rep in range(1, args.reps + 1):
        for n in faults:
            log("fault %d (%s), rep %d/%d, hub %s" % (n, FAULTS[n], rep, args.reps, server.version))
            r = suite.run_fault(n, rep)
            doc["runs"].append(r)
            log("  " + ", ".join("%s: %s (%d ssh starts)" % (k, v["heal_s"], v["ssh_starts"])
                                 for k, v in r["contenders"].items()))
            save(path, doc)
            if prober.error:
                raise prober.error
    if not args.no_cuts and "cuts" not in doc:  # the session-cut scenario runs once, on the first hub
        log("session cuts: every connection cut %g s after accept, for %.0f s" % (args.cut_every, args.cuts_for))
        doc["cuts"] = cuts(args, suite)
        log("  " + ", ".join("%s: %.1f %%" % (k, 100 * v["availability"])
                             for k, v in doc["cuts"]["contenders"].items()))
        save(path, doc)
    rss = {c.label: c.rss_kb() for c in suite.contenders}
    for c in suite.contenders:
        c.stop()
    _save_logs(args.logdir, "faults-%s" % server.generation, suite.contenders)
    return [c.label for c in suite.contenders], rss


def machine():
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    def ver(argv):
        try:
            r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=5)
            return r.stdout.decode(errors="replace").strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired, IndexError):
            return ""
    return {"arch": platform.machine(), "cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "python": ver(["/usr/bin/python3", "-V"]), "openssh": ver(["ssh", "-V"]),
            "dropbear": ver(["dbclient", "-V"]), "autossh": ver([AUTOSSH, "-V"])}


def _save_logs(logdir, tag, cs):
    os.makedirs(logdir, exist_ok=True)
    for c in cs:
        name = "%s-%s-%d.log" % (tag, re.sub(r"[^A-Za-z0-9]+", "_", c.label).strip("_"), c.rport)
        with open(os.path.join(logdir, name), "w") as f:
            for i, t in enumerate(c.saved_logs):
                f.write("==== generation %d\n%s\n" % (i + 1, t))
            f.write("==== current\n%s\n" % c.log_text())


def save(path, doc):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pyz")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1 rep, short waits, 5-agent fleet, no doc rewrite")
    ap.add_argument("--cap", type=float, default=60.0, help="seconds to wait for a heal (default 60)")
    ap.add_argument("--faults", default="1,2,3,4,5,6,7")
    ap.add_argument("--hub-faults", default="1,4,5",
                    help="faults run again against the Debian 13 hub (OpenSSH 10); empty: skip")
    ap.add_argument("--blackhole", type=float, default=30.0)
    ap.add_argument("--target-down", type=float, default=20.0)
    ap.add_argument("--settle", type=float, default=3.0)
    ap.add_argument("--fleet", type=int, default=50)
    ap.add_argument("--fleet-cap", type=float, default=90.0)
    ap.add_argument("--fleet-spread", type=float, default=4.0,
                    help="a second sshkeep fleet run with --spread S (per-box offset); 0: skip it")
    ap.add_argument("--cpu-min", type=float, default=150.0, help="least seconds of idle-CPU measurement")
    ap.add_argument("--no-fresh", dest="fresh", action="store_false",
                    help="keep the contenders running from fault to fault (autossh's backoff then grows)")
    ap.add_argument("--no-fleet", action="store_true")
    ap.add_argument("--no-footprint", action="store_true")
    ap.add_argument("--no-doc", action="store_true", help="leave docs/benchmarks.md alone")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--doc", default=os.path.join(ROOT, "docs", "benchmarks.md"),
                    help="the document whose bench:start/bench:end section is rewritten")
    ap.add_argument("--only", choices=("cuts",), help="cuts: only the session-cut scenario (no faults, fleet, "
                                                      "footprint or doc)")
    ap.add_argument("--no-cuts", action="store_true", help="skip the session-cut scenario")
    ap.add_argument("--cuts-for", type=float, default=300.0, help="length of the session-cut scenario (s)")
    ap.add_argument("--cut-every", type=float, default=5.0, help="the hub cuts a connection this long after "
                                                                "accepting it (s)")
    args = ap.parse_args(argv)
    if args.only == "cuts":
        args.faults, args.no_fleet, args.no_footprint, args.no_doc = "", True, True, True
    if args.quick:
        args.reps, args.no_doc = 1, True
        args.fleet = min(args.fleet, 5)
        args.cpu_min = min(args.cpu_min, 20.0)
    problems = labmod.missing_requirements()
    if problems or not os.path.exists(AUTOSSH):
        raise SystemExit("bench cannot run: %s" % "; ".join(problems or ["%s missing" % AUTOSSH]))
    pyz = os.path.abspath(args.pyz)
    started = datetime.datetime.now(datetime.timezone.utc)
    stamp = started.strftime("%Y-%m-%dT%H%M%SZ")
    args.logdir = "/tmp/sshkeep-bench-%s" % stamp
    if args.quick:
        args.out = args.logdir
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "%s%s%s.json" % (started.strftime("%Y-%m-%d"), "-quick" if args.quick else "",
                                                  "-cuts" if args.only == "cuts" else ""))
    faults = [int(x) for x in args.faults.split(",") if x.strip()]
    doc = {"date": started.strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(), "pyz_bytes": os.path.getsize(pyz),
           "settings": {"keepalive": KEEPALIVE, "interval": INTERVAL, "reps": args.reps, "cap_s": args.cap,
                        "probe_period_s": 0.2, "probe_timeout_s": 1.0, "blackhole_s": args.blackhole,
                        "target_down_s": args.target_down, "fresh_per_fault": args.fresh, "sshd": "OpenSSH, no ClientAliveInterval",
                        "sshkeep": "--keepalive %d --interval %d (remote exec check every interval, learned greeting, fail threshold 2)"
                                   % (KEEPALIVE, INTERVAL),
                        "autossh": "AUTOSSH_GATETIME=0, ServerAliveInterval=%d, ServerAliveCountMax=3, "
                                   "ExitOnForwardFailure=yes" % KEEPALIVE},
           "faults": FAULTS, "runs": [], "logs": args.logdir}
    log("results: %s, logs: %s" % (path, args.logdir))
    t_begin = time.monotonic()
    if not args.no_footprint:
        log("cold start (build/measure.py)")
        doc["cold_start"] = cold_start(args, pyz)
        save(path, doc)
        log("footprint: RSS with 1/10/100 forwards")
        doc["footprint"], finish_cpu = footprint(args, pyz)
        save(path, doc)
    else:
        finish_cpu = None
    lab = labmod.Lab(tag="bench")
    try:
        server = lab.start_sshd()
        doc["hub"] = server.version
        prober = Prober(lab.srv_ns)
        prober.start()
        doc["contenders"], doc["contender_rss_kb"] = run_suite(args, doc, lab, server, prober, pyz, faults, path)
        if finish_cpu is not None:
            left = args.cpu_min - (time.monotonic() - t_begin)
            if left > 0:
                log("idle CPU: %.0f s more" % left)
                time.sleep(left)
            doc["footprint"] = finish_cpu()
            finish_cpu = None
            save(path, doc)
        hub_faults = [int(x) for x in args.hub_faults.split(",") if x.strip()]
        if hub_faults:
            # the same contenders against today's hub: OpenSSH 10 (sshd-session, PerSourcePenalties)
            with labmod.Lab(tag="bench-deb13", generation="deb13") as lab13:
                server13 = lab13.start_sshd()
                prober13 = Prober(lab13.srv_ns)
                prober13.start()
                try:
                    run_suite(args, doc, lab13, server13, prober13, pyz, hub_faults, path)
                finally:
                    prober13.halt.set()
                with open(os.path.join(args.logdir, "hub-%s.log" % server13.version), "w") as f:
                    f.write(server13.log_text())
                doc.setdefault("hubs", {})[server13.version] = {
                    "generation": "deb13", "faults": hub_faults, "penalty_lines": server13.penalty_lines()}
                log("%s: %d penalty/drop lines in its log" % (server13.version, len(server13.penalty_lines())))
                save(path, doc)
        if not args.no_fleet:
            doc["fleet"] = []
            # sshkeep twice: with defaults (no spread: one box heals fastest) and with the
            # per-box spread a fleet should set (docs/configuration.md: Fleet spreading)
            for kind in ("sshkeep", "sshkeep-spread", "autossh"):
                if kind == "sshkeep-spread" and not args.fleet_spread:
                    continue
                log("fleet storm: %d x %s" % (args.fleet, kind))
                doc["fleet"].append(fleet(args, lab, prober, pyz, kind, args.fleet))
                save(path, doc)
        prober.halt.set()
    finally:
        if finish_cpu is not None:
            try:
                doc["footprint"] = finish_cpu()
            except Exception as e:  # keep the rest of the results
                log("footprint finish failed: %r" % (e,))
        lab.close()
    doc["duration_s"] = round(time.monotonic() - t_begin, 1)
    save(path, doc)
    if doc.get("cuts"):
        print(render_cuts(doc))
    if args.only == "cuts":
        return 0
    svgs = report.write_svgs(doc, args.out, quick=args.quick)
    log("wrote %s and %d SVG(s); logs in %s" % (path, len(svgs), args.logdir))
    section = report.render_section(doc, os.path.relpath(args.out, ROOT),
                                    link_dir=os.path.relpath(args.out, os.path.dirname(os.path.abspath(args.doc))))
    print(section)
    if not args.no_doc:
        if report.rewrite_marked(args.doc, section):
            log("results section rewritten: %s" % args.doc)
        else:
            log("%s has no bench markers: section not written (printed above)" % args.doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
