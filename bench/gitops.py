"""GitOps sync cost on a generated repository of many Protocols, against a real local ZooKeeper.

Why: a GitSource re-syncs every `interval`, so the no-change sync (fetch, parse every file,
list every object, compare) is what the operator pays forever; the first sync is one big
all-or-nothing transaction (ZooKeeper caps a request at jute.maxbuffer, ~1 MB); a small commit
must stay cheap. Each phase is timed with its parts: git fetch+read, YAML load+validate,
plan (store reads + compare), apply/prune.

    .venv/bin/python bench/gitops.py [-n 1000] [--changed 10] [--no-fsync]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from boidcluster.adapters.git import GitRepos  # noqa: E402
from boidcluster.adapters.local.zookeeper import LocalZooKeeper  # noqa: E402
from boidcluster.adapters.store import Store  # noqa: E402
from boidcluster.model.resources import Protocol  # noqa: E402
from boidcluster.reconcilers.gitops import Options, execute, load_snapshot, plan_sync  # noqa: E402


def protocol(i: int, title: str = "Monte Carlo estimates of pi") -> str:
    return f"""apiVersion: cluster.boid.com/v1alpha1
kind: Protocol
metadata:
  name: proto-{i:05d}
  labels:
    team: physics
spec:
  title: {title} {i}
  owner: boidteam
  researcher: researcher1
  datadir: protocols/proto-{i:05d}
  fund:
    account: boidfund
    quantity: 1000.0000 BOID
  payRates:
    worker: 1.0000 BOID
    dispatcher: 0.5000 BOID
  payout:
    interval: 24h
"""


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@example.org", *args],
                   cwd=repo, check=True, capture_output=True)


def one_sync(store: Store, repos: GitRepos, url: str, opts: Options) -> dict[str, float | int]:
    t0 = time.perf_counter()
    snap = repos.fetch(url, "main", "protocols")
    t1 = time.perf_counter()
    objs = load_snapshot(snap)
    t2 = time.perf_counter()
    plan = plan_sync(store, "bench", objs, commit=snap.commit)
    t3 = time.perf_counter()
    out = execute(store, plan, opts)
    t4 = time.perf_counter()
    return {"fetch": t1 - t0, "load": t2 - t1, "plan": t3 - t2, "apply": t4 - t3, "total": t4 - t0,
            "applied": out.applied, "txns": out.transactions, "unchanged": len(plan.of("unchanged")), "pruned": out.pruned}


def main() -> None:
    signal.signal(signal.SIGTERM, signal.default_int_handler)   # killed: temporary directories and servers still cleaned up
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=1000, help="Protocols in the generated repository")
    ap.add_argument("--changed", type=int, default=10, help="Protocols changed by the second commit")
    ap.add_argument("--no-fsync", action="store_true", help="ZooKeeper forceSync=no")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="boid-gitops-bench-") as tmp, \
            LocalZooKeeper(Path(tmp) / "zk", fsync=not args.no_fsync, die_with_parent=True) as zk:
        repo = Path(tmp) / "repo"
        (repo / "protocols").mkdir(parents=True)
        git(repo, "init", "-q", "-b", "main")
        for i in range(args.n):
            (repo / "protocols" / f"proto-{i:05d}.yaml").write_text(protocol(i))
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "generated")
        store = Store(zk.hosts, timeout=30)
        repos = GitRepos(Path(tmp) / "cache", timeout=120)
        opts = Options(self_heal=True, prune=True, prune_limit=10)
        rows = []
        rows.append(("first sync", one_sync(store, repos, str(repo), opts)))
        rows.append(("no-change sync", one_sync(store, repos, str(repo), opts)))
        for i in range(args.changed):
            (repo / "protocols" / f"proto-{i:05d}.yaml").write_text(protocol(i, "Revised estimates"))
        git(repo, "commit", "-q", "-am", "revise")
        rows.append((f"{args.changed} changed", one_sync(store, repos, str(repo), opts)))
        rows.append(("no-change sync", one_sync(store, repos, str(repo), opts)))
        assert len(store.list(Protocol)) == args.n
        store.close()

    fsync = "off" if args.no_fsync else "on"
    print(f"GitOps sync of {args.n} Protocols (one file each), ZooKeeper 3.8 on loopback, fsync {fsync}")
    print(f"{'':16}{'total s':>9}{'fetch':>8}{'load':>8}{'plan':>8}{'apply':>8}{'applied':>9}{'unchanged':>10}{'txns':>6}")
    for label, r in rows:
        print(f"{label:16}{r['total']:9.2f}{r['fetch']:8.2f}{r['load']:8.2f}{r['plan']:8.2f}{r['apply']:8.2f}"
              f"{r['applied']:9d}{r['unchanged']:10d}{r['txns']:6d}")


if __name__ == "__main__":
    main()
