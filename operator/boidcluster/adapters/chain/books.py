"""A protocol's books on chain, read and checked in one place.

Why here: `boidctl report` audits them and the dashboard shows them; both must say the same thing
about the same rows, so the reads (registry row, contributors' time rows, `acct` rows, batch
sequence, the registry's token balance) and the checks of the escrow's invariant live in this one
module, below both. Exact integer asset units throughout: deposited = paid + owed + withdrawn +
free escrow; owed and paid equal the sums of the contributors' rows; the registry's balance of a
token equals the sum of its protocols' escrows in that token. `chain` is a BlockingChain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from boidcluster.model.types import Asset, Symbol

from .boid import TYPES, AcctRow, BatchSeqRow, ProtocolRow


@dataclass(frozen=True)
class ProtocolBooks:
    """What the chain holds for one protocol (owner, name)."""

    row: ProtocolRow
    times: dict[tuple[str, str], int]  # (account, role) -> µs of contributed time recorded
    accts: dict[str, AcctRow]          # account -> owed (fixed at recording), paid
    seq: BatchSeqRow | None            # last recorded batch and its totals

    @property
    def zero(self) -> Asset:
        return Asset(0, self.row.symbol)

    @property
    def owed_by_rows(self) -> Asset:
        return sum((a.owed for a in self.accts.values()), self.zero)

    @property
    def paid_by_rows(self) -> Asset:
        return sum((a.paid for a in self.accts.values()), self.zero)

    @property
    def accounts(self) -> set[tuple[str, str]]:
        """(account, role) of everyone with a time row, and (account, 'worker') of anyone with an
        acct row but no time row (so nothing owed is left out of a listing)."""
        timed = {a for a, _ in self.times}
        return set(self.times) | {(a, "worker") for a in self.accts if a not in timed}

    def differences(self) -> list[str]:
        """Every way the books fail to balance (empty: they balance exactly)."""
        r, out = self.row, []
        if not r.invariant_holds():
            out.append(f"deposited {r.deposited} != paid {r.paid} + withdrawn {r.withdrawn} + balance {r.balance}")
        if self.owed_by_rows != r.owed:
            out.append(f"the protocol owes {r.owed} but its contributors' rows add up to {self.owed_by_rows}")
        if self.paid_by_rows != r.paid:
            out.append(f"the protocol paid {r.paid} but its contributors' rows add up to {self.paid_by_rows}")
        if r.reserved.amount and r.owed.amount + r.reserved.amount > r.balance.amount:
            out.append(f"reserved {r.reserved} + owed {r.owed} exceed the balance {r.balance} (a reservation is "
                       "set at most to the free escrow and recorded work consumes it)")
        return out


@dataclass(frozen=True)
class TokenHolding:
    """The registry's balance of one token, against the escrows of all its protocols in it."""

    registry: str
    tokencontract: str
    symbol: Symbol
    held: Asset
    escrows: Asset

    @property
    def balanced(self) -> bool:
        return self.held == self.escrows

    def difference(self) -> str | None:
        if self.balanced:
            return None
        return (f"{self.registry} holds {self.held} of {self.tokencontract} but its protocols' escrows add up to "
                f"{self.escrows}")


def read_books(chain: Any, owner: str, name: str) -> ProtocolBooks | None:
    """The protocol's books, or None when it is not on the registry. Raises ChainError."""
    row = chain.protocol_row(owner, name)
    if row is None:
        return None
    times = {(r.account, role): r.total_time for role in TYPES for r in chain.contributor_rows(role, row.id)}
    accts = {a.account: a for a in chain.acct_rows(row.id)}
    return ProtocolBooks(row=row, times=times, accts=accts, seq=chain.batch_seq(row.id))


def read_holdings(chain: Any, tokens: Iterable[tuple[str, Symbol]]) -> dict[tuple[str, Symbol], TokenHolding]:
    """The registry's holding of each (token contract, symbol), with every protocol's escrow in it
    (all owners: one scan of the registry). Raises ChainError."""
    wanted = set(tokens)
    if not wanted:
        return {}
    escrows = {t: Asset(0, t[1]) for t in wanted}
    for q in chain.all_protocols():
        key = (q.tokencontract, q.symbol)
        if key in escrows:
            escrows[key] = escrows[key] + q.balance
    return {t: TokenHolding(chain.reg, t[0], t[1], chain.fund_balance(chain.reg, t[0], t[1]), escrows[t])
            for t in sorted(wanted, key=lambda t: (t[0], t[1].code, t[1].precision))}


__all__ = ["ProtocolBooks", "TokenHolding", "read_books", "read_holdings"]
