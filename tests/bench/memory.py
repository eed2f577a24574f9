"""Resident memory of a running agent: VmRSS of the built pyz keeping 10 forwards (1 -R, 9 -L) to a
real sshd in the lab, checks on, once its first checks have run (issue 18: goal <= 12 MB on x86-64).

usage: python tests/bench/memory.py [--forwards N] [--python PY] [--prefix 'LOADER --library-path DIR']
                                    [--modules] [--runs N] [--settle S] PYZ

--prefix runs the python through a loader (a 32-bit Debian python unpacked into a private root:
`--prefix 'ROOT/usr/lib/i386-linux-gnu/ld-linux.so.2 --library-path ROOT/usr/lib/i386-linux-gnu'
--python ROOT/usr/bin/python3.11`). --modules also prints the modules the agent has imported (--debug).
Bench only: writes nothing outside the lab's temp dir. No python3-light guard (as on a router).
"""

import argparse
import os
import shlex
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(TESTS, "support"))

import lab as labmod  # noqa: E402
from agentrun import Agent  # noqa: E402


def vm(pid, key):
    with open("/proc/%d/status" % pid) as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def measure(pyz, forwards=10, python="/usr/bin/python3", prefix=(), modules=False, settle=8.0):
    lab = labmod.Lab(tag="mem")
    try:
        server = lab.start_sshd()
        svc = lab.start_service(lab.box_ns, 0)
        fwd = [("-R", "127.0.0.1:21000:127.0.0.1:%d" % svc.port)]
        fwd += [("-L", "127.0.0.1:%d:127.0.0.1:22" % (31000 + i)) for i in range(forwards - 1)]
        extra = ("--interval", "5") + (("--debug",) if modules else ())
        a = Agent(lab, server, fwd, client="openssh", extra=extra, python=python, pyz=pyz, prefix=prefix)
        a.env.pop("PYTHONPATH", None)  # the light guard's sitecustomize would cost memory of its own
        a.start()
        try:
            a.wait_up(60)
            a.wait(lambda: len(a.tunnel().get("checks") or {}) >= forwards, 60, "first checks")
            time.sleep(settle)  # a few check rounds (bench, not a test)
            pid = a.proc.pid
            rss = statistics.median([vm(pid, "VmRSS") for _ in range(5) if time.sleep(0.3) is None])
            out = {"forwards": forwards, "rss_kb": rss, "hwm_kb": vm(pid, "VmHWM"), "python": python}
            if modules:
                out["modules"] = a.status().get("modules")
            return out
        finally:
            a.stop()
    finally:
        lab.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pyz")
    ap.add_argument("--forwards", type=int, default=10)
    ap.add_argument("--python", default="/usr/bin/python3")
    ap.add_argument("--prefix", default="")
    ap.add_argument("--modules", action="store_true")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--settle", type=float, default=8.0, help="seconds after the first checks (default 8)")
    a = ap.parse_args(argv)
    for _ in range(a.runs):
        r = measure(os.path.abspath(a.pyz), a.forwards, a.python, shlex.split(a.prefix), a.modules, a.settle)
        mods = r.pop("modules", None)
        print(r)
        if mods is not None:
            print(" ".join(mods))
    return 0


if __name__ == "__main__":
    sys.exit(main())
