"""agent.run.log: every line it writes is one line, whatever the hub, ssh or a child said."""

import io

from agent.run.log import Log


def _log():
    out = io.StringIO()
    return Log(stream=out, timestamps=False), out


def test_remote_text_cannot_forge_lines_or_drive_the_terminal():
    log, out = _log()
    log.warning("wan", "ssh: refused\nsshkeep: error: forged line\r\x1b]0;owned\x07\x9b2J\u2028x")
    assert out.getvalue() == ("warning: wan: ssh: refused\\x0asshkeep: error: forged line\\x0d"
                              "\\x1b]0;owned\\x07\\x9b2J\\u2028x\n")


def test_tunnel_name_escaped_too_and_plain_lines_untouched():
    log, out = _log()
    log.info("a\nb", "up: 20022 -> 127.0.0.1:22 (naïve)")
    assert out.getvalue() == "info: a\\x0ab: up: 20022 -> 127.0.0.1:22 (naïve)\n"


def test_syslog_gets_the_escaped_line():
    log, _ = _log()
    sent = []

    class Syslog:
        @staticmethod
        def syslog(prio, line):
            sent.append((prio, line))

    log._syslog = Syslog
    log.error("", "hub said: x\ny")
    assert sent == [(3, "hub said: x\\x0ay")]
