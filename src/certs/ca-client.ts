/**
 * The mesh CA behind one interface, with two implementations:
 *
 * - `legacy`: `istio.v1.auth.IstioCAService/HandleCSR` (Istio 0.2–0.8) on istio-ca:8060, TLS, client-authenticated by
 *   the current certificate and key (mTLS); the only credential that CA accepts on-prem.
 * - `istiod`: `istio.v1.auth.IstioCertificateService/CreateCertificate` (Istio 1.x) on istiod:15012, TLS verified
 *   against root-cert.pem; the first certificate is requested with the service-account token
 *   (`authorization: Bearer`), later ones over mTLS with the current certificate. Metadata `clusterid` names the cluster.
 *
 * The client keeps its gRPC channel between calls, as Istio's own agent keeps its CA connection (istio/istio
 * security/pkg/nodeagent/caclient/providers/citadel/client.go, 1.20: one `grpc.ClientConn` for every CSRSign, rebuilt
 * after an error). Both CAs authenticate the caller by the client certificate of the TLS handshake, so a channel
 * presents the pair it was made with for as long as it lives: it is reused while that pair is still valid past the
 * call's deadline (a renewal replaces the pair at a fraction of its lifetime, so the previous pair of the same
 * workload is valid for a while yet), and is replaced by one made with the current pair after that, after any
 * failed call, and when the trust root changes (a new client). The legacy request's `node_agent_credential` is the
 * channel's own certificate chain, so the message and the handshake always name the same certificate. Token calls
 * (istiod's first certificate) use a channel without a client certificate. An idle channel drops its connection
 * after CHANNEL_IDLE_MS and dials again on the next call; `close()` ends both channels.
 *
 * Every call has a deadline, can be cancelled with an AbortSignal, and fails with a `CaCallError` whose `reason` is
 * a short metric label.
 */
import * as grpc from "@grpc/grpc-js";
import { X509Certificate } from "node:crypto";
import { isIP } from "node:net";
import type { HostPort } from "../config/types.js";
import {
  ISTIOD_CREATE_CERTIFICATE_PATH,
  LEGACY_HANDLE_CSR_PATH,
  decodeCsrResponse,
  decodeIstioCertificateResponse,
  encodeCsrRequest,
  encodeIstioCertificateRequest,
} from "./ca-messages.js";
import { splitPemCertificates } from "./verify.js";
import { reasonError } from "../platform/errors.js";

export type CaProtocol = "legacy" | "istiod";

/**
 * `untrusted`: the CA's serving certificate does not verify against root-cert.pem or is not for the expected name
 * (grpc-js reports it as UNAVAILABLE, like a CA that is down; it is not one: retrying will not fix it).
 */
export type CaFailureReason =
  "unavailable" | "untrusted" | "deadline" | "unauthenticated" | "denied" | "invalid-response" | "cancelled" | "error";

export class CaCallError extends reasonError<CaFailureReason>("CaCallError") {}

/** How the call authenticates: the current pair (mTLS), or a Kubernetes service-account token (istiod only). */
export type CaCredential =
  | { readonly kind: "mtls"; readonly keyPem: string; readonly chainPem: string }
  | { readonly kind: "token"; readonly token: string };

export interface CaSignRequest {
  readonly csrPem: string;
  /** Requested lifetime; the CA may cap it. */
  readonly ttlMs: number;
  readonly credential: CaCredential;
  readonly signal?: AbortSignal;
}

export interface CaClient {
  readonly protocol: CaProtocol;
  /** host:port, for messages. */
  readonly address: string;
  /** Sends the CSR; resolves with the PEM certificates of the answer, leaf first. */
  sign(request: CaSignRequest): Promise<string[]>;
  /** Ends the channels kept between calls (a call in flight is cancelled). */
  close(): void;
}

export interface CaClientOptions {
  readonly address: HostPort;
  /** TLS server name the CA's certificate must carry (see `caServerName`). */
  readonly serverName: string;
  /** Trust anchors for the CA's serving certificate (root-cert.pem). */
  readonly rootPem: string;
  /** Deadline of one call. */
  readonly timeoutMs: number;
  /** istiod: ISTIO_META_CLUSTER_ID, sent as `clusterid` metadata. */
  readonly clusterId?: string;
  /** The clock a kept channel's certificate is judged by (default Date.now). */
  readonly now?: () => number;
}

/** How long a kept channel may sit without a call before grpc-js closes its connection (the channel stays usable). */
export const CHANNEL_IDLE_MS = 60_000;

/**
 * The TLS server name to verify: an ISTIOD_SAN set by the admin always wins; otherwise the dial host, as both
 * original clients did, unless the address is an IP (certificates name services, not IPs), then ISTIOD_SAN's default.
 */
export function caServerName(address: HostPort, san: { readonly value: string; readonly explicit: boolean }): string {
  if (san.explicit || isIP(address.host) !== 0) return san.value;
  return address.host;
}

