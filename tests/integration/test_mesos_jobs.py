"""A small Job through the engine, the jobs Dispatcher and the `mesos` backend, against the Mesos
master TEST DOUBLE. The double's `executor` hook plays the agents' command executor: it runs the
TaskInfo's command as a subprocess with the TaskInfo's environment, storage paths mapped under
the test's storage root (as an agent with the storage mounted would see them).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from boidcluster.adapters.mesos import MesosBackend
from boidcluster.adapters.storage import Storage
from boidcluster.adapters.store import Store
from boidcluster.engine.operator import Operator
from boidcluster.engine.world import World
from boidcluster.model.resources import Job
from boidcluster.reconcilers import registry
from boidcluster.reconcilers.jobs import Dispatcher
from doubles.mesos_master import MesosMasterDouble

from boidcluster.model.meta import ObjectMeta
from boidcluster.model.resources import Protocol

PI = ["python3", "-c", (   # the Monte Carlo unit of tests/integration/test_jobs.py
    "import json,os,random\n"
    "p=json.loads(os.environ['BOID_UNIT_PARAMS']); rng=random.Random(p['seed']*1000+p['n'])\n"
    "hits=sum(1 for _ in range(p['n']) if rng.random()**2+rng.random()**2<=1)\n"
    "open(os.path.join(os.environ['BOID_OUTPUT_DIR'],'result.jsonl'),'w').write("
    "json.dumps({'seed':p['seed'],'n':p['n'],'hits':hits},sort_keys=True)+'\\n')\n")]


def protocol() -> Protocol:
    return Protocol.model_validate({"metadata": {"name": "mc"}, "spec": {
        "title": "t", "owner": "boidteam", "researcher": "researcher1", "datadir": "protocols/mc",
        "fund": {"account": "boidfund", "quantity": "1000.0000 BOID"},
        "payRates": {"worker": "1.0000 BOID", "dispatcher": "0.5000 BOID"}}})


def job(name: str, command: list[str], work_units: dict, **spec: object) -> Job:
    return Job.model_validate({"metadata": ObjectMeta(name=name).model_dump(), "spec": {
        "protocol": "mc", "image": "python:3.11-slim", "command": command, "workUnits": work_units, **spec}})


def _executor(root: Path):
    def run(info: dict, agent) -> tuple[str, str]:
        env = {v["name"]: v.get("value", "") for v in info["command"].get("environment", {}).get("variables", [])}
        out = root / env["BOID_OUTPUT_DIR"].lstrip("/")
        out.mkdir(parents=True, exist_ok=True)
        env["BOID_OUTPUT_DIR"] = str(out)
        inputs = json.loads(env.get("BOID_INPUT_FILES") or "[]")
        env["BOID_INPUT_FILES"] = json.dumps([str(root / p.lstrip("/")) for p in inputs])
        proc = subprocess.run(info["command"]["arguments"], env={**os.environ, **env}, capture_output=True,
                              timeout=30)
        if proc.returncode == 0:
            return "TASK_FINISHED", ""
        return "TASK_FAILED", f"Command exited with status {proc.returncode}"
    return run


@pytest.mark.slow
def test_sweep_job_through_the_dispatcher_on_mesos(zk_hosts: str, store: Store, tmp_path: Path) -> None:
    root = tmp_path / "storage"
    root.mkdir()
    master = MesosMasterDouble(heartbeat_interval=0.5, executor=_executor(root), update_retry_seconds=1.0)
    for name in ("alice", "bob", "carol"):
        master.cluster.add_agent(name, cpus=4, mem=4096)
    backend = MesosBackend(master.url, roles=["mc"], refuse_seconds=0.2)
    s2 = Store(zk_hosts, timeout=5.0, session_timeout=4.0)
    world = World(store=s2, storage=Storage(f"file://{root}"), backend=backend,
                  dispatcher=Dispatcher(backend, retry_backoff=0.05, poll=0.05, kill_grace=1.0))
    op = Operator(s2, world, registry, workers=2).start()
    try:
        store.create(protocol())
        store.create(job("pi", PI, {"sweep": {"seed": [1, 2, 3], "n": [1000]}},
                         replication={"replicas": 2, "quorum": 2}, output={"path": "results/pi", "reduce": "jsonl"}))
        deadline = time.monotonic() + 40
        while True:
            j = store.get(Job, "pi")
            if j.status and j.status.phase in ("Succeeded", "Failed"):
                break
            assert time.monotonic() < deadline, j.status
            time.sleep(0.1)
        assert j.status.phase == "Succeeded", j.status
        assert j.status.output == "protocols/mc/results/pi"
        lines = (root / "protocols/mc/results/pi/results.jsonl").read_text().splitlines()
        assert sorted(json.loads(x)["seed"] for x in lines) == [1, 2, 3]
        manifest = json.loads((root / "protocols/mc/results/pi/manifest.json").read_text())
        for u in manifest["units"]:   # replicas ran on distinct agents, credited to their boid_account
            credited = [c["contributor"] for c in u["credited"]]
            assert len(credited) == 2 and len(set(credited)) == 2 and set(credited) <= {"alice", "bob", "carol"}
        launched = [i for c in master.cluster.calls_of("ACCEPT") for op_ in c["accept"]["operations"]
                    for i in op_["launch"]["task_infos"]]
        assert len(launched) >= 6
        assert master.validation_errors == [] and master.cluster.event_errors == []
    finally:
        op.stop()
        backend.close()
        s2.close()
        master.stop()
