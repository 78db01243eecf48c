/**
 * clusterreg tables (see contracts/INTERFACE.md). Plain multi-index tables (no vRAM).
 */
import { Name, Asset, Table, EMPTY_NAME } from "proton-tsc"

/** scope clusterreg, key 0: the jobs contract (the only sender of `credit`), the operator, the next protocol id. */
@table("config")
export class Config extends Table {
    constructor(
        public jobs_contract: Name = EMPTY_NAME,
        public operator: Name = EMPTY_NAME,
        public next_id: u64 = 1
    ) { super() }

    @primary
    get primary(): u64 { return 0 }
}

/**
 * scope = owner, key = protocol name: one research protocol and its escrow. Identity is (owner, name);
 * `id` is a number given at creation that scopes every per-protocol table (here `acct`, in clusterjobs
 * `worker`, `dispatcher`). The token contract and the symbol (that of the pay rates) are fixed at creation.
 * Money, all in the protocol's symbol: `deposited` (every transfer in), `balance` (tokens held now for the
 * protocol), `owed` (recorded work not yet paid), `paid`, `withdrawn`. Always
 * deposited = paid + withdrawn + balance, and owed = the sum of the protocol's `acct` rows' owed;
 * the escrow not owed is balance - owed (negative: a shortfall). `reserved` (set by the operator with
 * `reserve`, an upper bound of what the protocol's running jobs can still owe, consumed by recorded work)
 * is kept from withdrawal: the owner may withdraw at most balance - owed - reserved. When set it is at most
 * balance - owed, and recording, payouts, deposits and withdrawals keep reserved = 0 or owed + reserved <= balance.
 * clusterjobs reads this layout.
 */
@table("protocol")
export class Protocol extends Table {
    constructor(
        public name: Name = EMPTY_NAME,
        public owner: Name = EMPTY_NAME,
        public researcher: Name = EMPTY_NAME,
        public id: u64 = 0,
        public accepted: boolean = false,
        public title: string = "",
        public datadir: string = "",
        public tokencontract: Name = EMPTY_NAME,
        public worker_pay_rate: Asset = new Asset(),
        public dispatcher_pay_rate: Asset = new Asset(),
        public deposited: Asset = new Asset(),
        public balance: Asset = new Asset(),
        public owed: Asset = new Asset(),
        public paid: Asset = new Asset(),
        public withdrawn: Asset = new Asset(),
        public reserved: Asset = new Asset()
    ) { super() }

    @primary
    get primary(): u64 { return this.name.N }
}

/**
 * scope = protocol id, key = contributor account: what the protocol owes a contributor (fixed when the work
 * was recorded), what it paid, and the carried fraction of a unit (numerator over H, see common/payment.ts).
 * clusterjobs reads this layout (delworker/deldisptch refuse while something is owed).
 */
@table("acct")
export class Acct extends Table {
    constructor(
        public account: Name = EMPTY_NAME,
        public owed: Asset = new Asset(),
        public paid: Asset = new Asset(),
        public carry: u64 = 0
    ) { super() }

    @primary
    get primary(): u64 { return this.account.N }
}

/** eosio.token's `stat` table (scope = symbol code), read to check the protocol's symbol. */
@table("stat", noabigen)
export class TokenStat extends Table {
    constructor(
        public supply: Asset = new Asset(),
        public max_supply: Asset = new Asset(),
        public issuer: Name = EMPTY_NAME
    ) { super() }

    @primary
    get primary(): u64 { return this.supply.symbol.code() }
}
