/**
 * Time as a port, so schedules (renewal, backoff, debounce, watchdog) are testable with a fake clock.
 *
 * The contract: `sleep` honours any duration. Node's `setTimeout` does not: above 2^31−1 ms (~24.8 days) it fires
 * after 1 ms with only a TimeoutOverflowWarning (Node.js `lib/internal/timers.js`, `TIMEOUT_MAX`), and a renewal
 * loop for a 90-day certificate would spin. So a Clock is built over a `TimerHost` whose single timers are limited
 * to `MAX_TIMER_DELAY_MS`, and `sleep` splits longer waits into such timers. The real host (`nodeTimers`) and the
 * fake one (test/fakes/fake-clock.ts) both refuse a delay above the limit with a RangeError, so a wait that reached
 * a timer unsplit fails loudly in tests instead of firing early in production. No code outside src/platform (and
 * the dev control plane) calls `setTimeout`/`setInterval` itself: an eslint rule enforces it.
 */

/** The longest delay one Node timer honours (2^31−1 ms, ~24.8 days). */
export const MAX_TIMER_DELAY_MS = 2 ** 31 - 1;

export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
  /**
   * Resolves after `ms` (any duration: 90 days really waits 90 days; ≤ 0 waits one turn of the timer queue), or
   * rejects with the signal's reason when it aborts first. NaN is a bug in the caller: RangeError.
   */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
  /** Monotonic milliseconds, for measuring durations. */
  monotonic(): number;
}

/** One-shot timers as the runtime offers them: a delay above `MAX_TIMER_DELAY_MS` cannot be honoured. */
export interface TimerHost {
  now(): number;
  monotonic(): number;
  /** Calls `fire` once after `ms` (an integer, 0 ≤ ms ≤ MAX_TIMER_DELAY_MS; else RangeError); returns a cancel. */
  setTimer(ms: number, fire: () => void): () => void;
}

/** Throws the RangeError a TimerHost raises for a delay its timer could not honour. */
export function assertTimerDelay(ms: number): void {
  if (!Number.isInteger(ms) || ms < 0 || ms > MAX_TIMER_DELAY_MS) {
    throw new RangeError(
      `timer delay ${String(ms)} ms is outside 0…${MAX_TIMER_DELAY_MS} ms (setTimeout would fire after 1 ms): ` +
        "wait through Clock.sleep, which splits long waits",
    );
  }
}

/** A delay for a one-shot platform timer (a request deadline and the like): clamped to what the timer honours. */
export function timerDelay(ms: number): number {
  if (Number.isNaN(ms)) return MAX_TIMER_DELAY_MS;
  return Math.min(MAX_TIMER_DELAY_MS, Math.max(0, Math.ceil(ms)));
}

/** A Clock over a TimerHost: `sleep` waits in steps of at most MAX_TIMER_DELAY_MS until the whole delay passed. */
export function clockOn(host: TimerHost): Clock {
  return {
    now: () => host.now(),
    monotonic: () => host.monotonic(),
    sleep: (ms, signal) =>
      new Promise<void>((resolve, reject) => {
        if (Number.isNaN(ms)) {
          reject(new RangeError("Clock.sleep: the delay is NaN"));
          return;
        }
        if (signal?.aborted === true) {
          reject(signal.reason as Error);
          return;
        }
        let remaining = Math.max(0, Math.ceil(ms));
        let cancel: () => void = () => undefined;
        const onAbort = (): void => {
          cancel();
          reject(signal?.reason as Error);
        };
        const arm = (): void => {
          const step = Math.min(remaining, MAX_TIMER_DELAY_MS);
          cancel = host.setTimer(step, () => {
            remaining -= step;
            if (remaining > 0) {
              arm();
              return;
            }
            signal?.removeEventListener("abort", onAbort);
            resolve();
          });
        };
        try {
          arm();
        } catch (error) {
          reject(error instanceof Error ? error : new Error(String(error)));
          return;
        }
        signal?.addEventListener("abort", onAbort, { once: true });
      }),
  };
}

/**
 * Runs `fire` once after `ms` (any duration) unless cancelled: a debounce or a retry as a value instead of a raw
 * timer handle. Returns the cancel function (idempotent).
 */
export function scheduleOnce(clock: Clock, ms: number, fire: () => void): () => void {
  const controller = new AbortController();
  clock.sleep(ms, controller.signal).then(
    () => {
      if (!controller.signal.aborted) fire();
    },
    () => undefined,
  );
  return () => {
    controller.abort();
  };
}

/** The runtime's timers, with the limit made explicit. */
export const nodeTimers: TimerHost = {
  now: () => Date.now(),
  monotonic: () => performance.now(),
  setTimer(ms, fire) {
    assertTimerDelay(ms);
    const timer = setTimeout(fire, ms);
    return () => {
      clearTimeout(timer);
    };
  },
};

export const systemClock: Clock = clockOn(nodeTimers);
