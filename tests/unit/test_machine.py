"""The state machine and backoff: plain numbers for time, no processes, no sleeping."""

import random

from agent.core import classify as C
from agent.core import machine as M
from agent.core import timing


def make(**kw):
    policy = M.Policy(**kw)
    return M.Machine(policy, timing.Backoff(cap=policy.max_backoff, jitter=0, rng=random.Random(1)))


REFUSED = C.Outcome(C.REFUSED, C.RETRY, "refused")
TIMEOUT = C.Outcome(C.TIMEOUT, C.RETRY, "timed out")


def test_backoff_sequence_and_cap():
    b = timing.Backoff(cap=10, jitter=0)
    assert [b.next() for _ in range(7)] == [0, 1, 2, 4, 8, 10, 10]
    b.reset()
    assert b.next() == 0


def test_backoff_jitter_bounded():
    b = timing.Backoff(cap=60, jitter=0.25, rng=random.Random(7))
    delays = [b.next() for _ in range(30)]
    assert all(0 <= d <= 60 for d in delays)
    assert 0.75 * 8 <= delays[4] <= 1.25 * 8


def test_backoff_offset_spreads():
    b = timing.Backoff(cap=10, jitter=0, offset=2.5)
    assert [b.next() for _ in range(3)] == [0, 3.5, 4.5]


def test_start_spawns_and_marker_makes_up():
    m = make()
    assert m.start(0) == [M.Spawn()]
    assert m.state == M.CONNECTING
    m.on_ready(1)
    assert m.state == M.UP and m.up_since == 1


def test_first_delay_spreads_first_connect():
    m = make()
    assert m.start(0, first_delay=4) == []
    assert m.state == M.BACKOFF and m.deadline == 4
    assert m.on_timer(3.9) == []
    assert m.on_timer(4) == [M.Spawn()]


def test_watchdog_kills_when_no_marker():
    m = make(connect_timeout=10)
    m.start(0)
    assert m.on_timer(m.deadline) == [M.Kill(C.WATCHDOG)]


def test_settle_mode_declares_up():
    m = make(use_marker=False, settle=3)
    m.start(0)
    m.on_timer(3)
    assert m.state == M.UP


def test_network_failures_back_off_growing_and_never_give_up():
    m = make(max_backoff=60)
    m.start(0)
    delays = []
    now = 0
    for _ in range(12):
        cmds = m.on_exit(now, REFUSED)
        if cmds == [M.Spawn()]:
            delays.append(0)
        else:
            assert m.state == M.BACKOFF
            delays.append(m.deadline - now)
            now = m.deadline
            assert m.on_timer(now) == [M.Spawn()]
    assert delays[:5] == [0, 1, 2, 4, 8]
    assert max(delays) == 60 and delays[-1] == 60


def test_auth_failure_waits_longest():
    m = make(max_backoff=60)
    m.start(0)
    m.on_exit(1, C.Outcome(C.AUTH, C.RETRY_SLOW, "denied"))
    assert m.state == M.BACKOFF and m.deadline == 61
    assert "auth-failed" in m.last_error


def test_fatal_stops():
    m = make()
    m.start(0)
    cmds = m.on_exit(0.1, C.Outcome(C.CLIENT_MISSING, C.FATAL, "no ssh"))
    assert cmds == [M.Fatal("no ssh")] and m.state == M.STOPPED


def test_health_restart_is_immediate_then_backs_off():
    m = make(fail_threshold=2)
    m.start(0)
    m.on_ready(1)
    m.on_timer(m.deadline)  # stayed up: backoff reset
    assert m.on_check(40, "R:1", "refused", False) == []
    assert m.on_check(70, "R:1", "refused", False) == [M.Kill(C.HEALTH)]
    assert m.on_exit(70.5, C.classify(-15, [], ours=m.kill_reason)) == [M.Spawn()]
    assert m.restarts == 1
    # failing again right away: now backoff applies
    m.on_ready(71)
    m.on_check(72, "R:1", "refused", False)
    m.on_check(73, "R:1", "refused", False)
    assert m.on_exit(73.2, C.classify(-15, [], ours=C.HEALTH)) == []
    assert m.state == M.BACKOFF and m.deadline > 73.2


def test_good_check_resets_failure_count():
    m = make(fail_threshold=2)
    m.start(0)
    m.on_ready(1)
    m.on_check(2, "L:1", "refused", False)
    m.on_check(3, "L:1", "ok-banner", True)
    assert m.on_check(4, "L:1", "refused", False) == []


