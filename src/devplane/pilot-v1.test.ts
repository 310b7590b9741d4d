import { request } from "node:https";
import { describe, expect, it } from "vitest";
import { pilotRestPerTest } from "../../test/support/pilot-rest.js";
import { checkAgainstV1Schema } from "../../test/support/envoy-v1-schema.js";
import { createMeshCa } from "./mesh-ca.js";
import { startPilotRest } from "./pilot-rest.js";
import { clusterName, virtualHostDomains } from "./pilot-v1.js";
import type { ObjectStore } from "./store.js";
import { HELLO_DOMAINS, recipeMeshStore } from "../../test/support/recipe-mesh.js";

const VM_IP = "10.0.0.5";
const NODE = `sidecar~${VM_IP}~vm1.default~default.svc.cluster.local`;

/** The recipe's mesh and a service in another namespace. */
function seed(): ObjectStore {
  const store = recipeMeshStore(VM_IP);
  store.create("services", {
    metadata: { name: "web", namespace: "other" },
    spec: { clusterIP: "10.96.2.2", ports: [{ name: "http-api", port: 9080 }] },
  });
  return store;
}

async function getJson(url: string): Promise<{ status: number; body: unknown }> {
  const res = await fetch(url);
  const text = await res.text();
  return { status: res.status, body: res.status === 200 ? JSON.parse(text) : text };
}

