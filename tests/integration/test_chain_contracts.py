"""Every clusterjobs/clusterreg action on the real node: happy path, wrong signer, bad arguments
(with the contract's message), exact payout arithmetic, fund conservation, idempotent recording.

Operator calls go through BoidChain with the least-privilege key only (boidoperator@operate and the
`boidop` permissions owners and funds delegate); wrong-signer cases use the full demo key ring.
"""

from __future__ import annotations

import random

import pytest

from boidcluster.adapters.chain.boid import (
    H,
    BoidChain,
    ChainAuth,
    ContributorRow,
    ProtocolRow,
    UnitTime,
    payment,
    unit_id,
)
from boidcluster.adapters.chain.rpc import ChainAssertion, ChainError, MissingAuthority
from boidcluster.model.types import Asset

pytestmark = [pytest.mark.chain, pytest.mark.anyio, pytest.mark.usefixtures("contracts_deployed")]

JOBS, REG, TOKEN = "clusterjobs", "clusterreg", "eosio.token"


def boid(text: str) -> Asset:
    return Asset.parse(text)


def protocol(actors, fund="1000.0000 BOID", worker="1.2345 BOID", dispatcher="0.5000 BOID", **kw) -> ProtocolRow:
    base = dict(
        title="Folding proteins at home", owner=actors.owner, researcher=actors.researcher,
        datadir="/boid/fold", fundaccount=actors.fund, fund=boid(fund), tokencontract=TOKEN,
        worker_pay_rate=boid(worker), dispatcher_pay_rate=boid(dispatcher), funded=boid(fund),
    )
    base.update(kw)
    return ProtocolRow(**base)


def add_data(row: ProtocolRow) -> dict:
    return {
        "title": row.title, "owner": row.owner, "researcher": row.researcher, "datadir": row.datadir,
        "fundaccount": row.fundaccount, "fund": row.fund, "tokencontract": row.tokencontract,
        "dispatcher_pay_rate": row.dispatcher_pay_rate, "worker_pay_rate": row.worker_pay_rate,
    }


@pytest.fixture
async def world(chain_world):
    """Fresh actors, a full-key client (`rpc`) and a least-privilege BoidChain (`op`)."""
    async with chain_world.client() as rpc:
        actors = await chain_world.actors(rpc, workers=2)
        async with chain_world.operator_client() as op_rpc:
            yield actors, rpc, BoidChain(op_rpc)


async def registered(world, **kw):
    actors, rpc, op = world
    row = protocol(actors, **kw)
    assert await op.put_protocol(row) == "created"
    for w in actors.workers:
        assert await op.register_worker(w, actors.researcher)
    assert await op.register_dispatcher(actors.dispatcher, actors.researcher)
    return row


async def balance(rpc, account) -> Asset:
    return await BoidChain(rpc).fund_balance(account)


# --- connection actions -------------------------------------------------------------------------


async def test_connections_made_by_bootstrap(chain_world):
    async with chain_world.client() as rpc:
        assert await rpc.get_row(JOBS, JOBS, "reg", 0) == {"registry_contract": REG, "operator": "boidoperator"}
        assert await rpc.get_row(REG, REG, "config", 0) == {"jobs_contract": JOBS}
        # re-connecting with the same values is harmless
        await rpc.push_action(JOBS, "conntoreg", {"registry_contract": REG, "operator": "boidoperator"}, f"{JOBS}@active")
        await rpc.push_action(REG, "conntojobs", {"jobs_contract": JOBS}, f"{REG}@active")


