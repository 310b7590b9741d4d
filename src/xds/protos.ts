/**
 * Envoy's v3 xDS messages, loaded from the descriptor generated at build time (scripts/gen-descriptors.mjs), so
 * they work inside the esbuild bundle and the single executable where no .proto file exists. One protobufjs Root
 * serves both the ADS client of the discovery check and the dev Pilot's ADS server; the gRPC service definition
 * below uses its encoders directly, so `Any` payloads (Cluster, ClusterLoadAssignment) are packed and unpacked with
 * the same types.
 */
import type { ServiceDefinition } from "@grpc/grpc-js";
import protobuf from "protobufjs";
import descriptor from "./xds-descriptor.json" with { type: "json" };

export const CLUSTER_TYPE_URL = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
export const ENDPOINT_TYPE_URL = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/**
 * The agent's health reports to istiod (istio/istio `pkg/model/xds.go` HealthInfoType): a DiscoveryRequest of this
 * type with no error_detail says healthy, one with error_detail (code 13, INTERNAL) unhealthy; istiod never answers it.
 */
export const HEALTH_INFO_TYPE_URL = "type.googleapis.com/istio.v1.HealthInformation";
export const ADS_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

interface XdsTypes {
  readonly DiscoveryRequest: protobuf.Type;
  readonly DiscoveryResponse: protobuf.Type;
  readonly Cluster: protobuf.Type;
  readonly ClusterLoadAssignment: protobuf.Type;
  readonly Secret: protobuf.Type;
}

let built: XdsTypes | undefined;

/**
 * The Root is built on first use, not at import: building it (protobufjs resolves every type of the descriptor) is
 * the largest module initialiser of the bundle, and most commands, the agent without a discovery check included,
 * never encode an xDS message.
 */
function xdsTypes(): XdsTypes {
  if (built === undefined) {
    const root = protobuf.Root.fromJSON(descriptor.root as protobuf.INamespace);
    built = {
      DiscoveryRequest: root.lookupType("envoy.service.discovery.v3.DiscoveryRequest"),
      DiscoveryResponse: root.lookupType("envoy.service.discovery.v3.DiscoveryResponse"),
      Cluster: root.lookupType("envoy.config.cluster.v3.Cluster"),
      ClusterLoadAssignment: root.lookupType("envoy.config.endpoint.v3.ClusterLoadAssignment"),
      Secret: root.lookupType("envoy.extensions.transport_sockets.tls.v3.Secret"),
    };
  }
  return built;
}

/** A protobuf Struct value as plain JSON (google.protobuf.Struct is encoded by protobufjs from this shape). */
export type StructValue = string | number | boolean | null | StructValue[] | { [key: string]: StructValue };

export interface XdsNode {
  readonly id: string;
  readonly cluster: string;
  readonly metadata: Readonly<Record<string, StructValue>>;
  readonly user_agent_name?: string;
  readonly user_agent_version?: string;
}

export interface RpcStatus {
  readonly code: number;
  readonly message: string;
}

export interface DiscoveryRequest {
  readonly version_info: string;
  readonly node?: XdsNode;
  readonly resource_names: readonly string[];
  readonly type_url: string;
  readonly response_nonce: string;
  readonly error_detail?: RpcStatus;
}

export interface AnyResource {
  readonly type_url: string;
  readonly value: Uint8Array;
}

export interface DiscoveryResponse {
  readonly version_info: string;
  readonly resources: readonly AnyResource[];
  readonly type_url: string;
  readonly nonce: string;
  readonly control_plane?: { readonly identifier: string };
}

/** The few Cluster fields the dev Pilot sets and the check reads; the wire form is Envoy's full message. */
export interface ClusterResource {
  readonly name: string;
  readonly type?: "EDS" | "STATIC" | "STRICT_DNS" | "LOGICAL_DNS" | "ORIGINAL_DST";
  readonly eds_cluster_config?: { readonly service_name: string; readonly eds_config: { readonly ads: object } };
  readonly connect_timeout?: { readonly seconds: number; readonly nanos?: number };
  /** Envoy's TransportSocket; `typed_config` an Any (e.g. an UpstreamTlsContext, encoded by the caller). */
  readonly transport_socket?: {
    readonly name: string;
    readonly typed_config: { readonly type_url: string; readonly value: Uint8Array };
  };
}

