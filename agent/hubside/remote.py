"""Everything that runs on the SERVER, as pure string builders and interpreters.

The lead's supervisor runs these strings as the remote command of an ssh exec
(`ssh ... HOST COMMAND`, `dbclient ... HOST COMMAND`) under its own timeout and
hands the outcome back to the `interpret_*` functions here. Nothing here
spawns ssh. The in-band loop check (`LoopListener`) is box-side but lives
here because it pairs with the forwards it adds to the tunnel.

Quoting: every remote command is `exec sh -c SCRIPT NAME ARG...` where SCRIPT
is a constant of this module and each ARG is a validated value passed through
shlex.quote: no configuration text is ever part of the script itself.

Exit codes, one table for all remote one-liners (80-92: clear of ssh's 255,
dbclient's 1 for everything, the shell's 2/126/127 and signal deaths 128+N):

    80 CHECK_OK            connected; banner matched, data came, or silent through the grace
    81 CHECK_REFUSED       nothing listens on the forward's server-side address
    82 CHECK_CLOSED        accepted, then closed at once: the tunnel's far end is broken
                           (box-side target refused, or the channel could not be opened)
    83 CHECK_NO_ANSWER     connect not answered, or a banner expected and nothing came
    84 CHECK_MISMATCH      bytes came that are not the banner: the port is held by a stranger
    85 CHECK_NO_INTERPRETER none of python3, python, perl, bash, busybox nc on the server
    86 CHECK_ERROR         the check itself failed (e.g. ::1 with IPv6 disabled)
    90 RECLAIM_DONE        this box's own last session held the port and was ended
    91 RECLAIM_NOTHING     no live session is registered for the port
    92 RECLAIM_NOT_OURS    our own last session is alive but cannot be ended by us
                           (other uid, e.g. a dropbear server's root-owned session; not a
                           session process; kill refused; or still alive after KILL)
    93 RECLAIM_HELD        a live session that is not exactly our own last one is
                           registered for the port (another box's): left alone

Assumptions about the server, numbered (each one-liner names the ones it needs):
 1. `sh` on PATH is a POSIX shell (tested: dash, bash, busybox ash) and the
    login shell is Bourne-like: it runs `exec sh -c 'SCRIPT' NAME ARG...`
    (one line, no newline is ever sent).
 2. `command -v`, `printf`, `read`, `kill`, `wait`, `trap` are shell builtins;
    `sleep` is a command that exists (coreutils or busybox; fractions not needed).
 3. The check's interpreters: python3 or python (2.6+ or 3.x, stdlib socket),
    perl 5.8+ (IO::Socket::INET; IO::Socket::IP for IPv6: core since 5.20),
    bash 4+ (/dev/tcp, fractional `read -t`; its banner cannot contain NUL),
    or `busybox nc ADDR PORT` plus `busybox od`.
 4. bash /dev/tcp and busybox nc cannot bound a connect themselves: a
    background `sleep T+1; kill -9` ends them. When it fires it leaves a
    `sleep` orphan with /dev/null as stdin/stdout/stderr, so the ssh channel
    still closes at once; it exits by itself within T+1 s.
 5. With busybox nc, "accepted and silent" and "connect not answered" look the
    same (both end by the killer); with a banner the second is NO_ANSWER. Its
    grace is rounded up to whole seconds, and a banner check always takes T+1 s.
 6. Reclaim needs Linux /proc (PID/stat, PID/cmdline, PID/status readable by
    the user, true for non-dumpable sshd session processes), `rm`, `mkdir`,
    and a writable state directory ($HOME/.sshkeep by default).
 7. OpenSSH: the remote command's parent ($PPID) is the `sshd: USER@notty`
    process that owns the session's listeners, running as the user; from 9.8
    on (sshd split into sshd-session) it is titled `sshd-session: USER@notty`.
    dropbear (2022.83): it is the per-connection `dropbear` process, a child
    of the listener whose cmdline is the listener's plus its re-exec `-2 N`
    (e.g. "/usr/sbin/dropbear -F -p 2222 -2 8"); it keeps running as root:
    only a root tunnel user can end it (else RECLAIM_NOT_OURS).
 8. The process start time (field 22 of /proc/PID/stat) is recorded with the
    pid, so a recycled pid is never mistaken for the session.
 9. `date +%s` prints the epoch (coreutils, busybox); without it the record's
    `since` is "-". Only people read it: nothing is decided on the hub's clock.
"""

from __future__ import annotations

import errno
import os
import re
import selectors
import socket
import time

from agent.run import identity

from agent.core import values
from agent.core.model import Forward
from agent.run.probe import (
    BANNER_MISMATCH, CLOSED, ERROR, OK_DATA, REFUSED, TIMEOUT, ProbeResult, is_ip_literal,
)

if False:  # annotations only: importing typing would cost the agent 0.5 MB of memory
    from typing import List, Optional, Sequence, Tuple

_UNSAFE = re.compile(r"[^\w@%+=:,./-]", re.ASCII).search


def quote(s):
    """shlex.quote, the same rule: the shlex module would cost the resident agent ~30 KB."""
    if not s:
        return "''"
    if _UNSAFE(s) is None:
        return s
    return "'" + s.replace("'", "'\"'\"'") + "'"


# --- the exit-code table -----------------------------------------------------
CHECK_OK = 80
CHECK_REFUSED = 81
CHECK_CLOSED = 82
CHECK_NO_ANSWER = 83
CHECK_MISMATCH = 84
CHECK_NO_INTERPRETER = 85
CHECK_ERROR = 86
RECLAIM_DONE = 90
RECLAIM_NOTHING = 91
RECLAIM_NOT_OURS = 92
RECLAIM_HELD = 93

# --- verdicts ----------------------------------------------------------------
OK = "ok"
NO_ANSWER = "no-answer"
MISMATCH = "mismatch"
NO_INTERPRETER = "no-interpreter"
UNREACHABLE = "unreachable"   # ssh itself failed or timed out: not a verdict on the forward
NO_COMMAND = "no-command"     # the server ran something else (forced command, no shell, nologin)
RECLAIMED = "reclaimed"
NOTHING = "nothing"
NOT_OURS = "not-ours"
HELD = "held"                 # another live session (another box, or one this agent cannot prove its own)
# REFUSED, CLOSED, ERROR: the same strings as agent.run.probe's
CHECK_VERDICTS = {
    CHECK_OK: OK, CHECK_REFUSED: REFUSED, CHECK_CLOSED: CLOSED, CHECK_NO_ANSWER: NO_ANSWER,
    CHECK_MISMATCH: MISMATCH, CHECK_NO_INTERPRETER: NO_INTERPRETER, CHECK_ERROR: ERROR,
}
RECLAIM_VERDICTS = {RECLAIM_DONE: RECLAIMED, RECLAIM_NOTHING: NOTHING, RECLAIM_NOT_OURS: NOT_OURS,
                    RECLAIM_HELD: HELD}

