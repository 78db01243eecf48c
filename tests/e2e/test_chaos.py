"""The operator killed (SIGKILL) at random points while a replicated job runs on the real chain:
the job still completes, every unit's time is on chain exactly once, and every contributor is paid
exactly for the time recorded — never twice. A real `boidctl operator run` process each time."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from boidcluster.adapters.chain import credit
from boidcluster.adapters.chain.blocking import BlockingChain
from boidcluster.adapters.local.images import DEMO_IMAGE, ensure_demo_image
from boidcluster.adapters.store import Store
from boidcluster.cli.main import cli
from boidcluster.model.kinds import parse_resource
from boidcluster.model.resources import Job, Protocol
from boidcluster.model.types import Asset

pytestmark = pytest.mark.usefixtures("contracts_deployed")


def specs(a, slots: list[str]) -> list[dict]:
    meta = lambda name: {"name": name}  # noqa: E731
    proto = {"apiVersion": "cluster.boid.com/v1alpha1", "kind": "Protocol", "metadata": meta("chaos"),
             "spec": {"title": "Chaos", "owner": a.owner, "researcher": a.researcher, "datadir": "chaos",
                      "fund": {"account": a.fund, "quantity": "1000.0000 BOID"},
                      "payRates": {"worker": "360.0000 BOID", "dispatcher": "180.0000 BOID"},
                      "payout": {"interval": "1m", "minimum": "0.0001 BOID"}}}
    contribs = [{"apiVersion": "cluster.boid.com/v1alpha1", "kind": "Contributor", "metadata": meta(f"c{i}"),
                 "spec": {"account": w, "role": "worker", "researchers": [a.researcher]}}
                for i, w in enumerate(slots)]
    job = {"apiVersion": "cluster.boid.com/v1alpha1", "kind": "Job", "metadata": meta("sweep"),
           "spec": {"protocol": "chaos", "image": DEMO_IMAGE,  # units run in podman containers
                    "command": ["sh", "-c", "sleep 0.3; echo $BOID_UNIT_INDEX > $BOID_OUTPUT_DIR/out.txt"],
                    "workUnits": {"count": 12}, "parallelism": 2, "retries": 3,
                    "replication": {"replicas": 2, "quorum": 2}, "output": {"path": "out", "reduce": "concat"}}}
    return [proto, *contribs, job]


def test_operator_killed_at_random_points_completes_once_and_pays_once(zk_hosts, chain_world, actors, tmp_path):
    a = actors
    slots = list(a.workers)
    ensure_demo_image()
    keys = tmp_path / "keys.json"
    chain_world.operator_client().keys.write(keys)
    store = Store(zk_hosts)
    for d in specs(a, slots):
        store.create(parse_resource(d))
    reg = chain_world.fund_protocol(store.get(Protocol, "chaos"), "1000.0000 BOID")  # the owner's deposit
    cmd = [sys.executable, "-m", "boidcluster.cli.main", "--zk", zk_hosts, "operator", "run",
           "--chain-url", chain_world.url, "--keys", str(keys), "--storage", f"file://{tmp_path / 'storage'}",
           *[x for s in slots for x in ("--slot", s)]]
    rng = random.Random(7)
    kills = 0
    progress_at_kill: list[int] = []

    def validated() -> int:
        j = store.get(Job, "sweep")
        return j.status.units.validated if j.status and j.status.units else 0

    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            try:
                if kills < 4:
                    # kill shortly after the job moved forward: always mid-job, whatever the machine's speed
                    before = validated()
                    while validated() <= before and time.monotonic() < deadline:
                        time.sleep(0.05)
                    time.sleep(rng.uniform(0.0, 0.4))
                    os.killpg(proc.pid, signal.SIGKILL)  # the operator and its unit subprocesses
                    proc.wait(10)
                    kills += 1
                    progress_at_kill.append(validated())
                    continue
                while time.monotonic() < deadline:
                    job = store.get(Job, "sweep")
                    p = store.get(Protocol, "chaos")
                    paid = p.status.paid if p.status else {}
                    if job.status and job.status.phase in ("Succeeded", "Failed") and set(slots) <= set(paid):
                        break
                    time.sleep(0.5)
                break
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(20)
        assert kills == 4
        assert any(0 < v < 12 for v in progress_at_kill), progress_at_kill  # killed mid-job, not around it
        job = store.get(Job, "sweep")
        assert job.status.phase == "Succeeded", job.status
        assert job.status.units.validated == 12
        out = (tmp_path / "storage" / "chaos" / "out" / "results").read_text().split()
        assert out == [str(i) for i in range(12)]  # every unit exactly once, in order

        # ZooKeeper's accepted time == the chain's recorded time, per contributor (report exits 0)
        r = CliRunner().invoke(cli, ["--zk", zk_hosts, "report", "chaos", "--chain-url", chain_world.url])
        assert r.exit_code == 0, r.output
        # each contributor was paid exactly once for exactly the time recorded
        chain = BlockingChain.open(chain_world.url, chain_world.operator_client().keys)
        try:
            p = store.get(Protocol, "chaos")
            for w in slots:
                total = chain.contributor_row("worker", reg.id, w).total_time
                acct = chain.acct_row(reg.id, w)
                # owed at recording, exactly floor(time x rate) overall; paid once, from the chain's rows
                assert acct.paid + acct.owed == credit(total, Asset.parse("360.0000 BOID"))[0]
                assert p.status.paid[w] == acct.paid
                assert chain.fund_balance(w, "eosio.token", p.spec.fund.quantity.symbol) == acct.paid
        finally:
            chain.close()
    finally:
        store.close()
