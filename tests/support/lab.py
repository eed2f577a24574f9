"""The network-namespace test lab: two hosts on one machine, real ssh servers, real faults.

`with Lab() as lab:` (root only; the pytest fixture is `lab`) makes a *box* and a *server*: network
namespaces `skb<pid>n<n>` / `sks<pid>n<n>` on a veth pair (box 10.213.N.1, server 10.213.N.2), `lo` up,
plus a private 0700 `lab.dir`. `lab.start_sshd()` / `lab.start_dropbear()` run a real OpenSSH sshd
(port 22) / dropbear server (2222) in the server namespace with their own host keys. They accept one
throwaway user, `sktunnel` (useradd'ed once), by key only: `lab.key_openssh` / `lab.key_dropbear` (the
same ed25519 key in both formats). Each lab gives that user a private home (`lab.home`, /var/tmp) via its
own passwd in /etc/netns/NAME/, so concurrent runs share nothing. Host keys for clients:
`lab.known_hosts(server)` (OpenSSH, `[ip]:port key`) and `lab.dropbear_home(server)` (use as HOME for
dbclient, which reads only ~/.ssh/known_hosts, keyed by host without port).
`lab.start_service(ns, port)` is a banner service; `lab.probe_from(ns, host, port)` returns the first bytes
a connection from inside ns receives (in-process: a thread joins the namespace with setns). Faults:
`lab.blackhole()` (iptables INPUT DROP at both ends; no netem in this kernel), `lab.drop_flow(bport, sport)`
(one TCP 4-tuple: a lost NAT mapping), `server.kill_sessions()`, `server.restart()`, `lab.kill_listener(port)`
(`ss -K`). Cleanup by pid (TERM, bounded wait, KILL), then whatever is left in the namespaces; also at exit.

Server generations (tests/support/hubroot.py): `Lab(generation="deb13")` or `start_sshd(generation="deb13")` runs
OpenSSH 10 / dropbear 2025 from the cached Debian 13 root, `chroot`ed in the server namespace from this
lab's own overlay of it (`lab.hub_root(gen)`: tunnel user, lab.home bind-mounted, /proc; unmounted on
close). `server.version` names it ("OpenSSH_10.0p2", "dropbear 2025.89"), `server.session_title` is
what its session processes are called, `server.penalty_lines()` what it logged against a client.
"""

from __future__ import annotations

import atexit
import ctypes
import fcntl
import itertools
import os
import pwd
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

import hubroot
from polling import wait_for, wait_until  # noqa: F401  (wait_until re-exported: tests import it from lab)

TUNNEL_USER = "sktunnel"
TUNNEL_HOME = "/var/tmp/sktunnel"  # the global home; each lab overrides it in its server namespace
LOCK_FILE = "/run/sklab.lock"
TOOLS = ("ip", "iptables", "ss", "setpriv", "sshd", "ssh", "ssh-keygen", "dbclient", "dropbear",
         "dropbearkey", "dropbearconvert", "useradd", "usermod")
CLONE_NEWNET = 0x40000000

_counter = itertools.count(1)
_live_labs = []  # type: List[Lab]


# ----------------------------------------------------------------------------- helpers

def missing_requirements() -> List[str]:
    """What keeps the lab from running here: [] when root and every tool is on PATH."""
    problems = []
    if os.geteuid() != 0:
        problems.append("not root (the lab needs root for network namespaces)")
    for tool in TOOLS:
        if shutil.which(tool) is None:
            problems.append("missing tool: %s" % tool)
    return problems


def _run(argv: Sequence[str], timeout: float = 10, check: bool = True, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("stdin", subprocess.DEVNULL)
    r = subprocess.run(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(argv), r.returncode,
                                                      r.stderr.decode(errors="replace").strip()))
    return r


