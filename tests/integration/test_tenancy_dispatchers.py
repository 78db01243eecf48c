"""Each protocol's dispatcher has an identity of its own (issue 14), on a real ZooKeeper: the
operator (admin) grants it exactly what it writes -- its protocol's jobs' status and run records
-- and it can write nothing else: not another protocol's records, not a Job's spec, not other
objects' status, not the policy."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.security import ACL, Id, Permissions, make_digest_acl_credential

from boidcluster.adapters.auth import (POLICY, RUN_DIRS, RUNS, USERS, Credentials, dispatcher_credentials, marker_name,
                                       read_grant)
from boidcluster.adapters.store import ANY_VERSION, OBJECTS, STATUS_NODE, Forbidden, Store, Unauthorized
from boidcluster.engine.controller import Controller
from boidcluster.engine.reconciler import Registry
from boidcluster.engine.world import World
from boidcluster.model.meta import CLEANUP_FINALIZER
from boidcluster.model.resources import Job, Protocol
from boidcluster.reconcilers.admission import admit_job, with_job_grants
from fixtures.operator import eventually
from fixtures.tenancy import job, proto



def raw_client(hosts: str, creds: Credentials) -> KazooClient:
    c = KazooClient(hosts=hosts, auth_data=creds.auth_data())
    c.start(timeout=10)
    return c


@pytest.fixture
def granted(secured, tmp_path):
    """Protocols pa and pb (alice's), jobs ja (pa), jb (pb) and bob's refused jb-sneaky (pa); the
    operator's grant controller has run over them. Yields (op, alice, disp_a, disp_b, ids dir, controller)."""
    ids = tmp_path / "dispatcher-identities"
    op, alice, bob = secured.store("admin"), secured.store("alice"), secured.store("bob")
    alice.create(proto("pa"))
    alice.create(proto("pb"))
    alice.create(job("ja", "pa"))
    alice.create(job("jb", "pb"))
    bob.create(job("sneaky", "pa"))          # pa does not list bob: refused, never granted
    registry = with_job_grants(Registry())
    registry.admission(Job)(admit_job)
    world = World(store=op)
    world.settings.extra["dispatcher_identities"] = str(ids)
    ctl = Controller(op, world, registry, workers=2).start()
    stores = [op, alice, bob]
    try:
        ctl.resync()
        eventually(lambda: all(CLEANUP_FINALIZER in op.get(Job, n).metadata.finalizers for n in ("ja", "jb"))
                   and op.get(Job, "sneaky").status is not None)
        disp_a = Store(secured.hosts, credentials=dispatcher_credentials(str(ids), "pa"))
        disp_b = Store(secured.hosts, credentials=dispatcher_credentials(str(ids), "pb"))
        stores += [disp_a, disp_b]
        yield op, alice, disp_a, disp_b, ids, ctl
    finally:
        ctl.stop()
        for s in stores:
            s.close()


def uid(store: Store, name: str) -> str:
    return store.get(Job, name).metadata.uid


def test_the_operator_grants_each_job_to_its_protocols_dispatcher_only(secured, granted):
    op, alice, disp_a, disp_b, ids, _ = granted
    ja, jb, sneaky = uid(op, "ja"), uid(op, "jb"), uid(op, "sneaky")
    assert (ids / "pa" / "password").stat().st_mode & 0o777 == 0o600
    assert disp_a.whoami == "dispatcher.pa" and not disp_a.is_admin
    assert read_grant(op.client, ja) == {"protocol": "pa", "job": "ja"}
    assert read_grant(op.client, sneaky) is None
    assert op.get(Job, "sneaky").status.condition("Admitted").reason == "SubmitterNotAllowed"

    # the honest path: A writes its own job's status and run records
    assert disp_a.create_once(f"{ja}/start", {"at_us": 1})
    assert disp_a.create_many([(f"{ja}/attempts/t1", b"{}"), (f"{ja}/results/t1", b"{}")])
    disp_a.update_status(Job, "ja", {"phase": "Running"}, expected_version=ANY_VERSION)
    assert op.get(Job, "ja").status.phase == "Running"

    # the attacks: A on protocol B's job, on a refused job, on a new run directory
    for path in (f"{jb}/results/t1", f"{jb}/accepted/u000000", f"{sneaky}/results/t1", "forged-uid/results/t1"):
        with pytest.raises(Forbidden, match="user 'dispatcher.pa' may not"):
            disp_a.create_once(path, {"forged": True})
    with pytest.raises(Forbidden):
        disp_a.create_many([(f"{jb}/accepted/u000000", b'{"credited": []}')])
    with pytest.raises(Forbidden):
        disp_a.update_status(Job, "jb", {"phase": "Failed"}, expected_version=ANY_VERSION)
    with pytest.raises(Forbidden):
        disp_a.update_status(Protocol, "pa", {"conditions": []}, expected_version=ANY_VERSION)
    with pytest.raises(Forbidden):
        disp_a.update_status(Job, "sneaky", {"phase": "Running"}, expected_version=ANY_VERSION)
    j = disp_a.get(Job, "ja")          # its own job's spec: not its to change
    j.spec.image = "evil:latest"
    with pytest.raises(Forbidden):
        disp_a.update(j)
    with pytest.raises(Forbidden):
        disp_a.create(job("mine", "pa"))   # no marker directory: it cannot create objects as anyone
    raw = raw_client(secured.hosts, dispatcher_credentials(str(ids), "pa"))
    try:
        with pytest.raises(NoAuthError):
            raw.set(POLICY, json.dumps({"admins": [disp_a.credentials.digest_id]}).encode())
        with pytest.raises(NoAuthError):   # the grant itself is the operator's
            raw.set(f"{RUNS}/{ja}", json.dumps({"protocol": "pa", "job": "jb"}).encode())
        with pytest.raises(NoAuthError):
            raw.set_acls(f"{OBJECTS}/jobs/ja", [ACL(Permissions.ALL, Id("world", "anyone"))])
        with pytest.raises(NoAuthError):
            raw.set_acls(f"{RUNS}/{jb}", [ACL(Permissions.ALL, Id("world", "anyone"))])
        with pytest.raises(NoAuthError):   # another protocol's leader lock and Mesos state
            raw.create("/boid/v1/dispatchers/pb/leader", b"")
        raw.ensure_path("/boid/v1/dispatchers/pa/leader")  # its own
    finally:
        raw.stop()
        raw.close()

    # `auth can-i` says the same, as the dispatcher
    from boidcluster.cli.auth import can_i
    from boidcluster.cli.context import Ctx
    from click.testing import CliRunner
    ctx = Ctx(secured.hosts, 5.0)
    ctx._store = disp_a
    for name, answer in (("ja", "yes"), ("jb", "no"), ("sneaky", "no")):
        r = CliRunner().invoke(can_i, ["update", "jobs", name, "--subresource", "status"], obj=ctx)
        assert r.output.strip() == answer, (name, r.output)

    # a plain user writes no run records, even of her own job, and no job status
    with pytest.raises(Forbidden):
        alice.create_once(f"{ja}/results/t2", {"forged": True})
    with pytest.raises(Forbidden):
        alice.update_status(Job, "ja", {"phase": "Succeeded"}, expected_version=ANY_VERSION)

    # B did nothing wrong: its records are untouched, and the owners are still proven
    assert all(op.list_runs(f"{jb}/{d}") == [] for d in RUN_DIRS) and set(op.list_runs(jb)) == set(RUN_DIRS)
    assert op.owner(Job, "ja") == "alice" and disp_a.owner(Job, "ja") == "alice"
    assert op.owner(Job, "jb") == "alice"


def test_a_forged_dispatcher_entry_proves_nothing(secured, granted):
    """bob puts 'dispatcher.pa:<digest of his own password>' in his job's status ACL (ZooKeeper
    takes any well-formed id) to log in under that name and write the status himself: the
    operator compares the exact registered id, so the job has no proven owner."""
    op, *_ = granted
    bob = secured.users["bob"]
    raw = raw_client(secured.hosts, bob)
    fake = make_digest_acl_credential("dispatcher.pa", "bobs-own-password")
    try:
        data = job("forged", "pa").to_dict(with_status=False)
        data["metadata"].update(uid="u-forged", generation=1, creationTimestamp="2026-01-01T00:00:00Z")
        txn = raw.transaction()
        txn.create(f"{OBJECTS}/jobs/forged", json.dumps(data).encode(),
                   acl=[ACL(Permissions.ALL, Id("digest", bob.digest_id)), *op.policy.system_acl()])
        txn.create(f"{OBJECTS}/jobs/forged/{STATUS_NODE}", b"null",
                   acl=[*op.policy.system_acl(), ACL(Permissions.WRITE, Id("digest", fake))])
        txn.create(f"{USERS}/bob/{marker_name('jobs', 'forged', 'u-forged')}", b"")
        assert not any(isinstance(r, Exception) for r in txn.commit())
    finally:
        raw.stop()
        raw.close()
    assert op.owner(Job, "forged") is None


def test_wrong_dispatcher_password_is_a_clear_error(secured, granted):
    *_, ids, _ = granted
    good = dispatcher_credentials(str(ids), "pa")
    bad = Credentials(good.user, "not-" + good.password)
    with pytest.raises(Unauthorized) as e:
        Store(secured.hosts, credentials=bad)
    assert "authentication as user 'dispatcher.pa' failed" in str(e.value)
    assert good.password not in str(e.value) and bad.password not in str(e.value)


# -- the invariant, over random sequences of writes by every identity -----------------------------
ACTORS = ("admin", "alice", "bob", "dispatcher.pa", "dispatcher.pb")
WRITES = ("status", "record", "spec", "policy", "run-dir")


def allowed(actor: str, write: str, protocol: str) -> bool:
    """Who may write what: admins anything; a job's protocol's dispatcher its status and run
    records; its owner (alice) its spec; nobody else anything."""
    if actor == "admin":
        return True
    if actor == f"dispatcher.{protocol}":
        return write in ("status", "record")
    return actor == "alice" and write == "spec"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(ACTORS), st.sampled_from(WRITES), st.sampled_from(("ja", "jb"))),
                min_size=1, max_size=12))
