"""Who is talking to ZooKeeper, and which ACLs a secured cluster puts on its znodes.

Identities are ZooKeeper digest users (`addauth digest user:password`). The digest scheme never
fails a login: a wrong password only yields a different id. So a secured cluster registers each
user as `users/<name>`, readable by that user's id alone; a client proves its credentials are
right by reading it (Store does so on connect: a clear "authentication failed", not a later
"forbidden" on the first write).

Why creators are proven by markers, not by ACLs alone: ZooKeeper fills in the creator's id only
for the `auth` ACL scheme; it accepts any well-formed `digest:user:hash` entry a client writes.
So an object's ACL *claims* an owner, and the proof is a marker `users/<owner>/<kind>.<name>.<uid>`
created in the same multi-op transaction as the object (same czxid): only the owner (or an admin,
acting for a GitSource's owner) may create children of `users/<owner>`.

The policy (`/boid/v1/policy`, world-readable, admin-writable) names the admin ids (the
operator's identity); its existence is what makes a cluster "secured". Without it,
every znode stays world-writable as before (tests, and clusters that predate tenancy).
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any, Iterable

from kazoo.security import ACL, Id, Permissions, make_digest_acl_credential

ROOT = "/boid/v1"
POLICY = f"{ROOT}/policy"
USERS = f"{ROOT}/users"
RUNS = f"{ROOT}/runs"
DISPATCHERS = f"{ROOT}/dispatchers"     # dispatchers/<protocol>: that dispatcher's leader lock, Mesos state
RUN_DIRS = ("attempts", "results", "accepted", "recorded")   # a job's record directories (jobs/records.py)
DISPATCHER_PREFIX = "dispatcher."       # dispatcher.<protocol>: a protocol's dispatcher identity (reserved)
WORLD = Id("world", "anyone")
_NAME_OK = set("abcdefghijklmnopqrstuvwxyz0123456789-_.")
_WRITER = Permissions.READ | Permissions.WRITE | Permissions.CREATE | Permissions.DELETE  # all but ADMIN


class _RedactAuth(logging.Filter):
    """kazoo logs every request at DEBUG, the digest login's `user:password` included: redact it.
    And a server requiring SASL logs as an "unhandled exception" with a traceback: one line instead
    (the Store raises the clear error)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from kazoo.exceptions import SessionClosedRequireSaslError
        from kazoo.protocol.serialization import Auth

        if record.exc_info and isinstance(record.exc_info[1], SessionClosedRequireSaslError):
            record.msg, record.args, record.exc_info = "the server requires a SASL login", (), None

        if isinstance(record.args, tuple) and any(isinstance(a, Auth) for a in record.args):
            record.args = tuple(f"Auth(scheme={a.scheme!r}, auth=REDACTED)" if isinstance(a, Auth) else a
                                for a in record.args)
        return True


for _name in ("kazoo.client", "kazoo.protocol.connection"):
    logging.getLogger(_name).addFilter(_RedactAuth())


class AuthError(Exception):
    """Credentials or TLS settings are unusable (never carries the secret)."""


def check_user_name(name: str) -> str:
    if not name or len(name) > 64 or not set(name.lower()) <= _NAME_OK or name[0] in "-." or ":" in name:
        raise AuthError(f"invalid user name {name!r}: use letters, digits, '-', '_' and '.' (at most 64)")
    return name


@dataclass(frozen=True)
class Credentials:
    """A ZooKeeper digest identity. The password is kept out of repr/str (logs, tracebacks)."""

    user: str
    password: str = field(repr=False)
    sasl: bool = False   # also log in with SASL DIGEST-MD5 (a server that requires SASL sessions)

    def __post_init__(self) -> None:
        check_user_name(self.user)
        if not self.password:
            raise AuthError(f"empty password for user {self.user!r}")

    def __str__(self) -> str:
        return self.user

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        """Pretty printers (IPython, hypothesis' failure reports) would list every field: repr()."""
        p.text(repr(self))

    @property
    def digest_id(self) -> str:
        """`user:base64(sha1(user:password))`, the id ZooKeeper derives from this login."""
        return make_digest_acl_credential(self.user, self.password)

    def auth_data(self) -> list[tuple[str, str]]:
        return [("digest", f"{self.user}:{self.password}")]

    def sasl_options(self) -> dict[str, str] | None:
        """kazoo's SASL login (pure-sasl), when the server requires SASL-authenticated sessions
        (JAAS DigestLoginModule with the same user and password). ACLs still name the digest id:
        ZooKeeper keeps both identities on the session."""
        if not self.sasl:
            return None
        return {"mechanism": "DIGEST-MD5", "username": self.user, "password": self.password}

    @staticmethod
    def generate(user: str) -> "Credentials":
        return Credentials(user, secrets.token_urlsafe(32))


