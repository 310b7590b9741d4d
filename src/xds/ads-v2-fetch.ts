/**
 * A one-shot xDS v2 ADS fetch (Istio 0.8's Pilot; the legacy discovery check with ENVOY_XDS_API=v2): open
 * `envoy.service.discovery.v2.AggregatedDiscoveryService/StreamAggregatedResources`, ask for each type in turn as
 * v2 Envoy does at start (CDS, then LDS), ACK each response (same type, its version and nonce), half-close and
 * wait for the server to end the stream. Everything runs under one deadline; failures carry the gRPC status.
 */
import * as grpc from "@grpc/grpc-js";
import type { AdsProbeTls } from "./ads-client.js";
import { AdsProbeError, oneShotAdsCall } from "./ads-client.js";
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
  return oneShotAdsCall<AdsV2Fetched[]>({
    target: options.target,
    tls: options.tls,
    method: ADS_V2_METHOD,
    encode: encodeDiscoveryRequestV2,
    decode: decodeDiscoveryResponseV2,
    metadata: new grpc.Metadata(),
    timeoutMs: options.timeoutMs,
    signal: options.signal,
    run: (call, settle) => {
      const fetched: AdsV2Fetched[] = [];
      let done = false;
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
          settle({ value: fetched });
        } else {
          const waiting = options.types[fetched.length] ?? "the end of the stream";
          settle(new AdsProbeError(status.code, status.details || `stream closed while waiting for ${waiting}`));
        }
      });
      const firstType = options.types[0];
      if (firstType === undefined) {
        done = true;
        call.end();
        return;
      }
      ask(firstType);
    },
  });
}
