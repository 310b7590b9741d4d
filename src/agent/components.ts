/**
 * The agent's components in start order; stop order is the reverse. Start order is the contract of
 * docs/architecture.md ("The agent"): configuration → READY=1 → certificates valid → interception applied → Envoy
 * started and ready (src/agent/agent.ts). On the istiod profile the SDS server starts after the certificates and
 * before interception, so Envoy finds its socket serving.
 * ISTIO_AGENT_COMPONENTS selects a subset (interception is also left out with ISTIO_CUSTOM_IP_TABLES=true).
 */
import { certificateComponent } from "../certs/component.js";
import { discoveryCheckComponent } from "../checks/component.js";
import { envoyComponent } from "../envoy/component.js";
import { interceptionComponent } from "../intercept/component.js";
import { sdsComponent } from "../sds/component.js";
import type { ComponentFactory } from "./component.js";

type ComponentName = "certificates" | "interception" | "envoy" | "discovery";

const ORDERED: readonly [ComponentName, ComponentFactory][] = [
  ["certificates", certificateComponent],
  // istiod profile: Envoy's certificates come over SDS; it belongs to Envoy and runs when Envoy does.
  ["envoy", sdsComponent],
  ["interception", interceptionComponent],
  ["envoy", envoyComponent],
  ["discovery", discoveryCheckComponent],
];

export const AGENT_COMPONENTS: readonly ComponentFactory[] = ORDERED.map(
  ([name, factory]): ComponentFactory =>
    (deps) =>
      deps.config.ISTIO_AGENT_COMPONENTS.includes(name) ? factory(deps) : undefined,
);
