/**
 * When to renew, and how long to wait after a failure. Pure functions of their inputs (the random source is a
 * parameter), so the schedule is testable without time passing.
 *
 * Renewal: at NotBefore + (1 − r) × lifetime, where r is the grace ratio (the fraction of the lifetime left at renewal,
 * default 0.5) plus or minus a random fraction of the jitter, clamped to [0, 1]. With the defaults (0.5 ± 0.01 of 24 h)
 * a fleet issued at the same moment spreads its renewals over about ±15 minutes instead of hitting the CA at once.
 *
 * Failures: capped exponential backoff with jitter, and no attempt limit: the original node agent exited after five
 * retries and a VM whose CA was down for longer stayed without a certificate until someone restarted it.
 */

/** A source of uniform random numbers in [0, 1). */
export type Random = () => number;

export interface RenewalPolicy {
  /** Fraction of the lifetime left when renewing (SECRET_GRACE_PERIOD_RATIO). */
  readonly graceRatio: number;
  /** Random ± on the ratio (SECRET_GRACE_PERIOD_RATIO_JITTER). */
  readonly graceJitter: number;
}

export interface Validity {
  readonly notBefore: number;
  readonly notAfter: number;
}

export function effectiveGraceRatio(policy: RenewalPolicy, random: Random): number {
  const r = policy.graceRatio + (2 * random() - 1) * policy.graceJitter;
  return Math.min(1, Math.max(0, r));
}

/** The time (ms since the epoch) at which to renew a certificate with this validity. */
export function nextRenewalAt(validity: Validity, policy: RenewalPolicy, random: Random): number {
  const lifetime = Math.max(0, validity.notAfter - validity.notBefore);
  return validity.notBefore + Math.round((1 - effectiveGraceRatio(policy, random)) * lifetime);
}

/** How long to sleep from `now` until `at`, never negative. */
export function delayUntil(at: number, now: number): number {
  return Math.max(0, at - now);
}

export interface BackoffPolicy {
  /** Delay after the first failure. */
  readonly initialMs: number;
  /** Upper bound of the un-jittered delay. */
  readonly maxMs: number;
  /** Relative jitter: the delay is multiplied by a random factor in [1 − jitter, 1 + jitter]. */
  readonly jitter: number;
}

export const DEFAULT_BACKOFF: BackoffPolicy = { initialMs: 1000, maxMs: 120_000, jitter: 0.2 };

/**
 * The delay before retry number `failures` (1 after the first failure). Grows 2× per failure up to `maxMs`; there is
 * no last attempt.
 */
export function backoffDelay(failures: number, policy: BackoffPolicy, random: Random): number {
  const exponent = Math.max(0, failures - 1);
  // 2^exponent overflows to Infinity for large counts; the cap keeps the result finite.
  const base = Math.min(policy.maxMs, policy.initialMs * 2 ** Math.min(exponent, 1024));
  const factor = 1 + (2 * random() - 1) * policy.jitter;
  return Math.max(0, Math.round(base * factor));
}

/** The longest any single backoff step can be under this policy. */
export function maxBackoffStep(policy: BackoffPolicy): number {
  return Math.ceil(policy.maxMs * (1 + policy.jitter));
}
