"""The operator under faults: killed between a chain action and its status write, and ZooKeeper
restarted underneath it. Real ZooKeeper, real chain node, a real operator process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from boidcluster.adapters.chain.blocking import BlockingChain
from boidcluster.adapters.local.zookeeper import LocalZooKeeper
from boidcluster.adapters.storage import Storage
from boidcluster.adapters.store import Store
from boidcluster.engine.operator import Operator
from boidcluster.engine.world import World
from boidcluster.model.resources import Protocol
from boidcluster.model.types import Asset
from boidcluster.reconcilers import registry
from boidcluster.reconcilers.ledger import ChainLedger
from fixtures.operator import cond, eventually, protocol_obj

pytestmark = pytest.mark.usefixtures("contracts_deployed")
HERE = Path(__file__).parent


class CountingChain:
    """Counts chain writes made through it (reads pass through)."""

    WRITES = ("payout", "register", "unregister", "record_batch")

    def __init__(self, chain):
        self._chain, self.writes = chain, []

    def __getattr__(self, name):
        attr = getattr(self._chain, name)
        if name not in self.WRITES:
            return attr

        def counted(*a, **kw):
            self.writes.append(name)
            return attr(*a, **kw)

        return counted


def test_killed_between_chain_action_and_status_write_converges_without_repeating(
        zk_hosts, chain_world, actors, tmp_path):
    keys = tmp_path / "operator-keys.json"
    chain_world.operator_client().keys.write(keys)
    storage = f"file://{tmp_path / 'storage'}"
    store = Store(zk_hosts)
    store.create(protocol_obj("crash", actors))
    w = actors.workers[0]
    row = chain_world.fund_protocol(store.get(Protocol, "crash"), "10.0000 BOID")
    chain = BlockingChain.open(chain_world.url, chain_world.operator_client().keys)
    chain.register("worker", w, actors.owner, "crash")
    ChainLedger(chain, store=store).record_units(store.get(Protocol, "crash"), SimpleNamespace(
        metadata=SimpleNamespace(uid="j")), [("u0", w, 2 * 3_600_000_000)])  # 2 BOID owed
    proc = subprocess.run([sys.executable, str(HERE / "crash_operator.py"), zk_hosts, chain_world.url, str(keys), storage],
                          timeout=60, capture_output=True)
    assert proc.returncode == -9  # it died right after paying on chain
    p = store.get(Protocol, "crash")
    assert p.status is None or not p.status.paid  # the status write never happened
    assert chain.acct_row(row.id, w).paid == Asset.parse("2.0000 BOID")

    counting = CountingChain(chain)
    world = World(store=store, storage=Storage(storage), chain=counting)
    op = Operator(store, world, registry, workers=1).start()
    try:
        got = eventually(lambda: (o := store.get(Protocol, "crash")) and cond(o, "Ready") == "True" and o, timeout=30)
        assert got.status.paid == {w: Asset.parse("2.0000 BOID")}  # read back from the chain's rows
        assert counting.writes == []  # nothing owed any more: no second payout
        assert chain.fund_balance(w) == Asset.parse("2.0000 BOID")
    finally:
        op.stop()
        chain.close()
        store.close()


def test_operator_recovers_from_a_zookeeper_restart(chain_world, actors, tmp_path):
    zk = LocalZooKeeper(tmp_path / "zk", fsync=False, die_with_parent=True).start()
    chain = BlockingChain.open(chain_world.url, chain_world.operator_client().keys)
    store = Store(zk.hosts, session_timeout=30)
    op = Operator(store, World(store=store, storage=Storage(f"file://{tmp_path / 's'}"), chain=chain),
                  registry, workers=2).start()
    user = None
    try:
        store.create(protocol_obj("zkr", actors))
        chain_world.fund_protocol(store.get(Protocol, "zkr"), "1.0000 BOID")
        eventually(lambda: cond(store.get(Protocol, "zkr"), "Ready") == "True", timeout=30)
        zk.restart()
        user = Store(zk.hosts)
        p = user.get(Protocol, "zkr")
        p.spec.title = "After the restart"
        user.update(p)
        got = eventually(lambda: (o := user.get(Protocol, "zkr")).status.observed_generation == 2 and o, timeout=40)
        assert got.status.condition("Registered").reason == "TermsDiffer"  # seen after the restart
    finally:
        op.stop()
        if user:
            user.close()
        store.close()
        chain.close()
        zk.close()
