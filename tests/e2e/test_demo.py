"""The main job as a newcomer runs it: `boidctl up` on the examples, `report`, `down`.

Real everything: the supervisor process starts ZooKeeper, the chain node and the operator with
local workers running each unit in a sandboxed podman container of the demo's python image (the
default runtime); the test only reads what the commands print and what stays running.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from boidcluster.adapters.local.runtime import SCOPE_LABEL, scope_of

ROOT = Path(__file__).resolve().parents[2]
BOIDCTL = [sys.executable, "-m", "boidcluster.cli.main"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.fixture
def home(tmp_path):
    env = {**os.environ, "BOID_HOME": str(tmp_path / "home")}
    env.pop("BOID_ZK", None)
    yield env
    subprocess.run([*BOIDCTL, "down"], env=env, cwd=ROOT, capture_output=True, timeout=120)


@pytest.mark.usefixtures("contracts_deployed")
def test_up_runs_the_demo_job_pays_contributors_and_down_stops_everything(home):
    up = subprocess.run([*BOIDCTL, "up"], env=home, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "(podman runtime)" in up.stderr and "worker alice: ready - podman runtime ok" in up.stderr
    out = up.stdout
    assert "job pi: Succeeded - 8/8 units (8 validated by quorum)" in out
    results = next(line.split()[0] for line in out.splitlines() if "results.jsonl" in line)
    lines = [json.loads(x) for x in Path(results).read_text().splitlines()]
    assert sorted(x["seed"] for x in lines) == list(range(1, 9))
    assert 3.0 < sum(x["pi"] for x in lines) / len(lines) < 3.3
    for who in ("alice", "bob"):
        assert f"paid to {who}: " in out
    # the dashboard's address is printed, and the page's data says what the summary says
    dashboard = next(line.split()[-1] for line in up.stderr.splitlines() if line.startswith("dashboard: "))
    snap = json.loads(urllib.request.urlopen(dashboard + "api/snapshot", timeout=10).read())
    assert [(j["name"], j["phase"], j["progress"]) for j in snap["jobs"]] == [("pi", "Succeeded", "8/8 (100%)")]

    # `up` returns once every contributor has been paid once; units accepted after the first batch
    # may still be on their way to the chain (the ledger records them on its next pass): allow that
    deadline = time.monotonic() + 60
    while True:
        report = subprocess.run([*BOIDCTL, "report", "monte-carlo"], env=home, cwd=ROOT, capture_output=True,
                                text=True, timeout=120)
        if report.returncode == 0 or time.monotonic() > deadline or "not on chain yet" not in report.stdout:
            break
        time.sleep(1)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "ZooKeeper records and the chain agree." in report.stdout
    # ...and the page's money is the report's: the escrow's books and each contributor's owed and paid
    asset = r"(-?\d+\.\d+ [A-Z]+)"
    books = re.search(rf"^escrow: deposited {asset} = paid {asset} \+ owed {asset} \+ withdrawn {asset} "
                      rf"\+ free {asset}$", report.stdout, re.M)
    rows = {m.group(1): m.groups()[1:] for m in re.finditer(
        rf"^([a-z1-5.]+)\s+(?:worker|dispatcher)\s+\S+\s+([\d.]+)\s+[\d.]+\s+{asset}\s+{asset}\s+yes$",
        report.stdout, re.M)}
    assert books and {"alice", "bob"} <= set(rows), report.stdout

    def money():
        snap = json.loads(urllib.request.urlopen(dashboard + "api/snapshot", timeout=10).read())
        [p] = [p for p in snap["protocols"] if p["name"] == "monte-carlo"]
        e = p["escrow"] or {}
        per = {c["account"]: r for c in snap["contributors"] for r in c["perProtocol"] if r["protocol"] == "monte-carlo"}
        return (tuple((e.get(k) or {}).get("text") for k in ("deposited", "paid", "owed", "withdrawn", "free")),
                {a: (per[a]["time"], per[a]["owed"]["text"], per[a]["paid"]["text"]) for a in rows if a in per})
    deadline = time.monotonic() + 30  # the page reads the chain every few seconds
    while money() != (books.groups(), rows) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert money() == (books.groups(), rows), report.stdout

    info = json.loads((Path(home["BOID_HOME"]) / "cluster.json").read_text())
    node = json.loads((Path(home["BOID_HOME"]) / "chain" / "node.json").read_text())
    again = subprocess.run([*BOIDCTL, "up", "--no-wait"], env=home, cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0 and "already running" in again.stderr
    assert "job/pi unchanged" in again.stdout

    down = subprocess.run([*BOIDCTL, "down"], env=home, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0 and "stopped" in down.stdout
    assert not alive(info["pid"]) and not alive(node["pid"])
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert home["BOID_HOME"] not in ps  # no ZooKeeper, node or worker left behind
    scope = scope_of(Path(home["BOID_HOME"]) / "storage")
    left = subprocess.run(["podman", "ps", "-a", "-q", "--filter", f"label={SCOPE_LABEL}={scope}"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert left == []  # no unit container either
