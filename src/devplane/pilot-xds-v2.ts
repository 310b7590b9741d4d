/**
 * The dev Pilot's xDS v2 (Istio 0.8's Pilot, ENVOY_XDS_API=v2 on the legacy profile): what the ADS servers of the
 * legacy profile answer on `envoy.service.discovery.v2.AggregatedDiscoveryService/StreamAggregatedResources`, built
 * from the object store as Pilot 0.8–1.0 built them (istio/istio `pilot/pkg/networking/core/v1alpha3/cluster.go`,
 * `listener.go`, `httproute.go`; docs/protocols.md, "xDS v2"):
 *
 * - CDS: an `outbound|<port>||<host>` EDS cluster (over ADS) for every service port, an `inbound|<port>||<host>`
 *   STATIC cluster to `127.0.0.1:<endpoint port>` for every endpoint of a service on the node's IP (both with
 *   USE_DOWNSTREAM_PROTOCOL), and `BlackHoleCluster` (no hosts), where the capture listener sends what no other
 *   listener takes (1.0 added it; the 0.8 snapshots vary here).
 * - LDS: `virtual` on 15001 with `use_original_dst` (it hands each captured connection to the listener of its
 *   original destination); the node's inbound `<ip>_<port>` listeners → `inbound|…`; outbound `0.0.0.0_<port>` for
 *   HTTP ports (routes over RDS named after the port) and `<VIP>_<port>` for TCP ports → `outbound|…`. All but
 *   `virtual` say `deprecated_v1.bind_to_port: false`: they only receive connections handed over by `virtual`.
 *   Filters carry their configuration as a Struct (`config`), as v2 Envoy of that era took it.
 * - RDS: per port, a virtual host per HTTP service with every short form of its name (as v1, src/devplane/pilot-v1.ts).
 * - EDS: a ClusterLoadAssignment per outbound cluster from the Endpoints.
 *
 * A type URL that is not one of these four v2 types (a v3 one included) is ignored, as Pilot 0.8's ADS ignored an
 * unknown type ("ADS: Unknown watched resources", pilot/pkg/proxy/envoy/v2/ads.go). The dev plane has no Mixer and
 * runs its mesh without workload mTLS, so no mixer filters and no TLS contexts on these clusters.
 */
import type { AnyResource, XdsNode } from "../xds/protos.js";
import type { V2Object, V2TypeUrl } from "../xds/protos-v2.js";
import {
  ADS_V2_METHOD,
  V2_TYPE,
  decodeDiscoveryRequestV2,
  encodeDiscoveryResponseV2,
  isV2TypeUrl,
  packV2,
  v2Struct,
} from "../xds/protos-v2.js";
import type { StructValue } from "../xds/protos.js";
import type { MeshService, ServicePort } from "./pilot-registry.js";
import { listServices } from "./pilot-registry.js";
import type { ServiceNode } from "./pilot-v1.js";
import { VIRTUAL_LISTENER_PORT, isHttp, nodeInstances, parseServiceNode, virtualHostDomains } from "./pilot-v1.js";
import type { AdsApiVersion } from "./pilot-xds.js";
import { loadAssignment, outboundClusterName } from "./pilot-xds.js";
import type { ObjectStore } from "./store.js";

export const BLACK_HOLE_CLUSTER = "BlackHoleCluster";
/** The mesh's default connectTimeout (1 s) in Istio 0.8's MeshConfig. */
const CONNECT_TIMEOUT = { seconds: 1 };

export function inboundClusterName(port: number, hostname: string): string {
  return `inbound|${port}||${hostname}`;
}

function socketAddress(address: string, port: number): V2Object {
  return { socket_address: { address, port_value: port } };
}

function needsHttp2(port: ServicePort): boolean {
  return port.name.startsWith("http2") || port.name.startsWith("grpc");
}

/** CDS: outbound EDS clusters, the node's inbound STATIC clusters, the black hole; sorted by name. */
export function v2Clusters(store: ObjectStore, node: ServiceNode): V2Object[] {
  const clusters = new Map<string, V2Object>();
  for (const service of listServices(store)) {
    for (const port of service.ports) {
      const name = outboundClusterName(port.port, service.hostname);
      clusters.set(name, {
        name,
        type: "EDS",
        eds_cluster_config: { service_name: name, eds_config: { ads: {} } },
        connect_timeout: CONNECT_TIMEOUT,
        lb_policy: "ROUND_ROBIN",
        // Pilot 0.8 let the downstream protocol pick HTTP/1.1 or HTTP/2 upstream (cluster.go).
        protocol_selection: "USE_DOWNSTREAM_PROTOCOL",
        ...(needsHttp2(port) ? { http2_protocol_options: {} } : {}),
      });
    }
  }
  for (const instance of nodeInstances(store, node)) {
    const name = inboundClusterName(instance.servicePort.port, instance.service.hostname);
    clusters.set(name, {
      name,
      type: "STATIC",
      connect_timeout: CONNECT_TIMEOUT,
      lb_policy: "ROUND_ROBIN",
      protocol_selection: "USE_DOWNSTREAM_PROTOCOL",
      hosts: [socketAddress("127.0.0.1", instance.port)],
    });
  }
  clusters.set(BLACK_HOLE_CLUSTER, {
    name: BLACK_HOLE_CLUSTER,
    type: "STATIC",
    connect_timeout: CONNECT_TIMEOUT,
    lb_policy: "ROUND_ROBIN",
  });
  return [...clusters.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([, c]) => c);
}

function filter(name: string, config: Readonly<Record<string, StructValue>>): V2Object {
  return { name, config: v2Struct(config) };
}

