/**
 * The Envoy stand-in given the v2 bootstrap the agent writes with ENVOY_XDS_API=v2 (legacy profile, Istio 0.8): it
 * subscribes to CDS and LDS over ADS v2 at the dev Pilot's ADS server, as Envoy ≤ 1.16 did (plain text, and over
 * mTLS with the bootstrap's tls_context and Pilot's SPIFFE id), ACKs, and serves what it holds on its admin API.
 * Real processes, real sockets.
 */
import type { ChildProcess } from "node:child_process";
import { spawn } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterEach, describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config/load.js";
import { createMeshCa } from "../../src/devplane/mesh-ca.js";
import { ADS_V2 } from "../../src/devplane/pilot-xds-v2.js";
import type { PilotXdsServer, StartPilotXdsOptions } from "../../src/devplane/pilot-xds.js";
import { startPilotXds } from "../../src/devplane/pilot-xds.js";
import { ObjectStore } from "../../src/devplane/store.js";
import { renderBootstrap, serializeBootstrap, serviceNode } from "../../src/envoy/bootstrap.js";
import { envoyCommand } from "../../src/envoy/command-line.js";
import { MemoryFileSystem } from "../fakes/memory-fs.js";
import { freePort } from "../support/net.js";
import { runCli } from "../support/cli.js";
import { startDev } from "./dev-process.js";

const FAKE_ENVOY = fileURLToPath(new URL("../fixtures/fake-envoy.mjs", import.meta.url));
const VM_IP = "10.0.0.5";
const OUT_CLUSTER = "outbound|3306||mysqldb.default.svc.cluster.local";

function mesh(): ObjectStore {
  const store = new ObjectStore();
  store.create("services", {
    metadata: { name: "mysqldb", namespace: "default" },
    spec: { clusterIP: "10.96.0.20", ports: [{ name: "mysql", port: 3306 }] },
  });
  store.create("endpoints", {
    metadata: { name: "mysqldb", namespace: "default" },
    subsets: [{ addresses: [{ ip: VM_IP }], ports: [{ name: "mysql", port: 3306 }] }],
  });
  return store;
}

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (let c = cleanups.pop(); c !== undefined; c = cleanups.pop()) await c();
});

async function waitFor<T>(what: string, probe: () => Promise<T | undefined>): Promise<T> {
  for (let i = 0; i < 300; i++) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined) return value;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`gave up waiting for ${what}`);
}

/** The dev Pilot's ADS server as the legacy profile runs it: v3 only when asked, v2 always. */
async function legacyPilot(options: Omit<StartPilotXdsOptions, "store" | "v3OnlyWhenAsked" | "alsoServe"> = {}) {
  const pilot = await startPilotXds({ store: mesh(), v3OnlyWhenAsked: true, alsoServe: ADS_V2, ...options });
  cleanups.push(() => pilot.close());
  return pilot;
}

async function runStandIn(pilot: PilotXdsServer | string, env: Record<string, string>, dir: string): Promise<number> {
  const adminPort = await freePort();
  const loaded = await loadConfig({
    env: {
      ISTIO_CONTROL_PLANE: "legacy",
      ENVOY_XDS_API: "v2",
      ISTIO_SVC_IP: VM_IP,
      POD_NAME: "vm1",
      DISCOVERY_ADDRESS: typeof pilot === "string" ? pilot : `127.0.0.1:${pilot.port}`,
      ENVOY_ADMIN_PORT: String(adminPort),
      ENVOY_STATS_PORT: "0",
      ...env,
    },
    fs: new MemoryFileSystem({}),
  });
  expect(loaded.problems).toEqual([]);
  const input = { config: loaded.values, extraMetadata: {}, hostname: "vm1" };
  const path = join(dir, "envoy-rev0.json");
  await writeFile(path, serializeBootstrap(renderBootstrap(input)));
  const command = envoyCommand({
    config: loaded.values,
    epoch: 0,
    bootstrapPath: path,
    serviceNode: serviceNode(input),
  });
  const child: ChildProcess = spawn(FAKE_ENVOY, [...command.args], {
    env: { PATH: process.env["PATH"], FAKE_ENVOY_SOCKET_DIR: dir },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr?.on("data", (c: Buffer) => (stderr += c.toString()));
  cleanups.push(async () => {
    child.kill("SIGKILL");
    await new Promise((r) => child.once("exit", r).once("error", r));
    if (process.env["DEBUG_FAKE_ENVOY"] !== undefined) process.stderr.write(stderr);
  });
  return adminPort;
}

async function held(adminPort: number): Promise<{ listeners: string[]; clusters: string[] } | undefined> {
  const listeners = (await (await fetch(`http://127.0.0.1:${adminPort}/listeners`)).json()) as { name: string }[];
  const clusters = (await (await fetch(`http://127.0.0.1:${adminPort}/clusters`)).text()).trim().split("\n");
  return listeners.length > 0 && clusters.some((c) => c.startsWith("outbound|"))
    ? { listeners: listeners.map((l) => l.name), clusters }
    : undefined;
}

async function certDir(files: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "fake-envoy-v2-"));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  for (const [name, content] of Object.entries(files)) await writeFile(join(dir, name), content);
  return dir;
}

