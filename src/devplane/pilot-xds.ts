/**
 * The dev Pilot's xDS v3 ADS server (`envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources`)
 * for the services in the object store: CDS (one EDS cluster per service port, named as Istio names outbound
 * clusters, `outbound|<port>||<host>`) and EDS (a ClusterLoadAssignment per cluster from the Endpoints). Plain text
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
 */
import { randomBytes } from "node:crypto";
import protobuf from "protobufjs";
import { constants as h2, createSecureServer, createServer } from "node:http2";
import type { Http2SecureServer, Http2Server, IncomingHttpHeaders, ServerHttp2Stream } from "node:http2";
import type { AddressInfo } from "node:net";
import type { TLSSocket } from "node:tls";
import type {
  AnyResource,
  ClusterLoadAssignmentResource,
  DiscoveryRequest,
  DiscoveryResponse,
  XdsNode,
} from "../xds/protos.js";
import {
  ADS_METHOD,
  CLUSTER_TYPE_URL,
  ENDPOINT_TYPE_URL,
  XDS_API_HEADER,
  decodeDiscoveryRequest,
  encodeDiscoveryResponse,
  packCluster,
  packClusterLoadAssignment,
} from "../xds/protos.js";
import type { Logger } from "../platform/logger.js";
import type { ObjectStore } from "./store.js";
import { findService, instancesOf, listServices } from "./pilot-registry.js";
import { serviceAddresses } from "./kube-dns.js";
import { NAME_TABLE_TYPE_URL, packNameTable } from "../xds/nds.js";
import type { NdsNameTable } from "../xds/nds.js";

/** gRPC status codes used here (google.rpc.Code). */
const GRPC = {
  OK: 0,
  INVALID_ARGUMENT: 3,
  PERMISSION_DENIED: 7,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAUTHENTICATED: 16,
} as const;

export type PilotXdsFault = "none" | "stream-reset";

export function outboundClusterName(port: number, hostname: string): string {
  return `outbound|${port}||${hostname}`;
}

function parseOutboundClusterName(name: string): { port: number; hostname: string } | undefined {
  const m = /^outbound\|(\d+)\|[^|]*\|(.+)$/.exec(name);
  if (m === null) return undefined;
  return { port: Number(m[1]), hostname: m[2] ?? "" };
}

export const UPSTREAM_TLS_CONTEXT_TYPE_URL =
  "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

/**
 * An SdsSecretConfig naming a secret of the proxy's `sds-grpc` cluster (the agent's SDS socket), as istiod writes it
 * (pilot/pkg/networking/core/cluster_tls.go, model.ConstructSdsSecretConfig): GRPC, V3, node on the first message
 * only, no initial fetch timeout. Hand-encoded (field numbers from Envoy's config_source.proto, grpc_service.proto,
 * tls.proto): the generated descriptor carries Secret and SdsSecretConfig, not the TLS contexts.
 */
function sdsSecretConfig(name: string): Uint8Array {
  const w = protobuf.Writer.create();
  w.uint32((1 << 3) | 2).string(name);
  w.uint32((2 << 3) | 2).fork(); // sds_config: ConfigSource
  w.uint32((2 << 3) | 2).fork(); // api_config_source: ApiConfigSource
  w.uint32((1 << 3) | 0).int32(2); // api_type: GRPC
  w.uint32((4 << 3) | 2).fork(); // grpc_services
  w.uint32((1 << 3) | 2).fork(); // envoy_grpc
  w.uint32((1 << 3) | 2).string("sds-grpc");
  w.ldelim().ldelim();
  w.uint32((7 << 3) | 0).bool(true); // set_node_on_first_message_only
  w.uint32((8 << 3) | 0).int32(2); // transport_api_version: V3
  w.ldelim();
  w.uint32((4 << 3) | 2)
    .fork()
    .ldelim(); // initial_fetch_timeout: 0s
  w.uint32((6 << 3) | 0).int32(2); // resource_api_version: V3
  w.ldelim();
  return w.finish();
}

