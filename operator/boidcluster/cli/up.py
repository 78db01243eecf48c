"""`boidctl up`: the embedded cluster and the demo, in one command.

Starts (or reuses) the supervisor, applies the example specs, follows the jobs with a progress
line per change, and ends with a summary a newcomer can act on: where the results are, how many
units ran, who contributed, and what they were paid.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import click

from boidcluster.adapters.store import Store, StoreUnavailable
from boidcluster.model.loader import load_paths
from boidcluster.model.resources import Job, Protocol

from . import printers
from .auth import embedded_admin
from .cluster import ensure_cluster, stop_cluster
from .context import Ctx, Failure, friendly, read_cluster

TERMINAL = {"Succeeded", "Failed"}


@click.command("up")
@click.option("-f", "--filename", "files", multiple=True, default=("manifests/examples",), show_default=True,
              metavar="FILE|DIR", help="Specs to apply once the cluster runs.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Follow the jobs to the end.")
@click.option("--timeout", default=900.0, show_default=True, metavar="SECONDS", help="Give up following after this long.")
@click.option("--stop", is_flag=True, help="Stop the cluster after the summary (its data stays).")
@click.option("--runtime", type=click.Choice(["podman", "host"]), default="podman", show_default=True,
              help="Run units in sandboxed podman containers, or 'host' = DEVELOPMENT ONLY: unsandboxed, as this user.")
@click.pass_obj
@friendly
def up(ctx: Ctx, files: tuple[str, ...], wait: bool, timeout: float, stop: bool, runtime: str) -> None:
    """Start the embedded cluster (ZooKeeper, chain node, operator, local workers) and run the demo."""
    missing = [f for f in files if f != "-" and not Path(f).exists()]
    if missing:
        raise Failure(f"{', '.join(missing)} not found: run from the repository root or pass -f DIR")
    objs = load_paths(list(files))  # validate before starting anything
    if runtime == "podman":
        ensure_images(objs)
    else:
        click.echo("WARNING: --runtime host: units run UNSANDBOXED on this machine as your user "
                   "(development only)", err=True)
    click.echo("starting the embedded cluster", err=True)
    info = ensure_cluster(runtime=runtime)
    click.echo(f"cluster ready: ZooKeeper {info['zk']}, chain {info['chain']}, storage {info['storage']}, "
               f"workers {', '.join(info.get('slots', []))} ({info.get('runtime', 'host')} runtime)", err=True)
    for line in info.get("workers", []):
        click.echo(f"  {line}", err=True)
    if info.get("dashboard"):
        click.echo(f"dashboard: {info['dashboard']}", err=True)
    store = Store(info["zk"], timeout=10, credentials=embedded_admin(Path(info["state"])))
    try:
        for r in store.apply_in_batches(objs, retries=2)[0]:
            click.echo(f"{r.kind.lower()}/{r.name} {r.action}")
        fund_demo(store, [o.name for o in objs if isinstance(o, Protocol)], info)
        jobs = [o.name for o in objs if isinstance(o, Job)]
        if not wait or not jobs:
            return
        final = follow(store, jobs, timeout)
        wait_for_payouts(store, final)
        click.echo("")
        click.echo(patiently(lambda: summary(store, final, info)))
        if not stop:
            click.echo("\nthe cluster keeps running: `boidctl get jobs`, `boidctl describe protocol ...`, "
                       "`boidctl status`" + (f", the dashboard at {info['dashboard']}" if info.get("dashboard") else "")
                       + "; stop it with `boidctl down`")
        if any(j.status is None or j.status.phase != "Succeeded" for j in final):
            raise SystemExit(1)
    finally:
        store.close()
        if stop:
            stop_cluster()
            click.echo(f"\nstopped the embedded cluster (its data stays in {info['state']})")


def fund_demo(store: Store, names: list[str], info: dict) -> None:
    """The demo's sponsor funds each protocol as a user would (`boidctl fund`, the demo users' own
    key file): up to spec.fund.quantity deposited in all, so running `up` again adds nothing."""
    from .funds import fund_protocol, user_keys

    ring, source = user_keys(str(Path(info["state"]) / "user-keys.json"))
    for name in names:
        p = store.get(Protocol, name)
        sender = p.spec.fund.account or p.spec.owner
        done, row = asyncio.run(fund_protocol(p, None, ring, source, info["chain"], sender, up_to=p.spec.fund.quantity))
        click.echo(f"protocol/{name} funded: escrow {row.balance}" + (f" ({'; '.join(done)})" if done else ""))


def ensure_images(objs: list) -> None:
    """Build the demo's python image when a Job uses it and podman does not have it yet."""
    from boidcluster.adapters.local.images import DEMO_IMAGE, ImageError, ensure_demo_image

    if any(isinstance(o, Job) and o.spec.image == DEMO_IMAGE for o in objs):
        import shutil

        if shutil.which("podman") is None:
            raise Failure("podman is not installed: `make setup` (or apt-get install podman runc) installs it; "
                          "`--runtime host` runs units unsandboxed instead (development only)")
        try:
            ensure_demo_image(progress=lambda m: click.echo(m + "...", err=True))
        except (ImageError, OSError) as e:
            raise Failure(str(e)) from None


