"""Time on chain and payouts through the Protocol reconciler, on the real chain node.

Contributed time is recorded by the ledger (as the jobs reconciler does for accepted units);
the operator then pays it: exactly floor(time x rate), never twice, and never beyond the fund.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from boidcluster.adapters.chain import payment
from boidcluster.model.resources import Contributor, Protocol
from boidcluster.model.types import Asset
from fixtures.operator import cond, eventually, protocol_obj

pytestmark = pytest.mark.usefixtures("contracts_deployed")

BOID = Asset.parse("0.0000 BOID").symbol


def contributor(name: str, account: str, researcher: str, role: str = "worker") -> Contributor:
    return Contributor.model_validate({
        "apiVersion": "cluster.boid.com/v1alpha1", "kind": "Contributor", "metadata": {"name": name},
        "spec": {"account": account, "role": role, "researchers": [researcher]}})


def balance(chain, account: str) -> Asset:
    return chain.fund_balance(account, "eosio.token", BOID)


def fake_job(uid: str):
    return SimpleNamespace(metadata=SimpleNamespace(uid=uid))


@pytest.fixture
def registered(world_factory, actors):
    """A protocol and two registered workers, converged by a running operator."""
    op, store, chain = world_factory()
    store.create(protocol_obj("pay", actors, fund="100.0000 BOID", worker_rate="3.6000 BOID"))
    for i, w in enumerate(actors.workers):
        store.create(contributor(f"w{i}", w, actors.researcher))
    eventually(lambda: cond(store.get(Protocol, "pay"), "Ready") == "True")
    for i in range(len(actors.workers)):
        eventually(lambda i=i: cond(store.get(Contributor, f"w{i}"), "Registered") == "True")
    return op, store, chain


def test_recorded_time_is_paid_exactly_once(registered, actors):
    op, store, chain = registered
    w0, w1 = actors.workers
    ledger = op.world.ledger
    before = {w: balance(chain, w) for w in (w0, w1, actors.fund)}
    p = store.get(Protocol, "pay")
    credits = [("u0", w0, 1_000_000_000), ("u1", w0, 1_234_567), ("u0", w1, 2_000_000_000)]
    first = ledger.record_units(p, fake_job("job-uid-1"), credits)
    again = ledger.record_units(p, fake_job("job-uid-1"), credits)  # a crash-retry: no double record
    op.enqueue("Protocol", "pay")
    assert (first.recorded, again.recorded, again.already) == (3, 0, 3)

    rate = p.spec.pay_rates.worker
    owed = {w0: payment(1_000_000_000 + 1_234_567, rate), w1: payment(2_000_000_000, rate)}
    eventually(lambda: balance(chain, w0) == before[w0] + owed[w0] and balance(chain, w1) == before[w1] + owed[w1],
               timeout=30)
    assert balance(chain, actors.fund) == before[actors.fund] - owed[w0] - owed[w1]  # conservation
    st = eventually(lambda: (o := store.get(Protocol, "pay")).status.paid.get(w1) and o.status)
    assert st.paid[w0] == owed[w0] and st.paid[w1] == owed[w1] and st.last_payout_time is not None
    assert chain.worker_row(w0, actors.researcher).unpaid_time < 1_000_000 / 3.6  # < one smallest unit of time left
    # a later look pays nothing more
    op.enqueue("Protocol", "pay")
    time.sleep(2)
    assert balance(chain, w0) == before[w0] + owed[w0]


def test_fund_shortfall_stops_payouts_with_the_amount(registered, actors):
    op, store, chain = registered
    w0 = actors.workers[0]
    p = store.get(Protocol, "pay")
    # 40 hours at 3.6 BOID/h = 144 BOID, more than the 100 BOID registry fund
    op.world.ledger.record_units(p, fake_job("job-uid-2"), [("u0", w0, 40 * 3_600_000_000)])
    op.enqueue("Protocol", "pay")
    got = eventually(lambda: (o := store.get(Protocol, "pay")) and cond(o, "Funded") == "False" and o, timeout=30)
    msg = got.status.condition("Funded").message
    assert "short by 44.0000 BOID" in msg and w0 in msg
    assert chain.worker_row(w0, actors.researcher).unpaid_time == 40 * 3_600_000_000  # nothing lost


def test_deleting_a_protocol_pays_what_is_owed_first(registered, actors):
    op, store, chain = registered
    w1 = actors.workers[1]
    p = store.get(Protocol, "pay")
    p.spec.payout.minimum = Asset.parse("50.0000 BOID")  # small balances wait ...
    store.update(p)
    eventually(lambda: store.get(Protocol, "pay").status.observed_generation == 2)
    before = balance(chain, w1)
    op.world.ledger.record_units(p, fake_job("job-uid-3"), [("u0", w1, 3_600_000_000)])  # 3.6 BOID owed
    store.delete(Protocol, "pay")  # ... but deletion settles them
    eventually(lambda: store.list(Protocol) == [], timeout=30)
    assert balance(chain, w1) == before + Asset.parse("3.6000 BOID")
    assert chain.protocol_row(actors.owner, actors.researcher) is None


def test_a_rate_change_pays_recorded_time_at_the_old_rate_first(registered, actors):
    op, store, chain = registered
    w0 = actors.workers[0]
    p = store.get(Protocol, "pay")
    p.spec.payout.minimum = Asset.parse("50.0000 BOID")  # nothing is paid at the interval ...
    store.update(p)
    eventually(lambda: store.get(Protocol, "pay").status.observed_generation == 2)
    before = balance(chain, w0)
    op.world.ledger.record_units(p, fake_job("job-uid-4"), [("u0", w0, 3_600_000_000)])  # 1 h at 3.6 BOID/h
    p = store.get(Protocol, "pay")
    p.spec.pay_rates.worker = Asset.parse("7.2000 BOID")  # ... but a rate change settles first
    store.update(p)
    eventually(lambda: str(chain.protocol_row(actors.owner, actors.researcher).worker_pay_rate) == "7.2000 BOID")
    assert balance(chain, w0) == before + Asset.parse("3.6000 BOID")


def _registry(chain, actors):
    row = chain.protocol_row(actors.owner, actors.researcher)
    return str(row.fund), str(row.funded)


def _set_fund(store, quantity: str) -> int:
    p = store.get(Protocol, "pay")
    p.spec.fund.quantity = Asset.parse(quantity)
    store.update(p)
    gen = store.get(Protocol, "pay").metadata.generation
    eventually(lambda: store.get(Protocol, "pay").status.observed_generation == gen, timeout=30)
    return gen


def test_raising_the_fund_commits_exactly_the_difference(registered, actors):
    """A shortfall is ended by raising spec.fund.quantity: the registry commits (new - funded) more,
    counted from the total ever committed, not from what is left; applying again adds nothing."""
    op, store, chain = registered
    w0 = actors.workers[0]
    p = store.get(Protocol, "pay")
    assert _registry(chain, actors) == ("100.0000 BOID", "100.0000 BOID")
    before = balance(chain, w0)
    op.world.ledger.record_units(p, fake_job("job-uid-5"), [("u0", w0, 40 * 3_600_000_000)])  # 144 BOID owed
    op.enqueue("Protocol", "pay")
    eventually(lambda: cond(store.get(Protocol, "pay"), "Funded") == "False", timeout=30)
    assert _registry(chain, actors) == ("100.0000 BOID", "100.0000 BOID")

    _set_fund(store, "150.0000 BOID")  # +50 committed, then the 144 owed is paid
    eventually(lambda: balance(chain, w0) == before + Asset.parse("144.0000 BOID"), timeout=30)
    assert _registry(chain, actors) == ("6.0000 BOID", "150.0000 BOID")
    got = eventually(lambda: (o := store.get(Protocol, "pay")) and cond(o, "Funded") == "True" and o, timeout=30)
    assert cond(got, "Ready") == "True"

    _set_fund(store, "200.0000 BOID")  # 200 - funded (150) = 50 more, not 200 - fund (6)
    assert _registry(chain, actors) == ("56.0000 BOID", "200.0000 BOID")
    assert "added 50.0000 BOID" in store.get(Protocol, "pay").status.condition("Registered").message
    for _ in range(3):  # applying the same spec again (resyncs, restarts) adds nothing
        op.enqueue("Protocol", "pay")
    time.sleep(2)
    assert _registry(chain, actors) == ("56.0000 BOID", "200.0000 BOID")


def test_lowering_the_fund_is_ignored_with_a_condition(registered, actors):
    op, store, chain = registered
    _set_fund(store, "60.0000 BOID")
    p = store.get(Protocol, "pay")
    funded = p.status.condition("Funded")
    assert (funded.status, funded.reason) == ("True", "FundReductionIgnored")
    assert "60.0000 BOID is below the 100.0000 BOID already committed" in funded.message
    assert cond(p, "Ready") == "True"  # not an error: payouts go on from the registry fund
    assert _registry(chain, actors) == ("100.0000 BOID", "100.0000 BOID")
    _set_fund(store, "100.0000 BOID")  # back to the commitment: the note goes away
    assert store.get(Protocol, "pay").status.condition("Funded").reason == "Balance"
    assert _registry(chain, actors) == ("100.0000 BOID", "100.0000 BOID")
