/**
 * The Envoy `Node` this VM presents to the control plane: `id`, `cluster` and `metadata`. One function builds it for
 * both the Envoy bootstrap (src/envoy/bootstrap.ts) and the agent's own xDS streams (src/xds/node.ts), so istiod sees
 * the same proxy whichever of them connects.
 *
 * istiod profile: what Istio's pilot-agent sends for the same settings (istio/istio 1.24):
 * - `pilot/cmd/pilot-agent/config/config.go` ConstructProxyConfig / getMeshConfig: the ProxyConfig is Istio's
 *   defaults (`pkg/config/mesh/mesh.go` DefaultProxyConfig) with the mesh's `defaultConfig` and then the proxy's own
 *   overrides applied by `mesh.ApplyProxyConfig` (fields replaced, `proxyMetadata` merged key by key).
 * - `pkg/bootstrap/config.go` GetNodeMetaData: every `ISTIO_META_<K>` becomes metadata `<K>` (also those in the
 *   ProxyConfig's `proxyMetadata`, which the environment overrides); every `ISTIO_METAJSON_*` JSON object is merged
 *   into the metadata at the top level (the variable's name is ignored); then the typed fields of `NodeMetadata`
 *   (`pkg/model/proxy.go`) are set: ISTIO_VERSION (SetIstioVersion: only when not given), INSTANCE_IPS,
 *   ENVOY_STATUS_PORT, ENVOY_PROMETHEUS_PORT, PROXY_CONFIG, PILOT_SAN, and (extractAttributesMetadata) LABELS and
 *   STATIC_LABELS from ISTIO_METAJSON_LABELS, NAME from POD_NAME, NAMESPACE from POD_NAMESPACE, SERVICE_ACCOUNT.
 *   Typed fields win over untyped keys of the same name (ConvertNodeToXDSNode). Keys are emitted sorted, as Go's
 *   encoding/json writes a map.
 * - `node.cluster`: getServiceCluster / serviceClusterOrDefault of the same file.
 * - LABELS carry the canonical-service labels istioctl adds for a VM (`istioctl/pkg/workload/workload.go`), derived
 *   by `pkg/kube/labels` CanonicalService.
 *
 * Where this VM differs from a pod, the ProxyConfig says what this agent really does: its discovery address, auth
 * policy, admin and status ports, and ISTIO_SERVICE as `serviceCluster` when set (as istio-start.sh passes it).
 * DNS_CAPTURE is "true" exactly when the agent runs its DNS proxy (ISTIO_META_DNS_CAPTURE=true, istiod profile),
 * whatever the mesh's proxyMetadata says: istiod sends the NDS name table only to a proxy that says it captures
 * DNS (pilot/pkg/xds/nds.go), and the agent's NDS subscription rides Envoy's stream with Envoy's node
 * (src/xds/proxy.ts). INTERCEPTION_MODE is the mode the agent's iptables rules really use.
 *
 * Legacy profile (Pilot 0.2–0.8): unchanged from what pilot-agent 0.8 sent, `istio: sidecar` included.
 */
import type { ConfigValues } from "../config/registry.js";
import type { StructValue } from "./protos.js";

export type NodeBlockConfig = Pick<
  ConfigValues,
  | "ISTIO_CONTROL_PLANE"
  | "DISCOVERY_ADDRESS"
  | "CONTROL_PLANE_AUTH_POLICY"
  | "ISTIOD_SAN"
  | "ISTIO_SVC_IP"
  | "POD_NAME"
  | "POD_NAMESPACE"
  | "SERVICE_ACCOUNT"
  | "ISTIO_SERVICE"
  | "ISTIO_VERSION"
  | "PROXY_CONFIG"
  | "ISTIO_VM_PROXY_CONFIG"
  | "ISTIO_META_CLUSTER_ID"
  | "ISTIO_META_MESH_ID"
  | "ISTIO_META_NETWORK"
  | "ISTIO_META_WORKLOAD_NAME"
  | "ISTIO_META_AUTO_REGISTER_GROUP"
  | "ISTIO_METAJSON_LABELS"
  | "CANONICAL_SERVICE"
  | "CANONICAL_REVISION"
  | "ISTIO_INBOUND_INTERCEPTION_MODE"
  | "ISTIO_META_DNS_CAPTURE"
  | "ENVOY_ADMIN_PORT"
  | "ENVOY_STATS_PORT"
  | "ENVOY_STATUS_PORT"
  | "STATUS_PORT"
