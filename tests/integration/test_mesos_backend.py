"""The `mesos` backend against the Mesos master test double (tests/doubles/mesos_master.py).

Every test ends by asserting that the double recorded no validation errors: each call the backend
made was a valid scheduler.proto `Call` (and each event the double sent a valid `Event`).
"""

from __future__ import annotations

import re
import time
from typing import Callable, Iterator

import httpx
import pytest
from kazoo.client import KazooClient

from boidcluster.adapters.backend import Backend, TaskResources, TaskSpec, TaskUpdate
from boidcluster.adapters.mesos import MesosBackend, check_constraints, constraints_ok
from boidcluster.engine.metrics import Metrics
from fixtures.mesos import backend_factory, strict_master
from doubles.mesos_master import MesosCluster, MesosMasterDouble, effective_argv, register_master

ROLE = "proto-a"


@pytest.fixture
def master() -> Iterator[MesosMasterDouble]:
    with strict_master(task_seconds=0.05) as m:
        yield m


@pytest.fixture
def backends() -> Iterator[Callable[..., MesosBackend]]:
    with backend_factory(ROLE, refuse_seconds=0.2) as make:
        yield make


def spec(task_id: str, *, unit: str | None = None, job: str = "job1", **kw: object) -> TaskSpec:
    kw.setdefault("role", ROLE)
    kw.setdefault("resources", TaskResources(cpus=0.5, mem=64))
    kw.setdefault("env", {"BOID_UNIT_INDEX": "0"})
    return TaskSpec(task_id=task_id, job=job, unit=unit or task_id, command=["sh", "-c", "echo hi"],
                    output_dir=f"/out/{task_id}", **kw)  # type: ignore[arg-type]


class Collector:
    """All updates seen so far, with waiting helpers."""

    def __init__(self, backend: MesosBackend) -> None:
        self.b = backend
        self.seen: list[TaskUpdate] = []

    def wait(self, pred: Callable[[list[TaskUpdate]], bool], timeout: float = 10.0) -> list[TaskUpdate]:
        deadline = time.monotonic() + timeout
        while not pred(self.seen):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out; updates: {self.seen}")
            self.seen += self.b.updates(timeout=min(left, 0.2))
        return self.seen

    def last(self, task_id: str) -> TaskUpdate | None:
        mine = [u for u in self.seen if u.task_id == task_id]
        return mine[-1] if mine else None

    def wait_state(self, task_id: str, state: str, timeout: float = 10.0) -> TaskUpdate:
        self.wait(lambda s: any(u.task_id == task_id and u.state == state for u in s), timeout)
        return next(u for u in self.seen if u.task_id == task_id and u.state == state)


