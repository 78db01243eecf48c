"""Bench: offers handled and tasks launched per second by the `mesos` backend against the Mesos
master TEST DOUBLE (tests/doubles/mesos_master.py), which completes tasks at once.

It measures the framework's own cost (RecordIO decoding, offer matching, one ACCEPT per offer,
one ACKNOWLEDGE per update, all over loopback HTTP), not a real cluster's: a real master adds
its allocation interval (1 s by default) and agents add launch latency.

    .venv/bin/python bench/mesos.py [--agents 20] [--tasks 2000]

Runs twice, the attribute mode (the baseline) then authenticated workers (agents reserved for
their contributor roles, one subscribed role per contributor), and prints the ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from boidcluster.adapters.backend import TaskResources, TaskSpec  # noqa: E402
from boidcluster.adapters.mesos import MesosBackend, agent_acls, agent_credentials, contributor_role  # noqa: E402
from doubles.mesos_master import MesosMasterDouble  # noqa: E402


def run(args: argparse.Namespace, authenticated: bool) -> dict:
    """One run; `authenticated`: agents authenticate and reserve for their contributor role and the
    backend credits reservations (subscribed to every contributor role), else the attribute mode."""
    master = MesosMasterDouble(heartbeat_interval=1.0, task_seconds=0.0, allocation_interval=0.005)
    accounts = [f"contrib{i:02d}" for i in range(args.agents)]
    if authenticated:
        creds = {c["principal"]: c["secret"] for c in agent_credentials(accounts)["credentials"]}
        master.cluster.configure_agent_auth(creds, agent_acls(accounts))
    for a in accounts:
        if authenticated:
            master.cluster.add_agent(None, cpus=args.cpus_per_agent, mem=65536, principal=a, secret=creds[a],
                                     reserve_for=contributor_role(a))
        else:
            master.cluster.add_agent(a, cpus=args.cpus_per_agent, mem=65536)
    backend = MesosBackend(master.url, roles=["bench"], refuse_seconds=0.01,
                           contributors=accounts if authenticated else None)
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
        return {"launch": args.tasks / launch_elapsed, "launch_s": launch_elapsed, "complete": args.tasks / elapsed,
                "elapsed": elapsed, "offers": backend.offers_seen, "calls": calls,
                "errors": len(master.validation_errors)}
    finally:
        backend.close()
        master.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=20)
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--cpus-per-agent", type=float, default=8)
    args = ap.parse_args()
    print(f"agents={args.agents} tasks={args.tasks} (0.5 cpu each, {args.cpus_per_agent:g} cpus per agent)")
    results = {}
    for mode in ("attribute", "authenticated"):
        r = results[mode] = run(args, authenticated=mode == "authenticated")
        print(f"[{mode}] all launched in {r['launch_s']:.2f} s: {r['launch']:,.0f} tasks launched/s")
        print(f"[{mode}] all finished in {r['elapsed']:.2f} s: {r['complete']:,.0f} tasks completed/s "
              f"(STAGING, RUNNING, FINISHED reported; 3 acknowledgements each)")
        print(f"[{mode}] offers handled: {r['offers']} in {r['elapsed']:.2f} s = {r['offers'] / r['elapsed']:,.0f} offers/s")
        print(f"[{mode}] calls:", ", ".join(f"{k}={v}" for k, v in sorted(r["calls"].items())))
        print(f"[{mode}] validation errors in the double:", r["errors"])
    a, b = results["attribute"], results["authenticated"]
    print(f"authenticated workers vs the attribute baseline (same run): launch rate x{b['launch'] / a['launch']:.2f}, "
          f"completion rate x{b['complete'] / a['complete']:.2f}")


if __name__ == "__main__":
    main()
