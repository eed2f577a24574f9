"""The house keeps its shape (docs/layout.md): small modules and functions, imports one way only.

Read from the source with ast (nothing is imported), so a new module or import is held to the same
rules the day it is added, not at the next review."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AGENT = os.path.join(ROOT, "agent")
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
# Which of our packages each may import (agent.errors and agent itself are open to all).
MAY_IMPORT = {
    "core": {"core"},
    "hubside": {"core", "hubside"},
    "run": {"core", "hubside", "run"},
    "settings": {"core", "run", "settings"},
    "hub": {"core", "hubside", "run", "hub"},
}


def modules():
    for folder, _, files in os.walk(AGENT):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                yield os.path.relpath(path, ROOT), path


def tree(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return text, ast.parse(text)


@pytest.mark.parametrize("rel,path", list(modules()), ids=lambda v: v if v.startswith("agent/") else "")
def test_module_and_function_sizes(rel, path):
    text, t = tree(path)
    assert text.count("\n") <= MAX_MODULE_LINES, "%s: split it by job (docs/layout.md)" % rel
    long = ["%s (%d lines)" % (n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(t)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno >= MAX_FUNCTION_LINES]
    assert not long, "%s: functions over %d lines: %s" % (rel, MAX_FUNCTION_LINES, ", ".join(long))


def imported_packages(t):
    """Our packages a module imports (agent.X.Y -> X; `from agent import X` -> X when X is a package)."""
    out = set()
    for n in ast.walk(t):
        names = []
        if isinstance(n, ast.Import):
            names = [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
            names = [n.module] + [n.module + "." + a.name for a in n.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "agent" and len(parts) > 1 and os.path.isdir(os.path.join(AGENT, parts[1])):
                out.add(parts[1])
    return out


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_imports_go_one_way(package):
    wrong = []
    for rel, path in modules():
        if rel.split(os.sep)[1] != package:
            continue
        extra = imported_packages(tree(path)[1]) - MAY_IMPORT[package]
        if extra:
            wrong.append("%s imports %s" % (rel, ", ".join(sorted(extra))))
    assert not wrong, "; ".join(wrong) + " (docs/layout.md: which way imports go)"


def test_the_rules_can_fail():
    """The checks above see what they must: a made-up module that breaks each rule."""
    bad = ast.parse("from agent.run import probe\nimport agent.settings.config\n")
    assert imported_packages(bad) == {"run", "settings"}
    assert imported_packages(ast.parse("from agent import errors, cli\n")) == set()
