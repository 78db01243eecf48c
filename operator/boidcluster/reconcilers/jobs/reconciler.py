"""The Job reconciler: units -> attempts on the backend -> quorum -> amalgamated output.

Level triggered, in the controller-runtime order: each pass *observes* the job's run records
(records.py) and the backend's updates, *compares* every unit with what it needs (replicas,
quorum, retries, timeouts, the deadline), *acts* (writes results and acceptances exactly once,
kills, launches up to the allowance), and *reports* status. Nothing is remembered between passes
that is not in ZooKeeper or rebuildable from it, so the operator may die at any point:

- attempt recorded, not submitted / task died with the operator -> backend says LOST -> re-queued
  (a LOST attempt never counts as a failure);
- result written, unit not accepted -> the next pass accepts it (create_once: exactly once);
- accepted, not given to the ledger -> `recorded/<unit>` is missing -> recorded on the next pass
  (the ledger is idempotent, so a crash after the chain call only repeats a no-op);
- published, `final` not written -> published again (atomic overwrite).

Replication is BOINC-style: each unit runs on `replicas` distinct contributors; its result is the
hash of its output files; it is accepted when `quorum` distinct contributors agree. Outvoted
results are kept aside in the acceptance record (and status), never credited; when results
disagree the unit is re-issued, to contributors not yet used for it when there are any.

The ledger hook (world.ledger, optional): `record_units(protocol, job, [(unit_id, contributor,
microseconds)])` for every credited replica of newly accepted units (the unit id is unique within
the job; the job is identified by job.metadata.uid), and, if the ledger has it,
`record_dispatch(protocol, job, microseconds)` once when the job succeeds. Both must be idempotent.
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
from datetime import datetime, timezone
from typing import Any

from boidcluster.adapters.backend import ImageUnavailable, TaskResources, TaskSpec
from boidcluster.adapters.store import NotFound
from boidcluster.engine.reconciler import Result, condition
from boidcluster.model.resources import (
    TOP_CONTRIBUTORS,
    ContributedTime,
    Disagreement,
    Job,
    Protocol,
    UnitCounts,
    UnitTime,
)
from boidcluster.reconcilers import registry

from .amalgamate import OutputInvalid, publish, result_hash
from .dispatcher import Dispatcher, dispatcher_for
from .records import JobRecords, now_us
from .units import Unit, expand, input_groups, storage_path

log = logging.getLogger(__name__)

LEDGER_BATCH = 50       # units per record_units call
LIST_LIMIT = 20         # names listed in status and messages


def _dt(us: int | None) -> datetime | None:
    return None if us is None else datetime.fromtimestamp(us / 1e6, timezone.utc).replace(microsecond=0)


def _names(items: list[str]) -> str:
    more = f" and {len(items) - LIST_LIMIT} more" if len(items) > LIST_LIMIT else ""
    return ", ".join(items[:LIST_LIMIT]) + more


def output_path(job: Job, protocol: Protocol) -> str:
    return storage_path(protocol.spec.datadir, job.spec.output.path or f"jobs/{job.name}")


@registry.reconciler(Job, cleanup=True, resync=30.0)
def reconcile_job(job: Job, world: Any) -> Result:
    """Run the job's units on the backend until every unit is accepted, then publish the output."""
    d = dispatcher_for(world)
    uid = job.metadata.uid or job.name
    if job.metadata.deletion_timestamp is not None:
        if d is not None:
            recs = d.records(world.store, uid)
            for tid in recs.in_flight():
                d.kill(tid, "deleted")
            d.drop(uid)
        return Result.released()
    if d is None or world.storage is None:
        return Result(status={"phase": "Pending"}, conditions=[condition(
            "Ready", False, "NoBackend", "this operator has no execution backend or storage configured")])
    try:
        protocol = world.store.get(Protocol, job.spec.protocol)
    except NotFound:
        return Result(status={"phase": "Pending"}, requeue_after=5.0, conditions=[condition(
            "Ready", False, "ProtocolNotFound", f"Protocol {job.spec.protocol!r} does not exist")])
    return _Pass(job, protocol, world, d, uid).run()


