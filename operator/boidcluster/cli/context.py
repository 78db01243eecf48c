"""Where boidctl finds the cluster, who it is there, and how it reports failures.

The ZooKeeper address comes from --zk, then $BOID_ZK, then the context's cluster in
$BOID_HOME/config (default ~/.boid; see kubeconfig.py), then the file `boidctl up` writes
($BOID_HOME/cluster.json), then 127.0.0.1:2181 — kubectl's flag > env > config order. The
identity (and TLS) come only from the context (--context, $BOID_CONTEXT, else current-context):
never from a flag. Every known failure becomes one clear line on stderr and a non-zero exit.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import click

from boidcluster.adapters.auth import Credentials
from boidcluster.adapters.store import Store, StoreError
from boidcluster.model.crd import UnknownField
from boidcluster.model.kinds import UnknownKind
from boidcluster.model.loader import SpecErrors

from .kubeconfig import Config, ConfigError, Context

DEFAULT_ZK = "127.0.0.1:2181"


def boid_home() -> Path:
    return Path(os.environ.get("BOID_HOME") or Path.home() / ".boid")


def cluster_file() -> Path:
    return boid_home() / "cluster.json"


def config_file() -> Path:
    return boid_home() / "config"


def read_cluster() -> dict[str, Any]:
    try:
        return json.loads(cluster_file().read_text())
    except (OSError, ValueError):
        return {}


class Ctx:
    def __init__(self, zk: str | None, timeout: float, context: str | None = None) -> None:
        self._zk = zk
        self.timeout = timeout
        self.context_name = context or os.environ.get("BOID_CONTEXT") or None
        self._store: Store | None = None
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = Config.load(config_file())
        return self._config

    @property
    def context(self) -> Context | None:
        return self.config.context(self.context_name)

    @property
    def credentials(self) -> Credentials | None:
        c = self.context
        return c.credentials if c else None

    @property
    def zk(self) -> str:
        if self._zk or os.environ.get("BOID_ZK"):
            return self._zk or os.environ["BOID_ZK"]
        c = self.context
        return (c.server if c else None) or read_cluster().get("zk") or DEFAULT_ZK

    @property
    def store(self) -> Store:
        """The store, logged in as the context's user -- only when talking to that context's own
        cluster: a digest login hands the password to the server, so --zk/$BOID_ZK pointing
        elsewhere connects anonymously."""
        if self._store is None:
            self._store = self.open_store()
        return self._store

    def open_store(self, timeout: float | None = None) -> Store:
        """A new store connection logged in as `store` is (for a long-lived reader that reconnects)."""
        c = self.context
        own = c is not None and (c.server is None or c.server == self.zk)
        return Store(self.zk, timeout=self.timeout if timeout is None else timeout,
                     credentials=c.credentials if own else None, tls=c.tls if own else None)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


class Failure(click.ClickException):
    """A user-facing failure: printed as 'error: ...' with exit code 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


def friendly(fn: Callable) -> Callable:
    """Turn the package's known errors into one clear message and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SpecErrors as e:
            click.echo(str(e), err=True)
            sys.exit(1)
        except (UnknownKind, UnknownField) as e:
            raise Failure(str(e)) from None
        except (StoreError, ConfigError) as e:
            raise Failure(str(e)) from None
        except KeyboardInterrupt:
            sys.exit(130)

    return wrapper
