"""Protocol: make the chain registry row, the storage datadir and the dispatcher app match the spec.

Observe (registry row, fund balance, app), compare with the spec, act once, report conditions.
Deletion (behind the cleanup finalizer) removes the dispatcher app and the registry row; both
are idempotent, so a crash anywhere converges on the next pass. Chain and storage failures raise
Retry with the condition that explains them: the engine backs off per protocol and shows when it
will try again, so a protocol with a missing fund account does not hammer the chain.
"""

from __future__ import annotations

from boidcluster.adapters.chain import ChainAssertion, ChainError, MissingAuthority, ProtocolRow
from boidcluster.adapters.marathon import MarathonError, dispatcher_app
from boidcluster.adapters.storage import StorageError
from boidcluster.engine.reconciler import Result, Retry, condition
from boidcluster.engine.world import World
from boidcluster.model.meta import utcnow
from boidcluster.model.resources import Job, Protocol

from . import registry
from .payouts import settle

RESYNC = 30.0  # chain balances and Marathon apps do not notify us
ACTIVE_RESYNC = 5.0  # while a job of the protocol runs, look (and pay) more often


def app_id(p: Protocol) -> str:
    return f"/boid/{p.name}/dispatcher"


def _chain_failure(e: ChainError, what: str, done: list) -> Retry:
    if isinstance(e, (ChainAssertion, MissingAuthority)):
        reason, msg = "ChainRejected", f"{what}: the chain rejected it: {e}"
    else:
        reason, msg = "ChainUnavailable", f"{what}: {e}"
    return Retry(msg, reason=reason, conditions=[*done, condition("Registered", False if reason == "ChainRejected"
                                                                   else None, reason, msg),
                                                  condition("Ready", False, reason, msg)])


