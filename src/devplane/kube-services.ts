/**
 * What kube-apiserver does to a Service on write: defaults (type, sessionAffinity, port protocol and targetPort,
 * traffic policies, node ports), clusterIP(s) allocated from the service CIDR or checked when given (with
 * kube-apiserver's messages, "... The range of valid IPs is 10.96.0.0/12", which the admin commands parse), and
 * clusterIP immutability on update.
 */
import { isIP } from "node:net";
import type { ClusterIpAllocator } from "./ip-allocator.js";
import type { ResourceDefinition } from "./kube-resources.js";
import { ApiStatusError, invalid } from "./kube-status.js";
import type { KubeObject } from "./store.js";

export interface ServiceSpec {
  type?: string;
  clusterIP?: string;
  clusterIPs?: string[];
  ipFamilies?: string[];
  ipFamilyPolicy?: string;
  ports?: { name?: string; port?: number; targetPort?: number | string; protocol?: string; nodePort?: number }[];
  sessionAffinity?: string;
  internalTrafficPolicy?: string;
  externalTrafficPolicy?: string;
  [key: string]: unknown;
}

export interface ServiceWrite {
  /** The `services` resource, for messages. */
  readonly def: ResourceDefinition;
  readonly allocator: ClusterIpAllocator;
  /** Validates and shows what would be allocated, keeping nothing. */
  readonly dryRun: boolean;
  readonly nextNodePort: () => number;
}

/**
 * Fills in `object` (the Service being written; `current` is the stored one on update) and returns the roll-back
 * that releases the addresses it took, for a write the store then refuses.
 */
export function applyServiceDefaults(
  object: KubeObject,
  current: KubeObject | undefined,
  write: ServiceWrite,
): () => void {
  const { def, allocator, dryRun } = write;
  const name = object.metadata.name;
  const spec = (object["spec"] as ServiceSpec | undefined) ?? {};
  object["spec"] = spec;
  spec.type ??= "ClusterIP";
  if (!["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].includes(spec.type)) {
    throw invalid(def, name, [
      {
        field: "spec.type",
        message: `Unsupported value: "${spec.type}": supported values: "ClusterIP", "ExternalName", "LoadBalancer", "NodePort"`,
      },
    ]);
  }
  spec.sessionAffinity ??= "None";
  for (const port of spec.ports ?? []) {
    port.protocol ??= "TCP";
    if (port.port !== undefined) port.targetPort ??= port.port;
  }
  const rollback: string[] = [];
  const currentSpec = current?.["spec"] as ServiceSpec | undefined;
  if (currentSpec !== undefined) {
    // clusterIP is immutable; an update that leaves it out keeps it.
    const wanted = spec.clusterIPs ?? (spec.clusterIP === undefined ? undefined : [spec.clusterIP]);
    const had = currentSpec.clusterIPs ?? [];
    if (wanted !== undefined && wanted.length > 0 && wanted[0] !== "" && wanted[0] !== had[0]) {
      throw invalid(def, name, [
        {
          field: "spec.clusterIPs[0]",
          message: `Invalid value: []string{${wanted.map((ip) => `"${ip}"`).join(", ")}}: may not change once set`,
        },
      ]);
    }
    if (currentSpec.clusterIP !== undefined) spec.clusterIP = currentSpec.clusterIP;
    if (currentSpec.clusterIPs !== undefined) spec.clusterIPs = currentSpec.clusterIPs;
    if (currentSpec.ipFamilies !== undefined) spec.ipFamilies = currentSpec.ipFamilies;
    spec.ipFamilyPolicy ??= currentSpec.ipFamilyPolicy ?? "SingleStack";
  } else if (spec.type !== "ExternalName") {
    const requested =
      spec.clusterIPs ?? (spec.clusterIP === undefined || spec.clusterIP === "" ? [] : [spec.clusterIP]);
    if (requested[0] === "None") {
      spec.clusterIP = "None";
      spec.clusterIPs = ["None"];
    } else if (requested.length > 0) {
      for (const ip of requested) {
        if (isIP(ip) === 0) {
          throw invalid(def, name, [
            {
              field: "spec.clusterIPs[0]",
              message: `Invalid value: "${ip}": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)`,
            },
          ]);
        }
        const ipList = `[]string{${requested.map((r) => `"${r}"`).join(", ")}}`;
        const result = dryRun ? (allocator.has(ip) ? "allocated" : wouldReserve(allocator, ip)) : allocator.reserve(ip);
        if (result === "family-not-configured") {
          throw invalid(def, name, [
            {
              field: "spec.ipFamilies[0]",
              message: `Invalid value: "IPv${isIP(ip)}": not configured on this cluster`,
            },
          ]);
        }
        if (result === "out-of-range") {
          throw invalid(def, name, [
            {
              field: "spec.clusterIPs",
              message: `Invalid value: ${ipList}: failed to allocate IP ${ip}: the provided IP (${ip}) is not in the valid range. The range of valid IPs is ${allocator.rangeText}`,
            },
          ]);
        }
        if (result === "allocated") {
          throw invalid(def, name, [
            {
              field: "spec.clusterIPs",
              message: `Invalid value: ${ipList}: failed to allocate IP ${ip}: provided IP is already allocated`,
            },
          ]);
        }
        if (!dryRun) rollback.push(ip);
      }
      spec.clusterIP = requested[0] ?? "";
      spec.clusterIPs = requested;
    } else {
      const ip = allocator.allocate();
      // A dry run shows the address it would get, without keeping it.
      if (dryRun && ip !== undefined) allocator.release(ip);
      if (ip === undefined) {
        throw new ApiStatusError(
          500,
          "InternalError",
          `Internal error occurred: failed to allocate a serviceIP: range is full`,
        );
      }
      if (!dryRun) rollback.push(ip);
      spec.clusterIP = ip;
      spec.clusterIPs = [ip];
    }
    if (spec.clusterIP !== "None") spec.ipFamilies = spec.clusterIPs.map((ip) => (isIP(ip) === 6 ? "IPv6" : "IPv4"));
    spec.ipFamilyPolicy ??= "SingleStack";
  }
  if (spec.type !== "ExternalName") spec.internalTrafficPolicy ??= "Cluster";
  if (spec.type === "NodePort" || spec.type === "LoadBalancer") {
    spec.externalTrafficPolicy ??= "Cluster";
    for (const port of spec.ports ?? []) port.nodePort ??= write.nextNodePort();
  }
  const status = current?.["status"] ?? object["status"] ?? { loadBalancer: {} };
  object["status"] = current === undefined ? { loadBalancer: {} } : status;
  return () => {
    for (const ip of rollback) allocator.release(ip);
  };
}

function wouldReserve(
  allocator: ClusterIpAllocator,
  ip: string,
): "ok" | "out-of-range" | "allocated" | "family-not-configured" {
  const result = allocator.reserve(ip);
  if (result === "ok") allocator.release(ip);
  return result;
}
