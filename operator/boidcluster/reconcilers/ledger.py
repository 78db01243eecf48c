"""Contributed time onto the chain: accepted work units become clusterjobs `newjob` rows.

The ledger is the jobs reconciler's only way to the chain. Each credit's row id is derived from
(job uid, unit, contributor), so recording is idempotent: a crash between "unit accepted" and
"recorded" is retried on restart and the contract rejects the duplicate, which counts as done.
"""

from __future__ import annotations

from typing import Any, Iterable

from boidcluster.adapters.chain import RecordResult, UnitTime, unit_id


class ChainLedger:
    def __init__(self, chain: Any, dispatcher_account: str | None = None) -> None:
        self.chain = chain
        self.dispatcher_account = dispatcher_account

    def record_units(self, protocol: Any, job: Any, credits: Iterable[tuple[str, str, int]]) -> RecordResult:
        """credits: (unit key, contributor account, contributed microseconds), in one or a few transactions."""
        units = [UnitTime(worker=acct, id=unit_id(job.metadata.uid, key, acct), time=int(micros))  # type: ignore[arg-type]
                 for key, acct, micros in credits]
        if not units:
            return RecordResult()
        return self.chain.record_units(protocol.spec.researcher, units)

    def record_dispatch(self, protocol: Any, job: Any, micros: int) -> bool:
        """The dispatcher's time for running a job, once per job (keyed like a unit)."""
        if not self.dispatcher_account or micros <= 0:
            return False
        acct = self.dispatcher_account
        return self.chain.record_dispatcher_time(protocol.spec.researcher, acct,
                                                 unit_id(job.metadata.uid, "dispatch", acct),  # type: ignore[arg-type]
                                                 int(micros))
