"""Dispatch throughput: trivial units (`true`) completed per second, end to end, vs bare launches.

Why: every unit costs the dispatcher more than a process launch: ZooKeeper records (the attempt
before the submit, the result and the acceptance after the end, batched per transaction), the
result hash, status writes (coalesced), and the engine's passes (event driven: a backend update
enqueues its job). This runs jobs of N units of `true` through an Operator with the Job
reconciler, a backend of the chosen runtime (`--runtime host`: the local backend's subprocesses)
and a real LocalZooKeeper it starts, and in the same run, at the same parallelism (one per slot):
- bare: the same number of `true` launched directly (subprocess.run from `slots` threads);
- backend alone: the same tasks through the backend with no dispatcher (submit/updates only),
  so what the dispatcher adds and what the backend costs are told apart.
For each size it prints units/s, the ratios, the process's RSS (the operator runs in it) and
ZooKeeper's znode count before the job, at its end, and after deleting it (it must return to
the first). `--jobs M` instead applies M jobs of `--units` units each at once.

Before any measurement a first job of `--warmup` units (10,000) runs and is deleted, its rate
printed: a cluster's ZooKeeper has been running, and a fresh one's JVM compiles its hot paths
during its first jobs (measured: ZooKeeper's CPU per unit of three 10,000-unit jobs in a row,
0.29-0.33, 0.15-0.17, 0.09-0.11 ms; sampled every second after a 2,000-unit warm-up it was still
0.5-0.3 ms during the next job's first 4 s), which bare launches never pay. `--warmup 0` measures
cold. The bare baseline is measured before and after each dispatched run and averaged: the
machine's speed drifts from one minute to the next.

    .venv/bin/python bench/dispatch.py [-n 1000 -n 10000] [--slots 4] [--runtime host]
    .venv/bin/python bench/dispatch.py --jobs 1000 --units 2

With `--runtime container` every unit is a sandboxed podman container of the demo image (built on
first use) running `true`, and the bare baseline is the same number of `podman run --rm` of the
same image with the same sandbox options, as many at a time as there are slots, measured before
and after the dispatched run and averaged (the machine's load drifts). It also prints the time
from the Job's apply to its first unit running, next to one bare `podman run --rm` of the image.

    .venv/bin/python bench/dispatch.py --runtime container -n 40 --slots 2 --chain-units 0
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from boidcluster.adapters.backend import TaskSpec  # noqa: E402
from boidcluster.adapters.local.backend import LocalBackend  # noqa: E402
from boidcluster.adapters.local.zookeeper import LocalZooKeeper, four_letter_word  # noqa: E402
from boidcluster.adapters.storage import Storage  # noqa: E402
from boidcluster.adapters.store import OBJECTS, Store, kind_dir  # noqa: E402
from boidcluster.engine.operator import Operator, tune_gc  # noqa: E402
from boidcluster.engine.world import World  # noqa: E402
from boidcluster.model.resources import Job, Protocol  # noqa: E402
from boidcluster.reconcilers import registry  # noqa: E402
from boidcluster.reconcilers.jobs import Dispatcher  # noqa: E402

ACCOUNTS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
COMMAND = ["true"]
RUNTIMES = {"host": "host", "container": "podman"}   # bench flag -> the local backend's runtime


class _FirstRunning(LocalBackend):
    """Bench instrumentation: when the first task since `first_running` was reset reported RUNNING,
    and the slot time tasks held from RUNNING to their end (how busy the slots were kept). Only
    running sums are kept, so the instrumentation adds nothing per task to the RSS printed."""

    first_running: float | None = None

    def __init__(self, *args: Any, **kw: Any) -> None:
        self.reset_spans()
        super().__init__(*args, **kw)

    def reset_spans(self) -> None:
        self.first_running, self.last_end, self.held = None, None, 0.0
        self.started: dict[str, float] = {}

    def _emit(self, t, state, **kw):  # type: ignore[override]
        now = time.perf_counter()
        if state == "RUNNING":
            if self.first_running is None:
                self.first_running = now
            self.started.setdefault(t.spec.task_id, now)
        elif state in ("FINISHED", "FAILED", "KILLED", "LOST") and t.spec.task_id in self.started:
            self.held += now - self.started.pop(t.spec.task_id)
            self.last_end = now
        super()._emit(t, state, **kw)

    def busy(self, slots: int) -> float:
        """Fraction of slot time from the first RUNNING to the last end that a task held a slot."""
        if self.first_running is None or self.last_end is None:
            return 0.0
        return self.held / (slots * (self.last_end - self.first_running) or 1)


def make_backend(runtime: str, root: Path, slots: int) -> Any:
    """The backend a run uses, by runtime (one slot per contributor, round robin)."""
    contributors = [ACCOUNTS[i % len(ACCOUNTS)] for i in range(slots)]
    if runtime not in RUNTIMES:
        raise SystemExit(f"unknown runtime {runtime!r}")
    return _FirstRunning(root, contributors, runtime=RUNTIMES[runtime])


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def znodes(zk: LocalZooKeeper) -> int:
    for line in four_letter_word(zk.port, "mntr").splitlines():
        if line.startswith("zk_znode_count"):
            return int(line.split()[1])
    return -1


def bare(n: int, parallel: int) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(lambda _: subprocess.run(COMMAND, check=True), range(n)))
    return time.perf_counter() - start


def bare_podman(n: int, parallel: int, image: str) -> tuple[float, float]:
    """N `podman run --rm IMAGE true` with the runtime's sandbox options; (total, one run alone)."""
    from boidcluster.adapters.backend import TaskResources
    from boidcluster.adapters.local.runtime import PodmanRuntime

    rt = PodmanRuntime()
    argv = rt._cmd("run", "--rm", *rt.sandbox_args(TaskResources(), network=False, timeout=None), image, *COMMAND)
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, env=rt._base_env())
    one = time.perf_counter() - t0
    start = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(lambda _: subprocess.run(argv, check=True, env=rt._base_env()), range(n)))
    return time.perf_counter() - start, one


