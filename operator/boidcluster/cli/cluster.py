"""Process-level commands: `operator run`, `chain up|down|status`, and the embedded cluster
(`up`, `down`, and the hidden `cluster serve` supervisor they manage).

`boidctl up` starts one detached supervisor process that owns ZooKeeper, the chain node and the
operator (with the local backend) as child processes, restarts any of them that dies (same ports,
same data; see supervisor.py), so `boidctl down` has exactly one PID to stop, and children die with
their supervisor. The supervisor publishes where everything is, and each component's health, in
$BOID_HOME/cluster.json, which every other boidctl command reads to find the cluster.
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

from boidcluster.adapters.auth import dispatcher_user
from boidcluster.adapters.store import Store
from boidcluster.engine.operator import Operator, tune_gc
from boidcluster.model.resources import Job

from .context import Ctx, Failure, boid_home, cluster_file, friendly, read_cluster
from .kubeconfig import read_password_file
from .supervisor import DEMO_SLOTS, serve, supervisor_alive
from .wiring import OperatorOptions, build_world, close_world, runtime_report, storage_root
from .dashboard import start_dashboard

HOST_REDUCERS_OPTION = click.option(
    "--allow-host-reducers", is_flag=True, envvar="BOID_ALLOW_HOST_REDUCERS",
    help="Run jobs' `reduce: command` reducers: researchers' code, on this machine, UNSANDBOXED, as this "
         "user (with an environment of its own). Off: such jobs fail before any unit runs, saying so. "
         "Implied by --runtime host (everything runs unsandboxed then).")
RUNTIME_OPTION = click.option(
    "--runtime", type=click.Choice(["podman", "host"]), default="podman", show_default=True,
    help="Local backend: run each unit in a sandboxed podman container, or 'host' = DEVELOPMENT ONLY: "
         "units run unsandboxed as this user.")

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
@RUNTIME_OPTION
@click.option("--mesos-master", metavar="URL", help="Mesos backend: http://master:5050 or zk://host:2181/mesos.")
@click.option("--mesos-role", "mesos_roles", multiple=True,
              help="Mesos roles of the operator's framework; repeatable. Default: '*', which runs every "
                   "protocol's tasks under '*' (one framework, no per-protocol fair share). Listing roles "
                   "makes the framework run each task under its protocol's role, and a protocol not listed "
                   "fails at submit; for one role (fair share, quota) per protocol run `boidctl dispatcher "
                   "run` per protocol with `--backend none` here.")
@click.option("--mesos-contributor", "mesos_contributors", multiple=True, metavar="ACCOUNT",
              help="Mesos backend: a contributor whose agents are trusted, credited for what runs on resources "
                   "its agents statically reserved for boid-contributors/ACCOUNT; repeatable. Default: "
                   "$BOID_MESOS_CONTRIBUTORS (comma-separated). See `boidctl mesos agent-credentials`.")
@click.option("--mesos-insecure-agent-attributes", "mesos_insecure", is_flag=True,
              help="Mesos backend, development only: credit the agents' boid_account attribute (any agent can "
                   "claim any account) instead of authenticated contributors.")
@click.option("--dispatcher-account", metavar="ACCOUNT", help="EOS account credited for dispatching jobs.")
@click.option("--dispatcher-identities", type=click.Path(file_okay=False), envvar="BOID_DISPATCHER_IDENTITIES",
              help="With --backend none on a secured cluster: the directory where the operator keeps each "
                   "protocol's dispatcher password (DIR/<protocol>/password, 0600), which that protocol's "
                   "dispatcher app mounts read-only.")
@click.option("--workers", default=4, show_default=True, help="Objects reconciled concurrently.")
@click.option("--health-port", type=int, default=None, help="Serve /healthz, /readyz, /metrics on PORT.")
@click.option("--health-address", default="127.0.0.1", show_default=True,
              help="Address for the health port (0.0.0.0 inside a container).")
@click.option("--dashboard-port", type=int, default=None,
              help="Also serve the read-only web dashboard on PORT (at --health-address).")
@click.option("--slot-report", type=click.Path(dir_okay=False), hidden=True,
              help="Write each local slot's self-test result to this file (JSON; the embedded cluster's supervisor).")
@click.option("--password-file", envvar="BOID_OPERATOR_PASSWORD_FILE", type=click.Path(dir_okay=False),
              help="Log in as the operator's own identity (--user) with this password file (0600, e.g. a "
                   "mounted secret) instead of the current context's user.")
@click.option("--user", "identity_user", default="operator", show_default=True,
              help="With --password-file: the operator's user name (`auth secure-cluster` registers it as an admin).")
@HOST_REDUCERS_OPTION
@click.pass_obj
@friendly
def operator_run(ctx: Ctx, storage, chain_url, keys_file, marathon, backend, slots, slot_count, runtime, mesos_master,
                 mesos_roles, mesos_contributors, mesos_insecure, dispatcher_account, dispatcher_identities,
                 workers, health_port, health_address, dashboard_port, slot_report, password_file,
                 identity_user, allow_host_reducers) -> None:
    """Reconcile until stopped (SIGTERM or Ctrl-C). Several replicas elect one leader."""
    if password_file and not Path(password_file).exists() and ctx.store.policy is None:
        password_file = None   # an open cluster: no identities
    if password_file:
        ctx.close()
        ctx._store = identity_store(ctx, identity_user, password_file)   # everything below uses it
    opts = OperatorOptions(zk=ctx.zk, storage=storage, chain_url=chain_url, keys_file=keys_file,
                           marathon=marathon, backend=backend, slots=list(slots), slot_count=slot_count,
                           runtime=runtime, mesos_master=mesos_master, mesos_roles=list(mesos_roles) or ["*"],
                           dispatcher_account=dispatcher_account, workers=workers,
                           dispatcher_identities=dispatcher_identities, allow_host_reducers=allow_host_reducers)
    if mesos_contributors:
        opts.mesos_contributors = list(mesos_contributors)
    if mesos_insecure:
        opts.mesos_insecure_attributes = True
    op, world = start_operator(opts, ctx.store, health_port, health_address)
    slot_lines = runtime_report(world)
    for line in slot_lines:
        click.echo(line, err=True)
    if slot_report:  # the embedded cluster's supervisor shows these in cluster.json
        Path(slot_report).write_text(json.dumps(slot_lines))
    dash = None if dashboard_port is None else start_dashboard(
        ctx.zk, port=dashboard_port, address=health_address, store=ctx.store, chain_url=chain_url,
        metrics_registry=op.metrics.registry)
    click.echo(f"operator {op.identity} running against {ctx.zk} as {ctx.store.whoami}"
               + (f"; metrics on http://127.0.0.1:{op.health.port}/metrics" if op.health else "")
               + (f"; dashboard on {dash.url}" if dash else ""), err=True)
    try:
        _wait_for_signal()
    finally:
        if dash is not None:
            dash.stop()
        op.stop()
        close_world(world)


def start_operator(opts: OperatorOptions, store: Store, health_port: int | None,
                   health_address: str = "127.0.0.1", *, registry=None,
                   leader_path: str | None = None) -> tuple[Operator, object]:
    dispatcher = opts.protocol is not None and store.whoami == dispatcher_user(opts.protocol)
    if store.policy is not None and not store.is_admin and not dispatcher:  # it writes every status
        raise Failure(f"user {store.whoami!r} is not an admin of this cluster: run the operator with an "
                      "admin context (`--context`; `boidctl up` makes admin@local)")
    try:
        world = build_world(opts, store)
    except ValueError as e:
        raise Failure(str(e)) from None
    if registry is None:
        registry = load_reconcilers()
        if opts.backend == "none":  # jobs are dispatched elsewhere (per-protocol dispatcher apps)
            from boidcluster.reconcilers.admission import with_job_grants

            registry = with_job_grants(registry.without([Job]))  # each granted to its dispatcher
    tune_gc()
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
@RUNTIME_OPTION
@click.option("--health-port", type=int, envvar="PORT0", default=None, help="Health port (Marathon's $PORT0).")
@click.option("--health-address", default="127.0.0.1", show_default=True)
@click.option("--password-file", envvar="BOID_DISPATCHER_PASSWORD_FILE", type=click.Path(dir_okay=False),
              help="The password (mode 0600) of this protocol's dispatcher identity, dispatcher.<protocol>, "
                   "made by the operator (--dispatcher-identities); else the current context's user.")
@HOST_REDUCERS_OPTION
@click.pass_obj
@friendly
def dispatcher_run(ctx: Ctx, protocol, mesos_master, storage, chain_url, keys_file, dispatcher_account, backend,
                   slots, runtime, health_port, health_address, password_file, allow_host_reducers) -> None:
    """Dispatch one protocol's jobs (a Mesos framework in the protocol's role) until stopped.

    Replicas of one protocol's dispatcher elect a leader among themselves; different protocols'
    dispatchers run side by side, each owning only its own jobs."""
    opts = OperatorOptions(zk=ctx.zk, storage=storage, chain_url=chain_url, keys_file=keys_file, backend=backend,
                           slots=list(slots), runtime=runtime, mesos_master=mesos_master, mesos_roles=[protocol],
                           mesos_state=f"/boid/v1/dispatchers/{protocol}/mesos",  # its own framework
                           dispatcher_account=dispatcher_account, protocol=protocol,
                           allow_host_reducers=allow_host_reducers)
    registry = load_reconcilers().subset([Job], select=lambda job: job.spec.protocol == protocol)
    if password_file and not Path(password_file).exists() and ctx.store.policy is None:
        password_file = None   # an open cluster: no identities (the app mounts an empty directory)
    store = identity_store(ctx, dispatcher_user(protocol), password_file) if password_file else ctx.store
    op, world = start_operator(opts, store, health_port, health_address, registry=registry,
                               leader_path=f"/boid/v1/dispatchers/{protocol}/leader")
    click.echo(f"dispatcher for protocol {protocol} running ({backend} backend) as {store.whoami}", err=True)
    try:
        _wait_for_signal()
    finally:
        op.stop()
        close_world(world)
        if store is not ctx.store:
            store.close()


def identity_store(ctx: Ctx, user: str, password_file: str) -> Store:
    """The store logged in as a process's own identity (the operator's, a dispatcher's) from a
    mounted secret file, never an argument or environment value: only the file's path is."""
    creds = read_password_file(Path(password_file), user)
    c = ctx.context   # its TLS settings only if the context is this very cluster
    tls = c.tls if c is not None and (c.server is None or c.server == ctx.zk) else None
    return Store(ctx.zk, timeout=ctx.timeout, credentials=creds, tls=tls)


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
# The supervisor itself (and `boidctl status`) live in supervisor.py.


