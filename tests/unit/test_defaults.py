"""The one defaults table (agent.core.defaults): the flags, the config files and the records read it."""

import os

from agent import cli
from agent.core import defaults
from agent.core.model import Forward, Settings, Tunnel
from agent.core.record import defaults as record_defaults
from agent.run import state
from agent.settings import config

# Tunnel field -> the table's name for its default
TUNNEL_FIELDS = {"port": "PORT", "client": "CLIENT", "accept_new": "ACCEPT_NEW", "keepalive": "KEEPALIVE",
                 "connect_timeout": "CONNECT_TIMEOUT", "interval": "INTERVAL", "max_backoff": "MAX_BACKOFF",
                 "remote_check_every": "REMOTE_CHECK_EVERY", "fail_threshold": "FAIL_THRESHOLD",
                 "reclaim": "RECLAIM", "spread": "SPREAD", "failover_after": "FAILOVER_AFTER",
                 "loop_port": "LOOP_PORT", "check_mode": "CHECK_MODE"}


def same(a, b):
    """Equal and of one type: a Tunnel's repr is fingerprinted into the run state."""
    return a == b and type(a) is type(b)


def test_the_records_take_their_defaults_from_the_table():
    have = record_defaults(Tunnel)
    for field, name in TUNNEL_FIELDS.items():
        assert same(have[field], getattr(defaults, name)), field
    assert record_defaults(Forward)["check"] == defaults.CHECK
    s = Settings(tunnels=())
    assert (s.state, s.pidfile, s.syslog) == (defaults.STATE, defaults.PIDFILE, defaults.SYSLOG)


def test_flags_left_out_give_the_tables_tunnel(tmp_path):
    args = cli.build_parser().parse_args(["run", "-R", "1:h:2", "--state", str(tmp_path / "s"),
                                          "--pidfile", str(tmp_path / "p"), "box@hub"])
    t = cli.settings_from_args(args).tunnels[0]
    for field, name in TUNNEL_FIELDS.items():
        assert same(getattr(t, field), getattr(defaults, name)), field


def test_a_file_that_sets_nothing_gives_the_tables_tunnel():
    s = config.parse_text("config server 'hub'\n option host 'h'\nconfig tunnel\n option server 'hub'\n"
                          " option listen '1'\n option target 'h:2'\n", check_files=False)
    t = s.tunnels[0]
    for field, name in TUNNEL_FIELDS.items():
        assert same(getattr(t, field), getattr(defaults, name)), field
    assert t.forwards[0].check == defaults.CHECK
    assert (s.state, s.pidfile, s.syslog) == (defaults.STATE, defaults.PIDFILE, defaults.SYSLOG)
    assert config.DEFAULT_PATH == defaults.CONFIG


def test_the_paths_are_made_of_the_tables_names():
    assert defaults.STATE == os.path.join(defaults.RUN_DIR, defaults.STATE_NAME)
    assert defaults.PIDFILE == os.path.join(defaults.RUN_DIR, defaults.PIDFILE_NAME)
    # as root, the flags' default state path is a config file's
    if os.geteuid() == 0:
        assert state.default_state_path() == defaults.STATE
        assert cli._default_pidfile() == defaults.PIDFILE


def test_the_table_imports_nothing():
    # the resident agent loads it: it must not pull in a module of its own
    with open(defaults.__file__) as fh:
        code = [ln for ln in fh if ln.startswith(("import ", "from "))]
    assert code == []
