"""Contributed time of real jobs onto the real chain node, per contributor (issue 12 items 2, 3, 4).

A real operator (jobs, Protocol and Contributor reconcilers), the local backend running units as
host subprocesses, the ledger sending batches to the session's node, `boidctl report` comparing:

- one slot whose account is not registered holds back only its own time: everyone else's is on
  chain, the Job says whose time cannot be recorded, `report` exits 1 naming it; once the account
  is registered its time is recorded and `report` agrees;
- a deleted job's time stays in the report's ZooKeeper side (from the ledger's journal);
- the dispatcher is credited the time it was busy (running jobs' intervals merged), never more
  than the wall time, however many jobs run at once.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from boidcluster.adapters.chain import ContributorNotRegistered
from boidcluster.adapters.chain.blocking import BlockingChain
from boidcluster.adapters.local.backend import LocalBackend
from boidcluster.adapters.storage import Storage
from boidcluster.adapters.store import Store
from boidcluster.cli.main import cli
from boidcluster.engine.operator import Operator
from boidcluster.engine.world import World
from boidcluster.model.resources import Contributor, Job, Protocol
from boidcluster.reconcilers import registry
from boidcluster.reconcilers.jobs import Dispatcher
from boidcluster.reconcilers.ledger import ChainLedger
from fixtures.operator import cond, eventually, protocol_obj

pytestmark = [pytest.mark.usefixtures("contracts_deployed"), pytest.mark.chain]


def contributor(name: str, account: str, researcher: str, role: str = "worker") -> Contributor:
    return Contributor.model_validate({
        "apiVersion": "cluster.boid.com/v1alpha1", "kind": "Contributor", "metadata": {"name": name},
        "spec": {"account": account, "role": role, "researchers": [researcher]}})


def job(name: str, protocol: str, count: int, sleep: float = 0.0) -> Job:
    return Job.model_validate({"apiVersion": "cluster.boid.com/v1alpha1", "kind": "Job", "metadata": {"name": name},
                               "spec": {"protocol": protocol, "image": "python:3.11-slim", "workUnits": {"count": count},
                                        "command": ["sh", "-c", f'sleep {sleep}; echo "$BOID_UNIT_INDEX" > "$BOID_OUTPUT_DIR/o"']}})


@pytest.fixture
def trio(chain_world):
    async def make():
        async with chain_world.client() as rpc:
            return await chain_world.actors(rpc, workers=3)
    return asyncio.run(make())


@pytest.fixture
def site(zk_hosts, chain_world, tmp_path, trio):
    """An operator with three slots (one per worker account of `trio`) and a chain ledger that
    credits `trio.dispatcher`; the protocol `rec` registered and funded."""
    made = []

    def start(protocol: str = "rec", contributors: int = 2, dispatcher: bool = False):
        store = Store(zk_hosts)
        root = tmp_path / "storage"
        root.mkdir(exist_ok=True)
        chain = BlockingChain.open(chain_world.url, chain_world.operator_client().keys, timeout=2.0, call_timeout=30)
        backend = LocalBackend(root, list(trio.workers), kill_grace=0.2)
        world = World(store=store, storage=Storage(f"file://{root}"), chain=chain, backend=backend,
                      dispatcher=Dispatcher(backend, retry_backoff=0.05, poll=0.05, kill_grace=1.0),
                      ledger=ChainLedger(chain, dispatcher_account=trio.dispatcher if dispatcher else None,
                                         store=store))
        op = Operator(store, world, registry, workers=2).start()
        made.append((op, backend, store, chain))
        store.create(protocol_obj(protocol, trio, fund="1000.0000 BOID"))
        chain_world.fund_protocol(store.get(Protocol, protocol), "1000.0000 BOID")
        for i, w in enumerate(trio.workers[:contributors]):
            store.create(contributor(f"{protocol}-w{i}", w, trio.researcher))
        if dispatcher:
            store.create(contributor(f"{protocol}-d", trio.dispatcher, trio.researcher, "dispatcher"))
        op.enqueue("Protocol", protocol)
        eventually(lambda: cond(store.get(Protocol, protocol), "Ready") == "True", timeout=60)
        for i in range(contributors):
            eventually(lambda i=i: cond(store.get(Contributor, f"{protocol}-w{i}"), "Registered") == "True",
                       timeout=60)
        if dispatcher:
            eventually(lambda: cond(store.get(Contributor, f"{protocol}-d"), "Registered") == "True", timeout=60)
        return op, store, chain

    yield start
    for op, backend, store, chain in made:
        op.stop()
        backend.close()
        chain.close()
        store.close()


def report(zk_hosts, chain_world, protocol: str):
    return CliRunner().invoke(cli, ["--zk", zk_hosts, "report", protocol, "--chain-url", chain_world.url])


def finished(store, name: str) -> Job:
    def done():
        j = store.get(Job, name)
        return j if j.status and j.status.phase in ("Succeeded", "Failed") else None
    j = eventually(done, timeout=120)
    assert j.status.phase == "Succeeded", j.status
    return j


def test_an_unregistered_slot_holds_back_only_its_own_time(site, trio, zk_hosts, chain_world):
    op, store, chain = site(contributors=2)
    w0, w1, w2 = trio.workers
    store.create(job("mixed", "rec", 12))
    finished(store, "mixed")

    def held():
        c = store.get(Job, "mixed").status.condition("Recorded")
        return c if c and c.reason == "ContributorNotRegistered" else None
    c = eventually(held, timeout=60)
    assert c.status == "False" and w2 in c.message and w0 not in c.message and w1 not in c.message, c
    contributed = {a.account: a.microseconds for a in store.get(Job, "mixed").status.contributors}
    assert w2 in contributed, contributed   # the unregistered slot did run units
    row = chain.require_protocol(trio.owner, store.get(Protocol, "rec").chain_name)
    # everyone else's time is on chain, exactly
    eventually(lambda: all((r := chain.contributor_row("worker", row.id, w)) and r.total_time == contributed[w]
                           for w in (w0, w1) if w in contributed), timeout=60)
    assert chain.contributor_row("worker", row.id, w2) is None
    r = report(zk_hosts, chain_world, "rec")
    assert r.exit_code == 1 and f"{w2}: " in r.output and "not on chain yet" in r.output, r.output
    assert f"{w2} is not registered as a worker of this protocol on chain" in r.output, r.output
    assert f"{w0}: " not in r.output.split("difference(s):")[1], r.output

    # once the account is registered its held time is recorded, and the report agrees
    store.create(contributor("rec-w2", w2, trio.researcher))
    eventually(lambda: cond(store.get(Contributor, "rec-w2"), "Registered") == "True", timeout=60)
    op.enqueue("Job", "mixed")
    eventually(lambda: (r := chain.contributor_row("worker", row.id, w2)) and r.total_time == contributed[w2],
               timeout=60)
    eventually(lambda: cond(store.get(Job, "mixed"), "Recorded") == "True", timeout=60)
    r = eventually(lambda: (r := report(zk_hosts, chain_world, "rec")).exit_code == 0 and r, timeout=30)
    assert "ZooKeeper records and the chain agree." in r.output


def test_the_ledger_never_journals_a_batch_the_chain_would_refuse(site, trio):
    """A batch with an unregistered account would be refused whole, and since the chain's batch
    numbers are sent in order, a journaled one would block every later batch of the protocol."""
    op, store, chain = site(contributors=1)
    w0, _, w2 = trio.workers
    p = store.get(Protocol, "rec")
    ledger = ChainLedger(chain, dispatcher_account=trio.dispatcher, store=store)   # dispatcher not registered
    uid = SimpleNamespace(metadata=SimpleNamespace(uid="job-uid-n"))
    with pytest.raises(ContributorNotRegistered) as e:
        ledger.record_dispatch(p, uid, 1_000_000, 2_000_000)
    assert (e.value.role, e.value.account) == ("dispatcher", trio.dispatcher)
    with pytest.raises(ContributorNotRegistered) as e:
        ledger.record_units(p, uid, [("u0", w0, 5), ("u0", w2, 7)])
    assert (e.value.role, e.value.account) == ("worker", w2)
    assert ledger.pending(p) == 0   # nothing journaled
    assert ledger.record_units(p, uid, [("u0", w0, 5)]).recorded == 1   # the others are not blocked
    row = chain.require_protocol(trio.owner, p.chain_name)
    assert chain.contributor_row("worker", row.id, w0).total_time == 5
    assert ledger.unregistered(p, [w0, w2]) == {w2}


def _rows(output: str) -> dict[str, tuple[str, str]]:
    """CONTRIBUTOR -> (ZOOKEEPER s, CHAIN TOTAL s) from the report's table."""
    out = {}
    for line in output.splitlines():
        cells = line.split()
        if len(cells) >= 4 and cells[1] in ("worker", "dispatcher"):
            out[cells[0]] = (cells[2], cells[3])
    return out


