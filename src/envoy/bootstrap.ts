/**
 * The Envoy configuration the agent writes as `envoy-rev<N>.json` (pure: configuration in, JSON value out), in the
 * API ENVOY_XDS_API names: `v1` (the legacy profile's default) is the JSON configuration pilot-agent 0.2–0.7 wrote,
 * see renderV1Bootstrap below; `v2` is Istio 0.8's ADS bootstrap (src/envoy/bootstrap-v2.ts); `v3` is the bootstrap
 * described here.
 *
 * What is in the v3 bootstrap, and why:
 * - `node`: id, cluster and metadata as src/xds/node-block.ts builds them (what pilot-agent sends for the same
 *   settings; the agent's own xDS streams send the same node).
 * - `admin` on 127.0.0.1 only: /ready, /drain_listeners and /quitquitquit are how the agent drives Envoy, and nothing
 *   off the machine may reach them.
 * - one static cluster `xds-grpc`, HTTP/2 (gRPC): istiod profile, the agent's xDS proxy socket
 *   (src/xds/proxy-socket.ts), which carries the stream to istiod with the agent's own mTLS; legacy profile,
 *   DISCOVERY_ADDRESS with mTLS from the workload files in OUTPUT_CERTS and the control plane's SAN checked (or plain
 *   text under CONTROL_PLANE_AUTH_POLICY=NONE). Everything else (listeners, clusters, routes, endpoints) comes over
 *   ADS, so the bootstrap depends only on configuration, never on Pilot's data.
 * - optionally Istio's Prometheus listener (ENVOY_STATS_PORT, 15090) that serves the admin's /stats/prometheus, and
 *   (istiod profile) Istio's health listener (ENVOY_STATUS_PORT, 15021) that serves the agent's /healthz/ready.
 *
 * Certificates (istiod profile): Envoy gets them from the agent over SDS, as Istio's own bootstrap does (istio/istio
 * tools/packaging/common/envoy_bootstrap.json): a static cluster `sds-grpc` reaches the agent's Unix socket
 * (src/sds/socket.ts) as a `pipe`, and the TLS contexts istiod sends over CDS and LDS name Istio's secrets
 * `default` (key and chain) and `ROOTCA` (trust bundle) there. The bootstrap itself holds no TLS context (its one
 * TLS connection, to istiod, is the agent's), no file name of a key, so Envoy never reads one from disk, and a
 * renewal is an SDS push: the bootstrap does not change and no epoch starts.
 *
 * Legacy profile: the certificate files are referenced by path, not inlined: Envoy reads them when the epoch starts,
 * and a renewal makes the supervisor start a new epoch (hot restart), as pilot-agent 0.8 did.
 */
import { isIP } from "node:net";
import { join } from "node:path";
import type { ConfigValues } from "../config/registry.js";
import type { NodeBlockConfig, NodeBlockInput } from "../xds/node-block.js";
import { buildNodeBlock, nodeId } from "../xds/node-block.js";
import type { StructValue } from "../xds/protos.js";
import { XDS_API_HEADER } from "../xds/protos.js";
import { sdsSocketPath, usesSds } from "../sds/socket.js";
import { usesXdsProxy, xdsProxySocketPath } from "../xds/proxy-socket.js";
import { renderV2Bootstrap } from "./bootstrap-v2.js";

/** The JSON value of a bootstrap: plain data, so it can be hashed, diffed, written and validated. */
export type BootstrapJson = { readonly [key: string]: BootstrapValue };
type BootstrapValue = string | number | boolean | null | readonly BootstrapValue[] | BootstrapJson;

export const XDS_CLUSTER = "xds-grpc";
export const PROMETHEUS_CLUSTER = "prometheus_stats";
export const AGENT_CLUSTER = "agent";
/** Istio's name for the cluster of the agent's SDS socket; istiod-generated TLS contexts refer to it. */
export const SDS_CLUSTER = "sds-grpc";
export const CERT_FILES = { chain: "cert-chain.pem", key: "key.pem", root: "root-cert.pem" } as const;

/** The parts of the configuration the bootstrap depends on. */
export type BootstrapConfig = NodeBlockConfig &
  Pick<ConfigValues, "ISTIO_SYSTEM_NAMESPACE" | "TRUST_DOMAIN" | "OUTPUT_CERTS" | "ENVOY_XDS_API" | "ISTIO_RUN_DIR">;

