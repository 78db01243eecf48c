"""The Job reconciler: units -> attempts on the backend -> quorum -> amalgamated output.

Event driven and incremental, in the controller-runtime order: a backend update of one of the
job's tasks enqueues the job (dispatcher.py), and each pass *observes* only what changed (the
tasks updated since the last pass), *compares* only the units those touched (quorum.py: replicas,
quorum, retries, repeated identical failures, backoff), *acts* (writes results and acceptances
exactly once, a batch per ZooKeeper transaction, kills, launches up to the allowance from a
queue of units due and a cursor over the lazily expanded units), and *reports* status from
counters kept current by every write. A pass costs O(what changed), not O(units in the job).
Nothing is remembered between passes that is not in ZooKeeper or rebuilt from it once (a fresh
mirror, records.py, marks every open unit to evaluate), so the operator may die at any point:

- attempt recorded, not submitted / task died with the operator -> backend says LOST -> re-queued
  (a LOST attempt never counts as a failure);
- result written, unit not accepted -> the next pass accepts it (create_once: exactly once);
- accepted, not given to the ledger -> `recorded/<unit>` is missing -> recorded on the next pass
  (the ledger is idempotent, so a crash after the chain call only repeats a no-op);
- published, `final` not written -> published again (atomic overwrite).

A finished job, once every credit is recorded, is compacted: the full record goes to storage
next to the results manifest (`records.json`), ZooKeeper keeps one `summary` (counts and
per-contributor totals), removed with the job: after `ttlSecondsAfterFinished` the job is deleted
(as Kubernetes' TTL-after-finished controller does), and a deleted job leaves nothing in ZooKeeper.

Replication is BOINC-style: each unit runs on `replicas` distinct contributors; its result is the
hash of its output files; it is accepted when `quorum` distinct contributors agree. Outvoted
results are kept aside in the acceptance record (and status), never credited; when results
disagree the unit is re-issued, to contributors not yet used for it when there are any.

The ledger hook (world.ledger, optional): `record_units(protocol, job, [(unit_id, contributor,
microseconds)])` for every credited replica of newly accepted units (the unit id is unique within
the job; the job is identified by job.metadata.uid), and, if the ledger has it,
`record_dispatch(protocol, job, start_us, end_us)` once when the job succeeds (the ledger credits the
dispatcher its pro rata share of that interval: each instant divided among the jobs running then,
which it learns from `note_busy(uid, start_us, end_us or None)`, called every pass of a started
job). Both must be idempotent.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import asdict
import logging
import os
import posixpath
import time
from datetime import datetime, timezone
from typing import Any, Iterator

from boidcluster.adapters.backend import ImageUnavailable, TaskResources, TaskSpec, TaskUpdate
from boidcluster.adapters.chain import ContributorNotRegistered
from boidcluster.adapters.storage import NotFound as StorageNotFound
from boidcluster.adapters.store import Forbidden, NotFound
from boidcluster.engine.reconciler import Result, condition
from boidcluster.model.resources import (
    TOP_CONTRIBUTORS,
    ContributedTime,
    Disagreement,
    Job,
    Protocol,
    UnitCounts,
    UnitTime,
)
from boidcluster.reconcilers import registry

from . import quorum
from .amalgamate import OutputInvalid, publish, reducer_args_too_long, result_hash
from .dispatcher import Dispatcher, dispatcher_for
from .records import (
    Acceptance,
    Attempt,
    Final,
    JobRecords,
    Summary,
    TaskResult,
    accepted_units,
    now_us,
    parse_record,
    unit_index,
    write_full_record,
)
from .units import Unit, UnitSpace, input_groups, storage_path

log = logging.getLogger(__name__)

LEDGER_BATCH = 50       # units per record_units call
LIST_LIMIT = 20         # names listed in status and messages
LAUNCH_BATCH = 1000     # most tasks one pass submits
FIRST_BATCH = 32        # most tasks a pass submits for a job with none in flight (units start sooner)
RECORD_FILE = "records.json"  # a compacted job's full run record, next to its results manifest
STATUS_EVERY = 0.5      # seconds between status writes that only move counters
WAITING_RECHECK = 15.0  # a job waiting for a slot is also looked at this often (besides events)


def _dt(us: int | None) -> datetime | None:
    return None if us is None else datetime.fromtimestamp(us / 1e6, timezone.utc).replace(microsecond=0)


def _names(items: list[str]) -> str:
    more = f" and {len(items) - LIST_LIMIT} more" if len(items) > LIST_LIMIT else ""
    return ", ".join(items[:LIST_LIMIT]) + more


def output_path(job: Job, protocol: Protocol) -> str:
    return storage_path(protocol.spec.datadir, job.spec.output.path or f"jobs/{job.name}")


def attempt_path(protocol: Protocol, tag: str, unit: str, n: int) -> str:
    """An attempt's output directory: one directory per attempt, flat under its job's (a nested
    directory per unit cost a second mkdir on every launch)."""
    return posixpath.join(protocol.spec.datadir, ".runs", tag, f"{unit}.{n}")


def record_path(job: Job, protocol: Protocol) -> str:
    """The full run record of a compacted job, next to its results manifest."""
    return posixpath.join(output_path(job, protocol), RECORD_FILE)


def job_tag(job: Job) -> str:
    return f"{job.name}-{(job.metadata.uid or job.name)[:8]}"


@registry.reconciler(Job, cleanup=True, resync=30.0)
def reconcile_job(job: Job, world: Any) -> Result:
    """Run the job's units on the backend until every unit is accepted, then publish the output."""
    d = dispatcher_for(world)
    uid = job.metadata.uid or job.name
    if job.metadata.deletion_timestamp is not None:
        return _delete(job, world, d, uid)
    if d is None or world.storage is None:
        return Result(status={"phase": "Pending"}, conditions=[condition(
            "Ready", False, "NoBackend", "this operator has no execution backend or storage configured")])
    try:
        protocol = d.protocol(world.store, job.spec.protocol)
    except NotFound:
        return Result(status={"phase": "Pending"}, requeue_after=5.0, conditions=[condition(
            "Ready", False, "ProtocolNotFound", f"Protocol {job.spec.protocol!r} does not exist")])
    return _Pass(job, protocol, world, d, uid).run()


