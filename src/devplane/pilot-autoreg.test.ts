import { afterEach, beforeAll, describe, expect, it } from "vitest";
import * as grpc from "@grpc/grpc-js";
import { FakeClock } from "../../test/fakes/fake-clock.js";
import { openAdsStream } from "../../test/support/ads-stream.js";
import type { AdsProbeTls } from "../xds/ads-client.js";
import type { DiscoveryResponse, StructValue, XdsNode } from "../xds/protos.js";
import { ENDPOINT_TYPE_URL, HEALTH_INFO_TYPE_URL, unpackClusterLoadAssignment } from "../xds/protos.js";
import type { IssuedKeyPair, MeshCa } from "./mesh-ca.js";
import { createMeshCa } from "./mesh-ca.js";
import { AutoRegistration, autoRegisteredEntryName, rfc3339Nano, workloadEntryFromGroup } from "./pilot-autoreg.js";
import type { WorkloadGroupObject } from "./pilot-autoreg.js";
import type { PilotXdsServer } from "./pilot-xds.js";
import { parseGracePeriod } from "./pilot-service.js";
import { startPilotXds } from "./pilot-xds.js";
import { ObjectStore } from "./store.js";
import type { KubeObject } from "./store.js";

const GRACE_MS = 10_000;
const CLUSTER = "outbound|80||vm-app.default.svc.cluster.local";

const readinessProbe = { periodSeconds: 1, tcpSocket: { port: 8080 } };
const node: XdsNode = {
  id: "sidecar~10.0.0.5~vm1.default~default.svc.cluster.local",
  cluster: "vm-app.default",
  metadata: {
    NAMESPACE: "default",
    SERVICE_ACCOUNT: "vm",
    INSTANCE_IPS: "10.0.0.5",
    AUTO_REGISTER_GROUP: "vms",
    LABELS: { app: "vm-app", version: "v2" },
    PROXY_CONFIG: { readinessProbe },
  },
};

function seed(): ObjectStore {
  const store = new ObjectStore();
  store.create("workloadgroups", {
    apiVersion: "networking.istio.io/v1",
    kind: "WorkloadGroup",
    metadata: { name: "vms", namespace: "default" },
    spec: {
      metadata: { labels: { app: "vm-app", tier: "db" }, annotations: { team: "data" } },
      template: { serviceAccount: "vm", ports: { http: 8080 } },
      probe: readinessProbe,
    },
  });
  store.create("services", {
    metadata: { name: "vm-app", namespace: "default" },
    spec: { clusterIP: "10.96.0.20", selector: { app: "vm-app" }, ports: [{ name: "http", port: 80 }] },
  });
  return store;
}

