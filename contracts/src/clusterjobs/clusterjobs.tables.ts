/**
 * clusterjobs tables (see contracts/INTERFACE.md). Plain multi-index tables. RAM grows with protocols and
 * contributors, never with units: a recorded batch is one action whose data (the units and their times)
 * stays in the transaction history, and the only row it adds or changes is per protocol or per contributor.
 */
import { Name, Asset, Table, EMPTY_NAME } from "proton-tsc"

/** scope clusterjobs, key 0: which registry to credit through and which account operates. */
@table("reg")
export class Reg extends Table {
    constructor(
        public registry_contract: Name = EMPTY_NAME,
        public operator: Name = EMPTY_NAME
    ) { super() }

    @primary
    get primary(): u64 { return 0 }
}

/** scope = protocol id, key = worker account: a registered worker and the time it contributed. */
@table("worker")
export class Worker extends Table {
    constructor(
        public account: Name = EMPTY_NAME,
        public total_time: u64 = 0
    ) { super() }

    @primary
    get primary(): u64 { return this.account.N }
}

/** scope = protocol id, key = dispatcher account: a registered dispatcher and the time it contributed. */
@table("dispatcher")
export class Dispatcher extends Table {
    constructor(
        public account: Name = EMPTY_NAME,
        public total_time: u64 = 0
    ) { super() }

    @primary
    get primary(): u64 { return this.account.N }
}

/**
 * scope clusterjobs, key = protocol id: the protocol's last recorded batch number (the next must be seq + 1,
 * so a replayed batch is refused) and its totals.
 */
@table("batchseq")
export class BatchSeq extends Table {
    constructor(
        public id: u64 = 0,
        public owner: Name = EMPTY_NAME,
        public name: Name = EMPTY_NAME,
        public seq: u64 = 0,
        public units: u64 = 0,
        public worker_time: u64 = 0,
        public dispatcher_time: u64 = 0
    ) { super() }

    @primary
    get primary(): u64 { return this.id }
}

/** One unit of a batch: who contributed, the unit's id (strictly increasing in a batch), its time in µs. */
@packer
export class Unit extends Table {
    constructor(
        public contributor: Name = EMPTY_NAME,
        public id: u64 = 0,
        public time: u64 = 0
    ) { super() }
}

/**
 * clusterreg's `protocol` table, read here (scope = owner, key = protocol name) for the protocol's id and
 * consent. Not part of this contract's ABI; the layout must match clusterreg's (tests/unit/test_contract_layouts.py).
 */
@table("protocol", noabigen)
export class RegistryProtocol extends Table {
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

/** clusterreg's `acct` table (scope = protocol id, key = account), read to refuse deregistering the owed. */
@table("acct", noabigen)
export class RegistryAcct extends Table {
    constructor(
        public account: Name = EMPTY_NAME,
        public owed: Asset = new Asset(),
        public paid: Asset = new Asset(),
        public carry: u64 = 0
    ) { super() }

    @primary
    get primary(): u64 { return this.account.N }
}
