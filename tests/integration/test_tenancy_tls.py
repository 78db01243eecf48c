"""ZooKeeper's secureClientPort, end to end: a real server with a TLS port (PEM key/cert, Netty),
boidctl connecting through a context whose cluster names the CA."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from boidcluster.adapters.auth import TLS
from boidcluster.adapters.local.zookeeper import LocalZooKeeper
from boidcluster.adapters.store import Store, StoreUnavailable
from boidcluster.cli.main import cli

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _ssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(d: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate for 127.0.0.1 signed by it: (server key+cert PEM, CA PEM, other CA)."""
    _ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
         "-days", "2", "-subj", "/CN=boid-test-ca", cwd=d)
    _ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key", "-out", "other.pem",
         "-days", "2", "-subj", "/CN=someone-else", cwd=d)
    _ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
         "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    _ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    _ssl("pkcs8", "-topk8", "-nocrypt", "-in", "server.key", "-out", "server.pk8", cwd=d)
    (d / "server.pem").write_text((d / "server.pk8").read_text() + (d / "server.crt").read_text())
    (d / "server.pem").chmod(0o600)
    return d / "server.pem", d / "ca.pem", d / "other.pem"


@pytest.fixture(scope="module")
def tls_zk(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    server, ca, other = make_certs(d)
    zk = LocalZooKeeper(d / "zk", fsync=False, die_with_parent=True, tls=(server, ca)).start()
    yield zk, ca, other
    zk.close()


def test_store_over_tls(tls_zk):
    zk, ca, other = tls_zk
    with Store(zk.secure_hosts, tls=TLS(ca=str(ca)), timeout=10) as s:
        assert s.list_runs("nothing") == []
    with pytest.raises(StoreUnavailable):  # a server whose certificate the CA did not sign: refused
        Store(zk.secure_hosts, tls=TLS(ca=str(other)), timeout=3)


def test_boidctl_context_with_tls(tls_zk, tmp_path, monkeypatch):
    zk, ca, _ = tls_zk
    monkeypatch.setenv("BOID_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("BOID_ZK", raising=False)
    run = CliRunner().invoke
    assert run(cli, ["config", "set-cluster", "remote", "--server", zk.secure_hosts, "--tls-ca", str(ca)]).exit_code == 0
    pw = tmp_path / "pw"
    pw.write_text("x" * 20)
    pw.chmod(0o600)
    assert run(cli, ["config", "set-credentials", "me", "--password-file", str(pw)]).exit_code == 0
    assert run(cli, ["config", "set-context", "me@remote", "--cluster", "remote", "--user", "me",
                     "--current"]).exit_code == 0
    r = run(cli, ["get", "protocols"])
    assert r.exit_code == 0, r.output
    assert "No resources found" in r.output
    assert run(cli, ["auth", "whoami"]).output.startswith("me (this cluster is open")