describe("auto-registered WorkloadEntry names and contents, as istiod makes them", () => {
  it("names the entry <group>-<IP>[-<network>], keeping IPv4 dots and replacing IPv6 colons", () => {
    expect(autoRegisteredEntryName(node)).toBe("vms-10.0.0.5");
    const v6 = { ...node, metadata: { ...node.metadata, INSTANCE_IPS: "2001:db8::5,10.0.0.5" } };
    expect(autoRegisteredEntryName(v6)).toBe("vms-2001-db8--5");
    const networked = { ...node, metadata: { ...node.metadata, NETWORK: "net1" } };
    expect(autoRegisteredEntryName(networked)).toBe("vms-10.0.0.5-net1");
    const noIps = { ...node, metadata: { ...node.metadata, INSTANCE_IPS: "" } };
    expect(autoRegisteredEntryName(noIps)).toBe("vms-10.0.0.5"); // the node id's IP
    const noNamespace = { ...node, metadata: { ...node.metadata, NAMESPACE: "" } };
    expect(autoRegisteredEntryName(noNamespace)).toBe("");
    const long = { ...node, metadata: { ...node.metadata, AUTO_REGISTER_GROUP: "g".repeat(300) } };
    expect(autoRegisteredEntryName(long)).toHaveLength(253);
    expect(autoRegisteredEntryName(long).endsWith("-10.0.0.5")).toBe(true);
  });

  it("builds the entry from the group: template, merged labels, annotations, owner", () => {
    const group = seed().get("workloadgroups", "default", "vms") as WorkloadGroupObject;
    const entry = workloadEntryFromGroup(
      "vms-10.0.0.5",
      { ...node, metadata: { ...node.metadata, NETWORK: "n" } },
      group,
    );
    expect(entry).toEqual({
      apiVersion: "networking.istio.io/v1",
      kind: "WorkloadEntry",
      metadata: {
        name: "vms-10.0.0.5",
        namespace: "default",
        labels: { app: "vm-app", tier: "db", version: "v2" },
        annotations: {
          "istio.io/autoRegistrationGroup": "vms",
          team: "data",
          "proxy.istio.io/health-checks-enabled": "true",
        },
        ownerReferences: [
          {
            apiVersion: "networking.istio.io/v1",
            kind: "WorkloadGroup",
            name: "vms",
            uid: group.metadata.uid,
            controller: true,
          },
        ],
      },
      spec: {
        serviceAccount: "vm",
        ports: { http: 8080 },
        address: "10.0.0.5",
        labels: { app: "vm-app", tier: "db", version: "v2" },
        network: "n",
      },
    });
  });

  it("reads PILOT_WORKLOAD_ENTRY_GRACE_PERIOD as istiod does (a Go duration)", () => {
    expect([
      parseGracePeriod("10s"),
      parseGracePeriod("500ms"),
      parseGracePeriod("1.5m"),
      parseGracePeriod("2h"),
    ]).toEqual([10_000, 500, 90_000, 7_200_000]);
    expect(parseGracePeriod("10")).toBeUndefined();
    expect(parseGracePeriod("soon")).toBeUndefined();
  });

  it("writes times as Go's RFC3339Nano does", () => {
    expect(rfc3339Nano(Date.UTC(2026, 0, 1))).toBe("2026-01-01T00:00:00Z");
    expect(rfc3339Nano(Date.UTC(2026, 0, 1, 0, 0, 0, 120))).toBe("2026-01-01T00:00:00.12Z");
  });
});

function endpointsOf(response: DiscoveryResponse): string[] {
  return response.resources
    .map(unpackClusterLoadAssignment)
    .flatMap((cla) => cla.endpoints.flatMap((e) => e.lb_endpoints))
    .map((e) => `${e.endpoint.address.socket_address.address}:${e.endpoint.address.socket_address.port_value}`);
}

function annotations(entry: KubeObject | undefined): Record<string, string> {
  return entry?.metadata.annotations ?? {};
}

