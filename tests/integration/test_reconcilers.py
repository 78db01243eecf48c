"""Protocol and Contributor reconcilers through a running Operator, on a real ZooKeeper and a real
Antelope node (the session's local chain), with file storage.

Every test gets fresh chain accounts, so tests never share chain state.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from boidcluster.adapters.chain.blocking import BlockingChain
from boidcluster.adapters.storage import Storage
from boidcluster.adapters.store import Store
from boidcluster.engine.operator import Operator
from boidcluster.engine.world import World
from boidcluster.model.resources import Contributor, Protocol
import boidcluster.reconcilers.contributor  # noqa: F401  (registers)
import boidcluster.reconcilers.protocol  # noqa: F401  (registers)
from boidcluster.reconcilers import registry

pytestmark = pytest.mark.usefixtures("contracts_deployed")


def eventually(check, timeout=20.0, interval=0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"not reached within {timeout}s; last: {last!r}")


class Proxy:
    """A TCP forwarder we can cut and restore, to take 'the chain node' away and bring it back."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.up = threading.Event()
        self.up.set()
        self.sock.listen(50)
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if not self.up.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self) -> None:
        self.up.clear()
        for c in self._conns:
            try:
                c.close()
            except OSError:
                pass
        self._conns.clear()

    def restore(self) -> None:
        self.up.set()

    def close(self) -> None:
        self.cut()
        self.sock.close()


@pytest.fixture
def actors(chain_world):
    async def make():
        async with chain_world.client() as rpc:
            return await chain_world.actors(rpc, workers=2)
    return asyncio.run(make())


@pytest.fixture
def world_factory(zk_hosts, chain_world, tmp_path):
    made = []

    def make(chain_url: str | None = None) -> tuple[Operator, Store, BlockingChain]:
        store = Store(zk_hosts)
        keys = chain_world.operator_client().keys
        chain = BlockingChain.open(chain_url or chain_world.url, keys, timeout=2.0, call_timeout=30)
        world = World(store=store, storage=Storage(f"file://{tmp_path / 'storage'}"), chain=chain)
        op = Operator(store, world, registry, workers=2).start()
        made.append((op, store, chain))
        return op, store, chain

    yield make
    for op, store, chain in made:
        op.stop()
        chain.close()
        store.close()


def protocol(name: str, a, fund: str = "100.0000 BOID", worker_rate: str = "1.0000 BOID") -> Protocol:
    return Protocol.model_validate({
        "apiVersion": "cluster.boid.com/v1alpha1", "kind": "Protocol", "metadata": {"name": name},
        "spec": {"title": "Test protocol", "owner": a.owner, "researcher": a.researcher, "datadir": f"/{name}",
                 "fund": {"account": a.fund, "quantity": fund},
                 "payRates": {"worker": worker_rate, "dispatcher": "0.5000 BOID"},
                 "payout": {"interval": "1h", "minimum": "0.0001 BOID"}},
    })


def cond(obj, t):
    c = obj.status.condition(t) if obj.status else None
    return c.status if c else None


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
        proxy.restore()
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
