"""`boidctl up`: the embedded cluster and the demo, in one command.

Starts (or reuses) the supervisor, applies the example specs, follows the jobs with a progress
line per change, and ends with a summary a newcomer can act on: where the results are, how many
units ran, who contributed, and what they were paid.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from boidcluster.adapters.store import Store
from boidcluster.model.loader import load_paths
from boidcluster.model.resources import Job, Protocol

from . import printers
from .cluster import ensure_cluster, stop_cluster
from .context import Ctx, Failure, friendly

TERMINAL = {"Succeeded", "Failed"}


@click.command("up")
@click.option("-f", "--filename", "files", multiple=True, default=("manifests/examples",), show_default=True,
              metavar="FILE|DIR", help="Specs to apply once the cluster runs.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Follow the jobs to the end.")
@click.option("--timeout", default=900.0, show_default=True, metavar="SECONDS", help="Give up following after this long.")
@click.option("--stop", is_flag=True, help="Stop the cluster after the summary (its data stays).")
@click.pass_obj
@friendly
def up(ctx: Ctx, files: tuple[str, ...], wait: bool, timeout: float, stop: bool) -> None:
    """Start the embedded cluster (ZooKeeper, chain node, operator, local workers) and run the demo."""
    missing = [f for f in files if f != "-" and not Path(f).exists()]
    if missing:
        raise Failure(f"{', '.join(missing)} not found: run from the repository root or pass -f DIR")
    objs = load_paths(list(files))  # validate before starting anything
    click.echo("starting the embedded cluster", err=True)
    info = ensure_cluster()
    click.echo(f"cluster ready: ZooKeeper {info['zk']}, chain {info['chain']}, storage {info['storage']}, "
               f"workers {', '.join(info.get('slots', []))}", err=True)
    store = Store(info["zk"], timeout=10)
    try:
        for r in store.apply(objs):
            click.echo(f"{r.kind.lower()}/{r.name} {r.action}")
        jobs = [o.name for o in objs if isinstance(o, Job)]
        if not wait or not jobs:
            return
        final = follow(store, jobs, timeout)
        wait_for_payouts(store, final)
        click.echo("")
        click.echo(summary(store, final, info))
        if not stop:
            click.echo("\nthe cluster keeps running: `boidctl get jobs`, `boidctl describe protocol ...`; "
                       "stop it with `boidctl down`")
        if any(j.status is None or j.status.phase != "Succeeded" for j in final):
            raise SystemExit(1)
    finally:
        store.close()
        if stop:
            stop_cluster()
            click.echo(f"\nstopped the embedded cluster (its data stays in {info['state']})")


def follow(store: Store, names: list[str], timeout: float) -> list[Job]:
    deadline, last = time.monotonic() + timeout, {}
    while True:
        jobs = [store.get(Job, n) for n in names]
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


def wait_for_payouts(store: Store, jobs: list[Job], timeout: float = 30.0) -> None:
    """Payouts run on the protocol's next pass after the units are on chain: wait a little for them."""
    owed = {(j.spec.protocol, c.account) for j in jobs if j.status for c in j.status.contributors}
    if not owed:
        return
    click.echo("waiting for payouts...", err=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        paid = {(p.name, acct) for p in store.list(Protocol) if p.status for acct in p.status.paid}
        if owed <= paid:
            return
        time.sleep(0.5)
    click.echo("payouts not seen yet (they run at the protocol's payout interval; "
               "see `boidctl describe protocol`)", err=True)


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
        if st.get("output"):
            lines.append(f"    results: {st['output']}  (storage {info.get('storage')})")
            lines += _preview(info, st["output"])
        for c in st.get("contributors") or []:
            lines.append(f"    contributor {c.get('account')}: {c.get('microseconds', 0) / 1e6:.3f} s contributed")
    for p in store.list(Protocol):
        d = p.to_dict().get("status", {})
        lines.append(f"  protocol {p.name}: fund balance {d.get('fundBalance', '<unknown>')}")
        for k, v in (d.get("paid") or {}).items():
            lines.append(f"    paid to {k}: {v}")
    return "\n".join(lines)
