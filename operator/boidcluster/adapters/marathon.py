"""Marathon adapter: converge the long-lived apps (protocol dispatchers, the operator itself).

Synchronous (the engine calls it from worker threads), on httpx against Marathon's REST API v2
(RAML in shared/specs/marathon). We do not use the ``marathon`` client (marathon-python 0.13.0):
it needs ``requests`` (not a project dependency), builds ``//`` paths from ids with a leading slash,
and turns app JSON into ``MarathonApp`` objects that drop and re-default fields, which makes both
"send exactly this AppDefinition" and "compare what we own with what is there" unreliable. Plain
dicts in, plain dicts out keeps every request checkable against AppDefinition.json.

Behaviour worth knowing:

* App ids are absolute (``/boid/<protocol>/dispatcher``); URLs never get ``//``.
* ``ensure_app`` is idempotent: create if missing, update (PUT, partial) if a field *we own* (a key
  of the desired definition) differs, else nothing. Nested objects compare as "desired is a subset
  of what Marathon shows", because Marathon fills defaults (health check intervals, upgrade
  strategy, service ports for ``port: 0``); ``env`` and ``labels`` compare exactly, as we own the
  whole map.
* 409 "App is locked by one or more deployments" is retried with exponential backoff (tenacity)
  for at most ``locked_timeout`` seconds, then raised as ``DeploymentLocked``. ``force=True`` uses
  Marathon's ``?force=true`` instead (cancels the running deployment: only for failed deployments).
* Errors are typed: ``AppNotFound``, ``AppAlreadyExists``, ``DeploymentLocked``,
  ``InvalidAppDefinition`` (400/422 with Marathon's details), ``MarathonAuthError``,
  ``MarathonUnavailable`` (transport errors, 5xx: retry later), ``DeploymentTimeout``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Mapping

import httpx
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

__all__ = [
    "AppAlreadyExists",
    "AppNotFound",
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
    "app_differences",
    "dispatcher_app",
    "normalize_app_id",
]

AppDef = dict[str, Any]

_SEGMENT = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")
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
    """401/403."""


class AppNotFound(MarathonError):
    """404 for an app."""


class AppAlreadyExists(MarathonError):
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
    """``boid/x/dispatcher`` or ``/boid/x/dispatcher/`` -> ``/boid/x/dispatcher``; rejects bad ids."""
    segments = app_id.strip().strip("/").split("/")
    if not app_id.strip("/ ") or not all(_SEGMENT.match(s) for s in segments):
        raise ValueError(
            f"invalid Marathon app id {app_id!r}: slash-separated names of lowercase letters, digits, "
            "'-' and '.', not starting or ending with '-' or '.'"
        )
    return "/" + "/".join(segments)


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


def app_differences(desired: Mapping[str, Any], current: Mapping[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """Top-level fields of ``desired`` (the ones we own) whose value ``current`` does not match."""
    skip = {"id", *ignore}
    out = []
    for key, want in desired.items():
        if key in skip:
            continue
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
                 what: str = "") -> httpx.Response:
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
        if status in (401, 403):
            raise MarathonAuthError(text, status=status, body=body)
        if status in (400, 422):
            details = body.get("details") if isinstance(body, dict) else None
            raise InvalidAppDefinition(f"{text} {details or ''}".strip(), status=status, body=body)
        if status == 404:
            cls = DeploymentNotFound if what == "deployment" else AppNotFound
            raise cls(text, status=status, body=body)
        if status == 409:
            if isinstance(body, dict) and "deployments" in body or "locked" in message.lower():
                raise DeploymentLocked(text, status=status, body=body)
            raise AppAlreadyExists(text, status=status, body=body)
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
        resp = self._with_lock_retry(lambda: self._request("POST", "/v2/apps", json=body, params=self._force(force)))
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
        """Create if missing, update if a field we own differs, nothing otherwise. Idempotent."""
        app_id = normalize_app_id(app_def["id"])
        desired = {**app_def, "id": app_id}
        current = self.get_app(app_id)
        if current is None:
            try:
                return EnsureResult("created", app_id, self.create_app(desired, force=force), tuple(sorted(desired)))
            except AppAlreadyExists:  # created concurrently: fall through to compare and update
                current = self.get_app(app_id) or {}
        changed = app_differences(desired, current, ignore)
        if not changed:
            return EnsureResult("unchanged", app_id)
        body = {k: v for k, v in desired.items() if k not in set(ignore)}
        return EnsureResult("updated", app_id, self.update_app(body, force=force), tuple(changed))

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
) -> AppDef:
    """The Marathon AppDefinition of a protocol's dispatcher, ``/boid/<protocol>/dispatcher``.

    A dispatcher is a Mesos framework scheduler: two of them for one protocol must not overlap, so
    the upgrade strategy stops the old one before starting the new (0 / 0). It serves its health
    endpoint on ``$PORT0`` (host networking, one dynamic port), checked by Mesos (MESOS_HTTP)."""
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
        "container": {"type": "DOCKER", "docker": {"image": image, "forcePullImage": False}},
        "networks": [{"mode": "host"}],
        "portDefinitions": [{"port": 0, "protocol": "tcp", "name": "health"}],
        "env": {**(env or {}), "BOID_PROTOCOL": protocol_name},
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
