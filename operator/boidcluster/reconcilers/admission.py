"""Who may submit a Job under a Protocol: one rule, used by the operator (before it runs a Job)
and by boidctl (before it stores one, and for `auth can-i`).

A user may submit under protocol P when the user is a cluster admin, P's proven creator, or named
in P's `spec.submitters` ('*': any registered user). The submitter is the Job's proven owner
(Store.owner: from the znode's ACL, proven by a marker only that user could write), never a field
a client fills in, so a Job cannot be passed off as someone else's.
"""

from __future__ import annotations

from typing import Any

from boidcluster.adapters.store import NotFound, Store
from boidcluster.engine.reconciler import condition
from boidcluster.model.meta import Condition
from boidcluster.model.resources import Job, Protocol


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


def admit_job(job: Job, owner: str, world: Any) -> Condition | None:
    """The operator's admission of a Job: refused (Admitted=False, SubmitterNotAllowed) unless
    its proven owner may submit under its protocol."""
    why = submit_refusal(world.store, owner, job.spec.protocol)
    if why is None:
        return None
    reason = "ProtocolNotFound" if why.endswith("does not exist") else "SubmitterNotAllowed"
    return condition("Admitted", False, reason, why + "; the job does not run")
