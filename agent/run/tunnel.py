"""One tunnel's runtime record: its configuration, machine, client, ssh child and session.

The supervisor owns these records and changes them only through the methods here. The
tunnel is kept once, as configured (what a reload compares); what ssh is started with
(the pin file accept-new adds, the loop check's forwards) is computed from it.
"""

import os
import socket

from agent.core import classify, defaults, machine, record, session, spread, timing, values
from agent.core.model import check_key, hostport
from agent.errors import EX_NOINPUT, SshkeepError
from agent.hubside import remote
from agent.run import clients, loop, state


def session_command(tunnel, box, responder=False):
    """Remote command run instead of -N: records the session for reclaim, prints the ready marker.

    The record's owner is the box identity; hostname and tunnel name go beside
    it for people (agent.core.values.word folds any text). Without -R forwards there
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


def check_files(t):
    """Known-hosts settings that can never connect: said at start, not at every retry."""
    if t.known_hosts and os.path.isdir(t.known_hosts):
        raise SshkeepError("%s: known_hosts file %s is a directory; give the file in it (%s/known_hosts "
                           "or the like)" % (t.name, t.known_hosts, t.known_hosts.rstrip("/")), EX_NOINPUT)
    if t.known_hosts and not t.accept_new and not os.path.exists(t.known_hosts):
        # Strict checking against a file that is not there can never connect: say so now.
        raise SshkeepError("%s: known_hosts file %s does not exist; create it (ssh-keyscan) or use "
                           "--accept-new" % (t.name, t.known_hosts), EX_NOINPUT)


def policy(t, checks_on, half_open):
    """The machine's policy for tunnel t (checks_on: --no-checks not given; half_open: the
    server probe is a half-open SYN)."""
    return machine.Policy(connect_timeout=float(t.connect_timeout),
                          use_marker=t.reclaim,
                          stable_after=max(defaults.STABLE_AFTER, float(t.interval)),
                          fail_threshold=t.fail_threshold,
                          max_backoff=float(t.max_backoff),
                          reclaim=t.reclaim,
                          half_open_probe=half_open,
                          proof_by_check=checks_on and bool(t.loop_port or any(f.check != "none" for f in t.forwards)),
                          checks=checks_on,
                          interval=float(t.interval),
                          addresses=1 + len(t.alternates),
                          failover_after=t.failover_after)


def preflight(t, info):
    """What makes `run` refuse tunnel t with client `info` before its first connect. The one
    check: `run` (make_runner), `config -c` and `reload -c` (agent.cli) all call it."""
    clients.check_forwards(info, t)
    if t.identity:
        clients.check_identity(info, t.identity)
    check_files(t)


def preflight_all(settings, detect=clients.detect):
    """preflight for every tunnel of settings, each with the client `run` would detect."""
    for t in settings.tunnels:
        preflight(t, detect(t.ssh_path, t.client))


def make_runner(t, info, checks_on, half_open, log):
    """A Runner for tunnel t and its client `info`, after the checks that can fail at start."""
    preflight(t, info)
    pins = ""
    if t.accept_new:
        # Trust on first use pins to a persistent file (tmpfs HOME would forget at boot).
        # Every ssh of this tunnel (its own, checks, reclaims) checks against the pins.
        pins = t.known_hosts or clients.default_known_hosts()
        clients.ensure_pin_file(pins)
    # The per-box offset (fleet spreading): same box, same offset, every time.
    backoff = timing.Backoff(cap=t.max_backoff, offset=spread.tunnel_offset(t))
    r = Runner(t, info, machine.Machine(policy(t, checks_on, half_open), backoff), pins)
    log.info(t.name, "using %s %s (%s) for %s" % (info.kind, info.version, info.path, r.server_label()))
    return r


def session_record(value):
    """A `session` entry of a previous run's state, checked: {pid, start, server, box} or None."""
    if not isinstance(value, dict):
        return None
    pid, start, server, box = (value.get(k) for k in ("pid", "start", "server", "box"))
    if (isinstance(pid, int) and not isinstance(pid, bool) and pid > 1 and isinstance(start, str)
            and start.isdigit() and isinstance(server, str) and isinstance(box, str)):
        return {"pid": pid, "start": start, "server": server, "box": box}
    return None


