"""LocalChain: idempotent bootstrap, status, least-privilege wiring, clean stop of the process group."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import time

import pytest

from boidcluster.adapters.local.chainnode import LocalChain, NodeBusy

pytestmark = [pytest.mark.chain]


def test_bootstrap_again_changes_nothing(local_chain):
    assert local_chain.bootstrap()["done"] == []


def test_status_of_the_session_node(local_chain):
    st = local_chain.status()
    assert st.running and st.url == local_chain.url and st.head_block_num > 0
    assert st.contracts["eosio.token"]
    if local_chain.contracts_built():
        assert st.bootstrapped


def test_key_file_is_private(local_chain):
    mode = stat.S_IMODE(os.stat(local_chain.key_file).st_mode)
    assert mode == 0o600


@pytest.mark.anyio
async def test_operator_permissions_are_linked_as_interface_md_says(local_chain):
    if not local_chain.contracts_built():
        pytest.skip("contracts not built")
    async with local_chain.client() as rpc:
        def links(acct, perm):
            return {(l["account"], l["action"]) for p in acct["permissions"] if p["perm_name"] == perm for l in p["linked_actions"]}

        op = await rpc.get_account("boidoperator")
        assert links(op, "operate") == {("clusterjobs", a) for a in (
            "regworker", "delworker", "regdisptch", "deldisptch", "recordbatch")} | {("clusterreg", a) for a in ("payout", "reserve")}
        # contracts v2: no owner or fund account delegates anything to the operator
        for user in ("boidteam", "boidfund", "researcher1"):
            acct = await rpc.get_account(user)
            assert {p["perm_name"] for p in acct["permissions"]} == {"owner", "active"}
            assert all(a["permission"]["actor"] != "boidoperator" for p in acct["permissions"]
                       for a in p["required_auth"]["accounts"])
        reg = {p["perm_name"]: p["required_auth"] for p in (await rpc.get_account("clusterreg"))["permissions"]}
        assert {"actor": "clusterreg", "permission": "eosio.code"} in [a["permission"] for a in reg["active"]["accounts"]]
        jobs = {p["perm_name"]: p["required_auth"] for p in (await rpc.get_account("clusterjobs"))["permissions"]}
        assert {"actor": "clusterjobs", "permission": "eosio.code"} in [a["permission"] for a in jobs["active"]["accounts"]]


def _group_members(pgid: int) -> list[int]:
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(p))
    return out


def test_stop_ends_the_whole_process_group_and_restart_keeps_state(tmp_path):
    chain = LocalChain(tmp_path / "node", die_with_parent=True)
    try:
        chain.start()
        pid = chain.status().pid
        assert _group_members(pid)
        # another process (e.g. `boidctl chain down`) finds the node through the state dir
        other = LocalChain(tmp_path / "node")
        assert other.status().running
        assert other.stop() is True
        assert _group_members(pid) == []
        assert not chain.status().running
        assert other.stop() is False
        chain.start()  # the same chain resumes from its data dir
        assert chain.status().head_block_num > 0
    finally:
        chain.stop()


def _kill9(pid: int) -> None:
    os.killpg(pid, signal.SIGKILL)  # state left dirty, fork database not written
    while _group_members(pid):
        time.sleep(0.05)


async def _head(chain: LocalChain) -> int:
    async with chain.client() as rpc:
        return (await rpc.get_info())["head_block_num"]


async def _irreversible_past(chain: LocalChain, num: int, timeout: float = 30.0) -> int:
    """Wait until block `num` is irreversible (one producer: about a block later); the new LIB."""
    deadline = time.monotonic() + timeout
    async with chain.client() as rpc:
        while True:
            lib = (await rpc.get_info())["last_irreversible_block_num"]
            if lib >= num:
                return lib
            assert time.monotonic() < deadline, f"block {num} not irreversible within {timeout}s (LIB {lib})"
            await asyncio.sleep(0.1)


async def _history(chain: LocalChain) -> tuple[int, bool, str]:
    """(last irreversible block, alice exists, id of block 2): what a replay must keep."""
    async with chain.client() as rpc:
        info = await rpc.get_info()
        block2 = await rpc.call("/v1/chain/get_block", {"block_num_or_id": 2})
        return info["last_irreversible_block_num"], await rpc.account_exists("alice"), block2["id"]


def test_kill9_then_restart_replays_its_own_block_log_on_the_same_port_keeping_history(tmp_path):
    chain = LocalChain(tmp_path / "node", die_with_parent=True)
    try:
        url = chain.start()
        chain.bootstrap()
        time.sleep(1.5)  # the bootstrap's blocks become irreversible
        lib, alice, block2 = asyncio.run(_history(chain))
        assert alice
        _kill9(chain.status().pid)
        again = LocalChain(tmp_path / "node", die_with_parent=True)
        assert again.start() == url  # same port: the operator's chain url stays valid
        lib2, alice2, block2_again = asyncio.run(_history(again))
        assert lib2 >= lib and alice2 and block2_again == block2  # nothing was deleted
        assert again.bootstrap()["done"] == []
        assert sorted(os.listdir(tmp_path / "node" / "data")) == ["blocks", "snapshots", "state"]
        # a torn last block (a write cut by the kill): every whole block is recovered, the old log kept.
        # The block log holds irreversible blocks only: first let the block that created alice (at
        # or before today's head) and one more become irreversible, so the torn block is not hers.
        lib = asyncio.run(_irreversible_past(again, asyncio.run(_head(again)) + 1))
        _kill9(again.status().pid)
        with open(tmp_path / "node" / "data" / "blocks" / "blocks.log", "r+b") as f:
            f.truncate(f.seek(0, 2) - 37)
        third = LocalChain(tmp_path / "node", die_with_parent=True)
        assert third.start() == url
        lib3, alice3, block2_third = asyncio.run(_history(third))
        assert alice3 and block2_third == block2 and lib3 >= lib - 1
        assert [p.name for p in (tmp_path / "node" / "data").glob("blocks-*")]  # the old log, kept
        third.stop()
    finally:
        chain.stop()


def test_two_nodes_never_run_on_one_data_dir(tmp_path):
    """The node holds node.lock: a second start adopts the running node, even when node.json was
    removed, and a direct spawn is refused; stopping a stale handle leaves the live node's node.json."""
    first = LocalChain(tmp_path / "node", die_with_parent=True)
    try:
        url = first.start()
        pid = first.status().pid
        (tmp_path / "node" / "node.json").unlink()  # what the old supervisor's stop did
        second = LocalChain(tmp_path / "node", die_with_parent=True)
        assert second.start() == url and second.pid == pid
        with pytest.raises(NodeBusy, match=f"pid {pid} already runs"):
            second._spawn(10, [])
        nodes = {os.getpgid(int(p)) for p in os.listdir("/proc") if p.isdigit() and _is_node_of(int(p), tmp_path / "node")}
        assert nodes == {pid}  # one node (its processes share one group)
        # a handle whose own node died must not delete the node.json of the node now running
        (tmp_path / "node" / "node.json").write_text(json.dumps({"pid": pid, "port": first.port}))
        stale = LocalChain(tmp_path / "node")
        stale._proc = subprocess.Popen(["true"])
        stale._proc.wait()
        stale.stop()
        assert json.loads((tmp_path / "node" / "node.json").read_text())["pid"] == pid
    finally:
        first.stop()
    assert not _group_members(pid)


def _is_node_of(pid: int, state: os.PathLike) -> bool:
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    except OSError:
        return False
    return b"nodeos" in cmd and str(state).encode() + b"/data" in cmd


def test_its_port_taken_by_another_process_is_a_clear_error_not_a_replay(tmp_path):
    import socket

    chain = LocalChain(tmp_path / "node", die_with_parent=True)
    chain.start()
    port = chain.port
    chain.stop()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(RuntimeError, match=f"port {port} .* is used by another process"):
            LocalChain(tmp_path / "node", die_with_parent=True).start()
    assert sorted(os.listdir(tmp_path / "node" / "data")) == ["blocks", "snapshots", "state"]
    again = LocalChain(tmp_path / "node", die_with_parent=True)
    try:
        assert again.start() == f"http://127.0.0.1:{port}"
    finally:
        again.stop()
