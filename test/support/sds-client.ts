/**
 * An SDS client built from Envoy's own protos (`@grpc/grpc-js-xds` deps/envoy-api, loaded with @grpc/proto-loader),
 * independent of the agent's generated descriptor: what it decodes is what Envoy would. One stream per client;
 * responses queue until a test takes them.
 */
import { spawnSync } from "node:child_process";
import * as grpc from "@grpc/grpc-js";
import type protobuf from "protobufjs";
import { envoyServiceClient, loadEnvoyProtos } from "./envoy-proto.js";

const SDS_PROTO = "envoy/service/secret/v3/sds.proto";
const SECRET_PROTO = "envoy/extensions/transport_sockets/tls/v3/secret.proto";
export const SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

let root: protobuf.Root | undefined;
let service: grpc.ServiceClientConstructor | undefined;

function secretType(): protobuf.Type {
  root ??= loadEnvoyProtos([SECRET_PROTO]);
  return root.lookupType("envoy.extensions.transport_sockets.tls.v3.Secret");
}

function sdsService(): grpc.ServiceClientConstructor {
  service ??= envoyServiceClient(SDS_PROTO, "envoy.service.secret.v3.SecretDiscoveryService");
  return service;
}

export interface SdsResponse {
  readonly version_info: string;
  readonly nonce: string;
  readonly type_url: string;
  readonly resources: readonly { readonly type_url: string; readonly value: Buffer }[];
}

export interface DecodedSecret {
  readonly name: string;
  readonly chain?: string;
  readonly key?: string;
  readonly trustedCa?: string;
}

export function decodeSecret(resource: { readonly value: Buffer }): DecodedSecret {
  const type = secretType();
  const s = type.toObject(type.decode(resource.value), { bytes: Buffer, defaults: false }) as {
    name: string;
    tls_certificate?: { certificate_chain?: { inline_bytes?: Buffer }; private_key?: { inline_bytes?: Buffer } };
    validation_context?: { trusted_ca?: { inline_bytes?: Buffer } };
  };
  const text = (b: Buffer | undefined): string | undefined => b?.toString("utf8");
  const chain = text(s.tls_certificate?.certificate_chain?.inline_bytes);
  const key = text(s.tls_certificate?.private_key?.inline_bytes);
  const trustedCa = text(s.validation_context?.trusted_ca?.inline_bytes);
  return {
    name: s.name,
    ...(chain === undefined ? {} : { chain }),
    ...(key === undefined ? {} : { key }),
    ...(trustedCa === undefined ? {} : { trustedCa }),
  };
}

export class SdsTestClient {
  readonly #client: grpc.Client;
  readonly #call: grpc.ClientDuplexStream<object, SdsResponse>;
  readonly #queue: SdsResponse[] = [];
  readonly #waiters: ((r: SdsResponse) => void)[] = [];
  status: grpc.StatusObject | undefined;

  constructor(socketPath: string) {
    const Ctor = sdsService();
    this.#client = new Ctor(`unix:${socketPath}`, grpc.credentials.createInsecure());
    const stub = this.#client as unknown as { StreamSecrets(): grpc.ClientDuplexStream<object, SdsResponse> };
    this.#call = stub.StreamSecrets();
    this.#call.on("data", (r: SdsResponse) => {
      const waiter = this.#waiters.shift();
      if (waiter === undefined) this.#queue.push(r);
      else waiter(r);
    });
    this.#call.on("status", (s: grpc.StatusObject) => {
      this.status = s;
    });
    this.#call.on("error", () => {
      // reported through status
    });
  }

  request(names: readonly string[], ack?: { version: string; nonce: string; error?: string }): void {
    this.#call.write({
      node: { id: "sidecar~10.0.0.1~vm.vmns~vmns.svc.cluster.local", cluster: "vm.vmns" },
      type_url: SECRET_TYPE,
      resource_names: [...names],
      version_info: ack?.version ?? "",
      response_nonce: ack?.nonce ?? "",
      ...(ack?.error === undefined ? {} : { error_detail: { code: 3, message: ack.error } }),
    });
  }

  /** The next response (waits for it). */
  next(): Promise<SdsResponse> {
    const queued = this.#queue.shift();
    if (queued !== undefined) return Promise.resolve(queued);
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** Responses received and not taken yet. */
  pending(): number {
    return this.#queue.length;
  }

  close(): void {
    this.#call.cancel();
    this.#client.close();
  }
}

/** Connects to a Unix socket as another user (the test runs as root): "connected" or the errno code. */
export function connectAs(socketPath: string, uid: number): string {
  const script = `require("node:net").connect(${JSON.stringify(socketPath)})
    .on("connect", () => { process.stdout.write("connected"); process.exit(0); })
    .on("error", (e) => { process.stdout.write(e.code); process.exit(0); });`;
  return spawnSync(process.execPath, ["-e", script], { uid, gid: uid, encoding: "utf8" }).stdout;
}
