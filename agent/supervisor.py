"""The driver: spawns ssh, reads its output, runs checks, carries out the machine's commands.

Single-threaded: one selector over every child's stdout/stderr and a signal
self-pipe, a bounded timeout to the next deadline. No decision is made here
that agent.machine or agent.classify could make.
"""

import os
import selectors
import signal
import socket
import sys
import time

from agent import __version__
from agent import classify as C
from agent import clients, probe, record, remote, spread, state
from agent import machine as M
from agent.child import Child, Job
from agent.errors import EX_NOINPUT, SshkeepError

TERM_TIMEOUT = 2.0          # TERM -> KILL for ssh children (procd gives us 5 s in all)
STUCK_CONNECT = 2.0         # a connect not ready after this long may be stuck in an outage
FIRST_CHECK_AFTER = 1.0     # s after up: the first health check
SERVER_PROBE_FAST = 0.25    # during a network backoff: cheap TCP connect to the server,
SERVER_PROBE_SLOW = 1.5     # every 0.25 s for the first SERVER_PROBE_FAST_FOR s, then every 1.5 s
SERVER_PROBE_FAST_FOR = 10.0


def owner_tag(tunnel_name):
    """Who owns a server-side session record: this box and tunnel (see agent.remote)."""
    host = socket.gethostname() or "box"
    clean = lambda text: "".join(c if c.isalnum() or c in "._-" else "_" for c in text)[:31] or "x"
    return "%s.%s" % (clean(host), clean(tunnel_name))


def session_command(tunnel):
    """Remote command run instead of -N: records the session for reclaim, prints the ready marker.

    Without -R forwards there is nothing to reclaim; the command still marks readiness.
    """
    ports = [f.port for f in tunnel.forwards if f.kind == "R"]
    if not ports:
        return "echo %s $PPID nostate; exec cat >/dev/null" % remote.READY_MARKER
    return remote.session_command(ports, owner=owner_tag(tunnel.name))


def recheck_delay(interval: float) -> float:
    """Seconds from a failed check to the one that confirms it."""
    return min(interval, max(1.0, interval / 5.0))


class Runner:
    """One tunnel: its settings, machine, client and current ssh child."""

    def __init__(self, tunnel, info, policy, backoff, runtime_dir, log, clock):
        self.t = tunnel
        self.info = info
        self.log = log
        self.clock = clock
        self.m = M.Machine(policy, backoff)
        self.child = None
        self.jobs = []
        self.home = None
        self.runtime_dir = runtime_dir
        self.addresses = [(tunnel.host, tunnel.port)] + list(tunnel.alternates)
        self.addr_index = 0
        self.connect_failures = 0
        self.next_check = None
        self.check_round = 0
        self.greetings = {}             # -R listen port -> learned target greeting (health)
        self.next_server_probe = None
        self.server_probe_failed = False
        self.ready_pid = None
        self.seen = None
        self.no_command = False         # the server ran no command of ours: use -N
        self.watchdogs = 0              # consecutive "no ready line in time"
        self.loop = None                # remote.LoopListener when t.loop_port
        self.loop_box_port = 0
        self.ssh_tunnel = tunnel        # what ssh is started with (tunnel + loop forwards)
        if tunnel.loop_port:
            self.loop = remote.LoopListener()
            r_fwd, l_fwd = remote.loop_forward_pair(self.loop.port, tunnel.loop_port)
            self.loop_box_port = l_fwd.port
            self.ssh_tunnel = record.replace(tunnel, forwards=tuple(tunnel.forwards) + (r_fwd, l_fwd))

    def close(self):
        if self.loop is not None:
            self.loop.close()
            self.loop = None

    @property
    def name(self):
        return self.t.name

    @property
    def address(self):
        return self.addresses[self.addr_index]

    def server_label(self):
        host, port = self.address
        return "%s:%d" % (host, port)


