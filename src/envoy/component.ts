/**
 * The agent's Envoy component: starts after interception, resolves `start` once Envoy's admin /ready is 200, hot
 * restarts on `certificates-changed` (legacy profile; istiod gets them over SDS) and on a reload that changes the
 * bootstrap, and on stop drains and ends every epoch. When Envoy keeps failing past its restart budget it raises the
 * frame's `fatal` event: the frame stops every component in reverse order and exits 1, and systemd's Restart= takes
 * over. (A failure before the first ready epoch
 * rejects `start` instead, which the frame handles the same way.)
 */
import type { AgentComponent, AgentDeps, ComponentFactory, ComponentStatus } from "../agent/component.js";
import type { ConfigValues } from "../config/registry.js";
import type { SupervisorOptions } from "./supervisor.js";
import { EnvoySupervisor } from "./supervisor.js";

/** Timings a test shortens; the ports themselves come with the agent's deps. */
export type EnvoyTuning = Pick<
  SupervisorOptions,
  "policy" | "debounceMs" | "certPollMs" | "killTimeoutMs" | "readyPollMs"
>;

export function extraMetadataOf(deps: Pick<AgentDeps, "loaded">): Record<string, string> {
  return Object.fromEntries(Object.entries(deps.loaded.metadata).map(([name, v]) => [name, v.raw]));
}

class EnvoyComponent implements AgentComponent {
  readonly name = "envoy";
  readonly #supervisor: EnvoySupervisor;
  readonly #unsubscribe: () => void;

  constructor(deps: AgentDeps, tuning: EnvoyTuning) {
    const log = deps.logger.child("envoy");
    const restarts = deps.metrics.counter(
      "istio_vm_envoy_restarts_total",
      "Envoy epochs started after the first, by reason (certificates, configuration, failure).",
      ["reason"],
    );
    const failures = deps.metrics.counter(
      "istio_vm_envoy_failures_total",
      "Envoy epochs that exited with an error or unasked, each followed by a restart from epoch 0 or by giving up.",
    );
    this.#supervisor = new EnvoySupervisor({
      config: deps.config,
      extraMetadata: extraMetadataOf(deps),
      hostname: deps.hostname(),
      fs: deps.fs,
      links: deps.links,
      spawner: deps.spawner(),
      http: deps.http,
      clock: deps.clock,
      logger: log,
      env: deps.env,
      users: deps.users,
      uid: deps.uid ?? 0,
      ...tuning,
      onStatusChange: () => {
        deps.events.emit("status-changed");
      },
      onFatal: (error) => {
        deps.events.emit("fatal", error);
      },
      onEpochStarted: (_epoch, reason) => {
        if (reason !== "start") restarts.inc({ reason });
        if (reason === "failure") failures.inc();
      },
    });
    deps.metrics.gaugeFn("istio_vm_envoy_epoch", "Hot-restart epoch of the newest running Envoy (-1: none).", () => {
      return this.#supervisor.status().epoch ?? -1;
    });
    deps.metrics.gaugeFn("istio_vm_envoy_ready", "1 when Envoy's admin /ready answers 200 (LIVE).", () =>
      this.#supervisor.status().ready ? 1 : 0,
    );
    deps.metrics.gaugeFn("istio_vm_envoy_epochs_running", "Envoy processes running (2 during a hot restart).", () => {
      return this.#supervisor.status().epochsRunning;
    });
    this.#unsubscribe = deps.events.on("certificates-changed", () => {
      this.#supervisor.certificatesChanged();
    });
  }

  start(signal: AbortSignal): Promise<void> {
    return this.#supervisor.start(signal);
  }

  reload(config: ConfigValues): Promise<void> {
    return this.#supervisor.reload(config);
  }

  async stop(): Promise<void> {
    this.#unsubscribe();
    await this.#supervisor.stop();
  }

  status(): ComponentStatus {
    const s = this.#supervisor.status();
    const where = s.epoch === undefined ? "" : ` epoch ${s.epoch} (pid ${s.pid ?? "?"})`;
    switch (s.state) {
      case "running":
        return { ready: s.ready, summary: `envoy${where} ${s.ready ? "ready" : "not ready"}` };
      case "restarting":
        return { ready: s.ready, summary: `envoy hot restart to${where}` };
      case "backoff": {
        const wait = s.nextAttemptAt === undefined ? "" : ` at ${new Date(s.nextAttemptAt).toISOString()}`;
        return {
          ready: false,
          summary: `envoy restarting${wait} after ${s.recentFailures} failure(s): ${s.lastError ?? "unknown"}`,
        };
      }
      case "failed":
        return { ready: false, summary: `envoy failed: ${s.lastError ?? "unknown"}` };
      case "idle":
      case "starting":
        return { ready: false, summary: `envoy starting${where}` };
      case "stopping":
      case "stopped":
        return { ready: false, summary: `envoy ${s.state}` };
    }
  }
}

/** The factory with other timings (tests). */
export function envoyComponentWith(tuning: EnvoyTuning): ComponentFactory {
  return (deps) => new EnvoyComponent(deps, tuning);
}

export const envoyComponent: ComponentFactory = envoyComponentWith({});