/**
 * istiod's ISTIO_MUTUAL client TLS for an outbound cluster (cluster_tls.go buildIstioMutualTLS): the workload key
 * and chain `default` and the trust bundle `ROOTCA` over SDS, SNI `outbound_.<port>_._.<host>`. This is what makes
 * Envoy ask the agent's SDS server for its certificates.
 */
export function istioMutualTls(sni: string): Uint8Array {
  const w = protobuf.Writer.create();
  w.uint32((1 << 3) | 2).fork(); // common_tls_context
  w.uint32((6 << 3) | 2).bytes(sdsSecretConfig("default")); // tls_certificate_sds_secret_configs
  w.uint32((8 << 3) | 2).fork(); // combined_validation_context
  w.uint32((1 << 3) | 2)
    .fork()
    .ldelim(); // default_validation_context
  w.uint32((2 << 3) | 2).bytes(sdsSecretConfig("ROOTCA")); // validation_context_sds_secret_config
  w.ldelim();
  w.uint32((4 << 3) | 2).string("istio-peer-exchange"); // alpn_protocols
  w.uint32((4 << 3) | 2).string("istio");
  w.ldelim();
  w.uint32((2 << 3) | 2).string(sni);
  return w.finish();
}

/**
 * One EDS cluster per service port. `meshTls`: istiod's clusters, with Istio's mTLS over SDS; off for the legacy
 * profile's servers (Pilot 0.8 and older served no such clusters, and a bootstrap of that era has no `sds-grpc`).
 */
export function clusterResources(store: ObjectStore, meshTls = false): AnyResource[] {
  return listServices(store).flatMap((service) =>
    service.ports.map((port) => {
      const name = outboundClusterName(port.port, service.hostname);
      return packCluster({
        name,
        type: "EDS",
        eds_cluster_config: { service_name: name, eds_config: { ads: {} } },
        connect_timeout: { seconds: 10 },
        ...(meshTls
          ? {
              transport_socket: {
                name: "envoy.transport_sockets.tls",
                typed_config: {
                  type_url: UPSTREAM_TLS_CONTEXT_TYPE_URL,
                  value: istioMutualTls(`outbound_.${port.port}_._.${service.hostname}`),
                },
              },
            }
          : {}),
      });
    }),
  );
}

export function loadAssignment(store: ObjectStore, clusterName: string): ClusterLoadAssignmentResource {
  const parsed = parseOutboundClusterName(clusterName);
  const service = parsed === undefined ? undefined : findService(store, parsed.hostname);
  const port = service?.ports.find((p) => p.port === parsed?.port);
  const instances = service === undefined || port === undefined ? [] : instancesOf(store, service, port);
  return {
    cluster_name: clusterName,
    endpoints:
      instances.length === 0
        ? []
        : [
            {
              lb_endpoints: instances.map((i) => ({
                endpoint: { address: { socket_address: { address: i.ip, port_value: i.port } } },
              })),
            },
          ],
  };
}

export function endpointResources(store: ObjectStore, names: readonly string[]): AnyResource[] {
  const wanted =
    names.length > 0
      ? names
      : listServices(store).flatMap((s) => s.ports.map((p) => outboundClusterName(p.port, s.hostname)));
  return wanted.map((name) => packClusterLoadAssignment(loadAssignment(store, name)));
}

/**
 * NDS as istiod builds it (istio/istio `pilot/pkg/serviceregistry/.../dnsutil` BuildNameTable, 1.24): one entry
 * per Service host with its cluster IPs (a headless Service: its ready endpoint addresses), registry Kubernetes,
 * and the shortname and namespace from which the agent derives `name`, `name.ns` and `name.ns.svc`. A Service
 * with no address at all is left out, as istiod does.
 */
export function nameTable(store: ObjectStore): NdsNameTable {
  const table: Record<string, NdsNameTable[string]> = {};
  for (const service of listServices(store)) {
    const ips = serviceAddresses(store, service.namespace, service.name) ?? [];
    if (ips.length === 0) continue;
    table[service.hostname] = { ips, registry: "Kubernetes", shortname: service.name, namespace: service.namespace };
  }
  return table;
}

/** What a stream did, for tests and the dev plane's log. */
export interface XdsEvent {
  readonly stream: number;
  readonly kind: "request" | "ack" | "nack" | "response" | "reset" | "denied" | "closed";
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
}

