"""Start-up cost of sshkeep.pyz vs a plain zipapp vs shiv's own bootstrap (same agent/ package).

usage: python3 build/measure.py [--runs N] [--python PY]... VPY PYZ

VPY is the build venv's python (has shiv); PYZ the built build/sshkeep.pyz. Builds the two
comparison archives in a temp dir, then runs `--version` N times per variant, round-robin,
and prints the median wall time and the median max RSS as a markdown table. Max RSS comes from
GNU time (`/usr/bin/time -f %M`): Popen's vfork makes wait4's ru_maxrss report the parent's RSS.
All variants hold the same staged (slimmed) agent/. The page cache is warm (dropping it would
disturb the machine), so "cold" means a fresh interpreter, and for shiv a fresh SHIV_ROOT.
Also measures idle RSS of `run` (median of 5) with a fake OpenSSH client that only sleeps, --no-checks.
Bench only: it writes nothing outside its temp dir.
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zipapp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stage import stage as stage_package  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)

FAKE_SSH = """#!/bin/sh
# fake OpenSSH client: identifies itself, then holds the "tunnel" open.
case " $* " in *" -V "*) echo "OpenSSH_9.2p1 Debian-2+deb12u3, OpenSSL 3.0.15 3 Sep 2024" >&2; exit 0;; esac
echo $$ >> "$FAKE_PIDS"
exec sleep 300
"""


def stage(dst):
    stage_package(os.path.join(TOP, "agent"), os.path.join(dst, "agent"))


def once(cmd, env, tmp):
    out = os.path.join(tmp, "time.out")
    t0 = time.perf_counter()
    rc = subprocess.call(["/usr/bin/time", "-f", "%M", "-o", out] + cmd, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dt = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit("measure: %s exited %s" % (cmd, rc))
    with open(out) as f:
        return dt, int(f.read().split()[-1])


def idle_rss(python, pyz, env, tmp, tag):
    """VmRSS of `run` once its (fake) ssh child runs; None if it never gets there."""
    pids = os.path.join(tmp, "fake-%s.pids" % tag)
    fake = os.path.join(tmp, "fake-ssh")
    env = dict(env, FAKE_PIDS=pids)
    cmd = [python, pyz, "run", "--ssh", fake, "--client", "openssh", "--no-checks", "--no-reclaim",
           "--state", os.path.join(tmp, "state-%s.json" % tag), "--pidfile", os.path.join(tmp, "%s.pid" % tag),
           "-R", "127.0.0.1:20022:127.0.0.1:22", "127.0.0.1"]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rss = None
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and p.poll() is None:
            if os.path.exists(pids):
                break
            time.sleep(0.05)
        if os.path.exists(pids) and p.poll() is None:
            time.sleep(1.0)  # settle: the agent is now idle, waiting on its child
            with open("/proc/%d/status" % p.pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1])
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        if os.path.exists(pids):
            with open(pids) as f:
                for pid in f.read().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass
            os.unlink(pids)
    return rss


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=21)
    ap.add_argument("--python", action="append", default=[])
    ap.add_argument("vpy")
    ap.add_argument("pyz")
    a = ap.parse_args(argv)
    pythons = a.python or ["/usr/bin/python3"]
    tmp = tempfile.mkdtemp(prefix="sshkeep-measure-")
    try:
        src = os.path.join(tmp, "src")
        stage(src)
        plain = os.path.join(tmp, "plain.pyz")
        zipapp.create_archive(src, plain, interpreter="/usr/bin/env python3", main="agent.cli:main",
                              compressed=True)
        native = os.path.join(tmp, "shiv.pyz")
        subprocess.run([a.vpy, "-m", "shiv", "--reproducible", "--site-packages", src, "-e", "agent.cli:main",
                        "-o", native], check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(tmp, "fake-ssh"), "w") as f:
            f.write(FAKE_SSH)
        os.chmod(os.path.join(tmp, "fake-ssh"), 0o755)
        base = {k: v for k, v in os.environ.items() if k not in ("SHIV_ROOT", "PYTHONPATH")}
        base["HOME"] = os.path.join(tmp, "home")
        os.makedirs(base["HOME"])
        warm_root = os.path.join(tmp, "shiv-warm")
        variants = [
            ("sshkeep.pyz (zipimport entry)", a.pyz, lambda i: base),
            ("plain zipapp", plain, lambda i: base),
            ("shiv bootstrap, warm ~/.shiv", native, lambda i: dict(base, SHIV_ROOT=warm_root)),
            ("shiv bootstrap, first run (extracts)", native,
             lambda i: dict(base, SHIV_ROOT=os.path.join(tmp, "shiv-cold-%d" % i))),
        ]
        print("| python | variant | size (bytes) | `--version` ms median (min) | max RSS median KB | idle `run` RSS KB |")
        print("|---|---|---|---|---|---|")
        for py in pythons:
            ver = subprocess.run([py, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 stdout=subprocess.PIPE, check=True).stdout.decode().strip()
            once([py, native, "--version"], dict(base, SHIV_ROOT=warm_root), tmp)  # populate the warm root
            for _, pyz, envf in variants:  # warm the page cache
                once([py, pyz, "--version"], envf(-1), tmp)
            results = {name: ([], []) for name, _, _ in variants}
            for i in range(a.runs):
                for name, pyz, envf in variants:
                    dt, rss = once([py, pyz, "--version"], envf(i), tmp)
                    results[name][0].append(dt * 1000)
                    results[name][1].append(rss)
            for n, (name, pyz, envf) in enumerate(variants):
                idle = None
                if n < 3:  # median of 5 idle samples; none for the extract-every-time variant
                    samples = [idle_rss(py, pyz, envf(-2), tmp, "v%d" % n) for _ in range(5)]
                    samples = [x for x in samples if x]
                    idle = statistics.median(samples) if samples else None
                ts, rs = results[name]
                print("| %s | %s | %d | %.1f (%.1f) | %d | %s |" % (ver, name, os.path.getsize(pyz), statistics.median(ts), min(ts),
                                                       statistics.median(rs), "%d" % idle if idle else "n/a"))
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
