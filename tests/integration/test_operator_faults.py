"""The operator under faults: killed between a chain action and its status write, and ZooKeeper
restarted underneath it. Real ZooKeeper, real chain node, a real operator process."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from boidcluster.adapters.chain.blocking import BlockingChain
from boidcluster.adapters.local.zookeeper import LocalZooKeeper
from boidcluster.adapters.storage import Storage
from boidcluster.adapters.store import Store
from boidcluster.engine.operator import Operator
from boidcluster.engine.world import World
from boidcluster.model.resources import Protocol
from boidcluster.reconcilers import registry
from fixtures.operator import cond, eventually, protocol_obj

pytestmark = pytest.mark.usefixtures("contracts_deployed")
HERE = Path(__file__).parent


class CountingChain:
    """Counts chain writes made through it (reads pass through)."""

    WRITES = ("put_protocol", "delete_protocol", "register_worker", "unregister_worker")

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
    proc = subprocess.run([sys.executable, str(HERE / "crash_operator.py"), zk_hosts, chain_world.url, str(keys), storage],
                          timeout=60, capture_output=True)
    assert proc.returncode == -9  # it died right after registering on chain
    p = store.get(Protocol, "crash")
    assert p.status is None or cond(p, "Registered") != "True"  # the status write never happened

    chain = BlockingChain.open(chain_world.url, chain_world.operator_client().keys)
    counting = CountingChain(chain)
    world = World(store=store, storage=Storage(storage), chain=counting)
    op = Operator(store, world, registry, workers=1).start()
    try:
        eventually(lambda: cond(store.get(Protocol, "crash"), "Ready") == "True", timeout=30)
        assert counting.writes == []  # the row was already right: no second chain action
        assert chain.protocol_row(actors.owner, actors.researcher).title == "Test protocol"
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
        eventually(lambda: cond(store.get(Protocol, "zkr"), "Ready") == "True", timeout=30)
        zk.restart()
        user = Store(zk.hosts)
        p = user.get(Protocol, "zkr")
        p.spec.title = "After the restart"
        user.update(p)
        eventually(lambda: chain.protocol_row(actors.owner, actors.researcher).title == "After the restart",
                   timeout=40)
        eventually(lambda: (o := user.get(Protocol, "zkr")).status.observed_generation == 2, timeout=20)
    finally:
        op.stop()
        if user:
            user.close()
        store.close()
        chain.close()
        zk.close()
