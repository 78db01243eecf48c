"""TEST DOUBLE of a Mesos master's v1 scheduler HTTP API. Never shipped, never a backend.

No Mesos master runs on these machines, so the `mesos` backend is tested against this in-process
server, written from shared/specs/mesos: docs/scheduler-http-api.md (calls, events, 202/400/403/307
answers, Mesos-Stream-Id, heartbeats, disconnections, master detection), docs/recordio.md (the
stream framing), docs/reconciliation.md (explicit/implicit answers, TASK_LOST for unknown tasks)
and proto/v1/scheduler/scheduler.proto + proto/v1/mesos.proto (message shapes).

* Every call body is checked against the protos by `ProtoChecker`, a minimal proto2 parser of the
  two spec files (messages, nested types, enums, oneofs, maps, required/optional/repeated): unknown
  field names, missing required fields, wrong JSON types, unknown enum names and bad base64 in
  `bytes` fields are errors. Then the call is checked as the master does before acting: the
  sub-message that `type` names must be present, `framework_id` on every non-SUBSCRIBE call, the
  Mesos-Stream-Id header on every non-SUBSCRIBE call and never on SUBSCRIBE. A failure answers
  400 with a text message (as the master does) and is appended to `validation_errors`, so tests
  assert that list stays empty. Launches that do not fit their offer are answered as the master
  does (TASK_ERROR / TASK_LOST with REASON_INVALID_OFFERS) and also recorded there.
  Strictness beyond Mesos: unknown JSON field names are rejected (Mesos ignores them).
* Events sent are checked against `Event` too (`event_errors`), so the double cannot drift.
* A `MesosCluster` holds the state real masters rebuild from agents (agents, frameworks, tasks);
  one or more `MesosMasterDouble` HTTP front-ends share it, and only the elected leader serves:
  the others answer 307 with a Location naming the leader (`cluster.elect(master)`).
* Agents have resources and attributes (incl. `boid_account`); an allocator thread offers each
  agent's free resources to each subscribed, non-suppressed role, honouring DECLINE/ACCEPT filters
  (`refuse_seconds`), cleared by REVIVE.
* Agent identity as the master enforces it: `configure_agent_auth` turns on --authenticate_agents
  with the agents' credentials and --acls; `add_agent(principal=, secret=, reserve_for=ROLE)`
  registers an agent whose resources are statically reserved for ROLE, refused (raising
  `AgentRegistrationRefused`) when unauthenticated or when the local authorizer's
  `register_agents` / `reserve_resources` rules deny its principal (`_registration_refusal`).
  Reserved resources are offered only to their role and its subroles, with
  `Resource.reservations` [{type: STATIC, role}] as the real master sends them, and a launch must
  use them as offered. Launched tasks go TASK_STARTING -> TASK_RUNNING ->
  TASK_FINISHED after `task_seconds` (None: they run until `finish_task`/`fail_task`).
  Status updates carry a uuid and are delivered one at a time per task, re-sent until
  ACKNOWLEDGEd (the agent's status update manager; first retry after 10 s as in Mesos, tests
  shorten it), so a missing ACKNOWLEDGE stalls a task.
* Fault injection: `drop_stream()`, `silence()` (stream stays open, no heartbeats),
  `lose_agent()` (FAILURE + TASK_LOST/TASK_UNREACHABLE + RESCIND), `rescind_offers()`,
  `fail_task()`, `cluster.elect()` (leader change with redirects), and
  `add_agent(..., corrupt_output=True)`: FAULT INJECTION, a cheating agent. The double itself
  does nothing with the flag (Agent.corrupt_output, never sent in offers); the test's `executor`
  hook reads it and alters the outputs of the agent's successful tasks.
* The executor hook plays the agents' command executors: `executor(task_info, agent)` runs a task
  and returns its terminal state; `on_kill(task_id)`, when set, is called whenever the task ends
  without its command ending (KILL, the agent lost, the framework removed), so the test's
  executor stops the command as an agent would (a lost agent's processes vanish with it).
"""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from kazoo.client import KazooClient

from .specs import specs_dir

SPECS = specs_dir() / "mesos"
PROTO_FILES = (SPECS / "proto" / "v1" / "mesos.proto", SPECS / "proto" / "v1" / "scheduler" / "scheduler.proto")


# --------------------------------------------------------------------------------------------
# A minimal proto2 reader: enough of the grammar for mesos.proto and scheduler.proto.
# --------------------------------------------------------------------------------------------

@dataclass
class _Field:
    name: str
    label: str            # "required" | "optional" | "repeated" | "map"
    type: str             # scalar name or fully qualified message/enum name (resolved lazily)
    scope: tuple[str, ...]
    key_type: str = ""


_SCALARS = {"double", "float", "int32", "int64", "uint32", "uint64", "sint32", "sint64", "fixed32",
            "fixed64", "sfixed32", "sfixed64", "bool", "string", "bytes"}
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[A-Za-z_][\w.]*|-?\d[\w.+-]*|[{}\[\]();=<>,]')


