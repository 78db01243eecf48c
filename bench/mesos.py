"""Bench: offers handled and tasks launched per second by the `mesos` backend against the Mesos
master TEST DOUBLE (tests/doubles/mesos_master.py), which completes tasks at once.

It measures the framework's own cost (RecordIO decoding, offer matching, one ACCEPT per offer,
one ACKNOWLEDGE per update, all over loopback HTTP), not a real cluster's: a real master adds
its allocation interval (1 s by default) and agents add launch latency.

    .venv/bin/python bench/mesos.py [--agents 20] [--tasks 2000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from boidcluster.adapters.backend import TaskResources, TaskSpec  # noqa: E402
from boidcluster.adapters.mesos import MesosBackend  # noqa: E402
from doubles.mesos_master import MesosMasterDouble  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=20)
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--cpus-per-agent", type=float, default=8)
    args = ap.parse_args()

    master = MesosMasterDouble(heartbeat_interval=1.0, task_seconds=0.0, allocation_interval=0.005)
    for i in range(args.agents):
        master.cluster.add_agent(f"contrib{i:02d}", cpus=args.cpus_per_agent, mem=65536)
    backend = MesosBackend(master.url, roles=["bench"], refuse_seconds=0.01)
    try:
        while backend.subscriptions == 0:
            time.sleep(0.01)
        t0 = time.perf_counter()
        for i in range(args.tasks):
            backend.submit(TaskSpec(task_id=f"t{i}", job="bench", unit=str(i), command=["true"], env={},
                                    output_dir="/out", role="bench", resources=TaskResources(cpus=0.5, mem=32)))
        finished = launched_at = 0
        while finished < args.tasks:
            for u in backend.updates(timeout=1.0):
                if u.state == "FINISHED":
                    finished += 1
            if backend.tasks_launched >= args.tasks and not launched_at:
                launched_at = time.perf_counter()
            if time.perf_counter() - t0 > 300:
                raise SystemExit(f"stuck: {finished} finished, {backend.tasks_launched} launched")
        elapsed = time.perf_counter() - t0
        launch_elapsed = (launched_at or time.perf_counter()) - t0
        calls: dict[str, int] = {}
        for c in master.cluster.calls:
            calls[c["type"]] = calls.get(c["type"], 0) + 1
        print(f"agents={args.agents} tasks={args.tasks} (0.5 cpu each, {args.cpus_per_agent:g} cpus per agent)")
        print(f"all launched in {launch_elapsed:.2f} s: {args.tasks / launch_elapsed:,.0f} tasks launched/s")
        print(f"all finished in {elapsed:.2f} s: {args.tasks / elapsed:,.0f} tasks completed/s "
              f"(STAGING, RUNNING, FINISHED reported; 3 acknowledgements each)")
        print(f"offers handled: {backend.offers_seen} in {elapsed:.2f} s = {backend.offers_seen / elapsed:,.0f} offers/s")
        print("calls:", ", ".join(f"{k}={v}" for k, v in sorted(calls.items())))
        print("validation errors in the double:", len(master.validation_errors))
    finally:
        backend.close()
        master.stop()


if __name__ == "__main__":
    main()
