/**
 * `cluster.env`: the per-cluster settings every VM of the cluster shares. The original (setupMeshEx.sh
 * generateClusterEnv) read the service CIDR from `gcloud container clusters describe`, so it worked on GKE only; here
 * it comes from the Kubernetes API of any cluster. `planClusterEnv` is pure (values in, file text out);
 * `discoverServiceCidr` and `readMeshSettings` are the few API reads.
 */
import { AgentError } from "../platform/errors.js";
import { renderEnvFile } from "../config/env-file.js";
import type { Cidr } from "../config/types.js";
import { cidrsOrAll, parseCidr, portsOrAll, renderCidr, ValueError } from "../config/types.js";
import type { KubeClient } from "./client.js";
import { KubeApiError } from "./client.js";
import type { ControlPlaneProfile } from "./profile.js";
import { corePath, getIfExists, groupPath } from "./profile.js";

// ── service CIDR ────────────────────────────────────────────────────────────────────────────

export type CidrSource = "flag" | "ServiceCIDR API" | "API server validation message";

export interface ServiceCidr {
  /** Comma-separated CIDRs (IPv4 and/or IPv6), or `*`. */
  readonly value: string;
  readonly source: CidrSource;
}

/**
 * Addresses no cluster allocates Services from, so a dry-run Service asking for them is rejected with the message
 * naming the real range. 0.0.0.0/8 is "this network" (RFC 1122) and 100::/64 is the discard prefix (RFC 6666): both are
 * syntactically valid unicast addresses (so validation reaches the allocator) that never appear in a service CIDR.
 */
export const PROBE_CLUSTER_IPS = { ipv4: "0.0.0.1", ipv6: "100::1" } as const;
export const PROBE_SERVICE_NAME = "istio-vm-service-cidr-probe";

interface ServiceCidrObject {
  readonly spec?: { readonly cidrs?: readonly string[] };
}

/** The CIDRs named by "The range of valid IPs is X" (X may be a comma list), or none. */
export function parseValidRange(message: string): Cidr[] {
  const match = /range of valid IPs is\s+([0-9A-Fa-f:.,/\s]+)/.exec(message);
  if (match?.[1] === undefined) return [];
  const cidrs: Cidr[] = [];
  for (const item of match[1].split(/[\s,]+/)) {
    const candidate = item.replace(/\.$/, "");
    if (candidate === "") continue;
    try {
      cidrs.push(parseCidr(candidate));
    } catch (error) {
      if (!(error instanceof ValueError)) throw error;
    }
  }
  return cidrs;
}

function uniqueCidrs(cidrs: readonly Cidr[]): string {
  return [...new Set(cidrs.map(renderCidr))].join(",");
}

async function probeRange(client: KubeClient, namespace: string, ip: string): Promise<{ cidrs: Cidr[]; note: string }> {
  const family = ip.includes(":") ? "IPv6" : "IPv4";
  const service = {
    apiVersion: "v1",
    kind: "Service",
    metadata: { name: PROBE_SERVICE_NAME, namespace },
    spec: {
      type: "ClusterIP",
      clusterIP: ip,
      clusterIPs: [ip],
      ipFamilies: [family],
      ipFamilyPolicy: "SingleStack",
      ports: [{ name: "probe", port: 1, protocol: "TCP" }],
    },
  };
  try {
    await client.create(corePath("services", namespace), service, { dryRun: true });
    return { cidrs: [], note: `a dry-run Service with clusterIP ${ip} was accepted` };
  } catch (error) {
    if (!(error instanceof KubeApiError)) throw error;
    const cidrs = parseValidRange(error.message);
    return { cidrs, note: cidrs.length > 0 ? "" : `dry-run Service (${family}): ${error.message}` };
  }
}

/**
 * The service CIDR(s), from (first that answers): the flag; the `networking.k8s.io/v1` ServiceCIDR `kubernetes`
 * (Kubernetes 1.33+, may hold an IPv4 and an IPv6 range); the API server's rejection of a dry-run Service with an
 * out-of-range clusterIP (one probe per family). At most three requests.
 */
