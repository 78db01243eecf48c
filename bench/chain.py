"""Recording throughput and on-chain RAM per recorded unit: contracts v1 (one `newjob` row per unit)
against contracts v2 (numbered batches, `recordbatch`), in the same run on one local node; and
payout latency (v2).

v1 is deployed from git (commit V1_COMMIT's contracts/build/clusterjobs.*) to its own account, so
both are measured side by side. RAM is the node's own `ram_usage` of every account that pays for
rows (v1: the operator; v2: the operator, clusterjobs, clusterreg and the protocol's registrar),
before and after; "per unit" divides the growth by the units recorded.

Prints figures; not a timed test. Usage: .venv/bin/python bench/chain.py [--units N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))

from boidcluster.adapters.chain.abi import abi_to_bin  # noqa: E402
from boidcluster.adapters.chain.boid import BoidChain, ProtocolTerms, UnitTime  # noqa: E402
from boidcluster.adapters.chain.rpc import RpcClient, action  # noqa: E402
from boidcluster.adapters.local.chainnode import LocalChain  # noqa: E402
from boidcluster.model.types import Asset  # noqa: E402

H = 3_600_000_000
V1_COMMIT = "94852ea"  # the last commit with contracts v1 (per-unit job rows)
V1_ACTIONS_PER_TRX = 100  # v1's best sequential batching (bench/chain.py of v1: 100 newjob per transaction)
V2_UNITS_PER_BATCH = 400  # the ledger's batch size (reconcilers/ledger.py BATCH_UNITS)


def fresh(prefix: str) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz12345"
    return prefix + "".join(secrets.choice(alphabet) for _ in range(12 - len(prefix)))


async def ram(rpc: RpcClient, accounts: list[str]) -> int:
    return sum([(await rpc.get_account(a))["ram_usage"] for a in accounts])


async def new_accounts(rpc: RpcClient, demo: str, *names: str) -> None:
    auth = {"threshold": 1, "keys": [{"key": demo, "weight": 1}], "accounts": [], "waits": []}
    await rpc.push_transaction([action("eosio", "newaccount", {"creator": "eosio", "name": n, "owner": auth,
                                                               "active": auth}, "eosio@active") for n in names])
    for n in names:
        rpc.keys.labels[f"{n}@active"] = demo


async def v1(rpc: RpcClient, demo: str, units: int) -> tuple[float, float]:
    """(units/s, RAM bytes per unit) of contracts v1: `newjob` rows, V1_ACTIONS_PER_TRX per transaction."""
    jobs, op, researcher, worker = fresh("vjob"), fresh("vop"), fresh("vres"), fresh("vwrk")
    await new_accounts(rpc, demo, jobs, op, researcher, worker)
    wasm = subprocess.run(["git", "show", f"{V1_COMMIT}:contracts/build/clusterjobs.wasm"], cwd=ROOT,
                          capture_output=True, check=True).stdout
    abi = json.loads(subprocess.run(["git", "show", f"{V1_COMMIT}:contracts/build/clusterjobs.abi"], cwd=ROOT,
                                    capture_output=True, check=True).stdout)
    await rpc.push_transaction([
        action("eosio", "setcode", {"account": jobs, "vmtype": 0, "vmversion": 0, "code": wasm}, f"{jobs}@active"),
        action("eosio", "setabi", {"account": jobs, "abi": abi_to_bin(abi)}, f"{jobs}@active"),
    ])
    await rpc.push_action(jobs, "conntoreg", {"registry_contract": "clusterreg", "operator": op}, f"{jobs}@active")
    await rpc.push_action(jobs, "regworker", {"worker": worker, "researcher": researcher}, f"{op}@active")
    before = await ram(rpc, [op, jobs])
    t0 = time.perf_counter()
    for start in range(0, units, V1_ACTIONS_PER_TRX):
        await rpc.push_transaction([
            action(jobs, "newjob", {"researcher": researcher, "worker": worker, "id": i, "time": 1_000_000}, f"{op}@active")
            for i in range(start, min(units, start + V1_ACTIONS_PER_TRX))])
    dt = time.perf_counter() - t0
    return units / dt, (await ram(rpc, [op, jobs]) - before) / units


async def v2(chain: LocalChain, rpc: RpcClient, units: int) -> tuple[float, float, BoidChain, ProtocolTerms, str]:
    """(units/s, RAM bytes per unit) of contracts v2: `recordbatch`, V2_UNITS_PER_BATCH units per batch."""
    a = chain.accounts
    worker = fresh("bwrk")
    await new_accounts(rpc, chain.demo_public_key(), worker)
    rpc.keys.labels[f"{a.researcher}@active"] = chain.demo_public_key()
    user = BoidChain(rpc)
    terms = ProtocolTerms(owner=a.owner, name=fresh("b"), researcher=a.researcher, title="bench", datadir="/bench",
                          tokencontract=a.token, worker_pay_rate=Asset.parse("1.0000 BOID"),
                          dispatcher_pay_rate=Asset.parse("1.0000 BOID"))
    await user.register_protocol(terms, researcher_signs=True)
    await user.deposit(a.owner, a.owner, terms.name, Asset.parse("1000.0000 BOID"))
    op = BoidChain(RpcClient(chain.url, chain.operator_keys()))
    await op.register("worker", worker, a.owner, terms.name)
    payers = [a.operator, a.jobs, a.reg, a.owner]
    before = await ram(rpc, payers)
    t0 = time.perf_counter()
    seq = 0
    for start in range(0, units, V2_UNITS_PER_BATCH):
        seq += 1
        await op.record_batch(a.owner, terms.name, seq, "worker",
                              [UnitTime(worker, i, 1_000_000) for i in range(start, min(units, start + V2_UNITS_PER_BATCH))])
    dt = time.perf_counter() - t0
    return units / dt, (await ram(rpc, payers) - before) / units, op, terms, worker


async def bench(chain: LocalChain, units: int) -> None:
    demo = chain.demo_public_key()
    async with chain.client() as rpc:
        print(f"chain: {chain.url}  (2 shared cores; node and client on one machine); {units} units each")
        v1_rate, v1_ram = await v1(rpc, demo, units)
        v2_rate, v2_ram, op, terms, worker = await v2(chain, rpc, units)
        print(f"{'contracts':<44} {'units/s':>9} {'RAM bytes/unit':>15} {'time for ' + str(units):>15}")
        print(f"{'v1 newjob rows, ' + str(V1_ACTIONS_PER_TRX) + ' actions/trx (baseline)':<44} {v1_rate:>9.0f} "
              f"{v1_ram:>15.2f} {units / v1_rate:>14.2f}s")
        print(f"{'v2 recordbatch, ' + str(V2_UNITS_PER_BATCH) + ' units/batch':<44} {v2_rate:>9.0f} "
              f"{v2_ram:>15.4f} {units / v2_rate:>14.2f}s")
        print(f"v2 / v1: {v2_rate / v1_rate:.1f}x the units per second, "
              f"{(v2_ram / v1_ram) if v1_ram else float('nan'):.5f}x the RAM per unit")

        # payout latency (v2): record one hour, pay it
        lat = []
        seq = (await op.batch_seq((await op.require_protocol(terms.owner, terms.name)).id)).seq
        await op.payout(terms.owner, terms.name, worker)
        for i in range(15):
            seq += 1
            await op.record_batch(terms.owner, terms.name, seq, "worker", [UnitTime(worker, 10**9 + i, H)])
            t0 = time.perf_counter()
            res = await op.payout(terms.owner, terms.name, worker)
            lat.append(time.perf_counter() - t0)
            assert res is not None and res.amount == Asset.parse("1.0000 BOID")
        lat.sort()
        print(f"payout latency over {len(lat)} payouts (push until the node answers with the trace): "
              f"median {statistics.median(lat) * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms")
        await op.rpc.aclose()


def main() -> int:
    signal.signal(signal.SIGTERM, signal.default_int_handler)   # killed: temporary directories and servers still cleaned up
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=10_000, help="units recorded by each version")
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