async def test_connections_need_the_contract_and_real_accounts(chain_world):
    async with chain_world.client() as rpc:
        (outsider,) = await chain_world.new_accounts(rpc, "cx")
        with pytest.raises(MissingAuthority):
            await rpc.push_action(JOBS, "conntoreg", {"registry_contract": REG, "operator": outsider}, f"{outsider}@active")
        with pytest.raises(MissingAuthority):
            await rpc.push_action(REG, "conntojobs", {"jobs_contract": outsider}, f"{outsider}@active")
        with pytest.raises(ChainAssertion, match="registry contract account does not exist"):
            await rpc.push_action(JOBS, "conntoreg", {"registry_contract": "nosuchacct1", "operator": "boidoperator"}, f"{JOBS}@active")
        with pytest.raises(ChainAssertion, match="operator account does not exist"):
            await rpc.push_action(JOBS, "conntoreg", {"registry_contract": REG, "operator": "nosuchacct1"}, f"{JOBS}@active")
        with pytest.raises(ChainAssertion, match="jobs contract account does not exist"):
            await rpc.push_action(REG, "conntojobs", {"jobs_contract": "nosuchacct1"}, f"{REG}@active")


# --- protocols ----------------------------------------------------------------------------------


async def test_put_protocol_creates_updates_and_keeps_the_fund(world):
    actors, rpc, op = world
    row = protocol(actors)
    assert await op.protocol_row(actors.owner, actors.researcher) is None
    assert await op.put_protocol(row) == "created"
    assert await op.protocol_row(actors.owner, actors.researcher) == row
    assert await op.put_protocol(row) == "unchanged"
    changed = protocol(actors, title="Folding, v2 — ünïcode", worker="2.0000 BOID", fund="1.0000 BOID", datadir="/boid/v2")
    assert await op.put_protocol(changed) == "updated"
    have = await op.protocol_row(actors.owner, actors.researcher)
    assert have.title == changed.title and have.worker_pay_rate == boid("2.0000 BOID")
    assert have.fund == row.fund  # updprotocol keeps the remaining fund
    assert await op.delete_protocol(actors.owner, actors.researcher) is True
    assert await op.protocol_row(actors.owner, actors.researcher) is None
    assert await op.delete_protocol(actors.owner, actors.researcher) is False


async def test_protocol_actions_need_the_owner(world):
    actors, rpc, op = world
    row = protocol(actors)
    with pytest.raises(MissingAuthority):
        await rpc.push_action(REG, "addprotocol", add_data(row), f"{actors.outsider}@active")
    with pytest.raises(MissingAuthority):  # the researcher is not the owner
        await rpc.push_action(REG, "addprotocol", add_data(row), f"{actors.researcher}@active")
    await rpc.push_action(REG, "addprotocol", add_data(row), f"{actors.owner}@active")
    upd = {k: v for k, v in add_data(row).items() if k != "fund"}
    with pytest.raises(MissingAuthority):
        await rpc.push_action(REG, "updprotocol", upd, f"{actors.outsider}@active")
    with pytest.raises(MissingAuthority):
        await rpc.push_action(REG, "delprotocol", {"owner": actors.owner, "researcher": actors.researcher}, f"{actors.outsider}@active")
    # the operator cannot act for an owner that delegated nothing to it
    with pytest.raises(MissingAuthority):
        await op.put_protocol(protocol(actors, owner=actors.outsider))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(researcher="nosuchacct1"), "researcher account does not exist"),
        (dict(fundaccount="nosuchacct1"), "fund account does not exist"),
        (dict(tokencontract="nosuchacct1"), "token contract account does not exist"),
        (dict(title="é" * 129), "title is longer than 256 bytes"),  # 129 characters, 258 bytes
        (dict(datadir="d" * 1025), "datadir is longer than 1024 bytes"),
        (dict(fund=Asset.parse("-1.0000 BOID")), "fund must not be negative"),
        (dict(fund=Asset.parse("1.0000 NOPE")), "fund symbol is not a token of the token contract"),
        (dict(fund=Asset.parse("1.00 BOID"), worker_pay_rate=Asset.parse("1.00 BOID"),
              dispatcher_pay_rate=Asset.parse("1.00 BOID")), "fund symbol precision does not match the token contract"),
        (dict(worker_pay_rate=Asset.parse("1.00 BOID")), "worker pay rate symbol must match the fund symbol"),
        (dict(dispatcher_pay_rate=Asset.parse("1.0000 NOPE")), "dispatcher pay rate symbol must match the fund symbol"),
        (dict(worker_pay_rate=Asset.parse("-1.0000 BOID")), "worker pay rate must not be negative"),
    ],
)
async def test_addprotocol_rejects_bad_arguments(world, change, message):
    actors, rpc, op = world
    row = protocol(actors, **{k: v for k, v in change.items() if k not in ("fund", "worker_pay_rate", "dispatcher_pay_rate")})
    row = ProtocolRow(**{**row.__dict__, **change})
    with pytest.raises(ChainAssertion) as e:
        await rpc.push_action(REG, "addprotocol", add_data(row), f"{actors.owner}@active")
    assert e.value.message == message


