"""`boidctl dashboard` and `boidctl operator run --dashboard-port` as a user runs them (real
processes, the session's ZooKeeper): they print the address, serve the cluster, stop on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from types import SimpleNamespace

from click.testing import CliRunner
from fixtures.operator import eventually, protocol_obj

from boidcluster.cli.main import cli

BOIDCTL = [sys.executable, "-m", "boidcluster.cli.main"]


def start(args: list[str], tmp_path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "BOID_HOME": str(tmp_path / "home")}
    env.pop("BOID_ZK", None)
    proc = subprocess.Popen([*BOIDCTL, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:  # the address is printed once serving
        seen.append(line)
        if m := re.search(r"dashboard on (http://\S+/)", line):
            return proc, m.group(1)
    raise AssertionError("".join(seen))


def snapshot(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url + "api/snapshot", timeout=5).read())


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_boidctl_dashboard_follows_the_store_and_stops_on_sigterm(zk_hosts, store, tmp_path):
    proc, url = start(["--zk", zk_hosts, "dashboard", "--port", "0", "--chain-url", "http://127.0.0.1:1",
                       "--refresh", "0.5"], tmp_path)
    try:
        eventually(lambda: snapshot(url)["cluster"]["connected"])
        assert snapshot(url)["jobs"] == []
        store.apply([protocol_obj("seen", SimpleNamespace(owner="own", researcher="res", fund="fund"))])
        eventually(lambda: [p["name"] for p in snapshot(url)["protocols"]] == ["seen"])
        snap = snapshot(url)
        assert snap["health"]["leader"] is None and snap["health"]["metrics"] is None  # no operator: said so
        # no chain node answers: the page says why money on chain is missing, the rest still shows
        assert snap["chain"]["url"] == "http://127.0.0.1:1" and snap["chain"]["error"]
        proto = snap["protocols"][0]
        assert proto["escrow"] is None and proto["registered"] is None and proto["moneySource"] == "status"
    finally:
        assert stop(proc) == 0


def test_operator_run_serves_the_dashboard_with_its_own_metrics(zk_hosts, tmp_path):
    proc, url = start(["--zk", zk_hosts, "operator", "run", "--backend", "none", "--dashboard-port", "0"], tmp_path)
    try:
        health = eventually(lambda: (h := snapshot(url)["health"])["leader"] and h["metrics"] and h)
        assert health["metrics"]["source"] == "this operator process" and health["metrics"]["error"] is None
        assert health["metrics"]["leading"] is True and health["contenders"] == [health["leader"]]
    finally:
        assert stop(proc) == 0


def test_boidctl_dashboard_reads_as_the_current_context(secured, tmp_path, monkeypatch):
    """On a secured cluster the standalone dashboard logs in as the current context's user: a wrong
    password is shown as such (never the password), and the right one reads the cluster."""
    home = tmp_path / "home"
    monkeypatch.setenv("BOID_HOME", str(home))
    monkeypatch.delenv("BOID_ZK", raising=False)
    monkeypatch.delenv("BOID_CONTEXT", raising=False)
    pw = tmp_path / "alice.pw"
    pw.write_text("not-" + secured.users["alice"].password + "\n")
    pw.chmod(0o600)
    for args in (["set-cluster", "c", "--server", secured.hosts], ["set-credentials", "alice", "--password-file", str(pw)],
                 ["set-context", "alice@c", "--cluster", "c", "--user", "alice"], ["use-context", "alice@c"]):
        assert CliRunner().invoke(cli, ["config", *args]).exit_code == 0
    proc, url = start(["dashboard", "--port", "0", "--refresh", "0.5"], tmp_path)
    try:
        err = eventually(lambda: snapshot(url)["cluster"]["error"])
        assert "authentication as user 'alice' failed" in err["message"] and "set-credentials" in err["hint"]
        assert secured.users["alice"].password not in json.dumps(snapshot(url))
    finally:
        assert stop(proc) == 0
    pw.write_text(secured.users["alice"].password + "\n")
    assert CliRunner().invoke(cli, ["config", "set-credentials", "alice", "--password-file", str(pw)]).exit_code == 0
    proc, url = start(["dashboard", "--port", "0", "--refresh", "0.5"], tmp_path)
    try:
        eventually(lambda: snapshot(url)["cluster"]["connected"])
        assert snapshot(url)["cluster"]["error"] is None
    finally:
        assert stop(proc) == 0
