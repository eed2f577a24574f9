"""Command line: argparse, and the only place that exits (see errors.py for the codes)."""

import argparse
import os
import sys

from agent import __version__
from agent import errors as E

USAGE_EXAMPLE = "sshkeep run -R 127.0.0.1:20022:127.0.0.1:22 -i /etc/sshkeep/id -p 2222 tunnel@hub.example.com"


def _formatter(prog):
    # A width of our own: argparse would `import shutil` for it (with bz2, lzma and fnmatch,
    # half a megabyte of a long-running agent's memory) just to size --help.
    try:
        width = int(os.environ.get("COLUMNS", "")) or os.get_terminal_size(2).columns
    except (ValueError, OSError):
        width = 80
    return argparse.HelpFormatter(prog, width=max(40, width - 2))


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kw):
        kw.setdefault("formatter_class", _formatter)
        super().__init__(*args, **kw)

    def error(self, message):
        # argparse would exit(2); we use the documented usage code.
        raise E.UsageError("%s (try: %s --help)" % (message, self.prog))


def _add_tunnel_options(p):
    p.add_argument("destination", nargs="?", help="[user@]host of the server")
    p.add_argument("-c", "--config", metavar="FILE", help="configuration file (UCI syntax)")
    p.add_argument("-R", dest="remote", action="append", default=[], metavar="[bind:]port:host:hostport",
                   help="reverse forward (repeatable)")
    p.add_argument("-L", dest="local", action="append", default=[], metavar="[bind:]port:host:hostport",
                   help="local forward (repeatable)")
    p.add_argument("-D", dest="dynamic", action="append", default=[], metavar="[bind:]port",
                   help="dynamic (SOCKS) forward (repeatable)")
    p.add_argument("-p", "--port", type=int, default=None, help="server port (default 22)")
    p.add_argument("-l", "--user", default=None, help="user on the server")
    p.add_argument("-i", "--identity", default=None, metavar="KEYFILE", help="private key")
    p.add_argument("--client", choices=("auto", "openssh", "dropbear"), default="auto")
    p.add_argument("--ssh", default="", metavar="PATH", help="the client binary (default: ssh, then dbclient)")
    p.add_argument("--ssh-config", metavar="FILE", help="take host, user, port, key, forwards from this ssh_config")
    p.add_argument("--known-hosts", default="", metavar="FILE")
    p.add_argument("--accept-new", action="store_true", help="trust an unknown host key on first use")
    p.add_argument("--keepalive", type=int, default=15, metavar="SECONDS")
    p.add_argument("--connect-timeout", type=int, default=15, metavar="SECONDS")
    p.add_argument("--interval", type=float, default=30, metavar="SECONDS", help="health-check period")
    p.add_argument("--remote-check-every", type=int, default=4, metavar="N",
                   help="run the ssh-exec check of -R forwards every Nth interval (and after any failure)")
    p.add_argument("--loop-port", type=int, default=0, metavar="PORT",
                   help="in-band loop check through this server-side port (a -R/-L pair on the same "
                        "connection, checked every interval; the ssh-exec check then runs every Nth)")
    p.add_argument("--fail-threshold", type=int, default=2, metavar="N",
                   help="consecutive failed checks before ssh is restarted")
    p.add_argument("--max-backoff", type=float, default=60, metavar="SECONDS")
    p.add_argument("--spread", type=float, default=0, metavar="SECONDS",
                   help="fleet spreading: a per-box offset in [0, SECONDS) added to the first connect, "
                        "to backoff and to the reconnect after the server comes back (0 = off)")
    p.add_argument("--no-reclaim", action="store_true",
                   help="run ssh with -N; never reclaim a stale listener on the server")
    p.add_argument("--no-checks", action="store_true", help="no health checks (keepalive only)")
    p.add_argument("--name", default=None)
    p.add_argument("--state", default=None, metavar="FILE", help="run-state JSON (default /var/run/sshkeep.json)")
    p.add_argument("--pidfile", default=None, metavar="FILE", help="default /var/run/sshkeep.pid")
    p.add_argument("--syslog", action="store_true", help="log to syslog instead of stderr")
    p.add_argument("--daemon", action="store_true", help="detach (double fork) after start; for plain init scripts")
    p.add_argument("--debug", action="store_true")


