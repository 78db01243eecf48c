"""`boidctl sync`: run one GitOps sync by hand, with the operator's own planning code.

The target is a directory of specs (its working tree, as `apply -f DIR` reads it), a git
repository (a URL, or a path with --ref/--path: the committed state, as the operator sees it), or
the name of a GitSource object (its repo/ref/path/prune settings; the result is recorded in its
status exactly as the operator records it). It prints one kubectl-like line per object
(created, configured, unchanged, drift, pruned, not-pruned, prune-blocked) and applies unless
--dry-run. A manual sync heals drift (it is an explicit request to make the store match git),
unless --no-self-heal. More than pruneLimit prunes need --confirm-prune.

Defined here, not in cli.main, so cli.main can import it (`cli.add_command(sync_command)`)
without a cycle; it takes the group's Ctx (or its own --zk) the same way the other commands do.
"""

from __future__ import annotations

import re
from pathlib import Path

import click

from boidcluster.adapters.git import GitError, GitRepos, normalize_repo
from boidcluster.adapters.store import NotFound, StoreError
from boidcluster.engine.controller import status_class
from boidcluster.engine.status import merge_conditions
from boidcluster.engine.world import Settings, World
from boidcluster.model.loader import load_paths
from boidcluster.model.resources import GitSource
from boidcluster.reconcilers.gitops import Options, Outcome, PlanConflict, load_snapshot, sync
from boidcluster.reconcilers.gitsource import GIT_SETTING, sync_gitsource

from .auth import check_submitters
from .context import Ctx, Failure, friendly


def _world(store, git: GitRepos) -> World:
    return World(store=store, settings=Settings(extra={GIT_SETTING: git}))


def _source_name(text: str) -> str:
    """A label value from a directory or repository name: 'My Specs.git' -> 'my-specs'."""
    base = re.sub(r"\.git$", "", Path(text.rstrip("/")).name or "specs").lower()
    base = re.sub(r"[^a-z0-9-]+", "-", base).strip("-")[:63].strip("-")
    return base or "specs"


def _is_url(text: str) -> bool:
    return "://" in text or bool(re.match(r"^[\w.-]+@[\w.-]+:", text))


def _set_zk(ctx: click.Context, _p: click.Parameter, value: str | None) -> None:
    if value:
        obj = ctx.find_object(Ctx)
        if obj is None:
            ctx.obj = Ctx(value, 5.0)
        else:
            obj._zk = value


def _print(out: Outcome, quiet_unchanged: bool) -> None:
    for line in out.lines:
        if quiet_unchanged and line.verb == "unchanged":
            continue
        click.echo(str(line))


def _summary(out: Outcome, dry_run: bool) -> str:
    p = out.plan
    parts = [f"{len(p.of('create'))} created", f"{len(p.of('update'))} configured",
             f"{len(p.of('unchanged'))} unchanged", f"{len(out.drift)} drift",
             f"{len(out.healed)} healed", f"{out.pruned} pruned"]
    if out.prune_blocked:
        parts.append(f"{out.prune_blocked} prune blocked (pruneLimit)")
    if out.extra:
        parts.append(f"{len(out.extra)} not pruned (prune off)")
    return ("dry run: " if dry_run else "") + ", ".join(parts)


@click.command("sync")
@click.argument("target", metavar="DIR|REPO|GITSOURCE")
@click.option("--ref", help="Git branch, tag or commit: read TARGET as a git repository at this ref.")
@click.option("--path", "subpath", help="Directory inside the git repository (default: its top).")
@click.option("--source", metavar="NAME",
              help="Owner label value for a DIR/REPO sync (default: the directory's name). Prune "
                   "only ever deletes objects carrying cluster.boid.com/gitsource=NAME.")
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--prune/--no-prune", default=None,
              help="Delete objects this source created that git no longer has "
                   "(default: the GitSource's spec.prune; off for DIR/REPO).")
@click.option("--prune-limit", type=int, default=None, metavar="N",
              help="Refuse to prune more than N objects without --confirm-prune "
                   "(default: the GitSource's pruneLimit; 10 for DIR/REPO; 0 = no limit).")
@click.option("--confirm-prune", is_flag=True, help="Prune even beyond the prune limit.")
@click.option("--self-heal/--no-self-heal", default=True, show_default=True,
              help="Revert objects changed outside git (otherwise only report them as drift).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Where git mirrors are kept (default: $BOID_HOME/git-cache).")
