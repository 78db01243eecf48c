"""The one reconcile signature, its Result, and the per-kind registry.

A reconciler is `fn(obj, world) -> Result`: it observes, compares, acts once and reports. It never
writes status, sleeps, retries or touches finalizers itself: the controller owns all of that, so
every reconciler gets the same retry, status and deletion semantics.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

from boidcluster.model.meta import CLEANUP_FINALIZER, Condition, Resource


@dataclass
class Result:
    """What one reconcile observed and wants next."""

    conditions: list[Condition] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)  # kind-specific status fields (snake_case)
    requeue_after: float | None = None                    # ask to be looked at again (polling external state)
    release_finalizer: bool = False                       # cleanup done: the object may go
    notify: list[tuple[str, str]] = field(default_factory=list)  # (KIND, name) of objects to reconcile now
    timings: dict[str, float] = field(default_factory=dict)      # seconds per phase (observe, compare, ...)
    write_status: bool = True                             # False: only counters moved, write later

    @classmethod
    def released(cls) -> "Result":
        return cls(release_finalizer=True)


class Retry(Exception):
    """Raised by a reconciler that could not converge: the engine backs off (per object, growing
    waits) and writes `conditions` to status together with Reconciled=False, so the user sees
    both what is wrong and when the next attempt is."""

    def __init__(self, message: str, *, reason: str, conditions: list[Condition] | None = None,
                 status: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.conditions = conditions or []
        self.status = status or {}


def condition(type_: str, ok: bool | None, reason: str, message: str = "") -> Condition:
    status = "Unknown" if ok is None else ("True" if ok else "False")
    return Condition(type=type_, status=status, reason=reason, message=message)


Reconcile = Callable[[Any, Any], Result]
Admission = Callable[[Any, str, Any], "Condition | None"]


# An event source (controller-runtime's source.Channel): started with the world and an
# `enqueue(name, reason)` for its kind when the controller starts; returns the function that stops it.
Source = Callable[[Any, Callable[[str, str], None]], Callable[[], None]]


@dataclass
class Registration:
    kind: type[Resource]
    fn: Reconcile
    finalizer: str | None
    resync: float
    select: Callable[[Any], bool] | None = None  # objects of the kind this process owns (None: all)
    workers: int | None = None                   # this kind's own workers (None: the controller's default)
    sources: list[Source] = field(default_factory=list)

    def owns(self, obj: Any) -> bool:
        return self.select is None or self.select(obj)


class Registry:
    """Reconcilers by kind; a decorator registers one."""

    def __init__(self) -> None:
        self._by_kind: dict[str, Registration] = {}
        self._admit: dict[str, Admission] = {}
        self._indexers: dict[tuple[str, str], Any] = {}

    def admission(self, kind: type[Resource]):
        """Register a kind's admission check: `fn(obj, owner, world) -> Condition | None`, the
        refusal (an Admitted=False condition) or None. It runs, on a cluster that checks
        identities, before the kind's reconciler, with the object's proven owner."""
        def register(fn: Admission) -> Admission:
            self._admit[kind.KIND] = fn
            return fn

        return register

    def admission_for(self, kind: str) -> "Admission | None":
        return self._admit.get(kind)

    def reconciler(self, kind: type[Resource], *, cleanup: bool = False, resync: float = 60.0,
                   workers: int | None = None):
        def register(fn: Reconcile) -> Reconcile:
            if kind.KIND in self._by_kind:
                raise ValueError(f"a reconciler for {kind.KIND} is already registered")
            self._by_kind[kind.KIND] = Registration(kind, fn, CLEANUP_FINALIZER if cleanup else None, resync,
                                                    workers=workers)
            return fn

        return register

    def source(self, kind: type[Resource]):
        """Register an event source that enqueues objects of `kind` (e.g. backend task updates
        enqueue their Job); the kind's reconciler must be registered first."""
        def register(fn: Source) -> Source:
            reg = self._by_kind.get(kind.KIND)
            if reg is None:
                raise ValueError(f"no reconciler registered for {kind.KIND}")
            reg.sources.append(fn)
            return fn

        return register

    def indexer(self, kind: type[Resource], name: str):
        """Register an index over `kind` (engine/index.py): fn(obj) -> the keys it is found by."""
        def register(fn: Any) -> Any:
            self._indexers[(kind.KIND, name)] = fn
            return fn

        return register

    @property
    def indexers(self) -> dict[tuple[str, str], Any]:
        return {k: fn for k, fn in self._indexers.items() if k[0] in self._by_kind}

    def subset(self, kinds: list[type[Resource]], select: Callable[[Any], bool] | None = None) -> "Registry":
        """A registry with only these kinds (optionally owning only the objects `select` accepts):
        e.g. a per-protocol dispatcher runs just the Job reconciler, for its protocol's jobs."""
        out = Registry()
        for k in kinds:
            reg = self._by_kind.get(k.KIND)
            if reg is None:
                raise ValueError(f"no reconciler registered for {k.KIND}")
            out._by_kind[k.KIND] = replace(reg, select=select or reg.select)
        out._admit = dict(self._admit)
        out._indexers = dict(self._indexers)
        return out

    def without(self, kinds: list[type[Resource]]) -> "Registry":
        out = Registry()
        out._by_kind = {k: r for k, r in self._by_kind.items() if k not in {c.KIND for c in kinds}}
        out._admit = dict(self._admit)
        out._indexers = dict(self._indexers)
        return out

    def get(self, kind: str) -> Registration | None:
        return self._by_kind.get(kind)

    def __iter__(self):
        return iter(self._by_kind.values())

    def __len__(self) -> int:
        return len(self._by_kind)
