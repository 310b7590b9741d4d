import { describe, expect, it } from "vitest";
import * as grpc from "@grpc/grpc-js";
import protobuf from "protobufjs";
import { AdsProbeError, probeAds } from "../xds/ads-client.js";
import { fetchAdsV2 } from "../xds/ads-v2-fetch.js";
import type { XdsNode } from "../xds/protos.js";
import { V2_TYPE, encodeDiscoveryRequestV2, packV2 } from "../xds/protos-v2.js";
import { envoyProtoRoot } from "../../test/support/envoy-proto.js";
import { parseServiceNode } from "./pilot-v1.js";
import { ADS_V2, v2Routes } from "./pilot-xds-v2.js";
import { startPilotXds } from "./pilot-xds.js";
import type { ObjectStore } from "./store.js";
import { HELLO_DOMAINS, recipeMeshStore } from "../../test/support/recipe-mesh.js";

const VM_IP = "10.150.0.5";
const node: XdsNode = {
  id: `sidecar~${VM_IP}~vm1.default~default.svc.cluster.local`,
  cluster: "rawvm",
  metadata: { NAMESPACE: "default", istio: "sidecar" },
};

const seed = (): ObjectStore => recipeMeshStore(VM_IP);

function legacyXds(store: ObjectStore) {
  return startPilotXds({ store, v3OnlyWhenAsked: true, alsoServe: ADS_V2 });
}

