"""UCI syntax, read by our own code (no `uci` binary needed): text -> sections with line numbers.

Lexing follows libuci's file parser (uci/file.c): commands `config`/`option`/`list`/`package`
(also abbreviated `c`/`o`/`l`/`p`), `;` separates commands, `#` starts a comment outside quotes,
'single quotes' take everything literally, "double quotes" and bare words take `\\x` as x, a
quote must close on its line (libuci would read on: we report it and go on with the next line),
a backslash at the end of a line continues it, an empty value unsets an option, a
second `option` replaces the first, a `list` appends, and a section named twice is one section.

Every problem goes to a Report, which keeps each as `FILE:LINE: what is wrong — how to fix it`.
"""

import difflib
import re

from agent.core.record import record
from agent.core import values
from agent.core.values import Bad

_NAME = re.compile(r"[A-Za-z0-9_]+\Z")          # uci section and option names
_TYPE = re.compile(r"[A-Za-z0-9_-]+\Z")         # uci section types


class Option:
    """One option or list of a section: its values in order, the line of each, the line that set it."""
    __slots__ = ("name", "values", "line", "is_list", "lines")

    def __init__(self, name, line):
        self.name, self.values, self.line, self.is_list, self.lines = name, [], line, False, []

    @property
    def value(self):
        return self.values[-1] if self.values else ""


class Section:
    """One `config TYPE 'name'` section and its options by name."""
    __slots__ = ("type", "name", "line", "opts")

    def __init__(self, type_, name, line):
        self.type, self.name, self.line, self.opts = type_, name, line, {}

    def label(self):
        if self.type == "sshkeep":
            return "config sshkeep"
        return "%s '%s'" % (self.type, self.name) if self.name else "anonymous %s" % self.type


@record
class Document:
    """A file's sections in order, its `package` line, and the (line, word) of each argument too many:
    whether that is an error depends on the dialect."""
    sections: tuple
    package: object       # str or None
    extra: tuple


class Report:
    """Every problem of one file, each with its line; sorted by line when the file is done."""

    def __init__(self, path):
        self.path = path
        self.errors = []    # (line, text)
        self.warnings = []
        self.dup_lines = []
        self.skipped = []   # sections sshkeep cannot run (sshtunnel's tunnelW), for "no enabled tunnel"

    def _fmt(self, line, what, fix):
        where = "%s:%d" % (self.path, line) if line else self.path
        return "%s: %s — %s" % (where, what, fix) if fix else "%s: %s" % (where, what)

    def error(self, line, what, fix):
        self.errors.append((line, self._fmt(line, what, fix)))

    def warn(self, line, what, fix=None):
        self.warnings.append((line, self._fmt(line, what, fix)))

    def duplicate(self, line, section):
        self.dup_lines.append((line, section))

    def bad(self, line, exc, subject):
        """A value that did not convert (agent.core.values.Bad)."""
        self.error(line, "%s: %s" % (subject, exc.what), exc.fix)

    def convert(self, conv, value, line, subject, failed=None):
        """conv(value); or `failed`, when it raises Bad: reported at `line` as `subject: what — fix`."""
        try:
            return conv(value)
        except Bad as exc:
            self.bad(line, exc, subject)
            return failed


def suggest(name, known):
    """The fix for an unknown name: the known one it resembles, or the list of them."""
    lower = {k.lower(): k for k in known}
    if name.lower() in lower:
        return "did you mean '%s'? (names are case-sensitive)" % lower[name.lower()]
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    if close:
        return "did you mean '%s'?" % close[0]
    return "known options: %s" % ", ".join(sorted(known))


def sanitize(name):
    """`name` as a uci section name: letters (accents folded), digits and _ (values.word)."""
    return values.word(name, limit=None, keep="_", empty="unnamed")


# --------------------------------------------------------------------------- words and commands

def _word(text, i, line):
    """The word that starts at text[i] -> (word, next index, line, broken): `broken` is the quote
    character of a quote left open at the end of its line, else None."""
    n, buf = len(text), []
    while i < n:
        c = text[i]
        if c == "'":
            j = text.find("'", i + 1)
            eol = text.find("\n", i + 1)
            if j < 0 or 0 <= eol < j:
                return "", i, line, "'"
            buf.append(text[i + 1:j])
            i = j + 1
        elif c == '"':
            i += 1
            while i < n and text[i] not in '"\n':
                if text[i] == "\\" and i + 1 < n:
                    if text[i + 1] == "\n":
                        line += 1
                    else:
                        buf.append(text[i + 1])
                    i += 2
                    continue
                buf.append(text[i])
                i += 1
            if i >= n or text[i] == "\n":
                return "", i, line, '"'
            i += 1
        elif c == "\\":
            if i + 1 < n and text[i + 1] == "\n":
                line += 1
            elif i + 1 < n:
                buf.append(text[i + 1])
            i += 2
        elif c in " \t\r\f\v\n#;":
            break
        else:
            buf.append(c)
            i += 1
    return "".join(buf), i, line, None