ACTIVE_BY_PROTOCOL = "active-by-protocol"


@registry.indexer(Job, ACTIVE_BY_PROTOCOL)
def active_by_protocol(job: Job) -> list[str]:
    """A Job not yet finished is found under its protocol's name (no all-Jobs scan per Protocol)."""
    return [] if job.status and job.status.phase in ("Succeeded", "Failed") else [job.spec.protocol]


@registry.source(Job)
def job_events(world: Any, enqueue: Any) -> Any:
    """Backend task updates enqueue their Job (no running job is polled on a timer)."""
    d = dispatcher_for(world)
    if d is None:
        return lambda: None
    d.reset_mirrors()   # a new term (leader change): every job's mirror is rebuilt from ZooKeeper once
    return d.subscribe(lambda name: enqueue(name, "task-update"))


def _delete(job: Job, world: Any, d: Dispatcher | None, uid: str) -> Result:
    """A deleted job: kill what runs, give the ledger what it has not got, then remove every
    record of the job from ZooKeeper (and its attempts' directories from storage)."""
    store = world.store
    recs = d.records(store, uid) if d is not None else JobRecords.load(store, uid)
    if d is not None:
        for tid in recs.in_flight():
            d.kill(tid, "deleted")
    if recs.start is not None and hasattr(world.ledger, "note_busy"):   # it stopped running now
        world.ledger.note_busy(uid, recs.start["at_us"], recs.final.at_us if recs.final else now_us())
    if recs.summary is None and recs.unrecorded and world.ledger is not None:
        try:
            protocol = store.get(Protocol, job.spec.protocol)
        except NotFound:
            protocol = None
        if protocol is not None:
            _Pass(job, protocol, world, d, uid).ledger()  # raises nothing; retried below if left
            if recs.unrecorded:
                return Result(requeue_after=2.0, conditions=[condition(
                    "Recorded", False, "Pending", f"{len(recs.unrecorded)} accepted units not yet recorded")])
    if world.storage is not None:
        try:
            protocol = store.get(Protocol, job.spec.protocol)
            world.storage.delete(posixpath.join(protocol.spec.datadir, ".runs", job_tag(job)), recursive=True)
        except (NotFound, StorageNotFound):
            pass
    store.delete_runs(uid)
    if d is not None:
        d.drop(uid)
    return Result.released()