class Supervisor:
    def __init__(self, settings, log, clock=time.monotonic, wall=time.time, detect=clients.detect,
                 reload_settings=None, checks=None):
        self.settings = settings
        self.log = log
        self.clock = clock
        self.wall = wall
        self.detect = detect
        self.reload_settings = reload_settings
        self.checks = checks            # agent.health.Checks or None
        self.rng = M.Jitter()
        self.runners = []
        self.sel = None
        self.fd_owner = {}
        self.signals = []
        self.stopping = False
        self.exit_code = 0
        self.started_wall = wall()
        self._state_dirty = True
        self._last_state_write = 0.0
        self.runtime_dir = settings.state + ".d"

    # -- setup ------------------------------------------------------------
    def _policy(self, t):
        return M.Policy(connect_timeout=float(t.connect_timeout),
                        use_marker=t.reclaim,
                        stable_after=max(30.0, float(t.interval)),
                        fail_threshold=t.fail_threshold,
                        max_backoff=float(t.max_backoff),
                        reclaim=t.reclaim,
                        proof_by_check=self.checks is not None and bool(
                            t.loop_port or any(f.check != "none" for f in t.forwards)))

    def _make_runner(self, t):
        info = self.detect(t.ssh_path, t.client)
        clients.check_forwards(info, t)
        if t.identity:
            clients.check_identity(info, t.identity)
        if t.known_hosts and not t.accept_new and not os.path.exists(t.known_hosts):
            # Strict checking against a file that is not there can never connect: say so now.
            raise SshkeepError("%s: known_hosts file %s does not exist; create it (ssh-keyscan) or use "
                               "--accept-new" % (t.name, t.known_hosts), EX_NOINPUT)
        policy = self._policy(t)
        backoff = M.Backoff(cap=t.max_backoff, offset=self._offset(t))
        r = Runner(t, info, policy, backoff, self.runtime_dir, self.log, self.clock)
        self.log.info(t.name, "using %s %s (%s) for %s" % (info.kind, info.version, info.path, r.server_label()))
        if info.kind == clients.DROPBEAR and t.extra_options:
            # dbclient's -o knows almost nothing: say which settings it runs without.
            self.log.warning(t.name, "dbclient runs without the OpenSSH options %s (use client 'openssh' for "
                             "them)" % ", ".join(sorted({k for k, _ in t.extra_options})))
        return r

    def _offset(self, t):
        """Per-box constant delay (fleet spreading): same box, same offset, every time."""
        return spread.tunnel_offset(t)

    def _signal_setup(self):
        rfd, wfd = os.pipe()
        os.set_blocking(rfd, False)
        os.set_blocking(wfd, False)
        os.set_inheritable(rfd, False)
        os.set_inheritable(wfd, False)
        self._sig_r = rfd
        signal.set_wakeup_fd(wfd)
        self._sig_w = wfd

        def handler(signum, frame):
            self.signals.append(signum)

        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD):
            signal.signal(s, handler)
        self.sel.register(rfd, selectors.EVENT_READ, None)

    # -- main loop --------------------------------------------------------
    def prepare(self):
        """Detect clients and check keys for every tunnel: errors surface before we detach."""
        if not self.runners:
            self.runners = [self._make_runner(t) for t in self.settings.tunnels]

    def run(self) -> int:
        self.prepare()
        self.sel = selectors.DefaultSelector()
        self._signal_setup()
        try:
            os.makedirs(self.runtime_dir, mode=0o700, exist_ok=True)
        except OSError:
            pass
        now = self.clock()
        for r in self.runners:
            self._event(r, r.m.start, now, self._offset(r.t))
        self._write_state(force=True)
        try:
            while True:
                self._turn()
                if self.stopping and not any(r.child or r.jobs for r in self.runners):
                    break
        finally:
            for r in self.runners:
                self._stop_now(r)
            self._write_state(force=True)
        return self.exit_code

    def _next_timeout(self):
        now = self.clock()
        deadlines = []
        for r in self.runners:
            if r.m.deadline is not None:
                deadlines.append(r.m.deadline)
            if r.next_check is not None and r.m.state == M.UP:
                deadlines.append(r.next_check)
            if r.next_server_probe is not None:
                deadlines.append(r.next_server_probe)
            for j in r.jobs:
                deadlines.append(j.deadline)
            if r.child and r.child.term_sent is not None:
                deadlines.append(r.child.term_sent + TERM_TIMEOUT)
        interval = min([r.t.interval for r in self.runners] or [30])
        deadlines.append(self._last_state_write + max(1.0, interval / 2.0))
        if not deadlines:
            return 1.0
        return max(0.0, min(5.0, min(deadlines) - now))

    def _turn(self):
        for key, _ in self.sel.select(self._next_timeout()):
            fd = key.fd
            if fd == self._sig_r:
                try:
                    while os.read(fd, 512):
                        pass
                except OSError:
                    pass
                continue
            owner = self.fd_owner.get(fd)
            if owner is None:
                try:
                    self.sel.unregister(fd)
                except (KeyError, ValueError):
                    pass
                continue
            r, what = owner
            if isinstance(what, Job):
                what.pump(fd)
                if fd not in what.fds():
                    self._unwatch(fd)
            else:
                self._read_child(r, fd)
        self._handle_signals()
        now = self.clock()
        for r in list(self.runners):
            self._poll_child(r, now)
            self._poll_jobs(r)
            if r.child and r.child.term_sent is not None:
                r.child.escalate(TERM_TIMEOUT)
            if not self.stopping:
                self._event(r, r.m.on_timer, now)
                self._maybe_check(r, now)
                self._maybe_failback(r, now)
                self._maybe_probe_server(r, now)
        self._write_state()

    # -- children ---------------------------------------------------------
    def _watch(self, fd, r, what):
        self.fd_owner[fd] = (r, what)
        self.sel.register(fd, selectors.EVENT_READ, None)

    def _unwatch(self, fd):
        self.fd_owner.pop(fd, None)
        try:
            self.sel.unregister(fd)
        except (KeyError, ValueError):
            pass

    def _spawn(self, r):
        host, port = r.address
        t = r.ssh_tunnel
        command = session_command(t) if t.reclaim and not r.no_command else None
        home_dir = os.path.join(r.runtime_dir, "home-" + _safe(t.name))
        try:
            r.home = clients.prepare_home(r.info, t, home_dir, host, port)
            known = clients.host_key_known(r.info, t, r.home, host, port)
            argv = clients.build_argv(r.info, t, command=command, host=host, port=port)
        except Exception as exc:  # SshkeepError mostly: configuration the operator must fix
            self.log.error(t.name, "cannot start ssh: %s" % exc)
            self._event(r, r.m.on_exit, self.clock(), C.Outcome(C.SETUP, C.RETRY_SLOW, str(exc)))
            return
        if known is False:
            # dbclient without BatchMode would sit at a y/n prompt for ever.
            msg = "host key of %s is not in %s/.ssh/known_hosts and --accept-new is off" % (
                host, r.home or os.environ.get("HOME", "/"))
            self.log.error(t.name, msg + "; " + C.HINTS[C.HOSTKEY_UNKNOWN])
            self._event(r, r.m.on_exit, self.clock(), C.Outcome(C.HOSTKEY_UNKNOWN, C.RETRY_SLOW, msg))
            return
        child = Child(argv, clients.child_env(os.environ, r.home), self.clock)
        if not child.start():
            self.log.error(t.name, "cannot run %s: %s" % (argv[0], child.spawn_error))
            self._event(r, r.m.on_exit, self.clock(), C.classify(None, [child.spawn_error]))
            return
        r.child = child
        r.ready_pid = None
        for fd in child.fds():
            self._watch(fd, r, child)
        self.log.info(t.name, "connecting to %s (ssh pid %d)" % (r.server_label(), child.pid))
        self.log.debug(t.name, "argv: %r" % (argv,))
        self._state_dirty = True

    def _read_child(self, r, fd):
        child = r.child
        if child is None:
            self._unwatch(fd)
            return
        is_err = child.is_stderr(fd)
        lines, eof = child.read(fd)
        for line in lines:
            if is_err:
                self.log.info(r.name, "ssh: " + line)
            else:
                ready = remote.parse_ready(line)
                if ready is not None:
                    r.ready_pid = ready[0]
                    self._ready(r)
        if eof:
            self._unwatch(fd)
            child.close_fd(fd)

    def _ready(self, r):
        self._event(r, r.m.on_ready, self.clock())

    def _transition(self, r, before):
        """Side effects of entering a state (logging, check schedule)."""
        self._state_dirty = True
        r.server_probe_failed = False   # a probe failure counts within one state only
        now = self.clock()
        if r.m.state == M.UP:
            r.connect_failures = 0
            # Soon after up: a passing check proves the session (machine.py), so that losing
            # it even a few seconds later retries at once instead of escalating.
            r.next_check = now + min(r.t.interval, FIRST_CHECK_AFTER) if self.checks else None
            r.check_round = 0
            r.greetings.clear()         # learned again once per session (the target may have changed)
            self.log.info(r.name, "up via %s (%d forward%s)%s" % (
                r.server_label(), len(r.t.forwards), "" if len(r.t.forwards) == 1 else "s",
                "" if r.ready_pid is None else ", server session pid %d" % r.ready_pid))
        elif r.m.state == M.BACKOFF and r.m.deadline is not None:
            self.log.info(r.name, "retrying in %.1fs" % (r.m.deadline - now))

    def _poll_child(self, r, now):
        child = r.child
        if child is None or child.poll() is None:
            return
        for fd in list(child.fds()):
            lines, _ = child.read(fd)
            if child.is_stderr(fd):
                for line in lines:
                    self.log.info(r.name, "ssh: " + line)
            self._unwatch(fd)
        child.close()
        r.child = None
        outcome = C.classify(child.returncode, child.stderr_tail, r.m.kill_reason, r.info.kind)
        level = self.log.info if outcome.action == C.NONE else self.log.warning
        level(r.name, "ssh exited after %.1fs: %s%s%s" % (
            child.uptime(), outcome.reason, " (%s)" % outcome.detail if outcome.detail else "",
            "; " + outcome.hint if outcome.hint and outcome.action != C.NONE else ""))
        was_up = r.m.state == M.UP
        r.watchdogs = r.watchdogs + 1 if outcome.reason == C.WATCHDOG else 0
        if r.watchdogs >= 2 and r.t.reclaim and not r.no_command:
            # Logged in but our session command never said ready: a forced command
            # (restricted key) or no shell. Fall back to -N; reclaim cannot work there.
            r.no_command = True
            r.m.p.use_marker = False
            self.log.warning(r.name, "no ready line from the server's session command (forced command or no "
                                     "shell?): using -N from now on; stale listeners cannot be reclaimed")
        if not was_up and outcome.reason in C.NETWORK_REASONS | {C.WATCHDOG}:
            r.connect_failures += 1
            self._maybe_failover(r)
        self._event(r, r.m.on_exit, now, outcome)
        self._state_dirty = True

    def _maybe_failover(self, r):
        if len(r.addresses) > 1 and r.connect_failures >= r.t.failover_after:
            old = r.server_label()
            r.addr_index = (r.addr_index + 1) % len(r.addresses)
            r.connect_failures = 0
            self.log.warning(r.name, "failover: %s failed %d times, trying %s" % (
                old, r.t.failover_after, r.server_label()))

    # -- commands from the machine ---------------------------------------
    def _event(self, r, method, *args):
        """Feed one event to r's machine, carry out its commands, note a state change."""
        self._exec(r, method(*args))
        seen = (r.m.state, r.m.since)
        if seen != r.seen:
            r.seen = seen
            self._transition(r, seen)

    def _exec(self, r, commands):
        for cmd in commands:
            if isinstance(cmd, M.Spawn):
                self._spawn(r)
            elif isinstance(cmd, M.Kill):
                if r.child:
                    self.log.info(r.name, "stopping ssh pid %d (%s)" % (r.child.pid, cmd.reason))
                    r.child.close_stdin()
                    r.child.terminate()
            elif isinstance(cmd, M.Reclaim):
                self._reclaim(r)
            elif isinstance(cmd, M.Fatal):
                self.log.error(r.name, "giving up: %s" % cmd.message)
                self.exit_code = 69
                self._begin_stop()
            self._state_dirty = True

    def _reclaim(self, r):
        if self.checks is None:
            self._event(r, r.m.on_reclaimed, self.clock(), False)
            return
        self.checks.reclaim(self, r)

    # -- jobs (ssh exec for checks and reclaim) --------------------------
    def start_job(self, r, argv, timeout, on_done, env=None):
        job = Job(argv, env if env is not None else clients.child_env(os.environ, r.home), timeout, self.clock,
                  on_done)
        if not job.start():
            on_done(job)
            return None
        r.jobs.append(job)
        for fd in job.fds():
            self._watch(fd, r, job)
        return job

    def _poll_jobs(self, r):
        for job in list(r.jobs):
            if job.check():
                for fd in list(self.fd_owner):
                    if self.fd_owner[fd][1] is job:
                        self._unwatch(fd)
                r.jobs.remove(job)
                if job.on_done:
                    try:
                        job.on_done(job)
                    except Exception as exc:  # a check must never kill the agent
                        self.log.error(r.name, "check failed internally: %r" % (exc,))

    # -- health -------------------------------------------------------------
    def _maybe_failback(self, r, now):
        """On an alternate: once per interval, is the primary back? Then move home."""
        if r.addr_index == 0 or r.m.state != M.UP or now < getattr(r, "next_failback", 0):
            return
        r.next_failback = now + r.t.interval
        host, port = r.addresses[0]
        if probe.probe_tcp(host, port, timeout=1.0):
            self.log.info(r.name, "primary %s:%d answers again: moving back from %s" % (host, port, r.server_label()))
            r.addr_index = 0
            self._event(r, r.m.on_reconnect_request, now)

    def _maybe_check(self, r, now):
        if self.checks is None or r.m.state != M.UP or r.next_check is None or now < r.next_check:
            return
        if any(getattr(j, "kind", "") == "check" for j in r.jobs):
            r.next_check = now + 1.0
            return
        r.next_check = now + r.t.interval
        r.check_began = now
        r.check_round += 1
        self.checks.run(self, r, now)

    def report_check(self, r, name, verdict, ok, detail=""):
        """Called by the checks with each result."""
        now = self.clock()
        prev = r.m.verdicts.get(name)
        if prev != verdict:
            lvl = self.log.info if ok else self.log.warning
            lvl(r.name, "check %s: %s%s" % (name, verdict, " (%s)" % detail if detail else ""))
        self._event(r, r.m.on_check, now, name, verdict, ok)
        self._state_dirty = True
        if ok is False and r.m.state == M.UP and r.next_check is not None:
            # A failure is confirmed (or cleared) soon, not a whole interval later: a dead
            # forward is healed within about one interval, a blip still needs two checks.
            # Counted from when the round began: a no-answer has already waited its timeout.
            began = getattr(r, "check_began", now)
            r.next_check = min(r.next_check, max(now, began + recheck_delay(r.t.interval)))

    def report_reclaimed(self, r, freed, nothing=False):
        """Called by the reclaim with its outcome (freed: the stale listener is gone;
        nothing: the server had no listener of ours left to end)."""
        self._event(r, r.m.on_reclaimed, self.clock(), freed, nothing)

    def _maybe_probe_server(self, r, now):
        """Cheap TCP probes of the server: during a network backoff, and during a connect
        that hangs (a SYN sent into an outage waits out the kernel's retransmits, seconds
        after the link is back: dbclient has no connect timeout at all)."""
        backoff = r.m.wants_server_probe()
        stuck = r.m.wants_connect_probe(now, STUCK_CONNECT)
        if not (backoff or stuck):
            r.next_server_probe = None
            r.server_probe_failed = False
            return
        if r.next_server_probe is None:
            r.next_server_probe = now
        if now < r.next_server_probe:
            return
        period = SERVER_PROBE_FAST if now - r.m.since < SERVER_PROBE_FAST_FOR else SERVER_PROBE_SLOW
        r.next_server_probe = now + period * self.rng.uniform(0.8, 1.2)
        host, port = r.address
        began = self.clock()
        answered = probe.probe_tcp(host, port, timeout=0.5)
        if self.clock() - began > 2.0:
            # the name lookup stalled (resolver out of reach): keep the loop free for a while
            r.next_server_probe = self.clock() + 30.0
        if not answered:
            r.server_probe_failed = True
        elif r.server_probe_failed and backoff:
            # Down, now up again: do not wait out the backoff.
            delay = self._offset(r.t)
            self.log.info(r.name, "server %s answers again; reconnecting %s" % (
                r.server_label(), "now" if delay <= 0 else "in %.1fs (fleet spread)" % delay))
            self._event(r, r.m.on_server_answers, now, delay)
        elif r.server_probe_failed and stuck:
            self.log.info(r.name, "server %s answers again while ssh is still stuck connecting; "
                                  "starting a fresh connect" % r.server_label())
            r.server_probe_failed = False
            self._event(r, r.m.on_reconnect_request, now)

    # -- signals --------------------------------------------------------------
    def _handle_signals(self):
        while self.signals:
            sig = self.signals.pop(0)
            if sig in (signal.SIGTERM, signal.SIGINT):
                self.log.info("", "got %s: stopping" % signal.Signals(sig).name)
                self._begin_stop()
            elif sig == signal.SIGHUP:
                self._reload()
            elif sig == signal.SIGUSR1:
                self.log.info("", "SIGUSR1: reconnecting now, backoff reset")
                now = self.clock()
                for r in self.runners:
                    self._event(r, r.m.on_reconnect_request, now)

    def _begin_stop(self):
        if self.stopping:
            return
        self.stopping = True
        now = self.clock()
        for r in self.runners:
            self._event(r, r.m.stop, now)
            for job in r.jobs:
                # A check in flight must not hold up the stop (procd KILLs us after 5 s).
                job.deadline = min(job.deadline, now + 1.0)
                job.child.terminate()

    def _reload(self):
        if self.reload_settings is None:
            self.log.info("", "SIGHUP: nothing to reload (tunnels given on the command line)")
            return
        try:
            new = self.reload_settings()
        except Exception as exc:
            self.log.error("", "reload failed, keeping the running configuration: %s" % exc)
            return
        old = {r.name: r for r in self.runners}
        keep = []
        now = self.clock()
        for t in new.tunnels:
            r = old.pop(t.name, None)
            if r is not None and r.t == t:
                keep.append(r)
                continue
            if r is not None:
                self.log.info(t.name, "configuration changed: restarting")
                self._stop_now(r)
            try:
                nr = self._make_runner(t)
            except Exception as exc:
                self.log.error(t.name, "cannot start after reload: %s" % exc)
                continue
            keep.append(nr)
            self._event(nr, nr.m.start, now, self._offset(t))
        for r in old.values():
            self.log.info(r.name, "removed from configuration: stopping")
            self._stop_now(r)
        self.runners = keep
        self.settings = new
        for w in new.warnings:
            self.log.warning("", "config: " + w)
        self.log.info("", "reloaded: %d tunnel(s)" % len(keep))
        self._state_dirty = True

    def _stop_now(self, r):
        """Blocking, bounded stop of a runner's child and jobs."""
        r.m.stop(self.clock())
        r.close()
        if r.child:
            for fd in list(r.child.fds()):
                self._unwatch(fd)
            r.child.close_stdin()
            r.child.stop(term_timeout=TERM_TIMEOUT, kill_timeout=1.0)
            r.child = None
        for job in r.jobs:
            for fd in list(job.fds()):
                self._unwatch(fd)
            job.child.stop(term_timeout=0.5, kill_timeout=1.0)
        r.jobs = []

    # -- state ------------------------------------------------------------------
    def state_doc(self):
        wall_now = self.wall()
        mono_now = self.clock()
        tunnels, children = [], []
        for r in self.runners:
            m = r.m
            tunnels.append({
                "name": r.name,
                "state": m.state,
                "since": round(wall_now - (mono_now - m.since), 3) if m.since else None,
                "restarts": m.restarts,
                "last_error": m.last_error,
                "ssh_pid": r.child.pid if r.child else None,
                "client": "%s %s" % (r.info.kind, r.info.version),
                "server": r.server_label(),
                "health": m.health,
                "checks": dict(m.verdicts),
                "consecutive_failures": m.failures,
                "last_check": round(wall_now - (mono_now - m.last_check), 3) if m.last_check else None,
                "last_heal": m.last_heal,
                "next_attempt_in": round(m.deadline - mono_now, 1) if m.state == M.BACKOFF and m.deadline else None,
                "forwards": [f.label() for f in r.ssh_tunnel.forwards],
            })
            if r.child:
                children.append(r.child.cmdline_record())
        return {"pid": os.getpid(), "version": __version__, "started": self.started_wall,
                # `check` judges freshness on the monotonic clock: the wall clock of a box
                # without an RTC jumps at boot when NTP sets it.
                "updated": wall_now, "monotonic": mono_now, "pidfile": self.settings.pidfile, "tunnels": tunnels,
                "children": children, "warnings": list(self.settings.warnings),
                # --debug: what the long-running process holds (a test pins it: tests/test_memory.py)
                **({"modules": sorted(sys.modules)} if self.log.debug_on else {})}

    def _write_state(self, force=False):
        now = self.clock()
        interval = min([r.t.interval for r in self.runners] or [30])
        if not (force or self._state_dirty or now - self._last_state_write >= max(1.0, interval / 2.0)):
            return
        try:
            state.write(self.settings.state, self.state_doc())
        except Exception as exc:
            self.log.error("", str(exc))
        self._last_state_write = now
        self._state_dirty = False


def _safe(name):
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:64] or "tunnel"