def _commands(text, report):
    """Split into commands: a list of (line, [(word, line), ...]). Quotes as libuci has them,
    except that a quote must close on its own line: libuci lets a value span lines, but no
    value of ours may hold a line break, and reading on would pair every later quote wrongly
    and hide every error after it. So an open quote is reported at its line, that command is
    dropped, and lexing goes on with the next line."""
    cmds, words = [], []
    i, n, line = 0, len(text), 1

    def flush():
        if words:
            cmds.append((words[0][1], list(words)))
            del words[:]

    while i < n:
        c = text[i]
        if c == "\n":
            flush()
            line += 1
            i += 1
        elif c in " \t\r\f\v":
            i += 1
        elif c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif c == ";":
            flush()
            i += 1
        else:
            start = line
            word, i, line, broken = _word(text, i, line)
            if broken:
                report.error(line, "unterminated %s quote" % broken, "close the quote on this value")
                del words[:]
                j = text.find("\n", i)
                i = n if j < 0 else j
                continue
            words.append((word, start))
    flush()
    return cmds


# --------------------------------------------------------------------------- sections

_COMMANDS = {"c": "config", "config": "config", "o": "option", "option": "option",
             "l": "list", "list": "list", "p": "package", "package": "package"}
_ARGS = {"config": 2, "option": 2, "list": 2, "package": 1}


def read(text, report):
    """Text -> Document. Sections named twice are one (as in uci); each such line is kept in
    report.dup_lines for the dialect to judge."""
    sections, by_name, current, package, extra = [], {}, None, None, []
    for line, words in _commands(text, report):
        head = words[0][0]
        cmd = _COMMANDS.get(head)
        args = [w for w, _ in words[1:]]
        if cmd is None:
            report.error(line, "unknown command %r" % head[:40],
                         "lines start with config, option or list (or # for a comment)")
            continue
        want = _ARGS[cmd]
        if len(args) > want:
            extra.append((line, args[want]))
            args = args[:want]
        if cmd == "package":
            package = args[0] if args else None
        elif cmd == "config":
            current = _section(args, line, sections, by_name, report)
        elif current is None:
            report.error(line, "%s outside a section" % cmd, "put a config line above it")
        else:
            _option(current, cmd, args, line, report)
    return Document(tuple(sections), package, tuple(extra))


def _section(args, line, sections, by_name, report):
    """A `config` line: the section its options go to (a new one, or the one of that name), or None."""
    if not args or not args[0]:
        report.error(line, "config without a section type", "write e.g. config server 'hub'")
        return None
    type_, name = args[0], args[1] if len(args) > 1 else ""
    if not _TYPE.match(type_):
        report.error(line, "section type %r has characters uci does not allow" % type_[:40],
                     "use letters, digits, _ and -")
        return None
    if name and not _NAME.match(name):
        report.error(line, "section name %r has characters uci does not allow" % name[:40],
                     "use only letters, digits and _ (e.g. %r)" % sanitize(name))
        return None
    if name and name in by_name:
        current = by_name[name]
        report.duplicate(line, current)
        if current.type != type_:
            report.error(line, "section '%s' is already a %s (line %d)" % (name, current.type, current.line),
                         "give this %s section another name" % type_)
            return Section(type_, "", line)  # parse it, but detached
        return current
    current = Section(type_, name, line)
    sections.append(current)
    if name:
        by_name[name] = current
    return current


def _option(section, cmd, args, line, report):
    """An `option` or `list` line of `section`."""
    if not args or not args[0]:
        report.error(line, "%s without a name" % cmd, "write %s NAME 'value'" % cmd)
        return
    name = args[0]
    if not _NAME.match(name):
        report.error(line, "option name %r has characters uci does not allow" % name[:40],
                     "use letters, digits and _")
        return
    value = args[1] if len(args) > 1 else ""
    opt = section.opts.get(name)
    if cmd == "option":
        if not value:  # uci: setting an empty value deletes the option
            section.opts.pop(name, None)
            return
        if opt is not None:
            report.warn(line, "option %s set again (first at line %d); this value wins" % (name, opt.line),
                        "remove one of them")
        opt = section.opts[name] = Option(name, line)
        opt.values.append(value)
        opt.lines.append(line)
    else:
        if opt is None:
            opt = section.opts[name] = Option(name, line)
        opt.is_list = True
        if value:
            opt.values.append(value)
            opt.lines.append(line)  # each list item's own line, for its error
