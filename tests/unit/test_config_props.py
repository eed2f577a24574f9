"""Property tests (hypothesis): the parser only ever raises ConfigError; render/parse round-trips."""

import os
import string

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from agent.settings import config  # noqa: E402
from agent.settings.sshkeep_conf import number, render  # noqa: E402
from agent.errors import ConfigError  # noqa: E402
from agent.core.model import Forward, Settings, Tunnel  # noqa: E402

# SSHKEEP_HYPOTHESIS_EXAMPLES=3000 for a deeper run (3000: 70 s here, all passing).
EXAMPLES_N = int(os.environ.get("SSHKEEP_HYPOTHESIS_EXAMPLES", "150"))
FAST = settings(max_examples=EXAMPLES_N, deadline=None, suppress_health_check=list(HealthCheck))


def parse_or_config_error(text, **kw):
    try:
        s = config.parse_text(text, "fuzz.conf", **kw)
    except ConfigError as exc:
        assert exc.errors and all(e.startswith("fuzz.conf") for e in exc.errors)
        return None
    assert isinstance(s, Settings) and s.tunnels
    # whatever parses renders, and the rendering parses to the same settings
    assert config.parse_text(render(s), "fuzz.conf", check_files=False) == s
    return s


@FAST
@given(st.text())
def test_arbitrary_text_raises_only_config_error(text):
    parse_or_config_error(text, check_files=False)


@FAST
@given(st.binary())
def test_arbitrary_bytes_raise_only_config_error(data):
    parse_or_config_error(data.decode("latin-1"), check_files=True)


# Text that looks like UCI, so the fuzzing reaches the option checks and cross-section rules.
WORDS = st.sampled_from([
    "config", "option", "list", "package", "c", "o", "l", "sshkeep", "server", "tunnel", "tunnelR", "tunnelL",
    "tunnelD", "tunnelW", "hub", "t1", "t2", "host", "hostname", "port", "listen", "target", "type", "remote",
    "local", "dynamic", "check", "banner:X", "none", "connect", "enabled", "0", "1", "22", "8080", "65536",
    "127.0.0.1:80", "[::1]:80", "*:22", "alternate", "ssh_option", "Compression=yes", "identity", "/k",
    "remoteport", "localport", "localaddress", "remoteaddress", "IdentityFile", "StrictHostKeyChecking",
    "accept-new", "interval", "max_backoff", "spread", "0.5", "x", "", "'", '"', "\\", "#", ";", "~/k",
])
SEP = st.sampled_from([" ", "\t", "\n", "\r\n", " '", "' ", '"', "\n\t", "\\\n"])


@FAST
@given(st.lists(st.tuples(WORDS, SEP), max_size=60))
def test_uci_like_text_raises_only_config_error(parts):
    parse_or_config_error("".join(w + s for w, s in parts), check_files=False)


@FAST
@given(st.lists(st.lists(WORDS, min_size=1, max_size=3), max_size=25))
def test_uci_like_lines_raise_only_config_error(lines):
    text = "\n".join(" ".join("'%s'" % w if i else w for i, w in enumerate(line)) for line in lines)
    parse_or_config_error(text, check_files=False)


TYPES = st.sampled_from(["sshkeep", "server", "server", "tunnel", "tunnel", "tunnel", "tunnelR", "tunnelL",
                         "tunnelD", "tunnelW", "servr"])
SECTION_NAMES = st.sampled_from(["", "hub", "hub", "hub2", "t1", "t2", "t3", "example"])
KEYS = st.sampled_from([
    "host", "port", "user", "identity", "known_hosts", "accept_new", "keepalive", "connect_timeout", "interval",
    "max_backoff", "client", "ssh", "remote_check_every", "fail_threshold", "failover_after", "reclaim",
    "spread", "alternate", "ssh_option", "enabled", "server", "server", "type", "listen", "listen", "target",
    "target", "check", "pidfile", "state", "syslog", "hostname", "remoteaddress", "remoteport", "localaddress",
    "localport", "IdentityFile", "retrydelay", "ServerAliveInterval", "StrictHostKeyChecking", "LogLevel",
    "Compression", "ProxyCommand", "vpntype", "hots"])
