"""agent.core.record: the value classes that stand in for dataclasses (which cost the agent 1.3 MB)."""

import pytest

from agent.core import record
from agent.core.model import Forward, Settings, Tunnel
from agent.core.record import FrozenError, field


@record.record
class Point:
    x: int
    y: int = 0
    note: str = field(default="", compare=False)


@record.record(frozen=False)
class Knobs:
    a: float = 1.0
    b: bool = True


def test_fields_in_order_with_defaults_and_keywords():
    p = Point(1)
    assert (p.x, p.y, p.note) == (1, 0, "")
    assert Point(1, 2) == Point(x=1, y=2) == Point(y=2, x=1)
    assert record.fields(Point) == ("x", "y", "note")
    assert record.defaults(Point) == {"y": 0, "note": ""}
    assert repr(Point(1, 2, "n")) == "Point(x=1, y=2, note='n')"


def test_bad_construction_is_a_type_error_naming_the_field():
    with pytest.raises(TypeError, match="missing field 'x'"):
        Point()
    with pytest.raises(TypeError, match="no field 'z'"):
        Point(1, z=3)
    with pytest.raises(TypeError, match="'x' given twice"):
        Point(1, x=2)
    with pytest.raises(TypeError, match="takes 3 fields, 4 given"):
        Point(1, 2, "", 4)


def test_frozen_equality_hash_and_compare_false():
    a, b = Point(1, 2, "one"), Point(1, 2, "other")
    assert a == b and hash(a) == hash(b)  # note takes no part
    assert a != Point(1, 3) and a != (1, 2) and len({a, b, Point(2)}) == 2
    with pytest.raises(FrozenError):
        a.x = 5
    with pytest.raises(AttributeError):
        del a.y
    assert a.x == 1


def test_replace_copies_and_validates():
    a = Point(1, 2, "n")
    b = record.replace(a, y=5)
    assert (b.x, b.y, b.note) == (1, 5, "n") and a.y == 2
    with pytest.raises(TypeError):
        record.replace(a, nope=1)


def test_mutable_record_assigns_and_is_unhashable():
    k = Knobs(b=False)
    k.a = 2.5
    assert k == Knobs(2.5, False)
    with pytest.raises(TypeError):
        hash(k)


def test_model_records_behave_as_before():
    f = Forward("R", "", 2222, "127.0.0.1", 22)
    t = Tunnel("hub", "10.0.0.1", forwards=(f,))
    assert t.port == 22 and t.forwards == (f,) and record.defaults(Tunnel)["keepalive"] == 15
    assert {t: 1}[Tunnel("hub", "10.0.0.1", forwards=(Forward("R", "", 2222, "127.0.0.1", 22),))] == 1
    s1, s2 = Settings((t,), warnings=("a",)), Settings((t,), warnings=("b",))
    assert s1 == s2  # warnings are not part of equality (a reload with new warnings changes nothing)
