"""Protocol: observe the registry row and escrow, pay contributors, converge datadir and dispatcher app.

Observe (registry row, escrow, contributors' owed/paid rows, app), compare with the spec, act once
(pay what is owed, re-send batches the chain lost, reserve what running jobs can still owe),
report: status shows escrow, owed, reserved and paid as the chain has them, and Funded compares the
free escrow with what running jobs can still owe. The reservation (clusterreg::reserve, set not
added, signed with the operator's `operate`) keeps the owner from withdrawing escrow that
contributors mid-job will be owed; it moves no money.
The operator holds no key of any owner, researcher or fund account (contracts v2), so it never
registers, funds or deletes a protocol on chain: it says what the owner should run (`boidctl
fund`, `boidctl withdraw`). Deletion pays every owed amount first. Chain and storage failures
raise Retry with the condition that explains them: the engine backs off per protocol.

Cost per pass (1,000 protocols must be Ready in seconds): the registry row comes from a scan of
the owner's rows shared by every pass within ROW_MAX_AGE (our own chain writes invalidate it) and
is read fresh whenever it would make a condition False, so a registration, acceptance or deposit
by the owner is never reported missing from an old read; contributors' rows are read only when
someone is owed or the chain's paid total moved (payouts.settle); the jobs come from the engine's
index, not an all-Jobs list; the datadir is looked at once per DATADIR_RECHECK (Storage remembers).
"""

from __future__ import annotations

import time

from boidcluster.adapters.chain import ChainAssertion, ChainError, MissingAuthority, ProtocolTerms
from boidcluster.adapters.chain.boid import H
from boidcluster.adapters.marathon import MarathonError, dispatcher_app
from boidcluster.adapters.storage import StorageError
from boidcluster.adapters.store import NotFound
from boidcluster.engine.reconciler import Result, Retry, condition
from boidcluster.engine.world import World
from boidcluster.model.resources import Job, Protocol
from boidcluster.model.types import Asset

from . import registry
from .admission import dispatcher_identity
from .payouts import settle


RESYNC = 30.0  # chain balances and Marathon apps do not notify us
ACTIVE_RESYNC = 5.0  # while a job of the protocol runs or it is not Ready, look (and pay) more often
TERMINAL = ("Succeeded", "Failed")
ROW_MAX_AGE = 2.0  # a registry row that shows all is well may come from a scan this old (seconds)
DATADIR_RECHECK = 60.0  # a datadir made sure of is looked at again after this long (seconds)
ACTIVE_JOBS = "active-by-protocol"  # the Job index kept by the engine (reconcilers.jobs)


def app_id(p: Protocol) -> str:
    return f"/boid/{p.name}/dispatcher"


def _chain_failure(e: ChainError, what: str, done: list, *, reading: bool = False) -> Retry:
    if isinstance(e, (ChainAssertion, MissingAuthority)):
        reason, msg = "ChainRejected", f"{what}: the chain rejected it: {e}"
    else:
        reason, msg = "ChainUnavailable", f"{what}: {e}"
    unknown = [condition("Registered", None, reason, msg)] if reading else []
    return Retry(msg, reason=reason, conditions=[*done, *unknown, condition("Ready", False, reason, msg)])


