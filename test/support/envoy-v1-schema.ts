/**
 * Envoy's v1 JSON configuration rules, as JSON schemas, for the objects the v1 bootstrap (src/envoy/bootstrap.ts)
 * and the dev Pilot's v1 answers (src/devplane/pilot-v1.ts) use; validated with ajv.
 *
 * Source: Envoy's own v1 schemas, envoyproxy/envoy `source/common/json/config_schemas.cc` (the 1.x releases that
 * still had the v1 API; read at commit 155ba71f, the 1.5/1.6-era file): TOP_LEVEL_CONFIG_SCHEMA, LDS_CONFIG_SCHEMA,
 * CLUSTER_MANAGER_SCHEMA (its `sds`/`cds` definitions), CLUSTER_SCHEMA (with its `ssl_context` and `circuit_breakers`),
 * CDS_SCHEMA, SDS_SCHEMA, LDS_SCHEMA, LISTENER_SCHEMA, HTTP_CONN_NETWORK_FILTER_SCHEMA, RDS_CONFIGURATION_SCHEMA,
 * TCP_PROXY_NETWORK_FILTER_SCHEMA, ROUTE_CONFIGURATION_SCHEMA, VIRTUAL_HOST_CONFIGURATION_SCHEMA and
 * ROUTE_ENTRY_CONFIGURATION_SCHEMA. Envoy checked each object with its own schema where it parsed it (a cluster
 * inside `cluster_manager.clusters` is `{"type": "object"}` in CLUSTER_MANAGER_SCHEMA and then CLUSTER_SCHEMA when
 * the cluster is built); here they are nested with `$ref` so one validation covers the whole document.
 *
 * Translated from draft-04 (Envoy's validator) to draft-07 (ajv): `"minimum": 0, "exclusiveMinimum": true` is
 * written `"exclusiveMinimum": 0`. Only the properties listed in Envoy's schemas are allowed where Envoy said
 * `"additionalProperties": false`; the SDS host and the filters' own `config` (checked by each filter) are as open
 * as Envoy left them, except the filters this project emits (http_connection_manager, tcp_proxy, router), whose
 * configs are checked against their schemas.
 */
import { Ajv } from "ajv";
import type { ErrorObject, ValidateFunction } from "ajv";

const positive = { type: "integer", exclusiveMinimum: 0 } as const;

const clusterSslContext = {
  type: "object",
  properties: {
    alpn_protocols: { type: "string" },
    cert_chain_file: { type: "string" },
    private_key_file: { type: "string" },
    ca_cert_file: { type: "string" },
    verify_certificate_hash: { type: "string" },
    verify_subject_alt_name: { type: "array", items: { type: "string" } },
    cipher_suites: { type: "string", minLength: 1 },
    ecdh_curves: { type: "string", minLength: 1 },
    sni: { type: "string" },
  },
  additionalProperties: false,
} as const;

const circuitBreakers = {
  type: "object",
  properties: {
    max_connections: { type: "integer" },
    max_pending_requests: { type: "integer" },
    max_requests: { type: "integer" },
    max_retries: { type: "integer" },
  },
  additionalProperties: false,
} as const;

/** CLUSTER_SCHEMA (health checks, outlier detection and http2 settings are not used here and left open). */
const cluster = {
  type: "object",
  properties: {
    name: { type: "string", minLength: 1 },
    type: { type: "string", enum: ["static", "strict_dns", "logical_dns", "sds", "original_dst"] },
    connect_timeout_ms: positive,
    per_connection_buffer_limit_bytes: positive,
    lb_type: { type: "string", enum: ["round_robin", "least_request", "random", "ring_hash", "original_dst_lb"] },
    ring_hash_lb_config: { type: "object" },
    hosts: {
      type: "array",
      minItems: 1,
      uniqueItems: true,
      items: {
        type: "object",
        properties: { url: { type: "string" } },
        required: ["url"],
        additionalProperties: false,
      },
    },
    service_name: { type: "string" },
    health_check: { type: "object" },
    max_requests_per_connection: positive,
    circuit_breakers: {
      type: "object",
      properties: { default: circuitBreakers, high: circuitBreakers },
      additionalProperties: false,
    },
    ssl_context: clusterSslContext,
    features: { type: "string", enum: ["http2"] },
    http2_settings: { type: "object" },
    dns_refresh_rate_ms: positive,
    dns_resolvers: { type: "array", items: { type: "string" }, minItems: 1, uniqueItems: true },
    dns_lookup_family: { type: "string", enum: ["v4_only", "v6_only", "auto"] },
    cleanup_interval_ms: positive,
    outlier_detection: { type: "object" },
  },
  required: ["name", "type", "connect_timeout_ms", "lb_type"],
  additionalProperties: false,
} as const;

