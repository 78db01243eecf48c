/**
 * clusterjobs: contributors (workers, dispatchers), the time they contribute per researcher, and payouts.
 *
 * Why it is shaped so (contracts/README.md lists every fix to the seed):
 * - Every work unit is a row keyed by a unique unit id (`job`, `dptchlog`), so the operator can retry a
 *   recording after a crash: a second attempt asserts "unit already recorded" instead of counting twice.
 * - Time is only ever moved, never dropped: removejob subtracts exactly what the unit credited, delworker
 *   refuses while time is unpaid, and payout lowers unpaid_time by exactly the time the tokens pay for.
 * - Authority is checked on every action: the contract itself connects the registry and names the
 *   operator; researcher or operator registers contributors; only the operator records time; only the
 *   protocol's fund account starts a payout. Money moves only through clusterreg (inline `payout`).
 * - Plain multi-index tables (no vRAM), so any Antelope node serves them through get_table_rows.
 */
import {
    Contract, Name, check, requireAuth, hasAuth, isAccount, TableStore, SAME_PAYER, EMPTY_NAME,
    InlineAction, ActionData, PermissionLevel,
} from "proton-tsc"
import { Reg, Worker, Dispatcher, Job, DptchLog, RegistryProtocol } from "./clusterjobs.tables"
import { computePayment } from "../common/payment"

const TYPE_WORKER = "worker"
const TYPE_DISPATCHER = "dispatcher"

/** Data of clusterreg::payout (field order is that action's ABI). */
@packer
class RegistryPayout extends ActionData {
    constructor(
        public owner: Name = EMPTY_NAME,
        public researcher: Name = EMPTY_NAME,
        public worker: Name = EMPTY_NAME,
        public unpaid_time: u64 = 0,
        public type: string = ""
    ) { super() }
}

function addTime(a: u64, b: u64): u64 {
    check(a <= U64.MAX_VALUE - b, "time overflow")
    return a + b
}

@contract
class ClusterJobs extends Contract {
    regTable: TableStore<Reg> = new TableStore<Reg>(this.receiver, this.receiver)

    private requireReg(): Reg {
        return this.regTable.requireGet(0, "registry not connected: run conntoreg first")
    }

    /** The researcher or the configured operator must sign; returns who signed (pays the RAM). */
    private requireResearcherOrOperator(researcher: Name): Name {
        if (hasAuth(researcher)) return researcher
        const reg = this.regTable.get(0)
        check(reg != null && hasAuth(reg!.operator),
            `missing authority of ${researcher.toString()} (researcher) or of the operator`)
        return reg!.operator
    }

    /** Only the configured operator may record or retract time. */
    private requireOperator(): Name {
        const reg = this.requireReg()
        check(hasAuth(reg.operator), `missing authority of ${reg.operator.toString()} (operator)`)
        return reg.operator
    }

    @action("conntoreg")
    conntoreg(registry_contract: Name, operator: Name): void {
        requireAuth(this.receiver)
        check(isAccount(registry_contract), "registry contract account does not exist")
        check(isAccount(operator), "operator account does not exist")
        this.regTable.set(new Reg(registry_contract, operator), this.receiver)
    }

    @action("regworker")
    regworker(worker: Name, researcher: Name): void {
        const payer = this.requireResearcherOrOperator(researcher)
        check(isAccount(worker), "worker account does not exist")
        const table = new TableStore<Worker>(this.receiver, worker)
        check(!table.exists(researcher.N), "worker already registered")
        table.store(new Worker(researcher, 0, 0), payer)
    }

    @action("delworker")
    delworker(worker: Name, researcher: Name): void {
        this.requireResearcherOrOperator(researcher)
        const table = new TableStore<Worker>(this.receiver, worker)
        const row = table.requireGet(researcher.N, "worker not registered")
        check(row.unpaid_time == 0, "worker has unpaid time")
        table.remove(row)
    }

    @action("regdisptch")
    regdisptch(dispatcher: Name, researcher: Name): void {
        const payer = this.requireResearcherOrOperator(researcher)
        check(isAccount(dispatcher), "dispatcher account does not exist")
        const table = new TableStore<Dispatcher>(this.receiver, dispatcher)
        check(!table.exists(researcher.N), "dispatcher already registered")
        table.store(new Dispatcher(researcher, 0, 0), payer)
    }

