"""What identities cost: store writes and the operator's owner check on a secured cluster,
as ratios against the same operations on an open cluster, measured in the same run on one
real local ZooKeeper.

Prints figures; not a timed test. Usage: .venv/bin/python bench/tenancy.py [--objects N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from kazoo.client import KazooClient  # noqa: E402

from boidcluster.adapters.auth import Credentials, secure_hosts  # noqa: E402
from boidcluster.adapters.local.zookeeper import LocalZooKeeper  # noqa: E402
from boidcluster.adapters.store import Store, kind_dir  # noqa: E402
from boidcluster.model.kinds import KINDS  # noqa: E402
from boidcluster.model.resources import Contributor  # noqa: E402


def chroot(hosts: str) -> str:
    c = KazooClient(hosts=hosts)
    c.start(timeout=10)
    path = f"/bench-{uuid.uuid4().hex[:8]}"
    c.ensure_path(path)
    c.stop()
    c.close()
    return hosts + path


def contributor(name: str) -> Contributor:
    return Contributor.model_validate({"apiVersion": "cluster.boid.com/v1alpha1", "kind": "Contributor",
                                       "metadata": {"name": name},
                                       "spec": {"account": "alice", "role": "worker", "researchers": ["r1"]}})


def timed(fn, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - start) / n


def run(n: int, rounds: int) -> None:
    with LocalZooKeeper(fsync=False) as zk:
        open_hosts, sec_hosts = chroot(zk.hosts), chroot(zk.hosts)
        admin, alice = Credentials.generate("admin"), Credentials.generate("alice")
        secure_hosts(sec_hosts, admin, [kind_dir(k) for k in KINDS.values()], [alice.digest_id])
        anon = Store(open_hosts)
        user = Store(sec_hosts, credentials=alice)
        op = Store(sec_hosts, credentials=admin)
        figures: dict[str, list[float]] = {k: [] for k in ("create-open", "create-secured", "owner-check",
                                                           "get-open")}
        for r in range(rounds):
            figures["create-open"].append(timed(lambda i: anon.create(contributor(f"c{r}-{i}")), n))
            figures["create-secured"].append(timed(lambda i: user.create(contributor(f"c{r}-{i}")), n))
            figures["owner-check"].append(timed(lambda i: op.owner(Contributor, f"c{r}-{i}"), n))
            figures["get-open"].append(timed(lambda i: anon.get(Contributor, f"c{r}-{i}"), n))
        med = {k: statistics.median(v) * 1000 for k, v in figures.items()}
        print(f"{n} objects x {rounds} rounds, median per operation (one local ZooKeeper, no fsync):")
        print(f"  create, open cluster (baseline)   {med['create-open']:.2f} ms   1.00x")
        print(f"  create, secured (ACLs + marker)   {med['create-secured']:.2f} ms   "
              f"{med['create-secured'] / med['create-open']:.2f}x")
        print(f"  get, open cluster (baseline)      {med['get-open']:.2f} ms   1.00x")
        print(f"  owner check (operator, 1st time)  {med['owner-check']:.2f} ms   "
              f"{med['owner-check'] / med['get-open']:.2f}x of a get")
        for s in (anon, user, op):
            s.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    run(a.objects, a.rounds)
