"""Time on chain and payouts through the ledger and the Protocol reconciler, on the real chain node.

Contributed time is recorded by the ledger (as the jobs reconciler does for accepted units) in
numbered batches journaled in ZooKeeper; recording fixes what is owed; the operator then pays it
from the protocol's escrow: exactly, never twice, never beyond the escrow, and the payout facts
come from the chain's rows, so a failure later in the same pass loses nothing.
"""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from boidcluster.adapters.chain import credit
from boidcluster.adapters.marathon import MarathonError
from boidcluster.adapters.store import ANY_VERSION
from boidcluster.cli.main import cli
from boidcluster.model.resources import Contributor, Protocol
from boidcluster.model.types import Asset
from boidcluster.reconcilers.ledger import ChainLedger
from fixtures.operator import cond, eventually, protocol_obj

pytestmark = pytest.mark.usefixtures("contracts_deployed")

BOID = Asset.parse("0.0000 BOID").symbol
H = 3_600_000_000


def contributor(name: str, account: str, researcher: str, role: str = "worker") -> Contributor:
    return Contributor.model_validate({
        "apiVersion": "cluster.boid.com/v1alpha1", "kind": "Contributor", "metadata": {"name": name},
        "spec": {"account": account, "role": role, "researchers": [researcher]}})


def balance(chain, account: str) -> Asset:
    return chain.fund_balance(account, "eosio.token", BOID)


def fake_job(uid: str):
    return SimpleNamespace(metadata=SimpleNamespace(uid=uid))


def boid(text: str) -> Asset:
    return Asset.parse(text)


@pytest.fixture
def registered(world_factory, actors, chain_world):
    """A protocol registered and funded by its owner (100 BOID), two registered workers, a running operator."""
    op, store, chain = world_factory()
    store.create(protocol_obj("pay", actors, fund="100.0000 BOID", worker_rate="3.6000 BOID"))
    chain_world.fund_protocol(store.get(Protocol, "pay"), "100.0000 BOID")
    for i, w in enumerate(actors.workers):
        store.create(contributor(f"w{i}", w, actors.researcher))
    op.enqueue("Protocol", "pay")
    eventually(lambda: cond(store.get(Protocol, "pay"), "Ready") == "True")
    for i in range(len(actors.workers)):
        eventually(lambda i=i: cond(store.get(Contributor, f"w{i}"), "Registered") == "True")
    return op, store, chain


def test_recorded_time_is_paid_exactly_once(registered, actors):
    op, store, chain = registered
    w0, w1 = actors.workers
    ledger = op.world.ledger
    before = {w: balance(chain, w) for w in (w0, w1)}
    p = store.get(Protocol, "pay")
    credits = [("u0", w0, 1_000_000_000), ("u1", w0, 1_234_567), ("u0", w1, 2_000_000_000)]
    first = ledger.record_units(p, fake_job("job-uid-1"), credits)
    again = ledger.record_units(p, fake_job("job-uid-1"), credits)  # a crash-retry: no double record
    assert (first.recorded, first.transactions, again.recorded, again.already) == (3, 1, 0, 3)
    op.enqueue("Protocol", "pay")

    rate = p.spec.pay_rates.worker
    owed = {w0: credit(1_000_000_000 + 1_234_567, rate)[0], w1: credit(2_000_000_000, rate)[0]}
    eventually(lambda: balance(chain, w0) == before[w0] + owed[w0] and balance(chain, w1) == before[w1] + owed[w1],
               timeout=30)
    row = chain.protocol_row(actors.owner, p.chain_name)
    assert row.balance == boid("100.0000 BOID") - owed[w0] - owed[w1] and row.owed == boid("0.0000 BOID")
    st = eventually(lambda: (o := store.get(Protocol, "pay")).status.paid.get(w1) and o.status)
    assert st.paid == {w0: owed[w0], w1: owed[w1]} and st.last_payout_time is not None
    assert st.paid_total == owed[w0] + owed[w1]
    # a later look pays nothing more
    op.enqueue("Protocol", "pay")
    time.sleep(2)
    assert balance(chain, w0) == before[w0] + owed[w0]


class CountingReads:
    """The operator's chain, counting reads of contributors' acct rows."""

    def __init__(self, chain):
        self._chain, self.acct_reads = chain, 0

    def __getattr__(self, name):
        if name == "acct_rows":
            self.acct_reads += 1
        return getattr(self._chain, name)


