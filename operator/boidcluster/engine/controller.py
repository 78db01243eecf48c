"""The level-triggered reconcile loop: watch -> deduplicating queue -> workers -> status.

Shaped like controller-runtime: a watch (plus a periodic resync, because the chain and Marathon
never notify us) only *enqueues keys*; workers re-read the object and call its kind's reconciler;
the controller alone writes status, manages the cleanup finalizer and schedules retries with
per-object backoff. The work queue guarantees one object is never reconciled by two workers at
once. Status-only changes are not enqueued, so our own status writes do not loop back.

Each kind has its own queue and workers, so a slow chain call reconciling Protocols cannot starve
Job dispatch. Besides the store's watch, a kind may have event sources (Registration.sources,
like controller-runtime's source.Channel: backend task updates enqueue their Job), and a
reconcile may ask for others (Result.notify: a finished Job enqueues its Protocol). Every key
carries the reasons it was enqueued for (watch, resync, event, notify, requeue, backoff,
conflict); each reconcile logs them at debug level with its per-phase timings, and counts them
in metrics (Argo CD's refresh reasons and checkpoints are the model).
"""

from __future__ import annotations

import logging
import threading
import time
import typing
from typing import Any

from boidcluster.adapters.store import Conflict, NotFound, Store, StoreError, StoreUnavailable, status_version
from boidcluster.model.meta import Condition, Resource, Status

