"""A job's durable run records in ZooKeeper (typed), and the incremental in-process mirror of them.

Everything that must survive an operator crash is an append-only record under
`runs/<job uid>/`, each written with create-once semantics (exactly once):

    start                 when the first unit was launched (the deadline counts from it)
    inputs                the file groups of an `inputs` job, fixed at its start
    attempts/<task id>    written BEFORE the task is submitted: Attempt
    results/<task id>     the attempt's end: TaskResult
    accepted/<unit>       the quorum's hash, the credited contributors with their µs, the outvoted
    recorded/<unit>       the ledger (chain) has the unit's credits
    dispatch              the ledger has the dispatcher's time for the job
    final                 the job's end: Succeeded or Failed, with reason and message
    summary               the job is compacted: every record above is gone from ZooKeeper (the
                          full record is in storage next to the results manifest); per-contributor
                          totals and counts stay here until ttlSecondsAfterFinished or deletion

An attempt without a result is "in flight": after a restart the backend is asked about it
(`reconcile`), and a task the backend does not know comes back LOST and its unit is re-queued.

The mirror (`JobRecords`) is loaded from ZooKeeper once per process (after a restart or a leader
change) and then kept current by our own writes: the engine runs one reconcile per object at a
time and only the leader reconciles. Besides the records it keeps the indexes a pass needs so that
a pass costs O(what changed): the set of in-flight tasks, the results of units still open, running
per-contributor totals, and the counters status shows. A create that finds the record already
there means another writer was active: the caller reloads the mirror.

A unit that is settled (accepted, its records durable, its credits given to the ledger, no
replica in flight) is *retired*: its records leave the mirror and only one bit (by unit index)
and the counters stay, so the operator's memory does not grow with the job's size. The records
stay in ZooKeeper; amalgamation and compaction read them back once.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TypeVar

import orjson

from boidcluster.adapters.store import Store

T = TypeVar("T")


def now_us() -> int:
    return time.time_ns() // 1000


def _load(cls: type[T], raw: bytes | None) -> T | None:
    """A record from its JSON (unknown keys ignored: records written by an older/newer operator)."""
    if raw is None:
        return None
    data = parse_record(raw or b"null")
    if data is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


def _dump(rec: Any) -> bytes:
    """A record's JSON. orjson encodes dataclasses (with slots) itself, 4-5x faster than json with
    a conversion to dicts first; a record is written per unit and read back per unit, so it adds up.
    orjson refuses a string that is not valid UTF-8 (a lone surrogate: a unit's file name that is
    not UTF-8, quoted in a message): such a record is written by json with those characters as
    '?', so that it can be read back (orjson refuses a surrogate escape too)."""
    try:
        return orjson.dumps(rec)
    except orjson.JSONEncodeError:
        plain = dataclasses.asdict(rec) if dataclasses.is_dataclass(rec) else rec
        return json.dumps(plain, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")


def parse_record(raw: bytes) -> Any:
    """A record's data: orjson, or json for what it refuses (a surrogate escape, as json.dumps
    wrote a non-UTF-8 string before records were written by orjson)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


@dataclass(frozen=True, slots=True)
class Attempt:
    unit: str
    n: int
    output: str
    at_us: int


@dataclass(frozen=True, slots=True)
class TaskResult:
    unit: str
    state: str                 # FINISHED | FAILED | KILLED | LOST
    contributor: str | None
    exit_code: int | None
    us: int                    # contributed microseconds
    hash: str | None           # result hash (FINISHED only)
    message: str
    failure: bool              # counts against spec.retries
    finished_us: int
    submit_error: bool = False  # the backend refused the submit (never ran)


@dataclass(frozen=True, slots=True)
class Credit:
    contributor: str
    us: int
    task: str


@dataclass(frozen=True, slots=True)
class Rejected:
    contributor: str
    hash: str
    task: str