def can_still_owe(p: Protocol, jobs: list[Job]) -> Asset | None:
    """The most the protocol's unfinished jobs can still add to what it owes workers: units not yet
    accepted x replicas x unitTimeout x the worker rate (None: a job has no unitTimeout or no unit
    count yet, so there is no bound)."""
    rate = p.spec.pay_rates.worker
    total = 0
    for j in jobs:
        if j.spec.protocol != p.name or (j.status and j.status.phase in TERMINAL):
            continue
        units = j.status.units if j.status else None
        if j.spec.unit_timeout is None or units is None or units.total <= 0:
            return None
        remaining = max(0, units.total - units.validated)
        micros = remaining * j.spec.replication.replicas * int(j.spec.unit_timeout * 1_000_000)
        total += -(-micros * rate.amount // H)  # rounded up: a bound
    return Asset(total, rate.symbol)


def reservation(row, bound: Asset | None) -> Asset:
    """What to keep from withdrawal: what running jobs can still owe, capped at the free escrow
    (balance - owed; the contract refuses more). No bound (a job without unitTimeout): all of it."""
    free = max(0, row.free.amount)
    return Asset(free if bound is None else min(bound.amount, free), row.symbol)


def _reserve(world: World, p: Protocol, row, bound: Asset | None):
    """Set the on-chain reservation to `reservation(row, bound)` when it differs; the row after.
    Work recorded between our read and the action can lower the free escrow below the target (the
    contract refuses): read again and set once more from the fresh row."""
    for attempt in (1, 2):
        want = reservation(row, bound)
        if row.reserved == want:
            return row
        try:
            world.chain.reserve(p.spec.owner, row.name, want)
        except ChainAssertion:
            if attempt == 2:
                raise
        row = world.chain.protocol_row(p.spec.owner, row.name) or row
    return row


def active_jobs(p: Protocol, world: World) -> list[Job]:
    """The protocol's unfinished Jobs: by the engine's index once it covers Jobs (O(the
    protocol's jobs)), else by listing every Job (before the engine's first resync)."""
    index = getattr(world, "index", None)
    if index is not None and index.covers("Job", ACTIVE_JOBS):
        jobs = []
        for name in sorted(index.get("Job", ACTIVE_JOBS, p.name)):
            try:
                jobs.append(world.store.get(Job, name))
            except NotFound:
                continue  # deleted since the index saw it
    else:
        jobs = world.store.list(Job)
    return [j for j in jobs if j.spec.protocol == p.name and not (j.status and j.status.phase in TERMINAL)]


def _observe_row(world: World, p: Protocol, bound: Asset | None):
    """The registry row for this pass. A recent shared scan is trusted only when it shows the
    protocol registered, accepted, with the spec's terms and funded for `bound`; anything else
    is confirmed by a fresh read, so what the owner just did on chain is seen at once."""
    owner, name = p.spec.owner, p.chain_name
    row = world.chain.recent_protocol_row(owner, name, ROW_MAX_AGE)
    if row is not None and _registered(p, row)[0] and _funded(row, bound).status != "False":
        return row
    return world.chain.protocol_row(owner, name)


def _registered(p: Protocol, row) -> tuple[bool, str, str]:
    spec = p.spec
    fund_hint = f"`boidctl fund {p.name} AMOUNT` with the owner's key"
    if row is None:
        return False, "NotRegistered", (f"{spec.owner}/{p.chain_name} is not on the registry: {fund_hint} "
                                        "registers and funds it")
    diff = ProtocolTerms.from_spec(p.chain_name, spec).differs(row)
    if diff:
        return False, "TermsDiffer", (f"the registry has other {', '.join(diff)} than the spec: {fund_hint} updates "
                                      "them (token contract and researcher are fixed at creation); work is paid "
                                      "at the registry's rates in force when it is recorded")
    if not row.accepted:
        return False, "NotAccepted", (f"researcher {spec.researcher} has not accepted {spec.owner}/{p.chain_name}: "
                                      "no work is recorded until they sign (clusterreg::acceptprot, or "
                                      "`boidctl fund` with their key in the key file)")
    return True, "OnChain", f"clusterreg {spec.owner}/{p.chain_name} (id {row.id}) matches the spec"


def _funded(row, bound: Asset | None):
    """Funded: the escrow nobody is owed yet covers what running jobs can still owe."""
    if bound is None:
        return condition("Funded", None if row.free.amount >= 0 else False, "Unbounded" if row.free.amount >= 0 else "Shortfall",
                         f"escrow {row.balance}, owed {row.owed}, free {row.free}; a running job has no unitTimeout "
                         "(or no unit count yet), so what it can still owe has no bound")
    if row.free.amount < bound.amount:
        short = Asset(bound.amount - row.free.amount, bound.symbol)
        return condition("Funded", False, "Shortfall",
                         f"free escrow {row.free} (holds {row.balance}, owed {row.owed}) is short by {short} of what "
                         f"running jobs can still owe ({bound})")
    return condition("Funded", True, "Escrow",
                     f"free escrow {row.free} (holds {row.balance}, owed {row.owed}) covers what running jobs can "
                     f"still owe ({bound})")


@registry.reconciler(Protocol, cleanup=True, resync=RESYNC)
def reconcile_protocol(p: Protocol, world: World) -> Result:
    """Observe the registry row and escrow; pay what is owed; report; dispatcher app converged.
    The operator never registers or funds a protocol: that needs the owner's key (`boidctl fund`)."""
    spec = p.spec
    if p.metadata.deletion_timestamp:
        if world.marathon is not None:
            world.marathon.remove_app(app_id(p))
        if world.chain is not None:
            try:
                row = world.chain.protocol_row(spec.owner, p.chain_name)
                if row is not None:
                    # pay every positive amount first; the row and escrow stay for the owner to
                    # withdraw and delete (`boidctl withdraw --all --delete`), which needs their key
                    shortfall, _ = settle(p, world, row, final=True)
                    if shortfall:
                        raise Retry(f"final payout before removal failed: {shortfall[0].message}",
                                    reason="CleanupFailed", conditions=shortfall)
                    # release the reservation (to what jobs still running can owe, 0 when none) so
                    # the owner's `boidctl withdraw --all --delete` can empty the escrow
                    _reserve(world, p, world.chain.protocol_row(spec.owner, p.chain_name) or row,
                             can_still_owe(p, active_jobs(p, world)))
            except ChainError as e:
                raise Retry(f"final payout failed: {e}", reason="CleanupFailed") from e
        return Result.released()

    conditions, status, timings = [], {}, {}
    t0 = time.perf_counter()

    # storage first: it does not depend on the chain
    if world.storage is None:
        conditions.append(condition("StorageReady", None, "NoStorage", "no storage configured"))
    else:
        try:
            world.storage.ensure_dir(spec.datadir, known_for=DATADIR_RECHECK)
        except StorageError as e:
            raise Retry(f"datadir {spec.datadir}: {e}", reason="StorageUnavailable",
                        conditions=[condition("StorageReady", False, "StorageUnavailable", str(e)),
                                    condition("Ready", False, "StorageUnavailable", str(e))]) from e
        conditions.append(condition("StorageReady", True, "DirectoryExists", f"{spec.datadir} exists"))
    t1 = time.perf_counter()
    timings["storage"] = t1 - t0

    jobs = active_jobs(p, world)
    t2 = time.perf_counter()
    timings["jobs"] = t2 - t1
    if world.chain is None:
        conditions += [condition("Registered", None, "NoChain", "no chain configured"),
                       condition("Funded", None, "NoChain", "no chain configured")]
    else:
        bound = can_still_owe(p, jobs)
        try:
            row = _observe_row(world, p, bound)
        except ChainError as e:
            raise _chain_failure(e, f"reading {spec.owner}/{p.chain_name} on clusterreg", conditions, reading=True) from e
        ok, reason, msg = _registered(p, row)
        conditions.append(condition("Registered", ok, reason, msg))
        if row is None:
            conditions.append(condition("Funded", False, "NotRegistered", msg))
        else:
            try:
                if world.ledger is not None and hasattr(world.ledger, "sync") and row.accepted:
                    world.ledger.sync(p)  # re-send batches the chain lost (node or operator crash)
                shortfall, paid = settle(p, world, row)
                status.update(paid)
                if "last_payout_time" in paid:  # paid someone: the row moved
                    row = world.chain.protocol_row(spec.owner, p.chain_name) or row
            except ChainError as e:
                raise _chain_failure(e, "paying contributors", conditions) from e
            try:
                row = _reserve(world, p, row, bound)
            except ChainError as e:
                raise _chain_failure(e, "reserving escrow for running jobs", conditions) from e
            status.update(fund_balance=row.balance, escrow=row.free, owed=row.owed, reserved=row.reserved,
                          paid_total=row.paid, deposited=row.deposited, withdrawn=row.withdrawn)
            conditions.append(shortfall[0] if shortfall else _funded(row, bound))
        timings["chain"] = time.perf_counter() - t2

    if world.marathon is not None:
        if world.store.policy is not None and world.settings.extra.get("dispatcher_identities"):
            dispatcher_identity(world, p.name)  # its password file exists before its app mounts it
        app = dispatcher_app(p.name, world.settings.dispatcher_image,
                             env={**world.settings.dispatcher_env,
                                  "BOID_RESEARCHER": spec.researcher, "BOID_OWNER": spec.owner},
                             labels={"boid.researcher": spec.researcher})
        try:
            res = world.marathon.ensure_app(app)
        except MarathonError as e:
            raise Retry(f"dispatcher app {app['id']}: {e}", reason="MarathonUnavailable",
                        conditions=[*conditions, condition("DispatcherReady", False, "MarathonUnavailable",
                                                           str(e))], status=status) from e
        status["dispatcher"] = app["id"]
        conditions.append(condition("DispatcherReady", True, res.action.capitalize(), f"app {app['id']} {res.action}"))
    else:
        status["dispatcher"] = "local"

    ready = all(c.status != "False" for c in conditions)
    conditions.append(condition("Ready", ready, "Converged" if ready else "NotReady",
                                "" if ready else "; ".join(c.message for c in conditions if c.status == "False")))
    # not Ready (e.g. waiting for the owner's `boidctl fund` or acceptance, which the chain does not
    # notify): look again soon, as while jobs run
    return Result(conditions=conditions, status=status,
                  requeue_after=ACTIVE_RESYNC if jobs or not ready else RESYNC, timings=timings)


