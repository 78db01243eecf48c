"""The dashboard's read model and app, without a browser: metrics parsing against the operator's
real metrics registry, money views in integer asset units, read-only routes, no CDN."""

from __future__ import annotations

import dataclasses
import json
import re
from types import SimpleNamespace

import httpx
import pytest
from hypothesis import given, strategies as st

from boidcluster.adapters.chain import credit
from boidcluster.adapters.chain.boid import AcctRow, ProtocolRow
from boidcluster.adapters.chain.books import ProtocolBooks, TokenHolding
from boidcluster.dashboard import readmodel as rm
from boidcluster.dashboard.app import STATIC
from boidcluster.dashboard.server import Dashboard
from boidcluster.engine.metrics import Metrics
from boidcluster.model.resources import Contributor, Protocol
from boidcluster.model.types import Asset


def test_metrics_of_a_real_registry_give_latency_queue_and_errors():
    m = Metrics()
    for s in (0.002, 0.003, 0.004, 0.2):
        m.latency.labels("Job").observe(s)
    m.reconciles.labels("Job", "ok").inc(3)
    m.reconciles.labels("Job", "error").inc()
    m.errors.labels("Job", "ChainUnavailable").inc()
    m.queue_depth.labels("Job").set(5)
    m.queue_depth.labels("Protocol").set(2)
    m.leader.set(1)
    f = rm.parse_metrics(m.exposition().decode(), "test")
    assert (f.queue_depth, f.leading, f.reconciles) == (7, True, {"ok": 3, "error": 1})
    assert f.errors == [{"kind": "Job", "reason": "ChainUnavailable", "count": 1}]
    [job] = f.latency
    assert job.kind == "Job" and job.count == 4 and job.mean_s == pytest.approx(0.20900 / 4)
    assert job.p95_le_s == 0.25  # the bucket holding the 95th percentile (0.2 s falls in le=0.25)


def protocol(paid: dict[str, str], rate: str = "3.6000 BOID", status: dict | None = None) -> Protocol:
    return Protocol.model_validate({
        "apiVersion": "cluster.boid.com/v1alpha1", "kind": "Protocol", "metadata": {"name": "p"},
        "spec": {"title": "t", "owner": "owner", "researcher": "res", "datadir": "/p",
                 "fund": {"quantity": "100.0000 BOID"},
                 "payRates": {"worker": rate, "dispatcher": "0.5000 BOID"}},
        "status": {"paid": paid, **(status or {})}})


def worker(account: str) -> Contributor:
    return Contributor.model_validate({
        "apiVersion": "cluster.boid.com/v1alpha1", "kind": "Contributor", "metadata": {"name": account},
        "spec": {"account": account, "role": "worker", "researchers": ["res"]}})


BOID = Asset.parse("0.0000 BOID").symbol
ACCOUNTS = ("alice", "bob", "carol")
# one step on the books: deposit, record time (fixing pay at the rate then), pay out, reserve for running
# jobs, withdraw free escrow
step = st.one_of(
    st.tuples(st.just("deposit"), st.integers(1, 10**12)),
    st.tuples(st.just("reserve"), st.integers(0, 10**12)),
    st.tuples(st.just("record"), st.sampled_from(ACCOUNTS), st.integers(0, 10**13), st.integers(1, 10**9)),
    st.tuples(st.just("payout"), st.sampled_from(ACCOUNTS)),
    st.tuples(st.just("withdraw"), st.integers(0, 10**12)))


