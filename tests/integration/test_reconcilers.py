"""Protocol and Contributor reconcilers through a running Operator, on a real ZooKeeper and a real
Antelope node (the session's local chain), with file storage.

Every test gets fresh chain accounts, so tests never share chain state.
"""

from __future__ import annotations

import time

import pytest

from boidcluster.model.resources import Contributor, Protocol
from fixtures.netproxy import Proxy
from fixtures.operator import cond, eventually, protocol_obj as protocol

pytestmark = pytest.mark.usefixtures("contracts_deployed")


def test_protocol_converges_to_chain_and_storage_then_cleans_up(world_factory, actors, tmp_path):
    op, store, chain = world_factory()
    store.create(protocol("pi", actors))
    p = eventually(lambda: (o := store.get(Protocol, "pi")) and cond(o, "Ready") == "True" and o)
    assert cond(p, "Registered") == cond(p, "StorageReady") == cond(p, "Funded") == "True"
    assert str(p.status.fund_balance) == "100000.0000 BOID"
    row = chain.protocol_row(actors.owner, actors.researcher)
    assert row.title == "Test protocol" and str(row.worker_pay_rate) == "1.0000 BOID"
    assert (tmp_path / "storage" / "pi").is_dir()

    p.spec.pay_rates.worker = p.spec.pay_rates.worker.parse("2.5000 BOID")
    store.update(p)
    eventually(lambda: str(chain.protocol_row(actors.owner, actors.researcher).worker_pay_rate) == "2.5000 BOID")

    store.delete(Protocol, "pi")
    eventually(lambda: store.list(Protocol) == [])
    assert chain.protocol_row(actors.owner, actors.researcher) is None


def test_shortfall_is_a_condition_with_the_amount(world_factory, actors):
    op, store, chain = world_factory()
    store.create(protocol("big", actors, fund="250000.0000 BOID"))
    p = eventually(lambda: (o := store.get(Protocol, "big")) and cond(o, "Funded") == "False" and o)
    assert "short by 150000.0000 BOID" in p.status.condition("Funded").message
    assert cond(p, "Ready") == "False" and cond(p, "Registered") == "True"


def test_missing_fund_account_backs_off_with_a_clear_condition(world_factory, actors):
    op, store, chain = world_factory()
    bad = protocol("nofund", actors)
    bad.spec.fund.account = "nosuchacct1"
    store.create(bad)
    p = eventually(lambda: (o := store.get(Protocol, "nofund")) and cond(o, "Reconciled") == "False" and o)
    rec = p.status.condition("Reconciled")
    assert rec.reason == "ChainRejected" and "next retry in" in rec.message
    assert cond(p, "Registered") == "False"
    time.sleep(3)
    attempts = op.metrics.errors.labels("Protocol", "ChainRejected")._value.get()
    assert attempts <= 5  # backing off, not hammering


def test_chain_down_shows_a_reason_and_recovers(world_factory, actors, chain_world):
    proxy = Proxy(int(chain_world.url.rsplit(":", 1)[1]))
    try:
        op, store, chain = world_factory(f"http://127.0.0.1:{proxy.port}")
        proxy.cut()
        store.create(protocol("flaky", actors))
        p = eventually(lambda: (o := store.get(Protocol, "flaky")) and cond(o, "Reconciled") == "False" and o)
        assert p.status.condition("Registered").reason == "ChainUnavailable"
        proxy.resume()
        eventually(lambda: cond(store.get(Protocol, "flaky"), "Ready") == "True", timeout=60)
    finally:
        proxy.close()


def test_contributor_registers_and_deregisters(world_factory, actors):
    op, store, chain = world_factory()
    w = actors.workers[0]
    c = Contributor.model_validate({
        "apiVersion": "cluster.boid.com/v1alpha1", "kind": "Contributor", "metadata": {"name": "w0"},
        "spec": {"account": w, "role": "worker", "researchers": [actors.researcher, actors.owner]}})
    store.create(c)
    got = eventually(lambda: (o := store.get(Contributor, "w0")) and cond(o, "Registered") == "True" and o)
    assert sorted(got.status.registrations) == sorted([actors.researcher, actors.owner])
    assert chain.worker_row(w, actors.researcher) is not None
    got.spec.researchers = [actors.researcher]
    store.update(got)
    eventually(lambda: chain.worker_row(w, actors.owner) is None)
    store.delete(Contributor, "w0")
    eventually(lambda: store.list(Contributor) == [])
    assert chain.worker_row(w, actors.researcher) is None