CHECK_MARKER = "sshkeep-check"
READY_MARKER = "sshkeep-ready"
RECLAIM_MARKER = "sshkeep-reclaim"
ANSWER_MARKER = "sshkeep-answer"
GONE_MARKER = "sshkeep-gone"
DEFAULT_STATE_DIR = "$HOME/.sshkeep"
INTERPRETERS = ("python3", "python", "perl", "bash", "nc")
CLIENT_FAILURE = {"openssh": 255, "dropbear": 1}


def _oneline(text: str) -> str:
    """Join script lines with '; ' (a line ending in do/then/else/{/| continues with a space)."""
    out = ""
    for line in text.strip().splitlines():
        line = line.strip()
        if out:
            out += " " if out.endswith((" do", " then", " else", "{", "|")) else "; "
        out += line
    return out


# --- the check, per interpreter: argv = ADDR PORT BANNERHEX TIMEOUT GRACE ----
_PY = r"""import socket, sys, time, errno, binascii
a, p, b, t, g = sys.argv[1], int(sys.argv[2]), binascii.unhexlify(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
end = time.time() + t
s = socket.socket(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(t)
try:
    s.connect((a, p))
except socket.timeout:
    sys.exit(83)
except socket.error as e:
    sys.exit({errno.ECONNREFUSED: 81, errno.ECONNRESET: 82}.get(e.errno, 86))
lim = b and end or min(end, time.time() + g)
d = b""
while 1:
    r = lim - time.time()
    if r <= 0:
        break
    s.settimeout(r)
    try:
        c = s.recv(4096)
    except socket.timeout:
        break
    except socket.error:
        c = b""
    if not c:
        sys.exit(d and 84 or 82)
    d += c
    if not b or d[:len(b)] == b:
        sys.exit(80)
    if b[:len(d)] != d[:len(b)]:
        sys.exit(84)
sys.exit(d and 84 or (b and 83 or 80))
"""
PY_CHECK = "exec(%r)" % _PY  # one line: the source travels as a string literal

PERL_CHECK = " ".join("""
use IO::Socket; use Time::HiRes qw(time);
my ($a, $p, $h, $t, $g) = @ARGV; my $b = pack("H*", $h); my $end = time + $t;
my $c = ($a =~ /:/) ? "IO::Socket::IP" : "IO::Socket::INET"; eval "require $c" or exit 86;
my $s = $c->new(PeerHost => $a, PeerPort => $p, Proto => "tcp", Timeout => $t);
if (!$s) { exit($!{ECONNREFUSED} ? 81 : $!{ECONNRESET} ? 82 : ($!{ETIMEDOUT} || $!{EINPROGRESS}) ? 83 : 86) }
my $lim = length($b) ? $end : (time + $g < $end ? time + $g : $end); my $d = "";
while (1) {
  my $r = $lim - time; last if $r <= 0;
  my $rin = ""; vec($rin, fileno($s), 1) = 1; my $n = select(my $rout = $rin, undef, undef, $r);
  next if $n < 0; last if $n == 0;
  my $x = ""; my $k = sysread($s, $x, 4096);
  if (!$k) { exit(length($d) ? 84 : 82) }
  $d .= $x; exit 80 if !length($b) || substr($d, 0, length $b) eq $b;
  exit 84 if substr($b, 0, length $d) ne substr($d, 0, length $b);
}
exit(length($d) ? 84 : length($b) ? 83 : 80);
""".split())

BASH_CHECK = _oneline("""
a=$1 p=$2 h=$3 t=$4 g=$5 b= i=0
while [ $i -lt ${#h} ]; do printf -v c "\\x${h:i:2}"; b+=$c; i=$((i+2)); done
{ exec 3<>/dev/tcp/$a/$p; } 2>/dev/null || { case $( (exec 3<>/dev/tcp/$a/$p) 2>&1 ) in *refused*) exit 81;; *) exit 86;; esac; }
if [ -z "$b" ]; then IFS= read -r -d "" -n 1 -t "$g" x <&3; r=$?; [ $r -eq 1 ] && exit 82; exit 80; fi
IFS= read -r -d "" -n ${#b} -t "$t" x <&3; r=$?
[ "$x" = "$b" ] && exit 80
[ -n "$x" ] && exit 84
[ $r -gt 128 ] && exit 83
exit 82
""")

# The check driver (assumptions 1-5). $1 addresses (space separated IP
# literals), $2 port, $3 banner hex, $4 timeout per address, $5 grace,
# $6 interpreter order, $7 python, $8 perl, $9 bash program.
_CHECK_SH = _oneline("""
LC_ALL=C
export LC_ALL
A=$1 P=$2 H=$3 T=$4 G=$5 O=$6 PY=$7 PL=$8 BA=$9
S=$((${T%.*} + 1)) GI=$((${G%.*} + 1))
k() { "$@" & w=$!; { sleep $S; kill -9 $w; } </dev/null >/dev/null 2>&1 & z=$!; wait $w 2>/dev/null; r=$?; kill $z 2>/dev/null; return $r; }
n1() { L=$GI; [ -n "$H" ] && L=$S; o=$( { { sleep $L; } </dev/null 2>/dev/null | { exec 4<&0; busybox nc "$1" "$P" <&4 2>/dev/null & w=$!; { sleep $L; kill -9 $w; } </dev/null >/dev/null 2>&1 & z=$!; wait $w 2>/dev/null; echo "S$?" >&3; kill $z 2>/dev/null; } | busybox od -An -tx1 -v; } 3>&1 ); st= x=; for v in $o; do case $v in S*) st=${v#S};; *) x=$x$v;; esac; done; if [ -n "$x" ]; then [ -z "$H" ] && return 80; case $x in "$H"*) return 80;; esac; return 84; fi; case $st in 137|143) [ -n "$H" ] && return 83; return 80;; 0) return 82;; esac; m=$(k busybox nc "$1" "$P" 2>&1 >/dev/null); case $m in *refused*) return 81;; esac; return 86; }
I=
for c in $O; do if [ $c = nc ]; then command -v busybox >/dev/null 2>&1 && { busybox nc </dev/null >/dev/null 2>&1; [ $? -ne 127 ]; } && { busybox od </dev/null >/dev/null 2>&1; [ $? -ne 127 ]; } && I=nc; else command -v $c >/dev/null 2>&1 && I=$c; fi; [ -n "$I" ] && break; done
[ -z "$I" ] && { echo "sshkeep-check 85 none -"; exit 85; }
f= fa=
for a in $A; do case $I in python*) k $I -c "$PY" "$a" "$P" "$H" "$T" "$G";; perl) k perl -e "$PL" "$a" "$P" "$H" "$T" "$G";; bash) k bash -c "$BA" sshkeep "$a" "$P" "$H" "$T" "$G";; nc) n1 "$a";; esac; r=$?; case $r in 8[0-6]) ;; 137) r=83;; *) r=86;; esac; [ -z "$f" ] && f=$r fa=$a; [ $r = 80 ] && { f=80 fa=$a; break; }; done
echo "sshkeep-check $f $I $fa"
exit $f
""")

