"""sshkeep: keep SSH tunnels up on small boxes (OpenSSH or dropbear), stdlib only."""

__version__ = "0.1.0"
