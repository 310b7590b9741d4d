/**
 * The agent's SDS server (istiod profile): Envoy gets the workload key and chain, and the trust bundle, over
 * `envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets` on a Unix socket, never from a file, so a renewal
 * is a push to the open streams instead of a hot restart. This follows Istio's agent (istio/istio
 * security/pkg/nodeagent/sds/sdsservice.go, 1.2x): the resource names are Istio's, `default` (a Secret with a
 * TlsCertificate) and `ROOTCA` (a Secret with a CertificateValidationContext), PEM passed as inline bytes.
 *
 * Protocol (state of the world, one type: Secret):
 * - A request names the secrets it wants (`resource_names`). The answer holds those the agent has; when it has none
 *   of them (an unknown name), nothing is sent and the stream waits, as Envoy expects (its init manager waits for
 *   the secret; an error would only make it retry).
 * - `version_info` is a content hash of the secrets in the answer, `nonce` unique per response. A request carrying
 *   the nonce of the last response is an ACK, or a NACK when it has `error_detail` (logged with Envoy's message and
 *   counted; the version is not re-sent). A request with an older nonce is stale and ignored (go-control-plane's
 *   rule).
 * - `update()` (a renewal) pushes a new version to every stream whose subscribed secrets changed.
 *
 * The socket lives in a directory of its own, mode 0700 and owned by Envoy's user; the socket is 0600 with the same
 * owner, so only that user (and root) can connect: whoever connects gets the private key.
 */
import { createHash, randomBytes } from "node:crypto";
import * as grpc from "@grpc/grpc-js";
import type { FileOwner, FileSystem } from "../platform/fs.js";
import type { Logger } from "../platform/logger.js";
import type { AnyResource, DiscoveryRequest, DiscoveryResponse, SecretResource } from "../xds/protos.js";
import { bindPrivateSocket } from "../xds/private-socket.js";
import { SDS_SERVICE, SECRET_TYPE_URL, packSecret, unpackSecret } from "../xds/protos.js";

import { ROOT_SECRET, WORKLOAD_SECRET } from "./names.js";

export { ROOT_SECRET, WORKLOAD_SECRET };

export interface SdsSecrets {
  readonly keyPem: string;
  readonly chainPem: string;
  readonly rootPem: string;
}

/** The Secret resources for a key, chain and trust bundle (pure). */
export function secretResources(secrets: SdsSecrets): ReadonlyMap<string, SecretResource> {
  const bytes = (pem: string): { inline_bytes: Buffer } => ({ inline_bytes: Buffer.from(pem) });
  return new Map<string, SecretResource>([
    [
      WORKLOAD_SECRET,
      {
        name: WORKLOAD_SECRET,
        tls_certificate: { certificate_chain: bytes(secrets.chainPem), private_key: bytes(secrets.keyPem) },
      },
    ],
    [ROOT_SECRET, { name: ROOT_SECRET, validation_context: { trusted_ca: bytes(secrets.rootPem) } }],
  ]);
}

/** What the server reports to counters (src/sds/component.ts wires them to /metrics). */
export interface SdsObserver {
  pushed?(reason: "request" | "renewal"): void;
  acked?(): void;
  nacked?(): void;
  /** A stream opened or closed (STATUS= counts them). */
  streamsChanged?(): void;
}

export interface SdsServerOptions {
  /** The socket's path; its directory is created 0700 for `owner`. */
  readonly socketPath: string;
  readonly fs: FileSystem;
  readonly logger: Logger;
  /** Envoy's user, when the agent runs as another (root); absent: the agent's own user. */
  readonly owner?: FileOwner;
  readonly observer?: SdsObserver;
}

interface Stream {
  readonly id: number;
  readonly call: grpc.ServerDuplexStream<DiscoveryRequest, DiscoveryResponse>;
  names: readonly string[];
  sentVersion: string | undefined;
  sentNonce: string | undefined;
  ackedVersion: string | undefined;
}

export interface SdsStatus {
  readonly listening: boolean;
  readonly socketPath: string;
  /** Version of `default` as the agent has it now (undefined before the first certificate). */
  readonly version: string | undefined;
  readonly streams: number;
  /** Streams subscribed to `default` that have ACKed the current version. */
  readonly ackedStreams: number;
  readonly subscribedStreams: number;
  readonly pushes: number;
  readonly nacks: number;
  readonly lastNack: string | undefined;
}

function versionOf(resources: readonly AnyResource[]): string {
  const hash = createHash("sha256");
  for (const r of resources) hash.update(r.value);
  return hash.digest("hex").slice(0, 16);
}

export class SdsServer {
  readonly #o: SdsServerOptions;
  readonly #streams = new Map<number, Stream>();
  #packed = new Map<string, AnyResource>();
  #server: grpc.Server | undefined;
  #nextId = 0;
  #pushes = 0;
  #nacks = 0;
  #lastNack: string | undefined;

  constructor(options: SdsServerOptions) {
    this.#o = options;
  }

  /** Creates the socket (replacing a stale one) and serves; resolves once it listens with its final mode. */
  async listen(): Promise<void> {
    const { fs, socketPath, owner } = this.#o;
    const server = new grpc.Server({ "grpc.max_send_message_length": 16 * 1024 * 1024 });
    server.addService(SDS_SERVICE, {
      StreamSecrets: (call: grpc.ServerDuplexStream<DiscoveryRequest, DiscoveryResponse>) => {
        this.#open(call);
      },
    });
    await bindPrivateSocket(server, socketPath, fs, owner);
    this.#server = server;
    this.#o.logger.info("SDS server listening", { socket: socketPath });
  }

