"""The driver: spawns ssh, reads its output, runs checks, carries out the machine's commands.

Single-threaded: one selector over every child's stdout/stderr and a signal
self-pipe, a bounded timeout to the next deadline. No decision is made here
that agent.core.machine or agent.core.classify could make.
"""

import os
import selectors
import signal
import socket
import sys
import time

from agent import __version__
from agent.core import classify as C
from agent.run import clients, identity, probe, state
from agent.core import record, session, spread
from agent.hubside import remote
from agent.run import loop
from agent.core import machine as M
from agent.run.child import Child, Job
from agent.errors import EX_NOINPUT, SshkeepError
from agent.core.model import check_key, hostport

TERM_TIMEOUT = 2.0          # TERM -> KILL for ssh children (procd gives us 5 s in all)
STUCK_CONNECT = 2.0         # a connect not ready after this long may be stuck in an outage
FIRST_CHECK_AFTER = 1.0     # s after up: the first health check
SERVER_PROBE_FAST = 0.25    # during a network backoff: cheap TCP connect to the server,
SERVER_PROBE_SLOW = 1.5     # every 0.25 s for the first SERVER_PROBE_FAST_FOR s, then every 1.5 s
SERVER_PROBE_FAST_FOR = 10.0


def session_command(tunnel, box, responder=False):
    """Remote command run instead of -N: records the session for reclaim, prints the ready marker.

    The record's owner is the box identity; hostname and tunnel name go beside
    it for people (agent.run.identity.word folds any text). Without -R forwards there
    is nothing to reclaim; the command still marks readiness. `responder`: the
    session also answers check requests (agent.hubside.remote, in-session checks).
    """
    ports = [f.port for f in tunnel.forwards if f.kind == "R" and f.port]  # hub-picked: sent as `port N`
    if not any(f.kind == "R" for f in tunnel.forwards):
        return "echo %s $PPID nostate; exec cat >/dev/null" % remote.READY_MARKER
    return remote.session_command(ports, owner=box, host=socket.gethostname() or "-", tunnel=tunnel.name,
                                  responder=responder)


def remote_checked(tunnel):
    """Does this tunnel have -R forwards the hub must check?"""
    return any(f.kind == "R" and f.check != "none" for f in tunnel.forwards)


def _session_record(value):
    """A `session` entry of a previous run's state, checked: {pid, start, server, box} or None."""
    if not isinstance(value, dict):
        return None
    pid, start, server, box = (value.get(k) for k in ("pid", "start", "server", "box"))
    if (isinstance(pid, int) and not isinstance(pid, bool) and pid > 1 and isinstance(start, str)
            and start.isdigit() and isinstance(server, str) and isinstance(box, str)):
        return {"pid": pid, "start": start, "server": server, "box": box}
    return None


def recheck_delay(interval: float) -> float:
    """Seconds from a failed check to the one that confirms it."""
    return min(interval, max(1.0, interval / 5.0))