def wait_for(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def launched_infos(cluster: MesosCluster) -> dict[str, dict]:
    out = {}
    for call in cluster.calls_of("ACCEPT"):
        for op in call["accept"]["operations"]:
            for info in op["launch"]["task_infos"]:
                out[info["task_id"]["value"]] = info
    return out


# ------------------------------------------------------------------------------------------------

def test_is_a_backend(master: MesosMasterDouble, backends: Callable[..., MesosBackend]) -> None:
    assert isinstance(backends(master.url), Backend)


def test_launch_resources_env_role_image_and_contributor(master: MesosMasterDouble,
                                                         backends: Callable[..., MesosBackend]) -> None:
    c = master.cluster
    alice = c.add_agent("alice", cpus=2, mem=1024, gpus=1)
    b = backends(master.url)
    col = Collector(b)
    b.submit(spec("t1", resources=TaskResources(cpus=1.5, mem=256, disk=10, gpus=1), image="python:3.11-slim",
                  env={"BOID_UNIT_INDEX": "3", "BOID_UNIT_PARAMS": '{"x": 1}'}))
    done = col.wait_state("t1", "FINISHED")
    assert done.contributor == "alice" and done.exit_code == 0
    assert done.started_at is not None and done.finished_at is not None and done.contributed_us > 0
    assert [u.state for u in col.seen if u.task_id == "t1"] == ["STAGING", "RUNNING", "FINISHED"]

    info = launched_infos(c)["t1"]
    assert info["agent_id"]["value"] == alice.id
    res = {r["name"]: r["scalar"]["value"] for r in info["resources"]}
    assert res == {"cpus": 1.5, "mem": 256, "disk": 10, "gpus": 1}
    assert {r["allocation_info"]["role"] for r in info["resources"]} == {ROLE}
    assert info["command"]["shell"] is False and info["command"]["arguments"] == ["sh", "-c", "echo hi"]
    env = {v["name"]: v["value"] for v in info["command"]["environment"]["variables"]}
    assert env == {"BOID_UNIT_INDEX": "3", "BOID_UNIT_PARAMS": '{"x": 1}'}
    assert info["container"]["mesos"]["image"]["docker"]["name"] == "python:3.11-slim"
    labels = {lab["key"]: lab["value"] for lab in info["labels"]["labels"]}
    assert labels["boid_job"] == "job1" and labels["boid_output_dir"] == "/out/t1"
    sub = c.calls_of("SUBSCRIBE")[0]["subscribe"]["framework_info"]
    assert sub["roles"] == [ROLE] and sub["failover_timeout"] > 0
    assert b.contributors() == ["alice"]


def test_docker_containerizer_option(master: MesosMasterDouble, backends: Callable[..., MesosBackend]) -> None:
    master.cluster.add_agent("alice")
    b = backends(master.url, container="DOCKER")
    b.submit(spec("t1", image="busybox"))
    Collector(b).wait_state("t1", "FINISHED")
    info = launched_infos(master.cluster)["t1"]
    assert info["container"] == {"type": "DOCKER", "docker": {"image": "busybox"}}
    # docker run IMAGE value arguments... (docker.cpp:1054-1060): argv[0] once, not twice
    assert effective_argv(info, master.cluster.agent_by_account("alice")) == ["sh", "-c", "echo hi"]


def test_declines_offers_nothing_fits_and_agents_without_account(master: MesosMasterDouble,
                                                                 backends: Callable[..., MesosBackend]) -> None:
    c = master.cluster
    c.add_agent("alice", cpus=1, mem=512)
    c.add_agent(None, cpus=8, mem=8192)
    b = backends(master.url)
    b.submit(spec("big", resources=TaskResources(cpus=4, mem=128)))
    wait_for(lambda: len(c.calls_of("DECLINE")) >= 3, what="declines")
    time.sleep(0.3)
    assert c.calls_of("ACCEPT") == []
    assert b.updates() == []            # still queued: nothing was reported
    refuse = sorted({d["decline"]["filters"]["refuse_seconds"] for d in c.calls_of("DECLINE")})
    assert refuse == [0.2, 600.0]       # short filter for "not now", long one for "never" (no boid_account)
    assert b.contributors() == ["alice"]


def test_replicas_run_on_distinct_contributors_and_exclusions(master: MesosMasterDouble,
                                                              backends: Callable[..., MesosBackend]) -> None:
    c = master.cluster
    for name in ("alice", "bob", "carol"):
        c.add_agent(name, cpus=8, mem=8192)
    b = backends(master.url)
    col = Collector(b)
    for r in range(3):
        b.submit(spec(f"u0.r{r}", unit="u0"))
    b.submit(spec("u1.r0", unit="u1", exclude_contributors=frozenset({"alice", "bob"})))
    col.wait(lambda s: sum(u.state == "FINISHED" for u in s) == 4)
    owners = {u.task_id: u.contributor for u in col.seen if u.state == "FINISHED"}
    assert sorted(owners[f"u0.r{r}"] for r in range(3)) == ["alice", "bob", "carol"]
    assert owners["u1.r0"] == "carol"


def test_constraints_like_unlike_cluster(master: MesosMasterDouble, backends: Callable[..., MesosBackend]) -> None:
    c = master.cluster
    c.add_agent("alice", rack="r1", os="linux", hostname="a.example")
    c.add_agent("bob", rack="r2", os="linux", hostname="b.example")
    c.add_agent("carol", rack="r3", os="mac", hostname="c.example")
    b = backends(master.url)
    col = Collector(b)
    b.submit(spec("like", constraints=(("rack", "LIKE", "r[23]"), ("os", "LIKE", "linux"))))
    b.submit(spec("unlike", constraints=(("hostname", "UNLIKE", "[ab]\\.example"),)))
    b.submit(spec("cluster", constraints=(("rack", "CLUSTER", "r1"),)))
    col.wait(lambda s: sum(u.state == "FINISHED" for u in s) == 3)
    owners = {u.task_id: u.contributor for u in col.seen if u.state == "FINISHED"}
    assert owners == {"like": "bob", "unlike": "carol", "cluster": "alice"}


def test_bad_constraint_or_role_fails_at_submit(master: MesosMasterDouble,
                                               backends: Callable[..., MesosBackend]) -> None:
    master.cluster.add_agent("alice")
    b = backends(master.url)
    col = Collector(b)
    b.submit(spec("bad-op", constraints=(("rack", "NEAR", "x"),)))
    b.submit(spec("bad-role", role="someone-else"))
    col.wait(lambda s: len(s) == 2)
    assert {u.task_id: u.state for u in col.seen} == {"bad-op": "FAILED", "bad-role": "FAILED"}
    assert "unsupported constraint" in col.last("bad-op").message  # type: ignore[union-attr]


def test_constraint_semantics_unit() -> None:
    attrs = {"rack": "r1", "gpu": "1"}
    assert constraints_ok([("rack", "LIKE", "r\\d")], "h", attrs, [])
    assert not constraints_ok([("zone", "LIKE", ".*")], "h", attrs, [])        # absent attribute
    assert constraints_ok([("zone", "UNLIKE", "z1")], "h", attrs, [])          # absent passes UNLIKE
    assert not constraints_ok([("hostname", "UNIQUE")], "h", attrs, [("h", {})])
    assert constraints_ok([("hostname", "CLUSTER")], "h", attrs, [("h", {})])
    assert not constraints_ok([("hostname", "CLUSTER")], "h2", attrs, [("h", {})])
    assert not constraints_ok([("rack", "MAX_PER", "1")], "h", attrs, [("x", {"rack": "r1"})])
    assert check_constraints([("rack", "LIKE")]) is not None
    assert check_constraints([("rack", "GROUP_BY")]) is None


def test_every_update_with_a_uuid_is_acknowledged(master: MesosMasterDouble,
                                                  backends: Callable[..., MesosBackend]) -> None:
    c = master.cluster
    c.add_agent("alice", cpus=8, mem=8192)
    b = backends(master.url)
    col = Collector(b)
    for i in range(5):
        b.submit(spec(f"t{i}"))
    col.wait(lambda s: sum(u.state == "FINISHED" for u in s) == 5)
    wait_for(lambda: len(c.acks) == 15, what="15 acks")   # STARTING, RUNNING, FINISHED per task
    assert sorted(c.acks) == sorted((f"t{i}", s) for i in range(5)
                                    for s in ("TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"))
    assert all(not t.pending for t in c.tasks.values())
    for ack in c.calls_of("ACKNOWLEDGE"):
        assert set(ack["acknowledge"]) == {"agent_id", "task_id", "uuid"}


def test_kill_running_and_queued(master: MesosMasterDouble, backends: Callable[..., MesosBackend]) -> None:
    c = master.cluster
    c.task_seconds = None                 # tasks run until told otherwise
    c.add_agent("alice", cpus=1, mem=1024)
    b = backends(master.url)
    col = Collector(b)
    b.submit(spec("run", resources=TaskResources(cpus=1, mem=64)))
    col.wait_state("run", "RUNNING")
    b.submit(spec("wait", resources=TaskResources(cpus=1, mem=64)))   # no room: stays queued
    b.kill("wait")
    assert col.wait_state("wait", "KILLED").message == "killed before launch"
    b.kill("run")
    b.kill("run")                         # idempotent
    killed = col.wait_state("run", "KILLED")
    assert killed.contributor == "alice" and killed.finished_at is not None
    assert [k["kill"]["task_id"]["value"] for k in c.calls_of("KILL")] == ["run"]
    assert c.calls_of("KILL")[0]["kill"]["agent_id"]["value"] == c.agent_by_account("alice").id


def test_failed_task_reports_exit_code(master: MesosMasterDouble, backends: Callable[..., MesosBackend]) -> None:
    c = master.cluster
    c.task_seconds = None
    c.add_agent("alice")
    b = backends(master.url)
    col = Collector(b)
    b.submit(spec("t1"))
    col.wait_state("t1", "RUNNING")
    c.fail_task("t1", "Command exited with status 3")
    failed = col.wait_state("t1", "FAILED")
    assert failed.exit_code == 3 and failed.contributor == "alice"


def test_agent_lost_gives_lost_updates(master: MesosMasterDouble, backends: Callable[..., MesosBackend]) -> None:
    c = master.cluster
    c.task_seconds = None
    alice = c.add_agent("alice", cpus=1)
    c.add_agent("bob", cpus=1)
    b = backends(master.url)
    col = Collector(b)
    b.submit(spec("a", resources=TaskResources(cpus=1, mem=64)))
    b.submit(spec("b", resources=TaskResources(cpus=1, mem=64)))
    col.wait(lambda s: sum(u.state == "RUNNING" for u in s) == 2)
    on_alice = next(u.task_id for u in col.seen if u.state == "RUNNING" and u.contributor == "alice")
    c.lose_agent(alice.id)
    lost = col.wait_state(on_alice, "LOST")
    assert lost.contributor == "alice"
    # PARTITION_AWARE: the master says TASK_UNREACHABLE; reported LOST with the machine's reason
    assert c.tasks[on_alice].state == "TASK_UNREACHABLE"
    assert lost.reason == "REASON_AGENT_REMOVED" and lost.cause is None
    assert b.contributors() == ["bob"]
    time.sleep(0.3)
    assert [u.state for u in col.seen if u.task_id == on_alice].count("LOST") == 1   # reported once


def test_dropped_stream_resubscribes_with_same_framework_and_reconciles(
        master: MesosMasterDouble, backends: Callable[..., MesosBackend]) -> None:
    c = master.cluster
    c.task_seconds = None
    c.add_agent("alice")
    b = backends(master.url)
    col = Collector(b)
    b.submit(spec("t1"))
    col.wait_state("t1", "RUNNING")
    wait_for(lambda: not c.tasks["t1"].pending, what="acknowledgements")
    fid = b.framework_id
    master.drop_stream()
    wait_for(lambda: b.subscriptions == 2, what="re-subscription")
    subs = c.calls_of("SUBSCRIBE")
    assert subs[1]["framework_id"]["value"] == fid == subs[1]["subscribe"]["framework_info"]["id"]["value"]
    wait_for(lambda: c.calls_of("RECONCILE"), what="reconciliation")
    asked = c.calls_of("RECONCILE")[0]["reconcile"]["tasks"]
    assert asked == [{"task_id": {"value": "t1"}, "agent_id": {"value": c.agent_by_account("alice").id}}]
    c.finish_task("t1")
    assert col.wait_state("t1", "FINISHED").contributor == "alice"


def test_heartbeat_watchdog_reconnects_a_silent_stream(master: MesosMasterDouble,
                                                       backends: Callable[..., MesosBackend]) -> None:
    master.cluster.add_agent("alice")
    b = backends(master.url, heartbeat_misses=3)
    wait_for(lambda: b.subscriptions == 1, what="subscription")
    t0 = time.monotonic()
    master.silence()
    wait_for(lambda: b.subscriptions == 2, timeout=5, what="watchdog re-subscription")
    assert time.monotonic() - t0 < 3 * 0.2 + 1.5
    b.submit(spec("after"))
    Collector(b).wait_state("after", "FINISHED")


def test_redirect_to_new_leader_is_followed(master: MesosMasterDouble,
                                            backends: Callable[..., MesosBackend]) -> None:
    c = master.cluster
    c.task_seconds = None
    c.add_agent("alice")
    standby = MesosMasterDouble(cluster=c)
    try:
        b = backends(standby.url)            # a standby answers 307 to the leader
        col = Collector(b)
        b.submit(spec("t1"))
        col.wait_state("t1", "RUNNING")
        assert b.master_url == master.url
        fid = b.framework_id
        c.elect(standby)                     # leader change: stream breaks, old leader redirects
        wait_for(lambda: b.subscriptions == 2 and b.master_url == standby.url, what="follow the new leader")
        assert b.framework_id == fid
        c.finish_task("t1")
        col.wait_state("t1", "FINISHED")
        b.submit(spec("t2"))
        col.wait_state("t2", "RUNNING")
    finally:
        standby.stop()


def test_master_detection_through_zookeeper(master: MesosMasterDouble, zk_hosts: str,
                                            backends: Callable[..., MesosBackend]) -> None:
    c = master.cluster
    c.add_agent("alice")
    second = MesosMasterDouble(cluster=c)
    zk = KazooClient(hosts=zk_hosts)
    zk.start(timeout=10)
    try:
        first_node = register_master(zk, "/mesos", master)
        register_master(zk, "/mesos", second)
        b = backends(f"zk://{zk_hosts}/mesos")
        col = Collector(b)
        b.submit(spec("t1"))
        col.wait_state("t1", "FINISHED")
        assert b.master_url == master.url
        c.elect(second)
        zk.delete(first_node)                # the old leader's contender znode goes away
        wait_for(lambda: b.master_url == second.url and b.subscriptions >= 2, what="new leader from ZooKeeper")
        b.submit(spec("t2"))
        col.wait_state("t2", "FINISHED")
    finally:
        second.stop()
        zk.stop()
        zk.close()


def test_failover_keeps_framework_id_in_zookeeper_and_reconciles(
        master: MesosMasterDouble, zk_hosts: str, backends: Callable[..., MesosBackend]) -> None:
    c = master.cluster
    c.task_seconds = None
    c.add_agent("alice", cpus=8)
    zk = KazooClient(hosts=zk_hosts)
    zk.start(timeout=10)
    try:
        first = backends(master.url, zk=zk, framework_id_path="/boid/v1/mesos/proto-a/framework-id")
        col = Collector(first)
        first.submit(spec("t1"))
        first.submit(spec("t2"))
        col.wait(lambda s: sum(u.state == "RUNNING" for u in s) == 2)
        wait_for(lambda: not c.tasks["t1"].pending and not c.tasks["t2"].pending, what="acknowledgements")
        fid = first.framework_id
        assert zk.get("/boid/v1/mesos/proto-a/framework-id")[0].decode() == fid
        first.close(kill_running=False)      # the dispatcher "crashes"; its tasks keep running
        c.finish_task("t2")                  # finishes while nobody is subscribed

        second = backends(master.url, zk=zk, framework_id_path="/boid/v1/mesos/proto-a/framework-id")
        col2 = Collector(second)
        second.reconcile(["t1", "t2", "never-launched"])
        col2.wait(lambda s: {u.task_id for u in s if u.task_id != "t2" or u.terminal}
                  >= {"t1", "t2", "never-launched"})
        assert second.framework_id == fid
        states = {u.task_id: (u.state, u.contributor) for u in col2.seen}
        assert states["t1"] == ("RUNNING", "alice")   # credited before any offer: agent map in ZooKeeper
        assert states["t2"] == ("FINISHED", "alice")   # the retried, unacknowledged update
        assert states["never-launched"][0] == "LOST"
        c.finish_task("t1")
        assert col2.wait_state("t1", "FINISHED").contributor == "alice"
    finally:
        zk.stop()
        zk.close()


def test_failover_credits_a_task_from_its_persisted_start(
        master: MesosMasterDouble, zk_hosts: str, backends: Callable[..., MesosBackend]) -> None:
    c = master.cluster
    c.task_seconds = None
    c.add_agent("alice", cpus=8)
    path = "/boid/v1/mesos/proto-a/framework-id"
    zk = KazooClient(hosts=zk_hosts)
    zk.start(timeout=10)
    try:
        first = backends(master.url, zk=zk, framework_id_path=path)
        col = Collector(first)
        first.submit(spec("t1"))
        running = col.wait_state("t1", "RUNNING")
        assert running.started_at is not None
        wait_for(lambda: not c.tasks["t1"].pending, what="acknowledgements")
        # one znode per started task, beside the framework id, holding the start as reported
        assert zk.get_children(path + "/tasks") == ["t1"]
        assert float(zk.get(path + "/tasks/t1")[0].decode()) == running.started_at
        first.close(kill_running=False)      # the dispatcher "crashes"; t1 keeps running
        time.sleep(0.3)
        c.finish_task("t1")                  # finishes while nobody is subscribed
        finished_at = c.tasks["t1"].pending[0]["timestamp"]

        second = backends(master.url, zk=zk, framework_id_path=path)
        col2 = Collector(second)
        second.reconcile(["t1"])
        done = col2.wait_state("t1", "FINISHED")
        # credited from the real start: read, not added (not since reconciliation, not ~0)
        assert done.started_at == running.started_at and done.finished_at == finished_at
        assert done.contributed_us == round((finished_at - running.started_at) * 1e6) >= 300_000
        assert [u.state for u in col2.seen] == ["FINISHED"]
        # deleted once the terminal update was handed out
        wait_for(lambda: zk.get_children(path + "/tasks") == [], what="start znode deleted")
    finally:
        zk.stop()
        zk.close()


def test_start_is_durable_before_its_update_is_acknowledged(
        master: MesosMasterDouble, zk_hosts: str, backends: Callable[..., MesosBackend]) -> None:
    c = master.cluster
    c.add_agent("alice")
    zk = KazooClient(hosts=zk_hosts)
    zk.start(timeout=10)
    creates: list[str] = []
    real_create_async = zk.create_async

    def flaky_create_async(p: str, *a: object, **kw: object):  # type: ignore[no-untyped-def]
        if "/tasks/" in p:
            creates.append(p)
            if len(creates) == 1:                # ZooKeeper unreachable for the first start
                from kazoo.exceptions import ConnectionLoss
                raise ConnectionLoss()
            assert ("t1", "TASK_STARTING") not in c.acks   # not acknowledged before it is durable
        return real_create_async(p, *a, **kw)

    zk.create_async = flaky_create_async  # type: ignore[method-assign]
    try:
        b = backends(master.url, zk=zk, framework_id_path="/fw")
        col = Collector(b)
        b.submit(spec("t1"))
        col.wait_state("t1", "RUNNING")
        time.sleep(0.2)
        assert ("t1", "TASK_STARTING") not in c.acks   # the update waits: the agent re-sends it
        done = col.wait_state("t1", "FINISHED", timeout=5)
        assert len(creates) == 2 and done.started_at is not None
        wait_for(lambda: len(c.acks) == 3, what="3 acks")
        assert [s for t, s in c.acks if t == "t1"] == ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]
        assert [u.state for u in col.seen] == ["STAGING", "RUNNING", "FINISHED"]   # reported once each
        wait_for(lambda: zk.get_children("/fw/tasks") == [], what="start znode deleted")
    finally:
        zk.stop()
        zk.close()


