"""Jobs end to end: a real ZooKeeper, the engine's Operator, real subprocess workers, on both
execution backends.

Every test runs twice (`backend_kind`): on `local` (LocalBackend slots) and on `mesos` (a
MesosBackend subscribed to the in-process Mesos master TEST DOUBLE, tests/doubles/mesos_master.py,
whose agents mirror the local slots: one authenticated agent per contributor, its principal the
contributor's account and its resources, one cpu per slot, statically reserved for the
contributor's role, as `boidctl mesos agent-credentials` configures master and agents; the
backend credits the reservation, never an attribute). On mesos the double's executor hook plays the agents' command executor
(`CommandExecutor`): it really runs the TaskInfo's command with the TaskInfo's environment,
storage paths mapped under the test's storage root (as an agent with the storage mounted sees
them), so outputs land in storage exactly as on `local`.

Each fault has its equivalent on both backends (`Cluster` hides which):
- a lost worker: `LocalBackend.lose_contributor` / the double loses the contributor's agent
  (FAILURE + TASK_LOST, its commands die with it);
- a cheating contributor: `Slot(corrupt_output=True)` / an agent added with `corrupt_output=True`
  (labelled fault injection in the double) whose executor alters the outputs;
- operator restart: local tasks die with the process and come back LOST; on mesos the operator
  crashes without killing (`close(kill_running=False)`), its tasks keep running on the agents and
  a new MesosBackend with the same FrameworkID path in ZooKeeper fails over and reconciles them;
- unitTimeout and the deadline: the backend kills (local: signal; mesos: KILL).
Not mapped: fairness between protocols relies on the local backend's `capacity()` (on Mesos it is
the allocator's DRF, which the double does not implement), so only its quota half runs on mesos.
Mesos only: a task that ran across a dispatcher failover is credited the time it ran, from the
start the crashed process persisted in ZooKeeper (on local such tasks die and are re-run).
Every mesos test ends by asserting the double recorded no validation or event errors.

`CountingLedger` is a small test collaborator for the ledger hook: idempotent per (unit,
contributor), counting calls per unit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from boidcluster.adapters.local.backend import CORRUPTION, LocalBackend, Slot
from boidcluster.adapters.mesos import MesosBackend, agent_acls, agent_credentials, contributor_role
from boidcluster.adapters.storage import Storage
from boidcluster.adapters.store import Store
from boidcluster.engine.operator import Operator
from boidcluster.engine.world import Settings, World
from boidcluster.model.meta import ObjectMeta
from boidcluster.model.resources import Job, Protocol
from boidcluster.reconcilers import registry
from boidcluster.reconcilers.jobs import Dispatcher
from boidcluster.reconcilers.jobs.records import JobRecords
from doubles.mesos_master import Agent, MesosMasterDouble

PY = sys.executable
DATADIR = "protocols/mc"
ROLES = ("mc", "other", "capped")           # one Mesos role per protocol used below
FRAMEWORK_ID_PATH = "/boid/v1/mesos/framework"


class CountingLedger:
    """Records credits once per (unit key, contributor); counts calls per unit key."""

    def __init__(self) -> None:
        self.mu = threading.Lock()
        self.rows: dict[tuple[str, str], int] = {}
        self.calls: dict[str, int] = {}
        self.protocols: set[str] = set()

    def record_units(self, protocol, job, credits):
        with self.mu:
            self.protocols.add(protocol.spec.researcher)
            for key, acct, micros in credits:
                assert isinstance(micros, int)
                self.calls[f"{job.metadata.uid}/{key}"] = self.calls.get(f"{job.metadata.uid}/{key}", 0) + 1
                self.rows.setdefault((f"{job.metadata.uid}/{key}", acct), micros)


def eventually(check, timeout=30.0, interval=0.05):
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def protocol(name="mc", quota=None) -> Protocol:
    spec = {"title": "t", "owner": "boidteam", "researcher": "researcher1", "datadir": DATADIR,
            "fund": {"account": "boidfund", "quantity": "1000.0000 BOID"},
            "payRates": {"worker": "1.0000 BOID", "dispatcher": "0.5000 BOID"}}
    if quota:
        spec["quota"] = {"maxParallelism": quota}
    return Protocol.model_validate({"metadata": {"name": name}, "spec": spec})


def job(name, command, work_units, **spec) -> Job:
    return Job.model_validate({"metadata": ObjectMeta(name=name).model_dump(), "spec": {
        "protocol": spec.pop("protocol", "mc"), "image": "python:3.11-slim", "command": command,
        "workUnits": work_units, **spec}})


# ------------------------------------------------------------------------------------------------
# The mesos side: agents' command executor and the master double they belong to
# ------------------------------------------------------------------------------------------------

class CommandExecutor:
    """The double's executor hook: runs a TaskInfo's CommandInfo as a subprocess, as a Mesos agent's
    command executor would (own process group, stdout/stderr in a sandbox outside the outputs,
    "Command exited with status N" on failure). BOID_OUTPUT_DIR and BOID_INPUT_FILES are storage
    paths; they are mapped under the storage root. `kill` is the double's on_kill hook."""

    def __init__(self, storage_root: Path, sandboxes: Path) -> None:
        self.root, self.sandboxes = storage_root, sandboxes
        self.mu = threading.Lock()
        self.procs: dict[str, subprocess.Popen] = {}
        self.killed: set[str] = set()

    def _local(self, storage_path: str) -> Path:
        return self.root / storage_path.lstrip("/")

    def __call__(self, info: dict, agent: Agent) -> tuple[str, str]:
        tid, cmd = info["task_id"]["value"], info["command"]
        env = {v["name"]: v.get("value", "") for v in cmd.get("environment", {}).get("variables", [])}
        out = self._local(env["BOID_OUTPUT_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        env["BOID_OUTPUT_DIR"] = str(out)
        env["BOID_INPUT_FILES"] = json.dumps([str(self._local(p))
                                              for p in json.loads(env.get("BOID_INPUT_FILES") or "[]")])
        sandbox = self.sandboxes / tid
        sandbox.mkdir(parents=True, exist_ok=True)
        env.update(MESOS_SANDBOX=str(sandbox), MESOS_TASK_ID=tid)
        if cmd.get("shell", True):
            argv, executable = ["/bin/sh", "-c", cmd["value"]], None
        else:
            argv, executable = list(cmd.get("arguments") or [cmd["value"]]), cmd["value"]
        if shutil.which("setpriv"):   # the command dies with the test process, like the local backend's
            argv, executable = ["setpriv", "--pdeathsig", "KILL", "--", executable or argv[0], *argv[1:]], None
        with self.mu:
            if tid in self.killed:
                return "TASK_KILLED", "Command terminated with signal Killed"
            with open(sandbox / "stdout", "wb") as so, open(sandbox / "stderr", "wb") as se:
                proc = subprocess.Popen(argv, executable=executable, env={**os.environ, **env}, cwd=sandbox,
                                        stdin=subprocess.DEVNULL, stdout=so, stderr=se, start_new_session=True)
            self.procs[tid] = proc
        code = proc.wait()
        with self.mu:
            self.procs.pop(tid, None)
        if code == 0:
            if agent.corrupt_output:   # FAULT INJECTION: a cheating agent
                for p in sorted(out.rglob("*")):
                    if p.is_file():
                        with open(p, "ab") as f:
                            f.write(CORRUPTION)
            return "TASK_FINISHED", ""
        if code < 0:
            return "TASK_KILLED", f"Command terminated with signal {signal.Signals(-code).name}"
        return "TASK_FAILED", f"Command exited with status {code}"

    def kill(self, task_id: str) -> None:
        with self.mu:
            self.killed.add(task_id)
            proc = self.procs.get(task_id)
            if proc is not None and proc.returncode is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    def live(self) -> list[str]:
        with self.mu:
            return list(self.procs)

    def close(self) -> None:
        for tid in self.live():
            self.kill(tid)


class MesosSite:
    """The Mesos cluster the operator's MesosBackend subscribes to: a master double and its agents,
    which outlive operator restarts."""

    def __init__(self, storage_root: Path, sandboxes: Path) -> None:
        self.executor = CommandExecutor(storage_root, sandboxes)
        self.master = MesosMasterDouble(heartbeat_interval=0.5, task_seconds=None, update_retry_seconds=1.0,
                                        executor=self.executor, on_kill=self.executor.kill)
        self.cluster = self.master.cluster
        self.credentials: dict = {"credentials": []}

    @property
    def accounts(self) -> list[str]:
        return sorted(c["principal"] for c in self.credentials["credentials"])

    def add_agents(self, slots) -> None:
        """One agent per contributor, one cpu per local slot; a corrupt slot makes a cheating agent."""
        per: dict[str, list[Slot]] = {}
        for s in slots:
            s = s if isinstance(s, Slot) else Slot(s)
            per.setdefault(s.contributor, []).append(s)
        self.credentials = agent_credentials([*self.accounts, *per], self.credentials)
        secret = {c["principal"]: c["secret"] for c in self.credentials["credentials"]}
        with self.cluster.lock:
            self.cluster.configure_agent_auth(secret, agent_acls(self.accounts))
            have = {a.principal for a in self.cluster.agents.values() if a.active}
            for name, ss in per.items():
                if name not in have:
                    self.cluster.add_agent(None, cpus=len(ss), mem=1024 * len(ss), principal=name,
                                           secret=secret[name], reserve_for=contributor_role(name),
                                           corrupt_output=any(s.corrupt_output for s in ss))

    def live_tasks(self) -> list[str]:
        return [t.id for t in self.cluster.running()]

    def close(self) -> None:
        self.executor.close()
        self.master.stop()


class Cluster:
    """One 'operator process': a store, a backend, a dispatcher and the Operator."""

    def __init__(self, kind: str, zk_hosts: str, root: Path, slots, ledger, site: MesosSite | None,
                 host_reducers: bool = True) -> None:
        self.kind, self.site = kind, site
        self.store = Store(zk_hosts, timeout=5.0, session_timeout=4.0)
        if kind == "local":
            self.backend = LocalBackend(root, slots, kill_grace=0.2)
        else:
            assert site is not None
            site.add_agents(slots)
            self.backend = MesosBackend(site.master.url, roles=ROLES, zk=self.store.client,
                                        framework_id_path=FRAMEWORK_ID_PATH, refuse_seconds=0.2,
                                        contributors=site.accounts)
        self.world = World(store=self.store, storage=Storage(f"file://{root}"), backend=self.backend,
                           dispatcher=Dispatcher(self.backend, retry_backoff=0.05, poll=0.05, kill_grace=1.0),
                           ledger=ledger, settings=Settings(host_reducers=host_reducers))
        self.op = Operator(self.store, self.world, registry, workers=2).start()

    # -- the backend, whichever it is ------------------------------------------------------------
    def running(self) -> list[str]:
        """Task ids holding a slot (local) / live on an agent (mesos) right now."""
        if self.site is None:
            return [t for t in list(self.backend._busy) if t]
        return self.site.live_tasks()

    def running_on(self, contributor: str) -> bool:
        if self.site is None:
            return any(t for i, t in enumerate(list(self.backend._busy))
                       if t and self.backend.slots[i].contributor == contributor)
        agent = self.site.cluster.agent_by_account(contributor)
        return any(t.agent_id == agent.id for t in self.site.cluster.running())

    def idle(self) -> bool:
        if self.site is None:
            return not any(self.backend._busy)
        return not self.site.live_tasks() and not self.site.executor.live()

    def lose(self, contributor: str) -> list[str]:
        """FAULT INJECTION: the contributor's machine vanishes; returns the task ids lost."""
        if self.site is None:
            return self.backend.lose_contributor(contributor)
        c = self.site.cluster
        with c.lock:
            agent = c.agent_by_account(contributor)
            lost = [t.id for t in c.running() if t.agent_id == agent.id]
            c.lose_agent(agent.id)
        return lost

    # -- lifecycle ------------------------------------------------------------------------------
    def stop(self) -> None:
        self.op.stop()
        self.backend.close()   # local: the subprocesses die; mesos: running tasks are KILLed
        self.store.close()

    def crash(self) -> None:
        """The operator process dies mid-job: local subprocesses die with it (parent-death signal);
        Mesos tasks keep running on their agents for the framework's failover timeout."""
        self.op.stop()
        if self.site is None:
            self.backend.close()
        else:
            self.backend.close(kill_running=False)
        self.store.close()


@pytest.fixture(params=["local", "mesos"])
def backend_kind(request) -> str:
    return request.param


@pytest.fixture
def env(backend_kind, zk_hosts, store, tmp_path):
    root = tmp_path / "storage"
    root.mkdir()
    site = MesosSite(root, tmp_path / "sandboxes") if backend_kind == "mesos" else None
    clusters: list[Cluster] = []
    ledger = CountingLedger()

    class Env:
        def __init__(self):
            self.root, self.ledger, self.store, self.kind, self.site = root, ledger, store, backend_kind, site

        def start(self, slots=("alice", "bob"), host_reducers=True) -> Cluster:
            c = Cluster(backend_kind, zk_hosts, root, list(slots), ledger, site, host_reducers)
            clusters.append(c)
            return c

        def wait(self, name, phase="Succeeded", timeout=30.0) -> Job:
            def done():
                j = store.get(Job, name)
                if j.status and j.status.phase in ("Succeeded", "Failed"):
                    return j
            j = eventually(done, timeout)
            assert j.status.phase == phase, j.status
            return j

        def records(self, name) -> JobRecords:
            # the full record: from ZooKeeper, or from storage once the finished job was compacted
            return JobRecords.load_full(store, Storage(f"file://{root}"), store.get(Job, name).metadata.uid)

    store.create(protocol())
    yield Env()
    for c in clusters:
        try:
            c.stop()
        except Exception:
            pass
    if site is not None:
        site.close()
        assert site.master.validation_errors == []
        assert site.cluster.event_errors == []


PI = ["python3", "-c", (
    "import json,os,random\n"
    "p=json.loads(os.environ['BOID_UNIT_PARAMS']); rng=random.Random(p['seed']*1000+p['n'])\n"
    "hits=sum(1 for _ in range(p['n']) if rng.random()**2+rng.random()**2<=1)\n"
    "open(os.path.join(os.environ['BOID_OUTPUT_DIR'],'result.jsonl'),'w').write("
    "json.dumps({'seed':p['seed'],'n':p['n'],'hits':hits},sort_keys=True)+'\\n')\n")]


def test_sweep_job_replicated_runs_to_a_correct_amalgamated_output(env):
    c = env.start(["alice", "bob", "alice", "bob"])
    env.store.create(job("pi", PI, {"sweep": {"seed": {"range": {"start": 1, "stop": 4}}, "n": [100, 200]}},
                         replication={"replicas": 2, "quorum": 2}, output={"path": "results/pi", "reduce": "jsonl"}))
    j = env.wait("pi")
    st = j.status
    assert st.units.total == 6 and st.units.validated == 6 and st.units.pending == 0 and st.progress == "6/6 (100%)"
    assert st.output == f"{DATADIR}/results/pi" and st.start_time and st.completion_time
    lines = [json.loads(x) for x in (env.root / DATADIR / "results/pi/results.jsonl").read_text().splitlines()]
    assert [(x["seed"], x["n"]) for x in lines] == [(1, 100), (2, 100), (3, 100), (1, 200), (2, 200), (3, 200)]
    import random
    for x in lines:  # the same computation, here: the output is each unit's true result
        rng = random.Random(x["seed"] * 1000 + x["n"])
        assert x["hits"] == sum(1 for _ in range(x["n"]) if rng.random() ** 2 + rng.random() ** 2 <= 1)
    manifest = json.loads((env.root / DATADIR / "results/pi/manifest.json").read_text())
    assert [u["index"] for u in manifest["units"]] == list(range(6))
    for u in manifest["units"]:
        assert sorted(c["contributor"] for c in u["credited"]) == ["alice", "bob"] and len(u["hash"]) == 64
    assert {a.account for a in st.contributors} == {"alice", "bob"}
    assert all(a.microseconds > 0 for a in st.contributors) and len(st.slowest_units) == 5
    # the ledger got every credited replica exactly once
    assert len(env.ledger.rows) == 12 and set(env.ledger.calls.values()) == {2}
    assert env.records("pi").recorded == set(env.records("pi").accepted)
    assert c.idle()


def test_lost_worker_unit_still_completes_exactly_once(env, tmp_path):
    c = env.start()
    gate = tmp_path / "gate"
    env.store.create(job("lost", ["sh", "-c", f'while [ ! -e {gate} ]; do sleep 0.02; done; '
                                  'echo "$BOID_UNIT_INDEX" > "$BOID_OUTPUT_DIR/out"'],
                         {"count": 3}, retries=0, output={"reduce": "concat"}))
    eventually(lambda: c.running_on("alice"))
    lost = c.lose("alice")   # local: its processes killed; mesos: its agent lost (TASK_LOST)
    assert lost
    gate.touch()
    j = env.wait("lost")
    assert j.status.units.validated == 3 and j.status.units.failed == 0
    recs = env.records("lost")
    states = sorted(r.state for r in recs.results.values())
    assert states.count("LOST") == len(lost) and states.count("FINISHED") == 3
    assert (env.root / DATADIR / "jobs/lost/results").read_text() == "0\n1\n2\n"
    assert sorted(env.ledger.calls.values()) == [1, 1, 1]


def test_unit_that_always_fails_fails_the_job_and_is_named(env):
    env.start()
    env.store.create(job("bad", ["sh", "-c", '[ "$BOID_UNIT_INDEX" != 1 ] || { echo nope >&2; exit 7; }'],
                         {"count": 3}, retries=1))
    j = env.wait("bad", "Failed")
    uid1 = "u000001"
    assert j.status.failed_units == [uid1] and j.status.units.failed == 1
    failed = j.status.condition("Failed")
    assert failed.status == "True" and failed.reason == "UnitFailed" and uid1 in failed.message
    if env.kind == "local":   # the local backend quotes the stderr tail; Mesos' message has no stderr
        assert "nope" in failed.message
    else:
        assert "exited with status 7" in failed.message
    fails = [r for r in env.records("bad").results.values() if r.unit == uid1]
    assert len(fails) == 2 and all(r.exit_code == 7 and r.state == "FAILED" for r in fails)


def test_cheating_contributor_is_outvoted_and_not_credited(env):
    env.start([Slot("alice"), Slot("bob"), Slot("mallory", corrupt_output=True)])
    env.store.create(job("vote", ["sh", "-c", 'sleep 0.2; echo "unit $BOID_UNIT_INDEX" > "$BOID_OUTPUT_DIR/r.txt"'],
                         {"count": 2}, replication={"replicas": 2, "quorum": 2}, output={"reduce": "concat"}))
    j = env.wait("vote")
    assert (env.root / DATADIR / "jobs/vote/results").read_text() == "unit 0\nunit 1\n"
    assert j.status.disagreements and {d.contributor for d in j.status.disagreements} == {"mallory"}
    assert "mallory" not in {a.account for a in j.status.contributors}
    assert not any(acct == "mallory" for _, acct in env.ledger.rows)
    recs = env.records("vote")
    assert any(a.rejected for a in recs.accepted.values())
    for a in recs.accepted.values():
        assert sorted(x.contributor for x in a.credited) == ["alice", "bob"]


def test_operator_killed_mid_job_completes_and_records_each_unit_once(env):
    first = env.start()
    env.store.create(job("restart", ["sh", "-c", 'sleep 0.3; echo "$BOID_UNIT_INDEX" > "$BOID_OUTPUT_DIR/o"'],
                         {"count": 8}, output={"reduce": "concat"}))
    eventually(lambda: len(env.records("restart").accepted) >= 2)
    first.crash()  # mid-job
    before = env.records("restart")
    assert before.in_flight() and len(before.accepted) < 8
    second = env.start()   # a new process: new store session, new backend, new dispatcher
    j = env.wait("restart")
    assert j.status.units.validated == 8
    assert (env.root / DATADIR / "jobs/restart/results").read_text() == "".join(f"{i}\n" for i in range(8))
    recs = env.records("restart")
    assert sorted(env.ledger.calls.values()) == [1] * 8 and recs.recorded == set(recs.accepted)
    if env.kind == "local":   # attempts in flight died with the process: LOST, re-queued
        assert [r.state for r in recs.results.values()].count("LOST") >= len(before.in_flight())
        return
    # mesos: the new backend failed over into the same framework (FrameworkID from ZooKeeper) and
    # reconciled: tasks that had reached an agent kept running and finished, credited to the agent's
    # account; only those the crashed backend still held in its queue come back LOST.
    assert second.backend.framework_id == first.backend.framework_id and len(env.site.cluster.frameworks) == 1
    on_agents = {t for t in before.in_flight() if t in env.site.cluster.tasks}
    assert on_agents
    for tid in before.in_flight():
        r = recs.results[tid]
        if tid in on_agents:
            assert r.state == "FINISHED" and r.contributor in ("alice", "bob"), (tid, r)
        else:
            assert r.state == "LOST", (tid, r)


@pytest.mark.parametrize("backend_kind", ["mesos"])
def test_failover_credits_the_time_tasks_ran_before_it(env):
    # mesos only: on local, tasks in flight die with the operator and are simply run again. The
    # crashed process acknowledged the tasks' RUNNING updates; the new one learns when they started
    # from the start znodes the first one wrote (<framework_id_path>/tasks/<task id>).
    first = env.start()
    t0 = time.time()
    env.store.create(job("credit", ["sleep", "1"], {"count": 2}, output={"reduce": "none"}))
    eventually(lambda: len(first.running()) == 2)
    first.crash()
    time.sleep(0.3)   # down for a while: the tasks keep running on their agents
    second = env.start()
    env.wait("credit")
    elapsed_us = (time.time() - t0) * 1e6
    recs = env.records("credit")
    credited = [c.us for a in recs.accepted.values() for c in a.credited]
    # at least 80% of the command's sleep, and never more than the wall time since submission
    # (the persisted start is read, not added to anything)
    assert len(credited) == 2 and all(800_000 <= us <= elapsed_us for us in credited), (credited, elapsed_us)
    assert second.backend.framework_id == first.backend.framework_id
    zk = env.store.client   # each start znode was deleted once its terminal update was reported
    eventually(lambda: zk.get_children(FRAMEWORK_ID_PATH + "/tasks") == [], timeout=5)


def test_deadline_fails_the_job_naming_the_units_left_and_frees_slots(env):
    c = env.start()
    env.store.create(job("slow", ["sleep", "30"], {"count": 3}, deadline="1s"))
    j = env.wait("slow", "Failed", timeout=15)
    cond = j.status.condition("Failed")
    assert cond.reason == "DeadlineExceeded" and "u000000" in cond.message
    assert j.status.failed_units == ["u000000", "u000001", "u000002"]
    eventually(c.idle, timeout=5)


def test_unit_timeout_kills_and_retries(env, tmp_path):
    env.start()
    marker = tmp_path / "first-attempt"
    env.store.create(job("hang", ["sh", "-c", f'if [ ! -e {marker} ]; then touch {marker}; sleep 30; fi; '
                                  'echo done > "$BOID_OUTPUT_DIR/o"'],
                         {"count": 1}, unitTimeout="1s", retries=1))
    env.wait("hang", timeout=20)
    results = sorted(env.records("hang").results.values(), key=lambda r: r.finished_us)
    # the backend enforces TaskSpec.timeout: local reports FAILED, mesos a KILL it sent itself
    timed_out = "FAILED" if env.kind == "local" else "KILLED"
    assert [r.state for r in results] == [timed_out, "FINISHED"] and "timed out" in results[0].message
    assert results[0].failure is True   # counts against retries on both backends


def test_unit_that_always_times_out_fails_the_job(env):
    env.start()
    env.store.create(job("stuck", ["sleep", "30"], {"count": 1}, unitTimeout="1s", retries=0))
    j = env.wait("stuck", "Failed", timeout=20)
    assert j.status.failed_units == ["u000000"] and j.status.condition("Failed").reason == "UnitFailed"


def test_inputs_job_with_a_command_reducer(env):
    env.start()
    for i, text in enumerate(["a", "b", "c", "d", "e"]):
        (env.root / DATADIR / "in").mkdir(parents=True, exist_ok=True)
        (env.root / DATADIR / "in" / f"f{i}.txt").write_text(text)
    (env.root / DATADIR / "in" / "skip.csv").write_text("x")
    unit = ("import json,os;fs=json.loads(os.environ['BOID_INPUT_FILES']);"
            "open(os.path.join(os.environ['BOID_OUTPUT_DIR'],'o'),'w').write(''.join(open(f).read() for f in fs).upper())")
    reducer = ("import os,sys;open(os.path.join(os.environ['BOID_OUTPUT_DIR'],'all.txt'),'w')"
               ".write('|'.join(open(os.path.join(d,'o')).read() for d in sys.argv[1:]))")
    env.store.create(job("files", [PY, "-c", unit], {"inputs": {"path": "in", "pattern": "*.txt", "perUnit": 2}},
                         output={"path": "out", "reduce": "command", "command": [PY, "-c", reducer]}))
    env.wait("files")
    assert (env.root / DATADIR / "out/all.txt").read_text() == "AB|CD|E"
    manifest = json.loads((env.root / DATADIR / "out/manifest.json").read_text())
    assert [u["inputs"] for u in manifest["units"]] == [
        [f"{DATADIR}/in/f0.txt", f"{DATADIR}/in/f1.txt"], [f"{DATADIR}/in/f2.txt", f"{DATADIR}/in/f3.txt"],
        [f"{DATADIR}/in/f4.txt"]]


def test_a_reducer_given_unit_directories_in_a_file_and_one_they_cannot_reach_as_arguments(env):
    """With output.unitDirs: file the reducer reads the accepted directories from $BOID_UNIT_DIRS
    (no arguments); a job whose directories cannot be arguments (100,000 units: ~9 MB of paths,
    ARG_MAX is 2 MB) fails at once, saying what to set, instead of after every unit ran."""
    env.start()
    reducer = ("import os,sys;ds=open(os.environ['BOID_UNIT_DIRS']).read().split();assert not sys.argv[1:];"
               "open(os.path.join(os.environ['BOID_OUTPUT_DIR'],'all.txt'),'w')"
               ".write('|'.join(open(os.path.join(d,'o')).read() for d in ds))")
    env.store.create(job("listed", ["sh", "-c", 'echo -n "$BOID_UNIT_INDEX" > "$BOID_OUTPUT_DIR/o"'], {"count": 4},
                         output={"path": "listed", "reduce": "command", "command": [PY, "-c", reducer],
                                 "unitDirs": "file"}))
    env.store.create(job("huge", ["true"], {"count": 100_000},
                         output={"reduce": "command", "command": [PY, "-c", "pass"]}))
    j = env.wait("huge", "Failed")
    failed = j.status.condition("Failed")
    assert failed.reason == "ReducerArgumentsTooLong" and "set output.unitDirs: file" in failed.message
    assert j.status.units.validated == 0 and env.records("huge").attempts == {}   # nothing ran
    env.wait("listed")
    assert (env.root / DATADIR / "listed/all.txt").read_text() == "0|1|2|3"


def test_a_reducer_sees_nothing_of_the_operators_environment(env, monkeypatch):
    """The attacker is a researcher whose reducer dumps its environment into the job's output:
    the operator's chain keys (BOID_CHAIN_KEYS, as `operator run` may be given them) must not be
    there, nor anything else of the operator's but PATH."""
    secret = "5KQwrPbwdL6PhXujxW37FSSQZ1JiwsST4cqQzDeyXtP79zkvFD3"
    monkeypatch.setenv("BOID_CHAIN_KEYS", f"operator={secret}")
    monkeypatch.setenv("BOID_SOME_PASSWORD", "hunter2")
    env.start()
    dump = "import os,json;json.dump(dict(os.environ),open(os.path.join(os.environ['BOID_OUTPUT_DIR'],'env.json'),'w'))"
    env.store.create(job("nosy", ["true"], {"count": 2},
                         output={"path": "nosy", "reduce": "command", "command": [PY, "-c", dump]}))
    env.wait("nosy")
    seen = (env.root / DATADIR / "nosy/env.json").read_text()
    assert secret not in seen and "hunter2" not in seen
    assert set(json.loads(seen)) <= {"PATH", "HOME", "TMPDIR", "LANG", "BOID_OUTPUT_DIR", "BOID_UNIT_DIRS", "LC_CTYPE"}


def test_an_operator_that_does_not_trust_reducers_fails_such_a_job_before_any_unit_runs(env):
    """A reducer runs unsandboxed on the operator's machine: an operator not started with
    --allow-host-reducers refuses the job at once, saying why and what to do; other jobs run."""
    env.start(host_reducers=False)
    env.store.create(job("reduced", ["true"], {"count": 3},
                         output={"reduce": "command", "command": [PY, "-c", "pass"]}))
    env.store.create(job("joined", ["sh", "-c", 'echo "$BOID_UNIT_INDEX" > "$BOID_OUTPUT_DIR/o"'], {"count": 2},
                         output={"reduce": "concat"}))
    j = env.wait("reduced", "Failed")
    failed = j.status.condition("Failed")
    assert failed.reason == "ReducerNotAllowed" and "--allow-host-reducers" in failed.message
    assert env.records("reduced").attempts == {}
    env.wait("joined")
    assert (env.root / DATADIR / "jobs/joined/results").read_text() == "0\n1\n"


def test_protocols_share_slots_fairly_and_quota_holds(env):
    # Fairness between protocols is the dispatcher's waterfill over the local backend's capacity();
    # on Mesos it is the allocator's DRF between roles, which the double does not implement (it offers
    # the roles in order), so on mesos only the quota (a dispatcher limit) is asserted.
    c = env.start(["alice", "bob", "carol", "dave"])
    env.store.create(protocol("other"))
    env.store.create(protocol("capped", quota=1))
    env.store.create(job("big", ["sleep", "0.4"], {"count": 12}, output={"reduce": "none"}))
    peak = {"mc": 0, "other": 0, "capped": 0}
    env.store.create(job("small", ["sleep", "0.4"], {"count": 4}, protocol="other", output={"reduce": "none"}))
    env.store.create(job("one", ["sleep", "0.4"], {"count": 3}, protocol="capped", output={"reduce": "none"}))
    both = False
    end = time.monotonic() + 30
    while time.monotonic() < end:
        busy = c.running()
        n = {p: sum(1 for t in busy if t.startswith(j)) for p, j in (("mc", "big-"), ("other", "small-"), ("capped", "one-"))}
        for p in peak:
            peak[p] = max(peak[p], n[p])
        both = both or (n["mc"] and n["other"])
        if all(env.store.get(Job, x).status and env.store.get(Job, x).status.phase == "Succeeded"
               for x in ("big", "small", "one")):
            break
        time.sleep(0.02)
    else:
        raise AssertionError("jobs did not finish")
    assert peak["capped"] == 1 and peak["other"] >= 1
    if env.kind == "local":
        assert both


# ------------------------------------------------------------------------------------------------
# At scale: event driven, bounded ZooKeeper, failures that back off
# ------------------------------------------------------------------------------------------------

RUNS = "/boid/v1/runs"


def test_a_running_job_is_not_polled_and_its_task_ends_wake_it(env, tmp_path):
    c = env.start()
    gate = tmp_path / "gate"
    env.store.create(job("quiet", ["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"], {"count": 2},
                         output={"reduce": "none"}))
    eventually(lambda: len(c.running()) == 2)
    m = c.op.metrics
    passes = lambda: m.reconciles.labels("Job", "ok")._value.get()  # noqa: E731
    time.sleep(1.0)          # the launch's own follow-ups (status written at most every 0.5 s)
    before = passes()
    time.sleep(2.0)          # nothing happens to the job: no pass (polling every 0.05 s made ~40)
    assert passes() - before <= 1
    gate.touch()
    env.wait("quiet")
    assert m.reasons.labels("Job", "task-update")._value.get() >= 2   # the task ends woke it
    # a finished job enqueues its Protocol (through the engine, Result.notify)
    eventually(lambda: m.reasons.labels("Protocol", "notify:Job")._value.get() >= 1, timeout=10)


def test_settled_units_leave_the_operators_memory_and_the_output_stays_complete(env, tmp_path):
    """Memory flat with job size: a unit accepted, recorded by the ledger and with nothing in flight
    keeps one bit in the operator (its records stay in ZooKeeper); the output, the ledger and the
    compacted record still have every unit, read back from ZooKeeper once."""
    c = env.start()
    gate = tmp_path / "gate"
    env.store.create(job("lean", ["sh", "-c", f'[ "$BOID_UNIT_INDEX" != 11 ] || while [ ! -e {gate} ]; '
                                   f'do sleep 0.05; done; echo "$BOID_UNIT_INDEX" > "$BOID_OUTPUT_DIR/o"'],
                         {"count": 12}, output={"reduce": "concat"}))
    uid = eventually(lambda: env.store.get(Job, "lean").metadata.uid)
    recs = eventually(lambda: (r := c.world.dispatcher._records.get(uid)) is not None and r.n_retired == 11 and r,
                      timeout=30)
    assert recs.validated == 11 and not recs.accepted and not recs.is_accepted("u000011")
    assert {a.unit for a in recs.attempts.values()} == {"u000011"} and set(recs.unit_tids) == {"u000011"}
    assert eventually(lambda: env.store.get(Job, "lean").status.units.validated == 11)
    gate.touch()
    j = env.wait("lean")
    assert j.status.units.validated == 12 and j.status.units.succeeded == 12
    assert (env.root / DATADIR / "jobs/lean/results").read_text().split() == [str(i) for i in range(12)]
    manifest = json.loads((env.root / DATADIR / "jobs/lean/manifest.json").read_text())
    assert [u["id"] for u in manifest["units"]] == [f"u{i:06d}" for i in range(12)]
    assert all(len(u["hash"]) == 64 and u["credited"] for u in manifest["units"])
    assert sorted(env.ledger.calls.values()) == [1] * 12   # every unit given to the ledger once
    zk = env.store.client
    eventually(lambda: zk.get_children(f"{RUNS}/{uid}") == ["summary"], timeout=10)
    full = env.records("lean")
    assert sorted(full.accepted) == [f"u{i:06d}" for i in range(12)] and full.recorded == set(full.accepted)
    assert len(full.attempts) == len(full.results) >= 12


def test_a_finished_job_is_compacted_and_a_deleted_one_leaves_nothing(env):
    env.start()
    env.store.create(job("tidy", ["sh", "-c", 'echo "$BOID_UNIT_INDEX" > "$BOID_OUTPUT_DIR/o"'], {"count": 5},
                         output={"reduce": "concat"}))
    uid = env.wait("tidy").metadata.uid
    zk = env.store.client
    # every record but one small summary leaves ZooKeeper once the ledger has every credit
    eventually(lambda: zk.get_children(f"{RUNS}/{uid}") == ["summary"], timeout=10)
    summary = json.loads(zk.get(f"{RUNS}/{uid}/summary")[0])
    full = env.records("tidy")   # now read from storage: records.json next to the manifest
    assert summary["record"] == f"{DATADIR}/jobs/tidy/records.json"
    assert len(full.accepted) == 5 and full.recorded == set(full.accepted) and not full.in_flight()
    per: dict[str, int] = {}
    for a in full.accepted.values():
        for cr in a.credited:
            per[cr.contributor] = per.get(cr.contributor, 0) + cr.us
    assert summary["contributors"] == per and summary["validated"] == 5   # per-contributor totals kept
    j = env.store.get(Job, "tidy")
    assert j.status.phase == "Succeeded" and j.status.units.validated == 5
    assert {a.account: a.microseconds for a in j.status.contributors} == per
    assert sorted(env.ledger.calls.values()) == [1] * 5   # compaction never re-records
    tag = f"tidy-{uid[:8]}"
    assert (env.root / DATADIR / ".runs" / tag).exists()
    env.store.delete(Job, "tidy")
    eventually(lambda: not zk.exists(f"{RUNS}/{uid}"), timeout=10)
    assert not (env.root / DATADIR / ".runs" / tag).exists()
    assert (env.root / DATADIR / "jobs/tidy/results").read_text() == "0\n1\n2\n3\n4\n"   # the output stays


def test_deleting_a_running_job_kills_its_tasks_and_leaves_nothing_in_zookeeper(env):
    c = env.start()
    env.store.create(job("gone", ["sleep", "30"], {"count": 4}, output={"reduce": "none"}))
    eventually(lambda: len(c.running()) == 2)
    uid = env.store.get(Job, "gone").metadata.uid
    env.store.delete(Job, "gone")
    eventually(lambda: not env.store.client.exists(f"{RUNS}/{uid}"), timeout=10)
    eventually(c.idle, timeout=10)
    assert "gone" not in [j.name for j in env.store.list(Job)]


def test_ttl_seconds_after_finished_deletes_the_job_and_its_summary(env):
    env.start()
    env.store.create(job("brief", ["true"], {"count": 2}, output={"reduce": "none"}, ttlSecondsAfterFinished=1))
    uid = env.store.get(Job, "brief").metadata.uid
    eventually(lambda: "brief" not in [j.name for j in env.store.list(Job)], timeout=20)
    assert not env.store.client.exists(f"{RUNS}/{uid}")
    manifest = json.loads((env.root / DATADIR / "jobs/brief/manifest.json").read_text())
    assert len(manifest["units"]) == 2   # it did run to the end before it went


class RefusingBackend(LocalBackend):
    """A test collaborator: the local backend, except that submits of the units in `refuse` raise
    (as a backend that rejects a task would); counts the refusals."""

    def __init__(self, *args, refuse=(), **kw) -> None:
        super().__init__(*args, **kw)
        self.refuse, self.refused = set(refuse), []

    def submit(self, task) -> None:
        if task.unit in self.refuse:
            self.refused.append(time.monotonic())
            raise RuntimeError(f"no room for {task.unit} (refused)")
        super().submit(task)


@pytest.mark.parametrize("backend_kind", ["local"])
def test_a_submit_that_keeps_failing_backs_off_and_fails_the_unit_saying_why(env, zk_hosts):
    from boidcluster.reconcilers.jobs.quorum import SAME_ERROR_LIMIT

    store = Store(zk_hosts, timeout=5.0, session_timeout=4.0)
    backend = RefusingBackend(env.root, ["alice", "bob"], refuse={"u000001"}, kill_grace=0.2)
    world = World(store=store, storage=Storage(f"file://{env.root}"), backend=backend,
                  dispatcher=Dispatcher(backend, retry_backoff=0.05, kill_grace=1.0), ledger=env.ledger)
    op = Operator(store, world, registry, workers=2).start()
    try:
        env.store.create(job("refused", ["true"], {"count": 3}, output={"reduce": "none"}))
        j = env.wait("refused", "Failed")
        failed = j.status.condition("Failed")
        assert failed.reason == "UnitFailed" and "u000001" in failed.message and "no room" in failed.message
        assert j.status.failed_units == ["u000001"]
        # bounded: the same error SAME_ERROR_LIMIT times, not once per pass forever; waits grew
        assert len(backend.refused) == SAME_ERROR_LIMIT
        gaps = [b - a for a, b in zip(backend.refused, backend.refused[1:])]
        # each retry waited at least its doubling backoff (lower bounds only: a loaded machine may be
        # slower, never faster); the first was re-queued at once (backoff 0, quorum.backoff)
        assert all(g >= 0.05 * 2 ** (i - 1) * 0.9 for i, g in enumerate(gaps) if i > 0), gaps
        refused = [r for r in env.records("refused").results.values() if r.unit == "u000001"]
        assert len(refused) == SAME_ERROR_LIMIT and all(r.submit_error and not r.failure for r in refused)
    finally:
        op.stop()
        backend.close()
        store.close()


@pytest.mark.parametrize("backend_kind", ["local"])
def test_a_unit_lost_again_and_again_for_the_same_reason_fails_with_that_reason(env):
    from boidcluster.reconcilers.jobs.quorum import SAME_ERROR_LIMIT

    c = env.start(["alice"])
    env.store.create(job("cursed", ["sleep", "30"], {"count": 1}, retries=0, output={"reduce": "none"}))
    lost: list[str] = []
    for _ in range(SAME_ERROR_LIMIT):   # each time a new attempt runs, its worker vanishes
        eventually(lambda: [t for t in c.running() if t not in lost])
        lost += c.lose("alice")
    j = env.wait("cursed", "Failed")
    msg = j.status.condition("Failed").message
    assert "contributor alice lost" in msg and f"{SAME_ERROR_LIMIT} attempts in a row" in msg
    eventually(c.idle, timeout=5)