class ProtoChecker:
    """Messages, enums and fields of the given .proto files, and a JSON checker over them."""

    def __init__(self, paths: tuple[Path, ...] = PROTO_FILES) -> None:
        self.messages: dict[str, dict[str, _Field]] = {}
        self.enums: dict[str, set[str]] = {}
        for path in paths:
            self._parse(path.read_text())

    # -- parsing ---------------------------------------------------------------------------
    def _parse(self, text: str) -> None:
        text = re.sub(r"//[^\n]*", "", text)
        text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
        toks = _TOKEN.findall(text)
        i = 0
        package: tuple[str, ...] = ()
        while i < len(toks):
            t = toks[i]
            if t == "package":
                package = tuple(toks[i + 1].split("."))
                i += 3
            elif t in ("syntax", "import", "option"):
                while toks[i] != ";":
                    i += 1
                i += 1
            elif t == "message":
                i = self._message(toks, i, package)
            elif t == "enum":
                i = self._enum(toks, i, package)
            elif t == ";":   # an empty statement (mesos.proto has one after a message)
                i += 1
            else:
                raise ValueError(f"unexpected token {t!r}")

    def _enum(self, toks: list[str], i: int, scope: tuple[str, ...]) -> int:
        name = ".".join(scope + (toks[i + 1],))
        values: set[str] = set()
        i += 3  # enum NAME {
        while toks[i] != "}":
            if toks[i] == "option":
                while toks[i] != ";":
                    i += 1
            elif toks[i + 1] == "=":
                values.add(toks[i])
                while toks[i] != ";":
                    i += 1
            i += 1
        self.enums[name] = values
        return i + 1

    def _message(self, toks: list[str], i: int, scope: tuple[str, ...]) -> int:
        inner = scope + (toks[i + 1],)
        fields: dict[str, _Field] = {}
        self.messages[".".join(inner)] = fields
        i += 3
        i = self._body(toks, i, inner, fields)
        return i

    def _body(self, toks: list[str], i: int, scope: tuple[str, ...], fields: dict[str, _Field],
              in_oneof: bool = False) -> int:
        while toks[i] != "}":
            t = toks[i]
            if t == "message":
                i = self._message(toks, i, scope)
                continue
            if t == "enum":
                i = self._enum(toks, i, scope)
                continue
            if t == "oneof":
                i = self._body(toks, i + 3, scope, fields, in_oneof=True)
                continue
            if t == ";":
                i += 1
                continue
            if t in ("option", "reserved", "extensions"):
                while toks[i] != ";":
                    i += 1
                i += 1
                continue
            if t == "map":  # map < K , V > name = N ;
                key, value, name = toks[i + 2], toks[i + 4], toks[i + 6]
                fields[name] = _Field(name, "map", value, scope, key_type=key)
            elif t in ("required", "optional", "repeated"):
                fields[toks[i + 2]] = _Field(toks[i + 2], t, toks[i + 1], scope)
            elif in_oneof:
                fields[toks[i + 1]] = _Field(toks[i + 1], "optional", t, scope)
            else:
                raise ValueError(f"unexpected field token {t!r} in {'.'.join(scope)}")
            while toks[i] != ";":
                i += 1
            i += 1
        return i + 1

    def resolve(self, name: str, scope: tuple[str, ...]) -> str:
        """Proto scoping: the innermost enclosing scope that defines `name` wins."""
        if name in _SCALARS:
            return name
        for n in range(len(scope), -1, -1):
            cand = ".".join(scope[:n] + (name,))
            if cand in self.messages or cand in self.enums:
                return cand
        raise KeyError(f"unresolved type {name} in {'.'.join(scope)}")

    # -- checking --------------------------------------------------------------------------
    def check(self, value: Any, message: str, path: str = "") -> list[str]:
        """Errors (empty when valid) for `value` as the JSON form of `message`."""
        errors: list[str] = []
        self._check_message(value, message, path or message.rsplit(".", 1)[-1], errors)
        return errors

    def _check_message(self, value: Any, message: str, path: str, errors: list[str]) -> None:
        if not isinstance(value, dict):
            errors.append(f"{path}: expected an object for {message}")
            return
        fields = self.messages[message]
        for key, item in value.items():
            f = fields.get(key)
            if f is None:
                errors.append(f"{path}: unknown field '{key}' in {message}")
                continue
            ftype = self.resolve(f.type, f.scope)
            if f.label == "repeated":
                if not isinstance(item, list):
                    errors.append(f"{path}.{key}: expected an array")
                    continue
                for n, elem in enumerate(item):
                    self._check_value(elem, ftype, f"{path}.{key}[{n}]", errors)
            elif f.label == "map":
                if not isinstance(item, dict):
                    errors.append(f"{path}.{key}: expected an object (map)")
                    continue
                for k, elem in item.items():
                    self._check_value(elem, ftype, f"{path}.{key}[{k!r}]", errors)
            else:
                self._check_value(item, ftype, f"{path}.{key}", errors)
        for f in fields.values():
            if f.label == "required" and f.name not in value:
                errors.append(f"{path}: missing required field '{f.name}' of {message}")

    def _check_value(self, value: Any, ftype: str, path: str, errors: list[str]) -> None:
        if ftype in self.messages:
            self._check_message(value, ftype, path, errors)
        elif ftype in self.enums:
            if not isinstance(value, str) or value not in self.enums[ftype]:
                errors.append(f"{path}: {value!r} is not a value of enum {ftype}")
        elif ftype in ("double", "float"):
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) or value in (
                "Infinity", "-Infinity", "NaN")
            if not ok:
                errors.append(f"{path}: expected a number, got {value!r}")
        elif ftype == "bool":
            if not isinstance(value, bool):
                errors.append(f"{path}: expected true/false, got {value!r}")
        elif ftype == "string":
            if not isinstance(value, str):
                errors.append(f"{path}: expected a string, got {value!r}")
        elif ftype == "bytes":
            try:
                base64.b64decode(value, validate=True)
            except Exception:
                errors.append(f"{path}: expected base64 bytes, got {value!r}")
        else:  # integers; 64-bit ones may come as strings in proto3-style JSON
            if isinstance(value, str) and "64" in ftype and re.fullmatch(r"-?\d+", value):
                value = int(value)
            if not isinstance(value, int) or isinstance(value, bool):
                errors.append(f"{path}: expected an integer ({ftype}), got {value!r}")
            elif ftype.startswith(("uint", "fixed")) and value < 0:
                errors.append(f"{path}: expected a non-negative integer, got {value!r}")


_CHECKER: ProtoChecker | None = None


def proto_checker() -> ProtoChecker:
    global _CHECKER
    if _CHECKER is None:
        _CHECKER = ProtoChecker()
    return _CHECKER


# Call.Type -> the Call field that carries its payload (scheduler.proto, message Call, lines 476-799).
_CALL_PAYLOAD = {
    "SUBSCRIBE": "subscribe", "ACCEPT": "accept", "DECLINE": "decline", "KILL": "kill",
    "SHUTDOWN": "shutdown", "ACKNOWLEDGE": "acknowledge", "RECONCILE": "reconcile",
    "MESSAGE": "message", "REQUEST": "request", "ACCEPT_INVERSE_OFFERS": "accept_inverse_offers",
    "DECLINE_INVERSE_OFFERS": "decline_inverse_offers",
    "ACKNOWLEDGE_OPERATION_STATUS": "acknowledge_operation_status",
    "RECONCILE_OPERATIONS": "reconcile_operations", "UPDATE_FRAMEWORK": "update_framework",
}
_TERMINAL = {"TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_ERROR", "TASK_LOST", "TASK_DROPPED",
             "TASK_GONE", "TASK_GONE_BY_OPERATOR"}


# --------------------------------------------------------------------------------------------
# Cluster state (what real masters rebuild from agents) and the allocator
# --------------------------------------------------------------------------------------------

WORKER_CONTAINERIZERS = ("mesos", "docker")
WORKER_IMAGE_PROVIDERS = ("docker",)
WORKER_ISOLATION = ("filesystem/linux", "docker/runtime", "cgroups/cpu", "cgroups/mem")


@dataclass
class Agent:
    id: str
    hostname: str
    resources: dict[str, float]
    attributes: dict[str, str]
    active: bool = True
    corrupt_output: bool = False   # FAULT INJECTION for the executor hook (module docstring); not an attribute
    # Agent flags (src/slave/flags.cpp). --switch_user defaults to true: a task runs as its
    # CommandInfo.user or else FrameworkInfo.user, whose sandbox is chowned to that user
    # (src/slave/slave.cpp:10342-10367, src/slave/paths.cpp:893-903); `users` are the accounts
    # that exist on the machine.
    switch_user: bool = True
    users: frozenset[str] = frozenset({"root", "nobody"})
    # --containerizers (default "mesos"), --image_providers (default none) and --isolation: the
    # MESOS containerizer runs a ContainerInfo.mesos.image only with --image_providers=docker and
    # the filesystem/linux isolator (src/slave/containerizer/mesos/containerizer.cpp:310-321,
    # provisioner.cpp:532-534 "Unsupported container image type"); the docker/runtime isolator
    # applies the image's entrypoint/env. A DOCKER ContainerInfo needs "docker" in --containerizers.
    # Defaults here are a boid worker as manifests/deploy/worker configures its agent (checked by
    # tests/unit/test_deploy_manifests.py); Mesos' own defaults are containerizers=("mesos",),
    # image_providers=() and isolation=("posix/cpu", "posix/mem").
    containerizers: tuple[str, ...] = WORKER_CONTAINERIZERS
    image_providers: tuple[str, ...] = WORKER_IMAGE_PROVIDERS
    isolation: tuple[str, ...] = WORKER_ISOLATION
    # The agent's --credential principal (None: it does not authenticate) and the role every one
    # of its --resources is statically reserved for, as in --resources="cpus(ROLE):4;mem(ROLE):..."
    # or --default_role=ROLE (docs/reservation.md:17-30; None: all unreserved, "*"). Simplification:
    # no agent mixes reserved and unreserved resources (Mesos allows it; registration then also
    # authorizes reserving "*", authorization.cpp:116-123, 167-191).
    principal: str | None = None
    reserved_role: str | None = None

    def reservations_json(self) -> list[dict]:
        """Resource.reservations (mesos.proto:1420-1480) of every resource of this agent: one
        STATIC ReservationInfo for its role (a static reservation carries no principal)."""
        return [{"type": "STATIC", "role": self.reserved_role}] if self.reserved_role else []

    def attributes_json(self) -> list[dict]:
        out = []
        for name, value in self.attributes.items():
            if isinstance(value, (int, float)):
                out.append({"name": name, "type": "SCALAR", "scalar": {"value": float(value)}})
            else:
                out.append({"name": name, "type": "TEXT", "text": {"value": str(value)}})
        return out