export interface LbEndpointResource {
  readonly endpoint: {
    readonly address: { readonly socket_address: { readonly address: string; readonly port_value: number } };
  };
}

export interface ClusterLoadAssignmentResource {
  readonly cluster_name: string;
  readonly endpoints: readonly { readonly lb_endpoints: readonly LbEndpointResource[] }[];
}

/**
 * Struct (google.protobuf.Struct) from plain JSON: protobufjs' fromObject wants the fields/kind shape. The well-known
 * google.protobuf types come from protobufjs' built-in definitions, whose field names are camelCase.
 */
function toStructValue(value: StructValue): object {
  if (value === null) return { nullValue: 0 };
  if (typeof value === "string") return { stringValue: value };
  if (typeof value === "number") return { numberValue: value };
  if (typeof value === "boolean") return { boolValue: value };
  if (Array.isArray(value)) return { listValue: { values: value.map(toStructValue) } };
  return { structValue: toStruct(value) };
}

export function toStruct(value: Readonly<Record<string, StructValue>>): object {
  return { fields: Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toStructValue(v)])) };
}

function fromStructValue(value: Record<string, unknown>): StructValue {
  if ("stringValue" in value) return value["stringValue"] as string;
  if ("numberValue" in value) return value["numberValue"] as number;
  if ("boolValue" in value) return value["boolValue"] as boolean;
  if ("listValue" in value) {
    const list = value["listValue"] as { values?: Record<string, unknown>[] };
    return (list.values ?? []).map(fromStructValue);
  }
  if ("structValue" in value) return fromStruct(value["structValue"] as { fields?: Record<string, never> });
  return null;
}

export function fromStruct(struct: { fields?: Record<string, Record<string, unknown>> } | undefined): {
  [key: string]: StructValue;
} {
  return Object.fromEntries(Object.entries(struct?.fields ?? {}).map(([k, v]) => [k, fromStructValue(v)]));
}

const CONVERT: protobuf.IConversionOptions = {
  longs: Number,
  enums: String,
  bytes: Buffer,
  defaults: true,
  oneofs: false,
};

export function encodeDiscoveryRequest(request: DiscoveryRequest): Buffer {
  const plain = {
    ...request,
    resource_names: [...request.resource_names],
    ...(request.node === undefined ? {} : { node: { ...request.node, metadata: toStruct(request.node.metadata) } }),
  };
  return Buffer.from(xdsTypes().DiscoveryRequest.encode(xdsTypes().DiscoveryRequest.fromObject(plain)).finish());
}

export function decodeDiscoveryRequest(bytes: Buffer): DiscoveryRequest {
  const object = xdsTypes().DiscoveryRequest.toObject(xdsTypes().DiscoveryRequest.decode(bytes), CONVERT) as Record<
    string,
    unknown
  >;
  const node = object["node"] as (Omit<XdsNode, "metadata"> & { metadata?: { fields?: never } }) | null | undefined;
  const error = object["error_detail"] as RpcStatus | null | undefined;
  return {
    version_info: object["version_info"] as string,
    resource_names: object["resource_names"] as string[],
    type_url: object["type_url"] as string,
    response_nonce: object["response_nonce"] as string,
    ...(node === null || node === undefined ? {} : { node: { ...node, metadata: fromStruct(node.metadata) } }),
    ...(error === null || error === undefined ? {} : { error_detail: { code: error.code, message: error.message } }),
  };
}

export function encodeDiscoveryResponse(response: DiscoveryResponse): Buffer {
  return Buffer.from(xdsTypes().DiscoveryResponse.encode(xdsTypes().DiscoveryResponse.fromObject(response)).finish());
}

export function decodeDiscoveryResponse(bytes: Buffer): DiscoveryResponse {
  const object = xdsTypes().DiscoveryResponse.toObject(xdsTypes().DiscoveryResponse.decode(bytes), CONVERT) as Record<
    string,
    unknown
  >;
  return discoveryResponseFrom(object);
}

