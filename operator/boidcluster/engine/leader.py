"""Leader election over ZooKeeper: only the leader reconciles.

Several `boidctl operator run` replicas contend for a kazoo Lock on the store's leader path. The
moment the session is SUSPENDED the leader pauses its workers (it may no longer hold the lock);
on LOST it stops its term at once and contends again after reconnecting. Every action being
idempotent, two leaders overlapping for the instant of a handover cannot double an effect.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from kazoo.protocol.states import KazooState

from boidcluster.adapters.store import LEADER_LOCK, Store

log = logging.getLogger(__name__)


class LeaderElection:
    def __init__(self, store: Store, identity: str, *, on_start: Callable[[], None],
                 on_stop: Callable[[], None], on_pause: Callable[[bool], None] | None = None,
                 path: str = LEADER_LOCK) -> None:
        self.store, self.identity, self.path = store, identity, path
        self.on_start, self.on_stop, self.on_pause = on_start, on_stop, on_pause or (lambda _p: None)
        self.leading = threading.Event()
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = None

    def start(self) -> "LeaderElection":
        self.store.client.add_listener(self._on_state)
        self._thread = threading.Thread(target=self._run, name="boid-leader", daemon=True)
        self._thread.start()
        return self

    def _on_state(self, state: str) -> None:  # kazoo's thread: never block here
        if state == KazooState.SUSPENDED and self.leading.is_set():
            self.on_pause(True)
        elif state == KazooState.CONNECTED and self.leading.is_set():
            self.on_pause(False)
        elif state == KazooState.LOST:
            self._lost.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._lost.clear()
                self._lock = self.store.client.Lock(self.path, self.identity)
                while not self._stop.is_set():
                    if self._lock.acquire(timeout=1.0):
                        break
                else:
                    return
                log.info("%s is now the leader", self.identity)
                self.leading.set()
                self.on_start()
                while not (self._stop.is_set() or self._lost.is_set()):
                    self._lost.wait(0.2)
            except Exception as e:  # connection trouble while contending: try again
                log.info("leader election: %s; contending again", e)
                self._stop.wait(0.5)
            finally:
                if self.leading.is_set():
                    log.info("%s stops leading", self.identity)
                    self.leading.clear()
                    self.on_stop()
                try:
                    if self._lock is not None and not self._lost.is_set():
                        self._lock.release()
                except Exception:
                    pass

    def contenders(self) -> list[str]:
        lock = self._lock or self.store.client.Lock(self.path, self.identity)
        try:
            return list(lock.contenders())
        except Exception:
            return []

    def stop(self) -> None:
        self._stop.set()
        self._lost.set()
        try:
            self.store.client.remove_listener(self._on_state)
        except Exception:
            pass
        if self._thread is not None:
            self._thread.join(10)
