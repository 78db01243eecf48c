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
                          "BOID_MESOS_SECRET_FILE": "/etc/boid/secrets/mesos-secret",
                          "BOID_DISPATCHER_PASSWORD_FILE": "/etc/boid/identity/password"}
    # its ZooKeeper identity: only its own protocol's directory of passwords is mounted
    assert {"containerPath": "/etc/boid/identity", "hostPath": "/etc/boid/dispatchers/alpha", "mode": "RO"} \
        in app["container"]["volumes"]
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


# ------------------------------------------------------------------------------------------------
# Issue 13: Marathon as it really answers (each failed with the old client or the old double)
# ------------------------------------------------------------------------------------------------

import json as _json  # noqa: E402

import httpx  # noqa: E402

from boidcluster.adapters.marathon import (  # noqa: E402
    DEFINITION_LABEL,
    ConflictingChange,
    MarathonAuthError,
    TooManyDeployments,
)
from doubles.specs import specs_dir  # noqa: E402

EXAMPLES = specs_dir() / "marathon" / "public" / "api" / "v2" / "examples"


def test_403_is_too_many_deployments_not_an_auth_error():
    with MarathonDouble(deployment_polls=None, max_running_deployments=1) as m, \
            MarathonClient(m.url, locked_timeout=0.1) as c:
        c.create_app(dispatcher_app("one", "img"))
        with pytest.raises(TooManyDeployments) as e:
            c.create_app(dispatcher_app("two", "img"))
        assert e.value.status == 403 and not isinstance(e.value, MarathonAuthError)
        c.create_app(dispatcher_app("two", "img"), force=True)   # force=true is not counted


def test_409_is_typed_by_the_body_not_its_text(client, marathon):
    client.create_app(DISPATCHER)
    with pytest.raises(AppAlreadyExists) as exists:
        client.create_app(DISPATCHER)
    assert isinstance(exists.value, ConflictingChange) and not isinstance(exists.value, DeploymentLocked)
    with MarathonDouble(deployment_polls=None) as m, MarathonClient(m.url, locked_timeout=0.05) as c:
        c.create_app(DISPATCHER)
        with pytest.raises(DeploymentLocked) as locked:
            c.update_app({"id": DISPATCHER["id"], "instances": 2})
        assert locked.value.deployments and locked.value.status == 409


def test_relative_segments_are_refused_by_the_client():
    for relative in ("/x/../y", "/x/./y"):   # Marathon resolves them (PathId.canonicalPath); we never send them
        with pytest.raises(ValueError):
            normalize_app_id(relative)


@pytest.mark.parametrize("bad", ["/a.-b/x", "/a-/x", "/-a", "/x/restart", "/x/tasks", "/x/versions", "/A/b"])
def test_path_id_rules_are_marathons(bad, marathon):
    with pytest.raises(ValueError):
        normalize_app_id(bad)
    r = httpx.post(marathon.url + "/v2/apps", json={"id": bad, "cmd": "sleep 1"})
    assert r.status_code == 422, r.text   # PathId.scala:212-223
    marathon.validation_failures.clear()


def test_path_id_accepts_dotted_labels(marathon, client):
    assert normalize_app_id("boid/a.b-c/dispatcher") == "/boid/a.b-c/dispatcher"
    client.create_app({"id": "/boid/a.b-c/d1", "cmd": "sleep 1"})


@pytest.mark.parametrize("constraint,error", [
    (["hostname", "UNIQUE", ""], "UNIQUE does not accept a value"),
    (["hostname", "MAX_PER", "x"], "MAX_PER requires an integer value"),
    (["hostname", "LIKE"], "LIKE and UNLIKE require a non-empty, regular expression value"),
    (["hostname", "LIKE", "("], "is not a valid regular expression"),
    (["", "UNIQUE"], "illegal constraint specification"),
])
def test_semantic_validation_is_422_with_details(constraint, error, client, marathon):
    app = {"id": "/c/app", "cmd": "sleep 1", "constraints": [constraint]}
    assert list(app_schema_validator().iter_errors(app)) == []    # the schema alone lets it through
    with pytest.raises(InvalidAppDefinition) as e:
        client.create_app(app)
    assert e.value.status == 422 and e.value.details[0]["errors"] == [error]
    marathon.validation_failures.clear()


