/**
 * The agent's `xds-proxy` component (istiod profile, runs with the `envoy` component, after `sds` and before the DNS
 * proxy and Envoy): Envoy's ADS stream goes to the agent's socket (src/xds/proxy-socket.ts, where the bootstrap's
 * `xds-grpc` cluster points) and on to istiod over one stream the agent authenticates with the workload certificate
 * (src/xds/proxy.ts). It offers that stream to the components after it for the agent's own requests
 * (src/xds/agent-channel.ts: the DNS proxy's NDS, health reports). Starting never waits on istiod; the component is
 * ready once istiod has answered CDS and LDS on the current upstream stream.
 */
import type { AgentComponent, AgentDeps, ComponentFactory, ComponentStatus } from "../agent/component.js";
import type { Counter } from "../agent/metrics.js";
import type { ConfigValues } from "../config/registry.js";
import { envoyOwner } from "../sds/component.js";
import { agentAdsConnection } from "../xds/agent-connection.js";
import { buildNodeBlock } from "../xds/node-block.js";
import { XdsProxy } from "../xds/proxy.js";
import { usesXdsProxy, xdsProxySocketPath } from "../xds/proxy-socket.js";
import { extraMetadataOf } from "./component.js";

/** Tuning a test swaps (the host name and uid come from the agent's ports). */
export interface XdsProxyComponentPorts {
  readonly initialBackoffMs?: number;
  readonly maxBackoffMs?: number;
}

/** Settings whose change needs a new upstream stream (a new address, server name or credentials policy). */
const UPSTREAM_SETTINGS = [
  "DISCOVERY_ADDRESS",
  "ISTIOD_SAN",
  "CONTROL_PLANE_AUTH_POLICY",
  "ISTIO_META_CLUSTER_ID",
  "OUTPUT_CERTS",
] as const;

function upstreamSettings(config: ConfigValues): string {
  return JSON.stringify(UPSTREAM_SETTINGS.map((name) => config[name]));
}

class XdsProxyComponent implements AgentComponent {
  readonly name = "xds-proxy";
  readonly #deps: AgentDeps;
  readonly #ports: XdsProxyComponentPorts;
  #config: ConfigValues;
  #proxy: XdsProxy | undefined;
  #withdraw: (() => void) | undefined;
  readonly #counters: {
    readonly envoyStreams: Counter;
    readonly upstreamStreams: Counter;
    readonly reconnects: Counter;
    readonly messages: Counter;
  };

  constructor(deps: AgentDeps, ports: XdsProxyComponentPorts) {
    this.#deps = deps;
    this.#ports = ports;
    this.#config = deps.config;
    const metrics = deps.metrics;
    this.#counters = {
      envoyStreams: metrics.counter(
        "istio_vm_xds_proxy_envoy_streams_total",
        "ADS streams Envoy opened on the agent's xDS proxy socket.",
      ),
      upstreamStreams: metrics.counter(
        "istio_vm_xds_proxy_upstream_streams_total",
        "ADS streams the xDS proxy opened to istiod, the first included.",
      ),
      reconnects: metrics.counter(
        "istio_vm_xds_proxy_reconnects_total",
        "ADS streams the xDS proxy opened to istiod after one ended (istiod gone, refused, or a new address).",
      ),
      messages: metrics.counter(
        "istio_vm_xds_proxy_messages_total",
        "xDS messages through the proxy, by direction (upstream: to istiod, downstream: from istiod) and type (CDS, LDS, NDS, …).",
        ["direction", "type"],
      ),
    };
    metrics.gaugeFn(
      "istio_vm_xds_proxy_upstream_connected",
      "1 while istiod answers on the xDS proxy's upstream stream.",
      () => (this.#proxy?.status().upstream === "connected" ? 1 : 0),
    );
  }

  async start(): Promise<void> {
    const deps = this.#deps;
    const { envoyStreams, upstreamStreams, reconnects, messages } = this.#counters;
    const hostName = deps.hostname();
    const owner = await envoyOwner(deps, deps.uid ?? 0);
    const changed = (): void => {
      deps.events.emit("status-changed");
    };
    const proxy = new XdsProxy({
      socketPath: xdsProxySocketPath(this.#config),
      fs: deps.fs,
      logger: deps.logger.child("xds-proxy"),
      clock: deps.clock,
      ...(owner === undefined ? {} : { owner }),
      connection: () => {
        const config = this.#config;
        const node = buildNodeBlock({ config, extraMetadata: extraMetadataOf(deps), hostname: hostName });
        return agentAdsConnection(deps.fs, config, node);
      },
      observer: {
        envoyStreamOpened: () => {
          envoyStreams.inc();
        },
        upstreamOpened: (reconnect) => {
          upstreamStreams.inc();
          if (reconnect) reconnects.inc();
        },
        forwarded: (direction, type) => {
          messages.inc({ direction, type });
        },
        changed,
      },
      ...(this.#ports.initialBackoffMs === undefined ? {} : { initialBackoffMs: this.#ports.initialBackoffMs }),
      ...(this.#ports.maxBackoffMs === undefined ? {} : { maxBackoffMs: this.#ports.maxBackoffMs }),
    });
    await proxy.listen();
    this.#proxy = proxy;
    this.#withdraw = deps.xds?.provide(proxy);
  }

  reload(config: ConfigValues): Promise<void> {
    const before = upstreamSettings(this.#config);
    this.#config = config;
    // The socket stays where Envoy's bootstrap points; a new address or server name needs a new upstream stream.
    if (upstreamSettings(config) !== before) this.#proxy?.reconnect();
    return Promise.resolve();
  }

  async stop(): Promise<void> {
    this.#withdraw?.();
    await this.#proxy?.close();
  }

  status(): ComponentStatus {
    const s = this.#proxy?.status();
    if (s === undefined || !s.listening) return { ready: false, summary: "xds proxy starting" };
    const envoy = s.envoyStreams === 0 ? "no Envoy stream" : "Envoy subscribed";
    const reconnects = s.reconnects === 0 ? "" : `, ${s.reconnects} reconnect(s)`;
    switch (s.upstream) {
      case "connected":
        return {
          ready: s.ready,
          summary: s.ready
            ? `xds proxy: istiod ${s.target ?? ""} answered ${s.answered.join(", ")}; ${envoy}${reconnects}`
            : `xds proxy: istiod ${s.target ?? ""} connected, waiting for CDS and LDS (answered: ${s.answered.join(", ") || "none"}); ${envoy}`,
        };
      case "backoff": {
        const at = s.nextAttemptAt === undefined ? "" : ` (next attempt ${new Date(s.nextAttemptAt).toISOString()})`;
        return {
          ready: false,
          summary: `xds proxy: istiod ${s.target ?? ""} unreachable${at}: ${s.lastError ?? "unknown"}`,
        };
      }
      case "connecting":
        return {
          ready: false,
          summary: `xds proxy: connecting to istiod ${s.target ?? ""}${s.lastError === undefined ? "" : ` (last: ${s.lastError})`}`,
        };
      case "idle":
        return {
          ready: false,
          summary: `xds proxy: waiting for Envoy to subscribe${s.lastError === undefined ? "" : ` (last upstream error: ${s.lastError})`}`,
        };
      case "stopped":
        return { ready: false, summary: "xds proxy stopped" };
    }
  }
}

/** The factory with test tuning (backoff). */
export function xdsProxyComponentWith(ports: XdsProxyComponentPorts): ComponentFactory {
  return (deps) => (usesXdsProxy(deps.config) ? new XdsProxyComponent(deps, ports) : undefined);
}

export const xdsProxyComponent: ComponentFactory = xdsProxyComponentWith({});
