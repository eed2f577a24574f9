"""A process that looks like a server's session process (`sshd: USER@notty`) running a session command
as its child, as on a hub; and a process's start time, as session records carry it."""

import subprocess

from agent.hubside.remote import parse_ready

SHELLS = {"dash": "/bin/dash", "bash": "/usr/bin/bash", "busybox": "/usr/bin/busybox"}


class FakeSession:
    """A process whose cmdline looks like a server's session process, running session_command as its child.

    perl sets its own cmdline with $0 and waits for the child: the child's $PPID is this process,
    as a remote command's $PPID is the `sshd: USER@notty` process.
    """

    def __init__(self, cmd, argv0="sshd: tester@notty", user=None, shell="dash"):
        pre = []
        if user is not None:
            pre = ["/usr/bin/setpriv", "--reuid", str(user), "--regid", str(user), "--clear-groups", "--"]
        sh = [SHELLS[shell]] + (["sh"] if shell == "busybox" else [])
        self.proc = subprocess.Popen(
            pre + ["perl", "-e", '$0 = shift; my $c = pop; system(@ARGV, "-c", $c); exit 0', argv0] + sh + [cmd],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})
        self.pid = self.proc.pid
        line = self._readline(5)
        self.ready = parse_ready(line)
        assert self.ready, "no ready line: %r" % line

    def _readline(self, timeout):
        import select
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline().decode() if r else ""

    def close(self):
        """Close stdin (the session's wait ends) and reap, bounded."""
        if self.proc.stdin:
            self.proc.stdin.close()
            self.proc.stdin = None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(3)
        self.proc.stdout.close()


def starttime(pid):
    with open("/proc/%d/stat" % pid) as f:
        return f.read().rsplit(")", 1)[1].split()[19]
