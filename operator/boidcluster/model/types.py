"""Value types shared by every layer: EOS account names, token assets, durations.

Money is integer units of the smallest asset fraction, never a float: "1.2500 BOID" is
Asset(12500, Symbol("BOID", 4)). Durations are whole seconds parsed from "90s", "10m", "24h", "1h30m".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator, GetCoreSchemaHandler, PlainSerializer, WithJsonSchema
from pydantic_core import core_schema

# --- EOS account names -------------------------------------------------------------------------

_NAME = re.compile(r"^[a-z1-5.]{1,12}$")


def check_eos_name(value: Any) -> str:
    """An EOSIO account name: 1-12 characters of a-z, 1-5 and '.', not ending in '.'."""
    if not isinstance(value, str):
        raise ValueError(f"an EOS account name must be a string, not {type(value).__name__}")
    if not _NAME.match(value) or value.endswith("."):
        raise ValueError(
            f"{value!r} is not an EOS account name: use 1-12 characters of a-z, 1-5 and '.', "
            "not ending in '.' (e.g. 'researcher1')"
        )
    return value


EOS_NAME_PATTERN = r"^[a-z1-5.]{0,11}[a-z1-5]$"

EosName = Annotated[
    str,
    BeforeValidator(check_eos_name),
    WithJsonSchema({"type": "string", "pattern": EOS_NAME_PATTERN, "maxLength": 12}),
]

# --- Symbols and assets ------------------------------------------------------------------------

_SYMBOL_CODE = re.compile(r"^[A-Z]{1,7}$")
_ASSET = re.compile(r"^(-?)(\d+)(?:\.(\d+))?\s+([A-Z]{1,7})$")
MAX_ASSET_AMOUNT = (1 << 62) - 1  # eosio::asset::max_amount


@dataclass(frozen=True, order=True)
class Symbol:
    code: str
    precision: int

    def __post_init__(self) -> None:
        if not _SYMBOL_CODE.match(self.code):
            raise ValueError(f"{self.code!r} is not a token symbol: use 1-7 capital letters A-Z")
        if not 0 <= self.precision <= 18:
            raise ValueError(f"symbol precision {self.precision} is out of range 0..18")

    def __str__(self) -> str:
        return f"{self.precision},{self.code}"


@dataclass(frozen=True)
class Asset:
    """An amount in the smallest units of `symbol` (integer), as eosio::asset holds it."""

    amount: int
    symbol: Symbol

    def __post_init__(self) -> None:
        if not isinstance(self.amount, int) or isinstance(self.amount, bool):
            raise ValueError("an asset amount is an integer number of the smallest units")
        if abs(self.amount) > MAX_ASSET_AMOUNT:
            raise ValueError(f"asset amount {self.amount} is out of range (|amount| < 2^62)")

    @classmethod
    def parse(cls, text: Any) -> "Asset":
        if isinstance(text, Asset):
            return text
        if not isinstance(text, str):
            raise ValueError(
                f"an asset is a string like '1.0000 BOID', not {type(text).__name__} {text!r}"
                " (write money as a quoted string, never a float)"
            )
        m = _ASSET.match(text.strip())
        if not m:
            raise ValueError(
                f"{text!r} is not an asset: write '<amount> <SYMBOL>' with the symbol's precision, "
                "e.g. '1.0000 BOID' (symbol of 1-7 capital letters)"
            )
        sign, whole, frac, code = m.groups()
        frac = frac or ""
        amount = int(whole + frac) * (-1 if sign else 1)
        return cls(amount, Symbol(code, len(frac)))

    def __str__(self) -> str:
        p = self.symbol.precision
        sign = "-" if self.amount < 0 else ""
        digits = str(abs(self.amount)).rjust(p + 1, "0")
        whole, frac = (digits[:-p], digits[-p:]) if p else (digits, "")
        return f"{sign}{whole}{'.' + frac if p else ''} {self.symbol.code}"

    def _same(self, other: "Asset") -> None:
        if self.symbol != other.symbol:
            raise ValueError(f"cannot combine {self} and {other}: different symbols")

    def __add__(self, other: "Asset") -> "Asset":
        self._same(other)
        return Asset(self.amount + other.amount, self.symbol)

    def __sub__(self, other: "Asset") -> "Asset":
        self._same(other)
        return Asset(self.amount - other.amount, self.symbol)

    def __lt__(self, other: "Asset") -> bool:
        self._same(other)
        return self.amount < other.amount

    def __le__(self, other: "Asset") -> bool:
        self._same(other)
        return self.amount <= other.amount

    @classmethod
    def __get_pydantic_core_schema__(cls, _source: Any, _handler: GetCoreSchemaHandler):
        return core_schema.no_info_plain_validator_function(
            cls.parse,
            json_schema_input_schema=core_schema.str_schema(pattern=_ASSET.pattern),
            serialization=core_schema.plain_serializer_function_ser_schema(str),
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, _schema: Any, _handler: Any) -> dict[str, Any]:
        return {"type": "string", "pattern": _ASSET.pattern, "examples": ["1.0000 BOID"]}


# --- Durations ---------------------------------------------------------------------------------

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(value: Any) -> int:
    """Whole seconds from '90s', '10m', '24h', '2d', '1h30m' (a bare integer means seconds)."""
    if isinstance(value, bool):
        raise ValueError("a duration is a string like '10m' or '24h'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return value
    if isinstance(value, str):
        m = _DURATION.match(value.strip())
        if m and any(m.groups()):
            d, h, mi, s = (int(g or 0) for g in m.groups())
            return ((d * 24 + h) * 60 + mi) * 60 + s
    raise ValueError(
        f"{value!r} is not a duration: write a number with a unit, e.g. '90s', '10m', '24h', '1h30m'"
    )


def format_duration(seconds: int) -> str:
    if seconds == 0:
        return "0s"
    out = []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):  # Go style: hours are the largest
        n, seconds = divmod(seconds, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)


# Written as a string ("10m") or a bare integer of seconds, so the schema says int-or-string
# (as Kubernetes does for such fields); held as int seconds, shown as the short string.
Duration = Annotated[
    int,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": r"^(?=\d)(\d+d)?(\d+h)?(\d+m)?(\d+s)?$"},
            ],
            "x-kubernetes-int-or-string": True,
            "examples": ["90s", "10m", "24h", "1h30m"],
        }
    ),
]