@dataclass
class Task:
    id: str
    framework_id: str
    agent_id: str
    role: str
    resources: dict[str, float]
    info: dict
    state: str = "TASK_STAGING"
    pending: list[dict] = field(default_factory=list)   # unacknowledged updates, head in flight
    sent_at: float = 0.0
    acked_terminal: bool = False
    finish_at: float | None = None
    retry_interval: float = 10.0     # the agent's status update retry backoff (see _send_update)
    partitioned: bool = False        # its agent is unreachable but the command still runs there


@dataclass
class Framework:
    id: str
    info: dict
    roles: list[str]
    suppressed: set[str] = field(default_factory=set)
    stream: "_Stream | None" = None
    disconnected_at: float | None = None
    # (agent, role) -> (until, refused resources): like Mesos' RefusedOfferFilter, an offer is
    # withheld only while the agent's free resources are within what was refused.
    filters: dict[tuple[str, str], tuple[float, dict[str, float]]] = field(default_factory=dict)
    removed: bool = False

    def capable(self, capability: str) -> bool:
        """FrameworkInfo.Capability.Type (mesos.proto) the framework declared."""
        return any(c.get("type") == capability for c in self.info.get("capabilities", []))


class _Stream:
    """One SUBSCRIBE connection: a queue of events drained by the handler thread."""

    def __init__(self, stream_id: str) -> None:
        self.id = stream_id
        self.events: list[dict | None] = []
        self.cond = threading.Condition()
        self.closed = False
        self.silent = False
        self.sock: socket.socket | None = None

    def put(self, event: dict | None) -> None:
        with self.cond:
            self.events.append(event)
            self.cond.notify()

    def close(self, abrupt: bool = False) -> None:
        self.closed = True
        self.put(None)
        if abrupt and self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class AgentRegistrationRefused(RuntimeError):
    """The master refused an agent's registration (its log line is the message)."""


@dataclass(frozen=True)
class _Entity:
    """acls.proto ACL.Entity: type SOME (the default, with values), ANY or NONE."""

    type: str
    values: tuple[str, ...]

    @classmethod
    def of(cls, j: dict) -> "_Entity":
        return cls(j.get("type", "SOME"), tuple(j.get("values", [])))

    def matches(self, acl: "_Entity") -> bool:
        """The request matches the ACL's entity (authorizer.cpp:66-117, the match matrix)."""
        if self.type == "NONE":
            return acl.type == "NONE"
        if self.type == "ANY":
            return acl.type in ("ANY", "NONE")
        return acl.type in ("ANY", "NONE") or set(self.values) <= set(acl.values)

    def allowed_by(self, acl: "_Entity") -> bool:
        """The ACL's entity allows the request (authorizer.cpp:119-175, the allow matrix)."""
        if self.type == "NONE":
            return acl.type == "NONE"
        if self.type == "ANY":
            return acl.type == "ANY"
        if acl.type == "ANY":
            return True
        return acl.type != "NONE" and set(self.values) <= set(acl.values)


_ROLE_BAD_CHARS = re.compile(r"[\x09\x0a\x0b\x0c\x0d\x20\x7f]")   # roles.cpp:76-82 INVALID_CHARACTERS


def role_error(role: str) -> str | None:
    """Why Mesos refuses a role name, or None (src/common/roles.cpp:85-141)."""
    if role == "*":
        return None
    if role.startswith("/"):
        return f"Role '{role}' cannot start with a slash"
    if role.endswith("/"):
        return f"Role '{role}' cannot end with a slash"
    if "//" in role:
        return f"Role '{role}' cannot contain two adjacent slashes"
    if not role:
        return "Role names cannot be the empty string"
    for c in role.split("/"):
        if c in (".", "..", "*"):
            return f"Role '{role}' cannot include '{c}' as a component"
        if c.startswith("-"):
            return f"Role component '{c}' is invalid because it starts with a dash"
        if _ROLE_BAD_CHARS.search(c):
            return f"Role component '{c}' is invalid because it contains backspace or whitespace"
    return None


