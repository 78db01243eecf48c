"""Store against a real ZooKeeper: CAS, generations, finalizers, atomic apply, selectors, runs."""

from __future__ import annotations

import threading
import time

import pytest
from fixtures.zookeeper import Gadget, Widget, WidgetSpec, WidgetStatus, widget

from boidcluster.adapters.local.zookeeper import free_port
from boidcluster.adapters.store import (
    ANY_VERSION,
    OBJECTS,
    AlreadyExists,
    Conflict,
    Forbidden,
    InvalidObject,
    InvalidSelector,
    NotFound,
    Requirement,
    Store,
    StoreError,
    StoreUnavailable,
    parse_selector,
    status_version,
)
from boidcluster.model.meta import CLEANUP_FINALIZER, ObjectMeta


def test_create_assigns_server_fields_and_get_round_trips(store: Store) -> None:
    created = store.create(widget("a", size=3, labels={"app": "pi"}))
    m = created.metadata
    assert m.uid and m.generation == 1 and m.creation_timestamp is not None
    assert m.resource_version == 0 and status_version(created) == 0
    got = store.get(Widget, "a")
    assert got == created
    assert got.spec.size == 3 and got.metadata.labels == {"app": "pi"}
    with pytest.raises(AlreadyExists, match="Widget 'a' already exists"):
        store.create(widget("a"))
    with pytest.raises(NotFound, match="Widget 'nope' not found"):
        store.get(Widget, "nope")
    # the same name in another kind is another object
    store.create(Gadget(metadata=ObjectMeta(name="a"), spec=WidgetSpec()))
    assert [g.name for g in store.list(Gadget)] == ["a"]


def test_update_is_compare_and_set(store: Store) -> None:
    store.create(widget("a"))
    first, second = store.get(Widget, "a"), store.get(Widget, "a")
    first.spec.size = 2
    store.update(first)
    second.spec.size = 9
    with pytest.raises(Conflict) as err:
        store.update(second)
    assert (err.value.kind, err.value.name, err.value.expected, err.value.current) == ("Widget", "a", 0, 1)
    assert "Widget 'a'" in str(err.value) and "expected resourceVersion 0, current 1" in str(err.value)
    assert store.get(Widget, "a").spec.size == 2  # never a silent overwrite
    with pytest.raises(InvalidObject, match="needs metadata.resourceVersion"):
        store.update(widget("a", size=5))
    assert isinstance(err.value, StoreError)


def test_generation_bumps_only_when_spec_changes(store: Store) -> None:
    obj = store.create(widget("a"))
    obj.metadata.labels = {"tier": "gold"}
    obj = store.update(obj)
    assert (obj.metadata.generation, obj.metadata.resource_version) == (1, 1)
    obj.spec.size = 7
    obj = store.update(obj)
    assert (obj.metadata.generation, obj.metadata.resource_version) == (2, 2)
    same = store.update(obj)  # no change: no write
    assert same.metadata.resource_version == 2
    obj = store.update_status(obj.model_copy(update={"status": WidgetStatus(phase="Running")}))
    assert store.get(Widget, "a").metadata.generation == 2  # status never bumps generation


def test_uid_and_creation_timestamp_are_immutable(store: Store) -> None:
    obj = store.create(widget("a"))
    obj.metadata.uid = "forged"
    with pytest.raises(InvalidObject, match="metadata.uid is immutable"):
        store.update(obj)