class _Pass:
    """One reconcile of one job."""

    def __init__(self, job: Job, protocol: Protocol, world: Any, d: Dispatcher | None, uid: str) -> None:
        self.job, self.protocol, self.world, self.d, self.uid = job, protocol, world, d, uid
        self.store, self.storage = world.store, world.storage
        self.spec = job.spec
        self.recs: JobRecords = d.records(self.store, uid) if d is not None else JobRecords.load(self.store, uid)
        self.tag = job_tag(job)
        self.owner = (job.name, uid)
        self.conditions: list[Any] = []
        self.notify: list[tuple[str, str]] = []
        self.image_error = False
        self.timings: dict[str, float] = {}
        self.waiting = False
        self.more = False                              # launched a full batch: look again at once
        self.ended_now = False                         # this pass wrote the job's end
        self.txn: list[tuple[str, bytes]] = []        # records staged by this pass, committed together
        self.after: list[Any] = []                    # what may happen only once they are durable
        self.aborted = False
        rep = self.spec.replication
        self.rules = quorum.Rules(replicas=rep.replicas, quorum=rep.quorum or rep.replicas, retries=self.spec.retries,
                                  retry_backoff=d.retry_backoff if d else 1.0, max_backoff=d.max_backoff if d else 60.0)

    def flush(self) -> bool:
        """Commit the staged records (one transaction per RUN_BATCH), then run what waited for
        them. A record that already exists means another writer was active: reload, stop."""
        txn, after, self.txn, self.after = self.txn, self.after, [], []
        if txn and not self.store.create_many(txn):
            self.aborted = True
            self.reload()
            return False
        for fn in after:
            fn()
        return True

    def _phase(self, name: str, t0: float) -> float:
        t = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + (t - t0)
        return t

    # -- the pass ---------------------------------------------------------------------------
    def run(self) -> Result:
        t = time.perf_counter()
        if self.recs.summary is not None:
            return self.report_summary()
        space = self.units()
        assert self.d is not None
        self.d.poll()
        changed = self.d.take_changed(self.uid)
        if self.recs.fresh:
            self.rebuild(space)
            changed |= set(self.recs.flying)
        t = self._phase("observe", t)
        self.absorb(changed)
        if self.recs.final is None:
            self.enforce_timeouts()
            self.evaluate(space)
            t = self._phase("compare", t)
            if self.recs.unrecorded and self.world.ledger is not None:
                self.flush()   # the ledger only gets acceptances that are durable
            if not self.aborted:
                self.ledger()
                self.finish_or_launch(space)
        else:
            self.release()   # close the records of tasks killed when the job ended
        if not self.aborted:
            self.flush()
        if not self.aborted:   # records durable: settled units leave memory (memory flat with job size)
            self.recs.retire(ledger=self.world.ledger is not None)
        if self.recs.final is not None and not self.aborted:
            self.ledger()
            if not self.ended_now:   # the end is reported first; compaction is the next pass's work
                self.compact(space)
        t = self._phase("act", t)
        if self.aborted:
            return Result(write_status=False, requeue_after=0.0, timings=self.timings)
        result = self.report(space) if self.recs.summary is None else self.report_summary()
        self._phase("report", t)
        result.timings = self.timings
        return result

    def units(self) -> UnitSpace:
        wu = self.spec.work_units
        if wu.inputs is None:
            return UnitSpace(self.spec)
        groups = self.recs.inputs
        if groups is None:
            directory = storage_path(self.protocol.spec.datadir, wu.inputs.path)
            files = [e.path for e in self.storage.list(directory) if e.type == "file"]
            groups = self.recs.put_inputs(
                self.store, [list(g) for g in input_groups(files, wu.inputs.pattern, wu.inputs.per_unit)])
        return UnitSpace(self.spec, groups)

    def rebuild(self, space: UnitSpace) -> None:
        """A fresh mirror (restart, leader change, reload): every open unit is evaluated once."""
        r = self.recs
        r.fresh = False
        r.cursor = r.launched_upto
        r.dirty.update(r.open_results)
        r.dirty.update(r.flying_by_unit)
        for i in range(min(r.cursor, space.total)):  # units skipped below the cursor (none, normally)
            uid = space.unit(i).id
            if not r.is_accepted(uid, i) and uid not in r.tries:
                r.dirty.add(uid)
        assert self.d is not None
        self.d.ask([t for t in r.flying if self.d.update(t) is None], self.owner)

    def reload(self) -> None:
        assert self.d is not None
        self.recs = self.d.records(self.store, self.uid, reload=True)

    # -- observe ----------------------------------------------------------------------------
    def absorb(self, changed: set[str]) -> None:
        """Turn terminal updates of in-flight attempts into result records (one transaction)."""
        d = self.d
        assert d is not None
        for tid in sorted(changed):
            attempt = self.recs.flying.get(tid)
            u = d.update(tid)
            if attempt is None or u is None or not u.terminal:
                continue
            res = self._result(attempt, u, d.kill_reason(tid))
            self.txn.append(self.recs.stage_result(tid, res))
            self.recs.dirty.add(res.unit)
            self.after.append(lambda tid=tid: d.forget(tid))

    def _result(self, attempt: Attempt, u: TaskUpdate, reason: str | None) -> TaskResult:
        digest = result_hash(self.storage, attempt.output) if u.state == "FINISHED" else None
        message = u.message
        if u.state == "KILLED" and reason == "timeout":
            message = f"killed: ran longer than unitTimeout {self.spec.unit_timeout}s"
        # A backend enforcing TaskSpec.timeout itself reports it as FAILED (local) or as a KILLED
        # we did not ask for, "timed out after ..." (mesos); either is the unit's failure.
        timed_out = u.state == "KILLED" and (reason == "timeout" or (reason is None and u.message.startswith("timed out")))
        why = getattr(u, "reason", None)
        if u.state == "LOST" and why:
            message = f"{why}: {message}" if message else str(why)
        return TaskResult(unit=attempt.unit, state=u.state, contributor=u.contributor, exit_code=u.exit_code,
                          us=u.contributed_us, hash=digest, message=message[:500],
                          failure=u.state == "FAILED" or timed_out,
                          finished_us=int(u.finished_at * 1e6) if u.finished_at else now_us())

    def enforce_timeouts(self) -> None:
        """Backends enforce TaskSpec.timeout; this catches one that did not (O(tasks in flight))."""
        limit = self.spec.unit_timeout
        if limit is None:
            return
        assert self.d is not None
        now = time.time()
        for tid in list(self.recs.flying):
            u = self.d.update(tid)
            if (u is not None and u.state == "RUNNING" and u.started_at is not None
                    and now - u.started_at > limit + self.d.kill_grace and self.d.kill_reason(tid) is None):
                self.d.kill(tid, "timeout")

    # -- compare ----------------------------------------------------------------------------
    def evaluate(self, space: UnitSpace) -> None:
        """Evaluate the units something happened to: accept (one transaction), fail, or queue."""
        assert self.d is not None
        r = self.recs
        if not r.dirty:
            return
        online = frozenset(self.d.backend.contributors())
        kill: list[str] = []
        for unit in sorted(r.dirty):
            flying = sorted(r.flying_by_unit.get(unit, ()))
            if r.is_accepted(unit):
                kill += [t for t in flying if self.d.kill_reason(t) is None]  # extra replicas: decided
                continue
            results = [(t, r.results[t]) for t in r.open_results.get(unit, ())]
            contributors = [(self.d.update(t) or _NO_UPDATE).contributor for t in flying]
            v = quorum.evaluate(results, contributors, self.rules, online)
            if v.accept is not None:
                first = v.credited[0][0]
                r.wants.pop(unit, None)
                self.txn.append(r.stage_accepted(unit, Acceptance(
                    hash=v.accept, credited=tuple(c for _, c in v.credited), rejected=v.rejected,
                    at_us=now_us(), output=r.attempts[first].output)))
                kill += flying
                continue
            if v.disagreements:
                r.disagreeing[unit] = v.disagreements
            else:
                r.disagreeing.pop(unit, None)
            if v.failed is not None:
                r.failed[unit] = v.failed
            elif v.launch:
                self._want(unit, v.launch, v.not_before_us, v.exclude)
            else:
                r.wants.pop(unit, None)
        r.dirty.clear()
        d = self.d
        self.after += [lambda tid=tid: d.kill(tid, "accepted") for tid in kill]

    def _want(self, unit: str, n: int, not_before: int, exclude: frozenset[str]) -> None:
        r = self.recs
        prev = r.wants.get(unit)
        r.wants[unit] = (n, not_before, exclude)
        if prev is None or prev[1] != not_before:
            heapq.heappush(r.ready, (not_before, unit_index(unit), unit))

    # -- act --------------------------------------------------------------------------------
    def ledger(self) -> None:
        """Give the ledger the credits of newly accepted units. Recording is per contributor: the
        chain refuses a whole batch for one account it has no row for, so units credited to an
        unregistered account are held back (they stay accepted, not recorded, and are recorded on
        the first pass after the account is registered) and every other unit is recorded."""
        ledger = self.world.ledger
        if ledger is None:
            return
        if self.recs.start is not None and hasattr(ledger, "note_busy"):
            ledger.note_busy(self.uid, self.recs.start["at_us"], self.recs.final.at_us if self.recs.final else None)
        todo = sorted(self.recs.unrecorded)
        held: dict[str, int] = {}   # unregistered account -> accepted units held back for it
        try:
            if todo and hasattr(ledger, "unregistered"):
                missing = ledger.unregistered(self.protocol, {
                    c.contributor for u in todo for c in self.recs.accepted[u].credited})
                if missing:
                    keep = []
                    for u in todo:
                        who = {c.contributor for c in self.recs.accepted[u].credited} & missing
                        for a in who:
                            held[a] = held.get(a, 0) + 1
                        if not who:
                            keep.append(u)
                    todo = keep
            for i in range(0, len(todo), LEDGER_BATCH):
                batch = todo[i:i + LEDGER_BATCH]
                ledger.record_units(self.protocol, self.job, [
                    (unit, c.contributor, int(c.us)) for unit in batch for c in self.recs.accepted[unit].credited])
                self.recs.put_recorded(self.store, batch)
            final = self.recs.final
            if (final is not None and final.phase == "Succeeded" and not self.recs.dispatch
                    and _records_dispatch(ledger) and self.recs.start is not None):
                ledger.record_dispatch(self.protocol, self.job, self.recs.start["at_us"], final.at_us)
                self.recs.put_dispatch(self.store)
        except ContributorNotRegistered as e:   # registered accounts were checked; one was removed since
            self.conditions.append(condition("Recorded", False, "ContributorNotRegistered",
                                             self._not_registered({e.account: 0}, e.role)))
            return
        except Exception as e:  # the chain is down or refused: keep going, retry next pass
            log.info("job %s: recording contributed time failed: %s", self.job.name, e)
            self.conditions.append(condition("Recorded", False, type(e).__name__, str(e)[:500]))
            return
        if held:
            self.conditions.append(condition("Recorded", False, "ContributorNotRegistered",
                                             self._not_registered(held, "worker")))
        elif todo or self.recs.n_recorded:
            self.conditions.append(condition("Recorded", True, "Recorded",
                                             f"{self.recs.n_recorded} accepted units recorded"))

    def _not_registered(self, held: dict[str, int], role: str) -> str:
        names = ", ".join(f"{a} ({n} unit(s))" if n else a for a, n in sorted(held.items()))
        return (f"the time of {names} cannot be recorded: not registered as a {role} of protocol "
                f"{self.protocol.name} on chain; every other contributor's time is recorded. Apply a Contributor "
                f"for it (role {role}, researchers [{self.protocol.spec.researcher}]): its time stays pending and "
                "is recorded once it is registered")[:1000]

    def end(self, phase: str, reason: str, message: str, units: list[str] | tuple[str, ...] = ()) -> None:
        if not self.flush():
            return
        self.ended_now = True
        self.recs.put_final(self.store, Final(phase=phase, reason=reason, message=message[:1000],
                                              units=list(units)[:LIST_LIMIT], at_us=now_us()))
        self.notify.append((Protocol.KIND, self.protocol.name))  # the protocol sees its job finished
        self.release()
        assert self.d is not None
        self.d.allowance(self.protocol.name, self.uid, 0, 0)   # it wants nothing more
        self.d.wake_waiting(len(self.recs.flying) or 1)

    def release(self) -> None:
        """A finished job gives its slots back: kill whatever is still in flight."""
        assert self.d is not None
        for tid in self.recs.in_flight():
            if self.d.kill_reason(tid) is None:
                self.d.kill(tid, "job ended")

    def finish_or_launch(self, space: UnitSpace) -> None:
        r = self.recs
        start = r.start
        if start is None and (refused := self._reducer_refused(space)):
            self.end("Failed", *refused)   # before any unit runs, not after all did
            return
        if self.spec.deadline is not None and start is not None \
                and now_us() - start["at_us"] > self.spec.deadline * 1_000_000:
            left = [u.id for u in self._open_units(space, LIST_LIMIT + 1)]
            n_left = space.total - r.validated
            self.end("Failed", "DeadlineExceeded",
                     f"deadline {self.spec.deadline}s passed with {n_left} units unfinished: "
                     f"{_names(left) if n_left <= LIST_LIMIT else ', '.join(left[:LIST_LIMIT]) + f' and {n_left - LIST_LIMIT} more'}",
                     left)
            return
        if r.failed:
            failed = sorted(r.failed)
            first = failed[0]
            self.end("Failed", "UnitFailed",
                     f"{len(failed)} units failed: {_names(failed)} ({first} {r.failed[first]})", failed)
            return
        if r.validated >= space.total:
            self.amalgamate(space)
            return
        self.launch(space)

    def _reducer_refused(self, space: UnitSpace) -> tuple[str, str] | None:
        """(reason, message) when this job's reducer will not run: this operator does not run
        researchers' code outside the sandbox, or the unit directories cannot be its arguments
        (their paths are known before any unit runs: attempt numbers counted as two digits)."""
        out = self.spec.output
        if out.reduce != "command":
            return None
        if (refused := self._reducer_not_allowed()) is not None:
            return refused
        if out.unit_dirs != "arguments":
            return None
        prefix = self.storage.resolve(attempt_path(self.protocol, self.tag, "u", 0))[:-len("u.0")]
        if space.total * (len(prefix) + 12) > 2 * os.sysconf("SC_ARG_MAX"):   # certain without listing them
            why = reducer_args_too_long(space.total, itertools.repeat(prefix + "u.00", space.total))
        else:
            why = reducer_args_too_long(space.total, (f"{prefix}{space.unit(i).id}.00" for i in range(space.total)))
        return None if why is None else ("ReducerArgumentsTooLong", why)

    def _reducer_not_allowed(self) -> tuple[str, str] | None:
        if self.spec.output.reduce != "command" or self.world.settings.host_reducers:
            return None
        return "ReducerNotAllowed", (
            "reduce: command runs the job's reducer on the operator's machine, unsandboxed, as the operator's "
            "user, and this operator was not started with --allow-host-reducers (how its operator says it "
            "trusts researchers' reducers). Use reduce: concat, jsonl or none, or reduce in a job of its own")

    def _open_units(self, space: UnitSpace, limit: int) -> list[Unit]:
        out = []
        for i in range(space.total):
            u = space.unit(i)
            if not self.recs.is_accepted(u.id, i):
                out.append(u)
                if len(out) >= limit:
                    break
        return out

    def launch(self, space: UnitSpace) -> None:
        """Launch up to the allowance: units due in the retry queue first, then fresh units from
        the cursor (expanded one at a time). Attempts are created in one transaction before any
        submit, so a crash between the two leaves attempts the backend reports LOST."""
        assert self.d is not None
        r = self.recs
        in_flight = len(r.flying)
        fresh_per_unit = max(self.rules.replicas, self.rules.quorum)
        wanted = sum(n for n, _, _ in r.wants.values()) + (space.total - r.cursor) * fresh_per_unit
        cap = self.spec.parallelism
        if cap is not None:
            wanted = max(0, min(wanted, cap - in_flight))
        quota = self.protocol.spec.quota.max_parallelism if self.protocol.spec.quota else None
        budget = self.d.allowance(self.protocol.name, self.uid, in_flight, wanted, quota) - in_flight
        if wanted and budget <= 0:
            self.waiting = True
            self.d.wait_for_slot(self.job.name)
            return
        if budget > LAUNCH_BATCH:   # a backend without a fixed capacity (Mesos): a bounded pass, then more
            budget, self.more = LAUNCH_BATCH, True
        elif in_flight == 0 and budget > FIRST_BATCH:   # the first units start after a small transaction,
            budget, self.more = FIRST_BATCH, True       # the queue fills in the pass right after
        now = now_us()
        plan: list[tuple[Unit, int, frozenset[str]]] = []
        while budget > 0 and r.ready and r.ready[0][0] <= now:
            not_before, index, unit = heapq.heappop(r.ready)
            want = r.wants.get(unit)
            if want is None or want[1] != not_before:
                continue   # superseded
            n, _, exclude = want
            take = min(n, budget)
            u = space.unit(index)
            for _ in range(take):
                plan.append((u, self._next_try(u.id), exclude))
            budget -= take
            if take < n:
                r.wants[unit] = (n - take, not_before, exclude)
                heapq.heappush(r.ready, (not_before, index, unit))
            else:
                del r.wants[unit]
        while budget > 0 and r.cursor < space.total:
            u = space.unit(r.cursor)
            r.cursor += 1
            if r.is_accepted(u.id, u.index) or u.id in r.tries:
                continue
            take = min(fresh_per_unit, budget)
            for _ in range(take):
                plan.append((u, self._next_try(u.id), frozenset()))
            budget -= take
            if take < fresh_per_unit:
                self._want(u.id, fresh_per_unit - take, 0, frozenset())
        if plan:
            self._submit(plan)
        if budget > 0 and not self.more:   # slots this job does not want: a job waiting for one may have them
            self.after.append(lambda n=budget: self.d.wake_waiting(n))  # type: ignore[union-attr]

    def image(self, at: int) -> str | None:
        """The image every attempt runs: `spec.image` resolved once per job to a digest by the backend
        and kept in the start record (written once); None, with a condition, while it is unavailable."""
        r = self.recs
        if r.start is None:
            resolve = getattr(self.d.backend, "resolve_image", None)
            try:
                digest = resolve(self.spec.image) if resolve else None
            except ImageUnavailable as e:
                self.image_error = True
                self.conditions.append(condition("Ready", False, "ImageUnavailable", str(e)[:1000]))
                return None
            r.put_start(self.store, at, digest)
        return (r.start or {}).get("image_digest") or self.spec.image

    def _next_try(self, unit: str) -> int:
        n = self.recs.tries.get(unit, 0)
        self.recs.tries[unit] = n + 1
        return n

    def _submit(self, plan: list[tuple[Unit, int, frozenset[str]]]) -> None:
        assert self.d is not None
        r, spec = self.recs, self.spec
        at = now_us()
        image = self.image(at)
        if image is None:
            return
        tasks = []
        for unit, n, exclude in plan:
            tid = f"{self.tag}.{unit.id}.{n}"
            out = attempt_path(self.protocol, self.tag, unit.id, n)
            tasks.append((unit, tid, out, exclude, Attempt(unit=unit.id, n=n, output=out, at_us=at)))
        self.txn += [r.stage_attempt(tid, a) for _, tid, _, _, a in tasks]
        if not self.flush():
            return  # someone else launched one of them: look again
        command = ["/bin/sh", "-c", spec.command] if isinstance(spec.command, str) else list(spec.command)
        res = spec.resources
        resources = TaskResources(cpus=res.cpus, mem=res.mem, disk=res.disk, gpus=res.gpus)
        constraints = tuple(tuple(c) for c in spec.constraints)
        timeout = float(spec.unit_timeout) if spec.unit_timeout else None
        refused: list[tuple[str, TaskResult]] = []
        for unit, tid, out, exclude, _ in tasks:
            env = {**spec.env, "BOID_UNIT_INDEX": str(unit.index), "BOID_UNIT_PARAMS": unit.params_json,
                   "BOID_OUTPUT_DIR": out, "BOID_INPUT_FILES": unit.inputs_json}
            task = TaskSpec(task_id=tid, job=self.tag, unit=unit.id, command=command, env=env, output_dir=out,
                            image=image, network=self.protocol.spec.network, resources=resources,
                            constraints=constraints,
                            exclude_contributors=exclude, timeout=timeout, role=self.protocol.name)
            try:
                self.d.submit(task, self.owner)
            except Exception as e:  # recorded as a refused submit: backs off, fails the unit if it repeats
                log.info("job %s: submit of %s failed: %s", self.job.name, tid, e)
                refused.append((tid, _refused(unit.id, f"submit failed: {type(e).__name__}: {e}")))
        for tid, res_ in refused:
            self.txn.append(r.stage_result(tid, res_))
            r.dirty.add(res_.unit)

    def amalgamate(self, space: UnitSpace) -> None:
        """Publish the output. Every acceptance is read back from ZooKeeper once (retired units
        are not in memory), so this pass's own acceptances are committed first."""
        if not self.flush():
            return
        if (refused := self._reducer_not_allowed()) is not None:   # started under an operator that allowed it
            self.end("Failed", *refused)
            return
        out = output_path(self.job, self.protocol)
        acc = accepted_units(self.store, self.uid)   # undecoded: each is parsed as its unit is written

        def entries() -> Iterator[dict[str, Any]]:   # the manifest's units, one at a time (streamed)
            for u in space:
                a = parse_record(acc[u.id])
                yield {"id": u.id, "index": u.index, "params": u.params, "inputs": list(u.inputs),
                       "hash": a["hash"], "output": a["output"],
                       "credited": [{"contributor": c["contributor"], "microseconds": c["us"]} for c in a["credited"]]}

        manifest = {
            "job": self.job.name, "uid": self.uid, "protocol": self.protocol.name,
            "reduce": self.spec.output.reduce, "output": out, "image": self.spec.image,
            "image_digest": (self.recs.start or {}).get("image_digest"), "units": entries(),
        }
        try:
            publish(self.storage, out, self.spec.output.reduce, self.spec.output.command,
                    [(u.id, parse_record(acc[u.id])["output"]) for u in space], manifest, self.spec.output.unit_dirs)
        except OutputInvalid as e:
            self.end("Failed", "OutputInvalid", str(e))
            return
        self.end("Succeeded", "Complete", f"{space.total} units accepted; output in {out}")

    # -- compaction ---------------------------------------------------------------------------
    def compact(self, space: UnitSpace) -> None:
        """Once the job ended, nothing is in flight and the ledger has every credit: the full
        record goes to storage, one summary stays in ZooKeeper, the rest of the records go."""
        r = self.recs
        if r.final is None or r.flying or (self.world.ledger is not None and (
                r.unrecorded or (r.final.phase == "Succeeded" and _records_dispatch(self.world.ledger)
                                 and not r.dispatch))):
            return
        path = record_path(self.job, self.protocol)
        head = {"job": self.job.name, "uid": self.uid, "protocol": self.protocol.name,
                "start": r.start, "final": asdict(r.final), "dispatch": r.dispatch, "inputs": r.inputs}
        self.storage.ensure_dir(posixpath.dirname(path))
        self.storage.publish_atomic(path, lambda f: write_full_record(f, self.store, self.uid, head))
        status = self.report(space).status
        summary = Summary(final=r.final, start_us=r.start["at_us"] if r.start else None, total=space.total,
                          image_digest=(r.start or {}).get("image_digest"),
                          validated=r.validated, succeeded=r.succeeded,
                          contributors=dict(sorted(r.per_contributor.items())),
                          slowest=[(u, c, us) for us, u, c in r.slowest],
                          disagreements=[d.model_dump() for d in status["disagreements"]], record=path,
                          dispatch=r.dispatch)
        self.store.create_once(f"{self.uid}/summary", summary.to_json())
        self.store.delete_runs(self.uid, keep=("summary",))
        assert self.d is not None
        self.d.drop(self.uid)
        self.recs = JobRecords(self.uid, summary=summary, final=summary.final, fresh=False)

    # -- report -----------------------------------------------------------------------------
    def report(self, space: UnitSpace) -> Result:
        assert self.d is not None
        r, final = self.recs, self.recs.final
        if final is None:   # only counters moved and status was written just now: build nothing
            key = self._key("Running" if r.start else "Pending", self._conditions(None, "", bool(r.start)))
            now = time.monotonic()
            if key == r.status_key and now - r.status_at < STATUS_EVERY:
                requeue = self._requeue(None)
                due = STATUS_EVERY - (now - r.status_at)
                return Result(write_status=False, notify=self.notify,
                              requeue_after=due if requeue is None else min(requeue, due))
        running = {a.unit for t, a in r.flying.items()
                   if (u := self.d.update(t)) is not None and u.state == "RUNNING" and not r.is_accepted(a.unit)}
        failed = set(r.failed) if final is None else (set(final.units) if final.reason == "UnitFailed" else set())
        total, validated = space.total, r.validated
        counts = UnitCounts(total=total, validated=validated, running=len(running),
                            succeeded=r.succeeded, failed=len(failed),
                            pending=max(0, total - validated - len(running) - len(failed)))
        disagreements = [Disagreement(unit=u, contributor=x.contributor, hash=x.hash, task=x.task)
                         for u in sorted(r.disagreeing)[:LIST_LIMIT] for x in r.disagreeing[u]]
        disagreements += [Disagreement(unit=u, contributor=x.contributor, hash=x.hash, task=x.task)
                          for u, x in r.rejections]
        status = self._status(final, r.start["at_us"] if r.start else None, counts, r.per_contributor,
                              [UnitTime(unit=u, contributor=c, microseconds=us) for us, u, c in r.slowest],
                              disagreements,
                              (list(final.units) if final and final.phase == "Failed" else sorted(failed))[:LIST_LIMIT])
        conds = self._conditions(final, status["progress"], bool(r.start))
        result = Result(status=status, conditions=conds, requeue_after=self._requeue(final), notify=self.notify)
        self._coalesce(result, final)
        return result

    def _requeue(self, final: Final | None) -> float | None:
        if final is None:
            requeue = self._next_look()
            if self.image_error:   # the image may be imported meanwhile: look again, not in a tight loop
                requeue = 10.0 if requeue is None else max(requeue, 10.0)
            return requeue
        if self.recs.summary is None:
            return 0.0 if self.ended_now else 2.0   # compaction waits for the ledger / the kills
        return None

    @staticmethod
    def _key(phase: Any, conditions: list[Any]) -> tuple[Any, ...]:
        """What makes a status write due at once: the phase or a condition's type/status/reason."""
        return phase, tuple((c.type, c.status, c.reason) for c in conditions)

    def _next_look(self) -> float | None:
        """Event driven: look again only when something is due (a backoff ends, a unit may time
        out, the deadline passes) or, while waiting for a slot, as a safety net."""
        r, dues = self.recs, []
        now = now_us()
        if r.ready:
            dues.append(max(0.0, (r.ready[0][0] - now) / 1e6))
        if self.spec.unit_timeout is not None and r.flying:
            dues.append(float(self.spec.unit_timeout) + (self.d.kill_grace if self.d else 0) + 0.5)
        if self.spec.deadline is not None and r.start is not None:
            dues.append(max(0.0, (r.start["at_us"] + self.spec.deadline * 1_000_000 - now) / 1e6) + 0.05)
        if self.waiting:
            dues.append(WAITING_RECHECK)
        if r.dirty or self.more:
            dues.append(0.0)
        return min(dues) if dues else None

    def _coalesce(self, result: Result, final: Final | None) -> None:
        """Counters move on every event; status is written at most every STATUS_EVERY seconds
        unless the phase or a condition changes (the engine looks again when it is due)."""
        key = self._key(result.status.get("phase"), result.conditions)
        now = time.monotonic()
        r = self.recs
        if final is None and key == r.status_key and now - r.status_at < STATUS_EVERY:
            result.write_status = False
            due = STATUS_EVERY - (now - r.status_at)
            result.requeue_after = due if result.requeue_after is None else min(result.requeue_after, due)
            return
        r.status_key, r.status_at = key, now

    def report_summary(self) -> Result:
        s = self.recs.summary
        assert s is not None
        failed = list(s.final.units) if s.final.phase == "Failed" else []
        counts = UnitCounts(total=s.total, validated=s.validated, succeeded=s.succeeded,
                            failed=len(failed) if s.final.reason == "UnitFailed" else 0,
                            pending=max(0, s.total - s.validated - (len(failed) if s.final.reason == "UnitFailed" else 0)))
        status = self._status(s.final, s.start_us, counts, s.contributors,
                              [UnitTime(unit=u, contributor=c, microseconds=us) for u, c, us in s.slowest],
                              [Disagreement(**d) for d in s.disagreements], failed[:LIST_LIMIT])
        result = Result(status=status, conditions=self._conditions(s.final, status["progress"], True),
                        notify=self.notify)
        ttl = self.spec.ttl_seconds_after_finished
        if ttl is not None:
            left = s.final.at_us / 1e6 + ttl - time.time()
            if left <= 0:
                log.info("job %s finished more than ttlSecondsAfterFinished=%ss ago: deleting it", self.job.name, ttl)
                try:
                    self.store.delete(Job, self.job.name)
                except NotFound:
                    pass
                except Forbidden:  # a protocol's dispatcher may not: the operator does (admission.grant_job)
                    pass
            else:
                result.requeue_after = left
        return result

    def _status(self, final: Final | None, start_us: int | None, counts: UnitCounts, per: dict[str, int],
                slow: list[UnitTime], disagreements: list[Disagreement], failed: list[str]) -> dict[str, Any]:
        phase = final.phase if final else ("Running" if start_us else "Pending")
        total, validated = counts.total, counts.validated
        top = sorted(per.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_CONTRIBUTORS]
        return {
            "phase": phase, "units": counts,
            "progress": f"{validated}/{total} ({validated * 100 // total if total else 100}%)",
            "start_time": _dt(start_us), "completion_time": _dt(final.at_us) if final else None,
            "output": output_path(self.job, self.protocol) if phase == "Succeeded" else None,
            "contributors": [ContributedTime(account=a, seconds=us // 1_000_000, microseconds=us) for a, us in top],
            "slowest_units": slow[:5], "disagreements": disagreements[:LIST_LIMIT], "failed_units": failed,
            "image_digest": (self.recs.start or {}).get("image_digest")
                            or (self.recs.summary.image_digest if self.recs.summary else None),
        }

    def _conditions(self, final: Final | None, progress: str, started: bool) -> list[Any]:
        conds = list(self.conditions)
        if final is None:
            conds += [condition("Complete", False, "Running" if started else "Pending", progress),
                      condition("Failed", False, "Running")]
        elif final.phase == "Succeeded":
            conds += [condition("Complete", True, final.reason, final.message), condition("Failed", False, "Succeeded")]
        else:
            conds += [condition("Complete", False, "Failed", final.message),
                      condition("Failed", True, final.reason, final.message)]
        return conds


_NO_UPDATE = TaskUpdate("", "STAGING")


def _records_dispatch(ledger: Any) -> bool:
    """The ledger records the dispatcher's time (it has the hook and an account to credit); a
    job's dispatch record then means that time is on chain, as `boidctl report` reads it."""
    return hasattr(ledger, "record_dispatch") and getattr(ledger, "dispatcher_account", True) is not None


def _refused(unit: str, message: str) -> TaskResult:
    return TaskResult(unit=unit, state="LOST", contributor=None, exit_code=None, us=0, hash=None,
                      message=message[:500], failure=False, finished_us=now_us(), submit_error=True)
