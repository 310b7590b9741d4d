/**
 * Which control-plane generation runs in the cluster, decided from the Services in the control-plane namespace:
 * a Service `istiod` means Istio 1.x (`istiod`), `istio-pilot` means Istio 0.2–0.8 (`legacy`). Also the few
 * API-path builders and the "get or undefined" read the admin generators share: they fetch the handful of objects
 * they need by name and never list, so the number of requests does not grow with the size of the cluster.
 */
import { AgentError } from "../platform/errors.js";
import type { KubeClient } from "./client.js";
import { isNotFound } from "./client.js";

export type ControlPlaneProfile = "istiod" | "legacy";
export const PROFILES: readonly ControlPlaneProfile[] = ["istiod", "legacy"];

export const DEFAULT_ISTIO_NAMESPACE = "istio-system";

export function corePath(resource: string, namespace: string, name?: string): string {
  const base = `/api/v1/namespaces/${encodeURIComponent(namespace)}/${resource}`;
  return name === undefined ? base : `${base}/${encodeURIComponent(name)}`;
}

export function groupPath(group: string, resource: string, namespace: string | undefined, name?: string): string {
  const base =
    namespace === undefined
      ? `/apis/${group}/${resource}`
      : `/apis/${group}/namespaces/${encodeURIComponent(namespace)}/${resource}`;
  return name === undefined ? base : `${base}/${encodeURIComponent(name)}`;
}

/** GET that turns 404 into `undefined`; every other error (403, unreachable, …) still throws. */
export async function getIfExists<T>(client: KubeClient, path: string): Promise<T | undefined> {
  try {
    return await client.get<T>(path);
  } catch (error) {
    if (isNotFound(error)) return undefined;
    throw error;
  }
}

export interface DetectedProfile {
  readonly profile: ControlPlaneProfile;
  /** The Service that decided it (`istiod` or `istio-pilot`), or undefined when the profile was given. */
  readonly evidence: string | undefined;
  /** istiod's Service name: `istiod`, or `istiod-<revision>` for a revisioned control plane. */
  readonly istiodService: string;
}

/** `istiod`, or `istiod-<rev>` as a revisioned install names its Service. */
export function istiodServiceName(revision?: string): string {
  return revision === undefined || revision === "" || revision === "default" ? "istiod" : `istiod-${revision}`;
}

/** A revisioned istiod (`istioctl install --revision REV`): Service `istiod-<rev>` must exist. One GET. */
export async function detectRevision(
  client: KubeClient,
  istioNamespace: string,
  revision: string,
): Promise<DetectedProfile> {
  const service = istiodServiceName(revision);
  if ((await getIfExists(client, corePath("services", istioNamespace, service))) === undefined) {
    throw new AgentError({
      code: "REVISION_NOT_FOUND",
      message: `Service "${service}" (istiod revision ${revision}) does not exist in namespace ${istioNamespace}`,
      subject: `${client.server} namespace ${istioNamespace}`,
      hint: `list the revisions with: kubectl -n ${istioNamespace} get services -l app=istiod`,
    });
  }
  return { profile: "istiod", evidence: `service ${istioNamespace}/${service}`, istiodService: service };
}

/**
 * `istiod` wins when both exist (a cluster in the middle of a migration serves new workloads from istiod). At most
 * two GETs.
 */
export async function detectProfile(
  client: KubeClient,
  istioNamespace: string,
  given?: ControlPlaneProfile,
): Promise<DetectedProfile> {
  if (given !== undefined) return { profile: given, evidence: undefined, istiodService: "istiod" };
  if ((await getIfExists(client, corePath("services", istioNamespace, "istiod"))) !== undefined) {
    return { profile: "istiod", evidence: `service ${istioNamespace}/istiod`, istiodService: "istiod" };
  }
  if ((await getIfExists(client, corePath("services", istioNamespace, "istio-pilot"))) !== undefined) {
    return { profile: "legacy", evidence: `service ${istioNamespace}/istio-pilot`, istiodService: "istiod" };
  }
  throw new AgentError({
    code: "PROFILE_NOT_DETECTED",
    message: `neither Service "istiod" (Istio 1.x) nor "istio-pilot" (Istio 0.2–0.8) exists in namespace ${istioNamespace}`,
    subject: `${client.server} namespace ${istioNamespace}`,
    hint: "pass --istio-namespace if the control plane runs in another namespace, --revision for a revisioned istiod, or --profile istiod|legacy to skip detection",
  });
}