/** A DiscoveryResponse from protobufjs' object form (v3's and v2's have the same fields). */
export function discoveryResponseFrom(object: Record<string, unknown>): DiscoveryResponse {
  const controlPlane = object["control_plane"] as { identifier: string } | null | undefined;
  return {
    version_info: object["version_info"] as string,
    resources: object["resources"] as AnyResource[],
    type_url: object["type_url"] as string,
    nonce: object["nonce"] as string,
    ...(controlPlane === null || controlPlane === undefined ? {} : { control_plane: controlPlane }),
  };
}

export function packCluster(cluster: ClusterResource): AnyResource {
  return {
    type_url: CLUSTER_TYPE_URL,
    value: xdsTypes().Cluster.encode(xdsTypes().Cluster.fromObject(cluster)).finish(),
  };
}

export function unpackCluster(resource: AnyResource): ClusterResource {
  return xdsTypes().Cluster.toObject(xdsTypes().Cluster.decode(resource.value), CONVERT) as ClusterResource;
}

export function packClusterLoadAssignment(assignment: ClusterLoadAssignmentResource): AnyResource {
  return {
    type_url: ENDPOINT_TYPE_URL,
    value: xdsTypes().ClusterLoadAssignment.encode(xdsTypes().ClusterLoadAssignment.fromObject(assignment)).finish(),
  };
}

export function unpackClusterLoadAssignment(resource: AnyResource): ClusterLoadAssignmentResource {
  return xdsTypes().ClusterLoadAssignment.toObject(
    xdsTypes().ClusterLoadAssignment.decode(resource.value),
    CONVERT,
  ) as ClusterLoadAssignmentResource;
}

/** A bidirectional stream of v3 DiscoveryRequests and DiscoveryResponses at `path` (ADS and SDS alike). */
function discoveryStream(path: string): ServiceDefinition[string] {
  return {
    path,
    requestStream: true,
    responseStream: true,
    requestSerialize: (value: DiscoveryRequest) => encodeDiscoveryRequest(value),
    requestDeserialize: (bytes: Buffer) => decodeDiscoveryRequest(bytes),
    responseSerialize: (value: DiscoveryResponse) => encodeDiscoveryResponse(value),
    responseDeserialize: (bytes: Buffer) => decodeDiscoveryResponse(bytes),
  };
}

/** The ADS service for @grpc/grpc-js (client constructor and server), with the encoders above. */
export const ADS_SERVICE: ServiceDefinition = {
  StreamAggregatedResources: discoveryStream(ADS_METHOD),
};

/**
 * The gRPC request header with which a client asks the dev Pilot of the legacy profile for xDS v3 explicitly (no
 * Pilot of Istio 0.2–0.8 served v3; src/devplane/pilot-xds.ts). Any other server ignores it.
 */
export const XDS_API_HEADER = "istio-vm-xds-api";
// ── SDS (envoy.service.secret.v3.SecretDiscoveryService) ──────────────────────────────────────────────────────────

export const SECRET_TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
export const SDS_METHOD = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets";

/** An Envoy DataSource with inline bytes: how Istio's agent hands over PEM (never a file name). */
export interface InlineBytes {
  readonly inline_bytes: Uint8Array;
}

/** The two shapes of Secret the agent serves: Istio's `default` (key + chain) and `ROOTCA` (trust bundle). */
export interface SecretResource {
  readonly name: string;
  readonly tls_certificate?: { readonly certificate_chain: InlineBytes; readonly private_key: InlineBytes };
  readonly validation_context?: { readonly trusted_ca: InlineBytes };
}

export function packSecret(secret: SecretResource): AnyResource {
  return { type_url: SECRET_TYPE_URL, value: xdsTypes().Secret.encode(xdsTypes().Secret.fromObject(secret)).finish() };
}

export function unpackSecret(resource: AnyResource): SecretResource {
  return xdsTypes().Secret.toObject(xdsTypes().Secret.decode(resource.value), {
    ...CONVERT,
    defaults: false,
  }) as SecretResource;
}

/** The SDS service (StreamSecrets only: the agent does not implement delta or fetch), with the encoders above. */
export const SDS_SERVICE: ServiceDefinition = {
  StreamSecrets: discoveryStream(SDS_METHOD),
};