@registry.reconciler(Protocol, cleanup=True, resync=RESYNC)
def reconcile_protocol(p: Protocol, world: World) -> Result:
    """Registry row == spec; datadir exists; fund covers the commitment; dispatcher app converged."""
    spec = p.spec
    if p.metadata.deletion_timestamp:
        if world.marathon is not None:
            world.marathon.remove_app(app_id(p))
        if world.chain is not None:
            try:
                # pay every positive balance first: a deleted registry row would strand unpaid time
                shortfall, _ = settle(p, world, final=True)
                if shortfall:
                    raise Retry(f"final payout before removal failed: {shortfall[0].message}",
                                reason="CleanupFailed", conditions=shortfall)
                world.chain.delete_protocol(spec.owner, spec.researcher)
            except ChainError as e:
                raise Retry(f"removing the registry row failed: {e}", reason="CleanupFailed") from e
        return Result.released()

    conditions, status = [], {}

    # storage first: it does not depend on the chain
    if world.storage is None:
        conditions.append(condition("StorageReady", None, "NoStorage", "no storage configured"))
    else:
        try:
            world.storage.ensure_dir(spec.datadir)
        except StorageError as e:
            raise Retry(f"datadir {spec.datadir}: {e}", reason="StorageUnavailable",
                        conditions=[condition("StorageReady", False, "StorageUnavailable", str(e)),
                                    condition("Ready", False, "StorageUnavailable", str(e))]) from e
        conditions.append(condition("StorageReady", True, "DirectoryExists", f"{spec.datadir} exists"))

    if world.chain is None:
        conditions += [condition("Registered", None, "NoChain", "no chain configured"),
                       condition("Funded", None, "NoChain", "no chain configured")]
    else:
        desired = ProtocolRow.from_spec(spec)
        try:
            row = world.chain.protocol_row(spec.owner, spec.researcher)
            if row is not None and (row.worker_pay_rate, row.dispatcher_pay_rate) != (
                    desired.worker_pay_rate, desired.dispatcher_pay_rate):
                # the contract pays unpaid time at the rate current at payout: settle what is owed
                # at the old rates first, so a rate change never reprices time already given
                shortfall, paid = settle(p, world, final=True)
                if shortfall:
                    raise Retry(f"cannot change pay rates before paying at the old ones: {shortfall[0].message}",
                                reason="Shortfall", conditions=shortfall)
                status.update(paid)
            if row is None or not row.matches(desired):
                world.chain.put_protocol(desired)
                status["registered_at"] = utcnow()
                row = world.chain.protocol_row(spec.owner, spec.researcher) or desired
            # a raised spec.fund.quantity commits the difference to `funded` (the total ever
            # committed, on chain: a repeat after a crash compares again and adds nothing twice)
            topup = world.chain.ensure_fund(spec.owner, spec.researcher, spec.fund.quantity)
            if topup.action == "added":
                status["registered_at"] = utcnow()
                row = world.chain.protocol_row(spec.owner, spec.researcher) or row
        except ChainError as e:
            raise _chain_failure(e, f"registering {spec.owner}/{spec.researcher} on clusterreg", conditions) from e
        registered = f"clusterreg row {spec.owner}/{spec.researcher} matches the spec"
        if topup.action == "added":
            registered += f"; added {topup.added} to its fund (committed {topup.funded} in all)"
        conditions.append(condition("Registered", True, "OnChain", registered))
        try:
            shortfall, paid = settle(p, world)  # before reading the balance, so status shows it after payouts
        except ChainError as e:
            raise _chain_failure(e, "paying contributors", conditions) from e
        status.update(paid)
        try:
            balance = world.chain.fund_balance(spec.fund.account, spec.fund.token_contract,
                                               spec.fund.quantity.symbol)
            if "last_payout_time" in paid:  # payouts just lowered the registry fund
                row = world.chain.protocol_row(spec.owner, spec.researcher) or row
        except (ChainError, ValueError) as e:
            raise Retry(f"reading the fund balance of {spec.fund.account}: {e}", reason="FundUnreadable",
                        conditions=[*conditions, condition("Funded", None, "FundUnreadable", str(e))]) from e
        status["fund_balance"] = balance
        funded = _funded(balance, row.fund, spec.payout.minimum, spec.fund.account)
        conditions.append(_commitment(shortfall[0] if shortfall else funded, topup, spec.fund.quantity))

    if world.marathon is not None:
        app = dispatcher_app(p.name, world.settings.dispatcher_image,
                             env={**world.settings.dispatcher_env,
                                  "BOID_RESEARCHER": spec.researcher, "BOID_OWNER": spec.owner},
                             labels={"boid.researcher": spec.researcher})
        try:
            res = world.marathon.ensure_app(app)
        except MarathonError as e:
            raise Retry(f"dispatcher app {app['id']}: {e}", reason="MarathonUnavailable",
                        conditions=[*conditions, condition("DispatcherReady", False, "MarathonUnavailable",
                                                           str(e))]) from e
        status["dispatcher"] = app["id"]
        conditions.append(condition("DispatcherReady", True, res.action.capitalize(), f"app {app['id']} {res.action}"))
    else:
        status["dispatcher"] = "local"

    ready = all(c.status != "False" for c in conditions)
    conditions.append(condition("Ready", ready, "Converged" if ready else "NotReady",
                                "" if ready else "; ".join(c.message for c in conditions if c.status == "False")))
    index = getattr(world, "index", None)
    if index is not None and index.covers("Job", "active-by-protocol"):  # kept by the engine's watch
        active = bool(index.get("Job", "active-by-protocol", p.name))
    else:
        active = any(j.spec.protocol == p.name and not (j.status and j.status.phase in ("Succeeded", "Failed"))
                     for j in world.store.list(Job))
    return Result(conditions=conditions, status=status, requeue_after=ACTIVE_RESYNC if active else RESYNC)


def _commitment(funded, topup, wanted):
    """Say on the Funded condition when the spec's fund cannot be followed on chain (not an error:
    the protocol keeps paying from what the registry holds, and nothing is retried)."""
    if topup.action == "reduction_ignored":
        note = (f"spec.fund.quantity {wanted} is below the {topup.funded} already committed on clusterreg: "
                f"ignored, a commitment is never taken back (contributors were promised the remaining {topup.fund}; "
                "delete the protocol to end it)")
        reason = "FundReductionIgnored"
    elif topup.action == "unknown":
        note = (f"the clusterreg row predates `funded` (the total committed), so a raised spec.fund.quantity is not "
                f"added automatically; one clusterreg::addfund by the owner records it (remaining fund {topup.fund})")
        reason = "FundedUnknown"
    else:
        return funded
    if funded.status == "True":
        return condition("Funded", True, reason, f"{note}; {funded.message}")
    return condition("Funded", False if funded.status == "False" else None, funded.reason, f"{funded.message}; {note}")


def _funded(balance, commitment, minimum, account: str):
    """Funded: the fund account holds what the registry still commits to pay (and at least one payout)."""
    need = commitment if minimum is None or commitment.amount > minimum.amount else minimum
    if balance.symbol != need.symbol:
        return condition("Funded", False, "SymbolMismatch", f"{account} holds {balance}, the protocol pays {need.symbol.code}")
    if balance.amount < need.amount:
        short = type(need)(need.amount - balance.amount, need.symbol)
        return condition("Funded", False, "Shortfall", f"{account} holds {balance}; needs {need}: short by {short}")
    return condition("Funded", True, "Balance", f"{account} holds {balance} (commitment {commitment})")
