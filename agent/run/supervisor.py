"""The driver: spawns ssh, reads its output, carries out the machine's commands.

Single-threaded: one selector over every child's stdout/stderr and a signal
self-pipe, a bounded timeout to the next deadline. It decides nothing: agent.core.machine
says when to connect, check, probe the server, fail over or back and fall back to -N;
agent.core.classify what an exit means; agent.run.checks what a check found. It is the
only one that acts. The clock, the ssh children (spawner, job), the prober and the
selector are passed in: tests/unit/test_supervisor_loop.py runs the loop with fakes of each.
"""

import os
import selectors
import signal
import sys
import time

from agent import __version__
from agent.core import classify, machine
from agent.errors import SshkeepError
from agent.hubside import remote
from agent.run import clients, identity, probe, state
from agent.run.child import Child, Job
from agent.run.tunnel import NotStarted, make_runner, resume_sessions

TERM_TIMEOUT = 2.0          # TERM -> KILL for ssh children (procd gives us 5 s in all)


class Supervisor:
    def __init__(self, settings, log, clock=time.monotonic, wall=time.time, detect=clients.detect,
                 reload_settings=None, checks=None, spawner=Child, job=Job, prober=probe,
                 selector=selectors.DefaultSelector, previous_state=None):
        self.settings = settings
        self.log = log
        self.clock = clock
        self.wall = wall
        self.detect = detect
        self.reload_settings = reload_settings
        self.checks = checks            # agent.run.checks.Checks or None
        self.spawner = spawner          # Child(argv, env, clock): the tunnel's ssh
        self.job = job                  # Job(argv, env, timeout, clock): an ssh exec (check, reclaim)
        self.prober = prober            # probe_syn / probe_tcp of the server (agent.run.probe)
        self.selector = selector
        self.previous_state = previous_state  # dict: the state file at start, if the caller read it
        self.half_open = prober.half_open_available()  # SYN probes: no noauth on 9.8+ hubs
        self.runners = []
        self.sel = self._sig_r = None
        self.fd_owner = {}              # fd -> (runner, one of its jobs or None for its ssh child)
        self.signals = []
        self.stopping, self.exit_code = False, 0
        self.started_wall = wall()
        self._state_dirty, self._last_state_write, self._state_error = True, 0.0, ""
        self.runtime_dir = settings.state + ".d"
        self._digest_of = (None, "")    # (settings, state.digest(settings))
        self.box = None                 # agent.run.identity.box_id, read (or made) by prepare()

    # -- setup ------------------------------------------------------------
    def _make_runner(self, t):
        return make_runner(t, self.detect(t.ssh_path, t.client), self.checks is not None, self.half_open, self.log)

    def _signal_setup(self):
        rfd, wfd = os.pipe()
        for fd in (rfd, wfd):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        self._sig_r = rfd
        signal.set_wakeup_fd(wfd)
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD):
            signal.signal(s, lambda signum, frame: self.signals.append(signum))
        self.sel.register(rfd, selectors.EVENT_READ, None)

    # -- main loop --------------------------------------------------------
    def prepare(self):
        """Detect clients and check keys for every tunnel: errors surface before we detach."""
        if self.box is None:
            self.box = self._box_id()
        if not self.runners:
            self.runners = [self._make_runner(t) for t in self.settings.tunnels]
            resume_sessions(self.runners, self._previous_state(), self.box)
        try:
            state.private_dir(self.runtime_dir)  # dbclient's private HOMEs
        except (OSError, SshkeepError) as exc:
            if os.path.lexists(self.runtime_dir):
                raise  # there but not ours, or a symlink: never write through it
            self.log.error("", str(exc))  # cannot be made (full or read-only): those tunnels report it

    def _previous_state(self):
        """The state file as this agent found it: read by the start-up process and passed on
        (serve.py), so the running agent needs no json; else read here."""
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

    def run(self) -> int:
        self.prepare()
        self.sel = self.selector()
        self._signal_setup()
        self.start()
        try:
            while True:
                self.turn()
                if self.stopping and not any(r.child or r.jobs for r in self.runners):
                    break
        finally:
            for r in self.runners:
                self._stop_now(r)
            self._write_state(force=True)
        return self.exit_code

    def start(self):
        """Every tunnel's machine starts (after its fleet-spreading offset)."""
        if self.sel is None:
            self.sel = self.selector()
        now = self.clock()
        for r in self.runners:
            self._carry(r, r.machine.start(now))
        self._write_state(force=True)

    def _next_timeout(self):
        deadlines = []
        for r in self.runners:
            deadlines += r.wakeups(TERM_TIMEOUT)
        interval = min([r.config.interval for r in self.runners] or [30])
        deadlines.append(self._last_state_write + max(1.0, interval / 2.0))
        return max(0.0, min(5.0, min(deadlines) - self.clock()))

    def turn(self):
        """One turn of the loop: read what is there, then let every machine say what is due."""
        for key, _ in self.sel.select(self._next_timeout()):
            self._readable(key.fd)
        self._handle_signals()
        now = self.clock()
        for r in list(self.runners):
            self._poll_child(r, now)
            self._poll_jobs(r)
            self._poll_requests(r, now)
            if r.stopping_child():
                r.child.escalate(TERM_TIMEOUT)
            if not self.stopping:
                self._carry(r, r.machine.on_tick(now, r.checking(), r.stopping_child()))
        self._write_state()

    def _readable(self, fd):
        if fd == self._sig_r:
            try:
                while os.read(fd, 512):
                    pass
            except OSError:
                pass
            return
        owner = self.fd_owner.get(fd)
        if owner is None:
            self._unwatch(fd)
            return
        r, job = owner
        if job is None:
            self._read_child(r, fd)
            return
        job.pump(fd)
        if fd not in job.fds():
            self._unwatch(fd)

    # -- children ---------------------------------------------------------
    def _watch(self, fd, r, job=None):
        self.fd_owner[fd] = (r, job)
        self.sel.register(fd, selectors.EVENT_READ, None)

    def _unwatch(self, fd):
        self.fd_owner.pop(fd, None)
        try:
            self.sel.unregister(fd)
        except (KeyError, ValueError):
            pass

    def _spawn(self, r):
        try:
            argv, with_command, learn = r.ssh_argv(self.box, r.wants_responder(self.checks is not None), self.runtime_dir)
        except NotStarted as exc:  # configuration the operator must fix
            self.log.error(r.name, str(exc))
            self._carry(r, r.machine.on_exit(self.clock(), exc.outcome))
            return
        t = r.ssh_tunnel
        child = self.spawner(argv, clients.child_env(os.environ, r.home), self.clock)
        if not child.start():
            self.log.error(t.name, "cannot run %s: %s" % (argv[0], child.spawn_error))
            self._carry(r, r.machine.on_exit(self.clock(), classify.classify(None, [child.spawn_error])))
            return
        if learn:
            # First contact: answer dbclient's "continue connecting? (y/n)" once, on its stdin
            # (no tty: its own session). It records the key; _save_pin copies it to the pin file.
            child.send(b"y\n")
            self.log.warning(t.name, "first contact with %s: accepting its host key and pinning it in %s"
                             % (r.server_label(), t.known_hosts))
        r.started(child, with_command)
        for fd in child.fds():
            self._watch(fd, r)
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
                    r.responder_named(remote.ready_responder(line), self.checks is not None)
                    self._maybe_start_responder(r)
                    r.ready(ready, self.box)
                    self._carry(r, r.machine.on_ready(self.clock()))
        if eof:
            self._unwatch(fd)
            child.close_fd(fd)

    def _ssh_said(self, r, line):
        text, news = r.said(line)
        (self.log.info if news else self.log.debug)(r.name, text)

    def _transition(self, r):
        """Side effects of entering a state (logging, the pin, what the checks learnt)."""
        self._state_dirty = True
        m = r.machine
        if m.state == machine.UP:
            self._save_pin(r)
            if self.checks is not None:
                self.checks.session_up(r.name)
            self.log.info(r.name, r.up_line())
        elif m.state == machine.BACKOFF and m.deadline is not None:
            self.log.info(r.name, "retrying in %.1fs" % max(0.0, m.deadline - self.clock()))

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
        r.ended()
        self._save_pin(r)
        outcome, ran, said = r.exit_report(child)
        for level, text in said:
            getattr(self.log, level)(r.name, text)
        self._carry(r, r.machine.on_exit(now, outcome, ran))
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

    # -- commands from the machine ---------------------------------------
    def _carry(self, r, commands):
        """Carry out the commands r's machine returned for one event; note a state change."""
        for cmd in commands:
            self._do(r, cmd)
            self._state_dirty = True
        if r.seen_changed():
            self._transition(r)

    def _do(self, r, cmd):
        if isinstance(cmd, machine.Spawn):
            self._spawn(r)
        elif isinstance(cmd, machine.Kill):
            if r.child:
                self.log.info(r.name, "stopping ssh pid %d (%s)" % (r.child.pid, cmd.reason))
                r.child.close_stdin()
                r.child.terminate()
        elif isinstance(cmd, machine.Reclaim):
            self._reclaim(r)
        elif isinstance(cmd, machine.Fatal):
            self.log.error(r.name, "giving up: %s" % cmd.message)
            self.exit_code = 69
            self._begin_stop()
        elif isinstance(cmd, machine.Probe):
            host, port = r.addresses[cmd.index]
            began = self.clock()
            answered = self._server_answers(host, port, cmd.timeout)
            self._carry(r, r.machine.on_probed(cmd, answered, self.clock() - began))
        elif isinstance(cmd, machine.RunChecks):
            self._run_checks(r, cmd.round)
        elif isinstance(cmd, machine.Silent):
            if cmd.broken:
                self.log.warning(r.name, cmd.broken + ": exec checks from now on")
            r.responder_lost()
            self.log.warning(r.name, "%s: the session is dead or its flow is lost; restarting" % cmd.what)
        else:
            level, text = r.describe(cmd)
            getattr(self.log, level)(r.name, text)

    def _server_answers(self, host, port, timeout):
        """Does the server listen? A half-open SYN probe when we may (root): the server never sees
        a connection; else a bare connect, which costs our source address a `noauth` second on
        OpenSSH 9.8+ (PerSourcePenalties): the machine probes sparingly (wants_server_probe)."""
        if self.half_open:
            answer = self.prober.probe_syn(host, port, timeout)
            if answer is not None:
                return answer
        return self.prober.probe_tcp(host, port, timeout=timeout)

    def _reclaim(self, r):
        plan = self.checks.reclaim(r, self.box) if self.checks is not None else None
        if plan is None:   # no checks (the hub is not asked), or no port to ask about
            self._reclaimed(r, False)
        else:
            self._start_job(r, "reclaim", plan)

    def _reclaimed(self, r, freed, nothing=False, held=""):
        """The reclaim's outcome (freed: the stale listener is gone; nothing: the server had no
        listener of ours left to end; held: who holds the port instead, for the log and status:
        another box, so no fight, a long wait)."""
        r.reclaimed(freed, held)
        self._carry(r, r.machine.on_reclaimed(self.clock(), freed, nothing, held))

    # -- checks -------------------------------------------------------------
    def _run_checks(self, r, rnd):
        """Round `rnd` of r's checks, carried out step by step as agent.run.checks plans it."""
        for step in self.checks.round(r, rnd, self.clock, self.signals):
            if isinstance(step, self.checks.Verdict):
                self._report(r, step)
            elif isinstance(step, self.checks.ExecCheck):
                self._start_job(r, "check", step)
            else:
                self._send_checks(r, step)

    def _report(self, r, v):
        """A check's Verdict: logged when it changed, then the machine's event."""
        if r.machine.verdicts.get(v.name) != v.verdict:
            if v.ok:
                r.healthy_again()
            lvl = self.log.info if v.ok else self.log.warning
            lvl(r.name, "check %s: %s%s" % (r.check_label(v.name), v.verdict, " (%s)" % v.detail if v.detail else ""))
        self._carry(r, r.machine.on_check(self.clock(), v.name, v.verdict, v.ok))
        self._state_dirty = True

    # -- in-session checks (the responder in the tunnel's own session) ----
    def _maybe_start_responder(self, r):
        """Hand the session's responder its program, once it is due (Runner.responder_due)."""
        name = r.responder_due()
        if name is None:
            return
        if not r.child.send_nowait(remote.responder_source(name)):
            r.responder_started(None)
            self.log.warning(r.name, "could not hand the hub's responder its program: exec checks for now")
            return
        r.responder_started(name)
        self.log.debug(r.name, "hub runs the %s responder: -R checks go through the session" % name)

    def _send_checks(self, r, requests):
        """The ping, then the check requests; none once one cannot be sent (no responder now)."""
        for q in requests:
            try:
                sent = self._request(r, q)
            except ValueError as exc:   # words the request grammar cannot carry
                self._report(r, self.checks.invalid(q.forward, exc))
                continue
            if sent is None:
                return   # the session is being restarted: no check (and no exec login) now

    def _request(self, r, q):
        """Send one request to r's responder. Returns its id, or None if it could not be sent."""
        if not r.in_session():
            return None
        now = self.clock()
        line = remote.request_line(r.requests.next_id, q.verb, **(q.words or {}))
        if not r.child.send_nowait(line):
            # ssh does not take our stdin: the session is wedged
            self._silent(r, now, "ssh does not read the session's requests")
            return None
        return r.requests.add(q.verb, q.budget, now, q.forward)

    def _answer(self, r, line):
        settled = r.settled_by(line, self.clock())
        if settled is None:
            self.log.debug(r.name, "ignored an answer no request is waiting for: %s" % line[:120])
            return
        if settled:
            r.machine.on_answered()
        for about, words in settled:
            self._answered(r, about, words)

    def _answered(self, r, about, words):
        """The answer to a request about a forward (words None: the responder skipped it)."""
        if about is None:
            return   # the ping: an answer is all it asks for
        try:
            self._report(r, self.checks.judge_answer(r, about, words))
        except Exception as exc:  # a check must never kill the agent
            self.log.error(r.name, "check failed internally: %r" % (exc,))

    def _poll_requests(self, r, now):
        p = r.requests.overdue(now)
        if p is not None:
            self._silent(r, now, "no answer from the session to its %s request in %.1fs" % (p.what, p.budget))

    def _silent(self, r, now, what):
        """An unanswered request is a verdict: the session is dead or its flow is lost."""
        self._carry(r, r.machine.on_silent(now, what, r.requests.answered, r.responder or ""))

    def _responder_gone(self, r, why):
        """The session's responder exited (too old an interpreter, killed): exec checks for this tunnel."""
        if not r.responder:
            return
        r.machine.on_responder_gone(why)
        for p in r.responder_lost():
            self._answered(r, p.about, None)
        self.log.warning(r.name, r.machine.responder_broken + ": exec checks from now on")
        self._state_dirty = True

    # -- jobs (ssh exec for checks and reclaim) --------------------------
    def _start_job(self, r, kind, plan):
        job = self.job(plan.argv, clients.child_env(os.environ, r.home), plan.timeout, self.clock)
        if not job.start():
            self._job_done(r, kind, plan, job)
            return
        r.add_job(job, kind, plan)
        for fd in job.fds():
            self._watch(fd, r, job)

    def _poll_jobs(self, r):
        for job, kind, plan in list(r.jobs):
            if job.check():
                for fd in [fd for fd, owner in self.fd_owner.items() if owner[1] is job]:
                    self._unwatch(fd)
                r.drop_job(job)
                self._job_done(r, kind, plan, job)

    def _job_done(self, r, kind, plan, job):
        try:
            if kind == "check":
                for v in self.checks.judge_exec(r, plan, job):
                    self._report(r, v)
            else:
                found = self.checks.judge_reclaim(r, plan, job, self.box)
                self._reclaimed(r, found.freed, found.nothing, found.held)
        except Exception as exc:  # a check must never kill the agent
            self.log.error(r.name, "check failed internally: %r" % (exc,))

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
                    self._carry(r, r.machine.on_reconnect_request(now))

    def _begin_stop(self):
        if self.stopping:
            return
        self.stopping = True
        now = self.clock()
        for r in self.runners:
            self._carry(r, r.machine.stop(now))
            for job, _, _ in r.jobs:
                job.hurry(1.0)  # a check in flight must not hold up the stop (procd KILLs us after 5 s)

    def _reload(self):
        if self.reload_settings is None:
            self.log.info("", "SIGHUP: nothing to reload (tunnels given on the command line)")
            return
        try:
            new = self.reload_settings()
        except Exception as exc:
            self.log.error("", "reload failed, keeping the running configuration: %s"
                           % "; ".join(str(exc).splitlines()))  # a file's errors (one a line) on one log line
            return
        old, keep, now = {r.name: r for r in self.runners}, [], self.clock()
        for t in new.tunnels:
            r = old.pop(t.name, None)
            if r is not None and r.config == t:
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
            self._carry(nr, nr.machine.start(now))
        for r in old.values():
            self.log.info(r.name, "removed from configuration: stopping")
            self._stop_now(r)
        self.runners = keep
        self.settings = new
        for w in new.warnings:
            self.log.warning("", "config: " + w)
        self.log.info("", "reloaded: %d tunnel(s) over %d ssh connection(s)" % (
            sum(len(r.config.forwards) for r in keep), len(keep)))
        self._state_dirty = True

    def _stop_now(self, r):
        """Blocking, bounded stop of a runner's child and jobs."""
        r.machine.stop(self.clock())
        r.close()
        if r.child:
            for fd in list(r.child.fds()):
                self._unwatch(fd)
            r.child.close_stdin()
            r.child.stop(term_timeout=TERM_TIMEOUT, kill_timeout=1.0)
            r.ended()
        for job, _, _ in list(r.jobs):
            for fd in list(job.fds()):
                self._unwatch(fd)
            job.child.stop(term_timeout=0.5, kill_timeout=1.0)
            r.drop_job(job)

    # -- state ------------------------------------------------------------------
    def state_doc(self):
        wall_now = self.wall()
        mono_now = self.clock()
        tunnels = [r.status(wall_now, mono_now, self.checks is not None) for r in self.runners]
        children = [r.child.cmdline_record() for r in self.runners if r.child]
        return {"pid": os.getpid(), "version": __version__, "started": self.started_wall, "box_id": self.box,
                # `check` judges freshness on the monotonic clock: the wall clock of a box
                # without an RTC jumps at boot when NTP sets it.
                "updated": wall_now, "monotonic": mono_now, "pidfile": self.settings.pidfile, "tunnels": tunnels,
                # `status` calls the agent hung after STALE_INTERVALS of these without a write
                "interval": min([r.config.interval for r in self.runners] or [30]),
                "settings": self._digest(), "config": self.settings.config_path,
                "children": children, "warnings": list(self.settings.warnings or ()),
                # --debug: what the long-running process holds (a test pins it: tests/integration/test_memory.py)
                **({"modules": sorted(sys.modules)} if self.log.debug_on else {})}

    def _digest(self):
        """state.digest of the running settings (hashed in pure Python: once per reload)."""
        if self._digest_of[0] is not self.settings:
            self._digest_of = (self.settings, state.digest(self.settings))
        return self._digest_of[1]

    def _write_state(self, force=False):
        now = self.clock()
        interval = min([r.config.interval for r in self.runners] or [30])
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
        self._last_state_write, self._state_dirty = now, False