VALUES = st.one_of(st.sampled_from([
    "hub", "hub2", "example", "h.example.net", "127.0.0.1", "::1", "2001:db8::1", "22", "0", "1", "65535",
    "65536", "8080", "127.0.0.1:80", "[::1]:80", "*:8080", "*", "remote", "local", "dynamic", "connect", "none",
    "banner:SSH-", "banner:", "yes", "no", "accept-new", "auto", "dropbear", "0.5", "30", "-1", "1e3",
    "Compression=yes", "/tmp", "/nonexistent/key", "~/k", "a b", "h:1 h:2", "INFO", "x"]), st.text(max_size=8))


@st.composite
def uci_files(draw):
    out = []
    for _ in range(draw(st.integers(0, 8))):
        name = draw(SECTION_NAMES)
        out.append("config %s%s" % (draw(TYPES), " '%s'" % name if name else ""))
        for _ in range(draw(st.integers(0, 6))):
            cmd = draw(st.sampled_from(["option", "option", "option", "list"]))
            value = draw(VALUES).replace("'", "'\\''")
            out.append("\t%s %s '%s'" % (cmd, draw(KEYS), value))
    return "\n".join(out) + "\n"


@settings(max_examples=3 * EXAMPLES_N, deadline=None, suppress_health_check=list(HealthCheck))
@given(uci_files())
def test_structured_files_raise_only_config_error(text):
    parse_or_config_error(text, check_files=False)
    parse_or_config_error(text, check_files=True)


EXAMPLES = []
for _name in ("sshkeep-full.conf", "sshtunnel-package-example.conf", "sshtunnel-reverse-ssh.conf",
              "sshtunnel-two-servers.conf", "sshtunnel-luci.conf"):
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "support", "configs", _name)) as _fh:
        EXAMPLES.append(_fh.read().replace("@KEYDIR@", "/nonexistent"))


@st.composite
def mutated_examples(draw):
    lines = draw(st.sampled_from(EXAMPLES)).split("\n")
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        how = draw(st.sampled_from(["drop", "dup", "value", "key"]))
        words = lines[i].split()
        if how == "drop":
            del lines[i]
        elif how == "dup":
            lines.insert(i, lines[i])
        elif how == "value" and len(words) >= 3:
            lines[i] = "\t%s %s '%s'" % (words[0], words[1], draw(VALUES).replace("'", "'\\''"))
        elif how == "key" and len(words) >= 3:
            lines[i] = "\t%s %s %s" % (words[0], draw(KEYS), " ".join(words[2:]))
    return "\n".join(lines)


@settings(max_examples=3 * EXAMPLES_N, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutated_examples())
def test_mutated_examples_parse_and_round_trip_or_raise_config_error(text):
    parse_or_config_error(text, check_files=False)


# --------------------------------------------------------------------------- generated valid settings

from agent.core.values import ALLOWED_SSH_OPTIONS, CONFIG_REFUSED  # noqa: E402

PRINTABLE = st.characters(blacklist_categories=("Cc", "Cs"))
HOSTCHARS = string.ascii_letters + string.digits + ".-_:%"
hosts = st.text(HOSTCHARS, min_size=1, max_size=20).filter(lambda h: not h.startswith("-"))
binds = st.one_of(st.just(""), st.just("*"), hosts)
ports = st.integers(1, 65535)
paths = st.text(PRINTABLE, min_size=1, max_size=30).filter(lambda p: p[0] not in "-~")
users = st.text(PRINTABLE, max_size=12).filter(lambda u: not u.startswith("-")  # agent.core.values.user
                                               and not any(c.isspace() or c in "@,/'\"`$;&|<>\\" for c in u))
seconds = st.floats(min_value=0.001, max_value=1e6, allow_nan=False, allow_infinity=False)
backoffs = st.floats(min_value=1, max_value=1e6, allow_nan=False, allow_infinity=False)  # >= 1 s (issue 10)
checks = st.one_of(st.sampled_from(["connect", "none"]), st.text(PRINTABLE, min_size=1).map(lambda t: "banner:" + t))
names = st.text(string.ascii_letters + string.digits + "_", min_size=1, max_size=12)
option_values = st.text(PRINTABLE, min_size=1, max_size=20).filter(lambda v: not v[0].isspace())
extra = st.tuples(st.sampled_from([o for o in ALLOWED_SSH_OPTIONS if o not in CONFIG_REFUSED]),
                  option_values)  # the rest is refused


