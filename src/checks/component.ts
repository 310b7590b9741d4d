/**
 * The agent's discovery watch: runs the discovery check when the agent starts and every DISCOVERY_CHECK_INTERVAL
 * after, so /healthz/ready and systemd's STATUS= say whether this VM can still get its configuration from Pilot.
 * A failing check does not stop the agent (Envoy keeps its last configuration): the component reports not ready
 * and logs the failure with its hint, once per change, and says when it recovers.
 */
import type { AgentComponent, AgentDeps, ComponentFactory } from "../agent/component.js";
import { describeError } from "../platform/errors.js";
import type { Check, CheckResult } from "./check.js";
import { checkDepsFrom } from "./check.js";
import type { AdsProber } from "./discovery.js";
import { discoveryCheck } from "./discovery.js";
import { runCheck } from "./registry.js";

/** The probe (tests replace it) and the deadline of each step; the ports come with the agent's deps. */
export interface DiscoveryWatchOptions {
  readonly prober?: AdsProber;
  readonly timeoutMs: number;
}

export const DEFAULT_DISCOVERY_TIMEOUT_MS = 10_000;

export function createDiscoveryCheckComponent(options: DiscoveryWatchOptions): ComponentFactory {
  return (deps: AgentDeps): AgentComponent => {
    let values = deps.config;
    const logger = deps.logger.child("discovery");
    const okGauge = deps.metrics.gauge(
      "istio_vm_discovery_check_ok",
      "1 when the last discovery check (Pilot v1 REST or istiod ADS) passed, else 0",
    );
    const runs = deps.metrics.counter("istio_vm_discovery_checks_total", "discovery checks run, by result", ["result"]);
    const makeCheck = (): Check => {
      const checkDeps = {
        ...checkDepsFrom(deps, { loaded: deps.loaded, logger, timeoutMs: options.timeoutMs }),
        values,
      };
      return options.prober === undefined ? discoveryCheck(checkDeps) : discoveryCheck(checkDeps, options.prober);
    };
    let last: CheckResult | undefined;
    let controller: AbortController | undefined;
    let loop: Promise<void> | undefined;

    const runOnce = async (signal: AbortSignal): Promise<void> => {
      const result = await runCheck(makeCheck(), signal);
      if (signal.aborted) return;
      const changed = last === undefined || last.ok !== result.ok || last.summary !== result.summary;
      const recovered = last !== undefined && !last.ok && result.ok;
      last = result;
      okGauge.set(result.ok ? 1 : 0);
      runs.inc({ result: result.ok ? "pass" : "fail" });
      if (result.ok) {
        if (recovered) logger.info("discovery recovered", { summary: result.summary });
        else if (changed) logger.info("discovery ok", { summary: result.summary });
      } else if (changed) {
        logger.warn("discovery check failed", { summary: result.summary, hint: result.hint });
      }
      if (changed) deps.events.emit("status-changed");
    };

    return {
      name: "discovery",
      async start(signal) {
        controller = new AbortController();
        const inner = AbortSignal.any([signal, controller.signal]);
        await runOnce(inner);
        // DISCOVERY_CHECK_INTERVAL=0: check at start only.
        if (values.DISCOVERY_CHECK_INTERVAL === 0) return;
        loop = (async () => {
          while (!inner.aborted) {
            try {
              await deps.clock.sleep(Math.max(1000, values.DISCOVERY_CHECK_INTERVAL), inner);
            } catch {
              return;
            }
            try {
              await runOnce(inner);
            } catch (error) {
              logger.error("discovery check loop error", { error: describeError(error) });
            }
          }
        })();
      },
      async stop() {
        controller?.abort();
        await loop;
        loop = undefined;
      },
      reload(config) {
        values = config;
        return Promise.resolve();
      },
      status() {
        if (last === undefined) return { ready: false, summary: "discovery not checked yet" };
        return { ready: last.ok, summary: last.ok ? last.summary : `discovery failing: ${last.summary}` };
      },
    };
  };
}

/** The real one, for `src/agent/components.ts`. */
export const discoveryCheckComponent: ComponentFactory = createDiscoveryCheckComponent({
  timeoutMs: DEFAULT_DISCOVERY_TIMEOUT_MS,
});
