/**
 * clusterreg: research protocols, their escrow, what each contributor is owed, and every token movement.
 *
 * Why it is shaped so (contracts/README.md lists every interface change):
 * - Escrow: a protocol is funded by a token transfer INTO this contract whose memo names the protocol
 *   ("OWNER/NAME"); only transfers of the protocol's own token contract and symbol count. Payouts and
 *   withdrawals are this contract's own inline transfers (clusterreg@active includes clusterreg@eosio.code):
 *   no fund, owner or researcher key is held by or delegated to the operator.
 * - Identity: a protocol is (owner, name) with a numeric id that scopes every per-protocol row, so two
 *   sponsors of one researcher never share time or money. The researcher consents (co-signs addprotocol or
 *   calls acceptprot); the token contract and symbol are fixed at creation.
 * - Pay is fixed when work is recorded: `credit` (sent inline by the jobs contract with a recorded batch)
 *   turns time into an owed amount at the rate in force then, with a per-contributor carry so nothing is
 *   lost to rounding. A later rate change affects only later work.
 * - State changes before any inline transfer (which runs after this action returns): a hostile token
 *   contract re-entering payout finds nothing owed.
 * - Payout pays a contributor everything owed or nothing ("escrow too low ... short by"); the operator
 *   reserves (sets) what running jobs can still owe; the owner may withdraw only balance - owed - reserved; delprotocol only when nothing is owed and the balance is zero.
 */
import {
    Contract, Name, Asset, Symbol, check, requireAuth, hasAuth, isAccount, TableStore, SAME_PAYER, EMPTY_NAME,
    InlineAction, ActionData, PermissionLevel, getSender, unpackActionData, Table,
} from "proton-tsc"
import { Config, Protocol, Acct, TokenStat } from "./clusterreg.tables"
import { computeCredit, addAmount } from "../common/payment"

const TYPE_WORKER = "worker"
const TYPE_DISPATCHER = "dispatcher"
const MAX_TITLE_BYTES = 256
const MAX_DATADIR_BYTES = 1024

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

/** One contributor's recorded time in a batch (sent by clusterjobs::recordbatch, summed per contributor). */
@packer
export class TimeCredit extends Table {
    constructor(
        public account: Name = EMPTY_NAME,
        public time: u64 = 0
    ) { super() }
}

/**
 * Inline `<tokencontract>::transfer(self, to, quantity, memo)` from this contract's own balance, authorized
 * by clusterreg@active (satisfied by clusterreg@eosio.code). A free function: the same chained InlineAction
 * call written inside an action method crashes proton-asc's parser.
 */
function sendTransfer(tokencontract: Name, from: Name, to: Name, quantity: Asset, memo: string): void {
    const transfer = new InlineAction<TokenTransfer>("transfer")
    const act = transfer.act(tokencontract, new PermissionLevel(from))
    act.send(new TokenTransfer(from, to, quantity, memo))
}

function money(amount: u64, sym: Symbol): Asset {
    return new Asset(<i64>amount, sym)
}

function amountOf(a: Asset): u64 {
    return <u64>a.amount
}

function checkRate(rate: Asset, sym: Symbol, what: string): void {
    check(rate.isValid(), `invalid ${what} pay rate`)
    check(rate.symbol.value == sym.value, `${what} pay rate symbol must match the protocol's symbol`)
    check(rate.amount >= 0, `${what} pay rate must not be negative`)
}

function checkText(title: string, datadir: string): void {
    check(String.UTF8.byteLength(title) <= MAX_TITLE_BYTES, "title is longer than 256 bytes")
    check(String.UTF8.byteLength(datadir) <= MAX_DATADIR_BYTES, "datadir is longer than 1024 bytes")
}

/** A name written in a memo, checked to read back the same (so "Alice" or "a..b" are refused). */
function memoName(s: string, what: string): Name {
    check(s.length > 0 && s.length <= 12, `deposit memo must be OWNER/PROTOCOL: bad ${what}`)
    const n = Name.fromString(s)
    check(n.toString() == s, `deposit memo must be OWNER/PROTOCOL: bad ${what}`)
    return n
}

