/**
 * The dev Pilot's xDS v3 ADS server (`envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources`)
 * for the services in the object store: CDS, EDS and NDS as src/devplane/xds-resources.ts computes them. Plain text
 * (istiod's 15010) or TLS with a serving certificate from the dev mesh CA (istiod's 15012, SAN
 * `istiod.<ns>.svc`); client certificates are requested and, when `requireClientCert`, required.
 *
 * It speaks gRPC directly over node:http2 (length-prefixed messages, `grpc-status` trailers) rather than through
 * @grpc/grpc-js' server, because a test double must be able to misbehave the way a real network does: the
 * `stream-reset` fault answers the next request with an HTTP/2 RST_STREAM, which grpc-js' server cannot send.
 *
 * Protocol (docs/protocols.md, "xDS"): the first request on a stream carries the Node; a request with an empty nonce
 * subscribes; one echoing the last nonce of its type is an ACK (or a NACK when it carries error_detail) and gets no
 * reply unless its resource names changed; a stale nonce is ignored. Subscribed streams get a new response on every
 * store change.
 * Authentication and authorization as istiod does them (istio/istio 1.24 pilot/pkg/xds/auth.go, XDS_AUTH and
 * PILOT_ENABLE_XDS_IDENTITY_CHECK on): on the TLS port a stream must present a client certificate with a SPIFFE URI
 * or a service-account JWT (`authorization: Bearer`, audience istio-ca), else it ends with UNAUTHENTICATED before any
 * request; the plain-text port (15010) authenticates nobody. The first request's node must then match one of the
 * identities (checkConnectionIdentity: the node's NAMESPACE, else the namespace in its id, and SERVICE_ACCOUNT; an
 * empty value matches any), else the stream ends with PERMISSION_DENIED and a message naming both sides.
 *
 * Every connected proxy's node (id, cluster, metadata) and identity is logged when it connects and listed by
 * `connections()`, which the dev Pilot serves as `GET /istio-vm-dev/proxies` (istiod's /debug/connections).
 *
 * With `autoRegistration` (the istiod profile) a stream's first request registers its proxy's WorkloadEntry and its
 * close unregisters it; `HealthInformation` requests set the entry's health and get no answer, as with istiod
 * (src/devplane/pilot-autoreg.ts).
 */
import { randomBytes } from "node:crypto";
import { constants as h2, createSecureServer, createServer } from "node:http2";
import type { Http2SecureServer, Http2Server, IncomingHttpHeaders, ServerHttp2Stream } from "node:http2";
import type { AnyResource, DiscoveryRequest, DiscoveryResponse, XdsNode } from "../xds/protos.js";
import {
  ADS_METHOD,
  CLUSTER_TYPE_URL,
  ENDPOINT_TYPE_URL,
  HEALTH_INFO_TYPE_URL,
  XDS_API_HEADER,
  decodeDiscoveryRequest,
  encodeDiscoveryResponse,
} from "../xds/protos.js";
import type { Logger } from "../platform/logger.js";
import type { ObjectStore } from "./store.js";
import { NAME_TABLE_TYPE_URL, packNameTable } from "../xds/nds.js";
import type { AutoRegistration, RegisteredProxy } from "./pilot-autoreg.js";
import { AutoRegistrationError } from "./pilot-autoreg.js";
import { clusterResources, endpointResources, nameTable } from "./xds-resources.js";
import { listenOn } from "../platform/tcp.js";
import {
  GRPC,
  bearerToken,
  frame,
  grpcMessage,
  matchingIdentity,
  metadataText,
  parseSpiffeId,
  spiffeIdentities,
} from "./xds-wire.js";

export type PilotXdsFault = "none" | "stream-reset";

// What this file exported before the split, for the modules and branches that import them from here.
export {
  clusterResources,
  endpointResources,
  loadAssignment,
  nameTable,
  outboundClusterName,
} from "./xds-resources.js";
export { matchingIdentity } from "./xds-wire.js";

