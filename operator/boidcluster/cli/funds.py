"""`boidctl fund PROTOCOL AMOUNT` and `boidctl withdraw PROTOCOL AMOUNT|--all`: the user's own money.

Why it is shaped so: a protocol's money is an escrow held by the registry contract (contracts v2).
Only its users move money in or out, signed with their own keys, read from a key file (never the
command line, never the operator's keys): `fund` registers the protocol on chain as its spec says
(owner signs; the researcher's signature, when the key file has it, gives their consent) and then
transfers AMOUNT into the escrow with a memo naming the protocol; `withdraw` takes back escrow that
no contributor is owed (the contract refuses more). Both print what the escrow holds afterwards.
"""

from __future__ import annotations

import asyncio
import os
from decimal import Decimal
from pathlib import Path

import click

from boidcluster.adapters.chain import BoidChain, ChainError, KeyFormatError, KeyRing, ProtocolTerms, RpcClient
from boidcluster.adapters.store import NotFound
from boidcluster.model.resources import Protocol
from boidcluster.model.types import Asset

from .context import Ctx, Failure, friendly, read_cluster

KEY_FILE_ENV = "BOID_KEY_FILE"


def user_keys(key_file: str | None) -> tuple[KeyRing, str]:
    """The user's keys: --key-file, else $BOID_KEY_FILE, else the embedded demo cluster's user keys."""
    source = key_file or os.environ.get(KEY_FILE_ENV)
    if not source:
        state = read_cluster().get("state")
        demo = Path(state) / "user-keys.json" if state else None
        if demo is None or not demo.exists():
            raise Failure(f"no key file: pass --key-file FILE or set {KEY_FILE_ENV} "
                          "(lines 'account@permission PVT_K1_...', or JSON {\"account@permission\": key})")
        source = str(demo)
        click.echo(f"signing with the demo users' keys in {demo}", err=True)
    try:
        return KeyRing.from_file(source), source
    except OSError as e:
        raise Failure(f"cannot read the key file {source}: {e.strerror}") from None
    except KeyFormatError as e:
        raise Failure(str(e)) from None


def _chain_url(chain_url: str | None) -> str:
    url = chain_url or read_cluster().get("chain")
    if not url:
        raise Failure("no chain: pass --chain-url (or start the embedded cluster with `boidctl up`)")
    return url


def _protocol(ctx: Ctx, name: str) -> Protocol:
    try:
        return ctx.store.get(Protocol, name)
    except NotFound:
        raise Failure(f'protocols "{name}" not found') from None


def _amount(text: str, p: Protocol) -> Asset:
    symbol = p.spec.fund.quantity.symbol
    try:
        if " " in text.strip():
            amount = Asset.parse(text)
        else:  # a bare number in the protocol's token: exact decimal, never a float
            units = Decimal(text.strip()) * 10 ** symbol.precision
            if units != units.to_integral_value():
                raise ValueError(f"{text!r} has more than {symbol.precision} decimals")
            amount = Asset(int(units), symbol)
    except (ValueError, ArithmeticError) as e:
        raise Failure(f"AMOUNT: {e}") from None
    if amount.symbol != symbol:
        raise Failure(f"AMOUNT: '{amount}' is not in the protocol's token: write {symbol.precision} decimals "
                      f"of {symbol.code}, e.g. '{Asset(10 ** symbol.precision, symbol)}'")
    if amount.amount <= 0:
        raise Failure(f"AMOUNT must be positive (got '{amount}')")
    return amount


def _signer(ring: KeyRing, account: str, what: str, source: str) -> str:
    for perm in ("active", "owner"):
        if ring.public_key_for(f"{account}@{perm}") is not None:
            return f"{account}@{perm}"
    raise Failure(f"the key file {source} has no key for {account}@active ({what}): add a line "
                  f"'{account}@active PVT_K1_...'")


def _run(coro):
    try:
        return asyncio.run(coro)
    except ChainError as e:
        raise Failure(f"the chain refused: {e}") from None


def _escrow_line(row) -> str:
    return (f"escrow of {row.owner}/{row.name}: holds {row.balance}, owed to contributors {row.owed}, "
            f"reserved for running jobs {row.reserved}, free to withdraw {row.withdrawable}; deposited {row.deposited}, paid {row.paid}, withdrawn {row.withdrawn}")