def test_update_status_is_compare_and_set_on_its_own_version(store: Store) -> None:
    obj = store.create(widget("a"))
    reader_a, reader_b = store.get(Widget, "a"), store.get(Widget, "a")
    reader_a.status = WidgetStatus(phase="Running", observed_generation=1)
    written = store.update_status(reader_a)
    assert status_version(written) == 1 and written.status.phase == "Running"
    reader_b.status = WidgetStatus(phase="Failed")
    with pytest.raises(Conflict, match="expected status version 0, current 1"):
        store.update_status(reader_b)
    # a status write does not touch the object znode: a spec update read before it still applies
    obj.spec.size = 4
    assert store.update(obj).metadata.resource_version == 1
    got = store.get(Widget, "a")
    assert got.status.phase == "Running" and got.spec.size == 4
    # the (kind, name, status) form
    out = store.update_status(Widget, "a", {"phase": "Done"}, expected_version=1)
    assert out.status.phase == "Done" and status_version(out) == 2
    with pytest.raises(Conflict):
        store.update_status(Widget, "a", {"phase": "x"}, expected_version=1)
    with pytest.raises(InvalidObject, match="needs the status version"):
        store.update_status(Widget, "a", {"phase": "x"})
    with pytest.raises(InvalidObject, match="invalid Widget status"):
        store.update_status(Widget, "a", {"bogus": 1}, expected_version=ANY_VERSION)
    with pytest.raises(NotFound):
        store.update_status(Widget, "zz", {"phase": "x"}, expected_version=ANY_VERSION)


def test_delete_without_finalizers_removes_object_and_status(store: Store) -> None:
    store.create(widget("a"))
    assert store.delete(Widget, "a") is None
    with pytest.raises(NotFound):
        store.get(Widget, "a")
    assert store.client.exists(f"{OBJECTS}/widgets/a/status") is None
    with pytest.raises(NotFound):
        store.delete(Widget, "a")


def test_finalizers_block_deletion_until_removed(store: Store) -> None:
    store.create(widget("a", finalizers=["x/other"]))
    store.add_finalizer(Widget, "a", CLEANUP_FINALIZER)
    marked = store.delete(Widget, "a")
    assert marked is not None and marked.metadata.deletion_timestamp is not None
    again = store.delete(Widget, "a")  # idempotent: same mark, no write
    assert again.metadata.deletion_timestamp == marked.metadata.deletion_timestamp
    assert again.metadata.resource_version == marked.metadata.resource_version
    with pytest.raises(InvalidObject, match="being deleted"):
        store.add_finalizer(Widget, "a", "x/late")
    left = store.remove_finalizer(Widget, "a", CLEANUP_FINALIZER)
    assert left is not None and left.metadata.finalizers == ["x/other"]
    assert store.remove_finalizer(Widget, "a", "x/absent") is not None  # no-op
    assert store.remove_finalizer(Widget, "a", "x/other") is None  # last one: gone
    with pytest.raises(NotFound):
        store.get(Widget, "a")


def test_add_finalizer_from_an_object_as_read_loses_no_change_made_since(store: Store) -> None:
    """The controller passes the object it holds (one round trip fewer): when someone changed it
    since, the write conflicts and is redone on a fresh read, keeping their change."""
    store.create(widget("a"))
    held = store.get(Widget, "a")
    out = store.add_finalizer(Widget, "a", CLEANUP_FINALIZER, current=held)  # still current
    assert out.metadata.finalizers == [CLEANUP_FINALIZER] and out.metadata.resource_version == 1
    assert store.get(Widget, "a").metadata.finalizers == [CLEANUP_FINALIZER]

    store.create(widget("b", finalizers=["x/gone-soon"]))
    held = store.get(Widget, "b")
    other = store.get(Widget, "b")
    other.spec.size = 7
    other.metadata.finalizers = []
    store.update(other)  # someone else: a spec change, and the finalizer `held` shows removed
    out = store.add_finalizer(Widget, "b", "x/gone-soon", current=held)  # stale: it "has" it
    got = store.get(Widget, "b")
    assert got.spec.size == 7 and got.metadata.finalizers == ["x/gone-soon"] == out.metadata.finalizers
    out = store.add_finalizer(Widget, "b", CLEANUP_FINALIZER, current=held)
    got = store.get(Widget, "b")
    assert got.spec.size == 7 and got.metadata.finalizers == ["x/gone-soon", CLEANUP_FINALIZER]
    assert got == out


def test_finalizer_without_deletion_just_goes(store: Store) -> None:
    store.create(widget("a", finalizers=[CLEANUP_FINALIZER]))
    out = store.remove_finalizer(Widget, "a", CLEANUP_FINALIZER)
    assert out is not None and out.metadata.finalizers == []


