"""Process-level commands: `operator run`, `chain up|down|status`, and the embedded cluster
(`up`, `down`, and the hidden `cluster serve` supervisor they manage).

`boidctl up` starts one detached supervisor process that owns ZooKeeper, the chain node and the
operator (with the local backend), so `boidctl down` has exactly one PID to stop, and children
die with their supervisor. The supervisor publishes where everything is in $BOID_HOME/cluster.json,
which every other boidctl command reads to find the cluster.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import click

from boidcluster.adapters.store import Store
from boidcluster.engine.operator import Operator
from boidcluster.model.resources import Job

from .context import Ctx, Failure, boid_home, cluster_file, friendly, read_cluster
from .wiring import OperatorOptions, build_world, close_world, storage_root

RECONCILERS = ("protocol", "contributor", "jobs", "gitsource")


def load_reconcilers():
    """Import every reconciler module so it registers itself; returns the shared registry."""
    from boidcluster.reconcilers import registry

    for name in RECONCILERS:
        try:
            importlib.import_module(f"boidcluster.reconcilers.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"boidcluster.reconcilers.{name}":
                raise
    return registry


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass


# -- operator -------------------------------------------------------------------------------------
@click.group("operator")
def operator_group() -> None:
    """Run the operator (reconcile loops, leader election, metrics)."""


@operator_group.command("run")
@click.option("--storage", metavar="URL", help="file:///path or webhdfs://namenode:9870/root")
@click.option("--chain-url", metavar="URL", help="Antelope node RPC, e.g. http://127.0.0.1:8888")
@click.option("--keys", "keys_file", type=click.Path(dir_okay=False), help="Key file (else $BOID_CHAIN_KEYS).")
@click.option("--marathon", metavar="URL", help="Marathon, to converge each protocol's dispatcher app.")
@click.option("--backend", type=click.Choice(["local", "mesos", "none"]), default="local", show_default=True)
@click.option("--slot", "slots", multiple=True, metavar="ACCOUNT", help="Local backend: a contributor account the slots are credited to (round robin); repeatable.")
@click.option("--slot-count", type=click.IntRange(min=1), help="Local backend: how many slots. Default: $BOID_SLOT_COUNT, else one per core (fewer if memory is short), at least one per --slot.")
@click.option("--mesos-master", metavar="URL", help="Mesos backend: http://master:5050 or zk://host:2181/mesos.")
@click.option("--mesos-role", "mesos_roles", multiple=True,
              help="Mesos roles of the operator's framework; repeatable. Default: '*', which runs every "
                   "protocol's tasks under '*' (one framework, no per-protocol fair share). Listing roles "
                   "makes the framework run each task under its protocol's role, and a protocol not listed "
                   "fails at submit; for one role (fair share, quota) per protocol run `boidctl dispatcher "
                   "run` per protocol with `--backend none` here.")
@click.option("--dispatcher-account", metavar="ACCOUNT", help="EOS account credited for dispatching jobs.")
@click.option("--workers", default=4, show_default=True, help="Objects reconciled concurrently.")
@click.option("--health-port", type=int, default=None, help="Serve /healthz, /readyz, /metrics on PORT.")
@click.option("--health-address", default="127.0.0.1", show_default=True,
              help="Address for the health port (0.0.0.0 inside a container).")
@click.pass_obj
@friendly
def operator_run(ctx: Ctx, storage, chain_url, keys_file, marathon, backend, slots, slot_count, mesos_master,
                 mesos_roles, dispatcher_account, workers, health_port, health_address) -> None:
    """Reconcile until stopped (SIGTERM or Ctrl-C). Several replicas elect one leader."""
    opts = OperatorOptions(zk=ctx.zk, storage=storage, chain_url=chain_url, keys_file=keys_file,
                           marathon=marathon, backend=backend, slots=list(slots), slot_count=slot_count,
                           mesos_master=mesos_master,
                           mesos_roles=list(mesos_roles) or ["*"], dispatcher_account=dispatcher_account,
                           workers=workers)
    op, world = start_operator(opts, ctx.store, health_port, health_address)
    click.echo(f"operator {op.identity} running against {ctx.zk}"
               + (f"; metrics on http://127.0.0.1:{op.health.port}/metrics" if op.health else ""), err=True)
    try:
        _wait_for_signal()
    finally:
        op.stop()
        close_world(world)


def start_operator(opts: OperatorOptions, store: Store, health_port: int | None,
                   health_address: str = "127.0.0.1", *, registry=None,
                   leader_path: str | None = None) -> tuple[Operator, object]:
    try:
        world = build_world(opts, store)
    except ValueError as e:
        raise Failure(str(e)) from None
    if registry is None:
        registry = load_reconcilers()
        if opts.backend == "none":  # jobs are dispatched elsewhere (per-protocol dispatcher apps)
            registry = registry.without([Job])
    op = Operator(store, world, registry, workers=opts.workers, health_port=health_port,
                  health_host=health_address, leader_path=leader_path).start()
    return op, world


@click.group("dispatcher")
def dispatcher_group() -> None:
    """A protocol's dispatcher: the Job reconciler for that protocol's jobs only."""


@dispatcher_group.command("run")
@click.option("--protocol", required=True, envvar="BOID_PROTOCOL", help="The Protocol whose jobs to dispatch.")
@click.option("--mesos-master", envvar="BOID_MESOS_MASTER", metavar="URL", help="http://master:5050 or zk://host:2181/mesos")
@click.option("--storage", envvar="BOID_STORAGE", metavar="URL", required=True)
@click.option("--chain-url", envvar="BOID_CHAIN_URL", metavar="URL")
@click.option("--keys", "keys_file", envvar="BOID_CHAIN_KEYS_FILE", type=click.Path(dir_okay=False))
@click.option("--dispatcher-account", envvar="BOID_DISPATCHER_ACCOUNT", metavar="ACCOUNT")
@click.option("--backend", type=click.Choice(["mesos", "local"]), default="mesos", show_default=True)
@click.option("--slot", "slots", multiple=True, metavar="ACCOUNT", help="Local backend slots.")
@click.option("--health-port", type=int, envvar="PORT0", default=None, help="Health port (Marathon's $PORT0).")
@click.option("--health-address", default="127.0.0.1", show_default=True)
@click.pass_obj
@friendly
def dispatcher_run(ctx: Ctx, protocol, mesos_master, storage, chain_url, keys_file, dispatcher_account, backend,
                   slots, health_port, health_address) -> None:
    """Dispatch one protocol's jobs (a Mesos framework in the protocol's role) until stopped.

    Replicas of one protocol's dispatcher elect a leader among themselves; different protocols'
    dispatchers run side by side, each owning only its own jobs."""
    opts = OperatorOptions(zk=ctx.zk, storage=storage, chain_url=chain_url, keys_file=keys_file, backend=backend,
                           slots=list(slots), mesos_master=mesos_master, mesos_roles=[protocol],
                           mesos_state=f"/boid/v1/dispatchers/{protocol}/mesos",  # its own framework
                           dispatcher_account=dispatcher_account)
    registry = load_reconcilers().subset([Job], select=lambda job: job.spec.protocol == protocol)
    op, world = start_operator(opts, ctx.store, health_port, health_address, registry=registry,
                               leader_path=f"/boid/v1/dispatchers/{protocol}/leader")
    click.echo(f"dispatcher for protocol {protocol} running ({backend} backend)", err=True)
    try:
        _wait_for_signal()
    finally:
        op.stop()
        close_world(world)


# -- chain ------------------------------------------------------------------------------------------
@click.group("chain")
def chain_group() -> None:
    """A local Antelope node with the Boid contracts and demo accounts."""


def _local_chain():
    from boidcluster.adapters.local.chainnode import LocalChain

    return LocalChain(boid_home() / "chain")


@chain_group.command("up")
@friendly
def chain_up() -> None:
    """Start (or reuse) the local node and bootstrap it; idempotent."""
    chain = _local_chain()
    url = chain.start()
    done = chain.bootstrap()
    click.echo(f"chain running at {url} (state {chain.state_dir}); bootstrap steps run: {len(done['done'])}")


@chain_group.command("down")
@friendly
def chain_down() -> None:
    """Stop the local node (its data stays)."""
    stopped = _local_chain().stop()
    click.echo("chain stopped" if stopped else "chain was not running")


@chain_group.command("status")
@friendly
def chain_status() -> None:
    st = _local_chain().status()
    if not st.running:
        click.echo("chain: not running")
        sys.exit(1)
    click.echo(f"chain: running at {st.url} (pid {st.pid}); head block {st.head_block_num}; "
               f"contracts {'deployed' if st.contracts else 'missing'}")


# -- the embedded cluster ---------------------------------------------------------------------------
DEMO_SLOTS = ("alice", "bob", "carol")


def _write_cluster(state: Path, info: dict) -> None:
    tmp = state / "cluster.json.tmp"
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(state / "cluster.json")


def _supervisor_alive(info: dict) -> bool:
    pid = info.get("pid")
    if not pid:
        return False
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return "cluster\0serve" in cmd


@click.group("cluster", hidden=True)
def cluster_group() -> None:
    """Internals of `boidctl up`."""


@cluster_group.command("serve")
@click.option("--state", type=click.Path(file_okay=False), required=True)
@click.option("--slot", "slots", multiple=True)
def cluster_serve(state: str, slots: tuple[str, ...]) -> None:
    """Supervisor: ZooKeeper + chain node + operator, until SIGTERM."""
    from boidcluster.adapters.local.chainnode import LocalChain
    from boidcluster.adapters.local.zookeeper import LocalZooKeeper

    st = Path(state).resolve()
    st.mkdir(parents=True, exist_ok=True)
    info: dict = {"pid": os.getpid(), "state": str(st), "phase": "starting ZooKeeper", "ready": False}
    _write_cluster(st, info)
    stack: list = []
    try:
        zk = LocalZooKeeper(st / "zookeeper", port=read_zk_port(st), die_with_parent=True).start()
        stack.append(zk.stop)
        info.update(zk=zk.hosts, phase="starting the chain node")
        _write_cluster(st, info)
        chain = LocalChain(st / "chain", die_with_parent=True)
        info["chain"] = chain.start()
        stack.append(chain.stop)
        info["phase"] = "bootstrapping the chain (contracts, token, demo accounts)"
        _write_cluster(st, info)
        chain.bootstrap()
        keys = st / "operator-keys.json"
        chain.operator_keys().write(keys)
        info["phase"] = "starting the operator"
        _write_cluster(st, info)
        store = Store(zk.hosts, timeout=10)
        stack.append(store.close)
        opts = OperatorOptions(zk=zk.hosts, storage=storage_root(st), chain_url=info["chain"],
                               keys_file=str(keys), backend="local", slots=list(slots or DEMO_SLOTS),
                               dispatcher_account=chain.accounts.dispatchers[0])
        op, world = start_operator(opts, store, health_port=0)
        stack.append(lambda: close_world(world))
        stack.append(op.stop)
        info.update(phase="running", ready=True, storage=opts.storage, slots=opts.slots,
                    health=f"http://127.0.0.1:{op.health.port}")
        _write_cluster(st, info)
        _wait_for_signal()
    except Exception as e:
        info.update(phase="failed", error=str(e))
        _write_cluster(st, info)
        raise
    finally:
        for stop in reversed(stack):
            try:
                stop()
            except Exception:
                pass
        if info.get("phase") != "failed":
            (st / "cluster.json").unlink(missing_ok=True)


def read_zk_port(state: Path) -> int | None:
    """Reuse the previous ZooKeeper port so that a restarted cluster keeps its address."""
    try:
        return int(json.loads((state / "zookeeper.port").read_text()))
    except (OSError, ValueError):
        from boidcluster.adapters.local.zookeeper import free_port

        port = free_port()
        (state / "zookeeper.port").write_text(str(port))
        return port


def ensure_cluster(timeout: float = 240.0) -> dict:
    """Start the supervisor unless it is running; wait until it reports ready."""
    state = boid_home()
    state.mkdir(parents=True, exist_ok=True)
    info = read_cluster()
    if info.get("ready") and _supervisor_alive(info):
        click.echo(f"embedded cluster already running (state {state})", err=True)
        return info
    log = open(state / "cluster.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "boidcluster.cli.main", "cluster", "serve", "--state", str(state)],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline, shown = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        info = read_cluster()
        if info.get("pid") == proc.pid:
            if info.get("phase") != shown:
                shown = info.get("phase", "")
                click.echo(f"  {shown}...", err=True)
            if info.get("ready"):
                return info
            if info.get("phase") == "failed":
                break
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    tail = "\n".join((state / "cluster.log").read_text(errors="replace").splitlines()[-15:])
    if proc.poll() is None:
        proc.terminate()
    raise Failure(f"the embedded cluster did not start: {info.get('error', 'timed out')}\n"
                  f"last lines of {state / 'cluster.log'}:\n{tail}")


def stop_cluster(timeout: float = 60.0) -> bool:
    info = read_cluster()
    if not _supervisor_alive(info):
        cluster_file().unlink(missing_ok=True)
        return False
    pid = int(info["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _supervisor_alive(info):
        time.sleep(0.2)
    if _supervisor_alive(info):
        os.killpg(pid, signal.SIGKILL)
    cluster_file().unlink(missing_ok=True)
    return True


@click.command("down")
@friendly
def down() -> None:
    """Stop the embedded cluster that `boidctl up` started (its data stays in $BOID_HOME)."""
    click.echo("embedded cluster stopped" if stop_cluster() else "no embedded cluster is running")
