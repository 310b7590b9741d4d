/**
 * The pure planners of `register`/`deregister`: the selector-less Service, the Endpoints with the VM's address added
 * (idempotent: registering twice lists it once, duplicates left by the original are removed) or removed, the
 * WorkloadEntry, and the port names an existing Service imposes.
 */
import type { PortSpec, RegistrationInput } from "./register-inputs.js";
import type {
  EndpointAddress,
  EndpointsObject,
  EndpointSubset,
  ObjectMeta,
  ServiceObject,
  WorkloadEntryObject,
} from "./register-objects.js";
import { SERVICE_ACCOUNT_ANNOTATION, WORKLOAD_ENTRY_GROUP } from "./register-objects.js";

export function objectAnnotations(input: RegistrationInput): Record<string, string> {
  return { ...input.annotations, [SERVICE_ACCOUNT_ANNOTATION]: input.serviceAccount };
}

function meta(input: RegistrationInput, name: string): ObjectMeta {
  const m: ObjectMeta = { name, namespace: input.namespace };
  if (Object.keys(input.labels).length > 0) m.labels = { ...input.labels };
  m.annotations = objectAnnotations(input);
  return m;
}

/** The selector-less Service: no selector, so Kubernetes leaves its Endpoints to us and still assigns a ClusterIP. */
export function planService(input: RegistrationInput): ServiceObject {
  return {
    apiVersion: "v1",
    kind: "Service",
    metadata: meta(input, input.service),
    spec: { ports: input.ports.map((p) => ({ name: p.name, port: p.port, protocol: "TCP", targetPort: p.port })) },
  };
}

export function planEmptyEndpoints(input: RegistrationInput): EndpointsObject {
  return { apiVersion: "v1", kind: "Endpoints", metadata: meta(input, input.service), subsets: [] };
}

function samePortNumbers(subset: EndpointSubset, ports: readonly PortSpec[]): boolean {
  const have = new Set((subset.ports ?? []).map((p) => p.port));
  const want = new Set(ports.map((p) => p.port));
  return have.size === want.size && [...want].every((p) => have.has(p));
}

export function describeSubset(subset: EndpointSubset): string {
  const addresses = (subset.addresses ?? []).map((a) => a.ip).join(" ");
  const ports = (subset.ports ?? []).map((p) => `{${p.name ?? ""} ${p.port}}`).join(" ");
  return `{addresses [${addresses}] ports [${ports}]}`;
}

/** The original's count: the sum over subsets of ports × addresses. */
export function endpointCount(endpoints: EndpointsObject): number {
  return (endpoints.subsets ?? []).reduce((n, s) => n + (s.ports ?? []).length * (s.addresses ?? []).length, 0);
}

export interface EndpointsPlan {
  readonly endpoints: EndpointsObject;
  readonly changed: boolean;
  /** Extra occurrences of the IP removed from the matching subsets. */
  readonly duplicatesRemoved: number;
  /** Subsets whose port numbers equal the requested set (the original expected at most one). */
  readonly matchingSubsets: number;
  readonly messages: readonly string[];
}

/**
 * Adds `ip` to the subset whose port numbers equal the requested set (or a new subset), so that afterwards it is
 * listed exactly once across those subsets. Subsets for other port sets are left alone.
 */
export function planAddAddress(current: EndpointsObject, ip: string, ports: readonly PortSpec[]): EndpointsPlan {
  const endpoints = structuredClone(current);
  const subsets = endpoints.subsets ?? [];
  const messages: string[] = [];
  const matching = subsets.filter((s) => samePortNumbers(s, ports));
  if (matching.length > 1) messages.push(`Unexpected match in ${matching.length} subsets`);
  let duplicatesRemoved = 0;
  let kept = false;
  for (const subset of matching) {
    const filtered: EndpointAddress[] = [];
    for (const address of subset.addresses ?? []) {
      if (address.ip !== ip) filtered.push(address);
      else if (kept) duplicatesRemoved++;
      else {
        kept = true;
        filtered.push(address);
      }
    }
    subset.addresses = filtered;
  }
  const first = matching[0];
  let changed = duplicatesRemoved > 0;
  if (duplicatesRemoved > 0)
    messages.push(`Removed ${duplicatesRemoved} duplicate entr${duplicatesRemoved === 1 ? "y" : "ies"} of ${ip}`);
  if (kept) {
    messages.push(`IP ${ip} is already registered with this ports list; nothing to add`);
  } else if (first !== undefined) {
    (first.addresses ??= []).push({ ip });
    changed = true;
    messages.push(`Found matching ports list in existing subset ${describeSubset(first)}`);
  } else {
    const subset: EndpointSubset = {
      addresses: [{ ip }],
      ports: ports.map((p) => ({ ...(p.name === "" ? {} : { name: p.name }), port: p.port, protocol: "TCP" })),
    };
    subsets.push(subset);
    changed = true;
    messages.push(`No pre existing exact matching ports list found, created new subset ${describeSubset(subset)}`);
  }
  endpoints.subsets = subsets.filter((s) => (s.addresses ?? []).length > 0 || (s.notReadyAddresses ?? []).length > 0);
  return { endpoints, changed, duplicatesRemoved, matchingSubsets: matching.length, messages };
}