/** What a stream did, for tests and the dev plane's log. */
export interface XdsEvent {
  readonly stream: number;
  readonly kind: "request" | "ack" | "nack" | "response" | "ignored" | "reset" | "denied" | "closed" | "health";
  readonly typeUrl?: string;
  readonly nodeId?: string;
  readonly nonce?: string;
  readonly resources?: number;
  readonly metadata?: XdsNode["metadata"];
  /** URI SANs of the verified client certificate. */
  readonly peerIdentities?: readonly string[];
  readonly detail?: string;
}

/** A proxy with an open ADS stream: what it sent as its node, and who it proved to be. */
export interface ProxyConnection {
  readonly stream: number;
  /** The ADS server it is connected to (`host:port`), and whether over TLS. */
  readonly server: string;
  readonly tls: boolean;
  readonly peerAddress: string;
  readonly authenticatedBy: "certificate" | "token" | "none";
  readonly identities: readonly string[];
  readonly node: XdsNode;
  /** Type URLs the stream subscribed to. */
  readonly subscribed: readonly string[];
  /** `<namespace>/<name>` of the WorkloadEntry auto-registered for it, if any. */
  readonly workloadEntry?: string;
}

/** Checks a service-account JWT (audience istio-ca), as istiod does through TokenReview. */
export type XdsTokenVerifier = (token: string) => { namespace: string; serviceAccount: string } | undefined;

export interface PilotXdsServer {
  readonly host: string;
  readonly port: number;
  /** `host:port` for a gRPC target. */
  readonly address: string;
  readonly tls: boolean;
  readonly events: readonly XdsEvent[];
  /** The proxies connected now (streams past their first request), oldest first. */
  connections(): ProxyConnection[];
  setFault(fault: PilotXdsFault): void;
  close(): Promise<void>;
}

/**
 * Another ADS API served beside v3 on the same port, told apart by the gRPC method (the legacy profile's xDS v2,
 * src/devplane/pilot-xds-v2.ts). Its streams skip the v3 gate (`v3OnlyWhenAsked`); authentication, the identity
 * check, nonces and pushes are the same.
 */
export interface AdsApiVersion {
  readonly name: string;
  /** The gRPC path, `/<service>/StreamAggregatedResources`. */
  readonly method: string;
  decodeRequest(bytes: Buffer): DiscoveryRequest;
  encodeResponse(response: DiscoveryResponse): Buffer;
  /** Why the first request's node is refused (the stream ends with INVALID_ARGUMENT), or undefined. */
  checkNode?(node: XdsNode): string | undefined;
  /** The resources of a type for a node; undefined for a type this API does not serve (the request is ignored). */
  resources(store: ObjectStore, typeUrl: string, names: readonly string[], node: XdsNode): AnyResource[] | undefined;
}

export interface StartPilotXdsOptions {
  readonly store: ObjectStore;
  readonly host?: string;
  readonly port?: number;
  /** Serve TLS with this certificate (chain) and key; plain text without. */
  readonly tls?: {
    readonly certPem: string;
    readonly keyPem: string;
    /** Roots that client certificates must chain to (the mesh root). */
    readonly caPem: string;
    /** Refuse clients without a certificate at the TLS handshake (istiod accepts a bearer token instead). */
    readonly requireClientCert?: boolean;
  };
  /** Verifies bearer tokens on the TLS port; without it only client certificates authenticate. */
  readonly verifyToken?: XdsTokenVerifier;
  /** Trust domain of identities made from tokens (`spiffe://<td>/ns/<ns>/sa/<sa>`); default cluster.local. */
  readonly trustDomain?: string;
  readonly logger?: Logger;
  /**
   * The legacy profile's ADS servers: Istio 0.8's Pilot served xDS v2 and nothing before it served ADS at all, so
   * a v3 stream is answered only when it asks for v3 explicitly, with the request header `XDS_API_HEADER: v3`
   * (the legacy ENVOY_XDS_API=v3 bootstrap sends it as gRPC initial metadata); any other ends with UNIMPLEMENTED.
   */
  readonly v3OnlyWhenAsked?: boolean;
  /** Also serve this API (the legacy profile: xDS v2, src/devplane/pilot-xds-v2.ts). */
  readonly alsoServe?: AdsApiVersion;
  /** istiod's WorkloadEntry controller, shared by all ADS servers of one dev istiod. */
  readonly autoRegistration?: AutoRegistration;
}

