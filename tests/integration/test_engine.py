"""The engine on a real ZooKeeper: status, backoff, finalizers, exclusivity, leader election.

Reconcilers here are small test functions over the store's test kind (Widget); the engine does
not know or care which kind it runs.
"""

from __future__ import annotations

import threading
import time
import urllib.request

import pytest
from kazoo.client import KazooClient

from boidcluster.adapters.store import Store
from boidcluster.engine.operator import Operator
from boidcluster.engine.reconciler import Registry, Result, condition
from boidcluster.model.meta import CLEANUP_FINALIZER
from fixtures.zookeeper import Gadget, Widget, widget


def eventually(check, timeout=10.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
            if value:
                return value
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def new_store(zk_hosts: str) -> Store:
    return Store(zk_hosts, kinds=[Widget, Gadget], timeout=5.0, session_timeout=4.0)


@pytest.fixture
def operators(zk_hosts):
    started: list[tuple[Operator, Store]] = []

    def start(registry: Registry, world: dict | None = None, **kw) -> Operator:
        s = new_store(zk_hosts)
        op = Operator(s, world=world or {"name": "test-world"}, registry=registry, **kw).start()
        started.append((op, s))
        return op

    yield start
    for op, s in started:
        op.stop()
        s.close()


def cond(obj, type_):
    return obj.status.condition(type_) if obj.status else None


def test_reconcile_writes_status_and_observed_generation(store, operators):
    reg = Registry()
    calls = []

    @reg.reconciler(Widget)
    def reconcile(w, world):
        calls.append((w.name, w.spec.size, world["name"]))
        return Result(conditions=[condition("Ready", w.spec.size < 5, "Size", f"size {w.spec.size}")],
                      status={"phase": "Big" if w.spec.size >= 5 else "Small"})

    operators(reg)
    store.create(widget("w1", size=1))
    got = eventually(lambda: (o := store.get(Widget, "w1")).status and o.status.observed_generation == 1 and o)
    assert got.status.phase == "Small" and cond(got, "Ready").status == "True"
    w = store.get(Widget, "w1")
    w.spec.size = 7
    store.update(w)
    got = eventually(lambda: (o := store.get(Widget, "w1")).status.observed_generation == 2 and o)
    assert got.status.phase == "Big" and cond(got, "Ready").status == "False"
    assert calls[0] == ("w1", 1, "test-world")
    settled = len(calls)
    time.sleep(0.5)
    assert len(calls) == settled  # our own status writes do not trigger reconciles


def test_failure_backs_off_and_says_so_in_status(store, operators):
    reg = Registry()
    attempts = []

    class ChainDown(Exception):
        reason = "ChainUnavailable"

    @reg.reconciler(Widget)
    def reconcile(w, world):
        attempts.append(time.monotonic())
        if len(attempts) < 4:
            raise ChainDown("node at 127.0.0.1:1 refused the connection")
        return Result()

    operators(reg)
    store.create(widget("w1"))
    failing = eventually(lambda: cond(o := store.get(Widget, "w1"), "Reconciled") and o)
    c = cond(failing, "Reconciled")
    assert c.status == "False" and c.reason == "ChainUnavailable" and "next retry in" in c.message
    eventually(lambda: cond(store.get(Widget, "w1"), "Reconciled").status == "True", timeout=20)
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    assert gaps[1] > gaps[0] * 1.2  # the waits grow


def test_finalizer_blocks_deletion_until_cleanup_succeeds(store, operators):
    reg = Registry()
    cleanup_ok = threading.Event()

    @reg.reconciler(Widget, cleanup=True)
    def reconcile(w, world):
        if w.metadata.deletion_timestamp:
            if not cleanup_ok.is_set():
                raise RuntimeError("registry row still present on chain")
            return Result.released()
        return Result()

    operators(reg)
    store.create(widget("w1"))
    eventually(lambda: CLEANUP_FINALIZER in store.get(Widget, "w1").metadata.finalizers)
    store.delete(Widget, "w1")
    stuck = eventually(lambda: (c := cond(store.get(Widget, "w1"), "Reconciled")) and c.status == "False"
                       and store.get(Widget, "w1"))
    assert "registry row still present" in cond(stuck, "Reconciled").message
    cleanup_ok.set()
    eventually(lambda: store.list(Widget) == [], timeout=20)


def test_one_object_never_reconciled_twice_at_once(store, operators):
    reg = Registry()
    active: dict[str, int] = {}
    overlap = []
    concurrent_names = set()
    lock = threading.Lock()

    @reg.reconciler(Widget)
    def reconcile(w, world):
        with lock:
            active[w.name] = active.get(w.name, 0) + 1
            if active[w.name] > 1:
                overlap.append(w.name)
            if sum(1 for v in active.values() if v) > 1:
                concurrent_names.update(k for k, v in active.items() if v)
        time.sleep(0.05)
        with lock:
            active[w.name] -= 1
        return Result(requeue_after=0.01)

    operators(reg, workers=4)
    for i in range(4):
        store.create(widget(f"w{i}"))
    for _ in range(10):  # spec changes racing with requeues
        for i in range(4):
            w = store.get(Widget, f"w{i}")
            w.spec.size += 1
            store.update(w)
        time.sleep(0.02)
    time.sleep(0.5)
    assert overlap == []
    assert len(concurrent_names) >= 2  # different objects did run in parallel


def test_only_the_leader_reconciles_and_a_lost_session_hands_over(store, operators, zk_hosts):
    reg = Registry()
    seen_by: list[str] = []

    @reg.reconciler(Widget)
    def reconcile(w, world):
        seen_by.append(threading.current_thread().name)
        return Result(status={"phase": w.spec.color})

    a = operators(reg, identity="replica-a")
    eventually(lambda: a.leading)
    b = operators(reg, identity="replica-b")
    time.sleep(0.3)
    assert a.leading and not b.leading
    store.create(widget("w1"))
    eventually(lambda: store.get(Widget, "w1").status is not None)

    # Expire replica a's session from outside, as a network partition would.
    client = a.store.client
    session_id, password = client.client_id
    hosts = zk_hosts.split("/")[0]
    thief = KazooClient(hosts=hosts, client_id=(session_id, password))
    thief.start(timeout=5)
    thief.stop()
    thief.close()

    eventually(lambda: not a.leading, timeout=10)  # stops at once on losing its session
    eventually(lambda: b.leading, timeout=10)
    w = store.get(Widget, "w1")
    w.spec.color = "blue"
    store.update(w)
    eventually(lambda: store.get(Widget, "w1").status.phase == "blue")
    assert b.controller is not None


def test_health_and_metrics_endpoints(store, operators):
    reg = Registry()

    @reg.reconciler(Widget)
    def reconcile(w, world):
        return Result()

    op = operators(reg, health_port=0)
    eventually(lambda: op.leading)
    store.create(widget("w1"))
    eventually(lambda: store.get(Widget, "w1").status is not None)
    base = f"http://127.0.0.1:{op.health.port}"
    assert urllib.request.urlopen(base + "/healthz").read() == b"ok\n"
    assert urllib.request.urlopen(base + "/readyz").read() == b"ready\n"
    metrics = urllib.request.urlopen(base + "/metrics").read().decode()
    assert 'boid_reconciles_total{kind="Widget",result="ok"}' in metrics
    assert "boid_leader 1.0" in metrics


def test_a_process_reconciles_only_the_objects_it_owns(store, operators):
    """Per-protocol dispatchers: each owns its protocol's jobs and never writes another's status."""
    reg = Registry()

    @reg.reconciler(Widget)
    def reconcile(w, world):
        return Result(status={"phase": world["name"]})

    red = reg.subset([Widget], select=lambda w: w.spec.color == "red")
    blue = reg.subset([Widget], select=lambda w: w.spec.color == "blue")
    operators(red, world={"name": "red-process"}, identity="red", leader_path="/boid/v1/dispatchers/red/leader")
    operators(blue, world={"name": "blue-process"}, identity="blue", leader_path="/boid/v1/dispatchers/blue/leader")
    store.create(widget("r1"))
    b = widget("b1")
    b.spec.color = "blue"
    store.create(b)
    eventually(lambda: store.get(Widget, "r1").status is not None and store.get(Widget, "b1").status is not None)
    time.sleep(0.3)
    assert store.get(Widget, "r1").status.phase == "red-process"
    assert store.get(Widget, "b1").status.phase == "blue-process"
    assert CLEANUP_FINALIZER not in store.get(Widget, "b1").metadata.finalizers
    with pytest.raises(ValueError, match="no reconciler registered for Gadget"):
        reg.subset([Gadget])


def test_a_dead_watch_is_re_established(store, operators):
    reg = Registry()

    @reg.reconciler(Widget)
    def reconcile(w, world):
        return Result(status={"phase": f"size-{w.spec.size}"})

    op = operators(reg)
    store.create(widget("w1"))
    eventually(lambda: store.get(Widget, "w1").status is not None)
    op.controller._watch.stop()  # the watch dies (as if its worker thread crashed)
    w = store.get(Widget, "w1")
    w.spec.size = 5
    store.update(w)  # not seen by the dead watch ...
    eventually(lambda: store.get(Widget, "w1").status.phase == "size-5", timeout=10)  # ... but by its successor


def test_a_slow_kind_cannot_starve_another(store, operators):
    # Each kind has its own queue and workers: Widgets stuck in a slow external call (a chain
    # that hangs) leave the Gadget workers free.
    reg = Registry()
    release = threading.Event()

    @reg.reconciler(Widget)
    def slow(w, world):
        release.wait(20)
        return Result()

    @reg.reconciler(Gadget)
    def fast(g, world):
        return Result(conditions=[condition("Ready", True, "Done")])

    operators(reg, workers=2)
    try:
        for i in range(4):   # more slow objects than the Widget workers
            store.create(widget(f"w{i}"))
        time.sleep(0.3)
        store.create(Gadget.model_validate({"metadata": {"name": "g"}, "spec": {"size": 1}}))
        eventually(lambda: cond(store.get(Gadget, "g"), "Ready"), timeout=5)
    finally:
        release.set()


def test_event_sources_and_notify_enqueue_with_their_reasons(store, operators):
    reg = Registry()
    seen: list[str] = []
    pushed: list = []

    @reg.reconciler(Widget)
    def widgets(w, world):
        seen.append(w.name)
        # a reconcile may ask for another object to be looked at (a finished Job wakes its Protocol)
        return Result(notify=[("Gadget", "g")] if w.name == "w-event" else [])

    @reg.reconciler(Gadget)
    def gadgets(g, world):
        seen.append(g.name)
        return Result()

    @reg.source(Widget)
    def channel(world, enqueue):   # like controller-runtime's source.Channel
        pushed.append(enqueue)
        return lambda: pushed.clear()

    op = operators(reg, workers=1)
    store.create(widget("w-event"))
    store.create(Gadget.model_validate({"metadata": {"name": "g"}, "spec": {"size": 1}}))
    eventually(lambda: "w-event" in seen and "g" in seen)
    eventually(lambda: pushed)
    n = seen.count("w-event")
    pushed[0]("w-event", "task-update")
    eventually(lambda: seen.count("w-event") > n)
    m = op.metrics
    eventually(lambda: m.reasons.labels("Widget", "task-update")._value.get() == 1)
    eventually(lambda: m.reasons.labels("Gadget", "notify:Widget")._value.get() >= 1)
    assert m.reasons.labels("Widget", "watch")._value.get() >= 1
    text = m.exposition().decode()
    assert 'boid_reconcile_phase_seconds_count{kind="Widget",phase="read"}' in text


def test_an_index_follows_the_watch_including_status_and_deletion(store, operators):
    from boidcluster.engine.world import World

    reg = Registry()

    @reg.reconciler(Widget)
    def widgets(w, world):
        return Result(status={"phase": "Done" if w.spec.size > 1 else "Busy"})

    @reg.indexer(Widget, "busy-by-color")
    def busy(w):
        return [] if w.status and w.status.phase == "Done" else [w.spec.color]

    world = World(store=store)
    operators(reg, world=world)
    store.create(widget("a"))
    store.create(widget("b"))
    eventually(lambda: world.index is not None and world.index.covers("Widget", "busy-by-color"))
    eventually(lambda: world.index.get("Widget", "busy-by-color", "red") == {"a", "b"})
    w = store.get(Widget, "a")
    w.spec.size = 2
    store.update(w)   # its reconcile writes status phase Done: it leaves the index
    eventually(lambda: world.index.get("Widget", "busy-by-color", "red") == {"b"})
    store.delete(Widget, "b")
    eventually(lambda: world.index.get("Widget", "busy-by-color", "red") == set())
