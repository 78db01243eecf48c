/**
 * clusterjobs tables (see contracts/INTERFACE.md). Plain multi-index tables: the seed's vRAM
 * (LiquidApps DAPP service) is dropped, so any Antelope node can serve them with get_table_rows.
 */
import { Name, Asset, Table, EMPTY_NAME, BinaryExtension } from "proton-tsc"

/** scope clusterjobs, key 0: which registry contract to pay through and which account operates. */
@table("reg")
export class Reg extends Table {
    constructor(
        public registry_contract: Name = EMPTY_NAME,
        public operator: Name = EMPTY_NAME
    ) { super() }

    @primary
    get primary(): u64 { return 0 }
}

/** scope = worker account, key = researcher: a worker's contributed time for one researcher. */
@table("worker")
export class Worker extends Table {
    constructor(
        public researcher: Name = EMPTY_NAME,
        public total_time: u64 = 0,
        public unpaid_time: u64 = 0
    ) { super() }

    @primary
    get primary(): u64 { return this.researcher.N }
}

/** scope = dispatcher account, key = researcher: a dispatcher's contributed time for one researcher. */
@table("dispatcher")
export class Dispatcher extends Table {
    constructor(
        public researcher: Name = EMPTY_NAME,
        public total_time: u64 = 0,
        public unpaid_time: u64 = 0
    ) { super() }

    @primary
    get primary(): u64 { return this.researcher.N }
}

/** scope = researcher, key = unit id: one recorded work unit (exists at most once). */
@table("job")
export class Job extends Table {
    constructor(
        public id: u64 = 0,
        public worker: Name = EMPTY_NAME,
        public time: u64 = 0
    ) { super() }

    @primary
    get primary(): u64 { return this.id }
}

/** scope = researcher, key = unit id: one recorded dispatch (exists at most once). */
@table("dptchlog")
export class DptchLog extends Table {
    constructor(
        public id: u64 = 0,
        public dispatcher: Name = EMPTY_NAME,
        public time: u64 = 0
    ) { super() }

    @primary
    get primary(): u64 { return this.id }
}

/**
 * clusterreg's `protocol` table, read here (scope = owner, key = researcher) to check the funder and
 * to know the pay rate. Not part of this contract's ABI; the layout must match clusterreg's.
 */
@table("protocol", noabigen)
export class RegistryProtocol extends Table {
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
