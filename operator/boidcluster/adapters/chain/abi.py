"""Strict client-side ABI (de)serialization: the node has no abi_json_to_bin, and the PyPI
clients we could use corrupt non-ASCII strings or drop missing fields silently.

An `Abi` is built from the ABI JSON a contract publishes. `encode(type, value)` refuses missing and
extra struct fields, out-of-range integers and malformed names, naming the field path
(`newjob.id`); `decode` refuses truncated input and trailing bytes. Values use the node's JSON
shapes (names and symbol codes as str, assets as model `Asset`, bytes/checksums as hex str) so
that what we decode compares directly with what get_table_rows returns; integers are Python ints,
and times decode to aware UTC datetimes.
"""

from __future__ import annotations

import datetime as _dt
import re
import struct
from typing import Any, Callable

from boidcluster.model.types import Asset, Symbol

from .keys import (
    public_key_from_bytes,
    public_key_to_bytes,
    signature_from_bytes,
    signature_to_bytes,
)


class AbiError(ValueError):
    """A value does not fit its ABI type; `path` names the field (e.g. `newjob.id`)."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path or "<value>"
        self.reason = message
        super().__init__(f"{self.path}: {message}")


# --- names ------------------------------------------------------------------------------------

_NAME_CHARS = ".12345abcdefghijklmnopqrstuvwxyz"


def name_to_int(name: str) -> int:
    """eosio::name string -> uint64. Strict: only normalized names (what the node prints)."""
    if not isinstance(name, str):
        raise ValueError(f"a name must be a string, not {type(name).__name__}")
    if len(name) > 13:
        raise ValueError(f"name {name!r} is longer than 13 characters")
    value = 0
    for i, ch in enumerate(name):
        idx = _NAME_CHARS.find(ch)
        if idx < 0:
            raise ValueError(f"name {name!r} has character {ch!r}; use a-z, 1-5 and '.'")
        if i < 12:
            value |= (idx & 0x1F) << (64 - 5 * (i + 1))
        else:
            if idx > 0x0F:
                raise ValueError(f"name {name!r}: the 13th character must be one of .1-5a-j")
            value |= idx
    if int_to_name(value) != name:
        raise ValueError(f"name {name!r} is not normalized (no trailing '.')")
    return value


def int_to_name(value: int) -> str:
    """uint64 -> eosio::name string (trailing dots trimmed, as the node prints)."""
    if not 0 <= value < 1 << 64:
        raise ValueError(f"name value {value} is out of uint64 range")
    chars = []
    tmp = value
    for i in range(13):
        if i == 0:
            c = _NAME_CHARS[tmp & 0x0F]
            tmp >>= 4
        else:
            c = _NAME_CHARS[tmp & 0x1F]
            tmp >>= 5
        chars.append(c)
    return "".join(reversed(chars)).rstrip(".")


# --- primitive codecs -------------------------------------------------------------------------

_INTS = {
    "int8": (1, True), "uint8": (1, False), "int16": (2, True), "uint16": (2, False),
    "int32": (4, True), "uint32": (4, False), "int64": (8, True), "uint64": (8, False),
    "int128": (16, True), "uint128": (16, False),
}
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_BLOCK_EPOCH_MS = 946684800000  # 2000-01-01T00:00:00Z, block_timestamp_type epoch
_CHECKSUMS = {"checksum160": 20, "checksum256": 32, "checksum512": 64}
_SYMBOL_CODE = re.compile(r"^[A-Z]{1,7}$")


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(bytes(data))
        self.pos = 0

    def take(self, n: int, path: str) -> bytes:
        if self.pos + n > len(self.data):
            raise AbiError(path, f"input ends early (need {n} bytes at offset {self.pos})")
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return out

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos


def _as_int(value: Any, path: str) -> int:
    if isinstance(value, bool):
        raise AbiError(path, "expected an integer, got a bool")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    raise AbiError(path, f"expected an integer, got {type(value).__name__} {value!r}")


def encode_varuint32(value: int, path: str = "") -> bytes:
    if not 0 <= value < 1 << 32:
        raise AbiError(path, f"{value} is out of varuint32 range")
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def decode_varuint32(r: Reader, path: str = "") -> int:
    value = shift = 0
    for _ in range(5):
        b = r.take(1, path)[0]
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            if value >= 1 << 32:
                raise AbiError(path, "varuint32 overflows 32 bits")
            return value
        shift += 7
    raise AbiError(path, "varuint32 is longer than 5 bytes")


def _parse_time(value: Any, path: str) -> _dt.datetime:
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value
    if isinstance(value, str):
        text = value.strip().removesuffix("Z")
        try:
            t = _dt.datetime.fromisoformat(text)
        except ValueError:
            raise AbiError(path, f"{value!r} is not an ISO time like 2024-01-01T00:00:00.000") from None
        if t.tzinfo is None:
            t = t.replace(tzinfo=_dt.timezone.utc)
        return t
    raise AbiError(path, f"expected a time (datetime or ISO string), got {type(value).__name__}")


def _micros(t: _dt.datetime) -> int:
    d = t - _EPOCH
    return (d.days * 86400 + d.seconds) * 1_000_000 + d.microseconds


def _from_micros(us: int) -> _dt.datetime:
    return _EPOCH + _dt.timedelta(microseconds=us)


def _hex(value: Any, path: str, size: int | None = None) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
    elif isinstance(value, str):
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raise AbiError(path, f"{value[:40]!r} is not a hex string") from None
    else:
        raise AbiError(path, f"expected hex string or bytes, got {type(value).__name__}")
    if size is not None and len(raw) != size:
        raise AbiError(path, f"expected {size} bytes, got {len(raw)}")
    return raw


def _symbol_code_int(code: str, path: str) -> int:
    if not isinstance(code, str) or not _SYMBOL_CODE.match(code):
        raise AbiError(path, f"{code!r} is not a symbol code (1-7 capital letters)")
    return int.from_bytes(code.encode().ljust(8, b"\0"), "little")


def _symbol_code_str(raw: int, path: str) -> str:
    text = raw.to_bytes(8, "little").rstrip(b"\0")
    try:
        code = text.decode("ascii")
    except UnicodeDecodeError:
        raise AbiError(path, "symbol code is not ASCII") from None
    if not _SYMBOL_CODE.match(code):
        raise AbiError(path, f"{code!r} is not a valid symbol code")
    return code


def _symbol(value: Any, path: str) -> Symbol:
    if isinstance(value, Symbol):
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"(\d+),([A-Z]{1,7})", value.strip())
        if m:
            try:
                return Symbol(m.group(2), int(m.group(1)))
            except ValueError as e:
                raise AbiError(path, str(e)) from None
    raise AbiError(path, f"expected a symbol like '4,BOID', got {value!r}")


def _enc_symbol(s: Symbol, path: str) -> bytes:
    return bytes([s.precision]) + _symbol_code_int(s.code, path).to_bytes(8, "little")[:7]


def _dec_symbol(r: Reader, path: str) -> Symbol:
    raw = r.take(8, path)
    code = _symbol_code_str(int.from_bytes(raw[1:] + b"\0", "little"), path)
    try:
        return Symbol(code, raw[0])
    except ValueError as e:
        raise AbiError(path, str(e)) from None


def _enc_asset(value: Any, path: str) -> bytes:
    if not isinstance(value, Asset):
        try:
            value = Asset.parse(value)
        except ValueError as e:
            raise AbiError(path, str(e)) from None
    return struct.pack("<q", value.amount) + _enc_symbol(value.symbol, path)


def _dec_asset(r: Reader, path: str) -> Asset:
    amount = struct.unpack("<q", r.take(8, path))[0]
    sym = _dec_symbol(r, path)
    try:
        return Asset(amount, sym)
    except ValueError as e:
        raise AbiError(path, str(e)) from None


def _enc_string(value: Any, path: str) -> bytes:
    if not isinstance(value, str):
        raise AbiError(path, f"expected a string, got {type(value).__name__}")
    raw = value.encode("utf-8")
    return encode_varuint32(len(raw), path) + raw


def _dec_string(r: Reader, path: str) -> str:
    raw = r.take(decode_varuint32(r, path), path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise AbiError(path, "string is not valid UTF-8") from None


def _builtin_encoders() -> dict[str, Callable[[Any, str], bytes]]:
    enc: dict[str, Callable[[Any, str], bytes]] = {}

    def int_enc(size: int, signed: bool) -> Callable[[Any, str], bytes]:
        lo, hi = (-(1 << (8 * size - 1)), (1 << (8 * size - 1)) - 1) if signed else (0, (1 << (8 * size)) - 1)

        def f(v: Any, path: str) -> bytes:
            n = _as_int(v, path)
            if not lo <= n <= hi:
                raise AbiError(path, f"{n} is out of range for {'' if signed else 'u'}int{8 * size}")
            return n.to_bytes(size, "little", signed=signed)

        return f

    for t, (size, signed) in _INTS.items():
        enc[t] = int_enc(size, signed)

    def bool_enc(v: Any, path: str) -> bytes:
        # the node prints bools as 0/1, so those two ints are accepted; nothing else is
        if not isinstance(v, bool) and not (type(v) is int and v in (0, 1)):
            raise AbiError(path, f"expected a bool, got {type(v).__name__} {v!r}")
        return b"\1" if v else b"\0"

    def varint32_enc(v: Any, path: str) -> bytes:
        n = _as_int(v, path)
        if not -(1 << 31) <= n < 1 << 31:
            raise AbiError(path, f"{n} is out of varint32 range")
        return encode_varuint32(((n << 1) ^ (n >> 31)) & 0xFFFFFFFF, path)

    def float_enc(fmt: str) -> Callable[[Any, str], bytes]:
        def f(v: Any, path: str) -> bytes:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise AbiError(path, f"expected a number, got {type(v).__name__}")
            return struct.pack(fmt, float(v))

        return f

    def name_enc(v: Any, path: str) -> bytes:
        try:
            return name_to_int(v).to_bytes(8, "little")
        except ValueError as e:
            raise AbiError(path, str(e)) from None

    def bytes_enc(v: Any, path: str) -> bytes:
        raw = _hex(v, path)
        return encode_varuint32(len(raw), path) + raw

    def key_enc(conv: Callable[[str], bytes]) -> Callable[[Any, str], bytes]:
        def f(v: Any, path: str) -> bytes:
            if not isinstance(v, str):
                raise AbiError(path, f"expected a key/signature string, got {type(v).__name__}")
            try:
                return conv(v)
            except ValueError as e:
                raise AbiError(path, str(e)) from None

        return f

    def time_point_enc(v: Any, path: str) -> bytes:
        return struct.pack("<q", _micros(_parse_time(v, path)))

    def time_point_sec_enc(v: Any, path: str) -> bytes:
        t = _parse_time(v, path)
        us = _micros(t)
        if us % 1_000_000 or not 0 <= us // 1_000_000 < 1 << 32:
            raise AbiError(path, f"{v!r} is not a whole second within time_point_sec range")
        return struct.pack("<I", us // 1_000_000)

    def block_ts_enc(v: Any, path: str) -> bytes:
        us = _micros(_parse_time(v, path))
        ms = us // 1000 - _BLOCK_EPOCH_MS
        if us % 500_000 or not 0 <= ms // 500 < 1 << 32:
            raise AbiError(path, f"{v!r} is not a half-second block timestamp in range")
        return struct.pack("<I", ms // 500)

    enc.update(
        bool=bool_enc,
        varuint32=lambda v, p: encode_varuint32(_as_int(v, p), p),
        varint32=varint32_enc,
        float32=float_enc("<f"),
        float64=float_enc("<d"),
        name=name_enc,
        string=_enc_string,
        bytes=bytes_enc,
        public_key=key_enc(public_key_to_bytes),
        signature=key_enc(signature_to_bytes),
        symbol=lambda v, p: _enc_symbol(_symbol(v, p), p),
        symbol_code=lambda v, p: _symbol_code_int(v, p).to_bytes(8, "little"),
        asset=_enc_asset,
        time_point=time_point_enc,
        time_point_sec=time_point_sec_enc,
        block_timestamp_type=block_ts_enc,
    )
    for t, size in _CHECKSUMS.items():
        enc[t] = (lambda s: lambda v, p: _hex(v, p, s))(size)
    return enc


def _builtin_decoders() -> dict[str, Callable[[Reader, str], Any]]:
    dec: dict[str, Callable[[Reader, str], Any]] = {}
    for t, (size, signed) in _INTS.items():
        dec[t] = (lambda s, g: lambda r, p: int.from_bytes(r.take(s, p), "little", signed=g))(size, signed)

    def bool_dec(r: Reader, path: str) -> bool:
        b = r.take(1, path)[0]
        if b > 1:
            raise AbiError(path, f"bool byte is {b}, not 0 or 1")
        return b == 1

    def varint32_dec(r: Reader, path: str) -> int:
        u = decode_varuint32(r, path)
        return (u >> 1) ^ -(u & 1)

    def key_dec(conv: Callable[[bytes], tuple[str, int]]) -> Callable[[Reader, str], str]:
        def f(r: Reader, path: str) -> str:
            rest = bytes(r.data[r.pos :])
            try:
                text, used = conv(rest)
            except ValueError as e:
                raise AbiError(path, str(e)) from None
            r.take(used, path)
            return text

        return f

    def block_ts_dec(r: Reader, path: str) -> _dt.datetime:
        slot = struct.unpack("<I", r.take(4, path))[0]
        return _from_micros((slot * 500 + _BLOCK_EPOCH_MS) * 1000)

    dec.update(
        bool=bool_dec,
        varuint32=decode_varuint32,
        varint32=varint32_dec,
        float32=lambda r, p: struct.unpack("<f", r.take(4, p))[0],
        float64=lambda r, p: struct.unpack("<d", r.take(8, p))[0],
        name=lambda r, p: int_to_name(int.from_bytes(r.take(8, p), "little")),
        string=_dec_string,
        bytes=lambda r, p: r.take(decode_varuint32(r, p), p).hex(),
        public_key=key_dec(public_key_from_bytes),
        signature=key_dec(signature_from_bytes),
        symbol=_dec_symbol,
        symbol_code=lambda r, p: _symbol_code_str(int.from_bytes(r.take(8, p), "little"), p),
        asset=_dec_asset,
        time_point=lambda r, p: _from_micros(struct.unpack("<q", r.take(8, p))[0]),
        time_point_sec=lambda r, p: _from_micros(struct.unpack("<I", r.take(4, p))[0] * 1_000_000),
        block_timestamp_type=block_ts_dec,
    )
    for t, size in _CHECKSUMS.items():
        dec[t] = (lambda s: lambda r, p: r.take(s, p).hex())(size)
    return dec


_ENC = _builtin_encoders()
_DEC = _builtin_decoders()
BUILTIN_TYPES = frozenset(_ENC)


# --- the ABI-driven codec ---------------------------------------------------------------------


class Abi:
    """Encoder/decoder for the types of one ABI (JSON dict as get_abi returns it)."""

    def __init__(self, abi: dict[str, Any]) -> None:
        if not isinstance(abi, dict):
            raise AbiError("abi", "an ABI is a JSON object")
        self.raw = abi
        self.typedefs = {t["new_type_name"]: t["type"] for t in abi.get("types", [])}
        self.structs: dict[str, dict[str, Any]] = {s["name"]: s for s in abi.get("structs", [])}
        self.variants = {v["name"]: list(v["types"]) for v in abi.get("variants", []) or []}
        self.actions = {a["name"]: a["type"] for a in abi.get("actions", [])}
        self.tables = {t["name"]: t["type"] for t in abi.get("tables", [])}

    # type resolution
    def resolve(self, type_name: str) -> str:
        seen = set()
        while type_name in self.typedefs:
            if type_name in seen:
                raise AbiError(type_name, "circular type alias")
            seen.add(type_name)
            type_name = self.typedefs[type_name]
        return type_name

    def _fields(self, struct_name: str, path: str) -> list[tuple[str, str]]:
        s = self.structs[struct_name]
        out: list[tuple[str, str]] = []
        base = s.get("base") or ""
        if base:
            rb = self.resolve(base)
            if rb not in self.structs:
                raise AbiError(path, f"base {base!r} of struct {struct_name!r} is not a struct")
            out.extend(self._fields(rb, path))
        out.extend((f["name"], f["type"]) for f in s.get("fields", []))
        return out

    def known(self, type_name: str) -> bool:
        t = self.resolve(type_name)
        while t.endswith(("[]", "?", "$")):
            t = self.resolve(t[:-2] if t.endswith("[]") else t[:-1])
        return t in _ENC or t in self.structs or t in self.variants

    # encoding
    def encode(self, type_name: str, value: Any, path: str | None = None) -> bytes:
        out = bytearray()
        self._enc(type_name, value, path if path is not None else type_name, out)
        return bytes(out)

    def _enc(self, t: str, value: Any, path: str, out: bytearray) -> None:
        t = self.resolve(t)
        if t.endswith("$"):
            self._enc(t[:-1], value, path, out)
            return
        if t.endswith("?"):
            if value is None:
                out.append(0)
            else:
                out.append(1)
                self._enc(t[:-1], value, path, out)
            return
        if t.endswith("[]"):
            if isinstance(value, (str, bytes, dict)) or not isinstance(value, (list, tuple)):
                raise AbiError(path, f"expected a list for {t}, got {type(value).__name__}")
            out += encode_varuint32(len(value), path)
            for i, item in enumerate(value):
                self._enc(t[:-2], item, f"{path}[{i}]", out)
            return
        rt = self.resolve(t)
        if rt in _ENC:
            out += _ENC[rt](value, path)
        elif rt in self.structs:
            self._enc_struct(rt, value, path, out)
        elif rt in self.variants:
            self._enc_variant(rt, value, path, out)
        else:
            raise AbiError(path, f"unknown type {t!r}")

    def _enc_struct(self, name: str, value: Any, path: str, out: bytearray) -> None:
        if not isinstance(value, dict):
            raise AbiError(path, f"expected an object for struct {name}, got {type(value).__name__}")
        fields = self._fields(name, path)
        names = [f for f, _ in fields]
        extra = [k for k in value if k not in names]
        if extra:
            raise AbiError(f"{path}.{extra[0]}", f"unknown field (struct {name} has: {', '.join(names)})")
        absent_ext = None
        for fname, ftype in fields:
            fpath = f"{path}.{fname}"
            if fname not in value:
                if ftype.endswith("$"):
                    absent_ext = absent_ext or fname
                    continue
                raise AbiError(fpath, f"missing field (type {ftype})")
            if absent_ext is not None:
                raise AbiError(fpath, f"binary extension set while earlier extension {absent_ext!r} is absent")
            self._enc(ftype, value[fname], fpath, out)

    def _enc_variant(self, name: str, value: Any, path: str, out: bytearray) -> None:
        types = self.variants[name]
        if not (isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], str)):
            raise AbiError(path, f"a variant {name} is [type_name, value]")
        if value[0] not in types:
            raise AbiError(path, f"{value[0]!r} is not one of variant {name}'s types {types}")
        out += encode_varuint32(types.index(value[0]), path)
        self._enc(value[0], value[1], f"{path}<{value[0]}>", out)

    # decoding
    def decode(self, type_name: str, data: bytes, path: str | None = None) -> Any:
        r = Reader(data)
        p = path if path is not None else type_name
        value = self._dec(type_name, r, p)
        if r.remaining:
            raise AbiError(p, f"{r.remaining} trailing bytes after {type_name}")
        return value

    def _dec(self, t: str, r: Reader, path: str) -> Any:
        t = self.resolve(t)
        if t.endswith("$"):
            return self._dec(t[:-1], r, path)
        if t.endswith("?"):
            flag = r.take(1, path)[0]
            if flag > 1:
                raise AbiError(path, f"optional flag is {flag}, not 0 or 1")
            return self._dec(t[:-1], r, path) if flag else None
        if t.endswith("[]"):
            n = decode_varuint32(r, path)
            if n > r.remaining and n:
                # every element takes at least one byte: a huge count is corrupt input
                raise AbiError(path, f"array of {n} elements but only {r.remaining} bytes left")
            return [self._dec(t[:-2], r, f"{path}[{i}]") for i in range(n)]
        rt = self.resolve(t)
        if rt in _DEC:
            return _DEC[rt](r, path)
        if rt in self.structs:
            out: dict[str, Any] = {}
            for fname, ftype in self._fields(rt, path):
                if ftype.endswith("$") and not r.remaining:
                    break
                out[fname] = self._dec(ftype, r, f"{path}.{fname}")
            return out
        if rt in self.variants:
            idx = decode_varuint32(r, path)
            types = self.variants[rt]
            if idx >= len(types):
                raise AbiError(path, f"variant index {idx} out of range for {rt}")
            return [types[idx], self._dec(types[idx], r, f"{path}<{types[idx]}>")]
        raise AbiError(path, f"unknown type {t!r}")

    # actions and tables
    def action_type(self, action: str) -> str:
        try:
            return self.actions[action]
        except KeyError:
            raise AbiError(action, f"the ABI has no action {action!r} (has: {', '.join(sorted(self.actions))})") from None

    def encode_action(self, action: str, data: dict[str, Any]) -> bytes:
        return self.encode(self.action_type(action), data, path=action)

    def decode_action(self, action: str, data: bytes) -> Any:
        return self.decode(self.action_type(action), data, path=action)

    def table_type(self, table: str) -> str:
        try:
            return self.tables[table]
        except KeyError:
            raise AbiError(table, f"the ABI has no table {table!r}") from None


# --- the protocol's own types: transactions and ABIs themselves --------------------------------


def _s(name: str, *fields: tuple[str, str], base: str = "") -> dict[str, Any]:
    return {"name": name, "base": base, "fields": [{"name": n, "type": t} for n, t in fields]}


CORE_ABI = Abi(
    {
        "version": "eosio::abi/1.2",
        "types": [{"new_type_name": "account_name", "type": "name"},
                  {"new_type_name": "extensions_type", "type": "extension[]"}],
        "structs": [
            _s("permission_level", ("actor", "name"), ("permission", "name")),
            _s("action", ("account", "name"), ("name", "name"),
               ("authorization", "permission_level[]"), ("data", "bytes")),
            _s("extension", ("type", "uint16"), ("data", "bytes")),
            _s("transaction_header", ("expiration", "time_point_sec"), ("ref_block_num", "uint16"),
               ("ref_block_prefix", "uint32"), ("max_net_usage_words", "varuint32"),
               ("max_cpu_usage_ms", "uint8"), ("delay_sec", "varuint32")),
            _s("transaction", ("context_free_actions", "action[]"), ("actions", "action[]"),
               ("transaction_extensions", "extensions_type"), base="transaction_header"),
            # abi_def (Leap): what setabi carries
            _s("type_def", ("new_type_name", "string"), ("type", "string")),
            _s("field_def", ("name", "string"), ("type", "string")),
            _s("struct_def", ("name", "string"), ("base", "string"), ("fields", "field_def[]")),
            _s("action_def", ("name", "name"), ("type", "string"), ("ricardian_contract", "string")),
            _s("table_def", ("name", "name"), ("index_type", "string"), ("key_names", "string[]"),
               ("key_types", "string[]"), ("type", "string")),
            _s("clause_pair", ("id", "string"), ("body", "string")),
            _s("error_message", ("error_code", "uint64"), ("error_msg", "string")),
            _s("variant_def", ("name", "string"), ("types", "string[]")),
            _s("action_result_def", ("name", "name"), ("result_type", "string")),
            _s("abi_def", ("version", "string"), ("types", "type_def[]"), ("structs", "struct_def[]"),
               ("actions", "action_def[]"), ("tables", "table_def[]"),
               ("ricardian_clauses", "clause_pair[]"), ("error_messages", "error_message[]"),
               ("abi_extensions", "extension[]"), ("variants", "variant_def[]$"),
               ("action_results", "action_result_def[]$")),
        ],
    }
)


def abi_to_bin(abi: dict[str, Any]) -> bytes:
    """Serialize an ABI JSON (as a build emits it) to the binary that `setabi` carries.

    Optional members a build may omit are filled with their empty defaults; comments
    (`____comment`) are dropped; other unknown top-level keys are an error (an ABI we cannot represent must not be deployed half-way)."""
    defaults: dict[str, Any] = {
        "types": [], "structs": [], "actions": [], "tables": [], "ricardian_clauses": [],
        "error_messages": [], "abi_extensions": [], "variants": [], "action_results": [],
    }
    full = {**defaults, **{k: v for k, v in abi.items() if not k.startswith("__")}}
    full["structs"] = [{"base": "", **s} for s in full["structs"]]
    full["actions"] = [{"ricardian_contract": "", **a} for a in full["actions"]]
    full["tables"] = [
        {"index_type": "i64", "key_names": [], "key_types": [], **t} for t in full["tables"]
    ]
    return CORE_ABI.encode("abi_def", full, path="abi")


def abi_from_bin(data: bytes) -> dict[str, Any]:
    return CORE_ABI.decode("abi_def", data, path="abi")