def test_only_the_granted_dispatcher_and_admins_write_a_jobs_status_and_records(secured, granted, steps):
    op, alice, disp_a, disp_b, *_ = granted
    bob = secured.store("bob")
    stores = {"admin": op, "alice": alice, "bob": bob, "dispatcher.pa": disp_a, "dispatcher.pb": disp_b}
    try:
        for i, (actor, write, name) in enumerate(steps):
            s, j = stores[actor], op.get(Job, name)
            protocol = j.spec.protocol
            try:
                if write == "status":
                    s.update_status(Job, name, {"phase": "Running"}, expected_version=ANY_VERSION)
                elif write == "record":
                    s.create_many([(f"{j.metadata.uid}/results/h{i}-{actor}", b"{}")], exist_ok=True)
                elif write == "spec":
                    mine = s.get(Job, name)
                    mine.spec.retries = (mine.spec.retries + 1) % 5
                    s.update(mine)
                elif write == "policy":
                    s.client.set(POLICY, op.policy.to_json())
                else:
                    s.create_once(f"new-{i}-{actor}/start", {"at_us": 1})
                ok = True
            except (Forbidden, NoAuthError):
                ok = False
            assert ok == allowed(actor, write, protocol), (actor, write, name)
            # the grant and the owner survive whatever was tried
            assert read_grant(op.client, j.metadata.uid) == {"protocol": protocol, "job": name}
            assert op.owner(Job, name) == "alice"
    finally:
        bob.close()


