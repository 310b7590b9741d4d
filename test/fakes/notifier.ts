/** Records sd_notify messages; `waitFor` resolves when a message with the given field arrives. */
import type { Notifier } from "../../src/platform/notify.js";

export class RecordingNotifier implements Notifier {
  readonly messages: Record<string, string>[] = [];
  readonly watchdogUsec: number | undefined;
  readonly #waiters: { key: string; value: string | undefined; resolve: (m: Record<string, string>) => void }[] = [];

  constructor(watchdogUsec?: number) {
    this.watchdogUsec = watchdogUsec;
  }

  notify(fields: Readonly<Record<string, string>>): Promise<void> {
    const message = { ...fields };
    this.messages.push(message);
    for (const waiter of [...this.#waiters]) {
      if (message[waiter.key] !== undefined && (waiter.value === undefined || message[waiter.key] === waiter.value)) {
        this.#waiters.splice(this.#waiters.indexOf(waiter), 1);
        waiter.resolve(message);
      }
    }
    return Promise.resolve();
  }

  /** Resolves with the first message (already received or future) carrying `key` (with `value`, if given). */
  waitFor(key: string, value?: string): Promise<Record<string, string>> {
    const seen = this.messages.find((m) => m[key] !== undefined && (value === undefined || m[key] === value));
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolve) => this.#waiters.push({ key, value, resolve }));
  }

  /** The value of the most recent STATUS= message. */
  lastStatus(): string | undefined {
    return [...this.messages].reverse().find((m) => m["STATUS"] !== undefined)?.["STATUS"];
  }
}

/** Signals raised by hand. */
export class ManualSignals {
  readonly #listeners = new Map<string, Set<() => void>>();
  on(signal: string, listener: () => void): () => void {
    const set = this.#listeners.get(signal) ?? new Set();
    set.add(listener);
    this.#listeners.set(signal, set);
    return () => set.delete(listener);
  }
  raise(signal: string): void {
    for (const listener of this.#listeners.get(signal) ?? []) listener();
  }
}
