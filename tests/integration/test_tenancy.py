"""Tenancy on a real ZooKeeper: identities, per-object ACLs, proven owners (adapters/auth.py)."""

from __future__ import annotations

import json

import pytest
from kazoo.client import KazooClient
from kazoo.security import ACL, Id, Permissions

from boidcluster.adapters.auth import USERS, Credentials, marker_name
from boidcluster.adapters.store import (ANY_VERSION, OBJECTS, STATUS_NODE, AlreadyExists, Forbidden, NotFound, Store,
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
            # ZooKeeper took the forged claim: an owner read from the ACL alone would be alice
            assert Id("digest", a_id) in [a.id for a in op.client.get_acls(f"{OBJECTS}/widgets/f2")[0]
                                          if a.perms == Permissions.ALL]
            forge("f3", [a_id, b_id], op.policy.status_acl(), ["bob"])  # proves only himself
            forge("f4", [b_id], world_all, ["bob"])           # a status anyone could write
        finally:
            raw.stop()
            raw.close()
        assert op.owner(Widget, "f2") is None
        assert op.owner(Widget, "f3") == "bob"
        assert op.owner(Widget, "f4") is None


# -- the operator: admission of Jobs, convergence of users' objects ----------------------------
from boidcluster.engine.controller import Controller  # noqa: E402
from boidcluster.engine.reconciler import Registry, Result  # noqa: E402
from boidcluster.engine.world import World  # noqa: E402
from boidcluster.model.resources import Job, Protocol  # noqa: E402
from boidcluster.reconcilers.admission import admit_job  # noqa: E402
from fixtures.operator import cond, eventually  # noqa: E402
from fixtures.tenancy import job, proto  # noqa: E402



def admitted(store, name):
    j = store.get(Job, name)
    c = j.status.condition("Admitted") if j.status else None
    return c and (c.status, c.reason, c.message)


def test_the_operator_runs_only_jobs_their_protocol_lets_the_creator_submit(secured):
    ran: list[str] = []
    registry = Registry()

    @registry.reconciler(Job)
    def reconcile(j, world):  # stands in for the Job reconciler: records that it was called
        ran.append(j.name)
        return Result()

    registry.admission(Job)(admit_job)
    with secured.store("admin") as op, secured.store("alice") as alice, secured.store("bob") as bob:
        alice.create(proto("p-alice", None))            # only alice (its creator) and admins
        alice.create(proto("p-open", ["*"]))
        op.create(proto("p-listed", ["bob"]))
        alice.create(job("a-own", "p-alice"))
        bob.create(job("b-sneaky", "p-alice"))           # bypasses boidctl's check: the operator refuses
        bob.create(job("b-open", "p-open"))
        bob.create(job("b-listed", "p-listed"))
        alice.create(job("a-unlisted", "p-listed"))
        op.create(job("op-any", "p-alice"))
        ctl = Controller(op, World(store=op), registry, workers=2).start()
        try:
            ctl.resync()
            eventually(lambda: all(admitted(op, n) for n in
                                   ("a-own", "b-sneaky", "b-open", "b-listed", "a-unlisted", "op-any")))
        finally:
            ctl.stop()
        assert set(ran) == {"a-own", "b-listed", "b-open", "op-any"}
        status, reason, message = admitted(op, "b-sneaky")
        assert (status, reason) == ("False", "SubmitterNotAllowed")
        assert message == ("user 'bob' may not submit jobs under protocol 'p-alice': not its creator and not "
                           "in its spec.submitters (none); the job does not run")
        assert admitted(op, "a-unlisted")[:2] == ("False", "SubmitterNotAllowed")
        assert admitted(op, "a-own") == ("True", "Allowed", "created by user 'alice'")
        # once the protocol lists bob, the next pass runs his job (level triggered)
        p = alice.get(Protocol, "p-alice")
        p.spec.submitters = ["bob"]
        alice.update(p)
        ctl = Controller(op, World(store=op), registry, workers=2).start()
        try:
            ctl.resync()
            eventually(lambda: "b-sneaky" in ran and admitted(op, "b-sneaky")[0] == "True")
        finally:
            ctl.stop()


def test_objects_without_a_proven_owner_are_not_acted_on(secured):
    ran: list[str] = []
    registry = Registry()

    @registry.reconciler(Widget)
    def reconcile(w, world):
        ran.append(w.name)
        return Result()

    with secured.store("admin") as op, secured.store(None) as anon:
        op.create(widget("ok"))
        raw = KazooClient(hosts=secured.hosts)  # anonymous: the kind directory lets anyone create
        raw.start(timeout=10)
        try:
            data = widget("anon").to_dict(with_status=False)
            data["metadata"].update(uid="u-anon", generation=1, creationTimestamp="2026-01-01T00:00:00Z")
            raw.create(f"{OBJECTS}/widgets/anon", json.dumps(data).encode())
            raw.create(f"{OBJECTS}/widgets/anon/{STATUS_NODE}", b"null")
        finally:
            raw.stop()
            raw.close()
        with pytest.raises(Unauthorized, match="requires authentication"):
            anon.create(widget("anon2"))
        ctl = Controller(op, World(store=op), registry, workers=1).start()
        try:
            ctl.resync()
            eventually(lambda: cond(op.get(Widget, "anon"), "Admitted") == "False" and "ok" in ran)
        finally:
            ctl.stop()
        assert set(ran) == {"ok"}
        assert op.get(Widget, "anon").status.condition("Admitted").reason == "OwnerUnproven"


@pytest.mark.usefixtures("contracts_deployed")
def test_the_operator_converges_users_objects(secured, chain_world, actors, tmp_path):
    """The operator (admin) converges alice's protocol (reads its escrow from the chain, writes its
    status) and runs its cleanup, though alice's znodes are hers: admins are in every object's ACL.
    The registry row is the owner's to make (`boidctl fund`, their own key), never the operator's."""
    from boidcluster.adapters.chain.blocking import BlockingChain
    from boidcluster.adapters.storage import Storage
    from boidcluster.engine.operator import Operator
    from boidcluster.reconcilers import registry
    import boidcluster.reconcilers.protocol  # noqa: F401  (registers)
    from fixtures.operator import protocol_obj

    op_store = secured.store("admin")
    chain = BlockingChain.open(chain_world.url, chain_world.operator_client().keys, timeout=2.0, call_timeout=30)
    world = World(store=op_store, storage=Storage(f"file://{tmp_path / 'storage'}"), chain=chain)
    op = Operator(op_store, world, registry.subset([Protocol]), workers=2).start()
    try:
        with secured.store("alice") as alice:
            obj = protocol_obj("alices", actors)
            alice.create(obj)
            chain_world.fund_protocol(obj, "1.0000 BOID")  # the owner, with their own key
            p = eventually(lambda: (o := alice.get(Protocol, "alices")) and cond(o, "Ready") == "True" and o,
                           timeout=60)
            assert cond(p, "Admitted") == "True" and cond(p, "Registered") == "True"
            assert str(p.status.escrow) == "1.0000 BOID"
            alice.delete(Protocol, "alices")  # her delete request; the operator cleans up and removes it
            eventually(lambda: alice.list(Protocol) == [], timeout=60)
    finally:
        op.stop()
        chain.close()
        op_store.close()


def test_gitsource_applied_objects_belong_to_the_gitsources_owner(secured):
    """The operator (admin) applies a GitSource's specs for the GitSource's owner: new objects are
    that user's, and objects of other users are conflicts, never overwritten or adopted."""
    from boidcluster.reconcilers.gitops import Options, PlanConflict, sync

    with secured.store("admin") as op, secured.store("bob") as bob:
        bob.create(proto("bobs", None))
        sync(op, "alices-repo", [proto("from-git", ["carol"])], Options(owner="alice"), commit="c1")
        assert op.owner(Protocol, "from-git") == "alice"
        with pytest.raises(PlanConflict, match="belongs to user 'bob'"):
            sync(op, "alices-repo", [proto("from-git", ["carol"]), proto("bobs", ["alice"])],
                 Options(owner="alice"), commit="c2")
        assert bob.get(Protocol, "bobs").spec.submitters is None
        assert op.get(Protocol, "from-git").metadata.generation == 1  # nothing applied


def test_securing_a_cluster_that_already_has_objects(zk_hosts):
    """Objects from before the policy become the admins': others cannot change them or their
    status, and the operator still acts on them (owner: admin)."""
    from boidcluster.adapters.auth import secure_hosts
    from fixtures.tenancy import secure

    with Store(zk_hosts, kinds=[Widget], timeout=5.0) as anon:
        anon.create(widget("old"))
        anon.create_once("old-job/results/t1", {"ok": True})
    sec = secure(zk_hosts)
    with sec.store("admin") as op, sec.store("bob") as bob:
        assert op.owner(Widget, "old") == "admin"
        w = bob.get(Widget, "old")
        w.spec.size = 5
        with pytest.raises(Forbidden):
            bob.update(w)
        with pytest.raises(Forbidden):
            bob.update_status(Widget, "old", {"phase": "x"}, expected_version=ANY_VERSION)
        with pytest.raises(Forbidden):
            bob.create_once("old-job/results/t2", {"forged": True})
        bob.create(widget("new"))
        assert op.owner(Widget, "new") == "bob"
        bob.delete(Widget, "new")  # his marker goes with it
        assert op.client.get_children(f"{USERS}/bob") == []
        bob.create(widget("kept"))
        # re-running the set-up (each `boidctl up` does) leaves users' objects theirs
        secure_hosts(zk_hosts, sec.admin, ["widgets"], [sec.users["bob"].digest_id])
        assert op.owner(Widget, "kept") == "bob"
        w = bob.get(Widget, "kept")
        w.spec.size = 3
        bob.update(w)


# -- invariant: randomized sequences of users' operations --------------------------------------
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

ACTORS = ("admin", "alice", "bob")
OPS = st.lists(st.tuples(st.sampled_from(ACTORS), st.sampled_from(["create", "update", "delete", "status", "run"]),
                         st.integers(0, 1), st.integers(1, 50)), min_size=2, max_size=12)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_only_owners_and_the_operator_change_objects(secured, ops):
    """Whatever users do, in any order: an object changes only by its creator or the operator,
    its proven owner is its creator, status and run records are the operator's alone."""
    import uuid

    tag = uuid.uuid4().hex[:6]
    stores = {a: secured.store(a) for a in ACTORS}
    owner: dict[str, str] = {}
    size: dict[str, int] = {}
    try:
        for actor, op, i, n in ops:
            name, s = f"w{i}-{tag}", stores[actor]
            allowed = name in owner and actor in ("admin", owner[name])
            try:
                if op == "create":
                    s.create(widget(name, size=n))
                    ok = name not in owner
                    owner[name], size[name] = actor, n
                elif op == "update":
                    w = s.get(Widget, name)
                    new = n if n != w.spec.size else n + 1000   # a real change (an unchanged one writes nothing)
                    w.spec.size = new
                    s.update(w)
                    ok, size[name] = allowed, new
                elif op == "delete":
                    s.delete(Widget, name)
                    ok = allowed
                    owner.pop(name), size.pop(name)
                elif op == "status":
                    s.update_status(Widget, name, {"phase": str(n)}, expected_version=ANY_VERSION)
                    ok = actor == "admin" and name in owner
                else:
                    ok = s.create_once(f"{name}/results/{n}", {"by": actor}) or True
                    ok = actor == "admin"
            except (Forbidden, NotFound, AlreadyExists):
                ok = None
            assert ok is not False, f"{actor} could {op} {name} (owner {owner.get(name)})"
            if ok is None:
                assert not (op in ("update", "delete") and allowed) and not (op in ("status", "run") and
                                                                           actor == "admin" and name in owner)
            for obj, who in owner.items():
                assert stores["admin"].owner(Widget, obj) == who
                assert stores["bob"].get(Widget, obj).spec.size == size[obj]
    finally:
        for st_ in stores.values():
            st_.close()
