"""`boidctl report PROTOCOL`: does the chain agree with what the cluster recorded?

Contributed time is recorded twice: as accepted work-unit records in ZooKeeper (the dispatcher's
truth) and as clusterjobs rows on chain (what is paid from). Money leaves the registry fund only
through payouts. This report puts them side by side per contributor, and exits 1 listing every
difference, so an operator can audit payments without trusting either side alone.
"""

from __future__ import annotations

import sys
from collections import defaultdict

import click

from boidcluster.adapters.chain import ChainError, KeyRing
from boidcluster.adapters.chain.blocking import BlockingChain
from boidcluster.adapters.store import NotFound
from boidcluster.model.resources import Contributor, Job, Protocol
from boidcluster.model.types import Asset
from boidcluster.reconcilers.jobs.records import JobRecords

from .context import Ctx, Failure, friendly, read_cluster


def _secs(us: int) -> str:
    return f"{us / 1e6:.6f}"


def zookeeper_time(store, jobs: list[Job]) -> tuple[dict[str, int], dict[str, int], int]:
    """(recorded µs per worker, accepted-but-not-yet-recorded µs per worker, dispatch µs recorded)."""
    recorded: dict[str, int] = defaultdict(int)
    pending: dict[str, int] = defaultdict(int)
    dispatch = 0
    for j in jobs:
        if not j.metadata.uid:
            continue
        recs = JobRecords.load(store, j.metadata.uid)   # a compacted job: its summary's totals
        done, waiting = recs.credited()
        for who, us in done.items():
            recorded[who] += us
        for who, us in waiting.items():
            pending[who] += us
        dispatch += recs.dispatch_us()
    return recorded, pending, dispatch


@click.command("report")
@click.argument("protocol")
@click.option("--chain-url", metavar="URL", help="Node RPC (default: the embedded cluster's).")
@click.pass_obj
@friendly
def report(ctx: Ctx, protocol: str, chain_url: str | None) -> None:
    """Compare contributed time in ZooKeeper with the chain's tables, and payouts with the fund."""
    try:
        p = ctx.store.get(Protocol, protocol)
    except NotFound:
        raise Failure(f'protocols "{protocol}" not found') from None
    url = chain_url or read_cluster().get("chain")
    if not url:
        raise Failure("no chain to compare with: pass --chain-url (or start the embedded cluster with `boidctl up`)")
    spec = p.spec
    # clusterjobs rows are per researcher: gather every protocol (and job) of this researcher
    protos = [q for q in ctx.store.list(Protocol) if q.spec.researcher == spec.researcher]
    names = {q.name for q in protos}
    jobs = [j for j in ctx.store.list(Job) if j.spec.protocol in names]
    recorded, pending, dispatch_us = zookeeper_time(ctx.store, jobs)
    contributors = sorted({(c.spec.account, c.spec.role) for c in ctx.store.list(Contributor)
                           if spec.researcher in c.spec.researchers} | {(a, "worker") for a in recorded})
    chain = BlockingChain.open(url, KeyRing())
    problems: list[str] = []
    rows = [["CONTRIBUTOR", "ROLE", "ZOOKEEPER s", "CHAIN TOTAL s", "CHAIN UNPAID s", "NOT YET ON CHAIN s",
             "TOKEN BALANCE", "AGREE"]]
    try:
        chain_dispatch = 0
        for acct, role in contributors:
            row = (chain.worker_row if role == "worker" else chain.dispatcher_row)(acct, spec.researcher)
            total = row.total_time if row else 0
            unpaid = row.unpaid_time if row else 0
            if role == "worker":
                zk = recorded.get(acct, 0)
                agree = zk == total
                if not agree:
                    problems.append(f"{acct}: ZooKeeper has {_secs(zk)} s recorded, the chain {_secs(total)} s")
            else:
                zk, agree = None, True
                chain_dispatch += total
            balance = chain.fund_balance(acct, spec.fund.token_contract, spec.fund.quantity.symbol)
            rows.append([acct, role, "-" if zk is None else _secs(zk), _secs(total), _secs(unpaid),
                         _secs(pending.get(acct, 0)), str(balance), "yes" if agree else "NO"])
        if chain_dispatch != dispatch_us:
            problems.append(f"dispatchers: ZooKeeper has {_secs(dispatch_us)} s of recorded dispatch time, "
                            f"the chain {_secs(chain_dispatch)} s")
        reg = chain.protocol_row(spec.owner, spec.researcher)
    except ChainError as e:
        raise Failure(f"reading the chain at {url}: {e}") from None
    finally:
        chain.close()
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    click.echo(f"Protocol {p.name}: owner {spec.owner}, researcher {spec.researcher}, "
               f"{len(jobs)} job(s) of {len(names)} protocol(s) of this researcher")
    click.echo("\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows))
    symbol = spec.fund.quantity.symbol
    paid = sum(((p.status.paid if p.status else {}) or {}).values(), Asset(0, symbol))
    if reg is None:
        click.echo("registry: no clusterreg row (protocol not registered)")
        problems.append("the protocol has no registry row on chain")
    else:
        committed = reg.funded if reg.funded is not None else spec.fund.quantity  # total ever put in
        spent = committed - reg.fund
        click.echo(f"fund: {committed} committed, {reg.fund} left in the registry: {spent} paid out; "
                   f"payouts the operator made: {paid}")
        if spent != paid:
            problems.append(f"the registry fund went down by {spent} but the operator recorded payouts of {paid}")
    if sum(pending.values()):
        click.echo(f"note: {_secs(sum(pending.values()))} s of accepted work is not on chain yet (recorded on the next pass)")
    if problems:
        click.echo(f"{len(problems)} difference(s):")
        for line in problems:
            click.echo(f"  - {line}")
        sys.exit(1)
    click.echo("ZooKeeper records and the chain agree.")
