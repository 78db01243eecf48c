"""Static checks of manifests/deploy: no Docker engine, Mesos, Marathon or HDFS runs here, so the
deploy files are checked for what can be checked without running them (see its README)."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from boidcluster.adapters.marathon import dispatcher_app
from boidcluster.adapters.mesos import contributor_role
from doubles.marathon import app_schema_validator
from doubles.mesos_master import WORKER_CONTAINERIZERS, WORKER_IMAGE_PROVIDERS, WORKER_ISOLATION

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "manifests" / "deploy"
COMPOSE = sorted(DEPLOY.glob("*/docker-compose.yml"))
MARATHON = sorted((DEPLOY / "marathon").glob("*.json"))
PINNED = re.compile(r"^[\w./-]+:[\w.-]+$")


def test_the_three_actors_and_both_apps_are_there():
    assert [p.parent.name for p in COMPOSE] == ["dispatcher", "storage", "worker"]
    assert [p.name for p in MARATHON] == ["dispatcher.json", "operator.json"]


@pytest.mark.parametrize("path", COMPOSE, ids=lambda p: p.parent.name)
def test_compose_file_services(path):
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict) and doc.get("services"), f"{path}: no services"
    for name, svc in doc["services"].items():
        where = f"{path.parent.name}/{name}"
        assert svc.get("image") or svc.get("build"), f"{where}: names neither image nor build"
        if "image" in svc:
            image = svc["image"]
            assert PINNED.match(image) and not image.endswith(":latest"), f"{where}: image {image!r} not pinned"
        assert svc.get("ports"), f"{where}: no ports"
        for port in svc["ports"]:
            assert re.fullmatch(r"(\d+\.\d+\.\d+\.\d+:)?\d+:\d+(/(tcp|udp))?", str(port)), f"{where}: port {port!r}"
        hc = svc.get("healthcheck")
        assert hc and hc.get("test") and hc["test"][0] in ("CMD", "CMD-SHELL"), f"{where}: no healthcheck"
        for vol in svc.get("volumes", []):
            src = str(vol).split(":")[0]
            assert src.startswith("/") or src.startswith(".") or src in doc.get("volumes", {}), \
                f"{where}: volume {src!r} is not declared"
        for dep in svc.get("depends_on", {}):
            assert dep in doc["services"], f"{where}: depends on unknown service {dep!r}"


def test_dispatcher_actor_runs_zookeeper_mesos_marathon_and_the_operator():
    svc = yaml.safe_load((DEPLOY / "dispatcher" / "docker-compose.yml").read_text())["services"]
    assert svc["zookeeper"]["image"].startswith("zookeeper:3.8")
    assert svc["mesos-master"]["image"] == "mesosphere/mesos-master:1.7.1"
    assert svc["marathon"]["image"] == "mesosphere/marathon:v1.11.24"
    op = svc["operator"]
    assert op["build"]["dockerfile"] == "manifests/deploy/Dockerfile"
    assert (DEPLOY / "dispatcher" / op["build"]["context"]).resolve() == ROOT
    assert op["command"][:2] == ["operator", "run"]
    # what the operator passes on to dispatcher apps must be reachable from the agents they run on
    assert op["environment"]["BOID_ZK"] == "${BOID_DISPATCHER_IP}:2181"
    assert op["command"][op["command"].index("--mesos-master") + 1] == "zk://${BOID_DISPATCHER_IP}:2181/mesos"
    # jobs run in the dispatcher apps only, never also in the operator (two frameworks, double work)
    assert op["command"][op["command"].index("--backend") + 1] == "none"
    # keys are files from /etc/boid/secrets, never environment values
    assert "--keys" in op["command"] and not any("KEYS" in k and not k.endswith("_FILE") for k in op["environment"])
    master = svc["mesos-master"]["environment"]
    assert master["MESOS_AUTHENTICATE_HTTP_FRAMEWORKS"] == "true" and master["MESOS_CREDENTIALS"].startswith("/etc/boid/secrets/")
    # authenticated workers: agents authenticate, and the ACLs (generated) bind reservations to principals
    assert master["MESOS_AUTHENTICATE_AGENTS"] == "true" and master["MESOS_ACLS"].startswith("/etc/boid/secrets/")
    # the dispatcher apps get the trusted contributors from the operator (else they refuse to start)
    assert op["environment"]["BOID_MESOS_CONTRIBUTORS"].startswith("${BOID_MESOS_CONTRIBUTORS:?")


def test_worker_agent_uses_docker_and_carries_the_account_attribute():
    agent = yaml.safe_load((DEPLOY / "worker" / "docker-compose.yml").read_text())["services"]["mesos-agent"]
    env = agent["environment"]
    assert agent["image"] == "mesosphere/mesos-slave:1.7.1"
    assert "docker" in env["MESOS_CONTAINERIZERS"].split(",")
    # the agent flags the Mesos master double's agents default to (tests/doubles/mesos_master.py),
    # so what the backend is tested against is what this file runs
    assert tuple(env["MESOS_CONTAINERIZERS"].split(",")) == WORKER_CONTAINERIZERS
    assert tuple(env["MESOS_IMAGE_PROVIDERS"].split(",")) == WORKER_IMAGE_PROVIDERS
    assert tuple(env["MESOS_ISOLATION"].split(",")) == WORKER_ISOLATION
    assert env["MESOS_LAUNCHER"] == "linux"   # image support needs it (containerizer.cpp:318-321)
    assert env["MESOS_SWITCH_USER"] == "true"
    assert re.search(r"(^|;)boid_account:\$\{BOID_ACCOUNT[:?}]", env["MESOS_ATTRIBUTES"])
    # credited by reservation: everything it lends is statically reserved for its contributor's
    # role, as an authenticated principal (the credential file, never an environment value)
    assert env["MESOS_DEFAULT_ROLE"] == "boid-contributors/${BOID_ACCOUNT}"
    assert contributor_role("${BOID_ACCOUNT}") == env["MESOS_DEFAULT_ROLE"]
    assert "(" not in env["MESOS_RESOURCES"]      # no explicit role: all of it goes to the default role
    assert env["MESOS_CREDENTIAL"].startswith("/etc/boid/secrets/")
    assert "/etc/boid/secrets:/etc/boid/secrets:ro" in agent["volumes"]
    assert "/var/run/docker.sock:/var/run/docker.sock" in agent["volumes"]


def test_storage_has_webhdfs_on_namenode_and_datanode():
    svc = yaml.safe_load((DEPLOY / "storage" / "docker-compose.yml").read_text())["services"]
    assert svc["namenode"]["command"] == ["hdfs", "namenode"]
    assert svc["datanode"]["command"] == ["hdfs", "datanode"]
    for name in ("namenode", "datanode"):
        assert svc[name]["environment"]["HDFS-SITE.XML_dfs.webhdfs.enabled"] == "true"
    assert "9870:9870" in svc["namenode"]["ports"] and "9864:9864" in svc["datanode"]["ports"]


@pytest.mark.parametrize("path", MARATHON, ids=lambda p: p.name)
def test_marathon_app_validates_against_app_definition_schema(path):
    app = json.loads(path.read_text())
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in app_schema_validator().iter_errors(app)]
    assert errors == []
    assert app["container"]["docker"]["image"] == "boidcluster/operator:0.1.0"
    assert app["args"][0] != "boidctl", "the image's entrypoint is boidctl already"


def test_dispatcher_json_is_what_dispatcher_app_builds():
    app = json.loads((DEPLOY / "marathon" / "dispatcher.json").read_text())
    protocol = app["env"]["BOID_PROTOCOL"]
    own = {"BOID_PROTOCOL", "BOID_CHAIN_KEYS_FILE", "BOID_MESOS_SECRET_FILE", "BOID_DISPATCHER_PASSWORD_FILE"}
    built = dispatcher_app(protocol, app["container"]["docker"]["image"],
                           env={k: v for k, v in app["env"].items() if k not in own},
                           args=["dispatcher", "run", "--protocol", protocol])
    assert app == built
    # credentials come as files from the dispatcher machines, named, never inlined
    # and its ZooKeeper identity: only its own protocol's directory of the operator-made passwords
    assert app["container"]["volumes"] == [
        {"containerPath": "/etc/boid/secrets", "hostPath": "/etc/boid/secrets", "mode": "RO"},
        {"containerPath": "/etc/boid/identity", "hostPath": f"/etc/boid/dispatchers/{protocol}", "mode": "RO"}]
    assert app["env"]["BOID_DISPATCHER_PASSWORD_FILE"] == "/etc/boid/identity/password"
    assert app["env"]["BOID_CHAIN_KEYS_FILE"].startswith("/etc/boid/secrets/")
    assert not any("KEY" in k and not k.endswith("_FILE") for k in app["env"])


def test_operator_app_runs_the_operator_with_health_on_its_port():
    app = json.loads((DEPLOY / "marathon" / "operator.json").read_text())
    assert app["args"][:2] == ["operator", "run"]
    port = int(app["args"][app["args"].index("--health-port") + 1])
    assert app["portDefinitions"][0]["port"] == port and app["requirePorts"] is True
    assert app["healthChecks"][0]["path"] == "/healthz"
    assert "BOID_CHAIN_KEYS" not in app.get("env", {}), "keys never go into an app definition"
    assert app["args"][app["args"].index("--backend") + 1] == "none"   # the dispatcher apps run the jobs
    assert app["args"][app["args"].index("--keys") + 1].startswith("/etc/boid/secrets/")
    assert {"containerPath": "/etc/boid/secrets", "hostPath": "/etc/boid/secrets", "mode": "RO"} \
        in app["container"]["volumes"]
    # it makes each protocol's dispatcher identity (password file) where that dispatcher's app mounts it
    assert app["args"][app["args"].index("--dispatcher-identities") + 1] == "/etc/boid/dispatchers"
    assert {"containerPath": "/etc/boid/dispatchers", "hostPath": "/etc/boid/dispatchers", "mode": "RW"} \
        in app["container"]["volumes"]


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_entrypoint_is_the_boidctl_console_script():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    ins = _dockerfile_instructions()
    assert ins[0] == ("FROM", "python:3.11-slim")
    entry = [json.loads(rest) for word, rest in ins if word == "ENTRYPOINT"]
    assert entry == [["boidctl"]] and scripts["boidctl"] == "boidcluster.cli.main:main"
    runs = " ".join(rest for word, rest in ins if word == "RUN")
    assert "pip install" in runs and " git" in runs
    copied = [src for word, rest in ins if word == "COPY" for src in shlex.split(rest)[:-1]]
    assert "operator" in copied and "pyproject.toml" in copied
    for src in copied:
        assert (ROOT / src).exists(), f"COPY source {src} is missing from the build context"
    cmd = [json.loads(rest) for word, rest in ins if word == "CMD"][-1]
    assert cmd[:2] == ["operator", "run"]
