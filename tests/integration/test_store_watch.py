"""Store watches against a real ZooKeeper: spec/status/delete events, all kinds, session expiry
(changes made while the watcher was cut off arrive after the re-list) and a server restart."""

from __future__ import annotations

import time
from typing import Callable

import pytest
from fixtures.netproxy import Proxy
from fixtures.zookeeper import Gadget, Widget, WidgetSpec, WidgetStatus, make_chroot, widget
from kazoo.client import KazooClient

from boidcluster.adapters.local.zookeeper import LOOPBACK, LocalZooKeeper
from boidcluster.adapters.store import Store, StoreUnavailable, Watch, WatchEvent
from boidcluster.model.meta import ObjectMeta


def next_event(w: Watch, pred: Callable[[WatchEvent], bool] = lambda e: True, timeout: float = 10.0) -> WatchEvent:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ev = w.get(timeout=left)
        if ev is not None and pred(ev):
            return ev
    raise AssertionError("no matching watch event in time")


def drain(w: Watch, quiet: float = 0.3) -> list[WatchEvent]:
    out = []
    while (ev := w.get(timeout=quiet)) is not None:
        out.append(ev)
    return out


def test_watch_reports_spec_status_and_delete(store: Store) -> None:
    with store.watch(Widget) as w:
        store.create(widget("a"))
        ev = next_event(w)
        assert (ev.type, ev.kind, ev.name, ev.obj.metadata.generation) == ("ADDED", "Widget", "a", 1)
        obj = store.get(Widget, "a")
        obj.spec.size = 2
        store.update(obj)
        ev = next_event(w)
        assert ev.type == "MODIFIED" and ev.obj.spec.size == 2 and ev.obj.metadata.generation == 2
        store.update_status(Widget, "a", {"phase": "Running"}, expected_version=0)
        ev = next_event(w)
        assert ev.type == "MODIFIED" and ev.obj.status.phase == "Running"
        store.delete(Widget, "a")
        ev = next_event(w)
        assert ev.type == "DELETED" and ev.name == "a" and not ev.synthetic
        assert drain(w) == []
    assert w.get(timeout=0.1) is None  # stopped


def test_watch_lists_existing_objects_first_unless_asked_not_to(store: Store) -> None:
    store.apply([widget("a"), widget("b")])
    with store.watch(Widget) as w:
        assert sorted((e.type, e.name) for e in drain(w)) == [("ADDED", "a"), ("ADDED", "b")]
    with store.watch(Widget, send_initial=False) as w:
        assert drain(w, quiet=0.2) == []
        store.create(widget("c"))
        assert next_event(w).name == "c"


def test_watch_all_kinds_discovers_new_kind_directories(store: Store) -> None:
    with store.watch() as w:
        store.create(Gadget(metadata=ObjectMeta(name="g"), spec=WidgetSpec()))
        store.create(widget("a"))
        got = {(e.type, e.kind, e.name) for e in [next_event(w), next_event(w)]}
        assert got == {("ADDED", "Gadget", "g"), ("ADDED", "Widget", "a")}


def test_watch_recreated_object_reports_delete_then_add(store: Store) -> None:
    with store.watch(Widget) as w:
        store.create(widget("a"))
        next_event(w)
        store.delete(Widget, "a")
        store.create(widget("a", size=3))
        events = [next_event(w, timeout=5)]
        while events[-1].type != "ADDED":
            events.append(next_event(w, timeout=5))
        assert events[-1].obj.spec.size == 3
        assert "DELETED" in [e.type for e in events]


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_watch_relists_after_session_expiry(zookeeper: LocalZooKeeper) -> None:
    chroot_hosts = make_chroot(zookeeper.hosts)
    chroot = chroot_hosts[len(zookeeper.hosts):]
    proxy = Proxy(zookeeper.port)
    watcher = Store(f"{LOOPBACK}:{proxy.port}{chroot}", kinds=[Widget], timeout=5)
    writer = Store(chroot_hosts, kinds=[Widget], timeout=5)
    try:
        writer.apply([widget("a"), widget("b"), widget("c")])
        w = watcher.watch(Widget)
        assert len(drain(w)) == 3
        session = watcher.client.client_id
        proxy.cut()
        wait_for(lambda: not watcher.client.connected)
        # expire the watcher's session: attach to it with a second client, then close it
        thief = KazooClient(hosts=zookeeper.hosts, client_id=session)
        thief.start(timeout=5)
        thief.stop()
        thief.close()
        # changes the watcher cannot be notified of: its watches died with the session
        a = writer.get(Widget, "a")
        a.spec.size = 5
        writer.update(a)
        writer.update_status(Widget, "b", {"phase": "Running"}, expected_version=0)
        writer.delete(Widget, "c")
        writer.create(widget("d"))
        proxy.resume()
        events = {}
        deadline = time.monotonic() + 15
        while len(events) < 4 and time.monotonic() < deadline:
            ev = w.get(timeout=1)
            if ev is not None:
                events[ev.name] = ev
        assert {n: e.type for n, e in events.items()} == {
            "a": "MODIFIED", "b": "MODIFIED", "c": "DELETED", "d": "ADDED"}
        assert all(e.synthetic for e in events.values())
        assert events["a"].obj.spec.size == 5 and events["b"].obj.status.phase == "Running"
        assert watcher.client.client_id[0] != session[0]  # a new session
        # and the watch is armed again on the new session
        writer.update_status(Widget, "d", {"phase": "Done"}, expected_version=0)
        ev = next_event(w, lambda e: e.name == "d")
        assert ev.type == "MODIFIED" and not ev.synthetic
        w.stop()
    finally:
        watcher.close()
        writer.close()
        proxy.close()


def test_store_and_watch_survive_a_server_restart(tmp_path) -> None:
    with LocalZooKeeper(tmp_path / "zk", fsync=False, die_with_parent=True) as zk:
        store = Store(zk.hosts, kinds=[Widget], timeout=2)
        try:
            store.create(widget("a"))
            w = store.watch(Widget)
            assert next_event(w).type == "ADDED"
            zk.stop()
            wait_for(lambda: not store.client.connected)
            t0 = time.monotonic()
            with pytest.raises(StoreUnavailable, match=zk.hosts):
                store.get(Widget, "a")
            assert time.monotonic() - t0 < 4
            zk.start()
            wait_for(lambda: store.client.connected, timeout=15)
            assert store.get(Widget, "a").metadata.generation == 1  # same data, same port
            store.update_status(Widget, "a", {"phase": "Running"}, expected_version=0)
            ev = next_event(w, lambda e: e.type == "MODIFIED")
            assert ev.obj.status == WidgetStatus(phase="Running")
            w.stop()
        finally:
            store.close()
