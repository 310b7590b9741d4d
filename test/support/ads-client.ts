/**
 * An ADS client built from Envoy's own protos (`@grpc/grpc-js-xds` deps/envoy-api, loaded with @grpc/proto-loader),
 * independent of the agent's generated descriptor: it plays Envoy on the agent's xDS proxy socket. What it sends
 * (its node with Struct metadata, resource names, ACKs) and decodes (Cluster resources) is what Envoy would. One
 * stream per client; responses queue until a test takes them.
 */
import * as grpc from "@grpc/grpc-js";
import type protobuf from "protobufjs";
import { envoyServiceClient, loadEnvoyProtos } from "./envoy-proto.js";

const ADS_PROTO = "envoy/service/discovery/v3/ads.proto";
const CLUSTER_PROTO = "envoy/config/cluster/v3/cluster.proto";
const TLS_PROTO = "envoy/extensions/transport_sockets/tls/v3/tls.proto";
export const CDS_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
export const LDS_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener";

let root: protobuf.Root | undefined;
let service: grpc.ServiceClientConstructor | undefined;

function envoyRoot(): protobuf.Root {
  root ??= loadEnvoyProtos([CLUSTER_PROTO, TLS_PROTO]);
  return root;
}

function clusterType(): protobuf.Type {
  return envoyRoot().lookupType("envoy.config.cluster.v3.Cluster");
}

interface SdsSecretConfigObject {
  name: string;
  sds_config?: {
    api_config_source?: { api_type?: string; grpc_services?: { envoy_grpc?: { cluster_name: string } }[] };
  };
}

/**
 * Per cluster of a CDS response: the SDS secrets its UpstreamTlsContext names and the clusters they are fetched
 * from, decoded with Envoy's protos (what makes Envoy subscribe to the agent's SDS socket).
 */
export function clusterSdsSecrets(
  response: AdsResponse,
): { cluster: string; secrets: string[]; sdsClusters: string[] }[] {
  const tlsType = envoyRoot().lookupType("envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext");
  return response.resources.map((r) => {
    const cluster = clusterType().toObject(clusterType().decode(r.value), { bytes: Buffer }) as {
      name: string;
      transport_socket?: { typed_config?: { type_url: string; value: Buffer } };
    };
    const any = cluster.transport_socket?.typed_config;
    if (any === undefined) return { cluster: cluster.name, secrets: [], sdsClusters: [] };
    const tls = tlsType.toObject(tlsType.decode(any.value), { enums: String }) as {
      common_tls_context?: {
        tls_certificate_sds_secret_configs?: SdsSecretConfigObject[];
        combined_validation_context?: { validation_context_sds_secret_config?: SdsSecretConfigObject };
      };
    };
    const configs = [
      ...(tls.common_tls_context?.tls_certificate_sds_secret_configs ?? []),
      ...[tls.common_tls_context?.combined_validation_context?.validation_context_sds_secret_config].filter(
        (c): c is SdsSecretConfigObject => c !== undefined,
      ),
    ];
    return {
      cluster: cluster.name,
      secrets: configs.map((c) => c.name),
      sdsClusters: configs.flatMap((c) =>
        (c.sds_config?.api_config_source?.grpc_services ?? []).map((g) => g.envoy_grpc?.cluster_name ?? ""),
      ),
    };
  });
}

function adsService(): grpc.ServiceClientConstructor {
  service ??= envoyServiceClient(ADS_PROTO, "envoy.service.discovery.v3.AggregatedDiscoveryService");
  return service;
}

export interface AdsResponse {
  readonly version_info: string;
  readonly nonce: string;
  readonly type_url: string;
  readonly resources: readonly { readonly type_url: string; readonly value: Buffer }[];
}

/** Names of the Cluster resources in a CDS response, decoded with Envoy's proto. */
export function clusterNames(response: AdsResponse): string[] {
  const type = clusterType();
  return response.resources.map((r) => (type.decode(r.value) as unknown as { name: string }).name);
}