def test_target_down_is_neutral():
    m = make(fail_threshold=1)
    m.start(0)
    m.on_ready(1)
    assert m.on_check(2, "R:1", "target-down", None) == []
    assert m.health == "target-down" and m.state == M.UP


def test_port_in_use_asks_for_reclaim_then_retries_at_once():
    m = make()
    m.start(0)
    out = C.Outcome(C.PORT_IN_USE, C.RECLAIM, "remote port forwarding failed for listen port 20022")
    assert m.on_exit(0.3, out) == [M.Reclaim()]
    assert m.on_reclaimed(0.8, True) == [M.Spawn()]
    assert m.last_heal == "reclaimed stale listener"


def test_reclaim_limited():
    m = make(reclaim_limit=2)
    m.start(0)
    out = C.Outcome(C.PORT_IN_USE, C.RECLAIM, "x")
    now = 0
    kinds = []
    for _ in range(4):
        cmds = m.on_exit(now, out)
        kinds.append(cmds)
        if cmds == [M.Reclaim()]:
            m.on_reclaimed(now, True)
        elif m.state == M.BACKOFF:
            now = m.deadline
            m.on_timer(now)
    assert kinds.count([M.Reclaim()]) == 2


def test_reclaim_off_backs_off():
    m = make(reclaim=False)
    m.start(0)
    assert m.on_exit(1, C.Outcome(C.PORT_IN_USE, C.RECLAIM, "x")) == [M.Spawn()]  # attempt 0: at once


def test_server_answers_cuts_backoff_only_after_network_failure():
    m = make()
    m.start(0)
    m.on_exit(0, TIMEOUT)      # immediate retry
    m.on_exit(1, TIMEOUT)      # now backing off
    assert m.wants_server_probe()
    assert m.on_server_answers(1.5) == [M.Spawn()]
    for reason in (C.REFUSED, C.CLOSED, C.EXITED):   # the host answered: no bare probes (noauth)
        m1 = make()
        m1.start(0)
        m1.on_exit(0, C.Outcome(reason, C.RETRY, ""))
        m1.on_exit(1, C.Outcome(reason, C.RETRY, ""))
        assert m1.state == M.BACKOFF and not m1.wants_server_probe(), reason
    for reason in (C.NETWORK, C.KEEPALIVE):
        m1 = make()
        m1.start(0)
        m1.on_exit(0, C.Outcome(reason, C.RETRY, ""))
        m1.on_exit(1, C.Outcome(reason, C.RETRY, ""))
        assert m1.wants_server_probe(), reason
    for reason, want in ((C.REFUSED, True), (C.CLOSED, True), (C.DNS, False)):  # half-open SYN probes
        m1 = make(half_open_probe=True)
        m1.start(0)
        m1.on_exit(0, C.Outcome(reason, C.RETRY, ""))
        m1.on_exit(1, C.Outcome(reason, C.RETRY, ""))
        assert m1.wants_server_probe() == want, reason
        if want:
            assert m1.on_server_answers(2) == [M.Spawn()]
    m2 = make()
    m2.start(0)
    m2.on_exit(0, C.Outcome(C.AUTH, C.RETRY_SLOW, ""))
    assert not m2.wants_server_probe()
    assert m2.on_server_answers(1) == []
    m3 = make()                # the name did not resolve: backoff timer only, no lookups in the loop
    m3.start(0)
    m3.on_exit(0, C.Outcome(C.DNS, C.RETRY, ""))
    m3.on_exit(1, C.Outcome(C.DNS, C.RETRY, ""))
    assert m3.state == M.BACKOFF and not m3.wants_server_probe()


def test_reconnect_request_resets_and_kills():
    m = make()
    m.start(0)
    m.on_ready(1)
    assert m.on_reconnect_request(5) == [M.Kill(C.RECONNECT)]
    m2 = make()
    m2.start(0)
    m2.on_exit(0, REFUSED)
    m2.on_exit(1, REFUSED)
    assert m2.on_reconnect_request(2) == [M.Spawn()]


def test_stop():
    m = make()
    m.start(0)
    assert m.stop(1) == [M.Kill(C.STOPPED)]
    assert m.on_exit(2, C.classify(0, [], ours=C.STOPPED)) == []
    assert m.state == M.STOPPED
    m2 = make()
    m2.start(0)
    m2.on_exit(0, REFUSED)
    m2.on_exit(1, REFUSED)
    assert m2.stop(2) == [] and m2.state == M.STOPPED


