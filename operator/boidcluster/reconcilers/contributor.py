"""Contributor: be registered (regworker/regdisptch) with exactly the protocols of the researchers the spec lists.

Registrations are per protocol (contracts v2: time and pay are keyed by protocol, never by the
researcher alone): a contributor listing researcher R is registered with every Protocol whose
researcher is R and which is on the registry. Observed is the chain (the contributor's rows)
intersected with what this object registered (status.registrations), so the operator never
removes a registration it did not make. Removal refuses while the protocol owes the contributor
(the contract asserts it): the condition says so and the engine retries after the payout, so
contributed time is never lost.
"""

from __future__ import annotations

from boidcluster.adapters.chain import ChainAssertion, ChainError
from boidcluster.engine.reconciler import Result, Retry, condition
from boidcluster.engine.world import World
from boidcluster.model.resources import Contributor, Protocol

from . import registry

RESYNC = 60.0


@registry.reconciler(Contributor, cleanup=True, resync=RESYNC)
def reconcile_contributor(c: Contributor, world: World) -> Result:
    if world.chain is None:
        if c.metadata.deletion_timestamp:
            return Result.released()
        return Result(conditions=[condition("Registered", None, "NoChain", "no chain configured")])
    chain = world.chain
    account, role = c.spec.account, c.spec.role
    ours = set(c.status.registrations if c.status else [])
    wanted = {f"{p.spec.owner}/{p.chain_name}" for p in world.store.list(Protocol)
              if p.spec.researcher in c.spec.researchers and not p.metadata.deletion_timestamp}
    desired = set() if c.metadata.deletion_timestamp else wanted
    try:
        ids, rows, missing_on_chain = {}, {}, []
        for key in sorted(desired | ours):
            owner, name = key.split("/", 1)
            reg = chain.protocol_row(owner, name)
            if reg is None:
                if key in desired:
                    missing_on_chain.append(key)
                continue
            ids[key] = reg.id
            have = chain.contributor_row(role, reg.id, account)
            if have is not None:
                rows[key] = have.total_time
        for key in sorted((desired & ids.keys()) - rows.keys()):
            chain.register(role, account, *key.split("/", 1))
            rows[key] = 0
        blocked = []
        for key in sorted((ours & rows.keys()) - desired):
            try:
                chain.unregister(role, account, *key.split("/", 1))
                del rows[key]
            except ChainAssertion as e:
                if "owed pay" not in e.message:
                    raise
                blocked.append(key)
    except ChainError as e:
        raise Retry(f"{role} {account}: {e}", reason="ChainUnavailable" if not isinstance(e, ChainAssertion)
                    else "ChainRejected", conditions=[condition("Registered", None if not isinstance(
                        e, ChainAssertion) else False, "ChainError", str(e))]) from e
    registered = sorted((ours | desired) & rows.keys())
    status = {"registrations": registered, "total_time": sum(rows[k] for k in registered)}
    if blocked:
        msg = f"{account} is still owed pay by {', '.join(blocked)}; it is deregistered after the next payout"
        raise Retry(msg, reason="Owed", conditions=[condition("Registered", True, "Owed", msg)], status=status)
    if c.metadata.deletion_timestamp:
        return Result.released()
    if missing_on_chain:
        return Result(conditions=[condition("Registered", False, "ProtocolNotOnChain",
                                            f"not yet on the registry (the owner funds it first): {missing_on_chain}")],
                      status=status, requeue_after=5.0)
    return Result(
        conditions=[condition("Registered", True, "OnChain",
                              f"{role} of {', '.join(registered) or 'no protocol yet'}")],
        status=status, requeue_after=RESYNC)
