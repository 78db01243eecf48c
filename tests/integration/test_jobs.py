"""Jobs end to end: a real ZooKeeper, the engine's Operator, real subprocess workers.

Each test applies a Protocol and a Job and watches the Job's status converge. Faults are injected
through the local backend's labelled hooks (lose_contributor, a corrupt_output slot), by killing
the operator mid-job, and by commands that fail or hang. `CountingLedger` is a small test
collaborator for the ledger hook: idempotent per (unit, contributor), counting calls per unit.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest

from boidcluster.adapters.local.backend import LocalBackend, Slot
from boidcluster.adapters.storage import Storage
from boidcluster.adapters.store import Store
from boidcluster.engine.operator import Operator
from boidcluster.engine.world import World
from boidcluster.model.meta import ObjectMeta
from boidcluster.model.resources import Job, Protocol
from boidcluster.reconcilers import registry
from boidcluster.reconcilers.jobs import Dispatcher
from boidcluster.reconcilers.jobs.records import JobRecords

PY = sys.executable
DATADIR = "protocols/mc"


class CountingLedger:
    """Records credits once per (unit key, contributor); counts calls per unit key."""

    def __init__(self) -> None:
        self.mu = threading.Lock()
        self.rows: dict[tuple[str, str], int] = {}
        self.calls: dict[str, int] = {}
        self.protocols: set[str] = set()

    def record_units(self, protocol, job, credits):
        with self.mu:
            self.protocols.add(protocol.spec.researcher)
            for key, acct, micros in credits:
                assert isinstance(micros, int)
                self.calls[f"{job.metadata.uid}/{key}"] = self.calls.get(f"{job.metadata.uid}/{key}", 0) + 1
                self.rows.setdefault((f"{job.metadata.uid}/{key}", acct), micros)


def eventually(check, timeout=30.0, interval=0.05):
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def protocol(name="mc", quota=None) -> Protocol:
    spec = {"title": "t", "owner": "boidteam", "researcher": "researcher1", "datadir": DATADIR,
            "fund": {"account": "boidfund", "quantity": "1000.0000 BOID"},
            "payRates": {"worker": "1.0000 BOID", "dispatcher": "0.5000 BOID"}}
    if quota:
        spec["quota"] = {"maxParallelism": quota}
    return Protocol.model_validate({"metadata": {"name": name}, "spec": spec})


def job(name, command, work_units, **spec) -> Job:
    return Job.model_validate({"metadata": ObjectMeta(name=name).model_dump(), "spec": {
        "protocol": spec.pop("protocol", "mc"), "image": "python:3.11-slim", "command": command,
        "workUnits": work_units, **spec}})


class Cluster:
    """One 'operator process': a store, a backend, a dispatcher and the Operator."""

    def __init__(self, zk_hosts: str, root: Path, slots, ledger) -> None:
        self.store = Store(zk_hosts, timeout=5.0, session_timeout=4.0)
        self.backend = LocalBackend(root, slots, kill_grace=0.2)
        self.world = World(store=self.store, storage=Storage(f"file://{root}"), backend=self.backend,
                           dispatcher=Dispatcher(self.backend, retry_backoff=0.05, poll=0.05, kill_grace=1.0),
                           ledger=ledger)
        self.op = Operator(self.store, self.world, registry, workers=2).start()

    def stop(self) -> None:
        self.op.stop()
        self.backend.close()   # the subprocesses die with the operator process
        self.store.close()


@pytest.fixture
def env(zk_hosts, store, tmp_path):
    root = tmp_path / "storage"
    root.mkdir()
    clusters: list[Cluster] = []
    ledger = CountingLedger()

    class Env:
        def __init__(self):
            self.root, self.ledger, self.store = root, ledger, store

        def start(self, slots=("alice", "bob")) -> Cluster:
            c = Cluster(zk_hosts, root, list(slots), ledger)
            clusters.append(c)
            return c

        def wait(self, name, phase="Succeeded", timeout=30.0) -> Job:
            def done():
                j = store.get(Job, name)
                if j.status and j.status.phase in ("Succeeded", "Failed"):
                    return j
            j = eventually(done, timeout)
            assert j.status.phase == phase, j.status
            return j

        def records(self, name) -> JobRecords:
            return JobRecords.load(store, store.get(Job, name).metadata.uid)

    store.create(protocol())
    yield Env()
    for c in clusters:
        try:
            c.stop()
        except Exception:
            pass


PI = ["python3", "-c", (
    "import json,os,random\n"
    "p=json.loads(os.environ['BOID_UNIT_PARAMS']); rng=random.Random(p['seed']*1000+p['n'])\n"
    "hits=sum(1 for _ in range(p['n']) if rng.random()**2+rng.random()**2<=1)\n"
    "open(os.path.join(os.environ['BOID_OUTPUT_DIR'],'result.jsonl'),'w').write("
    "json.dumps({'seed':p['seed'],'n':p['n'],'hits':hits},sort_keys=True)+'\\n')\n")]


def test_sweep_job_replicated_runs_to_a_correct_amalgamated_output(env):
    c = env.start(["alice", "bob", "alice", "bob"])
    env.store.create(job("pi", PI, {"sweep": {"seed": {"range": {"start": 1, "stop": 4}}, "n": [100, 200]}},
                         replication={"replicas": 2, "quorum": 2}, output={"path": "results/pi", "reduce": "jsonl"}))
    j = env.wait("pi")
    st = j.status
    assert st.units.total == 6 and st.units.validated == 6 and st.units.pending == 0 and st.progress == "6/6 (100%)"
    assert st.output == f"{DATADIR}/results/pi" and st.start_time and st.completion_time
    lines = [json.loads(x) for x in (env.root / DATADIR / "results/pi/results.jsonl").read_text().splitlines()]
    assert [(x["seed"], x["n"]) for x in lines] == [(1, 100), (2, 100), (3, 100), (1, 200), (2, 200), (3, 200)]
    import random
    for x in lines:  # the same computation, here: the output is each unit's true result
        rng = random.Random(x["seed"] * 1000 + x["n"])
        assert x["hits"] == sum(1 for _ in range(x["n"]) if rng.random() ** 2 + rng.random() ** 2 <= 1)
    manifest = json.loads((env.root / DATADIR / "results/pi/manifest.json").read_text())
    assert [u["index"] for u in manifest["units"]] == list(range(6))
    for u in manifest["units"]:
        assert sorted(c["contributor"] for c in u["credited"]) == ["alice", "bob"] and len(u["hash"]) == 64
    assert {a.account for a in st.contributors} == {"alice", "bob"}
    assert all(a.microseconds > 0 for a in st.contributors) and len(st.slowest_units) == 5
    # the ledger got every credited replica exactly once
    assert len(env.ledger.rows) == 12 and set(env.ledger.calls.values()) == {2}
    assert env.records("pi").recorded == set(env.records("pi").accepted)
    assert not any(c.backend._busy)


def test_lost_worker_unit_still_completes_exactly_once(env, tmp_path):
    c = env.start()
    gate = tmp_path / "gate"
    env.store.create(job("lost", ["sh", "-c", f'while [ ! -e {gate} ]; do sleep 0.02; done; '
                                  'echo "$BOID_UNIT_INDEX" > "$BOID_OUTPUT_DIR/out"'],
                         {"count": 3}, retries=0, output={"reduce": "concat"}))
    eventually(lambda: any(c.backend._busy[i] for i in range(2) if c.backend.slots[i].contributor == "alice"))
    lost = c.backend.lose_contributor("alice")
    assert lost
    gate.touch()
    j = env.wait("lost")
    assert j.status.units.validated == 3 and j.status.units.failed == 0
    recs = env.records("lost")
    states = sorted(r["state"] for r in recs.results.values())
    assert states.count("LOST") == len(lost) and states.count("FINISHED") == 3
    assert (env.root / DATADIR / "jobs/lost/results").read_text() == "0\n1\n2\n"
    assert sorted(env.ledger.calls.values()) == [1, 1, 1]


def test_unit_that_always_fails_fails_the_job_and_is_named(env):
    env.start()
    env.store.create(job("bad", ["sh", "-c", '[ "$BOID_UNIT_INDEX" != 1 ] || { echo nope >&2; exit 7; }'],
                         {"count": 3}, retries=1))
    j = env.wait("bad", "Failed")
    uid1 = "u000001"
    assert j.status.failed_units == [uid1] and j.status.units.failed == 1
    failed = j.status.condition("Failed")
    assert failed.status == "True" and failed.reason == "UnitFailed" and uid1 in failed.message
    assert "nope" in failed.message
    fails = [r for r in env.records("bad").results.values() if r["unit"] == uid1]
    assert len(fails) == 2 and all(r["exit_code"] == 7 for r in fails)


def test_cheating_contributor_is_outvoted_and_not_credited(env):
    c = env.start([Slot("alice"), Slot("bob"), Slot("mallory", corrupt_output=True)])
    env.store.create(job("vote", ["sh", "-c", 'sleep 0.2; echo "unit $BOID_UNIT_INDEX" > "$BOID_OUTPUT_DIR/r.txt"'],
                         {"count": 2}, replication={"replicas": 2, "quorum": 2}, output={"reduce": "concat"}))
    j = env.wait("vote")
    assert (env.root / DATADIR / "jobs/vote/results").read_text() == "unit 0\nunit 1\n"
    assert j.status.disagreements and {d.contributor for d in j.status.disagreements} == {"mallory"}
    assert "mallory" not in {a.account for a in j.status.contributors}
    assert not any(acct == "mallory" for _, acct in env.ledger.rows)
    recs = env.records("vote")
    assert any(a["rejected"] for a in recs.accepted.values())
    for a in recs.accepted.values():
        assert sorted(x["contributor"] for x in a["credited"]) == ["alice", "bob"]


def test_operator_killed_mid_job_completes_and_records_each_unit_once(env):
    first = env.start()
    env.store.create(job("restart", ["sh", "-c", 'sleep 0.3; echo "$BOID_UNIT_INDEX" > "$BOID_OUTPUT_DIR/o"'],
                         {"count": 8}, output={"reduce": "concat"}))
    eventually(lambda: len(env.records("restart").accepted) >= 2)
    first.stop()  # mid-job: attempts in flight die with it
    before = env.records("restart")
    assert before.in_flight() and len(before.accepted) < 8
    env.start()   # a new process: new store session, new backend, new dispatcher
    j = env.wait("restart")
    assert j.status.units.validated == 8
    assert (env.root / DATADIR / "jobs/restart/results").read_text() == "".join(f"{i}\n" for i in range(8))
    recs = env.records("restart")
    assert [r["state"] for r in recs.results.values()].count("LOST") >= len(before.in_flight())
    assert sorted(env.ledger.calls.values()) == [1] * 8 and recs.recorded == set(recs.accepted)


def test_deadline_fails_the_job_naming_the_units_left_and_frees_slots(env):
    c = env.start()
    env.store.create(job("slow", ["sleep", "30"], {"count": 3}, deadline="1s"))
    j = env.wait("slow", "Failed", timeout=15)
    cond = j.status.condition("Failed")
    assert cond.reason == "DeadlineExceeded" and "u000000" in cond.message
    assert j.status.failed_units == ["u000000", "u000001", "u000002"]
    eventually(lambda: not any(c.backend._busy), timeout=5)


def test_unit_timeout_kills_and_retries(env, tmp_path):
    env.start()
    marker = tmp_path / "first-attempt"
    env.store.create(job("hang", ["sh", "-c", f'if [ ! -e {marker} ]; then touch {marker}; sleep 30; fi; '
                                  'echo done > "$BOID_OUTPUT_DIR/o"'],
                         {"count": 1}, unitTimeout="1s", retries=1))
    env.wait("hang", timeout=20)
    results = sorted(env.records("hang").results.values(), key=lambda r: r["finished_us"])
    assert [r["state"] for r in results] == ["FAILED", "FINISHED"] and "timed out" in results[0]["message"]


def test_inputs_job_with_a_command_reducer(env):
    env.start()
    for i, text in enumerate(["a", "b", "c", "d", "e"]):
        (env.root / DATADIR / "in").mkdir(parents=True, exist_ok=True)
        (env.root / DATADIR / "in" / f"f{i}.txt").write_text(text)
    (env.root / DATADIR / "in" / "skip.csv").write_text("x")
    unit = ("import json,os;fs=json.loads(os.environ['BOID_INPUT_FILES']);"
            "open(os.path.join(os.environ['BOID_OUTPUT_DIR'],'o'),'w').write(''.join(open(f).read() for f in fs).upper())")
    reducer = ("import os,sys;open(os.path.join(os.environ['BOID_OUTPUT_DIR'],'all.txt'),'w')"
               ".write('|'.join(open(os.path.join(d,'o')).read() for d in sys.argv[1:]))")
    env.store.create(job("files", [PY, "-c", unit], {"inputs": {"path": "in", "pattern": "*.txt", "perUnit": 2}},
                         output={"path": "out", "reduce": "command", "command": [PY, "-c", reducer]}))
    env.wait("files")
    assert (env.root / DATADIR / "out/all.txt").read_text() == "AB|CD|E"
    manifest = json.loads((env.root / DATADIR / "out/manifest.json").read_text())
    assert [u["inputs"] for u in manifest["units"]] == [
        [f"{DATADIR}/in/f0.txt", f"{DATADIR}/in/f1.txt"], [f"{DATADIR}/in/f2.txt", f"{DATADIR}/in/f3.txt"],
        [f"{DATADIR}/in/f4.txt"]]


def test_protocols_share_slots_fairly_and_quota_holds(env):
    c = env.start(["alice", "bob", "carol", "dave"])
    env.store.create(protocol("other"))
    env.store.create(protocol("capped", quota=1))
    env.store.create(job("big", ["sleep", "0.4"], {"count": 12}, output={"reduce": "none"}))
    peak = {"mc": 0, "other": 0, "capped": 0}
    env.store.create(job("small", ["sleep", "0.4"], {"count": 4}, protocol="other", output={"reduce": "none"}))
    env.store.create(job("one", ["sleep", "0.4"], {"count": 3}, protocol="capped", output={"reduce": "none"}))
    both = False
    end = time.monotonic() + 30
    while time.monotonic() < end:
        busy = [t for t in list(c.backend._busy) if t]
        n = {p: sum(1 for t in busy if t.startswith(j)) for p, j in (("mc", "big-"), ("other", "small-"), ("capped", "one-"))}
        for p in peak:
            peak[p] = max(peak[p], n[p])
        both = both or (n["mc"] and n["other"])
        if all(env.store.get(Job, x).status and env.store.get(Job, x).status.phase == "Succeeded"
               for x in ("big", "small", "one")):
            break
        time.sleep(0.02)
    else:
        raise AssertionError("jobs did not finish")
    assert both and peak["capped"] == 1 and peak["other"] >= 1
