"""The composition root: build the World (adapters) an operator runs with, from settings.

This is the one place that decides which concrete adapters exist: the embedded local world
(file storage, local backend, local chain node) or a cluster (WebHDFS, Mesos, Marathon).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boidcluster.adapters.chain import KeyRing
from boidcluster.adapters.chain.blocking import BlockingChain
from boidcluster.adapters.storage import Storage
from boidcluster.adapters.store import Store
from boidcluster.engine.world import Settings, World


@dataclass
class OperatorOptions:
    zk: str
    storage: str | None = None          # file:///... or webhdfs://...
    chain_url: str | None = None
    keys_file: str | None = None        # else $BOID_CHAIN_KEYS
    marathon: str | None = None
    backend: str = "local"              # local | mesos | none
    slots: list[str] = field(default_factory=list)   # local backend: the contributor identities of the slots
    slot_count: int | None = None       # local backend: how many slots (None: $BOID_SLOT_COUNT, else machine_slots())
    runtime: str = "podman"             # local backend: podman (sandboxed containers) | host (development only)
    mesos_master: str | None = None     # http://master:5050 or zk://host:2181/mesos
    mesos_roles: list[str] = field(default_factory=lambda: ["*"])
    mesos_state: str = "/boid/v1/mesos"  # ZooKeeper path of the framework id, agent map, task starts
    dispatcher_account: str | None = None  # credited (updatedptch) for running jobs
    workers: int = 4
    # Mesos framework identity: FrameworkInfo.user (must exist on every agent), and the principal
    # whose secret is read from a file (a mounted secret) when the master authenticates frameworks.
    # From the environment, as a dispatcher app gets them (never the secret itself).
    mesos_user: str = field(default_factory=lambda: os.environ.get("BOID_MESOS_USER") or "nobody")
    mesos_principal: str | None = field(default_factory=lambda: os.environ.get("BOID_MESOS_PRINCIPAL") or None)
    mesos_secret_file: str | None = field(default_factory=lambda: os.environ.get("BOID_MESOS_SECRET_FILE") or None)
    # TaskInfo.limits (hard cpu/mem caps equal to the requests) need Mesos >= 1.11 masters and
    # agents; on older ones the agents' cgroups isolation with CFS enforces the requests instead
    mesos_task_limits: bool = field(default_factory=lambda: os.environ.get("BOID_MESOS_TASK_LIMITS") == "true")
    # Authenticated workers: the contributor accounts whose agents reserve `boid-contributors/<account>`
    # (the list `boidctl mesos agent-credentials` made the master's credentials and ACLs for).
    # None, and `mesos_insecure_attributes` not set, refuses the mesos backend: crediting the
    # agents' free `boid_account` attribute lets any agent claim any account (development only).
    mesos_contributors: list[str] | None = field(default_factory=lambda: _env_list("BOID_MESOS_CONTRIBUTORS"))
    mesos_insecure_attributes: bool = field(
        default_factory=lambda: os.environ.get("BOID_MESOS_INSECURE_ATTRIBUTES") == "true")
    allow_host_reducers: bool = False   # run `reduce: command` reducers unsandboxed (implied by runtime host)
    protocol: str | None = None         # a protocol's dispatcher: its framework is torn down with the protocol
    dispatcher_identities: str | None = None  # operator: where it keeps each protocol's dispatcher password


def _env_list(name: str) -> list[str] | None:
    value = os.environ.get(name)
    return None if value is None else [v for v in value.replace(",", " ").split() if v]


SLOT_MEMORY_MB = 512   # memory one local slot is sized for (ResourceRequest's default is 128 MiB)


def machine_slots(memory_per_slot_mb: int = SLOT_MEMORY_MB) -> int:
    """How many units this machine runs at once: one per core, fewer if memory is short."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        by_memory = int(pages // (memory_per_slot_mb * 2**20))
    except (ValueError, OSError):
        by_memory = cores
    return max(1, min(cores, by_memory))


def local_slots(accounts: list[str], count: int | None) -> list[str]:
    """The local backend's slots: `count` (default: $BOID_SLOT_COUNT, else sized to the machine,
    and never fewer than one per account) spread round robin over the contributor accounts, so
    every slot is still credited to a contributor."""
    accounts = accounts or ["local"]
    if count is None:
        env = os.environ.get("BOID_SLOT_COUNT")
        if env:
            try:
                count = int(env)
            except ValueError:
                raise ValueError(f"BOID_SLOT_COUNT={env!r} is not a number of slots") from None
        else:
            count = max(len(accounts), machine_slots())
    if count < 1:
        raise ValueError(f"the local backend needs at least one slot (got {count})")
    return [accounts[i % len(accounts)] for i in range(count)]


def load_keys(keys_file: str | None) -> KeyRing:
    if keys_file:
        return KeyRing.from_file(keys_file)
    if os.environ.get("BOID_CHAIN_KEYS"):
        return KeyRing.from_env("BOID_CHAIN_KEYS")
    raise ValueError("no chain keys: pass --keys FILE or set BOID_CHAIN_KEYS")


