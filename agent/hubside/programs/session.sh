# The tunnel's session command, run instead of -N (assumptions 1, 2, 6, 7, 8, 9, 10), as
# `exec sh -c SOURCE sshkeep-session DIR BOX HOST TUNNEL PORT... [-- LENGTH]`: DIR the state directory,
# BOX the box id, HOST and TUNNEL for people, the -R listen ports it knows now; with `-- LENGTH` it
# offers a responder (LENGTH: the Perl responder's, bytes).
# Writes one record line (docs/hub-records.md) to DIR/rport-PORT-PPID for each port, says READY with
# its pid and start time (and the responder it will run), then reads stdin: a `port N` line (a port the
# hub picked for -R 0:..., sent by the agent once the client reports it) is recorded like the others;
# a `sshkeep-responder` line starts the responder, which reads its program from stdin and then answers
# requests until EOF. It removes its own files (named by its own PPID, so never another session's) at
# EOF, also on HUP/TERM/PIPE. A responder that fails is announced (`sshkeep-gone I RC`) and the session
# goes back to reading `port N` lines. A session whose parent is already gone ($PPID 1: the client left
# before the shell started, e.g. a forward that failed) exits at once without recording anything.
d=$1 o=$2 h=$3 n=$4
shift 4
ps= q=$PPID st=0 w=ok I=
while [ $# -gt 0 ] && [ "$1" != -- ]; do
ps="$ps $1"
shift
done
# the responder: python3, python or perl if there, else the sh loop
[ $# -gt 1 ] && {
N=$2
I=sh
for c in python3 python perl; do
command -v $c >/dev/null 2>&1 && { I=$c; break; }
done
}
[ "$q" -gt 1 ] || exit 0
cl() { for p in $ps; do rm -f "$d/rport-$p-$q"; done; }
trap "cl; exit 0" HUP INT TERM PIPE
umask 077
# the session process's start time: field 22 of its stat, the 20th after the ") " that ends its name
if read -r x </proc/$q/stat; then x=${x##*") "}; set -- $x; st=${20}; fi 2>/dev/null
t=$(date +%s 2>/dev/null) || t=-
case $t in ""|*[!0-9]*) t=-;; esac
pl=
for p in $ps; do pl=${pl:+$pl,}$p; done
mkdir -p "$d" 2>/dev/null || w=nostate
wr() { printf "v1 box=%s host=%s tunnel=%s start=%s since=%s ports=%s\n" "$o" "$h" "$n" "$st" "$t" "$pl" >"$d/rport-$1-$q" 2>/dev/null; }
for p in $ps; do wr $p || w=nostate; done
echo "sshkeep-ready $q $w $st${I:+ $I}"
# L: `port N` lines until stdin ends (1) or a `sshkeep-responder` line asks for the responder (0)
L() {
while read -r l; do
case $l in "port "*) p=${l#port }; case $p in ""|0*|*[!0-9]*|??????*) ;; *) ps="$ps $p" pl=${pl:+$pl,}$p; for p in $ps; do wr $p; done;; esac;; sshkeep-responder) [ -n "$I" ] && return 0;; esac
done
return 1
}
# the responder's bootstrap: python execs one line of stdin, perl evals LENGTH bytes, sh evals one line
if L; then
r=0
case $I in python*) $I -E -S -c 'import sys; I = getattr(sys.stdin, "buffer", sys.stdin); exec(I.readline())' "$d" $I; r=$?;; perl) perl -e 'my $s = ""; while (length($s) < $ARGV[2]) { sysread(STDIN, $s, $ARGV[2] - length($s), length($s)) or exit 86 } eval $s; exit 86' "$d" perl "$N"; r=$?;; sh) S=; read -r S; eval "$S"; r=$?;; esac
[ $r = 0 ] || { echo "sshkeep-gone $I $r"; L; }
fi
cl
