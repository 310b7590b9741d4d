/**
 * A one-shot ADS probe, the istiod discovery check: open `StreamAggregatedResources` (TLS with the mesh root and,
 * when present, the workload certificate; or plain text), send a CDS DiscoveryRequest with this VM's node, wait for
 * the response, ACK it (same type, the received version and nonce), half-close and wait for the server to finish
 * the stream. Everything runs under one deadline. Failures carry the gRPC status.
 */
import * as grpc from "@grpc/grpc-js";
import type { PeerCertificate } from "node:tls";
import type { DiscoveryRequest, DiscoveryResponse, XdsNode } from "./protos.js";
import {
  ADS_METHOD,
  CLUSTER_TYPE_URL,
  decodeDiscoveryResponse,
  encodeDiscoveryRequest,
  unpackCluster,
} from "./protos.js";

export interface AdsProbeTls {
  readonly rootPem: string;
  /** The name the server certificate must carry (ISTIOD_SAN); also sent as SNI and :authority. */
  readonly servername: string;
  readonly certChainPem?: string;
  readonly keyPem?: string;
  /**
   * Check this URI SAN instead of the server name, as Envoy's `verify_subject_alt_name` does (legacy Pilot's
   * certificate names its SPIFFE id: src/envoy/bootstrap.ts discoverySan).
   */
  readonly uriSan?: string;
}

export interface AdsProbeOptions {
  /** `host:port` */
  readonly target: string;
  /** TLS settings; plain text (istiod 15010) without. */
  readonly tls?: AdsProbeTls;
  /** Service-account token, sent as `authorization: Bearer`, for when there is no client certificate yet. */
  readonly token?: string;
  /** `clusterid` request metadata (multi-cluster istiod). */
  readonly clusterId?: string;
  /** Further request metadata (e.g. the dev Pilot's `istio-vm-xds-api: v3`). */
  readonly headers?: Readonly<Record<string, string>>;
  readonly node: XdsNode;
  readonly timeoutMs: number;
  readonly signal?: AbortSignal;
}

export interface AdsProbeResult {
  readonly clusters: readonly string[];
  readonly versionInfo: string;
  readonly nonce: string;
  readonly controlPlane?: string;
}

const STATUS_NAMES: Readonly<Record<number, string>> = Object.fromEntries(
  Object.entries(grpc.status)
    .filter(([, v]) => typeof v === "number")
    .map(([k, v]) => [v as number, k]),
);

export function grpcStatusName(code: number): string {
  return STATUS_NAMES[code] ?? `CODE_${code}`;
}

/** A probe that did not get its clusters: the gRPC status, or an empty CDS answer (`code` undefined). */
export class AdsProbeError extends Error {
  readonly grpcCode: number | undefined;
  readonly details: string;
  constructor(grpcCode: number | undefined, details: string) {
    super(grpcCode === undefined ? details : `gRPC status ${grpcStatusName(grpcCode)} (${grpcCode}): ${details}`);
    this.name = "AdsProbeError";
    this.grpcCode = grpcCode;
    this.details = details;
  }
}

function uriSanCheck(wanted: string): (host: string, cert: PeerCertificate) => Error | undefined {
  return (_host, cert) => {
    const sans = (cert.subjectaltname ?? "").split(", ").filter((n) => n.startsWith("URI:"));
    return sans.includes(`URI:${wanted}`)
      ? undefined
      : new Error(`the server certificate's SANs (${sans.join(", ") || "none"}) do not include ${wanted}`);
  };
}

/**
 * A gRPC client for an ADS server: plain text, or TLS with the given root, server name and (mTLS) client pair; no
 * retries by grpc-js (callers decide), messages up to 64 MiB. The one-shot probe and the long-lived watch share it.
 */
export function createAdsClient(
  target: string,
  tls: AdsProbeTls | undefined,
  extra: grpc.ChannelOptions = {},
): grpc.Client {
  const credentials =
    tls === undefined
      ? grpc.credentials.createInsecure()
      : grpc.credentials.createSsl(
          Buffer.from(tls.rootPem),
          tls.keyPem === undefined ? null : Buffer.from(tls.keyPem),
          tls.certChainPem === undefined ? null : Buffer.from(tls.certChainPem),
          tls.uriSan === undefined ? {} : { checkServerIdentity: uriSanCheck(tls.uriSan) },
        );
  return new grpc.Client(target, credentials, {
    ...(tls === undefined
      ? {}
      : { "grpc.ssl_target_name_override": tls.servername, "grpc.default_authority": tls.servername }),
    "grpc.enable_retries": 0,
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
    ...extra,
  });
}

/** The stream of a one-shot ADS call (v2 and v3 share the message shapes: src/xds/protos.ts). */
export type AdsCall = grpc.ClientDuplexStream<DiscoveryRequest, DiscoveryResponse>;

