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

from agent.run import procs, serve, state

LOADER = "import marshal,sys;f=open(int(sys.argv[3]),'rb');exec(marshal.loads(f.read(int(f.read(8)))))"
# The runtime is what the folders say it is: agent/__init__, agent/errors and every module of the
# packages below (daemon only with --daemon; runtime is the boot code itself). Start-up-only code
# (cli, launch, lifecycle, settings/, hub/) is not sent: importing it in the runtime still works,
# from source, at a cost in memory (tests/unit/test_memory.py pins the resident set).
RUNTIME_PACKAGES = ("core", "run", "hubside")
NOT_RESIDENT = ("run/runtime.py", "run/daemon.py")


def interpreter():
    """(interpreter argv, script argv) of this process: [LOADER --library-path D] python [opts],
    then PYZ or -m agent; from /proc/self/cmdline, so a python started through its loader (a
    32-bit root) is started the same way again."""
    own = procs.read("/proc/self/cmdline", -1) or b""
    words = [w.decode("utf-8", "surrogateescape") for w in own.split(b"\0")[:-1]]
    tail = len(sys.argv) - 1  # the script's own arguments end the command line
    head = words[:len(words) - tail] if 0 < tail < len(words) else words
    if len(head) >= 3 and head[-2] == "-m":
        return head[:-2], head[-2:]
    if len(head) >= 2 and sys.argv and head[-1] == sys.argv[0]:
        return head[:-1], [os.path.abspath(head[-1])]
    from agent.lifecycle import self_command
    cmd = self_command()
    return cmd[:1], cmd[1:]


def _cwd():
    try:
        return os.getcwd()
    except OSError:  # the directory was removed under us
        return "/"


def runtime_modules(where, daemon=False):
    """[(module name, path under agent/)] the runtime loads, from the package folders (pkgutil reads
    a folder and a folder inside the pyz alike: no zipfile on python3-light, no zipimport internals)."""
    import pkgutil
    out = [("agent", "__init__.py"), ("agent.errors", "errors.py")]
    for pkg in RUNTIME_PACKAGES:
        names = ["__init__"] + sorted(m.name for m in pkgutil.iter_modules([os.path.join(where, pkg)])
                                      if not m.ispkg)
        for n in names:
            rel = pkg + "/" + n + ".py"
            if rel in NOT_RESIDENT and not (daemon and rel == "run/daemon.py"):
                continue
            out.append(("agent." + pkg + ("" if n == "__init__" else "." + n), rel))
    return out


def _code(daemon):
    import agent
    where = agent.__path__[0]
    zipped = hasattr(getattr(agent, "__loader__", None), "archive")
    if zipped:  # the pyz: read the sources from the archive
        import zipimport
        zipped = zipimport.zipimporter(where)

    def source(rel):
        if zipped:
            return zipped.get_data(os.path.join(where, rel))
        with open(os.path.join(where, rel), "rb") as fh:
            return fh.read()

    out = {}
    for name, rel in runtime_modules(where, daemon):
        code = compile(source(rel), os.path.join(where, rel), "exec", dont_inherit=True)
        out[name] = marshal.dumps(code)
    # compiled here too: a compile in the runtime would keep ~0.3 MB of the compiler's memory
    boot = marshal.dumps(compile(source("run/runtime.py"), os.path.join(where, "run/runtime.py"), "exec",
                                 dont_inherit=True))
    index, parts, at = {}, [], 0
    for name, blob in out.items():
        index[name] = (at, len(blob))
        parts.append(blob)
        at += len(blob)
    return boot, index, b"".join(parts), where


def run(settings, args, argv, asked=()):
    """`sshkeep run`: exec the runtime; returns only if it could not (then runs here).
    `asked`: the ssh options given with -o on this command line (a dbclient that lacks one
    refuses them)."""
    opts = {"debug": bool(args.debug), "daemon": bool(args.daemon), "no_checks": bool(args.no_checks),
            "reload": bool(args.config), "previous": state.previous(settings.state), "cwd": _cwd(),
            "asked_options": sorted(asked)}
    interp, script = interpreter()
    if os.environ.get("SSHKEEP_NO_EXEC") != "1":
        boot, index, block, where = _code(opts["daemon"])
        meta = marshal.dumps({"index": index, "path": where, "packages": RUNTIME_PACKAGES,
                              "settings": serve.encode(settings), "opts": opts,
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