def build_parser():
    p = _Parser(prog="sshkeep", description="Keep SSH tunnels up through OpenSSH or dropbear.",
                epilog="example: " + USAGE_EXAMPLE)
    p.add_argument("--version", action="version", version="sshkeep " + __version__)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    run = sub.add_parser("run", help="keep the tunnels up, in the foreground")
    _add_tunnel_options(run)
    chk = sub.add_parser("check", help="cron mode: start an agent unless a live one holds the pidfile")
    _add_tunnel_options(chk)
    st = sub.add_parser("status", help="print the state of the agent")
    st.add_argument("--json", action="store_true")
    st.add_argument("--state", default=None)
    st.add_argument("--pidfile", default=None, help="also confirm the agent holds this pidfile")
    st.add_argument("-c", "--config", metavar="FILE")
    stop = sub.add_parser("stop", help="stop the agent named by the pidfile")
    stop.add_argument("--pidfile", default=None)
    stop.add_argument("--state", default=None, help="run state (to end ssh children of a KILLed agent)")
    stop.add_argument("-c", "--config", metavar="FILE")
    rc = sub.add_parser("reconnect", help="reconnect every tunnel now, backoff reset (SIGUSR1)")
    rc.add_argument("--pidfile", default=None)
    rc.add_argument("-c", "--config", metavar="FILE")
    rl = sub.add_parser("reload", help="re-read the configuration (SIGHUP)")
    rl.add_argument("--pidfile", default=None)
    rl.add_argument("-c", "--config", metavar="FILE")
    cf = sub.add_parser("config", help="print the effective configuration, or every error in it")
    cf.add_argument("-c", "--config", metavar="FILE", default="/etc/config/sshkeep")
    return p


def _default_state():
    from agent.state import default_state_path
    return default_state_path()


def _default_pidfile():
    if os.geteuid() == 0 or os.access("/var/run", os.W_OK):
        return "/var/run/sshkeep.pid"
    return "/tmp/sshkeep-%d.pid" % os.getuid()


def settings_from_args(args):
    """Flags (or -c FILE, or --ssh-config) -> Settings. Flags override file globals."""
    # Imported here, not at the top: `--version` and `--help` stay cheap on a slow CPU
    # (the records + typing cost more than the rest of start-up under emulation).
    from agent.model import Tunnel, parse_destination
    if not (args.config or args.destination or args.ssh_config) and os.path.exists("/etc/config/sshkeep"):
        args.config = "/etc/config/sshkeep"  # the default file, when nothing else is given
    if args.config:
        from agent import config
        args.config = os.path.abspath(args.config)  # reload after --daemon's chdir /
        base = Tunnel("", "")
        odd = ["--" + {"ssh_path": "ssh", "reclaim": "no-reclaim"}.get(k, k).replace("_", "-")
               for k, v in sorted(_tunnel_kwargs(args).items()) if v != getattr(base, k)]
        odd += [o for o, v in (("-p", args.port), ("-l", args.user), ("--name", args.name),
                               ("--ssh-config", args.ssh_config)) if v]
        if odd or _forwards(args) or args.destination:
            raise E.UsageError("with -c the tunnels and their settings come from the file; set %s there "
                               "instead of on the command line" % (", ".join(odd) or "the forwards and host"))
        s = config.load(args.config)
        return _override_globals(s, args)
    if args.ssh_config:
        from agent import sshconfig
        if not args.destination:
            raise E.UsageError("--ssh-config needs a Host alias as destination")
        warned = []
        t = sshconfig.tunnel_from_host(args.ssh_config, args.destination, name=args.name, warnings=warned,
                                       **_tunnel_kwargs(args))
        extra = _forwards(args)
        if extra:
            t = _replace(t, forwards=tuple(t.forwards) + tuple(extra))
        if not t.forwards:
            raise E.UsageError("Host %s in %s has no forwards; add -R/-L/-D" % (args.destination, args.ssh_config))
        return _replace(_settings((t,), args), warnings=tuple(warned))
    if not args.destination:
        raise E.UsageError("a destination [user@]host is required (e.g. %s), or -c FILE "
                           "(/etc/config/sshkeep is read when it exists)" % USAGE_EXAMPLE)
    forwards = _forwards(args)
    if not forwards:
        raise E.UsageError("nothing to keep up: give at least one -R, -L or -D")
    user, host = parse_destination(args.destination)
    if not host:
        raise E.UsageError("destination %r has no host" % args.destination)
    kw = _tunnel_kwargs(args)
    kw["user"] = args.user if args.user is not None else user
    t = Tunnel(name=args.name or host, host=host, port=args.port or 22, forwards=tuple(forwards), **kw)
    return _settings((t,), args)


def _forwards(args):
    from agent.model import parse_forward
    out = []
    for kind, values in (("R", args.remote), ("L", args.local), ("D", args.dynamic)):
        for v in values:
            out.append(parse_forward(kind, v))
    seen = set()
    for f in out:
        key = (f.kind == "R", f.bind, f.port)
        if key in seen:
            raise E.ConfigError("two forwards listen on port %d on the same side" % f.port, E.EX_DATAERR)
        seen.add(key)
    return out


