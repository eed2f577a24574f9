"""Command line: argparse, and the only place that exits."""

import argparse
import sys

from agent import __version__
from agent.errors import EX_OK, EX_SOFTWARE, SshkeepError


def build_parser():
    p = argparse.ArgumentParser(prog="sshkeep", description="Keep SSH tunnels up (OpenSSH or dropbear).")
    p.add_argument("--version", action="version", version="sshkeep " + __version__)
    sub = p.add_subparsers(dest="command")
    run = sub.add_parser("run", help="keep the tunnels up, in the foreground")
    run.add_argument("destination", nargs="?")
    st = sub.add_parser("status", help="print the state of a running agent")
    st.add_argument("--json", action="store_true")
    st.add_argument("--state")
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EX_OK
    try:
        return EX_OK
    except SshkeepError as exc:
        sys.stderr.write("sshkeep: %s\n" % exc)
        return exc.code
    except KeyboardInterrupt:
        return EX_OK
    except Exception as exc:  # pragma: no cover - last resort
        sys.stderr.write("sshkeep: internal error: %r\n" % (exc,))
        return EX_SOFTWARE