def test_ensure_app_compares_with_the_canonical_form(client, marathon):
    """Deprecated fields come back translated (uris -> fetch, ports -> portDefinitions, docker
    network -> networks, health checks get portIndex): the old client PUT this app on every resync."""
    app = {"id": "/legacy/app", "cmd": "python3 -m http.server $PORT0", "cpus": 0.1, "mem": 64,
           "uris": ["https://example.com/data.tar.gz"], "ports": [0],
           "container": {"type": "DOCKER", "docker": {"image": "python:3.11", "network": "HOST"}},
           "healthChecks": [{"protocol": "HTTP", "path": "/"}], "labels": {"team": "lab"}}
    assert client.ensure_app(app).action == "created"
    shown = client.get_app("/legacy/app")
    assert "uris" not in shown and shown["fetch"][0]["uri"] == "https://example.com/data.tar.gz"
    assert "network" not in shown["container"]["docker"] and shown["healthChecks"][0]["portIndex"] == 0
    assert shown["labels"][DEFINITION_LABEL] and shown["labels"]["team"] == "lab"
    marathon.finish_all_deployments()
    marathon.requests.clear()
    for _ in range(3):
        assert client.ensure_app(app).action == "unchanged"
    assert [r.method for r in marathon.requests] == ["GET"] * 3
    # a change made in Marathon behind our back is still put right
    client.update_app({"id": "/legacy/app", "mem": 128})
    marathon.finish_all_deployments()
    assert client.ensure_app(app).changed_fields == ("mem",)


def test_a_deployment_stuck_on_an_old_definition_is_forced():
    """A dispatcher without its credentials never gets healthy, so its deployment never ends;
    the fixed definition must replace it (the old client got DeploymentLocked forever)."""
    def healthy(app):   # stands for the dispatcher's /healthz: up only with its key file mounted
        return "BOID_CHAIN_KEYS_FILE" in app["env"] and bool(app["container"].get("volumes"))

    fixed = dispatcher_app("alpha", "boid/dispatcher:1.0")
    broken = {**fixed, "env": {"BOID_PROTOCOL": "alpha"}, "container": {
        "type": "DOCKER", "docker": {"image": "boid/dispatcher:1.0", "forcePullImage": False}}}
    with MarathonDouble(deployment_polls=1, healthy=healthy) as m, \
            MarathonClient(m.url, locked_timeout=0.2, locked_backoff=(0.02, 0.05)) as c:
        c.ensure_app(broken)
        for _ in range(3):
            c.list_deployments()
        assert len(c.list_deployments()) == 1                    # stuck: unhealthy
        assert c.ensure_app(broken).action == "unchanged"          # the same definition: left deploying
        res = c.ensure_app(fixed)
        assert res.action == "updated" and set(res.changed_fields) >= {"env", "container"}
        assert [r.params.get("force") for r in m.requests if r.method == "PUT"][-1] == "true"
        c.wait_for_deployment(res.deployment, timeout=5, interval=0.01)
        assert c.list_deployments() == []
        assert m.validation_failures == []


def test_id_filter_is_case_insensitive(client, marathon):
    client.create_app(DISPATCHER)
    apps = httpx.get(marathon.url + "/v2/apps", params={"id": "BOID/ALPHA"}).json()["apps"]
    assert [a["id"] for a in apps] == ["/boid/alpha/dispatcher"]   # AppsResource.scala:501-505


@pytest.mark.parametrize("name,expected", [
    ("apps_create.json", [201, 201]),
    ("app.json", [422]),                      # cmd and args both: AppValidation.scala:512-523
    ("app-check-http-example.json", [201]),   # `check` is an App field since 1.8 (app.raml:202)
    ("app_patch.json", [422]),                # an update body: as a new app it runs nothing
])
def test_marathons_own_examples_are_answered_as_marathon_would(name, expected, marathon):
    body = _json.loads((EXAMPLES / name).read_text())
    bodies = body if isinstance(body, list) else [body]
    got = [httpx.post(marathon.url + "/v2/apps", json=b).status_code for b in bodies]
    assert got == expected
    marathon.validation_failures.clear()


def test_app_patch_example_updates_an_existing_app(marathon, client):
    patch = _json.loads((EXAMPLES / "app_patch.json").read_text())
    client.create_app({"id": patch["id"], "cmd": "sleep 100"})
    marathon.finish_all_deployments()
    r = httpx.put(marathon.url + "/v2/apps" + normalize_app_id(patch["id"]), json=patch)
    assert r.status_code == 200 and client.get_app(patch["id"])["instances"] == patch["instances"]
