"""Dispatch throughput: trivial units (`true`) completed per second, end to end, vs bare launches.

Why: every unit costs the dispatcher more than a process launch: a ZooKeeper create before the
submit (the attempt), one after the end (the result), the result hash, one create for the
acceptance, a status write per reconcile pass, and the engine's polling (requeue_after). This
runs N units of `true` through an Operator with the Job reconciler, the local backend and a real
LocalZooKeeper it starts, then launches the same number of `true` subprocesses bare, the same
number at a time (as many as there are slots), in the same run, and prints the ratio.

    .venv/bin/python bench/dispatch.py [-n 400] [--slots 4] [--poll 0.02] [--replicas 1]

With `--runtime container` every unit is a sandboxed podman container of the demo image (built on
first use) running `true`, and the baseline is N bare `podman run --rm` of the same image with the
same sandbox options, the same number at a time; it also prints the time from the Job's create to
its first unit running, next to one bare `podman run --rm` of the same image.

    .venv/bin/python bench/dispatch.py --runtime container -n 40 --slots 2 --chain-units 0
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from boidcluster.adapters.local.backend import LocalBackend  # noqa: E402
from boidcluster.adapters.local.zookeeper import LocalZooKeeper  # noqa: E402
from boidcluster.adapters.storage import Storage  # noqa: E402
from boidcluster.adapters.store import Store  # noqa: E402
from boidcluster.engine.operator import Operator  # noqa: E402
from boidcluster.engine.world import World  # noqa: E402
from boidcluster.model.resources import Job, Protocol  # noqa: E402
from boidcluster.reconcilers import registry  # noqa: E402
from boidcluster.reconcilers.jobs import Dispatcher  # noqa: E402


def bare(n: int, parallel: int) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(lambda _: subprocess.run(["true"], check=True), range(n)))
    return time.perf_counter() - start


def bare_podman(n: int, parallel: int, image: str) -> tuple[float, float]:
    """N `podman run --rm IMAGE true` with the runtime's sandbox options; (total, one run alone)."""
    from boidcluster.adapters.backend import TaskResources
    from boidcluster.adapters.local.runtime import PodmanRuntime

    rt = PodmanRuntime()
    argv = rt._cmd("run", "--rm", *rt.sandbox_args(TaskResources(), network=False, timeout=None), image, "true")
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, env=rt._base_env())
    one = time.perf_counter() - t0
    start = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(lambda _: subprocess.run(argv, check=True, env=rt._base_env()), range(n)))
    return time.perf_counter() - start, one


class _FirstRunning(LocalBackend):
    """Bench instrumentation: when the first task of the run reported RUNNING."""

    first_running: float | None = None

    def _emit(self, t, state, **kw):  # type: ignore[override]
        if state == "RUNNING" and self.first_running is None:
            self.first_running = time.perf_counter()
        super()._emit(t, state, **kw)


def dispatched(n: int, slots: int, poll: float, replicas: int, root: Path, hosts: str,
               runtime: str = "host", image: str = "none", timing: dict | None = None) -> tuple[float, float]:
    store = Store(hosts, timeout=10)
    accounts = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
    backend = _FirstRunning(root, [accounts[i % len(accounts)] for i in range(slots)], runtime=runtime)
    world = World(store=store, storage=Storage(f"file://{root}"), backend=backend,
                  dispatcher=Dispatcher(backend, poll=poll))
    store.create(Protocol.model_validate({"metadata": {"name": "bench"}, "spec": {
        "title": "bench", "owner": "boidteam", "researcher": "researcher1", "datadir": "protocols/bench",
        "fund": {"account": "boidfund", "quantity": "1000.0000 BOID"},
        "payRates": {"worker": "1.0000 BOID", "dispatcher": "0.5000 BOID"}}}))
    op = Operator(store, world, registry, workers=2).start()
    try:
        start = time.perf_counter()
        store.create(Job.model_validate({"metadata": {"name": "trivial"}, "spec": {
            "protocol": "bench", "image": image, "command": ["true"], "workUnits": {"count": n},
            "replication": {"replicas": replicas, "quorum": replicas}, "output": {"reduce": "none"}}}))
        while True:
            j = store.get(Job, "trivial")
            if j.status and j.status.phase in ("Succeeded", "Failed"):
                break
            time.sleep(0.01)
        elapsed = time.perf_counter() - start
        assert j.status.phase == "Succeeded", j.status
        if timing is not None and backend.first_running is not None:
            timing["first_running"] = backend.first_running - start
        first = j.status.start_time
        return elapsed, (j.status.completion_time - first).total_seconds() if first else elapsed
    finally:
        op.stop()
        backend.close()
        store.close()


