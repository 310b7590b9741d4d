/**
 * What the dev Pilot's ADS server sends, computed from the object store: CDS (one EDS cluster per service port,
 * named as Istio names outbound clusters, `outbound|<port>||<host>`), EDS (a ClusterLoadAssignment per cluster from
 * the registry's instances: Endpoints and the healthy WorkloadEntries a Service selects) and NDS (the name table).
 */
import protobuf from "protobufjs";
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

export const UPSTREAM_TLS_CONTEXT_TYPE_URL =
  "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

/**
 * An SdsSecretConfig naming a secret of the proxy's `sds-grpc` cluster (the agent's SDS socket), as istiod writes it
 * (pilot/pkg/networking/core/cluster_tls.go, model.ConstructSdsSecretConfig): GRPC, V3, node on the first message
 * only, no initial fetch timeout. Hand-encoded (field numbers from Envoy's config_source.proto, grpc_service.proto,
 * tls.proto): the generated descriptor carries Secret and SdsSecretConfig, not the TLS contexts.
 */
function sdsSecretConfig(name: string): Uint8Array {
  const w = protobuf.Writer.create();
  w.uint32((1 << 3) | 2).string(name);
  w.uint32((2 << 3) | 2).fork(); // sds_config: ConfigSource
  w.uint32((2 << 3) | 2).fork(); // api_config_source: ApiConfigSource
  w.uint32((1 << 3) | 0).int32(2); // api_type: GRPC
  w.uint32((4 << 3) | 2).fork(); // grpc_services
  w.uint32((1 << 3) | 2).fork(); // envoy_grpc
  w.uint32((1 << 3) | 2).string("sds-grpc");
  w.ldelim().ldelim();
  w.uint32((7 << 3) | 0).bool(true); // set_node_on_first_message_only
  w.uint32((8 << 3) | 0).int32(2); // transport_api_version: V3
  w.ldelim();
  w.uint32((4 << 3) | 2)
    .fork()
    .ldelim(); // initial_fetch_timeout: 0s
  w.uint32((6 << 3) | 0).int32(2); // resource_api_version: V3
  w.ldelim();
  return w.finish();
}

/**
 * istiod's ISTIO_MUTUAL client TLS for an outbound cluster (cluster_tls.go buildIstioMutualTLS): the workload key
 * and chain `default` and the trust bundle `ROOTCA` over SDS, SNI `outbound_.<port>_._.<host>`. This is what makes
 * Envoy ask the agent's SDS server for its certificates.
 */
export function istioMutualTls(sni: string): Uint8Array {
  const w = protobuf.Writer.create();
  w.uint32((1 << 3) | 2).fork(); // common_tls_context
  w.uint32((6 << 3) | 2).bytes(sdsSecretConfig("default")); // tls_certificate_sds_secret_configs
  w.uint32((8 << 3) | 2).fork(); // combined_validation_context
  w.uint32((1 << 3) | 2)
    .fork()
    .ldelim(); // default_validation_context
  w.uint32((2 << 3) | 2).bytes(sdsSecretConfig("ROOTCA")); // validation_context_sds_secret_config
  w.ldelim();
  w.uint32((4 << 3) | 2).string("istio-peer-exchange"); // alpn_protocols
  w.uint32((4 << 3) | 2).string("istio");
  w.ldelim();
  w.uint32((2 << 3) | 2).string(sni);
  return w.finish();
}

/**
 * One EDS cluster per service port. `meshTls`: istiod's clusters, with Istio's mTLS over SDS; off for the legacy
 * profile's servers (Pilot 0.8 and older served no such clusters, and a bootstrap of that era has no `sds-grpc`).
 */
export function clusterResources(store: ObjectStore, meshTls = false): AnyResource[] {
  return listServices(store).flatMap((service) =>
    service.ports.map((port) => {
      const name = outboundClusterName(port.port, service.hostname);
      return packCluster({
        name,
        type: "EDS",
        eds_cluster_config: { service_name: name, eds_config: { ads: {} } },
        connect_timeout: { seconds: 10 },
        ...(meshTls
          ? {
              transport_socket: {
                name: "envoy.transport_sockets.tls",
                typed_config: {
                  type_url: UPSTREAM_TLS_CONTEXT_TYPE_URL,
                  value: istioMutualTls(`outbound_.${port.port}_._.${service.hostname}`),
                },
              },
            }
          : {}),
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