def run_books(steps) -> tuple[ProtocolRow, dict[str, AcctRow], dict[str, int]]:
    """The contract's bookkeeping in integer units (clusterreg: credit, payout, reserve, withdraw)."""
    deposited = paid = withdrawn = balance = owed = reserved = 0
    accts = {a: [0, 0, 0] for a in ACCOUNTS}  # owed, paid, carry
    times = {a: 0 for a in ACCOUNTS}
    for s in steps:
        if s[0] == "deposit":
            deposited += s[1]
            balance += s[1]
        elif s[0] == "record":
            _, a, us, rate = s
            amount, accts[a][2] = credit(us, Asset(rate, BOID), accts[a][2])
            accts[a][0] += amount.amount
            owed += amount.amount
            reserved = max(0, reserved - amount.amount)  # recorded work consumes its reservation
            times[a] += us
        elif s[0] == "payout":
            x = accts[s[1]][0]
            if 0 < x <= balance:  # a shortfall pays nothing
                balance -= x
                owed -= x
                paid += x
                accts[s[1]][0], accts[s[1]][1] = 0, accts[s[1]][1] + x
        elif s[0] == "reserve":
            if s[1] <= balance - owed:  # sets, never adds; refused above the free escrow
                reserved = s[1]
        else:
            x = min(s[1], max(0, balance - owed - reserved))  # only what nobody is owed nor reserved
            balance -= x
            withdrawn += x
    b = lambda n: Asset(n, BOID)  # noqa: E731
    row = ProtocolRow(name="p", owner="owner", researcher="res", id=7, accepted=True, title="t", datadir="/p",
                      tokencontract="eosio.token", worker_pay_rate=b(36000), dispatcher_pay_rate=b(5000),
                      deposited=b(deposited), balance=b(balance), owed=b(owed), paid=b(paid), withdrawn=b(withdrawn),
                      reserved=b(reserved))
    return row, {a: AcctRow(a, b(o), b(p), c) for a, (o, p, c) in accts.items() if o or p or c}, times


def facts_for(row, accts, times, held=None) -> rm.ChainFacts:
    books = ProtocolBooks(row=row, times={(a, "worker"): us for a, us in times.items() if us}, accts=accts, seq=None)
    key = ("eosio.token", BOID)
    holding = TokenHolding("clusterreg", "eosio.token", BOID, held if held is not None else row.balance, row.balance)
    return rm.ChainFacts(url="http://chain", books={("owner", "p"): books}, holdings={key: holding})


@given(steps=st.lists(step, max_size=40))
def test_money_views_are_the_chain_books_in_integer_units(steps):
    """After any sequence of deposits, records, payouts and withdrawals the page shows the chain's
    numbers exactly (integer units), says the books balance, and owed/paid per contributor add up."""
    row, accts, times = run_books(steps)
    p = protocol({"alice": "9.9999 BOID"})  # a stale status: the chain's rows win
    facts = facts_for(row, accts, times)
    view = rm.protocol_view(p, [], facts)
    e = view["escrow"]
    assert e["source"] == "chain" and e["balances"] is True and e["differences"] == []
    for k in ("balance", "deposited", "owed", "paid", "withdrawn", "free"):
        assert isinstance(e[k]["amount"], int)
    assert e["deposited"]["amount"] == e["paid"]["amount"] + e["owed"]["amount"] + e["withdrawn"]["amount"] \
        + e["free"]["amount"]
    assert e["free"]["amount"] == row.balance.amount - row.owed.amount
    # what the owner may take back is what is neither owed nor reserved for running jobs, never < 0
    assert e["reserved"]["amount"] == row.reserved.amount
    assert e["withdrawable"]["amount"] == max(0, row.balance.amount - row.owed.amount - row.reserved.amount)
    assert (e["shortfall"] is None) == (row.free.amount >= 0)
    assert e["shortfall"] is None or e["shortfall"]["amount"] == -e["free"]["amount"] > 0
    assert e["holding"]["balanced"] is True
    assert view["paidTotal"] == e["paid"]
    assert {k: v["amount"] for k, v in view["paid"].items()} == {a: r.paid.amount for a, r in accts.items() if r.paid.amount}
    contributors = [worker(a) for a in ACCOUNTS]
    cs = {c["account"]: c for c in rm.contributor_views(contributors, [p], [], facts)}
    assert set(cs) == set(ACCOUNTS)
    for a in ACCOUNTS:
        [per] = cs[a]["perProtocol"]
        r = accts.get(a)
        assert per["owed"]["amount"] == (r.owed.amount if r else 0) and per["paid"]["amount"] == (r.paid.amount if r else 0)
        assert per["timeUs"] == times[a] == cs[a]["totalUs"] and per["time"] == rm.secs(times[a])
    assert sum(cs[a]["perProtocol"][0]["owed"]["amount"] for a in ACCOUNTS) == e["owed"]["amount"]
    assert sum(cs[a]["perProtocol"][0]["paid"]["amount"] for a in ACCOUNTS) == e["paid"]["amount"]