type StructValue = string | number | boolean | null | StructValue[] | { [key: string]: StructValue };

/** google.protobuf.Struct in proto-loader's object form (protobufjs' built-in well-known types are camelCase). */
function struct(value: Readonly<Record<string, StructValue>>): object {
  const v = (x: StructValue): object => {
    if (x === null) return { nullValue: "NULL_VALUE" };
    if (typeof x === "string") return { stringValue: x };
    if (typeof x === "number") return { numberValue: x };
    if (typeof x === "boolean") return { boolValue: x };
    if (Array.isArray(x)) return { listValue: { values: x.map(v) } };
    return { structValue: struct(x) };
  };
  return { fields: Object.fromEntries(Object.entries(value).map(([k, x]) => [k, v(x)])) };
}

export interface EnvoyNode {
  readonly id: string;
  readonly cluster: string;
  readonly metadata: Readonly<Record<string, StructValue>>;
}

export class AdsTestClient {
  readonly #client: grpc.Client;
  readonly #call: grpc.ClientDuplexStream<object, AdsResponse>;
  readonly #queue: AdsResponse[] = [];
  readonly #waiters: ((r: AdsResponse) => void)[] = [];
  readonly #node: EnvoyNode;
  #sentNode = false;
  status: grpc.StatusObject | undefined;
  readonly ended: Promise<grpc.StatusObject>;

  constructor(socketPath: string, node: EnvoyNode) {
    this.#node = node;
    const Ctor = adsService();
    this.#client = new Ctor(`unix:${socketPath}`, grpc.credentials.createInsecure());
    const stub = this.#client as unknown as {
      StreamAggregatedResources(): grpc.ClientDuplexStream<object, AdsResponse>;
    };
    this.#call = stub.StreamAggregatedResources();
    this.#call.on("data", (r: AdsResponse) => {
      const waiter = this.#waiters.shift();
      if (waiter === undefined) this.#queue.push(r);
      else waiter(r);
    });
    this.ended = new Promise((resolve) => {
      this.#call.on("status", (s: grpc.StatusObject) => {
        this.status = s;
        resolve(s);
      });
    });
    this.#call.on("error", () => {
      // reported through status
    });
  }

  /**
   * A subscription (or, with `ack`, an ACK/NACK). The node goes on the first message only, as Envoy sends it with
   * set_node_on_first_message_only, with Envoy's user agent.
   */
  request(
    typeUrl: string,
    ack?: { version: string; nonce: string; error?: string },
    names: readonly string[] = [],
  ): void {
    const node = this.#sentNode
      ? {}
      : {
          node: {
            id: this.#node.id,
            cluster: this.#node.cluster,
            metadata: struct(this.#node.metadata),
            user_agent_name: "envoy",
            user_agent_build_version: { version: { major_number: 1, minor_number: 32, patch: 0 } },
            client_features: ["envoy.lb.does_not_support_overprovisioning"],
          },
        };
    this.#sentNode = true;
    this.#call.write({
      ...node,
      type_url: typeUrl,
      resource_names: [...names],
      version_info: ack?.version ?? "",
      response_nonce: ack?.nonce ?? "",
      ...(ack?.error === undefined ? {} : { error_detail: { code: 3, message: ack.error } }),
    });
  }

  /** The next response (waits for it). */
  next(): Promise<AdsResponse> {
    const queued = this.#queue.shift();
    if (queued !== undefined) return Promise.resolve(queued);
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** The next response of a type (others are dropped). */
  async nextOf(typeUrl: string): Promise<AdsResponse> {
    for (;;) {
      const r = await this.next();
      if (r.type_url === typeUrl) return r;
    }
  }

  pending(): number {
    return this.#queue.length;
  }

  close(): void {
    this.#call.cancel();
    this.#client.close();
  }
}
