"""Configuration files: the entry (`load`, `parse_text`) and which dialect a file is in.

Two dialects, detected from the section types:
- sshkeep's own (`config sshkeep`, `config server 'hub'`, `config tunnel 'luci'`): sshkeep_conf;
- OpenWrt's sshtunnel package (`config server`, `tunnelR`, `tunnelL`, `tunnelD`, `tunnelW`),
  read unchanged so that /etc/config/sshtunnel keeps working: sshtunnel_conf.

The parts, in order: uci (text -> sections with line numbers), a dialect (sections -> the Tunnel
fields of each server and its forwards, as validate's records), validate (the checks across
sections and on disk -> Settings). One `config server` section and its enabled tunnels become one
`Tunnel` (one ssh process). Every problem is collected, not just the first: `load` and
`parse_text` raise one ConfigError whose `errors` list holds each as `FILE:LINE: what is wrong —
how to fix it`. `sshkeep config` writes the result back out with sshkeep_conf.render.
"""

import os

from agent.core import defaults
from agent.errors import ConfigError, EX_NOINPUT, EX_NOPERM
from agent.settings import sshkeep_conf, sshtunnel_conf, uci, validate
from agent.settings.sshkeep_conf import SSHTUNNEL_TYPES

DEFAULT_PATH = defaults.CONFIG
MAX_SIZE = 1 << 20  # a config file is small; refuse to parse a log file by mistake


def _dialect(sections, package, path, report):
    """sshtunnel_conf or sshkeep_conf: which reader the file's sections are for."""
    types = {s.type for s in sections}
    sshtunnel = bool(types & set(SSHTUNNEL_TYPES)) or package == "sshtunnel"
    if not sshtunnel and "tunnel" not in types and os.path.basename(path or "") == "sshtunnel":
        sshtunnel = True
    if not sshtunnel and "tunnel" not in types:
        servers = [s for s in sections if s.type == "server"]
        sshtunnel = bool(servers) and any("hostname" in s.opts for s in servers) and \
            not any("host" in s.opts for s in servers)
    if "tunnel" in types and types & set(SSHTUNNEL_TYPES):
        for s in sections:
            if s.type in SSHTUNNEL_TYPES:
                report.error(s.line, "sshtunnel section %s in a file of sshkeep's config tunnel sections"
                             % s.type, "use one format per file: write it as a config tunnel")
        return sshkeep_conf
    return sshtunnel_conf if sshtunnel else sshkeep_conf


def parse_text(text, path="<string>", check_files=True):
    """Parse configuration text -> Settings; raise ConfigError listing every problem."""
    report = uci.Report(path)
    if len(text) > MAX_SIZE:
        raise ConfigError("%s: file is larger than %d bytes — is this the configuration file?" % (path, MAX_SIZE))
    if "\x00" in text:
        report.error(text.count("\n", 0, text.index("\x00")) + 1, "NUL byte in the file",
                     "this does not look like a text file")
        text = text.replace("\x00", " ")
    text = text.replace("\r\n", "\n")
    doc = uci.read(text, report)
    dialect = _dialect(doc.sections, doc.package, path, report)
    for line, word in doc.extra:
        what = "extra text %r after the value" % word[:40]
        if dialect is sshtunnel_conf:
            report.warn(line, what + " (uci ignores it)", "quote values that contain spaces")
        else:
            report.error(line, what, "quote values that contain spaces: option name 'a b'")
    parsed = dialect.read(doc.sections, report)
    return validate.settings(parsed, report, path, check_files=check_files)


def load(path=DEFAULT_PATH, check_files=True):
    """Read and validate a configuration file (sshkeep or OpenWrt sshtunnel format)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SIZE + 1)
    except FileNotFoundError:
        raise ConfigError("%s: no such configuration file — create it or give another with -c FILE" % path,
                          EX_NOINPUT)
    except IsADirectoryError:
        raise ConfigError("%s: is a directory — give the configuration file itself" % path, EX_NOINPUT)
    except PermissionError:
        raise ConfigError("%s: permission denied — run as root or fix its mode" % path, EX_NOPERM)
    except OSError as exc:
        raise ConfigError("%s: cannot read (%s)" % (path, exc.strerror), EX_NOINPUT)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        msg = "%s:%d: not UTF-8 text — save the file as UTF-8 (or plain ASCII)" % (path, line)
        raise ConfigError(msg, errors=[msg])
    return parse_text(text, path, check_files=check_files)
