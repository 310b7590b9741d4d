import { beforeAll, describe, expect, it } from "vitest";
import { openAdsStream } from "../../test/support/ads-stream.js";
import { meshPairs } from "../../test/support/mesh-pilot.js";
import * as grpc from "@grpc/grpc-js";
import { AdsProbeError, probeAds } from "../xds/ads-client.js";
import { watchAds } from "../xds/ads-watch.js";
import { decodeNameTable, NAME_TABLE_TYPE_URL } from "../xds/nds.js";
import type { NdsNameTable } from "../xds/nds.js";
import { systemClock } from "../platform/clock.js";
import type { XdsNode } from "../xds/protos.js";
import type { LogFields, Logger } from "../platform/logger.js";
import { CLUSTER_TYPE_URL, ENDPOINT_TYPE_URL, unpackClusterLoadAssignment } from "../xds/protos.js";
import type { IssuedKeyPair, MeshCa } from "./mesh-ca.js";
import { createMeshCa } from "./mesh-ca.js";
import { startPilotRest } from "./pilot-rest.js";
import { XDS_API_HEADER, startPilotXds } from "./pilot-xds.js";
import { loadAssignment } from "./xds-resources.js";
import { matchingIdentity } from "./xds-wire.js";
import { createServiceAccountTokens } from "./sa-tokens.js";
import { ObjectStore } from "./store.js";

const node: XdsNode = {
  id: "sidecar~10.0.0.5~vm1.default~default.svc.cluster.local",
  cluster: "rawvm.default",
  metadata: { NAMESPACE: "default", SERVICE_ACCOUNT: "vm", INSTANCE_IPS: "10.0.0.5" },
};

function seed(): ObjectStore {
  const store = new ObjectStore();
  store.create("services", {
    metadata: { name: "hello", namespace: "default" },
    spec: {
      clusterIP: "10.96.1.1",
      ports: [
        { name: "http", port: 80 },
        { name: "grpc", port: 9000 },
      ],
    },
  });
  store.create("endpoints", {
    metadata: { name: "hello", namespace: "default" },
    subsets: [
      {
        addresses: [{ ip: "10.1.1.1" }],
        ports: [
          { name: "http", port: 8080 },
          { name: "grpc", port: 9000 },
        ],
      },
    ],
  });
  return store;
}