@contract
class ClusterReg extends Contract {
    configTable: TableStore<Config> = new TableStore<Config>(this.receiver, this.receiver)

    private protocols(owner: Name): TableStore<Protocol> {
        return new TableStore<Protocol>(this.receiver, owner)
    }

    @action("conntojobs")
    conntojobs(jobs_contract: Name, operator: Name): void {
        requireAuth(this.receiver)
        check(isAccount(jobs_contract), "jobs contract account does not exist")
        check(isAccount(operator), "operator account does not exist")
        const had = this.configTable.get(0)
        const next: u64 = had ? had.next_id : 1
        this.configTable.set(new Config(jobs_contract, operator, next), this.receiver)
    }

    /**
     * A new protocol (owner, name) for `researcher`. The symbol is the pay rates' symbol, which must be a
     * token of `tokencontract`; both are fixed from now on. Accepted at once if the researcher co-signed.
     */
    @action("addprotocol")
    addprotocol(
        owner: Name, name: Name, researcher: Name, title: string, datadir: string, tokencontract: Name,
        worker_pay_rate: Asset, dispatcher_pay_rate: Asset
    ): void {
        requireAuth(owner)
        const protocols = this.protocols(owner)
        check(!protocols.exists(name.N), "protocol already exists")
        check(name != EMPTY_NAME, "protocol name must not be empty")
        checkText(title, datadir)
        check(isAccount(researcher), "researcher account does not exist")
        check(isAccount(tokencontract), "token contract account does not exist")
        check(tokencontract != this.receiver, "the token contract cannot be the registry")
        const sym = worker_pay_rate.symbol
        checkRate(worker_pay_rate, sym, "worker")
        checkRate(dispatcher_pay_rate, sym, "dispatcher")
        const stats = new TableStore<TokenStat>(tokencontract, new Name(sym.code()))
        const stat = stats.requireGet(sym.code(), "symbol is not a token of the token contract")
        check(stat.supply.symbol.value == sym.value, "symbol precision does not match the token contract")
        const config = this.configTable.requireGet(0, "jobs contract not connected: run conntojobs first")
        const id = config.next_id
        config.next_id = id + 1
        this.configTable.update(config, SAME_PAYER)
        const zero = money(0, sym)
        protocols.store(new Protocol(name, owner, researcher, id, hasAuth(researcher), title, datadir, tokencontract,
            worker_pay_rate, dispatcher_pay_rate, zero, zero, zero, zero, zero, zero), owner)
    }

    /** The researcher's consent to a protocol naming them; work is recorded only for accepted protocols. */
    @action("acceptprot")
    acceptprot(owner: Name, name: Name): void {
        const protocols = this.protocols(owner)
        const p = protocols.requireGet(name.N, "unknown protocol")
        requireAuth(p.researcher)
        check(!p.accepted, "protocol already accepted")
        p.accepted = true
        protocols.update(p, SAME_PAYER)
    }

    /** Title, datadir and pay rates (same symbol). Rates apply to work recorded from now on. */
    @action("updprotocol")
    updprotocol(owner: Name, name: Name, title: string, datadir: string, worker_pay_rate: Asset,
                dispatcher_pay_rate: Asset): void {
        requireAuth(owner)
        const protocols = this.protocols(owner)
        const p = protocols.requireGet(name.N, "unknown protocol")
        checkText(title, datadir)
        const sym = p.balance.symbol
        checkRate(worker_pay_rate, sym, "worker")
        checkRate(dispatcher_pay_rate, sym, "dispatcher")
        p.title = title
        p.datadir = datadir
        p.worker_pay_rate = worker_pay_rate
        p.dispatcher_pay_rate = dispatcher_pay_rate
        protocols.update(p, SAME_PAYER)
    }