async def test_protocol_duplicates_and_unknowns(world):
    actors, rpc, op = world
    row = protocol(actors)
    await rpc.push_action(REG, "addprotocol", add_data(row), f"{actors.owner}@active")
    with pytest.raises(ChainAssertion, match="protocol already exists"):
        await rpc.push_action(REG, "addprotocol", add_data(row), f"{actors.owner}@active")
    other = {k: v for k, v in add_data(protocol(actors, researcher=actors.outsider)).items() if k != "fund"}
    with pytest.raises(ChainAssertion, match="unknown protocol"):
        await rpc.push_action(REG, "updprotocol", other, f"{actors.owner}@active")
    with pytest.raises(ChainAssertion, match="unknown protocol"):
        await rpc.push_action(REG, "delprotocol", {"owner": actors.owner, "researcher": actors.outsider}, f"{actors.owner}@active")
    bad_upd = {**{k: v for k, v in add_data(row).items() if k != "fund"}, "worker_pay_rate": Asset.parse("1.00 BOID")}
    with pytest.raises(ChainAssertion, match="worker pay rate symbol must match the fund symbol"):
        await rpc.push_action(REG, "updprotocol", bad_upd, f"{actors.owner}@active")


async def test_registry_payout_only_inline_from_the_jobs_contract(world):
    actors, rpc, op = world
    await registered(world)
    data = {"owner": actors.owner, "researcher": actors.researcher, "worker": actors.workers[0], "unpaid_time": H, "type": "worker"}
    with pytest.raises(MissingAuthority):
        await rpc.push_action(REG, "payout", data, f"{actors.fund}@active")
    with pytest.raises(ChainAssertion, match="payout may only be called by the jobs contract"):
        await rpc.push_action(REG, "payout", data, f"{JOBS}@active")


# --- addfund ------------------------------------------------------------------------------------

MAX_AMOUNT = (1 << 62) - 1  # the largest asset amount


def units(n: int) -> Asset:
    return Asset(n, boid("0.0000 BOID").symbol)


async def test_addfund_raises_fund_and_funded(world):
    actors, rpc, op = world
    await registered(world, fund="1000.0000 BOID", worker="1.0000 BOID")
    o, r, w = actors.owner, actors.researcher, actors.workers[0]
    row = await op.protocol_row(o, r)
    assert row.fund == row.funded == boid("1000.0000 BOID")  # addprotocol commits the fund
    await op.add_fund(o, r, boid("500.0000 BOID"))  # through the owner's boidop delegation
    row = await op.protocol_row(o, r)
    assert (row.fund, row.funded) == (boid("1500.0000 BOID"), boid("1500.0000 BOID"))
    # a payout lowers the remaining fund only: funded - fund is what was paid out
    await op.record_units(r, [UnitTime(w, 1, 3 * H)])
    assert (await op.payout(o, r, w)).amount == boid("3.0000 BOID")
    row = await op.protocol_row(o, r)
    assert (row.fund, row.funded) == (boid("1497.0000 BOID"), boid("1500.0000 BOID"))
    # updprotocol keeps both
    assert await op.put_protocol(protocol(actors, title="v2", fund="1.0000 BOID")) == "updated"
    row = await op.protocol_row(o, r)
    assert (row.title, row.fund, row.funded) == ("v2", boid("1497.0000 BOID"), boid("1500.0000 BOID"))


