/** A test's ADS stream to the dev Pilot: send requests, wait for the n-th response, half-close or cancel. */
import * as grpc from "@grpc/grpc-js";
import type { AdsProbeTls } from "../../src/xds/ads-client.js";
import { createAdsClient } from "../../src/xds/ads-client.js";
import type { DiscoveryRequest, DiscoveryResponse } from "../../src/xds/protos.js";
import { ADS_METHOD, decodeDiscoveryResponse, encodeDiscoveryRequest } from "../../src/xds/protos.js";

export interface AdsStream {
  readonly responses: DiscoveryResponse[];
  send(
    request: Omit<DiscoveryRequest, "version_info" | "resource_names" | "response_nonce"> & Partial<DiscoveryRequest>,
  ): void;
  next(count: number): Promise<DiscoveryResponse>;
  /** Half-closes and waits for the server's status. */
  close(): Promise<grpc.StatusObject>;
  /** Ends the call at once and closes the client (cleanup). */
  cancel(): void;
  readonly status: Promise<grpc.StatusObject>;
}

/**
 * Opens `StreamAggregatedResources` to `address` (plain text without `tls`) with the agent's client and codec;
 * responses collect in order, `next(n)` waits for the n-th.
 */
export function openAdsStream(address: string, tls: AdsProbeTls | undefined): AdsStream {
  const client = createAdsClient(address, tls);
  const call = client.makeBidiStreamRequest<DiscoveryRequest, DiscoveryResponse>(
    ADS_METHOD,
    encodeDiscoveryRequest,
    decodeDiscoveryResponse,
    new grpc.Metadata(),
  );
  const responses: DiscoveryResponse[] = [];
  const waiters: (() => void)[] = [];
  call.on("data", (r: DiscoveryResponse) => {
    responses.push(r);
    for (const w of waiters.splice(0)) w();
  });
  call.on("error", () => undefined);
  const status = new Promise<grpc.StatusObject>((resolve) => {
    call.on("status", (s: grpc.StatusObject) => {
      client.close();
      for (const w of waiters.splice(0)) w();
      resolve(s);
    });
  });
  let ended = false;
  void status.then(() => {
    ended = true;
  });
  return {
    responses,
    status,
    send: (request) => {
      call.write({ version_info: "", resource_names: [], response_nonce: "", ...request });
    },
    next: async (count) => {
      while (responses.length < count) {
        if (ended) throw new Error(`stream ended after ${responses.length} responses`);
        await new Promise<void>((resolve) => waiters.push(resolve));
      }
      return responses[count - 1] as DiscoveryResponse;
    },
    close: () => {
      call.end();
      return status;
    },
    cancel: () => {
      call.cancel();
      client.close();
    },
  };
}