export interface BootstrapInput extends NodeBlockInput {
  readonly config: BootstrapConfig;
}

/**
 * The SAN Envoy requires of the discovery server's certificate. istiod: ISTIOD_SAN (a DNS name). Legacy Pilot:
 * `spiffe://<trust domain>/ns/<ns>/sa/istio-pilot-service-account`, where `<ns>` is the second label of the
 * discovery host, or POD_NAMESPACE when the host has no dot (pilot-agent 0.8); for an IP address, whose labels say
 * nothing, the control plane's namespace.
 */
export function discoverySan(config: BootstrapConfig): { readonly type: "DNS" | "URI"; readonly value: string } {
  if (config.ISTIO_CONTROL_PLANE === "istiod") return { type: "DNS", value: config.ISTIOD_SAN };
  const host = config.DISCOVERY_ADDRESS.host;
  const labels = host.split(".");
  const ns = isIP(host) !== 0 ? config.ISTIO_SYSTEM_NAMESPACE : (labels[1] ?? config.POD_NAMESPACE);
  return { type: "URI", value: `spiffe://${config.TRUST_DOMAIN}/ns/${ns}/sa/istio-pilot-service-account` };
}

/** Node metadata: see src/xds/node-block.ts, which builds the node for the bootstrap and the agent's xDS streams. */
export function nodeMetadata(input: BootstrapInput): Readonly<Record<string, StructValue>> {
  return buildNodeBlock(input).metadata;
}

/** `--service-node`: the node id, also in the bootstrap (Envoy takes the command line's when both are set). */
export function serviceNode(input: BootstrapInput): string {
  return nodeId(input.config, input.hostname);
}

export function socketAddress(address: string, port: number): BootstrapJson {
  return { socket_address: { address, port_value: port } };
}

/** The bootstrap's `node` (id, cluster, metadata), the same in v2 and v3. */
export function bootstrapNode(input: BootstrapInput): BootstrapJson {
  const node = buildNodeBlock(input);
  return { id: node.id, cluster: node.cluster, metadata: node.metadata };
}

function tlsTransportSocket(config: BootstrapConfig): BootstrapJson {
  const san = discoverySan(config);
  return {
    name: "envoy.transport_sockets.tls",
    typed_config: {
      "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
      // istiod behind an east-west gateway is routed by SNI; legacy Pilot's certificate names a SPIFFE URI, no host.
      ...(san.type === "DNS" ? { sni: san.value } : {}),
      common_tls_context: fileTlsContext(config, {
        match_typed_subject_alt_names: [{ san_type: san.type, matcher: { exact: san.value } }],
      }),
    },
  };
}

/**
 * Legacy: the workload files in OUTPUT_CERTS, read by Envoy when an epoch starts. The same in v2 and v3 but for the
 * field that names the control plane's SAN (`sanMatch`): v2 `verify_subject_alt_name`, v3
 * `match_typed_subject_alt_names`.
 */
export function fileTlsContext(config: BootstrapConfig, sanMatch: BootstrapJson): BootstrapJson {
  return {
    alpn_protocols: ["h2"],
    tls_certificates: [
      {
        certificate_chain: { filename: join(config.OUTPUT_CERTS, CERT_FILES.chain) },
        private_key: { filename: join(config.OUTPUT_CERTS, CERT_FILES.key) },
      },
    ],
    validation_context: {
      trusted_ca: { filename: join(config.OUTPUT_CERTS, CERT_FILES.root) },
      ...sanMatch,
    },
  };
}

/** The head every static cluster of both ADS bootstraps starts with (v2 and v3 alike). */
export function staticCluster(name: string, connectTimeout: string): BootstrapJson {
  return { name, type: "STATIC", connect_timeout: connectTimeout, lb_policy: "ROUND_ROBIN" };
}