@click.group("cluster", hidden=True)
def cluster_group() -> None:
    """Internals of `boidctl up`."""


@cluster_group.command("serve")
@click.option("--state", type=click.Path(file_okay=False), required=True)
@click.option("--slot", "slots", multiple=True)
@RUNTIME_OPTION
def cluster_serve(state: str, slots: tuple[str, ...], runtime: str) -> None:
    """Supervisor: ZooKeeper + chain node + operator, each restarted when it dies, until SIGTERM."""
    serve(Path(state).resolve(), list(slots or DEMO_SLOTS), runtime)


def _components_line(info: dict) -> str:
    comps = info.get("components") or {}
    return "; ".join(f"{n} {c.get('state')}" + (f" ({c['message']})" if c.get("message") else "")
                     for n, c in comps.items() if c.get("state") != "running" or c.get("restarts"))


def ensure_cluster(timeout: float = 240.0, runtime: str = "podman") -> dict:
    """Start the supervisor unless it is running; wait until every component is up.

    A running supervisor that is repairing a component (restarting a dead ZooKeeper, node or
    operator) is waited for; a dead supervisor (its cluster.json stale) is replaced by a new one,
    which reuses the same ports and data and adopts a chain node still running on them."""
    state = boid_home()
    state.mkdir(parents=True, exist_ok=True)
    info = read_cluster()
    if supervisor_alive(info):
        if info.get("ready"):
            click.echo(f"embedded cluster already running (state {state})", err=True)
            healed = _components_line(info)
            if healed:
                click.echo(f"  {healed}", err=True)
            return info
        click.echo(f"embedded cluster running but not healthy: {_components_line(info) or info.get('phase')}; "
                   "waiting for its supervisor to repair it", err=True)
        return _wait_ready(state, int(info["pid"]), None, timeout)
    if info:
        click.echo(f"the previous supervisor (pid {info.get('pid')}) is gone: starting a new one on the same "
                   "ports and data", err=True)
    log = open(state / "cluster.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "boidcluster.cli.main", "cluster", "serve", "--state", str(state),
                             "--runtime", runtime],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return _wait_ready(state, proc.pid, proc, timeout)


