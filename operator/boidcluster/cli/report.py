"""`boidctl report PROTOCOL`: does the chain agree with what the cluster recorded?

Contributed time is recorded twice: as accepted work-unit records in ZooKeeper (the dispatcher's
truth) and as clusterjobs rows on chain (keyed by protocol). A deleted job leaves no run records;
its time on the ZooKeeper side is what the ledger's journal (runs/ledger/...) sent for it. Money is an escrow on clusterreg: the
report checks its books exactly in integer units (deposited = paid + owed + withdrawn + free
escrow; owed and paid equal the sums of the contributors' rows; the registry's token balance equals
the sum of its protocols' escrows), lists every account with accepted time not yet on chain, and
exits 1 listing every difference, so payments can be audited without trusting either side alone.
"""

from __future__ import annotations

import sys
from collections import defaultdict

import click

from boidcluster.adapters.chain import ChainError, KeyRing
from boidcluster.adapters.chain.blocking import BlockingChain
from boidcluster.adapters.chain.books import read_books, read_holdings
from boidcluster.adapters.store import NotFound
from boidcluster.model.resources import Contributor, Job, Protocol
from boidcluster.model.types import Asset
from boidcluster.reconcilers.jobs.records import JobRecords
from boidcluster.reconcilers.ledger import JournalSummary, read_journal

from .context import Ctx, Failure, friendly, read_cluster


def _secs(us: int) -> str:
    return f"{us / 1e6:.6f}"


def zookeeper_time(store, jobs: list[Job], journal: JournalSummary | None = None
                   ) -> tuple[dict[str, int], dict[str, int], int]:
    """(recorded µs per worker, accepted-but-not-yet-recorded µs per worker, dispatch µs recorded).
    A job's time comes from its run records (a compacted job's from its summary); a deleted job
    leaves none, so the time of every job without records comes from the ledger's `journal`."""
    recorded: dict[str, int] = defaultdict(int)
    pending: dict[str, int] = defaultdict(int)
    dispatch = 0
    have_records: set[str] = set()
    for j in jobs:
        if not j.metadata.uid:
            continue
        recs = JobRecords.load(store, j.metadata.uid)   # a compacted job: its summary's totals
        if recs.summary is None and recs.start is None and not recs.accepted:
            continue   # no records (a job not started, or deleted a moment ago): the journal's
        have_records.add(j.metadata.uid)
        done, waiting = recs.credited()
        for who, us in done.items():
            recorded[who] += us
        for who, us in waiting.items():
            pending[who] += us
    if journal is not None:
        gone, _ = journal.of_jobs_without_records(have_records)
        for who, us in gone.items():
            recorded[who] += us
        # the dispatcher's time is computed once per job by the ledger (its share of the busy time)
        # and journaled: the journal is its only record, for kept and deleted jobs alike
        dispatch = journal.dispatcher_us()
    return recorded, pending, dispatch


