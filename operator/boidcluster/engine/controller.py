"""The level-triggered reconcile loop: watch -> deduplicating queue -> workers -> status.

Shaped like controller-runtime: a watch (plus a periodic resync, because the chain and Marathon
never notify us) only *enqueues keys*; workers re-read the object and call its kind's reconciler;
the controller alone writes status, manages the cleanup finalizer and schedules retries with
per-object backoff. The work queue guarantees one object is never reconciled by two workers at
once. Status-only changes are not enqueued, so our own status writes do not loop back.
"""

from __future__ import annotations

import logging
import threading
import time
import typing
from typing import Any

from boidcluster.adapters.store import Conflict, NotFound, Store, StoreError, StoreUnavailable
from boidcluster.model.meta import Condition, Resource, Status

from .backoff import Backoff
from .metrics import Metrics
from .reconciler import Registration, Registry, Result, Retry, condition
from .status import merge_conditions
from .workqueue import ShutDown, WorkQueue

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (KIND, name)


def status_class(kind: type[Resource]) -> type[Status]:
    ann = kind.model_fields["status"].annotation
    for arg in typing.get_args(ann) or (ann,):
        if isinstance(arg, type) and issubclass(arg, Status):
            return arg
    return Status


def _trigger(obj: Resource) -> tuple[Any, ...]:
    """What a user or the operator changes outside status: a change here needs a reconcile."""
    m = obj.metadata
    return (m.generation, m.deletion_timestamp, tuple(m.finalizers), tuple(sorted(m.labels.items())),
            tuple(sorted(m.annotations.items())))


