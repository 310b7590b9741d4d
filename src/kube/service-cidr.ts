/**
 * The cluster's service CIDR (ISTIO_SERVICE_CIDR of cluster.env), from the Kubernetes API of any cluster: the
 * ServiceCIDR objects where the API has them, else the range the API server names when a dry-run Service asks for an
 * address outside it. The original (setupMeshEx.sh generateClusterEnv) asked `gcloud`, so it worked on GKE only.
 */
import { AgentError } from "../platform/errors.js";
import type { Cidr } from "../config/types.js";
import { cidrsOrAll, parseCidr, renderCidr, ValueError } from "../config/types.js";
import type { KubeClient } from "./client.js";
import { KubeApiError } from "./client.js";
import { corePath, getIfExists, groupPath } from "./profile.js";

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
