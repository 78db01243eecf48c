"""The embedded cluster heals itself: kill -9 of the chain node, of ZooKeeper, of the operator (and
of the supervisor) while `boidctl up`'s cluster runs. Real processes throughout; the test reads only
what `boidctl status`, `boidctl up` and the servers themselves say.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
BOIDCTL = [sys.executable, "-m", "boidcluster.cli.main"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    env = {**os.environ, "BOID_HOME": str(tmp_path_factory.mktemp("healing") / "home")}
    env.pop("BOID_ZK", None)
    run = Runner(env)
    up = run("up", "--no-wait")
    assert up.returncode == 0, up.stderr
    yield run
    run("down")
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert env["BOID_HOME"] not in ps  # nothing left running


class Runner:
    def __init__(self, env: dict) -> None:
        self.env = env
        self.home = Path(env["BOID_HOME"])

    def __call__(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*BOIDCTL, *args], env=self.env, cwd=ROOT, capture_output=True, text=True,
                              timeout=300)

    def info(self) -> dict:
        return json.loads((self.home / "cluster.json").read_text())

    def status(self) -> tuple[int, dict]:
        r = self("status", "-o", "json")
        return r.returncode, {row["component"]: row for row in json.loads(r.stdout)["components"]}

    def wait(self, pred, timeout: float = 90.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                info = self.info()
            except (OSError, ValueError):
                info = {}
            if pred(info):
                return info
            time.sleep(0.3)
        raise AssertionError(f"not reached in {timeout}s; cluster.json: {info}")


def zombies_of(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "Z" and int(fields[1]) == pid:
                out.append(int(p.name))
    return out


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize("component", ["chain", "zookeeper", "operator"])
def test_a_component_killed_is_restarted_on_its_port_and_data_and_status_says_so(cluster, component):
    before = cluster.info()["components"][component]
    assert cluster.status()[0] == 0
    if component == "chain":
        os.killpg(before["pid"], signal.SIGKILL)  # the node's whole process group
    else:
        os.kill(before["pid"], signal.SIGKILL)
    if component == "operator":  # `up` on a cluster under repair waits for it, then applies
        again = cluster("up", "--no-wait", "-f", "manifests/examples/protocol.yaml")
        assert again.returncode == 0, again.stderr
    after = cluster.wait(lambda i: i["components"][component]["restarts"] == before["restarts"] + 1
                         and i["components"][component]["state"] == "running" and i["ready"])
    now = after["components"][component]
    assert now["address"] == before["address"] and now["pid"] != before["pid"]
    assert now["last_exit"] == "killed by SIGKILL"
    code, rows = cluster.status()
    assert code == 0 and rows[component]["health"] == "healthy"
    assert rows[component]["restarts"] == before["restarts"] + 1 and "last exit: killed by SIGKILL" in rows[component]["message"]
    # its data survived: ZooKeeper still has the applied objects, the chain its accounts and blocks
    assert "pi" in cluster("get", "job/pi", "-o", "name").stdout
    if component == "chain":
        block2 = httpx.post(f"{now['address']}/v1/chain/get_block", json={"block_num_or_id": 2}, timeout=5)
        assert block2.status_code == 200
        assert httpx.post(f"{now['address']}/v1/chain/get_account", json={"account_name": "alice"},
                          timeout=5).status_code == 200
        # `chain up` reuses the supervised node (same url), never a second node on its data
        up = cluster("chain", "up")
        assert up.returncode == 0 and f"chain running at {now['address']}" in up.stdout
        assert json.loads((cluster.home / "chain" / "node.json").read_text())["pid"] == now["pid"]
    assert zombies_of(after["pid"]) == []


def test_up_repairs_a_cluster_whose_supervisor_was_killed(cluster):
    before = cluster.info()
    os.kill(before["pid"], signal.SIGKILL)  # its children die with it
    for comp in before["components"].values():
        cluster.wait(lambda _: gone(comp["pid"]), timeout=30)
    code, rows = cluster.status()
    assert code == 1 and rows["supervisor"]["health"] == "down"
    up = cluster("up", "--no-wait", "-f", "manifests/examples/protocol.yaml")
    assert up.returncode == 0, up.stderr
    assert "is gone: starting a new one" in up.stderr
    after = cluster.info()
    assert after["pid"] != before["pid"]
    assert {n: c["address"] for n, c in after["components"].items()} == \
        {n: c["address"] for n, c in before["components"].items()}  # same ports
    code, rows = cluster.status()
    assert code == 0, rows
    assert "pi" in cluster("get", "job/pi", "-o", "name").stdout


def test_up_following_a_job_waits_out_a_killed_node_and_says_so(cluster, tmp_path):
    """kill -9 of the node while `boidctl up` follows a running job: nothing to do but wait; the job
    completes and `up` printed what the supervisor did."""
    import yaml

    job = yaml.safe_load((ROOT / "manifests" / "examples" / "job.yaml").read_text())
    job["metadata"]["name"] = "slow"
    job["spec"]["env"]["SAMPLES"] = "1500000"  # a few seconds per unit
    spec = tmp_path / "slow.yaml"
    spec.write_text(yaml.safe_dump(job))
    up = subprocess.Popen([*BOIDCTL, "up", "-f", str(spec)], env=cluster.env, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while "Running" not in cluster("get", "job/slow").stdout:
            assert time.monotonic() < deadline and up.poll() is None
            time.sleep(0.5)
        node = cluster.info()["components"]["chain"]
        os.killpg(node["pid"], signal.SIGKILL)
        out, err = up.communicate(timeout=300)
    finally:
        if up.poll() is None:
            up.kill()
    assert up.returncode == 0, out + err
    assert "job slow: Succeeded" in out
    assert "cluster: chain restarting: killed by SIGKILL" in err and "cluster: chain running" in err
    assert cluster.info()["components"]["chain"]["restarts"] == node["restarts"] + 1