def passes(op) -> float:
    return op.metrics.registry.get_sample_value("boid_reconciles_total", {"kind": "Protocol", "result": "ok"}) or 0


def test_contributors_rows_are_read_only_when_they_can_have_changed(registered, actors):
    """The protocol row's owed and paid are the sums of the contributors' rows: while nothing is
    owed and the paid total is what status shows per contributor, a pass reads no acct row; work
    recorded after a payout waits for the next one without a read; a status that lost what was
    paid reads them again."""
    op, store, chain = registered
    w0, w1 = actors.workers
    p = store.get(Protocol, "pay")
    op.world.ledger.record_units(p, fake_job("rows-1"), [("u0", w0, H), ("u1", w1, H)])
    op.enqueue("Protocol", "pay")
    eventually(lambda: store.get(Protocol, "pay").status.paid == {w0: boid("3.6000 BOID"), w1: boid("3.6000 BOID")},
               timeout=30)
    counting = CountingReads(chain)
    op.world.chain = counting
    for _ in range(3):
        n = passes(op)
        op.enqueue("Protocol", "pay")
        eventually(lambda: passes(op) > n)
    assert counting.acct_reads == 0
    assert store.get(Protocol, "pay").status.paid == {w0: boid("3.6000 BOID"), w1: boid("3.6000 BOID")}

    # work recorded after today's payout: owed, paid tomorrow; what was paid has not moved
    op.world.ledger.record_units(p, fake_job("rows-2"), [("u0", w0, H)])
    op.enqueue("Protocol", "pay")
    eventually(lambda: store.get(Protocol, "pay").status.owed == boid("3.6000 BOID"))
    assert counting.acct_reads == 0

    # a status that lost what was paid (a write that never happened) is read back from the rows
    store.update_status(Protocol, "pay", {**store.get(Protocol, "pay").status.model_dump(mode="json", by_alias=True,
                                                                                      exclude_none=True),
                                          "paid": {}}, expected_version=ANY_VERSION)
    # (asked again until a pass starts from that status: the engine may hold the one before it)
    eventually(lambda: op.enqueue("Protocol", "pay") and store.get(Protocol, "pay").status.paid == {
        w0: boid("3.6000 BOID"), w1: boid("3.6000 BOID")})
    assert counting.acct_reads >= 1


def test_a_restarted_ledger_resends_exactly_what_the_chain_lacks(registered, actors, zk_hosts, chain_world):
    """Issue 12 item 1: a batch journaled but not on chain (the operator died before sending it, or
    the node lost it) is re-sent as journaled, once; units of it are never put in a new batch."""
    op, store, chain = registered
    w0 = actors.workers[0]
    p = store.get(Protocol, "pay")
    row = chain.protocol_row(actors.owner, p.chain_name)
    crashed = ChainLedger(chain, store=store)

    def die(*a, **kw):  # the operator dies between journaling and sending
        raise SystemExit("killed")

    crashed.chain = SimpleNamespace(require_protocol=chain.require_protocol, batch_seq=chain.batch_seq,
                                    recent_protocol_row=chain.recent_protocol_row,
                                    contributor_rows=chain.contributor_rows,
                                    record_batch=die)
    with pytest.raises(SystemExit):
        crashed.record_units(p, fake_job("job-uid-r"), [("u0", w0, H), ("u1", w0, H)])
    assert chain.batch_seq(row.id) is None  # nothing on chain, one batch journaled
    report = ["--zk", zk_hosts, "report", "pay", "--chain-url", chain_world.url]
    r = CliRunner().invoke(cli, report)
    assert r.exit_code == 1 and f"{w0}: 7200.000000 s journaled in batches above the chain's 0" in r.output, r.output
    fresh = ChainLedger(chain, store=store)  # a new process
    assert fresh.pending(p) == 2
    out = fresh.record_units(p, fake_job("job-uid-r"), [("u0", w0, H), ("u1", w0, H), ("u2", w0, H)])
    assert (out.already, out.recorded) == (2, 1)
    seq = chain.batch_seq(row.id)
    assert (seq.seq, seq.units, seq.worker_time) == (2, 3, 3 * H)  # the journaled batch, then the new one
    assert fresh.pending(p) == 0 and fresh.sync(p) == 0
    r = CliRunner().invoke(cli, report)
    assert "journaled in batches above" not in r.output and "batches 1..2" not in r.output, r.output
    assert ChainLedger(chain, store=store).record_units(p, fake_job("job-uid-r"), [("u2", w0, H)]).already == 1


