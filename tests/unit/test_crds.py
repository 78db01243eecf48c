"""crds/ is generated from the models and checked in: it must match what the models say now,
describe every field, accept the examples, and `explain` must read it back like kubectl does."""

from pathlib import Path

import jsonschema
import pytest
import yaml

from boidcluster.model.crd import UnknownField, explain, openapi_schema, render_crd, write_crds
from boidcluster.model.kinds import KINDS, UnknownKind
from boidcluster.model.loader import load_paths

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kind", list(KINDS))
def test_checked_in_crd_is_current(kind):
    path = ROOT / "crds" / f"{kind.lower()}.yaml"
    assert path.exists(), f"{path} missing: run `python -m boidcluster.model.crd crds`"
    assert path.read_text() == render_crd(KINDS[kind]), (
        f"{path} is stale: a model changed; run `python -m boidcluster.model.crd crds` and commit"
    )


def test_write_crds(tmp_path):
    written = write_crds(tmp_path / "out")
    assert sorted(p.name for p in written) == ["contributor.yaml", "gitsource.yaml", "job.yaml", "protocol.yaml"]
    doc = yaml.safe_load(written[0].read_text())
    assert doc["kind"] == "CustomResourceDefinition"
    assert doc["metadata"]["name"] == "protocols.cluster.boid.com"
    assert doc["spec"]["names"]["shortNames"] == ["proto"]


def _walk(schema, path=""):
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from _walk(schema[key], path + f"[{key}]")
    for alt in schema.get("anyOf", []) + schema.get("oneOf", []):
        yield from _walk(alt, path + "|")


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_field_is_described_and_camel_case(kind):
    schema = openapi_schema(KINDS[kind])
    assert "$ref" not in str(schema) and "$defs" not in str(schema)
    for path, node in _walk(schema):
        for name, sub in node.get("properties", {}).items():
            assert sub.get("description"), f"{kind}{path}.{name} has no description"
            assert "_" not in name, f"{kind}{path}.{name} is not camelCase"


def test_duration_fields_are_int_or_string():
    spec = openapi_schema(KINDS["Job"])["properties"]["spec"]["properties"]
    assert spec["unitTimeout"]["x-kubernetes-int-or-string"] is True
    assert spec["unitTimeout"]["nullable"] is True


@pytest.mark.parametrize("kind", list(KINDS))
def test_examples_validate_against_their_crd(kind):
    schema = openapi_schema(KINDS[kind])
    for obj in load_paths([str(ROOT / "manifests" / "examples")]):
        if obj.KIND == kind:
            jsonschema.validate(obj.to_dict(), schema)


def test_explain_kind():
    text = explain("job")
    assert text.startswith("KIND:     Job\nVERSION:  cluster.boid.com/v1alpha1\n")
    assert "DESCRIPTION:" in text and "FIELDS:" in text
    assert "  spec\t<Object>  -required-" in text


def test_explain_field():
    text = explain("jobs", "spec.workUnits")
    assert "FIELD:    workUnits <Object>  -required-" in text
    assert "TYPE:     Object" in text
    assert "exactly one of count, sweep or inputs" in text
    assert "  count\t<integer>" in text
    assert explain("job.spec.workUnits") == text


def test_explain_leaf_shows_type_and_default():
    text = explain("proto", "spec.payout.interval")
    assert "FIELD:    interval <IntOrString>" in text
    assert "default: 24h" in text
    assert "FIELDS:" not in text
    assert "<[]string>" in explain("contrib", "spec")


def test_explain_looks_through_lists():
    assert "FIELDS:" in explain("job", "status.contributors")
    assert "account\t<string>" in explain("job", "status.contributors")


def test_explain_unknown_names():
    with pytest.raises(UnknownField, match="did you mean 'workUnits'"):
        explain("job", "spec.workUnit")
    with pytest.raises(UnknownKind):
        explain("jbo")