export async function discoverServiceCidr(
  client: KubeClient,
  options: { readonly flag?: string; readonly probeNamespace: string },
): Promise<ServiceCidr> {
  if (options.flag !== undefined) {
    try {
      return { value: cidrsOrAll.render(cidrsOrAll.parse(options.flag)), source: "flag" };
    } catch (error) {
      if (!(error instanceof ValueError)) throw error;
      throw new AgentError({
        code: "SERVICE_CIDR_INVALID",
        message: `--service-cidr: ${error.message}`,
        subject: options.flag,
        kind: "usage",
        hint: "give CIDRs such as 10.96.0.0/12 or 10.96.0.0/12,fd00:10:96::/112, or * to capture all outbound traffic",
      });
    }
  }
  const notes: string[] = [];
  try {
    const object = await getIfExists<ServiceCidrObject>(
      client,
      groupPath("networking.k8s.io/v1", "servicecidrs", undefined, "kubernetes"),
    );
    const cidrs = (object?.spec?.cidrs ?? []).flatMap((c) => {
      try {
        return [parseCidr(c)];
      } catch (error) {
        if (!(error instanceof ValueError)) throw error;
        notes.push(`ServiceCIDR kubernetes has an unparsable CIDR ${c}`);
        return [];
      }
    });
    if (cidrs.length > 0) return { value: uniqueCidrs(cidrs), source: "ServiceCIDR API" };
    notes.push(
      object === undefined
        ? "no ServiceCIDR API or no ServiceCIDR 'kubernetes'"
        : "ServiceCIDR 'kubernetes' lists no CIDRs",
    );
  } catch (error) {
    if (!(error instanceof KubeApiError)) throw error;
    notes.push(`ServiceCIDR API: ${error.message}`);
  }
  const v4 = await probeRange(client, options.probeNamespace, PROBE_CLUSTER_IPS.ipv4);
  const v6 = await probeRange(client, options.probeNamespace, PROBE_CLUSTER_IPS.ipv6);
  const cidrs = [...v4.cidrs, ...v6.cidrs];
  if (cidrs.length > 0) return { value: uniqueCidrs(cidrs), source: "API server validation message" };
  notes.push(v4.note, v6.note);
  throw new AgentError({
    code: "SERVICE_CIDR_UNKNOWN",
    message: `could not find the cluster's service CIDR (${notes.filter((n) => n !== "").join("; ")})`,
    subject: client.server,
    hint: "pass --service-cidr (e.g. --service-cidr 10.96.0.0/12; on GKE: gcloud container clusters describe … --format='value(servicesIpv4Cidr)')",
  });
}

// ── mesh settings istioctl copies into cluster.env ─────────────────────────────────────────────

export interface MeshSettings {
  readonly clusterId?: string;
  readonly meshId?: string;
  readonly network?: string;
  readonly trustDomain?: string;
}

interface ConfigMapObject {
  readonly data?: Readonly<Record<string, string>>;
}

interface InjectorValues {
  readonly global?: {
    readonly meshID?: unknown;
    readonly network?: unknown;
    readonly multiCluster?: { readonly clusterName?: unknown };
  };
}

function nonEmpty(value: unknown): string | undefined {
  return typeof value === "string" && value !== "" ? value : undefined;
}

