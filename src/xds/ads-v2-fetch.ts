/**
 * A one-shot xDS v2 ADS fetch (Istio 0.8's Pilot; the legacy discovery check with ENVOY_XDS_API=v2): open
 * `envoy.service.discovery.v2.AggregatedDiscoveryService/StreamAggregatedResources`, ask for each type in turn as
 * v2 Envoy does at start (CDS, then LDS), ACK each response (same type, its version and nonce), half-close and
 * wait for the server to end the stream. Everything runs under one deadline; failures carry the gRPC status.
 */
import * as grpc from "@grpc/grpc-js";
import type { AdsProbeTls } from "./ads-client.js";
import { AdsProbeError, createAdsClient } from "./ads-client.js";
import type { DiscoveryRequest, DiscoveryResponse, XdsNode } from "./protos.js";
import type { V2Object, V2TypeUrl } from "./protos-v2.js";
import { ADS_V2_METHOD, decodeDiscoveryResponseV2, encodeDiscoveryRequestV2, unpackV2 } from "./protos-v2.js";

export interface AdsV2FetchOptions {
  /** `host:port` */
  readonly target: string;
  readonly tls?: AdsProbeTls;
  readonly node: XdsNode;
  /** The types to fetch, in order (a type whose response is empty is still ACKed and reported). */
  readonly types: readonly V2TypeUrl[];
  readonly timeoutMs: number;
  readonly signal?: AbortSignal;
}

export interface AdsV2Fetched {
  readonly typeUrl: V2TypeUrl;
  readonly versionInfo: string;
  readonly resources: readonly V2Object[];
}

export function fetchAdsV2(options: AdsV2FetchOptions): Promise<AdsV2Fetched[]> {
  const client = createAdsClient(options.target, options.tls);
  return new Promise<AdsV2Fetched[]>((resolve, reject) => {
    const call = client.makeBidiStreamRequest<DiscoveryRequest, DiscoveryResponse>(
      ADS_V2_METHOD,
      encodeDiscoveryRequestV2,
      decodeDiscoveryResponseV2,
      new grpc.Metadata(),
      { deadline: Date.now() + options.timeoutMs },
    );
    const fetched: AdsV2Fetched[] = [];
    let settled = false;
    let done = false;
    const settle = (error: Error | undefined): void => {
      if (settled) return;
      settled = true;
      options.signal?.removeEventListener("abort", onAbort);
      call.cancel();
      client.close();
      if (error !== undefined) reject(error);
      else resolve(fetched);
    };
    const onAbort = (): void => {
      settle(new AdsProbeError(grpc.status.CANCELLED, "the check was cancelled"));
    };
    options.signal?.addEventListener("abort", onAbort, { once: true });
    if (options.signal?.aborted === true) {
      onAbort();
      return;
    }
    const ask = (typeUrl: V2TypeUrl): void => {
      // v2 Envoy sent its node on every request; the server reads it from the first.
      call.write({
        version_info: "",
        node: options.node,
        resource_names: [],
        type_url: typeUrl,
        response_nonce: "",
      });
    };
    call.on("data", (response: DiscoveryResponse) => {
      const expected = options.types[fetched.length];
      if (done || response.type_url !== expected) return;
      let resources: V2Object[];
      try {
        resources = response.resources.filter((r) => r.type_url === expected).map(unpackV2);
      } catch (error) {
        settle(new AdsProbeError(undefined, `cannot decode the ${expected} response: ${(error as Error).message}`));
        return;
      }
      fetched.push({ typeUrl: expected, versionInfo: response.version_info, resources });
      const ack: DiscoveryRequest = {
        version_info: response.version_info,
        node: options.node,
        resource_names: [],
        type_url: expected,
        response_nonce: response.nonce,
      };
      const next = options.types[fetched.length];
      call.write(ack, () => {
        if (next !== undefined) {
          ask(next);
          return;
        }
        done = true;
        call.end();
      });
    });
    call.on("status", (status: grpc.StatusObject) => {
      if (done && status.code !== grpc.status.UNAVAILABLE && status.code !== grpc.status.INTERNAL) {
        // Everything arrived and was ACKed; OK, CANCELLED or a deadline on the graceful close are all fine.
        settle(undefined);
      } else {
        const waiting = options.types[fetched.length] ?? "the end of the stream";
        settle(new AdsProbeError(status.code, status.details || `stream closed while waiting for ${waiting}`));
      }
    });
    call.on("error", () => {
      // Reported through "status" with the gRPC code.
    });
    const firstType = options.types[0];
    if (firstType === undefined) {
      done = true;
      call.end();
      return;
    }
    ask(firstType);
  });
}