/** Removes every occurrence of `ip` (ready or not) from every subset and drops subsets left empty. */
export function planRemoveAddress(
  current: EndpointsObject,
  ip: string,
): { endpoints: EndpointsObject; removed: number } {
  const endpoints = structuredClone(current);
  let removed = 0;
  const strip = (list: EndpointAddress[] | undefined): EndpointAddress[] | undefined => {
    if (list === undefined) return undefined;
    const kept = list.filter((a) => a.ip !== ip);
    removed += list.length - kept.length;
    return kept;
  };
  const subsets: EndpointSubset[] = [];
  for (const subset of endpoints.subsets ?? []) {
    const addresses = strip(subset.addresses);
    const notReady = strip(subset.notReadyAddresses);
    if ((addresses ?? []).length === 0 && (notReady ?? []).length === 0) continue;
    const next: EndpointSubset = { ...subset };
    if (addresses === undefined || addresses.length === 0) delete next.addresses;
    else next.addresses = addresses;
    if (notReady === undefined || notReady.length === 0) delete next.notReadyAddresses;
    else next.notReadyAddresses = notReady;
    subsets.push(next);
  }
  endpoints.subsets = subsets;
  return { endpoints, removed };
}

/**
 * `<name>-<ip with . and : replaced by ->`, at most 253 characters: istio-vm's own name for a registered entry. (istiod
 * names auto-registered entries differently, replacing only ':' and adding the network: `<group>-10.0.0.1[-<net>]`,
 * docs/protocols.md "Auto-registration and health"; the two never collide.)
 */
export function workloadEntryName(service: string, ip: string): string {
  return `${service}-${ip.replace(/[.:]/g, "-")}`.slice(0, 253).replace(/-+$/, "");
}

export function planWorkloadEntry(input: RegistrationInput): WorkloadEntryObject {
  const labels = { app: input.service, ...input.labels };
  return {
    apiVersion: WORKLOAD_ENTRY_GROUP,
    kind: "WorkloadEntry",
    metadata: { name: workloadEntryName(input.service, input.ip), namespace: input.namespace, labels: { ...labels } },
    spec: {
      address: input.ip,
      labels,
      serviceAccount: input.serviceAccount,
      ports: Object.fromEntries(input.ports.map((p) => [p.name, p.port])),
    },
  };
}

interface ServicePort {
  readonly name?: string;
  readonly port?: number;
  readonly targetPort?: number | string;
}

/**
 * Endpoints ports are matched to Service ports by name, so against an existing Service the requested ports take the
 * names the Service gives them (by target port, else port). Ports the Service does not expose are kept, with a
 * warning: traffic cannot reach them through this Service.
 */
export function alignPortNames(
  ports: readonly PortSpec[],
  service: ServiceObject,
): { ports: PortSpec[]; messages: string[] } {
  const servicePorts = (service.spec?.["ports"] ?? []) as readonly ServicePort[];
  const messages: string[] = [];
  const aligned = ports.map((p) => {
    const match = servicePorts.find((sp) => (typeof sp.targetPort === "number" ? sp.targetPort : sp.port) === p.port);
    if (match === undefined) {
      messages.push(
        `Warning: service ${service.metadata.name} does not expose port ${p.port}; it is registered but unreachable through the service`,
      );
      return p;
    }
    const name = match.name ?? "";
    if (name !== p.name)
      messages.push(`Using the service's name '${name}' for port ${p.port} (instead of '${p.name}')`);
    return { name, port: p.port };
  });
  return { ports: aligned, messages };
}
