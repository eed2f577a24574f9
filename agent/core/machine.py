"""The supervision state machine and backoff: decisions only, no I/O.

The driver (agent.run.supervisor) feeds events with the current monotonic time and
carries out the commands returned. Tests drive it with plain numbers.

    connecting --ready--> up --exit/health--> (reconnect at once, or backoff)
        |                                          |
        +--exit/watchdog--> backoff --timer/server answers--> connecting

A session that came up and passed a check proved the path works: losing it later
(a hub that cuts sessions, a NAT that forgets them) retries within a second and
starts the backoff over. Only sessions that die before that escalate, so a crash
loop (dies before ready, or fails its checks) still backs off.
"""

from __future__ import annotations

import os

from agent.core import classify as C
from agent.core.record import record

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


BUSY_LOW, BUSY_HIGH = 0.5, 3.0


def busy_delay(drops: int, u: float, cap: float) -> float:
    """The wait after the `drops`-th server-busy drop in a row (1, 2, ...); u in [0, 1) spreads a fleet.

    A random 0.5-3 s at first (MaxStartups sheds load at random: soon is fine), doubling with each
    further drop up to `cap`: a server that keeps closing us before the key exchange (a port that
    accepts and closes, a PerSourcePenalties refusal that each retry would renew) is not asked again
    every couple of seconds for ever."""
    scale = 2.0 ** min(max(drops, 1) - 1, 16)
    return min(cap, (BUSY_LOW + (BUSY_HIGH - BUSY_LOW) * u) * scale)


class Jitter:
    """random() and uniform() from os.urandom: the `random` module would cost the resident
    agent ~0.1 MB (random, math, bisect, _sha512) for a few jittered delays."""

    def random(self) -> float:
        return int.from_bytes(os.urandom(7), "big") / 72057594037927936.0  # [0, 1), 56 bits

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.random()


class Backoff:
    """Exponential backoff with jitter; attempt 0 is immediate.

    Sequence (before jitter): 0, base, 2*base, 4*base ... capped at `cap`.
    `offset` spreads a fleet: a per-box constant added to every non-zero delay.
    """

    def __init__(self, cap=60.0, base=1.0, factor=2.0, jitter=0.25, offset=0.0, rng=None):
        self.cap = float(cap)
        self.base = float(base)
        self.factor = float(factor)
        self.jitter = float(jitter)
        self.offset = float(offset)
        self.rng = rng or Jitter()
        self.attempt = 0
        self.busy_drops = 0
        # The exponent stops growing once base * factor**e passes the cap: factor**(n-1) itself
        # raises OverflowError at n = 1025 (2.0), about 16 h into an outage at a 60 s cap.
        self._top = 0
        try:
            while self.factor > 1 and self.base * self.factor ** self._top < self.cap and self._top < 1000:
                self._top += 1
        except OverflowError:  # an infinite cap: factor**_top is then the largest finite step
            self._top -= 1

    def next(self) -> float:
        n = self.attempt
        self.attempt += 1
        if n == 0:
            return 0.0
        raw = min(self.cap, self.base * (self.factor ** min(n - 1, self._top)))
        spread = raw * self.jitter * (2 * self.rng.random() - 1)
        return max(0.0, min(self.cap, raw + spread) + self.offset)

    def quick(self) -> float:
        """After losing a proven session: back within a quarter second, jittered (a hub that cut
        every box at once does not get them back in step); escalation starts over."""
        self.attempt = 1
        return self.rng.uniform(0.0, 0.25) + self.offset

    def busy(self) -> float:
        """A server shedding load: a random delay (so a fleet does not retry in step) that grows
        with each drop in a row (busy_delay)."""
        self.busy_drops += 1
        return busy_delay(self.busy_drops, self.rng.random(), max(self.cap, BUSY_HIGH)) + self.offset

    def longest(self) -> float:
        self.attempt += 1
        return self.cap + self.offset

    def reset(self):
        self.attempt = 0
        self.busy_drops = 0