def backend_alone(runtime: str, n: int, slots: int, root: Path, overcommit: int = 2, image: str | None = None) -> float:
    """The backend with a minimal driver (no records, no engine): its own ceiling."""
    b = make_backend(runtime, root / "alone", slots)
    try:
        start, sub, done, flying = time.perf_counter(), 0, 0, 0
        while done < n:
            while sub < n and flying < slots * overcommit:
                b.submit(TaskSpec(task_id=f"t{sub}", job="alone", unit=f"u{sub}", command=COMMAND, env={},
                                  output_dir=f"alone/{sub}", image=image))
                sub, flying = sub + 1, flying + 1
            for u in b.updates(1.0):
                if u.terminal:
                    done, flying = done + 1, flying - 1
        return time.perf_counter() - start
    finally:
        b.close()


class Site:
    """One operator (engine + Job reconciler + dispatcher) over one backend and a ZooKeeper."""

    def __init__(self, runtime: str, slots: int, root: Path, hosts: str, overcommit: int,
                 max_overcommit: int | None = None) -> None:
        self.store = Store(hosts, timeout=30)
        self.backend = make_backend(runtime, root, slots)
        self.dispatcher = Dispatcher(self.backend, overcommit=overcommit,
                                     max_overcommit=max_overcommit if max_overcommit is not None else overcommit)
        world = World(store=self.store, storage=Storage(f"file://{root}"), backend=self.backend,
                      dispatcher=self.dispatcher)
        try:
            self.store.create(Protocol.model_validate({"metadata": {"name": "bench"}, "spec": {
                "title": "bench", "owner": "boidteam", "researcher": "researcher1", "datadir": "protocols/bench",
                "fund": {"account": "boidfund", "quantity": "1000.0000 BOID"},
                "payRates": {"worker": "1.0000 BOID", "dispatcher": "0.5000 BOID"}}}))
        except Exception:
            pass
        self.store.client.ensure_path(f"{OBJECTS}/{kind_dir(Job)}")   # in the baseline, as it stays
        tune_gc()   # as `operator run` does
        self.op = Operator(self.store, world, registry, workers=4).start()   # `operator run`'s default
        while not self.op.leading:
            time.sleep(0.01)

    def run(self, names: list[str], units: int, replicas: int, image: str = "none") -> tuple[float, float | None]:
        """Apply the jobs at once; (seconds until every one Succeeded, seconds to the first RUNNING)."""
        self.backend.reset_spans()
        self.mirror_peak = 0
        start = time.perf_counter()
        jobs = [Job.model_validate({"metadata": {"name": name}, "spec": {
            "protocol": "bench", "image": image, "command": COMMAND, "workUnits": {"count": units},
            "replication": {"replicas": replicas, "quorum": replicas}, "output": {"reduce": "none"}}})
            for name in names]
        left = set(names)
        watch = self.store.watch(Job, send_initial=False)   # not a listing of every job in a loop
        try:
            for i in range(0, len(jobs), 100):
                self.store.apply(jobs[i:i + 100])
            while left:
                ev = watch.get(timeout=5.0)
                if ev is None:  # nothing for a while: look, in case an event was coalesced away
                    for j in self.store.list(Job):
                        if j.name in left and j.status and j.status.phase in ("Succeeded", "Failed"):
                            assert j.status.phase == "Succeeded", j.status
                            left.discard(j.name)
                    continue
                self.mirror_peak = max(self.mirror_peak, self.mirror_records())
                st = ev.obj.status
                if ev.name in left and st is not None and st.phase in ("Succeeded", "Failed"):
                    assert st.phase == "Succeeded", st
                    left.discard(ev.name)
        finally:
            watch.stop()
        end, first = time.perf_counter(), self.backend.first_running
        return end - start, None if first is None else first - start

    def mirror_records(self) -> int:
        """Records the dispatcher holds in memory over every job's mirror (settled units leave)."""
        with self.dispatcher._mu:
            mirrors = list(self.dispatcher._records.values())
        return sum(len(r.accepted) + len(r.attempts) + len(r.results) for r in mirrors)

    def compacted(self, zk: LocalZooKeeper, want: int, timeout: float) -> tuple[float, int]:
        """Seconds until the finished jobs are compacted (ZooKeeper down to `want` znodes)."""
        start = time.perf_counter()
        while znodes(zk) > want and time.perf_counter() - start < timeout:
            time.sleep(0.2)
        return time.perf_counter() - start, znodes(zk)

    def delete(self, names: list[str], zk: LocalZooKeeper, want: int, timeout: float = 120.0) -> tuple[float, int]:
        """Delete the jobs; seconds until they are gone and ZooKeeper is back to `want` znodes."""
        start = time.perf_counter()
        for name in names:
            self.store.delete(Job, name)
        end = start + timeout
        jobs_dir = f"{OBJECTS}/{kind_dir(Job)}"   # names only: listing the objects is load itself
        while time.perf_counter() < end:
            if not set(names) & set(self.store.client.get_children(jobs_dir)) and znodes(zk) <= want:
                break
            time.sleep(0.2)
        return time.perf_counter() - start, znodes(zk)

    def close(self) -> None:
        self.op.stop()
        self.backend.close()
        self.store.close()