def test_star_framework_runs_every_protocols_tasks_under_star(master: MesosMasterDouble,
                                                              backends: Callable[..., MesosBackend]) -> None:
    # `operator run --backend mesos` without --mesos-role: one framework in "*" for all protocols;
    # the Job reconciler still sets TaskSpec.role to the protocol's name.
    c = master.cluster
    c.add_agent("alice", cpus=4)
    b = backends(master.url, roles=("*",))
    col = Collector(b)
    b.submit(spec("mc-task", role="mc"))
    b.submit(spec("other-task", role="other"))
    b.submit(spec("no-role", role=None))
    col.wait(lambda s: sum(u.state == "FINISHED" for u in s) == 3)
    assert not [u for u in col.seen if u.state == "FAILED"]
    assert c.calls_of("SUBSCRIBE")[0]["subscribe"]["framework_info"]["roles"] == ["*"]
    infos = launched_infos(c)
    assert set(infos) == {"mc-task", "other-task", "no-role"}
    for info in infos.values():
        assert {r["allocation_info"]["role"] for r in info["resources"]} == {"*"}
    # a framework with explicit roles keeps them strict
    strict = backends(master.url, roles=("mc",))
    col2 = Collector(strict)
    strict.submit(spec("x", role="other"))
    assert "not one of this framework's roles" in col2.wait_state("x", "FAILED").message


