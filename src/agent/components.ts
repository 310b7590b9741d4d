/**
 * The agent's components in start order; stop order is the reverse. Start order is the contract of DESIGN.md:
 * configuration → certificates valid → interception applied → Envoy started and ready → READY=1.
 */
import type { ComponentFactory } from "./component.js";

export const AGENT_COMPONENTS: readonly ComponentFactory[] = [];