describe("dev Pilot, xDS v2 (Istio 0.8)", () => {
  it("serves a v2 node its CDS and LDS as Pilot 0.8 built them: inbound listener and cluster for 3306, outbound clusters", async () => {
    const xds = await legacyXds(seed());
    try {
      const [cds, lds] = await fetchAdsV2({
        target: xds.address,
        node,
        types: [V2_TYPE.cluster, V2_TYPE.listener],
        timeoutMs: 5000,
      });
      expect(cds?.resources.map((c) => c["name"])).toEqual([
        "BlackHoleCluster",
        "inbound|3306||mysqldb.default.svc.cluster.local",
        "outbound|3306||mysqldb.default.svc.cluster.local",
        "outbound|80||hello.default.svc.cluster.local",
      ]);
      expect(cds?.resources[1]).toMatchObject({
        type: "STATIC",
        hosts: [{ socket_address: { address: "127.0.0.1", port_value: 3306 } }],
        protocol_selection: "USE_DOWNSTREAM_PROTOCOL",
      });
      expect(cds?.resources[2]).toMatchObject({
        type: "EDS",
        eds_cluster_config: {
          service_name: "outbound|3306||mysqldb.default.svc.cluster.local",
          eds_config: { ads: {} },
        },
        connect_timeout: { seconds: 1 },
      });
      const listeners = lds?.resources ?? [];
      expect(listeners.map((l) => l["name"])).toEqual([`${VM_IP}_3306`, "0.0.0.0_80", "10.96.0.20_3306", "virtual"]);
      expect(listeners[0]).toMatchObject({
        address: { socket_address: { address: VM_IP, port_value: 3306 } },
        deprecated_v1: { bind_to_port: { value: false } },
        filter_chains: [{ filters: [{ name: "envoy.tcp_proxy" }] }],
      });
      const inboundConfig = JSON.stringify((listeners[0] as { filter_chains: unknown }).filter_chains);
      expect(inboundConfig).toContain("inbound|3306||mysqldb.default.svc.cluster.local");
      expect(listeners[3]).toMatchObject({
        address: { socket_address: { address: "0.0.0.0", port_value: 15001 } },
        use_original_dst: { value: true },
      });
      expect(listeners[3]).not.toHaveProperty("deprecated_v1");
      // ACKed, as Envoy does.
      expect(xds.events.filter((e) => e.kind === "ack").map((e) => e.typeUrl)).toEqual([
        V2_TYPE.cluster,
        V2_TYPE.listener,
      ]);
    } finally {
      await xds.close();
    }
  });

  it("EDS and RDS v2: the endpoints of an outbound cluster, the virtual hosts of port 80 with every short name", async () => {
    const store = seed();
    const xds = await legacyXds(store);
    try {
      const eds = await fetchAdsV2({ target: xds.address, node, types: [V2_TYPE.endpoint], timeoutMs: 5000 });
      expect(eds[0]?.resources.map((r) => r["cluster_name"])).toEqual([
        "outbound|80||hello.default.svc.cluster.local",
        "outbound|3306||mysqldb.default.svc.cluster.local",
      ]);
      expect(eds[0]?.resources[0]).toMatchObject({
        endpoints: [
          { lb_endpoints: [{ endpoint: { address: { socket_address: { address: "10.1.1.1", port_value: 8080 } } } }] },
        ],
      });
      // Envoy asks RDS for the names its listeners give (`80` for 0.0.0.0_80).
      const service = parseServiceNode(node.id);
      expect(service).toBeDefined();
      if (service === undefined) return;
      expect(v2Routes(store, ["80", "http_proxy"], service)).toEqual([
        {
          name: "80",
          virtual_hosts: [
            {
              name: "hello.default.svc.cluster.local:80",
              domains: HELLO_DOMAINS,
              routes: [{ match: { prefix: "/" }, route: { cluster: "outbound|80||hello.default.svc.cluster.local" } }],
            },
          ],
        },
        { name: "http_proxy", virtual_hosts: [] },
      ]);
    } finally {
      await xds.close();
    }
  });

  it("encodes v2's own field numbers: a Listener's bind_to_port under deprecated_v1 (7), a Filter's config as a Struct (2)", () => {
    const packed = packV2(V2_TYPE.listener, {
      name: "10.150.0.5_3306",
      filter_chains: [
        { filters: [{ name: "envoy.tcp_proxy", config: { fields: { cluster: { stringValue: "c" } } } }] },
      ],
      deprecated_v1: { bind_to_port: { value: false } },
    });
    const reader = protobuf.Reader.create(packed.value);
    const tags: number[] = [];
    while (reader.pos < reader.len) {
      const tag = reader.uint32();
      tags.push(tag >>> 3);
      reader.skipType(tag & 7);
    }
    expect(tags).toEqual([1, 3, 7]);
    // The same bytes read as v3: v3 reserved the v1 fields, so the bind setting is lost (no bind_to_port, 26) and
    // the filter's Struct config (2) is an unknown field: a v3 client cannot take Pilot 0.8's answer, nor v2 Envoy v3's.
    const v3Listener = envoyProtoRoot().lookupType("envoy.config.listener.v3.Listener");
    const asV3 = v3Listener.toObject(v3Listener.decode(packed.value)) as Record<string, unknown>;
    expect(asV3["bind_to_port"]).toBeUndefined();
  });

  it("refuses a v3 stream from the v2 era and ignores a v3 type on a v2 stream, as Pilot 0.8 ignored unknown types", async () => {
    const xds = await legacyXds(seed());
    try {
      const v3 = await probeAds({ target: xds.address, node, timeoutMs: 5000 }).catch((e: unknown) => e);
      expect(v3).toBeInstanceOf(AdsProbeError);
      expect((v3 as AdsProbeError).grpcCode).toBe(grpc.status.UNIMPLEMENTED);
      // A v3 type URL on the v2 stream gets no answer; the v2 types after it still do.
      const client = new grpc.Client(xds.address, grpc.credentials.createInsecure());
      const call = client.makeBidiStreamRequest(
        "/envoy.service.discovery.v2.AggregatedDiscoveryService/StreamAggregatedResources",
        (b: Buffer) => b,
        (b: Buffer) => b,
      );
      const got = new Promise<Buffer>((resolve) => call.once("data", resolve));
      call.on("error", () => undefined);
      const request = (typeUrl: string) =>
        encodeDiscoveryRequestV2({ version_info: "", node, resource_names: [], type_url: typeUrl, response_nonce: "" });
      call.write(request("type.googleapis.com/envoy.config.cluster.v3.Cluster"));
      call.write(request(V2_TYPE.cluster));
      expect((await got).length).toBeGreaterThan(0);
      call.cancel();
      client.close();
      expect(xds.events.find((e) => e.kind === "ignored")?.typeUrl).toBe(
        "type.googleapis.com/envoy.config.cluster.v3.Cluster",
      );
      expect(xds.events.filter((e) => e.kind === "response").map((e) => e.typeUrl)).toEqual([V2_TYPE.cluster]);
    } finally {
      await xds.close();
    }
  });

  it("ends a v2 stream whose node id is not <type>~<ip>~<id>~<domain> (Pilot 0.8's ParseServiceNode)", async () => {
    const xds = await legacyXds(seed());
    try {
      const error = await fetchAdsV2({
        target: xds.address,
        node: { ...node, id: "vm1" },
        types: [V2_TYPE.cluster],
        timeoutMs: 5000,
      }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(AdsProbeError);
      expect((error as AdsProbeError).grpcCode).toBe(grpc.status.INVALID_ARGUMENT);
      expect((error as AdsProbeError).details).toContain("missing parts in the service node");
    } finally {
      await xds.close();
    }
  });

  it("is not served without alsoServe (the istiod profile): a v2 stream ends with UNIMPLEMENTED", async () => {
    const xds = await startPilotXds({ store: seed() });
    try {
      const error = await fetchAdsV2({ target: xds.address, node, types: [V2_TYPE.cluster], timeoutMs: 5000 }).catch(
        (e: unknown) => e,
      );
      expect((error as AdsProbeError).grpcCode).toBe(grpc.status.UNIMPLEMENTED);
    } finally {
      await xds.close();
    }
  });
});