from .backoff import Backoff
from .index import Index
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
        self.queues: dict[str, WorkQueue[Key]] = {r.kind.KIND: WorkQueue() for r in registry}
        self._reasons: dict[Key, set[str]] = {}
        self._reasons_mu = threading.Lock()
        self._stop_sources: list[Any] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._seen: dict[Key, tuple[Any, ...]] = {}
        self.index = Index(registry.indexers)
        if hasattr(world, "index"):
            world.index = self.index   # reconcilers look objects up by index (engine/index.py)
        self._cache: dict[Key, Resource] = {}   # latest object seen (watch, our own status writes)
        self._cache_mu = threading.Lock()
        self._last_event = time.monotonic()
        self._owners: dict[str, str] = {}  # object uid -> proven owner (never changes for a uid)
        self._watch = None
        self.paused = threading.Event()  # set while leadership is uncertain: workers hold off

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "Controller":
        self._stop.clear()
        self._spawn("boid-watch", self._watch_loop)
        self._spawn("boid-resync", self._resync_loop)
        for reg in self.registry:
            kind = reg.kind.KIND
            for i in range(reg.workers or self.workers):
                self._spawn(f"boid-{kind.lower()}-{i}", lambda q=self.queues[kind]: self._worker(q))
            for source in reg.sources:
                try:
                    self._stop_sources.append(source(self.world, lambda name, reason="event", k=kind:
                                                     self.enqueue((k, name), reason)))
                except Exception:
                    log.exception("could not start an event source of %s: its objects are only resynced", kind)
        return self

    # -- enqueueing, with reasons ---------------------------------------------------------------
    def enqueue(self, key: Key, reason: str) -> None:
        q = self.queues.get(key[0])
        if q is None:
            return
        with self._reasons_mu:
            self._reasons.setdefault(key, set()).add(reason)
        q.add(key)

    def enqueue_after(self, key: Key, delay: float, reason: str) -> None:
        q = self.queues.get(key[0])
        if q is None:
            return
        with self._reasons_mu:
            self._reasons.setdefault(key, set()).add(reason)
        q.add_after(key, delay)

    @property
    def queue(self) -> "_AllQueues":
        """All kinds' queues behind one add() (callers that do not care which kind)."""
        return _AllQueues(self)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for stop_source in self._stop_sources:
            try:
                stop_source()
            except Exception:
                log.exception("stopping an event source failed")
        self._stop_sources.clear()
        for q in self.queues.values():
            q.shutdown()
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
                    self.index.update(ev.kind, ev.name, None if ev.type == "DELETED" else ev.obj)
                    if ev.type == "DELETED":
                        self._uncache(key)
                        self._seen.pop(key, None)
                        self.backoff.reset(key)
                        continue
                    self._remember(key, ev.obj)
                    trig = _trigger(ev.obj)
                    if self._seen.get(key) != trig:
                        self._seen[key] = trig
                        self.enqueue(key, "watch")
            except StoreError as e:
                log.warning("watch failed (%s); retrying", e)
                self._stop.wait(1.0)
            finally:
                if self._watch is not None:
                    self._watch.stop()

    # -- the object cache (an informer's): a reconcile reads what the watch last delivered -------
    def _remember(self, key: Key, obj: Resource) -> None:
        """Keep the newer of what we have and `obj` (spec and status versions only grow)."""
        new = (obj.metadata.resource_version or 0, status_version(obj) or 0)
        with self._cache_mu:
            old = self._cache.get(key)
            if old is not None:
                have = (old.metadata.resource_version or 0, status_version(old) or 0)
                if have[0] > new[0] or have[1] > new[1]:
                    if have[0] < new[0] or have[1] < new[1]:
                        del self._cache[key]  # each newer in one part: read the store next time
                    return
            self._cache[key] = obj

    def _uncache(self, key: Key) -> None:
        with self._cache_mu:
            self._cache.pop(key, None)

    def _get(self, kind: type[Resource], key: Key) -> Resource:
        with self._cache_mu:
            obj = self._cache.get(key)
        if obj is None:
            obj = self.store.get(kind, key[1])
            self._remember(key, obj)
        return obj

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
                    self.index.update(reg.kind.KIND, obj.name, obj)
                    self.enqueue((reg.kind.KIND, obj.name), "resync")
                self.index.synced(reg.kind.KIND)
            except StoreError as e:
                log.warning("resync of %s failed: %s", reg.kind.KIND, e)

    # -- workers -----------------------------------------------------------------------------
    def _worker(self, queue: WorkQueue[Key]) -> None:
        while not self._stop.is_set():
            try:
                key = queue.get()
            except ShutDown:
                return
            try:
                while self.paused.is_set() and not self._stop.is_set():
                    time.sleep(0.05)
                if not self._stop.is_set():
                    self.process(key)
            except Exception:  # a bug in the engine itself: never kill the worker
                log.exception("unexpected error processing %s/%s", *key)
                self.enqueue_after(key, self.backoff.failure(key), "backoff")
            finally:
                queue.done(key)
                self.metrics.queue_depth.labels(key[0]).set(len(queue))

    def process(self, key: Key) -> None:
        kind_name, name = key
        with self._reasons_mu:
            reasons = sorted(self._reasons.pop(key, ()) or ("requeue",))
        for r in reasons:
            self.metrics.reasons.labels(kind_name, r).inc()
        reg = self.registry.get(kind_name)
        if reg is None:
            return
        t0 = time.perf_counter()
        try:
            obj = self._get(reg.kind, key)
        except NotFound:
            self._uncache(key)
            self.backoff.reset(key)
            return
        except StoreUnavailable:
            self.enqueue_after(key, self.backoff.failure(key), "backoff")
            return
        t_read = time.perf_counter() - t0
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
                obj = self.store.add_finalizer(reg.kind, name, reg.finalizer, current=obj)
                self._remember(key, obj)
                self._seen[key] = _trigger(obj)  # this pass sees it: its watch event needs none
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
            self._uncache(key)
            return
        t1 = time.perf_counter()
        if result.write_status:
            self._write_status(reg, obj, result, key)
        t_write = time.perf_counter() - t1
        for other in result.notify:
            self.enqueue(other, f"notify:{kind_name}")
        if result.requeue_after is not None:
            self.enqueue_after(key, result.requeue_after, "requeue")
        phases = {"read": t_read, **result.timings, "status": t_write}
        for phase, secs in phases.items():
            self.metrics.phases.labels(kind_name, phase).observe(secs)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("reconciled %s/%s reasons=%s in %.1fms (%s)%s", kind_name, name, ",".join(reasons),
                      (time.perf_counter() - t0) * 1000,
                      " ".join(f"{p}={s * 1000:.1f}ms" for p, s in phases.items()),
                      "" if result.requeue_after is None else f" next in {result.requeue_after:.2f}s")

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
        self.enqueue_after(key, delay, "backoff")

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
            obj = obj.model_copy()   # the cached object is shared: never change it in place
            obj.status = new
            self._remember(key, self.store.update_status(obj))
        except Conflict:
            self._uncache(key)
            self.enqueue(key, "conflict")  # someone wrote status meanwhile: look again
        except NotFound:
            self._uncache(key)


class _AllQueues:
    """`controller.queue.add(key)`: enqueue on the key's kind queue (reason "manual")."""

    def __init__(self, c: Controller) -> None:
        self._c = c

    def add(self, key: Key) -> None:
        self._c.enqueue(key, "manual")

    def __len__(self) -> int:
        return sum(len(q) for q in self._c.queues.values())
