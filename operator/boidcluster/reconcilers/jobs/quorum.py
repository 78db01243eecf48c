"""Quorum evaluation of one unit: a pure function of its results, with no I/O.

BOINC-style replication: each unit runs on `replicas` distinct contributors; a result is the hash
of the unit's output files; the unit is accepted when `quorum` distinct contributors agree. Outvoted
results are kept aside (never credited); when results disagree the unit is re-issued, to
contributors not yet used for it when there are any. Kept apart from the reconciler so that every
rule here has fast unit tests of its own (tests/unit/test_quorum.py).

Failures that never ran the unit get bounded retries of their own: a submit the backend refused,
or a task LOST, again and again *for the same reason* fails the unit with that reason instead of
looping forever (a single LOST, e.g. a worker that vanished or an operator restart, is re-queued
at once and never counts against `retries`); each repetition waits longer (`backoff`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .records import Credit, Rejected, TaskResult

SAME_ERROR_LIMIT = 5     # identical submit errors / LOST reasons in a row that fail a unit


@dataclass(frozen=True)
class Rules:
    replicas: int = 1
    quorum: int = 1
    retries: int = 3
    retry_backoff: float = 1.0   # seconds before the first retry after a failure (doubling)
    max_backoff: float = 60.0
    same_error_limit: int = SAME_ERROR_LIMIT


@dataclass(frozen=True)
class Verdict:
    """What the unit needs. Exactly one of: `accept` (hash) set, `failed` set, or `launch` >= 0."""

    accept: str | None = None
    credited: tuple[tuple[str, Credit], ...] = ()      # (task id, credit) of the agreeing replicas
    rejected: tuple[Rejected, ...] = ()
    failed: str | None = None                          # why the unit failed for good
    launch: int = 0                                    # replicas to launch now (or at `not_before_us`)
    not_before_us: int = 0                             # backoff: do not launch before this time
    exclude: frozenset[str] = frozenset()              # contributors the new replicas must avoid
    disagreements: tuple[Rejected, ...] = ()           # differing results while still undecided


def _streak(results: Sequence[TaskResult]) -> tuple[int, str]:
    """How many of the last results are non-running failures (submit error / LOST) with one and the
    same message, and that message."""
    n, msg = 0, ""
    for r in reversed(results):
        if not (r.submit_error or r.state == "LOST"):
            break
        if n and r.message != msg:
            break
        n, msg = n + 1, r.message
    return n, msg


def backoff(rules: Rules, n: int) -> float:
    return min(rules.retry_backoff * 2 ** (n - 1), rules.max_backoff) if n > 0 else 0.0


def evaluate(results: Sequence[tuple[str, TaskResult]], flying: Sequence[str | None], rules: Rules,
             online: frozenset[str]) -> Verdict:
    """`results`: the unit's (task id, result) in the order they finished; `flying`: the
    contributors of its replicas in flight (None: not placed yet); `online`: contributors that
    can take work now."""
    quorum = rules.quorum or rules.replicas
    ok = [(tid, r) for tid, r in results if r.state == "FINISHED" and r.hash and r.contributor]
    groups: dict[str, dict[str, tuple[str, TaskResult]]] = {}
    for tid, r in ok:
        groups.setdefault(r.hash, {}).setdefault(r.contributor, (tid, r))  # type: ignore[arg-type]
    best_hash, best = max(groups.items(), key=lambda kv: len(kv[1]), default=(None, {}))
    if best_hash is not None and len(best) >= quorum:
        return Verdict(accept=best_hash,
                       credited=tuple((tid, Credit(c, int(r.us), tid)) for c, (tid, r) in best.items()),
                       rejected=tuple(Rejected(r.contributor, r.hash, tid)  # type: ignore[arg-type]
                                      for tid, r in ok if r.hash != best_hash))
    disagreements = tuple(Rejected(r.contributor, r.hash, tid) for tid, r in ok) if len(groups) > 1 else ()  # type: ignore[arg-type]
    failures = [r for _, r in results if r.failure]
    if len(failures) > rules.retries:
        last = failures[-1].message
        return Verdict(failed=f"failed after {len(failures)} attempts: {last}" if last else
                       f"failed after {len(failures)} attempts", disagreements=disagreements)
    streak, why = _streak([r for _, r in results])
    if streak >= rules.same_error_limit:
        return Verdict(failed=f"{streak} attempts in a row never ran: {why}", disagreements=disagreements)
    in_flight = len(flying)
    need = max(rules.replicas - len(ok) - in_flight, quorum - len(best) - in_flight, 0)
    not_before = 0
    if need:
        waits = []
        if failures:
            waits.append(failures[-1].finished_us + int(backoff(rules, len(failures)) * 1e6))
        if streak > 1:  # the first LOST / refused submit is re-queued at once, repeats back off
            last = results[-1][1]
            waits.append(last.finished_us + int(backoff(rules, streak - 1) * 1e6))
        not_before = max(waits, default=0)
    hard = {r.contributor for _, r in ok if r.contributor} | {c for c in flying if c}
    soft = hard | {r.contributor for _, r in results if r.contributor}
    return Verdict(launch=need, not_before_us=not_before,
                   exclude=frozenset(soft if not online <= soft else hard), disagreements=disagreements)