# --- the in-session responder (assumption 10) ---------------------------------
# Runs in the tunnel's own session after the ready line, for the session's life:
# one request per line on stdin, one answer per request on stdout. Requests are
# data: words checked against fixed patterns, never evaluated.
#   ID ping                          -> sshkeep-answer ID pong
#   ID count                         -> sshkeep-answer ID count N   (live sessions recorded in DIR)
#   ID check ADDRS PORT HEX T G      -> sshkeep-answer ID check CODE INTERPRETER ADDRESS
#   anything else with an ID         -> sshkeep-answer ID bad       (a line without an ID: no answer)
# ID: 1-12 digits. ADDRS: 1-2 IP literals, comma-separated, tried in turn (the
# first 80 wins, else the first address's code). HEX: the banner, hex, or "-".
# T, G: timeout per address and grace, seconds in (0, 300]. CODE: the CHECK_*
# table above. A line longer than 600 bytes is skipped whole; memory does not
# grow with the number of requests. EOF on stdin ends it with status 0.
# python: `_socket`, the C module under `socket` (same calls), without the enum and
# selectors imports: about 1 MB less private memory per session on the hub.
_PY_RESPONDER_SRC = r"""import sys, os, time, errno, binascii, _socket as socket
O = getattr(sys.stdout, "buffer", sys.stdout)
D, N = sys.argv[1], sys.argv[2]
def ck(a, p, b, t, g):
    end = time.time() + t
    s = socket.socket(":" in a and socket.AF_INET6 or socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(t)
        try:
            s.connect((a, p))
        except socket.timeout:
            return 83
        except socket.error as e:
            return {errno.ECONNREFUSED: 81, errno.ECONNRESET: 82}.get(e.errno, 86)
        lim = b and end or min(end, time.time() + g)
        d = b""
        while 1:
            r = lim - time.time()
            if r <= 0:
                break
            s.settimeout(r)
            try:
                c = s.recv(4096)
            except socket.timeout:
                break
            except socket.error:
                c = b""
            if not c:
                return d and 84 or 82
            d += c
            if not b or d[:len(b)] == b:
                return 80
            if b[:len(d)] != d[:len(b)]:
                return 84
        return d and 84 or (b and 83 or 80)
    finally:
        s.close()
def cn():
    n = {}
    try:
        fs = os.listdir(D)
    except OSError:
        return 0
    for f in fs:
        w = f.split("-")
        if len(w) != 3 or w[0] != "rport" or not w[2].isdigit():
            continue
        try:
            h = open("/proc/%s/stat" % w[2])
            x = h.read(1024).rsplit(")", 1)[1].split()
            h.close()
            h = open(os.path.join(D, f))
            r = h.readline(512).split()
            h.close()
        except (IOError, OSError, IndexError):
            continue
        st = r[:1] == ["v1"] and [v[6:] for v in r if v.startswith("start=")] or r[1:2]
        if len(x) > 19 and x[0] != "Z" and st and x[19] == st[0]:
            n[w[2]] = 1
    return len(n)
def sec(v):
    v = float(v)
    if not 0 < v <= 300:
        raise ValueError(v)
    return v
def do(w):
    if w == ["ping"]:
        return "pong"
    if w == ["count"]:
        return "count %d" % cn()
    if len(w) != 6 or w[0] != "check":
        return "bad"
    A = w[1].split(",")
    p, t, g = int(w[2]), sec(w[4]), sec(w[5])
    if not 0 < len(A) < 3 or not 0 < p < 65536 or len(w[3]) > 512:
        return "bad"
    for a in A:
        socket.inet_pton(":" in a and socket.AF_INET6 or socket.AF_INET, a)
    b = w[3] != "-" and binascii.unhexlify(w[3]) or b""
    f = None
    for a in A:
        try:
            r = ck(a, p, b, t, g)
        except Exception:
            r = 86
        if f is None or r == 80:
            f, fa = r, a
        if r == 80:
            break
    return "check %d %s %s" % (f, N, fa)
while 1:
    l = I.readline(600)
    if not l:
        break
    if not l.endswith(b"\n"):
        while l and not l.endswith(b"\n"):
            l = I.readline(600)
        continue
    w = l.decode("ascii", "replace").split()
    if not w or not w[0].isdigit() or len(w[0]) > 12:
        continue
    try:
        a = do(w[1:])
    except Exception:
        a = "bad"
    try:
        O.write(("sshkeep-answer %s %s\n" % (w[0], a)).encode("ascii"))
        O.flush()
    except Exception:
        break
"""
PY_RESPONDER = "exec(%r)" % _PY_RESPONDER_SRC  # one line: the source travels as a string literal

