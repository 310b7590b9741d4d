/**
 * Optimistic concurrency as Kubernetes clients practise it (client-go's retry.RetryOnConflict): read, plan, write
 * with the read resourceVersion; when the write loses a race (409 Conflict on an update, AlreadyExists on a create),
 * wait a jittered, growing delay and do it all again from a fresh read.
 */
import type { Clock } from "../platform/clock.js";
import { AgentError } from "../platform/errors.js";
import type { KubeApiError } from "./client.js";
import { isAlreadyExists, isConflict } from "./client.js";

export interface RetryOptions {
  readonly clock: Clock;
  /** Attempts in all (default 10). */
  readonly maxAttempts?: number;
  readonly random?: () => number;
}

export interface RetryOnConflict extends RetryOptions {
  /** What is being written, for the error when every attempt lost ("endpoints default/web"). */
  readonly subject: string;
  /** Told of each lost race: the error, the number of the attempt that follows, and the most attempts. */
  readonly onRetry?: (error: KubeApiError, next: number, maxAttempts: number) => void;
}

/** Runs `attempt(n)` (n from 0) until it returns, retrying lost races; other errors end it at once. */
export async function retryOnConflict<T>(options: RetryOnConflict, attempt: (n: number) => Promise<T>): Promise<T> {
  const maxAttempts = options.maxAttempts ?? 10;
  let lastError: unknown;
  for (let n = 0; n < maxAttempts; n++) {
    if (n > 0) await backoff(options, n);
    try {
      return await attempt(n);
    } catch (error) {
      if (!isConflict(error) && !isAlreadyExists(error)) throw error;
      lastError = error;
      options.onRetry?.(error as KubeApiError, n + 2, maxAttempts);
    }
  }
  throw new AgentError({
    code: "UPDATE_CONFLICT",
    message: `${options.subject} kept changing while it was being updated (${maxAttempts} attempts)`,
    subject: options.subject,
    hint: "another client updates it continuously; run the command again",
    cause: lastError,
  });
}

async function backoff(options: RetryOptions, attempt: number): Promise<void> {
  const random = options.random ?? Math.random;
  const base = Math.min(1000, 25 * 2 ** attempt);
  await options.clock.sleep(Math.round(base / 2 + random() * (base / 2)));
}