/** CLUSTER_MANAGER_SCHEMA's `sds` and `cds` definitions. */
const discoveryCluster = (required: readonly string[], apiType: boolean): object => ({
  type: "object",
  properties: {
    cluster: { $ref: "#/definitions/cluster" },
    refresh_delay_ms: positive,
    ...(apiType ? { api_type: { type: "string", enum: ["REST_LEGACY", "REST", "GRPC"] } } : {}),
  },
  required,
  additionalProperties: false,
});

/** ROUTE_ENTRY_CONFIGURATION_SCHEMA (weighted clusters, retries and the rest not used here, left as objects). */
const routeEntry = {
  type: "object",
  properties: {
    prefix: { type: "string" },
    path: { type: "string" },
    regex: { type: "string" },
    cluster: { type: "string" },
    cluster_header: { type: "string" },
    weighted_clusters: { type: "object" },
    host_redirect: { type: "string" },
    path_redirect: { type: "string" },
    prefix_rewrite: { type: "string" },
    host_rewrite: { type: "string" },
    auto_host_rewrite: { type: "boolean" },
    use_websocket: { type: "boolean" },
    case_sensitive: { type: "boolean" },
    timeout_ms: { type: "integer" },
    runtime: { type: "object" },
    retry_policy: { type: "object" },
    shadow: { type: "object" },
    priority: { type: "string", enum: ["default", "high"] },
    headers: { type: "array", minItems: 1, items: { type: "object" } },
    query_parameters: { type: "array", minItems: 1, items: { type: "object" } },
    rate_limits: { type: "array" },
    include_vh_rate_limits: { type: "boolean" },
    hash_policy: { type: "object" },
    request_headers_to_add: { type: "array" },
    opaque_config: { type: "object" },
    decorator: { type: "object" },
    cors: { type: "object" },
  },
  additionalProperties: false,
} as const;

/** VIRTUAL_HOST_CONFIGURATION_SCHEMA. */
const virtualHost = {
  type: "object",
  properties: {
    name: { type: "string" },
    domains: { type: "array", items: { type: "string" } },
    routes: { type: "array", items: routeEntry },
    require_ssl: { type: "string", enum: ["all", "external_only"] },
    virtual_clusters: { type: "array", minItems: 1 },
    rate_limits: { type: "array" },
    request_headers_to_add: { type: "array" },
    cors: { type: "object" },
  },
  required: ["name", "domains", "routes"],
  additionalProperties: false,
} as const;

/** ROUTE_CONFIGURATION_SCHEMA: the RDS answer and an inline `route_config`. */
const routeConfiguration = {
  type: "object",
  properties: {
    validate_clusters: { type: "boolean" },
    virtual_hosts: { type: "array", items: virtualHost },
    internal_only_headers: { type: "array", items: { type: "string" } },
    response_headers_to_add: { type: "array" },
    response_headers_to_remove: { type: "array", items: { type: "string" } },
    request_headers_to_add: { type: "array" },
  },
  required: ["virtual_hosts"],
  additionalProperties: false,
} as const;

