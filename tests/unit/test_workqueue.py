"""The engine's work queue: dedup, never two workers on one key, delayed requeue."""

import random
import threading
import time

import pytest

from boidcluster.engine.backoff import Backoff
from boidcluster.engine.workqueue import ShutDown, WorkQueue


def test_a_key_queued_twice_is_handed_out_once():
    q = WorkQueue()
    q.add("a")
    q.add("a")
    q.add("b")
    assert [q.get(0.1), q.get(0.1)] == ["a", "b"]
    with pytest.raises(TimeoutError):
        q.get(0.05)


def test_a_key_added_while_processing_waits_for_done():
    q = WorkQueue()
    q.add("a")
    assert q.get(0.1) == "a"
    q.add("a")  # an update arrives while "a" is being reconciled
    with pytest.raises(TimeoutError):
        q.get(0.05)  # not handed to a second worker
    q.done("a")
    assert q.get(0.1) == "a"  # ... but not lost either


def test_add_after_delays_and_an_immediate_add_supersedes_it():
    t = [0.0]
    q = WorkQueue(clock=lambda: t[0])
    q.add_after("a", 10)
    with pytest.raises(TimeoutError):
        q.get(0)
    t[0] = 10.0
    assert q.get(0) == "a"
    q.done("a")
    q.add_after("b", 30)
    q.add("b")
    assert q.get(0) == "b"
    q.done("b")
    t[0] = 50.0
    with pytest.raises(TimeoutError):
        q.get(0)  # the superseded delayed add does not fire again


def test_the_earliest_delayed_add_wins():
    t = [0.0]
    q = WorkQueue(clock=lambda: t[0])
    q.add_after("a", 30)
    q.add_after("a", 5)
    t[0] = 5.0
    assert q.get(0) == "a"


def test_concurrent_workers_never_share_a_key():
    q = WorkQueue()
    active: set[str] = set()
    overlaps = []
    lock = threading.Lock()
    handled = []

    def worker():
        while True:
            try:
                key = q.get()
            except ShutDown:
                return
            with lock:
                if key in active:
                    overlaps.append(key)
                active.add(key)
            time.sleep(0.001)
            with lock:
                active.discard(key)
                handled.append(key)
            q.done(key)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    rng = random.Random(1)
    for _ in range(500):
        q.add(f"k{rng.randrange(5)}")
    deadline = time.monotonic() + 5
    while (len(q) or q.depth()["processing"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    q.shutdown()
    for t in threads:
        t.join(2)
    assert overlaps == []
    assert set(handled) == {f"k{i}" for i in range(5)}


def test_backoff_grows_per_key_up_to_the_cap_and_resets():
    b = Backoff(base=1, cap=8, rng=random.Random(0))
    delays = [b.failure("x") for _ in range(6)]
    for n, d in enumerate(delays):
        ceiling = min(8, 2**n)
        assert ceiling / 2 <= d <= ceiling
    assert b.failure("y") <= 1  # another key is not slowed down
    b.reset("x")
    assert b.failures("x") == 0
