/**
 * The agent's xDS proxy (istiod profile): Envoy's ADS stream ends on a Unix socket of the agent, and the agent
 * carries it to istiod on one gRPC stream it authenticates itself (mTLS with the workload certificate, read anew for
 * every connection). This follows Istio's agent (istio/istio pkg/istio-agent/xds_proxy.go, 1.2x); where it differs,
 * the comment below says why.
 *
 * - Messages pass through as bytes: Envoy's requests (its node, client features and all) reach istiod as Envoy
 *   wrote them, istiod's responses reach Envoy as istiod wrote them. Only the header fields are decoded (type URL,
 *   nonce, version) to route them.
 * - One upstream stream at a time. It opens when there is something to carry (Envoy subscribed, or the agent has a
 *   subscription or report of its own, src/xds/agent-channel.ts) and is reopened after any end, with a capped
 *   exponential backoff through the clock (reset once a stream got an answer). The first message on each upstream
 *   stream carries a node: Envoy's own when that message is Envoy's first, else the node Envoy last presented, or,
 *   before Envoy ever connected, the node the bootstrap gives it (the same builder, src/xds/node-block.ts). When
 *   Envoy presents another node than the stream was opened with (a reload changed the bootstrap), the stream is
 *   reopened with Envoy's.
 * - Responses of a type the agent subscribed to (NDS) go to the agent, which ACKs or NACKs them; every other
 *   response goes to Envoy's stream.
 * - When the upstream stream ends, Envoy's stream is ended with UNAVAILABLE and the reason, so Envoy re-subscribes
 *   (Envoy's own retry) on the next stream; what it sends meanwhile waits for the upstream.
 * - Envoy streams: the newest one is served; an older one still open (the parent epoch during a hot restart, which
 *   keeps its configuration while it drains) stays open but gets nothing and its requests are dropped. Istio's agent
 *   ends the older stream instead, which makes a draining parent reconnect and take the stream back from its child.
 * - Ready once istiod has answered CDS and LDS on the current upstream stream.
 *
 * The socket is 0600 in a 0700 directory, both owned by Envoy's user (as the SDS socket, src/sds/server.ts): whoever
 * connects speaks to istiod with this VM's identity.
 *
 * This file holds the proxy's state and its routing: the upstream loop (open, end, back off, reopen), Envoy's streams
 * and the agent's subscriptions and reports. The socket server is in proxy-server.ts, one upstream stream (opening,
 * writing, the agent's requests and ACK/NACK) in proxy-upstream.ts, type names and node bytes in proxy-wire.ts.
 */
import * as grpc from "@grpc/grpc-js";
import type { Clock } from "../platform/clock.js";
import { describeError } from "../platform/errors.js";
import type { FileOwner, FileSystem } from "../platform/fs.js";
import type { Logger } from "../platform/logger.js";
import type { AgentReport, AgentSubscription, AgentXdsChannel } from "./agent-channel.js";
import type { AdsConnection } from "./ads-watch.js";
import type { DiscoveryRequest, DiscoveryResponse } from "./protos.js";
import { CLUSTER_TYPE_URL, decodeDiscoveryRequest, decodeDiscoveryResponse, encodeDiscoveryRequest } from "./protos.js";
import type { Downstream, EnvoyCall } from "./proxy-server.js";
import { serveAdsSocket } from "./proxy-server.js";
import type { StreamOutcome, Upstream } from "./proxy-upstream.js";
import {
  answerSubscribers,
  openUpstream,
  reportRequest,
  subscriptionRequest,
  writeUpstream,
} from "./proxy-upstream.js";
import type { NodeBytes } from "./proxy-wire.js";
import { LISTENER_TYPE_URL, encodeNode, fieldBytes, nodeKey, typeName } from "./proxy-wire.js";

export { LISTENER_TYPE_URL, typeName } from "./proxy-wire.js";

/** What the proxy reports to counters (src/envoy/xds-proxy-component.ts wires them to /metrics). */
export interface XdsProxyObserver {
  /** Envoy opened a stream on the socket. */
  envoyStreamOpened?(): void;
  /** An upstream stream was opened; `reconnect`: one ended before. */
  upstreamOpened?(reconnect: boolean): void;
  /** A message passed: `upstream` (Envoy or the agent → istiod) or `downstream` (istiod → Envoy or the agent). */
  forwarded?(direction: "upstream" | "downstream", type: string): void;
  /** Anything STATUS= shows changed. */
  changed?(): void;
}

export interface XdsProxyOptions {
  readonly socketPath: string;
  readonly fs: FileSystem;
  readonly logger: Logger;
  readonly clock: Clock;
  /** Envoy's user, when the agent runs as another (root); absent: the agent's own user. */
  readonly owner?: FileOwner;
  /**
   * istiod's address, TLS material, token and the node the bootstrap gives Envoy, for the next upstream stream
   * (called for every attempt: a renewed certificate is used on the next connection). A throw is a failed attempt.
   */
  connection(): Promise<AdsConnection>;
  readonly observer?: XdsProxyObserver;
  readonly initialBackoffMs?: number;
  readonly maxBackoffMs?: number;
}

