/**
 * The agent's `health` component (istiod profile, a `readinessProbe` in the effective ProxyConfig, as
 * `istio-vm bundle --workload-group` writes the group's probe into PROXY_CONFIG): runs the probe on its schedule
 * (src/health/checker.ts) and reports each change to istiod (src/health/report.ts) over the agent's own ADS stream,
 * whose node carries AUTO_REGISTER_GROUP, so istiod keeps the VM's auto-registered WorkloadEntry while the stream is
 * up and sets its `Healthy` condition from the reports (docs/protocols.md, "Auto-registration and health").
 *
 * The stream subscribes to nothing and carries only the reports: it opens at start and sends the node with the first
 * report (until then Envoy's own stream, whose node carries AUTO_REGISTER_GROUP too, keeps the VM registered), and
 * re-sends the last report on every reconnect. Where the agent runs its xDS proxy (istiod with Envoy), the reports
 * ride the proxy's upstream stream instead (src/health/upstream-sink.ts), as istio-agent sends them.
 * When the agent runs Envoy, Envoy's readiness (admin `/ready`) is checked before the application's probe, as
 * istio-agent does. The probe's state is not part of the agent's readiness: an unhealthy application leaves the agent ready and
 * Envoy running, and istiod takes the VM out of EDS. STATUS= and /metrics show it.
 */
import type { AgentComponent, AgentDeps, ComponentFactory } from "../agent/component.js";
import type { ConfigValues } from "../config/registry.js";
import type { ReadinessProbe } from "../config/readiness-probe.js";
import { describeProbe, parseReadinessProbe } from "../config/readiness-probe.js";
import { AgentError } from "../platform/errors.js";
import { programVersion } from "../version.js";
import { watchAds } from "../xds/ads-watch.js";
import { agentAdsConnection } from "../xds/agent-connection.js";
import { buildNodeBlock, effectiveProxyConfig } from "../xds/node-block.js";
import type { XdsNode } from "../xds/protos.js";
import { runHealthChecks } from "./checker.js";
import type { ProberPorts } from "./probers.js";
import { envoyReady, runProbe } from "./probers.js";
import type { HealthReport, HealthReportSink } from "./report.js";
import { LatestHealthReport } from "./report.js";
import { upstreamHealthSink } from "./upstream-sink.js";

export interface HealthPorts extends Omit<ProberPorts, "runner"> {
  readonly hostname: string;
  /**
   * Where reports go and what keeps the VM connected; default: the agent's own ADS stream to istiod. Returns the
   * sink and a runner that lives until `signal` aborts.
   */
  readonly sink?: (
    deps: AgentDeps,
    values: () => ConfigValues,
    signal: AbortSignal,
  ) => {
    readonly sink: HealthReportSink;
    readonly running: Promise<void>;
  };
}

/** The probe this VM's agent runs, if any: the effective ProxyConfig's readinessProbe on the istiod profile. */
export function configuredProbe(values: ConfigValues): ReadinessProbe | undefined {
  if (values.ISTIO_CONTROL_PLANE !== "istiod") return undefined;
  const raw = effectiveProxyConfig(values)["readinessProbe"];
  if (raw === undefined || raw === null) return undefined;
  const parsed = parseReadinessProbe(raw);
  if ("problems" in parsed) {
    throw new AgentError({
      code: "READINESS_PROBE_INVALID",
      message: `PROXY_CONFIG readinessProbe: ${parsed.problems.join("; ")}`,
      subject: "PROXY_CONFIG",
      kind: "config",
      hint: "fix the WorkloadGroup's probe and make the bundle again, or correct PROXY_CONFIG / ISTIO_VM_PROXY_CONFIG",
    });
  }
  return parsed.probe;
}

/** The node of the reporting stream: the one Envoy presents, AUTO_REGISTER_GROUP included, with istio-vm's agent. */
export function reportingNode(deps: AgentDeps, values: ConfigValues, hostname: string): XdsNode {
  const extraMetadata = Object.fromEntries(Object.values(deps.loaded.metadata).map((m) => [m.name, m.raw]));
  const block = buildNodeBlock({ config: values, extraMetadata, hostname });
  return { ...block, user_agent_name: "istio-vm", user_agent_version: programVersion() };
}

