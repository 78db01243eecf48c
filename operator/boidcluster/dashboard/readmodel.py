"""What the dashboard shows, computed from stored objects, chain rows and the operator's metrics.

Why one module: everything the page says about money is derived here, from the protocol books
`boidctl report` audits (adapters.chain.books: the registry row with its escrow, deposited, owed,
paid and withdrawn; the contributors' time rows and `acct` rows, per protocol keyed by owner and
chain name), so the page and the report agree, and a contract change is adapted below both. When
the chain cannot be read, the Protocol reconciler's last status (the same rows, as last read) is
shown instead, and marked as such.

Money stays integer asset units (`Asset`); the page receives them as the same strings `boidctl`
prints, plus integer amounts for plotting. Times are integer microseconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from prometheus_client.parser import text_string_to_metric_families

from boidcluster.adapters.chain import ChainError
from boidcluster.adapters.chain.books import ProtocolBooks, TokenHolding, read_books, read_holdings
from boidcluster.adapters.store import LEADER_LOCK
from boidcluster.model.meta import Resource
from boidcluster.model.resources import Contributor, Job, Protocol
from boidcluster.model.types import Asset, Symbol
from boidcluster.reconcilers.protocol import can_still_owe

ROLES = ("worker", "dispatcher")


def secs(us: int) -> str:
    """Microseconds as seconds, the way `boidctl report` prints them."""
    return f"{us / 1e6:.6f}"


def iso(dt: datetime | None) -> str | None:
    return dt.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if dt else None


def asset_json(a: Asset | None) -> dict[str, Any] | None:
    """An asset for the page: its text (as boidctl prints it) and its integer amount for charts."""
    if a is None:
        return None
    return {"text": str(a), "amount": a.amount, "precision": a.symbol.precision, "symbol": a.symbol.code}


def chain_key(p: Protocol) -> tuple[str, str]:
    """A protocol's identity on the registry: (owner, name on chain)."""
    return p.spec.owner, p.chain_name


# -- chain facts -------------------------------------------------------------------------------
@dataclass
class ChainFacts:
    """What the chain says, read in one pass; `error` says why it could not be read."""

    url: str | None = None
    error: str | None = None
    books: dict[tuple[str, str], ProtocolBooks | None] = field(default_factory=dict)    # (owner, chain name)
    holdings: dict[tuple[str, Symbol], TokenHolding] = field(default_factory=dict)      # (token contract, symbol)


def read_chain(chain: Any, url: str | None, protocols: list[Protocol]) -> ChainFacts:
    """Every protocol's books and the registry's holding of their tokens (BlockingChain calls)."""
    facts = ChainFacts(url=url)
    if chain is None:
        facts.error = "no chain configured"
        return facts
    try:
        for p in protocols:
            key = chain_key(p)
            if key not in facts.books:
                facts.books[key] = read_books(chain, *key)
        facts.holdings = read_holdings(chain, {(b.row.tokencontract, b.row.symbol)
                                               for b in facts.books.values() if b is not None})
    except ChainError as e:
        facts.error = f"{type(e).__name__}: {e}"
    except Exception as e:  # transport failures of any kind: shown on the page, read again next refresh
        facts.error = f"{type(e).__name__}: {e or 'no answer'}"
    return facts


# -- operator health -----------------------------------------------------------------------------
@dataclass
class KindLatency:
    kind: str
    count: int
    mean_s: float
    p95_le_s: float | None  # upper bound of the histogram bucket holding the 95th percentile


@dataclass
class MetricsFacts:
    source: str | None = None
    error: str | None = None
    leading: bool | None = None
    queue_depth: float | None = None
    latency: list[KindLatency] = field(default_factory=list)
    reconciles: dict[str, int] = field(default_factory=dict)           # result -> count
    errors: list[dict[str, Any]] = field(default_factory=list)         # kind, reason, count