  /** New secrets (start, renewal, trust bundle change): every stream whose secrets changed gets them. */
  update(secrets: SdsSecrets): void {
    this.#packed = new Map([...secretResources(secrets)].map(([name, s]) => [name, packSecret(s)]));
    for (const stream of this.#streams.values()) this.#respond(stream, "renewal");
  }

  status(): SdsStatus {
    const current = this.#versionFor([WORKLOAD_SECRET]);
    const subscribed = [...this.#streams.values()].filter((s) => s.names.includes(WORKLOAD_SECRET));
    return {
      listening: this.#server !== undefined,
      socketPath: this.#o.socketPath,
      version: current,
      streams: this.#streams.size,
      subscribedStreams: subscribed.length,
      ackedStreams: subscribed.filter((s) => s.ackedVersion !== undefined && s.ackedVersion === s.sentVersion).length,
      pushes: this.#pushes,
      nacks: this.#nacks,
      lastNack: this.#lastNack,
    };
  }

  /** The PEM chain currently served as `default` (what `istio-vm check` compares with the store). */
  servedChain(): string | undefined {
    const packed = this.#packed.get(WORKLOAD_SECRET);
    return packed === undefined ? undefined : this.#servedChainOf(packed);
  }

  #servedChainOf(packed: AnyResource): string | undefined {
    // Decoded from what goes on the wire, not what went in: the check is about the bytes Envoy gets.
    const chain = unpackSecret(packed).tls_certificate?.certificate_chain.inline_bytes;
    return chain === undefined ? undefined : Buffer.from(chain).toString("utf8");
  }

  async close(): Promise<void> {
    const server = this.#server;
    this.#server = undefined;
    for (const stream of this.#streams.values()) stream.call.end();
    this.#streams.clear();
    // The streams were ended (status OK); Envoy's connection itself is closed, not waited for.
    server?.forceShutdown();
    await this.#o.fs.remove(this.#o.socketPath);
  }

  #open(call: grpc.ServerDuplexStream<DiscoveryRequest, DiscoveryResponse>): void {
    const stream: Stream = {
      id: this.#nextId++,
      call,
      names: [],
      sentVersion: undefined,
      sentNonce: undefined,
      ackedVersion: undefined,
    };
    this.#streams.set(stream.id, stream);
    const log = this.#o.logger;
    log.debug("SDS stream opened", { stream: stream.id });
    const close = (): void => {
      if (this.#streams.delete(stream.id)) {
        log.debug("SDS stream closed", { stream: stream.id });
        this.#o.observer?.streamsChanged?.();
      }
    };
    call.on("data", (request: DiscoveryRequest) => {
      this.#request(stream, request);
    });
    call.on("end", () => {
      close();
      call.end();
    });
    call.on("cancelled", close);
    call.on("error", close);
    call.on("close", close);
  }

  #request(stream: Stream, request: DiscoveryRequest): void {
    const log = this.#o.logger;
    if (request.type_url !== SECRET_TYPE_URL) {
      log.warn("SDS request for another type, closing the stream", { stream: stream.id, type: request.type_url });
      stream.call.emit("error", {
        code: grpc.status.INVALID_ARGUMENT,
        details: `this server serves ${SECRET_TYPE_URL} only, not ${request.type_url}`,
      });
      return;
    }
    if (request.response_nonce !== "" && request.response_nonce !== stream.sentNonce) {
      log.debug("stale SDS request ignored", { stream: stream.id, nonce: request.response_nonce });
      return;
    }
    const namesChanged = request.resource_names.join("\0") !== stream.names.join("\0");
    stream.names = [...request.resource_names];
    if (request.response_nonce !== "") {
      if (request.error_detail !== undefined) {
        this.#nacks++;
        this.#lastNack = request.error_detail.message;
        this.#o.observer?.nacked?.();
        log.warn("Envoy rejected a secret (NACK)", {
          stream: stream.id,
          resources: stream.names.join(","),
          version: stream.sentVersion ?? "",
          error: request.error_detail.message,
        });
        return;
      }
      if (request.version_info === stream.sentVersion) {
        stream.ackedVersion = request.version_info;
        this.#o.observer?.acked?.();
        log.debug("SDS ACK", { stream: stream.id, version: request.version_info });
      }
    }
    this.#respond(stream, "request", namesChanged);
  }

  #versionFor(names: readonly string[]): string | undefined {
    const resources = names.flatMap((n) => this.#packed.get(n) ?? []);
    return resources.length === 0 ? undefined : versionOf(resources);
  }

  #respond(stream: Stream, reason: "request" | "renewal", namesChanged = false): void {
    const resources = stream.names.flatMap((n) => this.#packed.get(n) ?? []);
    if (resources.length === 0) return; // unknown (or not yet known) names: the stream waits
    const version = versionOf(resources);
    if (version === stream.sentVersion && !namesChanged) return;
    const nonce = randomBytes(8).toString("hex");
    stream.sentVersion = version;
    stream.sentNonce = nonce;
    stream.call.write({ version_info: version, resources, type_url: SECRET_TYPE_URL, nonce });
    this.#pushes++;
    this.#o.observer?.pushed?.(reason);
    this.#o.logger.info("SDS push", { stream: stream.id, resources: stream.names.join(","), version, reason });
  }
}
