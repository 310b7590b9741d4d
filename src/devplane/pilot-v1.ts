/**
 * The dev Pilot's v1 discovery answers (pure: object store and request in, JSON out), as Istio 0.2's Pilot built
 * them (istio/pilot 0.2.x `proxy/envoy/discovery.go`, `config.go`, `route.go`; docs/protocols.md, "Pilot v1 REST"):
 *
 * - CDS `/v1/clusters/<service-cluster>/<service-node>`: `in.<port>` static clusters to `tcp://127.0.0.1:<port>` for
 *   every endpoint of a service on the node's IP, and an `out.<service-key>` SDS cluster for every service port.
 * - LDS `/v1/listeners/<service-cluster>/<service-node>`: the `virtual` listener on ENVOY_PORT (15001) with
 *   `use_original_dst`, which hands each captured connection to the listener for its original destination; then,
 *   not bound (`bind_to_port: false`), the node's inbound listeners `http_<ip>_<port>` / `tcp_<ip>_<port>` → `in.<port>`,
 *   and outbound `http_0.0.0.0_<port>` (routes by RDS named after the port) and `tcp_<VIP>_<port>` → `out.<key>`.
 * - RDS `/v1/routes/<port>/<service-cluster>/<service-node>`: a virtual host per HTTP service on that port, named
 *   by its service key, with every short form of its host name relative to the proxy's domain (`hello`,
 *   `hello.default`, … the FQDN) and the VIP, each as `host:port` (and bare for port 80), routing `/` to `out.<key>`.
 *
 * HTTP or TCP is decided by the port name as Pilot did (the part before the first `-`: http, http2, grpc → HTTP;
 * anything else, including no name, → TCP). The dev plane has no Mixer, so no mixer filter or `mixer_server`
 * cluster, and its mesh runs without mTLS between workloads, so outbound clusters carry no ssl_context.
 */
import { createHash } from "node:crypto";
import type { MeshService, ServicePort } from "./pilot-registry.js";
import { instancesOf, listServices } from "./pilot-registry.js";
import type { ObjectStore } from "./store.js";

/** pilot-agent's `--discoveryRefreshDelay` (1 s): how often the RDS of a listener is polled. */
export const V1_REFRESH_DELAY_MS = 1000;
/** Pilot 0.2's DefaultTimeoutMs for clusters. */
const CONNECT_TIMEOUT_MS = 1000;
/** Envoy's `--max-obj-name-len 189` as pilot-agent set it; Pilot shortened longer names (MaxClusterNameLength). */
export const MAX_CLUSTER_NAME_LENGTH = 189;
/** The capture port of the `virtual` listener (istio-iptables.sh ENVOY_PORT). */
export const VIRTUAL_LISTENER_PORT = 15001;

export interface ServiceNode {
  readonly type: string;
  readonly ip: string;
  readonly id: string;
  readonly domain: string;
}

/** `<type>~<ip>~<id>~<domain>`, exactly four parts (model.ParseServiceNode); undefined when malformed. */
export function parseServiceNode(node: string): ServiceNode | undefined {
  const parts = node.split("~");
  if (parts.length !== 4) return undefined;
  const [type = "", ip = "", id = "", domain = ""] = parts;
  return { type, ip, id, domain };
}

/** The service key of one port: `<host>|<port name>`, or the host alone for a single unnamed port (model.Service.Key). */
export function serviceKey(service: MeshService, port: ServicePort): string {
  return port.name === "" && service.ports.length === 1 ? service.hostname : `${service.hostname}|${port.name}`;
}

/** Names over 189 characters: the first 149 and the hex SHA-1 of the whole (Pilot's truncateClusterName). */
export function clusterName(name: string): string {
  if (name.length <= MAX_CLUSTER_NAME_LENGTH) return name;
  return name.slice(0, MAX_CLUSTER_NAME_LENGTH - 40) + createHash("sha1").update(name).digest("hex");
}

export function outboundClusterName(service: MeshService, port: ServicePort): string {
  return clusterName(`out.${serviceKey(service, port)}`);
}

export function isHttp(port: ServicePort): boolean {
  const prefix = (port.name.split("-")[0] ?? "").toLowerCase();
  return prefix === "http" || prefix === "http2" || prefix === "grpc";
}