describe("the Envoy stand-in on a v2 (Istio 0.8) bootstrap", () => {
  it("subscribes CDS and LDS over ADS v2 in plain text, ACKs, and holds the VM's inbound listener and the outbound cluster", async () => {
    const dir = await certDir({});
    const pilot = await legacyPilot();
    const admin = await runStandIn(pilot, { CONTROL_PLANE_AUTH_POLICY: "NONE" }, dir);
    const got = await waitFor("the stand-in's CDS and LDS over ADS v2", () => held(admin));
    expect(got.listeners).toEqual([`${VM_IP}_3306`, "10.96.0.20_3306", "virtual"]);
    expect(got.clusters).toEqual([
      "xds-grpc::added_via_api::false",
      "BlackHoleCluster::added_via_api::true",
      "inbound|3306||mysqldb.default.svc.cluster.local::added_via_api::true",
      `${OUT_CLUSTER}::added_via_api::true`,
    ]);
    // Pilot saw a v2 stream from this node, and both answers were ACKed.
    const node = `sidecar~${VM_IP}~vm1.default~default.svc.cluster.local`;
    await waitFor("the LDS ACK", () =>
      Promise.resolve(
        pilot.events.some((e) => e.kind === "ack" && e.typeUrl === "type.googleapis.com/envoy.api.v2.Listener")
          ? true
          : undefined,
      ),
    );
    expect(pilot.events.find((e) => e.kind === "request")).toMatchObject({
      nodeId: node,
      typeUrl: "type.googleapis.com/envoy.api.v2.Cluster",
      metadata: { istio: "sidecar", NAMESPACE: "default" },
    });
    const dump = (await (await fetch(`http://127.0.0.1:${admin}/config_dump`)).json()) as {
      configs: { "@type": string; dynamic_active_listeners?: { name: string; active_state: unknown }[] }[];
    };
    const listeners = dump.configs.find((c) => c["@type"].endsWith("v2alpha.ListenersConfigDump"));
    expect(listeners?.dynamic_active_listeners?.[0]).toEqual({
      name: `${VM_IP}_3306`,
      active_state: {
        listener: { name: `${VM_IP}_3306`, address: { socket_address: { address: VM_IP, port_value: 3306 } } },
      },
    });
  });

  it("over mTLS (15011): presents the workload certificate and accepts Pilot only with its SPIFFE id", async () => {
    const ca = await createMeshCa();
    const workload = await ca.issueKeyPair({ identity: "spiffe://cluster.local/ns/default/sa/default" });
    const files = { "cert-chain.pem": workload.chainPem, "key.pem": workload.keyPem, "root-cert.pem": ca.rootCertPem };
    const pilotSan = "spiffe://cluster.local/ns/istio-system/sa/istio-pilot-service-account";
    const serving = await ca.issueKeyPair({ identity: pilotSan, ipAddresses: ["127.0.0.1"] });
    const tls = { keyPem: serving.keyPem, certPem: serving.chainPem, caPem: ca.rootCertPem, requireClientCert: true };
    const pilot = await legacyPilot({ tls });
    const dir = await certDir(files);
    const admin = await runStandIn(pilot, { OUTPUT_CERTS: dir }, dir);
    const got = await waitFor("the stand-in's CDS and LDS over mTLS", () => held(admin));
    expect(got.listeners).toContain(`${VM_IP}_3306`);
    expect(got.clusters).toContain(`${OUT_CLUSTER}::added_via_api::true`);
    expect(pilot.connections().map((c) => c.identities)).toContainEqual([
      "spiffe://cluster.local/ns/default/sa/default",
    ]);

    // A Pilot whose certificate names another identity is refused: nothing is taken from it.
    const impostor = await ca.issueKeyPair({
      identity: "spiffe://cluster.local/ns/default/sa/other",
      ipAddresses: ["127.0.0.1"],
    });
    const wrong = await legacyPilot({ tls: { ...tls, certPem: impostor.chainPem, keyPem: impostor.keyPem } });
    const dir2 = await certDir(files);
    const admin2 = await runStandIn(wrong, { OUTPUT_CERTS: dir2 }, dir2);
    const status = await waitFor("the stand-in's refusal", async () => {
      const d = (await (await fetch(`http://127.0.0.1:${admin2}/config_dump`)).json()) as {
        configs: { "@type": string; error?: string }[];
      };
      const s = d.configs.find((c) => c["@type"] === "fake-envoy.v2.AdsStatus");
      return s?.error !== undefined && s.error !== "" ? s.error : undefined;
    });
    expect(status).toContain(`is not one of ${pilotSan}`);
    expect((await (await fetch(`http://127.0.0.1:${admin2}/listeners`)).json()) as unknown[]).toEqual([]);
    expect(wrong.events.filter((e) => e.kind === "request")).toEqual([]);
  });

  it("a v3-only server (istiod, or the dev Pilot without v2) ends the stream UNIMPLEMENTED, and the stand-in holds nothing", async () => {
    const pilot = await startPilotXds({ store: mesh() });
    cleanups.push(() => pilot.close());
    const dir = await certDir({});
    const admin = await runStandIn(pilot, { CONTROL_PLANE_AUTH_POLICY: "NONE" }, dir);
    const status = await waitFor("the stream's end", async () => {
      const d = (await (await fetch(`http://127.0.0.1:${admin}/config_dump`)).json()) as {
        configs: { "@type": string; error?: string }[];
      };
      const s = d.configs.find((c) => c["@type"] === "fake-envoy.v2.AdsStatus");
      return s?.error !== undefined && s.error !== "" ? s.error : undefined;
    });
    expect(status).toMatch(/^gRPC status 12: the dev Pilot serves only/);
    expect((await (await fetch(`http://127.0.0.1:${admin}/listeners`)).json()) as unknown[]).toEqual([]);
  });
});

