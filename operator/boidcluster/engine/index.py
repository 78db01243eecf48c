"""Objects by a derived key, kept current from the controller's watch (client-go's Indexer).

A reconciler that needs "the Jobs of this Protocol that are still running" asks the index
instead of listing every Job on every pass. Indexers are registered per kind on the Registry;
the controller feeds every watch event (status changes included) of the kinds it watches.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterable

IndexFn = Callable[[Any], Iterable[str]]


class Index:
    def __init__(self, indexers: dict[tuple[str, str], IndexFn]) -> None:
        self._fns = dict(indexers)
        self._mu = threading.Lock()
        self._by: dict[tuple[str, str], dict[str, set[str]]] = {k: {} for k in self._fns}
        self._keys: dict[tuple[str, str, str], set[str]] = {}
        self._synced: set[str] = set()

    def covers(self, kind: str, index: str) -> bool:
        """True when this index exists and its kind has been listed at least once."""
        return (kind, index) in self._fns and kind in self._synced

    def synced(self, kind: str) -> None:
        self._synced.add(kind)

    def update(self, kind: str, name: str, obj: Any | None) -> None:
        """Index the object's current state (None: it was deleted)."""
        for (k, index), fn in self._fns.items():
            if k != kind:
                continue
            new = set(fn(obj)) if obj is not None else set()
            with self._mu:
                old = self._keys.pop((kind, index, name), set())
                by = self._by[(kind, index)]
                for key in old - new:
                    names = by.get(key)
                    if names is not None:
                        names.discard(name)
                        if not names:
                            del by[key]
                for key in new:
                    by.setdefault(key, set()).add(name)
                if new:
                    self._keys[(kind, index, name)] = new

    def get(self, kind: str, index: str, key: str) -> set[str]:
        with self._mu:
            return set(self._by.get((kind, index), {}).get(key, ()))
