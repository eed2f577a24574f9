"""The hub-side programs (programs/*, README there), minified: the texts remote.py sends.

Run from source, this module reads programs/ when imported and minifies each file. The build
(build/stage.py) calls module_text() and ships its output in this module's place: the same names
bound to the same texts, so the pyz carries neither the files nor this reader, and the running agent
(its modules come compiled over a pipe: agent/launch.py) has nothing to read from the zip.

Minifying never changes a program, it only drops what its interpreter ignores: lines that are empty
or hold only a comment (a comment must have its line to itself: `#` elsewhere is code, as in `${#h}`
or `$#`). Then Python keeps its lines, indented by one space per four (remote.py sends it as one
`exec(...)` literal); Perl becomes one line of words (every run of white space one space, strings
included); shell becomes one line (assumption 1), each line ended by `; `, or by a space after `do`,
`then`, `else`, `{` or `|`.
"""

import os

PROGRAMS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "programs")
# file name ending -> the constant's suffix; the name is the file's stem: check.py.in -> CHECK_PY
KINDS = ((".py.in", "PY"), (".pl", "PL"), (".bash", "BASH"), (".sh", "SH"))


def _code_lines(text):
    return [line.rstrip() for line in text.split("\n") if line.strip() and not line.lstrip().startswith("#")]


def _dedent(line):
    """Four spaces of indent become one: the same blocks (Python compares indents only within a
    file), a quarter of the bytes. The programs indent by fours and hold no multi-line strings."""
    body = line.lstrip(" ")
    indent = len(line) - len(body)
    if indent % 4:
        raise ValueError("indent by four spaces: %r" % line)
    return " " * (indent // 4) + body


def _one_line(lines):
    out = ""
    for line in lines:
        line = line.strip()
        if out:
            out += " " if out.endswith((" do", " then", " else", "{", "|")) else "; "
        out += line
    return out


def minify(text, kind):
    """One program's source -> what is sent, for kind PY, PL, SH or BASH."""
    lines = _code_lines(text)
    if kind == "PY":
        return "".join(_dedent(line) + "\n" for line in lines)
    if kind == "PL":
        return " ".join(" ".join(lines).split())
    return _one_line(lines)


def programs(folder=PROGRAMS):
    """{constant name: minified text} for every program in folder."""
    out = {}
    for name in sorted(os.listdir(folder)):
        for ending, kind in KINDS:
            if name.endswith(ending):
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    out[name[:-len(ending)].upper() + "_" + kind] = minify(f.read(), kind)
    return out


def module_text(folder=PROGRAMS):
    """The module the build ships in this one's place: the minified programs as constants."""
    found = programs(folder)
    return "".join("%s = %r\n" % (name, found[name]) for name in sorted(found))


_ALL = programs()
CHECK_BASH = _ALL["CHECK_BASH"]
CHECK_PL = _ALL["CHECK_PL"]
CHECK_PY = _ALL["CHECK_PY"]
CHECK_SH = _ALL["CHECK_SH"]
RECLAIM_SH = _ALL["RECLAIM_SH"]
RESPONDER_PL = _ALL["RESPONDER_PL"]
RESPONDER_PY = _ALL["RESPONDER_PY"]
RESPONDER_SH = _ALL["RESPONDER_SH"]
SESSION_SH = _ALL["SESSION_SH"]