def test_timeout_kills_the_task(master: MesosMasterDouble, backends: Callable[..., MesosBackend]) -> None:
    c = master.cluster
    c.task_seconds = None
    c.add_agent("alice")
    b = backends(master.url)
    col = Collector(b)
    b.submit(spec("slow", timeout=0.3))
    killed = col.wait_state("slow", "KILLED", timeout=5)
    assert "timed out" in killed.message
    assert [k["kill"]["task_id"]["value"] for k in c.calls_of("KILL")] == ["slow"]


def test_suppress_when_idle_revive_when_work_arrives(master: MesosMasterDouble,
                                                     backends: Callable[..., MesosBackend]) -> None:
    c = master.cluster
    c.add_agent("alice")
    b = backends(master.url)
    col = Collector(b)
    wait_for(lambda: b.subscriptions == 1, what="subscription")
    assert c.calls_of("SUBSCRIBE")[0]["subscribe"]["suppressed_roles"] == [ROLE]   # nothing queued yet
    b.submit(spec("t1"))
    col.wait_state("t1", "FINISHED")
    wait_for(lambda: len(c.calls_of("SUPPRESS")) >= 1, what="suppress")
    fw = c.frameworks[b.framework_id]  # type: ignore[index]
    wait_for(lambda: ROLE in fw.suppressed, what="suppressed in the master")
    n_offers = c.offers_sent
    time.sleep(0.3)
    assert c.offers_sent == n_offers     # suppressed: no offers while idle
    types = [x["type"] for x in c.calls]
    b.submit(spec("t2"))
    col.wait_state("t2", "FINISHED")
    later = [x["type"] for x in c.calls][len(types):]
    assert later[0] == "REVIVE"
    assert c.calls_of("REVIVE")[-1]["revive"] == {"roles": [ROLE]}


