"""A Protocol's dispatcher app converged in Marathon (the Marathon TEST DOUBLE, built from the
official RAML and AppDefinition schema; every app body the operator sends is validated)."""

from __future__ import annotations

import pytest

from boidcluster.adapters.marathon import MarathonClient
from boidcluster.adapters.storage import Storage
from boidcluster.adapters.store import Store
from boidcluster.engine.operator import Operator
from boidcluster.engine.world import World
from boidcluster.model.kinds import parse_resource
from boidcluster.model.resources import Protocol
import boidcluster.reconcilers.protocol  # noqa: F401  (registers)
from boidcluster.reconcilers import registry
from doubles.marathon import MarathonDouble
from fixtures.operator import cond, eventually

APP = "/boid/survey/dispatcher"


@pytest.fixture
def marathon():
    with MarathonDouble(deployment_polls=None, deployment_seconds=0.2) as d:  # deployments finish by themselves
        yield d
        assert d.validation_failures == []  # every app the operator sent is valid Marathon


def protocol(researcher: str) -> Protocol:
    return parse_resource({
        "apiVersion": "cluster.boid.com/v1alpha1", "kind": "Protocol", "metadata": {"name": "survey"},
        "spec": {"title": "Survey", "owner": "boidteam", "researcher": researcher, "datadir": "survey",
                 "fund": {"account": "boidfund", "quantity": "10.0000 BOID"},
                 "payRates": {"worker": "1.0000 BOID", "dispatcher": "1.0000 BOID"}}})


def test_dispatcher_app_follows_the_protocol(zk_hosts, marathon, tmp_path):
    store = Store(zk_hosts)
    client = MarathonClient(marathon.url)
    world = World(store=store, storage=Storage(f"file://{tmp_path}"), marathon=client)
    world.settings.dispatcher_env = {"BOID_ZK": zk_hosts, "BOID_MESOS_MASTER": "zk://zk.example:2181/mesos"}
    op = Operator(store, world, registry, workers=2).start()
    try:
        store.create(protocol("researcher1"))
        p = eventually(lambda: (o := store.get(Protocol, "survey")) and cond(o, "DispatcherReady") == "True" and o)
        assert p.status.dispatcher == APP and cond(p, "Ready") == "True"
        app = client.get_app(APP)
        assert app["labels"]["boid.protocol"] == "survey" and app["env"]["BOID_RESEARCHER"] == "researcher1"
        assert app["args"][:2] == ["dispatcher", "run"]
        assert app["env"]["BOID_ZK"] == zk_hosts and app["env"]["BOID_PROTOCOL"] == "survey"  # what it runs with

        p.spec.researcher = "researcher2"
        store.update(p)
        eventually(lambda: client.get_app(APP)["env"]["BOID_RESEARCHER"] == "researcher2")

        store.delete(Protocol, "survey")
        eventually(lambda: store.list(Protocol) == [])
        assert client.get_app(APP) is None
    finally:
        op.stop()
        client.close()
        store.close()


def test_a_stuck_dispatcher_deployment_is_replaced_by_the_fixed_app(zk_hosts, tmp_path):
    """An older operator left a dispatcher app without its credentials: it never gets healthy, so
    its deployment never ends. The operator's app (credentials mounted) replaces it (`force`)
    instead of waiting on DeploymentLocked forever."""
    def healthy(app):   # the dispatcher's /healthz: up only once it can read its key file
        return "BOID_CHAIN_KEYS_FILE" in app["env"] and any(
            v.get("containerPath") == "/etc/boid/secrets" for v in app["container"].get("volumes", []))

    with MarathonDouble(deployment_polls=1, healthy=healthy) as marathon:
        client = MarathonClient(marathon.url, locked_timeout=0.3, locked_backoff=(0.02, 0.05))
        client.create_app({"id": APP, "args": ["dispatcher", "run", "--protocol", "survey"], "cpus": 0.5, "mem": 256,
                           "container": {"type": "DOCKER", "docker": {"image": "boid/dispatcher:0.9"}},
                           "env": {"BOID_PROTOCOL": "survey"}})
        for _ in range(3):
            assert client.list_deployments() != []          # stuck
        store = Store(zk_hosts)
        world = World(store=store, storage=Storage(f"file://{tmp_path}"), marathon=client)
        op = Operator(store, world, registry, workers=2).start()
        try:
            store.create(protocol("researcher1"))
            p = eventually(lambda: (o := store.get(Protocol, "survey")) and cond(o, "DispatcherReady") == "True" and o)
            assert p.status.dispatcher == APP
            app = client.get_app(APP)
            assert app["env"]["BOID_CHAIN_KEYS_FILE"] == "/etc/boid/secrets/chain-keys.json"
            assert any(r.method == "PUT" and r.params.get("force") == "true" for r in marathon.requests)
            eventually(lambda: client.list_deployments() == [])   # the fixed app gets healthy
            assert marathon.validation_failures == []
        finally:
            op.stop()
            client.close()
            store.close()


def test_on_a_secured_cluster_the_dispatchers_identity_exists_before_its_app(secured, marathon, tmp_path):
    """The operator creates dispatcher.<protocol> (its password file in --dispatcher-identities)
    before it converges the app, which mounts that protocol's directory only, read-only."""
    from boidcluster.adapters.auth import Credentials
    from boidcluster.adapters.store import Store as S

    ids = tmp_path / "identities"
    store = secured.store("admin")
    client = MarathonClient(marathon.url)
    world = World(store=store, storage=Storage(f"file://{tmp_path}"), marathon=client)
    world.settings.extra["dispatcher_identities"] = str(ids)
    op = Operator(store, world, registry.subset([Protocol]), workers=1).start()
    try:
        secured.store("alice").create(protocol("researcher1"))
        eventually(lambda: (o := store.get(Protocol, "survey")) and cond(o, "DispatcherReady") == "True")
        pw = ids / "survey" / "password"
        assert pw.stat().st_mode & 0o777 == 0o600
        app = client.get_app(APP)
        assert {"containerPath": "/etc/boid/identity", "hostPath": "/etc/boid/dispatchers/survey", "mode": "RO"} \
            in app["container"]["volumes"]
        assert app["env"]["BOID_DISPATCHER_PASSWORD_FILE"] == "/etc/boid/identity/password"
        assert pw.read_text().strip() not in str(app)
        with S(secured.hosts, credentials=Credentials("dispatcher.survey", pw.read_text().strip())) as d:
            assert d.whoami == "dispatcher.survey" and not d.is_admin   # it logs in with that file
    finally:
        op.stop()
        client.close()
        store.close()
