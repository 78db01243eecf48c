"""Engine throughput: apply N Protocols and time until every one is Ready (real chain node +
file storage), against the same N with a no-op reconciler (the engine's own overhead).

The operator runs every reconciler `boidctl operator run` loads (so the engine keeps its Job
index, as in production), with the storage, chain and ledger that command wires. Readiness is observed by a watch in a separate process (its own
ZooKeeper session and CPU time), so the observer neither shares the operator's connection and
interpreter nor re-lists N objects a second; it reports the monotonic time (one clock for every
process on the machine) at which the last object turned Ready.

Prints figures; not a timed test. Usage: .venv/bin/python bench/reconcile.py [-n 1000] [--workers 8]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import signal
import subprocess
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
from boidcluster.reconcilers.ledger import ChainLedger  # noqa: E402

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


def run(zk: LocalZooKeeper, chroot: str, objs: list[Protocol], world_of, registry: Registry,
        workers: int) -> tuple[float, int]:
    """Seconds until every object is Ready, and the reconcile passes that took."""
    setup = Store(zk.hosts)
    setup.client.ensure_path(chroot)
    setup.close()
    store = Store(zk.hosts + chroot, timeout=30)
    observer = subprocess.Popen([sys.executable, __file__, "--observe", zk.hosts + chroot, "-n", str(len(objs))],
                                stdout=subprocess.PIPE, text=True)
    op = Operator(store, world_of(store), registry, workers=workers).start()
    try:
        assert observer.stdout is not None and observer.stdout.readline().strip() == "watching"
        while not op.leading:
            time.sleep(0.01)
        t0 = time.monotonic()
        for i in range(0, len(objs), 100):  # ZooKeeper caps one request (transaction) at 1 MB
            store.apply(objs[i:i + 100])
        out = observer.stdout.readline().strip()
        if observer.wait() != 0 or not out:
            raise SystemExit(f"the observer failed: {out}")
        elapsed = float(out) - t0
        passes = sum(op.metrics.registry.get_sample_value("boid_reconciles_total", {"kind": "Protocol", "result": r})
                     or 0 for r in ("ok", "error"))
        return elapsed, int(passes)
    finally:
        if observer.poll() is None:
            observer.kill()
        op.stop()
        store.close()


def has_ready(p: Protocol) -> bool:
    c = p.status.condition("Ready") if p.status else None
    return c is not None and c.status == "True"


def observe(hosts: str, n: int) -> None:
    """The observer process: print "watching", then the monotonic time when n objects are Ready."""
    store = Store(hosts, timeout=30)
    watch = store.watch(Protocol, send_initial=False)
    print("watching", flush=True)
    ok: set[str] = set()
    while len(ok) < n:
        ev = watch.get(timeout=120)
        if ev is None:
            raise SystemExit(f"{n - len(ok)} protocols not Ready after 120 s without an event")
        (ok.add if ev.type != "DELETED" and has_ready(ev.obj) else ok.discard)(ev.name)
    print(time.monotonic(), flush=True)
    watch.stop()
    store.close()


def main() -> None:
    signal.signal(signal.SIGTERM, signal.default_int_handler)   # killed: temporary directories and servers still cleaned up
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--observe", metavar="ZK", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.observe:
        return observe(args.observe, args.n)
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

            t_noop, p_noop = run(zk, "/noop", objs, lambda s: World(store=s), noop, args.workers)
            def real_world(s: Store) -> World:  # as `boidctl operator run` wires it (cli/wiring.py)
                return World(store=s, storage=Storage(f"file://{tmp}/storage"), chain=bchain,
                             ledger=ChainLedger(bchain, store=s))

            t_real, p_real = run(zk, "/real", objs, real_world, load_reconcilers(), args.workers)
            scans = getattr(bchain, "scans", "?")  # "?": a chain adapter that does not count them
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
