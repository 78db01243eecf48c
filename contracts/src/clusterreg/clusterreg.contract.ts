/**
 * clusterreg: the registry of research protocols (funds, pay rates) and the only place tokens move.
 *
 * Why it is shaped so (contracts/README.md lists every fix to the seed):
 * - Protocol rows are scoped by owner and keyed by researcher, so a sponsoring team (owner) and its
 *   researcher can be different accounts, and one owner can sponsor many researchers.
 * - Pay rates are assets per hour with the fund's symbol, never floats; the amount is computed in
 *   integer units with 128-bit intermediates (../common/payment.ts), floor to the smallest unit.
 * - `payout` runs only as an inline action of the jobs contract (which checked the funder), asserts
 *   the fund covers the amount, lowers the fund, and transfers from the fund account with a standard
 *   eosio.token `transfer` on the protocol's token contract (needs clusterreg@eosio.code in the fund
 *   account's active permission).
 * - `funded` records the total ever committed; `addfund` raises `fund` and `funded` together, so the
 *   operator can top up a protocol to a new total (spec quantity - funded) without deleting the row
 *   (which would strand unpaid time) and without adding twice (it compares with `funded` again).
 *   There is no action to lower either: the remaining fund is what contributors were promised.
 */
import {
    Contract, Name, Asset, Symbol, check, requireAuth, isAccount, TableStore, SAME_PAYER, EMPTY_NAME,
    InlineAction, ActionData, PermissionLevel, getSender, BinaryExtension,
} from "proton-tsc"
import { Config, Protocol, TokenStat } from "./clusterreg.tables"
import { computePayment } from "../common/payment"

const TYPE_WORKER = "worker"
const TYPE_DISPATCHER = "dispatcher"
const MAX_TITLE_BYTES = 256
const MAX_DATADIR_BYTES = 1024
const MAX_ASSET_AMOUNT: i64 = (<i64>1 << 62) - 1

/** Data of the standard eosio.token transfer. */
@packer
class TokenTransfer extends ActionData {
    constructor(
        public from: Name = EMPTY_NAME,
        public to: Name = EMPTY_NAME,
        public quantity: Asset = new Asset(),
        public memo: string = ""
    ) { super() }
}

/** Asserts the contributor type; true for "worker". */
function checkType(t: string): bool {
    check(t == TYPE_WORKER || t == TYPE_DISPATCHER, "type must be \"worker\" or \"dispatcher\"")
    return t == TYPE_WORKER
}

/**
 * Inline `<tokencontract>::transfer(from, to, quantity, memo)` authorized by from@active. (A free function:
 * the same chained InlineAction call written inside the payout method crashes proton-asc's parser.)
 */
function sendTransfer(tokencontract: Name, from: Name, to: Name, quantity: Asset, memo: string): void {
    const transfer = new InlineAction<TokenTransfer>("transfer")
    const act = transfer.act(tokencontract, new PermissionLevel(from))
    act.send(new TokenTransfer(from, to, quantity, memo))
}

function checkRate(rate: Asset, fundSymbol: Symbol, what: string): void {
    check(rate.isValid(), `invalid ${what} pay rate`)
    check(rate.symbol.value == fundSymbol.value, `${what} pay rate symbol must match the fund symbol`)
    check(rate.amount >= 0, `${what} pay rate must not be negative`)
}

/** Checks the accounts, strings, token and rates shared by addprotocol and updprotocol. */
function checkProtocolFields(
    title: string, researcher: Name, datadir: string, fundaccount: Name, fundSymbol: Symbol,
    tokencontract: Name, dispatcher_pay_rate: Asset, worker_pay_rate: Asset
): void {
    check(String.UTF8.byteLength(title) <= MAX_TITLE_BYTES, "title is longer than 256 bytes")
    check(String.UTF8.byteLength(datadir) <= MAX_DATADIR_BYTES, "datadir is longer than 1024 bytes")
    check(isAccount(researcher), "researcher account does not exist")
    check(isAccount(fundaccount), "fund account does not exist")
    check(isAccount(tokencontract), "token contract account does not exist")
    const stats = new TableStore<TokenStat>(tokencontract, new Name(fundSymbol.code()))
    const stat = stats.requireGet(fundSymbol.code(), "fund symbol is not a token of the token contract")
    check(stat.supply.symbol.value == fundSymbol.value, "fund symbol precision does not match the token contract")
    checkRate(worker_pay_rate, fundSymbol, "worker")
    checkRate(dispatcher_pay_rate, fundSymbol, "dispatcher")
}

@contract
class ClusterReg extends Contract {
    configTable: TableStore<Config> = new TableStore<Config>(this.receiver, this.receiver)

    @action("conntojobs")
    conntojobs(jobs_contract: Name): void {
        requireAuth(this.receiver)
        check(isAccount(jobs_contract), "jobs contract account does not exist")
        this.configTable.set(new Config(jobs_contract), this.receiver)
    }