def sasl_login_refused(client: Any, timeout: float) -> bool:
    """Wait until a started kazoo client's SASL login is through: True when the server refused it.
    (kazoo reports CONNECTED before the SASL exchange, and a refused login only as the session
    state AUTH_FAILED; the server just drops the connection.)"""
    import time

    from kazoo.exceptions import AuthFailedError, ConnectionClosedError, ConnectionLoss
    from kazoo.protocol.states import KeeperState

    deadline = time.monotonic() + timeout
    while True:
        if client.client_state == KeeperState.AUTH_FAILED:
            return True
        try:
            client.exists("/")   # answered only on a logged-in session
            return False
        except AuthFailedError:
            return True
        except ConnectionClosedError:   # kazoo stops connecting only on AUTH_FAILED (then CLOSED)
            return True                 # or on stop(), which nobody called
        except ConnectionLoss:
            if time.monotonic() > deadline:
                return client.client_state == KeeperState.AUTH_FAILED
            time.sleep(0.05)


def user_of(digest_id: str) -> str:
    return digest_id.split(":", 1)[0]


def dispatcher_user(protocol: str) -> str:
    """The identity of a protocol's dispatcher. Users cannot be created with this prefix."""
    return check_user_name(DISPATCHER_PREFIX + protocol)


def status_writer(kind_dir: str, data: dict[str, Any]) -> str | None:
    """Who besides the admins may write an object's status: a Job's protocol's dispatcher."""
    proto = (data.get("spec") or {}).get("protocol") if kind_dir == "jobs" else None
    return DISPATCHER_PREFIX + proto if isinstance(proto, str) and proto else None


