"""`boidctl config ...` (the kubeconfig-like $BOID_HOME/config) and `boidctl auth ...` (who am I,
register users, can-i). Passwords are never flags: they come from files or stdin."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import yaml

from boidcluster.adapters.auth import DISPATCHER_PREFIX, Credentials, register_user

from .context import Ctx, Failure, boid_home, friendly
from .kubeconfig import write_private


# -- config ---------------------------------------------------------------------------------------
@click.group("config")
def config_group() -> None:
    """Clusters, users and contexts in $BOID_HOME/config (like kubectl config)."""


@config_group.command("view")
@click.pass_obj
@friendly
def config_view(ctx: Ctx) -> None:
    """Print the config, passwords redacted."""
    click.echo(yaml.safe_dump(ctx.config.redacted(), sort_keys=False), nl=False)


@config_group.command("get-contexts")
@click.pass_obj
@friendly
def get_contexts(ctx: Ctx) -> None:
    """List the contexts; '*' marks the current one."""
    rows = [("CURRENT", "NAME", "CLUSTER", "USER", "SERVER")]
    servers = {c.get("name"): (c.get("cluster") or {}).get("server", "") for c in ctx.config.data["clusters"]}
    for e in ctx.config.data["contexts"]:
        body = e.get("context") or {}
        rows.append(("*" if e.get("name") == ctx.config.current else "", str(e.get("name")),
                     str(body.get("cluster", "")), str(body.get("user", "")),
                     str(servers.get(body.get("cluster"), ""))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("   ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


@config_group.command("current-context")
@click.pass_obj
@friendly
def current_context(ctx: Ctx) -> None:
    if not ctx.config.current:
        raise Failure(f"current-context is not set in {ctx.config.path}")
    click.echo(ctx.config.current)


@config_group.command("use-context")
@click.argument("name")
@click.pass_obj
@friendly
def use_context(ctx: Ctx, name: str) -> None:
    ctx.config.use(name)
    ctx.config.save()
    click.echo(f'Switched to context "{name}".')


@config_group.command("set-context")
@click.argument("name")
@click.option("--cluster", help="Name of a cluster in the config.")
@click.option("--user", help="Name of a user in the config.")
@click.option("--current", is_flag=True, help="Also make it the current context.")
@click.pass_obj
@friendly
def set_context(ctx: Ctx, name: str, cluster: str | None, user: str | None, current: bool) -> None:
    ctx.config.set_context(name, cluster=cluster, user=user)
    if current:
        ctx.config.use(name)
    ctx.config.save()
    click.echo(f'Context "{name}" set.')


@config_group.command("set-cluster")
@click.argument("name")
@click.option("--server", help="ZooKeeper HOST:PORT[,HOST:PORT...][/CHROOT] (the TLS port with --tls-ca).")
@click.option("--tls-ca", type=click.Path(dir_okay=False), help="CA bundle: connect with TLS (secureClientPort).")
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="Client certificate, if the server asks for one.")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="Client key (mode 0600).")
@click.pass_obj
@friendly
def set_cluster(ctx: Ctx, name: str, server: str | None, tls_ca: str | None, tls_cert: str | None,
                tls_key: str | None) -> None:
    tls = None
    if tls_ca or tls_cert or tls_key:
        tls = {k: str(Path(v).resolve()) for k, v in (("ca", tls_ca), ("cert", tls_cert), ("key", tls_key)) if v}
    ctx.config.set_cluster(name, server=server, tls=tls)
    ctx.config.save()
    click.echo(f'Cluster "{name}" set.')


@config_group.command("set-credentials")
@click.argument("name")
@click.option("--username", help="ZooKeeper digest user name (default: NAME).")
@click.option("--password-file", type=click.Path(exists=True, dir_okay=False),
              help="File holding the password (mode 0600); referenced, not copied.")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin; stored in the config (0600).")
@click.option("--sasl/--no-sasl", default=None,
              help="Also log in with SASL DIGEST-MD5 (for a ZooKeeper that requires SASL sessions).")
@click.pass_obj
@friendly
def set_credentials(ctx: Ctx, name: str, username: str | None, password_file: str | None, password_stdin: bool,
                    sasl: bool | None) -> None:
    """Set a user's credentials. Never a password flag: it would show in the process list."""
    if bool(password_file) == password_stdin:
        raise Failure("give exactly one of --password-file FILE or --password-stdin")
    if sasl is not None:
        ctx.config.set_user(name, sasl=sasl)
    if password_file:
        ctx.config.set_user(name, username=username, **{"password-file": str(Path(password_file).resolve())})
        ctx.config.credentials(name)  # checks the file's mode now, not at first use
    else:
        password = sys.stdin.readline().strip()
        if not password:
            raise Failure("no password on stdin")
        ctx.config.set_user(name, username=username, password=password)
    ctx.config.save()
    click.echo(f'User "{name}" set.')


