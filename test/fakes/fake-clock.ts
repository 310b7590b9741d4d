/**
 * A Clock whose time moves only when the test says so. It is the production `clockOn` (src/platform/clock.ts) over a
 * fake TimerHost, so `sleep` splits long waits exactly as the real clock does, and the fake's timers are as limited
 * as Node's: a single timer above MAX_TIMER_DELAY_MS throws a RangeError (Node would fire it after 1 ms). A 90-day
 * sleep is therefore several timers here too, each visible to `nextTimer`.
 *
 * `advanceTo`/`advance` move time and fire the timers that are due, in deadline order (a timer armed while firing
 * fires too when it is due by then). `nextTimer` waits (in real time, on microtasks and I/O) until code under test
 * is asleep, so a test can step a loop that also does real I/O between its sleeps.
 */
import type { Clock, TimerHost } from "../../src/platform/clock.js";
import { assertTimerDelay, clockOn } from "../../src/platform/clock.js";

interface Timer {
  readonly at: number;
  readonly seq: number;
  readonly fire: () => void;
}

export class FakeClock implements Clock, TimerHost {
  #now: number;
  #timers: Timer[] = [];
  #seq = 0;
  #waiters: (() => void)[] = [];
  readonly #clock: Clock;
  /** Every delay handed to a single timer, in order (what the real setTimeout would have been given). */
  readonly delays: number[] = [];

  constructor(start = Date.UTC(2026, 0, 1)) {
    this.#now = start;
    this.#clock = clockOn(this);
  }

  now(): number {
    return this.#now;
  }

  monotonic(): number {
    return this.#now;
  }

  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return this.#clock.sleep(ms, signal);
  }

  /** The raw timer, limited as Node's is. */
  setTimer(ms: number, fire: () => void): () => void {
    assertTimerDelay(ms);
    this.delays.push(ms);
    const timer: Timer = { at: this.#now + ms, seq: this.#seq++, fire };
    this.#timers.push(timer);
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const wake of waiters) wake();
    return () => {
      this.#timers = this.#timers.filter((t) => t !== timer);
    };
  }

  /** Number of pending timers. */
  get pending(): number {
    return this.#timers.length;
  }

  /**
   * Resolves with the earliest pending deadline once something is asleep. Rejects after `timeoutMs` of real time, so
   * a loop that stopped sleeping fails the test instead of hanging it.
   */
  async nextTimer(timeoutMs = 15_000): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    while (this.#timers.length === 0) {
      if (Date.now() > deadline) throw new Error("FakeClock: nothing went to sleep in time");
      await new Promise<void>((resolve) => {
        // The test's own real-time poll, outside the clock under test.
        const timer = setTimeout(resolve, 50);
        this.#waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    return Math.min(...this.#timers.map((t) => t.at));
  }

  /** Moves time to `time` (never backwards) and fires every timer due by then, in deadline order. */
  advanceTo(time: number): void {
    const target = Math.max(this.#now, time);
    for (;;) {
      const due = this.#timers.filter((t) => t.at <= target).sort((a, b) => a.at - b.at || a.seq - b.seq)[0];
      if (due === undefined) break;
      this.#timers = this.#timers.filter((t) => t !== due);
      this.#now = Math.max(this.#now, due.at);
      due.fire();
    }
    this.#now = target;
  }

  advance(ms: number): void {
    this.advanceTo(this.#now + ms);
  }

  /** Waits for the next timer and jumps to its deadline; returns that time. */
  async runToNextTimer(timeoutMs?: number): Promise<number> {
    const at = await this.nextTimer(timeoutMs);
    this.advanceTo(at);
    return at;
  }
}