def test_apply_reports_actions_and_keeps_server_fields(store: Store) -> None:
    res = store.apply([widget("a"), widget("b")])
    assert [(r.name, r.action) for r in res] == [("a", "created"), ("b", "created")]
    uid = store.get(Widget, "a").metadata.uid
    store.update_status(Widget, "a", {"phase": "Running"}, expected_version=0)
    store.add_finalizer(Widget, "a", CLEANUP_FINALIZER)

    res = store.apply([widget("a", size=5), widget("b"), widget("c")])
    assert [(r.name, r.action) for r in res] == [("a", "configured"), ("b", "unchanged"), ("c", "created")]
    a = store.get(Widget, "a")
    assert a == res[0].obj
    assert a.metadata.uid == uid and a.metadata.generation == 2 and a.spec.size == 5
    assert a.status.phase == "Running" and a.metadata.finalizers == [CLEANUP_FINALIZER]

    # server-owned fields in the input (as `get -o yaml` prints them) are ignored
    forged = widget("a", size=5, uid="forged", generation=99)
    forged.status = WidgetStatus(phase="Forged")
    assert store.apply([forged])[0].action == "unchanged"
    assert store.get(Widget, "a").status.phase == "Running"


def test_apply_is_all_or_nothing_on_an_invalid_object(store: Store) -> None:
    bad = Widget.model_construct(kind="Widget", metadata=ObjectMeta.model_construct(name="Bad_Name"),
                                 spec=WidgetSpec())
    with pytest.raises(InvalidObject, match="Bad_Name"):
        store.apply([widget("good"), bad])
    assert store.list(Widget) == []
    with pytest.raises(InvalidObject, match="appears twice"):
        store.apply([widget("x"), widget("x", size=2)])
    assert store.list(Widget) == []


def test_apply_is_one_transaction_checked_against_what_it_read(store: Store) -> None:
    store.create(widget("a"))
    store.create(widget("b"))
    plan = store._plan([widget("new"), widget("a", size=2), widget("b")])
    concurrent = store.get(Widget, "b")
    concurrent.metadata.labels = {"touched": "yes"}
    store.update(concurrent)  # lands between the read and the commit
    with pytest.raises(Conflict, match="Widget 'b'.*nothing was applied"):
        store._commit_plan(plan, dry_run=False)
    assert [w.name for w in store.list(Widget)] == ["a", "b"]
    assert store.get(Widget, "a").spec.size == 1
    # a re-plan sees the new state and goes through
    assert [r.action for r in store.apply([widget("new"), widget("a", size=2)])] == ["created", "configured"]


def test_apply_dry_run_stores_nothing(store: Store) -> None:
    store.create(widget("a"))
    res = store.apply([widget("a", size=9), widget("b"), widget("a2")], dry_run=True)
    assert [r.action for r in res] == ["configured", "created", "created"]
    assert res[0].obj.spec.size == 9 and res[0].obj.metadata.generation == 2
    assert [w.name for w in store.list(Widget)] == ["a"]
    assert store.get(Widget, "a").spec.size == 1
    assert store.apply([Gadget(metadata=ObjectMeta(name="g"), spec=WidgetSpec())], dry_run=True)[0].action == "created"
    assert store.list(Gadget) == []


