"""pytest plugin: the python3-light guard for the AGENT's imports only, inside a pytest process.

The interpreter-wide guard (tests/support/lightguard.py: a sitecustomize that refuses logging, decimal,
unittest, ...) cannot be on while pytest itself runs: pytest imports decimal (approx), logging
(its logging plugin), unittest and more at start-up. So for the unit tests under a root's python
(`python -m pytest -p agentguard tests/unit/test_*.py`, tests/cross on PYTHONPATH) this plugin
wraps builtins.__import__ instead:
  - an import statement executed by a module of the `agent` package, or by any module while such an
    import is in progress (a stdlib module the agent pulls in for the first time), of a name in
    lightguard.BLOCKED raises ModuleNotFoundError("blocked by python3-light guard: NAME"), even when
    pytest has that module in sys.modules already;
  - test code and pytest import what they like.
The plugin checks itself at configure time and prints "agent import guard: active" in the report
header; tests/cross/test_cross_unit.py asserts that line. importlib.import_module() from agent code
is not seen (the agent does not use it); the pyz runs are checked by the interpreter-wide guard.
"""

import builtins
import os
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "support"))  # lightguard
from lightguard import BLOCKED, MESSAGE, is_blocked  # noqa: E402

HEADER = "agent import guard: active (%d blocked names)" % len(BLOCKED)
_real_import = builtins.__import__
_state = threading.local()


def _is_agent(globals_):
    name = (globals_ or {}).get("__name__") or ""
    return name == "agent" or name.startswith("agent.")


def _guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
    depth = getattr(_state, "depth", 0)
    if not (depth or _is_agent(globals)):
        return _real_import(name, globals, locals, fromlist, level)
    if level == 0:
        if is_blocked(name):
            raise ModuleNotFoundError(MESSAGE + name, name=name)
        for sub in fromlist or ():  # from importlib import metadata; from concurrent import futures
            if sub != "*" and is_blocked(name + "." + sub):
                raise ModuleNotFoundError(MESSAGE + name + "." + sub, name=name + "." + sub)
    _state.depth = depth + 1
    try:
        return _real_import(name, globals, locals, fromlist, level)
    finally:
        _state.depth = depth


def install():
    builtins.__import__ = _guarded_import


def self_check():
    """AssertionError unless an agent-module import of logging is refused (pytest has it loaded)."""
    import logging  # noqa: F401  (cached now: the guard must refuse it anyway)
    g = {"__name__": "agent._guard_self_check", "__builtins__": builtins}
    try:
        exec("import logging", g)
    except ModuleNotFoundError as e:
        assert str(e) == MESSAGE + "logging", e
    else:
        raise AssertionError("agent import guard is not active")
    exec("import os", g)  # allowed names still import


install()


def pytest_configure(config):
    self_check()


def pytest_report_header(config):
    return HEADER