export interface OneShotAdsCall<T> {
  readonly target: string;
  readonly tls: AdsProbeTls | undefined;
  readonly method: string;
  readonly encode: (request: DiscoveryRequest) => Buffer;
  readonly decode: (bytes: Buffer) => DiscoveryResponse;
  readonly metadata: grpc.Metadata;
  readonly timeoutMs: number;
  readonly signal: AbortSignal | undefined;
  /**
   * Wires the call's `data` and `status` events and sends the first request; `settle` ends the call once (a value,
   * or an Error). Not called when `signal` is already aborted.
   */
  readonly run: (call: AdsCall, settle: (outcome: { readonly value: T } | Error) => void) => void;
}

/**
 * The scaffold of a one-shot ADS call, shared by the istiod probe and the v2 fetch: one bidi stream under one
 * deadline; whatever settles it first (the caller's outcome, or `signal` aborting) cancels the call and closes the
 * client, and later outcomes are ignored. Stream errors arrive as the `status` event with the gRPC code.
 */
export function oneShotAdsCall<T>(options: OneShotAdsCall<T>): Promise<T> {
  const client = createAdsClient(options.target, options.tls);
  return new Promise<T>((resolve, reject) => {
    const call = client.makeBidiStreamRequest<DiscoveryRequest, DiscoveryResponse>(
      options.method,
      options.encode,
      options.decode,
      options.metadata,
      { deadline: Date.now() + options.timeoutMs },
    );
    let settled = false;
    const settle = (outcome: { readonly value: T } | Error): void => {
      if (settled) return;
      settled = true;
      options.signal?.removeEventListener("abort", onAbort);
      call.cancel();
      client.close();
      if (outcome instanceof Error) reject(outcome);
      else resolve(outcome.value);
    };
    const onAbort = (): void => {
      settle(new AdsProbeError(grpc.status.CANCELLED, "the check was cancelled"));
    };
    options.signal?.addEventListener("abort", onAbort, { once: true });
    if (options.signal?.aborted === true) {
      onAbort();
      return;
    }
    call.on("error", () => {
      // Reported through "status" with the gRPC code.
    });
    options.run(call, settle);
  });
}

export function probeAds(options: AdsProbeOptions): Promise<AdsProbeResult> {
  const metadata = new grpc.Metadata();
  if (options.token !== undefined) metadata.set("authorization", `Bearer ${options.token}`);
  if (options.clusterId !== undefined && options.clusterId !== "") metadata.set("clusterid", options.clusterId);
  for (const [key, value] of Object.entries(options.headers ?? {})) metadata.set(key, value);
  return oneShotAdsCall<AdsProbeResult>({
    target: options.target,
    tls: options.tls,
    method: ADS_METHOD,
    encode: encodeDiscoveryRequest,
    decode: decodeDiscoveryResponse,
    metadata,
    timeoutMs: options.timeoutMs,
    signal: options.signal,
    run: (call, settle) => {
      let result: AdsProbeResult | undefined;
      call.on("data", (response: DiscoveryResponse) => {
        if (result !== undefined || response.type_url !== CLUSTER_TYPE_URL) return;
        const clusters = response.resources
          .filter((r) => r.type_url === CLUSTER_TYPE_URL)
          .map((r) => unpackCluster(r).name);
        const ack: DiscoveryRequest = {
          version_info: response.version_info,
          node: options.node,
          resource_names: [],
          type_url: CLUSTER_TYPE_URL,
          response_nonce: response.nonce,
        };
        if (clusters.length === 0) {
          settle(
            new AdsProbeError(
              undefined,
              `the control plane answered CDS with no clusters (version ${response.version_info || "empty"})`,
            ),
          );
          return;
        }
        result = {
          clusters,
          versionInfo: response.version_info,
          nonce: response.nonce,
          ...(response.control_plane === undefined ? {} : { controlPlane: response.control_plane.identifier }),
        };
        // ACK, then half-close: a well-behaved server ends the stream with OK, which settles the probe.
        call.write(ack, () => {
          call.end();
        });
      });
      call.on("status", (status: grpc.StatusObject) => {
        // With the clusters ACKed, a deadline on the graceful close is no failure.
        const closed = [grpc.status.OK, grpc.status.CANCELLED, grpc.status.DEADLINE_EXCEEDED].includes(status.code);
        if (result !== undefined && closed) settle({ value: result });
        else settle(new AdsProbeError(status.code, status.details || "stream closed before a CDS response"));
      });
      call.write({
        version_info: "",
        node: options.node,
        resource_names: [],
        type_url: CLUSTER_TYPE_URL,
        response_nonce: "",
      });
    },
  });
}