/** HTTP_CONN_NETWORK_FILTER_SCHEMA, with RDS_CONFIGURATION_SCHEMA for `rds`. */
const httpConnectionManager = {
  type: "object",
  properties: {
    codec_type: { type: "string", enum: ["http1", "http2", "auto"] },
    stat_prefix: { type: "string" },
    rds: {
      type: "object",
      properties: {
        cluster: { type: "string" },
        route_config_name: { type: "string" },
        refresh_delay_ms: positive,
        api_type: { type: "string", enum: ["REST_LEGACY", "REST", "GRPC"] },
      },
      required: ["cluster", "route_config_name"],
      additionalProperties: false,
    },
    route_config: routeConfiguration,
    filters: {
      type: "array",
      minItems: 1,
      items: {
        type: "object",
        properties: {
          type: { type: "string", enum: ["encoder", "decoder", "both"] },
          name: { type: "string" },
          config: { type: "object" },
        },
        required: ["name", "config"],
        additionalProperties: false,
      },
    },
    add_user_agent: { type: "boolean" },
    tracing: {
      type: "object",
      properties: {
        operation_name: { type: "string", enum: ["ingress", "egress"] },
        request_headers_for_tags: { type: "array", uniqueItems: true, items: { type: "string" } },
      },
      required: ["operation_name"],
      additionalProperties: false,
    },
    http1_settings: { type: "object" },
    http2_settings: { type: "object" },
    server_name: { type: "string" },
    idle_timeout_s: { type: "integer" },
    drain_timeout_ms: { type: "integer" },
    access_log: { type: "array" },
    use_remote_address: { type: "boolean" },
    forward_client_cert: {
      type: "string",
      enum: ["forward_only", "append_forward", "sanitize", "sanitize_set", "always_forward_only"],
    },
    set_current_client_cert_details: { type: "array" },
    generate_request_id: { type: "boolean" },
  },
  required: ["codec_type", "stat_prefix", "filters"],
  additionalProperties: false,
  // One of the two ways to get routes (Envoy's HttpConnectionManagerConfig throws without either).
  oneOf: [{ required: ["rds"] }, { required: ["route_config"] }],
} as const;

/** TCP_PROXY_NETWORK_FILTER_SCHEMA. */
const tcpProxy = {
  type: "object",
  properties: {
    stat_prefix: { type: "string" },
    route_config: {
      type: "object",
      properties: {
        routes: {
          type: "array",
          items: {
            type: "object",
            properties: {
              cluster: { type: "string" },
              source_ip_list: { type: "array", items: { type: "string" } },
              source_ports: { type: "string", minLength: 1 },
              destination_ip_list: { type: "array", items: { type: "string" } },
              destination_ports: { type: "string", minLength: 1 },
            },
            required: ["cluster"],
            additionalProperties: false,
          },
        },
      },
      additionalProperties: false,
    },
    access_log: { type: "array" },
  },
  required: ["stat_prefix", "route_config"],
  additionalProperties: false,
} as const;

/** LISTENER_SCHEMA; the filter's `config` is checked by the filter named (network filters here are all `read`). */
const listener = {
  type: "object",
  properties: {
    name: { type: "string" },
    address: { type: "string", pattern: "^tcp://" },
    filters: {
      type: "array",
      items: {
        type: "object",
        properties: {
          type: { type: "string", enum: ["read", "write", "both"] },
          name: { type: "string" },
          config: { type: "object" },
        },
        required: ["name", "config"],
        additionalProperties: false,
        allOf: [
          {
            if: { properties: { name: { const: "http_connection_manager" } } },
            then: { properties: { config: httpConnectionManager } },
          },
          { if: { properties: { name: { const: "tcp_proxy" } } }, then: { properties: { config: tcpProxy } } },
        ],
      },
    },
    drain_type: { type: "string", enum: ["default", "modify_only"] },
    ssl_context: { type: "object" },
    bind_to_port: { type: "boolean" },
    use_proxy_proto: { type: "boolean" },
    use_original_dst: { type: "boolean" },
    per_connection_buffer_limit_bytes: positive,
  },
  required: ["address", "filters"],
  additionalProperties: false,
} as const;

const definitions = { cluster, listener };

