"""The bench's pure parts: rewriting the results section of docs/benchmarks.md, heal-time arithmetic, rendering (no lab needed).

Run: build/venv/bin/python -m pytest -q tests/bench/test_report.py (make test ignores tests/bench).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import report  # noqa: E402


def write(tmp_path, text):
    p = tmp_path / "benchmarks.md"
    p.write_text(text, encoding="utf-8")
    return str(p)


def test_rewrite_replaces_only_between_markers(tmp_path):
    p = write(tmp_path, "# x\nintro\n<!-- bench:start -->\nold\nlines\n<!-- bench:end -->\ntail\n")
    assert report.rewrite_marked(p, "new table\n")
    assert open(p, encoding="utf-8").read() == \
        "# x\nintro\n<!-- bench:start -->\nnew table\n<!-- bench:end -->\ntail\n"
    assert report.rewrite_marked(p, "new table")  # idempotent, newline added
    assert open(p, encoding="utf-8").read().count("new table") == 1


def test_rewrite_without_markers_changes_nothing(tmp_path):
    for text in ("# x\nno markers\n", "<!-- bench:end -->\n<!-- bench:start -->\n", "<!-- bench:start -->\n"):
        p = write(tmp_path, text)
        assert not report.rewrite_marked(p, "new\n")
        assert open(p, encoding="utf-8").read() == text
    assert not report.rewrite_marked(str(tmp_path / "missing.md"), "new\n")


def run(fault, rep, heals, starts=None, cap=60.0):
    return {"fault": fault, "rep": rep, "t_ref": 0.0, "bands": [[0.0, 1.0]], "cap": cap, "window": 10.0,
            "extra": {"ssh_restarts_while_down": {k: 0 for k in heals}},
            "contenders": {k: {"heal_s": v, "ssh_starts": (starts or {}).get(k, 1), "status_ok_s": 1.0,
                               "downtime_s": 1.0, "trace": [[-1.0, 1], [0.1, 0], [v or 9.0, 1]]}
                           for k, v in heals.items()}}


def test_section_marks_misses_and_ratio():
    doc = {"date": "2026-11-25 09:00 UTC", "machine": {"arch": "x86_64"}, "settings": {"interval": 5, "reps": 2},
           "contenders": ["sshkeep + OpenSSH", "autossh -M 0"],
           "runs": [run(1, 1, {"sshkeep + OpenSSH": 0.3, "autossh -M 0": 0.6}),
                    run(1, 2, {"sshkeep + OpenSSH": 0.5, "autossh -M 0": 0.4}),
                    run(5, 1, {"sshkeep + OpenSSH": 7.0, "autossh -M 0": None}),
                    run(5, 2, {"sshkeep + OpenSSH": 12.0, "autossh -M 0": None})]}
    text = report.render_section(doc)
    assert "0.40 s (0.30–0.50)" in text
    assert "**not healed** in 60 s (2/2)" in text
    assert "✅ fault 1, sshkeep + OpenSSH" in text and "ratio 0.80" in text
    assert "❌ fault 5, sshkeep + OpenSSH: worst 12.0 s" in text
    svg = report.svg_for_fault(5, [r for r in doc["runs"] if r["fault"] == 5], doc["contenders"])
    assert svg.startswith("<svg") and "not healed in 60 s" in svg


def test_heal_time_and_downtime():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import run as bench
    rs = [(0.0, 0.01, True), (0.2, 0.21, False), (9.5, 10.4, True), (10.1, 10.2, True), (10.3, 10.31, True)]
    # a probe in flight before the fault (t_fault=0.1) does not count; the first good one ending after t_ref does
    assert abs(bench.heal_time(rs, 0.1, 10.0) - 0.2) < 1e-9
    assert bench.heal_time(rs, 11.0, 11.0) is None
    assert abs(bench.downtime(rs, 0.0, 11.0) - (10.2 - 0.21)) < 1e-9
    assert bench.transitions(rs, 0.0) == [[0.01, 1], [0.21, 0], [10.2, 1]]


def test_svg_links_follow_the_document_raw_path_stays():
    """The section lives in docs/benchmarks.md: its timeline links must climb out of docs/, while the raw
    results path it names stays as seen from the repository's top."""
    doc = {"date": "2026-11-25 09:00 UTC", "machine": {}, "settings": {"reps": 1},
           "contenders": ["sshkeep + OpenSSH"], "runs": [run(1, 1, {"sshkeep + OpenSSH": 0.3})]}
    text = report.render_section(doc, "tests/bench/results", link_dir="../tests/bench/results")
    assert "[1](../tests/bench/results/fault1.svg)" in text
    assert "Raw results: `tests/bench/results/2026-11-25.json`" in text
    assert "[1](tests/bench/results/fault1.svg)" in report.render_section(doc, "tests/bench/results")
