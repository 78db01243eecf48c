"""The dispatcher's credit (issue 12 item 2), as randomized sequences: jobs' running intervals,
credited in any order, with the other jobs known or not (a restart forgets the running ones).

Invariants: the credited total never exceeds the union of the credited jobs' intervals (so never
the wall time); with every job known, it is that union to within 1 µs a job (pro rata shares of
the busy time add up to it); each job's credit is at most its own interval."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from boidcluster.reconcilers.ledger import ChainLedger, _union

interval = st.tuples(st.integers(0, 10_000_000), st.integers(1, 5_000_000)).map(lambda t: (t[0], t[0] + t[1]))


def credit_all(intervals, order, known):
    ledger = ChainLedger(chain=None, dispatcher_account="disp", store=None)
    for i, (s, e) in enumerate(intervals):
        if known[i]:
            ledger.note_busy(f"j{i}", s, e)
    total = 0
    for i in order:
        s, e = intervals[i]
        us = ledger.dispatch_share(f"j{i}", s, e)
        assert 0 <= us <= e - s
        ledger._note_credited({"type": "dispatcher", "units": [[f"j{i}", f"dispatch@{s}-{e}", "disp", 0, us]]})
        total += us
        credited = [intervals[k] for k in order[:order.index(i) + 1]]
        assert total <= _union(credited)
    return total


@settings(max_examples=200, deadline=None)
@given(st.lists(interval, min_size=1, max_size=30), st.randoms())
def test_everything_known_credits_exactly_the_busy_time(intervals, rnd):
    order = list(range(len(intervals)))
    rnd.shuffle(order)
    total = credit_all(intervals, order, [True] * len(intervals))
    wall = max(e for _, e in intervals) - min(s for s, _ in intervals)
    assert _union(intervals) - len(intervals) <= total <= _union(intervals) <= wall


@settings(max_examples=200, deadline=None)
@given(st.lists(interval, min_size=1, max_size=30), st.randoms(), st.data())
def test_forgotten_jobs_never_make_the_credit_exceed_the_busy_time(intervals, rnd, data):
    order = list(range(len(intervals)))
    rnd.shuffle(order)
    known = data.draw(st.lists(st.booleans(), min_size=len(intervals), max_size=len(intervals)))
    credit_all(intervals, order, known)   # asserts the bound after every credit


def test_two_overlapping_jobs_share_the_overlap():
    ledger = ChainLedger(chain=None, dispatcher_account="disp", store=None)
    ledger.note_busy("a", 0, 10_000_000)
    ledger.note_busy("b", 5_000_000, 20_000_000)
    assert ledger.dispatch_share("a", 0, 10_000_000) == 7_500_000    # alone 5 s, half of 5 s shared
    assert ledger.dispatch_share("b", 5_000_000, 20_000_000) == 12_500_000