def on_chain(units: int, state: Path) -> None:
    """Record `units` completions through the ledger exactly as the Job reconciler does (batches of
    LEDGER_BATCH credits per call), on a local chain node; print time and transactions used, and
    the same figure for one transaction per unit (measured on a sample) as the baseline."""
    import asyncio
    import secrets
    from types import SimpleNamespace

    from boidcluster.adapters.chain.blocking import BlockingChain
    from boidcluster.adapters.chain.boid import BoidChain, ProtocolTerms
    from boidcluster.model.types import Asset
    from boidcluster.adapters.local.chainnode import LocalChain
    from boidcluster.reconcilers.jobs.reconciler import LEDGER_BATCH
    from boidcluster.reconcilers.ledger import ChainLedger

    chain = LocalChain(state / "chain")
    chain.start()
    try:
        chain.bootstrap()
        a = chain.accounts
        name = "r" + "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz12345") for _ in range(11))

        async def setup() -> None:  # the owner registers the protocol (contracts v2), the researcher consents
            async with chain.client() as rpc:
                terms = ProtocolTerms(owner=a.owner, name=name, researcher=a.researcher, title="bench",
                                      datadir="/bench", tokencontract=a.token,
                                      worker_pay_rate=Asset.parse("1.0000 BOID"),
                                      dispatcher_pay_rate=Asset.parse("1.0000 BOID"))
                await BoidChain(rpc).register_protocol(terms, researcher_signs=True)
        asyncio.run(setup())
        bc = BlockingChain.open(chain.url, chain.operator_keys())
        workers = list(a.workers)
        for w in workers:
            bc.register("worker", w, a.owner, name)
        ledger = ChainLedger(bc)  # no ZooKeeper here: the batch journal stays in memory
        protocol = SimpleNamespace(spec=SimpleNamespace(owner=a.owner, researcher=a.researcher), chain_name=name)

        def run(n: int, per_call: int, uid: str) -> tuple[float, int]:
            credits = [(f"u{i}", workers[i % len(workers)], 1_000_000 + i) for i in range(n)]
            t0, trx = time.perf_counter(), 0
            for i in range(0, n, per_call):
                trx += ledger.record_units(protocol, SimpleNamespace(metadata=SimpleNamespace(uid=uid)),
                                           credits[i:i + per_call]).transactions
            return time.perf_counter() - t0, trx

        sample = min(500, units)
        t_one, trx_one = run(sample, 1, "bench-single")
        t_batch, trx_batch = run(units, LEDGER_BATCH, "bench-batched")
        bc.close()
    finally:
        chain.stop()
    print(f"on chain: {units} completions in {t_batch:.2f}s using {trx_batch} transactions "
          f"({units / t_batch:.0f} units/s, {units / max(trx_batch, 1):.0f} units per transaction)")
    print(f"baseline, one transaction per unit ({sample} units): {sample / t_one:.0f} units/s, {trx_one} transactions")
    print(f"ratio batched/unbatched throughput: {(units / t_batch) / (sample / t_one):.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=400, help="units")
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--poll", type=float, default=None,
                    help="Dispatcher poll (requeue_after) seconds (default 0.02; 0.25 = the operator's with --runtime container)")
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--chain-units", type=int, default=10_000, help="completions recorded on chain (0: skip)")
    ap.add_argument("--runtime", choices=["host", "container"], default="host",
                    help="host: units are host processes (`true`); container: sandboxed podman containers")
    args = ap.parse_args()
    if args.runtime == "container":
        args.poll = 0.25 if args.poll is None else args.poll
        container_bench(args)
        return
    args.poll = 0.02 if args.poll is None else args.poll
    with LocalZooKeeper(fsync=False, die_with_parent=True) as zk, tempfile.TemporaryDirectory() as tmp:
        t_bare = bare(args.n * args.replicas, args.slots)
        t_job, _ = dispatched(args.n, args.slots, args.poll, args.replicas, Path(tmp), zk.hosts)
        tasks = args.n * args.replicas
        print(f"units={args.n} replicas={args.replicas} tasks={tasks} slots={args.slots} poll={args.poll}s")
        print(f"bare subprocess launches : {tasks / t_bare:8.1f} tasks/s ({t_bare:.2f}s)")
        print(f"dispatched end to end    : {tasks / t_job:8.1f} tasks/s ({t_job:.2f}s, "
              f"{args.n / t_job:.1f} units/s, job create -> Succeeded)")
        print(f"ratio dispatched/bare    : {t_bare / t_job:8.3f}")
        if args.chain_units:
            on_chain(args.chain_units, Path(tmp))


def container_bench(args: argparse.Namespace) -> None:
    from boidcluster.adapters.local.images import ensure_demo_image

    image = ensure_demo_image(progress=print)
    tasks = args.n * args.replicas
    with LocalZooKeeper(fsync=False, die_with_parent=True) as zk, tempfile.TemporaryDirectory() as tmp:
        # The machine's load drifts: measure the baseline before and after, and compare with the mean.
        t_before, t_one = bare_podman(tasks, args.slots, image)
        timing: dict = {}
        t_job, _ = dispatched(args.n, args.slots, args.poll, args.replicas, Path(tmp), zk.hosts,
                              runtime="podman", image=image, timing=timing)
        t_after, _ = bare_podman(tasks, args.slots, image)
        t_bare = (t_before + t_after) / 2
        print(f"bare podman run --rm before/after: {t_before:.2f}s / {t_after:.2f}s")
    print(f"units={args.n} replicas={args.replicas} tasks={tasks} slots={args.slots} poll={args.poll}s "
          f"runtime=container image={image[:19]}")
    print(f"bare podman run --rm     : {tasks / t_bare:8.2f} tasks/s ({t_bare:.2f}s)")
    print(f"dispatched end to end    : {tasks / t_job:8.2f} tasks/s ({t_job:.2f}s, job create -> Succeeded)")
    print(f"ratio dispatched/bare    : {t_bare / t_job:8.3f}")
    if "first_running" in timing:
        print(f"job create -> first unit running: {timing['first_running']:.3f}s "
              f"(one bare podman run --rm of the image, start to exit: {t_one:.3f}s)")


if __name__ == "__main__":
    main()