function tcpProxy(cluster: string): V2Object {
  return filter("envoy.tcp_proxy", { stat_prefix: cluster, cluster });
}

function httpConnectionManager(statPrefix: string, routing: Readonly<Record<string, StructValue>>): V2Object {
  return filter("envoy.http_connection_manager", {
    stat_prefix: statPrefix,
    codec_type: "AUTO",
    ...routing,
    http_filters: [{ name: "envoy.router" }],
  });
}

function listener(address: string, port: number, filters: readonly V2Object[]): V2Object & { name: string } {
  return {
    name: `${address}_${port}`,
    address: socketAddress(address, port),
    filter_chains: [{ filters }],
    deprecated_v1: { bind_to_port: { value: false } },
  };
}

/** LDS: the node's inbound listeners, the outbound ones, then `virtual`. */
export function v2Listeners(store: ObjectStore, node: ServiceNode): V2Object[] {
  const listeners = new Map<string, V2Object & { name: string }>();
  for (const instance of nodeInstances(store, node)) {
    const cluster = inboundClusterName(instance.servicePort.port, instance.service.hostname);
    const filters = isHttp(instance.servicePort)
      ? httpConnectionManager(cluster, {
          route_config: {
            name: cluster,
            virtual_hosts: [
              { name: cluster, domains: ["*"], routes: [{ match: { prefix: "/" }, route: { cluster } }] },
            ],
          },
        })
      : tcpProxy(cluster);
    const entry = listener(node.ip, instance.port, [filters]);
    listeners.set(entry.name, entry);
  }
  for (const service of listServices(store)) {
    for (const port of service.ports) {
      const cluster = outboundClusterName(port.port, service.hostname);
      let entry: (V2Object & { name: string }) | undefined;
      if (isHttp(port)) {
        // One listener per HTTP port: the virtual hosts of every service on it come over RDS.
        entry = listener("0.0.0.0", port.port, [
          httpConnectionManager(String(port.port), {
            rds: { config_source: { ads: {} }, route_config_name: String(port.port) },
          }),
        ]);
      } else if (service.address !== "") {
        entry = listener(service.address, port.port, [tcpProxy(cluster)]);
      }
      if (entry !== undefined && !listeners.has(entry.name)) listeners.set(entry.name, entry);
    }
  }
  const virtual = {
    name: "virtual",
    address: socketAddress("0.0.0.0", VIRTUAL_LISTENER_PORT),
    filter_chains: [{ filters: [tcpProxy(BLACK_HOLE_CLUSTER)] }],
    use_original_dst: { value: true },
  };
  return [...listeners.values(), virtual];
}

function virtualHosts(store: ObjectStore, port: number, node: ServiceNode): V2Object[] {
  const hosts: { name: string; service: MeshService; servicePort: ServicePort }[] = [];
  for (const service of listServices(store)) {
    for (const servicePort of service.ports) {
      if (servicePort.port === port && isHttp(servicePort)) {
        hosts.push({ name: `${service.hostname}:${port}`, service, servicePort });
      }
    }
  }
  return hosts
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
    .map(({ name, service }) => ({
      name,
      domains: virtualHostDomains(service, port, node.domain),
      routes: [{ match: { prefix: "/" }, route: { cluster: outboundClusterName(port, service.hostname) } }],
    }));
}

/** RDS: one RouteConfiguration per requested name (a port number; anything else has no virtual hosts). */
export function v2Routes(store: ObjectStore, names: readonly string[], node: ServiceNode): V2Object[] {
  return names.map((name) => ({
    name,
    virtual_hosts: /^\d+$/.test(name) ? virtualHosts(store, Number(name), node) : [],
  }));
}

/** EDS: the requested clusters' endpoints, or every outbound cluster's when none is named. */
export function v2Endpoints(store: ObjectStore, names: readonly string[]): V2Object[] {
  const wanted =
    names.length > 0
      ? names
      : listServices(store).flatMap((s) => s.ports.map((p) => outboundClusterName(p.port, s.hostname)));
  return wanted.map((name) => loadAssignment(store, name) as unknown as V2Object);
}

function resourcesFor(store: ObjectStore, typeUrl: V2TypeUrl, names: readonly string[], node: ServiceNode): V2Object[] {
  switch (typeUrl) {
    case V2_TYPE.cluster:
      return v2Clusters(store, node);
    case V2_TYPE.listener:
      return v2Listeners(store, node);
    case V2_TYPE.route:
      return v2Routes(store, names, node);
    case V2_TYPE.endpoint:
      return v2Endpoints(store, names);
  }
}

/** xDS v2 for the dev Pilot's ADS servers (src/devplane/pilot-xds.ts serves it beside v3 on the legacy profile). */
export const ADS_V2: AdsApiVersion = {
  name: "v2",
  method: ADS_V2_METHOD,
  decodeRequest: decodeDiscoveryRequestV2,
  encodeResponse: encodeDiscoveryResponseV2,
  // Pilot 0.8 ended a stream whose node id was not `<type>~<ip>~<id>~<domain>` (model.ParseServiceNode).
  checkNode: (node: XdsNode) =>
    parseServiceNode(node.id) === undefined
      ? `node id ${JSON.stringify(node.id)} is not <type>~<ip>~<id>~<domain> (missing parts in the service node)`
      : undefined,
  resources(store: ObjectStore, typeUrl: string, names: readonly string[], xdsNode: XdsNode) {
    const node = parseServiceNode(xdsNode.id);
    if (!isV2TypeUrl(typeUrl) || node === undefined) return undefined;
    return resourcesFor(store, typeUrl, names, node).map((object): AnyResource => packV2(typeUrl, object));
  },
};
