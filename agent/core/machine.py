"""The supervision state machine and backoff: decisions only, no I/O.

The driver (agent.run.supervisor) feeds events with the current monotonic time and
carries out the commands returned; nothing here holds a reference to the driver.
Tests drive it with plain numbers.

    connecting --ready--> up --exit/health--> (reconnect at once, or backoff)
        |                                          |
        +--exit/watchdog--> backoff --timer/server answers--> connecting

A session that came up and passed a check proved the path works: losing it later
(a hub that cuts sessions, a NAT that forgets them) retries within a second and
starts the backoff over. Only sessions that die before that escalate, so a crash
loop (dies before ready, or fails its checks) still backs off.

Besides the states, the machine makes every timing decision of its tunnel: when the
next check round is due (and the recheck after a failure), when to probe the server
during a backoff or a hung connect, when to try the primary again from an alternate,
when to fail over, when to give up on our session command (-N), and when the hub's
responder counts as mute. The driver asks with on_tick and reports with on_probed.
"""

from __future__ import annotations


from agent.core import classify, defaults
from agent.core.record import record
from agent.core.timing import (FIRST_CHECK_AFTER, PRIMARY_PROBE_TIMEOUT, SERVER_PROBE_FAST, SERVER_PROBE_FAST_FOR,
                               SERVER_PROBE_SLOW, SERVER_PROBE_TIMEOUT, SLOW_PROBE, SLOW_PROBE_PAUSE,
                               MUTE_SESSIONS, STUCK_CONNECT, Backoff, recheck_delay)

if False:  # annotations only: importing typing would cost the agent 0.5 MB of memory
    from typing import List, Optional

CONNECTING = "connecting"
UP = "up"
BACKOFF = "backoff"
STOPPING = "stopping"
STOPPED = "stopped"


# Commands returned to the driver.
@record
class Spawn:
    pass


@record
class Kill:
    reason: str          # classify.HEALTH / WATCHDOG / RECONNECT / STOPPED


@record
class Reclaim:
    pass


@record
class Fatal:
    message: str


# Commands that ask the driver for a fact (it answers with on_probed) or to run the checks.
SERVER = "server"     # during a backoff after the host did not answer, or a connect that hangs
PRIMARY = "primary"   # on an alternate: is the configured server back?


@record
class Probe:
    what: str            # SERVER or PRIMARY
    index: int           # the address: 0 the configured server, 1.. its alternates in order
    timeout: float
    at: float            # when it was asked for (the answer counts from then)


@record
class RunChecks:
    round: int           # 1, 2, ... in this session


# Commands that report a decision: the driver logs them (and acts on them where it says so).
@record
class Failover:
    old: int             # address index given up (after Policy.failover_after failed connects)
    new: int


@record
class Failback:
    old: int             # the alternate left: the primary (index 0) answers again


@record
class UseN:
    pass                 # the server never runs our session command: ssh runs -N from now on


@record
class ServerBack:
    delay: float         # the server answers a probe again: reconnecting after this
    stuck: bool          # ...while a connect hangs: a fresh connect now


@record
class Silent:
    what: str            # a request the session's responder left unanswered
    broken: str          # why its responder is no longer used (exec checks), if that is new


@record(frozen=False)
class Policy:
    connect_timeout: float = float(defaults.CONNECT_TIMEOUT)  # no ready signal by then -> kill (WATCHDOG)
    settle: float = 3.0             # without a ready marker: alive this long = up
    use_marker: bool = True         # the session command prints a ready line
    stable_after: float = defaults.STABLE_AFTER  # up this long (checks passing) -> backoff resets
    proof_by_check: bool = True     # a session is proven by a passing check (False: no checks run,
                                    # the ready line is all the proof there is)
    fail_threshold: int = defaults.FAIL_THRESHOLD  # consecutive failed checks -> restart
    max_backoff: float = float(defaults.MAX_BACKOFF)
    reclaim: bool = defaults.RECLAIM
    reclaim_limit: int = 3          # reclaims in a row before we give up and back off
    half_open_probe: bool = False   # the driver's server probe is a half-open SYN (costs the hub nothing)
    checks: bool = True             # health checks run (--no-checks: never due)
    interval: float = float(defaults.INTERVAL)  # between check rounds, and between failback probes
    addresses: int = 1              # the server and its alternates
    failover_after: int = defaults.FAILOVER_AFTER  # failed connects in a row before the next address


