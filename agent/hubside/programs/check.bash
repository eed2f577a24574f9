# The forward check in bash 4+ (assumptions 3, 4): /dev/tcp, no other tool. Run by check.sh as
# `bash -c SOURCE sshkeep ADDRESS PORT HEX T G` under its killer (a connect that hangs is ended there:
# bash cannot bound it), exits 80-86 (README). The banner cannot contain NUL (a bash string).
a=$1 p=$2 h=$3 t=$4 g=$5 b= i=0
# the banner from hex
while [ $i -lt ${#h} ]; do
printf -v c "\x${h:i:2}"
b+=$c
i=$((i+2))
done
# connect; when it fails, once more in a subshell to read why
{ exec 3<>/dev/tcp/$a/$p; } 2>/dev/null || { case $( (exec 3<>/dev/tcp/$a/$p) 2>&1 ) in *refused*) exit 81;; *) exit 86;; esac; }
# no banner: one byte or silence through the grace is up; EOF (read's 1) is closed
if [ -z "$b" ]; then
IFS= read -r -d "" -n 1 -t "$g" x <&3
r=$?
[ $r -eq 1 ] && exit 82
exit 80
fi
# a banner: as many bytes as it has, within the timeout (read's >128: timed out)
IFS= read -r -d "" -n ${#b} -t "$t" x <&3
r=$?
[ "$x" = "$b" ] && exit 80
[ -n "$x" ] && exit 84
[ $r -gt 128 ] && exit 83
exit 82
