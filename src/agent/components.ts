/**
 * The agent's components in start order; stop order is the reverse. Start order is the contract of
 * docs/architecture.md ("The agent"): configuration → READY=1 → certificates valid → interception applied → Envoy
 * started and ready (src/agent/agent.ts). On the istiod profile the SDS server and the xDS proxy start after the
 * certificates and before interception, so Envoy finds their sockets serving.
 * ISTIO_AGENT_COMPONENTS selects a subset (interception is also left out with ISTIO_CUSTOM_IP_TABLES=true).
 * A component's module loads only when it is configured: an agent without the discovery check never loads gRPC and
 * the xDS types, one without certificates never loads the CA clients and X.509 code (memory and start-up).
 */
import type { ComponentFactory, ComponentLoader } from "./component.js";

type ComponentName = "certificates" | "dns" | "interception" | "envoy" | "health" | "discovery";

const ORDERED: readonly [ComponentName, () => Promise<ComponentFactory>][] = [
  ["certificates", async () => (await import("../certs/component.js")).certificateComponent],
  // istiod profile: Envoy's certificates come over SDS; it belongs to Envoy and runs when Envoy does.
  ["envoy", async () => (await import("../sds/component.js")).sdsComponent],
  // istiod profile: Envoy's xDS goes through the agent, which also carries its own NDS and health requests on that
  // stream; before the DNS proxy, which subscribes to NDS on it, and before Envoy, which connects to its socket.
  ["envoy", async () => (await import("../envoy/xds-proxy-component.js")).xdsProxyComponent],
  // Before interception: the capture rules send the VM's DNS to the proxy, which must already listen.
  [
    "dns",
    async () => {
      const { dnsProxyComponentFor } = await import("../dns/component.js");
      return (deps) => dnsProxyComponentFor(deps.hostname())(deps);
    },
  ],
  ["interception", async () => (await import("../intercept/component.js")).interceptionComponent],
  ["envoy", async () => (await import("../envoy/component.js")).envoyComponent],
  // istiod profile with a readinessProbe: the application's probe, reported to istiod (auto-registered VMs).
  ["health", async () => (await import("../health/component.js")).healthComponent],
  ["discovery", async () => (await import("../checks/component.js")).discoveryCheckComponent],
];

export const AGENT_COMPONENTS: readonly ComponentLoader[] = ORDERED.map(
  ([name, load]): ComponentLoader =>
    async (deps) =>
      deps.config.ISTIO_AGENT_COMPONENTS.includes(name) ? (await load())(deps) : undefined,
);
