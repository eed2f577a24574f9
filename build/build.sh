#!/bin/sh
# sh build/build.sh VPY OUT -- build OUT (build/sshkeep.pyz) from agent/ with the pinned shiv in VPY's venv.
#
# Reproducible: two builds from clean checkouts are byte-identical.
#  - agent/*.py is staged into a fresh site-packages dir: no __pycache__, modes 0644 (shiv records modes);
#    shiv --site-packages needs no pip and no dist-info.
#  - shiv --reproducible fixes timestamps (SOURCE_DATE_EPOCH is honoured if set).
#  - build/repack.py then swaps shiv's __main__.py for build/entry.py (zipimport, never extracts: see
#    there why) and rewrites the zip sorted, modes normalised, one compression level.
set -eu

VPY=${1:?usage: build.sh VPY OUT}
OUT=${2:?usage: build.sh VPY OUT}
HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(dirname "$HERE")
LIMIT=65536

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sshkeep-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

SP="$WORK/site-packages"
mkdir -p "$SP"
(cd "$TOP" && find agent -name __pycache__ -prune -o -type f -name '*.py' -print) |
while IFS= read -r f; do
    mkdir -p "$SP/$(dirname "$f")"
    cp "$TOP/$f" "$SP/$f"
done
find "$SP" -type d -exec chmod 0755 {} +
find "$SP" -type f -exec chmod 0644 {} +
[ -f "$SP/agent/cli.py" ] || { echo "build: $TOP/agent/cli.py missing" >&2; exit 1; }

"$VPY" -m shiv --reproducible --site-packages "$SP" --entry-point agent.cli:main \
    --python '/usr/bin/env python3' --output-file "$WORK/shiv.pyz" >"$WORK/shiv.log" 2>&1 ||
    { cat "$WORK/shiv.log" >&2; exit 1; }
"$VPY" "$HERE/repack.py" "$WORK/shiv.pyz" "$HERE/entry.py" "$OUT"

size=$(wc -c <"$OUT")
sum=$(sha256sum "$OUT" | cut -c1-16)
echo "build: $OUT $size bytes sha256 $sum..."
if [ "$size" -gt "$LIMIT" ]; then
    echo "build: WARNING: $OUT is $size bytes, over the $LIMIT-byte budget" >&2
fi