@dataclass(frozen=True)
class TLS:
    """ZooKeeper's secureClientPort: kazoo use_ssl with a CA (and a client cert/key if required)."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    verify: bool = True

    def kazoo_kwargs(self) -> dict[str, Any]:
        return {"use_ssl": True, "ca": self.ca, "certfile": self.cert, "keyfile": self.key,
                "verify_certs": self.verify}


@dataclass(frozen=True)
class Policy:
    """The cluster's tenancy policy as stored at POLICY."""

    admins: tuple[str, ...]                    # digest ids with every right (the operator)

    def to_json(self) -> bytes:
        return json.dumps({"admins": list(self.admins)}, sort_keys=True).encode()

    @staticmethod
    def from_json(data: bytes) -> "Policy":
        d = json.loads(data or b"{}")
        return Policy(tuple(d.get("admins", ())))

    def is_admin(self, digest_id: str | None) -> bool:
        return digest_id is not None and digest_id in self.admins

    @property
    def admin_users(self) -> frozenset[str]:
        return frozenset(user_of(a) for a in self.admins)

    # -- the ACL of each kind of znode ---------------------------------------------------------
    def _admins(self) -> list[ACL]:
        return [ACL(Permissions.ALL, Id("digest", a)) for a in self.admins]

    def system_acl(self) -> list[ACL]:
        """Root, objects/, runs/, policy, users/, leader, mesos state: admins write, all read."""
        return [*self._admins(), ACL(Permissions.READ, WORLD)]

    def kind_dir_acl(self) -> list[ACL]:
        """objects/<plural>: anyone may create an object (it is admitted only with a proven
        owner) and remove one it may empty; an object always holds its status child, which only
        its owner and admins may delete, so others cannot remove it."""
        return [*self._admins(),
                ACL(Permissions.READ | Permissions.CREATE | Permissions.DELETE, WORLD)]

    def object_acl(self, owner_id: str | None) -> list[ACL]:
        """An object: its owner and the admins write, everyone reads."""
        own = [ACL(Permissions.ALL, Id("digest", owner_id))] if owner_id and owner_id not in self.admins else []
        return [*own, *self._admins(), ACL(Permissions.READ, WORLD)]

    def status_acl(self) -> list[ACL]:
        """A status znode: written by admins (the operator) only."""
        return self.system_acl()

    def runs_acl(self) -> list[ACL]:
        """runs/ itself: only admins create a job's run directory (the operator's grant, see
        grant_job); dispatchers may remove an emptied one (added by ensure_dispatcher)."""
        return self.system_acl()

    def default_acl(self, my_id: str | None) -> list[ACL]:
        """What a client's znodes get unless it names an ACL: a non-admin (a dispatcher: its run
        records, leader lock, Mesos state) keeps the rights to what it created; admins all; world reads."""
        if my_id is None or my_id in self.admins:
            return self.system_acl()
        return [ACL(_WRITER, Id("digest", my_id)), *self._admins(), ACL(Permissions.READ, WORLD)]

    # -- a protocol's dispatcher: write rights on its own jobs only (granted by the operator) ----
    def granted_status_acl(self, dispatcher_id: str) -> list[ACL]:
        return [*self._admins(), ACL(Permissions.READ | Permissions.WRITE, Id("digest", dispatcher_id)),
                ACL(Permissions.READ, WORLD)]

    def granted_runs_acl(self, dispatcher_id: str) -> list[ACL]:
        """runs/<job uid>: the dispatcher creates and removes records in it; its data (the grant)
        is the admins' alone."""
        return [*self._admins(), ACL(Permissions.READ | Permissions.CREATE | Permissions.DELETE,
                                     Id("digest", dispatcher_id)), ACL(Permissions.READ, WORLD)]

    def dispatcher_dir_acl(self, dispatcher_id: str) -> list[ACL]:
        return [ACL(_WRITER, Id("digest", dispatcher_id)), *self._admins(), ACL(Permissions.READ, WORLD)]

    def user_dir_acl(self, user_id: str) -> list[ACL]:
        """users/<name>: readable (the login check) and markers creatable only by that user. A
        dispatcher only reads it: it creates no objects (it owns none)."""
        rights = Permissions.READ if user_of(user_id).startswith(DISPATCHER_PREFIX) else \
            Permissions.READ | Permissions.CREATE | Permissions.DELETE
        own = [] if user_id in self.admins else [ACL(rights, Id("digest", user_id))]
        return [*own, *self._admins()]

    def marker_acl(self, owner_id: str) -> list[ACL]:
        return self.user_dir_acl(owner_id)


def acl_ids(acls: Iterable[ACL], perms: int) -> list[str]:
    """The digest ids an ACL grants at least `perms`."""
    return [a.id.id for a in acls if a.id.scheme == "digest" and (a.perms & perms) == perms]


def marker_name(kind_dir: str, name: str, uid: str) -> str:
    return f"{kind_dir}.{name}.{uid}"


# -- set-up (an admin's kazoo client; idempotent) ----------------------------------------------
def secure_cluster(client: Any, policy: Policy, kind_dirs: Iterable[str]) -> None:
    """Make the cluster at `client` (authenticated as an admin of `policy`) secured: the system
    znodes and kind directories get their ACLs, and the policy is written. Safe to re-run.
    Objects that existed before the first securing become the admins' (Store.owner: created
    before the policy), and get the admins-only ACLs here."""
    system = policy.system_acl()
    first = client.exists(POLICY) is None
    if not first:   # an admin added (e.g. the operator's own identity): it joins every znode's ACL
        old = Policy.from_json(client.get(POLICY)[0])
        added = [a for a in policy.admins if a not in old.admins]
        if added and old.admins:
            _add_admins(client, ROOT, set(old.admins), added)
    for path in ("/boid", ROOT, f"{ROOT}/objects", USERS):
        client.ensure_path(path, acl=system)
        client.set_acls(path, system)
    client.ensure_path(RUNS, acl=system)
    for d in kind_dirs:
        path = f"{ROOT}/objects/{d}"
        client.ensure_path(path, acl=policy.kind_dir_acl())
        client.set_acls(path, policy.kind_dir_acl())
        for name in client.get_children(path) if first else ():
            client.set_acls(f"{path}/{name}", policy.object_acl(None))
            if client.exists(f"{path}/{name}/status"):
                client.set_acls(f"{path}/{name}/status", policy.status_acl())
    runs_acl = client.get_acls(RUNS)[0]   # keep dispatchers' right to remove emptied run dirs
    client.set_acls(RUNS, [*policy.runs_acl(), *(a for a in runs_acl if a.perms == Permissions.DELETE
                                                  and a.id.scheme == "digest"
                                                  and user_of(a.id.id).startswith(DISPATCHER_PREFIX))])
    if first:  # run records, leader, Mesos state written before: admins only from now on
        for top in client.get_children(ROOT):
            if top not in ("objects", "users", "policy"):
                _set_tree(client, f"{ROOT}/{top}", policy.runs_acl() if top == "runs" else system)
    if not first:
        client.set(POLICY, policy.to_json())
    else:
        client.create(POLICY, policy.to_json(), acl=system)
    for admin in policy.admins:
        register_user(client, policy, admin)


