"""Backoff, jitter and the timing constants of supervision: pure numbers, no I/O.

agent.core.machine decides with these; the driver only sleeps until what they say.
"""

from __future__ import annotations

import os

from agent.core import defaults

STUCK_CONNECT = 2.0         # a connect not ready after this long may be stuck in an outage
FIRST_CHECK_AFTER = 1.0     # s after up: the first health check
SERVER_PROBE_FAST = 0.25    # during a network backoff: cheap TCP connect to the server,
SERVER_PROBE_SLOW = 1.5     # every 0.25 s for the first SERVER_PROBE_FAST_FOR s, then every 1.5 s
SERVER_PROBE_FAST_FOR = 10.0
SERVER_PROBE_TIMEOUT = 0.5
PRIMARY_PROBE_TIMEOUT = 1.0
SLOW_PROBE = 2.0            # a probe this slow stalled in the name lookup (resolver out of reach)...
SLOW_PROBE_PAUSE = 30.0     # ...so the next one waits this long: the loop stays free
MUTE_SESSIONS = 2           # sessions in a row whose responder never answered: exec checks


def recheck_delay(interval: float) -> float:
    """Seconds from a failed check to the one that confirms it."""
    return min(interval, max(1.0, interval / 5.0))


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

    def __init__(self, cap=float(defaults.MAX_BACKOFF), base=1.0, factor=2.0, jitter=0.25, offset=0.0, rng=None):
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