@dataclass(frozen=True, slots=True)
class Acceptance:
    hash: str
    credited: tuple[Credit, ...]
    rejected: tuple[Rejected, ...]
    at_us: int
    output: str

    @classmethod
    def from_raw(cls, raw: bytes | None) -> "Acceptance | None":
        if raw is None:
            return None
        d = parse_record(raw)
        return cls(hash=d["hash"], credited=tuple(Credit(**c) for c in d["credited"]),
                   rejected=tuple(Rejected(**r) for r in d["rejected"]), at_us=d["at_us"], output=d["output"])


@dataclass(frozen=True, slots=True)
class Final:
    phase: str                 # Succeeded | Failed
    reason: str
    message: str
    units: tuple[str, ...] | list[str]
    at_us: int


@dataclass(frozen=True)
class Summary:
    """What stays in ZooKeeper of a finished, compacted job (small whatever the job's size)."""

    final: Final
    start_us: int | None
    total: int
    validated: int
    succeeded: int
    contributors: dict[str, int]          # account -> contributed µs, over every accepted unit
    slowest: list[tuple[str, str, int]]   # (unit, contributor, µs), at most 5
    disagreements: list[dict[str, str]]   # at most 20
    record: str                           # storage path of the full record
    dispatch: bool = False                # the ledger has the dispatcher's time for the job
    image_digest: str | None = None       # what the job's image resolved to (every unit ran it)

    def to_json(self) -> bytes:
        return _dump(self)

    @classmethod
    def from_raw(cls, raw: bytes | None) -> "Summary | None":
        if raw is None:
            return None
        d = parse_record(raw)
        d["final"] = Final(**d["final"])
        d["slowest"] = [tuple(x) for x in d["slowest"]]
        return cls(**d)


def unit_index(unit_id: str) -> int:
    """The index encoded in a unit id ('u000042' or 'u000042-<digest>')."""
    return int(unit_id[1:].split("-", 1)[0])