class _Pass:
    """One reconcile of one job."""

    def __init__(self, job: Job, protocol: Protocol, world: Any, d: Dispatcher, uid: str) -> None:
        self.job, self.protocol, self.world, self.d, self.uid = job, protocol, world, d, uid
        self.store, self.storage = world.store, world.storage
        self.spec = job.spec
        self.recs: JobRecords = d.records(self.store, uid)
        self.tag = f"{job.name}-{uid[:8]}"
        self.conditions: list[Any] = []
        self.failed_units: list[str] = []
        self.pending_disagreements: list[Disagreement] = []
        self.image_error = False

    # -- the pass ---------------------------------------------------------------------------
    def run(self) -> Result:
        units = self.units()
        if self.recs.final is None:
            self.d.poll()
            self.absorb()
            self.enforce_timeouts()
            wants = self.evaluate(units)
            self.ledger()
            self.finish_or_launch(units, wants)
        else:
            self.d.poll()
            self.absorb()   # close the records of tasks killed when the job ended
            self.release()
            self.ledger()
        return self.report(units)

    def units(self) -> list[Unit]:
        wu = self.spec.work_units
        if wu.inputs is None:
            return expand(self.spec)
        groups = self.recs.inputs
        if groups is None:
            directory = storage_path(self.protocol.spec.datadir, wu.inputs.path)
            files = [e.path for e in self.storage.list(directory) if e.type == "file"]
            groups = self.recs.put_inputs(
                self.store, [list(g) for g in input_groups(files, wu.inputs.pattern, wu.inputs.per_unit)])
        return expand(self.spec, groups=[tuple(g) for g in groups])

    def reload(self) -> None:
        self.recs = self.d.records(self.store, self.uid, reload=True)

    # -- observe ----------------------------------------------------------------------------
    def absorb(self) -> None:
        """Turn terminal updates of in-flight attempts into result records."""
        in_flight = self.recs.in_flight()
        self.d.ask([t for t in in_flight if self.d.update(t) is None])
        for tid in in_flight:
            u = self.d.update(tid)
            if u is None or not u.terminal:
                continue
            attempt = self.recs.attempts[tid]
            reason = self.d.kill_reason(tid)
            digest = None
            if u.state == "FINISHED":
                digest = result_hash(self.storage, attempt["output"])
            message = u.message
            if u.state == "KILLED" and reason == "timeout":
                message = f"killed: ran longer than unitTimeout {self.spec.unit_timeout}s"
            # A backend enforcing TaskSpec.timeout itself reports it as FAILED (local) or as a KILLED
            # we did not ask for, "timed out after ..." (mesos); either is the unit's failure.
            timed_out = u.state == "KILLED" and (
                reason == "timeout" or (reason is None and u.message.startswith("timed out")))
            data = {
                "unit": attempt["unit"], "state": u.state, "contributor": u.contributor,
                "exit_code": u.exit_code, "us": u.contributed_us, "hash": digest, "message": message[:500],
                "failure": u.state == "FAILED" or timed_out,
                "finished_us": int(u.finished_at * 1e6) if u.finished_at else now_us(),
            }
            if not self.recs.put_result(self.store, tid, data):
                self.reload()
            self.d.forget(tid)

    def enforce_timeouts(self) -> None:
        """Backends enforce TaskSpec.timeout; this catches one that did not."""
        limit = self.spec.unit_timeout
        if limit is None:
            return
        now = time.time()
        for tid in self.recs.in_flight():
            u = self.d.update(tid)
            if (u is not None and u.state == "RUNNING" and u.started_at is not None
                    and now - u.started_at > limit + self.d.kill_grace and self.d.kill_reason(tid) is None):
                self.d.kill(tid, "timeout")

    # -- compare ----------------------------------------------------------------------------
    def evaluate(self, units: list[Unit]) -> list[tuple[Unit, int, frozenset[str]]]:
        """Accept units that reached quorum; return [(unit, replicas to launch now, exclusions)]."""
        rep = self.spec.replication
        quorum = rep.quorum or rep.replicas
        results: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for tid, r in sorted(self.recs.results.items(), key=lambda kv: kv[1].get("finished_us", 0)):
            results.setdefault(r["unit"], []).append((tid, r))
        flying: dict[str, list[str]] = {}
        for tid in self.recs.in_flight():
            flying.setdefault(self.recs.attempts[tid]["unit"], []).append(tid)
        online = set(self.d.backend.contributors())
        now = now_us()
        wants = []
        for unit in units:
            rs = results.get(unit.id, [])
            in_flight = flying.get(unit.id, [])
            if unit.id in self.recs.accepted:
                for tid in in_flight:
                    if self.d.kill_reason(tid) is None:
                        self.d.kill(tid, "accepted")  # extra replicas: the unit is decided
                continue
            groups: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {}
            ok = [(tid, r) for tid, r in rs if r["state"] == "FINISHED" and r["hash"] and r["contributor"]]
            for tid, r in ok:
                groups.setdefault(r["hash"], {}).setdefault(r["contributor"], (tid, r))
            best_hash, best = max(groups.items(), key=lambda kv: len(kv[1]), default=(None, {}))
            if best_hash is not None and len(best) >= quorum:
                self.accept(unit, best_hash, best, ok, in_flight)
                continue
            if len(groups) > 1:
                self.pending_disagreements += [
                    Disagreement(unit=unit.id, contributor=r["contributor"], hash=r["hash"], task=tid)
                    for tid, r in ok]
            failures = [r for _, r in rs if r.get("failure")]
            if len(failures) > self.spec.retries:
                self.failed_units.append(unit.id)
                continue
            need = max(rep.replicas - len(ok) - len(in_flight), quorum - len(best) - len(in_flight), 0)
            if need == 0:
                continue
            if failures:
                backoff = min(self.d.retry_backoff * 2 ** (len(failures) - 1), self.d.max_backoff)
                if now < failures[-1]["finished_us"] + int(backoff * 1e6):
                    continue
            hard = {r["contributor"] for _, r in ok}
            for tid in in_flight:
                u = self.d.update(tid)
                if u is not None and u.contributor:
                    hard.add(u.contributor)
            soft = hard | {r["contributor"] for _, r in rs if r["contributor"]}
            wants.append((unit, need, frozenset(soft if not online <= soft else hard)))
        return wants

    def accept(self, unit: Unit, digest: str, best: dict[str, tuple[str, dict[str, Any]]],
               ok: list[tuple[str, dict[str, Any]]], in_flight: list[str]) -> None:
        credited = [{"contributor": c, "us": int(r["us"]), "task": tid} for c, (tid, r) in best.items()]
        rejected = [{"contributor": r["contributor"], "hash": r["hash"], "task": tid}
                    for tid, r in ok if r["hash"] != digest]
        data = {"hash": digest, "credited": credited, "rejected": rejected, "at_us": now_us(),
                "output": self.recs.attempts[credited[0]["task"]]["output"]}
        if not self.recs.put_accepted(self.store, unit.id, data):
            self.reload()
        for tid in in_flight:
            self.d.kill(tid, "accepted")

    # -- act --------------------------------------------------------------------------------
    def ledger(self) -> None:
        ledger = self.world.ledger
        if ledger is None:
            return
        todo = sorted(u for u in self.recs.accepted if u not in self.recs.recorded)
        try:
            for i in range(0, len(todo), LEDGER_BATCH):
                batch = todo[i:i + LEDGER_BATCH]
                ledger.record_units(self.protocol, self.job, [
                    (unit, c["contributor"], int(c["us"]))
                    for unit in batch for c in self.recs.accepted[unit]["credited"]])
                for unit in batch:
                    self.recs.put_recorded(self.store, unit)
            final = self.recs.final
            if (final is not None and final["phase"] == "Succeeded" and not self.recs.dispatch
                    and hasattr(ledger, "record_dispatch") and self.recs.start is not None):
                ledger.record_dispatch(self.protocol, self.job, max(0, final["at_us"] - self.recs.start["at_us"]))
                self.recs.put_dispatch(self.store)
        except Exception as e:  # the chain is down or refused: keep going, retry next pass
            log.info("job %s: recording contributed time failed: %s", self.job.name, e)
            self.conditions.append(condition("Recorded", False, type(e).__name__, str(e)[:500]))
            return
        if todo or self.recs.recorded:
            self.conditions.append(condition("Recorded", True, "Recorded",
                                             f"{len(self.recs.recorded)} accepted units recorded"))

    def end(self, phase: str, reason: str, message: str, units: list[str] = ()) -> None:  # type: ignore[assignment]
        self.recs.put_final(self.store, {"phase": phase, "reason": reason, "message": message[:1000],
                                         "units": list(units)[:LIST_LIMIT], "at_us": now_us()})
        self.release()

    def release(self) -> None:
        """A finished job gives its slots back: kill whatever is still in flight."""
        for tid in self.recs.in_flight():
            if self.d.kill_reason(tid) is None:
                self.d.kill(tid, "job ended")

    def finish_or_launch(self, units: list[Unit], wants: list[tuple[Unit, int, frozenset[str]]]) -> None:
        left = [u.id for u in units if u.id not in self.recs.accepted]
        start = self.recs.start
        if self.spec.deadline is not None and start is not None \
                and now_us() - start["at_us"] > self.spec.deadline * 1_000_000:
            self.end("Failed", "DeadlineExceeded",
                     f"deadline {self.spec.deadline}s passed with {len(left)} units unfinished: {_names(left)}", left)
            return
        if self.failed_units:
            last = {}
            for r in self.recs.results.values():
                if r["unit"] in self.failed_units and r.get("failure"):
                    last[r["unit"]] = r["message"]
            first = self.failed_units[0]
            self.end("Failed", "UnitFailed",
                     f"{len(self.failed_units)} units failed after {self.spec.retries + 1} attempts: "
                     f"{_names(self.failed_units)} (last error of {first}: {last.get(first, '')})",
                     self.failed_units)
            return
        if not left:
            self.amalgamate(units)
            return
        in_flight = len(self.recs.in_flight())
        wanted = sum(n for _, n, _ in wants)
        cap = self.spec.parallelism
        if cap is not None:
            wanted = max(0, min(wanted, cap - in_flight))
        quota = self.protocol.spec.quota.max_parallelism if self.protocol.spec.quota else None
        allowed = self.d.allowance(self.protocol.name, self.uid, in_flight, wanted, quota)
        budget = allowed - in_flight
        counts: dict[str, int] = {}
        for a in self.recs.attempts.values():
            counts[a["unit"]] = counts.get(a["unit"], 0) + 1
        if budget > 0 and wants and self.image() is None:
            return
        for unit, need, exclude in wants:
            for _ in range(need):
                if budget <= 0:
                    return
                n = counts.get(unit.id, 0)
                counts[unit.id] = n + 1
                if not self.launch(unit, n, exclude):
                    return
                budget -= 1

    def image(self) -> str | None:
        """The image every attempt runs: `spec.image` resolved once per job to a digest by the backend
        (kept in the start record, written once); None, with a condition, while it is unavailable."""
        if self.recs.start is not None:
            return self.recs.start.get("image_digest") or self.spec.image
        resolve = getattr(self.d.backend, "resolve_image", None)
        try:
            digest = resolve(self.spec.image) if resolve else None
        except ImageUnavailable as e:
            self.image_error = True
            self.conditions.append(condition("Ready", False, "ImageUnavailable", str(e)[:1000]))
            return None
        self.recs.put_start(self.store, {"at_us": now_us(), "image_digest": digest})
        return self.recs.start.get("image_digest") or self.spec.image  # type: ignore[union-attr]

    def launch(self, unit: Unit, n: int, exclude: frozenset[str]) -> bool:
        tid = f"{self.tag}.{unit.id}.{n}"
        out = posixpath.join(self.protocol.spec.datadir, ".runs", self.tag, unit.id, str(n))
        image = self.image()
        if not self.recs.put_attempt(self.store, tid, {"unit": unit.id, "n": n, "output": out, "at_us": now_us()}):
            self.reload()  # someone else launched it: look again next pass
            return False
        spec = self.spec
        command = ["/bin/sh", "-c", spec.command] if isinstance(spec.command, str) else list(spec.command)
        env = {**spec.env, "BOID_UNIT_INDEX": str(unit.index), "BOID_UNIT_PARAMS": unit.params_json,
               "BOID_OUTPUT_DIR": out, "BOID_INPUT_FILES": _json_list(unit.inputs)}
        r = spec.resources
        task = TaskSpec(task_id=tid, job=self.tag, unit=unit.id, command=command, env=env, output_dir=out,
                        image=image, network=self.protocol.spec.network,
                        resources=TaskResources(cpus=r.cpus, mem=r.mem, disk=r.disk, gpus=r.gpus),
                        constraints=tuple(tuple(c) for c in spec.constraints), exclude_contributors=exclude,
                        timeout=float(spec.unit_timeout) if spec.unit_timeout else None,
                        role=self.protocol.name)
        try:
            self.d.submit(task)
        except Exception as e:
            self.recs.put_result(self.store, tid, {"unit": unit.id, "state": "LOST", "contributor": None,
                                                   "exit_code": None, "us": 0, "hash": None, "failure": False,
                                                   "message": f"submit failed: {e}"[:500], "finished_us": now_us()})
            return False
        return True

    def amalgamate(self, units: list[Unit]) -> None:
        out = output_path(self.job, self.protocol)
        manifest = {
            "job": self.job.name, "uid": self.uid, "protocol": self.protocol.name,
            "reduce": self.spec.output.reduce, "output": out, "image": self.spec.image,
            "image_digest": (self.recs.start or {}).get("image_digest"),
            "units": [{"id": u.id, "index": u.index, "params": u.params, "inputs": list(u.inputs),
                       "hash": self.recs.accepted[u.id]["hash"], "output": self.recs.accepted[u.id]["output"],
                       "credited": [{"contributor": c["contributor"], "microseconds": c["us"]}
                                    for c in self.recs.accepted[u.id]["credited"]]}
                      for u in units],
        }
        try:
            publish(self.storage, out, self.spec.output.reduce, self.spec.output.command,
                    [(u.id, self.recs.accepted[u.id]["output"]) for u in units], manifest)
        except OutputInvalid as e:
            self.end("Failed", "OutputInvalid", str(e))
            return
        self.end("Succeeded", "Complete", f"{len(units)} units accepted; output in {out}")

    # -- report -----------------------------------------------------------------------------
    def report(self, units: list[Unit]) -> Result:
        recs, final = self.recs, self.recs.final
        ids = {u.id for u in units}
        accepted = {u: a for u, a in recs.accepted.items() if u in ids}
        running: set[str] = set()
        for tid in recs.in_flight():
            u = self.d.update(tid)
            if u is not None and u.state == "RUNNING":
                running.add(recs.attempts[tid]["unit"])
        finished = {r["unit"] for r in recs.results.values() if r["state"] == "FINISHED"} | set(accepted)
        failed = set(self.failed_units) if final is None else (
            set(final.get("units", [])) if final.get("reason") == "UnitFailed" else set())
        running -= set(accepted)
        total, validated = len(units), len(accepted)
        counts = UnitCounts(total=total, validated=validated, running=len(running),
                            succeeded=len(finished & ids), failed=len(failed),
                            pending=max(0, total - validated - len(running) - len(failed)))
        per: dict[str, int] = {}
        slow: list[UnitTime] = []
        disagreements = list(self.pending_disagreements)
        for unit, a in sorted(accepted.items()):
            for c in a["credited"]:
                per[c["contributor"]] = per.get(c["contributor"], 0) + int(c["us"])
            top = max(a["credited"], key=lambda c: c["us"])
            slow.append(UnitTime(unit=unit, contributor=top["contributor"], microseconds=int(top["us"])))
            disagreements += [Disagreement(unit=unit, **r) for r in a["rejected"]]
        contributors = [ContributedTime(account=acct, seconds=us // 1_000_000, microseconds=us)
                        for acct, us in sorted(per.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_CONTRIBUTORS]]
        slow.sort(key=lambda t: -t.microseconds)
        phase = final["phase"] if final else ("Running" if recs.start else "Pending")
        status: dict[str, Any] = {
            "phase": phase, "units": counts,
            "progress": f"{validated}/{total} ({validated * 100 // total if total else 100}%)",
            "start_time": _dt(recs.start["at_us"]) if recs.start else None,
            "completion_time": _dt(final["at_us"]) if final else None,
            "output": output_path(self.job, self.protocol) if phase == "Succeeded" else None,
            "contributors": contributors, "slowest_units": slow[:5],
            "disagreements": disagreements[:LIST_LIMIT],
            "failed_units": (final.get("units", []) if final and phase == "Failed" else sorted(failed))[:LIST_LIMIT],
            "image_digest": (recs.start or {}).get("image_digest"),
        }
        conds = list(self.conditions)
        if final is None:
            conds += [condition("Complete", False, "Running" if recs.start else "Pending", status["progress"]),
                      condition("Failed", False, "Running")]
        elif phase == "Succeeded":
            conds += [condition("Complete", True, final["reason"], final["message"]),
                      condition("Failed", False, "Succeeded")]
        else:
            conds += [condition("Complete", False, "Failed", final["message"]),
                      condition("Failed", True, final["reason"], final["message"])]
        ledger = self.world.ledger
        unrecorded = ledger is not None and (
            any(u not in recs.recorded for u in accepted)
            or (phase == "Succeeded" and hasattr(ledger, "record_dispatch") and not recs.dispatch))
        requeue = self.d.poll_interval if final is None else (2.0 if unrecorded else None)
        if self.image_error:
            requeue = 10.0  # the image may be imported meanwhile; do not pull in a tight loop
        if final is not None and not unrecorded and not recs.in_flight():
            self.d.drop(self.uid)
        return Result(status=status, conditions=conds, requeue_after=requeue)


def _json_list(items: Any) -> str:
    return json.dumps(list(items))