class MesosCluster:
    """Agents, frameworks, offers and tasks shared by the master doubles of one cluster."""

    def __init__(self, *, heartbeat_interval: float = 0.5, task_seconds: float | None = 0.05,
                 allocation_interval: float = 0.02, update_retry_seconds: float = 10.0,
                 update_retry_max_seconds: float = 600.0, filter_gpu_resources: bool = True,
                 offer_timeout: float | None = None,
                 executor: "Callable[[dict, Agent], tuple[str, str]] | None" = None,
                 on_kill: "Callable[[str], None] | None" = None) -> None:
        self.heartbeat_interval = heartbeat_interval
        self.task_seconds = task_seconds
        self.allocation_interval = allocation_interval
        # The agent's status update manager re-sends an unacknowledged update after 10 s, doubling
        # up to 10 min (src/slave/constants.hpp:58-59, status_update_manager_process.hpp:565).
        self.update_retry_seconds = update_retry_seconds
        self.update_retry_max_seconds = update_retry_max_seconds
        # master --filter_gpu_resources (default true, src/master/flags.cpp:487): agents with GPUs
        # are offered only to GPU_RESOURCES frameworks (hierarchical.cpp:3095-3105, MESOS-5634).
        self.filter_gpu_resources = filter_gpu_resources
        # Agents that have not re-registered with the current leader (after `elect`): the new
        # leader knows nothing of them or their tasks until they do (high-availability-framework-
        # guide.md "Agent Reregistration"; master.cpp:9024-9033 case (2): no reconcile answer).
        self.recovering: dict[str, float] = {}    # agent id -> when it re-registers (monotonic)
        # --authenticate_http_frameworks with --credentials: principal -> secret. Every scheduler
        # call then needs HTTP Basic credentials (libprocess authenticator.cpp:80-92: 401 with
        # WWW-Authenticate: Basic realm="mesos-master-scheduler", master/constants.hpp:168), and
        # FrameworkInfo.principal, when set, must be the authenticated one (validation.cpp:748-760).
        self.credentials: dict[str, str] | None = None
        self.offer_timeout = offer_timeout
        # When set, a launched task is "run" by calling executor(task_info, agent) on a thread; it
        # returns the terminal state and message (the test plays the agent's command executor).
        self.executor = executor
        # When set, called with a task id when the task ends while its command may still run (KILL,
        # agent lost, framework removed): the test's executor stops the command.
        self.on_kill = on_kill
        self.lock = threading.RLock()
        self.agents: dict[str, Agent] = {}
        self.frameworks: dict[str, Framework] = {}
        self.tasks: dict[str, Task] = {}
        self.offers: dict[str, tuple[str, str, str, dict[str, float], float]] = {}  # id -> fw, agent, role, res, t
        self.leader: MesosMasterDouble | None = None
        self.masters: list[MesosMasterDouble] = []
        self.calls: list[dict] = []
        self.validation_errors: list[str] = []
        self.event_errors: list[str] = []
        self.acks: list[tuple[str, str]] = []       # (task_id, state acknowledged)
        self.agent_refusals: list[str] = []         # tasks an agent could not start (user, container)
        # Agent authentication and authorization (see `configure_agent_auth`): off by default,
        # as in Mesos (--authenticate_agents defaults to false, no --acls: everything allowed).
        self.authenticate_agents = False
        self.agent_credentials: dict[str, str] = {}
        self.acls: dict | None = None
        self.registration_refusals: list[str] = []  # the master's "Refusing registration ..." log lines
        self.offers_sent = 0
        self.offers_log: dict[str, tuple[str, str]] = {}   # every offer made: id -> (agent id, role) (tests)
        self.hold_offers = False                    # stop making new offers (tests)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mesos-double-allocator", daemon=True)
        self._thread.start()

    # -- agents -----------------------------------------------------------------------------
    def configure_agent_auth(self, credentials: dict[str, str], acls: dict | None, *,
                             authenticate_agents: bool = True) -> None:
        """The master's --authenticate_agents, the agents' entries of --credentials (principal ->
        secret; one file for frameworks and agents in Mesos, kept apart here so tests of framework
        authentication need no agent entries) and --acls (the JSON form of acls.proto `ACLs`; only
        `permissive`, `register_agents` and `reserve_resources` are evaluated, the others are
        rejected so a test cannot believe an unevaluated rule protects it)."""
        if acls is not None:
            unknown = set(acls) - {"permissive", "register_agents", "reserve_resources"}
            if unknown:
                raise ValueError(f"ACLs the double does not evaluate: {sorted(unknown)}")
        with self.lock:
            self.authenticate_agents = authenticate_agents
            self.agent_credentials = dict(credentials)
            self.acls = acls

    def add_agent(self, account: str | None, *, cpus: float = 4, mem: float = 4096, disk: float = 10000,
                  gpus: float = 0, hostname: str | None = None, corrupt_output: bool = False,
                  switch_user: bool = True, users: frozenset[str] | set[str] = frozenset({"root", "nobody"}),
                  containerizers: tuple[str, ...] = WORKER_CONTAINERIZERS,
                  image_providers: tuple[str, ...] = WORKER_IMAGE_PROVIDERS,
                  isolation: tuple[str, ...] = WORKER_ISOLATION,
                  principal: str | None = None, secret: str | None = None, reserve_for: str | None = None,
                  **attributes: str | float) -> Agent:
        """An agent starts and registers. `account` becomes its free `boid_account` attribute
        (None: none). `principal`/`secret`: its --credential; `reserve_for`: the role all its
        resources are statically reserved for. A registration the master refuses raises
        `AgentRegistrationRefused` and the agent never appears (see `_registration_refusal`).
        `corrupt_output`: FAULT INJECTION, a cheating agent (see the module docstring)."""
        if image_providers and "filesystem/linux" not in isolation:
            # the agent refuses to start (src/slave/containerizer/mesos/containerizer.cpp:310-316)
            raise ValueError("The 'filesystem/linux' isolator must be enabled for container image support")
        if reserve_for is not None:
            error = role_error(reserve_for)
            if error is not None or reserve_for == "*":   # the agent fails to parse --resources
                raise ValueError(error or "'*' is the unreserved role, not a reservation")
        with self.lock:
            n = len(self.agents)
            host = hostname or f"agent{n}.example"
            refusal = self._registration_refusal(host, principal, secret, reserve_for)
            if refusal is not None:
                self.registration_refusals.append(refusal)
                raise AgentRegistrationRefused(refusal)
            agent_id = f"{uuid.uuid4()}-S{n}"
            attrs: dict[str, Any] = dict(attributes)
            if account is not None:
                attrs["boid_account"] = account
            res = {"cpus": float(cpus), "mem": float(mem), "disk": float(disk)}
            if gpus:
                res["gpus"] = float(gpus)
            agent = Agent(agent_id, host, res, attrs, corrupt_output=corrupt_output,
                          switch_user=switch_user, users=frozenset(users), containerizers=tuple(containerizers),
                          image_providers=tuple(image_providers), isolation=tuple(isolation),
                          principal=principal, reserved_role=reserve_for)
            self.agents[agent_id] = agent
            return agent

    def _registration_refusal(self, hostname: str, principal: str | None, secret: str | None,
                              reserved_role: str | None) -> str | None:
        """What the master logs when it refuses this agent's registration, or None.

        Authentication: an agent with a --credential authenticates first (CRAM-MD5 against the
        master's --credentials); a failed authentication is retried by the agent and it never
        registers. With --authenticate_agents an unauthenticated agent is refused
        (master.cpp:6236-6243). Authorization: `ActionObject::agentRegistration`
        (src/master/authorization.cpp:80-101) asks RESERVE_RESOURCES for the static reservations,
        with the agent's principal as subject ("helps prevent agents from advertising reserved
        resources of arbitrary roles"), and REGISTER_AGENT; refused ones are logged and dropped
        (master.cpp:6309-6328)."""
        pid = f"slave(1)@{hostname}:5051"
        if principal is not None and self.agent_credentials.get(principal) != secret:
            return f"Refusing registration of agent at {pid} because it is not authenticated" \
                   f" (authentication of '{principal}' failed)"
        if principal is None and self.authenticate_agents:
            return f"Refusing registration of agent at {pid} because it is not authenticated"
        ok = self._authorized("register_agents", "agents", principal, None, hierarchical=False)
        if ok and reserved_role is not None:
            ok = self._authorized("reserve_resources", "roles", principal, reserved_role, hierarchical=True)
        if ok:
            return None
        return (f"Refusing registration of agent at {pid} ({hostname}): Not authorized to register agent "
                f"providing resources '{reserved_role or '*'}' "
                + (f"with principal '{principal}'" if principal else "without a principal"))

    def _authorized(self, acl_name: str, object_key: str, principal: str | None, obj: str | None, *,
                    hierarchical: bool) -> bool:
        """The local authorizer (src/authorizer/local/authorizer.cpp): no --acls authorizes
        everything; else the first ACL whose subject and object *match* decides by whether they
        *allow* (approved(), :453-466 and :769-797; match/allow matrices :66-175), and when none
        matches, `permissive` (default true, acls.proto:647). The subject is SOME{principal}, or ANY
        without one (:587-600). REGISTER_AGENT's object is ANY (:411-429); RESERVE_RESOURCES' is
        SOME{role} and its ACL values ending in "/%" match every strictly nested role
        (createHierarchicalRoleACLs :857-904, isNestedHierarchy :808-813)."""
        if self.acls is None:
            return True
        subject = _Entity("SOME", (principal,)) if principal is not None else _Entity("ANY", ())
        target = _Entity("SOME", (obj,)) if obj is not None else _Entity("ANY", ())
        for acl in self.acls.get(acl_name, []):
            subjects, objects = _Entity.of(acl["principals"]), _Entity.of(acl[object_key])
            parts = [objects]
            if hierarchical and objects.type == "SOME":
                plain = tuple(v for v in objects.values if not v.endswith("/%"))
                parts = [_Entity("SOME", (v,)) for v in objects.values if v.endswith("/%")]
                if plain:
                    parts.insert(0, _Entity("SOME", plain))   # order within one ACL does not matter (:861-864)
            for part in parts:
                if part.type == "SOME" and len(part.values) == 1 and part.values[0].endswith("/%"):
                    if target.type == "SOME" and target.values[0].startswith(part.values[0][:-1]):
                        if subject.matches(subjects):
                            return subject.allowed_by(subjects)
                elif subject.matches(subjects) and target.matches(part):
                    return subject.allowed_by(subjects) and target.allowed_by(part)
        return bool(self.acls.get("permissive", True))

    def agent_by_account(self, account: str) -> Agent:
        """The agent authenticated as `account`, else the one whose boid_account attribute names it."""
        return next((a for a in self.agents.values() if a.principal == account), None) or \
            next(a for a in self.agents.values() if a.attributes.get("boid_account") == account)

    def lose_agent(self, agent_id: str, *, partitioned: bool = False) -> None:
        """The agent is marked unreachable and removed: FAILURE, RESCIND of its offers, and per
        active task TASK_UNREACHABLE for PARTITION_AWARE frameworks, TASK_LOST for the others
        (master.cpp:10992-11025, reason REASON_SLAVE_REMOVED = v1 REASON_AGENT_REMOVED).
        `partitioned`: the machine is only cut off, its commands keep running, and
        `reconnect_agent` brings them back (a framework may see TASK_LOST then TASK_RUNNING:
        high-availability-framework-guide.md:393-400). Otherwise its processes vanish with it."""
        with self.lock:
            agent = self.agents[agent_id]
            agent.active = False
            for fw in self.frameworks.values():
                self._emit(fw, {"type": "FAILURE", "failure": {"agent_id": {"value": agent_id}}})
            for oid, (fw_id, a, _r, _res, _t) in list(self.offers.items()):
                if a == agent_id:
                    self._rescind(oid)
            for task in self.tasks.values():
                if task.agent_id == agent_id and task.state not in _TERMINAL and task.state != "TASK_UNREACHABLE":
                    fw = self.frameworks.get(task.framework_id)
                    aware = fw is not None and fw.capable("PARTITION_AWARE")
                    task.pending.clear()   # the master speaks for the agent now
                    self._transition(task, "TASK_UNREACHABLE" if aware else "TASK_LOST", source="SOURCE_MASTER",
                                     reason="REASON_AGENT_REMOVED", message="Agent removed")
                    task.partitioned = partitioned
                    if not partitioned:
                        self._stop_command(task.id)

    def reconnect_agent(self, agent_id: str) -> None:
        """A partitioned agent reconnects: its still-running tasks are reported TASK_RUNNING again
        (the agent re-sends their state), even after TASK_LOST/TASK_UNREACHABLE."""
        with self.lock:
            self.agents[agent_id].active = True
            for task in self.tasks.values():
                if task.agent_id == agent_id and task.partitioned:
                    task.partitioned = False
                    task.state = "TASK_STARTING"   # not terminal for the agent: it never stopped
                    task.acked_terminal = False
                    self._transition(task, "TASK_RUNNING", message="agent reconnected")

    # -- tasks ------------------------------------------------------------------------------
    def finish_task(self, task_id: str) -> None:
        with self.lock:
            self._transition(self.tasks[task_id], "TASK_FINISHED")

    def fail_task(self, task_id: str, message: str = "exited with status 1") -> None:
        with self.lock:
            self._transition(self.tasks[task_id], "TASK_FAILED", message=message,
                             reason="REASON_COMMAND_EXECUTOR_FAILED")

    def running(self) -> list[Task]:
        with self.lock:
            return [t for t in self.tasks.values() if t.state == "TASK_RUNNING"]

    def rescind_offers(self) -> int:
        with self.lock:
            ids = list(self.offers)
            for oid in ids:
                self._rescind(oid)
            return len(ids)

    def elect(self, master: "MesosMasterDouble", *, agents_reregister_after: float = 0.0) -> None:
        """Leader change: streams to the old leader break; it redirects to the new one. The new
        leader knows no agent (nor its tasks, nor their updates) until the agent re-registers,
        `agents_reregister_after` seconds later (see `recovering`)."""
        with self.lock:
            if master is not self.leader:
                until = time.monotonic() + agents_reregister_after
                self.recovering = {a.id: until for a in self.agents.values() if a.active}
            self.leader = master
            for fw in self.frameworks.values():
                if fw.stream is not None:
                    fw.stream.close(abrupt=True)
                    fw.stream = None
                    fw.disconnected_at = time.monotonic()
            self.offers.clear()

    def calls_of(self, type_: str) -> list[dict]:
        with self.lock:
            return [c for c in self.calls if c.get("type") == type_]

    # -- internals --------------------------------------------------------------------------
    def _emit(self, fw: Framework, event: dict) -> None:
        errs = proto_checker().check(event, "mesos.v1.scheduler.Event")
        if errs:
            self.event_errors.extend(errs)
        if fw.stream is not None and not fw.stream.closed:
            fw.stream.put(event)

    def _rescind(self, offer_id: str) -> None:
        fw_id = self.offers.pop(offer_id)[0]
        fw = self.frameworks.get(fw_id)
        if fw is not None:
            self._emit(fw, {"type": "RESCIND", "rescind": {"offer_id": {"value": offer_id}}})

    def _transition(self, task: Task, state: str, *, source: str = "SOURCE_EXECUTOR",
                    reason: str | None = None, message: str | None = None) -> None:
        if task.state in _TERMINAL:
            return
        task.state = state
        status: dict[str, Any] = {"task_id": {"value": task.id}, "state": state, "source": source,
                                  "agent_id": {"value": task.agent_id}, "timestamp": time.time(),
                                  "uuid": base64.b64encode(uuid.uuid4().bytes).decode()}
        if reason:
            status["reason"] = reason
        if message:
            status["message"] = message
        task.pending.append(status)
        if len(task.pending) == 1:
            self._send_update(task)
        if state == "TASK_RUNNING" and self.task_seconds is not None:
            task.finish_at = time.monotonic() + self.task_seconds

    def _stop_command(self, task_id: str) -> None:
        if self.on_kill is not None:
            self.on_kill(task_id)

    def _send_update(self, task: Task, retry: bool = False) -> None:
        fw = self.frameworks.get(task.framework_id)
        if fw is None or not task.pending:
            return
        task.sent_at = time.monotonic()
        # first retry after update_retry_seconds, then doubling up to the maximum
        # (status_update_manager_process.hpp:233, 565)
        task.retry_interval = (min(task.retry_interval * 2, self.update_retry_max_seconds) if retry
                               else self.update_retry_seconds)
        if task.agent_id in self.recovering and task.pending[0].get("source") != "SOURCE_MASTER":
            return   # the leader does not know this agent yet: its updates reach no one
        self._emit(fw, {"type": "UPDATE", "update": {"status": task.pending[0]}})

    def _used(self, agent_id: str) -> dict[str, float]:
        used: dict[str, float] = {}
        for t in self.tasks.values():
            if t.agent_id == agent_id and t.state not in _TERMINAL:
                for k, v in t.resources.items():
                    used[k] = used.get(k, 0.0) + v
        for _fw, a, _r, res, _t in self.offers.values():
            if a == agent_id:
                for k, v in res.items():
                    used[k] = used.get(k, 0.0) + v
        return used

    def _loop(self) -> None:
        while not self._stop.wait(self.allocation_interval):
            try:
                with self.lock:
                    self._tick()
            except Exception as exc:  # pragma: no cover - a double bug must be visible
                self.event_errors.append(f"allocator crashed: {exc!r}")

    def _tick(self) -> None:
        now = time.monotonic()
        for task in self.tasks.values():
            if task.finish_at is not None and now >= task.finish_at and task.state == "TASK_RUNNING":
                task.finish_at = None
                self._transition(task, "TASK_FINISHED")
            if task.pending and now - task.sent_at >= task.retry_interval:
                self._send_update(task, retry=True)   # the agent retries unacknowledged updates
        for agent_id, until in list(self.recovering.items()):
            if now >= until:   # re-registered: the master learns its tasks, the agent re-sends
                del self.recovering[agent_id]
                for task in self.tasks.values():
                    if task.agent_id == agent_id and task.pending:
                        self._send_update(task)
        for fw in self.frameworks.values():
            if fw.removed or fw.stream is not None:
                continue
            timeout = float(fw.info.get("failover_timeout", 0.0))
            if fw.disconnected_at is not None and now - fw.disconnected_at > timeout:
                self._remove_framework(fw)
        if self.offer_timeout is not None:
            for oid, (_f, _a, _r, _res, t) in list(self.offers.items()):
                if now - t > self.offer_timeout:
                    self._rescind(oid)
        if self.hold_offers:
            return
        offers_by_fw: dict[str, list[dict]] = {}
        for fw in self.frameworks.values():
            if fw.stream is None or fw.removed:
                continue
            for role in fw.roles:
                if role in fw.suppressed:
                    continue
                for agent in self.agents.values():
                    if not agent.active or agent.id in self.recovering:
                        continue
                    if self.filter_gpu_resources and agent.resources.get("gpus") \
                            and not fw.capable("GPU_RESOURCES"):
                        continue
                    if any(a == agent.id and f == fw.id for f, a, _r, _res, _t in self.offers.values()):
                        continue
                    # reserved resources go only to their role and its strict subroles, unreserved
                    # ones to any role (Resources::isAllocatableTo, src/common/resources.cpp:1190-1200)
                    reserved = agent.reserved_role
                    if reserved is not None and role != reserved and not role.startswith(reserved + "/"):
                        continue
                    used = self._used(agent.id)
                    free = {k: v - used.get(k, 0.0) for k, v in agent.resources.items()}
                    if free.get("cpus", 0) < 0.01 or free.get("mem", 0) < 1:
                        continue
                    until, refused = fw.filters.get((agent.id, role), (0.0, {}))
                    if until > now and all(v <= refused.get(k, 0.0) + 1e-9 for k, v in free.items()):
                        continue
                    oid = f"{fw.id}-O{self.offers_sent}"
                    self.offers_sent += 1
                    self.offers[oid] = (fw.id, agent.id, role, free, now)
                    self.offers_log[oid] = (agent.id, role)
                    offers_by_fw.setdefault(fw.id, []).append({
                        "id": {"value": oid}, "framework_id": {"value": fw.id},
                        "agent_id": {"value": agent.id}, "hostname": agent.hostname,
                        "allocation_info": {"role": role},
                        "resources": [dict({"name": k, "type": "SCALAR", "scalar": {"value": v},
                                            "allocation_info": {"role": role}},
                                           **({"reservations": agent.reservations_json()} if reserved else {}))
                                      for k, v in free.items()],
                        "attributes": agent.attributes_json(),
                    })
        for fw_id, offers in offers_by_fw.items():
            self._emit(self.frameworks[fw_id], {"type": "OFFERS", "offers": {"offers": offers}})

    def _remove_framework(self, fw: Framework) -> None:
        fw.removed = True
        if fw.stream is not None:
            fw.stream.close()
            fw.stream = None
        for t in self.tasks.values():
            if t.framework_id == fw.id and t.state not in _TERMINAL:
                t.state = "TASK_KILLED"
                t.pending.clear()
                self._stop_command(t.id)
        for oid in [o for o, v in self.offers.items() if v[0] == fw.id]:
            del self.offers[oid]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with self.lock:
            for fw in self.frameworks.values():
                if fw.stream is not None:
                    fw.stream.close()

    # -- calls ------------------------------------------------------------------------------
    def handle_call(self, call: dict, stream_id: str | None) -> tuple[int, str, _Stream | None]:
        """Validate and apply one call: (HTTP status, error text, new stream for SUBSCRIBE)."""
        with self.lock:
            self.calls.append(call)
            errs = proto_checker().check(call, "mesos.v1.scheduler.Call")
            ctype = call.get("type")
            if not errs:
                payload = _CALL_PAYLOAD.get(ctype or "")
                if payload and payload not in call:
                    errs.append(f"Expecting '{payload}' to be present")
                if ctype != "SUBSCRIBE" and "framework_id" not in call:
                    errs.append("Expecting 'framework_id' to be present")
                if ctype == "SUBSCRIBE" and stream_id is not None:
                    errs.append("Subscribe calls should not include the 'Mesos-Stream-Id' header")
                if ctype != "SUBSCRIBE" and stream_id is None:
                    errs.append("All non-subscribe calls should include the 'Mesos-Stream-Id' header")
            if errs:
                msg = "Failed to validate scheduler::Call: " + "; ".join(errs)
                self.validation_errors.append(f"{ctype}: {msg}")
                return 400, msg, None
            if ctype == "SUBSCRIBE":
                return self._subscribe(call)
            fw = self.frameworks.get(call["framework_id"]["value"])
            if fw is None or fw.removed:   # src/master/http.cpp:616-619
                self.validation_errors.append(f"{ctype}: Framework cannot be found")
                return 400, "Framework cannot be found", None
            if fw.stream is None:          # http.cpp:633-634
                return 403, "Framework is not subscribed", None
            if fw.stream.id != stream_id:
                msg = f"The stream ID '{stream_id}' included in this request didn't match the stream ID currently associated with framework ID {fw.id}"
                self.validation_errors.append(f"{ctype}: {msg}")
                return 400, msg, None
            getattr(self, "_call_" + ctype.lower(), lambda fw, call: None)(fw, call)
            return 202, "", None

    def _subscribe(self, call: dict) -> tuple[int, str, _Stream | None]:
        info = call["subscribe"]["framework_info"]
        roles = info.get("roles") or ([info["role"]] if "role" in info else ["*"])
        suppressed = set(call["subscribe"].get("suppressed_roles", []))
        if not suppressed <= set(roles):
            msg = "Suppressed roles must be a subset of the framework's roles"
            self.validation_errors.append("SUBSCRIBE: " + msg)
            return 400, msg, None
        fw_id = (call.get("framework_id") or info.get("id") or {}).get("value")
        if fw_id is not None and fw_id in self.frameworks and self.frameworks[fw_id].removed:
            # master.cpp:2591-2598 validateFramework -> refuseSubscription (master.cpp:2693-2707):
            # a FrameworkErrorMessage, evolved into Event{type: ERROR, error: {message}}
            # (src/internal/evolve.cpp:320-329), then the connection is closed.
            stream = _Stream(str(uuid.uuid4()))
            event = {"type": "ERROR", "error": {"message": "Framework has been removed"}}
            self.event_errors.extend(proto_checker().check(event, "mesos.v1.scheduler.Event"))
            stream.put(event)
            stream.put(None)
            return 200, "", stream
        if fw_id is None:
            fw_id = f"{uuid.uuid4()}-{len(self.frameworks):04d}"
        fw = self.frameworks.get(fw_id)
        if fw is None:   # a new framework, or one a new leader learns about on re-subscription
            fw = Framework(fw_id, info, roles)
            self.frameworks[fw_id] = fw
        fw.info, fw.roles, fw.suppressed = info, roles, suppressed
        if fw.stream is not None:
            fw.stream.close()   # only one subscription connection per framework
        for oid in [o for o, v in self.offers.items() if v[0] == fw.id]:
            del self.offers[oid]   # offers do not survive a (re-)subscription
        stream = _Stream(str(uuid.uuid4()))
        fw.stream, fw.disconnected_at = stream, None
        self._emit(fw, {"type": "SUBSCRIBED", "subscribed": {
            "framework_id": {"value": fw_id}, "heartbeat_interval_seconds": self.heartbeat_interval}})
        for task in self.tasks.values():   # the agents re-send unacknowledged updates
            if task.framework_id == fw_id and task.pending:
                self._send_update(task)
        return 200, "", stream

    def _call_teardown(self, fw: Framework, call: dict) -> None:
        self._remove_framework(fw)

    def _call_decline(self, fw: Framework, call: dict) -> None:
        self._call_accept(fw, {"accept": {"offer_ids": call["decline"].get("offer_ids", []),
                                          "filters": call["decline"].get("filters")}})

    def _call_accept(self, fw: Framework, call: dict) -> None:
        acc = call["accept"]
        refuse = float((acc.get("filters") or {}).get("refuse_seconds", 5.0))
        offers = []
        for oid in acc.get("offer_ids", []):
            off = self.offers.pop(oid["value"], None)
            if off is not None and off[0] == fw.id:
                offers.append(off)
        avail: dict[str, float] = {}
        for _f, _a, _r, res, _t in offers:
            for k, v in res.items():
                avail[k] = avail.get(k, 0.0) + v
        for op in acc.get("operations", []):
            if op.get("type") != "LAUNCH":
                self.validation_errors.append(f"ACCEPT: unsupported operation {op.get('type')}")
                continue
            for info in op.get("launch", {}).get("task_infos", []):
                self._launch(fw, info, offers, avail)
        until = time.monotonic() + refuse
        for _f, agent_id, role, _res, _t in offers:   # what was left unused is refused for a while
            fw.filters[(agent_id, role)] = (until, dict(avail))

    def _launch(self, fw: Framework, info: dict, offers: list, avail: dict[str, float]) -> None:
        tid, agent_id = info["task_id"]["value"], info["agent_id"]["value"]
        status = {"task_id": {"value": tid}, "agent_id": {"value": agent_id}, "source": "SOURCE_MASTER",
                  "timestamp": time.time()}

        def reject(state: str, reason: str, message: str) -> None:
            self.validation_errors.append(f"LAUNCH {tid}: {message}")
            self._emit(fw, {"type": "UPDATE", "update": {"status": dict(
                status, state=state, reason=reason, message=message)}})

        if not offers:
            # Master: "Task launched with invalid offers" -> TASK_LOST (TASK_DROPPED if PARTITION_AWARE).
            self._emit(fw, {"type": "UPDATE", "update": {"status": dict(
                status, state="TASK_DROPPED" if fw.capable("PARTITION_AWARE") else "TASK_LOST",
                reason="REASON_INVALID_OFFERS",
                message="Task launched with invalid offers")}})
            return
        if ("command" in info) == ("executor" in info):
            return reject("TASK_ERROR", "REASON_TASK_INVALID", "Task should have at least one (but not both) of CommandInfo or ExecutorInfo present")
        if tid in self.tasks:
            return reject("TASK_ERROR", "REASON_TASK_INVALID", f"Task has duplicate ID: {tid}")
        if agent_id not in {o[1] for o in offers}:
            return reject("TASK_ERROR", "REASON_TASK_INVALID", "Task uses invalid agent")
        role = offers[0][2]
        need: dict[str, float] = {}
        offered_reservations = self.agents[agent_id].reservations_json()
        for r in info.get("resources", []):
            if (r.get("allocation_info") or {}).get("role") != role:
                return reject("TASK_ERROR", "REASON_TASK_INVALID", f"resource {r['name']} not allocated to role {role}")
            if r.get("reservations", []) != offered_reservations:
                # the offered Resources must contain the task's (validation.cpp:1819-1822), and
                # Resource equality includes the reservations
                return reject("TASK_ERROR", "REASON_TASK_INVALID",
                              f"Task uses resource {r['name']} with reservations {r.get('reservations', [])} "
                              f"that were not offered (offered: {offered_reservations})")
            need[r["name"]] = need.get(r["name"], 0.0) + r.get("scalar", {}).get("value", 0.0)
        if any(v > avail.get(k, 0.0) + 1e-9 for k, v in need.items()):
            return reject("TASK_ERROR", "REASON_TASK_INVALID", f"Task uses more resources {need} than available {avail}")
        limits = info.get("limits") or {}   # master-side validation (src/master/validation.cpp:1608-1652)
        if set(limits) - {"cpus", "mem"}:
            return reject("TASK_ERROR", "REASON_TASK_INVALID", "Only cpus and mem may be included in a task's resource limits")
        for name in ("cpus", "mem"):
            if name in limits and float(limits[name]["value"]) < need.get(name, 0.0):
                return reject("TASK_ERROR", "REASON_TASK_INVALID",
                              f"The task's {name} limit must be greater than or equal to its {name} request")
        for k, v in need.items():
            avail[k] -= v
        task = Task(tid, fw.id, agent_id, role, need, info)
        self.tasks[tid] = task
        refusal = self._agent_refusal(fw, info, self.agents[agent_id])
        if refusal is not None:
            state, reason, message = refusal
            self.agent_refusals.append(f"{tid}: {message}")
            return self._transition(task, state, source="SOURCE_AGENT", reason=reason, message=message)
        self._transition(task, "TASK_STARTING")
        self._transition(task, "TASK_RUNNING")
        if self.executor is not None:
            task.finish_at = None
            agent = self.agents[agent_id]
            threading.Thread(target=self._execute, args=(task, agent), daemon=True).start()

    @staticmethod
    def _agent_refusal(fw: Framework, info: dict, agent: Agent) -> tuple[str, str, str] | None:
        """What the agent answers a task it cannot start, or None."""
        command = info.get("command") or {}
        if agent.switch_user:
            # CommandInfo.user precedes FrameworkInfo.user (slave.cpp:10342-10356); the sandbox is
            # chowned to it and a failure drops the task: TASK_DROPPED for PARTITION_AWARE
            # frameworks, else TASK_LOST, REASON_EXECUTOR_TERMINATED (slave.cpp:2860-2883,
            # 3281-3290; paths.cpp:893-903).
            user = command.get("user", fw.info.get("user", ""))
            if user not in agent.users:
                state = "TASK_DROPPED" if fw.capable("PARTITION_AWARE") else "TASK_LOST"
                return state, "REASON_EXECUTOR_TERMINATED", (
                    f"Failed to chown directory to '{user}': Failed to get user information for '{user}'")
        container = info.get("container")
        if container is not None:
            kind = container.get("type", "MESOS")
            if kind == "DOCKER" and "docker" not in agent.containerizers:
                return "TASK_FAILED", "REASON_CONTAINER_LAUNCH_FAILED", (
                    "Failed to launch container: No containerizer can launch a DOCKER container "
                    f"(--containerizers={','.join(agent.containerizers)})")
            image = (container.get("mesos") or {}).get("image")
            if kind == "MESOS" and image is not None and image.get("type") not in {
                    p.upper() for p in agent.image_providers}:
                # provisioner.cpp:532-534
                return "TASK_FAILED", "REASON_CONTAINER_LAUNCH_FAILED", (
                    f"Failed to launch container: Unsupported container image type: {image.get('type')}")
        return None

    def _execute(self, task: Task, agent: Agent) -> None:
        assert self.executor is not None
        try:
            state, message = self.executor(task.info, agent)
        except Exception as exc:  # the executor itself broke: the task fails
            state, message = "TASK_FAILED", f"executor error: {exc!r}"
        with self.lock:
            self._transition(task, state, message=message or None)

    def _call_acknowledge(self, fw: Framework, call: dict) -> None:
        ack = call["acknowledge"]
        task = self.tasks.get(ack["task_id"]["value"])
        if task is None or not task.pending or task.pending[0]["uuid"] != ack["uuid"]:
            return
        head = task.pending.pop(0)
        self.acks.append((task.id, head["state"]))
        if head["state"] in _TERMINAL:
            task.acked_terminal = True
        if task.pending:
            self._send_update(task)

    def _call_kill(self, fw: Framework, call: dict) -> None:
        tid = call["kill"]["task_id"]["value"]
        task = self.tasks.get(tid)
        if task is None or task.framework_id != fw.id:
            self._emit(fw, {"type": "UPDATE", "update": {"status": {
                "task_id": {"value": tid}, "state": "TASK_LOST", "source": "SOURCE_MASTER",
                "reason": "REASON_TASK_UNKNOWN", "message": "Attempted to kill an unknown task",
                "timestamp": time.time()}}})
            return
        was_live = task.state not in _TERMINAL
        self._transition(task, "TASK_KILLED", message="Command terminated with signal Terminated")
        if was_live:
            self._stop_command(task.id)

    def _call_reconcile(self, fw: Framework, call: dict) -> None:
        asked = call["reconcile"].get("tasks", [])
        if asked:
            ids = [t["task_id"]["value"] for t in asked]
        else:   # implicit: every non-terminal task the master knows
            ids = [t.id for t in self.tasks.values() if t.framework_id == fw.id and t.state not in _TERMINAL]
        aware = fw.capable("PARTITION_AWARE")
        asked_agents = {t["task_id"]["value"]: (t.get("agent_id") or {}).get("value") for t in asked}
        for tid in ids:
            task = self.tasks.get(tid)
            status: dict[str, Any] = {"task_id": {"value": tid}, "source": "SOURCE_MASTER",
                                      "reason": "REASON_RECONCILIATION", "timestamp": time.time()}
            agent_id = task.agent_id if task is not None else asked_agents.get(tid)
            if agent_id in self.recovering or (agent_id is None and self.recovering):
                continue   # case (2), master.cpp:9024-9033: no answer while the agent may still re-register
            if task is None or task.framework_id != fw.id or task.acked_terminal:
                # master.cpp:9024-9140: the cases for an unknown task; TASK_LOST for frameworks
                # that are not PARTITION_AWARE
                agent = self.agents.get(agent_id or "")
                if not aware:
                    state = "TASK_LOST"
                elif agent is None:
                    state = "TASK_UNKNOWN"
                elif agent.active:
                    state = "TASK_GONE"
                else:
                    state = "TASK_UNREACHABLE"
                status.update(state=state, message="Reconciliation: Task is unknown")
                if agent is not None:
                    status["agent_id"] = {"value": agent.id}
            else:
                status.update(state=task.state, agent_id={"value": task.agent_id})
            self._emit(fw, {"type": "UPDATE", "update": {"status": status}})

    def _call_revive(self, fw: Framework, call: dict) -> None:
        roles = set((call.get("revive") or {}).get("roles", [])) or set(fw.roles)
        fw.suppressed -= roles
        fw.filters = {k: v for k, v in fw.filters.items() if k[1] not in roles}

    def _call_suppress(self, fw: Framework, call: dict) -> None:
        fw.suppressed |= set((call.get("suppress") or {}).get("roles", [])) or set(fw.roles)


