"""TEST DOUBLE of Marathon's REST API v2 (apps and deployments). Never shipped, never a backend.

Marathon cannot run on these machines, so the Marathon adapter is tested against this in-process
server written from shared/specs/marathon: the RAML (public/api/v2/apps.raml, deployments.raml,
traits.raml, types/error.raml, types/deploymentResult.raml), the examples (app.json,
app_list.json, deployments.json, deployments_result.json) and docs/deployments.md.

* Every app body received (POST /v2/apps, PUT /v2/apps/{id}) is validated against
  jsonschema-v1.7.236/AppDefinition.json (draft 4, local ``$ref``s resolved); a failure answers 422
  ``{"message": "Object is not valid", "details": [{"path", "errors"}]}`` like Marathon and is
  appended to ``validation_failures`` so a test can assert that list stays empty. Invalid JSON: 400.
* Changes take effect on the app definition at once and start a deployment (``deploymentId``,
  ``Marathon-Deployment-Id`` header). A deployment finishes after ``deployment_polls`` listings of
  GET /v2/deployments that showed it, or after ``deployment_seconds``; with both None it never
  finishes (until cancelled). While it runs, changing an affected app answers 409 "App is locked by
  one or more deployments..." with ``deployments: [{"id"}]``, unless ``?force=true`` (which cancels).
* GET /v2/apps/{id} answers ``{"app": {...}}`` as real Marathon does (the RAML example shows an app
  list there); apps are shown with Marathon's defaults filled in and service ports assigned.
* ``?id=`` on GET /v2/apps filters ids that *contain* the value, ignoring case (RAML: "is or
  contains"; api/v2/AppsResource.scala:501-505 containCaseInsensitive).
* Semantic validation after the schema, as Marathon's validators do (each a 422 with details):
  PathId rules (state/PathId.scala:212-223), constraints (api/v2/validation/
  SchedulingValidation.scala:82-187, e.g. ``["hostname", "UNIQUE", ""]``: "UNIQUE does not accept
  a value"), ``uris`` and ``fetch`` together (api/v2/AppNormalization.scala:37-41).
* Stored in Marathon's canonical form (AppNormalization.scala:20-95): ``uris`` -> ``fetch``,
  ``ports`` -> ``portDefinitions``, ``container.docker.network``/``ipAddress`` -> ``networks``,
  ``container.docker.portMappings`` -> ``container.portMappings``, a health check without port
  gets ``portIndex: 0``; so a GET never shows those deprecated fields.
* A deployment finishes only while every app it affects is healthy: ``healthy(app) -> bool`` (the
  test's stand-in for the app's tasks passing their health checks; docs/deployments.md, a
  deployment step completes once the new tasks are healthy).
* 403 when ``max_running_deployments`` deployments already run (GroupManagerImpl.scala:194-202,
  MarathonExceptionMapper.scala:113); 409 with ``deployments`` for a locked app (:77-78) and 409
  ConflictingChange "An app with id [..] already exists." (AppsResource.scala:124, mapper :110).

Strictness beyond Marathon: a body ``id`` that differs from the URL id is rejected (422).
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import json
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable
from urllib.parse import parse_qsl, unquote, urlsplit

import jsonschema

from .http import HttpDouble
from .specs import specs_dir

SPECS = specs_dir() / "marathon"
SCHEMA_PATH = SPECS / "jsonschema-v1.7.236" / "AppDefinition.json"


def _add_is_operator(node: Any) -> None:
    if isinstance(node, dict):
        if isinstance(node.get("enum"), list) and "MAX_PER" in node["enum"] and "IS" not in node["enum"]:
            node["enum"].append("IS")
        for v in node.values():
            _add_is_operator(v)
    elif isinstance(node, list):
        for v in node:
            _add_is_operator(v)


@functools.lru_cache(maxsize=1)
def app_schema_validator() -> jsonschema.Draft4Validator:
    """A validator for Marathon's AppDefinition: 1.7's AppDefinition.json (draft 4; its $refs are
    local; the last JSON schema Marathon published) plus what 1.8-1.11 added to the App type
    (public/api/v2/types/app.raml: `check` :202, `resourceLimits` :281, `tty` :331, `role` :335;
    constraint.raml:9 the IS operator), since the cluster runs Marathon 1.11."""
    schema = json.loads(SCHEMA_PATH.read_text())
    limit = {"oneOf": [{"type": "number", "minimum": 0}, {"type": "string", "enum": ["unlimited"]}]}
    schema["properties"].update({
        "tty": {"type": "boolean"},
        "role": {"type": "string", "minLength": 1},
        "check": {"type": "object"},
        "resourceLimits": {"type": "object", "additionalProperties": False,
                           "properties": {"cpus": limit, "mem": limit}},
    })
    _add_is_operator(schema)
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


_APP_DEFAULTS: dict[str, Any] = {
    "instances": 1, "cpus": 1, "mem": 128, "disk": 0, "gpus": 0, "executor": "", "constraints": [],
    "fetch": [], "backoffSeconds": 1, "backoffFactor": 1.15, "maxLaunchDelaySeconds": 3600,
    "healthChecks": [], "readinessChecks": [], "dependencies": [], "labels": {}, "env": {},
    "upgradeStrategy": {"minimumHealthCapacity": 1, "maximumOverCapacity": 1}, "requirePorts": False,
    "killSelection": "YOUNGEST_FIRST", "unreachableStrategy": {"inactiveAfterSeconds": 0, "expungeAfterSeconds": 0},
}
_HEALTH_DEFAULTS = {"gracePeriodSeconds": 300, "intervalSeconds": 60, "timeoutSeconds": 20,
                    "maxConsecutiveFailures": 3, "delaySeconds": 15, "ipProtocol": "IPv4"}


@dataclass
class _Deployment:
    id: str
    version: str
    action: str
    apps: list[str]
    before: dict[str, dict | None]
    started: float = field(default_factory=time.monotonic)
    polls: int = 0

    def json(self) -> dict:
        actions = [{"action": self.action, "app": a} for a in self.apps]
        return {"id": self.id, "version": self.version, "affectedApps": list(self.apps), "affectedPods": [],
                "steps": [{"actions": actions}], "currentActions": [dict(a, readinessCheckResults=[]) for a in actions],
                "currentStep": 1, "totalSteps": 1}


@dataclass
class RecordedRequest:
    method: str
    path: str
    params: dict[str, str]
    body: Any
    status: int = 0


class _Answer(Exception):
    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self.status, self.body, self.headers = status, body, headers or {}


class MarathonDouble(HttpDouble):
    """In-process Marathon on 127.0.0.1. Use as a context manager or start()/stop()."""

    thread_name = "marathon-double"

    def __init__(self, *, deployment_polls: int | None = 1, deployment_seconds: float | None = None,
                 max_running_deployments: int = 100,
                 healthy: "Callable[[dict], bool] | None" = None) -> None:
        super().__init__()
        self.max_running_deployments = max_running_deployments   # --max_running_deployments, default 100
        self.healthy = healthy or (lambda app: True)
        self.deployment_polls = deployment_polls
        self.deployment_seconds = deployment_seconds
        self.requests: list[RecordedRequest] = []
        self.validation_failures: list[dict] = []
        self.validator = app_schema_validator()
        self._apps: dict[str, dict] = {}
        self._meta: dict[str, dict] = {}
        self._deployments: dict[str, _Deployment] = {}
        self._next_service_port = 10000
        self._lock = threading.RLock()

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- test helpers ---------------------------------------------------------------------------

    def statuses(self, method: str | None = None) -> list[int]:
        with self._lock:
            return [r.status for r in self.requests if method is None or r.method == method]

    def finish_all_deployments(self) -> None:
        with self._lock:
            for dep_id in list(self._deployments):
                self._finish(dep_id)

    def stored_app(self, app_id: str) -> dict | None:
        with self._lock:
            return copy.deepcopy(self._apps.get(app_id))

    # -- state ----------------------------------------------------------------------------------

    def _tick(self) -> None:
        now = time.monotonic()
        for dep in list(self._deployments.values()):
            by_polls = self.deployment_polls is not None and dep.polls >= self.deployment_polls
            by_time = self.deployment_seconds is not None and now - dep.started >= self.deployment_seconds
            if (by_polls or by_time) and all(self.healthy(self._show(a)) for a in dep.apps if a in self._apps):
                self._finish(dep.id)

    def _finish(self, dep_id: str) -> None:
        dep = self._deployments.pop(dep_id)
        for app_id in dep.apps:
            if app_id in self._meta:
                self._meta[app_id]["tasksRunning"] = self._apps[app_id].get("instances", 1)

    def _locking(self, app_id: str) -> list[_Deployment]:
        return [d for d in self._deployments.values() if app_id in d.apps]

    def _check_lock(self, app_id: str, force: bool) -> None:
        locks = self._locking(app_id)
        if locks and not force:
            raise _Answer(409, {
                "message": "App is locked by one or more deployments. Override with the option '?force=true'. "
                           f"View details at '/v2/deployments/{locks[0].id}'.",
                "deployments": [{"id": d.id} for d in locks]})
        for d in locks:  # force: cancel without rollback
            self._deployments.pop(d.id, None)

    def _check_deployments(self, force: bool) -> None:
        if not force and len(self._deployments) >= self.max_running_deployments:
            raise _Answer(403, {"message": f"Max number ({self.max_running_deployments}) of running deployments is "
                                           "achieved. Wait for existing deployments to complete or cancel one"
                                           "using force=true parameter. You can increase max deployment number by "
                                           "using --max_running_deployments parameter but be advised that this can "
                                           "have negative effects on the performance."})

    def _deploy(self, action: str, app_id: str, before: dict | None) -> _Deployment:
        dep = _Deployment(str(uuid.uuid4()), _now(), action, [app_id], {app_id: copy.deepcopy(before)})
        self._deployments[dep.id] = dep
        if self.deployment_polls == 0 or self.deployment_seconds == 0:
            self._finish(dep.id)
        return dep

    def _validate(self, method: str, path: str, body: Any, url_id: str | None) -> dict:
        errors = sorted(self.validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        details = [{"path": "/" + "/".join(str(p) for p in e.absolute_path), "errors": [e.message]} for e in errors]
        if not errors and url_id is not None and "id" in body and _norm(body["id"]) != url_id:
            details = [{"path": "/id", "errors": [f"id {body['id']!r} does not match the URL id {url_id!r}"]}]
        if not details:
            details = semantic_errors(body, url_id)
        if details:
            self.validation_failures.append({"method": method, "path": path, "body": body, "details": details})
            raise _Answer(422, {"message": "Object is not valid", "details": details})
        return body

    def _reject(self, method: str, path: str, body: Any, details: list[dict]) -> None:
        if details:
            self.validation_failures.append({"method": method, "path": path, "body": body, "details": details})
            raise _Answer(422, {"message": "Object is not valid", "details": details})

    def _store(self, app_id: str, definition: dict) -> None:
        app = canonical(copy.deepcopy(definition))
        app["id"] = app_id
        for pd in app.get("portDefinitions", []):
            if pd.get("port", 0) == 0:
                self._next_service_port += 1
                pd["port"] = self._next_service_port
        self._apps[app_id] = app
        meta = self._meta.setdefault(app_id, {"tasksRunning": 0})
        meta["version"] = _now()

    def _show(self, app_id: str) -> dict:
        app = copy.deepcopy(_APP_DEFAULTS)
        app.update(copy.deepcopy(self._apps[app_id]))
        app["healthChecks"] = [{"protocol": "HTTP", **_HEALTH_DEFAULTS, **hc} for hc in app["healthChecks"]]
        meta = self._meta[app_id]
        running = meta["tasksRunning"]
        app.update({
            "version": meta["version"],
            "versionInfo": {"lastScalingAt": meta["version"], "lastConfigChangeAt": meta["version"]},
            "tasksStaged": 0, "tasksRunning": running, "tasksHealthy": running if app["healthChecks"] else 0,
            "tasksUnhealthy": 0, "deployments": [{"id": d.id} for d in self._locking(app_id)],
        })
        return app

    # -- routes ---------------------------------------------------------------------------------

    def handle(self, method: str, path: str, params: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
        self._tick()
        force = params.get("force") == "true"
        if path == "/v2/apps":
            if method == "GET":
                return 200, {"apps": [self._show(a) for a in sorted(self._apps) if self._matches(a, params)]}, {}
            if method == "POST":
                app = self._validate(method, path, body, None)
                self._reject(method, path, body, runnable_error(app))
                app_id = _norm(app["id"])
                if app_id in self._apps:
                    raise _Answer(409, {"message": f"An app with id [{app_id}] already exists."})
                self._check_lock(app_id, force)
                self._check_deployments(force)
                self._store(app_id, app)
                dep = self._deploy("StartApplication", app_id, None)
                return 201, self._show(app_id), {"Marathon-Deployment-Id": dep.id}
        elif path.startswith("/v2/apps/"):
            app_id = _norm(path[len("/v2/apps"):])
            if method == "GET":
                if app_id not in self._apps:
                    raise _Answer(404, {"message": f"App '{app_id}' does not exist"})
                return 200, {"app": self._show(app_id)}, {}
            if method == "PUT":
                app = self._validate(method, path, body, app_id)
                before = copy.deepcopy(self._apps.get(app_id))
                self._check_lock(app_id, force)
                self._check_deployments(force)
                if before is None:
                    self._reject(method, path, body, runnable_error(app))
                    self._store(app_id, app)
                    dep = self._deploy("StartApplication", app_id, None)
                    return 201, {"deploymentId": dep.id, "version": self._meta[app_id]["version"]}, {"Marathon-Deployment-Id": dep.id}
                merged = {**before, **canonical(copy.deepcopy(app))} if params.get("partialUpdate", "true") != "false" \
                    else dict(app)
                self._reject(method, path, body, runnable_error(merged))
                scale_only = {k: v for k, v in merged.items() if k != "instances"} == {k: v for k, v in before.items() if k != "instances"}
                self._store(app_id, merged if not scale_only else {**before, "instances": merged.get("instances", 1)})
                dep = self._deploy("ScaleApplication" if scale_only else "RestartApplication", app_id, before)
                return 200, {"deploymentId": dep.id, "version": self._meta[app_id]["version"]}, {"Marathon-Deployment-Id": dep.id}
            if method == "DELETE":
                if app_id not in self._apps:
                    raise _Answer(404, {"message": f"App '{app_id}' does not exist"})
                self._check_lock(app_id, force)
                before = self._apps.pop(app_id)
                self._meta.pop(app_id)
                dep = self._deploy("StopApplication", app_id, before)
                return 200, {"deploymentId": dep.id, "version": dep.version}, {"Marathon-Deployment-Id": dep.id}
        elif path == "/v2/deployments" and method == "GET":
            listing = [d.json() for d in self._deployments.values()]
            for d in self._deployments.values():
                d.polls += 1
            return 200, listing, {}
        elif path.startswith("/v2/deployments/") and method == "DELETE":
            dep_id = path[len("/v2/deployments/"):]
            dep = self._deployments.pop(dep_id, None)
            if dep is None:
                raise _Answer(404, {"message": f"DeploymentPlan {dep_id} does not exist"})
            if force:
                return 202, None, {}
            for app_id, before in dep.before.items():  # roll back to the state before the deployment
                if before is None:
                    self._apps.pop(app_id, None)
                    self._meta.pop(app_id, None)
                else:
                    self._store(app_id, before)
            rollback = self._deploy("RestartApplication", dep.apps[0], None)
            rollback.apps = list(dep.apps)
            return 200, {"deploymentId": rollback.id, "version": rollback.version}, {"Marathon-Deployment-Id": rollback.id}
        raise _Answer(404, {"message": f"Unknown resource {method} {path}"})

    def _matches(self, app_id: str, params: dict[str, str]) -> bool:
        app = self._apps[app_id]
        if "id" in params and params["id"].lower() not in app_id.lower():
            return False
        if "cmd" in params and params["cmd"].lower() not in (app.get("cmd") or "").lower():
            return False
        for selector in filter(None, (s.strip() for s in params.get("label", "").split(","))):
            labels = app.get("labels", {})
            if "!=" in selector:
                k, v = (x.strip() for x in selector.split("!=", 1))
                ok = k in labels and labels[k] != v
            elif "==" in selector:
                k, v = (x.strip() for x in selector.split("==", 1))
                ok = labels.get(k) == v
            else:
                ok = selector in labels
            if not ok:
                return False
        return True


_PATH_LABEL = r"([a-z0-9]|[a-z0-9][a-z0-9\-]*[a-z0-9])"
_PATH_SEGMENT = re.compile(rf"^({_PATH_LABEL}\.)*{_PATH_LABEL}|(\.|\.\.)$")   # PathId.scala:212-213
_RESERVED = ("restart", "tasks", "versions", ".", "..")                           # PathId.scala:219
_OPERATORS = ("UNIQUE", "CLUSTER", "GROUP_BY", "LIKE", "MAX_PER", "UNLIKE", "IS")
_IS_VALUE = re.compile(r"^[a-zA-Z0-9_/.-]*$")                                       # SchedulingValidation.scala:174


def _constraint_error(c: list) -> str | None:
    """complyWithAppConstraintRules (SchedulingValidation.scala:143-166, rules :82-127)."""
    if len(c) < 2 or len(c) > 3:
        return "Each constraint must have either 2 or 3 fields"
    field_name, op, value = c[0], c[1], (c[2] if len(c) > 2 else None)
    if not field_name:
        return "illegal constraint specification"
    op = str(op).upper()
    if op not in _OPERATORS:
        return "operator must be one of the following UNIQUE, CLUSTER, GROUP_BY, LIKE, MAX_PER, UNLIKE or IS"
    if op == "UNIQUE" and value is not None:
        return "UNIQUE does not accept a value"
    if op == "GROUP_BY" and value is not None and not re.fullmatch(r"[+-]?\d+", value):
        return "GROUP BY must define an integer value or else no value at all"
    if op == "MAX_PER" and (value is None or not re.fullmatch(r"[+-]?\d+", value)):
        return "MAX_PER requires an integer value"
    if op in ("LIKE", "UNLIKE"):
        if value is None:
            return "LIKE and UNLIKE require a non-empty, regular expression value"
        try:
            re.compile(value)
        except re.error:
            return "is not a valid regular expression"
    if op == "IS" and not _IS_VALUE.match(value or ""):
        return ("IS only supports Mesos text and float values "
                "(see http://mesos.apache.org/documentation/latest/attributes-resources/)")
    return None


def semantic_errors(body: dict, url_id: str | None) -> list[dict]:
    """What Marathon's validators reject after the JSON schema (module docstring)."""
    details: list[dict] = []
    app_id = body.get("id", url_id)
    if app_id is not None:
        path = [p for p in str(app_id).strip("/").split("/") if p != ""]
        if not path:
            details.append({"path": "/id", "errors": ["Path must contain at least one path element"]})
        elif not all(_PATH_SEGMENT.fullmatch(p) for p in path):
            details.append({"path": "/id", "errors": [
                f"must fully match regular expression '{_PATH_SEGMENT.pattern}'"]})
        elif path[-1] in _RESERVED:
            details.append({"path": "/id", "errors": [
                "must not end with any of the following reserved keywords: " + ", ".join(_RESERVED)]})
    for n, c in enumerate(body.get("constraints") or []):
        error = _constraint_error(list(c))
        if error:
            details.append({"path": f"/constraints({n})", "errors": [error]})
    if body.get("uris") and body.get("fetch"):
        details.append({"path": "/", "errors": ["cannot specify both uris and fetch fields"]})
    return details


