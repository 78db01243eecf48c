/**
 * Pay arithmetic of the registry (clusterreg::credit): time turns into an owed amount when it is recorded.
 *
 * Why it is shaped so: money is integer asset units, never floats. A pay rate is an asset per hour of
 * contributed time and time is in microseconds, so time t at rate r is worth t * r / H token units with
 * H = 3_600_000_000. Each contributor carries the fraction of a unit not yet owed as a numerator `carry`
 * (0 <= carry < H, in units * µs / h): recording owes floor((t * r + carry) / H) and keeps the rest, so over
 * any number of batches a contributor is owed exactly floor(sum of t_i * r_i / H) and nothing is lost to
 * rounding, even across rate changes (the carry is value, not time). t (u64) * r (< 2^62) needs up to 126
 * bits: the product is formed from 32-bit limbs and divided by H (< 2^32) by long division on 32-bit limbs,
 * so every step stays inside u64 and is exact.
 */
import { check } from "proton-tsc"

/** Microseconds per hour: pay rates are "asset per hour". */
export const MICROS_PER_HOUR: u64 = 3_600_000_000

/** Largest asset amount allowed by eosio (2^62 - 1). */
export const MAX_ASSET_AMOUNT: u64 = (<u64>1 << 62) - 1

const LO32: u64 = 0xFFFFFFFF

export class Credit {
    constructor(
        /** floor((time * rate + carry) / H), in the smallest token unit. */
        public amount: u64 = 0,
        /** (time * rate + carry) mod H: the value not yet owed, carried to the contributor's next record. */
        public carry: u64 = 0
    ) {}
}

/**
 * What `time` µs at `rate` smallest units per hour add to a contributor who carries `carry` (< H).
 * Asserts "amount overflow" if the amount would not fit in an asset.
 */
export function computeCredit(time: u64, rate: u64, carry: u64): Credit {
    check(rate <= MAX_ASSET_AMOUNT, "pay rate out of range")
    check(carry < MICROS_PER_HOUR, "carry out of range")

    // 64 x 64 -> 128-bit product (hi, lo) from 32-bit limbs.
    const a0 = time & LO32, a1 = time >> 32
    const b0 = rate & LO32, b1 = rate >> 32
    const p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1
    const mid = (p00 >> 32) + (p01 & LO32) + (p10 & LO32)   // < 3 * 2^32, no overflow
    let lo = (mid << 32) | (p00 & LO32)
    let hi = p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32) // < 2^126 / 2^64, room for the carry
    // + carry (< 2^32)
    const sum = lo + carry
    if (sum < lo) hi += 1
    lo = sum

    // (hi, lo) / H by long division on 32-bit limbs; the running remainder stays < H < 2^32.
    const d = MICROS_PER_HOUR
    let r: u64 = 0
    let cur: u64 = hi >> 32
    const q3 = cur / d; r = cur % d
    cur = r << 32 | (hi & LO32)
    const q2 = cur / d; r = cur % d
    cur = r << 32 | (lo >> 32)
    const q1 = cur / d; r = cur % d
    cur = r << 32 | (lo & LO32)
    const q0 = cur / d; r = cur % d
    check(q3 == 0 && q2 == 0 && q1 <= LO32, "amount overflow")
    const amount = (q1 << 32) | q0
    check(amount <= MAX_ASSET_AMOUNT, "amount overflow")
    return new Credit(amount, r)
}

/** a + b for asset amounts; asserts `what` + " overflow" beyond the largest asset amount. */
export function addAmount(a: u64, b: u64, what: string): u64 {
    check(a <= MAX_ASSET_AMOUNT && b <= MAX_ASSET_AMOUNT - a, what + " overflow")
    return a + b
}