async def test_ensure_fund_adds_the_difference_to_funded_once(world):
    actors, rpc, op = world
    await registered(world, fund="1000.0000 BOID", worker="1.0000 BOID")
    o, r, w = actors.owner, actors.researcher, actors.workers[0]
    await op.record_units(r, [UnitTime(w, 1, 10 * H)])
    await op.payout(o, r, w)  # fund 990, funded 1000
    got = await op.ensure_fund(o, r, boid("1500.0000 BOID"))
    assert (got.action, got.added) == ("added", boid("500.0000 BOID"))  # 1500 - funded, not 1500 - fund
    assert (got.fund, got.funded) == (boid("1490.0000 BOID"), boid("1500.0000 BOID"))
    again = await op.ensure_fund(o, r, boid("1500.0000 BOID"))  # a repeat (after a crash) adds nothing
    assert (again.action, again.added) == ("unchanged", boid("0.0000 BOID"))
    lower = await op.ensure_fund(o, r, boid("1200.0000 BOID"))  # never claws back
    assert lower.action == "reduction_ignored" and lower.added == boid("0.0000 BOID")
    row = await op.protocol_row(o, r)
    assert (row.fund, row.funded) == (boid("1490.0000 BOID"), boid("1500.0000 BOID"))
    with pytest.raises(ChainAssertion, match="unknown protocol"):
        await op.ensure_fund(o, actors.outsider, boid("1.0000 BOID"))


async def test_addfund_needs_the_owner(world):
    actors, rpc, op = world
    await registered(world)
    data = {"owner": actors.owner, "researcher": actors.researcher, "quantity": boid("1.0000 BOID")}
    for signer in (actors.outsider, actors.researcher, actors.fund):
        with pytest.raises(MissingAuthority):
            await rpc.push_action(REG, "addfund", data, f"{signer}@active")
    with pytest.raises(MissingAuthority):  # the operator's key cannot sign as the owner's active
        await op.rpc.push_action(REG, "addfund", data, f"{actors.owner}@active")
    # the operator cannot add for an owner that delegated nothing to it
    with pytest.raises(MissingAuthority):
        await op.add_fund(actors.outsider, actors.researcher, boid("1.0000 BOID"))
    await rpc.push_action(REG, "addfund", data, f"{actors.owner}@active")  # the owner itself may
    assert (await op.protocol_row(actors.owner, actors.researcher)).funded == boid("1001.0000 BOID")


@pytest.mark.parametrize(
    "quantity, message",
    [
        ("1.00 BOID", "quantity symbol must match the fund symbol"),
        ("1.0000 NOPE", "quantity symbol must match the fund symbol"),
        ("0.0000 BOID", "quantity must be positive"),
        ("-1.0000 BOID", "quantity must be positive"),
    ],
)
async def test_addfund_rejects_bad_quantities(world, quantity, message):
    actors, rpc, op = world
    await registered(world)
    with pytest.raises(ChainAssertion) as e:
        await op.add_fund(actors.owner, actors.researcher, boid(quantity))
    assert e.value.message == message
    row = await op.protocol_row(actors.owner, actors.researcher)
    assert (row.fund, row.funded) == (boid("1000.0000 BOID"), boid("1000.0000 BOID"))
    with pytest.raises(ChainAssertion, match="unknown protocol"):
        await op.add_fund(actors.owner, actors.outsider, boid("1.0000 BOID"))


async def test_addfund_overflow_is_refused(world):
    actors, rpc, op = world
    o, r, w = actors.owner, actors.researcher, actors.workers[0]
    await registered(world, fund=str(units(MAX_AMOUNT - 10)), worker="1.0000 BOID")
    with pytest.raises(ChainAssertion) as e:
        await op.add_fund(o, r, units(11))
    assert e.value.message == "fund overflow"
    await op.record_units(r, [UnitTime(w, 1, H)])
    assert (await op.payout(o, r, w)).amount == units(10_000)  # fund MAX - 10_010, funded MAX - 10
    with pytest.raises(ChainAssertion) as e:
        await op.add_fund(o, r, units(11))
    assert e.value.message == "funded overflow"
    await op.add_fund(o, r, units(10))  # up to the largest amount exactly
    row = await op.protocol_row(o, r)
    assert (row.fund, row.funded) == (units(MAX_AMOUNT - 10_000), units(MAX_AMOUNT))


