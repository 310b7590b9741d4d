/**
 * What the dev Pilot knows about the mesh, read from the object store: Services (ports by name), their Endpoints,
 * and the WorkloadEntries their selector picks. Both the v1 REST registration API and the xDS server answer from
 * this view, so they agree with each other and with the Kubernetes API of `istio-vm dev` (where `istio-vm register`
 * writes VMs as Endpoints and istiod's auto-registration writes WorkloadEntries).
 *
 * WorkloadEntries as istiod's Kubernetes registry treats them (PILOT_ENABLE_K8S_SELECT_WORKLOAD_ENTRIES, on by
 * default): a Service with a selector also gets every entry in its namespace whose labels match it, at the entry's
 * port of the service port's name, else the service's targetPort, else its port. An entry with health checks on
 * (annotation `proxy.istio.io/health-checks-enabled: "true"`) counts only while its `Healthy` condition is True
 * (docs/protocols.md, "Auto-registration and health").
 */
import type { KubeObject, ObjectStore } from "./store.js";

export const CLUSTER_DOMAIN = "cluster.local";

export interface ServicePort {
  readonly name: string;
  readonly port: number;
  readonly protocol: string;
  /** A numeric targetPort, if the Service names one. */
  readonly targetPort?: number;
}

export interface MeshService {
  readonly namespace: string;
  readonly name: string;
  /** `<name>.<namespace>.svc.cluster.local` */
  readonly hostname: string;
  /** The cluster IP ("" for a headless service). */
  readonly address: string;
  readonly ports: readonly ServicePort[];
  /** spec.selector ({} for a selector-less Service). */
  readonly selector: Readonly<Record<string, string>>;
}

export interface ServiceInstance {
  readonly ip: string;
  readonly port: number;
}

interface ServiceObject extends KubeObject {
  readonly spec?: {
    readonly clusterIP?: string;
    readonly ports?: readonly { name?: string; port: number; protocol?: string; targetPort?: number | string }[];
    readonly selector?: Readonly<Record<string, string>>;
  };
}

export const HEALTH_CHECKS_ANNOTATION = "proxy.istio.io/health-checks-enabled";

export interface WorkloadEntryObject extends KubeObject {
  readonly spec?: {
    readonly address?: string;
    readonly ports?: Readonly<Record<string, number>>;
    readonly labels?: Readonly<Record<string, string>>;
    readonly serviceAccount?: string;
    readonly network?: string;
  };
  readonly status?: { readonly conditions?: readonly { type: string; status: string; message?: string }[] };
}

/** istiod's reading of an entry's health: without health checks always healthy, with them only when reported so. */
export function workloadEntryHealthy(entry: WorkloadEntryObject): boolean {
  if (entry.metadata.annotations?.[HEALTH_CHECKS_ANNOTATION] !== "true") return true;
  return entry.status?.conditions?.find((c) => c.type === "Healthy")?.status === "True";
}

interface EndpointsObject extends KubeObject {
  readonly subsets?: readonly {
    readonly addresses?: readonly { readonly ip: string }[];
    readonly ports?: readonly { readonly name?: string; readonly port: number }[];
  }[];
}

function toService(object: ServiceObject): MeshService {
  const namespace = object.metadata.namespace ?? "default";
  return {
    namespace,
    name: object.metadata.name,
    hostname: `${object.metadata.name}.${namespace}.svc.${CLUSTER_DOMAIN}`,
    address: object.spec?.clusterIP === undefined || object.spec.clusterIP === "None" ? "" : object.spec.clusterIP,
    ports: (object.spec?.ports ?? []).map((p) => ({
      name: p.name ?? "",
      port: p.port,
      protocol: p.protocol ?? "TCP",
      ...(typeof p.targetPort === "number" ? { targetPort: p.targetPort } : {}),
    })),
    selector: object.spec?.selector ?? {},
  };
}

export function listServices(store: ObjectStore): MeshService[] {
  return store.list("services").map((o) => toService(o as ServiceObject));
}

/** The Service with this `<name>.<namespace>.svc.cluster.local` host name, if any. */
export function findService(store: ObjectStore, hostname: string): MeshService | undefined {
  const suffix = `.svc.${CLUSTER_DOMAIN}`;
  const host = hostname.toLowerCase();
  if (!host.endsWith(suffix)) return undefined;
  const parts = host.slice(0, -suffix.length).split(".");
  if (parts.length !== 2) return undefined;
  const [name = "", namespace = ""] = parts;
  const object = store.tryGet("services", namespace, name) as ServiceObject | undefined;
  return object === undefined ? undefined : toService(object);
}

/**
 * The endpoints of one service port: every ready address of the Endpoints object paired with the endpoint port of
 * the same name (Kubernetes names endpoint ports after service ports; a single-port service may leave both unnamed).
 */
export function instancesOf(store: ObjectStore, service: MeshService, port: ServicePort): ServiceInstance[] {
  const endpoints = store.tryGet("endpoints", service.namespace, service.name) as EndpointsObject | undefined;
  const instances: ServiceInstance[] = [];
  for (const subset of endpoints?.subsets ?? []) {
    const ports = subset.ports ?? [];
    const match =
      ports.find((p) => (p.name ?? "") === port.name) ??
      (ports.length === 1 && service.ports.length === 1 ? ports[0] : undefined);
    if (match === undefined) continue;
    for (const address of subset.addresses ?? []) instances.push({ ip: address.ip, port: match.port });
  }
  const selector = Object.entries(service.selector);
  if (selector.length === 0) return instances;
  for (const object of store.list("workloadentries", service.namespace)) {
    const entry = object as WorkloadEntryObject;
    const address = entry.spec?.address ?? "";
    const labels = entry.spec?.labels ?? {}; // istiod selects on the spec's labels, not the object's
    if (address === "" || !selector.every(([k, v]) => labels[k] === v) || !workloadEntryHealthy(entry)) continue;
    const instance = { ip: address, port: entry.spec?.ports?.[port.name] ?? port.targetPort ?? port.port };
    if (!instances.some((i) => i.ip === instance.ip && i.port === instance.port)) instances.push(instance);
  }
  return instances;
}