class Runner:
    """One tunnel: its settings, machine, client and current ssh child."""

    def __init__(self, tunnel, info, policy, backoff, runtime_dir, log, clock):
        self.t = tunnel
        self.given = tunnel             # as configured (self.t may add the default pin file)
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
        self.server_probe_answered = False  # one answer ends the probing until the state changes
        self.ready_pid = None
        self.session = None             # this box's last session on the server, from its ready line:
                                        # {pid, start, server, box}; the only one a reclaim may end
        self.held = ""                  # who holds our -R port on the hub, when another session does
        self.allocated = {}             # index in t.forwards of a -R 0:... -> the port the hub picked
        self.session_cmd = False        # the current ssh runs our session command (not -N)
        self.seen = None
        self.no_command = False         # the server ran no command of ours: use -N
        self.requests = session.Requests()  # in-session check requests in flight (ids never reused)
        self.responder = None           # the responder the current session runs (its ready line), or None
        self.responder_pending = None   # named by the ready line, started once the hub-picked ports are sent
        self.responder_broken = ""      # why the hub's responder cannot be used (then: exec checks)
        self.mute_sessions = 0          # sessions in a row whose responder never answered
        self.watchdogs = 0              # consecutive "no ready line" (in time, or the session ended first)
        self.ssh_said = set()           # stderr lines logged since the last change (not repeated)
        self.loop = None                # loop.LoopListener when t.loop_port
        self.loop_box_port = 0
        self.ssh_tunnel = tunnel        # what ssh is started with (tunnel + loop forwards)
        if tunnel.loop_port:
            self.loop = loop.LoopListener()
            r_fwd, l_fwd = loop.loop_forward_pair(self.loop.port, tunnel.loop_port)
            self.loop_box_port = l_fwd.port
            self.ssh_tunnel = record.replace(tunnel, forwards=tuple(tunnel.forwards) + (r_fwd, l_fwd))

    def forwards_now(self):
        """The forwards as this session has them: a hub-picked port (-R 0:...) as the client
        reported it; one not reported (yet) is left out, there is nothing to check."""
        return [self.now(i, f) for i, f in enumerate(self.t.forwards)
                if not (f.kind == "R" and f.port == 0 and i not in self.allocated)]

    def now(self, i, f):
        """Forward number i, with the port the hub picked for it if it did."""
        return record.replace(f, port=self.allocated[i]) if i in self.allocated else f

    def note_allocated(self, line):
        """A client's "Allocated port N for remote forward to HOST:PORT": the first -R 0:HOST:PORT
        without a port yet gets N (the replies come in the order of the requests). N or None."""
        got = clients.allocated_port(line)
        if got is None:
            return None
        for i, f in enumerate(self.t.forwards):
            if (f.kind == "R" and f.port == 0 and i not in self.allocated
                    and got[1] in ("%s:%d" % (f.host, f.hostport), "[%s]:%d" % (f.host, f.hostport))):
                self.allocated[i] = got[0]
                return got[0]
        return None

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
        return hostport(*self.address)

    def forward_names(self):
        """The configured names (or `-R SPEC` where none was given), for logs."""
        return ", ".join(f.label() for f in self.t.forwards)

    def check_label(self, name):
        """A check's name (`R:8080`) with the configured name of its forward: `web (R:8080)`."""
        for f in self.t.forwards:
            if f.name and check_key(f) == name:
                return "%s (%s)" % (f.name, name)
        return name


