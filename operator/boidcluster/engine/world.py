"""The adapters a reconciler may use, injected by the operator.

A reconciler receives this bundle and never opens a connection itself, so the same reconciler
runs against the embedded local world (file storage, local backend, local chain node) and a
real cluster (WebHDFS, Mesos, Marathon, a public chain). A missing adapter is None: the
reconciler reports the matching condition as not applicable instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from boidcluster.adapters.backend import Backend
from boidcluster.adapters.store import Store

from .index import Index

if TYPE_CHECKING:  # typing only: the engine never calls these itself
    from boidcluster.adapters.chain.blocking import BlockingChain
    from boidcluster.adapters.marathon import MarathonClient
    from boidcluster.adapters.storage import Storage


class Ledger(Protocol):
    """The chain side of contributed time (reconcilers.ledger.ChainLedger implements it)."""

    def record_units(self, protocol: Any, job: Any, credits: Any) -> Any: ...


@dataclass
class Settings:
    dispatcher_image: str = "boidcluster/operator:0.1.0"
    # what every protocol's dispatcher app is told about the cluster (endpoints, never secrets:
    # the chain key reaches the app as a Marathon secret/volume, see manifests/deploy/README.md)
    dispatcher_env: dict[str, str] = field(default_factory=dict)
    payout_enabled: bool = True
    # `reduce: command` runs a researcher's reducer on this machine, unsandboxed, as this process's
    # user (who may hold chain keys): only when the operator says it trusts them
    host_reducers: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class World:
    store: Store
    storage: Storage | None = None
    chain: BlockingChain | None = None
    marathon: MarathonClient | None = None
    backend: Backend | None = None
    dispatcher: Any = None   # reconcilers.jobs.Dispatcher (a higher layer): unit dispatch over `backend`
    ledger: Ledger | None = None  # accepted units -> chain
    settings: Settings = field(default_factory=Settings)
    index: Index | None = None  # set by the engine: objects by derived keys, kept from its watch
