"""`boidctl sync` against a real ZooKeeper: directories, git repositories, GitSources, dry runs."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from boidcluster.adapters.store import Store
from boidcluster.cli.context import Ctx
from boidcluster.cli.sync import sync_command
from boidcluster.model.loader import load_documents
from boidcluster.model.meta import ObjectMeta
from boidcluster.model.resources import GitSource, GitSourceSpec, Protocol
from boidcluster.reconcilers.gitops import SOURCE_LABEL

from test_gitops import Repo, protocol_yaml


@pytest.fixture(autouse=True)
def boid_home(tmp_path, monkeypatch):
    monkeypatch.setenv("BOID_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("BOID_GIT_CACHE", raising=False)


@pytest.fixture
def store(zk_hosts):
    s = Store(zk_hosts, timeout=5.0)
    yield s
    s.close()


@pytest.fixture
def sync(zk_hosts):
    contexts: list[Ctx] = []

    def run(*args: str, code: int = 0):
        contexts.append(Ctx(zk_hosts, 5.0))
        result = CliRunner().invoke(sync_command, list(args), obj=contexts[-1], catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result.output

    yield run
    for c in contexts:
        c.close()


@pytest.fixture
def specs_dir(tmp_path):
    d = tmp_path / "specs"
    d.mkdir()
    for n in ("alpha", "beta"):
        (d / f"{n}.yaml").write_text(protocol_yaml(n))
    return d


def names(store: Store) -> list[str]:
    return [p.name for p in store.list(Protocol)]


def test_dry_run_prints_the_plan_and_changes_nothing(sync, store, specs_dir):
    out = sync(str(specs_dir), "--dry-run")
    assert "protocol/alpha created (dry run)" in out and "protocol/beta created (dry run)" in out
    assert "dry run: 2 created" in out
    assert names(store) == []

    sync(str(specs_dir))
    live = store.get(Protocol, "alpha")
    live.spec.title = "edited"
    store.update(live)
    (specs_dir / "beta.yaml").write_text(protocol_yaml("beta", title="New title"))
    (specs_dir / "gamma.yaml").write_text(protocol_yaml("gamma"))
    version = {p.name: p.metadata.resource_version for p in store.list(Protocol)}
    out = sync(str(specs_dir), "--dry-run", "--no-self-heal")
    assert "protocol/alpha drift (spec.title changed outside git; not healed: selfHeal is off)" in out
    assert "protocol/beta configured (dry run) (spec.title)" in out
    assert "protocol/gamma created (dry run)" in out
    assert {p.name: p.metadata.resource_version for p in store.list(Protocol)} == version


def test_directory_sync_heals_by_default_and_prunes_only_its_own(sync, store, specs_dir):
    store.create(load_documents(protocol_yaml("handmade"))[0])
    out = sync(str(specs_dir), "--source", "lab")
    assert "protocol/alpha created" in out
    assert store.get(Protocol, "alpha").metadata.labels[SOURCE_LABEL] == "lab"
    live = store.get(Protocol, "alpha")
    live.spec.title = "edited"
    store.update(live)
    (specs_dir / "beta.yaml").unlink()
    out = sync(str(specs_dir), "--source", "lab")
    assert "protocol/alpha configured (drift healed: spec.title changed outside git)" in out
    assert "protocol/beta not-pruned" in out and names(store) == ["alpha", "beta", "handmade"]
    out = sync(str(specs_dir), "--source", "lab", "--prune")
    assert "protocol/beta pruned" in out and "handmade" not in out
    assert names(store) == ["alpha", "handmade"]
    assert store.get(Protocol, "alpha").spec.title == "A study"


def test_git_repository_target_with_ref_and_path(sync, store, tmp_path):
    repo = Repo(tmp_path / "repo")
    repo.write("deploy/protocols/alpha.yaml", protocol_yaml("alpha"))
    first = repo.commit()
    repo.git("tag", "v1")
    repo.write("deploy/protocols/beta.yaml", protocol_yaml("beta"))
    repo.commit()
    out = sync(str(repo.path), "--ref", "v1", "--path", "deploy/protocols")
    assert f"({first[:12]})" in out and "protocol/alpha created" in out and "beta" not in out
    out = sync(f"file://{repo.path}", "--path", "deploy/protocols", "--source", "repo")
    assert "protocol/beta created" in out and "protocol/alpha unchanged" in out
    out = sync(str(repo.path), "--ref", "nope", code=1)
    assert "no branch, tag or commit 'nope'" in out and "nothing was applied" in out


def test_invalid_spec_names_file_and_line(sync, store, specs_dir):
    (specs_dir / "beta.yaml").write_text(protocol_yaml("beta").replace("worker: 1.0000 BOID", "worker: 1.00 BOID"))
    out = sync(str(specs_dir), code=1)
    assert "beta.yaml:" in out and "payRates.worker" in out and "nothing was applied" in out
    assert names(store) == []


def test_gitsource_target_and_unknown_name(sync, store, tmp_path):
    repo = Repo(tmp_path / "repo")
    repo.write("alpha.yaml", protocol_yaml("alpha"))
    head = repo.commit()
    store.create(GitSource(metadata=ObjectMeta(name="lab"), spec=GitSourceSpec(repo=str(repo.path))))
    out = sync("lab", "--dry-run")
    assert "protocol/alpha created (dry run)" in out and names(store) == []
    assert store.get(GitSource, "lab").status is None  # a dry run records nothing
    sync("lab")
    assert names(store) == ["alpha"]
    gs = store.get(GitSource, "lab")
    assert gs.status.synced_commit == head and gs.status.condition("Synced").status == "True"
    out = sync("no-such-thing", code=1)
    assert "neither a directory nor a GitSource" in out
