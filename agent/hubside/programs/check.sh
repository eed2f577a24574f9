# The check driver (assumptions 1-5), run as `exec sh -c SOURCE sshkeep-check ADDRS PORT HEX T G ORDER
# PY PL BASH`: ADDRS the addresses to try (space separated IP literals), PORT, HEX the banner in hex
# ("" for none), T the timeout per address, G the grace, ORDER the interpreters in order of preference
# (python3 python perl bash nc), then the check's programs: check.py.in, check.pl, check.bash.
# Prints `sshkeep-check CODE INTERPRETER ADDRESS` last and exits CODE (80-86, README): the first
# address that gives 80 wins, else the first address's code.
LC_ALL=C
export LC_ALL
A=$1 P=$2 H=$3 T=$4 G=$5 O=$6 PY=$7 PL=$8 BA=$9
# whole seconds for sleep (assumption 2): the killer's delay and busybox nc's grace, rounded up
S=$((${T%.*} + 1)) GI=$((${G%.*} + 1))
# k CMD...: CMD under a killer (assumption 4): kill -9 after S s; CMD's status (137 when killed)
k() {
"$@" & w=$!
{ sleep $S; kill -9 $w; } </dev/null >/dev/null 2>&1 & z=$!
wait $w 2>/dev/null
r=$?
kill $z 2>/dev/null
return $r
}
# n1 ADDRESS: the check with busybox nc and od (assumptions 4, 5). nc's stdin is a pipe held open for
# L s (so nc does not end at EOF), nc runs under its own killer, its status comes out on fd 3 as
# S<status> beside what it read, as hex words from od. 137/143: killed, nothing ended it (silent, or a
# connect not answered); 0: the peer closed; anything else: nc failed, run again to read why.
n1() {
L=$GI
[ -n "$H" ] && L=$S
o=$( { { sleep $L; } </dev/null 2>/dev/null | {
exec 4<&0
busybox nc "$1" "$P" <&4 2>/dev/null & w=$!
{ sleep $L; kill -9 $w; } </dev/null >/dev/null 2>&1 & z=$!
wait $w 2>/dev/null
echo "S$?" >&3
kill $z 2>/dev/null
} | busybox od -An -tx1 -v; } 3>&1 )
st= x=
for v in $o; do
case $v in S*) st=${v#S};; *) x=$x$v;; esac
done
if [ -n "$x" ]; then
[ -z "$H" ] && return 80
case $x in "$H"*) return 80;; esac
return 84
fi
case $st in 137|143) [ -n "$H" ] && return 83; return 80;; 0) return 82;; esac
m=$(k busybox nc "$1" "$P" 2>&1 >/dev/null)
case $m in *refused*) return 81;; esac
return 86
}
# the first interpreter of ORDER on PATH ("nc": a busybox that has both nc and od)
I=
for c in $O; do
if [ $c = nc ]; then
command -v busybox >/dev/null 2>&1 && { busybox nc </dev/null >/dev/null 2>&1; [ $? -ne 127 ]; } && { busybox od </dev/null >/dev/null 2>&1; [ $? -ne 127 ]; } && I=nc
else
command -v $c >/dev/null 2>&1 && I=$c
fi
[ -n "$I" ] && break
done
[ -z "$I" ] && { echo "sshkeep-check 85 none -"; exit 85; }
# each address in turn; a status outside the table is the check failing (86), a kill a hang (83)
f= fa=
for a in $A; do
case $I in python*) k $I -c "$PY" "$a" "$P" "$H" "$T" "$G";; perl) k perl -e "$PL" "$a" "$P" "$H" "$T" "$G";; bash) k bash -c "$BA" sshkeep "$a" "$P" "$H" "$T" "$G";; nc) n1 "$a";; esac
r=$?
case $r in 8[0-6]) ;; 137) r=83;; *) r=86;; esac
[ -z "$f" ] && f=$r fa=$a
[ $r = 80 ] && { f=80 fa=$a; break; }
done
echo "sshkeep-check $f $I $fa"
exit $f
