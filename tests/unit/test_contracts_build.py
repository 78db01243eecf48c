"""The checked-in contract binaries are exactly what the checked-in sources build to.

contracts/build/*.wasm|abi are what the bootstrap deploys and what the chain adapter reads its ABI
from, so they must never drift from contracts/src/. proton-tsc builds are byte-for-byte reproducible,
so this rebuilds both contracts in a temporary copy of contracts/ (reusing contracts/node_modules,
which `make setup` installs with `npm ci`) and compares bytes. About 20 s on two cores.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CONTRACTS = Path(__file__).resolve().parents[2] / "contracts"
OUTPUTS = ("clusterjobs.wasm", "clusterjobs.abi", "clusterreg.wasm", "clusterreg.abi")


@pytest.mark.slow
def test_fresh_build_reproduces_checked_in_contracts(tmp_path: Path) -> None:
    if shutil.which("npx") is None:
        pytest.skip("npx (Node.js/npm) is not installed, so the contracts cannot be rebuilt; "
                    "`make setup` installs it")
    modules = CONTRACTS / "node_modules"
    assert (modules / ".bin" / "proton-asc").exists(), (
        "contracts/node_modules has no proton-asc: run `make setup` (npm ci in contracts/)")

    work = tmp_path / "contracts"
    work.mkdir()
    shutil.copytree(CONTRACTS / "src", work / "src",
                    ignore=shutil.ignore_patterns("target", "build.log"))
    for name in ("build.sh", "package.json"):
        shutil.copy2(CONTRACTS / name, work / name)
    (work / "node_modules").symlink_to(modules, target_is_directory=True)

    proc = subprocess.run(["sh", "build.sh", "out"], cwd=work, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"contract build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"

    for name in OUTPUTS:
        built = (work / "out" / name).read_bytes()
        committed = (CONTRACTS / "build" / name).read_bytes()
        assert built == committed, (
            f"contracts/build/{name} differs from a fresh build of contracts/src: "
            "run `make contracts` and commit contracts/build/")


@pytest.mark.slow
def test_fresh_build_reproduces_the_hostile_test_token(tmp_path: Path) -> None:
    """The attack tests deploy contracts/tests/hostile/build: it too is what its source builds to."""
    if shutil.which("npx") is None:
        pytest.skip("npx (Node.js/npm) is not installed; `make setup` installs it")
    work = tmp_path / "hostile"
    work.mkdir()
    shutil.copy2(CONTRACTS / "tests" / "hostile" / "hostile.contract.ts", work)
    (tmp_path / "node_modules").symlink_to(CONTRACTS / "node_modules", target_is_directory=True)
    proc = subprocess.run(["npx", "--no-install", "proton-asc", "hostile.contract.ts"], cwd=work,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"hostile build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    for ext in ("wasm", "abi"):
        built = (work / "target" / f"hostile.contract.{ext}").read_bytes()
        assert built == (CONTRACTS / "tests" / "hostile" / "build" / f"hostile.{ext}").read_bytes(), (
            f"contracts/tests/hostile/build/hostile.{ext} differs from a fresh build: rebuild and commit it")
