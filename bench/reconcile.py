"""Engine throughput: apply N Protocols and time until every one is Ready (real chain node +
file storage), against the same N with a no-op reconciler (the engine's own overhead).

The operator runs every reconciler `boidctl operator run` loads (so the engine keeps its Job
index, as in production). Readiness is observed through a watch on a second ZooKeeper session,
so the observer neither shares the operator's connection nor re-lists N objects a second.

Prints figures; not a timed test. Usage: .venv/bin/python bench/reconcile.py [-n 1000] [--workers 8]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from boidcluster.adapters.chain.blocking import BlockingChain  # noqa: E402
from boidcluster.adapters.chain.rpc import action  # noqa: E402
from boidcluster.adapters.local.chainnode import LocalChain  # noqa: E402
from boidcluster.adapters.local.zookeeper import LocalZooKeeper  # noqa: E402
from boidcluster.adapters.storage import Storage  # noqa: E402
from boidcluster.adapters.store import Store  # noqa: E402
from boidcluster.engine.operator import Operator  # noqa: E402
from boidcluster.engine.reconciler import Registry, Result, condition  # noqa: E402
from boidcluster.engine.world import World  # noqa: E402
from boidcluster.model.resources import Protocol  # noqa: E402
from boidcluster.cli.cluster import load_reconcilers  # noqa: E402

ALPHABET = "abcdefghijklmnopqrstuvwxyz12345"


def researchers(chain: LocalChain, n: int) -> list[str]:
    names = ["r" + "".join(secrets.choice(ALPHABET) for _ in range(11)) for _ in range(n)]
    demo = chain.demo_public_key()
    auth = {"threshold": 1, "keys": [{"key": demo, "weight": 1}], "accounts": [], "waits": []}

    async def create() -> None:
        async with chain.client() as rpc:
            for i in range(0, n, 100):
                await rpc.push_transaction([action("eosio", "newaccount", {"creator": "eosio", "name": r, "owner": auth,
                                                                          "active": auth}, "eosio@active")
                                            for r in names[i:i + 100]])
    asyncio.run(create())
    return names


def protocols(names: list[str], chain: LocalChain) -> list[Protocol]:
    a = chain.accounts
    return [Protocol.model_validate({
        "apiVersion": "cluster.boid.com/v1alpha1", "kind": "Protocol", "metadata": {"name": f"p{i}"},
        "spec": {"title": f"Bench {i}", "owner": a.owner, "researcher": r, "datadir": f"/bench/p{i}",
                 "fund": {"account": a.fund, "quantity": "1.0000 BOID"},
                 "payRates": {"worker": "1.0000 BOID", "dispatcher": "0.5000 BOID"}}})
        for i, r in enumerate(names)]


def register(chain: LocalChain, objs: list[Protocol]) -> None:
    """Contracts v2: the owner registers each protocol (the researcher co-signs), as `boidctl fund`
    would; the operator only observes the registry."""
    from boidcluster.adapters.chain.boid import BoidChain, ProtocolTerms

    async def go() -> None:
        async with chain.client() as rpc:
            demo = chain.demo_public_key()
            bc = BoidChain(rpc)
            acts = []
            for p in objs:
                rpc.keys.labels[f"{p.spec.researcher}@active"] = demo
                t = ProtocolTerms.from_spec(p.chain_name, p.spec)
                acts.append(action(bc.reg, "addprotocol", {
                    "owner": t.owner, "name": t.name, "researcher": t.researcher, "title": t.title,
                    "datadir": t.datadir, "tokencontract": t.tokencontract, "worker_pay_rate": t.worker_pay_rate,
                    "dispatcher_pay_rate": t.dispatcher_pay_rate}, f"{t.owner}@active", f"{t.researcher}@active"))
            for i in range(0, len(acts), 50):
                await rpc.push_transaction(acts[i:i + 50])
    asyncio.run(go())


def run(zk: LocalZooKeeper, chroot: str, objs: list[Protocol], world_of, registry: Registry, workers: int,
        ready) -> tuple[float, int]:
    """Seconds until every object is Ready, and the reconcile passes that took."""
    setup = Store(zk.hosts)
    setup.client.ensure_path(chroot)
    setup.close()
    store = Store(zk.hosts + chroot, timeout=30)
    observer = Store(zk.hosts + chroot, timeout=30)
    op = Operator(store, world_of(store), registry, workers=workers).start()
    watch = observer.watch(Protocol, send_initial=False)
    try:
        while not op.leading:
            time.sleep(0.01)
        t0 = time.perf_counter()
        for i in range(0, len(objs), 100):  # ZooKeeper caps one request (transaction) at 1 MB
            observer.apply(objs[i:i + 100])
        ok: set[str] = set()
        while len(ok) < len(objs):
            ev = watch.get(timeout=120)
            if ev is None:
                raise SystemExit(f"{len(objs) - len(ok)} protocols not Ready after 120 s without an event")
            (ok.add if ev.type != "DELETED" and ready(ev.obj) else ok.discard)(ev.name)
        elapsed = time.perf_counter() - t0
        passes = sum(op.metrics.registry.get_sample_value("boid_reconciles_total", {"kind": "Protocol", "result": r})
                     or 0 for r in ("ok", "error"))
        return elapsed, int(passes)
    finally:
        watch.stop()
        op.stop()
        observer.close()
        store.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        zk = LocalZooKeeper(Path(tmp) / "zk", fsync=False).start()
        chain = LocalChain(Path(tmp) / "chain")
        chain.start()
        try:
            chain.bootstrap()
            objs = protocols(researchers(chain, args.n), chain)
            register(chain, objs)
            bchain = BlockingChain.open(chain.url, chain.operator_keys())

            noop = Registry()

            @noop.reconciler(Protocol)
            def nothing(p, world):
                return Result(conditions=[condition("Ready", True, "NoOp")])

            def has_ready(p):
                c = p.status.condition("Ready") if p.status else None
                return c is not None and c.status == "True"

            t_noop, p_noop = run(zk, "/noop", objs, lambda s: World(store=s), noop, args.workers, has_ready)
            t_real, p_real = run(zk, "/real", objs, lambda s: World(store=s, storage=Storage(f"file://{tmp}/storage"),
                                                                  chain=bchain), load_reconcilers(), args.workers,
                                 has_ready)
            scans = bchain.scans
            bchain.close()
        finally:
            chain.stop()
            zk.close()
    n = args.n
    print(f"protocols: {n}, engine workers: {args.workers}")
    print(f"no-op reconciler (engine overhead): {t_noop:7.2f} s  {n / t_noop:8.1f} protocols/s  {p_noop} passes")
    print(f"real reconciler (chain + storage):  {t_real:7.2f} s  {n / t_real:8.1f} protocols/s  {p_real} passes, "
          f"{scans} registry scans")
    print(f"real / no-op time: {t_real / t_noop:.2f}x (engine overhead share of the real run: {t_noop / t_real:.1%})")


if __name__ == "__main__":
    main()
