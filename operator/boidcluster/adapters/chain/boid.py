"""Typed, idempotent calls on the clusterjobs/clusterreg contracts (contracts/INTERFACE.md).

Why it is shaped so: reconcilers converge state and may repeat any step after a crash, so every
write here is safe to repeat: registering a registered contributor is "done", a unit already
recorded counts as recorded (never twice: job rows are keyed by a unit id derived from the job,
the unit and the contributor), deleting what is gone is "done". Units are recorded many `newjob`
actions per transaction; a batch that hits one duplicate falls back to one action per unit.
The operator signs with least privilege: its own `operate` permission for clusterjobs, and the
`boidop` permissions that owners and fund accounts delegate to it (INTERFACE.md, last section).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Sequence

from boidcluster.model.types import Asset, Symbol

from .abi import name_to_int
from .rpc import ChainAssertion, ChainError, RpcClient, action

ALREADY_RECORDED = "unit already recorded"
H = 3_600_000_000  # µs per hour: pay rates are per hour, times are µs


def unit_id(job_uid: str, unit_index: int, contributor: str) -> int:
    """The u64 key of one unit's time record: first 8 bytes (big-endian) of sha256."""
    digest = hashlib.sha256(f"{job_uid}\0{unit_index}\0{contributor}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def payment(time_us: int, rate: Asset) -> Asset:
    """What `time_us` µs pay at `rate` per hour: floor(time × rate / H), as the contracts compute."""
    return Asset(time_us * rate.amount // H, rate.symbol)


@dataclass(frozen=True)
class ProtocolRow:
    """A clusterreg `protocol` row. `fund` is the remaining budget; `funded` the total ever committed
    (addprotocol's fund plus every addfund; None for a row written before the field existed)."""

    title: str
    owner: str
    researcher: str
    datadir: str
    fundaccount: str
    fund: Asset
    tokencontract: str
    worker_pay_rate: Asset
    dispatcher_pay_rate: Asset
    funded: Asset | None = None

    UPDATABLE = ("title", "datadir", "fundaccount", "tokencontract", "worker_pay_rate", "dispatcher_pay_rate")

    @classmethod
    def from_spec(cls, spec: Any) -> "ProtocolRow":
        """From a model ProtocolSpec (title, owner, researcher, datadir, fund, pay_rates); the spec's
        quantity is both the fund a new row starts with and the total commitment wanted (`funded`)."""
        return cls(
            title=spec.title, owner=spec.owner, researcher=spec.researcher, datadir=str(spec.datadir),
            fundaccount=spec.fund.account, fund=spec.fund.quantity, tokencontract=spec.fund.token_contract,
            worker_pay_rate=spec.pay_rates.worker, dispatcher_pay_rate=spec.pay_rates.dispatcher,
            funded=spec.fund.quantity,
        )

    @classmethod
    def from_chain(cls, row: dict[str, Any]) -> "ProtocolRow":
        # `funded` is a binary extension (`asset$`): absent from rows older than the field
        return cls(**{f.name: row.get(f.name) if f.name == "funded" else row[f.name] for f in fields(cls)})

    def matches(self, other: "ProtocolRow") -> bool:
        """Same registration. Neither `fund` (payouts lower it) nor `funded` (only `addfund` raises
        it: BoidChain.ensure_fund) is compared: updprotocol cannot change them."""
        return all(getattr(self, f) == getattr(other, f) for f in ("owner", "researcher", *self.UPDATABLE))


@dataclass(frozen=True)
class FundResult:
    """What BoidChain.ensure_fund did.

    action: 'added' (`added` was committed on top), 'unchanged' (funded == the wanted total),
    'reduction_ignored' (the wanted total is below `funded`: a commitment is never taken back),
    'unknown' (the row predates `funded`, so the operator cannot tell what was committed and adds
    nothing; one `addfund` by hand makes it known). `funded`/`fund` are the row's values afterwards."""

    action: str
    added: Asset
    funded: Asset | None
    fund: Asset


@dataclass(frozen=True)
class ContributorRow:
    researcher: str
    total_time: int
    unpaid_time: int


@dataclass(frozen=True)
class UnitTime:
    """Time (µs) a worker contributed to one unit of a researcher's job."""

    worker: str
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
    time_paid: int
    transaction_id: str


@dataclass(frozen=True)
class ChainAuth:
    """Which permissions the adapter signs with (defaults: INTERFACE.md's least privilege)."""

    operator: str = "boidoperator"
    operator_permission: str = "operate"
    delegated_permission: str = "boidop"  # owners' and fund accounts' permission for the operator


class BoidChain:
    """The operator's view of the Boid contracts on one chain."""

    def __init__(
        self,
        rpc: RpcClient,
        *,
        jobs: str = "clusterjobs",
        reg: str = "clusterreg",
        auth: ChainAuth | None = None,
        batch_size: int = 50,
    ) -> None:
        self.rpc = rpc
        self.jobs = jobs
        self.reg = reg
        self.auth = auth or ChainAuth()
        self.batch_size = batch_size

    @property
    def _op(self) -> str:
        return f"{self.auth.operator}@{self.auth.operator_permission}"

    def _delegated(self, account: str) -> str:
        return f"{account}@{self.auth.delegated_permission}"

    # --- protocols (clusterreg) ---
    async def protocol_row(self, owner: str, researcher: str) -> ProtocolRow | None:
        row = await self.rpc.get_row(self.reg, owner, "protocol", name_to_int(researcher))
        return ProtocolRow.from_chain(row) if row else None

    async def put_protocol(self, row: ProtocolRow) -> str:
        """Create or update the registration; returns 'created', 'updated' or 'unchanged'."""
        have = await self.protocol_row(row.owner, row.researcher)
        if have is not None and have.matches(row):
            return "unchanged"
        data = {
            "title": row.title, "owner": row.owner, "researcher": row.researcher, "datadir": row.datadir,
            "fundaccount": row.fundaccount, "fund": row.fund, "tokencontract": row.tokencontract,
            "dispatcher_pay_rate": row.dispatcher_pay_rate, "worker_pay_rate": row.worker_pay_rate,
        }
        if have is None:
            await self.rpc.push_action(self.reg, "addprotocol", data, self._delegated(row.owner))
            return "created"
        del data["fund"]
        await self.rpc.push_action(self.reg, "updprotocol", data, self._delegated(row.owner))
        return "updated"

    async def add_fund(self, owner: str, researcher: str, quantity: Asset) -> None:
        """`clusterreg::addfund`: fund and funded both grow by `quantity` (NOT idempotent: use ensure_fund)."""
        data = {"owner": owner, "researcher": researcher, "quantity": quantity}
        await self.rpc.push_action(self.reg, "addfund", data, self._delegated(owner))

    async def ensure_fund(self, owner: str, researcher: str, total: Asset) -> FundResult:
        """Make the registry's total commitment (`funded`) at least `total` by adding the difference.

        Safe to repeat (after a crash, a timeout, a second reconcile): the difference is computed
        from `funded` on chain each time, and `funded` moves in the same transaction as the fund,
        so a top-up that landed is seen and never added twice. A lower `total` is ignored: lowering
        the remaining fund would take back what contributors were promised (there is no action for it).
        """
        have = await self.protocol_row(owner, researcher)
        if have is None:
            raise ChainAssertion("unknown protocol", action=f"{self.reg}::addfund")
        if have.funded is None:
            return FundResult("unknown", Asset(0, have.fund.symbol), None, have.fund)
        if total.symbol != have.funded.symbol:
            raise ChainAssertion("quantity symbol must match the fund symbol", action=f"{self.reg}::addfund")
        if total.amount <= have.funded.amount:
            action_ = "unchanged" if total.amount == have.funded.amount else "reduction_ignored"
            return FundResult(action_, Asset(0, total.symbol), have.funded, have.fund)
        add = total - have.funded
        try:
            await self.add_fund(owner, researcher, add)
        except ChainError:
            # the answer may have been lost after the top-up landed: the row tells
            after = await self.protocol_row(owner, researcher)
            if after is None or after.funded is None or after.funded.amount < total.amount:
                raise
        after = await self.protocol_row(owner, researcher) or have
        return FundResult("added", add, after.funded, after.fund)

    async def delete_protocol(self, owner: str, researcher: str) -> bool:
        """Remove the registration; False when it was already gone."""
        if await self.protocol_row(owner, researcher) is None:
            return False
        try:
            await self.rpc.push_action(self.reg, "delprotocol", {"owner": owner, "researcher": researcher}, self._delegated(owner))
        except ChainAssertion as e:
            if e.message == "unknown protocol":
                return False
            raise
        return True

    # --- contributors (clusterjobs) ---
    async def _register(self, act: str, field_name: str, who: str, researcher: str, already: str) -> bool:
        try:
            await self.rpc.push_action(self.jobs, act, {field_name: who, "researcher": researcher}, self._op)
        except ChainAssertion as e:
            if e.message == already:
                return False
            raise
        return True

    async def register_worker(self, worker: str, researcher: str) -> bool:
        """True if newly registered, False if it already was."""
        return await self._register("regworker", "worker", worker, researcher, "worker already registered")

    async def unregister_worker(self, worker: str, researcher: str) -> bool:
        """True if removed, False if it was not registered. Asserts 'worker has unpaid time'."""
        return await self._register("delworker", "worker", worker, researcher, "worker not registered")

    async def register_dispatcher(self, dispatcher: str, researcher: str) -> bool:
        return await self._register("regdisptch", "dispatcher", dispatcher, researcher, "dispatcher already registered")

    async def unregister_dispatcher(self, dispatcher: str, researcher: str) -> bool:
        return await self._register("deldisptch", "dispatcher", dispatcher, researcher, "dispatcher not registered")

    async def worker_row(self, worker: str, researcher: str) -> ContributorRow | None:
        row = await self.rpc.get_row(self.jobs, worker, "worker", name_to_int(researcher))
        return ContributorRow(**row) if row else None

    async def dispatcher_row(self, dispatcher: str, researcher: str) -> ContributorRow | None:
        row = await self.rpc.get_row(self.jobs, dispatcher, "dispatcher", name_to_int(researcher))
        return ContributorRow(**row) if row else None

    async def contributor_rows(self, account: str, role: str = "worker") -> list[ContributorRow]:
        """Every researcher this worker/dispatcher is registered with, and its times."""
        table = "worker" if role == "worker" else "dispatcher"
        return [ContributorRow(**r) async for r in self.rpc.table_rows(self.jobs, account, table)]

    async def unit_row(self, researcher: str, id: int, dispatcher: bool = False) -> dict[str, Any] | None:
        return await self.rpc.get_row(self.jobs, researcher, "dptchlog" if dispatcher else "job", id)

    # --- time records ---
    async def record_units(self, researcher: str, units: Iterable[UnitTime], *, batch_size: int | None = None) -> RecordResult:
        """Record completed units' time, many per transaction; duplicates count as `already`."""
        acts = [
            action(self.jobs, "newjob", {"researcher": researcher, "worker": u.worker, "id": u.id, "time": u.time}, self._op)
            for u in units
        ]
        return await self._record_batches(acts, batch_size or self.batch_size)

    async def record_dispatcher_time(self, researcher: str, dispatcher: str, id: int, time: int) -> bool:
        """Record one dispatcher time slice; False if that id was already recorded."""
        result = await self.record_dispatcher_times(researcher, [UnitTime(dispatcher, id, time)])
        return result.recorded == 1

    async def record_dispatcher_times(self, researcher: str, slices: Iterable[UnitTime], *, batch_size: int | None = None) -> RecordResult:
        acts = [
            action(self.jobs, "updatedptch", {"researcher": researcher, "dispatcher": s.worker, "id": s.id, "time": s.time}, self._op)
            for s in slices
        ]
        return await self._record_batches(acts, batch_size or self.batch_size)

    async def _record_batches(self, acts: Sequence[dict[str, Any]], batch_size: int) -> RecordResult:
        result = RecordResult()
        for start in range(0, len(acts), batch_size):
            batch = acts[start : start + batch_size]
            try:
                out = await self.rpc.push_transaction(batch)
                result.recorded += len(batch)
                result.transactions += 1
                result.trx_ids.append(out["transaction_id"])
                continue
            except ChainAssertion as e:
                if e.message != ALREADY_RECORDED:
                    raise
            for one in batch:  # some were recorded before: settle them one by one
                try:
                    out = await self.rpc.push_transaction([one])
                except ChainAssertion as e:
                    if e.message != ALREADY_RECORDED:
                        raise
                    result.already += 1
                    continue
                result.recorded += 1
                result.transactions += 1
                result.trx_ids.append(out["transaction_id"])
        return result

    async def remove_unit(self, researcher: str, worker: str, id: int) -> bool:
        """Retract a recorded unit (e.g. rejected by the quorum); False if it was not recorded."""
        try:
            await self.rpc.push_action(self.jobs, "removejob", {"researcher": researcher, "worker": worker, "id": id}, self._op)
        except ChainAssertion as e:
            if e.message == "unit not recorded":
                return False
            raise
        return True

    # --- money ---
    async def payout(self, owner: str, researcher: str, contributor: str, type: str = "worker", *, funder: str | None = None) -> PayoutResult | None:
        """Pay the contributor's unpaid time from the protocol's fund; None if nothing is owed."""
        if funder is None:
            row = await self.protocol_row(owner, researcher)
            if row is None:
                raise ChainAssertion("unknown protocol", action=f"{self.jobs}::payout")
            funder = row.fundaccount
        data = {"owner": owner, "funder": funder, "researcher": researcher, "contributor": contributor, "type": type}
        try:
            out = await self.rpc.push_action(self.jobs, "payout", data, self._delegated(funder))
        except ChainAssertion as e:
            if e.message == "nothing to pay":
                return None
            raise
        return await self._payout_result(out)

    async def _payout_result(self, out: dict[str, Any]) -> PayoutResult:
        if out.get("duplicate"):
            # a retry found the first attempt applied, but its trace was lost with the answer
            raise ChainError(
                f"payout {out.get('transaction_id')} was applied but its trace was lost: read the balances",
                action=f"{self.jobs}::payout",
            )
        amount: Asset | None = None
        time_paid = 0
        for t in _walk_traces((out.get("processed") or {}).get("action_traces", [])):
            act = t["act"]
            if t.get("receiver") != act["account"]:
                continue  # notifications repeat the action
            if act["account"] == self.reg and act["name"] == "payout":
                data = (await self.rpc.get_abi(self.reg)).decode_action("payout", bytes.fromhex(act["hex_data"]))
                time_paid = data["unpaid_time"]
            elif act["name"] == "transfer":
                data = (await self.rpc.get_abi(act["account"])).decode_action("transfer", bytes.fromhex(act["hex_data"]))
                amount = data["quantity"]
        if amount is None:
            raise ChainAssertion("payout made no transfer", action=f"{self.jobs}::payout")
        return PayoutResult(amount=amount, time_paid=time_paid, transaction_id=out.get("transaction_id", ""))

    async def fund_balance(self, account: str, token_contract: str = "eosio.token", symbol: Symbol | str = Symbol("BOID", 4)) -> Asset:
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
    "BoidChain", "ChainAuth", "ContributorRow", "FundResult", "PayoutResult", "ProtocolRow", "RecordResult",
    "UnitTime", "payment", "unit_id",
]