export type UpstreamState = "idle" | "connecting" | "connected" | "backoff" | "stopped";

export interface XdsProxyStatus {
  readonly listening: boolean;
  readonly socketPath: string;
  readonly upstream: UpstreamState;
  /** istiod's address of the current (or last) upstream stream. */
  readonly target: string | undefined;
  /** Types istiod answered on the current upstream stream (short names). */
  readonly answered: readonly string[];
  /** CDS and LDS answered on the current stream. */
  readonly ready: boolean;
  /** Envoy streams open on the socket (the newest is served). */
  readonly envoyStreams: number;
  readonly upstreamStreams: number;
  readonly reconnects: number;
  /** Why the last upstream stream ended, or why the last attempt failed. */
  readonly lastError: string | undefined;
  readonly nextAttemptAt: number | undefined;
}

export class XdsProxy implements AgentXdsChannel {
  readonly #o: XdsProxyOptions;
  #server: grpc.Server | undefined;
  readonly #downstreams = new Map<number, Downstream>();
  #active: Downstream | undefined;
  #nextId = 0;
  #upstream: Upstream | undefined;
  #state: UpstreamState = "idle";
  #target: string | undefined;
  #lastError: string | undefined;
  #nextAttemptAt: number | undefined;
  #upstreamStreams = 0;
  #reconnects = 0;
  /** Envoy's node as it last presented it (encoded Node and its key). */
  #envoyNode: NodeBytes | undefined;
  readonly #subscriptions = new Set<AgentSubscription>();
  readonly #reports = new Map<string, AgentReport>();
  readonly #stop = new AbortController();
  #wake: (() => void) | undefined;
  #loop: Promise<void> | undefined;

  constructor(options: XdsProxyOptions) {
    this.#o = options;
  }

