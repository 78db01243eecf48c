"""Quorum evaluation of one unit (reconcilers/jobs/quorum.py) and lazy unit expansion: pure, fast.

The invariants a contributor relies on: a result is credited only when `quorum` distinct
contributors agree on its hash; an outvoted result is never credited; a unit never runs forever on
a backend that keeps refusing it or keeps losing it for the same reason; a unit's index maps to
the same unit whether expanded lazily or all at once (the exactly-once records are keyed by it).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from boidcluster.model.resources import JobSpec
from boidcluster.reconcilers.jobs.quorum import Rules, evaluate
from boidcluster.reconcilers.jobs.records import TaskResult, unit_index
from boidcluster.reconcilers.jobs.units import UnitSpace, expand

ALL = frozenset({"alice", "bob", "carol"})


def done(contributor: str, digest: str = "h1", us: int = 1000, at: int = 1) -> TaskResult:
    return TaskResult(unit="u000000", state="FINISHED", contributor=contributor, exit_code=0, us=us,
                      hash=digest, message="", failure=False, finished_us=at)


def failed(at: int = 1, message: str = "exited with code 1") -> TaskResult:
    return TaskResult(unit="u000000", state="FAILED", contributor="alice", exit_code=1, us=5, hash=None,
                      message=message, failure=True, finished_us=at)


def lost(message: str, at: int = 1, submit: bool = False) -> TaskResult:
    return TaskResult(unit="u000000", state="LOST", contributor=None, exit_code=None, us=0, hash=None,
                      message=message, failure=False, finished_us=at, submit_error=submit)


def test_a_fresh_unit_wants_its_replicas():
    v = evaluate([], [], Rules(replicas=3, quorum=2), ALL)
    assert v.accept is None and v.failed is None and v.launch == 3 and v.not_before_us == 0


def test_quorum_of_distinct_contributors_accepts_and_credits_only_them():
    rs = [("t0", done("alice")), ("t1", done("bob", "bad")), ("t2", done("carol"))]
    v = evaluate(rs, [], Rules(replicas=3, quorum=2), ALL)
    assert v.accept == "h1"
    assert sorted(c.contributor for _, c in v.credited) == ["alice", "carol"]
    assert [(r.contributor, r.hash) for r in v.rejected] == [("bob", "bad")]


def test_the_same_contributor_twice_is_not_a_quorum():
    rs = [("t0", done("alice")), ("t1", done("alice"))]
    v = evaluate(rs, [], Rules(replicas=2, quorum=2), ALL)
    assert v.accept is None and v.launch == 1
    assert "alice" in v.exclude   # the re-issue goes to someone else


def test_disagreement_reissues_and_is_reported():
    rs = [("t0", done("alice", "x")), ("t1", done("bob", "y"))]
    v = evaluate(rs, [], Rules(replicas=2, quorum=2), ALL)
    assert v.accept is None and v.launch == 1 and len(v.disagreements) == 2
    assert v.exclude == frozenset({"alice", "bob"})


def test_replicas_in_flight_count_towards_the_need():
    assert evaluate([], ["alice", None], Rules(replicas=2, quorum=2), ALL).launch == 0
    assert evaluate([], ["alice"], Rules(replicas=2, quorum=2), ALL).exclude == frozenset({"alice"})


def test_failures_back_off_and_fail_after_retries():
    rules = Rules(retries=2, retry_backoff=1.0)
    v = evaluate([("t0", failed(at=1_000_000))], [], rules, ALL)
    assert v.launch == 1 and v.not_before_us == 2_000_000
    v = evaluate([("t0", failed(at=0)), ("t1", failed(at=5_000_000))], [], rules, ALL)
    assert v.not_before_us == 7_000_000    # doubled
    v = evaluate([(f"t{i}", failed(message="boom")) for i in range(3)], [], rules, ALL)
    assert v.failed is not None and "3 attempts" in v.failed and "boom" in v.failed


def test_one_lost_task_is_requeued_at_once_and_never_counts_as_a_failure():
    v = evaluate([("t0", lost("contributor alice lost"))], [], Rules(retries=0), ALL)
    assert v.failed is None and v.launch == 1 and v.not_before_us == 0


def test_repeated_identical_submit_errors_back_off_then_fail_saying_why():
    rules = Rules(retry_backoff=1.0, same_error_limit=4)
    why = "submit failed: RuntimeError: no such image"
    rs = [(f"t{i}", lost(why, at=i * 10_000_000, submit=True)) for i in range(3)]
    v = evaluate(rs, [], rules, ALL)
    assert v.failed is None and v.launch == 1 and v.not_before_us == 20_000_000 + 2_000_000
    rs.append(("t3", lost(why, at=40_000_000, submit=True)))
    v = evaluate(rs, [], rules, ALL)
    assert v.failed is not None and why in v.failed and "4 attempts in a row" in v.failed


def test_different_reasons_are_not_a_streak():
    rs = [(f"t{i}", lost(f"reason {i % 2}")) for i in range(10)]
    v = evaluate(rs, [], Rules(same_error_limit=3), ALL)
    assert v.failed is None and v.launch == 1


def test_a_success_between_losses_resets_the_streak():
    rules = Rules(replicas=2, quorum=2, same_error_limit=3)
    rs = [("a", lost("x")), ("b", lost("x")), ("c", done("alice")), ("d", lost("x")), ("e", lost("x"))]
    assert evaluate(rs, [], rules, ALL).failed is None


results = st.lists(st.tuples(st.sampled_from(["alice", "bob", "carol", "dave"]),
                             st.sampled_from(["h1", "h2", "h3"]),
                             st.sampled_from(["FINISHED", "FAILED", "LOST"])), max_size=12)


@settings(max_examples=300, deadline=None)
@given(results, st.integers(1, 4), st.integers(1, 4), st.integers(0, 5))
def test_invariants_over_random_histories(history, replicas, quorum, retries):
    quorum = min(quorum, replicas)
    rs = []
    for i, (who, digest, state) in enumerate(history):
        if state == "FINISHED":
            rs.append((f"t{i}", done(who, digest, at=i)))
        elif state == "FAILED":
            rs.append((f"t{i}", failed(at=i)))
        else:
            rs.append((f"t{i}", lost("gone", at=i)))
    v = evaluate(rs, [], Rules(replicas=replicas, quorum=quorum, retries=retries), ALL | {"dave"})
    agree: dict[str, set[str]] = {}
    for _, r in rs:
        if r.state == "FINISHED":
            agree.setdefault(r.hash, set()).add(r.contributor)
    decided = any(len(c) >= quorum for c in agree.values())
    assert (v.accept is not None) == decided
    if v.accept is not None:
        credited = [c for _, c in v.credited]
        # credited: distinct contributors, all with the accepted hash, at least a quorum of them
        assert len({c.contributor for c in credited}) == len(credited) >= quorum
        assert all(dict(rs)[c.task].hash == v.accept for c in credited)
        assert all(r.hash != v.accept for r in v.rejected)
        assert v.failed is None and v.launch == 0
    else:
        assert (v.failed is None) or v.launch == 0
        if v.failed is None:
            assert v.launch >= 1   # an undecided, unfailed unit always wants work (never stalls)


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.sampled_from(["a", "b", "seed", "n"]),
                       st.lists(st.integers(-5, 5), min_size=1, max_size=4, unique=True), min_size=1, max_size=3))
def test_lazy_expansion_equals_the_full_expansion(sweep):
    spec = JobSpec.model_validate({"protocol": "p", "image": "i", "command": ["true"], "workUnits": {"sweep": sweep}})
    full = expand(spec)
    space = UnitSpace(spec)
    assert space.total == len(full) and [space.unit(i) for i in range(len(full))] == full
    assert all(unit_index(u.id) == u.index for u in full)


def test_a_million_units_are_not_built_up_front():
    spec = JobSpec.model_validate({"protocol": "p", "image": "i", "command": ["true"],
                                   "workUnits": {"sweep": {"a": {"range": {"start": 0, "stop": 1000}},
                                                           "b": {"range": {"start": 0, "stop": 1000}}}}})
    space = UnitSpace(spec)
    assert space.total == 1_000_000
    last = space.unit(999_999)
    assert last.params == {"a": 999, "b": 999} and last.id.startswith("u999999-")
    assert space.unit(1_000).params == {"a": 1, "b": 0}
