"""Async HTTP RPC client for an Antelope/EOSIO node, with typed errors and careful retries.

Why it is shaped so: the node cannot serialize for us (no abi_json_to_bin), so actions are packed
here with `Abi` and signed with a `KeyRing`. Chain failures become typed exceptions carrying the
contract's own assertion text, so a reconciler can tell "unit already recorded" from an outage.
Only transient failures are retried (connection errors, HTTP 5xx that are not chain errors, expired
or deadline-exceeded transactions); a retried push resends the same signed bytes, so an ambiguous
timeout can never apply a transaction twice; only an expired transaction is rebuilt.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import hashlib
import logging
import time
from collections import OrderedDict
from typing import Any, AsyncIterator, Iterable, Mapping, Sequence

import httpx
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from .abi import CORE_ABI, Abi, AbiError
from .keys import KeyRing, transaction_digest

log = logging.getLogger(__name__)

# --- errors -----------------------------------------------------------------------------------


class ChainError(Exception):
    """A request to the chain failed. `code`/`name` are the node's error code and name."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        name: str | None = None,
        action: str | None = None,
        details: Sequence[str] = (),
    ) -> None:
        self.message = message
        self.code = code
        self.name = name
        self.action = action
        self.details = list(details)
        super().__init__(f"{message}" + (f" (in {action})" if action else ""))


class ChainAssertion(ChainError):
    """A contract rejected an action: `message` is the contract's eosio_assert/check text."""


class MissingAuthority(ChainError):
    """The transaction lacks (or has irrelevant) signatures or permissions."""


class ChainUnavailable(ChainError):
    """The node cannot be reached or keeps failing with server errors."""


class TransactionExpired(ChainError):
    """The transaction expired before it was included."""


class DuplicateTransaction(ChainError):
    """The very same signed transaction was already pushed."""


class ResourceExhausted(ChainError):
    """CPU/NET/RAM limits or the block deadline stopped the transaction."""


class NotFound(ChainError):
    """An account, ABI or table does not exist."""


class _Transient(Exception):
    def __init__(self, error: ChainError) -> None:
        self.error = error


_ASSERT_CODES = {3050003, 3050004}
_AUTH_CODES = {3090003, 3090004, 3090005, 3090006, 3040003, 3090002}
_EXPIRED_CODES = {3040005, 3040006}  # expired_tx, tx_exp_too_far (clock skew on rebuild)
_DEADLINE_CODES = {3080004, 3080006, 3081001}  # cpu usage, deadline, leeway deadline
_RESOURCE_CODES = {3080001, 3080002, 3080003, 3080005, 3080007, 3080008}
_NOT_FOUND_CODES = {3060002, 3060003, 3010001, 3110001}
_ASSERT_PREFIX = "assertion failure with message: "