def _add_admins(client: Any, path: str, old: set[str], added: list[str]) -> None:
    """Give `added` admins full rights wherever the `old` admins have them (walks the tree)."""
    acl, _ = client.get_acls(path)
    if any(a.id.scheme == "digest" and a.id.id in old and a.perms == Permissions.ALL for a in acl):
        have = {a.id.id for a in acl if a.id.scheme == "digest"}
        new = [ACL(Permissions.ALL, Id("digest", i)) for i in added if i not in have]
        if new:
            client.set_acls(path, [*acl, *new])
    for child in client.get_children(path):
        _add_admins(client, f"{path}/{child}", old, added)


def _set_tree(client: Any, path: str, acl: list[ACL]) -> None:
    client.set_acls(path, acl)
    for child in client.get_children(path):
        _set_tree(client, f"{path}/{child}", acl)


def register_user(client: Any, policy: Policy, digest_id: str) -> None:
    """Create (or re-key) users/<name> for a digest id: its login check and marker directory."""
    name = check_user_name(user_of(digest_id))
    path = f"{USERS}/{name}"
    data = json.dumps({"id": digest_id}).encode()
    if client.exists(path):
        client.set(path, data)
        client.set_acls(path, policy.user_dir_acl(digest_id))
    else:
        client.create(path, data, acl=policy.user_dir_acl(digest_id))


def secure_hosts(hosts: str, admin: Credentials, kind_dirs: Iterable[str], users: Iterable[str] = (),
                 timeout: float = 10.0, *, admins: Iterable[str] = ()) -> Policy:
    """secure_cluster + register_user over a client of its own (`boidctl up`, test fixtures).
    `admin` connects; `admins`: further admin digest ids (the operator's own identity)."""
    from kazoo.client import KazooClient

    policy = Policy(admins=(admin.digest_id, *(a for a in admins if a != admin.digest_id)))
    client = KazooClient(hosts=hosts, auth_data=admin.auth_data())
    client.start(timeout=timeout)
    try:
        secure_cluster(client, policy, kind_dirs)
        for digest_id in users:
            register_user(client, policy, digest_id)
    finally:
        client.stop()
        client.close()
    return policy


# -- dispatcher identities and grants (the operator's admin client; idempotent) ------------------
def registered_id(client: Any, user: str) -> str | None:
    """The digest id users/<user> was registered with (None: not registered). Admins only."""
    from kazoo.exceptions import NoNodeError

    try:
        return json.loads(client.get(f"{USERS}/{user}")[0])["id"]
    except NoNodeError:
        return None


