"""The composition root: what `operator run` and `dispatcher run` build. Two protocols'
dispatchers must be two Mesos frameworks (own id, own role), never one shared framework.
(Mesos master TEST DOUBLE from tests/doubles.)"""

from __future__ import annotations

import time

from boidcluster.adapters.store import Store
from boidcluster.adapters.mesos import agent_acls, contributor_role
from boidcluster.cli.wiring import OperatorOptions, build_world, close_world
from doubles.mesos_master import MesosMasterDouble


def test_each_protocols_dispatcher_is_its_own_framework(zk_hosts, tmp_path):
    master = MesosMasterDouble(heartbeat_interval=0.2)
    store = Store(zk_hosts)
    worlds = []
    try:
        for proto in ("alpha", "beta"):
            opts = OperatorOptions(zk=zk_hosts, storage=f"file://{tmp_path}", backend="mesos",
                                   mesos_master=master.url, mesos_roles=[proto],
                                   mesos_state=f"/boid/v1/dispatchers/{proto}/mesos",
                                   mesos_insecure_attributes=True)
            worlds.append(build_world(opts, store))
        deadline = time.monotonic() + 10
        while len(master.cluster.frameworks) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        fws = list(master.cluster.frameworks.values())
        assert sorted(fw.info["name"] for fw in fws) == ["boid-alpha", "boid-beta"]
        assert sorted(r for fw in fws for r in fw.roles) == ["alpha", "beta"]
        paths = [f"/boid/v1/dispatchers/{p}/mesos/framework" for p in ("alpha", "beta")]
        while not all(store.client.exists(p) for p in paths) and time.monotonic() < deadline:
            time.sleep(0.05)
        ids = {store.client.get(p)[0].decode() for p in paths}
        assert ids == {fw.id for fw in fws}  # each kept its own framework id, for failover
        assert master.validation_errors == []
    finally:
        for w in worlds:
            close_world(w)
        store.close()
        master.stop()


def _protocol(name: str):
    from boidcluster.model.kinds import parse_resource
    return parse_resource({
        "apiVersion": "cluster.boid.com/v1alpha1", "kind": "Protocol", "metadata": {"name": name},
        "spec": {"title": "T", "owner": "boidteam", "researcher": "researcher1", "datadir": name,
                 "fund": {"account": "boidfund", "quantity": "10.0000 BOID"},
                 "payRates": {"worker": "1.0000 BOID", "dispatcher": "1.0000 BOID"}}})


def test_a_dispatcher_stop_is_a_failover_until_its_protocol_is_deleted(zk_hosts, tmp_path, monkeypatch):
    """SIGTERM (Marathon restarts or moves the dispatcher) leaves tasks running; only a deleted
    protocol tears its framework down. Credentials: principal from the environment, the secret
    from a mounted file, never an argument or an environment value."""
    from boidcluster.adapters.backend import TaskResources, TaskSpec
    from boidcluster.model.resources import Protocol

    master = MesosMasterDouble(heartbeat_interval=0.2, task_seconds=None)
    master.cluster.credentials = {"boid-dispatcher": "s3cret"}
    master.cluster.configure_agent_auth({"alice": "agent-secret"}, agent_acls(["alice"]))
    master.cluster.add_agent(None, principal="alice", secret="agent-secret", reserve_for=contributor_role("alice"))
    secret = tmp_path / "mesos-secret"
    secret.write_text("s3cret")
    monkeypatch.setenv("BOID_MESOS_PRINCIPAL", "boid-dispatcher")
    monkeypatch.setenv("BOID_MESOS_SECRET_FILE", str(secret))
    store = Store(zk_hosts)
    store.create(_protocol("gamma"))
    monkeypatch.setenv("BOID_MESOS_CONTRIBUTORS", "alice")       # as the operator hands it to a dispatcher app
    opts = OperatorOptions(zk=zk_hosts, storage=f"file://{tmp_path}", backend="mesos", mesos_master=master.url,
                           mesos_roles=["gamma"], mesos_state="/boid/v1/dispatchers/gamma/mesos", protocol="gamma")
    assert opts.mesos_contributors == ["alice"]
    task = TaskSpec(task_id="g1", job="j", unit="u", command=["sleep", "60"], env={}, output_dir="/o",
                    resources=TaskResources(cpus=0.5, mem=64), role="gamma")
    try:
        for attempt in range(2):
            world = build_world(opts, store)
            assert world.backend.user == "nobody" and world.backend.principal == "boid-dispatcher"
            if attempt == 0:
                world.backend.submit(task)
            else:
                world.backend.reconcile(["g1"])
            deadline = time.monotonic() + 10
            while master.cluster.tasks.get("g1") is None or master.cluster.tasks["g1"].state != "TASK_RUNNING":
                assert time.monotonic() < deadline, "g1 not running"
                time.sleep(0.05)
            deadline = time.monotonic() + 10
            while not world.backend.health()["subscribed"]:
                assert time.monotonic() < deadline, "not subscribed"
                time.sleep(0.05)
            if attempt == 0:
                close_world(world)                    # a graceful stop: the task runs on
                assert master.cluster.tasks["g1"].state == "TASK_RUNNING"
        fid = world.backend.framework_id
        store.delete(Protocol, "gamma")
        close_world(world)                            # the protocol is gone: teardown
        assert master.cluster.frameworks[fid].removed and master.cluster.tasks["g1"].state == "TASK_KILLED"
        assert master.validation_errors == []
    finally:
        store.close()
        master.stop()