def error_from_response(status: int, body: Any, action: str | None = None) -> ChainError:
    """Map a node error response to a typed ChainError."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        text = body.get("message") if isinstance(body, dict) else str(body)[:200]
        return ChainUnavailable(f"HTTP {status}: {text}", code=status)
    code = err.get("code")
    name = err.get("name")
    details = [d.get("message", "") for d in err.get("details") or [] if isinstance(d, dict)]
    first = details[0] if details else (err.get("what") or body.get("message") or "chain error")
    if code in _ASSERT_CODES:
        msg = first
        if msg.startswith(_ASSERT_PREFIX):
            msg = msg[len(_ASSERT_PREFIX) :]
        return ChainAssertion(msg, code=code, name=name, action=action, details=details)
    kind: type[ChainError] = ChainError
    if code in _AUTH_CODES:
        kind = MissingAuthority
    elif code in _EXPIRED_CODES:
        kind = TransactionExpired
    elif code == 3040008:
        kind = DuplicateTransaction
    elif code in _DEADLINE_CODES or code in _RESOURCE_CODES:
        kind = ResourceExhausted
    elif code in _NOT_FOUND_CODES or status == 404:
        kind = NotFound
    return kind(first, code=code, name=name, action=action, details=details)


# --- helpers ----------------------------------------------------------------------------------


def parse_permission(p: Any) -> dict[str, str]:
    """'actor@perm' | ('actor', 'perm') | {'actor':…, 'permission':…} -> permission_level dict."""
    if isinstance(p, str):
        actor, _, perm = p.partition("@")
        return {"actor": actor, "permission": perm or "active"}
    if isinstance(p, (tuple, list)) and len(p) == 2:
        return {"actor": p[0], "permission": p[1]}
    if isinstance(p, Mapping) and set(p) == {"actor", "permission"}:
        return {"actor": p["actor"], "permission": p["permission"]}
    raise ValueError(f"{p!r} is not a permission (use 'account@permission')")


def action(account: str, name: str, data: Any, *auth: Any) -> dict[str, Any]:
    """Build an action dict: action('eosio.token', 'transfer', {...}, 'alice@active')."""
    return {"account": account, "name": name, "authorization": [parse_permission(a) for a in auth], "data": data}


def _node_time(text: str) -> _dt.datetime:
    return _dt.datetime.fromisoformat(text).replace(tzinfo=_dt.timezone.utc)


# --- the client -------------------------------------------------------------------------------


class RpcClient:
    """One node's RPC. Use as `async with RpcClient(url, keys) as rpc:`."""

    def __init__(
        self,
        url: str,
        keys: KeyRing | None = None,
        *,
        timeout: float = 10.0,
        attempts: int = 4,
        expire_seconds: int = 120,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.keys = keys or KeyRing()
        self.attempts = attempts
        self.expire_seconds = expire_seconds
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout, transport=transport)
        self._abis: dict[str, Abi] = {}
        self._chain_id: str | None = None
        self._tapos_cache: tuple[float, dict[str, Any]] | None = None
        self._required: dict[tuple[tuple[str, str], ...], list[str]] = {}
        self._recent: OrderedDict[str, None] = OrderedDict()

    async def __aenter__(self) -> "RpcClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def __repr__(self) -> str:
        return f"RpcClient({self.url!r}, {self.keys!r})"

    # transport
    async def _post_once(self, path: str, body: Any, action: str | None) -> Any:
        try:
            resp = await self._http.post(path, json=body)
        except (httpx.TransportError,) as e:
            raise _Transient(ChainUnavailable(f"cannot reach {self.url}: {type(e).__name__}: {e}")) from None
        try:
            data = resp.json()
        except ValueError:
            data = {"message": resp.text[:200]}
        if resp.status_code < 300:
            return data
        error = error_from_response(resp.status_code, data, action)
        if type(error) is ChainUnavailable and resp.status_code >= 500:
            raise _Transient(error)
        if isinstance(error, ResourceExhausted) and error.code in _DEADLINE_CODES:
            raise _Transient(error)
        raise error

    async def call(self, path: str, body: Any = None, *, action: str | None = None) -> Any:
        """POST to /v1/...; retries transient failures, then raises the last typed error."""
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(_Transient),
                stop=stop_after_attempt(self.attempts),
                wait=wait_exponential(multiplier=0.1, max=2.0) + wait_random(0, 0.1),
                reraise=True,
            ):
                with attempt:
                    return await self._post_once(path, body if body is not None else {}, action)
        except _Transient as t:
            raise t.error from None
        raise AssertionError("unreachable")  # pragma: no cover

    # reads
    async def get_info(self) -> dict[str, Any]:
        info = await self.call("/v1/chain/get_info")
        self._chain_id = info["chain_id"]
        return info

    async def chain_id(self) -> str:
        if self._chain_id is None:
            await self.get_info()
        assert self._chain_id is not None
        return self._chain_id

    async def get_account(self, account: str) -> dict[str, Any]:
        return await self.call("/v1/chain/get_account", {"account_name": account})

    async def account_exists(self, account: str) -> bool:
        try:
            await self.get_account(account)
            return True
        except ChainError as e:
            if isinstance(e, ChainUnavailable):
                raise
            return False

    async def get_abi(self, account: str, *, refresh: bool = False) -> Abi:
        if refresh or account not in self._abis:
            data = await self.call("/v1/chain/get_abi", {"account_name": account})
            if not data.get("abi"):
                raise NotFound(f"account {account} has no ABI (no contract deployed)")
            self._abis[account] = Abi(data["abi"])
        return self._abis[account]

    def set_abi(self, account: str, abi: Abi | dict[str, Any]) -> None:
        """Use this ABI for `account` (e.g. eosio's native actions before eosio.bios exists)."""
        self._abis[account] = abi if isinstance(abi, Abi) else Abi(abi)

    def forget_abi(self, account: str) -> None:
        self._abis.pop(account, None)

    async def get_code_hash(self, account: str) -> str:
        data = await self.call("/v1/chain/get_code_hash", {"account_name": account})
        return data["code_hash"]

    async def get_raw_abi_hash(self, account: str) -> str:
        data = await self.call("/v1/chain/get_raw_abi", {"account_name": account})
        return data.get("abi_hash", "")

    async def table_rows(
        self,
        code: str,
        scope: str,
        table: str,
        *,
        lower_bound: str | int | None = None,
        upper_bound: str | int | None = None,
        page_size: int = 100,
        key_type: str | None = None,
        index_position: int | None = None,
        reverse: bool = False,
        decode: bool = True,
    ) -> AsyncIterator[dict[str, Any]]:
        """Every row in range, following `more`/`next_key` pages.

        decode=True asks for binary rows and decodes them with the contract's ABI (typed values:
        Asset, int); decode=False yields the node's own JSON."""
        abi = await self.get_abi(code) if decode else None
        row_type = abi.table_type(table) if abi else None
        lower = lower_bound
        while True:
            body: dict[str, Any] = {
                "code": code, "scope": str(scope), "table": table, "json": not decode,
                "limit": page_size, "reverse": reverse,
            }
            if lower is not None:
                body["lower_bound"] = str(lower)
            if upper_bound is not None:
                body["upper_bound"] = str(upper_bound)
            if key_type:
                body["key_type"] = key_type
            if index_position:
                body["index_position"] = str(index_position)
            page = await self.call("/v1/chain/get_table_rows", body)
            for row in page.get("rows", []):
                if abi is not None and row_type is not None:
                    yield abi.decode(row_type, bytes.fromhex(row), path=f"{code}.{table}")
                else:
                    yield row
            if not page.get("more"):
                return
            next_key = page.get("next_key")
            if next_key in (None, "", lower):
                return
            if reverse:
                upper_bound = next_key
            else:
                lower = next_key

    async def get_table_rows(self, code: str, scope: str, table: str, **kw: Any) -> list[dict[str, Any]]:
        return [row async for row in self.table_rows(code, scope, table, **kw)]

    async def get_row(self, code: str, scope: str, table: str, key: str | int, **kw: Any) -> dict[str, Any] | None:
        """The row with primary key `key` (a name or an integer), or None."""
        if isinstance(key, str) and not key.isdigit():
            kw.setdefault("key_type", "name")
        async for row in self.table_rows(code, scope, table, lower_bound=key, upper_bound=key, page_size=1, **kw):
            return row
        return None

    async def get_currency_balance(self, code: str, account: str, symbol: str | None = None) -> list[str]:
        body: dict[str, Any] = {"code": code, "account": account}
        if symbol:
            body["symbol"] = symbol
        return await self.call("/v1/chain/get_currency_balance", body)

    # writes
    async def _tapos(self) -> dict[str, Any]:
        now = time.monotonic()
        if self._tapos_cache is None or now - self._tapos_cache[0] > 10.0:
            info = await self.get_info()
            self._tapos_cache = (now, info)
        return self._tapos_cache[1]

    async def _pack_actions(self, actions: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for i, a in enumerate(actions):
            data = a["data"]
            if not isinstance(data, (bytes, bytearray)):
                abi = await self.get_abi(a["account"])
                try:
                    data = abi.encode_action(a["name"], data)
                except AbiError as e:
                    raise AbiError(f"actions[{i}].{e.path}", e.reason) from None
            out.append(
                {
                    "account": a["account"],
                    "name": a["name"],
                    "authorization": [parse_permission(p) for p in a.get("authorization", [])],
                    "data": bytes(data),
                }
            )
        return out

    async def _signing_keys(self, trx: dict[str, Any], packed_actions: list[dict[str, Any]]) -> list[str]:
        auths = tuple(sorted({(p["actor"], p["permission"]) for a in packed_actions for p in a["authorization"]}))
        labelled = [self.keys.public_key_for(f"{actor}@{perm}") for actor, perm in auths]
        if all(labelled):
            return sorted(set(labelled))  # type: ignore[arg-type]
        if auths not in self._required:
            body_trx = dict(trx)
            body_trx["expiration"] = trx["expiration"].strftime("%Y-%m-%dT%H:%M:%S")
            body_trx["actions"] = [{**a, "data": a["data"].hex()} for a in packed_actions]
            body_trx["context_free_actions"] = []
            data = await self.call(
                "/v1/chain/get_required_keys",
                {"transaction": body_trx, "available_keys": self.keys.public_keys()},
            )
            self._required[auths] = data["required_keys"]
        return self._required[auths]

    async def build_transaction(
        self, actions: Sequence[Mapping[str, Any]]
    ) -> tuple[bytes, list[str], str]:
        """Pack and sign: (packed_trx, signatures, transaction id)."""
        info = await self._tapos()
        chain_id = await self.chain_id()
        lib_id = info["last_irreversible_block_id"]
        packed_actions = await self._pack_actions(actions)
        expiration = _node_time(info["head_block_time"]).replace(microsecond=0) + _dt.timedelta(
            seconds=self.expire_seconds
        )
        trx: dict[str, Any] = {
            "expiration": expiration,
            "ref_block_num": int(lib_id[:8], 16) & 0xFFFF,
            "ref_block_prefix": int.from_bytes(bytes.fromhex(lib_id[16:24]), "little"),
            "max_net_usage_words": 0,
            "max_cpu_usage_ms": 0,
            "delay_sec": 0,
            "context_free_actions": [],
            "actions": packed_actions,
            "transaction_extensions": [],
        }
        while True:  # identical actions pushed twice must not collide as one transaction id
            packed = CORE_ABI.encode("transaction", trx)
            trx_id = hashlib.sha256(packed).hexdigest()
            if trx_id not in self._recent:
                break
            trx["expiration"] += _dt.timedelta(seconds=1)
        self._recent[trx_id] = None
        while len(self._recent) > 20000:
            self._recent.popitem(last=False)
        pubs = await self._signing_keys(trx, packed_actions)
        digest = transaction_digest(chain_id, packed)
        return packed, self.keys.sign(digest, pubs), trx_id

    async def push_transaction(self, actions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Sign and push; returns the node's result ({transaction_id, processed: trace}).

        Raises ChainAssertion with the contract's message when an action asserts."""
        if not actions:
            raise ValueError("a transaction needs at least one action")
        label = actions[0]["account"] + "::" + actions[0]["name"] if len(actions) == 1 else None
        for rebuild in range(3):
            packed, sigs, trx_id = await self.build_transaction(actions)
            body = {
                "signatures": sigs,
                "compression": "none",
                "packed_context_free_data": "",
                "packed_trx": packed.hex(),
            }
            try:
                result = await self.call("/v1/chain/push_transaction", body, action=label)
            except TransactionExpired:
                if rebuild == 2:
                    raise
                self._tapos_cache = None
                continue
            except DuplicateTransaction:
                # an earlier attempt of these very bytes got through before its answer was lost
                return {"transaction_id": trx_id, "processed": None, "duplicate": True}
            except MissingAuthority:
                self._required.clear()
                raise
            except ChainAssertion as e:
                if e.action is None:
                    e.action = _failed_action(e.details, actions)
                raise
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    async def push_action(self, account: str, name: str, data: Any, *auth: Any) -> dict[str, Any]:
        return await self.push_transaction([action(account, name, data, *auth)])

    async def wait_irreversible(self, block_num: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while (await self.get_info())["last_irreversible_block_num"] < block_num:
            if time.monotonic() > deadline:
                raise ChainUnavailable(f"block {block_num} not irreversible after {timeout}s")
            await asyncio.sleep(0.2)


def _failed_action(details: Sequence[str], actions: Sequence[Mapping[str, Any]]) -> str | None:
    for d in details:  # e.g. "pending console output: " or "... act: newjob ..."
        for a in actions:
            if f"{a['account']} <= {a['account']}::{a['name']}" in d:
                return f"{a['account']}::{a['name']}"
    names = {f"{a['account']}::{a['name']}" for a in actions}
    return names.pop() if len(names) == 1 else None
