# The reclaim (assumptions 1, 2, 6, 7, 8), run as `exec sh -c SOURCE sshkeep-reclaim DIR BOX PORT PID
# START`: DIR the state directory, BOX this box's id, PORT the -R port to free, PID and START the pid
# and start time of the one session this box may end (its own last session, from that session's ready
# line; "-" for none). Every registered session for the port: forget it if gone or its pid was recycled
# (a zombie counts as gone); if it is not exactly ours, report who holds the port
# (`held PID BOX SINCE HOST TUNNEL`) and leave it alone; refuse unless it is a session process of our
# uid; TERM, wait up to 2 s, KILL, wait up to 1 s. Prints `sshkeep-reclaim CODE` last, exits CODE
# (90-93, README).
d=$1 o=$2 p=$3 wp=$4 ws=$5 nd=0 nn=0 nh=0 z=0.1 zn=20
# the wait step: 0.1 s, or whole seconds where sleep takes no fractions
sleep 0.1 2>/dev/null || z=1 zn=2
# our uid, to compare with the session's
me=
while read -r kk v; do [ "$kk" = Uid: ] && me=$v; done </proc/$$/status
# al PID: alive and not a zombie; gone PID N: wait up to N steps for it to end
al() { y=; read -r y </proc/$1/stat 2>/dev/null || return 1; y=${y##*") "}; case $y in Z*|"") return 1;; esac; return 0; }
gone() { i=0; while al $1 && [ $i -lt $2 ]; do sleep $z; i=$((i+1)); done; al $1 && return 1; return 0; }
# each record for the port: rport-PORT-PID
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
# a v1 record (docs/hub-records.md) or the older "BOX START"
case $1 in v1) for w in "$@"; do case $w in box=*) fb=${w#box=};; start=*) fs=${w#start=};; since=*) fw=${w#since=};; host=*) fh=${w#host=};; tunnel=*) ft=${w#tunnel=};; esac; done;; *) fb=${1:--} fs=${2:--};; esac
# gone, or the pid now names another process: the record is stale
al $q || { rm -f "$f"; continue; }
x=
{ read -r x </proc/$q/stat; } 2>/dev/null
x=${x##*") "}
set -- $x
[ "${20}" = "$fs" ] || { rm -f "$f"; continue; }
# not exactly this box's own last session: someone else's, left alone
if [ "$fb" != "$o" ] || [ "$q" != "$wp" ] || [ "$fs" != "$ws" ]; then echo "sshkeep-reclaim held $q $fb $fw $fh $ft"; nh=$((nh+1)); continue; fi
# ours: only an sshd or dropbear session process of our own uid is ended (assumption 7)
c=
read -r c </proc/$q/cmdline 2>/dev/null
u=
while read -r kk v; do [ "$kk" = Uid: ] && u=$v; done </proc/$q/status
case $c in "sshd: "*|"sshd-session: "*|*dropbear*) ;; *) echo "sshkeep-reclaim not-a-session $q"; nn=$((nn+1)); continue;; esac
[ "$u" = "$me" ] || { echo "sshkeep-reclaim other-uid $q"; nn=$((nn+1)); continue; }
# TERM, then KILL
kill -TERM $q 2>/dev/null || { echo "sshkeep-reclaim kill-refused $q"; nn=$((nn+1)); continue; }
gone $q $zn || { kill -KILL $q 2>/dev/null; gone $q $((zn/2)); } || { echo "sshkeep-reclaim still-alive $q"; nn=$((nn+1)); continue; }
rm -f "$f"
echo "sshkeep-reclaim ended $q"
nd=$((nd+1))
done
# one code for all: ended beats held beats refused beats nothing
[ $nd -gt 0 ] && { echo "sshkeep-reclaim 90"; exit 90; }
[ $nh -gt 0 ] && { echo "sshkeep-reclaim 93"; exit 93; }
[ $nn -gt 0 ] && { echo "sshkeep-reclaim 92"; exit 92; }
echo "sshkeep-reclaim 91"
exit 91