/** A Unix socket of the agent (`pipe`) as a cluster, HTTP/2 for gRPC; `limits` for the control-plane stream. */
function pipeCluster(name: string, path: string, limits: boolean): BootstrapJson {
  return {
    ...staticCluster(name, "1s"),
    load_assignment: {
      cluster_name: name,
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { pipe: { path } } } }] }],
    },
    ...(limits ? { circuit_breakers: CONTROL_PLANE_CIRCUIT_BREAKERS } : {}),
    typed_extension_protocol_options: {
      "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        explicit_http_config: { http2_protocol_options: {} },
      },
    },
  };
}

/** The agent's SDS socket as a cluster. */
function sdsCluster(config: BootstrapConfig): BootstrapJson {
  return pipeCluster(SDS_CLUSTER, sdsSocketPath(config), false);
}

/**
 * Limits far above what one control-plane connection needs: Envoy's defaults (1024) would only ever hurt. The same
 * values as Istio 0.8's v2 template (its circuit_breakers), so v2 and v3 share them.
 */
const GENEROUS_LIMITS = { max_connections: 100000, max_pending_requests: 100000, max_requests: 100000 };
export const CONTROL_PLANE_CIRCUIT_BREAKERS: BootstrapJson = {
  thresholds: [
    { priority: "DEFAULT", ...GENEROUS_LIMITS },
    { priority: "HIGH", ...GENEROUS_LIMITS },
  ],
};

/**
 * istiod: the agent's xDS proxy socket as a `pipe`, HTTP/2 for gRPC, as Istio's bootstrap has it (istio/istio
 * tools/packaging/common/envoy_bootstrap.json, `xds-grpc` to `./etc/istio/proxy/XDS`). No TLS and no keepalive:
 * the agent authenticates the stream to istiod and watches that connection itself (src/xds/proxy.ts).
 */
function xdsProxyCluster(config: BootstrapConfig): BootstrapJson {
  return pipeCluster(XDS_CLUSTER, xdsProxySocketPath(config), true);
}

function xdsCluster(config: BootstrapConfig): BootstrapJson {
  if (usesXdsProxy(config)) return xdsProxyCluster(config);
  const { host, port } = config.DISCOVERY_ADDRESS;
  const literal = isIP(host) !== 0;
  return {
    name: XDS_CLUSTER,
    type: literal ? "STATIC" : "STRICT_DNS",
    ...(literal ? {} : { respect_dns_ttl: true, dns_lookup_family: "V4_PREFERRED" }),
    connect_timeout: "1s",
    lb_policy: "ROUND_ROBIN",
    load_assignment: {
      cluster_name: XDS_CLUSTER,
      endpoints: [{ lb_endpoints: [{ endpoint: { address: socketAddress(host, port) } }] }],
    },
    circuit_breakers: CONTROL_PLANE_CIRCUIT_BREAKERS,
    // A load balancer or NAT between the VM and the control plane drops idle connections silently; keepalives
    // notice it (TCP) and keep the ADS stream's HTTP/2 connection alive (PING every 30 s, dead after 10 s silence).
    upstream_connection_options: {
      tcp_keepalive: { keepalive_time: 300, keepalive_interval: 30, keepalive_probes: 3 },
    },
    typed_extension_protocol_options: {
      "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        explicit_http_config: {
          http2_protocol_options: { connection_keepalive: { interval: "30s", timeout: "10s" } },
        },
      },
    },
    ...(config.CONTROL_PLANE_AUTH_POLICY === "MUTUAL_TLS" ? { transport_socket: tlsTransportSocket(config) } : {}),
  };
}

function localCluster(name: string, port: number): BootstrapJson {
  return {
    ...staticCluster(name, "0.250s"),
    load_assignment: {
      cluster_name: name,
      endpoints: [{ lb_endpoints: [{ endpoint: { address: socketAddress("127.0.0.1", port) } }] }],
    },
  };
}

/**
 * Istio's 15021 listener (istiod profile, ENVOY_STATUS_PORT): GET /healthz/ready, answered by the agent's readiness
 * endpoint on STATUS_PORT, as pilot-agent's bootstrap routes it; load balancers and istiod's health checks probe it.
 */
function statusListener(config: BootstrapConfig): BootstrapJson {
  return routeListener("status", config.ENVOY_STATUS_PORT, "agent", "/healthz/ready", AGENT_CLUSTER);
}

