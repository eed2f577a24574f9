"""Health checks for a tunnel that is up, and the stale-listener reclaim.

Keepalives only prove the SSH connection answers; these prove the forwards do.
- -L/-D: a raw local socket probe (agent.run.probe), inline, bounded (~2 s).
- -R: a request to the responder in the tunnel's own session (no new login;
  an unanswered request restarts the tunnel at once), or where the hub cannot
  run one (forced command, -N, --check-mode exec) an ssh exec on the server
  (agent.hubside.remote one-liner) run as a Job in the supervisor's loop; with the
  loop check every `remote_check_every` intervals and after any failure.
  For an exec, "could not reach the server" is not "forward dead".
- A -R that answers "closed at once": probe the box-side target directly. If
  the target is down, restarting ssh cannot help: report target-down.
- A -R whose check is plain `connect` and whose target speaks first (sshd,
  dropbear, SMTP): the target's greeting is learned by a direct probe and the
  remote check then asks for it. A stale listener on the server (the old
  session's, after a lost flow) accepts but never relays a byte, so a bare
  connect would call it healthy until keepalive gives up.

Nothing here calls the supervisor: it asks for a round's plan (which local probes, which
requests to send, which exec to run), and hands each result back to a judge here, which
returns Verdict records (Reclaimed for a reclaim). Probes of box-side targets and the loop
check run here, through the prober given (agent.run.probe, or a test's stand-in).
"""

import time

from agent.run import clients, probe

from agent.hubside import remote

from agent.core import session, values
from agent.core.model import hostport
from agent.core.record import record

TARGET_DOWN = "target-down"
LOCAL_TIMEOUT = 2.0
REMOTE_TIMEOUT_MIN = 10.0
CHECK_TIMEOUT = 3.0
LOCAL_ROUND_BUDGET = 5.0
LEARN_GRACE = 1.0   # how long a target may take to greet before it counts as "waits for the client"


@record
class Verdict:
    name: str               # the check's name: loop, L:8080, R:20022
    verdict: str
    ok: object              # True healthy, False failed, None neutral (target down, unreachable)
    detail: str = ""


@record
class Request:
    """One request for the session's responder (agent.hubside.remote.request_line)."""
    verb: str
    budget: float
    forward: object = None  # the -R forward a check is for; None: the ping
    words: object = None    # dict of request_line's keyword arguments


@record
class ExecCheck:
    """One ssh exec that checks these -R forwards in turn; judged by Checks.judge_exec."""
    argv: object
    timeout: float
    forwards: tuple


@record
class ReclaimJob:
    """One ssh exec that asks the hub who holds `port`; judged by Checks.judge_reclaim."""
    argv: object
    timeout: float
    port: int


@record
class Reclaimed:
    freed: bool             # the stale listener is gone
    nothing: bool = False   # the server had no listener of ours left to end
    held: str = ""          # who holds the port instead (another box: no fight, a long wait)


class Memory:
    """What the checks learn about one tunnel: target greetings, where the local round resumes."""

    def __init__(self):
        self.greetings = {}     # -R listen port -> the target's learned greeting, None: it sends none
        self.cursor = 0         # the local probe the next round begins with


def _banner(check):
    if check.startswith("banner:"):
        return check[len("banner:"):]
    return None


def _name(f):
    return "R:%d" % f.port


def invalid(f, exc):
    """A check that cannot even be asked (the words do not fit the request grammar)."""
    return Verdict(_name(f), "invalid", None, str(exc))


def skipped(f):
    return Verdict(_name(f), remote.ERROR, False, "the session's responder skipped the request")