# -- the operator's own identity (the embedded cluster) ------------------------------------------
def test_the_embedded_operator_has_an_identity_of_its_own(zk_hosts, tmp_path):
    """`boidctl up` makes operator@local for the operator process and admin@local for the human,
    both admins. A cluster secured before (admin only) lets the new operator identity converge
    what exists: it joins the ACL of every znode the admins had."""
    from boidcluster.adapters.auth import secure_hosts
    from boidcluster.adapters.store import kind_dir
    from boidcluster.cli.auth import secure_embedded
    from boidcluster.cli.kubeconfig import Config, write_private
    from boidcluster.model.kinds import KINDS

    home = tmp_path / "home"
    admin = Credentials.generate("admin")
    write_private(home / "credentials" / "admin", admin.password + "\n")
    secure_hosts(zk_hosts, admin, [kind_dir(k) for k in KINDS.values()])   # as an older `boidctl up` did
    with Store(zk_hosts, credentials=admin) as old:
        old.create(proto("old"))
        assert old.create_once("u-old/attempts/t1", {"n": 0})

    secure_embedded(home, zk_hosts, ("alice",))
    config = Config.load(home / "config")
    op_creds = config.context("operator@local").credentials
    assert op_creds.user == "operator" and op_creds.password != admin.password
    assert config.current == "admin@local" and config.context("admin@local").credentials.user == "admin"
    with Store(zk_hosts, credentials=op_creds) as op:
        assert op.is_admin and op.whoami == "operator"
        op.update_status(Protocol, "old", {"conditions": []}, expected_version=ANY_VERSION)
        assert op.create_once("u-old/attempts/t2", {"n": 1})     # in a run directory made before
        assert op.owner(Protocol, "old") == "admin"
    secure_embedded(home, zk_hosts, ("alice",))                   # idempotent: same passwords
    assert Config.load(home / "config").context("operator@local").credentials.password == op_creds.password


def test_the_operator_deletes_a_finished_job_after_its_ttl_as_the_dispatcher_may_not(secured, granted):
    from datetime import datetime, timedelta, timezone

    op, alice, disp_a, *_, ctl = granted
    j = job("short", "pa")
    j.spec.ttl_seconds_after_finished = 0
    alice.create(j)
    eventually(lambda: CLEANUP_FINALIZER in op.get(Job, "short").metadata.finalizers)
    with pytest.raises(Forbidden):          # the dispatcher's own attempt (jobs/reconciler.py) is refused
        disp_a.delete(Job, "short")
    done = (datetime.now(timezone.utc) - timedelta(seconds=5)).isoformat()
    disp_a.update_status(Job, "short", {"phase": "Succeeded", "completionTime": done}, expected_version=ANY_VERSION)
    ctl.resync()   # a status write is no event for the operator: its periodic resync sees the end
    gone = eventually(lambda: op.get(Job, "short").metadata.deletion_timestamp is not None)
    assert gone
    assert op.get(Job, "ja").metadata.deletion_timestamp is None   # not finished: kept