describe("dev Pilot v1 discovery (CDS, LDS, RDS) as Istio 0.2's Pilot served it", () => {
  const rest = pilotRestPerTest(seed);

  it("CDS: in.<port> static clusters for the node's own endpoints, out.<service-key> SDS clusters; Envoy's v1 schemas accept it", async () => {
    const { status, body } = await getJson(`${rest.pilot.url}/v1/clusters/rawvm/${NODE}`);
    expect(status).toBe(200);
    expect(checkAgainstV1Schema("cds", body)).toEqual([]);
    expect(body).toEqual({
      clusters: [
        {
          name: "in.3306",
          connect_timeout_ms: 1000,
          type: "static",
          lb_type: "round_robin",
          hosts: [{ url: "tcp://127.0.0.1:3306" }],
        },
        {
          name: "out.hello.default.svc.cluster.local|http",
          service_name: "hello.default.svc.cluster.local|http",
          connect_timeout_ms: 1000,
          type: "sds",
          lb_type: "round_robin",
        },
        {
          name: "out.mysqldb.default.svc.cluster.local|mysql",
          service_name: "mysqldb.default.svc.cluster.local|mysql",
          connect_timeout_ms: 1000,
          type: "sds",
          lb_type: "round_robin",
        },
        {
          name: "out.web.other.svc.cluster.local|http-api",
          service_name: "web.other.svc.cluster.local|http-api",
          connect_timeout_ms: 1000,
          type: "sds",
          lb_type: "round_robin",
        },
      ],
    });
    // SDS for an outbound cluster's service_name answers from the same registry.
    const sds = await getJson(
      `${rest.pilot.url}/v1/registration/${encodeURIComponent("mysqldb.default.svc.cluster.local|mysql")}`,
    );
    expect(checkAgainstV1Schema("sds", sds.body)).toEqual([]);
    expect(sds.body).toEqual({ hosts: [{ ip_address: VM_IP, port: 3306 }] });
  });

  it("LDS: virtual on 15001 with use_original_dst, outbound http_0.0.0.0_<port> / tcp_<VIP>_<port>, the VM's inbound tcp_<ip>_3306", async () => {
    const { status, body } = await getJson(`${rest.pilot.url}/v1/listeners/rawvm/${NODE}`);
    expect(status).toBe(200);
    expect(checkAgainstV1Schema("lds", body)).toEqual([]);
    const listeners = (body as { listeners: Record<string, unknown>[] }).listeners;
    expect(listeners.map((l) => l["name"])).toEqual([
      "virtual",
      "http_0.0.0.0_80",
      "http_0.0.0.0_9080",
      "tcp_10.0.0.5_3306",
      "tcp_10.96.0.20_3306",
    ]);
    expect(listeners[0]).toEqual({
      address: "tcp://0.0.0.0:15001",
      name: "virtual",
      filters: [],
      bind_to_port: true,
      use_original_dst: true,
    });
    expect(listeners[3]).toEqual({
      address: "tcp://10.0.0.5:3306",
      name: "tcp_10.0.0.5_3306",
      filters: [
        {
          type: "read",
          name: "tcp_proxy",
          config: {
            stat_prefix: "tcp",
            route_config: { routes: [{ cluster: "in.3306", destination_ip_list: ["10.0.0.5/32"] }] },
          },
        },
      ],
      bind_to_port: false,
    });
    expect(listeners[1]).toMatchObject({
      bind_to_port: false,
      filters: [
        {
          name: "http_connection_manager",
          config: { rds: { cluster: "rds", route_config_name: "80", refresh_delay_ms: 1000 } },
        },
      ],
    });
    // Another node sees no inbound listener of this VM.
    const other = await getJson(
      `${rest.pilot.url}/v1/listeners/rawvm/sidecar~10.0.0.9~vm2.default~default.svc.cluster.local`,
    );
    expect((other.body as { listeners: { name: string }[] }).listeners.map((l) => l.name)).not.toContain(
      "tcp_10.0.0.5_3306",
    );
  });

  it("RDS: one virtual host per HTTP service on the port, every short form of the host and the VIP; schema-valid", async () => {
    const port80 = await getJson(`${rest.pilot.url}/v1/routes/80/rawvm/${NODE}`);
    expect(checkAgainstV1Schema("rds", port80.body)).toEqual([]);
    expect(port80.body).toEqual({
      virtual_hosts: [
        {
          name: "hello.default.svc.cluster.local|http",
          domains: HELLO_DOMAINS,
          routes: [{ prefix: "/", cluster: "out.hello.default.svc.cluster.local|http", timeout_ms: 0 }],
        },
      ],
    });
    const port9080 = await getJson(`${rest.pilot.url}/v1/routes/9080/rawvm/${NODE}`);
    expect(checkAgainstV1Schema("rds", port9080.body)).toEqual([]);
    // From namespace default, a service in "other" has no bare short name, and only host:port forms off port 80.
    expect((port9080.body as { virtual_hosts: { domains: string[] }[] }).virtual_hosts[0]?.domains).toEqual([
      "web.other:9080",
      "web.other.svc:9080",
      "web.other.svc.cluster:9080",
      "web.other.svc.cluster.local:9080",
      "10.96.2.2:9080",
    ]);
    expect((await getJson(`${rest.pilot.url}/v1/routes/3306/rawvm/${NODE}`)).body).toEqual({ virtual_hosts: [] });
  });

  it("404 on a node without four parts or a wrong path shape, 503 while the registry is unavailable", async () => {
    const bad = await getJson(`${rest.pilot.url}/v1/listeners/rawvm/10.0.0.5`);
    expect(bad).toEqual({ status: 404, body: "missing parts in the service node\n" });
    expect((await getJson(`${rest.pilot.url}/v1/routes/rawvm/${NODE}`)).status).toBe(404);
    rest.pilot.setFault("registry-unavailable");
    expect((await getJson(`${rest.pilot.url}/v1/clusters/rawvm/${NODE}`)).status).toBe(503);
  });

  it("caches answers per URL and flushes the cache on every store change (/cache_stats counts hits and misses)", async () => {
    const url = `/v1/clusters/rawvm/${NODE}`;
    await getJson(rest.pilot.url + url);
    await getJson(rest.pilot.url + url);
    expect((await getJson(`${rest.pilot.url}/cache_stats`)).body).toEqual({
      cache_stats: { [url]: { hit: 1, miss: 1 } },
    });
    rest.store.create("services", {
      metadata: { name: "new", namespace: "default" },
      spec: { clusterIP: "10.96.3.3", ports: [{ name: "tcp", port: 7000 }] },
    });
    const after = await getJson(rest.pilot.url + url);
    expect((after.body as { clusters: { name: string }[] }).clusters.map((c) => c.name)).toContain(
      "out.new.default.svc.cluster.local|tcp",
    );
    expect((await getJson(`${rest.pilot.url}/cache_stats`)).body).toEqual({
      cache_stats: { [url]: { hit: 1, miss: 2 } },
    });
    const del = await fetch(`${rest.pilot.url}/cache_stats_delete`, { method: "POST" });
    expect(del.status).toBe(200);
    expect((await getJson(`${rest.pilot.url}/cache_stats`)).body).toEqual({ cache_stats: {} });
  });
});

