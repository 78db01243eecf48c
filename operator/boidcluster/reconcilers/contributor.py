"""Contributor: be registered (regworker/regdisptch) with exactly the researchers the spec lists.

Observed is the chain (the contributor's rows) intersected with what this object registered
(status.registrations), so the operator never removes a registration it did not make. Removal
refuses while time is unpaid (the contract asserts it): the condition says so and the engine
retries after the payout reconciler has paid, so contributed time is never lost.
"""

from __future__ import annotations

from boidcluster.adapters.chain import ChainAssertion, ChainError
from boidcluster.engine.reconciler import Result, Retry, condition
from boidcluster.engine.world import World
from boidcluster.model.resources import Contributor

from . import registry

RESYNC = 60.0


def _calls(c: Contributor, world: World):
    chain = world.chain
    if c.spec.role == "worker":
        return chain.register_worker, chain.unregister_worker
    return chain.register_dispatcher, chain.unregister_dispatcher


@registry.reconciler(Contributor, cleanup=True, resync=RESYNC)
def reconcile_contributor(c: Contributor, world: World) -> Result:
    if world.chain is None:
        if c.metadata.deletion_timestamp:
            return Result.released()
        return Result(conditions=[condition("Registered", None, "NoChain", "no chain configured")])
    account, role = c.spec.account, c.spec.role
    ours = set(c.status.registrations if c.status else [])
    desired = set() if c.metadata.deletion_timestamp else set(c.spec.researchers)
    register, unregister = _calls(c, world)
    try:
        rows = {r.researcher: r for r in world.chain.contributor_rows(account, role)}
        for researcher in sorted(desired - rows.keys()):
            register(account, researcher)
        blocked = []
        for researcher in sorted((ours & rows.keys()) - desired):
            try:
                unregister(account, researcher)
            except ChainAssertion as e:
                if "unpaid time" not in e.message:
                    raise
                blocked.append(researcher)
        rows = {r.researcher: r for r in world.chain.contributor_rows(account, role)}
    except ChainError as e:
        raise Retry(f"{role} {account}: {e}", reason="ChainUnavailable" if not isinstance(e, ChainAssertion)
                    else "ChainRejected", conditions=[condition("Registered", None if not isinstance(
                        e, ChainAssertion) else False, "ChainError", str(e))]) from e
    registered = sorted((ours | desired) & rows.keys())
    status = {"registrations": registered,
              "total_time": sum(rows[r].total_time for r in registered),
              "unpaid_time": sum(rows[r].unpaid_time for r in registered)}
    if blocked:
        msg = (f"{account} still has unpaid time with {', '.join(blocked)}; "
               "it is deregistered after the next payout")
        raise Retry(msg, reason="UnpaidTime", conditions=[condition("Registered", True, "UnpaidTime", msg)],
                    status=status)
    if c.metadata.deletion_timestamp:
        return Result.released()
    missing = sorted(desired - rows.keys())
    ok = not missing
    return Result(
        conditions=[condition("Registered", ok, "OnChain" if ok else "Missing",
                              f"{role} of {', '.join(sorted(desired))}" if ok else f"not registered with {missing}")],
        status=status, requeue_after=RESYNC)
