/**
 * Issue 15's numbers (istiod profile): from a renewal (the SDS server's update, what `certificates-changed` calls)
 * to the Envoy stand-in holding the new chain, read back from its admin /certs — no restart; and from a push of
 * istiod (a new Service in the dev Pilot) to the stand-in holding the new cluster, through the agent's xDS proxy.
 * The stand-in (test/fixtures/fake-envoy.mjs) is started by the real supervisor with the istiod bootstrap: it gets
 * CDS and LDS through the agent's xDS proxy (src/xds/proxy.ts, one mTLS stream to the dev Pilot) and subscribes to
 * the secrets the clusters name on the agent's SDS socket, as Envoy does. Compare with bench/envoy.bench.ts, the
 * legacy hot-restart path.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadConfig } from "../src/config/load.js";
import { createMeshCa } from "../src/devplane/mesh-ca.js";
import { EnvoySupervisor } from "../src/envoy/supervisor.js";
import { createChildSpawner } from "../src/platform/child.js";
import { systemClock } from "../src/platform/clock.js";
import { nodeFileSystem } from "../src/platform/fs.js";
import { nodeLinkFileSystem } from "../src/platform/links.js";
import { nodeProcessRunner } from "../src/platform/process.js";
import { systemUsers } from "../src/platform/users.js";
import { nodeHttpClient } from "../src/platform/http.js";
import { silentLogger } from "../src/platform/logger.js";
import { startPilotXds } from "../src/devplane/pilot-xds.js";
import { ObjectStore } from "../src/devplane/store.js";
import { buildNodeBlock } from "../src/xds/node-block.js";
import { XdsProxy } from "../src/xds/proxy.js";
import { xdsProxySocketPath } from "../src/xds/proxy-socket.js";
import { SdsServer } from "../src/sds/server.js";
import { sdsSocketPath } from "../src/sds/socket.js";
import { freePort } from "../test/support/net.js";

const FAKE_ENVOY = join(process.cwd(), "test/fixtures/fake-envoy.mjs");
const RUNS = 9;

function row(
  table: string,
  name: string,
  value: string,
  extra: { note?: string; baseline?: string; ratio?: string } = {},
): void {
  process.stdout.write(`${JSON.stringify({ table, case: name, value, ...extra })}\n`);
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? NaN;
}

const root = mkdtempSync(join(tmpdir(), "istio-vm-sds-bench-"));
const shm = join(root, "dev/shm");
for (const d of [shm, join(root, "etc/certs"), join(root, "var/lib/istio/envoy")]) mkdirSync(d, { recursive: true });
writeFileSync(join(root, "etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n");
writeFileSync(
  join(root, "var/lib/istio/envoy/cluster.env"),
  "ISTIO_CONTROL_PLANE=istiod\nPOD_NAMESPACE=bench\nSERVICE_ACCOUNT=bench\n",
);
const adminPort = await freePort();
const mesh = await createMeshCa();
const serving = await mesh.issueKeyPair({ dnsNames: ["istiod.istio-system.svc"] });
const store = new ObjectStore();
store.create("services", {
  metadata: { name: "hello", namespace: "bench" },
  spec: { clusterIP: "10.96.1.1", ports: [{ name: "http", port: 80 }] },
});
const pilot = await startPilotXds({
  store,
  tls: { certPem: serving.chainPem, keyPem: serving.keyPem, caPem: mesh.rootCertPem },
});
writeFileSync(
  join(root, "var/lib/istio/envoy/sidecar.env"),
  [
    "ISTIO_SVC_IP=10.0.0.5",
    `ENVOY_BINARY=${FAKE_ENVOY}`,
    `ENVOY_ADMIN_PORT=${adminPort}`,
    "ENVOY_STATS_PORT=0",
    "ENVOY_STATUS_PORT=0",
    `ENVOY_USER=${process.getuid?.() === 0 ? "root" : "nobody-bench"}`,
    `DISCOVERY_ADDRESS=${pilot.address}`,
    "",
  ].join("\n"),
);
const loaded = await loadConfig({ env: { ISTIO_VM_ROOT: root }, fs: nodeFileSystem });
const identity = mesh.spiffeId("bench", "bench");
const pairs = await Promise.all(Array.from({ length: RUNS + 1 }, () => mesh.issueKeyPair({ identity })));
const sds = new SdsServer({ socketPath: sdsSocketPath(loaded.values), fs: nodeFileSystem, logger: silentLogger });
await sds.listen();
const secrets = (i: number): { keyPem: string; chainPem: string; rootPem: string } => ({
  keyPem: pairs[i]?.keyPem ?? "",
  chainPem: pairs[i]?.chainPem ?? "",
  rootPem: mesh.rootCertPem,
});
sds.update(secrets(0));
const proxy = new XdsProxy({
  socketPath: xdsProxySocketPath(loaded.values),
  fs: nodeFileSystem,
  logger: silentLogger,
  clock: systemClock,
  connection: () =>
    Promise.resolve({
      target: pilot.address,
      tls: {
        rootPem: mesh.rootCertPem,
        servername: "istiod.istio-system.svc",
        certChainPem: pairs[0]?.chainPem ?? "",
        keyPem: pairs[0]?.keyPem ?? "",
      },
      node: buildNodeBlock({ config: loaded.values, extraMetadata: {}, hostname: "bench" }),
    }),
});
await proxy.listen();
const supervisor = new EnvoySupervisor({
  config: loaded.values,
  extraMetadata: {},
  hostname: "bench",
  fs: nodeFileSystem,
  links: nodeLinkFileSystem,
  users: systemUsers({ ISTIO_VM_ROOT: root }, nodeFileSystem, nodeProcessRunner),
  spawner: createChildSpawner(),
  http: nodeHttpClient,
  clock: systemClock,
  logger: silentLogger,
  env: { PATH: process.env["PATH"], FAKE_ENVOY_SOCKET_DIR: shm },
  uid: process.getuid?.() ?? 0,
  readyPollMs: 10,
  certPollMs: 0,
});

async function heldSerial(): Promise<string | undefined> {
  const res = await fetch(`http://127.0.0.1:${adminPort}/certs`);
  const view = (await res.json()) as { certificates: { secret?: string; cert_chain: { serial_number: string }[] }[] };
  return view.certificates.find((c) => c.secret === "default")?.cert_chain[0]?.serial_number;
}

async function holds(serial: string): Promise<void> {
  const deadline = performance.now() + 30_000;
  while ((await heldSerial()) !== serial) {
    if (performance.now() > deadline) throw new Error(`the stand-in never held ${serial}`);
  }
}

async function heldClusters(): Promise<string[]> {
  const res = await fetch(`http://127.0.0.1:${adminPort}/config_dump`);
  const dump = (await res.json()) as {
    configs: { "@type": string; dynamic_active_clusters?: { cluster: { name: string } }[] }[];
  };
  const clusters = dump.configs.find((c) => c["@type"].endsWith("ClustersConfigDump"))?.dynamic_active_clusters;
  return (clusters ?? []).map((c) => c.cluster.name);
}

const samples: number[] = [];
const pushes: number[] = [];
try {
  await supervisor.start(new AbortController().signal);
  const { X509Certificate } = await import("node:crypto");
  const serialOf = (i: number): string => new X509Certificate(pairs[i]?.chainPem ?? "").serialNumber.toLowerCase();
  await holds(serialOf(0));
  const pid = supervisor.status().pid;
  for (let run = 1; run <= RUNS; run++) {
    const start = performance.now();
    sds.update(secrets(run));
    await holds(serialOf(run));
    samples.push(performance.now() - start);
  }
  if (supervisor.status().pid !== pid || supervisor.status().epoch !== 0) throw new Error("Envoy was restarted");
  for (let run = 1; run <= RUNS; run++) {
    const name = `svc-${run}`;
    const cluster = `outbound|80||${name}.bench.svc.cluster.local`;
    const start = performance.now();
    store.create("services", {
      metadata: { name, namespace: "bench" },
      spec: { clusterIP: `10.96.2.${run}`, ports: [{ name: "http", port: 80 }] },
    });
    const deadline = start + 30_000;
    while (!(await heldClusters()).includes(cluster)) {
      if (performance.now() > deadline) throw new Error(`the stand-in never held ${cluster}`);
    }
    pushes.push(performance.now() - start);
  }
  if (proxy.status().upstreamStreams !== 1) throw new Error("the proxy reconnected during the benchmark");
} finally {
  await supervisor.stop();
  await proxy.close();
  await pilot.close();
  await sds.close();
  rmSync(root, { recursive: true, force: true });
}
/**
 * The same run's baseline: the legacy path, where a renewal is a hot restart (certificates-changed → the next epoch
 * of the stand-in ready, no debounce), as bench/envoy.bench.ts measures it.
 */