def test_escrow_shortfall_stops_payouts_with_the_amount(registered, actors):
    op, store, chain = registered
    w0 = actors.workers[0]
    p = store.get(Protocol, "pay")
    # 40 hours at 3.6 BOID/h = 144 BOID, more than the 100 BOID escrow
    op.world.ledger.record_units(p, fake_job("job-uid-2"), [("u0", w0, 40 * H)])
    op.enqueue("Protocol", "pay")
    got = eventually(lambda: (o := store.get(Protocol, "pay")) and cond(o, "Funded") == "False" and o, timeout=30)
    msg = got.status.condition("Funded").message
    assert "short by 44.0000 BOID" in msg and w0 in msg
    row = chain.protocol_row(actors.owner, p.chain_name)
    assert row.owed == boid("144.0000 BOID") and row.balance == boid("100.0000 BOID")  # nothing lost
    assert got.status.escrow == boid("-44.0000 BOID")


def test_deleting_a_protocol_pays_what_is_owed_first(registered, actors):
    op, store, chain = registered
    w1 = actors.workers[1]
    p = store.get(Protocol, "pay")
    p.spec.payout.minimum = Asset.parse("50.0000 BOID")  # small amounts wait ...
    store.update(p)
    eventually(lambda: store.get(Protocol, "pay").status.observed_generation == 2)
    before = balance(chain, w1)
    op.world.ledger.record_units(p, fake_job("job-uid-3"), [("u0", w1, H)])  # 3.6 BOID owed
    store.delete(Protocol, "pay")  # ... but deletion settles them
    eventually(lambda: store.list(Protocol) == [], timeout=30)
    assert balance(chain, w1) == before + boid("3.6000 BOID")
    row = chain.protocol_row(actors.owner, p.chain_name)  # the escrow stays the owner's to withdraw
    assert row.owed == boid("0.0000 BOID") and row.balance == boid("96.4000 BOID")


def test_a_rate_change_never_reprices_recorded_work(registered, actors, chain_world):
    op, store, chain = registered
    w0 = actors.workers[0]
    p = store.get(Protocol, "pay")
    p.spec.payout.minimum = Asset.parse("50.0000 BOID")  # nothing is paid at the interval
    store.update(p)
    eventually(lambda: store.get(Protocol, "pay").status.observed_generation == 2)
    before = balance(chain, w0)
    op.world.ledger.record_units(p, fake_job("job-uid-4"), [("u0", w0, H)])  # 1 h at 3.6 BOID/h
    p = store.get(Protocol, "pay")
    p.spec.pay_rates.worker = Asset.parse("7.2000 BOID")
    p.spec.payout.minimum = None
    store.update(p)
    # the operator cannot change the registry (it holds no owner key): it says so
    got = eventually(lambda: (o := store.get(Protocol, "pay")) and cond(o, "Registered") == "False" and o)
    assert got.status.condition("Registered").reason == "TermsDiffer"
    chain_world.fund_protocol(store.get(Protocol, "pay"))  # the owner updates it (boidctl fund)
    op.enqueue("Protocol", "pay")
    eventually(lambda: balance(chain, w0) == before + boid("3.6000 BOID"), timeout=30)  # the old rate
    assert str(chain.protocol_row(actors.owner, p.chain_name).worker_pay_rate) == "7.2000 BOID"


class FailingMarathon:
    """Fault injection: the step after the payouts (the dispatcher app) always fails."""

    def ensure_app(self, app):
        raise MarathonError("injected: Marathon is down")

    def remove_app(self, app_id):
        pass


