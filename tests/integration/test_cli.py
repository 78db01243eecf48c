"""boidctl against a real ZooKeeper: what a user types, what they see, what gets stored."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from boidcluster.adapters.store import Store
from boidcluster.cli.main import cli
from boidcluster.model.loader import load_documents, load_paths
from boidcluster.model.resources import Contributor, Job, Protocol

EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples"


@pytest.fixture
def run(zk_hosts, tmp_path, monkeypatch):
    monkeypatch.setenv("BOID_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("BOID_ZK", raising=False)

    def run(*args: str, input: str | None = None, code: int | None = 0):
        result = CliRunner().invoke(cli, ["--zk", zk_hosts, *args], input=input, catch_exceptions=False)
        if code is not None:
            assert result.exit_code == code, result.output
        return result

    return run


@pytest.fixture
def store(zk_hosts):
    s = Store(zk_hosts)
    yield s
    s.close()


def test_apply_examples_creates_then_is_idempotent(run, store):
    out = run("apply", "-f", str(EXAMPLES)).output
    assert "protocol/monte-carlo created" in out
    assert "job/" in out and "contributor/" in out
    again = run("apply", "-f", str(EXAMPLES)).output
    assert "created" not in again and "configured" not in again
    assert again.count("unchanged") == len(load_paths([str(EXAMPLES)]))
    assert [p.name for p in store.list(Protocol)] == ["monte-carlo"]


def test_every_example_round_trips_through_the_store(run):
    run("apply", "-f", str(EXAMPLES))
    for obj in load_paths([str(EXAMPLES)]):
        shown = run("get", obj.kind, obj.name, "-o", "yaml").output
        back = load_documents(shown, "<get>")[0]
        assert back.spec == obj.spec
        assert back.metadata.labels == obj.metadata.labels


def test_changed_spec_is_configured_and_bumps_generation(run, store, tmp_path):
    run("apply", "-f", str(EXAMPLES / "protocol.yaml"))
    doc = yaml.safe_load((EXAMPLES / "protocol.yaml").read_text())
    doc["spec"]["title"] = "A new title"
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(doc))
    assert "protocol/monte-carlo configured" in run("apply", "-f", str(f)).output
    p = store.get(Protocol, "monte-carlo")
    assert p.spec.title == "A new title" and p.metadata.generation == 2


def test_bad_input_stores_nothing_and_names_file_line_field(run, store, tmp_path):
    good = (EXAMPLES / "protocol.yaml").read_text()
    bad = tmp_path / "mixed.yaml"
    bad.write_text(good + "\n---\napiVersion: cluster.boid.com/v1alpha1\nkind: Contributor\n"
                   "metadata: {name: carol}\nspec:\n  account: Carol!\n  role: worker\n")
    result = run("apply", "-f", str(bad), code=1)
    assert f"{bad}:" in result.output and "spec.account" in result.output
    assert "nothing was applied" in result.output
    assert store.list(Protocol) == [] and store.list(Contributor) == []


def test_dry_run_stores_nothing(run, store):
    out = run("apply", "-f", str(EXAMPLES), "--dry-run").output
    assert "protocol/monte-carlo created (dry run)" in out
    assert store.list(Protocol) == []


def test_get_output_formats(run):
    run("apply", "-f", str(EXAMPLES))
    table = run("get", "protocols").output.splitlines()
    assert table[0].split()[:2] == ["NAME", "RESEARCHER"] and table[1].startswith("monte-carlo")
    assert run("get", "proto", "-o", "name").output.strip() == "protocol/monte-carlo"
    single = json.loads(run("get", "protocol", "monte-carlo", "-o", "json").output)
    assert single["kind"] == "Protocol" and single["metadata"]["uid"]
    listed = json.loads(run("get", "contributors", "-o", "json").output)
    assert listed["kind"] == "List" and [i["metadata"]["name"] for i in listed["items"]] == ["alice", "bob", "carol", "dispatcher1"]
    wide = run("get", "jobs", "-o", "wide").output
    assert wide.splitlines()[0].startswith("NAME")


def test_get_unknown_kind_and_missing_name(run):
    r = run("get", "protocl", code=1)
    assert "unknown kind 'protocl'" in r.output and "Protocol" in r.output
    r = run("get", "jobs", "nope", code=1)
    assert 'jobs "nope" not found' in r.output


def test_describe_shows_spec_and_conditions(run):
    run("apply", "-f", str(EXAMPLES / "protocol.yaml"))
    out = run("describe", "proto", "monte-carlo").output
    assert "Name:               monte-carlo" in out and "Spec:" in out and "Conditions:" in out


def test_diff_exit_codes(run, tmp_path):
    run("apply", "-f", str(EXAMPLES / "protocol.yaml"))
    assert run("diff", "-f", str(EXAMPLES / "protocol.yaml")).output == ""
    doc = yaml.safe_load((EXAMPLES / "protocol.yaml").read_text())
    doc["spec"]["title"] = "Changed"
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(doc))
    out = run("diff", "-f", str(f), code=1).output
    assert "+  title: Changed" in out and "live/protocol/monte-carlo" in out


def test_delete_with_and_without_finalizers(run, store):
    run("apply", "-f", str(EXAMPLES))
    assert "contributor/alice deleted" in run("delete", "contributor", "alice").output
    store.add_finalizer(Protocol, "monte-carlo", "cluster.boid.com/cleanup")
    out = run("delete", "protocol", "monte-carlo").output
    assert "marked for deletion" in out and store.get(Protocol, "monte-carlo").metadata.deletion_timestamp
    refused = run("delete", "protocol", "monte-carlo", "--force", code=1)
    assert "--yes" in refused.output  # no terminal to confirm on: refuse
    assert "deleted" in run("delete", "protocol", "monte-carlo", "--force", "--yes").output
    assert store.list(Protocol) == []
    assert 'jobs "ghost" not found' in run("delete", "job", "ghost", code=1).output


def test_kind_slash_name_as_get_o_name_prints_it(run, store):
    """`get -o name` prints job/NAME; get, describe and delete take it back, as kubectl does."""
    run("apply", "-f", str(EXAMPLES))
    names = run("get", "jobs", "-o", "name").output.split()
    assert names and all(n.startswith("job/") for n in names)
    shown = json.loads(run("get", names[0], "-o", "json").output)
    assert shown["kind"] == "Job" and f"job/{shown['metadata']['name']}" == names[0]
    both = run("get", names[0], "protocol/monte-carlo", "-o", "name").output.split()
    assert both == [names[0], "protocol/monte-carlo"]
    assert "Name:" in run("describe", names[0]).output
    assert "every argument must be KIND/NAME" in run("get", names[0], "pi", code=1).output  # no mixing
    assert "every argument must be KIND/NAME" in run("delete", names[0], "pi", code=1).output
    assert 'jobs "ghost" not found' in run("delete", "job/ghost", code=1).output
    out = run("delete", *names).output
    assert all(f"{n} " in out for n in names) and store.list(Job) == []
    assert "unknown kind 'jbo'" in run("delete", "jbo/x", code=1).output


def many_jobs(n: int) -> list[dict]:
    job = yaml.safe_load((EXAMPLES / "job.yaml").read_text())
    out = []
    for i in range(n):
        d = json.loads(json.dumps(job))
        d["metadata"]["name"] = f"job-{i:04d}"
        out.append(d)
    return out


def test_an_apply_larger_than_one_zookeeper_request_lands_in_several_transactions(run, store, tmp_path):
    """2,000 Jobs (~2 MB of YAML) would be one request over ZooKeeper's 1 MiB jute.maxbuffer: the
    store splits it (the same mechanism as a GitSource sync), each transaction all-or-nothing."""
    f = tmp_path / "jobs.yaml"
    f.write_text(yaml.dump_all(many_jobs(2000), Dumper=yaml.CSafeDumper))
    start = time.monotonic()
    r = run("apply", "-f", str(f))
    assert time.monotonic() - start < 60
    assert r.output.count(" created") == 2000
    assert "applied in" in r.output and "transactions, each all-or-nothing" in r.output
    assert len(store.list(Job)) == 2000
    assert run("apply", "-f", str(f)).output.count(" unchanged") == 2000  # idempotent


def test_one_bad_document_in_a_large_apply_applies_nothing(run, store, tmp_path):
    docs = many_jobs(2000)
    docs[-1]["spec"]["parallelism"] = "many"
    f = tmp_path / "jobs.yaml"
    f.write_text(yaml.dump_all(docs, Dumper=yaml.CSafeDumper))
    r = run("apply", "-f", str(f), code=1)
    assert "spec.parallelism" in r.output and "nothing was applied" in r.output
    assert store.list(Job) == []


def test_prune_deletes_only_labelled_objects_the_input_dropped(run, store, tmp_path):
    contributors = list(yaml.safe_load_all((EXAMPLES / "contributors.yaml").read_text()))[:2]
    for c in contributors:
        c["metadata"].setdefault("labels", {})["team"] = "physics"
    both = tmp_path / "both.yaml"
    both.write_text(yaml.safe_dump_all(contributors))
    run("apply", "-f", str(both))
    run("apply", "-f", str(EXAMPLES / "protocol.yaml"))  # unlabelled: never pruned
    one = tmp_path / "one.yaml"
    one.write_text(yaml.safe_dump_all(contributors[:1]))
    gone = contributors[1]["metadata"]["name"]
    plan = run("apply", "-f", str(one), "--prune", "-l", "team=physics", "--dry-run").output
    assert f"contributor/{gone} pruned (dry run)" in plan
    assert len(store.list(Contributor)) == 2
    out = run("apply", "-f", str(one), "--prune", "-l", "team=physics").output
    assert f"contributor/{gone} pruned" in out and "protocol" not in out.split("pruned")[0].split("\n")[-1]
    assert [c.name for c in store.list(Contributor)] == [contributors[0]["metadata"]["name"]]
    assert [p.name for p in store.list(Protocol)] == ["monte-carlo"]
    assert "--prune needs -l" in run("apply", "-f", str(one), "--prune", code=1).output


def test_watch_prints_a_line_per_change(run, store):
    run("apply", "-f", str(EXAMPLES / "protocol.yaml"))

    def later():
        time.sleep(0.5)
        p = store.get(Protocol, "monte-carlo")
        p.metadata.labels["touched"] = "yes"
        store.update(p)

    t = threading.Thread(target=later)
    t.start()
    out = run("watch", "protocols", "--timeout", "2").output
    t.join()
    lines = [line for line in out.splitlines() if line.startswith("monte-carlo")]
    assert out.startswith("NAME") and len(lines) >= 2


def test_zookeeper_unreachable_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("BOID_HOME", str(tmp_path))
    r = CliRunner().invoke(cli, ["get", "jobs", "--zk", "127.0.0.1:1", "--request-timeout", "1"])
    assert r.exit_code == 1
    assert "cannot reach ZooKeeper at 127.0.0.1:1" in r.output and "Traceback" not in r.output


def test_explain_and_crds_check(run, tmp_path):
    assert "workUnits" in run("explain", "job.spec").output
    assert "did you mean" in run("explain", "job.spec.workunit", code=1).output
    out = tmp_path / "crds"
    run("crds", "--out", str(out))
    assert "up to date" in run("crds", "--out", str(out), "--check").output
    (out / "job.yaml").write_text("stale")
    assert "stale for Job" in run("crds", "--out", str(out), "--check", code=1).output
