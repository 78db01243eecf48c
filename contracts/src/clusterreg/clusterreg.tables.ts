/**
 * clusterreg tables (see contracts/INTERFACE.md). Plain multi-index tables (no vRAM).
 */
import { Name, Asset, Table, EMPTY_NAME, BinaryExtension } from "proton-tsc"

/** scope clusterreg, key 0: the only contract allowed to call `payout`. */
@table("config")
export class Config extends Table {
    constructor(
        public jobs_contract: Name = EMPTY_NAME
    ) { super() }

    @primary
    get primary(): u64 { return 0 }
}

/**
 * scope = owner, key = researcher: one research protocol. `fund` is the remaining budget; pay rates
 * are assets (same symbol as the fund) per hour of contributed time. `funded` is the total ever
 * committed (addprotocol's fund plus every addfund), so funded - fund is what was paid out; it is a
 * binary extension (ABI `asset$`) because rows written before it existed end after
 * dispatcher_pay_rate: such rows still read (value null) and are rewritten unchanged.
 * clusterjobs reads this layout.
 */
@table("protocol")
export class Protocol extends Table {
    constructor(
        public title: string = "",
        public owner: Name = EMPTY_NAME,
        public researcher: Name = EMPTY_NAME,
        public datadir: string = "",
        public fundaccount: Name = EMPTY_NAME,
        public fund: Asset = new Asset(),
        public tokencontract: Name = EMPTY_NAME,
        public worker_pay_rate: Asset = new Asset(),
        public dispatcher_pay_rate: Asset = new Asset(),
        public funded: BinaryExtension<Asset> = new BinaryExtension<Asset>()
    ) { super() }

    @primary
    get primary(): u64 { return this.researcher.N }
}

/** eosio.token's `stat` table (scope = symbol code), read to check the fund's symbol. */
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