def test_protocol_row_from_a_row_older_than_funded():
    row = {"title": "t", "owner": "a", "researcher": "b", "datadir": "/d", "fundaccount": "c",
           "fund": boid("1.0000 BOID"), "tokencontract": TOKEN, "worker_pay_rate": boid("1.0000 BOID"),
           "dispatcher_pay_rate": boid("1.0000 BOID")}
    assert ProtocolRow.from_chain(row).funded is None
    assert ProtocolRow.from_chain({**row, "funded": boid("2.0000 BOID")}).funded == boid("2.0000 BOID")


# --- contributors -------------------------------------------------------------------------------


async def test_register_and_unregister_contributors(world):
    actors, rpc, op = world
    w, r, d = actors.workers[0], actors.researcher, actors.dispatcher
    assert await op.register_worker(w, r) is True
    assert await op.register_worker(w, r) is False  # "worker already registered" is done
    assert await op.worker_row(w, r) == ContributorRow(r, 0, 0)
    assert await op.contributor_rows(w) == [ContributorRow(r, 0, 0)]
    assert await op.register_dispatcher(d, r) is True
    assert await op.register_dispatcher(d, r) is False
    assert await op.dispatcher_row(d, r) == ContributorRow(r, 0, 0)
    assert await op.unregister_worker(w, r) is True
    assert await op.unregister_worker(w, r) is False
    assert await op.unregister_dispatcher(d, r) is True
    assert await op.unregister_dispatcher(d, r) is False
    assert await op.worker_row(w, r) is None and await op.dispatcher_row(d, r) is None


async def test_researcher_may_register_but_outsiders_may_not(world):
    actors, rpc, op = world
    w, r = actors.workers[1], actors.researcher
    await rpc.push_action(JOBS, "regworker", {"worker": w, "researcher": r}, f"{r}@active")
    await rpc.push_action(JOBS, "regdisptch", {"dispatcher": actors.dispatcher, "researcher": r}, f"{r}@active")
    for act, who in (("regworker", "worker"), ("delworker", "worker"), ("regdisptch", "dispatcher"), ("deldisptch", "dispatcher")):
        with pytest.raises(ChainAssertion) as e:
            await rpc.push_action(JOBS, act, {who: actors.workers[0], "researcher": r}, f"{actors.outsider}@active")
        assert e.value.message == f"missing authority of {r} (researcher) or of the operator"
    with pytest.raises(ChainAssertion, match="worker account does not exist"):
        await op.register_worker("nosuchacct1", r)
    with pytest.raises(ChainAssertion, match="dispatcher account does not exist"):
        await op.register_dispatcher("nosuchacct1", r)


async def test_unpaid_time_blocks_unregistering(world):
    actors, rpc, op = world
    await registered(world)
    w, r, d = actors.workers[0], actors.researcher, actors.dispatcher
    await op.record_units(r, [UnitTime(w, 1, 1000)])
    assert await op.record_dispatcher_time(r, d, 1, 1000)
    with pytest.raises(ChainAssertion, match="worker has unpaid time"):
        await op.unregister_worker(w, r)
    with pytest.raises(ChainAssertion, match="dispatcher has unpaid time"):
        await op.unregister_dispatcher(d, r)


# --- time records -------------------------------------------------------------------------------


async def test_newjob_records_each_unit_once(world):
    actors, rpc, op = world
    await registered(world)
    r, (w1, w2) = actors.researcher, actors.workers
    units = [UnitTime(w1 if i % 2 else w2, unit_id("job-uid-1", i, w1 if i % 2 else w2), 1_000_000 + i) for i in range(7)]
    first = await op.record_units(r, units[:3], batch_size=10)
    assert (first.recorded, first.already, first.transactions) == (3, 0, 1)
    again = await op.record_units(r, units, batch_size=10)  # batch fails on a duplicate, falls back
    assert (again.recorded, again.already) == (4, 3)
    third = await op.record_units(r, units, batch_size=3)
    assert (third.recorded, third.already) == (0, 7)
    for w in (w1, w2):
        mine = sum(u.time for u in units if u.worker == w)
        assert await op.worker_row(w, r) == ContributorRow(r, mine, mine)
    rows = await rpc.get_table_rows(JOBS, r, "job")
    assert sorted(x["id"] for x in rows) == sorted(u.id for u in units)
    assert await op.unit_row(r, units[0].id) == {"id": units[0].id, "worker": units[0].worker, "time": units[0].time}


