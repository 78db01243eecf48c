/**
 * A hostile token contract, for the attack tests only (tests/integration/test_chain_escrow.py): it keeps
 * eosio.token's `stat` layout (so a protocol can name it as its token) but no balances, so it can "send"
 * tokens it never had, with a transfer notification naming any protocol. When the registry pays out in it,
 * it re-enters clusterreg::payout for the configured contributor (whose active permission includes
 * hostile@eosio.code) from inside the transfer.
 */
import {
    Contract, Name, Asset, check, requireAuth, requireRecipient, TableStore, Table, EMPTY_NAME,
    InlineAction, ActionData, PermissionLevel,
} from "proton-tsc"

@table("stat")
export class Stat extends Table {
    constructor(
        public supply: Asset = new Asset(),
        public max_supply: Asset = new Asset(),
        public issuer: Name = EMPTY_NAME
    ) { super() }

    @primary
    get primary(): u64 { return this.supply.symbol.code() }
}

@table("reenter")
export class Reenter extends Table {
    constructor(
        public registry: Name = EMPTY_NAME,
        public owner: Name = EMPTY_NAME,
        public name: Name = EMPTY_NAME,
        public contributor: Name = EMPTY_NAME
    ) { super() }

    @primary
    get primary(): u64 { return 0 }
}

@packer
class Payout extends ActionData {
    constructor(
        public owner: Name = EMPTY_NAME,
        public name: Name = EMPTY_NAME,
        public contributor: Name = EMPTY_NAME
    ) { super() }
}

function sendPayout(registry: Name, r: Reenter): void {
    const a = new InlineAction<Payout>("payout")
    const act = a.act(registry, new PermissionLevel(r.contributor))
    act.send(new Payout(r.owner, r.name, r.contributor))
}

@contract
class Hostile extends Contract {
    @action("create")
    create(issuer: Name, maximum_supply: Asset): void {
        requireAuth(this.receiver)
        const stats = new TableStore<Stat>(this.receiver, new Name(maximum_supply.symbol.code()))
        stats.set(new Stat(new Asset(0, maximum_supply.symbol), maximum_supply, issuer), this.receiver)
    }

    @action("setreenter")
    setreenter(registry: Name, owner: Name, name: Name, contributor: Name): void {
        requireAuth(this.receiver)
        const t = new TableStore<Reenter>(this.receiver, this.receiver)
        t.set(new Reenter(registry, owner, name, contributor), this.receiver)
    }

    /** Moves nothing: notifies both sides (a fake deposit), and re-enters payout on a payout. */
    @action("transfer")
    transfer(from: Name, to: Name, quantity: Asset, memo: string): void {
        requireAuth(from)
        check(from != to, "cannot transfer to self")
        requireRecipient(from)
        requireRecipient(to)
        const t = new TableStore<Reenter>(this.receiver, this.receiver)
        const r = t.get(0)
        if (r != null && from == r.registry) sendPayout(r.registry, r)
    }
}