def test_payouts_survive_a_failure_later_in_the_same_pass(registered, actors, zk_hosts, chain_world):
    op, store, chain = registered
    w0 = actors.workers[0]
    op.world.marathon = FailingMarathon()
    p = store.get(Protocol, "pay")
    before = balance(chain, w0)
    op.world.ledger.record_units(p, fake_job("job-uid-6"), [("u0", w0, 5 * H)])  # 18 BOID
    op.enqueue("Protocol", "pay")
    eventually(lambda: balance(chain, w0) == before + boid("18.0000 BOID"), timeout=30)
    got = eventually(lambda: (o := store.get(Protocol, "pay")) and cond(o, "Reconciled") == "False"
                     and o.status.paid.get(w0) and o)
    assert got.status.paid[w0] == boid("18.0000 BOID")  # the fact is in status despite the failure ...
    assert got.status.condition("DispatcherReady").reason == "MarathonUnavailable"
    # ... and the report reads it from the chain's rows, so it agrees exactly
    r = CliRunner().invoke(cli, ["--zk", zk_hosts, "report", "pay", "--chain-url", chain_world.url])
    assert "deposited 100.0000 BOID = paid 18.0000 BOID + owed 0.0000 BOID + withdrawn 0.0000 BOID + free " \
           "82.0000 BOID" in r.output, r.output
    assert "escrow" not in "".join(line for line in r.output.splitlines() if line.startswith("  - ")), r.output


def test_fund_and_withdraw_from_the_cli_with_the_users_key_file(registered, actors, zk_hosts, chain_world, tmp_path):
    op, store, chain = registered
    keys = tmp_path / "me.keys"
    demo = chain_world.keys.key(chain_world.demo_key)
    keys.write_text(f"{actors.owner}@active {demo.reveal()}\n")
    keys.chmod(0o600)
    base = ["--zk", zk_hosts]
    url = ["--chain-url", chain_world.url, "--key-file", str(keys)]
    r = CliRunner().invoke(cli, [*base, "fund", "pay", "25", "--from", actors.owner, *url])
    assert r.exit_code == 0, r.output
    assert "holds 125.0000 BOID" in r.output
    assert demo.reveal() not in r.output
    r = CliRunner().invoke(cli, [*base, "fund", "pay", "1.5 EOS", *url])
    assert r.exit_code == 1 and "not in the protocol's token" in r.output
    before = balance(chain, actors.owner)
    r = CliRunner().invoke(cli, [*base, "withdraw", "pay", "5", *url])
    assert r.exit_code == 0 and "withdrew 5.0000 BOID" in r.output and "holds 120.0000 BOID" in r.output, r.output
    assert balance(chain, actors.owner) == before + boid("5.0000 BOID")
    op.world.ledger.record_units(store.get(Protocol, "pay"), fake_job("job-uid-7"), [("u0", actors.workers[0], 100 * H)])
    r = CliRunner().invoke(cli, [*base, "withdraw", "pay", "1", *url])  # 360 BOID owed > 125 held: nothing free
    assert r.exit_code == 1 and "free escrow" in r.output, r.output
    no_key = tmp_path / "other.keys"
    no_key.write_text(f"{actors.outsider}@active {demo.reveal()}\n")
    r = CliRunner().invoke(cli, [*base, "withdraw", "pay", "--all", "--chain-url", chain_world.url, "--key-file", str(no_key)])
    assert r.exit_code == 1 and f"no key for {actors.owner}@active" in r.output


def test_a_journal_behind_the_chain_never_reuses_a_batch_number(registered, actors, zk_hosts, chain_world):
    """A fresh ZooKeeper (empty journal) on a chain that holds batches: new batches are numbered
    after the chain's, so they are recorded, not mistaken for batches already there."""
    op, store, chain = registered
    w0 = actors.workers[0]
    p = store.get(Protocol, "pay")
    op.world.ledger.record_units(p, fake_job("job-a"), [("u0", w0, H)])
    empty = ChainLedger(chain)  # no journal at all
    out = empty.record_units(p, fake_job("job-b"), [("u0", w0, 2 * H)])
    assert out.recorded == 1
    seq = chain.batch_seq(chain.protocol_row(actors.owner, p.chain_name).id)
    assert (seq.seq, seq.units, seq.worker_time) == (2, 2, 3 * H)
    # a journal that disagrees with the chain's totals is a difference the report names
    store.create_once(f"ledger/{actors.owner}.{p.chain_name}/{2:012d}",
                      json.dumps({"type": "worker", "units": [["job-b", "u0", w0, 1, H]]}))
    r = CliRunner().invoke(cli, ["--zk", zk_hosts, "report", "pay", "--chain-url", chain_world.url])
    assert r.exit_code == 1 and "batches 1..2: the journal has 2 units, 7200.000000 s of workers" in r.output, r.output
    assert "the chain 2, 10800.000000 s" in r.output
