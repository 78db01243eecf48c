"""Capped exponential backoff with "equal jitter" (half fixed, half random), tracked per key.

Failures of one object must slow down only that object: a protocol whose fund account does not
exist should not hammer the chain, and should not delay healthy protocols.
"""

from __future__ import annotations

import random
import threading
from typing import Hashable


class Backoff:
    def __init__(self, base: float = 0.5, cap: float = 300.0, rng: random.Random | None = None) -> None:
        self.base, self.cap = base, cap
        self._rng = rng or random.Random()
        self._failures: dict[Hashable, int] = {}
        self._lock = threading.Lock()

    def failure(self, key: Hashable) -> float:
        """Record a failure and return the delay before the next attempt."""
        with self._lock:
            n = self._failures.get(key, 0) + 1
            self._failures[key] = n
        ceiling = min(self.cap, self.base * 2 ** (n - 1))
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def failures(self, key: Hashable) -> int:
        with self._lock:
            return self._failures.get(key, 0)

    def reset(self, key: Hashable) -> None:
        with self._lock:
            self._failures.pop(key, None)
