"""The one table of defaults: what sshkeep does when nobody says otherwise.

Read by the command line's flags (agent.cli), the config file dialects (agent.settings), the
records they build (agent.core.model: Tunnel, Settings) and the resident agent's policy. A value
changed here changes it everywhere. The resident agent imports this module: it imports nothing.

The types are part of a value: a Tunnel's repr is fingerprinted into the run state
(agent.run.state.digest), so 30 stays 30 and 0.0 stays 0.0.
"""

# Files and directories
CONFIG = "/etc/config/sshkeep"      # read when no -c, destination or --ssh-config is given
RUN_DIR = "/var/run"                # the run state and pidfile, as root only (agent.run.state.default_dir)
STATE_NAME = "sshkeep.json"
PIDFILE_NAME = "sshkeep.pid"
STATE = RUN_DIR + "/" + STATE_NAME  # a config file's `option state` when unset
PIDFILE = RUN_DIR + "/" + PIDFILE_NAME

# One tunnel (agent.core.model.Tunnel and the flags of the same name)
PORT = 22
CLIENT = "auto"                     # auto | openssh | dropbear
KEEPALIVE = 15                      # ServerAliveInterval / dbclient -K, seconds; 0 = off
CONNECT_TIMEOUT = 15                # seconds per connect
INTERVAL = 30                       # seconds between health checks
MAX_BACKOFF = 60                    # longest wait between reconnects, seconds
REMOTE_CHECK_EVERY = 4              # the ssh-exec check of -R forwards every Nth interval
FAIL_THRESHOLD = 2                  # consecutive failed checks before ssh is restarted
RECLAIM = True                      # reclaim a stale listener on the server
ACCEPT_NEW = False                  # trust an unknown host key on first use
SPREAD = 0.0                        # span of the per-box offset of a fleet, seconds; 0 = off
FAILOVER_AFTER = 3                  # consecutive failed connects before trying the alternates
LOOP_PORT = 0                       # the in-band loop check's server-side port; 0 = off
CHECK_MODE = "auto"                 # -R checks: auto | session | exec
CHECK = "connect"                   # one forward's check: connect | banner:TEXT | none
SYSLOG = False

# The resident agent's policy (agent.core.machine.Policy, built by agent.run.supervisor)
STABLE_AFTER = 30.0                 # up this long (at least one interval) -> the backoff resets

# Cron mode (`sshkeep check`): a held pidfile whose state is older is a hung agent
STALE_AFTER = 120.0                 # seconds; at least 4 intervals

# `sshkeep hub`
HUB_PROBE_TIMEOUT = 3.0             # seconds, bound of each probe
