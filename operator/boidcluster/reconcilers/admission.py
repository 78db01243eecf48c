"""Who may submit a Job under a Protocol: one rule, used by the operator (before it runs a Job)
and by boidctl (before it stores one, and for `auth can-i`).

A user may submit under protocol P when the user is a cluster admin, P's proven creator, or named
in P's `spec.submitters` ('*': any registered user). The submitter is the Job's proven owner
(Store.owner: from the znode's ACL, proven by a marker only that user could write), never a field
a client fills in, so a Job cannot be passed off as someone else's.

When jobs run in per-protocol dispatchers (`operator run --backend none`), the operator admits
each Job and then grants it to the dispatcher of its protocol (`grant_job`): that identity may
write the job's status and run records and nothing else. A dispatcher is no admin, so it cannot
prove owners itself (ZooKeeper redacts digests for it); it trusts the operator's grant instead,
runs/<uid>, which only an admin can create.
"""

from __future__ import annotations

import time
from typing import Any

from boidcluster.adapters.auth import (DISPATCHER_PREFIX, dispatcher_credentials, dispatcher_user, ensure_dispatcher,
                                       grant_job as grant_acls, grant_journal, read_grant, registered_id)
from boidcluster.adapters.store import NotFound, Store, StoreError
from boidcluster.engine.reconciler import Registry, Result, Retry, condition
from boidcluster.model.meta import CLEANUP_FINALIZER, Condition
from boidcluster.model.resources import Job, Protocol

from .ledger import JOURNAL


def submit_refusal(store: Store, user: str, protocol: str, pending: Protocol | None = None) -> str | None:
    """Why `user` may not submit a Job under `protocol` (None: allowed, or nothing is checked).

    `pending`: the protocol as about to be applied by `user` in the same input (its owner then)."""
    if store.policy is None:
        return None
    if user in store.policy.admin_users:
        return None
    if pending is not None:
        try:
            owner = store.owner(Protocol, protocol)
        except NotFound:
            owner = user  # created by this very input
        spec = pending.spec
    else:
        try:
            spec = store.get(Protocol, protocol).spec
        except NotFound:
            return f"protocol {protocol!r} does not exist"
        owner = store.owner(Protocol, protocol)
    if spec.allows_submitter(user, owner):
        return None
    listed = ", ".join(spec.submitters or []) or "none"
    return (f"user {user!r} may not submit jobs under protocol {protocol!r}: not its creator "
            f"and not in its spec.submitters ({listed})")


class AwaitingGrant(StoreError):
    """A dispatcher looked at a Job the operator has not granted it yet (the engine retries)."""


def admit_job(job: Job, owner: str, world: Any) -> Condition | None:
    """The operator's admission of a Job: refused (Admitted=False, SubmitterNotAllowed) unless
    its proven owner may submit under its protocol. A dispatcher admits what the operator granted."""
    store = world.store
    if store.policy is not None and not store.is_admin and store.whoami.startswith(DISPATCHER_PREFIX):
        return _dispatcher_admission(job, store)
    why = submit_refusal(world.store, owner, job.spec.protocol)
    if why is None:
        return None
    reason = "ProtocolNotFound" if why.endswith("does not exist") else "SubmitterNotAllowed"
    return condition("Admitted", False, reason, why + "; the job does not run")


def _dispatcher_admission(job: Job, store: Store) -> Condition | None:
    grant = read_grant(store.client, job.metadata.uid or "")
    if grant is not None and grant.get("protocol") == job.spec.protocol and grant.get("job") == job.name \
            and CLEANUP_FINALIZER in job.metadata.finalizers:   # the operator adds it last
        return None
    refused = job.status.condition("Admitted") if job.status else None
    if refused is not None and refused.status == "False":
        return refused  # the operator's refusal, as it wrote it (nothing for us to write)
    raise AwaitingGrant(f"job {job.name!r} is not yet granted to {store.whoami!r} by the operator")


# -- the operator's half of a Job run by its protocol's dispatcher ---------------------------------
def dispatcher_identity(world: Any, protocol: str) -> str:
    """The digest id of `protocol`'s dispatcher, created (with its password file in the operator's
    dispatcher-identities directory, which the protocol's dispatcher app mounts) if need be."""
    ids = world.settings.extra.setdefault("dispatcher_ids", {})
    if protocol in ids:
        return ids[protocol]
    store = world.store
    home = world.settings.extra.get("dispatcher_identities")
    if home:
        did = ensure_dispatcher(store.client, store.policy, protocol, dispatcher_credentials(home, protocol))
    else:
        did = registered_id(store.client, dispatcher_user(protocol))
        if did is None:
            msg = (f"protocol {protocol!r} has no dispatcher identity: run the operator with "
                   "--dispatcher-identities DIR (it creates one per protocol)")
            raise Retry(msg, reason="NoDispatcherIdentity",
                        conditions=[condition("Granted", False, "NoDispatcherIdentity", msg)])
        ensure_dispatcher(store.client, store.policy, protocol, did)
    try:   # the protocol's ledger journal, which its dispatcher appends accepted units to
        p = store.get(Protocol, protocol)
        grant_journal(store.client, store.policy, f"{JOURNAL}/{p.spec.owner}.{p.chain_name}", did)
    except NotFound:
        pass
    ids[protocol] = did
    return did


def grant_job(job: Job, world: Any) -> Result:
    """Observe: was this admitted Job granted to its protocol's dispatcher in this process?
    Act once: grant (ACLs, runs/<uid>), then add the cleanup finalizer the dispatcher cannot add
    (it may not write the object). A finished job past ttlSecondsAfterFinished is deleted here,
    as the dispatcher may not. Report nothing: the dispatcher writes the job's status."""
    store = world.store
    if store.policy is None:
        return Result(write_status=False)
    uid = job.metadata.uid or ""
    done = world.settings.extra.setdefault("granted_jobs", set())
    if (uid, job.spec.protocol) not in done:
        did = dispatcher_identity(world, job.spec.protocol)
        grant_acls(store.client, store.policy, name=job.name, uid=uid, protocol=job.spec.protocol,
                   dispatcher_id=did)
        if CLEANUP_FINALIZER not in job.metadata.finalizers:
            store.add_finalizer(Job, job.name, CLEANUP_FINALIZER)
        done.add((uid, job.spec.protocol))
    ttl = job.spec.ttl_seconds_after_finished
    finished = job.status.completion_time if job.status and job.status.phase in ("Succeeded", "Failed") else None
    if ttl is not None and finished is not None:
        left = finished.timestamp() + ttl - time.time()
        if left > 0:
            return Result(write_status=False, requeue_after=left)
        try:
            store.delete(Job, job.name)
        except NotFound:
            pass
    return Result(write_status=False)


def with_job_grants(registry: Registry) -> Registry:
    """`registry` (without the Job reconciler) plus the operator's grant of each Job."""
    registry.reconciler(Job, resync=60.0)(grant_job)
    return registry
