"""SASL where configured (issue 14): a real ZooKeeper that requires SASL DIGEST-MD5 sessions (JAAS
DigestLoginModule, `enforce.auth.schemes=sasl`), and boidctl contexts whose user logs in with it
(`sasl: true`). Right credentials connect; wrong ones, or none, are one clear line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from boidcluster.adapters.auth import Credentials, Policy, register_user, secure_cluster
from boidcluster.adapters.local.zookeeper import LocalZooKeeper
from boidcluster.adapters.store import Store, Unauthorized, kind_dir
from boidcluster.cli.main import cli
from boidcluster.model.kinds import KINDS

USERS = {"admin": "admin-Sasl-secret-1", "alice": "alice-Sasl-secret-2"}


@pytest.fixture(scope="module")
def sasl_zk(tmp_path_factory):
    zk = LocalZooKeeper(tmp_path_factory.mktemp("sasl-zk"), fsync=False, sasl_users=USERS).start()
    yield zk
    zk.close()


def test_a_sasl_login_with_the_right_credentials_works_and_wrong_ones_are_refused(sasl_zk, caplog):
    caplog.set_level(1, logger="kazoo")   # every request kazoo sends, the SASL exchange included
    admin = Credentials("admin", USERS["admin"], sasl=True)
    with Store(sasl_zk.hosts, credentials=admin) as s:
        # the digest identity rides on the same session: ACLs and the policy work as without SASL
        policy = Policy(admins=(admin.digest_id,))
        secure_cluster(s.client, policy, [kind_dir(k) for k in KINDS.values()])
        register_user(s.client, policy, Credentials("alice", USERS["alice"]).digest_id)
    with Store(sasl_zk.hosts, credentials=Credentials("alice", USERS["alice"], sasl=True)) as s:
        assert s.whoami == "alice" and not s.is_admin and s.policy is not None
    with Store(sasl_zk.hosts, credentials=admin) as s:
        assert s.is_admin and s.whoami == "admin"
    for bad in (Credentials("alice", "not-" + USERS["alice"], sasl=True), Credentials("mallory", "x", sasl=True)):
        with pytest.raises(Unauthorized) as e:
            Store(sasl_zk.hosts, credentials=bad)
        assert str(e.value) == (f"authentication as user {bad.user!r} failed at {sasl_zk.hosts}: "
                                "SASL login refused (unknown user or wrong password)")
        assert bad.password not in str(e.value)
    assert any("SASL" in r.getMessage() for r in caplog.records)   # the exchange was logged, without a password
    assert not any(pw in r.getMessage() for r in caplog.records for pw in USERS.values())
    with pytest.raises(Unauthorized, match="requires a SASL login: set `sasl: true`"):
        Store(sasl_zk.hosts)                       # anonymous: the server serves nothing
    with pytest.raises(Unauthorized, match="requires a SASL login"):
        Store(sasl_zk.hosts, credentials=Credentials("alice", USERS["alice"]))   # digest only


def test_the_servers_sasl_secrets_are_in_a_private_file_only(sasl_zk):
    assert sasl_zk.jaas_path.stat().st_mode & 0o777 == 0o600
    cmdline = Path(f"/proc/{sasl_zk.pid}/cmdline").read_bytes().decode()
    environ = Path(f"/proc/{sasl_zk.pid}/environ").read_bytes().decode(errors="replace")
    assert str(sasl_zk.jaas_path) in cmdline
    assert not any(pw in cmdline or pw in environ for pw in USERS.values())


def test_boidctl_contexts_select_sasl_and_fail_in_one_line(sasl_zk, tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("BOID_HOME", str(home))
    for k in ("BOID_ZK", "BOID_CONTEXT"):
        monkeypatch.delenv(k, raising=False)

    def boidctl(*args: str, code: int = 0, input: str | None = None) -> str:
        r = CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)
        assert r.exit_code == code, r.output
        return r.output

    boidctl("config", "set-cluster", "s", "--server", sasl_zk.hosts)
    for name, pw in (("alice", USERS["alice"]), ("eve", "guessed")):
        f = tmp_path / f"{name}.pw"
        f.write_text(pw + "\n")
        os.chmod(f, 0o600)
        boidctl("config", "set-credentials", name, "--password-file", str(f), "--sasl")
        boidctl("config", "set-context", f"{name}@s", "--cluster", "s", "--user", name)
    boidctl("config", "set-credentials", "plain", "--password-stdin", "--no-sasl", input="whatever\n")
    boidctl("config", "set-context", "plain@s", "--cluster", "s", "--user", "plain")
    boidctl("config", "use-context", "alice@s")
    assert "sasl: true" in boidctl("config", "view")
    assert boidctl("auth", "whoami").startswith("alice")
    out = boidctl("--context", "eve@s", "auth", "whoami", code=1)
    assert out.strip().splitlines() == [
        f"error: authentication as user 'eve' failed at {sasl_zk.hosts}: SASL login refused "
        "(unknown user or wrong password)"]
    out = boidctl("--context", "plain@s", "get", "protocols", code=1)
    assert out.strip().splitlines()[-1].startswith(f"error: ZooKeeper at {sasl_zk.hosts} requires a SASL login")
    assert "Traceback" not in out and "guessed" not in out and USERS["alice"] not in out
