"""Conditions keep their transition time until their status really changes."""

from datetime import datetime, timezone

from boidcluster.engine.reconciler import condition
from boidcluster.engine.status import merge_conditions

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
T1 = datetime(2026, 1, 2, tzinfo=timezone.utc)


def test_transition_time_moves_only_when_status_changes():
    first = merge_conditions([], [condition("Funded", False, "Shortfall", "needs 5.0000 BOID")], T0)
    again = merge_conditions(first, [condition("Funded", False, "Shortfall", "needs 4.0000 BOID")], T1)
    assert again[0].last_transition_time == T0
    assert again[0].message == "needs 4.0000 BOID"
    flipped = merge_conditions(again, [condition("Funded", True, "Balance")], T1)
    assert flipped[0].last_transition_time == T1 and flipped[0].status == "True"


def test_untouched_conditions_are_kept():
    old = merge_conditions([], [condition("Registered", True, "OnChain")], T0)
    merged = merge_conditions(old, [condition("Funded", None, "ChainUnavailable")], T1)
    assert {c.type: c.status for c in merged} == {"Registered": "True", "Funded": "Unknown"}
