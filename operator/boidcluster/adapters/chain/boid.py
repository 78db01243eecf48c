"""Typed calls on the clusterjobs/clusterreg contracts, v2 (contracts/INTERFACE.md).

Why it is shaped so: reconcilers converge state and may repeat any step after a crash, so every
operator write here is safe to repeat: registering a registered contributor is "done", deleting
what is gone is "done", and a recorded batch carries its per-protocol number (`seq`), so sending
it again is refused by the contract ("batch out of sequence") and read back as already recorded.
Money never moves with the operator's key: deposits and withdrawals are signed by the user
(`deposit`, `withdraw` take the signer's permission), payouts only pay what the chain says is owed.
The operator signs with least privilege: its own `operate` permission.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Iterable, Sequence, TypeVar

from boidcluster.model.types import Asset, Symbol

from .abi import name_to_int
from .rpc import ChainAssertion, ChainError, RpcClient, action

T = TypeVar("T")
H = 3_600_000_000  # µs per hour: pay rates are per hour, times are µs
TYPES = ("worker", "dispatcher")
_OUT_OF_SEQUENCE = re.compile(r"^batch out of sequence: expected (\d+)$")
# clusterjobs::recordbatch's only signal for an account it has no row for is its check() text: this
# is the one place that reads it (the ledger checks the contributor tables before sending anyway)
_NOT_REGISTERED = re.compile(r"^(worker|dispatcher) not registered: ([a-z1-5.]{1,13})$")


def unit_id(job_uid: str, unit_index: int | str, contributor: str) -> int:
    """The u64 id of one unit's time in a batch: first 8 bytes (big-endian) of sha256."""
    digest = hashlib.sha256(f"{job_uid}\0{unit_index}\0{contributor}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def credit(time_us: int, rate: Asset, carry: int = 0) -> tuple[Asset, int]:
    """What `time_us` µs add at `rate` per hour to a contributor carrying `carry` (< H), as
    clusterreg::credit computes it: (floor((t·r + carry) / H), (t·r + carry) mod H)."""
    amount, rest = divmod(time_us * rate.amount + carry, H)
    return Asset(amount, rate.symbol), rest


def payment(time_us: int, rate: Asset) -> Asset:
    """What `time_us` µs are worth at `rate` per hour with nothing carried: floor(t × r / H)."""
    return credit(time_us, rate)[0]


class BatchOutOfSequence(ChainAssertion):
    """The protocol's next batch number on chain is not the one sent (`expected`)."""

    def __init__(self, expected: int, original: ChainAssertion) -> None:
        super().__init__(original.message, action=original.action)
        self.expected = expected


class ContributorNotRegistered(ChainAssertion):
    """recordbatch refused a batch: `account` has no `role` row for the protocol on clusterjobs."""

    def __init__(self, role: str, account: str, original: ChainAssertion | None = None) -> None:
        if original is None:   # found in the contributor table before sending
            super().__init__(f"{role} not registered: {account}", action="clusterjobs::recordbatch")
        else:
            super().__init__(original.message, action=original.action)
        self.role = role
        self.account = account


class EscrowTooLow(ChainAssertion):
    """A payout refused because the protocol's escrow holds less than the contributor is owed."""


@dataclass(frozen=True)
class ProtocolRow:
    """A clusterreg `protocol` row (scope owner, key name). Money in the protocol's symbol."""

    name: str
    owner: str
    researcher: str
    id: int
    accepted: bool
    title: str
    datadir: str
    tokencontract: str
    worker_pay_rate: Asset
    dispatcher_pay_rate: Asset
    deposited: Asset
    balance: Asset
    owed: Asset
    paid: Asset
    withdrawn: Asset
    reserved: Asset | None = None  # None: 0 in the protocol's symbol (set in __post_init__)

    def __post_init__(self) -> None:
        if self.reserved is None:
            object.__setattr__(self, "reserved", Asset(0, self.balance.symbol))

    @classmethod
    def from_chain(cls, row: dict[str, Any]) -> "ProtocolRow":
        return cls(**{k: (int(v) if k == "id" else v) for k, v in row.items() if k in cls.__dataclass_fields__})

    @classmethod
    def from_node_json(cls, row: dict[str, Any]) -> "ProtocolRow":
        """A row as the node itself decodes it (get_table_rows json=true): assets as text."""
        def value(k: str, v: Any) -> Any:
            if k == "id":
                return int(v)
            if k == "accepted":
                return v in (True, 1, "1", "true")
            return Asset.parse(v) if isinstance(v, str) and k in _ASSET_FIELDS else v
        return cls(**{k: value(k, v) for k, v in row.items() if k in cls.__dataclass_fields__})

    @property
    def symbol(self) -> Symbol:
        return self.balance.symbol

    @property
    def free(self) -> Asset:
        """Escrow nobody is owed (negative: the balance is short of what is owed)."""
        return self.balance - self.owed

    @property
    def withdrawable(self) -> Asset:
        """What the owner may withdraw: escrow neither owed nor reserved for running jobs (>= 0)."""
        left = self.balance - self.owed - self.reserved
        return left if left.amount > 0 else Asset(0, self.balance.symbol)

    def invariant_holds(self) -> bool:
        """deposited = paid + withdrawn + balance (= paid + owed + withdrawn + free), exactly."""
        return self.deposited == self.paid + self.withdrawn + self.balance


_ASSET_FIELDS = frozenset(f for f, t in ProtocolRow.__annotations__.items() if "Asset" in str(t))


@dataclass(frozen=True)
class ProtocolTerms:
    """What a protocol's owner registers: identity, researcher, token, rates."""

    owner: str
    name: str
    researcher: str
    title: str
    datadir: str
    tokencontract: str
    worker_pay_rate: Asset
    dispatcher_pay_rate: Asset

    @classmethod
    def from_spec(cls, name: str, spec: Any) -> "ProtocolTerms":
        return cls(owner=spec.owner, name=name, researcher=spec.researcher, title=spec.title,
                   datadir=str(spec.datadir), tokencontract=spec.fund.token_contract,
                   worker_pay_rate=spec.pay_rates.worker, dispatcher_pay_rate=spec.pay_rates.dispatcher)

    def differs(self, row: ProtocolRow) -> list[str]:
        """Fields of the row that differ from these terms (token contract and symbol cannot change)."""
        return [f for f in ("researcher", "title", "datadir", "tokencontract", "worker_pay_rate", "dispatcher_pay_rate")
                if getattr(self, f) != getattr(row, f)]


@dataclass(frozen=True)
class ContributorRow:
    """clusterjobs `worker`/`dispatcher` row (scope protocol id): registered, time contributed."""

    account: str
    total_time: int


@dataclass(frozen=True)
class AcctRow:
    """clusterreg `acct` row (scope protocol id): owed (fixed at recording), paid, carried fraction."""

    account: str
    owed: Asset
    paid: Asset
    carry: int


@dataclass(frozen=True)
class BatchSeqRow:
    """clusterjobs `batchseq` row: the protocol's last recorded batch and its totals."""

    id: int
    owner: str
    name: str
    seq: int
    units: int
    worker_time: int
    dispatcher_time: int


@dataclass(frozen=True)
class UnitTime:
    """Time (µs) a contributor gave one unit; `id` is unique per unit (unit_id)."""

    contributor: str
    id: int
    time: int


@dataclass
class RecordResult:
    recorded: int = 0
    already: int = 0
    transactions: int = 0
    trx_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PayoutResult:
    amount: Asset
    transaction_id: str


@dataclass(frozen=True)
class ChainAuth:
    """Which permission the operator signs with (INTERFACE.md's least privilege)."""

    operator: str = "boidoperator"
    operator_permission: str = "operate"


@dataclass
class _Scan:
    """One read of an owner's whole `protocol` scope: when it started, the owner's write
    generation then, and the rows (a future shared by every caller that asks meanwhile)."""

    gen: int
    started: float
    rows: "asyncio.Future[dict[str, dict[str, Any]]]"  # name -> the node's JSON of the row
    typed: dict[str, ProtocolRow] = field(default_factory=dict)  # rows asked for, decoded once


class BoidChain:
    """The contracts on one chain, as the operator and the CLI see them."""

    def __init__(self, rpc: RpcClient, *, jobs: str = "clusterjobs", reg: str = "clusterreg",
                 auth: ChainAuth | None = None, batch_size: int = 1000) -> None:
        self.rpc = rpc
        self.jobs = jobs
        self.reg = reg
        self.auth = auth or ChainAuth()
        self.batch_size = batch_size
        self._scans: dict[str, _Scan] = {}   # owner -> latest scan of its protocol rows
        self._gen: dict[str, int] = {}       # owner -> count of our writes touching its rows
        self.scans = 0                       # scans sent (for benchmarks and tests)

    @property
    def _op(self) -> str:
        return f"{self.auth.operator}@{self.auth.operator_permission}"

    # --- protocols (clusterreg) ---
    async def protocol_row(self, owner: str, name: str) -> ProtocolRow | None:
        row = await self.rpc.get_row(self.reg, owner, "protocol", name_to_int(name))
        return ProtocolRow.from_chain(row) if row else None

    async def recent_protocol_row(self, owner: str, name: str, max_age: float) -> ProtocolRow | None:
        """The row as of a read of the owner's whole `protocol` scope started at most `max_age`
        seconds ago and after our last write to the owner's protocols (none since: one read).

        Why: reconciling N protocols of one owner reads one scope once per `max_age` instead of
        N rows; callers waiting at the same time share one read. A row written by someone
        else (the owner's `boidctl fund`, the researcher's accept) shows up within `max_age`, so a
        caller that finds something missing or wrong should confirm with `protocol_row`."""
        now = time.monotonic()
        gen = self._gen.get(owner, 0)
        scan = self._scans.get(owner)
        if scan is None or scan.gen != gen or (scan.rows.done() and (
                scan.rows.cancelled() or scan.rows.exception() is not None or now - scan.started > max_age)):
            scan = _Scan(gen, now, asyncio.ensure_future(self._scan(owner)))
            self._scans[owner] = scan
        try:
            rows = await asyncio.shield(scan.rows)
        except BaseException:
            if self._scans.get(owner) is scan:  # the next caller reads again
                del self._scans[owner]
            raise
        row = scan.typed.get(name)
        if row is None and name in rows:
            row = scan.typed[name] = ProtocolRow.from_node_json(rows[name])
        return row

    async def _scan(self, owner: str) -> dict[str, dict[str, Any]]:
        """Every row of the scope as the node decodes it (its C++ ABI decoder, not ours: a
        scan of thousands of rows for one pass must not decode them all in Python)."""
        self.scans += 1
        return {r["name"]: r async for r in self.rpc.table_rows(self.reg, owner, "protocol", page_size=500,
                                                                decode=False)}

    async def _writes(self, owner: str, push: Awaitable[T]) -> T:
        """Await a push that changes (or, failing ambiguously, may have changed) a row of
        `owner`'s protocols: afterwards, scans from before are stale."""
        try:
            return await push
        finally:
            self._gen[owner] = self._gen.get(owner, 0) + 1
            self._scans.pop(owner, None)

    async def require_protocol(self, owner: str, name: str) -> ProtocolRow:
        row = await self.protocol_row(owner, name)
        if row is None:
            raise ChainAssertion(f"unknown protocol {owner}/{name}", action=f"{self.reg}::protocol")
        return row

    async def protocols(self) -> AsyncIterator[ProtocolRow]:
        """Every protocol row on the registry (all owners)."""
        lower = ""
        while True:
            page = await self.rpc.call("/v1/chain/get_table_by_scope", {
                "code": self.reg, "table": "protocol", "lower_bound": lower, "limit": 100})
            for s in page.get("rows", []):
                async for row in self.rpc.table_rows(self.reg, s["scope"], "protocol"):
                    yield ProtocolRow.from_chain(row)
            lower = page.get("more") or ""
            if not lower:
                return

    async def all_protocols(self) -> list[ProtocolRow]:
        return [p async for p in self.protocols()]

    async def add_protocol(self, terms: ProtocolTerms, *signers: str) -> dict[str, Any]:
        """`addprotocol`, signed by the owner (and the researcher too, if given: accepted at once)."""
        data = {"owner": terms.owner, "name": terms.name, "researcher": terms.researcher, "title": terms.title,
                "datadir": terms.datadir, "tokencontract": terms.tokencontract,
                "worker_pay_rate": terms.worker_pay_rate, "dispatcher_pay_rate": terms.dispatcher_pay_rate}
        signed = signers or (f"{terms.owner}@active",)
        return await self._writes(terms.owner, self.rpc.push_action(self.reg, "addprotocol", data, *signed))

    async def update_protocol(self, terms: ProtocolTerms, signer: str | None = None) -> dict[str, Any]:
        data = {"owner": terms.owner, "name": terms.name, "title": terms.title, "datadir": terms.datadir,
                "worker_pay_rate": terms.worker_pay_rate, "dispatcher_pay_rate": terms.dispatcher_pay_rate}
        return await self._writes(terms.owner, self.rpc.push_action(self.reg, "updprotocol", data,
                                                                    signer or f"{terms.owner}@active"))

    async def register_protocol(self, terms: ProtocolTerms, *, researcher_signs: bool = False,
                                owner_signer: str | None = None, researcher_signer: str | None = None) -> list[str]:
        """Make the registry row match `terms`, signed by the owner (and the researcher, whose
        signature accepts it); returns what was done: 'created', 'updated', 'accepted' (nothing: [])."""
        owner_signer = owner_signer or f"{terms.owner}@active"
        researcher_signer = researcher_signer or f"{terms.researcher}@active"
        row = await self.protocol_row(terms.owner, terms.name)
        if row is None:
            await self.add_protocol(terms, owner_signer, *([researcher_signer] if researcher_signs else []))
            return ["created", *(["accepted"] if researcher_signs else [])]
        fixed = [f for f in ("researcher", "tokencontract") if getattr(terms, f) != getattr(row, f)]
        if fixed or terms.worker_pay_rate.symbol != row.symbol:
            raise ChainAssertion(
                f"{terms.owner}/{terms.name} is registered with researcher {row.researcher}, token "
                f"{row.tokencontract} {row.symbol.code} ({row.symbol.precision} decimals): these are fixed at creation",
                action=f"{self.reg}::updprotocol")
        done = []
        if terms.differs(row):
            await self.update_protocol(terms, owner_signer)
            done.append("updated")
        if not row.accepted and researcher_signs:
            await self.accept_protocol(terms.owner, terms.name, terms.researcher, researcher_signer)
            done.append("accepted")
        return done

    async def accept_protocol(self, owner: str, name: str, researcher: str, signer: str | None = None) -> dict[str, Any]:
        return await self._writes(owner, self.rpc.push_action(self.reg, "acceptprot", {"owner": owner, "name": name},
                                                              signer or f"{researcher}@active"))

    async def deposit(self, sender: str, owner: str, name: str, quantity: Asset, *, token: str = "eosio.token",
                      signer: str | None = None) -> dict[str, Any]:
        """A token transfer into the registry naming the protocol: its escrow grows by `quantity`."""
        data = {"from": sender, "to": self.reg, "quantity": quantity, "memo": f"{owner}/{name}"}
        return await self._writes(owner, self.rpc.push_action(token, "transfer", data, signer or f"{sender}@active"))

    async def withdraw(self, owner: str, name: str, quantity: Asset, signer: str | None = None) -> dict[str, Any]:
        """The owner takes back escrow nobody is owed (the contract refuses more)."""
        return await self._writes(owner, self.rpc.push_action(
            self.reg, "withdraw", {"owner": owner, "name": name, "quantity": quantity}, signer or f"{owner}@active"))

    async def reserve(self, owner: str, name: str, quantity: Asset, signer: str | None = None) -> dict[str, Any]:
        """SET the escrow kept from withdrawal for what running jobs can still owe (the operator's
        `operate`; idempotent, moves no token; the contract refuses more than balance - owed)."""
        return await self._writes(owner, self.rpc.push_action(
            self.reg, "reserve", {"owner": owner, "name": name, "quantity": quantity}, signer or self._op))

    async def delete_protocol(self, owner: str, name: str, signer: str | None = None) -> bool:
        """Remove the registration (owner; nothing owed, escrow empty); False when already gone."""
        try:
            await self._writes(owner, self.rpc.push_action(self.reg, "delprotocol", {"owner": owner, "name": name},
                                                           signer or f"{owner}@active"))
        except ChainAssertion as e:
            if e.message == "unknown protocol":
                return False
            raise
        return True

    async def acct_row(self, protocol_id: int, account: str) -> AcctRow | None:
        row = await self.rpc.get_row(self.reg, str(protocol_id), "acct", name_to_int(account))
        return AcctRow(**row) if row else None

    async def acct_rows(self, protocol_id: int) -> list[AcctRow]:
        return [AcctRow(**r) async for r in self.rpc.table_rows(self.reg, str(protocol_id), "acct")]

    # --- contributors (clusterjobs) ---
    async def _register(self, act: str, role: str, who: str, owner: str, name: str, tolerated: str) -> bool:
        try:
            await self.rpc.push_action(self.jobs, act, {role: who, "owner": owner, "protocol": name}, self._op)
        except ChainAssertion as e:
            if e.message == tolerated:
                return False
            raise
        return True

    async def register(self, role: str, account: str, owner: str, name: str) -> bool:
        """True if newly registered with the protocol, False if it already was."""
        act = "regworker" if role == "worker" else "regdisptch"
        return await self._register(act, role, account, owner, name, f"{role} already registered")

    async def unregister(self, role: str, account: str, owner: str, name: str) -> bool:
        """True if removed, False if not registered. Refused while the protocol owes the account."""
        act = "delworker" if role == "worker" else "deldisptch"
        return await self._register(act, role, account, owner, name, f"{role} not registered")

    async def contributor_row(self, role: str, protocol_id: int, account: str) -> ContributorRow | None:
        row = await self.rpc.get_row(self.jobs, str(protocol_id), role, name_to_int(account))
        return ContributorRow(**row) if row else None

    async def contributor_rows(self, role: str, protocol_id: int) -> list[ContributorRow]:
        return [ContributorRow(**r) async for r in self.rpc.table_rows(self.jobs, str(protocol_id), role)]

    async def batch_seq(self, protocol_id: int) -> BatchSeqRow | None:
        row = await self.rpc.get_row(self.jobs, self.jobs, "batchseq", protocol_id)
        return BatchSeqRow(**row) if row else None

    # --- time records ---
    def batch_action(self, owner: str, name: str, seq: int, type: str, units: Sequence[UnitTime]) -> dict[str, Any]:
        if type not in TYPES:
            raise ValueError(f"type must be one of {TYPES}")
        ordered = sorted(units, key=lambda u: u.id)
        return action(self.jobs, "recordbatch", {
            "owner": owner, "protocol": name, "seq": seq, "type": type,
            "units": [{"contributor": u.contributor, "id": u.id, "time": u.time} for u in ordered]}, self._op)

    async def record_batch(self, owner: str, name: str, seq: int, type: str, units: Sequence[UnitTime]) -> str:
        """Record batch `seq` (must be the chain's last + 1); returns the transaction id.
        Raises BatchOutOfSequence (with the number the chain expects) if it is not, and
        ContributorNotRegistered if a unit's contributor has no row for the protocol."""
        try:
            out = await self._writes(owner, self.rpc.push_transaction(
                [self.batch_action(owner, name, seq, type, units)]))
        except ChainAssertion as e:
            m = _OUT_OF_SEQUENCE.match(e.message)
            if m:
                raise BatchOutOfSequence(int(m.group(1)), e) from None
            m = _NOT_REGISTERED.match(e.message)
            if m:
                raise ContributorNotRegistered(m.group(1), m.group(2), e) from None
            raise
        return out.get("transaction_id", "")

    # --- money ---
    async def payout(self, owner: str, name: str, contributor: str, signer: str | None = None) -> PayoutResult | None:
        """Pay everything the protocol owes `contributor`; None if nothing is owed."""
        try:
            out = await self._writes(owner, self.rpc.push_action(
                self.reg, "payout", {"owner": owner, "name": name, "contributor": contributor}, signer or self._op))
        except ChainAssertion as e:
            if e.message == "nothing to pay":
                return None
            if e.message.startswith("escrow too low"):
                raise EscrowTooLow(e.message, action=e.action) from None
            raise
        amount = None
        for t in _walk_traces((out.get("processed") or {}).get("action_traces", [])):
            act = t["act"]
            if t.get("receiver") == act["account"] and act["name"] == "transfer":
                data = (await self.rpc.get_abi(act["account"])).decode_action("transfer", bytes.fromhex(act["hex_data"]))
                amount = data["quantity"]
        if amount is None:
            # a retry found the first attempt applied and its trace lost: the chain rows are the record
            raise ChainError(f"payout {out.get('transaction_id')} applied, its trace lost: read the acct row",
                             action=f"{self.reg}::payout")
        return PayoutResult(amount=amount, transaction_id=out.get("transaction_id", ""))

    async def fund_balance(self, account: str, token_contract: str = "eosio.token",
                           symbol: Symbol | str = Symbol("BOID", 4)) -> Asset:
        """The account's balance of `symbol` from the token contract's `accounts` table (0 if none)."""
        if isinstance(symbol, str):
            precision, _, code = symbol.partition(",")
            symbol = Symbol(code, int(precision))
        key = int.from_bytes(symbol.code.encode().ljust(8, b"\0"), "little")
        row = await self.rpc.get_row(token_contract, account, "accounts", key)
        if row is None:
            return Asset(0, symbol)
        balance: Asset = row["balance"]
        if balance.symbol != symbol:
            raise ValueError(f"{account} holds {balance}, not {symbol.code} with precision {symbol.precision}")
        return balance


def _walk_traces(traces: list[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    """Action traces, flat or nested in `inline_traces` (push_transaction nests them)."""
    for t in traces:
        yield t
        yield from _walk_traces(t.get("inline_traces") or [])


__all__ = [
    "AcctRow", "BatchOutOfSequence", "ContributorNotRegistered", "EscrowTooLow", "BatchSeqRow", "BoidChain", "ChainAuth", "ContributorRow", "PayoutResult",
    "ProtocolRow", "ProtocolTerms", "RecordResult", "UnitTime", "credit", "payment", "unit_id",
]