def runnable_error(app: dict) -> list[dict]:
    """AppValidation.scala:512-523 containsCmdArgsOrContainer, on the whole app (after a partial
    update is merged)."""
    cmd, args = bool(app.get("cmd")), bool(app.get("args"))
    ct = app.get("container")
    container = ct is not None and (ct.get("docker") is not None or ct.get("type", "DOCKER") == "MESOS")
    if (cmd != args) or (not (cmd and args) and container):
        return []
    return [{"path": "/", "errors": ["AppDefinition must either contain one of 'cmd' or 'args', and/or a 'container'."]}]


def canonical(app: dict) -> dict:
    """Translate deprecated fields as Marathon's AppNormalization.forDeprecated does (:20-95)."""
    uris = app.pop("uris", None)
    if uris:
        app["fetch"] = [{"uri": u, "extract": u.endswith((".tgz", ".tar.gz", ".tbz2", ".tar.bz2", ".txz",
                                                             ".tar.xz", ".zip")),
                         "executable": False, "cache": False} for u in uris]
    ports = app.pop("ports", None)
    if ports is not None and "portDefinitions" not in app:
        app["portDefinitions"] = [{"port": p, "protocol": "tcp"} for p in ports]
    ip_address = app.pop("ipAddress", None)
    container = app.get("container")
    docker = (container or {}).get("docker") or {}
    network = docker.pop("network", None)
    if "portMappings" in docker:
        container["portMappings"] = docker.pop("portMappings")
    if "networks" not in app:
        if network == "BRIDGE":
            app["networks"] = [{"mode": "container/bridge"}]
        elif network == "USER" or ip_address is not None:
            app["networks"] = [{"mode": "container", **({"name": ip_address["networkName"]}
                                                       if ip_address and ip_address.get("networkName") else {})}]
    has_ports = bool(app.get("portDefinitions")) or bool((container or {}).get("portMappings"))
    if has_ports:   # normalizeHealthChecks (:20-31): portIndex 0 when neither port nor portIndex
        app["healthChecks"] = [hc if hc.get("protocol") == "COMMAND" or "port" in hc or "portIndex" in hc
                               else {**hc, "portIndex": 0} for hc in app.get("healthChecks", [])]
    return app


def _norm(app_id: str) -> str:
    return "/" + unquote(app_id).strip("/")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    double: MarathonDouble

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _serve(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        parts = urlsplit(self.path)
        params = dict(parse_qsl(parts.query))
        double = self.double
        headers: dict[str, str] = {}
        body: Any = None
        try:
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    raise _Answer(400, {"message": "Invalid JSON", "details": [{"path": "/", "errors": ["error.expected.jsobject"]}]})
            if self.command in ("POST", "PUT") and parts.path.startswith("/v2/apps") and not isinstance(body, dict):
                raise _Answer(400, {"message": "Invalid JSON", "details": [{"path": "/", "errors": ["error.expected.jsobject"]}]})
            with double._lock:
                status, answer, headers = double.handle(self.command, parts.path.rstrip("/") or "/", params, body)
        except _Answer as a:
            status, answer, headers = a.status, a.body, a.headers
        with double._lock:
            double.requests.append(RecordedRequest(self.command, parts.path, params, body, status))
        payload = b"" if answer is None else json.dumps(answer).encode()
        self.send_response(status)
        if payload:
            self.send_header("Content-Type", "application/json")
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = _serve


MarathonDouble.handler = _Handler
