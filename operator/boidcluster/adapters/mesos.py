"""The `mesos` execution backend: a Mesos framework on the v1 scheduler HTTP API (JSON).

Volunteers' machines are Mesos agents. Who is credited for the work an agent runs
(`credit_offer`), with `contributors=` (authenticated workers): the account whose contributor role
(`boid-contributors/<account>`) the agent's resources are statically reserved for. The master
authorizes static reservations against the agent's authenticated principal when it registers
(src/master/authorization.cpp:80-101 "helps prevent agents from advertising reserved resources of
arbitrary roles"), and `agent_acls` lets principal P reserve only P's role, so such a reservation
is proof. A parent role is not offered its children's reservations (resources.cpp:1190-1200), so
the framework subscribes to every contributor role; tasks of all its task roles are matched to
any of those offers. Unreserved or foreign resources earn nobody credit: declined for
`unusable_refuse_seconds`, logged once per agent and listed in `health()`. Without
`contributors=` (development only) the agent's free attribute `boid_account` names the
contributor, so any agent can claim any account. One framework per protocol
dispatcher (`boidctl dispatcher run`), one Mesos role per protocol (fair share and quota per
protocol): such a backend's roles are explicit and a task whose `TaskSpec.role` is not one of them
fails at submit. A backend whose roles are exactly ("*",) (the default; `boidctl operator run
--backend mesos` without `--mesos-role`) is a single framework for every protocol: it has no
per-protocol fair share to keep, so it runs every task under "*" whatever `TaskSpec.role` says.

Why an own small client: `pymesos` 0.3.15 does not install on Python 3.11 (its dependency
`http-parser` 0.9.0 fails to compile: `longintrepr.h: No such file or directory`, checked with
`pip wheel`; see shared/notes/environment.md), and the HTTP API is small enough that a client
of our own is clearer to audit than `avmesos`: httpx (sync) for calls, a streaming httpx request
for SUBSCRIBE decoded as RecordIO (docs/recordio.md), kazoo for ZooKeeper.

How it is shaped (docs/scheduler-http-api.md, docs/reconciliation.md):
* A subscriber thread owns the SUBSCRIBE stream: detect the leader (direct URL, or the lowest
  `json.info_<seq>` znode under a `zk://hosts/path` URL, holding MasterInfo JSON as written by
  Mesos' LeaderContender), follow 307 redirects, read events, and on any break re-subscribe
  with the same FrameworkID (exponential backoff up to 15 s). The FrameworkID is kept in
  ZooKeeper (`framework_id_path`) so a restarted dispatcher fails over into the same framework
  (tasks survive for `failover_timeout`) and reconciles its tasks.
* A task's start (the timestamp of its first TASK_STARTING/RUNNING update) is kept in ZooKeeper
  too, at `<framework_id_path>/tasks/<task id>`, because after a failover nothing else says when
  a task started: the crashed process acknowledged that update, and a reconciliation answer
  carries only its own timestamp. One small create per task, sent asynchronously, and that
  update is acknowledged only once the create succeeded (a failed create is not acknowledged, so
  the agent re-sends the update and the create is retried); one delete once the task's terminal
  update has been handed out by `updates()`. `reconcile()` reads the start of a task it does not
  know, so a task that ran across the failover is credited from its real start (read, never
  added: a task's credit is still finished_at - started_at). Without `framework_id_path` nothing
  is written and a reconciled task counts from the first update this process sees.
* Offers are matched in the stream thread: role, resources (cpus/mem/disk/gpus), Marathon-style
  constraints on the hostname and agent attributes (LIKE, UNLIKE, CLUSTER, IS, UNIQUE, MAX_PER;
  GROUP_BY is accepted as a soft spread and not enforced), `exclude_contributors`, and distinct
  contributors for replicas of one unit. One ACCEPT per offer launches every task that fits;
  offers nothing fits are DECLINEd with a `refuse_seconds` filter. A role with nothing queued is
  SUPPRESSed; a submit to a suppressed (or recently declining) role REVIVEs it.
* A calls thread sends ACKNOWLEDGE (for updates that carry a uuid), KILL, RECONCILE, REVIVE and
  SUPPRESS in order, and every `tick` runs the heartbeat watchdog (no event for
  `heartbeat_misses` heartbeat intervals: cut the stream and re-subscribe), `TaskSpec.timeout`
  (KILL), and explicit reconciliation per reconciliation.md: after every (re-)subscription, the
  non-terminal tasks without an update since are re-asked with truncated exponential backoff.
* State mapping: TASK_STAGING->STAGING, TASK_STARTING/RUNNING/KILLING->RUNNING,
  TASK_FINISHED->FINISHED, TASK_FAILED/ERROR->FAILED, TASK_KILLED->KILLED, TASK_LOST/UNREACHABLE/
  GONE/GONE_BY_OPERATOR/DROPPED/UNKNOWN and agent FAILURE -> LOST. started_at/finished_at come
  from the updates' timestamps; `TaskUpdate.reason` is Mesos' TaskStatus.Reason, so a caller can
  tell a task the agents cannot start (same reason and message every time, `TaskUpdate.cause`)
  from a lost machine. A launch answered TASK_LOST/DROPPED with REASON_INVALID_OFFERS (a
  rescinded offer) is re-queued silently: the task never ran. A task reported LOST (its agent was
  cut off) that an agent later says is running was re-queued meanwhile: it is KILLed, never run
  twice; a task of this framework nobody claims (`reconcile()`) within `orphan_grace` is KILLed.
* Framework: user `nobody` by default (must exist on every agent: --switch_user chowns the
  sandbox to it), capabilities MULTI_ROLE, GPU_RESOURCES, PARTITION_AWARE; optional HTTP basic
  authentication as `principal` with the secret read from `secret_file`. A master ERROR "Framework
  has been removed" makes it report its tasks LOST, drop the stored id and subscribe anew.
* Resilience: every background thread survives any error and retries with backoff, counted in
  `health()` (exported on /metrics); the subscribe backoff resets only after a connection that
  stayed up; an implicit reconciliation plus an explicit one of every live task runs every
  `reconcile_interval`; queued work with no launch for `revive_interval` REVIVEs again.
* `close()` leaves running tasks to a successor (failover); `close(remove=True)` tears down.
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable
from urllib.parse import quote, urlsplit

import httpx
from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NoNodeError, NodeExistsError
from kazoo.handlers.threading import KazooTimeoutError

from boidcluster.adapters.backend import TERMINAL, TaskSpec, TaskUpdate

log = logging.getLogger(__name__)

API_PATH = "/api/v1/scheduler"
SUPPORTED_OPERATORS = frozenset({"LIKE", "UNLIKE", "CLUSTER", "IS", "UNIQUE", "MAX_PER", "GROUP_BY"})

_STATE_MAP = {
    "TASK_STAGING": "STAGING", "TASK_STARTING": "RUNNING", "TASK_RUNNING": "RUNNING",
    "TASK_KILLING": "RUNNING", "TASK_FINISHED": "FINISHED", "TASK_FAILED": "FAILED",
    "TASK_ERROR": "FAILED", "TASK_KILLED": "KILLED", "TASK_LOST": "LOST", "TASK_UNREACHABLE": "LOST",
    "TASK_GONE": "LOST", "TASK_GONE_BY_OPERATOR": "LOST", "TASK_DROPPED": "LOST", "TASK_UNKNOWN": "LOST",
}
_EXIT = re.compile(r"exited with status (\d+)")
_ZK_ERRORS = (KazooException, KazooTimeoutError, OSError, ValueError)   # a start znode's I/O
_LIVE_MESOS = frozenset({"TASK_STAGING", "TASK_STARTING", "TASK_RUNNING", "TASK_KILLING"})
# The one master answer that means "this FrameworkID is dead, subscribe as a new framework":
# validateFramework refuses a completed framework with exactly this text (master.cpp:2591-2598).
# The ERROR event carries nothing but a message (scheduler.proto Event.Error), so this is the
# only way to tell it from other refusals (roles, user, authentication), after which a new
# framework would not help and the id must be kept.
FRAMEWORK_REMOVED = "Framework has been removed"
# FrameworkInfo.user: the HTTP API needs it set explicitly (mesos.proto FrameworkInfo.user), and
# with the agents' default --switch_user=true each sandbox is chowned to it, so it must exist on
# every agent (src/slave/paths.cpp:893-903): "nobody" does on every Linux machine.
DEFAULT_USER = "nobody"
# Capabilities (mesos.proto FrameworkInfo.Capability): MULTI_ROLE (one role per protocol),
# GPU_RESOURCES (else agents with GPUs are never offered: master --filter_gpu_resources, default
# true, hierarchical.cpp:3095-3105) and PARTITION_AWARE (TASK_UNREACHABLE/GONE/DROPPED/UNKNOWN
# instead of a catch-all TASK_LOST, master.cpp:10992-11025, slave.cpp:2860-2866).
CAPABILITIES = ("MULTI_ROLE", "GPU_RESOURCES", "PARTITION_AWARE")
MAX_ERRORS = 50   # errors kept for status (oldest dropped first)
# The parent of the contributor roles: contributor `alice`'s agents reserve for "boid-contributors/alice".
CONTRIBUTOR_ROLE_PREFIX = "boid-contributors"


@dataclass
class ThreadHealth:
    """How one background thread is doing: shown in `MesosBackend.health()` (status, metrics)."""

    name: str
    failures: int = 0          # errors it survived (each followed by a retry after `backoff`)
    last_error: str = ""
    last_error_at: float | None = None   # wall clock
    backoff: float = 0.0       # the delay before its latest retry (0: it never failed)


class MesosError(RuntimeError):
    """The master refused a call or could not be reached/detected."""


def map_state(mesos_state: str) -> str:
    return _STATE_MAP.get(mesos_state, "LOST")


# ---------------------------------------------------------------------------------------------
# Offers and constraints (pure functions, easy to test)
# ---------------------------------------------------------------------------------------------

@dataclass
class Offer:
    id: str
    agent_id: str
    hostname: str
    role: str
    resources: list[dict]
    attributes: dict[str, str]
    contributor: str | None = None      # who is credited for work on it (`credit_offer`), None: nobody
    usable: list[dict] = field(default_factory=list)   # the resources tasks may take (`credit_offer`)
    why_not: str = ""                   # why nobody is credited

    @classmethod
    def from_json(cls, o: dict) -> "Offer":
        role = (o.get("allocation_info") or {}).get("role", "*")
        return cls(o["id"]["value"], o["agent_id"]["value"], o.get("hostname", ""), role,
                   list(o.get("resources", [])), attributes_of(o.get("attributes", [])))

    def scalars(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for r in self.usable:
            if r.get("type", "SCALAR") == "SCALAR" and "scalar" in r:
                out[r["name"]] = out.get(r["name"], 0.0) + float(r["scalar"]["value"])
        return out


def contributor_role(account: str, prefix: str = CONTRIBUTOR_ROLE_PREFIX) -> str:
    """The Mesos role a contributor's agents statically reserve their resources for. An EOS name
    ([a-z1-5.], at most 13 characters, never "." alone) is a valid role component
    (src/common/roles.cpp:85-141: no "/", ".", "..", "*", leading "-" or whitespace)."""
    if not account or "/" in account or account in (".", "..") or account.startswith("-") \
            or any(c.isspace() for c in account):
        raise ValueError(f"{account!r} cannot name a Mesos role component")
    return f"{prefix}/{account}"


def static_reservation_role(resource: dict) -> str | None:
    """The role a resource is statically reserved for by its agent, else None (unreserved, or
    reserved dynamically by a framework or operator). Resource.reservations is a stack, the last
    entry the most refined (mesos.proto:1420-1480): only a single STATIC entry counts, i.e. the
    reservation the agent's principal made and the master authorized at registration."""
    res = resource.get("reservations") or []
    if len(res) == 1 and res[0].get("type") == "STATIC" and res[0].get("role"):
        return str(res[0]["role"])
    return None


