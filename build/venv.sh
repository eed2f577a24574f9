#!/bin/sh
# sh build/venv.sh PYTHON VENV -- create the build venv and install the pinned build/requirements.txt.
# Idempotent: an existing working venv made from the same PYTHON is reused; pip then only checks pins.
set -eu

PYTHON=${1:?usage: venv.sh PYTHON VENV}
VENV=${2:?usage: venv.sh PYTHON VENV}
HERE=$(cd "$(dirname "$0")" && pwd)
REQ="$HERE/requirements.txt"

want=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
have=""
if [ -x "$VENV/bin/python" ]; then
    have=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
fi
if [ "$have" != "$want" ]; then
    # Broken, missing or made from another interpreter: start over (only if it really is a venv).
    if [ -e "$VENV" ]; then
        if [ -f "$VENV/pyvenv.cfg" ]; then
            rm -rf "$VENV"
        else
            echo "venv: $VENV exists and is not a venv; refusing to touch it" >&2
            exit 1
        fi
    fi
    echo "venv: creating $VENV with $PYTHON ($want)"
    "$PYTHON" -m venv "$VENV"
fi

PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install -q --no-input -r "$REQ"
"$VENV/bin/python" -m shiv --version >/dev/null
echo "venv: $VENV ready ($("$VENV/bin/python" -m shiv --version 2>&1 | tail -1))"
