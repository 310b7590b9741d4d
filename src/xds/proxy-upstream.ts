/**
 * One upstream stream of the xDS proxy to istiod (src/xds/proxy.ts holds the loop that opens, ends and reopens it):
 * opening it (raw bytes both ways, mTLS and the token from the connection settings), writing to it (the stream's
 * first message gets a node when it has none), and the requests the agent sends on it for itself: its subscriptions
 * with their ACK or NACK, and its reports (src/xds/agent-channel.ts).
 */
import * as grpc from "@grpc/grpc-js";
import { describeError } from "../platform/errors.js";
import type { AgentReport, AgentSubscription } from "./agent-channel.js";
import { createAdsClient, grpcStatusName } from "./ads-client.js";
import type { AdsConnection } from "./ads-watch.js";
import type { DiscoveryRequest, DiscoveryResponse } from "./protos.js";
import { ADS_METHOD } from "./protos.js";
import type { NodeBytes } from "./proxy-wire.js";
import { nodeKey, withNode } from "./proxy-wire.js";

type RawCall = grpc.ClientDuplexStream<Buffer, Buffer>;

export interface Upstream {
  readonly call: RawCall;
  readonly client: grpc.Client;
  readonly target: string;
  /** The node the stream presents (key: id, cluster, metadata), once its first message is sent. */
  nodeKey: string | undefined;
  readonly answered: Set<string>;
  received: boolean;
  /** Set when the proxy itself ends the stream. */
  endReason: "node" | "stop" | "reload" | undefined;
  /** Last accepted version per agent-subscribed type. */
  readonly accepted: Map<string, string>;
  /** The node a first message without one gets: Envoy's last, else the bootstrap's. */
  readonly fallbackNode: NodeBytes;
}

export interface StreamOutcome {
  readonly reason: string;
  /** The status Envoy's stream ends with: istiod's (PERMISSION_DENIED …), else UNAVAILABLE. */
  readonly code: grpc.status;
  readonly received: boolean;
  readonly endReason: Upstream["endReason"];
}

export interface UpstreamHandlers {
  /** A message from istiod. */
  data(raw: Buffer): void;
  /** The stream ended (called at once, before the outcome resolves). */
  ended(): void;
}

/** Opens an upstream stream; `outcome` resolves when it ends, for whatever reason. */
export function openUpstream(
  connection: AdsConnection,
  fallbackNode: NodeBytes,
  handlers: UpstreamHandlers,
): { readonly upstream: Upstream; readonly outcome: Promise<StreamOutcome> } {
  const client = createAdsClient(connection.target, connection.tls, { "grpc.keepalive_time_ms": 30_000 });
  const metadata = new grpc.Metadata();
  if (connection.token !== undefined) metadata.set("authorization", `Bearer ${connection.token}`);
  if (connection.clusterId !== undefined && connection.clusterId !== "") {
    metadata.set("clusterid", connection.clusterId);
  }
  for (const [key, value] of Object.entries(connection.headers ?? {})) metadata.set(key, value);
  const call = client.makeBidiStreamRequest<Buffer, Buffer>(
    ADS_METHOD,
    (b: Buffer) => b,
    (b: Buffer) => b,
    metadata,
  );
  const upstream: Upstream = {
    call,
    client,
    target: connection.target,
    nodeKey: undefined,
    answered: new Set(),
    received: false,
    endReason: undefined,
    accepted: new Map(),
    fallbackNode,
  };
  const outcome = new Promise<StreamOutcome>((resolve) => {
    let ended = false;
    const end = (reason: string, code: grpc.status): void => {
      if (ended) return;
      ended = true;
      handlers.ended();
      call.cancel();
      client.close();
      resolve({ reason, code, received: upstream.received, endReason: upstream.endReason });
    };
    call.on("data", (raw: Buffer) => {
      handlers.data(raw);
    });
    call.on("status", (status: grpc.StatusObject) => {
      // An upstream that ended OK is still gone for Envoy: it hears UNAVAILABLE and reconnects.
      const code = status.code === grpc.status.OK ? grpc.status.UNAVAILABLE : status.code;
      end(`gRPC ${grpcStatusName(status.code)}: ${status.details || "stream ended"}`, code);
    });
    call.on("error", () => {
      // Reported through "status".
    });
  });
  return { upstream, outcome };
}

/** Writes a request upstream; the stream's first message gets a node when it has none. */
export function writeUpstream(upstream: Upstream, raw: Buffer, request: DiscoveryRequest): void {
  let bytes = raw;
  if (upstream.nodeKey === undefined) {
    if (request.node !== undefined && request.node.id !== "") {
      upstream.nodeKey = nodeKey(request.node);
    } else {
      bytes = withNode(raw, upstream.fallbackNode.bytes);
      upstream.nodeKey = upstream.fallbackNode.key;
    }
  }
  upstream.call.write(bytes);
}

/** The agent's subscription as a request on `upstream` (with the version it last accepted there). */
export function subscriptionRequest(upstream: Upstream, subscription: AgentSubscription): DiscoveryRequest {
  return {
    version_info: upstream.accepted.get(subscription.typeUrl) ?? "",
    resource_names: [...(subscription.resourceNames ?? [])],
    type_url: subscription.typeUrl,
    response_nonce: "",
  };
}

export function reportRequest(report: AgentReport): DiscoveryRequest {
  return {
    version_info: "",
    resource_names: [],
    type_url: report.typeUrl,
    response_nonce: "",
    ...(report.errorDetail === undefined ? {} : { error_detail: report.errorDetail }),
  };
}

/**
 * Hands a response to the agent's subscribers of its type and gives the ACK (the version accepted) or the NACK (the
 * first subscriber's problem, the last accepted version) to send back.
 */
export function answerSubscribers(
  upstream: Upstream,
  subscribers: readonly AgentSubscription[],
  response: DiscoveryResponse,
): { readonly problem: string | undefined; readonly request: DiscoveryRequest } {
  const type = response.type_url;
  let problem: string | undefined;
  for (const s of subscribers) {
    try {
      problem ??= s.onResponse(response);
    } catch (error) {
      problem ??= describeError(error);
    }
  }
  if (problem === undefined) upstream.accepted.set(type, response.version_info);
  return {
    problem,
    request: {
      version_info: upstream.accepted.get(type) ?? "",
      resource_names: [...(subscribers[0]?.resourceNames ?? [])],
      type_url: type,
      response_nonce: response.nonce,
      ...(problem === undefined ? {} : { error_detail: { code: grpc.status.INVALID_ARGUMENT, message: problem } }),
    },
  };
}
