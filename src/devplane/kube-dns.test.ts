import { promises as dns } from "node:dns";
import { connect } from "node:net";
import * as dnsPacket from "dns-packet";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { KubeDnsServer } from "./kube-dns.js";
import { startKubeDns } from "./kube-dns.js";
import { ObjectStore } from "./store.js";

function seed(): ObjectStore {
  const store = new ObjectStore();
  store.create("namespaces", { metadata: { name: "istio-system" } });
  store.create("services", {
    metadata: { name: "istio-pilot", namespace: "istio-system" },
    spec: {
      clusterIP: "10.96.0.8",
      clusterIPs: ["10.96.0.8", "fd00::8"],
      ports: [{ name: "http-discovery", port: 8080 }],
    },
  });
  store.create("services", {
    metadata: { name: "db", namespace: "default" },
    spec: { clusterIP: "None", ports: [{ name: "tcp", port: 5432 }] },
  });
  store.create("endpoints", {
    metadata: { name: "db", namespace: "default" },
    subsets: [{ addresses: [{ ip: "10.1.0.5" }, { ip: "10.1.0.6" }], ports: [{ name: "tcp", port: 5432 }] }],
  });
  return store;
}

async function tcpQuery(server: KubeDnsServer, name: string, type: "A" | "AAAA"): Promise<dnsPacket.DecodedPacket> {
  const query = dnsPacket.encode({
    type: "query",
    id: 4242,
    flags: dnsPacket.RECURSION_DESIRED,
    questions: [{ type, name }],
  });
  const framed = Buffer.alloc(query.length + 2);
  framed.writeUInt16BE(query.length, 0);
  query.copy(framed, 2);
  return await new Promise((resolve, reject) => {
    const socket = connect(server.port, server.host);
    let data = Buffer.alloc(0);
    socket.on("data", (chunk: Buffer) => {
      data = Buffer.concat([data, chunk]);
      if (data.length >= 2 && data.length >= 2 + data.readUInt16BE(0)) {
        socket.destroy();
        resolve(dnsPacket.decode(data.subarray(2, 2 + data.readUInt16BE(0))));
      }
    });
    socket.on("error", reject);
    // Written in two pieces: the framing must survive a length prefix split from its message.
    socket.write(framed.subarray(0, 1));
    setImmediate(() => socket.write(framed.subarray(1)));
  });
}

describe("dev kube-dns", () => {
  let store: ObjectStore;
  let server: KubeDnsServer;
  let resolver: dns.Resolver;

  beforeEach(async () => {
    store = seed();
    server = await startKubeDns({ store });
    resolver = new dns.Resolver({ timeout: 2000, tries: 1 });
    resolver.setServers([server.address]);
  });
  afterEach(async () => {
    await server.close();
  });

  it("answers A and AAAA for a service's cluster IPs over UDP", async () => {
    expect(await resolver.resolve4("istio-pilot.istio-system.svc.cluster.local")).toEqual(["10.96.0.8"]);
    expect(await resolver.resolve6("istio-pilot.istio-system.svc.cluster.local")).toEqual(["fd00::8"]);
  });

  it("answers a headless service with its endpoint addresses", async () => {
    expect((await resolver.resolve4("db.default.svc.cluster.local")).sort()).toEqual(["10.1.0.5", "10.1.0.6"]);
  });

  it("says NXDOMAIN, with the zone's SOA, for a name that is not a service", async () => {
    await expect(resolver.resolve4("nope.default.svc.cluster.local")).rejects.toMatchObject({ code: "ENOTFOUND" });
    const reply = await tcpQuery(server, "nope.default.svc.cluster.local", "A");
    expect((reply.flags ?? 0) & 0xf).toBe(3); // NXDOMAIN
    expect(reply.flag_aa).toBe(true);
    expect(reply.authorities?.[0]?.type).toBe("SOA");
    expect(reply.authorities?.[0]?.name).toBe("cluster.local");
  });

  it("sees store changes at once", async () => {
    store.create("services", { metadata: { name: "late", namespace: "default" }, spec: { clusterIP: "10.96.3.3" } });
    expect(await resolver.resolve4("late.default.svc.cluster.local")).toEqual(["10.96.3.3"]);
    store.delete("services", "default", "late");
    await expect(resolver.resolve4("late.default.svc.cluster.local")).rejects.toMatchObject({ code: "ENOTFOUND" });
  });

  it("answers over TCP with two-byte length framing, keeping the query id", async () => {
    const reply = await tcpQuery(server, "istio-pilot.istio-system.svc.cluster.local", "A");
    expect(reply.id).toBe(4242);
    expect((reply.flags ?? 0) & 0xf).toBe(0); // NOERROR
    expect(reply.answers?.map((a) => (a.type === "A" ? a.data : a.type))).toEqual(["10.96.0.8"]);
  });

  it("refuses names outside the cluster zone and gives NODATA for a service without that family", async () => {
    await expect(resolver.resolve4("example.com")).rejects.toMatchObject({ code: "EREFUSED" });
    const reply = await tcpQuery(server, "db.default.svc.cluster.local", "AAAA");
    expect((reply.flags ?? 0) & 0xf).toBe(0); // NOERROR
    expect(reply.answers).toEqual([]);
    expect(reply.authorities?.[0]?.type).toBe("SOA");
  });
});