function renderAddress(address: HostPort): string {
  return address.host.includes(":") ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
}

const REASONS: Partial<Record<grpc.status, CaFailureReason>> = {
  [grpc.status.UNAVAILABLE]: "unavailable",
  [grpc.status.DEADLINE_EXCEEDED]: "deadline",
  [grpc.status.UNAUTHENTICATED]: "unauthenticated",
  [grpc.status.PERMISSION_DENIED]: "denied",
  [grpc.status.CANCELLED]: "cancelled",
};

/** OpenSSL's verification failures as Node words them (`tls` errors), which grpc-js folds into UNAVAILABLE. */
const UNTRUSTED =
  /self[- ]signed certificate|unable to (get local issuer|verify the first|get issuer) certificate|certificate (has expired|is not yet valid|signature failure|chain too long)|does not match certificate's altnames|invalid CA certificate|ERR_TLS_CERT/i;

function callError(error: grpc.ServiceError, address: string): CaCallError {
  let reason = REASONS[error.code] ?? "error";
  // grpc-js reports an answer our decoder rejects as INTERNAL "Response message parsing error".
  if (error.code === grpc.status.INTERNAL && /parsing error/i.test(error.details)) reason = "invalid-response";
  if (error.code === grpc.status.UNAVAILABLE && UNTRUSTED.test(error.details)) reason = "untrusted";
  const name = grpc.status[error.code] as string | undefined;
  // grpc-js appends an empty "Resolution note:" to connection errors.
  const details = error.details.replace(/\.?\s*Resolution note:\s*$/, "").trim();
  return new CaCallError(reason, `CA ${address}: ${name ?? String(error.code)}: ${details || "no details"}`);
}

interface UnaryCall<Req, Res> {
  readonly path: string;
  readonly request: Req;
  readonly serialize: (value: Req) => Buffer;
  readonly deserialize: (data: Buffer) => Res;
  readonly metadata: grpc.Metadata;
  readonly signal: AbortSignal | undefined;
}

/** A channel and the credential its handshakes present. */
interface Channel {
  readonly client: grpc.Client;
  readonly credential: CaCredential;
  /** NotAfter of the channel's client certificate (Infinity without one). */
  readonly notAfter: number;
}

function leafNotAfter(chainPem: string): number {
  try {
    return new Date(new X509Certificate(chainPem).validTo).getTime();
  } catch {
    // Unparsable: never reused (the CA will say what is wrong with it).
    return -Infinity;
  }
}

/** The channels of one client: one with the workload's certificate, one without (token calls). */
class Channels {
  readonly #options: CaClientOptions;
  readonly #address: string;
  #mtls: Channel | undefined;
  #plain: Channel | undefined;

  constructor(options: CaClientOptions, address: string) {
    this.#options = options;
    this.#address = address;
  }

