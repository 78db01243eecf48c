"""The dashboard's read model and app, without a browser: metrics parsing against the operator's
real metrics registry, money views in integer asset units, read-only routes, no CDN."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import httpx
import pytest
from hypothesis import given, strategies as st

from boidcluster.adapters.chain import payment
from boidcluster.adapters.chain.boid import ContributorRow, ProtocolRow
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
    m.queue_depth.set(7)
    m.leader.set(1)
    f = rm.parse_metrics(m.exposition().decode(), "test")
    assert (f.queue_depth, f.leading, f.reconciles) == (7, True, {"ok": 3, "error": 1})
    assert f.errors == [{"kind": "Job", "reason": "ChainUnavailable", "count": 1}]
    [job] = f.latency
    assert job.kind == "Job" and job.count == 4 and job.mean_s == pytest.approx(0.20900 / 4)
    assert job.p95_le_s == 0.25  # the bucket holding the 95th percentile (0.2 s falls in le=0.25)


def protocol(paid: dict[str, str], rate: str = "3.6000 BOID") -> Protocol:
    return Protocol.model_validate({
        "apiVersion": "cluster.boid.com/v1alpha1", "kind": "Protocol", "metadata": {"name": "p"},
        "spec": {"title": "t", "owner": "owner", "researcher": "res", "datadir": "/p",
                 "fund": {"account": "fund", "quantity": "100.0000 BOID"},
                 "payRates": {"worker": rate, "dispatcher": "0.5000 BOID"}},
        "status": {"paid": paid}})


def worker(account: str) -> Contributor:
    return Contributor.model_validate({
        "apiVersion": "cluster.boid.com/v1alpha1", "kind": "Contributor", "metadata": {"name": account},
        "spec": {"account": account, "role": "worker", "researchers": ["res"]}})


@given(unpaid=st.integers(0, 10**13), total_extra=st.integers(0, 10**13),
       rate=st.integers(1, 10**9), left=st.integers(0, 10**6))
def test_money_views_are_the_chain_rows_in_integer_units(unpaid, total_extra, rate, left):
    rate_asset = Asset(rate, Asset.parse("0.0000 BOID").symbol)
    p = protocol({"alice": "1.2345 BOID"}, rate=str(rate_asset))
    facts = rm.ChainFacts(url="http://chain", registry={("owner", "res"): ProtocolRow(
        "t", "owner", "res", "/p", "fund", Asset(left, rate_asset.symbol), "eosio.token", rate_asset,
        Asset.parse("0.5000 BOID"), funded=Asset(10**6, rate_asset.symbol))},
        rows={("alice", "worker", "res"): ContributorRow("res", unpaid + total_extra, unpaid)})
    [c] = rm.contributor_views([worker("alice")], [p], [], facts)
    [row] = c["perProtocol"]
    owed = payment(unpaid, rate_asset)
    assert row["owed"] == {"text": str(owed), "amount": owed.amount, "precision": 4, "symbol": "BOID"}
    assert row["chainUnpaidUs"] == unpaid and row["chainTotalUs"] == unpaid + total_extra
    assert row["paid"]["text"] == "1.2345 BOID" and c["totalUs"] == unpaid + total_extra
    view = rm.protocol_view(p, [], facts)
    assert view["registry"]["spent"]["amount"] == 10**6 - left  # committed - left, exact
    assert all(isinstance(a["amount"], int) for a in (view["paidTotal"], view["registry"]["fundLeft"]))


def test_without_the_chain_the_views_say_so_and_keep_the_operators_records():
    p = protocol({"alice": "1.0000 BOID"})
    facts = rm.read_chain(None, None, [p], [worker("alice")])
    assert facts.error == "no chain configured"
    [c] = rm.contributor_views([worker("alice")], [p], [], facts)
    assert c["perProtocol"][0]["owed"] is None and c["perProtocol"][0]["paid"]["text"] == "1.0000 BOID"


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