>;

export interface NodeBlockInput {
  readonly config: NodeBlockConfig;
  /**
   * `ISTIO_META_*` / `ISTIO_METAJSON_*` variables outside the registry (LoadedConfig.metadata), by variable name, raw.
   */
  readonly extraMetadata: Readonly<Record<string, string>>;
  /** The machine's host name: its first label stands in for an empty POD_NAME. */
  readonly hostname: string;
}

export interface NodeBlock {
  readonly id: string;
  readonly cluster: string;
  readonly metadata: Readonly<Record<string, StructValue>>;
}

export type ProxyConfigJson = Readonly<Record<string, StructValue>>;

/** `pkg/config/mesh/mesh.go` DefaultProxyConfig (1.24), in protobuf JSON. */
export const ISTIO_DEFAULT_PROXY_CONFIG: ProxyConfigJson = {
  configPath: "./etc/istio/proxy",
  binaryPath: "/usr/local/bin/envoy",
  serviceCluster: "istio-proxy",
  drainDuration: "45s",
  parentShutdownDuration: "60s",
  discoveryAddress: "istiod.istio-system.svc:15012",
  proxyAdminPort: 15000,
  controlPlaneAuthPolicy: "MUTUAL_TLS",
  statNameLength: 189,
  concurrency: 2,
  tracing: { zipkin: { address: "zipkin.istio-system:9411" } },
  statusPort: 15020,
  terminationDrainDuration: "5s",
};

/** The `cluster_name` oneof of ProxyConfig: setting one member clears the other. */
const CLUSTER_NAME_ONEOF = ["serviceCluster", "tracingServiceName"] as const;

