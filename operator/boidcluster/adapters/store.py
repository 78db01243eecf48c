"""The object store: ZooKeeper as the operator's API server (DESIGN.md, "ZooKeeper layout").

Layout (all under ROOT = /boid/v1):

    objects/<plural>/<name>          metadata + spec (JSON, camelCase wire form, no status)
    objects/<plural>/<name>/status   status (JSON, or null)
    runs/<job>/...                   work-unit records; a completion is a create (exactly once)
    leader                           the operator replicas' leader lock/election path

Why it is shaped so:
- Spec and status live in two znodes, so a user's spec write and the operator's status write
  never race on one znode version. `metadata.resourceVersion` is the object znode's version
  and every update is a compare-and-set on it; a mismatch is a `Conflict`, never an overwrite.
  The status znode has its own version, carried on objects the store returns (read it with
  `status_version(obj)`; `update_status` uses it unless `expected_version=` is given).
- `apply` plans the whole input from one read and commits it as ONE ZooKeeper transaction
  that also checks every version it read, so an input either lands entirely or not at all.
  `apply_in_batches` is the one place an input larger than one ZooKeeper request (MAX_TXN_BYTES)
  is split: into several such transactions, each all-or-nothing (boidctl apply, GitOps sync).
- `watch` is level-triggered: a ZooKeeper notification only marks a path dirty, and a single
  worker re-reads it (re-arming the one-shot watch) and diffs against what it last emitted.
  After any reconnect (and always after session loss, when ZooKeeper drops every watch) it
  re-lists everything and emits the differences, so no change is missed. kazoo 2.11 has no
  persistent recursive watches (no add_watch/AddWatchMode), hence one-shot watches.
- Every call waits at most `timeout` seconds; an unreachable ZooKeeper is `StoreUnavailable`
  naming the hosts, never a hang or a kazoo stack trace.
"""

from __future__ import annotations

import collections
import itertools
import json
import math
import logging
import queue
import re
import select as _select
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Iterator, Literal, Mapping, Sequence

from kazoo.client import KazooClient, KazooState
from kazoo.protocol.paths import _prefix_root
from kazoo.protocol.serialization import Create as _Create
from kazoo.protocol.serialization import Delete as _Delete
from kazoo.protocol.serialization import MultiHeader, int_struct, multiheader_struct, read_buffer, stat_struct, write_string
from kazoo.security import OPEN_ACL_UNSAFE
from kazoo.exceptions import (
    BadVersionError,
    ConnectionClosedError,
    ConnectionLoss,
    KazooException,
    AuthFailedError,
    NoAuthError,
    NoNodeError,
    NodeExistsError,
    NotEmptyError,
    OperationTimeoutError,
    RolledBackError,
    SessionClosedRequireSaslError,
    SessionExpiredError,
    UnimplementedError,
)
from kazoo.exceptions import EXCEPTIONS as _KAZOO_EXCEPTIONS
from kazoo.handlers.threading import KazooTimeoutError, SequentialThreadingHandler
from kazoo.handlers.utils import fileobj_to_fd
from kazoo.protocol.states import ZnodeStat
from kazoo.security import Permissions
from pydantic import TypeAdapter, ValidationError

from boidcluster.adapters.auth import (POLICY, TLS, USERS, Credentials, Policy, acl_ids, marker_name,
                                       sasl_login_refused, status_writer, user_of)
from boidcluster.model.kinds import KINDS
from boidcluster.model.meta import Resource, Status, utcnow

log = logging.getLogger(__name__)

ROOT = "/boid/v1"
OBJECTS = f"{ROOT}/objects"
RUNS = f"{ROOT}/runs"
LEADER_LOCK = f"{ROOT}/leader"
STATUS_NODE = "status"
RUN_BATCH = 200   # run records per ZooKeeper transaction / pipelined batch (well under 1 MB)
DELETE_BATCH = 1000   # deletes per transaction: paths only, ~100 KB (ZooKeeper's jute.maxbuffer is 1 MB)
READ_AHEAD = 4    # multiRead requests in flight beyond the one being parsed (a job's records read back)
ANY_VERSION = -1  # ZooKeeper's "no version check"; only for a sole writer

MAX_TXN_BYTES = 768 * 1024
"""Largest apply sent as one ZooKeeper transaction. ZooKeeper refuses a request over jute.maxbuffer
(1 MiB by default) by dropping the connection ("outcome unknown"); 1,000 Protocols fit in one,
2,500 do not. A larger input is applied in several transactions, each all-or-nothing."""

_UNAVAILABLE = (ConnectionLoss, SessionExpiredError, ConnectionClosedError, OperationTimeoutError)


# -- errors -----------------------------------------------------------------------------------

class _MultiRead(tuple):
    """ZooKeeper's multiRead request (OpCode 22, servers 3.6+; kazoo has no call for it): many
    getData in one request, one response. The request is a multi of GetDataRequest records
    (path, watch=false), ended by a done header; the response has, per read, a MultiHeader then
    a GetDataResponse (data, Stat) or, for a read that failed, an ErrorResponse (its code), as
    apache/zookeeper's MultiResponse.java serializes them. kazoo's connection sends any request
    with `type` and `serialize()` and gives the reply to `deserialize`."""

    type = 22
    _GET_DATA, _ERROR = 4, -1

    def serialize(self) -> bytearray:
        b = bytearray()
        for p in self:
            b += multiheader_struct.pack(self._GET_DATA, False, -1)
            b += write_string(p)
            b.append(0)   # no watch
        return b + multiheader_struct.pack(-1, True, -1)

    @classmethod
    def deserialize(cls, data: bytes, offset: int) -> list[Any]:
        results: list[Any] = []
        header, offset = MultiHeader.deserialize(data, offset)
        while not header.done:
            if header.type == cls._GET_DATA:
                value, offset = read_buffer(data, offset)
                offset += stat_struct.size
                results.append(value if value is not None else b"")
            elif header.type == cls._ERROR:
                code = int_struct.unpack_from(data, offset)[0]
                offset += int_struct.size
                results.append(_KAZOO_EXCEPTIONS[code]())
            else:
                raise ValueError(f"multiRead: unexpected result type {header.type}")
            header, offset = MultiHeader.deserialize(data, offset)
        return results

class StoreError(Exception):
    """Base of every error the store raises."""