@record(frozen=False)
class Policy:
    connect_timeout: float = 15.0   # no ready signal by then -> kill (WATCHDOG)
    settle: float = 3.0             # without a ready marker: alive this long = up
    use_marker: bool = True         # the session command prints a ready line
    stable_after: float = 30.0      # up this long (checks passing) -> backoff resets
    proof_by_check: bool = True     # a session is proven by a passing check (False: no checks run,
                                    # the ready line is all the proof there is)
    fail_threshold: int = 2         # consecutive failed checks -> restart
    max_backoff: float = 60.0
    reclaim: bool = True
    reclaim_limit: int = 3          # reclaims in a row before we give up and back off
    half_open_probe: bool = False   # the driver's server probe is a half-open SYN (costs the hub nothing)


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

    # -- helpers
    def _go(self, state, now, deadline=None):
        self.state = state
        self.since = now
        self.deadline = deadline

    # -- events
    def start(self, now: float, first_delay: float = 0.0) -> List:
        """Begin supervising; `first_delay` spreads a fleet's first connect."""
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
        return []  # last_error stays: status shows what the previous session died of

    def on_timer(self, now: float) -> List:
        if self.deadline is None or now < self.deadline:
            return []
        if self.state == CONNECTING:
            if self.p.use_marker:
                self.deadline = None
                return self._kill(C.WATCHDOG)
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

    def on_exit(self, now: float, outcome: C.Outcome) -> List:
        """The ssh child is gone (reaped). Decide what next."""
        if self.state == STOPPING or outcome.reason == C.STOPPED:
            self._go(STOPPED, now)
            return []
        if outcome.reason != C.RECONNECT:
            # A reconnect someone asked for (SIGUSR1, failback) is no error: keep the last real one.
            self.last_outcome = outcome
            self.last_error = outcome.reason + (": " + outcome.detail if outcome.detail else "")
        self.up_since = None
        self._wait_for_server = False
        if outcome.action == C.FATAL:
            self._go(STOPPED, now)
            return [Fatal(outcome.detail or outcome.reason)]
        if outcome.action == C.RECLAIM and self.p.reclaim and self.reclaims_in_row < self.p.reclaim_limit:
            self.reclaims_in_row += 1
            self._go(BACKOFF, now, None)   # the driver reports back with on_reclaimed
            return [Reclaim()]
        if outcome.action == C.RETRY_SLOW:
            delay = self.backoff.longest()
        elif outcome.reason == C.SERVER_BUSY:
            # sshd shed us (MaxStartups): come back soon, but not in step with the others.
            delay = self.backoff.busy()
        elif self.proven and outcome.reason != C.RECONNECT:
            self.reclaims_in_row = 0
            delay = self.backoff.quick()
        else:
            delay = self.backoff.next()
            self._wait_for_server = outcome.reason in C.NETWORK_REASONS
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
            self.last_error = C.PORT_HELD + ": " + held
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
        reasons = C.NETWORK_REASONS if self.p.half_open_probe else C.PROBE_REASONS
        return (self.state == BACKOFF and self._wait_for_server and self.deadline is not None
                and bool(out) and out.reason in reasons and out.reason != C.DNS)

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
            return self._kill(C.HEALTH)
        return []

    def on_session_silent(self, now: float, detail: str) -> List:
        """A request to the session's responder went unanswered within its budget: the
        session is dead or its flow is lost for good. Restart now, not after keepalive."""
        if self.state != UP:
            return []
        self.last_heal = "restart: " + detail
        return self._kill(C.HEALTH)

    def on_reconnect_request(self, now: float) -> List:
        """SIGUSR1 (e.g. an ifup hook): reset backoff, reconnect now."""
        self.backoff.reset()
        self.reclaims_in_row = 0
        if self.state in (CONNECTING, UP):
            return self._kill(C.RECONNECT)
        if self.state == BACKOFF:
            return self._spawn(now)
        return []

    def stop(self, now: float) -> List:
        prev = self.state
        self._go(STOPPING, now)
        if prev in (CONNECTING, UP):
            return self._kill(C.STOPPED)
        self._go(STOPPED, now)
        return []

    @property
    def kill_reason(self):
        return self._kill_reason
