"""Marathon adapter: converge the long-lived apps (protocol dispatchers, the operator itself).

Synchronous (the engine calls it from worker threads), on httpx against Marathon's REST API v2
(RAML in shared/specs/marathon). We do not use the ``marathon`` client (marathon-python 0.13.0):
it needs ``requests`` (not a project dependency), builds ``//`` paths from ids with a leading slash,
and turns app JSON into ``MarathonApp`` objects that drop and re-default fields, which makes both
"send exactly this AppDefinition" and "compare what we own with what is there" unreliable. Plain
dicts in, plain dicts out keeps every request checkable against AppDefinition.json.

Behaviour worth knowing:

* App ids are absolute (``/boid/<protocol>/dispatcher``) and follow Marathon's PathId rules
  (state/PathId.scala:212-223: each segment dot-separated DNS labels, the last not ``restart``,
  ``tasks`` or ``versions``); URLs never get ``//``.
* ``ensure_app`` is idempotent: create if missing, update (PUT, partial) if the definition we own
  changed, else nothing. Marathon answers a GET with its *canonical* form, not what was sent:
  defaults filled in, deprecated fields translated (``uris`` -> ``fetch``, ``ports`` ->
  ``portDefinitions``, ``container.docker.network`` -> ``networks``: api/v2/AppNormalization.scala),
  service ports assigned. So what we sent is fingerprinted into the label ``boid.definition`` (a
  hash of the canonical JSON of the desired definition; Marathon keeps labels verbatim) and the
  app is unchanged when that label matches and every field we own still compares as "desired is
  a subset of what Marathon shows" (catching edits made in Marathon). ``changed_fields`` names
  the fields that differ.
* 409 "App is locked by one or more deployments" (body with ``deployments``) is retried with
  exponential backoff (tenacity) for at most ``locked_timeout`` seconds, then raised as
  ``DeploymentLocked``. ``ensure_app`` then forces (``?force=true``, which cancels the running
  deployment) when the definition changed: a deployment stuck on an old definition (a dispatcher
  that never gets healthy) must not lock out its fix. ``force=True`` forces from the start.
* Errors are typed by status and body shape (api/MarathonExceptionMapper.scala:72-116):
  ``AppNotFound`` (404), ``DeploymentLocked`` (409 AppLockedException), ``ConflictingChange``
  (other 409s) and its subclass ``AppAlreadyExists`` (409 on create), ``TooManyDeployments``
  (403: --max_running_deployments reached; retry later), ``InvalidAppDefinition`` (400/422 with
  Marathon's details), ``MarathonAuthError`` (401), ``MarathonUnavailable`` (transport errors,
  5xx: retry later), ``DeploymentTimeout``.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Mapping

import httpx
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

__all__ = [
    "AppAlreadyExists",
    "AppNotFound",
    "ConflictingChange",
    "DEFINITION_LABEL",
    "DeploymentLocked",
    "DeploymentNotFound",
    "DeploymentRef",
    "DeploymentTimeout",
    "EnsureResult",
    "InvalidAppDefinition",
    "MarathonAuthError",
    "MarathonClient",
    "MarathonError",
    "MarathonUnavailable",
    "TooManyDeployments",
    "app_differences",
    "definition_hash",
    "dispatcher_app",
    "normalize_app_id",
]

AppDef = dict[str, Any]

DISPATCHER_SECRETS_DIR = "/etc/boid/secrets"        # in the dispatcher's container
DISPATCHER_SECRETS_HOST_PATH = "/etc/boid/secrets"  # on the dispatcher machines
# each protocol's own ZooKeeper identity: <host path>/<protocol>/password, made by the operator
# (--dispatcher-identities); only the protocol's own directory is mounted into its app
DISPATCHER_IDENTITY_DIR = "/etc/boid/identity"
DISPATCHER_IDENTITIES_HOST_PATH = "/etc/boid/dispatchers"

# state/PathId.scala:212-213 (ID_PATH_SEGMENT_PATTERN, without its "." / ".." alternative: we
# never send relative ids) and :219-223 (reserved last segments)
_LABEL = r"([a-z0-9]|[a-z0-9][a-z0-9\-]*[a-z0-9])"
_SEGMENT = re.compile(rf"^({_LABEL}\.)*{_LABEL}$")
_RESERVED_LAST = frozenset({"restart", "tasks", "versions"})
DEFINITION_LABEL = "boid.definition"
_EXACT_FIELDS = frozenset({"env", "labels"})
_DYNAMIC_PORT_KEYS = frozenset({"port", "servicePort", "hostPort"})


class MarathonError(Exception):
    """Any Marathon failure. ``status`` is the HTTP status (None for transport errors)."""

    def __init__(self, message: str, *, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class MarathonUnavailable(MarathonError):
    """Marathon cannot be reached or answered 5xx (no leader, overloaded): retry later."""


class MarathonAuthError(MarathonError):
    """401: Marathon wants credentials (403 means too many deployments, see TooManyDeployments)."""


class TooManyDeployments(MarathonError):
    """403: --max_running_deployments (default 100) deployments are running
    (GroupManagerImpl.scala:194-202); retry later."""


class AppNotFound(MarathonError):
    """404 for an app."""


class ConflictingChange(MarathonError):
    """409 ConflictingChangeException: the change conflicts with what exists (an app or group
    with that id, e.g. an app id that is a group's)."""


class AppAlreadyExists(ConflictingChange):
    """409 on create: an app with that id exists."""


class DeploymentLocked(MarathonError):
    """409: the app is locked by running deployments (still so after retrying)."""

    @property
    def deployments(self) -> list[str]:
        items = self.body.get("deployments", []) if isinstance(self.body, dict) else []
        return [d.get("id") for d in items if isinstance(d, dict)]


class InvalidAppDefinition(MarathonError):
    """400/422: Marathon rejected the AppDefinition. ``details`` is Marathon's list of path/errors."""

    @property
    def details(self) -> list[dict]:
        return self.body.get("details", []) if isinstance(self.body, dict) else []


class DeploymentNotFound(MarathonError):
    """404 for a deployment."""


class DeploymentTimeout(MarathonError):
    """wait_for_deployment gave up; the deployment is still running."""


@dataclass(frozen=True)
class DeploymentRef:
    deployment_id: str | None
    version: str | None


@dataclass(frozen=True)
class EnsureResult:
    action: Literal["created", "updated", "unchanged"]
    app_id: str
    deployment: DeploymentRef | None = None
    changed_fields: tuple[str, ...] = ()


def normalize_app_id(app_id: str) -> str:
    """``boid/x/dispatcher`` or ``/boid/x/dispatcher/`` -> ``/boid/x/dispatcher``; rejects ids
    Marathon rejects (422)."""
    segments = app_id.strip().strip("/").split("/")
    if not app_id.strip("/ ") or not all(_SEGMENT.match(s) for s in segments):
        raise ValueError(
            f"invalid Marathon app id {app_id!r}: each '/'-separated segment is one or more '.'-separated "
            "labels of lowercase letters, digits and '-', a label neither starting nor ending with '-'"
        )
    if segments[-1] in _RESERVED_LAST:
        raise ValueError(f"invalid Marathon app id {app_id!r}: it must not end with "
                         f"{', '.join(sorted(_RESERVED_LAST))} (Marathon reserves them)")
    return "/" + "/".join(segments)


def definition_hash(app_def: Mapping[str, Any]) -> str:
    """A fingerprint of an app definition as we send it (without its own label)."""
    body = dict(app_def)
    labels = {k: v for k, v in (body.get("labels") or {}).items() if k != DEFINITION_LABEL}
    body["labels"] = labels
    body["id"] = normalize_app_id(body["id"])
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


def _subset(desired: Any, current: Any, key: str | None = None) -> bool:
    if key in _DYNAMIC_PORT_KEYS and desired == 0 and isinstance(current, int):
        return True  # port 0 = "assign one": Marathon shows the port it assigned
    if isinstance(desired, Mapping):
        return isinstance(current, Mapping) and all(_subset(v, current.get(k), k) for k, v in desired.items())
    if isinstance(desired, (list, tuple)):
        return (isinstance(current, (list, tuple)) and len(desired) == len(current)
                and all(_subset(d, c) for d, c in zip(desired, current)))
    if isinstance(desired, bool) or isinstance(current, bool):
        return desired is current
    return desired == current


# Deprecated fields Marathon translates into canonical ones, so a GET never shows them as sent
# (api/v2/AppNormalization.scala:20-95: uris -> fetch, ports -> portDefinitions, ipAddress and
# container.docker.network -> networks, container.docker.portMappings -> container.portMappings).
_TRANSLATED = frozenset({"uris", "ports", "ipAddress"})


def _canonical_container(container: Any) -> Any:
    if not isinstance(container, Mapping) or not isinstance(container.get("docker"), Mapping):
        return container
    docker = {k: v for k, v in container["docker"].items() if k not in ("network", "portMappings")}
    return {**container, "docker": docker}


def app_differences(desired: Mapping[str, Any], current: Mapping[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """Top-level fields of ``desired`` (the ones we own) whose value ``current`` does not match."""
    skip = {"id", *ignore, *_TRANSLATED}
    out = []
    for key, want in desired.items():
        if key in skip:
            continue
        if key == "container":
            want = _canonical_container(want)
        have = current.get(key)
        same = (want == (have or {})) if key in _EXACT_FIELDS else _subset(want, have, key)
        if not same:
            out.append(key)
    return sorted(out)


class MarathonClient:
    """Marathon REST v2 client. ``url`` is the Marathon base URL (``http://marathon:8080``)."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        auth: tuple[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        locked_timeout: float = 60.0,
        locked_backoff: tuple[float, float] = (0.5, 5.0),
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.locked_timeout = locked_timeout
        self.locked_backoff = locked_backoff
        self._http = httpx.Client(base_url=self.url, timeout=timeout, auth=auth, transport=transport,
                                  headers={"Accept": "application/json", **(headers or {})})

    # -- plumbing ----------------------------------------------------------------------------------

    @staticmethod
    def _app_path(app_id: str) -> str:
        return "/v2/apps/" + normalize_app_id(app_id).lstrip("/")

    def _request(self, method: str, path: str, *, json: Any = None, params: Mapping[str, str] | None = None,
                 what: str = "", creating: bool = False) -> httpx.Response:
        try:
            resp = self._http.request(method, path, json=json, params=params)
        except httpx.TransportError as e:
            raise MarathonUnavailable(f"Marathon {self.url} unreachable ({method} {path}): {e!r}") from e
        if resp.status_code < 400:
            return resp
        try:
            body: Any = resp.json()
        except ValueError:
            body = resp.text[:500]
        message = body.get("message", "") if isinstance(body, dict) else str(body)
        text = f"Marathon {method} {path}: {resp.status_code}: {message}"
        status = resp.status_code
        if status >= 500:
            raise MarathonUnavailable(text, status=status, body=body)
        if status == 401:
            raise MarathonAuthError(text, status=status, body=body)
        if status == 403:
            raise TooManyDeployments(text, status=status, body=body)
        if status in (400, 422):
            details = body.get("details") if isinstance(body, dict) else None
            raise InvalidAppDefinition(f"{text} {details or ''}".strip(), status=status, body=body)
        if status == 404:
            cls = DeploymentNotFound if what == "deployment" else AppNotFound
            raise cls(text, status=status, body=body)
        if status == 409:   # AppLockedException carries its deployments (MarathonExceptionMapper.scala:77-78)
            if isinstance(body, dict) and isinstance(body.get("deployments"), list):
                raise DeploymentLocked(text, status=status, body=body)
            raise (AppAlreadyExists if creating else ConflictingChange)(text, status=status, body=body)
        raise MarathonError(text, status=status, body=body)

    def _with_lock_retry(self, call: Callable[[], httpx.Response]) -> httpx.Response:
        lo, hi = self.locked_backoff
        retrying = Retrying(retry=retry_if_exception_type(DeploymentLocked),
                            wait=wait_exponential(multiplier=lo, min=lo, max=hi),
                            stop=stop_after_delay(self.locked_timeout), reraise=True)
        return retrying(call)

    @staticmethod
    def _ref(resp: httpx.Response) -> DeploymentRef:
        body: Any = resp.json() if resp.content else {}
        dep = resp.headers.get("Marathon-Deployment-Id") or (body.get("deploymentId") if isinstance(body, dict) else None)
        if not dep and isinstance(body, dict) and body.get("deployments"):
            dep = body["deployments"][0].get("id")
        return DeploymentRef(dep, body.get("version") if isinstance(body, dict) else None)

    @staticmethod
    def _force(force: bool) -> dict[str, str]:
        return {"force": "true"} if force else {}

    # -- apps --------------------------------------------------------------------------------------

    def get_app(self, app_id: str) -> AppDef | None:
        """The app as Marathon shows it, or None if it does not exist."""
        try:
            body = self._request("GET", self._app_path(app_id)).json()
        except AppNotFound:
            return None
        if "app" in body:
            return body["app"]
        apps = body.get("apps") or []  # the RAML example shows an app list here; accept both shapes
        return apps[0] if apps else None

    def list_apps(self, prefix: str = "/") -> list[AppDef]:
        """Apps whose id starts with ``prefix`` (Marathon's ``?id=`` means "contains": we filter again)."""
        want = "/" + prefix.strip("/")
        params = {"id": want} if want != "/" else None
        apps = self._request("GET", "/v2/apps", params=params).json().get("apps", [])
        if want == "/":
            return apps
        return [a for a in apps if a.get("id") == want or a.get("id", "").startswith(want + "/")]

    def create_app(self, app_def: Mapping[str, Any], *, force: bool = False) -> DeploymentRef:
        body = {**app_def, "id": normalize_app_id(app_def["id"])}
        resp = self._with_lock_retry(lambda: self._request("POST", "/v2/apps", json=body, params=self._force(force),
                                                           creating=True))
        return self._ref(resp)

    def update_app(self, app_def: Mapping[str, Any], *, force: bool = False, partial: bool = True) -> DeploymentRef:
        """PUT the definition. Partial (Marathon's default): fields not sent stay as they are."""
        app_id = normalize_app_id(app_def["id"])
        body = {**app_def, "id": app_id}
        params = {**self._force(force), **({} if partial else {"partialUpdate": "false"})}
        resp = self._with_lock_retry(lambda: self._request("PUT", self._app_path(app_id), json=body, params=params))
        return self._ref(resp)

    def scale_app(self, app_id: str, instances: int, *, force: bool = False) -> DeploymentRef:
        if instances < 0:
            raise ValueError("instances must be >= 0")
        app_id = normalize_app_id(app_id)
        if self.get_app(app_id) is None:  # PUT would create an app from a bare {"instances": n}
            raise AppNotFound(f"Marathon app {app_id} does not exist", status=404)
        return self.update_app({"id": app_id, "instances": instances}, force=force)

    def delete_app(self, app_id: str, *, force: bool = False) -> DeploymentRef:
        path = self._app_path(app_id)
        return self._ref(self._with_lock_retry(lambda: self._request("DELETE", path, params=self._force(force))))

    def ensure_app(self, app_def: Mapping[str, Any], *, force: bool = False, ignore: Iterable[str] = ()) -> EnsureResult:
        """Create if missing, update if the definition we own changed, nothing otherwise (see the
        module docstring). Idempotent; a deployment stuck on an older definition is forced."""
        app_id = normalize_app_id(app_def["id"])
        ignore = set(ignore)
        owned = {k: v for k, v in app_def.items() if k not in ignore}
        fingerprint = definition_hash({**app_def, "id": app_id})   # what we want, whatever we leave alone
        desired = {**owned, "id": app_id,
                   "labels": {**(owned.get("labels") or {}), DEFINITION_LABEL: fingerprint}}
        current = self.get_app(app_id)
        if current is None:
            try:
                return EnsureResult("created", app_id, self.create_app(desired, force=force), tuple(sorted(desired)))
            except AppAlreadyExists:  # created concurrently: fall through to compare and update
                current = self.get_app(app_id) or {}
        shown_labels = dict(current.get("labels") or {})
        same_definition = shown_labels.pop(DEFINITION_LABEL, None) == fingerprint
        changed = app_differences({**owned, "id": app_id}, {**current, "labels": shown_labels}, ignore)
        if same_definition and not changed:
            return EnsureResult("unchanged", app_id)
        changed = changed or ["labels"]   # only what Marathon shows canonically differs
        try:
            ref = self.update_app(desired, force=force)
        except DeploymentLocked:
            if same_definition:
                raise   # our definition is deploying: wait for it, never cancel it
            # the running deployment rolls out a definition we no longer want (and may never
            # finish, e.g. a dispatcher that cannot get healthy): replace it
            ref = self.update_app(desired, force=True)
        return EnsureResult("updated", app_id, ref, tuple(changed))

    def remove_app(self, app_id: str, *, force: bool = False) -> DeploymentRef | None:
        """Delete the app; None if it was already gone (404)."""
        try:
            return self.delete_app(app_id, force=force)
        except AppNotFound:
            return None

    # -- deployments -------------------------------------------------------------------------------

    def list_deployments(self) -> list[dict]:
        return self._request("GET", "/v2/deployments").json()

    def get_deployment(self, deployment_id: str) -> dict | None:
        return next((d for d in self.list_deployments() if d.get("id") == deployment_id), None)

    def cancel_deployment(self, deployment_id: str, *, force: bool = False) -> DeploymentRef | None:
        """Roll back (Marathon starts a reverting deployment, returned) or, with force, just stop it."""
        resp = self._request("DELETE", f"/v2/deployments/{deployment_id}", params=self._force(force), what="deployment")
        return self._ref(resp) if resp.status_code == 200 else None

    def wait_for_deployment(
        self,
        deployment_id: str | DeploymentRef | None,
        *,
        timeout: float = 300.0,
        interval: float = 1.0,
        progress: Callable[[dict], None] | None = None,
    ) -> None:
        """Poll /v2/deployments until the deployment is gone (= finished), at most ``timeout`` seconds.
        ``progress`` gets the deployment JSON (``currentStep``/``totalSteps``/``currentActions``) per poll."""
        if isinstance(deployment_id, DeploymentRef):
            deployment_id = deployment_id.deployment_id
        if not deployment_id:
            return
        deadline = time.monotonic() + timeout
        while True:
            dep = self.get_deployment(deployment_id)
            if dep is None:
                return
            if progress is not None:
                progress(dep)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeploymentTimeout(
                    f"deployment {deployment_id} still running after {timeout}s "
                    f"(step {dep.get('currentStep')}/{dep.get('totalSteps')})", body=dep)
            time.sleep(min(interval, remaining))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "MarathonClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def dispatcher_app(
    protocol_name: str,
    image: str,
    env: Mapping[str, str] | None = None,
    cpus: float = 0.5,
    mem: float = 256,
    labels: Mapping[str, str] | None = None,
    instances: int = 1,
    *,
    args: list[str] | None = None,
    health_path: str = "/healthz",
    secrets_host_path: str = DISPATCHER_SECRETS_HOST_PATH,
    identities_host_path: str = DISPATCHER_IDENTITIES_HOST_PATH,
) -> AppDef:
    """The Marathon AppDefinition of a protocol's dispatcher, ``/boid/<protocol>/dispatcher``.

    A dispatcher is a Mesos framework scheduler: two of them for one protocol must not overlap, so
    the upgrade strategy stops the old one before starting the new (0 / 0). It serves its health
    endpoint on ``$PORT0`` (host networking, one dynamic port), checked by Mesos (MESOS_HTTP).

    Credentials: the chain key ring and the Mesos framework secret are files in the host directory
    ``secrets_host_path`` of the dispatcher machines (agents with ``boid_role:dispatcher``, which
    the app is constrained to), mounted read-only at ``/etc/boid/secrets``; the app only names the
    files (``BOID_CHAIN_KEYS_FILE``, ``BOID_MESOS_SECRET_FILE``), never their contents, so no key
    is in the app definition, the environment or the arguments (see manifests/deploy/README.md).
    Its ZooKeeper identity (dispatcher.<protocol>, issue 14) is ``identities_host_path/<protocol>``
    mounted read-only at ``/etc/boid/identity``: that protocol's password file only, named by
    ``BOID_DISPATCHER_PASSWORD_FILE``."""
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", protocol_name or "") or len(protocol_name) > 63:
        raise ValueError(f"protocol name {protocol_name!r} is not a DNS-1123 label")
    if not image:
        raise ValueError("dispatcher image must not be empty")
    if cpus <= 0 or mem <= 0 or instances < 0:
        raise ValueError("cpus and mem must be > 0, instances >= 0")
    for what, mapping in (("env", env or {}), ("labels", labels or {})):
        for k, v in mapping.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise ValueError(f"{what} keys and values must be strings: {k!r}={v!r}")
    return {
        "id": f"/boid/{protocol_name}/dispatcher",
        "args": list(args) if args is not None else ["dispatcher", "run", "--protocol", protocol_name],  # image entrypoint: boidctl
        "instances": instances,
        "cpus": cpus,
        "mem": mem,
        "disk": 0,
        "container": {"type": "DOCKER", "docker": {"image": image, "forcePullImage": False},
                      "volumes": [{"containerPath": DISPATCHER_SECRETS_DIR, "hostPath": secrets_host_path,
                                   "mode": "RO"},
                                  {"containerPath": DISPATCHER_IDENTITY_DIR, "mode": "RO",
                                   "hostPath": f"{identities_host_path.rstrip('/')}/{protocol_name}"}]},
        "constraints": [["boid_role", "CLUSTER", "dispatcher"]],
        "networks": [{"mode": "host"}],
        "portDefinitions": [{"port": 0, "protocol": "tcp", "name": "health"}],
        "env": {**(env or {}), "BOID_PROTOCOL": protocol_name,
                "BOID_CHAIN_KEYS_FILE": f"{DISPATCHER_SECRETS_DIR}/chain-keys.json",
                "BOID_MESOS_SECRET_FILE": f"{DISPATCHER_SECRETS_DIR}/mesos-secret",
                "BOID_DISPATCHER_PASSWORD_FILE": f"{DISPATCHER_IDENTITY_DIR}/password"},
        "labels": {
            **(labels or {}),
            "boid.protocol": protocol_name,
            "boid.component": "dispatcher",
            "boid.managed-by": "boid-operator",
        },
        "healthChecks": [{
            "protocol": "MESOS_HTTP",
            "path": health_path,
            "portIndex": 0,
            "gracePeriodSeconds": 120,
            "intervalSeconds": 30,
            "timeoutSeconds": 10,
            "maxConsecutiveFailures": 3,
        }],
        "upgradeStrategy": {"minimumHealthCapacity": 0, "maximumOverCapacity": 0},
        "backoffSeconds": 1,
        "backoffFactor": 1.15,
        "maxLaunchDelaySeconds": 300,
    }
