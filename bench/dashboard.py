"""How long a job's progress takes to reach a browser through the dashboard, next to a bare store watch.

Why: the page is live by server-sent events driven by the store's watch. This writes a job's
status (a real local ZooKeeper), and times until (baseline) a Store.watch sees the write and
(dashboard) an event-stream client of a running dashboard receives a snapshot showing it: the
difference is what the read model, the JSON snapshot and the HTTP stream add. `--jobs` other
jobs are stored too, so the snapshot has the size of a busy cluster.

    .venv/bin/python bench/dashboard.py [-n 100] [--jobs 200] [--gap 0.3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

import httpx  # noqa: E402

from boidcluster.adapters.local.zookeeper import LocalZooKeeper  # noqa: E402
from boidcluster.adapters.store import ANY_VERSION, Store  # noqa: E402
from boidcluster.dashboard.server import Dashboard  # noqa: E402
from boidcluster.model.resources import Job  # noqa: E402


def job(name: str) -> Job:
    return Job.model_validate({
        "apiVersion": "cluster.boid.com/v1alpha1", "kind": "Job", "metadata": {"name": name},
        "spec": {"protocol": "bench", "image": "local", "command": ["true"], "workUnits": {"count": 100000}}})


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=100, help="status writes to time")
    ap.add_argument("--jobs", type=int, default=200, help="other jobs in the store")
    ap.add_argument("--gap", type=float, default=0.3,
                    help="seconds between writes (the dashboard coalesces changes closer than 0.25 s)")
    args = ap.parse_args()
    with LocalZooKeeper(die_with_parent=True) as zk:
        store = Store(zk.hosts, timeout=10)
        objs = [job(f"other-{i:04d}") for i in range(args.jobs)] + [job("bench")]
        for k in range(0, len(objs), 200):  # one transaction must stay under ZooKeeper's 1 MB
            store.apply(objs[k:k + 200])
        dash = Dashboard(zk.hosts, port=0, refresh=60.0).start()
        seen_sse: dict[int, float] = {}
        cond = threading.Condition()
        snapshot_bytes = [0]

        def read_stream() -> None:
            with httpx.Client(timeout=None) as c, c.stream("GET", dash.url + "api/events") as r:
                for line in r.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    at = time.perf_counter()
                    snap = json.loads(line[6:])
                    snapshot_bytes[0] = len(line)
                    b = next((j for j in snap["jobs"] if j["name"] == "bench"), None)
                    if b is not None:
                        with cond:
                            seen_sse.setdefault(b["validated"], at)
                            cond.notify_all()

        threading.Thread(target=read_stream, daemon=True).start()
        watch = store.watch(Job, send_initial=False)
        # wait until the dashboard has listed every job
        deadline = time.monotonic() + 30
        while not seen_sse and time.monotonic() < deadline:
            time.sleep(0.05)
        base, sse = [], []
        for i in range(1, args.n + 1):
            time.sleep(args.gap)
            t0 = time.perf_counter()
            store.update_status(Job, "bench", {"phase": "Running", "units": {"total": 100000, "validated": i}},
                                expected_version=ANY_VERSION)
            while True:
                ev = watch.get(timeout=10)
                if ev is None:
                    raise SystemExit("the store watch delivered nothing within 10 s")
                if ev.name == "bench" and ev.obj.status and ev.obj.status.units.validated == i:
                    base.append(time.perf_counter() - t0)
                    break
            with cond:
                if not cond.wait_for(lambda: i in seen_sse, timeout=10):
                    raise SystemExit(f"the dashboard's event stream did not show write {i} within 10 s")
                sse.append(seen_sse[i] - t0)
        watch.stop()
        dash.stop()
        store.close()
    ms = lambda x: f"{x * 1000:.1f} ms"  # noqa: E731
    print(f"{args.n} status writes of one job, {args.jobs + 1} jobs stored (snapshot {snapshot_bytes[0] / 1024:.0f} KiB)")
    print(f"store watch (baseline): p50 {ms(statistics.median(base))}, p99 {ms(pct(base, 0.99))}")
    print(f"dashboard event stream: p50 {ms(statistics.median(sse))}, p99 {ms(pct(sse, 0.99))}")
    print(f"ratio (dashboard / watch): p50 {statistics.median(sse) / statistics.median(base):.1f}x, "
          f"p99 {pct(sse, 0.99) / pct(base, 0.99):.1f}x")


if __name__ == "__main__":
    main()