function camelCase(key: string): string {
  return key.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

function isObject(value: StructValue | undefined): value is { [key: string]: StructValue } {
  return value !== null && value !== undefined && typeof value === "object" && !Array.isArray(value);
}

/**
 * `mesh.ApplyProxyConfig` (pkg/config/mesh/mesh.go): each field present in the overlay replaces the base's (lists
 * and messages whole; protobuf JSON accepts proto names too, so `proxy_metadata` is `proxyMetadata`), null unsets
 * it, a member of a oneof clears its sibling, and `proxyMetadata` is merged key by key (mergeMap).
 */
export function applyProxyConfig(base: ProxyConfigJson, overlay: Readonly<Record<string, unknown>>): ProxyConfigJson {
  const out: Record<string, StructValue> = { ...base };
  for (const [rawKey, value] of Object.entries(overlay)) {
    const key = camelCase(rawKey);
    if ((CLUSTER_NAME_ONEOF as readonly string[]).includes(key)) {
      for (const member of CLUSTER_NAME_ONEOF) Reflect.deleteProperty(out, member);
    }
    if (value === null || value === undefined) {
      Reflect.deleteProperty(out, key);
    } else if (key === "proxyMetadata" && isObject(out[key]) && isObject(value as StructValue)) {
      out[key] = { ...(out[key] as Record<string, StructValue>), ...(value as Record<string, StructValue>) };
    } else {
      out[key] = value as StructValue;
    }
  }
  return out;
}

/**
 * The ProxyConfig this VM's proxy runs with: Istio's defaults, the mesh's `defaultConfig` (PROXY_CONFIG, from
 * `istio-vm cluster-env`), the per-VM ISTIO_VM_PROXY_CONFIG, then the settings this agent really uses.
 */
export function effectiveProxyConfig(config: NodeBlockConfig): ProxyConfigJson {
  let pc = applyProxyConfig(ISTIO_DEFAULT_PROXY_CONFIG, config.PROXY_CONFIG);
  pc = applyProxyConfig(pc, config.ISTIO_VM_PROXY_CONFIG);
  const { host, port } = config.DISCOVERY_ADDRESS;
  return applyProxyConfig(pc, {
    discoveryAddress: `${host.includes(":") ? `[${host}]` : host}:${port}`,
    controlPlaneAuthPolicy: config.CONTROL_PLANE_AUTH_POLICY,
    proxyAdminPort: config.ENVOY_ADMIN_PORT,
    statusPort: config.STATUS_PORT,
    ...(config.ISTIO_SERVICE === "" ? {} : { serviceCluster: config.ISTIO_SERVICE }),
  });
}

export const CANONICAL_NAME_LABEL = "service.istio.io/canonical-name";
export const CANONICAL_REVISION_LABEL = "service.istio.io/canonical-revision";
const NAME_LABELS = [CANONICAL_NAME_LABEL, "app.kubernetes.io/name", "app"];
const REVISION_LABELS = [CANONICAL_REVISION_LABEL, "app.kubernetes.io/version", "version"];

function lookup(labels: Readonly<Record<string, string>>, keys: readonly string[]): string | undefined {
  for (const key of keys) if (Object.hasOwn(labels, key)) return labels[key];
  return undefined;
}

/** `pkg/kube/labels/labels.go` CanonicalService: name and revision, with Istio's fallbacks. */
export function canonicalService(
  labels: Readonly<Record<string, string>>,
  workloadName: string,
): { readonly name: string; readonly revision: string } {
  return { name: lookup(labels, NAME_LABELS) ?? workloadName, revision: lookup(labels, REVISION_LABELS) ?? "latest" };
}

function stringLabels(raw: Readonly<Record<string, unknown>>): Record<string, string> {
  // pilot-agent reads ISTIO_METAJSON_LABELS as map[string]string (jsonStringToMap); other values do not load.
  return Object.fromEntries(Object.entries(raw).filter((e): e is [string, string] => typeof e[1] === "string"));
}

/**
 * The workload's labels: ISTIO_METAJSON_LABELS plus the canonical-service labels istioctl writes for a VM
 * (`istioctl/pkg/workload/workload.go`), when the workload has a name to derive them from (a label or
 * ISTIO_META_WORKLOAD_NAME). CANONICAL_SERVICE / CANONICAL_REVISION, which istioctl also writes, stand in for the
 * labels when they are set and the labels are not.
 */
export function workloadLabels(config: NodeBlockConfig): Record<string, string> {
  const given = stringLabels(config.ISTIO_METAJSON_LABELS);
  const derived = canonicalService(given, config.ISTIO_META_WORKLOAD_NAME);
  const name = lookup(given, [CANONICAL_NAME_LABEL]) ?? (config.CANONICAL_SERVICE || derived.name);
  if (name === "")
    return Object.fromEntries(
      Object.keys(given)
        .sort()
        .map((k) => [k, given[k] ?? ""]),
    );
  const explicitRevision = config.CANONICAL_REVISION !== "latest" ? config.CANONICAL_REVISION : "";
  const revision = lookup(given, [CANONICAL_REVISION_LABEL]) ?? (explicitRevision || derived.revision);
  const labels: Record<string, string> = {
    ...given,
    [CANONICAL_NAME_LABEL]: name,
    [CANONICAL_REVISION_LABEL]: revision,
  };
  // Sorted, as Go writes a map[string]string.
  return Object.fromEntries(
    Object.keys(labels)
      .sort()
      .map((k) => [k, labels[k] ?? ""]),
  );
}

interface ClusterInputs {
  readonly labels: Readonly<Record<string, string>>;
  readonly workloadName: string;
  readonly namespace: string;
}

/** `pkg/bootstrap/config.go` serviceClusterOrDefault. */
export function serviceClusterOrDefault(name: string, meta: ClusterInputs): string {
  if (name !== "" && name !== "istio-proxy") return name;
  const app = meta.labels["app"];
  if (app !== undefined) return `${app}.${meta.namespace}`;
  if (meta.workloadName !== "") return `${meta.workloadName}.${meta.namespace}`;
  if (meta.namespace !== "") return `istio-proxy.${meta.namespace}`;
  return "istio-proxy";
}

/** `pkg/bootstrap/config.go` getServiceCluster: node.cluster from the ProxyConfig's cluster_name oneof. */
export function serviceCluster(proxyConfig: ProxyConfigJson, meta: ClusterInputs): string {
  const explicit = proxyConfig["serviceCluster"];
  if (typeof explicit === "string") return serviceClusterOrDefault(explicit, meta);
  const tracing = proxyConfig["tracingServiceName"];
  if (tracing === undefined) return serviceClusterOrDefault("istio-proxy", meta);
  const workloadName = meta.workloadName === "" ? "istio-proxy" : meta.workloadName;
  const cs = canonicalService(meta.labels, workloadName).name;
  switch (tracing) {
    case "CANONICAL_NAME_ONLY":
      return serviceClusterOrDefault(cs, meta);
    case "CANONICAL_NAME_AND_NAMESPACE":
      return meta.namespace === "" ? serviceClusterOrDefault(cs, meta) : `${cs}.${meta.namespace}`;
    default: // APP_LABEL_AND_NAMESPACE, the enum's zero value
      return serviceClusterOrDefault("istio-proxy", meta);
  }
}

function podName(config: NodeBlockConfig, hostname: string): string {
  return config.POD_NAME === "" ? (hostname.split(".")[0] ?? hostname) : config.POD_NAME;
}

/**
 * The node id Pilot/istiod split on `~`: `sidecar~<ip>~<name>.<ns>~<ns>.svc.cluster.local` (four parts, or Pilot
 * answers 404), as istio-start.sh makes pilot-agent build it (`model.Proxy.ServiceNode`).
 */
export function nodeId(config: NodeBlockConfig, hostname: string): string {
  const ns = config.POD_NAMESPACE;
  return `sidecar~${config.ISTIO_SVC_IP}~${podName(config, hostname)}.${ns}~${ns}.svc.cluster.local`;
}

/** Metadata keys only the agent's own settings decide (see the module comment), whatever ISTIO_META_* says. */
const DECIDED_BY_THE_AGENT = new Set(["DNS_CAPTURE"]);

function parseJson(raw: string): StructValue | undefined {
  try {
    return JSON.parse(raw) as StructValue;
  } catch {
    // `istio-vm config` reports invalid JSON metadata as a configuration problem; pilot-agent logs and skips it too.
    return undefined;
  }
}

/** The variables pilot-agent would see in its environment: the registry's ISTIO_META_* ones and all others. */
function metaVariables(input: NodeBlockInput): Record<string, string> {
  const { config } = input;
  const vars: Record<string, string> = {};
  const registered = {
    ISTIO_META_CLUSTER_ID: config.ISTIO_META_CLUSTER_ID,
    ISTIO_META_MESH_ID: config.ISTIO_META_MESH_ID,
    ISTIO_META_NETWORK: config.ISTIO_META_NETWORK,
    ISTIO_META_WORKLOAD_NAME: config.ISTIO_META_WORKLOAD_NAME,
    ISTIO_META_AUTO_REGISTER_GROUP: config.ISTIO_META_AUTO_REGISTER_GROUP,
  };
  // An empty registry value means "not set": pilot-agent would not see the variable at all.
  for (const [name, value] of Object.entries(registered)) if (value !== "") vars[name] = value;
  for (const [name, value] of Object.entries(input.extraMetadata)) vars[name] = value;
  return vars;
}

function istiodMetadata(input: NodeBlockInput, proxyConfig: ProxyConfigJson): Record<string, StructValue> {
  const { config } = input;
  const untyped: Record<string, StructValue> = {};
  const proxyMetadata = proxyConfig["proxyMetadata"];
  if (isObject(proxyMetadata)) {
    for (const [name, value] of Object.entries(proxyMetadata)) {
      if (name.startsWith("ISTIO_META_") && typeof value === "string") untyped[name.slice(11)] = value;
    }
  }
  const vars = metaVariables(input);
  const names = Object.keys(vars).sort();
  for (const name of names) if (name.startsWith("ISTIO_META_")) untyped[name.slice(11)] = vars[name] ?? "";
  for (const name of names) {
    if (!name.startsWith("ISTIO_METAJSON_")) continue;
    const value = parseJson(vars[name] ?? "");
    if (isObject(value)) Object.assign(untyped, value);
  }
  // ISTIO_METAJSON_LABELS is a registry variable: pilot-agent merges it like every ISTIO_METAJSON_*, and istioctl's
  // version of it already holds the canonical-service labels, so they land at the top level too.
  const labels = workloadLabels(config);
  Object.assign(untyped, config.ISTIO_METAJSON_LABELS as Record<string, StructValue>, labels);

  const typed: Record<string, StructValue> = {};
  const set = (key: string, value: StructValue | undefined): void => {
    if (value === undefined || value === "" || value === 0) return;
    if (isObject(value) && Object.keys(value).length === 0) return;
    typed[key] = value;
  };
  set("PROXY_CONFIG", proxyConfig);
  const givenVersion = untyped["ISTIO_VERSION"];
  set("ISTIO_VERSION", typeof givenVersion === "string" && givenVersion !== "" ? givenVersion : config.ISTIO_VERSION);
  set("LABELS", labels);
  set("STATIC_LABELS", labels);
  set("INSTANCE_IPS", config.ISTIO_SVC_IP);
  set("NAME", podName(config, input.hostname));
  set("NAMESPACE", config.POD_NAMESPACE);
  set("SERVICE_ACCOUNT", config.SERVICE_ACCOUNT);
  set("INTERCEPTION_MODE", config.ISTIO_INBOUND_INTERCEPTION_MODE);
  if (config.ISTIO_META_DNS_CAPTURE) set("DNS_CAPTURE", "true");
  set("ENVOY_STATUS_PORT", config.ENVOY_STATUS_PORT);
  set("ENVOY_PROMETHEUS_PORT", config.ENVOY_STATS_PORT);
  if (config.CONTROL_PLANE_AUTH_POLICY === "MUTUAL_TLS") set("PILOT_SAN", [config.ISTIOD_SAN]);

  for (const key of DECIDED_BY_THE_AGENT) Reflect.deleteProperty(untyped, key);
  const merged: Record<string, StructValue> = { ...untyped, ...typed };
  const out: Record<string, StructValue> = {};
  for (const key of Object.keys(merged).sort()) {
    const value = merged[key];
    if (value !== undefined) out[key] = value;
  }
  return out;
}

/** Legacy Pilot (0.2–0.8): the metadata pilot-agent 0.8 sent, in its order, `istio: sidecar` included. */
function legacyMetadata(input: NodeBlockInput): Record<string, StructValue> {
  const { config } = input;
  const metadata: Record<string, StructValue> = {};
  for (const name of Object.keys(input.extraMetadata).sort()) {
    const raw = input.extraMetadata[name] ?? "";
    if (name.startsWith("ISTIO_METAJSON_")) {
      const value = parseJson(raw);
      if (value !== undefined) metadata[name.slice("ISTIO_METAJSON_".length)] = value;
    } else if (name.startsWith("ISTIO_META_") && raw !== "") {
      metadata[name.slice("ISTIO_META_".length)] = raw;
    }
  }
  const set = (key: string, value: string): void => {
    if (value !== "") metadata[key] = value;
  };
  set("NAME", podName(config, input.hostname));
  set("NAMESPACE", config.POD_NAMESPACE);
  set("SERVICE_ACCOUNT", config.SERVICE_ACCOUNT);
  set("INSTANCE_IPS", config.ISTIO_SVC_IP);
  set("INTERCEPTION_MODE", config.ISTIO_INBOUND_INTERCEPTION_MODE);
  set("CLUSTER_ID", config.ISTIO_META_CLUSTER_ID);
  set("MESH_ID", config.ISTIO_META_MESH_ID);
  set("NETWORK", config.ISTIO_META_NETWORK);
  set("WORKLOAD_NAME", config.ISTIO_META_WORKLOAD_NAME);
  set("AUTO_REGISTER_GROUP", config.ISTIO_META_AUTO_REGISTER_GROUP);
  if (config.ENVOY_STATS_PORT !== 0) set("ENVOY_PROMETHEUS_PORT", String(config.ENVOY_STATS_PORT));
  if (Object.keys(config.ISTIO_METAJSON_LABELS).length > 0) {
    metadata["LABELS"] = config.ISTIO_METAJSON_LABELS as { [key: string]: StructValue };
  }
  metadata["istio"] = "sidecar";
  return metadata;
}

/** The node block, for the bootstrap and for the agent's own xDS streams alike. */
export function buildNodeBlock(input: NodeBlockInput): NodeBlock {
  const { config } = input;
  if (config.ISTIO_CONTROL_PLANE === "legacy") {
    return { id: nodeId(config, input.hostname), cluster: config.ISTIO_SERVICE, metadata: legacyMetadata(input) };
  }
  const proxyConfig = effectiveProxyConfig(config);
  const cluster = serviceCluster(proxyConfig, {
    labels: workloadLabels(config),
    workloadName: config.ISTIO_META_WORKLOAD_NAME,
    namespace: config.POD_NAMESPACE,
  });
  return { id: nodeId(config, input.hostname), cluster, metadata: istiodMetadata(input, proxyConfig) };
}
