"""Hostile or huge inputs are refused quickly with one clear error, before they cost time or memory:
an alias bomb, recursive aliases, 500-deep nesting, an oversized document, a 50 MB file. The limits
are the loader's, so `apply` and a GitSource sync (load_sources) meet the same ones."""

from __future__ import annotations

import io
import time

import pytest

from boidcluster.model import loader
from boidcluster.model.loader import (MAX_DEPTH, MAX_INPUT_BYTES, SpecErrors, load_documents, load_paths,
                                      load_sources)

HEAD = "apiVersion: cluster.boid.com/v1alpha1\nkind: Job\nmetadata: {name: x}\n"
JOB = HEAD + "spec: {protocol: p, image: 'python:3.11-slim', command: [sh, -c, 'true'], workUnits: {count: 1}}\n"


def refused(text: str, source: str = "in.yaml") -> SpecErrors:
    start = time.monotonic()
    with pytest.raises(SpecErrors) as info:
        load_documents(text, source)
    assert time.monotonic() - start < 5  # seconds, never minutes
    assert len(info.value.errors) == 1 and str(info.value).endswith("nothing was applied")
    return info.value


def billion_laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]")
    return HEAD + "spec:\n  env:\n" + "".join(f"    {x}\n" for x in lines)


def test_an_alias_bomb_is_refused_before_it_expands():
    text = billion_laughs()  # 10^9 strings once expanded
    assert len(text) < 800
    err = refused(text).errors[0]
    assert "aliases expand this document by more than 10,000 nodes" in err.message
    assert err.line is not None and err.line > 3  # points at the alias that crossed the limit


def test_a_few_aliases_are_still_fine():
    text = HEAD + ("spec: {protocol: &p p, image: 'python:3.11-slim', command: [sh, -c, 'true'], "
                   "workUnits: {count: 1}, env: {A: *p, B: *p}}\n")
    [job] = load_documents(text, "ok.yaml")
    assert job.spec.env == {"A": "p", "B": "p"}


def test_a_recursive_alias_is_refused():
    err = refused(HEAD + "spec: &s {protocol: p, nested: *s}\n").errors[0]
    assert "refers to a node that contains it" in err.message


@pytest.mark.parametrize("style", ["flow", "block"])
def test_nesting_500_deep_is_one_clear_error_not_a_traceback(style):
    if style == "flow":
        text = HEAD + "spec: " + "[" * 500 + "]" * 500 + "\n"
    else:
        text = HEAD + "spec:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(500)) + "  " * 501 + "x\n"
    err = refused(text).errors[0]
    assert f"nested more than {MAX_DEPTH} levels deep" in err.message
    assert err.line == 4 if style == "flow" else 4 < err.line <= 4 + MAX_DEPTH  # where the limit was crossed


def test_a_document_over_the_object_limit_is_refused():
    big = "x" * (loader.MAX_DOCUMENT_BYTES + 10)
    err = refused(JOB.replace("image: 'python:3.11-slim'", f"image: '{big}'")).errors[0]
    assert "over the 512 KiB one object may take" in err.message and err.line == 1


def test_a_50_mb_file_is_refused_before_it_is_read(tmp_path):
    f = tmp_path / "huge.yaml"
    with open(f, "wb") as out:
        out.truncate(50 * 1024 * 1024)  # sparse: costs nothing to make, everything to read
    start = time.monotonic()
    with pytest.raises(SpecErrors) as info:
        load_paths([str(f)])
    assert time.monotonic() - start < 2
    err = info.value.errors[0]
    assert err.source == str(f) and "50.0 MiB" in err.message and "over the 8.0 MiB one apply takes" in err.message
    assert "split the input" in err.hint
    # stdin too, read only up to the limit
    with pytest.raises(SpecErrors, match="stdin holds more than the 8.0 MiB"):
        load_paths(["-"], stdin=io.StringIO("#" * (MAX_INPUT_BYTES + 5)))


def test_git_sources_meet_the_same_input_limit():
    files = [(f"specs/{i}.yaml", "#" * (MAX_INPUT_BYTES // 4)) for i in range(5)]
    with pytest.raises(SpecErrors) as info:
        load_sources(files)
    assert [e.source for e in info.value.errors] == ["specs/4.yaml"]
    assert "nothing was loaded" in info.value.errors[0].message


@pytest.mark.parametrize("path", sorted((loader.Path(__file__).parent / "malformed").glob("*.yaml"))
                         + sorted((loader.Path(__file__).parents[2] / "manifests" / "examples").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_the_fast_parser_reads_exactly_as_the_pure_python_one(path):
    """libyaml parses (fast); on any YAML error the pure-Python loader reads the text again, so
    both must agree on everything else: the same resources, the same errors, lines and hints."""
    if loader._FastBoundedLoader is None:
        pytest.skip("PyYAML without libyaml")
    text = path.read_text()
    try:
        fast = loader._load_text_with(loader._FastBoundedLoader, text, "f.yaml")
    except loader._ReadAgain:
        pytest.skip("a YAML error: read by the pure-Python loader anyway")
    assert fast == loader._load_text_with(loader._BoundedLoader, text, "f.yaml")
