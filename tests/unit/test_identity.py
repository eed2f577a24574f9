"""agent.run.identity: the box ID is made once, kept, and never derived from names that collide."""

import os
import re

import pytest

from agent import errors as E
from agent.core import values
from agent.run import identity
from agent.run.checks import held_message
from agent.run.tunnel import resume_sessions


def test_made_once_then_kept(tmp_path):
    path = str(tmp_path / "etc" / "sshkeep" / "box-id")
    first = identity.box_id(path)
    assert re.match(r"\A[0-9a-f]{16}\Z", first)
    assert open(path).read() == first + "\n"
    assert identity.box_id(path) == first                  # read, not made again
    assert os.listdir(os.path.dirname(path)) == ["box-id"]  # no temp file left behind
    assert identity.box_id(str(tmp_path / "other")) != first


def test_two_boxes_with_the_same_hostname_differ(tmp_path):
    ids = {identity.box_id(str(tmp_path / ("b%d" % i) / "box-id")) for i in range(20)}
    assert len(ids) == 20


def test_an_admin_may_write_their_own(tmp_path):
    path = tmp_path / "box-id"
    path.write_text("  rtr-berlin-01 \n")
    assert identity.box_id(str(path)) == "rtr-berlin-01"


@pytest.mark.parametrize("text", ["", "a b c", "$(id)", "x" * 65, "ab"])
def test_a_bad_file_is_an_error_with_the_fix(tmp_path, text):
    path = tmp_path / "box-id"
    path.write_text(text)
    with pytest.raises(E.SshkeepError) as exc:
        identity.box_id(str(path))
    assert str(path) + ":1:" in str(exc.value) and "remove the file" in str(exc.value)


def test_cannot_create_is_an_error_naming_the_file(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "sshkeep").write_text("a file where the directory should be")
    with pytest.raises(E.SshkeepError) as exc:
        identity.box_id(str(ro / "sshkeep" / "box-id"))
    assert exc.value.code == E.EX_CANTCREAT and "--box-id-file" in str(exc.value)


def test_default_dir_is_persistent():
    d = identity.default_dir()
    assert d == "/etc/sshkeep" if os.geteuid() == 0 else d.endswith("/sshkeep")
    assert not d.startswith(("/tmp", "/var/run", "/run"))


@pytest.mark.parametrize("text, folded", [("tünnel", "tunnel"), ("Straße", "Strasse"), ("OpenWrt", "OpenWrt"),
                                          ("a b;c", "a_b_c"), ("☃", "_"), ("", "-"), ("x" * 99, "x" * 64)])
def test_word_folds_any_text_to_ascii(text, folded):
    assert values.word(text) == folded


def test_word_keeps_what_each_use_allows():
    # a file name from a tunnel name (dbclient's private HOME), a UCI section name (letters, digits, _)
    assert values.word("", empty="tunnel") == "tunnel" and values.word("a/b.c") == "a_b.c"
    assert values.word("hub-1.lan ü" * 9, limit=None, keep="_", empty="unnamed") == "hub_1_lan_u" * 9


def test_held_message_says_who_and_since():
    msg = held_message(20022, [{"pid": 7, "box": "0123abcd", "since": 0, "host": "OpenWrt", "tunnel": "t"}], "me")
    assert msg.startswith("port 20022 on the hub is held by box 0123abcd, hostname OpenWrt, tunnel t, since ")
    msg = held_message(20022, [{"pid": 7, "box": "me", "since": 1764650000, "host": "h", "tunnel": "t"}], "me")
    assert "earlier session of this box" in msg and "2025-12-02" in msg and "never ended" in msg


def _sup(tmp_path, box="0123abcd"):
    from agent.core import machine
    from agent.core.model import Settings, Tunnel
    from agent.run.supervisor import Supervisor
    from agent.run.tunnel import Runner
    sup = Supervisor(Settings(tunnels=(), state=str(tmp_path / "state.json")), log=None)
    sup.box = box
    sup.runners = [Runner(Tunnel(name, "hub"), None, machine.Machine(machine.Policy())) for name in ("t", "u")]
    return sup


def _doc(pid, box="0123abcd", session=None):
    session = session or {"pid": 4242, "start": "987654", "server": "hub:22", "box": box}
    return {"pid": pid, "box_id": box, "tunnels": [{"name": "t", "session": session}, {"name": "u"}]}


def test_a_restarted_agent_keeps_its_own_last_session(tmp_path):
    dead = 2 ** 22 + 17  # above pid_max on this kind of machine: never alive
    sup = _sup(tmp_path)
    resume_sessions(sup.runners, _doc(dead), sup.box)
    assert sup.runners[0].session == {"pid": 4242, "start": "987654", "server": "hub:22", "box": "0123abcd"}
    assert sup.runners[1].session is None


@pytest.mark.parametrize("doc", [
    _doc(os.getppid()),                                       # a live agent wrote it: its sessions are not stale
    _doc(2 ** 22 + 17, box="another-box"),                    # another box identity
    _doc(2 ** 22 + 17, session={"pid": "4242; id", "start": "1", "server": "h", "box": "0123abcd"}),
    _doc(2 ** 22 + 17, session={"pid": 4242, "start": "$(id)", "server": "h", "box": "0123abcd"}),
    _doc(2 ** 22 + 17, session={"pid": 1, "start": "5", "server": "h", "box": "0123abcd"}),
    {"pid": None, "tunnels": "junk"},
])
def test_no_session_is_taken_from_a_state_that_does_not_prove_it(tmp_path, doc):
    sup = _sup(tmp_path)
    resume_sessions(sup.runners, doc, sup.box)
    assert [r.session for r in sup.runners] == [None, None]


def test_an_unusable_id_file_does_not_stop_the_tunnels(tmp_path):
    """Full or read-only flash: a temporary ID (the previous run's, from the state) and an error
    line naming the file, instead of refusing to start."""
    import json
    from agent.core.model import Settings
    from agent.run.supervisor import Supervisor

    class Log:
        lines = []

        def error(self, tunnel, message):
            self.lines.append(message)

    (tmp_path / "flat").write_text("a file where the directory should be")
    bad = str(tmp_path / "flat" / "box-id")
    state = tmp_path / "state.json"
    log = Log()
    sup = Supervisor(Settings(tunnels=(), state=str(state), box_id_file=bad), log=log)
    sup.prepare()
    assert identity.ID_OK.match(sup.box) and bad in log.lines[0] and "temporary box id" in log.lines[0]
    state.write_text(json.dumps({"pid": None, "box_id": "feedc0de12345678"}))
    again = Supervisor(Settings(tunnels=(), state=str(state), box_id_file=bad), log=log)
    again.prepare()
    assert again.box == "feedc0de12345678"  # the same temporary ID until the reboot clears the state


def test_held_by_another_tunnel_of_this_box_says_so():
    h = [{"pid": 7, "box": "me", "since": None, "host": "h", "tunnel": "lan"}]
    assert held_message(20022, h, "me", "wän") == ("port 20022 on the hub is held by this box's tunnel lan (server "
                                                   "pid 7, since an unknown time): give each tunnel its own port")
    assert "earlier session of this box" in held_message(20022, h, "me", "lan")