/** TOP_LEVEL_CONFIG_SCHEMA, with LDS_CONFIG_SCHEMA for `lds` and CLUSTER_MANAGER_SCHEMA for `cluster_manager`. */
const bootstrap = {
  definitions,
  type: "object",
  properties: {
    listeners: { type: "array", items: { $ref: "#/definitions/listener" } },
    lds: {
      type: "object",
      properties: { cluster: { type: "string" }, refresh_delay_ms: positive },
      required: ["cluster"],
      additionalProperties: false,
    },
    admin: {
      type: "object",
      properties: {
        access_log_path: { type: "string" },
        profile_path: { type: "string" },
        address: { type: "string", pattern: "^tcp://" },
      },
      required: ["access_log_path", "address"],
      additionalProperties: false,
    },
    cluster_manager: {
      type: "object",
      properties: {
        clusters: { type: "array", items: { $ref: "#/definitions/cluster" } },
        sds: discoveryCluster(["cluster", "refresh_delay_ms"], false),
        local_cluster_name: { type: "string" },
        outlier_detection: { type: "object" },
        cds: discoveryCluster(["cluster"], true),
      },
      required: ["clusters"],
      additionalProperties: false,
    },
    flags_path: { type: "string" },
    statsd_udp_ip_address: { type: "string" },
    statsd_tcp_cluster_name: { type: "string" },
    stats_flush_interval_ms: { type: "integer" },
    watchdog_miss_timeout_ms: { type: "integer" },
    watchdog_megamiss_timeout_ms: { type: "integer" },
    watchdog_kill_timeout_ms: { type: "integer" },
    watchdog_multikill_timeout_ms: { type: "integer" },
    tracing: { type: "object" },
    rate_limit_service: { type: "object" },
    runtime: { type: "object" },
  },
  required: ["listeners", "admin", "cluster_manager"],
  additionalProperties: false,
} as const;

/** CDS_SCHEMA, LDS_SCHEMA, SDS_SCHEMA and the RDS answer (ROUTE_CONFIGURATION_SCHEMA). */
const cds = {
  definitions,
  type: "object",
  properties: { clusters: { type: "array", items: { $ref: "#/definitions/cluster" } } },
  required: ["clusters"],
  additionalProperties: false,
} as const;
const lds = {
  definitions,
  type: "object",
  properties: { listeners: { type: "array", items: { $ref: "#/definitions/listener" } } },
  required: ["listeners"],
  additionalProperties: false,
} as const;
const sds = {
  type: "object",
  properties: {
    hosts: {
      type: "array",
      items: {
        type: "object",
        properties: { ip_address: { type: "string" }, port: { type: "integer" }, tags: { type: "object" } },
        required: ["ip_address", "port"],
      },
    },
  },
  required: ["hosts"],
} as const;

export type V1Document = "bootstrap" | "cds" | "lds" | "rds" | "sds";

const ajv = new Ajv({ allErrors: true, strict: true, strictRequired: false });
const validators: Record<V1Document, ValidateFunction> = {
  bootstrap: ajv.compile(bootstrap),
  cds: ajv.compile(cds),
  lds: ajv.compile(lds),
  rds: ajv.compile(routeConfiguration),
  sds: ajv.compile(sds),
};

function describe(e: ErrorObject): string {
  const where = e.instancePath === "" ? "(top)" : e.instancePath;
  const extra =
    e.keyword === "additionalProperties"
      ? ` '${(e.params as { additionalProperty: string }).additionalProperty}'`
      : e.keyword === "enum"
        ? ` ${JSON.stringify((e.params as { allowedValues: unknown[] }).allowedValues)}`
        : "";
  return `${where}: ${e.message ?? e.keyword}${extra}`;
}

/** The rule violations of `value` as Envoy's v1 `document` kind; empty when Envoy would accept it. */
export function checkAgainstV1Schema(document: V1Document, value: unknown): string[] {
  const validate = validators[document];
  return validate(value) ? [] : (validate.errors ?? []).map(describe);
}
