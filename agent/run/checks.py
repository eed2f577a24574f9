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
"""

import time

from agent.run import clients, identity, probe

from agent.hubside import remote

from agent.core import session
from agent.core.model import hostport

TARGET_DOWN = "target-down"
LOCAL_TIMEOUT = 2.0
REMOTE_TIMEOUT_MIN = 10.0
CHECK_TIMEOUT = 3.0
LOCAL_ROUND_BUDGET = 5.0
LEARN_GRACE = 1.0   # how long a target may take to greet before it counts as "waits for the client"


def _banner(check):
    if check.startswith("banner:"):
        return check[len("banner:"):]
    return None


class Checks:
    def __init__(self, log):
        self.log = log

    def run(self, sup, r, now):
        loop_ok = self._loop(sup, r) if r.loop is not None else None
        # Without the loop check, -R forwards are checked by exec every interval (a dead
        # forward must be found within two intervals); with it, every Nth and on any failure.
        remote_due = (loop_ok is None
                      or not loop_ok
                      or r.check_round % max(1, r.t.remote_check_every) == 1
                      or r.t.remote_check_every <= 1
                      or r.m.failures > 0)
        if r.check_round % 10 == 0:  # targets that were down or silent: ask them again now and then
            r.greetings = {k: v for k, v in r.greetings.items() if v}
        checked = [f for f in r.forwards_now() if f.check != "none"]
        self._locals(sup, r, [f for f in checked if f.kind in ("L", "D")])
        if remote_due:
            self._remote(sup, r, [f for f in checked if f.kind == "R"])

    def _locals(self, sup, r, forwards):
        """Local probes run inline: bound the round so signals are never held up for long.

        Forwards not reached within LOCAL_ROUND_BUDGET are probed first next round.
        """
        if not forwards:
            return
        start = getattr(r, "probe_cursor", 0) % len(forwards)
        deadline = sup.clock() + LOCAL_ROUND_BUDGET
        for i in range(len(forwards)):
            if sup.signals or sup.clock() >= deadline:
                r.probe_cursor = start + i
                return
            self._local(sup, r, forwards[(start + i) % len(forwards)])
        r.probe_cursor = 0

    def _loop(self, sup, r):
        """A nonce through -L -> server -> -R -> us, on the tunnel's own connection."""
        res = r.loop.check(r.loop_box_port, timeout=LOCAL_TIMEOUT + 1.0)
        ok = probe.is_healthy(res)
        sup.report_check(r, "loop", res.verdict, ok, res.detail)
        return ok

    # -- local ---------------------------------------------------------------
    def _local(self, sup, r, f):
        banner = _banner(f.check)
        res = probe.probe_local(f.bind, f.port, timeout=LOCAL_TIMEOUT,
                                banner=banner.encode() if banner else None)
        sup.report_check(r, "%s:%d" % (f.kind, f.port), res.verdict, probe.is_healthy(res),
                         "%s %s" % (res.address, res.detail))

    # -- remote --------------------------------------------------------------
    def _remote(self, sup, r, forwards):
        if not forwards:
            return
        if sup.in_session(r):
            self._in_session(sup, r, forwards)
        elif r.t.check_mode != "session":
            self._exec(sup, r, forwards)

    def _in_session(self, sup, r, forwards):
        """A ping, then one check request per -R forward, to the session's responder (no login).

        The ping bounds how long a dead session goes unnoticed while a check waits out its own
        timeout; each check's budget starts when the responder is free for it."""
        banners = [_banner(f.check) or self._greeting(sup, r, f) for f in forwards]  # probes first
        if sup.session_request(r, "ping", r.requests.ping_budget(), lambda words: None) is None:
            return   # the session is being restarted: no check (and no exec login) now
        for f, banner in zip(forwards, banners):
            name = "R:%d" % f.port

            def done(words, f=f, name=name):
                if words is None:
                    sup.report_check(r, name, remote.ERROR, False, "the session's responder skipped the request")
                    return
                verdict, detail = remote.answer_verdict(words)
                self._judge(sup, r, f, verdict, detail)

            try:
                budget = remote.check_budget(f.bind, CHECK_TIMEOUT) + session.SLACK
                sent = sup.session_request(r, "check", budget, done, bind=f.bind, port=f.port, banner=banner,
                                           timeout=CHECK_TIMEOUT)
            except ValueError as exc:
                sup.report_check(r, name, "invalid", None, str(exc))
                continue
            if sent is None:
                return   # the session is being restarted

    def _exec(self, sup, r, forwards):
        """One ssh exec (one key exchange) checks every -R forward of the tunnel in turn."""
        parts, budget, todo = [], 0.0, []
        for f in forwards:
            bind = f.bind  # remote.check_addresses: '' and localhost are both 127.0.0.1 and ::1
            banner = _banner(f.check) or self._greeting(sup, r, f)
            try:
                parts.append(remote.check_command(bind, f.port, banner, CHECK_TIMEOUT))
            except ValueError as exc:
                sup.report_check(r, "R:%d" % f.port, "invalid", None, str(exc))
                continue
            budget += remote.check_budget(bind, CHECK_TIMEOUT)
            todo.append(f)
        if not todo:
            return
        if len(parts) == 1:
            cmd = parts[0]
        else:
            # Each check prints its own `sshkeep-check CODE ...` line; subshells keep one
            # check's exit from ending the others. sh -c: the login shell may be fish.
            cmd = "exec sh -c " + remote.quote("; ".join("(%s)" % p for p in parts))
        host, port = r.address
        argv = clients.build_exec_argv(r.info, r.t, cmd, host=host, port=port)

        def done(job):
            rc = job.returncode if job.returncode is not None else -1
            out, err = "\n".join(job.out), "\n".join(job.err)
            markers = [l for l in job.out if l.startswith(remote.CHECK_MARKER + " ")]
            for i, f in enumerate(todo):
                if len(todo) == 1:
                    verdict = remote.interpret_check(rc, out, err, job.timed_out, r.info.kind)
                elif i < len(markers):
                    verdict = remote.interpret_check(None, markers[i], "", False, r.info.kind)
                else:  # the exec ended before reaching this forward's check
                    verdict = remote.interpret_check(rc, "", err, job.timed_out, r.info.kind)
                self._judge(sup, r, f, verdict, job.err[-1] if job.err else "exec failed")

        job = sup.start_job(r, argv, budget + r.t.connect_timeout + 2.0, done)
        if job is not None:
            job.kind = "check"

    def _greeting(self, sup, r, f):
        """The learned greeting (str) a `connect` -R forward's target sends first, or None.

        Learned once per session by a direct probe of the target (one that was down or
        silent is asked again every 10th round); forgotten when it stops sending it."""
        if f.check != "connect":
            return None
        known = r.greetings.get(f.port, False)
        if known is not False or sup.signals:
            return known or None
        res = probe.probe_local(f.host, f.hostport, timeout=LOCAL_TIMEOUT, grace=LEARN_GRACE)
        prefix = probe.greeting_prefix(res.data) if probe.is_healthy(res) else None
        learned = prefix.decode("ascii") if prefix else None
        r.greetings[f.port] = learned
        if learned:
            self.log.info(r.name, "%s: target %s greets with %r: the remote check expects it"
                          % ("R:%d" % f.port, hostport(f.host, f.hostport), learned))
        return learned

    def _judge(self, sup, r, f, verdict, detail=""):
        name = "R:%d" % f.port
        learned = r.greetings.get(f.port) if f.check == "connect" else None
        if learned and verdict in (remote.NO_ANSWER, remote.MISMATCH):
            # Is it the tunnel or did the target change? Ask the target directly.
            direct = probe.probe_local(f.host, f.hostport, timeout=LOCAL_TIMEOUT, grace=LEARN_GRACE)
            if probe.is_healthy(direct) and probe.greeting_prefix(direct.data) == learned.encode():
                sup.report_check(r, name, verdict, False,
                                 "no %r through the forward, though the target sends it" % learned)
                return
            del r.greetings[f.port]
            if not self._target_down(sup, r, name, f, direct):
                sup.report_check(r, name, "relearn", None, "the target no longer greets with %r" % learned)
            return
        if verdict == remote.OK:
            sup.report_check(r, name, verdict, True)
        elif verdict == remote.UNREACHABLE:
            # The exec could not log in: keepalive decides about the tunnel itself.
            sup.report_check(r, name, verdict, None, detail)
        elif verdict == remote.CLOSED:
            if not self._target_down(sup, r, name, f, probe.probe_local(f.host, f.hostport, timeout=LOCAL_TIMEOUT)):
                sup.report_check(r, name, verdict, False, "target answers, so the tunnel is broken")
        else:
            sup.report_check(r, name, verdict, False)

    def _target_down(self, sup, r, name, f, direct):
        """Report target-down (restarting ssh cannot help) if the direct probe found nothing."""
        if direct.verdict not in (probe.REFUSED, probe.TIMEOUT, probe.ERROR):
            return False
        sup.report_check(r, name, TARGET_DOWN, None, "box-side target %s %s" % (hostport(f.host, f.hostport), direct.verdict))
        return True

    # -- reclaim ----------------------------------------------------------------
    def reclaim(self, sup, r):
        """Ask the hub who holds the failed -R port; end it only if it is exactly this box's own
        last session (pid and start time from its ready line, on the same server)."""
        ports = [f.port for f in r.t.forwards if f.kind == "R" and f.port]  # a hub-picked port never collides
        out = r.m.last_outcome
        failed = remote.failed_listen_port(out.detail if out else "") or (ports[0] if ports else None)
        if failed is None:
            sup.report_reclaimed(r, False)
            return
        host, port = r.address
        own = r.session if r.session and r.session["server"] == r.server_label() else None
        command = remote.reclaim_command(failed, owner=own["box"] if own else sup.box,
                                         pid=own and own["pid"], start=own and own["start"])
        argv = clients.build_exec_argv(r.info, r.t, command, host=host, port=port)

        def done(job):
            text = "\n".join(job.out)
            verdict, pid = remote.interpret_reclaim(job.returncode if job.returncode is not None else -1,
                                                    text, "\n".join(job.err), job.timed_out)
            if verdict == remote.RECLAIMED:
                self.log.warning(r.name, "reclaimed stale listener on port %d: ended this box's own last "
                                         "session (server pid %s)" % (failed, pid))
                r.session = None
                sup.report_reclaimed(r, True)
                return
            if verdict == remote.HELD:
                held = held_message(failed, remote.reclaim_holders(text), sup.box, r.name)
                if held != r.held:  # once per holder, not at every retry
                    self.log.warning(r.name, held + "; not ending it")
                sup.report_reclaimed(r, False, held=held)
                return
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
            sup.report_reclaimed(r, False, verdict == remote.NOTHING)

        job = sup.start_job(r, argv, max(REMOTE_TIMEOUT_MIN, r.t.connect_timeout + 5.0), done)
        if job is not None:
            job.kind = "reclaim"


def held_message(port, holders, box, tunnel=""):
    """'port 20022 on the hub is held by box ID, hostname H, since T' for the log and status."""
    if not holders:
        return "port %d on the hub is held by another live session" % port
    h = holders[0]
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(h["since"])) if h["since"] else "an unknown time"
    if h["box"] == box and tunnel and h["tunnel"] != identity.word(tunnel):
        return "port %d on the hub is held by this box's tunnel %s (server pid %d, since %s): give each tunnel " \
               "its own port" % (port, h["tunnel"], h["pid"], since)
    if h["box"] == box:
        return ("port %d on the hub is held by an earlier session of this box (server pid %d, tunnel %s, since %s) "
                "that this agent has no record of (state lost, e.g. at a reboot): it is never ended without "
                "proof; the hub drops it once its ClientAliveInterval notices" % (port, h["pid"], h["tunnel"], since))
    return "port %d on the hub is held by box %s, hostname %s, tunnel %s, since %s (server pid %d)%s" % (
        port, h["box"], h["host"], h["tunnel"], since, h["pid"],
        "" if len(holders) == 1 else " and %d more session(s)" % (len(holders) - 1))
