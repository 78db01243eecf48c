"""Protocol and Contributor reconcilers through a running Operator, on a real ZooKeeper and a real
Antelope node (the session's local chain), with file storage.

Every test gets fresh chain accounts, so tests never share chain state.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from click.testing import CliRunner

from boidcluster.adapters.chain import ProtocolRow
from boidcluster.cli.main import cli
from boidcluster.model.resources import Contributor, Job, Protocol
from boidcluster.model.types import Asset
from boidcluster.reconcilers.protocol import can_still_owe, reservation
from fixtures.netproxy import Proxy
from fixtures.operator import cond, eventually, protocol_obj as protocol

pytestmark = pytest.mark.usefixtures("contracts_deployed")


def test_protocol_shows_the_escrow_the_owner_funded_and_never_writes_the_registry(world_factory, actors, tmp_path,
                                                                                   chain_world):
    op, store, chain = world_factory()
    store.create(protocol("pi", actors))
    p = eventually(lambda: (o := store.get(Protocol, "pi")) and cond(o, "Registered") == "False" and o)
    reg = p.status.condition("Registered")
    assert reg.reason == "NotRegistered" and "boidctl fund pi AMOUNT" in reg.message
    assert cond(p, "Reconciled") == "True"  # waiting for the owner is not an error to back off from
    assert (tmp_path / "storage" / "pi").is_dir()

    chain_world.fund_protocol(p, "40.0000 BOID")  # the owner, with their own key
    op.enqueue("Protocol", "pi")
    p = eventually(lambda: (o := store.get(Protocol, "pi")) and cond(o, "Ready") == "True" and o)
    assert cond(p, "Registered") == cond(p, "StorageReady") == cond(p, "Funded") == "True"
    assert (str(p.status.fund_balance), str(p.status.escrow), str(p.status.owed)) == \
        ("40.0000 BOID", "40.0000 BOID", "0.0000 BOID")
    row = chain.protocol_row(actors.owner, "pi")
    assert row.title == "Test protocol" and str(row.worker_pay_rate) == "1.0000 BOID" and row.accepted

    p.spec.pay_rates.worker = p.spec.pay_rates.worker.parse("2.5000 BOID")
    store.update(p)
    got = eventually(lambda: (o := store.get(Protocol, "pi")) and cond(o, "Registered") == "False" and o)
    assert got.status.condition("Registered").reason == "TermsDiffer"
    assert "worker_pay_rate" in got.status.condition("Registered").message
    assert str(chain.protocol_row(actors.owner, "pi").worker_pay_rate) == "1.0000 BOID"  # untouched
    chain_world.fund_protocol(got)
    op.enqueue("Protocol", "pi")
    eventually(lambda: cond(store.get(Protocol, "pi"), "Registered") == "True")

    store.delete(Protocol, "pi")
    eventually(lambda: store.list(Protocol) == [])
    assert chain.protocol_row(actors.owner, "pi").balance == Asset.parse("40.0000 BOID")  # the owner's to withdraw


def test_funded_compares_free_escrow_with_what_running_jobs_can_still_owe(actors):
    p = protocol("big", actors)
    job = Job.model_validate({
        "apiVersion": "cluster.boid.com/v1alpha1", "kind": "Job", "metadata": {"name": "j"},
        "spec": {"protocol": "big", "image": "x", "command": ["true"], "workUnits": {"count": 10},
                 "unitTimeout": "30m", "replication": {"replicas": 2}},
        "status": {"phase": "Running", "units": {"total": 10, "validated": 4}}})
    # 6 units x 2 replicas x 0.5 h x 1 BOID/h
    assert can_still_owe(p, [job]) == Asset.parse("6.0000 BOID")
    job.spec.unit_timeout = None
    assert can_still_owe(p, [job]) is None  # no bound
    job.status.phase = "Succeeded"
    assert can_still_owe(p, [job]) == Asset.parse("0.0000 BOID")


def test_reservation_is_what_running_jobs_can_still_owe_capped_at_the_free_escrow(actors):
    sym = Asset.parse("0.0000 BOID").symbol
    row = ProtocolRow(name="p", owner=actors.owner, researcher=actors.researcher, id=1, accepted=True, title="t",
                      datadir="/p", tokencontract="eosio.token", worker_pay_rate=Asset(10_000, sym),
                      dispatcher_pay_rate=Asset(5_000, sym), deposited=Asset(100_000, sym),
                      balance=Asset(100_000, sym), owed=Asset(30_000, sym), paid=Asset(0, sym),
                      withdrawn=Asset(0, sym))
    assert reservation(row, Asset(60_000, sym)) == Asset(60_000, sym)  # the bound
    assert reservation(row, Asset(90_000, sym)) == Asset(70_000, sym)  # capped at balance - owed
    assert reservation(row, None) == Asset(70_000, sym)  # no bound: all the free escrow
    assert reservation(row, Asset(0, sym)) == Asset(0, sym)  # no running job
    short = dataclasses.replace(row, owed=Asset(120_000, sym))
    assert reservation(short, None) == Asset(0, sym)  # a shortfall has nothing to reserve


def test_operator_reserves_escrow_for_running_jobs_and_withdraw_all_takes_only_the_rest(
        world_factory, actors, chain_world, zk_hosts, tmp_path):
    op, store, chain = world_factory()
    store.create(protocol("pi", actors))
    chain_world.fund_protocol(store.get(Protocol, "pi"), "40.0000 BOID")
    op.enqueue("Protocol", "pi")
    p = eventually(lambda: (o := store.get(Protocol, "pi")) and cond(o, "Registered") == "True"
                   and o.status.reserved is not None and o)
    assert str(p.status.reserved) == "0.0000 BOID"  # no job: nothing reserved
    # a running job without unitTimeout can owe anything: all the free escrow is kept from the owner
    store.create(Job.model_validate({
        "apiVersion": "cluster.boid.com/v1alpha1", "kind": "Job", "metadata": {"name": "j"},
        "spec": {"protocol": "pi", "image": "x", "command": ["true"], "workUnits": {"count": 10}}}))
    # the pass finds the protocol's jobs in the engine's index, fed by its watch a moment after
    # the create: a pass asked for before the Job reached the index is asked for again
    eventually(lambda: op.enqueue("Protocol", "pi") is not None
               and str(chain.protocol_row(actors.owner, "pi").reserved) == "40.0000 BOID")
    eventually(lambda: str(store.get(Protocol, "pi").status.reserved) == "40.0000 BOID")
    keys = tmp_path / "owner.keys"
    keys.write_text(f"{actors.owner}@active {chain_world.keys.key(chain_world.demo_key).reveal()}\n")
    keys.chmod(0o600)
    withdraw = ["--zk", zk_hosts, "withdraw", "pi", "--all", "--chain-url", chain_world.url, "--key-file", str(keys)]
    r = CliRunner().invoke(cli, withdraw)
    assert r.exit_code == 0 and "nothing free to withdraw" in r.output, r.output
    assert "reserved for running jobs 40.0000 BOID, free to withdraw 0.0000 BOID" in r.output, r.output
    r = CliRunner().invoke(cli, ["--zk", zk_hosts, "report", "pi", "--chain-url", chain_world.url])
    assert "reserved for running jobs 40.0000 BOID, withdrawable 0.0000 BOID" in r.output, r.output
    # the job is gone: the operator lowers the reservation to 0 and the owner takes everything
    store.delete(Job, "j")
    eventually(lambda: store.list(Job) == [])
    eventually(lambda: op.enqueue("Protocol", "pi") is not None
               and str(chain.protocol_row(actors.owner, "pi").reserved) == "0.0000 BOID")
    r = CliRunner().invoke(cli, withdraw)
    assert r.exit_code == 0 and "withdrew 40.0000 BOID" in r.output, r.output
    row = chain.protocol_row(actors.owner, "pi")
    assert (str(row.balance), str(row.withdrawn)) == ("0.0000 BOID", "40.0000 BOID") and row.invariant_holds()


def test_shortfall_is_a_condition_with_the_amount(world_factory, actors, chain_world):
    op, store, chain = world_factory()
    store.create(protocol("big", actors))
    chain_world.fund_protocol(store.get(Protocol, "big"), "10.0000 BOID")
    store.create(Contributor.model_validate({
        "apiVersion": "cluster.boid.com/v1alpha1", "kind": "Contributor", "metadata": {"name": "w0"},
        "spec": {"account": actors.workers[0], "role": "worker", "researchers": [actors.researcher]}}))
    eventually(lambda: cond(store.get(Contributor, "w0"), "Registered") == "True")
    op.world.ledger.record_units(store.get(Protocol, "big"), SimpleNamespace(metadata=SimpleNamespace(uid="j1")),
                                 [("u0", actors.workers[0], 40 * 3_600_000_000)])
    op.enqueue("Protocol", "big")
    p = eventually(lambda: (o := store.get(Protocol, "big")) and cond(o, "Funded") == "False"
                   and o.status.condition("Funded").reason == "Shortfall" and o)
    assert "short by 30.0000 BOID" in p.status.condition("Funded").message
    assert cond(p, "Ready") == "False" and cond(p, "Registered") == "True"


def test_chain_down_shows_a_reason_and_recovers(world_factory, actors, chain_world):
    proxy = Proxy(int(chain_world.url.rsplit(":", 1)[1]))
    try:
        op, store, chain = world_factory(f"http://127.0.0.1:{proxy.port}")
        proxy.cut()
        chain_world.fund_protocol(protocol("flaky", actors), "1.0000 BOID")
        store.create(protocol("flaky", actors))
        p = eventually(lambda: (o := store.get(Protocol, "flaky")) and cond(o, "Reconciled") == "False" and o)
        assert p.status.condition("Registered").reason == "ChainUnavailable"
        proxy.resume()
        eventually(lambda: cond(store.get(Protocol, "flaky"), "Ready") == "True", timeout=60)
    finally:
        proxy.close()


def test_contributor_registers_and_deregisters(world_factory, actors, chain_world):
    op, store, chain = world_factory()
    w = actors.workers[0]
    store.create(protocol("one", actors))
    two = protocol("two", actors)
    two.spec.researcher = actors.owner  # another researcher (the owner researches too)
    store.create(two)
    ids = {n: chain_world.fund_protocol(store.get(Protocol, n)).id for n in ("one", "two")}
    c = Contributor.model_validate({
        "apiVersion": "cluster.boid.com/v1alpha1", "kind": "Contributor", "metadata": {"name": "w0"},
        "spec": {"account": w, "role": "worker", "researchers": [actors.researcher, actors.owner]}})
    store.create(c)
    got = eventually(lambda: (o := store.get(Contributor, "w0")) and cond(o, "Registered") == "True"
                     and len(o.status.registrations) == 2 and o)
    assert sorted(got.status.registrations) == sorted([f"{actors.owner}/one", f"{actors.owner}/two"])
    assert chain.contributor_row("worker", ids["one"], w) is not None
    got.spec.researchers = [actors.researcher]
    store.update(got)
    eventually(lambda: chain.contributor_row("worker", ids["two"], w) is None)
    store.delete(Contributor, "w0")
    eventually(lambda: store.list(Contributor) == [])
    assert chain.contributor_row("worker", ids["one"], w) is None