describe("dev Pilot v1 over mTLS (Pilot's 15003 front)", () => {
  it("answers a client with a mesh certificate and refuses one without", async () => {
    const ca = await createMeshCa();
    const serving = await ca.issueKeyPair({ dnsNames: ["istio-pilot.istio-system"], ipAddresses: ["127.0.0.1"] });
    const client = await ca.issueKeyPair({ identity: "spiffe://cluster.local/ns/default/sa/default" });
    const pilot = await startPilotRest({
      store: seed(),
      tls: { certPem: serving.chainPem, keyPem: serving.keyPem, caPem: ca.rootCertPem },
    });
    const get = (withCert: boolean): Promise<number | string> =>
      new Promise((resolve) => {
        const req = request(
          `${pilot.url}/v1/clusters/rawvm/${NODE}`,
          {
            ca: ca.rootCertPem,
            ...(withCert ? { cert: client.chainPem, key: client.keyPem } : {}),
          },
          (res) => {
            res.resume();
            resolve(res.statusCode ?? 0);
          },
        );
        req.on("error", (e) => {
          resolve((e as NodeJS.ErrnoException).code ?? e.message);
        });
        req.end();
      });
    try {
      expect(pilot.url.startsWith("https://")).toBe(true);
      expect(await get(true)).toBe(200);
      expect(await get(false)).not.toBe(200);
    } finally {
      await pilot.close();
    }
  });
});

describe("the v1 schema check of LDS", () => {
  it("checks each filter's config by its name, as Envoy did: no routes in an HTTP manager, a TCP route without cluster", () => {
    const errors = checkAgainstV1Schema("lds", {
      listeners: [
        {
          address: "tcp://0.0.0.0:80",
          name: "http_0.0.0.0_80",
          filters: [
            {
              type: "read",
              name: "http_connection_manager",
              config: { codec_type: "auto", stat_prefix: "http", filters: [{ name: "router", config: {} }] },
            },
          ],
        },
        {
          address: "tcp://10.0.0.5:3306",
          filters: [
            { name: "tcp_proxy", config: { stat_prefix: "tcp", route_config: { routes: [{ clusterr: "x" }] } } },
          ],
        },
        { address: "0.0.0.0:1", filters: [] },
      ],
    }).join("\n");
    expect(errors).toContain("/listeners/0/filters/0/config: must match exactly one schema in oneOf");
    expect(errors).toContain(
      "/listeners/1/filters/0/config/route_config/routes/0: must have required property 'cluster'",
    );
    expect(errors).toContain('/listeners/2/address: must match pattern "^tcp://"');
  });
});

describe("v1 names", () => {
  it("a cluster name over 189 characters becomes its first 149 and the SHA-1 of the whole", () => {
    const long = `out.${"a".repeat(200)}.default.svc.cluster.local|http`;
    const short = clusterName(long);
    expect(short).toHaveLength(189);
    expect(short.slice(0, 149)).toBe(long.slice(0, 149));
    expect(short.slice(149)).toMatch(/^[0-9a-f]{40}$/);
    expect(clusterName("out.x|http")).toBe("out.x|http");
  });

  it("a headless service has no VIP among its domains", () => {
    const domains = virtualHostDomains(
      {
        namespace: "default",
        name: "h",
        hostname: "h.default.svc.cluster.local",
        address: "",
        ports: [],
        selector: {},
      },
      8080,
      "default.svc.cluster.local",
    );
    expect(domains).toEqual([
      "h:8080",
      "h.default:8080",
      "h.default.svc:8080",
      "h.default.svc.cluster:8080",
      "h.default.svc.cluster.local:8080",
    ]);
  });
});
