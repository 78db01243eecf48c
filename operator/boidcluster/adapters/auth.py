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
WORLD = Id("world", "anyone")
_NAME_OK = set("abcdefghijklmnopqrstuvwxyz0123456789-_.")


class _RedactAuth(logging.Filter):
    """kazoo logs every request at DEBUG, the digest login's `user:password` included: redact it."""

    def filter(self, record: logging.LogRecord) -> bool:
        from kazoo.protocol.serialization import Auth

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

    def __post_init__(self) -> None:
        check_user_name(self.user)
        if not self.password:
            raise AuthError(f"empty password for user {self.user!r}")

    def __str__(self) -> str:
        return self.user

    @property
    def digest_id(self) -> str:
        """`user:base64(sha1(user:password))`, the id ZooKeeper derives from this login."""
        return make_digest_acl_credential(self.user, self.password)

    def auth_data(self) -> list[tuple[str, str]]:
        return [("digest", f"{self.user}:{self.password}")]

    @staticmethod
    def generate(user: str) -> "Credentials":
        return Credentials(user, secrets.token_urlsafe(32))


def user_of(digest_id: str) -> str:
    return digest_id.split(":", 1)[0]


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
        """Run records: written by the admins (the operator) only. A per-protocol dispatcher with
        an identity of its own would need create rights on its own jobs' records only, granted
        when the operator admits a job; not built yet, so dispatchers run as an admin."""
        return self.system_acl()

    def user_dir_acl(self, user_id: str) -> list[ACL]:
        """users/<name>: readable (the login check) and markers creatable only by that user."""
        own = [] if user_id in self.admins else [
            ACL(Permissions.READ | Permissions.CREATE | Permissions.DELETE, Id("digest", user_id))]
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
    for path in ("/boid", ROOT, f"{ROOT}/objects", f"{ROOT}/runs", USERS):
        client.ensure_path(path, acl=system)
        client.set_acls(path, system)
    for d in kind_dirs:
        path = f"{ROOT}/objects/{d}"
        client.ensure_path(path, acl=policy.kind_dir_acl())
        client.set_acls(path, policy.kind_dir_acl())
        for name in client.get_children(path) if first else ():
            client.set_acls(f"{path}/{name}", policy.object_acl(None))
            if client.exists(f"{path}/{name}/status"):
                client.set_acls(f"{path}/{name}/status", policy.status_acl())
    client.set_acls(f"{ROOT}/runs", policy.runs_acl())
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
                 timeout: float = 10.0) -> Policy:
    """secure_cluster + register_user over a client of its own (`boidctl up`, test fixtures)."""
    from kazoo.client import KazooClient

    policy = Policy(admins=(admin.digest_id,))
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
