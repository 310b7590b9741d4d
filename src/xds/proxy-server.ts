/**
 * Envoy's side of the xDS proxy (src/xds/proxy.ts): the gRPC server on the Unix socket that takes Envoy's ADS streams
 * as raw bytes, and what the proxy keeps per Envoy stream. The socket is 0600 in a 0700 directory, both owned by
 * Envoy's user when given (as the SDS socket, src/sds/server.ts): whoever connects speaks to istiod with this VM's
 * identity.
 */
import * as grpc from "@grpc/grpc-js";
import type { FileOwner, FileSystem } from "../platform/fs.js";
import type { DiscoveryRequest } from "./protos.js";
import { bindPrivateSocket } from "./private-socket.js";
import { ADS_METHOD } from "./protos.js";

export type EnvoyCall = grpc.ServerDuplexStream<Buffer, Buffer>;

/** One Envoy stream on the socket. */
export interface Downstream {
  readonly id: number;
  readonly call: EnvoyCall;
  /** Requests waiting for an upstream stream, in order. */
  queue: { readonly raw: Buffer; readonly request: DiscoveryRequest }[];
  first: boolean;
  closed: boolean;
}

/** Creates the socket (replacing a stale one) with its final mode and serves ADS on it; `onStream` gets each call. */
export async function serveAdsSocket(
  fs: FileSystem,
  socketPath: string,
  owner: FileOwner | undefined,
  onStream: (call: EnvoyCall) => void,
): Promise<grpc.Server> {
  const server = new grpc.Server({
    "grpc.max_send_message_length": -1,
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
  });
  server.addService(
    {
      StreamAggregatedResources: {
        path: ADS_METHOD,
        requestStream: true,
        responseStream: true,
        requestSerialize: (b: Buffer) => b,
        requestDeserialize: (b: Buffer) => b,
        responseSerialize: (b: Buffer) => b,
        responseDeserialize: (b: Buffer) => b,
      },
    },
    { StreamAggregatedResources: onStream },
  );
  await bindPrivateSocket(server, socketPath, fs, owner);
  return server;
}
