"""`boidctl mesos agent-credentials`: what a Mesos master and the contributors' agents need so a
contributor's machines prove who they are (authenticated workers, see adapters/mesos.py).

Secrets are only ever written to files readable by their owner (mode 0600); nothing prints them."""

from __future__ import annotations

import json
from pathlib import Path

import click

from boidcluster.adapters.mesos import (CONTRIBUTOR_ROLE_PREFIX, agent_acls, agent_credentials, agent_principal,
                                        contributor_role)
from boidcluster.model.resources import Contributor

from .context import Ctx, Failure, friendly
from .kubeconfig import write_private


@click.group("mesos")
def mesos_group() -> None:
    """Mesos cluster configuration for authenticated workers."""


def _read_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise Failure(f"{path}: not JSON ({e.msg} at line {e.lineno}); fix or remove it") from e
    if not isinstance(data, dict):
        raise Failure(f"{path}: expected a JSON object")
    return data


@mesos_group.command("agent-credentials")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), metavar="DIR",
              help="Directory to write into (re-running keeps every secret already there).")
@click.option("--contributor", "accounts", multiple=True, metavar="ACCOUNT",
              help="A contributor account whose agents get a credential; repeatable. Default: the accounts "
                   "of every worker Contributor in the cluster.")
@click.pass_obj
@friendly
def agent_credentials_cmd(ctx: Ctx, out: str, accounts: tuple[str, ...]) -> None:
    """Write the master's --credentials and --acls and one agent --credential per contributor.

    \b
    DIR/master/credentials.json   master --credentials (existing entries kept, e.g. frameworks')
    DIR/master/acls.json          master --acls: principal P may statically reserve only
                                  boid-contributors/P; nobody else any boid-contributors/ role
    DIR/agents/ACCOUNT.json       that contributor's agent --credential (hand it over privately)

    Then start the master with --authenticate_agents --credentials=... --acls=..., each agent with
    --credential=... and --default_role=boid-contributors/ACCOUNT, and the operator with
    --mesos-contributor ACCOUNT for each."""
    if not accounts:
        accounts = tuple(sorted({c.spec.account for c in ctx.store.list(Contributor) if c.spec.role == "worker"}))
        if not accounts:
            raise Failure("no worker Contributor in the cluster; name the accounts with --contributor")
    for a in accounts:
        try:
            contributor_role(a)
        except ValueError as e:
            raise Failure(f"--contributor {a!r}: {e}") from e
    root = Path(out)
    creds_path, acls_path = root / "master" / "credentials.json", root / "master" / "acls.json"
    creds = agent_credentials(accounts, _read_json(creds_path))
    acls = agent_acls(accounts, _read_json(acls_path))
    write_private(creds_path, json.dumps(creds, indent=2) + "\n")
    write_private(acls_path, json.dumps(acls, indent=2) + "\n")
    secret_of = {c["principal"]: c["secret"] for c in creds["credentials"]}
    for a in sorted(set(accounts)):
        p = agent_principal(a)
        write_private(root / "agents" / f"{a}.json", json.dumps({"principal": p, "secret": secret_of[p]}) + "\n")
    click.echo(f"wrote {creds_path} and {acls_path} (agent principals: {', '.join(sorted(set(accounts)))})")
    click.echo(f"wrote {len(set(accounts))} agent credential(s) under {root / 'agents'}/ (mode 0600)")
    click.echo(f"agents reserve for {CONTRIBUTOR_ROLE_PREFIX}/<account>; operator: "
               + " ".join(f"--mesos-contributor {a}" for a in sorted(set(accounts))))
