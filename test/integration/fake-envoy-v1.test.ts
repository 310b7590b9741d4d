/**
 * The Envoy stand-in given the v1 configuration the agent writes on the legacy profile (ENVOY_XDS_API=v1): it polls
 * LDS and CDS from the dev Pilot's v1 REST API the way Envoy 1.x did (plain text, and over mTLS with the bootstrap's
 * ssl_context and Pilot's SPIFFE id) and serves what it holds on its admin API. Real processes, real sockets.
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
import type { PilotRestServer } from "../../src/devplane/pilot-rest.js";
import { startPilotRest } from "../../src/devplane/pilot-rest.js";
import { ObjectStore } from "../../src/devplane/store.js";
import { renderBootstrap, serializeBootstrap, serviceNode } from "../../src/envoy/bootstrap.js";
import { envoyCommand } from "../../src/envoy/command-line.js";
import { MemoryFileSystem } from "../fakes/memory-fs.js";
import { freePort } from "../support/net.js";

const FAKE_ENVOY = fileURLToPath(new URL("../fixtures/fake-envoy.mjs", import.meta.url));
const VM_IP = "10.0.0.5";

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

async function runStandIn(pilot: PilotRestServer, env: Record<string, string>, dir: string): Promise<number> {
  const adminPort = await freePort();
  const loaded = await loadConfig({
    env: {
      ISTIO_CONTROL_PLANE: "legacy",
      ISTIO_SVC_IP: VM_IP,
      POD_NAME: "vm1",
      DISCOVERY_ADDRESS: `127.0.0.1:${pilot.port}`,
      ENVOY_ADMIN_PORT: String(adminPort),
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
  return listeners.length > 0 && clusters.some((c) => c.startsWith("out."))
    ? { listeners: listeners.map((l) => l.name), clusters }
    : undefined;
}

describe("the Envoy stand-in on a v1 configuration", () => {
  it("polls LDS and CDS from Pilot's v1 API in plain text and holds the VM's inbound listener and the out. cluster", async () => {
    const dir = await mkdtemp(join(tmpdir(), "fake-envoy-v1-"));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const pilot = await startPilotRest({ store: mesh() });
    cleanups.push(() => pilot.close());
    const admin = await runStandIn(pilot, { CONTROL_PLANE_AUTH_POLICY: "NONE" }, dir);
    const got = await waitFor("the stand-in's LDS and CDS", () => held(admin));
    expect(got.listeners).toEqual(["virtual", "tcp_10.0.0.5_3306", "tcp_10.96.0.20_3306"]);
    expect(got.clusters).toEqual([
      "rds::added_via_api::false",
      "lds::added_via_api::false",
      "in.3306::added_via_api::true",
      "out.mysqldb.default.svc.cluster.local|mysql::added_via_api::true",
    ]);
    const node = `sidecar~${VM_IP}~vm1.default~default.svc.cluster.local`;
    expect(pilot.requests).toContain(`/v1/listeners/rawvm/${node}`);
    expect(pilot.requests).toContain(`/v1/clusters/rawvm/${node}`);
  });

  it("over mTLS: presents the workload certificate and accepts Pilot only with its SPIFFE id", async () => {
    const dir = await mkdtemp(join(tmpdir(), "fake-envoy-v1-"));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const ca = await createMeshCa();
    const workload = await ca.issueKeyPair({ identity: "spiffe://cluster.local/ns/default/sa/default" });
    await writeFile(join(dir, "cert-chain.pem"), workload.chainPem);
    await writeFile(join(dir, "key.pem"), workload.keyPem);
    await writeFile(join(dir, "root-cert.pem"), ca.rootCertPem);
    const pilotSan = "spiffe://cluster.local/ns/istio-system/sa/istio-pilot-service-account";
    const serving = await ca.issueKeyPair({ identity: pilotSan, ipAddresses: ["127.0.0.1"] });
    const pilot = await startPilotRest({
      store: mesh(),
      tls: { certPem: serving.chainPem, keyPem: serving.keyPem, caPem: ca.rootCertPem },
    });
    cleanups.push(() => pilot.close());
    const admin = await runStandIn(pilot, { OUTPUT_CERTS: dir }, dir);
    const got = await waitFor("the stand-in's LDS and CDS over mTLS", () => held(admin));
    expect(got.listeners).toContain("tcp_10.0.0.5_3306");
    expect(got.clusters).toContain("out.mysqldb.default.svc.cluster.local|mysql::added_via_api::true");

    // A Pilot whose certificate names another identity is refused: nothing is fetched from it.
    const impostor = await ca.issueKeyPair({ identity: "spiffe://cluster.local/ns/default/sa/other" });
    const wrong = await startPilotRest({
      store: mesh(),
      tls: { certPem: impostor.chainPem, keyPem: impostor.keyPem, caPem: ca.rootCertPem },
    });
    cleanups.push(() => wrong.close());
    const dir2 = await mkdtemp(join(tmpdir(), "fake-envoy-v1-"));
    cleanups.push(() => rm(dir2, { recursive: true, force: true }));
    for (const f of ["cert-chain.pem", "key.pem", "root-cert.pem"]) {
      await writeFile(
        join(dir2, f),
        f === "cert-chain.pem" ? workload.chainPem : f === "key.pem" ? workload.keyPem : ca.rootCertPem,
      );
    }
    const admin2 = await runStandIn(wrong, { OUTPUT_CERTS: dir2 }, dir2);
    const dump = await waitFor("the stand-in's refusal", async () => {
      const d = (await (await fetch(`http://127.0.0.1:${admin2}/config_dump`)).json()) as {
        configs: { listeners: unknown[]; fetch_errors: { lds: string; cds: string } }[];
      };
      return d.configs[0]?.fetch_errors.lds !== "" && d.configs[0]?.fetch_errors.cds !== "" ? d : undefined;
    });
    expect(dump.configs[0]?.fetch_errors.lds).toContain(`is not one of ${pilotSan}`);
    expect(dump.configs[0]?.listeners).toEqual([]);
    expect(wrong.requests).toEqual([]);
  });
});