    @action("deldisptch")
    deldisptch(dispatcher: Name, researcher: Name): void {
        this.requireResearcherOrOperator(researcher)
        const table = new TableStore<Dispatcher>(this.receiver, dispatcher)
        const row = table.requireGet(researcher.N, "dispatcher not registered")
        check(row.unpaid_time == 0, "dispatcher has unpaid time")
        table.remove(row)
    }

    @action("newjob")
    newjob(researcher: Name, worker: Name, id: u64, time: u64): void {
        const operator = this.requireOperator()
        const workers = new TableStore<Worker>(this.receiver, worker)
        const w = workers.requireGet(researcher.N, "worker not registered")
        const jobs = new TableStore<Job>(this.receiver, researcher)
        check(!jobs.exists(id), "unit already recorded")
        w.total_time = addTime(w.total_time, time)
        w.unpaid_time = addTime(w.unpaid_time, time)
        workers.update(w, SAME_PAYER)
        jobs.store(new Job(id, worker, time), operator)
    }

    @action("removejob")
    removejob(researcher: Name, worker: Name, id: u64): void {
        this.requireOperator()
        const jobs = new TableStore<Job>(this.receiver, researcher)
        const job = jobs.requireGet(id, "unit not recorded")
        check(job.worker == worker, "unit was recorded for another worker")
        const workers = new TableStore<Worker>(this.receiver, worker)
        const w = workers.requireGet(researcher.N, "worker not registered")
        check(w.unpaid_time >= job.time, "job time already paid out")
        w.total_time -= job.time   // total_time >= unpaid_time >= job.time
        w.unpaid_time -= job.time
        workers.update(w, SAME_PAYER)
        jobs.remove(job)
    }

    @action("updatedptch")
    updatedptch(researcher: Name, dispatcher: Name, id: u64, time: u64): void {
        const operator = this.requireOperator()
        const dispatchers = new TableStore<Dispatcher>(this.receiver, dispatcher)
        const d = dispatchers.requireGet(researcher.N, "dispatcher not registered")
        const log = new TableStore<DptchLog>(this.receiver, researcher)
        check(!log.exists(id), "unit already recorded")
        d.total_time = addTime(d.total_time, time)
        d.unpaid_time = addTime(d.unpaid_time, time)
        dispatchers.update(d, SAME_PAYER)
        log.store(new DptchLog(id, dispatcher, time), operator)
    }

    @action("payout")
    payout(owner: Name, funder: Name, researcher: Name, contributor: Name, type: string): void {
        requireAuth(funder)
        check(type == TYPE_WORKER || type == TYPE_DISPATCHER, "type must be \"worker\" or \"dispatcher\"")
        const reg = this.requireReg()
        const protocols = new TableStore<RegistryProtocol>(reg.registry_contract, owner)
        const p = protocols.requireGet(researcher.N, "unknown protocol")
        check(funder == p.fundaccount, "funder is not the protocol's fund account")

        let unpaid: u64 = 0
        let rate: i64 = 0
        if (type == TYPE_WORKER) {
            const workers = new TableStore<Worker>(this.receiver, contributor)
            const w = workers.requireGet(researcher.N, "worker not registered")
            unpaid = w.unpaid_time
            rate = p.worker_pay_rate.amount
        } else {
            const dispatchers = new TableStore<Dispatcher>(this.receiver, contributor)
            const d = dispatchers.requireGet(researcher.N, "dispatcher not registered")
            unpaid = d.unpaid_time
            rate = p.dispatcher_pay_rate.amount
        }
        check(rate >= 0, "negative pay rate")
        const pay = computePayment(unpaid, <u64>rate)
        check(pay.amount > 0, "nothing to pay")

        // Lower unpaid time by exactly the time the amount pays for; the sub-unit remainder stays.
        if (type == TYPE_WORKER) {
            const workers = new TableStore<Worker>(this.receiver, contributor)
            const w = workers.requireGet(researcher.N, "worker not registered")
            w.unpaid_time -= pay.timePaid
            workers.update(w, SAME_PAYER)
        } else {
            const dispatchers = new TableStore<Dispatcher>(this.receiver, contributor)
            const d = dispatchers.requireGet(researcher.N, "dispatcher not registered")
            d.unpaid_time -= pay.timePaid
            dispatchers.update(d, SAME_PAYER)
        }

        // clusterreg recomputes the same amount from the same time and rate, checks and lowers the
        // fund and transfers; if it fails, this whole transaction (and the change above) reverts.
        new InlineAction<RegistryPayout>("payout")
            .act(reg.registry_contract, new PermissionLevel(this.receiver))
            .send(new RegistryPayout(owner, researcher, contributor, pay.timePaid, type))
    }
}
