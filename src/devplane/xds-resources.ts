/**
 * What the dev Pilot's ADS server sends, computed from the object store: CDS (one EDS cluster per service port,
 * named as Istio names outbound clusters, `outbound|<port>||<host>`), EDS (a ClusterLoadAssignment per cluster from
 * the registry's instances: Endpoints and the healthy WorkloadEntries a Service selects) and NDS (the name table).
 */
import type { AnyResource, ClusterLoadAssignmentResource } from "../xds/protos.js";
import { packCluster, packClusterLoadAssignment } from "../xds/protos.js";
import type { NdsNameTable } from "../xds/nds.js";
import type { ObjectStore } from "./store.js";
import { findService, instancesOf, listServices } from "./pilot-registry.js";
import { serviceAddresses } from "./kube-dns.js";

export function outboundClusterName(port: number, hostname: string): string {
  return `outbound|${port}||${hostname}`;
}

function parseOutboundClusterName(name: string): { port: number; hostname: string } | undefined {
  const m = /^outbound\|(\d+)\|[^|]*\|(.+)$/.exec(name);
  if (m === null) return undefined;
  return { port: Number(m[1]), hostname: m[2] ?? "" };
}

export function clusterResources(store: ObjectStore): AnyResource[] {
  return listServices(store).flatMap((service) =>
    service.ports.map((port) => {
      const name = outboundClusterName(port.port, service.hostname);
      return packCluster({
        name,
        type: "EDS",
        eds_cluster_config: { service_name: name, eds_config: { ads: {} } },
        connect_timeout: { seconds: 10 },
      });
    }),
  );
}

export function loadAssignment(store: ObjectStore, clusterName: string): ClusterLoadAssignmentResource {
  const parsed = parseOutboundClusterName(clusterName);
  const service = parsed === undefined ? undefined : findService(store, parsed.hostname);
  const port = service?.ports.find((p) => p.port === parsed?.port);
  const instances = service === undefined || port === undefined ? [] : instancesOf(store, service, port);
  return {
    cluster_name: clusterName,
    endpoints:
      instances.length === 0
        ? []
        : [
            {
              lb_endpoints: instances.map((i) => ({
                endpoint: { address: { socket_address: { address: i.ip, port_value: i.port } } },
              })),
            },
          ],
  };
}

export function endpointResources(store: ObjectStore, names: readonly string[]): AnyResource[] {
  const wanted =
    names.length > 0
      ? names
      : listServices(store).flatMap((s) => s.ports.map((p) => outboundClusterName(p.port, s.hostname)));
  return wanted.map((name) => packClusterLoadAssignment(loadAssignment(store, name)));
}

/**
 * NDS as istiod builds it (istio/istio `pilot/pkg/serviceregistry/.../dnsutil` BuildNameTable, 1.24): one entry
 * per Service host with its cluster IPs (a headless Service: its ready endpoint addresses), registry Kubernetes,
 * and the shortname and namespace from which the agent derives `name`, `name.ns` and `name.ns.svc`. A Service
 * with no address at all is left out, as istiod does.
 */
export function nameTable(store: ObjectStore): NdsNameTable {
  const table: Record<string, NdsNameTable[string]> = {};
  for (const service of listServices(store)) {
    const ips = serviceAddresses(store, service.namespace, service.name) ?? [];
    if (ips.length === 0) continue;
    table[service.hostname] = { ips, registry: "Kubernetes", shortname: service.name, namespace: service.namespace };
  }
  return table;
}
