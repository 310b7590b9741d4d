/**
 * The probe schedule and thresholds of istio-agent's WorkloadHealthChecker (istio/istio
 * `pkg/istio-agent/health/health_check.go`): wait `initialDelaySeconds`, probe at once, then every `periodSeconds`;
 * `successThreshold` consecutive successes make the workload healthy, `failureThreshold` consecutive failures
 * unhealthy, and only a change is reported (the first state of either kind is always one). Every wait goes through
 * the clock port. One difference: the period runs from the end of a probe, not from its start (a probe takes at
 * most `timeoutSeconds`).
 */
import type { ReadinessProbe } from "../config/readiness-probe.js";
import type { Clock } from "../platform/clock.js";
import type { HealthReport } from "./report.js";

export type ProbeOutcome = HealthReport;

/** Consecutive results → a change of state, or undefined. */
export class HealthTracker {
  readonly #successes: number;
  readonly #failures: number;
  #state: "unknown" | "healthy" | "unhealthy" = "unknown";
  #okRun = 0;
  #failRun = 0;

  constructor(thresholds: Pick<ReadinessProbe, "successThreshold" | "failureThreshold">) {
    this.#successes = thresholds.successThreshold;
    this.#failures = thresholds.failureThreshold;
  }

  get state(): "unknown" | "healthy" | "unhealthy" {
    return this.#state;
  }

  observe(outcome: ProbeOutcome): HealthReport | undefined {
    if (outcome.healthy) {
      this.#okRun++;
      this.#failRun = 0;
      if (this.#okRun >= this.#successes && this.#state !== "healthy") {
        this.#okRun = 0;
        this.#state = "healthy";
        return { healthy: true };
      }
      return undefined;
    }
    this.#failRun++;
    this.#okRun = 0;
    if (this.#failRun >= this.#failures && this.#state !== "unhealthy") {
      this.#failRun = 0;
      this.#state = "unhealthy";
      return { healthy: false, message: outcome.message };
    }
    return undefined;
  }
}

export interface HealthCheckOptions {
  readonly probe: ReadinessProbe;
  readonly clock: Clock;
  /** One probe, bounded by `timeoutMs`; never rejects. */
  check(timeoutMs: number, signal: AbortSignal): Promise<ProbeOutcome>;
  /** Every result, with the change it made, if any. */
  onResult(outcome: ProbeOutcome, change: HealthReport | undefined): void;
}

/** Runs until `signal` aborts; never rejects. */
export async function runHealthChecks(options: HealthCheckOptions, signal: AbortSignal): Promise<void> {
  const { probe, clock } = options;
  const tracker = new HealthTracker(probe);
  try {
    await clock.sleep(probe.initialDelaySeconds * 1000, signal);
    for (;;) {
      const outcome = await options.check(probe.timeoutSeconds * 1000, signal);
      if (signal.aborted) return;
      options.onResult(outcome, tracker.observe(outcome));
      await clock.sleep(probe.periodSeconds * 1000, signal);
    }
  } catch {
    // Aborted while asleep.
  }
}
