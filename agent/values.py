"""Values from users that reach the ssh command line: what is allowed through.

`-o` options given in a config (`ssh_option`) or on the command line are passed to
OpenSSH after sshkeep's own (first value wins there). Only options that tune the
transport are allowed: none that runs a local command (LocalCommand, KnownHostsCommand),
changes the forwards (ClearAllForwardings, *Forward), turns off
what sshkeep relies on (BatchMode, ExitOnForwardFailure, host key checking, ControlMaster)
or hides the errors it reads (LogLevel). ProxyCommand and PKCS11Provider do run local
code: allowed because OpenWrt sshtunnel configs use them to reach a hub (documented).
"""

ALLOWED_SSH_OPTIONS = (
    "AddressFamily", "BindAddress", "BindInterface", "CASignatureAlgorithms", "CheckHostIP", "Ciphers",
    "Compression", "ConnectionAttempts", "FingerprintHash", "HostKeyAlgorithms", "HostKeyAlias",
    "IPQoS", "KexAlgorithms", "MACs", "PKCS11Provider", "PreferredAuthentications", "ProxyCommand", "ProxyJump", "PubkeyAcceptedAlgorithms",
    "PubkeyAcceptedKeyTypes", "RekeyLimit", "RequiredRSASize", "ServerAliveCountMax", "TCPKeepAlive",
    "VerifyHostKeyDNS",
)
_BY_LOWER = {n.lower(): n for n in ALLOWED_SSH_OPTIONS}


def check_ssh_option(name: str) -> str:
    """The option's canonical spelling; ValueError (with what to do) if it is not allowed."""
    found = _BY_LOWER.get(name.lower())
    if found is None:
        raise ValueError("ssh option %s is not allowed (it could run commands, change the forwards or weaken "
                         "checks sshkeep relies on); allowed: %s" % (name, ", ".join(ALLOWED_SSH_OPTIONS)))
    return found