def credit_offer(offer: Offer, role_accounts: dict[str, str] | None) -> Offer:
    """Decide who an offer's work is credited to and which of its resources tasks may use.

    `role_accounts` None: the unauthenticated mode, the agent's free `boid_account` attribute
    (development clusters only: any agent can claim any account). Otherwise the offer's role must
    be a contributor role and only the resources statically reserved for exactly that role are
    used: reserving them needed the contributor's agent principal (the master's
    `reserve_resources` ACL, checked at registration), whereas unreserved resources are offered to
    every role (resources.cpp:1190-1200) and say nothing about who runs the agent."""
    if role_accounts is None:
        offer.contributor = offer.attributes.get("boid_account") or None
        offer.usable = list(offer.resources) if offer.contributor else []
        offer.why_not = "" if offer.contributor else "no boid_account attribute"
        return offer
    account = role_accounts.get(offer.role)
    usable = [r for r in offer.resources if static_reservation_role(r) == offer.role] if account else []
    offer.contributor, offer.usable = (account, usable) if usable else (None, [])
    if not usable:
        offer.why_not = (f"role {offer.role!r} is no contributor role" if account is None else
                         f"no resources statically reserved for {offer.role!r}")
    return offer


def agent_principal(account: str) -> str:
    """The principal a contributor's agents authenticate as: the account itself."""
    return account


def agent_acls(accounts: Iterable[str], existing: dict | None = None,
               prefix: str = CONTRIBUTOR_ROLE_PREFIX) -> dict:
    """The master's --acls (acls.proto `ACLs` as JSON) for authenticated workers: principal P may
    statically reserve only P's contributor role, nobody else any role under `prefix`.

    The local authorizer takes the first rule whose subject and object match
    (src/authorizer/local/authorizer.cpp:769-797): each contributor's rule allows its own role;
    the last one, a recursive "<prefix>/%" rule with principals NONE, denies every other
    principal (and an agent without one) any role below the prefix (isNestedHierarchy, :808-813).
    Roles outside the prefix and every other action stay as `existing` has them (default
    permissive, acls.proto:647), so a shared Mesos cluster keeps its own rules. Applied by the
    master to an agent's static reservations at registration (ActionObject::agentRegistration,
    src/master/authorization.cpp:80-101; refusal master.cpp:6309-6328)."""
    out = dict(existing or {})
    ours = [{"principals": {"values": [agent_principal(a)]}, "roles": {"values": [contributor_role(a, prefix)]}}
            for a in sorted(set(accounts))]
    ours.append({"principals": {"type": "NONE"}, "roles": {"values": [prefix + "/%"]}})

    def foreign(rule: dict) -> bool:
        return not any(str(v).startswith(prefix + "/") for v in (rule.get("roles") or {}).get("values", []))

    out["reserve_resources"] = ours + [r for r in out.get("reserve_resources", []) if foreign(r)]
    out.setdefault("permissive", True)
    return out


def agent_credentials(accounts: Iterable[str], existing: dict | None = None,
                      new_secret: Any = None) -> dict:
    """The master's --credentials ({"credentials": [{principal, secret}]}, docs/authentication.md):
    entries already there are kept (framework principals, secrets already handed to agents), an
    agent principal missing gets a fresh random secret. Idempotent: regenerating changes nothing."""
    make = new_secret or (lambda: secrets.token_urlsafe(32))
    entries = [dict(c) for c in (existing or {}).get("credentials", [])]
    have = {c.get("principal") for c in entries}
    for a in sorted(set(accounts)):
        if agent_principal(a) not in have:
            entries.append({"principal": agent_principal(a), "secret": make()})
    return {"credentials": entries}


def attributes_of(attrs: Iterable[dict]) -> dict[str, str]:
    """Agent attributes (mesos.proto `Attribute`) as text, the way constraints compare them."""
    out: dict[str, str] = {}
    for a in attrs:
        t = a.get("type")
        if t == "TEXT":
            out[a["name"]] = a["text"]["value"]
        elif t == "SCALAR":
            v = float(a["scalar"]["value"])
            out[a["name"]] = str(int(v)) if v.is_integer() else str(v)
        elif t == "SET":
            out[a["name"]] = ",".join(a.get("set", {}).get("item", []))
        elif t == "RANGES":
            out[a["name"]] = ",".join(f"[{r['begin']}-{r['end']}]" for r in a.get("ranges", {}).get("range", []))
    return out


def field_value(fieldname: str, hostname: str, attributes: dict[str, str]) -> str | None:
    return hostname if fieldname == "hostname" else attributes.get(fieldname)


def check_constraints(constraints: Iterable[tuple[str, ...]]) -> str | None:
    """An error message for malformed constraints, else None."""
    for c in constraints:
        if len(c) < 2 or c[1].upper() not in SUPPORTED_OPERATORS:
            return f"unsupported constraint {list(c)!r} (operators: {', '.join(sorted(SUPPORTED_OPERATORS))})"
        op = c[1].upper()
        if op in ("LIKE", "UNLIKE", "IS", "MAX_PER") and len(c) < 3:
            return f"constraint {list(c)!r} needs a value"
        if op in ("LIKE", "UNLIKE"):
            try:
                re.compile(c[2])
            except re.error as exc:
                return f"constraint {list(c)!r}: bad regular expression: {exc}"
        if op == "MAX_PER" and not str(c[2]).isdigit():
            return f"constraint {list(c)!r}: MAX_PER needs an integer"
    return None


