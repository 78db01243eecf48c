"""The local backend's slots are sized to the machine (or configured), each credited to a contributor."""

from __future__ import annotations

import os

import pytest

from boidcluster.cli.wiring import local_slots, machine_slots


def test_machine_slots_is_one_per_core_at_most_and_at_least_one():
    cores = len(os.sched_getaffinity(0))
    assert 1 <= machine_slots() <= cores
    assert machine_slots(memory_per_slot_mb=10**9) == 1   # memory short: fewer slots, never none


def test_slots_spread_round_robin_over_the_accounts_and_never_fewer_than_one_each(monkeypatch):
    monkeypatch.delenv("BOID_SLOT_COUNT", raising=False)
    assert local_slots(["alice", "bob"], 5) == ["alice", "bob", "alice", "bob", "alice"]
    sized = local_slots(["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m"], None)
    assert len(sized) == 13 and len(set(sized)) == 13          # one per account even on a small machine
    assert local_slots([], None) == ["local"] * max(1, machine_slots())


def test_slot_count_from_the_environment_and_bad_values(monkeypatch):
    monkeypatch.setenv("BOID_SLOT_COUNT", "3")
    assert local_slots(["alice"], None) == ["alice"] * 3
    monkeypatch.setenv("BOID_SLOT_COUNT", "many")
    with pytest.raises(ValueError, match="BOID_SLOT_COUNT"):
        local_slots(["alice"], None)
    with pytest.raises(ValueError, match="at least one slot"):
        local_slots(["alice"], 0)
