"""Contributed time onto the chain, exactly once: accepted units become numbered batches.

Why it is shaped so: clusterjobs::recordbatch takes a per-protocol batch number that must be the
chain's last + 1, so the chain itself refuses a replay; but a batch re-sent under a NEW number
would count twice. So every batch is first written once to a journal in ZooKeeper
(runs/ledger/<owner>.<protocol>/<seq>: its units and times), then sent. The chain's sequence is the
truth: journal batches numbered above it are missing on chain and are re-sent as journaled, in
order, before anything new (after a crash of the operator or a lost block of the node); a unit
found in the journal is never put in another batch. A call returns once the chain's own batch
number, read back, covers what it journaled; and since a node killed before its block became
irreversible may lose a batch it had accepted, `sync()` re-sends what the chain lacks even when
no new work arrives (the Protocol reconciler calls it every pass). One lock per protocol: one process records a protocol (the
leader, or that protocol's dispatcher).
"""

from __future__ import annotations

import bisect
import json
import math
import threading
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Iterable

from boidcluster.adapters.chain import BatchOutOfSequence, ChainAssertion, ContributorNotRegistered, RecordResult, UnitTime, unit_id

JOURNAL = "ledger"
BATCH_UNITS = 400  # units per recordbatch: ~60 ms of the 150 ms a transaction may use on the local node


@dataclass
class _Journal:
    """One protocol's journal, loaded once per process and kept current by our own writes."""

    owner: str
    name: str
    protocol_id: int
    batches: dict[int, dict[str, Any]] = field(default_factory=dict)  # seq -> {"type", "units": [...]}
    units: set[tuple[str, str, str]] = field(default_factory=set)  # (job uid, unit key, contributor)
    dispatched: set[tuple[str, str]] = field(default_factory=set)  # (job uid, dispatcher) credited
    confirmed: int = 0  # highest seq read back from the chain
    on_chain: int = 0  # the chain's batch number when last read
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def path(self) -> str:
        return f"{JOURNAL}/{self.owner}.{self.name}"

    @property
    def last(self) -> int:
        return max(self.batches, default=0)


