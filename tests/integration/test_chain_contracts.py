"""Contracts v2 on the real node: escrow, protocol identity, pay fixed at recording, batches.

Attack tests first (issue 9): each of the seven attacks on v1, a contributor crediting itself,
replays, re-entrancy from a hostile token contract of our own (contracts/tests/hostile), overflow,
payout to an unregistered account; then the money invariant after random sequences (hypothesis).
Operator calls go through BoidChain with the operator's least-privilege key only; users sign with
their own keys (the full demo key ring stands in for each user's own key file).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from boidcluster.adapters.chain.abi import abi_to_bin
from boidcluster.adapters.chain.boid import (
    H,
    BatchOutOfSequence,
    BoidChain,
    ProtocolTerms,
    UnitTime,
    credit,
)
from boidcluster.adapters.chain.rpc import ChainAssertion, ChainError, MissingAuthority, action
from boidcluster.model.types import Asset

pytestmark = [pytest.mark.chain, pytest.mark.usefixtures("contracts_deployed")]

JOBS, REG, TOKEN = "clusterjobs", "clusterreg", "eosio.token"
HOSTILE_BUILD = Path(__file__).resolve().parents[2] / "contracts" / "tests" / "hostile" / "build"
MAX_AMOUNT = (1 << 62) - 1
U64 = (1 << 64) - 1


def boid(text: str) -> Asset:
    return Asset.parse(text)


def fields(abi, struct: str) -> list[str]:
    return [f["name"] for f in abi.structs[struct]["fields"]]


def terms(actors, name="fold", worker="1.0000 BOID", dispatcher="0.5000 BOID", token=TOKEN, **kw) -> ProtocolTerms:
    base = dict(owner=actors.owner, name=name, researcher=actors.researcher, title="Folding proteins",
                datadir="/boid/fold", tokencontract=token, worker_pay_rate=boid(worker),
                dispatcher_pay_rate=boid(dispatcher))
    base.update(kw)
    return ProtocolTerms(**base)


class World:
    """Fresh actors; `user` signs with the users' keys, `op` with the operator's only."""

    def __init__(self, chain_world, actors, rpc, op_rpc):
        self.cw, self.a, self.rpc = chain_world, actors, rpc
        self.user = BoidChain(rpc)
        self.op = BoidChain(op_rpc)
        self.seq: dict[str, int] = {}

    async def protocol(self, name="fold", deposit="100.0000 BOID", accept=True, **kw):
        t = terms(self.a, name=name, **kw)
        signers = [f"{t.owner}@active"] + ([f"{t.researcher}@active"] if accept else [])
        await self.user.add_protocol(t, *signers)
        for w in self.a.workers:
            assert await self.op.register("worker", w, t.owner, name)
        assert await self.op.register("dispatcher", self.a.dispatcher, t.owner, name)
        if deposit:
            await self.user.deposit(t.owner, t.owner, name, boid(deposit))
        return t

    async def record(self, t, credits, type="worker", seq=None):
        """credits: [(account, µs)]; one unit each, ids fresh."""
        seq = seq if seq is not None else self.seq.get(t.name, 0) + 1
        units = [UnitTime(acct, int.from_bytes(hashlib.sha256(f"{t.name}{seq}{i}".encode()).digest()[:8], "big"), us)
                 for i, (acct, us) in enumerate(credits)]
        trx = await self.op.record_batch(t.owner, t.name, seq, type, units)
        self.seq[t.name] = seq
        return trx

    async def row(self, t):
        return await self.user.require_protocol(t.owner, t.name)

    async def owed(self, t, account) -> Asset | None:
        p = await self.row(t)
        a = await self.user.acct_row(p.id, account)
        return a.owed if a else None

    async def balance(self, account, token=TOKEN) -> Asset:
        return await self.user.fund_balance(account, token)


@pytest.fixture
async def w(chain_world):
    async with chain_world.client() as rpc:
        actors = await chain_world.actors(rpc, workers=2)
        async with chain_world.operator_client() as op_rpc:
            yield World(chain_world, actors, rpc, op_rpc)


@pytest.fixture(scope="session")
def hostile(chain_world) -> str:
    """Our own hostile token contract (fake BOID, no balances, re-enters payout), deployed once."""
    async def setup() -> str:
        async with chain_world.client() as rpc:
            (name,) = await chain_world.new_accounts(rpc, "hostil")
            wasm = (HOSTILE_BUILD / "hostile.wasm").read_bytes()
            abi = abi_to_bin(json.loads((HOSTILE_BUILD / "hostile.abi").read_text()))
            await rpc.push_transaction([
                action("eosio", "setcode", {"account": name, "vmtype": 0, "vmversion": 0, "code": wasm}, f"{name}@active"),
                action("eosio", "setabi", {"account": name, "abi": abi}, f"{name}@active"),
            ])
            await chain_world.code_permission(rpc, name, name)
            await rpc.push_action(name, "create", {"issuer": name, "maximum_supply": "461168601842738.7903 BOID"},
                                  f"{name}@active")
            return name
    return asyncio.run(setup())


pytestmark.append(pytest.mark.anyio)


# --- deployment ------------------------------------------------------------------------------------


async def test_bootstrap_connects_contracts_and_gives_no_user_key_to_the_operator(w):
    reg = await w.rpc.get_row(JOBS, JOBS, "reg", 0)
    assert (reg["registry_contract"], reg["operator"]) == (REG, "boidoperator")
    cfg = await w.rpc.get_row(REG, REG, "config", 0)
    assert (cfg["jobs_contract"], cfg["operator"]) == (JOBS, "boidoperator")
    for acct in (JOBS, REG):  # inline actions of the contract itself
        perms = {p["perm_name"]: p for p in (await w.rpc.get_account(acct))["permissions"]}
        assert {"actor": acct, "permission": "eosio.code"} in [x["permission"] for x in perms["active"]["required_auth"]["accounts"]]
    # the operator's key satisfies nothing of the demo owner or fund account
    for acct in ("boidteam", "boidfund"):
        perms = (await w.rpc.get_account(acct))["permissions"]
        assert all(x["permission"]["actor"] != "boidoperator" for p in perms for x in p["required_auth"]["accounts"])


# --- the happy path --------------------------------------------------------------------------------


async def test_deposit_record_payout_withdraw_delete(w):
    t = await w.protocol(deposit="10.0000 BOID")
    wk = w.a.workers[0]
    row = await w.row(t)
    assert row.accepted and row.deposited == boid("10.0000 BOID") == row.balance
    before = await w.balance(REG)
    await w.record(t, [(wk, 3 * H), (wk, H // 2)])  # 3.5 h at 1 BOID/h
    assert await w.owed(t, wk) == boid("3.5000 BOID")
    assert (await w.row(t)).owed == boid("3.5000 BOID")
    assert (await w.op.contributor_row("worker", row.id, wk)).total_time == 3 * H + H // 2
    paid = await w.op.payout(t.owner, t.name, wk)
    assert paid.amount == boid("3.5000 BOID")
    assert await w.balance(wk) == boid("3.5000 BOID")
    assert await w.balance(REG) == before - boid("3.5000 BOID")
    assert await w.op.payout(t.owner, t.name, wk) is None  # nothing owed any more
    await w.user.withdraw(t.owner, t.name, boid("6.5000 BOID"))
    row = await w.row(t)
    assert (row.balance, row.owed, row.paid, row.withdrawn) == (boid("0.0000 BOID"),) * 2 + (boid("3.5000 BOID"), boid("6.5000 BOID"))
    assert row.invariant_holds()
    assert await w.user.delete_protocol(t.owner, t.name)
    assert await w.user.protocol_row(t.owner, t.name) is None


async def test_remainder_is_carried_not_lost(w):
    t = await w.protocol(worker="0.0007 BOID")  # 7 units per hour: one unit every 3600/7 s
    wk = w.a.workers[0]
    times = [H // 5, H // 3, 1, H - 1, 12345678, H // 7]
    for us in times:
        await w.record(t, [(wk, us)])
    owed, rest = credit(sum(times), boid("0.0007 BOID"))
    assert await w.owed(t, wk) == owed
    row = await w.row(t)
    assert (await w.user.acct_row(row.id, wk)).carry == rest


# --- the seven attacks on v1 -------------------------------------------------------------------------


async def test_attack1_outsider_protocol_for_the_victims_researcher_cannot_erase_owed_pay(w, hostile):
    t = await w.protocol()
    wk = w.a.workers[0]
    await w.record(t, [(wk, 10 * H)])
    # the attacker registers a protocol for the victim's researcher, with a tiny rate and a fake token
    attacker = w.a.outsider
    evil = ProtocolTerms(owner=attacker, name="fold", researcher=w.a.researcher, title="x", datadir="/x",
                         tokencontract=hostile, worker_pay_rate=boid("0.0010 BOID"), dispatcher_pay_rate=boid("0.0010 BOID"))
    await w.user.add_protocol(evil, f"{attacker}@active")
    assert not (await w.user.require_protocol(attacker, "fold")).accepted
    # without the researcher's consent, it cannot get contributors or records
    with pytest.raises(ChainAssertion, match="has not accepted"):
        await w.op.register("worker", wk, attacker, "fold") and await w.op.record_batch(
            attacker, "fold", 1, "worker", [UnitTime(wk, 1, 1)])
    assert await w.op.payout(attacker, "fold", wk) is None  # nothing there to pay (or to erase)
    # a fake-token deposit naming the victim's protocol is refused
    with pytest.raises(ChainAssertion, match="token contract other than the protocol's"):
        await w.rpc.push_action(hostile, "transfer", {"from": attacker, "to": REG, "quantity": "5.0000 BOID",
                                                      "memo": f"{t.owner}/{t.name}"}, f"{attacker}@active")
    # the victim is still owed everything, and the real payout pays it
    assert await w.owed(t, wk) == boid("10.0000 BOID")
    assert (await w.op.payout(t.owner, t.name, wk)).amount == boid("10.0000 BOID")


async def test_attack2_two_sponsors_of_one_researcher_keep_separate_time_and_money(w):
    t1 = await w.protocol(name="one", worker="1.0000 BOID", deposit="10.0000 BOID")
    t2 = await w.protocol(name="two", worker="2.0000 BOID", deposit="10.0000 BOID")
    wk = w.a.workers[0]
    await w.record(t1, [(wk, 2 * H)])
    assert await w.owed(t2, wk) is None
    assert await w.op.payout(t2.owner, t2.name, wk) is None  # sponsor 2 owes nothing for sponsor 1's work
    assert (await w.op.payout(t1.owner, t1.name, wk)).amount == boid("2.0000 BOID")  # at sponsor 1's rate
    r1, r2 = await w.row(t1), await w.row(t2)
    assert (r1.balance, r2.balance) == (boid("8.0000 BOID"), boid("10.0000 BOID"))
    assert r1.id != r2.id


async def test_attack3_no_fund_account_and_the_operator_cannot_move_escrow(w):
    t = await w.protocol(deposit="10.0000 BOID")
    # addprotocol has no fund account to name; the escrow is the registry's own balance
    assert "fundaccount" not in fields(await w.rpc.get_abi(REG), "addprotocol")
    op_rpc = w.op.rpc
    with pytest.raises(MissingAuthority):  # the operator cannot withdraw the owner's escrow
        await w.op.withdraw(t.owner, t.name, boid("1.0000 BOID"), signer="boidoperator@operate")
    with pytest.raises(ChainError):  # nor transfer the registry's tokens
        await op_rpc.push_action(TOKEN, "transfer", {"from": REG, "to": "boidoperator", "quantity": "1.0000 BOID",
                                                     "memo": ""}, "boidoperator@operate")
    with pytest.raises(MissingAuthority):  # nor create protocols for an owner
        await w.op.add_protocol(terms(w.a, name="other"), "boidoperator@operate")
    assert (await w.row(t)).balance == boid("10.0000 BOID")


async def test_attack4_delprotocol_refused_while_owed_or_escrow_not_empty(w):
    t = await w.protocol(deposit="5.0000 BOID")
    wk = w.a.workers[0]
    await w.record(t, [(wk, H)])
    await w.user.withdraw(t.owner, t.name, boid("4.0000 BOID"))
    with pytest.raises(ChainAssertion, match="owes contributors"):
        await w.user.delete_protocol(t.owner, t.name)
    await w.op.payout(t.owner, t.name, wk)
    row = await w.row(t)
    assert row.balance == boid("0.0000 BOID") and row.owed == boid("0.0000 BOID")
    await w.user.deposit(t.owner, t.owner, t.name, boid("0.0001 BOID"))
    with pytest.raises(ChainAssertion, match="escrow is not empty"):
        await w.user.delete_protocol(t.owner, t.name)


async def test_attack5_rate_cut_after_recording_does_not_reprice_recorded_work(w):
    t = await w.protocol(worker="1.0000 BOID", deposit="20.0000 BOID")
    wk = w.a.workers[0]
    await w.record(t, [(wk, 10 * H)])
    cut = terms(w.a, name=t.name, worker="0.0010 BOID")
    await w.user.update_protocol(cut)
    assert (await w.row(t)).worker_pay_rate == boid("0.0010 BOID")
    await w.record(t, [(wk, 10 * H)])  # later work at the new rate
    assert (await w.op.payout(t.owner, t.name, wk)).amount == boid("10.0100 BOID")


async def test_attack6_token_contract_and_symbol_are_fixed(w, hostile):
    t = await w.protocol()
    abi = await w.rpc.get_abi(REG)
    assert "tokencontract" not in fields(abi, "updprotocol")
    with pytest.raises(ChainAssertion, match="symbol must match"):
        await w.user.update_protocol(terms(w.a, name=t.name, worker="1.00 BOID", dispatcher="1.00 BOID"))
    # a token of another contract with the same symbol is not a deposit
    with pytest.raises(ChainAssertion, match="token contract other than the protocol's"):
        await w.rpc.push_action(hostile, "transfer", {"from": t.owner, "to": REG, "quantity": "1000.0000 BOID",
                                                      "memo": f"{t.owner}/{t.name}"}, f"{t.owner}@active")
    assert (await w.row(t)).tokencontract == TOKEN


async def test_attack7_recorded_work_cannot_be_removed(w):
    t = await w.protocol()
    wk = w.a.workers[0]
    await w.record(t, [(wk, H)])
    await w.op.payout(t.owner, t.name, wk)
    abi = await w.rpc.get_abi(JOBS, refresh=True)
    assert "removejob" not in abi.actions  # no successor: recorded batches are final
    # and no action of either contract lowers owed or total time except a payout
    assert set(abi.actions) == {"conntoreg", "regworker", "delworker", "regdisptch", "deldisptch", "recordbatch"}
    assert (await w.op.contributor_row("worker", (await w.row(t)).id, wk)).total_time == H


# --- more attacks -------------------------------------------------------------------------------------


async def test_a_contributor_cannot_credit_itself(w):
    t = await w.protocol()
    wk = w.a.workers[0]
    mine = BoidChain(w.rpc, auth=type(w.op.auth)(operator=wk, operator_permission="active"))
    with pytest.raises(ChainAssertion, match="missing authority of boidoperator"):
        await mine.record_batch(t.owner, t.name, 1, "worker", [UnitTime(wk, 1, 100 * H)])
    with pytest.raises(MissingAuthority):
        await w.rpc.push_action(REG, "credit", {"owner": t.owner, "name": t.name, "type": "worker",
                                                "credits": [{"account": wk, "time": 100 * H}]}, f"{wk}@active")
    with pytest.raises(ChainAssertion, match="missing authority of"):  # nor register itself
        await w.rpc.push_action(JOBS, "regworker", {"worker": w.a.outsider, "owner": t.owner, "protocol": t.name},
                                f"{w.a.outsider}@active")
    assert await w.owed(t, wk) is None


async def test_replayed_batch_is_refused_in_the_same_and_a_later_transaction(w):
    t = await w.protocol()
    wk = w.a.workers[0]
    units = [UnitTime(wk, 7, H)]
    act = w.op.batch_action(t.owner, t.name, 1, "worker", units)
    with pytest.raises(ChainAssertion, match="batch out of sequence: expected 2"):
        await w.op.rpc.push_transaction([act, act])  # same transaction: all of it is refused
    assert await w.owed(t, wk) is None
    await w.op.record_batch(t.owner, t.name, 1, "worker", units)
    with pytest.raises(BatchOutOfSequence) as e:
        await w.op.record_batch(t.owner, t.name, 1, "worker", units)  # later transaction
    assert e.value.expected == 2
    with pytest.raises(BatchOutOfSequence):
        await w.op.record_batch(t.owner, t.name, 3, "worker", units)  # skipping ahead
    with pytest.raises(ChainAssertion, match="strictly increase"):  # a unit twice in one batch
        await w.op.rpc.push_transaction([action(JOBS, "recordbatch", {
            "owner": t.owner, "protocol": t.name, "seq": 2, "type": "worker",
            "units": [{"contributor": wk, "id": 9, "time": 1}, {"contributor": wk, "id": 9, "time": 1}]}, "boidoperator@operate")])
    assert await w.owed(t, wk) == boid("1.0000 BOID")
    assert (await w.op.batch_seq((await w.row(t)).id)).seq == 1


async def test_reentrancy_from_a_hostile_token_pays_nothing_twice(w, hostile):
    t = await w.protocol(token=hostile, deposit=None)
    wk = w.a.workers[0]
    # the hostile token "deposits" what it never had (it only harms protocols that chose it)
    await w.rpc.push_action(hostile, "transfer", {"from": t.owner, "to": REG, "quantity": "50.0000 BOID",
                                                  "memo": f"{t.owner}/{t.name}"}, f"{t.owner}@active")
    await w.record(t, [(wk, 3 * H)])
    await w.cw.code_permission(w.rpc, wk, hostile)  # the worker colludes with the token
    await w.rpc.push_action(hostile, "setreenter", {"registry": REG, "owner": t.owner, "name": t.name,
                                                    "contributor": wk}, f"{hostile}@active")
    before = await w.row(t)
    with pytest.raises(ChainAssertion, match="nothing to pay"):  # the re-entered payout finds nothing owed
        await w.op.rpc.push_action(REG, "payout", {"owner": t.owner, "name": t.name, "contributor": wk},
                                   "boidoperator@operate")
    assert await w.row(t) == before  # and the whole transaction reverted
    assert await w.owed(t, wk) == boid("3.0000 BOID")
    # every re-entry (each payout's transfer re-enters again) ends the same way: nothing paid twice
    assert await w.op.payout(t.owner, t.name, wk) is None
    row = await w.row(t)
    assert (row.paid, row.owed, row.balance) == (boid("0.0000 BOID"), boid("3.0000 BOID"), boid("50.0000 BOID"))
    assert row.invariant_holds()


async def test_overflow_is_refused_never_truncated(w, hostile):
    t = await w.protocol(worker="461168601842738.7903 BOID", deposit=None)  # the largest rate
    wk = w.a.workers[0]
    with pytest.raises(ChainAssertion, match="time overflow"):
        await w.op.record_batch(t.owner, t.name, 1, "worker", [UnitTime(wk, 1, U64), UnitTime(wk, 2, 1)])
    with pytest.raises(ChainAssertion, match="amount overflow"):
        await w.op.record_batch(t.owner, t.name, 1, "worker", [UnitTime(wk, 1, U64)])
    await w.record(t, [(wk, H)])  # owed = the largest amount
    with pytest.raises(ChainAssertion, match="owed overflow"):
        await w.record(t, [(wk, H)])
    assert await w.owed(t, wk) == Asset(MAX_AMOUNT, boid("1.0000 BOID").symbol)
    h = await w.protocol(name="fake", token=hostile, deposit=None)
    big = "461168601842738.7903 BOID"
    await w.rpc.push_action(hostile, "transfer", {"from": h.owner, "to": REG, "quantity": big,
                                                  "memo": f"{h.owner}/{h.name}"}, f"{h.owner}@active")
    with pytest.raises(ChainAssertion, match="deposited overflow"):
        await w.rpc.push_action(hostile, "transfer", {"from": h.owner, "to": REG, "quantity": "0.0001 BOID",
                                                      "memo": f"{h.owner}/{h.name}"}, f"{h.owner}@active")


async def test_unregistered_accounts_are_neither_credited_nor_paid(w):
    t = await w.protocol()
    out = w.a.outsider
    with pytest.raises(ChainAssertion, match=f"worker not registered: {out}"):
        await w.op.record_batch(t.owner, t.name, 1, "worker", [UnitTime(out, 1, H)])
    with pytest.raises(ChainAssertion, match=f"dispatcher not registered: {w.a.workers[0]}"):
        await w.op.record_batch(t.owner, t.name, 1, "dispatcher", [UnitTime(w.a.workers[0], 1, H)])
    assert await w.op.payout(t.owner, t.name, out) is None
    assert await w.balance(out) == boid("0.0000 BOID")


async def test_shortfall_pays_nothing_and_says_by_how_much(w):
    t = await w.protocol(deposit="1.0000 BOID")
    wk = w.a.workers[0]
    await w.record(t, [(wk, 3 * H)])
    before = await w.row(t)
    with pytest.raises(ChainAssertion, match=r"escrow too low: owes 3.0000 BOID, holds 1.0000 BOID, short by 2.0000 BOID"):
        await w.op.payout(t.owner, t.name, wk)
    assert await w.row(t) == before
    assert before.free == boid("-2.0000 BOID")
    with pytest.raises(ChainAssertion, match="free escrow"):
        await w.user.withdraw(t.owner, t.name, boid("0.0001 BOID"))
    await w.user.deposit(w.a.fund, t.owner, t.name, boid("2.0000 BOID"))  # anyone may fund it
    assert (await w.op.payout(t.owner, t.name, wk)).amount == boid("3.0000 BOID")


async def test_withdraw_only_the_free_escrow_and_only_by_the_owner(w):
    t = await w.protocol(deposit="5.0000 BOID")
    await w.record(t, [(w.a.workers[0], 2 * H)])
    with pytest.raises(MissingAuthority):
        await w.user.withdraw(t.owner, t.name, boid("1.0000 BOID"), signer=f"{w.a.researcher}@active")
    with pytest.raises(ChainAssertion, match="free escrow: 3.0000 BOID"):
        await w.user.withdraw(t.owner, t.name, boid("3.0001 BOID"))
    before = await w.balance(t.owner)
    await w.user.withdraw(t.owner, t.name, boid("3.0000 BOID"))
    assert await w.balance(t.owner) == before + boid("3.0000 BOID")


# --- reservation: escrow kept for running jobs (issue 9: "withdraw what is neither owed nor reserved") ---


async def test_owner_cannot_withdraw_escrow_reserved_for_a_running_job(w):
    """Attack: the owner pulls the escrow a running job will still owe; contributors mid-job are short."""
    t = await w.protocol(deposit="10.0000 BOID")
    await w.record(t, [(w.a.workers[0], 2 * H)])  # owed 2
    await w.op.reserve(t.owner, t.name, boid("6.0000 BOID"))  # running jobs can still owe 6
    row = await w.row(t)
    assert (row.owed, row.reserved, row.withdrawable) == (boid("2.0000 BOID"), boid("6.0000 BOID"), boid("2.0000 BOID"))
    with pytest.raises(ChainAssertion, match="free escrow: 2.0000 BOID is neither owed nor reserved"):
        await w.user.withdraw(t.owner, t.name, boid("2.0001 BOID"))
    assert await w.row(t) == row
    await w.user.withdraw(t.owner, t.name, boid("2.0000 BOID"))  # what is free, and not a unit more
    with pytest.raises(ChainAssertion, match="free escrow: 0.0000 BOID"):
        await w.user.withdraw(t.owner, t.name, boid("0.0001 BOID"))
    # the job's work is recorded: it consumes the reservation, owed + reserved stays covered
    await w.record(t, [(w.a.workers[1], 5 * H)])
    row = await w.row(t)
    assert (row.balance, row.owed, row.reserved) == (boid("8.0000 BOID"), boid("7.0000 BOID"), boid("1.0000 BOID"))
    for wk in w.a.workers:  # everyone who worked is paid in full
        await w.op.payout(t.owner, t.name, wk)
    # the job finished: the operator lowers the reservation and the owner takes the rest
    await w.op.reserve(t.owner, t.name, boid("0.0000 BOID"))
    await w.user.withdraw(t.owner, t.name, boid("1.0000 BOID"))
    row = await w.row(t)
    assert (row.balance, row.owed, row.reserved, row.paid, row.withdrawn) == (
        boid("0.0000 BOID"), boid("0.0000 BOID"), boid("0.0000 BOID"), boid("7.0000 BOID"), boid("3.0000 BOID"))
    assert row.invariant_holds()


async def test_only_the_operator_can_reserve_and_it_moves_no_money(w):
    t = await w.protocol(deposit="5.0000 BOID")
    for signer in (f"{t.owner}@active", f"{t.researcher}@active", f"{w.a.workers[0]}@active", f"{w.a.fund}@active"):
        with pytest.raises(MissingAuthority):  # the owner cannot lower it to withdraw; outsiders cannot raise it
            await w.user.reserve(t.owner, t.name, boid("1.0000 BOID"), signer=signer)
    assert (await w.row(t)).reserved == boid("0.0000 BOID")
    before = {a: await w.balance(a) for a in (REG, t.owner, w.cw.accounts.operator)}
    await w.op.reserve(t.owner, t.name, boid("5.0000 BOID"))
    assert {a: await w.balance(a) for a in (REG, t.owner, w.cw.accounts.operator)} == before
    row = await w.row(t)
    assert (row.balance, row.reserved, row.deposited, row.withdrawn) == (
        boid("5.0000 BOID"), boid("5.0000 BOID"), boid("5.0000 BOID"), boid("0.0000 BOID"))
    with pytest.raises(MissingAuthority):  # the operator's key still cannot withdraw
        await w.op.withdraw(t.owner, t.name, boid("1.0000 BOID"), signer=f"{w.cw.accounts.operator}@operate")


async def test_reserve_sets_never_adds_and_cannot_exceed_the_free_escrow(w):
    t = await w.protocol(deposit="5.0000 BOID")
    await w.record(t, [(w.a.workers[0], 2 * H)])  # free = 3
    with pytest.raises(ChainAssertion, match=r"reservation exceeds the free escrow \(balance - owed\)"):
        await w.op.reserve(t.owner, t.name, boid("3.0001 BOID"))
    for q in ("2.0000 BOID", "3.0000 BOID", "1.5000 BOID"):  # set, not added: the last one holds
        await w.op.reserve(t.owner, t.name, boid(q))
    assert (await w.row(t)).reserved == boid("1.5000 BOID")
    with pytest.raises(ChainAssertion, match="reservation must not be negative"):
        await w.op.reserve(t.owner, t.name, boid("-0.0001 BOID"))
    with pytest.raises(ChainAssertion, match="symbol"):
        await w.op.reserve(t.owner, t.name, Asset.parse("1.000 BOID"))
    with pytest.raises(ChainAssertion, match="unknown protocol"):
        await w.op.reserve(t.owner, "nosuchproto", boid("0.0000 BOID"))
    assert (await w.row(t)).reserved == boid("1.5000 BOID")


async def test_researcher_consent(w):
    t = await w.protocol(accept=False, deposit=None)
    with pytest.raises(ChainAssertion, match="has not accepted"):
        await w.record(t, [(w.a.workers[0], H)])
    with pytest.raises(MissingAuthority):
        await w.user.accept_protocol(t.owner, t.name, t.researcher, signer=f"{t.owner}@active")
    await w.user.accept_protocol(t.owner, t.name, t.researcher)
    await w.record(t, [(w.a.workers[0], H)])
    with pytest.raises(ChainAssertion, match="invalid name Bad-Name"):
        await w.user.deposit(t.owner, t.owner, "Bad-Name", boid("1.0000 BOID"))
    for memo in ("", t.name, f"{t.owner}/{t.name}.", f"{t.owner}/nosuchproto"):  # a deposit must name a protocol
        with pytest.raises(ChainAssertion, match="deposit memo must be OWNER/PROTOCOL|unknown protocol"):
            await w.rpc.push_action(TOKEN, "transfer", {"from": t.owner, "to": REG, "quantity": "1.0000 BOID",
                                                        "memo": memo}, f"{t.owner}@active")
    assert (await w.row(t)).deposited == boid("0.0000 BOID")


async def test_deregistering_refused_while_owed(w):
    t = await w.protocol(deposit="5.0000 BOID")
    wk = w.a.workers[0]
    await w.record(t, [(wk, H)])
    with pytest.raises(ChainAssertion, match="worker is owed pay"):
        await w.op.unregister("worker", wk, t.owner, t.name)
    await w.op.payout(t.owner, t.name, wk)
    assert await w.op.unregister("worker", wk, t.owner, t.name)
    assert not await w.op.unregister("worker", wk, t.owner, t.name)


# --- the invariant, after random sequences ------------------------------------------------------------

ops = st.lists(st.one_of(
    st.tuples(st.just("deposit"), st.integers(1, 50_000)),
    st.tuples(st.just("record"), st.integers(0, 1), st.integers(0, 3 * H), st.sampled_from(["worker", "dispatcher"])),
    st.tuples(st.just("rate"), st.integers(0, 30_000), st.integers(0, 30_000)),
    st.tuples(st.just("payout"), st.integers(0, 2)),
    st.tuples(st.just("withdraw"), st.integers(1, 60_000)),
    st.tuples(st.just("reserve"), st.integers(0, 60_000)),
), min_size=1, max_size=10)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=ops)
def test_money_invariant_after_random_sequences(chain_world, steps):
    """deposited = paid + owed + withdrawn + free escrow, exactly, after every step; a withdrawal takes
    at most balance - owed - reserved, a reservation at most balance - owed; owed equals the
    sum of the contributors' rows and an exact Python model (pay fixed at each record's rate with
    carry); the registry's token balance equals the sum of its eosio.token protocols' balances."""
    asyncio.run(_random_sequence(chain_world, steps))


async def _random_sequence(chain_world, steps):
    async with chain_world.client() as rpc:
        actors = await chain_world.actors(rpc, workers=2)
        async with chain_world.operator_client() as op_rpc:
            w = World(chain_world, actors, rpc, op_rpc)
            t = await w.protocol(worker="0.0100 BOID", dispatcher="0.0033 BOID", deposit=None)
            sym = boid("0.0001 BOID").symbol
            contributors = [*actors.workers, actors.dispatcher]
            rates = {"worker": 100, "dispatcher": 33}
            owed = dict.fromkeys(contributors, 0)
            carry = dict.fromkeys(contributors, 0)
            model = {"deposited": 0, "paid": 0, "withdrawn": 0, "balance": 0, "reserved": 0}
            for step in steps:
                kind = step[0]
                try:
                    if kind == "deposit":
                        await w.user.deposit(t.owner, t.owner, t.name, Asset(step[1], sym))
                        model["deposited"] += step[1]
                        model["balance"] += step[1]
                    elif kind == "record":
                        who = actors.dispatcher if step[3] == "dispatcher" else actors.workers[step[1]]
                        await w.record(t, [(who, step[2])], type=step[3])
                        amount, carry[who] = divmod(step[2] * rates[step[3]] + carry[who], H)
                        owed[who] += amount
                        model["reserved"] = max(0, model["reserved"] - amount)  # recorded work consumes it
                    elif kind == "rate":
                        rates = {"worker": step[1], "dispatcher": step[2]}
                        await w.user.update_protocol(terms(actors, name=t.name, worker=str(Asset(step[1], sym)),
                                                           dispatcher=str(Asset(step[2], sym))))
                    elif kind == "payout":
                        who = contributors[step[1]]
                        due = owed[who]
                        result = await w.op.payout(t.owner, t.name, who)
                        if result is None:  # "nothing to pay"
                            assert due == 0
                        else:
                            assert 0 < due <= model["balance"], "paid although nothing or too much was due"
                            assert result.amount == Asset(due, sym)
                            owed[who] = 0
                            model["paid"] += due
                            model["balance"] -= due
                    elif kind == "withdraw":
                        await w.user.withdraw(t.owner, t.name, Asset(step[1], sym))
                        assert step[1] <= model["balance"] - sum(owed.values()) - model["reserved"], \
                            "withdrew escrow that is owed or reserved"
                        model["withdrawn"] += step[1]
                        model["balance"] -= step[1]
                    elif kind == "reserve":
                        await w.op.reserve(t.owner, t.name, Asset(step[1], sym))
                        assert step[1] <= model["balance"] - sum(owed.values()), "reserved more than the free escrow"
                        model["reserved"] = step[1]
                except ChainAssertion as e:
                    # refused: only where the model says it must be
                    if kind == "payout":
                        due = owed[contributors[step[1]]]
                        assert due == 0 or due > model["balance"], e
                    elif kind == "withdraw":
                        assert step[1] > model["balance"] - sum(owed.values()) - model["reserved"], e
                    elif kind == "reserve":
                        assert step[1] > model["balance"] - sum(owed.values()), e
                    else:
                        raise
                row = await w.row(t)
                assert row.invariant_holds()
                assert row.deposited.amount == model["deposited"]
                assert row.paid.amount == model["paid"] and row.withdrawn.amount == model["withdrawn"]
                assert row.balance.amount == model["balance"]
                assert row.reserved.amount == model["reserved"]
                assert row.reserved.amount == 0 or row.owed.amount + row.reserved.amount <= row.balance.amount
                accts = {a.account: a for a in await w.user.acct_rows(row.id)}
                assert row.owed.amount == sum(owed.values()) == sum(a.owed.amount for a in accts.values())
                assert {a: x.owed.amount for a, x in accts.items()} == {a: v for a, v in owed.items() if a in accts}
                assert row.deposited.amount == row.paid.amount + row.owed.amount + row.withdrawn.amount + row.free.amount
            held = await w.balance(REG)
            total = Asset(0, sym)
            async for p in w.user.protocols():
                if p.tokencontract == TOKEN and p.symbol == sym:
                    total = total + p.balance
            assert held == total