PERL_RESPONDER = " ".join(r"""
use IO::Socket; use Time::HiRes qw(time); $| = 1; my ($D, $N) = @ARGV; my $buf = ""; my $skip = 0;
sub ck { my ($a, $p, $b, $t, $g) = @_; my $end = time + $t;
  my $c = ($a =~ /:/) ? "IO::Socket::IP" : "IO::Socket::INET"; eval "require $c" or return 86;
  my $s = $c->new(PeerHost => $a, PeerPort => $p, Proto => "tcp", Timeout => $t);
  if (!$s) { return $!{ECONNREFUSED} ? 81 : $!{ECONNRESET} ? 82 : ($!{ETIMEDOUT} || $!{EINPROGRESS}) ? 83 : 86 }
  my $lim = length($b) ? $end : (time + $g < $end ? time + $g : $end); my $d = ""; my $r = -1;
  while ($r < 0) { my $w = $lim - time; last if $w <= 0;
    my $rin = ""; vec($rin, fileno($s), 1) = 1; my $n = select(my $rout = $rin, undef, undef, $w);
    next if $n < 0; last if $n == 0;
    my $x = ""; my $k = sysread($s, $x, 4096);
    if (!$k) { $r = length($d) ? 84 : 82; last }
    $d .= $x; if (!length($b) || substr($d, 0, length $b) eq $b) { $r = 80; last }
    if (substr($b, 0, length $d) ne substr($d, 0, length $b)) { $r = 84; last } }
  close($s); return $r >= 0 ? $r : (length($d) ? 84 : length($b) ? 83 : 80) }
sub cn { my %n; opendir(my $h, $D) or return 0;
  while (defined(my $f = readdir($h))) { next unless $f =~ /^rport-\d+-(\d+)$/; my $q = $1;
    open(my $x, "<", "/proc/$q/stat") or next; my $l = ""; read($x, $l, 1024); close($x);
    $l =~ s/.*\) //s; my @w = split(" ", $l);
    open(my $y, "<", "$D/$f") or next; my $v = ""; read($y, $v, 512); close($y);
    my @r = split(" ", (split(/\n/, $v))[0] || ""); my $st = "";
    if (@r && $r[0] eq "v1") { for (@r) { $st = $1 if /^start=(\d+)$/ } } else { $st = $r[1] || "" }
    $n{$q} = 1 if @w > 19 && $w[0] ne "Z" && length($st) && $w[19] eq $st }
  closedir($h); return scalar(keys %n) }
sub ip { my $a = shift; return $a =~ /^\d{1,3}(\.\d{1,3}){3}$/ || ($a =~ /:/ && $a =~ /^[0-9a-fA-F:.]{2,45}$/) }
sub sec { my $v = shift; return $v =~ /^\d{1,3}(\.\d{1,6})?$/ && $v > 0 && $v <= 300 }
sub hd { my @w = split(" ", $_[0]); return if !@w || $w[0] !~ /^\d{1,12}$/; my $i = shift @w; my $o = "bad";
  if ("@w" eq "ping") { $o = "pong" } elsif ("@w" eq "count") { $o = "count " . cn() }
  elsif (@w == 6 && $w[0] eq "check") { my (undef, $as, $p, $h, $t, $g) = @w; my @A = split(/,/, $as, -1);
    my $ok = @A >= 1 && @A <= 2 && $p =~ /^\d{1,5}$/ && $p >= 1 && $p <= 65535 && sec($t) && sec($g)
      && ($h eq "-" || $h =~ /^([0-9a-fA-F]{2}){1,256}$/); for (@A) { $ok = 0 unless ip($_) }
    if ($ok) { my $b = $h eq "-" ? "" : pack("H*", $h); my ($f, $fa);
      for my $a (@A) { my $r = eval { ck($a, $p, $b, $t, $g) }; $r = 86 unless defined $r;
        if (!defined($f) || $r == 80) { $f = $r; $fa = $a } last if $r == 80 }
      $o = "check $f $N $fa" } }
  syswrite(STDOUT, "sshkeep-answer $i $o\n") or exit 0 }
while (1) { my $c = ""; my $k = sysread(STDIN, $c, 4096); if (!defined $k) { next if $!{EINTR}; last } last if !$k;
  $buf .= $c; while ((my $j = index($buf, "\n")) >= 0) { my $l = substr($buf, 0, $j); substr($buf, 0, $j + 1) = "";
    if ($skip) { $skip = 0 } else { hd($l) } }
  if (length($buf) > 600) { $buf = ""; $skip = 1 } }
exit 0;
""".split())

# The forking fallback, for a hub without python or perl (assumptions 1-5): one
# sh loop in the session, the check driver above forked per request with only
# bash and busybox nc to choose from ($CK, $BA: the driver and its bash program).
_SH_LOOP = _oneline("""
cn() { c=0 sn=" "; for f in "$d"/rport-*-*; do q2=${f##*-}; case $q2 in ""|*[!0-9]*) continue;; esac; case $sn in *" $q2 "*) continue;; esac; y=; { read -r y </proc/$q2/stat; } 2>/dev/null || continue; y=${y##*") "}; case $y in Z*|"") continue;; esac; set -- $y; l=; read -r l <"$f" 2>/dev/null; fs=; case $l in "v1 "*) for v in $l; do case $v in start=*) fs=${v#start=};; esac; done;; *) set -- $l; fs=$2;; esac; set -- $y; [ -n "$fs" ] && [ "${20}" = "$fs" ] && { c=$((c+1)); sn="$sn$q2 "; }; done; echo $c; }
while read -r i v a p x t g z; do case $i in ""|*[!0-9]*) continue;; esac
[ ${#i} -le 12 ] || continue
o=bad
case "$v:$a" in ping:) o=pong;; count:) o="count $(cn)";; check:*) k=1
case $a in ""|*[!0-9a-fA-F.:,]*|*,*,*) k=;; esac
case $p in ""|*[!0-9]*) k=;; esac
case $x in ""|*[!0-9a-fA-F-]*) k=;; esac
case $t:$g in *[!0-9.:]*|:*|*:) k=;; esac
[ -z "$z" ] && [ -n "$k" ] && { [ "$x" = - ] && x=; A=; oi=$IFS; IFS=,; for y in $a; do A="$A $y"; done; IFS=$oi; y=$(sh -c "$CK" sshkeep-check "$A" "$p" "$x" "$t" "$g" "bash nc" - - "$BA" </dev/null 2>/dev/null); set -- $y; o="check ${2:-86} ${3:--} ${4:--}"; }
;; esac
echo "sshkeep-answer $i $o"
done
""")
SH_RESPONDER = "CK=%s BA=%s; %s" % (quote(_CHECK_SH), quote(BASH_CHECK), _SH_LOOP)

