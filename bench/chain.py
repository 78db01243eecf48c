"""Chain throughput on the local node: newjob actions recorded per second at 1, 10 and 100 actions
per transaction (sequential, and with a few transactions in flight), and payout latency.

Prints figures; not a timed test. Usage: .venv/bin/python bench/chain.py [--units N]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from boidcluster.adapters.chain.boid import BoidChain, ChainAuth, ProtocolRow, UnitTime  # noqa: E402
from boidcluster.adapters.chain.rpc import RpcClient, action  # noqa: E402
from boidcluster.adapters.local.chainnode import LocalChain  # noqa: E402
from boidcluster.model.types import Asset  # noqa: E402

H = 3_600_000_000


def fresh(prefix: str) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz12345"
    return prefix + "".join(secrets.choice(alphabet) for _ in range(12 - len(prefix)))


async def bench(chain: LocalChain, units: int) -> None:
    a = chain.accounts
    demo = chain.demo_public_key()
    async with chain.client() as rpc:
        researcher, worker = fresh("bres"), fresh("bwrk")
        auth = {"threshold": 1, "keys": [{"key": demo, "weight": 1}], "accounts": [], "waits": []}
        await rpc.push_transaction([
            action("eosio", "newaccount", {"creator": "eosio", "name": n, "owner": auth, "active": auth}, "eosio@active")
            for n in (researcher, worker)
        ])
        for n in (researcher, worker):
            rpc.keys.labels[f"{n}@active"] = demo
        # the operator's least-privilege permissions (demo owner and fund delegate boidop to it)
        op = BoidChain(rpc, auth=ChainAuth())
        row = ProtocolRow("bench", a.owner, researcher, "/bench", a.fund, Asset.parse("1000.0000 BOID"), a.token,
                          Asset.parse("1.0000 BOID"), Asset.parse("1.0000 BOID"))
        await op.put_protocol(row)
        await op.register_worker(worker, researcher)

        next_id = 0

        def make(n: int) -> list[UnitTime]:
            nonlocal next_id
            out = [UnitTime(worker, next_id + i, 1_000_000) for i in range(n)]
            next_id += n
            return out

        print(f"chain: {chain.url}  (2 shared cores; node and client on one machine)")
        print(f"{'actions/trx':>12} {'in flight':>9} {'units':>6} {'seconds':>8} {'units/s':>9} {'trx/s':>7}")
        for batch in (1, 10, 100):
            for inflight in (1, 4):
                n = max(batch * inflight, min(units, 200 if batch == 1 else units))
                todo = make(n)
                per = -(-n // inflight)
                chunks = [todo[i : i + per] for i in range(0, n, per)]
                t0 = time.perf_counter()
                results = await asyncio.gather(*(op.record_units(researcher, c, batch_size=batch) for c in chunks))
                dt = time.perf_counter() - t0
                rec = sum(r.recorded for r in results)
                trx = sum(r.transactions for r in results)
                assert rec == n, (rec, n)
                print(f"{batch:>12} {inflight:>9} {n:>6} {dt:>8.2f} {n / dt:>9.0f} {trx / dt:>7.1f}")

        # payout latency: record one hour, pay it, time the payout push (applied in the next block)
        lat = []
        await op.payout(a.owner, researcher, worker)  # settle the time recorded above
        for _ in range(15):
            await op.record_units(researcher, [UnitTime(worker, next_id, H)])
            next_id += 1
            t0 = time.perf_counter()
            res = await op.payout(a.owner, researcher, worker)
            lat.append(time.perf_counter() - t0)
            assert res is not None and res.amount == Asset.parse("1.0000 BOID")
        lat.sort()
        print(f"payout latency over {len(lat)} payouts (push until the node answers with the trace): "
              f"median {statistics.median(lat) * 1000:.1f} ms, p90 {lat[int(len(lat) * 0.9) - 1] * 1000:.1f} ms, "
              f"max {lat[-1] * 1000:.1f} ms")
        info = await rpc.get_info()
        t0 = time.perf_counter()
        await rpc.wait_irreversible(info["head_block_num"] + 1, timeout=20)
        print(f"time for the last payout's block to become irreversible: {(time.perf_counter() - t0) * 1000:.0f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--units", type=int, default=1000, help="units per batched measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="boid-bench-chain-") as d:
        chain = LocalChain(d, die_with_parent=True)
        chain.start()
        try:
            if not chain.contracts_built():
                print("contracts/build has no clusterjobs/clusterreg: nothing to measure")
                return 0
            chain.bootstrap()
            asyncio.run(bench(chain, args.units))
        finally:
            chain.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
