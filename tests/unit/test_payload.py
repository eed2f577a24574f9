"""agent.hubside.payload: the hub-side programs read from agent/hubside/programs/ and minified, and the
module build/stage.py ships in payload.py's place.

What the programs do on a hub: tests/unit/test_remote.py and tests/unit/test_remote_responder.py run them.
Here: the minifier keeps each program the same program, and the built module holds the same texts.
"""

import ast
import os
import re
import subprocess
import sys

import pytest

from agent.hubside import payload, remote

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "build"))
import stage  # noqa: E402

NAMES = ["CHECK_BASH", "CHECK_PL", "CHECK_PY", "CHECK_SH", "RECLAIM_SH", "RESPONDER_PL", "RESPONDER_PY",
         "RESPONDER_SH", "SESSION_SH"]
SHELLS = ["/bin/dash", "/usr/bin/bash", "/usr/bin/busybox"]


def source(name):
    for ending, kind in payload.KINDS:
        path = os.path.join(payload.PROGRAMS, name[:-len(kind) - 1].lower() + ending)
        if name.endswith("_" + kind) and os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                return f.read()
    raise AssertionError("no file for %s" % name)


def test_every_program_is_read():
    assert sorted(payload.programs()) == NAMES
    for name in NAMES:
        assert getattr(payload, name) == payload.programs()[name]


@pytest.mark.parametrize("kind,text,want", [
    ("SH", "# a comment\n\na=1\n  # indented comment\nfor x in $A; do\necho ${#x} $#\ndone\n",
     "a=1; for x in $A; do echo ${#x} $#; done"),
    ("SH", "f() {\nif [ -n \"$1\" ]; then\n:\nelse\nexit 1\nfi\n}\nx | \ny\n", "f() { if [ -n \"$1\" ]; then :; else exit 1; fi; }; x | y"),
    ("BASH", "b=\nprintf -v c \"\\x41\"\n", "b=; printf -v c \"\\x41\""),
    ("PL", "# c\nsub f {\n  my $x = 1;   return $#a }\n\nexit f();\n", "sub f { my $x = 1; return $#a } exit f();"),
    ("PY", "# c\nimport sys\ndef f(a):\n    # inside\n    if a:\n        return 1\n\n    return 2\n",
     "import sys\ndef f(a):\n if a:\n  return 1\n return 2\n"),
])
def test_minify(kind, text, want):
    assert payload.minify(text, kind) == want


def test_minify_python_wants_fours():
    with pytest.raises(ValueError):
        payload.minify("if 1:\n  x = 1\n", "PY")


@pytest.mark.parametrize("name", ["CHECK_PY", "RESPONDER_PY"])
def test_python_programs_stay_the_same_program(name):
    """Comments are not in the AST and a block's depth is kept: equal ASTs, so the same program."""
    text = source(name)
    if name == "RESPONDER_PY":  # it runs after the check, in the same namespace
        text = source("CHECK_PY") + text
    mini = payload.CHECK_PY + payload.RESPONDER_PY if name == "RESPONDER_PY" else payload.CHECK_PY
    assert ast.dump(ast.parse(mini)) == ast.dump(ast.parse(text))


@pytest.mark.parametrize("name", [n for n in NAMES if not n.endswith("_PY")])
def test_shell_and_perl_programs_are_one_line(name):
    text = getattr(payload, name)
    assert "\n" not in text.replace("\\n", "") and text == text.strip()


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("name", ["CHECK_SH", "RESPONDER_SH", "SESSION_SH", "RECLAIM_SH"])
def test_shell_programs_parse_under_each_sh(shell, name):
    if not os.path.exists(shell):
        pytest.skip(shell + " missing")
    argv = [shell, "sh", "-n", "-c", getattr(payload, name)] if shell.endswith("busybox") else \
        [shell, "-n", "-c", getattr(payload, name)]
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10)
    assert r.returncode == 0, r.stderr


def test_bash_check_parses():
    r = subprocess.run(["/usr/bin/bash", "-n", "-c", payload.CHECK_BASH], stderr=subprocess.PIPE, timeout=10)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("text", [remote.PERL_CHECK, remote.PERL_RESPONDER])
def test_perl_programs_compile(text):
    r = subprocess.run(["/usr/bin/perl", "-c", "-e", text], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=10)
    assert r.returncode == 0, r.stderr


def test_one_check_per_language():
    """The responders carry the one-shot check's own code: one copy of each check."""
    assert remote.PY_RESPONDER.count("def ck(") == 1 and "def ck(" in remote.PY_CHECK
    assert remote.PY_RESPONDER == "exec(%r)" % (payload.CHECK_PY + payload.RESPONDER_PY)
    assert remote.PERL_RESPONDER.count("sub ck ") == 1 and remote.PERL_RESPONDER.startswith(remote.PERL_CHECK)
    assert remote.SH_RESPONDER.count(payload.CHECK_SH.replace("'", "'\"'\"'")) == 1


def test_the_python_check_runs_alone(tmp_path):
    """check.py.in alone is the one-shot check: argv ADDRESS PORT HEX T G, exit code from the table."""
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: refused
    # The hub's python runs it (a Debian hub's /usr/bin/python3), not the box's: under QEMU user mode a
    # timed connect's SO_ERROR comes back untranslated (mipsel: 111, its ECONNREFUSED is 146).
    hub_python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
    r = subprocess.run([hub_python, "-c", remote.PY_CHECK, "127.0.0.1", str(port), "", "1", "0.3"], timeout=10)
    assert r.returncode == remote.CHECK_REFUSED


def test_numbered_assumptions_are_all_defined():
    with open(os.path.join(payload.PROGRAMS, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme.split("## Assumptions about the server", 1)[1].split("\n## ", 1)[0]
    defined = [int(n) for n in re.findall(r"^ ?(\d+)\. ", section, re.M)]
    assert defined == list(range(1, len(defined) + 1))
    for name in NAMES:
        head = source(name).split("\n\n", 1)[0]
        cited = re.search(r"assumptions? ([0-9, -]+)", head)
        assert cited, "%s names no assumption" % name
        for part in cited.group(1).replace(" ", "").strip(",").split(","):
            lo, _, hi = part.partition("-")
            assert 1 <= int(lo) <= int(hi or lo) <= len(defined), (name, part)


def test_built_module_holds_the_same_texts(tmp_path):
    """build/stage.py ships payload.module_text() in payload.py's place: the same names, the same texts,
    no reader left."""
    src, dest = os.path.join(REPO, "agent"), str(tmp_path / "agent")
    stage.stage(src, dest)
    with open(os.path.join(dest, "hubside", "payload.py"), encoding="utf-8") as f:
        built = f.read()
    space = {}
    exec(compile(built, "payload.py", "exec"), space)
    assert {k: v for k, v in space.items() if not k.startswith("__")} == payload.programs()
    assert {type(node) for node in ast.parse(built).body} == {ast.Assign}  # constants only
    assert not os.path.exists(os.path.join(dest, "hubside", "programs"))