# -- auth -----------------------------------------------------------------------------------------
@click.group("auth")
def auth_group() -> None:
    """Identities on the cluster: whoami, create-user, can-i."""


@auth_group.command("whoami")
@click.pass_obj
@friendly
def whoami(ctx: Ctx) -> None:
    """The user this context authenticates as (and whether the cluster checks identities)."""
    store = ctx.store
    if store.policy is None:
        click.echo(f"{store.whoami} (this cluster is open: it does not check identities)")
    else:
        click.echo(store.whoami + (" (admin)" if store.is_admin else ""))


def credentials_dir() -> Path:
    return boid_home() / "credentials"


def new_user_credentials(name: str) -> tuple[Credentials, Path]:
    """A fresh random password in $BOID_HOME/credentials/<name> (0600), or the one already there."""
    path = credentials_dir() / name
    if path.exists():
        return Credentials(name, path.read_text().strip()), path
    creds = Credentials.generate(name)
    write_private(path, creds.password + "\n")
    return creds, path


@auth_group.command("create-user")
@click.argument("name")
@click.option("--password-file", type=click.Path(exists=True, dir_okay=False),
              help="Register this password (mode 0600) instead of generating one.")
@click.pass_obj
@friendly
def create_user(ctx: Ctx, name: str, password_file: str | None) -> None:
    """Register a user on the cluster (admins only) and add it to this config with a context."""
    store = ctx.store
    if store.policy is None:
        raise Failure("this cluster is open (no policy): nothing to register users in")
    if not store.is_admin:
        raise Failure(f"forbidden: user {store.whoami!r} is not an admin of this cluster")
    if name.startswith(DISPATCHER_PREFIX):
        raise Failure(f"user names starting with {DISPATCHER_PREFIX!r} are reserved for protocols' dispatchers "
                      "(the operator creates them)")
    if password_file:
        ctx.config.set_user(name, **{"password-file": str(Path(password_file).resolve())})
        creds, path = ctx.config.credentials(name), Path(password_file).resolve()
    else:
        creds, path = new_user_credentials(name)
        ctx.config.set_user(name, **{"password-file": str(path)})
    register_user(store.client, store.policy, creds.digest_id)
    c = ctx.context
    if c is not None:
        ctx.config.set_context(f"{name}@{c.cluster}", cluster=c.cluster, user=name)
    ctx.config.save()
    click.echo(f"user/{name} created (password in {path})")


@auth_group.command("secure-cluster")
@click.option("--operator-password-file", type=click.Path(exists=True, dir_okay=False), required=True,
              help="The operator's own password (mode 0600); it runs with `operator run --password-file`.")
@click.option("--operator-user", default="operator", show_default=True)
@click.pass_obj
@friendly
def secure_cluster_cmd(ctx: Ctx, operator_password_file: str, operator_user: str) -> None:
    """Make this context's cluster check identities (idempotent): its policy names the admins, you
    (the current context's user) and the operator's own identity, separate from yours."""
    from boidcluster.adapters.auth import Policy, secure_cluster, user_of
    from boidcluster.adapters.store import kind_dir
    from boidcluster.model.kinds import KINDS

    from .kubeconfig import read_password_file

    me = ctx.credentials
    if me is None:
        raise Failure("the current context has no user: `boidctl config set-credentials` and `set-context` first")
    op = read_password_file(Path(operator_password_file), operator_user)
    if op.user == me.user:
        raise Failure(f"the operator needs an identity of its own, not {me.user!r}: pick another --operator-user")
    store = ctx.store
    if store.policy is not None and not store.is_admin:
        raise Failure(f"forbidden: user {store.whoami!r} is not an admin of this cluster")
    kept = [a for a in (store.policy.admins if store.policy else ()) if user_of(a) not in (me.user, op.user)]
    policy = Policy(admins=(me.digest_id, *kept, op.digest_id))
    secure_cluster(store.client, policy, [kind_dir(k) for k in KINDS.values()])
    click.echo(f"cluster secured: admins {', '.join(user_of(a) for a in policy.admins)}")


# -- the embedded cluster -------------------------------------------------------------------------
def secure_embedded(home: Path, hosts: str, users: tuple[str, ...]) -> Credentials:
    """Secure the embedded cluster: two admin identities, the operator's own (operator@local, used
    by the operator process only) and the human admin's (admin@local, the default context), and
    one identity per demo user, each password in home/credentials/<name> (0600), all in
    home/config as contexts <name>@local. Re-running keeps existing passwords (ZooKeeper's ACLs
    were made with them)."""
    from boidcluster.adapters.auth import secure_hosts
    from boidcluster.adapters.store import kind_dir
    from boidcluster.model.kinds import KINDS

    from .kubeconfig import Config

    def creds_for(name: str) -> tuple[Credentials, Path]:
        path = home / "credentials" / name
        if path.exists():
            return Credentials(name, path.read_text().strip()), path
        c = Credentials.generate(name)
        write_private(path, c.password + "\n")
        return c, path

    admin, admin_path = creds_for("admin")
    operator, operator_path = creds_for(OPERATOR_USER)   # the operator's own identity, not the human's
    people = {u: creds_for(u) for u in users}
    secure_hosts(hosts, admin, [kind_dir(k) for k in KINDS.values()], [c.digest_id for c, _ in people.values()],
                 admins=(operator.digest_id,))
    config = Config.load(home / "config")
    config.set_cluster("local", server=hosts)
    for name, (_, path) in {"admin": (admin, admin_path), OPERATOR_USER: (operator, operator_path), **people}.items():
        config.set_user(name, **{"password-file": str(path)})
        config.set_context(f"{name}@local", cluster="local", user=name)
    if not config.current:
        config.use("admin@local")
    config.save()
    return admin