async function hotRestartBaseline(runs: number): Promise<number[]> {
  const legacyRoot = mkdtempSync(join(tmpdir(), "istio-vm-sds-bench-legacy-"));
  const legacyShm = join(legacyRoot, "dev/shm");
  const certs = join(legacyRoot, "etc/certs");
  for (const d of [legacyShm, certs, join(legacyRoot, "var/lib/istio/envoy")]) mkdirSync(d, { recursive: true });
  writeFileSync(join(legacyRoot, "etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n");
  writeFileSync(join(legacyRoot, "var/lib/istio/envoy/cluster.env"), "ISTIO_CONTROL_PLANE=legacy\nENVOY_XDS_API=v3\n");
  writeFileSync(
    join(legacyRoot, "var/lib/istio/envoy/sidecar.env"),
    [
      "ISTIO_SVC_IP=10.0.0.5",
      `ENVOY_BINARY=${FAKE_ENVOY}`,
      `ENVOY_ADMIN_PORT=${await freePort()}`,
      "ENVOY_STATS_PORT=0",
      "ENVOY_STATUS_PORT=0",
      "ENVOY_DRAIN_DURATION=1s",
      "ENVOY_PARENT_SHUTDOWN_DURATION=2s",
      `ENVOY_USER=${process.getuid?.() === 0 ? "root" : "nobody-bench"}`,
      "",
    ].join("\n"),
  );
  for (const f of ["cert-chain.pem", "key.pem", "root-cert.pem"]) writeFileSync(join(certs, f), `${f} 0`);
  const legacy = await loadConfig({ env: { ISTIO_VM_ROOT: legacyRoot }, fs: nodeFileSystem });
  const supervisor = new EnvoySupervisor({
    config: legacy.values,
    extraMetadata: {},
    hostname: "bench",
    fs: nodeFileSystem,
    links: nodeLinkFileSystem,
    users: systemUsers({ ISTIO_VM_ROOT: legacyRoot }, nodeFileSystem, nodeProcessRunner),
    spawner: createChildSpawner(),
    http: nodeHttpClient,
    clock: systemClock,
    logger: silentLogger,
    env: { PATH: process.env["PATH"], FAKE_ENVOY_SOCKET_DIR: legacyShm },
    uid: process.getuid?.() ?? 0,
    readyPollMs: 10,
    debounceMs: 0,
    certPollMs: 0,
  });
  const until = async (probe: () => boolean): Promise<void> => {
    const deadline = performance.now() + 60_000;
    while (!probe()) {
      if (performance.now() > deadline) throw new Error("timed out");
      await new Promise((r) => setTimeout(r, 2));
    }
  };
  const times: number[] = [];
  try {
    await supervisor.start(new AbortController().signal);
    for (let run = 1; run <= runs; run++) {
      await until(() => supervisor.status().epochsRunning === 1);
      const target = (supervisor.status().epoch ?? 0) + 1;
      for (const f of ["cert-chain.pem", "key.pem"]) writeFileSync(join(certs, f), `${f} ${run}`);
      const start = performance.now();
      supervisor.certificatesChanged();
      await until(() => supervisor.status().epoch === target && supervisor.status().ready);
      times.push(performance.now() - start);
    }
  } finally {
    await supervisor.stop();
    rmSync(legacyRoot, { recursive: true, force: true });
  }
  return times;
}

const hot = await hotRestartBaseline(5);
process.stderr.write(`hot restart: ${hot.map((s) => s.toFixed(0)).join(", ")} ms\n`);
process.stderr.write(`sds: ${samples.map((s) => s.toFixed(1)).join(", ")} ms\n`);
row(
  "rotation",
  "istiod: renewal → stand-in holds the new chain over SDS (no restart)",
  `${median(samples).toFixed(1)} ms`,
  {
    baseline: `${median(hot).toFixed(0)} ms (legacy: event → new epoch ready)`,
    ratio: `${(median(hot) / median(samples)).toFixed(0)}× faster`,
    note: `medians of ${RUNS} and ${hot.length}; goal ≤ 100 ms; polled on its admin /certs; same PID, epoch 0; its xDS through the agent's proxy`,
  },
);
process.stderr.write(`xds push: ${pushes.map((s) => s.toFixed(1)).join(", ")} ms\n`);
row(
  "rotation",
  "istiod: new Service → stand-in holds the cluster, through the agent's xDS proxy",
  `${median(pushes).toFixed(1)} ms`,
  {
    note: `median of ${RUNS}; dev Pilot push, one mTLS upstream stream, no reconnect; polled on its admin /config_dump`,
  },
);
