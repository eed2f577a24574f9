"""The start-up/runtime split (agent.launch, agent.run.runtime, agent.run.serve): what crosses the exec,
and the stdlib stand-ins the runtime uses to stay small (state.dumps, remote.quote, timing.Jitter)."""

import json
import marshal
import os
import shlex
import subprocess
import sys
import zipfile

import pytest

from agent import launch
from agent.core import timing
from agent.core.model import Forward, Settings, Tunnel
from agent.hubside import remote
from agent.run import procs, serve, state
from agent.settings import config


def test_settings_cross_the_exec_unchanged():
    t = Tunnel("hub", "hub.example.net", port=2222, user="box", forwards=(
        Forward("R", "127.0.0.1", 8022, "127.0.0.1", 22, "banner:SSH-", "ssh"), Forward("D", "", 1080)),
        alternates=(("hub2", 22),), extra_options=(("Compression", "yes"),), max_backoff=10.0)
    s = Settings(tunnels=(t,), state="/tmp/s.json", pidfile="/tmp/p", syslog=True, config_path="/etc/x",
                 warnings=("a warning",))
    back = serve.decode(marshal.loads(marshal.dumps(serve.encode(s))))
    assert back == s and back.warnings == ("a warning",)
    assert back.tunnels[0].forwards[0] == t.forwards[0] and type(back.tunnels[0].alternates[0]) is tuple


def test_sshtunnel_file_settings_cross_too():
    s = config.parse_text("config server s\n\toption hostname h\nconfig tunnelD d\n\toption server s\n"
                          "\toption localport 1\nconfig tunnelW w\n\toption server s\n", "/etc/config/sshtunnel")
    assert serve.decode(marshal.loads(marshal.dumps(serve.encode(s)))) == s


@pytest.mark.parametrize("doc", [
    {"pid": 12, "tunnels": [{"name": "t", "since": 1.5, "checks": {}, "forwards": [], "ssh_pid": None,
                             "up": True, "down": False, "last_error": "é \u2028 \U0001F600 \"q\" \\ \n\t\x01\x7f"}],
     "warnings": [], "nan": float("inf"), "neg": -3},
    {}, [], "plain", [{"a": {"b": [{}]}}],
])
def test_state_json_is_what_json_writes(doc):
    assert state.dumps(doc) == json.dumps(doc, indent=1, sort_keys=True)


@pytest.mark.parametrize("text", ["", "abc", "a b", "it's", "x=1,y/2@h:%+-.", "é", "$HOME", "a\nb", "*", "'"])
def test_quote_is_shlex_quote(text):
    assert remote.quote(text) == shlex.quote(text)


def test_jitter_is_uniform_enough():
    j = timing.Jitter()
    xs = [j.uniform(2.0, 3.0) for _ in range(2000)]
    assert all(2.0 <= x < 3.0 for x in xs)
    assert 2.4 < sum(xs) / len(xs) < 2.6 and max(xs) > 2.9 and min(xs) < 2.1


def test_runtime_names_its_program_after_the_loader_code():
    argv = ["/usr/bin/python3", "-c", launch.LOADER, "/usr/lib/sshkeep/sshkeep.pyz", "_runtime", "3", "99", "run"]
    assert procs.looks_like_sshkeep(argv)
    assert procs.looks_like_sshkeep(["python3", "-c", launch.LOADER, "-magent", "_runtime", "3", "9", "run"])
    assert not procs.looks_like_sshkeep(["python3", "-c", "print(1)", "/usr/bin/other.py"])
    assert not procs.looks_like_sshkeep(["python3", "-c", launch.LOADER])


def test_the_runtime_gets_every_module_it_imports_and_no_start_up_one():
    boot, index, block, where = launch._code(daemon=False)
    assert {"agent", "agent.run.supervisor", "agent.run.checks", "agent.run.serve"} <= set(index)
    assert not {"agent.cli", "agent.settings.config", "agent.settings.sshconfig", "agent.launch", "agent.run.daemon"} & set(index)
    assert "agent.run.daemon" in launch._code(daemon=True)[1]
    assert sum(n for _, n in index.values()) == len(block)
    code = marshal.loads(boot)
    assert code.co_filename.endswith("runtime.py")


def test_the_runtime_module_list_is_the_same_read_from_a_zip(tmp_path):
    """The pyz case: the folders are read inside the archive (no zipimport internals: they differ
    between 3.11 and 3.13)."""
    where = os.path.dirname(launch.__file__)
    archive = str(tmp_path / "a.pyz")
    with zipfile.ZipFile(archive, "w") as z:
        for folder, _, files in os.walk(where):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    z.write(path, "site-packages/agent/" + os.path.relpath(path, where))
    code = ("import sys; sys.path.insert(0, sys.argv[1] + '/site-packages'); import agent; from agent import launch; "
            "print(launch.runtime_modules(agent.__path__[0], daemon=True))")
    out = subprocess.run([sys.executable, "-c", code, archive], stdout=subprocess.PIPE, check=True, timeout=60,
                         cwd=str(tmp_path), env=dict(os.environ, PYTHONPATH="")).stdout.decode()
    assert out.strip() == repr(launch.runtime_modules(where, daemon=True))
    assert ("agent.run.daemon", "run/daemon.py") in launch.runtime_modules(where, daemon=True)
    assert ("agent.run.runtime", "run/runtime.py") not in launch.runtime_modules(where, daemon=True)