# The tunnel's session command (assumptions 1, 2, 6, 7, 8, 9, 10): $1 state dir,
# $2 box id, $3 hostname, $4 tunnel name (both for people), $5... listen ports,
# then optionally `--` and the responder's programs: python, perl, the check
# driver and its bash program (for the forking sh fallback).
# Writes one record line (docs/hub-records.md) to DIR/rport-PORT-PPID for
# each port, says READY with its pid and start time (and the responder it will
# run), then reads stdin: a `port N` line (a port the hub picked for -R 0:...,
# sent by the agent once the client reports it) is recorded like the others;
# a `sshkeep-responder` line starts the responder, which reads its program as
# the next line and then answers requests until EOF. It removes its own files
# (named by its own PPID, so never another session's) at EOF, also on
# HUP/TERM/PIPE. A responder that fails is announced (`sshkeep-gone I RC`) and
# the session goes back to reading `port N` lines. A session whose parent is
# already gone ($PPID 1: the client left before the shell started, e.g. a
# forward that failed) exits at once without recording anything.
_SESSION_SH = _oneline("""
d=$1 o=$2 h=$3 n=$4
shift 4
ps= q=$PPID st=0 w=ok I=
while [ $# -gt 0 ] && [ "$1" != -- ]; do ps="$ps $1"; shift; done
[ $# -gt 1 ] && { N=$2; I=sh; for c in python3 python perl; do command -v $c >/dev/null 2>&1 && { I=$c; break; }; done; }
[ "$q" -gt 1 ] || exit 0
cl() { for p in $ps; do rm -f "$d/rport-$p-$q"; done; }
trap "cl; exit 0" HUP INT TERM PIPE
umask 077
if read -r x </proc/$q/stat; then x=${x##*") "}; set -- $x; st=${20}; fi 2>/dev/null
t=$(date +%s 2>/dev/null) || t=-
case $t in ""|*[!0-9]*) t=-;; esac
pl=
for p in $ps; do pl=${pl:+$pl,}$p; done
mkdir -p "$d" 2>/dev/null || w=nostate
wr() { printf "v1 box=%s host=%s tunnel=%s start=%s since=%s ports=%s\\n" "$o" "$h" "$n" "$st" "$t" "$pl" >"$d/rport-$1-$q" 2>/dev/null; }
for p in $ps; do wr $p || w=nostate; done
echo "sshkeep-ready $q $w $st${I:+ $I}"
L() { while read -r l; do case $l in "port "*) p=${l#port }; case $p in ""|0*|*[!0-9]*|??????*) ;; *) ps="$ps $p" pl=${pl:+$pl,}$p; for p in $ps; do wr $p; done;; esac;; sshkeep-responder) [ -n "$I" ] && return 0;; esac; done; return 1; }
if L; then r=0; case $I in python*) $I -E -S -c 'import sys; I = getattr(sys.stdin, "buffer", sys.stdin); exec(I.readline())' "$d" $I; r=$?;; perl) perl -e 'my $s = ""; while (length($s) < $ARGV[2]) { sysread(STDIN, $s, $ARGV[2] - length($s), length($s)) or exit 86 } eval $s; exit 86' "$d" perl "$N"; r=$?;; sh) S=; read -r S; eval "$S"; r=$?;; esac; [ $r = 0 ] || { echo "sshkeep-gone $I $r"; L; }; fi
cl
""")

# The reclaim (assumptions 1, 2, 6, 7, 8): $1 state dir, $2 box id, $3 port,
# $4 pid and $5 start time of the one session this box may end (its own last
# session, from that session's ready line; "-" for none). Every registered
# session for the port: forget it if gone or its pid was recycled (a zombie
# counts as gone); if it is not exactly ours, report who holds the port
# (`held PID BOX SINCE HOST TUNNEL`) and leave it alone; refuse unless it is
# a session process of our uid; TERM, wait up to 2 s, KILL, wait up to 1 s.
_RECLAIM_SH = _oneline("""
d=$1 o=$2 p=$3 wp=$4 ws=$5 nd=0 nn=0 nh=0 z=0.1 zn=20
sleep 0.1 2>/dev/null || z=1 zn=2
me=
while read -r kk v; do [ "$kk" = Uid: ] && me=$v; done </proc/$$/status
al() { y=; read -r y </proc/$1/stat 2>/dev/null || return 1; y=${y##*") "}; case $y in Z*|"") return 1;; esac; return 0; }
gone() { i=0; while al $1 && [ $i -lt $2 ]; do sleep $z; i=$((i+1)); done; al $1 && return 1; return 0; }
for f in "$d"/rport-$p-*; do
[ -f "$f" ] || continue
q=${f##*-}
case $q in ""|*[!0-9]*|1) continue;; esac
l=
read -r l <"$f"
fb=- fs=- fw=- fh=- ft=-
set -f
set -- $l
set +f
case $1 in v1) for w in "$@"; do case $w in box=*) fb=${w#box=};; start=*) fs=${w#start=};; since=*) fw=${w#since=};; host=*) fh=${w#host=};; tunnel=*) ft=${w#tunnel=};; esac; done;; *) fb=${1:--} fs=${2:--};; esac
al $q || { rm -f "$f"; continue; }
x=
{ read -r x </proc/$q/stat; } 2>/dev/null
x=${x##*") "}
set -- $x
[ "${20}" = "$fs" ] || { rm -f "$f"; continue; }
if [ "$fb" != "$o" ] || [ "$q" != "$wp" ] || [ "$fs" != "$ws" ]; then echo "sshkeep-reclaim held $q $fb $fw $fh $ft"; nh=$((nh+1)); continue; fi
c=
read -r c </proc/$q/cmdline 2>/dev/null
u=
while read -r kk v; do [ "$kk" = Uid: ] && u=$v; done </proc/$q/status
case $c in "sshd: "*|"sshd-session: "*|*dropbear*) ;; *) echo "sshkeep-reclaim not-a-session $q"; nn=$((nn+1)); continue;; esac
[ "$u" = "$me" ] || { echo "sshkeep-reclaim other-uid $q"; nn=$((nn+1)); continue; }
kill -TERM $q 2>/dev/null || { echo "sshkeep-reclaim kill-refused $q"; nn=$((nn+1)); continue; }
gone $q $zn || { kill -KILL $q 2>/dev/null; gone $q $((zn/2)); } || { echo "sshkeep-reclaim still-alive $q"; nn=$((nn+1)); continue; }
rm -f "$f"
echo "sshkeep-reclaim ended $q"
nd=$((nd+1))
done
[ $nd -gt 0 ] && { echo "sshkeep-reclaim 90"; exit 90; }
[ $nh -gt 0 ] && { echo "sshkeep-reclaim 93"; exit 93; }
[ $nn -gt 0 ] && { echo "sshkeep-reclaim 92"; exit 92; }
echo "sshkeep-reclaim 91"
exit 91
""")


# --- validation --------------------------------------------------------------
_OWNER_OK = re.compile(r"\A[A-Za-z0-9._@:+-]{1,64}\Z")
_PATH_OK = re.compile(r"\A[A-Za-z0-9._/+@-]{1,200}\Z")


def _port(port) -> int:
    if not isinstance(port, int):  # a number here, never text: this goes into a shell line
        raise ValueError("not a port (1-65535): %r" % (port,))
    return values.port(port)  # values.Bad is a ValueError


