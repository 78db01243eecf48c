"""Every file in malformed/ must fail with the field path, line and message its header names.

Header: `# expect: <field path>` ('' for YAML-level errors) and `# message: <fragment>`; the
expected line is the one marked with a trailing `# <-` comment.
"""

from pathlib import Path

import pytest

from boidcluster.model.loader import SpecError, SpecErrors, load_documents, load_paths

CORPUS = Path(__file__).parent / "malformed"
CASES = sorted(CORPUS.glob("*.yaml"))


def _expectations(path: Path) -> tuple[str, str, int]:
    text = path.read_text()
    header = dict(
        line[2:].split(":", 1) for line in text.splitlines() if line.startswith(("# expect:", "# message:"))
    )
    marked = [i for i, line in enumerate(text.splitlines(), 1) if line.rstrip().endswith("# <-")]
    assert len(marked) == 1, f"{path.name}: mark exactly one line with '# <-'"
    return header["expect"].strip(), header["message"].strip(), marked[0]


def test_corpus_is_big_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_malformed_spec_names_field_and_line(path: Path):
    field, fragment, line = _expectations(path)
    with pytest.raises(SpecErrors) as info:
        load_paths([str(path)])
    errors: list[SpecError] = info.value.errors
    matching = [e for e in errors if e.path == field]
    assert matching, f"no error at {field!r}; got:\n{info.value}"
    err = next((e for e in matching if fragment in str(e)), None)
    assert err is not None, f"no error at {field!r} mentions {fragment!r}; got:\n{info.value}"
    assert err.line == line, f"expected line {line}, got:\n{err}"
    assert err.source == str(path)
    assert str(err).startswith(f"{path}:{line}:")


def test_error_reads_like_a_compiler_message():
    path = CORPUS / "job-count-zero.yaml"
    text = path.read_text()
    with pytest.raises(SpecErrors) as info:
        load_documents("---\n" + _other_doc() + "---\n" + text, "examples/job.yaml")
    (err,) = info.value.errors
    line = 2 + _other_doc().count("\n") + _expectations(path)[2]  # after two '---' and a doc
    assert str(err) == (
        f'examples/job.yaml:{line}:5: document 2 (Job "sweep"): spec.workUnits.count: '
        "must be >= 1 (got 0)"
    )


def _other_doc() -> str:
    return (
        "apiVersion: cluster.boid.com/v1alpha1\nkind: Contributor\nmetadata: {name: carol}\n"
        "spec: {account: carol, researchers: [researcher1]}\n"
    )


def test_all_documents_and_files_are_checked_before_failing(tmp_path: Path):
    (tmp_path / "a.yaml").write_text((CORPUS / "job-count-zero.yaml").read_text())
    (tmp_path / "b.yml").write_text((CORPUS / "proto-bad-owner.yaml").read_text())
    (tmp_path / "c.txt").write_text("not a spec")
    with pytest.raises(SpecErrors) as info:
        load_paths([str(tmp_path)])
    assert [Path(e.source).name for e in info.value.errors] == ["a.yaml", "b.yml"]
    assert str(info.value).endswith("2 errors found; nothing was applied")


def test_missing_file_is_an_error_not_a_traceback(tmp_path: Path):
    with pytest.raises(SpecErrors) as info:
        load_paths([str(tmp_path / "nope.yaml")])
    assert "no such file or directory" in str(info.value)


def test_never_a_traceback_on_garbage():
    for text in ["{", "]", "- - -", "a: b: c", "\x00", "!!python/object:os.system x", "? [a]: b"]:
        try:
            load_documents(text, "garbage.yaml")
        except SpecErrors as exc:
            assert exc.errors and all(e.source == "garbage.yaml" for e in exc.errors)


def test_duplicate_across_files(tmp_path: Path):
    doc = _other_doc()
    (tmp_path / "one.yaml").write_text(doc)
    (tmp_path / "two.yaml").write_text("# comment\n" + doc)
    with pytest.raises(SpecErrors) as info:
        load_paths([str(tmp_path / "one.yaml"), str(tmp_path / "two.yaml")])
    (err,) = info.value.errors
    assert err.source.endswith("two.yaml") and err.line == 4 and err.path == "metadata.name"
    assert "one.yaml:3" in err.message