def test_failures_are_counted_per_check():
    m = make(fail_threshold=2)
    m.start(0)
    m.on_ready(1)
    # two different checks failing once each in one round: not yet two rounds
    assert m.on_check(2, "L:1", "refused", False) == []
    assert m.on_check(2, "R:2", "refused", False) == []
    assert m.on_check(3, "L:1", "refused", False) == [M.Kill(C.HEALTH)]


def test_unreachable_is_neutral_and_keeps_counts():
    m = make(fail_threshold=2)
    m.start(0)
    m.on_ready(1)
    m.on_check(2, "R:2", "refused", False)
    assert m.on_check(3, "R:2", "unreachable", None) == []
    assert m.health != "target-down"


def test_server_answers_with_spread_delay():
    m = make()
    m.start(0)
    m.on_exit(0, TIMEOUT)
    m.on_exit(1, TIMEOUT)
    assert m.on_server_answers(1.5, delay=2.0) == []
    assert m.state == M.BACKOFF and m.deadline == 3.5 and not m.wants_server_probe()
    assert m.on_timer(3.5) == [M.Spawn()]


def test_server_busy_waits_a_random_short_delay_that_grows():
    m = make(max_backoff=60)
    m.start(0)
    now, waits = 0.0, []
    for _ in range(8):
        m.on_exit(now, C.Outcome(C.SERVER_BUSY, C.RETRY, "kex"))
        assert m.state == M.BACKOFF and not m.wants_server_probe()   # the port answers: just busy
        waits.append(m.deadline - now)
        now = m.deadline
        m.on_timer(now)
    assert 0.5 <= waits[0] <= 3.0 and 1.0 <= waits[1] <= 6.0
    assert waits[-1] == 60 and sum(waits) > 120     # 71 tries in 120 s before; now 8 take minutes


def test_busy_delay_table():
    cases = [  # (drops, u, cap) -> delay
        ((1, 0.0, 60), 0.5), ((1, 0.999999, 60), 3.0), ((2, 0.0, 60), 1.0), ((3, 0.5, 60), 7.0),
        ((5, 0.0, 60), 8.0), ((7, 1.0, 60), 60.0), ((1000, 0.0, 60), 60.0), ((0, 0.0, 60), 0.5),
        ((3, 1.0, 5), 5.0),
    ]
    for args, want in cases:
        assert abs(timing.busy_delay(*args) - want) < 1e-3, (args, timing.busy_delay(*args), want)
    m = make(max_backoff=60)
    m.start(0)
    m.on_exit(0, C.Outcome(C.SERVER_BUSY, C.RETRY, "kex"))
    m.on_timer(m.deadline)
    m.on_ready(m.deadline + 1)
    m.on_timer(m.deadline)   # stable: the busy count starts again
    assert m.backoff.busy_drops == 0


def test_reclaim_nothing_retries_in_a_second():
    m = make()
    m.start(0)
    for _ in range(4):
        m.on_exit(0, REFUSED)  # grow the backoff
    m.on_exit(10, C.Outcome(C.PORT_IN_USE, C.RECLAIM, "x"))
    m.on_reclaimed(10.5, False, soon=True)
    assert m.deadline == 10.9


CLOSED = C.Outcome(C.CLOSED, C.RETRY, "Connection closed by 10.0.0.2")


def _delay(m, now, cmds):
    """Seconds until the next spawn the machine asked for (0 = at once)."""
    if cmds == [M.Spawn()]:
        return 0.0
    assert m.state == M.BACKOFF and cmds == []
    return m.deadline - now


def test_session_cut_after_a_passing_check_retries_within_a_quarter_second_every_time():
    # A hub that ends the session ~5 s after each reconnect: the path works, so never escalate.
    m = M.Machine(M.Policy(), timing.Backoff(cap=60, rng=random.Random(3)))
    m.start(0)
    now, delays = 0.0, []
    for _ in range(12):
        m.on_ready(now + 0.3)
        m.on_check(now + 1.3, "R:20022", "ok", True)
        now += 5
        delays.append(_delay(m, now, m.on_exit(now, CLOSED)))
        assert m.on_timer(m.deadline) == [M.Spawn()]
        now = m.deadline
    assert all(0 < d <= 0.25 for d in delays), delays
    assert len(set(delays)) > 1  # jittered: a fleet cut at once does not come back in step


