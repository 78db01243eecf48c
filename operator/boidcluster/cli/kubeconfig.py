"""`$BOID_HOME/config`: clusters, users and contexts, shaped like a kubeconfig.

    current-context: admin@local
    clusters:
    - name: local
      cluster: {server: 127.0.0.1:2181, tls: {ca: /path/ca.pem, cert: ..., key: ...}}
    users:
    - name: alice
      user: {username: alice, password-file: /home/alice/.boid/credentials/alice}   # sasl: true
                                      # also logs in with SASL DIGEST-MD5 (servers requiring it)
    contexts:
    - name: alice@local
      context: {cluster: local, user: alice}

Why a file and never a flag or an environment variable: a password on the command line is
visible to every local user in /proc/<pid>/cmdline, and environment variables leak into child
processes and unit environments. A password is read from `password-file` (which must be mode
0600) or inline `password` (then the config itself must be 0600); `config view` redacts it.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from boidcluster.adapters.auth import TLS, AuthError, Credentials

REDACTED = "REDACTED"


class ConfigError(Exception):
    """The config file (or a file it names) is unusable; the message names the file and field."""


def _private(path: Path, what: str) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(f"{what} {path} is readable by other users (mode {mode:04o}): "
                          f"run `chmod 600 {path}`")


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, without a moment of wider permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.parent.name == "credentials":
        path.parent.chmod(0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def read_password_file(path: Path, user: str) -> Credentials:
    """`user`'s credentials from a password file, which must be private (mode 0600)."""
    try:
        _private(path, "password file")
        return Credentials(user, path.read_text().strip())
    except FileNotFoundError:
        raise ConfigError(f"password file {path} does not exist") from None
    except AuthError as e:
        raise ConfigError(f"password file {path}: {e}") from None


@dataclass
class Context:
    name: str
    cluster: str
    user: str | None
    server: str | None
    tls: TLS | None
    credentials: Credentials | None


class Config:
    """The parsed file. Missing file = empty config (an open cluster, anonymous)."""

    def __init__(self, path: Path, data: dict[str, Any] | None = None) -> None:
        self.path = path
        self.data: dict[str, Any] = data if data is not None else {}
        for key in ("clusters", "users", "contexts"):
            self.data.setdefault(key, [])

    @classmethod
    def load(cls, path: Path) -> "Config":
        try:
            text = path.read_text()
        except FileNotFoundError:
            return cls(path)
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}{where}: not valid YAML") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping with clusters, users, contexts")
        for key in ("clusters", "users", "contexts"):
            if not isinstance(data.get(key, []), list):
                raise ConfigError(f"{path}: {key} must be a list")
        return cls(path, data)

    def save(self) -> None:
        write_private(self.path, yaml.safe_dump(self.data, sort_keys=False))

    # -- lookups --------------------------------------------------------------------------------
    def _entry(self, section: str, name: str) -> dict[str, Any] | None:
        for e in self.data[section]:
            if isinstance(e, dict) and e.get("name") == name:
                return e
        return None

    def _body(self, section: str, key: str, name: str) -> dict[str, Any]:
        e = self._entry(section, name)
        if e is None:
            raise ConfigError(f"{self.path}: no {key} named {name!r} in {section}")
        body = e.get(key) or {}
        if not isinstance(body, dict):
            raise ConfigError(f"{self.path}: {section}[{name}].{key} must be a mapping")
        return body

    @property
    def current(self) -> str | None:
        return self.data.get("current-context")

    def context(self, name: str | None = None) -> Context | None:
        """The named (else current) context, resolved; None when there is none at all."""
        name = name or self.current
        if not name:
            return None
        ctx = self._body("contexts", "context", name)
        cluster = ctx.get("cluster")
        if not cluster:
            raise ConfigError(f"{self.path}: contexts[{name}].context.cluster is missing")
        cl = self._body("clusters", "cluster", cluster)
        tls = None
        if cl.get("tls"):
            t = cl["tls"]
            if not isinstance(t, dict):
                raise ConfigError(f"{self.path}: clusters[{cluster}].cluster.tls must be a mapping")
            tls = TLS(ca=t.get("ca"), cert=t.get("cert"), key=t.get("key"),
                      verify=not t.get("insecure-skip-verify", False))
        user = ctx.get("user")
        return Context(name, cluster, user, cl.get("server"), tls, self.credentials(user) if user else None)

    def credentials(self, user: str) -> Credentials:
        body = self._body("users", "user", user)
        where = f"users[{user}].user"
        try:
            if body.get("password-file"):
                pf = Path(os.path.expanduser(body["password-file"]))
                try:
                    _private(pf, "password file")
                    password = pf.read_text().strip()
                except FileNotFoundError:
                    raise ConfigError(f"{self.path}: {where}.password-file {pf} does not exist") from None
            elif body.get("password"):
                _private(self.path, "config file (it holds a password)")
                password = str(body["password"])
            else:
                raise ConfigError(f"{self.path}: {where} needs password-file (or password)")
            sasl = body.get("sasl", False)
            if not isinstance(sasl, bool):
                raise ConfigError(f"{self.path}: {where}.sasl must be true or false")
            return Credentials(str(body.get("username") or user), password, sasl=sasl)
        except AuthError as e:
            raise ConfigError(f"{self.path}: {where}: {e}") from None

    # -- edits ----------------------------------------------------------------------------------
    def _set(self, section: str, key: str, name: str, fields: dict[str, Any]) -> None:
        e = self._entry(section, name)
        if e is None:
            e = {"name": name, key: {}}
            self.data[section].append(e)
        body = e.setdefault(key, {}) or {}
        body.update({k: v for k, v in fields.items() if v is not None})
        e[key] = body

    def set_cluster(self, name: str, **fields: Any) -> None:
        self._set("clusters", "cluster", name, fields)

    def set_user(self, name: str, **fields: Any) -> None:
        self._set("users", "user", name, fields)

    def set_context(self, name: str, **fields: Any) -> None:
        self._set("contexts", "context", name, fields)

    def use(self, name: str) -> None:
        if self._entry("contexts", name) is None:
            raise ConfigError(f"no context named {name!r} in {self.path} (see `boidctl config get-contexts`)")
        self.data["current-context"] = name

    def redacted(self) -> dict[str, Any]:
        import copy

        out = copy.deepcopy(self.data)
        for e in out.get("users", []):
            body = e.get("user") if isinstance(e, dict) else None
            if isinstance(body, dict) and "password" in body:
                body["password"] = REDACTED
        return out