class Checks:
    Verdict, ExecCheck = Verdict, ExecCheck
    invalid = staticmethod(invalid)
    skipped = staticmethod(skipped)

    def __init__(self, log, prober=probe):
        self.log = log
        self.prober = prober
        self.tunnels = {}       # tunnel name -> Memory

    def memory(self, name):
        if name not in self.tunnels:
            self.tunnels[name] = Memory()
        return self.tunnels[name]

    def session_up(self, name):
        """A new session: greetings are learned again (the target may have changed)."""
        self.memory(name).greetings.clear()

    # -- a round ---------------------------------------------------------------
    def round(self, r, rnd, clock, signals):
        """Round `rnd` of r's checks, step by step: each Verdict as soon as it is known (the
        caller reports it before it asks for the next step, so r's machine counts it), then
        the requests for the session's responder (a list of Request) or one ExecCheck.
        `signals`: the caller's pending signals, only looked at: local probes stop for them."""
        loop_ok = None
        if r.loop is not None:
            v = self.loop(r)
            loop_ok = v.ok
            yield v
        local, remote_due = self.plan(r, rnd, loop_ok, r.machine.failures)
        probes = self.locals(r.name, local, clock)
        while not signals:   # local probes run inline: a signal is never held up for long
            v = next(probes, None)
            if v is None:
                break
            yield v
        if not remote_due:
            return
        if r.in_session():
            yield self.session_requests(r, remote_due, bool(signals))
        elif r.config.check_mode != "session":
            bad, plan = self.exec_check(r, remote_due, bool(signals))
            yield from bad
            if plan is not None:
                yield plan

    def loop(self, r):
        """A nonce through -L -> server -> -R -> us, on the tunnel's own connection."""
        res = r.loop.check(r.loop_box_port, timeout=LOCAL_TIMEOUT + 1.0)
        return Verdict("loop", res.verdict, probe.is_healthy(res), res.detail)

    def plan(self, r, rnd, loop_ok, failures):
        """(local forwards, -R forwards due now) for round `rnd` of r's session.

        Without the loop check, -R forwards are checked every interval (a dead forward must
        be found within two intervals); with it, every Nth and on any failure."""
        every = r.config.remote_check_every
        remote_due = loop_ok is None or not loop_ok or rnd % max(1, every) == 1 or every <= 1 or failures > 0
        if rnd % 10 == 0:  # targets that were down or silent: ask them again now and then
            mem = self.memory(r.name)
            mem.greetings = {k: v for k, v in mem.greetings.items() if v}
        checked = [f for f in r.forwards_now() if f.check != "none"]
        return ([f for f in checked if f.kind in ("L", "D")],
                [f for f in checked if f.kind == "R"] if remote_due else [])

    def locals(self, name, forwards, clock):
        """Local probes, run inline, one verdict at a time (the caller may stop between two for a
        signal); the round ends after LOCAL_ROUND_BUDGET. Forwards not reached are probed
        first next round."""
        if not forwards:
            return
        mem = self.memory(name)
        start = mem.cursor % len(forwards)
        deadline = clock() + LOCAL_ROUND_BUDGET
        for i in range(len(forwards)):
            if clock() >= deadline:
                mem.cursor = start + i
                return
            mem.cursor = 0 if i + 1 == len(forwards) else start + i + 1   # if the caller stops after it
            yield self.local(forwards[(start + i) % len(forwards)])

    def local(self, f):
        banner = _banner(f.check)
        res = self.prober.probe_local(f.bind, f.port, timeout=LOCAL_TIMEOUT,
                                      banner=banner.encode() if banner else None)
        return Verdict("%s:%d" % (f.kind, f.port), res.verdict, probe.is_healthy(res),
                       "%s %s" % (res.address, res.detail))

    # -- remote ----------------------------------------------------------------
    def session_requests(self, r, forwards, hurry=False):
        """A ping, then one check request per -R forward, for the session's responder (no login).

        The ping bounds how long a dead session goes unnoticed while a check waits out its own
        timeout; each check's budget starts when the responder is free for it."""
        banners = [_banner(f.check) or self._greeting(r, f, hurry) for f in forwards]  # probes first
        reqs = [Request("ping", r.requests.ping_budget())]
        for f, banner in zip(forwards, banners):
            budget = remote.check_budget(f.bind, CHECK_TIMEOUT) + session.SLACK
            reqs.append(Request("check", budget, f, dict(bind=f.bind, port=f.port, banner=banner,
                                                          timeout=CHECK_TIMEOUT)))
        return reqs

    def judge_answer(self, r, f, words):
        """The responder's answer to f's check request (words None: it skipped the request)."""
        if words is None:
            return skipped(f)
        verdict, detail = remote.answer_verdict(words)
        return self.judge(r, f, verdict, detail)

    def exec_check(self, r, forwards, hurry=False):
        """(verdicts of checks that cannot be asked, ExecCheck or None): one ssh exec (one key
        exchange) checks every -R forward of the tunnel in turn."""
        parts, budget, todo, bad = [], 0.0, [], []
        for f in forwards:
            bind = f.bind  # remote.check_addresses: '' and localhost are both 127.0.0.1 and ::1
            banner = _banner(f.check) or self._greeting(r, f, hurry)
            try:
                parts.append(remote.check_command(bind, f.port, banner, CHECK_TIMEOUT))
            except ValueError as exc:
                bad.append(invalid(f, exc))
                continue
            budget += remote.check_budget(bind, CHECK_TIMEOUT)
            todo.append(f)
        if not todo:
            return bad, None
        if len(parts) == 1:
            cmd = parts[0]
        else:
            # Each check prints its own `sshkeep-check CODE ...` line; subshells keep one
            # check's exit from ending the others. sh -c: the login shell may be fish.
            cmd = "exec sh -c " + remote.quote("; ".join("(%s)" % p for p in parts))
        host, port = r.address
        argv = clients.build_exec_argv(r.info, r.tunnel, cmd, host=host, port=port)
        return bad, ExecCheck(argv, budget + r.config.connect_timeout + 2.0, tuple(todo))

    def judge_exec(self, r, plan, job):
        """The verdicts of an ExecCheck's finished job, one per forward."""
        rc = job.returncode if job.returncode is not None else -1
        out, err = "\n".join(job.out), "\n".join(job.err)
        markers = [l for l in job.out if l.startswith(remote.CHECK_MARKER + " ")]
        found = []
        for i, f in enumerate(plan.forwards):
            if len(plan.forwards) == 1:
                verdict = remote.interpret_check(rc, out, err, job.timed_out, r.info.kind)
            elif i < len(markers):
                verdict = remote.interpret_check(None, markers[i], "", False, r.info.kind)
            else:  # the exec ended before reaching this forward's check
                verdict = remote.interpret_check(rc, "", err, job.timed_out, r.info.kind)
            found.append(self.judge(r, f, verdict, job.err[-1] if job.err else "exec failed"))
        return found

    def _greeting(self, r, f, hurry=False):
        """The learned greeting (str) a `connect` -R forward's target sends first, or None.

        Learned once per session by a direct probe of the target (one that was down or
        silent is asked again every 10th round); forgotten when it stops sending it.
        hurry: a signal waits, no probe now."""
        if f.check != "connect":
            return None
        greetings = self.memory(r.name).greetings
        known = greetings.get(f.port, False)
        if known is not False or hurry:
            return known or None
        res = self.prober.probe_local(f.host, f.hostport, timeout=LOCAL_TIMEOUT, grace=LEARN_GRACE)
        prefix = probe.greeting_prefix(res.data) if probe.is_healthy(res) else None
        learned = prefix.decode("ascii") if prefix else None
        greetings[f.port] = learned
        if learned:
            self.log.info(r.name, "%s: target %s greets with %r: the remote check expects it"
                          % (_name(f), hostport(f.host, f.hostport), learned))
        return learned

    def judge(self, r, f, verdict, detail=""):
        """The Verdict on a -R forward's remote check (from an exec or the session's responder)."""
        name = _name(f)
        greetings = self.memory(r.name).greetings
        learned = greetings.get(f.port) if f.check == "connect" else None
        if learned and verdict in (remote.NO_ANSWER, remote.MISMATCH):
            # Is it the tunnel or did the target change? Ask the target directly.
            direct = self.prober.probe_local(f.host, f.hostport, timeout=LOCAL_TIMEOUT, grace=LEARN_GRACE)
            if probe.is_healthy(direct) and probe.greeting_prefix(direct.data) == learned.encode():
                return Verdict(name, verdict, False, "no %r through the forward, though the target sends it" % learned)
            del greetings[f.port]
            return (_target_down(name, f, direct) or
                    Verdict(name, "relearn", None, "the target no longer greets with %r" % learned))
        if verdict == remote.OK:
            return Verdict(name, verdict, True)
        if verdict == remote.UNREACHABLE:
            # The exec could not log in: keepalive decides about the tunnel itself.
            return Verdict(name, verdict, None, detail)
        if verdict == remote.CLOSED:
            return (_target_down(name, f, self.prober.probe_local(f.host, f.hostport, timeout=LOCAL_TIMEOUT)) or
                    Verdict(name, verdict, False, "target answers, so the tunnel is broken"))
        return Verdict(name, verdict, False)

    # -- reclaim ----------------------------------------------------------------
    def reclaim(self, r, box):
        """The ReclaimJob that asks the hub who holds the failed -R port (None: no port to ask
        about); it ends the holder only if it is exactly this box's own last session (pid and
        start time from its ready line, on the same server)."""
        ports = [f.port for f in r.config.forwards if f.kind == "R" and f.port]  # a hub-picked port never collides
        out = r.machine.last_outcome
        failed = remote.failed_listen_port(out.detail if out else "") or (ports[0] if ports else None)
        if failed is None:
            return None
        host, port = r.address
        own = r.session if r.session and r.session["server"] == r.server_label() else None
        command = remote.reclaim_command(failed, owner=own["box"] if own else box,
                                         pid=own and own["pid"], start=own and own["start"])
        argv = clients.build_exec_argv(r.info, r.tunnel, command, host=host, port=port)
        return ReclaimJob(argv, max(REMOTE_TIMEOUT_MIN, r.config.connect_timeout + 5.0), failed)

    def judge_reclaim(self, r, plan, job, box):
        """What a ReclaimJob's finished job found (logged here): Reclaimed."""
        text, failed = "\n".join(job.out), plan.port
        verdict, pid = remote.interpret_reclaim(job.returncode if job.returncode is not None else -1,
                                                text, "\n".join(job.err), job.timed_out)
        if verdict == remote.RECLAIMED:
            self.log.warning(r.name, "reclaimed stale listener on port %d: ended this box's own last "
                                     "session (server pid %s)" % (failed, pid))
            return Reclaimed(True)
        if verdict == remote.HELD:
            held = held_message(failed, remote.reclaim_holders(text), box, r.name)
            if held != r.held:  # once per holder, not at every retry
                self.log.warning(r.name, held + "; not ending it")
            return Reclaimed(False, held=held)
        if verdict == remote.NOTHING:
            why = ("no session on the hub is registered for port %d: the old session is going away, or "
                   "the listener is another user's or a tunnel run with -N (not ended)" % failed)
        else:
            detail = "timed out" if job.timed_out else \
                (job.err[-1] if job.err else "") or "exit %s" % job.returncode
            if any(" other-uid " in line for line in job.out):
                # measured: dropbear 2022.83 keeps the session process root's (2025.89 does not)
                detail = ("its session process runs as another user: on a dropbear server that keeps "
                          "sessions root's, only a root tunnel user can end it")
            why = "could not reclaim port %d on the server (%s: %s)" % (failed, verdict, detail)
        self.log.warning(r.name, why + "; waiting for the server to drop the old session (set "
                                       "ClientAliveInterval there)")
        return Reclaimed(False, verdict == remote.NOTHING)


