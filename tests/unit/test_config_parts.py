"""The parts of the config reader on their own: the uci lexer's records, the Report, the typed
records a dialect hands to validation (agent.settings.uci, validate, sshkeep_conf, sshtunnel_conf)."""

from agent.core.values import Bad
from agent.settings import sshkeep_conf, sshtunnel_conf, uci, validate


def read(text):
    report = uci.Report("t.conf")
    return uci.read(text, report), report


def test_sections_options_and_lists_keep_their_lines():
    doc, report = read("package sshkeep\n"
                       "config server 'hub'\n"
                       "\toption host h ; option port 22\n"
                       "\tlist alternate a\n"
                       "\tlist alternate 'b c'\n"
                       "config tunnel\n"
                       "\toption listen 1 extra\n")
    assert report.errors == [] and doc.package == "sshkeep"
    hub, tunnel = doc.sections
    assert (hub.type, hub.name, hub.line, hub.label()) == ("server", "hub", 2, "server 'hub'")
    assert (hub.opts["host"].value, hub.opts["host"].line, hub.opts["port"].line) == ("h", 3, 3)
    alt = hub.opts["alternate"]
    assert alt.is_list and alt.values == ["a", "b c"] and alt.lines == [4, 5]
    assert tunnel.label() == "anonymous tunnel" and tunnel.opts["listen"].value == "1"
    assert doc.extra == ((7, "extra"),)  # the dialect decides: an error for sshkeep, a warning for sshtunnel


def test_a_section_named_twice_is_one_section_and_its_line_is_kept():
    doc, report = read("config server a\n option host x\nconfig server a\n option port 2\n")
    (only,) = doc.sections
    assert set(only.opts) == {"host", "port"}
    assert report.dup_lines == [(3, only)]


def test_an_open_quote_drops_its_command_only():
    doc, report = read("config server a\n option host 'x\n option port 2\n")
    assert [t for _, t in report.errors] == ["t.conf:2: unterminated ' quote — close the quote on this value"]
    assert set(doc.sections[0].opts) == {"port"}


def test_report_convert_returns_the_value_or_reports_where():
    report = uci.Report("f")
    assert report.convert(validate.port, "22", 3, "x option port") == 22
    assert report.convert(validate.boolean, "maybe", 4, "x option enabled", True) is True
    assert [t for _, t in report.errors] == [
        "f:4: x option enabled: 'maybe' is not a boolean — write '1' or '0' (also yes/no, on/off, true/false)"]
    assert issubclass(Bad, ValueError)


def test_draft_copies_do_not_share_fields_or_lines():
    base = sshkeep_conf.base_draft()
    mine = base.copy()
    mine.set("port", 2222, 7)
    assert base.fields["port"] == 22 and base.lines == {}
    assert mine.fields["port"] == 2222 and mine.lines == {"port": 7}


def test_each_dialect_hands_on_typed_records():
    for dialect, text in (
            (sshkeep_conf, "config server hub\n option host h\nconfig tunnel t\n option server hub\n"
                           " option listen 9\n option target 'h:80'\n"),
            (sshtunnel_conf, "config server hub\n option hostname h\nconfig tunnelR t\n option server hub\n"
                             " option remoteport 9\n option localaddress h\n option localport 80\n")):
        doc, report = read(text)
        parsed = dialect.read(doc.sections, report)
        assert isinstance(parsed, validate.Parsed) and report.errors == []
        (server,) = parsed.servers
        assert isinstance(server, validate.Server) and server.host == "h"
        (placed,) = server.forwards
        assert isinstance(placed, validate.Placed) and placed.line == 5  # the listen port's line
        assert (placed.forward.kind, placed.forward.port, placed.forward.hostport) == ("R", 9, 80)
        assert placed.section.name == "t"