def check_addresses(bind: str) -> List[str]:
    """The server-side addresses a check of a -R listen address connects to.

    '' and 'localhost' -> 127.0.0.1 and ::1 (OpenSSH binds both; the forward
    is up if either answers); '*' / '0.0.0.0' -> 127.0.0.1; '::' -> ::1; an IP
    literal -> exactly that address (a dropbear server may have quietly taken
    [::1]:P when 127.0.0.1:P was held by someone else: test what was asked).
    Anything else raises ValueError: it never reaches a shell.
    """
    if bind in ("", "localhost"):
        return ["127.0.0.1", "::1"]
    if bind in ("*", "0.0.0.0"):
        return ["127.0.0.1"]
    if bind in ("::", "[::]"):
        return ["::1"]
    if bind.startswith("[") and bind.endswith("]"):
        bind = bind[1:-1]
    if not is_ip_literal(bind) or "%" in bind:
        raise ValueError("bind address must be an IP literal or 'localhost': %r" % bind)
    return [bind]


def _dir_word(state_dir: str) -> str:
    """The state directory as one shell word; only a leading $HOME expands remotely."""
    for prefix in ("$HOME/", "${HOME}/"):
        if state_dir.startswith(prefix):
            rest = state_dir[len(prefix):]
            if not _PATH_OK.match(rest) or ".." in rest.split("/"):
                raise ValueError("bad state directory: %r" % state_dir)
            return '"$HOME"/' + quote(rest)
    if not state_dir.startswith("/") or not _PATH_OK.match(state_dir) or ".." in state_dir.split("/"):
        raise ValueError("state directory must be absolute or start with $HOME/: %r" % state_dir)
    return quote(state_dir)


def _owner(owner: str) -> str:
    owner = owner or "sshkeep"
    if not _OWNER_OK.match(owner):
        raise ValueError("owner token must match [A-Za-z0-9._@:+-]{1,64}: %r" % owner)
    return owner


def _seconds(value, what) -> str:
    value = float(value)
    if not 0 < value <= 300:
        raise ValueError("%s out of range (0, 300]: %r" % (what, value))
    return "%.3f" % value


def _sh(script: str, name: str, args: Sequence[str]) -> str:
    return " ".join(["exec sh -c", quote(script), name] + [quote(a) for a in args])


# --- builders -----------------------------------------------------------------
def check_command(
    bind: str,
    port: int,
    banner: Optional[str],
    timeout: float,
    grace: float = 0.3,
    interpreters: Sequence[str] = INTERPRETERS,
) -> str:
    """The ssh-exec command that checks a -R forward's listen address on the server.

    Exits with one CHECK_* code and prints `sshkeep-check CODE INTERPRETER
    ADDRESS` as its last line. `timeout` bounds each address (two for ''/
    'localhost', tried in turn, so the command takes up to twice `timeout`
    plus interpreter start-up; a busybox nc banner check takes T+1 s per
    address): run it under a caller timeout of 2*timeout + 3 s + ssh's
    connect time. `interpreters` is the order of preference (subset of
    INTERPRETERS; "nc" means busybox nc).
    """
    addrs = check_addresses(bind)
    hexed = (banner or "").encode("utf-8").hex()
    if len(hexed) > 512:
        raise ValueError("banner longer than 256 bytes")
    order = [i for i in interpreters]
    if not order or any(i not in INTERPRETERS for i in order):
        raise ValueError("interpreters must be a non-empty subset of %s" % (INTERPRETERS,))
    args = [" ".join(addrs), str(_port(port)), hexed, _seconds(timeout, "timeout"),
            _seconds(grace, "grace"), " ".join(order), PY_CHECK, PERL_CHECK, BASH_CHECK]
    return _sh(_CHECK_SH, "sshkeep-check", args)


def check_budget(bind: str, timeout: float) -> float:
    """Seconds the server side of check_command may take (add ssh's own connect time)."""
    return len(check_addresses(bind)) * (float(timeout) + 1.0) + 1.0


def session_command(ports: Sequence[int], state_dir: str = DEFAULT_STATE_DIR, owner: str = "",
                    host: str = "", tunnel: str = "", responder: bool = False) -> str:
    """The remote command a tunnel runs instead of -N, so a stale listener can be reclaimed.

    It records its parent (the session process holding the -R listeners) in
    STATE_DIR/rport-PORT-PID (one `v1 box=... ` line, docs/hub-records.md),
    prints `sshkeep-ready PID ok|nostate STARTTIME` and waits until its stdin
    closes. The ssh client's stdin must therefore be a pipe the agent keeps
    open (not /dev/null, not -n): when the agent closes it the session ends
    cleanly. `owner` is the box identity (agent.run.identity); `host` and
    `tunnel` are recorded for people, folded to ASCII words (any text works).
    With `responder`, the ready line names the responder the session runs
    (`python3`, `python`, `perl`, `sh`): send `responder_source(NAME)` on
    stdin once, then requests (`request_line`).
    """
    ports = [str(_port(p)) for p in ports]  # none: every -R port is picked by the hub (`port N` lines)
    more = ["--", str(len(PERL_RESPONDER) + 1)] if responder else []
    return " ".join(["exec sh -c", quote(_SESSION_SH), "sshkeep-session", _dir_word(state_dir)]
                    + [quote(w) for w in (_owner(owner), identity.word(host or "-"),
                                                 identity.word(tunnel or "-"))] + ports + more)


RESPONDERS = ("python3", "python", "perl", "sh")


def responder_source(name: str) -> bytes:
    """What starts the session's responder on its stdin: the `sshkeep-responder` line, then its
    program as one line (a constant of this module)."""
    text = PERL_RESPONDER if name == "perl" else SH_RESPONDER if name == "sh" else PY_RESPONDER
    if name not in RESPONDERS:
        raise ValueError("no responder %r" % name)
    return ("sshkeep-responder\n" + text + "\n").encode("ascii")


def request_line(rid: int, verb: str, bind: str = "", port: int = 0, banner: Optional[str] = None,
                 timeout: float = 0.0, grace: float = 0.3) -> bytes:
    """One request to the session's responder: `ID ping`, `ID count`, `ID check ADDRS PORT HEX T G`.

    Every word is validated here (ValueError otherwise); the responder checks them again."""
    rid = _int(rid, "request id")
    if rid > 10 ** 12 - 1:
        raise ValueError("request id too large")
    if verb in ("ping", "count"):
        return ("%d %s\n" % (rid, verb)).encode("ascii")
    if verb != "check":
        raise ValueError("unknown request %r" % verb)
    hexed = (banner or "").encode("utf-8").hex()
    if len(hexed) > 512:
        raise ValueError("banner longer than 256 bytes")
    return ("%d check %s %d %s %s %s\n" % (rid, ",".join(check_addresses(bind)), _port(port), hexed or "-",
                                          _seconds(timeout, "timeout"), _seconds(grace, "grace"))).encode("ascii")