class NotFound(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


class Conflict(StoreError):
    """A compare-and-set failed: someone else wrote first. Re-read and retry."""

    def __init__(self, message: str, *, kind: str = "", name: str = "", expected: int | None = None,
                 current: int | None = None) -> None:
        super().__init__(message)
        self.kind, self.name, self.expected, self.current = kind, name, expected, current


class StoreUnavailable(StoreError):
    """ZooKeeper cannot be reached (or answered nothing) within the timeout."""


class InvalidObject(StoreError, ValueError):
    pass


class PartiallyApplied(StoreError):
    """An input split over several transactions stopped after some of them had landed."""

    def __init__(self, message: str, applied: list["ApplyResult"]) -> None:
        super().__init__(message)
        self.applied = applied


class InvalidSelector(StoreError, ValueError):
    pass


class Forbidden(StoreError):
    """ZooKeeper refused: this identity may not do that (an ACL, see adapters/auth.py)."""


class Unauthorized(StoreError):
    """The credentials are wrong, unknown to the cluster, or missing where they are required."""


# -- kinds and wire form ----------------------------------------------------------------------
def kind_dir(kind: type[Resource]) -> str:
    """The znode directory of a kind: its lowercase plural (PLURAL, else KIND + 's')."""
    name = (kind.PLURAL or (kind.KIND + "s" if kind.KIND else "")).lower()
    if not name or not re.fullmatch(r"[a-z0-9][-a-z0-9.]*", name):
        raise InvalidObject(f"{kind.__name__} has no usable KIND/PLURAL to name its store directory")
    return name


def status_version(obj: Resource) -> int | None:
    """The status znode version `obj` was read at (None if it did not come from the store)."""
    return getattr(obj, "_status_version", None)


def _set_status_version(obj: Resource, version: int | None) -> Resource:
    # An undeclared underscore attribute: pydantic keeps it off the wire and carries it through
    # model_copy and field assignment (checked with pydantic 2.14).
    setattr(obj, "_status_version", version)
    return obj


def _set_read_state(obj: Resource, raw: "_Raw") -> Resource:
    # The stored form the object was decoded from, so `update` can CAS without re-reading.
    setattr(obj, "_stored", raw)
    return obj


def txn_batches(objs: list[Resource]) -> list[list[Resource]]:
    """Split an apply so each transaction stays under MAX_TXN_BYTES (estimated wire size)."""
    out: list[list[Resource]] = [[]]
    size = 0
    for o in objs:
        n = len(json.dumps(o.to_dict(with_status=False), separators=(",", ":"))) + 200  # + paths, status node
        if out[-1] and size + n > MAX_TXN_BYTES:
            out.append([])
            size = 0
        out[-1].append(o)
        size += n
    return out


def _json_copy(data: Any) -> Any:
    """A deep copy of JSON data (several times faster than copy.deepcopy for it)."""
    return json.loads(json.dumps(data))


def _dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


_POLL_READ = _select.POLLIN | _select.POLLPRI | _select.POLLHUP | _select.POLLERR | _select.POLLNVAL
_POLL_WRITE = _select.POLLOUT | _select.POLLHUP | _select.POLLERR | _select.POLLNVAL


def poll_select(rlist: Sequence[Any], wlist: Sequence[Any], xlist: Sequence[Any],
                timeout: float | None = None) -> tuple[list[Any], list[Any], list[Any]]:
    """kazoo's `selector_select` (same arguments, answers and errors) on one poll(2) call.

    Why: kazoo's connection thread selects before every request it sends, every response it
    reads and on each socket write and read, and its own select builds and closes an epoll
    object each time (epoll_create1, epoll_ctl per descriptor, close: ~40% of that thread's time
    in a py-spy profile of bench/reconcile.py). poll(2) needs no kernel object. A hang-up or error
    wakes readers and writers, as selectors.PollSelector reports it."""
    if timeout is not None:
        if not isinstance(timeout, (int, float)):
            raise TypeError("timeout must be a number")
        if timeout < 0:
            raise ValueError("timeout must be non-negative")
    poller = _select.poll()
    fds: dict[int, tuple[list[Any], list[Any]]] = {}
    for objs, mask, side in ((rlist, _select.POLLIN, 0), (wlist, _select.POLLOUT, 1)):
        for obj in objs:
            fd = fileobj_to_fd(obj)
            entry = fds.setdefault(fd, ([], []))
            entry[side].append(obj)
    for fd, (r, w) in fds.items():
        poller.register(fd, (_select.POLLIN if r else 0) | (_select.POLLOUT if w else 0))
    ms = None if timeout is None else math.ceil(timeout * 1000)  # never wake before it is due (as PollSelector)
    revents: list[Any] = []
    wevents: list[Any] = []
    for fd, ev in poller.poll(ms):
        r, w = fds.get(fd, ([], []))
        if ev & _POLL_READ and r:  # as selector_select: readable first, else writable
            revents.extend(r)
        elif ev & _POLL_WRITE and w:
            wevents.extend(w)
    return revents, wevents, []


class _PollHandler(SequentialThreadingHandler):
    """kazoo's threading handler, selecting with `poll_select`."""

    def select(self, *args: Any, **kwargs: Any) -> Any:
        return poll_select(*args, **kwargs)


_DATETIME: TypeAdapter[datetime] = TypeAdapter(datetime)  # built once: building one costs more than a write


def _now_json() -> str:
    return _DATETIME.dump_python(utcnow(), mode="json")


_status_adapters: dict[type[Resource], TypeAdapter[Any]] = {}


def _status_adapter(kind: type[Resource]) -> TypeAdapter[Any]:
    if kind not in _status_adapters:
        _status_adapters[kind] = TypeAdapter(kind.model_fields["status"].annotation)
    return _status_adapters[kind]


def _status_dict(kind: type[Resource], status: Status | Mapping[str, Any] | None) -> Any:
    """Validate a status against the kind's status type and return its wire form."""
    if status is None:
        return None
    if isinstance(status, Status):
        status = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    try:
        value = _status_adapter(kind).validate_python(status)
    except ValidationError as e:
        raise InvalidObject(f"invalid {kind.KIND} status: {e}") from None
    if value is None:
        return None
    return value.model_dump(mode="json", by_alias=True, exclude_none=True)


@dataclass(frozen=True)
class ApplyResult:
    kind: str
    name: str
    action: Literal["created", "configured", "unchanged"]
    obj: Resource


@dataclass(frozen=True)
class WatchEvent:
    type: Literal["ADDED", "MODIFIED", "DELETED"]
    kind: str  # the KIND, e.g. "Protocol"
    name: str
    obj: Resource  # for DELETED: the last state seen
    synthetic: bool = False  # found by a re-list after a reconnect, not by a notification


# -- label selectors --------------------------------------------------------------------------
@dataclass(frozen=True)
class Requirement:
    key: str
    op: Literal["=", "!=", "in", "notin", "exists", "!"]
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "=":
            return labels.get(self.key) == self.values[0]
        if self.op == "!=":
            return labels.get(self.key) != self.values[0]
        if self.op == "in":
            return labels.get(self.key) in self.values
        if self.op == "notin":
            return labels.get(self.key) not in self.values
        if self.op == "exists":
            return self.key in labels
        return self.key not in labels

    def __str__(self) -> str:
        if self.op in ("=", "!="):
            return f"{self.key}{self.op}{self.values[0]}"
        if self.op in ("in", "notin"):
            return f"{self.key} {self.op} ({','.join(self.values)})"
        return self.key if self.op == "exists" else f"!{self.key}"


@dataclass(frozen=True)
class Selector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


_KEY = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?")
_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")


def parse_selector(selector: str | Mapping[str, str] | Selector | None) -> Selector:
    """Parse a Kubernetes-style label selector.

    Terms are separated by ',': `a=b` (or `a==b`), `a!=b`, `a` (exists), `!a` (absent),
    `a in (x,y)`, `a notin (x,y)`. A mapping means equality on every pair. Errors name the
    position and what was expected.
    """
    if selector is None:
        return Selector()
    if isinstance(selector, Selector):
        return selector
    if isinstance(selector, Mapping):
        return Selector(tuple(Requirement(str(k), "=", (str(v),)) for k, v in selector.items()))
    text = selector
    pos = 0
    reqs: list[Requirement] = []

    def fail(msg: str) -> InvalidSelector:
        return InvalidSelector(
            f"invalid label selector {text!r}: {msg} at position {pos + 1} "
            "(forms: a=b, a!=b, a, !a, a in (x,y), a notin (x,y), separated by ',')"
        )

    def ws() -> None:
        nonlocal pos
        while pos < len(text) and text[pos].isspace():
            pos += 1

    def token(pattern: re.Pattern[str], what: str) -> str:
        nonlocal pos
        m = pattern.match(text, pos)
        if m is None or (what == "a label key" and not m.group(0)):
            raise fail(f"expected {what}")
        pos = m.end()
        return m.group(0)

    ws()
    if pos == len(text):
        return Selector()
    while True:
        ws()
        if pos < len(text) and text[pos] == "!" and not text.startswith("!=", pos):
            pos += 1
            ws()
            reqs.append(Requirement(token(_KEY, "a label key"), "!"))
        else:
            key = token(_KEY, "a label key")
            ws()
            if text.startswith("!=", pos):
                pos += 2
                ws()
                reqs.append(Requirement(key, "!=", (token(_VALUE, "a label value"),)))
            elif text.startswith("==", pos) or text.startswith("=", pos):
                pos += 2 if text.startswith("==", pos) else 1
                ws()
                reqs.append(Requirement(key, "=", (token(_VALUE, "a label value"),)))
            elif m := re.compile(r"(notin|in)(?=[\s(])").match(text, pos):
                pos = m.end()
                ws()
                if not text.startswith("(", pos):
                    raise fail("expected '(' after " + m.group(1))
                pos += 1
                values: list[str] = []
                while True:
                    ws()
                    values.append(token(_VALUE, "a label value"))
                    ws()
                    if text.startswith(",", pos):
                        pos += 1
                        continue
                    if text.startswith(")", pos):
                        pos += 1
                        break
                    raise fail("expected ',' or ')' in the value set")
                reqs.append(Requirement(key, m.group(1), tuple(values)))  # type: ignore[arg-type]
            else:
                reqs.append(Requirement(key, "exists"))
        ws()
        if pos == len(text):
            return Selector(tuple(reqs))
        if text[pos] != ",":
            raise fail(f"unexpected {text[pos]!r}")
        pos += 1
        ws()
        if pos == len(text):
            raise fail("expected a requirement after ','")


# -- the store --------------------------------------------------------------------------------
@dataclass
class _Raw:
    """One object as read: the object znode (dict + stat) and the status znode."""

    data: dict[str, Any]
    stat: ZnodeStat
    status: Any
    status_stat: ZnodeStat | None


class Store:
    """Resources in ZooKeeper: CRUD with compare-and-set, atomic apply, finalizers, watch.

    `hosts` is a kazoo connection string, optionally with a chroot ("127.0.0.1:2181/test-1";
    the chroot must exist). The store knows the registry's kinds (model.kinds.KINDS) plus
    `kinds` (e.g. test kinds); a watch over all kinds covers those, and any kind used through
    the other calls is added. `timeout` bounds
    connecting and every single call.
    """

    def __init__(
        self,
        hosts: str,
        *,
        kinds: Iterable[type[Resource]] = (),
        timeout: float = 5.0,
        session_timeout: float = 10.0,
        credentials: Credentials | None = None,
        tls: TLS | None = None,
    ) -> None:
        self.hosts = hosts
        self.credentials = credentials
        self.policy: Policy | None = None  # set on connect: None = an open (unsecured) cluster
        self._policy_czxid = 0
        self.timeout = timeout
        self.kinds: dict[str, type[Resource]] = {}
        for k in (*KINDS.values(), *kinds):
            self._dir(k)
        self._ensured: set[str] = set()
        self._multi_read = True   # until a server says it has no multiRead (before 3.6)
        self._connected = threading.Event()
        self._watches: list[Watch] = []
        try:
            self._client = KazooClient(
                hosts=hosts,
                handler=_PollHandler(),
                timeout=session_timeout,
                connection_retry={"max_tries": -1, "delay": 0.05, "backoff": 1.5, "max_delay": 1.0},
                auth_data=credentials.auth_data() if credentials else None,
                sasl_options=credentials.sasl_options() if credentials else None,
                **(tls.kazoo_kwargs() if tls else {}),
            )
        except ValueError as e:
            raise StoreUnavailable(f"invalid ZooKeeper hosts {hosts!r}: {e}") from None
        self._client.add_listener(self._on_state)
        try:
            self._client.start(timeout=timeout)
        except KazooTimeoutError:
            raise StoreUnavailable(
                f"cannot reach ZooKeeper at {hosts} within {timeout:g}s "
                "(is it running? `boidctl up` starts a local one)"
            ) from None
        except AuthFailedError:
            self._client.close()
            raise Unauthorized(f"authentication as user {self.whoami!r} failed at {hosts}") from None
        self._connected.set()
        if credentials is not None and credentials.sasl and sasl_login_refused(self._client, timeout):
            self._client.stop()
            self._client.close()
            raise Unauthorized(f"authentication as user {self.whoami!r} failed at {hosts}: "
                               "SASL login refused (unknown user or wrong password)")
        try:
            self._login()
            self._ensure(OBJECTS)
            self._ensure(RUNS)
        except SessionClosedRequireSaslError:
            self.close()
            raise Unauthorized(f"ZooKeeper at {hosts} requires a SASL login: set `sasl: true` for the user "
                               "of the current context in $BOID_HOME/config") from None
        except BaseException:
            self.close()
            raise

    # -- identity ---------------------------------------------------------------------------
    @property
    def whoami(self) -> str:
        return self.credentials.user if self.credentials else "anonymous"

    @property
    def is_admin(self) -> bool:
        return self.policy is not None and self.credentials is not None and \
            self.policy.is_admin(self.credentials.digest_id)

    def _login(self) -> None:
        """Read the policy; on a secured cluster prove the credentials by reading users/<me>
        (ZooKeeper's digest login itself never fails: a wrong password is just another id)."""
        try:
            data, stat = self._call("read policy", "get_async", POLICY)
            self.policy, self._policy_czxid = Policy.from_json(data), stat.czxid
        except NoNodeError:
            self.policy = None
        if self.policy is None:
            return
        self._client.default_acl = self.policy.default_acl(self.credentials.digest_id if self.credentials else None)
        if self.credentials is None:
            return
        try:
            self._call("log in", "get_children_async", f"{USERS}/{self.credentials.user}")
        except (NoNodeError, Forbidden):
            raise Unauthorized(
                f"authentication as user {self.credentials.user!r} failed at {self.hosts}: "
                "unknown user or wrong password"
            ) from None

    def _require_login(self, what: str) -> None:
        if self.policy is not None and self.credentials is None:
            raise Unauthorized(f"{what}: this cluster requires authentication; set a user in the "
                               "current context of $BOID_HOME/config (`boidctl config get-contexts`)")

    def _owner_id(self, owner: str | None) -> str | None:
        """The digest id objects are created for: `owner` (an admin acting for a user, e.g. a
        GitSource's owner: read from users/<owner>) or this store's own identity."""
        if self.policy is None:
            return None
        if owner is None or (self.credentials is not None and owner == self.credentials.user):
            return self.credentials.digest_id if self.credentials else None
        try:
            return json.loads(self._call(f"read user {owner}", "get_async", f"{USERS}/{owner}")[0])["id"]
        except NoNodeError:
            raise NotFound(f"user {owner!r} is not registered in this cluster") from None

    def _create_object_ops(self, txn: Any, kind: type[Resource], name: str, data: dict[str, Any],
                           status: Any, owner_id: str | None) -> int:
        """Add the creates of one object (object, status, and on a secured cluster the owner's
        marker, all in the caller's transaction so they share one czxid). Returns the op count."""
        path = self._path(kind, name)
        pol = self.policy
        if pol is None:
            txn.create(path, _dumps(data))
            txn.create(f"{path}/{STATUS_NODE}", _dumps(status))
            return 2
        txn.create(path, _dumps(data), acl=pol.object_acl(owner_id))
        txn.create(f"{path}/{STATUS_NODE}", _dumps(status), acl=pol.status_acl())
        if owner_id is None:
            return 2
        txn.create(f"{USERS}/{user_of(owner_id)}/{marker_name(self._dir(kind), name, data['metadata']['uid'])}",
                   b"", acl=pol.marker_acl(owner_id))
        return 3

    def _markers(self, kind: type[Resource], name: str, uid: str) -> list[str]:
        """The owner markers an object's ACL points at (to remove them with the object)."""
        if self.policy is None:
            return []
        try:
            acls, _ = self._call(f"read ACL of {kind.KIND} {name}", "get_acls_async", self._path(kind, name))
        except NoNodeError:
            return []
        users = {user_of(i) for i in acl_ids(acls, Permissions.ALL)}
        return [f"{USERS}/{u}/{marker_name(self._dir(kind), name, uid)}" for u in sorted(users)]

    def owner(self, kind: type[Resource], name: str) -> str | None:
        """The proven creator of an object on a secured cluster (None: unproven, or its status
        znode is writable by someone other than the admins). The object's ACL claims the owner;
        the claim holds only if users/<owner> has the object's marker with the object's czxid
        (created in the same transaction, which only that user or an admin can do). Only an
        admin's answer is authoritative: ZooKeeper redacts digests for others (see `admin`)."""
        if self.policy is None:
            return None
        path = self._path(kind, name)
        try:
            acls, stat = self._call(f"read ACL of {kind.KIND} {name}", "get_acls_async", path)
            data = json.loads(self._call(f"read {kind.KIND} {name}", "get_async", path)[0])
        except NoNodeError:
            raise NotFound(f"{kind.KIND} {name!r} not found") from None
        try:
            sacls, _ = self._call(f"read ACL of {kind.KIND} {name}", "get_acls_async", f"{path}/{STATUS_NODE}")
        except NoNodeError:
            return None  # not made by a Store (which creates both at once)

        def admin(i: str) -> bool:  # ZooKeeper shows a digest as "user:x" to a reader without ADMIN
            return i in self.policy.admins or (i.endswith(":x") and user_of(i) in self.policy.admin_users)

        granted = status_writer(self._dir(kind), data)  # a Job's dispatcher, granted by the operator

        def writer(i: str) -> bool:
            return admin(i) or (granted is not None and user_of(i) == granted
                                and (i.endswith(":x") or i == self._granted_id(granted)))

        if any(not writer(i) for i in acl_ids(sacls, Permissions.WRITE)) or \
                any(a.id.scheme != "digest" and a.perms & ~Permissions.READ for a in sacls):
            return None
        if stat.czxid < self._policy_czxid:  # from before the cluster was secured: the admins'
            return sorted(self.policy.admin_users)[0]
        claimed = [i for i in acl_ids(acls, Permissions.ALL) if not admin(i)] or list(self.policy.admins)
        uid = data.get("metadata", {}).get("uid", "")
        for cid in claimed:
            marker = f"{USERS}/{user_of(cid)}/{marker_name(self._dir(kind), name, uid)}"
            mstat = self._call(f"check owner of {kind.KIND} {name}", "exists_async", marker)
            if mstat is not None and mstat.czxid == stat.czxid:
                return user_of(cid)
        return None

    def _granted_id(self, user: str) -> str | None:
        """The registered digest id of a granted status writer (an admin reads it exactly)."""
        try:
            return self._owner_id(user)
        except (NotFound, Forbidden):
            return None

    # -- plumbing ---------------------------------------------------------------------------
    @property
    def client(self) -> KazooClient:
        """The kazoo client, for recipes that need one (leader election on LEADER_LOCK)."""
        return self._client

    def _on_state(self, state: str) -> None:
        if state == KazooState.CONNECTED:
            self._connected.set()
        else:
            self._connected.clear()

    def _dir(self, kind: type[Resource]) -> str:
        d = kind_dir(kind)
        known = self.kinds.setdefault(d, kind)
        if known is not kind:
            raise InvalidObject(f"{kind.__name__} and {known.__name__} would share the store directory {d!r}")
        return d

    def _path(self, kind: type[Resource], name: str = "") -> str:
        return f"{OBJECTS}/{self._dir(kind)}" + (f"/{name}" if name else "")

    def _wait(self, async_result: Any, what: str) -> Any:
        try:
            return async_result.get(timeout=self.timeout)
        except KazooTimeoutError:
            raise StoreUnavailable(
                f"ZooKeeper at {self.hosts} did not answer ({what}) within {self.timeout:g}s; "
                "the outcome of a write is unknown: re-read"
            ) from None
        except _UNAVAILABLE as e:
            raise StoreUnavailable(
                f"lost the connection to ZooKeeper at {self.hosts} ({what}: {type(e).__name__}); "
                "the outcome of a write is unknown: re-read"
            ) from None
        except NoAuthError:
            raise Forbidden(f"forbidden: user {self.whoami!r} may not {what}") from None

    def _ready(self) -> None:
        if not self._connected.wait(self.timeout):
            raise StoreUnavailable(f"not connected to ZooKeeper at {self.hosts} (waited {self.timeout:g}s)")

    def _call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        self._ready()
        return self._wait(getattr(self._client, method)(*args, **kwargs), what)

    def _ensure(self, path: str) -> None:
        if path not in self._ensured:
            self._ready()
            self._wait(self._client.ensure_path_async(path), f"ensure {path}")
            self._ensured.add(path)

    def _commit(self, txn: Any, what: str) -> list[Any]:
        self._ready()
        return list(self._wait(txn.commit_async(), what))

    @staticmethod
    def _txn_error(results: list[Any]) -> tuple[int, Exception] | None:
        for i, r in enumerate(results):
            if isinstance(r, Exception) and not isinstance(r, RolledBackError):
                return i, r
        return None

    def _forbidden(self, err: tuple[int, Exception] | None, what: str) -> None:
        if err is not None and isinstance(err[1], NoAuthError):
            raise Forbidden(f"forbidden: user {self.whoami!r} may not {what}")

    def _read_async(self, path: str, watch: Any = None) -> tuple[Any, Any]:
        self._ready()
        return (self._client.get_async(path, watch=watch),
                self._client.get_async(f"{path}/{STATUS_NODE}", watch=watch))

    def _finish_read(self, pending: tuple[Any, Any], what: str) -> _Raw | None:
        obj_res, status_res = pending
        try:
            data, stat = self._wait(obj_res, what)
        except NoNodeError:
            return None
        try:
            sdata, sstat = self._wait(status_res, what)
            status = json.loads(sdata) if sdata else None
        except NoNodeError:
            status, sstat = None, None
        return _Raw(json.loads(data), stat, status, sstat)

    def _read(self, kind: type[Resource], name: str, watch: Any = None) -> _Raw | None:
        return self._finish_read(self._read_async(self._path(kind, name), watch), f"read {kind.KIND} {name}")

    def _must_read(self, kind: type[Resource], name: str) -> _Raw:
        raw = self._read(kind, name)
        if raw is None:
            raise NotFound(f"{kind.KIND} {name!r} not found")
        return raw

    def _decode(self, kind: type[Resource], data: Mapping[str, Any], version: int | None, status: Any,
                sversion: int | None) -> Resource:
        d = _json_copy(data)   # the model must not share containers with the stored form
        d["metadata"] = {**d["metadata"], "resourceVersion": version}
        if status is not None:
            d["status"] = status
        return _set_status_version(kind.model_validate(d), sversion)

    def _decode_raw(self, kind: type[Resource], raw: _Raw) -> Resource:
        obj = self._decode(kind, raw.data, raw.stat.version, raw.status,
                           raw.status_stat.version if raw.status_stat else None)
        return _set_read_state(obj, raw)

    def _check(self, obj: Resource) -> type[Resource]:
        kind = type(obj)
        if not kind.KIND or obj.kind != kind.KIND:
            raise InvalidObject(f"object {obj.metadata.name!r} says kind {obj.kind!r} but is a {kind.__name__}")
        try:  # objects built with model_construct or mutated around validation
            kind.model_validate(obj.to_dict())
        except ValidationError as e:
            raise InvalidObject(f"invalid {kind.KIND} {obj.metadata.name!r}: {e}") from None
        return kind

    def _checked_wire(self, obj: Resource) -> tuple[type[Resource], dict[str, Any]]:
        """The object's wire form without status, validated (update writes no status, so its
        status is neither validated nor serialized: one dump and one validation per update)."""
        kind = type(obj)
        if not kind.KIND or obj.kind != kind.KIND:
            raise InvalidObject(f"object {obj.metadata.name!r} says kind {obj.kind!r} but is a {kind.__name__}")
        wire = obj.to_dict(with_status=False)
        try:
            kind.model_validate(wire)
        except ValidationError as e:
            raise InvalidObject(f"invalid {kind.KIND} {obj.metadata.name!r}: {e}") from None
        return kind, wire

    def _conflict(self, kind: type[Resource], name: str, expected: int | None, what: str = "resourceVersion",
                  current: int | None = None, suffix: str = "") -> Conflict:
        if current is None:
            try:
                raw = self._read(kind, name)
            except StoreError:
                raw = None
            if raw is not None:
                current = raw.stat.version if what == "resourceVersion" else (
                    raw.status_stat.version if raw.status_stat else None)
        now = "it no longer exists" if current is None else f"current {current}"
        return Conflict(
            f"{kind.KIND} {name!r} was changed by someone else: expected {what} {expected}, {now}; "
            "re-read it and retry" + suffix,
            kind=kind.KIND, name=name, expected=expected, current=current,
        )

    @staticmethod
    def _fresh_meta(obj: Resource, wire: dict[str, Any] | None = None) -> dict[str, Any]:
        """The stored form of a new object: its wire form (`wire`, made for this call and changed
        in place, or made here) with server fields."""
        d = wire if wire is not None else obj.to_dict(with_status=False)
        m = d["metadata"]
        for k in ("resourceVersion", "deletionTimestamp"):
            m.pop(k, None)
        m["uid"] = str(uuid.uuid4())
        m["generation"] = 1
        m["creationTimestamp"] = _now_json()
        return d

    @staticmethod
    def _merge(cur: dict[str, Any], obj: Resource, *, apply: bool,
               incoming: dict[str, Any] | None = None) -> dict[str, Any]:
        """The stored form after writing `obj` (or its wire form `incoming`) over `cur`: user
        fields from obj, server fields kept."""
        if incoming is None:
            incoming = obj.to_dict(with_status=False)
        m_in, m_cur = incoming["metadata"], cur["metadata"]
        if not apply:
            for f in ("uid", "creationTimestamp"):
                if m_in.get(f) is not None and m_in.get(f) != m_cur.get(f):
                    raise InvalidObject(
                        f"{obj.kind} {obj.name!r}: metadata.{f} is immutable "
                        f"(stored {m_cur.get(f)!r}, got {m_in.get(f)!r})"
                    )
        new = _json_copy(cur)
        meta = new["metadata"]
        meta["labels"] = m_in.get("labels", {})
        meta["annotations"] = m_in.get("annotations", {})
        fins = m_in.get("finalizers", [])
        if apply:  # apply never drops finalizers the operator added
            fins = list(m_cur.get("finalizers", [])) + [f for f in fins if f not in m_cur.get("finalizers", [])]
        meta["finalizers"] = fins
        new["spec"] = incoming.get("spec")
        if new["spec"] != cur.get("spec"):
            meta["generation"] = int(m_cur.get("generation") or 0) + 1
        return new

    # -- objects ----------------------------------------------------------------------------
    def create(self, obj: Resource) -> Resource:
        """Store a new object: assigns uid, generation 1, creationTimestamp. AlreadyExists if taken.

        A status given on `obj` is stored as the initial status (apply ignores it)."""
        kind, wire = self._checked_wire(obj)  # the status is validated by _status_dict below
        self._require_login(f"create {kind.KIND} {obj.name}")
        self._ensure(self._path(kind))
        data = self._fresh_meta(obj, wire)
        status = _status_dict(kind, obj.status)
        txn = self._client.transaction()
        self._create_object_ops(txn, kind, obj.name, data, status, self._owner_id(None))
        err = self._txn_error(self._commit(txn, f"create {kind.KIND} {obj.name}"))
        self._forbidden(err, f"create {kind.KIND} {obj.name}")
        if err is not None:
            if isinstance(err[1], NodeExistsError):
                raise AlreadyExists(f"{kind.KIND} {obj.name!r} already exists")
            raise err[1]
        return self._decode(kind, data, 0, status, 0)

    def get(self, kind: type[Resource], name: str) -> Resource:
        """The object with metadata.resourceVersion (object znode version) and its status."""
        return self._decode_raw(kind, self._must_read(kind, name))

    def list(self, kind: type[Resource], selector: str | Mapping[str, str] | Selector | None = None) -> list[Resource]:
        """All objects of a kind (sorted by name) whose labels match `selector`."""
        sel = parse_selector(selector)
        try:
            names = self._call(f"list {kind.KIND}", "get_children_async", self._path(kind))
        except NoNodeError:
            return []
        pending = [(n, self._read_async(self._path(kind, n))) for n in sorted(names)]
        out = []
        for n, p in pending:
            raw = self._finish_read(p, f"read {kind.KIND} {n}")
            if raw is not None and sel.matches(raw.data["metadata"].get("labels", {})):
                out.append(self._decode_raw(kind, raw))
        return out

    def _write_meta(self, kind: type[Resource], name: str, new: dict[str, Any], expected: int,
                    verb: str = "update") -> ZnodeStat | None:
        """CAS-write the object znode; delete the object instead when it is being deleted and
        no finalizer is left. Returns the new stat, or None when deleted."""
        path = self._path(kind, name)
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            markers = self._markers(kind, name, meta.get("uid", ""))
            txn = self._client.transaction()
            txn.delete(f"{path}/{STATUS_NODE}")
            txn.delete(path, version=expected)
            err = self._txn_error(self._commit(txn, f"delete {kind.KIND} {name}"))
            if err is None:
                for m in [self._client.delete_async(m) for m in markers]:  # best effort: a stale
                    try:                                                   # marker names a dead uid
                        m.get(timeout=self.timeout)
                    except Exception:
                        pass
                return None
            self._forbidden(err, f"delete {kind.KIND} {name}")
            if isinstance(err[1], NoNodeError) and err[0] == 1:
                raise NotFound(f"{kind.KIND} {name!r} not found")
            raise self._conflict(kind, name, expected)
        try:
            return self._call(f"{verb} {kind.KIND} {name}", "set_async", path, _dumps(new), version=expected)
        except NoNodeError:
            raise NotFound(f"{kind.KIND} {name!r} not found") from None
        except BadVersionError:
            raise self._conflict(kind, name, expected) from None

    def update(self, obj: Resource) -> Resource:
        """Compare-and-set the object (metadata + spec) on metadata.resourceVersion.

        Conflict if it changed since it was read. The generation is bumped only when the spec
        changed; uid and creationTimestamp are immutable; deletionTimestamp and status are not
        written here (delete / update_status). An update that leaves a deleting object without
        finalizers removes it (the returned object is its last state). No change, no write."""
        kind, wire = self._checked_wire(obj)
        expected = obj.metadata.resource_version
        if expected is None:
            raise InvalidObject(f"update of {kind.KIND} {obj.name!r} needs metadata.resourceVersion (get it first)")
        raw = getattr(obj, "_stored", None)
        if not isinstance(raw, _Raw) or raw.stat.version != expected:  # not as read: read it
            raw = self._must_read(kind, obj.name)
        if raw.stat.version != expected:
            raise self._conflict(kind, obj.name, expected, current=raw.stat.version)
        new = self._merge(raw.data, obj, apply=False, incoming=wire)
        if new == raw.data:
            return self._decode_raw(kind, raw)
        stat = self._write_meta(kind, obj.name, new, expected)
        if stat is None:
            return self._decode(kind, new, None, raw.status, None)
        return self._decode_raw(kind, _Raw(new, stat, raw.status, raw.status_stat))

    def update_status(
        self,
        obj_or_kind: Resource | type[Resource],
        name: str | None = None,
        status: Status | Mapping[str, Any] | None = None,
        *,
        expected_version: int | None = None,
    ) -> Resource:
        """Compare-and-set the status znode.

        `update_status(obj)` writes obj.status, expecting `status_version(obj)` (the status
        version obj was read at) unless `expected_version` is given.
        `update_status(Kind, name, status, expected_version=v)` does the same without an object.
        `expected_version=ANY_VERSION` (-1) writes unconditionally (a sole writer only)."""
        if isinstance(obj_or_kind, Resource):
            obj: Resource | None = obj_or_kind
            kind, name, status = type(obj_or_kind), obj_or_kind.name, obj_or_kind.status
            expected = expected_version if expected_version is not None else status_version(obj_or_kind)
        else:
            obj, kind, expected = None, obj_or_kind, expected_version
            if name is None:
                raise InvalidObject("update_status(Kind, name, status, expected_version=...) needs a name")
        if expected is None:
            raise InvalidObject(
                f"update_status of {kind.KIND} {name!r} needs the status version it read: pass an object "
                "from get/list/watch, or expected_version= (ANY_VERSION to write unconditionally)"
            )
        wire = _status_dict(kind, status)
        try:
            stat = self._call(f"update status of {kind.KIND} {name}", "set_async",
                              f"{self._path(kind, name)}/{STATUS_NODE}", _dumps(wire), version=expected)
        except NoNodeError:
            raise NotFound(f"{kind.KIND} {name!r} not found") from None
        except BadVersionError:
            raise self._conflict(kind, name, expected, what="status version") from None
        if obj is None:
            return self.get(kind, name)
        # a shallow copy (a deep one costs more than the write): the caller's object keeps its
        # own status; spec and metadata are shared, as they were read and are not changed here
        out = obj.model_copy(update={"metadata": obj.metadata.model_copy()})
        out.status = _status_adapter(kind).validate_python(wire)
        raw = getattr(out, "_stored", None)
        if isinstance(raw, _Raw):  # keep the read state in step with the status just written
            _set_read_state(out, _Raw(raw.data, raw.stat, wire, stat))
        return _set_status_version(out, stat.version)

    def _cas_loop(self, kind: type[Resource], name: str, change: Any, verb: str = "update",
                  current: Resource | None = None) -> Resource | None:
        """Read, let `change(data)` return the new stored form (or None: nothing to do), CAS-write;
        retry on conflict. Returns the result (None once deleted). `current`, an object as this
        store read it, saves the first read: a conflict means it was stale, and the loop reads."""
        first = getattr(current, "_stored", None) if type(current) is kind and current.name == name else None
        for _ in range(20):
            fresh = not isinstance(first, _Raw)
            raw, first = (self._must_read(kind, name) if fresh else first), None
            new = change(_json_copy(raw.data))
            if new is None or new == raw.data:
                if not fresh:
                    continue  # nothing to do by what we had: say so only from a fresh read
                return self._decode_raw(kind, raw)
            try:
                stat = self._write_meta(kind, name, new, raw.stat.version, verb)
            except Conflict:
                continue
            if stat is None:
                return None
            sv = raw.status_stat.version if raw.status_stat else None
            return self._decode(kind, new, stat.version, raw.status, sv)
        raise Conflict(f"{kind.KIND} {name!r} keeps changing; gave up after 20 attempts", kind=kind.KIND, name=name)

    def delete(self, kind: type[Resource], name: str) -> Resource | None:
        """Delete: with finalizers, set deletionTimestamp (once) and return the kept object;
        without, remove object and status atomically and return None. NotFound if absent."""

        def mark(d: dict[str, Any]) -> dict[str, Any] | None:
            meta = d["metadata"]
            if meta.get("finalizers") and meta.get("deletionTimestamp"):
                return None  # already marked: idempotent
            meta["deletionTimestamp"] = _now_json()
            return d  # written as marked, or removed when there are no finalizers

        return self._cas_loop(kind, name, mark, "delete")

    def add_finalizer(self, kind: type[Resource], name: str, finalizer: str, *,
                      current: Resource | None = None) -> Resource:
        """Add a finalizer (no-op if present). Refused while the object is being deleted.
        `current`: the object as read from this store (one round trip fewer while it is current)."""

        def add(d: dict[str, Any]) -> dict[str, Any] | None:
            fins = d["metadata"].setdefault("finalizers", [])
            if finalizer in fins:
                return None
            if d["metadata"].get("deletionTimestamp"):
                raise InvalidObject(f"{kind.KIND} {name!r} is being deleted: cannot add finalizer {finalizer!r}")
            fins.append(finalizer)
            return d

        out = self._cas_loop(kind, name, add, current=current)
        assert out is not None
        return out

    def remove_finalizer(self, kind: type[Resource], name: str, finalizer: str) -> Resource | None:
        """Remove a finalizer; when it was the last one and deletion was requested, the object is
        removed (returns None). Missing finalizer: no-op."""

        def remove(d: dict[str, Any]) -> dict[str, Any] | None:
            fins = d["metadata"].get("finalizers", [])
            if finalizer not in fins:
                return None
            d["metadata"]["finalizers"] = [f for f in fins if f != finalizer]
            return d

        return self._cas_loop(kind, name, remove)

    # -- apply ------------------------------------------------------------------------------
    def apply(self, objs: Iterable[Resource], dry_run: bool = False, *, owner: str | None = None) -> list[ApplyResult]:
        """Create or update every object of an input in ONE transaction (all or nothing).

        User fields (labels, annotations, spec) come from the input; server fields (uid,
        generation, creationTimestamp, status, deletionTimestamp) are kept; finalizers are
        kept and any from the input added. The transaction checks the version of every object
        it read, so a concurrent write makes the whole apply a Conflict. `dry_run` reads and
        plans but writes nothing. `owner` (an admin only, e.g. for a GitSource's owner): the user
        new objects belong to on a secured cluster, instead of this store's identity."""
        return self._commit_plan(self._plan(list(objs)), dry_run, owner)

    def apply_in_batches(self, objs: Iterable[Resource], dry_run: bool = False,
                         retries: int = 0, *, owner: str | None = None) -> tuple[list[ApplyResult], int]:
        """`apply`, split into as few transactions as fit under MAX_TXN_BYTES; returns the results
        and the number of transactions. Each transaction is all-or-nothing; a batch that meets a
        Conflict is re-planned and retried up to `retries` times. If one still fails after others
        landed, PartiallyApplied says how many did (re-running the same apply finishes it: every
        object is applied idempotently)."""
        objs = list(objs)
        batches = txn_batches(objs)
        if dry_run or len(batches) == 1:
            for attempt in range(retries + 1):
                try:
                    return self.apply(objs, dry_run=dry_run, owner=owner), 1
                except Conflict:
                    if attempt == retries:
                        raise
        done: list[ApplyResult] = []
        for i, batch in enumerate(batches):
            for attempt in range(retries + 1):
                try:
                    done += self.apply(batch, owner=owner)
                    break
                except StoreError as e:
                    if isinstance(e, Conflict) and attempt < retries:
                        continue
                    if not done:
                        raise
                    message = (f"{len(done)} of {len(objs)} objects were applied (transactions 1-{i} of "
                               f"{len(batches)}, each all-or-nothing), then: {e}; re-run the same apply to finish it")
                    if isinstance(e, Conflict):  # callers that re-plan on a Conflict still can
                        raise Conflict(message, kind=e.kind, name=e.name, expected=e.expected,
                                       current=e.current) from e
                    raise PartiallyApplied(message, done) from e
        return done, len(batches)

    def _plan(self, objs: Sequence[Resource]) -> list[tuple[Resource, str, dict[str, Any], _Raw | None]]:
        seen: set[tuple[str, str]] = set()
        for obj in objs:
            kind = self._check(obj)
            key = (kind.KIND, obj.name)
            if key in seen:
                raise InvalidObject(f"{kind.KIND} {obj.name!r} appears twice in the input")
            seen.add(key)
        pending = [self._read_async(self._path(type(o), o.name)) for o in objs]
        plan = []
        for obj, p in zip(objs, pending):
            raw = self._finish_read(p, f"read {obj.kind} {obj.name}")
            if raw is None:
                plan.append((obj, "created", self._fresh_meta(obj), None))
            else:
                new = self._merge(raw.data, obj, apply=True)
                plan.append((obj, "configured" if new != raw.data else "unchanged", new, raw))
        return plan

    def _commit_plan(self, plan: list[tuple[Resource, str, dict[str, Any], _Raw | None]],
                     dry_run: bool, owner: str | None = None) -> list[ApplyResult]:
        if not dry_run and any(a != "unchanged" for _, a, _, _ in plan):
            self._require_login(f"apply {len(plan)} objects")
            owner_id = self._owner_id(owner) if any(a == "created" for _, a, _, _ in plan) else None
            txn = self._client.transaction()
            owners: list[tuple[Resource, _Raw | None]] = []
            for obj, action, new, raw in plan:
                kind = type(obj)
                path = self._path(kind, obj.name)
                if action == "created":
                    self._ensure(self._path(kind))
                    owners += [(obj, None)] * self._create_object_ops(txn, kind, obj.name, new, None, owner_id)
                elif action == "configured":
                    assert raw is not None
                    txn.set_data(path, _dumps(new), version=raw.stat.version)
                    owners.append((obj, raw))
                else:
                    assert raw is not None
                    txn.check(path, raw.stat.version)
                    owners.append((obj, raw))
            results = self._commit(txn, f"apply {len(plan)} objects")
            err = self._txn_error(results)
            if err is not None:
                obj, raw = owners[err[0]]
                self._forbidden(err, f"{'create' if raw is None else 'change'} {obj.kind} {obj.name}; nothing was applied")
                kind = type(obj)
                if raw is None:
                    raise Conflict(f"{kind.KIND} {obj.name!r} was created by someone else during apply; "
                                   "nothing was applied: retry", kind=kind.KIND, name=obj.name)
                raise self._conflict(kind, obj.name, raw.stat.version, suffix="; nothing was applied")
            stats = iter(results)
        out = []
        for obj, action, new, raw in plan:
            kind = type(obj)
            if action == "created":
                version = None if dry_run else 0
                if not dry_run:
                    next(stats), next(stats)
                    if self.policy is not None and owner_id is not None:
                        next(stats)  # the owner's marker
                res = self._decode(kind, new, version, None, version)
            else:
                assert raw is not None
                version = raw.stat.version
                if not dry_run and any(a != "unchanged" for _, a, _, _ in plan):
                    r = next(stats)
                    if action == "configured":
                        version = r.version
                sv = raw.status_stat.version if raw.status_stat else None
                res = self._decode(kind, new, version, raw.status, sv)
            out.append(ApplyResult(kind.KIND, obj.name, action, res))  # type: ignore[arg-type]
        return out

    # -- watch ------------------------------------------------------------------------------
    def watch(self, kind: type[Resource] | Iterable[type[Resource]] | None = None, *,
              send_initial: bool = True) -> "Watch":
        """Start watching one kind, several, or (None) every kind this store knows.

        Returns a running Watch: iterate it (blocking) or call `get(timeout)`; `stop()` ends it.
        With `send_initial`, existing objects arrive first as ADDED (list-then-watch)."""
        if kind is None:
            kinds = None
        elif isinstance(kind, type):
            kinds = [kind]
        else:
            kinds = list(kind)
        w = Watch(self, kinds, send_initial)
        self._watches.append(w)
        return w

    # -- runs and misc ----------------------------------------------------------------------
    @staticmethod
    def _run_path(path: str) -> str:
        p = path.strip("/")
        # no empty, "." or ".." segment (as a split would tell, without one: a few per unit)
        if (not p or "//" in p or p in (".", "..") or p.startswith(("./", "../")) or p.endswith(("/.", "/.."))
                or "/./" in p or "/../" in p):
            raise InvalidObject(f"bad run path {path!r}: use 'job/segment/...'")
        return f"{RUNS}/{p}"

    def create_once(self, path: str, data: bytes | str | Mapping[str, Any] | None = None) -> bool:
        """Create runs/<path> with `data` if it does not exist: True if this call created it.

        Exactly once: of any number of concurrent callers one gets True. (If the connection
        drops mid-call, StoreUnavailable is raised and a retry may return False for our own
        create: put an owner id in `data` and compare with `get_run` when that matters.)"""
        if isinstance(data, Mapping):
            raw = _dumps(data)
        elif isinstance(data, str):
            raw = data.encode()
        else:
            raw = data or b""
        try:
            self._call(f"create {path}", "create_async", self._run_path(path), raw, makepath=True)  # default ACL
            return True
        except NodeExistsError:
            return False

    def get_run(self, path: str) -> bytes | None:
        try:
            return self._call(f"read {path}", "get_async", self._run_path(path))[0]
        except NoNodeError:
            return None

    def list_runs(self, path: str) -> list[str]:
        try:
            return sorted(self._call(f"list {path}", "get_children_async", self._run_path(path)))
        except NoNodeError:
            return []

    def get_runs(self, *paths: str) -> list[bytes | None]:
        """Several run records in one round trip (None where one does not exist)."""
        return self._get_many([self._run_path(p) for p in paths], f"read {', '.join(paths)}")

    def read_runs(self, path: str) -> list[tuple[str, bytes]]:
        """Every child of runs/<path> with its data, sorted by name (iter_runs, all at once)."""
        return list(self.iter_runs(path))

    def iter_runs(self, path: str) -> Iterator[tuple[str, bytes]]:
        """Every child of runs/<path> with its data, sorted by name, as they arrive: RUN_BATCH
        records per request (ZooKeeper's multiRead), READ_AHEAD requests in flight beyond the one
        being read (the server reads the next while we parse), or pipelined reads where the
        server has no multiRead. A consumer that writes each out holds a window, not the job."""
        names = self.list_runs(path)
        base = self._run_path(path)
        what = f"read {path}"
        chunks = iter([names[i:i + RUN_BATCH] for i in range(0, len(names), RUN_BATCH)])
        sent = collections.deque((c, self._send_many([f"{base}/{n}" for n in c]))
                                 for c in itertools.islice(chunks, READ_AHEAD + 1))
        while sent:
            chunk, request = sent.popleft()
            nxt = next(chunks, None)
            if nxt is not None:
                sent.append((nxt, self._send_many([f"{base}/{n}" for n in nxt])))
            for n, data in zip(chunk, self._collect_many(request, what)):
                if data is not None:   # None: deleted meanwhile (compaction)
                    yield n, data

    def _get_many(self, paths: list[str], what: str) -> list[bytes | None]:
        """The data of each path (None where there is no node), in one round trip when the
        server has multiRead (ZooKeeper 3.6+). Why: reading a job's records back (amalgamation,
        compaction, a restart) is one read per unit; kazoo spends ~100 us per single read."""
        if not paths:   # nothing to ask (an empty multiRead is not a request to send)
            return []
        return self._collect_many(self._send_many(paths), what)

    def _send_many(self, paths: list[str]) -> tuple[list[str], Any]:
        """Send the reads of `paths` (one multiRead, or one get each); `_collect_many` waits."""
        self._ready()
        if self._multi_read:
            root = self._client.chroot
            result = self._client.handler.async_result()
            self._client._call(_MultiRead(tuple(_prefix_root(root, p) if root else p for p in paths)), result)
            return paths, result
        return paths, [self._client.get_async(p) for p in paths]

    def _collect_many(self, sent: tuple[list[str], Any], what: str) -> list[bytes | None]:
        paths, pending = sent
        if not isinstance(pending, list):   # one multiRead
            try:
                got = self._wait(pending, what)
            except UnimplementedError:   # a server before 3.6: read one by one from now on
                if self._multi_read:
                    log.info("ZooKeeper at %s has no multiRead: reading records one by one", self.hosts)
                self._multi_read = False
                return self._collect_many(self._send_many(paths), what)
            out: list[bytes | None] = []
            for r in got:
                if isinstance(r, NoNodeError):
                    out.append(None)
                elif isinstance(r, NoAuthError):
                    raise Forbidden(f"forbidden: user {self.whoami!r} may not {what}")
                elif isinstance(r, Exception):
                    raise StoreUnavailable(f"{what}: {type(r).__name__}")
                else:
                    out.append(r)
            return out
        values: list[bytes | None] = []
        for res in pending:
            try:
                data = self._wait(res, what)[0]
            except NoNodeError:
                values.append(None)
            else:
                values.append(b"" if data is None else data)
        return values

    def create_many(self, items: Sequence[tuple[str, bytes]], *, exist_ok: bool = False) -> bool:
        """Create run records, RUN_BATCH per transaction (one round trip each): all of a batch or
        none. False when one already existed (with `exist_ok`, existing ones are skipped and
        True is returned). Parents are created as needed."""
        ok = True
        for i in range(0, len(items), RUN_BATCH):
            chunk = [(self._run_path(p), d) for p, d in items[i:i + RUN_BATCH]]
            for attempt in range(2):
                for parent in {c[0].rsplit("/", 1)[0] for c in chunk}:
                    self._ensure(parent)
                txn = self._client.transaction()
                self._creates(txn, chunk)
                err = self._txn_error(self._commit(txn, f"create {len(chunk)} run records"))
                if err is None:
                    break
                if isinstance(err[1], NoNodeError) and attempt == 0:  # a parent was removed: again
                    self._ensured.difference_update({c[0].rsplit("/", 1)[0] for c in chunk})
                    continue
                self._forbidden(err, "create run records")   # e.g. another protocol's job's
                if not isinstance(err[1], NodeExistsError):
                    raise StoreUnavailable(f"create run records: {type(err[1]).__name__}")
                if not exist_ok:
                    return False
                self._create_each(chunk)
                break
        return ok

    def _creates(self, txn: Any, chunk: list[tuple[str, bytes]]) -> None:
        """txn.create for each, without kazoo's per-call checks and path normalization (a few run
        records are written per unit: it adds up). Run paths are normal already (_run_path)."""
        root = self._client.chroot
        prefix = _prefix_root(root, "") if root else ""
        acl = self._client.default_acl or OPEN_ACL_UNSAFE
        for p, d in chunk:
            if not isinstance(d, bytes):
                raise TypeError(f"run record {p}: data must be bytes")
            txn.operations.append(_Create(prefix + p, d, acl, 0))

    def _create_each(self, chunk: list[tuple[str, bytes]]) -> None:
        self._ready()
        pending = [self._client.create_async(p, d) for p, d in chunk]
        for (p, _), res in zip(chunk, pending):
            try:
                self._wait(res, f"create {p}")
            except NodeExistsError:
                pass

    def delete_runs(self, path: str, keep: Iterable[str] = ()) -> int:
        """Remove runs/<path> and everything under it, except its children named in `keep` (then
        runs/<path> itself stays too); returns how many znodes went. Idempotent.
        Why this shape: a job's records are leaves, 300,000 of them for 100,000 units. Listing
        every node to learn it has no children was 300,000 reads in flight at once (50 s and
        +570 MB for one job); instead each node is first deleted as if it were a leaf, in
        transactions, and only a transaction that meets a node with children (or one gone
        already) falls back to listing and deleting its nodes one by one."""
        root = self._run_path(path)
        if keep:
            self._ready()
            try:
                kids = self._wait(self._client.get_children_async(root), f"list {path}")
            except NoNodeError:
                kids = []
            keep = set(keep)
            gone = self._delete_trees([f"{root}/{k}" for k in kids if k not in keep], path)
        else:
            gone = self._delete_trees([root], path)
        self._ensured = {p for p in self._ensured if not (p == root or p.startswith(root + "/"))}
        return gone

    def _delete_trees(self, paths: list[str], what: str) -> int:
        """Delete each of `paths` with its subtree: DELETE_BATCH per transaction, READ_AHEAD
        transactions in flight; a chunk that fails goes one path at a time."""
        gone = 0
        chunks = iter([paths[i:i + DELETE_BATCH] for i in range(0, len(paths), DELETE_BATCH)])
        sent = collections.deque((c, self._send_deletes(c)) for c in itertools.islice(chunks, READ_AHEAD + 1))
        while sent:
            chunk, request = sent.popleft()
            nxt = next(chunks, None)
            if nxt is not None:
                sent.append((nxt, self._send_deletes(nxt)))
            err = self._txn_error(list(self._wait(request, f"delete {len(chunk)} run records under {what}")))
            self._forbidden(err, f"delete run records under {what}")
            if err is None:
                gone += len(chunk)
            elif isinstance(err[1], (NotEmptyError, NoNodeError)):
                gone += sum(self._delete_tree(p, what) for p in chunk)
            else:
                raise StoreUnavailable(f"delete run records under {what}: {type(err[1]).__name__}")
        return gone

    def _delete_tree(self, path: str, what: str) -> int:
        """One node with its subtree: its children first (as leaves, in transactions), then it."""
        try:
            kids = self._wait(self._client.get_children_async(path), f"list {path}")
        except NoNodeError:
            return 0
        gone = self._delete_trees([f"{path}/{k}" for k in kids], what) if kids else 0
        try:
            self._wait(self._client.delete_async(path), f"delete {path}")
        except NoNodeError:
            return gone
        return gone + 1

    def _send_deletes(self, chunk: list[str]) -> Any:
        """One transaction deleting `chunk`, in order (all or none)."""
        self._ready()
        root = self._client.chroot
        prefix = _prefix_root(root, "") if root else ""
        txn = self._client.transaction()
        txn.operations.extend(_Delete(prefix + p, -1) for p in chunk)
        return txn.commit_async()

    def close(self) -> None:
        for w in list(self._watches):
            w.stop()
        try:
            self._client.stop()
            self._client.close()
        except Exception:  # closing an already broken client
            pass

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- watch ------------------------------------------------------------------------------------
@dataclass
class _Seen:
    sig: tuple[int, int, int]  # object czxid, object mzxid, status mzxid
    obj: Resource


class Watch:
    """A running watch: a thread-safe queue of WatchEvents fed by one worker thread.

    Iterate it (blocks; ends after stop()), or poll with `get(timeout)`. Events for one object
    arrive in order; fast successive writes may be coalesced into one MODIFIED with the latest
    state (level triggered, as an engine's work queue wants)."""

    def __init__(self, store: Store, kinds: list[type[Resource]] | None, send_initial: bool) -> None:
        self._store = store
        self._all = kinds is None
        self._kinds: dict[str, type[Resource]] = (
            dict(store.kinds) if kinds is None else {store._dir(k): k for k in kinds}
        )
        self.events: queue.Queue[WatchEvent | None] = queue.Queue()
        self._tasks: queue.Queue[tuple[str, ...] | None] = queue.Queue()
        self._cache: dict[tuple[str, str], _Seen] = {}
        self._stopped = threading.Event()
        self._emit = send_initial
        for d in self._kinds:
            store._ensure(f"{OBJECTS}/{d}")
        store.client.add_listener(self._on_state)
        self._relist(synthetic=False)  # watches are armed once the constructor returns
        self._emit = True
        self._thread = threading.Thread(target=self._run, name="boid-store-watch", daemon=True)
        self._thread.start()

    # -- consumer side ----------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        """False once stopped or if its worker thread died: the consumer should watch again."""
        return not self._stopped.is_set() and self._thread.is_alive()

    def get(self, timeout: float | None = None) -> WatchEvent | None:
        """The next event, or None on timeout or once stopped."""
        if self._stopped.is_set() and self.events.empty():
            return None
        try:
            ev = self.events.get(timeout=timeout)
        except queue.Empty:
            return None
        if ev is None:
            self.events.put(None)  # keep other consumers from blocking
        return ev

    def __iter__(self) -> Iterator[WatchEvent]:
        while True:
            ev = self.get()
            if ev is None:
                return
            yield ev

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._store.client.remove_listener(self._on_state)
        self._tasks.put(None)
        self.events.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        if self in self._store._watches:
            self._store._watches.remove(self)

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- ZooKeeper side (kazoo threads: never block here) -----------------------------------
    def _on_state(self, state: str) -> None:
        if state == KazooState.CONNECTED and not self._stopped.is_set():
            self._tasks.put(("relist",))

    def _on_zk_event(self, event: Any) -> None:
        if self._stopped.is_set() or not event.path or not event.path.startswith(OBJECTS):
            return
        rel = event.path[len(OBJECTS):].strip("/")
        parts = rel.split("/") if rel else []
        if not parts:
            self._tasks.put(("root",))
        elif len(parts) == 1:
            self._tasks.put(("kind", parts[0]))
        else:
            self._tasks.put(("obj", parts[0], parts[1]))

    # -- worker -----------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopped.is_set():
            task = self._tasks.get()
            if task is None:
                return
            try:
                if task[0] == "relist":
                    self._relist(synthetic=True)
                elif task[0] == "root":
                    self._sync_root()
                elif task[0] == "kind":
                    self._sync_kind(task[1], full=False, synthetic=False)
                else:
                    self._sync_obj(task[1], task[2], synthetic=False)
            except (StoreError, KazooException) as e:
                log.info("watch: %s; re-listing once reconnected", e)
                while not self._stopped.is_set() and not self._store._connected.wait(0.2):
                    pass
                self._tasks.put(("relist",))
            except Exception:  # never let the watch thread die silently
                log.exception("watch: unexpected error; re-listing")
                self._stopped.wait(0.5)
                self._tasks.put(("relist",))

    def _relist(self, synthetic: bool) -> None:
        if self._all:
            self._sync_root()
        for d in list(self._kinds):
            self._sync_kind(d, full=True, synthetic=synthetic)

    def _sync_root(self) -> None:
        if not self._all:
            return
        dirs = self._store._call("list kinds", "get_children_async", OBJECTS, watch=self._on_zk_event)
        for d in dirs:
            if d not in self._kinds and d in self._store.kinds:
                self._kinds[d] = self._store.kinds[d]
                self._sync_kind(d, full=True, synthetic=False)

    def _sync_kind(self, d: str, *, full: bool, synthetic: bool) -> None:
        if d not in self._kinds:
            return
        try:
            names = set(self._store._call(f"list {d}", "get_children_async", f"{OBJECTS}/{d}",
                                          watch=self._on_zk_event))
        except NoNodeError:
            names = set()
            self._store._call(f"watch {d}", "exists_async", f"{OBJECTS}/{d}", watch=self._on_zk_event)
        known = {n for (k, n) in self._cache if k == d}
        todo = (names | known) if full else (names ^ known)
        for n in sorted(todo):
            self._sync_obj(d, n, synthetic=synthetic)

    def _sync_obj(self, d: str, name: str, *, synthetic: bool) -> None:
        kind = self._kinds.get(d)
        if kind is None:
            return
        store = self._store
        path = f"{OBJECTS}/{d}/{name}"
        raw = store._finish_read(store._read_async(path, watch=self._on_zk_event), f"watch {path}")
        key = (d, name)
        prev = self._cache.get(key)
        if raw is None:
            if prev is not None:
                del self._cache[key]
                self._put("DELETED", kind, name, prev.obj, synthetic)
            return
        if raw.status_stat is None:  # arm a watch for the status node's creation
            store._call(f"watch {path}", "exists_async", f"{path}/{STATUS_NODE}", watch=self._on_zk_event)
        sig = (raw.stat.czxid, raw.stat.mzxid, raw.status_stat.mzxid if raw.status_stat else 0)
        if prev is not None and prev.sig == sig:
            return
        try:
            obj = store._decode_raw(kind, raw)
        except (ValidationError, ValueError, KeyError, TypeError) as e:
            log.warning("watch: cannot decode %s: %s", path, e)
            return
        self._cache[key] = _Seen(sig, obj)
        if prev is None:
            self._put("ADDED", kind, name, obj, synthetic)
        elif prev.sig[0] != sig[0]:  # deleted and re-created in between
            self._put("DELETED", kind, name, prev.obj, synthetic)
            self._put("ADDED", kind, name, obj, synthetic)
        else:
            self._put("MODIFIED", kind, name, obj, synthetic)

    def _put(self, type_: str, kind: type[Resource], name: str, obj: Resource, synthetic: bool) -> None:
        if self._emit and not self._stopped.is_set():
            self.events.put(WatchEvent(type_, kind.KIND, name, obj, synthetic))  # type: ignore[arg-type]