def test_session_that_dies_before_ready_or_before_passing_a_check_escalates():
    for up, check in ((False, None), (True, None), (True, False)):
        m = make(max_backoff=60)
        m.start(0)
        now, delays = 0.0, []
        for _ in range(6):
            if up:
                m.on_ready(now + 0.3)
            if check is not None:
                m.on_check(now + 1.3, "R:20022", "refused", check)
            now += 2
            delays.append(_delay(m, now, m.on_exit(now, CLOSED)))
            if m.deadline is not None and m.state == M.BACKOFF:
                now = m.deadline
                m.on_timer(now)
        assert delays == [0, 1, 2, 4, 8, 16], (up, check, delays)


def test_escalation_starts_over_after_a_proven_session():
    m = make(max_backoff=60)
    m.start(0)
    for now in (0, 1):
        m.on_exit(now, REFUSED)                  # 0, then 1 s
    m.on_timer(m.deadline)
    m.on_ready(3)
    m.on_check(4, "L:1", "ok", True)
    assert 0 < _delay(m, 9, m.on_exit(9, CLOSED)) <= 0.25
    now = m.deadline
    m.on_timer(now)
    delays = []
    for _ in range(3):                           # the hub is gone now: 1, 2, 4 (not 0 again, not 4, 8, 16)
        delays.append(_delay(m, now, m.on_exit(now, REFUSED)))
        now = m.deadline
        m.on_timer(now)
    assert delays == [1, 2, 4]


def test_a_failing_check_does_not_prove_and_a_later_pass_does():
    m = make(fail_threshold=3)
    m.start(0)
    m.on_ready(1)
    m.on_check(2, "R:1", "refused", False)
    m.on_check(2.1, "L:2", "ok", True)           # R:1 still failing: not proven
    assert not m.proven
    m.on_check(3, "R:1", "ok", True)
    assert m.proven


def test_without_checks_the_ready_line_proves_the_session():
    m = M.Machine(M.Policy(proof_by_check=False), timing.Backoff(cap=60, rng=random.Random(1)))
    m.start(0)
    m.on_exit(0.5, REFUSED)                      # at once
    m.on_exit(1, REFUSED)                        # backing off
    m.on_timer(m.deadline)
    m.on_ready(m.deadline + 0.2)
    assert 0 < _delay(m, 10, m.on_exit(10, CLOSED)) <= 0.25


def test_reconnect_request_stays_immediate_for_a_proven_session():
    m = make()
    m.start(0)
    m.on_ready(1)
    m.on_check(2, "R:1", "ok", True)
    assert m.on_reconnect_request(3) == [M.Kill(C.RECONNECT)]
    assert m.on_exit(3.1, C.classify(0, [], ours=C.RECONNECT)) == [M.Spawn()]


def test_quick_retry_keeps_the_fleet_offset():
    b = timing.Backoff(offset=2.0, rng=random.Random(5))
    assert 2.0 <= b.quick() <= 2.25 and b.attempt == 1


def test_port_held_by_another_box_waits_longest_and_says_who():
    m = make(max_backoff=60.0)
    m.start(0)
    out = C.Outcome(C.PORT_IN_USE, C.RECLAIM, "remote port forwarding failed for listen port 20022")
    assert m.on_exit(0.3, out) == [M.Reclaim()]
    held = "port 20022 on the hub is held by box 0123abcd, hostname OpenWrt, tunnel t, since x"
    assert m.on_reclaimed(0.8, False, False, held) == []
    assert m.state == M.BACKOFF and m.deadline >= 0.8 + 60.0
    assert m.last_error == "remote-port-held: " + held
    assert m.on_timer(30.0) == []             # no retry, no reclaim before the long wait is over
    assert m.on_timer(m.deadline) == [M.Spawn()]


def test_requested_reconnect_is_not_an_error():
    # SIGUSR1 / failback: status must keep showing the last real error, not "reconnect-requested".
    m = make()
    m.start(0)
    m.on_exit(0.1, REFUSED)
    m.on_timer(m.deadline)
    m.on_ready(2)
    assert m.on_reconnect_request(3) == [M.Kill(C.RECONNECT)]
    assert m.on_exit(3.1, C.classify(0, [], ours=C.RECONNECT)) == [M.Spawn()]
    assert m.last_error == "connection-refused: refused"
