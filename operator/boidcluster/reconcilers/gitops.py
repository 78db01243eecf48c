"""GitOps sync planning and execution, shared by the GitSource reconciler and `boidctl sync`.

One place decides what a sync does, so the operator and the CLI can never disagree:

- `load_specs` turns the files of a snapshot into resources (all-or-nothing, SpecErrors naming
  file:line:field, exactly as `boidctl apply` reports them).
- `plan_sync` compares them with the store. Every object a source applies carries the label
  `cluster.boid.com/gitsource=<source>` (ownership: only such objects may ever be pruned) and the
  annotation `cluster.boid.com/gitsource-hash` (a hash of what git said when it was applied).
  The hash tells the two reasons an object can differ apart: git changed (hash differs: an
  update, always applied) or someone changed the live object (hash matches: drift, healed only
  with selfHeal). Drift compares spec and labels. An object git names that another source owns is
  a conflict, and a conflict stops the whole sync (two sources would fight forever).
- `execute` applies creates/updates (and healed drift) in ONE Store.apply transaction (several
  only when the change exceeds what ZooKeeper takes in one request, store.MAX_TXN_BYTES), then prunes
  owned objects git no longer names, never more than `prune_limit` unless confirmed.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Iterable, Literal

from boidcluster.adapters.git import Snapshot
from boidcluster.adapters.store import Conflict, NotFound, Store
from boidcluster.model.kinds import KINDS
from boidcluster.model.loader import SpecError, SpecErrors, load_sources
from boidcluster.model.meta import API_GROUP, Resource

SOURCE_LABEL = f"{API_GROUP}/gitsource"
"""Label every object a sync applies carries: the name of the source that owns it."""
HASH_ANNOTATION = f"{API_GROUP}/gitsource-hash"
"""Annotation holding the hash of the object as git described it when it was last applied."""
MAX_DRIFT_REPORTED = 50
"""Status lists at most this many drift entries (the count is always in the condition)."""

Action = Literal["create", "update", "unchanged", "drift", "missing", "prune", "extra", "conflict"]


# -- loading ------------------------------------------------------------------------------------
def load_specs(files: Iterable[tuple[str, str]]) -> list[Resource]:
    """Resources from (source name, text) pairs; raises SpecErrors listing every problem."""
    return load_sources(files)


_loaded: "OrderedDict[tuple[str, str, str], list[Resource]]" = OrderedDict()
_loaded_lock = threading.Lock()
LOADED_CACHE_SIZE = 16
"""Commits whose parsed specs are kept: a no-change sync (the common case, every interval)
then skips YAML parsing and validation, the largest part of its cost. Only successful loads
are kept; the cached resources are never mutated (plans work on copies)."""


def load_snapshot(snapshot: Snapshot) -> list[Resource]:
    """The resources of a snapshot (SpecErrors as load_specs), cached by (repo, commit, path)."""
    key = (snapshot.repo, snapshot.commit, snapshot.path)
    with _loaded_lock:
        if key in _loaded:
            _loaded.move_to_end(key)
            return list(_loaded[key])
    objs = load_specs((f.path, f.text) for f in snapshot.files)
    with _loaded_lock:
        _loaded[key] = objs
        while len(_loaded) > LOADED_CACHE_SIZE:
            _loaded.popitem(last=False)
    return list(objs)


def spec_error_summary(err: SpecErrors, limit: int = 5) -> str:
    """'file:line:col: field: message' for the first few errors (for a condition message)."""
    def one(e: SpecError) -> str:
        return f"{e.location}: " + (f"{e.path}: " if e.path else "") + e.message
    lines = [one(e) for e in err.errors[:limit]]
    more = len(err.errors) - limit
    if more > 0:
        lines.append(f"... and {more} more")
    return "; ".join(lines)


# -- planning -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    """What a sync does (or would do) with one object."""

    kind: str
    name: str
    action: Action
    detail: str = ""                 # what differs, who owns it, ...
    desired: Resource | None = None  # the object as it will be written (labelled, hashed)
    live: Resource | None = None

    @property
    def ref(self) -> str:
        return f"{self.kind.lower()}/{self.name}"


@dataclass
class Plan:
    source: str
    commit: str | None
    items: list[Item] = field(default_factory=list)

    def of(self, *actions: Action) -> list[Item]:
        return [i for i in self.items if i.action in actions]

    @property
    def conflicts(self) -> list[Item]:
        return self.of("conflict")


def _hash(obj: Resource) -> str:
    d = obj.to_dict(with_status=False)
    m = d.get("metadata", {})
    payload = {"spec": d.get("spec"), "labels": m.get("labels", {}),
               "annotations": {k: v for k, v in m.get("annotations", {}).items() if k != HASH_ANNOTATION}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def owned(obj: Resource, source: str) -> Resource:
    """A copy of a resource from git as a sync writes it: owner label and hash annotation added,
    server-side metadata dropped."""
    labels = {**obj.metadata.labels, SOURCE_LABEL: source}
    annotations = {k: v for k, v in obj.metadata.annotations.items() if k != HASH_ANNOTATION}
    base = obj.model_copy(update={"metadata": obj.metadata.model_copy(
        update={"labels": labels, "annotations": annotations, "uid": None, "generation": None,
                "resource_version": None, "creation_timestamp": None, "deletion_timestamp": None}),
        "status": None})
    annotations[HASH_ANNOTATION] = _hash(base)
    return base.model_copy(update={"metadata": base.metadata.model_copy(update={"annotations": annotations})})


def _differences(desired: Resource, live: Resource) -> list[str]:
    """Top-level spec fields and labels that differ (camelCase paths)."""
    d, l = desired.to_dict(with_status=False), live.to_dict(with_status=False)
    out = []
    ds, ls = d.get("spec") or {}, l.get("spec") or {}
    if isinstance(ds, dict) and isinstance(ls, dict):
        out += [f"spec.{k}" for k in sorted(set(ds) | set(ls)) if ds.get(k) != ls.get(k)]
    elif ds != ls:
        out.append("spec")
    dl, ll = d["metadata"].get("labels", {}), l["metadata"].get("labels", {})
    out += [f"labels.{k}" for k in sorted(set(dl) | set(ll)) if dl.get(k) != ll.get(k)]
    return out


def _annotations_cover(desired: Resource, live: Resource) -> bool:
    la = live.metadata.annotations
    return all(la.get(k) == v for k, v in desired.metadata.annotations.items())


def plan_sync(store: Store, source: str, objects: list[Resource], *, commit: str | None = None,
              previous_commit: str | None = None) -> Plan:
    """Compare what git holds (`objects`, as loaded) with the store.

    `previous_commit` is the commit the source last synced: when git has not moved since, an
    object git names that the store lacks was deleted by hand (drift 'missing'), not added to git.
    """
    plan = Plan(source, commit)
    desired = [owned(o, source) for o in objects]
    wanted_kinds = {type(o) for o in desired}
    live: dict[tuple[str, str], Resource] = {}
    for kind in KINDS.values():
        if kind in wanted_kinds:
            for o in store.list(kind):
                live[(kind.KIND, o.name)] = o
        else:
            for o in store.list(kind, {SOURCE_LABEL: source}):
                live[(kind.KIND, o.name)] = o
    names = set()
    for d in desired:
        key = (d.KIND, d.name)
        names.add(key)
        cur = live.get(key)
        if cur is None:
            if previous_commit is not None and previous_commit == commit:
                plan.items.append(Item(d.KIND, d.name, "missing", "deleted outside git", d, None))
            else:
                plan.items.append(Item(d.KIND, d.name, "create", "", d, None))
            continue
        owner = cur.metadata.labels.get(SOURCE_LABEL)
        if owner is not None and owner != source:
            plan.items.append(Item(d.KIND, d.name, "conflict", f"owned by GitSource {owner!r}", d, cur))
            continue
        if cur.metadata.deletion_timestamp is not None:
            plan.items.append(Item(d.KIND, d.name, "conflict", "being deleted; sync again once it is gone",
                                   d, cur))
            continue
        diffs = _differences(d, cur)
        if not diffs and _annotations_cover(d, cur):
            plan.items.append(Item(d.KIND, d.name, "unchanged", "", d, cur))
        elif diffs and cur.metadata.annotations.get(HASH_ANNOTATION) == d.metadata.annotations[HASH_ANNOTATION]:
            plan.items.append(Item(d.KIND, d.name, "drift", ", ".join(diffs) + " changed outside git", d, cur))
        else:
            plan.items.append(Item(d.KIND, d.name, "update", ", ".join(diffs), d, cur))
    for (kind_name, name), cur in sorted(live.items()):
        if (kind_name, name) in names or cur.metadata.labels.get(SOURCE_LABEL) != source:
            continue
        if cur.metadata.deletion_timestamp is not None:
            continue  # already going
        plan.items.append(Item(kind_name, name, "prune", "no longer in git", None, cur))
    return plan


# -- execution ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Options:
    self_heal: bool = False
    prune: bool = False
    prune_limit: int = 10      # 0: no limit
    confirm_prune: bool = False
    dry_run: bool = False
    owner: str | None = None   # secured cluster: the user objects are applied for (GitSource's owner)


@dataclass(frozen=True)
class Line:
    """One outcome line, kubectl-like: '<ref> <verb>[ (<detail>)]'."""

    ref: str
    verb: str   # created, configured, unchanged, drift, pruned, prune-blocked, not-pruned, conflict
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.ref} {self.verb}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class Outcome:
    plan: Plan
    lines: list[Line] = field(default_factory=list)
    applied: int = 0
    pruned: int = 0
    drift: list[Item] = field(default_factory=list)        # drift left in place (not healed)
    healed: list[Item] = field(default_factory=list)
    extra: list[Item] = field(default_factory=list)        # owned, not in git, prune off
    prune_blocked: int = 0                                 # would prune this many; over the limit
    conflicts: list[Item] = field(default_factory=list)
    transactions: int = 0                                  # Store.apply calls (1 unless huge)

    @property
    def in_sync(self) -> bool:
        return not (self.drift or self.extra or self.prune_blocked or self.conflicts)


class PlanConflict(Exception):
    """Git names objects another source owns (or that are being deleted): nothing was applied."""

    reason = "OwnershipConflict"

    def __init__(self, items: list[Item]) -> None:
        self.items = items
        super().__init__("; ".join(f"{i.ref} {i.detail}" for i in items[:5])
                         + (f"; and {len(items) - 5} more" if len(items) > 5 else "")
                         + "; nothing was applied")


def execute(store: Store, plan: Plan, opts: Options) -> Outcome:
    """Carry the plan out (or, with dry_run, only describe it). Creates, updates and healed drift
    go in one Store.apply (all or nothing; split only past store.MAX_TXN_BYTES); prunes follow, one delete each, only of owned objects.
    Raises PlanConflict (before writing anything) when the plan has conflicts, Conflict when
    the store changed under the apply (re-plan and retry)."""
    out = Outcome(plan)
    if opts.owner is not None:  # a GitSource changes or prunes only its own owner's objects
        for i, item in enumerate(plan.items):
            if item.live is not None and item.action != "conflict":
                who = store.owner(KINDS[item.kind], item.name)
                if who != opts.owner:
                    plan.items[i] = replace(item, action="conflict", detail=(
                        f"belongs to user {who!r}" if who else "has no proven owner")
                        + f", not to this GitSource's owner {opts.owner!r}")
    if plan.conflicts:
        out.conflicts = plan.conflicts
        raise PlanConflict(plan.conflicts)
    suffix = " (dry run)" if opts.dry_run else ""
    to_apply: list[Resource] = []
    for item in plan.items:
        if item.action in ("create", "update"):
            to_apply.append(item.desired)  # type: ignore[arg-type]
        elif item.action in ("drift", "missing"):
            if opts.self_heal:
                to_apply.append(item.desired)  # type: ignore[arg-type]
                out.healed.append(item)
            else:
                out.drift.append(item)
    if to_apply and not opts.dry_run:
        _, out.transactions = store.apply_in_batches(to_apply, owner=opts.owner)  # split only past one ZooKeeper request
    out.applied = len(to_apply)
    for item in plan.items:
        a = item.action
        if a == "create":
            out.lines.append(Line(item.ref, "created" + suffix))
        elif a == "update":
            out.lines.append(Line(item.ref, "configured" + suffix, item.detail))
        elif a == "unchanged":
            out.lines.append(Line(item.ref, "unchanged"))
        elif a in ("drift", "missing"):
            if opts.self_heal:
                verb = "created" if a == "missing" else "configured"
                out.lines.append(Line(item.ref, verb + suffix, f"drift healed: {item.detail}"))
            else:
                out.lines.append(Line(item.ref, "drift", f"{item.detail}; not healed: selfHeal is off"))
    prunes = plan.of("prune")
    if prunes and not opts.prune:
        out.extra = prunes
        for item in prunes:
            out.lines.append(Line(item.ref, "not-pruned", "no longer in git; prune is off"))
    elif prunes and opts.prune_limit and len(prunes) > opts.prune_limit and not opts.confirm_prune:
        out.prune_blocked = len(prunes)
        for item in prunes:
            out.lines.append(Line(item.ref, "prune-blocked",
                                  f"{len(prunes)} to prune > pruneLimit {opts.prune_limit}; "
                                  "confirm with `boidctl sync --confirm-prune`"))
    else:
        for item in prunes:
            if not opts.dry_run:
                try:
                    # re-check ownership on the object as it is now: never delete what is not ours
                    cur = store.get(KINDS[item.kind], item.name)
                    if cur.metadata.labels.get(SOURCE_LABEL) != plan.source:
                        continue
                    store.delete(KINDS[item.kind], item.name)
                except NotFound:
                    continue
            out.pruned += 1
            out.lines.append(Line(item.ref, "pruned" + suffix))
    return out


def sync(store: Store, source: str, objects: list[Resource], opts: Options, *, commit: str | None = None,
         previous_commit: str | None = None, attempts: int = 3) -> Outcome:
    """plan_sync + execute, re-planning when the store changed under the apply."""
    for attempt in range(attempts):
        plan = plan_sync(store, source, objects, commit=commit, previous_commit=previous_commit)
        try:
            return execute(store, plan, opts)
        except Conflict:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


__all__ = ["HASH_ANNOTATION", "SOURCE_LABEL", "Item", "Line", "Options", "Outcome", "Plan", "PlanConflict",
           "execute", "load_snapshot", "load_specs", "owned", "plan_sync", "spec_error_summary", "sync"]