class ChainLedger:
    def __init__(self, chain: Any, dispatcher_account: str | None = None, store: Any = None,
                 batch_units: int = BATCH_UNITS) -> None:
        self.chain = chain
        self.dispatcher_account = dispatcher_account
        self.store = store
        self.batch_units = batch_units
        self._journals: dict[tuple[str, str], _Journal] = {}
        self._lock = threading.Lock()
        self._busy: dict[str, tuple[int, int | None]] = {}          # job uid -> running interval
        self._credited: dict[str, tuple[int, int, int]] = {}        # job uid -> (start, end, µs credited)
        self._credited_loaded = False

    # -- the journal -------------------------------------------------------------------------
    def _journal(self, protocol: Any) -> _Journal:
        key = (protocol.spec.owner, protocol.chain_name)
        with self._lock:
            j = self._journals.get(key)
            if j is None:
                # its id, from the scan of the owner's rows the Protocol pass just made, if any
                row = self.chain.recent_protocol_row(*key, 2.0) or self.chain.require_protocol(*key)
                j = _Journal(key[0], key[1], row.id)
                if self.store is not None:
                    for seq in self.store.list_runs(j.path):
                        self._load(j, int(seq))
                self._journals[key] = j
            return j

    def _load(self, j: _Journal, seq: int) -> None:
        raw = self.store.get_run(f"{j.path}/{seq:012d}")
        data = json.loads(raw)
        j.batches[seq] = data
        j.units.update((u[0], u[1], u[2]) for u in data["units"])
        if data["type"] == "dispatcher":
            j.dispatched.update((u[0], u[2]) for u in data["units"])
        self._note_credited(data)

    def _write(self, j: _Journal, seq: int, data: dict[str, Any]) -> None:
        if self.store is not None and not self.store.create_once(
                f"{j.path}/{seq:012d}", json.dumps(data, separators=(",", ":"))):
            # another writer journaled this number: take its batch, ours gets the next number
            self._load(j, seq)
            raise _Taken()
        j.batches[seq] = data
        j.units.update((u[0], u[1], u[2]) for u in data["units"])
        if data["type"] == "dispatcher":
            j.dispatched.update((u[0], u[2]) for u in data["units"])
        self._note_credited(data)

    # -- sending -----------------------------------------------------------------------------
    def _send_missing(self, j: _Journal) -> tuple[int, list[str]]:
        """Re-send journaled batches the chain lacks, in order; returns (units sent, trx ids)."""
        have = self.chain.batch_seq(j.protocol_id)
        on_chain = have.seq if have else 0
        j.on_chain = max(j.on_chain, on_chain)
        sent, trx = 0, []
        for seq in sorted(s for s in j.batches if s > on_chain):
            data = j.batches[seq]
            units = [UnitTime(u[2], u[3], u[4]) for u in data["units"]]
            try:
                trx.append(self.chain.record_batch(j.owner, j.name, seq, data["type"], units))
            except BatchOutOfSequence as e:
                if e.expected <= seq:  # a gap below: cannot happen with one writer; say so loudly
                    raise
                continue  # it landed after all (the answer was lost)
            sent += len(units)
        return sent, trx

    def _confirm(self, j: _Journal, trx: list[str]) -> None:
        """Read the chain's batch number back: it must cover the journal."""
        if not j.batches or j.confirmed >= j.last:
            return
        have = self.chain.batch_seq(j.protocol_id)
        if have is None or have.seq < j.last:
            raise ChainAssertion(f"batch {j.last} of {j.owner}/{j.name} is not on chain after sending it "
                                 f"(chain has {have.seq if have else 0}): re-sent on the next pass",
                                 action="clusterjobs::recordbatch")
        j.confirmed = j.last

    def _record(self, protocol: Any, type_: str, entries: list[tuple[str, str, str, int]]) -> RecordResult:
        """entries: (job uid, unit key, contributor, µs). Journal, send, confirm."""
        j = self._journal(protocol)
        result = RecordResult()
        with j.lock:
            sent, trx = self._send_missing(j)
            new = [e for e in entries if (e[0], e[1], e[2]) not in j.units]
            result.already = len(entries) - len(new)
            # the chain refuses a whole batch for one unregistered account: such a batch must never
            # be journaled (it would block every later one); the caller holds that account's units
            missing = self._missing(j, type_, {e[2] for e in new})
            if missing:
                raise ContributorNotRegistered(type_, sorted(missing)[0])
            for start in range(0, len(new), self.batch_units):
                chunk = new[start:start + self.batch_units]
                units = sorted(([uid, key, acct, unit_id(uid, key, acct), int(us)] for uid, key, acct, us in chunk),
                               key=lambda u: u[3])
                while True:
                    # above anything on chain too: a journal behind the chain (a fresh ZooKeeper on an
                    # old chain) must never reuse a number the chain already holds
                    seq = max(j.last, j.on_chain) + 1
                    try:
                        self._write(j, seq, {"type": type_, "units": units})
                        break
                    except _Taken:
                        continue
                more, ids = self._send_missing(j)
                sent += more
                trx += ids
                result.recorded += len(chunk)
            self._confirm(j, trx)
        result.transactions = len(trx)
        result.trx_ids = trx
        return result

    # -- the ledger's interface (the jobs reconciler, the Protocol reconciler) -------------------
    def record_units(self, protocol: Any, job: Any, credits: Iterable[tuple[str, str, int]]) -> RecordResult:
        """credits: (unit key, contributor account, contributed µs). Returns once they are on chain
        (irreversible) exactly once; units recorded before count as `already`."""
        entries = [(job.metadata.uid, str(key), acct, int(us)) for key, acct, us in credits]
        if not entries:
            return RecordResult()
        return self._record(protocol, "worker", entries)

    def unregistered(self, protocol: Any, accounts: Iterable[str], role: str = "worker") -> set[str]:
        """The accounts with no `role` row for the protocol on clusterjobs: recordbatch would refuse
        a whole batch for any one of them, so their time is held back (read from the chain's table,
        not inferred from a refusal)."""
        return self._missing(self._journal(protocol), role, set(accounts))

    def _missing(self, j: _Journal, role: str, wanted: set[str]) -> set[str]:
        if not wanted:
            return set()
        return wanted - {r.account for r in self.chain.contributor_rows(role, j.protocol_id)}

    # -- the dispatcher's time: busy intervals merged across concurrent jobs --------------------
    def note_busy(self, uid: str, start_us: int, end_us: int | None) -> None:
        """The jobs reconciler tells the ledger each job's running interval (end None: running),
        for every protocol: the dispatcher's time at an instant is shared by the jobs running then."""
        with self._lock:
            self._busy[uid] = (start_us, end_us)

    def _load_credited(self) -> None:
        """Once per process: the intervals already credited to our dispatcher, from every
        protocol's journal (each dispatcher unit's key carries its job's interval)."""
        if self._credited_loaded or self.store is None:
            return
        for d in self.store.list_runs(JOURNAL):
            for seq in self.store.list_runs(f"{JOURNAL}/{d}"):
                data = json.loads(self.store.get_run(f"{JOURNAL}/{d}/{seq}"))
                self._note_credited(data)
        self._credited_loaded = True

    def _note_credited(self, data: dict[str, Any]) -> None:
        if data.get("type") != "dispatcher":
            return
        for u in data["units"]:
            iv = dispatch_interval(u[1])
            if iv is not None and u[2] == self.dispatcher_account:
                self._credited[u[0]] = (iv[0], iv[1], int(u[4]))
                self._busy.pop(u[0], None)   # its interval is kept with its credit

    def dispatch_share(self, uid: str, start_us: int, end_us: int) -> int:
        """The dispatcher's time for job `uid`, run over [start, end]: each instant of it divided by
        the number of jobs (of any protocol) running then, so the shares of jobs running at once add
        up to the time the dispatcher was busy (the union of their intervals), never to more; and
        capped so that everything credited never exceeds the union of the credited jobs' intervals
        (after a restart a job may be credited before the others' intervals are known again)."""
        with self._lock:
            self._load_credited()
            known = {k: (s, e if e is not None else end_us) for k, (s, e) in self._busy.items()}
            known.update({k: (s, e) for k, (s, e, _) in self._credited.items()})
            known[uid] = (start_us, end_us)
            credited = [(s, e) for k, (s, e, _) in self._credited.items() if k != uid]
            already = sum(us for k, (_, _, us) in self._credited.items() if k != uid)
        share = _pro_rata(start_us, end_us, list(known.values()))
        room = _union([*credited, (start_us, end_us)]) - already
        return max(0, min(share, room))

    def record_dispatch(self, protocol: Any, job: Any, start_us: int, end_us: int) -> bool:
        """The dispatcher's time for a job that ran over [start_us, end_us], once per job: its pro
        rata share of the dispatcher's busy time (dispatch_share); the interval is kept in the
        journaled unit's key, so the journal alone tells every credited interval."""
        if not self.dispatcher_account or end_us <= start_us:
            return False
        uid = job.metadata.uid
        key = f"dispatch@{start_us}-{end_us}"
        j = self._journal(protocol)
        if (uid, self.dispatcher_account) in j.dispatched:   # journaled before: never recomputed
            return False
        micros = self.dispatch_share(uid, start_us, end_us)
        if micros <= 0:
            return False
        res = self._record(protocol, "dispatcher", [(uid, key, self.dispatcher_account, micros)])
        return res.recorded == 1

    def sync(self, protocol: Any) -> int:
        """Re-send journaled batches the chain lacks (after a node or operator crash); units sent.
        Reads batches journaled by another process (a protocol's dispatcher) first."""
        with self._lock:
            known = (protocol.spec.owner, protocol.chain_name) in self._journals
        j = self._journal(protocol)  # a journal made just now has just read what is journaled
        with j.lock:
            if self.store is not None and known:
                for seq in self.store.list_runs(j.path):
                    if int(seq) not in j.batches:
                        self._load(j, int(seq))
            if not j.batches:
                return 0  # nothing journaled, nothing the chain can lack: no chain read per pass
            sent, trx = self._send_missing(j)
            self._confirm(j, trx)
        return sent

    def pending(self, protocol: Any) -> int:
        """Journaled units whose batch the chain does not have (0 when the chain has everything)."""
        j = self._journal(protocol)
        have = self.chain.batch_seq(j.protocol_id)
        on_chain = have.seq if have else 0
        return sum(len(b["units"]) for s, b in j.batches.items() if s > on_chain)