def alive(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _ppids() -> Dict[int, int]:
    """pid -> ppid for every live process, from /proc/*/stat."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            out[int(name)] = int(fields[1])
    return out


def descendants(pid: int) -> List[int]:
    """All live descendants of pid (children first, then theirs), found by ppid."""
    ppids = _ppids()
    children = {}  # type: Dict[int, List[int]]
    for p, pp in ppids.items():
        children.setdefault(pp, []).append(p)
    out, todo = [], sorted(children.get(pid, []))
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo.extend(sorted(children.get(p, [])))
    return out


def cmdline(pid: int) -> str:
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def stop_process(proc: subprocess.Popen, timeout: float = 3.0) -> Optional[int]:
    """TERM, bounded wait, KILL, reap. Returns the exit status (None if it could not be reaped)."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            pass
        try:
            proc.kill()
        except ProcessLookupError:
            pass
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
    return proc.returncode


def stop_processes(procs: Sequence[subprocess.Popen], timeout: float = 3.0) -> None:
    """stop_process for many at once: TERM all, one bounded wait, KILL the rest, reap."""
    live = [p for p in procs if p.poll() is None]
    for p in live:
        try:
            p.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
    wait_for(lambda: all(p.poll() is not None for p in live), timeout, 0.02)
    for p in live:
        stop_process(p, timeout=1.0)


def kill_pids(pids: Sequence[int], sig: int = signal.SIGKILL, timeout: float = 3.0) -> None:
    """Signal foreign (not our children) pids and wait, bounded, until they are gone or zombies."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    wait_for(lambda: not any(alive(p) for p in pids), timeout, 0.02)


_libc = None


def _setns(ns: str) -> None:
    """Move the calling *thread* into network namespace ns."""
    global _libc
    fd = os.open("/run/netns/%s" % ns, os.O_RDONLY)
    try:
        if hasattr(os, "setns"):  # 3.12+
            os.setns(fd, CLONE_NEWNET)
            return
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, "setns(%s): %s" % (ns, os.strerror(e)))
    finally:
        os.close(fd)


def in_ns(ns: str, fn: Callable[[], object]) -> object:
    """Run fn() in a fresh thread that joined network namespace ns; return its result or raise.

    Sockets created there stay in that namespace, whatever thread uses them later.
    """
    box = {}  # type: Dict[str, object]

    def body() -> None:
        try:
            _setns(ns)
            box["r"] = fn()
        except BaseException as e:  # handed to the caller
            box["e"] = e

    t = threading.Thread(target=body, name="in_ns-%s" % ns, daemon=True)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]  # type: ignore[misc]
    return box.get("r")


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def connect_in(ns: str, host: str, port: int, timeout: float = 2.0) -> socket.socket:
    """A TCP socket connected from inside ns (numeric host only). Raises OSError."""
    def go() -> socket.socket:
        s = socket.socket(_family(host), socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect((host, port))
        except BaseException:
            s.close()
            raise
        return s
    return in_ns(ns, go)  # type: ignore[return-value]


def probe_from(ns: str, host: str, port: int, timeout: float = 2.0) -> Optional[bytes]:
    """Connect from inside ns and return the first bytes received.

    None: refused, unreachable or nothing within timeout (e.g. a stale listener that accepts and never
    sends). b"": accepted, then EOF (e.g. a forward whose target is down).
    """
    deadline = time.monotonic() + timeout
    try:
        s = connect_in(ns, host, port, timeout)
    except OSError:
        return None
    try:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        return s.recv(4096)
    except OSError:
        return None
    finally:
        s.close()


def tcp_table(ns: str) -> List[Dict[str, object]]:
    """Rows of /proc/net/tcp and tcp6 seen from ns: local/remote (ip, port) and state ('0A' = LISTEN)."""
    def read() -> List[str]:
        lines = []
        for name in ("tcp", "tcp6"):
            try:
                with open("/proc/thread-self/net/%s" % name) as f:
                    lines.extend(f.read().splitlines()[1:])
            except OSError:
                pass
        return lines

    def addr(text: str) -> tuple:
        ip, port = text.split(":")
        raw = bytes.fromhex(ip)
        if len(raw) == 4:
            host = socket.inet_ntop(socket.AF_INET, raw[::-1])
        else:
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
            host = socket.inet_ntop(socket.AF_INET6, raw)
        return host, int(port, 16)

    rows = []
    for line in in_ns(ns, read):  # type: ignore[union-attr]
        f = line.split()
        rows.append({"local": addr(f[1]), "remote": addr(f[2]), "state": f[3], "uid": int(f[7])})
    return rows


def listening(ns: str, port: int) -> List[str]:
    """Addresses on which something listens on TCP port in ns."""
    return [r["local"][0] for r in tcp_table(ns) if r["state"] == "0A" and r["local"][1] == port]


# ----------------------------------------------------------------------------- tunnel user

def ensure_tunnel_user() -> pwd.struct_passwd:
    """Create the throwaway tunnel user once (machine-wide, under a lock); return its passwd entry.

    Its password field is '*' (no password, not locked): both sshd without PAM and dropbear refuse a
    locked ('!') account even for key logins.
    """
    with open(LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            try:
                pwd.getpwnam(TUNNEL_USER)
            except KeyError:
                _run(["useradd", "--system", "--no-create-home", "--home-dir", TUNNEL_HOME,
                      "--shell", "/bin/sh", "--user-group", TUNNEL_USER])
            if _shadow_field(TUNNEL_USER).startswith("!"):  # useradd's default, or made elsewhere
                _run(["usermod", "-p", "*", TUNNEL_USER])
            return pwd.getpwnam(TUNNEL_USER)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _shadow_field(user: str) -> str:
    try:
        with open("/etc/shadow") as f:
            for line in f:
                parts = line.split(":")
                if parts[0] == user and len(parts) > 1:
                    return parts[1]
    except OSError:
        pass
    return ""


# ----------------------------------------------------------------------------- servers

class Server:
    """A real sshd or dropbear listener in the server namespace, tracked by pid."""

    def __init__(self, lab: "Lab", kind: str, port: int, argv: List[str], host_key_pub: str,
                 log: str, generation: str = "deb12", version: str = "", prefix: Sequence[str] = ()) -> None:
        self.lab = lab
        self.kind = kind  # "openssh" | "dropbear"
        self.port = port
        self.argv = argv  # the daemon's own command line (what its processes show in /proc)
        self.prefix = list(prefix)  # what runs it: [] or ["chroot", ROOT] (deb13)
        self.generation = generation  # "deb12" | "deb13" (tests/support/hubroot.py)
        self.version = version  # e.g. "OpenSSH_10.0p2", "dropbear 2025.89"
        self.host_key_pub = host_key_pub  # "ssh-ed25519 AAAA..."
        self.log = log
        self.proc = None  # type: Optional[subprocess.Popen]

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not running"
        return self.proc.pid

    def __repr__(self) -> str:
        return "<Server %s %s port %d pid %s>" % (self.version or self.kind, self.generation, self.port,
                                                  self.proc and self.proc.pid)

    @property
    def session_title(self) -> str:
        """How the user's session process starts its title: `sshd: ` (OpenSSH < 9.8) or `sshd-session: `
        (9.8+ runs sessions as a separate binary); dropbear's shows the listener's command line."""
        if self.kind == "dropbear":
            return " ".join(self.argv)
        return "sshd-session: " if self.generation != "deb12" else "sshd: "

    def start(self, timeout: float = 10.0) -> "Server":
        logf = open(self.log, "ab")
        try:
            self.proc = self.lab.srv_popen(self.prefix + self.argv, stdout=logf, stderr=logf)
        finally:
            logf.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Until its sockets listen in the server namespace (sshd: srv_ip and 127.0.0.1, dropbear: any).

        Checked in the namespace's TCP table, not by connecting: a probe connection would show up in the
        server's log and count against MaxStartups.
        """
        need = 2 if self.kind == "openssh" else 1

        def ready() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError("%s exited early (%s); log:\n%s" % (
                    self.kind, self.proc and self.proc.returncode, self.log_text()[-2000:]))
            return len(set(listening(self.lab.srv_ns, self.port))) >= need
        wait_until(ready, timeout, 0.02, "%s to listen on port %d" % (self.kind, self.port))

    def penalty_lines(self) -> List[str]:
        """Log lines where the server punished or refused a client: OpenSSH 9.8+ PerSourcePenalties
        (`srclimit_penalise: ...`, `drop connection ... penalty`, LogLevel VERBOSE shows them),
        MaxStartups drops, and refusals of a client (not "channel N: open failed: connect failed:
        Connection refused", which is a forward's target)."""
        return [l for l in self.log_text().splitlines()
                if any(w in l.lower() for w in ("penalt", "drop connection", "maxstartups"))
                or ("refus" in l.lower() and "open failed" not in l)]

    def log_text(self) -> str:
        try:
            with open(self.log, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def known_hosts_line(self, host: Optional[str] = None, dropbear: bool = False) -> str:
        """A known_hosts line for host (default: the server's veth address) and this port.

        OpenSSH keys non-22 ports as `[host]:port`; dbclient keys every port by the bare host.
        """
        host = host or self.lab.srv_ip
        if dropbear or self.port == 22:
            return "%s %s\n" % (host, self.host_key_pub)
        return "[%s]:%d %s\n" % (host, self.port, self.host_key_pub)

    def session_pids(self, user_only: bool = False) -> List[int]:
        """Per-connection processes: every descendant of the listener (by ppid in /proc).

        OpenSSH: `sshd: USER [priv]` (root) and its `sshd: USER@notty` (the user; owns -R listeners).
        dropbear: one child per connection, plus whatever a session command started.
        user_only: only those running as the tunnel user.
        """
        if self.proc is None or self.proc.poll() is not None:
            return []
        pids = descendants(self.proc.pid)
        if user_only:
            pids = [p for p in pids if _uid(p) == self.lab.uid]
        return pids

    def kill_sessions(self, sig: int = signal.SIGKILL, timeout: float = 3.0) -> List[int]:
        """Signal every session process (a snapshot) and wait until they are gone; return their pids."""
        pids = self.session_pids()
        kill_pids(pids, sig, timeout if sig == signal.SIGKILL else 0)
        return pids

    def stop(self, sessions: bool = True, timeout: float = 3.0) -> None:
        """Stop the listener (TERM, bounded wait, KILL). sessions=True also kills its sessions first
        (the listener is SIGSTOPped meanwhile so it cannot fork new ones); sessions=False leaves them
        running, like `kill $(cat sshd.pid)` on a real server."""
        if self.proc is None:
            return
        if self.proc.poll() is None and sessions:
            try:
                os.kill(self.proc.pid, signal.SIGSTOP)
                self.kill_sessions(signal.SIGKILL, timeout)
                os.kill(self.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        stop_process(self.proc, timeout)

    def restart(self, sessions: bool = True, down_for: float = 0.0, timeout: float = 10.0) -> None:
        """Stop, stay down for down_for seconds, start again (same keys, same port), wait until ready."""
        self.stop(sessions=sessions)
        if down_for > 0:
            time.sleep(down_for)
        self.start(timeout)


def _uid(pid: int) -> int:
    try:
        return os.stat("/proc/%d" % pid).st_uid
    except OSError:
        return -1


SERVICE_CODE = r"""
import socket, sys, threading
host, port, banner = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
s.listen(128)
sys.stdout.write("ready %d\n" % s.getsockname()[1])
sys.stdout.flush()
def serve(c):
    try:
        c.sendall(banner)
        while c.recv(65536):
            pass
    except OSError:
        pass
    finally:
        c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


class Service:
    """A TCP banner service in a namespace: accepts, sends banner, reads until EOF. A subprocess."""

    def __init__(self, lab: "Lab", ns: str, port: int, banner: bytes, bind: str) -> None:
        self.lab, self.ns, self.port, self.banner, self.bind = lab, ns, port, banner, bind
        self.proc = None  # type: Optional[subprocess.Popen]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 5.0) -> "Service":
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.proc = self.lab.ns_popen(
            self.ns, [sys.executable, "-c", SERVICE_CODE, self.bind, str(self.port), self.banner.hex()],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode() if ready else ""  # type: ignore[union-attr]
        if not line.startswith("ready "):
            stop_process(self.proc)
            err = self.proc.stderr.read().decode(errors="replace")  # type: ignore[union-attr]
            raise RuntimeError("service %s:%d did not start: %s" % (self.bind, self.port, err.strip()))
        self.port = int(line.split()[1])
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            for f in (self.proc.stdout, self.proc.stderr):
                if f:
                    f.close()


# ----------------------------------------------------------------------------- the lab

class Lab:
    """Two network namespaces (box, server) on a veth pair, real ssh servers, faults. Root only."""

    def __init__(self, tag: Optional[str] = None, generation: str = hubroot.DEFAULT) -> None:
        problems = missing_requirements()
        if problems:
            raise RuntimeError("lab cannot run: " + "; ".join(problems))
        pid = os.getpid()
        for _ in range(100):  # skip names left behind by a killed run whose pid we reuse
            self.n = next(_counter)
            self.box_ns = "skb%dn%d" % (pid, self.n)
            self.srv_ns = "sks%dn%d" % (pid, self.n)
            if not any(os.path.exists(p) for p in ("/run/netns/" + self.box_ns, "/run/netns/" + self.srv_ns,
                                                   "/etc/netns/" + self.srv_ns)):
                break
        self.box_if, self.srv_if = "vbox", "vsrv"
        net = (pid * 7 + self.n) % 250 + 1
        self.box_ip = "10.213.%d.1" % net
        self.srv_ip = "10.213.%d.2" % net
        self.prefix = 24
        tag = "".join(c if c.isalnum() or c in "-_." else "_" for c in (tag or self.srv_ns))[:40]
        self.dir = tempfile.mkdtemp(prefix="sklab-%s-" % tag, dir="/tmp")
        os.chmod(self.dir, 0o700)
        self.user = TUNNEL_USER
        self.home = "/var/tmp/%s-home" % self.srv_ns
        self.uid = self.gid = -1
        self._procs = []  # type: List[subprocess.Popen]
        self._rules = []  # type: List[tuple]
        self.servers = []  # type: List[Server]
        self._made_ns = []  # type: List[str]
        self.generation = generation  # the servers' default generation (tests/support/hubroot.py)
        self._hub_roots = {}  # type: Dict[str, str]
        self._mounts = []  # type: List[str]
        self._versions = {}  # type: Dict[str, Dict[str, str]]
        self._closed = False
        self._lock = threading.Lock()
        _live_labs.append(self)
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    # -- setup
    def _setup(self) -> None:
        for ns in (self.box_ns, self.srv_ns):
            _run(["ip", "netns", "add", ns])
            self._made_ns.append(ns)
        _run(["ip", "link", "add", self.box_if, "netns", self.box_ns, "type", "veth",
              "peer", "name", self.srv_if, "netns", self.srv_ns])
        for ns, ifname, ip in ((self.box_ns, self.box_if, self.box_ip), (self.srv_ns, self.srv_if, self.srv_ip)):
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            _run(["ip", "-n", ns, "addr", "add", "%s/%d" % (ip, self.prefix), "dev", ifname])
            _run(["ip", "-n", ns, "link", "set", ifname, "up"])
        pw = ensure_tunnel_user()
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self._make_home(pw)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        # the client key, in both formats, readable by root only (the agent runs as root in the box)
        self.key_openssh = os.path.join(self.dir, "id_ed25519")
        self.key_dropbear = os.path.join(self.dir, "id_ed25519.dropbear")
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "sklab-client", "-f", self.key_openssh])
        _run(["dropbearconvert", "openssh", "dropbear", self.key_openssh, self.key_dropbear])
        with open(self.key_openssh + ".pub") as f:
            self.key_pub = f.read().strip()
        self.authorize_key(self.key_pub)

    def _make_home(self, pw: pwd.struct_passwd) -> None:
        """A private home for the tunnel user, seen only inside this lab's server namespace."""
        etc = "/etc/netns/%s" % self.srv_ns
        os.makedirs(etc, exist_ok=True)
        lines = []
        with open("/etc/passwd") as f:
            for line in f:
                parts = line.rstrip("\n").split(":")
                if len(parts) >= 7 and parts[0] == self.user:
                    parts[5] = self.home
                    line = ":".join(parts) + "\n"
                lines.append(line)
        with open(os.path.join(etc, "passwd"), "w") as f:
            f.writelines(lines)
        os.chmod(os.path.join(etc, "passwd"), 0o644)
        ssh_dir = os.path.join(self.home, ".ssh")
        shutil.rmtree(self.home, ignore_errors=True)  # a crashed run's, same name: ours
        os.makedirs(ssh_dir)
        os.chmod(self.home, 0o755)
        os.chmod(ssh_dir, 0o700)
        for p in (self.home, ssh_dir):
            os.chown(p, pw.pw_uid, pw.pw_gid)

    def authorize_key(self, pub_line: str) -> None:
        """Append a public key line to the tunnel user's authorized_keys (this lab's home)."""
        path = os.path.join(self.home, ".ssh", "authorized_keys")
        with open(path, "a") as f:
            f.write(pub_line.strip() + "\n")
        os.chmod(path, 0o600)
        os.chown(path, self.uid, self.gid)

    # -- processes
    def ns_popen(self, ns: str, argv: Sequence[str], **kw) -> subprocess.Popen:
        """Start argv inside ns (`ip netns exec` execs: the Popen pid is the process), tracked."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(["ip", "netns", "exec", ns] + list(argv), **kw)
        with self._lock:
            self._procs.append(p)
        return p

    def box_popen(self, argv: Sequence[str], **kw) -> subprocess.Popen:
        return self.ns_popen(self.box_ns, argv, **kw)

    def srv_popen(self, argv: Sequence[str], **kw) -> subprocess.Popen:
        return self.ns_popen(self.srv_ns, argv, **kw)

    def ns_run(self, ns: str, argv: Sequence[str], timeout: float = 10, **kw) -> subprocess.CompletedProcess:
        """Run argv inside ns to completion; captures stdout/stderr unless given. Kills it on timeout."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        if "input" in kw:
            kw.pop("stdin")
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        return subprocess.run(["ip", "netns", "exec", ns] + list(argv), timeout=timeout, **kw)

    def box_run(self, argv: Sequence[str], timeout: float = 10, **kw) -> subprocess.CompletedProcess:
        return self.ns_run(self.box_ns, argv, timeout, **kw)

    def srv_run(self, argv: Sequence[str], timeout: float = 10, **kw) -> subprocess.CompletedProcess:
        return self.ns_run(self.srv_ns, argv, timeout, **kw)

    def user_run(self, argv: Sequence[str], timeout: float = 10, **kw) -> subprocess.CompletedProcess:
        """Run argv in the server namespace as the tunnel user (HOME = lab.home), e.g. to check what a
        remote command could see or do there."""
        env = dict(kw.pop("env", None) or os.environ, HOME=self.home, USER=self.user, LOGNAME=self.user)
        return self.srv_run(["setpriv", "--reuid", str(self.uid), "--regid", str(self.gid), "--clear-groups",
                             "--"] + list(argv), timeout, env=env, **kw)

    def tracked_pids(self) -> List[int]:
        return [p.pid for p in self._procs]

    def ns_pids(self, ns: str) -> List[int]:
        """Every pid whose network namespace is ns (`ip netns pids`)."""
        r = _run(["ip", "netns", "pids", ns], check=False)
        return [int(x) for x in r.stdout.split() if x.isdigit()]

    # -- servers
    def _server_paths(self, kind: str, port: int, generation: str = "deb12") -> Dict[str, str]:
        """Host paths of a server's files; for deb13 also "in": the same files as the chroot sees them."""
        if generation == "deb12":
            base = os.path.join(self.dir, "%s-%d" % (kind, port))
            return {"key": base + ".hostkey", "pid": base + ".pid", "log": base + ".log", "conf": base + ".conf"}
        root = self.hub_root(generation)
        inside = "/etc/ssh/lab-%s-%d" % (kind, port)
        return {"key": root + inside + ".hostkey", "conf": root + inside + ".conf",
                "pid": root + "/run/lab-%s-%d.pid" % (kind, port),
                "log": os.path.join(self.dir, "%s-%s-%d.log" % (generation, kind, port)),
                "in": inside, "in_pid": "/run/lab-%s-%d.pid" % (kind, port)}

    def _generation(self, generation: Optional[str]) -> str:
        gen = generation or self.generation
        if gen not in hubroot.GENERATIONS:
            raise ValueError("unknown server generation %r (known: %s)" % (gen, ", ".join(hubroot.GENERATIONS)))
        return gen

    def server_versions(self, generation: Optional[str] = None) -> Dict[str, str]:
        """{"openssh": "OpenSSH_9.2p1", "dropbear": "2022.83"} of a generation's servers."""
        gen = self._generation(generation)
        if gen not in self._versions:
            self._versions[gen] = hubroot.host_versions() if gen == "deb12" else \
                hubroot.ensure_hub_root().versions
        return self._versions[gen]

    def hub_root(self, generation: str) -> str:
        """This lab's root for a deb13 server: an overlay of the cached Debian 13 root (tests/support/hubroot.py)
        with the tunnel user (host uid, lab.home bind-mounted at the same path) and /proc. Made once."""
        if generation in self._hub_roots:
            return self._hub_roots[generation]
        try:
            base = hubroot.ensure_hub_root().dir
        except hubroot.HubError as e:
            raise RuntimeError("the %s hub cannot run: %s" % (generation, e))
        d = os.path.join(self.dir, "hub-" + generation)
        upper, work, merged = (os.path.join(d, n) for n in ("upper", "work", "root"))
        for x in (upper, work, merged):
            os.makedirs(x)
        self._mount(["-t", "overlay", "overlay", "-o", "lowerdir=%s,upperdir=%s,workdir=%s" % (base, upper, work),
                     merged], merged)
        self._mount(["-t", "proc", "proc", merged + "/proc"], merged + "/proc")
        os.makedirs(merged + self.home, exist_ok=True)
        self._mount(["--bind", self.home, merged + self.home], merged + self.home)
        user_lines = {"passwd": "%s:x:%d:%d::%s:/bin/sh\n" % (self.user, self.uid, self.gid, self.home),
                      "group": "%s:x:%d:\n" % (self.user, self.gid),
                      "shadow": "%s:*:19000:0:99999:7:::\n" % self.user}
        for name, line in user_lines.items():
            with open(os.path.join(merged, "etc", name), "a") as f:
                f.write(line)
        self._hub_roots[generation] = merged
        return merged

    def _mount(self, args: List[str], target: str) -> None:
        _run(["mount"] + args)
        self._mounts.append(target)

    def _unmount_all(self) -> bool:
        """Undo hub_root's mounts, newest first (lazy when busy); True if none is left."""
        for target in reversed(self._mounts):
            if _run(["umount", target], check=False).returncode != 0:
                _run(["umount", "-l", target], check=False)
        left = [t for t in self._mounts if os.path.ismount(t)]
        self._mounts = left
        return not left

    def start_sshd(self, port: int = 22, client_alive: Optional[int] = None,
                   extra: Optional[Sequence[str]] = None, client_alive_count: int = 3,
                   generation: Optional[str] = None) -> Server:
        """A real OpenSSH sshd on srv_ip:port and 127.0.0.1:port. extra: more sshd_config lines.
        generation: "deb12" (the machine's sshd 9.2) or "deb13" (10.x, chroot); default lab.generation."""
        gen = self._generation(generation)
        p = self._server_paths("openssh", port, gen)
        if not os.path.exists(p["key"]):
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", p["key"]])
        with open(p["key"] + ".pub") as f:
            pub = " ".join(f.read().split()[:2])
        conf = [
            "ListenAddress %s:%d" % (self.srv_ip, port),
            "ListenAddress 127.0.0.1:%d" % port,
            "HostKey %s" % (p["in"] + ".hostkey" if "in" in p else p["key"]),
            "PidFile %s" % p.get("in_pid", p["pid"]),
            "UsePAM no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "AuthorizedKeysFile .ssh/authorized_keys",
            "AllowUsers %s" % self.user,
            "PermitRootLogin no",
            "StrictModes yes",
            "AllowTcpForwarding yes",
            "GatewayPorts no",
            "PrintMotd no",
            "LogLevel VERBOSE",
        ]
        if client_alive:
            conf += ["ClientAliveInterval %d" % client_alive, "ClientAliveCountMax %d" % client_alive_count]
        conf += list(extra or [])
        with open(p["conf"], "w") as f:
            f.write("\n".join(conf) + "\n")
        if gen == "deb12":
            argv, prefix = [shutil.which("sshd") or "/usr/sbin/sshd", "-D", "-e", "-f", p["conf"]], []
        else:
            argv, prefix = ["/usr/sbin/sshd", "-D", "-e", "-f", p["in"] + ".conf"], ["chroot", self.hub_root(gen)]
        srv = Server(self, "openssh", port, argv, pub, p["log"], gen, self.server_versions(gen)["openssh"], prefix)
        self.servers.append(srv)
        return srv.start()

    def start_dropbear(self, port: int = 2222, extra: Optional[Sequence[str]] = None,
                       generation: Optional[str] = None) -> Server:
        """A real dropbear server on port (all addresses). extra: more arguments (e.g. ["-K", "5"]).
        generation: "deb12" (2022.83) or "deb13" (2025.89, chroot); default lab.generation."""
        gen = self._generation(generation)
        p = self._server_paths("dropbear", port, gen)
        if not os.path.exists(p["key"]):
            _run(["dropbearkey", "-t", "ed25519", "-f", p["key"]])
        out = _run(["dropbearkey", "-y", "-f", p["key"]]).stdout.decode()
        pub = next(" ".join(l.split()[:2]) for l in out.splitlines() if l.startswith("ssh-"))
        if gen == "deb12":
            argv = [shutil.which("dropbear") or "/usr/sbin/dropbear", "-F", "-E", "-s", "-r", p["key"],
                    "-p", str(port), "-P", p["pid"]] + list(extra or [])
            prefix = []  # type: List[str]
        else:
            argv = ["/usr/sbin/dropbear", "-F", "-E", "-s", "-r", p["in"] + ".hostkey", "-p", str(port),
                    "-P", p["in_pid"]] + list(extra or [])
            prefix = ["chroot", self.hub_root(gen)]
        srv = Server(self, "dropbear", port, argv, pub, p["log"], gen,
                     "dropbear " + self.server_versions(gen)["dropbear"], prefix)
        self.servers.append(srv)
        return srv.start()

    def known_hosts(self, server: Server, path: Optional[str] = None, host: Optional[str] = None) -> str:
        """Write an OpenSSH known_hosts file for server; return its path."""
        path = path or os.path.join(self.dir, "known_hosts-%s-%d" % (server.kind, server.port))
        with open(path, "w") as f:
            f.write(server.known_hosts_line(host))
        return path

    def dropbear_home(self, server: Server, host: Optional[str] = None) -> str:
        """A directory to use as HOME for dbclient: .ssh/known_hosts holds server's key (host, no port)."""
        home = os.path.join(self.dir, "dbhome-%s-%d" % (server.kind, server.port))
        os.makedirs(os.path.join(home, ".ssh"), mode=0o700, exist_ok=True)
        with open(os.path.join(home, ".ssh", "known_hosts"), "w") as f:
            f.write(server.known_hosts_line(host, dropbear=True))
        return home

    def ssh_argv(self, server: Server, *opts: str, cmd: Sequence[str] = (),
                 known_hosts: Optional[str] = None) -> List[str]:
        """A plain OpenSSH client argv to server as the tunnel user: key only, BatchMode, strict host
        key; opts go before the host, cmd (remote command words) after it."""
        kh = known_hosts or self.known_hosts(server)
        return ["ssh", "-F", "/dev/null", "-i", self.key_openssh, "-p", str(server.port), "-l", self.user,
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=%s" % kh,
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes"] + \
            list(opts) + [self.srv_ip] + list(cmd)

    def dbclient_argv(self, server: Server, *opts: str, cmd: Sequence[str] = ()) -> List[str]:
        """A plain dbclient argv to server; run it with env HOME=lab.dropbear_home(server), or it asks
        about the host key forever."""
        return ["dbclient", "-i", self.key_dropbear, "-p", str(server.port), "-l", self.user] + \
            list(opts) + [self.srv_ip] + list(cmd)

    # -- services and probes
    def start_service(self, ns: str, port: int, banner: bytes = b"SVC-READY\r\n",
                      bind: str = "127.0.0.1") -> Service:
        """A banner service in ns (port 0: pick one; read service.port)."""
        return Service(self, ns, port, banner, bind).start()

    def probe_from(self, ns: str, host: str, port: int, timeout: float = 2.0) -> Optional[bytes]:
        return probe_from(ns, host, port, timeout)

    def connect_in(self, ns: str, host: str, port: int, timeout: float = 2.0) -> socket.socket:
        return connect_in(ns, host, port, timeout)

    def listening(self, ns: str, port: int) -> List[str]:
        return listening(ns, port)

    def flows(self, srv_port: int) -> List[int]:
        """Box-side ports of established TCP connections from the box to srv_ip:srv_port."""
        return sorted(r["local"][1] for r in tcp_table(self.box_ns)  # type: ignore[index]
                      if r["state"] == "01" and r["remote"] == (self.srv_ip, srv_port))

    @staticmethod
    def wait_until(fn: Callable[[], object], timeout: float, interval: float = 0.2,
                   what: str = "condition") -> object:
        return wait_until(fn, timeout, interval, what)

    # -- faults
    def _rule(self, ns: str, spec: List[str], on: bool) -> None:
        key = (ns, tuple(spec))
        if on and key in self._rules:
            return
        if not on and key not in self._rules:
            return
        _run(["ip", "netns", "exec", ns, "iptables", "-w", "5", "-I" if on else "-D"] + spec)
        if on:
            self._rules.append(key)
        else:
            self._rules.remove(key)

    def blackhole(self, on: bool = True) -> None:
        """Drop every packet on the link, both ways (INPUT DROP on each end of the veth)."""
        self._rule(self.box_ns, ["INPUT", "-i", self.box_if, "-j", "DROP"], on)
        self._rule(self.srv_ns, ["INPUT", "-i", self.srv_if, "-j", "DROP"], on)

    def drop_flow(self, box_port: int, srv_port: int, on: bool = True) -> None:
        """Drop one TCP flow box_ip:box_port <-> srv_ip:srv_port for good (both ways); others pass."""
        self._rule(self.box_ns, ["INPUT", "-i", self.box_if, "-p", "tcp", "-s", self.srv_ip,
                                 "--sport", str(srv_port), "--dport", str(box_port), "-j", "DROP"], on)
        self._rule(self.srv_ns, ["INPUT", "-i", self.srv_if, "-p", "tcp", "-s", self.box_ip,
                                 "--sport", str(box_port), "--dport", str(srv_port), "-j", "DROP"], on)

    def clear_faults(self) -> None:
        for ns, spec in list(reversed(self._rules)):
            self._rule(ns, list(spec), False)

    def kill_listener(self, port: int, host: Optional[str] = None) -> subprocess.CompletedProcess:
        """Destroy listening sockets on the server (`ss -K`); the owning process lives on.

        host None: every address on that port (a dropbear server binds `-R 127.0.0.1:P` on 127.0.0.1
        and ::1 both)."""
        if host is None:
            flt = ["sport", "=", ":%d" % port]
        else:
            flt = ["src", "%s:%d" % ("[%s]" % host if ":" in host else host, port)]
        return self.srv_run(["ss", "-K", "-t", "-l"] + flt)

    # -- cleanup
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        listeners = [srv.proc for srv in self.servers if srv.proc is not None]
        stop_processes([p for p in self._procs if p not in listeners])  # clients (agents) first
        for srv in self.servers:
            if srv.proc is not None and srv.proc.poll() is None:
                srv.stop(sessions=True)
        stop_processes(self._procs)
        for p in self._procs:
            for f in (p.stdin, p.stdout, p.stderr):
                if f:
                    try:
                        f.close()
                    except OSError:
                        pass
        for ns in self._made_ns:  # whatever is left in our namespaces was started by us
            left = self.ns_pids(ns)
            if left:
                kill_pids(left, signal.SIGKILL)
        for ns in self._made_ns:
            _run(["ip", "netns", "del", ns], check=False)
            shutil.rmtree("/etc/netns/%s" % ns, ignore_errors=True)
        if self._unmount_all():  # never remove through a mount (the lab's home, /proc)
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            sys.stderr.write("lab cleanup: still mounted, %s left behind: %s\n" % (self.dir, self._mounts))
        shutil.rmtree(self.home, ignore_errors=True)
        if self in _live_labs:
            _live_labs.remove(self)

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@atexit.register
def _close_all() -> None:
    for lab in list(_live_labs):
        try:
            lab.close()
        except Exception as e:  # keep closing the others
            sys.stderr.write("lab cleanup failed: %r\n" % (e,))