def test_invalid_offer_launch_is_requeued(master: MesosMasterDouble, backends: Callable[..., MesosBackend]) -> None:
    c = master.cluster
    c.add_agent("alice")
    b = backends(master.url)
    col = Collector(b)
    orig = c._call_accept

    def rescind_first(fw, call):   # the offer is rescinded just before our ACCEPT lands
        if not getattr(rescind_first, "done", False):
            rescind_first.done = True  # type: ignore[attr-defined]
            c.rescind_offers()
        return orig(fw, call)

    c._call_accept = rescind_first  # type: ignore[method-assign]
    b.submit(spec("t1"))
    done = col.wait_state("t1", "FINISHED")
    assert done.contributor == "alice"
    assert "LOST" not in [u.state for u in col.seen]
    assert len(c.calls_of("ACCEPT")) >= 2


def test_close_remove_tears_down(master: MesosMasterDouble, zk_hosts: str,
                                 backends: Callable[..., MesosBackend]) -> None:
    c = master.cluster
    c.task_seconds = None
    c.add_agent("alice")
    zk = KazooClient(hosts=zk_hosts)
    zk.start(timeout=10)
    try:
        b = backends(master.url, zk=zk, framework_id_path="/fw")
        col = Collector(b)
        b.submit(spec("t1"))
        col.wait_state("t1", "RUNNING")
        fid = b.framework_id
        b.close(remove=True)
        assert len(c.calls_of("TEARDOWN")) == 1
        assert c.frameworks[fid].removed  # type: ignore[index]
        assert c.tasks["t1"].state == "TASK_KILLED"
        assert zk.exists("/fw") is None
    finally:
        zk.stop()
        zk.close()


def test_close_kills_running_tasks(master: MesosMasterDouble, backends: Callable[..., MesosBackend]) -> None:
    c = master.cluster
    c.task_seconds = None
    c.add_agent("alice")
    b = backends(master.url)
    col = Collector(b)
    b.submit(spec("t1"))
    col.wait_state("t1", "RUNNING")
    b.close(kill_running=True)
    assert c.tasks["t1"].state == "TASK_KILLED"


def test_double_rejects_invalid_calls_like_the_master(master: MesosMasterDouble) -> None:
    url = master.url + "/api/v1/scheduler"
    with httpx.Client() as client:
        r = client.post(url, json={"type": "SUBSCRIBE", "subscribe": {"framework_info": {"name": "x"}}})
        assert r.status_code == 400 and "missing required field 'user'" in r.text
        r = client.post(url, json={"type": "SUBSCRIBE", "subscribe": {"framework_info": {
            "user": "u", "name": "x", "rolez": ["a"]}}})
        assert r.status_code == 400 and "unknown field 'rolez'" in r.text
        r = client.post(url, json={"type": "DECLINE", "framework_id": {"value": "f"}, "decline": {}},
                        headers={"Mesos-Stream-Id": "nope"})
        assert r.status_code == 400 and r.text == "Framework cannot be found"   # master/http.cpp:616-619
        r = client.post(url, json={"type": "KILL", "framework_id": {"value": "f"}})
        assert r.status_code == 400 and "Expecting 'kill' to be present" in r.text
        r = client.post(url, json={"type": "REVIVE", "framework_id": {"value": "f"},
                                   "revive": {"role": "a"}}, headers={"Mesos-Stream-Id": "s"})
        assert r.status_code == 400 and "unknown field 'role'" in r.text   # the proto has `roles`
        r = client.post(url, content=b"{}", headers={"Content-Type": "text/plain"})
        assert r.status_code == 415
    assert len(master.validation_errors) == 6
    master.validation_errors.clear()


# ------------------------------------------------------------------------------------------------
# Issue 13: behaviours of a real Mesos 1.x master and agents (each failed with the old client)
# ------------------------------------------------------------------------------------------------

def test_removed_framework_subscribes_anew_and_reports_its_tasks_lost(
        master: MesosMasterDouble, zk_hosts: str, backends: Callable[..., MesosBackend]) -> None:
    """ERROR {"error": {"message": "Framework has been removed"}}: the id is dead (master.cpp:2598);
    re-subscribing with it forever (the old client read a top-level `message`) runs nothing."""
    c = master.cluster
    c.task_seconds = None
    c.add_agent("alice")
    path = "/boid/v1/mesos/removed/framework"
    zk = KazooClient(hosts=zk_hosts)
    zk.start(timeout=10)
    try:
        first = backends(master.url, zk=zk, framework_id_path=path, failover_timeout=0.2)
        col = Collector(first)
        first.submit(spec("t1"))
        col.wait_state("t1", "RUNNING")
        dead = first.framework_id
        first.close()                           # failover... and nobody comes back in time
        wait_for(lambda: c.frameworks[dead].removed, what="framework removed after its failover timeout")
        second = backends(master.url, zk=zk, framework_id_path=path, start=False)
        assert second.framework_id == dead     # read from ZooKeeper
        col2 = Collector(second)
        second.reconcile(["t1"])
        second.start()
        lost = col2.wait_state("t1", "LOST")
        assert lost.reason == "REASON_FRAMEWORK_REMOVED" and lost.cause is None   # re-run elsewhere
        wait_for(lambda: second.framework_id not in (None, dead) and second.health()["subscribed"],
                 what="subscribed as a new framework")
        assert "master ERROR event: Framework has been removed" in second.errors
        wait_for(lambda: zk.exists(path) is not None and zk.get(path)[0].decode() == second.framework_id,
                 what="the new id stored")
        second.submit(spec("t2"))
        wait_for(lambda: "t2" in c.tasks, what="t2 launched under the new framework")
        assert c.tasks["t2"].framework_id == second.framework_id
    finally:
        zk.stop()
        zk.close()


