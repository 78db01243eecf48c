"""`boidctl chain up|down|status`: a local node a developer starts and stops by hand."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

BOIDCTL = [sys.executable, "-m", "boidcluster.cli.main", "chain"]


@pytest.mark.usefixtures("contracts_deployed")
def test_chain_up_status_down(tmp_path):
    env = {**os.environ, "BOID_HOME": str(tmp_path)}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*BOIDCTL, *args], env=env, capture_output=True, text=True, timeout=120)

    assert run("status").returncode == 1  # not running: says so, non-zero
    try:
        up = run("up")
        assert up.returncode == 0, up.stderr
        assert "chain running at http://127.0.0.1:" in up.stdout
        again = run("up")  # idempotent: reuses the node, bootstrap does nothing new
        assert again.returncode == 0 and "bootstrap steps run: 0" in again.stdout
        st = run("status")
        assert st.returncode == 0 and "contracts deployed" in st.stdout
    finally:
        down = run("down")
    assert down.returncode == 0 and "chain stopped" in down.stdout
    assert run("status").returncode == 1
