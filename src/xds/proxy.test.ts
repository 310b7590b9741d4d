/**
 * The agent's xDS proxy between an Envoy played by an ADS client built from Envoy's own protos
 * (test/support/ads-client.ts) on the real Unix socket, and the dev Pilot's ADS over mTLS on loopback (istiod's
 * authentication and identity check): forwarding both ways on one stream, the agent's own NDS subscription on it,
 * istiod really stopped and started again, Envoy reconnecting, a refused identity, a new node, socket permissions.
 */
import { chmod, mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import * as grpc from "@grpc/grpc-js";
import type { AdsResponse, EnvoyNode } from "../../test/support/ads-client.js";
import { AdsTestClient, CDS_TYPE, LDS_TYPE, clusterNames, clusterSdsSecrets } from "../../test/support/ads-client.js";
import { requirements } from "../../test/support/requirements.js";
import { connectAs } from "../../test/support/sds-client.js";
import type { IssuedKeyPair, MeshCa } from "../devplane/mesh-ca.js";
import type { PilotXdsServer } from "../devplane/pilot-xds.js";
import { meshPairs, startTlsPilot, storeWithServices } from "../../test/support/mesh-pilot.js";
import type { ObjectStore } from "../devplane/store.js";
import { systemClock } from "../platform/clock.js";
import { nodeFileSystem } from "../platform/fs.js";
import { createLogger } from "../platform/logger.js";
import type { XdsProxyOptions } from "./proxy.js";
import { XdsProxy } from "./proxy.js";
import { NAME_TABLE_TYPE_URL, decodeNameTable } from "./nds.js";
import type { NdsNameTable } from "./nds.js";

const ENVOY: EnvoyNode = {
  id: "sidecar~10.0.0.5~vm1.default~default.svc.cluster.local",
  cluster: "vm-app.default",
  metadata: { NAMESPACE: "default", SERVICE_ACCOUNT: "vm", INSTANCE_IPS: "10.0.0.5", ONLY_IN_ENVOYS_NODE: "kept" },
};
const HELLO = "outbound|80||hello.default.svc.cluster.local";

let ca: MeshCa;
let serving: IssuedKeyPair;
let workload: IssuedKeyPair;
beforeAll(async () => {
  ({ ca, serving, workload } = await meshPairs("default", "vm"));
});

let dir: string;
let store: ObjectStore;
let pilot: PilotXdsServer | undefined;
let proxy: XdsProxy | undefined;
const clients: AdsTestClient[] = [];
const logs: string[] = [];

function seed(): ObjectStore {
  return storeWithServices({
    name: "hello",
    namespace: "default",
    clusterIP: "10.96.1.1",
    ports: [{ name: "http", port: 80 }],
  });
}

/** The dev Pilot running now (a function: tests stop and start it). */
function current(): PilotXdsServer | undefined {
  return pilot;
}

async function startPilot(port = 0): Promise<PilotXdsServer> {
  pilot = await startTlsPilot({ ca, serving }, store, { port, requireClientCert: false });
  return pilot;
}

/** Subscribes the agent to NDS on `proxy`'s upstream stream; the decoded tables collect in the returned list. */
function nameTables(proxy: XdsProxy): NdsNameTable[] {
  const tables: NdsNameTable[] = [];
  proxy.subscribe({
    typeUrl: NAME_TABLE_TYPE_URL,
    onResponse: (response) => {
      tables.push(decodeNameTable(response.resources[0]?.value ?? new Uint8Array()));
      return undefined;
    },
  });
  return tables;
}

async function startProxy(overrides: Partial<XdsProxyOptions> = {}): Promise<XdsProxy> {
  const target = pilot?.address ?? "";
  proxy = new XdsProxy({
    socketPath: join(dir, "xds", "XDS"),
    fs: nodeFileSystem,
    clock: systemClock,
    logger: createLogger({ level: "debug", format: "plain", write: (line) => logs.push(line) }),
    connection: () =>
      Promise.resolve({
        target,
        tls: {
          rootPem: ca.rootCertPem,
          servername: "istiod.istio-system.svc",
          certChainPem: workload.chainPem,
          keyPem: workload.keyPem,
        },
        // The node the bootstrap gives Envoy: what the agent presents before Envoy connects.
        node: { id: ENVOY.id, cluster: ENVOY.cluster, metadata: { NAMESPACE: "default", SERVICE_ACCOUNT: "vm" } },
      }),
    initialBackoffMs: 20,
    maxBackoffMs: 200,
    ...overrides,
  });
  await proxy.listen();
  return proxy;
}

function envoy(node: EnvoyNode = ENVOY): AdsTestClient {
  const c = new AdsTestClient(join(dir, "xds", "XDS"), node);
  clients.push(c);
  return c;
}

/** Subscribes CDS and LDS as Envoy does and ACKs both answers; returns the CDS answer. */
async function subscribe(client: AdsTestClient): Promise<AdsResponse> {
  client.request(CDS_TYPE);
  const cds = await client.nextOf(CDS_TYPE);
  client.request(CDS_TYPE, { version: cds.version_info, nonce: cds.nonce });
  client.request(LDS_TYPE);
  const lds = await client.nextOf(LDS_TYPE);
  client.request(LDS_TYPE, { version: lds.version_info, nonce: lds.nonce });
  return cds;
}

async function until(what: string, condition: () => boolean): Promise<void> {
  await expect.poll(condition, { timeout: 10_000, message: what }).toBe(true);
}

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "istio-vm-xds-proxy-"));
  // Traversable by the other users of the permission test; the socket's own directory is what protects it.
  await chmod(dir, 0o755);
  store = seed();
  logs.length = 0;
});

afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  await proxy?.close();
  proxy = undefined;
  await pilot?.close();
  pilot = undefined;
  await rm(dir, { recursive: true, force: true });
});

describe("xDS proxy: Envoy ↔ agent socket ↔ one mTLS stream ↔ istiod", () => {
  it("forwards requests and responses both ways, keeping Envoy's node, on a stream authenticated by the agent", async () => {
    await startPilot();
    const p = await startProxy();
    expect(p.status().ready).toBe(false);
    const e = envoy();
    const cds = await subscribe(e);
    expect(clusterNames(cds)).toEqual([HELLO]);
    // istiod's mesh TLS: the cluster names Istio's secrets on the agent's SDS socket (what makes Envoy fetch them).
    expect(clusterSdsSecrets(cds)).toEqual([
      { cluster: HELLO, secrets: ["default", "ROOTCA"], sdsClusters: ["sds-grpc", "sds-grpc"] },
    ]);
    await until("ready", () => p.status().ready);
    expect(p.status()).toMatchObject({ upstream: "connected", answered: ["CDS", "LDS"], envoyStreams: 1 });

    // istiod sees one proxy: Envoy's node as Envoy sent it, authenticated by the agent's workload certificate.
    const [connection, ...others] = pilot?.connections() ?? [];
    expect(others).toEqual([]);
    expect(connection?.authenticatedBy).toBe("certificate");
    expect(connection?.identities).toEqual([ca.spiffeId("default", "vm")]);
    expect(connection?.node.metadata).toEqual(ENVOY.metadata);
    expect(connection?.node.user_agent_name).toBe("envoy");
    // Envoy's ACKs reached istiod as ACKs of its responses.
    await until("ACKs", () => (pilot?.events ?? []).filter((ev) => ev.kind === "ack").length === 2);

    // A push from istiod reaches Envoy.
    store.create("services", {
      metadata: { name: "new", namespace: "default" },
      spec: { clusterIP: "10.96.1.2", ports: [{ name: "http", port: 8080 }] },
    });
    const pushed = await e.nextOf(CDS_TYPE);
    expect(clusterNames(pushed)).toContain("outbound|8080||new.default.svc.cluster.local");
  });

  it("carries the agent's own NDS subscription on the same stream, ACKs it, and never shows it to Envoy", async () => {
    await startPilot();
    const p = await startProxy();
    const e = envoy();
    await subscribe(e);
    const tables = nameTables(p);
    await until("a name table", () => tables.length === 1);
    expect(Object.keys(tables[0] ?? {})).toEqual(["hello.default.svc.cluster.local"]);
    const events = pilot?.events ?? [];
    await until("NDS ACK", () => events.some((ev) => ev.kind === "ack" && ev.typeUrl === NAME_TABLE_TYPE_URL));
    const streams = new Set(events.filter((ev) => ev.kind === "request").map((ev) => ev.stream));
    expect(streams.size).toBe(1);
    expect(e.pending()).toBe(0);
  });

  it("subscribes for the agent before Envoy connects, with the bootstrap's node", async () => {
    await startPilot();
    const p = await startProxy();
    const tables = nameTables(p);
    await until("a name table", () => tables.length === 1);
    expect(pilot?.connections()[0]?.node.id).toBe(ENVOY.id);
  });

  it("istiod stopped: Envoy's stream ends UNAVAILABLE, the proxy retries; istiod back: Envoy re-subscribes", async () => {
    const first = await startPilot();
    const p = await startProxy();
    const disconnects: string[] = [];
    p.subscribe({
      typeUrl: NAME_TABLE_TYPE_URL,
      onResponse: () => undefined,
      onDisconnect: (r) => disconnects.push(r),
    });
    await subscribe(envoy());
    await until("ready", () => p.status().ready);

    // A really stopped server: its port refuses connections until it is started again.
    const port = first.port;
    await first.close();
    pilot = undefined;
    const gone = clients[0];
    const status = await gone?.ended;
    expect(status?.code).toBe(grpc.status.UNAVAILABLE);
    expect(status?.details).toMatch(/^upstream to istiod: /);
    expect(disconnects.length).toBeGreaterThan(0);
    await until("a failed reconnect", () => p.status().upstreamStreams >= 3 && p.status().lastError !== undefined);
    expect(p.status().ready).toBe(false);

    // Envoy reconnects at once (its own retry) and waits; istiod comes back on the same port.
    const again = envoy();
    again.request(CDS_TYPE);
    await startPilot(port);
    const cds = await again.nextOf(CDS_TYPE);
    expect(clusterNames(cds)).toEqual([HELLO]);
    again.request(CDS_TYPE, { version: cds.version_info, nonce: cds.nonce });
    again.request(LDS_TYPE);
    await again.nextOf(LDS_TYPE);
    await until("ready again", () => p.status().ready);
    expect(p.status().reconnects).toBeGreaterThanOrEqual(2);
    expect(current()?.connections()).toHaveLength(1);
  });

  it("istiod's identity check refusing the node surfaces in the status and in Envoy's stream", async () => {
    await startPilot();
    const p = await startProxy();
    const e = envoy({ ...ENVOY, metadata: { ...ENVOY.metadata, SERVICE_ACCOUNT: "someone-else" } });
    e.request(CDS_TYPE);
    const status = await e.ended;
    expect(status.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(status.details).toContain("SERVICE_ACCOUNT=someone-else");
    await until("the error in the status", () => /PERMISSION_DENIED/.test(p.status().lastError ?? ""));
    expect(p.status().ready).toBe(false);
  });

  it("a new Envoy stream with another node reopens the upstream with that node; the older stream gets nothing", async () => {
    await startPilot();
    const p = await startProxy();
    const parent = envoy();
    await subscribe(parent);
    const node = { ...ENVOY, metadata: { ...ENVOY.metadata, ONLY_IN_ENVOYS_NODE: "changed" } };
    const child = envoy(node);
    await subscribe(child);
    await until("one connection with the new node", () => {
      const c = pilot?.connections() ?? [];
      return c.length === 1 && c[0]?.node.metadata["ONLY_IN_ENVOYS_NODE"] === "changed";
    });
    // The parent (a draining epoch) keeps its stream open, but pushes go to the child only.
    store.create("services", {
      metadata: { name: "new", namespace: "default" },
      spec: { clusterIP: "10.96.1.2", ports: [{ name: "http", port: 8080 }] },
    });
    await child.nextOf(CDS_TYPE);
    expect(parent.status).toBeUndefined();
    expect(parent.pending()).toBe(0);
    expect(p.status().envoyStreams).toBe(2);
  });

  it("sends the agent's health report on the same stream, again first on every new stream; Envoy never sees its answer", async () => {
    const HEALTH = "type.googleapis.com/istio.v1.HealthInformation";
    const first = await startPilot();
    const p = await startProxy();
    const e = envoy();
    await subscribe(e);
    p.report({ typeUrl: HEALTH, errorDetail: { code: 13, message: "readiness probe failed" } });
    await until("the report at istiod", () => first.events.some((ev) => ev.kind === "health"));
    expect(first.events.find((ev) => ev.kind === "health")?.detail).toBe("readiness probe failed");
    const streams = new Set(
      first.events.filter((ev) => ev.kind === "request" || ev.kind === "health").map((ev) => ev.stream),
    );
    expect(streams.size).toBe(1);
    p.report({ typeUrl: HEALTH });
    await until("the second report", () => first.events.filter((ev) => ev.kind === "health").length === 2);
    // istiod answers no report (and an answer would stay with the agent): Envoy got nothing more.
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(e.pending()).toBe(0);

    const port = first.port;
    await first.close();
    pilot = undefined;
    const second = await startPilot(port);
    await until("the latest report re-sent on the new stream", () => second.events.some((ev) => ev.kind === "health"));
    expect(second.events.filter((ev) => ev.kind === "health")).toHaveLength(1);
  });

  it("a reload with a new istiod address reopens the upstream; Envoy re-subscribes", async () => {
    await startPilot();
    const p = await startProxy();
    const e = envoy();
    await subscribe(e);
    p.reconnect();
    const status = await e.ended;
    expect(status.code).toBe(grpc.status.UNAVAILABLE);
    const again = envoy();
    await subscribe(again);
    await until("ready again", () => p.status().ready);
    expect(p.status()).toMatchObject({ upstreamStreams: 2, reconnects: 1 });
  });

  it("waits for Envoy or an agent request before connecting to istiod", async () => {
    await startPilot();
    const p = await startProxy();
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(p.status().upstream).toBe("idle");
    expect(pilot?.events).toEqual([]);
  });
});

const needsRoot = requirements({ root: true });

describe.skipIf(needsRoot !== undefined)("xDS proxy socket permissions", () => {
  it("the socket is 0600 and its directory 0700, both Envoy's user's: only that user (and root) connects", async () => {
    await startPilot();
    await startProxy({ owner: { uid: 4321, gid: 4321 } });
    const socketPath = join(dir, "xds", "XDS");
    const socket = await stat(socketPath);
    const parent = await stat(join(dir, "xds"));
    expect([socket.isSocket(), socket.mode & 0o777, socket.uid, socket.gid]).toEqual([true, 0o600, 4321, 4321]);
    expect([parent.mode & 0o777, parent.uid]).toEqual([0o700, 4321]);
    expect(connectAs(socketPath, 4321)).toBe("connected");
    expect(connectAs(socketPath, 65534)).toBe("EACCES");
  });
});