@dataclass
class JobRecords:
    uid: str
    start: dict[str, Any] | None = None
    inputs: list[list[str]] | None = None
    attempts: dict[str, Attempt] = field(default_factory=dict)
    results: dict[str, TaskResult] = field(default_factory=dict)
    accepted: dict[str, Acceptance] = field(default_factory=dict)
    recorded: set[str] = field(default_factory=set)
    dispatch: bool = False
    final: Final | None = None
    summary: Summary | None = None
    loaded_at: float = 0.0
    # -- indexes, maintained by the writers below ------------------------------------------------
    flying: dict[str, Attempt] = field(default_factory=dict)          # attempts without a result
    open_results: dict[str, list[str]] = field(default_factory=dict)  # unit -> its result tids (open units)
    tries: dict[str, int] = field(default_factory=dict)               # unit -> attempts made (open units)
    unrecorded: set[str] = field(default_factory=set)                 # accepted, not yet given to the ledger
    finished_units: set[str] = field(default_factory=set)            # units with a FINISHED result
    launched_upto: int = 0                                           # 1 + highest unit index attempted
    per_contributor: dict[str, int] = field(default_factory=dict)    # credited µs over accepted units
    flying_by_unit: dict[str, set[str]] = field(default_factory=dict)  # unit -> its tasks in flight
    slowest: list[tuple[int, str, str]] = field(default_factory=list)  # (µs, unit, contributor), top 5
    rejections: list[tuple[str, Rejected]] = field(default_factory=list)  # outvoted, first 20
    unit_tids: dict[str, list[str]] = field(default_factory=dict)    # unit -> its attempts (not retired)
    # -- retired units: accepted, given to the ledger, nothing in flight. Only counters and a bit
    # per unit stay in memory (their records stay in ZooKeeper), so memory does not grow with
    # the job's size; compaction and amalgamation read them back from ZooKeeper once. ----------
    retired: bytearray = field(default_factory=bytearray)  # bitmap by unit index
    n_retired: int = 0
    n_retired_recorded: int = 0
    settle: set[str] = field(default_factory=set)           # accepted units that may retire now
    # -- the pass's own queues (in memory only; rebuilt from the records by a fresh mirror) --------
    fresh: bool = True                   # loaded, not yet seen by a pass
    dirty: set[str] = field(default_factory=set)          # units to evaluate
    ready: list[tuple[int, int, str]] = field(default_factory=list)  # heap (not_before_us, index, unit)
    wants: dict[str, tuple[int, int, frozenset[str]]] = field(default_factory=dict)  # unit -> (n, not_before, exclude)
    failed: dict[str, str] = field(default_factory=dict)  # unit -> why it failed for good
    disagreeing: dict[str, tuple[Rejected, ...]] = field(default_factory=dict)  # open units
    cursor: int = 0                      # next never-launched unit index (lazy expansion)
    status_at: float = 0.0               # monotonic time of the last status written
    status_key: Any = None               # phase/conditions of the last status written

    # -- reading ----------------------------------------------------------------------------
    @classmethod
    def load(cls, store: Store, uid: str) -> "JobRecords":
        """Read every record of the job (one listing per directory, reads pipelined)."""
        r = cls(uid, loaded_at=time.monotonic())
        present = set(store.list_runs(uid))   # a new job has none: one round trip
        if "summary" in present:
            r.summary = Summary.from_raw(store.get_run(f"{uid}/summary"))
            if r.summary is not None:
                r.final = r.summary.final
                return r
        singles = [n for n in ("start", "inputs", "final", "dispatch") if n in present]
        raw = dict(zip(singles, store.get_runs(*(f"{uid}/{n}" for n in singles))))
        r.start = json.loads(raw["start"]) if raw.get("start") is not None else None
        r.inputs = json.loads(raw["inputs"]) if raw.get("inputs") is not None else None
        r.final = _load(Final, raw.get("final"))
        r.dispatch = raw.get("dispatch") is not None
        if "attempts" in present:
            for tid, data in store.read_runs(f"{uid}/attempts"):
                r._attempt(tid, _load(Attempt, data))  # type: ignore[arg-type]
        if "results" in present:
            results = [(tid, _load(TaskResult, data)) for tid, data in store.read_runs(f"{uid}/results")]
            for tid, res in sorted(results, key=lambda kv: kv[1].finished_us):  # type: ignore[union-attr]
                r._result(tid, res)  # type: ignore[arg-type]
        if "recorded" in present:
            r.recorded = set(store.list_runs(f"{uid}/recorded"))
        if "accepted" in present:
            for unit, data in store.read_runs(f"{uid}/accepted"):
                r._accepted(unit, Acceptance.from_raw(data))  # type: ignore[arg-type]
        if present and store.get_run(f"{uid}/summary") is not None:
            return cls.load(store, uid)   # compacted while we read (the summary comes before any delete)
        return r

    @classmethod
    def load_full(cls, store: Store, storage: Any, uid: str) -> "JobRecords":
        """Every record of the job, from ZooKeeper or, once compacted, from the full record in
        storage (`summary.record`, next to the results manifest)."""
        r = cls.load(store, uid)
        if r.summary is None:
            return r
        return cls.from_record(json.loads(storage.read_bytes(r.summary.record)), summary=r.summary)

    @classmethod
    def from_record(cls, full: dict[str, Any], summary: Summary | None = None) -> "JobRecords":
        r = cls(full["uid"], start=full.get("start"), inputs=full.get("inputs"), dispatch=bool(full.get("dispatch")),
                final=Final(**full["final"]) if full.get("final") else None, summary=summary, fresh=False)
        for tid, a in full["attempts"].items():
            r._attempt(tid, Attempt(**a))
        for tid, x in sorted(full["results"].items(), key=lambda kv: kv[1]["finished_us"]):
            r._result(tid, TaskResult(**x))
        r.recorded = set(full["recorded"])
        for u, a in full["accepted"].items():
            r._accepted(u, Acceptance.from_raw(_dump(a)))  # type: ignore[arg-type]
        return r

    def credited(self) -> tuple[dict[str, int], dict[str, int]]:
        """Credited µs per contributor: (given to the ledger, accepted but not yet given). A
        compacted job's come from its summary (everything was given before compaction)."""
        if self.summary is not None:
            return dict(self.summary.contributors), {}
        done: dict[str, int] = {}
        pending: dict[str, int] = {}
        for unit, acc in self.accepted.items():
            target = done if unit in self.recorded else pending
            for c in acc.credited:
                target[c.contributor] = target.get(c.contributor, 0) + c.us
        return done, pending

    def is_accepted(self, unit: str, index: int | None = None) -> bool:
        if unit in self.accepted:
            return True
        i = unit_index(unit) if index is None else index
        return (i >> 3) < len(self.retired) and bool(self.retired[i >> 3] >> (i & 7) & 1)

    @property
    def validated(self) -> int:
        """Units accepted (in memory or retired)."""
        return len(self.accepted) + self.n_retired

    @property
    def succeeded(self) -> int:
        """Units with a FINISHED result (every accepted unit has one)."""
        return len(self.finished_units) + self.n_retired

    @property
    def n_recorded(self) -> int:
        return len(self.recorded) + self.n_retired_recorded

    def retire(self, ledger: bool) -> int:
        """Drop from memory the accepted units that need nothing more (their records are durable,
        the ledger has their credits when there is one, no replica of theirs is in flight); only
        a bit and the counters stay. Call only once the pass's records are committed. Looks only
        at units that changed (`settle`): O(what changed)."""
        n = 0
        for unit in self.settle:
            if unit in self.flying_by_unit or (ledger and unit in self.unrecorded) or unit not in self.accepted:
                continue   # comes back to `settle` when its last replica ends / it is recorded
            del self.accepted[unit]
            self.unrecorded.discard(unit)
            if unit in self.recorded:
                self.recorded.discard(unit)
                self.n_retired_recorded += 1
            self.finished_units.discard(unit)
            for tid in self.unit_tids.pop(unit, ()):
                self.attempts.pop(tid, None)
                self.results.pop(tid, None)
            i = unit_index(unit)
            if (i >> 3) >= len(self.retired):
                self.retired.extend(bytes((i >> 3) + 1 - len(self.retired)))
            self.retired[i >> 3] |= 1 << (i & 7)
            self.n_retired += 1
            n += 1
        self.settle.clear()
        return n

    def in_flight(self) -> list[str]:
        return list(self.flying)

    def results_of(self, unit: str) -> list[TaskResult]:
        return [self.results[t] for t in self.open_results.get(unit, ())]

    # -- index maintenance ---------------------------------------------------------------------
    def _attempt(self, tid: str, a: Attempt) -> None:
        self.attempts[tid] = a
        self.unit_tids.setdefault(a.unit, []).append(tid)
        if tid not in self.results:
            self.flying[tid] = a
            self.flying_by_unit.setdefault(a.unit, set()).add(tid)
        if a.unit not in self.accepted:
            self.tries[a.unit] = max(self.tries.get(a.unit, 0), a.n + 1)
        self.launched_upto = max(self.launched_upto, unit_index(a.unit) + 1)

    def _result(self, tid: str, res: TaskResult) -> None:
        self.results[tid] = res
        if self.flying.pop(tid, None) is not None:
            left = self.flying_by_unit.get(res.unit)
            if left is not None:
                left.discard(tid)
                if not left:
                    del self.flying_by_unit[res.unit]
                    if res.unit in self.accepted:
                        self.settle.add(res.unit)   # its last replica ended
        if res.state == "FINISHED":
            self.finished_units.add(res.unit)
        if res.unit not in self.accepted:
            self.open_results.setdefault(res.unit, []).append(tid)

    def _accepted(self, unit: str, acc: Acceptance) -> None:
        self.accepted[unit] = acc
        self.settle.add(unit)
        self.open_results.pop(unit, None)
        self.tries.pop(unit, None)
        self.finished_units.add(unit)
        if unit not in self.recorded:
            self.unrecorded.add(unit)
        for c in acc.credited:
            self.per_contributor[c.contributor] = self.per_contributor.get(c.contributor, 0) + c.us
        if acc.credited:
            top = max(acc.credited, key=lambda c: c.us)
            if len(self.slowest) < 5 or top.us > self.slowest[-1][0]:
                self.slowest = sorted([*self.slowest, (top.us, unit, top.contributor)], key=lambda t: -t[0])[:5]
        if len(self.rejections) < 20:
            self.rejections += [(unit, r) for r in acc.rejected][:20 - len(self.rejections)]
        self.disagreeing.pop(unit, None)

    # -- staging: apply to the mirror now, return the znode to create (the caller commits all of
    # a pass's records in one transaction, and reloads the mirror if that fails) ----------------
    def stage_attempt(self, tid: str, a: Attempt) -> tuple[str, bytes]:
        self._attempt(tid, a)
        return f"{self.uid}/attempts/{tid}", _dump(a)

    def stage_result(self, tid: str, r: TaskResult) -> tuple[str, bytes]:
        self._result(tid, r)
        return f"{self.uid}/results/{tid}", _dump(r)

    def stage_accepted(self, unit: str, a: Acceptance) -> tuple[str, bytes]:
        self._accepted(unit, a)
        return f"{self.uid}/accepted/{unit}", _dump(a)

    # -- writing: each creates its znodes in one transaction; False when one already existed -----
    def put_start(self, store: Store, at_us: int, image_digest: str | None = None) -> bool:
        """The job's start, written once: when (the deadline counts from it) and the digest its
        image resolved to (every unit and replica runs that one)."""
        data: dict[str, Any] = {"at_us": at_us, "image_digest": image_digest}
        ok = store.create_once(f"{self.uid}/start", _dump(data))
        self.start = data if ok else json.loads(store.get_run(f"{self.uid}/start") or b"null")
        return ok

    def put_inputs(self, store: Store, groups: list[list[str]]) -> list[list[str]]:
        if not store.create_once(f"{self.uid}/inputs", _dump(groups)):
            groups = json.loads(store.get_run(f"{self.uid}/inputs") or b"[]")
        self.inputs = groups
        return groups

    def put_recorded(self, store: Store, units: list[str]) -> None:
        store.create_many([(f"{self.uid}/recorded/{u}", _dump({"at_us": now_us()})) for u in units],
                          exist_ok=True)
        self.mark_recorded(units)

    def mark_recorded(self, units: list[str]) -> None:
        """The ledger has these units' credits (their `recorded` records are durable)."""
        self.recorded.update(units)
        self.unrecorded.difference_update(units)
        self.settle.update(units)

    def put_dispatch(self, store: Store) -> None:
        store.create_once(f"{self.uid}/dispatch", _dump({"at_us": now_us()}))
        self.dispatch = True

    def put_final(self, store: Store, final: Final) -> Final:
        if not store.create_once(f"{self.uid}/final", _dump(final)):
            final = _load(Final, store.get_run(f"{self.uid}/final")) or final
        self.final = final
        return final


