#!/bin/sh
# sh build/apk-tools.sh -- print the path of an apk-tools 3 `apk` (for build/apk.py and the tests),
# building it once into build/apk-tools/ (ignored by git) when it is not there yet.
#
# Source: ../shared/vendor/ beside the clone's top directory (apk-tools 3.0.6 and its build script:
# see that README). Its Debian build dependencies are installed like build/deps.sh installs things
# (only the missing ones; root; `apt-get update` only when something is missing); meson comes from
# PyPI into build/apk-tools/venv when none is on PATH. About 15-20 s, once.
# Exit 3 (nothing printed on stdout, the reason on stderr) when there is no ../shared/vendor.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(dirname "$HERE")
OUT="$HERE/apk-tools"
VENDOR="$TOP/../shared/vendor"

if [ -x "$OUT/apk" ] && "$OUT/apk" --version 2>/dev/null | grep -q '^apk-tools 3\.'; then
    echo "$OUT/apk"
    exit 0
fi
if [ ! -f "$VENDOR/build-apk-tools.sh" ] || [ ! -f "$VENDOR/apk-tools-3.0.6.tar.gz" ]; then
    echo "apk-tools: no $VENDOR/build-apk-tools.sh + apk-tools-3.0.6.tar.gz" >&2
    exit 3
fi

PACKAGES="
gcc
libc6-dev
libssl-dev
ninja-build
pkg-config
python3-venv
zlib1g-dev
"
missing=""
for p in $PACKAGES; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    case "$status" in
        *" installed") ;;
        *) missing="$missing $p" ;;
    esac
done
if [ -n "$missing" ]; then
    echo "apk-tools: installing:$missing" >&2
    if [ "$(id -u)" != 0 ]; then
        echo "apk-tools: need root to install:$missing" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    LOCKWAIT="-o DPkg::Lock::Timeout=300"
    # shellcheck disable=SC2086  # word splitting of the options and package list is intended
    apt-get $LOCKWAIT update -q >&2
    # shellcheck disable=SC2086
    apt-get $LOCKWAIT install -y -q --no-install-recommends $missing >&2
fi

# one build at a time (make packages and a test may both ask)
mkdir -p "$OUT"
exec 9>"$OUT/.lock"
if command -v flock >/dev/null 2>&1; then flock 9; fi
sh "$VENDOR/build-apk-tools.sh" "$OUT" >"$OUT/.path" 2>"$OUT/build.log" ||
    { tail -20 "$OUT/build.log" >&2; echo "apk-tools: build failed: $OUT/build.log" >&2; exit 1; }
cat "$OUT/.path"