async def fund_protocol(p: Protocol, quantity: Asset | None, ring: KeyRing, source: str, url: str,
                        sender: str, *, up_to: Asset | None = None):
    """Register `p` as its spec says (owner signs; the researcher too when the ring has their key)
    and deposit `quantity` from `sender`, or, with `up_to`, what brings `deposited` up to it (so a
    repeated call adds nothing). Returns (what was done to the registration, the row after)."""
    spec = p.spec
    terms = ProtocolTerms.from_spec(p.chain_name, spec)
    owner_signer = _signer(ring, spec.owner, "the protocol's owner signs its registration", source)
    from_signer = _signer(ring, sender, "the sender signs the transfer", source)
    researcher_signs = any(ring.public_key_for(f"{spec.researcher}@{x}") for x in ("active", "owner"))
    async with RpcClient(url, ring) as rpc:
        chain = BoidChain(rpc)
        done = await chain.register_protocol(
            terms, researcher_signs=researcher_signs, owner_signer=owner_signer,
            researcher_signer=_signer(ring, spec.researcher, "", source) if researcher_signs else None)
        if up_to is not None:
            have = await chain.require_protocol(spec.owner, p.chain_name)
            quantity = up_to - have.deposited if up_to.amount > have.deposited.amount else None
        if quantity is not None:
            await chain.deposit(sender, spec.owner, p.chain_name, quantity, token=spec.fund.token_contract,
                                signer=from_signer)
            done.append(f"deposited {quantity} from {sender}")
        return done, await chain.require_protocol(spec.owner, p.chain_name)


@click.command("fund")
@click.argument("protocol")
@click.argument("amount")
@click.option("--from", "sender", metavar="ACCOUNT", help="Account the tokens come from (default: spec.fund.account, "
                                                           "else the owner).")
@click.option("--key-file", type=click.Path(dir_okay=False), help=f"Your key file (else ${KEY_FILE_ENV}).")
@click.option("--chain-url", metavar="URL", help="Node RPC (default: the embedded cluster's).")
@click.pass_obj
@friendly
def fund(ctx: Ctx, protocol: str, amount: str, sender: str | None, key_file: str | None, chain_url: str | None) -> None:
    """Register PROTOCOL on chain as its spec says and deposit AMOUNT (e.g. 100 or '100.0000 BOID') into its escrow."""
    p = _protocol(ctx, protocol)
    quantity = _amount(amount, p)
    ring, source = user_keys(key_file)
    sender = sender or p.spec.fund.account or p.spec.owner
    done, row = _run(fund_protocol(p, quantity, ring, source, _chain_url(chain_url), sender))
    spec = p.spec
    for what in done:
        click.echo(f"protocol/{p.name} ({spec.owner}/{p.chain_name} on chain): {what}")
    click.echo(_escrow_line(row))
    if not row.accepted:
        click.echo(f"note: the researcher {spec.researcher} has not accepted the protocol yet; no work is recorded "
                   f"until they do (`boidctl fund` with their key in the key file, or clusterreg::acceptprot)", err=True)


@click.command("withdraw")
@click.argument("protocol")
@click.argument("amount", required=False)
@click.option("--all", "all_", is_flag=True, help="Withdraw all the free escrow (what no contributor is owed and no running "
                                                   "job can still owe: balance - owed - reserved).")
@click.option("--delete", is_flag=True, help="Then remove the protocol from the registry (needs nothing owed "
                                             "and an empty escrow).")
@click.option("--key-file", type=click.Path(dir_okay=False), help=f"Your key file (else ${KEY_FILE_ENV}).")
@click.option("--chain-url", metavar="URL", help="Node RPC (default: the embedded cluster's).")
@click.pass_obj
@friendly
def withdraw(ctx: Ctx, protocol: str, amount: str | None, all_: bool, delete: bool, key_file: str | None,
             chain_url: str | None) -> None:
    """Take back escrow of PROTOCOL that no contributor is owed nor reserved for running jobs (signed by the owner)."""
    if (amount is None) == (not all_):
        raise Failure("give an AMOUNT or --all (not both)")
    p = _protocol(ctx, protocol)
    quantity = _amount(amount, p) if amount is not None else None
    ring, source = user_keys(key_file)
    spec = p.spec
    owner_signer = _signer(ring, spec.owner, "the owner signs a withdrawal", source)

    async def go():
        async with RpcClient(_chain_url(chain_url), ring) as rpc:
            chain = BoidChain(rpc)
            row = await chain.require_protocol(spec.owner, p.chain_name)
            take = quantity if quantity is not None else row.withdrawable
            took = None
            if take.amount > 0:
                await chain.withdraw(spec.owner, p.chain_name, take, owner_signer)
                took = take
            deleted = delete and await chain.delete_protocol(spec.owner, p.chain_name, owner_signer)
            return took, deleted, await chain.protocol_row(spec.owner, p.chain_name)

    took, deleted, row = _run(go())
    click.echo(f"withdrew {took} from protocol/{p.name} to {spec.owner}" if took else "nothing free to withdraw")
    if row is not None:
        click.echo(_escrow_line(row))
    if deleted:
        click.echo(f"protocol {spec.owner}/{p.chain_name} removed from the registry")