  /** The channel for a call with `credential`: a kept one when its certificate outlives the call, else a new one. */
  take(credential: CaCredential): Channel {
    const now = (this.#options.now ?? Date.now)();
    if (credential.kind === "token") {
      this.#plain ??= this.#open(credential, Infinity);
      return this.#plain;
    }
    const kept = this.#mtls;
    if (kept !== undefined && kept.notAfter > now + this.#options.timeoutMs) return kept;
    kept?.client.close();
    this.#mtls = this.#open(credential, leafNotAfter(credential.chainPem));
    return this.#mtls;
  }

  /** After a failed call: the next one dials anew (with the credential it is given). */
  drop(channel: Channel): void {
    channel.client.close();
    if (this.#mtls === channel) this.#mtls = undefined;
    if (this.#plain === channel) this.#plain = undefined;
  }

  close(): void {
    this.#mtls?.client.close();
    this.#plain?.client.close();
    this.#mtls = undefined;
    this.#plain = undefined;
  }

  #open(credential: CaCredential, notAfter: number): Channel {
    const root = Buffer.from(this.#options.rootPem);
    const credentials =
      credential.kind === "mtls"
        ? grpc.credentials.createSsl(root, Buffer.from(credential.keyPem), Buffer.from(credential.chainPem))
        : grpc.credentials.createSsl(root);
    const client = new grpc.Client(this.#address, credentials, {
      "grpc.ssl_target_name_override": this.#options.serverName,
      "grpc.default_authority": this.#options.serverName,
      // A failed call is the caller's to retry (the certificate loop's backoff), not the channel's.
      "grpc.enable_retries": 0,
      "grpc.client_idle_timeout_ms": CHANNEL_IDLE_MS,
    });
    return { client, credential, notAfter };
  }
}

function unary<Req, Res>(
  channels: Channels,
  channel: Channel,
  address: string,
  call: UnaryCall<Req, Res>,
  timeoutMs: number,
): Promise<Res> {
  return new Promise<Res>((resolve, reject) => {
    if (call.signal?.aborted === true) {
      reject(new CaCallError("cancelled", `CA ${address}: call cancelled`));
      return;
    }
    const pending = channel.client.makeUnaryRequest(
      call.path,
      call.serialize,
      call.deserialize,
      call.request,
      call.metadata,
      { deadline: Date.now() + timeoutMs },
      (error, response) => {
        call.signal?.removeEventListener("abort", onAbort);
        if (error !== null) {
          channels.drop(channel);
          reject(callError(error, address));
        } else if (response === undefined) reject(new CaCallError("invalid-response", `CA ${address}: empty answer`));
        else resolve(response);
      },
    );
    const onAbort = (): void => {
      pending.cancel();
    };
    call.signal?.addEventListener("abort", onAbort, { once: true });
  });
}

function certificatesOf(text: string, address: string): string[] {
  const certs = splitPemCertificates(text);
  if (certs.length === 0)
    throw new CaCallError("invalid-response", `CA ${address}: the answer holds no PEM certificate`);
  return certs;
}

export function createLegacyCaClient(options: CaClientOptions): CaClient {
  const address = renderAddress(options.address);
  const channels = new Channels(options, address);
  return {
    protocol: "legacy",
    address,
    close: () => {
      channels.close();
    },
    async sign(request) {
      if (request.credential.kind !== "mtls") {
        throw new CaCallError(
          "unauthenticated",
          `CA ${address}: the legacy Istio CA authenticates VMs only by their current certificate`,
        );
      }
      const channel = channels.take(request.credential);
      // The certificate the channel's handshake presented (see the header).
      const presented = channel.credential.kind === "mtls" ? channel.credential.chainPem : request.credential.chainPem;
      const response = await unary(
        channels,
        channel,
        address,
        {
          path: LEGACY_HANDLE_CSR_PATH,
          request: {
            csrPem: request.csrPem,
            nodeAgentCredential: presented,
            credentialType: "onprem",
            // 0 asks for the CA's default lifetime.
            requestedTtlMinutes: request.ttlMs <= 0 ? 0 : Math.max(1, Math.ceil(request.ttlMs / 60_000)),
          },
          serialize: encodeCsrRequest,
          deserialize: decodeCsrResponse,
          metadata: new grpc.Metadata(),
          signal: request.signal,
        },
        options.timeoutMs,
      );
      if (!response.isApproved) {
        const status = response.status;
        const detail = status === undefined ? "" : `: ${grpc.status[status.code] ?? status.code} ${status.message}`;
        throw new CaCallError("denied", `CA ${address}: request not approved${detail}`);
      }
      // 0.2–0.7: field 3 is the leaf followed by the chain; 0.8: field 3 the leaf, field 4 the chain.
      const text =
        response.certChain === "" ? response.signedCert : `${response.signedCert.trimEnd()}\n${response.certChain}`;
      return certificatesOf(text, address);
    },
  };
}

export function createIstiodCaClient(options: CaClientOptions): CaClient {
  const address = renderAddress(options.address);
  const channels = new Channels(options, address);
  return {
    protocol: "istiod",
    address,
    close: () => {
      channels.close();
    },
    async sign(request) {
      const metadata = new grpc.Metadata();
      if (options.clusterId !== undefined && options.clusterId !== "") metadata.set("clusterid", options.clusterId);
      if (request.credential.kind === "token") metadata.set("authorization", `Bearer ${request.credential.token}`);
      const response = await unary(
        channels,
        channels.take(request.credential),
        address,
        {
          path: ISTIOD_CREATE_CERTIFICATE_PATH,
          request: { csr: request.csrPem, validityDurationSeconds: Math.round(request.ttlMs / 1000) },
          serialize: encodeIstioCertificateRequest,
          deserialize: decodeIstioCertificateResponse,
          metadata,
          signal: request.signal,
        },
        options.timeoutMs,
      );
      // istiod answers leaf, intermediates, root; its own agent rejects fewer than two elements.
      if (response.certChain.length < 2) {
        throw new CaCallError(
          "invalid-response",
          `CA ${address}: the answer has ${response.certChain.length} certificate(s), expected the leaf and the root`,
        );
      }
      return response.certChain.flatMap((element) => certificatesOf(element, address));
    },
  };
}

export function createCaClient(protocol: CaProtocol, options: CaClientOptions): CaClient {
  return protocol === "legacy" ? createLegacyCaClient(options) : createIstiodCaClient(options);
}

/**
 * The `connect` of a renewal context that keeps the CA connection between renewals: one client per trust root,
 * handed out again while root-cert.pem is unchanged; a new root closes the previous client. `close()` ends it.
 */
export function keptCaConnection(create: (rootPem: string) => CaClient): {
  connect(rootPem: string): CaClient;
  close(): void;
} {
  let current: { readonly rootPem: string; readonly client: CaClient } | undefined;
  return {
    connect(rootPem) {
      if (current?.rootPem === rootPem) return current.client;
      current?.client.close();
      current = { rootPem, client: create(rootPem) };
      return current.client;
    },
    close() {
      current?.client.close();
      current = undefined;
    },
  };
}