@st.composite
def forwards(draw, port, name):
    kind = draw(st.sampled_from("RLD"))
    bind = draw(binds)
    if kind == "D":
        return Forward("D", bind, port, "", 0, draw(checks), name)
    return Forward(kind, bind, port, draw(hosts), draw(ports), draw(checks), name)


@st.composite
def all_settings(draw):
    n_tunnels = draw(st.integers(1, 3))
    counts = [draw(st.integers(1, 3)) for _ in range(n_tunnels)]
    total = n_tunnels + sum(counts)
    all_names = draw(st.lists(names, min_size=total, max_size=total, unique=True))
    listen = draw(st.lists(ports, min_size=sum(counts), max_size=sum(counts), unique=True))
    tunnels, k = [], 0
    for i, count in enumerate(counts):
        fwds = []
        for _ in range(count):
            anonymous = draw(st.booleans()) and draw(st.booleans())
            fwds.append(draw(forwards(listen[k], "" if anonymous else all_names[n_tunnels + k])))
            k += 1
        tunnels.append(Tunnel(
            name=all_names[i], host=draw(hosts), port=draw(ports), user=draw(users),
            identity=draw(st.one_of(st.just(""), paths)), forwards=tuple(fwds),
            client=draw(st.sampled_from(["auto", "openssh", "dropbear"])),
            ssh_path=draw(st.one_of(st.just(""), paths)), known_hosts=draw(st.one_of(st.just(""), paths)),
            accept_new=draw(st.booleans()), keepalive=draw(st.integers(0, 10 ** 6)),
            connect_timeout=draw(st.integers(1, 10 ** 6)), interval=draw(seconds), max_backoff=draw(backoffs),
            alternates=tuple(draw(st.lists(st.tuples(hosts, ports), max_size=3))),
            remote_check_every=draw(st.integers(0, 100)), fail_threshold=draw(st.integers(1, 100)),
            reclaim=draw(st.booleans()), extra_options=tuple(draw(st.lists(extra, max_size=3))),
            spread=draw(st.one_of(st.just(0.0), seconds)), failover_after=draw(st.integers(1, 100))))
    return Settings(tunnels=tuple(tunnels), state=draw(paths), pidfile=draw(paths), syslog=draw(st.booleans()),
                    config_path="gen.conf")


@FAST
@given(all_settings())
def test_generated_settings_round_trip(s):
    text = render(s)
    again = config.parse_text(text, "gen.conf", check_files=False)
    assert again == s
    assert render(again) == text


@FAST
@given(seconds)
def test_seconds_render_as_plain_decimals(value):
    text = number(value)
    assert "e" not in text and float(text) == value


@FAST
@given(st.text(), st.floats(min_value=1e-9, max_value=1e12, allow_nan=False))
def test_spread_offset_in_range_and_stable(key, span):
    from agent.core import spread
    value = spread.offset(key, span)
    assert 0 <= value < span and value == spread.offset(key, span)


SSH_WORDS = st.sampled_from(["Host", "HostName", "User", "Port", "IdentityFile", "LocalForward", "RemoteForward",
                             "DynamicForward", "Match", "all", "Include", "x", "*", "!x", "22", "0", "8080",
                             "h:1", "[::1]:80", "::1/80", "%h", "%C", "~/k", "=", '"', "'", "#", "\\",
                             "StrictHostKeyChecking", "accept-new", "ProxyJump", "ServerAliveInterval"])


@FAST
@given(st.one_of(st.text(), st.lists(st.lists(SSH_WORDS, min_size=1, max_size=4), max_size=12).map(
    lambda lines: "\n".join(" ".join(w) for w in lines))))
def test_ssh_config_raises_only_config_error(tmp_path_factory, text):
    from agent.settings import sshconfig
    path = tmp_path_factory.getbasetemp() / "fuzz_ssh_config"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        t = sshconfig.tunnel_from_host(str(path), "x")
    except ConfigError as exc:
        assert exc.errors
        return
    assert t.name == "x"