def parse_metrics(text: str, source: str | None = None) -> MetricsFacts:
    """engine/metrics.py's families from a Prometheus exposition."""
    m = MetricsFacts(source=source)
    buckets: dict[str, list[tuple[float, float]]] = {}
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            kind = s.labels.get("kind", "")
            if s.name == "boid_workqueue_depth":  # one queue per kind: the total waiting
                m.queue_depth = (m.queue_depth or 0) + s.value
            elif s.name == "boid_leader":
                m.leading = s.value >= 1
            elif s.name == "boid_reconciles_total":
                res = s.labels.get("result", "")
                m.reconciles[res] = m.reconciles.get(res, 0) + int(s.value)
            elif s.name == "boid_reconcile_errors_total":
                m.errors.append({"kind": kind, "reason": s.labels.get("reason", ""), "count": int(s.value)})
            elif s.name == "boid_reconcile_seconds_bucket":
                buckets.setdefault(kind, []).append((float(s.labels["le"]), s.value))
            elif s.name == "boid_reconcile_seconds_sum":
                sums[kind] = s.value
            elif s.name == "boid_reconcile_seconds_count":
                counts[kind] = s.value
    for kind in sorted(counts):
        n = int(counts[kind])
        p95 = None
        if n:
            for le, cum in sorted(buckets.get(kind, [])):
                if cum >= 0.95 * n:
                    p95 = le
                    break
        m.latency.append(KindLatency(kind, n, (sums.get(kind, 0.0) / n) if n else 0.0,
                                     None if p95 in (None, float("inf")) else p95))
    m.errors.sort(key=lambda e: -e["count"])
    return m


def read_leader(client: Any) -> tuple[str | None, list[str]]:
    """The operator replicas contending for the leader lock, leader first (read only: no ensure_path)."""
    from kazoo.exceptions import NoNodeError

    try:
        children = client.get_children(LEADER_LOCK)
    except NoNodeError:
        return None, []
    ids = []
    for c in sorted(children, key=lambda n: n[-10:]):  # kazoo's sequence suffix orders the queue
        try:
            data, _ = client.get(f"{LEADER_LOCK}/{c}")
            ids.append(data.decode(errors="replace") or c)
        except NoNodeError:
            continue
    return (ids[0] if ids else None), ids


# -- views -----------------------------------------------------------------------------------------
def _conditions(obj: Resource) -> list[dict[str, Any]]:
    st = obj.status
    return [{"type": c.type, "status": c.status, "reason": c.reason, "message": c.message,
             "since": iso(c.last_transition_time)} for c in (st.conditions if st else [])]


