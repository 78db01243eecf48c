"""A deduplicating, delaying work queue with client-go semantics.

A key is queued at most once; a key being processed is never handed to a second worker: if it
is added meanwhile it is marked dirty and re-queued when the first worker calls done(). This is
what guarantees "one object is never reconciled by two tasks at once" while different objects
run concurrently. Delayed adds (requeue_after, backoff) wait in a heap until due.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)


class ShutDown(Exception):
    """The queue was shut down; workers should exit."""


class WorkQueue(Generic[K]):
    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: list[K] = []          # FIFO of ready keys
        self._queued: set[K] = set()       # keys in _queue (dedup)
        self._processing: set[K] = set()
        self._dirty: set[K] = set()        # added while processing
        self._delayed: list[tuple[float, int, K]] = []
        self._due: dict[K, float] = {}     # earliest due time per delayed key
        self._seq = itertools.count()
        self._shutdown = False

    # -- producers ---------------------------------------------------------------------------
    def add(self, key: K) -> None:
        with self._cond:
            self._add_locked(key)

    def _add_locked(self, key: K) -> None:
        if self._shutdown:
            return
        self._due.pop(key, None)  # an immediate add supersedes a pending delayed one
        if key in self._processing:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.append(key)
            self._cond.notify()

    def add_after(self, key: K, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            if self._shutdown or key in self._queued:
                return
            due = self._clock() + delay
            if key in self._due and self._due[key] <= due:
                return  # an earlier wake-up is already scheduled
            self._due[key] = due
            heapq.heappush(self._delayed, (due, next(self._seq), key))
            self._cond.notify()

    # -- consumers ---------------------------------------------------------------------------
    def get(self, timeout: float | None = None) -> K:
        """Block until a key is ready; raise ShutDown when the queue closes, TimeoutError on timeout."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while True:
                if self._shutdown:
                    raise ShutDown()
                self._promote_due_locked()
                if self._queue:
                    key = self._queue.pop(0)
                    self._queued.discard(key)
                    self._processing.add(key)
                    return key
                waits = []
                if self._delayed:
                    waits.append(self._delayed[0][0] - self._clock())
                if deadline is not None:
                    left = deadline - self._clock()
                    if left <= 0:
                        raise TimeoutError()
                    waits.append(left)
                self._cond.wait(max(0.0, min(waits)) if waits else None)

    def done(self, key: K) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self._add_locked(key)

    def _promote_due_locked(self) -> None:
        now = self._clock()
        while self._delayed and self._delayed[0][0] <= now:
            due, _, key = heapq.heappop(self._delayed)
            if self._due.get(key) == due:
                del self._due[key]
                self._add_locked(key)

    # -- introspection -----------------------------------------------------------------------
    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)

    def depth(self) -> dict[str, int]:
        with self._cond:
            return {"ready": len(self._queue), "processing": len(self._processing), "delayed": len(self._due)}

    def shutdown(self) -> None:
        with self._cond:
            self._shutdown = True
            self._cond.notify_all()
