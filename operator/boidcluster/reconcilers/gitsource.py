"""The GitSource reconciler: keep the specs of a git repository applied (GitOps).

Every `interval` (Result.requeue_after) it fetches the repository, plans with `gitops` (the same
code `boidctl sync` runs), applies, heals or reports drift, prunes within `pruneLimit`, and says
so in status. An unreadable repository, ref or path, or an invalid spec, is a Synced=False
condition with nothing applied and nothing pruned: a broken source is never an empty desired state.

Conditions: Synced (live state matches git; reasons Synced, FetchFailed/RepoUnreachable/
RefNotFound/PathNotFound/GitTimeout, InvalidSpec, OwnershipConflict, DriftDetected,
PruneBlocked, NotPruned), Drift (objects changed outside git and not healed) and PruneBlocked
(more than pruneLimit objects to prune: `boidctl sync <name> --confirm-prune` is needed).
"""

from __future__ import annotations

import logging

from boidcluster.adapters.git import GitError, GitRepos
from boidcluster.engine.reconciler import Result, condition
from boidcluster.model.loader import SpecErrors
from boidcluster.model.meta import utcnow
from boidcluster.model.resources import DriftEntry, GitSource

from . import registry
from .gitops import MAX_DRIFT_REPORTED, Item, Options, Outcome, PlanConflict, load_snapshot, spec_error_summary, sync

log = logging.getLogger(__name__)

GIT_SETTING = "git"
"""World.settings.extra key of a GitRepos (its cache directory and timeout); default: GitRepos()."""


def git_repos(world) -> GitRepos:
    repos = world.settings.extra.get(GIT_SETTING) if getattr(world, "settings", None) else None
    if repos is None:
        repos = GitRepos()
        if getattr(world, "settings", None) is not None:
            world.settings.extra[GIT_SETTING] = repos
    return repos


def _entries(items: list[Item], reason: str) -> list[DriftEntry]:
    return [DriftEntry(kind=i.kind, name=i.name, reason=f"{reason}: {i.detail}" if i.detail else reason)
            for i in items]


def _refs(items: list[Item], n: int = 5) -> str:
    text = ", ".join(i.ref for i in items[:n])
    return text + (f" and {len(items) - n} more" if len(items) > n else "")


def outcome_result(gs: GitSource, commit: str, out: Outcome) -> Result:
    """Conditions and status for a finished sync (shared with `boidctl sync GITSOURCE`)."""
    spec = gs.spec
    drift = (_entries([i for i in out.drift if i.action == "drift"], "Modified")
             + _entries([i for i in out.drift if i.action == "missing"], "Missing")
             + _entries(out.extra, "Extra"))
    conds = []
    short = commit[:12]
    if out.drift:
        conds.append(condition("Drift", True, "DriftDetected",
                               f"{len(out.drift)} object(s) changed outside git, not healed because selfHeal "
                               f"is off: {_refs(out.drift)}"))
    else:
        healed = f"healed {len(out.healed)} object(s): {_refs(out.healed)}" if out.healed else "no drift"
        conds.append(condition("Drift", False, "Healed" if out.healed else "NoDrift", healed))
    if out.prune_blocked:
        conds.append(condition(
            "PruneBlocked", True, "PruneLimitExceeded",
            f"{out.prune_blocked} object(s) would be pruned, more than pruneLimit {spec.prune_limit}; "
            f"nothing was pruned: run `boidctl sync {gs.name} --confirm-prune` to prune them"))
    else:
        conds.append(condition("PruneBlocked", False, "WithinLimit", f"pruned {out.pruned} object(s)"))
    if out.prune_blocked:
        conds.append(condition("Synced", False, "PruneBlocked", f"applied {short}; prune blocked"))
    elif out.drift:
        conds.append(condition("Synced", False, "DriftDetected", f"applied {short}; {len(out.drift)} drifted"))
    elif out.extra:
        conds.append(condition("Synced", False, "NotPruned",
                               f"applied {short}; {len(out.extra)} object(s) no longer in git are kept "
                               f"because prune is off: {_refs(out.extra)}"))
    else:
        conds.append(condition("Synced", True, "Synced",
                               f"{short}: {out.applied} applied, {out.pruned} pruned, "
                               f"{len(out.plan.of('unchanged'))} unchanged"
                               + (f" ({out.transactions} transactions: too large for one)"
                                  if out.transactions > 1 else "")))
    extra = len(drift) - MAX_DRIFT_REPORTED
    drift = drift[:MAX_DRIFT_REPORTED]
    if extra > 0:
        drift.append(DriftEntry(kind="-", name="-", reason=f"and {extra} more"))
    return Result(conditions=conds, status={"synced_commit": commit, "last_sync_time": utcnow(), "drift": drift})


def sync_gitsource(gs: GitSource, world, *, confirm_prune: bool = False, dry_run: bool = False,
                   prune: bool | None = None, self_heal: bool | None = None) -> tuple[Result, Outcome | None]:
    """Fetch, plan and apply one GitSource. Returns the Result to record and the Outcome (None
    when nothing could be planned: fetch failure, invalid spec, ownership conflict)."""
    spec = gs.spec
    interval = float(spec.interval)
    try:
        snap = git_repos(world).fetch(spec.repo, spec.ref, spec.path)
    except GitError as e:
        log.info("GitSource %s: %s", gs.name, e)
        return Result(conditions=[condition("Synced", False, e.reason, f"{e}; nothing was applied or pruned")],
                      requeue_after=interval), None
    try:
        objects = load_snapshot(snap)
    except SpecErrors as e:
        return Result(conditions=[condition("Synced", False, "InvalidSpec",
                                            f"{snap.commit[:12]}: {spec_error_summary(e)}; nothing was applied")],
                      requeue_after=interval), None
    previous = gs.status.synced_commit if gs.status else None
    opts = Options(self_heal=spec.self_heal if self_heal is None else self_heal,
                   prune=spec.prune if prune is None else prune, prune_limit=spec.prune_limit,
                   confirm_prune=confirm_prune, dry_run=dry_run,
                   owner=world.store.owner(GitSource, gs.name) if world.store.policy else None)
    try:
        out = sync(world.store, gs.name, objects, opts, commit=snap.commit, previous_commit=previous)
    except PlanConflict as e:
        return Result(conditions=[condition("Synced", False, e.reason, f"{snap.commit[:12]}: {e}")],
                      requeue_after=interval), None
    result = outcome_result(gs, snap.commit, out)
    result.requeue_after = interval
    return result, out


@registry.reconciler(GitSource, resync=3600.0)
def reconcile_gitsource(gs: GitSource, world) -> Result:
    """Make the store hold what the GitSource's repository says, at every interval."""
    return sync_gitsource(gs, world)[0]


__all__ = ["GIT_SETTING", "git_repos", "outcome_result", "reconcile_gitsource", "sync_gitsource"]