def _tunnel_kwargs(args):
    for name in ("keepalive", "connect_timeout", "interval", "max_backoff"):
        if getattr(args, name) < 0:
            raise E.UsageError("--%s must not be negative" % name.replace("_", "-"))
    if args.interval < 1:
        raise E.UsageError("--interval must be at least 1 second")
    return dict(identity=_abs(args.identity), client=args.client, ssh_path=_abs(args.ssh),
                known_hosts=_abs(args.known_hosts), accept_new=args.accept_new, keepalive=args.keepalive,
                connect_timeout=args.connect_timeout, interval=args.interval, max_backoff=args.max_backoff,
                remote_check_every=max(1, args.remote_check_every), fail_threshold=max(1, args.fail_threshold),
                reclaim=not args.no_reclaim, loop_port=args.loop_port, spread=max(0.0, args.spread))


def _abs(path):
    """--daemon does chdir /: a relative path must mean what it meant where the user typed it.
    A bare command name (`--ssh dbclient`) stays a name, looked up on PATH."""
    if not path:
        return ""
    if os.sep not in path:
        return path
    return os.path.abspath(path)


def _replace(obj, **kw):
    from agent.record import replace
    return replace(obj, **kw)


def _settings(tunnels, args):
    from agent.model import Settings
    return Settings(tunnels=tuple(tunnels), state=os.path.abspath(args.state or _default_state()),
                    pidfile=os.path.abspath(args.pidfile or _default_pidfile()), syslog=args.syslog,
                    config_path=args.config and os.path.abspath(args.config))


def _override_globals(s, args):
    kw = {}
    if args.state:
        kw["state"] = os.path.abspath(args.state)
    if args.pidfile:
        kw["pidfile"] = os.path.abspath(args.pidfile)
    if args.syslog:
        kw["syslog"] = True
    return _replace(s, **kw) if kw else s


def cmd_run(args, argv):
    # Parsed and validated here; the agent itself runs in a fresh runtime without argparse
    # or the config parser (agent.launch: exec, same pid).
    settings = settings_from_args(args)
    from agent import launch
    return launch.run(settings, args, argv)


def cmd_status(args):
    from agent import state
    path = args.state
    if not path and args.config:
        from agent import config
        path = config.load(args.config).state
    if not path and args.pidfile and not args.config:
        path = _default_state()
    doc = state.read(path or _default_state())
    running = state.pid_alive(doc.get("pid"))
    if args.pidfile:
        from agent import pidfile
        running = running and pidfile.is_locked(args.pidfile) and pidfile.read_pid(args.pidfile) == doc.get("pid")
    if args.json:
        import json
        sys.stdout.write(json.dumps(state.public(doc), indent=1, sort_keys=True) + "\n")
    else:
        sys.stdout.write(state.render(doc))
    return E.EX_OK if running else 3


def _pidfile_of(args):
    if args.pidfile:
        return args.pidfile
    if getattr(args, "config", None):
        from agent import config
        return config.load(args.config).pidfile
    return _default_pidfile()


def _state_of(args):
    if getattr(args, "state", None):
        return args.state
    if getattr(args, "config", None):
        from agent import config
        return config.load(args.config).state
    return _default_state()


def cmd_config(args):
    from agent import config
    s = config.load(args.config)
    sys.stdout.write(config.render(s))
    for w in getattr(s, "warnings", ()) or ():
        sys.stderr.write("warning: %s\n" % w)
    return E.EX_OK


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_resolve"]:  # a reload's config parse (agent.launch), also through shiv's bootstrap
        from agent import launch
        return launch.resolve_main(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help()
            return E.EX_USAGE
        if args.command == "run":
            return cmd_run(args, argv)
        if args.command == "status":
            return cmd_status(args)
        if args.command == "config":
            return cmd_config(args)
        from agent import lifecycle
        if args.command == "stop":
            return lifecycle.cmd_stop(_pidfile_of(args), state_path=_state_of(args))
        if args.command == "reload":
            return lifecycle.cmd_reload(_pidfile_of(args))
        if args.command == "reconnect":
            return lifecycle.cmd_reconnect(_pidfile_of(args))
        if args.command == "check":
            s = settings_from_args(args)
            run_argv = ["run"] + [a for a in argv[1:] if a != "--daemon"]
            if not args.pidfile:
                run_argv += ["--pidfile", s.pidfile]
            if not args.state:
                run_argv += ["--state", s.state]
            return lifecycle.cmd_check(s.pidfile, s.state, run_argv, stale_after=max(120.0, 4 * min(
                t.interval for t in s.tunnels)))
        raise E.UsageError("unknown command %s" % args.command)
    except E.SshkeepError as exc:
        return _report(exc)
    except KeyboardInterrupt:
        return E.EX_OK
    except BrokenPipeError:
        return E.EX_OK
    except Exception as exc:  # last resort: a bug; say so, with the code for it
        import traceback
        traceback.print_exc()
        sys.stderr.write("sshkeep: internal error: %r (please report)\n" % (exc,))
        return E.EX_SOFTWARE


def _report(exc):
    """The one place an error becomes a message and an exit status (shared with the runtime)."""
    from agent.serve import report
    return report(exc)