def resume_sessions(runners, doc, box):
    """Keep the last sessions a previous run of this agent announced (state on tmpfs: lost
    at reboot), so a restarted agent can still reclaim its own stale session. Not from a
    live agent's state (its sessions are not stale), not under another box identity."""
    prev = doc.get("pid")
    if prev != os.getpid() and state.pid_alive(prev) or doc.get("box_id") != box:
        return
    by_name = {t.get("name"): t for t in doc.get("tunnels") or [] if isinstance(t, dict)}
    for r in runners:
        r.resume((by_name.get(r.name) or {}).get("session"), box)


class NotStarted(Exception):
    """ssh cannot be started as configured (the message says what to fix): `outcome` for the machine."""

    def __init__(self, message, outcome):
        Exception.__init__(self, message)
        self.outcome = outcome


class Runner:
    """One tunnel: its settings, machine, client and current ssh child."""

    def __init__(self, config, info, machine, pins=""):
        self.config = config            # the tunnel as configured
        self.info = info
        self.machine = machine
        self.pins = pins                # the pin file accept-new checks against ('' : the configured one)
        self.child = None
        self.jobs = []                  # (Job, kind, plan): kind "check" or "reclaim"
        self.home = None
        self.ready_pid = None
        self.session = None             # this box's last session on the server, from its ready line:
                                        # {pid, start, server, box}; the only one a reclaim may end
        self.held = ""                  # who holds our -R port on the hub, when another session does
        self.allocated = {}             # index in config.forwards of a -R 0:... -> the port the hub picked
        self.session_cmd = False        # the current ssh runs our session command (not -N)
        self.seen = None                # (state, since) of the machine when last looked at
        self.requests = session.Requests()  # in-session check requests in flight (ids never reused)
        self.responder = None           # the responder the current session runs (its ready line), or None
        self.responder_pending = None   # named by the ready line, started once the hub-picked ports are sent
        self.ssh_said = set()           # stderr lines logged since the last change (not repeated)
        self.loop = None                # loop.LoopListener when config.loop_port
        self.loop_box_port = 0
        self._loop_forwards = ()
        if config.loop_port:
            self.loop = loop.LoopListener()
            r_fwd, l_fwd = loop.loop_forward_pair(self.loop.port, config.loop_port)
            self.loop_box_port = l_fwd.port
            self._loop_forwards = (r_fwd, l_fwd)

    # -- derived --------------------------------------------------------------
    @property
    def tunnel(self):
        """The tunnel every ssh of it (its own, checks, reclaims) is built from: with the pins."""
        return record.replace(self.config, known_hosts=self.pins) if self.pins else self.config

    @property
    def ssh_tunnel(self):
        """What the tunnel's own ssh is started with: the loop check's forwards added."""
        t = self.tunnel
        return record.replace(t, forwards=tuple(t.forwards) + self._loop_forwards) if self._loop_forwards else t

    @property
    def name(self):
        return self.config.name

    @property
    def addresses(self):
        return [(self.config.host, self.config.port)] + list(self.config.alternates)

    @property
    def address(self):
        return self.addresses[self.machine.addr]

    def server_label(self, index=None):
        return hostport(*(self.address if index is None else self.addresses[index]))

    def up_line(self):
        n = len(self.config.forwards)
        return "up via %s (%d forward%s: %s)%s" % (
            self.server_label(), n, "" if n == 1 else "s", self.forward_names(),
            "" if self.ready_pid is None else ", server session pid %d" % self.ready_pid)

    def describe(self, cmd):
        """(level, log line) for a decision of the machine the driver only reports."""
        if isinstance(cmd, machine.Failover):
            return "warning", "failover: %s failed %d times, trying %s" % (
                self.server_label(cmd.old), self.config.failover_after, self.server_label(cmd.new))
        if isinstance(cmd, machine.Failback):
            return "info", "primary %s answers again: moving back from %s" % (
                self.server_label(0), self.server_label(cmd.old))
        if isinstance(cmd, machine.UseN):
            return "warning", ("no ready line from the server's session command (forced command or no shell?): "
                               "using -N from now on; stale listeners cannot be reclaimed")
        if cmd.stuck:  # machine.ServerBack
            return "info", ("server %s answers again while ssh is still stuck connecting; starting a fresh "
                            "connect" % self.server_label())
        return "info", "server %s answers again; reconnecting %s" % (
            self.server_label(), "now" if cmd.delay <= 0 else "in %.1fs (fleet spread)" % cmd.delay)

    def forward_names(self):
        """The configured names (or `-R SPEC` where none was given), for logs."""
        return ", ".join(f.label() for f in self.config.forwards)

    def check_label(self, name):
        """A check's name (`R:8080`) with the configured name of its forward: `web (R:8080)`."""
        for f in self.config.forwards:
            if f.name and check_key(f) == name:
                return "%s (%s)" % (f.name, name)
        return name

    def forwards_now(self):
        """The forwards as this session has them: a hub-picked port (-R 0:...) as the client
        reported it; one not reported (yet) is left out, there is nothing to check."""
        return [self.now(i, f) for i, f in enumerate(self.config.forwards)
                if not (f.kind == "R" and f.port == 0 and i not in self.allocated)]

    def now(self, i, f):
        """Forward number i, with the port the hub picked for it if it did."""
        return record.replace(f, port=self.allocated[i]) if i in self.allocated else f

    def ports_pending(self):
        """Is a hub-picked port (-R 0:...) not reported yet?"""
        return any(f.kind == "R" and f.port == 0 and i not in self.allocated for i, f in enumerate(self.config.forwards))

    def wakeups(self, term_timeout):
        """When the driver has something to do for this tunnel (the first of these)."""
        due = self.machine.wakeups() + [job.deadline for job, _, _ in self.jobs]
        if self.requests.deadline() is not None:
            due.append(self.requests.deadline())
        if self.stopping_child():
            due.append(self.child.term_sent + term_timeout)
        return due

    def wants_responder(self, checks_on):
        """Should the next session run the hub's responder (in-session -R checks)?"""
        return (checks_on and self.config.check_mode != "exec" and not self.machine.responder_broken
                and remote_checked(self.config))

    def checking(self):
        """Is a check round still in flight (an exec check, requests to the responder)?"""
        return bool(self.requests.pending) or any(kind == "check" for _, kind, _ in self.jobs)

    def stopping_child(self):
        return self.child is not None and self.child.term_sent is not None

    def in_session(self):
        """Can the -R checks go to the responder of the running session now?"""
        return (self.child is not None and self.child.term_sent is None and self.responder is not None
                and not self.machine.responder_broken)

    def check_mode(self, checks_on):
        """(mode, why) of the -R checks, for status (agent.core.session.check_mode)."""
        m = self.machine
        return session.check_mode(self.config.check_mode, checks_on, remote_checked(self.config), self.config.reclaim,
                                  m.no_command, m.responder_broken, self.responder)

    def exit_report(self, child):
        """(outcome, did the server run a session command of its own?, [(log level, line)])
        for the tunnel's ssh that ended."""
        outcome = classify.classify(child.returncode, child.stderr_tail, self.machine.kill_reason, self.info.kind)
        said = []
        if outcome.reason == classify.HOSTKEY_MISMATCH:
            said.append(("error", clients.mismatch_hint(self.ssh_tunnel.known_hosts, *self.address)))
        quiet = outcome.action == classify.NONE or outcome.reason == classify.RECONNECT  # we asked for it
        said.append(("info" if quiet else "warning", "ssh exited after %.1fs: %s%s%s" % (
            child.uptime(), outcome.reason, " (%s)" % outcome.detail if outcome.detail else "",
            "; " + outcome.hint if outcome.hint and not quiet else "")))
        return outcome, classify.session_ran(self.info.kind, child.returncode, child.stdout_tail), said

    def ssh_argv(self, box, responder, runtime_dir):
        """(argv, runs our session command?, learns the host key?) of the tunnel's next ssh;
        NotStarted if it cannot be started as configured. `responder`: the session runs one."""
        host, port = self.address
        t = self.ssh_tunnel
        command = session_command(t, box, responder=responder) if t.reclaim and not self.machine.no_command else None
        home_dir = os.path.join(runtime_dir, "home-" + values.word(t.name))
        why = t.identity and clients.key_unreadable(t.identity)
        if why:
            out = classify.key_unusable(t.identity, why)
            raise NotStarted(out.detail + "; ssh not started", out)
        try:
            home = self.use_home(clients.prepare_home(self.info, t, home_dir, host, port))
            known = clients.host_key_known(self.info, t, home, host, port)
            learn = known is False and t.accept_new
            argv = clients.build_argv(self.info, t, command=command, host=host, port=port, learn=learn)
        except Exception as exc:  # SshkeepError mostly: configuration the operator must fix
            raise NotStarted("cannot start ssh: %s" % exc, classify.Outcome(classify.SETUP, classify.RETRY_SLOW,
                                                                            str(exc)))
        if known is False and not learn:
            # dbclient without BatchMode would sit at a y/n prompt for ever.
            # Name the user's file, not the private copy sshkeep gives dbclient (prepare_home).
            where = t.known_hosts or os.path.join(os.environ.get("HOME", "/"), ".ssh", "known_hosts")
            msg = "host key of %s is not in %s and --accept-new is off" % (hostport(host, port), where)
            raise NotStarted(msg + "; " + classify.HINTS[classify.HOSTKEY_UNKNOWN],
                             classify.Outcome(classify.HOSTKEY_UNKNOWN, classify.RETRY_SLOW, msg))
        return argv, command is not None, learn

    # -- changes --------------------------------------------------------------
    def note_allocated(self, line):
        """A client's "Allocated port N for remote forward to HOST:PORT": the first -R 0:HOST:PORT
        without a port yet gets N (the replies come in the order of the requests). N or None."""
        got = clients.allocated_port(line)
        if got is None:
            return None
        for i, f in enumerate(self.config.forwards):
            if (f.kind == "R" and f.port == 0 and i not in self.allocated
                    and got[1] in ("%s:%d" % (f.host, f.hostport), "[%s]:%d" % (f.host, f.hostport))):
                self.allocated[i] = got[0]
                return got[0]
        return None

    def use_home(self, home):
        """The HOME its ssh children get (clients.prepare_home), None: the agent's own."""
        self.home = home
        return home

    def started(self, child, with_command):
        """A new ssh child: what the last session knew is forgotten."""
        self.child = child
        self.ready_pid = None
        self.responder = None
        self.responder_pending = None
        self.requests.clear()
        self.ssh_said.clear()
        self.allocated = {}
        self.session_cmd = with_command

    def ended(self):
        """The ssh child is gone (reaped): its session's requests with it."""
        self.child = None
        self.responder = None
        return self.requests.clear()

    def ready(self, parsed, box):
        """The session's ready line (remote.parse_ready): the server's session pid, and the
        session as recorded on the hub for a reclaim."""
        self.ready_pid = parsed[0]
        recorded = parsed[1] and parsed[2] and any(f.kind == "R" for f in self.config.forwards)
        self.session = {"pid": parsed[0], "start": parsed[2], "server": self.server_label(),
                        "box": box} if recorded else None
        self.held = ""

    def resume(self, value, box):
        """A previous run's last session of this tunnel (the state file), if it is ours."""
        rec = session_record(value)
        if rec and rec["box"] == box:
            self.session = rec

    def reclaimed(self, freed, held):
        if freed:
            self.session = None
        self.held = held

    def said(self, line):
        """(text for the log, news?) of a line of ssh's stderr: news once per change, since
        OpenSSH writes `connect_to ... failed` for every connection to a target that is down,
        i.e. on every check."""
        text = line if line.startswith(("ssh:", "dbclient:")) else "ssh: " + line
        # `channel 7: open failed: connect failed: ...` (-L to a target that is down): one line
        # whatever the channel number.
        key = line.split(":", 1)[-1] if line.startswith("channel ") else line
        if key in self.ssh_said:
            return text, False
        if len(self.ssh_said) >= 64:
            self.ssh_said.clear()
        self.ssh_said.add(key)
        return text, True

    def healthy_again(self):
        self.ssh_said.clear()  # the next connect_to line is news (a new outage)

    def responder_named(self, name, checks_on):
        """The ready line named the responder the session will run (None: none)."""
        if name is not None and self.wants_responder(checks_on):
            self.responder_pending = name

    def responder_due(self):
        """The responder to hand its program now: named by the ready line, once every hub-picked
        port is recorded (the session reads `port N` lines until then)."""
        if self.child is None or self.ports_pending():
            return None
        return self.responder_pending

    def responder_started(self, name):
        """The responder got its program (name), or could not (None)."""
        self.responder_pending = None
        self.responder = name

    def settled_by(self, line, now):
        """The requests a responder's answer line settles: [(what the request was about, the
        answer's words, or None for one it skipped)]; None for a stray answer (ids are never
        reused, so a late answer is never taken for another request)."""
        parsed = remote.parse_answer(line)
        if parsed is None:
            return []
        hit, skipped = self.requests.answer(parsed[0], now)
        if hit is None:
            return None
        return [(p.about, parsed[1] if p is hit else None) for p in skipped + [hit]]

    def responder_lost(self):
        """The responder exited, or went silent: its requests are dropped (returned)."""
        self.responder = None
        return self.requests.clear()

    def add_job(self, job, kind, plan):
        self.jobs.append((job, kind, plan))

    def drop_job(self, job):
        self.jobs = [j for j in self.jobs if j[0] is not job]

    def seen_changed(self):
        """Has the machine changed state (or re-entered one) since the last look?"""
        seen = (self.machine.state, self.machine.since)
        if seen == self.seen:
            return False
        self.seen = seen
        return True

    def close(self):
        if self.loop is not None:
            self.loop.close()
            self.loop = None

    def status(self, wall_now, mono_now, checks_on):
        """This tunnel's entry in the state file (docs/status-and-logs.md)."""
        m = self.machine
        mode = self.check_mode(checks_on)
        return {
            "name": self.name,
            "state": m.state,
            "since": round(wall_now - (mono_now - m.since), 3) if m.since else None,
            "restarts": m.restarts,
            "last_error": m.last_error,
            "ssh_pid": self.child.pid if self.child else None,
            "client": "%s %s" % (self.info.kind, self.info.version),
            "server": self.server_label(),
            "health": m.health,
            "checks": dict(m.verdicts),
            "consecutive_failures": m.failures,
            "last_check": round(wall_now - (mono_now - m.last_check), 3) if m.last_check else None,
            "last_heal": m.last_heal,
            "next_attempt_in": round(m.deadline - mono_now, 1) if m.state == machine.BACKOFF and m.deadline else None,
            # One shape in every mode (docs/status-and-logs.md): name is the configured
            # name, or `-R SPEC` when none was given.
            "forwards": [{"name": f.label(), "kind": f.kind, "spec": f.spec(),
                          "verdict": m.verdicts.get(check_key(self.now(i, f)))}
                         for i, f in enumerate(self.ssh_tunnel.forwards)],
            "host_keys": ("pinned on first use in " if self.config.accept_new else "checked against ") +
                         (self.ssh_tunnel.known_hosts or "the client's default known_hosts"),
            "session": self.session,
            "held": self.held or None,
            "allocated": {self.config.forwards[i].label(): p for i, p in sorted(self.allocated.items())},
            "check_mode": mode[0],
            "check_mode_why": mode[1],
        }