def parse_answer(line: str) -> Optional[Tuple[int, List[str]]]:
    """`sshkeep-answer ID WORD...` -> (ID, [WORD...]); None for any other line."""
    parts = line.split()
    if len(parts) >= 3 and parts[0] == ANSWER_MARKER and parts[1].isdigit() and len(parts[1]) <= 12:
        return int(parts[1]), parts[2:]
    return None


def answer_verdict(words: Sequence[str]) -> Tuple[str, str]:
    """The words of a check answer -> (verdict, 'python3 127.0.0.1' for the log); ERROR if malformed."""
    if len(words) == 4 and words[0] == "check" and words[1].isdigit() and int(words[1]) in CHECK_VERDICTS:
        return CHECK_VERDICTS[int(words[1])], "%s %s" % (words[2], words[3])
    return ERROR, "bad answer %r" % " ".join(words)[:80]


def parse_gone(line: str) -> Optional[str]:
    """`sshkeep-gone INTERPRETER RC` (the session's responder failed) -> 'python3 exited 1', else None."""
    parts = line.split()
    if len(parts) == 3 and parts[0] == GONE_MARKER:
        return "%s exited %s" % (parts[1], parts[2])
    return None


def ready_responder(line: str) -> Optional[str]:
    """The responder a ready line names (`sshkeep-ready PID ok START python3`), or None."""
    parts = line.split()
    if len(parts) >= 5 and parts[0] == READY_MARKER and parts[4] in RESPONDERS:
        return parts[4]
    return None


def reclaim_command(port: int, state_dir: str = DEFAULT_STATE_DIR, owner: str = "",
                    pid: Optional[int] = None, start: Optional[str] = None) -> str:
    """The ssh-exec command that ends this box's own stale session holding `port` on the server.

    Only the session `pid` with `start` (as its ready line announced) and
    recorded under `owner` may be ended; without them nothing is. Prints one
    `sshkeep-reclaim ended PID` per session it ended, `sshkeep-reclaim held
    PID BOX SINCE HOST TUNNEL` for each other live session registered for the
    port, and a last line `sshkeep-reclaim CODE`; exits RECLAIM_DONE /
    RECLAIM_HELD / RECLAIM_NOT_OURS / RECLAIM_NOTHING. At most about 3 s.
    """
    want_pid = "-" if pid is None else str(_int(pid, "pid"))
    want_start = "-" if start is None else str(_int(start, "start time"))
    return " ".join(["exec sh -c", quote(_RECLAIM_SH), "sshkeep-reclaim",
                     _dir_word(state_dir), quote(_owner(owner)), str(_port(port)), want_pid, want_start])


def _int(value, what) -> int:
    text = str(value)
    if not text.isdigit() or not text.isascii() or len(text) > 20:
        raise ValueError("%s must be a non-negative integer: %r" % (what, value))
    return int(text)


# --- interpreters -------------------------------------------------------------
def _no_marker_verdict(returncode, stderr, timed_out, client_kind):
    if timed_out or returncode is None or returncode < 0:
        return UNREACHABLE
    if returncode == CLIENT_FAILURE.get(client_kind, 255):
        # dbclient's own failures all say "Exited:" / "exited:" (whatever its argv[0], e.g. `ssh`
        # on OpenWrt); an exit 1 with other text came from the server's side (e.g. nologin)
        if client_kind == "dropbear" and stderr.strip() and "xited" not in stderr:
            return NO_COMMAND
        return UNREACHABLE
    if client_kind == "" and returncode in CLIENT_FAILURE.values():
        return UNREACHABLE
    return NO_COMMAND


def interpret_check(returncode: Optional[int], stdout: str, stderr: str, timed_out: bool,
                    client_kind: str = "openssh") -> str:
    """Turn an ssh exec of check_command into a verdict.

    The last `sshkeep-check CODE` line decides when present (it proves our
    script ran). Without it: ssh's own failure (255 OpenSSH, 1 dbclient) or
    our timeout -> UNREACHABLE ("could not reach the server", not "forward
    dead"); one of our codes -> that verdict; anything else -> NO_COMMAND (a
    forced command, nologin, a shell that is not POSIX).
    """
    code = None
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == CHECK_MARKER and parts[1].isdigit():
            code = int(parts[1])
    if code in CHECK_VERDICTS:
        return CHECK_VERDICTS[code]
    if not timed_out and returncode in CHECK_VERDICTS:
        return CHECK_VERDICTS[returncode]
    return _no_marker_verdict(returncode, stderr, timed_out, client_kind)


def check_detail(stdout: str) -> str:
    """'python3 127.0.0.1' from the marker line, for the log; '' if none."""
    for line in reversed(stdout.splitlines()):
        parts = line.split()
        if len(parts) == 4 and parts[0] == CHECK_MARKER:
            return "%s %s" % (parts[2], parts[3])
    return ""


def interpret_reclaim(returncode: Optional[int], stdout: str, stderr: str, timed_out: bool,
                      client_kind: str = "openssh") -> Tuple[str, Optional[int]]:
    """Turn an ssh exec of reclaim_command into (verdict, pid ended or None)."""
    code, pid = None, None
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == RECLAIM_MARKER:
            if parts[1].isdigit():
                code = int(parts[1])
            elif parts[1] == "ended" and len(parts) > 2 and parts[2].isdigit() and pid is None:
                pid = int(parts[2])
    if code is None and not timed_out and returncode in RECLAIM_VERDICTS:
        code = returncode
    if code in RECLAIM_VERDICTS:
        return RECLAIM_VERDICTS[code], pid
    return _no_marker_verdict(returncode, stderr, timed_out, client_kind), None


def reclaim_holders(stdout: str) -> List[dict]:
    """The `held` lines of a reclaim: [{pid, box, since (hub epoch or None), host, tunnel}]."""
    out = []
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 7 and parts[0] == RECLAIM_MARKER and parts[1] == "held" and parts[2].isdigit():
            # the hub's words go to our log: folded, so a planted record cannot carry escapes
            out.append({"pid": int(parts[2]), "box": identity.word(parts[3]),
                        "since": int(parts[4]) if parts[4].isdigit() and parts[4].isascii() else None,
                        "host": identity.word(parts[5]), "tunnel": identity.word(parts[6])})
    return out


def parse_ready(line: str) -> Optional[Tuple[int, bool, Optional[str]]]:
    """`sshkeep-ready PID ok|nostate [STARTTIME]` -> (pid, state recorded?, start time or None);
    None for any other line."""
    parts = line.split()
    if len(parts) >= 2 and parts[0] == READY_MARKER and parts[1].isdigit():
        start = parts[3] if len(parts) > 3 and parts[3].isdigit() and parts[3] != "0" else None
        return int(parts[1]), (len(parts) < 3 or parts[2] == "ok"), start
    return None