def test_report_still_agrees_after_a_finished_job_is_deleted(site, trio, zk_hosts, chain_world):
    op, store, chain = site(contributors=3, dispatcher=True)
    store.create(job("gone", "rec", 6))
    store.create(job("kept", "rec", 3))
    uid = finished(store, "gone").metadata.uid
    finished(store, "kept")
    before = eventually(lambda: (r := report(zk_hosts, chain_world, "rec")).exit_code == 0 and r, timeout=60).output
    rows = _rows(before)
    assert any(float(zk) > 0 for w, (zk, _) in rows.items() if w in trio.workers), before
    assert float(rows[trio.dispatcher][1]) > 0, before   # the dispatcher's time is on chain
    store.delete(Job, "gone")
    eventually(lambda: not store.client.exists(f"/boid/v1/runs/{uid}") and
               "gone" not in [j.name for j in store.list(Job)], timeout=60)
    after = report(zk_hosts, chain_world, "rec")
    assert after.exit_code == 0, after.output
    assert "ZooKeeper records and the chain agree." in after.output
    assert _rows(after.output) == rows, (before, after.output)   # the deleted job's time still counts


def test_the_dispatcher_is_credited_its_busy_time_never_more_than_the_wall_time(site, trio, zk_hosts, chain_world):
    """Issue 12 item 2: jobs running at once share the dispatcher's time (each instant divided by
    the jobs running then), so its credit is the union of the jobs' intervals, <= the wall time."""
    from boidcluster.reconcilers.jobs.records import JobRecords
    op, store, chain = site(contributors=3, dispatcher=True)
    names = [f"c{i}" for i in range(8)]
    for n in names:
        store.create(job(n, "rec", 3, sleep=0.3))
    intervals = []
    for n in names:
        uid = finished(store, n).metadata.uid
        r = eventually(lambda uid=uid: (r := JobRecords.load(store, uid)).summary and r, timeout=60)
        intervals.append((r.summary.start_us, r.summary.final.at_us))
    wall = max(e for _, e in intervals) - min(s for s, _ in intervals)
    summed = sum(e - s for s, e in intervals)
    assert summed > 1.5 * wall, (summed, wall)   # the jobs did run at once (the old credit: summed)
    union, cur = 0, None
    for s, e in sorted(intervals):
        if cur is None or s > cur[1]:
            union += (cur[1] - cur[0]) if cur else 0
            cur = [s, e]
        else:
            cur[1] = max(cur[1], e)
    union += cur[1] - cur[0]
    row = chain.require_protocol(trio.owner, store.get(Protocol, "rec").chain_name)
    credited = eventually(lambda: (d := chain.contributor_row("dispatcher", row.id, trio.dispatcher)) and d.total_time,
                          timeout=60)
    assert credited <= union <= wall, (credited, union, wall)
    assert credited >= union - len(names), (credited, union)   # every busy µs credited (rounding: < 1 µs a job)
    r = report(zk_hosts, chain_world, "rec")
    assert r.exit_code == 0 and "ZooKeeper records and the chain agree." in r.output, r.output