def build_world(opts: OperatorOptions, store: Store) -> World:
    if opts.backend == "mesos" and opts.mesos_contributors is None and not opts.mesos_insecure_attributes:
        raise ValueError("the mesos backend needs the contributors whose agents are trusted: --mesos-contributor "
                         "ACCOUNT (repeatable; $BOID_MESOS_CONTRIBUTORS), the accounts `boidctl mesos "
                         "agent-credentials` configured the master for; --mesos-insecure-agent-attributes "
                         "credits the agents' boid_account attribute instead (development only: any agent "
                         "can claim any account)")
    if opts.backend == "mesos" and opts.mesos_contributors is None:
        logging.getLogger(__name__).warning(
            "mesos: crediting agents by their boid_account attribute (--mesos-insecure-agent-attributes): "
            "any agent can claim any contributor account")
    env = {"BOID_ZK": opts.zk, "BOID_STORAGE": opts.storage, "BOID_CHAIN_URL": opts.chain_url,
           "BOID_MESOS_MASTER": opts.mesos_master, "BOID_DISPATCHER_ACCOUNT": opts.dispatcher_account,
           "BOID_MESOS_USER": opts.mesos_user if opts.mesos_user != "nobody" else None,
           "BOID_MESOS_PRINCIPAL": opts.mesos_principal,
           "BOID_MESOS_TASK_LIMITS": "true" if opts.mesos_task_limits else None,
           "BOID_MESOS_CONTRIBUTORS": ",".join(opts.mesos_contributors) if opts.mesos_contributors is not None else None,
           "BOID_MESOS_INSECURE_ATTRIBUTES": "true" if opts.mesos_insecure_attributes else None}
    world = World(store=store, settings=Settings(
        dispatcher_env={k: v for k, v in env.items() if v},
        host_reducers=opts.allow_host_reducers or (opts.backend == "local" and opts.runtime == "host")))
    closers: list[Any] = []
    if opts.storage:
        world.storage = Storage(opts.storage)
        closers.append(world.storage)
    if opts.chain_url:
        world.chain = BlockingChain.open(opts.chain_url, load_keys(opts.keys_file))
        closers.append(world.chain)
    if opts.backend == "local":
        if not (opts.storage or "").startswith("file://"):
            raise ValueError("the local backend needs file:// storage (--storage file:///path)")
        from boidcluster.adapters.local.backend import LocalBackend

        backend = LocalBackend(opts.storage[len("file://"):], slots=local_slots(opts.slots, opts.slot_count),
                               runtime=opts.runtime)
        closers.append(backend)
        if backend.capacity() == 0:
            reasons = sorted({t.message for _s, t in backend.slot_report() if not t.ok})
            for c in reversed(closers):
                c.close()
            raise ValueError("no worker slot can run units: " + "; ".join(reasons))
        world.backend = backend
    elif opts.backend == "mesos":
        if not opts.mesos_master:
            raise ValueError("the mesos backend needs --mesos-master (http://host:5050 or zk://host:2181/mesos)")
        from boidcluster.adapters.mesos import MesosBackend

        secret_file = opts.mesos_secret_file if opts.mesos_principal else None   # no principal: no auth
        if secret_file and not os.path.isfile(secret_file):
            raise ValueError(f"the Mesos framework secret file {secret_file} (BOID_MESOS_SECRET_FILE) does not exist")
        world.backend = MesosBackend(opts.mesos_master, roles=tuple(opts.mesos_roles), zk=store.client,
                                     framework_id_path=f"{opts.mesos_state}/framework",
                                     framework_name="boid-" + ("-".join(opts.mesos_roles)
                                                               if opts.mesos_roles != ["*"] else "operator"),
                                     user=opts.mesos_user, principal=opts.mesos_principal,
                                     secret_file=secret_file, task_limits=opts.mesos_task_limits,
                                     contributors=opts.mesos_contributors)
        closers.append(world.backend)
    if world.chain is not None:
        from boidcluster.reconcilers.ledger import ChainLedger

        world.ledger = ChainLedger(world.chain, opts.dispatcher_account, store=store)
    if opts.marathon:
        from boidcluster.adapters.marathon import MarathonClient

        world.marathon = MarathonClient(opts.marathon, locked_timeout=5.0)  # a worker thread never waits long
        closers.append(world.marathon)
    world.settings.extra["closers"] = closers
    world.settings.extra["protocol"] = opts.protocol
    if opts.dispatcher_identities:
        world.settings.extra["dispatcher_identities"] = opts.dispatcher_identities
    return world


def protocol_deleted(store: Store, name: str) -> bool:
    """The protocol is gone or being deleted (False when that cannot be read: never tear down on doubt)."""
    from boidcluster.adapters.store import NotFound, StoreError
    from boidcluster.model.resources import Protocol

    try:
        return store.get(Protocol, name).metadata.deletion_timestamp is not None
    except NotFound:
        return True
    except StoreError:
        return False


def runtime_report(world: World) -> list[str]:
    """One line per local worker slot: its runtime's self-test (why a slot takes no work)."""
    report = getattr(world.backend, "slot_report", None)
    if report is None:
        return []
    return [f"worker {slot.contributor}: {'ready' if t.ok else 'REFUSED'} - {t.message}" for slot, t in report()]


def close_world(world: World) -> None:
    """Close every adapter. A protocol's Mesos framework is torn down (its tasks killed) only when
    the protocol was deleted; any other stop (SIGTERM when Marathon restarts or moves the
    dispatcher) leaves the tasks running for the successor, which fails over into the framework."""
    protocol = world.settings.extra.get("protocol")
    for c in reversed(world.settings.extra.get("closers", [])):
        try:
            if c is world.backend and protocol and getattr(c, "name", "") == "mesos" \
                    and protocol_deleted(world.store, protocol):
                c.close(remove=True)
            else:
                c.close()
        except Exception:
            pass


def storage_root(state: Path) -> str:
    return f"file://{(state / 'storage').resolve()}"