@dataclass(frozen=True)
class JournalSummary:
    """What the journal says was sent for a protocol: per batch number, its units and time by type."""

    batches: dict[int, dict[str, Any]]

    def totals(self, upto: int) -> tuple[int, int, int]:
        """(units, worker µs, dispatcher µs) of batches 1..upto."""
        units = worker = dispatcher = 0
        for seq, b in self.batches.items():
            if seq <= upto:
                units += len(b["units"])
                t = sum(u[4] for u in b["units"])
                if b["type"] == "worker":
                    worker += t
                else:
                    dispatcher += t
        return units, worker, dispatcher

    def dispatcher_us(self) -> int:
        """µs credited to dispatchers in every journaled batch."""
        return sum(u[4] for b in self.batches.values() if b["type"] != "worker" for u in b["units"])

    def of_jobs_without_records(self, have_records: set[str]) -> tuple[dict[str, int], int]:
        """(worker µs per contributor, dispatcher µs) the journal holds for jobs whose run records
        are gone from ZooKeeper (deleted jobs): the journal is their durable record, as it has
        every unit sent, per contributor, and a job is deleted only once all its units were sent."""
        workers: dict[str, int] = {}
        dispatcher = 0
        for b in self.batches.values():
            for u in b["units"]:
                if u[0] in have_records:
                    continue
                if b["type"] == "worker":
                    workers[u[2]] = workers.get(u[2], 0) + u[4]
                else:
                    dispatcher += u[4]
        return workers, dispatcher

    def above(self, seq: int) -> dict[str, int]:
        """µs per contributor in journaled batches numbered above `seq` (not on chain yet)."""
        out: dict[str, int] = {}
        for s, b in self.batches.items():
            if s > seq:
                for u in b["units"]:
                    out[u[2]] = out.get(u[2], 0) + u[4]
        return out


