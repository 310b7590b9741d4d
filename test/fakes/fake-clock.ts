/**
 * A Clock whose time moves only when the test says so. `sleep` registers a timer; `advanceTo`/`advance` move time and
 * wake the sleepers that are due, in deadline order. `nextTimer` waits (in real time, on microtasks and I/O) until code
 * under test is asleep, so a test can step a loop that also does real I/O between its sleeps.
 */
import type { Clock } from "../../src/platform/clock.js";

interface Sleeper {
  readonly at: number;
  readonly resolve: () => void;
}

export class FakeClock implements Clock {
  #now: number;
  #sleepers: Sleeper[] = [];
  #waiters: (() => void)[] = [];

  constructor(start = Date.UTC(2026, 0, 1)) {
    this.#now = start;
  }

  now(): number {
    return this.#now;
  }

  monotonic(): number {
    return this.#now;
  }

  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      if (signal?.aborted === true) {
        reject(signal.reason as Error);
        return;
      }
      const sleeper: Sleeper = {
        at: this.#now + Math.max(0, ms),
        resolve: () => {
          signal?.removeEventListener("abort", onAbort);
          resolve();
        },
      };
      const onAbort = (): void => {
        this.#sleepers = this.#sleepers.filter((s) => s !== sleeper);
        reject(signal?.reason as Error);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#sleepers.push(sleeper);
      const waiters = this.#waiters;
      this.#waiters = [];
      for (const wake of waiters) wake();
    });
  }

  /** Number of pending sleeps. */
  get pending(): number {
    return this.#sleepers.length;
  }

  /**
   * Resolves with the earliest pending deadline once something is asleep. Rejects after `timeoutMs` of real time, so
   * a loop that stopped sleeping fails the test instead of hanging it.
   */
  async nextTimer(timeoutMs = 15_000): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    while (this.#sleepers.length === 0) {
      if (Date.now() > deadline) throw new Error("FakeClock: nothing went to sleep in time");
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 50);
        this.#waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    return Math.min(...this.#sleepers.map((s) => s.at));
  }

  /** Moves time to `time` (never backwards) and wakes every sleeper due by then. */
  advanceTo(time: number): void {
    this.#now = Math.max(this.#now, time);
    const due = this.#sleepers.filter((s) => s.at <= this.#now).sort((a, b) => a.at - b.at);
    this.#sleepers = this.#sleepers.filter((s) => s.at > this.#now);
    for (const sleeper of due) sleeper.resolve();
  }

  advance(ms: number): void {
    this.advanceTo(this.#now + ms);
  }

  /** Waits for the next sleep and jumps to its deadline; returns that time. */
  async runToNextTimer(timeoutMs?: number): Promise<number> {
    const at = await this.nextTimer(timeoutMs);
    this.advanceTo(at);
    return at;
  }
}
