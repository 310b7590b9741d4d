/**
 * The agent's own xDS requests on the xDS proxy's upstream stream to istiod. Istio's agent sends its NDS
 * subscription (the DNS proxy's name table) and its health reports (`HealthInformation`, for auto-registered
 * WorkloadEntries) on the stream it proxies for Envoy, not on streams of its own (istio/istio
 * pkg/istio-agent/xds_proxy.go, 1.2x: the NameTable request after the stream opens, `sendHealthRequest`): istiod
 * then sees one connection per VM, authenticated once, carrying Envoy's node.
 *
 * The proxy (src/xds/proxy.ts) implements `AgentXdsChannel`; `AgentXdsChannels` hands it from the proxy component
 * to the components that start after it (the DNS proxy; health reports), through the agent's dependencies. When
 * no proxy runs (legacy profile, or ISTIO_AGENT_COMPONENTS without envoy), `upstream()` is undefined and a
 * component uses a stream of its own (src/xds/ads-watch.ts).
 */
import type { DiscoveryResponse, RpcStatus } from "./protos.js";

/** A subscription of the agent's to one type: (re)sent on every new upstream stream, answers ACKed or NACKed. */
export interface AgentSubscription {
  readonly typeUrl: string;
  /** Empty: all resources of the type (NDS). */
  readonly resourceNames?: readonly string[];
  /** Returns undefined to ACK the response, or the reason to NACK it (the last accepted version is kept). */
  onResponse(response: DiscoveryResponse): string | undefined;
  /** The upstream stream ended (istiod gone, refused, or the proxy stopping); a new one re-subscribes by itself. */
  onDisconnect?(reason: string): void;
}

/** A request of the agent's that is not a subscription, e.g. a `HealthInformation` report. */
export interface AgentReport {
  readonly typeUrl: string;
  /** Absent: healthy; present: what is wrong (istiod's health check: `{code: 13, message}`). */
  readonly errorDetail?: RpcStatus;
}

export interface AgentXdsChannel {
  /** Subscribes; returns the unsubscribe (sent nothing upstream: istiod keeps the subscription until the stream ends). */
  subscribe(subscription: AgentSubscription): () => void;
  /**
   * Sends a report now when the upstream is open, and keeps the latest report of each type to send first on every
   * new upstream stream (istiod forgets a proxy's health with its connection).
   */
  report(report: AgentReport): void;
}

/** How components find the proxy's upstream: the proxy component provides it, later components take it. */
export interface AgentXdsChannels {
  /** The xDS proxy's upstream, once the proxy component has started; undefined when no proxy runs. */
  upstream(): AgentXdsChannel | undefined;
  /** The proxy component offers its upstream; the returned function withdraws it (on stop). */
  provide(channel: AgentXdsChannel): () => void;
}

export function createAgentXdsChannels(): AgentXdsChannels {
  let current: AgentXdsChannel | undefined;
  return {
    upstream: () => current,
    provide(channel) {
      current = channel;
      return () => {
        if (current === channel) current = undefined;
      };
    },
  };
}