def read_journal(store: Any, owner: str, name: str) -> JournalSummary:
    """The protocol's batch journal as ZooKeeper holds it (for `boidctl report`)."""
    path = f"{JOURNAL}/{owner}.{name}"
    return JournalSummary({int(seq): json.loads(store.get_run(f"{path}/{seq}")) for seq in store.list_runs(path)})


def dispatch_interval(key: str) -> tuple[int, int] | None:
    """The job interval a dispatcher unit's key carries ("dispatch@START-END", µs)."""
    if not key.startswith("dispatch@"):
        return None
    a, _, b = key[len("dispatch@"):].partition("-")
    return int(a), int(b)


def _union(intervals: list[tuple[int, int]]) -> int:
    """Length of the union of [start, end] intervals (µs)."""
    total, cur_s, cur_e = 0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def _pro_rata(start: int, end: int, intervals: list[tuple[int, int]]) -> int:
    """∫ over [start, end] of 1/n(t), n(t) = how many `intervals` hold t (at least 1: the job's
    own is among them); exact, then rounded down to integer µs so shares never add up to more."""
    over = [(s, e) for s, e in intervals if s < end and e > start]
    starts = sorted(s for s, _ in over)
    ends = sorted(e for _, e in over)
    cuts = sorted({start, end, *(p for iv in over for p in iv if start < p < end)})
    share = Fraction(0)
    for a, b in zip(cuts, cuts[1:]):
        n = bisect.bisect_right(starts, a) - bisect.bisect_right(ends, a)   # begun by a, not ended by a
        share += Fraction(b - a, max(1, n))
    return math.floor(share)


class _Taken(Exception):
    """The journal already has a batch with this number."""
