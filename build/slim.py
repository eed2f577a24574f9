"""Shrink Python source for the pyz: drop comments, docstring text and parameter annotations, indent
by one space a level, keep every line number.

The pyz budget is 96 KB and zipimport only knows deflate; comments and docstrings are about a
quarter of agent/ after compression. Code lines stay byte-for-byte where they were, so a
traceback from the box names the same file:line as the repository, and `verify` proves the
result is the same program: equal ASTs once docstrings and parameter annotations are blanked on
both sides.
Keep the docstrings (docstrings=False) when any module reads __doc__ (stage.py checks).
Build-time only (runs in the build venv).
"""

import ast
import io
import re
import tokenize

CODING = re.compile(r"^[ \t\f]*#.*?coding[:=]")
DOC_OWNERS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _lines(text):
    """Split keeping '\\n' only (str.splitlines also splits on \\f, \\x1c, U+2028, ...)."""
    parts = text.split("\n")
    out = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        out.append(parts[-1])
    return out


def _docstring_owners(tree):
    for node in ast.walk(tree):
        if isinstance(node, DOC_OWNERS) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                yield node


def _docstring_nodes(tree):
    for node in _docstring_owners(tree):
        yield node.body[0]


def strip_comments(text):
    lines = _lines(text)
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type != tokenize.COMMENT:
            continue
        row, col = tok.start
        line = lines[row - 1]
        if row <= 2 and (line.startswith("#!") or CODING.match(line)):
            continue
        end = "\n" if line.endswith("\n") else ""
        lines[row - 1] = line[:col].rstrip() + end
    return "".join(lines)


def strip_docstrings(text):
    """Docstring text out; the whole docstring out (blank lines kept) where the body goes on
    after it and it stands alone on its lines, else an empty string in its place."""
    lines = _lines(text)
    spans = sorted(((n.body[0].lineno, n.body[0].col_offset, n.body[0].end_lineno, n.body[0].end_col_offset,
                     len(n.body) > 1) for n in _docstring_owners(ast.parse(text))), reverse=True)
    for l1, c1, l2, c2, more in spans:
        # lines hold str, offsets are utf-8 byte offsets: cut on the encoded line
        head = lines[l1 - 1].encode("utf-8")[:c1].decode("utf-8")
        tail = lines[l2 - 1].encode("utf-8")[c2:].decode("utf-8")
        if more and not head.strip() and not tail.strip():
            lines[l1 - 1:l2] = ["\n"] * (l2 - l1 + 1)
            continue
        empty = '""' if l1 == l2 else '"""' + "\n" * (l2 - l1) + '"""'
        lines[l1 - 1:l2] = _lines(head + empty + tail)
    return "".join(lines)


def reindent(text):
    """One space per block level instead of four: the indentation is about 6 % of the compressed
    archive. A line that begins inside a string keeps every byte; a continuation line (inside
    brackets, after a backslash) gets its statement's depth, which Python ignores there."""
    lines = _lines(text)
    depth, keep, first = 0, set(), {}
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.INDENT:
            depth += 1
            continue
        if tok.type == tokenize.DEDENT:
            depth -= 1
            continue
        if tok.type in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.ENDMARKER):
            continue
        if tok.start[0] not in first:
            first[tok.start[0]] = depth
        keep.update(range(tok.start[0] + 1, tok.end[0] + 1))  # rows that begin inside this token
    for row, level in first.items():
        if row in keep:
            continue
        line = lines[row - 1]
        lines[row - 1] = " " * level + line.lstrip(" \t")
    return "".join(lines)


def _functions(tree):
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))]


def _arguments(fn):
    a = fn.args
    return [x for x in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg] if x is not None]


def strip_annotations(text):
    """Parameter and return annotations out (nothing reads them: the pyz has no typing); a
    class body's field annotations stay (core/record.py builds records from them)."""
    lines = [l.encode("utf-8") for l in _lines(text)]
    spans = []
    for fn in _functions(ast.parse(text)):
        for arg in _arguments(fn):
            ann = getattr(arg, "annotation", None)
            if ann is not None and arg.lineno == ann.end_lineno:
                spans.append((arg.lineno, arg.col_offset + len(arg.arg.encode("utf-8")), ann.end_col_offset))
        ret = getattr(fn, "returns", None)
        if ret is not None and ret.lineno == ret.end_lineno:
            line = lines[ret.lineno - 1]
            arrow = line.rfind(b"->", 0, ret.col_offset)
            if arrow >= 0:
                spans.append((ret.lineno, len(line[:arrow].rstrip()), ret.end_col_offset))
    for row, c1, c2 in sorted(spans, reverse=True):
        line = lines[row - 1]
        lines[row - 1] = line[:c1] + line[c2:]
    return b"".join(lines).decode("utf-8")


def _normalised(tree):
    for node in list(_docstring_owners(tree)):
        if len(node.body) > 1:
            del node.body[0]
        else:
            node.body[0].value.value = ""
    for fn in _functions(tree):
        for arg in _arguments(fn):
            arg.annotation = None
        if hasattr(fn, "returns"):
            fn.returns = None
    return ast.dump(tree)


def verify(original, slimmed, name="<source>"):
    """Raise ValueError unless slimmed is original minus comments and docstring text."""
    if original.count("\n") != slimmed.count("\n"):
        raise ValueError("%s: line count changed" % name)
    if _normalised(ast.parse(original)) != _normalised(ast.parse(slimmed)):
        raise ValueError("%s: program changed" % name)
    compile(slimmed, name, "exec", dont_inherit=True)


def slim(text, name="<source>", docstrings=True):
    """text minus comments and, with docstrings=True, minus docstring text; verified."""
    out = strip_comments(text)
    if docstrings:
        out = strip_docstrings(out)
    out = reindent(strip_annotations(out))
    verify(text, out, name)
    return out