_FORWARD_FAILED = (
    re.compile(r"remote port forwarding failed for listen port (\d+)"),    # OpenSSH ssh
    re.compile(r"Remote TCP forward request failed \(port (\d+)"),        # dbclient 2022.83
)


def failed_listen_port(stderr: str) -> Optional[int]:
    """The -R listen port a client said it could not bind on the server (the port to reclaim), or None.

    Measured: OpenSSH "Error: remote port forwarding failed for listen port 20022"; dbclient
    "dbclient: Connection to u@h:22 exited: Remote TCP forward request failed (port 20022 -> 127.0.0.1:8080)".
    """
    for pattern in _FORWARD_FAILED:
        m = pattern.search(stderr)
        if m:
            return int(m.group(1))
    return None


# --- in-band loop check -------------------------------------------------------
def free_port(address: str = "127.0.0.1") -> int:
    """A port free on this box right now (bind to 0, read, close; may race)."""
    s = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((address, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def loop_forward_pair(listener_port: int, server_port: int, box_port: int = 0) -> Tuple[Forward, Forward]:
    """The two forwards of the loop check, added to the tunnel's own ssh.

    -R 127.0.0.1:SERVER_PORT:127.0.0.1:LISTENER_PORT  (server port -> our echo listener)
    -L 127.0.0.1:BOX_PORT:127.0.0.1:SERVER_PORT       (box port -> that server port)
    A nonce sent into BOX_PORT crosses the connection twice and comes back.
    SERVER_PORT must be free on the server (one per tunnel per server);
    BOX_PORT 0 picks a free port now.
    """
    box_port = box_port or free_port()
    r = Forward("R", "127.0.0.1", _port(server_port), "127.0.0.1", _port(listener_port),
                check="none", name="loop-r")
    l = Forward("L", "127.0.0.1", _port(box_port), "127.0.0.1", _port(server_port),
                check="none", name="loop-l")
    return r, l


def make_nonce() -> bytes:
    return ("sshkeep-loop %s %d %s\n" % (socket.gethostname(), os.getpid(), os.urandom(8).hex())).encode()


class LoopListener:
    """The box end of the in-band loop check: an echo listener on 127.0.0.1:0.

    Run inline, no thread: `check(box_port, timeout)` connects to the -L end,
    sends a nonce, and in one selector loop accepts on this listener, echoes
    what each accepted connection sends, and reads the echo back; every step
    is bounded by one monotonic deadline. Between checks nothing is serviced:
    connections that arrive then wait in the backlog and are echoed (and
    closed) by the next check, which only trusts its own nonce.
    """

    def __init__(self, address: str = "127.0.0.1", port: int = 0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, port))
        self.sock.listen(8)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def check(self, box_port: int, timeout: float = 3.0, nonce: Optional[bytes] = None) -> ProbeResult:
        """Send a nonce through the loop; OK_DATA when it came back intact.

        REFUSED: nothing on the box port (the -L is gone). CLOSED: the loop
        was cut (server could not reach the -R port, or the -R could not reach
        us). TIMEOUT: no echo before the deadline (wedged channel).
        BANNER_MISMATCH: other bytes came back (the server port is held by a
        stranger, e.g. a dropbear server put our -R on ::1).
        """
        nonce = nonce or make_nonce()
        start = time.monotonic()
        deadline = start + timeout
        sel = selectors.DefaultSelector()
        peers = []  # type: List[socket.socket]
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.setblocking(False)
        got = b""
        verdict, detail = TIMEOUT, "no echo in %.1fs" % timeout
        try:
            err = client.connect_ex(("127.0.0.1", box_port))
            if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
                return ProbeResult(REFUSED if err == errno.ECONNREFUSED else ERROR, "127.0.0.1",
                                   "box port %d: %s" % (box_port, os.strerror(err)), time.monotonic() - start)
            pending = nonce
            sel.register(client, selectors.EVENT_WRITE, "client")
            sel.register(self.sock, selectors.EVENT_READ, "listener")
            connected = False
            while True:
                now = time.monotonic()
                if now >= deadline:
                    break
                done = False
                for key, ev in sel.select(deadline - now):
                    if key.data == "listener":
                        try:
                            conn, _ = self.sock.accept()
                        except (BlockingIOError, InterruptedError):
                            continue
                        conn.setblocking(False)
                        peers.append(conn)
                        sel.register(conn, selectors.EVENT_READ, "peer")
                        continue
                    if key.data == "peer":
                        try:
                            chunk = key.fileobj.recv(4096)
                        except OSError:
                            chunk = b""
                        if chunk:
                            try:
                                key.fileobj.send(chunk)  # small: fits the send buffer
                            except OSError:
                                pass
                        else:
                            sel.unregister(key.fileobj)
                        continue
                    if not connected:  # the client socket
                        err = client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if err:
                            verdict = REFUSED if err == errno.ECONNREFUSED else ERROR
                            detail = "box port %d: %s" % (box_port, os.strerror(err))
                            done = True
                            break
                        connected = True
                        ev = selectors.EVENT_WRITE  # send at once
                    if pending and ev & selectors.EVENT_WRITE:
                        try:
                            pending = pending[client.send(pending):]
                        except (BlockingIOError, InterruptedError):
                            pass
                        except OSError as exc:
                            verdict, detail, done = CLOSED, "send: %s" % exc, True
                            break
                        sel.modify(client, selectors.EVENT_READ | (selectors.EVENT_WRITE if pending else 0),
                                   "client")
                    if not ev & selectors.EVENT_READ:
                        continue
                    try:
                        chunk = client.recv(4096)
                    except OSError as exc:
                        chunk, detail = b"", "reset: %s" % exc
                    if not chunk:
                        verdict = BANNER_MISMATCH if got else CLOSED
                        detail = "loop closed after %d of %d bytes" % (len(got), len(nonce))
                        done = True
                        break
                    got += chunk
                    if got == nonce:
                        verdict, detail, done = OK_DATA, "nonce echoed", True
                        break
                    if not nonce.startswith(got):
                        verdict, detail, done = BANNER_MISMATCH, "got %r" % got[:40], True
                        break
                if done:
                    break
        finally:
            sel.close()
            client.close()
            for p in peers:
                p.close()
        return ProbeResult(verdict, "127.0.0.1", detail, time.monotonic() - start)


def send_nonce(port: int, timeout: float, listener: LoopListener) -> bool:
    """True when a nonce sent into the -L end `port` came back through `listener`."""
    return listener.check(port, timeout).verdict == OK_DATA