class Controller:
    """Runs the registered reconcilers for as long as `start()`..`stop()` (the leader's term)."""

    def __init__(self, store: Store, world: Any, registry: Registry, *, workers: int = 4,
                 metrics: Metrics | None = None, backoff: Backoff | None = None,
                 stall_after: float = 30.0) -> None:
        self.store, self.world, self.registry = store, world, registry
        self.workers = workers
        self.metrics = metrics or Metrics()
        self.backoff = backoff or Backoff()
        self.stall_after = stall_after
        self.queue: WorkQueue[Key] = WorkQueue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._seen: dict[Key, tuple[Any, ...]] = {}
        self._last_event = time.monotonic()
        self._owners: dict[str, str] = {}  # object uid -> proven owner (never changes for a uid)
        self._watch = None
        self.paused = threading.Event()  # set while leadership is uncertain: workers hold off

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "Controller":
        self._stop.clear()
        self._spawn("boid-watch", self._watch_loop)
        self._spawn("boid-resync", self._resync_loop)
        for i in range(self.workers):
            self._spawn(f"boid-worker-{i}", self._worker)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.queue.shutdown()
        if self._watch is not None:
            self._watch.stop()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout)
        self._threads.clear()

    def _spawn(self, name: str, target: Any) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    # -- producers ---------------------------------------------------------------------------
    def _watch_loop(self) -> None:
        kinds = [r.kind for r in self.registry]
        while not self._stop.is_set():
            try:
                self._watch = self.store.watch(kinds)
                self._last_event = time.monotonic()
                while not self._stop.is_set():
                    ev = self._watch.get(timeout=1.0)
                    if ev is None:
                        if self._stop.is_set():
                            break
                        if not self._watch.alive:
                            log.warning("the watch stopped: re-establishing it")
                            break
                        if time.monotonic() - self._last_event > self.stall_after and not self._alive():
                            log.warning("watch went quiet and its connection is not healthy: re-establishing")
                            break
                        continue
                    self._last_event = time.monotonic()
                    key = (ev.kind, ev.name)
                    if ev.type == "DELETED":
                        self._seen.pop(key, None)
                        self.backoff.reset(key)
                        continue
                    trig = _trigger(ev.obj)
                    if self._seen.get(key) != trig:
                        self._seen[key] = trig
                        self.queue.add(key)
            except StoreError as e:
                log.warning("watch failed (%s); retrying", e)
                self._stop.wait(1.0)
            finally:
                if self._watch is not None:
                    self._watch.stop()

    def _alive(self) -> bool:
        try:
            return self.store.client.connected
        except Exception:
            return False

    def _resync_loop(self) -> None:
        period = min((r.resync for r in self.registry), default=60.0)
        while not self._stop.wait(period):
            self.resync()

    def resync(self) -> None:
        """Enqueue every object of every registered kind (drift is found by looking)."""
        for reg in self.registry:
            try:
                for obj in self.store.list(reg.kind):
                    self.queue.add((reg.kind.KIND, obj.name))
            except StoreError as e:
                log.warning("resync of %s failed: %s", reg.kind.KIND, e)

    # -- workers -----------------------------------------------------------------------------
    def _worker(self) -> None:
        while not self._stop.is_set():
            try:
                key = self.queue.get()
            except ShutDown:
                return
            try:
                while self.paused.is_set() and not self._stop.is_set():
                    time.sleep(0.05)
                if not self._stop.is_set():
                    self.process(key)
            except Exception:  # a bug in the engine itself: never kill the worker
                log.exception("unexpected error processing %s/%s", *key)
                self.queue.add_after(key, self.backoff.failure(key))
            finally:
                self.queue.done(key)
                self.metrics.queue_depth.set(len(self.queue))

    def process(self, key: Key) -> None:
        kind_name, name = key
        reg = self.registry.get(kind_name)
        if reg is None:
            return
        try:
            obj = self.store.get(reg.kind, name)
        except NotFound:
            self.backoff.reset(key)
            return
        except StoreUnavailable:
            self.queue.add_after(key, self.backoff.failure(key))
            return
        if not reg.owns(obj):
            return  # another process (e.g. another protocol's dispatcher) owns this object
        deleting = obj.metadata.deletion_timestamp is not None
        admitted = None
        if not deleting and self.store.policy is not None:
            try:
                admitted = self._admit(reg, obj)
            except StoreError as e:
                log.info("admission of %s/%s: %s; retrying", *key, e)
                self.queue.add_after(key, self.backoff.failure(key))
                return
            if admitted.status != "True":
                self.metrics.reconciles.labels(kind_name, "refused").inc()
                self._write_status(reg, obj, Result(conditions=[admitted]), key, ok=False)
                return
        if reg.finalizer:
            if deleting and reg.finalizer not in obj.metadata.finalizers:
                return  # our cleanup is already done
            if not deleting and reg.finalizer not in obj.metadata.finalizers:
                obj = self.store.add_finalizer(reg.kind, name, reg.finalizer)
        elif deleting:
            return
        started = time.perf_counter()
        try:
            result = reg.fn(obj, self.world)
        except Exception as e:  # the reconciler's failure: backoff, and say so in status
            self._failed(reg, obj, key, e)
            return
        finally:
            self.metrics.latency.labels(kind_name).observe(time.perf_counter() - started)
        self.backoff.reset(key)
        self.metrics.reconciles.labels(kind_name, "ok").inc()
        if admitted is not None:
            result.conditions = [admitted, *result.conditions]
        if result.release_finalizer and reg.finalizer:
            try:
                self.store.remove_finalizer(reg.kind, name, reg.finalizer)
            except NotFound:
                pass
            return
        self._write_status(reg, obj, result, key)
        if result.requeue_after is not None:
            self.queue.add_after(key, result.requeue_after)

    def _admit(self, reg: Registration, obj: Resource) -> Condition:
        """On a cluster that checks identities, act only on objects with a proven owner (see
        Store.owner), and only if the kind's admission check (e.g. a Job's submitter) allows it."""
        uid = obj.metadata.uid or ""
        owner = self._owners.get(uid) or self.store.owner(reg.kind, obj.name)
        if owner is None:
            return condition("Admitted", False, "OwnerUnproven",
                             f"no proven creator: this {reg.kind.KIND} was not created through boidctl or the "
                             "store by a registered user (or its status znode is writable by others); "
                             "the operator does not act on it")
        self._owners[uid] = owner
        check = self.registry.admission_for(reg.kind.KIND)
        refusal = check(obj, owner, self.world) if check is not None else None
        return refusal or condition("Admitted", True, "Allowed", f"created by user {owner!r}")

    def _failed(self, reg: Registration, obj: Resource, key: Key, e: Exception) -> None:
        delay = self.backoff.failure(key)
        n = self.backoff.failures(key)
        reason = getattr(e, "reason", None) or type(e).__name__
        self.metrics.reconciles.labels(reg.kind.KIND, "error").inc()
        self.metrics.errors.labels(reg.kind.KIND, reason).inc()
        log.info("reconcile %s/%s failed (attempt %d, retry in %.1fs): %s", *key, n, delay, e)
        msg = f"{e} (attempt {n}; next retry in {delay:.0f}s)"
        extra = e.conditions if isinstance(e, Retry) else []
        fields = e.status if isinstance(e, Retry) else {}
        self._write_status(reg, obj, Result(conditions=[*extra, condition("Reconciled", False, reason, msg[:1000])],
                                            status=fields), key, ok=False)
        self.queue.add_after(key, delay)

    def _write_status(self, reg: Registration, obj: Resource, result: Result, key: Key, ok: bool = True) -> None:
        old = obj.status or status_class(reg.kind)()
        conditions = list(result.conditions)
        if ok:
            conditions.append(condition("Reconciled", True, "Success"))
        new = old.model_copy(update={
            **result.status,
            "conditions": merge_conditions(old.conditions, conditions),
            "observed_generation": obj.metadata.generation if ok else old.observed_generation,
        })
        new = type(new).model_validate(new.model_dump())  # re-validate status fields set by update
        if obj.status is not None and new == obj.status:
            return
        try:
            obj.status = new
            self.store.update_status(obj)
        except Conflict:
            self.queue.add(key)  # someone wrote status meanwhile: look again
        except NotFound:
            pass