async def test_newjob_rejections(world):
    actors, rpc, op = world
    await registered(world)
    r, w = actors.researcher, actors.workers[0]
    data = {"researcher": r, "worker": w, "id": 1, "time": 5}
    with pytest.raises(ChainAssertion) as e:  # the researcher may not record time: only the operator
        await rpc.push_action(JOBS, "newjob", data, f"{r}@active")
    assert e.value.message == "missing authority of boidoperator (operator)"
    with pytest.raises(ChainAssertion, match="worker not registered"):
        await op.record_units(r, [UnitTime(actors.outsider, 1, 5)])
    await op.record_units(r, [UnitTime(w, 1, (1 << 64) - 10)])
    with pytest.raises(ChainAssertion, match="time overflow"):
        await op.record_units(r, [UnitTime(w, 2, 10)])
    with pytest.raises(ChainAssertion, match="unit already recorded"):
        await rpc.push_action(JOBS, "newjob", data, "boidoperator@operate")
    # the operator's key cannot sign clusterjobs actions it is not linked to (least privilege)
    with pytest.raises(MissingAuthority):
        await op.rpc.push_action(JOBS, "conntoreg", {"registry_contract": REG, "operator": "boidoperator"}, "boidoperator@operate")


async def test_removejob(world):
    actors, rpc, op = world
    await registered(world)
    r, (w1, w2) = actors.researcher, actors.workers
    await op.record_units(r, [UnitTime(w1, 10, 7200), UnitTime(w1, 11, 100)])
    with pytest.raises(ChainAssertion, match="unit was recorded for another worker"):
        await op.remove_unit(r, w2, 10)
    with pytest.raises(ChainAssertion) as e:
        await rpc.push_action(JOBS, "removejob", {"researcher": r, "worker": w1, "id": 10}, f"{r}@active")
    assert e.value.message == "missing authority of boidoperator (operator)"
    assert await op.remove_unit(r, w1, 10) is True
    assert await op.remove_unit(r, w1, 10) is False
    assert await op.worker_row(w1, r) == ContributorRow(r, 100, 100)
    await op.record_units(r, [UnitTime(w1, 12, 10 * H)])
    assert await op.payout(actors.owner, r, w1)
    with pytest.raises(ChainAssertion, match="job time already paid out"):
        await op.remove_unit(r, w1, 12)


async def test_updatedptch(world):
    actors, rpc, op = world
    await registered(world)
    r, d = actors.researcher, actors.dispatcher
    assert await op.record_dispatcher_time(r, d, 1, 3_000_000) is True
    assert await op.record_dispatcher_time(r, d, 1, 3_000_000) is False
    assert await op.dispatcher_row(d, r) == ContributorRow(r, 3_000_000, 3_000_000)
    assert (await rpc.get_table_rows(JOBS, r, "dptchlog")) == [{"id": 1, "dispatcher": d, "time": 3_000_000}]
    with pytest.raises(ChainAssertion, match="dispatcher not registered"):
        await op.record_dispatcher_time(r, actors.outsider, 2, 1)
    with pytest.raises(ChainAssertion) as e:
        await rpc.push_action(JOBS, "updatedptch", {"researcher": r, "dispatcher": d, "id": 3, "time": 1}, f"{d}@active")
    assert e.value.message == "missing authority of boidoperator (operator)"