export { XDS_API_HEADER };

function bearerToken(headers: IncomingHttpHeaders): string | undefined {
  const value = headers["authorization"];
  const m = typeof value === "string" ? /^Bearer\s+(\S+)$/i.exec(value) : null;
  return m?.[1];
}

function metadataText(node: XdsNode, key: string): string {
  const value = node.metadata[key];
  return typeof value === "string" ? value : "";
}

/**
 * istiod's checkConnectionIdentity (pilot/pkg/xds/auth.go, 1.24): the first identity whose SPIFFE namespace and
 * service account equal the node's (an empty node value matches any), or undefined. The node's namespace is its
 * NAMESPACE metadata, else the `<name>.<ns>` part of its id (model.ParseServiceNodeWithMetadata).
 */
export function matchingIdentity(node: XdsNode, identities: readonly string[]): string | undefined {
  const idNamespace = (node.id.split("~")[2] ?? "").split(".")[1] ?? "";
  const namespace = metadataText(node, "NAMESPACE") || idNamespace;
  const serviceAccount = metadataText(node, "SERVICE_ACCOUNT");
  return identities.find((raw) => {
    const m = /^spiffe:\/\/[^/]+\/ns\/([^/]+)\/sa\/([^/]+)$/.exec(raw);
    if (m === null) return false;
    return (namespace === "" || m[1] === namespace) && (serviceAccount === "" || m[2] === serviceAccount);
  });
}

/** gRPC's percent-encoding of grpc-message: only '%' and bytes outside printable ASCII (grpc-js decodes with decodeURI). */
function grpcMessage(text: string): string {
  return [...Buffer.from(text, "utf8")]
    .map((b) =>
      b >= 0x20 && b <= 0x7e && b !== 0x25
        ? String.fromCharCode(b)
        : `%${b.toString(16).toUpperCase().padStart(2, "0")}`,
    )
    .join("");
}

function frame(message: Buffer): Buffer {
  const out = Buffer.alloc(5 + message.length);
  out.writeUInt8(0, 0);
  out.writeUInt32BE(message.length, 1);
  message.copy(out, 5);
  return out;
}

function spiffeIdentities(stream: ServerHttp2Stream): string[] {
  const socket = stream.session?.socket as TLSSocket | undefined;
  if (socket === undefined || typeof socket.getPeerCertificate !== "function" || !socket.authorized) return [];
  const cert = socket.getPeerCertificate();
  return (cert.subjectaltname ?? "")
    .split(", ")
    .filter((n) => n.startsWith("URI:"))
    .map((n) => n.slice(4));
}

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

  const handleAds = (stream: ServerHttp2Stream, headers: IncomingHttpHeaders): void => {
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
    if (options.v3OnlyWhenAsked === true && headers[XDS_API_HEADER] !== "v3") {
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
        typeUrl === CLUSTER_TYPE_URL
          ? clusterResources(store, options.v3OnlyWhenAsked !== true)
          : typeUrl === ENDPOINT_TYPE_URL
            ? endpointResources(store, names)
            : typeUrl === NAME_TABLE_TYPE_URL
              ? [packNameTable(nameTable(store))]
              : [];
      const nonce = randomBytes(8).toString("hex");
      const response: DiscoveryResponse = {
        version_info: store.resourceVersion,
        resources,
        type_url: typeUrl,
        nonce,
        control_plane: { identifier: "istio-vm dev pilot" },
      };
      subscriptions.set(typeUrl, { nonce, names });
      stream.write(frame(encodeDiscoveryResponse(response)));
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
        });
        options.logger?.info("proxy connected", {
          stream: id,
          node: connected.id,
          cluster: connected.cluster,
          identity: peerIdentities.join(",") || "none",
          metadata: JSON.stringify(connected.metadata),
        });
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
          request = decodeDiscoveryRequest(message);
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
    if (event.resource === "services" || event.resource === "endpoints") for (const push of active) push();
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port ?? 0, options.host ?? "127.0.0.1", () => {
      server.off("error", reject);
      resolve();
    });
  });
  const info = server.address() as AddressInfo;
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
