"""Fixtures the unit tests share: `peers` (tests/support/peers.py) and `sessions`
(tests/support/fakesession.py); each closes what it made."""

import pytest

from fakesession import FakeSession
from peers import Peer


@pytest.fixture
def peers():
    made = []

    def make(behaviour, address="127.0.0.1", port=0):
        p = Peer(behaviour, address, port)
        made.append(p)
        return p
    yield make
    for p in made:
        p.close()


@pytest.fixture
def sessions():
    made = []

    def make(*a, **kw):
        s = FakeSession(*a, **kw)
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()
