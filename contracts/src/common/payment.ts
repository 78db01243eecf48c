/**
 * Pay arithmetic shared by clusterjobs and clusterreg.
 *
 * Why it is shaped so: money is integer asset units, never floats. A pay rate is an asset per hour of
 * contributed time and time is in microseconds, so the amount owed is floor(time * rate / H) with
 * H = 3_600_000_000. time (u64) * rate (< 2^62) needs up to 126 bits, so the product is formed as a
 * 128-bit value from 32-bit limbs and divided by H (< 2^32) by schoolbook long division on 32-bit limbs:
 * every step stays inside u64 and is exact. Both contracts call the same function, so the jobs contract
 * knows exactly how much time the registry will pay for.
 */
import { check } from "proton-tsc"

/** Microseconds per hour: pay rates are "asset per hour". */
export const MICROS_PER_HOUR: u64 = 3_600_000_000

/** Largest asset amount allowed by eosio (2^62 - 1). */
export const MAX_ASSET_AMOUNT: u64 = (<u64>1 << 62) - 1

const LO32: u64 = 0xFFFFFFFF

export class Payment {
    constructor(
        /** floor(time * rate / H), in the smallest token unit. */
        public amount: u64 = 0,
        /**
         * The time this amount pays for: the least whole number of microseconds whose value is at
         * least `amount`. Always <= the time offered. What is left over is worth less than one
         * smallest token unit and stays unpaid, so it is never lost.
         */
        public timePaid: u64 = 0
    ) {}
}

/**
 * Amount owed for `time` microseconds at `rate` smallest units per hour, and the time it pays for.
 * Asserts "payout amount overflow" if the amount would not fit in an asset.
 */
export function computePayment(time: u64, rate: u64): Payment {
    check(rate <= MAX_ASSET_AMOUNT, "pay rate out of range")
    if (time == 0 || rate == 0) return new Payment(0, 0)

    // 64 x 64 -> 128-bit product (hi, lo) from 32-bit limbs.
    const a0 = time & LO32, a1 = time >> 32
    const b0 = rate & LO32, b1 = rate >> 32
    const p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1
    const mid = (p00 >> 32) + (p01 & LO32) + (p10 & LO32)   // < 3 * 2^32, no overflow
    const lo = (mid << 32) | (p00 & LO32)
    const hi = p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32) // < 2^64 since the product < 2^128

    // (hi, lo) / H by long division on 32-bit limbs; the running remainder stays < H < 2^32.
    const d = MICROS_PER_HOUR
    let r: u64 = 0
    let cur: u64 = r << 32 | (hi >> 32)
    const q3 = cur / d; r = cur % d
    cur = r << 32 | (hi & LO32)
    const q2 = cur / d; r = cur % d
    cur = r << 32 | (lo >> 32)
    const q1 = cur / d; r = cur % d
    cur = r << 32 | (lo & LO32)
    const q0 = cur / d; r = cur % d
    // q3 and q2 are each < 2^32 here; the quotient is q3:q2:q1:q0 in 32-bit limbs.
    check(q3 == 0 && q2 == 0 && q1 <= LO32, "payout amount overflow")
    const amount = (q1 << 32) | q0
    check(amount <= MAX_ASSET_AMOUNT, "payout amount overflow")

    // time * rate = amount * H + r with 0 <= r < H. The least t' with t' * rate >= amount * H is
    // time - floor(r / rate): pay for exactly that much time, keep the rest unpaid.
    const timePaid = time - r / rate
    return new Payment(amount, timePaid)
}