def constraints_ok(constraints: Iterable[tuple[str, ...]], hostname: str, attributes: dict[str, str],
                   peers: list[tuple[str, dict[str, str]]]) -> bool:
    """Marathon semantics on one agent; `peers` are (hostname, attributes) of the job's live tasks."""
    for c in constraints:
        fieldname, op = c[0], c[1].upper()
        arg = c[2] if len(c) > 2 else None
        value = field_value(fieldname, hostname, attributes)
        others = [field_value(fieldname, h, a) for h, a in peers]
        if op == "LIKE":
            if value is None or not re.fullmatch(arg or "", value):
                return False
        elif op == "UNLIKE":
            if value is not None and re.fullmatch(arg or "", value):
                return False
        elif op in ("CLUSTER", "IS"):
            if value is None:
                return False
            if arg not in (None, ""):
                if value != arg:
                    return False
            elif others and others[0] is not None and value != others[0]:
                return False
        elif op == "UNIQUE":
            if value is None or value in others:
                return False
        elif op == "MAX_PER":
            if value is None or others.count(value) >= int(arg or 0):
                return False
        # GROUP_BY: a soft spread in Marathon; accepted, not enforced.
    return True


def pick_resources(offer_resources: list[dict], need: dict[str, float],
                   used: dict[str, float]) -> list[dict] | None:
    """Task resources taken from the offer's own resource entries (keeping their allocation_info
    and reservations), after `used` has already been taken; None if they do not fit."""
    out: list[dict] = []
    for name, amount in need.items():
        if amount <= 0:
            continue
        remaining = amount
        skip = used.get(name, 0.0)
        for r in offer_resources:
            if r.get("name") != name or "scalar" not in r:
                continue
            avail = float(r["scalar"]["value"])
            take_from_skip = min(skip, avail)
            skip -= take_from_skip
            avail -= take_from_skip
            if avail <= 1e-9:
                continue
            take = min(avail, remaining)
            piece = {k: v for k, v in r.items() if k != "scalar"}
            piece["scalar"] = {"value": round(take, 6)}
            out.append(piece)
            remaining -= take
            if remaining <= 1e-9:
                break
        if remaining > 1e-9:
            return None
    return out


# ---------------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------------

@dataclass
class _Task:
    id: str
    spec: TaskSpec | None
    role: str
    state: str = "QUEUED"          # QUEUED, STAGING, RUNNING, a terminal state, or UNKNOWN (reconcile only)
    agent_id: str | None = None
    contributor: str | None = None
    hostname: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    launched_at: float | None = None   # monotonic, for TaskSpec.timeout
    started_at: float | None = None
    finished_at: float | None = None
    kill_reason: str | None = None
    kill_sent_at: float = 0.0
    last_update: float = 0.0           # monotonic arrival of the latest update
    report: bool = False               # reconcile() asked: report the next update even if unchanged
    start_saved: bool | None = None    # start znode: None none (or its create failed), False create in flight, True there
    start_dropped: bool = False        # its delete was sent
    held_acks: list[dict] = field(default_factory=list)   # ACKNOWLEDGEs waiting for the start znode


