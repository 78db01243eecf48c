"""The per-process Dispatcher: one backend, its update stream, and fair sharing of its slots.

Several Job reconciles run at once on engine workers, but there is one backend and one stream
of task updates; the Dispatcher is what they share. It holds only what can be rebuilt: the
latest update per task, which job each task belongs to, which tasks changed since their job's
last pass, each job's record mirror (records.JobRecords) and each job's current demand. All
durable state is in ZooKeeper, so a new Dispatcher (a restarted operator) starts empty and
converges from the records.

Event driven: while the engine runs (`subscribe`), a pump thread drains `backend.updates()` and
asks the engine to reconcile the job whose task changed (an event source, like
controller-runtime's source.Channel), so no running job is polled on a timer.

Fair share: when the backend can say how many tasks it runs at once (`capacity()`, the local
backend), capacity is divided max-min fairly between the protocols that want work, then between
each protocol's jobs, so one protocol's big job cannot starve another protocol. The Mesos backend
has no fixed capacity (Mesos roles share the cluster), so there only parallelism and quota apply.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from boidcluster.adapters.backend import Backend, TaskSpec, TaskUpdate
from boidcluster.adapters.store import Store

from .records import JobRecords

log = logging.getLogger(__name__)

DEMAND_TTL = 15.0   # seconds a job's demand counts without a fresh reconcile
PROTOCOL_TTL = 1.0  # seconds a Protocol read serves the passes of its jobs


@dataclass
class _Demand:
    protocol: str
    in_flight: int
    wanted: int
    at: float


def waterfill(capacity: int, demands: dict[str, int]) -> dict[str, int]:
    """Max-min fair split of `capacity` integer slots between demands (by sorted key)."""
    alloc = {k: 0 for k in demands}
    left = capacity
    active = sorted(k for k, d in demands.items() if d > 0)
    while left > 0 and active:
        share = max(1, left // len(active))
        for k in list(active):
            give = min(share, demands[k] - alloc[k], left)
            alloc[k] += give
            left -= give
            if alloc[k] >= demands[k]:
                active.remove(k)
            if left == 0:
                break
    return alloc


class Dispatcher:
    """Shared by all Job reconciles of one operator process.

    `backend`: the execution backend. `retry_backoff`/`max_backoff`: seconds before a failed
    unit is retried (doubling per failure). `poll`: how long the pump waits for an update
    before looking whether it should stop (no job is polled on a timer). `kill_grace`: seconds past unitTimeout before the dispatcher itself
    kills an attempt the backend did not end. `overcommit`: tasks in flight per backend slot, at
    least (those above one wait in the backend's queue, so a slot never idles between passes);
    while tasks are short, up to `max_overcommit`, so that the queue holds about `queue_seconds`
    of work per slot (see `depth`).
    `batch_window`: seconds the event pump gathers updates after the first one, so that a burst
    of task ends costs its job one pass, not one each; the gathering stops after `batch_gap`
    without an update, so an end reaches its job within 10 ms once the burst is over. Measured
    with units of `true` on 2 cores, 10,000-unit jobs, three runs each (`/proc` CPU of the job
    worker thread per unit): a window of 0.01 s with 16 tasks per slot 0.20-0.23 ms; 0.02 s
    with 32: 0.18-0.20; 0.05 s with 64: 0.15-0.18 (and 1,300-1,420 units/s against 1,150-1,270).
    The queue must hold more than a window of work."""

    def __init__(self, backend: Backend, *, retry_backoff: float = 1.0, max_backoff: float = 60.0,
                 poll: float = 0.25, kill_grace: float = 5.0, overcommit: int = 2,
                 max_overcommit: int = 64, queue_seconds: float = 0.25,
                 batch_window: float = 0.05, batch_gap: float = 0.01) -> None:
        self.backend = backend
        self.retry_backoff, self.max_backoff = retry_backoff, max_backoff
        self.poll_interval = poll
        self.kill_grace = kill_grace
        self.overcommit = overcommit
        self.max_overcommit = max(overcommit, max_overcommit)
        self.queue_seconds = queue_seconds
        self.task_seconds: float | None = None   # a task's run time, moving average over recent ends
        self.batch_window = batch_window
        self.batch_gap = min(batch_gap, batch_window)
        self._mu = threading.RLock()
        self.latest: dict[str, TaskUpdate] = {}
        self.tracked: set[str] = set()          # submitted by us or asked about via reconcile
        self.kill_reasons: dict[str, str] = {}  # task id -> why we killed it ("timeout", ...)
        self._records: dict[str, JobRecords] = {}
        self._demand: dict[str, _Demand] = {}
        self._owner: dict[str, tuple[str, str]] = {}   # task id -> (job name, job uid)
        self._changed: dict[str, set[str]] = {}        # job uid -> task ids updated since its last pass
        self._subscribers: list[Callable[[str], None]] = []
        self._protocols: dict[str, tuple[float, Any]] = {}
        self._waiting: dict[str, None] = {}            # job names waiting for a slot (ordered)
        self._pump: threading.Thread | None = None
        self._pump_stop = threading.Event()
        self.pump_errors = 0

    # -- the event source ----------------------------------------------------------------------
    def subscribe(self, notify: Callable[[str], None]) -> Callable[[], None]:
        """Call `notify(job name)` whenever a task of that job changes, until the returned
        function is called. The first subscriber starts the pump thread."""
        with self._mu:
            self._subscribers.append(notify)
            if self._pump is None or not self._pump.is_alive():
                self._pump_stop.clear()
                self._pump = threading.Thread(target=self._pump_loop, name="boid-dispatch-events", daemon=True)
                self._pump.start()

        def unsubscribe() -> None:
            with self._mu:
                if notify in self._subscribers:
                    self._subscribers.remove(notify)
                last = not self._subscribers
                pump = self._pump
            if last and pump is not None:
                self._pump_stop.set()
                if pump is not threading.current_thread():
                    pump.join(5.0)

        return unsubscribe

    def _pump_loop(self) -> None:
        delay = 0.1
        while not self._pump_stop.is_set():
            try:
                got = self.backend.updates(self.poll_interval)
                if got and self.batch_window > 0:
                    got += self._gather()
                self._ingest(got)
                delay = 0.1
            except Exception:  # the backend failed: say so, back off, never die
                self.pump_errors += 1
                log.exception("reading task updates failed; retrying in %.1fs", delay)
                self._pump_stop.wait(delay)
                delay = min(delay * 2, 5.0)

    def _ingest(self, updates: list[TaskUpdate]) -> None:
        if not updates:
            return
        jobs: set[str] = set()
        freed = 0
        with self._mu:
            for u in updates:
                prev = self.latest.get(u.task_id)
                if prev is not None and prev.terminal:
                    continue
                self.latest[u.task_id] = u
                freed += u.terminal
                if u.terminal and u.started_at is not None and u.finished_at is not None:
                    ran = max(0.0, u.finished_at - u.started_at)
                    self.task_seconds = ran if self.task_seconds is None else 0.9 * self.task_seconds + 0.1 * ran
                owner = self._owner.get(u.task_id)
                if owner is not None:
                    self._changed.setdefault(owner[1], set()).add(u.task_id)
                    jobs.add(owner[0])
            # a slot came free: wake as many jobs waiting for one (oldest first); they re-register
            # if their fair share is still used up
            jobs.update(self._take_waiting(freed))
            subs = list(self._subscribers)
        self._notify(jobs, subs)

    def _gather(self) -> list[TaskUpdate]:
        """What ends soon after a first update: one pass per burst. Gathers while updates keep
        coming, up to `batch_window`, and stops after a `batch_gap` without any, so the last end
        of a job reaches it within a gap, not a window."""
        out: list[TaskUpdate] = []
        end = time.monotonic() + self.batch_window
        while (left := end - time.monotonic()) > 0 and not self._pump_stop.is_set():
            self._pump_stop.wait(min(self.batch_gap, left))
            more = self.backend.updates(0.0)
            if not more:
                break
            out += more
        return out

    def _take_waiting(self, n: int) -> list[str]:
        """Up to `n` jobs waiting for a slot, oldest first, no longer waiting (caller holds _mu)."""
        names = list(itertools.islice(self._waiting, max(n, 0)))
        for name in names:
            del self._waiting[name]
        return names

    @staticmethod
    def _notify(names: Iterable[str], subs: list[Callable[[str], None]]) -> None:
        for name in names:
            for notify in subs:
                try:
                    notify(name)
                except Exception:
                    log.exception("notifying job %s failed", name)

    def wait_for_slot(self, name: str) -> None:
        """The job wants to launch but has no allowance: wake it when a task ends."""
        with self._mu:
            self._waiting.setdefault(name, None)

    def take_changed(self, uid: str) -> set[str]:
        """Task ids of this job with updates since the last call (the pass's work list)."""
        with self._mu:
            return self._changed.pop(uid, set())

    # -- updates -----------------------------------------------------------------------------
    def poll(self) -> None:
        """Drain the backend's updates now (a terminal update is never overwritten); the pump
        does this continuously while subscribed, this is for a pass without one."""
        self._ingest(self.backend.updates(0.0))

    def update(self, task_id: str) -> TaskUpdate | None:
        with self._mu:
            return self.latest.get(task_id)

    def forget(self, task_id: str) -> None:
        """The task's result is durable: drop what we kept about it."""
        with self._mu:
            self.latest.pop(task_id, None)
            self.kill_reasons.pop(task_id, None)
            self._owner.pop(task_id, None)
            self.tracked.discard(task_id)

    def ask(self, task_ids: list[str], owner: tuple[str, str]) -> None:
        """Ask the backend about in-flight tasks this process has not seen (after a restart)."""
        with self._mu:
            new = [t for t in task_ids if t not in self.tracked]
            self.tracked.update(new)
            for t in task_ids:
                self._owner[t] = owner
        if new:
            self.backend.reconcile(new)

    def submit(self, task: TaskSpec, owner: tuple[str, str]) -> None:
        """Submit for the job `owner` = (name, uid); a refused submit raises (nothing is tracked)."""
        with self._mu:
            self.tracked.add(task.task_id)
            self._owner[task.task_id] = owner
        try:
            self.backend.submit(task)
        except Exception:
            with self._mu:
                self.tracked.discard(task.task_id)
                self._owner.pop(task.task_id, None)
            raise

    def kill(self, task_id: str, reason: str) -> None:
        with self._mu:
            self.kill_reasons.setdefault(task_id, reason)
        self.backend.kill(task_id)

    def kill_reason(self, task_id: str) -> str | None:
        with self._mu:
            return self.kill_reasons.get(task_id)

    # -- record mirrors ------------------------------------------------------------------------
    def records(self, store: Store, uid: str, *, reload: bool = False) -> JobRecords:
        with self._mu:
            r = self._records.get(uid)
        if r is None or reload:
            r = JobRecords.load(store, uid)
            with self._mu:
                self._records[uid] = r
        return r

    def protocol(self, store: Store, name: str) -> Any:
        """The job's Protocol, read at most once per PROTOCOL_TTL seconds (every pass needs its
        datadir and quota; a spec change reaches running jobs within that time)."""
        from boidcluster.model.resources import Protocol

        now = time.monotonic()
        with self._mu:
            hit = self._protocols.get(name)
        if hit is not None and now - hit[0] < PROTOCOL_TTL:
            return hit[1]
        p = store.get(Protocol, name)
        with self._mu:
            self._protocols[name] = (now, p)
        return p

    def reset_mirrors(self) -> None:
        """Forget every job's mirror: another leader may have written records meanwhile."""
        with self._mu:
            self._records.clear()

    def drop(self, uid: str) -> None:
        with self._mu:
            self._records.pop(uid, None)
            gone = self._demand.pop(uid, None)
            self._changed.pop(uid, None)
        if gone is not None and gone.in_flight:
            self.wake_waiting(gone.in_flight)

    # -- fair share ---------------------------------------------------------------------------
    def allowance(self, protocol: str, uid: str, in_flight: int, wanted: int,
                  quota: int | None = None) -> int:
        """How many tasks this job may have in flight now (>= in_flight is not promised:
        tasks above the allowance are never killed, they just end and are not replaced)."""
        now = time.monotonic()
        with self._mu:
            self._demand[uid] = _Demand(protocol, in_flight, wanted, now)
            for k in [k for k, d in self._demand.items() if now - d.at > DEMAND_TTL]:
                del self._demand[k]
            demands = dict(self._demand)
        limit = in_flight + wanted
        if quota is not None:
            others = sum(d.in_flight for k, d in demands.items() if d.protocol == protocol and k != uid)
            limit = min(limit, max(0, quota - others))
        cap_fn = getattr(self.backend, "capacity", None)
        if cap_fn is None:
            return limit
        capacity = int(cap_fn()) * self.depth()
        by_protocol: dict[str, int] = {}
        for d in demands.values():
            by_protocol[d.protocol] = by_protocol.get(d.protocol, 0) + d.in_flight + d.wanted
        share = waterfill(capacity, by_protocol).get(protocol, 0)
        # within its protocol's share a job takes what the protocol's other jobs leave free
        # (work conserving: with a thousand small jobs, whichever is looked at uses a free slot)
        others = sum(d.in_flight for k, d in demands.items() if d.protocol == protocol and k != uid)
        return min(limit, max(0, share - others))

    def depth(self) -> int:
        """Tasks in flight per backend slot. A slot's next task must already wait in the backend's
        queue when its task ends, or the slot idles for the dispatch loop's latency (the end is
        read, its job's pass records it and submits the next: milliseconds to tens of them).
        With short tasks that latency is many tasks long, so the queue is made about
        `queue_seconds` of work deep; with long tasks it stays `overcommit`. A job that arrives
        later waits at most about `queue_seconds` behind the queue for its fair share."""
        ran = self.task_seconds
        if ran is None:
            return self.overcommit
        return max(self.overcommit, min(self.max_overcommit, 1 + int(self.queue_seconds / max(ran, 1e-3))))

    def wake_waiting(self, n: int) -> None:
        """`n` slots are left unused: wake as many jobs waiting for one (they ask again)."""
        with self._mu:
            names = self._take_waiting(n)
            subs = list(self._subscribers)
        self._notify(names, subs)

    def close(self) -> None:
        self._pump_stop.set()
        self.backend.close()


_create_lock = threading.Lock()


def dispatcher_for(world: Any) -> Dispatcher | None:
    """The world's Dispatcher, made over world.backend on first use (None without a backend)."""
    if world.dispatcher is None and world.backend is not None:
        with _create_lock:
            if world.dispatcher is None:
                world.dispatcher = Dispatcher(world.backend)
    return world.dispatcher
