/**
 * The agent is a list of components started in order and stopped in reverse: certificates → interception → Envoy
 * (→ discovery checks). Each later issue adds one component; the frame (`agent.ts`) owns signals, sd_notify, the
 * health/metrics endpoint and the order.
 */
import type { ConfigValues } from "../config/registry.js";
import type { LoadedConfig } from "../config/load.js";
import type { Logger } from "../platform/logger.js";
import type { SystemPorts } from "../platform/ports.js";
import type { AgentXdsChannels } from "../xds/agent-channel.js";
import type { MetricsRegistry } from "./metrics.js";

export interface ComponentStatus {
  /** Whether this component is currently doing its job; /healthz/ready is 200 only when all are. */
  readonly ready: boolean;
  /** A few words for systemd's one-line STATUS= (e.g. "cert spiffe://… valid until 2026-11-28T02:00Z"). */
  readonly summary: string;
}

/** Events components raise for each other (e.g. new certificates make the Envoy supervisor hot-restart). */
export interface AgentEvents {
  /**
   * `certificates-changed`: a new key and chain are on disk (the Envoy supervisor hot-restarts).
   * `status-changed`: a component's status changed (the frame re-sends STATUS= and re-evaluates readiness).
   */
  emit(event: "certificates-changed" | "status-changed"): void;
  on(event: "certificates-changed" | "status-changed", listener: () => void): () => void;
  /**
   * A component cannot go on (e.g. Envoy keeps crashing past its restart budget): the frame stops every component
   * in reverse order and exits non-zero, so systemd's Restart= policy takes over.
   */
  emit(event: "fatal", error: Error): void;
  on(event: "fatal", listener: (error: Error) => void): () => void;
}

/** What a component is built from: the ports the composition root made (src/main.ts), and the frame's own. */
export interface AgentDeps extends SystemPorts {
  readonly config: ConfigValues;
  readonly loaded: LoadedConfig;
  readonly logger: Logger;
  readonly metrics: MetricsRegistry;
  readonly events: AgentEvents;
  /**
   * The xDS proxy's upstream stream to istiod, for the agent's own requests (NDS, health reports): provided by the
   * xDS proxy component, taken by the components after it (src/xds/agent-channel.ts). Absent in tests that do not
   * need it.
   */
  readonly xds?: AgentXdsChannels;
}

export interface AgentComponent {
  readonly name: string;
  /**
   * Brings the component to its working state and resolves once it is there (certificates valid, rules applied,
   * Envoy ready); the next component starts only then. The frame has sent READY=1 before the first start, so a
   * start may wait as long as it must (a CA down at boot): meanwhile `status()` says what it waits for, and it
   * ends when `signal` aborts. Long-running work (renewal loop, supervision) keeps running after `start` resolves,
   * under `signal`. Throwing fails the agent (exit 1); the frame then stops the components already started.
   */
  start(signal: AbortSignal): Promise<void>;
  /** Undoes `start`, awaiting any background work. Called on every stop path, in reverse order. Never throws. */
  stop(): Promise<void>;
  /**
   * SIGHUP with a re-read, valid configuration (`loaded` carries where each value came from). Optional: components
   * without it keep running as they are. Also called on the component whose `start` is still in progress.
   */
  reload?(config: ConfigValues, loaded: LoadedConfig): Promise<void>;
  status(): ComponentStatus;
}

export type ComponentFactory = (deps: AgentDeps) => AgentComponent | undefined;

/** What the agent is given: a factory, or one that first loads the component's module (src/agent/components.ts). */
export type ComponentLoader = (deps: AgentDeps) => AgentComponent | undefined | Promise<AgentComponent | undefined>;
