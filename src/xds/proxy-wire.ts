/**
 * The xDS proxy's byte-level helpers (pure): short names of the type URLs it routes (logs, status, metric labels),
 * and the node of a DiscoveryRequest read and written as raw protobuf fields, so that Envoy's messages pass through
 * as Envoy wrote them (src/xds/proxy.ts).
 */
import protobuf from "protobufjs";
import type { StructValue, XdsNode } from "./protos.js";
import { CLUSTER_TYPE_URL, encodeDiscoveryRequest } from "./protos.js";

export const LISTENER_TYPE_URL = "type.googleapis.com/envoy.config.listener.v3.Listener";

const SHORT_NAMES: Readonly<Record<string, string>> = {
  [CLUSTER_TYPE_URL]: "CDS",
  [LISTENER_TYPE_URL]: "LDS",
  "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment": "EDS",
  "type.googleapis.com/envoy.config.route.v3.RouteConfiguration": "RDS",
  "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret": "SDS",
  "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig": "ECDS",
  "type.googleapis.com/istio.networking.nds.v1.NameTable": "NDS",
  "type.googleapis.com/istio.v1.HealthInformation": "health",
  "type.googleapis.com/istio.mesh.v1alpha1.ProxyConfig": "PCDS",
};

/** CDS, LDS, NDS …: the short name of a type URL (for logs, status and metric labels). */
export function typeName(typeUrl: string): string {
  return SHORT_NAMES[typeUrl] ?? (typeUrl.split("/").pop() || "unknown");
}

/** An encoded Node and its key (what istiod compares). */
export interface NodeBytes {
  readonly bytes: Uint8Array;
  readonly key: string;
}

/** The raw bytes of a message's length-delimited field `number` (the first occurrence), if any. */
export function fieldBytes(message: Uint8Array, number: number): Uint8Array | undefined {
  const reader = protobuf.Reader.create(message);
  while (reader.pos < reader.len) {
    const tag = reader.uint32();
    if (tag >>> 3 === number && (tag & 7) === 2) return reader.bytes();
    reader.skipType(tag & 7);
  }
  return undefined;
}

/** `message` with field 2 (DiscoveryRequest.node) appended; protobuf merges fields in any order. */
export function withNode(message: Uint8Array, nodeBytes: Uint8Array): Buffer {
  const field = protobuf.Writer.create()
    .uint32((2 << 3) | 2)
    .bytes(nodeBytes)
    .finish();
  return Buffer.concat([message, field]);
}

function sortedJson(value: StructValue | undefined): string {
  if (value === null || value === undefined || typeof value !== "object") return JSON.stringify(value ?? null);
  if (Array.isArray(value)) return `[${value.map(sortedJson).join(",")}]`;
  const keys = Object.keys(value).sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${sortedJson(value[k])}`).join(",")}}`;
}

/** What istiod takes from a node: id, cluster and metadata (compared, not the user agent or extensions). */
export function nodeKey(node: XdsNode): string {
  return sortedJson({ id: node.id, cluster: node.cluster, metadata: node.metadata as Record<string, StructValue> });
}

/** A node encoded as DiscoveryRequest field 2 carries it, with its key. */
export function encodeNode(node: XdsNode): NodeBytes {
  const encoded = encodeDiscoveryRequest({
    version_info: "",
    node,
    resource_names: [],
    type_url: "",
    response_nonce: "",
  });
  return { bytes: fieldBytes(encoded, 2) ?? new Uint8Array(), key: nodeKey(node) };
}
