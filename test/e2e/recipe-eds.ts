/**
 * One EDS question to an ADS server, as Envoy asks it: `node recipe-eds.mjs HOST:PORT CLUSTER` prints the endpoint
 * addresses of the cluster's load assignment, one `ip:port` a line (exit 0), or the error (exit 1). The recipe
 * driver bundles this file with esbuild and runs it inside the "cluster" network namespace, where the dev Pilot
 * listens (Node cannot enter a network namespace itself).
 */
import * as grpc from "@grpc/grpc-js";
import { XDS_API_HEADER } from "../../src/xds/protos.js";
import type { DiscoveryRequest, DiscoveryResponse } from "../../src/xds/protos.js";
import {
  ADS_METHOD,
  ENDPOINT_TYPE_URL,
  decodeDiscoveryResponse,
  encodeDiscoveryRequest,
  unpackClusterLoadAssignment,
} from "../../src/xds/protos.js";

function xdsApiMetadata(): grpc.Metadata {
  const metadata = new grpc.Metadata();
  metadata.set(XDS_API_HEADER, "v3");
  return metadata;
}

function askEds(address: string, cluster: string): Promise<string[]> {
  const client = new grpc.Client(address, grpc.credentials.createInsecure());
  const call = client.makeBidiStreamRequest<DiscoveryRequest, DiscoveryResponse>(
    ADS_METHOD,
    encodeDiscoveryRequest,
    decodeDiscoveryResponse,
    // A v3 client asking for v3 explicitly: the legacy profile's dev Pilot serves v3 only then (Istio 0.8 served v2).
    xdsApiMetadata(),
    { deadline: Date.now() + 10_000 },
  );
  return new Promise<string[]>((resolve, reject) => {
    call.on("data", (response: DiscoveryResponse) => {
      const addresses = response.resources
        .map(unpackClusterLoadAssignment)
        .flatMap((a) => a.endpoints.flatMap((e) => e.lb_endpoints))
        .map(
          (l) => `${l.endpoint.address.socket_address.address}:${String(l.endpoint.address.socket_address.port_value)}`,
        );
      resolve(addresses);
      call.cancel();
      client.close();
    });
    call.on("error", (error: Error & { code?: number }) => {
      if (error.code !== grpc.status.CANCELLED) reject(error);
      client.close();
    });
    call.write({
      version_info: "",
      node: {
        id: "sidecar~127.0.0.1~recipe-eds.default~default.svc.cluster.local",
        cluster: "recipe-eds",
        metadata: {},
      },
      resource_names: [cluster],
      type_url: ENDPOINT_TYPE_URL,
      response_nonce: "",
    });
  });
}

const [address, cluster] = process.argv.slice(2);
if (address === undefined || cluster === undefined) {
  process.stderr.write("usage: recipe-eds HOST:PORT CLUSTER\n");
  process.exit(2);
}
askEds(address, cluster).then(
  (addresses) => {
    process.stdout.write(addresses.map((a) => `${a}\n`).join(""));
  },
  (error: unknown) => {
    process.stderr.write(`EDS request failed: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exitCode = 1;
  },
);