export { XDS_API_HEADER };

interface Subscription {
  nonce: string;
  names: readonly string[];
}

export async function startPilotXds(options: StartPilotXdsOptions): Promise<PilotXdsServer> {
  const { store } = options;
  let fault: PilotXdsFault = "none";
  const events: XdsEvent[] = [];
  const connections = new Map<number, ProxyConnection>();
  let listening = "";
  const address = (): string => listening;
  const active = new Set<() => void>();
  let streamIds = 0;

  const handleAds = (stream: ServerHttp2Stream, headers: IncomingHttpHeaders, api?: AdsApiVersion): void => {
    const id = ++streamIds;
    const certificateIdentities = spiffeIdentities(stream);
    const token = options.tls === undefined || certificateIdentities.length > 0 ? undefined : bearerToken(headers);
    const fromToken = token === undefined ? undefined : options.verifyToken?.(token);
    const peerIdentities =
      fromToken === undefined
        ? certificateIdentities
        : [
            `spiffe://${options.trustDomain ?? "cluster.local"}/ns/${fromToken.namespace}/sa/${fromToken.serviceAccount}`,
          ];
    const authenticatedBy =
      certificateIdentities.length > 0 ? "certificate" : fromToken !== undefined ? "token" : "none";
    const peerAddress = `${stream.session?.socket.remoteAddress ?? "?"}:${stream.session?.socket.remotePort ?? "?"}`;
    const subscriptions = new Map<string, Subscription>();
    let node: XdsNode | undefined;
    let registered: RegisteredProxy | undefined;
    let finished = false;
    stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
    let status: { code: number; message: string } = { code: GRPC.OK, message: "" };
    stream.on("wantTrailers", () => {
      stream.sendTrailers({ "grpc-status": String(status.code), "grpc-message": grpcMessage(status.message) });
    });
    const finish = (code: number, message: string): void => {
      if (finished) return;
      finished = true;
      status = { code, message };
      stream.end();
    };
    if (options.tls !== undefined && authenticatedBy === "none") {
      // istiod's authenticate(): on a TLS connection every authenticator failed.
      const detail =
        token === undefined
          ? "authentication failure: no client certificate with a SPIFFE identity and no bearer token"
          : "authentication failure: the bearer token is not a valid service-account token for audience istio-ca";
      events.push({ stream: id, kind: "denied", detail });
      options.logger?.warn("xDS stream refused", { stream: id, peer: peerAddress, reason: detail });
      stream.on("error", () => undefined);
      finish(GRPC.UNAUTHENTICATED, detail);
      return;
    }
    if (api === undefined && options.v3OnlyWhenAsked === true && headers[XDS_API_HEADER] !== "v3") {
      const detail =
        "legacy Pilot (Istio 0.2–0.8) serves no xDS v3: 0.2–0.7 serve the v1 REST API (ENVOY_XDS_API=v1), 0.8 xDS v2; " +
        `send the header ${XDS_API_HEADER}: v3 to be served v3 by this dev Pilot anyway`;
      events.push({ stream: id, kind: "denied", detail });
      options.logger?.warn("xDS stream refused", { stream: id, peer: peerAddress, reason: detail });
      stream.on("error", () => undefined);
      finish(GRPC.UNIMPLEMENTED, detail);
      return;
    }
    const send = (typeUrl: string, names: readonly string[]): void => {
      if (finished || stream.destroyed) return;
      const resources =
        api !== undefined && node !== undefined
          ? api.resources(store, typeUrl, names, node)
          : typeUrl === CLUSTER_TYPE_URL
            ? clusterResources(store, options.v3OnlyWhenAsked !== true)
            : typeUrl === ENDPOINT_TYPE_URL
              ? endpointResources(store, names)
              : typeUrl === NAME_TABLE_TYPE_URL
                ? [packNameTable(nameTable(store))]
                : [];
      if (resources === undefined) {
        events.push({ stream: id, kind: "ignored", typeUrl, detail: `${api?.name ?? "v3"} does not serve ${typeUrl}` });
        options.logger?.warn("ADS: unknown watched resources", { stream: id, type: typeUrl, api: api?.name });
        return;
      }
      const nonce = randomBytes(8).toString("hex");
      const response: DiscoveryResponse = {
        version_info: store.resourceVersion,
        resources,
        type_url: typeUrl,
        nonce,
        control_plane: { identifier: "istio-vm dev pilot" },
      };
      subscriptions.set(typeUrl, { nonce, names });
      stream.write(frame((api?.encodeResponse ?? encodeDiscoveryResponse)(response)));
      events.push({ stream: id, kind: "response", typeUrl, nonce, resources: resources.length });
    };
    const onRequest = (request: DiscoveryRequest): void => {
      if (fault === "stream-reset") {
        events.push({ stream: id, kind: "reset", typeUrl: request.type_url, detail: "fault injected" });
        finished = true;
        stream.close(h2.NGHTTP2_INTERNAL_ERROR);
        return;
      }
      if (node === undefined) {
        if (request.node === undefined || request.node.id === "") {
          finish(GRPC.INVALID_ARGUMENT, "the first DiscoveryRequest on a stream must carry node.id");
          return;
        }
        node = request.node;
        const nodeProblem = api?.checkNode?.(node);
        if (nodeProblem !== undefined) {
          finish(GRPC.INVALID_ARGUMENT, nodeProblem);
          return;
        }
        if (peerIdentities.length > 0 && matchingIdentity(node, peerIdentities) === undefined) {
          const ns = metadataText(node, "NAMESPACE");
          const sa = metadataText(node, "SERVICE_ACCOUNT");
          const detail =
            `authorization failed: no identities (${peerIdentities.join(", ")}) matched the node's ` +
            `NAMESPACE=${ns} SERVICE_ACCOUNT=${sa}`;
          events.push({ stream: id, kind: "denied", nodeId: node.id, detail, peerIdentities });
          options.logger?.warn("xDS stream refused", { stream: id, node: node.id, peer: peerAddress, reason: detail });
          finish(GRPC.PERMISSION_DENIED, detail);
          return;
        }
        const connected = node;
        if (options.autoRegistration !== undefined) {
          const matched = matchingIdentity(node, peerIdentities);
          try {
            registered = options.autoRegistration.connect({
              node,
              identity: matched === undefined ? undefined : parseSpiffeId(matched),
            });
          } catch (error) {
            if (!(error instanceof AutoRegistrationError)) throw error;
            events.push({ stream: id, kind: "denied", nodeId: node.id, detail: error.message, peerIdentities });
            options.logger?.warn("auto-registration refused", { stream: id, node: node.id, reason: error.message });
            finish(error.grpcCode, error.message);
            return;
          }
        }
        const entry = registered === undefined ? undefined : `${registered.namespace}/${registered.entryName}`;
        connections.set(id, {
          stream: id,
          server: address(),
          tls: options.tls !== undefined,
          peerAddress,
          authenticatedBy,
          identities: peerIdentities,
          node: connected,
          get subscribed() {
            return [...subscriptions.keys()];
          },
          ...(entry === undefined ? {} : { workloadEntry: entry }),
        });
        options.logger?.info("proxy connected", {
          stream: id,
          node: connected.id,
          cluster: connected.cluster,
          identity: peerIdentities.join(",") || "none",
          metadata: JSON.stringify(connected.metadata),
        });
      }
      if (request.type_url === HEALTH_INFO_TYPE_URL) {
        // istiod's handleWorkloadHealthcheck: no response; only a registered proxy's report has an entry to land on.
        events.push({
          stream: id,
          kind: "health",
          nodeId: node.id,
          ...(request.error_detail === undefined ? {} : { detail: request.error_detail.message }),
        });
        if (registered !== undefined) options.autoRegistration?.reportHealth(registered, request.error_detail);
        return;
      }
      const current = subscriptions.get(request.type_url);
      const common = {
        stream: id,
        typeUrl: request.type_url,
        nodeId: node.id,
        metadata: node.metadata,
        peerIdentities,
      };
      if (request.response_nonce === "") {
        events.push({ ...common, kind: "request" });
        send(request.type_url, request.resource_names);
        return;
      }
      if (current === undefined || request.response_nonce !== current.nonce) return; // stale: a newer response is on its way
      if (request.error_detail !== undefined) {
        events.push({ ...common, kind: "nack", nonce: request.response_nonce, detail: request.error_detail.message });
        return;
      }
      events.push({ ...common, kind: "ack", nonce: request.response_nonce });
      const sameNames =
        request.resource_names.length === current.names.length &&
        request.resource_names.every((n, i) => n === current.names[i]);
      if (!sameNames) send(request.type_url, request.resource_names);
    };

    let pending = Buffer.alloc(0);
    stream.on("data", (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      while (!finished && pending.length >= 5) {
        const length = pending.readUInt32BE(1);
        if (pending.length < 5 + length) break;
        if (pending.readUInt8(0) !== 0) {
          finish(GRPC.UNIMPLEMENTED, "compressed messages are not supported");
          return;
        }
        const message = pending.subarray(5, 5 + length);
        pending = pending.subarray(5 + length);
        let request: DiscoveryRequest;
        try {
          request = (api?.decodeRequest ?? decodeDiscoveryRequest)(message);
        } catch (error) {
          finish(GRPC.INTERNAL, `cannot decode DiscoveryRequest: ${(error as Error).message}`);
          return;
        }
        onRequest(request);
      }
    });
    const push = (): void => {
      for (const [typeUrl, sub] of subscriptions) send(typeUrl, sub.names);
    };
    active.add(push);
    stream.on("end", () => {
      finish(GRPC.OK, "");
    });
    stream.on("close", () => {
      active.delete(push);
      if (connections.delete(id)) options.logger?.info("proxy disconnected", { stream: id, node: node?.id });
      if (registered !== undefined) options.autoRegistration?.disconnect(registered);
      events.push({ stream: id, kind: "closed" });
    });
    stream.on("error", () => undefined);
  };

  const onStream = (stream: ServerHttp2Stream, headers: IncomingHttpHeaders): void => {
    const contentType = headers["content-type"] ?? "";
    if (headers[":method"] !== "POST" || !contentType.startsWith("application/grpc")) {
      stream.respond({ ":status": 415, "content-type": "text/plain" }, { endStream: false });
      stream.end("gRPC only\n");
      return;
    }
    if (options.alsoServe !== undefined && headers[":path"] === options.alsoServe.method) {
      handleAds(stream, headers, options.alsoServe);
      return;
    }
    if (headers[":path"] !== ADS_METHOD) {
      stream.respond(
        {
          ":status": 200,
          "content-type": "application/grpc",
          "grpc-status": String(GRPC.UNIMPLEMENTED),
          "grpc-message": grpcMessage(`the dev Pilot serves only ${ADS_METHOD}`),
        },
        { endStream: true },
      );
      return;
    }
    handleAds(stream, headers);
  };

  const server: Http2Server | Http2SecureServer =
    options.tls === undefined
      ? createServer()
      : createSecureServer({
          cert: options.tls.certPem,
          key: options.tls.keyPem,
          ca: options.tls.caPem,
          requestCert: true,
          rejectUnauthorized: options.tls.requireClientCert ?? false,
          ALPNProtocols: ["h2"],
        });
  server.on("stream", onStream);
  const sessions = new Set<import("node:http2").ServerHttp2Session>();
  server.on("session", (session) => {
    sessions.add(session);
    session.on("close", () => sessions.delete(session));
    session.on("error", () => undefined);
  });
  const unwatch = store.watch((event) => {
    if (["services", "endpoints", "workloadentries"].includes(event.resource)) for (const push of active) push();
  });
  const info = await listenOn(server, options.port ?? 0, options.host ?? "127.0.0.1");
  listening = info.address.includes(":") ? `[${info.address}]:${info.port}` : `${info.address}:${info.port}`;
  return {
    host: info.address,
    port: info.port,
    address: listening,
    tls: options.tls !== undefined,
    events,
    connections: () =>
      [...connections.values()].map((c) => ({ ...c, subscribed: [...c.subscribed], identities: [...c.identities] })),
    setFault: (f) => {
      fault = f;
    },
    close: () =>
      new Promise<void>((resolve) => {
        unwatch();
        for (const session of sessions) session.destroy();
        server.close(() => {
          resolve();
        });
      }),
  };
}