def test_mesos_backend_without_trusted_contributors_is_refused(zk_hosts, tmp_path, monkeypatch):
    """Safe default: no contributor list and no explicit insecure flag, no Mesos backend (a
    clear error naming both options), so nobody runs the attribute mode by accident."""
    import pytest

    monkeypatch.delenv("BOID_MESOS_CONTRIBUTORS", raising=False)
    monkeypatch.delenv("BOID_MESOS_INSECURE_ATTRIBUTES", raising=False)
    store = Store(zk_hosts)
    try:
        opts = OperatorOptions(zk=zk_hosts, storage=f"file://{tmp_path}", backend="mesos",
                               mesos_master="http://127.0.0.1:9")
        with pytest.raises(ValueError, match="--mesos-contributor.*--mesos-insecure-agent-attributes"):
            build_world(opts, store)
    finally:
        store.close()


def test_reducers_run_outside_the_sandbox_only_when_the_operator_says_so(zk_hosts, tmp_path, monkeypatch):
    """`reduce: command` is researchers' code run unsandboxed on this machine: off by default with
    sandboxed (podman) units, on with --allow-host-reducers / $BOID_ALLOW_HOST_REDUCERS, and implied
    by --runtime host; `operator run` and `dispatcher run` read the flag alike."""
    from click.testing import CliRunner

    from boidcluster.cli import cluster
    from boidcluster.cli.main import cli

    store = Store(zk_hosts)
    try:
        for opts, allowed in ((OperatorOptions(zk=zk_hosts, backend="none"), False),
                              (OperatorOptions(zk=zk_hosts, backend="none", allow_host_reducers=True), True),
                              (OperatorOptions(zk=zk_hosts, backend="local", runtime="host", slot_count=1,
                                               storage=f"file://{tmp_path}"), True)):
            world = build_world(opts, store)
            try:
                assert world.settings.host_reducers is allowed, opts
            finally:
                close_world(world)
    finally:
        store.close()
    seen = []
    monkeypatch.setattr(cluster, "start_operator", lambda opts, *a, **k: seen.append(opts.allow_host_reducers) or 1 / 0)
    monkeypatch.setenv("BOID_ALLOW_HOST_REDUCERS", "1")
    for argv in (["operator", "run", "--backend", "none"], ["dispatcher", "run", "--protocol", "p", "--storage", "file:///tmp"]):
        CliRunner().invoke(cli, ["--zk", zk_hosts, *argv])
    assert seen == [True, True]
