"""What the dashboard shows, computed from stored objects, chain rows and the operator's metrics.

Why one module: the money views must follow the contracts as they change (today contributed time
is kept on chain per *researcher*, and the registry row holds the fund; escrow and owed/paid per
protocol are coming). Everything the page says about money is derived here, from the same reads
`boidctl report` makes (`worker_row`/`dispatcher_row`, `protocol_row`, Protocol.status.paid), so
the page and the report agree, and a contract change is adapted in this one place.

Money stays integer asset units (`Asset`); the page receives them as the same strings `boidctl`
prints, plus integer amounts for plotting. Times are integer microseconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping

from prometheus_client.parser import text_string_to_metric_families

from boidcluster.adapters.chain import ChainError, payment
from boidcluster.adapters.chain.boid import ContributorRow, ProtocolRow
from boidcluster.adapters.store import LEADER_LOCK
from boidcluster.model.meta import Resource
from boidcluster.model.resources import Contributor, Job, Protocol
from boidcluster.model.types import Asset

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


# -- chain facts -------------------------------------------------------------------------------
@dataclass
class ChainFacts:
    """What the chain says, read in one pass; `error` says why it could not be read."""

    url: str | None = None
    error: str | None = None
    registry: dict[tuple[str, str], ProtocolRow | None] = field(default_factory=dict)       # (owner, researcher)
    rows: dict[tuple[str, str, str], ContributorRow | None] = field(default_factory=dict)   # (account, role, researcher)


def payees(protocol: Protocol, contributors: Iterable[Contributor]) -> list[tuple[str, str]]:
    """(account, role) of everyone the protocol pays: registered with its researcher (as payouts.settle)."""
    r = protocol.spec.researcher
    return sorted({(c.spec.account, c.spec.role) for c in contributors if r in c.spec.researchers})


def read_chain(chain: Any, url: str | None, protocols: list[Protocol], contributors: list[Contributor]) -> ChainFacts:
    """The registry row of every protocol and the time row of every payee (BlockingChain calls)."""
    facts = ChainFacts(url=url)
    if chain is None:
        facts.error = "no chain configured"
        return facts
    try:
        for p in protocols:
            s = p.spec
            if (s.owner, s.researcher) not in facts.registry:
                facts.registry[(s.owner, s.researcher)] = chain.protocol_row(s.owner, s.researcher)
            for account, role in payees(p, contributors):
                key = (account, role, s.researcher)
                if key not in facts.rows:
                    facts.rows[key] = (chain.worker_row if role == "worker" else chain.dispatcher_row)(
                        account, s.researcher)
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
            if s.name == "boid_workqueue_depth":
                m.queue_depth = s.value
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


def protocol_view(p: Protocol, jobs: list[Job], facts: ChainFacts) -> dict[str, Any]:
    s, st = p.spec, p.status
    symbol = s.fund.quantity.symbol
    paid = dict(st.paid) if st else {}
    paid_total = sum(paid.values(), Asset(0, symbol))
    reg = facts.registry.get((s.owner, s.researcher))
    registry = None
    if reg is not None:
        committed = reg.funded if reg.funded is not None else s.fund.quantity
        registry = {"fundLeft": asset_json(reg.fund), "committed": asset_json(committed),
                    "spent": asset_json(committed - reg.fund), "fundAccount": reg.fundaccount}
    return {
        "name": p.name, "title": s.title, "owner": s.owner, "researcher": s.researcher,
        "datadir": str(s.datadir), "fundAccount": s.fund.account, "tokenContract": s.fund.token_contract,
        "fundSpec": asset_json(s.fund.quantity), "fundBalance": asset_json(st.fund_balance if st else None),
        "registry": registry, "registered": (facts.error is None and reg is not None) if facts.url else None,
        "rates": {"worker": asset_json(s.pay_rates.worker), "dispatcher": asset_json(s.pay_rates.dispatcher)},
        "payout": {"intervalSeconds": s.payout.interval, "minimum": asset_json(s.payout.minimum),
                   "last": iso(st.last_payout_time if st else None)},
        "paid": {k: asset_json(v) for k, v in sorted(paid.items())}, "paidTotal": asset_json(paid_total),
        "jobs": sorted(j.name for j in jobs if j.spec.protocol == p.name),
        "conditions": _conditions(p),
    }


def contributor_views(contributors: list[Contributor], protocols: list[Protocol], jobs: list[Job],
                      facts: ChainFacts) -> list[dict[str, Any]]:
    """Per contributor: time given (chain rows, and jobs' accepted time), and per protocol owed and paid.

    Time rows are per researcher today: two protocols of one researcher share them, so owed is
    shown per protocol at that protocol's rate for the shared unpaid time (as payouts.settle pays)."""
    by_account: dict[str, int] = {}
    for j in jobs:
        for c in (j.status.contributors if j.status else []):
            by_account[c.account] = by_account.get(c.account, 0) + c.microseconds
    out = []
    for c in sorted(contributors, key=lambda c: c.name):
        acct, role = c.spec.account, c.spec.role
        st = c.status
        per = []
        for p in sorted(protocols, key=lambda p: p.name):
            r = p.spec.researcher
            if r not in c.spec.researchers:
                continue
            row = facts.rows.get((acct, role, r))
            known = (acct, role, r) in facts.rows
            rate = p.spec.pay_rates.worker if role == "worker" else p.spec.pay_rates.dispatcher
            paid = (p.status.paid.get(acct) if p.status else None) or Asset(0, rate.symbol)
            per.append({
                "protocol": p.name, "researcher": r,
                "chainTotalUs": (row.total_time if row else 0) if known else None,
                "chainUnpaidUs": (row.unpaid_time if row else 0) if known else None,
                "chainTotal": secs(row.total_time if row else 0) if known else None,
                "chainUnpaid": secs(row.unpaid_time if row else 0) if known else None,
                "owed": asset_json(payment(row.unpaid_time if row else 0, rate)) if known else None,
                "paid": asset_json(paid),
            })
        # time given: the chain's rows when read now (one per researcher), else the last status
        known = [facts.rows[(acct, role, r)] for r in c.spec.researchers if (acct, role, r) in facts.rows]
        if known:
            total, unpaid = (sum(x.total_time for x in known if x), sum(x.unpaid_time for x in known if x))
        else:
            total, unpaid = (st.total_time, st.unpaid_time) if st else (0, 0)
        out.append({
            "name": c.name, "account": acct, "role": role, "researchers": list(c.spec.researchers),
            "registrations": list(st.registrations) if st else [],
            "timeSource": "chain" if known else "status",
            "totalUs": total, "unpaidUs": unpaid, "total": secs(total), "unpaid": secs(unpaid),
            "jobsUs": by_account.get(acct, 0), "jobs": secs(by_account.get(acct, 0)),
            "perProtocol": per, "conditions": _conditions(c),
        })
    # accounts credited by jobs but without a Contributor object (e.g. local slots) still gave time
    known_accounts = {c.spec.account for c in contributors}
    for acct in sorted(set(by_account) - known_accounts):
        out.append({"name": None, "account": acct, "role": "worker", "researchers": [], "registrations": [],
                    "totalUs": 0, "unpaidUs": 0, "total": secs(0), "unpaid": secs(0),
                    "jobsUs": by_account[acct], "jobs": secs(by_account[acct]), "perProtocol": [],
                    "conditions": []})
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

