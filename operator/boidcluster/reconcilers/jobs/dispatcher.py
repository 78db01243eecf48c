"""The per-process Dispatcher: one backend, its update stream, and fair sharing of its slots.

Several Job reconciles run at once on engine workers, but there is one backend and one stream
of task updates; the Dispatcher is what they share. It holds only what can be rebuilt: the
latest update per task (drained from `backend.updates()` by whichever reconcile polls first),
which tasks this process submitted or asked the backend about, each job's record mirror
(records.JobRecords) and each job's current demand. All durable state is in ZooKeeper, so a
new Dispatcher (a restarted operator) starts empty and converges from the records.

Fair share: when the backend can say how many tasks it runs at once (`capacity()`, the local
backend), capacity is divided max-min fairly between the protocols that want work, then between
each protocol's jobs, so one protocol's big job cannot starve another protocol. The Mesos backend
has no fixed capacity (Mesos roles share the cluster), so there only parallelism and quota apply.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from boidcluster.adapters.backend import Backend, TaskSpec, TaskUpdate
from boidcluster.adapters.store import Store

from .records import JobRecords

DEMAND_TTL = 15.0   # seconds a job's demand counts without a fresh reconcile


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
    unit is retried (doubling per failure). `poll`: how often a running job is looked at again
    (Result.requeue_after). `kill_grace`: seconds past unitTimeout before the dispatcher itself
    kills an attempt the backend did not end. `overcommit`: tasks in flight per backend slot
    (those above one wait in the backend's queue, so a slot never idles between passes)."""

    def __init__(self, backend: Backend, *, retry_backoff: float = 1.0, max_backoff: float = 60.0,
                 poll: float = 0.25, kill_grace: float = 5.0, overcommit: int = 2) -> None:
        self.backend = backend
        self.retry_backoff, self.max_backoff = retry_backoff, max_backoff
        self.poll_interval = poll
        self.kill_grace = kill_grace
        self.overcommit = overcommit
        self._mu = threading.RLock()
        self.latest: dict[str, TaskUpdate] = {}
        self.tracked: set[str] = set()          # submitted by us or asked about via reconcile
        self.kill_reasons: dict[str, str] = {}  # task id -> why we killed it ("timeout", ...)
        self._records: dict[str, JobRecords] = {}
        self._demand: dict[str, _Demand] = {}

    # -- updates -----------------------------------------------------------------------------
    def poll(self) -> None:
        """Drain the backend's updates into `latest` (a terminal update is never overwritten)."""
        with self._mu:
            for u in self.backend.updates(0.0):
                prev = self.latest.get(u.task_id)
                if prev is not None and prev.terminal:
                    continue
                self.latest[u.task_id] = u

    def update(self, task_id: str) -> TaskUpdate | None:
        with self._mu:
            return self.latest.get(task_id)

    def forget(self, task_id: str) -> None:
        """The task's result is durable: drop what we kept about it."""
        with self._mu:
            self.latest.pop(task_id, None)
            self.kill_reasons.pop(task_id, None)

    def ask(self, task_ids: list[str]) -> None:
        """Ask the backend about in-flight tasks this process has not seen (after a restart)."""
        with self._mu:
            new = [t for t in task_ids if t not in self.tracked]
            self.tracked.update(new)
        if new:
            self.backend.reconcile(new)

    def submit(self, task: TaskSpec) -> None:
        with self._mu:
            self.tracked.add(task.task_id)
        self.backend.submit(task)

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

    def drop(self, uid: str) -> None:
        with self._mu:
            self._records.pop(uid, None)
            self._demand.pop(uid, None)

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
        capacity = int(cap_fn()) * self.overcommit
        by_protocol: dict[str, int] = {}
        for d in demands.values():
            by_protocol[d.protocol] = by_protocol.get(d.protocol, 0) + d.in_flight + d.wanted
        share = waterfill(capacity, by_protocol).get(protocol, 0)
        jobs = {k: d.in_flight + d.wanted for k, d in demands.items() if d.protocol == protocol}
        return min(limit, waterfill(share, jobs).get(uid, 0))

    def close(self) -> None:
        self.backend.close()


_create_lock = threading.Lock()


def dispatcher_for(world: Any) -> Dispatcher | None:
    """The world's Dispatcher, made over world.backend on first use (None without a backend)."""
    if world.dispatcher is None and world.backend is not None:
        with _create_lock:
            if world.dispatcher is None:
                world.dispatcher = Dispatcher(world.backend)
    return world.dispatcher