@click.option("-q", "--quiet", is_flag=True, help="Do not list unchanged objects.")
@click.option("--zk", metavar="HOST:PORT[/CHROOT]", expose_value=False, callback=_set_zk, is_eager=True,
              help="ZooKeeper of the cluster.")
@click.pass_context
@friendly
def sync_command(ctx: click.Context, target: str, ref: str | None, subpath: str | None, source: str | None,
                 dry_run: bool, prune: bool | None, prune_limit: int | None, confirm_prune: bool,
                 self_heal: bool, cache_dir: str | None, quiet: bool) -> None:
    """Sync the specs of DIR, a git REPO, or a GitSource into the cluster (GitOps)."""
    if ctx.obj is None:
        ctx.obj = Ctx(None, 5.0)
    c: Ctx = ctx.obj
    git = GitRepos(cache_dir)
    p = Path(target)
    git_mode = ref is not None or subpath is not None or _is_url(target)
    if not git_mode and p.is_dir():
        objects = load_paths([target])
        name, commit = source or _source_name(str(p.resolve())), None
        click.echo(f"# sync {target} as source {name!r}")
    elif git_mode:
        try:
            snap = git.fetch(target, ref or "main", subpath or ".")
        except GitError as e:
            raise Failure(f"{e}; nothing was applied") from None
        objects = load_snapshot(snap)
        name, commit = source or _source_name(normalize_repo(target)), snap.commit
        click.echo(f"# sync {target}@{snap.ref} ({commit[:12]}) path {snap.path} as source {name!r}")
    else:
        _sync_gitsource(c, git, target, dry_run=dry_run, prune=prune, confirm_prune=confirm_prune,
                        self_heal=self_heal, quiet=quiet, prune_limit=prune_limit, source=source)
        return
    opts = Options(self_heal=self_heal, prune=bool(prune), prune_limit=10 if prune_limit is None else prune_limit,
                   confirm_prune=confirm_prune, dry_run=dry_run)
    check_submitters(c.store, objects)
    try:
        out = sync(c.store, name, objects, opts, commit=commit)
    except PlanConflict as e:
        raise Failure(str(e)) from None
    _print(out, quiet)
    click.echo(_summary(out, dry_run))
    if out.prune_blocked:
        raise Failure(f"{out.prune_blocked} objects would be pruned, more than the prune limit "
                      f"{opts.prune_limit}; nothing was pruned: add --confirm-prune to prune them")


def _sync_gitsource(c: Ctx, git: GitRepos, name: str, *, dry_run: bool, prune: bool | None,
                    confirm_prune: bool, self_heal: bool, quiet: bool, prune_limit: int | None,
                    source: str | None) -> None:
    if source:
        raise Failure("--source applies to DIR/REPO targets; a GitSource owns its objects by its own name")
    try:
        gs = c.store.get(GitSource, name)
    except NotFound:
        raise Failure(f"{name!r} is neither a directory nor a GitSource (boidctl get gitsources)") from None
    if prune_limit is not None:
        gs = gs.model_copy(update={"spec": gs.spec.model_copy(update={"prune_limit": prune_limit})})
    click.echo(f"# sync GitSource {name}: {gs.spec.repo}@{gs.spec.ref} path {gs.spec.path}")
    result, out = sync_gitsource(gs, _world(c.store, git), confirm_prune=confirm_prune, dry_run=dry_run,
                                 prune=prune, self_heal=self_heal)
    if out is None:
        bad = next(x for x in result.conditions if x.type == "Synced")
        raise Failure(f"{bad.reason}: {bad.message}")
    _print(out, quiet)
    click.echo(_summary(out, dry_run))
    if not dry_run:
        # record what was done, as the operator would (status merges conditions by type)
        try:
            cur = c.store.get(GitSource, name)
            old = cur.status or status_class(GitSource)()
            new = old.model_copy(update={**result.status,
                                         "conditions": merge_conditions(old.conditions, result.conditions)})
            cur.status = type(new).model_validate(new.model_dump())
            c.store.update_status(cur)
        except (NotFound, StoreError) as e:
            click.echo(f"warning: synced, but could not record it in the GitSource status: {e}", err=True)
    if out.prune_blocked:
        raise Failure(f"{out.prune_blocked} objects would be pruned, more than pruneLimit {gs.spec.prune_limit}; "
                      f"nothing was pruned: run `boidctl sync {name} --confirm-prune` to prune them")


__all__ = ["sync_command"]
