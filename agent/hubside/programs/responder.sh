# The in-session responder for a hub without python or perl (assumptions 1-5, 10; requests and
# answers: README): one sh loop, evaluated by session.sh in its own shell ($d: the state directory),
# forking the check driver per request with only bash and busybox nc to choose from. $CK and $BA, the
# driver (check.sh) and its bash program (check.bash), are set in front of this program when it is
# sent (agent.hubside.remote.responder_source).
# cn: the sessions recorded in $d (rport-PORT-PID files) whose pid is alive with the recorded start
# time; a v1 record carries start=TIME (docs/hub-records.md), the older form is "BOX TIME"
cn() {
c=0 sn=" "
for f in "$d"/rport-*-*; do
q2=${f##*-}
case $q2 in ""|*[!0-9]*) continue;; esac
case $sn in *" $q2 "*) continue;; esac
y=
{ read -r y </proc/$q2/stat; } 2>/dev/null || continue
y=${y##*") "}
case $y in Z*|"") continue;; esac
set -- $y
l=
read -r l <"$f" 2>/dev/null
fs=
case $l in "v1 "*) for v in $l; do case $v in start=*) fs=${v#start=};; esac; done;; *) set -- $l; fs=$2;; esac
set -- $y
[ -n "$fs" ] && [ "${20}" = "$fs" ] && { c=$((c+1)); sn="$sn$q2 "; }
done
echo $c
}
# one request per line: ID VERB [ADDRS PORT HEX T G]; each word checked against a pattern, never run
while read -r i v a p x t g z; do
case $i in ""|*[!0-9]*) continue;; esac
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