  /** Creates the socket (replacing a stale one) with its final mode, serves it, and starts the upstream loop. */
  async listen(): Promise<void> {
    const { fs, socketPath, owner } = this.#o;
    this.#server = await serveAdsSocket(fs, socketPath, owner, (call) => {
      this.#openDownstream(call);
    });
    this.#o.logger.info("xDS proxy listening", { socket: socketPath });
    this.#loop = this.#run();
  }

  status(): XdsProxyStatus {
    const answered = [...(this.#upstream?.answered ?? [])];
    return {
      listening: this.#server !== undefined,
      socketPath: this.#o.socketPath,
      upstream: this.#state,
      target: this.#target,
      answered: answered.map(typeName),
      ready: answered.includes(CLUSTER_TYPE_URL) && answered.includes(LISTENER_TYPE_URL),
      envoyStreams: this.#downstreams.size,
      upstreamStreams: this.#upstreamStreams,
      reconnects: this.#reconnects,
      lastError: this.#lastError,
      nextAttemptAt: this.#nextAttemptAt,
    };
  }

  /** The upstream is reopened with the next connection settings (a reload changed istiod's address). */
  reconnect(): void {
    this.#endUpstream("reload");
  }

  subscribe(subscription: AgentSubscription): () => void {
    this.#subscriptions.add(subscription);
    const upstream = this.#upstream;
    if (upstream !== undefined) this.#sendSubscription(upstream, subscription);
    else this.#wake?.();
    return () => {
      this.#subscriptions.delete(subscription);
    };
  }

  report(report: AgentReport): void {
    this.#reports.set(report.typeUrl, report);
    const upstream = this.#upstream;
    if (upstream !== undefined) this.#sendReport(upstream, report);
    else this.#wake?.();
  }

  async close(): Promise<void> {
    this.#stop.abort();
    this.#wake?.();
    this.#endUpstream("stop");
    await this.#loop;
    for (const d of this.#downstreams.values()) this.#endDownstream(d, undefined);
    this.#downstreams.clear();
    const server = this.#server;
    this.#server = undefined;
    server?.forceShutdown();
    this.#state = "stopped";
    await this.#o.fs.remove(this.#o.socketPath);
  }

  // ── Envoy's side ────────────────────────────────────────────────────────────────────────

  #openDownstream(call: EnvoyCall): void {
    const d: Downstream = { id: this.#nextId++, call, queue: [], first: true, closed: false };
    this.#downstreams.set(d.id, d);
    const previous = this.#active;
    this.#active = d;
    this.#o.observer?.envoyStreamOpened?.();
    this.#o.logger.info("Envoy connected to the xDS proxy", {
      stream: d.id,
      ...(previous === undefined ? {} : { replaces: previous.id }),
    });
    const gone = (): void => {
      if (d.closed) return;
      d.closed = true;
      this.#downstreams.delete(d.id);
      if (this.#active === d) this.#active = undefined;
      this.#o.logger.info("Envoy's xDS stream closed", { stream: d.id });
      this.#o.observer?.changed?.();
    };
    call.on("data", (raw: Buffer) => {
      this.#fromEnvoy(d, raw);
    });
    call.on("end", () => {
      gone();
      call.end();
    });
    call.on("cancelled", gone);
    call.on("error", gone);
    call.on("close", gone);
    this.#o.observer?.changed?.();
  }

  #fromEnvoy(d: Downstream, raw: Buffer): void {
    if (d !== this.#active) {
      this.#o.logger.debug("request from an older Envoy stream dropped", { stream: d.id });
      return;
    }
    let request: DiscoveryRequest;
    try {
      request = decodeDiscoveryRequest(raw);
    } catch (error) {
      this.#endDownstream(d, {
        code: grpc.status.INVALID_ARGUMENT,
        details: `cannot decode DiscoveryRequest: ${describeError(error)}`,
      });
      return;
    }
    if (d.first) {
      d.first = false;
      if (request.node !== undefined && request.node.id !== "") {
        const key = nodeKey(request.node);
        const bytes = fieldBytes(raw, 2);
        if (bytes !== undefined) this.#envoyNode = { bytes, key };
        const upstream = this.#upstream;
        if (upstream?.nodeKey !== undefined && upstream.nodeKey !== key) {
          this.#o.logger.info("Envoy presents another node than the upstream stream; reopening it", {
            node: request.node.id,
          });
          d.queue.push({ raw, request });
          this.#endUpstream("node");
          return;
        }
      }
    }
    const upstream = this.#upstream;
    if (upstream === undefined || d.queue.length > 0) {
      d.queue.push({ raw, request });
      this.#wake?.();
      return;
    }
    this.#sendUpstream(upstream, raw, request);
  }

  #endDownstream(d: Downstream, status: { code: grpc.status; details: string } | undefined): void {
    if (d.closed) return;
    d.closed = true;
    this.#downstreams.delete(d.id);
    if (this.#active === d) this.#active = undefined;
    if (status === undefined) d.call.end();
    else d.call.emit("error", status);
    this.#o.observer?.changed?.();
  }

  // ── istiod's side ───────────────────────────────────────────────────────────────────────

  /** Whether an upstream stream has anything to carry. */
  #wanted(): boolean {
    return this.#active !== undefined || this.#subscriptions.size > 0 || this.#reports.size > 0;
  }

  async #waitUntilWanted(): Promise<void> {
    if (!this.#wanted()) this.#setState("idle");
    while (!this.#wanted() && !this.#stop.signal.aborted) {
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
      });
      this.#wake = undefined;
    }
  }

  #setState(state: UpstreamState): void {
    if (this.#state === state) return;
    this.#state = state;
    this.#o.observer?.changed?.();
  }

  async #run(): Promise<void> {
    const initial = this.#o.initialBackoffMs ?? 1000;
    const max = this.#o.maxBackoffMs ?? 30_000;
    let backoff = initial;
    const signal = this.#stop.signal;
    // A function, not the property: it changes while the loop awaits.
    const stopped = (): boolean => signal.aborted;
    while (!stopped()) {
      await this.#waitUntilWanted();
      if (stopped()) return;
      this.#setState("connecting");
      let outcome: StreamOutcome;
      try {
        const connection = await this.#o.connection();
        if (stopped()) return;
        outcome = await this.#stream(connection);
      } catch (error) {
        outcome = {
          reason: describeError(error),
          code: grpc.status.UNAVAILABLE,
          received: false,
          endReason: undefined,
        };
      }
      this.#upstream = undefined;
      if (stopped() || outcome.endReason === "stop") return;
      for (const s of this.#subscriptions) s.onDisconnect?.(outcome.reason);
      if (outcome.endReason === "node") {
        // Ended on purpose for Envoy's new node: Envoy's stream, whose first request waits in its queue, stays.
        backoff = initial;
        continue;
      }
      const active = this.#active;
      if (active !== undefined) {
        // Envoy re-subscribes on its next stream (its own retry), which waits for the next upstream.
        this.#endDownstream(
          active,
          outcome.endReason === "reload"
            ? { code: grpc.status.UNAVAILABLE, details: "the agent reconnects to istiod (configuration reloaded)" }
            : { code: outcome.code, details: `upstream to istiod: ${outcome.reason}` },
        );
      }
      if (outcome.endReason === "reload") {
        backoff = initial;
        continue;
      }
      this.#lastError = outcome.reason;
      backoff = outcome.received ? initial : Math.min(max, backoff * 2);
      const delay = Math.round(backoff * (0.8 + Math.random() * 0.4));
      this.#o.logger.warn("xDS upstream stream to istiod ended; reconnecting", {
        target: this.#target,
        reason: outcome.reason,
        retryInMs: delay,
      });
      this.#nextAttemptAt = this.#o.clock.now() + delay;
      this.#setState("backoff");
      try {
        await this.#o.clock.sleep(delay, signal);
      } catch {
        return;
      } finally {
        this.#nextAttemptAt = undefined;
      }
    }
  }

  /** One upstream stream, until it ends. */
  #stream(connection: AdsConnection): Promise<StreamOutcome> {
    const { upstream, outcome } = openUpstream(connection, this.#envoyNode ?? encodeNode(connection.node), {
      data: (raw) => {
        this.#fromIstiod(upstream, raw);
      },
      ended: () => {
        // At once, not when the loop resumes: what Envoy sends from now on waits for the next stream.
        if (this.#upstream === upstream) this.#upstream = undefined;
      },
    });
    this.#target = connection.target;
    this.#upstream = upstream;
    const reconnect = this.#upstreamStreams > 0;
    this.#upstreamStreams++;
    if (reconnect) this.#reconnects++;
    this.#o.observer?.upstreamOpened?.(reconnect);
    this.#o.logger.info("xDS upstream stream to istiod opened", { target: connection.target });
    const active = this.#active;
    if (active !== undefined) {
      const queued = active.queue;
      active.queue = [];
      for (const q of queued) this.#sendUpstream(upstream, q.raw, q.request);
    }
    for (const report of this.#reports.values()) this.#sendReport(upstream, report);
    for (const subscription of this.#subscriptions) this.#sendSubscription(upstream, subscription);
    return outcome;
  }

  #sendUpstream(upstream: Upstream, raw: Buffer, request: DiscoveryRequest): void {
    writeUpstream(upstream, raw, request);
    this.#o.observer?.forwarded?.("upstream", typeName(request.type_url));
  }

  #sendAgentRequest(upstream: Upstream, request: DiscoveryRequest): void {
    this.#sendUpstream(upstream, encodeDiscoveryRequest(request), request);
  }

  #sendSubscription(upstream: Upstream, subscription: AgentSubscription): void {
    this.#sendAgentRequest(upstream, subscriptionRequest(upstream, subscription));
  }

  #sendReport(upstream: Upstream, report: AgentReport): void {
    this.#sendAgentRequest(upstream, reportRequest(report));
  }

  #fromIstiod(upstream: Upstream, raw: Buffer): void {
    if (upstream !== this.#upstream) return;
    let response: DiscoveryResponse;
    try {
      response = decodeDiscoveryResponse(raw);
    } catch (error) {
      this.#lastError = `istiod sent a message that is no DiscoveryResponse: ${describeError(error)}`;
      upstream.call.cancel();
      return;
    }
    const type = response.type_url;
    this.#o.observer?.forwarded?.("downstream", typeName(type));
    const wasReady = upstream.answered.has(CLUSTER_TYPE_URL) && upstream.answered.has(LISTENER_TYPE_URL);
    upstream.received = true;
    upstream.answered.add(type);
    if (this.#state !== "connected") {
      this.#lastError = undefined;
      this.#setState("connected");
      this.#o.logger.info("istiod answers on the xDS upstream stream", {
        target: upstream.target,
        type: typeName(type),
      });
    }
    const subscribers = [...this.#subscriptions].filter((s) => s.typeUrl === type);
    if (subscribers.length > 0) {
      const { problem, request } = answerSubscribers(upstream, subscribers, response);
      if (problem !== undefined) {
        this.#o.logger.warn("the agent rejected an xDS response (NACK)", { type: typeName(type), error: problem });
      }
      this.#sendAgentRequest(upstream, request);
    } else if (this.#reports.has(type)) {
      // An answer to one of the agent's reports (istiod sends none for health): never Envoy's business.
      this.#o.logger.debug("response to an agent report dropped", { type: typeName(type) });
    } else {
      const active = this.#active;
      if (active === undefined) {
        this.#o.logger.debug("response for Envoy dropped: no Envoy stream", { type: typeName(type) });
      } else {
        active.call.write(raw);
      }
    }
    const ready = upstream.answered.has(CLUSTER_TYPE_URL) && upstream.answered.has(LISTENER_TYPE_URL);
    if (ready && !wasReady) {
      this.#o.logger.info("xDS proxy ready: istiod answered CDS and LDS", { target: upstream.target });
      this.#o.observer?.changed?.();
    }
  }

  /** Ends the current upstream stream on purpose (the loop then opens the next one at once). */
  #endUpstream(reason: NonNullable<Upstream["endReason"]>): void {
    const upstream = this.#upstream;
    if (upstream === undefined) return;
    upstream.endReason = reason;
    upstream.call.cancel();
  }
}
