/** Time as a port, so schedules (renewal, backoff, watchdog) are testable with a fake clock. */
export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
  /** Resolves after `ms`, or rejects with the signal's reason when it aborts first. */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
  /** Monotonic milliseconds, for measuring durations. */
  monotonic(): number;
}

/**
 * The longest delay a Node timer takes: a longer one (a renewal months away) fires after 1 ms instead, with a
 * TimeoutOverflowWarning (Node's lib/internal/timers.js, TIMEOUT_MAX = 2^31 - 1), so `sleep` waits in steps of at most
 * this. Without that an agent holding a year-long certificate spun on its renewal timer.
 */
export const MAX_TIMER_MS = 2 ** 31 - 1;

function timer(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    if (signal?.aborted === true) {
      reject(signal.reason as Error);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(handle);
      reject(signal?.reason as Error);
    };
    const handle = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

export const systemClock: Clock = {
  now: () => Date.now(),
  monotonic: () => performance.now(),
  sleep: async (ms, signal) => {
    let left = ms;
    do {
      const step = Math.min(left, MAX_TIMER_MS);
      await timer(step, signal);
      left -= step;
    } while (left > 0);
  },
};