/** A listener on 0.0.0.0:`port` that forwards GET `prefix` to `cluster` and nothing else. */
function routeListener(name: string, port: number, statPrefix: string, prefix: string, cluster: string): BootstrapJson {
  return {
    name,
    address: socketAddress("0.0.0.0", port),
    filter_chains: [{ filters: [httpConnectionManager(statPrefix, [{ match: { prefix }, route: { cluster } }])] }],
  };
}

function httpConnectionManager(statPrefix: string, routes: readonly BootstrapJson[]): BootstrapJson {
  return {
    name: "envoy.filters.network.http_connection_manager",
    typed_config: {
      "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
      stat_prefix: statPrefix,
      codec_type: "AUTO",
      route_config: { virtual_hosts: [{ name: "backend", domains: ["*"], routes }] },
      http_filters: [
        {
          name: "envoy.filters.http.router",
          typed_config: { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" },
        },
      ],
    },
  };
}

/** Istio's 15090 listener: GET /stats/prometheus only, forwarded to the admin (which itself stays on loopback). */
function prometheusListener(config: BootstrapConfig): BootstrapJson {
  return routeListener("prometheus", config.ENVOY_STATS_PORT, "stats", "/stats/prometheus", PROMETHEUS_CLUSTER);
}

/**
 * pilot-agent's v1 settings, fixed by its flag defaults (istio/pilot 0.2 `cmd/pilot-agent`, docs/protocols.md):
 * `--discoveryRefreshDelay 1s` (how often Envoy polls LDS, CDS, SDS and RDS) and `--connectTimeout 1s`.
 */
export const V1_REFRESH_DELAY_MS = 1000;
export const V1_CONNECT_TIMEOUT_MS = 1000;
/** The v1 discovery clusters, named as pilot-agent named them (proxy/envoy/config.go: RDSName, LDSName, SDSName, CDSName). */
export const V1_CLUSTERS = { lds: "lds", rds: "rds", sds: "sds", cds: "cds" } as const;

/** A v1 discovery cluster: strict_dns, round_robin, `tcp://<discovery address>`, mTLS to Pilot's SPIFFE id. */
function v1DiscoveryCluster(config: BootstrapConfig, name: string): BootstrapJson {
  const { host, port } = config.DISCOVERY_ADDRESS;
  const url = `tcp://${host.includes(":") ? `[${host}]` : host}:${port}`;
  return {
    name,
    connect_timeout_ms: V1_CONNECT_TIMEOUT_MS,
    type: "strict_dns",
    lb_type: "round_robin",
    hosts: [{ url }],
    ...(config.CONTROL_PLANE_AUTH_POLICY === "MUTUAL_TLS"
      ? {
          ssl_context: {
            cert_chain_file: join(config.OUTPUT_CERTS, CERT_FILES.chain),
            private_key_file: join(config.OUTPUT_CERTS, CERT_FILES.key),
            ca_cert_file: join(config.OUTPUT_CERTS, CERT_FILES.root),
            verify_subject_alt_name: [discoverySan(config).value],
          },
        }
      : {}),
  };
}

/**
 * ENVOY_XDS_API=v1: the JSON configuration pilot-agent 0.2–0.7 wrote as `envoy-rev<N>.json` (istio/pilot
 * `proxy/envoy/config.go` buildConfig; golden `proxy/envoy/testdata/envoy-sidecar-auth.json.golden`): no static
 * listeners, LDS from cluster `lds`, the cluster manager with `rds` and `lds` and the SDS and CDS discovery clusters,
 * all four pointing at Pilot's v1 REST API, admin on 127.0.0.1. The node is not in the file: Envoy of that era takes
 * it from `--service-cluster` and `--service-node` (src/envoy/command-line.ts). Checked against Envoy's v1 JSON
 * schemas in src/envoy/bootstrap-v1.test.ts.
 */
export function renderV1Bootstrap(input: BootstrapInput): BootstrapJson {
  const { config } = input;
  return {
    listeners: [],
    lds: { cluster: V1_CLUSTERS.lds, refresh_delay_ms: V1_REFRESH_DELAY_MS },
    admin: { access_log_path: "/dev/stdout", address: `tcp://127.0.0.1:${config.ENVOY_ADMIN_PORT}` },
    cluster_manager: {
      clusters: [v1DiscoveryCluster(config, V1_CLUSTERS.rds), v1DiscoveryCluster(config, V1_CLUSTERS.lds)],
      sds: { cluster: v1DiscoveryCluster(config, V1_CLUSTERS.sds), refresh_delay_ms: V1_REFRESH_DELAY_MS },
      cds: { cluster: v1DiscoveryCluster(config, V1_CLUSTERS.cds), refresh_delay_ms: V1_REFRESH_DELAY_MS },
    },
  };
}

/** Why the bootstrap has the API it has, for `istio-vm envoy bootstrap` and the agent's log. */
export function xdsApiReason(
  config: Pick<ConfigValues, "ENVOY_XDS_API" | "ISTIO_CONTROL_PLANE">,
  explicit: boolean,
): string {
  const what = {
    v1: "Envoy v1 JSON configuration, polling Pilot's v1 REST API (/v1/listeners, /v1/clusters, /v1/routes, /v1/registration): Istio 0.2–0.7, Envoy ≤ 1.7",
    v2: "xDS v2 over ADS: Istio 0.8 Pilot, Envoy ≤ 1.16",
    v3: "xDS v3 over ADS: istiod, current Envoy",
  }[config.ENVOY_XDS_API];
  const why = explicit
    ? "set by ENVOY_XDS_API"
    : `the ${config.ISTIO_CONTROL_PLANE} profile's default (ENVOY_XDS_API unset)`;
  return `${config.ENVOY_XDS_API}: ${what}; ${why}`;
}

export function renderBootstrap(input: BootstrapInput): BootstrapJson {
  if (input.config.ENVOY_XDS_API === "v1") return renderV1Bootstrap(input);
  if (input.config.ENVOY_XDS_API === "v2") return renderV2Bootstrap(input);
  return renderAdsBootstrap(input);
}

function renderAdsBootstrap(input: BootstrapInput): BootstrapJson {
  const { config } = input;
  const stats = config.ENVOY_STATS_PORT !== 0;
  const status = config.ISTIO_CONTROL_PLANE === "istiod" && config.ENVOY_STATUS_PORT !== 0;
  const ads = { ads: {}, resource_api_version: "V3" };
  return {
    node: bootstrapNode(input),
    admin: { address: socketAddress("127.0.0.1", config.ENVOY_ADMIN_PORT) },
    dynamic_resources: {
      lds_config: ads,
      cds_config: ads,
      ads_config: {
        api_type: "GRPC",
        transport_api_version: "V3",
        set_node_on_first_message_only: true,
        grpc_services: [
          {
            envoy_grpc: { cluster_name: XDS_CLUSTER },
            // Legacy profile with ENVOY_XDS_API=v3: no Pilot of that era serves v3; the header asks the dev Pilot
            // (istio-vm dev) for it explicitly, and is ignored by any other server.
            ...(config.ISTIO_CONTROL_PLANE === "legacy"
              ? { initial_metadata: [{ key: XDS_API_HEADER, value: "v3" }] }
              : {}),
          },
        ],
      },
    },
    static_resources: {
      clusters: [
        xdsCluster(config),
        ...(usesSds(config) ? [sdsCluster(config)] : []),
        ...(stats ? [localCluster(PROMETHEUS_CLUSTER, config.ENVOY_ADMIN_PORT)] : []),
        ...(status ? [localCluster(AGENT_CLUSTER, config.STATUS_PORT)] : []),
      ],
      listeners: [...(stats ? [prometheusListener(config)] : []), ...(status ? [statusListener(config)] : [])],
    },
    layered_runtime: {
      layers: [
        // Envoy warns without a downstream connection limit; Istio sets this one, the largest int32.
        { name: "global config", static_layer: { "overload.global_downstream_max_connections": 2147483647 } },
        { name: "admin", admin_layer: {} },
      ],
    },
  };
}

/** The file a bootstrap is written to: one per epoch, as the original (`/etc/istio/proxy/envoy-rev<N>.json`). */
export function bootstrapPath(dir: string, epoch: number): string {
  return join(dir, `envoy-rev${epoch}.json`);
}

/** The text written to disk: stable key order (as rendered) and a trailing newline. */
export function serializeBootstrap(bootstrap: BootstrapJson): string {
  return `${JSON.stringify(bootstrap, null, 2)}\n`;
}
