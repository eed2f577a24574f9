"""Fleet spreading: deterministic, in range, evenly spread; host key for boxes that share a name."""

import pytest

from agent.core import spread


def test_deterministic_and_in_range():
    for key in ("", "a", "OpenWrt/02:00:00:00:00:01/hub", "é" * 50, "\udc80"):
        for span in (0.001, 1, 30, 3600.5, 1e12):
            a = spread.offset(key, span)
            assert a == spread.offset(key, span)
            assert 0 <= a < span


@pytest.mark.parametrize("span", [0, -1, float("nan"), None])
def test_no_span_no_offset(span):
    assert spread.offset("box", span) == 0.0


def test_known_values_do_not_change_between_versions():
    # Pinned: a change here re-times every box of every fleet at once.
    assert spread._hash64(b"") == 0xF52A15E9A9B5E89B
    assert [spread.offset("box%d/hub" % i, 100.0) for i in range(3)] == \
        [0.4393305382049406, 77.50728879547677, 75.3538912842488]


def test_spread_is_even_over_a_fleet():
    buckets = [0] * 10
    for i in range(5000):
        buckets[int(spread.offset("router-%04d/hub" % i, 60) // 6)] += 1
    assert min(buckets) > 400 and max(buckets) < 600   # expected 500 each


def test_neighbours_differ():
    a, b = spread.offset("box1/hub", 60), spread.offset("box2/hub", 60)
    assert abs(a - b) > 0.01


def test_host_key(tmp_path):
    net = tmp_path / "net"
    for name, mac in (("lo", "00:00:00:00:00:00"), ("eth0", "02:aa:bb:cc:dd:ee"), ("br-lan", "00:00:00:00:00:00")):
        (net / name).mkdir(parents=True)
        (net / name / "address").write_text(mac + "\n")
    assert spread.host_key("router-17", str(net)) == "router-17"
    assert spread.host_key("OpenWrt", str(net)) == "OpenWrt/02:aa:bb:cc:dd:ee"
    assert spread.host_key("OpenWrt", str(tmp_path / "none")) == "OpenWrt"
    assert isinstance(spread.host_key(), str) and spread.host_key()


def test_tunnel_offset():
    from agent.core.model import Tunnel
    t = Tunnel(name="hub", host="h", spread=60)
    assert spread.tunnel_offset(t, key="box1") == spread.offset("box1/hub", 60)
    assert 0 <= spread.tunnel_offset(t) < 60
    assert spread.tunnel_offset(Tunnel(name="hub", host="h")) == 0.0
