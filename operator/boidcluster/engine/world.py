"""The adapters a reconciler may use, injected by the operator.

A reconciler receives this bundle and never opens a connection itself, so the same reconciler
runs against the embedded local world (file storage, local backend, local chain node) and a
real cluster (WebHDFS, Mesos, Marathon, a public chain). A missing adapter is None: the
reconciler reports the matching condition as not applicable instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from boidcluster.adapters.backend import Backend
from boidcluster.adapters.store import Store

from .index import Index


@dataclass
class Settings:
    dispatcher_image: str = "boidcluster/operator:0.1.0"
    # what every protocol's dispatcher app is told about the cluster (endpoints, never secrets:
    # the chain key reaches the app as a Marathon secret/volume, see manifests/deploy/README.md)
    dispatcher_env: dict[str, str] = field(default_factory=dict)
    payout_enabled: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class World:
    store: Store
    storage: Any = None      # adapters.storage.Storage
    chain: Any = None        # adapters.chain.boid.BoidChain
    marathon: Any = None     # adapters.marathon.MarathonClient
    backend: Backend | None = None
    dispatcher: Any = None   # reconcilers.jobs.Dispatcher: this process's unit dispatch over `backend`
    ledger: Any = None       # reconcilers.ledger.ChainLedger: accepted units -> chain
    settings: Settings = field(default_factory=Settings)
    index: Index | None = None  # set by the engine: objects by derived keys, kept from its watch
