"""Paying a protocol's contributors from its escrow, at most once per payout interval.

The chain is the record: recording fixed what each contributor is owed (clusterreg `acct` rows),
and clusterreg::payout pays exactly that from the protocol's escrow and zeroes it in the same
transaction, so repeating a payout can never pay twice; this module only decides *when* and
*whom*. What was paid is read back from those rows every time, never accumulated in status, so a
later failure of the same pass cannot lose it. An escrow that cannot cover what a contributor is
owed pays them nothing and says by how much it is short (Funded=False), instead of failing in a loop.

The contributors' rows are read only when they can tell something new: the protocol row's `owed`
is the sum of theirs and its `paid` the sum of theirs (clusterreg::credit and ::payout move both
in one action; acct rows are never removed and each one's `paid` only grows), so with nothing
owed and the paid total equal to the status's per-contributor sum, the rows hold what status has.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from boidcluster.adapters.chain import EscrowTooLow, ProtocolRow
from boidcluster.engine.reconciler import condition
from boidcluster.model.meta import Condition, utcnow
from boidcluster.model.resources import Protocol
from boidcluster.model.types import Asset


def settle(p: Protocol, world: Any, row: ProtocolRow, *, final: bool = False) -> tuple[list[Condition], dict[str, Any]]:
    """Pay what is due; returns (conditions, status update with `paid` per contributor from the chain).
    `final` (protocol deletion) pays every positive amount now, ignoring the interval and the minimum."""
    chain, spec = world.chain, p.spec
    status = p.status
    update: dict[str, Any] = {}
    conditions: list[Condition] = []
    now = utcnow()
    last = status.last_payout_time if status else None
    due_now = final or last is None or now - last >= timedelta(seconds=spec.payout.interval)
    paying = world.settings.payout_enabled and due_now and row.owed.amount > 0
    known = dict(status.paid) if status else {}
    if not paying and _same_total(known, row.paid):
        update["paid"] = known
        return conditions, update
    accts = chain.acct_rows(row.id)
    if paying:
        minimum = spec.payout.minimum or Asset(1, row.symbol)
        made = False
        for a in sorted(accts, key=lambda a: a.account):
            if a.owed.amount <= 0 or (not final and a.owed.amount < minimum.amount):
                continue
            try:
                made |= chain.payout(spec.owner, row.name, a.account) is not None
            except EscrowTooLow as e:
                conditions.append(condition("Funded", False, "Shortfall",
                                            f"cannot pay {a.account}: {e.message}; payouts wait until the escrow "
                                            f"is funded (`boidctl fund {p.name} AMOUNT`)"))
        if made:
            update["last_payout_time"] = now
            accts = chain.acct_rows(row.id)
    update["paid"] = {a.account: a.paid for a in accts if a.paid.amount > 0}
    return conditions, update


def _same_total(paid: dict[str, Asset], total: Asset) -> bool:
    """Status's per-contributor paid amounts add up to the registry's paid total."""
    return all(a.symbol == total.symbol for a in paid.values()) and \
        sum(a.amount for a in paid.values()) == total.amount
