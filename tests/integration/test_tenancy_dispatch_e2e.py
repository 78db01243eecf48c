"""The honest path end to end, as deployed (issue 14): `boidctl operator run --backend none
--dispatcher-identities DIR` as the admin, and `boidctl dispatcher run --password-file` as the
protocol's own identity, real processes on a secured real ZooKeeper. A user's job runs to the
end and its deletion is cleaned up by the dispatcher alone; no password is in an argument or a log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from boidcluster.adapters.auth import RUNS
from boidcluster.adapters.store import NotFound
from boidcluster.cli.kubeconfig import Config, write_private
from boidcluster.model.resources import Job, Protocol
from fixtures.operator import eventually

BOIDCTL = [sys.executable, "-m", "boidcluster.cli.main"]


def proto(name: str) -> Protocol:
    return Protocol.model_validate({
        "apiVersion": "cluster.boid.com/v1alpha1", "kind": "Protocol", "metadata": {"name": name},
        "spec": {"title": "t", "owner": "boidteam", "researcher": "researcher1", "datadir": f"/{name}",
                 "fund": {"account": "boidfund", "quantity": "100.0000 BOID"},
                 "payRates": {"worker": "1.0000 BOID", "dispatcher": "0.5000 BOID"}}})


def job(name: str, protocol: str) -> Job:
    return Job.model_validate({"apiVersion": "cluster.boid.com/v1alpha1", "kind": "Job", "metadata": {"name": name},
                               "spec": {"protocol": protocol, "image": "python:3.11-slim",
                                        "command": ["sh", "-c", 'echo "unit $BOID_UNIT_INDEX" > "$BOID_OUTPUT_DIR/r"'],
                                        "workUnits": {"count": 3}, "output": {"reduce": "concat"}}})


class Proc:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.out = open(log, "w")
        self.p = subprocess.Popen([*BOIDCTL, *args], env=env, stdout=self.out, stderr=subprocess.STDOUT, text=True)

    def cmdline(self) -> str:
        return Path(f"/proc/{self.p.pid}/cmdline").read_bytes().decode(errors="replace")

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.out.close()


@pytest.fixture
def home(secured, tmp_path):
    h = tmp_path / "home"
    pw = h / "credentials" / "admin"
    write_private(pw, secured.admin.password + "\n")
    config = Config.load(h / "config")
    config.set_cluster("c", server=secured.hosts)
    config.set_user("admin", **{"password-file": str(pw)})
    config.set_context("admin@c", cluster="c", user="admin")
    config.use("admin@c")
    config.save()
    # the operator's own identity, made an admin by the human admin (as on a deployed cluster)
    opw = h / "credentials" / "operator"
    write_private(opw, "operator-" + secured.admin.password[:20] + "\n")
    from click.testing import CliRunner

    from boidcluster.cli.main import cli
    r = CliRunner(env={"BOID_HOME": str(h), "BOID_ZK": ""}).invoke(
        cli, ["auth", "secure-cluster", "--operator-password-file", str(opw)], catch_exceptions=False)
    assert r.exit_code == 0 and r.output.strip() == "cluster secured: admins admin, operator", r.output
    return h


def test_a_dispatcher_with_its_own_identity_runs_and_cleans_up_a_users_job(secured, home, tmp_path):
    storage = f"file://{tmp_path / 'storage'}"
    ids = tmp_path / "identities"
    env = {**os.environ, "BOID_HOME": str(home)}
    for k in ("BOID_ZK", "BOID_CONTEXT", "BOID_DISPATCHER_PASSWORD_FILE"):
        env.pop(k, None)
    procs: list[Proc] = []
    with secured.store("alice") as alice:
        alice.create(proto("pa"))
        alice.create(job("ja", "pa"))
        try:
            opw = home / "credentials" / "operator"
            procs.append(Proc(["operator", "run", "--backend", "none", "--storage", storage, "--dispatcher-identities",
                               str(ids), "--password-file", str(opw)], env, tmp_path / "operator.log"))
            pw = ids / "pa" / "password"
            eventually(lambda: pw.exists() or procs[0].p.poll() is not None, timeout=30)
            assert procs[0].p.poll() is None, procs[0].log.read_text()
            # the dispatcher has no context at all: only the endpoint and its mounted password file
            procs.append(Proc(["--zk", secured.hosts, "dispatcher", "run", "--protocol", "pa", "--backend", "local",
                               "--runtime", "host", "--slot", "alice", "--slot", "bob", "--storage", storage],
                              {**env, "BOID_HOME": str(tmp_path / "empty-home"),
                               "BOID_DISPATCHER_PASSWORD_FILE": str(pw)},
                              tmp_path / "dispatcher.log"))

            def finished():
                assert all(p.p.poll() is None for p in procs), [p.log.read_text() for p in procs]
                j = alice.get(Job, "ja")
                return j.status and j.status.phase in ("Succeeded", "Failed") and j
            j = eventually(finished, timeout=90)
            assert j.status.phase == "Succeeded", j.status
            assert j.status.condition("Admitted").status == "True"
            assert (tmp_path / "storage" / "pa" / "jobs" / "ja" / "results").read_text() == "unit 0\nunit 1\nunit 2\n"
            uid = j.metadata.uid
            # the dispatcher wrote its records, and compacts them in the pass after the end is reported
            eventually(lambda: "summary" in alice.list_runs(uid), timeout=30)
            assert alice.owner(Job, "ja") == "alice"

            # deletion: the dispatcher kills nothing (done), removes the records and the object
            alice.delete(Job, "ja")

            def gone():
                try:
                    alice.get(Job, "ja")
                    return False
                except NotFound:
                    return alice.client.exists(f"{RUNS}/{uid}") is None
            eventually(gone, timeout=60)

            secrets = [secured.admin.password, pw.read_text().strip(), opw.read_text().strip()]
            for p in procs:
                assert p.p.poll() is None, p.log.read_text()
                assert not any(s in p.cmdline() for s in secrets)
        finally:
            for p in procs:
                p.stop()
    logs = "".join(p.log.read_text() for p in procs)
    assert "as dispatcher.pa" in logs and "as operator" in logs
    assert not any(s in logs for s in secrets), "a password reached a log"


# -- the money path: the dispatcher's ledger journal and the chain, under its own identity ---------
@pytest.mark.chain
@pytest.mark.usefixtures("contracts_deployed")
def test_a_dispatcher_identity_records_contributed_time_on_chain(secured, chain_world, tmp_path):
    """The dispatcher appends accepted units to its protocol's ledger journal (granted by the
    operator) and they reach the chain exactly; it cannot append to another protocol's journal."""
    import asyncio

    from boidcluster.adapters.auth import dispatcher_credentials
    from boidcluster.adapters.chain.blocking import BlockingChain
    from boidcluster.adapters.local.backend import LocalBackend
    from boidcluster.adapters.storage import Storage
    from boidcluster.adapters.store import Forbidden, Store
    from boidcluster.engine.operator import Operator
    from boidcluster.engine.world import World
    from boidcluster.model.resources import Contributor, GitSource
    from boidcluster.reconcilers import registry
    import boidcluster.reconcilers.contributor  # noqa: F401  (registers)
    import boidcluster.reconcilers.jobs  # noqa: F401  (registers)
    import boidcluster.reconcilers.protocol  # noqa: F401  (registers)
    from boidcluster.reconcilers.admission import with_job_grants
    from boidcluster.reconcilers.jobs import Dispatcher
    from boidcluster.reconcilers.ledger import JOURNAL, ChainLedger
    from fixtures.operator import cond, protocol_obj

    async def make():
        async with chain_world.client() as rpc:
            return await chain_world.actors(rpc, workers=2)
    trio = asyncio.run(make())
    ids, root = tmp_path / "identities", tmp_path / "storage"
    root.mkdir()
    keys = chain_world.operator_client().keys
    closers = []
    try:
        op_store = secured.store("admin")
        closers.append(op_store)
        op_chain = BlockingChain.open(chain_world.url, keys, timeout=2.0, call_timeout=30)
        closers.append(op_chain)
        world = World(store=op_store, storage=Storage(f"file://{root}"), chain=op_chain,
                      ledger=ChainLedger(op_chain, store=op_store))
        world.settings.extra["dispatcher_identities"] = str(ids)
        op = Operator(op_store, world, with_job_grants(registry.without([Job, GitSource])), workers=2).start()
        closers.append(op)
        op_store.create(protocol_obj("rec", trio, fund="1000.0000 BOID"))
        chain_world.fund_protocol(op_store.get(Protocol, "rec"), "1000.0000 BOID")
        for i, w in enumerate(trio.workers):
            op_store.create(Contributor.model_validate({
                "metadata": {"name": f"rec-w{i}"}, "spec": {"account": w, "role": "worker",
                                                            "researchers": [trio.researcher]}}))
        eventually(lambda: cond(op_store.get(Protocol, "rec"), "Ready") == "True", timeout=60)
        for i in range(len(trio.workers)):
            eventually(lambda i=i: cond(op_store.get(Contributor, f"rec-w{i}"), "Registered") == "True", timeout=60)
        op_store.create(job("paid", "rec"))   # the admin submits: any protocol

        # the dispatcher process, as `dispatcher run` builds it, logged in as dispatcher.rec
        eventually(lambda: (ids / "rec" / "password").exists(), timeout=30)
        d_store = Store(secured.hosts, credentials=dispatcher_credentials(str(ids), "rec"))
        closers.append(d_store)
        d_chain = BlockingChain.open(chain_world.url, keys, timeout=2.0, call_timeout=30)
        closers.append(d_chain)
        backend = LocalBackend(root, list(trio.workers), kill_grace=0.2)
        closers.append(backend)
        d_world = World(store=d_store, storage=Storage(f"file://{root}"), chain=d_chain, backend=backend,
                        dispatcher=Dispatcher(backend, retry_backoff=0.05, poll=0.05, kill_grace=1.0),
                        ledger=ChainLedger(d_chain, store=d_store))
        d_op = Operator(d_store, d_world, registry.subset([Job], select=lambda j: j.spec.protocol == "rec"),
                        workers=2, leader_path="/boid/v1/dispatchers/rec/leader").start()
        closers.append(d_op)

        def recorded():
            j = op_store.get(Job, "paid")
            return j.status and j.status.phase == "Succeeded" and cond(j, "Recorded") != "False" and j
        j = eventually(recorded, timeout=120)
        contributed = {a.account: a.microseconds for a in j.status.contributors}
        assert contributed and all(us > 0 for us in contributed.values())
        row = op_chain.require_protocol(trio.owner, op_store.get(Protocol, "rec").chain_name)
        eventually(lambda: all((r := op_chain.contributor_row("worker", row.id, w)) and r.total_time == us
                               for w, us in contributed.items()), timeout=60)
        journal = f"{JOURNAL}/{trio.owner}.{op_store.get(Protocol, 'rec').chain_name}"
        assert d_store.list_runs(journal)            # written by the dispatcher, under its identity
        with pytest.raises(Forbidden):               # a journal that is not its protocol's
            d_store.create_once(f"{JOURNAL}/{trio.owner}.other/000000000001", {"units": []})
        from kazoo.exceptions import NoAuthError
        with pytest.raises(NoAuthError):             # nor may it remove a journaled batch
            d_store.client.delete(f"{RUNS}/{journal}/{d_store.list_runs(journal)[0]}")
    finally:
        for c in reversed(closers):
            (c.stop if hasattr(c, "stop") and not hasattr(c, "list_runs") else c.close)()


def test_dispatcher_run_with_a_bad_password_file_is_one_clear_line(secured, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from boidcluster.cli.main import cli

    monkeypatch.setenv("BOID_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("BOID_CONTEXT", raising=False)
    pw = tmp_path / "password"
    pw.write_text("guessed-password\n")
    args = ["--zk", secured.hosts, "dispatcher", "run", "--protocol", "pa", "--backend", "local", "--runtime", "host",
            "--storage", f"file://{tmp_path}", "--password-file", str(pw)]
    for mode, expected in ((0o644, f"error: password file {pw} is readable by other users (mode 0644): "
                                   f"run `chmod 600 {pw}`"),
                           (0o600, f"error: authentication as user 'dispatcher.pa' failed at {secured.hosts}: "
                                   "unknown user or wrong password")):
        pw.chmod(mode)
        r = CliRunner().invoke(cli, args, catch_exceptions=False)
        assert r.exit_code == 1 and r.output.strip().splitlines() == [expected], r.output
        assert "guessed-password" not in r.output
    pw.unlink()
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 1 and r.output.strip() == f"error: password file {pw} does not exist", r.output
