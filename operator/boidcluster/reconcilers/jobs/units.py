"""Job -> work units, as a pure function of the spec (and, for `inputs`, a file listing).

Unit ids must be stable: the exactly-once records in ZooKeeper (`runs/<job-uid>/...`) are keyed
by them, so a restarted operator has to expand the same Job into the same ids. An id is the
zero-padded index (so ids sort in unit order; a sweep is the product over its parameters
in name order, outermost first), plus, for sweeps and inputs, a short digest of
the unit's parameters or files: should the expansion ever differ (a changed input listing), a
record can never be mistaken for another unit's.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import posixpath
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from boidcluster.model.resources import JobSpec


@dataclass(frozen=True)
class Unit:
    id: str
    index: int
    params: dict[str, Any] = field(default_factory=dict)
    inputs: tuple[str, ...] = ()   # storage paths (relative to the storage root)

    @property
    def params_json(self) -> str:
        if not self.params:   # a count job's units: no encoding per launch
            return "{}"
        return json.dumps(self.params, sort_keys=True, separators=(",", ":"))

    @property
    def inputs_json(self) -> str:
        return json.dumps(list(self.inputs)) if self.inputs else "[]"


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:8]


def storage_path(datadir: str, path: str) -> str:
    """A spec path in storage: absolute ('/x') from the storage root, else under the datadir."""
    if path.startswith("/"):
        return path.lstrip("/")
    return posixpath.normpath(posixpath.join(datadir, path))


def input_groups(files: Iterable[str], pattern: str, per_unit: int) -> list[tuple[str, ...]]:
    """Files whose name matches `pattern`, sorted, cut into groups of `per_unit`."""
    chosen = sorted(f for f in files if fnmatch.fnmatchcase(posixpath.basename(f), pattern))
    return [tuple(chosen[i:i + per_unit]) for i in range(0, len(chosen), per_unit)]


def expand(spec: JobSpec, *, datadir: str = "",
           list_files: Callable[[str], list[str]] | None = None,
           groups: list[tuple[str, ...]] | None = None) -> list[Unit]:
    """The job's units in index order.

    For `inputs`, pass either `groups` (a listing already fixed for this job) or `list_files`
    (storage directory -> file paths relative to the storage root)."""
    wu = spec.work_units
    if wu.count is not None:
        return [Unit(f"u{i:06d}", i) for i in range(wu.count)]
    if wu.sweep is not None:
        # Parameter names in sorted order: the store keeps spec JSON with sorted keys, so the
        # order a user wrote them in does not survive a round trip and must not decide indexes.
        points = wu.model_copy(update={"sweep": dict(sorted(wu.sweep.items()))}).sweep_points()
        return [Unit(f"u{i:06d}-{_digest(p)}", i, p) for i, p in enumerate(points)]
    assert wu.inputs is not None
    if groups is None:
        if list_files is None:
            raise ValueError("an inputs job needs list_files or groups to expand")
        groups = input_groups(list_files(storage_path(datadir, wu.inputs.path)),
                              wu.inputs.pattern, wu.inputs.per_unit)
    return [Unit(f"u{i:06d}-{_digest(list(g))}", i, {}, tuple(g)) for i, g in enumerate(groups)]


class UnitSpace:
    """The job's units by index, made on demand: a 1,000,000-unit sweep is never built up front
    (a sweep point is decoded from its index, mixed radix over the axes, last axis fastest, the
    same order as `expand`)."""

    def __init__(self, spec: JobSpec, groups: Sequence[Sequence[str]] | None = None) -> None:
        wu = spec.work_units
        self._count = wu.count
        self._groups = [tuple(g) for g in groups] if groups is not None else None
        self._names: list[str] = []
        self._axes: list[list[Any]] = []
        if wu.sweep is not None:
            for name, v in sorted(wu.sweep.items()):
                self._names.append(name)
                self._axes.append(list(v.range.values()) if hasattr(v, "range") else list(v))
        if wu.count is not None:
            self.total = wu.count
        elif wu.sweep is not None:
            total = 1
            for a in self._axes:
                total *= len(a)
            self.total = total
        else:
            if self._groups is None:
                raise ValueError("an inputs job needs its groups to expand")
            self.total = len(self._groups)

    def __len__(self) -> int:
        return self.total

    def unit(self, i: int) -> Unit:
        if not 0 <= i < self.total:
            raise IndexError(i)
        if self._count is not None:
            return Unit(f"u{i:06d}", i)
        if self._groups is not None:
            g = self._groups[i]
            return Unit(f"u{i:06d}-{_digest(list(g))}", i, {}, g)
        point: dict[str, Any] = {}
        rest = i
        for name, axis in reversed(list(zip(self._names, self._axes))):
            rest, k = divmod(rest, len(axis))
            point[name] = axis[k]
        point = {n: point[n] for n in self._names}
        return Unit(f"u{i:06d}-{_digest(point)}", i, point)

    def __iter__(self):
        return (self.unit(i) for i in range(self.total))