@pytest.mark.parametrize(
    "text, labels, expected",
    [
        ("", {}, True),
        ("a=b", {"a": "b"}, True),
        ("a==b", {"a": "c"}, False),
        ("a!=b", {}, True),
        ("a=b,c!=d,e", {"a": "b", "c": "x", "e": ""}, True),
        ("a=b,c!=d,e", {"a": "b", "c": "d", "e": "1"}, False),
        ("a=b, c!=d, e", {"a": "b"}, False),
        ("!f", {"a": "b"}, True),
        ("!f", {"f": "1"}, False),
        ("env in (dev, prod)", {"env": "prod"}, True),
        ("env in (dev,prod),tier", {"env": "qa", "tier": "1"}, False),
        ("env notin (dev)", {}, True),
        ("app.kubernetes.io/name=pi", {"app.kubernetes.io/name": "pi"}, True),
    ],
)
def test_selector_matches(text: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_selector(text).matches(labels) is expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("a=b,", "expected a requirement after ','"),
        ("a=b,,c", "expected a label key at position 5"),
        ("=b", "expected a label key at position 1"),
        ("a in x", "expected '(' after in"),
        ("a in (x", "expected ',' or ')'"),
        ("a b", "unexpected 'b'"),
        ("a=b c", "unexpected 'c'"),
    ],
)
def test_selector_errors_are_clear(text: str, message: str) -> None:
    with pytest.raises(InvalidSelector, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        parse_selector(text)
    assert repr(text) in str(err.value) and isinstance(err.value, ValueError)


def test_selector_forms_round_trip() -> None:
    sel = parse_selector("a=b,c!=d,e,!f,g in (x,y),h notin (z)")
    assert str(parse_selector(str(sel))) == str(sel)
    assert parse_selector({"a": "b"}).requirements == (Requirement("a", "=", ("b",)),)


def test_list_filters_by_label_selector(store: Store) -> None:
    store.apply([
        widget("a", labels={"app": "pi", "env": "dev"}),
        widget("b", labels={"app": "pi", "env": "prod"}),
        widget("c", labels={"app": "mc"}),
    ])
    names = lambda sel: [w.name for w in store.list(Widget, sel)]  # noqa: E731
    assert names(None) == ["a", "b", "c"]
    assert names("app=pi") == ["a", "b"]
    assert names("app=pi,env!=dev") == ["b"]
    assert names("!env") == ["c"]
    assert names("env in (dev,qa)") == ["a"]
    assert names({"app": "mc"}) == ["c"]
    assert store.list(Gadget, "app=pi") == []
    assert names("app=") == []  # an empty value is valid syntax
    with pytest.raises(InvalidSelector):
        store.list(Widget, "app==,")


def test_create_once_is_exactly_once(store: Store) -> None:
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def attempt(i: int) -> None:
        barrier.wait()
        results.append(store.create_once("job-1/units/0007/done", {"worker": i}))

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert store.get_run("job-1/units/0007/done") is not None
    assert store.list_runs("job-1/units") == ["0007"]
    assert store.get_run("job-1/units/0008/done") is None
    with pytest.raises(InvalidObject):
        store.create_once("../escape")


def test_run_records_are_read_back_many_per_request_exactly(store: Store) -> None:
    """read_runs reads RUN_BATCH records per request (ZooKeeper's multiRead, on this chroot'ed
    store): every record, exactly, in name order; a record gone between the listing and the read
    is left out; reading one by one (a server without multiRead) gives the same. 1,250 records:
    seven requests, more than the READ_AHEAD window keeps in flight."""
    items = [(f"job-9/accepted/u{i:04d}", f'{{"i":{i}}}'.encode()) for i in range(1250)]
    assert store.create_many(items)
    want = [(p.rsplit("/", 1)[1], d) for p, d in items]
    assert store.read_runs("job-9/accepted") == want
    paths = [store._run_path("job-9/accepted/u0001"), store._run_path("job-9/accepted/gone")]
    assert store._get_many(paths, "read") == [b'{"i":1}', None]
    assert store.get_runs("job-9/accepted/u0002", "job-9/gone") == [b'{"i":2}', None]
    assert store.get_runs() == []   # nothing to read: no request (an empty multiRead is not one)
    store._multi_read = False
    assert store.read_runs("job-9/accepted") == want
    assert store._get_many(paths, "read") == [b'{"i":1}', None]


def test_deleting_a_jobs_records_takes_all_but_what_it_keeps_and_counts_each_once(store: Store, monkeypatch) -> None:
    """delete_runs deletes records as leaves, many per transaction (DELETE_BATCH, here 100: 25
    transactions, more than the window in flight); a node that turns out to have children, or one
    gone meanwhile, makes its transaction fall back to one by one: nothing is left behind but what
    was kept, the count is of the znodes that went, and running it again deletes nothing."""
    import boidcluster.adapters.store as store_module

    monkeypatch.setattr(store_module, "DELETE_BATCH", 100)
    leaves = [(f"job-7/attempts/u{i:04d}.0", b"{}") for i in range(2500)]
    nested = [("job-7/results/u0001/a/b", b"{}"), ("job-7/results/u0002", b"{}")]   # u0001 has children
    assert store.create_many(leaves + nested + [("job-7/summary", b'{"kept":1}')])
    sent = store._send_deletes
    gone_meanwhile = store._run_path("job-7/attempts/u1234.0")

    def racing(chunk):   # another client deletes one record after the listing, before our transaction
        if gone_meanwhile in chunk and store.client.exists(gone_meanwhile):
            store.client.delete(gone_meanwhile)
        return sent(chunk)

    monkeypatch.setattr(store, "_send_deletes", racing)
    # 2,499 attempts (one went meanwhile), their parent; u0001, a, b, u0002 and results
    assert store.delete_runs("job-7", keep=("summary",)) == 2499 + 1 + 5
    assert store.list_runs("job-7") == ["summary"]
    assert store.get_run("job-7/summary") == b'{"kept":1}'
    assert store.delete_runs("job-7", keep=("summary",)) == 0
    assert store.delete_runs("job-7") == 2   # the summary, then the job's own node
    assert store.list_runs("job-7") == [] and store.delete_runs("job-7") == 0
    assert store.create_many([("job-7/attempts/u0000.0", b"{}")])   # its parents are made again


def test_records_the_user_may_not_delete_are_refused_not_skipped(store: Store) -> None:
    """A delete refused by ZooKeeper's ACL (inside a transaction) is Forbidden, never taken for a
    record gone already; what the ACL protects stays."""
    from kazoo.security import make_acl, make_digest_acl

    assert store.create_many([("job-6/accepted/a", b"{}")])
    store.client.create(store._run_path("job-6/theirs"), b"",
                        acl=[make_acl("world", "anyone", read=True, write=True, create=True, admin=True),  # no delete
                             make_digest_acl("someone-else", "pw", all=True)])
    store.client.create(store._run_path("job-6/theirs/x"), b"{}")
    with pytest.raises(Forbidden):
        store.delete_runs("job-6")
    assert store.get_run("job-6/theirs/x") == b"{}"


def test_a_run_record_the_user_may_not_read_is_refused_not_skipped(store: Store) -> None:
    """A read refused by the record's ACL inside a multiRead is Forbidden, never a missing record."""
    from kazoo.security import make_digest_acl

    assert store.create_many([("job-8/accepted/a", b"{}")])
    store.client.create(store._run_path("job-8/accepted/b"), b"{}",
                        acl=[make_digest_acl("someone-else", "pw", all=True)])
    with pytest.raises(Forbidden):
        store.read_runs("job-8/accepted")


def test_unreachable_zookeeper_is_store_unavailable_within_the_timeout() -> None:
    hosts = f"127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable) as err:
        Store(hosts, timeout=1.0)
    assert time.monotonic() - t0 < 3.0
    assert hosts in str(err.value) and "within 1s" in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_objects_from_the_store_update_without_a_re_read_and_still_conflict(store: Store) -> None:
    store.create(widget("a"))
    a = store.get(Widget, "a")
    a.status = WidgetStatus(phase="Running")
    a = store.update_status(a)
    a.spec.size = 2
    a = store.update(a)  # uses the state it was read at
    assert (a.metadata.resource_version, status_version(a), a.status.phase) == (1, 1, "Running")
    a.status = WidgetStatus(phase="Done")
    assert status_version(store.update_status(a)) == 2
    stale = store.get(Widget, "a")
    other = store.get(Widget, "a")
    other.metadata.labels = {"x": "y"}
    store.update(other)
    stale.spec.size = 3
    with pytest.raises(Conflict, match="expected resourceVersion 1, current 2"):
        store.update(stale)
    assert store.get(Widget, "a").spec.size == 2