    /** A deposit: a transfer to this contract, memo "OWNER/PROTOCOL", of the protocol's token and symbol. */
    @action("transfer", notify)
    transfer(): void {
        const t = unpackActionData<TokenTransfer>()
        if (t.from == this.receiver || t.to != this.receiver) return  // our own payouts, or not to us
        const memo = t.memo
        const slash = memo.indexOf("/")
        check(slash > 0, "deposit memo must be OWNER/PROTOCOL")
        const owner = memoName(memo.substring(0, slash), "owner")
        const name = memoName(memo.substring(slash + 1), "protocol")
        const protocols = this.protocols(owner)
        const p = protocols.requireGet(name.N, "deposit for an unknown protocol")
        check(this.firstReceiver == p.tokencontract, "deposit from a token contract other than the protocol's")
        check(t.quantity.isValid() && t.quantity.symbol.value == p.balance.symbol.value,
            "deposit symbol must be the protocol's symbol")
        check(t.quantity.amount > 0, "deposit must be positive")
        const add = amountOf(t.quantity)
        p.deposited = money(addAmount(amountOf(p.deposited), add, "deposited"), p.balance.symbol)
        p.balance = money(addAmount(amountOf(p.balance), add, "balance"), p.balance.symbol)
        protocols.update(p, SAME_PAYER)
    }

    /**
     * Recorded work becomes owed money (inline from clusterjobs::recordbatch only): each contributor's time
     * at the protocol's current rate for `type`, with their carry.
     */
    @action("credit")
    credit(owner: Name, name: Name, type: string, credits: TimeCredit[]): void {
        const config = this.configTable.requireGet(0, "jobs contract not connected: run conntojobs first")
        requireAuth(config.jobs_contract)
        check(getSender() == config.jobs_contract, "credit may only be sent by the jobs contract")
        check(type == TYPE_WORKER || type == TYPE_DISPATCHER, "type must be \"worker\" or \"dispatcher\"")
        const protocols = this.protocols(owner)
        const p = protocols.requireGet(name.N, "unknown protocol")
        check(p.accepted, "the researcher has not accepted the protocol")
        const rate = type == TYPE_WORKER ? p.worker_pay_rate : p.dispatcher_pay_rate
        const sym = p.balance.symbol
        const accts = new TableStore<Acct>(this.receiver, new Name(p.id))
        let owed = amountOf(p.owed)
        for (let i = 0; i < credits.length; i++) {
            const c = credits[i]
            let a = accts.get(c.account.N)
            const isNew = a == null
            if (isNew) a = new Acct(c.account, money(0, sym), money(0, sym), 0)
            const r = computeCredit(c.time, amountOf(rate), a!.carry)
            a!.owed = money(addAmount(amountOf(a!.owed), r.amount, "owed"), sym)
            a!.carry = r.carry
            owed = addAmount(owed, r.amount, "owed")
            if (isNew) accts.store(a!, this.receiver)
            else accts.update(a!, SAME_PAYER)
        }
        // recorded work consumes the reservation made for it: owed + reserved stays what it was (or the
        // reservation is used up), so a withdrawal still leaves what running jobs can owe
        const credited = owed - amountOf(p.owed)
        const reserved = amountOf(p.reserved)
        p.reserved = money(reserved > credited ? reserved - credited : 0, sym)
        p.owed = money(owed, sym)
        protocols.update(p, SAME_PAYER)
    }

    /**
     * The operator SETS (not adds) the escrow kept from withdrawal for what the protocol's running jobs can
     * still owe: repeats and crashes converge. Refused above the free escrow (balance - owed): a reservation
     * never pretends to hold money that is not there. Moves no token; only limits `withdraw`.
     */
    @action("reserve")
    reserve(owner: Name, name: Name, quantity: Asset): void {
        const config = this.configTable.requireGet(0, "jobs contract not connected: run conntojobs first")
        requireAuth(config.operator)
        const protocols = this.protocols(owner)
        const p = protocols.requireGet(name.N, "unknown protocol")
        const sym = p.balance.symbol
        check(quantity.isValid() && quantity.symbol.value == sym.value, "quantity symbol must be the protocol's symbol")
        check(quantity.amount >= 0, "reservation must not be negative")
        const want = amountOf(quantity)
        const balance = amountOf(p.balance)
        const owed = amountOf(p.owed)
        const free: u64 = balance > owed ? balance - owed : 0
        check(want <= free, "reservation exceeds the free escrow (balance - owed)")
        p.reserved = quantity
        protocols.update(p, SAME_PAYER)
    }