/** The agent's own ADS stream, carrying only the health reports. */
export function adsHealthSink(hostname: string): NonNullable<HealthPorts["sink"]> {
  return (deps, values, signal) => {
    const latest = new LatestHealthReport();
    const logger = deps.logger.child("health");
    const running = watchAds(
      {
        clock: deps.clock,
        connection: () => agentAdsConnection(deps.fs, values(), reportingNode(deps, values(), hostname)),
        outbox: latest,
        onDisconnect: (reason) => {
          // Until it reconnects istiod has no report, and without Envoy's stream it may unregister the VM.
          logger.warn("health report stream to istiod ended; reconnecting", { reason });
        },
      },
      signal,
    );
    return { sink: latest, running };
  };
}

export function createHealthComponent(ports: HealthPorts): ComponentFactory {
  return (deps: AgentDeps): AgentComponent | undefined => {
    const probe = configuredProbe(deps.config);
    if (probe === undefined) return undefined;
    let values = deps.config;
    const logger = deps.logger.child("health");
    const target = describeProbe(probe);
    let reported: HealthReport | undefined;
    let last: HealthReport | undefined;
    const probes = deps.metrics.counter(
      "istio_vm_health_probes_total",
      "probe runs of the readiness probe, by result",
      ["result"],
    );
    const reports = deps.metrics.counter(
      "istio_vm_health_reports_total",
      "health changes reported to istiod, by state",
      ["state"],
    );
    deps.metrics.gaugeFn(
      "istio_vm_health_healthy",
      "the readiness probe's reported state: 1 healthy, 0 unhealthy, NaN before the first report",
      () => (reported === undefined ? NaN : reported.healthy ? 1 : 0),
    );
    let controller: AbortController | undefined;
    let background: Promise<unknown> | undefined;
    const sinkFor = ports.sink ?? adsHealthSink(ports.hostname);
    const prober: ProberPorts = { http: ports.http, tcp: ports.tcp, runner: deps.runner };
    return {
      name: "health",
      start(signal) {
        controller = new AbortController();
        const inner = AbortSignal.any([signal, controller.signal]);
        const { sink, running } = sinkFor(deps, () => values, inner);
        logger.info("running the readiness probe", {
          probe: target,
          periodSeconds: probe.periodSeconds,
          group: values.ISTIO_META_AUTO_REGISTER_GROUP || "none",
        });
        const checks = runHealthChecks(
          {
            probe,
            clock: deps.clock,
            check: async (timeoutMs, s) => {
              // With Envoy run by this agent, its readiness comes first, as istio-agent's AggregateProber does it.
              if (values.ISTIO_AGENT_COMPONENTS.includes("envoy")) {
                const envoy = await envoyReady(ports.http, values.ENVOY_ADMIN_PORT, { timeoutMs, signal: s });
                if (!envoy.healthy) return envoy;
              }
              return runProbe(probe.method, prober, { timeoutMs, signal: s });
            },
            onResult: (outcome, change) => {
              probes.inc({ result: outcome.healthy ? "healthy" : "unhealthy" });
              last = outcome;
              if (change === undefined) return;
              reported = change;
              reports.inc({ state: change.healthy ? "healthy" : "unhealthy" });
              if (change.healthy) logger.info("readiness probe healthy; reporting to istiod", { probe: target });
              else
                logger.warn("readiness probe unhealthy; reporting to istiod", {
                  probe: target,
                  reason: change.message,
                });
              sink.report(change);
              deps.events.emit("status-changed");
            },
          },
          inner,
        );
        background = Promise.all([running, checks]);
        return Promise.resolve();
      },
      async stop() {
        controller?.abort();
        await background;
        background = undefined;
      },
      reload(config) {
        values = config;
        return Promise.resolve();
      },
      status() {
        if (reported === undefined) return { ready: true, summary: `probe ${target}: waiting for the first result` };
        const state = reported.healthy ? "healthy" : `unhealthy (${reported.message})`;
        const flapping = last !== undefined && last.healthy !== reported.healthy ? ", last run differs" : "";
        return { ready: true, summary: `probe ${target}: ${state}${flapping}` };
      },
    };
  };
}

/** The real one, for src/agent/components.ts: the ports come with the agent's deps. */
export const healthComponent: ComponentFactory = (deps) =>
  createHealthComponent({
    hostname: deps.hostname(),
    http: deps.http,
    tcp: deps.tcp,
    // On the xDS proxy's upstream stream when the agent runs one, else on a stream of the health component's own.
    sink: upstreamHealthSink(adsHealthSink(deps.hostname())),
  })(deps);
