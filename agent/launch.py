"""Start-up side of `run`: hand the resolved settings to a fresh runtime (runtime.py, serve.py).

The process that parsed the command line and the configuration keeps argparse, the config
parser and whatever compiling modules from source allocated (the pyz ships .py only; bytecode
would triple it) for good: ~3 MB of a 14.7 MB agent. So this process compiles the runtime's
modules, then execs the same interpreter (same pid: procd and the pidfile see no change) as
`python -c LOADER PROGRAM _runtime FD WRITER ARGV...` (runtime.py), which gets its boot code,
the settings and the compiled modules from a pipe that a forked writer fills (a pipe holds
64 KB, and its reader is the exec'd us). If the exec fails, the agent runs here as before.
"""

import marshal
import os
import sys

from agent import serve

# The agent modules the runtime imports (daemon too with --daemon). The start-up-only cli,
# config, sshconfig, launch and lifecycle are not here: importing one of them in the runtime
# still works, from source (at a cost in memory: tests/test_memory.py pins the set).
LOADER = "import marshal,sys;f=open(int(sys.argv[3]),'rb');exec(marshal.loads(f.read(int(f.read(8)))))"
RUNTIME = ("__init__", "errors", "record", "log", "classify", "machine", "model", "procs", "child", "clients", "probe",
           "remote", "session", "spread", "state", "pidfile", "identity", "values", "supervisor", "health",
           "serve")


def interpreter():
    """(interpreter argv, script argv) of this process: [LOADER --library-path D] python [opts],
    then PYZ or -m agent; from /proc/self/cmdline, so a python started through its loader (a
    32-bit root) is started the same way again."""
    try:
        with open("/proc/self/cmdline", "rb") as fh:
            words = [w.decode("utf-8", "surrogateescape") for w in fh.read().split(b"\0")[:-1]]
    except OSError:
        words = []
    tail = len(sys.argv) - 1  # the script's own arguments end the command line
    head = words[:len(words) - tail] if 0 < tail < len(words) else words
    if len(head) >= 3 and head[-2] == "-m":
        return head[:-2], head[-2:]
    if len(head) >= 2 and sys.argv and head[-1] == sys.argv[0]:
        return head[:-1], [os.path.abspath(head[-1])]
    from agent.lifecycle import self_command
    cmd = self_command()
    return cmd[:1], cmd[1:]


def _asked(args):
    """The ssh options given with -o on this command line (a dbclient that lacks one refuses them)."""
    from agent import cli
    return sorted({k for k, _ in cli._ssh_options(getattr(args, "ssh_options", None) or []).get("extra_options", ())})


def _cwd():
    try:
        return os.getcwd()
    except OSError:  # the directory was removed under us
        return "/"


def _code(daemon):
    import agent
    where = agent.__path__[0]
    zipped = hasattr(getattr(agent, "__loader__", None), "archive")
    if zipped:  # the pyz: read the sources from the archive
        import zipimport
        zipped = zipimport.zipimporter(where)
    def source(name):
        if zipped:
            return zipped.get_source(name)
        with open(os.path.join(where, name + ".py"), "rb") as fh:
            return fh.read()

    out = {}
    for name in RUNTIME + (("daemon",) if daemon else ()):
        code = compile(source(name), os.path.join(where, name + ".py"), "exec", dont_inherit=True)
        out["agent" if name == "__init__" else "agent." + name] = marshal.dumps(code)
    # compiled here too: a compile in the runtime would keep ~0.3 MB of the compiler's memory
    boot = marshal.dumps(compile(source("runtime"), os.path.join(where, "runtime.py"), "exec", dont_inherit=True))
    index, parts, at = {}, [], 0
    for name, blob in out.items():
        index[name] = (at, len(blob))
        parts.append(blob)
        at += len(blob)
    return boot, index, b"".join(parts), where


def run(settings, args, argv):
    """`sshkeep run`: exec the runtime; returns only if it could not (then runs here)."""
    opts = {"debug": bool(args.debug), "daemon": bool(args.daemon), "no_checks": bool(args.no_checks),
            "reload": bool(args.config), "previous": serve.previous(settings.state), "cwd": _cwd(),
            "asked_options": _asked(args)}
    interp, script = interpreter()
    if os.environ.get("SSHKEEP_NO_EXEC") != "1":
        boot, index, block, where = _code(opts["daemon"])
        meta = marshal.dumps({"index": index, "path": where, "settings": serve.encode(settings), "opts": opts,
                              "interp": interp, "script": script, "argv": list(argv)})
        payload = b"%08d" % len(boot) + boot + b"%08d%08d" % (len(meta), len(block)) + meta + block
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the writer: the pipe holds 64 KB and its reader is the exec'd us
            try:
                os.close(r)
                view = memoryview(payload)
                while view:
                    view = view[os.write(w, view):]
            finally:
                os._exit(0)
        os.close(w)
        os.set_inheritable(r, True)
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            program = script[0] if len(script) == 1 else "-m" + script[1]  # -magent
            os.execvp(interp[0], interp + ["-c", LOADER, program, "_runtime", str(r), str(pid)] + list(argv))
        except OSError as exc:
            sys.stderr.write("sshkeep: cannot exec the runtime (%s); running in this process\n" % exc)
            os.close(r)
            os.waitpid(pid, 0)
    reload_fn = (lambda: serve.resolve(interp, script, argv, opts["cwd"])) if opts["reload"] else None
    return serve.serve(settings, opts, reload_fn)


def resolve_main(argv):
    """`_resolve ARGV...` (for a reload in the runtime): the settings `ARGV` gives, marshalled
    to stdout; errors as `run` reports them, with its exit codes."""
    from agent import cli, errors
    try:
        args = cli.build_parser().parse_args(argv)
        settings = cli.settings_from_args(args)
    except errors.SshkeepError as exc:
        return serve.report(exc)
    sys.stdout.buffer.write(marshal.dumps(serve.encode(settings)))
    sys.stdout.flush()
    return errors.EX_OK