describe("ENVOY_XDS_API=v2 against istio-vm dev --profile legacy (the built CLI)", () => {
  it("after istio-vm register mysqldb <VM IP> 3306, the stand-in holds the inbound listener for 3306 and the outbound cluster", async () => {
    const dir = await certDir({});
    const kubeconfig = join(dir, "kubeconfig");
    const dev = await startDev(["--profile", "legacy", "--lb-delay", "0", "--write-kubeconfig", kubeconfig]);
    cleanups.push(() => dev.stop("SIGKILL"));
    const pilot = dev.ready.services.find((s) => s.name === "pilot");
    const grpc = pilot?.addresses.find((a) => a.name === "grpc (xDS ADS)")?.address;
    expect(grpc, JSON.stringify(dev.ready.services)).toBeDefined();
    const registered = await runCli(
      ["register", "mysqldb", VM_IP, "3306", "--kubeconfig", kubeconfig, "-n", "default"],
      {
        env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", HOME: dir },
      },
    );
    expect(registered.code, registered.stderr).toBe(0);
    const admin = await runStandIn(grpc ?? "", { CONTROL_PLANE_AUTH_POLICY: "NONE" }, dir);
    const got = await waitFor("the stand-in's CDS and LDS from istio-vm dev", async () => {
      const h = await held(admin);
      return h?.listeners.includes(`${VM_IP}_3306`) === true ? h : undefined;
    });
    expect(got.listeners).toContain(`${VM_IP}_3306`);
    expect(got.clusters).toContain(`${OUT_CLUSTER}::added_via_api::true`);
    expect(got.clusters).toContain("inbound|3306||mysqldb.default.svc.cluster.local::added_via_api::true");
  });
});
