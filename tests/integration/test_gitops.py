"""GitOps on a real ZooKeeper and a real git repository made in tmp_path.

The reconciler is called the way the controller calls it (`fn(obj, world)`), with its Result
recorded the way the controller records it, so each test controls exactly when a sync happens;
one test runs the whole Operator to check the wiring and the requeue at `interval`.
"""

from __future__ import annotations

import subprocess
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from boidcluster.adapters.git import GitRepos, PathNotFound, RefNotFound, RepoUnreachable
from boidcluster.adapters.store import Store
from boidcluster.cli.context import Ctx
from boidcluster.cli.sync import sync_command
from boidcluster.engine.controller import status_class
from boidcluster.engine.status import merge_conditions
from boidcluster.engine.world import Settings, World
from boidcluster.model.meta import ObjectMeta
from boidcluster.model.resources import GitSource, GitSourceSpec, Protocol
from boidcluster.reconcilers.gitops import HASH_ANNOTATION, SOURCE_LABEL
from boidcluster.reconcilers.gitsource import reconcile_gitsource


def protocol_yaml(name: str, title: str = "A study", labels: dict[str, str] | None = None) -> str:
    label_text = "".join(f"\n    {k}: {v}" for k, v in (labels or {}).items())
    return textwrap.dedent(f"""\
        apiVersion: cluster.boid.com/v1alpha1
        kind: Protocol
        metadata:
          name: {name}
          labels:
            team: physics{label_text}
        spec:
          title: {title}
          owner: boidteam
          researcher: researcher1
          datadir: protocols/{name}
          fund:
            account: boidfund
            quantity: 1000.0000 BOID
          payRates:
            worker: 1.0000 BOID
            dispatcher: 0.5000 BOID
        """)


