"""Command line: argparse, and the only place that exits (see errors.py for the codes)."""

import argparse
import os
import sys

from agent import __version__
from agent.core import defaults, values
from agent.errors import (ConfigError, EX_DATAERR, EX_OK, EX_STATUS_HUNG, EX_STATUS_NOT_RUNNING, EX_USAGE,
                          SshkeepError, UsageError, guarded)

USAGE_EXAMPLE = "sshkeep run -R 127.0.0.1:20022:127.0.0.1:22 -i /etc/sshkeep/id -p 2222 tunnel@hub.example.com"


def _formatter(prog):
    # A width of our own: argparse would `import shutil` for it (with bz2, lzma and fnmatch,
    # half a megabyte of a long-running agent's memory) just to size --help.
    try:
        width = int(os.environ.get("COLUMNS", "")) or os.get_terminal_size(2).columns
    except (ValueError, OSError):
        width = 80
    return _DefaultsFormatter(prog, width=max(40, width - 2))


class _DefaultsFormatter(argparse.HelpFormatter):
    """Help with each real default, as `(default: N)`; not argparse's `(default: None)` noise."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        if "default" not in text and d is not None and d is not False and d not in ("", [], argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kw):
        kw.setdefault("formatter_class", _formatter)
        super().__init__(*args, **kw)

    def error(self, message):
        # argparse would exit(2); we use the documented usage code.
        raise UsageError("%s (try: %s --help)" % (message, self.prog))


def _checked(conv, flag, code=EX_USAGE):
    """An argparse type: the shared validator (agent.core.values), its message and exit code kept
    (argparse would say only "invalid value" and exit 2)."""
    def parse(text):
        try:
            return conv(text)
        except values.Bad as exc:
            raise SshkeepError("%s: %s — %s" % (flag, exc.what, exc.fix), code)
    return parse


def _add_tunnel_options(p):
    p.add_argument("destination", nargs="?", help="[user@]host of the server")
    p.add_argument("-c", "--config", metavar="FILE", help="configuration file (UCI syntax)")
    p.add_argument("-R", dest="remote", action="append", default=[], metavar="[bind:]port:host:hostport",
                   help="reverse forward (repeatable)")
    p.add_argument("-L", dest="local", action="append", default=[], metavar="[bind:]port:host:hostport",
                   help="local forward (repeatable)")
    p.add_argument("-D", dest="dynamic", action="append", default=[], metavar="[bind:]port",
                   help="dynamic (SOCKS) forward (repeatable)")
    p.add_argument("-p", "--port", type=_checked(values.port, "-p", EX_DATAERR), default=None,
                   help="server port (default %d)" % defaults.PORT)
    p.add_argument("-l", "--user", default=None, help="user on the server")
    p.add_argument("-i", "--identity", default=None, metavar="KEYFILE", help="private key")
    p.add_argument("--client", choices=("auto", "openssh", "dropbear"), default=defaults.CLIENT, help="which client")
    p.add_argument("--ssh", default="", metavar="PATH",
                   help="the client binary (default: ssh, then dbclient on PATH; --client dropbear: dbclient first)")
    p.add_argument("--ssh-config", metavar="FILE", help="take host, user, port, key, forwards from this ssh_config")
    p.add_argument("--known-hosts", default="", metavar="FILE", help="the server's host key (OpenSSH format)")
    p.add_argument("--accept-new", action="store_true", help="trust an unknown host key on first use")
    p.add_argument("-o", dest="ssh_options", action="append", default=[], metavar="Option=value",
                   help="an ssh option, as ssh -o takes it (repeatable; see docs/cli.md for the ones allowed)")
    p.add_argument("--keepalive", type=_checked(values.whole(0), "--keepalive"), default=None,
                   metavar="SECONDS", help="server-alive interval; 0 = off (default: %d)" % defaults.KEEPALIVE)
    p.add_argument("--connect-timeout", type=_checked(values.whole(1), "--connect-timeout"), default=None,
                   metavar="SECONDS", help="per connect (default: %d)" % defaults.CONNECT_TIMEOUT)
    p.add_argument("--interval", type=_checked(values.seconds(1), "--interval"), default=defaults.INTERVAL,
                   metavar="SECONDS", help="health-check period")
    p.add_argument("--remote-check-every", type=_checked(values.whole(0), "--remote-check-every"),
                   default=defaults.REMOTE_CHECK_EVERY,
                   metavar="N",
                   help="run the ssh-exec check of -R forwards every Nth interval (and after any failure)")
    p.add_argument("--loop-port", type=_checked(values.port_or_off, "--loop-port", EX_DATAERR),
                   default=defaults.LOOP_PORT,
                   metavar="PORT",
                   help="in-band loop check through this server-side port (a -R/-L pair on the same "
                        "connection, checked every interval; the ssh-exec check then runs every Nth)")
    p.add_argument("--check-mode", choices=("auto", "session", "exec"), default=defaults.CHECK_MODE,
                   help="-R checks: in the tunnel's own session (no new login), by a new ssh login each, "
                        "or auto (in the session where the hub allows it, else exec)")
    p.add_argument("--fail-threshold", type=_checked(values.whole(1), "--fail-threshold"),
                   default=defaults.FAIL_THRESHOLD,
                   metavar="N",
                   help="consecutive failed checks before ssh is restarted")
    p.add_argument("--max-backoff", type=_checked(values.seconds(1), "--max-backoff"), default=defaults.MAX_BACKOFF,
                   metavar="SECONDS", help="longest wait between reconnects")
    p.add_argument("--spread", type=_checked(values.seconds(0), "--spread"), default=defaults.SPREAD,
                   metavar="SECONDS",
                   help="fleet spreading: a per-box offset in [0, SECONDS) added to the first connect, "
                        "to backoff and to the reconnect after the server comes back (0 = off) (default: %g)"
                        % defaults.SPREAD)
    p.add_argument("--no-reclaim", action="store_true",
                   help="run ssh with -N; never reclaim a stale listener on the server")
    p.add_argument("--no-checks", action="store_true", help="no health checks (keepalive only)")
    p.add_argument("--name", default=None, help="the tunnel's name in logs and status (default: the host)")
    p.add_argument("--state", default=None, metavar="FILE",
                   help="run-state JSON (default %s; not root: a private dir)" % defaults.STATE)
    p.add_argument("--pidfile", default=None, metavar="FILE", help="default %s" % defaults.PIDFILE)
    p.add_argument("--box-id-file", default=None, metavar="FILE",
                   help="this box's identity on the hub, made once (default /etc/sshkeep/box-id as root, "
                        "else ~/.config/sshkeep/box-id)")
    p.add_argument("--syslog", action="store_true", help="log to syslog instead of stderr (stderr, or a file "
                                                          "beside --state, when no syslog daemon listens)")
    p.add_argument("--daemon", action="store_true", help="detach (double fork) after start; for plain init scripts")
    p.add_argument("--debug", action="store_true", help="also log debug lines (each ssh argv, repeated ssh lines)")


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
    cf.add_argument("-c", "--config", metavar="FILE", default=defaults.CONFIG)
    hb = sub.add_parser("hub", help="on the hub, as the tunnel user: the boxes connected now, their ports, "
                                    "whether each forward answers; also hub enroll|revoke|sshd-config (docs/hub.md)")
    hb.add_argument("--json", action="store_true", help="one JSON document instead of the table")
    hb.add_argument("--state-dir", metavar="DIR", default=None,
                    help="where the sessions record themselves (default $HOME/.sshkeep)")
    hb.add_argument("--prometheus", metavar="FILE", default=None,
                    help="write Prometheus text (node_exporter textfile collector) atomically to FILE")
    hb.add_argument("--timeout", type=float, default=defaults.HUB_PROBE_TIMEOUT, metavar="SECONDS",
                    help="bound of the probes")
    return p


def _default_state():
    from agent.run.state import default_state_path
    return default_state_path()


def _default_pidfile():
    from agent.run.state import default_dir
    return os.path.join(default_dir(), defaults.PIDFILE_NAME)


def settings_from_args(args):
    """Flags (or -c FILE, or --ssh-config) -> Settings. Flags override file globals."""
    # Imported here, not at the top: `--version` and `--help` stay cheap on a slow CPU
    # (the records + typing cost more than the rest of start-up under emulation).
    from agent.core.model import Tunnel, parse_destination
    if not (args.config or args.destination or args.ssh_config) and os.path.exists(defaults.CONFIG):
        args.config = defaults.CONFIG  # the default file, when nothing else is given
    if args.config:
        from agent.settings import config
        args.config = os.path.abspath(args.config)  # reload after --daemon's chdir /
        base = Tunnel("", "")
        odd = ["--" + {"ssh_path": "ssh", "reclaim": "no-reclaim"}.get(k, k).replace("_", "-")
               for k, v in sorted(_tunnel_kwargs(args).items()) if v != getattr(base, k)]
        odd += [o for o, v in (("-p", args.port), ("-l", args.user), ("--name", args.name),
                               ("--ssh-config", args.ssh_config), ("-o", args.ssh_options)) if v]
        if odd or _forwards(args) or args.destination:
            raise UsageError("with -c the tunnels and their settings come from the file; set %s there "
                             "instead of on the command line" % (", ".join(odd) or "the forwards and host"))
        s = config.load(args.config)
        return _override_globals(s, args)
    if args.ssh_config:
        from agent.settings import sshconfig
        if not args.destination:
            raise UsageError("--ssh-config needs a Host alias as destination")
        warned = []
        kw, given = _tunnel_kwargs(args), _given(args)
        if args.port:
            given["port"] = args.port
        if args.user is not None:
            given["user"] = _check_user(args.user, "-l")
        for k in given:
            kw.pop(k, None)
        # Values given on the command line win over the Host block, as with `ssh -p 2222 ALIAS`.
        t = sshconfig.tunnel_from_host(args.ssh_config, args.destination, name=args.name, warnings=warned,
                                       overrides=given, **kw)
        extra = _forwards(args)
        if extra:
            t = _replace(t, forwards=tuple(t.forwards) + tuple(extra))
        if not t.forwards:
            raise UsageError("Host %s in %s has no forwards; add -R/-L/-D" % (args.destination, args.ssh_config))
        return _settings((t,), args, warned)
    if not args.destination:
        raise UsageError("a destination [user@]host is required (e.g. %s), or -c FILE "
                         "(%s is read when it exists)" % (USAGE_EXAMPLE, defaults.CONFIG))
    forwards = _forwards(args)
    if not forwards:
        raise UsageError("nothing to keep up: give at least one -R, -L or -D")
    user, host = parse_destination(args.destination)
    if not host:
        raise UsageError("destination %r has no host" % args.destination)
    try:
        host = values.host(host)
    except values.Bad as exc:
        raise SshkeepError("destination: %s — %s" % (exc.what, exc.fix), EX_DATAERR)
    kw = _tunnel_kwargs(args)
    kw.update(_given(args))
    if args.user is not None:
        kw["user"] = _check_user(args.user, "-l")
    elif user or "user" not in kw:
        kw["user"] = _check_user(user, "destination %s" % args.destination) if user else ""
    kw["port"] = args.port or kw.get("port", defaults.PORT)
    t = Tunnel(name=args.name or host, host=host, forwards=tuple(forwards), **kw)
    return _settings((t,), args)


def _check_user(user, where):
    try:
        return values.user(user)
    except values.Bad as exc:
        raise SshkeepError("%s: %s — %s" % (where, exc.what, exc.fix), EX_DATAERR)


def _forwards(args):
    from agent.core.model import parse_forward
    out = []
    for kind, specs in (("R", args.remote), ("L", args.local), ("D", args.dynamic)):
        for spec in specs:
            out.append(parse_forward(kind, spec))
    seen = set()
    for f in out:
        key = (f.kind == "R", f.bind, f.port)
        if key in seen and f.port:
            raise ConfigError("two forwards listen on port %d on the same side" % f.port, EX_DATAERR)
        seen.add(key)
    return out


def _tunnel_kwargs(args):
    """Tunnel fields from the flags, defaults filled in (the numbers are checked by argparse:
    agent.core.values through _checked)."""
    return dict(identity=_abs(args.identity), client=args.client, ssh_path=_abs(args.ssh),
                known_hosts=_abs(args.known_hosts), accept_new=args.accept_new,
                keepalive=defaults.KEEPALIVE if args.keepalive is None else args.keepalive,
                connect_timeout=defaults.CONNECT_TIMEOUT if args.connect_timeout is None else args.connect_timeout,
                interval=args.interval, max_backoff=args.max_backoff,
                remote_check_every=max(1, args.remote_check_every), fail_threshold=args.fail_threshold,
                reclaim=not args.no_reclaim, loop_port=args.loop_port, spread=args.spread,
                check_mode=args.check_mode)


def _given(args):
    """Tunnel fields the user set on this command line (-i, --keepalive, -o ...), to win over an
    ssh_config Host block. `-o` options that sshkeep has a setting for become that setting
    (so they work with dbclient too); a flag beats the same setting given with -o, like ssh's
    first-value-wins would if the flag came first."""
    out = _ssh_options(args.ssh_options)
    flags = (("identity", _abs(args.identity or "")), ("known_hosts", _abs(args.known_hosts)),
             ("keepalive", args.keepalive), ("connect_timeout", args.connect_timeout))
    out.update((k, v) for k, v in flags if v not in (None, ""))
    if args.accept_new:
        out["accept_new"] = True
    return out


# -o Option=value for which sshkeep has a setting of its own: field, converter of the value.
_MAPPED = {"Port": ("port", values.port), "User": ("user", values.user),
           "IdentityFile": ("identity", None), "UserKnownHostsFile": ("known_hosts", None),
           "ServerAliveInterval": ("keepalive", values.whole(0)),
           "ConnectTimeout": ("connect_timeout", values.whole(1)),
           "StrictHostKeyChecking": ("accept_new", None)}


def _ssh_options(items):
    """-o Option=value (repeatable) -> Tunnel fields, with every other allowed option in
    extra_options. The first value of an option wins, as in ssh."""
    out, extra = {}, []
    for text in items:
        try:
            key, value = values.split_ssh_option(text)
        except values.Bad as exc:
            raise UsageError("-o %s: %s — %s" % (text, exc.what, exc.fix))
        problem = values.check_ssh_option(key, value)
        if problem:
            raise UsageError("-o %s: %s" % (text, problem))
        key = values.canonical_ssh_option(key)
        if key in values.REQUIRED_VALUES or key in [k for k, _ in extra]:
            continue  # already set that way by sshkeep / a later repeat: ssh keeps the first
        if key not in _MAPPED:
            extra.append((key, value))
            continue
        field, conv = _MAPPED[key]
        if field in out:
            continue
        if key == "StrictHostKeyChecking":
            low = value.lower()
            if low not in ("yes", "accept-new", "no", "off", "ask"):
                raise UsageError("-o %s: StrictHostKeyChecking is yes, accept-new or no" % text)
            value = low in ("accept-new", "no", "off")  # no: accept-new (sshkeep never takes a changed key)
        elif conv is not None:
            try:
                value = conv(value)
            except values.Bad as exc:
                raise SshkeepError("-o %s: %s — %s" % (text, exc.what, exc.fix), EX_DATAERR)
        else:
            if key == "UserKnownHostsFile" and len(value.split()) > 1:
                raise UsageError("-o %s: give one known_hosts file (sshkeep passes one to either client)" % text)
            from agent.core.model import expand_tilde
            value = _abs(expand_tilde(value))
        out[field] = value
    if extra:
        out["extra_options"] = tuple(extra)
    return out


def _abs(path):
    """--daemon does chdir /: a relative path must mean what it meant where the user typed it.
    A bare command name (`--ssh dbclient`) stays a name, looked up on PATH."""
    if not path:
        return ""
    if os.sep not in path:
        return path
    return os.path.abspath(path)


def _replace(obj, **kw):
    from agent.core.record import replace
    return replace(obj, **kw)


def _settings(tunnels, args, warnings=()):
    from agent.core.model import Settings
    return Settings(tunnels=tuple(tunnels), state=os.path.abspath(args.state or _default_state()),
                    pidfile=os.path.abspath(args.pidfile or _default_pidfile()), syslog=args.syslog,
                    config_path=args.config and os.path.abspath(args.config),
                    box_id_file=_abs(args.box_id_file or ""), warnings=tuple(warnings) + _option_warnings(args))


def _option_warnings(args):
    """`-o StrictHostKeyChecking=no` runs as trust on first use: say so at every start and in status."""
    for text in getattr(args, "ssh_options", None) or ():
        key, value = values.split_ssh_option(text)  # checked already by _ssh_options
        if key.lower() == "stricthostkeychecking":
            if value.lower() in ("no", "off"):
                return ("-o %s is treated as accept-new (a changed host key is still refused)" % text,)
            break  # the first value wins
    return ()


def _override_globals(s, args):
    kw = {}
    if args.state:
        kw["state"] = os.path.abspath(args.state)
    if args.pidfile:
        kw["pidfile"] = os.path.abspath(args.pidfile)
    if args.syslog:
        kw["syslog"] = True
    if args.box_id_file:
        kw["box_id_file"] = _abs(args.box_id_file)
    return _replace(s, **kw) if kw else s


def cmd_run(args, argv):
    # Parsed and validated here; the agent itself runs in a fresh runtime without argparse
    # or the config parser (agent.launch: exec, same pid).
    settings = settings_from_args(args)
    from agent import launch
    asked = {k for k, _ in _ssh_options(getattr(args, "ssh_options", None) or []).get("extra_options", ())}
    return launch.run(settings, args, argv, asked)


def resolve_main(argv):
    """`_resolve ARGV...` (a reload in the runtime): the settings `ARGV` gives, marshalled to
    stdout; errors as `run` reports them, with its exit codes (agent.run.serve.resolve)."""
    import marshal
    from agent.run import serve
    settings = settings_from_args(build_parser().parse_args(argv))
    sys.stdout.buffer.write(marshal.dumps(serve.encode(settings)))
    sys.stdout.flush()
    return EX_OK


def cmd_status(args):
    from agent.run import state
    path = args.state
    if not path and args.config:
        from agent.settings import config
        path = config.load(args.config).state
    if not path and args.pidfile and not args.config:
        path = _default_state()
    doc = state.read(path or _default_state())
    running = state.pid_alive(doc.get("pid"))
    if args.pidfile:
        from agent.run import pidfile
        running = running and pidfile.is_locked(args.pidfile) and pidfile.read_pid(args.pidfile) == doc.get("pid")
    if args.json:
        import json
        sys.stdout.write(json.dumps(state.public(doc), indent=1, sort_keys=True) + "\n")
    else:
        sys.stdout.write(state.render(doc))
    if not running:
        return EX_STATUS_NOT_RUNNING
    return EX_OK if state.updating(doc) else EX_STATUS_HUNG


def _pidfile_of(args):
    if args.pidfile:
        return args.pidfile
    if getattr(args, "config", None):
        from agent.settings import config
        return config.load(args.config).pidfile
    return _default_pidfile()


def _state_of(args):
    if getattr(args, "state", None):
        return args.state
    if getattr(args, "config", None):
        from agent.settings import config
        return config.load(args.config).state
    return _default_state()


def load_checked(path):
    """The file as `run -c` loads it, refused as `run` refuses it at start (same messages, same
    codes): under procd a file `config -c` passed but `run` refuses is a respawn every 5 s."""
    from agent.settings import config
    from agent.run.tunnel import preflight_all
    s = config.load(path)
    preflight_all(s)
    return s


def cmd_config(args):
    from agent.settings.sshkeep_conf import render
    s = load_checked(args.config)
    sys.stdout.write(render(s))
    for w in s.warnings:
        sys.stderr.write("warning: %s\n" % w)
    return EX_OK


def main(argv=None):
    """The one entry (python -m agent, the pyz): a command's exit status (errors.guarded)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_resolve"]:  # a reload's config parse (agent.run.serve.resolve)
        return guarded(resolve_main, argv[1:])
    return guarded(_command, argv)


