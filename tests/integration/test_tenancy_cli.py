"""boidctl with identities: $BOID_HOME/config contexts on a secured real ZooKeeper."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from boidcluster.adapters.auth import Credentials
from boidcluster.cli.main import cli

CONTRIBUTOR = """apiVersion: cluster.boid.com/v1alpha1
kind: Contributor
metadata: {name: %s}
spec: {account: %s, role: worker, researchers: [researcher1]}
"""


@pytest.fixture
def home(secured, tmp_path, monkeypatch):
    """A BOID_HOME whose config has contexts alice@c, bob@c (current: alice@c) and admin@c."""
    h = tmp_path / "home"
    monkeypatch.setenv("BOID_HOME", str(h))
    monkeypatch.delenv("BOID_ZK", raising=False)
    monkeypatch.delenv("BOID_CONTEXT", raising=False)
    boidctl("config", "set-cluster", "c", "--server", secured.hosts)
    for name, creds in {"admin": secured.admin, **secured.users}.items():
        pf = tmp_path / f"{name}.pw"
        pf.write_text(creds.password + "\n")
        pf.chmod(0o600)
        boidctl("config", "set-credentials", name, "--password-file", str(pf))
        boidctl("config", "set-context", f"{name}@c", "--cluster", "c", "--user", name)
    boidctl("config", "use-context", "alice@c")
    return h


def boidctl(*args: str, code: int = 0, input: str | None = None):
    r = CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)
    assert r.exit_code == code, r.output
    return r


def secrets(secured) -> list[str]:
    return [secured.admin.password, *(c.password for c in secured.users.values())]


def test_contexts_select_the_identity(secured, home, tmp_path):
    out = boidctl("config", "get-contexts").output
    current = [line.split() for line in out.splitlines() if line.startswith("*")]
    assert current == [["*", "alice@c", "c", "alice", secured.hosts]] and "bob@c" in out
    assert boidctl("auth", "whoami").output.strip() == "alice"
    assert boidctl("--context", "bob@c", "auth", "whoami").output.strip() == "bob"
    assert boidctl("--context", "admin@c", "auth", "whoami").output.strip() == "admin (admin)"
    boidctl("config", "use-context", "bob@c")
    assert boidctl("config", "current-context").output.strip() == "bob@c"
    r = boidctl("config", "use-context", "nope", code=1)
    assert "no context named 'nope'" in r.output
    # inline password from stdin: stored in the 0600 config, redacted by `config view`
    boidctl("config", "set-credentials", "carol", "--password-stdin", input="s3cret-carol\n")
    assert (home / "config").stat().st_mode & 0o777 == 0o600
    view = boidctl("config", "view").output
    assert "s3cret-carol" not in view and "REDACTED" in view
    for s in secrets(secured):
        assert s not in view


def test_users_cannot_touch_each_others_objects_through_boidctl(secured, home, tmp_path):
    f = tmp_path / "alice.yaml"
    f.write_text(CONTRIBUTOR % ("alice", "alice"))
    assert "contributor/alice created" in boidctl("apply", "-f", str(f)).output
    f.write_text(CONTRIBUTOR.replace("researcher1", "researcher2") % ("alice", "alice"))
    r = boidctl("--context", "bob@c", "apply", "-f", str(f), code=1)
    assert r.output.strip().splitlines() == [
        "error: forbidden: user 'bob' may not change Contributor alice; nothing was applied"]
    r = boidctl("--context", "bob@c", "delete", "contributor", "alice", code=1)
    assert r.output.strip() == "error: forbidden: user 'bob' may not delete Contributor alice"
    assert "researcher1" in boidctl("--context", "bob@c", "get", "contributor", "alice", "-o", "yaml").output
    describe = boidctl("describe", "contributor", "alice").output
    for s in secrets(secured):
        assert s not in describe
    assert "contributor/alice configured" in boidctl("apply", "-f", str(f)).output  # the owner may


def test_bad_credentials_are_one_clear_line(secured, home, tmp_path):
    pf = tmp_path / "wrong.pw"
    pf.write_text("wrong-password\n")
    pf.chmod(0o600)
    boidctl("config", "set-credentials", "alice", "--password-file", str(pf))
    r = CliRunner().invoke(cli, ["get", "contributors"])
    assert r.exit_code == 1
    assert r.output.strip().splitlines() == [
        f"error: authentication as user 'alice' failed at {secured.hosts}: unknown user or wrong password"]
    pf.chmod(0o644)  # a readable password file is refused before it is used
    r = CliRunner().invoke(cli, ["get", "contributors"])
    assert r.exit_code == 1 and "readable by other users (mode 0644)" in r.output and "chmod 600" in r.output
    assert "Traceback" not in r.output


def test_anonymous_writes_are_refused_on_a_secured_cluster(secured, home, tmp_path, monkeypatch):
    monkeypatch.setenv("BOID_HOME", str(tmp_path / "empty"))
    f = tmp_path / "c.yaml"
    f.write_text(CONTRIBUTOR % ("zed", "zed"))
    r = boidctl("--zk", secured.hosts, "apply", "-f", str(f), code=1)
    assert "requires authentication" in r.output
    boidctl("--zk", secured.hosts, "get", "contributors")  # reading is open


def test_credentials_never_in_process_args_environment_or_logs(secured, home, tmp_path):
    env = {**os.environ, "BOID_HOME": str(home)}
    p = subprocess.Popen([sys.executable, "-m", "boidcluster.cli.main", "-vv", "watch", "contributors",
                          "--timeout", "4"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(1.5)
        cmdline = Path(f"/proc/{p.pid}/cmdline").read_bytes().decode(errors="replace")
        environ = Path(f"/proc/{p.pid}/environ").read_bytes().decode(errors="replace")
    finally:
        out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    logs = out.decode() + err.decode()
    assert "DEBUG" in logs  # -vv did log
    for s in secrets(secured):
        assert s not in cmdline and s not in environ and s not in logs


PROTOCOL = Path(__file__).parents[2] / "manifests/examples/protocol.yaml"
JOB = Path(__file__).parents[2] / "manifests/examples/job.yaml"


def test_submitting_under_a_protocol_that_does_not_list_you(secured, home, tmp_path):
    proto = tmp_path / "protocol.yaml"
    proto.write_text(PROTOCOL.read_text().replace("spec:\n", "spec:\n  submitters: [carol]\n", 1))
    boidctl("apply", "-f", str(proto))                        # alice creates monte-carlo
    r = boidctl("--context", "bob@c", "apply", "-f", str(JOB), code=1)
    assert r.output.splitlines() == [
        "error: job/pi: user 'bob' may not submit jobs under protocol 'monte-carlo': not its creator "
        "and not in its spec.submitters (carol)", "nothing was applied"]
    assert "No resources found" in boidctl("get", "jobs").output or "pi" not in boidctl("get", "jobs").output
    assert boidctl("--context", "bob@c", "auth", "can-i", "create", "jobs", "--protocol", "monte-carlo",
                   code=1).output == "no\n"
    r = boidctl("--context", "bob@c", "-v", "auth", "can-i", "create", "jobs", "--protocol", "monte-carlo", code=1)
    assert "reason: user 'bob' may not submit" in r.output
    assert boidctl("auth", "can-i", "create", "jobs", "--protocol", "monte-carlo").output == "yes\n"  # creator
    assert boidctl("--context", "admin@c", "auth", "can-i", "create", "jobs", "--protocol", "monte-carlo").output == "yes\n"
    assert boidctl("--context", "bob@c", "auth", "can-i", "get", "protocols").output == "yes\n"
    assert boidctl("--context", "bob@c", "auth", "can-i", "delete", "protocol/monte-carlo", code=1).output == "no\n"
    assert boidctl("auth", "can-i", "delete", "protocol", "monte-carlo").output == "yes\n"
    assert boidctl("auth", "can-i", "update", "protocols", "monte-carlo", "--subresource", "status",
                   code=1).output == "no\n"
    # alice lists bob: now he may, and his job is stored (as his)
    proto.write_text(PROTOCOL.read_text().replace("spec:\n", "spec:\n  submitters: [bob]\n", 1))
    boidctl("apply", "-f", str(proto))
    assert boidctl("--context", "bob@c", "auth", "can-i", "create", "jobs", "--protocol", "monte-carlo").output == "yes\n"
    assert "job/pi created" in boidctl("--context", "bob@c", "apply", "-f", str(JOB)).output
    r = boidctl("--context", "bob@c", "auth", "can-i", "create", "jobs", code=1)
    assert "needs --protocol" in r.output


def test_the_operator_refuses_to_run_as_a_non_admin(secured, home):
    r = boidctl("operator", "run", "--backend", "none", code=1)
    assert r.output.strip() == ("error: user 'alice' is not an admin of this cluster: run the operator with an "
                                "admin context (`--context`; `boidctl up` makes admin@local)")


def test_admins_register_users(secured, home):
    r = boidctl("--context", "bob@c", "auth", "create-user", "dave", code=1)
    assert r.output.strip() == "error: forbidden: user 'bob' is not an admin of this cluster"
    out = boidctl("--context", "admin@c", "auth", "create-user", "dave").output
    pw = home / "credentials" / "dave"
    assert out.strip() == f"user/dave created (password in {pw})"
    assert pw.stat().st_mode & 0o777 == 0o600 and pw.parent.stat().st_mode & 0o777 == 0o700
    assert pw.read_text().strip() not in out + boidctl("config", "view").output
    assert boidctl("--context", "dave@c", "auth", "whoami").output.strip() == "dave"


def test_sync_of_a_directory_checks_submitters_too(secured, home, tmp_path):
    boidctl("apply", "-f", str(PROTOCOL))  # alice's protocol: only she (and admins) may submit
    d = tmp_path / "specs"
    d.mkdir()
    (d / "job.yaml").write_text(JOB.read_text())
    r = boidctl("--context", "bob@c", "sync", str(d), code=1)
    assert "error: job/pi: user 'bob' may not submit jobs under protocol 'monte-carlo'" in r.output
    assert "pi" not in boidctl("get", "jobs", "-o", "name").output


def test_credentials_go_only_to_their_contexts_cluster(secured, home, zookeeper):
    """A digest login hands the password to the server: --zk naming another server gets none."""
    assert boidctl("--zk", secured.hosts, "auth", "whoami").output.strip() == "alice"
    other = zookeeper.hosts  # another "cluster" (the server's root: open)
    assert boidctl("--zk", other, "auth", "whoami").output.startswith("anonymous")


def test_secure_cluster_gives_the_operator_an_admin_identity_of_its_own(secured, home, tmp_path):
    from boidcluster.adapters.store import Store

    opw = tmp_path / "operator.pw"
    opw.write_text("the-operators-own-password\n")
    opw.chmod(0o600)
    r = boidctl("auth", "secure-cluster", "--operator-password-file", str(opw), code=1)   # alice@c
    assert r.output.strip() == "error: forbidden: user 'alice' is not an admin of this cluster"
    r = boidctl("--context", "admin@c", "auth", "secure-cluster", "--operator-password-file", str(opw),
                "--operator-user", "admin", code=1)
    assert "the operator needs an identity of its own, not 'admin'" in r.output
    for _ in range(2):   # idempotent
        r = boidctl("--context", "admin@c", "auth", "secure-cluster", "--operator-password-file", str(opw))
        assert r.output.strip() == "cluster secured: admins admin, operator"
    with Store(secured.hosts, credentials=Credentials("operator", "the-operators-own-password")) as op:
        assert op.is_admin and op.whoami == "operator"
    assert "the-operators-own-password" not in r.output
    r = boidctl("--context", "admin@c", "operator", "run", "--backend", "none", "--password-file", str(opw),
                "--user", "bob", code=1)   # bob's login with the operator's password: refused, one line
    assert r.output.strip() == (f"error: authentication as user 'bob' failed at {secured.hosts}: "
                                "unknown user or wrong password")
