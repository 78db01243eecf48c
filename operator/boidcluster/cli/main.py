"""boidctl: the kubectl-like command line of Boid cluster.

Every subcommand is thin: it parses input with the model's loader, talks to the store, and
prints with `printers`. Errors are turned into one clear line and a non-zero exit by `friendly`.
"""

from __future__ import annotations

import difflib
import logging
import sys
import time
from pathlib import Path

import click
import yaml

from boidcluster import __version__
from boidcluster.adapters.store import NotFound, parse_selector
from boidcluster.model import crd as crdmod
from boidcluster.model.kinds import KINDS, resolve_kind
from boidcluster.model.loader import load_paths
from boidcluster.model.meta import Resource

from . import printers
from .context import Ctx, Failure, friendly

OUTPUTS = click.Choice(["table", "wide", "yaml", "json", "name"])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--zk", envvar="BOID_ZK", metavar="HOST:PORT[/CHROOT]",
              help="ZooKeeper of the cluster (default: $BOID_ZK, then the cluster `boidctl up` started).")
@click.option("--request-timeout", default=5.0, show_default=True, metavar="SECONDS",
              help="How long to wait for ZooKeeper before giving up.")
@click.option("--context", "context", envvar="BOID_CONTEXT", metavar="NAME",
              help="The context of $BOID_HOME/config to use (cluster and user); default: current-context.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(__version__, prog_name="boidctl")
@click.pass_context
def cli(ctx: click.Context, zk: str | None, request_timeout: float, context: str | None, verbose: int) -> None:
    """Boid cluster: apply research specs, watch them converge, get paid for contributed time."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kazoo narrates every reconnect attempt; our own errors already say what failed.
    logging.getLogger("kazoo").setLevel(level if verbose > 1 else logging.CRITICAL)
    ctx.obj = Ctx(zk, request_timeout, context)
    ctx.call_on_close(ctx.obj.close)


def cluster_options(fn):
    """--zk and --request-timeout after the subcommand too (`boidctl get jobs --zk ...`), as kubectl allows."""

    def set_zk(ctx: click.Context, _p: click.Parameter, value: str | None) -> None:
        if value:
            ctx.find_object(Ctx)._zk = value

    def set_timeout(ctx: click.Context, _p: click.Parameter, value: float | None) -> None:
        if value is not None:
            ctx.find_object(Ctx).timeout = value

    fn = click.option("--zk", metavar="HOST:PORT[/CHROOT]", expose_value=False, callback=set_zk,
                      help="ZooKeeper of the cluster.")(fn)
    return click.option("--request-timeout", type=float, metavar="SECONDS", expose_value=False,
                        callback=set_timeout, help="How long to wait for ZooKeeper.")(fn)


def ref(kind: str, name: str) -> str:
    return f"{kind.lower()}/{name}"


# -- apply / diff ---------------------------------------------------------------------------------
@cli.command()
@click.option("-f", "--filename", "files", multiple=True, required=True, metavar="FILE|DIR|-",
              help="Spec files, directories (recursive) or - for stdin; repeatable.")
@click.option("--dry-run", is_flag=True, help="Validate and show what would change; store nothing.")
@click.option("--prune", is_flag=True, help="Delete objects matching -l that the input no longer holds.")
@click.option("-l", "--selector", help="Label selector for --prune, e.g. team=physics.")
@cluster_options
@click.pass_obj
@friendly
def apply(ctx: Ctx, files: tuple[str, ...], dry_run: bool, prune: bool, selector: str | None) -> None:
    """Create or update objects from specs; all-or-nothing for one invocation.

    An input larger than one ZooKeeper request (about 750 KiB, 1,000 Jobs) is applied in several
    transactions, each all-or-nothing; inputs are limited to 8 MiB (split larger ones)."""
    if prune and not selector:
        raise Failure("--prune needs -l/--selector, so that only objects carrying that label can be deleted")
    if selector and not prune:
        raise Failure("-l/--selector is only used with --prune")
    sel = parse_selector(selector) if selector else None
    objs = load_paths(list(files))  # validates every document before anything is written
    if not objs:
        raise Failure("no objects found in " + ", ".join(files))
    check_submitters(ctx.store, objs)
    if not dry_run and len(objs) > 100:
        click.echo(f"applying {len(objs)} objects...", err=True)
    results, transactions = ctx.store.apply_in_batches(objs, dry_run=dry_run, retries=2)
    if transactions > 1:
        click.echo(f"the input is larger than one ZooKeeper request: applied in {transactions} transactions, "
                   "each all-or-nothing", err=True)
    suffix = " (dry run)" if dry_run else ""
    for r in results:
        click.echo(f"{ref(r.kind, r.name)} {r.action}{suffix}")
    if prune:
        keep = {(o.kind, o.name) for o in objs}
        for kind in KINDS.values():
            for o in ctx.store.list(kind, sel):
                if (kind.KIND, o.name) in keep or o.metadata.deletion_timestamp:
                    continue
                if not dry_run:
                    try:
                        ctx.store.delete(kind, o.name)
                    except NotFound:
                        continue
                click.echo(f"{ref(kind.KIND, o.name)} pruned{suffix}")


def _comparable(obj: Resource | None) -> str:
    if obj is None:
        return ""
    d = obj.to_dict(with_status=False)
    d["metadata"].pop("resourceVersion", None)
    return yaml.safe_dump(d, sort_keys=False)


@cli.command()
@click.option("-f", "--filename", "files", multiple=True, required=True, metavar="FILE|DIR|-")
@cluster_options
@click.pass_obj
@friendly
def diff(ctx: Ctx, files: tuple[str, ...]) -> None:
    """Show what `apply` would change (exit 1 when there are differences, as kubectl diff)."""
    objs = load_paths(list(files))
    changed = False
    for r in ctx.store.apply(objs, dry_run=True):
        if r.action == "unchanged":
            continue
        changed = True
        try:
            live = ctx.store.get(type(r.obj), r.name)
        except NotFound:
            live = None
        name = ref(r.kind, r.name)
        click.echo("".join(difflib.unified_diff(
            _comparable(live).splitlines(True), _comparable(r.obj).splitlines(True),
            fromfile=f"live/{name}", tofile=f"applied/{name}")), nl=False)
    sys.exit(1 if changed else 0)


# -- get / describe / watch -----------------------------------------------------------------------
def resolve_targets(kind: str, names: tuple[str, ...]) -> list[tuple[type[Resource], list[str]]]:
    """`KIND NAME...` or kubectl's `KIND/NAME...` (what `get -o name` prints), grouped by kind in order.

    As kubectl, the two forms do not mix: with KIND/NAME every argument names its own kind."""
    if "/" not in kind:
        return [(resolve_kind(kind), list(names))]
    groups: dict[type[Resource], list[str]] = {}
    for arg in (kind, *names):
        k, sep, n = arg.partition("/")
        if not sep:
            raise Failure(f"{arg!r}: when KIND/NAME is used, every argument must be KIND/NAME "
                          "(there is no need to name the kind separately)")
        if not n or "/" in n:
            raise Failure(f"{arg!r} is not KIND/NAME, e.g. job/pi")
        groups.setdefault(resolve_kind(k), []).append(n)
    return list(groups.items())


def _fetch(ctx: Ctx, kind: type[Resource], names: tuple[str, ...] | list[str],
           selector: str | None) -> list[Resource]:
    if names:
        found, missing = [], []
        for n in names:
            try:
                found.append(ctx.store.get(kind, n))
            except NotFound:
                missing.append(n)
        if missing:
            for n in missing:
                click.echo(f'error: {kind.PLURAL} "{n}" not found', err=True)
            if not found:
                sys.exit(1)
        return found
    return ctx.store.list(kind, selector)


def _print(kind: type[Resource], objs: list[Resource], output: str, single: bool) -> None:
    if output in ("table", "wide"):
        if not objs:
            click.echo("No resources found.", err=True)
            return
        click.echo(printers.table(kind.KIND, objs, wide=output == "wide"))
        if kind.KIND == "Job":
            for o in objs:
                bar = printers.progress(o)
                if bar:
                    click.echo(f"  {o.name}: {bar}")
    elif output == "yaml":
        click.echo(printers.as_yaml(objs, single), nl=False)
    elif output == "json":
        click.echo(printers.as_json(objs, single))
    else:
        for o in objs:
            click.echo(ref(kind.KIND, o.name))


@cli.command()
@click.argument("kind")
@click.argument("names", nargs=-1)
@click.option("-o", "--output", type=OUTPUTS, default="table", show_default=True)
@click.option("-l", "--selector", help="Label selector, e.g. 'team=physics,tier!=test'.")
@cluster_options
@click.pass_obj
@friendly
def get(ctx: Ctx, kind: str, names: tuple[str, ...], output: str, selector: str | None) -> None:
    """List objects of a kind (protocol|job|contributor|gitsource; plural and short names work).

    Objects can also be named as KIND/NAME (e.g. `get job/pi protocol/monte-carlo`)."""
    groups = resolve_targets(kind, names)
    total = sum(len(n) for _, n in groups)
    missing = False
    for cls, wanted in groups:
        objs = _fetch(ctx, cls, wanted, selector)
        _print(cls, objs, output, single=total == 1 and len(objs) == 1)
        missing |= bool(wanted) and len(objs) < len(wanted)
    if missing:
        sys.exit(1)


@cli.command()
@click.argument("kind")
@click.argument("names", nargs=-1)
@click.option("-l", "--selector")
@cluster_options
@click.pass_obj
@friendly
def describe(ctx: Ctx, kind: str, names: tuple[str, ...], selector: str | None) -> None:
    """Show an object in full: metadata, spec, status and conditions (KIND NAME or KIND/NAME)."""
    objs = [o for cls, wanted in resolve_targets(kind, names) for o in _fetch(ctx, cls, wanted, selector)]
    if not objs:
        click.echo("No resources found.", err=True)
    click.echo("\n\n".join(printers.describe(o) for o in objs))


@cli.command()
@click.argument("kind")
@click.argument("name", required=False)
@click.option("-l", "--selector")
@click.option("--timeout", type=float, default=None, metavar="SECONDS", help="Stop after this long.")
@cluster_options
@click.pass_obj
@friendly
def watch(ctx: Ctx, kind: str, name: str | None, selector: str | None, timeout: float | None) -> None:
    """Follow objects live: a table redrawn on every change (one line per change when piped)."""
    cls = resolve_kind(kind)
    sel = parse_selector(selector) if selector else None
    tty = sys.stdout.isatty()
    seen: dict[str, Resource] = {}
    deadline = None if timeout is None else time.monotonic() + timeout
    w = ctx.store.watch(cls)
    header = True
    try:
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            try:
                ev = w.get(timeout=min(left, 1.0) if left is not None else 1.0)
            except TimeoutError:
                continue
            if ev is None:
                continue
            if (name and ev.name != name) or (sel and not sel.matches(ev.obj.metadata.labels)):
                continue
            if ev.type == "DELETED":
                seen.pop(ev.name, None)
            else:
                seen[ev.name] = ev.obj
            if tty:
                click.echo("\x1b[H\x1b[2J", nl=False)
                _print(cls, sorted(seen.values(), key=lambda o: o.name), "table", single=False)
            else:
                line = printers.table(cls.KIND, [ev.obj], headers=header)
                header = False
                click.echo(line + ("   (deleted)" if ev.type == "DELETED" else ""))
                if cls.KIND == "Job" and ev.type != "DELETED":
                    bar = printers.progress(ev.obj)
                    if bar:
                        click.echo(f"  {ev.name}: {bar}")
    finally:
        w.stop()


# -- delete ---------------------------------------------------------------------------------------
@cli.command()
@click.argument("kind", required=False)
@click.argument("names", nargs=-1)
@click.option("-f", "--filename", "files", multiple=True, metavar="FILE|DIR|-",
              help="Delete the objects these specs name.")
@click.option("-l", "--selector")
@click.option("--force", is_flag=True, help="Also remove finalizers, skipping external cleanup (asks first).")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation with --force.")
@cluster_options
@click.pass_obj
@friendly
def delete(ctx: Ctx, kind: str | None, names: tuple[str, ...], files: tuple[str, ...],
           selector: str | None, force: bool, yes: bool) -> None:
    """Delete objects; those with finalizers stay until the operator has cleaned up."""
    targets: list[tuple[type[Resource], str]] = []
    if files:
        if kind or names:
            raise Failure("give either KIND NAME... or -f FILE, not both")
        targets = [(type(o), o.name) for o in load_paths(list(files))]
    elif kind and "/" in kind:
        targets = [(c, n) for c, wanted in resolve_targets(kind, names) for n in wanted]
    elif kind:
        cls = resolve_kind(kind)
        if names:
            targets = [(cls, n) for n in names]
        elif selector:
            targets = [(cls, o.name) for o in ctx.store.list(cls, selector)]
        else:
            raise Failure(f"name the {cls.PLURAL} to delete, or select them with -l")
    else:
        raise Failure("usage: boidctl delete KIND NAME... | KIND/NAME... | -f FILE")
    if force and not yes:
        if not sys.stdin.isatty():
            raise Failure("--force skips external cleanup (chain registrations, apps); add --yes to confirm")
        click.confirm(f"Force-delete {len(targets)} object(s) without external cleanup?", abort=True)
    failed = False
    for cls, n in targets:
        try:
            obj = ctx.store.delete(cls, n)
            if obj is not None and force:
                for fin in list(obj.metadata.finalizers):
                    obj = ctx.store.remove_finalizer(cls, n, fin)
        except NotFound:
            click.echo(f'error: {cls.PLURAL} "{n}" not found', err=True)
            failed = True
            continue
        if obj is None:
            click.echo(f"{ref(cls.KIND, n)} deleted")
        else:
            click.echo(f"{ref(cls.KIND, n)} marked for deletion; waiting for finalizers: "
                       + ", ".join(obj.metadata.finalizers))
    if failed:
        sys.exit(1)


# -- schema -------------------------------------------------------------------------------------
@cli.command()
@click.argument("target", metavar="KIND[.FIELD.PATH]")
@friendly
def explain(target: str) -> None:
    """Document a kind or one of its fields, from the same schema that validates specs."""
    click.echo(crdmod.explain(target), nl=False)


@cli.command()
@click.option("--out", type=click.Path(file_okay=False), default="crds", show_default=True)
@click.option("--check", is_flag=True, help="Exit 1 if the files in --out are not up to date.")
def crds(out: str, check: bool) -> None:
    """Write one CRD-like schema per kind, generated from the models."""
    if check:
        stale = [cls.KIND for cls in KINDS.values()
                 if not (Path(out) / f"{cls.KIND.lower()}.yaml").is_file()
                 or (Path(out) / f"{cls.KIND.lower()}.yaml").read_text() != crdmod.render_crd(cls)]
        if stale:
            raise Failure(f"crds in {out}/ are stale for {', '.join(stale)}: run `make crds`")
        click.echo(f"crds in {out}/ are up to date")
        return
    for p in crdmod.write_crds(out):
        click.echo(str(p))


from .auth import auth_group, check_submitters, config_group  # noqa: E402
from .cluster import chain_group, cluster_group, dispatcher_group, down, operator_group  # noqa: E402
from .dashboard import dashboard  # noqa: E402
from .funds import fund, withdraw  # noqa: E402
from .image import image_group  # noqa: E402
from .mesos import mesos_group  # noqa: E402
from .report import report  # noqa: E402
from .supervisor import status  # noqa: E402
from .sync import sync_command  # noqa: E402
from .up import up  # noqa: E402

for _command in (operator_group, dispatcher_group, chain_group, cluster_group, up, down, status, sync_command,
                 report, config_group, auth_group, dashboard, fund, withdraw, image_group, mesos_group):
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="boidctl")


if __name__ == "__main__":
    main()