# --- payouts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("time_us", [H, 5_400_500_000, 1_234_567_891, 3 * H + 1, 987_654_321_987])
async def test_payout_pays_floor_of_rate_times_time(world, time_us):
    actors, rpc, op = world
    row = await registered(world, worker="1.2345 BOID")
    r, w = actors.researcher, actors.workers[0]
    await op.record_units(r, [UnitTime(w, 1, time_us)])
    fund_before, w_before = await balance(rpc, actors.fund), await balance(rpc, w)
    expected = payment(time_us, row.worker_pay_rate)
    assert expected.amount == time_us * 12345 // H
    paid = await op.payout(actors.owner, r, w)
    assert paid is not None and paid.amount == expected
    assert await balance(rpc, w) == w_before + expected
    assert await balance(rpc, actors.fund) == fund_before - expected
    assert (await op.protocol_row(actors.owner, r)).fund == row.fund - expected
    left = (await op.worker_row(w, r)).unpaid_time
    assert left == time_us - paid.time_paid
    assert payment(left, row.worker_pay_rate).amount == 0  # what stays unpaid is worth < 1 unit
    assert payment(paid.time_paid, row.worker_pay_rate) == expected
    # a second payout of the same time pays nothing
    assert await op.payout(actors.owner, r, w) is None
    assert await balance(rpc, w) == w_before + expected
    assert (await op.worker_row(w, r)).total_time == time_us


async def test_dispatcher_payout(world):
    actors, rpc, op = world
    row = await registered(world, dispatcher="0.5000 BOID")
    r, d = actors.researcher, actors.dispatcher
    await op.record_dispatcher_time(r, d, 1, 2 * H + 17)
    paid = await op.payout(actors.owner, r, d, "dispatcher")
    assert paid.amount == boid("1.0000 BOID") == payment(2 * H + 17, row.dispatcher_pay_rate)
    assert await balance(rpc, d) == boid("1.0000 BOID")
    assert await op.payout(actors.owner, r, d, "dispatcher") is None


async def test_payout_rejections(world):
    actors, rpc, op = world
    await registered(world, fund="0.0010 BOID", worker="1.0000 BOID")
    r, w, o = actors.researcher, actors.workers[0], actors.owner
    await op.record_units(r, [UnitTime(w, 1, H)])
    data = {"owner": o, "funder": actors.fund, "researcher": r, "contributor": w, "type": "worker"}
    with pytest.raises(MissingAuthority):
        await rpc.push_action(JOBS, "payout", data, f"{actors.outsider}@active")
    with pytest.raises(ChainAssertion, match="funder is not the protocol's fund account"):
        await rpc.push_action(JOBS, "payout", {**data, "funder": actors.outsider}, f"{actors.outsider}@active")
    with pytest.raises(ChainAssertion, match='type must be "worker" or "dispatcher"'):
        await rpc.push_action(JOBS, "payout", {**data, "type": "boss"}, f"{actors.fund}@active")
    with pytest.raises(ChainAssertion, match="unknown protocol"):
        await rpc.push_action(JOBS, "payout", {**data, "owner": actors.outsider}, f"{actors.fund}@active")
    with pytest.raises(ChainAssertion, match="worker not registered"):
        await rpc.push_action(JOBS, "payout", {**data, "contributor": actors.outsider}, f"{actors.fund}@active")
    with pytest.raises(ChainAssertion, match="fund too low"):  # 1.0000 owed, 0.0010 left
        await op.payout(o, r, w)
    assert (await op.worker_row(w, r)).unpaid_time == H  # the failed payout changed nothing
    with pytest.raises(ChainAssertion, match="nothing to pay"):
        await rpc.push_action(JOBS, "payout", {**data, "type": "dispatcher", "contributor": actors.dispatcher}, f"{actors.fund}@active")


async def test_payout_needs_the_fund_account_to_trust_clusterreg(chain_world):
    """Without clusterreg@eosio.code in the fund's active permission, the inline transfer fails."""
    async with chain_world.client() as rpc:
        owner, res, fund, w = await chain_world.new_accounts(rpc, "nown", "nres", "nfund", "nwrk")
        await chain_world.fund(rpc, fund, "10.0000 BOID")
        jobs = BoidChain(rpc, auth=ChainAuth(operator="boidoperator", operator_permission="operate", delegated_permission="active"))
        chain_world.keys.labels.setdefault("boidoperator@operate", chain_world.operator_keys.public_keys()[0])
        row = ProtocolRow("t", owner, res, "/d", fund, boid("10.0000 BOID"), TOKEN, boid("1.0000 BOID"), boid("1.0000 BOID"))
        await jobs.put_protocol(row)
        await jobs.register_worker(w, res)
        await jobs.record_units(res, [UnitTime(w, 1, H)])
        with pytest.raises(MissingAuthority):
            await jobs.payout(owner, res, w)