describe("dev istiod auto-registration over real sockets (mTLS port)", () => {
  let ca: MeshCa;
  let serving: IssuedKeyPair;
  let client: IssuedKeyPair;
  let tls: AdsProbeTls;
  const cleanups: (() => Promise<void>)[] = [];
  beforeAll(async () => {
    ca = await createMeshCa();
    serving = await ca.issueKeyPair({ dnsNames: ["istiod.istio-system.svc"] });
    client = await ca.issueKeyPair({ identity: ca.spiffeId("default", "vm") });
    tls = {
      rootPem: ca.rootCertPem,
      servername: "istiod.istio-system.svc",
      certChainPem: client.chainPem,
      keyPem: client.keyPem,
    };
  });
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  async function start(store: ObjectStore): Promise<{ xds: PilotXdsServer; clock: FakeClock; plain: PilotXdsServer }> {
    const clock = new FakeClock();
    const autoRegistration = new AutoRegistration({ store, clock, gracePeriodMs: GRACE_MS });
    const xds = await startPilotXds({
      store,
      tls: { certPem: serving.chainPem, keyPem: serving.keyPem, caPem: ca.rootCertPem },
      autoRegistration,
    });
    const plain = await startPilotXds({ store, autoRegistration });
    cleanups.push(async () => {
      await xds.close();
      await plain.close();
      await autoRegistration.close();
    });
    return { xds, clock, plain };
  }

  const closedStreams = (xds: PilotXdsServer): number => xds.events.filter((e) => e.kind === "closed").length;

  it("creates the entry on connect, feeds EDS from its health reports, and deletes it 10 s after the stream closes", async () => {
    const store = seed();
    const { xds, clock } = await start(store);
    const stream = openAdsStream(xds.address, tls);
    stream.send({ node, type_url: ENDPOINT_TYPE_URL, resource_names: [CLUSTER] });
    // Health checks are on (the node's ProxyConfig has a readinessProbe): no endpoint before the first report.
    expect(endpointsOf(await stream.next(1))).toEqual([]);

    const entry = store.get("workloadentries", "default", "vms-10.0.0.5");
    const group = store.get("workloadgroups", "default", "vms");
    expect(entry.metadata.ownerReferences).toEqual([
      {
        apiVersion: "networking.istio.io/v1",
        kind: "WorkloadGroup",
        name: "vms",
        uid: group.metadata.uid,
        controller: true,
      },
    ]);
    expect(annotations(entry)).toEqual({
      "istio.io/autoRegistrationGroup": "vms",
      "istio.io/workloadController": "istiod-istio-vm-dev",
      "istio.io/connectedAt": rfc3339Nano(clock.now()),
      "proxy.istio.io/health-checks-enabled": "true",
      team: "data",
    });
    expect(entry["spec"]).toMatchObject({ address: "10.0.0.5", serviceAccount: "vm", ports: { http: 8080 } });
    expect(xds.connections()[0]?.workloadEntry).toBe("default/vms-10.0.0.5");

    stream.send({ type_url: HEALTH_INFO_TYPE_URL });
    expect(endpointsOf(await stream.next(2))).toEqual(["10.0.0.5:8080"]);
    expect(store.get("workloadentries", "default", "vms-10.0.0.5")["status"]).toMatchObject({
      conditions: [{ type: "Healthy", status: "True" }],
    });

    stream.send({
      type_url: HEALTH_INFO_TYPE_URL,
      error_detail: { code: 13, message: "dial tcp 127.0.0.1:8080: refused" },
    });
    expect(endpointsOf(await stream.next(3))).toEqual([]);
    expect(store.get("workloadentries", "default", "vms-10.0.0.5")["status"]).toMatchObject({
      conditions: [{ type: "Healthy", status: "False", message: "dial tcp 127.0.0.1:8080: refused" }],
    });

    stream.send({ type_url: HEALTH_INFO_TYPE_URL });
    expect(endpointsOf(await stream.next(4))).toEqual(["10.0.0.5:8080"]);
    // istiod never answers a health report: every response above is an EDS push caused by the entry's change.
    expect(stream.responses.every((r) => r.type_url === ENDPOINT_TYPE_URL)).toBe(true);

    expect((await stream.close()).code).toBe(grpc.status.OK);
    await expect.poll(() => closedStreams(xds)).toBe(1);
    const disconnected = annotations(store.get("workloadentries", "default", "vms-10.0.0.5"));
    expect(disconnected["istio.io/connectedAt"]).toBeUndefined();
    expect(disconnected["istio.io/disconnectedAt"]).toBe(rfc3339Nano(clock.now()));

    clock.advance(GRACE_MS - 1);
    expect(store.tryGet("workloadentries", "default", "vms-10.0.0.5")).toBeDefined();
    clock.advance(1);
    await expect.poll(() => store.tryGet("workloadentries", "default", "vms-10.0.0.5")).toBeUndefined();
  });

  it("keeps the entry when the proxy reconnects within the grace period, and while a second stream is open", async () => {
    const store = seed();
    const { xds, clock } = await start(store);
    const first = openAdsStream(xds.address, tls);
    first.send({ node, type_url: ENDPOINT_TYPE_URL, resource_names: [CLUSTER] });
    await first.next(1);
    await first.close();
    await expect.poll(() => closedStreams(xds)).toBe(1);
    expect(
      annotations(store.get("workloadentries", "default", "vms-10.0.0.5"))["istio.io/disconnectedAt"],
    ).toBeDefined();

    clock.advance(GRACE_MS / 2);
    const again = openAdsStream(xds.address, tls);
    again.send({ node, type_url: ENDPOINT_TYPE_URL, resource_names: [CLUSTER] });
    await again.next(1);
    const reconnected = annotations(store.get("workloadentries", "default", "vms-10.0.0.5"));
    expect(reconnected["istio.io/connectedAt"]).toBe(rfc3339Nano(clock.now()));
    expect(reconnected["istio.io/disconnectedAt"]).toBeUndefined();
    const second = openAdsStream(xds.address, tls);
    second.send({ node, type_url: ENDPOINT_TYPE_URL, resource_names: [CLUSTER] });
    await second.next(1);

    clock.advance(GRACE_MS * 2);
    expect(store.tryGet("workloadentries", "default", "vms-10.0.0.5")).toBeDefined();
    await again.close();
    await expect.poll(() => closedStreams(xds)).toBe(2);
    // The second stream still holds the proxy: still connected, nothing pending.
    expect(annotations(store.get("workloadentries", "default", "vms-10.0.0.5"))["istio.io/connectedAt"]).toBeDefined();
    expect(clock.pending).toBe(0);

    await second.close();
    await expect.poll(() => closedStreams(xds)).toBe(3);
    clock.advance(GRACE_MS);
    await expect.poll(() => store.tryGet("workloadentries", "default", "vms-10.0.0.5")).toBeUndefined();
  });

  it("ends the stream when the group is missing, the identity does not fit, or nobody is authenticated", async () => {
    const store = seed();
    const { xds, plain } = await start(store);
    const missing = openAdsStream(xds.address, tls);
    missing.send({
      node: { ...node, metadata: { ...node.metadata, AUTO_REGISTER_GROUP: "ghosts" } },
      type_url: ENDPOINT_TYPE_URL,
    });
    const status = await missing.status;
    expect(status.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(status.details).toContain("cannot find WorkloadGroup default/ghosts");

    store.update("workloadgroups", {
      ...store.get("workloadgroups", "default", "vms"),
      spec: { template: { serviceAccount: "db" } },
    });
    const wrongSa = openAdsStream(xds.address, tls);
    wrongSa.send({
      node: { ...node, metadata: { ...node.metadata, SERVICE_ACCOUNT: "" } },
      type_url: ENDPOINT_TYPE_URL,
    });
    expect((await wrongSa.status).details).toContain('service account mismatch: "vm" vs "db"');

    const anonymous = openAdsStream(plain.address, undefined);
    anonymous.send({ node, type_url: ENDPOINT_TYPE_URL });
    expect((await anonymous.status).details).toContain("requires a verified identity");
    expect(store.list("workloadentries")).toEqual([]);

    // A node without AUTO_REGISTER_GROUP is served and registers nothing; its health reports land nowhere.
    const rest = Object.fromEntries(
      Object.entries(node.metadata).filter(([k]) => k !== "AUTO_REGISTER_GROUP"),
    ) as Record<string, StructValue>;
    const unregistered = openAdsStream(xds.address, tls);
    unregistered.send({ node: { ...node, metadata: rest }, type_url: ENDPOINT_TYPE_URL, resource_names: [CLUSTER] });
    await unregistered.next(1);
    unregistered.send({ type_url: HEALTH_INFO_TYPE_URL });
    await expect.poll(() => xds.events.some((e) => e.kind === "health")).toBe(true);
    expect(store.list("workloadentries")).toEqual([]);
    await unregistered.close();
  });
});