def write_full_record(f: BinaryIO, store: Store, uid: str, head: dict[str, Any]) -> None:
    """A job's full run record as JSON into `f` (`head`, then every attempt, result, acceptance
    and recorded unit), read from ZooKeeper: the records' own JSON is copied as is, never decoded,
    and written as it arrives, so a 100,000-unit job costs a window of reads, not its 70 MB record
    (nor a million objects) in memory. Same shape as JobRecords.from_record reads."""
    present = set(store.list_runs(uid))
    f.write(b"{" + b",".join(json.dumps(k).encode() + b":" + json.dumps(v, sort_keys=True, separators=(",", ":")).encode()
                             for k, v in sorted(head.items())))
    for d in ("attempts", "results", "accepted"):
        f.write(b',"' + d.encode() + b'":{')
        sep = b""
        for n, raw in (store.iter_runs(f"{uid}/{d}") if d in present else ()):
            f.write(sep + json.dumps(n).encode() + b":" + (raw or b"null"))
            sep = b","
        f.write(b"}")
    recorded = sorted(store.list_runs(f"{uid}/recorded")) if "recorded" in present else []
    f.write(b',"recorded":' + json.dumps(recorded).encode() + b"}")


def accepted_units(store: Store, uid: str) -> dict[str, bytes]:
    """Every acceptance of the job, read from ZooKeeper: unit -> its record's JSON, not decoded
    (decoded, a 100,000-unit job's were ~100 MB of objects at once; parse_record each when used)."""
    return dict(store.read_runs(f"{uid}/accepted"))