class MesosBackend:
    """A Mesos framework implementing `Backend` (see the module docstring)."""

    name = "mesos"

    def __init__(
        self,
        master: str,
        *,
        roles: Iterable[str] = ("*",),
        framework_name: str = "boid-dispatcher",
        user: str = DEFAULT_USER,
        principal: str | None = None,
        secret_file: str | None = None,
        failover_timeout: float = 7 * 24 * 3600.0,
        zk: KazooClient | str | None = None,
        framework_id_path: str | None = None,
        refuse_seconds: float = 5.0,
        unusable_refuse_seconds: float = 600.0,
        heartbeat_misses: int = 4,
        max_backoff: float = 15.0,
        request_timeout: float = 10.0,
        container: str = "MESOS",
        tick: float = 0.1,
        ack_senders: int = 4,
        task_limits: bool = False,
        reconcile_interval: float = 600.0,
        revive_interval: float = 300.0,
        orphan_grace: float = 300.0,
        contributors: Iterable[str] | None = None,
        start: bool = True,
    ) -> None:
        self.roles = list(roles) or ["*"]
        # Authenticated workers (`contributors` given): role -> account of the contributor roles
        # this framework subscribes to; None: the unauthenticated `boid_account` attribute mode.
        self._role_accounts: dict[str, str] | None = (
            None if contributors is None else {contributor_role(a): a for a in contributors})
        if not user:
            raise ValueError("FrameworkInfo.user must be set (the HTTP API does not default it): an account "
                             "that exists on every agent, e.g. 'nobody'")
        self.framework_name, self.user, self.principal = framework_name, user, principal
        # Framework authentication: HTTP basic auth with principal + secret (docs/authentication:
        # the master's --authenticate_frameworks with the basic HTTP authenticator). The secret is
        # read from a file (a mounted secret), never an argument or an environment value.
        self._auth: httpx.BasicAuth | None = None
        if secret_file is not None:
            if not principal:
                raise ValueError("a framework secret needs its principal")
            with open(secret_file, encoding="utf-8") as f:
                secret = f.read().strip()
            if not secret:
                raise ValueError(f"{secret_file}: the framework secret file is empty")
            self._auth = httpx.BasicAuth(principal, secret)
        self.task_limits = task_limits
        self.reconcile_interval, self.revive_interval = reconcile_interval, revive_interval
        self.orphan_grace = orphan_grace
        self.failover_timeout = failover_timeout
        self.refuse_seconds, self.unusable_refuse_seconds = refuse_seconds, unusable_refuse_seconds
        self.heartbeat_misses, self.max_backoff, self.tick = heartbeat_misses, max_backoff, tick
        if container not in ("MESOS", "DOCKER"):
            raise ValueError("container must be MESOS (UCR with a Docker image) or DOCKER")
        self.container = container
        self.framework_id_path = framework_id_path
        self._request_timeout = request_timeout
        self._tasks_parent = False   # <framework_id_path>/tasks exists

        self._master = master
        self._zk_master: KazooClient | None = None
        self._zk_master_path = ""
        self._own_zk: list[KazooClient] = []
        if master.startswith("zk://"):
            rest = master[len("zk://"):]
            hosts, _, path = rest.partition("/")
            if not path:
                raise ValueError("a zk:// master URL needs a path, e.g. zk://host:2181/mesos")
            self._zk_master_path = "/" + path.rstrip("/")
            self._zk_master = KazooClient(hosts=hosts, timeout=request_timeout)
            self._zk_master.start(timeout=request_timeout)
            self._own_zk.append(self._zk_master)
            self._static_url = None
        else:
            self._static_url = master if "://" in master else "http://" + master
            self._static_url = self._static_url.rstrip("/")
        self._zk: KazooClient | None
        if isinstance(zk, str):
            self._zk = KazooClient(hosts=zk, timeout=request_timeout)
            self._zk.start(timeout=request_timeout)
            self._own_zk.append(self._zk)
        else:
            self._zk = zk
        if framework_id_path and self._zk is None:
            raise ValueError("framework_id_path needs a ZooKeeper client (zk=)")

        timeout = httpx.Timeout(request_timeout)
        self._client = httpx.Client(timeout=timeout, follow_redirects=False, auth=self._auth)
        self._stream_client = httpx.Client(timeout=httpx.Timeout(request_timeout, read=None),
                                           follow_redirects=False, auth=self._auth)

        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._tasks: dict[str, _Task] = {}
        self._queued: dict[str, dict[str, _Task]] = {r: {} for r in self.roles}
        self._unit_live: dict[tuple[str, str], list[str]] = {}     # (job, unit) -> contributors
        self._job_live: dict[str, set[str]] = {}                   # job -> live launched task ids
        self._agents: dict[str, tuple[str, dict[str, str]]] = {}   # agent id -> (hostname, attributes)
        self._lost_agents: set[str] = set()
        self._orphans: dict[str, dict] = {}                        # statuses of tasks we do not know
        self._updates: list[TaskUpdate] = []
        self._suppressed: set[str] = set()
        self._declined: set[str] = set()       # roles that declined with a filter since the last REVIVE
        self._outbox: queue.Queue[dict | None] = queue.Queue()
        self._acks: queue.Queue[dict | None] = queue.Queue()   # order-free: several senders

        self.framework_id: str | None = self._load_framework_id()
        self._fid_saved = self.framework_id is not None
        self._agent_accounts: dict[str, str] = self._load_agent_accounts()
        self._uncredited: dict[str, str] = {}   # agent id -> why its offers earn nobody credit (logged once)
        self.master_url: str | None = None
        self.stream_id: str | None = None
        self.heartbeat_interval = 15.0
        self._subscribed = threading.Event()
        self._stop = threading.Event()
        self._closing = False
        self._last_event = time.monotonic()
        self._stream_sock: socket.socket | None = None
        self._leader_hint: str | None = None
        self._leader_node: str | None = None
        self._recon_start = 0.0
        self._recon_remaining: set[str] = set()
        self._recon_next = 0.0
        self._recon_backoff = 0.5
        self.subscriptions = 0           # SUBSCRIBED events seen (tests, status)
        self.offers_seen = 0
        self.tasks_launched = 0
        self.orphans_killed = 0
        self._in_flight = 0              # calls being posted (close() waits for them)
        self.revived_at = time.monotonic()
        self._implicit_next = time.monotonic() + reconcile_interval
        self._orphan_seen: dict[str, float] = {}   # unknown task id -> when first seen (monotonic)
        self._ghosts: set[str] = set()   # tasks reported terminal that an agent says are live: killed
        # master ERROR events and refused calls, the newest MAX_ERRORS
        self.errors: collections.deque[str] = collections.deque(maxlen=MAX_ERRORS)
        self._health = {n: ThreadHealth(n) for n in ("stream", "calls", "acks")}

        self._threads = [threading.Thread(target=self._run_stream, name="mesos-stream", daemon=True),
                         threading.Thread(target=self._run_calls, name="mesos-calls", daemon=True)]
        self._threads += [threading.Thread(target=self._run_acks, name=f"mesos-acks-{n}", daemon=True)
                          for n in range(ack_senders)]
        if self._zk_master is not None:
            self._zk_master.ChildrenWatch(self._zk_master_path, self._on_master_nodes)
        if start:
            self.start()

    def start(self) -> None:
        for t in self._threads:
            if not t.is_alive():
                t.start()

    # -- Backend interface ------------------------------------------------------------------
    def submit(self, task: TaskSpec) -> None:
        # A framework of roles ("*",) serves every protocol: no per-protocol role to honour.
        role = "*" if self.roles == ["*"] else (task.role or self.roles[0])
        error = check_constraints(task.constraints)
        if role not in self._queued:
            error = f"role {role!r} is not one of this framework's roles {self.roles}"
        if not task.command:
            error = "empty command"
        with self._lock:
            if task.task_id in self._tasks and self._tasks[task.task_id].state not in TERMINAL:
                return   # idempotent
            t = _Task(task.task_id, task, role)
            self._tasks[task.task_id] = t
            if error is not None:
                self._finish(t, "FAILED", message=error, ts=time.time())
                return
            self._queued[role][task.task_id] = t
            stale = [r for r in self._offer_roles(role) if r in self._suppressed or r in self._declined]
            if stale:
                self._suppressed -= set(stale)
                self._declined -= set(stale)
                self.revived_at = time.monotonic()
                self._outbox.put({"type": "REVIVE", "revive": {"roles": stale}})

    def updates(self, timeout: float = 0.0) -> list[TaskUpdate]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._updates:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            out, self._updates = self._updates, []
            for u in out:
                if u.state in TERMINAL:
                    t = self._tasks.get(u.task_id)
                    if t is not None:
                        self._drop_start(t)
            return out

    def kill(self, task_id: str) -> None:
        with self._lock:
            t = self._tasks.get(task_id)
            if t is None or t.state in TERMINAL:
                return
            if t.state == "QUEUED":
                self._queued[t.role].pop(task_id, None)
                self._finish(t, "KILLED", message="killed before launch", ts=time.time())
                return
            if t.kill_reason is None:   # idempotent; the calls thread re-sends a KILL that gets lost
                t.kill_reason = "killed"
                self._send_kill(t)

    def reconcile(self, task_ids: list[str]) -> None:
        with self._lock:
            unknown = [tid for tid in task_ids if tid not in self._tasks]
        starts = self._load_starts(unknown)
        with self._lock:
            for tid in task_ids:
                t = self._tasks.get(tid)
                if t is None:
                    t = _Task(tid, None, self.roles[0], state="UNKNOWN")
                    if tid in starts:   # it ran before a failover: its start, as persisted
                        t.started_at, t.start_saved = starts[tid], True
                    self._tasks[tid] = t
                if t.state in TERMINAL:
                    self._emit(t, t.state, message="reconciled (already terminal)")
                    continue
                if t.state == "QUEUED":
                    self._emit(t, "STAGING", message="queued, waiting for an offer")
                    continue
                t.report = True
                orphan = self._orphans.pop(tid, None)
                self._orphan_seen.pop(tid, None)
                if orphan is not None:
                    self._on_status(orphan)
                if t.state not in TERMINAL:
                    self._recon_remaining.add(tid)
            self._recon_start = time.monotonic()
            self._recon_next = 0.0
            self._recon_backoff = 0.5

    def contributors(self) -> list[str]:
        with self._lock:
            return sorted({self._agent_accounts[aid] for aid in self._agents
                           if aid not in self._lost_agents and aid in self._agent_accounts})

    # -- authenticated workers ---------------------------------------------------------------
    def subscribed_roles(self) -> list[str]:
        """FrameworkInfo.roles: the contributor roles (a parent role is not offered its children's
        reservations, resources.cpp:1190-1200, so each must be subscribed), else the task roles."""
        if self._role_accounts:
            return sorted(self._role_accounts)
        return list(self.roles)

    def set_contributors(self, accounts: Iterable[str]) -> None:
        """Follow the known contributors: a changed set re-subscribes with the new roles (the
        same FrameworkID; running tasks are unaffected)."""
        if self._role_accounts is None:
            raise ValueError("set_contributors needs a backend made with contributors=")
        new = {contributor_role(a): a for a in accounts}
        with self._lock:
            if new == self._role_accounts:
                return
            self._role_accounts = new
        log.info("mesos: contributor roles changed (%d), re-subscribing", len(new))
        self._cut_stream()

    def _offer_roles(self, task_role: str) -> list[str]:
        """The subscribed roles whose offers can run a task queued under `task_role`."""
        return self.subscribed_roles() if self._role_accounts else [task_role]

    def _idle_roles(self) -> list[str]:
        """Subscribed roles no queued task could use: to SUPPRESS (lock held)."""
        if self._role_accounts:
            return [] if any(self._queued[r] for r in self.roles) else self.subscribed_roles()
        return [r for r in self.roles if not self._queued[r]]

    def _queues_for(self, offer_role: str) -> list[dict[str, _Task]]:
        """The queues an offer of `offer_role` serves, in order (lock held)."""
        if self._role_accounts:
            return [self._queued[r] for r in self.roles]
        q = self._queued.get(offer_role)
        return [q] if q is not None else []

    def close(self, remove: bool = False, kill_running: bool = False) -> None:
        """Stop. Queued tasks are dropped. Running tasks keep running (the default: a SIGTERM
        because Marathon restarts or moves the dispatcher is a failover; the successor subscribes
        with the stored FrameworkID within `failover_timeout` and reconciles them), or are killed
        (`kill_running`), or the whole framework is torn down (`remove`: TEARDOWN, which kills
        every task, and the stored FrameworkID is deleted: the protocol is gone)."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            for q in self._queued.values():
                q.clear()
            live = [t for t in self._tasks.values() if t.state in ("STAGING", "RUNNING") and t.agent_id]
            # calls already on the wire finish first: none may follow a TEARDOWN (the master
            # answers 400 "Framework cannot be found" then, master/http.cpp:616-619)
            self._cond.wait_for(lambda: self._in_flight == 0, timeout=self._request_timeout)
        if (remove or kill_running) and not self._subscribed.is_set():
            self._subscribed.wait(self._request_timeout)   # a teardown is worth a short wait
        torn_down = False
        if self._subscribed.is_set():
            try:
                if remove:
                    self._post({"type": "TEARDOWN"}, closing=True)
                    torn_down = True
                elif kill_running:
                    for t in live:
                        self._post({"type": "KILL", "kill": {"task_id": {"value": t.id},
                                                             "agent_id": {"value": t.agent_id}}}, closing=True)
            except (MesosError, httpx.HTTPError) as exc:
                log.warning("mesos: close: %s", exc)
        if remove and not torn_down:
            # keep the stored id: the next dispatcher of this protocol (if any) can still fail
            # over and tear the framework down; otherwise the master removes it after its failover timeout
            log.error("mesos: could not tear down framework %s (not subscribed); its tasks run until the "
                      "master's failover timeout", self.framework_id)
        if remove and torn_down and self.framework_id_path and self._zk is not None:
            for path in (self.framework_id_path, self.framework_id_path + "-agents"):
                try:
                    self._zk.delete(path, recursive=True)   # with the tasks' start znodes
                except NoNodeError:
                    pass
        self._stop.set()
        self._outbox.put(None)
        for _ in range(len(self._threads)):
            self._acks.put(None)
        self._cut_stream()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout=10)
        self._client.close()
        self._stream_client.close()
        for zk in self._own_zk:
            try:
                zk.stop()
                zk.close()
            except Exception:  # pragma: no cover - best effort on shutdown
                pass

    # -- framework id in ZooKeeper ----------------------------------------------------------
    def _load_framework_id(self) -> str | None:
        if not self.framework_id_path or self._zk is None:
            return None
        try:
            data, _ = self._zk.get(self.framework_id_path)
        except NoNodeError:
            return None
        return data.decode() or None

    @property
    def _agents_path(self) -> str:
        """Agent id -> account beside the framework id; its own znode per mode, so accounts once
        read from attributes are never trusted as reservation-proven ones."""
        return self.framework_id_path + ("-agents" if self._role_accounts is None else "-reserved-agents")  # type: ignore[operator]

    def _load_agent_accounts(self) -> dict[str, str]:
        if not self.framework_id_path or self._zk is None:
            return {}
        try:
            data, _ = self._zk.get(self._agents_path)
            return dict(json.loads(data or b"{}"))
        except (NoNodeError, ValueError):
            return {}

    def _remember_agent(self, agent_id: str, account: str) -> None:
        """Agent -> contributor, kept in ZooKeeper beside the framework id (lock held)."""
        if self._agent_accounts.get(agent_id) == account:
            return
        self._agent_accounts[agent_id] = account
        if not self.framework_id_path or self._zk is None:
            return
        path, data = self._agents_path, json.dumps(self._agent_accounts).encode()
        try:
            self._zk.set(path, data)
        except NoNodeError:
            try:
                self._zk.create(path, data, makepath=True)
            except NodeExistsError:
                self._zk.set(path, data)

    def _save_framework_id(self, fid: str) -> None:
        if not self.framework_id_path or self._zk is None:
            return
        try:
            self._zk.create(self.framework_id_path, fid.encode(), makepath=True)
        except NodeExistsError:
            self._zk.set(self.framework_id_path, fid.encode())

    # -- tasks' starts in ZooKeeper (see the module docstring) ---------------------------------
    def _start_path(self, task_id: str) -> str | None:
        if not self.framework_id_path or self._zk is None:
            return None
        return f"{self.framework_id_path}/tasks/{quote(task_id, safe='')}"

    def _save_start(self, t: _Task) -> None:
        """Send the create of the task's start znode (lock held); acknowledgements of its updates
        wait for it (`held_acks`)."""
        path = self._start_path(t.id)
        if path is None or t.started_at is None or t.start_dropped:
            return
        assert self._zk is not None
        t.start_saved = False
        try:
            if not self._tasks_parent:
                self._zk.ensure_path(f"{self.framework_id_path}/tasks")
                self._tasks_parent = True
            result = self._zk.create_async(path, repr(t.started_at).encode())
        except _ZK_ERRORS as exc:   # ZooKeeper unreachable: not acknowledged, the agent re-sends
            log.warning("mesos: saving the start of %s: %r", t.id, exc)
            t.start_saved = None
            t.held_acks.clear()
            return
        result.rawlink(lambda r, t=t: self._start_save_done(t, r))

    def _start_save_done(self, t: _Task, result: Any) -> None:
        """The create answered (kazoo's callback thread): release or drop the held ACKNOWLEDGEs."""
        try:
            result.get_nowait()
            ok = True
        except NodeExistsError:    # saved by a process before this one
            ok = True
        except _ZK_ERRORS as exc:
            log.warning("mesos: saving the start of %s: %r (the agent will re-send the update)", t.id, exc)
            ok = False
        with self._lock:
            acks, t.held_acks = t.held_acks, []
            t.start_saved = True if ok else None
        if ok:
            for ack in acks:
                self._acks.put(ack)

    def _drop_start(self, t: _Task) -> None:
        """The task's terminal update was reported: delete its start znode (lock held). Sent after
        its create on the same session, so ZooKeeper applies them in that order."""
        if t.start_saved is None or t.start_dropped:
            return
        path = self._start_path(t.id)
        if path is None:
            return
        assert self._zk is not None
        t.start_dropped = True
        try:
            self._zk.delete_async(path).rawlink(lambda r, tid=t.id: self._start_drop_done(tid, r))
        except _ZK_ERRORS as exc:
            log.warning("mesos: deleting the start of %s: %r", t.id, exc)

    @staticmethod
    def _start_drop_done(task_id: str, result: Any) -> None:
        try:
            result.get_nowait()
        except NoNodeError:
            pass
        except _ZK_ERRORS as exc:
            log.warning("mesos: deleting the start of %s: %r", task_id, exc)

    def _load_starts(self, task_ids: list[str]) -> dict[str, float]:
        """Persisted starts of these tasks (reads sent at once, then collected)."""
        if not task_ids or self._start_path("") is None:
            return {}
        assert self._zk is not None
        pending = {}
        for tid in task_ids:
            try:
                pending[tid] = self._zk.get_async(self._start_path(tid))
            except _ZK_ERRORS as exc:
                log.warning("mesos: reading the start of %s: %r", tid, exc)
        starts: dict[str, float] = {}
        for tid, res in pending.items():
            try:
                data, _ = res.get(timeout=self._request_timeout)
                starts[tid] = float(data.decode())
            except NoNodeError:
                pass
            except _ZK_ERRORS as exc:
                log.warning("mesos: reading the start of %s: %r", tid, exc)
        return starts

    # -- master detection -------------------------------------------------------------------
    def _detect(self) -> str:
        with self._lock:
            hint, self._leader_hint = self._leader_hint, None
        if hint:
            return hint
        if self._static_url is not None:
            return self._static_url
        assert self._zk_master is not None
        try:
            nodes = [n for n in self._zk_master.get_children(self._zk_master_path) if n.startswith("json.info_")]
        except NoNodeError:
            nodes = []
        if not nodes:
            raise MesosError(f"no leading master registered under {self._master}")
        leader = min(nodes, key=lambda n: int(n.rsplit("_", 1)[1]))
        data, _ = self._zk_master.get(f"{self._zk_master_path}/{leader}")
        info = json.loads(data)
        addr = info.get("address") or {}
        # by ip first: MasterInfo.hostname is often a name only the master's own network resolves
        # (a container's hostname); address.ip is what it advertises (--advertise_ip)
        host = addr.get("ip")
        if not host and "ip" in info:   # `ip` is packed in network order (mesos.proto MasterInfo.ip)
            host = socket.inet_ntoa(int(info["ip"]).to_bytes(4, "little"))
        host = host or addr.get("hostname") or info.get("hostname")
        port = addr.get("port") or info.get("port") or 5050
        if not host:
            raise MesosError(f"{leader} under {self._master} names no address")
        with self._lock:
            self._leader_node = leader
        return f"http://{host}:{port}"

    def _on_master_nodes(self, children: list[str]) -> bool | None:
        if self._stop.is_set():
            return False
        nodes = [n for n in children if n.startswith("json.info_")]
        leader = min(nodes, key=lambda n: int(n.rsplit("_", 1)[1])) if nodes else None
        with self._lock:
            changed = self._leader_node is not None and leader != self._leader_node
        if changed:
            log.info("mesos: leading master changed (%s), re-subscribing", leader)
            self._cut_stream()
        return None

    @staticmethod
    def _redirect_target(location: str, current: str) -> str:
        """Location from a 307: '//host:port/path', 'host:port' (the doc's example) or a full URL."""
        scheme = urlsplit(current).scheme or "http"
        if location.startswith("//"):
            location = f"{scheme}:{location}"
        elif "://" not in location:
            location = f"{scheme}://{location}"
        parts = urlsplit(location)
        return f"{parts.scheme}://{parts.netloc}"

    # -- the subscription stream ------------------------------------------------------------
    def _framework_info(self, roles: list[str] | None = None) -> dict:
        info: dict[str, Any] = {"user": self.user, "name": self.framework_name,
                                "roles": self.subscribed_roles() if roles is None else roles,
                                "capabilities": [{"type": c} for c in CAPABILITIES],
                                "failover_timeout": float(self.failover_timeout), "checkpoint": True}
        if self.principal:
            info["principal"] = self.principal
        if self.framework_id:
            info["id"] = {"value": self.framework_id}
        return info

    def _run_stream(self) -> None:
        """Subscribe, read, and on any end or error (HTTP, ZooKeeper, a bad event, a bug) subscribe
        again after a backoff that doubles up to `max_backoff`, reset only after a subscription
        that stayed healthy for `max_backoff` seconds (so a master that accepts and drops at once
        is not hammered). Never dies while the backend is open."""
        backoff = 0.1
        health = self._health["stream"]
        while not self._stop.is_set():
            began = time.monotonic()
            subscribed_before = self.subscriptions
            try:
                self._subscribe_once()
            except Exception as exc:   # noqa: BLE001 - this thread must survive anything
                if not self._stop.is_set():
                    self._thread_failed(health, "subscription", exc)
            finally:
                self._subscribed.clear()
                with self._lock:
                    self.stream_id = None
                    self._stream_sock = None
            if self.subscriptions > subscribed_before and time.monotonic() - began >= self.max_backoff:
                backoff = 0.1   # it was a healthy connection
            health.backoff = backoff
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, self.max_backoff)

    def _thread_failed(self, health: ThreadHealth, what: str, exc: BaseException) -> None:
        health.failures += 1
        health.last_error = f"{what}: {type(exc).__name__}: {exc}"
        health.last_error_at = time.time()
        level = logging.WARNING if isinstance(exc, (MesosError, httpx.HTTPError, KazooException,
                                                    KazooTimeoutError, OSError)) else logging.ERROR
        log.log(level, "mesos: %s (retrying)", health.last_error, exc_info=level == logging.ERROR)

    def health(self) -> dict[str, Any]:
        """What status and metrics show about this framework: subscribed or not, its id, and per
        background thread the errors it survived and its current backoff."""
        with self._lock:
            return {
                "subscribed": self._subscribed.is_set(), "framework_id": self.framework_id,
                "master": self.master_url, "subscriptions": self.subscriptions,
                "offers_seen": self.offers_seen, "tasks_launched": self.tasks_launched,
                "orphans_killed": self.orphans_killed, "errors": list(self.errors)[-5:],
                "worker_identity": "reservation" if self._role_accounts is not None else "attribute",
                "uncredited_agents": dict(self._uncredited),
                "threads": {n: dict(vars(h)) for n, h in self._health.items()},
            }

    def _subscribe_once(self) -> None:
        url = self._detect()
        with self._lock:
            roles = self.subscribed_roles()
            suppressed = self._idle_roles()
            self._suppressed = set(suppressed)
            self._declined.clear()
        body: dict[str, Any] = {"type": "SUBSCRIBE", "subscribe": {
            "framework_info": self._framework_info(roles), "suppressed_roles": suppressed}}
        if self.framework_id:
            body["framework_id"] = {"value": self.framework_id}
        for _hop in range(8):
            with self._stream_client.stream("POST", url + API_PATH, json=body,
                                            headers={"Accept": "application/json"}) as resp:
                if resp.status_code == 307:
                    url = self._redirect_target(resp.headers.get("location", ""), url)
                    log.info("mesos: redirected to leading master %s", url)
                    continue
                if resp.status_code != 200:
                    resp.read()
                    raise MesosError(f"SUBSCRIBE answered {resp.status_code}: {resp.text.strip()}")
                stream = resp.extensions.get("network_stream")
                with self._lock:
                    self.master_url = url
                    self.stream_id = resp.headers.get("mesos-stream-id")
                    self._stream_sock = stream.get_extra_info("socket") if stream is not None else None
                    self._last_event = time.monotonic()
                if self._stop.is_set():
                    return
                self._read_events(resp)
                return
        raise MesosError("too many redirects while subscribing")

    def _read_events(self, resp: httpx.Response) -> None:
        buf = bytearray()
        for chunk in resp.iter_raw():
            buf += chunk
            while True:
                nl = buf.find(b"\n")
                if nl < 0:
                    break
                size = int(bytes(buf[:nl]).strip() or b"0")
                end = nl + 1 + size
                if len(buf) < end:
                    break
                record = bytes(buf[nl + 1:end])
                del buf[:end]
                self._last_event = time.monotonic()
                self._on_event(json.loads(record))
                if self._stop.is_set():
                    return
        raise MesosError("the master closed the subscription stream")

    def _cut_stream(self) -> None:
        """Break the SUBSCRIBE connection from another thread (wakes the blocked reader)."""
        with self._lock:
            sock = self._stream_sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # -- events -----------------------------------------------------------------------------
    def _on_event(self, ev: dict) -> None:
        kind = ev.get("type")
        if kind == "SUBSCRIBED":
            sub = ev["subscribed"]
            fid = sub["framework_id"]["value"]
            if fid != self.framework_id or not self._fid_saved:
                # durable before anything is launched under it: if ZooKeeper fails here the
                # subscription ends and is retried (a restart must find the id)
                self.framework_id = fid
                self._save_framework_id(fid)
                self._fid_saved = True
            self.heartbeat_interval = float(sub.get("heartbeat_interval_seconds") or 15.0)
            with self._lock:
                self.subscriptions += 1
                # reconciliation.md: explicit reconciliation after every (re-)registration
                self._recon_remaining |= {t.id for t in self._tasks.values()
                                          if t.state in ("STAGING", "RUNNING", "UNKNOWN")}
                self._recon_start = time.monotonic()
                self._recon_next = 0.0
                self._recon_backoff = 0.5
            self._subscribed.set()
            log.info("mesos: subscribed as framework %s to %s", fid, self.master_url)
        elif kind == "OFFERS":
            self._on_offers([Offer.from_json(o) for o in ev["offers"].get("offers", [])])
        elif kind == "UPDATE":
            status = ev["update"]["status"]
            ack = None
            if status.get("uuid") and status.get("agent_id"):
                ack = {"type": "ACKNOWLEDGE", "acknowledge": {
                    "agent_id": status["agent_id"], "task_id": status["task_id"], "uuid": status["uuid"]}}
            with self._lock:
                self._on_status(status)
                t = self._tasks.get(status["task_id"]["value"])
                if ack is not None and t is not None and t.state not in TERMINAL \
                        and t.started_at is not None and self._start_path(t.id) is not None \
                        and not t.start_dropped:
                    if t.start_saved is False:    # acknowledged once its start is durable
                        t.held_acks.append(ack)
                        ack = None
                    elif t.start_saved is None:   # not durable: unacknowledged, the agent re-sends
                        ack = None
            if ack is not None:
                self._acks.put(ack)
        elif kind == "FAILURE":
            fail = ev["failure"]
            if "agent_id" in fail and "executor_id" not in fail:
                self._on_agent_lost(fail["agent_id"]["value"])
        elif kind == "ERROR":
            # Event.Error {message} (scheduler.proto; src/internal/evolve.cpp:320-329)
            message = str((ev.get("error") or {}).get("message", ""))
            self.errors.append(f"master ERROR event: {message}")
            log.error("mesos: master error: %s", message)
            if message == FRAMEWORK_REMOVED:
                self._forget_framework()
            raise MesosError(f"master ERROR event: {message}")
        # HEARTBEAT, RESCIND (we hold no offers), MESSAGE and others need nothing.

    def _forget_framework(self) -> None:
        """The master removed our framework (failover timeout passed, or torn down): its tasks were
        killed with it, so report them LOST and subscribe as a new framework. The stored id and
        the tasks' start znodes go too, so no restart re-subscribes with the dead id."""
        dead = self.framework_id
        log.warning("mesos: framework %s was removed by the master; subscribing as a new framework", dead)
        with self._lock:
            self.framework_id = None
            self._fid_saved = False
            self._tasks_parent = False
            for t in list(self._tasks.values()):
                if t.state in ("STAGING", "RUNNING", "UNKNOWN"):
                    self._finish(t, "LOST", message=f"framework {dead} was removed by the master",
                                 ts=time.time(), reason="REASON_FRAMEWORK_REMOVED")
        if self.framework_id_path and self._zk is not None:
            try:
                data, _ = self._zk.get(self.framework_id_path)
                if data.decode() == dead:
                    self._zk.delete(self.framework_id_path, recursive=True)
            except NoNodeError:
                pass

    def _on_agent_lost(self, agent_id: str) -> None:
        with self._lock:
            self._lost_agents.add(agent_id)
            for t in list(self._tasks.values()):
                if t.agent_id == agent_id and t.state in ("STAGING", "RUNNING"):
                    self._finish(t, "LOST", message="agent lost (FAILURE)", ts=time.time(),
                                 reason="REASON_AGENT_REMOVED")

    def _on_status(self, st: dict) -> None:
        """Fold one TaskStatus into our view (lock held)."""
        tid = st["task_id"]["value"]
        t = self._tasks.get(tid)
        if t is None:
            # Unknown to us: kept for a reconcile() after a failover; dropped if nobody claims it
            # within `orphan_grace`, and then killed if it is live (see _on_tick)
            self._orphans[tid] = st
            self._orphan_seen.setdefault(tid, time.monotonic())
            return
        t.last_update = time.monotonic()
        if t.state in TERMINAL:
            if st["state"] in _LIVE_MESOS:
                # reported ended (LOST: its agent was cut off, or the framework failed over) and
                # yet it runs: it was re-queued, so this copy must not run on and be paid twice
                # (high-availability-framework-guide.md:393-400)
                agent = (st.get("agent_id") or {}).get("value")
                if tid not in self._ghosts:
                    log.warning("mesos: task %s came back (%s) after it was reported %s: killing it",
                                tid, st["state"], t.state)
                self._ghosts.add(tid)
                kill: dict[str, Any] = {"task_id": {"value": tid}}
                if agent:
                    kill["agent_id"] = {"value": agent}
                self._outbox.put({"type": "KILL", "kill": kill})
            return
        mstate, reason = st["state"], st.get("reason", "")
        ts = float(st.get("timestamp") or time.time())
        if mstate in ("TASK_LOST", "TASK_DROPPED") and reason == "REASON_INVALID_OFFERS" \
                and t.spec is not None and t.kill_reason is None and t.state == "STAGING":
            self._release(t)
            t.state, t.agent_id, t.contributor, t.launched_at = "QUEUED", None, None, None
            self._queued[t.role][t.id] = t
            roles = self._offer_roles(t.role)
            self._suppressed -= set(roles)
            self._outbox.put({"type": "REVIVE", "revive": {"roles": roles}})
            return
        agent = (st.get("agent_id") or {}).get("value")
        if agent and t.agent_id is None:
            t.agent_id = agent
        if t.agent_id and t.contributor is None:
            if t.agent_id in self._agents:
                t.hostname, t.attributes = self._agents[t.agent_id]
            t.contributor = self._agent_accounts.get(t.agent_id)
            if t.contributor is None and self._role_accounts is None:
                t.contributor = t.attributes.get("boid_account")
        state = map_state(mstate)
        message = st.get("message", "")
        if state == "RUNNING" and t.started_at is None:
            t.started_at = ts
        if state == "RUNNING" and t.start_saved is None:   # first start, or a failed save retried
            self._save_start(t)
        if state in TERMINAL:
            if t.started_at is None and state == "FINISHED":
                t.started_at = ts
            if state == "KILLED" and t.kill_reason and t.kill_reason != "killed":
                message = t.kill_reason
            m = _EXIT.search(message)
            code = 0 if state == "FINISHED" else (int(m.group(1)) if m else None)
            self._finish(t, state, message=message, ts=ts, exit_code=code, reason=reason)
            return
        if state != t.state or t.report:
            t.report = False
            t.state = state
            self._emit(t, state, message=message)

    def _emit(self, t: _Task, state: str, *, message: str = "", exit_code: int | None = None,
              reason: str = "") -> None:
        self._updates.append(TaskUpdate(task_id=t.id, state=state, contributor=t.contributor,  # type: ignore[arg-type]
                                        exit_code=exit_code, message=message, started_at=t.started_at,
                                        finished_at=t.finished_at, reason=reason))
        self._cond.notify_all()

    def _finish(self, t: _Task, state: str, *, message: str, ts: float, exit_code: int | None = None,
                reason: str = "") -> None:
        self._release(t)
        t.state = state
        t.finished_at = ts
        t.report = False
        self._recon_remaining.discard(t.id)
        self._emit(t, state, message=message, exit_code=exit_code, reason=reason)

    def _release(self, t: _Task) -> None:
        if t.spec is None or t.state not in ("STAGING", "RUNNING"):
            return
        live = self._unit_live.get((t.spec.job, t.spec.unit))
        if live and t.contributor in live:
            live.remove(t.contributor)
        self._job_live.get(t.spec.job, set()).discard(t.id)

    # -- offers -----------------------------------------------------------------------------
    def _on_offers(self, offers: list[Offer]) -> None:
        for offer in offers:
            self.offers_seen += 1
            with self._lock:
                credit_offer(offer, self._role_accounts)
                if not offer.contributor and offer.agent_id not in self._uncredited \
                        and offer.agent_id not in self._agent_accounts:
                    # once per agent, not per offer (each is declined for `unusable_refuse_seconds`
                    # per role); an agent credited before only has some unreserved resources too
                    self._uncredited[offer.agent_id] = offer.why_not
                    log.warning("mesos: agent %s (%s) earns nobody credit, its offers are declined: %s",
                                offer.agent_id, offer.hostname, offer.why_not)
                if offer.contributor:
                    self._uncredited.pop(offer.agent_id, None)
                    self._agents[offer.agent_id] = (offer.hostname, offer.attributes)
                    self._lost_agents.discard(offer.agent_id)
                    self._remember_agent(offer.agent_id, offer.contributor)
                if self._closing or not offer.contributor:
                    plan: list[_Task] = []
                    infos: list[dict] = []
                else:
                    plan, infos = self._plan(offer)
                queued_left = any(self._queues_for(offer.role))
            if not offer.contributor:
                self._post_offer_call({"type": "DECLINE", "decline": {
                    "offer_ids": [{"value": offer.id}], "filters": {"refuse_seconds": self.unusable_refuse_seconds}}})
                continue
            if not plan:
                self._post_offer_call({"type": "DECLINE", "decline": {
                    "offer_ids": [{"value": offer.id}], "filters": {"refuse_seconds": self.refuse_seconds}}})
                with self._lock:
                    if queued_left:
                        self._declined.add(offer.role)
                continue
            ok = self._post_offer_call({"type": "ACCEPT", "accept": {
                "offer_ids": [{"value": offer.id}],
                "operations": [{"type": "LAUNCH", "launch": {"task_infos": infos}}],
                "filters": {"refuse_seconds": self.refuse_seconds}}})
            with self._lock:
                if ok:
                    self.tasks_launched += len(plan)
                    self.revived_at = time.monotonic()
                    if queued_left:
                        self._declined.add(offer.role)
                else:   # not launched: back to the queue, in order
                    for t in plan:
                        if t.state == "STAGING":
                            self._release(t)
                            t.state, t.agent_id, t.contributor, t.launched_at = "QUEUED", None, None, None
                            self._queued[t.role][t.id] = t
        with self._lock:
            idle = [r for r in self._idle_roles() if r not in self._suppressed]
            if idle and not self._closing:
                self._suppressed |= set(idle)
                self._outbox.put({"type": "SUPPRESS", "suppress": {"roles": idle}})

    def _plan(self, offer: Offer) -> tuple[list[_Task], list[dict]]:
        """Tasks that fit this offer (lock held); they are marked STAGING on the offer's agent."""
        queued = [t for q in self._queues_for(offer.role) for t in q.values()]
        if not queued:
            return [], []
        avail = offer.scalars()
        used: dict[str, float] = {}
        contributor = offer.contributor
        plan: list[_Task] = []
        infos: list[dict] = []
        for t in queued:
            spec = t.spec
            assert spec is not None
            if avail.get("cpus", 0.0) - used.get("cpus", 0.0) < 0.01:
                break
            if contributor in spec.exclude_contributors:
                continue
            if contributor in self._unit_live.get((spec.job, spec.unit), ()):
                continue
            need = {"cpus": float(spec.resources.cpus), "mem": float(spec.resources.mem),
                    "disk": float(spec.resources.disk), "gpus": float(spec.resources.gpus)}
            if spec.constraints:
                peers = [(self._tasks[i].hostname, self._tasks[i].attributes)
                         for i in self._job_live.get(spec.job, ())]
                if not constraints_ok(spec.constraints, offer.hostname, offer.attributes, peers):
                    continue
            resources = pick_resources(offer.usable, need, used)
            if resources is None:
                continue
            for k, v in need.items():
                used[k] = used.get(k, 0.0) + v
            del self._queued[t.role][t.id]
            t.state, t.agent_id, t.contributor = "STAGING", offer.agent_id, contributor
            t.hostname, t.attributes = offer.hostname, offer.attributes
            t.launched_at = time.monotonic()
            t.kill_reason = None
            self._unit_live.setdefault((spec.job, spec.unit), []).append(contributor or "")
            self._job_live.setdefault(spec.job, set()).add(t.id)
            plan.append(t)
            infos.append(self.task_info(spec, offer.agent_id, resources))
            self._emit(t, "STAGING", message=f"launching on {offer.hostname}")
        return plan, infos

    def task_info(self, spec: TaskSpec, agent_id: str, resources: list[dict]) -> dict:
        """mesos.proto TaskInfo for one task (command, container, env, labels)."""
        env = {"variables": [{"name": k, "type": "VALUE", "value": v} for k, v in sorted(spec.env.items())]}
        docker = bool(spec.image) and self.container == "DOCKER"
        # argv: the command executor execs `value` with `arguments` as the whole argv (argv[0]
        # included, src/launcher/executor.cpp), while the Docker containerizer runs
        # `docker run IMAGE value arguments...` (src/docker/docker.cpp:1054-1060, 1234-1238), so
        # there `arguments` must not repeat argv[0].
        arguments = list(spec.command[1:]) if docker else list(spec.command)
        info: dict[str, Any] = {
            "name": f"boid:{spec.job}:{spec.unit}",
            "task_id": {"value": spec.task_id},
            "agent_id": {"value": agent_id},
            "resources": resources,
            "command": {"shell": False, "value": spec.command[0], "arguments": arguments,
                        "environment": env},
            "labels": {"labels": [{"key": "boid_job", "value": spec.job},
                                  {"key": "boid_unit", "value": spec.unit},
                                  {"key": "boid_output_dir", "value": spec.output_dir}]},
        }
        if self.task_limits:
            # hard caps equal to what the task asked for (TaskInfo.limits, Mesos >= 1.11 masters
            # and agents; validated in src/master/validation.cpp:1608-1652)
            info["limits"] = {"cpus": {"value": float(spec.resources.cpus)},
                              "mem": {"value": float(spec.resources.mem)}}
        if spec.image:
            if self.container == "DOCKER":
                info["container"] = {"type": "DOCKER", "docker": {"image": spec.image}}
            else:
                info["container"] = {"type": "MESOS", "mesos": {"image": {
                    "type": "DOCKER", "docker": {"name": spec.image}}}}
        return info

    # -- calls ------------------------------------------------------------------------------
    def _post(self, call: dict, *, closing: bool = False) -> httpx.Response:
        with self._lock:
            url, stream_id, fid = self.master_url, self.stream_id, self.framework_id
            if self._closing and not closing:   # close() sends the last calls itself
                raise MesosError(f"{call['type']}: the backend is closing")
            self._in_flight += 1
        try:
            return self._post_now(call, url, stream_id, fid)
        finally:
            with self._cond:
                self._in_flight -= 1
                self._cond.notify_all()

    def _post_now(self, call: dict, url: str | None, stream_id: str | None, fid: str | None) -> httpx.Response:
        if url is None or stream_id is None or fid is None:
            raise MesosError("not subscribed")
        body = dict(call, framework_id={"value": fid})
        resp = self._client.post(url + API_PATH, json=body, headers={"Mesos-Stream-Id": stream_id})
        if resp.status_code == 307:
            with self._lock:
                self._leader_hint = self._redirect_target(resp.headers.get("location", ""), url)
            self._cut_stream()
            raise MesosError(f"{call['type']}: master moved to {self._leader_hint}")
        if resp.status_code not in (200, 202):
            msg = f"{call['type']} answered {resp.status_code}: {resp.text.strip()}"
            if resp.status_code != 403:
                self.errors.append(msg)
            raise MesosError(msg)
        return resp

    def _post_offer_call(self, call: dict) -> bool:
        try:
            self._post(call)
            return True
        except (MesosError, httpx.HTTPError) as exc:
            log.warning("mesos: %s", exc)
            return False

    def _send_kill(self, t: _Task) -> None:
        t.kill_sent_at = time.monotonic()
        kill: dict[str, Any] = {"task_id": {"value": t.id}}
        if t.agent_id:
            kill["agent_id"] = {"value": t.agent_id}
        self._outbox.put({"type": "KILL", "kill": kill})

    def _run_calls(self) -> None:
        """The calls thread: survives any error (counted in health(), retried after a backoff)."""
        health = self._health["calls"]
        backoff = 0.1
        while not self._stop.is_set():
            try:
                self._calls_loop()
                return
            except Exception as exc:   # noqa: BLE001 - this thread must survive anything
                self._thread_failed(health, "calls thread", exc)
                health.backoff = backoff
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, self.max_backoff)

    def _calls_loop(self) -> None:
        next_tick = 0.0
        while not self._stop.is_set():
            try:
                call = self._outbox.get(timeout=self.tick)
            except queue.Empty:
                call = None
            if self._stop.is_set():
                return
            if call is not None:
                while not self._subscribed.is_set() and not self._stop.is_set():
                    self._subscribed.wait(self.tick)
                    if time.monotonic() >= next_tick:
                        self._on_tick()
                        next_tick = time.monotonic() + self.tick
                try:
                    self._post(call)
                except (MesosError, httpx.HTTPError) as exc:
                    if not self._closing:   # calls refused while closing are expected
                        log.warning("mesos: %s", exc)
            if time.monotonic() >= next_tick:
                self._on_tick()
                next_tick = time.monotonic() + self.tick

    def _run_acks(self) -> None:
        """ACKNOWLEDGEs need no order, and a slow one stalls that task's next update (the agent
        sends one update at a time), so several threads send them. An ACKNOWLEDGE that fails is
        dropped: the agent re-sends the update until one gets through."""
        health = self._health["acks"]
        while not self._stop.is_set():
            call = self._acks.get()
            if call is None or self._stop.is_set():
                return
            while not self._subscribed.is_set():
                if self._stop.wait(self.tick):
                    return
            try:
                self._post(call)
            except (MesosError, httpx.HTTPError) as exc:
                if not self._closing:   # the agent re-sends an update until acknowledged
                    log.warning("mesos: %s", exc)
            except Exception as exc:   # noqa: BLE001 - this thread must survive anything
                self._thread_failed(health, "acknowledge", exc)

    def _on_tick(self) -> None:
        now = time.monotonic()
        # heartbeat watchdog: a silent stream is as good as a broken one
        with self._lock:
            sock = self._stream_sock
        if sock is not None and now - self._last_event > self.heartbeat_misses * self.heartbeat_interval:
            log.warning("mesos: no event for %.1f s, re-subscribing", now - self._last_event)
            self._last_event = now
            self._cut_stream()
        if not self._subscribed.is_set():
            return
        with self._lock:
            # orphans: tasks of this framework nobody claimed by reconcile() (a task launched by a
            # crashed process whose record was lost, or a job deleted meanwhile): kill them
            for tid, seen in list(self._orphan_seen.items()):
                if now - seen >= self.orphan_grace:
                    st = self._orphans.pop(tid, None)
                    del self._orphan_seen[tid]
                    if st is not None and st.get("state") in _LIVE_MESOS:
                        log.warning("mesos: killing task %s: unknown to this dispatcher", tid)
                        kill: dict[str, Any] = {"task_id": {"value": tid}}
                        if st.get("agent_id"):
                            kill["agent_id"] = st["agent_id"]
                        self._outbox.put({"type": "KILL", "kill": kill})
                        self.orphans_killed += 1
            # implicit reconciliation, periodically (reconciliation.md: "periodically" after the
            # explicit one): the master answers every task it knows, so orphans surface too
            if now >= self._implicit_next:
                self._implicit_next = now + self.reconcile_interval
                self._outbox.put({"type": "RECONCILE", "reconcile": {"tasks": []}})
                # and explicit for every live task, to catch updates lost on the way
                self._recon_remaining |= {t.id for t in self._tasks.values() if t.state in ("STAGING", "RUNNING")}
                self._recon_start, self._recon_next, self._recon_backoff = now, 0.0, 0.5
            # REVIVE safety net: work queued and no launch for `revive_interval`: a lost REVIVE or
            # a filter the master kept would otherwise starve the queue
            waiting = sorted({o for r in self.roles if self._queued[r] for o in self._offer_roles(r)})
            if waiting and now - self.revived_at >= self.revive_interval:
                self.revived_at = now
                self._suppressed -= set(waiting)
                self._declined -= set(waiting)
                self._outbox.put({"type": "REVIVE", "revive": {"roles": waiting}})
            for t in self._tasks.values():   # TaskSpec.timeout
                if t.state in ("STAGING", "RUNNING") and t.kill_reason is None and t.spec is not None \
                        and t.spec.timeout is not None and t.launched_at is not None \
                        and now - t.launched_at > t.spec.timeout:
                    t.kill_reason = f"timed out after {t.spec.timeout:g} s"
                    self._send_kill(t)
                elif t.kill_reason is not None and t.state in ("STAGING", "RUNNING") \
                        and now - t.kill_sent_at > 2.0:
                    self._send_kill(t)   # a KILL can be lost with a broken subscription
            # explicit reconciliation with truncated exponential backoff (reconciliation.md)
            if self._recon_remaining and now >= self._recon_next:
                remaining = {i for i in self._recon_remaining if i in self._tasks
                             and self._tasks[i].state not in TERMINAL
                             and (self._tasks[i].last_update < self._recon_start or self._tasks[i].state == "UNKNOWN")}
                self._recon_remaining = remaining
                if remaining:
                    tasks = []
                    for i in sorted(remaining):
                        entry: dict[str, Any] = {"task_id": {"value": i}}
                        if self._tasks[i].agent_id:
                            entry["agent_id"] = {"value": self._tasks[i].agent_id}
                        tasks.append(entry)
                    self._outbox.put({"type": "RECONCILE", "reconcile": {"tasks": tasks}})
                    self._recon_next = now + self._recon_backoff
                    self._recon_backoff = min(self._recon_backoff * 2, 60.0)
