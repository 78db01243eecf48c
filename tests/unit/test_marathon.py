"""Marathon adapter against the Marathon test double; every app body it sends is schema-checked."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from boidcluster.adapters.marathon import (
    AppAlreadyExists,
    AppNotFound,
    DeploymentLocked,
    DeploymentNotFound,
    DeploymentTimeout,
    InvalidAppDefinition,
    MarathonClient,
    MarathonUnavailable,
    app_differences,
    dispatcher_app,
    normalize_app_id,
)
from doubles.marathon import MarathonDouble, app_schema_validator

DISPATCHER = dispatcher_app("alpha", "boid/dispatcher:1.0", env={"BOID_LOG": "info"}, cpus=0.5, mem=256,
                            labels={"team": "lab"}, instances=1)


@pytest.fixture
def marathon():
    with MarathonDouble(deployment_polls=1) as double:
        yield double
        assert double.validation_failures == [], "the adapter sent a body that fails AppDefinition.json"


@pytest.fixture
def client(marathon):
    with MarathonClient(marathon.url, timeout=5, locked_timeout=3, locked_backoff=(0.02, 0.1)) as c:
        yield c


def test_dispatcher_app_validates_against_the_official_schema():
    validator = app_schema_validator()
    assert list(validator.iter_errors(DISPATCHER)) == []
    app = DISPATCHER
    assert app["id"] == "/boid/alpha/dispatcher"
    assert app["labels"] == {"team": "lab", "boid.protocol": "alpha", "boid.component": "dispatcher",
                             "boid.managed-by": "boid-operator"}
    assert app["env"] == {"BOID_LOG": "info", "BOID_PROTOCOL": "alpha",
                          "BOID_CHAIN_KEYS_FILE": "/etc/boid/secrets/chain-keys.json",
                          "BOID_MESOS_SECRET_FILE": "/etc/boid/secrets/mesos-secret"}
    assert app["healthChecks"][0]["protocol"] == "MESOS_HTTP"
    assert app["upgradeStrategy"] == {"minimumHealthCapacity": 0, "maximumOverCapacity": 0}
    assert app["container"]["docker"]["image"] == "boid/dispatcher:1.0"
    bare = dispatcher_app("b", "img")
    assert list(validator.iter_errors(bare)) == []


@pytest.mark.parametrize("kwargs", [
    {"protocol_name": "Alpha", "image": "i"}, {"protocol_name": "a_b", "image": "i"},
    {"protocol_name": "a", "image": ""}, {"protocol_name": "a", "image": "i", "cpus": 0},
    {"protocol_name": "a", "image": "i", "env": {"N": 1}},
])
def test_dispatcher_app_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        dispatcher_app(**kwargs)


def test_normalize_app_id():
    assert normalize_app_id("boid/a/dispatcher/") == "/boid/a/dispatcher"
    for bad in ["", "/", "/Boid", "/a//b", "/a/../b", "/-a"]:
        with pytest.raises(ValueError):
            normalize_app_id(bad)


def test_ensure_app_creates_then_is_a_no_op_then_updates(client, marathon):
    created = client.ensure_app(DISPATCHER)
    assert created.action == "created" and created.app_id == "/boid/alpha/dispatcher"
    assert created.deployment.deployment_id
    client.wait_for_deployment(created.deployment, timeout=5, interval=0.01)

    shown = client.get_app("/boid/alpha/dispatcher")
    assert shown["healthChecks"][0]["delaySeconds"] == 15  # Marathon's defaults are filled in...
    assert shown["portDefinitions"][0]["port"] != 0  # ...and a service port assigned
    marathon.requests.clear()
    again = client.ensure_app(DISPATCHER)
    assert again.action == "unchanged"  # ...yet nothing we own differs
    assert [r.method for r in marathon.requests] == ["GET"]

    changed = dispatcher_app("alpha", "boid/dispatcher:1.1", env={"BOID_LOG": "info"}, labels={"team": "lab"})
    updated = client.ensure_app(changed)
    assert updated.action == "updated" and updated.changed_fields == ("container",)
    assert client.get_app("/boid/alpha/dispatcher")["container"]["docker"]["image"] == "boid/dispatcher:1.1"
    put = [r for r in marathon.requests if r.method == "PUT"]
    assert len(put) == 1 and put[0].path == "/v2/apps/boid/alpha/dispatcher"  # no '//'


def test_ensure_app_notices_a_removed_label_and_env(client):
    client.ensure_app(DISPATCHER)
    client.wait_for_deployment(client.list_deployments()[0]["id"], timeout=5, interval=0.01)
    fewer = dispatcher_app("alpha", "boid/dispatcher:1.0", env={}, cpus=0.5, mem=256, labels={}, instances=1)
    assert client.ensure_app(fewer).changed_fields == ("env", "labels")


def test_ensure_app_ignore_leaves_fields_alone(client):
    client.ensure_app(DISPATCHER)
    client.wait_for_deployment(client.list_deployments()[0]["id"], timeout=5, interval=0.01)
    client.scale_app("/boid/alpha/dispatcher", 3)
    client.wait_for_deployment(client.list_deployments()[0]["id"], timeout=5, interval=0.01)
    assert client.ensure_app(DISPATCHER, ignore=["instances"]).action == "unchanged"
    assert client.get_app("/boid/alpha/dispatcher")["instances"] == 3


def test_scale(client, marathon):
    client.create_app(DISPATCHER)
    marathon.finish_all_deployments()
    ref = client.scale_app("boid/alpha/dispatcher", 4)
    assert ref.deployment_id and ref.version
    assert client.list_deployments()[0]["steps"][0]["actions"][0]["action"] == "ScaleApplication"
    client.wait_for_deployment(ref, timeout=5, interval=0.01)
    app = client.get_app("/boid/alpha/dispatcher")
    assert (app["instances"], app["tasksRunning"]) == (4, 4)
    with pytest.raises(AppNotFound):
        client.scale_app("/boid/ghost/dispatcher", 1)


def test_create_twice_is_already_exists(client, marathon):
    client.create_app(DISPATCHER)
    marathon.finish_all_deployments()
    with pytest.raises(AppAlreadyExists):
        client.create_app(DISPATCHER)


def test_delete_and_remove_are_idempotent(client, marathon):
    client.create_app(DISPATCHER)
    marathon.finish_all_deployments()
    ref = client.remove_app("/boid/alpha/dispatcher")
    assert ref is not None and ref.deployment_id
    client.wait_for_deployment(ref, timeout=5, interval=0.01)
    assert client.get_app("/boid/alpha/dispatcher") is None
    assert client.remove_app("/boid/alpha/dispatcher") is None
    with pytest.raises(AppNotFound):
        client.delete_app("/boid/alpha/dispatcher")


def test_list_apps_by_prefix(client, marathon):
    for app_id in ["/boid/a/dispatcher", "/boid/b/dispatcher", "/other/boid/x", "/boidx/y"]:
        client.create_app({"id": app_id, "cmd": "sleep 1", "cpus": 0.1, "mem": 16})
    ids = [a["id"] for a in client.list_apps("/boid")]
    assert ids == ["/boid/a/dispatcher", "/boid/b/dispatcher"]  # not /other/boid/x nor /boidx/y
    assert len(client.list_apps()) == 4
    assert [r.params for r in marathon.requests if r.path == "/v2/apps" and r.method == "GET"][0] == {"id": "/boid"}


def test_409_while_a_deployment_runs_is_retried_until_it_finishes():
    with MarathonDouble(deployment_polls=None, deployment_seconds=0.3) as marathon:
        with MarathonClient(marathon.url, locked_timeout=5, locked_backoff=(0.05, 0.2)) as client:
            client.create_app(DISPATCHER)
            started = time.monotonic()
            ref = client.scale_app("/boid/alpha/dispatcher", 2)  # locked by the StartApplication deployment
            assert time.monotonic() - started >= 0.2
            assert ref.deployment_id
            assert 409 in marathon.statuses("PUT") and marathon.statuses("PUT")[-1] == 200
        assert marathon.validation_failures == []


def test_409_gives_up_with_deployment_locked_or_forces():
    with MarathonDouble(deployment_polls=None) as marathon:  # deployments never finish
        with MarathonClient(marathon.url, locked_timeout=0.3, locked_backoff=(0.05, 0.1)) as client:
            first = client.create_app(DISPATCHER)
            with pytest.raises(DeploymentLocked) as err:
                client.update_app({**DISPATCHER, "mem": 512})
            assert err.value.deployments == [first.deployment_id]
            assert "locked" in str(err.value)
            forced = client.update_app({**DISPATCHER, "mem": 512}, force=True)
            assert [d["id"] for d in client.list_deployments()] == [forced.deployment_id]
            assert client.get_app(DISPATCHER["id"])["mem"] == 512
        assert marathon.validation_failures == []


def test_wait_for_deployment_reports_progress_and_finishes():
    with MarathonDouble(deployment_polls=3) as marathon:
        with MarathonClient(marathon.url) as client:
            ref = client.create_app(DISPATCHER)
            seen = []
            client.wait_for_deployment(ref, timeout=5, interval=0.01, progress=seen.append)
            assert len(seen) == 3
            assert seen[0]["affectedApps"] == ["/boid/alpha/dispatcher"]
            assert (seen[0]["currentStep"], seen[0]["totalSteps"]) == (1, 1)
            assert client.list_deployments() == []
            client.wait_for_deployment(None)  # nothing to wait for


def test_wait_for_deployment_times_out():
    with MarathonDouble(deployment_polls=None) as marathon:
        with MarathonClient(marathon.url) as client:
            ref = client.create_app(DISPATCHER)
            with pytest.raises(DeploymentTimeout, match="still running"):
                client.wait_for_deployment(ref, timeout=0.2, interval=0.05)


def test_cancel_deployment_rolls_back_or_forces():
    with MarathonDouble(deployment_polls=None) as marathon:
        with MarathonClient(marathon.url) as client:
            ref = client.create_app(DISPATCHER)
            rollback = client.cancel_deployment(ref.deployment_id)
            assert rollback is not None and rollback.deployment_id != ref.deployment_id
            assert client.get_app(DISPATCHER["id"]) is None  # creation rolled back
            assert client.cancel_deployment(rollback.deployment_id, force=True) is None
            assert client.list_deployments() == []
            with pytest.raises(DeploymentNotFound):
                client.cancel_deployment("no-such-deployment")


def test_invalid_definitions_get_marathons_422_and_the_double_records_them(client, marathon):
    with pytest.raises(InvalidAppDefinition) as err:
        client.create_app({"id": "/boid/x", "cmd": "a", "args": ["b"], "mem": -1})
    assert err.value.status == 422
    assert {d["path"] for d in err.value.details} >= {"/mem"}
    assert len(marathon.validation_failures) == 1
    marathon.validation_failures.clear()  # so the fixture's "no failures" check covers the rest


def test_get_missing_app_is_none(client):
    assert client.get_app("/boid/nothing") is None


def test_unreachable_marathon_is_unavailable():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with MarathonClient(f"http://127.0.0.1:{port}", timeout=1) as client:
        with pytest.raises(MarathonUnavailable):
            client.list_apps()


def test_app_differences_rules():
    desired = {"id": "/a", "cpus": 1, "portDefinitions": [{"port": 0}], "healthChecks": [{"path": "/h"}],
               "labels": {"a": "1"}, "requirePorts": False}
    current = {"id": "/a", "cpus": 1.0, "portDefinitions": [{"port": 10001, "protocol": "tcp"}],
               "healthChecks": [{"path": "/h", "intervalSeconds": 60}], "labels": {"a": "1"}, "requirePorts": False}
    assert app_differences(desired, current) == []
    assert app_differences(desired, {**current, "labels": {"a": "1", "b": "2"}}) == ["labels"]
    assert app_differences(desired, {**current, "healthChecks": []}) == ["healthChecks"]
    assert app_differences({"requirePorts": False}, {"requirePorts": 0}) == ["requirePorts"]


def test_concurrent_ensure_converges_to_one_app(marathon):
    results = []

    def run():
        with MarathonClient(marathon.url, locked_timeout=3, locked_backoff=(0.02, 0.1)) as c:
            results.append(c.ensure_app(DISPATCHER).action)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("created") == 1
    assert len([r for r in marathon.requests if r.method == "POST" and r.status == 201]) == 1
