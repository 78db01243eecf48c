"""load_paths input handling: files, directories, stdin, JSON, empty documents, ordering."""

import io
import json
from pathlib import Path

import pytest

from boidcluster.model.loader import SpecErrors, load_documents, load_paths

DOC = """apiVersion: cluster.boid.com/v1alpha1
kind: Contributor
metadata: {name: %s}
spec: {account: %s, researchers: [researcher1]}
"""


def test_directory_is_recursive_sorted_and_skips_hidden(tmp_path: Path):
    (tmp_path / "b").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "b" / "z.yml").write_text(DOC % ("zed", "zed"))
    (tmp_path / "a.yaml").write_text(DOC % ("amy", "amy"))
    (tmp_path / ".git" / "x.yaml").write_text("not: [a spec")
    (tmp_path / "README.md").write_text("# not a spec")
    (tmp_path / "c.json").write_text(json.dumps({
        "apiVersion": "cluster.boid.com/v1alpha1", "kind": "Contributor",
        "metadata": {"name": "cid"}, "spec": {"account": "cid", "researchers": ["researcher1"]}}))
    assert [o.name for o in load_paths([str(tmp_path)])] == ["amy", "zed", "cid"]


def test_stdin_dash(tmp_path: Path):
    (tmp_path / "f.yaml").write_text(DOC % ("eve", "eve"))
    objs = load_paths([str(tmp_path / "f.yaml"), "-"], stdin=io.StringIO(DOC % ("dan", "dan")))
    assert [o.name for o in objs] == ["eve", "dan"]
    assert [o.name for o in load_paths(["-"], stdin=DOC % ("ann", "ann"))] == ["ann"]


def test_stdin_errors_name_stdin():
    with pytest.raises(SpecErrors) as info:
        load_paths(["-"], stdin="kind: Nope\n")
    assert str(info.value.errors[0]).startswith("<stdin>:1:1: document 1: kind: unknown kind")


def test_empty_documents_and_comments_are_skipped():
    text = "# only a comment\n---\n" + DOC % ("amy", "amy") + "---\n---\n"
    assert [o.name for o in load_documents(text)] == ["amy"]
    assert load_documents("") == []


def test_document_index_counts_every_document():
    text = DOC % ("amy", "amy") + "---\n" + (DOC % ("bob", "Bob"))
    with pytest.raises(SpecErrors) as info:
        load_documents(text, "c.yaml")
    (err,) = info.value.errors
    assert err.document == 2 and err.line == 9 and err.path == "spec.account"
    assert 'document 2 (Contributor "bob")' in str(err)


def test_yaml_error_after_good_documents_still_reported():
    text = DOC % ("amy", "amy") + "---\nkind: [\n"
    with pytest.raises(SpecErrors) as info:
        load_documents(text, "x.yaml")
    (err,) = info.value.errors
    assert err.document == 2 and err.line == 7 and "invalid YAML" in err.message
