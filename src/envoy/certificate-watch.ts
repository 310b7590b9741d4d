/**
 * The supervisor's watch on the certificate files (src/envoy/supervisor.ts). Legacy profile: the PEM files are part
 * of an epoch, so a change announced by the certificate component, or noticed by hashing the files every
 * `certPollMs` (a change nobody announced), asks for a new epoch once per debounce window; the epoch's reconcile
 * still compares the hash and restarts only when the PEMs really changed. istiod profile: the agent pushes
 * certificates over SDS, so nothing here restarts Envoy (the hash is a constant, src/envoy/housekeeping.ts).
 * Every wait goes through the clock port.
 */
import type { Clock } from "../platform/clock.js";
import { scheduleOnce } from "../platform/clock.js";
import { describeError } from "../platform/errors.js";
import type { Logger } from "../platform/logger.js";

export interface CertificateWatchOptions {
  readonly clock: Clock;
  readonly logger: Logger;
  /** Several certificate events within this window cause one restart (default 2 s). */
  readonly debounceMs?: number;
  /** How often the PEM files are hashed to notice a change nobody announced (default 5 s; 0: never). */
  readonly pollMs?: number;
  /** The certificate files' hash now (certificateHash). */
  hash(): Promise<string>;
  /** Nothing to restart: the supervisor has not started yet, or is stopping. */
  paused(): boolean;
  /** The certificates reach Envoy over SDS (istiod profile): a change restarts nothing. */
  pushed(): boolean;
  /** Asks the supervisor for a new epoch (reason "certificates"). */
  restart(): void;
}

export class CertificateWatch {
  readonly #o: CertificateWatchOptions;
  /** Pending timer on the clock port, as a cancel function (any delay is safe there; see src/platform/clock.ts). */
  #cancelDebounce: (() => void) | undefined;
  readonly #poll = new AbortController();
  #polling: Promise<void> | undefined;
  #lastHash: string | undefined;

  constructor(options: CertificateWatchOptions) {
    this.#o = options;
  }

  /** The hash the newest epoch was built with (a poll that finds another one reports a change). */
  seen(hash: string): void {
    this.#lastHash = hash;
  }

  /** New certificates are on disk: a restart after the debounce window, unless paused or pushed over SDS. */
  changed(): void {
    if (this.#o.paused() || this.#o.pushed()) return;
    if (this.#cancelDebounce !== undefined) return;
    this.#cancelDebounce = scheduleOnce(this.#o.clock, this.#o.debounceMs ?? 2000, () => {
      this.#cancelDebounce = undefined;
      this.#o.restart();
    });
  }

  /** Starts hashing the files every `pollMs` (once; nothing when it is 0). */
  startPolling(): void {
    const poll = this.#o.pollMs ?? 5000;
    if (poll > 0) this.#polling ??= this.#pollLoop(poll);
  }

  /** Cancels a pending restart and ends the polling. */
  async stop(): Promise<void> {
    this.#cancelDebounce?.();
    this.#poll.abort();
    await this.#polling;
  }

  /** Hashes the PEM files every `everyMs` until stop (the clock's sleep: the fake clock sees it). */
  async #pollLoop(everyMs: number): Promise<void> {
    const signal = this.#poll.signal;
    while (!signal.aborted) {
      try {
        await this.#o.clock.sleep(everyMs, signal);
      } catch {
        return;
      }
      try {
        await this.#pollOnce();
      } catch (error) {
        this.#o.logger.warn("could not hash the certificate files", { error: describeError(error) });
      }
    }
  }

  async #pollOnce(): Promise<void> {
    if (this.#o.paused()) return;
    const current = await this.#o.hash();
    if (current !== this.#lastHash) {
      this.#o.logger.info("certificate files changed on disk");
      this.changed();
    }
  }
}