    @action("addprotocol")
    addprotocol(
        title: string, owner: Name, researcher: Name, datadir: string, fundaccount: Name, fund: Asset,
        tokencontract: Name, dispatcher_pay_rate: Asset, worker_pay_rate: Asset
    ): void {
        requireAuth(owner)
        const protocols = new TableStore<Protocol>(this.receiver, owner)
        check(!protocols.exists(researcher.N), "protocol already exists")
        check(fund.isValid(), "invalid fund")
        check(fund.amount >= 0, "fund must not be negative")
        checkProtocolFields(title, researcher, datadir, fundaccount, fund.symbol, tokencontract,
            dispatcher_pay_rate, worker_pay_rate)
        protocols.store(new Protocol(title, owner, researcher, datadir, fundaccount, fund, tokencontract,
            worker_pay_rate, dispatcher_pay_rate, new BinaryExtension<Asset>(fund)), owner)
    }

    @action("updprotocol")
    updprotocol(
        title: string, owner: Name, researcher: Name, datadir: string, fundaccount: Name,
        tokencontract: Name, dispatcher_pay_rate: Asset, worker_pay_rate: Asset
    ): void {
        requireAuth(owner)
        const protocols = new TableStore<Protocol>(this.receiver, owner)
        const p = protocols.requireGet(researcher.N, "unknown protocol")
        checkProtocolFields(title, researcher, datadir, fundaccount, p.fund.symbol, tokencontract,
            dispatcher_pay_rate, worker_pay_rate)
        p.title = title
        p.datadir = datadir
        p.fundaccount = fundaccount
        p.tokencontract = tokencontract
        p.worker_pay_rate = worker_pay_rate
        p.dispatcher_pay_rate = dispatcher_pay_rate
        protocols.update(p, owner)
    }

    /**
     * Commit more of the fund account's tokens to the protocol: fund += quantity, funded += quantity.
     * A row from before `funded` existed counts from its remaining fund (funded = fund + quantity).
     */
    @action("addfund")
    addfund(owner: Name, researcher: Name, quantity: Asset): void {
        requireAuth(owner)
        const protocols = new TableStore<Protocol>(this.receiver, owner)
        const p = protocols.requireGet(researcher.N, "unknown protocol")
        check(quantity.isValid(), "invalid quantity")
        check(quantity.symbol.value == p.fund.symbol.value, "quantity symbol must match the fund symbol")
        check(quantity.amount > 0, "quantity must be positive")
        const add: i64 = quantity.amount
        const fundAmount: i64 = p.fund.amount
        let fundedAmount: i64 = fundAmount
        const had = p.funded.value
        if (had) {
            fundedAmount = had.amount
        }
        check(fundAmount <= MAX_ASSET_AMOUNT - add, "fund overflow")
        check(fundedAmount <= MAX_ASSET_AMOUNT - add, "funded overflow")
        p.fund = new Asset(fundAmount + add, p.fund.symbol)
        p.funded = new BinaryExtension<Asset>(new Asset(fundedAmount + add, p.fund.symbol))
        protocols.update(p, owner)
    }

    @action("delprotocol")
    delprotocol(owner: Name, researcher: Name): void {
        requireAuth(owner)
        const protocols = new TableStore<Protocol>(this.receiver, owner)
        const p = protocols.requireGet(researcher.N, "unknown protocol")
        protocols.remove(p)
    }

    @action("payout")
    payout(owner: Name, researcher: Name, worker: Name, unpaid_time: u64, type: string): void {
        const config = this.configTable.requireGet(0, "jobs contract not connected: run conntojobs first")
        // Only as an inline action sent by the jobs contract, which checked the funder's authority.
        requireAuth(config.jobs_contract)
        check(getSender() == config.jobs_contract, "payout may only be called by the jobs contract")
        const isWorker = checkType(type)
        const protocols = new TableStore<Protocol>(this.receiver, owner)
        const p = protocols.requireGet(researcher.N, "unknown protocol")
        let rate = p.dispatcher_pay_rate
        let kind = TYPE_DISPATCHER
        if (isWorker) {
            rate = p.worker_pay_rate
            kind = TYPE_WORKER
        }
        check(rate.symbol.value == p.fund.symbol.value, "pay rate symbol must match the fund symbol")
        const rateAmount: i64 = rate.amount
        check(rateAmount >= 0, "negative pay rate")
        const pay = computePayment(unpaid_time, <u64>rateAmount)
        check(pay.amount > 0, "nothing to pay")
        const fundAmount: i64 = p.fund.amount
        check(pay.amount <= <u64>fundAmount, "fund too low")

        const amount: i64 = <i64>pay.amount
        const quantity = new Asset(amount, p.fund.symbol)
        p.fund = new Asset(fundAmount - amount, p.fund.symbol)
        protocols.update(p, SAME_PAYER)

        const memo = "boid cluster " + kind + " payout for researcher " + researcher.toString()
        sendTransfer(p.tokencontract, p.fundaccount, worker, quantity, memo)
    }
}