interface NodeInstance {
  readonly service: MeshService;
  readonly servicePort: ServicePort;
  /** The endpoint port: where the workload listens. */
  readonly port: number;
}

/** The service ports with an endpoint on the node's IP: the node's own services (Pilot's HostInstances). */
export function nodeInstances(store: ObjectStore, node: ServiceNode): NodeInstance[] {
  const out: NodeInstance[] = [];
  for (const service of listServices(store)) {
    for (const servicePort of service.ports) {
      for (const instance of instancesOf(store, service, servicePort)) {
        if (instance.ip === node.ip) out.push({ service, servicePort, port: instance.port });
      }
    }
  }
  return out;
}

type Json = Record<string, unknown>;

function byName(a: { name: string }, b: { name: string }): number {
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}

/** CDS: `{"clusters": [...]}`, sorted by name as Pilot sorted them. */
export function v1Clusters(store: ObjectStore, node: ServiceNode): { clusters: Json[] } {
  const clusters = new Map<string, Json & { name: string }>();
  for (const instance of nodeInstances(store, node)) {
    const name = `in.${instance.port}`;
    clusters.set(name, {
      name,
      connect_timeout_ms: CONNECT_TIMEOUT_MS,
      type: "static",
      lb_type: "round_robin",
      hosts: [{ url: `tcp://127.0.0.1:${instance.port}` }],
    });
  }
  for (const service of listServices(store)) {
    for (const port of service.ports) {
      const name = outboundClusterName(service, port);
      clusters.set(name, {
        name,
        service_name: serviceKey(service, port),
        connect_timeout_ms: CONNECT_TIMEOUT_MS,
        type: "sds",
        lb_type: "round_robin",
        ...(port.name.startsWith("http2") || port.name.startsWith("grpc") ? { features: "http2" } : {}),
      });
    }
  }
  return { clusters: [...clusters.values()].sort(byName) };
}

const ROUTER = { type: "decoder", name: "router", config: {} };

function httpFilter(route: Json): Json {
  return {
    type: "read",
    name: "http_connection_manager",
    config: {
      codec_type: "auto",
      stat_prefix: "http",
      generate_request_id: true,
      ...route,
      filters: [ROUTER],
      access_log: [{ path: "/dev/stdout" }],
    },
  };
}

function tcpFilter(cluster: string, ip: string): Json {
  return {
    type: "read",
    name: "tcp_proxy",
    config: {
      stat_prefix: "tcp",
      route_config: { routes: [{ cluster, destination_ip_list: [`${ip}/32`] }] },
    },
  };
}

function listenerEntry(kind: "http" | "tcp", ip: string, port: number, filter: Json): Json & { address: string } {
  return {
    address: `tcp://${ip}:${port}`,
    name: `${kind}_${ip}_${port}`,
    filters: [filter],
    bind_to_port: false,
  };
}

/** LDS: `{"listeners": [...]}`, the virtual listener first, then by address as Pilot sorted them. */
export function v1Listeners(store: ObjectStore, node: ServiceNode): { listeners: Json[] } {
  const listeners = new Map<string, Json & { address: string }>();
  for (const { service, servicePort } of listServices(store).flatMap((service) =>
    service.ports.map((servicePort) => ({ service, servicePort })),
  )) {
    const cluster = outboundClusterName(service, servicePort);
    if (isHttp(servicePort)) {
      const entry = listenerEntry(
        "http",
        "0.0.0.0",
        servicePort.port,
        httpFilter({
          rds: { cluster: "rds", route_config_name: String(servicePort.port), refresh_delay_ms: V1_REFRESH_DELAY_MS },
        }),
      );
      listeners.set(entry.address, entry);
    } else if (service.address !== "") {
      const entry = listenerEntry("tcp", service.address, servicePort.port, tcpFilter(cluster, service.address));
      listeners.set(entry.address, entry);
    }
  }
  for (const instance of nodeInstances(store, node)) {
    const cluster = `in.${instance.port}`;
    const entry = isHttp(instance.servicePort)
      ? listenerEntry(
          "http",
          node.ip,
          instance.port,
          httpFilter({
            route_config: {
              virtual_hosts: [{ name: `inbound|${instance.port}`, domains: ["*"], routes: [{ prefix: "/", cluster }] }],
            },
          }),
        )
      : listenerEntry("tcp", node.ip, instance.port, tcpFilter(cluster, node.ip));
    listeners.set(entry.address, entry);
  }
  const sorted = [...listeners.values()].sort((a, b) => (a.address < b.address ? -1 : a.address > b.address ? 1 : 0));
  const virtual = {
    address: `tcp://0.0.0.0:${VIRTUAL_LISTENER_PORT}`,
    name: "virtual",
    filters: [],
    bind_to_port: true,
    use_original_dst: true,
  };
  return { listeners: [virtual, ...sorted] };
}

