/**
 * clusterjobs: contributors (workers, dispatchers) of each protocol and the time they contributed, recorded
 * in numbered batches.
 *
 * Why it is shaped so (contracts/README.md lists every interface change):
 * - Everything is keyed by the protocol (its id in clusterreg, which is (owner, name)), never by the
 *   researcher alone, so one researcher's sponsors never share time.
 * - Exactly-once recording with bounded RAM: `recordbatch(owner, protocol, seq, type, units)` carries the
 *   units and their times in the action data (the transaction history stays auditable) and must be the
 *   protocol's last batch number + 1, so a replay of a batch (in the same or a later transaction) is refused,
 *   while the only rows it touches are one per protocol and one per contributor.
 * - Only the configured operator records; a contributor cannot credit itself. The batch's time per
 *   contributor goes inline to clusterreg::credit, which fixes the pay at the rate in force now; if that
 *   fails, the whole transaction (and the batch number) reverts.
 * - Recorded work is final: there is no action that removes it (the seed's `removejob` is gone), so paid
 *   work can never be undone; the operator's quorum decides before recording.
 */
import {
    Contract, Name, check, requireAuth, hasAuth, isAccount, TableStore, SAME_PAYER, EMPTY_NAME,
    InlineAction, ActionData, PermissionLevel,
} from "proton-tsc"
import { Reg, Worker, Dispatcher, BatchSeq, Unit, RegistryProtocol, RegistryAcct } from "./clusterjobs.tables"

const TYPE_WORKER = "worker"
const TYPE_DISPATCHER = "dispatcher"

/** One entry of clusterreg::credit's `credits` (field order is that action's ABI). */
@packer
class TimeCredit extends ActionData {
    constructor(
        public account: Name = EMPTY_NAME,
        public time: u64 = 0
    ) { super() }
}

/** Data of clusterreg::credit (field order is that action's ABI). */
@packer
class RegistryCredit extends ActionData {
    constructor(
        public owner: Name = EMPTY_NAME,
        public name: Name = EMPTY_NAME,
        public type: string = "",
        public credits: TimeCredit[] = []
    ) { super() }
}

function addTime(a: u64, b: u64): u64 {
    check(a <= U64.MAX_VALUE - b, "time overflow")
    return a + b
}

/** Inline clusterreg::credit with clusterjobs@active (a free function: see clusterreg's sendTransfer). */
function sendCredit(registry: Name, self: Name, data: RegistryCredit): void {
    const credit = new InlineAction<RegistryCredit>("credit")
    const act = credit.act(registry, new PermissionLevel(self))
    act.send(data)
}

@contract
class ClusterJobs extends Contract {
    regTable: TableStore<Reg> = new TableStore<Reg>(this.receiver, this.receiver)
    seqTable: TableStore<BatchSeq> = new TableStore<BatchSeq>(this.receiver, this.receiver)

    private requireReg(): Reg {
        return this.regTable.requireGet(0, "registry not connected: run conntoreg first")
    }

    private protocol(reg: Reg, owner: Name, name: Name): RegistryProtocol {
        const protocols = new TableStore<RegistryProtocol>(reg.registry_contract, owner)
        return protocols.requireGet(name.N, "unknown protocol")
    }

    /** The protocol's researcher or owner, or the operator, must sign; returns who signed (pays the RAM). */
    private requireRegistrar(reg: Reg, p: RegistryProtocol): Name {
        if (hasAuth(p.researcher)) return p.researcher
        if (hasAuth(p.owner)) return p.owner
        check(hasAuth(reg.operator),
            `missing authority of ${p.researcher.toString()} (researcher), ${p.owner.toString()} (owner) or of the operator`)
        return reg.operator
    }

    private owes(reg: Reg, p: RegistryProtocol, account: Name): bool {
        const accts = new TableStore<RegistryAcct>(reg.registry_contract, new Name(p.id))
        const a = accts.get(account.N)
        return a != null && a.owed.amount > 0
    }

    @action("conntoreg")
    conntoreg(registry_contract: Name, operator: Name): void {
        requireAuth(this.receiver)
        check(isAccount(registry_contract), "registry contract account does not exist")
        check(isAccount(operator), "operator account does not exist")
        this.regTable.set(new Reg(registry_contract, operator), this.receiver)
    }

    @action("regworker")
    regworker(worker: Name, owner: Name, protocol: Name): void {
        const reg = this.requireReg()
        const p = this.protocol(reg, owner, protocol)
        const payer = this.requireRegistrar(reg, p)
        check(isAccount(worker), "worker account does not exist")
        const table = new TableStore<Worker>(this.receiver, new Name(p.id))
        check(!table.exists(worker.N), "worker already registered")
        table.store(new Worker(worker, 0), payer)
    }