describe("dev Pilot ADS server", () => {
  let ca: MeshCa;
  let serving: IssuedKeyPair;
  let client: IssuedKeyPair;
  beforeAll(async () => {
    ({ ca, serving, workload: client } = await meshPairs("default", "vm"));
  });

  it("answers CDS over plain gRPC with one EDS cluster per service port and records the ACK", async () => {
    const store = seed();
    const xds = await startPilotXds({ store });
    try {
      const result = await probeAds({ target: xds.address, node, timeoutMs: 5000 });
      expect(result.clusters).toEqual([
        "outbound|80||hello.default.svc.cluster.local",
        "outbound|9000||hello.default.svc.cluster.local",
      ]);
      expect(result.versionInfo).toBe(store.resourceVersion);
      expect(result.controlPlane).toBe("istio-vm dev pilot");
      const ack = xds.events.find((e) => e.kind === "ack");
      expect(ack?.nonce).toBe(result.nonce);
      expect(xds.events.find((e) => e.kind === "request")?.nodeId).toBe(node.id);
      expect(xds.events.find((e) => e.kind === "request")?.metadata).toEqual(node.metadata);
    } finally {
      await xds.close();
    }
  });

  it("legacy profile: refuses a v3 stream with UNIMPLEMENTED (no Pilot of 0.2–0.8 served v3) unless it asks for v3", async () => {
    const xds = await startPilotXds({ store: seed(), v3OnlyWhenAsked: true });
    try {
      const refused = await probeAds({ target: xds.address, node, timeoutMs: 5000 }).catch((e: unknown) => e);
      expect(refused).toBeInstanceOf(AdsProbeError);
      expect((refused as AdsProbeError).grpcCode).toBe(grpc.status.UNIMPLEMENTED);
      expect((refused as AdsProbeError).message).toContain("legacy Pilot (Istio 0.2–0.8) serves no xDS v3");
      expect(xds.events.find((e) => e.kind === "request")).toBeUndefined();
      const asked = await probeAds({
        target: xds.address,
        node,
        timeoutMs: 5000,
        headers: { [XDS_API_HEADER]: "v3" },
      });
      expect(asked.clusters.length).toBeGreaterThan(0);
    } finally {
      await xds.close();
    }
  });

  it("builds EDS load assignments from the endpoints, by port", () => {
    const store = seed();
    expect(loadAssignment(store, "outbound|80||hello.default.svc.cluster.local")).toEqual({
      cluster_name: "outbound|80||hello.default.svc.cluster.local",
      endpoints: [
        { lb_endpoints: [{ endpoint: { address: { socket_address: { address: "10.1.1.1", port_value: 8080 } } } }] },
      ],
    });
    expect(loadAssignment(store, "outbound|81||hello.default.svc.cluster.local").endpoints).toEqual([]);
  });

  it("serves TLS with a mesh-CA certificate for istiod.<ns>.svc and checks the client identity against the node", async () => {
    const xds = await startPilotXds({
      store: seed(),
      tls: { certPem: serving.chainPem, keyPem: serving.keyPem, caPem: ca.rootCertPem, requireClientCert: true },
    });
    const tls = {
      rootPem: ca.rootCertPem,
      servername: "istiod.istio-system.svc",
      certChainPem: client.chainPem,
      keyPem: client.keyPem,
    };
    try {
      const result = await probeAds({ target: xds.address, tls, node, timeoutMs: 5000 });
      expect(result.clusters.length).toBe(2);
      expect(xds.events.find((e) => e.kind === "request")?.peerIdentities).toEqual([ca.spiffeId("default", "vm")]);

      const other = { ...node, metadata: { ...node.metadata, SERVICE_ACCOUNT: "someone-else" } };
      const denied = await probeAds({ target: xds.address, tls, node: other, timeoutMs: 5000 }).catch(
        (e: unknown) => e,
      );
      expect(denied).toBeInstanceOf(AdsProbeError);
      expect((denied as AdsProbeError).message).toMatch(/PERMISSION_DENIED \(7\).*someone-else/);

      const wrongName = await probeAds({
        target: xds.address,
        tls: { ...tls, servername: "istio-pilot" },
        node,
        timeoutMs: 5000,
      }).catch((e: unknown) => e);
      expect((wrongName as AdsProbeError).message).toMatch(/UNAVAILABLE/);
    } finally {
      await xds.close();
    }
  });

  it("resets the stream when the fault is injected, which the client sees as a gRPC error", async () => {
    const xds = await startPilotXds({ store: seed() });
    try {
      xds.setFault("stream-reset");
      const error = await probeAds({ target: xds.address, node, timeoutMs: 5000 }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(AdsProbeError);
      expect((error as AdsProbeError).message).toMatch(/RST_STREAM/);
      expect(xds.events.some((e) => e.kind === "reset")).toBe(true);
      xds.setFault("none");
      expect((await probeAds({ target: xds.address, node, timeoutMs: 5000 })).clusters.length).toBe(2);
    } finally {
      await xds.close();
    }
  });

  it("reports an empty CDS answer as a failure, not success", async () => {
    const xds = await startPilotXds({ store: new ObjectStore() });
    try {
      await expect(probeAds({ target: xds.address, node, timeoutMs: 5000 })).rejects.toThrow(/no clusters/);
    } finally {
      await xds.close();
    }
  });

  it("pushes a new CDS response to a subscribed stream when a service appears", async () => {
    const store = seed();
    const xds = await startPilotXds({ store });
    try {
      await probeAds({ target: xds.address, node, timeoutMs: 5000 });
      const before = xds.events.filter((e) => e.kind === "response").length;
      store.create("services", { metadata: { name: "x", namespace: "default" }, spec: { ports: [{ port: 1 }] } });
      // The probe's stream is closed, so nothing is pushed to it; a new probe sees three clusters.
      expect(xds.events.filter((e) => e.kind === "response").length).toBe(before);
      expect((await probeAds({ target: xds.address, node, timeoutMs: 5000 })).clusters.length).toBe(3);
    } finally {
      await xds.close();
    }
  });
});

describe("dev Pilot NDS over the mTLS port, read by the agent's ADS watch", () => {
  it("sends the name table istiod builds, takes the ACK, pushes on a change, and records a NACK", async () => {
    const ca = await createMeshCa();
    const serving = await ca.issueKeyPair({ dnsNames: ["istiod.istio-system.svc"] });
    const client = await ca.issueKeyPair({ identity: ca.spiffeId("default", "vm") });
    const store = seed();
    store.create("services", {
      metadata: { name: "db", namespace: "data" },
      spec: { clusterIP: "None", ports: [{ name: "tcp", port: 5432 }] },
    });
    store.create("endpoints", {
      metadata: { name: "db", namespace: "data" },
      subsets: [{ addresses: [{ ip: "10.1.0.5" }, { ip: "10.1.0.6" }], ports: [{ name: "tcp", port: 5432 }] }],
    });
    const xds = await startPilotXds({
      store,
      tls: { certPem: serving.chainPem, keyPem: serving.keyPem, caPem: ca.rootCertPem, requireClientCert: true },
    });
    const tables: NdsNameTable[] = [];
    const waiters: (() => void)[] = [];
    const controller = new AbortController();
    let rejectNext = false;
    const watching = watchAds(
      {
        typeUrl: NAME_TABLE_TYPE_URL,
        clock: systemClock,
        connection: () =>
          Promise.resolve({
            target: xds.address,
            tls: {
              rootPem: ca.rootCertPem,
              servername: "istiod.istio-system.svc",
              certChainPem: client.chainPem,
              keyPem: client.keyPem,
            },
            node,
          }),
        onResources: (resources) => {
          const table = decodeNameTable(resources[0]?.value ?? new Uint8Array());
          tables.push(table);
          for (const w of waiters.splice(0)) w();
          return rejectNext ? "rejected by the test" : undefined;
        },
      },
      controller.signal,
    );
    const nth = async (count: number): Promise<NdsNameTable> => {
      while (tables.length < count) await new Promise<void>((resolve) => waiters.push(resolve));
      return tables[count - 1] as NdsNameTable;
    };
    try {
      expect(await nth(1)).toEqual({
        "hello.default.svc.cluster.local": {
          ips: ["10.96.1.1"],
          registry: "Kubernetes",
          shortname: "hello",
          namespace: "default",
        },
        "db.data.svc.cluster.local": {
          ips: ["10.1.0.5", "10.1.0.6"],
          registry: "Kubernetes",
          shortname: "db",
          namespace: "data",
        },
      });
      // An ACK that arrives after a newer push is stale and ignored, as istiod does: wait for it first.
      await expect.poll(() => xds.events.some((e) => e.kind === "ack" && e.typeUrl === NAME_TABLE_TYPE_URL)).toBe(true);
      rejectNext = true;
      store.create("services", {
        metadata: { name: "new", namespace: "default" },
        spec: { clusterIP: "10.96.1.9", ports: [{ port: 80 }] },
      });
      expect(Object.keys(await nth(2))).toContain("new.default.svc.cluster.local");
      await expect
        .poll(() => xds.events.filter((e) => e.typeUrl === NAME_TABLE_TYPE_URL).map((e) => e.kind))
        .toEqual(["request", "response", "ack", "response", "nack"]);
      expect(xds.events.find((e) => e.kind === "request" && e.typeUrl === NAME_TABLE_TYPE_URL)?.peerIdentities).toEqual(
        [ca.spiffeId("default", "vm")],
      );
    } finally {
      controller.abort();
      await watching;
      await xds.close();
    }
  });
});

describe("dev Pilot ADS server, EDS and NACK over the wire", () => {
  it("answers EDS for the named clusters, records a NACK, and pushes on an endpoints change", async () => {
    const store = seed();
    const xds = await startPilotXds({ store });
    const stream = openAdsStream(xds.address, undefined);
    const cluster = "outbound|80||hello.default.svc.cluster.local";
    try {
      stream.send({ node, resource_names: [cluster], type_url: ENDPOINT_TYPE_URL });
      const first = await stream.next(1);
      expect(first.type_url).toBe(ENDPOINT_TYPE_URL);
      expect(first.resources.map(unpackClusterLoadAssignment)).toMatchObject([
        {
          cluster_name: cluster,
          endpoints: [
            {
              lb_endpoints: [{ endpoint: { address: { socket_address: { address: "10.1.1.1", port_value: 8080 } } } }],
            },
          ],
        },
      ]);

      stream.send({
        resource_names: [cluster],
        type_url: ENDPOINT_TYPE_URL,
        response_nonce: first.nonce,
        error_detail: { code: 3, message: "rejected for the test" },
      });
      // The NACK must reach the server before the push below makes its nonce stale.
      for (let i = 0; i < 200 && !xds.events.some((e) => e.kind === "nack"); i++) {
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      const ep = store.get("endpoints", "default", "hello");
      store.update("endpoints", {
        ...ep,
        subsets: [{ addresses: [{ ip: "10.1.1.9" }], ports: [{ name: "http", port: 8081 }] }],
      });
      const pushed = await stream.next(2);
      expect(pushed.nonce).not.toBe(first.nonce);
      expect(
        pushed.resources.map(unpackClusterLoadAssignment)[0]?.endpoints[0]?.lb_endpoints[0]?.endpoint.address
          .socket_address,
      ).toMatchObject({ address: "10.1.1.9", port_value: 8081 });
      expect(xds.events.find((e) => e.kind === "nack")).toMatchObject({
        nonce: first.nonce,
        detail: "rejected for the test",
      });
    } finally {
      stream.cancel();
      await xds.close();
    }
  });
});

describe("dev Pilot ADS server: istiod's authentication and identity check, and the connected proxies", () => {
  let ca: MeshCa;
  let serving: IssuedKeyPair;
  let client: IssuedKeyPair;
  const tokens = createServiceAccountTokens();
  const verifyToken = (token: string): { namespace: string; serviceAccount: string } | undefined => {
    try {
      return tokens.verify(token, "istio-ca");
    } catch {
      return undefined;
    }
  };
  beforeAll(async () => {
    ({ ca, serving, workload: client } = await meshPairs("default", "vm"));
  });

  it("TLS without a certificate: a service-account token authenticates, nothing gives UNAUTHENTICATED", async () => {
    const lines: string[] = [];
    const xds = await startPilotXds({
      store: seed(),
      tls: { certPem: serving.chainPem, keyPem: serving.keyPem, caPem: ca.rootCertPem },
      verifyToken,
      trustDomain: "cluster.local",
      logger: recordingLogger(lines),
    });
    const tls = { rootPem: ca.rootCertPem, servername: "istiod.istio-system.svc" };
    const token = (sa: string, audience = "istio-ca"): string =>
      tokens.issue({ namespace: "default", serviceAccount: sa, audiences: [audience], expirationSeconds: 600 }).token;
    try {
      const ok = await probeAds({ target: xds.address, tls, token: token("vm"), node, timeoutMs: 5000 });
      expect(ok.clusters.length).toBe(2);
      expect(xds.events.find((e) => e.kind === "request")?.peerIdentities).toEqual([
        "spiffe://cluster.local/ns/default/sa/vm",
      ]);

      const none = (await probeAds({ target: xds.address, tls, node, timeoutMs: 5000 }).catch((e: unknown) => e)) as
        AdsProbeError | undefined;
      expect(none).toBeInstanceOf(AdsProbeError);
      expect(none?.grpcCode).toBe(grpc.status.UNAUTHENTICATED);
      expect(none?.details).toContain("no client certificate with a SPIFFE identity and no bearer token");

      const wrongAudience = (await probeAds({
        target: xds.address,
        tls,
        token: token("vm", "https://kubernetes.default.svc.cluster.local"),
        node,
        timeoutMs: 5000,
      }).catch((e: unknown) => e)) as AdsProbeError;
      expect(wrongAudience.grpcCode).toBe(grpc.status.UNAUTHENTICATED);
      expect(wrongAudience.details).toContain("not a valid service-account token");

      const otherSa = (await probeAds({ target: xds.address, tls, token: token("web"), node, timeoutMs: 5000 }).catch(
        (e: unknown) => e,
      )) as AdsProbeError;
      expect(otherSa.grpcCode).toBe(grpc.status.PERMISSION_DENIED);
      expect(otherSa.details).toBe(
        "authorization failed: no identities (spiffe://cluster.local/ns/default/sa/web) matched the node's " +
          "NAMESPACE=default SERVICE_ACCOUNT=vm",
      );
      expect(lines.filter((l) => l.startsWith("warn xDS stream refused"))).toHaveLength(3);
    } finally {
      await xds.close();
    }
  });

  it("the identity check follows istiod's: an empty node value matches any, the id's namespace stands in", () => {
    const ids = ["spiffe://cluster.local/ns/shop/sa/cart"];
    const base = { id: "sidecar~10.0.0.5~vm1.shop~shop.svc.cluster.local", cluster: "c" };
    expect(matchingIdentity({ ...base, metadata: { SERVICE_ACCOUNT: "cart" } }, ids)).toBe(ids[0]);
    expect(matchingIdentity({ ...base, metadata: { NAMESPACE: "shop" } }, ids)).toBe(ids[0]);
    expect(matchingIdentity({ ...base, metadata: { NAMESPACE: "default", SERVICE_ACCOUNT: "cart" } }, ids)).toBe(
      undefined,
    );
    expect(matchingIdentity({ ...base, metadata: {} }, ["not-a-spiffe-id"])).toBeUndefined();
  });

  it("lists each connected proxy's node and identity while its stream is open, and serves it on /istio-vm-dev/proxies", async () => {
    const lines: string[] = [];
    const store = seed();
    const xds = await startPilotXds({
      store,
      tls: { certPem: serving.chainPem, keyPem: serving.keyPem, caPem: ca.rootCertPem },
      logger: recordingLogger(lines),
    });
    const rest = await startPilotRest({ store, connectedProxies: () => xds.connections() });
    const stream = openAdsStream(xds.address, {
      rootPem: ca.rootCertPem,
      servername: "istiod.istio-system.svc",
      certChainPem: client.chainPem,
      keyPem: client.keyPem,
    });
    const sent: XdsNode = {
      ...node,
      cluster: "mysql.default",
      metadata: {
        ...node.metadata,
        ISTIO_VERSION: "1.24.2",
        LABELS: { app: "mysql" },
        PROXY_CONFIG: { concurrency: 2 },
      },
    };
    try {
      stream.send({ node: sent, type_url: CLUSTER_TYPE_URL });
      await stream.next(1);
      const expected = {
        tls: true,
        authenticatedBy: "certificate",
        identities: [ca.spiffeId("default", "vm")],
        node: { id: sent.id, cluster: "mysql.default", metadata: sent.metadata },
        subscribed: [CLUSTER_TYPE_URL],
      };
      expect(xds.connections()).toMatchObject([expected]);
      const response = await fetch(`${rest.url}/istio-vm-dev/proxies`);
      expect(response.status).toBe(200);
      expect(await response.json()).toMatchObject({ proxies: [expected] });
      const connectedLine = lines.find((l) => l.startsWith("info proxy connected"));
      expect(connectedLine).toContain(`node=${sent.id}`);
      expect(connectedLine).toContain('"ISTIO_VERSION":"1.24.2"');

      void stream.close();
      for (let i = 0; i < 200 && xds.connections().length > 0; i++) {
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      expect(xds.connections()).toEqual([]);
    } finally {
      stream.cancel();
      await rest.close();
      await xds.close();
    }
  });
});

/** A Logger that keeps `<level> <message> k=v …` lines. */
function recordingLogger(lines: string[]): Logger {
  const emit =
    (level: string) =>
    (message: string, fields: LogFields = {}): void => {
      const rendered = Object.entries(fields)
        .filter(([, v]) => v !== undefined)
        .map(([k, v]) => `${k}=${String(v)}`);
      lines.push([level, message, ...rendered].join(" "));
    };
  const logger: Logger = {
    error: emit("error"),
    warn: emit("warn"),
    info: emit("info"),
    debug: emit("debug"),
    child: () => logger,
  };
  return logger;
}