def test_stream_thread_survives_a_zookeeper_failure_and_says_so(
        master: MesosMasterDouble, zk_hosts: str, backends: Callable[..., MesosBackend]) -> None:
    """Saving the framework id fails (ZooKeeper unreachable): the old subscriber thread died for
    good; now it retries with backoff, counts the failure in health(), and recovers."""
    master.cluster.add_agent("alice")
    zk = KazooClient(hosts=zk_hosts)
    zk.start(timeout=10)
    try:
        b = backends(master.url, zk=zk, framework_id_path="/boid/v1/mesos/zkfail/framework", start=False)
        zk.stop()                               # the session is gone before the first SUBSCRIBED
        b.start()
        wait_for(lambda: b.health()["threads"]["stream"]["failures"] >= 2, what="failures counted")
        h = b.health()["threads"]["stream"]
        assert "subscription" in h["last_error"] and h["backoff"] > 0
        assert all(t.is_alive() for t in b._threads)
        metrics = Metrics()
        metrics.watch_backend(b.health)         # what an operator's /metrics shows
        text = metrics.exposition().decode()
        assert "boid_backend_subscribed 0.0" in text
        assert re.search(r'boid_backend_thread_errors_total\{thread="stream"\} [1-9]', text)
        zk.start(timeout=10)                    # ZooKeeper is back
        wait_for(lambda: b.health()["subscribed"], timeout=20, what="subscribed after ZooKeeper came back")
        assert zk.get("/boid/v1/mesos/zkfail/framework")[0].decode() == b.framework_id
        b.submit(spec("t1"))
        Collector(b).wait_state("t1", "FINISHED")
    finally:
        zk.stop()
        zk.close()


def test_framework_user_must_exist_on_the_agents(master: MesosMasterDouble,
                                                  backends: Callable[..., MesosBackend]) -> None:
    """--switch_user (default true) chowns the sandbox to FrameworkInfo.user; a user the agent
    lacks drops every task (slave.cpp:2860-2890, paths.cpp:893-903). The old client sent 'boid'."""
    c = master.cluster
    c.add_agent("alice")
    b = backends(master.url, user="boid")
    col = Collector(b)
    b.submit(spec("t1"))
    b.submit(spec("t2"))
    first = col.wait_state("t1", "LOST")
    second = col.wait_state("t2", "LOST")
    assert c.tasks["t1"].state == "TASK_DROPPED"   # PARTITION_AWARE: TASK_DROPPED, not TASK_LOST
    assert first.reason == "REASON_EXECUTOR_TERMINATED" and "Failed to chown directory to 'boid'" in first.message
    # the same cause twice: what lets the job reconciler fail the unit instead of re-queueing forever
    assert first.cause is not None and first.cause == second.cause
    assert len(c.agent_refusals) == 2
    c.agent_refusals.clear()

    ok = backends(master.url, roles=["other"])     # the default user exists on every agent
    assert ok.user == "nobody"
    ok.submit(spec("t3", role="other"))
    assert Collector(ok).wait_state("t3", "FINISHED").reason == ""
    with pytest.raises(ValueError, match="FrameworkInfo.user must be set"):
        MesosBackend(master.url, user="", start=False)


def test_agent_without_switch_user_runs_any_framework_user(master: MesosMasterDouble,
                                                           backends: Callable[..., MesosBackend]) -> None:
    master.cluster.add_agent("alice", switch_user=False, users=frozenset())
    b = backends(master.url, user="whoever")
    b.submit(spec("t1"))
    Collector(b).wait_state("t1", "FINISHED")


