"""Tenancy on a real ZooKeeper: identities, per-object ACLs, proven owners (adapters/auth.py)."""

from __future__ import annotations

import json

import pytest
from kazoo.client import KazooClient
from kazoo.security import ACL, Id, Permissions

from boidcluster.adapters.auth import USERS, Credentials, marker_name
from boidcluster.adapters.store import (ANY_VERSION, OBJECTS, STATUS_NODE, Forbidden, NotFound, Store,
                                        Unauthorized)
from fixtures.zookeeper import Widget, widget


def test_wrong_password_is_one_clear_error_without_the_secret(secured):
    bad = Credentials("alice", "not-" + secured.users["alice"].password)
    with pytest.raises(Unauthorized) as e:
        Store(secured.hosts, kinds=[Widget], credentials=bad)
    msg = str(e.value)
    assert "authentication as user 'alice' failed" in msg and "wrong password" in msg
    assert bad.password not in msg and secured.users["alice"].password not in msg
    assert bad.password not in repr(bad)
    with pytest.raises(Unauthorized, match="unknown user"):
        Store(secured.hosts, kinds=[Widget], credentials=Credentials.generate("mallory"))


def test_a_user_cannot_change_or_delete_another_users_objects(secured):
    with secured.store("alice") as alice, secured.store("bob") as bob:
        alice.create(widget("a1", size=1))
        w = bob.get(Widget, "a1")  # everyone reads
        w.spec.size = 99
        with pytest.raises(Forbidden, match="user 'bob' may not update Widget a1"):
            bob.update(w)
        with pytest.raises(Forbidden):
            bob.delete(Widget, "a1")
        with pytest.raises(Forbidden, match="nothing was applied"):
            bob.apply([widget("b1"), widget("a1", size=7)])
        assert alice.get(Widget, "a1").spec.size == 1
        with pytest.raises(NotFound):
            alice.get(Widget, "b1")
        # the raw znode too: bob's own client cannot remove the object or its status
        raw = KazooClient(hosts=secured.hosts, auth_data=secured.users["bob"].auth_data())
        raw.start(timeout=10)
        try:
            from kazoo.exceptions import NoAuthError, NotEmptyError
            with pytest.raises(NotEmptyError):
                raw.delete(f"{OBJECTS}/widgets/a1")
            with pytest.raises(NoAuthError):
                raw.delete(f"{OBJECTS}/widgets/a1/{STATUS_NODE}")
            with pytest.raises(NoAuthError):
                raw.set_acls(f"{OBJECTS}/widgets/a1", [ACL(Permissions.ALL, Id("world", "anyone"))])
        finally:
            raw.stop()
            raw.close()
        # the owner may change and delete her own
        w = alice.get(Widget, "a1")
        w.spec.size = 2
        assert alice.update(w).spec.size == 2
        assert alice.delete(Widget, "a1") is None


def test_only_the_operator_writes_status_and_run_records(secured):
    with secured.store("alice") as alice, secured.store("admin") as op:
        alice.create(widget("w"))
        with pytest.raises(Forbidden, match="may not update status of Widget w"):
            alice.update_status(Widget, "w", {"phase": "Done"}, expected_version=ANY_VERSION)
        with pytest.raises(Forbidden):
            alice.create_once("job-uid/results/t1", {"forged": True})
        op.update_status(Widget, "w", {"phase": "Done"}, expected_version=ANY_VERSION)
        assert op.create_once("job-uid/results/t1", {"ok": True})
        with pytest.raises(Forbidden):
            alice.create_once("job-uid/results/t2", {"forged": True})
        assert alice.get(Widget, "w").status.phase == "Done"
        assert json.loads(alice.get_run("job-uid/results/t1")) == {"ok": True}


def test_the_owner_is_proven_and_cannot_be_forged(secured):
    with secured.store("alice") as alice, secured.store("bob") as bob, secured.store("admin") as op:
        alice.create(widget("mine"))
        bob.apply([widget("his")])
        assert op.owner(Widget, "mine") == "alice"
        assert op.owner(Widget, "his") == "bob"
        op.create(widget("ops"))
        assert op.owner(Widget, "ops") == "admin"
        op.apply([widget("for-alice")], owner="alice")  # e.g. a GitSource of alice's
        assert op.owner(Widget, "for-alice") == "alice"
        # the attack: bob writes the znodes himself with an ACL that names alice as an owner
        # (ZooKeeper accepts any well-formed digest id), trying to pass his object off as hers
        raw = KazooClient(hosts=secured.hosts, auth_data=secured.users["bob"].auth_data())
        raw.start(timeout=10)
        a_id, b_id = secured.users["alice"].digest_id, secured.users["bob"].digest_id
        world_all = [ACL(Permissions.ALL, Id("world", "anyone"))]

        def forge(name: str, owners: list[str], status_acl: list[ACL] | None, markers: list[str]) -> list:
            data = widget(name).to_dict(with_status=False)
            data["metadata"].update(uid=f"u-{name}", generation=1, creationTimestamp="2026-01-01T00:00:00Z")
            acl = [*(ACL(Permissions.ALL, Id("digest", o)) for o in owners),
                   ACL(Permissions.ALL, Id("digest", secured.admin.digest_id)),
                   ACL(Permissions.READ, Id("world", "anyone"))]
            txn = raw.transaction()
            txn.create(f"{OBJECTS}/widgets/{name}", json.dumps(data).encode(), acl=acl)
            if status_acl is not None:
                txn.create(f"{OBJECTS}/widgets/{name}/{STATUS_NODE}", b"null", acl=status_acl)
            for m in markers:
                txn.create(f"{USERS}/{m}/{marker_name('widgets', name, f'u-{name}')}", b"")
            return txn.commit()

        try:
            assert isinstance(forge("f1", [a_id], None, ["alice"])[-1], Exception)  # not her marker
            forge("f2", [a_id], None, [])                     # claims alice, no proof
            forge("f3", [a_id, b_id], op.policy.status_acl(), ["bob"])  # proves only himself
            forge("f4", [b_id], world_all, ["bob"])           # a status anyone could write
        finally:
            raw.stop()
            raw.close()
        assert op.owner(Widget, "f2") is None
        assert op.owner(Widget, "f3") == "bob"
        assert op.owner(Widget, "f4") is None
