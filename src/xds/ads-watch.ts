/**
 * A long-lived ADS subscription to one resource type (the agent's NDS stream): open `StreamAggregatedResources`,
 * ask for the type with no resource names, hand each response to the caller, ACK it (or NACK with the caller's
 * error, keeping the last accepted version, as Envoy does), and reconnect after any end of the stream with a
 * capped exponential backoff through the clock until `signal` aborts. The connection settings are fetched anew for
 * every attempt, so a renewed client certificate is used on the next connect. The subscription is a plain function
 * of (connection, type, handler): the same handler can later be fed from the agent's xDS proxy stream instead.
 *
 * An `outbox` adds the agent's own requests to each stream (its health reports: src/health/report.ts): it is
 * attached when a stream opens and detached when it ends. Without a `typeUrl` the stream subscribes to nothing and
 * carries only the outbox's requests. The node goes on the first request a stream sends, whichever it is.
 */
import * as grpc from "@grpc/grpc-js";
import type { Clock } from "../platform/clock.js";
import type { AdsProbeOptions } from "./ads-client.js";
import { createAdsClient, grpcStatusName } from "./ads-client.js";
import type { AnyResource, DiscoveryRequest, DiscoveryResponse } from "./protos.js";
import { ADS_METHOD, decodeDiscoveryResponse, encodeDiscoveryRequest } from "./protos.js";

export type AdsConnection = Omit<AdsProbeOptions, "timeoutMs" | "signal">;

/** Requests the agent itself sends on a stream (no node: the stream adds it to its first request). */
export type AdsRequest = Omit<DiscoveryRequest, "node">;

export interface AdsOutbox {
  /** A stream opened: `send` writes on it until the returned detach is called (when the stream ends). */
  attach(send: (request: AdsRequest) => void): () => void;
}

export interface AdsWatchOptions {
  /** The type to subscribe to; none: the stream carries only the outbox's requests. */
  readonly typeUrl?: string;
  /** The target, TLS material, token and node for the next attempt. A throw counts as a failed attempt. */
  connection(): Promise<AdsConnection>;
  /** Returns undefined to ACK, or the reason to NACK. */
  onResources?(resources: readonly AnyResource[], version: string): string | undefined;
  readonly outbox?: AdsOutbox;
  /** Each stream that ends, with why (for logs and status). */
  onDisconnect?(reason: string): void;
  readonly clock: Clock;
  readonly initialBackoffMs?: number;
  readonly maxBackoffMs?: number;
}

/** One stream until it ends; resolves with the reason and whether any response arrived. */
function runStream(
  connection: AdsConnection,
  options: AdsWatchOptions,
  signal: AbortSignal,
): Promise<{ reason: string; received: boolean }> {
  const client = createAdsClient(connection.target, connection.tls, { "grpc.keepalive_time_ms": 30_000 });
  const metadata = new grpc.Metadata();
  if (connection.token !== undefined) metadata.set("authorization", `Bearer ${connection.token}`);
  if (connection.clusterId !== undefined && connection.clusterId !== "")
    metadata.set("clusterid", connection.clusterId);
  return new Promise((resolve) => {
    const call = client.makeBidiStreamRequest<DiscoveryRequest, DiscoveryResponse>(
      ADS_METHOD,
      encodeDiscoveryRequest,
      decodeDiscoveryResponse,
      metadata,
    );
    let received = false;
    let accepted = "";
    let ended = false;
    let nodeSent = false;
    const write = (request: AdsRequest): void => {
      if (ended) return;
      call.write(nodeSent ? request : { ...request, node: connection.node });
      nodeSent = true;
    };
    const detachers: (() => void)[] = [];
    const end = (reason: string): void => {
      if (ended) return;
      ended = true;
      for (const detach of detachers.splice(0)) detach();
      signal.removeEventListener("abort", onAbort);
      call.cancel();
      client.close();
      resolve({ reason, received });
    };
    const onAbort = (): void => {
      end("stopped");
    };
    signal.addEventListener("abort", onAbort, { once: true });
    call.on("data", (response: DiscoveryResponse) => {
      if (options.typeUrl === undefined || response.type_url !== options.typeUrl) return;
      received = true;
      let problem: string | undefined;
      try {
        problem = options.onResources?.(response.resources, response.version_info);
      } catch (error) {
        problem = (error as Error).message;
      }
      if (problem === undefined) accepted = response.version_info;
      write({
        version_info: accepted,
        resource_names: [],
        type_url: options.typeUrl,
        response_nonce: response.nonce,
        ...(problem === undefined ? {} : { error_detail: { code: grpc.status.INVALID_ARGUMENT, message: problem } }),
      });
    });
    call.on("status", (status: grpc.StatusObject) => {
      end(`gRPC ${grpcStatusName(status.code)}: ${status.details || "stream ended"}`);
    });
    call.on("error", () => {
      // Reported through "status".
    });
    if (signal.aborted) {
      onAbort();
      return;
    }
    if (options.typeUrl !== undefined) {
      write({ version_info: "", resource_names: [], type_url: options.typeUrl, response_nonce: "" });
    }
    if (options.outbox !== undefined) detachers.push(options.outbox.attach(write));
  });
}

/** Runs until `signal` aborts; never rejects. */
export async function watchAds(options: AdsWatchOptions, signal: AbortSignal): Promise<void> {
  const initial = options.initialBackoffMs ?? 1000;
  const max = options.maxBackoffMs ?? 30_000;
  let backoff = initial;
  const stopped = (): boolean => signal.aborted;
  while (!stopped()) {
    let outcome: { reason: string; received: boolean };
    const started = options.clock.monotonic();
    try {
      outcome = await runStream(await options.connection(), options, signal);
    } catch (error) {
      outcome = { reason: (error as Error).message, received: false };
    }
    if (stopped()) return;
    options.onDisconnect?.(outcome.reason);
    // A stream that carried a response, or lived longer than the longest backoff (one that only sends, such as the
    // health reports', gets none), was a working connection: the next attempt starts from the initial backoff.
    const worked = outcome.received || options.clock.monotonic() - started >= max;
    backoff = worked ? initial : Math.min(max, backoff * 2);
    try {
      await options.clock.sleep(backoff * (0.8 + Math.random() * 0.4), signal);
    } catch {
      return;
    }
  }
}