class Supervisor:
    def __init__(self, settings, log, clock=time.monotonic, wall=time.time, detect=clients.detect,
                 reload_settings=None, checks=None):
        self.settings = settings
        self.log = log
        self.clock = clock
        self.wall = wall
        self.detect = detect
        self.reload_settings = reload_settings
        self.checks = checks            # agent.run.checks.Checks or None
        self.previous_state = None      # dict: the state file at start, if the caller read it
        self.rng = M.Jitter()
        self.half_open = probe.half_open_available()  # SYN probes: no noauth on 9.8+ hubs
        self.runners = []
        self.sel = None
        self.fd_owner = {}
        self.signals = []
        self.stopping = False
        self.exit_code = 0
        self.started_wall = wall()
        self._state_dirty = True
        self._last_state_write = 0.0
        self._state_error = ""
        self.runtime_dir = settings.state + ".d"
        self._digest_of = (None, "")    # (settings, state.digest(settings))
        self.box = None                 # agent.run.identity.box_id, read (or made) by prepare()

    # -- setup ------------------------------------------------------------
    def _policy(self, t):
        return M.Policy(connect_timeout=float(t.connect_timeout),
                        use_marker=t.reclaim,
                        stable_after=max(30.0, float(t.interval)),
                        fail_threshold=t.fail_threshold,
                        max_backoff=float(t.max_backoff),
                        reclaim=t.reclaim,
                        half_open_probe=self.half_open,
                        proof_by_check=self.checks is not None and bool(
                            t.loop_port or any(f.check != "none" for f in t.forwards)))

    def _make_runner(self, t):
        info = self.detect(t.ssh_path, t.client)
        clients.check_forwards(info, t)
        if t.identity:
            clients.check_identity(info, t.identity)
        if t.known_hosts and os.path.isdir(t.known_hosts):
            raise SshkeepError("%s: known_hosts file %s is a directory; give the file in it (%s/known_hosts "
                               "or the like)" % (t.name, t.known_hosts, t.known_hosts.rstrip("/")), EX_NOINPUT)
        if t.known_hosts and not t.accept_new and not os.path.exists(t.known_hosts):
            # Strict checking against a file that is not there can never connect: say so now.
            raise SshkeepError("%s: known_hosts file %s does not exist; create it (ssh-keyscan) or use "
                               "--accept-new" % (t.name, t.known_hosts), EX_NOINPUT)
        policy = self._policy(t)
        backoff = M.Backoff(cap=t.max_backoff, offset=self._offset(t))
        r = Runner(t, info, policy, backoff, self.runtime_dir, self.log, self.clock)
        if t.accept_new:
            # Trust on first use pins to a persistent file (tmpfs HOME would forget at boot).
            pins = t.known_hosts or clients.default_known_hosts()
            clients.ensure_pin_file(pins)
            # Every ssh of this tunnel (its own, checks, reclaims) checks against the pins;
            # `given` is what a reload compares with.
            r.t = record.replace(t, known_hosts=pins)
            r.ssh_tunnel = record.replace(r.ssh_tunnel, known_hosts=pins)
        self.log.info(t.name, "using %s %s (%s) for %s" % (info.kind, info.version, info.path, r.server_label()))
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
        if self.box is None:
            self.box = self._box_id()
        if not self.runners:
            self.runners = [self._make_runner(t) for t in self.settings.tunnels]
            self._seed_sessions(self._previous_state())
        try:
            state.private_dir(self.runtime_dir)  # dbclient's private HOMEs
        except (OSError, SshkeepError) as exc:
            if os.path.lexists(self.runtime_dir):
                raise  # there but not ours, or a symlink: never write through it
            self.log.error("", str(exc))  # cannot be made (full or read-only): those tunnels report it

    def _previous_state(self):
        """The state file as this agent found it: read by the start-up process and passed on
        (serve.py), so the running agent needs neither lifecycle nor json; else read here."""
        if self.previous_state is not None:
            return self.previous_state
        return state.previous(self.settings.state)

    def _box_id(self):
        """The box identity; if its file cannot be read or made, a temporary one (kept in the
        run state until reboot), loudly: the tunnels matter more than reclaim across reboots."""
        try:
            return identity.box_id(self.settings.box_id_file)
        except SshkeepError as exc:
            prev = self._previous_state().get("box_id")
            box = prev if isinstance(prev, str) and identity.ID_OK.match(prev) else identity.new_id()
            self.log.error("", "%s; using the temporary box id %s until this is fixed (forgotten at reboot)"
                           % (exc, box))
            return box

    def _seed_sessions(self, doc):
        """Keep the last sessions a previous run of this agent announced (state on tmpfs: lost
        at reboot), so a restarted agent can still reclaim its own stale session. Not from a
        live agent's state (its sessions are not stale), not under another box identity."""
        prev = doc.get("pid")
        if prev != os.getpid() and state.pid_alive(prev) or doc.get("box_id") != self.box:
            return
        by_name = {t.get("name"): t for t in doc.get("tunnels") or [] if isinstance(t, dict)}
        for r in self.runners:
            rec = _session_record((by_name.get(r.name) or {}).get("session"))
            if rec and rec["box"] == self.box:
                r.session = rec

    def run(self) -> int:
        self.prepare()
        self.sel = selectors.DefaultSelector()
        self._signal_setup()
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
            if r.requests.deadline() is not None:
                deadlines.append(r.requests.deadline())
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
            self._poll_requests(r, now)
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
        command = (session_command(t, self.box, responder=self._wants_responder(r))
                   if t.reclaim and not r.no_command else None)
        home_dir = os.path.join(r.runtime_dir, "home-" + _safe(t.name))
        try:
            r.home = clients.prepare_home(r.info, t, home_dir, host, port)
            known = clients.host_key_known(r.info, t, r.home, host, port)
            learn = known is False and t.accept_new
            argv = clients.build_argv(r.info, t, command=command, host=host, port=port, learn=learn)
        except Exception as exc:  # SshkeepError mostly: configuration the operator must fix
            self.log.error(t.name, "cannot start ssh: %s" % exc)
            self._event(r, r.m.on_exit, self.clock(), C.Outcome(C.SETUP, C.RETRY_SLOW, str(exc)))
            return
        if known is False and not learn:
            # dbclient without BatchMode would sit at a y/n prompt for ever.
            # Name the user's file, not the private copy sshkeep gives dbclient (prepare_home).
            where = t.known_hosts or os.path.join(os.environ.get("HOME", "/"), ".ssh", "known_hosts")
            msg = "host key of %s is not in %s and --accept-new is off" % (hostport(host, port), where)
            self.log.error(t.name, msg + "; " + C.HINTS[C.HOSTKEY_UNKNOWN])
            self._event(r, r.m.on_exit, self.clock(), C.Outcome(C.HOSTKEY_UNKNOWN, C.RETRY_SLOW, msg))
            return
        child = Child(argv, clients.child_env(os.environ, r.home), self.clock)
        if not child.start():
            self.log.error(t.name, "cannot run %s: %s" % (argv[0], child.spawn_error))
            self._event(r, r.m.on_exit, self.clock(), C.classify(None, [child.spawn_error]))
            return
        if learn:
            # First contact: answer dbclient's "continue connecting? (y/n)" once, on its stdin
            # (no tty: its own session). It records the key; _save_pin copies it to the pin file.
            child.send(b"y\n")
            self.log.warning(t.name, "first contact with %s: accepting its host key and pinning it in %s"
                             % (r.server_label(), t.known_hosts))
        r.child = child
        r.ready_pid = None
        r.responder = None
        r.responder_pending = None
        r.requests.clear()
        r.ssh_said.clear()
        r.allocated = {}
        r.session_cmd = command is not None
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
                self._ssh_said(r, line)
                picked = r.note_allocated(line)
                if picked:
                    self._state_dirty = True
                    if r.session_cmd:  # the session records it for the hub (agent.hubside.remote)
                        child.send(b"port %d\n" % picked)
                    self._maybe_start_responder(r)
            elif line.startswith(remote.ANSWER_MARKER + " "):
                self._answer(r, line)
            elif line.startswith(remote.GONE_MARKER + " "):
                self._responder_gone(r, remote.parse_gone(line) or line)
            else:
                ready = remote.parse_ready(line)
                if ready is not None:
                    self._start_responder(r, remote.ready_responder(line))
                    r.ready_pid = ready[0]
                    recorded = ready[1] and ready[2] and any(f.kind == "R" for f in r.t.forwards)
                    r.session = {"pid": ready[0], "start": ready[2], "server": r.server_label(),
                                 "box": self.box} if recorded else None
                    r.held = ""
                    self._ready(r)
        if eof:
            self._unwatch(fd)
            child.close_fd(fd)

    def _ssh_said(self, r, line):
        """Log a line of ssh's stderr once per change: OpenSSH writes `connect_to ... failed`
        for every connection to a target that is down, i.e. on every check."""
        text = line if line.startswith(("ssh:", "dbclient:")) else "ssh: " + line
        # `channel 7: open failed: connect failed: ...` (-L to a target that is down): one line
        # whatever the channel number.
        key = line.split(":", 1)[-1] if line.startswith("channel ") else line
        if key in r.ssh_said:
            self.log.debug(r.name, text)
            return
        if len(r.ssh_said) >= 64:
            r.ssh_said.clear()
        r.ssh_said.add(key)
        self.log.info(r.name, text)

    def _ready(self, r):
        self._event(r, r.m.on_ready, self.clock())

    def _transition(self, r, before):
        """Side effects of entering a state (logging, check schedule)."""
        self._state_dirty = True
        r.server_probe_failed = False   # a probe failure counts within one state only
        r.server_probe_answered = False
        now = self.clock()
        if r.m.state == M.UP:
            self._save_pin(r)
            r.connect_failures = 0
            # Soon after up: a passing check proves the session (machine.py), so that losing
            # it even a few seconds later retries at once instead of escalating.
            r.next_check = now + min(r.t.interval, FIRST_CHECK_AFTER) if self.checks else None
            r.check_round = 0
            r.greetings.clear()         # learned again once per session (the target may have changed)
            self.log.info(r.name, "up via %s (%d forward%s: %s)%s" % (
                r.server_label(), len(r.t.forwards), "" if len(r.t.forwards) == 1 else "s", r.forward_names(),
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
                    self._ssh_said(r, line)
            self._unwatch(fd)
        child.close()
        r.child = None
        r.responder = None
        r.requests.clear()
        self._save_pin(r)
        outcome = C.classify(child.returncode, child.stderr_tail, r.m.kill_reason, r.info.kind)
        if outcome.reason == C.HOSTKEY_MISMATCH:
            self.log.error(r.name, clients.mismatch_hint(r.ssh_tunnel.known_hosts, *r.address))
        quiet = outcome.action == C.NONE or outcome.reason == C.RECONNECT  # we asked for it
        level = self.log.info if quiet else self.log.warning
        level(r.name, "ssh exited after %.1fs: %s%s%s" % (
            child.uptime(), outcome.reason, " (%s)" % outcome.detail if outcome.detail else "",
            "; " + outcome.hint if outcome.hint and not quiet else ""))
        was_up = r.m.state == M.UP
        # A forced command (`command="echo tunnels only"` in authorized_keys) runs instead of
        # ours and ends the session before our ready line: as telling as a watchdog kill.
        ended_first = (r.m.state == M.CONNECTING and r.m.kill_reason is None and not r.no_command
                       and outcome.reason in (C.CLOSED, C.EXITED)
                       and C.session_ran(r.info.kind, child.returncode, child.stdout_tail))
        r.watchdogs = r.watchdogs + 1 if outcome.reason == C.WATCHDOG or ended_first else 0
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

    def _save_pin(self, r):
        """dbclient's first contact: the key it recorded goes to the pin file, once."""
        host, port = r.address
        try:
            line = clients.save_learned(r.info, r.ssh_tunnel, r.home, host, port)
        except (OSError, SshkeepError) as exc:
            self.log.error(r.name, "cannot pin the host key of %s: %s" % (r.server_label(), exc))
            return
        if line:
            self.log.warning(r.name, "pinned host key of %s in %s: %s" % (r.server_label(),
                                                                          r.ssh_tunnel.known_hosts, line))

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

    # -- in-session checks (the responder in the tunnel's own session) ----
    def _wants_responder(self, r):
        return (self.checks is not None and r.t.check_mode != "exec" and not r.responder_broken
                and remote_checked(r.t))

    def check_mode(self, r):
        """(mode, why) of r's -R checks, for status (agent.core.session.check_mode)."""
        return session.check_mode(r.t.check_mode, self.checks is not None, remote_checked(r.t), r.t.reclaim,
                                  r.no_command, r.responder_broken, r.responder)

    def in_session(self, r):
        """Can r's -R checks go to the responder of its running session now?"""
        return (r.child is not None and r.child.term_sent is None and r.responder is not None
                and not r.responder_broken)

    def _start_responder(self, r, name):
        """The ready line named the responder the session will run: start it once every
        hub-picked port is recorded (the session reads `port N` lines until then)."""
        if name is not None and self._wants_responder(r):
            r.responder_pending = name
            self._maybe_start_responder(r)

    def _maybe_start_responder(self, r):
        name = r.responder_pending
        if name is None or r.child is None or any(
                f.kind == "R" and f.port == 0 and i not in r.allocated for i, f in enumerate(r.t.forwards)):
            return
        r.responder_pending = None
        if not r.child.send_nowait(remote.responder_source(name)):
            self.log.warning(r.name, "could not hand the hub's responder its program: exec checks for now")
            return
        r.responder = name
        self.log.debug(r.name, "hub runs the %s responder: -R checks go through the session" % name)

    def session_request(self, r, verb, budget, on_answer, **words):
        """Send one request to r's responder; on_answer(words or None) when answered (None: skipped).
        Returns the id, or None if it could not be sent (no responder now); ValueError: bad words."""
        if not self.in_session(r):
            return None
        now = self.clock()
        line = remote.request_line(r.requests.next_id, verb, **words)
        if not r.child.send_nowait(line):
            # ssh does not take our stdin: the session is wedged
            self._session_silent(r, now, "ssh does not read the session's requests")
            return None
        return r.requests.add(verb, budget, now, on_answer)

    def _answer(self, r, line):
        parsed = remote.parse_answer(line)
        if parsed is None:
            return
        now = self.clock()
        hit, skipped = r.requests.answer(parsed[0], now)
        if hit is None:
            self.log.debug(r.name, "ignored an answer no request is waiting for: %s" % line[:120])
            return
        r.mute_sessions = 0
        for p in skipped + [hit]:
            try:
                p.on_answer(parsed[1] if p is hit else None)
            except Exception as exc:  # a check must never kill the agent
                self.log.error(r.name, "check failed internally: %r" % (exc,))

    def _poll_requests(self, r, now):
        p = r.requests.overdue(now)
        if p is not None:
            self._session_silent(r, now, "no answer from the session to its %s request in %.1fs" % (p.what, p.budget))

    def _session_silent(self, r, now, what):
        """An unanswered request is a verdict: the session is dead or its flow is lost. Restart now."""
        if r.requests.answered == 0:
            r.mute_sessions += 1
            if r.mute_sessions >= 2 and not r.responder_broken:
                r.responder_broken = "the hub's %s responder never answered (2 sessions)" % (r.responder or "")
                self.log.warning(r.name, r.responder_broken + ": exec checks from now on")
        r.requests.clear()
        r.responder = None
        self.log.warning(r.name, "%s: the session is dead or its flow is lost; restarting" % what)
        self._event(r, r.m.on_session_silent, now, what)

    def _responder_gone(self, r, why):
        """The session's responder exited (too old an interpreter, killed): exec checks for this tunnel."""
        if not r.responder:
            return
        r.responder_broken = "the hub's responder failed (%s)" % why
        r.responder = None
        for p in r.requests.clear():
            try:
                p.on_answer(None)
            except Exception as exc:
                self.log.error(r.name, "check failed internally: %r" % (exc,))
        self.log.warning(r.name, r.responder_broken + ": exec checks from now on")
        self._state_dirty = True

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
        if self._server_answers(host, port, 1.0):
            self.log.info(r.name, "primary %s answers again: moving back from %s" % (
                hostport(host, port), r.server_label()))
            r.addr_index = 0
            self._event(r, r.m.on_reconnect_request, now)

    def _maybe_check(self, r, now):
        if self.checks is None or r.m.state != M.UP or r.next_check is None or now < r.next_check:
            return
        if r.child is not None and r.child.term_sent is not None:
            return   # being restarted: a check now would only log in for nothing
        if any(getattr(j, "kind", "") == "check" for j in r.jobs) or r.requests.pending:
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
            if ok:
                r.ssh_said.clear()  # healthy again: the next connect_to line is news (a new outage)
            lvl = self.log.info if ok else self.log.warning
            lvl(r.name, "check %s: %s%s" % (r.check_label(name), verdict, " (%s)" % detail if detail else ""))
        self._event(r, r.m.on_check, now, name, verdict, ok)
        self._state_dirty = True
        if ok is False and r.m.state == M.UP and r.next_check is not None:
            # A failure is confirmed (or cleared) soon, not a whole interval later: a dead
            # forward is healed within about one interval, a blip still needs two checks.
            # Counted from when the round began: a no-answer has already waited its timeout.
            began = getattr(r, "check_began", now)
            r.next_check = min(r.next_check, max(now, began + recheck_delay(r.t.interval)))

    def report_reclaimed(self, r, freed, nothing=False, held=""):
        """Called by the reclaim with its outcome (freed: the stale listener is gone;
        nothing: the server had no listener of ours left to end; held: who holds the
        port instead, for the log and status: another box, so no fight, a long wait)."""
        r.held = held
        self._event(r, r.m.on_reclaimed, self.clock(), freed, nothing, held)

    def _server_answers(self, host, port, timeout):
        """Does the server listen? A half-open SYN probe when we may (root), else a bare connect."""
        if self.half_open:
            answer = probe.probe_syn(host, port, timeout)
            if answer is not None:
                return answer
        return probe.probe_tcp(host, port, timeout=timeout)

    def _maybe_probe_server(self, r, now):
        """Cheap TCP probes of the server: during a backoff after the server's host did not answer
        at all (timeouts, unreachable: machine.wants_server_probe), and during a connect that
        hangs (a SYN sent into an outage waits out the kernel's retransmits, seconds after the
        link is back: dbclient has no connect timeout at all).

        As root the probe is a half-open SYN (probe.probe_syn): the server never sees a
        connection. Otherwise a bare connect, which on OpenSSH 9.8+ costs our source address a
        `noauth` PerSourcePenalties second each time it gets through (measured on 10.0p2: also
        when we read its banner and send a version line first, and mostly even with an RST).
        Either way the first probe that is answered is the last one in this state: a live
        server is never poked twice; ssh itself connects next."""
        backoff = r.m.wants_server_probe()
        stuck = r.m.wants_connect_probe(now, STUCK_CONNECT)
        if not (backoff or stuck) or r.server_probe_answered:
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
        answered = self._server_answers(host, port, 0.5)
        if self.clock() - began > 2.0:
            # the name lookup stalled (resolver out of reach): keep the loop free for a while
            r.next_server_probe = self.clock() + 30.0
        if not answered:
            r.server_probe_failed = True
            return
        r.server_probe_answered = True
        r.next_server_probe = None
        if r.server_probe_failed and backoff:
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
            if r is not None and r.given == t:
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
        self.log.info("", "reloaded: %d tunnel(s) over %d ssh connection(s)" % (
            sum(len(r.t.forwards) for r in keep), len(keep)))
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
                # One shape in every mode (docs/status-and-logs.md): name is the configured
                # name, or `-R SPEC` when none was given.
                "forwards": [{"name": f.label(), "kind": f.kind, "spec": f.spec(),
                              "verdict": m.verdicts.get(check_key(r.now(i, f)))}
                             for i, f in enumerate(r.ssh_tunnel.forwards)],
                "host_keys": ("pinned on first use in " if r.t.accept_new else "checked against ") +
                             (r.ssh_tunnel.known_hosts or "the client's default known_hosts"),
                "session": r.session,
                "held": r.held or None,
                "allocated": {r.t.forwards[i].label(): p for i, p in sorted(r.allocated.items())},
                "check_mode": self.check_mode(r)[0],
                "check_mode_why": self.check_mode(r)[1],
            })
            if r.child:
                children.append(r.child.cmdline_record())
        return {"pid": os.getpid(), "version": __version__, "started": self.started_wall, "box_id": self.box,
                # `check` judges freshness on the monotonic clock: the wall clock of a box
                # without an RTC jumps at boot when NTP sets it.
                "updated": wall_now, "monotonic": mono_now, "pidfile": self.settings.pidfile, "tunnels": tunnels,
                # `status` calls the agent hung after STALE_INTERVALS of these without a write
                "interval": min([r.t.interval for r in self.runners] or [30]),
                "settings": self._digest(), "config": self.settings.config_path,
                "children": children, "warnings": list(getattr(self.settings, "warnings", ()) or ()),
                # --debug: what the long-running process holds (a test pins it: tests/test_memory.py)
                **({"modules": sorted(sys.modules)} if self.log.debug_on else {})}

    def _digest(self):
        """state.digest of the running settings (hashed in pure Python: once per reload)."""
        if self._digest_of[0] is not self.settings:
            self._digest_of = (self.settings, state.digest(self.settings))
        return self._digest_of[1]

    def _write_state(self, force=False):
        now = self.clock()
        interval = min([r.t.interval for r in self.runners] or [30])
        if not (force or self._state_dirty or now - self._last_state_write >= max(1.0, interval / 2.0)):
            return
        try:
            state.write(self.settings.state, self.state_doc())
            if self._state_error:
                self.log.info("", "state file %s written again" % self.settings.state)
            self._state_error = ""
        except Exception as exc:
            if str(exc) != self._state_error:  # once, not every interval
                self.log.error("", "%s; running on: `status` cannot show this agent until it can be written" % exc)
            self._state_error = str(exc)
            try:
                # The heartbeat `check` reads when there is no state: the pidfile's mtime (no space needed).
                os.utime(self.settings.pidfile, follow_symlinks=False)
            except OSError:
                pass
        self._last_state_write = now
        self._state_dirty = False


def _safe(name):
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:64] or "tunnel"