@click.command("report")
@click.argument("protocol")
@click.option("--chain-url", metavar="URL", help="Node RPC (default: the embedded cluster's).")
@click.pass_obj
@friendly
def report(ctx: Ctx, protocol: str, chain_url: str | None) -> None:
    """Compare contributed time in ZooKeeper with the chain, and check the escrow's books exactly."""
    try:
        p = ctx.store.get(Protocol, protocol)
    except NotFound:
        raise Failure(f'protocols "{protocol}" not found') from None
    url = chain_url or read_cluster().get("chain")
    if not url:
        raise Failure("no chain to compare with: pass --chain-url (or start the embedded cluster with `boidctl up`)")
    spec = p.spec
    jobs = [j for j in ctx.store.list(Job) if j.spec.protocol == p.name]
    journal = read_journal(ctx.store, spec.owner, p.chain_name)
    recorded, pending, dispatch_us = zookeeper_time(ctx.store, jobs, journal)
    contributors = sorted({(c.spec.account, c.spec.role) for c in ctx.store.list(Contributor)
                           if spec.researcher in c.spec.researchers} | {(a, "worker") for a in recorded})
    chain = BlockingChain.open(url, KeyRing())
    problems: list[str] = []
    rows = [["CONTRIBUTOR", "ROLE", "ZOOKEEPER s", "CHAIN TOTAL s", "NOT YET ON CHAIN s", "OWED", "PAID", "AGREE"]]
    try:
        books = read_books(chain, spec.owner, p.chain_name)
        if books is None:
            raise Failure(f"{spec.owner}/{p.chain_name} is not on the registry: nothing to compare "
                          f"(`boidctl fund {p.name} AMOUNT` registers and funds it)")
        holding = read_holdings(chain, [(books.row.tokencontract, books.row.symbol)])[
            (books.row.tokencontract, books.row.symbol)]
    except ChainError as e:
        raise Failure(f"reading the chain at {url}: {e}") from None
    finally:
        chain.close()
    reg, times, accts, seq = books.row, books.times, books.accts, books.seq
    zero = Asset(0, reg.symbol)
    chain_dispatch = 0
    for acct, role in sorted(set(contributors) | set(times)):
        total = times.get((acct, role), 0)
        a = accts.get(acct)
        if role == "worker":
            zk = recorded.get(acct, 0)
            agree = zk == total
            if not agree:
                problems.append(f"{acct}: ZooKeeper has {_secs(zk)} s recorded, the chain {_secs(total)} s")
        else:
            zk, agree = None, True
            chain_dispatch += total
        rows.append([acct, role, "-" if zk is None else _secs(zk), _secs(total), _secs(pending.get(acct, 0)),
                     str(a.owed if a else zero), str(a.paid if a else zero), "yes" if agree else "NO"])
    if chain_dispatch != dispatch_us:
        problems.append(f"dispatchers: ZooKeeper has {_secs(dispatch_us)} s of recorded dispatch time, "
                        f"the chain {_secs(chain_dispatch)} s")
    for acct, us in sorted(pending.items()):
        if us:
            why = "" if (acct, "worker") in times else (
                f" ({acct} is not registered as a worker of this protocol on chain: apply a Contributor for it)")
            problems.append(f"{acct}: {_secs(us)} s of accepted work is not on chain yet{why}")
    # the ledger's journal: what was sent under which batch number, against the chain's totals
    on_chain = seq.seq if seq else 0
    for acct, us in sorted(journal.above(on_chain).items()):
        problems.append(f"{acct}: {_secs(us)} s journaled in batches above the chain's {on_chain} (re-sent on the "
                        "protocol's next pass)")
    if journal.batches and set(range(1, on_chain + 1)) <= set(journal.batches):
        units, worker_us, dispatcher_us = journal.totals(on_chain)
        have = (seq.units, seq.worker_time, seq.dispatcher_time) if seq else (0, 0, 0)
        if (units, worker_us, dispatcher_us) != have:
            problems.append(f"batches 1..{on_chain}: the journal has {units} units, {_secs(worker_us)} s of workers and "
                            f"{_secs(dispatcher_us)} s of dispatchers, the chain {have[0]}, {_secs(have[1])} s and "
                            f"{_secs(have[2])} s")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    click.echo(f"Protocol {p.name}: {spec.owner}/{p.chain_name} (id {reg.id}) on clusterreg, researcher "
               f"{spec.researcher}, {len(jobs)} job(s); {seq.seq if seq else 0} batch(es) of "
               f"{seq.units if seq else 0} unit(s) recorded")
    click.echo("\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows))
    # the escrow's books, exactly, in integer units
    click.echo(f"escrow: deposited {reg.deposited} = paid {reg.paid} + owed {reg.owed} + withdrawn {reg.withdrawn} "
               f"+ free {reg.free}")
    click.echo(f"of the free escrow: reserved for running jobs {reg.reserved}, withdrawable {reg.withdrawable}")
    problems += books.differences()
    if not holding.balanced:
        problems.append(holding.difference())
    else:
        click.echo(f"{holding.registry} holds {holding.held} of {holding.tokencontract}: the escrows of all its "
                   "protocols in this token")
    if problems:
        click.echo(f"{len(problems)} difference(s):")
        for line in problems:
            click.echo(f"  - {line}")
        sys.exit(1)
    click.echo("ZooKeeper records and the chain agree.")
    click.echo("The escrow's books balance exactly.")