/** The longest common suffix of two label lists (Pilot's sharedHost). */
function sharedSuffix(a: readonly string[], b: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 1; i <= Math.min(a.length, b.length); i++) {
    if (a[a.length - i] !== b[b.length - i]) break;
    out.unshift(a[a.length - i] ?? "");
  }
  return out;
}

/** Every name a client of this proxy may use for the service, as `host:port` (bare too for port 80): buildVirtualHost. */
export function virtualHostDomains(service: MeshService, port: number, proxyDomain: string): string[] {
  const parts = service.hostname.split(".");
  const shared = sharedSuffix(proxyDomain.split("."), parts);
  let host = parts.slice(0, parts.length - shared.length).join(".");
  const hosts = host === "" ? [] : [host];
  for (const part of shared) {
    host = host === "" ? part : `${host}.${part}`;
    hosts.push(host);
  }
  if (service.address !== "") hosts.push(service.address);
  return hosts.flatMap((h) => (port === 80 ? [`${h}:${port}`, h] : [`${h}:${port}`]));
}

/** RDS for one route configuration (a port number): `{"virtual_hosts": [...]}`, sorted by name. */
export function v1Routes(store: ObjectStore, routeConfig: string, node: ServiceNode): { virtual_hosts: Json[] } {
  const port = /^\d+$/.test(routeConfig) ? Number(routeConfig) : undefined;
  const hosts: (Json & { name: string })[] = [];
  if (port !== undefined) {
    for (const service of listServices(store)) {
      for (const servicePort of service.ports) {
        if (servicePort.port !== port || !isHttp(servicePort)) continue;
        hosts.push({
          name: serviceKey(service, servicePort),
          domains: virtualHostDomains(service, port, node.domain),
          routes: [{ prefix: "/", cluster: outboundClusterName(service, servicePort), timeout_ms: 0 }],
        });
      }
    }
  }
  return { virtual_hosts: hosts.sort(byName) };
}

export type V1Answer =
  | { readonly status: 200; readonly body: unknown }
  | { readonly status: 404; readonly body: string }
  | { readonly status: 400; readonly body: string };

/**
 * The answer for a `/v1/clusters|listeners|routes/...` path, or undefined when the path is not one of them.
 * A node id without four `~`-separated parts is a 404, as Pilot answered it.
 */
export function v1Discovery(store: ObjectStore, path: string): V1Answer | undefined {
  const parts = path.split("/").slice(1);
  const [v1, kind] = parts;
  if (v1 !== "v1") return undefined;
  const args = parts.slice(2);
  const expected = kind === "clusters" || kind === "listeners" ? 2 : kind === "routes" ? 3 : undefined;
  if (expected === undefined) return undefined;
  if (args.length !== expected || args.some((a) => a === "")) {
    const shape =
      kind === "routes"
        ? "/v1/routes/<route-config>/<service-cluster>/<service-node>"
        : `/v1/${kind}/<service-cluster>/<service-node>`;
    return { status: 404, body: `not found: ${path} (expected ${shape})\n` };
  }
  const node = parseServiceNode(args[args.length - 1] ?? "");
  if (node === undefined) return { status: 404, body: "missing parts in the service node\n" };
  if (kind === "clusters") return { status: 200, body: v1Clusters(store, node) };
  if (kind === "listeners") return { status: 200, body: v1Listeners(store, node) };
  return { status: 200, body: v1Routes(store, args[0] ?? "", node) };
}
