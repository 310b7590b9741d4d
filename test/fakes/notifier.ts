/** Records sd_notify messages; `waitFor` resolves when a message with the given field arrives. */
import type { Notifier } from "../../src/platform/notify.js";

type Message = Record<string, string>;

export class RecordingNotifier implements Notifier {
  readonly messages: Message[] = [];
  readonly watchdogUsec: number | undefined;
  #waiters: { match: (m: Message) => boolean; resolve: (m: Message) => void }[] = [];

  constructor(watchdogUsec?: number) {
    this.watchdogUsec = watchdogUsec;
  }

  notify(fields: Readonly<Record<string, string>>): Promise<void> {
    const message = { ...fields };
    this.messages.push(message);
    this.#waiters = this.#waiters.filter((w) => {
      if (!w.match(message)) return true;
      w.resolve(message);
      return false;
    });
    return Promise.resolve();
  }

  /** Resolves with the first message (already received or future) that `match` accepts. */
  waitUntil(match: (m: Message) => boolean): Promise<Message> {
    const seen = this.messages.find(match);
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolve) => this.#waiters.push({ match, resolve }));
  }

  /** Resolves with the first message (already received or future) carrying `key` (with `value`, if given). */
  waitFor(key: string, value?: string): Promise<Message> {
    return this.waitUntil((m) => m[key] !== undefined && (value === undefined || m[key] === value));
  }

  /** Resolves with the first message (already received or future) whose STATUS= matches `pattern`. */
  waitForStatus(pattern: RegExp): Promise<Message> {
    return this.waitUntil((m) => m["STATUS"] !== undefined && pattern.test(m["STATUS"]));
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
