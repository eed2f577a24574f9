"""One tunnel's runtime record: its configuration, machine, client, ssh child and session.

The supervisor owns these records and changes them only through the methods here. The
tunnel is kept once, as configured (what a reload compares); what ssh is started with
(the pin file accept-new adds, the loop check's forwards) is computed from it.
"""

import os
import socket

from agent.core import record, session
from agent.core.machine import BACKOFF
from agent.core.model import check_key, hostport
from agent.errors import EX_NOINPUT, SshkeepError
from agent.hubside import remote
from agent.run import clients


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


def check_files(t):
    """Known-hosts settings that can never connect: said at start, not at every retry."""
    if t.known_hosts and os.path.isdir(t.known_hosts):
        raise SshkeepError("%s: known_hosts file %s is a directory; give the file in it (%s/known_hosts "
                           "or the like)" % (t.name, t.known_hosts, t.known_hosts.rstrip("/")), EX_NOINPUT)
    if t.known_hosts and not t.accept_new and not os.path.exists(t.known_hosts):
        # Strict checking against a file that is not there can never connect: say so now.
        raise SshkeepError("%s: known_hosts file %s does not exist; create it (ssh-keyscan) or use "
                           "--accept-new" % (t.name, t.known_hosts), EX_NOINPUT)


def session_record(value):
    """A `session` entry of a previous run's state, checked: {pid, start, server, box} or None."""
    if not isinstance(value, dict):
        return None
    pid, start, server, box = (value.get(k) for k in ("pid", "start", "server", "box"))
    if (isinstance(pid, int) and not isinstance(pid, bool) and pid > 1 and isinstance(start, str)
            and start.isdigit() and isinstance(server, str) and isinstance(box, str)):
        return {"pid": pid, "start": start, "server": server, "box": box}
    return None


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
        self.loop = None                # remote.LoopListener when config.loop_port
        self.loop_box_port = 0
        self._loop_forwards = ()
        if config.loop_port:
            self.loop = remote.LoopListener()
            r_fwd, l_fwd = remote.loop_forward_pair(self.loop.port, config.loop_port)
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

    def said(self, key):
        """Is this ssh stderr line news (not logged since the last change)?"""
        if key in self.ssh_said:
            return False
        if len(self.ssh_said) >= 64:
            self.ssh_said.clear()
        self.ssh_said.add(key)
        return True

    def healthy_again(self):
        self.ssh_said.clear()  # the next connect_to line is news (a new outage)

    def responder_named(self, name):
        self.responder_pending = name

    def responder_started(self, name):
        """The responder got its program (name), or could not (None)."""
        self.responder_pending = None
        self.responder = name

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
            "next_attempt_in": round(m.deadline - mono_now, 1) if m.state == BACKOFF and m.deadline else None,
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
