"""Paying contributors of a protocol from its fund, at most once per payout interval.

The chain is the record: `clusterjobs::payout` pays unpaid time × rate and lowers unpaid time
in the same transaction, so repeating a payout can never pay the same time twice; this module
only decides *when* and *whom*. A fund that cannot cover what is owed stops payouts and says
by how much it is short (Funded=False), instead of failing in a loop.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from boidcluster.adapters.chain import ChainAssertion, payment
from boidcluster.engine.reconciler import condition
from boidcluster.model.meta import Condition, utcnow
from boidcluster.model.resources import Contributor, Protocol
from boidcluster.model.types import Asset


def settle(p: Protocol, world: Any, *, final: bool = False) -> tuple[list[Condition], dict[str, Any]]:
    """Pay what is due. `final` (protocol deletion) pays every positive balance now, ignoring
    the interval and the minimum, so no contributed time is stranded by a deleted registry row."""
    chain, spec = world.chain, p.spec
    status = p.status
    if chain is None or not world.settings.payout_enabled:
        return [], {}
    now = utcnow()
    last = status.last_payout_time if status else None
    if not final and last is not None and now - last < timedelta(seconds=spec.payout.interval):
        return [], {}
    symbol = spec.fund.quantity.symbol
    minimum = spec.payout.minimum or Asset(1, symbol)
    paid = dict(status.paid) if status else {}
    made, conditions = False, []
    payees = [(c.spec.account, c.spec.role) for c in world.store.list(Contributor)
              if spec.researcher in c.spec.researchers]
    for account, role in sorted(set(payees)):
        row = (chain.worker_row if role == "worker" else chain.dispatcher_row)(account, spec.researcher)
        if row is None or row.unpaid_time <= 0:
            continue
        owed = payment(row.unpaid_time, spec.pay_rates.worker if role == "worker" else spec.pay_rates.dispatcher)
        if owed.amount <= 0 or (not final and owed.amount < minimum.amount):
            continue
        try:
            result = chain.payout(spec.owner, spec.researcher, account, role, funder=spec.fund.account)
        except ChainAssertion as e:
            if "fund too low" not in e.message:
                raise
            reg = chain.protocol_row(spec.owner, spec.researcher)
            left = reg.fund if reg else Asset(0, symbol)
            short = Asset(max(0, owed.amount - left.amount), symbol)
            conditions.append(condition("Funded", False, "Shortfall",
                                        f"cannot pay {account} {owed}: the registry fund has {left}, short by {short}; "
                                        "payouts are stopped until the fund is raised"))
            break
        if result is not None:
            paid[account] = paid.get(account, Asset(0, symbol)) + result.amount
            made = True
    update: dict[str, Any] = {"paid": paid}
    if made:
        update["last_payout_time"] = now
    return conditions, update