async def test_payout_amount_overflow_is_refused(world):
    actors, rpc, op = world
    await registered(world, worker="461168601842738.7903 BOID")  # max asset amount 2^62 - 1
    r, w = actors.researcher, actors.workers[0]
    await op.record_units(r, [UnitTime(w, 1, (1 << 64) - 1)])
    with pytest.raises(ChainAssertion, match="payout amount overflow"):
        await op.payout(actors.owner, r, w)


async def test_fund_is_conserved_over_jobs_and_payouts(world):
    actors, rpc, op = world
    row = await registered(world, fund="5000.0000 BOID", worker="3.3333 BOID", dispatcher="0.7777 BOID")
    r = actors.researcher
    people = [*actors.workers, actors.dispatcher]
    start = {a: await balance(rpc, a) for a in [actors.fund, *people]}
    supply_before = (await rpc.get_table_rows(TOKEN, "BOID", "stat"))[0]["supply"]
    rng = random.Random(42)
    owed_time = {a: 0 for a in people}
    paid_total = Asset(0, row.fund.symbol)
    uid = 0
    for round_ in range(4):
        units = []
        for w in actors.workers:
            for _ in range(rng.randint(1, 6)):
                uid += 1
                t = rng.randint(1, 2 * H)
                units.append(UnitTime(w, unit_id(f"job-{round_}", uid, w), t))
                owed_time[w] += t
        await op.record_units(r, units, batch_size=4)
        t = rng.randint(1, H)
        await op.record_dispatcher_time(r, actors.dispatcher, uid, t)
        owed_time[actors.dispatcher] += t
        for who in people:
            kind = "dispatcher" if who == actors.dispatcher else "worker"
            res = await op.payout(actors.owner, r, who, kind)
            if res is not None:
                paid_total = paid_total + res.amount
                owed_time[who] -= res.time_paid
    end = {a: await balance(rpc, a) for a in [actors.fund, *people]}
    gained = sum((end[a] - start[a]).amount for a in people)
    assert gained == paid_total.amount
    assert (start[actors.fund] - end[actors.fund]).amount == paid_total.amount
    assert (await op.protocol_row(actors.owner, r)).fund == row.fund - paid_total
    assert (await rpc.get_table_rows(TOKEN, "BOID", "stat"))[0]["supply"] == supply_before
    for who in people:
        kind_row = await (op.dispatcher_row if who == actors.dispatcher else op.worker_row)(who, r)
        assert kind_row.unpaid_time == owed_time[who]
        rate = row.dispatcher_pay_rate if who == actors.dispatcher else row.worker_pay_rate
        assert payment(kind_row.unpaid_time, rate).amount == 0  # everything payable was paid
        # each payout pays for a whole number of µs, so with rates far below H per µs the rounds
        # add up exactly to the value of all the time paid for
        paid_time = kind_row.total_time - kind_row.unpaid_time
        assert (end[who] - start[who]).amount == paid_time * rate.amount // H


async def test_fund_balance_reads_the_token_table(world):
    actors, rpc, op = world
    assert await op.fund_balance(actors.fund) == boid("100000.0000 BOID")
    assert await op.fund_balance(actors.outsider) == boid("0.0000 BOID")
    with pytest.raises(ChainError):
        await op.fund_balance(actors.fund, token_contract="nosuchacct1")


def test_unit_id_is_stable_and_distinct():
    a = unit_id("uid-1", 0, "worker1")
    assert a == unit_id("uid-1", 0, "worker1") and 0 <= a < 1 << 64
    assert len({unit_id("uid-1", i, w) for i in range(200) for w in ("worker1", "worker2")}) == 400
    assert unit_id("uid-1", 1, "worker1") != unit_id("uid-11", 0, "worker1") != a