def effective_argv(info: dict, agent: Agent) -> list[str]:
    """The argv an agent runs for a TaskInfo's CommandInfo: the command executor execs `value`
    with `arguments` as the whole argv (argv[0] included; src/launcher/executor.cpp), a shell
    command is `sh -c value`; the Docker containerizer runs `docker run IMAGE value arguments...`
    (src/docker/docker.cpp:1038-1060, 1234-1238) with the image's entrypoint in front unless shell."""
    cmd = info.get("command") or {}
    if cmd.get("shell", True):
        return ["/bin/sh", "-c", cmd.get("value", "")]
    if (info.get("container") or {}).get("type") == "DOCKER" and "docker" in agent.containerizers:
        return ([cmd["value"]] if "value" in cmd else []) + list(cmd.get("arguments", []))
    return list(cmd.get("arguments") or [cmd["value"]])


# --------------------------------------------------------------------------------------------
# The HTTP front-end
# --------------------------------------------------------------------------------------------

class MesosMasterDouble:
    """One master's /api/v1/scheduler on 127.0.0.1; serves only while it is the cluster's leader."""

    def __init__(self, cluster: MesosCluster | None = None, **cluster_options: Any) -> None:
        self.cluster = cluster or MesosCluster(**cluster_options)
        self.owns_cluster = cluster is None
        self.id = str(uuid.uuid4())
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                double._handle(self)

            def do_GET(self) -> None:
                self._plain(404, "Not found")

            def _plain(self, code: int, text: str, headers: dict[str, str] | None = None) -> None:
                body = text.encode()
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="mesos-double-http", daemon=True)
        self._thread.start()
        self.cluster.masters.append(self)
        if self.cluster.leader is None:
            self.cluster.leader = self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def validation_errors(self) -> list[str]:
        return self.cluster.validation_errors

    def master_info(self) -> dict:
        """This master's MasterInfo (mesos.proto, message MasterInfo) as JSON, as in json.info_ znodes."""
        return {"id": self.id, "ip": 0x0100007F, "port": self.port, "pid": f"master@127.0.0.1:{self.port}",
                "hostname": "127.0.0.1", "version": "1.11.0",
                "address": {"hostname": "127.0.0.1", "ip": "127.0.0.1", "port": self.port}}

    # -- fault injection on this master's subscriptions --------------------------------------
    def _streams(self) -> list[_Stream]:
        with self.cluster.lock:
            return [fw.stream for fw in self.cluster.frameworks.values() if fw.stream is not None]

    def drop_stream(self) -> None:
        """Break every subscription connection (the framework must re-subscribe)."""
        with self.cluster.lock:
            for fw in self.cluster.frameworks.values():
                if fw.stream is not None:
                    fw.stream.close(abrupt=True)
                    fw.stream = None
                    fw.disconnected_at = time.monotonic()

    def silence(self) -> None:
        """Keep the connections open but send nothing more, not even heartbeats (a partition)."""
        for s in self._streams():
            s.silent = True

    def stop(self) -> None:
        if self.owns_cluster:
            self.cluster.stop()
        else:
            for s in self._streams():
                s.close()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # -- request handling -------------------------------------------------------------------
    def _handle(self, h: Any) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        if h.path.split("?")[0] != "/api/v1/scheduler":
            return h._plain(404, "Not found")
        leader = self.cluster.leader
        if leader is not self:
            if leader is None:
                return h._plain(503, "No leader elected")
            return h._plain(307, "", {"Location": f"//127.0.0.1:{leader.port}/api/v1/scheduler"})
        ctype = (h.headers.get("Content-Type") or "").split(";")[0].strip()
        if ctype != "application/json":
            self.cluster.validation_errors.append(f"unsupported Content-Type {ctype!r}")
            return h._plain(415, "Expecting 'Content-Type' of application/json or application/x-protobuf")
        try:
            call = json.loads(raw)
        except ValueError as exc:
            self.cluster.validation_errors.append(f"invalid JSON: {exc}")
            return h._plain(400, f"Failed to parse body into JSON: {exc}")
        if not isinstance(call, dict):
            self.cluster.validation_errors.append("call is not a JSON object")
            return h._plain(400, "Failed to convert JSON into Call protobuf: not an object")
        principal = None
        if self.cluster.credentials is not None:
            principal = self._authenticate(h.headers.get("Authorization") or "")
            if principal is None:
                return h._plain(401, "", {"WWW-Authenticate": 'Basic realm="mesos-master-scheduler"'})
            info = ((call.get("subscribe") or {}).get("framework_info") or {})
            if "principal" in info and info["principal"] != principal:
                msg = (f"Authenticated principal '{principal}' does not match principal "
                       f"'{info['principal']}' set in `FrameworkInfo`")
                self.cluster.validation_errors.append(msg)
                return h._plain(400, "Failed to validate scheduler::Call: " + msg)
        code, msg, stream = self.cluster.handle_call(call, h.headers.get("Mesos-Stream-Id"))
        if stream is None:
            if code == 202:
                h.send_response(202)
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            return h._plain(code, msg)
        self._serve_stream(h, stream)

    def _authenticate(self, header: str) -> str | None:
        scheme, _, token = header.partition(" ")
        if scheme != "Basic":
            return None
        try:
            user, _, password = base64.b64decode(token).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        creds = self.cluster.credentials or {}
        return user if user in creds and creds[user] == password else None

    def _serve_stream(self, h: Any, stream: _Stream) -> None:
        stream.sock = h.connection
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.send_header("Mesos-Stream-Id", stream.id)
        h.end_headers()
        h.close_connection = True
        interval = self.cluster.heartbeat_interval
        try:
            while True:
                with stream.cond:
                    if not stream.events:
                        stream.cond.wait(timeout=interval)
                    batch, stream.events = stream.events, []
                if stream.silent and not stream.closed:
                    continue
                if not batch:
                    batch = [{"type": "HEARTBEAT"}]
                out = bytearray()
                done = False
                for ev in batch:
                    if ev is None:
                        done = True
                        break
                    data = json.dumps(ev).encode()
                    out += str(len(data)).encode() + b"\n" + data
                if out:
                    h.wfile.write(b"%x\r\n" % len(out) + bytes(out) + b"\r\n")
                    h.wfile.flush()
                if done:
                    h.wfile.write(b"0\r\n\r\n")
                    h.wfile.flush()
                    return
        except OSError:   # the scheduler closed the connection: the framework is disconnected
            with self.cluster.lock:   # and its failover timeout starts (master.cpp exited())
                for fw in self.cluster.frameworks.values():
                    if fw.stream is stream:
                        fw.stream = None
                        fw.disconnected_at = time.monotonic()
            return


# --------------------------------------------------------------------------------------------
# ZooKeeper master registration (what a leading master's contender writes)
# --------------------------------------------------------------------------------------------

def register_master(zk: KazooClient, path: str, master: MesosMasterDouble, *, ephemeral: bool = False) -> str:
    """Create `<path>/json.info_<seq>` holding the master's MasterInfo JSON, as Mesos' LeaderContender
    does (label MASTER_INFO_JSON_LABEL = "json.info", sequential znodes; the lowest sequence leads).
    Returns the znode path (delete it to make the next registered master the leader)."""
    zk.ensure_path(path)
    return zk.create(f"{path.rstrip('/')}/json.info_", json.dumps(master.master_info()).encode(),
                     ephemeral=ephemeral, sequence=True)


__all__ = ["AgentRegistrationRefused", "MesosCluster", "role_error", "MesosMasterDouble", "ProtoChecker", "proto_checker", "register_master"]
