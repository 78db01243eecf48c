"""Unit expansion: stable ids and the three sources (count, sweep with ranges, inputs)."""

from __future__ import annotations

from boidcluster.model.resources import JobSpec
from boidcluster.reconcilers.jobs.units import expand, input_groups, storage_path


def spec(**work_units) -> JobSpec:
    return JobSpec.model_validate({"protocol": "p", "image": "x", "command": "true", "workUnits": work_units})


def test_count_indexes_and_ids():
    units = expand(spec(count=3))
    assert [(u.id, u.index, u.params) for u in units] == [("u000000", 0, {}), ("u000001", 1, {}), ("u000002", 2, {})]


def test_sweep_is_the_cartesian_product_with_ranges_and_ids_are_stable():
    s = spec(sweep={"b": {"range": {"start": 0, "stop": 1, "step": 0.5}}, "a": [1, 2]})  # by name: a outermost
    units = expand(s)
    assert [u.params for u in units] == [{"a": 1, "b": 0}, {"a": 1, "b": 0.5}, {"a": 2, "b": 0}, {"a": 2, "b": 0.5}]
    assert [u.id for u in units] == [u.id for u in expand(s)]
    assert len({u.id for u in units}) == 4 and all(u.id.startswith(f"u{u.index:06d}-") for u in units)
    assert units[1].params_json == '{"a":1,"b":0.5}'


def test_inputs_sorted_matched_and_grouped():
    files = ["d/c.csv", "d/a.csv", "d/x.txt", "d/b.csv"]
    assert input_groups(files, "*.csv", 2) == [("d/a.csv", "d/b.csv"), ("d/c.csv",)]
    seen = []
    s = spec(inputs={"path": "in", "pattern": "*.csv", "perUnit": 2})
    units = expand(s, datadir="protocols/p", list_files=lambda d: seen.append(d) or files)
    assert seen == ["protocols/p/in"]
    assert [u.inputs for u in units] == [("d/a.csv", "d/b.csv"), ("d/c.csv",)]
    # the same listing in another order gives the same ids
    again = expand(s, datadir="protocols/p", list_files=lambda d: list(reversed(files)))
    assert [u.id for u in again] == [u.id for u in units]


def test_storage_paths():
    assert storage_path("protocols/p", "in") == "protocols/p/in"
    assert storage_path("protocols/p", "/shared/in") == "shared/in"