class Machine:
    """One tunnel (one ssh process). Call the on_* methods; act on what they return."""

    def __init__(self, policy: Policy, backoff: Optional[Backoff] = None):
        self.p = policy
        self.backoff = backoff or Backoff(cap=policy.max_backoff)
        self.state = STOPPED
        self.since = 0.0
        self.deadline = None            # when on_timer must be called, or None
        self.restarts = 0
        self.last_error = ""
        self.last_outcome = None        # classify.Outcome
        self.up_since = None
        self.failures = 0               # consecutive failed rounds of the worst check
        self.fail_counts = {}           # check name -> consecutive failures
        self.verdicts = {}              # check name -> verdict
        self.last_check = None
        self.last_heal = ""
        self.health = ""                # "", "ok", "target-down", "failing"
        self.reclaims_in_row = 0
        self.started_once = False
        self.proven = False             # this session came up and passed a check
        self._kill_reason = None
        self._wait_for_server = False   # backoff may end early when the server answers
        self.addr = 0                   # index of the server in use (0: the configured one)
        self.connect_failures = 0       # in a row, before a session came up: failover counts them
        self.next_failback = 0.0        # on an alternate: when to ask the primary again
        self.watchdogs = 0              # consecutive "no ready line" (in time, or the session ended first)
        self.no_command = False         # the server runs no command of ours: ssh runs -N
        self.next_check = None          # when the next check round is due (while up)
        self.check_round = 0
        self.check_began = None         # when the current round began
        self.next_probe = None          # when the next server probe is due
        self.probe_failed = False       # a server probe went unanswered in this state
        self.probe_answered = False     # one answer ends the probing until the state changes
        self.mute_sessions = 0          # sessions in a row whose responder never answered
        self.responder_broken = ""      # why the hub's responder is not used (then: exec checks)

    # -- helpers
    def _go(self, state, now, deadline=None):
        if (state, now) != (self.state, self.since):
            self.probe_failed = False   # a probe failure counts within one state only
            self.probe_answered = False
        self.state = state
        self.since = now
        self.deadline = deadline

    # -- events
    def start(self, now: float, first_delay: Optional[float] = None) -> List:
        """Begin supervising; `first_delay` (default: the backoff's offset) spreads a fleet's first connect."""
        if first_delay is None:
            first_delay = self.backoff.offset
        if first_delay > 0:
            self._go(BACKOFF, now, now + first_delay)
            return []
        return self._spawn(now)

    def _spawn(self, now):
        if self.started_once:
            self.restarts += 1
        self.started_once = True
        self._kill_reason = None
        self.proven = False
        self.failures = 0
        self.fail_counts = {}
        self.verdicts = {}
        self.health = ""
        limit = self.p.connect_timeout * 2 + 5 if self.p.use_marker else self.p.settle
        self._go(CONNECTING, now, now + limit)
        return [Spawn()]

    def on_ready(self, now: float) -> List:
        """The session command printed its marker (or settle time passed)."""
        if self.state != CONNECTING:
            return []
        self._go(UP, now, now + self.p.stable_after)
        self.up_since = now
        self.proven = not self.p.proof_by_check
        self.connect_failures = 0
        # Soon after up: a passing check proves the session, so that losing it even a few
        # seconds later retries at once instead of escalating.
        self.next_check = now + min(self.p.interval, FIRST_CHECK_AFTER) if self.p.checks else None
        self.check_round = 0
        return []  # last_error stays: status shows what the previous session died of

    def on_timer(self, now: float) -> List:
        if self.deadline is None or now < self.deadline:
            return []
        if self.state == CONNECTING:
            if self.p.use_marker:
                self.deadline = None
                return self._kill(classify.WATCHDOG)
            return self.on_ready(now)
        if self.state == UP:
            # Stayed up long enough: the next failure reconnects at once.
            self.backoff.reset()
            self.reclaims_in_row = 0
            self.deadline = None
            return []
        if self.state == BACKOFF:
            return self._spawn(now)
        return []

    def _kill(self, reason):
        self._kill_reason = reason
        return [Kill(reason)]

    def on_exit(self, now: float, outcome: classify.Outcome, ran: Optional[bool] = None) -> List:
        """The ssh child is gone (reaped), or could not be started (`ran` None). Decide what next.

        ran: the server ran a session command of its own and ended it (classify.session_ran)."""
        if self.state == STOPPING or outcome.reason == classify.STOPPED:
            self._go(STOPPED, now)
            return []
        told = [] if ran is None else self._count_failed_connect(outcome, ran)
        return told + self._after_exit(now, outcome)

    def _count_failed_connect(self, outcome, ran):
        """The -N fallback and failover, decided before the next connect: [UseN], [Failover]."""
        told = []
        # A forced command (`command="echo tunnels only"` in authorized_keys) runs instead of
        # ours and ends the session before our ready line: as telling as a watchdog kill.
        ended_first = (ran and self.state == CONNECTING and self._kill_reason is None and not self.no_command
                       and outcome.reason in (classify.CLOSED, classify.EXITED))
        self.watchdogs = self.watchdogs + 1 if outcome.reason == classify.WATCHDOG or ended_first else 0
        if self.watchdogs >= 2 and self.p.reclaim and not self.no_command:
            # Logged in but our session command never said ready: a forced command
            # (restricted key) or no shell. Fall back to -N; reclaim cannot work there.
            self.no_command = True
            self.p.use_marker = False
            told.append(UseN())
        if self.state != UP and outcome.reason in classify.NETWORK_REASONS | {classify.WATCHDOG}:
            self.connect_failures += 1
            if self.p.addresses > 1 and self.connect_failures >= self.p.failover_after:
                old, self.addr = self.addr, (self.addr + 1) % self.p.addresses
                self.connect_failures = 0
                told.append(Failover(old, self.addr))
        return told

    def _after_exit(self, now, outcome):
        if outcome.reason != classify.RECONNECT:
            # A reconnect someone asked for (SIGUSR1, failback) is no error: keep the last real one.
            self.last_outcome = outcome
            self.last_error = outcome.reason + (": " + outcome.detail if outcome.detail else "")
        self.up_since = None
        self._wait_for_server = False
        if outcome.action == classify.FATAL:
            self._go(STOPPED, now)
            return [Fatal(outcome.detail or outcome.reason)]
        if outcome.action == classify.RECLAIM and self.p.reclaim and self.reclaims_in_row < self.p.reclaim_limit:
            self.reclaims_in_row += 1
            self._go(BACKOFF, now, None)   # the driver reports back with on_reclaimed
            return [Reclaim()]
        if outcome.action == classify.RETRY_SLOW:
            delay = self.backoff.longest()
        elif outcome.reason == classify.SERVER_BUSY:
            # sshd shed us (MaxStartups): come back soon, but not in step with the others.
            delay = self.backoff.busy()
        elif self.proven and outcome.reason != classify.RECONNECT:
            self.reclaims_in_row = 0
            delay = self.backoff.quick()
        else:
            delay = self.backoff.next()
            self._wait_for_server = outcome.reason in classify.NETWORK_REASONS
        if delay <= 0:
            return self._spawn(now)
        self._go(BACKOFF, now, now + delay)
        return []

    def on_reclaimed(self, now: float, freed: bool, soon: bool = False, held: str = "") -> List:
        """Result of a reclaim attempt: retry at once if the port was freed; in a
        moment if `soon` (nothing to reclaim: the old session is already going away);
        after the longest delay if `held` (another box's live session holds the port:
        never fight it; `held` says who, for status)."""
        if self.state != BACKOFF:
            return []
        if freed:
            self.last_heal = "reclaimed stale listener"
            return self._spawn(now)
        if held:
            self.last_error = classify.PORT_HELD + ": " + held
            self._go(BACKOFF, now, now + self.backoff.longest())
            return []
        delay = 0.4 if soon else max(self.backoff.next(), 1.0)
        self._go(BACKOFF, now, now + delay)
        return []

    def wants_server_probe(self) -> bool:
        """During a network backoff, the driver may probe the server's TCP port. With a bare
        connect only after the server's host did not answer (classify.PROBE_REASONS): after a
        refused or closed connection a probe that gets through would cost a 9.8+ hub a
        PerSourcePenalties `noauth`; a half-open probe costs nothing, so it may probe after any
        network reason. Never after a DNS failure: the probe would resolve the same name in the
        agent's one loop, and a resolver out of reach blocks for its whole timeout every time."""
        out = self.last_outcome
        reasons = classify.NETWORK_REASONS if self.p.half_open_probe else classify.PROBE_REASONS
        return (self.state == BACKOFF and self._wait_for_server and self.deadline is not None
                and bool(out) and out.reason in reasons and out.reason != classify.DNS)

    def wants_connect_probe(self, now: float, after: float) -> bool:
        """A connect going on for `after` s: the driver may probe whether it is stuck."""
        return self.state == CONNECTING and now - self.since >= after

    def on_server_answers(self, now: float, delay: float = 0.0) -> List:
        """A cheap TCP connect to the server succeeded after failing: reconnect now,
        or after `delay` (the box's fleet-spreading offset, so a fleet does not
        storm a server that just came back)."""
        if not self.wants_server_probe():
            return []
        self.last_heal = "server answered again"
        if delay > 0:
            self._wait_for_server = False
            self._go(BACKOFF, now, now + delay)
            return []
        return self._spawn(now)

    def on_check(self, now: float, name: str, verdict: str, ok: Optional[bool]) -> List:
        """A health check finished. ok: True healthy, False failed, None neutral (target down)."""
        cmds = self._judge_check(now, name, verdict, ok)
        if ok is False and self.state == UP and self.next_check is not None:
            # A failure is confirmed (or cleared) soon, not a whole interval later: a dead
            # forward is healed within about one interval, a blip still needs two checks.
            # Counted from when the round began: a no-answer has already waited its timeout.
            began = now if self.check_began is None else self.check_began
            self.next_check = min(self.next_check, max(now, began + recheck_delay(self.p.interval)))
        return cmds

    def _judge_check(self, now, name, verdict, ok):
        self.last_check = now
        self.verdicts[name] = verdict
        if self.state != UP:
            return []
        if ok is None:
            self.fail_counts.pop(name, None)
            self.failures = max(self.fail_counts.values() or [0])
            self.health = "target-down" if verdict == "target-down" else (self.health or "unknown")
            return []
        if ok:
            self.fail_counts.pop(name, None)
            self.failures = max(self.fail_counts.values() or [0])
            self.health = "ok" if not self.failures else "failing"
            self.proven = self.proven or not self.failures
            return []
        # Counted per check: an -L and an -R failing in the same round are one round, not two.
        self.fail_counts[name] = self.fail_counts.get(name, 0) + 1
        self.failures = max(self.fail_counts.values())
        self.health = "failing"
        if self.failures >= self.p.fail_threshold:
            self.last_heal = "restart after %d failed checks (%s: %s)" % (self.failures, name, verdict)
            return self._kill(classify.HEALTH)
        return []

    def on_silent(self, now: float, what: str, answered: int, responder: str) -> List:
        """A request to the session's responder went unanswered within its budget. `answered`:
        how many of its requests this session did answer. A responder that never answers in
        MUTE_SESSIONS sessions in a row is not used again: exec checks."""
        broken = ""
        if answered == 0:
            self.mute_sessions += 1
            if self.mute_sessions >= MUTE_SESSIONS and not self.responder_broken:
                broken = self.responder_broken = "the hub's %s responder never answered (%d sessions)" % (
                    responder, MUTE_SESSIONS)
        return [Silent(what, broken)] + self.on_session_silent(now, what)

    def on_answered(self) -> None:
        """The session's responder answered a request: it is not mute."""
        self.mute_sessions = 0

    def on_responder_gone(self, why: str) -> None:
        """The session's responder exited (too old an interpreter, killed): exec checks from now on."""
        self.responder_broken = "the hub's responder failed (%s)" % why

    def on_session_silent(self, now: float, detail: str) -> List:
        """A request to the session's responder went unanswered within its budget: the
        session is dead or its flow is lost for good. Restart now, not after keepalive."""
        if self.state != UP:
            return []
        self.last_heal = "restart: " + detail
        return self._kill(classify.HEALTH)

    def on_tick(self, now: float, busy: bool = False, killing: bool = False) -> List:
        """The driver's turn: the state's own deadline, then what is due (a check round, a
        failback probe, a server probe). busy: the last round is still in flight (an exec
        check, session requests); killing: the driver is stopping ssh."""
        return self.on_timer(now) + self._check_due(now, busy, killing) + self._failback_due(now) + \
            self._probe_due(now)

    def wakeups(self) -> List[float]:
        """The times on_tick has something to do at (the driver sleeps until the first)."""
        due = [self.deadline, self.next_check if self.state == UP else None, self.next_probe]
        return [t for t in due if t is not None]

    def _check_due(self, now, busy, killing):
        if not self.p.checks or self.state != UP or self.next_check is None or now < self.next_check:
            return []
        if killing:
            return []   # being restarted: a check now would only log in for nothing
        if busy:
            self.next_check = now + 1.0
            return []
        self.next_check = now + self.p.interval
        self.check_began = now
        self.check_round += 1
        return [RunChecks(self.check_round)]

    def _failback_due(self, now):
        """On an alternate: once per interval, is the primary back?"""
        if self.addr == 0 or self.state != UP or now < self.next_failback:
            return []
        self.next_failback = now + self.p.interval
        return [Probe(PRIMARY, 0, PRIMARY_PROBE_TIMEOUT, now)]

    def _probe_due(self, now):
        """Cheap TCP probes of the server: during a backoff after the server's host did not answer
        at all (wants_server_probe), and during a connect that hangs (a SYN sent into an outage
        waits out the kernel's retransmits, seconds after the link is back: dbclient has no
        connect timeout at all). The first probe that is answered is the last one in this
        state: a live server is never poked twice; ssh itself connects next."""
        if not (self.wants_server_probe() or self.wants_connect_probe(now, STUCK_CONNECT)) or self.probe_answered:
            self.next_probe = None
            self.probe_failed = False
            return []
        if self.next_probe is None:
            self.next_probe = now
        if now < self.next_probe:
            return []
        period = SERVER_PROBE_FAST if now - self.since < SERVER_PROBE_FAST_FOR else SERVER_PROBE_SLOW
        self.next_probe = now + period * self.backoff.rng.uniform(0.8, 1.2)
        return [Probe(SERVER, self.addr, SERVER_PROBE_TIMEOUT, now)]

    def on_probed(self, probe: Probe, answered: bool, took: float = 0.0) -> List:
        """What a Probe found (it took `took` s): did the server answer?"""
        now = probe.at
        if probe.what == PRIMARY:
            if not answered:
                return []
            old, self.addr = self.addr, 0
            return [Failback(old)] + self.on_reconnect_request(now)
        backoff, stuck = self.wants_server_probe(), self.wants_connect_probe(now, STUCK_CONNECT)
        if took > SLOW_PROBE:
            self.next_probe = now + took + SLOW_PROBE_PAUSE
        if not answered:
            self.probe_failed = True
            return []
        self.probe_answered = True
        self.next_probe = None
        if self.probe_failed and backoff:
            # Down, now up again: do not wait out the backoff (but keep the fleet spread).
            delay = self.backoff.offset
            return [ServerBack(delay, False)] + self.on_server_answers(now, delay)
        if self.probe_failed and stuck:
            self.probe_failed = False
            return [ServerBack(0.0, True)] + self.on_reconnect_request(now)
        return []

    def on_reconnect_request(self, now: float) -> List:
        """SIGUSR1 (e.g. an ifup hook): reset backoff, reconnect now."""
        self.backoff.reset()
        self.reclaims_in_row = 0
        if self.state in (CONNECTING, UP):
            return self._kill(classify.RECONNECT)
        if self.state == BACKOFF:
            return self._spawn(now)
        return []

    def stop(self, now: float) -> List:
        prev = self.state
        self._go(STOPPING, now)
        if prev in (CONNECTING, UP):
            return self._kill(classify.STOPPED)
        self._go(STOPPED, now)
        return []

    @property
    def kill_reason(self):
        return self._kill_reason
