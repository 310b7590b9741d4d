/**
 * ENVOY_XDS_API=v2 (legacy profile, Istio 0.8): the v2 bootstrap pilot-agent 0.8 wrote as `envoy-rev<N>.json` from
 * its template (istio/istio `tools/deb/envoy_bootstrap_v2.json`, installed as
 * `/var/lib/istio/envoy/envoy_bootstrap_tmpl.json`, rendered by `pkg/bootstrap/config.go` WriteBootstrap; release-0.8):
 *
 * - `node`: id `sidecar~<ip>~<id>~<domain>` (also on the command line), cluster = the service cluster, metadata
 *   = the `ISTIO_META_*` variables plus `"istio": "sidecar"` (src/xds/node-block.ts builds the legacy node, which
 *   also carries the VM's own fields; Pilot 0.8 ignores keys it does not know).
 * - `admin` on 127.0.0.1:15000 with its access log on stdout.
 * - `dynamic_resources`: LDS and CDS over ADS (`{"ads": {}}`), ADS as gRPC to cluster `xds-grpc` with the 1 s
 *   `refresh_delay` of `--discoveryRefreshDelay`.
 * - `xds-grpc`: Pilot's ADS port, 15010 in plain text or 15011 under MUTUAL_TLS (DISCOVERY_ADDRESS), HTTP/2, the
 *   template's circuit breakers and TCP keepalive, and under MUTUAL_TLS a `tls_context` with the three
 *   `/etc/certs` files and `verify_subject_alt_name` = Pilot's SPIFFE id (src/envoy/bootstrap.ts discoverySan).
 * - Istio's Prometheus listener (ENVOY_STATS_PORT) and its `prometheus_stats` cluster, as the v3 bootstrap has them
 *   (Prometheus scrapes it); left out at ENVOY_STATS_PORT=0. The template's zipkin cluster, tracing and statsd sink
 *   are left out: nothing here configures a collector.
 *
 * Written as canonical proto3 JSON (durations "1s", numbers as numbers, lists as lists) where the template relied on
 * the leniency of Envoy's parser of that era ({"seconds": 1, "nanos": 0}, "15000", a single object for a list), so
 * the file is valid for every v2 Envoy that accepts these fields. Checked against the v2 protos' field numbers and
 * types in src/envoy/bootstrap.test.ts (proto/envoy-v2/bootstrap.proto).
 */
import { isIP } from "node:net";
import type { BootstrapConfig, BootstrapInput, BootstrapJson } from "./bootstrap.js";
import {
  CONTROL_PLANE_CIRCUIT_BREAKERS,
  PROMETHEUS_CLUSTER,
  XDS_CLUSTER,
  bootstrapNode,
  discoverySan,
  fileTlsContext,
  socketAddress,
  staticCluster,
} from "./bootstrap.js";

/** pilot-agent's `--discoveryRefreshDelay` and `--connectTimeout` defaults (1 s each). */
const REFRESH_DELAY = "1s";
const CONNECT_TIMEOUT = "1s";
/** The template's `tls_context`: the workload files, and Pilot's SAN in v2's `verify_subject_alt_name`. */
function tlsContext(config: BootstrapConfig): BootstrapJson {
  return { common_tls_context: fileTlsContext(config, { verify_subject_alt_name: [discoverySan(config).value] }) };
}

function xdsCluster(config: BootstrapConfig): BootstrapJson {
  const { host, port } = config.DISCOVERY_ADDRESS;
  return {
    name: XDS_CLUSTER,
    // The template always said STRICT_DNS; an address literal needs no resolver.
    type: isIP(host) !== 0 ? "STATIC" : "STRICT_DNS",
    connect_timeout: CONNECT_TIMEOUT,
    lb_policy: "ROUND_ROBIN",
    ...(config.CONTROL_PLANE_AUTH_POLICY === "MUTUAL_TLS" ? { tls_context: tlsContext(config) } : {}),
    hosts: [socketAddress(host, port)],
    // The template's circuit breakers: the same limits as the v3 bootstrap's.
    circuit_breakers: CONTROL_PLANE_CIRCUIT_BREAKERS,
    upstream_connection_options: { tcp_keepalive: { keepalive_time: 300 } },
    http2_protocol_options: {},
  };
}

function prometheusCluster(config: BootstrapConfig): BootstrapJson {
  return {
    ...staticCluster(PROMETHEUS_CLUSTER, "0.250s"),
    hosts: [socketAddress("127.0.0.1", config.ENVOY_ADMIN_PORT)],
  };
}

/** GET /stats/prometheus on ENVOY_STATS_PORT, forwarded to the admin; v2 filters take a Struct `config`. */
function prometheusListener(config: BootstrapConfig): BootstrapJson {
  return {
    name: "prometheus",
    address: socketAddress("0.0.0.0", config.ENVOY_STATS_PORT),
    filter_chains: [
      {
        filters: [
          {
            name: "envoy.http_connection_manager",
            config: {
              codec_type: "AUTO",
              stat_prefix: "stats",
              route_config: {
                virtual_hosts: [
                  {
                    name: "backend",
                    domains: ["*"],
                    routes: [{ match: { prefix: "/stats/prometheus" }, route: { cluster: PROMETHEUS_CLUSTER } }],
                  },
                ],
              },
              http_filters: [{ name: "envoy.router" }],
            },
          },
        ],
      },
    ],
  };
}

export function renderV2Bootstrap(input: BootstrapInput): BootstrapJson {
  const { config } = input;
  const stats = config.ENVOY_STATS_PORT !== 0;
  return {
    node: bootstrapNode(input),
    admin: { access_log_path: "/dev/stdout", address: socketAddress("127.0.0.1", config.ENVOY_ADMIN_PORT) },
    dynamic_resources: {
      lds_config: { ads: {} },
      cds_config: { ads: {} },
      ads_config: {
        api_type: "GRPC",
        refresh_delay: REFRESH_DELAY,
        grpc_services: [{ envoy_grpc: { cluster_name: XDS_CLUSTER } }],
      },
    },
    static_resources: {
      clusters: [...(stats ? [prometheusCluster(config)] : []), xdsCluster(config)],
      listeners: stats ? [prometheusListener(config)] : [],
    },
  };
}