def job_view(j: Job) -> dict[str, Any]:
    st = j.status
    u = st.units if st else None
    total = u.total if u else 0
    done = (u.succeeded + u.failed) if u else 0
    validated = u.validated if u else 0
    conds = _conditions(j)
    problems = [c for c in conds if (c["type"] == "Failed" and c["status"] == "True")
                or (c["type"] not in ("Failed", "Complete") and c["status"] == "False")]
    return {
        "name": j.name, "protocol": j.spec.protocol, "phase": (st.phase if st else None) or "Pending",
        "image": j.spec.image,
        "units": (u.model_dump() if u else {"total": 0, "pending": 0, "running": 0, "succeeded": 0,
                                              "failed": 0, "validated": 0}),
        "progress": (st.progress if st else None),
        "done": done, "total": total, "validated": validated,
        "percent": (validated * 100 // total) if total else 0,
        "startTime": iso(st.start_time if st else None),
        "completionTime": iso(st.completion_time if st else None),
        "output": st.output if st else None,
        "failedUnits": list(st.failed_units) if st else [],
        "disagreements": [d.model_dump() for d in st.disagreements] if st else [],
        "contributors": [{"account": c.account, "us": c.microseconds, "seconds": secs(c.microseconds)}
                         for c in (st.contributors if st else [])],
        "problems": problems, "conditions": conds,
        "created": iso(j.metadata.creation_timestamp),
    }


def _escrow(p: Protocol, b: ProtocolBooks | None, facts: ChainFacts) -> dict[str, Any] | None:
    """The escrow's books: from the chain when read now, else the operator's last status."""
    if b is not None:
        r = b.row
        holding = facts.holdings.get((r.tokencontract, r.symbol))
        return {"source": "chain", "balance": asset_json(r.balance), "deposited": asset_json(r.deposited),
                "owed": asset_json(r.owed), "paid": asset_json(r.paid), "withdrawn": asset_json(r.withdrawn),
                "free": asset_json(r.free), "shortfall": asset_json(r.owed - r.balance) if r.free.amount < 0 else None,
                "reserved": asset_json(r.reserved), "withdrawable": asset_json(r.withdrawable),
                "balances": not b.differences(), "differences": b.differences(),
                "holding": None if holding is None else {
                    "registry": holding.registry, "held": asset_json(holding.held),
                    "escrows": asset_json(holding.escrows), "balanced": holding.balanced}}
    st = p.status
    if st is None or st.fund_balance is None:
        return None
    free = st.escrow
    return {"source": "status", "balance": asset_json(st.fund_balance), "deposited": asset_json(st.deposited),
            "owed": asset_json(st.owed), "paid": asset_json(st.paid_total), "withdrawn": asset_json(st.withdrawn),
            "free": asset_json(free), "shortfall": asset_json(Asset(-free.amount, free.symbol))
            if free is not None and free.amount < 0 else None,
            "reserved": asset_json(st.reserved) if st.reserved is not None else None, "withdrawable": None,
            "balances": None, "differences": [], "holding": None}


def protocol_view(p: Protocol, jobs: list[Job], facts: ChainFacts) -> dict[str, Any]:
    s, st = p.spec, p.status
    symbol = s.fund.quantity.symbol
    key = chain_key(p)
    b = facts.books.get(key)
    if b is not None:  # the chain's acct rows are the record of what was paid
        paid = {a.account: a.paid for a in b.accts.values() if a.paid.amount > 0}
        paid_total = b.row.paid
    else:
        paid = dict(st.paid) if st else {}
        paid_total = (st.paid_total if st and st.paid_total is not None else sum(paid.values(), Asset(0, symbol)))
    bound = can_still_owe(p, jobs)
    return {
        "name": p.name, "title": s.title, "owner": s.owner, "researcher": s.researcher,
        "chainName": f"{s.owner}/{p.chain_name}",
        "datadir": str(s.datadir), "fundAccount": s.fund.account or s.owner, "tokenContract": s.fund.token_contract,
        "pledged": asset_json(s.fund.quantity),
        "registered": (b is not None) if key in facts.books else None,
        "accepted": b.row.accepted if b is not None else None,
        "id": b.row.id if b is not None else None,
        "escrow": _escrow(p, b, facts),
        "canStillOwe": asset_json(bound),  # None: a running job has no unit timeout, so no bound
        "batches": ({"seq": b.seq.seq if b.seq else 0, "units": b.seq.units if b.seq else 0} if b is not None else None),
        "rates": {"worker": asset_json(s.pay_rates.worker), "dispatcher": asset_json(s.pay_rates.dispatcher)},
        "chainRates": ({"worker": asset_json(b.row.worker_pay_rate), "dispatcher": asset_json(b.row.dispatcher_pay_rate)}
                       if b is not None else None),
        "payout": {"intervalSeconds": s.payout.interval, "minimum": asset_json(s.payout.minimum),
                   "last": iso(st.last_payout_time if st else None)},
        "paid": {k: asset_json(v) for k, v in sorted(paid.items())}, "paidTotal": asset_json(paid_total),
        "moneySource": "chain" if b is not None else "status",
        "jobs": sorted(j.name for j in jobs if j.spec.protocol == p.name),
        "conditions": _conditions(p),
    }


def _per_protocol(p: Protocol, account: str, role: str, facts: ChainFacts) -> dict[str, Any]:
    """One contributor's time, owed and paid with one protocol (chain rows; else the last status)."""
    key = chain_key(p)
    b = facts.books.get(key)
    symbol = p.spec.fund.quantity.symbol
    out: dict[str, Any] = {"protocol": p.name, "chainName": f"{key[0]}/{key[1]}", "role": role}
    if b is not None:
        us = b.times.get((account, role))
        a = b.accts.get(account)
        zero = b.zero
        out.update(source="chain", registered=us is not None, timeUs=us or 0, time=secs(us or 0),
                   owed=asset_json(a.owed if a else zero), paid=asset_json(a.paid if a else zero))
    else:
        paid = (p.status.paid.get(account) if p.status else None) or Asset(0, symbol)
        out.update(source="status", registered=None, timeUs=None, time=None, owed=None, paid=asset_json(paid))
    return out


def contributor_views(contributors: list[Contributor], protocols: list[Protocol], jobs: list[Job],
                      facts: ChainFacts) -> list[dict[str, Any]]:
    """Per contributor: time given (the chain's rows per protocol, and the jobs' accepted time),
    and per protocol what it owes them (fixed when the work was recorded) and has paid them.
    Accounts the chain or the jobs know without a Contributor object (e.g. local slots) are listed too."""
    by_account: dict[str, int] = {}
    for j in jobs:
        for c in (j.status.contributors if j.status else []):
            by_account[c.account] = by_account.get(c.account, 0) + c.microseconds
    protocols = sorted(protocols, key=lambda p: p.name)
    on_chain: dict[tuple[str, str], list[str]] = {}  # (account, role) -> names of protocols whose books list it
    for p in protocols:
        b = facts.books.get(chain_key(p))
        for ar in (b.accounts if b is not None else ()):
            on_chain.setdefault(ar, []).append(p.name)

    def entry(name: str | None, acct: str, role: str, researchers: list[str], st: Any,
              mine: list[Protocol], conds: list[dict[str, Any]]) -> dict[str, Any]:
        per = [_per_protocol(p, acct, role, facts) for p in mine]
        known = [r for r in per if r["source"] == "chain"]
        if known:
            total, source = sum(r["timeUs"] for r in known), "chain"
        else:
            total, source = (st.total_time if st else 0), "status"
        return {"name": name, "account": acct, "role": role, "researchers": researchers,
                "registrations": list(st.registrations) if st else [], "timeSource": source,
                "totalUs": total, "total": secs(total),
                "jobsUs": by_account.get(acct, 0), "jobs": secs(by_account.get(acct, 0)),
                "perProtocol": per, "conditions": conds}

    out, seen = [], set()
    for c in sorted(contributors, key=lambda c: c.name):
        acct, role = c.spec.account, c.spec.role
        seen.add((acct, role))
        mine = [p for p in protocols if p.spec.researcher in c.spec.researchers
                or p.name in on_chain.get((acct, role), [])]
        out.append(entry(c.name, acct, role, list(c.spec.researchers), c.status, mine, _conditions(c)))
    # accounts credited by jobs or on a protocol's books without a Contributor object still gave time
    objects = {a for a, _ in seen}
    others = {ar for ar in on_chain if ar not in seen} | {(a, "worker") for a in by_account if a not in objects}
    for acct, role in sorted(others):
        names = on_chain.get((acct, role), [])
        out.append(entry(None, acct, role, [], None, [p for p in protocols if p.name in names], []))
    return out


def health_view(zk: str, connected: bool, leader: str | None, contenders: list[str],
                metrics: MetricsFacts | None) -> dict[str, Any]:
    return {"zookeeper": zk, "connected": connected, "leader": leader, "contenders": contenders,
            "metrics": asdict(metrics) if metrics else None}


def snapshot(objects: Mapping[str, Mapping[str, Resource]], facts: ChainFacts,
             view_job: Callable[[Job], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Protocols, jobs and contributors views from the watched objects (kind -> name -> object).
    `view_job` may cache job_view per object (a busy cluster rebuilds this on every change)."""
    view_job = view_job or job_view
    protocols = sorted(objects.get("Protocol", {}).values(), key=lambda o: o.name)
    jobs = sorted(objects.get("Job", {}).values(), key=lambda o: o.name)
    contributors = sorted(objects.get("Contributor", {}).values(), key=lambda o: o.name)
    return {
        "protocols": [protocol_view(p, jobs, facts) for p in protocols],  # type: ignore[arg-type]
        "jobs": [view_job(j) for j in jobs],  # type: ignore[arg-type]
        "contributors": contributor_views(contributors, protocols, jobs, facts),  # type: ignore[arg-type]
        "chain": {"url": facts.url, "error": facts.error},
    }

