"""`sshkeep run` once the settings are resolved: log, detach, pidfile, supervise.

Runs in the runtime process (runtime.py), or in the start-up process when the exec was not
possible. Settings cross the exec as marshal data (encode/decode: records as tagged tuples);
a SIGHUP reload resolves the file again in a short-lived `_resolve` process, so the config
parser never lives in the agent.
"""

import marshal
import os

from agent import __version__
from agent.errors import EX_UNAVAILABLE, SshkeepError, guarded
from agent.core import record

_TAG = "\0record"


def encode(obj):
    """Settings -> plain tuples/str/numbers that marshal carries (records tagged by class name)."""
    if hasattr(type(obj), "_fields"):
        return (_TAG, type(obj).__name__) + tuple((f, encode(getattr(obj, f))) for f in record.fields(obj))
    if isinstance(obj, (tuple, list)):
        return tuple(encode(x) for x in obj)
    return obj


def decode(obj):
    if isinstance(obj, tuple) and obj[:1] == (_TAG,):
        from agent.core import model
        return getattr(model, obj[1])(**{f: decode(v) for f, v in obj[2:]})
    if isinstance(obj, tuple):
        return tuple(decode(x) for x in obj)
    return obj


def resolve(interp, script, argv, cwd):
    """The settings `argv` gives now (for SIGHUP), from a short-lived `_resolve` process, run
    where the agent was started (--daemon did chdir /; relative -c, --state mean what they did)."""
    import subprocess
    p = subprocess.run(list(interp) + list(script) + ["_resolve"] + list(argv), stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60,
                       cwd=cwd if cwd and os.path.isdir(cwd) else None)
    if p.returncode != 0:
        text = p.stderr.decode("utf-8", "replace").strip().replace("sshkeep: ", "")
        raise SshkeepError(text or "exit %d" % p.returncode, p.returncode)
    return decode(marshal.loads(p.stdout))


def main(payload):
    """The runtime's entry: the errors of the agent become messages and exit codes (errors.guarded)."""
    opts, interp, script, argv = payload["opts"], payload["interp"], payload["script"], payload["argv"]
    reload_fn = (lambda: resolve(interp, script, argv, opts["cwd"])) if opts["reload"] else None
    return guarded(serve, decode(payload["settings"]), opts, reload_fn)


def serve(settings, opts, reload_fn):
    from agent.run.log import Log, log_path_for
    from agent.run.supervisor import Supervisor
    notifier = None
    if opts["daemon"]:
        from agent.run import daemon
        notifier = daemon.daemonize()
    # After the detach: a daemon's stderr is /dev/null, so without syslog the lines go to a file.
    log = Log(use_syslog=settings.syslog or opts["daemon"], debug=opts["debug"],
              logfile=log_path_for(settings.state))
    pid = None
    try:
        from agent.run.pidfile import PidFile
        pid = PidFile(settings.pidfile)
        pid.acquire()
    except SshkeepError as exc:
        if notifier:
            notifier.fail(str(exc), exc.code)
        raise
    if pid.write_error:
        log.error("", pid.write_error + "; running with the lock alone (full tmpfs?)")
    for w in settings.warnings:  # e.g. a tunnelW section skipped: say so where procd logs it
        log.warning("", "config: " + w)
    try:
        _reap_previous(opts["previous"], log)
        checks = None
        if not opts["no_checks"]:
            from agent.run.checks import Checks
            checks = Checks(log)
        sup = Supervisor(settings, log, reload_settings=reload_fn, checks=checks, previous_state=opts["previous"])
        try:
            sup.prepare()
            _check_dropbear_options(sup.runners, set(opts["asked_options"]), log)
        except SshkeepError as exc:
            if notifier:
                notifier.fail(str(exc), exc.code)
            raise
        if notifier:
            notifier.ok("started (pid %d)%s" % (os.getpid(), "; " + log.note if log.note else ""))
        names = [f.label() for t in settings.tunnels for f in t.forwards]
        log.info("", "sshkeep %s started (pid %d), %d tunnel(s) (%s) over %d ssh connection(s), state %s" % (
            __version__, os.getpid(), len(names), ", ".join(names), len(settings.tunnels), settings.state))
        return sup.run()
    finally:
        if pid is not None:
            pid.release()


def _check_dropbear_options(runners, asked, log):
    """dbclient takes few ssh options: refuse a -o it cannot take (the user asked for it on this
    command line: `asked`), warn about one from a file (it worked with OpenSSH: do not stop the tunnel)."""
    from agent.run import clients
    for r in runners:
        if r.info.kind != clients.DROPBEAR:
            continue
        missing = clients.dropbear_options(r.info, r.config.extra_options)[1]
        refused = [k for k in missing if k in asked]
        if refused:
            raise SshkeepError("-o %s: %s (dropbear %s) has no such option; drop it, or use OpenSSH "
                               "(--client openssh)" % (", ".join(refused), r.info.path, r.info.version),
                               EX_UNAVAILABLE)
        if missing:
            log.warning(r.name, "ssh option(s) %s not passed: dbclient %s has no such option"
                        % (", ".join(missing), r.info.version))


def _reap_previous(doc, log):
    """Children of an agent that died by SIGKILL still hold our forwards: end them
    (only exact pid + command-line matches: agent.run.procs.reap_orphans)."""
    from agent.run import procs, state
    prev = doc.get("pid")
    if prev == os.getpid() or state.pid_alive(prev) and procs.is_sshkeep(prev):
        return  # a live agent (on another pidfile) writes this state: its children are no orphans
    children = doc.get("children")
    for rec in procs.reap_orphans(children if isinstance(children, list) else []):
        log.warning("", "ended ssh pid %s left by a previous agent (pid %s)" % (
            rec.get("pid") if isinstance(rec, dict) else rec, prev))