def _wait_ready(state: Path, pid: int, proc: subprocess.Popen | None, timeout: float) -> dict:
    deadline, shown = time.monotonic() + timeout, ""
    info: dict = {}
    while time.monotonic() < deadline:
        info = read_cluster()
        if info.get("pid") == pid:
            line = info.get("phase", "")
            if info.get("phase") == "repairing":
                line += ": " + _components_line(info)
            if line != shown:
                shown = line
                click.echo(f"  {shown}...", err=True)
            if info.get("ready"):
                return info
            if info.get("phase") == "failed":
                break
        if proc is not None and proc.poll() is not None:
            break
        if proc is None and not supervisor_alive({"pid": pid}):
            break
        time.sleep(0.2)
    tail = "\n".join((state / "cluster.log").read_text(errors="replace").splitlines()[-15:])
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    raise Failure(f"the embedded cluster did not start: {info.get('error', 'timed out')}\n"
                  f"last lines of {state / 'cluster.log'}:\n{tail}")


def stop_cluster(timeout: float = 60.0) -> bool:
    info = read_cluster()
    if not supervisor_alive(info):
        cluster_file().unlink(missing_ok=True)
        return False
    pid = int(info["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and supervisor_alive(info):
        time.sleep(0.2)
    if supervisor_alive(info):
        os.killpg(pid, signal.SIGKILL)
    cluster_file().unlink(missing_ok=True)
    return True


@click.command("down")
@friendly
def down() -> None:
    """Stop the embedded cluster that `boidctl up` started (its data stays in $BOID_HOME)."""
    click.echo("embedded cluster stopped" if stop_cluster() else "no embedded cluster is running")
    left = remove_containers(boid_home())
    if left:
        click.echo(f"removed {left} leftover unit containers")


def remove_containers(state: Path) -> int:
    """Remove every unit container of the cluster in `state` (e.g. after its supervisor was killed)."""
    import shutil

    from boidcluster.adapters.local.runtime import PodmanRuntime, scope_of

    if shutil.which("podman") is None:
        return 0
    return len(PodmanRuntime().sweep(scope_of(storage_root(state)[len("file://"):])))
