"""A job's durable run records in ZooKeeper, and the in-process mirror of them.

Everything that must survive an operator crash is an append-only record under
`runs/<job uid>/`, each written with `create_once` (exactly once):

    start                 when the first unit was launched (the deadline counts from it)
    inputs                the file groups of an `inputs` job, fixed at its start
    attempts/<task id>    written BEFORE the task is submitted: {unit, n}
    results/<task id>     the attempt's end: state, contributor, exit code, µs, result hash
    accepted/<unit>       the quorum's hash, the credited contributors with their µs, the outvoted
    recorded/<unit>       the ledger (chain) has the unit's credits
    dispatch              the ledger has the dispatcher's time for the job
    final                 the job's end: Succeeded or Failed, with reason and message

An attempt without a result is "in flight": after a restart the backend is asked about it
(`reconcile`), and a task the backend does not know comes back LOST and its unit is re-queued.
Reading all records on every pass would cost one ZooKeeper round trip per record, so a
`JobRecords` mirror is loaded once per process and then kept current by our own writes (the
engine runs one reconcile per object at a time, and only the leader reconciles). A create_once
that finds the record already there means another writer was active: the mirror reloads.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from boidcluster.adapters.store import Store


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class JobRecords:
    uid: str
    start: dict[str, Any] | None = None
    inputs: list[list[str]] | None = None
    attempts: dict[str, dict[str, Any]] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    accepted: dict[str, dict[str, Any]] = field(default_factory=dict)
    recorded: set[str] = field(default_factory=set)
    dispatch: bool = False
    final: dict[str, Any] | None = None
    loaded_at: float = 0.0

    # -- reading ----------------------------------------------------------------------------
    @classmethod
    def load(cls, store: Store, uid: str) -> "JobRecords":
        r = cls(uid, loaded_at=time.monotonic())

        def get(path: str) -> Any:
            raw = store.get_run(f"{uid}/{path}")
            return None if raw is None else json.loads(raw or b"null")

        r.start = get("start")
        r.inputs = get("inputs")
        r.final = get("final")
        r.dispatch = store.get_run(f"{uid}/dispatch") is not None
        for tid in store.list_runs(f"{uid}/attempts"):
            r.attempts[tid] = get(f"attempts/{tid}")
        for tid in store.list_runs(f"{uid}/results"):
            r.results[tid] = get(f"results/{tid}")
        for unit in store.list_runs(f"{uid}/accepted"):
            r.accepted[unit] = get(f"accepted/{unit}")
        r.recorded = set(store.list_runs(f"{uid}/recorded"))
        return r

    def in_flight(self) -> list[str]:
        return [t for t in self.attempts if t not in self.results]

    # -- writing (each returns False when the record already existed) --------------------------
    def _create(self, store: Store, path: str, data: Any) -> bool:
        return store.create_once(f"{self.uid}/{path}", json.dumps(data, sort_keys=True, separators=(",", ":")))

    def put_start(self, store: Store, data: dict[str, Any]) -> bool:
        ok = self._create(store, "start", data)
        self.start = data if ok else json.loads(store.get_run(f"{self.uid}/start") or b"null")
        return ok

    def put_inputs(self, store: Store, groups: list[list[str]]) -> list[list[str]]:
        if not self._create(store, "inputs", groups):
            groups = json.loads(store.get_run(f"{self.uid}/inputs") or b"[]")
        self.inputs = groups
        return groups

    def put_attempt(self, store: Store, tid: str, data: dict[str, Any]) -> bool:
        ok = self._create(store, f"attempts/{tid}", data)
        if ok:
            self.attempts[tid] = data
        return ok

    def put_result(self, store: Store, tid: str, data: dict[str, Any]) -> bool:
        ok = self._create(store, f"results/{tid}", data)
        if ok:
            self.results[tid] = data
        return ok

    def put_accepted(self, store: Store, unit: str, data: dict[str, Any]) -> bool:
        ok = self._create(store, f"accepted/{unit}", data)
        if ok:
            self.accepted[unit] = data
        return ok

    def put_recorded(self, store: Store, unit: str) -> None:
        self._create(store, f"recorded/{unit}", {"at_us": now_us()})
        self.recorded.add(unit)

    def put_dispatch(self, store: Store) -> None:
        self._create(store, "dispatch", {"at_us": now_us()})
        self.dispatch = True

    def put_final(self, store: Store, data: dict[str, Any]) -> dict[str, Any]:
        if not self._create(store, "final", data):
            data = json.loads(store.get_run(f"{self.uid}/final") or b"null")
        self.final = data
        return data
