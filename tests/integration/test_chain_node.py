"""LocalChain: idempotent bootstrap, status, least-privilege wiring, clean stop of the process group."""

from __future__ import annotations

import os
import stat

import pytest

from boidcluster.adapters.local.chainnode import LocalChain

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
            "regworker", "delworker", "regdisptch", "deldisptch", "recordbatch")} | {("clusterreg", "payout")}
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


def test_restart_after_an_unclean_stop_replays(tmp_path):
    import signal
    import time

    chain = LocalChain(tmp_path / "node", die_with_parent=True)
    try:
        chain.start()
        pid = chain.status().pid
        time.sleep(0.6)  # a block or two
        os.killpg(pid, signal.SIGKILL)  # state left dirty
        while _group_members(pid):
            time.sleep(0.05)
        again = LocalChain(tmp_path / "node", die_with_parent=True)
        again.start()
        assert again.status().running and again.status().head_block_num > 0
        again.stop()
    finally:
        chain.stop()
