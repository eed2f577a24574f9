#!/bin/sh
# Install the Debian packages the build, tests, demo and bench need -- only the missing ones.
# Runs as root on a fresh Debian 12 with no TTY; `apt-get update` only when something is missing.
# Other engineers: add what your tests need to PACKAGES (one per line, sorted).
# Who needs what: dropbear-bin (dbclient, dropbear, dropbearkey/convert), openssh-* (ssh, sshd,
# ssh-keygen), iproute2 (ip, ss), passwd (useradd), util-linux (unshare, setpriv, nsenter),
# qemu-user-static + busybox-static (tests/cross), autossh + time (bench, build/measure.py),
# python3-venv + ca-certificates (build/venv.sh: pip over https), mmdebstrap + systemd (tests/integration/test_packages.py:
# a Debian root for `dpkg -i`, systemd-analyze verify; tests/support/hubroot.py: the Debian 13 hub).
set -eu

PACKAGES="
autossh
busybox-static
ca-certificates
dropbear-bin
iproute2
iptables
mmdebstrap
openssh-client
openssh-server
passwd
procps
python3
python3-venv
qemu-user-static
systemd
time
util-linux
"

missing=""
for p in $PACKAGES; do
    # dpkg-query exits non-zero for unknown packages; a removed-but-configured one has another status.
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    case "$status" in
        *" installed") ;;
        *) missing="$missing $p" ;;
    esac
done

if [ -z "$missing" ]; then
    echo "deps: all present"
    exit 0
fi

echo "deps: installing:$missing"
if [ "$(id -u)" != 0 ]; then
    echo "deps: need root to install:$missing" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# Another apt run (a concurrent test setup) may hold the lock: wait for it, bounded.
LOCKWAIT="-o DPkg::Lock::Timeout=300"
# shellcheck disable=SC2086  # word splitting of the options and package list is intended
apt-get $LOCKWAIT update -q
# shellcheck disable=SC2086
apt-get $LOCKWAIT install -y -q --no-install-recommends $missing
