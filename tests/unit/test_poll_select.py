"""The Store's select for kazoo's connection thread answers as kazoo's own selector_select does."""

from __future__ import annotations

import socket

import pytest
from kazoo.handlers.utils import selector_select

from boidcluster.adapters.store import poll_select


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def both(*args):
    got, want = poll_select(*args), selector_select(*args)
    assert got == want
    return got


def test_nothing_to_read_times_out_empty_and_writable_sockets_are_writable(pair):
    a, b = pair
    assert both([a, b], [], [], 0.01) == ([], [], [])
    assert both([], [a], [], 0) == ([], [a], [])
    assert both([b], [a], [], 0) == ([], [a], [])


def test_readable_once_data_arrives_and_readable_wins_over_writable(pair):
    a, b = pair
    a.sendall(b"x")
    assert both([b, a], [], [], 1.0) == ([b], [], [])
    assert both([b], [a], [], 1.0) == ([b], [a], [])
    assert both([b.fileno()], [], [], 0) == ([b.fileno()], [], [])  # descriptors work as well as sockets


def test_a_hung_up_peer_wakes_the_reader(pair):
    a, b = pair
    a.close()
    assert both([b], [], [], 1.0) == ([b], [], [])


def test_bad_arguments_fail_alike(pair):
    a, _ = pair
    for args, error in ((([a], [], [], -1), ValueError), (([a], [], [], "1"), TypeError), (([-1], [], [], 0), TypeError)):
        for select in (poll_select, selector_select):
            with pytest.raises(error):
                select(*args)