def _target_down(name, f, direct):
    """target-down (restarting ssh cannot help) if the direct probe found nothing, else None."""
    if direct.verdict not in (probe.REFUSED, probe.TIMEOUT, probe.ERROR):
        return None
    return Verdict(name, TARGET_DOWN, None, "box-side target %s %s" % (hostport(f.host, f.hostport), direct.verdict))

def held_message(port, holders, box, tunnel=""):
    """'port 20022 on the hub is held by box ID, hostname H, since T' for the log and status."""
    if not holders:
        return "port %d on the hub is held by another live session" % port
    h = holders[0]
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(h["since"])) if h["since"] else "an unknown time"
    if h["box"] == box and tunnel and h["tunnel"] != values.word(tunnel):
        return "port %d on the hub is held by this box's tunnel %s (server pid %d, since %s): give each tunnel " \
               "its own port" % (port, h["tunnel"], h["pid"], since)
    if h["box"] == box:
        return ("port %d on the hub is held by an earlier session of this box (server pid %d, tunnel %s, since %s) "
                "that this agent has no record of (state lost, e.g. at a reboot): it is never ended without "
                "proof; the hub drops it once its ClientAliveInterval notices" % (port, h["pid"], h["tunnel"], since))
    return "port %d on the hub is held by box %s, hostname %s, tunnel %s, since %s (server pid %d)%s" % (
        port, h["box"], h["host"], h["tunnel"], since, h["pid"],
        "" if len(holders) == 1 else " and %d more session(s)" % (len(holders) - 1))