def follow(store: Store, names: list[str], timeout: float) -> list[Job]:
    """A line per job change, and one per change of a cluster component (a death, a restart), until
    every job ends. ZooKeeper being restarted under us is waited out, not an error."""
    deadline, last, seen = time.monotonic() + timeout, {}, cluster_events(read_cluster())
    while True:
        for line in sorted(cluster_events(read_cluster()) - seen):
            click.echo(f"cluster: {line}", err=True)
            seen.add(line)
        jobs = patiently(lambda: [store.get(Job, n) for n in names])
        for j in jobs:
            line = f"job/{j.name} {(j.status.phase if j.status else None) or 'Pending'} {printers.progress(j)}"
            if last.get(j.name) != line:
                last[j.name] = line
                click.echo(line.rstrip())
        if all(j.status and j.status.phase in TERMINAL for j in jobs):
            return jobs
        if time.monotonic() > deadline:
            raise Failure(f"jobs not finished after {timeout:.0f}s; see `boidctl describe job {names[0]}`")
        time.sleep(0.5)


def patiently(read, timeout: float = 60.0):
    """`read()`, waiting out a ZooKeeper that the supervisor is restarting."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return read()
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def cluster_events(info: dict) -> set[str]:
    """What the supervisor says about components that died or came back, as printable lines."""
    return {f"{name} {c.get('state')}: {c.get('message')}"
            for name, c in (info.get("components") or {}).items() if c.get("restarts") and c.get("message")}


def wait_for_payouts(store: Store, jobs: list[Job], timeout: float = 90.0) -> None:
    """Recording and payouts run on the job's and the protocol's next passes after the units were
    accepted: wait a little until every accepted unit is on chain and its contributors were paid, so
    the summary (and a `boidctl report` right after) shows the settled books."""
    from .report import zookeeper_time

    owed = {(j.spec.protocol, c.account) for j in jobs if j.status for c in j.status.contributors}
    if not owed:
        return
    click.echo("waiting for the chain to record the units and pay...", err=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, not_on_chain, _ = zookeeper_time(store, jobs)
            paid = {(p.name, acct) for p in store.list(Protocol) if p.status for acct in p.status.paid}
        except StoreUnavailable:  # ZooKeeper being restarted by the supervisor
            not_on_chain, paid = {"?": 1}, set()
        if owed <= paid and not any(not_on_chain.values()):
            return
        time.sleep(0.5)
    click.echo("payouts not seen yet (they run at the protocol's payout interval; "
               "see `boidctl describe protocol` and `boidctl report`)", err=True)


def _preview(info: dict, output: str, lines: int = 3) -> list[str]:
    storage = info.get("storage", "")
    if not storage.startswith("file://"):
        return []
    root = Path(storage[len("file://"):]) / output
    from boidcluster.reconcilers.jobs.reconciler import RECORD_FILE

    files = sorted(p for p in root.glob("*") if p.is_file() and p.name not in ("manifest.json", RECORD_FILE)) \
        if root.is_dir() else []
    out = []
    for f in files[:1]:
        text = f.read_text(errors="replace").splitlines()
        out.append(f"    {f} ({len(text)} lines):")
        out += [f"      {line[:120]}" for line in text[:lines]]
        if len(text) > lines:
            out.append("      ...")
    return out


def summary(store: Store, jobs: list[Job], info: dict) -> str:
    lines = ["Summary"]
    for j in jobs:
        d = j.to_dict()
        st = d.get("status", {})
        u = st.get("units", {})
        lines.append(f"  job {j.name}: {st.get('phase')} - {u.get('succeeded', 0)}/{u.get('total', 0)} units"
                     f" ({u.get('validated', 0)} validated by quorum)")
        if st.get("imageDigest"):
            lines.append(f"    image: {j.spec.image} ({st['imageDigest']})")
        if st.get("output"):
            lines.append(f"    results: {st['output']}  (storage {info.get('storage')})")
            lines += _preview(info, st["output"])
        for c in st.get("contributors") or []:
            lines.append(f"    contributor {c.get('account')}: {c.get('microseconds', 0) / 1e6:.3f} s contributed")
    for p in store.list(Protocol):
        d = p.to_dict().get("status", {})
        lines.append(f"  protocol {p.name}: escrow {d.get('fundBalance', '<unknown>')}, owed {d.get('owed', '<unknown>')}")
        for k, v in (d.get("paid") or {}).items():
            lines.append(f"    paid to {k}: {v}")
    return "\n".join(lines)
