"""Requests to the responder in a tunnel's own session (agent.hubside.remote), and which check mode applies.

Pure bookkeeping: no I/O, the clock is passed in. The responder answers in
order, one request at a time, so a request's budget starts when the one
before it was answered (its "turn"). An answer is matched by its id only:
ids grow for the life of the runner and are never reused, so a stray or late
answer (an id not pending) is never taken for another request. A request
still unanswered when its budget is spent means the session is dead or its
flow is lost: the caller restarts the tunnel at once.
"""

from __future__ import annotations

if False:  # annotations only: importing typing would cost the agent 0.5 MB of memory
    from typing import List, Optional, Tuple

IN_SESSION = "in-session"
EXEC = "exec"
LOCAL_ONLY = "local only"
OFF = "off"

PING_BUDGET = 3.0       # a ping is answered in one round trip: this bounds a dead session's detection
PING_BUDGET_MAX = 15.0  # a slow link's measured round trips may stretch it up to this
RTT_FACTOR = 4.0
SLACK = 1.0             # on top of a check's own budget: transport and scheduling


class Pending:
    __slots__ = ("rid", "what", "budget", "about", "sent", "turn")

    def __init__(self, rid, what, budget, about, sent):
        self.rid, self.what, self.budget, self.about, self.sent = rid, what, budget, about, sent
        self.turn = None        # when the responder began on it (the one before was answered)

    @property
    def deadline(self) -> float:
        return self.turn + self.budget


class Requests:
    """Requests in flight on one session, in the order sent."""

    def __init__(self, first_id: int = 1):
        self.next_id = first_id
        self.pending = []        # type: List[Pending]
        self.answered = 0        # answers matched in this session
        self.strays = 0          # answers matching no pending request (ignored)
        self.rtts = []           # the last few ping round trips (s)

    def add(self, what: str, budget: float, now: float, about: object = None) -> int:
        """Register a request; returns its id (the caller builds and sends the line). `about`:
        the caller's note of what it asked (handed back with the answer)."""
        rid = self.next_id
        self.next_id += 1
        p = Pending(rid, what, float(budget), about, now)
        if not self.pending:
            p.turn = now
        self.pending.append(p)
        return rid

    def answer(self, rid: int, now: float) -> Tuple[Optional[Pending], List[Pending]]:
        """(the request this answer is for, or None for a stray; requests it skipped, never answered)."""
        idx = next((i for i, p in enumerate(self.pending) if p.rid == rid), None)
        if idx is None:
            self.strays += 1
            return None, []
        skipped, hit = self.pending[:idx], self.pending[idx]
        del self.pending[:idx + 1]
        if self.pending:
            self.pending[0].turn = now
        self.answered += 1
        if hit.what == "ping":
            self.rtts = (self.rtts + [now - hit.sent])[-8:]
        return hit, skipped

    def overdue(self, now: float) -> Optional[Pending]:
        """The request whose budget is spent unanswered, or None."""
        if self.pending and now >= self.pending[0].deadline:
            return self.pending[0]
        return None

    def deadline(self) -> Optional[float]:
        return self.pending[0].deadline if self.pending else None

    def ping_budget(self) -> float:
        """PING_BUDGET, or more on a link whose round trips were seen to be slow."""
        slowest = max(self.rtts) if self.rtts else 0.0
        return min(PING_BUDGET_MAX, max(PING_BUDGET, RTT_FACTOR * slowest))

    def clear(self) -> List[Pending]:
        """The session ended: forget what is pending (ids are not reused)."""
        gone, self.pending = self.pending, []
        self.answered = 0
        return gone


def check_mode(setting: str, checks_on: bool, remote_checked: bool, reclaim: bool, no_command: bool,
               broken: str, responder: Optional[str]) -> Tuple[str, str]:
    """(mode, why) for status: how this tunnel's -R forwards are checked.

    setting: auto | session | exec. `broken`: why the session's responder cannot be used
    (it exited, or never answered), '' if nothing went wrong. `responder`: what the
    current session's ready line named, None before (or without) one."""
    if not checks_on:
        return OFF, "--no-checks"
    if not remote_checked:
        return LOCAL_ONLY, "no -R forward to check on the hub"
    if setting == "exec":
        return EXEC, "--check-mode exec: one ssh login per check"
    if not reclaim:
        why = "reclaim is off: ssh runs -N, no session command for a responder"
    elif no_command:
        why = "the hub runs no command of ours (forced command or no shell): ssh runs -N"
    elif broken:
        why = broken
    elif responder:
        return IN_SESSION, "%s responder in the tunnel's session" % responder
    else:
        return IN_SESSION, "waiting for the session's ready line"
    if setting == "session":
        return LOCAL_ONLY, why + "; --check-mode session: no exec checks"
    return EXEC, why
