/**
 * The agent's components in start order; stop order is the reverse. Start order is the contract of
 * docs/architecture.md ("The agent"): configuration → READY=1 → certificates valid → interception applied → Envoy
 * started and ready (src/agent/agent.ts).
 * ISTIO_AGENT_COMPONENTS selects a subset (interception is also left out with ISTIO_CUSTOM_IP_TABLES=true).
 */
import { certificateComponent } from "../certs/component.js";
import { discoveryCheckComponent } from "../checks/component.js";
import { envoyComponent } from "../envoy/component.js";
import { interceptionComponent } from "../intercept/component.js";
import type { ComponentFactory } from "./component.js";

type ComponentName = "certificates" | "interception" | "envoy" | "discovery";

const ORDERED: readonly [ComponentName, ComponentFactory][] = [
  ["certificates", certificateComponent],
  ["interception", interceptionComponent],
  ["envoy", envoyComponent],
  ["discovery", discoveryCheckComponent],
];

export const AGENT_COMPONENTS: readonly ComponentFactory[] = ORDERED.map(
  ([name, factory]): ComponentFactory =>
    (deps) =>
      deps.config.ISTIO_AGENT_COMPONENTS.includes(name) ? factory(deps) : undefined,
);
