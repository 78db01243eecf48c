"""Store throughput and watch latency against a real local ZooKeeper.

Why: the Store adds JSON, pydantic validation, a second read (the status znode) per get and a
transaction per create on top of kazoo. This prints what that costs next to raw kazoo doing
the same znode operations in the same run, for each operation (create, get, get+update, status
update), the two alternating in fifty slices (so machine noise affects both alike), and how long
a write takes to come back as a watch event (what bounds the engine's reaction time).
What each side does is printed under the table: the raw side writes the same bytes to the same
znodes, with the same conditions (transaction, version), and neither encodes nor validates.

    .venv/bin/python bench/store.py [-n 500] [--events 300] [--no-fsync]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from kazoo.client import KazooClient  # noqa: E402

from boidcluster.adapters.local.zookeeper import LocalZooKeeper  # noqa: E402
from boidcluster.adapters.store import ANY_VERSION, Store  # noqa: E402
from boidcluster.model.meta import ObjectMeta, Resource, Status, Strict  # noqa: E402


class BenchSpec(Strict):
    image: str = "ghcr.io/boid/monte-carlo:1.4"
    command: list[str] = ["python", "-m", "pi", "--samples", "1000000"]
    parallelism: int = 8
    retries: int = 3


class BenchStatus(Status):
    phase: str = ""
    seq: int = 0


class BenchJob(Resource):
    KIND = "BenchJob"
    PLURAL = "benchjobs"
    kind: str = "BenchJob"
    spec: BenchSpec
    status: BenchStatus | None = None


def obj(i: int, parallelism: int = 8) -> BenchJob:
    return BenchJob(metadata=ObjectMeta(name=f"job-{i:05d}", labels={"app": "pi"}),
                    spec=BenchSpec(parallelism=parallelism))


ROUNDS = 50  # slices of 10 calls at -n 500: a burst of load on this shared machine hits both sides


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


class Meter:
    """Wall time and this process's CPU time (every thread: kazoo's connection threads too)."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    @staticmethod
    def now() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def add(self, since: tuple[float, float]) -> None:
        self.wall += time.perf_counter() - since[0]
        self.cpu += time.process_time() - since[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=500, help="objects to create and update")
    ap.add_argument("--events", type=int, default=300, help="status writes timed through a watch")
    ap.add_argument("--no-fsync", action="store_true", help="ZooKeeper forceSync=no")
    args = ap.parse_args()
    n = args.n

    with LocalZooKeeper(fsync=not args.no_fsync, die_with_parent=True) as zk:
        store = Store(zk.hosts, kinds=[BenchJob], timeout=10)
        raw = KazooClient(hosts=zk.hosts)
        raw.start(timeout=10)
        raw.ensure_path("/raw/benchjobs")
        payload = [json.dumps(obj(i).to_dict(with_status=False)).encode() for i in range(n)]
        warm = [obj(90000 + i) for i in range(20)]
        for o in warm:  # JIT, caches, connections
            store.create(o)
            raw.create(f"/raw/w{o.name}", b"x")

        # Store and raw kazoo alternate in ROUNDS slices, so a busy machine slows both alike.
        store_create, raw_create, store_update, raw_update = Meter(), Meter(), Meter(), Meter()
        store_get, raw_get, store_status, raw_status = Meter(), Meter(), Meter(), Meter()
        new_payload = [json.dumps(obj(i, 16).to_dict(with_status=False)).encode() for i in range(n)]
        slices = [range(k * n // ROUNDS, (k + 1) * n // ROUNDS) for k in range(ROUNDS)]

        # -- creates: Store.create vs a raw transaction creating the same two znodes --------
        for part in slices:
            t = Meter.now()
            for i in part:
                store.create(obj(i))
            store_create.add(t)
            t = Meter.now()
            for i in part:
                txn = raw.transaction()
                txn.create(f"/raw/benchjobs/job-{i:05d}", payload[i])
                txn.create(f"/raw/benchjobs/job-{i:05d}/status", b"null")
                txn.commit()
            raw_create.add(t)

        # -- get: object + status znodes, decoded and validated vs raw reads of both ---------
        for part in slices:
            t = Meter.now()
            for i in part:
                store.get(BenchJob, f"job-{i:05d}")
            store_get.add(t)
            t = Meter.now()
            for i in part:
                path = f"/raw/benchjobs/job-{i:05d}"
                raw.get(path)
                raw.get(f"{path}/status")
            raw_get.add(t)

        # -- read-modify-write: get + CAS update (spec change) vs raw get + set(version) -----
        for part in slices:
            t = Meter.now()
            for i in part:
                o = store.get(BenchJob, f"job-{i:05d}")
                o.spec.parallelism = 16
                store.update(o)
            store_update.add(t)
            t = Meter.now()
            for i in part:
                path = f"/raw/benchjobs/job-{i:05d}"
                _, stat = raw.get(path)
                raw.set(path, new_payload[i], version=stat.version)
            raw_update.add(t)

        # -- status write on an object as read: CAS on its status version vs raw set(version) --
        held = {i: store.get(BenchJob, f"job-{i:05d}") for i in range(n)}
        status_payload = json.dumps({"phase": "Running", "seq": 1}).encode()
        for part in slices:
            t = Meter.now()
            for i in part:
                o = held[i]
                o.status = BenchStatus(phase="Running", seq=1)
                store.update_status(o)
            store_status.add(t)
            t = Meter.now()
            for i in part:
                raw.set(f"/raw/benchjobs/job-{i:05d}/status", status_payload, version=0)
            raw_status.add(t)

        # -- watch latency: status write -> WatchEvent ----------------------------------------
        w = store.watch(BenchJob, send_initial=False)
        from_start, from_ack = [], []
        for seq in range(1, args.events + 1):
            name = f"job-{seq % n:05d}"
            t0 = time.perf_counter()
            store.update_status(BenchJob, name, {"phase": "Running", "seq": seq}, expected_version=ANY_VERSION)
            t1 = time.perf_counter()
            while True:
                ev = w.get(timeout=10)
                if ev is None:
                    raise SystemExit("watch event lost")
                if ev.name == name and ev.obj.status is not None and ev.obj.status.seq == seq:
                    break
            t2 = time.perf_counter()
            from_start.append((t2 - t0) * 1000)
            from_ack.append((t2 - t1) * 1000)
        w.stop()
        raw.stop()
        raw.close()
        store.close()

    def pct(xs: list[float], p: float) -> float:
        return statistics.quantiles(xs, n=100, method="inclusive")[int(p) - 1] if len(xs) > 1 else xs[0]

    fsync = "off" if args.no_fsync else "on"
    print(f"ZooKeeper 3.8 standalone on loopback, fsync {fsync}, {n} objects, sequential calls")
    print(f"{'':20}{'Store':>8}{'raw kazoo':>11}{'Store/raw':>11}   CPU per call (us): {'Store':>6}{'raw':>6}")
    for label, s, r in (("create/s", store_create, raw_create),
                        ("get/s", store_get, raw_get),
                        ("get+update/s", store_update, raw_update),
                        ("status update/s", store_status, raw_status)):
        print(f"{label:20}{rate(n, s.wall):8.0f}{rate(n, r.wall):11.0f}{rate(n, s.wall) / rate(n, r.wall):11.2f}"
              f"{'':22}{s.cpu / n * 1e6:6.0f}{r.cpu / n * 1e6:6.0f}")
    print("  create: Store.create (validate, uid/timestamps, JSON) vs a raw transaction creating the same 2 znodes")
    print("  get: Store.get (both znodes at once, JSON, pydantic) vs raw get of the object then its status znode")
    print("  get+update: Store.get + Store.update (spec change, CAS on the version read) vs raw get + set(version)")
    print("  status update: Store.update_status (validate, JSON, CAS on the status version read) vs raw set(version)")
    print("  raw kazoo: a KazooClient as kazoo 2.11 makes it; CPU: this process's, all threads, in the same slices")
    print(f"watch latency, status write start -> event: p50 {pct(from_start, 50):.2f} ms, "
          f"p99 {pct(from_start, 99):.2f} ms ({len(from_start)} writes)")
    print(f"watch latency, write acknowledged -> event: p50 {pct(from_ack, 50):.2f} ms, "
          f"p99 {pct(from_ack, 99):.2f} ms")


if __name__ == "__main__":
    main()
