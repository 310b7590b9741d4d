/**
 * When to try Envoy again after an epoch died with an error, and when to give up (pure). pilot-agent retried after
 * 200 ms × 2^n with a budget of 10; here the delay is capped, and the budget counts failures within a sliding window,
 * so an Envoy that crashes once a day never exhausts it while a crash loop does within minutes. Giving up makes the
 * agent exit non-zero, and systemd's Restart= takes over from there.
 */
export interface RestartPolicy {
  readonly baseDelayMs: number;
  readonly maxDelayMs: number;
  /** Failures within `windowMs` that make the supervisor give up. */
  readonly budget: number;
  readonly windowMs: number;
}

export const DEFAULT_RESTART_POLICY: RestartPolicy = {
  baseDelayMs: 200,
  maxDelayMs: 30_000,
  budget: 10,
  windowMs: 10 * 60_000,
};

/** Failure times still inside the window that ends at `now`. */
export function recentFailures(policy: RestartPolicy, failures: readonly number[], now: number): number[] {
  return failures.filter((t) => now - t < policy.windowMs);
}

/**
 * The decision after a failure at `now` (already included in `failures`): the delay before the next attempt, or
 * `undefined` when the budget is spent.
 */
export function nextRestart(
  policy: RestartPolicy,
  failures: readonly number[],
  now: number,
): { readonly delayMs: number; readonly attempt: number } | undefined {
  const recent = recentFailures(policy, failures, now).length;
  if (recent >= policy.budget) return undefined;
  const exponent = Math.max(0, recent - 1);
  return { delayMs: Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** exponent), attempt: recent };
}