OPERATOR_USER = "operator"   # the embedded operator's identity (context operator@local), an admin


def embedded_admin(home: Path) -> Credentials:
    """The embedded cluster's admin identity (`boidctl up` applies the demo with it)."""
    return Credentials("admin", (home / "credentials" / "admin").read_text().strip())


# -- submitters and can-i -------------------------------------------------------------------------
def check_submitters(store: Any, objs: list[Any]) -> None:
    """Refuse (store nothing) an input with a Job under a protocol that does not let this user
    submit. The operator enforces the same rule (reconcilers/admission.py) on whatever is stored;
    this is the early, clear error."""
    from boidcluster.model.resources import Job, Protocol
    from boidcluster.reconcilers.admission import submit_refusal

    if store.policy is None or store.credentials is None:
        return
    protos = {o.name: o for o in objs if isinstance(o, Protocol)}
    errs = [f"job/{o.name}: {why}" for o in objs if isinstance(o, Job)
            and (why := submit_refusal(store, store.whoami, o.spec.protocol, protos.get(o.spec.protocol)))]
    if errs:
        raise Failure("\n".join(errs) + "\nnothing was applied")


VERBS = ("get", "list", "watch", "create", "update", "patch", "delete")


@auth_group.command("can-i")
@click.argument("verb", type=click.Choice(VERBS))
@click.argument("resource", metavar="RESOURCE[/NAME]")
@click.argument("name", required=False)
@click.option("--protocol", help="For `create jobs`: the protocol the job would be submitted under.")
@click.option("--subresource", type=click.Choice(["status"]), help="e.g. `update jobs NAME --subresource status`.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing; only the exit code says (0 yes, 1 no).")
@click.pass_obj
@friendly
def can_i(ctx: Ctx, verb: str, resource: str, name: str | None, protocol: str | None,
          subresource: str | None, quiet: bool) -> None:
    """Check whether the current identity may do VERB on RESOURCE: prints yes or no (exit 0 or 1),
    like `kubectl auth can-i`. E.g. `boidctl auth can-i create jobs --protocol monte-carlo`."""
    from boidcluster.model.kinds import resolve_kind
    from boidcluster.model.resources import Job
    from boidcluster.reconcilers.admission import submit_refusal

    if "/" in resource and name is None:
        resource, name = resource.split("/", 1)
    kind = resolve_kind(resource)
    store = ctx.store
    why: str | None = None
    if store.policy is None:
        why = None  # an open cluster: anyone may do anything
    elif verb in ("get", "list", "watch"):
        why = None  # every object is world-readable
    elif store.credentials is None:
        why = "not authenticated (no user in the current context)"
    elif store.is_admin:
        why = None
    elif subresource == "status":
        why = "status is written by the operator only"
        if kind is Job and name and store.whoami.startswith(DISPATCHER_PREFIX):
            from boidcluster.adapters.auth import dispatcher_user, read_grant

            j = store.get(Job, name)
            if store.whoami == dispatcher_user(j.spec.protocol) and read_grant(store.client, j.metadata.uid or ""):
                why = None   # granted to this protocol's dispatcher by the operator
            else:
                why = f"job {name!r} is not granted to {store.whoami!r}"
    elif verb == "create":
        if kind is Job:
            if not protocol:
                raise Failure("`can-i create jobs` needs --protocol P (who may submit is per protocol)")
            why = submit_refusal(store, store.whoami, protocol)
    else:
        if not name:
            raise Failure(f"`can-i {verb} {resource}` needs a NAME (who may change an object depends on its owner)")
        owner = store.owner(kind, name)
        if owner != store.whoami:
            why = f"{kind.KIND} {name!r} belongs to {('user ' + repr(owner)) if owner else 'no proven user'}"
    if not quiet:
        click.echo("yes" if why is None else "no")
        if why is not None and ctx_verbose():
            click.echo(f"reason: {why}", err=True)
    sys.exit(0 if why is None else 1)


def ctx_verbose() -> bool:
    c = click.get_current_context().find_root()
    return bool(c.params.get("verbose"))