def _command(argv):
    if argv[:1] == ["hub"] and argv[1:2] and argv[1] in ("enroll", "revoke", "sshd-config", "serve"):
        from agent.hub import keys  # the keys file, and the forced command it names
        return keys.serve(argv[2:]) if argv[1] == "serve" else keys.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EX_USAGE
    if args.command == "run":
        return cmd_run(args, argv)
    if args.command == "status":
        return cmd_status(args)
    if args.command == "config":
        return cmd_config(args)
    if args.command == "hub":
        from agent.hub.scan import cmd_hub
        return cmd_hub(args)
    from agent import lifecycle
    if args.command == "stop":
        return lifecycle.cmd_stop(_pidfile_of(args), state_path=_state_of(args))
    if args.command == "reload":
        # With -c, the file is checked as `run` checks it first: an invalid one is its error and
        # code, and the agent keeps running untouched (it would only log the failure).
        s = load_checked(args.config) if args.config else None
        return lifecycle.cmd_reload(args.pidfile or (s.pidfile if s else _pidfile_of(args)))
    if args.command == "reconnect":
        return lifecycle.cmd_reconnect(_pidfile_of(args))
    if args.command == "check":
        s = settings_from_args(args)
        run_argv = ["run"] + [a for a in argv[1:] if a != "--daemon"]
        if not args.pidfile:
            run_argv += ["--pidfile", s.pidfile]
        if not args.state:
            run_argv += ["--state", s.state]
        from agent.run.state import digest
        return lifecycle.cmd_check(s.pidfile, s.state, run_argv, stale_after=max(defaults.STALE_AFTER, 4 * min(
            t.interval for t in s.tunnels)), digest=digest(s), config=s.config_path)
    raise UsageError("unknown command %s" % args.command)