@given(steps=st.lists(step, min_size=1, max_size=20), off=st.integers(1, 10**6),
       where=st.sampled_from(["acct-owed", "acct-paid", "withdrawn", "held"]))
def test_books_that_do_not_balance_are_shown_as_such(steps, off, where):
    """One unit off anywhere (a contributor's row, the protocol's totals, the registry's holding) is
    shown, as report flags it: never a silently rounded or balanced-looking page."""
    row, accts, times = run_books(steps)
    held = None
    b = lambda n: Asset(n, BOID)  # noqa: E731
    a = accts.get("alice") or AcctRow("alice", b(0), b(0), 0)
    if where == "acct-owed":
        accts["alice"] = AcctRow("alice", a.owed + b(off), a.paid, a.carry)
    elif where == "acct-paid":
        accts["alice"] = AcctRow("alice", a.owed, a.paid + b(off), a.carry)
    elif where == "withdrawn":
        row = dataclasses.replace(row, withdrawn=row.withdrawn + b(off))
    else:
        held = row.balance + b(off)
    e = rm.protocol_view(protocol({}), [], facts_for(row, accts, times, held))["escrow"]
    if where == "held":
        assert e["balances"] is True and e["holding"]["balanced"] is False
    else:
        assert e["balances"] is False and e["differences"]


def test_without_the_chain_the_views_say_so_and_keep_the_operators_records():
    p = protocol({"alice": "1.0000 BOID"}, status={
        "fundBalance": "5.0000 BOID", "escrow": "-1.0000 BOID", "owed": "6.0000 BOID", "paidTotal": "1.0000 BOID",
        "deposited": "6.0000 BOID", "withdrawn": "0.0000 BOID"})
    facts = rm.read_chain(None, None, [p])
    assert facts.error == "no chain configured"
    [c] = rm.contributor_views([worker("alice")], [p], [], facts)
    per = c["perProtocol"][0]
    assert per["owed"] is None and per["time"] is None and per["paid"]["text"] == "1.0000 BOID"
    e = rm.protocol_view(p, [], facts)["escrow"]
    assert e["source"] == "status" and e["balances"] is None
    assert e["free"]["text"] == "-1.0000 BOID" and e["shortfall"]["text"] == "1.0000 BOID"


def test_leader_is_the_first_contender_by_sequence():
    nodes = {"b__lock__0000000002": b"second", "a__lock__0000000001": b"first"}
    client = SimpleNamespace(get_children=lambda path: list(nodes),
                             get=lambda path: (nodes[path.rsplit("/", 1)[1]], None))
    assert rm.read_leader(client) == ("first", ["first", "second"])


@pytest.fixture
def served():
    """The real server (uvicorn on a free loopback port), with no ZooKeeper to reach."""
    dash = Dashboard("127.0.0.1:1", port=0, timeout=0.5).start()
    try:
        with httpx.Client(base_url=dash.url, timeout=5) as c:
            yield c
    finally:
        dash.stop()


def test_app_is_read_only_and_self_contained(served):
    for path in ("/", "/api/snapshot", "/healthz", "/static/app.js"):
        assert served.get(path).status_code == 200
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            assert served.request(method, path).status_code == 405, (method, path)
    r = served.get("/")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    # every script and stylesheet is served from the package: no CDN
    refs = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert refs and all(ref.startswith(("/static/", "#")) for ref in refs), refs
    for ref in refs:
        if ref.startswith("/static/"):
            assert served.get(ref).status_code == 200, ref
    assert not re.search(r"""(fetch|EventSource|import)\(\s*["'`](https?:)?//""", (STATIC / "app.js").read_text())
    assert (STATIC / "vendor" / "chartjs" / "LICENSE.md").read_text().startswith("The MIT License")


def test_event_stream_says_what_to_do_without_a_cluster(served):
    with served.stream("GET", "/api/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                snap = json.loads(line[len("data: "):])
                if snap["cluster"]["error"]:
                    break
    assert "boidctl up" in snap["cluster"]["error"]["hint"] and not snap["cluster"]["connected"]
