"""Reading the registry at scale: one scan of an owner's protocol rows serves many passes, on the
session's real Antelope node (and a real ZooKeeper for the reconciler tests).

What a user relies on: many protocols reach Ready without one chain read each, yet what the
owner just did on chain (register, accept, update terms) is never reported missing because of an
old scan, and what the operator itself wrote is never read back from before its write.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from boidcluster.adapters.chain import ChainAssertion
from boidcluster.adapters.chain.blocking import BlockingChain
from boidcluster.adapters.chain.boid import BoidChain
from boidcluster.model.resources import Protocol
from boidcluster.model.types import Asset
from boidcluster.reconcilers import protocol as protocol_reconciler
from fixtures.operator import cond, eventually, protocol_obj as protocol

pytestmark = pytest.mark.usefixtures("contracts_deployed")


@pytest.fixture
def op_chain(chain_world):
    chain = BlockingChain.open(chain_world.url, chain_world.operator_client().keys)
    yield chain
    chain.close()


def test_one_scan_serves_every_caller_until_our_own_write(chain_world, actors, op_chain):
    names = ["sa", "sb", "sc"]
    for n in names:
        chain_world.fund_protocol(protocol(n, actors), "5.0000 BOID")
    before = op_chain.scans
    with ThreadPoolExecutor(8) as pool:  # callers at the same time share one read
        rows = list(pool.map(lambda n: op_chain.recent_protocol_row(actors.owner, n, 3600), names * 8))
    assert {r.name for r in rows} == set(names) and all(r is not None for r in rows)
    assert op_chain.scans == before + 1
    for r in rows:  # the node's JSON of a row reads as our own decoder reads its binary form
        assert r == op_chain.protocol_row(actors.owner, r.name)
    assert op_chain.recent_protocol_row(actors.owner, "nosuch", 3600) is None
    assert op_chain.scans == before + 1

    # our own write: the next read is a new scan that shows it, whatever max_age says
    op_chain.reserve(actors.owner, "sb", Asset.parse("2.0000 BOID"))
    with ThreadPoolExecutor(8) as pool:
        rows = list(pool.map(lambda n: op_chain.recent_protocol_row(actors.owner, n, 3600), ["sb"] * 16))
    assert {str(r.reserved) for r in rows} == {"2.0000 BOID"}
    assert op_chain.scans == before + 2


def test_a_failed_write_of_ours_also_makes_the_next_read_fresh(chain_world, actors, op_chain):
    """A push that fails may still have applied (a timeout): the scan from before is dropped."""
    chain_world.fund_protocol(protocol("fw", actors), "1.0000 BOID")
    op_chain.recent_protocol_row(actors.owner, "fw", 3600)
    before = op_chain.scans
    with pytest.raises(Exception):
        op_chain.reserve(actors.owner, "fw", Asset.parse("9.0000 BOID"))  # more than the escrow: refused
    op_chain.recent_protocol_row(actors.owner, "fw", 3600)
    assert op_chain.scans == before + 1


def test_others_writes_show_after_max_age(chain_world, actors, op_chain):
    """Someone else's write (the owner's deposit) is seen by a fresh read at once and by the shared
    scan once it is older than max_age."""
    p = protocol("ow", actors)
    chain_world.fund_protocol(p, "1.0000 BOID")
    assert str(op_chain.recent_protocol_row(actors.owner, "ow", 3600).balance) == "1.0000 BOID"

    async def deposit() -> None:
        async with chain_world.client() as rpc:
            await BoidChain(rpc).deposit(actors.owner, actors.owner, "ow", Asset.parse("2.0000 BOID"))
    asyncio.run(deposit())
    assert str(op_chain.protocol_row(actors.owner, "ow").balance) == "3.0000 BOID"
    assert str(op_chain.recent_protocol_row(actors.owner, "ow", 3600).balance) == "1.0000 BOID"  # the scan's
    assert str(op_chain.recent_protocol_row(actors.owner, "ow", 0).balance) == "3.0000 BOID"


def test_a_protocol_the_owner_registers_after_a_scan_is_seen_on_the_next_pass(
        world_factory, actors, chain_world, monkeypatch):
    """Scans never expire here: the second protocol's registration is not in the scan made for the
    first one, and the pass still sees it (anything short of Ready is read again, fresh)."""
    monkeypatch.setattr(protocol_reconciler, "ROW_MAX_AGE", 3600.0)
    op, store, chain = world_factory()
    store.create(protocol("first", actors))
    chain_world.fund_protocol(store.get(Protocol, "first"), "1.0000 BOID")
    op.enqueue("Protocol", "first")
    eventually(lambda: cond(store.get(Protocol, "first"), "Ready") == "True")
    scans = chain.scans

    store.create(protocol("second", actors))
    p = eventually(lambda: (o := store.get(Protocol, "second")) and cond(o, "Registered") == "False" and o)
    assert p.status.condition("Registered").reason == "NotRegistered"
    chain_world.fund_protocol(p, "1.0000 BOID", accept=False)
    op.enqueue("Protocol", "second")
    p = eventually(lambda: (o := store.get(Protocol, "second")) and
                   o.status.condition("Registered").reason == "NotAccepted" and o)
    chain_world.fund_protocol(p)  # the researcher accepts
    op.enqueue("Protocol", "second")
    p = eventually(lambda: (o := store.get(Protocol, "second")) and cond(o, "Ready") == "True" and o)
    assert str(p.status.escrow) == "1.0000 BOID"
    assert chain.scans == scans  # none of this needed a new scan: the misses were read one by one


OPS = st.lists(st.tuples(st.sampled_from(["reserve", "deposit", "read"]), st.sampled_from(["ra", "rb"]),
                         st.integers(0, 30_000)), min_size=1, max_size=10)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_a_scan_is_never_older_than_our_last_write(chain_world, actors, op_chain, ops):
    """Invariant over random sequences of our writes (reserve, accepted or refused), others' writes
    (the owner's deposits) and reads, scans never expiring: a read after our write comes from a
    scan made after it; with no write of ours since the last scan, it is that scan's row."""
    for n in ("ra", "rb"):
        if op_chain.protocol_row(actors.owner, n) is None:
            chain_world.fund_protocol(protocol(n, actors), "1.0000 BOID")
    # examples share the chain: start from whatever scan the last example left (others' writes since
    # then show only after max_age, by design)
    snapshot, dirty = {n: op_chain.recent_protocol_row(actors.owner, n, 3600) for n in ("ra", "rb")}, False

    async def deposit(name: str, amount: Asset) -> None:
        async with chain_world.client() as rpc:
            await BoidChain(rpc).deposit(actors.owner, actors.owner, name, amount)

    for op, name, amount in ops:
        quantity = Asset(amount, Asset.parse("0.0000 BOID").symbol)
        if op == "reserve":
            try:
                op_chain.reserve(actors.owner, name, quantity)
            except ChainAssertion:
                pass  # more than the free escrow: refused, and still counts as a write of ours
            dirty = True
        elif op == "deposit" and amount > 0:
            asyncio.run(deposit(name, quantity))
        else:
            before = op_chain.scans
            got = {n: op_chain.recent_protocol_row(actors.owner, n, 3600) for n in ("ra", "rb")}
            if dirty:
                # our write dropped every scan from before it: this read made a new one (one scan
                # serves both rows), equal to a fresh read of each row
                assert op_chain.scans == before + 1
                assert got == {n: op_chain.protocol_row(actors.owner, n) for n in ("ra", "rb")}
                snapshot, dirty = got, False
            else:
                assert got == snapshot and op_chain.scans == before
