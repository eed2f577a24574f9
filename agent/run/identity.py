"""This box's identity: a random ID made once per install, the owner of its sessions on a hub.

Hostnames collide (every stock OpenWrt box is "OpenWrt"), and so do tunnel names
and anything cut or folded from them; 64 random bits do not. The ID lives beside
the host-key pins (default_dir(): flash on OpenWrt), written once at the first
start and only read after that. Hostname and tunnel name go to the hub beside it,
folded to ASCII by `word`, for people only.
"""

from __future__ import annotations

import os
import re

from agent.errors import EX_CANTCREAT, EX_DATAERR, SshkeepError
from agent.run.state import write_file

FILE_NAME = "box-id"
ID_OK = re.compile(r"\A[A-Za-z0-9_-]{4,64}\Z")   # made: 16 hex digits; an admin may write their own

def default_dir(env=None) -> str:
    """Where pins and the ID live: /etc/sshkeep as root, else $XDG_CONFIG_HOME/sshkeep
    (~/.config/sshkeep). Persistent on purpose: /tmp and /var/run are tmpfs on OpenWrt."""
    if os.geteuid() == 0:
        return "/etc/sshkeep"
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".config")
    return os.path.join(base, "sshkeep")


def default_path() -> str:
    return os.path.join(default_dir(), FILE_NAME)


def new_id() -> str:
    return os.urandom(8).hex()


def box_id(path: str = "") -> str:
    """The ID kept in `path` (default_path()); made and written once if the file is missing.

    Two agents starting at once agree: the new ID is hard-linked into place (state.write_file),
    so only one of them wins and both read the winner.
    """
    path = path or default_path()
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    try:
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        try:
            write_file(path, (new_id() + "\n").encode(), 0o644, exact_mode=False, sync=True, replace=False)
        except FileExistsError:
            pass  # another agent made it first: use theirs
        return _read(path)
    except OSError as exc:
        raise SshkeepError("cannot create the box identity %s: %s (it must be on persistent storage and "
                           "writable once; give --box-id-file FILE)" % (path, exc.strerror or exc), EX_CANTCREAT)


def _read(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            text = fh.read(256).decode("ascii", "replace").strip()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise SshkeepError("cannot read the box identity %s: %s (give --box-id-file FILE)"
                           % (path, exc.strerror or exc), EX_CANTCREAT)
    if not ID_OK.match(text):
        raise SshkeepError("%s:1: not a box identity (4-64 of A-Z a-z 0-9 _ -): remove the file and a new one "
                           "is made (the hub then sees a new box), or write the old ID back" % path, EX_DATAERR)
    return text