    @action("delworker")
    delworker(worker: Name, owner: Name, protocol: Name): void {
        const reg = this.requireReg()
        const p = this.protocol(reg, owner, protocol)
        this.requireRegistrar(reg, p)
        const table = new TableStore<Worker>(this.receiver, new Name(p.id))
        const row = table.requireGet(worker.N, "worker not registered")
        check(!this.owes(reg, p, worker), "worker is owed pay")
        table.remove(row)
    }

    @action("regdisptch")
    regdisptch(dispatcher: Name, owner: Name, protocol: Name): void {
        const reg = this.requireReg()
        const p = this.protocol(reg, owner, protocol)
        const payer = this.requireRegistrar(reg, p)
        check(isAccount(dispatcher), "dispatcher account does not exist")
        const table = new TableStore<Dispatcher>(this.receiver, new Name(p.id))
        check(!table.exists(dispatcher.N), "dispatcher already registered")
        table.store(new Dispatcher(dispatcher, 0), payer)
    }

    @action("deldisptch")
    deldisptch(dispatcher: Name, owner: Name, protocol: Name): void {
        const reg = this.requireReg()
        const p = this.protocol(reg, owner, protocol)
        this.requireRegistrar(reg, p)
        const table = new TableStore<Dispatcher>(this.receiver, new Name(p.id))
        const row = table.requireGet(dispatcher.N, "dispatcher not registered")
        check(!this.owes(reg, p, dispatcher), "dispatcher is owed pay")
        table.remove(row)
    }

    /**
     * Record batch `seq` (= the protocol's last + 1) of `type` ("worker" or "dispatcher") units: every
     * contributor must be registered in that role, unit ids strictly increase; each contributor's time is
     * added to its total and credited (inline clusterreg::credit) at the rate in force now.
     */
    @action("recordbatch")
    recordbatch(owner: Name, protocol: Name, seq: u64, type: string, units: Unit[]): void {
        const reg = this.requireReg()
        check(hasAuth(reg.operator), `missing authority of ${reg.operator.toString()} (operator)`)
        check(type == TYPE_WORKER || type == TYPE_DISPATCHER, "type must be \"worker\" or \"dispatcher\"")
        check(units.length > 0, "empty batch")
        const p = this.protocol(reg, owner, protocol)
        check(p.accepted, "the researcher has not accepted the protocol")

        let s = this.seqTable.get(p.id)
        const isNew = s == null
        if (isNew) s = new BatchSeq(p.id, owner, protocol, 0, 0, 0, 0)
        check(seq == s!.seq + 1, `batch out of sequence: expected ${(s!.seq + 1).toString()}`)

        // sum time per contributor (few per batch: a linear search is cheapest)
        const who = new Array<Name>()
        const time = new Array<u64>()
        let total: u64 = 0
        let lastId: u64 = 0
        for (let i = 0; i < units.length; i++) {
            const u = units[i]
            check(i == 0 || u.id > lastId, "unit ids must strictly increase in a batch")
            lastId = u.id
            total = addTime(total, u.time)
            let k = 0
            while (k < who.length && who[k] != u.contributor) k++
            if (k == who.length) {
                who.push(u.contributor)
                time.push(u.time)
            } else {
                time[k] = addTime(time[k], u.time)
            }
        }

        const scope = new Name(p.id)
        const credits = new Array<TimeCredit>()
        for (let k = 0; k < who.length; k++) {
            if (type == TYPE_WORKER) {
                const workers = new TableStore<Worker>(this.receiver, scope)
                const w = workers.requireGet(who[k].N, `worker not registered: ${who[k].toString()}`)
                w.total_time = addTime(w.total_time, time[k])
                workers.update(w, SAME_PAYER)
            } else {
                const dispatchers = new TableStore<Dispatcher>(this.receiver, scope)
                const d = dispatchers.requireGet(who[k].N, `dispatcher not registered: ${who[k].toString()}`)
                d.total_time = addTime(d.total_time, time[k])
                dispatchers.update(d, SAME_PAYER)
            }
            credits.push(new TimeCredit(who[k], time[k]))
        }

        s!.seq = seq
        s!.units = addTime(s!.units, <u64>units.length)
        if (type == TYPE_WORKER) s!.worker_time = addTime(s!.worker_time, total)
        else s!.dispatcher_time = addTime(s!.dispatcher_time, total)
        if (isNew) this.seqTable.store(s!, reg.operator)
        else this.seqTable.update(s!, SAME_PAYER)

        sendCredit(reg.registry_contract, this.receiver, new RegistryCredit(owner, protocol, type, credits))
    }
}