def on_chain(units: int, state: Path) -> None:
    """Record `units` completions through the ledger exactly as the Job reconciler does (batches of
    LEDGER_BATCH credits per call), on a local chain node; print time and transactions used, and
    the same figure for one transaction per unit (measured on a sample) as the baseline."""
    import asyncio
    import secrets
    from types import SimpleNamespace

    from boidcluster.adapters.chain.blocking import BlockingChain
    from boidcluster.adapters.chain.rpc import action
    from boidcluster.adapters.local.chainnode import LocalChain
    from boidcluster.reconcilers.jobs.reconciler import LEDGER_BATCH
    from boidcluster.reconcilers.ledger import ChainLedger

    chain = LocalChain(state / "chain")
    chain.start()
    try:
        chain.bootstrap()
        a = chain.accounts
        researcher = "r" + "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz12345") for _ in range(11))
        demo = chain.demo_public_key()
        auth = {"threshold": 1, "keys": [{"key": demo, "weight": 1}], "accounts": [], "waits": []}

        async def setup() -> None:
            async with chain.client() as rpc:
                await rpc.push_transaction([action("eosio", "newaccount", {"creator": "eosio", "name": researcher,
                                                                          "owner": auth, "active": auth}, "eosio@active")])
        asyncio.run(setup())
        bc = BlockingChain.open(chain.url, chain.operator_keys())
        workers = list(a.workers)
        for w in workers:
            bc.register_worker(w, researcher)
        ledger = ChainLedger(bc)
        protocol = SimpleNamespace(spec=SimpleNamespace(researcher=researcher))

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
    signal.signal(signal.SIGTERM, signal.default_int_handler)   # killed: temporary directories and servers still cleaned up
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, action="append", help="units of one job (repeatable; default 1000)")
    ap.add_argument("--jobs", type=int, default=0, help="instead: this many jobs at once, of --units units each")
    ap.add_argument("--units", type=int, default=2, help="units per job with --jobs")
    ap.add_argument("--slots", type=int, default=4, help="backend slots = the parallelism of every measurement")
    ap.add_argument("--runtime", default="host", choices=list(RUNTIMES),
                    help="what runs a unit: host processes, or sandboxed podman containers of the demo image")
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--overcommit", type=int, default=Dispatcher(None).overcommit,  # type: ignore[arg-type]
                    help="tasks in flight per slot, at least (the dispatcher's default)")
    ap.add_argument("--max-overcommit", type=int, default=Dispatcher(None).max_overcommit,  # type: ignore[arg-type]
                    help="tasks in flight per slot while tasks are short (the dispatcher's default); "
                         "the backend-alone driver keeps this many in flight")
    ap.add_argument("--zk-heap", default="1g", help="the bench's ZooKeeper's Java heap")
    ap.add_argument("--no-alone", action="store_true", help="skip the backend-alone measurement")
    ap.add_argument("--warmup", type=int, default=10000,
                    help="units of a first job run, compacted and deleted before any measurement (0: none); "
                         "printed, not measured: see the module's docstring")
    ap.add_argument("--chain-units", type=int, default=0, help="completions recorded on chain (0: skip)")
    args = ap.parse_args()
    sizes = args.n or [1000]
    image = "none"
    if args.runtime == "container":
        from boidcluster.adapters.local.images import ensure_demo_image
        image = ensure_demo_image(progress=print)
    # ~3 znodes per unit until compaction (~0.8 kB of ZooKeeper heap each): 256 MB is not enough for 100,000 units
    with LocalZooKeeper(fsync=False, die_with_parent=True, heap=args.zk_heap) as zk, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"runtime={args.runtime} image={image[:19]} slots={args.slots} replicas={args.replicas} cpus={os.cpu_count()} "
              f"load={os.getloadavg()[0]:.1f} (the machine is shared: compare ratios, not rates)")
        site = Site(args.runtime, args.slots, root, zk.hosts, args.overcommit, args.max_overcommit)
        table: list[str] = []
        try:
            if args.warmup:
                z0 = znodes(zk)
                t_w, _ = site.run(["warmup"], args.warmup, args.replicas, image)
                base = znodes(zk)
                site.compacted(zk, z0 + 4, timeout=60 + args.warmup / 500)
                site.delete(["warmup"], zk, z0, timeout=120 + args.warmup / 200)
                print(f"warm-up (not measured): a job of {args.warmup} units, {args.warmup / t_w:.1f} units/s "
                      f"({base} znodes at its end)")
            base_z, base_rss = znodes(zk), rss_mb()
            print(f"baseline: znodes {base_z}, rss {base_rss:.0f} MB")
            plans = ([(f"x{args.jobs}", [f"j{i:05d}" for i in range(args.jobs)], args.units)] if args.jobs
                     else [(f"{n}", [f"trivial-{n}"], n) for n in sizes])
            first_rate = None
            for label, names, units in plans:
                tasks = len(names) * units * args.replicas
                t_one = None
                # The machine's speed drifts (a shared VM: bare launches measured 2,090-2,670/s from
                # one minute to the next): the baseline before and after the run, averaged.
                if args.runtime == "container":
                    t_before, t_one = bare_podman(tasks, args.slots, image)
                else:
                    t_before = bare(tasks, args.slots)
                cpu_a0 = resource.getrusage(resource.RUSAGE_SELF)
                t_alone = (None if args.no_alone else   # as deep a queue as the dispatcher may keep
                           backend_alone(args.runtime, tasks, args.slots, root, max(args.overcommit, args.max_overcommit),
                                         image if args.runtime == "container" else None))
                cpu_a1 = resource.getrusage(resource.RUSAGE_SELF)
                cpu_alone = cpu_a1.ru_utime + cpu_a1.ru_stime - cpu_a0.ru_utime - cpu_a0.ru_stime
                cpu0 = resource.getrusage(resource.RUSAGE_SELF)
                t_job, t_first = site.run(names, units, args.replicas, image)
                cpu1 = resource.getrusage(resource.RUSAGE_SELF)
                cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
                z_end, rss_end = znodes(zk), rss_mb()
                t_c, z_compact = site.compacted(zk, base_z + 4 * len(names), timeout=60 + tasks / 500)
                t_del, z_after = site.delete(names, zk, base_z, timeout=120 + tasks / 200)  # storage too
                # after compaction and deletion: they load the machine, the baseline must not share it
                t_after = bare_podman(tasks, args.slots, image)[0] if args.runtime == "container" else bare(tasks, args.slots)
                t_bare = (t_before + t_after) / 2
                rate = len(names) * units / t_job
                first_rate = first_rate or rate
                print(f"--- {len(names)} job(s) x {units} units ({tasks} tasks)")
                if t_one is not None:
                    print(f"bare podman run --rm   : {tasks / t_bare:9.1f} tasks/s ({t_bare:.2f}s; "
                          f"before {t_before:.2f}s, after {t_after:.2f}s)")
                else:
                    print(f"bare launches          : {tasks / t_bare:9.1f} tasks/s ({t_bare:.2f}s; "
                          f"before {t_before:.2f}s, after {t_after:.2f}s)")
                if t_alone is not None:
                    print(f"backend alone          : {tasks / t_alone:9.1f} tasks/s ({t_alone:.2f}s)")
                print(f"dispatched end to end  : {tasks / t_job:9.1f} tasks/s ({t_job:.2f}s, {rate:.1f} units/s, "
                      f"{len(names) / t_job:.1f} jobs/s, apply -> all Succeeded)")
                print(f"ratio dispatched/bare  : {t_bare / t_job:9.3f}")
                if t_alone is not None:
                    print(f"ratio dispatched/alone : {t_alone / t_job:9.3f}")
                print(f"ratio units/s vs first : {rate / first_rate:9.3f}")
                print(f"operator cpu           : {cpu:9.2f}s ({cpu / t_job:.2f} of a core, {cpu * 1e3 / tasks:.2f} ms "
                      f"per task" + ("" if t_alone is None else f"; the backend alone {cpu_alone * 1e3 / tasks:.2f} ms")
                      + f"); slots busy {site.backend.busy(args.slots):.0%} (a task between RUNNING and its end); "
                      f"queue depth {site.dispatcher.depth()} per slot")
                print(f"job mirror             : at most {site.mirror_peak} records in memory at a status event "
                      f"({3 * tasks} written: a settled unit keeps one bit)")
                if t_first is not None:
                    one = "" if t_one is None else f" (one bare podman run --rm of the image, start to exit: {t_one:.3f}s)"
                    print(f"apply -> first unit running: {t_first:.3f}s{one}")
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                print(f"rss {rss_end:.0f} MB (process peak so far {peak:.0f} MB); znodes {base_z} before, {z_end} at the end, {z_compact} "
                      f"{t_c:.1f}s later (compacted: 4 per job), {z_after} "
                      f"{t_del:.1f}s after deleting ({'back to baseline' if z_after <= base_z else 'NOT back'})")
                table.append(f"{label:>9} {tasks / t_job:9.1f} {t_bare / t_job:7.3f} "
                             f"{'-' if t_alone is None else f'{t_alone / t_job:.3f}':>7} {rate / first_rate:9.3f} "
                             f"{rss_end:7.0f} {z_end:9d} {z_after:7d}")
            print("\n     size   tasks/s vs bare vs alone vs first  rss MB  znodes@end  after")
            for row in table:
                print(row)
        finally:
            site.close()
        if args.chain_units:
            on_chain(args.chain_units, root)


if __name__ == "__main__":
    main()