def test_gpu_agents_are_offered_only_to_gpu_frameworks(master: MesosMasterDouble,
                                                        backends: Callable[..., MesosBackend],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """--filter_gpu_resources (default true, hierarchical.cpp:3095-3105)."""
    c = master.cluster
    c.add_agent("gpu-owner", cpus=2, gpus=1)
    b = backends(master.url)
    info = b._framework_info()
    assert {cap["type"] for cap in info["capabilities"]} >= {"GPU_RESOURCES", "PARTITION_AWARE", "MULTI_ROLE"}
    b.submit(spec("t1", resources=TaskResources(cpus=1, mem=64, gpus=1)))
    assert Collector(b).wait_state("t1", "FINISHED").contributor == "gpu-owner"

    import boidcluster.adapters.mesos as mesos_module
    monkeypatch.setattr(mesos_module, "CAPABILITIES", ("MULTI_ROLE",))   # the old client
    old = backends(master.url, roles=["old"])
    old.submit(spec("t2", role="old", resources=TaskResources(cpus=1, mem=64)))
    time.sleep(0.5)
    assert old.offers_seen == 0 and "t2" not in c.tasks


def test_docker_containerizer_needs_an_agent_that_has_it(master: MesosMasterDouble,
                                                         backends: Callable[..., MesosBackend]) -> None:
    """A Mesos-default agent (--containerizers=mesos, no --image_providers) cannot run a DOCKER
    ContainerInfo, nor a MESOS one with a Docker image (provisioner.cpp:532-534)."""
    c = master.cluster
    c.add_agent("plain", containerizers=("mesos",), image_providers=(), isolation=("posix/cpu", "posix/mem"))
    b = backends(master.url)
    b.submit(spec("t1", image="busybox"))
    failed = Collector(b).wait_state("t1", "FAILED")
    assert failed.reason == "REASON_CONTAINER_LAUNCH_FAILED" and "Unsupported container image type" in failed.message
    d = backends(master.url, roles=["d"], container="DOCKER")
    d.submit(spec("t2", role="d", image="busybox"))
    assert Collector(d).wait_state("t2", "FAILED").reason == "REASON_CONTAINER_LAUNCH_FAILED"
    c.agent_refusals.clear()
    with pytest.raises(ValueError, match="filesystem/linux"):
        c.add_agent("bad", image_providers=("docker",), isolation=("posix/cpu",))


def test_task_limits_are_the_requests(master: MesosMasterDouble, backends: Callable[..., MesosBackend]) -> None:
    master.cluster.add_agent("alice")
    b = backends(master.url, task_limits=True)
    b.submit(spec("t1", resources=TaskResources(cpus=0.5, mem=96)))
    Collector(b).wait_state("t1", "FINISHED")
    assert launched_infos(master.cluster)["t1"]["limits"] == {"cpus": {"value": 0.5}, "mem": {"value": 96.0}}


def test_graceful_stop_keeps_tasks_running_for_the_successor(
        master: MesosMasterDouble, zk_hosts: str, backends: Callable[..., MesosBackend]) -> None:
    """SIGTERM (Marathon restarts or moves the dispatcher) is a failover: nothing is killed."""
    c = master.cluster
    c.task_seconds = None
    c.add_agent("alice")
    path = "/boid/v1/mesos/graceful/framework"
    zk = KazooClient(hosts=zk_hosts)
    zk.start(timeout=10)
    try:
        first = backends(master.url, zk=zk, framework_id_path=path)
        first.submit(spec("t1"))
        Collector(first).wait_state("t1", "RUNNING")
        first.close()
        assert c.tasks["t1"].state == "TASK_RUNNING" and c.calls_of("KILL") == []
        second = backends(master.url, zk=zk, framework_id_path=path)
        col = Collector(second)
        second.reconcile(["t1"])
        assert col.wait_state("t1", "RUNNING").contributor == "alice"
    finally:
        zk.stop()
        zk.close()


def test_a_task_back_after_lost_is_killed(master: MesosMasterDouble, backends: Callable[..., MesosBackend]) -> None:
    """A partitioned agent reconnects and its task runs on (high-availability-framework-guide.md
    :393-400): it was reported LOST and re-queued, so this copy is killed (never paid twice)."""
    c = master.cluster
    c.task_seconds = None
    alice = c.add_agent("alice")
    b = backends(master.url)
    col = Collector(b)
    b.submit(spec("t1"))
    col.wait_state("t1", "RUNNING")
    c.lose_agent(alice.id, partitioned=True)
    col.wait_state("t1", "LOST")
    c.reconnect_agent(alice.id)
    wait_for(lambda: c.tasks["t1"].state == "TASK_KILLED", what="the ghost killed")
    col.seen += b.updates(timeout=0.2)
    assert [u.state for u in col.seen if u.task_id == "t1"] == ["STAGING", "RUNNING", "LOST"]   # reported once


def test_unknown_tasks_are_killed_after_a_grace(master: MesosMasterDouble, zk_hosts: str,
                                                backends: Callable[..., MesosBackend]) -> None:
    c = master.cluster
    c.task_seconds = None
    c.add_agent("alice")
    path = "/boid/v1/mesos/orphans/framework"
    zk = KazooClient(hosts=zk_hosts)
    zk.start(timeout=10)
    try:
        first = backends(master.url, zk=zk, framework_id_path=path)
        first.submit(spec("forgotten"))
        Collector(first).wait_state("forgotten", "RUNNING")
        first.close()
        # the successor never hears of "forgotten" from its dispatcher; implicit reconciliation
        # surfaces it and, unclaimed after the grace, it is killed
        second = backends(master.url, zk=zk, framework_id_path=path, orphan_grace=0.3, reconcile_interval=0.2)
        wait_for(lambda: c.tasks["forgotten"].state == "TASK_KILLED", what="orphan killed")
        assert second.orphans_killed == 1
        assert any(call["reconcile"].get("tasks", []) == [] for call in c.calls_of("RECONCILE"))
    finally:
        zk.stop()
        zk.close()


def test_revive_safety_net(master: MesosMasterDouble, backends: Callable[..., MesosBackend]) -> None:
    """Work queued that nothing launches for `revive_interval`: REVIVE again (a REVIVE can be lost)."""
    master.cluster.add_agent("alice", cpus=1)
    b = backends(master.url, revive_interval=0.2)
    b.submit(spec("big", resources=TaskResources(cpus=8, mem=64)))
    wait_for(lambda: len(master.cluster.calls_of("REVIVE")) >= 3, what="periodic REVIVEs")


def test_framework_authentication_with_a_secret_file(master: MesosMasterDouble, tmp_path,
                                                     backends: Callable[..., MesosBackend]) -> None:
    c = master.cluster
    c.credentials = {"boid-dispatcher": "s3cret"}
    c.add_agent("alice")
    unauth = backends(master.url, roles=["x"])
    time.sleep(0.5)
    assert not unauth.health()["subscribed"] and "401" in unauth.health()["threads"]["stream"]["last_error"]
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    b = backends(master.url, principal="boid-dispatcher", secret_file=str(secret))
    b.submit(spec("t1"))
    Collector(b).wait_state("t1", "FINISHED")
    assert "s3cret" not in repr(b.health())
    with pytest.raises(ValueError, match="principal"):
        MesosBackend(master.url, secret_file=str(secret), start=False)


def test_master_detection_prefers_the_advertised_ip(master: MesosMasterDouble, zk_hosts: str,
                                                    backends: Callable[..., MesosBackend]) -> None:
    """MasterInfo.hostname is often a name only the master's network resolves (a container name)."""
    import json
    master.cluster.add_agent("alice")
    zk = KazooClient(hosts=zk_hosts)
    zk.start(timeout=10)
    try:
        info = dict(master.master_info(), hostname="mesos-master.invalid")
        info["address"] = dict(info["address"], hostname="mesos-master.invalid")
        zk.ensure_path("/mesos-ip")
        zk.create("/mesos-ip/json.info_", json.dumps(info).encode(), sequence=True)
        b = backends(f"zk://{zk_hosts}/mesos-ip")
        b.submit(spec("t1"))
        Collector(b).wait_state("t1", "FINISHED")
    finally:
        zk.delete("/mesos-ip", recursive=True)
        zk.stop()
        zk.close()


def test_error_list_is_bounded(master: MesosMasterDouble, backends: Callable[..., MesosBackend]) -> None:
    b = backends(master.url)
    for n in range(500):
        b.errors.append(f"e{n}")
    assert len(b.errors) == 50 and b.errors[-1] == "e499"


def test_new_leader_knows_nothing_until_agents_reregister(master: MesosMasterDouble,
                                                          backends: Callable[..., MesosBackend]) -> None:
    """high-availability-framework-guide.md "Agent Reregistration": reconciling a task on an agent
    that has not re-registered gets no answer (master.cpp:9024-9033 case 2), so nothing is LOST."""
    c = master.cluster
    c.task_seconds = None
    c.add_agent("alice")
    standby = MesosMasterDouble(c)
    try:
        b = backends(master.url)
        col = Collector(b)
        b.submit(spec("t1"))
        col.wait_state("t1", "RUNNING")
        c.elect(standby, agents_reregister_after=1.0)
        wait_for(lambda: b.subscriptions >= 2, what="re-subscribed to the new leader")
        wait_for(lambda: any(call["reconcile"].get("tasks") for call in c.calls_of("RECONCILE")),
                 what="explicit reconciliation sent")
        assert c.recovering                          # asked while the agent is unknown: no answer
        c.finish_task("t1")                          # the agent's update waits for re-registration
        done = col.wait_state("t1", "FINISHED")
        assert not c.recovering and done.contributor == "alice"
        assert "LOST" not in [u.state for u in col.seen]
    finally:
        standby.stop()


def test_status_update_retries_back_off_like_the_agent(master: MesosMasterDouble) -> None:
    """10 s, doubling to 10 min (src/slave/constants.hpp:58-59) — here scaled by the fixture."""
    c = master.cluster
    agent = c.add_agent("alice")
    with c.lock:
        from doubles.mesos_master import Framework, Task
        fw = Framework("fw", {"user": "nobody", "name": "x"}, ["*"])
        c.frameworks["fw"] = fw
        task = Task("t", "fw", agent.id, "*", {}, {})
        c.tasks["t"] = task
        c._transition(task, "TASK_RUNNING")
        first = task.retry_interval
        for _ in range(12):
            c._send_update(task, retry=True)
        assert first == c.update_retry_seconds
        assert task.retry_interval == c.update_retry_max_seconds
        del c.tasks["t"], c.frameworks["fw"]


def test_subscribe_backoff_grows_and_resets_only_after_a_healthy_connection(
        master: MesosMasterDouble, backends: Callable[..., MesosBackend]) -> None:
    c = master.cluster
    c.credentials = {"someone-else": "x"}            # every SUBSCRIBE refused (401)
    b = backends(master.url, max_backoff=0.4)
    wait_for(lambda: b.health()["threads"]["stream"]["backoff"] == 0.4, what="backoff at its maximum")
    c.credentials = None
    wait_for(lambda: b.health()["subscribed"], what="subscribed")
    assert b.health()["threads"]["stream"]["backoff"] == 0.4   # not reset by merely connecting
    time.sleep(0.5)                                  # a connection that stayed up longer than max_backoff
    master.drop_stream()
    wait_for(lambda: b.subscriptions >= 2, what="re-subscribed")
    assert b.health()["threads"]["stream"]["backoff"] == 0.1


# ------------------------------------------------------------------------------------------------
# Invariant under random faults: every task is reported ended exactly once, and once reported
# ended no copy of it runs on (it would be re-queued and its time paid twice).
# ------------------------------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_OPS = ["submit", "submit", "finish", "fail", "lose", "partition", "reconnect", "drop"]


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.sampled_from(_OPS), st.integers(0, 2)), min_size=4, max_size=12))
def test_random_faults_never_report_a_task_twice_nor_leave_it_running(ops) -> None:
    master = MesosMasterDouble(heartbeat_interval=0.2, task_seconds=None, update_retry_seconds=0.3)
    c = master.cluster
    agents = [c.add_agent(name, cpus=2) for name in ("alice", "bob", "carol")]
    b = MesosBackend(master.url, roles=[ROLE], refuse_seconds=0.05)
    col = Collector(b)
    submitted: list[str] = []
    try:
        for op, n in ops:
            agent = agents[n]
            with c.lock:
                running = [t for t in c.tasks.values() if t.state == "TASK_RUNNING" and not t.partitioned]
            if op == "submit":
                tid = f"t{len(submitted)}"
                submitted.append(tid)
                b.submit(spec(tid))
            elif op in ("finish", "fail") and running:
                task = running[n % len(running)]
                (c.finish_task if op == "finish" else c.fail_task)(task.id)
            elif op in ("lose", "partition"):   # the machine of a running task, if any
                target = c.agents[running[n % len(running)].agent_id] if running else agent
                if target.active:
                    c.lose_agent(target.id, partitioned=op == "partition")
            elif op == "reconnect" and not agent.active:
                c.reconnect_agent(agent.id)
            elif op == "drop":
                master.drop_stream()
            col.seen += b.updates(timeout=0.05)
        for agent in agents:               # the partitions heal; ghosts come back
            if not agent.active:
                c.reconnect_agent(agent.id)

        def settled() -> bool:
            ended = {u.task_id for u in col.seen if u.terminal}
            with c.lock:
                for task in c.tasks.values():
                    if task.state == "TASK_RUNNING" and task.id not in ended:
                        c.finish_task(task.id)   # let the live ones end
                ghosts = [t.id for t in c.tasks.values() if t.state == "TASK_RUNNING" and t.id in ended]
            return not ghosts and ended >= set(submitted)

        col.wait(lambda _s: settled(), timeout=20)
        col.seen += b.updates(timeout=0.3)
        for tid in submitted:
            ends = [u.state for u in col.seen if u.task_id == tid and u.terminal]
            assert len(ends) == 1, (tid, [u.state for u in col.seen if u.task_id == tid])
        with c.lock:
            assert not [t.id for t in c.tasks.values() if t.state == "TASK_RUNNING"]
        assert master.validation_errors == [] and c.event_errors == []
    finally:
        b.close()
        master.stop()
