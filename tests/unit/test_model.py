"""The resource models: examples load and round-trip, defaults are what a researcher expects,
kinds resolve by any of their names, and the value types survive parse/format for any input."""

from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from boidcluster.model.kinds import KINDS, UnknownKind, parse_resource, resolve_kind
from boidcluster.model.loader import load_documents, load_paths
from boidcluster.model.meta import API_VERSION, ObjectMeta
from boidcluster.model.resources import Contributor, GitSource, Job, JobSpec, Protocol
from boidcluster.model.types import (
    MAX_ASSET_AMOUNT, Asset, Duration, Symbol, format_duration, parse_duration,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "manifests" / "examples"


def test_examples_load_cleanly():
    objs = load_paths([str(EXAMPLES)])
    assert sorted((o.KIND, o.name) for o in objs) == [
        ("Contributor", "alice"), ("Contributor", "bob"), ("Contributor", "carol"), ("Contributor", "dispatcher1"),
        ("Job", "pi"),
        ("Protocol", "monte-carlo"),
    ]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_round_trip(path: Path):
    objs = load_paths([str(path)])
    text = yaml.safe_dump_all([o.to_dict() for o in objs], sort_keys=False)
    again = load_documents(text, "round-trip")
    assert again == objs
    assert [o.to_dict() for o in again] == [o.to_dict() for o in objs]
    assert [parse_resource(o.to_dict()) for o in objs] == objs  # the store's path


def test_example_job_expands_to_seeds():
    (job,) = load_paths([str(EXAMPLES / "job.yaml")])
    assert isinstance(job, Job)
    assert job.spec.work_units.sweep_points() == [{"seed": s} for s in range(1, 9)]
    assert job.spec.work_units.static_total() == 8
    assert job.spec.unit_timeout == 60 and job.to_dict()["spec"]["unitTimeout"] == "1m"
    assert job.spec.resources.mem == 64
    assert job.spec.replication.quorum == 2


def test_example_protocol_money_is_integer():
    (proto,) = load_paths([str(EXAMPLES / "protocol.yaml")])
    assert isinstance(proto, Protocol)
    assert proto.spec.fund.quantity == Asset(10_000_000, Symbol("BOID", 4))
    assert proto.spec.pay_rates.worker.amount == 3_600_000  # 360.0000 BOID per hour
    assert proto.spec.payout.interval == 60


def _job(**spec) -> Job:
    base = {"protocol": "p", "image": "i", "command": "true", "workUnits": {"count": 3}}
    return Job(metadata=ObjectMeta(name="j"), spec=JobSpec.model_validate({**base, **spec}))


def test_job_defaults_are_those_a_researcher_expects():
    job = _job()
    spec = job.spec
    assert job.api_version == API_VERSION and job.kind == "Job"
    assert spec.parallelism is None  # as many as there are workers, within the quota
    assert spec.retries == 3
    assert spec.replication.replicas == 1 and spec.replication.quorum == 1
    assert spec.output.reduce == "concat" and spec.output.path is None
    assert spec.resources.cpus == 1.0 and spec.resources.mem == 128
    assert spec.unit_timeout is None and spec.deadline is None
    assert spec.constraints == [] and spec.env == {}


def test_quorum_defaults_to_replicas():
    assert _job(replication={"replicas": 3}).spec.replication.quorum == 3
    assert _job(replication={"replicas": 3, "quorum": 2}).spec.replication.quorum == 2


def test_sweep_is_a_cartesian_product_in_stable_order():
    wu = _job(workUnits={"sweep": {"a": [1, 2], "b": {"range": {"start": 0, "stop": 1, "step": 0.5}}}}).spec.work_units
    assert wu.sweep_points() == [{"a": 1, "b": 0}, {"a": 1, "b": 0.5}, {"a": 2, "b": 0}, {"a": 2, "b": 0.5}]
    assert _job(workUnits={"inputs": {"path": "data"}}).spec.work_units.static_total() is None


def test_command_may_be_string_or_list():
    assert _job(command="echo hi").spec.command == "echo hi"
    assert _job(command=["echo", "hi"]).spec.command == ["echo", "hi"]


def test_gitsource_and_contributor_defaults():
    gs = GitSource.model_validate({"metadata": {"name": "g"}, "spec": {"repo": "r"}})
    assert (gs.spec.ref, gs.spec.path, gs.spec.interval, gs.spec.prune, gs.spec.self_heal) == (
        "main", ".", 180, False, False)
    c = Contributor.model_validate({"metadata": {"name": "c"}, "spec": {"account": "c", "researchers": ["r"]}})
    assert c.spec.role == "worker"


def test_status_round_trips_with_assets_and_times():
    (proto,) = load_paths([str(EXAMPLES / "protocol.yaml")])
    data = proto.to_dict()
    data["status"] = {"fundBalance": "999.5000 BOID", "dispatcher": "local",
                      "conditions": [{"type": "Ready", "status": "True", "reason": "AllGood",
                                      "lastTransitionTime": "2025-01-01T00:00:00Z"}]}
    again = parse_resource(data)
    assert again.status.fund_balance == Asset(9_995_000, Symbol("BOID", 4))
    assert again.status.condition("Ready").status == "True"
    assert parse_resource(again.to_dict()) == again


@pytest.mark.parametrize("text", ["Protocol", "protocol", "PROTOCOLS", "proto", "Proto"])
def test_resolve_kind_accepts_every_name(text):
    assert resolve_kind(text) is Protocol


def test_resolve_kind_short_names():
    assert resolve_kind("gs") is GitSource and resolve_kind("contrib") is Contributor
    assert resolve_kind("jobs") is Job and list(KINDS) == ["Protocol", "Job", "Contributor", "GitSource"]


def test_unknown_kind_suggests():
    with pytest.raises(UnknownKind) as info:
        resolve_kind("jbos")
    assert isinstance(info.value, ValueError)
    assert "did you mean 'Job'" in str(info.value)
    with pytest.raises(UnknownKind, match="known kinds: Protocol, Job"):
        resolve_kind("deployment")


# --- value types ------------------------------------------------------------------------------

symbols = st.builds(Symbol, st.from_regex(r"[A-Z]{1,7}", fullmatch=True), st.integers(0, 18))
assets = st.builds(Asset, st.integers(-MAX_ASSET_AMOUNT, MAX_ASSET_AMOUNT), symbols)


@given(assets)
def test_asset_format_parse_round_trip(asset: Asset):
    text = str(asset)
    assert Asset.parse(text) == asset
    assert str(Asset.parse(text)) == text


@given(st.floats(allow_nan=True))
def test_asset_rejects_floats(value):
    with pytest.raises(ValueError, match="never a float"):
        Asset.parse(value)


@given(st.integers(0, 10**9))
def test_duration_format_parse_round_trip(seconds: int):
    text = format_duration(seconds)
    assert parse_duration(text) == seconds
    assert parse_duration(seconds) == seconds


@given(st.integers(0, 99), st.integers(0, 99), st.integers(0, 99), st.integers(0, 99))
def test_duration_parts_add_up(d, h, m, s):
    text = "".join(f"{n}{u}" for n, u in zip((d, h, m, s), "dhms") if n) or "0s"
    assert parse_duration(text) == ((d * 24 + h) * 60 + m) * 60 + s


@pytest.mark.parametrize("bad", ["", "10", "1.5h", "10 minutes", "-5s", "1m1h", 1.5, True, None, "h"])
def test_duration_rejects(bad):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_duration_schema_is_int_or_string():
    from pydantic import TypeAdapter

    schema = TypeAdapter(Duration).json_schema()
    assert schema["x-kubernetes-int-or-string"] is True
    assert {s["type"] for s in schema["anyOf"]} == {"integer", "string"}