class Repo:
    """A git repository on disk that tests commit specs to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True)
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                              cwd=self.path, check=True, capture_output=True, text=True).stdout.strip()

    def write(self, rel: str, text: str) -> None:
        f = self.path / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)

    def remove(self, rel: str) -> None:
        self.git("rm", "-q", rel)

    def commit(self, message: str = "specs") -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")


@pytest.fixture(autouse=True)
def boid_home(tmp_path, monkeypatch):
    monkeypatch.setenv("BOID_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("BOID_GIT_CACHE", raising=False)


@pytest.fixture
def repo(tmp_path) -> Repo:
    r = Repo(tmp_path / "specs-repo")
    for n in ("alpha", "beta"):
        r.write(f"protocols/{n}.yaml", protocol_yaml(n))
    r.write("README.md", "not a spec\n")
    r.commit("two protocols")
    return r


@pytest.fixture
def world(zk_hosts, tmp_path):
    s = Store(zk_hosts, timeout=5.0)
    yield World(store=s, settings=Settings(extra={"git": GitRepos(tmp_path / "git-cache", timeout=30)}))
    s.close()


def gitsource(store: Store, repo: str, name: str = "specs", **spec) -> GitSource:
    spec.setdefault("path", "protocols")
    gs = GitSource(metadata=ObjectMeta(name=name), spec=GitSourceSpec(repo=repo, **spec))
    return store.create(gs)


def reconcile(world: World, name: str = "specs"):
    """One reconcile, its Result recorded in status as the controller records it."""
    gs = world.store.get(GitSource, name)
    result = reconcile_gitsource(gs, world)
    old = gs.status or status_class(GitSource)()
    new = old.model_copy(update={**result.status,
                                 "conditions": merge_conditions(old.conditions, result.conditions)})
    gs.status = type(new).model_validate(new.model_dump())
    world.store.update_status(gs)
    return result, world.store.get(GitSource, name)


def cond(gs: GitSource, type_: str):
    return gs.status.condition(type_)


def names(store: Store) -> list[str]:
    return [p.name for p in store.list(Protocol)]


# -- the reconciler -----------------------------------------------------------------------------
def test_sync_applies_records_commit_and_labels_objects(world, repo):
    gitsource(world.store, str(repo.path), interval="30s")
    result, gs = reconcile(world)
    assert names(world.store) == ["alpha", "beta"]
    assert gs.status.synced_commit == repo.git("rev-parse", "HEAD")
    assert cond(gs, "Synced").status == "True" and cond(gs, "Drift").status == "False"
    assert result.requeue_after == 30
    alpha = world.store.get(Protocol, "alpha")
    assert alpha.metadata.labels == {"team": "physics", SOURCE_LABEL: "specs"}
    assert HASH_ANNOTATION in alpha.metadata.annotations
    # nothing changed: nothing written
    version = alpha.metadata.resource_version
    reconcile(world)
    assert world.store.get(Protocol, "alpha").metadata.resource_version == version


def test_new_commit_changing_a_spec_is_applied(world, repo):
    gitsource(world.store, str(repo.path))
    reconcile(world)
    repo.write("protocols/alpha.yaml", protocol_yaml("alpha", title="A better study"))
    repo.write("protocols/gamma.yaml", protocol_yaml("gamma"))
    head = repo.commit("change alpha, add gamma")
    _, gs = reconcile(world)
    assert world.store.get(Protocol, "alpha").spec.title == "A better study"
    assert names(world.store) == ["alpha", "beta", "gamma"]
    assert gs.status.synced_commit == head and cond(gs, "Synced").status == "True"


def test_drift_is_reported_without_self_heal_and_healed_with_it(world, repo):
    gitsource(world.store, str(repo.path), selfHeal=False)
    reconcile(world)
    live = world.store.get(Protocol, "alpha")
    live.spec.title = "edited by hand"
    world.store.update(live)
    world.store.delete(Protocol, "beta")

    _, gs = reconcile(world)
    assert world.store.get(Protocol, "alpha").spec.title == "edited by hand"  # not touched
    assert names(world.store) == ["alpha"]
    assert cond(gs, "Drift").status == "True" and cond(gs, "Synced").reason == "DriftDetected"
    drift = {(d.name, d.reason.split(":")[0]) for d in gs.status.drift}
    assert drift == {("alpha", "Modified"), ("beta", "Missing")}
    assert "spec.title" in next(d.reason for d in gs.status.drift if d.name == "alpha")

    # a commit that does not touch alpha does not heal it either
    repo.write("protocols/gamma.yaml", protocol_yaml("gamma"))
    repo.commit("add gamma")
    reconcile(world)
    assert world.store.get(Protocol, "alpha").spec.title == "edited by hand"

    gs = world.store.get(GitSource, "specs")
    gs.spec.self_heal = True
    world.store.update(gs)
    _, gs = reconcile(world)
    assert world.store.get(Protocol, "alpha").spec.title == "A study"
    assert names(world.store) == ["alpha", "beta", "gamma"]
    assert cond(gs, "Drift").status == "False" and cond(gs, "Drift").reason == "Healed"
    assert cond(gs, "Synced").status == "True" and gs.status.drift == []


def test_prune_deletes_only_objects_of_this_gitsource(world, repo, tmp_path):
    other = Repo(tmp_path / "other-repo")
    other.write("protocols/foreign.yaml", protocol_yaml("foreign"))
    other.commit()
    gitsource(world.store, str(other.path), name="other")
    reconcile(world, "other")
    from boidcluster.model.loader import load_documents
    world.store.create(load_documents(protocol_yaml("handmade"))[0])  # no owner label

    gitsource(world.store, str(repo.path), prune=True)
    reconcile(world)
    assert names(world.store) == ["alpha", "beta", "foreign", "handmade"]
    repo.remove("protocols/beta.yaml")
    repo.commit("drop beta")
    _, gs = reconcile(world)
    assert names(world.store) == ["alpha", "foreign", "handmade"]
    assert cond(gs, "Synced").status == "True" and cond(gs, "PruneBlocked").status == "False"
    assert world.store.get(Protocol, "foreign").metadata.labels[SOURCE_LABEL] == "other"


def test_prune_off_keeps_and_reports_objects_no_longer_in_git(world, repo):
    gitsource(world.store, str(repo.path), prune=False)
    reconcile(world)
    repo.remove("protocols/beta.yaml")
    repo.commit()
    _, gs = reconcile(world)
    assert names(world.store) == ["alpha", "beta"]
    assert cond(gs, "Synced").reason == "NotPruned"
    assert [(d.name, d.reason.split(":")[0]) for d in gs.status.drift] == [("beta", "Extra")]


def test_more_than_prune_limit_is_blocked_until_confirmed(world, repo, zk_hosts):
    for n in ("c1", "c2", "c3"):
        repo.write(f"protocols/{n}.yaml", protocol_yaml(n))
    repo.commit("five")
    gitsource(world.store, str(repo.path), prune=True, pruneLimit=2)
    reconcile(world)
    assert len(names(world.store)) == 5
    for n in ("beta", "c1", "c2"):
        repo.remove(f"protocols/{n}.yaml")
    repo.write("protocols/delta.yaml", protocol_yaml("delta"))
    head = repo.commit("drop three, add delta")
    _, gs = reconcile(world)
    assert names(world.store) == ["alpha", "beta", "c1", "c2", "c3", "delta"]  # applied, nothing pruned
    blocked = cond(gs, "PruneBlocked")
    assert blocked.status == "True" and "3 object(s)" in blocked.message
    assert "pruneLimit 2" in blocked.message and "boidctl sync specs --confirm-prune" in blocked.message
    assert gs.status.synced_commit == head and cond(gs, "Synced").reason == "PruneBlocked"

    ctx = Ctx(zk_hosts, 5.0)
    try:
        run = CliRunner().invoke(sync_command, ["specs"], obj=ctx)
        assert run.exit_code == 1 and "--confirm-prune" in run.output
        assert len(names(world.store)) == 6
        run = CliRunner().invoke(sync_command, ["specs", "--confirm-prune",
                                                "--cache-dir", str(world.settings.extra["git"].cache_dir)],
                                 obj=ctx)
        assert run.exit_code == 0, run.output
    finally:
        ctx.close()
    for n in ("beta", "c1", "c2"):
        assert f"protocol/{n} pruned" in run.output
    assert names(world.store) == ["alpha", "c3", "delta"]
    gs = world.store.get(GitSource, "specs")
    assert cond(gs, "PruneBlocked").status == "False" and cond(gs, "Synced").status == "True"


@pytest.mark.parametrize("change", ["bad-path", "bad-ref", "bad-dir", "emptied-no-path"])
def test_unreadable_source_is_an_error_and_deletes_nothing(world, repo, tmp_path, change):
    gitsource(world.store, str(repo.path), prune=True, pruneLimit=0)
    reconcile(world)
    gs = world.store.get(GitSource, "specs")
    if change == "bad-path":
        gs.spec.repo = str(tmp_path / "no-such-repo")
    elif change == "bad-ref":
        gs.spec.ref = "no-such-branch"
    elif change == "bad-dir":
        gs.spec.path = "no-such-dir"
    else:  # the whole directory removed from git: the path is gone, not an empty desired state
        repo.git("rm", "-q", "-r", "protocols")
        repo.commit("oops")
    world.store.update(gs)
    _, gs = reconcile(world)
    synced = cond(gs, "Synced")
    expected = {"bad-path": "RepoUnreachable", "bad-ref": "RefNotFound", "bad-dir": "PathNotFound",
                "emptied-no-path": "PathNotFound"}[change]
    assert synced.status == "False" and synced.reason == expected, synced
    assert "nothing was applied or pruned" in synced.message
    assert names(world.store) == ["alpha", "beta"]


def test_git_adapter_errors_are_typed(repo, tmp_path):
    g = GitRepos(tmp_path / "cache", timeout=30)
    commit, files = g.fetch(str(repo.path), "main", "protocols")
    assert [f.path for f in files] == ["protocols/alpha.yaml", "protocols/beta.yaml"]
    assert g.fetch(str(repo.path), commit[:10], ".").commit == commit  # a commit id works as ref
    with pytest.raises(RepoUnreachable):
        g.fetch(str(tmp_path), "main")  # a directory that is not a repository
    with pytest.raises(RefNotFound):
        g.fetch(str(repo.path), "nope")
    with pytest.raises(PathNotFound):
        g.fetch(str(repo.path), "main", "../etc")


def test_hooks_never_run(repo, tmp_path):
    marker = tmp_path / "hook-ran"
    for d in (repo.path / ".git" / "hooks",):
        hook = d / "reference-transaction"
        hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
        hook.chmod(0o755)
    g = GitRepos(tmp_path / "cache", timeout=30)
    g.fetch(str(repo.path), "main")
    g.fetch(str(repo.path), "main")
    assert not marker.exists()


def test_invalid_spec_applies_nothing_and_names_file_line_field(world, repo):
    gitsource(world.store, str(repo.path))
    reconcile(world)
    repo.write("protocols/alpha.yaml", protocol_yaml("alpha", title="Changed"))
    repo.write("protocols/broken.yaml", protocol_yaml("broken").replace("researcher: researcher1",
                                                                         "researcher: Not_An_Account"))
    repo.commit("a broken spec")
    _, gs = reconcile(world)
    synced = cond(gs, "Synced")
    assert synced.status == "False" and synced.reason == "InvalidSpec"
    assert "protocols/broken.yaml:10:" in synced.message and "spec.researcher" in synced.message
    assert world.store.get(Protocol, "alpha").spec.title == "A study"  # nothing applied
    assert names(world.store) == ["alpha", "beta"]


def test_object_owned_by_another_source_is_a_conflict(world, repo, tmp_path):
    other = Repo(tmp_path / "other-repo")
    other.write("protocols/alpha.yaml", protocol_yaml("alpha", title="Theirs"))
    other.commit()
    gitsource(world.store, str(other.path), name="other")
    reconcile(world, "other")
    gitsource(world.store, str(repo.path))
    _, gs = reconcile(world)
    assert cond(gs, "Synced").reason == "OwnershipConflict"
    assert "owned by GitSource 'other'" in cond(gs, "Synced").message
    assert names(world.store) == ["alpha"]  # beta not applied either: all or nothing
    assert world.store.get(Protocol, "alpha").spec.title == "Theirs"


def test_operator_runs_the_gitsource_reconciler(zk_hosts, repo, tmp_path):
    from boidcluster.engine.operator import Operator
    from boidcluster.engine.reconciler import Registry
    from boidcluster.reconcilers import gitsource as gsmod

    reg = Registry()
    reg.reconciler(GitSource, resync=3600)(gsmod.reconcile_gitsource)
    store = Store(zk_hosts, timeout=5.0)
    world = World(store=store, settings=Settings(extra={"git": GitRepos(tmp_path / "cache", timeout=30)}))
    op = Operator(store, world=world, registry=reg).start()
    try:
        gitsource(store, str(repo.path), interval="10s")
        deadline = time.monotonic() + 20
        while names(store) != ["alpha", "beta"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert names(store) == ["alpha", "beta"]
        gs = store.get(GitSource, "specs")
        while (gs.status is None or gs.status.synced_commit is None) and time.monotonic() < deadline:
            time.sleep(0.1)
            gs = store.get(GitSource, "specs")
        assert gs.status.synced_commit == repo.git("rev-parse", "HEAD")
    finally:
        op.stop()
        store.close()


def test_a_change_too_large_for_one_transaction_is_split(world, repo, monkeypatch):
    from boidcluster.adapters import store as store_module

    monkeypatch.setattr(store_module, "MAX_TXN_BYTES", 1500)  # about one Protocol per transaction
    for n in ("c1", "c2"):
        repo.write(f"protocols/{n}.yaml", protocol_yaml(n))
    repo.commit()
    gitsource(world.store, str(repo.path))
    _, gs = reconcile(world)
    assert names(world.store) == ["alpha", "beta", "c1", "c2"]
    assert cond(gs, "Synced").status == "True" and "transactions" in cond(gs, "Synced").message


def test_hostile_or_huge_specs_in_git_are_refused_quickly_and_apply_nothing(world, repo, monkeypatch):
    """The operator meets the loader's limits too: an alias bomb committed to git is an InvalidSpec
    (in seconds, not a hung reconciler); spec files over the input limit are not even read."""
    import time

    from boidcluster.adapters import git as git_module

    gitsource(world.store, str(repo.path))
    reconcile(world)
    bomb = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    bomb += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    repo.write("protocols/bomb.yaml", protocol_yaml("bomb") + "  extra:\n" + "".join(f"    {x}\n" for x in bomb))
    repo.commit("an alias bomb")
    start = time.monotonic()
    _, gs = reconcile(world)
    assert time.monotonic() - start < 10
    synced = cond(gs, "Synced")
    assert synced.status == "False" and synced.reason == "InvalidSpec" and "aliases expand" in synced.message
    assert names(world.store) == ["alpha", "beta"]
    monkeypatch.setattr(git_module, "MAX_INPUT_BYTES", 100)  # two small files are over it
    repo.remove("protocols/bomb.yaml")
    repo.commit("no bomb")
    _, gs = reconcile(world)
    synced = cond(gs, "Synced")
    assert synced.status == "False" and synced.reason == "InputTooLarge" and "over the" in synced.message
    assert names(world.store) == ["alpha", "beta"]