def dispatcher_credentials(home: str, protocol: str) -> Credentials:
    """`<home>/<protocol>/password` (mode 0600, made on first use): the password of the protocol's
    dispatcher. Its dispatcher app mounts `<home>/<protocol>` read-only (adapters/marathon.py)."""
    import os
    from pathlib import Path

    path = Path(home) / protocol / "password"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name("password.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
        tmp.replace(path)
    return Credentials(dispatcher_user(protocol), path.read_text().strip())


def ensure_dispatcher(client: Any, policy: Policy, protocol: str, creds: Credentials | str) -> str:
    """Register a protocol's dispatcher identity (credentials, or a digest id registered before)
    and give it dispatchers/<protocol> (its leader lock and Mesos framework state) and the right
    to remove emptied run directories. Returns its digest id. Safe to re-run; a new password re-keys it."""
    did = creds.digest_id if isinstance(creds, Credentials) else creds
    if user_of(did) != dispatcher_user(protocol):
        raise AuthError(f"the dispatcher of protocol {protocol!r} must be user {dispatcher_user(protocol)!r}")
    if registered_id(client, user_of(did)) != did:
        register_user(client, policy, did)
    client.ensure_path(DISPATCHERS, acl=policy.system_acl())
    path = f"{DISPATCHERS}/{protocol}"
    if client.exists(path) is None:
        client.create(path, b"", acl=policy.dispatcher_dir_acl(did))
    elif client.get_acls(path)[0] != policy.dispatcher_dir_acl(did):
        _set_tree(client, path, policy.dispatcher_dir_acl(did))
    acl, _ = client.get_acls(RUNS)
    mine = ACL(Permissions.DELETE, Id("digest", did))
    if mine not in acl:   # an emptied runs/<uid> of a deleted job is removed by its dispatcher
        keep = [a for a in acl if not (a.id.scheme == "digest" and user_of(a.id.id) == user_of(did))]
        client.set_acls(RUNS, [*keep, mine])
    return did


def grant_job(client: Any, policy: Policy, *, name: str, uid: str, protocol: str, dispatcher_id: str) -> None:
    """Let the dispatcher of `protocol` run Job `name`: write its status, create and remove its
    run records under runs/<uid>, remove the object once cleaned up. Nothing else: not its spec,
    not other jobs' records. runs/<uid> is created here with the grant as data (only admins can
    create children of runs/, so a dispatcher trusts it as the operator's admission)."""
    obj = f"{ROOT}/objects/jobs/{name}"
    acl, _ = client.get_acls(obj)   # the owner's and admins' entries stay; dispatchers' are replaced
    keep = [a for a in acl if not (a.id.scheme == "digest" and user_of(a.id.id).startswith(DISPATCHER_PREFIX))]
    client.set_acls(obj, [*keep, ACL(Permissions.READ | Permissions.DELETE, Id("digest", dispatcher_id))])
    client.set_acls(f"{obj}/status", policy.granted_status_acl(dispatcher_id))
    runs = f"{RUNS}/{uid}"
    data = json.dumps({"protocol": protocol, "job": name}, sort_keys=True).encode()
    from kazoo.exceptions import NodeExistsError

    try:
        client.create(runs, data, acl=policy.granted_runs_acl(dispatcher_id))
    except NodeExistsError:
        client.set(runs, data)
        client.set_acls(runs, policy.granted_runs_acl(dispatcher_id))
    for d in RUN_DIRS:   # the dispatcher's, whoever writes the first record in them
        try:
            client.create(f"{runs}/{d}", b"", acl=policy.dispatcher_dir_acl(dispatcher_id))
        except NodeExistsError:
            client.set_acls(f"{runs}/{d}", policy.dispatcher_dir_acl(dispatcher_id))


def grant_journal(client: Any, policy: Policy, path: str, dispatcher_id: str) -> None:
    """runs/<path> (a protocol's ledger journal): the dispatcher appends batches to it, never
    removes or rewrites one (the journal is what reaches the chain exactly once)."""
    full = f"{RUNS}/{path.strip('/')}"
    client.ensure_path(full.rsplit("/", 1)[0], acl=policy.system_acl())
    acl = [ACL(Permissions.READ | Permissions.CREATE, Id("digest", dispatcher_id)), *policy._admins(),
           ACL(Permissions.READ, WORLD)]
    if client.exists(full) is None:
        from kazoo.exceptions import NodeExistsError

        try:
            client.create(full, b"", acl=acl)
            return
        except NodeExistsError:
            pass
    client.set_acls(full, acl)


def read_grant(client: Any, uid: str) -> dict[str, Any] | None:
    """The operator's grant of a job to its protocol's dispatcher (None: not granted yet)."""
    from kazoo.exceptions import NoNodeError

    try:
        data, _ = client.get(f"{RUNS}/{uid}")
    except NoNodeError:
        return None
    try:
        d = json.loads(data or b"null")
    except ValueError:
        return None
    return d if isinstance(d, dict) and "protocol" in d else None