/** `trustDomain:` at the top level of the mesh config YAML (ConfigMap `istio`, key `mesh`). */
export function trustDomainFromMeshConfig(mesh: string): string | undefined {
  const match = /^trustDomain:[ \t]*["']?([^"'\s#]+)["']?[ \t]*(?:#.*)?$/m.exec(mesh);
  return match?.[1];
}

/**
 * What istioctl reads for `cluster.env`: cluster ID, mesh ID and network from ConfigMap `istio-sidecar-injector`
 * (`values` JSON, as installed by istioctl/helm), the trust domain from ConfigMap `istio` (`mesh`). Missing or
 * unreadable ConfigMaps leave the values unset (the caller's defaults apply). Two GETs.
 */
export async function readMeshSettings(client: KubeClient, istioNamespace: string): Promise<MeshSettings> {
  const settings: { -readonly [K in keyof MeshSettings]: MeshSettings[K] } = {};
  const optional = async (name: string): Promise<ConfigMapObject | undefined> => {
    try {
      return await getIfExists<ConfigMapObject>(client, corePath("configmaps", istioNamespace, name));
    } catch (error) {
      if (error instanceof KubeApiError && error.status === 403) return undefined;
      throw error;
    }
  };
  const injector = await optional("istio-sidecar-injector");
  const valuesText = injector?.data?.["values"];
  if (valuesText !== undefined) {
    try {
      const values = JSON.parse(valuesText) as InjectorValues;
      const clusterId = nonEmpty(values.global?.multiCluster?.clusterName);
      const meshId = nonEmpty(values.global?.meshID);
      const network = nonEmpty(values.global?.network);
      if (clusterId !== undefined) settings.clusterId = clusterId;
      if (meshId !== undefined) settings.meshId = meshId;
      if (network !== undefined) settings.network = network;
    } catch {
      // Not JSON (an older or hand-made injector config): fall back to the flags' defaults.
    }
  }
  const mesh = (await optional("istio"))?.data?.["mesh"];
  const trustDomain = mesh === undefined ? undefined : trustDomainFromMeshConfig(mesh);
  if (trustDomain !== undefined) settings.trustDomain = trustDomain;
  return settings;
}

// ── the file ────────────────────────────────────────────────────────────────────────────────

export interface IstiodWorkload {
  /** Namespace of the VM's workload (ISTIO_NAMESPACE, POD_NAMESPACE). */
  readonly namespace: string;
  readonly serviceAccount: string;
  readonly trustDomain: string;
  readonly clusterId: string;
  readonly meshId?: string;
  readonly network?: string;
  /** WorkloadGroup-style name: sets ISTIO_META_WORKLOAD_NAME, ISTIO_SERVICE, CANONICAL_* and the app label. */
  readonly workloadName?: string;
  readonly canonicalRevision?: string;
}

export interface ClusterEnvInput {
  readonly profile: ControlPlaneProfile;
  readonly serviceCidr: string;
  readonly systemNamespace: string;
  readonly authPolicy: "MUTUAL_TLS" | "NONE";
  /** Only when asked: sidecar.env is the per-VM home of ISTIO_INBOUND_PORTS and wins over cluster.env. */
  readonly inboundPorts?: string;
  /** Required for the istiod profile. */
  readonly workload?: IstiodWorkload;
  /**
   * istiod's Service when it is not `istiod` (a revisioned install, `istiod-<rev>`): the agent's default addresses
   * and TLS name then have to be written out, as istioctl writes CA_ADDR.
   */
  readonly istiodService?: string;
}

export interface EnvEntry {
  readonly key: string;
  readonly value: string;
}

export function clusterEnvEntries(input: ClusterEnvInput): EnvEntry[] {
  const entries: EnvEntry[] = [
    { key: "ISTIO_SERVICE_CIDR", value: input.serviceCidr },
    { key: "ISTIO_SYSTEM_NAMESPACE", value: input.systemNamespace },
    { key: "CONTROL_PLANE_AUTH_POLICY", value: input.authPolicy },
    { key: "ISTIO_CONTROL_PLANE", value: input.profile },
  ];
  if (input.inboundPorts !== undefined) {
    entries.push({ key: "ISTIO_INBOUND_PORTS", value: portsOrAll.render(portsOrAll.parse(input.inboundPorts)) });
  }
  if (input.profile === "legacy") return entries;
  const w = input.workload;
  if (w === undefined) throw new Error("planClusterEnv: the istiod profile needs the workload settings");
  entries.push(
    { key: "ISTIO_NAMESPACE", value: w.namespace },
    { key: "POD_NAMESPACE", value: w.namespace },
    { key: "SERVICE_ACCOUNT", value: w.serviceAccount },
    { key: "TRUST_DOMAIN", value: w.trustDomain },
    { key: "ISTIO_META_CLUSTER_ID", value: w.clusterId },
  );
  const istiod = input.istiodService;
  if (istiod !== undefined && istiod !== "istiod") {
    const host = `${istiod}.${input.systemNamespace}.svc`;
    entries.push(
      { key: "CA_ADDR", value: `${host}:15012` },
      { key: "PILOT_ADDRESS", value: `${host}:15012` },
      { key: "DISCOVERY_ADDRESS", value: `${host}:${input.authPolicy === "NONE" ? 15010 : 15012}` },
      { key: "ISTIOD_SAN", value: host },
    );
  }
  if (w.meshId !== undefined) entries.push({ key: "ISTIO_META_MESH_ID", value: w.meshId });
  if (w.network !== undefined) entries.push({ key: "ISTIO_META_NETWORK", value: w.network });
  if (w.workloadName !== undefined) {
    const revision = w.canonicalRevision ?? "latest";
    entries.push(
      { key: "ISTIO_META_WORKLOAD_NAME", value: w.workloadName },
      { key: "ISTIO_SERVICE", value: `${w.workloadName}.${w.namespace}` },
      { key: "CANONICAL_SERVICE", value: w.workloadName },
      { key: "CANONICAL_REVISION", value: revision },
      {
        key: "ISTIO_METAJSON_LABELS",
        value: JSON.stringify({
          app: w.workloadName,
          "service.istio.io/canonical-name": w.workloadName,
          "service.istio.io/canonical-revision": revision,
        }),
      },
    );
  }
  return entries.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}

/**
 * The file text. Legacy: exactly the original's lines (`KEY=value`, unquoted), in its order, plus
 * `ISTIO_CONTROL_PLANE=legacy`. istiod: sorted, every value single-quoted, as istioctl writes it.
 */
export function planClusterEnv(input: ClusterEnvInput): string {
  return renderEnvFile(clusterEnvEntries(input), { quote: input.profile === "legacy" ? "when-needed" : "always" });
}