    /**
     * Pay `contributor` everything the protocol owes them, from its balance, or nothing: "escrow too low"
     * says by how much the balance is short. Signed by the contributor or the operator.
     */
    @action("payout")
    payout(owner: Name, name: Name, contributor: Name): void {
        const config = this.configTable.requireGet(0, "jobs contract not connected: run conntojobs first")
        check(hasAuth(contributor) || hasAuth(config.operator),
            `missing authority of ${contributor.toString()} (contributor) or of the operator`)
        const protocols = this.protocols(owner)
        const p = protocols.requireGet(name.N, "unknown protocol")
        const accts = new TableStore<Acct>(this.receiver, new Name(p.id))
        const a = accts.requireGet(contributor.N, "nothing to pay")
        const due = amountOf(a.owed)
        check(due > 0, "nothing to pay")
        const balance = amountOf(p.balance)
        check(due <= balance, `escrow too low: owes ${money(due, p.balance.symbol).toString()}, ` +
            `holds ${p.balance.toString()}, short by ${money(due - balance, p.balance.symbol).toString()}`)
        const sym = p.balance.symbol
        a.owed = money(0, sym)
        a.paid = money(addAmount(amountOf(a.paid), due, "paid"), sym)
        accts.update(a, SAME_PAYER)
        p.balance = money(balance - due, sym)
        p.owed = money(amountOf(p.owed) - due, sym)
        p.paid = money(addAmount(amountOf(p.paid), due, "paid"), sym)
        protocols.update(p, SAME_PAYER)
        sendTransfer(p.tokencontract, this.receiver, contributor, money(due, sym),
            "boid cluster payout " + owner.toString() + "/" + name.toString())
    }

    /** The owner takes back escrow nobody is owed nor reserved for running jobs: quantity <= balance - owed - reserved. */
    @action("withdraw")
    withdraw(owner: Name, name: Name, quantity: Asset): void {
        requireAuth(owner)
        const protocols = this.protocols(owner)
        const p = protocols.requireGet(name.N, "unknown protocol")
        const sym = p.balance.symbol
        check(quantity.isValid() && quantity.symbol.value == sym.value, "quantity symbol must be the protocol's symbol")
        check(quantity.amount > 0, "quantity must be positive")
        const want = amountOf(quantity)
        const balance = amountOf(p.balance)
        const owed = amountOf(p.owed)
        const reserved = amountOf(p.reserved)
        const kept = owed + reserved  // both <= balance <= 2^62 - 1 when set: no overflow
        const free: u64 = balance > kept ? balance - kept : 0
        check(want <= free, `withdraw exceeds the free escrow: ${money(free, sym).toString()} is neither owed ` +
            `nor reserved for running jobs`)
        p.balance = money(balance - want, sym)
        p.withdrawn = money(addAmount(amountOf(p.withdrawn), want, "withdrawn"), sym)
        protocols.update(p, SAME_PAYER)
        sendTransfer(p.tokencontract, this.receiver, owner, quantity,
            "boid cluster withdrawal " + owner.toString() + "/" + name.toString())
    }

    /** Only when nothing is owed and the escrow is empty, so no promise or token is lost with the row. */
    @action("delprotocol")
    delprotocol(owner: Name, name: Name): void {
        requireAuth(owner)
        const protocols = this.protocols(owner)
        const p = protocols.requireGet(name.N, "unknown protocol")
        check(p.owed.amount == 0, "protocol owes contributors: pay them first")
        check(p.balance.amount == 0, "protocol escrow is not empty: withdraw it first")
        protocols.remove(p)
    }
}
