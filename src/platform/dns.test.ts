import { createSocket } from "node:dgram";
import { describe, expect, it } from "vitest";
import { ObjectStore } from "../devplane/store.js";
import { startKubeDns } from "../devplane/kube-dns.js";
import { nodeDnsClient } from "./dns.js";

describe("DNS port", () => {
  it("gives up on a server that never answers at its own deadline (resolver.cancel), reporting TIMEOUT", async () => {
    const silent = createSocket("udp4");
    await new Promise<void>((resolve) => silent.bind(0, "127.0.0.1", resolve));
    try {
      const outcome = await nodeDnsClient.queryServer("istio-pilot", `127.0.0.1:${silent.address().port}`, 300);
      expect(outcome).toEqual({ ok: false, code: "TIMEOUT", message: "no answer within 300 ms" });
    } finally {
      silent.close();
    }
  });

  it("asks only the given server, A and AAAA, and passes NXDOMAIN through as ENOTFOUND", async () => {
    const store = new ObjectStore();
    store.create("services", {
      metadata: { name: "a", namespace: "b" },
      spec: { clusterIPs: ["10.96.0.3", "fd00::3"] },
    });
    const server = await startKubeDns({ store });
    try {
      expect(await nodeDnsClient.queryServer("a.b.svc.cluster.local", server.address, 2000)).toEqual({
        ok: true,
        addresses: ["10.96.0.3", "fd00::3"],
      });
      const missing = await nodeDnsClient.queryServer("x.b.svc.cluster.local", server.address, 2000);
      expect(missing).toMatchObject({ ok: false, code: "ENOTFOUND" });
    } finally {
      await server.close();
    }
  });
});
