"""The job mirror's memory stays flat: settled units retire (records.JobRecords.retire).

A retired unit keeps one bit and the counters; nothing a pass decides on may change because of
it. Randomized sequences of attempts, ends, acceptances, ledger records and retirements are
applied to two mirrors, one that retires after every step and one that never does (what the
mirror was before), and everything a pass or status reads must agree, while the retiring one
holds no record of a settled unit.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from boidcluster.reconcilers.jobs.records import Acceptance, Attempt, Credit, JobRecords, TaskResult

UNITS = [f"u{i:06d}" for i in range(3)]
PEOPLE = ["alice", "bob", "carol"]

ops = st.lists(st.tuples(st.sampled_from(["launch", "end", "accept", "record"]),
                         st.integers(0, len(UNITS) - 1), st.integers(0, 3)), min_size=10, max_size=120)


def result(unit: str, state: str, who: str, us: int) -> TaskResult:
    return TaskResult(unit=unit, state=state, contributor=who, exit_code=0 if state == "FINISHED" else 1, us=us,
                      hash="h" if state == "FINISHED" else None, message="", failure=state == "FAILED",
                      finished_us=us)


@settings(max_examples=500, deadline=None)
@given(ops, st.booleans())
def test_retiring_settled_units_changes_no_decision_and_keeps_nothing_of_them(steps, ledger):
    lean, full = JobRecords("job"), JobRecords("job")
    tries: dict[str, int] = {}
    accepted: set[str] = set()
    recorded: set[str] = set()
    clock = 0
    for op, k, x in steps:
        clock += 1
        unit = UNITS[k]
        if op == "launch" and unit not in accepted:
            n = tries.get(unit, 0)
            tries[unit] = n + 1
            tid = f"t.{unit}.{n}"
            for r in (lean, full):
                r.stage_attempt(tid, Attempt(unit=unit, n=n, output=f"out/{tid}", at_us=clock))
        elif op == "end":
            flying = sorted(t for t, a in full.flying.items() if a.unit == unit)
            if flying:
                tid = flying[x % len(flying)]
                res = result(unit, ["FINISHED", "FAILED", "LOST", "KILLED"][x], PEOPLE[x % 3], 1000 + clock)
                for r in (lean, full):
                    r.stage_result(tid, res)
        elif op == "accept" and unit not in accepted:
            done = [t for t in full.open_results.get(unit, ()) if full.results[t].state == "FINISHED"]
            if done:
                res = full.results[done[0]]
                acc = Acceptance(hash="h", credited=(Credit(res.contributor or "", res.us, done[0]),), rejected=(),
                                 at_us=clock, output=f"out/{done[0]}")
                for r in (lean, full):
                    r.stage_accepted(unit, acc)
                accepted.add(unit)
        elif op == "record" and ledger:
            todo = sorted(full.unrecorded)[:x + 1]
            for r in (lean, full):
                r.mark_recorded(todo)
            recorded.update(todo)
        lean.retire(ledger)

        # everything a pass or status reads agrees with the mirror that keeps every record
        assert [lean.is_accepted(u) for u in UNITS] == [u in accepted for u in UNITS]
        assert (lean.validated, lean.succeeded, lean.n_recorded) == (len(full.accepted), len(full.finished_units),
                                                                      len(full.recorded))
        assert lean.flying == full.flying and lean.flying_by_unit == full.flying_by_unit
        assert lean.per_contributor == full.per_contributor and lean.slowest == full.slowest
        assert lean.tries == full.tries and lean.launched_upto == full.launched_upto
        assert lean.open_results == full.open_results
        assert {t: lean.results[t] for ts in lean.open_results.values() for t in ts} == \
               {t: full.results[t] for ts in full.open_results.values() for t in ts}
        if ledger:
            assert lean.unrecorded == full.unrecorded
            assert all(lean.accepted[u] == full.accepted[u] for u in lean.unrecorded)   # what the ledger gets
        # ...and holds nothing of a settled unit
        for u in accepted:
            settled = u not in full.flying_by_unit and (not ledger or u in recorded)
            if settled:
                assert u not in lean.accepted and u not in lean.unit_tids and u not in lean.finished_units
                assert not [t for t, a in lean.attempts.items() if a.unit == u]
                assert not [t for t, r in lean.results.items() if r.unit == u]
        assert len(lean.accepted) <= len(full.accepted) - lean.n_retired


def test_a_retired_unit_is_one_bit():
    """100,000 settled units leave no record object in the mirror, only a 12.5 kB bitmap."""
    r = JobRecords("job")
    for i in range(100_000):
        unit, tid = f"u{i:06d}", f"t.{i}"
        r.stage_attempt(tid, Attempt(unit=unit, n=0, output=f"o/{i}", at_us=i))
        r.stage_result(tid, result(unit, "FINISHED", "alice", 5))
        r.stage_accepted(unit, Acceptance(hash="h", credited=(Credit("alice", 5, tid),), rejected=(), at_us=i,
                                          output=f"o/{i}"))
        if i % 1000 == 999:
            r.retire(ledger=False)
    assert (r.validated, r.succeeded, r.n_retired) == (100_000, 100_000, 100_000)
    assert not (r.accepted or r.attempts or r.results or r.unit_tids or r.finished_units or r.unrecorded)
    assert len(r.retired) == 12_500 and r.per_contributor == {"alice": 500_000}
    assert r.is_accepted("u099999") and not r.is_accepted("u100000")
